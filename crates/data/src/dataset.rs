//! [`Dataset`]: a file read, tokenized, masked, truncated and (optionally) packed.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use afinar_tokenizer::{Message, Tokenizer, TokenizerError};
use rayon::prelude::*;

use crate::encode::{ChatIssue, Encoder, Tokens};
use crate::formats::{read_rows, RawRow};
use crate::records::{extract, Record};
use crate::{
    DataError, DatasetKind, DatasetSpec, FileFormat, InstructTemplate, LongRows, RowLoc, IGNORE_INDEX,
};

/// One tokenized example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Token ids, at most `max_seq_len` of them.
    pub ids: Vec<u32>,
    /// Next-token targets, already shifted: `labels[t]` is the target for position `t` (that is,
    /// `ids[t + 1]`) or [`IGNORE_INDEX`] (-100) where that token carries no loss; the last
    /// position is always -100.
    pub labels: Vec<i32>,
    /// Whether the row was longer than `max_seq_len` and lost its end.
    pub truncated: bool,
}

impl Sample {
    /// A sample from ids and a per-token "carries loss" mask (same length), truncated to
    /// `max_seq_len` tokens (the start is kept). Labels are shifted inside the sample, so a
    /// sample's last position never predicts whatever follows it in a packed row.
    pub fn from_mask(mut ids: Vec<u32>, mut trained: Vec<bool>, max_seq_len: usize) -> Sample {
        assert_eq!(ids.len(), trained.len(), "ids and mask lengths differ");
        let truncated = ids.len() > max_seq_len;
        ids.truncate(max_seq_len);
        trained.truncate(max_seq_len);
        let labels = (0..ids.len())
            .map(|t| match (ids.get(t + 1), trained.get(t + 1)) {
                (Some(&next), Some(true)) => next as i32,
                _ => IGNORE_INDEX,
            })
            .collect();
        Sample { ids, labels, truncated }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the sample has no tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Number of positions with a target (labels other than -100).
    pub fn num_label_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// How rows were turned into text before tokenizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PromptFormat {
    /// Plain text (text-completion datasets).
    Text,
    /// The Alpaca instruction prompt.
    Alpaca,
    /// The tokenizer's own jinja chat template.
    ChatTemplate,
    /// The native Llama-3 chat format (no template, or one that cannot be split per message).
    NativeLlama3,
    /// The native ChatML format (same reasons).
    NativeChatMl,
}

impl fmt::Display for PromptFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PromptFormat::Text => "text",
            PromptFormat::Alpaca => "alpaca",
            PromptFormat::ChatTemplate => "the tokenizer's chat template",
            PromptFormat::NativeLlama3 => "native Llama-3 chat",
            PromptFormat::NativeChatMl => "native ChatML",
        })
    }
}

/// What loading a dataset did, for a user-facing summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatasetStats {
    /// Rows read from the file.
    pub rows: usize,
    /// Rows cut to `max_seq_len` and kept.
    pub truncated: usize,
    /// Rows left out because no token of theirs carries loss (e.g. the prompt alone fills
    /// `max_seq_len`, or a chat has no assistant message).
    pub dropped_no_labels: usize,
    /// Rows left out because they were longer than `max_seq_len` ([`crate::LongRows::Drop`]).
    pub dropped_too_long: usize,
    /// Where the first few truncated rows are (at most [`DatasetStats::MAX_LISTED`]).
    pub truncated_at: Vec<RowLoc>,
    /// Where the first few rows without a token to train on are (at most
    /// [`DatasetStats::MAX_LISTED`]), and whether each was truncated first.
    pub dropped_no_labels_at: Vec<(RowLoc, bool)>,
    /// Where the first few rows dropped for their length are (at most
    /// [`DatasetStats::MAX_LISTED`]).
    pub dropped_too_long_at: Vec<RowLoc>,
    /// Samples kept.
    pub kept: usize,
    /// Tokens in all samples.
    pub tokens: usize,
    /// Positions with a target, in all samples.
    pub label_tokens: usize,
    /// Packed rows, when packing.
    pub packs: Option<usize>,
    /// How rows became text.
    pub prompt_format: Option<PromptFormat>,
    /// Why the tokenizer's chat template was not used, if it was set aside.
    pub template_fallback: Option<String>,
}

