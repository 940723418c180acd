//! Text generation with a KV cache: prefill the prompt once, then one forward pass per new
//! token, streaming each token to a callback as it is produced.

pub mod group;
mod sampling;

use std::time::Instant;

use afinar_engine::Backend;
pub use group::{generate_group, row_seed, Completion, GroupOptions, GroupStats, GroupStop};
pub use sampling::{argmax, Rng, Sampler, SamplingParams};

use crate::blocks::KvCache;
use crate::models::{Llama, Logits};
use crate::{Error, Result};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// Token selection.
    pub sampling: SamplingParams,
    /// Tokens that end generation (not emitted).
    pub stop_ids: Vec<u32>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token came.
    StopToken,
    /// `max_new_tokens` were produced.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// The callback asked to stop.
    Callback,
}

/// Counts and timings of one generation.
#[derive(Debug, Clone)]
pub struct GenerateStats {
    /// Tokens in the prompt fed in this call.
    pub prompt_tokens: usize,
    /// New tokens produced (stop token excluded).
    pub generated_tokens: usize,
    /// Seconds spent on the prompt (prefill).
    pub prompt_secs: f64,
    /// Seconds spent producing tokens after the first.
    pub gen_secs: f64,
    /// Why it stopped.
    pub stop: StopReason,
}

impl GenerateStats {
    /// Prompt tokens per second.
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_secs.max(1e-9)
    }
    /// Generated tokens per second (each token after the first costs one forward pass).
    pub fn gen_tps(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.gen_secs.max(1e-9)
    }
}

/// Feeds `prompt` after whatever `cache` already holds, then generates until a stop token,
/// `max_new_tokens` or the end of the context. `on_token` sees each new token and returns
/// `false` to stop. Returns the new tokens.
pub fn generate<B: Backend>(
    be: &B,
    model: &Llama<B>,
    cache: &mut KvCache<B>,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<(Vec<u32>, GenerateStats)> {
    if prompt.is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    if cache.len + prompt.len() > cache.capacity {
        return Err(Error::Input(format!(
            "the prompt needs {} tokens but the context holds {} (model context {})",
            cache.len + prompt.len(),
            cache.capacity,
            model.config.max_seq_len
        )));
    }
    let mut sampler = Sampler::new(opts.sampling);
    let t0 = Instant::now();
    let mut logits = model.forward(be, prompt, 1, prompt.len(), Some(cache), Logits::Last)?;
    let prompt_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut out = Vec::new();
    let stop = loop {
        if out.len() >= opts.max_new_tokens {
            break StopReason::MaxTokens;
        }
        let next = sampler.sample(&logits);
        if opts.stop_ids.contains(&next) {
            break StopReason::StopToken;
        }
        out.push(next);
        if !on_token(next)? {
            break StopReason::Callback;
        }
        if out.len() >= opts.max_new_tokens {
            break StopReason::MaxTokens;
        }
        if cache.len >= cache.capacity {
            break StopReason::ContextFull;
        }
        logits = model.forward(be, &[next], 1, 1, Some(cache), Logits::Last)?;
    };
    let stats = GenerateStats {
        prompt_tokens: prompt.len(),
        generated_tokens: out.len(),
        prompt_secs,
        gen_secs: t1.elapsed().as_secs_f64(),
        stop,
    };
    Ok((out, stats))
}
