//! The "k-quants": 256-element super-blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K).
//!
//! Element indices below are within one super-block. Where sub-blocks have a scale `sc` and a
//! min `mn`, an element is `(d * sc) * q - (dmin * mn)`: the two products first, as the reference
//! computes them, then one subtraction.

use super::{blocks, f16_at, out_blocks};

/// Q2_K, 84 bytes: `scales: [u8; 16]` (low nibble scale, high nibble min, one per 16 elements),
/// `qs: [u8; 64]`, `d: f16`, `dmin: f16`. Element `i = 128h + 32s + l` (h < 2, s < 4, l < 32) is
/// `(qs[32h + l] >> 2s) & 3`.
pub fn dequantize_q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, o) in blocks::<84>(src).zip(out_blocks::<256>(dst)) {
        let d = f16_at(b, 80);
        let dmin = f16_at(b, 82);
        for g in 0..16 {
            let sc = b[g];
            let dl = d * f32::from(sc & 0x0f);
            let ml = dmin * f32::from(sc >> 4);
            let (h, s, l0) = (g / 8, (g % 8) / 2, (g % 2) * 16);
            let qs = &b[16 + 32 * h + l0..16 + 32 * h + l0 + 16];
            let out = &mut o[16 * g..16 * g + 16];
            for (y, &q) in out.iter_mut().zip(qs) {
                *y = dl * f32::from((q >> (2 * s)) & 3) - ml;
            }
        }
    }
}

/// Q3_K, 110 bytes: `hmask: [u8; 32]`, `qs: [u8; 64]`, `scales: [u8; 12]` (sixteen 6-bit
/// scales, offset by 32), `d: f16`. Element `i = 128h + 32s + l` has low bits
/// `(qs[32h + l] >> 2s) & 3`, minus 4 unless bit `4h + s` of `hmask[l]` is set.
pub fn dequantize_q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, o) in blocks::<110>(src).zip(out_blocks::<256>(dst)) {
        let d = f16_at(b, 108);
        let sc = &b[96..108];
        for g in 0..16 {
            let low = if g < 8 { sc[g] & 0x0f } else { sc[g - 8] >> 4 };
            let high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
            let scale = ((low | (high << 4)) as i8) - 32;
            let dl = d * f32::from(scale);
            let (h, s, l0) = (g / 8, (g % 8) / 2, (g % 2) * 16);
            let qs = &b[32 + 32 * h + l0..32 + 32 * h + l0 + 16];
            let hm = &b[l0..l0 + 16];
            let bit = 4 * h + s;
            let out = &mut o[16 * g..16 * g + 16];
            for ((y, &q), &m) in out.iter_mut().zip(qs).zip(hm) {
                let low = ((q >> (2 * s)) & 3) as i8;
                let minus = if (m >> bit) & 1 == 0 { 4 } else { 0 };
                *y = dl * f32::from(low - minus);
            }
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (< 8) of Q4_K/Q5_K from their 12 packed bytes:
/// bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 the same
/// for the mins; bytes 8-11 the low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high nibble).
#[inline(always)]
pub(crate) fn scale_min_k4(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Q4_K, 144 bytes: `d: f16`, `dmin: f16`, `scales: [u8; 12]`, `qs: [u8; 128]`. Sub-block
/// `j = 2c + t` (32 elements) holds nibble `t` of `qs[32c..32c + 32]`.
pub fn dequantize_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, o) in blocks::<144>(src).zip(out_blocks::<256>(dst)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        for j in 0..8 {
            let (sc, mn) = scale_min_k4(scales, j);
            let dl = d * f32::from(sc);
            let ml = dmin * f32::from(mn);
            let (c, t) = (j / 2, j % 2);
            let qs = &b[16 + 32 * c..16 + 32 * c + 32];
            let out = &mut o[32 * j..32 * j + 32];
            for (y, &q) in out.iter_mut().zip(qs) {
                *y = dl * f32::from((q >> (4 * t)) & 0x0f) - ml;
            }
        }
    }
}

/// Q5_K, 176 bytes: `d: f16`, `dmin: f16`, `scales: [u8; 12]`, `qh: [u8; 32]`,
/// `qs: [u8; 128]`. As Q4_K, plus a fifth bit for element `l` of sub-block `j`: bit `j` of
/// `qh[l]`.
pub fn dequantize_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, o) in blocks::<176>(src).zip(out_blocks::<256>(dst)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        let qh = &b[16..48];
        for j in 0..8 {
            let (sc, mn) = scale_min_k4(scales, j);
            let dl = d * f32::from(sc);
            let ml = dmin * f32::from(mn);
            let (c, t) = (j / 2, j % 2);
            let qs = &b[48 + 32 * c..48 + 32 * c + 32];
            let out = &mut o[32 * j..32 * j + 32];
            for ((y, &q), &h) in out.iter_mut().zip(qs).zip(qh) {
                let q = ((q >> (4 * t)) & 0x0f) | (((h >> j) & 1) << 4);
                *y = dl * f32::from(q) - ml;
            }
        }
    }
}

/// Q6_K, 210 bytes: `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d: f16`. Element
/// `i = 128h + 32s + l` (s < 4, l < 32) is `(low | high << 4) - 32` with
/// `low = (ql[64h + 32(s % 2) + l] >> 4(s / 2)) & 15` and `high = (qh[32h + l] >> 2s) & 3`;
/// its scale is `scales[i / 16]`.
pub fn dequantize_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, o) in blocks::<210>(src).zip(out_blocks::<256>(dst)) {
        let d = f16_at(b, 208);
        for g in 0..16 {
            let dl = d * f32::from(b[192 + g] as i8);
            let (h, s, l0) = (g / 8, (g % 8) / 2, (g % 2) * 16);
            let ql_at = 64 * h + 32 * (s % 2) + l0;
            let ql = &b[ql_at..ql_at + 16];
            let qh = &b[128 + 32 * h + l0..128 + 32 * h + l0 + 16];
            let out = &mut o[16 * g..16 * g + 16];
            for ((y, &lo), &hi) in out.iter_mut().zip(ql).zip(qh) {
                let q = ((lo >> (4 * (s / 2))) & 0x0f) | (((hi >> (2 * s)) & 3) << 4);
                *y = dl * f32::from(q as i8 - 32);
            }
        }
    }
}
