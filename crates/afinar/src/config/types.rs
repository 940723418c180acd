//! The typed recipe configuration that training code reads: [`RecipeConfig`] and its sections.
//! Every value here has been checked (types, ranges, consistency, files on disk) by
//! [`RecipeConfig::load`](super::RecipeConfig::load).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::keys::KeyValue;

/// Declares a config enum written in YAML as one of a fixed set of lowercase words.
macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $word)] $variant),+
        }

        impl $name {
            /// Every accepted word, in order.
            pub const NAMES: &'static [&'static str] = &[$($word),+];

            /// The word for this value, as written in YAML.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }

            /// The value for a word, if it is one of [`Self::NAMES`].
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($word => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

word_enum! {
    /// Storage of the frozen (or, for full fine-tuning, all) model weights.
    Dtype {
        /// 32-bit floats.
        Fp32 = "fp32",
        /// bfloat16.
        Bf16 = "bf16",
    }
}

word_enum! {
    /// A linear layer LoRA can adapt (Hugging Face names).
    LoraTarget {
        /// Attention query projection.
        QProj = "q_proj",
        /// Attention key projection.
        KProj = "k_proj",
        /// Attention value projection.
        VProj = "v_proj",
        /// Attention output projection.
        OProj = "o_proj",
        /// MLP gate projection (w1).
        GateProj = "gate_proj",
        /// MLP up projection (w3).
        UpProj = "up_proj",
        /// MLP down projection (w2).
        DownProj = "down_proj",
        /// The final projection to the vocabulary (lm_head).
        Output = "output",
    }
}

word_enum! {
    /// How dataset rows are read.
    DatasetKind {
        /// Prompt/response pairs (columns `instruction`, `input`, `output`).
        Instruct = "instruct",
        /// Multi-turn conversations (a `conversations` or `messages` column).
        Chat = "chat",
        /// Plain text for continued pre-training (a `text` column).
        Text = "text",
        /// Preference pairs (`prompt`, `chosen`, `rejected`, or message lists): the `dpo` recipe.
        Preference = "preference",
        /// Prompts (a `prompt` string or message list, other columns kept for the rewards): the
        /// `grpo` recipe.
        Prompt = "prompt",
    }
}

word_enum! {
    /// On-disk format of a dataset file.
    FileFormat {
        /// A JSON array of objects.
        Json = "json",
        /// One JSON object per line.
        Jsonl = "jsonl",
        /// Comma-separated values with a header row.
        Csv = "csv",
        /// Apache Parquet.
        Parquet = "parquet",
    }
}

word_enum! {
    /// How a chat dataset writes its conversations.
    ConversationStyle {
        /// `{"from": "human"|"gpt"|"system", "value": ...}` turns.
        Sharegpt = "sharegpt",
        /// `{"role": "user"|"assistant"|"system", "content": ...}` messages.
        Openai = "openai",
    }
}

word_enum! {
    /// Which tokens the loss is computed on.
    TrainOn {
        /// Every token, prompts included.
        All = "all",
        /// Responses only: assistant turns for chat, the output (not the prompt) for instruct.
        Assistant = "assistant",
        /// Only the last assistant turn.
        Last = "last",
    }
}

word_enum! {
    /// What happens to a dataset row longer than `tokenizer.max_seq_len`.
    LongRows {
        /// Keep its first `max_seq_len` tokens (a row then left without a token to train on is
        /// dropped); counted in the statistics a run prints.
        Truncate = "truncate",
        /// Leave it out; counted in the statistics a run prints.
        Drop = "drop",
        /// Refuse the dataset, naming the file and line (or row) of the first such row.
        Error = "error",
    }
}

word_enum! {
    /// Learning-rate schedule after the linear warm-up.
    SchedulerKind {
        /// Cosine decay from `lr` to `min_lr_ratio * lr`.
        Cosine = "cosine",
        /// Constant `lr`.
        Constant = "constant",
        /// Linear decay from `lr` to `min_lr_ratio * lr`.
        Linear = "linear",
    }
}

impl FileFormat {
    /// The format a file name's extension implies (`.json`, `.jsonl`/`.ndjson`, `.csv`,
    /// `.parquet`/`.pq`), if any.
    pub fn from_extension(path: &Path) -> Option<FileFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "json" => FileFormat::Json,
            "jsonl" | "ndjson" => FileFormat::Jsonl,
            "csv" => FileFormat::Csv,
            "parquet" | "pq" => FileFormat::Parquet,
            _ => return None,
        })
    }
}

