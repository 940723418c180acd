//! Knowledge distillation head: the student's and the teacher's output projections fused with a
//! divergence between their softmaxes and the student's cross-entropy, chunked by rows like
//! [`super::loss::linear_cross_entropy`] so that only two `[chunk, vocab]` tiles of logits
//! exist at once.
//!
//! Per kept row, with `zs = s / T`, `zt = t / T`, `ls = log_softmax(zs)`, `lt = log_softmax(zt)`,
//! `pS = e^ls`, `pT = e^lt`:
//! - forward KL (torchtune's `ForwardKLLoss`): `kd = −Σ pT·ls`, `∂kd/∂zs = pS − pT`;
//! - reverse KL: `kd = Σ pS·(ls − lt)`, `∂kd/∂zs = pS ∘ (g − Σ pS·g)` with `g = ls − lt`;
//! - JSD (β = ½): `lm = log(½pS + ½pT)`, `kd = ½Σ pT·(lt − lm) + ½Σ pS·(ls − lm)`,
//!   `∂kd/∂zs = pS ∘ (g − Σ pS·g)` with `g = ½(ls − lm)` (the `pT` term's dependence on `pS`
//!   through `M` cancels against the `pS` term's);
//!
//! and `∂kd/∂s = ∂kd/∂zs / T`. The cross-entropy `ce = logsumexp(s) − s[target]` is on the
//! untempered logits, with gradient `softmax(s) − onehot`.

use super::float::Real;
use super::loss::{targets_valid, IGNORE_INDEX};
use super::matmul::{linear_backward_input, linear_forward, matmul, WeightRef};
use super::vector;
use crate::{DistillSpec, DistillSums, Divergence};
use rayon::prelude::*;

/// Default rows per chunk of [`linear_distill`]: half of
/// [`super::loss::default_chunk_rows`], as two tiles (student and teacher) are kept.
pub fn default_chunk_rows(vocab: usize) -> usize {
    (super::loss::default_chunk_rows(vocab) / 2).max(8)
}

/// `log Σ e^x` of a row.
#[inline]
fn logsumexp<T: Real>(x: &[T]) -> T {
    let m = vector::max(x);
    m + vector::exp_sub_sum_ro(x, m).ln()
}

/// `log(e^a + e^b)` for finite `a`, `b`.
#[inline]
fn log_add_exp<T: Real>(a: T, b: T) -> T {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (T::ONE + (lo - hi).exp()).ln()
}

/// The scalars of one call, in the compute type.
#[derive(Clone, Copy)]
struct RowSpec<T> {
    divergence: Divergence,
    /// `1 / T`, and whether `T` is 1 (then the tempered and raw softmaxes coincide).
    inv_t: T,
    unit_t: bool,
    kd_scale: T,
    ce_scale: T,
}

/// One kept row: `s` holds the student's logits, `t` the teacher's (both overwritten). Returns
/// `(kd, ce)`; with `grad`, leaves `∂(kd_scale · kd + ce_scale · ce)/∂s` in `s`.
fn row<T: Real>(s: &mut [T], t: &mut [T], target: usize, p: RowSpec<T>, grad: bool) -> (T, T) {
    let lse_raw = logsumexp(s);
    let ce = lse_raw - s[target];
    if !p.unit_t {
        vector::scale(s, p.inv_t);
        vector::scale(t, p.inv_t);
    }
    let lse_s = if p.unit_t { lse_raw } else { logsumexp(s) };
    let lse_t = logsumexp(t);
    let half = T::from_f64(0.5);
    let ln_half = T::from_f64(0.5f64.ln());
    // First pass: the divergence, and for the reverse KL and JSD the per-logit `g` (kept in `t`,
    // which is not needed afterwards) and its mean under pS.
    let mut kd = T::ZERO;
    let mut g_mean = T::ZERO;
    match p.divergence {
        Divergence::ForwardKl => {
            for (&zs, &zt) in s.iter().zip(t.iter()) {
                kd -= (zt - lse_t).exp() * (zs - lse_s);
            }
        }
        Divergence::ReverseKl => {
            for (&zs, zt) in s.iter().zip(t.iter_mut()) {
                let ls = zs - lse_s;
                let g = ls - (*zt - lse_t);
                kd += ls.exp() * g;
                *zt = g;
            }
            g_mean = kd;
        }
        Divergence::Jsd => {
            for (&zs, zt) in s.iter().zip(t.iter_mut()) {
                let (ls, lt) = (zs - lse_s, *zt - lse_t);
                let (ps, pt) = (ls.exp(), lt.exp());
                let lm = log_add_exp(ls, lt) + ln_half;
                kd += half * (pt * (lt - lm) + ps * (ls - lm));
                let g = half * (ls - lm);
                g_mean += ps * g;
                *zt = g;
            }
        }
    }
    if grad {
        let kd_scale = p.kd_scale * p.inv_t;
        let temp = T::ONE / p.inv_t;
        let with_ce = p.ce_scale != T::ZERO;
        for (zs, &zt) in s.iter_mut().zip(t.iter()) {
            let ps = (*zs - lse_s).exp();
            let dz = match p.divergence {
                Divergence::ForwardKl => ps - (zt - lse_t).exp(),
                Divergence::ReverseKl | Divergence::Jsd => ps * (zt - g_mean),
            };
            let mut d = kd_scale * dz;
            if with_ce {
                let q = if p.unit_t { ps } else { (*zs * temp - lse_raw).exp() };
                d += p.ce_scale * q;
            }
            *zs = d;
        }
        if with_ce {
            s[target] -= p.ce_scale;
        }
    }
    (kd, ce)
}

