//! Row primitives of the softmax-style kernels (attention, cross-entropy), compiled three times:
//! for AVX-512, for AVX2+FMA and for the baseline target, and picked at run time by
//! [`super::features`]. The bodies are
//! plain loops over 16 independent lanes that the compiler vectorises for each target.

use super::float::Real;

/// Defines `pub fn $name<T: Real>(args) -> ret` that runs `$body` compiled for the best
/// instruction set the CPU has, within the cap of [`super::features`].
macro_rules! multiversion {
    ($(#[$m:meta])* pub fn $name:ident<T: Real>($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$m])*
        #[inline]
        #[allow(clippy::unused_unit)]
        pub fn $name<T: Real>($($arg: $ty),*) -> $ret {
            #[inline(always)]
            #[allow(clippy::unused_unit)]
            fn imp<T: Real>($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::unused_unit)]
                unsafe fn v512<T: Real>($($arg: $ty),*) -> $ret {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::unused_unit)]
                unsafe fn v256<T: Real>($($arg: $ty),*) -> $ret {
                    imp($($arg),*)
                }
                use $crate::cpu::features::{take, CpuLevel};
                if take(CpuLevel::Avx512) {
                    // SAFETY: the CPU supports the features `v512` is compiled for.
                    return unsafe { v512($($arg),*) };
                }
                if take(CpuLevel::Avx2) {
                    // SAFETY: as above.
                    return unsafe { v256($($arg),*) };
                }
            }
            $crate::cpu::features::note($crate::cpu::features::CpuLevel::Portable);
            imp($($arg),*)
        }
    };
}

pub(crate) use multiversion;

const L: usize = 16;

multiversion! {
    /// Maximum of a row (−∞ when empty).
    pub fn max<T: Real>(x: &[T]) -> T {
        let mut acc = [T::NEG_INFINITY; L];
        let chunks = x.chunks_exact(L);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..L {
                acc[i] = acc[i].max(c[i]);
            }
        }
        let mut m = T::NEG_INFINITY;
        for &r in rest {
            m = m.max(r);
        }
        for a in acc {
            m = m.max(a);
        }
        m
    }
}

multiversion! {
    /// `row[i] = e^(row[i] − m)` in place (entries ≤ `m`); returns their sum.
    pub fn exp_sub_sum<T: Real>(row: &mut [T], m: T) -> T {
        let mut acc = [T::ZERO; L];
        let mut chunks = row.chunks_exact_mut(L);
        for c in &mut chunks {
            for i in 0..L {
                c[i] = (c[i] - m).exp_fast();
                acc[i] += c[i];
            }
        }
        let mut s = T::ZERO;
        for r in chunks.into_remainder() {
            *r = (*r - m).exp_fast();
            s += *r;
        }
        for a in acc {
            s += a;
        }
        s
    }
}

multiversion! {
    /// `Σ e^(x[i] − m)` (entries ≤ `m`).
    pub fn exp_sub_sum_ro<T: Real>(x: &[T], m: T) -> T {
        let mut acc = [T::ZERO; L];
        let chunks = x.chunks_exact(L);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..L {
                acc[i] += (c[i] - m).exp_fast();
            }
        }
        let mut s = T::ZERO;
        for &r in rest {
            s += (r - m).exp_fast();
        }
        for a in acc {
            s += a;
        }
        s
    }
}

multiversion! {
    /// `row *= s`.
    pub fn scale<T: Real>(row: &mut [T], s: T) -> () {
        for v in row.iter_mut() {
            *v *= s;
        }
    }
}

multiversion! {
    /// Softmax backward of one attention row: `p = e^(p − lse)`, then `dp = p · (dp − delta)`.
    pub fn softmax_grad_row<T: Real>(p: &mut [T], dp: &mut [T], lse: T, delta: T) -> () {
        for (p, dp) in p.iter_mut().zip(dp.iter_mut()) {
            *p = (*p - lse).exp_fast();
            *dp = *p * (*dp - delta);
        }
    }
}
