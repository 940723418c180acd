//! The eval config: a YAML file listing tasks, each with a language tag, checked strictly
//! (unknown keys, types, ranges, missing files) with errors naming the file, line, column and key:
//!
//! ```yaml
//! model: ../models/my-finetune        # optional: `--model` wins
//! tasks:
//!   - name: general_knowledge         # tasks with the same name form one row per language
//!     language: en
//!     kind: multiple_choice           # perplexity | multiple_choice | exact_match
//!     format: arc                     # arc | hellaswag | piqa | mmlu
//!     file: general_knowledge_en.jsonl
//!     fewshot_file: general_knowledge_fewshot_en.jsonl
//!     num_fewshot: 3
//!     fewshot_sampler: random         # random (seeded) | first_n
//!     seed: 1234
//!   - name: story
//!     language: es
//!     kind: perplexity
//!     file: text_es.txt
//!     max_length: 256                 # default: the model's context, at most 1024
//!     stride: 128                     # default: half the window
//!   - name: short_answers
//!     language: en
//!     kind: exact_match
//!     file: exact_match_en.jsonl
//!     max_new_tokens: 16
//!     stop: ["\n"]
//!     chat: true
//!     ignore_case: true
//!     ignore_punctuation: true
//!   - name: answers_in_kind           # one file, one task per language: rows with a `lang`
//!     language: es                    # column are filtered to the task's language
//!     kind: preference
//!     file: ../prefs_bilingual/heldout.jsonl
//!     template: auto                  # auto | chat | plain
//!   - name: arith_reward              # answers to GRPO prompts scored with the grpo rewards
//!     language: en                    # rows with a `lang` column: only this language
//!     kind: reward
//!     file: ../grpo_arith/heldout.jsonl
//!     max_new_tokens: 32
//!     rewards:                        # the grpo recipe's `rewards:` list, same kinds and keys
//!       - {kind: numeric_match, weight: 0.7}
//!       - {kind: command, weight: 0.3, command: [python3, my_reward.py]}   # cwd: this file's folder
//!     temperature: 0                  # greedy (default); top_p, top_k, seed when sampling
//! ```
//!
//! Relative paths are relative to the config file's folder. Every task also takes `limit`
//! (score only the first items).

use std::path::{Path, PathBuf};

use super::choice::{ChoiceFormat, ChoiceOptions, FewshotSampler};
use super::generation::ExactMatchOptions;
use super::perplexity::PerplexityOptions;
use super::preference::PreferenceOptions;
use super::reward::RewardTaskOptions;
use crate::config::yaml::{self, Entry, Node, Pos, Value};
use crate::generate::SamplingParams;
use crate::rewards::RewardSet;
use crate::{Error, Result};

/// A whole eval config.
#[derive(Debug, Clone, Default)]
pub struct EvalConfig {
    /// The model to evaluate, when the config names one.
    pub model: Option<PathBuf>,
    /// A tokenizer file, when the model has none.
    pub tokenizer: Option<PathBuf>,
    /// The tasks, in order.
    pub tasks: Vec<TaskSpec>,
}

/// One task on one language.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// The task's name: the row of the per-language table.
    pub name: String,
    /// The language tag (`en`, `es`, …): the column.
    pub language: String,
    /// What to run.
    pub kind: TaskKind,
}

/// What a task runs, and on which file.
#[derive(Debug, Clone)]
pub enum TaskKind {
    /// Perplexity of a text file.
    Perplexity {
        /// The text.
        file: PathBuf,
        /// Window settings.
        opts: PerplexityOptions,
    },
    /// A multiple-choice JSONL file.
    MultipleChoice {
        /// The items.
        file: PathBuf,
        /// Their layout.
        format: ChoiceFormat,
        /// Few-shot examples (same layout).
        fewshot_file: Option<PathBuf>,
        /// Few-shot count, sampler, seed, limit.
        opts: ChoiceOptions,
    },
    /// A generation JSONL file scored by exact match.
    ExactMatch {
        /// The items.
        file: PathBuf,
        /// Generation and normalisation settings.
        opts: ExactMatchOptions,
    },
    /// A preference file (prompt, chosen, rejected) scored by log-probability margins.
    Preference {
        /// The pairs.
        file: PathBuf,
        /// Template and limit.
        opts: PreferenceOptions,
    },
    /// A GRPO prompt file: generated answers scored with rewards.
    Reward {
        /// The prompts.
        file: PathBuf,
        /// Generation, rewards and limit.
        opts: RewardTaskOptions,
    },
}

