//! Preference losses over pairs (chosen, rejected) of completions of the same prompt, as TRL 1.16
//! computes them: DPO's `sigmoid`, `ipo` and `hinge` (`DPOTrainer`), SimPO (`CPOTrainer` with
//! `loss_type="simpo"`) and ORPO (`ORPOTrainer`). Each is a pure function of per-sequence summed
//! log-probabilities and token counts; it returns the loss (a mean over pairs), its gradient with
//! respect to every sequence's summed log-probability (and, for the NLL terms, to each counted
//! token's log-probability), and TRL's logged metrics under TRL's names.
//!
//! Conventions (TRL's): the log-probability of a sequence is the sum over its completion tokens
//! of `log p(token | prefix)`; `beta` scales rewards; DPO's reward is `β (ℓθ − ℓref)`, SimPO's and
//! ORPO's `β ℓ̄` with `ℓ̄` the mean over completion tokens. DPO `sigmoid` ignores label smoothing
//! since TRL 0.29 (the smoothed form is `robust`, not implemented here).

use crate::{Error, Result};

/// Per-sequence summed completion log-probabilities and completion token counts of a batch of
/// pairs: row `i` of `chosen` and of `rejected` complete the same prompt.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SequenceLogps {
    /// `Σ_t log p` over each chosen completion.
    pub chosen: Vec<f64>,
    /// `Σ_t log p` over each rejected completion.
    pub rejected: Vec<f64>,
    /// Completion tokens of each chosen sequence.
    pub chosen_tokens: Vec<usize>,
    /// Completion tokens of each rejected sequence.
    pub rejected_tokens: Vec<usize>,
}

impl SequenceLogps {
    /// Pairs in the batch.
    pub fn pairs(&self) -> usize {
        self.chosen.len()
    }

    /// Checks that the four vectors have one entry per pair, at least one pair, and finite
    /// log-probabilities; `what` names the set in the error.
    fn check(&self, what: &str) -> Result<()> {
        let n = self.chosen.len();
        if n == 0
            || self.rejected.len() != n
            || self.chosen_tokens.len() != n
            || self.rejected_tokens.len() != n
        {
            return Err(Error::Input(format!(
                "{what} log-probabilities: {} chosen, {} rejected, {} chosen token counts, {} rejected token \
                 counts; expected the same number of pairs (at least one) in each",
                n,
                self.rejected.len(),
                self.chosen_tokens.len(),
                self.rejected_tokens.len()
            )));
        }
        if let Some(i) = self.chosen.iter().chain(&self.rejected).position(|v| !v.is_finite()) {
            return Err(Error::Input(format!("{what} log-probability of sequence {i} is not finite")));
        }
        Ok(())
    }

    /// Means over completion tokens (`ℓ / max(n, 1)`), chosen then rejected.
    fn means(&self) -> (Vec<f64>, Vec<f64>) {
        let mean = |l: &[f64], n: &[usize]| l.iter().zip(n).map(|(l, &n)| l / n.max(1) as f64).collect();
        (mean(&self.chosen, &self.chosen_tokens), mean(&self.rejected, &self.rejected_tokens))
    }
}

/// A sum of token log-probabilities and the number of tokens in it (an NLL term's input).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TokenSum {
    /// `Σ log p` over the tokens.
    pub logp_sum: f64,
    /// Number of tokens.
    pub tokens: usize,
}

/// What a preference loss returns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PreferenceOutput {
    /// The loss of the batch (mean over pairs, plus any NLL term).
    pub loss: f64,
    /// `∂loss/∂ℓ` for each chosen sequence's summed completion log-probability.
    pub d_chosen: Vec<f64>,
    /// `∂loss/∂ℓ` for each rejected sequence's summed completion log-probability.
    pub d_rejected: Vec<f64>,
    /// `∂loss/∂log p` of each token counted by a separate NLL term (the same for all of them; 0
    /// without one): ORPO's, over the chosen rows' prompts and completions. SimPO's NLL tokens
    /// are the chosen completions themselves, so its NLL gradient is already in `d_chosen`.
    pub d_nll_token: f64,
    /// TRL's metrics for the batch, by TRL's names (`rewards/chosen`, `logps/chosen`, ...).
    pub metrics: Vec<(&'static str, f64)>,
}

impl PreferenceOutput {
    /// The metric named `name`, if this loss reports it.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }
}

