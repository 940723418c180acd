//! The GRPO objective as TRL 1.16's `GRPOTrainer` computes it (`_compute_loss` and the advantages
//! of `_generate_and_score_completions`), for the `loss_type`s `grpo`, `bnpo`, `dr_grpo` and `dapo`
//! with token-level importance sampling (TRL's default).
//!
//! Per completion token `t` of sequence `i` with advantage `Aᵢ`:
//! `r = exp(logp − logp_old)` (`logp_old` = the log-probability when the completions were sampled;
//! without one, `r = 1` with the gradient of `exp(logp − sg(logp))`), and the token loss
//! `−min(r Aᵢ, clip(r, 1 − ε_low, 1 + ε_high) Aᵢ) + β r kₜ` with the k3 estimator
//! `kₜ = exp(ref − logp) − (ref − logp) − 1` of the KL to the reference, multiplied by the
//! (differentiable) ratio `r` as TRL 1.16 does by default (`use_bias_correction_kl`; even where
//! `r = 1` this changes the gradient: `∂(r k)/∂logp = r (k + ∂k/∂logp)`). The batch loss sums token
//! losses over the completion mask and divides by the `loss_type`'s normaliser:
//!
//! | `loss_type` | TRL (one micro-batch, `GA` accumulated micro-batches) | afinar's `denominator` |
//! |-------------|-------------------------------------------------------|------------------------|
//! | `grpo`      | mean over sequences of the per-sequence token mean, `/ GA` | `sequences · GA` (and each sequence's tokens) |
//! | `bnpo`      | `Σ / tokens of the micro-batch`, `/ GA`                | `micro tokens · GA`     |
//! | `dr_grpo`   | `Σ / (sequences · max_completion_length)`, `/ GA`      | `sequences · max_completion_length · GA` |
//! | `dapo`      | `Σ / (tokens of the generation batch · GA / steps_per_generation)` | tokens of the whole optimizer step |
//!
//! For `dapo` afinar divides by the completion tokens of the whole optimizer step (all its
//! accumulated micro-batches), which is TRL's normaliser when `steps_per_generation` equals
//! `gradient_accumulation_steps` (TRL's default) on one process. [`GrpoParams::denominator`]
//! computes these; [`grpo_loss`] takes the result as an explicit input.
//!
//! Temperature: TRL divides the logits by the sampling temperature before the log-softmax of every
//! log-probability it computes (policy, old, reference). The logits are linear in the final hidden
//! state without a bias, so [`forward_backward`] and [`per_token_logps`] scale the hidden states by
//! `1/T` before the output head (and the hidden-state gradient by `1/T` after it).
//!
//! Not covered (TRL options off by default): sequence-level importance sampling, the `cispo`,
//! `sapo`, `luspo` and `vespo` losses, vLLM importance-sampling corrections, the off-policy mask,
//! entropy masking and bonus; TRL's `entropy` metric is not computed (it needs the whole
//! distribution, which the label head does not form).
//!
//! Layout: a batch is `rows` sequences of `len` positions, row-major; one completion per row. The
//! per-token arrays (policy, old and reference log-probabilities, the mask) have `rows · len`
//! entries; the advantages one per row. In afinar's packed rows (prompt then completion), position
//! `t` holds `log p(token t+1 | tokens ..= t)`, and the mask is the positions whose label is a
//! completion token (see [`forward_backward`]).

use afinar_engine::Backend;

use crate::models::{ActivationCheckpointing, Llama, TrainBatch};
use crate::{Error, Result};

/// How token losses are normalised (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossType {
    /// `"grpo"`: the mean over sequences of each sequence's token mean.
    Grpo,
    /// `"bnpo"`: the token mean over the micro-batch.
    Bnpo,
    /// `"dr_grpo"`: the token sum over `sequences · max_completion_length` (Dr. GRPO).
    DrGrpo,
    /// `"dapo"` (TRL 1.16's default): the token sum over the completion tokens of the whole
    /// optimizer step.
    Dapo,
}

impl std::str::FromStr for LossType {
    type Err = Error;

    /// TRL's names: `grpo`, `bnpo`, `dr_grpo`, `dapo`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "grpo" => Ok(Self::Grpo),
            "bnpo" => Ok(Self::Bnpo),
            "dr_grpo" => Ok(Self::DrGrpo),
            "dapo" => Ok(Self::Dapo),
            other => Err(Error::Input(format!(
                "GRPO loss_type '{other}': expected one of grpo, bnpo, dr_grpo, dapo (TRL's cispo, sapo, luspo \
                 and vespo are not implemented)"
            ))),
        }
    }
}

impl LossType {
    /// TRL's name of this loss type.
    pub fn name(self) -> &'static str {
        match self {
            Self::Grpo => "grpo",
            Self::Bnpo => "bnpo",
            Self::DrGrpo => "dr_grpo",
            Self::Dapo => "dapo",
        }
    }
}

