//! The crate's error type.

use std::path::PathBuf;

/// Result with [`CheckpointError`].
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// Everything that can go wrong reading or writing a checkpoint.
///
/// Each variant that comes from a file carries its path, and the tensor's name where one is
/// involved; the messages say what was expected. [`CheckpointError::Data`] is the one variant
/// without a file: it comes from [`crate::quant::dequantize`] or [`crate::TensorView::to_f32`]
/// on bytes the caller supplied (views handed out by the readers are size-checked at that point,
/// with the path).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The file could not be opened, inspected, memory-mapped, written or renamed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The file's structure is invalid (bad magic, truncation, absurd lengths, bad JSON, ...).
    #[error("{}: invalid {format}: {message}", .path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What the file was read as: "GGUF file", "safetensors file", "safetensors index", ...
        format: &'static str,
        /// What is wrong, with the byte offset where there is one.
        message: String,
    },

    /// One tensor's description or data is invalid (bad shape, data outside the file, ...).
    #[error("{}: tensor '{tensor}': {message}", .path.display())]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        message: String,
    },

    /// The checkpoint has no tensor of that name.
    #[error("{}: no tensor named '{tensor}'", .path.display())]
    TensorNotFound {
        /// The file (for a sharded checkpoint, the index).
        path: PathBuf,
        /// The name asked for.
        tensor: String,
    },

    /// The tensor is stored in a dtype this crate does not read.
    #[error("{}: tensor '{tensor}' has dtype {dtype}, which afinar cannot read (it reads {supported})", .path.display())]
    UnsupportedDType {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The dtype's name as the file spells it (e.g. `I64`, `IQ2_XXS`).
        dtype: String,
        /// The dtypes this reader supports, for the message.
        supported: &'static str,
    },

    /// Raw tensor bytes that the caller passed do not match the element count and dtype.
    #[error("{what}: {message}")]
    Data {
        /// What was being converted (`tensor 'name'` or `dequantize`).
        what: String,
        /// What is wrong.
        message: String,
    },
}
