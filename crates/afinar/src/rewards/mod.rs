//! Rewards for on-policy training (GRPO): rules that score a completion against its prompt's row,
//! several at once with weights, and a user's own reward as an external command.
//!
//! A [`RewardSet`] is a list of [`RewardSpec`]s, each `{kind, weight, name, ...options}` (in a
//! config, the top-level `rewards:` list; see [`RewardSet::from_yaml`] and [`REWARD_KINDS`] for
//! every kind's keys). [`RewardSet::score`] scores a batch of [`Completion`]s: each reward
//! separately (for metrics) and their weighted sum `Σ weight·reward` (the training signal; with
//! weights summing to 1 and built-in rewards only, it lies in 0..1).
//!
//! Built-in rewards, each 0..1:
//! - `exact_match`: the answer extracted from the completion, trimmed, equals the row's `field`
//!   (default `answer`), trimmed (a number field compares as its JSON text). Extraction: the
//!   **last** match of `pattern` (a regex with at most one capture group: the group, else the
//!   whole match); default `####\s*(.+)` (GSM8K's answer line). No match: 0.
//! - `numeric_match`: the extracted answer and the row's field both read as numbers and differ by
//!   at most `tolerance` (default 1e-6). Default pattern: the last number in the completion
//!   (`-?\d[\d,]*(\.\d+)?`). Numbers: `1,234` is 1234 (groups of three), `3,5` is 3.5, a trailing
//!   `.` is ignored. A completion without a number, or one that does not parse, scores 0; a row
//!   whose field is missing or not a number is an error naming the row.
//! - `regex` / `format` (the same): 1 when the completion matches `pattern` (anywhere; with
//!   `full: true` the whole trimmed completion must match), else 0.
//! - `length_penalty`: 1 up to `target` tokens (or characters, `unit: chars`), falling linearly
//!   to 0 at `max`, 0 beyond.
//! - `language`: 1 when the completion's language (see [`detect_language`]: English or Spanish,
//!   by stop-word counts) is the row's `field` (default `lang`: `en`, `es`, `en-US`, `english`,
//!   `spanish`, ...), or, for a row without that field, the language of the prompt's own words
//!   ([`Completion::prompt_text`]); 0 otherwise, and 0 when the completion's language cannot be
//!   told. A row's language other than English or Spanish is an error.
//! - `command`: see [`command`](self#the-command-reward) below.
//!
//! # The command reward
//!
//! `{kind: command, command: ["python3", "my_reward.py"], timeout_s: 60, cwd: DIR}` runs the
//! program once per scoring call (one batch of completions). It reads one JSON object per
//! completion on stdin, one per line:
//! `{"prompt": <the prompt's own words>, "rendered_prompt": <the prompt as the model saw it>,
//! "completion": ..., "row": {<the row's other columns>}, "row_index": <0-based dataset row>,
//! "index": <0-based position in the batch>}`, and must write exactly one finite number per
//! line on stdout, in the same order (any scale: it is used as written). A non-zero exit, the
//! wrong number of lines, a line that is not a number, NaN or infinity, or running past
//! `timeout_s` (the process is then killed) is an error naming the reward, the line and row at
//! fault and what was expected, with the end of the program's stderr.

mod command;
mod config;
mod lang;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde_json::Value;

pub use config::{
    check_rewards, RewardKindDecl, DEFAULT_EXACT_PATTERN, DEFAULT_NUMBER_PATTERN, REWARDS_KEY,
    REWARD_COMMON_KEYS, REWARD_KINDS,
};
pub use lang::detect_language;

/// What went wrong building or running a reward. Every variant names the reward.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    /// A reward's settings are wrong (`path`: `rewards[1].weight` and the like).
    #[error("{path}: {message}")]
    Spec {
        /// The key path at fault.
        path: String,
        /// What was expected and what was found.
        message: String,
    },
    /// A row the reward cannot judge (a missing or malformed field).
    #[error("reward {reward}: completion {index} (dataset row {row}): {message}")]
    Row {
        /// The reward's name.
        reward: String,
        /// 0-based position of the completion in the batch.
        index: usize,
        /// 0-based row of the prompt in its dataset.
        row: usize,
        /// What is wrong.
        message: String,
    },
    /// The external command failed.
    #[error("reward {reward} (command {command}): {message}{}", stderr_note(.stderr))]
    Command {
        /// The reward's name.
        reward: String,
        /// The command line, as configured.
        command: String,
        /// What went wrong and what was expected.
        message: String,
        /// The end of the program's stderr (empty when it wrote none).
        stderr: String,
    },
}

