//! `afinar generate`: one prompt in, the continuation out on stdout (statistics on stderr).

use std::path::PathBuf;

use afinar::generate::GenerateOptions;
use afinar::tokenizer::{render_chat, Message, Tokenizer};
use anyhow::{Context, Result};
use clap::Args;

use afinar::engine::Backend;

use super::{generate_to_stdout, load, on_device, Job, ModelArgs, SamplingArgs};

/// Arguments of `afinar generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// A LoRA adapter (PEFT folder: adapter_config.json + adapter_model.safetensors) applied
    /// over the model.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// Token ids of the prompt: raw text (with the tokenizer's BOS), or a chat turn rendered with
/// the model's template.
pub fn prompt_ids(tok: &Tokenizer, prompt: &str, chat: bool, system: Option<&str>) -> Result<Vec<u32>> {
    if chat {
        let mut messages = Vec::new();
        if let Some(system) = system {
            messages.push(Message { role: "system".into(), content: system.into() });
        }
        messages.push(Message { role: "user".into(), content: prompt.into() });
        let text = render_chat(tok, &messages, true).context("rendering the chat template")?;
        Ok(tok.encode(&text, false)?)
    } else {
        Ok(tok.encode(prompt, tok.add_bos_default())?)
    }
}

/// Runs the command.
pub fn run(args: GenerateArgs) -> Result<()> {
    on_device(&args.model, Generate(&args))
}

struct Generate<'a>(&'a GenerateArgs);

impl Job for Generate<'_> {
    type Output = Result<()>;
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        generate_on(be, self.0)
    }
}

fn generate_on<B: Backend>(be: &B, args: &GenerateArgs) -> Result<()> {
    let sampling = args.sampling.params()?;
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => anyhow::bail!("give --prompt TEXT or --prompt-file FILE"),
    };
    let (mut loaded, tok) = load(be, &args.model)?;
    // The adapter's layers move into the model; what is left in `_adapter` is empty.
    let _adapter = match &args.adapter {
        Some(dir) => {
            let mut a = loaded
                .model
                .load_adapter(be, dir)
                .with_context(|| format!("loading the adapter {}", dir.display()))?;
            loaded.model.swap_adapter(&mut a);
            Some(a)
        }
        None => None,
    };
    let model = &loaded.model;
    let ids = prompt_ids(&tok, &prompt, args.chat, args.system.as_deref())?;
    let ctx = model.config.max_seq_len;
    anyhow::ensure!(
        ids.len() < ctx,
        "the prompt is {} tokens long but the model's context is {ctx} tokens",
        ids.len()
    );
    let capacity = (ids.len() + args.sampling.max_new_tokens).min(ctx);
    let mut cache = model.new_cache(be, 1, capacity)?;
    let opts =
        GenerateOptions { max_new_tokens: args.sampling.max_new_tokens, sampling, stop_ids: tok.stop_ids() };
    let (_, stats) = generate_to_stdout(be, model, &mut cache, &ids, &opts, &tok)?;
    eprintln!(
        "afinar: prompt {} tokens at {:.1} tokens/s; generated {} tokens at {:.1} tokens/s ({:?})",
        stats.prompt_tokens,
        stats.prompt_tps(),
        stats.generated_tokens,
        stats.gen_tps(),
        stats.stop
    );
    Ok(())
}
