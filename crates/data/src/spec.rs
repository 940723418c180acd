//! What to load and how: [`DatasetSpec`] and its enums.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::DataError;

/// A dataset file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileFormat {
    /// One JSON array of objects.
    Json,
    /// One JSON object per line (JSON Lines); blank lines are skipped.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
    /// Apache Parquet (string columns; lists of structs for chat messages).
    Parquet,
}

impl FileFormat {
    /// The format an extension names: `json`, `jsonl` / `ndjson`, `csv`, `parquet` / `pq`
    /// (case-insensitive).
    pub fn from_extension(ext: &str) -> Option<FileFormat> {
        match ext.to_ascii_lowercase().as_str() {
            "json" => Some(FileFormat::Json),
            "jsonl" | "ndjson" => Some(FileFormat::Jsonl),
            "csv" => Some(FileFormat::Csv),
            "parquet" | "pq" => Some(FileFormat::Parquet),
            _ => None,
        }
    }

    /// The format of `path` from its extension, or [`DataError::UnknownFormat`].
    pub fn from_path(path: &Path) -> Result<FileFormat, DataError> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        FileFormat::from_extension(ext)
            .ok_or_else(|| DataError::UnknownFormat { path: path.to_path_buf(), ext: ext.to_string() })
    }
}

/// What the rows hold, and so how they become token sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    /// Alpaca-style rows: `instruction`, optional `input`, `output`.
    Instruct,
    /// Conversations: ShareGPT `conversations` or OpenAI `messages`.
    Chat,
    /// Plain text in a `text` column, trained on every token.
    Text,
    /// Preference pairs for DPO-style training and evaluation: `prompt` + `chosen` + `rejected`
    /// (strings, or a message-list prompt), UltraFeedback's `prompt` with `chosen`/`rejected`
    /// conversations ending in the answer, or HH-RLHF's two full conversations sharing a prefix.
    /// Loaded with [`crate::PreferenceDataset::load`], not [`crate::Dataset::load`].
    Preference,
    /// Prompts for on-policy training (GRPO): a `prompt` (a string, or a list of chat messages)
    /// and any other columns, kept for the rewards (`answer`, `lang`, ...). Loaded with
    /// [`crate::PromptDataset::load`].
    Prompt,
}

/// How a chat row spells its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConversationStyle {
    /// `{"conversations": [{"from": "human" | "gpt" | "system", "value": ...}]}`.
    ShareGpt,
    /// `{"messages": [{"role": "user" | "assistant" | "system", "content": ...}]}`.
    OpenAi,
}

impl ConversationStyle {
    /// The column this style keeps its messages in, before `column_map`.
    pub fn column(self) -> &'static str {
        match self {
            ConversationStyle::ShareGpt => "conversations",
            ConversationStyle::OpenAi => "messages",
        }
    }
}

/// Which tokens carry loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TrainOn {
    /// Every token (prompts, system messages and template markup included).
    All,
    /// Only the responses: every assistant message (from its first content token through the
    /// end-of-turn token), or the instruct `output` and its EOS.
    #[default]
    Assistant,
    /// Only the last assistant message of each conversation (same as `Assistant` for instruct).
    Last,
}

/// How an instruct row becomes a prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum InstructTemplate {
    /// `Chat` when the tokenizer ships a chat template, `Alpaca` otherwise.
    #[default]
    Auto,
    /// The Alpaca prompt ("Below is an instruction that describes a task…### Response:\n"),
    /// then the output and EOS.
    Alpaca,
    /// A user message (the instruction, then the input after a blank line) and an assistant
    /// message (the output), rendered like a chat.
    Chat,
    /// Preference and prompt datasets only: no template, BOS + the prompt text (then, for
    /// preference data, the response text and EOS).
    Plain,
}

macro_rules! names {
    ($ty:ident { $($variant:ident => [$($name:literal),+]),+ $(,)? }) => {
        impl FromStr for $ty {
            type Err = DataError;
            fn from_str(s: &str) -> Result<Self, DataError> {
                let lower = s.to_ascii_lowercase();
                $( if [$($name),+].contains(&lower.as_str()) { return Ok($ty::$variant); } )+
                let all: Vec<&str> = vec![$(names!(@first $($name),+)),+];
                Err(DataError::Config(format!(
                    "unknown {} {s:?}; expected one of {}",
                    stringify!($ty),
                    all.join(", ")
                )))
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($ty::$variant => names!(@first $($name),+)),+ })
            }
        }
    };
    (@first $first:literal $(, $rest:literal)*) => { $first };
}

names!(FileFormat { Json => ["json"], Jsonl => ["jsonl", "ndjson"], Csv => ["csv"], Parquet => ["parquet", "pq"] });
names!(DatasetKind {
    Instruct => ["instruct", "alpaca"],
    Chat => ["chat"],
    Text => ["text", "text_completion"],
    Preference => ["preference", "dpo"],
    Prompt => ["prompt", "grpo"],
});
names!(ConversationStyle { ShareGpt => ["sharegpt"], OpenAi => ["openai"] });
names!(TrainOn {
    All => ["all", "train_on_all"],
    Assistant => ["assistant", "train_on_assistant", "responses"],
    Last => ["last", "train_on_last"],
});
names!(InstructTemplate { Auto => ["auto"], Alpaca => ["alpaca"], Chat => ["chat"], Plain => ["plain"] });

