//! Few-row linear layer (decode): `y[rows, out] (+)= x[rows, inp] · Wᵀ` for `rows ≤`
//! [`GEMV_MAX_ROWS`], streaming the weight once.
//!
//! A general GEMM packs its operands and is tuned for many rows; with one to a few rows the
//! product is bound by reading the weight, so this kernel reads each weight row once, widens bf16
//! in registers (a bf16 is the top half of an f32: a 16-bit shift), and multiplies it with up to
//! four activation rows at a time. The outputs are split over the rayon pool in fixed blocks;
//! every output is one dot product computed by one thread in a fixed order, so the result does
//! not depend on the number of threads.

use super::matmul::WeightRef;
use half::bf16;
use rayon::prelude::*;

/// Largest number of rows the GEMV path is used for.
pub const GEMV_MAX_ROWS: usize = 8;

/// Largest number of rows the int8 GEMV path takes for GGUF block-quantized weights (Q8_0, Q4_0,
/// Q4_1, Q4_K). It re-reads the weight every four rows but never dequantizes it, which pays up to a
/// few dozen rows: a 25-token prompt of SmolLM2-135M ran at 1.4× (Q8_0) and 1.9× (Q4_0) the
/// dequantizing tile path's speed, a 52-token one at about 1.1× (2 threads).
pub const QUANT_GEMV_MAX_ROWS: usize = 32;

/// Outputs (weight rows) per parallel task.
const TASK_OUTPUTS: usize = 64;

/// A raw output pointer shared by the tasks, each of which writes a disjoint set of columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint elements (see `linear_gemv`), so sharing the pointer between
// threads creates no data race.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `y[rows, out] (+)= x[rows, inp] · Wᵀ`, `W: [out, inp]`, for any `rows` (meant for
/// `rows ≤ GEMV_MAX_ROWS`; more rows work but re-read the weight every four rows). When
/// `accumulate` is false the old contents of `y` are not read. Runs on the current rayon pool.
///
/// # Panics
/// When a slice is shorter than its matrix.
pub fn linear_gemv(
    x: &[f32],
    w: WeightRef<'_, f32>,
    y: &mut [f32],
    rows: usize,
    out: usize,
    inp: usize,
    accumulate: bool,
) {
    if let WeightRef::Quant(q) = w {
        assert!(q.rows == out && q.cols == inp, "quantized weight is not [{out}, {inp}]");
        return super::quant::linear_gemv(x, q, y, rows, accumulate);
    }
    gemv(x, w, y, rows, out, inp, accumulate, avx512_available());
}

/// [`linear_gemv`] without SIMD intrinsics (what runs where AVX-512 is missing); public so the
/// tests can check it on any machine.
///
/// # Panics
/// When a slice is shorter than its matrix.
pub fn linear_gemv_portable(
    x: &[f32],
    w: WeightRef<'_, f32>,
    y: &mut [f32],
    rows: usize,
    out: usize,
    inp: usize,
    accumulate: bool,
) {
    if let WeightRef::Quant(q) = w {
        assert!(q.rows == out && q.cols == inp, "quantized weight is not [{out}, {inp}]");
        return super::quant::linear_gemv_portable(x, q, y, rows, accumulate);
    }
    gemv(x, w, y, rows, out, inp, accumulate, false);
}

#[allow(clippy::too_many_arguments)]
fn gemv(
    x: &[f32],
    w: WeightRef<'_, f32>,
    y: &mut [f32],
    rows: usize,
    out: usize,
    inp: usize,
    accumulate: bool,
    simd: bool,
) {
    use super::features::{note, CpuLevel};
    note(if simd { CpuLevel::Avx512 } else { CpuLevel::Portable });
    assert!(x.len() >= rows * inp && y.len() >= rows * out && w.len() >= out * inp);
    if rows == 0 || out == 0 {
        return;
    }
    if inp == 0 {
        // Empty dot products: every output is 0 (as in the gemm path).
        if !accumulate {
            y[..rows * out].fill(0.0);
        }
        return;
    }
    let yp = OutPtr(y.as_mut_ptr());
    let tasks = out.div_ceil(TASK_OUTPUTS);
    (0..tasks).into_par_iter().for_each(|t| {
        let o0 = t * TASK_OUTPUTS;
        let o1 = (o0 + TASK_OUTPUTS).min(out);
        // SAFETY: this task writes only y[r * out + o] for o in o0..o1, disjoint from the other
        // tasks' columns; all those indices are below rows * out ≤ y.len() (asserted above), and
        // `y` is exclusively borrowed for the duration of the parallel loop.
        let y = yp;
        let store = |r: usize, o: usize, v: f32| unsafe {
            let p = y.0.add(r * out + o);
            *p = if accumulate { *p + v } else { v };
        };
        match w {
            WeightRef::Dense(w) => {
                block(x, Weights::F32(&w[o0 * inp..o1 * inp]), rows, inp, simd, |r, o, v| store(r, o0 + o, v))
            }
            WeightRef::Bf16(w) => {
                block(x, Weights::Bf16(&w[o0 * inp..o1 * inp]), rows, inp, simd, |r, o, v| {
                    store(r, o0 + o, v)
                })
            }
            WeightRef::Quant(_) => unreachable!("quantized weights take the quant::linear_gemv path"),
        }
    });
}

