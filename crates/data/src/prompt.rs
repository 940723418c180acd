//! Prompt datasets, for on-policy training (GRPO): each row a prompt the model answers, and the
//! columns the rewards read.
//!
//! Row layout (`column_map` may rename `prompt`): a `prompt` column holding a string, or a list
//! of chat messages (OpenAI `{"role", "content"}` or ShareGPT `{"from", "value"}`; a CSV cell
//! holding a JSON list is a message list) whose last message is not the assistant's. Every other
//! column is kept, as JSON, in [`PromptRow::fields`] for the rewards (`answer`, `lang`, ...).
//!
//! Encoding, as for preference prompts. With a chat template (`template: auto` when the
//! tokenizer has one, or `chat`): the template applied to the prompt messages (a string prompt
//! is one user message) with the generation prompt; a template that fails on a row is an error
//! naming the row, and a tokenizer without a template falls back to the vocabulary's native
//! Llama-3 or ChatML format. Plain (`template: plain`, or `auto` without a chat template): BOS
//! (when the tokenizer adds one) + the prompt text; message-list prompts then are an error.
//!
//! Length. The limit is `max_prompt_tokens` (TRL's `max_prompt_length`), or `max_seq_len` when
//! unset. A longer prompt, with `long_rows: truncate` (the default), keeps its **last** tokens
//! (it is cut from the left, as TRL does: the question and the generation prompt stay, the start
//! of a long system message goes) and is counted in the statistics; with `drop` it is left out;
//! with `error` the first one is an error naming its row. [`PromptRow::text`] is always the whole
//! rendered prompt.

use std::collections::BTreeMap;

use afinar_tokenizer::{Message, Tokenizer};
use serde_json::Value;

use crate::dataset::{chat_formats, encode_chat_rows, read_kind_rows};
use crate::encode::Encoder;
use crate::loader::Epochs;
use crate::records::{extract_prompts, Part};
use crate::{
    DataError, DatasetKind, DatasetSpec, DatasetStats, FileFormat, InstructTemplate, LongRows, PromptFormat,
    RowLoc, TrainOn,
};

/// One prompt, rendered and tokenized, with the row's other columns.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptRow {
    /// The prompt's tokens, after truncation: what generation starts from.
    pub ids: Vec<u32>,
    /// The whole rendered prompt (chat template and generation prompt included), before
    /// truncation.
    pub text: String,
    /// The prompt as messages (a string prompt is one user message).
    pub messages: Vec<Message>,
    /// Every column but the prompt, as JSON (CSV cells are strings).
    pub fields: BTreeMap<String, Value>,
    /// Whether the prompt was cut (from the left) to the limit.
    pub truncated: bool,
    /// 0-based index of the row among the file's data rows.
    pub row: usize,
    /// Where the row is in its file.
    pub at: RowLoc,
}

impl PromptRow {
    /// The prompt's own words: the last user message (a string prompt's text), else the last
    /// message. What a reward looks at for "the language of the question".
    pub fn user_text(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .or(self.messages.last())
            .map_or("", |m| m.content.as_str())
    }
}

/// A file of prompts, read, checked, rendered and tokenized.
#[derive(Clone, Debug)]
pub struct PromptDataset {
    rows: Vec<PromptRow>,
    max_prompt_tokens: usize,
    stats: DatasetStats,
}

