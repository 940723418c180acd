//! Training objectives beyond next-token cross-entropy. The model pass ends at the final hidden
//! states ([`crate::models::Llama::forward_hidden`]); an objective asks the output head for
//! log-probabilities ([`crate::models::Llama::label_log_probs`]), computes its loss from them
//! here, and hands the gradient back per token
//! ([`crate::models::Llama::label_log_probs_backward`], then
//! [`crate::models::Llama::backward_hidden`]).
//!
//! The losses themselves are pure functions of log-probabilities: per sequence for the
//! preference losses ([`preference`]), per token for GRPO ([`grpo`], which also has the model step
//! that feeds it). Knowledge distillation compares the student's and a teacher's output
//! distributions in one fused head pass: see [`distill`].

pub mod distill;
pub mod grpo;
pub mod preference;

pub use grpo::{advantages, grpo_loss, GrpoOutput, GrpoParams, LossType, ScaleRewards, TokenBatch};
pub use preference::{
    dpo, dpo_smoothed, orpo, simpo, DpoLoss, OrpoParams, PreferenceOutput, SequenceLogps, SimpoParams,
    TokenSum,
};