impl DatasetStats {
    /// How many row locations each list keeps.
    pub const MAX_LISTED: usize = 5;

    /// One line for a user: rows read, kept, truncated and dropped (with why and where).
    pub fn summary(&self, max_seq_len: usize) -> String {
        fn locs<'a>(n: usize, at: impl Iterator<Item = String> + 'a) -> String {
            let list: Vec<String> = at.collect();
            let more = if n > list.len() { ", …" } else { "" };
            format!(" ({}{more})", list.join(", "))
        }
        let mut s = format!("{} rows read, {} examples kept", self.rows, self.kept);
        if self.truncated > 0 {
            s += &format!(
                "; {} truncated to max_seq_len {max_seq_len}{}",
                self.truncated,
                locs(self.truncated, self.truncated_at.iter().map(ToString::to_string))
            );
        }
        if self.dropped_too_long > 0 {
            s += &format!(
                "; {} dropped: longer than max_seq_len {max_seq_len}{}",
                self.dropped_too_long,
                locs(self.dropped_too_long, self.dropped_too_long_at.iter().map(ToString::to_string))
            );
        }
        if self.dropped_no_labels > 0 {
            s += &format!(
                "; {} dropped: no token to train on{}",
                self.dropped_no_labels,
                locs(
                    self.dropped_no_labels,
                    self.dropped_no_labels_at.iter().map(|(at, cut)| {
                        if *cut {
                            format!("{at}, after truncation")
                        } else {
                            at.to_string()
                        }
                    })
                )
            );
        }
        s
    }
}

/// A tokenized dataset: samples in file order and, when packed, the rows they are packed into.
#[derive(Clone, Debug)]
pub struct Dataset {
    samples: Vec<Sample>,
    packs: Option<Vec<Range<usize>>>,
    max_seq_len: usize,
    stats: DatasetStats,
}

