//! Loading a [`Llama`] from a Hugging Face checkpoint folder (safetensors, single or sharded) or a
//! GGUF file, with its tokenizer when the checkpoint carries one.
//!
//! A Hugging Face folder may hold bitsandbytes 4-bit weights (`config.json` with a
//! `quantization_config` of `quant_method: bitsandbytes`, `load_in_4bit: true`, as
//! `transformers` saves a `BitsAndBytesConfig` model and `afinar quantize --scheme nf4` writes
//! it): NF4 matrices with double-quantized scales in blocks of 64 (QLoRA's layout) are handed to
//! the engine as they are ([`QuantFormat::Nf4`], no requantization) when quantized weights are
//! kept ([`LoadOptions::keep_quantized`]) or NF4 is asked for ([`LoadOptions::projections`]);
//! otherwise, and for other 4-bit layouts (FP4, plain scales), they are dequantized exactly as
//! bitsandbytes does.
//!
//! Internally afinar uses Hugging Face's layout (`[out, in]` weights, RoPE on halves). GGUF files
//! written by llama.cpp store Q and K rows permuted for interleaved RoPE; [`unpermute_rows`] undoes
//! that at load time (on f32 rows, or on whole rows of quantized blocks when
//! [`LoadOptions::keep_quantized`] keeps a GGUF's Q8_0/Q4_0/Q4_1/Q4_K matrices as they are).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use afinar_checkpoint::bnb::{read_bnb_4bit, Bnb4bit, BnbScales};
use afinar_checkpoint::gguf::{GgufFile, MetaValue};
use afinar_checkpoint::safetensors::SafetensorsCheckpoint;
use afinar_checkpoint::{DType, TensorView};
use afinar_engine::{Backend, QuantFormat, WeightFormat};
use afinar_formats::nf4;
use afinar_tokenizer::{GgufTokenizerSpec, Tokenizer};

use super::build::{build, QuantTensor, WeightSource};
use super::config::read_json;
use super::{Llama, LlamaConfig};
use crate::{Error, Result};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Storage of the matrices (norm gains are always f32).
    pub format: WeightFormat,
    /// Tokenizer file to use instead of the checkpoint's own.
    pub tokenizer: Option<PathBuf>,
    /// Keep a GGUF file's Q8_0, Q4_0, Q4_1 and Q4_K matrices in their blocks, and a
    /// bitsandbytes checkpoint's NF4 matrices as NF4 ([`Backend::weight_quantized`]: frozen, 4.1
    /// to 8.5 bits per value) instead of dequantizing them to `format`; every other tensor (and
    /// a Q4_K matrix whose rows are not whole 256-value super-blocks) is loaded as `format`. No
    /// effect on checkpoints without quantized matrices.
    pub keep_quantized: bool,
    /// Storage of the attention and MLP projections (q, k, v, o, gate, up, down) when it differs
    /// from `format`: QLoRA loads them as NF4 (`WeightFormat::Quant(QuantFormat::Nf4)`),
    /// quantizing each matrix as it is read (a bitsandbytes checkpoint's NF4 matrices are taken
    /// as they are), while the embedding, the output projection and the norms keep `format`.
    /// Does not apply to matrices kept in GGUF blocks (`keep_quantized`).
    pub projections: Option<WeightFormat>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { format: WeightFormat::F32, tokenizer: None, keep_quantized: false, projections: None }
    }
}

/// A model ready to run, with the tokenizer that goes with it.
pub struct LoadedModel<B: Backend> {
    /// The network.
    pub model: Llama<B>,
    /// Its tokenizer (`None` when neither the checkpoint nor the options gave one).
    pub tokenizer: Option<Tokenizer>,
    /// Where it came from.
    pub source: PathBuf,
    /// The Hugging Face folder it was read from, with its `config.json` (`None` for GGUF).
    pub hf_folder: Option<HfFolder>,
}

/// A Hugging Face checkpoint folder and its parsed `config.json`, kept so that outputs can reuse
/// the input's layout, configuration and tokenizer files.
#[derive(Debug, Clone)]
pub struct HfFolder {
    /// The folder.
    pub dir: PathBuf,
    /// Its `config.json`, as written, except that a bitsandbytes `quantization_config` is
    /// removed: the loaded weights are no longer in that layout, and what is saved from them
    /// (fine-tuned or merged weights) is plain.
    pub config_json: serde_json::Value,
}

