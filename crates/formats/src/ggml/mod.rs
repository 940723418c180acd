//! The GGML block formats: one file per format family, each format a plain loop over its blocks.
//!
//! Dequantizers: [`q8`] (Q8_0), [`q4`] (Q4_0, Q4_1), [`q5`] (Q5_0, Q5_1) and [`k_quants`] (Q2_K,
//! Q3_K, Q4_K, Q5_K, Q6_K). Every kernel computes each value with the same f32 operations, in the
//! same order, as the `gguf` python package's numpy reference (`gguf.quants.dequantize`), so
//! results are bit-identical to it. Quantizers: [`mod@quantize`] (Q8_0, Q4_0, Q4_1, Q5_0, Q4_K,
//! Q6_K).
//!
//! The kernels take `src` (whole blocks) and `dst` (`block_size` values per block) and convert
//! as many blocks as both hold; size checks, dispatch by type and parallelism belong to the
//! callers (the checkpoint crate's `quant`, the engine's CPU backend).

pub mod k_quants;
pub mod q4;
pub mod q5;
pub mod q8;
pub mod quantize;

use crate::float::f16_to_f32;
pub(crate) use crate::{blocks, out_blocks};

/// Values per block of the 32-value formats (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1).
pub const BLOCK: usize = 32;
/// Values per super-block of the k-quants.
pub const K_BLOCK: usize = 256;

/// Bytes per Q8_0 block: `d: f16`, `qs: [i8; 32]`.
pub const Q8_0_BYTES: usize = 34;
/// Bytes per Q4_0 block: `d: f16`, `qs: [u8; 16]`.
pub const Q4_0_BYTES: usize = 18;
/// Bytes per Q4_1 block: `d: f16`, `m: f16`, `qs: [u8; 16]`.
pub const Q4_1_BYTES: usize = 20;
/// Bytes per Q4_K super-block (256 values): `d: f16`, `dmin: f16`, `scales: [u8; 12]`,
/// `qs: [u8; 128]` ([`k_quants::dequantize_q4_k`]).
pub const Q4_K_BYTES: usize = 144;

/// Reads the little-endian f16 at `b[at..at + 2]` as f32.
#[inline(always)]
pub(crate) fn f16_at<const TS: usize>(b: &[u8; TS], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}
