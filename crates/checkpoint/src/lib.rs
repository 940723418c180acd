//! Checkpoint reading and writing for afinar.
//!
//! - [`safetensors::SafetensorsCheckpoint`]: one `*.safetensors` file, or a Hugging Face folder
//!   (`model.safetensors`, or shards plus `model.safetensors.index.json`), memory-mapped.
//! - [`gguf::GgufFile`]: a GGUF file (versions 2 and 3), memory-mapped, with its metadata.
//! - [`quant`]: dequantization of the GGML block formats (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K,
//!   Q3_K, Q4_K, Q5_K, Q6_K) and of F32/F16/BF16, bit-exact against the `gguf` python package.
//! - [`mod@write`]: writing: atomic files and folders ([`write::write_atomic`],
//!   [`write::write_dir_atomic`]), safetensors files ([`write::save_safetensors`]), Hugging Face
//!   sharded folders ([`write::save_sharded`], [`write::save_like`]) and tokenizer side files
//!   ([`write::copy_side_files`]).
//! - [`gguf_write`]: writing GGUF files (version 3) with streamed tensor data, and
//!   [`quant::quantize()`] to encode f32 values as F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q4_K/Q6_K.
//! - [`bnb`]: bitsandbytes 4-bit weights in a Hugging Face checkpoint (reading them, and the
//!   tensors and quant-state JSON to write them as `transformers` does).
//! - [`peft`]: LoRA adapters in the PEFT layout ([`peft::save_peft_adapter`],
//!   [`peft::load_peft_adapter`]).
//!
//! Every tensor comes out as a [`TensorView`]: a name, a [`DType`], a row-major shape (outermost
//! dimension first, so a linear weight is `[out, in]` whatever the file format) and its raw bytes.
//! Every error is a [`CheckpointError`] naming the file (and the tensor where there is one); bad
//! input never panics.

#![warn(missing_docs)]

pub mod bnb;
mod dtype;
mod error;
pub mod gguf;
pub mod gguf_write;
pub mod peft;
pub mod quant;
pub mod safetensors;
pub mod write;

pub use dtype::DType;
pub use error::{CheckpointError, Result};
pub use peft::{load_peft_adapter, save_peft_adapter, LoraAdapterConfig};
pub use write::{copy_side_files, save_like, save_safetensors, save_safetensors_with, save_sharded};
pub use write::{write_atomic, write_dir_atomic, Fetch, TensorData, TensorMeta, TensorSink, TensorWrite};

/// A borrowed tensor: its name, dtype, shape in row-major order (outermost dimension first; the
/// Hugging Face convention, so a linear weight is `[out, in]`: GGUF's reversed dimensions are
/// converted to this) and its raw little-endian bytes (usually memory-mapped).
///
/// Views handed out by [`safetensors::SafetensorsCheckpoint::tensor`] and
/// [`gguf::GgufFile::tensor`] are checked on the way out: `data` holds exactly the bytes that
/// `shape` and `dtype` call for.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorView<'a> {
    /// The tensor's name in the checkpoint (e.g. `model.layers.0.self_attn.q_proj.weight`).
    pub name: &'a str,
    /// How `data` encodes the elements.
    pub dtype: DType,
    /// Dimensions, outermost first (row-major). An empty shape is a scalar.
    pub shape: Vec<usize>,
    /// The raw bytes, little-endian, blocks in row-major order for block-quantized types.
    pub data: &'a [u8],
}

impl TensorView<'_> {
    /// Number of elements: the product of the shape (1 for a scalar). Saturates at `usize::MAX`
    /// for an absurd hand-built shape, which [`TensorView::to_f32`] then rejects.
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |acc, &d| acc.saturating_mul(d))
    }

    /// Dequantizes or converts the tensor to f32, in row-major order (in parallel for big tensors).
    ///
    /// Errors, naming the tensor, when `data` does not hold exactly the bytes that the shape and
    /// dtype call for (only possible for a hand-built view).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let n = self.checked_numel()?;
        let mut out = vec![0f32; n];
        self.to_f32_into(&mut out)?;
        Ok(out)
    }

    /// Like [`TensorView::to_f32`], writing into `out`, which must hold exactly
    /// [`TensorView::numel`] elements.
    pub fn to_f32_into(&self, out: &mut [f32]) -> Result<()> {
        let n = self.checked_numel()?;
        if out.len() != n {
            return Err(CheckpointError::Data {
                what: format!("tensor '{}'", self.name),
                message: format!(
                    "output buffer holds {} values, the tensor has {n} (shape {:?})",
                    out.len(),
                    self.shape
                ),
            });
        }
        quant::dequantize_into(self.dtype, self.data, out).map_err(|e| match e {
            CheckpointError::Data { message, .. } => CheckpointError::Data {
                what: format!("tensor '{}' (shape {:?})", self.name, self.shape),
                message,
            },
            other => other,
        })
    }

    fn checked_numel(&self) -> Result<usize> {
        self.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
            CheckpointError::Data {
                what: format!("tensor '{}'", self.name),
                message: format!("shape {:?} has more elements than usize can count", self.shape),
            }
        })
    }
}

/// Product of `dims` with overflow checking.
pub(crate) fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Opens `path` read-only and memory-maps it.
pub(crate) fn map_file(path: &std::path::Path) -> Result<memmap2::Mmap> {
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
    }
    // SAFETY: the map is read-only and private to this process's view of the file. Like every
    // memory-mapped reader, this assumes no other process truncates or rewrites the checkpoint
    // while it is open; all offsets are validated against the map's length before use.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io)
}
