//! The library's error type.

use std::path::PathBuf;

/// Everything that can go wrong in afinar's library, each variant naming what the user has to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kernel or device failed.
    #[error(transparent)]
    Engine(#[from] afinar_engine::EngineError),
    /// A checkpoint file is missing, corrupt or of the wrong format.
    #[error(transparent)]
    Checkpoint(#[from] afinar_checkpoint::CheckpointError),
    /// A tokenizer file or chat template is bad.
    #[error(transparent)]
    Tokenizer(#[from] afinar_tokenizer::TokenizerError),
    /// A model could not be fetched from the Hugging Face Hub or found in its cache.
    #[error(transparent)]
    Hub(#[from] afinar_hub::Error),
    /// A recipe config (YAML and overrides) is invalid.
    #[error(transparent)]
    RecipeConfig(#[from] crate::config::ConfigError),
    /// A model configuration is incomplete or inconsistent.
    #[error("{file}: {key}: {msg}")]
    Config {
        /// The file the configuration came from.
        file: PathBuf,
        /// The key (or key path) at fault.
        key: String,
        /// What was expected.
        msg: String,
    },
    /// A checkpoint does not fit the model it is loaded into.
    #[error("{file}: tensor `{tensor}`: {msg}")]
    Weights {
        /// The checkpoint.
        file: PathBuf,
        /// The tensor at fault.
        tensor: String,
        /// What was expected.
        msg: String,
    },
    /// Bad user input (prompt, arguments).
    #[error("{0}")]
    Input(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// Result type of the library.
pub type Result<T> = std::result::Result<T, Error>;