/// A checked recipe configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecipeConfig {
    /// The recipe this config is for, a name from [`crate::recipes::registry()`] (`afinar run
    /// RECIPE` must agree).
    pub recipe: String,
    /// Where checkpoints and logs are written (relative paths: to the current directory): the
    /// checkpoints, `metrics.jsonl`, TensorBoard event files under `tensorboard/` (always, during
    /// the run) and the chart `metrics.png`/`metrics.svg` (at the end).
    pub output_dir: PathBuf,
    /// The model to start from.
    pub model: ModelSection,
    /// The tokenizer and sequence length.
    pub tokenizer: TokenizerSection,
    /// LoRA settings: present exactly when the recipe lists the [`super::LORA`] section
    /// (`lora_finetune`).
    pub lora: Option<LoraSection>,
    /// The training data.
    pub dataset: DatasetSection,
    /// Seed of every random choice (shuffling, LoRA init, dropout).
    pub seed: u64,
    /// Shuffle the dataset every epoch.
    pub shuffle: bool,
    /// Sequences per micro-batch (≥ 1).
    pub batch_size: usize,
    /// Passes over the dataset (≥ 1).
    pub epochs: usize,
    /// Stop each epoch after this many optimizer steps.
    pub max_steps_per_epoch: Option<usize>,
    /// Micro-batches per optimizer step (≥ 1).
    pub gradient_accumulation_steps: usize,
    /// AdamW settings.
    pub optimizer: OptimizerSection,
    /// Learning-rate schedule.
    pub lr_scheduler: SchedulerSection,
    /// Clip the global gradient norm to this value (> 0).
    pub clip_grad_norm: Option<f64>,
    /// Step the optimizer inside the backward, one layer at a time, so that only one layer's
    /// gradients exist at once (torchtune's `optimizer_in_bwd`; excludes gradient accumulation
    /// and clipping).
    pub optimizer_in_bwd: bool,
    /// Recompute activations in the backward pass to save memory.
    pub enable_activation_checkpointing: bool,
    /// With activation checkpointing, recompute only layers `0, k, 2k, …` (default 1: every
    /// layer); the others keep their activations: a trade between memory and speed.
    pub activation_checkpointing_every_n_layers: Option<usize>,
    /// `cpu`, `cuda` or `cuda:N` (only the syntax is checked here).
    pub device: String,
    /// CPU threads (default: all cores).
    pub threads: Option<usize>,
    /// Also save a checkpoint every this many optimizer steps (always at the end of an epoch).
    pub save_every_n_steps: Option<usize>,
    /// LoRA: save only the adapter, not merged full weights.
    pub save_adapter_weights_only: bool,
    /// LoRA: also write the base model with the adapter merged in.
    pub merge_adapter: bool,
    /// Continue from the latest checkpoint in `output_dir`. The config saved with it is compared
    /// with this one: a longer (or shorter) run — `epochs`, `max_steps_per_epoch` — continues;
    /// any other change that alters what is computed is refused, naming each key.
    pub resume_from_checkpoint: bool,
    /// Resume even though keys other than the length of training changed (each is printed, with
    /// its old and new value); the result then equals no run with a single config.
    pub resume_accept_config_changes: bool,
    /// Log the loss every this many optimizer steps (≥ 1).
    pub log_every_n_steps: usize,
    /// The values of the keys the recipe declares for itself (its own sections and top-level
    /// keys, see [`crate::recipes::RecipeSpec`]), checked, defaults applied, by dotted path
    /// (`loss.beta`); absent optional keys without a default are not here.
    pub extra: BTreeMap<String, KeyValue>,
}

