//! Config keys, declared once: each key's name, type, range or accepted words, default and
//! documentation line. The checker ([`super::schema`]) reads these declarations for the unknown
//! key check and its "did you mean" hint, for `~key` deletions, for the expected-value text of
//! every message and for the defaults of the typed result.
//!
//! The sections every recipe shares are declared here; a recipe module declares its own
//! sections, top-level keys and dataset kinds in its [`RecipeSpec`](crate::recipes::RecipeSpec).

use std::fmt::Write as _;

use serde::Serialize;

use super::types::{ConversationStyle, DatasetKind, Dtype, FileFormat, LongRows, SchedulerKind, TrainOn};

/// The type of a key's value, with its range or words and its default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyType {
    /// `true` or `false`.
    Bool {
        /// The value when the key is absent.
        default: bool,
    },
    /// An integer ≥ `min`.
    Int {
        /// Smallest accepted value.
        min: usize,
        /// The value when the key is absent (`None`: absent stays absent, or is an error for a
        /// required key).
        default: Option<usize>,
    },
    /// A finite number within bounds.
    Num {
        /// Lower bound.
        min: f64,
        /// Whether `min` itself is accepted.
        min_inclusive: bool,
        /// Upper bound (`f64::INFINITY`: none).
        max: f64,
        /// Whether `max` itself is accepted.
        max_inclusive: bool,
        /// The value when the key is absent.
        default: Option<f64>,
    },
    /// One of a fixed set of words.
    Word {
        /// The accepted words.
        names: &'static [&'static str],
        /// The value when the key is absent.
        default: Option<&'static str>,
    },
    /// A non-empty string.
    Text {
        /// What the string is, for messages ("a folder path").
        expect: &'static str,
    },
    /// A value with structure of its own (a list, a mapping, a path checked on disk), checked by
    /// hand-written code in the schema; `expect` says what it is.
    Other {
        /// What is expected, for messages.
        expect: &'static str,
    },
}

impl KeyType {
    /// What a value must be, as messages say it: `an integer ≥ 1`, `a number in [0, 1)`,
    /// `one of cosine, constant, linear`.
    pub fn expect(&self) -> String {
        match *self {
            KeyType::Bool { .. } => "true or false".into(),
            KeyType::Int { min, .. } => format!("an integer ≥ {min}"),
            KeyType::Num { min, min_inclusive, max, max_inclusive, .. } => {
                if max.is_infinite() {
                    format!("a number {} {min}", if min_inclusive { "≥" } else { ">" })
                } else {
                    let mut s = String::from("a number in ");
                    let _ = write!(
                        s,
                        "{}{min}, {max}{}",
                        if min_inclusive { "[" } else { "(" },
                        if max_inclusive { "]" } else { ")" }
                    );
                    s
                }
            }
            KeyType::Word { names, .. } => format!("one of {}", names.join(", ")),
            KeyType::Text { expect } | KeyType::Other { expect } => expect.into(),
        }
    }

    /// Whether a number is within a [`KeyType::Num`]'s bounds (other types: always).
    pub fn num_ok(&self, v: f64) -> bool {
        match *self {
            KeyType::Num { min, min_inclusive, max, max_inclusive, .. } => {
                v.is_finite()
                    && (if min_inclusive { v >= min } else { v > min })
                    && (if max_inclusive { v <= max } else { v < max })
            }
            _ => true,
        }
    }
}

/// One config key.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyDecl {
    /// The key's name within its section.
    pub name: &'static str,
    /// Its type, range and default.
    pub ty: KeyType,
    /// Whether a config must give it.
    pub required: bool,
    /// One line of documentation.
    pub doc: &'static str,
}

impl KeyDecl {
    /// An optional key.
    pub const fn new(name: &'static str, ty: KeyType, doc: &'static str) -> KeyDecl {
        KeyDecl { name, ty, required: false, doc }
    }

    /// A key a config must give.
    pub const fn required(name: &'static str, ty: KeyType, doc: &'static str) -> KeyDecl {
        KeyDecl { name, ty, required: true, doc }
    }
}

/// A section (`name:` followed by indented keys).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SectionDecl {
    /// The section's top-level key.
    pub name: &'static str,
    /// Its keys.
    pub keys: &'static [KeyDecl],
    /// Whether a config must have it (else every key must have a default or be optional).
    pub required: bool,
    /// What the section must hold, for the "missing" message ("a section with rank and alpha").
    pub expect: &'static str,
    /// One line of documentation.
    pub doc: &'static str,
}

impl SectionDecl {
    /// The declaration of key `name`, if the section has one.
    pub fn key(&self, name: &str) -> Option<&'static KeyDecl> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// The names of its keys, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.keys.iter().map(|k| k.name).collect()
    }
}

/// A dataset kind a recipe accepts, with the `column_map` roles its reader looks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DatasetKindDecl {
    /// The kind.
    pub kind: DatasetKind,
    /// The column names the reader looks for (the roles `dataset.column_map` may map).
    pub roles: &'static [&'static str],
}

