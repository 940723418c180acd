//! Small strided matrix products, the inner work of the attention tiles (64 × 64 × 64 and
//! alike): `dst = beta · dst + alpha · A · B`. The `gemm` crate packs both operands on every
//! call, which costs as much as the arithmetic at these sizes; for `f32` on AVX-512, with `B`
//! contiguous along its columns, a register-blocked kernel (6 rows × 64 columns of
//! accumulators, `A` broadcast from wherever it lives) runs straight off the operands instead;
//! with `A` along its rows and `B` along its columns instead (queries against the keys of a
//! cache), one vector dot product per output. Everything else goes to the `gemm` crate.

use super::float::Real;
use super::matmul::gemm_raw;
#[cfg(target_arch = "x86_64")]
use std::any::TypeId;

/// `dst = beta · dst + alpha · A · B` with `A: [m, k]` at strides (`a_rs`, `a_cs`), `B: [k, n]`
/// at strides (`b_rs`, `b_cs`), `dst` row-major with row stride `dst_rs`; `beta` is 0 or 1 (0:
/// the old contents of `dst` are not read). Single-threaded (the callers parallelise over
/// tiles).
///
/// # Safety
/// Every addressed element must be in bounds, and `dst` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn small_gemm<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    a: *const T,
    a_rs: usize,
    a_cs: usize,
    b: *const T,
    b_rs: usize,
    b_cs: usize,
    alpha: T,
    beta: T,
) {
    #[cfg(target_arch = "x86_64")]
    if b_cs == 1 && TypeId::of::<T>() == TypeId::of::<f32>() && avx512::available() {
        // SAFETY: T is f32 (checked above), so the pointer casts are identities; the caller's
        // bounds guarantee covers the kernel's accesses (same operands, same strides).
        unsafe {
            avx512::gemm(
                m,
                n,
                k,
                dst.cast(),
                dst_rs,
                a.cast(),
                a_rs,
                a_cs,
                b.cast(),
                b_rs,
                alpha.to_f64() as f32,
                beta != T::ZERO,
            );
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if a_cs == 1 && b_rs == 1 && TypeId::of::<T>() == TypeId::of::<f32>() && avx512::available() {
        // SAFETY: as above.
        unsafe {
            avx512::gemm_dots(
                m,
                n,
                k,
                dst.cast(),
                dst_rs,
                a.cast(),
                a_rs,
                b.cast(),
                b_cs,
                alpha.to_f64() as f32,
                beta != T::ZERO,
            );
        }
        return;
    }
    crate::cpu::features::note(crate::cpu::features::CpuLevel::Portable);
    // SAFETY: forwarded contract.
    unsafe { gemm_raw(m, n, k, dst, dst_rs, a, a_rs, a_cs, b, b_rs, b_cs, alpha, beta, false) }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows of accumulators per block.
    const MR: usize = 6;
    /// Vectors of 16 columns per block.
    const NV: usize = 4;

    /// Whether the AVX-512 kernels may run (within the cap of [`crate::cpu::features`]);
    /// records it as taken when they may.
    pub fn available() -> bool {
        crate::cpu::features::take(crate::cpu::features::CpuLevel::Avx512)
    }

    /// The f32 body of [`super::small_gemm`] for `B` with unit column stride.
    ///
    /// # Safety
    /// AVX-512F must be available; the operands as in [`super::small_gemm`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gemm(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        dst_rs: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        b_rs: usize,
        alpha: f32,
        accumulate: bool,
    ) {
        let mut j0 = 0;
        while j0 < n {
            let nn = (n - j0).min(NV * 16);
            let mut masks = [0 as __mmask16; NV];
            for (v, mk) in masks.iter_mut().enumerate() {
                let cols = nn.saturating_sub(16 * v).min(16);
                *mk = if cols == 16 { 0xffff } else { ((1u32 << cols) - 1) as __mmask16 };
            }
            let mut i0 = 0;
            while i0 < m {
                let mr = (m - i0).min(MR);
                // SAFETY: rows i0..i0 + mr < m and columns j0..j0 + nn ≤ n are in bounds of
                // every operand by the caller's contract; the masks cover exactly those columns.
                unsafe {
                    let (ab, bb, db) = (a.add(i0 * a_rs), b.add(j0), dst.add(i0 * dst_rs + j0));
                    match mr {
                        6 => block::<6>(k, db, dst_rs, ab, a_rs, a_cs, bb, b_rs, &masks, alpha, accumulate),
                        5 => block::<5>(k, db, dst_rs, ab, a_rs, a_cs, bb, b_rs, &masks, alpha, accumulate),
                        4 => block::<4>(k, db, dst_rs, ab, a_rs, a_cs, bb, b_rs, &masks, alpha, accumulate),
                        3 => block::<3>(k, db, dst_rs, ab, a_rs, a_cs, bb, b_rs, &masks, alpha, accumulate),
                        2 => block::<2>(k, db, dst_rs, ab, a_rs, a_cs, bb, b_rs, &masks, alpha, accumulate),
                        _ => block::<1>(k, db, dst_rs, ab, a_rs, a_cs, bb, b_rs, &masks, alpha, accumulate),
                    }
                }
                i0 += mr;
            }
            j0 += nn;
        }
    }

    /// The f32 body of [`super::small_gemm`] for `A` with unit column stride and `B` with unit
    /// row stride: `dst[i, j] (+)= alpha · A[i, :] · B[:, j]`, both read along `k`.
    ///
    /// # Safety
    /// AVX-512F must be available; the operands as in [`super::small_gemm`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gemm_dots(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        dst_rs: usize,
        a: *const f32,
        a_rs: usize,
        b: *const f32,
        b_cs: usize,
        alpha: f32,
        accumulate: bool,
    ) {
        let tail = k % 16;
        let tail_mask: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
        // SAFETY: rows < m of A, columns < n of B, k < k of both, and (i, j) < (m, n) of dst
        // are in bounds by the caller's contract; the tail mask covers exactly the last k % 16.
        unsafe {
            for i in 0..m {
                let ar = a.add(i * a_rs);
                for j in 0..n {
                    let bc = b.add(j * b_cs);
                    let mut acc = _mm512_setzero_ps();
                    let mut kk = 0;
                    while kk + 16 <= k {
                        acc = _mm512_fmadd_ps(_mm512_loadu_ps(ar.add(kk)), _mm512_loadu_ps(bc.add(kk)), acc);
                        kk += 16;
                    }
                    if tail > 0 {
                        let x = _mm512_maskz_loadu_ps(tail_mask, ar.add(kk));
                        acc = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(tail_mask, bc.add(kk)), acc);
                    }
                    let d = dst.add(i * dst_rs + j);
                    let v = alpha * _mm512_reduce_add_ps(acc);
                    *d = if accumulate { *d + v } else { v };
                }
            }
        }
    }

    /// One block of `R` rows × up to 64 columns (lanes outside `masks` neither read nor
    /// written), accumulated over all of `k` in registers.
    ///
    /// # Safety
    /// As [`gemm`], for rows `0..R` and the masked columns.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const R: usize>(
        k: usize,
        dst: *mut f32,
        dst_rs: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        b_rs: usize,
        masks: &[__mmask16; NV],
        alpha: f32,
        accumulate: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        // SAFETY: every access is to row < R of A/dst, kk < k of A/B and a masked column.
        unsafe {
            for kk in 0..k {
                let brow = b.add(kk * b_rs);
                let mut bv = [_mm512_setzero_ps(); NV];
                for v in 0..NV {
                    bv[v] = _mm512_maskz_loadu_ps(masks[v], brow.add(16 * v));
                }
                let acol = a.add(kk * a_cs);
                for (i, row) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*acol.add(i * a_rs));
                    for v in 0..NV {
                        row[v] = _mm512_fmadd_ps(x, bv[v], row[v]);
                    }
                }
            }
            let al = _mm512_set1_ps(alpha);
            for (i, row) in acc.iter().enumerate() {
                let d = dst.add(i * dst_rs);
                for v in 0..NV {
                    let mut r = _mm512_mul_ps(row[v], al);
                    if accumulate {
                        r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(masks[v], d.add(16 * v)));
                    }
                    _mm512_mask_storeu_ps(d.add(16 * v), masks[v], r);
                }
            }
        }
    }
}
