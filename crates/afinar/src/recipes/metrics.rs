//! What a training run reports: per-step metrics (also appended as JSON lines to
//! `metrics.jsonl` in the output folder, and as TensorBoard scalars to its `tensorboard/` folder,
//! see [`super::tensorboard`]) and the events a progress display needs.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Metrics of one optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    /// Optimizer step, from 1.
    pub step: usize,
    /// Total optimizer steps of the run.
    pub total_steps: usize,
    /// Epoch, from 0.
    pub epoch: usize,
    /// Mean token loss of the step.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Label tokens (non-masked) in the step.
    pub label_tokens: usize,
    /// Label tokens per second over this step.
    pub tokens_per_sec: f64,
    /// Seconds since the run started.
    pub elapsed_secs: f64,
    /// Peak resident memory of the process so far, in bytes (0 when unknown).
    pub peak_rss_bytes: u64,
    /// Peak device memory held by the backend's buffers so far, in bytes (GPU backends).
    pub peak_device_bytes: Option<u64>,
    /// The objective's own metrics for the step, by name (`rewards/chosen`, `kd_loss`, …; empty
    /// for SFT), each a mean over the step's units (see
    /// [`TrainObjective`](super::finetune::TrainObjective)).
    pub extra: Vec<(&'static str, f64)>,
}

impl StepMetrics {
    /// One JSON object on one line.
    pub fn to_json_line(&self) -> String {
        let mut j = serde_json::json!({
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "loss": self.loss,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "label_tokens": self.label_tokens,
            "tokens_per_sec": self.tokens_per_sec,
            "elapsed_secs": self.elapsed_secs,
            "peak_rss_mb": self.peak_rss_bytes as f64 / 1e6,
        });
        if let Some(b) = self.peak_device_bytes {
            j["peak_device_mb"] = serde_json::json!(b as f64 / 1e6);
        }
        for &(name, v) in &self.extra {
            j[name] = serde_json::json!(v);
        }
        j.to_string()
    }
}

/// Receives a run's events; the CLI draws a progress bar or prints plain lines.
pub trait Reporter {
    /// The run is about to start.
    fn start(&mut self, total_steps: usize, message: &str);
    /// An optimizer step finished.
    fn step(&mut self, m: &StepMetrics);
    /// Something worth a line (checkpoint saved, resumed, …).
    fn note(&mut self, message: &str);
    /// The run ended.
    fn finish(&mut self, message: &str);
}

/// A reporter that prints nothing (library use, tests).
pub struct Silent;

impl Reporter for Silent {
    fn start(&mut self, _: usize, _: &str) {}
    fn step(&mut self, _: &StepMetrics) {}
    fn note(&mut self, _: &str) {}
    fn finish(&mut self, _: &str) {}
}

/// Appends metrics to `metrics.jsonl`.
pub struct MetricsFile {
    path: PathBuf,
    file: std::fs::File,
}

/// The step of a `metrics.jsonl` row, if the line is one.
fn row_step(line: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(line).ok()?.get("step")?.as_u64()
}

impl MetricsFile {
    /// Opens (appending) `dir/metrics.jsonl`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| Error::Io { path: path.clone(), source })?;
        Ok(Self { path, file })
    }

    /// Opens `dir/metrics.jsonl` for a run that continues after optimizer step `resumed_at`
    /// (`None`: a run from the start): rows of later steps (written after the checkpoint the
    /// run resumes from, or by an earlier run in this folder) are dropped first, so that the file
    /// holds each step once. The file is rewritten atomically; returns it and the number of rows
    /// dropped.
    pub fn open_from(dir: &Path, resumed_at: Option<u64>) -> Result<(Self, usize)> {
        let path = dir.join("metrics.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let keep = |line: &&str| match (row_step(line), resumed_at) {
            (Some(step), Some(at)) => step <= at,
            (Some(_), None) => false,
            // Not a metrics row: not ours to drop.
            (None, _) => !line.trim().is_empty(),
        };
        let kept: Vec<&str> = text.lines().filter(keep).collect();
        let dropped = text.lines().filter(|l| !l.trim().is_empty()).count() - kept.len();
        if dropped > 0 {
            let mut out = kept.join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            afinar_checkpoint::write::write_atomic(&path, |w| w.write_all(out.as_bytes()))?;
        }
        Ok((Self::open(dir)?, dropped))
    }

    /// Writes one step.
    pub fn write(&mut self, m: &StepMetrics) -> Result<()> {
        writeln!(self.file, "{}", m.to_json_line())
            .map_err(|source| Error::Io { path: self.path.clone(), source })
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), 0 elsewhere.
pub fn peak_rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
