//! Perplexity of a text with a sliding window, as in the Hugging Face guide "Perplexity of
//! fixed-length models".
//!
//! The text is encoded once (with the tokenizer's default BOS, as `tokenizer(text)` does: a
//! Llama-3 tokenizer adds `<|begin_of_text|>`, SmolLM2's adds nothing). Windows of
//! `max_length` tokens start every `stride` tokens; each window scores only the tokens that the
//! previous window did not score (the rest of it is context), and the last window ends at the
//! end of the text. The first token of the text (the BOS when there is one) is never scored:
//! nothing predicts it; nor, as in the guide, is the first token of a window that starts right
//! where the previous one ended (`stride == max_length`: disjoint windows). Perplexity is `exp(mean NLL)` over the scored tokens, in nats.
//!
//! One difference from the guide's code: it averages each window's mean loss weighted by the
//! window's scored tokens minus one, which slightly misweights every window after the first;
//! afinar reports the exact mean over the scored tokens (`scripts/fixtures/eval_reference.py`
//! records both).

use afinar_engine::Backend;
use afinar_tokenizer::{count_words, Tokenizer};
use serde::Serialize;

use crate::models::{Llama, Logits};
use crate::{Error, Result};

/// Default cap of the window length when the model's context is longer.
pub const DEFAULT_MAX_LENGTH: usize = 1024;

/// Logits materialised at once, in floats (256 MiB): windows are batched up to this budget.
const LOGITS_BUDGET: usize = 1 << 26;

/// Sliding-window settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerplexityOptions {
    /// Window length in tokens (default: the model's context, at most [`DEFAULT_MAX_LENGTH`]).
    pub max_length: Option<usize>,
    /// Distance between window starts (default: half the window).
    pub stride: Option<usize>,
    /// Prepend the tokenizer's BOS (default: the tokenizer's own setting).
    pub add_bos: Option<bool>,
}

/// One window: tokens `begin..end` are fed, tokens `first_scored..end` are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    /// First token fed.
    pub begin: usize,
    /// One past the last token fed.
    pub end: usize,
    /// First token scored (the tokens before it in the window are context only).
    pub first_scored: usize,
}

/// Perplexity of one text.
#[derive(Debug, Clone, Serialize)]
pub struct PerplexityResult {
    /// Tokens of the encoded text (BOS included when added).
    pub tokens: usize,
    /// Whether a BOS was prepended.
    pub bos: bool,
    /// Windows evaluated.
    pub windows: usize,
    /// Window length used.
    pub max_length: usize,
    /// Stride used.
    pub stride: usize,
    /// Tokens scored (every token but the first).
    pub scored_tokens: usize,
    /// Sum of the scored tokens' negative log-likelihoods (nats).
    pub nll_sum: f64,
    /// Mean negative log-likelihood per scored token (nats).
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub perplexity: f64,
    /// Words of the text (whitespace-separated runs with a letter or digit).
    pub words: usize,
    /// Text tokens (BOS excluded) per word.
    pub tokens_per_word: f64,
}

/// The windows over `n` tokens: starts every `stride` tokens, each scoring what the previous
/// one did not, until one reaches the end.
pub fn plan_windows(n: usize, max_length: usize, stride: usize) -> Result<Vec<Window>> {
    if max_length < 2 {
        return Err(Error::Input(format!("--max-length must be at least 2 tokens, got {max_length}")));
    }
    if stride == 0 || stride > max_length {
        return Err(Error::Input(format!(
            "--stride must be between 1 and the window length ({max_length}), got {stride}"
        )));
    }
    if n < 2 {
        return Err(Error::Input(format!(
            "the text is {n} token{} long, shorter than one window: perplexity needs at least 2 tokens",
            if n == 1 { "" } else { "s" }
        )));
    }
    let mut out = Vec::new();
    let mut prev_end = 0;
    let mut begin = 0;
    while begin < n {
        let end = (begin + max_length).min(n);
        out.push(Window { begin, end, first_scored: prev_end.max(begin + 1) });
        prev_end = end;
        if end == n {
            break;
        }
        begin += stride;
    }
    Ok(out)
}

