//! Preference tasks: does the model prefer the chosen response to the rejected one?
//!
//! The file is a preference dataset (any layout and format `afinar-data` reads as
//! [`afinar_data::DatasetKind::Preference`]: `prompt` / `chosen` / `rejected` strings,
//! UltraFeedback or HH-RLHF message lists; JSON, JSONL, CSV or Parquet), encoded exactly as
//! preference training encodes it (through the chat template when the tokenizer has one). For
//! each pair the score of a response is the sum of the log-probabilities of its tokens given the
//! prompt (the policy alone, no reference model); the margin is chosen minus rejected. The task
//! reports the accuracy (the share of pairs with a margin > 0; ties count as wrong) and the mean
//! margin, each with its standard error (sample standard deviation over √n).
//!
//! When rows carry a `lang` column, a task scores only the rows whose `lang` is the task's
//! language (`-`: every row), so one file gives one column per language in the report.

use std::path::Path;

use afinar_data::{DatasetKind, DatasetSpec, InstructTemplate, LongRows, PreferenceDataset, PreferencePair};
use afinar_engine::Backend;
use afinar_tokenizer::Tokenizer;
use serde::Serialize;

use super::choice::{continuation_loglikelihoods, mean_stderr};
use crate::models::Llama;
use crate::{Error, Result};

/// Settings of a preference task.
#[derive(Debug, Clone, Default)]
pub struct PreferenceOptions {
    /// `Auto` (the chat template when there is one), `Chat` or `Plain`.
    pub template: InstructTemplate,
    /// Score only the first pairs (after the language filter).
    pub limit: Option<usize>,
}

/// One pair's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct PreferenceItem {
    /// Where the pair is in its file (`line 3`, `row 2`).
    pub row: String,
    /// Summed log-probability of the chosen response's tokens.
    pub chosen_logprob: f64,
    /// Summed log-probability of the rejected response's tokens.
    pub rejected_logprob: f64,
    /// `chosen_logprob - rejected_logprob`.
    pub margin: f64,
    /// Tokens in the prompt, the chosen and the rejected response.
    pub tokens: [usize; 3],
}

/// The numbers of a preference task.
#[derive(Debug, Clone, Serialize)]
pub struct PreferenceResult {
    /// Pairs scored.
    pub pairs_scored: usize,
    /// Share of pairs whose margin is > 0.
    pub accuracy: f64,
    /// Standard error of `accuracy` (`None` with fewer than 2 pairs).
    pub accuracy_stderr: Option<f64>,
    /// Mean of the margins (nats).
    pub mean_margin: f64,
    /// Standard error of `mean_margin`.
    pub mean_margin_stderr: Option<f64>,
    /// Per pair.
    pub items: Vec<PreferenceItem>,
}

/// Reads and encodes a preference file for `tok` (the model's context is `max_seq_len`: longer
/// pairs are cut as preference training cuts them), keeping the rows of `language` when rows
/// carry a `lang` column (every row for the language `-`, which a `--preference FILE` flag without
/// `LANG=` gets).
pub fn load_preference_pairs(
    path: &Path,
    tok: &Tokenizer,
    language: &str,
    max_seq_len: usize,
    opts: &PreferenceOptions,
) -> Result<Vec<PreferencePair>> {
    let mut spec = DatasetSpec::new(DatasetKind::Preference, path);
    spec.template = opts.template;
    spec.max_seq_len = max_seq_len;
    spec.long_rows = LongRows::Truncate;
    let ds = PreferenceDataset::load(&spec, tok).map_err(|e| Error::Input(e.to_string()))?;
    let pairs = ds.pairs();
    if language == "-" || pairs.iter().all(|p| p.lang.is_none()) {
        return Ok(pairs.to_vec());
    }
    let kept: Vec<PreferencePair> =
        pairs.iter().filter(|p| p.lang.as_deref() == Some(language)).cloned().collect();
    if kept.is_empty() {
        let mut langs: Vec<&str> = pairs.iter().filter_map(|p| p.lang.as_deref()).collect();
        langs.sort_unstable();
        langs.dedup();
        return Err(Error::Input(format!(
            "{}: no row has lang {language:?} (the file's languages: {}); set the task's language \
             to one of them",
            path.display(),
            langs.join(", ")
        )));
    }
    Ok(kept)
}

/// Mean and standard error of real numbers.
fn mean_and_stderr(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, None);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some((var / n).sqrt()))
}

/// Scores `pairs` with `model`: each response's summed log-probability given the prompt.
pub fn score_preference_task<B: Backend>(
    be: &B,
    model: &Llama<B>,
    pairs: &[PreferencePair],
    opts: &PreferenceOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<PreferenceResult> {
    let pairs = &pairs[..opts.limit.unwrap_or(pairs.len()).min(pairs.len())];
    if pairs.is_empty() {
        return Err(Error::Input("no pairs to score".into()));
    }
    let mut items = Vec::with_capacity(pairs.len());
    for p in pairs {
        if p.prompt_ids.is_empty() {
            return Err(Error::Input(format!(
                "{}: the prompt encodes to no tokens (and the tokenizer adds no BOS): nothing to \
                 condition the responses on",
                p.at
            )));
        }
        let conts = [p.chosen_ids.clone(), p.rejected_ids.clone()];
        let lls = continuation_loglikelihoods(be, model, &p.prompt_ids, &conts)
            .map_err(|e| Error::Input(format!("{}: {e}", p.at)))?;
        items.push(PreferenceItem {
            row: p.at.to_string(),
            chosen_logprob: lls[0],
            rejected_logprob: lls[1],
            margin: lls[0] - lls[1],
            tokens: [p.prompt_ids.len(), p.chosen_ids.len(), p.rejected_ids.len()],
        });
        progress(items.len(), pairs.len());
    }
    let (accuracy, accuracy_stderr) = mean_stderr(&items.iter().map(|x| x.margin > 0.0).collect::<Vec<_>>());
    let (mean_margin, mean_margin_stderr) =
        mean_and_stderr(&items.iter().map(|x| x.margin).collect::<Vec<_>>());
    Ok(PreferenceResult {
        pairs_scored: items.len(),
        accuracy,
        accuracy_stderr,
        mean_margin,
        mean_margin_stderr,
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_stderr_of_margins() {
        let (m, s) = mean_and_stderr(&[1.0, 3.0]);
        assert_eq!(m, 2.0);
        // sample variance 2, over n = 2: stderr 1.
        assert!((s.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(mean_and_stderr(&[5.0]).1, None);
    }
}