/// The value of a key a recipe declares for itself (see [`RecipeSpec`](crate::recipes::RecipeSpec)),
/// checked against its declaration, default applied.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum KeyValue {
    /// A [`KeyType::Bool`].
    Bool(bool),
    /// A [`KeyType::Int`].
    Int(usize),
    /// A [`KeyType::Num`].
    Num(f64),
    /// A [`KeyType::Word`] or [`KeyType::Text`].
    Text(String),
}

impl KeyValue {
    /// The boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            KeyValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The integer, if it is one.
    pub fn as_int(&self) -> Option<usize> {
        match self {
            KeyValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number (an integer too), if it is one.
    pub fn as_num(&self) -> Option<f64> {
        match self {
            KeyValue::Num(v) => Some(*v),
            KeyValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The word or text, if it is one.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            KeyValue::Text(t) => Some(t),
            _ => None,
        }
    }
}

const fn int(min: usize, default: Option<usize>) -> KeyType {
    KeyType::Int { min, default }
}

/// A number `> min` (`min_inclusive` false) or `≥ min`, without upper bound.
pub const fn above(min: f64, min_inclusive: bool, default: Option<f64>) -> KeyType {
    KeyType::Num { min, min_inclusive, max: f64::INFINITY, max_inclusive: false, default }
}

/// A number in `[min, max)` (`max_inclusive` false) or `[min, max]`.
pub const fn within(min: f64, max: f64, max_inclusive: bool, default: Option<f64>) -> KeyType {
    KeyType::Num { min, min_inclusive: true, max, max_inclusive, default }
}

const fn word(names: &'static [&'static str], default: Option<&'static str>) -> KeyType {
    KeyType::Word { names, default }
}

const fn flag(default: bool) -> KeyType {
    KeyType::Bool { default }
}

const fn other(expect: &'static str) -> KeyType {
    KeyType::Other { expect }
}

/// Top-level keys every recipe accepts (sections aside).
pub(crate) const ROOT: &[KeyDecl] = &[
    KeyDecl::required("recipe", other("a recipe name"), "The recipe this config is for."),
    KeyDecl::required(
        "output_dir",
        KeyType::Text { expect: "a folder path" },
        "Where checkpoints and logs go.",
    ),
    KeyDecl::new("seed", other("an integer ≥ 0"), "Seed of every random choice."),
    KeyDecl::new("shuffle", flag(true), "Shuffle the dataset every epoch."),
    KeyDecl::required("batch_size", int(1, None), "Sequences per micro-batch."),
    KeyDecl::new("epochs", int(1, Some(1)), "Passes over the dataset."),
    KeyDecl::new("max_steps_per_epoch", int(1, None), "Stop each epoch after this many optimizer steps."),
    KeyDecl::new("gradient_accumulation_steps", int(1, Some(1)), "Micro-batches per optimizer step."),
    KeyDecl::new("clip_grad_norm", above(0.0, false, None), "Clip the global gradient norm to this value."),
    KeyDecl::new("optimizer_in_bwd", flag(false), "Step the optimizer inside the backward, layer by layer."),
    KeyDecl::new("enable_activation_checkpointing", flag(false), "Recompute activations in the backward."),
    KeyDecl::new(
        "activation_checkpointing_every_n_layers",
        int(1, None),
        "With activation checkpointing, recompute only layers 0, k, 2k, ….",
    ),
    KeyDecl::new("device", other("cpu, cuda or cuda:N"), "cpu, cuda or cuda:N."),
    KeyDecl::new("threads", int(1, None), "CPU threads (default: all cores)."),
    KeyDecl::new("save_every_n_steps", int(1, None), "Also save a checkpoint every this many steps."),
    KeyDecl::new("save_adapter_weights_only", flag(false), "LoRA: save only the adapter."),
    KeyDecl::new("merge_adapter", flag(true), "LoRA: also write the base model with the adapter merged in."),
    KeyDecl::new("resume_from_checkpoint", flag(false), "Continue from the latest checkpoint in output_dir."),
    KeyDecl::new(
        "resume_accept_config_changes",
        flag(false),
        "Resume even though keys other than the length of training changed.",
    ),
    KeyDecl::new("log_every_n_steps", int(1, Some(1)), "Log the loss every this many optimizer steps."),
];

/// `model:`.
pub(crate) const MODEL: SectionDecl = SectionDecl {
    name: "model",
    keys: &[
        KeyDecl::new(
            "path",
            other("a GGUF file, a Hugging Face folder or hf://org/name, or else model.preset"),
            "A GGUF file, a Hugging Face folder or a Hub repository.",
        ),
        KeyDecl::new("preset", KeyType::Text { expect: "a model preset name" }, "A preset: random init."),
        KeyDecl::new("dtype", word(Dtype::NAMES, Some("fp32")), "Storage of the frozen weights."),
    ],
    required: true,
    expect: "a section with path (or preset) and dtype",
    doc: "The model to start from.",
};

/// `tokenizer:`.
pub(crate) const TOKENIZER: SectionDecl = SectionDecl {
    name: "tokenizer",
    keys: &[
        KeyDecl::new(
            "path",
            other("a tokenizer file or folder"),
            "tokenizer.json, tokenizer.model or a folder.",
        ),
        KeyDecl::required("max_seq_len", int(1, None), "Longer samples are truncated to this many tokens."),
    ],
    required: true,
    expect: "a section with max_seq_len",
    doc: "The tokenizer and sequence length.",
};

/// `lora:` — a shared typed section ([`super::LoraSection`]) that a recipe takes by listing it in
/// its [`RecipeSpec::sections`](crate::recipes::RecipeSpec::sections).
pub const LORA: SectionDecl = SectionDecl {
    name: "lora",
    keys: &[
        KeyDecl::required("rank", int(1, None), "Rank of the adapters."),
        KeyDecl::required("alpha", above(0.0, false, None), "Scale numerator: alpha / rank."),
        KeyDecl::new("dropout", within(0.0, 1.0, false, Some(0.0)), "Dropout on the adapter input."),
        KeyDecl::new(
            "target_modules",
            other("a list of layer names"),
            "Layers to adapt (default q_proj, v_proj).",
        ),
        KeyDecl::new("quantize_base", flag(false), "QLoRA: NF4 frozen projections."),
    ],
    required: true,
    expect: "a section with rank and alpha",
    doc: "LoRA adapter settings.",
};

/// `lora:` as an optional section: a recipe that lists it trains LoRA adapters when the config
/// has the section and every weight when it has none (the `dpo` recipe).
pub const LORA_OPTIONAL: SectionDecl = SectionDecl { required: false, ..LORA };

/// `dataset:`.
pub(crate) const DATASET: SectionDecl = SectionDecl {
    name: "dataset",
    keys: &[
        KeyDecl::required("kind", other("a dataset kind"), "How rows are read (the recipe's kinds)."),
        KeyDecl::required("source", other("a dataset file"), "The dataset file."),
        KeyDecl::new(
            "format",
            word(FileFormat::NAMES, None),
            "The file format (default: from the extension).",
        ),
        KeyDecl::new("column_map", other("a mapping of role: column"), "The file's column for each role."),
        KeyDecl::new(
            "conversation_style",
            word(ConversationStyle::NAMES, None),
            "For chat: how turns are written (default: detected).",
        ),
        KeyDecl::new(
            "train_on",
            word(TrainOn::NAMES, Some("assistant")),
            "Which tokens the loss is computed on.",
        ),
        KeyDecl::new("long_rows", word(LongRows::NAMES, Some("truncate")), "Rows longer than max_seq_len."),
        KeyDecl::new("packed", flag(false), "Pack several samples into each sequence."),
        KeyDecl::new("max_rows", int(1, None), "Use only the first this many rows."),
    ],
    required: true,
    expect: "a section with kind and source",
    doc: "The training data.",
};

/// `optimizer:`.
pub(crate) const OPTIMIZER: SectionDecl = SectionDecl {
    name: "optimizer",
    keys: &[
        KeyDecl::required("lr", above(0.0, false, None), "Peak learning rate."),
        KeyDecl::new("weight_decay", above(0.0, true, Some(0.01)), "Decoupled weight decay."),
        KeyDecl::new("betas", other("a list of two numbers in [0, 1)"), "Moment decay rates."),
        KeyDecl::new("eps", above(0.0, false, Some(1e-8)), "Denominator epsilon."),
    ],
    required: true,
    expect: "a section with lr",
    doc: "AdamW settings.",
};

/// `lr_scheduler:`.
pub(crate) const SCHEDULER: SectionDecl = SectionDecl {
    name: "lr_scheduler",
    keys: &[
        KeyDecl::new("kind", word(SchedulerKind::NAMES, Some("cosine")), "Shape after the warm-up."),
        KeyDecl::new("warmup_steps", int(0, Some(0)), "Optimizer steps of linear warm-up."),
        KeyDecl::new(
            "min_lr_ratio",
            within(0.0, 1.0, true, Some(0.0)),
            "Final learning rate as a fraction of lr.",
        ),
    ],
    required: false,
    expect: "a section with kind, warmup_steps and min_lr_ratio",
    doc: "Learning-rate schedule.",
};

/// Sections every recipe has.
pub(crate) const COMMON_SECTIONS: &[SectionDecl] = &[MODEL, TOKENIZER, DATASET, OPTIMIZER, SCHEDULER];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_texts() {
        assert_eq!(int(1, None).expect(), "an integer ≥ 1");
        assert_eq!(above(0.0, false, None).expect(), "a number > 0");
        assert_eq!(above(0.0, true, None).expect(), "a number ≥ 0");
        assert_eq!(within(0.0, 1.0, false, None).expect(), "a number in [0, 1)");
        assert_eq!(within(0.0, 1.0, true, None).expect(), "a number in [0, 1]");
        assert_eq!(word(&["a", "b"], None).expect(), "one of a, b");
        let t = within(0.0, 1.0, false, None);
        assert!(t.num_ok(0.0) && !t.num_ok(1.0) && !t.num_ok(f64::NAN));
        assert!(!above(0.0, false, None).num_ok(0.0) && !above(0.0, false, None).num_ok(f64::INFINITY));
    }
}
