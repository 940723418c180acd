//! The server over real HTTP on the loopback with a plain client (no Python): SmolLM2-135M from the
//! test assets, two random LoRA adapters written with the project's PEFT writer; answers compared
//! with `afinar::generate` on a model of its own, errors checked for status and OpenAI shape.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use afinar::checkpoint::{save_peft_adapter, DType, LoraAdapterConfig, TensorWrite};
use afinar::engine::{CpuBackend, WeightFormat};
use afinar::generate::{generate, GenerateOptions, Rng, SamplingParams};
use afinar::models::{load_model, LoadOptions, LoadedModel};
use afinar::tokenizer::{render_chat, Message};
use afinar_serve::{serve, NamedAdapter, ServeOptions};
use serde_json::{json, Value};

fn smollm2() -> PathBuf {
    let base = std::env::var_os("AFINAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/afinar"));
    let p = base.join("assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-assets.sh", p.display());
    p
}

fn load(be: &CpuBackend) -> LoadedModel<CpuBackend> {
    let opts = LoadOptions { format: WeightFormat::F32, keep_quantized: true, ..Default::default() };
    load_model(be, &smollm2(), &opts).unwrap()
}

/// A random rank-4 adapter on the q and v projections, written as PEFT does.
fn write_adapter(dir: &Path, seed: u64) {
    let be = CpuBackend::new(Some(1));
    let model = load(&be).model;
    let r = 4;
    let mut rng = Rng::new(seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, l) in model.linears() {
        if name.ends_with("q_proj") || name.ends_with("v_proj") {
            let mut rand =
                |n: usize| (0..n).map(|_| (rng.next_f64() as f32 - 0.5) * 0.2).collect::<Vec<f32>>();
            tensors.push((format!("{name}.lora_A.weight"), vec![r, l.in_features], rand(r * l.in_features)));
            tensors.push((
                format!("{name}.lora_B.weight"),
                vec![l.out_features, r],
                rand(l.out_features * r),
            ));
        }
    }
    let writes: Vec<TensorWrite> =
        tensors.iter().map(|(n, s, v)| TensorWrite::from_f32(n, DType::F32, s.clone(), v)).collect();
    save_peft_adapter(dir, &LoraAdapterConfig::new(r, 8.0, &["q_proj", "v_proj"]), &writes).unwrap();
}

struct Opts {
    adapters: Vec<(String, PathBuf)>,
    api_key: Option<String>,
    max_active: usize,
    max_queue: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { adapters: Vec::new(), api_key: None, max_active: 4, max_queue: 8 }
    }
}

/// Starts a server on an ephemeral loopback port in a thread of its own (it ends with the test
/// process) and returns its base URL.
fn start(o: Opts) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let be = CpuBackend::new(Some(1));
        let loaded = load(&be);
        let model = loaded.model;
        let adapters = o
            .adapters
            .iter()
            .map(|(name, dir)| NamedAdapter {
                name: name.clone(),
                adapter: model.load_adapter(&be, dir).unwrap(),
            })
            .collect();
        let opts = ServeOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            model_name: "smollm2".into(),
            api_key: o.api_key,
            max_active: o.max_active,
            max_queue: o.max_queue,
            max_body_bytes: 64 * 1024,
            context: 512,
        };
        let r = serve(&be, model, loaded.tokenizer.unwrap(), adapters, opts, |addr| tx.send(addr).unwrap());
        r.unwrap();
    });
    let addr = rx.recv_timeout(std::time::Duration::from_secs(120)).expect("server started");
    format!("http://{addr}")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(300)))
        .build()
        .into()
}

/// POSTs `body` (JSON) and returns the status and the parsed answer.
fn post(url: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    post_raw(url, &body.to_string(), key)
}

fn post_raw(url: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = agent().post(url).header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let mut resp = req.send(body).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// The error body is OpenAI's shape; returns `(param, code)`.
fn error_of(v: &Value) -> (Option<String>, Option<String>) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    (e["param"].as_str().map(String::from), e["code"].as_str().map(String::from))
}

/// `afinar generate`'s greedy answer to a chat prompt (or raw text), in process.
fn reference(prompt: &str, chat: bool, max_tokens: usize, adapter: Option<&Path>) -> String {
    let be = CpuBackend::new(Some(1));
    let loaded = load(&be);
    let tok = loaded.tokenizer.unwrap();
    let mut model = loaded.model;
    if let Some(dir) = adapter {
        let mut a = model.load_adapter(&be, dir).unwrap();
        model.swap_adapter(&mut a);
    }
    let ids = if chat {
        let text = render_chat(&tok, &[Message::new("user", prompt)], true).unwrap();
        tok.encode(&text, false).unwrap()
    } else {
        tok.encode(prompt, tok.add_bos_default()).unwrap()
    };
    let mut cache = model.new_cache(&be, 1, ids.len() + max_tokens).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: max_tokens,
        sampling: SamplingParams::default(),
        stop_ids: tok.stop_ids(),
    };
    let (out, _) = generate(&be, &model, &mut cache, &ids, &opts, |_| Ok(true)).unwrap();
    tok.decode(&out, true).unwrap()
}

