//! Stand-ins the `grpo` recipe uses until the parts other branches build land in `main`:
//! prompt rows (the data crate's prompt dataset), rewards (`afinar::rewards`) and the GRPO loss
//! (`afinar::objectives::grpo`). Each is behind a small interface ([`PromptRow`],
//! [`RewardSet::score`], [`advantages`], [`token_terms`]) so that switching to the real ones
//! touches this file and a few lines of `grpo.rs` only.
//!
//! - Prompts: a JSONL file; each line a JSON object with `messages` or `prompt` as a list of
//!   `{role, content}` (rendered with the tokenizer's chat template and a generation prompt), or
//!   `prompt` as a string (one user message through the chat template); every other field is kept
//!   for the rewards. Prompts longer than `max_prompt_length` tokens keep their last tokens
//!   (truncation from the left, as TRL).
//! - Rewards: `answer_match` (the last number in the completion equals the row's `answer`
//!   numerically: 1, else 0) and `command` (an external process, see [`CommandReward`]).
//! - Loss: TRL 1.16's per-token GRPO terms (clipped ratio, k3 KL).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use afinar_tokenizer::{render_chat, Message, Tokenizer};
use serde_json::Value;

use crate::{Error, Result};

/// One prompt of the dataset.
#[derive(Debug, Clone)]
pub struct PromptRow {
    /// Its token ids (chat template applied, truncated from the left).
    pub ids: Vec<u32>,
    /// The rendered prompt text (before truncation).
    pub text: String,
    /// Every other field of the row.
    pub fields: BTreeMap<String, Value>,
    /// Its line in the file (1-based).
    pub row: usize,
}

/// Reads the prompt rows of a JSONL file (see the module doc).
pub fn load_prompts(path: &Path, tok: &Tokenizer, max_prompt_length: usize) -> Result<Vec<PromptRow>> {
    let text =
        std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let mut out = Vec::new();
    let at = |line: usize, what: String| Error::Input(format!("{}:{line}: {what}", path.display()));
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).map_err(|e| at(line_no, format!("not a JSON object: {e}")))?;
        let Value::Object(map) = v else {
            return Err(at(line_no, "expected a JSON object with `messages` or `prompt`".into()));
        };
        let messages: Vec<Message> = match (map.get("messages"), map.get("prompt")) {
            (Some(Value::Array(items)), _) | (None, Some(Value::Array(items))) => items
                .iter()
                .enumerate()
                .map(|(k, m)| {
                    let role = m.get("role").and_then(Value::as_str);
                    let content = m.get("content").and_then(Value::as_str);
                    match (role, content) {
                        (Some(r), Some(c)) => Ok(Message::new(r, c)),
                        _ => Err(at(
                            line_no,
                            format!("messages[{k}]: expected {{\"role\": …, \"content\": …}} strings"),
                        )),
                    }
                })
                .collect::<Result<_>>()?,
            (Some(_), _) => return Err(at(line_no, "`messages` must be a list of {role, content}".into())),
            (None, Some(Value::String(p))) if !p.is_empty() => vec![Message::new("user", p.clone())],
            (None, Some(_)) => return Err(at(line_no, "`prompt` must be a non-empty string".into())),
            (None, None) => return Err(at(line_no, "no `messages` or `prompt` field".into())),
        };
        if messages.is_empty() {
            return Err(at(line_no, "`messages` is empty".into()));
        }
        let rendered =
            render_chat(tok, &messages, true).map_err(|e| at(line_no, format!("chat template: {e}")))?;
        let mut ids = tok.encode(&rendered, false).map_err(|e| at(line_no, format!("tokenizer: {e}")))?;
        if ids.len() > max_prompt_length {
            ids.drain(..ids.len() - max_prompt_length);
        }
        let fields = map.into_iter().filter(|(k, _)| k != "messages" && k != "prompt").collect();
        out.push(PromptRow { ids, text: rendered, fields, row: line_no });
    }
    if out.is_empty() {
        return Err(Error::Input(format!("{}: the file has no prompt rows", path.display())));
    }
    Ok(out)
}

/// An external reward command: one process per scoring call; it reads one JSON line per
/// completion on stdin (`{"prompt", "completion", "row": {fields}, "index"}`) and writes one
/// number per line on stdout, in the same order.
#[derive(Debug, Clone)]
pub struct CommandReward {
    /// A shell command line, run with `sh -c`.
    pub command: String,
    /// Working folder (the config's folder).
    pub cwd: Option<PathBuf>,
    /// Longest run before the process is killed.
    pub timeout: Duration,
}

