//! `dpo`: preference tuning on pairs of responses (`prompt`, `chosen`, `rejected`), with the
//! shared training loop ([`train_objective`]).
//!
//! Losses (`loss.kind`): `sigmoid` (DPO), `ipo`, `hinge` (RSO) against a frozen reference, and the
//! reference-free `simpo` (length-normalised, with a margin `loss.simpo_gamma` and an NLL term
//! weighted by `loss.cpo_alpha`, as TRL's `CPOTrainer`) and `orpo` (NLL plus odds ratio, as
//! TRL's `ORPOTrainer`); `loss.beta`, and `loss.label_smoothing` for `sigmoid` and `simpo`. The
//! formulas are [`crate::objectives::preference`]'s.
//!
//! Training: LoRA adapters when the config has a `lora:` section (QLoRA with
//! `lora.quantize_base`), every weight otherwise. The reference (`reference.kind`):
//! - `adapters_off` (the default with LoRA): the same model with its adapters switched off, run
//!   forward only on every micro-batch — no second copy of the weights;
//! - `precomputed` (the default for full fine-tuning): the reference's log-probabilities of every
//!   pair, computed in one pass over the data before the first step (with the model as loaded),
//!   saved as `reference_logps.safetensors` in the output folder and with every recipe state, so
//!   that a resumed run reads them back instead of recomputing them.
//!
//! Each optimizer step normalises by its pairs; the metrics of TRL's trainers (loss,
//! `rewards/{chosen,rejected,accuracies,margins}`, `logps/{chosen,rejected}`, `nll_loss` for
//! `simpo`/`orpo`) are means over the step's pairs, in `metrics.jsonl`, TensorBoard and the
//! progress line. Outputs are those of the SFT recipes (PEFT adapter and merged checkpoint, or
//! full weights).

use std::collections::BTreeMap;
use std::path::PathBuf;

use afinar_checkpoint::write::{save_safetensors_with, TensorSink};
use afinar_checkpoint::DType;
use afinar_data::{Batch, PreferenceBatch, PreferenceDataset, PreferenceLoader};
use afinar_engine::Backend;

use super::finetune::{train_batch, train_objective, MicroOutput, Plan, Summary, TrainObjective};
use super::metrics::Reporter;
use super::registry::RecipeSpec;
use super::run::{check_resume_data, dataset_spec, plan, prepare_model, Prepared};
use crate::config::{
    above, builtin_config, within, DatasetKind, DatasetKindDecl, KeyDecl, KeyType, KeyValue, RecipeConfig,
    SectionDecl, LORA_OPTIONAL,
};
use crate::models::{ActivationCheckpointing, Llama, TrainBatch};
use crate::objectives::{
    dpo_smoothed, orpo, simpo, DpoLoss, OrpoParams, PreferenceOutput, SequenceLogps, SimpoParams, TokenSum,
};
use crate::{Error, Result};

/// The words of `loss.kind`.
pub const LOSS_KINDS: &[&str] = &["sigmoid", "ipo", "hinge", "simpo", "orpo"];

/// The words of `reference.kind`.
pub const REFERENCE_KINDS: &[&str] = &["adapters_off", "precomputed"];

/// `loss:` — which preference loss and its hyper-parameters.
pub const LOSS: SectionDecl = SectionDecl {
    name: "loss",
    keys: &[
        KeyDecl::new(
            "kind",
            KeyType::Word { names: LOSS_KINDS, default: Some("sigmoid") },
            "The loss: sigmoid (DPO), ipo, hinge, simpo or orpo.",
        ),
        KeyDecl::new("beta", above(0.0, false, Some(0.1)), "β: the strength of the preference term."),
        KeyDecl::new(
            "label_smoothing",
            within(0.0, 0.5, false, Some(0.0)),
            "Conservative DPO / SimPO: the assumed share of flipped labels (sigmoid and simpo).",
        ),
        KeyDecl::new(
            "simpo_gamma",
            above(0.0, true, None),
            "SimPO's target reward margin γ (simpo only; default 0.5).",
        ),
        KeyDecl::new(
            "cpo_alpha",
            above(0.0, true, None),
            "Weight of the NLL term on the chosen responses (simpo only; default 1.0, pure SimPO 0).",
        ),
    ],
    required: false,
    expect: "a section with kind and beta",
    doc: "The preference loss.",
};