fn stderr_note(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        "; it wrote nothing on stderr".into()
    } else {
        format!("; the end of its stderr:\n{}", stderr.trim_end())
    }
}

/// One completion to score, with what its prompt's row holds.
#[derive(Clone, Copy, Debug)]
pub struct Completion<'a> {
    /// The prompt as the model saw it (rendered through the chat template).
    pub prompt: &'a str,
    /// The prompt's own words: a string prompt, or the last user message
    /// ([`afinar_data::PromptRow::user_text`]).
    pub prompt_text: &'a str,
    /// The generated text (special tokens left out).
    pub completion: &'a str,
    /// The completion's length in tokens (for `length_penalty`).
    pub completion_tokens: usize,
    /// The row's other columns (`answer`, `lang`, ...).
    pub fields: &'a BTreeMap<String, Value>,
    /// 0-based row of the prompt in its dataset (for messages).
    pub row: usize,
}

impl<'a> Completion<'a> {
    /// A completion of a loaded prompt.
    pub fn of_row(row: &'a afinar_data::PromptRow, completion: &'a str, completion_tokens: usize) -> Self {
        Completion {
            prompt: &row.text,
            prompt_text: row.user_text(),
            completion,
            completion_tokens,
            fields: &row.fields,
            row: row.row,
        }
    }
}

/// What a length counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LengthUnit {
    /// Tokens ([`Completion::completion_tokens`]).
    Tokens,
    /// Unicode characters of the completion.
    Chars,
}

/// One reward's rule and options.
#[derive(Clone, Debug)]
pub enum RewardKind {
    /// `exact_match`: the extracted answer equals the row's field.
    ExactMatch {
        /// The row's column holding the reference.
        field: String,
        /// The extraction pattern.
        pattern: Regex,
    },
    /// `numeric_match`: the extracted number equals the row's within `tolerance`.
    NumericMatch {
        /// The row's column holding the reference.
        field: String,
        /// The extraction pattern.
        pattern: Regex,
        /// The largest accepted absolute difference.
        tolerance: f64,
    },
    /// `regex` / `format`: the completion matches.
    Regex {
        /// The pattern (anchored at both ends when `full`).
        pattern: Regex,
        /// Whether the whole trimmed completion must match.
        full: bool,
    },
    /// `length_penalty`: 1 up to `target`, linear down to 0 at `max`.
    LengthPenalty {
        /// The length that still scores 1.
        target: usize,
        /// The length that scores 0 (> `target`).
        max: usize,
        /// What is counted.
        unit: LengthUnit,
    },
    /// `language`: the completion is in the row's (or the prompt's) language.
    Language {
        /// The row's column holding the expected language.
        field: String,
    },
    /// `command`: an external program scores the batch.
    Command {
        /// The program and its arguments.
        argv: Vec<String>,
        /// Longest run allowed per batch.
        timeout: Duration,
        /// Its working directory (`None`: the current one).
        cwd: Option<PathBuf>,
    },
}

impl RewardKind {
    /// The word a config uses for this kind (`format` reads as `regex`).
    pub fn word(&self) -> &'static str {
        match self {
            RewardKind::ExactMatch { .. } => "exact_match",
            RewardKind::NumericMatch { .. } => "numeric_match",
            RewardKind::Regex { .. } => "regex",
            RewardKind::LengthPenalty { .. } => "length_penalty",
            RewardKind::Language { .. } => "language",
            RewardKind::Command { .. } => "command",
        }
    }
}

/// One reward with its weight and the name its metrics go under.
#[derive(Clone, Debug)]
pub struct RewardSpec {
    /// Unique within the set (default: the kind's word, `_2`, `_3` ... on repeats).
    pub name: String,
    /// Its weight in the sum (≥ 0).
    pub weight: f64,
    /// The rule.
    pub kind: RewardKind,
}