impl Dataset {
    /// Reads, checks and tokenizes `spec.source`.
    ///
    /// Errors name the file, row and column of the first bad row; an empty file, or one where no
    /// row has a token to train on, is an error too.
    pub fn load(spec: &DatasetSpec, tok: &Tokenizer) -> Result<Dataset, DataError> {
        spec.validate()?;
        if spec.kind == DatasetKind::Preference {
            return Err(DataError::Config(
                "preference datasets are pairs: load them with PreferenceDataset::load".into(),
            ));
        }
        if spec.kind == DatasetKind::Prompt {
            return Err(DataError::Config(
                "prompt datasets have no responses to train on: load them with PromptDataset::load".into(),
            ));
        }
        let path = spec.source.as_path();
        let (_, rows) = read_spec_rows(spec)?;
        let records = extract(spec, path, &rows)?;
        let (tokens, prompt_format, fallback) = tokenize(spec, tok, path, &rows, &records)?;
        let mut stats = DatasetStats {
            rows: rows.len(),
            prompt_format: Some(prompt_format),
            template_fallback: fallback,
            ..DatasetStats::default()
        };
        let mut samples = Vec::with_capacity(tokens.len());
        let listed = DatasetStats::MAX_LISTED;
        for (t, row) in tokens.into_iter().zip(&rows) {
            let too_long = t.ids.len() > spec.max_seq_len;
            if too_long {
                match spec.long_rows {
                    LongRows::Truncate => {}
                    LongRows::Drop => {
                        stats.dropped_too_long += 1;
                        if stats.dropped_too_long_at.len() < listed {
                            stats.dropped_too_long_at.push(row.at);
                        }
                        continue;
                    }
                    LongRows::Error => {
                        return Err(DataError::TooLong {
                            path: path.to_path_buf(),
                            at: row.at,
                            tokens: t.ids.len(),
                            max_seq_len: spec.max_seq_len,
                        })
                    }
                }
            }
            let s = Sample::from_mask(t.ids, t.trained, spec.max_seq_len);
            if s.num_label_tokens() == 0 {
                stats.dropped_no_labels += 1;
                if stats.dropped_no_labels_at.len() < listed {
                    stats.dropped_no_labels_at.push((row.at, s.truncated));
                }
                continue;
            }
            if s.truncated {
                stats.truncated += 1;
                if stats.truncated_at.len() < listed {
                    stats.truncated_at.push(row.at);
                }
            }
            samples.push(s);
        }
        stats.kept = samples.len();
        if samples.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
                message: format!(
                    "no row is left to train on ({}); check train_on, dataset.long_rows, and \
                     that max_seq_len {} leaves room for the responses",
                    stats.summary(spec.max_seq_len),
                    spec.max_seq_len
                ),
            });
        }
        let mut ds = Dataset::from_samples(samples, spec.max_seq_len, spec.packed)?;
        stats.tokens = ds.stats.tokens;
        stats.label_tokens = ds.stats.label_tokens;
        stats.packs = ds.stats.packs;
        ds.stats = stats;
        Ok(ds)
    }

    /// A dataset from samples made elsewhere; with `packed`, they are packed greedily, in order,
    /// into rows of at most `max_seq_len` tokens.
    pub fn from_samples(
        samples: Vec<Sample>,
        max_seq_len: usize,
        packed: bool,
    ) -> Result<Dataset, DataError> {
        if max_seq_len == 0 {
            return Err(DataError::Config("max_seq_len must be at least 1".into()));
        }
        for (i, s) in samples.iter().enumerate() {
            if s.ids.is_empty() || s.ids.len() != s.labels.len() || s.ids.len() > max_seq_len {
                return Err(DataError::Config(format!(
                    "sample {i} has {} ids and {} labels; each sample needs 1..={max_seq_len} ids \
                     and as many labels",
                    s.ids.len(),
                    s.labels.len()
                )));
            }
        }
        let packs = packed.then(|| pack_greedy(&samples, max_seq_len));
        let stats = DatasetStats {
            rows: samples.len(),
            truncated: samples.iter().filter(|s| s.truncated).count(),
            tokens: samples.iter().map(Sample::len).sum(),
            label_tokens: samples.iter().map(Sample::num_label_tokens).sum(),
            packs: packs.as_ref().map(Vec::len),
            kept: samples.len(),
            ..DatasetStats::default()
        };
        Ok(Dataset { samples, packs, max_seq_len, stats })
    }

    /// Number of samples (one per kept row).
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there is no sample (never true for a loaded dataset).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Sample `i`, in file order. Panics if `i >= len()`.
    pub fn sample(&self, i: usize) -> &Sample {
        &self.samples[i]
    }

    /// All samples, in file order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Positions with a target in the whole dataset (what tokens/s counts).
    pub fn num_label_tokens(&self) -> usize {
        self.stats.label_tokens
    }

    /// Tokens in the whole dataset, padding not counted.
    pub fn num_tokens(&self) -> usize {
        self.stats.tokens
    }

    /// The sequence length samples were truncated to, and packed rows have.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// Whether samples are packed into rows.
    pub fn is_packed(&self) -> bool {
        self.packs.is_some()
    }

    /// The packed rows, each a range of consecutive samples, when packed.
    pub fn packs(&self) -> Option<&[Range<usize>]> {
        self.packs.as_deref()
    }

    /// The units a [`crate::Loader`] shuffles and batches: packed rows when packed, samples
    /// otherwise.
    pub fn num_examples(&self) -> usize {
        self.packs.as_ref().map_or(self.samples.len(), Vec::len)
    }

    /// The samples making up example `i` (one sample unless packed).
    pub fn example(&self, i: usize) -> &[Sample] {
        match &self.packs {
            Some(p) => &self.samples[p[i].clone()],
            None => std::slice::from_ref(&self.samples[i]),
        }
    }

    /// What loading did: rows, truncations, tokens, the prompt format used.
    pub fn stats(&self) -> &DatasetStats {
        &self.stats
    }
}

