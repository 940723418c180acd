//! F32, F16 and BF16: bit conversions both ways, and the little-endian slice kernels that decode
//! (`*_to_f32*`) and encode (`encode_*`) tensors of them. f32 to f16 / bf16 rounds to nearest,
//! ties to even, as torch, numpy, `gguf.quants` and the `half` crate do (the tests check every
//! f16 and a sweep of f32 bit patterns against `half`).

use crate::{blocks, out_blocks};

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

/// IEEE binary16 bits of `x`, rounded to nearest, ties to even (overflow gives infinity, NaN
/// stays a quiet NaN with the sign kept).
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        let nan = if man != 0 { 0x0200 | (man >> 13) as u16 } else { 0 };
        return sign | 0x7c00 | nan;
    }
    // The exponent rebiased for f16 (bias 15 instead of 127).
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    let (h, rem, half) = if e >= 1 {
        // Normal: drop 13 mantissa bits.
        (((e as u32) << 10) | (man >> 13), man & 0x1fff, 0x1000)
    } else {
        // Subnormal in f16 (or zero): the full 24-bit significand in units of 2^-24.
        let shift = (14 - e) as u32;
        if shift > 24 {
            return sign;
        }
        let m = man | 0x80_0000;
        (m >> shift, m & ((1 << shift) - 1), 1 << (shift - 1))
    };
    // A carry out of the mantissa correctly bumps the exponent (up to infinity).
    let round_up = rem > half || (rem == half && h & 1 == 1);
    sign | (h + u32::from(round_up)) as u16
}

/// bfloat16 bits of `x`, rounded to nearest, ties to even; NaN becomes a quiet NaN.
pub fn f32_to_bf16(x: f32) -> u16 {
    let n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        return ((n & 0xffff_0000) >> 16) as u16 | 0x40;
    }
    ((u64::from(n) + 0x7fff + u64::from((n >> 16) & 1)) >> 16) as u16
}

/// Copies f32 values as little-endian bytes.
pub fn encode_f32(src: &[f32], dst: &mut [u8]) {
    for (x, o) in src.iter().zip(dst.chunks_exact_mut(4)) {
        o.copy_from_slice(&x.to_le_bytes());
    }
}

/// Converts to little-endian f16.
pub fn encode_f16(src: &[f32], dst: &mut [u8]) {
    for (&x, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
        o.copy_from_slice(&f32_to_f16(x).to_le_bytes());
    }
}

/// Converts to little-endian bf16.
pub fn encode_bf16(src: &[f32], dst: &mut [u8]) {
    for (&x, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
        o.copy_from_slice(&f32_to_bf16(x).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_round_trips_every_finite_half() {
        for h in 0u16..=0xffff {
            let x = f16_to_f32(h);
            if x.is_nan() {
                assert!(f16_to_f32(f32_to_f16(x)).is_nan());
                continue;
            }
            assert_eq!(f32_to_f16(x), h, "{h:#06x} = {x:e}");
        }
    }

    #[test]
    fn f16_rounds_ties_to_even_and_overflows_to_infinity() {
        // 1 + 2^-11 lies halfway between 1 and the next half (1 + 2^-10): ties to even (1).
        assert_eq!(f32_to_f16(1.0 + f32::powi(2.0, -11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * f32::powi(2.0, -11)), 0x3c02);
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(-1e-9), 0x8000);
        // Half the smallest subnormal rounds to zero (even), a bit more to the subnormal.
        assert_eq!(f32_to_f16(f32::powi(2.0, -25)), 0);
        assert_eq!(f32_to_f16(f32::powi(2.0, -25) * 1.5), 1);
    }
}
