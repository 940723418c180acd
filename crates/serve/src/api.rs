//! The OpenAI request bodies afinar reads, their checks, and the error body every 4xx/5xx carries.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

/// An error answered as OpenAI does: a status and
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong and what was expected.
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A short machine-readable code (`model_not_found`, `invalid_api_key` …).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about the field `param` (its message starts with the field's name).
    pub fn field(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("`{param}`: {}", message.into()),
            param: Some(param.to_string()),
            code: Some("invalid_value"),
        }
    }

    /// An error with this status and message, about no particular field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), param: None, code: Some(code) }
    }

    /// OpenAI's `type` for this status.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => "server_overloaded",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// One chat message as sent: `content` is a string or a list of `{"type": "text", "text": …}`
/// parts.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer` (read as `system`), `user`, `assistant`, `tool` …
    pub role: String,
    /// The text, or text parts.
    #[serde(default)]
    pub content: Option<Value>,
}

/// `stop`: one string or a list of up to four.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    /// Send a last chunk with the token counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// The body of `/v1/chat/completions` and `/v1/completions` (each reads its own of `messages` and
/// `prompt`). Unknown fields are ignored, as OpenAI-compatible servers do; known fields afinar
/// cannot honour are refused with a 400 rather than silently dropped.
#[derive(Debug, Deserialize)]
pub struct CompletionBody {
    /// The base model's name or an adapter's.
    pub model: Option<String>,
    /// Chat: the conversation.
    pub messages: Option<Vec<ChatMessage>>,
    /// Completions: the prompt text (a string, or a list holding one string).
    pub prompt: Option<Value>,
    /// Softmax temperature, 0 to 2 (0: greedy). Default 1.
    pub temperature: Option<f32>,
    /// Nucleus sampling, in (0, 1]. Default 1.
    pub top_p: Option<f32>,
    /// Sample among the k most likely tokens (an extension, as in llama.cpp; 0 = all).
    pub top_k: Option<u32>,
    /// Seed of the sampler.
    pub seed: Option<i64>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Most tokens to generate (the newer name; wins over `max_tokens`).
    pub max_completion_tokens: Option<u32>,
    /// Strings that end the answer (not included in it).
    pub stop: Option<Stop>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Number of choices: only 1.
    pub n: Option<u32>,
    /// Refused when not 1.
    pub best_of: Option<u32>,
    /// Log probabilities: refused.
    pub logprobs: Option<Value>,
    /// Refused when set.
    pub top_logprobs: Option<u32>,
    /// Refused when not 0.
    pub presence_penalty: Option<f32>,
    /// Refused when not 0.
    pub frequency_penalty: Option<f32>,
    /// Refused when non-empty.
    pub tools: Option<Vec<Value>>,
    /// Refused when true.
    pub echo: Option<bool>,
    /// Refused when set.
    pub suffix: Option<String>,
}

/// What both endpoints share once checked.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Softmax temperature.
    pub temperature: f32,
    /// Nucleus.
    pub top_p: f32,
    /// Top-k (0 = all).
    pub top_k: usize,
    /// Sampler seed.
    pub seed: u64,
    /// Requested token limit, if any.
    pub max_tokens: Option<usize>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Stream?
    pub stream: bool,
    /// Last chunk with usage?
    pub include_usage: bool,
}

/// Parses a request body, naming the field at fault.
pub fn parse_body(bytes: &[u8]) -> Result<CompletionBody, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let body: CompletionBody = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // A fault in the body as a whole has no named field on its path.
        let top = !e.path().iter().any(|s| matches!(s, serde_path_to_error::Segment::Map { .. }));
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if !top => ApiError::field(&path, inner.to_string()),
            serde_json::error::Category::Data => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_body",
                format!("the body must be a JSON object: {inner}"),
            ),
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {inner}"),
            ),
        }
    })?;
    Ok(body)
}