/// The DPO-family losses of TRL's `DPOTrainer` (`loss_type`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DpoLoss {
    /// `−log σ(β d)`, `d = (ℓθc − ℓrefc) − (ℓθr − ℓrefr)`.
    Sigmoid,
    /// `(Δc/nc − Δr/nr − 1/(2β))²` with `Δ = ℓθ − ℓref` and `n` the completion tokens (≥ 1).
    Ipo,
    /// `max(0, 1 − β d)`.
    Hinge,
}

/// `log σ(x)`, stable for large `|x|`.
fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// `σ(x)`, stable for large `|x|`.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn mean(v: impl IntoIterator<Item = f64>) -> f64 {
    let (s, n) = v.into_iter().fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    s / n.max(1) as f64
}

fn check_beta(beta: f64) -> Result<()> {
    if !(beta.is_finite() && beta > 0.0) {
        return Err(Error::Input(format!("preference loss: beta must be a positive number, got {beta}")));
    }
    Ok(())
}

/// TRL's reward metrics from per-pair chosen and rejected rewards.
fn reward_metrics(rc: &[f64], rr: &[f64]) -> Vec<(&'static str, f64)> {
    vec![
        ("rewards/chosen", mean(rc.iter().copied())),
        ("rewards/rejected", mean(rr.iter().copied())),
        ("rewards/accuracies", mean(rc.iter().zip(rr).map(|(c, r)| f64::from(u8::from(c > r))))),
        ("rewards/margins", mean(rc.iter().zip(rr).map(|(c, r)| c - r))),
    ]
}

/// DPO (`DPOTrainer`, reverse-KL f-divergence, one loss type of weight 1): the loss from the
/// policy's and the frozen reference's summed completion log-probabilities, its gradient with
/// respect to the policy's, and the metrics `rewards/{chosen,rejected,accuracies,margins}`
/// (reward = `β (ℓθ − ℓref)`) and `logps/{chosen,rejected}` (mean summed policy log-probability).
pub fn dpo(
    kind: DpoLoss,
    beta: f64,
    policy: &SequenceLogps,
    reference: &SequenceLogps,
) -> Result<PreferenceOutput> {
    dpo_smoothed(kind, beta, 0.0, policy, reference)
}

/// [`dpo`] with TRL's `label_smoothing` `ε` in `[0, 0.5)` (the conservative DPO of `DPOTrainer`):
/// the sigmoid loss becomes `−(1−ε) log σ(β d) − ε log σ(−β d)`; `ipo` and `hinge` ignore it, as
/// TRL does. `ε = 0` is [`dpo`] exactly.
pub fn dpo_smoothed(
    kind: DpoLoss,
    beta: f64,
    label_smoothing: f64,
    policy: &SequenceLogps,
    reference: &SequenceLogps,
) -> Result<PreferenceOutput> {
    check_beta(beta)?;
    if !(0.0..0.5).contains(&label_smoothing) {
        return Err(Error::Input(format!("DPO: label_smoothing must be in [0, 0.5), got {label_smoothing}")));
    }
    policy.check("policy")?;
    reference.check("reference")?;
    let n = policy.pairs();
    if reference.pairs() != n {
        return Err(Error::Input(format!("DPO: {n} policy pairs but {} reference pairs", reference.pairs())));
    }
    let inv_n = 1.0 / n as f64;
    let (mut loss, mut d_chosen, mut d_rejected) = (0.0, vec![0.0; n], vec![0.0; n]);
    let (mut rc, mut rr) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let dc = policy.chosen[i] - reference.chosen[i];
        let dr = policy.rejected[i] - reference.rejected[i];
        rc.push(beta * dc);
        rr.push(beta * dr);
        let d = dc - dr;
        // (per-pair loss, ∂loss/∂Δc, ∂loss/∂Δr)
        let (l, gc, gr) = match kind {
            DpoLoss::Sigmoid if label_smoothing == 0.0 => {
                let g = -beta * sigmoid(-beta * d);
                (-log_sigmoid(beta * d), g, -g)
            }
            DpoLoss::Sigmoid => {
                let e = label_smoothing;
                let g = -(1.0 - e) * beta * sigmoid(-beta * d) + e * beta * sigmoid(beta * d);
                (-(1.0 - e) * log_sigmoid(beta * d) - e * log_sigmoid(-beta * d), g, -g)
            }
            DpoLoss::Hinge => {
                let m = 1.0 - beta * d;
                if m > 0.0 {
                    (m, -beta, beta)
                } else {
                    (0.0, 0.0, 0.0)
                }
            }
            DpoLoss::Ipo => {
                let nc = policy.chosen_tokens[i].max(1) as f64;
                let nr = policy.rejected_tokens[i].max(1) as f64;
                let u = dc / nc - dr / nr - 1.0 / (2.0 * beta);
                (u * u, 2.0 * u / nc, -2.0 * u / nr)
            }
        };
        loss += l * inv_n;
        d_chosen[i] = gc * inv_n;
        d_rejected[i] = gr * inv_n;
    }
    let mut metrics = reward_metrics(&rc, &rr);
    metrics.push(("logps/chosen", mean(policy.chosen.iter().copied())));
    metrics.push(("logps/rejected", mean(policy.rejected.iter().copied())));
    Ok(PreferenceOutput { loss, d_chosen, d_rejected, d_nll_token: 0.0, metrics })
}

