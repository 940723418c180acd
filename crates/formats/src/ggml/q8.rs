//! Q8_0: blocks of 32 signed bytes with one f16 scale.

use super::{blocks, f16_at, out_blocks};

/// Block layout: `d: f16`, `qs: [i8; 32]`; element `j` is `qs[j] * d`. 34 bytes, 32 values.
pub fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, o) in blocks::<34>(src).zip(out_blocks::<32>(dst)) {
        let d = f16_at(b, 0);
        for j in 0..32 {
            o[j] = f32::from(b[2 + j] as i8) * d;
        }
    }
}
