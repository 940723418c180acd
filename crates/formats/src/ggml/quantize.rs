//! Quantization: f32 values into the GGML block formats (the inverse of the dequantizers).
//!
//! - Q8_0, Q4_0, Q4_1, Q5_0: one scale (and min) per 32 values, computed with the same f32
//!   operations in the same order as `gguf.quants.quantize` (and llama.cpp's reference
//!   quantizers), so the bytes are identical to theirs (the checkpoint crate's tests check this
//!   against a fixture).
//! - Q4_K and Q6_K: llama.cpp's reference k-quant search (no importance matrix): per 32-value
//!   (Q4_K) or 16-value (Q6_K) sub-block, a scale (and min) fitted by trying a few candidate
//!   scales and keeping the one with the least weighted squared error; the sub-block scales are
//!   then themselves quantized to 6 or 8 bits against one f16 super-block scale. `gguf.quants`
//!   cannot quantize these, so the tests bound the round-trip error instead, and
//!   `scripts/verify/gguf_export.py` checks that llama.cpp reads the files and that llama.cpp's
//!   own quantizer gives the same bytes, block for block.
//!
//! Every kernel takes whole blocks and fills `min(src blocks, dst blocks)` of them; callers check
//! the sizes (the checkpoint crate's `quant::quantize`, the engine's weight upload).

use super::k_quants::scale_min_k4;
use crate::float::{f16_to_f32, f32_to_f16};

/// Below this magnitude a group is treated as all zeros (llama.cpp's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// llama.cpp's `nearest_int`: rounds to nearest, ties to even, for |x| < 2^22 (adding 1.5 · 2^23
/// puts the integer in the low mantissa bits).
#[inline(always)]
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x7f_ffff) as i32 - 0x40_0000
}

fn put_f16(dst: &mut [u8], at: usize, x: f32) {
    dst[at..at + 2].copy_from_slice(&f32_to_f16(x).to_le_bytes());
}

fn f16_round_trip(x: f32) -> f32 {
    f16_to_f32(f32_to_f16(x))
}

/// The first value of largest magnitude in `x` (sign kept) and that magnitude.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// Q8_0: `d = max|x| / 127`, `q = round(x / d)` (half away from zero).
pub fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        put_f16(b, 0, d);
        for (q, &v) in b[2..].iter_mut().zip(x) {
            *q = ((v * id).round() as i8) as u8;
        }
    }
}

/// Q4_0: `d = m / -8` for the value `m` of largest magnitude, `q = min(15, trunc(x / d + 8.5))`.
pub fn quantize_q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(18)) {
        let (max, _) = signed_absmax(x);
        let d = max / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        put_f16(b, 0, d);
        let q = |v: f32| ((v * id + 8.5) as u8).min(15);
        for j in 0..16 {
            b[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
        }
    }
}

/// Q4_1: `d = (max - min) / 15`, `q = min(15, trunc((x - min) / d + 0.5))`, `m = min`.
pub fn quantize_q4_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(20)) {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let min = x.iter().copied().fold(f32::INFINITY, f32::min);
        let d = (max - min) / 15.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        put_f16(b, 0, d);
        put_f16(b, 2, min);
        let q = |v: f32| (((v - min) * id + 0.5) as u8).min(15);
        for j in 0..16 {
            b[4 + j] = q(x[j]) | (q(x[j + 16]) << 4);
        }
    }
}

/// Q5_0: `d = m / -16`, `q = min(31, trunc(x / d + 16.5))`; the fifth bits go to `qh`.
pub fn quantize_q5_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(22)) {
        let (max, _) = signed_absmax(x);
        let d = max / -16.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        put_f16(b, 0, d);
        let q: Vec<u8> = x.iter().map(|&v| ((v * id + 16.5) as u8).min(31)).collect();
        let mut qh = 0u32;
        for (j, &v) in q.iter().enumerate() {
            qh |= u32::from(v >> 4) << j;
        }
        b[2..6].copy_from_slice(&qh.to_le_bytes());
        for j in 0..16 {
            b[6 + j] = (q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4);
        }
    }
}

