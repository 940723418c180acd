//! F32, F16 and BF16 to f32.

use super::{blocks, out_blocks};

/// Converts an IEEE binary16 bit pattern to f32, exactly (subnormals, infinities, signed zeros
/// and NaN payloads included), with integer operations only so loops over it vectorise.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let man = h & 0x03ff;
    // Normal: rebias the exponent (15 -> 127). Inf/NaN: all-ones exponent, mantissa kept.
    let normal = ((exp + (127 - 15)) << 23) | (man << 13);
    let inf_nan = 0x7f80_0000 | (man << 13);
    // Zero or subnormal: man * 2^-24, exact in f32 (and a normal f32, or zero).
    let subnormal = (man as f32 * (1.0 / 16_777_216.0)).to_bits();
    let magnitude = if exp == 0x1f {
        inf_nan
    } else if exp == 0 {
        subnormal
    } else {
        normal
    };
    f32::from_bits(sign | magnitude)
}

/// Converts a bfloat16 bit pattern to f32 (exact: bf16 is the top half of an f32).
#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Copies little-endian f32 values.
pub fn f32_to_f32(src: &[u8], dst: &mut [f32]) {
    for (b, o) in blocks::<4>(src).zip(out_blocks::<1>(dst)) {
        o[0] = f32::from_le_bytes(*b);
    }
}

/// Converts little-endian f16 values.
pub fn f16_to_f32_slice(src: &[u8], dst: &mut [f32]) {
    for (b, o) in blocks::<2>(src).zip(out_blocks::<1>(dst)) {
        o[0] = f16_to_f32(u16::from_le_bytes(*b));
    }
}

/// Converts little-endian bf16 values.
pub fn bf16_to_f32_slice(src: &[u8], dst: &mut [f32]) {
    for (b, o) in blocks::<2>(src).zip(out_blocks::<1>(dst)) {
        o[0] = bf16_to_f32(u16::from_le_bytes(*b));
    }
}
