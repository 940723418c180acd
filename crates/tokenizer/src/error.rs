//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading a tokenizer, encoding, decoding or rendering a chat.
///
/// Messages name the file (or the GGUF metadata key) and say what was expected, so that a user can
/// act on them without reading the source.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON, or does not have the expected shape.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The offending file.
        path: PathBuf,
        /// The parser's error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A tokenizer source is readable but its content is not what a byte-level BPE tokenizer needs
    /// (a missing key, a merge naming an unknown token, a bad base64 line, ...).
    #[error("{origin}: {message}")]
    Format {
        /// Where the content came from: a file path, or `GGUF metadata <key>`.
        origin: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The source describes a tokenizer this crate does not implement.
    #[error("{origin}: unsupported {what} {found}; expected {expected}")]
    Unsupported {
        /// Where the value came from: a file path, or `GGUF metadata`.
        origin: String,
        /// What kind of value it is (`model type`, `pre-tokenizer`, ...), with its key.
        what: String,
        /// The value found.
        found: String,
        /// The values this crate supports.
        expected: String,
    },
    /// A token id passed to `decode` is outside the vocabulary.
    #[error("token id {id} is out of range: the vocabulary has {vocab_size} ids")]
    UnknownId {
        /// The offending id.
        id: u32,
        /// The vocabulary size (ids are `0..vocab_size`).
        vocab_size: usize,
    },
    /// The text needs a byte that has no token of its own (the vocabulary is not byte-complete).
    #[error("cannot encode byte 0x{byte:02x}: the vocabulary has no token for it")]
    MissingByte {
        /// The byte without a token.
        byte: u8,
    },
    /// A chat template failed to compile or to render (including `raise_exception` calls).
    #[error("chat template: {0}")]
    Template(String),
}

impl TokenizerError {
    pub(crate) fn format(origin: impl Into<String>, message: impl Into<String>) -> Self {
        TokenizerError::Format { origin: origin.into(), message: message.into() }
    }
}