/// How rewards are scaled into advantages (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRewards {
    /// `"group"` / `true` (TRL's default): `(r − group mean) / (group std + 1e-4)`.
    Group,
    /// `"batch"`: `(r − group mean) / (std of the whole batch + 1e-4)`.
    Batch,
    /// `"none"` / `false` (Dr. GRPO): `r − group mean`.
    None,
}

impl std::str::FromStr for ScaleRewards {
    type Err = Error;

    /// TRL's values: `group` (or `true`), `batch`, `none` (or `false`).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "group" | "true" => Ok(Self::Group),
            "batch" => Ok(Self::Batch),
            "none" | "false" => Ok(Self::None),
            other => Err(Error::Input(format!(
                "GRPO scale_rewards '{other}': expected one of group, batch, none (or true / false)"
            ))),
        }
    }
}

/// The GRPO objective's settings, under TRL's `GRPOConfig` names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrpoParams {
    /// `epsilon`: the ratio is clipped below at `1 − epsilon_low` (TRL's default 0.2).
    pub epsilon_low: f64,
    /// `epsilon_high`: the ratio is clipped above at `1 + epsilon_high` (TRL: `epsilon` unless set;
    /// DAPO recommends 0.28).
    pub epsilon_high: f64,
    /// `delta`: two-sided GRPO's upper bound on the unclipped ratio (TRL's default: none).
    pub delta: Option<f64>,
    /// `beta`: weight of the KL penalty to the reference (TRL's default 0: no reference pass).
    pub beta: f64,
    /// `loss_type`.
    pub loss_type: LossType,
    /// `max_completion_length`: Dr. GRPO's constant (TRL's default 512).
    pub max_completion_length: usize,
    /// `temperature`: divides the logits before every log-softmax (TRL's default 1).
    pub temperature: f32,
    /// `scale_rewards`: see [`advantages`].
    pub scale_rewards: ScaleRewards,
    /// `num_iterations`: optimisation passes per generated batch (TRL's default 1). Read by the
    /// recipe: with more than one, the old log-probabilities are taken before the first pass.
    pub num_iterations: usize,
    /// `mask_truncated_completions`: completions without an end token get no loss (TRL's default
    /// off); see [`is_truncated`]. Read by the recipe when it builds the labels.
    pub mask_truncated_completions: bool,
    /// `use_bias_correction_kl`: the KL term is multiplied by the importance ratio (TRL 1.16's
    /// default on), which makes its gradient the unbiased reverse-KL gradient.
    pub use_bias_correction_kl: bool,
}

impl Default for GrpoParams {
    /// TRL 1.16's `GRPOConfig` defaults.
    fn default() -> Self {
        Self {
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            delta: None,
            beta: 0.0,
            loss_type: LossType::Dapo,
            max_completion_length: 512,
            temperature: 1.0,
            scale_rewards: ScaleRewards::Group,
            num_iterations: 1,
            mask_truncated_completions: false,
            use_bias_correction_kl: true,
        }
    }
}

impl GrpoParams {
    /// Errors unless the settings are usable: epsilons in `[0, 1)` / `≥ 0`, finite `beta ≥ 0`,
    /// `delta > 1 + epsilon_high` when set, a positive temperature, completion length and
    /// iteration count.
    pub fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Input(format!("GRPO: {what}")));
        if !(self.epsilon_low.is_finite() && (0.0..1.0).contains(&self.epsilon_low)) {
            return bad(&format!("epsilon must be in [0, 1), got {}", self.epsilon_low));
        }
        if !(self.epsilon_high.is_finite() && self.epsilon_high >= 0.0) {
            return bad(&format!("epsilon_high must be a number ≥ 0, got {}", self.epsilon_high));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return bad(&format!("beta must be a number ≥ 0, got {}", self.beta));
        }
        if let Some(d) = self.delta {
            if !(d.is_finite() && d > 1.0 + self.epsilon_high) {
                return bad(&format!("delta must be greater than 1 + epsilon_high, got {d}"));
            }
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(&format!("temperature must be a positive number, got {}", self.temperature));
        }
        if self.max_completion_length == 0 {
            return bad("max_completion_length must be at least 1");
        }
        if self.num_iterations == 0 {
            return bad("num_iterations must be at least 1");
        }
        Ok(())
    }

    /// The normaliser [`grpo_loss`] divides by, as TRL's for this `loss_type` (see the module
    /// table): `sequences` and `tokens` of this micro-batch (all its rows, masked ones included;
    /// its unmasked completion tokens), `step_tokens` the unmasked completion tokens of the whole
    /// optimizer step, `accumulation` the micro-batches of that step.
    pub fn denominator(
        &self,
        sequences: usize,
        tokens: usize,
        step_tokens: usize,
        accumulation: usize,
    ) -> f64 {
        let ga = accumulation.max(1) as f64;
        match self.loss_type {
            LossType::Grpo => sequences as f64 * ga,
            LossType::Bnpo => tokens.max(1) as f64 * ga,
            LossType::DrGrpo => (sequences * self.max_completion_length) as f64 * ga,
            LossType::Dapo => step_tokens.max(1) as f64,
        }
    }
}