/// Loads a model from `path`: a `.gguf` file, a folder with `config.json` and
/// `model.safetensors` (or sharded with `model.safetensors.index.json`), or a `.safetensors`
/// file with `config.json` beside it.
pub fn load_model<B: Backend>(be: &B, path: &Path, opts: &LoadOptions) -> Result<LoadedModel<B>> {
    if !path.exists() {
        return Err(Error::Input(format!("{}: no such file or folder", path.display())));
    }
    let mut loaded = if is_gguf(path)? {
        load_gguf(be, path, opts, opts.keep_quantized)?
    } else {
        load_hf(be, path, opts)?
    };
    if let Some(tok) = &opts.tokenizer {
        loaded.tokenizer = Some(Tokenizer::from_file(tok)?);
    }
    if let Some(tok) = &loaded.tokenizer {
        if tok.vocab_size() > loaded.model.config.vocab_size {
            return Err(Error::Input(format!(
                "the tokenizer has {} tokens but the model's vocabulary has only {}",
                tok.vocab_size(),
                loaded.model.config.vocab_size
            )));
        }
    }
    Ok(loaded)
}

/// Whether `path` is a GGUF file (by its magic bytes); `false` for a folder.
pub fn is_gguf(path: &Path) -> Result<bool> {
    if path.is_dir() {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| {
        use std::io::Read;
        f.read(&mut magic)
    });
    match read {
        Ok(n) => Ok(n == 4 && &magic == b"GGUF"),
        Err(source) => Err(Error::Io { path: path.to_path_buf(), source }),
    }
}

/// Whether `name` is one of `used` or belongs to one (bitsandbytes keeps a 4-bit weight's
/// quantization state in `NAME.absmax`, `NAME.quant_map`, …).
fn accounted_for(name: &str, used: &BTreeSet<String>) -> bool {
    used.contains(name) || name.match_indices('.').any(|(i, _)| used.contains(&name[..i]))
}

fn view_to_f32(view: TensorView<'_>) -> Result<(Vec<usize>, Vec<f32>)> {
    let shape = view.shape.clone();
    Ok((shape, view.to_f32()?))
}

struct HfSource {
    ckpt: SafetensorsCheckpoint,
    path: PathBuf,
    keep_quantized: bool,
}

impl WeightSource for HfSource {
    fn file(&self) -> &Path {
        &self.path
    }
    fn unused(&self, used: &BTreeSet<String>) -> Vec<String> {
        self.ckpt
            .names()
            .into_iter()
            // Old transformers checkpoints store the RoPE frequencies, which are recomputed.
            .filter(|n| !accounted_for(n, used) && !n.ends_with("rotary_emb.inv_freq"))
            .collect()
    }
    fn has(&self, name: &str) -> bool {
        self.ckpt.contains(name)
    }
    fn load(&self, name: &str, _shape: &[usize]) -> Result<(Vec<usize>, Vec<f32>)> {
        match read_bnb_4bit(&self.ckpt, name)? {
            Some(w) => Ok((w.state.shape.clone(), w.dequantize())),
            None => view_to_f32(self.ckpt.tensor(name)?),
        }
    }

    fn load_quantized(&self, name: &str, format: WeightFormat) -> Result<Option<QuantTensor>> {
        let wanted = self.keep_quantized || format == WeightFormat::Quant(QuantFormat::Nf4);
        if !wanted {
            return Ok(None);
        }
        let Some(w) = read_bnb_4bit(&self.ckpt, name)? else {
            return Ok(None);
        };
        Ok(nf4_buffer(&w).map(|data| (w.state.shape.clone(), QuantFormat::Nf4, data)))
    }
}

/// A bitsandbytes 4-bit weight as the engine's NF4 buffer (packed values, scale codes, nested
/// scales, offset: [`afinar_formats::nf4`]), when it is in QLoRA's layout: NF4 with
/// bitsandbytes' code book, blocks of 64 that do not straddle rows, scales double-quantized in
/// blocks of 256 with bitsandbytes' dynamic map. `None` for any other layout (it is then
/// dequantized instead).
fn nf4_buffer(w: &Bnb4bit<'_>) -> Option<Vec<u8>> {
    let same =
        |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    let BnbScales::Nested { codes, nested_absmax, nested_quant_map, nested } = &w.scales else {
        return None;
    };
    let &[rows, cols] = w.state.shape.as_slice() else {
        return None;
    };
    let fits = w.state.quant_type == "nf4"
        && w.state.blocksize == nf4::BLOCK
        && nested.blocksize == nf4::STATS_BLOCK
        && same(&w.quant_map, &nf4::NF4_CODE)
        && same(nested_quant_map, nf4::dynamic_map());
    let total = nf4::matrix_bytes(rows, cols).filter(|_| fits)?;
    let mut data = Vec::with_capacity(total);
    data.extend_from_slice(w.packed);
    data.extend_from_slice(codes);
    data.extend(nested_absmax.iter().flat_map(|x| x.to_le_bytes()));
    data.extend_from_slice(&nested.offset.to_le_bytes());
    (data.len() == total).then_some(data)
}

