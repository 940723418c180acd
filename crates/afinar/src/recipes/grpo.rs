//! `grpo`: reinforcement learning with verifiable rewards (GRPO, as TRL 1.16's `GRPOTrainer`),
//! with LoRA adapters, QLoRA, or every weight, through the shared training loop
//! ([`train_objective`]).
//!
//! # One step
//! A *generation* takes `batch_size` prompts (shuffled per epoch from `seed` when `shuffle`; an
//! epoch's last partial batch is left out) and samples `grpo.num_generations` completions of
//! each with the engine's group sampling ([`generate_group`]: the prompt run once, the group
//! decoded as one batch), with LoRA dropout off. Row `j` of the `i`-th prompt of generation `s`
//! samples with the seed [`row_seed`]`(seed, s, i, j)`: a resumed run regenerates the same
//! completions from the step alone. The rewards score each completion's text; advantages are
//! group-relative (TRL's `scale_rewards`). With `grpo.num_iterations` > 1 the policy's
//! log-probabilities of the completions are kept as the "old" ones; with `grpo.beta` ≠ 0 the
//! reference's are computed once, with the adapters switched off (LoRA/QLoRA only; full
//! fine-tuning needs `beta: 0`).
//!
//! Then `num_iterations` optimizer steps each go over the whole generated batch in
//! `gradient_accumulation_steps` micro-batches (`batch_size × num_generations` must divide into
//! them) — TRL's semantics with `steps_per_generation = gradient_accumulation_steps`: each
//! iteration is one optimizer step, so the loop's steps are `num_iterations` per generation.
//! Log-probabilities are those of the logits divided by `grpo.temperature`, as TRL computes them
//! (the final hidden state is divided by the temperature before the linear head).
//!
//! The loss (`grpo.loss_type`), per token `-min(r·A, clip(r, 1-ε, 1+ε_high)·A) + β·KL₃`, is
//! normalised as TRL does with gradient accumulation: `grpo` — each completion's mean, averaged
//! over the step's completions; `bnpo` — each micro-batch's token mean, averaged over the
//! micro-batches; `dr_grpo` — the step's token sum over (completions × max_completion_length);
//! `dapo` — the step's token sum over the step's completion tokens.
//!
//! # Metrics (`metrics.jsonl`, the progress line, TensorBoard)
//! TRL's names: `reward`, `reward_std`, `rewards/<name>/mean` and `/std`,
//! `frac_reward_zero_std`, `kl` (β ≠ 0), `clip_ratio/low_mean`, `clip_ratio/high_mean`,
//! `clip_ratio/region_mean`, `completions/mean_length`, `completions/max_length`,
//! `completions/clipped_ratio` (truncated share); plus `gen_tokens_per_sec` (sampled tokens per
//! second of the generation), `train_tokens_per_sec` (tokens through the training forward and
//! backward per second of the step's passes) and `reference_tokens` (tokens run through the
//! reference, 0 with β = 0). Generation metrics are those of the batch a step trains on. The
//! loop's own `label_tokens` are the completion tokens trained on, and its `tokens_per_sec` (the
//! progress line's tok/s) divides them by the whole step, generation included. Every
//! `grpo.log_completions_every` generations, `completions.jsonl` gets the batch's prompts,
//! completions, rewards (each by name, and the weighted sum) and advantages; the file is rewritten
//! atomically without the lines of that generation and any later one, so a run resumed from a
//! state saved before a logged generation does not log it twice.
//!
//! # Data and rewards
//! The dataset is a prompt dataset (`dataset.kind: prompt`, [`PromptDataset`]; its prompts cut
//! from the left at `grpo.max_prompt_length` tokens), served by a [`PromptLoader`]; the rewards
//! are the config's top-level `rewards:` list ([`RewardSet::from_config`]); the loss, advantages
//! and log-probabilities are [`crate::objectives::grpo`]'s.
//!
//! # Resume
//! The generated batch (ids, advantages, old and reference log-probabilities, its metrics) is
//! saved with the recipe state, so a run killed between the iterations of a generation resumes
//! bit for bit; at a generation boundary the completions are sampled again from the seeds.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::time::Instant;

use afinar_engine::Backend;
use afinar_tokenizer::Tokenizer;

use super::finetune::{train_objective, MicroOutput, Plan, Summary, TrainObjective};
use super::metrics::Reporter;
use super::registry::RecipeSpec;
use super::run::{check_resume_data, dataset_spec, plan, prepare_model, Prepared};
use crate::config::{
    above, builtin_config, within, DatasetKind, DatasetKindDecl, KeyDecl, KeyType, KeyValue, RecipeConfig,
    SectionDecl, LORA_OPTIONAL,
};
use crate::generate::{generate_group, row_seed, GroupOptions, GroupStop, SamplingParams};
use crate::models::{ActivationCheckpointing, Llama, TrainBatch};
use crate::objectives::grpo::{
    advantages, forward_backward as grpo_forward_backward, frac_reward_zero_std, per_token_logps, GrpoBatch,
    GrpoParams, LossType, ScaleRewards,
};
use crate::rewards::{check_rewards, Completion, RewardSet, Scores, REWARDS_KEY};
use crate::{Error, Result};
use afinar_data::{PromptDataset, PromptLoader, PromptRow};