impl TaskKind {
    /// The kind's name in configs.
    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::Perplexity { .. } => "perplexity",
            TaskKind::MultipleChoice { .. } => "multiple_choice",
            TaskKind::ExactMatch { .. } => "exact_match",
            TaskKind::Preference { .. } => "preference",
            TaskKind::Reward { .. } => "reward",
        }
    }

    /// The main file.
    pub fn file(&self) -> &Path {
        match self {
            TaskKind::Perplexity { file, .. }
            | TaskKind::MultipleChoice { file, .. }
            | TaskKind::ExactMatch { file, .. }
            | TaskKind::Preference { file, .. }
            | TaskKind::Reward { file, .. } => file,
        }
    }
}

const TOP_KEYS: &[&str] = &["model", "tokenizer", "tasks"];
const COMMON_KEYS: &[&str] = &["name", "language", "kind", "file", "limit"];
const PPL_KEYS: &[&str] = &["max_length", "stride", "add_bos"];
const MC_KEYS: &[&str] = &["format", "fewshot_file", "num_fewshot", "fewshot_sampler", "seed"];
const EM_KEYS: &[&str] = &["max_new_tokens", "stop", "chat", "ignore_case", "ignore_punctuation"];
const PREF_KEYS: &[&str] = &["template"];
const REWARD_KEYS: &[&str] = &["max_new_tokens", "stop", "temperature", "top_p", "top_k", "seed", "rewards"];

struct Cx<'a> {
    file: &'a str,
    base: PathBuf,
}

impl Cx<'_> {
    fn err(&self, pos: &Pos, key: &str, msg: impl std::fmt::Display) -> Error {
        let at = match pos {
            Pos::File { line, col } => format!("{}:{line}:{col}", self.file),
            Pos::Override(o) => format!("{} (override `{o}`)", self.file),
        };
        Error::Input(if key.is_empty() { format!("{at}: {msg}") } else { format!("{at}: {key}: {msg}") })
    }

    fn map<'n>(&self, node: &'n Node, key: &str, allowed: &[&str]) -> Result<&'n [Entry]> {
        let entries = node.entries().ok_or_else(|| {
            self.err(&node.pos, key, format!("expected a mapping, got {}", node.describe()))
        })?;
        for e in entries {
            if !allowed.contains(&e.key.as_str()) {
                let path = if key.is_empty() { e.key.clone() } else { format!("{key}.{}", e.key) };
                return Err(self.err(
                    &e.key_pos,
                    &path,
                    format!("unknown key; expected one of {}", allowed.join(", ")),
                ));
            }
        }
        Ok(entries)
    }

    fn text(&self, node: &Node, key: &str) -> Result<String> {
        match &node.value {
            Value::Scalar { .. } if !node.is_null() => Ok(node.as_text().unwrap_or_default().to_string()),
            _ => Err(self.err(&node.pos, key, format!("expected a string, got {}", node.describe()))),
        }
    }

    fn non_empty(&self, node: &Node, key: &str) -> Result<String> {
        let s = self.text(node, key)?;
        if s.trim().is_empty() {
            return Err(self.err(&node.pos, key, "expected a non-empty string"));
        }
        Ok(s)
    }

    fn count(&self, node: &Node, key: &str, min: i128) -> Result<usize> {
        match node.as_int() {
            Some(n) if n >= min && n <= u32::MAX as i128 => Ok(n as usize),
            _ => {
                Err(self.err(&node.pos, key, format!("expected an integer ≥ {min}, got {}", node.describe())))
            }
        }
    }

    fn flag(&self, node: &Node, key: &str) -> Result<bool> {
        node.as_bool().ok_or_else(|| {
            self.err(&node.pos, key, format!("expected true or false, got {}", node.describe()))
        })
    }

    /// `model:` a local path (checked to exist) or a Hub repository, kept as `hf://…`.
    fn model_path(&self, node: &Node) -> Result<PathBuf> {
        let text = self.non_empty(node, "model")?;
        let p = PathBuf::from(&text);
        let local = if p.is_absolute() { p } else { self.base.join(p) };
        match afinar_hub::as_hub_reference(&text, &local) {
            Some(r) => {
                afinar_hub::RepoRef::parse(&r, false)
                    .map_err(|e| self.err(&node.pos, "model", e.to_string()))?;
                Ok(PathBuf::from(r))
            }
            None => self.path(node, "model", true),
        }
    }

    fn path(&self, node: &Node, key: &str, must_exist: bool) -> Result<PathBuf> {
        let p = PathBuf::from(self.non_empty(node, key)?);
        let p = if p.is_absolute() { p } else { self.base.join(p) };
        if must_exist && !p.exists() {
            return Err(self.err(&node.pos, key, format!("{}: no such file", p.display())));
        }
        Ok(p)
    }
}

