//! One module per subcommand, plus the options they share.

pub mod cat;
pub mod chat;
pub mod cp;
pub mod download;
pub mod eval;
pub mod generate;
pub mod ls;
pub mod plot;
pub mod progress;
pub mod quantize;
pub mod run;
pub mod serve;
pub mod tokenize;
pub mod validate;

use std::path::{Path, PathBuf};

use afinar::blocks::{KvCache, KvDtype};
/// A command's work, written once for any backend (see [`on_device`]).
pub use afinar::engine::DeviceJob as Job;
use afinar::engine::{run_on_device, Backend, WeightFormat};
use afinar::generate::{generate, GenerateOptions, GenerateStats, SamplingParams};
use afinar::models::Llama;
use afinar::models::{load_model, LoadOptions, LoadedModel};
use afinar::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

/// Weight storage on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// `native` for GGUF files and bitsandbytes 4-bit folders, `f32` for other Hugging Face
    /// checkpoints.
    Auto,
    /// Keep a GGUF file's Q8_0/Q4_0/Q4_1/Q4_K matrices and a bitsandbytes folder's NF4 matrices
    /// quantized (frozen); f32 for the rest.
    Native,
    /// 32-bit floats.
    F32,
    /// bfloat16.
    Bf16,
}

/// Options shared by the commands that run a model.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// A GGUF file, a Hugging Face checkpoint folder (config.json + safetensors), or a Hub
    /// repository: hf://org/name[@rev][/file.gguf], or org/name where no such local path exists.
    #[arg(long)]
    pub model: PathBuf,
    /// Tokenizer file (tokenizer.json or tokenizer.model) when the checkpoint has none.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// CPU threads (default: all cores).
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub threads: Option<usize>,
    /// Storage of the weights (`auto` on a GPU: bf16).
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: DTypeArg,
    /// Where to run: cpu, cuda (GPU 0) or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Storage of the KV cache: f16 (half the memory and memory traffic; keys and values rounded
    /// to 11 significant bits) or f32 (exact).
    #[arg(long, value_enum, default_value = "f16")]
    pub kv_cache: KvCacheArg,
}

/// Storage of the KV cache (`--kv-cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KvCacheArg {
    /// IEEE binary16.
    F16,
    /// 32-bit floats.
    F32,
}

impl From<KvCacheArg> for KvDtype {
    fn from(a: KvCacheArg) -> Self {
        match a {
            KvCacheArg::F16 => KvDtype::F16,
            KvCacheArg::F32 => KvDtype::F32,
        }
    }
}

/// Runs `job` (a command's work, written once for any backend) on the backend that
/// `--device` names.
pub fn on_device<J: Job<Output = Result<()>>>(args: &ModelArgs, job: J) -> Result<()> {
    if args.threads == Some(0) {
        anyhow::bail!("--threads must be at least 1");
    }
    run_on_device(&args.device, args.threads, job).with_context(|| format!("--device {}", args.device))?
}

/// Sampling options shared by generate and chat.
#[derive(Args, Debug)]
pub struct SamplingArgs {
    /// Softmax temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens (0 = no limit).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = count)]
    pub top_k: usize,
    /// Sample only within the smallest set of tokens whose probability reaches p.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = seed_value)]
    pub seed: u64,
    /// Stop after this many new tokens.
    #[arg(long, default_value_t = 256, allow_negative_numbers = true, value_parser = count)]
    pub max_new_tokens: usize,
}

/// Parses a count option (`--max-new-tokens`, `--top-k`, …): a whole number ≥ 0. Negative
/// values reach this parser (`allow_negative_numbers`), so clap's message names the option and
/// says what was expected instead of calling `-5` an unexpected argument.
pub fn count(s: &str) -> std::result::Result<usize, String> {
    s.trim().parse().map_err(|_| "expected a whole number ≥ 0".to_string())
}

