//! A loaded [`Llama`] as a llama.cpp GGUF file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use afinar_checkpoint::gguf::{GgufFile, MetaValue};
use afinar_checkpoint::gguf_write::{write_gguf, GgufTensorSpec};
use afinar_checkpoint::quant::quantize;
use afinar_checkpoint::DType;
use afinar_engine::{rope_inv_freq, Backend};
use afinar_tokenizer::Tokenizer;

use super::{tensor_dtype, Scheme, TensorRole};
use crate::models::{Llama, LoadedModel, TensorRef};
use crate::{Error, Result};

/// Settings of [`export_gguf`].
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Main type of the matrices.
    pub scheme: Scheme,
    /// Alignment of the tensor data (a power of two; llama.cpp's default is 32).
    pub alignment: usize,
    /// `general.name`; by default the source's own (GGUF) or its folder's name.
    pub name: Option<String>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self { scheme: Scheme::F32, alignment: afinar_checkpoint::gguf::DEFAULT_ALIGNMENT, name: None }
    }
}

/// One step of an export, reported before the tensor is converted and written.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    /// 0-based position of the tensor.
    pub index: usize,
    /// Number of tensors.
    pub total: usize,
    /// GGUF name.
    pub name: &'a str,
    /// Row-major shape.
    pub shape: &'a [usize],
    /// Type written, as GGUF and safetensors name it (`"Q4_K"`, `"BF16"`; `"NF4"` for a
    /// bitsandbytes weight).
    pub dtype: &'static str,
}

/// What an export wrote (a GGUF file, or the folder of [`super::export_bnb_nf4`]).
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The file.
    pub path: PathBuf,
    /// Number of tensors.
    pub tensors: usize,
    /// Size of the file in bytes (of a folder: its safetensors files).
    pub bytes: u64,
    /// How many tensors of each type.
    pub types: BTreeMap<&'static str, usize>,
}

/// Where a tensor's values come from.
enum Source<'a, B: Backend> {
    Weight(&'a B::Weight),
    Buf(&'a B::Buf, usize),
    Host(Vec<f32>),
}

struct Item<'a, B: Backend> {
    spec: GgufTensorSpec,
    source: Source<'a, B>,
    /// Heads whose rows are permuted for llama.cpp's RoPE (Q and K projections).
    permute_heads: Option<usize>,
}

/// llama.cpp's Q/K row order: within each head of `head_dim` rows, GGUF row `2i + j` is Hugging
/// Face row `j · head_dim/2 + i` (RoPE pairs interleaved instead of in halves). The inverse of
/// [`crate::models::load::unpermute_rows`]. `data` holds `rows` rows of `row_len` values.
pub fn permute_rows(
    data: &[f32],
    rows: usize,
    row_len: usize,
    heads: usize,
) -> std::result::Result<Vec<f32>, String> {
    crate::models::load::reorder_rope_rows(data, rows, row_len, heads, true)
}

/// The f32 divisor `d` with `base / d == scaled` exactly (as the loader divides), or the nearest
/// candidate when none is exact.
fn rope_factor(base: f32, scaled: f32) -> f32 {
    let guess = (f64::from(base) / f64::from(scaled)) as f32;
    let mut candidates = vec![guess];
    let (mut up, mut down) = (guess, guess);
    for _ in 0..4 {
        up = up.next_up();
        down = down.next_down();
        candidates.extend([up, down]);
    }
    candidates.into_iter().find(|&d| base / d == scaled).unwrap_or(guess)
}

