//! Fine-tuning recipes (in progress).
