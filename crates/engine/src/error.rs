//! Engine errors.

/// What can go wrong inside a backend.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A buffer or argument does not have the size the kernel needs.
    #[error("{op}: {what}")]
    Shape {
        /// The kernel that found the problem.
        op: &'static str,
        /// What was expected and what was given.
        what: String,
    },
    /// The device could not allocate memory.
    #[error("out of memory allocating {bytes} bytes on {device}")]
    OutOfMemory {
        /// Requested size.
        bytes: usize,
        /// Device name.
        device: String,
    },
    /// The backend does not support this operation or format.
    #[error("{0}")]
    Unsupported(String),
    /// A device driver or library error.
    #[error("{0}")]
    Device(String),
}

/// Result type of the engine.
pub type Result<T> = std::result::Result<T, EngineError>;

/// Returns a shape error unless `cond` holds.
pub(crate) fn ensure(cond: bool, op: &'static str, what: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(EngineError::Shape { op, what: what() })
    }
}
