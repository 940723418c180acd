//! bitsandbytes 4-bit weights in a Hugging Face safetensors checkpoint, as `transformers`'
//! `save_pretrained` writes a model loaded with `BitsAndBytesConfig(load_in_4bit=True, ...)`
//! (checked against transformers 5.23 with bitsandbytes 0.50).
//!
//! A quantized linear's `P.weight` of shape `[rows, cols]` (`n = rows · cols` values, taken as one
//! flat row-major array cut into blocks of `blocksize` values) becomes six tensors:
//!
//! | tensor | dtype | shape | contents |
//! |---|---|---|---|
//! | `P.weight` | U8 | `[⌈n/2⌉, 1]` | 4-bit indices into `quant_map`, value `2i` in the high nibble of byte `i` |
//! | `P.weight.absmax` | U8 (F32 without double quantization) | `[⌈n/blocksize⌉]` | per block: 8-bit code of `absmax − offset` (or the absmax itself) |
//! | `P.weight.quant_map` | F32 | `[16]` | the 4-bit code book (NF4 or FP4) |
//! | `P.weight.nested_absmax` | F32 | `[⌈blocks/nested_blocksize⌉]` | scale of each block of codes (double quantization only) |
//! | `P.weight.nested_quant_map` | F32 | `[256]` | bitsandbytes' 8-bit dynamic map (double quantization only) |
//! | `P.weight.quant_state.bitsandbytes__nf4` (or `__fp4`) | U8 | `[len]` | UTF-8 JSON of the rest ([`QuantState`]) |
//!
//! Dequantization, in f32 as bitsandbytes computes it on the CPU: `absmax = nested_quant_map[c] ·
//! nested_absmax[b / nested_blocksize] + offset` (or the stored absmax), `value = quant_map[q] ·
//! absmax`. Embeddings, norms and the output projection stay plain tensors in the model's dtype.
//!
//! This module only moves bytes and reads JSON; quantizing values is afinar's engine's
//! business (`afinar_formats::nf4`).

use std::path::Path;

use rayon::prelude::*;
use serde_json::Value;

use crate::safetensors::{RawTensor, SafetensorsCheckpoint};
use crate::write::TensorWrite;
use crate::{CheckpointError, Result};

/// The suffix of the JSON tensor after `P.weight.`, without the quant type.
pub const QUANT_STATE_PREFIX: &str = "quant_state.bitsandbytes__";

/// The 4-bit quant types bitsandbytes writes.
pub const QUANT_TYPES: [&str; 2] = ["nf4", "fp4"];

/// The non-tensor part of a 4-bit quant state: what `P.weight.quant_state.bitsandbytes__<type>`
/// holds as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantState {
    /// `"nf4"` or `"fp4"`.
    pub quant_type: String,
    /// Values per absmax block (64 by default).
    pub blocksize: usize,
    /// The torch dtype the weight is dequantized to (`"bfloat16"`, `"float16"`, `"float32"`): the
    /// dtype the model was loaded in.
    pub dtype: String,
    /// The weight's shape, `[out, in]` for a linear.
    pub shape: Vec<usize>,
    /// Double quantization of the absmax scales, when used.
    pub nested: Option<NestedState>,
}

/// The double-quantization part of a [`QuantState`].
#[derive(Debug, Clone, PartialEq)]
pub struct NestedState {
    /// Scales per block of the 8-bit quantization (256).
    pub blocksize: usize,
    /// dtype of the dequantized scales (`"float32"`).
    pub dtype: String,
    /// Mean of the absmax scales, subtracted before their 8-bit quantization.
    pub offset: f32,
}

impl QuantState {
    /// The JSON exactly as bitsandbytes writes it (`json.dumps` of its dict: keys in its order,
    /// `", "` and `": "` separators, the offset as python's `repr` of the f32 widened to f64).
    pub fn to_json(&self) -> String {
        let s = |v: &str| serde_json::to_string(v).unwrap_or_default();
        let shape: Vec<String> = self.shape.iter().map(usize::to_string).collect();
        let mut out = format!(
            "{{\"quant_type\": {}, \"blocksize\": {}, \"dtype\": {}, \"shape\": [{}]",
            s(&self.quant_type),
            self.blocksize,
            s(&self.dtype),
            shape.join(", ")
        );
        if let Some(n) = &self.nested {
            out.push_str(&format!(
                ", \"nested_blocksize\": {}, \"nested_dtype\": {}, \"nested_offset\": {}",
                n.blocksize,
                s(&n.dtype),
                python_float_repr(f64::from(n.offset))
            ));
        }
        out.push('}');
        out
    }

