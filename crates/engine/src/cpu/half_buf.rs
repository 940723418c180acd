//! 16-bit float storage of the CPU backend ([`crate::Backend::Half`]) and its conversions,
//! split over the thread pool for large buffers.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::HalfFormat;

/// A buffer of 16-bit floats.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuHalf {
    /// bfloat16 values.
    Bf16(Vec<bf16>),
    /// IEEE binary16 values.
    F16(Vec<f16>),
}

impl CpuHalf {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            CpuHalf::Bf16(v) => v.len(),
            CpuHalf::F16(v) => v.len(),
        }
    }

    /// Whether the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The storage format.
    pub fn format(&self) -> HalfFormat {
        match self {
            CpuHalf::Bf16(_) => HalfFormat::Bf16,
            CpuHalf::F16(_) => HalfFormat::F16,
        }
    }
}

/// Elements converted per task: large enough that a task's overhead is noise, small enough to
/// spread a layer's activations over the threads.
const CHUNK: usize = 1 << 16;

/// `dst[off..off + src.len()] = round(src)` to nearest even (the caller checked the range).
pub fn narrow(src: &[f32], dst: &mut CpuHalf, off: usize) {
    let end = off + src.len();
    match dst {
        CpuHalf::Bf16(d) => split(src, &mut d[off..end], |s, d| d.convert_from_f32_slice(s)),
        CpuHalf::F16(d) => split(src, &mut d[off..end], |s, d| d.convert_from_f32_slice(s)),
    }
}

/// `dst = src[off..off + dst.len()]` widened to f32 (the caller checked the range).
pub fn widen(src: &CpuHalf, off: usize, dst: &mut [f32]) {
    let end = off + dst.len();
    match src {
        CpuHalf::Bf16(s) => split(&s[off..end], dst, |s, d| s.convert_to_f32_slice(d)),
        CpuHalf::F16(s) => split(&s[off..end], dst, |s, d| s.convert_to_f32_slice(d)),
    }
}

/// Runs `f` on matching chunks of `src` and `dst` (same length) in parallel.
fn split<S: Sync, D: Send>(src: &[S], dst: &mut [D], f: impl Fn(&[S], &mut [D]) + Sync) {
    if src.len() <= CHUNK {
        f(src, dst);
    } else {
        src.par_chunks(CHUNK).zip(dst.par_chunks_mut(CHUNK)).for_each(|(s, d)| f(s, d));
    }
}
