//! Preference pairs (DPO-style data): a prompt and two responses, the chosen and the rejected.
//!
//! Row layouts (the columns renamed by `column_map`, roles `prompt`, `chosen`, `rejected` and
//! the optional `lang`):
//! - `prompt` + `chosen` + `rejected` strings; the prompt may also be a message list;
//! - UltraFeedback: a `prompt` (string or messages) and `chosen` / `rejected` message lists
//!   whose last message is the assistant's answer (the messages before it, if any, must repeat
//!   the prompt);
//! - HH-RLHF (as `trl-lib/hh-rlhf-helpful-base`): no `prompt`; `chosen` and `rejected` are two
//!   whole conversations, the prompt is the messages they share from the start and each answer
//!   the (assistant) messages after it.
//!
//! CSV cells that hold a JSON list are message lists.
//!
//! Encoding. With a chat template (`template: auto` when the tokenizer has one, or `chat`): the
//! prompt is the template applied to the prompt messages (a string prompt is one user message)
//! with the generation prompt; a response is the rest of the rendering of prompt + answer, up to
//! and including its last stop token (ChatML's `<|im_end|>`, Llama-3's `<|eot_id|>`), or with
//! EOS added when the template writes none. Templates that cannot be split this way fall back to
//! the vocabulary's native format, as for chat datasets. Plain text (`template: plain`, or `auto`
//! without a chat template): BOS (when the tokenizer adds one) + the prompt text; the response
//! text + EOS. Only response tokens carry loss.
//!
//! Truncation, for a pair whose prompt `P` plus longer response `max(C, R)` exceeds
//! `max_seq_len` `L`, with `long_rows: truncate` (the default):
//! 1. the pair keeps room for `K = min(min_response_tokens, max(C, R), L - 1)` response tokens:
//!    if `P > L - K`, the prompt is cut from the left to its last `L - K` tokens (keep_end);
//! 2. each response is then cut at the end (keep_start) to `L - P'` tokens, `P'` the prompt's
//!    length after step 1.
//!
//! So both sequences (prompt + chosen, prompt + rejected) fit in `L`, the prompt keeps its end
//! (the question and the generation prompt) and every response keeps its start. With
//! `long_rows: drop` such pairs are left out, with `error` the first is an error.

use std::path::Path;

use afinar_tokenizer::{Message, Tokenizer};

use crate::dataset::{chat_formats, encode_chat_rows, read_kind_rows};
use crate::encode::{ChatIssue, Encoder};
use crate::loader::{padded_batch, Epochs};
use crate::records::{extract_preference, Part, PrefRecord};
use crate::{
    Batch, DataError, DatasetKind, DatasetSpec, DatasetStats, FileFormat, InstructTemplate, LongRows,
    PromptFormat, RowLoc, Sample, TrainOn,
};

/// One tokenized preference pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreferencePair {
    /// The prompt's tokens (after truncation).
    pub prompt_ids: Vec<u32>,
    /// The chosen response's tokens (after truncation): all of them carry loss.
    pub chosen_ids: Vec<u32>,
    /// The rejected response's tokens (after truncation): all of them carry loss.
    pub rejected_ids: Vec<u32>,
    /// Whether the prompt or a response was cut to fit `max_seq_len`.
    pub truncated: bool,
    /// The row's `lang` column, when it has one.
    pub lang: Option<String>,
    /// Where the row is in its file.
    pub at: RowLoc,
}

impl PreferencePair {
    fn sample(&self, response: &[u32]) -> Sample {
        let mut ids = self.prompt_ids.clone();
        ids.extend_from_slice(response);
        let mut trained = vec![false; self.prompt_ids.len()];
        trained.resize(ids.len(), true);
        Sample::from_mask(ids, trained, usize::MAX)
    }

    /// Prompt + chosen response, with shifted labels on the response tokens only.
    pub fn chosen_sample(&self) -> Sample {
        self.sample(&self.chosen_ids)
    }

    /// Prompt + rejected response, with shifted labels on the response tokens only.
    pub fn rejected_sample(&self) -> Sample {
        self.sample(&self.rejected_ids)
    }
}

/// A file of preference pairs, read, checked, tokenized and truncated.
#[derive(Clone, Debug)]
pub struct PreferenceDataset {
    pairs: Vec<PreferencePair>,
    max_seq_len: usize,
    stats: DatasetStats,
}