/// The words of `grpo.loss_type` (TRL's).
pub const LOSS_TYPES: &[&str] = &["grpo", "bnpo", "dr_grpo", "dapo"];

/// The words of `grpo.scale_rewards` (TRL's).
pub const SCALE_REWARDS: &[&str] = &["group", "batch", "none"];

/// `grpo:` — sampling and the objective.
pub const GRPO: SectionDecl = SectionDecl {
    name: "grpo",
    keys: &[
        KeyDecl::new(
            "num_generations",
            KeyType::Int { min: 2, default: Some(8) },
            "Completions sampled per prompt (the group).",
        ),
        KeyDecl::new(
            "max_prompt_length",
            KeyType::Int { min: 1, default: Some(512) },
            "Prompts longer than this many tokens keep their last tokens (left truncation).",
        ),
        KeyDecl::new(
            "max_completion_length",
            KeyType::Int { min: 1, default: Some(512) },
            "Most tokens per completion; a completion without a stop by then is truncated.",
        ),
        KeyDecl::new(
            "temperature",
            above(0.0, false, Some(1.0)),
            "Sampling temperature (also divides the logits of the loss, as TRL).",
        ),
        KeyDecl::new(
            "top_p",
            within(0.0, 1.0, true, Some(1.0)),
            "Nucleus sampling: keep the smallest set of tokens reaching this probability.",
        ),
        KeyDecl::new(
            "top_k",
            KeyType::Int { min: 0, default: Some(0) },
            "Keep the k most likely tokens (0: all).",
        ),
        KeyDecl::new(
            "stop",
            KeyType::Other { expect: "a stop string or a list of stop strings" },
            "Strings that end a completion (kept in it); the tokenizer's stop tokens always end one.",
        ),
        KeyDecl::new(
            "beta",
            above(0.0, true, Some(0.0)),
            "Weight of the k3 KL to the reference (0: no reference pass).",
        ),
        KeyDecl::new("epsilon", above(0.0, false, Some(0.2)), "Lower clipping range ε of the policy ratio."),
        KeyDecl::new(
            "epsilon_high",
            above(0.0, false, None),
            "Upper clipping range (DAPO's ε_high; default ε).",
        ),
        KeyDecl::new(
            "num_iterations",
            KeyType::Int { min: 1, default: Some(1) },
            "Optimizer steps on each generated batch (μ).",
        ),
        KeyDecl::new(
            "loss_type",
            KeyType::Word { names: LOSS_TYPES, default: Some("dapo") },
            "Loss normalisation: grpo, bnpo, dr_grpo or dapo (TRL 1.16's default).",
        ),
        KeyDecl::new(
            "scale_rewards",
            KeyType::Word { names: SCALE_REWARDS, default: Some("group") },
            "Divide advantages by the group's or the batch's reward std, or not (none: Dr. GRPO).",
        ),
        KeyDecl::new(
            "mask_truncated_completions",
            KeyType::Bool { default: false },
            "Truncated completions carry no loss.",
        ),
        KeyDecl::new(
            "log_completions_every",
            KeyType::Int { min: 0, default: Some(0) },
            "Write the batch's completions to completions.jsonl every this many generations (0: never).",
        ),
    ],
    required: false,
    expect: "a section with num_generations, max_completion_length, …",
    doc: "GRPO sampling and loss.",
};

/// The recipe's registry entry.
pub static SPEC: RecipeSpec = RecipeSpec {
    name: "grpo",
    description: "Reinforcement learning with verifiable rewards (GRPO, DAPO, Dr. GRPO) of LoRA adapters, QLoRA, or every weight",
    sections: &[LORA_OPTIONAL, GRPO],
    keys: &[REWARDS_KEY],
    dataset_kinds: &[DatasetKindDecl { kind: DatasetKind::Prompt, roles: &["prompt"] }],
    configs: &[builtin_config!(
        "smollm2_135m_grpo_lora",
        "grpo",
        "SmolLM2-135M-Instruct GRPO LoRA on the bilingual arithmetic prompts (numeric, format and language rewards)"
    )],
    check: Some(check),
    run,
};

fn num(c: &RecipeConfig, path: &str) -> Option<f64> {
    c.extra(path).and_then(KeyValue::as_num)
}

fn int(c: &RecipeConfig, path: &str) -> Option<usize> {
    c.extra(path).and_then(KeyValue::as_int)
}

fn text<'a>(c: &'a RecipeConfig, path: &str) -> Option<&'a str> {
    c.extra(path).and_then(KeyValue::as_text)
}