impl EvalConfig {
    /// Reads and checks an eval config file.
    pub fn load(path: &Path) -> Result<EvalConfig> {
        if !path.exists() {
            return Err(Error::Input(format!("{}: no such eval config", path.display())));
        }
        let text =
            std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        EvalConfig::parse(&text, path)
    }

    /// Parses eval config text read from `origin` (relative paths are relative to its folder).
    pub fn parse(text: &str, origin: &Path) -> Result<EvalConfig> {
        let file = origin.display().to_string();
        let base = origin.parent().map(Path::to_path_buf).unwrap_or_default();
        let cx = Cx { file: &file, base };
        let root = match yaml::parse(text, None) {
            Ok(Some(root)) => root,
            Ok(None) => {
                return Err(Error::Input(format!("{file}: empty eval config: expected a `tasks:` list")))
            }
            Err(e) => return Err(cx.err(&e.pos, "", format!("invalid YAML: {}", e.msg))),
        };
        let mut cfg = EvalConfig::default();
        let mut tasks_node = None;
        for e in cx.map(&root, "", TOP_KEYS)? {
            match e.key.as_str() {
                "model" => cfg.model = Some(cx.model_path(&e.value)?),
                "tokenizer" => cfg.tokenizer = Some(cx.path(&e.value, "tokenizer", true)?),
                _ => tasks_node = Some(&e.value),
            }
        }
        let tasks =
            tasks_node.ok_or_else(|| cx.err(&root.pos, "tasks", "missing: expected a list of tasks"))?;
        let Value::Seq(items) = &tasks.value else {
            return Err(cx.err(
                &tasks.pos,
                "tasks",
                format!("expected a list of tasks, got {}", tasks.describe()),
            ));
        };
        if items.is_empty() {
            return Err(cx.err(&tasks.pos, "tasks", "empty: expected at least one task"));
        }
        for (i, node) in items.iter().enumerate() {
            cfg.tasks.push(parse_task(&cx, node, &format!("tasks[{i}]"))?);
        }
        Ok(cfg)
    }
}

