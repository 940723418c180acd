//! Elementwise kernels: residual adds and scaling.

use super::float::Real;
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 16384;

/// `y[..n] += x[..n]`.
///
/// # Panics
/// When a slice is shorter than `n`.
pub fn add_assign<T: Real>(y: &mut [T], x: &[T], n: usize) {
    y[..n].par_chunks_mut(CHUNK).zip(x[..n].par_chunks(CHUNK)).for_each(|(y, x)| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y += x;
        }
    });
}

/// `y[..n] *= s`.
///
/// # Panics
/// When `y` is shorter than `n`.
pub fn scale<T: Real>(y: &mut [T], n: usize, s: T) {
    y[..n].par_chunks_mut(CHUNK).for_each(|y| {
        for v in y {
            *v *= s;
        }
    });
}