    /// Parses the JSON of the tensor `tensor` of `path`, checking the fields afinar relies on.
    pub fn from_json(bytes: &[u8], path: &Path, tensor: &str) -> Result<QuantState> {
        let bad = |message: String| CheckpointError::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            message,
        };
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("quant state is not valid JSON: {e}")))?;
        let str_key = |k: &str| -> Result<String> {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad(format!("quant state has no string \"{k}\"")))
        };
        let size_key = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(Value::as_u64)
                .and_then(|x| usize::try_from(x).ok())
                .filter(|&x| x > 0)
                .ok_or_else(|| bad(format!("quant state has no positive integer \"{k}\"")))
        };
        let shape = v
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect())
            .ok_or_else(|| bad("quant state has no \"shape\" list of sizes".into()))?;
        let nested = match v.get("nested_offset") {
            None => None,
            Some(off) => {
                let offset = off
                    .as_f64()
                    .filter(|o| o.is_finite())
                    .ok_or_else(|| bad("quant state's \"nested_offset\" is not a finite number".into()))?;
                Some(NestedState {
                    blocksize: size_key("nested_blocksize")?,
                    dtype: str_key("nested_dtype")?,
                    offset: offset as f32,
                })
            }
        };
        let state = QuantState {
            quant_type: str_key("quant_type")?,
            blocksize: size_key("blocksize")?,
            dtype: str_key("dtype")?,
            shape,
            nested,
        };
        if !QUANT_TYPES.contains(&state.quant_type.as_str()) {
            return Err(bad(format!(
                "quant type \"{}\" is not a 4-bit bitsandbytes type ({})",
                state.quant_type,
                QUANT_TYPES.join(", ")
            )));
        }
        Ok(state)
    }

    /// Number of values of the weight.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Python's `repr` of a float (what `json.dumps` writes): the shortest digits that read back
/// as `x`, in fixed notation for exponents −4 to 15 (`0.0519`, `12.0`), else scientific with a
/// signed two-digit exponent at least (`1e-05`, `1.5e+16`).
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    // Rust's `{:e}` gives the same shortest round-trip digits: `d[.ddd]e<exp>`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if (point as usize) >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mant = if rest.is_empty() { first.to_string() } else { format!("{first}.{rest}") };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{esign}{:02}", exp.abs())
    }
}

/// The name of the quant-state tensor of the weight `weight` (`P.weight`).
pub fn quant_state_name(weight: &str, quant_type: &str) -> String {
    format!("{weight}.{QUANT_STATE_PREFIX}{quant_type}")
}

/// The 4-bit quant type of `weight` when `ckpt` holds it in bitsandbytes' layout (it has a
/// quant-state tensor), `None` for a plain tensor.
pub fn bnb_4bit_type(ckpt: &SafetensorsCheckpoint, weight: &str) -> Option<&'static str> {
    QUANT_TYPES.into_iter().find(|t| ckpt.contains(&quant_state_name(weight, t)))
}

/// The absmax scales of a [`Bnb4bit`] weight.
#[derive(Debug, Clone)]
pub enum BnbScales<'a> {
    /// Double quantization: 8-bit codes of `absmax − offset`, one per block.
    Nested {
        /// The codes (`P.weight.absmax`).
        codes: &'a [u8],
        /// Scale of each block of codes (`P.weight.nested_absmax`).
        nested_absmax: Vec<f32>,
        /// The 8-bit code book (`P.weight.nested_quant_map`, 256 values).
        nested_quant_map: Vec<f32>,
        /// Block size of the codes, and the offset added back.
        nested: NestedState,
    },
    /// One f32 absmax per block.
    Plain(Vec<f32>),
}

/// A bitsandbytes 4-bit weight read from a checkpoint (borrowing its packed bytes).
#[derive(Debug, Clone)]
pub struct Bnb4bit<'a> {
    /// The weight's name (`P.weight`).
    pub name: String,
    /// The JSON part of its quant state.
    pub state: QuantState,
    /// The packed 4-bit indices, `⌈n/2⌉` bytes.
    pub packed: &'a [u8],
    /// The 16-entry code book.
    pub quant_map: Vec<f32>,
    /// The block scales.
    pub scales: BnbScales<'a>,
}

