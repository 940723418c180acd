//! `afinar serve`: an OpenAI-compatible HTTP server for a model and its LoRA adapters.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use afinar::engine::Backend;
use afinar_serve::{serve, NamedAdapter, ServeOptions};
use anyhow::{Context, Result};
use clap::Args;

use super::{load, on_device, Job, ModelArgs};

/// Arguments of `afinar serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A LoRA adapter (PEFT folder: adapter_config.json + adapter_model.safetensors) served
    /// beside the base model under NAME, which requests give as their `model`; repeatable.
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    adapters: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every request (default: the AFINAR_API_KEY
    /// environment variable, if set, which keeps the key out of the process list).
    #[arg(long)]
    api_key: Option<String>,
    /// Name of the base model in `/v1/models` and in requests (default: the model file or
    /// folder name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Requests decoded at once, interleaved token by token.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Requests waiting beyond those; more are answered 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Positions per request, prompt plus answer (default: the model's context, at most 4096).
    #[arg(long)]
    context: Option<usize>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
}

/// Runs the command.
pub fn run(args: ServeArgs) -> Result<()> {
    on_device(&args.model, Serve(&args))
}

struct Serve<'a>(&'a ServeArgs);

impl Job for Serve<'_> {
    type Output = Result<()>;
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        serve_on(be, self.0)
    }
}

/// `NAME=DIR` of `--adapter`.
fn parse_adapter(s: &str) -> Result<(String, PathBuf)> {
    let (name, dir) = s
        .split_once('=')
        .filter(|(n, d)| !n.is_empty() && !d.is_empty())
        .with_context(|| format!("--adapter expects NAME=DIR, got `{s}`"))?;
    Ok((name.to_string(), PathBuf::from(dir)))
}

fn serve_on<B: Backend>(be: &B, args: &ServeArgs) -> Result<()> {
    anyhow::ensure!(args.parallel >= 1, "--parallel must be at least 1");
    let specs = args.adapters.iter().map(|s| parse_adapter(s)).collect::<Result<Vec<_>>>()?;
    let (loaded, tok) = load(be, &args.model)?;
    let model = loaded.model;
    let mut adapters = Vec::new();
    for (name, dir) in specs {
        let adapter = model
            .load_adapter(be, &dir)
            .with_context(|| format!("loading the adapter {name}={}", dir.display()))?;
        eprintln!(
            "afinar: adapter {name}: rank {} on {} modules ({})",
            adapter.rank,
            adapter.modules,
            dir.display()
        );
        adapters.push(NamedAdapter { name, adapter });
    }
    let model_name = match &args.served_model_name {
        Some(n) => n.clone(),
        None => {
            let p = &args.model.model;
            let stem = if p.is_dir() { p.file_name() } else { p.file_stem() };
            stem.map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into_owned())
        }
    };
    let context = args.context.unwrap_or(model.config.max_seq_len.min(4096));
    let opts = ServeOptions {
        addr: SocketAddr::new(args.host, args.port),
        model_name,
        api_key: args
            .api_key
            .clone()
            .or_else(|| std::env::var("AFINAR_API_KEY").ok())
            .filter(|k| !k.is_empty()),
        max_active: args.parallel,
        max_queue: args.queue,
        max_body_bytes: args.max_body_bytes,
        context,
    };
    let (names, parallel, queue) = (
        std::iter::once(opts.model_name.clone())
            .chain(adapters.iter().map(|a| a.name.clone()))
            .collect::<Vec<_>>(),
        args.parallel,
        args.queue,
    );
    serve(be, model, tok, adapters, opts, |addr| {
        eprintln!(
            "afinar: serving {} on http://{addr}/v1 ({parallel} requests at once, {queue} waiting, \
             {context} tokens per request)",
            names.join(", ")
        );
    })
}
