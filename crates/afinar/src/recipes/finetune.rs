//! The training loop shared by every recipe (SFT, DPO, knowledge distillation): micro-batches
//! are grouped into optimizer steps (gradient accumulation normalised by the step's total number
//! of *units* — label tokens for SFT, pairs for DPO), gradients are clipped, AdamW steps with a
//! scheduled learning rate, metrics are logged, and checkpoints plus the full recipe state are
//! saved so that a killed run resumes bit for bit.
//!
//! What is trained is a [`TrainObjective`]: it serves the micro-batches of each epoch, says how
//! many units each holds, and runs one micro-batch's forward and backward, returning its loss
//! summed over its units and its own metrics. [`train_objective`] is the loop; [`train`] runs it
//! with next-token cross-entropy ([`Sft`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use afinar_data::{Batch, Loader};
use afinar_engine::Backend;

use super::metrics::{peak_rss_bytes, MetricsFile, Reporter, StepMetrics};
use super::optim::{clip_grad_norm, grad_norm, update, AdamWConfig, Optimizer};
use super::schedule::Schedule;
use super::state::{RecipeState, SaveTarget};
use crate::models::{ActivationCheckpointing, Llama, ParamMut, TrainBatch, Update};
use crate::{Error, Result};

/// Everything the loop needs to know, independent of how it was configured.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where checkpoints, state and metrics go.
    pub output_dir: PathBuf,
    /// Passes over the data.
    pub epochs: usize,
    /// Cap on optimizer steps per epoch.
    pub max_steps_per_epoch: Option<usize>,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Learning-rate schedule (its `total_steps` is filled in by the loop).
    pub schedule: Schedule,
    /// Gradient-norm clipping.
    pub clip_grad_norm: Option<f64>,
    /// Step the optimizer inside the backward ([`Llama::forward_backward_stepping`]); needs
    /// `grad_accum == 1` and no clipping.
    pub optimizer_in_backward: bool,
    /// Which layers are recomputed in the backward.
    pub activation_checkpointing: ActivationCheckpointing,
    /// Save a checkpoint every this many optimizer steps (besides every epoch end).
    pub save_every_n_steps: Option<usize>,
    /// Continue from the recipe state in `output_dir`.
    pub resume: bool,
    /// Log every this many steps.
    pub log_every_n_steps: usize,
    /// Stop after this many optimizer steps in this process (tests: simulate a killed run).
    pub stop_after_steps: Option<usize>,
    /// Seed of the run (LoRA dropout masks derive from it and the step).
    pub seed: u64,
    /// The run's resolved config (YAML), saved with the recipe state so that a resume can
    /// compare it with its own ([`crate::recipes::run::check_resume`]).
    pub recipe_config: Option<String>,
    /// Fingerprint of the tokenized data ([`data_fingerprint`]), saved with the recipe state.
    pub data_fingerprint: Option<String>,
}