/// The scores of one batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Scores {
    /// Each reward's name, in set order.
    pub names: Vec<String>,
    /// Each reward's weight.
    pub weights: Vec<f64>,
    /// `per_reward[k][i]`: reward `k` of completion `i`.
    pub per_reward: Vec<Vec<f64>>,
    /// `total[i]`: the weighted sum for completion `i`.
    pub total: Vec<f64>,
}

impl Scores {
    /// Mean of reward `k` over the batch (0 for an empty batch).
    pub fn mean(&self, k: usize) -> f64 {
        mean(&self.per_reward[k])
    }

    /// Population standard deviation of reward `k` over the batch.
    pub fn std(&self, k: usize) -> f64 {
        std(&self.per_reward[k])
    }

    /// Mean of the weighted sum.
    pub fn total_mean(&self) -> f64 {
        mean(&self.total)
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn std(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt()
}

/// Several rewards, scored together.
#[derive(Clone, Debug)]
pub struct RewardSet {
    rewards: Vec<RewardSpec>,
}

impl RewardSet {
    /// A set from rewards made in code; names must be unique and weights finite and ≥ 0.
    pub fn new(rewards: Vec<RewardSpec>) -> Result<RewardSet, RewardError> {
        if rewards.is_empty() {
            return Err(RewardError::Spec {
                path: "rewards".into(),
                message: "expected at least one reward".into(),
            });
        }
        for (i, r) in rewards.iter().enumerate() {
            if !(r.weight.is_finite() && r.weight >= 0.0) {
                return Err(RewardError::Spec {
                    path: format!("rewards[{i}].weight"),
                    message: format!("expected a number ≥ 0, got {}", r.weight),
                });
            }
            if rewards[..i].iter().any(|o| o.name == r.name) {
                return Err(RewardError::Spec {
                    path: format!("rewards[{i}].name"),
                    message: format!(
                        "the name {:?} is used by an earlier reward; names must be unique",
                        r.name
                    ),
                });
            }
        }
        Ok(RewardSet { rewards })
    }

    /// The rewards, in order.
    pub fn rewards(&self) -> &[RewardSpec] {
        &self.rewards
    }

    /// The rewards' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.rewards.iter().map(|r| r.name.as_str()).collect()
    }

    /// Scores a batch: every reward of every completion, and the weighted sums. Each command
    /// reward runs its program once for the whole batch.
    pub fn score(&self, batch: &[Completion<'_>]) -> Result<Scores, RewardError> {
        let mut per_reward = Vec::with_capacity(self.rewards.len());
        for r in &self.rewards {
            per_reward.push(score_one(r, batch)?);
        }
        let total = (0..batch.len())
            .map(|i| self.rewards.iter().zip(&per_reward).map(|(r, s)| r.weight * s[i]).sum())
            .collect();
        Ok(Scores {
            names: self.rewards.iter().map(|r| r.name.clone()).collect(),
            weights: self.rewards.iter().map(|r| r.weight).collect(),
            per_reward,
            total,
        })
    }
}

fn score_one(r: &RewardSpec, batch: &[Completion<'_>]) -> Result<Vec<f64>, RewardError> {
    if let RewardKind::Command { argv, timeout, cwd } = &r.kind {
        return command::run(&r.name, argv, *timeout, cwd.as_deref(), batch);
    }
    batch.iter().enumerate().map(|(i, c)| builtin(r, i, c)).collect()
}

/// The last match of `pattern` in `text`: its first capture group, else the whole match.
pub fn extract_answer<'t>(pattern: &Regex, text: &'t str) -> Option<&'t str> {
    let caps = pattern.captures_iter(text).last()?;
    caps.get(1).or_else(|| caps.get(0)).map(|m| m.as_str())
}

/// Reads a number as answers write it: surrounding spaces and a trailing `.` ignored, `1,234`
/// (comma groups of three) as 1234, `3,5` as 3.5; `None` unless finite.
pub fn parse_number(text: &str) -> Option<f64> {
    let t = text.trim().trim_end_matches('.').trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    let cleaned = if t.contains(',') && t.contains('.') {
        t.replace(',', "")
    } else if t.contains(',') {
        let mut parts = t.split(',');
        let head = parts.next().unwrap_or("");
        let rest: Vec<&str> = parts.collect();
        let grouped = !head.trim_start_matches('-').is_empty()
            && head.trim_start_matches('-').len() <= 3
            && rest.iter().all(|p| p.len() == 3 && p.bytes().all(|b| b.is_ascii_digit()));
        if grouped {
            t.replace(',', "")
        } else {
            t.replacen(',', ".", 1)
        }
    } else {
        t.to_string()
    };
    if cleaned.is_empty()
        || !cleaned
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'e' || b == b'E' || b == b'+')
    {
        return None;
    }
    cleaned.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn row_err(r: &RewardSpec, index: usize, c: &Completion<'_>, message: String) -> RewardError {
    RewardError::Row { reward: r.name.clone(), index, row: c.row, message }
}

/// The row's `field`, or an error naming it and the columns there are.
fn field<'c>(r: &RewardSpec, index: usize, c: &Completion<'c>, name: &str) -> Result<&'c Value, RewardError> {
    c.fields.get(name).filter(|v| !v.is_null()).ok_or_else(|| {
        let have: Vec<&str> = c.fields.keys().map(String::as_str).collect();
        row_err(
            r,
            index,
            c,
            format!(
                "the row has no {name:?} column (it has {}); the reward compares against it",
                if have.is_empty() { "none".to_string() } else { have.join(", ") }
            ),
        )
    })
}