struct GgufSource {
    file: GgufFile,
    path: PathBuf,
    /// The model's configuration: its family names the tensors and says which rows are
    /// permuted; its head counts, how.
    config: LlamaConfig,
    keep_quantized: bool,
}

impl GgufSource {
    fn gguf_name(&self, name: &str) -> Result<String> {
        self.config.family.gguf_name(name).ok_or_else(|| Error::Weights {
            file: self.path.clone(),
            tensor: name.into(),
            msg: "no GGUF name for this tensor".into(),
        })
    }

    /// Heads whose rows llama.cpp permuted (Q and K projections of a family that permutes).
    fn permuted_heads(&self, name: &str) -> Option<usize> {
        self.config.family.gguf_permuted_heads(name, &self.config)
    }
}

impl WeightSource for GgufSource {
    fn file(&self) -> &Path {
        &self.path
    }
    fn unused(&self, used: &BTreeSet<String>) -> Vec<String> {
        let used: BTreeSet<String> = used.iter().filter_map(|n| self.config.family.gguf_name(n)).collect();
        self.file
            .tensor_names()
            .into_iter()
            // llama.cpp's Llama-3.1 RoPE factors are read by the loader itself.
            .filter(|n| !used.contains(*n) && *n != "rope_freqs.weight")
            .map(str::to_string)
            .collect()
    }
    fn has(&self, name: &str) -> bool {
        self.config.family.gguf_name(name).is_some_and(|g| self.file.contains(&g))
    }
    fn load(&self, name: &str, _shape: &[usize]) -> Result<(Vec<usize>, Vec<f32>)> {
        let g = self.gguf_name(name)?;
        let (shape, mut data) = view_to_f32(self.file.tensor(&g)?)?;
        if let Some(heads) = self.permuted_heads(name) {
            data = unpermute_rows(&data, &shape, heads).map_err(|msg| Error::Weights {
                file: self.path.clone(),
                tensor: g.clone(),
                msg,
            })?;
        }
        Ok((shape, data))
    }

    fn load_quantized(&self, name: &str, _format: WeightFormat) -> Result<Option<QuantTensor>> {
        if !self.keep_quantized {
            return Ok(None);
        }
        let g = self.gguf_name(name)?;
        let view = self.file.tensor(&g)?;
        let format = match view.dtype {
            DType::Q8_0 => QuantFormat::Q8_0,
            DType::Q4_0 => QuantFormat::Q4_0,
            DType::Q4_1 => QuantFormat::Q4_1,
            DType::Q4_K => QuantFormat::Q4_K,
            _ => return Ok(None),
        };
        let &[rows, cols] = view.shape.as_slice() else {
            return Ok(None);
        };
        // Rows that are not whole blocks (a Q4_K row must be whole 256-value super-blocks; GGUF
        // writers fall back to other types for those, but a file may still hold one) are
        // dequantized like every other tensor, as before Q4_K could be kept.
        let Some(row_bytes) = format.row_bytes(cols) else {
            return Ok(None);
        };
        let err = |msg: String| Error::Weights { file: self.path.clone(), tensor: g.clone(), msg };
        if rows.checked_mul(row_bytes) != Some(view.data.len()) {
            return Err(err(format!(
                "{} bytes for a [{rows}, {cols}] {} matrix",
                view.data.len(),
                format.name()
            )));
        }
        let blocks = match self.permuted_heads(name) {
            // Rows are whole blocks, so the permutation moves byte ranges.
            Some(heads) => unpermute_row_chunks(view.data, rows, row_bytes, heads).map_err(err)?,
            None => view.data.to_vec(),
        };
        Ok(Some((view.shape.clone(), format, blocks)))
    }
}

/// Undoes llama.cpp's Q/K row permutation: within each head, GGUF row `2i + j` holds HF row
/// `j · head_dim/2 + i` (interleaved RoPE pairs vs halves).
pub fn unpermute_rows(data: &[f32], shape: &[usize], heads: usize) -> std::result::Result<Vec<f32>, String> {
    let [rows, cols] = shape else {
        return Err(format!("expected a matrix, got shape {shape:?}"));
    };
    unpermute_row_chunks(data, *rows, *cols, heads)
}

