//! The fine-tuning loop shared by `full_finetune` and `lora_finetune`: micro-batches are
//! grouped into optimizer steps (gradient accumulation normalised by the step's total number of
//! label tokens), gradients are clipped, AdamW steps with a scheduled learning rate, metrics are
//! logged, and checkpoints plus the full recipe state are saved so that a killed run resumes
//! bit for bit.

use std::path::PathBuf;
use std::time::Instant;

use afinar_data::{Batch, Loader};
use afinar_engine::Backend;

use super::metrics::{peak_rss_bytes, MetricsFile, Reporter, StepMetrics};
use super::optim::{clip_grad_norm, grad_norm, update, AdamWConfig, Optimizer};
use super::schedule::Schedule;
use super::state::{RecipeState, SaveTarget};
use crate::models::{ActivationCheckpointing, Llama, TrainBatch};
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

fn train_batch(b: &Batch) -> TrainBatch<'_> {
    TrainBatch {
        ids: &b.ids,
        labels: &b.labels,
        positions: &b.positions,
        doc_ids: b.doc_ids.as_deref(),
        batch: b.batch,
        seq: b.seq,
    }
}

/// Runs the loop. `save` writes the model's checkpoint (HF weights / PEFT adapter) into a
/// folder; the loop adds the recipe state beside it.
pub fn train<B: Backend>(
    be: &B,
    model: &mut Llama<B>,
    loader: &Loader<'_>,
    plan: &Plan,
    save: &dyn SaveTarget<B>,
    reporter: &mut dyn Reporter,
) -> Result<Summary> {
    if plan.grad_accum == 0 || plan.epochs == 0 || plan.log_every_n_steps == 0 {
        return Err(Error::Input(
            "epochs, gradient_accumulation_steps and log_every_n_steps must be at least 1".into(),
        ));
    }
    let batches = loader.batches_per_epoch();
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
    if plan.optimizer_in_backward {
        model.share_layer_gradients(be)?;
    }
    let total_steps = steps_per_epoch * plan.epochs;
    let schedule = Schedule { total_steps, ..plan.schedule };
    let mut optimizer = Optimizer::new(plan.adamw);
    std::fs::create_dir_all(&plan.output_dir)
        .map_err(|source| Error::Io { path: plan.output_dir.clone(), source })?;

    let (mut epoch, mut step_in_epoch) = (0usize, 0usize);
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
    }
    let mut metrics_file = MetricsFile::open(&plan.output_dir)?;
    let mut events = super::tensorboard::EventWriter::create(&plan.output_dir.join("tensorboard"))?;
    reporter.start(
        total_steps,
        &format!("{total_steps} steps ({steps_per_epoch} per epoch × {} epochs)", plan.epochs),
    );
    let t_run = Instant::now();
    let mut summary = Summary::default();
    let mut steps_this_process = 0usize;

    while epoch < plan.epochs {
        let mut micro = loader.epoch_from(epoch, step_in_epoch * plan.grad_accum);
        while step_in_epoch < steps_per_epoch {
            if plan.stop_after_steps.is_some_and(|n| steps_this_process >= n) {
                summary.steps = optimizer.step as usize;
                reporter.finish("stopped early as asked");
                return Ok(summary);
            }
            let t_step = Instant::now();
            let group: Vec<Batch> = (&mut micro).take(plan.grad_accum).collect();
            if group.len() < plan.grad_accum {
                break;
            }
            let label_tokens: usize = group.iter().map(|b| b.label_tokens).sum();
            let lr = schedule.lr(optimizer.step as usize);
            let mut loss_sum = 0.0;
            let norm;
            if plan.optimizer_in_backward {
                // Gradients are zero here (each is zeroed after its update); a step without
                // label tokens still counts, as in the other branch, with zero gradients.
                let hp = optimizer.begin_step(lr);
                let mut squares = 0.0;
                let scale = 1.0 / label_tokens.max(1) as f32;
                let b = &group[0];
                let mix = optimizer.step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                model.set_dropout_seed(Some(plan.seed ^ mix));
                loss_sum = model
                    .forward_backward_stepping(
                        be,
                        &train_batch(b),
                        scale,
                        plan.activation_checkpointing,
                        &mut |_, p| {
                            let s = p.state();
                            squares += be.sum_squares(&s.grad, s.len)?;
                            update(be, p, &hp)
                        },
                    )?
                    .sum;
                model.set_dropout_seed(None);
                norm = squares.sqrt();
            } else {
                model.zero_grads(be)?;
                if label_tokens > 0 {
                    let scale = 1.0 / label_tokens as f32;
                    for (k, b) in group.iter().enumerate() {
                        let mix = (optimizer.step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64) << 48;
                        model.set_dropout_seed(Some(plan.seed ^ mix));
                        loss_sum += model
                            .forward_backward(be, &train_batch(b), scale, plan.activation_checkpointing)?
                            .sum;
                    }
                }
                model.set_dropout_seed(None);
                norm = match plan.clip_grad_norm {
                    Some(max) => clip_grad_norm(be, model, max)?,
                    None => grad_norm(be, model)?,
                };
                optimizer.step(be, model, lr)?;
            }
            step_in_epoch += 1;
            steps_this_process += 1;
            let loss = if label_tokens > 0 { loss_sum / label_tokens as f64 } else { 0.0 };
            if !loss.is_finite() {
                return Err(Error::Input(format!(
                    "the loss became {loss} at step {}; lower the learning rate or enable clip_grad_norm",
                    optimizer.step
                )));
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
            };
            if m.step.is_multiple_of(plan.log_every_n_steps) || m.step == total_steps {
                metrics_file.write(&m)?;
                events.scalars(
                    m.step as u64,
                    &[
                        ("train/loss", m.loss as f32),
                        ("train/lr", m.lr as f32),
                        ("train/grad_norm", m.grad_norm as f32),
                        ("train/tokens_per_sec", m.tokens_per_sec as f32),
                    ],
                )?;
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
                save.save(be, model, &dir)?;
                RecipeState { optimizer_step: optimizer.step, epoch: e, step_in_epoch: s }.save(
                    &plan.output_dir,
                    be,
                    model,
                )?;
                reporter.note(&format!("saved {}", dir.display()));
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
