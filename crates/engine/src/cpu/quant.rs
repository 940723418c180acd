//! GGUF block-quantized weights ([`QuantFormat`]: Q8_0, Q4_0, Q4_1, Q4_K) kept quantized in
//! memory.
//! NF4 ([`QuantFormat::Nf4`]) shares [`QuantRef`] and the entry points [`dequantize_rows`] and
//! [`linear_gemv`], which hand it to [`super::nf4`].
//!
//! * **Decode** ([`linear_gemv`], few rows): each activation row is quantized once per call to
//!   8-bit blocks of 32 with one f32 scale (`x ≈ d_x · q_x`, `d_x = max|x| / 127`), and every
//!   weight block is multiplied with the matching activation block in integers (AVX-512 VNNI
//!   `vpdpbusd` on 32 bytes; else AVX2 `vpmaddubsw` + `vpmaddwd`, as llama.cpp does on AVX2; else
//!   a portable loop), then scaled by `d_w · d_x`. All three give the same exact integer block
//!   dots and differ only in the order of the f32 sums. Q4_1's offset adds
//!   `m_w · d_x · Σ q_x` per block. Q4_K's 256-value super-blocks are 8 sub-blocks of 32 that
//!   line up with the activation blocks: sub-block `j` gives `(d · sc_j) · d_x · Σ q · q_x` and
//!   its min subtracts `(dmin · m_j) · d_x · Σ q_x`. The weight is read once, at 4.25 to 8.5 bits
//!   per value, which is what makes decode fast: it is bound by memory bandwidth. The outputs are
//!   split over the rayon pool in fixed blocks and every output is computed by one thread in a
//!   fixed order, so results do not depend on the number of threads.
//! * **Many rows and the input gradient** go through [`super::matmul`]: weight tiles are
//!   dequantized to f32 ([`dequantize_rows`]) and multiplied with `gemm`, never the whole matrix
//!   at once.
//! * **Embedding lookups** dequantize only the rows looked up.
//!
//! Dequantization computes every value with the same f32 operations as GGUF's reference (and
//! `afinar_checkpoint::quant`), so it is bit-exact. The decode product is not bit-equal to an f32
//! product on the dequantized matrix, because of the 8-bit activations: its error is that of
//! rounding each activation to 1/254 of its block's largest magnitude.

use afinar_formats::ggml;
use rayon::prelude::*;

use crate::QuantFormat;

use super::float::Real;

/// Values per block.
const QK: usize = QuantFormat::BLOCK;

/// Outputs (weight rows) per parallel task of the GEMV, roughly (see [`task_outputs`]).
const TASK_OUTPUTS: usize = 64;

/// Outputs per task for `out` outputs on `threads` threads: about [`TASK_OUTPUTS`], a multiple
/// of 4 (the kernel's row group), and a task count that divides evenly over the threads where
/// it can: fixed blocks of 64 leave one thread a whole extra block on SmolLM2's 192-row k/v
/// (3 tasks on 2 threads) and 576-row projections (9 tasks). Each output is still computed by one
/// thread in a fixed order, so the split does not change the results.
fn task_outputs(out: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let rounds = out.div_ceil(threads * TASK_OUTPUTS).max(1);
    out.div_ceil(threads * rounds).next_multiple_of(4).max(4)
}

/// A borrowed `[rows, cols]` quantized matrix: `rows` rows of `cols / block_len` blocks each
/// ([`QuantFormat::block_len`]; for NF4, the whole buffer of [`super::nf4`]).
#[derive(Clone, Copy, Debug)]
pub struct QuantRef<'a> {
    /// Block layout.
    pub format: QuantFormat,
    /// The blocks, row-major (exactly `rows` rows).
    pub data: &'a [u8],
    /// Number of rows.
    pub rows: usize,
    /// Values per row (a whole number of blocks: a multiple of 32, of 256 for Q4_K).
    pub cols: usize,
}

impl<'a> QuantRef<'a> {
    /// Wraps `data`.
    ///
    /// # Panics
    /// When `cols` is not a whole number of blocks or `data` does not hold exactly `rows` rows.
    pub fn new(format: QuantFormat, data: &'a [u8], rows: usize, cols: usize) -> Self {
        let total = format.matrix_bytes(rows, cols).expect("columns must be a whole number of blocks");
        assert_eq!(data.len(), total, "quantized data does not hold [{rows}, {cols}]");
        QuantRef { format, data, rows, cols }
    }

    /// Bytes per row (for NF4, of packed values only).
    pub fn row_bytes(&self) -> usize {
        self.cols / self.format.block_len() * self.format.block_bytes()
    }

    /// The blocks of rows `r0..r1`.
    pub fn rows_bytes(&self, r0: usize, r1: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r0 * rb..r1 * rb]
    }
}

// ---- dequantization ----------------------------------------------------------------------------

pub use afinar_formats::float::f16_to_f32;

/// The little-endian f16 at `b[at..at + 2]`, as f32.
#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Dequantizes whole blocks of `src` into `dst` ([`QuantFormat::block_len`] values per block;
/// as many blocks as both hold), with GGUF's reference arithmetic: Q8_0 `q · d`, Q4_0
/// `d · (q − 8)`, Q4_1 `d · q + m`, Q4_K `(d · sc) · q − (dmin · m)`.
///
/// # Panics
/// For NF4, whose blocks are not self-contained (use [`dequantize_rows`]).
pub fn dequantize_blocks(format: QuantFormat, src: &[u8], dst: &mut [f32]) {
    match format {
        QuantFormat::Nf4 => panic!("NF4 blocks are not self-contained: use dequantize_rows"),
        QuantFormat::Q8_0 => ggml::q8::dequantize_q8_0(src, dst),
        QuantFormat::Q4_0 => ggml::q4::dequantize_q4_0(src, dst),
        QuantFormat::Q4_1 => ggml::q4::dequantize_q4_1(src, dst),
        QuantFormat::Q4_K => ggml::k_quants::dequantize_q4_k(src, dst),
    }
}

