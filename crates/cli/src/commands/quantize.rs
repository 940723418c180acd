//! `afinar quantize`: a model (GGUF file or Hugging Face folder) as a llama.cpp GGUF file, or as
//! a bitsandbytes NF4 Hugging Face folder (`--scheme nf4`), and `afinar export-adapter`: a PEFT
//! LoRA adapter as a llama.cpp LoRA adapter GGUF.

use std::path::{Path, PathBuf};

use afinar::checkpoint::DType;
use afinar::engine::{CpuBackend, WeightFormat};
use afinar::models::{is_gguf, load_model, LoadOptions};
use afinar::quantize::{
    base_config, export_bnb_nf4, export_gguf, export_lora_adapter, AdapterExportOptions, BnbExportOptions,
    ExportOptions, ExportSummary, Progress, Scheme,
};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

/// Arguments of `afinar quantize`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The model: a GGUF file or a Hugging Face checkpoint folder (e.g. a fine-tune's `merged/`),
    /// or a Hub repository (hf://org/name[@rev][/file.gguf], or org/name).
    #[arg(long)]
    model: PathBuf,
    /// f32, f16, q8_0, q4_0 or q4_k (llama.cpp's Q4_K_M mix) write a GGUF file; nf4 writes a
    /// bitsandbytes NF4 Hugging Face folder (QLoRA's 4-bit NormalFloat, double-quantized
    /// scales), which transformers loads with bitsandbytes and afinar keeps in NF4.
    #[arg(long, value_parser = parse_scheme)]
    scheme: Scheme,
    /// The GGUF file to write; with nf4, the folder (model.safetensors, config.json, tokenizer).
    #[arg(long)]
    output: PathBuf,
    /// Replace the output file (or nf4 folder) if it exists.
    #[arg(long)]
    force: bool,
    /// nf4 only: dtype of the tensors NF4 leaves unquantized (embedding, norms, untied output)
    /// and bitsandbytes' compute dtype, as transformers' `dtype=` when it quantizes.
    #[arg(long, value_enum)]
    dtype: Option<FloatDType>,
    /// Tokenizer file (tokenizer.json or tokenizer.model) when the checkpoint has none.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// `general.name` in the file (default: the source's name).
    #[arg(long)]
    name: Option<String>,
    /// CPU threads (default: all cores).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    threads: Option<usize>,
}

fn parse_scheme(s: &str) -> std::result::Result<Scheme, String> {
    s.parse::<Scheme>().map_err(|e| e.to_string())
}

/// Arguments of `afinar export-adapter`.
#[derive(Args, Debug)]
pub struct ExportAdapterArgs {
    /// The PEFT adapter folder (adapter_config.json + adapter_model.safetensors), as
    /// `afinar run lora_finetune` writes it.
    #[arg(long)]
    adapter: PathBuf,
    /// The base model the adapter was trained on (GGUF file, Hugging Face folder or Hub
    /// repository); only its configuration is read.
    #[arg(long)]
    model: PathBuf,
    /// The GGUF adapter file to write (llama.cpp `--lora`, llama-cpp-python `lora_path`).
    #[arg(long)]
    output: PathBuf,
    /// Type of the LoRA matrices.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: AdapterDType,
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
}

/// The unquantized dtype of an NF4 folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FloatDType {
    /// bfloat16 (the default; QLoRA's usual compute dtype).
    Bf16,
    /// 16-bit floats.
    F16,
    /// 32-bit floats.
    F32,
}

/// Storage of exported LoRA matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AdapterDType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
}

