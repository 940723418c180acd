//! Quantization by [`DType`]: f32 values into the float and GGML block formats (the inverse of
//! the dequantizers), with the kernels of [`afinar_formats::float`] (F32, F16, BF16: round to
//! nearest, ties to even) and [`afinar_formats::ggml::quantize`] (Q8_0, Q4_0, Q4_1, Q5_0
//! byte-identical to `gguf.quants.quantize`; Q4_K and Q6_K as llama.cpp's reference search).
//!
//! Every function takes whole blocks: `src.len()` a multiple of [`DType::block_size`], `dst`
//! exactly [`DType::bytes_for`] bytes; [`quantize`] checks this and runs big tensors in parallel.

use afinar_formats::float::{encode_bf16, encode_f16, encode_f32};
use afinar_formats::ggml::quantize::{
    quantize_q4_0, quantize_q4_1, quantize_q4_k, quantize_q5_0, quantize_q6_k, quantize_q8_0,
};
use rayon::prelude::*;

use crate::{CheckpointError, DType, Result};

/// Tensors with at least this many values are quantized in parallel.
const PARALLEL_MIN: usize = 1 << 16;
/// Values per parallel work item: a whole number of blocks of every type (256 divides it).
const CHUNK: usize = 1 << 14;

/// Quantizes (or converts) `src` to `dtype`, returning the encoded bytes.
///
/// Errors when `src.len()` is not a whole number of `dtype` blocks, or `dtype` is one this
/// module cannot encode (see [`can_quantize`]).
pub fn quantize(dtype: DType, src: &[f32]) -> Result<Vec<u8>> {
    if !can_quantize(dtype) {
        return Err(CheckpointError::Data {
            what: "quantize".into(),
            message: format!(
                "cannot quantize to {dtype} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K)"
            ),
        });
    }
    let n_bytes = dtype.bytes_for(src.len()).ok_or_else(|| CheckpointError::Data {
        what: "quantize".into(),
        message: format!(
            "{} values is not a whole number of {dtype} blocks of {} values",
            src.len(),
            dtype.block_size()
        ),
    })?;
    let mut out = vec![0u8; n_bytes];
    let kernel = kernel(dtype);
    if src.len() >= PARALLEL_MIN {
        let dst_chunk = CHUNK / dtype.block_size() * dtype.type_size();
        out.par_chunks_mut(dst_chunk).zip(src.par_chunks(CHUNK)).for_each(|(dst, src)| kernel(src, dst));
    } else {
        kernel(src, &mut out);
    }
    Ok(out)
}

/// The block kernel that encodes `dtype`: fills `min(src blocks, dst blocks)` blocks.
pub fn kernel(dtype: DType) -> fn(&[f32], &mut [u8]) {
    match dtype {
        DType::F32 => encode_f32,
        DType::F16 => encode_f16,
        DType::BF16 => encode_bf16,
        DType::Q8_0 => quantize_q8_0,
        DType::Q4_0 => quantize_q4_0,
        DType::Q4_1 => quantize_q4_1,
        DType::Q5_0 => quantize_q5_0,
        DType::Q4_K => quantize_q4_k,
        DType::Q6_K => quantize_q6_k,
        DType::Q5_1 | DType::Q2_K | DType::Q3_K | DType::Q5_K => unsupported,
    }
}

/// Whether [`quantize`] can encode `dtype`.
pub fn can_quantize(dtype: DType) -> bool {
    !matches!(dtype, DType::Q5_1 | DType::Q2_K | DType::Q3_K | DType::Q5_K)
}

fn unsupported(_: &[f32], _: &mut [u8]) {
    unreachable!("quantize() is only called for types can_quantize() accepts")
}
