//! Evaluation: does fine-tuning help, in English and in Spanish?
//!
//! Three kinds of task, each reading local files only:
//! - [`perplexity`](mod@perplexity): token-level perplexity of a text with the sliding window of the Hugging Face
//!   guide "Perplexity of fixed-length models";
//! - [`choice`]: multiple-choice log-likelihood tasks scored as lm-evaluation-harness 0.4 does
//!   (`acc`, `acc_norm` and their standard errors), in the JSONL formats of HellaSwag, ARC, PIQA
//!   and MMLU with the harness' default prompts, zero- or few-shot;
//! - [`generation`]: greedy generation scored by exact match after normalisation;
//! - [`preference`]: preference pairs scored by the log-probability margin of the chosen over
//!   the rejected response (accuracy and mean margin);
//! - [`reward`]: answers generated to GRPO prompts, scored with the `grpo` recipe's rewards
//!   (mean reward).
//!
//! [`config`] reads an eval YAML config that lists tasks with a language tag, [`report`] runs
//! them and lays the results out per language, as a terminal table and as JSON.

pub mod choice;
pub mod config;
pub mod generation;
mod jsonl;
pub mod perplexity;
pub mod preference;
pub mod report;
pub mod reward;

pub use choice::{
    load_choice_docs, score_choice_task, ChoiceDoc, ChoiceFormat, ChoiceOptions, ChoiceResult, FewshotSampler,
};
pub use config::{EvalConfig, TaskKind, TaskSpec};
pub use generation::{
    exact_match_task, load_generation_docs, normalize_answer, ExactMatchOptions, ExactMatchResult,
    GenerationDoc,
};
pub use perplexity::{
    perplexity, perplexity_of_ids, plan_windows, PerplexityOptions, PerplexityResult, Window,
};
pub use preference::{
    load_preference_pairs, score_preference_task, PreferenceItem, PreferenceOptions, PreferenceResult,
};
pub use report::{check_tasks, run_tasks, EvalReport, TaskOutcome, TaskResult};
pub use reward::{load_reward_prompts, score_reward_task, RewardResult, RewardTaskOptions};
