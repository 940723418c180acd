//! Running a list of tasks and laying the results out per language: a terminal table with one
//! row per task and metric and one column per language, and a JSON document with every number
//! (and every item's outcome).

use std::path::{Path, PathBuf};

use afinar_engine::Backend;
use afinar_tokenizer::Tokenizer;
use serde::Serialize;

use super::choice::{load_choice_docs, score_choice_task, ChoiceResult};
use super::config::{TaskKind, TaskSpec};
use super::generation::{exact_match_task, load_generation_docs, ExactMatchResult};
use super::jsonl::read_text;
use super::perplexity::{perplexity, PerplexityResult};
use super::preference::{load_preference_pairs, score_preference_task, PreferenceResult};
use super::reward::{load_reward_prompts, score_reward_task, RewardResult};
use crate::models::Llama;
use crate::{Error, Result};

/// The numbers of one task.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum TaskResult {
    /// Perplexity of a text.
    Perplexity(PerplexityResult),
    /// Multiple-choice accuracy.
    MultipleChoice(ChoiceResult),
    /// Exact-match accuracy.
    ExactMatch(ExactMatchResult),
    /// Preference accuracy and mean margin.
    Preference(PreferenceResult),
    /// Mean reward of generated answers.
    Reward(RewardResult),
}

/// One task's result with what it was.
#[derive(Debug, Clone, Serialize)]
pub struct TaskOutcome {
    /// Task name.
    pub name: String,
    /// Language tag.
    pub language: String,
    /// `perplexity`, `multiple_choice`, `exact_match` or `preference`.
    pub kind: &'static str,
    /// The task's file.
    pub file: PathBuf,
    /// Its numbers.
    pub result: TaskResult,
}

/// Every task's result.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The model evaluated.
    pub model: String,
    /// Results in task order.
    pub tasks: Vec<TaskOutcome>,
}

/// Reads every task's files and checks their rows, without a model: bad input is reported
/// before any weight is loaded.
pub fn check_tasks(tasks: &[TaskSpec]) -> Result<()> {
    for task in tasks {
        match &task.kind {
            TaskKind::Perplexity { file, .. } => {
                if read_text(file)?.trim().is_empty() {
                    return Err(Error::Input(format!("{}: the text is empty", file.display())));
                }
            }
            TaskKind::MultipleChoice { file, format, fewshot_file, opts } => {
                load_choice_docs(file, *format)?;
                if let Some(f) = fewshot_file {
                    let shots = load_choice_docs(f, *format)?;
                    if opts.num_fewshot > shots.len() {
                        return Err(Error::Input(format!(
                            "{}: {} few-shot examples asked for but the file has {}",
                            f.display(),
                            opts.num_fewshot,
                            shots.len()
                        )));
                    }
                }
            }
            TaskKind::ExactMatch { file, .. } => {
                load_generation_docs(file)?;
            }
            // Encoding needs the model's tokenizer: rows are checked when the task runs.
            TaskKind::Preference { file, .. } | TaskKind::Reward { file, .. } => {
                if !file.is_file() {
                    return Err(Error::Input(format!("{}: no such file", file.display())));
                }
            }
        }
    }
    Ok(())
}

/// Runs `tasks` in order; `progress(task, done, total)` is called after each item.
pub fn run_tasks<B: Backend>(
    be: &B,
    model: &Llama<B>,
    tok: &Tokenizer,
    model_name: &str,
    tasks: &[TaskSpec],
    mut progress: impl FnMut(&TaskSpec, usize, usize),
) -> Result<EvalReport> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        let file = task.kind.file();
        let label = format!("task {} ({}, {})", task.name, task.language, file.display());
        let with_label = |e: Error| match e {
            Error::Input(msg) => Error::Input(format!("{label}: {msg}")),
            other => other,
        };
        let result = match &task.kind {
            TaskKind::Perplexity { file, opts } => {
                let text = read_text(file)?;
                let r = perplexity(be, model, tok, &text, opts).map_err(with_label)?;
                progress(task, 1, 1);
                TaskResult::Perplexity(r)
            }
            TaskKind::MultipleChoice { file, format, fewshot_file, opts } => {
                let docs = load_choice_docs(file, *format)?;
                let shots = match fewshot_file {
                    Some(f) => load_choice_docs(f, *format)?,
                    None => Vec::new(),
                };
                let r = score_choice_task(be, model, tok, &docs, &shots, opts, |d, n| progress(task, d, n))
                    .map_err(with_label)?;
                TaskResult::MultipleChoice(r)
            }
            TaskKind::ExactMatch { file, opts } => {
                let docs = load_generation_docs(file)?;
                let r = exact_match_task(be, model, tok, &docs, opts, |d, n| progress(task, d, n))
                    .map_err(with_label)?;
                TaskResult::ExactMatch(r)
            }
            TaskKind::Preference { file, opts } => {
                let pairs = load_preference_pairs(file, tok, &task.language, model.config.max_seq_len, opts)
                    .map_err(with_label)?;
                let r = score_preference_task(be, model, &pairs, opts, |d, n| progress(task, d, n))
                    .map_err(with_label)?;
                TaskResult::Preference(r)
            }
            TaskKind::Reward { file, opts } => {
                let ctx = model.config.max_seq_len.saturating_sub(opts.max_new_tokens).max(1);
                let prompts = load_reward_prompts(file, tok, &task.language, ctx).map_err(with_label)?;
                let r = score_reward_task(be, model, tok, &prompts, opts, |d, n| progress(task, d, n))
                    .map_err(with_label)?;
                TaskResult::Reward(r)
            }
        };
        out.push(TaskOutcome {
            name: task.name.clone(),
            language: task.language.clone(),
            kind: task.kind.name(),
            file: file.to_path_buf(),
            result,
        });
    }
    Ok(EvalReport { model: model_name.to_string(), tasks: out })
}

