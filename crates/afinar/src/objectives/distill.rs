//! Knowledge distillation: a student learns from a frozen teacher that shares its tokenizer,
//! with torchtune's objective `(1 − kd_ratio) · CE + kd_ratio · KD`
//! (`recipes/knowledge_distillation_single_device.py`, torchtune 0.6.1).
//!
//! Both terms are token means over the labels that are not -100 (torchtune's `CEWithChunkedOutputLoss`
//! and `ForwardKLWithChunkedOutputLoss` divide by the same count), and both come from one pass over
//! the student's and the teacher's final hidden states through [`Backend::linear_distill`]: the
//! output projections, softmaxes and divergence are computed chunk by chunk of rows, so no
//! `[tokens, vocab]` logits tensor exists. Labels are already shifted (label `t` is token `t + 1`),
//! as torchtune's SFT datasets give them: row `t` of the hidden states pairs with label `t`.
//!
//! The KD term is torchtune's `ForwardKLLoss` by default ([`Divergence::ForwardKl`]: the student's
//! cross-entropy under the teacher, which is the forward KL plus the teacher's entropy); reverse KL
//! and β = ½ JSD are options, and a temperature divides both logits in the KD term only (the
//! divergence is not multiplied by `T²`; torchtune has no temperature, and `T = 1` is its loss).

use afinar_engine::{Backend, DistillSpec, Divergence};

use crate::{Error, Result};

/// The distillation objective's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KdObjective {
    /// Weight of the KD term; the cross-entropy gets `1 − kd_ratio` (torchtune's default 0.5).
    pub kd_ratio: f32,
    /// How the student's distribution is compared with the teacher's.
    pub divergence: Divergence,
    /// Divides both logits before the KD term's softmaxes (1: torchtune).
    pub temperature: f32,
}

impl Default for KdObjective {
    /// torchtune 0.6.1's recipe: `kd_ratio` 0.5, `ForwardKLLoss`, no temperature.
    fn default() -> Self {
        KdObjective { kd_ratio: 0.5, divergence: Divergence::ForwardKl, temperature: 1.0 }
    }
}

/// The values of one [`KdObjective::loss_and_grad`] call.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct KdLoss {
    /// `(1 − kd_ratio) · class_loss + kd_ratio · kd_loss`.
    pub loss: f64,
    /// The student's cross-entropy against the labels, a token mean (torchtune's `class_loss`).
    pub class_loss: f64,
    /// The divergence from the teacher, a token mean (torchtune's `kd_loss`).
    pub kd_loss: f64,
    /// Labels that are not -100 (the denominator of both means).
    pub tokens: usize,
}

impl KdObjective {
    /// Checks the settings: `kd_ratio` in `[0, 1]`, a positive finite temperature.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.kd_ratio) {
            return Err(Error::Input(format!(
                "kd_ratio: {} is not in [0, 1] (the weight of the distillation term; 0.5 in torchtune)",
                self.kd_ratio
            )));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::Input(format!(
                "temperature: {} is not a positive number (1 leaves the logits as they are)",
                self.temperature
            )));
        }
        Ok(())
    }

    /// The objective over `rows` positions: the student's final hidden states `student_hidden`
    /// (`[rows, dim]`, after the final norm) through its output head `student_head`
    /// (`[vocab, dim]`), the teacher's `teacher_hidden` (`[rows, dim_t]`) through
    /// `teacher_head` (`[vocab, dim_t]`, any weight format), against `labels` (shifted, -100
    /// ignored). With `dh`, writes `grad_scale · ∂loss/∂student_hidden` (zero rows for ignored
    /// labels); with `dw`, accumulates `grad_scale · ∂loss/∂student_head` (a trainable head).
    /// When every label is -100 the loss is 0 and the gradients are zero (torchtune's KD term
    /// returns 0 there).
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grad<B: Backend>(
        &self,
        be: &B,
        student_hidden: &B::Buf,
        student_head: &B::Weight,
        teacher_hidden: &B::Buf,
        teacher_head: &B::Weight,
        labels: &[i32],
        rows: usize,
        grad_scale: f32,
        dh: Option<&mut B::Buf>,
        dw: Option<&mut B::Buf>,
    ) -> Result<KdLoss> {
        self.validate()?;
        let labels = labels.get(..rows).ok_or_else(|| {
            Error::Input(format!("knowledge distillation: {} labels for {rows} positions", labels.len()))
        })?;
        let tokens = labels.iter().filter(|&&l| l != afinar_engine::IGNORE_INDEX).count();
        // Token means: every kept row's gradient is divided by the same count.
        let per_token = grad_scale / tokens.max(1) as f32;
        let spec = DistillSpec {
            divergence: self.divergence,
            temperature: self.temperature,
            kd_grad_scale: self.kd_ratio * per_token,
            ce_grad_scale: (1.0 - self.kd_ratio) * per_token,
        };
        let sums = be.linear_distill(
            student_hidden,
            student_head,
            teacher_hidden,
            teacher_head,
            labels,
            rows,
            &spec,
            dh,
            dw,
        )?;
        if sums.count == 0 {
            return Ok(KdLoss::default());
        }
        let n = sums.count as f64;
        let (class_loss, kd_loss) = (sums.ce / n, sums.kd / n);
        let r = self.kd_ratio as f64;
        Ok(KdLoss { loss: (1.0 - r) * class_loss + r * kd_loss, class_loss, kd_loss, tokens: sums.count })
    }
}
