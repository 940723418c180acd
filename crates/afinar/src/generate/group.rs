//! Group sampling: `n` completions of one prompt decoded together, as GRPO needs them.
//!
//! The prompt is run once (batch 1); its keys and values are copied into a batch-`n` cache
//! ([`KvCache::broadcast_prefix`]); then every step runs one forward pass of all unfinished rows
//! (batch = rows still going, one token each). A row that ends (stop token, stop string, length
//! limit) leaves the batch: the cache is compacted to the rows still going
//! ([`KvCache::keep_rows`]), so finished rows cost nothing and cannot change.
//!
//! Determinism: row `j` samples from its own [`Sampler`] seeded with [`GroupOptions::seeds`]`[j]`
//! (the GRPO recipe derives it from the run's seed, the generation step, the prompt and `j`
//! with [`row_seed`]), so a row's tokens do not depend on the other rows, on `n` or on how the
//! rows are batched — up to ties within the rounding of batched against single-row arithmetic —
//! and a resumed run needs no sampler state beyond the step.
//!
//! Works on every [`Backend`]: only [`Llama::forward`] and cache copies are used.

use std::time::Instant;

use afinar_engine::Backend;

use super::{Sampler, SamplingParams};
use crate::blocks::KvCache;
use crate::models::{Llama, Logits};
use crate::{Error, Result};

