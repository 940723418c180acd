//! The small float trait the CPU kernels are generic over: `f32` for the backend, `f64` for the
//! finite-difference tests.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

/// A real floating-point type the kernels run in (`f32` or `f64`); both are supported by the
/// `gemm` crate, which the matrix products go through.
pub trait Real:
    Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialEq
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// −∞ (masked attention scores, empty maxima).
    const NEG_INFINITY: Self;
    /// Rounds an `f64`.
    fn from_f64(x: f64) -> Self;
    /// Widens (or keeps) an `f32`.
    fn from_f32(x: f32) -> Self;
    /// Widens to `f64`.
    fn to_f64(self) -> f64;
    /// `e^self`.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Cosine.
    fn cos(self) -> Self;
    /// Sine.
    fn sin(self) -> Self;
    /// The larger of two values (NaN-ignoring like `f32::max`).
    fn max(self, other: Self) -> Self;
    /// `e^self`, vectorisable: for `f32` a polynomial accurate to about 2 ulp on
    /// `[-87.3, 88]` that gives 0 below (including for −∞) and `e^88` above; for `f64` the exact
    /// `exp`. Used for softmax terms (arguments ≤ 0) and sigmoids.
    fn exp_fast(self) -> Self;
}

macro_rules! impl_real {
    ($t:ty, $exp_fast:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn from_f32(x: f32) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            #[inline(always)]
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline(always)]
            fn exp_fast(self) -> Self {
                $exp_fast(self)
            }
        }
    };
}

impl_real!(f32, exp_f32);
impl_real!(f64, f64::exp);

/// Branch-free `e^x` for `x <= 88` (Cody–Waite range reduction and a degree-6 polynomial on
/// `[-ln2/2, ln2/2]`); results below `e^-87.3` (including `x = −∞`) are 0.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    const LO: f32 = -87.336_55;
    let xc = x.clamp(LO, 88.0);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < LO {
        0.0
    } else {
        y * scale
    }
}

/// Sum of a slice with 8 independent accumulators (vectorisable, and more accurate than one
/// running sum).
#[inline]
pub fn sum<T: Real>(x: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    let mut s = T::ZERO;
    for r in rest {
        s += *r;
    }
    for a in acc {
        s += a;
    }
    s
}

/// Dot product with 8 independent accumulators.
#[inline]
pub fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [T::ZERO; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = T::ZERO;
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    for a in acc {
        s += a;
    }
    s
}

/// Maximum of a slice (−∞ when empty).
#[inline]
pub fn max<T: Real>(x: &[T]) -> T {
    let mut acc = [T::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let mut m = T::NEG_INFINITY;
    for r in rest {
        m = m.max(*r);
    }
    for a in acc {
        m = m.max(a);
    }
    m
}

/// A raw pointer that may cross threads; kernels use it to write disjoint parts of one output
/// from parallel tasks.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
// SAFETY: the kernels only write through it at indices owned by exactly one task.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The mutable slice `[off, off + len)` of the pointed-to buffer.
    ///
    /// # Safety
    /// The range must be in bounds and written by no other task at the same time.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, off: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}