impl PromptDataset {
    /// Reads, checks, renders and tokenizes `spec.source` (a spec of kind
    /// [`DatasetKind::Prompt`]); see the module documentation for the layout, the encoding and
    /// the length rule. Errors name the file, row and column of the first bad row; a file
    /// without rows, or with none left, is an error.
    pub fn load(spec: &DatasetSpec, tok: &Tokenizer) -> Result<PromptDataset, DataError> {
        let (format, raw, ats) = read_kind_rows(spec, DatasetKind::Prompt, "PromptDataset::load")?;
        let path = spec.source.as_path();
        let limit = spec.max_prompt_tokens.unwrap_or(spec.max_seq_len);
        let records = extract_prompts(spec, path, &raw, format == FileFormat::Csv)?;
        let enc = Encoder::new(tok, TrainOn::Assistant);
        let use_chat = match spec.template {
            InstructTemplate::Plain => false,
            InstructTemplate::Chat => true,
            InstructTemplate::Auto | InstructTemplate::Alpaca => tok.chat_template().is_some(),
        };
        let messages: Vec<Vec<Message>> = records
            .iter()
            .map(|r| match &r.prompt {
                Part::Text(t) => vec![Message::new("user", t.clone())],
                Part::Messages(m) => m.clone(),
            })
            .collect();
        let (encoded, prompt_format, fallback): (Vec<(String, Vec<u32>)>, _, _) = if use_chat {
            let (native, first) = chat_formats(tok, "template: plain for string prompts")?;
            encode_chat_rows(path, &ats, native, first, |format, i| {
                let text = enc.render(format, &messages[i], true)?;
                let ids = enc.encode(&text)?;
                Ok((text, ids))
            })?
        } else {
            let mut out = Vec::with_capacity(records.len());
            for (r, &at) in records.iter().zip(&ats) {
                let text = match &r.prompt {
                    Part::Text(t) => t.clone(),
                    Part::Messages(_) => {
                        return Err(DataError::InvalidValue {
                            path: path.to_path_buf(),
                            at,
                            column: spec.column("prompt").to_string(),
                            message: "a plain-text prompt dataset (template: plain, or a tokenizer \
                                      without a chat template) needs string prompts; message lists \
                                      need a chat template (template: auto or chat)"
                                .into(),
                        })
                    }
                };
                let mut ids = Vec::new();
                if enc.add_bos {
                    ids.extend(tok.bos_id());
                }
                ids.extend(enc.encode(&text).map_err(|e| DataError::Tokenizer {
                    path: path.to_path_buf(),
                    at,
                    source: Box::new(e),
                })?);
                out.push((text, ids));
            }
            (out, PromptFormat::Text, None)
        };
        let mut stats = DatasetStats {
            rows: raw.len(),
            prompt_format: Some(prompt_format),
            template_fallback: fallback,
            ..DatasetStats::default()
        };
        let listed = DatasetStats::MAX_LISTED;
        let mut rows = Vec::with_capacity(encoded.len());
        for (row, (((text, mut ids), rec), msgs)) in
            encoded.into_iter().zip(records).zip(messages).enumerate()
        {
            let at = ats[row];
            if ids.is_empty() {
                return Err(DataError::InvalidValue {
                    path: path.to_path_buf(),
                    at,
                    column: spec.column("prompt").to_string(),
                    message: "the prompt encodes to no tokens".into(),
                });
            }
            let truncated = ids.len() > limit;
            if truncated {
                match spec.long_rows {
                    LongRows::Truncate => {
                        ids.drain(..ids.len() - limit);
                        stats.truncated += 1;
                        if stats.truncated_at.len() < listed {
                            stats.truncated_at.push(at);
                        }
                    }
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
                            tokens: ids.len(),
                            max_seq_len: limit,
                        })
                    }
                }
            }
            stats.tokens += ids.len();
            rows.push(PromptRow { ids, text, messages: msgs, fields: rec.fields, truncated, row, at });
        }
        stats.kept = rows.len();
        if rows.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
                message: format!(
                    "no prompt is left ({}); raise max_prompt_tokens or set dataset.long_rows to truncate",
                    stats.summary(limit)
                ),
            });
        }
        Ok(PromptDataset { rows, max_prompt_tokens: limit, stats })
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there is no prompt (never true for a loaded dataset).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// All prompts, in file order.
    pub fn rows(&self) -> &[PromptRow] {
        &self.rows
    }

    /// Prompt `i`, in file order; panics if `i >= len()`.
    pub fn row(&self, i: usize) -> &PromptRow {
        &self.rows[i]
    }

    /// The limit every prompt fits in (`max_prompt_tokens`, or `max_seq_len`).
    pub fn max_prompt_tokens(&self) -> usize {
        self.max_prompt_tokens
    }

    /// What loading did: rows, truncations, drops, prompt tokens, the prompt format used.
    pub fn stats(&self) -> &DatasetStats {
        &self.stats
    }
}

/// Serves a [`PromptDataset`]'s prompts in batches of indices, shuffled per epoch from
/// `(seed, epoch)` with the same generator as [`crate::Loader`], resumable at any batch.
#[derive(Clone, Copy, Debug)]
pub struct PromptLoader {
    walk: Epochs,
}

impl PromptLoader {
    /// A loader of `batch_size` prompts per batch over `ds`, shuffled each epoch when `shuffle`.
    /// The last, smaller batch of an epoch is kept; see [`PromptLoader::drop_last`].
    pub fn new(ds: &PromptDataset, batch_size: usize, shuffle: bool, seed: u64) -> Result<Self, DataError> {
        Ok(PromptLoader { walk: Epochs::new(ds.len(), batch_size, shuffle, seed)? })
    }

    /// Leaves out each epoch's last batch when it has fewer than `batch_size` prompts.
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

    /// The order prompts are visited in `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        self.walk.order(epoch)
    }

    /// The dataset indices of batch `index` of `epoch`, or `None` past the end of the epoch.
    pub fn batch(&self, epoch: usize, index: usize) -> Option<Vec<usize>> {
        (index < self.batches_per_epoch()).then(|| self.walk.batch_of(&self.order(epoch), index).to_vec())
    }
}
