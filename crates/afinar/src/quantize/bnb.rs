//! A loaded [`Llama`] as a bitsandbytes NF4 Hugging Face folder: what `transformers` writes with
//! `save_pretrained` after loading the model with `dtype=D` and
//! `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
//! bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=D)`.
//!
//! The seven projections of every layer become bitsandbytes' six NF4 tensors each
//! ([`afinar_checkpoint::bnb`]); the embedding, the norms and an untied output projection stay
//! plain tensors of dtype `D`, as `transformers` keeps them. Each projection is rounded to `D`
//! first and then quantized with afinar's NF4 quantizer, which is bit-identical to
//! bitsandbytes' (`afinar_formats::nf4`), so the tensors are byte-identical to
//! transformers' for the same weights; a projection already held as NF4 (loaded from such a
//! folder, or QLoRA's frozen base) is copied as it is.

use std::collections::BTreeMap;
use std::path::Path;

use afinar_checkpoint::bnb::{Bnb4bitParts, NestedState, QuantState};
use afinar_checkpoint::write::{copy_side_files, save_sharded, write_dir_atomic, write_json, TensorWrite};
use afinar_checkpoint::DType;
use afinar_engine::{rope_inv_freq, Backend, QuantFormat, RopeScaling};
use afinar_formats::{float, nf4};
use serde_json::{json, Value};

use super::export::{ExportSummary, Progress};
use crate::models::{LlamaConfig, LoadedModel, TensorRef};
use crate::{Error, Result};

/// transformers' default largest shard (5.x `save_pretrained`): one file for any Llama-3.
const MAX_SHARD_BYTES: u64 = 50_000_000_000;

/// Settings of [`export_bnb_nf4`].
#[derive(Debug, Clone)]
pub struct BnbExportOptions {
    /// The model's dtype `D` (BF16, F16 or F32): storage of the embedding, norms and output
    /// projection, the dtype the projections are rounded to before quantizing, and
    /// `bnb_4bit_compute_dtype`.
    pub dtype: DType,
}

impl Default for BnbExportOptions {
    fn default() -> Self {
        Self { dtype: DType::BF16 }
    }
}

/// The torch name of a float dtype (`torch.bfloat16` → `"bfloat16"`).
fn torch_name(d: DType) -> Result<&'static str> {
    match d {
        DType::BF16 => Ok("bfloat16"),
        DType::F16 => Ok("float16"),
        DType::F32 => Ok("float32"),
        other => Err(Error::Input(format!(
            "an NF4 checkpoint keeps its other tensors as bf16, f16 or f32, not {other}"
        ))),
    }
}

/// `transformers`' `BitsAndBytesConfig.to_dict()` for NF4 with double quantization (5.x keys,
/// which it writes sorted).
pub fn bnb_quantization_config(compute_dtype: &str) -> Value {
    json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": compute_dtype,
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": true,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes",
    })
}

/// `values` rounded to `d` (round to nearest even, as torch's `.to(dtype)`), back in f32.
fn round_to(values: &mut [f32], d: DType) {
    match d {
        DType::BF16 => values.iter_mut().for_each(|v| *v = float::bf16_to_f32(float::f32_to_bf16(*v))),
        DType::F16 => values.iter_mut().for_each(|v| *v = float::f16_to_f32(float::f32_to_f16(*v))),
        _ => {}
    }
}

