//! The `afinar` command-line tool: argument parsing and display only; the work happens in the
//! `afinar` library.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fine-tune, evaluate, quantize and run Llama-3 family models.
#[derive(Parser)]
#[command(name = "afinar", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (only the generated text goes to stdout).
    Generate(commands::generate::GenerateArgs),
    /// Chat with a model interactively, turn by turn.
    Chat(commands::chat::ChatArgs),
    /// Turn text into token ids, with optional statistics.
    Tokenize(commands::tokenize::TokenizeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => commands::generate::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::Tokenize(args) => commands::tokenize::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
