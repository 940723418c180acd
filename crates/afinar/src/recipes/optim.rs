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
        self.step += 1;
        let hp = AdamW {
            lr: lr as f32,
            beta1: self.config.betas[0] as f32,
            beta2: self.config.betas[1] as f32,
            eps: self.config.eps as f32,
            weight_decay: self.config.weight_decay as f32,
            step: self.step,
        };
        model.visit_params_mut(&mut |_, p| {
            match p {
                ParamMut::Weight(w, s) => be.adamw_weight(w, &s.grad, &mut s.m, &mut s.v, &hp)?,
                ParamMut::Buf(b, s) => be.adamw(b, &s.grad, &mut s.m, &mut s.v, s.len, &hp)?,
            }
            Ok(())
        })
    }
}

/// The L2 norm of all gradients together.
pub fn grad_norm<B: Backend>(be: &B, model: &mut Llama<B>) -> Result<f64> {
    let mut total = 0.0;
    model.visit_params_mut(&mut |_, p| {
        let s = match p {
            ParamMut::Weight(_, s) | ParamMut::Buf(_, s) => s,
        };
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
        model.visit_params_mut(&mut |_, p| {
            let s = match p {
                ParamMut::Weight(_, s) | ParamMut::Buf(_, s) => s,
            };
            Ok(be.scale(&mut s.grad, s.len, coef as f32)?)
        })?;
    }
    Ok(norm)
}