/// Dequantizes rows `r0..r0 + dst.len() / cols` of `w` into `dst` (converted to `T`), in parallel
/// over chunks of rows when there are many.
///
/// # Panics
/// When the rows are out of range.
pub fn dequantize_rows<T: Real>(w: QuantRef<'_>, r0: usize, dst: &mut [T]) {
    if w.format == QuantFormat::Nf4 {
        return super::nf4::dequantize_rows(super::nf4::from_quant(w), r0, dst);
    }
    let cols = w.cols;
    if cols == 0 {
        return;
    }
    let n = dst.len() / cols;
    let src = w.rows_bytes(r0, r0 + n);
    let rb = w.row_bytes();
    let convert = |s: &[u8], d: &mut [T]| {
        const RUN: usize = 256;
        let mut buf = [0.0f32; RUN];
        // Blocks per run: 8 of 32 values, or one Q4_K super-block.
        let per_run = RUN / w.format.block_len();
        let bb = w.format.block_bytes();
        for (s, d) in s.chunks(rb).zip(d.chunks_mut(cols)) {
            // Convert in runs of 256 values through a small f32 buffer (a no-op copy for T = f32).
            for (s, d) in s.chunks(per_run * bb).zip(d.chunks_mut(RUN)) {
                let b = &mut buf[..d.len()];
                dequantize_blocks(w.format, s, b);
                for (d, &v) in d.iter_mut().zip(b.iter()) {
                    *d = T::from_f32(v);
                }
            }
        }
    };
    const PAR_ROWS: usize = 32;
    if n > PAR_ROWS {
        dst[..n * cols]
            .par_chunks_mut(PAR_ROWS * cols)
            .zip(src.par_chunks(PAR_ROWS * rb))
            .for_each(|(d, s)| convert(s, d));
    } else {
        convert(src, &mut dst[..n * cols]);
    }
}

// ---- activation quantization ------------------------------------------------------------------

/// Activations quantized to 8-bit blocks: `x[r, 32 b + j] ≈ d[r, b] · q[r, 32 b + j]`.
struct QuantizedActs {
    /// `[rows, cols]` values in −127..=127.
    q: Vec<i8>,
    /// `[rows, cols / 32, 2]`: per block the scale `d` (NaN for a block holding a non-finite
    /// value, so the outputs that read it are NaN as in the f32 path) and the block sum in
    /// activation units `s = d · Σ q` (Q4_1's offset term), side by side so that a pair of
    /// blocks loads as one `[d₀, s₀, d₁, s₁]` vector.
    ds: Vec<f32>,
}

/// Rounds `v` (|v| < 2²²) to the nearest integer, ties to even, without a libm call: adding
/// and subtracting 1.5 · 2²³ leaves no fraction bits, and f32 addition rounds to nearest even.
#[inline(always)]
fn round_even_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Quantizes `x[rows, cols]` (`cols` a multiple of 32) to 8-bit blocks (round to nearest, like
/// llama.cpp's SIMD `quantize_row_q8_0`/`q8_1`).
fn quantize_acts(x: &[f32], rows: usize, cols: usize) -> QuantizedActs {
    let nb = rows * cols / QK;
    let mut a = QuantizedActs { q: vec![0; rows * cols], ds: vec![0.0; 2 * nb] };
    let it = x[..rows * cols].chunks_exact(QK).zip(a.q.chunks_exact_mut(QK));
    for ((x, q), ds) in it.zip(a.ds.chunks_exact_mut(2)) {
        let mut amax = 0.0f32;
        let mut finite = true;
        for &v in x {
            amax = amax.max(v.abs());
            finite &= v.is_finite();
        }
        let scale = amax / 127.0;
        let id = if scale == 0.0 { 0.0 } else { 1.0 / scale };
        let mut sum = 0i32;
        for (q, &v) in q.iter_mut().zip(x) {
            // |v · id| ≤ 127 (up to rounding, and `as` saturates; NaN gives 0).
            *q = round_even_small(v * id) as i8;
            sum += i32::from(*q);
        }
        let d = if finite { scale } else { f32::NAN };
        ds[0] = d;
        ds[1] = d * sum as f32;
    }
    a
}

// ---- decode GEMV ------------------------------------------------------------------------------

/// A raw output pointer shared by the tasks, each of which writes a disjoint set of columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint elements (see `gemv`), so sharing the pointer between threads
// creates no data race.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// `y[rows, out] (+)= x[rows, inp] · Wᵀ` for a quantized `W: [out, inp]`, with 8-bit activations
/// (see the module docs), for few `rows` (decode; any number works but re-reads the weight for
/// each row). When `accumulate` is false the old contents of `y` are not read. Runs on the
/// current rayon pool; uses AVX-512 VNNI where the CPU level allows it, else AVX2 (with FMA and
/// F16C), else portable code.
///
/// # Panics
/// When a slice is shorter than its matrix.
pub fn linear_gemv(x: &[f32], w: QuantRef<'_>, y: &mut [f32], rows: usize, accumulate: bool) {
    if w.format == QuantFormat::Nf4 {
        return super::nf4::linear_gemv(x, super::nf4::from_quant(w), y, rows, accumulate);
    }
    let path = if vnni_available() {
        Path::Vnni
    } else if avx2_available() {
        Path::Avx2
    } else {
        Path::Portable
    };
    gemv(x, w, y, rows, accumulate, path);
}

/// [`linear_gemv`] without SIMD intrinsics (what runs where AVX2 is missing); public so the
/// tests can check it on any machine.
///
/// # Panics
/// When a slice is shorter than its matrix.
pub fn linear_gemv_portable(x: &[f32], w: QuantRef<'_>, y: &mut [f32], rows: usize, accumulate: bool) {
    if w.format == QuantFormat::Nf4 {
        return super::nf4::linear_gemv(x, super::nf4::from_quant(w), y, rows, accumulate);
    }
    gemv(x, w, y, rows, accumulate, Path::Portable);
}

/// Whether the AVX-512 VNNI kernel can run here (AVX-512 F/VL/VNNI with AVX2, FMA and F16C),
/// within the cap of [`super::features`].
pub fn vnni_available() -> bool {
    cfg!(target_arch = "x86_64") && super::features::allows(super::features::CpuLevel::Avx512Vnni)
}

/// Whether the AVX2 kernel can run here (AVX2, FMA and F16C), within the cap of
/// [`super::features`].
pub fn avx2_available() -> bool {
    cfg!(target_arch = "x86_64") && super::features::allows(super::features::CpuLevel::Avx2)
}

/// Which block-dot kernel the GEMV runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// [`dot_portable`].
    Portable,
    /// `avx2::dots` (only chosen after [`avx2_available`]).
    Avx2,
    /// `vnni::dots` (only chosen after [`vnni_available`]).
    Vnni,
}

