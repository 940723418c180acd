//! Products on NF4 weights (the format, its quantizer and scalar dequantizer are in
//! [`afinar_formats::nf4`], re-exported here).
//!
//! Many rows and the input gradient go through the shared tile loop: NF4 rows are dequantized a
//! tile at a time ([`dequantize_rows`]) and multiplied with `gemm`, never a whole layer at once.
//! Decode ([`linear_gemv`]) dequantizes one weight row at a time into a small buffer and takes
//! f32 dot products with the activation rows.

use rayon::prelude::*;

pub use afinar_formats::nf4::*;

use super::float::Real;
use super::quant::QuantRef;
use crate::QuantFormat;

/// The parts of an NF4 [`QuantRef`].
///
/// # Panics
/// When `q` is not NF4 or its data does not hold its shape.
pub fn from_quant(q: QuantRef<'_>) -> Nf4Ref<'_> {
    assert_eq!(q.format, QuantFormat::Nf4, "not an NF4 matrix");
    Nf4Ref::new(q.data, q.rows, q.cols)
}

// ---- dequantization ---------------------------------------------------------------------------

/// Dequantizes whole rows of `w` starting at row `r0` into `dst` (`dst.len() / cols` rows,
/// converted to `T`), in parallel over chunks of rows when there are many.
///
/// # Panics
/// When the rows are out of range.
pub fn dequantize_rows<T: Real>(w: Nf4Ref<'_>, r0: usize, dst: &mut [T]) {
    let cols = w.cols;
    if cols == 0 {
        return;
    }
    let n = dst.len() / cols;
    assert!(r0 + n <= w.rows, "rows {r0}..{} out of {}", r0 + n, w.rows);
    const PAR_ROWS: usize = 16;
    let convert = |first: usize, d: &mut [T]| {
        for (i, row) in d.chunks_exact_mut(cols).enumerate() {
            dequantize_row(&w, first + i, row);
        }
    };
    if n > PAR_ROWS {
        dst[..n * cols]
            .par_chunks_mut(PAR_ROWS * cols)
            .enumerate()
            .for_each(|(c, d)| convert(r0 + c * PAR_ROWS, d));
    } else {
        convert(r0, &mut dst[..n * cols]);
    }
}

/// Row `r` of `w` into `out` (`cols` values).
#[inline]
fn dequantize_row<T: Real>(w: &Nf4Ref<'_>, r: usize, out: &mut [T]) {
    w.dequantize_row(r, out, T::from_f32);
}

// ---- decode GEMV ------------------------------------------------------------------------------

/// Outputs (weight rows) per parallel task of the GEMV.
const TASK_OUTPUTS: usize = 32;

/// `y[rows, out] (+)= x[rows, inp] · Wᵀ` for an NF4 `W: [out, inp]` and few `rows` (decode):
/// each weight row is dequantized once into a buffer of `inp` floats and dotted with every
/// activation row in f32. Every output is computed by one task in a fixed order, so the result
/// does not depend on the number of threads. When `accumulate` is false the old contents of `y`
/// are not read.
///
/// # Panics
/// When a slice is shorter than its matrix.
pub fn linear_gemv(x: &[f32], w: Nf4Ref<'_>, y: &mut [f32], rows: usize, accumulate: bool) {
    let (out, inp) = (w.rows, w.cols);
    assert!(x.len() >= rows * inp && y.len() >= rows * out);
    if rows == 0 || out == 0 {
        return;
    }
    // Results per task, [task outputs, rows], written back in order afterwards.
    let tasks = out.div_ceil(TASK_OUTPUTS);
    let results: Vec<Vec<f32>> = (0..tasks)
        .into_par_iter()
        .map(|t| {
            let o0 = t * TASK_OUTPUTS;
            let o1 = (o0 + TASK_OUTPUTS).min(out);
            let mut row = vec![0.0f32; inp];
            let mut res = vec![0.0f32; (o1 - o0) * rows];
            for o in o0..o1 {
                dequantize_row(&w, o, &mut row);
                for r in 0..rows {
                    res[(o - o0) * rows + r] = dot(&row, &x[r * inp..(r + 1) * inp]);
                }
            }
            res
        })
        .collect();
    for (t, res) in results.iter().enumerate() {
        let o0 = t * TASK_OUTPUTS;
        for (i, chunk) in res.chunks_exact(rows).enumerate() {
            for (r, &v) in chunk.iter().enumerate() {
                let yv = &mut y[r * out + o0 + i];
                *yv = if accumulate { *yv + v } else { v };
            }
        }
    }
}

/// f32 dot product with 16 partial sums (vectorisable).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..16 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}
