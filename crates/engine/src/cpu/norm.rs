//! RMSNorm forward and backward.

use super::float::{dot, Real};
use rayon::prelude::*;

/// Rows per parallel task in the weight-gradient reduction.
const DW_ROWS_PER_TASK: usize = 64;

/// `out[r] = x[r] · rstd[r] · w` with `rstd[r] = 1 / sqrt(mean(x[r]²) + eps)`, over `rows` rows
/// of length `dim`.
///
/// # Panics
/// When a slice is too short.
pub fn rmsnorm_forward<T: Real>(
    x: &[T],
    w: &[T],
    out: &mut [T],
    rstd: &mut [T],
    rows: usize,
    dim: usize,
    eps: T,
) {
    if rows == 0 || dim == 0 {
        return;
    }
    assert!(x.len() >= rows * dim && out.len() >= rows * dim && w.len() >= dim);
    let w = &w[..dim];
    out[..rows * dim]
        .par_chunks_mut(dim)
        .zip(rstd[..rows].par_iter_mut())
        .zip(x[..rows * dim].par_chunks(dim))
        .for_each(|((o, rs), xr)| {
            let ms = dot(xr, xr) / T::from_f64(dim as f64);
            let r = T::ONE / (ms + eps).sqrt();
            *rs = r;
            for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(w) {
                *o = xv * r * wv;
            }
        });
}

/// Backward of [`rmsnorm_forward`]: `dx (+)= ∂L/∂x` (adds when `accumulate`), and
/// `dw += ∂L/∂w` when given.
///
/// With `g = dout`: `dx = rstd · w∘g − rstd³/dim · x · Σ(w∘g∘x)`, `dw = Σ_rows g∘x · rstd`.
///
/// # Panics
/// When a slice is too short.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward<T: Real>(
    dout: &[T],
    x: &[T],
    w: &[T],
    rstd: &[T],
    dx: &mut [T],
    dw: Option<&mut [T]>,
    rows: usize,
    dim: usize,
    accumulate: bool,
) {
    if rows == 0 || dim == 0 {
        return;
    }
    assert!(dout.len() >= rows * dim && x.len() >= rows * dim && dx.len() >= rows * dim);
    let w = &w[..dim];
    let inv_dim = T::ONE / T::from_f64(dim as f64);
    dx[..rows * dim]
        .par_chunks_mut(dim)
        .zip(dout[..rows * dim].par_chunks(dim))
        .zip(x[..rows * dim].par_chunks(dim))
        .zip(rstd[..rows].par_iter())
        .for_each_init(
            || vec![T::ZERO; dim],
            |wg, (((dxr, g), xr), &r)| {
                for ((a, &gv), &wv) in wg.iter_mut().zip(g).zip(w) {
                    *a = gv * wv;
                }
                let c = dot(wg, xr) * r * r * r * inv_dim;
                if accumulate {
                    for ((d, &a), &xv) in dxr.iter_mut().zip(wg.iter()).zip(xr) {
                        *d += r * a - c * xv;
                    }
                } else {
                    for ((d, &a), &xv) in dxr.iter_mut().zip(wg.iter()).zip(xr) {
                        *d = r * a - c * xv;
                    }
                }
            },
        );
    if let Some(dw) = dw {
        let dw = &mut dw[..dim];
        let partial = (0..rows.div_ceil(DW_ROWS_PER_TASK))
            .into_par_iter()
            .map(|t| {
                let mut acc = vec![T::ZERO; dim];
                for r in t * DW_ROWS_PER_TASK..((t + 1) * DW_ROWS_PER_TASK).min(rows) {
                    let rs = rstd[r];
                    let (g, xr) = (&dout[r * dim..(r + 1) * dim], &x[r * dim..(r + 1) * dim]);
                    for ((a, &gv), &xv) in acc.iter_mut().zip(g).zip(xr) {
                        *a += gv * xv * rs;
                    }
                }
                acc
            })
            .reduce_with(|mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            });
        if let Some(p) = partial {
            for (d, v) in dw.iter_mut().zip(p) {
                *d += v;
            }
        }
    }
}
