//! Dequantization of the GGML block formats and conversion of the float formats to f32, and the
//! reverse ([`quantize()`], in [`mod@quantize`]).
//!
//! One file per format family, each format a plain loop over its blocks:
//! [`float`] (F32, F16, BF16), [`q8`] (Q8_0), [`q4`] (Q4_0, Q4_1), [`q5`] (Q5_0, Q5_1) and
//! [`k_quants`] (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K). Every kernel computes each value with the same
//! f32 operations, in the same order, as the `gguf` python package's numpy reference
//! (`gguf.quants.dequantize`), so results are bit-identical to it (the tests check this).
//!
//! The kernels take `src` (whole blocks) and `dst` (`block_size` values per block) and convert
//! as many blocks as both hold; [`dequantize`] and [`dequantize_into`] check the sizes first and
//! split big tensors over rayon's thread pool.

pub mod float;
pub mod k_quants;
pub mod q4;
pub mod q5;
pub mod q8;
pub mod quantize;

use rayon::prelude::*;

use crate::{CheckpointError, DType, Result};

pub use float::f16_to_f32;
pub use quantize::{can_quantize, f32_to_f16, quantize};

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

/// Iterates over the whole `TS`-byte blocks of `src` as arrays (bounds known to the compiler).
#[inline(always)]
pub(crate) fn blocks<const TS: usize>(src: &[u8]) -> impl Iterator<Item = &[u8; TS]> {
    src.chunks_exact(TS).filter_map(|c| c.first_chunk::<TS>())
}

/// Iterates over the whole `BS`-value output blocks of `dst` as arrays.
#[inline(always)]
pub(crate) fn out_blocks<const BS: usize>(dst: &mut [f32]) -> impl Iterator<Item = &mut [f32; BS]> {
    dst.chunks_exact_mut(BS).filter_map(|c| c.first_chunk_mut::<BS>())
}

/// Reads the little-endian f16 at `b[at..at + 2]` as f32.
#[inline(always)]
pub(crate) fn f16_at<const TS: usize>(b: &[u8; TS], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}