fn f32s(raw: &RawTensor<'_>) -> Vec<f32> {
    raw.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Reads the weight `weight` (`P.weight`) of `ckpt` in bitsandbytes' 4-bit layout; `Ok(None)`
/// when it is a plain tensor. Every part is checked against the quant state's shape and block
/// sizes; an error names the file and the tensor.
pub fn read_bnb_4bit<'a>(ckpt: &'a SafetensorsCheckpoint, weight: &str) -> Result<Option<Bnb4bit<'a>>> {
    let Some(quant_type) = bnb_4bit_type(ckpt, weight) else {
        return Ok(None);
    };
    let state_name = quant_state_name(weight, quant_type);
    let state_raw = ckpt.raw_tensor(&state_name)?;
    let state = QuantState::from_json(state_raw.data, state_raw.path, &state_name)?;
    let part = |suffix: &str| -> Result<RawTensor<'a>> {
        let name = if suffix.is_empty() { weight.to_string() } else { format!("{weight}.{suffix}") };
        ckpt.raw_tensor(&name).map_err(|e| match e {
            CheckpointError::TensorNotFound { path, tensor } => CheckpointError::Tensor {
                path,
                tensor,
                message: format!("missing: {state_name} says {weight} is bitsandbytes 4-bit"),
            },
            other => other,
        })
    };
    let check = |raw: &RawTensor<'_>, dtype: &str, len: usize| -> Result<()> {
        let numel: usize = raw.shape.iter().product();
        if raw.dtype != dtype || numel != len {
            return Err(CheckpointError::Tensor {
                path: raw.path.to_path_buf(),
                tensor: raw.name.to_string(),
                message: format!(
                    "is {} {:?}; a bitsandbytes 4-bit {:?} weight needs {dtype} with {len} values{}",
                    raw.dtype,
                    raw.shape,
                    state.shape,
                    if raw.dtype != dtype && raw.name == weight {
                        " (only quant_storage=uint8 is supported)"
                    } else {
                        ""
                    }
                ),
            });
        }
        Ok(())
    };
    let n = state.numel();
    let blocks = n.div_ceil(state.blocksize);
    let packed = part("")?;
    check(&packed, "U8", n.div_ceil(2))?;
    let quant_map = part("quant_map")?;
    check(&quant_map, "F32", 16)?;
    let absmax = part("absmax")?;
    let scales = match &state.nested {
        Some(nested) => {
            check(&absmax, "U8", blocks)?;
            let nested_absmax = part("nested_absmax")?;
            check(&nested_absmax, "F32", blocks.div_ceil(nested.blocksize))?;
            let map = part("nested_quant_map")?;
            check(&map, "F32", 256)?;
            BnbScales::Nested {
                codes: absmax.data,
                nested_absmax: f32s(&nested_absmax),
                nested_quant_map: f32s(&map),
                nested: nested.clone(),
            }
        }
        None => {
            check(&absmax, "F32", blocks)?;
            BnbScales::Plain(f32s(&absmax))
        }
    };
    Ok(Some(Bnb4bit {
        name: weight.to_string(),
        state,
        packed: packed.data,
        quant_map: f32s(&quant_map),
        scales,
    }))
}

impl Bnb4bit<'_> {
    /// The absmax of every block, dequantized as bitsandbytes does (`map[c] · scale + offset`
    /// in f32).
    pub fn block_scales(&self) -> Vec<f32> {
        match &self.scales {
            BnbScales::Plain(a) => a.clone(),
            BnbScales::Nested { codes, nested_absmax, nested_quant_map, nested } => codes
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    nested_quant_map[usize::from(c)] * nested_absmax[i / nested.blocksize] + nested.offset
                })
                .collect(),
        }
    }

    /// The weight as f32 values in row-major order (`quant_map[q] · absmax` per value, what
    /// bitsandbytes' `dequantize_4bit` computes before casting to the state's dtype).
    pub fn dequantize(&self) -> Vec<f32> {
        let n = self.state.numel();
        let scales = self.block_scales();
        let bs = self.state.blocksize;
        (0..n)
            .into_par_iter()
            .map(|i| {
                let byte = self.packed[i / 2];
                let q = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
                self.quant_map[usize::from(q)] * scales[i / bs]
            })
            .collect()
    }
}

