//! NF4 weights as QLoRA defines them and bitsandbytes stores them (`quantize_4bit` with
//! `quant_type='nf4'`, `blocksize=64`, `compress_statistics=True`), kept 4-bit in memory.
//!
//! **Format.** The matrix is taken as one flat row-major array of `n = rows · cols` values.
//! * Every block of [`BLOCK`] = 64 consecutive values has a scale, its largest magnitude
//!   `absmax`; each value is stored as the index (0..16) of the [`NF4_CODE`] entry nearest to
//!   `value / absmax` (ties to the lower index, as bitsandbytes' `bucketize` over midpoints).
//! * Two indices per byte: value `2i` in the **high** nibble of byte `i`, value `2i + 1` in the
//!   low nibble (bitsandbytes' packing).
//! * **Double quantization** of the scales: `offset = mean(absmax)` over the whole matrix (in f32
//!   as `torch.mean` sums on the CPU, so that it is bitsandbytes' offset bit for bit), and the
//!   centred scales `absmax − offset` are quantized in blocks of [`STATS_BLOCK`] = 256 with
//!   bitsandbytes' blockwise 8-bit dynamic quantization: per block an f32 `absmax₂ = max |·|`,
//!   and per scale an index (0..256) into the [`dynamic_map`] for `(absmax − offset) / absmax₂`,
//!   chosen as bitsandbytes' CPU kernel does: through a 65536-entry lookup table of nearest
//!   entries (exactly the nearest except between the map's densest entries near zero).
//! * Dequantization: `absmax ≈ map[c] · absmax₂ + offset`, `value = NF4_CODE[q] · absmax`, in f32
//!   in that order, as bitsandbytes computes it on the CPU (so dequantized values are equal to
//!   its `dequantize_4bit` output, not only close).
//!
//! **Storage** (the engine's `QuantFormat::Nf4`): one byte buffer holding, in order, the packed
//! nibbles (`n / 2` bytes), the scale codes (`n / 64` bytes), the nested scales `absmax₂`
//! (`⌈n / 16384⌉` little-endian f32) and the offset (one little-endian f32): about
//! 0.5 + 1/64 + 4/16384 bytes per value (4.127 bits), against 4 for f32 and 2 for bf16.
//! Columns must be a multiple of 64 so that no block straddles two rows (true of every Llama
//! and SmolLM2 projection); rows are then independent for dequantization, which is what the tile
//! loop of the matmul and embedding lookups need.
//!
//! The products on NF4 weights (tiles dequantized row by row with [`Nf4Ref::dequantize_row`],
//! the decode GEMV) live in the engine's CPU backend; this module holds the format itself.

use std::sync::OnceLock;

use rayon::prelude::*;

/// Values per absmax block.
pub const BLOCK: usize = 64;

/// Scales per block of the double quantization.
pub const STATS_BLOCK: usize = 256;

/// The 16 NF4 values (bitsandbytes `get_4bit_type('nf4')`): quantiles of N(0, 1) normalised to
/// [−1, 1], with an exact zero. Written with bitsandbytes' digits (its f64 printout), which
/// round to the same f32 values.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// Bytes of an NF4 matrix of `rows × cols` values (see the module docs), `None` unless `cols` is
/// a multiple of 64 (or the size overflows).
pub fn matrix_bytes(rows: usize, cols: usize) -> Option<usize> {
    if !cols.is_multiple_of(BLOCK) {
        return None;
    }
    let n = rows.checked_mul(cols)?;
    let scales = n / BLOCK;
    (n / 2).checked_add(scales)?.checked_add(4 * scales.div_ceil(STATS_BLOCK))?.checked_add(4)
}

