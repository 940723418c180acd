//! Matrix products: the general `gemm`, and the linear layer `y = x Wᵀ` with its input and weight
//! gradients, for dense weights and for bf16 or block-quantized weights converted tile by tile.

use super::float::Real;
use super::quant::{self, QuantRef};
use gemm::Parallelism;
use half::bf16;
use rayon::prelude::*;

/// Elements of one converted bf16 weight tile (1 MiB of f32): big enough for `gemm` to run at
/// full speed, small enough to stay in L2/L3.
pub const BF16_TILE_ELEMS: usize = 1 << 18;

/// A borrowed weight matrix `[rows, cols]`, row-major.
#[derive(Clone, Copy, Debug)]
pub enum WeightRef<'a, T> {
    /// Stored in the compute type.
    Dense(&'a [T]),
    /// Stored as bf16, widened tile by tile.
    Bf16(&'a [bf16]),
    /// GGUF blocks, dequantized tile by tile.
    Quant(QuantRef<'a>),
}

impl<T> WeightRef<'_, T> {
    /// Number of stored elements.
    pub fn len(&self) -> usize {
        match self {
            WeightRef::Dense(d) => d.len(),
            WeightRef::Bf16(d) => d.len(),
            WeightRef::Quant(q) => q.rows * q.cols,
        }
    }

    /// Whether the weight holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Widens bf16 values into `dst` (exact: bf16 is the top half of an f32).
#[inline]
pub fn bf16_to<T: Real>(src: &[bf16], dst: &mut [T]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = T::from_f32(f32::from_bits((s.to_bits() as u32) << 16));
    }
}

/// Strided product `dst = beta · dst + alpha · A · B` with `A: [m, k]`, `B: [k, n]` given by
/// pointers and (row, column) strides in elements; `dst` is row-major with row stride `dst_rs`.
/// When `beta == 0` the old contents of `dst` are not read (NaNs there do not leak).
///
/// # Safety
/// Every addressed element must be in bounds, and `dst` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn gemm_raw<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    a: *const T,
    a_rs: usize,
    a_cs: usize,
    b: *const T,
    b_rs: usize,
    b_cs: usize,
    alpha: T,
    beta: T,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let par = if parallel { Parallelism::Rayon(0) } else { Parallelism::None };
    // The gemm crate computes dst := alpha·dst + beta·lhs·rhs (names swapped relative to BLAS).
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        beta != T::ZERO,
        a,
        a_cs as isize,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        beta,
        alpha,
        false,
        false,
        false,
        par,
    );
}

/// `c[m, n] = alpha · op(a) · op(b) + beta · c`, `op(a)`: `[m, k]` (stored `[k, m]` when `ta`),
/// `op(b)`: `[k, n]` (stored `[n, k]` when `tb`). Runs on the current rayon pool.
///
/// # Panics
/// When a slice is shorter than its matrix.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Real>(
    a: &[T],
    ta: bool,
    b: &[T],
    tb: bool,
    c: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    beta: T,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    let (a_rs, a_cs) = if ta { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if tb { (1, k) } else { (n, 1) };
    // SAFETY: sizes checked above; `c` is a distinct mutable borrow.
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            c.as_mut_ptr(),
            n,
            a.as_ptr(),
            a_rs,
            a_cs,
            b.as_ptr(),
            b_rs,
            b_cs,
            alpha,
            beta,
            true,
        )
    }
}

/// Rows of a `[rows, cols]` bf16 weight per converted tile.
fn tile_rows(cols: usize) -> usize {
    (BF16_TILE_ELEMS / cols.max(1)).max(16)
}

/// Converts rows `r0..r0 + tile.len() / cols` of a bf16 or quantized matrix in parallel.
///
/// # Panics
/// For a dense weight (which needs no conversion).
fn convert_tile<T: Real>(w: WeightRef<'_, T>, r0: usize, tile: &mut [T], cols: usize) {
    match w {
        WeightRef::Bf16(w) => {
            let src = &w[r0 * cols..r0 * cols + tile.len()];
            tile.par_chunks_mut(cols.max(1) * 64)
                .zip(src.par_chunks(cols.max(1) * 64))
                .for_each(|(d, s)| bf16_to(s, d));
        }
        WeightRef::Quant(q) => quant::dequantize_rows(q, r0, tile),
        WeightRef::Dense(_) => unreachable!("dense weights are not converted"),
    }
}