/// What to sample for a group.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// At most this many new tokens per completion (`max_completion_length`).
    pub max_new_tokens: usize,
    /// Temperature, top-k and top-p (its `seed` is not used: each row has its own seed).
    pub sampling: SamplingParams,
    /// Tokens that end a completion (e.g. end-of-turn); the stop token is not part of
    /// [`Completion::ids`] but is reported in [`Completion::stop_token`].
    pub stop_ids: Vec<u32>,
    /// Strings that end a completion: once the decoded text contains one, the completion ends
    /// with the token that completed it. The stop string is **kept** (in the ids and in
    /// [`Completion::text`], which is cut right after it). Needs a detokenizer.
    pub stop_strings: Vec<String>,
    /// One seed per row: the number of completions is `seeds.len()`.
    pub seeds: Vec<u64>,
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStop {
    /// A stop token came (see [`Completion::stop_token`]).
    StopToken,
    /// A stop string appeared in the text.
    StopString,
    /// `max_new_tokens` were produced without a stop: truncated.
    Length,
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The new tokens (the stop token excluded; a stop string's tokens included).
    pub ids: Vec<u32>,
    /// The stop token that ended it, if one did.
    pub stop_token: Option<u32>,
    /// Why it ended.
    pub stop: GroupStop,
    /// The decoded text (cut right after a stop string); empty without a detokenizer.
    pub text: String,
}

impl Completion {
    /// No stop token or stop string before the length limit.
    pub fn truncated(&self) -> bool {
        self.stop == GroupStop::Length
    }
}

/// Counts and timings of one group.
#[derive(Debug, Clone, Default)]
pub struct GroupStats {
    /// Prompt tokens (run once).
    pub prompt_tokens: usize,
    /// Tokens sampled over all rows (stop tokens included: each cost a forward row).
    pub sampled_tokens: usize,
    /// Forward passes after the prefill.
    pub decode_steps: usize,
    /// Seconds of the whole group (prefill included).
    pub secs: f64,
}

/// The seed of row `j` of prompt `i` at generation step `step` of a run seeded with `seed`
/// (splitmix64 over the four numbers).
pub fn row_seed(seed: u64, step: u64, prompt: u64, row: u64) -> u64 {
    let mut h = seed ^ 0x6a09_e667_f3bc_c909;
    for v in [step, prompt, row] {
        let mut s = h ^ v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h = afinar_data::rng::splitmix64(&mut s);
    }
    h
}

/// Turns a completion's token ids into text (for stop strings and [`Completion::text`]).
pub type Detokenizer<'a> = &'a dyn Fn(&[u32]) -> Result<String>;

/// Samples `opts.seeds.len()` completions of `prompt` (see the module doc). `detok` turns a
/// completion's ids into text; it is needed (and only called) when there are stop strings or
/// texts are wanted (`want_text`).
pub fn generate_group<B: Backend>(
    be: &B,
    model: &Llama<B>,
    prompt: &[u32],
    opts: &GroupOptions,
    detok: Option<Detokenizer<'_>>,
    want_text: bool,
) -> Result<(Vec<Completion>, GroupStats)> {
    let n = opts.seeds.len();
    if n == 0 {
        return Err(Error::Input("group sampling: no completions asked for (no seeds)".into()));
    }
    if prompt.is_empty() {
        return Err(Error::Input("group sampling: the prompt is empty".into()));
    }
    if opts.max_new_tokens == 0 {
        return Err(Error::Input("group sampling: max_completion_length must be at least 1".into()));
    }
    if (!opts.stop_strings.is_empty() || want_text) && detok.is_none() {
        return Err(Error::Input("group sampling: stop strings and texts need a detokenizer".into()));
    }
    // The last sampled token is never fed back, so the cache needs prompt + max - 1 positions.
    let capacity = prompt.len() + opts.max_new_tokens - 1;
    if capacity > model.config.max_seq_len {
        return Err(Error::Input(format!(
            "group sampling: the prompt's {} tokens plus max_completion_length {} exceed the model's \
             context of {} tokens",
            prompt.len(),
            opts.max_new_tokens,
            model.config.max_seq_len
        )));
    }
    let t0 = Instant::now();
    let mut prefix = model.new_cache(be, 1, capacity)?;
    let first = model.forward(be, prompt, 1, prompt.len(), Some(&mut prefix), Logits::Last)?;
    let vocab = model.config.vocab_size;
    let mut samplers: Vec<Sampler> =
        opts.seeds.iter().map(|&seed| Sampler::new(SamplingParams { seed, ..opts.sampling })).collect();
    let mut done: Vec<Option<Completion>> = vec![None; n];
    let mut ids: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut stats = GroupStats { prompt_tokens: prompt.len(), ..Default::default() };
    // Rows still going, in cache order, and the logits of each (`[active, vocab]`).
    let mut active: Vec<usize> = (0..n).collect();
    let mut logits: Vec<f32> = (0..n).flat_map(|_| first.iter().copied()).collect();
    let mut cache: Option<KvCache<B>> = None;
    loop {
        let mut next_tokens = Vec::with_capacity(active.len());
        let mut still = Vec::with_capacity(active.len());
        for (a, &row) in active.iter().enumerate() {
            let tok = samplers[row].sample(&logits[a * vocab..(a + 1) * vocab]);
            stats.sampled_tokens += 1;
            if opts.stop_ids.contains(&tok) {
                let text = match (want_text, detok) {
                    (true, Some(d)) => d(&ids[row])?,
                    _ => String::new(),
                };
                done[row] = Some(Completion {
                    ids: std::mem::take(&mut ids[row]),
                    stop_token: Some(tok),
                    stop: GroupStop::StopToken,
                    text,
                });
                continue;
            }
            ids[row].push(tok);
            if !opts.stop_strings.is_empty() {
                let d = detok.expect("checked above");
                let text = d(&ids[row])?;
                if let Some(end) = stop_string_end(&text, &opts.stop_strings) {
                    done[row] = Some(Completion {
                        ids: std::mem::take(&mut ids[row]),
                        stop_token: None,
                        stop: GroupStop::StopString,
                        text: text[..end].to_string(),
                    });
                    continue;
                }
            }
            if ids[row].len() >= opts.max_new_tokens {
                let text = match (want_text, detok) {
                    (true, Some(d)) => d(&ids[row])?,
                    _ => String::new(),
                };
                done[row] = Some(Completion {
                    ids: std::mem::take(&mut ids[row]),
                    stop_token: None,
                    stop: GroupStop::Length,
                    text,
                });
                continue;
            }
            next_tokens.push(tok);
            still.push(a);
        }
        if still.is_empty() {
            break;
        }
        // The cache: the shared prefix on the first step, then only the rows still going.
        let mut c = match cache.take() {
            None => {
                let mut c = model.new_cache(be, still.len(), capacity)?;
                prefix.broadcast_prefix(be, &mut c)?;
                c
            }
            Some(c) if still.len() == c.batch => c,
            Some(c) => c.keep_rows(be, &still)?,
        };
        active = still.iter().map(|&a| active[a]).collect();
        logits = model.forward(be, &next_tokens, active.len(), 1, Some(&mut c), Logits::Last)?;
        stats.decode_steps += 1;
        cache = Some(c);
    }
    stats.secs = t0.elapsed().as_secs_f64();
    let out = done.into_iter().map(|c| c.expect("every row ends")).collect();
    Ok((out, stats))
}

/// The byte index just after the earliest-ending stop string found in `text`, if any.
fn stop_string_end(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str()).map(|i| i + s.len())).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_end_takes_the_earliest_end() {
        let stops = vec!["\n\n".to_string(), "Answer:".to_string()];
        assert_eq!(stop_string_end("abc", &stops), None);
        assert_eq!(stop_string_end("x Answer: 3\n\n", &stops), Some(9));
        assert_eq!(stop_string_end("a\n\nAnswer:", &stops), Some(3));
    }

    #[test]
    fn row_seeds_differ_by_every_part() {
        let base = row_seed(1, 2, 3, 4);
        assert_eq!(base, row_seed(1, 2, 3, 4));
        for other in [row_seed(0, 2, 3, 4), row_seed(1, 3, 3, 4), row_seed(1, 2, 4, 4), row_seed(1, 2, 3, 5)]
        {
            assert_ne!(base, other);
        }
        // swapping the prompt and the row gives another seed
        assert_ne!(row_seed(1, 2, 3, 4), row_seed(1, 2, 4, 3));
    }
}