/// A fingerprint of a dataset's samples (token ids, labels and sample boundaries, in order;
/// FNV-1a, 64 bits, as hex): the same data tokenized the same way gives the same value.
pub fn data_fingerprint(samples: &[afinar_data::Sample]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |v: u32| {
        for b in v.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for s in samples {
        eat(s.ids.len() as u32);
        s.ids.iter().for_each(|&i| eat(i));
        s.labels.iter().for_each(|&l| eat(l as u32));
    }
    format!("{h:016x}")
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Loss of every optimizer step run by this process.
    pub losses: Vec<f64>,
    /// Optimizer steps completed in total (including resumed ones).
    pub steps: usize,
    /// Folders written.
    pub checkpoints: Vec<PathBuf>,
}

/// What one micro-batch's pass hands back to the loop.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MicroOutput {
    /// The micro-batch's loss summed over its units (SFT: the summed token cross-entropy; DPO:
    /// the per-pair mean loss times the pairs). The step's loss is the sum over its micro-batches
    /// divided by the step's units.
    pub loss_sum: f64,
    /// The objective's own metrics, each summed over the micro-batch's units (a per-unit mean
    /// times the units); the loop reports each as its sum over the step divided by the step's
    /// units. Every micro-batch gives the same names in the same order.
    pub metric_sums: Vec<(&'static str, f64)>,
}

/// A training objective the shared loop ([`train_objective`]) runs: where the micro-batches come
/// from and what one micro-batch's forward and backward computes.
///
/// The loop zeroes the gradients, sets the LoRA dropout seed of each micro-batch, calls
/// [`TrainObjective::forward_backward`] on each micro-batch of a step with
/// `grad_scale = 1 / (units of the whole step)`, then clips, steps the optimizer, checks for
/// divergence, logs and saves. An objective only has to accumulate `grad_scale ×` the gradient of
/// its loss *summed over the micro-batch's units* into the model's trainable tensors.
///
/// Resume: the data order must be a pure function of `(epoch, position)`
/// ([`TrainObjective::epoch_from`]); state that is not in the model (DPO's precomputed
/// reference log-probabilities) is handed to the loop by [`TrainObjective::state_tensors`],
/// saved with the recipe state, and given back by [`TrainObjective::restore_state`] before
/// [`TrainObjective::prepare`] on a resume.
pub trait TrainObjective<B: Backend> {
    /// One micro-batch.
    type Micro;

    /// What a unit is, plural, for messages ("label tokens", "pairs").
    fn unit_name(&self) -> &'static str;

    /// Micro-batches per epoch.
    fn batches_per_epoch(&self) -> usize;

    /// The micro-batches of epoch `epoch` from its `start`-th on, in the order an uninterrupted
    /// run sees them.
    fn epoch_from(&self, epoch: usize, start: usize) -> Box<dyn Iterator<Item = Self::Micro> + '_>;

    /// The normalising units of a micro-batch (label tokens for SFT, pairs for DPO).
    fn units(&self, micro: &Self::Micro) -> usize;

    /// Tokens of a micro-batch that a throughput figure counts (`label_tokens` and tokens/s in
    /// the metrics); the units by default. Asked after the micro-batch's pass.
    fn tokens(&self, micro: &Self::Micro) -> usize {
        self.units(micro)
    }

    /// Runs one micro-batch: forward, loss, backward, accumulating `grad_scale ×` the gradient
    /// of the loss summed over the micro-batch's units into the trainable tensors.
    fn forward_backward(
        &self,
        be: &B,
        model: &mut Llama<B>,
        micro: &Self::Micro,
        grad_scale: f32,
        checkpointing: ActivationCheckpointing,
    ) -> Result<MicroOutput>;

    /// Whether [`TrainObjective::forward_backward_stepping`] is implemented (`optimizer_in_bwd`).
    fn supports_optimizer_in_backward(&self) -> bool {
        false
    }

    /// [`TrainObjective::forward_backward`] with the optimizer step inside the backward
    /// ([`Llama::forward_backward_stepping`]): `update` is called on each trainable tensor once
    /// its gradient is complete. Only SFT has it.
    fn forward_backward_stepping(
        &self,
        _be: &B,
        _model: &mut Llama<B>,
        _micro: &Self::Micro,
        _grad_scale: f32,
        _checkpointing: ActivationCheckpointing,
        _update: &mut Update<'_, B>,
    ) -> Result<MicroOutput> {
        Err(Error::Input("optimizer_in_bwd is only available to the supervised fine-tuning recipes".into()))
    }

    /// Whether a step with units whose gradient is exactly zero means the run diverged (true for
    /// cross-entropy, whose gradient never vanishes; false for losses that can be flat, such as
    /// the hinge loss).
    fn zero_gradient_is_divergence(&self) -> bool {
        false
    }

    /// Called once before the first step, with the model as loaded (before a resume puts the
    /// saved weights in it, after [`TrainObjective::restore_state`]): e.g. DPO computes its
    /// reference log-probabilities here unless they were restored.
    fn prepare(&mut self, _be: &B, _model: &mut Llama<B>, _reporter: &mut dyn Reporter) -> Result<()> {
        Ok(())
    }

    /// The objective's own resume state, saved with every checkpoint's recipe state.
    fn state_tensors(&self) -> Vec<(String, Vec<f32>)> {
        Vec::new()
    }

    /// Gives back what [`TrainObjective::state_tensors`] saved (by name, in name order), on a
    /// resume; an empty list when the saved state has none.
    fn restore_state(&mut self, _tensors: Vec<(String, Vec<f32>)>) -> Result<()> {
        Ok(())
    }
}

/// Supervised fine-tuning: next-token cross-entropy over the label tokens, through the fused
/// head ([`Llama::forward_backward`]); units are label tokens.
pub struct Sft<'a> {
    loader: Loader<'a>,
}

