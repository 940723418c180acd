//! Q5_0 and Q5_1: blocks of 32 five-bit values.
//!
//! Low nibbles as in Q4 (element `j` low nibble of byte `j`, element `j + 16` high nibble); the
//! fifth bit of element `j` is bit `j` of the little-endian u32 `qh`.

use super::{blocks, f16_at, out_blocks};

/// Block layout: `d: f16`, `qh: u32`, `qs: [u8; 16]`; element = `d * (q - 16)`. 22 bytes.
pub fn dequantize_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, o) in blocks::<22>(src).zip(out_blocks::<32>(dst)) {
        let d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..16 {
            let q = b[6 + j];
            let lo = (q & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
            let hi = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            o[j] = d * f32::from(lo as i8 - 16);
            o[j + 16] = d * f32::from(hi as i8 - 16);
        }
    }
}

/// Block layout: `d: f16`, `m: f16`, `qh: u32`, `qs: [u8; 16]`; element = `d * q + m`. 24 bytes.
pub fn dequantize_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, o) in blocks::<24>(src).zip(out_blocks::<32>(dst)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for j in 0..16 {
            let q = b[8 + j];
            let lo = (q & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
            let hi = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            o[j] = d * f32::from(lo) + m;
            o[j + 16] = d * f32::from(hi) + m;
        }
    }
}
