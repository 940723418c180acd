//! Quantization and export: a model as a llama.cpp GGUF file ([`export_gguf`]) or as a
//! bitsandbytes NF4 Hugging Face folder ([`export_bnb_nf4`], the `nf4` scheme: GGUF has no NF4
//! type), a LoRA adapter as a llama.cpp LoRA adapter GGUF ([`export_lora_adapter`]).
//!
//! # Which tensor gets which type
//!
//! [`Scheme`] names the main type; [`tensor_dtype`] picks each tensor's type as llama.cpp's
//! `llama-quantize` does without an importance matrix:
//!
//! | tensor | f32 | f16 | q8_0 | q4_0 | q4_k (llama.cpp's Q4_K_M) |
//! |---|---|---|---|---|---|
//! | 1-D (norm gains, `rope_freqs`) | F32 | F32 | F32 | F32 | F32 |
//! | `output.weight`, or `token_embd.weight` of a tied model (it is the output too) | F32 | F16 | Q8_0 | Q6_K | Q6_K |
//! | `token_embd.weight` of an untied model | F32 | F16 | Q8_0 | Q4_0 | Q4_K |
//! | `attn_v`, `ffn_down` of layers `i < n/8`, `i ≥ 7n/8` or `(i - n/8) % 3 == 2` | F32 | F16 | Q8_0 | Q4_0 | Q6_K |
//! | other matrices | F32 | F16 | Q8_0 | Q4_0 | Q4_K |
//!
//! The k-quants need rows (the input dimension) that are a multiple of 256; where they are not
//! (SmolLM2's width is 576), llama.cpp falls back and so does afinar: Q4_K → Q5_0,
//! Q6_K → Q8_0. Rows that are not a multiple of 32 stay F16. On SmolLM2-135M, every tensor's
//! type and every block's bytes equal what llama.cpp's `llama-quantize` makes of afinar's F32
//! export (checked by `scripts/verify/gguf_export.py`).
//!
//! Memory: the model is loaded (f32) and each tensor is read back, converted and written in
//! turn, so an export needs the f32 model plus one tensor.
//!
//! # NF4
//!
//! [`export_bnb_nf4`] writes what `transformers` `save_pretrained` writes for a model loaded in
//! dtype `D` (bf16 by default) with `BitsAndBytesConfig(load_in_4bit=True,
//! bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=D)`: the
//! attention and MLP projections in bitsandbytes' NF4 layout (4-bit values, one absmax per 64
//! values double-quantized to 8 bits, ≈ 4.13 bits per value), the embedding, the norms and an
//! untied output projection in `D`. On SmolLM2-135M every tensor is byte-identical to
//! transformers' own (checked by `scripts/verify/nf4_export.py`), and [`crate::models::load_model`]
//! reads such a folder back with the NF4 matrices kept as they are.
//!
//! # Layout
//!
//! Tensor names and metadata follow llama.cpp's converter (`convert_hf_to_gguf.py`): `token_embd`,
//! `blk.N.attn_q` …, `output_norm`, `output` (absent when tied); Q and K rows permuted per head
//! for llama.cpp's interleaved RoPE (the inverse of what [`crate::models::load`] undoes);
//! Llama-3.1 RoPE scaling as the per-frequency divisors `rope_freqs.weight`; the tokenizer as
//! `tokenizer.ggml.*` (a `gpt2` byte-level BPE vocabulary) with the chat template.

mod adapter;
mod bnb;
mod export;

use std::fmt;
use std::str::FromStr;

use afinar_checkpoint::DType;

pub use adapter::{base_config, export_lora_adapter, AdapterExportOptions};
pub use bnb::{bnb_quantization_config, export_bnb_nf4, BnbExportOptions};
pub use export::{export_gguf, permute_rows, ExportOptions, ExportSummary, Progress};

use crate::{Error, Result};

/// What `afinar quantize --scheme` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum Scheme {
    /// Everything in f32 (lossless for an f32 model).
    F32,
    /// Matrices in f16.
    F16,
    /// Matrices in Q8_0 (8.5 bits per value).
    Q8_0,
    /// Matrices in Q4_0 (4.5 bits), the output in Q6_K.
    Q4_0,
    /// llama.cpp's Q4_K_M mix: Q4_K (4.5 bits) with Q6_K for the output and some `attn_v` /
    /// `ffn_down` layers.
    Q4_K,
    /// QLoRA's 4-bit NormalFloat with double-quantized scales (≈ 4.13 bits), written as a
    /// bitsandbytes Hugging Face folder ([`export_bnb_nf4`]) since GGUF has no NF4 type.
    Nf4,
}

impl Scheme {
    /// Every scheme, as the CLI lists them.
    pub const ALL: [Scheme; 6] =
        [Scheme::F32, Scheme::F16, Scheme::Q8_0, Scheme::Q4_0, Scheme::Q4_K, Scheme::Nf4];

