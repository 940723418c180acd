//! afinar's storage formats: one definition, and one scalar (de)quantizer, of every format that
//! more than one crate reads or writes. The engine's CPU and CUDA backends, the checkpoint
//! readers and writers and the exporters all use these; the fast compute kernels (SIMD dot
//! products, GEMV, AMX tiles) that work on the formats stay in the engine.
//!
//! - [`float`]: f32 ↔ f16 / bf16 bit conversions (round to nearest, ties to even) and their
//!   little-endian slice kernels.
//! - [`ggml`]: the GGML block layouts (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K…Q6_K): dequantizers
//!   bit-exact with `gguf.quants`, and the quantizers of llama.cpp's reference.
//! - [`nf4`]: QLoRA's NF4 with double-quantized scales, byte-identical to bitsandbytes.
//! - [`IGNORE_INDEX`]: the target that takes no loss.
//!
//! This crate depends on nothing of afinar's and sits below the engine and the checkpoint crate.

pub mod float;
pub mod ggml;
pub mod nf4;

/// The target (label) that takes no loss: Hugging Face's and PyTorch's `ignore_index`.
pub const IGNORE_INDEX: i32 = -100;

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