/// `reference:` — where the frozen reference's log-probabilities come from.
pub const REFERENCE: SectionDecl = SectionDecl {
    name: "reference",
    keys: &[KeyDecl::new(
        "kind",
        KeyType::Word { names: REFERENCE_KINDS, default: None },
        "adapters_off (LoRA: the base model; the default with lora) or precomputed (one pass \
         before training, cached; the default without lora).",
    )],
    required: false,
    expect: "a section with kind",
    doc: "The frozen reference model (sigmoid, ipo and hinge).",
};

/// The recipe's registry entry.
pub static SPEC: RecipeSpec = RecipeSpec {
    name: "dpo",
    description: "Preference tuning (DPO, IPO, hinge, SimPO, ORPO) of LoRA adapters, QLoRA, or every weight",
    sections: &[LORA_OPTIONAL, LOSS, REFERENCE],
    keys: &[],
    dataset_kinds: &[DatasetKindDecl {
        kind: DatasetKind::Preference,
        roles: &["prompt", "chosen", "rejected", "lang"],
    }],
    configs: &[
        builtin_config!("smollm2_135m_dpo_lora", "dpo", "SmolLM2-135M-Instruct DPO LoRA on the bilingual preference pairs: minutes on a CPU"),
        builtin_config!("smollm2_360m_dpo_lora", "dpo", "SmolLM2-360M-Instruct DPO LoRA; model folder from $SMOLLM2_DIR, pairs from $PREFS"),
        builtin_config!("llama3_2_1b_dpo_lora", "dpo", "Llama-3.2-1B-Instruct DPO LoRA (rank 16, all linear layers); model from $LLAMA_DIR, pairs from $PREFS"),
        builtin_config!("llama3_2_1b_dpo_qlora", "dpo", "Llama-3.2-1B-Instruct DPO QLoRA (NF4 base); model from $LLAMA_DIR, pairs from $PREFS"),
        builtin_config!("llama3_2_3b_dpo_lora", "dpo", "Llama-3.2-3B-Instruct DPO LoRA (rank 16, all linear layers); model from $LLAMA_DIR, pairs from $PREFS"),
        builtin_config!("llama3_2_3b_dpo_qlora", "dpo", "Llama-3.2-3B-Instruct DPO QLoRA (NF4 base); model from $LLAMA_DIR, pairs from $PREFS"),
        builtin_config!("llama3_1_8b_dpo_lora", "dpo", "Llama-3.1-8B-Instruct DPO LoRA (rank 16), activation checkpointing; model from $LLAMA_DIR, pairs from $PREFS"),
        builtin_config!("llama3_1_8b_dpo_qlora", "dpo", "Llama-3.1-8B-Instruct DPO QLoRA (NF4 base, rank 16), activation checkpointing; model from $LLAMA_DIR, pairs from $PREFS"),
    ],
    check: Some(check),
    run,
};

fn text<'a>(c: &'a RecipeConfig, path: &str) -> Option<&'a str> {
    c.extra(path).and_then(KeyValue::as_text)
}

fn num(c: &RecipeConfig, path: &str) -> Option<f64> {
    c.extra(path).and_then(KeyValue::as_num)
}