/// Whether a completion was cut at the length limit: its last token is neither an end token nor
/// padding (`stop`, TRL's `eos_token_ids + [pad_token_id]`). An empty completion counts as
/// truncated.
pub fn is_truncated(completion: &[u32], stop: &[u32]) -> bool {
    completion.last().is_none_or(|t| !stop.contains(t))
}

fn check_rewards(rewards: &[f32], group: usize) -> Result<()> {
    if group == 0 || rewards.is_empty() || !rewards.len().is_multiple_of(group) {
        return Err(Error::Input(format!(
            "GRPO advantages: {} rewards do not make whole groups of {group} completions",
            rewards.len()
        )));
    }
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        return Err(Error::Input(format!(
            "GRPO advantages: reward of completion {i} (group {}) is not finite",
            i / group
        )));
    }
    Ok(())
}

/// Mean and Bessel-corrected standard deviation (0 for a single value), as TRL's `nanstd`.
fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// The per-group reward standard deviations TRL scales by (one per completion), or, for
/// [`ScaleRewards::None`], those it only logs.
fn reward_stds(rewards: &[f32], group: usize, scale: ScaleRewards) -> Vec<f64> {
    match scale {
        ScaleRewards::Group | ScaleRewards::None => {
            rewards.chunks(group).flat_map(|g| std::iter::repeat_n(mean_std(g).1, group)).collect()
        }
        ScaleRewards::Batch => vec![mean_std(rewards).1; rewards.len()],
    }
}

/// TRL's advantages of consecutive groups of `group` completions of the same prompt (its
/// `sum_then_normalize` aggregation of already weighted and summed rewards):
/// `r − mean of the group`, divided by `std + 1e-4` where the std (with Bessel's correction; 0 for
/// one value) is the group's ([`ScaleRewards::Group`]) or the whole batch's
/// ([`ScaleRewards::Batch`]); not divided for [`ScaleRewards::None`] (Dr. GRPO).
pub fn advantages(rewards: &[f32], group: usize, scale: ScaleRewards) -> Result<Vec<f32>> {
    check_rewards(rewards, group)?;
    let stds = reward_stds(rewards, group, scale);
    Ok(rewards
        .chunks(group)
        .enumerate()
        .flat_map(|(g, rs)| {
            let mean = mean_std(rs).0;
            let stds = &stds;
            rs.iter().enumerate().map(move |(j, &r)| {
                let a = f64::from(r) - mean;
                match scale {
                    ScaleRewards::None => a as f32,
                    _ => (a / (stds[g * group + j] + 1e-4)) as f32,
                }
            })
        })
        .collect())
}

/// TRL's `frac_reward_zero_std`: the share of completions whose reward std (the group's, or the
/// batch's for [`ScaleRewards::Batch`]) is zero (within 1e-8).
pub fn frac_reward_zero_std(rewards: &[f32], group: usize, scale: ScaleRewards) -> Result<f64> {
    check_rewards(rewards, group)?;
    let stds = reward_stds(rewards, group, scale);
    Ok(stds.iter().filter(|s| s.abs() <= 1e-8).count() as f64 / stds.len() as f64)
}

/// The per-token inputs of [`grpo_loss`]: `rows` sequences of `len` positions, row-major.
#[derive(Debug, Clone, Copy)]
pub struct TokenBatch<'a> {
    /// Sequences (one completion each).
    pub rows: usize,
    /// Positions per sequence.
    pub len: usize,
    /// The policy's log-probabilities `[rows · len]` (the values the loss differentiates).
    pub logps: &'a [f32],
    /// The log-probabilities when the completions were sampled `[rows · len]`; `None`: the policy's
    /// own, detached (ratio 1, TRL's single-iteration case).
    pub old_logps: Option<&'a [f32]>,
    /// The reference's log-probabilities `[rows · len]`; needed when `beta ≠ 0`, ignored otherwise.
    pub ref_logps: Option<&'a [f32]>,
    /// Which positions count `[rows · len]` (completion tokens of completions not masked out).
    pub mask: &'a [bool],
    /// One advantage per sequence `[rows]`.
    pub advantages: &'a [f32],
}

/// What [`grpo_loss`] returns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GrpoOutput {
    /// The loss of the batch (TRL's `loss`, already divided by the denominator).
    pub loss: f64,
    /// `∂loss/∂logp` per position `[rows · len]` (0 where the mask is off).
    pub d_logps: Vec<f32>,
    /// Positions the mask counts.
    pub tokens: usize,
    /// TRL's `kl`: the token mean of the k3 estimator, times the ratio with
    /// `use_bias_correction_kl` (only when `beta ≠ 0`, as TRL logs it).
    pub kl: Option<f64>,
    /// `clip_ratio/low_mean`: share of tokens with `r < 1 − ε_low` and a negative advantage.
    pub clip_low_mean: f64,
    /// `clip_ratio/high_mean`: share of tokens with `r > 1 + ε_high` and a positive advantage.
    pub clip_high_mean: f64,
    /// `clip_ratio/region_mean`: share of tokens clipped either way.
    pub clip_region_mean: f64,
    /// `clip_ratio/low_min`: the least per-sequence share of low-clipped tokens (over sequences with
    /// tokens; NaN without any).
    pub clip_low_min: f64,
    /// `clip_ratio/high_max`: the greatest per-sequence share of high-clipped tokens.
    pub clip_high_max: f64,
}

