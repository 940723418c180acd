//! An OpenAI-compatible HTTP server for an afinar model: `/v1/chat/completions` and
//! `/v1/completions` (with server-sent-event streaming), `/v1/models`, built on axum and tokio.
//!
//! The model stays on the thread that calls [`serve`] (the one holding the backend); the HTTP
//! side runs on a tokio runtime of its own thread and hands requests over through a channel.
//! Concurrency: up to [`ServeOptions::max_active`] requests are decoded at once, interleaved one
//! token each in turn, each with its own KV cache; up to [`ServeOptions::max_queue`] more wait;
//! beyond that a request is answered 503 at once. LoRA adapters are loaded beside the base model
//! and swapped into its linear layers per request (see [`afinar::models::LoraAdapter`]).

pub mod api;
mod http;
pub mod scheduler;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc};

use afinar::engine::Backend;
use afinar::models::{Llama, LoraAdapter};
use afinar::tokenizer::Tokenizer;
use anyhow::{Context, Result};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (`127.0.0.1:8080`; port 0 picks a free one).
    pub addr: SocketAddr,
    /// Name under which `/v1/models` lists the base model and requests choose it.
    pub model_name: String,
    /// When set, requests must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Requests decoded at once (interleaved token by token).
    pub max_active: usize,
    /// Requests waiting beyond those; more are answered 503.
    pub max_queue: usize,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Positions per request (prompt plus answer), at most the model's context.
    pub context: usize,
}

/// A LoRA adapter to serve: requests name it in their `model` field.
pub struct NamedAdapter<B: Backend> {
    /// The name clients use.
    pub name: String,
    /// The loaded adapter.
    pub adapter: LoraAdapter<B>,
}

/// What the HTTP side knows of the model.
pub(crate) struct Shared {
    pub opts: ServeOptions,
    pub tok: Arc<Tokenizer>,
    pub adapters: Vec<String>,
    pub jobs: mpsc::Sender<scheduler::Job>,
    pub in_flight: Arc<AtomicUsize>,
    pub created: u64,
}

/// Serves `model` until the HTTP side stops: binds `opts.addr`, calls `ready` with the bound
/// address, then runs the model loop on this thread. Fails at once when the address cannot be
/// bound or an option is out of range.
pub fn serve<B: Backend>(
    be: &B,
    mut model: Llama<B>,
    tok: Tokenizer,
    adapters: Vec<NamedAdapter<B>>,
    opts: ServeOptions,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    anyhow::ensure!(opts.max_active >= 1, "the number of requests decoded at once must be at least 1");
    anyhow::ensure!(
        opts.context >= 2 && opts.context <= model.config.max_seq_len,
        "the context per request must be from 2 to the model's {} tokens, got {}",
        model.config.max_seq_len,
        opts.context
    );
    let mut names = vec![opts.model_name.clone()];
    for a in &adapters {
        anyhow::ensure!(!names.contains(&a.name), "the model name `{}` is given twice", a.name);
        names.push(a.name.clone());
    }
    let listener =
        std::net::TcpListener::bind(opts.addr).with_context(|| format!("listening on {}", opts.addr))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let tok = Arc::new(tok);
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        tok: tok.clone(),
        adapters: adapters.iter().map(|a| a.name.clone()).collect(),
        jobs: tx,
        in_flight: Arc::new(AtomicUsize::new(0)),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let http = std::thread::Builder::new().name("afinar-http".into()).spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            axum::serve(listener, http::router(shared)).await
        })
    })?;
    ready(addr);
    let mut loaded: Vec<LoraAdapter<B>> = adapters.into_iter().map(|a| a.adapter).collect();
    scheduler::run(be, &mut model, &tok, &mut loaded, rx, opts.max_active);
    match http.join() {
        Ok(r) => r.context("the HTTP server stopped"),
        Err(_) => anyhow::bail!("the HTTP server thread panicked"),
    }
}