/// The recipe's rules across keys.
fn check(c: &RecipeConfig) -> std::result::Result<(), (String, String)> {
    let kind = text(c, "loss.kind").unwrap_or("sigmoid");
    let err = |path: &str, msg: String| Err((path.to_string(), msg));
    for key in ["simpo_gamma", "cpo_alpha"] {
        if kind != "simpo" && c.extra(&format!("loss.{key}")).is_some() {
            return err(
                &format!("loss.{key}"),
                format!("applies to loss.kind simpo only (it is {kind}): remove it or set loss.kind: simpo"),
            );
        }
    }
    if num(c, "loss.label_smoothing").is_some_and(|v| v > 0.0) && !matches!(kind, "sigmoid" | "simpo") {
        return err(
            "loss.label_smoothing",
            format!("applies to loss.kind sigmoid and simpo only (it is {kind}): set it to 0 or remove it"),
        );
    }
    match text(c, "reference.kind") {
        Some(r) if matches!(kind, "simpo" | "orpo") => {
            return err(
                "reference.kind",
                format!("loss.kind {kind} uses no reference model: remove reference.kind (it is {r})"),
            )
        }
        Some("adapters_off") if c.lora.is_none() => {
            return err(
                "reference.kind",
                "adapters_off needs LoRA adapters (a lora section): without one every weight trains, \
                 so use reference.kind: precomputed"
                    .into(),
            )
        }
        _ => {}
    }
    if c.optimizer_in_bwd {
        return err(
            "optimizer_in_bwd",
            "is not available with dpo (its steps normalise by pairs): set it to false".into(),
        );
    }
    if c.dataset.packed {
        return err("dataset.packed", "preference pairs are not packed: set it to false".into());
    }
    Ok(())
}

/// The loss a config asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// `sigmoid`, `ipo` or `hinge`, with β and the label smoothing.
    Dpo(DpoLoss, f64, f64),
    /// `simpo`.
    Simpo(SimpoParams),
    /// `orpo`.
    Orpo(OrpoParams),
}

/// Where the reference log-probabilities come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceKind {
    /// No reference (`simpo`, `orpo`).
    None,
    /// The model with its LoRA adapters switched off, on every micro-batch.
    AdaptersOff,
    /// One pass before training, cached.
    Precomputed,
}

/// The loss and the reference of a checked `dpo` config.
pub fn loss_of(c: &RecipeConfig) -> (Loss, ReferenceKind) {
    let beta = num(c, "loss.beta").unwrap_or(0.1);
    let smoothing = num(c, "loss.label_smoothing").unwrap_or(0.0);
    let loss = match text(c, "loss.kind").unwrap_or("sigmoid") {
        "ipo" => Loss::Dpo(DpoLoss::Ipo, beta, smoothing),
        "hinge" => Loss::Dpo(DpoLoss::Hinge, beta, smoothing),
        "simpo" => {
            let d = SimpoParams::default();
            Loss::Simpo(SimpoParams {
                beta,
                gamma: num(c, "loss.simpo_gamma").unwrap_or(d.gamma),
                label_smoothing: smoothing,
                cpo_alpha: num(c, "loss.cpo_alpha").unwrap_or(d.cpo_alpha),
            })
        }
        "orpo" => Loss::Orpo(OrpoParams { beta }),
        _ => Loss::Dpo(DpoLoss::Sigmoid, beta, smoothing),
    };
    let reference = match (loss, text(c, "reference.kind")) {
        (Loss::Simpo(_) | Loss::Orpo(_), _) => ReferenceKind::None,
        (_, Some("precomputed")) => ReferenceKind::Precomputed,
        (_, Some(_)) => ReferenceKind::AdaptersOff,
        (_, None) if c.lora.is_some() => ReferenceKind::AdaptersOff,
        (_, None) => ReferenceKind::Precomputed,
    };
    (loss, reference)
}

/// The name of the reference cache in the output folder.
pub const REFERENCE_FILE: &str = "reference_logps.safetensors";

/// The preference objective for the shared loop: micro-batches of pairs, units = pairs.
pub struct DpoObjective<'a> {
    data: &'a PreferenceDataset,
    loader: PreferenceLoader<'a>,
    /// The same batches in file order, for the reference pass.
    ordered: PreferenceLoader<'a>,
    loss: Loss,
    reference: ReferenceKind,
    /// Precomputed reference: summed log-probabilities of each pair's chosen and rejected
    /// response, by pair index (f32, as saved).
    cache: Option<(Vec<f32>, Vec<f32>)>,
    /// Where the reference cache is written (`None`: not written).
    output_dir: Option<PathBuf>,
}