/// The recipe's rules across keys.
fn check(c: &RecipeConfig) -> std::result::Result<(), (String, String)> {
    let err = |path: &str, msg: String| Err((path.to_string(), msg));
    let beta = num(c, "grpo.beta").unwrap_or(0.0);
    if c.lora.is_none() && beta != 0.0 {
        return err(
            "grpo.beta",
            format!(
                "is {beta}, but without a lora section every weight trains and there is no frozen \
                 reference: the frozen reference for full fine-tuning needs beta: 0 (or train LoRA adapters)"
            ),
        );
    }
    if c.optimizer_in_bwd {
        return err("optimizer_in_bwd", "is not available with grpo: set it to false".into());
    }
    if c.dataset.packed {
        return err("dataset.packed", "prompts are not packed: set it to false".into());
    }
    let g = int(c, "grpo.num_generations").unwrap_or(8);
    let ga = c.gradient_accumulation_steps;
    if !(c.batch_size * g).is_multiple_of(ga) {
        return err(
            "gradient_accumulation_steps",
            format!(
                "is {ga}, but the {} completions of a step (batch_size {} × grpo.num_generations {g}) \
                 do not split into {ga} equal micro-batches",
                c.batch_size * g,
                c.batch_size
            ),
        );
    }
    if let Err(m) = stops(c) {
        return err("grpo.stop", m);
    }
    params(c).check().map_err(|e| ("grpo".to_string(), e.to_string()))?;
    check_rewards(c)
}

/// `grpo.stop`: one string, or a list of strings (kept by the checker as its JSON text).
fn stops(c: &RecipeConfig) -> std::result::Result<Vec<String>, String> {
    let t = match c.extra("grpo.stop") {
        None => return Ok(Vec::new()),
        Some(KeyValue::Text(t)) => t,
        Some(other) => {
            return Err(format!(
                "expected a stop string or a list of stop strings, got {}",
                serde_json::to_string(other).unwrap_or_default()
            ))
        }
    };
    let list = match serde_json::from_str::<serde_json::Value>(t) {
        Ok(serde_json::Value::Array(items)) => items,
        _ => return Ok(vec![t.to_string()]),
    };
    list.iter()
        .enumerate()
        .map(|(i, v)| match v.as_str() {
            Some(s) if !s.is_empty() => Ok(s.to_string()),
            _ => Err(format!("[{i}]: expected a non-empty stop string, got {v}")),
        })
        .collect()
}

/// A checked config's GRPO settings: the objective's ([`GrpoParams`]) and the sampling's.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoSettings {
    /// The objective (TRL's names): clipping, β, loss type, temperature, reward scaling, …
    pub params: GrpoParams,
    /// Completions per prompt.
    pub num_generations: usize,
    /// Prompt tokens kept (from the end).
    pub max_prompt_length: usize,
    /// Nucleus.
    pub top_p: f32,
    /// Top-k (0: all).
    pub top_k: usize,
    /// Stop strings.
    pub stop: Vec<String>,
    /// `completions.jsonl` every this many generations (0: never).
    pub log_completions_every: usize,
}

/// The objective's settings of a `grpo` config.
fn params(c: &RecipeConfig) -> GrpoParams {
    let epsilon = num(c, "grpo.epsilon").unwrap_or(0.2);
    GrpoParams {
        epsilon_low: epsilon,
        epsilon_high: num(c, "grpo.epsilon_high").unwrap_or(epsilon),
        beta: num(c, "grpo.beta").unwrap_or(0.0),
        loss_type: text(c, "grpo.loss_type").unwrap_or("dapo").parse().unwrap_or(LossType::Dapo),
        max_completion_length: int(c, "grpo.max_completion_length").unwrap_or(512),
        temperature: num(c, "grpo.temperature").unwrap_or(1.0) as f32,
        scale_rewards: text(c, "grpo.scale_rewards")
            .unwrap_or("group")
            .parse()
            .unwrap_or(ScaleRewards::Group),
        num_iterations: int(c, "grpo.num_iterations").unwrap_or(1),
        mask_truncated_completions: c
            .extra("grpo.mask_truncated_completions")
            .and_then(KeyValue::as_bool)
            .unwrap_or(false),
        ..GrpoParams::default()
    }
}

/// The settings of a checked `grpo` config.
pub fn settings(c: &RecipeConfig) -> GrpoSettings {
    GrpoSettings {
        params: params(c),
        num_generations: int(c, "grpo.num_generations").unwrap_or(8),
        max_prompt_length: int(c, "grpo.max_prompt_length").unwrap_or(512),
        top_p: num(c, "grpo.top_p").unwrap_or(1.0) as f32,
        top_k: int(c, "grpo.top_k").unwrap_or(0),
        stop: stops(c).unwrap_or_default(),
        log_completions_every: int(c, "grpo.log_completions_every").unwrap_or(0),
    }
}

/// One micro-batch of the loop: micro-batch `k` of iteration `iteration` over the batch
/// generated for the `gen`-th prompt batch of epoch `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpoMicro {
    /// Epoch.
    pub epoch: usize,
    /// Prompt batch within the epoch.
    pub gen: usize,
    /// Optimisation pass over it (0-based).
    pub iteration: usize,
    /// Micro-batch within the pass.
    pub k: usize,
}

/// One completion of a generated batch.
#[derive(Debug, Clone, PartialEq)]
struct Seq {
    prompt: Vec<u32>,
    /// The completion's tokens (the stop token included, as TRL trains on the EOS).
    completion: Vec<u32>,
    /// Tokens carrying loss (0 for a masked truncated completion).
    mask_len: usize,
    truncated: bool,
    advantage: f64,
    old: Vec<f32>,
    reference: Vec<f32>,
}