/// Parses a seed: a whole number from 0 to 2^64 − 1.
pub fn seed_value(s: &str) -> std::result::Result<u64, String> {
    s.trim().parse().map_err(|_| "expected a whole number from 0 to 18446744073709551615".to_string())
}

impl SamplingArgs {
    /// Checks ranges and converts.
    pub fn params(&self) -> Result<SamplingParams> {
        anyhow::ensure!(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "--temperature must be a number ≥ 0, got {}",
            self.temperature
        );
        anyhow::ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "--top-p must be in (0, 1], got {}",
            self.top_p
        );
        Ok(SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        })
    }
}

/// The local path of a model argument: a Hub reference through the Hugging Face cache
/// (downloading what is missing, with a progress bar per file), a local path as is.
pub fn resolve_model(model: &Path) -> Result<PathBuf> {
    Ok(afinar::hub::resolve_model_path(model, &mut progress::DownloadBars::new())?)
}

/// Loads the model and its tokenizer on `be`. On the CPU, `--dtype auto` keeps a GGUF file's
/// quantized matrices (int8 dot products) and loads the rest as f32; on a GPU it loads bf16 (the
/// tensor cores' input type), dequantizing once at load.
pub fn load<B: Backend>(be: &B, args: &ModelArgs) -> Result<(LoadedModel<B>, Tokenizer)> {
    let gpu = args.device != "cpu";
    let opts = LoadOptions {
        format: match args.dtype {
            DTypeArg::Auto if gpu => WeightFormat::BF16,
            DTypeArg::Auto | DTypeArg::Native | DTypeArg::F32 => WeightFormat::F32,
            DTypeArg::Bf16 => WeightFormat::BF16,
        },
        tokenizer: args.tokenizer.clone(),
        // `auto` keeps quantized matrices only where there are some: GGUF files and bitsandbytes
        // NF4 folders (a plain Hugging Face checkpoint has none, so the flag changes nothing there);
        // on a GPU it loads bf16 instead.
        keep_quantized: match args.dtype {
            DTypeArg::Auto => !gpu,
            DTypeArg::Native => true,
            _ => false,
        },
        ..Default::default()
    };
    let model = resolve_model(&args.model)?;
    let t0 = std::time::Instant::now();
    let mut loaded =
        load_model(be, &model, &opts).with_context(|| format!("loading {}", args.model.display()))?;
    loaded.model.kv_cache = args.kv_cache.into();
    let tokenizer = loaded.tokenizer.take().with_context(|| {
        format!(
            "{} has no tokenizer; pass --tokenizer PATH (tokenizer.json or tokenizer.model)",
            args.model.display()
        )
    })?;
    let c = &loaded.model.config;
    eprintln!(
        "afinar: loaded {} ({} layers, dim {}, {:.1}M parameters) on {} in {:.2}s",
        args.model.display(),
        c.n_layers,
        c.dim,
        c.num_params() as f64 / 1e6,
        be.name(),
        t0.elapsed().as_secs_f64()
    );
    Ok((loaded, tokenizer))
}

/// Feeds `prompt` after what `cache` holds and generates, writing each complete piece of text to
/// stdout as soon as it is decoded, then a newline. Returns the new tokens and the statistics.
pub fn generate_to_stdout<B: Backend>(
    be: &B,
    model: &Llama<B>,
    cache: &mut KvCache<B>,
    prompt: &[u32],
    opts: &GenerateOptions,
    tok: &Tokenizer,
) -> Result<(Vec<u32>, GenerateStats)> {
    use std::io::Write;
    let mut stream = tok.decode_stream(true);
    let mut stdout = std::io::stdout().lock();
    let result = generate(be, model, cache, prompt, opts, |id| {
        if let Some(piece) = stream.step(id)? {
            stdout
                .write_all(piece.as_bytes())
                .and_then(|_| stdout.flush())
                .map_err(|e| afinar::Error::Io { path: "<stdout>".into(), source: e })?;
        }
        Ok(true)
    })?;
    writeln!(stdout)?;
    Ok(result)
}
