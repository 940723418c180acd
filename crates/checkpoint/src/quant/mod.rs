//! Dequantization of the GGML block formats and conversion of the float formats to f32, and the
//! reverse ([`quantize()`], in [`mod@quantize`]), by [`DType`].
//!
//! The block kernels themselves are [`afinar_formats`]' (one implementation, shared with the
//! engine; re-exported here as [`float`], [`q8`], [`q4`], [`q5`] and [`k_quants`]): each computes
//! every value with the same f32 operations, in the same order, as the `gguf` python package's
//! numpy reference (`gguf.quants.dequantize`), so results are bit-identical to it (the tests check
//! this). [`dequantize`] and [`dequantize_into`] check the sizes first and split big tensors over
//! rayon's thread pool.

pub mod quantize;

use rayon::prelude::*;

use crate::{CheckpointError, DType, Result};

pub use afinar_formats::float;
pub use afinar_formats::float::{f16_to_f32, f32_to_f16};
pub use afinar_formats::ggml::{k_quants, q4, q5, q8};
pub use quantize::{can_quantize, quantize};

/// Tensors with at least this many elements are dequantized in parallel.
const PARALLEL_MIN: usize = 1 << 16;
/// Elements per parallel work item: a whole number of blocks for every dtype (256 divides it).
const CHUNK: usize = 1 << 15;

/// Dequantizes (or converts) `n` elements of `dtype` stored in `bytes` into a new f32 vector.
///
/// `bytes` must hold exactly `n` elements: `n / block_size` whole blocks of `type_size` bytes.
pub fn dequantize(dtype: DType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    check_sizes(dtype, bytes.len(), n)?;
    let mut out = vec![0f32; n];
    dequantize_into(dtype, bytes, &mut out)?;
    Ok(out)
}

/// Dequantizes (or converts) `bytes` into `out`, which receives `out.len()` elements; `bytes`
/// must hold exactly that many elements of `dtype`.
pub fn dequantize_into(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    check_sizes(dtype, bytes.len(), out.len())?;
    let kernel = kernel(dtype);
    if out.len() >= PARALLEL_MIN {
        let src_chunk = CHUNK / dtype.block_size() * dtype.type_size();
        out.par_chunks_mut(CHUNK).zip(bytes.par_chunks(src_chunk)).for_each(|(dst, src)| kernel(src, dst));
    } else {
        kernel(bytes, out);
    }
    Ok(())
}

/// The block kernel of `dtype`: converts `min(src blocks, dst blocks)` blocks.
pub fn kernel(dtype: DType) -> fn(&[u8], &mut [f32]) {
    match dtype {
        DType::F32 => float::f32_to_f32,
        DType::F16 => float::f16_to_f32_slice,
        DType::BF16 => float::bf16_to_f32_slice,
        DType::Q8_0 => q8::dequantize_q8_0,
        DType::Q4_0 => q4::dequantize_q4_0,
        DType::Q4_1 => q4::dequantize_q4_1,
        DType::Q5_0 => q5::dequantize_q5_0,
        DType::Q5_1 => q5::dequantize_q5_1,
        DType::Q2_K => k_quants::dequantize_q2_k,
        DType::Q3_K => k_quants::dequantize_q3_k,
        DType::Q4_K => k_quants::dequantize_q4_k,
        DType::Q5_K => k_quants::dequantize_q5_k,
        DType::Q6_K => k_quants::dequantize_q6_k,
    }
}

fn check_sizes(dtype: DType, n_bytes: usize, n: usize) -> Result<()> {
    let Some(expected) = dtype.bytes_for(n) else {
        return Err(CheckpointError::Data {
            what: "dequantize".into(),
            message: format!(
                "{n} elements is not a whole number of {dtype} blocks of {} elements",
                dtype.block_size()
            ),
        });
    };
    if expected != n_bytes {
        return Err(CheckpointError::Data {
            what: "dequantize".into(),
            message: format!("{n} {dtype} elements take {expected} bytes, got {n_bytes}"),
        });
    }
    Ok(())
}