impl GrpoOutput {
    /// TRL's metrics of this batch under TRL's names (`kl` only when `beta ≠ 0`).
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        let mut m = Vec::with_capacity(6);
        if let Some(kl) = self.kl {
            m.push(("kl", kl));
        }
        m.extend([
            ("clip_ratio/low_mean", self.clip_low_mean),
            ("clip_ratio/high_mean", self.clip_high_mean),
            ("clip_ratio/region_mean", self.clip_region_mean),
            ("clip_ratio/low_min", self.clip_low_min),
            ("clip_ratio/high_max", self.clip_high_max),
        ]);
        m
    }

    /// The metric named `name`, if reported.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics().into_iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

fn check_batch(b: &TokenBatch<'_>, p: &GrpoParams, denominator: f64) -> Result<()> {
    let n = b.rows * b.len;
    let len_err = |what: &str, got: usize, want: usize| {
        Err(Error::Input(format!(
            "GRPO loss: {what} has {got} entries, expected {want} ({} sequences × {} positions)",
            b.rows, b.len
        )))
    };
    if n == 0 {
        return Err(Error::Input(format!(
            "GRPO loss: empty batch ({} sequences × {} positions)",
            b.rows, b.len
        )));
    }
    if b.logps.len() != n {
        return len_err("logps", b.logps.len(), n);
    }
    if b.mask.len() != n {
        return len_err("mask", b.mask.len(), n);
    }
    if let Some(o) = b.old_logps {
        if o.len() != n {
            return len_err("old_logps", o.len(), n);
        }
    }
    if p.beta != 0.0 {
        match b.ref_logps {
            None => {
                return Err(Error::Input(format!(
                    "GRPO loss: beta is {} but no reference log-probabilities were given",
                    p.beta
                )))
            }
            Some(r) if r.len() != n => return len_err("ref_logps", r.len(), n),
            Some(_) => {}
        }
    }
    if b.advantages.len() != b.rows {
        return Err(Error::Input(format!(
            "GRPO loss: {} advantages for {} sequences",
            b.advantages.len(),
            b.rows
        )));
    }
    if let Some(i) = b.advantages.iter().position(|a| !a.is_finite()) {
        return Err(Error::Input(format!("GRPO loss: advantage of sequence {i} is not finite")));
    }
    if !(denominator.is_finite() && denominator > 0.0) {
        return Err(Error::Input(format!("GRPO loss: the denominator must be positive, got {denominator}")));
    }
    let arrays = [
        ("logps", Some(b.logps)),
        ("old_logps", b.old_logps),
        ("ref_logps", b.ref_logps.filter(|_| p.beta != 0.0)),
    ];
    for (what, a) in arrays {
        if let Some(a) = a {
            if let Some(t) = (0..n).find(|&t| b.mask[t] && !a[t].is_finite()) {
                return Err(Error::Input(format!(
                    "GRPO loss: {what} of sequence {} position {} is not finite",
                    t / b.len,
                    t % b.len
                )));
            }
        }
    }
    Ok(())
}