/// Greedy packing in order: a sample that does not fit the current row starts the next one.
fn pack_greedy(samples: &[Sample], max_seq_len: usize) -> Vec<Range<usize>> {
    let mut packs = Vec::new();
    let (mut start, mut len) = (0, 0);
    for (i, s) in samples.iter().enumerate() {
        if len + s.len() > max_seq_len && len > 0 {
            packs.push(start..i);
            (start, len) = (i, 0);
        }
        len += s.len();
    }
    if len > 0 {
        packs.push(start..samples.len());
    }
    packs
}

type Tokenized = (Vec<Tokens>, PromptFormat, Option<String>);

/// Tokenizes every record, choosing the prompt format (and falling back from a chat template
/// that cannot be split per message to the native format of the vocabulary).
fn tokenize(
    spec: &DatasetSpec,
    tok: &Tokenizer,
    path: &Path,
    rows: &[RawRow],
    records: &[Record],
) -> Result<Tokenized, DataError> {
    let enc = Encoder::new(tok, spec.train_on);
    let tok_err = |at: RowLoc, source: TokenizerError| DataError::Tokenizer {
        path: path.to_path_buf(),
        at,
        source: Box::new(source),
    };
    let use_chat = match spec.kind {
        DatasetKind::Text => false,
        DatasetKind::Chat | DatasetKind::Preference | DatasetKind::Prompt => true,
        DatasetKind::Instruct => match spec.template {
            InstructTemplate::Alpaca | InstructTemplate::Plain => false,
            InstructTemplate::Chat => true,
            InstructTemplate::Auto => tok.chat_template().is_some(),
        },
    };
    if !use_chat {
        let format = if spec.kind == DatasetKind::Text { PromptFormat::Text } else { PromptFormat::Alpaca };
        let out: Vec<_> = records
            .par_iter()
            .map(|r| match r {
                Record::Text(t) => enc.text(t),
                Record::Instruct { instruction, input, output } => enc.alpaca(instruction, input, output),
                Record::Chat(_) => unreachable!("chat records only come from chat datasets"),
            })
            .collect();
        let tokens = out
            .into_iter()
            .zip(rows)
            .map(|(r, row)| r.map_err(|e| tok_err(row.at, e)))
            .collect::<Result<_, _>>()?;
        return Ok((tokens, format, None));
    }

    let messages: Vec<Vec<Message>> = records.iter().map(to_messages).collect();
    let (native, first) = chat_formats(tok, "template: alpaca for instruct data")?;
    let ats: Vec<RowLoc> = rows.iter().map(|r| r.at).collect();
    encode_chat_rows(path, &ats, native, first, |format, i| enc.chat(format, &messages[i]))
}

/// Encodes row `i` of `ats.len()` rows with `encode(format, i)` in `format` (in parallel),
/// falling back once from the tokenizer's chat template to the vocabulary's `native` chat format
/// when the template is not incremental for some row (the fallback note names that row). Returns
/// the rows' encodings, the format used and the fallback note; a tokenizer failure names its
/// row.
pub(crate) fn encode_chat_rows<T: Send>(
    path: &Path,
    ats: &[RowLoc],
    native: Option<PromptFormat>,
    mut format: PromptFormat,
    encode: impl Fn(PromptFormat, usize) -> Result<T, ChatIssue> + Sync,
) -> Result<(Vec<T>, PromptFormat, Option<String>), DataError> {
    let mut fallback = None;
    loop {
        let results: Vec<_> = (0..ats.len()).into_par_iter().map(|i| encode(format, i)).collect();
        let mut out = Vec::with_capacity(results.len());
        let mut retry = None;
        for (r, &at) in results.into_iter().zip(ats) {
            match r {
                Ok(t) => out.push(t),
                Err(ChatIssue::Failed(e)) => {
                    return Err(DataError::Tokenizer { path: path.to_path_buf(), at, source: Box::new(e) })
                }
                Err(ChatIssue::NotIncremental(why)) => {
                    retry = Some(format!("{}: {at}: {why}", path.display()));
                    break;
                }
            }
        }
        let Some(why) = retry else {
            return Ok((out, format, fallback));
        };
        match native {
            Some(n) if format == PromptFormat::ChatTemplate => {
                fallback = Some(format!("{why}; used the {n} format instead"));
                format = n;
            }
            _ => {
                return Err(DataError::Unsupported {
                    path: path.to_path_buf(),
                    message: format!("{why}, and the vocabulary has no native chat format to fall back to"),
                })
            }
        }
    }
}

