//! Routes, authentication, request checks and the shape of the answers (JSON or server-sent
//! events).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use afinar::generate::SamplingParams;
use afinar::tokenizer::render_chat;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{parse_body, ApiError, Checked};
use crate::scheduler::{Event, Finish, Job, Slot};
use crate::Shared;

/// The server's routes over `shared`.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.opts.max_body_bytes;
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_one))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), auth))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

async fn auth(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.opts.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            let msg = if given.is_none() {
                "missing API key: send the header `Authorization: Bearer <key>`"
            } else {
                "wrong API key"
            };
            return ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", msg).into_response();
        }
    }
    next.run(req).await
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_url",
        format!(
            "no route {method} {uri}; this server has POST /v1/chat/completions, POST /v1/completions \
             and GET /v1/models"
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{uri} does not take {method}"),
    )
}

fn model_entry(s: &Shared, id: &str) -> Value {
    let mut v = json!({"id": id, "object": "model", "created": s.created, "owned_by": "afinar"});
    if id != s.opts.model_name {
        v["parent"] = json!(s.opts.model_name);
    }
    v
}

async fn models(State(s): State<Arc<Shared>>) -> Json<Value> {
    let data: Vec<Value> =
        std::iter::once(&s.opts.model_name).chain(&s.adapters).map(|id| model_entry(&s, id)).collect();
    Json(json!({"object": "list", "data": data}))
}

async fn model_one(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    resolve_model(&s, Some(&id))?;
    Ok(Json(model_entry(&s, &id)))
}

/// The adapter index the `model` field names (`None`: the base model).
fn resolve_model(s: &Shared, model: Option<&str>) -> Result<Option<usize>, ApiError> {
    match model {
        None => Ok(None),
        Some(m) if m == s.opts.model_name => Ok(None),
        Some(m) => match s.adapters.iter().position(|a| a == m) {
            Some(i) => Ok(Some(i)),
            None => {
                let known: Vec<&str> = std::iter::once(s.opts.model_name.as_str())
                    .chain(s.adapters.iter().map(String::as_str))
                    .collect();
                Err(ApiError {
                    status: StatusCode::NOT_FOUND,
                    message: format!("the model `{m}` does not exist; this server has: {}", known.join(", ")),
                    param: Some("model".into()),
                    code: Some("model_not_found"),
                })
            }
        },
    }
}

