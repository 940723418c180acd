//! Reward tasks: generate an answer to each prompt of a GRPO prompt file and score it with the
//! `grpo` recipe's rewards — the held-out mean reward before and after GRPO, per language.
//!
//! The file is the recipe's prompt dataset (read as `dataset.kind: prompt`: a `prompt` string or
//! message list per row, other fields for the rewards; see [`afinar_data::PromptDataset`]); rows
//! with a `lang` field are kept only when it equals the task's language. The rewards are a
//! [`RewardSet`], the `grpo` recipe's `rewards:` list. The
//! prompt goes through the chat template as in training; generation is greedy by default (or
//! sampled with `temperature`/`top_p`/`top_k` and `seed`), stops at the tokenizer's stop tokens,
//! a stop string (kept) or `max_new_tokens`.

use std::path::Path;

use afinar_engine::Backend;
use afinar_tokenizer::Tokenizer;
use serde::Serialize;

use crate::generate::{generate_group, row_seed, GroupOptions, SamplingParams};
use crate::models::Llama;
use crate::rewards::{Completion, RewardSet};
use crate::{Error, Result};
use afinar_data::{DatasetKind, DatasetSpec, PromptDataset, PromptRow};

/// Settings of a reward task.
#[derive(Debug, Clone)]
pub struct RewardTaskOptions {
    /// Most new tokens per answer.
    pub max_new_tokens: usize,
    /// Stop strings (kept in the answer, as in training).
    pub stop: Vec<String>,
    /// Sampling (temperature 0: greedy).
    pub sampling: SamplingParams,
    /// The rewards.
    pub rewards: RewardSet,
    /// Score only the first items (after the language filter).
    pub limit: Option<usize>,
}

/// One scored answer.
#[derive(Debug, Clone, Serialize)]
pub struct RewardItem {
    /// The row's index among the file's data rows (0-based).
    pub row: usize,
    /// The answer.
    pub answer: String,
    /// Its weighted reward.
    pub reward: f64,
}

/// The mean reward of a task.
#[derive(Debug, Clone, Serialize)]
pub struct RewardResult {
    /// Items scored.
    pub items_scored: usize,
    /// Mean weighted reward.
    pub mean_reward: f64,
    /// Its standard error (`None` with fewer than 2 items).
    pub mean_reward_stderr: Option<f64>,
    /// Each reward's mean, by name.
    pub reward_means: Vec<(String, f64)>,
    /// Per item.
    pub items: Vec<RewardItem>,
}

/// The rows of `file` for `language` (rows without `lang` are kept).
pub fn load_reward_prompts(
    file: &Path,
    tok: &Tokenizer,
    language: &str,
    max_len: usize,
) -> Result<Vec<PromptRow>> {
    let mut spec = DatasetSpec::new(DatasetKind::Prompt, file.to_path_buf());
    spec.max_seq_len = max_len;
    spec.max_prompt_tokens = Some(max_len);
    let data = PromptDataset::load(&spec, tok).map_err(|e| Error::Input(e.to_string()))?;
    let kept: Vec<PromptRow> = data
        .rows()
        .iter()
        .filter(|r| r.fields.get("lang").and_then(|v| v.as_str()).is_none_or(|l| l == language))
        .cloned()
        .collect();
    if kept.is_empty() {
        return Err(Error::Input(format!("{}: no prompt rows for language {language}", file.display())));
    }
    Ok(kept)
}

/// Generates an answer to each prompt and scores it.
pub fn score_reward_task<B: Backend>(
    be: &B,
    model: &Llama<B>,
    tok: &Tokenizer,
    prompts: &[PromptRow],
    opts: &RewardTaskOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<RewardResult> {
    let prompts = &prompts[..opts.limit.unwrap_or(prompts.len()).min(prompts.len())];
    if prompts.is_empty() {
        return Err(Error::Input("no items to score".into()));
    }
    let detok = |ids: &[u32]| -> Result<String> {
        tok.decode(ids, true).map_err(|e| Error::Input(format!("decoding an answer: {e}")))
    };
    let mut answers = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let g = GroupOptions {
            max_new_tokens: opts.max_new_tokens,
            sampling: opts.sampling,
            stop_ids: tok.stop_ids(),
            stop_strings: opts.stop.clone(),
            seeds: vec![row_seed(opts.sampling.seed, 0, i as u64, 0)],
        };
        let d: &dyn Fn(&[u32]) -> Result<String> = &detok;
        let (out, _) = generate_group(be, model, &p.ids, &g, Some(d), true)
            .map_err(|e| Error::Input(format!("row {}: {e}", p.row)))?;
        answers.push(out.into_iter().next().map(|c| (c.ids.len(), c.text)).unwrap_or_default());
        progress(i + 1, prompts.len());
    }
    let batch: Vec<Completion<'_>> =
        prompts.iter().zip(&answers).map(|(p, (n, a))| Completion::of_row(p, a, *n)).collect();
    let scores = opts.rewards.score(&batch).map_err(|e| Error::Input(e.to_string()))?;
    let (mean_reward, mean_reward_stderr) = mean_stderr_f64(&scores.total);
    let reward_means = scores.names.iter().enumerate().map(|(k, n)| (n.clone(), scores.mean(k))).collect();
    let items = prompts
        .iter()
        .zip(answers)
        .zip(&scores.total)
        .map(|((p, (_, answer)), &reward)| RewardItem { row: p.row, answer, reward })
        .collect();
    Ok(RewardResult {
        items_scored: scores.total.len(),
        mean_reward,
        mean_reward_stderr,
        reward_means,
        items,
    })
}

/// Mean and standard error of the mean (`None` with fewer than 2 values).
fn mean_stderr_f64(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n.max(1.0);
    if xs.len() < 2 {
        return (mean, None);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some((var / n).sqrt()))
}