/// The six tensors of one double-quantized 4-bit weight, owned, ready to be written with
/// [`Bnb4bitParts::tensor_writes`].
#[derive(Debug, Clone)]
pub struct Bnb4bitParts {
    /// `P.weight` and the five names after it, in [`Bnb4bitParts::SUFFIXES`] order.
    pub names: [String; 6],
    /// Packed 4-bit indices (`⌈n/2⌉` bytes).
    pub packed: Vec<u8>,
    /// 8-bit codes of the centred block scales.
    pub codes: Vec<u8>,
    /// Scales of the blocks of codes, little-endian f32 bytes.
    pub nested_absmax: Vec<u8>,
    /// The 4-bit code book, little-endian f32 bytes (16 values).
    pub quant_map: Vec<u8>,
    /// The 8-bit dynamic map, little-endian f32 bytes (256 values).
    pub nested_quant_map: Vec<u8>,
    /// [`QuantState::to_json`].
    pub state_json: Vec<u8>,
}

impl Bnb4bitParts {
    /// What follows `P.weight` in each tensor's name (the first is the weight itself).
    pub const SUFFIXES: [&'static str; 6] =
        ["", ".absmax", ".nested_absmax", ".quant_map", ".nested_quant_map", ".quant_state.bitsandbytes__"];

    /// Assembles the parts of `weight` (`P.weight`) from its state and data.
    ///
    /// `state` must be nested (double quantization); the byte lengths are checked when written.
    pub fn new(
        weight: &str,
        state: &QuantState,
        packed: Vec<u8>,
        codes: Vec<u8>,
        nested_absmax: &[f32],
        quant_map: &[f32],
        nested_quant_map: &[f32],
    ) -> Self {
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let names = Self::SUFFIXES.map(|s| {
            if s.ends_with("__") {
                quant_state_name(weight, &state.quant_type)
            } else {
                format!("{weight}{s}")
            }
        });
        Bnb4bitParts {
            names,
            packed,
            codes,
            nested_absmax: le(nested_absmax),
            quant_map: le(quant_map),
            nested_quant_map: le(nested_quant_map),
            state_json: state.to_json().into_bytes(),
        }
    }

    /// The tensors as `transformers` writes them: the packed weight `U8 [⌈n/2⌉, 1]`, the codes
    /// `U8`, the quant-state JSON `U8` and the three f32 tensors.
    pub fn tensor_writes(&self) -> Vec<TensorWrite<'_>> {
        use crate::DType::F32;
        let [w, absmax, nested_absmax, quant_map, nested_quant_map, state] = &self.names;
        vec![
            TensorWrite::from_u8(w, vec![self.packed.len(), 1], &self.packed),
            TensorWrite::from_u8(absmax, vec![self.codes.len()], &self.codes),
            TensorWrite::from_bytes(
                nested_absmax,
                F32,
                vec![self.nested_absmax.len() / 4],
                &self.nested_absmax,
            ),
            TensorWrite::from_bytes(quant_map, F32, vec![self.quant_map.len() / 4], &self.quant_map),
            TensorWrite::from_bytes(
                nested_quant_map,
                F32,
                vec![self.nested_quant_map.len() / 4],
                &self.nested_quant_map,
            ),
            TensorWrite::from_u8(state, vec![self.state_json.len()], &self.state_json),
        ]
    }

    /// Bytes of the six tensors' data.
    pub fn bytes(&self) -> usize {
        self.packed.len()
            + self.codes.len()
            + self.nested_absmax.len()
            + self.quant_map.len()
            + self.nested_quant_map.len()
            + self.state_json.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        let cases: [(f64, &str); 12] = [
            (0.05192331597208977, "0.05192331597208977"),
            (0.0, "0.0"),
            (1.0, "1.0"),
            (123.0, "123.0"),
            (1.5, "1.5"),
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (-2.5e-7, "-2.5e-07"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "{x}");
        }
        assert_eq!(python_float_repr(f64::from(0.1f32)), "0.10000000149011612");
    }

    #[test]
    fn quant_state_json_is_byte_identical_to_bitsandbytes() {
        // From a transformers 5.23 / bitsandbytes 0.50 save_pretrained of a tiny Llama.
        let want = r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [128, 256], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.05192331597208977}"#;
        let s = QuantState::from_json(want.as_bytes(), Path::new("x"), "t").unwrap();
        assert_eq!(s.shape, [128, 256]);
        assert_eq!(s.nested.as_ref().unwrap().offset, 0.05192331597208977f64 as f32);
        assert_eq!(s.to_json(), want);
        let bad = QuantState::from_json(br#"{"quant_type": "int8"}"#, Path::new("x"), "t").unwrap_err();
        assert!(bad.to_string().contains("blocksize") || bad.to_string().contains("shape"), "{bad}");
    }
}