/// Metadata kept from the source: a GGUF's `general.*` descriptions and tokenizer extras, or a
/// Hugging Face folder's name and `tokenizer_config.json` pad token.
fn source_metadata(
    loaded_source: &Path,
    hf_dir: Option<&Path>,
    tok: Option<&Tokenizer>,
) -> Result<Vec<(String, MetaValue)>> {
    let mut out = Vec::new();
    match hf_dir {
        None => {
            let file = GgufFile::open(loaded_source)?;
            const SKIP: [&str; 5] = [
                "general.architecture",
                "general.type",
                "general.file_type",
                "general.quantization_version",
                "general.alignment",
            ];
            const TOKENIZER_EXTRAS: [&str; 4] = [
                "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.add_eos_token",
                "tokenizer.ggml.add_space_prefix",
            ];
            for key in file.metadata_keys() {
                let keep = (key.starts_with("general.") && !SKIP.contains(&key.as_str()))
                    || (tok.is_some() && TOKENIZER_EXTRAS.contains(&key.as_str()));
                if keep {
                    if let Some(v) = file.get(key) {
                        out.push((key.clone(), v.clone()));
                    }
                }
            }
        }
        Some(dir) => {
            if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
                out.push(("general.name".into(), MetaValue::Str(name.to_string())));
            }
            // transformers' pad token, when the tokenizer knows it.
            let cfg = dir.join("tokenizer_config.json");
            if let (Some(tok), true) = (tok, cfg.is_file()) {
                let text = std::fs::read_to_string(&cfg)
                    .map_err(|source| Error::Io { path: cfg.clone(), source })?;
                let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
                    file: cfg.clone(),
                    key: "(document)".into(),
                    msg: format!("not valid JSON: {e}"),
                })?;
                let pad = json.get("pad_token").and_then(|v| {
                    v.as_str().map(str::to_string).or_else(|| v.get("content")?.as_str().map(str::to_string))
                });
                if let Some(id) = pad.and_then(|p| tok.token_to_id(&p)) {
                    out.push(("tokenizer.ggml.padding_token_id".into(), MetaValue::U32(id)));
                }
            }
        }
    }
    Ok(out)
}