/// The GRPO loss of a batch as TRL's `_compute_loss` (token-level importance sampling), divided by
/// `denominator` ([`GrpoParams::denominator`]; for `grpo` each sequence's token sum is first
/// divided by its own token count), with its gradient with respect to every policy
/// log-probability and TRL's metrics. Masked positions contribute nothing and get a zero gradient.
pub fn grpo_loss(p: &GrpoParams, b: &TokenBatch<'_>, denominator: f64) -> Result<GrpoOutput> {
    p.check()?;
    check_batch(b, p, denominator)?;
    let (lo, hi) = (1.0 - p.epsilon_low, 1.0 + p.epsilon_high);
    let n = b.rows * b.len;
    let mut out = GrpoOutput { d_logps: vec![0.0; n], ..Default::default() };
    let (mut kl_sum, mut low, mut high) = (0.0, 0usize, 0usize);
    let (mut low_min, mut high_max) = (f64::NAN, f64::NAN);
    for r in 0..b.rows {
        let row = r * b.len..(r + 1) * b.len;
        let count = b.mask[row.clone()].iter().filter(|&&m| m).count();
        let w = match p.loss_type {
            LossType::Grpo => 1.0 / (count.max(1) as f64 * denominator),
            _ => 1.0 / denominator,
        };
        let a = f64::from(b.advantages[r]);
        let (mut row_low, mut row_high) = (0usize, 0usize);
        for t in row {
            if !b.mask[t] {
                continue;
            }
            let lp = f64::from(b.logps[t]);
            let old = b.old_logps.map_or(lp, |o| f64::from(o[t]));
            let c1 = (lp - old).exp();
            // ∂c/∂logp of each branch: c1 itself where the clamp passes it, else 0.
            let c2 = c1.clamp(lo, hi);
            let g2 = if (lo..=hi).contains(&c1) { c1 } else { 0.0 };
            let (c1d, g1) = match p.delta {
                Some(d) if c1 > d => (d, 0.0),
                _ => (c1, c1),
            };
            let (l1, l2) = (c1d * a, c2 * a);
            let (mut loss, mut grad) = if l1 < l2 {
                (-l1, -a * g1)
            } else if l2 < l1 {
                (-l2, -a * g2)
            } else {
                // torch.min splits the gradient of a tie evenly.
                (-l1, -a * 0.5 * (g1 + g2))
            };
            if p.beta != 0.0 {
                let x = f64::from(b.ref_logps.expect("checked")[t]) - lp;
                let (mut kl, mut dkl) = (x.exp() - x - 1.0, 1.0 - x.exp());
                if p.use_bias_correction_kl {
                    // (r k)' = r' k + r k' with r' = r.
                    (kl, dkl) = (c1 * kl, c1 * (kl + dkl));
                }
                kl_sum += kl;
                loss += p.beta * kl;
                grad += p.beta * dkl;
            }
            let is_low = c1d < lo && a < 0.0;
            let is_high = c1d > hi && a > 0.0;
            row_low += usize::from(is_low);
            row_high += usize::from(is_high);
            out.loss += loss * w;
            out.d_logps[t] = (grad * w) as f32;
        }
        if count > 0 {
            let (fl, fh) = (row_low as f64 / count as f64, row_high as f64 / count as f64);
            low_min = if low_min.is_nan() { fl } else { low_min.min(fl) };
            high_max = if high_max.is_nan() { fh } else { high_max.max(fh) };
        }
        low += row_low;
        high += row_high;
        out.tokens += count;
    }
    let per_token = 1.0 / out.tokens.max(1) as f64;
    out.kl = (p.beta != 0.0).then_some(kl_sum * per_token);
    out.clip_low_mean = low as f64 * per_token;
    out.clip_high_mean = high as f64 * per_token;
    // A token is clipped low only with a negative advantage and high only with a positive one.
    out.clip_region_mean = (low + high) as f64 * per_token;
    out.clip_low_min = low_min;
    out.clip_high_max = high_max;
    Ok(out)
}

/// One GRPO micro-batch for [`forward_backward`]: packed rows of prompt then completion, one
/// completion per row.
pub struct GrpoBatch<'a> {
    /// The rows: `labels` are the completion tokens (next-token targets: the label at position
    /// `t` is token `t + 1`) and -100 elsewhere (prompts, padding, and completions masked out,
    /// e.g. truncated ones); the loss mask is `labels != -100`.
    pub batch: TrainBatch<'a>,
    /// [`per_token_logps`] of the same rows when the completions were sampled (`num_iterations >
    /// 1`); `None`: ratio 1.
    pub old_logps: Option<&'a [f32]>,
    /// [`per_token_logps`] of the same rows under the reference (e.g. inside
    /// [`Llama::without_adapters`]); needed iff `beta ≠ 0`.
    pub ref_logps: Option<&'a [f32]>,
    /// One advantage per row ([`advantages`]).
    pub advantages: &'a [f32],
}

/// Scales the first `rows · dim` values of `h` by `1 / temperature` (nothing at 1).
fn scale_by_temperature<B: Backend>(be: &B, h: &mut B::Buf, n: usize, temperature: f32) -> Result<()> {
    if temperature != 1.0 {
        be.scale(h, n, 1.0 / temperature)?;
    }
    Ok(())
}

/// Forward only, no gradients: the log-probability of every label of `batch` under `model` as it
/// is, `log softmax(hidden · Wᵀ / temperature)[label]` per position (`[batch · seq]`, 0 where the
/// label is -100). For the old log-probabilities (before the first pass of a generated batch) and
/// the reference's (inside [`Llama::without_adapters`]).
pub fn per_token_logps<B: Backend>(
    be: &B,
    model: &Llama<B>,
    batch: &TrainBatch<'_>,
    temperature: f32,
) -> Result<Vec<f32>> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Input(format!("GRPO: temperature must be a positive number, got {temperature}")));
    }
    let rows = batch.batch * batch.seq;
    let n = rows * model.config.dim;
    let mut h = be.zeros(n)?;
    model.hidden_states(be, batch, &mut h)?;
    scale_by_temperature(be, &mut h, n, temperature)?;
    model.label_log_probs(be, &h, batch.labels, rows)
}