/// `values` as the little-endian bytes of dtype `d`.
fn float_bytes(values: &[f32], d: DType) -> Vec<u8> {
    match d {
        DType::BF16 => values.iter().flat_map(|&v| float::f32_to_bf16(v).to_le_bytes()).collect(),
        DType::F16 => values.iter().flat_map(|&v| float::f32_to_f16(v).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// The Llama-3 `rope_scaling` that gives the model's RoPE frequencies: the config's own, or, for a
/// GGUF file (which stores Llama-3.1/3.2 scaling only as per-frequency divisors), the standard
/// Llama-3 settings (low 1, high 4, original context 8192) with the factor that reproduces them
/// within f32 rounding. Errors when none does: `config.json` could not express the model.
fn rope_scaling_for(c: &LlamaConfig, inv_freq: &[f32]) -> Result<Option<RopeScaling>> {
    let close = |s: Option<RopeScaling>| {
        let f = rope_inv_freq(c.head_dim, c.rope_theta, s);
        f.len() == inv_freq.len() && f.iter().zip(inv_freq).all(|(a, b)| (a - b).abs() <= 1e-6 * a.abs())
    };
    if close(c.rope_scaling) {
        return Ok(c.rope_scaling);
    }
    for factor in [8.0, 16.0, 32.0, 64.0] {
        let s = RopeScaling {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        if close(Some(s)) {
            return Ok(Some(s));
        }
    }
    Err(Error::Input(
        "the model's RoPE frequencies (a GGUF `rope_freqs` tensor) match no Llama-3 `rope_scaling` that \
         config.json can express"
            .into(),
    ))
}

/// The `config.json` of the NF4 folder: the source folder's (or one built from the model's
/// configuration), with the dtype and `quantization_config` of an NF4 model.
fn config_json<B: Backend>(loaded: &LoadedModel<B>, dtype: &str) -> Result<Value> {
    let c = &loaded.model.config;
    let mut cfg = match &loaded.hf_folder {
        Some(h) => h.config_json.clone(),
        None => {
            let tok = loaded.tokenizer.as_ref();
            let scaling = rope_scaling_for(c, &loaded.model.inv_freq)?;
            let c = LlamaConfig { rope_scaling: scaling, ..c.clone() };
            let mut v = c.to_hf_json(tok.and_then(|t| t.bos_id()), tok.and_then(|t| t.eos_id()), dtype);
            if let Some(obj) = v.as_object_mut() {
                obj.remove("torch_dtype");
            }
            v
        }
    };
    let obj = cfg.as_object_mut().ok_or_else(|| Error::Input("config.json is not a JSON object".into()))?;
    obj.insert("dtype".into(), dtype.into());
    if obj.contains_key("torch_dtype") {
        obj.insert("torch_dtype".into(), dtype.into());
    }
    obj.insert("quantization_config".into(), bnb_quantization_config(dtype));
    Ok(cfg)
}

/// One tensor of the folder: a plain float tensor (bytes of the export dtype) or an NF4 weight.
enum Out {
    Float { name: String, shape: Vec<usize>, bytes: Vec<u8> },
    Nf4(Box<Bnb4bitParts>),
}

/// A projection `[rows, cols]` as bitsandbytes' NF4 parts, from the engine's NF4 buffer `data`.
fn nf4_parts(name: &str, rows: usize, cols: usize, data: &[u8], dtype: &str) -> Result<Bnb4bitParts> {
    let n = rows * cols;
    let scales = n / nf4::BLOCK;
    let nested = scales.div_ceil(nf4::STATS_BLOCK);
    if data.len() != n / 2 + scales + 4 * nested + 4 {
        return Err(Error::Input(format!(
            "{name}: an NF4 buffer of {} bytes for [{rows}, {cols}]",
            data.len()
        )));
    }
    let (packed, rest) = data.split_at(n / 2);
    let (codes, rest) = rest.split_at(scales);
    let (nested_absmax, offset) = rest.split_at(4 * nested);
    let f32_at = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let state = QuantState {
        quant_type: "nf4".into(),
        blocksize: nf4::BLOCK,
        dtype: dtype.into(),
        shape: vec![rows, cols],
        nested: Some(NestedState {
            blocksize: nf4::STATS_BLOCK,
            dtype: "float32".into(),
            offset: f32_at(offset),
        }),
    };
    let nested_absmax: Vec<f32> = nested_absmax.chunks_exact(4).map(f32_at).collect();
    Ok(Bnb4bitParts::new(
        name,
        &state,
        packed.to_vec(),
        codes.to_vec(),
        &nested_absmax,
        &nf4::NF4_CODE,
        nf4::dynamic_map(),
    ))
}

fn check_finite(name: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::Input(format!(
            "{name}: value {i} is {}; refusing to export a broken model",
            values[i]
        ))),
        None => Ok(()),
    }
}

/// Writes `loaded` as a bitsandbytes NF4 Hugging Face folder `out` (see the module docs):
/// `model.safetensors`, `config.json` with the `quantization_config`, and the tokenizer and
/// generation files (copied from a Hugging Face source; the loaded tokenizer is written out when
/// the source has no `tokenizer.json`, as for a GGUF file). The folder is written to a temporary sibling and renamed into place (an existing `out`
/// is replaced). `progress` is called before each tensor.
///
/// Every projection needs a multiple of 64 values (NF4 blocks); values must be finite.
pub fn export_bnb_nf4<B: Backend>(
    be: &B,
    loaded: &LoadedModel<B>,
    out: &Path,
    opts: &BnbExportOptions,
    progress: &mut dyn FnMut(&Progress<'_>),
) -> Result<ExportSummary> {
    let dtype = torch_name(opts.dtype)?;
    let model = &loaded.model;
    let c = &model.config;
    if model.linears().iter().any(|(_, l)| l.lora.is_some()) {
        return Err(Error::Input(
            "the model carries LoRA adapters; export the merged weights (`merged/`) or the adapter".into(),
        ));
    }
    let config = config_json(loaded, dtype)?;

    // Names, shapes and where the values come from, in transformers' state-dict order.
    enum Src<'a, B: Backend> {
        Weight(&'a B::Weight, bool),
        Norm(&'a B::Buf),
    }
    let plan: Vec<(String, Vec<usize>, Src<'_, B>)> = model
        .tensors()
        .into_iter()
        .map(|t| {
            let src = match t.source {
                TensorRef::Embedding(w) => Src::Weight(w, false),
                // The output projection keeps the embedding's type, like the embedding.
                TensorRef::Matrix(w, _) => Src::Weight(w, t.name != "lm_head.weight"),
                TensorRef::Norm(b, _) => Src::Norm(b),
            };
            (t.name, t.shape, src)
        })
        .collect();

    let total = plan.len();
    let mut outs = Vec::with_capacity(total);
    let mut types: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (i, (name, shape, src)) in plan.into_iter().enumerate() {
        let quantized = matches!(src, Src::Weight(_, true));
        let kind = if quantized { "NF4" } else { opts.dtype.name() };
        progress(&Progress { index: i, total, name: &name, shape: &shape, dtype: kind });
        *types.entry(kind).or_insert(0) += 1;
        let weight_err =
            |e: afinar_engine::EngineError| Error::Input(format!("{name}: reading the weights back: {e}"));
        match src {
            Src::Weight(w, true) => {
                let (rows, cols) = (shape[0], shape[1]);
                let n = rows * cols;
                if !n.is_multiple_of(nf4::BLOCK) {
                    return Err(Error::Input(format!(
                        "{name}: [{rows}, {cols}] cannot be stored as NF4: it needs a multiple of {} values",
                        nf4::BLOCK
                    )));
                }
                let data = match be.weight_quantized_data(w).map_err(weight_err)? {
                    Some((QuantFormat::Nf4, data)) => data,
                    _ => {
                        let mut values = be.weight_to_host(w).map_err(weight_err)?;
                        check_finite(&name, &values)?;
                        round_to(&mut values, opts.dtype);
                        // NF4 blocks run over the flattened matrix, as bitsandbytes' do.
                        nf4::quantize(&values, 1, n)
                    }
                };
                outs.push(Out::Nf4(Box::new(nf4_parts(&name, rows, cols, &data, dtype)?)));
            }
            Src::Weight(w, false) => {
                let values = be.weight_to_host(w).map_err(weight_err)?;
                check_finite(&name, &values)?;
                outs.push(Out::Float { bytes: float_bytes(&values, opts.dtype), name, shape });
            }
            Src::Norm(buf) => {
                let mut values = be.to_host(buf).map_err(weight_err)?;
                values.truncate(c.dim);
                check_finite(&name, &values)?;
                outs.push(Out::Float { bytes: float_bytes(&values, opts.dtype), name, shape });
            }
        }
    }

    let mut writes: Vec<TensorWrite<'_>> = Vec::new();
    for o in &outs {
        match o {
            Out::Float { name, shape, bytes } => {
                writes.push(TensorWrite::from_bytes(name, opts.dtype, shape.clone(), bytes))
            }
            Out::Nf4(parts) => writes.extend(parts.tensor_writes()),
        }
    }
    let files = write_dir_atomic(out, |tmp: &Path| -> Result<Vec<std::path::PathBuf>> {
        let files = save_sharded(tmp, &writes, MAX_SHARD_BYTES, &BTreeMap::new())?;
        write_json(&tmp.join("config.json"), &config)?;
        if let Some(h) = &loaded.hf_folder {
            copy_side_files(&h.dir, tmp)?;
        }
        // A GGUF's tokenizer, or one given apart (`--tokenizer`) to a folder that has none.
        if let (Some(tok), false) = (&loaded.tokenizer, tmp.join("tokenizer.json").exists()) {
            tok.save_hf_with_max_length(tmp, Some(c.max_seq_len))?;
        }
        Ok(files.iter().filter_map(|f| f.file_name().map(|n| out.join(n))).collect())
    })?;
    let mut bytes = 0;
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "safetensors")) {
        bytes += std::fs::metadata(f).map_err(|source| Error::Io { path: f.clone(), source })?.len();
    }
    Ok(ExportSummary { path: out.to_path_buf(), tensors: writes.len(), bytes, types })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_halves_to_nearest() {
        let mut v = [1.0f32 + 1e-4, 65504.0, 3.0e-8];
        round_to(&mut v, DType::F16);
        // 3e-8 is nearest to the smallest subnormal half, 2^-24.
        assert_eq!(v, [1.0, 65504.0, 2f32.powi(-24)]);
        let mut b = [1.0f32 + 1e-3];
        round_to(&mut b, DType::BF16);
        assert_eq!(b, [1.0]);
    }
}