fn gemv(x: &[f32], w: QuantRef<'_>, y: &mut [f32], rows: usize, accumulate: bool, path: Path) {
    use super::features::{note, CpuLevel};
    note(match path {
        Path::Portable => CpuLevel::Portable,
        Path::Avx2 => CpuLevel::Avx2,
        Path::Vnni => CpuLevel::Avx512Vnni,
    });
    let (out, inp) = (w.rows, w.cols);
    assert!(x.len() >= rows * inp && y.len() >= rows * out);
    assert!(inp % QK == 0 && w.data.len() == out * w.row_bytes());
    if rows == 0 || out == 0 {
        return;
    }
    if inp == 0 {
        if !accumulate {
            y[..rows * out].fill(0.0);
        }
        return;
    }
    let acts = quantize_acts(x, rows, inp);
    let nb = inp / QK;
    let rb = w.row_bytes();
    let yp = OutPtr(y.as_mut_ptr());
    let per_task = task_outputs(out, rayon::current_num_threads());
    let tasks = out.div_ceil(per_task);
    (0..tasks).into_par_iter().for_each(|t| {
        let o0 = t * per_task;
        let o1 = (o0 + per_task).min(out);
        let mut o = o0;
        while o < o1 {
            let oo = (o1 - o).min(4);
            let wb = &w.data[o * rb..(o + oo) * rb];
            for r in 0..rows {
                let xq = &acts.q[r * inp..(r + 1) * inp];
                let xds = &acts.ds[2 * r * nb..2 * (r + 1) * nb];
                let mut res = [0.0f32; 4];
                dots(w.format, wb, rb, oo, xq, xds, path, &mut res);
                for (j, &v) in res.iter().enumerate().take(oo) {
                    // SAFETY: this task writes only y[r · out + o'] for o' in o0..o1, disjoint
                    // from the other tasks' columns; r < rows and o' < out, so the index is below
                    // rows · out ≤ y.len() (asserted above), and `y` is exclusively borrowed for
                    // the duration of the parallel loop.
                    unsafe {
                        let p = yp.get().add(r * out + o + j);
                        *p = if accumulate { *p + v } else { v };
                    }
                }
            }
            o += oo;
        }
    });
}

/// One SIMD block-dot kernel: `res[..O]` for `O` rows of `wb` at stride `rb` bytes against one
/// quantized activation row (see `vnni::dots` and `avx2::dots` for the contract).
#[cfg(target_arch = "x86_64")]
type Kernel = unsafe fn(&[u8], usize, &[i8], &[f32], &mut [f32; 4]);