impl<'a> DpoObjective<'a> {
    /// The objective over `data`'s pairs in micro-batches of `batch_size` pairs (shuffled each
    /// epoch from `seed` when `shuffle`; an epoch's last, smaller batch is left out), padding
    /// with `pad`; the reference cache, if any, is written into `output_dir`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        data: &'a PreferenceDataset,
        batch_size: usize,
        shuffle: bool,
        seed: u64,
        pad: u32,
        loss: Loss,
        reference: ReferenceKind,
        output_dir: Option<PathBuf>,
    ) -> Result<Self> {
        let e = |e: afinar_data::DataError| Error::Input(format!("dataset: {e}"));
        let loader = PreferenceLoader::new(data, batch_size, shuffle, seed, pad).map_err(e)?.drop_last(true);
        let ordered = PreferenceLoader::new(data, batch_size, false, 0, pad).map_err(e)?;
        Ok(DpoObjective { data, loader, ordered, loss, reference, cache: None, output_dir })
    }

    /// The precomputed reference log-probabilities (chosen, rejected) by pair, once prepared.
    pub fn reference_cache(&self) -> Option<&(Vec<f32>, Vec<f32>)> {
        self.cache.as_ref()
    }

    /// ORPO's NLL targets: on the chosen rows, every next token of prompt and response; -100
    /// elsewhere (rejected rows, padding).
    fn nll_labels(&self, m: &PreferenceBatch) -> Vec<i32> {
        let b = &m.batch;
        let mut labels = vec![-100; b.batch * b.seq];
        for (r, &i) in m.indices.iter().enumerate() {
            let p = &self.data.pairs()[i];
            let len = (p.prompt_ids.len() + p.chosen_ids.len()).min(b.seq);
            for t in 0..len.saturating_sub(1) {
                labels[r * b.seq + t] = b.ids[r * b.seq + t + 1] as i32;
            }
        }
        labels
    }

    /// The reference's sequence log-probabilities of a micro-batch.
    fn reference_logps<B: Backend>(
        &self,
        be: &B,
        model: &mut Llama<B>,
        m: &PreferenceBatch,
    ) -> Result<SequenceLogps> {
        match self.reference {
            ReferenceKind::Precomputed => {
                let (c, r) = self.cache.as_ref().ok_or_else(|| {
                    Error::Input("dpo: the reference log-probabilities were not computed".into())
                })?;
                let mut out = token_counts(&m.batch, m.pairs);
                out.chosen = m.indices.iter().map(|&i| f64::from(c[i])).collect();
                out.rejected = m.indices.iter().map(|&i| f64::from(r[i])).collect();
                Ok(out)
            }
            ReferenceKind::AdaptersOff => model.without_adapters(|m2| reference_pass(be, m2, m)),
            ReferenceKind::None => Err(Error::Input("dpo: this loss has no reference".into())),
        }
    }

    /// Computes the reference log-probabilities of every pair with `model` as it is.
    fn compute_cache<B: Backend>(&mut self, be: &B, model: &Llama<B>) -> Result<()> {
        let n = self.data.len();
        let (mut chosen, mut rejected) = (vec![0f32; n], vec![0f32; n]);
        for m in self.ordered.epoch(0) {
            let s = reference_pass(be, model, &m)?;
            for (k, &i) in m.indices.iter().enumerate() {
                chosen[i] = s.chosen[k] as f32;
                rejected[i] = s.rejected[k] as f32;
            }
        }
        self.cache = Some((chosen, rejected));
        Ok(())
    }

    fn write_cache(&self) -> Result<()> {
        let (Some(dir), Some((c, r))) = (&self.output_dir, &self.cache) else { return Ok(()) };
        let metas = vec![
            ("chosen".to_string(), DType::F32, vec![c.len()]),
            ("rejected".to_string(), DType::F32, vec![r.len()]),
        ];
        let mut meta = BTreeMap::new();
        meta.insert("afinar_reference_logps".to_string(), "1".to_string());
        let to = dir.join(REFERENCE_FILE);
        let tmp = dir.join(format!("{REFERENCE_FILE}.tmp"));
        save_safetensors_with(&tmp, &metas, &meta, |sink: &mut TensorSink<'_>| -> Result<()> {
            sink.write_f32(c)?;
            sink.write_f32(r)?;
            Ok(())
        })?;
        std::fs::rename(&tmp, &to).map_err(|source| Error::Io { path: to.clone(), source })
    }
}

