//! Rotary position embedding (Hugging Face half rotation), applied in place.

use super::float::Real;
use rayon::prelude::*;

/// Rotates `x[tokens, heads, head_dim]` in place: for `i < head_dim/2` the pair
/// `(x[i], x[i + head_dim/2])` turns by the angle `positions[token] · inv_freq[i]` (negated when
/// `inverse`, which is the backward of the forward rotation). The angle is the product of the
/// position and the frequency rounded to `T`, as PyTorch computes it in f32.
///
/// # Panics
/// When a slice is too short or `head_dim` is odd.
pub fn rope<T: Real>(
    x: &mut [T],
    positions: &[u32],
    inv_freq: &[f32],
    tokens: usize,
    heads: usize,
    head_dim: usize,
    inverse: bool,
) {
    assert!(head_dim.is_multiple_of(2));
    let half = head_dim / 2;
    let row = heads * head_dim;
    if tokens == 0 || row == 0 {
        return;
    }
    assert!(x.len() >= tokens * row && positions.len() >= tokens && inv_freq.len() >= half);
    x[..tokens * row].par_chunks_mut(row).zip(positions[..tokens].par_iter()).for_each_init(
        || (vec![T::ZERO; half], vec![T::ZERO; half]),
        |(cos, sin), (xt, &p)| {
            let p = T::from_f64(p as f64);
            for i in 0..half {
                let a = p * T::from_f32(inv_freq[i]);
                cos[i] = a.cos();
                sin[i] = if inverse { -a.sin() } else { a.sin() };
            }
            for xh in xt.chunks_exact_mut(head_dim) {
                let (x1, x2) = xh.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    x1[i] = a * cos[i] - b * sin[i];
                    x2[i] = b * cos[i] + a * sin[i];
                }
            }
        },
    );
}