/// `res[j] = Σ_b (d_w · d_x · Σ_i w_q · x_q + [Q4_1] m_w · s_x)` for the `oo ≤ 4` weight rows in
/// `wb` (row stride `rb` bytes) against one quantized activation row (`xds`: `[d_x, s_x]` per
/// block of 32); for Q4_K, `Σ_j ((d · sc_j) · d_x · Σ_i q · x_q − (dmin · m_j) · s_x)` over its
/// sub-blocks `j`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn dots(
    format: QuantFormat,
    wb: &[u8],
    rb: usize,
    oo: usize,
    xq: &[i8],
    xds: &[f32],
    path: Path,
    res: &mut [f32; 4],
) {
    assert!(
        wb.len() >= oo * rb
            && xq.len() * 2 == xds.len() * QK
            && rb * format.block_len() == xq.len() * format.block_bytes()
    );
    #[cfg(target_arch = "x86_64")]
    if path != Path::Portable {
        use QuantFormat::{Nf4, Q4_0, Q4_1, Q4_K, Q8_0};
        // The kernel for 4 rows and the one for a single row.
        let (four, one): (Kernel, Kernel) = match (path, format) {
            (Path::Vnni, Q8_0) => (vnni::dots::<4, 0>, vnni::dots::<1, 0>),
            (Path::Vnni, Q4_0) => (vnni::dots::<4, 1>, vnni::dots::<1, 1>),
            (Path::Vnni, Q4_1) => (vnni::dots::<4, 2>, vnni::dots::<1, 2>),
            (Path::Vnni, Q4_K) => (vnni::dots_q4k::<4>, vnni::dots_q4k::<1>),
            (Path::Avx2, Q8_0) => (avx2::dots::<4, 0>, avx2::dots::<1, 0>),
            (Path::Avx2, Q4_0) => (avx2::dots::<4, 1>, avx2::dots::<1, 1>),
            (Path::Avx2, Q4_1) => (avx2::dots::<4, 2>, avx2::dots::<1, 2>),
            (Path::Avx2, Q4_K) => (avx2::dots_q4k::<4>, avx2::dots_q4k::<1>),
            (_, Nf4) => unreachable!("NF4 has its own GEMV"),
            (Path::Portable, _) => unreachable!("checked above"),
        };
        // SAFETY: the kernel's instruction sets were detected at run time (`Path::Vnni` is only
        // chosen after `vnni_available()`, `Path::Avx2` after `avx2_available()`); `wb` holds
        // `oo` rows of `xds.len() / 2` blocks of 32 values (`xds.len() / 16` Q4_K super-blocks)
        // each at stride `rb`, and `xq` holds as many activation blocks (asserted above).
        unsafe {
            if oo == 4 {
                four(wb, rb, xq, xds, res);
            } else {
                for j in 0..oo {
                    let mut r1 = [0.0f32; 4];
                    one(&wb[j * rb..(j + 1) * rb], rb, xq, xds, &mut r1);
                    res[j] = r1[0];
                }
            }
        }
        return;
    }
    let _ = path;
    for (j, r) in res.iter_mut().enumerate().take(oo) {
        *r = dot_portable(format, &wb[j * rb..(j + 1) * rb], xq, xds);
    }
}

/// One output, portably: the integer block dots are exact, their scaled sum runs in block order.
fn dot_portable(format: QuantFormat, w: &[u8], xq: &[i8], xds: &[f32]) -> f32 {
    if format == QuantFormat::Q4_K {
        return dot_portable_q4k(w, xq, xds);
    }
    let bb = format.block_bytes();
    let mut acc = 0.0f32;
    let mut min_acc = 0.0f32;
    for ((b, x), ds) in w.chunks_exact(bb).zip(xq.chunks_exact(QK)).zip(xds.chunks_exact(2)) {
        let (dx, sx) = (ds[0], ds[1]);
        let d = f16_at(b, 0);
        let dot: i32 = match format {
            QuantFormat::Q8_0 => {
                b[2..34].iter().zip(x).map(|(&w, &x)| i32::from(w as i8) * i32::from(x)).sum()
            }
            QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
                let (qs, off) = if format == QuantFormat::Q4_0 { (&b[2..18], 8) } else { (&b[4..20], 0) };
                let mut s = 0i32;
                for (j, &q) in qs.iter().enumerate() {
                    s += (i32::from(q & 0x0f) - off) * i32::from(x[j]);
                    s += (i32::from(q >> 4) - off) * i32::from(x[j + 16]);
                }
                s
            }
            QuantFormat::Nf4 => unreachable!("NF4 has its own GEMV"),
            QuantFormat::Q4_K => unreachable!("Q4_K has its own loop"),
        };
        acc += (d * dx) * dot as f32;
        if format == QuantFormat::Q4_1 {
            min_acc += f16_at(b, 2) * sx;
        }
    }
    acc + min_acc
}

/// The 6-bit scales and mins of a Q4_K super-block's 8 sub-blocks, unpacked from its 12
/// `scales` bytes `s` (bytes 0-3 hold scales 0-3 in their low 6 bits and the top 2 bits of
/// scales 4-7; bytes 4-7 the same for the mins; bytes 8-11 the low 4 bits of scales 4-7 in their
/// low nibble and of mins 4-7 in their high nibble), four at a time in 32-bit words as llama.cpp
/// does: the words' little-endian bytes are scales 0-3, scales 4-7, mins 0-3, mins 4-7.
///
/// # Panics
/// When `s` holds fewer than 12 bytes.
#[inline(always)]
fn q4k_scale_words(s: &[u8]) -> [u32; 4] {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a, b, c) = (word(0), word(1), word(2));
    [a & LOW6, (c & LOW4) | (((a >> 6) & LOW2) << 4), b & LOW6, ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4)]
}

/// One Q4_K output, portably: per sub-block `j` the exact integer dot `Σ q · x_q` scaled by
/// `(d · sc_j) · d_x`, and the min term `(dmin · m_j) · s_x`, each summed in block order.
fn dot_portable_q4k(w: &[u8], xq: &[i8], xds: &[f32]) -> f32 {
    const SB: usize = ggml::K_BLOCK;
    let (mut acc, mut min_acc) = (0.0f32, 0.0f32);
    let blocks = w.chunks_exact(ggml::Q4_K_BYTES).zip(xq.chunks_exact(SB)).zip(xds.chunks_exact(2 * SB / QK));
    for ((b, x), ds) in blocks {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let words = q4k_scale_words(&b[4..16]);
        let byte = |k: usize| f32::from((words[k / 4] >> (8 * (k % 4))) as u8);
        for j in 0..SB / QK {
            let (c, shift) = (j / 2, 4 * (j % 2));
            let qs = &b[16 + 32 * c..48 + 32 * c];
            let dot: i32 = qs
                .iter()
                .zip(&x[QK * j..QK * (j + 1)])
                .map(|(&q, &x)| i32::from((q >> shift) & 0x0f) * i32::from(x))
                .sum();
            acc += ((d * byte(j)) * ds[2 * j]) * dot as f32;
            min_acc += (dmin * byte(8 + j)) * ds[2 * j + 1];
        }
    }
    acc - min_acc
}