    /// The name `--scheme` takes.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::F32 => "f32",
            Scheme::F16 => "f16",
            Scheme::Q8_0 => "q8_0",
            Scheme::Q4_0 => "q4_0",
            Scheme::Q4_K => "q4_k",
            Scheme::Nf4 => "nf4",
        }
    }

    /// Whether the scheme is written as a GGUF file (all but [`Scheme::Nf4`], which is a
    /// Hugging Face folder).
    pub fn is_gguf(self) -> bool {
        self != Scheme::Nf4
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`) for the scheme.
    pub fn file_type(self) -> u32 {
        match self {
            Scheme::F32 => 0,
            Scheme::F16 => 1,
            Scheme::Q4_0 => 2,
            Scheme::Q8_0 => 7,
            Scheme::Q4_K => 15,
            Scheme::Nf4 => 0,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheme {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let key = s.to_ascii_lowercase().replace('-', "_");
        let key = match key.as_str() {
            "q4_k_m" => "q4_k",
            "fp16" => "f16",
            "fp32" => "f32",
            k => k,
        };
        Scheme::ALL.into_iter().find(|sc| sc.name() == key).ok_or_else(|| {
            Error::Input(format!(
                "unknown quantization scheme `{s}`; expected one of: {}",
                Scheme::ALL.map(Scheme::name).join(", ")
            ))
        })
    }
}

/// What [`tensor_dtype`] needs to know about a tensor.
#[derive(Debug, Clone, Copy)]
pub struct TensorRole<'a> {
    /// The GGUF name (`blk.3.attn_v.weight`).
    pub name: &'a str,
    /// Row-major shape.
    pub shape: &'a [usize],
    /// Whether the model has no `output.weight` (the embedding is the output).
    pub tied: bool,
    /// Number of decoder layers.
    pub n_layers: usize,
}

/// llama.cpp's rule for the layers that get more bits in the `_M` k-quant mixes.
fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2
}

/// The layer number in `blk.N.…`.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The type a tensor gets under `scheme` (see the module documentation for the table).
pub fn tensor_dtype(scheme: Scheme, t: TensorRole<'_>) -> DType {
    if t.shape.len() < 2 || scheme == Scheme::F32 || scheme == Scheme::Nf4 {
        return DType::F32;
    }
    let cols = t.shape.last().copied().unwrap_or(0);
    if scheme == Scheme::F16 || !cols.is_multiple_of(32) {
        return DType::F16;
    }
    let is_output = t.name == "output.weight" || (t.tied && t.name == "token_embd.weight");
    let wanted = match scheme {
        Scheme::Q8_0 => DType::Q8_0,
        Scheme::Q4_0 if is_output => DType::Q6_K,
        Scheme::Q4_0 => DType::Q4_0,
        Scheme::Q4_K if is_output => DType::Q6_K,
        Scheme::Q4_K => {
            let more = (t.name.ends_with(".attn_v.weight") || t.name.ends_with(".ffn_down.weight"))
                && layer_of(t.name).is_some_and(|l| use_more_bits(l, t.n_layers));
            if more {
                DType::Q6_K
            } else {
                DType::Q4_K
            }
        }
        Scheme::F32 | Scheme::F16 | Scheme::Nf4 => unreachable!("handled above"),
    };
    match wanted {
        DType::Q4_K if !cols.is_multiple_of(256) => DType::Q5_0,
        DType::Q6_K if !cols.is_multiple_of(256) => DType::Q8_0,
        d => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_parse_with_clear_errors() {
        assert_eq!("Q4_K_M".parse::<Scheme>().unwrap(), Scheme::Q4_K);
        assert_eq!("q8_0".parse::<Scheme>().unwrap(), Scheme::Q8_0);
        let err = "q3_k".parse::<Scheme>().unwrap_err().to_string();
        assert!(err.contains("unknown quantization scheme `q3_k`") && err.contains("q4_k"), "{err}");
        assert!(!Scheme::Nf4.is_gguf() && Scheme::Q4_K.is_gguf());
    }

    #[test]
    fn tensor_types_follow_llama_cpp() {
        let role = |name, shape: &'static [usize], tied| TensorRole { name, shape, tied, n_layers: 16 };
        let t = |s, r| tensor_dtype(s, r);
        assert_eq!(t(Scheme::Q4_0, role("blk.0.attn_norm.weight", &[2048], false)), DType::F32);
        assert_eq!(t(Scheme::Q4_0, role("token_embd.weight", &[1000, 2048], true)), DType::Q6_K);
        assert_eq!(t(Scheme::Q4_0, role("token_embd.weight", &[1000, 2048], false)), DType::Q4_0);
        assert_eq!(t(Scheme::Q8_0, role("output.weight", &[1000, 2048], false)), DType::Q8_0);
        // Layers 0, 1 (< 16/8), 4, 7, 10, 13 (every third after) and 14, 15 (≥ 7·16/8).
        let more: Vec<usize> = (0..16)
            .filter(|l| {
                let name = format!("blk.{l}.ffn_down.weight");
                tensor_dtype(
                    Scheme::Q4_K,
                    TensorRole { name: &name, shape: &[2048, 8192], tied: false, n_layers: 16 },
                ) == DType::Q6_K
            })
            .collect();
        assert_eq!(more, [0, 1, 4, 7, 10, 13, 14, 15]);
        assert_eq!(t(Scheme::Q4_K, role("blk.5.attn_q.weight", &[2048, 2048], false)), DType::Q4_K);
        // SmolLM2's 576-wide rows: the k-quant fallbacks.
        assert_eq!(t(Scheme::Q4_K, role("blk.5.attn_q.weight", &[576, 576], false)), DType::Q5_0);
        assert_eq!(t(Scheme::Q4_K, role("token_embd.weight", &[49152, 576], true)), DType::Q8_0);
        assert_eq!(t(Scheme::F16, role("blk.5.attn_q.weight", &[576, 576], false)), DType::F16);
    }
}
