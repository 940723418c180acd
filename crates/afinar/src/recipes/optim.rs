//! AdamW over every trainable tensor of a model, and gradient-norm clipping, with PyTorch's
//! semantics (`torch.optim.AdamW`, `torch.nn.utils.clip_grad_norm_`).

use afinar_engine::{AdamW, Backend};

use crate::models::{Llama, ParamMut};
use crate::Result;

/// AdamW settings that stay fixed across steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// First- and second-moment decay.
    pub betas: [f64; 2],
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// The optimizer: its settings and how many steps it has taken (for bias correction).
#[derive(Debug, Clone)]
pub struct Optimizer {
    /// Settings.
    pub config: AdamWConfig,
    /// Steps taken.
    pub step: u64,
}

impl Optimizer {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, step: 0 }
    }

    /// Applies one AdamW step with learning rate `lr` to every trainable tensor of `model`.
    pub fn step<B: Backend>(&mut self, be: &B, model: &mut Llama<B>, lr: f64) -> Result<()> {
        let hp = self.begin_step(lr);
        model.visit_params_mut(&mut |_, mut p| update(be, &mut p, &hp))
    }

    /// Counts a new step and returns its settings for [`update`] (the optimizer step in the
    /// backward updates each tensor as soon as its gradient is complete).
    pub fn begin_step(&mut self, lr: f64) -> AdamW {
        self.step += 1;
        AdamW {
            lr: lr as f32,
            beta1: self.config.betas[0] as f32,
            beta2: self.config.betas[1] as f32,
            eps: self.config.eps as f32,
            weight_decay: self.config.weight_decay as f32,
            step: self.step,
        }
    }
}

/// One AdamW step on one trainable tensor from its accumulated gradient.
pub fn update<B: Backend>(be: &B, p: &mut ParamMut<'_, B>, hp: &AdamW) -> Result<()> {
    match p {
        ParamMut::Weight(w, s) => be.adamw_weight(w, &s.grad, &mut s.m, &mut s.v, hp)?,
        ParamMut::Buf(b, s) => be.adamw(b, &s.grad, &mut s.m, &mut s.v, s.len, hp)?,
    }
    Ok(())
}

/// The L2 norm of all gradients together.
pub fn grad_norm<B: Backend>(be: &B, model: &mut Llama<B>) -> Result<f64> {
    let mut total = 0.0;
    model.visit_params_mut(&mut |_, mut p| {
        let s = p.state();
        total += be.sum_squares(&s.grad, s.len)?;
        Ok(())
    })?;
    Ok(total.sqrt())
}

/// Scales all gradients so that their joint norm is at most `max_norm`, as
/// `clip_grad_norm_` does (coefficient `max_norm / (norm + 1e-6)`, capped at 1). Returns the
/// norm before clipping.
pub fn clip_grad_norm<B: Backend>(be: &B, model: &mut Llama<B>, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(be, model)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        model.visit_params_mut(&mut |_, mut p| {
            let s = p.state();
            Ok(be.scale(&mut s.grad, s.len, coef as f32)?)
        })?;
    }
    Ok(norm)
}