/// The fused distillation head (see [`crate::Backend::linear_distill`]): student logits
/// `hs[rows, dim] · Wsᵀ` and teacher logits `ht[rows, dim_t] · Wtᵀ`, both `[vocab, ·]`, computed
/// `chunk` rows at a time into two reused tiles. Returns the sums over rows whose target is
/// not -100 (in f64, in row order). With `dh`, writes `∂(kd_grad_scale · Σ kd + ce_grad_scale ·
/// Σ ce)/∂hs`; with `dw`, accumulates that gradient with respect to `Ws`.
///
/// # Panics
/// When a slice is too short, a target is out of range or `temperature` is not positive.
#[allow(clippy::too_many_arguments)]
pub fn linear_distill<T: Real>(
    hs: &[T],
    ws: WeightRef<'_, T>,
    ht: &[T],
    wt: WeightRef<'_, T>,
    targets: &[i32],
    rows: usize,
    vocab: usize,
    dim: usize,
    dim_t: usize,
    spec: &DistillSpec,
    mut dh: Option<&mut [T]>,
    mut dw: Option<&mut [T]>,
    chunk: usize,
) -> DistillSums {
    assert!(ws.len() >= vocab * dim && wt.len() >= vocab * dim_t);
    assert!(chunk > 0 && vocab > 0 && spec.temperature > 0.0);
    assert!(hs.len() >= rows * dim && ht.len() >= rows * dim_t && targets.len() >= rows);
    assert!(targets_valid(&targets[..rows], vocab));
    let p = RowSpec {
        divergence: spec.divergence,
        inv_t: T::ONE / T::from_f32(spec.temperature),
        unit_t: spec.temperature == 1.0,
        kd_scale: T::from_f32(spec.kd_grad_scale),
        ce_scale: T::from_f32(spec.ce_grad_scale),
    };
    let grad = dh.is_some() || dw.is_some();
    let tile_rows = chunk.min(rows);
    let mut student = vec![T::ZERO; tile_rows * vocab];
    let mut teacher = vec![T::ZERO; tile_rows * vocab];
    let mut sums = DistillSums::default();
    let mut r0 = 0;
    while r0 < rows {
        let n = chunk.min(rows - r0);
        let hc = &hs[r0 * dim..(r0 + n) * dim];
        let tc = &targets[r0..r0 + n];
        let sl = &mut student[..n * vocab];
        let tl = &mut teacher[..n * vocab];
        linear_forward(hc, ws, sl, n, vocab, dim, false);
        linear_forward(&ht[r0 * dim_t..(r0 + n) * dim_t], wt, tl, n, vocab, dim_t, false);
        let per_row: Vec<(f64, f64, usize)> = sl
            .par_chunks_mut(vocab)
            .zip(tl.par_chunks_mut(vocab))
            .zip(tc.par_iter())
            .map(|((s, t), &y)| {
                if y == IGNORE_INDEX {
                    s.fill(T::ZERO);
                    return (0.0, 0.0, 0);
                }
                let (kd, ce) = row(s, t, y as usize, p, grad);
                (kd.to_f64(), ce.to_f64(), 1)
            })
            .collect();
        // Summed in row order: the result must not depend on how rayon split the rows.
        for (kd, ce, c) in per_row {
            sums.kd += kd;
            sums.ce += ce;
            sums.count += c;
        }
        if grad {
            if let Some(dh) = dh.as_deref_mut() {
                linear_backward_input(sl, ws, &mut dh[r0 * dim..(r0 + n) * dim], n, vocab, dim, false);
            }
            if let Some(dw) = dw.as_deref_mut() {
                matmul(sl, true, hc, false, dw, vocab, dim, n, T::ONE, T::ONE);
            }
        }
        r0 += n;
    }
    sums
}