/// Packed training rows of some completions (see [`GrpoObjective::train_rows`]).
struct Rows {
    ids: Vec<u32>,
    labels: Vec<i32>,
    positions: Vec<u32>,
    rows: usize,
    seq: usize,
}

impl Rows {
    fn batch(&self) -> TrainBatch<'_> {
        TrainBatch {
            ids: &self.ids,
            labels: &self.labels,
            positions: &self.positions,
            doc_ids: None,
            batch: self.rows,
            seq: self.seq,
        }
    }
}

/// A generated batch and its metrics.
#[derive(Debug, Clone, PartialEq)]
struct Generated {
    epoch: usize,
    gen: usize,
    seqs: Vec<Seq>,
    /// Values of [`GrpoObjective::gen_names`].
    metrics: Vec<f64>,
}

/// The GRPO objective for the shared loop (see the module doc).
pub struct GrpoObjective<'a> {
    prompts: &'a [PromptRow],
    loader: PromptLoader,
    rewards: &'a RewardSet,
    tok: &'a Tokenizer,
    s: GrpoSettings,
    batch: usize,
    micro_per_pass: usize,
    seed: u64,
    stop_ids: Vec<u32>,
    pad: u32,
    output_dir: Option<PathBuf>,
    gen_names: Vec<&'static str>,
    buffer: RefCell<Option<Generated>>,
    /// Tokens and seconds of the current pass's micro-batches so far.
    pass: Cell<(usize, f64)>,
}

