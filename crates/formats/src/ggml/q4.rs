//! Q4_0 and Q4_1: blocks of 32 four-bit values.
//!
//! The 16 bytes of nibbles hold element `j` in the low nibble of byte `j` and element `j + 16`
//! in its high nibble.

use super::{blocks, f16_at, out_blocks};

/// Block layout: `d: f16`, `qs: [u8; 16]`; element = `d * (q - 8)`. 18 bytes, 32 values.
pub fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, o) in blocks::<18>(src).zip(out_blocks::<32>(dst)) {
        let d = f16_at(b, 0);
        for j in 0..16 {
            let q = b[2 + j];
            o[j] = d * f32::from((q & 0x0f) as i8 - 8);
            o[j + 16] = d * f32::from((q >> 4) as i8 - 8);
        }
    }
}

/// Block layout: `d: f16`, `m: f16`, `qs: [u8; 16]`; element = `d * q + m`. 20 bytes, 32 values.
pub fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, o) in blocks::<20>(src).zip(out_blocks::<32>(dst)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        for j in 0..16 {
            let q = b[4 + j];
            o[j] = d * f32::from(q & 0x0f) + m;
            o[j + 16] = d * f32::from(q >> 4) + m;
        }
    }
}