/// What [`crate::Dataset::load`] does with a row longer than `max_seq_len` tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LongRows {
    /// Keep the first `max_seq_len` tokens (a row left without a token to train on is then
    /// dropped, and counted as such).
    #[default]
    Truncate,
    /// Leave the row out.
    Drop,
    /// Refuse the dataset, naming the first such row.
    Error,
}

impl LongRows {
    /// The word for this policy, as a config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            LongRows::Truncate => "truncate",
            LongRows::Drop => "drop",
            LongRows::Error => "error",
        }
    }
}

impl fmt::Display for LongRows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything [`crate::Dataset::load`] needs to know about a dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetSpec {
    /// What the rows hold.
    pub kind: DatasetKind,
    /// The file to read.
    pub source: PathBuf,
    /// The file format; `None`: from the extension.
    pub format: Option<FileFormat>,
    /// Renames columns: the crate's name (`instruction`, `input`, `output`, `text`,
    /// `conversations`, `messages`; `prompt`, `chosen`, `rejected`, `lang` for preference data)
    /// → the file's column name.
    pub column_map: BTreeMap<String, String>,
    /// The chat style; `None`: detected from the first row.
    pub conversation_style: Option<ConversationStyle>,
    /// How instruct rows become prompts; for preference rows, `Auto` / `Chat` render through the
    /// chat template and `Plain` uses the raw text (`Alpaca` is refused).
    pub template: InstructTemplate,
    /// Which tokens carry loss (ignored for `Text`, which trains on everything).
    pub train_on: TrainOn,
    /// Samples longer than this are truncated (the start is kept); packed rows have exactly this
    /// many tokens.
    pub max_seq_len: usize,
    /// What happens to rows longer than `max_seq_len`.
    pub long_rows: LongRows,
    /// Pack samples into rows of `max_seq_len` tokens.
    pub packed: bool,
    /// Read only the first `max_rows` rows.
    pub max_rows: Option<usize>,
    /// Preference data: how many response tokens a long pair keeps room for before its prompt
    /// is cut from the left (see [`crate::PreferenceDataset::load`]).
    pub min_response_tokens: usize,
    /// Prompt datasets: the longest prompt in tokens (TRL's `max_prompt_length`); longer prompts
    /// follow `long_rows` (`truncate` keeps their last tokens). `None`: `max_seq_len`.
    pub max_prompt_tokens: Option<usize>,
}

impl DatasetSpec {
    /// A spec with the defaults: format from the extension, no column renames, detected chat
    /// style, `InstructTemplate::Auto`, `TrainOn::Assistant`, `max_seq_len` 2048 (longer rows
    /// truncated), unpacked, all rows.
    pub fn new(kind: DatasetKind, source: impl Into<PathBuf>) -> Self {
        DatasetSpec {
            kind,
            source: source.into(),
            format: None,
            column_map: BTreeMap::new(),
            conversation_style: None,
            template: InstructTemplate::Auto,
            train_on: TrainOn::Assistant,
            max_seq_len: 2048,
            long_rows: LongRows::Truncate,
            packed: false,
            max_rows: None,
            min_response_tokens: 64,
            max_prompt_tokens: None,
        }
    }

    /// The file's column for one of the crate's names, after `column_map`.
    pub fn column<'a>(&'a self, name: &'a str) -> &'a str {
        self.column_map.get(name).map_or(name, String::as_str)
    }

    /// Checks the settings that do not need the file: `max_seq_len` > 0, `column_map` keys known
    /// for this kind, a template this kind can use, no packing of preference pairs.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.max_seq_len == 0 {
            return Err(DataError::Config("max_seq_len must be at least 1".into()));
        }
        match (self.kind, self.template) {
            (DatasetKind::Preference, InstructTemplate::Alpaca) => {
                return Err(DataError::Config(
                    "template alpaca is for instruct datasets; preference datasets take auto, chat \
                     or plain"
                        .into(),
                ))
            }
            (DatasetKind::Instruct, InstructTemplate::Plain) => {
                return Err(DataError::Config(
                    "template plain is for preference and prompt datasets; instruct datasets take \
                     auto, alpaca or chat"
                        .into(),
                ))
            }
            _ => {}
        }
        if self.kind == DatasetKind::Preference && self.packed {
            return Err(DataError::Config("preference pairs cannot be packed; set packed to false".into()));
        }
        if self.kind == DatasetKind::Prompt {
            if self.packed {
                return Err(DataError::Config("prompts cannot be packed; set packed to false".into()));
            }
            if self.template == InstructTemplate::Alpaca {
                return Err(DataError::Config(
                    "template alpaca is for instruct datasets; prompt datasets take auto, chat or plain"
                        .into(),
                ));
            }
            if self.max_prompt_tokens == Some(0) {
                return Err(DataError::Config("max_prompt_tokens must be at least 1".into()));
            }
        }
        let known: &[&str] = match self.kind {
            DatasetKind::Instruct => &["instruction", "input", "output"],
            DatasetKind::Chat => &["conversations", "messages"],
            DatasetKind::Text => &["text"],
            DatasetKind::Preference => &["prompt", "chosen", "rejected", "lang"],
            DatasetKind::Prompt => &["prompt"],
        };
        for key in self.column_map.keys() {
            if !known.contains(&key.as_str()) {
                return Err(DataError::Config(format!(
                    "column_map key {key:?} is not a column of {} datasets; expected one of {}",
                    self.kind,
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }
}