/// Refuses to start a long export whose output cannot be written: an existing file without
/// `--force`, a missing or read-only folder.
fn check_output(output: &Path, force: bool) -> Result<()> {
    if output.is_dir() {
        anyhow::bail!("--output {} is a folder; give a file name such as model.gguf", output.display());
    }
    if output.exists() && !force {
        anyhow::bail!("{} already exists; pass --force to replace it", output.display());
    }
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        anyhow::bail!("the output folder {} does not exist", dir.display());
    }
    let probe = dir.join(format!(".afinar-write-test-{}", std::process::id()));
    std::fs::File::create(&probe)
        .with_context(|| format!("the output folder {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Refuses to start an NF4 export whose output folder cannot be written: an existing file, an
/// existing folder without `--force`, the model's own folder, a missing or read-only parent.
fn check_output_dir(output: &Path, model: &Path, force: bool) -> Result<()> {
    if output.is_file() {
        anyhow::bail!(
            "--output {} is a file; --scheme nf4 writes a Hugging Face folder (give a folder name)",
            output.display()
        );
    }
    if output.exists() {
        let model_dir = if model.is_dir() { Some(model) } else { model.parent() };
        let same =
            |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
        if model_dir.is_some_and(|m| same(m, output)) {
            anyhow::bail!(
                "--output {} is the model's own folder; write the NF4 model elsewhere",
                output.display()
            );
        }
        if !force {
            anyhow::bail!("{} already exists; pass --force to replace it", output.display());
        }
    }
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        anyhow::bail!("the output folder's parent {} does not exist", dir.display());
    }
    let probe = dir.join(format!(".afinar-write-test-{}", std::process::id()));
    std::fs::File::create(&probe).with_context(|| format!("the folder {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Prints progress on stderr: a line every tenth of the tensors (and the last).
fn reporter() -> impl FnMut(&Progress<'_>) {
    move |p: &Progress<'_>| {
        let step = (p.total / 10).max(1);
        if p.index.is_multiple_of(step) || p.index + 1 == p.total {
            eprintln!("afinar: [{}/{}] {} {:?} → {}", p.index + 1, p.total, p.name, p.shape, p.dtype);
        }
    }
}

fn summary(s: &ExportSummary, seconds: f64) {
    let types: Vec<String> = s.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    eprintln!(
        "afinar: wrote {} ({:.1} MB, {} tensors: {}) in {seconds:.1}s",
        s.path.display(),
        s.bytes as f64 / 1e6,
        s.tensors,
        types.join(", ")
    );
}

/// Runs `afinar quantize`.
pub fn run(mut args: QuantizeArgs) -> Result<()> {
    args.model = super::resolve_model(&args.model)?;
    if args.scheme == Scheme::Nf4 {
        return run_nf4(args);
    }
    if let Some(d) = args.dtype {
        anyhow::bail!(
            "--dtype {} applies to --scheme nf4 only; a GGUF scheme decides every tensor's type",
            d.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
        );
    }
    check_output(&args.output, args.force)?;
    if args.threads == Some(0) {
        anyhow::bail!("--threads must be at least 1");
    }
    let t0 = std::time::Instant::now();
    let be = CpuBackend::try_new(args.threads)?;
    // Every matrix is read back as f32 and re-encoded, so load f32 (dequantizing a GGUF).
    let opts = LoadOptions {
        format: WeightFormat::F32,
        tokenizer: args.tokenizer.clone(),
        keep_quantized: false,
        ..Default::default()
    };
    let loaded =
        load_model(&be, &args.model, &opts).with_context(|| format!("loading {}", args.model.display()))?;
    if loaded.tokenizer.is_none() {
        eprintln!(
            "afinar: warning: {} has no tokenizer; the GGUF will have none (llama.cpp needs one: pass --tokenizer)",
            args.model.display()
        );
    }
    eprintln!(
        "afinar: loaded {} in {:.1}s; writing {} as {}",
        args.model.display(),
        t0.elapsed().as_secs_f64(),
        args.output.display(),
        args.scheme
    );
    let opts = ExportOptions { scheme: args.scheme, name: args.name.clone(), ..Default::default() };
    let s = export_gguf(&be, &loaded, &args.output, &opts, &mut reporter())
        .with_context(|| format!("writing {}", args.output.display()))?;
    summary(&s, t0.elapsed().as_secs_f64());
    Ok(())
}

/// `afinar quantize --scheme nf4`: the bitsandbytes NF4 folder.
fn run_nf4(args: QuantizeArgs) -> Result<()> {
    check_output_dir(&args.output, &args.model, args.force)?;
    if args.threads == Some(0) {
        anyhow::bail!("--threads must be at least 1");
    }
    if args.name.is_some() {
        anyhow::bail!("--name sets a GGUF file's general.name; an NF4 folder has none");
    }
    let dtype = match args.dtype.unwrap_or(FloatDType::Bf16) {
        FloatDType::Bf16 => DType::BF16,
        FloatDType::F16 => DType::F16,
        FloatDType::F32 => DType::F32,
    };
    let t0 = std::time::Instant::now();
    let be = CpuBackend::try_new(args.threads)?;
    // f32 weights, rounded to the dtype and quantized at export; a bitsandbytes folder's NF4
    // matrices are kept (and copied unchanged) instead of being requantized.
    let gguf = args.model.is_file() && is_gguf(&args.model)?;
    let opts = LoadOptions {
        format: WeightFormat::F32,
        tokenizer: args.tokenizer.clone(),
        keep_quantized: !gguf,
        ..Default::default()
    };
    let loaded =
        load_model(&be, &args.model, &opts).with_context(|| format!("loading {}", args.model.display()))?;
    if loaded.tokenizer.is_none() {
        eprintln!(
            "afinar: warning: {} has no tokenizer; the folder will have none (pass --tokenizer)",
            args.model.display()
        );
    }
    eprintln!(
        "afinar: loaded {} in {:.1}s; writing {} as NF4 with {dtype}",
        args.model.display(),
        t0.elapsed().as_secs_f64(),
        args.output.display(),
    );
    let s = export_bnb_nf4(&be, &loaded, &args.output, &BnbExportOptions { dtype }, &mut reporter())
        .with_context(|| format!("writing {}", args.output.display()))?;
    summary(&s, t0.elapsed().as_secs_f64());
    let params = loaded.model.config.num_params();
    eprintln!(
        "afinar: {:.3} bytes per parameter ({:.2} bits) over {:.1}M parameters",
        s.bytes as f64 / params as f64,
        8.0 * s.bytes as f64 / params as f64,
        params as f64 / 1e6
    );
    Ok(())
}

/// Runs `afinar export-adapter`.
pub fn run_export_adapter(mut args: ExportAdapterArgs) -> Result<()> {
    check_output(&args.output, args.force)?;
    args.model = super::resolve_model(&args.model)?;
    let t0 = std::time::Instant::now();
    let base = base_config(&args.model)
        .with_context(|| format!("reading the base model {}", args.model.display()))?;
    let dtype = match args.dtype {
        AdapterDType::F32 => DType::F32,
        AdapterDType::F16 => DType::F16,
    };
    let s = export_lora_adapter(
        &args.adapter,
        &base,
        &args.output,
        &AdapterExportOptions { dtype, name: None },
        &mut reporter(),
    )
    .with_context(|| format!("exporting the adapter {}", args.adapter.display()))?;
    summary(&s, t0.elapsed().as_secs_f64());
    Ok(())
}