fn parse_task(cx: &Cx<'_>, node: &Node, key: &str) -> Result<TaskSpec> {
    let all: Vec<&str> = [COMMON_KEYS, PPL_KEYS, MC_KEYS, EM_KEYS, PREF_KEYS, REWARD_KEYS].concat();
    let entries = cx.map(node, key, &all)?;
    let get = |k: &str| entries.iter().find(|e| e.key == k).map(|e| &e.value);
    let need = |k: &str| get(k).ok_or_else(|| cx.err(&node.pos, key, format!("missing `{k}`")));
    let sub = |k: &str| format!("{key}.{k}");

    let kind_node = need("kind")?;
    let kind_name = cx.text(kind_node, &sub("kind"))?;
    let own: &[&str] = match kind_name.as_str() {
        "perplexity" => PPL_KEYS,
        "multiple_choice" => MC_KEYS,
        "exact_match" => EM_KEYS,
        "preference" => PREF_KEYS,
        "reward" => REWARD_KEYS,
        other => {
            return Err(cx.err(
                &kind_node.pos,
                &sub("kind"),
                format!(
                "expected one of perplexity, multiple_choice, exact_match, preference, reward, got {other:?}"
            ),
            ))
        }
    };
    for e in entries {
        if !COMMON_KEYS.contains(&e.key.as_str()) && !own.contains(&e.key.as_str()) {
            return Err(cx.err(&e.key_pos, &sub(&e.key), format!("not a setting of a {kind_name} task")));
        }
    }
    let name = cx.non_empty(need("name")?, &sub("name"))?;
    let language = cx.non_empty(need("language")?, &sub("language"))?;
    let file = cx.path(need("file")?, &sub("file"), true)?;
    let limit = get("limit").map(|n| cx.count(n, &sub("limit"), 1)).transpose()?;
    let kind = match kind_name.as_str() {
        "perplexity" => {
            if get("limit").is_some() {
                return Err(cx.err(&node.pos, &sub("limit"), "not a setting of a perplexity task"));
            }
            TaskKind::Perplexity {
                file,
                opts: PerplexityOptions {
                    max_length: get("max_length").map(|n| cx.count(n, &sub("max_length"), 2)).transpose()?,
                    stride: get("stride").map(|n| cx.count(n, &sub("stride"), 1)).transpose()?,
                    add_bos: get("add_bos").map(|n| cx.flag(n, &sub("add_bos"))).transpose()?,
                },
            }
        }
        "multiple_choice" => {
            let f = need("format")?;
            let fname = cx.text(f, &sub("format"))?;
            let format = ChoiceFormat::from_name(&fname).ok_or_else(|| {
                let names: Vec<&str> = ChoiceFormat::ALL.iter().map(|f| f.name()).collect();
                cx.err(&f.pos, &sub("format"), format!("expected one of {}, got {fname:?}", names.join(", ")))
            })?;
            let sampler = match get("fewshot_sampler") {
                None => FewshotSampler::default(),
                Some(s) => {
                    let t = cx.text(s, &sub("fewshot_sampler"))?;
                    FewshotSampler::from_name(&t).ok_or_else(|| {
                        cx.err(
                            &s.pos,
                            &sub("fewshot_sampler"),
                            format!("expected random or first_n, got {t:?}"),
                        )
                    })?
                }
            };
            let num_fewshot =
                get("num_fewshot").map(|n| cx.count(n, &sub("num_fewshot"), 0)).transpose()?.unwrap_or(0);
            let fewshot_file =
                get("fewshot_file").map(|n| cx.path(n, &sub("fewshot_file"), true)).transpose()?;
            if num_fewshot > 0 && fewshot_file.is_none() {
                return Err(cx.err(
                    &node.pos,
                    &sub("fewshot_file"),
                    format!("missing: num_fewshot is {num_fewshot}"),
                ));
            }
            let seed = get("seed").map(|n| cx.count(n, &sub("seed"), 0)).transpose()?.unwrap_or(1234) as u64;
            TaskKind::MultipleChoice {
                file,
                format,
                fewshot_file,
                opts: ChoiceOptions { num_fewshot, sampler, seed, limit },
            }
        }
        "preference" => {
            let template = match get("template") {
                None => afinar_data::InstructTemplate::Auto,
                Some(t) => {
                    let text = cx.text(t, &sub("template"))?;
                    match text.as_str() {
                        "auto" => afinar_data::InstructTemplate::Auto,
                        "chat" => afinar_data::InstructTemplate::Chat,
                        "plain" => afinar_data::InstructTemplate::Plain,
                        _ => {
                            return Err(cx.err(
                                &t.pos,
                                &sub("template"),
                                format!("expected auto, chat or plain, got {text:?}"),
                            ))
                        }
                    }
                }
            };
            TaskKind::Preference { file, opts: PreferenceOptions { template, limit } }
        }
        "reward" => TaskKind::Reward { file, opts: parse_reward_opts(cx, &get, &sub, &node.pos, limit)? },
        _ => {
            let mut opts = ExactMatchOptions { limit, ..Default::default() };
            if let Some(n) = get("max_new_tokens") {
                opts.max_new_tokens = cx.count(n, &sub("max_new_tokens"), 1)?;
            }
            if let Some(s) = get("stop") {
                opts.stop = match &s.value {
                    Value::Seq(items) => items
                        .iter()
                        .enumerate()
                        .map(|(i, x)| cx.text(x, &format!("{}[{i}]", sub("stop"))))
                        .collect::<Result<_>>()?,
                    _ => vec![cx.text(s, &sub("stop"))?],
                };
            }
            for (k, slot) in [
                ("chat", &mut opts.chat),
                ("ignore_case", &mut opts.ignore_case),
                ("ignore_punctuation", &mut opts.ignore_punctuation),
            ] {
                if let Some(n) = get(k) {
                    *slot = cx.flag(n, &sub(k))?;
                }
            }
            TaskKind::ExactMatch { file, opts }
        }
    };
    Ok(TaskSpec { name, language, kind })
}