fn builtin(r: &RewardSpec, i: usize, c: &Completion<'_>) -> Result<f64, RewardError> {
    Ok(match &r.kind {
        RewardKind::ExactMatch { field: f, pattern } => {
            let want = match field(r, i, c, f)? {
                Value::String(s) => s.trim().to_string(),
                v @ (Value::Number(_) | Value::Bool(_)) => v.to_string(),
                other => {
                    return Err(row_err(
                        r,
                        i,
                        c,
                        format!("column {f:?}: expected a string or a number, found {other}"),
                    ))
                }
            };
            let got = extract_answer(pattern, c.completion).map(str::trim);
            f64::from(u8::from(got == Some(want.as_str())))
        }
        RewardKind::NumericMatch { field: f, pattern, tolerance } => {
            let want = match field(r, i, c, f)? {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => parse_number(s),
                _ => None,
            }
            .ok_or_else(|| {
                row_err(
                    r,
                    i,
                    c,
                    format!(
                        "column {f:?}: expected a number (or a string holding one), found {}",
                        c.fields[f]
                    ),
                )
            })?;
            let got = extract_answer(pattern, c.completion).and_then(parse_number);
            f64::from(u8::from(got.is_some_and(|g| (g - want).abs() <= *tolerance)))
        }
        RewardKind::Regex { pattern, full } => {
            // A `full` pattern is compiled anchored (`\A(?:...)\z`).
            let hit =
                if *full { pattern.is_match(c.completion.trim()) } else { pattern.is_match(c.completion) };
            f64::from(u8::from(hit))
        }
        RewardKind::LengthPenalty { target, max, unit } => {
            let len = match unit {
                LengthUnit::Tokens => c.completion_tokens,
                LengthUnit::Chars => c.completion.chars().count(),
            };
            if len <= *target {
                1.0
            } else if len >= *max {
                0.0
            } else {
                (*max - len) as f64 / (*max - *target) as f64
            }
        }
        RewardKind::Language { field: f } => {
            let want = match c.fields.get(f).filter(|v| !v.is_null()) {
                Some(Value::String(s)) => lang::normalize(s).ok_or_else(|| {
                    row_err(
                        r,
                        i,
                        c,
                        format!("column {f:?}: the language reward tells English (en) from Spanish (es), not {s:?}"),
                    )
                })?,
                Some(other) => {
                    return Err(row_err(r, i, c, format!("column {f:?}: expected a language code such as \"en\", found {other}")))
                }
                None => match detect_language(c.prompt_text) {
                    Some(l) => l,
                    None => {
                        return Err(row_err(
                            r,
                            i,
                            c,
                            format!(
                                "the row has no {f:?} column and the prompt's language cannot be told \
                                 (neither English nor Spanish words): add a {f:?} column"
                            ),
                        ))
                    }
                },
            };
            f64::from(u8::from(detect_language(c.completion) == Some(want)))
        }
        RewardKind::Command { .. } => unreachable!("command rewards score whole batches"),
    })
}