fn with_stderr(v: f64, se: Option<f64>) -> String {
    match se {
        Some(se) => format!("{v:.4} ± {se:.4}"),
        None => format!("{v:.4}"),
    }
}

impl TaskOutcome {
    /// `(metric, value)` rows of the table.
    fn rows(&self) -> Vec<(&str, String)> {
        match &self.result {
            TaskResult::Perplexity(r) => vec![
                ("perplexity", format!("{:.4}", r.perplexity)),
                ("mean NLL", format!("{:.4}", r.mean_nll)),
                ("tokens", r.tokens.to_string()),
                ("tokens/word", format!("{:.3}", r.tokens_per_word)),
            ],
            TaskResult::MultipleChoice(r) => vec![
                ("acc", with_stderr(r.acc, r.acc_stderr)),
                ("acc_norm", with_stderr(r.acc_norm, r.acc_norm_stderr)),
                ("items", r.items_scored.to_string()),
            ],
            TaskResult::Preference(r) => vec![
                ("accuracy", with_stderr(r.accuracy, r.accuracy_stderr)),
                ("mean margin", with_stderr(r.mean_margin, r.mean_margin_stderr)),
                ("pairs", r.pairs_scored.to_string()),
            ],
            TaskResult::Reward(r) => {
                let mut rows = vec![("mean reward", with_stderr(r.mean_reward, r.mean_reward_stderr))];
                for (name, v) in &r.reward_means {
                    rows.push((name.as_str(), format!("{v:.4}")));
                }
                rows.push(("items", r.items_scored.to_string()));
                rows
            }
            TaskResult::ExactMatch(r) => {
                vec![
                    ("exact_match", with_stderr(r.exact_match, r.exact_match_stderr)),
                    ("items", r.items_scored.to_string()),
                ]
            }
        }
    }
}

impl EvalReport {
    /// Languages in order of first appearance.
    pub fn languages(&self) -> Vec<&str> {
        let mut langs: Vec<&str> = Vec::new();
        for t in &self.tasks {
            if !langs.contains(&t.language.as_str()) {
                langs.push(&t.language);
            }
        }
        langs
    }

    /// The per-language table: one row per task and metric, one column per language.
    pub fn table(&self) -> String {
        let langs = self.languages();
        let mut names: Vec<&str> = Vec::new();
        for t in &self.tasks {
            if !names.contains(&t.name.as_str()) {
                names.push(&t.name);
            }
        }
        let mut grid: Vec<Vec<String>> = vec![[
            vec!["task".to_string(), "metric".to_string()],
            langs.iter().map(|l| l.to_string()).collect(),
        ]
        .concat()];
        for name in names {
            let of_name: Vec<&TaskOutcome> = self.tasks.iter().filter(|t| t.name == name).collect();
            let mut metrics: Vec<&str> = Vec::new();
            for t in &of_name {
                for (m, _) in t.rows() {
                    if !metrics.contains(&m) {
                        metrics.push(m);
                    }
                }
            }
            for (i, m) in metrics.iter().enumerate() {
                let mut row = vec![if i == 0 { name.to_string() } else { String::new() }, m.to_string()];
                for lang in &langs {
                    let cell = of_name
                        .iter()
                        .filter(|t| t.language == *lang)
                        .flat_map(|t| t.rows())
                        .find(|(k, _)| k == m)
                        .map_or_else(|| "—".to_string(), |(_, v)| v);
                    row.push(cell);
                }
                grid.push(row);
            }
        }
        let widths: Vec<usize> = (0..grid[0].len())
            .map(|c| grid.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut s = String::new();
        for (r, row) in grid.iter().enumerate() {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (v, w))| {
                    let pad = w - v.chars().count();
                    if c < 2 {
                        format!("{v}{}", " ".repeat(pad))
                    } else {
                        format!("{}{v}", " ".repeat(pad))
                    }
                })
                .collect();
            s.push_str(cells.join("  ").trim_end());
            s.push('\n');
            if r == 0 {
                s.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
                s.push('\n');
            }
        }
        s
    }

    /// Writes the report as pretty JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let value =
            serde_json::to_value(self).map_err(|e| Error::Input(format!("encoding the report: {e}")))?;
        afinar_checkpoint::write::write_json(path, &value)?;
        Ok(())
    }
}