/// Forward and backward of one GRPO micro-batch: `forward_hidden` → (hidden / T) →
/// `label_log_probs` → [`grpo_loss`] (divided by `denominator`, see [`GrpoParams::denominator`])
/// → `label_log_probs_backward` → `backward_hidden`. The gradients of the trainable tensors
/// accumulate, multiplied by `grad_scale` (1 when `denominator` already covers the step). Returns
/// the loss and metrics of the micro-batch (the loss not multiplied by `grad_scale`).
pub fn forward_backward<B: Backend>(
    be: &B,
    model: &mut Llama<B>,
    b: &GrpoBatch<'_>,
    params: &GrpoParams,
    denominator: f64,
    grad_scale: f32,
    checkpointing: ActivationCheckpointing,
) -> Result<GrpoOutput> {
    params.check()?;
    let tb = &b.batch;
    let rows = tb.batch * tb.seq;
    let mask: Vec<bool> = tb.labels.iter().map(|&l| l != -100).collect();
    let n = rows * model.config.dim;
    let mut hidden = be.zeros(n)?;
    model.forward_hidden(be, tb, checkpointing, &mut hidden)?;
    scale_by_temperature(be, &mut hidden, n, params.temperature)?;
    let logps = model.label_log_probs(be, &hidden, tb.labels, rows)?;
    let tokens = TokenBatch {
        rows: tb.batch,
        len: tb.seq,
        logps: &logps,
        old_logps: b.old_logps,
        ref_logps: b.ref_logps,
        mask: &mask,
        advantages: b.advantages,
    };
    let out = grpo_loss(params, &tokens, denominator)?;
    let upstream: Vec<f32> = out.d_logps.iter().map(|&g| g * grad_scale).collect();
    let mut dhidden = be.zeros(n)?;
    model.label_log_probs_backward(be, &hidden, tb.labels, rows, &upstream, &mut dhidden)?;
    // ∂L/∂h = ∂L/∂(h/T) / T.
    scale_by_temperature(be, &mut dhidden, n, params.temperature)?;
    model.backward_hidden(be, tb, checkpointing, &dhidden)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small batch: 3 sequences × 4 positions, the last position of each and all of row 2's
    /// second half masked out.
    struct Case {
        logps: Vec<f32>,
        old: Vec<f32>,
        reference: Vec<f32>,
        mask: Vec<bool>,
        adv: Vec<f32>,
    }

    fn case() -> Case {
        Case {
            logps: vec![-1.2, -0.4, -2.0, -0.7, -0.9, -1.5, -0.3, -2.2, -0.6, -1.1, -0.8, -1.9],
            // Ratios exp(logp − old) spread over the clipping regions.
            old: vec![-1.0, -0.9, -1.6, -0.7, -1.3, -1.2, -0.32, -2.2, -0.4, -1.0, -0.5, -1.9],
            reference: vec![-1.1, -0.6, -1.8, -0.2, -1.0, -1.4, -0.5, -2.0, -0.7, -1.3, -0.9, -1.0],
            mask: vec![true, true, true, false, true, true, true, false, true, true, false, false],
            adv: vec![0.8, -1.1, 0.3],
        }
    }

    fn batch<'a>(c: &'a Case, logps: &'a [f32], old: bool) -> TokenBatch<'a> {
        TokenBatch {
            rows: 3,
            len: 4,
            logps,
            old_logps: old.then_some(&c.old[..]),
            ref_logps: Some(&c.reference),
            mask: &c.mask,
            advantages: &c.adv,
        }
    }

    fn params(loss_type: LossType, beta: f64) -> GrpoParams {
        GrpoParams {
            loss_type,
            beta,
            epsilon_low: 0.2,
            epsilon_high: 0.28,
            max_completion_length: 4,
            ..Default::default()
        }
    }

    #[test]
    fn gradient_matches_finite_differences_for_every_loss_type() {
        let c = case();
        for lt in [LossType::Grpo, LossType::Bnpo, LossType::DrGrpo, LossType::Dapo] {
            for beta in [0.0, 0.04] {
                for (delta, bias) in [(None, true), (Some(1.35), true), (None, false)] {
                    let p = GrpoParams { delta, use_bias_correction_kl: bias, ..params(lt, beta) };
                    let denom = p.denominator(3, 7, 9, 1);
                    let out = grpo_loss(&p, &batch(&c, &c.logps, true), denom).unwrap();
                    for t in 0..12 {
                        let h = 1e-3f32;
                        let f = |d: f32| {
                            let mut l = c.logps.clone();
                            l[t] += d;
                            grpo_loss(&p, &batch(&c, &l, true), denom).unwrap().loss
                        };
                        let fd = (f(h) - f(-h)) / (2.0 * f64::from(h));
                        let g = f64::from(out.d_logps[t]);
                        assert!(
                            (g - fd).abs() <= 1e-3 * fd.abs().max(1e-2),
                            "{lt:?} beta {beta} delta {delta:?} bias {bias} position {t}: gradient {g} vs finite difference {fd}"
                        );
                        if !c.mask[t] {
                            assert_eq!(out.d_logps[t], 0.0, "{lt:?}: masked position {t} has a gradient");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn without_old_logps_the_ratio_is_one_and_the_gradient_is_minus_the_advantage() {
        let c = case();
        let p = params(LossType::Dapo, 0.0);
        let out = grpo_loss(&p, &batch(&c, &c.logps, false), 7.0).unwrap();
        let want = -(0.8 * 3.0 - 1.1 * 3.0 + 0.3 * 2.0) / 7.0;
        assert!((out.loss - want).abs() < 1e-8, "loss {} vs {want}", out.loss);
        for t in 0..12 {
            let want = if c.mask[t] { -c.adv[t / 4] / 7.0 } else { 0.0 };
            assert!((out.d_logps[t] - want).abs() < 1e-7, "position {t}: {} vs {want}", out.d_logps[t]);
        }
        assert_eq!((out.clip_low_mean, out.clip_high_mean, out.clip_region_mean), (0.0, 0.0, 0.0));
        assert_eq!(out.kl, None);
        assert_eq!(out.tokens, 8);
    }

    #[test]
    fn clipped_tokens_get_no_policy_gradient_and_are_counted() {
        // Row 0 (A > 0): ratios e^-0.2 (inside), e^0.5 (above 1.28: clipped), e^-0.4 (below, but
        // only a negative advantage clips low). Row 1 (A < 0): e^0.4 (above: not clipped for A < 0),
        // e^-0.3 (below 0.8: clipped), e^0.02 (inside).
        let c = case();
        let p = params(LossType::Dapo, 0.0);
        let out = grpo_loss(&p, &batch(&c, &c.logps, true), 1.0).unwrap();
        let ratio = |t: usize| f64::from(c.logps[t] - c.old[t]).exp();
        let expect = |t: usize, clipped: bool| {
            let a = f64::from(c.adv[t / 4]);
            let want = if clipped { 0.0 } else { -a * ratio(t) };
            let got = f64::from(out.d_logps[t]);
            assert!((got - want).abs() < 1e-6, "position {t}: gradient {got}, expected {want}");
        };
        expect(0, false);
        expect(1, true);
        expect(2, false);
        expect(4, false);
        expect(5, true);
        expect(6, false);
        // Clipped: position 1 (high), 5 (low) of 8 tokens; row 2: ratios e^-0.2 and e^-0.1, A > 0: none.
        assert!((out.clip_high_mean - 1.0 / 8.0).abs() < 1e-8, "{}", out.clip_high_mean);
        assert!((out.clip_low_mean - 1.0 / 8.0).abs() < 1e-8, "{}", out.clip_low_mean);
        assert!((out.clip_region_mean - 2.0 / 8.0).abs() < 1e-8, "{}", out.clip_region_mean);
        assert_eq!(out.clip_low_min, 0.0);
        assert!((out.clip_high_max - 1.0 / 3.0).abs() < 1e-8);
        // The clipped branch's loss value: −clip(r) A.
        let l1 = -(1.28 * 0.8);
        let row0 = -(ratio(0) * 0.8) + l1 - ratio(2) * 0.8;
        let row1 = -(ratio(4) * -1.1) - (0.8 * -1.1) - ratio(6) * -1.1;
        let row2 = -(ratio(8) + ratio(9)) * 0.3;
        assert!((out.loss - (row0 + row1 + row2)).abs() < 1e-6, "loss {}", out.loss);
    }

    #[test]
    fn kl_is_the_k3_estimator_mean() {
        let c = case();
        let out = grpo_loss(&params(LossType::Bnpo, 0.04), &batch(&c, &c.logps, false), 7.0).unwrap();
        let mut want = 0.0;
        for t in (0..12).filter(|&t| c.mask[t]) {
            let x = f64::from(c.reference[t] - c.logps[t]);
            want += x.exp() - x - 1.0;
        }
        let kl = out.kl.unwrap();
        assert!((kl - want / 8.0).abs() < 1e-9, "kl {kl} vs {}", want / 8.0);
        assert_eq!(out.metric("kl"), Some(kl));
        // With old log-probabilities: the ratio weighs each token's k3 (TRL's default), or not.
        for bias in [true, false] {
            let p = GrpoParams { use_bias_correction_kl: bias, ..params(LossType::Bnpo, 0.04) };
            let kl = grpo_loss(&p, &batch(&c, &c.logps, true), 7.0).unwrap().kl.unwrap();
            let mut want = 0.0;
            for t in (0..12).filter(|&t| c.mask[t]) {
                let x = f64::from(c.reference[t] - c.logps[t]);
                let r = if bias { f64::from(c.logps[t] - c.old[t]).exp() } else { 1.0 };
                want += r * (x.exp() - x - 1.0);
            }
            assert!((kl - want / 8.0).abs() < 1e-9, "bias {bias}: kl {kl} vs {}", want / 8.0);
        }
    }

    #[test]
    fn normalisers_follow_trl() {
        let c = case();
        let b = batch(&c, &c.logps, false);
        // Without old log-probs and beta the token loss is −A: the normalisers are visible.
        let sums = [-0.8 * 3.0, 1.1 * 3.0, -0.3 * 2.0];
        let counts = [3.0, 3.0, 2.0];
        let grpo = params(LossType::Grpo, 0.0);
        let got = grpo_loss(&grpo, &b, grpo.denominator(3, 8, 0, 2)).unwrap().loss;
        let want = sums.iter().zip(counts).map(|(s, n)| s / n).sum::<f64>() / 3.0 / 2.0;
        assert!((got - want).abs() < 1e-8, "grpo {got} vs {want}");
        let bnpo = params(LossType::Bnpo, 0.0);
        let got = grpo_loss(&bnpo, &b, bnpo.denominator(3, 8, 0, 2)).unwrap().loss;
        assert!((got - sums.iter().sum::<f64>() / 16.0).abs() < 1e-8, "bnpo {got}");
        let dr = params(LossType::DrGrpo, 0.0);
        let got = grpo_loss(&dr, &b, dr.denominator(3, 8, 0, 2)).unwrap().loss;
        assert!((got - sums.iter().sum::<f64>() / (3.0 * 4.0 * 2.0)).abs() < 1e-8, "dr_grpo {got}");
        let dapo = params(LossType::Dapo, 0.0);
        let got = grpo_loss(&dapo, &b, dapo.denominator(3, 8, 20, 2)).unwrap().loss;
        assert!((got - sums.iter().sum::<f64>() / 20.0).abs() < 1e-8, "dapo {got}");
    }

    #[test]
    fn advantages_as_trl() {
        let r = [1.0f32, 0.0, 0.5, 2.0, 2.0, 2.0];
        let g = advantages(&r, 3, ScaleRewards::Group).unwrap();
        // Group 1: mean 0.5, std (Bessel) 0.5; group 2: std 0.
        let want = [0.5 / 0.5001, -0.5 / 0.5001, 0.0, 0.0, 0.0, 0.0];
        for (a, w) in g.iter().zip(want) {
            assert!((f64::from(*a) - w).abs() < 1e-6, "{g:?}");
        }
        let n = advantages(&r, 3, ScaleRewards::None).unwrap();
        assert_eq!(n, vec![0.5, -0.5, 0.0, 0.0, 0.0, 0.0]);
        let b = advantages(&r, 3, ScaleRewards::Batch).unwrap();
        let (_, std) = mean_std(&r);
        assert!((f64::from(b[0]) - 0.5 / (std + 1e-4)).abs() < 1e-6, "{b:?}");
        assert_eq!(frac_reward_zero_std(&r, 3, ScaleRewards::Group).unwrap(), 0.5);
        assert_eq!(frac_reward_zero_std(&r, 3, ScaleRewards::Batch).unwrap(), 0.0);
        assert_eq!(advantages(&[3.0], 1, ScaleRewards::Group).unwrap(), vec![0.0]);
    }

    #[test]
    fn bad_inputs_are_named_errors() {
        let c = case();
        let p = params(LossType::Dapo, 0.04);
        let err = |b: TokenBatch<'_>, p: &GrpoParams| grpo_loss(p, &b, 7.0).unwrap_err().to_string();
        let short = &c.logps[..11];
        assert!(err(batch(&c, short, true), &p).contains("logps has 11 entries, expected 12"));
        let mut b = batch(&c, &c.logps, true);
        b.old_logps = Some(&c.old[..5]);
        assert!(err(b, &p).contains("old_logps has 5 entries"));
        let mut b = batch(&c, &c.logps, true);
        b.ref_logps = None;
        assert!(err(b, &p).contains("no reference log-probabilities"));
        let mut b = batch(&c, &c.logps, true);
        b.ref_logps = Some(&c.reference[..3]);
        assert!(err(b, &p).contains("ref_logps has 3 entries"));
        let mut b = batch(&c, &c.logps, true);
        b.mask = &c.mask[..4];
        assert!(err(b, &p).contains("mask has 4 entries"));
        let mut b = batch(&c, &c.logps, true);
        b.advantages = &c.adv[..2];
        assert!(err(b, &p).contains("2 advantages for 3 sequences"));
        let mut nan = c.logps.clone();
        nan[5] = f32::NAN;
        assert!(err(batch(&c, &nan, true), &p).contains("logps of sequence 1 position 1 is not finite"));
        // A masked NaN is ignored (padding may hold anything).
        nan[5] = -1.0;
        nan[3] = f32::NAN;
        assert!(grpo_loss(&p, &batch(&c, &nan, true), 7.0).is_ok());
        assert!(grpo_loss(&p, &batch(&c, &c.logps, true), 0.0)
            .unwrap_err()
            .to_string()
            .contains("denominator"));
        let bad = GrpoParams { epsilon_low: 1.5, ..p };
        assert!(err(batch(&c, &c.logps, true), &bad).contains("epsilon must be in [0, 1)"));
        assert!(advantages(&[1.0, 2.0, 3.0], 2, ScaleRewards::Group)
            .unwrap_err()
            .to_string()
            .contains("groups of 2"));
        assert!(advantages(&[1.0, f32::NAN], 2, ScaleRewards::Group)
            .unwrap_err()
            .to_string()
            .contains("completion 1 (group 0) is not finite"));
        assert!("ppo".parse::<LossType>().unwrap_err().to_string().contains("expected one of grpo, bnpo"));
        assert_eq!("dr_grpo".parse::<LossType>().unwrap(), LossType::DrGrpo);
        assert_eq!("false".parse::<ScaleRewards>().unwrap(), ScaleRewards::None);
        assert!("mean".parse::<ScaleRewards>().is_err());
        assert!(is_truncated(&[5, 6, 7], &[2, 0]));
        assert!(!is_truncated(&[5, 6, 2], &[2, 0]));
    }
}