impl PreferenceDataset {
    /// Reads, checks and tokenizes `spec.source` (a spec of kind [`DatasetKind::Preference`]).
    ///
    /// Errors name the file, row and column of the first bad row. See the module documentation
    /// for the layouts, the encoding and the truncation rules.
    pub fn load(spec: &DatasetSpec, tok: &Tokenizer) -> Result<PreferenceDataset, DataError> {
        let (format, rows, ats) = read_kind_rows(spec, DatasetKind::Preference, "PreferenceDataset::load")?;
        let path = spec.source.as_path();
        let records = extract_preference(spec, path, &rows, format == FileFormat::Csv)?;
        let (encoded, prompt_format, fallback) = encode_all(spec, tok, path, &ats, &records)?;
        let mut stats = DatasetStats {
            rows: rows.len(),
            prompt_format: Some(prompt_format),
            template_fallback: fallback,
            ..DatasetStats::default()
        };
        let listed = DatasetStats::MAX_LISTED;
        let mut pairs = Vec::with_capacity(encoded.len());
        for ((prompt, chosen, rejected), (rec, &at)) in encoded.into_iter().zip(records.into_iter().zip(&ats))
        {
            for (ids, column) in [(&chosen, "chosen"), (&rejected, "rejected")] {
                if ids.is_empty() {
                    return Err(DataError::InvalidValue {
                        path: path.to_path_buf(),
                        at,
                        column: spec.column(column).to_string(),
                        message: "the response encodes to no tokens".into(),
                    });
                }
            }
            let longest = prompt.len() + chosen.len().max(rejected.len());
            if longest > spec.max_seq_len {
                match spec.long_rows {
                    LongRows::Truncate => {}
                    LongRows::Drop => {
                        stats.dropped_too_long += 1;
                        if stats.dropped_too_long_at.len() < listed {
                            stats.dropped_too_long_at.push(at);
                        }
                        continue;
                    }
                    LongRows::Error => {
                        return Err(DataError::TooLong {
                            path: path.to_path_buf(),
                            at,
                            tokens: longest,
                            max_seq_len: spec.max_seq_len,
                        })
                    }
                }
            }
            let pair = truncate_pair(
                prompt,
                chosen,
                rejected,
                spec.max_seq_len,
                spec.min_response_tokens,
                rec.lang,
                at,
            );
            if pair.truncated {
                stats.truncated += 1;
                if stats.truncated_at.len() < listed {
                    stats.truncated_at.push(at);
                }
            }
            stats.tokens += 2 * pair.prompt_ids.len() + pair.chosen_ids.len() + pair.rejected_ids.len();
            stats.label_tokens += pair.chosen_ids.len() + pair.rejected_ids.len();
            pairs.push(pair);
        }
        stats.kept = pairs.len();
        if pairs.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
                message: format!(
                    "no pair is left ({}); raise max_seq_len or set dataset.long_rows to truncate",
                    stats.summary(spec.max_seq_len)
                ),
            });
        }
        Ok(PreferenceDataset { pairs, max_seq_len: spec.max_seq_len, stats })
    }

    /// A dataset from pairs made elsewhere (each prompt + response at most `max_seq_len` tokens,
    /// responses non-empty).
    pub fn from_pairs(pairs: Vec<PreferencePair>, max_seq_len: usize) -> Result<Self, DataError> {
        for (i, p) in pairs.iter().enumerate() {
            let longest = p.prompt_ids.len() + p.chosen_ids.len().max(p.rejected_ids.len());
            if p.chosen_ids.is_empty() || p.rejected_ids.is_empty() || longest > max_seq_len {
                return Err(DataError::Config(format!(
                    "pair {i}: responses of {} and {} tokens after a {}-token prompt; each response \
                     needs at least one token and prompt + response at most {max_seq_len}",
                    p.chosen_ids.len(),
                    p.rejected_ids.len(),
                    p.prompt_ids.len()
                )));
            }
        }
        let stats = DatasetStats {
            rows: pairs.len(),
            kept: pairs.len(),
            truncated: pairs.iter().filter(|p| p.truncated).count(),
            tokens: pairs
                .iter()
                .map(|p| 2 * p.prompt_ids.len() + p.chosen_ids.len() + p.rejected_ids.len())
                .sum(),
            label_tokens: pairs.iter().map(|p| p.chosen_ids.len() + p.rejected_ids.len()).sum(),
            ..DatasetStats::default()
        };
        Ok(PreferenceDataset { pairs, max_seq_len, stats })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there is no pair (never true for a loaded dataset).
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// All pairs, in file order.
    pub fn pairs(&self) -> &[PreferencePair] {
        &self.pairs
    }

    /// The limit every prompt + response fits in.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// What loading did: rows, truncations, drops, tokens (prompts counted twice), the prompt
    /// format used.
    pub fn stats(&self) -> &DatasetStats {
        &self.stats
    }
}