/// SimPO as TRL's `CPOTrainer` computes it (`loss_type="simpo"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimpoParams {
    /// `beta` (TRL's default 0.1).
    pub beta: f64,
    /// `simpo_gamma`, the target reward margin (TRL's default 0.5).
    pub gamma: f64,
    /// `label_smoothing` in `[0, 0.5)` (TRL's default 0).
    pub label_smoothing: f64,
    /// `cpo_alpha`, the weight of the NLL term on the chosen completions (TRL's default 1.0; pure
    /// SimPO is 0).
    pub cpo_alpha: f64,
}

impl Default for SimpoParams {
    /// TRL 1.16's `CPOConfig` defaults.
    fn default() -> Self {
        Self { beta: 0.1, gamma: 0.5, label_smoothing: 0.0, cpo_alpha: 1.0 }
    }
}

/// SimPO (`CPOTrainer`, `loss_type="simpo"`): with `ℓ̄` the mean completion log-probability
/// and `u = ℓ̄c − ℓ̄r − γ/β`, the loss is the mean over pairs of
/// `−(1−ε) log σ(βu) − ε log σ(−βu)`, plus `cpo_alpha ·` the token-mean NLL of the chosen
/// completions (`−Σ ℓc / Σ nc`). Metrics: `rewards/*` (reward = `β ℓ̄`), `logps/{chosen,rejected}`
/// (mean `ℓ̄`), `nll_loss`.
pub fn simpo(p: &SimpoParams, policy: &SequenceLogps) -> Result<PreferenceOutput> {
    check_beta(p.beta)?;
    policy.check("policy")?;
    if !(0.0..0.5).contains(&p.label_smoothing) {
        return Err(Error::Input(format!(
            "SimPO: label_smoothing must be in [0, 0.5), got {}",
            p.label_smoothing
        )));
    }
    if !(p.gamma.is_finite() && p.cpo_alpha.is_finite()) {
        return Err(Error::Input(format!(
            "SimPO: gamma {} and cpo_alpha {} must be finite",
            p.gamma, p.cpo_alpha
        )));
    }
    let n = policy.pairs();
    let inv_n = 1.0 / n as f64;
    let (eps, beta) = (p.label_smoothing, p.beta);
    let (mc, mr) = policy.means();
    let (mut loss, mut d_chosen, mut d_rejected) = (0.0, vec![0.0; n], vec![0.0; n]);
    for i in 0..n {
        let x = beta * (mc[i] - mr[i] - p.gamma / beta);
        loss += (-(1.0 - eps) * log_sigmoid(x) - eps * log_sigmoid(-x)) * inv_n;
        // ∂/∂x = −(1−ε) σ(−x) + ε σ(x); ∂x/∂ℓ̄c = β, ∂ℓ̄c/∂ℓc = 1/nc.
        let g = (-(1.0 - eps) * sigmoid(-x) + eps * sigmoid(x)) * beta * inv_n;
        d_chosen[i] = g / policy.chosen_tokens[i].max(1) as f64;
        d_rejected[i] = -g / policy.rejected_tokens[i].max(1) as f64;
    }
    // The NLL term: cross-entropy over the chosen completions' tokens, as one token mean.
    let tokens: usize = policy.chosen_tokens.iter().sum();
    let nll = -policy.chosen.iter().sum::<f64>() / tokens.max(1) as f64;
    if p.cpo_alpha != 0.0 {
        loss += p.cpo_alpha * nll;
        // The NLL tokens are the chosen completions: fold their gradient into the sequences'.
        let d_nll_token = -p.cpo_alpha / tokens.max(1) as f64;
        for d in &mut d_chosen {
            *d += d_nll_token;
        }
    }
    let rc: Vec<f64> = mc.iter().map(|l| beta * l).collect();
    let rr: Vec<f64> = mr.iter().map(|l| beta * l).collect();
    let mut metrics = reward_metrics(&rc, &rr);
    metrics.push(("logps/chosen", mean(mc.iter().copied())));
    metrics.push(("logps/rejected", mean(mr.iter().copied())));
    metrics.push(("nll_loss", nll));
    // Folded into d_chosen above: the caller needs no separate NLL pass for SimPO.
    Ok(PreferenceOutput { loss, d_chosen, d_rejected, d_nll_token: 0.0, metrics })
}

