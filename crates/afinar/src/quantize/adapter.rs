//! A PEFT LoRA adapter folder as a llama.cpp LoRA adapter GGUF (what `convert_lora_to_gguf.py`
//! writes, loaded by llama.cpp's `--lora` and llama-cpp-python's `lora_path`).
//!
//! Layout: `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`; for each
//! adapted module of the base model (`blk.N.attn_q.weight` …, `output.weight`) two tensors,
//! `<name>.lora_a` (`[r, in]`, PEFT's `lora_A`) and `<name>.lora_b` (`[out, r]`, `lora_B`), with
//! `lora_b`'s rows of the Q and K projections permuted as the base weights are. llama.cpp scales
//! the product by `alpha / r`; for an rsLoRA adapter (PEFT scale `alpha / √r`) the alpha written
//! is `alpha · √r`, which gives the same scale.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use afinar_checkpoint::gguf::MetaValue;
use afinar_checkpoint::gguf_write::{write_gguf, GgufTensorSpec};
use afinar_checkpoint::peft::{parse_lora_name, LoraPart};
use afinar_checkpoint::quant::quantize;
use afinar_checkpoint::{load_peft_adapter, DType};

use super::export::{permute_rows, ExportSummary, Progress};
use crate::models::LlamaConfig;
use crate::{Error, Result};

/// Settings of [`export_lora_adapter`].
#[derive(Debug, Clone)]
pub struct AdapterExportOptions {
    /// Type of the LoRA matrices: F32 (default) or F16.
    pub dtype: DType,
    /// `general.name`, if any.
    pub name: Option<String>,
}

impl Default for AdapterExportOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, name: None }
    }
}

/// The GGUF base name, the `[out, in]` shape the base config gives the module, and the heads
/// whose rows llama.cpp permutes: a linear projection of the base model (the family's name
/// table), `None` for anything else.
fn module_info(module: &str, c: &LlamaConfig) -> Option<(String, [usize; 2], Option<usize>)> {
    let hf = format!("{module}.weight");
    let (shape, gguf) = c.tensor(&hf)?;
    let is_linear = module == "lm_head" || crate::blocks::PROJECTIONS.iter().any(|p| module.ends_with(p));
    match shape[..] {
        [rows, cols] if is_linear && hf != "model.embed_tokens.weight" => {
            Some((gguf, [rows, cols], c.family.gguf_permuted_heads(&hf, c)))
        }
        _ => None,
    }
}