/// Token counts of a batch's responses, as a [`SequenceLogps`] with zero sums.
fn token_counts(b: &Batch, pairs: usize) -> SequenceLogps {
    let counts: Vec<usize> = (0..b.batch)
        .map(|r| b.labels[r * b.seq..(r + 1) * b.seq].iter().filter(|&&l| l != -100).count())
        .collect();
    SequenceLogps {
        chosen: vec![0.0; pairs],
        rejected: vec![0.0; pairs],
        chosen_tokens: counts[..pairs].to_vec(),
        rejected_tokens: counts[pairs..].to_vec(),
    }
}

/// Per-row sums of the token log-probabilities `tok` over the positions `labels` counts, split
/// into the chosen rows (first half) and the rejected ones.
fn sequence_logps(tok: &[f32], labels: &[i32], b: &Batch, pairs: usize) -> SequenceLogps {
    let mut out = token_counts(b, pairs);
    let sums: Vec<f64> = (0..b.batch)
        .map(|r| {
            let row = r * b.seq..(r + 1) * b.seq;
            tok[row.clone()]
                .iter()
                .zip(&labels[row])
                .filter(|(_, &l)| l != -100)
                .map(|(&v, _)| f64::from(v))
                .sum()
        })
        .collect();
    out.chosen = sums[..pairs].to_vec();
    out.rejected = sums[pairs..].to_vec();
    out
}

/// Forward only: the sequence log-probabilities of a micro-batch under `model` as it is.
fn reference_pass<B: Backend>(be: &B, model: &Llama<B>, m: &PreferenceBatch) -> Result<SequenceLogps> {
    let b = &m.batch;
    let rows = b.batch * b.seq;
    let mut h = be.zeros(rows * model.config.dim)?;
    model.hidden_states(be, &train_batch(b), &mut h)?;
    let tok = model.label_log_probs(be, &h, &b.labels, rows)?;
    Ok(sequence_logps(&tok, &b.labels, b, m.pairs))
}

