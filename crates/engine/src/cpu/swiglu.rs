//! SwiGLU gate `silu(gate) · up` and its backward.

use super::float::Real;
use super::vector::multiversion;
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 4096;

#[inline(always)]
fn sigmoid<T: Real>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp_fast())
}

multiversion! {
    /// One chunk of [`swiglu_forward`].
    pub fn forward_chunk<T: Real>(o: &mut [T], g: &[T], u: &[T]) -> () {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g * sigmoid(g) * u;
        }
    }
}

multiversion! {
    /// One chunk of [`swiglu_backward`].
    pub fn backward_chunk<T: Real>(dg: &mut [T], du: &mut [T], d: &[T], g: &[T], u: &[T]) -> () {
        let n = dg.len().min(du.len()).min(d.len()).min(g.len()).min(u.len());
        for i in 0..n {
            let s = sigmoid(g[i]);
            du[i] = d[i] * g[i] * s;
            dg[i] = d[i] * u[i] * s * (T::ONE + g[i] * (T::ONE - s));
        }
    }
}

/// `out = silu(gate) · up = gate · σ(gate) · up` over `n` elements.
///
/// # Panics
/// When a slice is shorter than `n`.
pub fn swiglu_forward<T: Real>(gate: &[T], up: &[T], out: &mut [T], n: usize) {
    out[..n]
        .par_chunks_mut(CHUNK)
        .zip(gate[..n].par_chunks(CHUNK))
        .zip(up[..n].par_chunks(CHUNK))
        .for_each(|((o, g), u)| forward_chunk(o, g, u));
}

/// Backward of [`swiglu_forward`]: `dgate = dout · up · σ(g)(1 + g(1 − σ(g)))`,
/// `dup = dout · silu(g)` (both overwritten).
///
/// # Panics
/// When a slice is shorter than `n`.
pub fn swiglu_backward<T: Real>(dout: &[T], gate: &[T], up: &[T], dgate: &mut [T], dup: &mut [T], n: usize) {
    dgate[..n]
        .par_chunks_mut(CHUNK)
        .zip(dup[..n].par_chunks_mut(CHUNK))
        .zip(dout[..n].par_chunks(CHUNK))
        .zip(gate[..n].par_chunks(CHUNK).zip(up[..n].par_chunks(CHUNK)))
        .for_each(|(((dg, du), d), (g, u))| backward_chunk(dg, du, d, g, u));
}
