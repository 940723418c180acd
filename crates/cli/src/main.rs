//! The `afinar` command-line tool: argument parsing and display only; the work happens in the
//! `afinar` library.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fine-tune, evaluate, quantize and run Llama-3 family models.
#[derive(Parser)]
#[command(name = "afinar", version, long_version = long_version(), about, long_about = None)]
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
    /// List the built-in recipe configs.
    Ls(commands::ls::LsArgs),
    /// Copy a built-in config to a file, to edit it.
    Cp(commands::cp::CpArgs),
    /// Print a config (built-in name or file).
    Cat(commands::cat::CatArgs),
    /// Check a config and its overrides without loading any weights.
    Validate(commands::validate::ValidateArgs),
    /// Evaluate a model: perplexity, multiple-choice and exact-match tasks, per language.
    Eval(commands::eval::EvalArgs),
    /// Download a Hugging Face Hub repository into the Hugging Face cache (prints its folder).
    Download(commands::download::DownloadArgs),
    /// Fine-tune: `afinar run RECIPE --config NAME|PATH [KEY=VALUE ~KEY …]`.
    Run(commands::run::RunArgs),
    /// Serve a model and its LoRA adapters over an OpenAI-compatible HTTP API.
    Serve(commands::serve::ServeArgs),
    /// Chart runs' loss, learning rate and throughput (PNG and SVG), one line per run.
    Plot(commands::plot::PlotArgs),
    /// Write a model as a llama.cpp GGUF file (f32, f16, q8_0, q4_0, q4_k) or a bitsandbytes NF4
    /// Hugging Face folder (nf4).
    Quantize(commands::quantize::QuantizeArgs),
    /// Write a PEFT LoRA adapter as a llama.cpp LoRA adapter GGUF.
    ExportAdapter(commands::quantize::ExportAdapterArgs),
}

/// `afinar --version`: the version, then the CPU level the kernels run at (detected, and the
/// `AFINAR_CPU_LEVEL` cap when one is set or invalid), and where the gemm crate's f32 products
/// do not follow that level.
fn long_version() -> &'static str {
    use afinar::engine::cpu_features as features;
    let cap = match features::env_cap() {
        Ok(Some(c)) => c.name().to_string(),
        Ok(None) => "none".to_string(),
        Err(e) => format!("invalid ({e})"),
    };
    let gemm = if features::gemm_ignores_cap() || features::GEMM_AVX512 {
        features::gemm_note()
    } else {
        "; built without gemm-avx512: the gemm crate's f32 products at avx2 at most".to_string()
    };
    let text = format!(
        "{}\ncpu level: {} (detected {}; {} cap: {cap}{gemm})",
        env!("CARGO_PKG_VERSION"),
        features::level(),
        features::detected(),
        features::ENV_VAR,
    );
    Box::leak(text.into_boxed_str())
}

/// glibc's malloc raises its mmap threshold whenever a large block is freed (up to 32 MiB), after
/// which blocks below it come from the heap, where freed ones keep their pages: loading a model
/// tensor by tensor and then allocating the training buffers left about 0.27 GB of such pages in
/// a full fine-tuning of SmolLM2-135M. A fixed threshold keeps every large tensor in its own
/// mapping, returned to the system when freed. Only for training (`afinar run`, measured: no
/// change in speed): it halves the prompt speed of `generate` on short prompts, whose per-call
/// temporaries would then be mapped and faulted in again on every product.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_malloc_mmap_threshold() {
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_malloc_mmap_threshold() {}

/// The error and its causes on one line, `outer: inner: …`, as anyhow's `{:#}` writes them but
/// without a cause whose text the line already holds: the library's error types write the
/// operating system's (or an inner parser's) error into their own message, so that it is
/// complete wherever it is shown, and also report it as their `source()`.
fn error_chain(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run(_)) {
        fix_malloc_mmap_threshold();
    }
    let result = match cli.command {
        Command::Generate(args) => commands::generate::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::Tokenize(args) => commands::tokenize::run(args),
        Command::Ls(args) => commands::ls::run(args),
        Command::Cp(args) => commands::cp::run(args),
        Command::Cat(args) => commands::cat::run(args),
        Command::Validate(args) => commands::validate::run(args),
        Command::Download(args) => commands::download::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Plot(args) => commands::plot::run(args),
        Command::Quantize(args) => commands::quantize::run(args),
        Command::ExportAdapter(args) => commands::quantize::run_export_adapter(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}