impl<'a> Sft<'a> {
    /// SFT over the batches of `loader`.
    pub fn new(loader: &Loader<'a>) -> Self {
        Sft { loader: *loader }
    }
}

impl<B: Backend> TrainObjective<B> for Sft<'_> {
    type Micro = Batch;

    fn unit_name(&self) -> &'static str {
        "label tokens"
    }

    fn batches_per_epoch(&self) -> usize {
        self.loader.batches_per_epoch()
    }

    fn epoch_from(&self, epoch: usize, start: usize) -> Box<dyn Iterator<Item = Batch> + '_> {
        Box::new(self.loader.epoch_from(epoch, start))
    }

    fn units(&self, micro: &Batch) -> usize {
        micro.label_tokens
    }

    fn forward_backward(
        &self,
        be: &B,
        model: &mut Llama<B>,
        micro: &Batch,
        grad_scale: f32,
        checkpointing: ActivationCheckpointing,
    ) -> Result<MicroOutput> {
        let sum = model.forward_backward(be, &train_batch(micro), grad_scale, checkpointing)?.sum;
        Ok(MicroOutput { loss_sum: sum, metric_sums: Vec::new() })
    }

    fn supports_optimizer_in_backward(&self) -> bool {
        true
    }

    fn forward_backward_stepping(
        &self,
        be: &B,
        model: &mut Llama<B>,
        micro: &Batch,
        grad_scale: f32,
        checkpointing: ActivationCheckpointing,
        update: &mut Update<'_, B>,
    ) -> Result<MicroOutput> {
        let sum =
            model.forward_backward_stepping(be, &train_batch(micro), grad_scale, checkpointing, update)?.sum;
        Ok(MicroOutput { loss_sum: sum, metric_sums: Vec::new() })
    }

    fn zero_gradient_is_divergence(&self) -> bool {
        true
    }
}

/// The model's view of a data batch (shared by every recipe's objective).
pub(crate) fn train_batch(b: &Batch) -> TrainBatch<'_> {
    TrainBatch {
        ids: &b.ids,
        labels: &b.labels,
        positions: &b.positions,
        doc_ids: b.doc_ids.as_deref(),
        batch: b.batch,
        seq: b.seq,
    }
}

/// The error of a run that diverged at `step`: what broke, and that nothing of it was saved.
fn diverged(plan: &Plan, step: u64, what: &str, last_saved: Option<&Path>) -> Error {
    let kept = match last_saved {
        Some(p) => format!("the last good checkpoint, {}, is kept", p.display()),
        None => "no checkpoint was written by this run".to_string(),
    };
    Error::Input(format!(
        "training diverged at step {step}: {what}; stopped without saving this state ({kept}). \
         Lower optimizer.lr (it is {:e}){}",
        plan.schedule.base_lr,
        if plan.clip_grad_norm.is_none() { " or set clip_grad_norm" } else { "" }
    ))
}

/// The name of the first trainable tensor holding a NaN or an infinity, if any.
fn first_non_finite<B: Backend>(be: &B, model: &mut Llama<B>) -> Result<Option<String>> {
    let mut bad = None;
    model.visit_params_mut(&mut |name, p| {
        if bad.is_none() {
            let finite = match p {
                ParamMut::Weight(w, _) => be.weight_to_host(w)?.iter().all(|v| v.is_finite()),
                ParamMut::Buf(b, s) => be.sum_squares(b, s.len)?.is_finite(),
            };
            if !finite {
                bad = Some(name.to_string());
            }
        }
        Ok(())
    })?;
    Ok(bad)
}

/// Runs the loop with supervised fine-tuning ([`Sft`]) on `loader`'s batches. `save` writes the
/// model's checkpoint (HF weights / PEFT adapter) into a folder; the loop adds the recipe state
/// beside it.
pub fn train<B: Backend>(
    be: &B,
    model: &mut Llama<B>,
    loader: &Loader<'_>,
    plan: &Plan,
    save: &dyn SaveTarget<B>,
    reporter: &mut dyn Reporter,
) -> Result<Summary> {
    train_objective(be, model, &mut Sft::new(loader), plan, save, reporter)
}