/// A block of weight rows.
#[derive(Clone, Copy)]
enum Weights<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl Weights<'_> {
    fn rows(&self, inp: usize) -> usize {
        match self {
            Weights::F32(w) => w.len() / inp,
            Weights::Bf16(w) => w.len() / inp,
        }
    }
}

/// Computes every `(r, o)` dot product of the block and hands it to `put`.
fn block(
    x: &[f32],
    w: Weights<'_>,
    rows: usize,
    inp: usize,
    simd: bool,
    mut put: impl FnMut(usize, usize, f32),
) {
    debug_assert!(inp > 0);
    let n = w.rows(inp);
    #[cfg(target_arch = "x86_64")]
    if simd {
        let mut r0 = 0;
        while r0 < rows {
            let rr = (rows - r0).min(4);
            let xr = &x[r0 * inp..(r0 + rr) * inp];
            let mut o = 0;
            while o < n {
                let oo = (n - o).min(4);
                let mut res = [[0.0f32; 4]; 4];
                // SAFETY: AVX-512F/BW/VL were detected at run time; `xr` holds rr rows of inp
                // values and the weight block holds rows o..o + oo of inp values each.
                unsafe {
                    match w {
                        Weights::F32(w) => {
                            avx512::dots(xr, rr, w[o * inp..].as_ptr().cast(), false, oo, inp, &mut res)
                        }
                        Weights::Bf16(w) => {
                            avx512::dots(xr, rr, w[o * inp..].as_ptr().cast(), true, oo, inp, &mut res)
                        }
                    }
                }
                for (r, row) in res.iter().enumerate().take(rr) {
                    for (j, &v) in row.iter().enumerate().take(oo) {
                        put(r0 + r, o + j, v);
                    }
                }
                o += oo;
            }
            r0 += rr;
        }
        return;
    }
    let _ = simd;
    for o in 0..n {
        for r in 0..rows {
            let xr = &x[r * inp..(r + 1) * inp];
            let v = match w {
                Weights::F32(w) => dot_portable(xr, &w[o * inp..(o + 1) * inp], |v| v),
                Weights::Bf16(w) => dot_portable(xr, &w[o * inp..(o + 1) * inp], |v| {
                    f32::from_bits((v.to_bits() as u32) << 16)
                }),
            };
            put(r, o, v);
        }
    }
}

/// Portable dot product in 16 independent lanes (vectorisable by the compiler).
#[inline]
fn dot_portable<W: Copy>(x: &[f32], w: &[W], widen: impl Fn(W) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut xc = x.chunks_exact(16);
    let mut wc = w.chunks_exact(16);
    for (xs, ws) in (&mut xc).zip(&mut wc) {
        for l in 0..16 {
            acc[l] += xs[l] * widen(ws[l]);
        }
    }
    for (l, (&a, &b)) in xc.remainder().iter().zip(wc.remainder()).enumerate() {
        acc[l] += a * widen(b);
    }
    acc.iter().sum()
}

/// Whether the AVX-512 kernel can run here (AVX-512 F/BW/VL), within the cap of
/// [`super::features`].
pub fn avx512_available() -> bool {
    cfg!(target_arch = "x86_64") && super::features::allows(super::features::CpuLevel::Avx512)
}