/// Storage bytes per value of an NF4 `[rows, cols]` matrix (≈ 0.516; `NaN` for an empty one).
pub fn bytes_per_value(rows: usize, cols: usize) -> f64 {
    matrix_bytes(rows, cols).map_or(f64::NAN, |b| b as f64 / (rows * cols) as f64)
}

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True)`: 7 exponent bits
/// as powers of ten, linearly spaced fractions), sorted: 256 values from −0.99297 to 1.
pub fn dynamic_map() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(|| {
        // 10^(i − 6) for i = 0..7, as literals (Python's `10 ** -6` is the correctly rounded
        // double, which is what a literal gives).
        const POW10: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
        let mut map = [0.0f32; 256];
        let mut n = 0;
        for (i, &p) in POW10.iter().enumerate() {
            let items = (1usize << i) + 1;
            let b = linspace_f32(0.1, 1.0, items);
            for w in b.windows(2) {
                // Means and their scaling in f32 (a Python float times an f32 tensor).
                let mean = (w[0] + w[1]) / 2.0;
                map[n] = p as f32 * mean;
                map[n + 1] = -(p as f32) * mean;
                n += 2;
            }
        }
        map[n] = 0.0;
        map[n + 1] = 1.0;
        debug_assert_eq!(n + 2, 256);
        map.sort_by(f32::total_cmp);
        map
    })
}

/// `torch.linspace(start, end, steps, dtype=float32)` as PyTorch's CPU kernel computes it: an
/// f32 step, the first half counted up from `start`, the second half down from `end`, each
/// value one fused multiply-add.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// Midpoints between consecutive NF4 values, computed in f32 as bitsandbytes does.
fn nf4_bounds() -> [f32; 15] {
    let mut b = [0.0f32; 15];
    for (i, v) in b.iter_mut().enumerate() {
        *v = (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0;
    }
    b
}

/// A borrowed NF4 matrix, split into its parts.
#[derive(Clone, Copy, Debug)]
pub struct Nf4Ref<'a> {
    /// Packed indices, `rows · cols / 2` bytes (high nibble first).
    pub packed: &'a [u8],
    /// Scale codes into [`dynamic_map`], one per 64 values.
    pub codes: &'a [u8],
    /// Nested scales `absmax₂`, little-endian f32, one per 256 scale codes.
    pub scales: &'a [u8],
    /// Mean of the scales, added back after dequantizing them.
    pub offset: f32,
    /// Number of rows.
    pub rows: usize,
    /// Values per row (a multiple of 64).
    pub cols: usize,
}

impl<'a> Nf4Ref<'a> {
    /// Splits an NF4 buffer of a `[rows, cols]` matrix into its parts.
    ///
    /// # Panics
    /// When `cols` is not a multiple of 64 or `data` does not have [`matrix_bytes`] bytes.
    pub fn new(data: &'a [u8], rows: usize, cols: usize) -> Self {
        let total = matrix_bytes(rows, cols).expect("NF4 columns must be a multiple of 64");
        assert_eq!(data.len(), total, "NF4 data does not hold [{rows}, {cols}]");
        let n = rows * cols;
        let (packed, rest) = data.split_at(n / 2);
        let (codes, rest) = rest.split_at(n / BLOCK);
        let (scales, offset) = rest.split_at(rest.len() - 4);
        let offset = f32::from_le_bytes(offset.try_into().expect("4 bytes"));
        Nf4Ref { packed, codes, scales, offset, rows, cols }
    }

    /// Nested scale `j` (of the 256-scale block `j`).
    #[inline]
    pub fn nested_scale(&self, j: usize) -> f32 {
        f32::from_le_bytes(self.scales[4 * j..4 * j + 4].try_into().expect("4 bytes"))
    }

    /// The dequantized absmax of 64-value block `i` (flat index).
    #[inline]
    pub fn absmax(&self, i: usize) -> f32 {
        dynamic_map()[usize::from(self.codes[i])] * self.nested_scale(i / STATS_BLOCK) + self.offset
    }

    /// Dequantizes row `r` into `out` (`cols` values), each value converted by `convert`:
    /// `NF4_CODE[q] · absmax` in f32, as bitsandbytes' `dequantize_4bit` on the CPU.
    ///
    /// # Panics
    /// When `r` is out of range or `out` is shorter than a row.
    #[inline]
    pub fn dequantize_row<T>(&self, r: usize, out: &mut [T], convert: impl Fn(f32) -> T) {
        let cols = self.cols;
        let b0 = r * cols / BLOCK;
        let packed = &self.packed[r * cols / 2..(r + 1) * cols / 2];
        for (b, (p, o)) in packed.chunks_exact(BLOCK / 2).zip(out.chunks_exact_mut(BLOCK)).enumerate() {
            let a = self.absmax(b0 + b);
            for (&byte, o) in p.iter().zip(o.chunks_exact_mut(2)) {
                o[0] = convert(NF4_CODE[usize::from(byte >> 4)] * a);
                o[1] = convert(NF4_CODE[usize::from(byte & 0x0f)] * a);
            }
        }
    }
}

// ---- quantization ------------------------------------------------------------------------------

/// Quantizes a `[rows, cols]` row-major matrix to NF4 with double-quantized scales (the storage
/// layout of the module docs).
///
/// # Panics
/// When `cols` is not a multiple of 64 or `x` does not hold `rows · cols` values.
pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    let total = matrix_bytes(rows, cols).expect("NF4 columns must be a multiple of 64");
    let n = rows * cols;
    assert_eq!(x.len(), n, "{} values for a [{rows}, {cols}] matrix", x.len());
    let nblocks = n / BLOCK;
    let mut out = vec![0u8; total];
    let (packed, rest) = out.split_at_mut(n / 2);
    let (codes, rest) = rest.split_at_mut(nblocks);
    let (scales, offset_bytes) = rest.split_at_mut(rest.len() - 4);

    // 1. Absmax per block and the packed 4-bit indices.
    let mut absmax = vec![0.0f32; nblocks];
    let bounds = nf4_bounds();
    packed
        .par_chunks_mut(BLOCK / 2)
        .zip(x.par_chunks(BLOCK))
        .zip(absmax.par_iter_mut())
        .for_each(|((p, x), a)| *a = quantize_block(x, p, &bounds));

    // 2. Double quantization of the scales.
    let offset = mean_f32(&absmax);
    offset_bytes.copy_from_slice(&offset.to_le_bytes());
    let map = dynamic_map();
    codes
        .par_chunks_mut(STATS_BLOCK)
        .zip(absmax.par_chunks(STATS_BLOCK))
        .zip(scales.par_chunks_mut(4))
        .for_each(|((c, a), s)| {
            let centred: Vec<f32> = a.iter().map(|&v| v - offset).collect();
            let amax2 = centred.iter().fold(-f32::MAX, |m, v| m.max(v.abs()));
            s.copy_from_slice(&amax2.to_le_bytes());
            for (c, &v) in c.iter_mut().zip(&centred) {
                *c = nearest_dynamic(map, v, amax2);
            }
        });
    out
}

/// One block of 64 values: writes the 32 packed bytes, returns the absmax.
fn quantize_block(x: &[f32], packed: &mut [u8], bounds: &[f32; 15]) -> f32 {
    let absmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // bitsandbytes multiplies by the reciprocal of the absmax clamped away from zero (an all-zero
    // block gives index 7, the exact zero).
    let inv = 1.0 / absmax.max(1e-38);
    let index = |v: f32| {
        let s = (v * inv).clamp(-1.0, 1.0);
        // Number of midpoints strictly below s (`torch.bucketize`, right=False).
        bounds.partition_point(|&b| b < s) as u8
    };
    for (p, pair) in packed.iter_mut().zip(x.chunks_exact(2)) {
        *p = (index(pair[0]) << 4) | index(pair[1]);
    }
    absmax
}

/// `torch.mean` of an f32 vector as PyTorch computes it on the CPU, which is how bitsandbytes
/// takes the offset of the scales: the f32 sum of its `cascade_sum` kernel divided by the count
/// in f32. Matching it bit for bit makes the offset, the nested scales and the scale codes
/// byte-identical to bitsandbytes'. PyTorch sums on one thread below 32768 values (matrices up
/// to 2M values) or when it runs on one thread; above that, it splits the sum across its threads,
/// so its own result depends on its thread count and may differ from this one by an ulp.
fn mean_f32(v: &[f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    torch_sum_f32(v) / v.len() as f32
}

/// Lanes of PyTorch's float vectors in its CPU sum kernel: 8 (AVX2, and AVX512 machines, whose
/// sum kernel PyTorch dispatches to AVX2; NEON).
const TORCH_LANES: usize = 8;

/// An f32 accumulator of PyTorch's cascade sum: a scalar or a vector of lanes.
trait SumAcc: Copy {
    const ZERO: Self;
    fn add(self, other: Self) -> Self;
}

impl SumAcc for f32 {
    const ZERO: Self = 0.0;
    fn add(self, other: Self) -> Self {
        self + other
    }
}

impl SumAcc for [f32; TORCH_LANES] {
    const ZERO: Self = [0.0; TORCH_LANES];
    fn add(mut self, other: Self) -> Self {
        for (a, b) in self.iter_mut().zip(other) {
            *a += b;
        }
        self
    }
}

/// PyTorch's `multi_row_sum`: four interleaved running sums over `size` rows, folded into
/// coarser levels every 16 (or more) rows so that only similar magnitudes are added.
fn multi_row_sum<A: SumAcc>(size: usize, load: impl Fn(usize, usize) -> A) -> [A; 4] {
    const LEVELS: usize = 4;
    let ceil_log2 = if size <= 2 { 1 } else { (usize::BITS - (size - 1).leading_zeros()) as usize };
    let level_power = 4.max(ceil_log2 / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[A::ZERO; 4]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                *a = a.add(load(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let lower = std::mem::replace(&mut acc[j - 1], [A::ZERO; 4]);
            for (a, l) in acc[j].iter_mut().zip(lower) {
                *a = a.add(l);
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for (k, a) in acc[0].iter_mut().enumerate() {
            *a = a.add(load(i, k));
        }
        i += 1;
    }
    let [mut total, rest @ ..] = acc;
    for level in rest {
        for (a, l) in total.iter_mut().zip(level) {
            *a = a.add(l);
        }
    }
    total
}

/// PyTorch's `row_sum`: `size` items as rows of four, the leftovers, then the four sums.
fn row_sum<A: SumAcc>(size: usize, load: impl Fn(usize) -> A) -> A {
    let rows = size / 4;
    let mut p = multi_row_sum(rows, |i, k| load(4 * i + k));
    for i in 4 * rows..size {
        p[0] = p[0].add(load(i));
    }
    let [mut s, a, b, c] = p;
    for x in [a, b, c] {
        s = s.add(x);
    }
    s
}

/// `torch.sum` of a contiguous f32 vector on one CPU thread (`cascade_sum`): vectors of 8
/// summed by [`row_sum`], then the values left over, then the 8 lanes, in f32.
fn torch_sum_f32(x: &[f32]) -> f32 {
    if x.len() < TORCH_LANES {
        return row_sum(x.len(), |i| x[i]);
    }
    let vecs = x.len() / TORCH_LANES;
    let lanes = row_sum(vecs, |i| {
        let mut v = [0.0f32; TORCH_LANES];
        v.copy_from_slice(&x[i * TORCH_LANES..(i + 1) * TORCH_LANES]);
        v
    });
    let mut total = 0.0f32;
    for &v in &x[vecs * TORCH_LANES..] {
        total += v;
    }
    for l in lanes {
        total += l;
    }
    total
}

/// Entries of the lookup table of the 8-bit quantizer.
const LUT_SIZE: usize = 65536;

/// bitsandbytes' CPU 8-bit blockwise quantizer does not search the map: it rounds the
/// normalised value to one of 65536 evenly spaced points of [−1, 1] and looks up the map entry
/// nearest to that point. This is that table: entry `i` is the number of midpoints between
/// consecutive map entries strictly below `−1 + 2i / 65535` (f32 arithmetic as bitsandbytes).
/// Near zero, where map entries are closer than the table's spacing, the code is therefore not
/// always the nearest entry; matching bitsandbytes' codes exactly needs the same table.
fn dynamic_lut() -> &'static [u8; LUT_SIZE] {
    static LUT: OnceLock<Box<[u8; LUT_SIZE]>> = OnceLock::new();
    LUT.get_or_init(|| {
        let map = dynamic_map();
        let mut mid = [0.0f32; 255];
        for (i, m) in mid.iter_mut().enumerate() {
            *m = 0.5 * (map[i] + map[i + 1]);
        }
        let mut lut = Box::new([0u8; LUT_SIZE]);
        let mut code = 0usize;
        for (i, l) in lut.iter_mut().enumerate() {
            let val = -1.0f32 + (2.0f32 * i as f32) / (LUT_SIZE - 1) as f32;
            while code < 255 && mid[code] < val {
                code += 1;
            }
            *l = code as u8;
        }
        lut
    })
}

/// The 8-bit code of `v / amax2` (bitsandbytes' CPU quantizer, see [`dynamic_lut`]). A block whose
/// scales are all equal (`amax2 = 0`, where bitsandbytes would divide by zero) stores the map's
/// zero, which dequantizes to exactly the offset.
fn nearest_dynamic(map: &[f32; 256], v: f32, amax2: f32) -> u8 {
    let normed = v / amax2;
    if amax2 == 0.0 || normed.is_nan() {
        return map.partition_point(|&c| c < 0.0) as u8;
    }
    let normed = normed.clamp(-1.0, 1.0);
    let k = (((normed + 1.0) * 0.5) * 65535.0 + 0.5) as usize;
    dynamic_lut()[k.min(LUT_SIZE - 1)]
}

// ---- dequantization ---------------------------------------------------------------------------

/// The whole matrix as f32 (tests and export; the engine's products dequantize tiles instead),
/// rows in parallel.
pub fn dequantize(w: Nf4Ref<'_>) -> Vec<f32> {
    let mut out = vec![0.0f32; w.rows * w.cols];
    if w.cols > 0 {
        out.par_chunks_mut(w.cols).enumerate().for_each(|(r, row)| w.dequantize_row(r, row, |v| v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `torch.sum` / `torch.mean` of `1/(i+1) + 0.37·(i mod 7)` (f32, one thread, torch 2.15),
    /// as bit patterns; for 5 and 100 values the f64 mean would round differently.
    #[test]
    fn sums_and_means_match_torch() {
        let cases = [
            (5, 0x40bf_7777u32, 0x3f99_2c5fu32),
            (8, 0x4127_ce43, 0x3fa7_ce43),
            (100, 0x42e4_acbd, 0x3f92_5a13),
            (1000, 0x448b_8c04, 0x3f8e_e564),
            (13824, 0x466f_e690, 0x3f8e_29d1),
            (32767, 0x470e_1e58, 0x3f8e_1f74),
        ];
        for (n, sum, mean) in cases {
            let x: Vec<f32> = (0..n).map(|i| (1.0 / (i + 1) as f64 + (i % 7) as f64 * 0.37) as f32).collect();
            assert_eq!(torch_sum_f32(&x).to_bits(), sum, "sum of {n}");
            assert_eq!(mean_f32(&x).to_bits(), mean, "mean of {n}");
        }
    }
}