/// Runs the loop on `objective` (see [`TrainObjective`]). `save` writes the model's checkpoint
/// (HF weights / PEFT adapter) into a folder; the loop adds the recipe state (with the
/// objective's own) beside it.
pub fn train_objective<B: Backend, O: TrainObjective<B>>(
    be: &B,
    model: &mut Llama<B>,
    objective: &mut O,
    plan: &Plan,
    save: &dyn SaveTarget<B>,
    reporter: &mut dyn Reporter,
) -> Result<Summary> {
    if plan.grad_accum == 0 || plan.epochs == 0 || plan.log_every_n_steps == 0 {
        return Err(Error::Input(
            "epochs, gradient_accumulation_steps and log_every_n_steps must be at least 1".into(),
        ));
    }
    let batches = objective.batches_per_epoch();
    let mut steps_per_epoch = batches / plan.grad_accum;
    if let Some(max) = plan.max_steps_per_epoch {
        steps_per_epoch = steps_per_epoch.min(max);
    }
    if steps_per_epoch == 0 {
        return Err(Error::Input(format!(
            "the dataset gives {batches} batches per epoch, fewer than gradient_accumulation_steps = {}",
            plan.grad_accum
        )));
    }
    if plan.optimizer_in_backward && (plan.grad_accum != 1 || plan.clip_grad_norm.is_some()) {
        return Err(Error::Input(
            "optimizer_in_bwd needs gradient_accumulation_steps = 1 and no clip_grad_norm".into(),
        ));
    }
    if plan.optimizer_in_backward && !objective.supports_optimizer_in_backward() {
        return Err(Error::Input(format!(
            "optimizer_in_bwd is not available with this recipe's objective (it normalises by {})",
            objective.unit_name()
        )));
    }
    if plan.optimizer_in_backward {
        model.share_layer_gradients(be)?;
    }
    let mut total_steps = steps_per_epoch * plan.epochs;
    let mut optimizer = Optimizer::new(plan.adamw);
    std::fs::create_dir_all(&plan.output_dir)
        .map_err(|source| Error::Io { path: plan.output_dir.clone(), source })?;

    let (mut epoch, mut step_in_epoch) = (0usize, 0usize);
    let mut last_saved: Option<PathBuf> = None;
    if plan.resume {
        objective.restore_state(super::state::load_objective_state(&plan.output_dir)?)?;
    }
    // The objective sees the model as loaded, before a resume puts the saved weights in it.
    objective.prepare(be, model, reporter)?;
    if plan.resume {
        let state = RecipeState::load(&plan.output_dir, be, model)?;
        optimizer.step = state.optimizer_step;
        epoch = state.epoch;
        step_in_epoch = state.step_in_epoch;
        reporter.note(&format!(
            "resumed from {} at step {} (epoch {epoch}, step {step_in_epoch} of the epoch)",
            plan.output_dir.display(),
            state.optimizer_step
        ));
        last_saved = Some(plan.output_dir.join("recipe_state"));
        // A longer epoch (max_steps_per_epoch raised) continues the epoch the saved run ended at
        // its old cap; a shorter one ends the current epoch where it now ends.
        match state.steps_per_epoch {
            Some(old) if old < steps_per_epoch && step_in_epoch == 0 && epoch > 0 => {
                epoch -= 1;
                step_in_epoch = old;
                reporter.note(&format!(
                    "epochs now have {steps_per_epoch} optimizer steps (the saved run had {old}): \
                     continuing epoch {epoch} from its step {old}"
                ));
            }
            _ if step_in_epoch >= steps_per_epoch => {
                reporter.note(&format!(
                    "epochs now have {steps_per_epoch} optimizer steps and epoch {epoch} already has \
                     {step_in_epoch}: going on with epoch {}",
                    epoch + 1
                ));
                epoch += 1;
                step_in_epoch = 0;
            }
            _ => {}
        }
        let remaining = if epoch < plan.epochs {
            (steps_per_epoch - step_in_epoch) + steps_per_epoch * (plan.epochs - epoch - 1)
        } else {
            0
        };
        if remaining == 0 {
            return Err(Error::Input(format!(
                "resume_from_checkpoint: the run in {} has already taken its {} optimizer steps ({} \
                 epochs of at most {steps_per_epoch} steps): nothing is left to train; raise epochs or \
                 max_steps_per_epoch to train longer",
                plan.output_dir.display(),
                state.optimizer_step,
                plan.epochs
            )));
        }
        total_steps = state.optimizer_step as usize + remaining;
    }
    // The learning-rate schedule spans the whole run as now configured (see
    // `recipes::run::check_resume` for what that means when a resume lengthens it).
    let schedule = Schedule { total_steps, ..plan.schedule };
    let resumed_at = plan.resume.then_some(optimizer.step);
    let (mut metrics_file, dropped) = MetricsFile::open_from(&plan.output_dir, resumed_at)?;
    if dropped > 0 {
        reporter.note(&match resumed_at {
            Some(at) => format!(
                "metrics.jsonl: dropped {dropped} rows of steps after {at}, the step this run resumes from"
            ),
            None => format!("metrics.jsonl: dropped {dropped} rows of an earlier run in this folder"),
        });
    }
    let mut events = super::tensorboard::EventWriter::create(&plan.output_dir.join("tensorboard"))?;
    reporter.start(
        total_steps,
        &format!("{total_steps} steps ({steps_per_epoch} per epoch × {} epochs)", plan.epochs),
    );
    let t_run = Instant::now();
    let mut summary = Summary::default();
    let mut steps_this_process = 0usize;

    while epoch < plan.epochs {
        let mut micro = objective.epoch_from(epoch, step_in_epoch * plan.grad_accum);
        while step_in_epoch < steps_per_epoch {
            if plan.stop_after_steps.is_some_and(|n| steps_this_process >= n) {
                summary.steps = optimizer.step as usize;
                reporter.finish("stopped early as asked");
                return Ok(summary);
            }
            let t_step = Instant::now();
            let group: Vec<O::Micro> = (&mut micro).take(plan.grad_accum).collect();
            if group.len() < plan.grad_accum {
                break;
            }
            let units: usize = group.iter().map(|b| objective.units(b)).sum();
            let lr = schedule.lr(optimizer.step as usize);
            let mut loss_sum = 0.0;
            let mut metric_sums: Vec<(&'static str, f64)> = Vec::new();
            let mut add = |out: MicroOutput| {
                if metric_sums.is_empty() {
                    metric_sums = out.metric_sums;
                } else {
                    for ((_, s), (_, v)) in metric_sums.iter_mut().zip(out.metric_sums) {
                        *s += v;
                    }
                }
                out.loss_sum
            };
            let norm;
            if plan.optimizer_in_backward {
                // Gradients are zero here (each is zeroed after its update); a step without
                // label tokens still counts, as in the other branch, with zero gradients.
                let hp = optimizer.begin_step(lr);
                let mut squares = 0.0;
                let scale = 1.0 / units.max(1) as f32;
                let b = &group[0];
                let mix = optimizer.step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                model.set_dropout_seed(Some(plan.seed ^ mix));
                loss_sum = add(objective.forward_backward_stepping(
                    be,
                    model,
                    b,
                    scale,
                    plan.activation_checkpointing,
                    &mut |_, p| {
                        let s = p.state();
                        squares += be.sum_squares(&s.grad, s.len)?;
                        update(be, p, &hp)
                    },
                )?);
                model.set_dropout_seed(None);
                norm = squares.sqrt();
            } else {
                model.zero_grads(be)?;
                if units > 0 {
                    let scale = 1.0 / units as f32;
                    for (k, b) in group.iter().enumerate() {
                        let mix = (optimizer.step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64) << 48;
                        model.set_dropout_seed(Some(plan.seed ^ mix));
                        loss_sum += add(objective.forward_backward(
                            be,
                            model,
                            b,
                            scale,
                            plan.activation_checkpointing,
                        )?);
                    }
                }
                model.set_dropout_seed(None);
                norm = match plan.clip_grad_norm {
                    Some(max) => clip_grad_norm(be, model, max)?,
                    None => grad_norm(be, model)?,
                };
                optimizer.step(be, model, lr)?;
            }
            // After the passes: an objective that makes its data in the pass (GRPO's sampling)
            // knows its tokens only then.
            let label_tokens: usize = group.iter().map(|b| objective.tokens(b)).sum();
            step_in_epoch += 1;
            steps_this_process += 1;
            let loss = if units > 0 { loss_sum / units as f64 } else { 0.0 };
            let extra: Vec<(&'static str, f64)> = metric_sums
                .into_iter()
                .map(|(k, v)| (k, if units > 0 { v / units as f64 } else { 0.0 }))
                .collect();
            let broken = if !loss.is_finite() {
                Some(format!("the loss is {loss}"))
            } else if !norm.is_finite() {
                Some(format!("the gradient norm is {norm}"))
            } else if norm == 0.0 && units > 0 && objective.zero_gradient_is_divergence() {
                // A step with label tokens always has a gradient (softmax − one-hot is never
                // zero), unless the activations overflowed: RMSNorm then divides by ∞, the model's
                // output no longer depends on its weights, and the loss sits at ln(vocab).
                Some(format!(
                    "the gradient norm is exactly 0 over {units} {} (loss {loss:.4}): the \
                     activations overflowed and the output no longer depends on the weights",
                    objective.unit_name()
                ))
            } else {
                None
            };
            if let Some(what) = broken {
                return Err(diverged(plan, optimizer.step, &what, last_saved.as_deref()));
            }
            summary.losses.push(loss);
            let secs = t_step.elapsed().as_secs_f64();
            let m = StepMetrics {
                step: optimizer.step as usize,
                total_steps,
                epoch,
                loss,
                lr,
                grad_norm: norm,
                label_tokens,
                tokens_per_sec: label_tokens as f64 / secs.max(1e-9),
                elapsed_secs: t_run.elapsed().as_secs_f64(),
                peak_rss_bytes: peak_rss_bytes(),
                peak_device_bytes: be.peak_memory(),
                extra,
            };
            if m.step.is_multiple_of(plan.log_every_n_steps) || m.step == total_steps {
                metrics_file.write(&m)?;
                let names: Vec<String> = m.extra.iter().map(|(k, _)| format!("train/{k}")).collect();
                let mut scalars: Vec<(&str, f32)> = vec![
                    ("train/loss", m.loss as f32),
                    ("train/lr", m.lr as f32),
                    ("train/grad_norm", m.grad_norm as f32),
                    ("train/tokens_per_sec", m.tokens_per_sec as f32),
                ];
                scalars.extend(names.iter().zip(&m.extra).map(|(n, (_, v))| (n.as_str(), *v as f32)));
                events.scalars(m.step as u64, &scalars)?;
            }
            reporter.step(&m);
            let epoch_done = step_in_epoch == steps_per_epoch;
            let periodic = plan.save_every_n_steps.is_some_and(|n| m.step.is_multiple_of(n));
            if periodic || epoch_done {
                let (e, s) = if epoch_done { (epoch + 1, 0) } else { (epoch, step_in_epoch) };
                let name = if epoch_done { format!("epoch_{epoch}") } else { format!("step_{}", m.step) };
                let dir = plan.output_dir.join(&name);
                // The training buffers are as large as all saved activations: free them while
                // merged weights and checkpoints are built (the next step allocates them again).
                model.release_train_buffers();
                if let Some(name) = first_non_finite(be, model)? {
                    let what = format!("the weights are not finite after the update (`{name}`)");
                    return Err(diverged(plan, optimizer.step, &what, last_saved.as_deref()));
                }
                save.save(be, model, &dir)?;
                let state = RecipeState {
                    optimizer_step: optimizer.step,
                    epoch: e,
                    step_in_epoch: s,
                    steps_per_epoch: Some(steps_per_epoch),
                };
                state.save_with(
                    &plan.output_dir,
                    be,
                    model,
                    plan.recipe_config.as_deref(),
                    plan.data_fingerprint.as_deref(),
                    &objective.state_tensors(),
                )?;
                reporter.note(&format!("saved {}", dir.display()));
                last_saved = Some(dir.clone());
                summary.checkpoints.push(dir);
            }
        }
        epoch += 1;
        step_in_epoch = 0;
    }
    summary.steps = optimizer.step as usize;
    drop(metrics_file);
    // The run's chart; a drawing failure is reported, not fatal to a finished run.
    match crate::plot::plot_run_dir(&plan.output_dir) {
        Ok((png, svg)) => reporter.note(&format!("charts: {} and {}", png.display(), svg.display())),
        Err(e) => reporter.note(&format!("no chart drawn: {e}")),
    }
    reporter.finish(&format!("done: {} steps", summary.steps));
    Ok(summary)
}