fn chat_body(model: &str, prompt: &str, max_tokens: usize) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}],
           "temperature": 0, "max_tokens": max_tokens})
}

/// Reads a streamed answer: the `data:` payloads up to `[DONE]` (which must come).
fn read_stream(url: &str, body: &Value) -> Vec<Value> {
    let resp = agent().post(url).header("Content-Type", "application/json").send(body.to_string()).unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut out = Vec::new();
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line.unwrap();
        if let Some(d) = line.strip_prefix("data: ") {
            if d == "[DONE]" {
                return out;
            }
            out.push(serde_json::from_str(d).unwrap());
        }
    }
    panic!("the stream ended without [DONE]: {out:?}");
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .filter_map(|c| c["delta"]["content"].as_str().or(c["text"].as_str()))
        .collect()
}

#[test]
fn chat_and_completions_match_generate_and_stream() {
    let url = start(Opts::default());
    let prompt = "What is the capital of France?";
    let expect = reference(prompt, true, 24, None);

    let (status, v) = post(&format!("{url}/v1/chat/completions"), &chat_body("smollm2", prompt, 24), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"].as_str().unwrap(), expect);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 24);
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v["usage"]["total_tokens"].as_u64().unwrap(), prompt_tokens + 24);

    // The same streamed, with usage at the end.
    let mut body = chat_body("smollm2", prompt, 24);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = read_stream(&format!("{url}/v1/chat/completions"), &body);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&chunks), expect);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert_eq!(last["usage"]["completion_tokens"], 24);
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");

    // A stop string taken from the middle of the answer: the text ends just before it, also when
    // streamed (where it spans tokens).
    let words: Vec<&str> = expect.split(' ').collect();
    assert!(words.len() > 4, "{expect}");
    let stop = format!("{} {}", words[2], &words[3][..words[3].len().min(2)]);
    let cut = &expect[..expect.find(&stop).unwrap()];
    let mut body = chat_body("smollm2", prompt, 24);
    body["stop"] = json!([stop, "never-appears"]);
    let (status, v) = post(&format!("{url}/v1/chat/completions"), &body, None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"].as_str().unwrap(), cut);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    body["stream"] = json!(true);
    let chunks = read_stream(&format!("{url}/v1/chat/completions"), &body);
    assert_eq!(streamed_text(&chunks), cut);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");

    // Text completion (BOS as `generate` without --chat).
    let text_prompt = "The three primary colors are";
    let expect = reference(text_prompt, false, 12, None);
    let (status, v) = post(
        &format!("{url}/v1/completions"),
        &json!({"model": "smollm2", "prompt": text_prompt, "max_tokens": 12, "temperature": 0}),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), expect);
    let chunks = read_stream(
        &format!("{url}/v1/completions"),
        &json!({"model": "smollm2", "prompt": text_prompt, "max_tokens": 12, "temperature": 0, "stream": true}),
    );
    assert_eq!(streamed_text(&chunks), expect);

    // Sampling with a seed repeats itself.
    let mut body = chat_body("smollm2", "Tell me a story.", 16);
    body["temperature"] = json!(0.9);
    body["top_k"] = json!(40);
    body["top_p"] = json!(0.95);
    body["seed"] = json!(11);
    let a = post(&format!("{url}/v1/chat/completions"), &body, None).1;
    let b = post(&format!("{url}/v1/chat/completions"), &body, None).1;
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
}