impl RecipeConfig {
    /// The value of recipe-declared key `path` (`loss.beta`), if set or defaulted.
    pub fn extra(&self, path: &str) -> Option<&KeyValue> {
        self.extra.get(path)
    }
}

/// The model to fine-tune: exactly one of `path` and `preset`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelSection {
    /// A GGUF file or a Hugging Face checkpoint folder (checked to exist), or a Hub repository
    /// kept as `hf://org/name[@rev][/file]` and fetched through the Hugging Face cache at the
    /// start of the run.
    pub path: Option<PathBuf>,
    /// A name from [`crate::models::presets::PRESETS`]: random initialisation, for benchmarks.
    pub preset: Option<String>,
    /// Storage of the frozen weights.
    pub dtype: Dtype,
}

/// The tokenizer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenizerSection {
    /// `tokenizer.json`, `tokenizer.model` or a folder; `None`: the checkpoint's own (required
    /// with `model.preset`).
    pub path: Option<PathBuf>,
    /// Longer samples are truncated to this many tokens (≥ 1).
    pub max_seq_len: usize,
}

/// LoRA adapter settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoraSection {
    /// Rank of the adapters (≥ 1).
    pub rank: usize,
    /// Scale numerator: the update is `alpha / rank · B·A·x` (> 0).
    pub alpha: f32,
    /// Dropout on the adapter input, in [0, 1).
    pub dropout: f32,
    /// Layers to adapt (non-empty, no repeats).
    pub target_modules: Vec<LoraTarget>,
    /// QLoRA (torchtune's `quantize_base`): the frozen attention and MLP projections (q, k, v,
    /// o, gate, up, down) are quantized to NF4 as they are loaded (about 4.13 bits per value:
    /// QLoRA's code book, absmax per 64 values, double-quantized scales) and used 4-bit in every
    /// product; the embedding, the output projection and the norms keep `model.dtype`, as
    /// torchtune and PEFT quantize linear layers only. Adapters and optimizer state stay f32.
    pub quantize_base: bool,
}

/// The training data.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetSection {
    /// How rows are read.
    pub kind: DatasetKind,
    /// The dataset file (checked to exist).
    pub source: PathBuf,
    /// The file format; `None`: from the extension of `source` (checked to be known).
    pub format: Option<FileFormat>,
    /// The file's column for each of the names the reader looks for, e.g. `output: answer`
    /// (instruct: instruction, input, output; chat: conversations, messages; text: text).
    pub column_map: BTreeMap<String, String>,
    /// For `chat`: how turns are written; `None`: detected from the rows.
    pub conversation_style: Option<ConversationStyle>,
    /// Which tokens the loss is computed on.
    pub train_on: TrainOn,
    /// Rows longer than `tokenizer.max_seq_len`: truncate (default), drop, or error.
    pub long_rows: LongRows,
    /// Pack several samples into each `max_seq_len` sequence.
    pub packed: bool,
    /// Use only the first this many rows.
    pub max_rows: Option<usize>,
}

impl DatasetSection {
    /// The format to read `source` with: `format`, or the one its extension implies.
    pub fn file_format(&self) -> Option<FileFormat> {
        self.format.or_else(|| FileFormat::from_extension(&self.source))
    }
}

/// AdamW settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OptimizerSection {
    /// Peak learning rate (> 0).
    pub lr: f64,
    /// Decoupled weight decay (≥ 0).
    pub weight_decay: f64,
    /// Moment decay rates, each in [0, 1).
    pub betas: [f64; 2],
    /// Denominator epsilon (> 0).
    pub eps: f64,
}

/// Learning-rate schedule: linear warm-up, then `kind`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SchedulerSection {
    /// Shape after the warm-up.
    pub kind: SchedulerKind,
    /// Optimizer steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: usize,
    /// Final learning rate as a fraction of `lr`, in [0, 1].
    pub min_lr_ratio: f64,
}