impl<B: Backend> TrainObjective<B> for DpoObjective<'_> {
    type Micro = PreferenceBatch;

    fn unit_name(&self) -> &'static str {
        "pairs"
    }

    fn batches_per_epoch(&self) -> usize {
        self.loader.batches_per_epoch()
    }

    fn epoch_from(&self, epoch: usize, start: usize) -> Box<dyn Iterator<Item = PreferenceBatch> + '_> {
        Box::new(self.loader.epoch_from(epoch, start))
    }

    fn units(&self, m: &PreferenceBatch) -> usize {
        m.pairs
    }

    fn tokens(&self, m: &PreferenceBatch) -> usize {
        m.batch.label_tokens
    }

    fn forward_backward(
        &self,
        be: &B,
        model: &mut Llama<B>,
        m: &PreferenceBatch,
        grad_scale: f32,
        checkpointing: ActivationCheckpointing,
    ) -> Result<MicroOutput> {
        let b = &m.batch;
        let rows = b.batch * b.seq;
        let reference = match self.reference {
            ReferenceKind::None => None,
            _ => Some(self.reference_logps(be, model, m)?),
        };
        let nll = matches!(self.loss, Loss::Orpo(_)).then(|| self.nll_labels(m));
        // One label per position for the head: ORPO's NLL target where it has one (the same next
        // token as the preference term's on the responses), else the preference term's.
        let head: Vec<i32> = match &nll {
            Some(n) => n.iter().zip(&b.labels).map(|(&n, &l)| if n != -100 { n } else { l }).collect(),
            None => b.labels.clone(),
        };
        let tb = TrainBatch { labels: &head, ..train_batch(b) };
        let mut hidden = be.zeros(rows * model.config.dim)?;
        model.forward_hidden(be, &tb, checkpointing, &mut hidden)?;
        let tok = model.label_log_probs(be, &hidden, &head, rows)?;
        let policy = sequence_logps(&tok, &b.labels, b, m.pairs);
        let out: PreferenceOutput = match (self.loss, &reference) {
            (Loss::Dpo(kind, beta, eps), Some(r)) => dpo_smoothed(kind, beta, eps, &policy, r)?,
            (Loss::Simpo(p), _) => simpo(&p, &policy)?,
            (Loss::Orpo(p), _) => {
                let n = nll.as_ref().expect("ORPO has NLL labels");
                let (mut logp_sum, mut tokens) = (0.0, 0);
                for (&v, &l) in tok.iter().zip(n) {
                    if l != -100 {
                        logp_sum += f64::from(v);
                        tokens += 1;
                    }
                }
                orpo(&p, &policy, TokenSum { logp_sum, tokens })?
            }
            (Loss::Dpo(..), None) => return Err(Error::Input("dpo: this loss needs a reference".into())),
        };
        // The micro-batch's loss summed over its pairs is `pairs × loss`; its gradient, scaled by
        // the loop's `grad_scale`, spread onto the tokens each sequence's log-probability sums.
        let k = m.pairs as f64 * f64::from(grad_scale);
        let per_row: Vec<f64> = out.d_chosen.iter().chain(&out.d_rejected).copied().collect();
        let upstream: Vec<f32> = (0..rows)
            .map(|i| {
                let mut g = 0.0;
                if b.labels[i] != -100 {
                    g += per_row[i / b.seq];
                }
                if nll.as_ref().is_some_and(|n| n[i] != -100) {
                    g += out.d_nll_token;
                }
                (g * k) as f32
            })
            .collect();
        let mut dhidden = be.zeros(rows * model.config.dim)?;
        model.label_log_probs_backward(be, &hidden, &head, rows, &upstream, &mut dhidden)?;
        model.backward_hidden(be, &tb, checkpointing, &dhidden)?;
        let pairs = m.pairs as f64;
        Ok(MicroOutput {
            loss_sum: out.loss * pairs,
            metric_sums: out
                .metrics
                .iter()
                .filter(|(name, _)| {
                    matches!(*name, "nll_loss") || name.starts_with("rewards/") || name.starts_with("logps/")
                })
                .map(|&(name, v)| (name, v * pairs))
                .collect(),
        })
    }

    fn prepare(&mut self, be: &B, model: &mut Llama<B>, reporter: &mut dyn Reporter) -> Result<()> {
        if self.reference != ReferenceKind::Precomputed {
            return Ok(());
        }
        if self.cache.is_some() {
            reporter.note("reference log-probabilities read back from the recipe state");
            return Ok(());
        }
        let t = std::time::Instant::now();
        self.compute_cache(be, model)?;
        self.write_cache()?;
        reporter.note(&format!(
            "reference log-probabilities of {} pairs computed with the model as loaded ({:.1} s){}",
            self.data.len(),
            t.elapsed().as_secs_f64(),
            self.output_dir
                .as_ref()
                .map(|d| format!(", saved in {}", d.join(REFERENCE_FILE).display()))
                .unwrap_or_default()
        ));
        Ok(())
    }

    fn state_tensors(&self) -> Vec<(String, Vec<f32>)> {
        match &self.cache {
            Some((c, r)) => {
                vec![("reference.chosen".into(), c.clone()), ("reference.rejected".into(), r.clone())]
            }
            None => Vec::new(),
        }
    }

    fn restore_state(&mut self, tensors: Vec<(String, Vec<f32>)>) -> Result<()> {
        if self.reference != ReferenceKind::Precomputed {
            return Ok(());
        }
        let mut t: BTreeMap<String, Vec<f32>> = tensors.into_iter().collect();
        let (Some(c), Some(r)) = (t.remove("reference.chosen"), t.remove("reference.rejected")) else {
            return Ok(());
        };
        let n = self.data.len();
        if c.len() != n || r.len() != n {
            return Err(Error::Input(format!(
                "resume_from_checkpoint: the saved reference log-probabilities cover {} pairs, the \
                 dataset has {n}: the recipe state is from other data",
                c.len()
            )));
        }
        self.cache = Some((c, r));
        Ok(())
    }
}

