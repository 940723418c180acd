//! Softmax cross-entropy, alone and fused with the output projection (chunked so that the full
//! `[rows, vocab]` logits never exist at once).

use super::float::Real;
use super::matmul::{linear_backward_input, linear_forward, matmul, WeightRef};
use super::quant::QuantRef;
use super::vector;
use rayon::prelude::*;

/// The target value of ignored rows (shared by every backend and the data pipeline).
pub use afinar_formats::IGNORE_INDEX;

/// Loss of one (non-ignored) row, `logsumexp − logit[target]`.
#[inline]
fn row_loss<T: Real>(logits: &[T], target: usize) -> T {
    let m = vector::max(logits);
    let s = vector::exp_sub_sum_ro(logits, m);
    m + s.ln() - logits[target]
}

/// Turns a logits row into `grad_scale · (softmax − onehot)` in place; returns the row's loss.
#[inline]
fn loss_and_grad_in_place<T: Real>(l: &mut [T], target: usize, grad_scale: T) -> T {
    let m = vector::max(l);
    let lt = l[target];
    let s = vector::exp_sub_sum(l, m);
    vector::scale(l, grad_scale / s);
    l[target] -= grad_scale;
    m + s.ln() - lt
}

/// Checks that every target is `-100` or a valid class.
pub fn targets_valid(targets: &[i32], vocab: usize) -> bool {
    targets.iter().all(|&t| t == IGNORE_INDEX || (t >= 0 && (t as usize) < vocab))
}

/// Per-row cross-entropy of `logits[rows, vocab]`; ignored rows (`-100`) get loss 0 and a zero
/// gradient row. When `dlogits` is given it receives `grad_scale · (softmax − onehot)`.
///
/// # Panics
/// When a slice is too short or a target is out of range.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy<T: Real>(
    logits: &[T],
    targets: &[i32],
    losses: &mut [T],
    dlogits: Option<&mut [T]>,
    rows: usize,
    vocab: usize,
    grad_scale: T,
) {
    if rows == 0 {
        return;
    }
    assert!(vocab > 0 && logits.len() >= rows * vocab && targets.len() >= rows);
    assert!(targets_valid(&targets[..rows], vocab));
    let it = logits[..rows * vocab]
        .par_chunks(vocab)
        .zip(targets[..rows].par_iter())
        .zip(losses[..rows].par_iter_mut());
    match dlogits {
        Some(d) => it.zip(d[..rows * vocab].par_chunks_mut(vocab)).for_each(|(((l, &t), loss), g)| {
            if t == IGNORE_INDEX {
                *loss = T::ZERO;
                g.fill(T::ZERO);
            } else {
                g.copy_from_slice(l);
                *loss = loss_and_grad_in_place(g, t as usize, grad_scale);
            }
        }),
        None => it.for_each(|((l, &t), loss)| {
            *loss = if t == IGNORE_INDEX { T::ZERO } else { row_loss(l, t as usize) };
        }),
    }
}

/// Default rows per chunk of [`linear_cross_entropy`] for a vocabulary: 128, fewer when the
/// logits tile would exceed 2²³ elements (32 MiB of f32).
pub fn default_chunk_rows(vocab: usize) -> usize {
    ((1usize << 23) / vocab.max(1)).clamp(8, 128)
}

