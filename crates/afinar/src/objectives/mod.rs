//! Training objectives beyond next-token cross-entropy. The model pass ends at the final hidden
//! states ([`crate::models::Llama::forward_hidden`]); an objective asks the output head for
//! log-probabilities ([`crate::models::Llama::label_log_probs`]), computes its loss from them
//! here, and hands the gradient back per token
//! ([`crate::models::Llama::label_log_probs_backward`], then
//! [`crate::models::Llama::backward_hidden`]).
//!
//! The losses themselves are pure functions of per-sequence log-probabilities: see
//! [`preference`].

pub mod preference;

pub use preference::{
    dpo, orpo, simpo, DpoLoss, OrpoParams, PreferenceOutput, SequenceLogps, SimpoParams, TokenSum,
};