impl<'a> GrpoObjective<'a> {
    /// The objective over the prompts of `data`, `batch` prompts per generation,
    /// `micro_per_pass` micro-batches per optimisation pass.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        data: &'a PromptDataset,
        rewards: &'a RewardSet,
        tok: &'a Tokenizer,
        s: GrpoSettings,
        batch: usize,
        micro_per_pass: usize,
        shuffle: bool,
        seed: u64,
        output_dir: Option<PathBuf>,
    ) -> Result<Self> {
        if batch == 0 || micro_per_pass == 0 || !(batch * s.num_generations).is_multiple_of(micro_per_pass) {
            return Err(Error::Input(format!(
                "grpo: {batch} prompts × {} completions do not split into {micro_per_pass} micro-batches",
                s.num_generations
            )));
        }
        let prompts = data.rows();
        if prompts.len() < batch {
            return Err(Error::Input(format!(
                "grpo: the dataset has {} prompts, fewer than batch_size {batch}",
                prompts.len()
            )));
        }
        let mut gen_names: Vec<&'static str> = vec!["reward", "reward_std"];
        for name in rewards.names() {
            gen_names.push(leak(format!("rewards/{name}/mean")));
            gen_names.push(leak(format!("rewards/{name}/std")));
        }
        gen_names.extend([
            "frac_reward_zero_std",
            "completions/mean_length",
            "completions/max_length",
            "completions/clipped_ratio",
            "gen_tokens_per_sec",
            "reference_tokens",
        ]);
        let loader = PromptLoader::new(data, batch, shuffle, seed)
            .map_err(|e| Error::Input(format!("grpo: {e}")))?
            .drop_last(true);
        Ok(GrpoObjective {
            prompts,
            loader,
            rewards,
            tok,
            stop_ids: tok.stop_ids(),
            pad: tok.eos_id().unwrap_or(0),
            s,
            batch,
            micro_per_pass,
            seed,
            output_dir,
            gen_names,
            buffer: RefCell::new(None),
            pass: Cell::new((0, 0.0)),
        })
    }

    fn gens_per_epoch(&self) -> usize {
        self.loader.batches_per_epoch()
    }

    fn per_micro(&self) -> usize {
        self.batch * self.s.num_generations / self.micro_per_pass
    }

    /// The training batch of sequences `seqs` (prompt + completion, padded to the longest) and
    /// its labels: the completion's first `mask_len` tokens (none for a masked completion).
    fn train_rows(&self, seqs: &[Seq]) -> Rows {
        let seq = seqs.iter().map(|s| s.prompt.len() + s.completion.len()).max().unwrap_or(1);
        let mut ids = vec![self.pad; seqs.len() * seq];
        let mut labels = vec![-100i32; seqs.len() * seq];
        let mut positions = vec![0u32; seqs.len() * seq];
        for (r, s) in seqs.iter().enumerate() {
            let row = r * seq;
            for (t, &id) in s.prompt.iter().chain(&s.completion).enumerate() {
                ids[row + t] = id;
            }
            for (t, p) in positions[row..row + seq].iter_mut().enumerate() {
                *p = t as u32;
            }
            // the label of completion token c sits at the position before it
            for (c, &id) in s.completion[..s.mask_len].iter().enumerate() {
                labels[row + s.prompt.len() + c - 1] = id as i32;
            }
        }
        Rows { ids, labels, positions, rows: seqs.len(), seq }
    }

    /// Per-completion log-probabilities (of the completion tokens that carry loss) under `model`
    /// as it is, forward only ([`per_token_logps`]).
    fn logps<B: Backend>(&self, be: &B, model: &Llama<B>, seqs: &[Seq]) -> Result<Vec<Vec<f32>>> {
        let rows = self.train_rows(seqs);
        let seq = rows.seq;
        let tok = per_token_logps(be, model, &rows.batch(), self.s.params.temperature)?;
        Ok(seqs
            .iter()
            .enumerate()
            .map(|(r, s)| (0..s.mask_len).map(|c| tok[r * seq + s.prompt.len() + c - 1]).collect())
            .collect())
    }

    /// Per-position values `[seqs · seq]` of per-completion values (`per[r][c]` at completion
    /// `r`'s token `c`), 0 elsewhere.
    fn spread(seqs: &[Seq], seq: usize, per: impl Fn(&Seq) -> &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; seqs.len() * seq];
        for (r, s) in seqs.iter().enumerate() {
            for (c, &v) in per(s).iter().enumerate() {
                out[r * seq + s.prompt.len() + c - 1] = v;
            }
        }
        out
    }

    /// Samples, scores and prepares the batch of generation `gen` of epoch `epoch`.
    fn generate<B: Backend>(
        &self,
        be: &B,
        model: &mut Llama<B>,
        epoch: usize,
        gen: usize,
    ) -> Result<Generated> {
        let g = self.s.num_generations;
        let step = (epoch * self.gens_per_epoch() + gen) as u64;
        let rows = self.loader.batch(epoch, gen).ok_or_else(|| {
            Error::Input(format!(
                "grpo: epoch {epoch} has no prompt batch {gen} (a recipe state from another run?)"
            ))
        })?;
        let tok = self.tok;
        let detok = |ids: &[u32]| -> Result<String> {
            tok.decode(ids, true).map_err(|e| Error::Input(format!("grpo: decoding a completion: {e}")))
        };
        let t0 = Instant::now();
        let mut sampled = 0usize;
        let mut completions = Vec::with_capacity(rows.len() * g);
        model.without_dropout(|m| -> Result<()> {
            for (i, &r) in rows.iter().enumerate() {
                let opts = GroupOptions {
                    max_new_tokens: self.s.params.max_completion_length,
                    sampling: SamplingParams {
                        temperature: self.s.params.temperature,
                        top_k: self.s.top_k,
                        top_p: self.s.top_p,
                        seed: 0,
                    },
                    stop_ids: self.stop_ids.clone(),
                    stop_strings: self.s.stop.clone(),
                    seeds: (0..g as u64).map(|j| row_seed(self.seed, step, i as u64, j)).collect(),
                };
                let d: &dyn Fn(&[u32]) -> Result<String> = &detok;
                let (out, stats) = generate_group(be, m, &self.prompts[r].ids, &opts, Some(d), true)?;
                sampled += stats.sampled_tokens;
                completions.extend(out);
            }
            Ok(())
        })?;
        let gen_secs = t0.elapsed().as_secs_f64();
        let prompt_refs: Vec<&PromptRow> =
            rows.iter().flat_map(|&r| std::iter::repeat_n(&self.prompts[r], g)).collect();
        let batch: Vec<Completion<'_>> = completions
            .iter()
            .zip(&prompt_refs)
            .map(|(c, p)| Completion::of_row(p, &c.text, c.ids.len()))
            .collect();
        let scores = self.rewards.score(&batch).map_err(|e| Error::Input(format!("grpo: {e}")))?;
        let total = &scores.total;
        let total32: Vec<f32> = total.iter().map(|&r| r as f32).collect();
        let scale = self.s.params.scale_rewards;
        let adv = advantages(&total32, g, scale)?;
        let frac_zero = frac_reward_zero_std(&total32, g, scale)?;
        let mut seqs: Vec<Seq> = completions
            .iter()
            .zip(&prompt_refs)
            .zip(&adv)
            .map(|((c, p), &a)| {
                let mut completion = c.ids.clone();
                completion.extend(c.stop_token);
                let truncated = c.stop == GroupStop::Length;
                let mask_len =
                    if truncated && self.s.params.mask_truncated_completions { 0 } else { completion.len() };
                Seq {
                    prompt: p.ids.clone(),
                    completion,
                    mask_len,
                    truncated,
                    advantage: f64::from(a),
                    old: Vec::new(),
                    reference: Vec::new(),
                }
            })
            .collect();
        let per = self.per_micro();
        if self.s.params.num_iterations > 1 {
            model.without_dropout(|m| -> Result<()> {
                for chunk in seqs.chunks_mut(per) {
                    let lp = self.logps(be, m, chunk)?;
                    chunk.iter_mut().zip(lp).for_each(|(s, l)| s.old = l);
                }
                Ok(())
            })?;
        }
        let mut reference_tokens = 0usize;
        if self.s.params.beta != 0.0 {
            model.without_adapters(|m| -> Result<()> {
                for chunk in seqs.chunks_mut(per) {
                    let lp = self.logps(be, m, chunk)?;
                    reference_tokens +=
                        chunk.iter().map(|s| s.prompt.len() + s.completion.len()).sum::<usize>();
                    chunk.iter_mut().zip(lp).for_each(|(s, l)| s.reference = l);
                }
                Ok(())
            })?;
        }
        let n = seqs.len() as f64;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let std = |v: &[f64]| {
            let m = mean(v);
            (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() as f64 - 1.0).max(1.0)).sqrt()
        };
        let mut metrics = vec![mean(total), std(total)];
        for v in &scores.per_reward {
            metrics.push(mean(v));
            metrics.push(std(v));
        }
        let lens: Vec<f64> = seqs.iter().map(|s| s.completion.len() as f64).collect();
        metrics.extend([
            frac_zero,
            mean(&lens),
            lens.iter().copied().fold(0.0, f64::max),
            seqs.iter().filter(|s| s.truncated).count() as f64 / n,
            sampled as f64 / gen_secs.max(1e-9),
            reference_tokens as f64,
        ]);
        let every = self.s.log_completions_every;
        if every > 0 && (step + 1).is_multiple_of(every as u64) {
            self.log_completions(step + 1, &prompt_refs, &batch, &scores, &adv)?;
        }
        Ok(Generated { epoch, gen, seqs, metrics })
    }

    /// Writes the batch to `completions.jsonl`, atomically: the lines of this generation and of
    /// any later one (left by a run killed after its last saved state) are replaced, so a
    /// resumed run leaves no duplicates.
    fn log_completions(
        &self,
        generation: u64,
        prompts: &[&PromptRow],
        batch: &[Completion<'_>],
        scores: &Scores,
        adv: &[f32],
    ) -> Result<()> {
        let Some(dir) = &self.output_dir else { return Ok(()) };
        let path = dir.join("completions.jsonl");
        let mut out = match std::fs::read_to_string(&path) {
            Ok(text) => earlier_generations(&text, generation),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(Error::Io { path, source }),
        };
        for (i, (p, c)) in prompts.iter().zip(batch).enumerate() {
            let rewards: serde_json::Map<String, serde_json::Value> = scores
                .names
                .iter()
                .zip(&scores.per_reward)
                .map(|(n, v)| (n.clone(), serde_json::json!(v[i])))
                .collect();
            let line = serde_json::json!({
                "generation": generation,
                "row": p.row,
                "prompt": p.text,
                "completion": c.completion,
                "reward": scores.total[i],
                "rewards": rewards,
                "advantage": adv[i],
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
        afinar_checkpoint::write_atomic(&path, |w| w.write_all(out.as_bytes()))
            .map_err(|e| Error::Input(format!("{}: {e}", path.display())))
    }
}

/// The lines of a `completions.jsonl` text whose `generation` is below `generation` (a line that
/// does not parse is kept).
fn earlier_generations(text: &str, generation: u64) -> String {
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let g = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("generation").and_then(serde_json::Value::as_u64));
        if g.is_none_or(|g| g < generation) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A metric name built at run time (a reward's), kept for the process's life.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// An f64 as four exact 16-bit pieces stored in f32s (recipe state holds f32 only).
fn f64_to_f32s(v: f64, out: &mut Vec<f32>) {
    let b = v.to_bits();
    for k in 0..4 {
        out.push(((b >> (16 * k)) & 0xffff) as f32);
    }
}

fn f32s_to_f64(v: &[f32]) -> f64 {
    let mut b = 0u64;
    for (k, x) in v.iter().enumerate().take(4) {
        b |= (*x as u64) << (16 * k);
    }
    f64::from_bits(b)
}

impl<B: Backend> TrainObjective<B> for GrpoObjective<'_> {
    type Micro = GrpoMicro;

    fn unit_name(&self) -> &'static str {
        "completions"
    }

    fn batches_per_epoch(&self) -> usize {
        self.gens_per_epoch() * self.s.params.num_iterations * self.micro_per_pass
    }

    fn epoch_from(&self, epoch: usize, start: usize) -> Box<dyn Iterator<Item = GrpoMicro> + '_> {
        let (m, it) = (self.micro_per_pass, self.s.params.num_iterations);
        Box::new((start..<Self as TrainObjective<B>>::batches_per_epoch(self)).map(move |i| GrpoMicro {
            epoch,
            gen: i / (m * it),
            iteration: (i / m) % it,
            k: i % m,
        }))
    }

    fn units(&self, _: &GrpoMicro) -> usize {
        self.per_micro()
    }

    /// The completion tokens the micro-batch trained on (its loss-mask tokens), so that the
    /// progress line's tok/s is the training rate; generation's rate is `gen_tokens_per_sec`.
    fn tokens(&self, micro: &GrpoMicro) -> usize {
        let per = self.per_micro();
        match self.buffer.borrow().as_ref() {
            Some(b) if (b.epoch, b.gen) == (micro.epoch, micro.gen) => {
                b.seqs[micro.k * per..(micro.k + 1) * per].iter().map(|s| s.mask_len).sum()
            }
            _ => 0,
        }
    }

    fn forward_backward(
        &self,
        be: &B,
        model: &mut Llama<B>,
        micro: &GrpoMicro,
        _grad_scale: f32,
        checkpointing: ActivationCheckpointing,
    ) -> Result<MicroOutput> {
        if micro.iteration == 0 && micro.k == 0 {
            let g = self.generate(be, model, micro.epoch, micro.gen)?;
            *self.buffer.borrow_mut() = Some(g);
        }
        let buffer = self.buffer.borrow();
        let buf = match buffer.as_ref() {
            Some(b) if (b.epoch, b.gen) == (micro.epoch, micro.gen) => b,
            _ => {
                return Err(Error::Input(format!(
                    "grpo: the completions generated for epoch {} batch {} are missing (a recipe state \
                     from another run?)",
                    micro.epoch, micro.gen
                )))
            }
        };
        let t0 = Instant::now();
        if micro.k == 0 {
            self.pass.set((0, 0.0));
        }
        let per = self.per_micro();
        let seqs = &buf.seqs[micro.k * per..(micro.k + 1) * per];
        let total_seqs = buf.seqs.len() as f64;
        let total_tokens: usize = buf.seqs.iter().map(|s| s.mask_len).sum();
        let micro_tokens: usize = seqs.iter().map(|s| s.mask_len).sum();
        let train = self.train_rows(seqs);
        let seq = train.seq;
        let rows = seqs.len() * seq;
        let p = &self.s.params;
        let old = (p.num_iterations > 1).then(|| Self::spread(seqs, seq, |s| &s.old));
        let reference = (p.beta != 0.0).then(|| Self::spread(seqs, seq, |s| &s.reference));
        let adv: Vec<f32> = seqs.iter().map(|s| s.advantage as f32).collect();
        let batch = GrpoBatch {
            batch: train.batch(),
            old_logps: old.as_deref(),
            ref_logps: reference.as_deref(),
            advantages: &adv,
        };
        let denominator = p.denominator(seqs.len(), micro_tokens, total_tokens, self.micro_per_pass);
        let out = grpo_forward_backward(be, model, &batch, p, denominator, 1.0, checkpointing)?;
        // Shares of the step's token means, times the step's units (the loop divides by them).
        let share = |mean: f64| mean * out.tokens as f64 / total_tokens.max(1) as f64 * total_seqs;
        let mut metric_sums: Vec<(&'static str, f64)> = self
            .gen_names
            .iter()
            .zip(&buf.metrics)
            .map(|(&n, &v)| (n, if micro.k == 0 { v * total_seqs } else { 0.0 }))
            .collect();
        if let Some(kl) = out.kl {
            metric_sums.push(("kl", share(kl)));
        }
        metric_sums.push(("clip_ratio/low_mean", share(out.clip_low_mean)));
        metric_sums.push(("clip_ratio/high_mean", share(out.clip_high_mean)));
        metric_sums.push(("clip_ratio/region_mean", share(out.clip_region_mean)));
        let (tokens, secs) = self.pass.get();
        let (tokens, secs) = (tokens + rows, secs + t0.elapsed().as_secs_f64());
        self.pass.set((tokens, secs));
        let last = micro.k + 1 == self.micro_per_pass;
        metric_sums.push((
            "train_tokens_per_sec",
            if last { tokens as f64 / secs.max(1e-9) * total_seqs } else { 0.0 },
        ));
        Ok(MicroOutput { loss_sum: out.loss * total_seqs, metric_sums })
    }

    fn prepare(&mut self, _be: &B, model: &mut Llama<B>, reporter: &mut dyn Reporter) -> Result<()> {
        model.keep_activations_in_bf16(false);
        reporter.note(&format!(
            "grpo: {} prompts per generation × {} completions, {} micro-batches of {} per pass, {} \
             pass(es) per generation; loss {}, beta {} ({})",
            self.batch,
            self.s.num_generations,
            self.micro_per_pass,
            self.per_micro(),
            self.s.params.num_iterations,
            self.s.params.loss_type.name(),
            self.s.params.beta,
            if self.s.params.beta == 0.0 { "no reference pass" } else { "reference: adapters off" }
        ));
        Ok(())
    }

    fn state_tensors(&self) -> Vec<(String, Vec<f32>)> {
        let buffer = self.buffer.borrow();
        let Some(b) = buffer.as_ref() else { return Vec::new() };
        let mut ids = Vec::new();
        let mut lens = Vec::new();
        let mut f64s = Vec::new();
        let (mut old, mut reference) = (Vec::new(), Vec::new());
        for s in &b.seqs {
            ids.extend(s.prompt.iter().chain(&s.completion).map(|&i| i as f32));
            lens.extend([
                s.prompt.len() as f32,
                s.completion.len() as f32,
                s.mask_len as f32,
                f32::from(u8::from(s.truncated)),
            ]);
            f64_to_f32s(s.advantage, &mut f64s);
            old.extend(&s.old);
            reference.extend(&s.reference);
        }
        for &m in &b.metrics {
            f64_to_f32s(m, &mut f64s);
        }
        let mut out = vec![
            ("grpo.f64".to_string(), f64s),
            ("grpo.ids".to_string(), ids),
            ("grpo.key".to_string(), vec![b.epoch as f32, b.gen as f32]),
            ("grpo.lens".to_string(), lens),
        ];
        if !old.is_empty() {
            out.push(("grpo.old".to_string(), old));
        }
        if !reference.is_empty() {
            out.push(("grpo.ref".to_string(), reference));
        }
        out
    }

    fn restore_state(&mut self, tensors: Vec<(String, Vec<f32>)>) -> Result<()> {
        let mut t: std::collections::BTreeMap<String, Vec<f32>> = tensors.into_iter().collect();
        let (Some(key), Some(ids), Some(lens), Some(f64s)) =
            (t.remove("grpo.key"), t.remove("grpo.ids"), t.remove("grpo.lens"), t.remove("grpo.f64"))
        else {
            return Ok(());
        };
        let bad = || Error::Input("resume_from_checkpoint: the saved GRPO batch is malformed".into());
        let old = t.remove("grpo.old").unwrap_or_default();
        let reference = t.remove("grpo.ref").unwrap_or_default();
        let n = lens.len() / 4;
        if key.len() != 2 || lens.len() != 4 * n || f64s.len() != 4 * (n + self.gen_names.len()) {
            return Err(bad());
        }
        let (mut at, mut at_old, mut at_ref) = (0usize, 0usize, 0usize);
        let mut seqs = Vec::with_capacity(n);
        for i in 0..n {
            let l = &lens[4 * i..4 * i + 4];
            let (p, c) = (l[0] as usize, l[1] as usize);
            if at + p + c > ids.len() {
                return Err(bad());
            }
            let take = |v: &[f32], at: &mut usize| -> Result<Vec<f32>> {
                if v.is_empty() {
                    return Ok(Vec::new());
                }
                let out = v.get(*at..*at + c).ok_or_else(bad)?.to_vec();
                *at += c;
                Ok(out)
            };
            seqs.push(Seq {
                prompt: ids[at..at + p].iter().map(|&x| x as u32).collect(),
                completion: ids[at + p..at + p + c].iter().map(|&x| x as u32).collect(),
                mask_len: l[2] as usize,
                truncated: l[3] != 0.0,
                advantage: f32s_to_f64(&f64s[4 * i..4 * i + 4]),
                old: take(&old, &mut at_old)?,
                reference: take(&reference, &mut at_ref)?,
            });
            at += p + c;
        }
        let metrics =
            (0..self.gen_names.len()).map(|k| f32s_to_f64(&f64s[4 * (n + k)..4 * (n + k) + 4])).collect();
        *self.buffer.borrow_mut() =
            Some(Generated { epoch: key[0] as usize, gen: key[1] as usize, seqs, metrics });
        Ok(())
    }
}

/// A fingerprint of the prompts' token ids (FNV-1a, 64 bits, as hex).
fn prompts_fingerprint(prompts: &[PromptRow]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in prompts {
        for v in std::iter::once(p.ids.len() as u32).chain(p.ids.iter().copied()) {
            for b in v.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    format!("{h:016x}")
}

/// This recipe's body for [`super::run::on_device`].
struct GrpoBody;

impl super::run::RecipeBody for GrpoBody {
    fn run_on<B: Backend>(be: &B, cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary> {
        run_on(be, cfg, reporter)
    }
}

/// Runs the recipe on the device the config names.
pub fn run(cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary> {
    super::run::on_device::<GrpoBody>(cfg, reporter)
}

/// Runs the recipe on `be`.
pub fn run_on<B: Backend>(be: &B, cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary> {
    run_on_with(be, cfg, reporter, None)
}

/// Runs the recipe on `be`, with `stop_after_steps` passed to the loop (tests: a killed run).
/// A reward command runs in the current folder.
pub fn run_on_with<B: Backend>(
    be: &B,
    cfg: &RecipeConfig,
    reporter: &mut dyn Reporter,
    stop_after_steps: Option<usize>,
) -> Result<Summary> {
    let s = settings(cfg);
    let Prepared { mut model, tokenizer, saver } = prepare_model(be, cfg, reporter)?;
    let mut spec = dataset_spec(cfg);
    spec.max_prompt_tokens = Some(s.max_prompt_length);
    let data = PromptDataset::load(&spec, &tokenizer).map_err(|e| Error::Input(format!("dataset: {e}")))?;
    reporter.note(&format!(
        "dataset {}: {} prompts (longest {} tokens after max_prompt_length {}; {} cut from the left)",
        cfg.dataset.source.display(),
        data.len(),
        data.rows().iter().map(|r| r.ids.len()).max().unwrap_or(0),
        s.max_prompt_length,
        data.rows().iter().filter(|r| r.truncated).count()
    ));
    let fingerprint = prompts_fingerprint(data.rows());
    if cfg.resume_from_checkpoint {
        check_resume_data(cfg, &fingerprint, reporter)?;
    }
    let rewards = RewardSet::from_config(cfg).map_err(|e| Error::Input(format!("rewards: {e}")))?;
    let plan = Plan { data_fingerprint: Some(fingerprint), stop_after_steps, ..plan(cfg) };
    let mut objective = GrpoObjective::new(
        &data,
        &rewards,
        &tokenizer,
        s,
        cfg.batch_size,
        cfg.gradient_accumulation_steps,
        cfg.shuffle,
        cfg.seed,
        Some(cfg.output_dir.clone()),
    )?;
    train_objective(be, &mut model, &mut objective, &plan, saver.as_ref(), reporter)
}