// The AVX-512 intrinsics used here are stable since Rust 1.89, above the workspace's declared
// MSRV (1.85): building this crate needs 1.89+ (the project builds with 1.95). Raise
// `rust-version` to 1.89 to drop this allow.
// Index loops over the small register arrays read better than iterator chains here.
#[allow(clippy::incompatible_msrv, clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Loads 16 weights starting at element `k` (the first `tail` of them when `tail < 16`,
    /// zeros after) as f32.
    #[inline(always)]
    unsafe fn load_w(w: *const u8, bf16: bool, k: usize, mask: __mmask16) -> __m512 {
        // SAFETY (caller): `w` points to at least k + popcount(mask) readable elements; masked
        // lanes are not accessed.
        unsafe {
            if bf16 {
                let h = _mm256_maskz_loadu_epi16(mask, w.cast::<i16>().add(k));
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            } else {
                _mm512_maskz_loadu_ps(mask, w.cast::<f32>().add(k))
            }
        }
    }

    /// `res[r][j] = Σ_k x[r, k] · w[j, k]` for `r < rr ≤ 4`, `j < oo ≤ 4`.
    ///
    /// # Safety
    /// AVX-512F/BW/VL must be available; `x` holds `rr · inp` values and `w` points to `oo · inp`
    /// readable weights (f32 or bf16 as `bf16` says).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dots(
        x: &[f32],
        rr: usize,
        w: *const u8,
        bf16: bool,
        oo: usize,
        inp: usize,
        res: &mut [[f32; 4]; 4],
    ) {
        // Dispatch to fully unrolled instances so the accumulators live in registers.
        unsafe {
            match (rr, oo) {
                (1, 4) => dots_n::<1, 4>(x, w, bf16, inp, res),
                (2, 4) => dots_n::<2, 4>(x, w, bf16, inp, res),
                (3, 4) => dots_n::<3, 4>(x, w, bf16, inp, res),
                (4, 4) => dots_n::<4, 4>(x, w, bf16, inp, res),
                (1, _) => dots_n::<1, 1>(x, w, bf16, inp, res),
                (2, _) => dots_n::<2, 1>(x, w, bf16, inp, res),
                (3, _) => dots_n::<3, 1>(x, w, bf16, inp, res),
                _ => dots_n::<4, 1>(x, w, bf16, inp, res),
            }
            if oo > 1 && oo < 4 {
                // Remaining single outputs of a short block (the same per-output arithmetic).
                let esz = if bf16 { 2 } else { 4 };
                for j in 1..oo {
                    let mut one = [[0.0f32; 4]; 4];
                    let wj = w.add(j * inp * esz);
                    match rr {
                        1 => dots_n::<1, 1>(x, wj, bf16, inp, &mut one),
                        2 => dots_n::<2, 1>(x, wj, bf16, inp, &mut one),
                        3 => dots_n::<3, 1>(x, wj, bf16, inp, &mut one),
                        _ => dots_n::<4, 1>(x, wj, bf16, inp, &mut one),
                    }
                    for r in 0..rr {
                        res[r][j] = one[r][0];
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn dots_n<const R: usize, const O: usize>(
        x: &[f32],
        w: *const u8,
        bf16: bool,
        inp: usize,
        res: &mut [[f32; 4]; 4],
    ) {
        debug_assert!(x.len() >= R * inp);
        let esz = if bf16 { 2 } else { 4 };
        let xp = x.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); O]; R];
        let mut k = 0;
        // SAFETY (caller): every load below addresses x[r * inp + k ..] with k + 16 ≤ inp (or
        // masked to < inp) and weight row j < O at element k with the same bound.
        unsafe {
            while k + 16 <= inp {
                let mut xv = [_mm512_setzero_ps(); R];
                for (r, v) in xv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(xp.add(r * inp + k));
                }
                for j in 0..O {
                    let wv = load_w(w.add(j * inp * esz), bf16, k, 0xffff);
                    for r in 0..R {
                        acc[r][j] = _mm512_fmadd_ps(xv[r], wv, acc[r][j]);
                    }
                }
                k += 16;
            }
            if k < inp {
                let mask: __mmask16 = (1u16 << (inp - k)) - 1;
                let mut xv = [_mm512_setzero_ps(); R];
                for (r, v) in xv.iter_mut().enumerate() {
                    *v = _mm512_maskz_loadu_ps(mask, xp.add(r * inp + k));
                }
                for j in 0..O {
                    let wv = load_w(w.add(j * inp * esz), bf16, k, mask);
                    for r in 0..R {
                        acc[r][j] = _mm512_fmadd_ps(xv[r], wv, acc[r][j]);
                    }
                }
            }
        }
        for r in 0..R {
            for j in 0..O {
                res[r][j] = _mm512_reduce_add_ps(acc[r][j]);
            }
        }
    }
}