/// Fits `x ≈ scale · L + min` with `L` in `0..=nmax` and `min ≤ 0`, minimising the weighted
/// squared error: starts from the min/max grid, then tries `nstep + 1` scales around it
/// (`(nmax + rmin + rdelta · k) / (max - min)`), each followed by a least-squares refit of scale
/// and min. Returns `(scale, -min)` and leaves the levels in `levels`.
fn fit_scale_min(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    levels: &mut [u8],
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.iter_mut().for_each(|l| *l = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        levels[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut trial = [0u8; 32];
    let trial = &mut trial[..n];
    for k in 0..=nstep {
        iscale = (rmin + rdelta * k as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            trial[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut err = 0.0f32;
            for i in 0..n {
                let diff = this_scale * trial[i] as f32 + this_min - x[i];
                err += weights[i] * (diff * diff);
            }
            if err < best_error {
                levels.copy_from_slice(trial);
                best_error = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Fits `x ≈ scale · L` with `L` in `-nmax..nmax`, weighting each value by `x²`: the max-magnitude
/// grid, then 18 scales around it (`-(nmax ± 0.1 k) / max`), keeping the least weighted error.
/// Returns the scale and leaves `L + nmax` in `levels`.
fn fit_scale(x: &[f32], nmax: i32, levels: &mut [u8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let set_levels = |iscale: f32, levels: &mut [u8]| {
        for (o, &v) in levels.iter_mut().zip(x) {
            *o = (nmax + nearest_int(iscale * v).clamp(-nmax, nmax - 1)) as u8;
        }
    };
    let iscale = -(nmax as f32) / max;
    set_levels(iscale, levels);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for k in -9..=9 {
        if k == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * k as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            set_levels(iscale, levels);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The 12 bytes holding eight 6-bit scales and mins of Q4_K (layout in
/// [`super::k_quants::dequantize_q4_k`]).
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// Q4_K (144 bytes per 256 values): per 32-value sub-block a scale and min fitted with weights
/// `rms(x) + |x|`, both quantized to 6 bits against the f16 `d` and `dmin`; then every value is
/// re-quantized to 4 bits with the rounded scales.
pub fn quantize_q4_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(256).zip(dst.chunks_exact_mut(144)) {
        let mut levels = [0u8; 256];
        let mut scales = [0f32; 8];
        let mut mins = [0f32; 8];
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for j in 0..8 {
            let xs = &x[32 * j..32 * j + 32];
            let sum_x2 = xs.iter().fold(0.0f32, |s, v| s + v * v);
            let av_x = (sum_x2 / 32.0).sqrt();
            let mut weights = [0f32; 32];
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = av_x + v.abs();
            }
            let (scale, min) =
                fit_scale_min(xs, &weights, 15, -1.0, 0.1, 20, &mut levels[32 * j..32 * j + 32]);
            scales[j] = scale;
            mins[j] = min;
            max_scale = max_scale.max(scale);
            max_min = max_min.max(min);
        }
        let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut ls = [0u8; 8];
        let mut lm = [0u8; 8];
        for j in 0..8 {
            ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
        }
        let packed = pack_scale_min_k4(&ls, &lm);
        put_f16(b, 0, max_scale / 63.0);
        put_f16(b, 2, max_min / 63.0);
        b[4..16].copy_from_slice(&packed);
        let d_all = f16_round_trip(max_scale / 63.0);
        let dmin_all = f16_round_trip(max_min / 63.0);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(&packed, j);
            let d = d_all * f32::from(sc);
            if d == 0.0 {
                continue;
            }
            let dm = dmin_all * f32::from(m);
            for i in 32 * j..32 * j + 32 {
                levels[i] = nearest_int((x[i] + dm) / d).clamp(0, 15) as u8;
            }
        }
        for c in 0..4 {
            for l in 0..32 {
                b[16 + 32 * c + l] = levels[64 * c + l] | (levels[64 * c + l + 32] << 4);
            }
        }
    }
}

/// Q6_K (210 bytes per 256 values): per 16-value sub-block a signed scale fitted with weights
/// `x²`, the scales quantized to i8 against the f16 `d`; then every value is re-quantized to
/// 6 bits (`-32..=31`) with the rounded scales.
pub fn quantize_q6_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(256).zip(dst.chunks_exact_mut(210)) {
        let mut levels = [0u8; 256];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for g in 0..16 {
            let s = fit_scale(&x[16 * g..16 * g + 16], 32, &mut levels[16 * g..16 * g + 16]);
            scales[g] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        b.fill(0);
        if max_abs_scale < GROUP_MAX_EPS {
            continue;
        }
        let iscale = -128.0 / max_scale;
        put_f16(b, 208, 1.0 / iscale);
        let d_all = f16_round_trip(1.0 / iscale);
        for g in 0..16 {
            let sc = nearest_int(iscale * scales[g]).min(127) as i8;
            b[192 + g] = sc as u8;
            let d = d_all * f32::from(sc);
            if d == 0.0 {
                continue;
            }
            for i in 16 * g..16 * g + 16 {
                levels[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as u8;
            }
        }
        for h in 0..2 {
            let (ql, qh) = (64 * h, 128 + 32 * h);
            for l in 0..32 {
                let q = |k: usize| levels[128 * h + 32 * k + l];
                b[ql + l] = (q(0) & 0x0f) | ((q(2) & 0x0f) << 4);
                b[ql + l + 32] = (q(1) & 0x0f) | ((q(3) & 0x0f) << 4);
                b[qh + l] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        assert_eq!([0.5, 1.5, 2.5, -0.5, -1.5, 3.49].map(nearest_int), [0, 2, 2, 0, -2, 3]);
    }
}