#[test]
fn adapters_are_chosen_per_request_also_concurrently() {
    let tmp = std::env::temp_dir().join(format!("afinar-serve-test-{}", std::process::id()));
    let (a1, a2) = (tmp.join("one"), tmp.join("two"));
    write_adapter(&a1, 1);
    write_adapter(&a2, 2);
    let url = start(Opts {
        adapters: vec![("one".into(), a1.clone()), ("two".into(), a2.clone())],
        ..Default::default()
    });
    let (status, v) = {
        let mut resp = agent().get(&format!("{url}/v1/models")).call().unwrap();
        (
            resp.status().as_u16(),
            serde_json::from_str::<Value>(&resp.body_mut().read_to_string().unwrap()).unwrap(),
        )
    };
    assert_eq!(status, 200);
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["smollm2", "one", "two"]);

    let prompts = ["Name a fruit.", "What is two plus two?"];
    let models: [(&str, Option<&Path>); 3] = [("smollm2", None), ("one", Some(&a1)), ("two", Some(&a2))];
    let mut expected = Vec::new();
    for p in prompts {
        for (name, dir) in models {
            expected.push((p, name, reference(p, true, 10, dir)));
        }
    }
    // The adapters change the answers.
    assert_ne!(expected[0].2, expected[1].2);
    assert_ne!(expected[1].2, expected[2].2);
    // All six at once (4 decoded together, 2 queued), each equal to its own reference.
    let answers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = expected
            .iter()
            .map(|(p, name, _)| {
                let url = url.clone();
                s.spawn(move || {
                    let (status, v) =
                        post(&format!("{url}/v1/chat/completions"), &chat_body(name, p, 10), None);
                    assert_eq!(status, 200, "{v}");
                    assert_eq!(v["model"], *name);
                    v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((p, name, want), got) in expected.iter().zip(&answers) {
        assert_eq!(got, want, "{name} on {p:?}");
    }
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn bad_requests_get_openai_shaped_4xx() {
    let url =
        start(Opts { api_key: Some("sekrit".into()), max_active: 1, max_queue: 0, ..Default::default() });
    let key = Some("sekrit");
    let chat = format!("{url}/v1/chat/completions");
    let ok = chat_body("smollm2", "Hi", 4);

    let (s, v) = post(&chat, &ok, None);
    assert_eq!((s, error_of(&v).1.as_deref()), (401, Some("invalid_api_key")));
    let (s, v) = post(&chat, &ok, Some("wrong"));
    assert_eq!((s, error_of(&v).1.as_deref()), (401, Some("invalid_api_key")));
    let (s, v) = post(&chat, &ok, key);
    assert_eq!(s, 200, "{v}");

    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}), 404, "model"),
        (json!({"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "n": 2}), 400, "n"),
        (
            json!({"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
            400,
            "temperature",
        ),
        (
            json!({"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
            400,
            "max_tokens",
        ),
        (json!({"model": "smollm2"}), 400, "messages"),
        (json!({"model": "smollm2", "messages": []}), 400, "messages"),
        (
            json!({"model": "smollm2", "messages": [{"role": "user"}, {"role": "x", "content": "y"}]}),
            400,
            "messages[1].role",
        ),
        (
            json!({"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}),
            400,
            "messages",
        ),
        (json!({"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "stop": 3}), 400, "stop"),
    ];
    for (body, status, param) in cases {
        let (s, v) = post(&chat, &body, key);
        assert_eq!(s, status, "{body} → {v}");
        assert_eq!(error_of(&v).0.as_deref(), Some(param), "{body} → {v}");
    }
    let (s, v) = post(&format!("{url}/v1/completions"), &json!({"model": "smollm2", "prompt": 5}), key);
    assert_eq!((s, error_of(&v).0.as_deref()), (400, Some("prompt")));
    let (s, v) = post_raw(&chat, "{\"model\": ", key);
    assert_eq!((s, error_of(&v).1.as_deref()), (400, Some("invalid_json")));
    let big = format!("{{\"model\": \"smollm2\", \"prompt\": \"{}\"}}", "a".repeat(100 * 1024));
    let (s, v) = post_raw(&format!("{url}/v1/completions"), &big, key);
    assert_eq!((s, error_of(&v).1.as_deref()), (413, Some("request_too_large")));
    let (s, v) = post(&format!("{url}/v1/embeddings"), &ok, key);
    assert_eq!((s, error_of(&v).1.as_deref()), (404, Some("unknown_url")));

    // One request decoding and no queue: a second one is refused with 503 while the first runs,
    // and accepted again once it is done.
    let mut long = chat_body("smollm2", "Write a long story about a dragon.", 400);
    long["stream"] = json!(true);
    let resp = agent()
        .post(&chat)
        .header("Authorization", "Bearer sekrit")
        .header("Content-Type", "application/json")
        .send(long.to_string())
        .unwrap();
    let mut lines = BufReader::new(resp.into_body().into_reader()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("data: "), "{first}");
    let (s, v) = post(&chat, &ok, key);
    assert_eq!((s, error_of(&v).1.as_deref()), (503, Some("server_busy")));
    drop(lines); // the client goes away: the server drops its sequence
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (s, v) = post(&chat, &ok, key);
        if s == 200 {
            break;
        }
        assert_eq!(s, 503, "{v}");
        assert!(std::time::Instant::now() < deadline, "the slot was never given back");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