/// Encodes `text` and measures its perplexity under `model`.
pub fn perplexity<B: Backend>(
    be: &B,
    model: &Llama<B>,
    tok: &Tokenizer,
    text: &str,
    opts: &PerplexityOptions,
) -> Result<PerplexityResult> {
    let bos = opts.add_bos.unwrap_or_else(|| tok.add_bos_default()) && tok.bos_id().is_some();
    let ids = tok.encode(text, bos)?;
    let mut r = perplexity_of_ids(be, model, &ids, opts)?;
    r.bos = bos;
    r.words = count_words(text);
    let text_tokens = ids.len() - usize::from(bos);
    r.tokens_per_word = if r.words == 0 { 0.0 } else { text_tokens as f64 / r.words as f64 };
    Ok(r)
}

/// Perplexity of already-encoded tokens (`words` and `tokens_per_word` are left at 0).
pub fn perplexity_of_ids<B: Backend>(
    be: &B,
    model: &Llama<B>,
    ids: &[u32],
    opts: &PerplexityOptions,
) -> Result<PerplexityResult> {
    let ctx = model.config.max_seq_len;
    let max_length = opts.max_length.unwrap_or(ctx.min(DEFAULT_MAX_LENGTH));
    if max_length > ctx {
        return Err(Error::Input(format!(
            "--max-length {max_length} is longer than the model's context of {ctx} tokens"
        )));
    }
    let stride = opts.stride.unwrap_or((max_length / 2).max(1));
    let windows = plan_windows(ids.len(), max_length, stride)?;
    let vocab = model.config.vocab_size;

    let mut nll_sum = 0.0f64;
    let mut scored = 0usize;
    let per_batch = (LOGITS_BUDGET / (max_length * vocab)).max(1);
    let mut i = 0;
    while i < windows.len() {
        // Consecutive windows of the same length go through one batched forward pass.
        let len = windows[i].end - windows[i].begin;
        let mut j = i + 1;
        while j < windows.len() && j - i < per_batch && windows[j].end - windows[j].begin == len {
            j += 1;
        }
        let batch = &windows[i..j];
        let input: Vec<u32> = batch.iter().flat_map(|w| ids[w.begin..w.end].iter().copied()).collect();
        let logits = model.forward(be, &input, batch.len(), len, None, Logits::All)?;
        for (b, w) in batch.iter().enumerate() {
            for (t, &target) in ids.iter().enumerate().take(w.end).skip(w.first_scored) {
                let row = b * len + (t - 1 - w.begin);
                nll_sum -= log_prob(&logits[row * vocab..(row + 1) * vocab], target);
                scored += 1;
            }
        }
        i = j;
    }
    let mean_nll = nll_sum / scored as f64;
    Ok(PerplexityResult {
        tokens: ids.len(),
        bos: false,
        windows: windows.len(),
        max_length,
        stride,
        scored_tokens: scored,
        nll_sum,
        mean_nll,
        perplexity: mean_nll.exp(),
        words: 0,
        tokens_per_word: 0.0,
    })
}

/// `log softmax(row)[target]`, accumulated in f64.
pub(crate) fn log_prob(row: &[f32], target: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[target as usize] as f64 - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_score_every_token_once() {
        for (n, len, stride) in [(10, 4, 2), (10, 4, 4), (9, 4, 3), (3, 8, 4), (2, 2, 1), (100, 16, 5)] {
            let ws = plan_windows(n, len, stride).unwrap();
            let mut next = 1;
            for w in &ws {
                assert!(w.end - w.begin <= len && w.first_scored > w.begin);
                // Nothing is scored twice; a token is skipped only when it starts a window and
                // the previous window ended right before it (stride == window length).
                assert_eq!(w.first_scored, next.max(w.begin + 1), "{n} {len} {stride}: {ws:?}");
                next = w.end;
            }
            assert_eq!(next, n);
        }
        assert!(plan_windows(1, 4, 2).unwrap_err().to_string().contains("shorter than one window"));
        assert!(plan_windows(10, 4, 5).is_err());
        assert!(plan_windows(10, 4, 0).is_err());
    }

    #[test]
    fn log_prob_is_log_softmax() {
        let row = [1.0f32, 2.0, 3.0];
        let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
        assert!((log_prob(&row, 1) - (2.0 - z.ln())).abs() < 1e-12);
    }
}
