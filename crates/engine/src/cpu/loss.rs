//! Softmax cross-entropy, alone and fused with the output projection (chunked so that the full
//! `[rows, vocab]` logits never exist at once).

use super::float::Real;
use super::matmul::{linear_backward_input, linear_forward, matmul, WeightRef};
use super::vector;
use rayon::prelude::*;

/// The target value of ignored rows.
pub const IGNORE_INDEX: i32 = -100;

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

/// How [`linear_cross_entropy_rows`] scales each row's gradient `softmax − onehot`.
#[derive(Debug, Clone, Copy)]
pub enum RowScale<'a, T> {
    /// No gradient: only the losses.
    None,
    /// The same factor for every row (`∂(s · Σ loss)`).
    Uniform(T),
    /// One factor per row (`∂(Σ s_r · loss_r)`), `[rows]`.
    PerRow(&'a [T]),
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
    dh: Option<&mut [T]>,
    dw: Option<&mut [T]>,
    chunk: usize,
) -> (f64, usize) {
    let scale = if dh.is_some() || dw.is_some() { RowScale::Uniform(grad_scale) } else { RowScale::None };
    linear_cross_entropy_rows(h, w, targets, rows, vocab, dim, scale, None, dh, dw, chunk)
}

/// The general form of [`linear_cross_entropy`]: per-row losses go to `losses` when given (0 for
/// ignored rows), and the gradient of `Σ s_r · loss_r` (with `s_r` from `scale`) is written to
/// `dh` / accumulated into `dw`. Per-token log-probabilities are `−loss`, and their backward is
/// this with `s_r = −∂L/∂logp_r`.
///
/// # Panics
/// When a slice is too short, a target is out of range, or `scale` asks for a gradient and
/// neither `dh` nor `dw` is given (or the reverse).
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy_rows<T: Real>(
    h: &[T],
    w: WeightRef<'_, T>,
    targets: &[i32],
    rows: usize,
    vocab: usize,
    dim: usize,
    scale: RowScale<'_, T>,
    mut losses: Option<&mut [T]>,
    mut dh: Option<&mut [T]>,
    mut dw: Option<&mut [T]>,
    chunk: usize,
) -> (f64, usize) {
    assert!(w.len() >= vocab * dim);
    assert!(chunk > 0 && vocab > 0);
    assert!(h.len() >= rows * dim && targets.len() >= rows);
    assert!(targets_valid(&targets[..rows], vocab));
    assert!(losses.as_deref().is_none_or(|l| l.len() >= rows));
    if let RowScale::PerRow(s) = scale {
        assert!(s.len() >= rows);
    }
    let want_grad = !matches!(scale, RowScale::None);
    assert_eq!(want_grad, dh.is_some() || dw.is_some());
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
        let row_losses = logits
            .par_chunks_mut(vocab)
            .zip(tc.par_iter())
            .enumerate()
            .map(|(i, (l, &t))| {
                if t == IGNORE_INDEX {
                    l.fill(T::ZERO);
                    return None;
                }
                Some(match scale {
                    RowScale::None => row_loss(l, t as usize),
                    RowScale::Uniform(s) => loss_and_grad_in_place(l, t as usize, s),
                    RowScale::PerRow(s) => loss_and_grad_in_place(l, t as usize, s[r0 + i]),
                })
            })
            .collect::<Vec<_>>();
        // Sum in row order: the loss must not depend on how rayon split the rows.
        for (i, loss) in row_losses.into_iter().enumerate() {
            if let Some(out) = losses.as_deref_mut() {
                out[r0 + i] = loss.unwrap_or(T::ZERO);
            }
            if let Some(loss) = loss {
                total += loss.to_f64();
                count += 1;
            }
        }
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