/// ORPO as TRL's `ORPOTrainer` computes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrpoParams {
    /// `beta`, the paper's λ (TRL's default 0.1).
    pub beta: f64,
}

impl Default for OrpoParams {
    /// TRL 1.16's `ORPOConfig` default.
    fn default() -> Self {
        Self { beta: 0.1 }
    }
}

/// `log(1 − eˣ)` for `x < 0`, stable on both sides of `−ln 2`.
fn log1mexp(x: f64) -> f64 {
    if x > -std::f64::consts::LN_2 {
        (-x.exp_m1()).ln()
    } else {
        (-x.exp()).ln_1p()
    }
}

/// ORPO (`ORPOTrainer`): with `ℓ̄` the mean completion log-probability and
/// `o = (ℓ̄c − ℓ̄r) − (log(1 − e^ℓ̄c) − log(1 − e^ℓ̄r))`, the loss is
/// `NLL − β · mean(log σ(o))`, where the NLL is the token mean of `−log p` over the chosen rows'
/// prompts and completions, given as `nll` (one [`TokenSum`] over the whole batch); its gradient
/// per counted token is [`PreferenceOutput::d_nll_token`]. Metrics: `rewards/*` (reward =
/// `β ℓ̄`), `logps/{chosen,rejected}` (mean `ℓ̄`), `nll_loss`, `log_odds_ratio` (mean `log σ(o)`),
/// `log_odds_chosen` (mean `o`).
pub fn orpo(p: &OrpoParams, policy: &SequenceLogps, nll: TokenSum) -> Result<PreferenceOutput> {
    check_beta(p.beta)?;
    policy.check("policy")?;
    if nll.tokens == 0 || !nll.logp_sum.is_finite() {
        return Err(Error::Input(format!(
            "ORPO: the NLL term needs at least one token and a finite sum, got {} tokens summing to {}",
            nll.tokens, nll.logp_sum
        )));
    }
    let n = policy.pairs();
    let inv_n = 1.0 / n as f64;
    let beta = p.beta;
    let (mc, mr) = policy.means();
    if let Some(i) = mc.iter().chain(&mr).position(|&l| l >= 0.0) {
        return Err(Error::Input(format!(
            "ORPO: mean log-probability of sequence {i} is not negative (an empty completion?)"
        )));
    }
    let nll_loss = -nll.logp_sum / nll.tokens as f64;
    let mut loss = nll_loss;
    let (mut d_chosen, mut d_rejected) = (vec![0.0; n], vec![0.0; n]);
    let (mut ratios, mut odds) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let o = (mc[i] - mr[i]) - (log1mexp(mc[i]) - log1mexp(mr[i]));
        let ratio = log_sigmoid(o);
        loss -= beta * ratio * inv_n;
        // ∂o/∂ℓ̄ = 1 + e^ℓ̄ / (1 − e^ℓ̄) = 1 / (1 − e^ℓ̄) (chosen; minus for rejected).
        let g = -beta * sigmoid(-o) * inv_n;
        d_chosen[i] = g / (-mc[i].exp_m1()) / policy.chosen_tokens[i].max(1) as f64;
        d_rejected[i] = -g / (-mr[i].exp_m1()) / policy.rejected_tokens[i].max(1) as f64;
        ratios.push(ratio);
        odds.push(o);
    }
    let rc: Vec<f64> = mc.iter().map(|l| beta * l).collect();
    let rr: Vec<f64> = mr.iter().map(|l| beta * l).collect();
    let mut metrics = reward_metrics(&rc, &rr);
    metrics.push(("logps/chosen", mean(mc.iter().copied())));
    metrics.push(("logps/rejected", mean(mr.iter().copied())));
    metrics.push(("nll_loss", nll_loss));
    metrics.push(("log_odds_ratio", mean(ratios)));
    metrics.push(("log_odds_chosen", mean(odds)));
    Ok(PreferenceOutput { loss, d_chosen, d_rejected, d_nll_token: -1.0 / nll.tokens as f64, metrics })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> SequenceLogps {
        SequenceLogps {
            chosen: vec![-7.5, -12.25, -3.0],
            rejected: vec![-9.0, -11.0, -6.5],
            chosen_tokens: vec![4, 6, 2],
            rejected_tokens: vec![5, 5, 3],
        }
    }

    /// Central differences of `f` in each summed log-probability against the analytic gradient.
    fn check_grad(f: &dyn Fn(&SequenceLogps) -> PreferenceOutput, x: &SequenceLogps) {
        let out = f(x);
        let h = 1e-6;
        for i in 0..x.pairs() {
            for chosen in [true, false] {
                let at = |delta: f64| {
                    let mut y = x.clone();
                    if chosen {
                        y.chosen[i] += delta;
                    } else {
                        y.rejected[i] += delta;
                    }
                    f(&y).loss
                };
                let num = (at(h) - at(-h)) / (2.0 * h);
                let ana = if chosen { out.d_chosen[i] } else { out.d_rejected[i] };
                assert!(
                    (num - ana).abs() < 1e-6 * (1.0 + num.abs()),
                    "pair {i} chosen {chosen}: {num} vs {ana}"
                );
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (p, r) = (
            batch(),
            SequenceLogps { chosen: vec![-8.0, -12.0, -4.0], rejected: vec![-8.5, -10.0, -6.0], ..batch() },
        );
        for kind in [DpoLoss::Sigmoid, DpoLoss::Ipo, DpoLoss::Hinge] {
            check_grad(&|x| dpo(kind, 0.3, x, &r).unwrap(), &p);
        }
        check_grad(&|x| dpo_smoothed(DpoLoss::Sigmoid, 0.3, 0.2, x, &r).unwrap(), &p);
        // A smoothed loss at d = 0 is still ln 2, and ε moves it towards the rejected side.
        let s = dpo_smoothed(DpoLoss::Sigmoid, 0.3, 0.2, &p, &p).unwrap();
        assert!((s.loss - std::f64::consts::LN_2).abs() < 1e-12);
        assert!(dpo_smoothed(DpoLoss::Sigmoid, 0.3, 0.5, &p, &r).is_err());
        let sp = SimpoParams { beta: 2.0, gamma: 0.4, label_smoothing: 0.1, cpo_alpha: 0.7 };
        check_grad(&|x| simpo(&sp, x).unwrap(), &p);
        // ORPO's NLL sum is a separate input: only the odds-ratio part depends on the sequences.
        check_grad(
            &|x| orpo(&OrpoParams { beta: 0.25 }, x, TokenSum { logp_sum: -30.0, tokens: 17 }).unwrap(),
            &p,
        );
    }

    #[test]
    fn policy_equal_to_reference_gives_log_two_and_no_accuracy() {
        let p = batch();
        let out = dpo(DpoLoss::Sigmoid, 0.1, &p, &p).unwrap();
        assert!((out.loss - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(out.metric("rewards/accuracies"), Some(0.0));
        assert_eq!(out.metric("rewards/margins"), Some(0.0));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let p = batch();
        assert!(dpo(DpoLoss::Sigmoid, 0.0, &p, &p).is_err());
        let short = SequenceLogps { rejected: vec![-1.0], ..batch() };
        assert!(dpo(DpoLoss::Sigmoid, 0.1, &short, &p).unwrap_err().to_string().contains("rejected"));
        let nan = SequenceLogps { chosen: vec![f64::NAN, -1.0, -1.0], ..batch() };
        assert!(simpo(&SimpoParams::default(), &nan).is_err());
        let bad_ls = SimpoParams { label_smoothing: 0.5, ..Default::default() };
        assert!(simpo(&bad_ls, &p).is_err());
        assert!(orpo(&OrpoParams::default(), &p, TokenSum { logp_sum: -1.0, tokens: 0 }).is_err());
        assert!(dpo(DpoLoss::Ipo, 0.1, &SequenceLogps::default(), &SequenceLogps::default()).is_err());
    }
}