/// The settings of a `reward` task.
fn parse_reward_opts<'n>(
    cx: &Cx<'_>,
    get: &dyn Fn(&str) -> Option<&'n Node>,
    sub: &dyn Fn(&str) -> String,
    pos: &Pos,
    limit: Option<usize>,
) -> Result<RewardTaskOptions> {
    let number = |k: &str, min: f64, min_inclusive: bool| -> Result<Option<f64>> {
        let Some(n) = get(k) else { return Ok(None) };
        match n.as_f64() {
            Some(v) if v.is_finite() && (v > min || (min_inclusive && v == min)) => Ok(Some(v)),
            _ => Err(cx.err(
                &n.pos,
                &sub(k),
                format!(
                    "expected a number {} {min}, got {}",
                    if min_inclusive { "≥" } else { ">" },
                    n.describe()
                ),
            )),
        }
    };
    let mut stop = Vec::new();
    if let Some(s) = get("stop") {
        stop = match &s.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, x)| cx.text(x, &format!("{}[{i}]", sub("stop"))))
                .collect::<Result<_>>()?,
            _ => vec![cx.text(s, &sub("stop"))?],
        };
    }
    let top_p = number("top_p", 0.0, false)?.unwrap_or(1.0);
    if top_p > 1.0 {
        return Err(cx.err(&get("top_p").expect("given").pos, &sub("top_p"), "expected a number in (0, 1]"));
    }
    let sampling = SamplingParams {
        temperature: number("temperature", 0.0, true)?.unwrap_or(0.0) as f32,
        top_p: top_p as f32,
        top_k: get("top_k").map(|n| cx.count(n, &sub("top_k"), 0)).transpose()?.unwrap_or(0),
        seed: get("seed").map(|n| cx.count(n, &sub("seed"), 0)).transpose()?.unwrap_or(0) as u64,
    };
    let Some(list) = get("rewards") else {
        return Err(cx.err(
            pos,
            &sub("rewards"),
            "missing: a reward task needs a rewards list (as the grpo recipe's)",
        ));
    };
    let json = crate::config::yaml::to_json(list, &sub("rewards"), &mut Vec::new());
    let rewards = RewardSet::from_json(&json, Some(&cx.base))
        .map_err(|e| cx.err(&list.pos, &sub("rewards"), e.to_string()))?;
    Ok(RewardTaskOptions {
        max_new_tokens: get("max_new_tokens")
            .map(|n| cx.count(n, &sub("max_new_tokens"), 1))
            .transpose()?
            .unwrap_or(32),
        stop,
        sampling,
        rewards,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        let dir = std::env::temp_dir();
        EvalConfig::parse(yaml, &dir.join("eval.yaml")).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_line_key_and_expectation() {
        let e =
            err("tasks:\n  - name: a\n    language: en\n    kind: perplexity\n    file: /\n    windo: 3\n");
        assert!(e.contains("eval.yaml:6:5: tasks[0].windo: unknown key"), "{e}");
        let e = err("tasks:\n  - name: a\n    language: en\n    kind: multiple_choice\n    format: arcc\n    file: /\n");
        assert!(
            e.contains(":5:13: tasks[0].format: expected one of arc, hellaswag, piqa, mmlu, got \"arcc\""),
            "{e}"
        );
        let e = err("tasks:\n  - name: a\n    language: en\n    kind: perplexity\n    file: nope.txt\n");
        assert!(e.contains("tasks[0].file:") && e.contains("nope.txt: no such file"), "{e}");
        let e = err("tasks:\n  - name: a\n    kind: perplexity\n    file: /\n");
        assert!(e.contains("tasks[0]: missing `language`"), "{e}");
        let e =
            err("tasks:\n  - name: a\n    language: en\n    kind: perplexity\n    file: /\n    stride: -1\n");
        assert!(e.contains("tasks[0].stride: expected an integer ≥ 1, got -1"), "{e}");
        let e =
            err("tasks:\n  - name: a\n    language: en\n    kind: perplexity\n    file: /\n    seed: 3\n");
        assert!(e.contains("tasks[0].seed: not a setting of a perplexity task"), "{e}");
        assert!(err("tasks: []\n").contains("tasks: empty"));
        assert!(err("tasks: [\n").contains("invalid YAML"));
    }
}