/// A fingerprint of a preference dataset's tokenized pairs (FNV-1a, 64 bits, as hex).
pub fn pairs_fingerprint(ds: &PreferenceDataset) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |v: u32| {
        for b in v.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for p in ds.pairs() {
        for part in [&p.prompt_ids, &p.chosen_ids, &p.rejected_ids] {
            eat(part.len() as u32);
            part.iter().for_each(|&i| eat(i));
        }
    }
    format!("{h:016x}")
}

/// This recipe's body for [`super::run::on_device`].
struct DpoBody;

impl super::run::RecipeBody for DpoBody {
    fn run_on<B: Backend>(be: &B, cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary> {
        run_on(be, cfg, reporter)
    }
}

/// Runs the recipe on the device the config names.
pub fn run(cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary> {
    super::run::on_device::<DpoBody>(cfg, reporter)
}

/// Runs the recipe on `be`, with `stop_after_steps` passed to the loop (tests: a killed run).
pub fn run_on_with<B: Backend>(
    be: &B,
    cfg: &RecipeConfig,
    reporter: &mut dyn Reporter,
    stop_after_steps: Option<usize>,
) -> Result<Summary> {
    let (loss, reference) = loss_of(cfg);
    let Prepared { mut model, tokenizer, saver } = prepare_model(be, cfg, reporter)?;
    // The policy's training forward must be the reference's forward-only arithmetic (a fresh
    // adapter's first loss is exactly ln 2): the activations it saves stay f32, not rounded to
    // bf16 as the SFT recipes keep them.
    model.keep_activations_in_bf16(false);
    let data = PreferenceDataset::load(&dataset_spec(cfg), &tokenizer)
        .map_err(|e| Error::Input(format!("dataset: {e}")))?;
    let pad = tokenizer.eos_id().unwrap_or(0);
    reporter.note(&format!(
        "dataset {}: {} pairs; {} (long rows: {}); loss {}, reference {}",
        cfg.dataset.source.display(),
        data.len(),
        data.stats().summary(cfg.tokenizer.max_seq_len),
        cfg.dataset.long_rows,
        text(cfg, "loss.kind").unwrap_or("sigmoid"),
        match reference {
            ReferenceKind::None => "none",
            ReferenceKind::AdaptersOff => "adapters_off",
            ReferenceKind::Precomputed => "precomputed",
        }
    ));
    let fingerprint = pairs_fingerprint(&data);
    if cfg.resume_from_checkpoint {
        check_resume_data(cfg, &fingerprint, reporter)?;
    }
    let plan = Plan { data_fingerprint: Some(fingerprint), stop_after_steps, ..plan(cfg) };
    let mut objective = DpoObjective::new(
        &data,
        cfg.batch_size,
        cfg.shuffle,
        cfg.seed,
        pad,
        loss,
        reference,
        Some(cfg.output_dir.clone()),
    )?;
    train_objective(be, &mut model, &mut objective, &plan, saver.as_ref(), reporter)
}

/// Runs the recipe on `be`.
pub fn run_on<B: Backend>(be: &B, cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary> {
    run_on_with(be, cfg, reporter, None)
}