/// The rows of `spec`'s file, in its stated format or the one its name gives (at most
/// `max_rows`); a file without data rows is an error naming it.
pub(crate) fn read_spec_rows(spec: &DatasetSpec) -> Result<(FileFormat, Vec<RawRow>), DataError> {
    let path = spec.source.as_path();
    let format = match spec.format {
        Some(f) => f,
        None => FileFormat::from_path(path)?,
    };
    let rows = read_rows(path, format, spec.max_rows)?;
    if rows.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            message: "the file has no data rows".into(),
        });
    }
    Ok((format, rows))
}

/// The rows of a dataset that `reader` (e.g. `PromptDataset::load`) reads, after checking that
/// `spec` is of its `kind` and valid: the file's format, its rows, and each row's location.
pub(crate) fn read_kind_rows(
    spec: &DatasetSpec,
    kind: DatasetKind,
    reader: &str,
) -> Result<(FileFormat, Vec<RawRow>, Vec<RowLoc>), DataError> {
    if spec.kind != kind {
        return Err(DataError::Config(format!("{reader} reads {kind} datasets, not {}", spec.kind)));
    }
    spec.validate()?;
    let (format, rows) = read_spec_rows(spec)?;
    let ats = rows.iter().map(|r| r.at).collect();
    Ok((format, rows, ats))
}

/// The chat formats of a tokenizer for chat-rendered rows: its native one by vocabulary (Llama-3's
/// headers or ChatML), and the one to try first (its own chat template when it has one, else the
/// native format). A tokenizer with neither is an error ending in `otherwise` (what to use
/// instead, e.g. "template: plain for string prompts").
pub(crate) fn chat_formats(
    tok: &Tokenizer,
    otherwise: &str,
) -> Result<(Option<PromptFormat>, PromptFormat), DataError> {
    let native = native_format(tok);
    let first = if tok.chat_template().is_some() {
        PromptFormat::ChatTemplate
    } else {
        native.ok_or_else(|| {
            DataError::Config(format!(
                "the tokenizer has no chat template, and its vocabulary has neither Llama-3's \
                 <|start_header_id|> nor ChatML's <|im_start|> for a native chat format; use {otherwise}"
            ))
        })?
    };
    Ok((native, first))
}

pub(crate) fn native_format(tok: &Tokenizer) -> Option<PromptFormat> {
    if tok.token_to_id("<|start_header_id|>").is_some() {
        Some(PromptFormat::NativeLlama3)
    } else if tok.token_to_id("<|im_start|>").is_some() {
        Some(PromptFormat::NativeChatMl)
    } else {
        None
    }
}

/// A record as chat messages (instruct rows: the instruction and input as the user's turn).
fn to_messages(r: &Record) -> Vec<Message> {
    match r {
        Record::Chat(m) => m.clone(),
        Record::Instruct { instruction, input, output } => {
            let user =
                if input.is_empty() { instruction.clone() } else { format!("{instruction}\n\n{input}") };
            vec![Message::new("user", user), Message::new("assistant", output.clone())]
        }
        Record::Text(t) => vec![Message::new("user", t.clone())],
    }
}