fn tokenizer_metadata(tok: &Tokenizer, vocab_size: usize) -> Result<Vec<(String, MetaValue)>> {
    let spec = tok.to_gguf_spec(vocab_size)?;
    if spec.tokens.len() != vocab_size {
        return Err(Error::Input(format!(
            "the tokenizer has {} tokens but the model's vocabulary has {vocab_size}",
            spec.tokens.len()
        )));
    }
    let strings = |v: Vec<String>| MetaValue::Array(v.into_iter().map(MetaValue::Str).collect());
    let mut out = vec![
        ("tokenizer.ggml.model".to_string(), MetaValue::Str(spec.model)),
        ("tokenizer.ggml.pre".to_string(), MetaValue::Str(spec.pre.unwrap_or_default())),
        ("tokenizer.ggml.tokens".to_string(), strings(spec.tokens)),
        (
            "tokenizer.ggml.token_type".to_string(),
            MetaValue::Array(spec.token_types.into_iter().map(MetaValue::I32).collect()),
        ),
        ("tokenizer.ggml.merges".to_string(), strings(spec.merges)),
    ];
    if let Some(id) = spec.bos_id {
        out.push(("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(id)));
    }
    if let Some(id) = spec.eos_id {
        out.push(("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(id)));
    }
    out.push(("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(spec.add_bos.unwrap_or(false))));
    if let Some(t) = spec.chat_template {
        out.push(("tokenizer.chat_template".into(), MetaValue::Str(t)));
    }
    Ok(out)
}

/// Writes `loaded` as a GGUF file at `out` (atomically), its matrices encoded as `opts.scheme`
/// says (see [`super`] for the per-tensor types), with llama.cpp's metadata of the model's
/// family (`llama.*`, `qwen3.*`) and, when the
/// model has one, its tokenizer and chat template. `progress` is called before each tensor.
///
/// The weights are read back from the backend one tensor at a time, converted and written
/// before the next: memory beyond the loaded model is one tensor in f32 and its encoding.
/// An f32 export loads back into identical weights, and a model whose only RoPE scaling is
/// Llama-3.1's gets the same frequencies back bit for bit.
pub fn export_gguf<B: Backend>(
    be: &B,
    loaded: &LoadedModel<B>,
    out: &Path,
    opts: &ExportOptions,
    progress: &mut dyn FnMut(&Progress<'_>),
) -> Result<ExportSummary> {
    if opts.scheme == Scheme::Nf4 {
        return Err(Error::Input(
            "GGUF has no NF4 type: NF4 is written as a bitsandbytes Hugging Face folder \
             (`export_bnb_nf4`, `afinar quantize --scheme nf4 --output DIR`)"
                .into(),
        ));
    }
    let model = &loaded.model;
    let c = &model.config;
    if model.linears().iter().any(|(_, l)| l.lora.is_some()) {
        return Err(Error::Input(
            "the model carries LoRA adapters; export the merged weights (`merged/`) or the adapter".into(),
        ));
    }
    let tok = loaded.tokenizer.as_ref();
    let source_meta =
        source_metadata(&loaded.source, loaded.hf_folder.as_ref().map(|h| h.dir.as_path()), tok)?;
    let items = tensor_items(model)?;
    let tied = model.output.is_none();
    let specs: Vec<GgufTensorSpec> = items
        .iter()
        .map(|it| {
            let dtype = tensor_dtype(
                opts.scheme,
                TensorRole { name: &it.spec.name, shape: &it.spec.shape, tied, n_layers: c.n_layers },
            );
            GgufTensorSpec { dtype, ..it.spec.clone() }
        })
        .collect();

    let u32v = |v: usize| MetaValue::U32(v as u32);
    let arch = c.family.spec().gguf_arch;
    let key = |k: &str| format!("{arch}.{k}");
    let mut meta: Vec<(String, MetaValue)> = vec![
        ("general.architecture".into(), MetaValue::Str(arch.into())),
        ("general.type".into(), MetaValue::Str("model".into())),
    ];
    for (k, v) in source_meta.iter().filter(|(k, _)| k.starts_with("general.")) {
        if k == "general.name" && opts.name.is_some() {
            continue;
        }
        meta.push((k.clone(), v.clone()));
    }
    if let Some(name) = &opts.name {
        meta.push(("general.name".into(), MetaValue::Str(name.clone())));
    }
    meta.extend([
        (key("vocab_size"), u32v(c.vocab_size)),
        (key("context_length"), u32v(c.max_seq_len)),
        (key("embedding_length"), u32v(c.dim)),
        (key("block_count"), u32v(c.n_layers)),
        (key("feed_forward_length"), u32v(c.ffn_dim)),
        (key("rope.dimension_count"), u32v(c.head_dim)),
        (key("attention.head_count"), u32v(c.n_heads)),
        (key("attention.head_count_kv"), u32v(c.n_kv_heads)),
        (key("rope.freq_base"), MetaValue::F32(c.rope_theta as f32)),
        (key("attention.layer_norm_rms_epsilon"), MetaValue::F32(c.norm_eps)),
    ]);
    if c.head_dim * c.n_heads != c.dim {
        meta.push((key("attention.key_length"), u32v(c.head_dim)));
        meta.push((key("attention.value_length"), u32v(c.head_dim)));
    }
    meta.push(("general.file_type".into(), MetaValue::U32(opts.scheme.file_type())));
    if let Some(tok) = tok {
        meta.extend(tokenizer_metadata(tok, c.vocab_size)?);
        meta.extend(source_meta.into_iter().filter(|(k, _)| k.starts_with("tokenizer.")));
    }
    meta.push(("general.quantization_version".into(), MetaValue::U32(2)));

    let total = items.len();
    let source = loaded.source.clone();
    write_gguf(out, &meta, &specs, opts.alignment, |i, spec| {
        progress(&Progress {
            index: i,
            total,
            name: &spec.name,
            shape: &spec.shape,
            dtype: spec.dtype.name(),
        });
        let it = &items[i];
        let fail = |msg: String| afinar_checkpoint::CheckpointError::Tensor {
            path: source.clone(),
            tensor: spec.name.clone(),
            message: msg,
        };
        let mut values = match &it.source {
            Source::Weight(w) => be.weight_to_host(w),
            Source::Buf(b, n) => be.to_host(b).map(|mut v| {
                v.truncate(*n);
                v
            }),
            Source::Host(v) => Ok(v.clone()),
        }
        .map_err(|e| fail(format!("reading the weights back: {e}")))?;
        if let Some(heads) = it.permute_heads {
            let (rows, cols) = (spec.shape[0], spec.shape[1]);
            values = permute_rows(&values, rows, cols, heads).map_err(fail)?;
        }
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            return Err(fail(format!("value {bad} is {}; refusing to export a broken model", values[bad])));
        }
        quantize(spec.dtype, &values)
    })?;
    let bytes = std::fs::metadata(out).map_err(|source| Error::Io { path: out.to_path_buf(), source })?.len();
    let mut types = BTreeMap::new();
    for s in &specs {
        *types.entry(s.dtype.name()).or_insert(0) += 1;
    }
    Ok(ExportSummary { path: out.to_path_buf(), tensors: specs.len(), bytes, types })
}

/// Every tensor to write, in file order, with its f32 source.
fn tensor_items<'a, B: Backend>(model: &'a Llama<B>) -> Result<Vec<Item<'a, B>>> {
    let c = &model.config;
    let spec = |name: String, shape: Vec<usize>| GgufTensorSpec { name, shape, dtype: DType::F32 };
    let mut items = Vec::new();
    // Llama-3.1 RoPE scaling: the divisors of the plain frequencies, as llama.cpp stores them.
    let base = rope_inv_freq(c.head_dim, c.rope_theta, None);
    if base != model.inv_freq {
        if base.len() != model.inv_freq.len() {
            return Err(Error::Input(format!(
                "the model has {} RoPE frequencies for a head size of {}",
                model.inv_freq.len(),
                c.head_dim
            )));
        }
        let factors =
            base.iter().zip(&model.inv_freq).map(|(&b, &s)| rope_factor(b, s)).collect::<Vec<f32>>();
        items.push(Item {
            spec: spec("rope_freqs.weight".into(), vec![factors.len()]),
            source: Source::Host(factors),
            permute_heads: None,
        });
    }
    for t in model.tensors() {
        let name = c.family.gguf_name(&t.name).ok_or_else(|| {
            Error::Input(format!(
                "{}: no GGUF name for this tensor in a `{}` model",
                t.name,
                c.family.spec().name
            ))
        })?;
        let permute_heads = c.family.gguf_permuted_heads(&t.name, c);
        let source = match t.source {
            TensorRef::Embedding(w) | TensorRef::Matrix(w, _) => Source::Weight(w),
            TensorRef::Norm(b, n) => Source::Buf(b, n),
        };
        items.push(Item { spec: spec(name, t.shape), source, permute_heads });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::load::unpermute_rows;

    #[test]
    fn permute_is_the_inverse_of_the_loader_unpermute() {
        let (heads, hd, cols) = (3, 8, 5);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let gguf = permute_rows(&hf, rows, cols, heads).unwrap();
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rows(&gguf, &[rows, cols], heads).unwrap(), hf);
        assert!(permute_rows(&hf, rows, cols, 5).is_err());
    }

    #[test]
    fn rope_factors_divide_back_exactly() {
        let s = afinar_engine::RopeScaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let base = rope_inv_freq(64, 500_000.0, None);
        let scaled = rope_inv_freq(64, 500_000.0, Some(s));
        let exact = base.iter().zip(&scaled).filter(|(&b, &sc)| b / rope_factor(b, sc) == sc).count();
        assert_eq!(exact, base.len());
    }
}