// The AVX-512 intrinsics used here are stable since Rust 1.89 (the workspace's MSRV).
// Index loops over the small register arrays read better than iterator chains here.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    /// How far ahead of the block being multiplied each weight row is prefetched (8 cache lines:
    /// 15 Q8_0 or 28 Q4_0 blocks). On a model's worth of Q8_0 weights (`cargo bench -p
    /// afinar-engine --bench kernels stream`, one thread) 256 to 1024 bytes were all faster than
    /// no prefetch, 512 among the best (measured on a busy 2-core VM, so only roughly).
    pub(super) const PREFETCH_BYTES: usize = 512;

    /// The f16 at `p` as f32 (F16C; exact).
    #[inline(always)]
    pub(super) unsafe fn f16(p: *const u8) -> f32 {
        // SAFETY (caller): `p` points to 2 readable bytes; F16C is enabled in the callers.
        unsafe {
            let h = std::ptr::read_unaligned(p.cast::<u16>());
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
        }
    }

    /// The 32 four-bit values of a Q4 block's 16 bytes at `p`, in element order (low nibbles are
    /// elements 0..16, high nibbles 16..32), as unsigned bytes.
    #[inline(always)]
    pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
        // SAFETY (caller): `p` points to 16 readable bytes; AVX2 is enabled in the callers.
        unsafe {
            let v = _mm_loadu_si128(p.cast());
            let both = _mm256_set_m128i(_mm_srli_epi16::<4>(v), v);
            _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
        }
    }

    /// Horizontal sum of 8 f32 lanes.
    #[inline(always)]
    pub(super) unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: register-only operations; AVX is enabled in the callers.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    /// `O` outputs of format `F` (0 = Q8_0, 1 = Q4_0, 2 = Q4_1). Blocks go two at a time
    /// through 64-byte `vpdpbusd`s, which give the exact integer dots of both blocks in 8 lanes
    /// each; the lanes are scaled by `d_w · d_x` of their block and summed in f32 lanes. An odd
    /// last block takes the same steps on 32 bytes.
    ///
    /// Q8_0 multiplies `w + 128` (unsigned) by `x` starting from `−128 · x` per lane; Q4_0
    /// multiplies the nibbles `q` by `x` starting from `−8 · x` per lane (so the lanes hold
    /// `Σ (q − 8) x`); Q4_1 adds `m_w · s_x` per block.
    ///
    /// # Safety
    /// AVX-512F/VL/VNNI, AVX2, FMA and F16C must be available; `wb` must hold `O` rows of
    /// `xds.len() / 2` blocks at stride `rb` bytes and `xq` `16 · xds.len()` values.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn dots<const O: usize, const F: u8>(
        wb: &[u8],
        rb: usize,
        xq: &[i8],
        xds: &[f32],
        res: &mut [f32; 4],
    ) {
        let nb = xds.len() / 2;
        let bb = match F {
            0 => 34,
            1 => 18,
            _ => 20,
        };
        let wp = wb.as_ptr();
        let mut acc = [_mm512_setzero_ps(); O];
        let mut acc_m = [_mm_setzero_ps(); O];
        let zero = _mm512_setzero_si512();
        // Lane j of the integer dots belongs to block j / 8 of the pair: the pair's scales sit in
        // lanes 0 and 2 of `[d_a·dx_a, ·, d_b·dx_b, ·]`.
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
        // Nibble bytes: [a | b] and [a >> 4 | b >> 4] to [a_lo, a_hi, b_lo, b_hi] (qwords).
        let order = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
        let low4 = _mm512_set1_epi8(0x0f);
        let bias = _mm512_set1_epi8(if F == 0 { -128 } else { 8 });
        // SAFETY: block b of row j lies at wp + j · rb + b · bb, inside `wb` for b < nb and
        // j < O; activation block b is xq[32 b..32 b + 32] and xds[2 b..2 b + 2] (see the
        // contract). All loads are unaligned loads within those ranges.
        unsafe {
            let mut b = 0;
            while b + 2 <= nb {
                let xv = _mm512_loadu_si512(xq.as_ptr().add(b * 32).cast());
                let xs4 = _mm_loadu_ps(xds.as_ptr().add(2 * b));
                // Q8_0: −128 · Σ x; Q4_0: −8 · Σ x per lane (vpdpbusd reads `bias` unsigned).
                let start =
                    if F == 2 { zero } else { _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, xv)) };
                for j in 0..O {
                    let pa = wp.add(j * rb + b * bb);
                    let pb = pa.add(bb);
                    // Software prefetch of this row `PREFETCH_BYTES` ahead: in generation the
                    // weights stream from L3 or memory, and the O interleaved rows are more
                    // streams than the hardware prefetcher keeps ahead of. A pair of Q8_0 blocks
                    // (68 bytes) can span two new cache lines, so it prefetches two. Prefetches
                    // never fault, so running past the end of the matrix is harmless.
                    _mm_prefetch::<_MM_HINT_T0>(pa.wrapping_add(PREFETCH_BYTES).cast());
                    if F == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(pa.wrapping_add(PREFETCH_BYTES + 64).cast());
                    }
                    // [d_a, m_a, d_b, m_b] (Q4_1) or [d_a, 0, d_b, 0] as f16, then f32.
                    let h = if F == 2 {
                        let v = _mm_cvtsi32_si128(std::ptr::read_unaligned(pa.cast::<i32>()));
                        _mm_insert_epi32::<1>(v, std::ptr::read_unaligned(pb.cast::<i32>()))
                    } else {
                        let v = _mm_cvtsi32_si128(i32::from(std::ptr::read_unaligned(pa.cast::<u16>())));
                        _mm_insert_epi16::<2>(v, i32::from(std::ptr::read_unaligned(pb.cast::<u16>())))
                    };
                    let sc = _mm_mul_ps(_mm_cvtph_ps(h), xs4);
                    if F == 2 {
                        acc_m[j] = _mm_add_ps(acc_m[j], sc);
                    }
                    let dot = match F {
                        0 => {
                            let wa = _mm256_loadu_si256(pa.add(2).cast());
                            let wb = _mm256_loadu_si256(pb.add(2).cast());
                            let wv = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(wa), wb);
                            _mm512_dpbusd_epi32(start, _mm512_xor_si512(wv, bias), xv)
                        }
                        _ => {
                            let off = if F == 1 { 2 } else { 4 };
                            let ab = _mm256_loadu2_m128i(pb.add(off).cast(), pa.add(off).cast());
                            let hi = _mm256_srli_epi16::<4>(ab);
                            let q = _mm512_permutex2var_epi64(
                                _mm512_castsi256_si512(ab),
                                order,
                                _mm512_castsi256_si512(hi),
                            );
                            _mm512_dpbusd_epi32(start, _mm512_and_si512(q, low4), xv)
                        }
                    };
                    let scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(sc));
                    acc[j] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[j]);
                }
                b += 2;
            }
            let mut tail = [0.0f32; O];
            if b < nb {
                let xv = _mm256_loadu_si256(xq.as_ptr().add(b * 32).cast());
                let (dx, sx) = (*xds.get_unchecked(2 * b), *xds.get_unchecked(2 * b + 1));
                let z = _mm256_setzero_si256();
                let start = if F == 2 {
                    z
                } else {
                    let bias = _mm256_set1_epi8(if F == 0 { -128 } else { 8 });
                    _mm256_sub_epi32(z, _mm256_dpbusd_epi32(z, bias, xv))
                };
                for j in 0..O {
                    let blk = wp.add(j * rb + b * bb);
                    let dot = match F {
                        0 => {
                            let wv = _mm256_loadu_si256(blk.add(2).cast());
                            _mm256_dpbusd_epi32(start, _mm256_xor_si256(wv, _mm256_set1_epi8(-128)), xv)
                        }
                        1 => _mm256_dpbusd_epi32(start, nibbles(blk.add(2)), xv),
                        _ => {
                            tail[j] = f16(blk.add(2)) * sx;
                            _mm256_dpbusd_epi32(start, nibbles(blk.add(4)), xv)
                        }
                    };
                    let v = _mm256_mul_ps(_mm256_set1_ps(f16(blk) * dx), _mm256_cvtepi32_ps(dot));
                    tail[j] += hsum(v);
                }
            }
            for j in 0..O {
                // Q4_1's offset terms sit in lanes 1 and 3 of `acc_m`.
                let m =
                    _mm_add_ss(_mm_movehdup_ps(acc_m[j]), _mm_movehl_ps(acc_m[j], _mm_movehdup_ps(acc_m[j])));
                let m = if F == 2 { _mm_cvtss_f32(m) } else { 0.0 };
                res[j] = _mm512_reduce_add_ps(acc[j]) + m + tail[j];
            }
        }
    }

    /// The scales `d_x` and the sums `s_x` of the 8 activation blocks of one Q4_K super-block,
    /// 8 lanes each, from their 16 interleaved floats `[d₀, s₀, d₁, s₁, …]` at `p`.
    #[inline(always)]
    pub(super) unsafe fn split_ds(p: *const f32) -> (__m256, __m256) {
        // SAFETY (caller): `p` points to 16 readable f32; AVX2 is enabled in the callers.
        unsafe {
            let a = _mm256_loadu_ps(p); // d0 s0 d1 s1 | d2 s2 d3 s3
            let b = _mm256_loadu_ps(p.add(8)); // d4 s4 d5 s5 | d6 s6 d7 s7
                                               // Per 128-bit lane: [d0 d1 d4 d5 | d2 d3 d6 d7], then 64-bit pairs 0, 2, 1, 3.
            let d = _mm256_castps_pd(_mm256_shuffle_ps::<0b10_00_10_00>(a, b));
            let s = _mm256_castps_pd(_mm256_shuffle_ps::<0b11_01_11_01>(a, b));
            (
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(d)),
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(s)),
            )
        }
    }

    /// For the Q4_K super-block at `p`: per sub-block `j`, `(d · sc_j) · d_x` and
    /// `(dmin · m_j) · s_x` (8 lanes each), given the activation blocks' `d_x` and `s_x`
    /// ([`split_ds`]).
    #[inline(always)]
    pub(super) unsafe fn q4k_scales(p: *const u8, dx: __m256, sx: __m256) -> (__m256, __m256) {
        // SAFETY (caller): `p` points to a whole 144-byte super-block; AVX2 and F16C are enabled
        // in the callers.
        unsafe {
            let w = super::q4k_scale_words(std::slice::from_raw_parts(p.add(4), 12));
            let v = _mm_set_epi32(w[3] as i32, w[2] as i32, w[1] as i32, w[0] as i32);
            let sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
            let mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(v)));
            let (d, dmin) = (_mm256_set1_ps(f16(p)), _mm256_set1_ps(f16(p.add(2))));
            (_mm256_mul_ps(_mm256_mul_ps(d, sc), dx), _mm256_mul_ps(_mm256_mul_ps(dmin, mn), sx))
        }
    }

    /// `O` outputs of Q4_K, one 256-value super-block at a time: its scales and mins are
    /// unpacked once per row ([`q4k_scales`]), and each 32-byte run of `qs` holds two
    /// sub-blocks (low and high nibbles) that go through one 64-byte `vpdpbusd` against the
    /// matching 64 activation bytes, giving the exact integer dots of both in 8 lanes each; the
    /// lanes are scaled by `(d · sc_j) · d_x` of their sub-block and summed in f32 lanes. The
    /// mins subtract `(dmin · m_j) · s_x`, 8 sub-blocks at a time.
    ///
    /// # Safety
    /// AVX-512F/VL/VNNI, AVX2, FMA and F16C must be available; `wb` must hold `O` rows of
    /// `xds.len() / 16` super-blocks at stride `rb` bytes and `xq` `16 · xds.len()` values.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn dots_q4k<const O: usize>(wb: &[u8], rb: usize, xq: &[i8], xds: &[f32], res: &mut [f32; 4]) {
        let ns = xds.len() / 16;
        let wp = wb.as_ptr();
        let mut acc = [_mm512_setzero_ps(); O];
        let mut acc_m = [_mm256_setzero_ps(); O];
        let zero = _mm512_setzero_si512();
        let low4 = _mm512_set1_epi8(0x0f);
        // Lanes 0..8 of the dots of `qs` run c belong to sub-block 2c, lanes 8..16 to 2c + 1.
        let spread = [
            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
            _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
            _mm512_setr_epi32(4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5),
            _mm512_setr_epi32(6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7),
        ];
        // SAFETY: super-block s of row j lies at wp + j · rb + 144 s, inside `wb` for s < ns and
        // j < O; its activations are xq[256 s..256 s + 256] and xds[16 s..16 s + 16] (see the
        // contract). All loads are unaligned loads within those ranges.
        unsafe {
            for s in 0..ns {
                let (dx, sx) = split_ds(xds.as_ptr().add(16 * s));
                let xp = xq.as_ptr().add(256 * s);
                let xv = [
                    _mm512_loadu_si512(xp.cast()),
                    _mm512_loadu_si512(xp.add(64).cast()),
                    _mm512_loadu_si512(xp.add(128).cast()),
                    _mm512_loadu_si512(xp.add(192).cast()),
                ];
                for j in 0..O {
                    let p = wp.add(j * rb + 144 * s);
                    // Prefetch this row ahead, as in `dots`: a super-block spans up to three
                    // cache lines. Prefetches never fault.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES).cast());
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES + 64).cast());
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES + 128).cast());
                    let (scale, min) = q4k_scales(p, dx, sx);
                    acc_m[j] = _mm256_add_ps(acc_m[j], min);
                    let scale = _mm512_castps256_ps512(scale);
                    for c in 0..4 {
                        let v = _mm256_loadu_si256(p.add(16 + 32 * c).cast());
                        let both =
                            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(v), _mm256_srli_epi16::<4>(v));
                        let dot = _mm512_dpbusd_epi32(zero, _mm512_and_si512(both, low4), xv[c]);
                        let sc = _mm512_permutexvar_ps(spread[c], scale);
                        acc[j] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(dot), acc[j]);
                    }
                }
            }
            for j in 0..O {
                res[j] = _mm512_reduce_add_ps(acc[j]) - hsum(acc_m[j]);
            }
        }
    }
}