/// Applies the truncation rules of the module documentation.
fn truncate_pair(
    mut prompt: Vec<u32>,
    mut chosen: Vec<u32>,
    mut rejected: Vec<u32>,
    max_seq_len: usize,
    min_response: usize,
    lang: Option<String>,
    at: RowLoc,
) -> PreferencePair {
    let longest = chosen.len().max(rejected.len());
    let truncated = prompt.len() + longest > max_seq_len;
    if truncated {
        let keep_room = min_response.min(longest).min(max_seq_len - 1);
        let prompt_max = max_seq_len - keep_room;
        if prompt.len() > prompt_max {
            prompt.drain(..prompt.len() - prompt_max);
        }
        let response_max = max_seq_len - prompt.len();
        chosen.truncate(response_max);
        rejected.truncate(response_max);
    }
    PreferencePair { prompt_ids: prompt, chosen_ids: chosen, rejected_ids: rejected, truncated, lang, at }
}

type Encoded = (Vec<(Vec<u32>, Vec<u32>, Vec<u32>)>, PromptFormat, Option<String>);

fn messages(part: &Part, role: &str) -> Vec<Message> {
    match part {
        Part::Text(t) => vec![Message::new(role, t.clone())],
        Part::Messages(m) => m.clone(),
    }
}

/// Tokenizes every record: prompt, chosen and rejected ids.
fn encode_all(
    spec: &DatasetSpec,
    tok: &Tokenizer,
    path: &Path,
    ats: &[RowLoc],
    records: &[PrefRecord],
) -> Result<Encoded, DataError> {
    let enc = Encoder::new(tok, TrainOn::Assistant);
    let tok_err =
        |at: RowLoc, source| DataError::Tokenizer { path: path.to_path_buf(), at, source: Box::new(source) };
    let use_chat = match spec.template {
        InstructTemplate::Plain => false,
        InstructTemplate::Chat => true,
        InstructTemplate::Auto | InstructTemplate::Alpaca => tok.chat_template().is_some(),
    };
    if !use_chat {
        let mut out = Vec::with_capacity(records.len());
        for (r, &at) in records.iter().zip(ats) {
            let text = |p: &Part, column: &str| match p {
                Part::Text(t) => Ok(t.clone()),
                Part::Messages(_) => Err(DataError::InvalidValue {
                    path: path.to_path_buf(),
                    at,
                    column: spec.column(column).to_string(),
                    message: "plain-text preference data needs strings; message lists need a chat \
                              template (template: auto or chat)"
                        .into(),
                }),
            };
            let mut prompt = Vec::new();
            if enc.add_bos {
                prompt.extend(tok.bos_id());
            }
            prompt.extend(enc.encode(&text(&r.prompt, "prompt")?).map_err(|e| tok_err(at, e))?);
            let response = |p: &Part, column: &str| -> Result<Vec<u32>, DataError> {
                let mut ids = enc.encode(&text(p, column)?).map_err(|e| tok_err(at, e))?;
                ids.extend(tok.eos_id());
                Ok(ids)
            };
            out.push((prompt, response(&r.chosen, "chosen")?, response(&r.rejected, "rejected")?));
        }
        return Ok((out, PromptFormat::Text, None));
    }
    let (native, format) = chat_formats(tok, "template: plain for string preference data")?;
    encode_chat_rows(path, ats, native, format, |format, i| {
        let r = &records[i];
        let prompt = messages(&r.prompt, "user");
        let prompt_text = enc.render(format, &prompt, true)?;
        let prompt_ids = enc.encode(&prompt_text)?;
        let chosen = chat_response(&enc, format, &prompt, &prompt_text, &messages(&r.chosen, "assistant"))?;
        let rejected =
            chat_response(&enc, format, &prompt, &prompt_text, &messages(&r.rejected, "assistant"))?;
        Ok((prompt_ids, chosen, rejected))
    })
}