/// Writes the PEFT adapter in `adapter_dir` (`adapter_config.json` + `adapter_model.safetensors`)
/// as a llama.cpp LoRA adapter GGUF at `out` (atomically), for a base model with config `base`
/// (its head counts decide the Q/K permutation; every matrix's shape is checked against it).
///
/// Errors name the file and tensor: a module llama.cpp adapters cannot hold (embeddings,
/// `modules_to_save` copies), a shape that does not fit the base model, an unsupported `dtype`.
pub fn export_lora_adapter(
    adapter_dir: &Path,
    base: &LlamaConfig,
    out: &Path,
    opts: &AdapterExportOptions,
    progress: &mut dyn FnMut(&Progress<'_>),
) -> Result<ExportSummary> {
    if !matches!(opts.dtype, DType::F32 | DType::F16) {
        return Err(Error::Input(format!("LoRA adapters are exported as F32 or F16, not {}", opts.dtype)));
    }
    let (cfg, ckpt) = load_peft_adapter(adapter_dir)?;
    let file = ckpt.path().to_path_buf();
    let bad = |tensor: &str, msg: String| Error::Weights { file: file.clone(), tensor: tensor.into(), msg };
    // (gguf name, shape, source name, heads to permute), sorted by GGUF name for a stable file.
    let mut entries: BTreeMap<String, (Vec<usize>, String, Option<usize>)> = BTreeMap::new();
    for name in &ckpt.names() {
        let Some((module, part)) = parse_lora_name(name) else {
            return Err(bad(
                name,
                "is not a LoRA matrix (lora_A / lora_B); llama.cpp adapters hold only those \
                 (modules_to_save copies cannot be exported)"
                    .into(),
            ));
        };
        let (gguf, [rows, cols], heads) = module_info(module, base).ok_or_else(|| {
            bad(
                name,
                format!(
                    "module `{module}` is not one afinar exports to llama.cpp (q/k/v/o/gate/up/down \
                     projections of layers 0..{}, lm_head)",
                    base.n_layers
                ),
            )
        })?;
        let (_, shape) = ckpt.tensor_info(name).expect("listed tensors have infos");
        let shape = shape.to_vec();
        let (expected, suffix, heads) = match part {
            LoraPart::A => ([cfg.r, cols], "lora_a", None),
            LoraPart::B => ([rows, cfg.r], "lora_b", heads),
        };
        if shape != expected {
            return Err(bad(
                name,
                format!("shape {shape:?}, but the base model's {gguf} needs {expected:?} (rank {})", cfg.r),
            ));
        }
        entries.insert(format!("{gguf}.{suffix}"), (shape, name.clone(), heads));
    }
    if entries.is_empty() {
        return Err(Error::Input(format!("{}: the adapter has no LoRA matrices", file.display())));
    }
    let alpha = if cfg.use_rslora { cfg.lora_alpha * (cfg.r as f64).sqrt() } else { cfg.lora_alpha };
    let mut meta = vec![
        ("general.architecture".to_string(), MetaValue::Str(base.family.spec().gguf_arch.into())),
        ("general.type".to_string(), MetaValue::Str("adapter".into())),
        ("adapter.type".to_string(), MetaValue::Str("lora".into())),
        ("adapter.lora.alpha".to_string(), MetaValue::F32(alpha as f32)),
    ];
    if let Some(name) = &opts.name {
        meta.push(("general.name".into(), MetaValue::Str(name.clone())));
    }
    let items: Vec<(GgufTensorSpec, String, Option<usize>)> = entries
        .into_iter()
        .map(|(gguf, (shape, src, heads))| {
            (GgufTensorSpec { name: gguf, shape, dtype: opts.dtype }, src, heads)
        })
        .collect();
    let specs: Vec<GgufTensorSpec> = items.iter().map(|i| i.0.clone()).collect();
    let total = specs.len();
    write_gguf(out, &meta, &specs, afinar_checkpoint::gguf::DEFAULT_ALIGNMENT, |i, spec| {
        progress(&Progress {
            index: i,
            total,
            name: &spec.name,
            shape: &spec.shape,
            dtype: spec.dtype.name(),
        });
        let (_, src, heads) = &items[i];
        let mut values = ckpt.tensor(src)?.to_f32()?;
        if let Some(h) = heads {
            values = permute_rows(&values, spec.shape[0], spec.shape[1], *h).map_err(|message| {
                afinar_checkpoint::CheckpointError::Tensor {
                    path: file.clone(),
                    tensor: src.clone(),
                    message,
                }
            })?;
        }
        quantize(spec.dtype, &values)
    })?;
    let bytes = std::fs::metadata(out).map_err(|source| Error::Io { path: out.to_path_buf(), source })?.len();
    let types = BTreeMap::from([(opts.dtype.name(), total)]);
    Ok(ExportSummary { path: PathBuf::from(out), tensors: total, bytes, types })
}

/// The architecture numbers of a base model without loading its weights: a Hugging Face
/// folder's (or safetensors file's) `config.json`, or a GGUF file's metadata.
pub fn base_config(path: &Path) -> Result<LlamaConfig> {
    if !path.exists() {
        return Err(Error::Input(format!("{}: no such file or folder", path.display())));
    }
    if !crate::models::is_gguf(path)? {
        let dir = if path.is_dir() { path } else { path.parent().unwrap_or(Path::new(".")) };
        return LlamaConfig::from_hf_json(&dir.join("config.json"));
    }
    let file = afinar_checkpoint::gguf::GgufFile::open(path)?;
    LlamaConfig::from_gguf(&file, path)
}
