//! Host-side conversion of whole weight matrices between f32 and the block-quantized layouts
//! ([`QuantFormat`]), shared by every backend: the CPU backend keeps the result, a device backend
//! uploads it. The format definitions and scalar kernels are [`afinar_formats`]'; the products on
//! quantized weights are each backend's own.

use afinar_formats::{ggml, nf4};
use rayon::prelude::*;

use crate::error::ensure;
use crate::{EngineError, QuantFormat, Result};

/// Bytes of a `[rows, cols]` matrix in `format`, or a shape error naming the block length.
pub(crate) fn quant_bytes(format: QuantFormat, rows: usize, cols: usize) -> Result<usize> {
    format.matrix_bytes(rows, cols).ok_or_else(|| EngineError::Shape {
        op: "weight",
        what: format!(
            "{} rows need a multiple of {} columns, got {cols} (or [{rows}, {cols}] overflows)",
            format.name(),
            format.block_len()
        ),
    })
}

/// Checks that `len` bytes are exactly a `[rows, cols]` matrix of `format` and returns that size.
pub(crate) fn check_quant_len(format: QuantFormat, rows: usize, cols: usize, len: usize) -> Result<usize> {
    let want = quant_bytes(format, rows, cols)?;
    ensure(len == want, "weight", || {
        format!("{len} bytes for a [{rows}, {cols}] {} weight, which takes {want}", format.name())
    })?;
    Ok(want)
}

/// Quantizes the row-major `[rows, cols]` matrix `data` to `format` (rows in parallel on the
/// current rayon pool): NF4 as bitsandbytes, Q8_0/Q4_0/Q4_1 as `gguf.quants` (byte-identical),
/// Q4_K with llama.cpp's reference k-quant search (`afinar_formats::ggml::quantize`).
///
/// Errors when `data` does not hold `rows · cols` values or `cols` is not a whole number of
/// blocks.
pub fn quantize(format: QuantFormat, data: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>> {
    let n = crate::checks::mul("weight", &[rows, cols])?;
    ensure(data.len() == n, "weight", || format!("{} values for a [{rows}, {cols}] weight", data.len()))?;
    let total = quant_bytes(format, rows, cols)?;
    let kernel: fn(&[f32], &mut [u8]) = match format {
        QuantFormat::Nf4 => return Ok(nf4::quantize(data, rows, cols)),
        QuantFormat::Q8_0 => ggml::quantize::quantize_q8_0,
        QuantFormat::Q4_0 => ggml::quantize::quantize_q4_0,
        QuantFormat::Q4_1 => ggml::quantize::quantize_q4_1,
        QuantFormat::Q4_K => ggml::quantize::quantize_q4_k,
    };
    let mut blocks = vec![0u8; total];
    if total > 0 {
        let rb = total / rows;
        blocks.par_chunks_mut(rb).zip(data.par_chunks(cols)).for_each(|(b, x)| kernel(x, b));
    }
    Ok(blocks)
}

/// Dequantizes a `[rows, cols]` matrix of `format` to f32 (rows in parallel on the current rayon
/// pool), bit-exact with the reference dequantizers.
///
/// Errors when `blocks` is not exactly a `[rows, cols]` matrix of `format`.
pub fn dequantize(format: QuantFormat, blocks: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>> {
    let total = check_quant_len(format, rows, cols, blocks.len())?;
    let kernel: fn(&[u8], &mut [f32]) = match format {
        QuantFormat::Nf4 => return Ok(nf4::dequantize(nf4::Nf4Ref::new(blocks, rows, cols))),
        QuantFormat::Q8_0 => ggml::q8::dequantize_q8_0,
        QuantFormat::Q4_0 => ggml::q4::dequantize_q4_0,
        QuantFormat::Q4_1 => ggml::q4::dequantize_q4_1,
        QuantFormat::Q4_K => ggml::k_quants::dequantize_q4_k,
    };
    let mut out = vec![0.0f32; rows * cols];
    if total > 0 {
        let rb = total / rows;
        out.par_chunks_mut(cols).zip(blocks.par_chunks(rb)).for_each(|(o, b)| kernel(b, o));
    }
    Ok(out)
}