fn body_bytes(s: &Shared, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!("the request body is larger than the limit of {} bytes", s.opts.max_body_bytes),
            )
        } else {
            ApiError::new(r.status(), "invalid_request_body", r.body_text())
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

async fn chat(State(s): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> Response {
    complete(s, body, Kind::Chat).await.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(s): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> Response {
    complete(s, body, Kind::Text).await.unwrap_or_else(IntoResponse::into_response)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What the answer's chunks share.
struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    include_usage: bool,
}

impl Meta {
    fn chunk(&self, text: Option<&str>, finish: Option<Finish>, role: bool) -> Value {
        let finish = finish.map(Finish::as_str);
        match self.kind {
            Kind::Chat => {
                let mut delta = json!({});
                if role {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                       "model": self.model,
                       "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
            }
            Kind::Text => json!({"id": self.id, "object": "text_completion", "created": self.created,
                                 "model": self.model,
                                 "choices": [{"index": 0, "text": text.unwrap_or(""), "logprobs": null,
                                              "finish_reason": finish}]}),
        }
    }

    fn usage_chunk(&self, usage: Value) -> Value {
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
               "choices": [], "usage": usage})
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

async fn complete(
    s: Arc<Shared>,
    body: Result<Bytes, BytesRejection>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let bytes = body_bytes(&s, body)?;
    let req = parse_body(&bytes)?;
    let adapter = resolve_model(&s, req.model.as_deref())?;
    let checked = req.check()?;
    let tok = &s.tok;
    let (prompt_field, ids) = match kind {
        Kind::Chat => {
            let messages = req.chat_messages()?;
            let text = render_chat(tok, &messages, true)
                .map_err(|e| ApiError::field("messages", format!("the chat template failed: {e}")))?;
            ("messages", tok.encode(&text, false))
        }
        Kind::Text => ("prompt", tok.encode(&req.prompt_text()?, tok.add_bos_default())),
    };
    let ids = ids.map_err(|e| ApiError::field(prompt_field, format!("tokenizing: {e}")))?;
    if ids.is_empty() {
        return Err(ApiError::field(prompt_field, "the prompt is empty"));
    }
    let context = s.opts.context;
    let too_long = |want: usize| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!(
            "this server's context is {context} tokens per request, but the request needs {want} \
             ({} in the {prompt_field}, {} for the answer)",
            ids.len(),
            want - ids.len()
        ),
        param: Some(prompt_field.into()),
        code: Some("context_length_exceeded"),
    };
    if ids.len() >= context {
        return Err(too_long(ids.len() + 1));
    }
    let room = context - ids.len();
    let max_tokens = match checked.max_tokens {
        Some(m) if m > room => return Err(too_long(ids.len() + m)),
        Some(m) => m,
        None => room,
    };
    let limit = s.opts.max_active + s.opts.max_queue;
    let Some(slot) = Slot::try_take(&s.in_flight, limit) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            format!(
                "the server is full: {} requests decoding and {} waiting; retry later",
                s.opts.max_active, s.opts.max_queue
            ),
        ));
    };
    let Checked { temperature, top_p, top_k, seed, stop, stream, include_usage, .. } = checked;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let job = Job {
        adapter,
        prompt: ids,
        max_tokens,
        sampling: SamplingParams { temperature, top_k, top_p, seed },
        stop,
        tx,
        slot,
    };
    s.jobs.send(job).map_err(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the model is shutting down")
    })?;
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let meta = Meta {
        id: match kind {
            Kind::Chat => format!("chatcmpl-{n:x}"),
            Kind::Text => format!("cmpl-{n:x}"),
        },
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: req.model.clone().unwrap_or_else(|| s.opts.model_name.clone()),
        kind,
        include_usage,
    };
    if stream {
        Ok(sse(meta, rx).into_response())
    } else {
        collect(meta, rx).await
    }
}

async fn collect(meta: Meta, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Failed(e) => {
                return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "model_error", e))
            }
            Event::Done { finish, prompt_tokens, completion_tokens } => {
                let choice = match meta.kind {
                    Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                                         "logprobs": null, "finish_reason": finish.as_str()}),
                    Kind::Text => json!({"index": 0, "text": text, "logprobs": null,
                                         "finish_reason": finish.as_str()}),
                };
                let object = if meta.kind == Kind::Chat { "chat.completion" } else { "text_completion" };
                return Ok(Json(json!({"id": meta.id, "object": object, "created": meta.created,
                                      "model": meta.model, "choices": [choice],
                                      "usage": usage(prompt_tokens, completion_tokens)}))
                .into_response());
            }
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "model_error",
        "the model thread dropped the request",
    ))
}

struct StreamState {
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    out: VecDeque<SseEvent>,
    ended: bool,
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// The answer as server-sent events: a first chunk (the role, for chat), one per piece of text,
/// one with the finish reason, the usage chunk when asked for, then `data: [DONE]`.
fn sse(
    meta: Meta,
    rx: UnboundedReceiver<Event>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let mut out = VecDeque::new();
    if meta.kind == Kind::Chat {
        out.push_back(data(&meta.chunk(Some(""), None, true)));
    }
    let state = StreamState { meta, rx, out, ended: false };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.out.pop_front() {
                return Some((Ok(ev), st));
            }
            if st.ended {
                return None;
            }
            match st.rx.recv().await {
                Some(Event::Text(t)) => st.out.push_back(data(&st.meta.chunk(Some(&t), None, false))),
                Some(Event::Done { finish, prompt_tokens, completion_tokens }) => {
                    st.out.push_back(data(&st.meta.chunk(None, Some(finish), false)));
                    if st.meta.include_usage {
                        st.out.push_back(data(&st.meta.usage_chunk(usage(prompt_tokens, completion_tokens))));
                    }
                    st.out.push_back(SseEvent::default().data("[DONE]"));
                    st.ended = true;
                }
                Some(Event::Failed(e)) => {
                    let err = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "model_error", e);
                    st.out.push_back(data(&err.body()));
                    st.ended = true;
                }
                None => st.ended = true,
            }
        }
    });
    Sse::new(stream)
}