impl CompletionBody {
    /// Checks the sampling and shared fields.
    pub fn check(&self) -> Result<Checked, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::field("n", format!("only n = 1 is supported, got {n}")));
            }
        }
        if let Some(b) = self.best_of {
            if b != 1 {
                return Err(ApiError::field("best_of", format!("only best_of = 1 is supported, got {b}")));
            }
        }
        match &self.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(_) => return Err(ApiError::field("logprobs", "log probabilities are not supported")),
        }
        if self.top_logprobs.is_some() {
            return Err(ApiError::field("top_logprobs", "log probabilities are not supported"));
        }
        for (name, v) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if v.is_some_and(|v| v != 0.0) {
                return Err(ApiError::field(name, format!("`{name}` is not supported (only 0)")));
            }
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::field("tools", "tool calls are not supported"));
        }
        if self.echo == Some(true) {
            return Err(ApiError::field("echo", "echo is not supported"));
        }
        if self.suffix.is_some() {
            return Err(ApiError::field("suffix", "suffix is not supported"));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(ApiError::field(
                "temperature",
                format!("must be a number from 0 to 2, got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p.is_finite() && top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::field("top_p", format!("must be in (0, 1], got {top_p}")));
        }
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => Some(("max_completion_tokens", m)),
            (None, Some(m)) => Some(("max_tokens", m)),
            (None, None) => None,
        };
        if let Some((name, 0)) = max_tokens {
            return Err(ApiError::field(name, "must be at least 1"));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 {
            return Err(ApiError::field("stop", format!("at most 4 stop strings, got {}", stop.len())));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::field("stop", "stop strings must not be empty"));
        }
        let seed = match self.seed {
            Some(s) => s as u64,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        };
        if self.stream_options.is_some() && !self.stream {
            return Err(ApiError::field("stream_options", "only allowed when `stream` is true"));
        }
        Ok(Checked {
            temperature,
            top_p,
            top_k: self.top_k.unwrap_or(0) as usize,
            seed,
            max_tokens: max_tokens.map(|(_, m)| m as usize),
            stop,
            stream: self.stream,
            include_usage: self.stream_options.as_ref().is_some_and(|o| o.include_usage),
        })
    }

    /// The chat messages as afinar's template renderer takes them.
    pub fn chat_messages(&self) -> Result<Vec<afinar::tokenizer::Message>, ApiError> {
        let Some(messages) = &self.messages else {
            return Err(ApiError::field("messages", "required: a list of {role, content} messages"));
        };
        if messages.is_empty() {
            return Err(ApiError::field("messages", "must hold at least one message"));
        }
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = match m.role.as_str() {
                    "developer" => "system",
                    r @ ("system" | "user" | "assistant" | "tool") => r,
                    other => {
                        return Err(ApiError::field(
                            &format!("messages[{i}].role"),
                            format!(
                                "unknown role `{other}`; expected system, developer, user, assistant or tool"
                            ),
                        ))
                    }
                };
                let content =
                    match &m.content {
                        None | Some(Value::Null) => String::new(),
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Array(parts)) => {
                            let mut text = String::new();
                            for (j, p) in parts.iter().enumerate() {
                                match (
                                    p.get("type").and_then(Value::as_str),
                                    p.get("text").and_then(Value::as_str),
                                ) {
                                    (Some("text"), Some(t)) => text.push_str(t),
                                    _ => return Err(ApiError::field(
                                        &format!("messages[{i}].content[{j}]"),
                                        "only text parts ({\"type\": \"text\", \"text\": …}) are supported",
                                    )),
                                }
                            }
                            text
                        }
                        Some(_) => {
                            return Err(ApiError::field(
                                &format!("messages[{i}].content"),
                                "expected a string or a list of text parts",
                            ))
                        }
                    };
                Ok(afinar::tokenizer::Message::new(role, content))
            })
            .collect()
    }

    /// The completion prompt: a string, or a list holding exactly one string.
    pub fn prompt_text(&self) -> Result<String, ApiError> {
        match &self.prompt {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Array(v)) if v.len() == 1 && v[0].is_string() => {
                Ok(v[0].as_str().unwrap_or("").to_string())
            }
            Some(Value::Array(_)) => Err(ApiError::field(
                "prompt",
                "only one prompt per request (a string or a list of one string)",
            )),
            None => Err(ApiError::field("prompt", "required: the prompt text")),
            Some(_) => Err(ApiError::field("prompt", "expected a string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_field_type_names_the_field() {
        let e = parse_body(br#"{"model": "m", "temperature": "hot"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        assert!(e.message.starts_with("`temperature`: ") && e.message.contains("f32"), "{}", e.message);
    }

    #[test]
    fn broken_json_is_a_400_without_param() {
        let e = parse_body(b"{\"model\": ").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, Some("invalid_json"));
        let e = parse_body(b"[1, 2]").unwrap_err();
        assert_eq!(e.code, Some("invalid_request_body"));
    }

    #[test]
    fn checks_ranges_and_unsupported_fields() {
        let check = |s: &str| parse_body(s.as_bytes()).unwrap().check();
        assert_eq!(check(r#"{"n": 2}"#).unwrap_err().param.as_deref(), Some("n"));
        assert_eq!(check(r#"{"temperature": 3}"#).unwrap_err().param.as_deref(), Some("temperature"));
        assert_eq!(check(r#"{"top_p": 0}"#).unwrap_err().param.as_deref(), Some("top_p"));
        assert_eq!(check(r#"{"max_tokens": 0}"#).unwrap_err().param.as_deref(), Some("max_tokens"));
        assert_eq!(check(r#"{"stop": ["a","b","c","d","e"]}"#).unwrap_err().param.as_deref(), Some("stop"));
        assert_eq!(check(r#"{"logprobs": true}"#).unwrap_err().param.as_deref(), Some("logprobs"));
        let ok = check(r#"{"stop": "x", "max_tokens": 5, "max_completion_tokens": 7, "seed": 3, "n": 1}"#)
            .unwrap();
        assert_eq!((ok.stop, ok.max_tokens, ok.seed), (vec!["x".to_string()], Some(7), 3));
    }

    #[test]
    fn messages_accept_text_parts_and_refuse_others() {
        let b = parse_body(
            br#"{"messages": [{"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
        )
        .unwrap();
        let m = b.chat_messages().unwrap();
        assert_eq!((m[0].role.as_str(), m[1].content.as_str()), ("system", "ab"));
        let b =
            parse_body(br#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#).unwrap();
        assert_eq!(b.chat_messages().unwrap_err().param.as_deref(), Some("messages[0].content[0]"));
        let b = parse_body(br#"{"messages": [{"role": "robot", "content": "x"}]}"#).unwrap();
        assert_eq!(b.chat_messages().unwrap_err().param.as_deref(), Some("messages[0].role"));
    }
}