/// [`unpermute_rows`] on `rows` rows of `row_len` elements each (f32 values, or the bytes of a
/// row of quantized blocks).
fn unpermute_row_chunks<T: Copy + Default>(
    data: &[T],
    rows: usize,
    row_len: usize,
    heads: usize,
) -> std::result::Result<Vec<T>, String> {
    reorder_rope_rows(data, rows, row_len, heads, false)
}

/// Moves rows between the Hugging Face and llama.cpp orders of the Q/K projections: within each
/// head of `head_dim` rows, llama.cpp's row `2i + j` is Hugging Face's row `j · head_dim/2 + i`
/// (RoPE pairs interleaved instead of in halves). `to_gguf` picks the direction; `data` holds
/// `rows` rows of `row_len` elements.
pub(crate) fn reorder_rope_rows<T: Copy + Default>(
    data: &[T],
    rows: usize,
    row_len: usize,
    heads: usize,
    to_gguf: bool,
) -> std::result::Result<Vec<T>, String> {
    if heads == 0
        || !rows.is_multiple_of(heads)
        || !(rows / heads).is_multiple_of(2)
        || Some(data.len()) != rows.checked_mul(row_len)
    {
        return Err(format!("{rows} rows cannot be split into {heads} heads of even size"));
    }
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![T::default(); data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let gguf = h * head_dim + 2 * i + j;
                let hf = h * head_dim + j * half + i;
                let (src, dst) = if to_gguf { (hf, gguf) } else { (gguf, hf) };
                out[dst * row_len..(dst + 1) * row_len]
                    .copy_from_slice(&data[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    Ok(out)
}

fn load_hf<B: Backend>(be: &B, path: &Path, opts: &LoadOptions) -> Result<LoadedModel<B>> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        return Err(Error::Input(format!(
            "{}: not a GGUF file, and no config.json in {} (expected a Hugging Face checkpoint folder)",
            path.display(),
            dir.display()
        )));
    }
    let mut config_json = read_json(&config_path)?;
    let mut config = LlamaConfig::from_hf_value(&config_json, &config_path)?;
    check_quantization_config(&config_json, &config_path)?;
    if let Some(obj) = config_json.as_object_mut() {
        obj.remove("quantization_config");
    }
    let ckpt = SafetensorsCheckpoint::open(path)?;
    // Some checkpoints say nothing about tying but ship no lm_head.
    if !config.tie_embeddings && !ckpt.contains("lm_head.weight") {
        config.tie_embeddings = true;
    }
    let inv_freq = config.inv_freq();
    let src = HfSource { ckpt, path: path.to_path_buf(), keep_quantized: opts.keep_quantized };
    let model = build(be, config, inv_freq, &src, opts.format, opts.projections.unwrap_or(opts.format))?;
    let tok_path = dir.join("tokenizer.json");
    let hf_folder = Some(HfFolder { dir: dir.clone(), config_json });
    let tokenizer = if tok_path.exists() { Some(Tokenizer::from_file(&tok_path)?) } else { None };
    Ok(LoadedModel { model, tokenizer, source: path.to_path_buf(), hf_folder })
}

/// Accepts a `config.json` without `quantization_config`, or with bitsandbytes 4-bit; refuses
/// the other methods (GPTQ, AWQ, bitsandbytes 8-bit, ...), whose tensors afinar cannot read.
fn check_quantization_config(config: &serde_json::Value, path: &Path) -> Result<()> {
    let Some(q) = config.get("quantization_config") else {
        return Ok(());
    };
    let method = q.get("quant_method").and_then(serde_json::Value::as_str).unwrap_or("(none)");
    let four_bit = q.get("load_in_4bit").and_then(serde_json::Value::as_bool).unwrap_or(false);
    if method == "bitsandbytes" && four_bit {
        return Ok(());
    }
    let what =
        if method == "bitsandbytes" { "bitsandbytes 8-bit".to_string() } else { format!("`{method}`") };
    Err(meta_err(
        path,
        "quantization_config",
        &format!(
            "{what} quantization is not supported; afinar reads plain checkpoints and bitsandbytes 4-bit \
             (load_in_4bit) ones"
        ),
    ))
}

fn meta_err(path: &Path, key: &str, msg: &str) -> Error {
    Error::Config { file: path.to_path_buf(), key: key.into(), msg: msg.into() }
}

fn load_gguf<B: Backend>(
    be: &B,
    path: &Path,
    opts: &LoadOptions,
    keep_quantized: bool,
) -> Result<LoadedModel<B>> {
    let file = GgufFile::open(path)?;
    let config = LlamaConfig::from_gguf(&file, path)?;
    let names = file.tensor_names();
    // llama.cpp stores Llama-3.1 RoPE scaling as per-frequency divisors in `rope_freqs.weight`.
    let mut inv_freq = config.inv_freq();
    if names.contains(&"rope_freqs.weight") {
        let factors = file.tensor("rope_freqs.weight")?.to_f32()?;
        if factors.len() != inv_freq.len() {
            return Err(Error::Weights {
                file: path.to_path_buf(),
                tensor: "rope_freqs.weight".into(),
                msg: format!("{} factors for {} frequencies", factors.len(), inv_freq.len()),
            });
        }
        for (f, d) in inv_freq.iter_mut().zip(&factors) {
            *f /= d;
        }
    }
    let tokenizer = gguf_tokenizer(&file, path)?;
    let src = GgufSource { file, path: path.to_path_buf(), config: config.clone(), keep_quantized };
    let model = build(be, config, inv_freq, &src, opts.format, opts.projections.unwrap_or(opts.format))?;
    Ok(LoadedModel { model, tokenizer, source: path.to_path_buf(), hf_folder: None })
}

/// The tokenizer embedded in GGUF metadata, if any.
fn gguf_tokenizer(file: &GgufFile, path: &Path) -> Result<Option<Tokenizer>> {
    let Some(model) = file.get("tokenizer.ggml.model").and_then(MetaValue::as_str) else {
        return Ok(None);
    };
    let strings = |key: &str| -> Result<Vec<String>> {
        match file.get(key) {
            None => Ok(Vec::new()),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
                .ok_or_else(|| meta_err(path, key, "expected an array of strings")),
        }
    };
    let token_types = match file.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|t| t.as_u64().map(|t| t as i32)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| meta_err(path, "tokenizer.ggml.token_type", "expected an array of integers"))?,
    };
    let id = |key: &str| file.get(key).and_then(MetaValue::as_u64).map(|v| v as u32);
    let spec = GgufTokenizerSpec {
        model: model.to_string(),
        pre: file.get("tokenizer.ggml.pre").and_then(MetaValue::as_str).map(str::to_string),
        tokens: strings("tokenizer.ggml.tokens")?,
        merges: strings("tokenizer.ggml.merges")?,
        token_types,
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        add_bos: file.get("tokenizer.ggml.add_bos_token").and_then(MetaValue::as_bool),
        chat_template: file.get("tokenizer.chat_template").and_then(MetaValue::as_str).map(str::to_string),
    };
    Ok(Some(Tokenizer::from_gguf(spec)?))
}

