//! Recipe configuration (in progress).
