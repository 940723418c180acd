//! Element types of the tensors this crate reads.

use std::fmt;

/// How a tensor's elements are encoded.
///
/// Float types hold one element per "block"; the GGML block-quantized types hold
/// [`DType::block_size`] elements in [`DType::type_size`] bytes. A quantized row must be a whole
/// number of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16.
    F16,
    /// bfloat16 (the top half of an f32).
    BF16,
    /// 32 elements: f16 scale `d`, 32 × i8; `x = d * q`.
    Q8_0,
    /// 32 elements: f16 `d`, 16 bytes of nibbles; `x = d * (q - 8)`.
    Q4_0,
    /// 32 elements: f16 `d`, f16 `m`, 16 bytes of nibbles; `x = d * q + m`.
    Q4_1,
    /// 32 elements: f16 `d`, 32 high bits, 16 bytes of nibbles; `x = d * (q - 16)`.
    Q5_0,
    /// 32 elements: f16 `d`, f16 `m`, 32 high bits, 16 bytes of nibbles; `x = d * q + m`.
    Q5_1,
    /// 256-element super-block of 16 × 16 with 4-bit scales and mins, 2-bit quants.
    Q2_K,
    /// 256-element super-block of 16 × 16 with 6-bit signed scales, 3-bit quants.
    Q3_K,
    /// 256-element super-block of 8 × 32 with 6-bit scales and mins, 4-bit quants.
    Q4_K,
    /// 256-element super-block of 8 × 32 with 6-bit scales and mins, 5-bit quants.
    Q5_K,
    /// 256-element super-block of 16 × 16 with i8 scales, 6-bit quants.
    Q6_K,
}

impl DType {
    /// Every dtype, in GGML type-id order.
    pub const ALL: [DType; 13] = [
        DType::F32,
        DType::F16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::BF16,
    ];

    /// Elements per block (1 for the float types, 32 or 256 for the quantized ones).
    pub const fn block_size(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => 32,
            DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q2_K => 84,
            DType::Q3_K => 110,
            DType::Q4_K => 144,
            DType::Q5_K => 176,
            DType::Q6_K => 210,
        }
    }

    /// Whether this is a block-quantized GGML type (not F32/F16/BF16).
    pub const fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes needed for `numel` elements, or `None` when `numel` is not a whole number of blocks
    /// or the size overflows `usize`.
    pub const fn bytes_for(self, numel: usize) -> Option<usize> {
        if !numel.is_multiple_of(self.block_size()) {
            return None;
        }
        (numel / self.block_size()).checked_mul(self.type_size())
    }

    /// The GGML type id (`ggml_type`, as stored in GGUF tensor infos).
    pub const fn ggml_type(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q2_K => 10,
            DType::Q3_K => 11,
            DType::Q4_K => 12,
            DType::Q5_K => 13,
            DType::Q6_K => 14,
            DType::BF16 => 30,
        }
    }

    /// The dtype with this GGML type id, if this crate reads it.
    pub fn from_ggml_type(id: u32) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.ggml_type() == id)
    }

    /// The name GGML and GGUF tools use (`"Q4_K"`, `"BF16"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q8_0 => "Q8_0",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
            DType::Q5_0 => "Q5_0",
            DType::Q5_1 => "Q5_1",
            DType::Q2_K => "Q2_K",
            DType::Q3_K => "Q3_K",
            DType::Q4_K => "Q4_K",
            DType::Q5_K => "Q5_K",
            DType::Q6_K => "Q6_K",
        }
    }

    /// The dtype named `name` (as [`DType::name`] spells it, case-insensitive).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Block and type sizes of every GGML type id known to the GGUF format, readable or not, so a
/// GGUF reader can check the byte ranges of tensors it cannot decode. Returns
/// `(name, block_size, type_size)`.
pub fn ggml_type_info(id: u32) -> Option<(&'static str, usize, usize)> {
    if let Some(d) = DType::from_ggml_type(id) {
        return Some((d.name(), d.block_size(), d.type_size()));
    }
    const QK_K: usize = 256;
    Some(match id {
        9 => ("Q8_1", 32, 4 + 4 + 32),
        15 => ("Q8_K", QK_K, 4 + QK_K + QK_K / 8),
        16 => ("IQ2_XXS", QK_K, 2 + QK_K / 4),
        17 => ("IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32),
        18 => ("IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8),
        19 => ("IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
        20 => ("IQ4_NL", 32, 2 + 16),
        21 => ("IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
        22 => ("IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
        23 => ("IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
        34 => ("TQ1_0", QK_K, 2 + 4 * 13),
        35 => ("TQ2_0", QK_K, 2 + 64),
        39 => ("MXFP4", 32, 1 + 16),
        _ => return None,
    })
}