/// Loads only the tokenizer from `path`: a GGUF file's embedded tokenizer, a checkpoint folder's
/// `tokenizer.json`, or a `tokenizer.json` / `tokenizer.model` file.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(Error::Input(format!("{}: no such file or folder", path.display())));
    }
    if is_gguf(path)? {
        let file = GgufFile::open(path)?;
        return gguf_tokenizer(&file, path)?.ok_or_else(|| {
            Error::Input(format!("{}: this GGUF file has no tokenizer in its metadata", path.display()))
        });
    }
    if path.is_dir() {
        for name in ["tokenizer.json", "tokenizer.model"] {
            if path.join(name).exists() {
                return Ok(Tokenizer::from_file(&path.join(name))?);
            }
        }
        return Err(Error::Input(format!(
            "{}: no tokenizer.json or tokenizer.model in this folder",
            path.display()
        )));
    }
    Ok(Tokenizer::from_file(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's converter permutes HF rows as `w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2)`;
    /// applying that permutation and then ours must give the input back.
    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        let (heads, hd, cols) = (3, 8, 5);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    // permuted index order (h, i, j) reads HF row (h, j, i)
                    let dst = h * hd + i * 2 + j;
                    let src = h * hd + j * (hd / 2) + i;
                    gguf[dst * cols..(dst + 1) * cols].copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rows(&gguf, &[rows, cols], heads).unwrap(), hf);
        assert!(unpermute_rows(&gguf, &[rows, cols], 5).is_err());
        // The same permutation on rows of bytes (quantized blocks) moves the same rows.
        let row_bytes = 3;
        let bytes: Vec<u8> = (0..rows).flat_map(|r| [r as u8; 3]).collect();
        let gguf_bytes: Vec<u8> =
            gguf.chunks(cols).flat_map(|row| [(row[0] as usize / cols) as u8; 3]).collect();
        assert_eq!(unpermute_row_chunks(&gguf_bytes, rows, row_bytes, heads).unwrap(), bytes);
    }
}