// Index loops over the small register arrays read better than iterator chains here.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::vnni::{f16, hsum, nibbles, q4k_scales, split_ds, PREFETCH_BYTES};

    /// The exact dot of unsigned bytes `u` and signed bytes `s` in 8 i32 lanes (lane `i` holds
    /// bytes `4i..4i + 4`): `vpmaddubsw` to i16 pairs, then `vpmaddwd` with ones. The pairs do not
    /// saturate as long as `|u| · |s| ≤ 128 · 127` per byte, which every caller keeps.
    #[inline(always)]
    unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: register-only operations; AVX2 is enabled in the callers.
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)) }
    }

    /// `O` outputs of format `F` (0 = Q8_0, 1 = Q4_0, 2 = Q4_1), one 32-value block at a time, as
    /// llama.cpp does on AVX2: the exact integer dot of a weight block with its activation block
    /// in 8 i32 lanes, converted to f32 and accumulated with `d_w · d_x` by FMA.
    ///
    /// Q8_0 uses the sign trick (`|w|` unsigned times `x · sign(w)`, the same products; `w = −128`
    /// reads as 128); Q4_0 multiplies the nibbles `q` by `x` and subtracts `8 · x` per lane,
    /// computed once per activation block (so the lanes hold `Σ (q − 8) x`); Q4_1 adds
    /// `m_w · s_x` per block. Activations lie in −127..=127 (see `quantize_acts`), so no `i16`
    /// pair saturates: at most `2 · 128 · 127`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `wb` must hold `O` rows of `xds.len() / 2` blocks at
    /// stride `rb` bytes and `xq` `16 · xds.len()` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dots<const O: usize, const F: u8>(
        wb: &[u8],
        rb: usize,
        xq: &[i8],
        xds: &[f32],
        res: &mut [f32; 4],
    ) {
        let nb = xds.len() / 2;
        let bb = match F {
            0 => 34,
            1 => 18,
            _ => 20,
        };
        let wp = wb.as_ptr();
        let mut acc = [_mm256_setzero_ps(); O];
        let mut acc_m = [0.0f32; O];
        // SAFETY: block b of row j lies at wp + j · rb + b · bb, inside `wb` for b < nb and
        // j < O; activation block b is xq[32 b..32 b + 32] and xds[2 b..2 b + 2] (see the
        // contract). All loads are unaligned loads within those ranges.
        unsafe {
            for b in 0..nb {
                let xv = _mm256_loadu_si256(xq.as_ptr().add(b * 32).cast());
                let (dx, sx) = (*xds.get_unchecked(2 * b), *xds.get_unchecked(2 * b + 1));
                // Q4_0: 8 · Σ x per lane, shared by the O rows.
                let off = if F == 1 { dot_u8_i8(_mm256_set1_epi8(8), xv) } else { _mm256_setzero_si256() };
                for j in 0..O {
                    let p = wp.add(j * rb + b * bb);
                    // Software prefetch of this row ahead, as in the VNNI kernel (a block is at
                    // most 34 bytes, so one line per block keeps up). Prefetches never fault.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES).cast());
                    let dot = match F {
                        0 => {
                            let w = _mm256_loadu_si256(p.add(2).cast());
                            dot_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w))
                        }
                        1 => _mm256_sub_epi32(dot_u8_i8(nibbles(p.add(2)), xv), off),
                        _ => {
                            acc_m[j] += f16(p.add(2)) * sx;
                            dot_u8_i8(nibbles(p.add(4)), xv)
                        }
                    };
                    let scale = _mm256_set1_ps(f16(p) * dx);
                    acc[j] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc[j]);
                }
            }
            for j in 0..O {
                res[j] = hsum(acc[j]) + acc_m[j];
            }
        }
    }

    /// `O` outputs of Q4_K, one 256-value super-block at a time: its scales and mins are
    /// unpacked once per row ([`q4k_scales`]), each 32-byte run of `qs` holds two sub-blocks
    /// (low and high nibbles) whose exact integer dots with their activation blocks
    /// (`vpmaddubsw` + `vpmaddwd`; nibbles are at most 15, so no `i16` pair saturates) are
    /// converted to f32 and accumulated with `(d · sc_j) · d_x` by FMA. The mins subtract
    /// `(dmin · m_j) · s_x`, 8 sub-blocks at a time.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `wb` must hold `O` rows of `xds.len() / 16`
    /// super-blocks at stride `rb` bytes and `xq` `16 · xds.len()` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dots_q4k<const O: usize>(wb: &[u8], rb: usize, xq: &[i8], xds: &[f32], res: &mut [f32; 4]) {
        let ns = xds.len() / 16;
        let wp = wb.as_ptr();
        let mut acc = [_mm256_setzero_ps(); O];
        let mut acc_m = [_mm256_setzero_ps(); O];
        let low4 = _mm256_set1_epi8(0x0f);
        // SAFETY: super-block s of row j lies at wp + j · rb + 144 s, inside `wb` for s < ns and
        // j < O; its activations are xq[256 s..256 s + 256] and xds[16 s..16 s + 16] (see the
        // contract). All loads are unaligned loads within those ranges.
        unsafe {
            for s in 0..ns {
                let (dx, sx) = split_ds(xds.as_ptr().add(16 * s));
                let xp = xq.as_ptr().add(256 * s);
                for j in 0..O {
                    let p = wp.add(j * rb + 144 * s);
                    // Prefetch this row ahead, as in `dots`: a super-block spans up to three
                    // cache lines. Prefetches never fault.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES).cast());
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES + 64).cast());
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES + 128).cast());
                    let (scale, min) = q4k_scales(p, dx, sx);
                    acc_m[j] = _mm256_add_ps(acc_m[j], min);
                    for c in 0..4 {
                        let v = _mm256_loadu_si256(p.add(16 + 32 * c).cast());
                        let lo = _mm256_and_si256(v, low4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4);
                        let x0 = _mm256_loadu_si256(xp.add(64 * c).cast());
                        let x1 = _mm256_loadu_si256(xp.add(64 * c + 32).cast());
                        let s0 = _mm256_permutevar8x32_ps(scale, _mm256_set1_epi32(2 * c as i32));
                        let s1 = _mm256_permutevar8x32_ps(scale, _mm256_set1_epi32(2 * c as i32 + 1));
                        acc[j] = _mm256_fmadd_ps(s0, _mm256_cvtepi32_ps(dot_u8_i8(lo, x0)), acc[j]);
                        acc[j] = _mm256_fmadd_ps(s1, _mm256_cvtepi32_ps(dot_u8_i8(hi, x1)), acc[j]);
                    }
                }
            }
            for j in 0..O {
                res[j] = hsum(acc[j]) - hsum(acc_m[j]);
            }
        }
    }
}
