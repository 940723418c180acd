//! `afinar chat`: an interactive multi-turn conversation. The KV cache keeps the conversation;
//! each turn only feeds the tokens that differ from what is cached.

use std::io::{BufRead, Write};

use afinar::generate::GenerateOptions;
use afinar::tokenizer::{render_chat, Message};
use anyhow::{Context, Result};
use clap::Args;

use afinar::engine::Backend;

use super::{generate_to_stdout, load, on_device, Job, ModelArgs, SamplingArgs};

/// Arguments of `afinar chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// System message for the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Context length to allocate (default: the model's, at most 8192).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    context: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// Runs the command.
pub fn run(args: ChatArgs) -> Result<()> {
    on_device(&args.model, Chat(&args))
}

struct Chat<'a>(&'a ChatArgs);

impl Job for Chat<'_> {
    type Output = Result<()>;
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        chat_on(be, self.0)
    }
}

fn chat_on<B: Backend>(be: &B, args: &ChatArgs) -> Result<()> {
    let sampling = args.sampling.params()?;
    let (loaded, tok) = load(be, &args.model)?;
    let model = &loaded.model;
    let capacity = args.context.unwrap_or(8192).min(model.config.max_seq_len);
    let mut cache = model.new_cache(be, 1, capacity)?;
    let mut cached: Vec<u32> = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    let reset = |messages: &mut Vec<Message>| {
        messages.clear();
        if let Some(s) = &args.system {
            messages.push(Message { role: "system".into(), content: s.clone() });
        }
    };
    reset(&mut messages);
    eprintln!("afinar chat: type a message; /reset starts over, /exit (or end of input) quits.");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let Some(line) = lines.next() else { break };
        let line = line.context("reading standard input")?;
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                reset(&mut messages);
                cache.clear();
                cached.clear();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(Message { role: "user".into(), content: text.to_string() });
        let rendered = render_chat(&tok, &messages, true)?;
        let ids = tok.encode(&rendered, false)?;
        // Reuse the cached prefix the new rendering shares with what was fed before.
        let common = cached.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
        if ids.len() + 1 >= capacity {
            eprintln!("(the conversation fills the {capacity}-token context; /reset to start over)");
            messages.pop();
            continue;
        }
        cache.truncate(common);
        cached.truncate(common);
        let opts = GenerateOptions {
            max_new_tokens: args.sampling.max_new_tokens.min(capacity - ids.len()),
            sampling,
            stop_ids: tok.stop_ids(),
        };
        let (new, stats) = generate_to_stdout(be, model, &mut cache, &ids[common..], &opts, &tok)?;
        cached.extend_from_slice(&ids[common..]);
        cached.extend_from_slice(&new);
        let reply = tok.decode(&new, true)?;
        messages.push(Message { role: "assistant".into(), content: reply.trim().to_string() });
        eprintln!("({} tokens, {:.1} tokens/s)", stats.generated_tokens, stats.gen_tps());
    }
    Ok(())
}
