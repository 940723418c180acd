//! `afinar tokenize`: token ids of a text, or statistics (tokens per word, characters per token).

use std::path::PathBuf;

use afinar::models::load_tokenizer;
use afinar::tokenizer::token_stats;
use anyhow::{Context, Result};
use clap::Args;

/// Arguments of `afinar tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// tokenizer.json, tokenizer.model, a checkpoint folder, or a GGUF file.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Read the text from this file.
    #[arg(long, conflicts_with = "text")]
    file: Option<PathBuf>,
    /// The text to tokenize.
    #[arg(required_unless_present = "file")]
    text: Option<String>,
    /// Print statistics instead of ids.
    #[arg(long)]
    stats: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Prepend the beginning-of-text token.
    #[arg(long)]
    bos: bool,
}

/// Runs the command.
pub fn run(args: TokenizeArgs) -> Result<()> {
    let tok = load_tokenizer(&args.tokenizer)?;
    let text = match (&args.text, &args.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => anyhow::bail!("give a TEXT argument or --file FILE"),
    };
    if args.stats {
        let s = token_stats(&tok, &text)?;
        if args.json {
            println!(
                "{{\"words\":{},\"tokens\":{},\"chars\":{},\"tokens_per_word\":{:.4},\"chars_per_token\":{:.4}}}",
                s.words, s.tokens, s.chars, s.tokens_per_word, s.chars_per_token
            );
        } else {
            println!("words            {}", s.words);
            println!("tokens           {}", s.tokens);
            println!("characters       {}", s.chars);
            println!("tokens per word  {:.3}", s.tokens_per_word);
            println!("chars per token  {:.3}", s.chars_per_token);
        }
        return Ok(());
    }
    let ids = tok.encode(&text, args.bos)?;
    if args.json {
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{{\"ids\":[{}],\"count\":{}}}", list.join(","), ids.len());
    } else {
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", list.join(" "));
    }
    Ok(())
}