/// Output projection fused with cross-entropy: `logits = h[rows, dim] · Wᵀ` for `W: [vocab, dim]`,
/// computed `chunk` rows at a time into one reused tile. Returns the sum of losses over
/// non-ignored rows (in f64) and their count. With `dh`, writes `∂(grad_scale · Σ loss)/∂h`;
/// with `dw`, accumulates `∂(grad_scale · Σ loss)/∂W`.
///
/// # Panics
/// When a slice is too short or a target is out of range.
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy<T: Real>(
    h: &[T],
    w: WeightRef<'_, T>,
    targets: &[i32],
    rows: usize,
    vocab: usize,
    dim: usize,
    grad_scale: T,
    mut dh: Option<&mut [T]>,
    mut dw: Option<&mut [T]>,
    chunk: usize,
) -> (f64, usize) {
    assert!(w.len() >= vocab * dim);
    assert!(chunk > 0 && vocab > 0);
    assert!(h.len() >= rows * dim && targets.len() >= rows);
    assert!(targets_valid(&targets[..rows], vocab));
    let want_grad = dh.is_some() || dw.is_some();
    let mut tile = vec![T::ZERO; chunk.min(rows) * vocab];
    let mut total = 0.0f64;
    let mut count = 0usize;
    let mut r0 = 0;
    while r0 < rows {
        let n = chunk.min(rows - r0);
        let hc = &h[r0 * dim..(r0 + n) * dim];
        let tc = &targets[r0..r0 + n];
        let logits = &mut tile[..n * vocab];
        linear_forward(hc, w, logits, n, vocab, dim, false);
        let (s, c) = logits
            .par_chunks_mut(vocab)
            .zip(tc.par_iter())
            .map(|(l, &t)| {
                if t == IGNORE_INDEX {
                    l.fill(T::ZERO);
                    return (0.0, 0);
                }
                let loss = if want_grad {
                    loss_and_grad_in_place(l, t as usize, grad_scale)
                } else {
                    row_loss(l, t as usize)
                };
                (loss.to_f64(), 1usize)
            })
            .collect::<Vec<_>>()
            // Sum in row order: the loss must not depend on how rayon split the rows.
            .into_iter()
            .fold((0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        total += s;
        count += c;
        if want_grad {
            if let Some(dh) = dh.as_deref_mut() {
                linear_backward_input(logits, w, &mut dh[r0 * dim..(r0 + n) * dim], n, vocab, dim, false);
            }
            if let Some(dw) = dw.as_deref_mut() {
                matmul(logits, true, hc, false, dw, vocab, dim, n, T::ONE, T::ONE);
            }
        }
        r0 += n;
    }
    (total, count)
}

/// Vocabulary entries per block of [`linear_log_probs`].
pub const LOG_PROB_VOCAB_CHUNK: usize = 4096;

/// Rows `v0..v1` of a `[vocab, dim]` weight, or `None` when its storage cannot be cut by rows
/// (NF4 keeps its scales apart from the packed values).
fn weight_rows<T>(w: WeightRef<'_, T>, v0: usize, v1: usize, dim: usize) -> Option<WeightRef<'_, T>> {
    match w {
        WeightRef::Dense(d) => Some(WeightRef::Dense(&d[v0 * dim..v1 * dim])),
        WeightRef::Bf16(d) => Some(WeightRef::Bf16(&d[v0 * dim..v1 * dim])),
        WeightRef::Quant(q) => {
            let n = v1 - v0;
            (q.format.matrix_bytes(n, q.cols) == Some(n * q.row_bytes())).then(|| {
                WeightRef::Quant(QuantRef {
                    format: q.format,
                    data: q.rows_bytes(v0, v1),
                    rows: n,
                    cols: q.cols,
                })
            })
        }
    }
}

/// Per-token log-probabilities of `targets` under `softmax(h[rows, dim] · Wᵀ)`, `W: [vocab, dim]`,
/// and their backward, in tiles of `row_chunk` rows × `vocab_chunk` vocabulary entries: the
/// logsumexp of each row is accumulated online over the vocabulary blocks, so neither the full
/// `[rows, vocab]` logits nor one full row block of them exists. Writes `logp[r] = z[r, t_r] −
/// logsumexp(z[r])` into `logps` (0 for ignored rows). With `upstream = ∂L/∂logp` (`[rows]`), a
/// second sweep writes `∂L/∂h` into `dh` and accumulates `∂L/∂W` into `dw`
/// (`∂L/∂z = g (onehot − softmax)`).
///
/// # Panics
/// When a slice is too short or a target is out of range.
#[allow(clippy::too_many_arguments)]
pub fn linear_log_probs<T: Real>(
    h: &[T],
    w: WeightRef<'_, T>,
    targets: &[i32],
    rows: usize,
    vocab: usize,
    dim: usize,
    mut logps: Option<&mut [T]>,
    upstream: Option<&[T]>,
    mut dh: Option<&mut [T]>,
    mut dw: Option<&mut [T]>,
    row_chunk: usize,
    vocab_chunk: usize,
) {
    assert!(w.len() >= vocab * dim && row_chunk > 0 && vocab_chunk > 0 && vocab > 0);
    assert!(h.len() >= rows * dim && targets.len() >= rows);
    assert!(targets_valid(&targets[..rows], vocab));
    assert!(logps.as_deref().is_none_or(|l| l.len() >= rows));
    assert!(upstream.is_none_or(|u| u.len() >= rows));
    // One block of the whole vocabulary when the weight cannot be cut by rows.
    let vb =
        if weight_rows(w, 0, vocab.min(vocab_chunk), dim).is_some() { vocab_chunk.min(vocab) } else { vocab };
    let blocks: Vec<(usize, usize)> = (0..vocab).step_by(vb).map(|v0| (v0, (v0 + vb).min(vocab))).collect();
    let block_weight =
        |v0: usize, v1: usize| if vb == vocab { w } else { weight_rows(w, v0, v1, dim).expect("cut above") };
    let mut tile = vec![T::ZERO; row_chunk.min(rows) * vb];
    let mut lse = vec![T::ZERO; row_chunk.min(rows)];
    let mut r0 = 0;
    while r0 < rows {
        let n = row_chunk.min(rows - r0);
        let hc = &h[r0 * dim..(r0 + n) * dim];
        let tc = &targets[r0..r0 + n];
        // Sweep 1: running max and sum of exponentials per row, and the target's logit.
        let mut run = vec![(T::NEG_INFINITY, T::ZERO, T::ZERO); n];
        for &(v0, v1) in &blocks {
            let bw = v1 - v0;
            let logits = &mut tile[..n * bw];
            linear_forward(hc, block_weight(v0, v1), logits, n, bw, dim, false);
            logits.par_chunks(bw).zip(run.par_iter_mut()).zip(tc.par_iter()).for_each(|((z, st), &t)| {
                if t == IGNORE_INDEX {
                    return;
                }
                let bm = vector::max(z);
                let (m, s, zt) = st;
                if bm > *m {
                    *s = *s * (*m - bm).exp() + vector::exp_sub_sum_ro(z, bm);
                    *m = bm;
                } else {
                    *s += vector::exp_sub_sum_ro(z, *m);
                }
                let t = t as usize;
                if (v0..v1).contains(&t) {
                    *zt = z[t - v0];
                }
            });
        }
        for (i, (&(m, s, zt), &t)) in run.iter().zip(tc).enumerate() {
            lse[i] = m + s.ln();
            if let Some(out) = logps.as_deref_mut() {
                out[r0 + i] = if t == IGNORE_INDEX { T::ZERO } else { zt - lse[i] };
            }
        }
        // Sweep 2: the gradient, block by block.
        if let Some(up) = upstream {
            let up = &up[r0..r0 + n];
            for (b, &(v0, v1)) in blocks.iter().enumerate() {
                let bw = v1 - v0;
                let wb = block_weight(v0, v1);
                let dz = &mut tile[..n * bw];
                linear_forward(hc, wb, dz, n, bw, dim, false);
                dz.par_chunks_mut(bw).zip(tc.par_iter()).zip(up.par_iter().zip(lse.par_iter())).for_each(
                    |((z, &t), (&g, &lse))| {
                        if t == IGNORE_INDEX || g == T::ZERO {
                            z.fill(T::ZERO);
                            return;
                        }
                        for v in z.iter_mut() {
                            *v = -g * (*v - lse).exp();
                        }
                        let t = t as usize;
                        if (v0..v1).contains(&t) {
                            z[t - v0] += g;
                        }
                    },
                );
                if let Some(dh) = dh.as_deref_mut() {
                    linear_backward_input(dz, wb, &mut dh[r0 * dim..(r0 + n) * dim], n, bw, dim, b > 0);
                }
                if let Some(dw) = dw.as_deref_mut() {
                    matmul(dz, true, hc, false, &mut dw[v0 * dim..v1 * dim], bw, dim, n, T::ONE, T::ONE);
                }
            }
        }
        r0 += n;
    }
}