/// The tokens a chat response adds after the prompt (rendered with the generation prompt): up
/// to and including the last stop token, or with EOS added when there is none.
fn chat_response(
    enc: &Encoder<'_>,
    format: PromptFormat,
    prompt: &[Message],
    prompt_text: &str,
    answer: &[Message],
) -> Result<Vec<u32>, ChatIssue> {
    let mut all = prompt.to_vec();
    all.extend_from_slice(answer);
    let full = enc.render(format, &all, false)?;
    let Some(body) = full.strip_prefix(prompt_text) else {
        return Err(ChatIssue::NotIncremental(
            "the chat template cannot be split into prompt and response: the rendering with the \
             answer does not start with the prompt rendered with the generation prompt"
                .into(),
        ));
    };
    let mut ids = enc.encode(body)?;
    match ids.iter().rposition(|id| enc.stop_ids.contains(id)) {
        Some(p) => ids.truncate(p + 1),
        None => ids.extend(enc.tok.eos_id()),
    }
    Ok(ids)
}

/// A batch of preference pairs: rows `0..pairs` are prompt + chosen, rows `pairs..2 * pairs`
/// prompt + rejected (pair `i`'s rejected row is `pairs + i`), right-padded to the longest row,
/// labels on the response tokens only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreferenceBatch {
    /// The `2 * pairs` rows.
    pub batch: Batch,
    /// Pairs in the batch.
    pub pairs: usize,
    /// Index in the dataset of each pair, in row order.
    pub indices: Vec<usize>,
}

/// Serves a [`PreferenceDataset`] in batches of pairs, shuffled per epoch from `(seed, epoch)`
/// with the same generator as [`crate::Loader`], resumable at any batch.
#[derive(Clone, Copy, Debug)]
pub struct PreferenceLoader<'a> {
    ds: &'a PreferenceDataset,
    walk: Epochs,
    pad_id: u32,
}

impl<'a> PreferenceLoader<'a> {
    /// A loader of `batch_size` pairs per batch, shuffled each epoch when `shuffle`, padding
    /// with `pad_id`. The last, smaller batch of an epoch is kept; see
    /// [`PreferenceLoader::drop_last`].
    pub fn new(
        ds: &'a PreferenceDataset,
        batch_size: usize,
        shuffle: bool,
        seed: u64,
        pad_id: u32,
    ) -> Result<Self, DataError> {
        Ok(PreferenceLoader { ds, walk: Epochs::new(ds.len(), batch_size, shuffle, seed)?, pad_id })
    }

    /// Leaves out each epoch's last batch when it has fewer than `batch_size` pairs.
    pub fn drop_last(mut self, drop: bool) -> Self {
        self.walk = self.walk.drop_last(drop);
        self
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.walk.batches_per_epoch()
    }

    /// `(epoch, batch within the epoch)` of the `step`-th batch of a run (0-based).
    pub fn locate(&self, step: usize) -> (usize, usize) {
        self.walk.locate(step)
    }

    /// The order pairs are visited in `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        self.walk.order(epoch)
    }

    /// Batch `index` of `epoch`, or `None` past the end of the epoch.
    pub fn batch(&self, epoch: usize, index: usize) -> Option<PreferenceBatch> {
        (index < self.batches_per_epoch()).then(|| self.build(&self.order(epoch), index))
    }

    /// The batches of `epoch` from batch `start` on (exact resume).
    pub fn epoch_from(
        &self,
        epoch: usize,
        start: usize,
    ) -> impl ExactSizeIterator<Item = PreferenceBatch> + 'a {
        let this = *self;
        let order = self.order(epoch);
        (start.min(self.batches_per_epoch())..self.batches_per_epoch()).map(move |i| this.build(&order, i))
    }

    /// The batches of `epoch`.
    pub fn epoch(&self, epoch: usize) -> impl ExactSizeIterator<Item = PreferenceBatch> + 'a {
        self.epoch_from(epoch, 0)
    }

    fn build(&self, order: &[usize], index: usize) -> PreferenceBatch {
        let indices = self.walk.batch_of(order, index).to_vec();
        let pairs = &self.ds.pairs;
        let mut samples: Vec<Sample> = indices.iter().map(|&i| pairs[i].chosen_sample()).collect();
        samples.extend(indices.iter().map(|&i| pairs[i].rejected_sample()));
        let rows: Vec<&[Sample]> = samples.iter().map(std::slice::from_ref).collect();
        PreferenceBatch { batch: padded_batch(&rows, self.pad_id), pairs: indices.len(), indices }
    }
}