/// Linear layer `y[rows, out] (+)= x[rows, inp] · Wᵀ`, `W: [out, inp]`.
///
/// # Panics
/// When a slice is shorter than its matrix.
pub fn linear_forward<T: Real>(
    x: &[T],
    w: WeightRef<'_, T>,
    y: &mut [T],
    rows: usize,
    out: usize,
    inp: usize,
    accumulate: bool,
) {
    assert!(x.len() >= rows * inp && y.len() >= rows * out && w.len() >= out * inp);
    let beta = if accumulate { T::ONE } else { T::ZERO };
    if rows == 0 {
        return;
    }
    match w {
        WeightRef::Dense(w) => matmul(x, false, w, true, y, rows, out, inp, T::ONE, beta),
        WeightRef::Bf16(_) | WeightRef::Quant(_) => {
            for_each_row_tile(w, out, inp, |o0, ob, tile| {
                // SAFETY: y[r, o0..o0+ob] for r < rows is in bounds (checked above); the tile
                // holds ob × inp elements.
                unsafe {
                    gemm_raw(
                        rows,
                        ob,
                        inp,
                        y.as_mut_ptr().add(o0),
                        out,
                        x.as_ptr(),
                        inp,
                        1,
                        tile.as_ptr(),
                        1,
                        inp,
                        T::ONE,
                        beta,
                        true,
                    )
                }
            });
        }
    }
}

/// Input gradient of [`linear_forward`]: `dx[rows, inp] (+)= dy[rows, out] · W`.
///
/// # Panics
/// When a slice is shorter than its matrix.
pub fn linear_backward_input<T: Real>(
    dy: &[T],
    w: WeightRef<'_, T>,
    dx: &mut [T],
    rows: usize,
    out: usize,
    inp: usize,
    accumulate: bool,
) {
    assert!(dy.len() >= rows * out && dx.len() >= rows * inp && w.len() >= out * inp);
    let beta = if accumulate { T::ONE } else { T::ZERO };
    if rows == 0 {
        return;
    }
    match w {
        WeightRef::Dense(w) => matmul(dy, false, w, false, dx, rows, inp, out, T::ONE, beta),
        WeightRef::Bf16(_) | WeightRef::Quant(_) => {
            if out == 0 {
                if !accumulate {
                    dx[..rows * inp].fill(T::ZERO);
                }
                return;
            }
            for_each_row_tile(w, out, inp, |o0, ob, tile| {
                let b = if o0 == 0 { beta } else { T::ONE };
                // SAFETY: dy[r, o0..o0+ob] is in bounds (checked above); the tile holds ob × inp.
                unsafe {
                    gemm_raw(
                        rows,
                        inp,
                        ob,
                        dx.as_mut_ptr(),
                        inp,
                        dy.as_ptr().add(o0),
                        out,
                        1,
                        tile.as_ptr(),
                        inp,
                        1,
                        T::ONE,
                        b,
                        true,
                    )
                }
            });
        }
    }
}

/// Calls `f(o0, ob, tile)` for consecutive blocks of rows `o0..o0 + ob` of a stored (bf16 or
/// quantized) weight, each converted to `T` into one reused `ob × inp` tile: products with such
/// weights never hold a full-precision copy of the whole matrix.
fn for_each_row_tile<T: Real>(
    w: WeightRef<'_, T>,
    out: usize,
    inp: usize,
    mut f: impl FnMut(usize, usize, &[T]),
) {
    let tr = tile_rows(inp).min(out);
    let mut tile = vec![T::ZERO; tr * inp];
    let mut o0 = 0;
    while o0 < out {
        let ob = tr.min(out - o0);
        convert_tile(w, o0, &mut tile[..ob * inp], inp);
        f(o0, ob, &tile[..ob * inp]);
        o0 += ob;
    }
}

/// Weight gradient of [`linear_forward`]: `dw[out, inp] (+)= dy[rows, out]ᵀ · x[rows, inp]`
/// (summed into `dw` with `accumulate`, else overwriting it without reading it).
///
/// # Panics
/// When a slice is shorter than its matrix.
pub fn linear_backward_weight<T: Real>(
    dy: &[T],
    x: &[T],
    dw: &mut [T],
    rows: usize,
    out: usize,
    inp: usize,
    accumulate: bool,
) {
    let beta = if accumulate { T::ONE } else { T::ZERO };
    matmul(dy, true, x, false, dw, out, inp, rows, T::ONE, beta);
}