impl CommandReward {
    /// The score of each completion.
    pub fn score(&self, prompts: &[&PromptRow], completions: &[String]) -> Result<Vec<f64>> {
        let name = format!("reward `command` ({})", self.command);
        let mut input = String::new();
        for (i, (p, c)) in prompts.iter().zip(completions).enumerate() {
            let line = serde_json::json!({"prompt": p.text, "completion": c, "row": p.fields, "index": i});
            input.push_str(&line.to_string());
            input.push('\n');
        }
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(&self.command).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        let mut child = cmd.spawn().map_err(|e| Error::Input(format!("{name}: cannot start: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped");
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let t0 = Instant::now();
        let status = loop {
            match child.try_wait().map_err(|e| Error::Input(format!("{name}: {e}")))? {
                Some(s) => break s,
                None if t0.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Input(format!(
                        "{name}: no answer within {:.0} s (timeout_s): killed",
                        self.timeout.as_secs_f64()
                    )));
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let _ = writer.join();
        let out = out_reader.join().unwrap_or_default();
        let err = err_reader.join().unwrap_or_default();
        let tail: String = {
            let chars: Vec<char> = err.chars().collect();
            chars[chars.len().saturating_sub(400)..].iter().collect()
        };
        if !status.success() {
            return Err(Error::Input(format!("{name}: exited with {status}; stderr: {tail}")));
        }
        let lines: Vec<&str> = out.lines().collect();
        if lines.len() != completions.len() {
            return Err(Error::Input(format!(
                "{name}: wrote {} lines for {} completions (expected one number per line); stderr: {tail}",
                lines.len(),
                completions.len()
            )));
        }
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| match l.trim().parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err(Error::Input(format!(
                    "{name}: line {} (completion {i}, row {}) is `{l}`, expected a finite number",
                    i + 1,
                    prompts[i].row
                ))),
            })
            .collect()
    }
}

/// One reward of a [`RewardSet`].
#[derive(Debug, Clone)]
pub enum Reward {
    /// The last number of the completion equals the row's `answer` field (as a number).
    AnswerMatch,
    /// An external command.
    Command(CommandReward),
}

/// Each completion's weighted reward, and every reward's own values (named).
pub type ScoredBatch = (Vec<f64>, Vec<(&'static str, Vec<f64>)>);

/// The weighted rewards of a run.
#[derive(Debug, Clone)]
pub struct RewardSet {
    /// `(name, weight, reward)`.
    pub items: Vec<(&'static str, f64, Reward)>,
}

/// The last number (optionally signed, with a decimal part) in `s`.
pub fn last_number(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let mut end = b.len();
    while end > 0 {
        if b[end - 1].is_ascii_digit() {
            let mut start = end;
            while start > 0 && (b[start - 1].is_ascii_digit() || b[start - 1] == b'.') {
                start -= 1;
            }
            if start > 0 && b[start - 1] == b'-' {
                start -= 1;
            }
            return s[start..end].trim_start_matches('.').parse().ok();
        }
        end -= 1;
    }
    None
}

fn field_number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl RewardSet {
    /// Scores completions (`prompts[i]` is completion `i`'s prompt): the weighted sum of each,
    /// and every reward's own values (named).
    pub fn score(&self, prompts: &[&PromptRow], completions: &[String]) -> Result<ScoredBatch> {
        let mut total = vec![0.0; completions.len()];
        let mut each = Vec::new();
        for (name, weight, r) in &self.items {
            let values: Vec<f64> = match r {
                Reward::AnswerMatch => prompts
                    .iter()
                    .zip(completions)
                    .map(|(p, c)| {
                        let want = field_number(p.fields.get("answer")).ok_or_else(|| {
                            Error::Input(format!(
                                "reward answer_match: row {} has no numeric `answer` field",
                                p.row
                            ))
                        })?;
                        Ok(f64::from(last_number(c).is_some_and(|x| (x - want).abs() < 1e-9)))
                    })
                    .collect::<Result<_>>()?,
                Reward::Command(c) => c.score(prompts, completions)?,
            };
            for (t, v) in total.iter_mut().zip(&values) {
                *t += weight * v;
            }
            each.push((*name, values));
        }
        Ok((total, each))
    }
}

/// How advantages are scaled (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRewards {
    /// By the group's standard deviation.
    Group,
    /// By the whole batch's standard deviation.
    Batch,
    /// Not scaled (Dr. GRPO).
    None,
}

fn std_unbiased(xs: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return f64::NAN;
    }
    let m = xs.iter().sum::<f64>() / n;
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// Group-relative advantages as TRL 1.16 computes them: the reward minus its group's mean,
/// divided by (the group's — or the batch's — unbiased standard deviation + 1e-4) unless
/// `scale` is `None`. Also the share of groups whose rewards are all equal.
pub fn advantages(rewards: &[f64], group: usize, scale: ScaleRewards) -> (Vec<f64>, f64) {
    let batch_std = std_unbiased(rewards);
    let mut out = Vec::with_capacity(rewards.len());
    let mut zero = 0usize;
    for g in rewards.chunks(group) {
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        let std = std_unbiased(g);
        if std.abs() < 1e-8 {
            zero += 1;
        }
        for &r in g {
            let a = r - mean;
            out.push(match scale {
                ScaleRewards::Group => a / (std + 1e-4),
                ScaleRewards::Batch => a / (batch_std + 1e-4),
                ScaleRewards::None => a,
            });
        }
    }
    let groups = rewards.len().div_ceil(group).max(1);
    (out, zero as f64 / groups as f64)
}

/// One token's GRPO terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenTerms {
    /// `-min(r·A, clip(r)·A) + β·kl`.
    pub loss: f64,
    /// Its derivative with respect to the token's log-probability under the policy.
    pub dloss: f64,
    /// k3 KL estimate `exp(ref - logp) - (ref - logp) - 1` (0 without a reference).
    pub kl: f64,
    /// `r < 1 - ε_low` with `A < 0`.
    pub low_clipped: bool,
    /// `r > 1 + ε_high` with `A > 0`.
    pub high_clipped: bool,
}

/// The per-token terms of TRL 1.16's GRPO loss: ratio `r = exp(logp - old)` (`old = None`: the
/// current log-probability, detached: r = 1), the clipped surrogate, and the k3 KL to the
/// reference weighted by `beta` (when `reference` is given).
pub fn token_terms(
    logp: f64,
    old: Option<f64>,
    reference: Option<f64>,
    adv: f64,
    eps_low: f64,
    eps_high: f64,
    beta: f64,
) -> TokenTerms {
    let r = (logp - old.unwrap_or(logp)).exp();
    let clipped = r.clamp(1.0 - eps_low, 1.0 + eps_high);
    let (a, b) = (r * adv, clipped * adv);
    // -min(a, b): the unclipped branch carries the gradient (d r / d logp = r) when it is the
    // smaller one or the clamp is inactive; the clipped branch is constant outside the range.
    let inside = r >= 1.0 - eps_low && r <= 1.0 + eps_high;
    let (mut loss, mut dloss) = if a <= b || inside { (-a, -adv * r) } else { (-b, 0.0) };
    let mut kl = 0.0;
    if let Some(rf) = reference {
        let d = rf - logp;
        kl = d.exp() - d - 1.0;
        if beta != 0.0 {
            loss += beta * kl;
            dloss += beta * (1.0 - d.exp());
        }
    }
    TokenTerms {
        loss,
        dloss,
        kl,
        low_clipped: r < 1.0 - eps_low && adv < 0.0,
        high_clipped: r > 1.0 + eps_high && adv > 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_numbers() {
        assert_eq!(last_number("Answer: 42"), Some(42.0));
        assert_eq!(last_number("3 + 4 = 7."), Some(7.0));
        assert_eq!(last_number("Respuesta: -5"), Some(-5.0));
        assert_eq!(last_number("no number"), None);
        assert_eq!(last_number("2.5 then"), Some(2.5));
    }

    #[test]
    fn advantages_as_trl() {
        let r = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5];
        let (a, zero) = advantages(&r, 2, ScaleRewards::Group);
        let s = (0.5f64).sqrt();
        assert!((a[0] - 0.5 / (s + 1e-4)).abs() < 1e-12 && (a[1] + 0.5 / (s + 1e-4)).abs() < 1e-12);
        assert_eq!(&a[4..], &[0.0, 0.0]);
        assert!((zero - 1.0 / 3.0).abs() < 1e-12);
        let (a, _) = advantages(&r, 2, ScaleRewards::None);
        assert_eq!(a, vec![0.5, -0.5, -0.5, 0.5, 0.0, 0.0]);
    }

    #[test]
    fn token_terms_match_finite_differences() {
        for &(old, rf, adv) in &[
            (Some(-1.0), Some(-1.3), 0.7),
            (Some(-1.5), None, -0.4),
            (Some(-0.6), Some(-0.9), 1.2),
            (None, Some(-2.0), -0.3),
        ] {
            for &logp in &[-1.2, -1.0, -0.8] {
                let t = token_terms(logp, old, rf, adv, 0.2, 0.28, 0.04);
                let h = 1e-6;
                // with old = None the ratio is detached: the numerical derivative holds old fixed
                let o = old.or(Some(logp));
                let f = |x: f64| token_terms(x, o, rf, adv, 0.2, 0.28, 0.04).loss;
                let num = (f(logp + h) - f(logp - h)) / (2.0 * h);
                assert!((num - t.dloss).abs() < 1e-6, "{old:?} {rf:?} {adv} {logp}: {num} vs {}", t.dloss);
            }
        }
        // ratio 1: loss -A, gradient -A
        let t = token_terms(-1.0, None, None, 0.5, 0.2, 0.2, 0.0);
        assert_eq!((t.loss, t.dloss), (-0.5, -0.5));
        // far above 1 + ε with A > 0: clipped, no gradient
        let t = token_terms(0.0, Some(-1.0), None, 0.5, 0.2, 0.2, 0.0);
        assert!(t.high_clipped && t.dloss == 0.0);
    }
}
