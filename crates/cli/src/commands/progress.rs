//! How a training run shows its progress: a progress bar on a terminal, plain lines otherwise
//! (logs, CI), one per logged step.

use std::io::IsTerminal;

use afinar::recipes::metrics::{Reporter, StepMetrics};
use indicatif::{ProgressBar, ProgressStyle};

/// A [`Reporter`] for the terminal.
pub struct Progress {
    bar: Option<ProgressBar>,
    log_every: usize,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines every `log_every` steps otherwise.
    pub fn new(log_every: usize) -> Self {
        Self { bar: std::io::stderr().is_terminal().then(ProgressBar::hidden), log_every: log_every.max(1) }
    }
}

fn line(m: &StepMetrics) -> String {
    let device =
        m.peak_device_bytes.map(|b| format!(" | device {:.2} GB", b as f64 / 1e9)).unwrap_or_default();
    let extra: String = m.extra.iter().map(|(k, v)| format!(" | {k} {v:.4}")).collect();
    format!(
        "loss {:.4}{extra} | lr {:.2e} | {:.0} tok/s | grad {:.3} | {:.2} GB{device}",
        m.loss,
        m.lr,
        m.tokens_per_sec,
        m.grad_norm,
        m.peak_rss_bytes as f64 / 1e9
    )
}

impl Reporter for Progress {
    fn start(&mut self, total_steps: usize, message: &str) {
        eprintln!("afinar: {message}");
        if let Some(bar) = &mut self.bar {
            *bar = ProgressBar::new(total_steps as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                    .expect("a valid progress template"),
            );
        }
    }

    fn step(&mut self, m: &StepMetrics) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(m.step as u64);
                bar.set_message(line(m));
            }
            None if m.step.is_multiple_of(self.log_every) || m.step == m.total_steps => {
                eprintln!("step {}/{} (epoch {}) | {}", m.step, m.total_steps, m.epoch, line(m));
            }
            None => {}
        }
    }

    fn note(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("afinar: {message}")),
            None => eprintln!("afinar: {message}"),
        }
    }

    fn finish(&mut self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!("afinar: {message}");
    }
}

/// A progress bar per downloaded file on a terminal, a line per file otherwise.
pub struct DownloadBars {
    bar: Option<ProgressBar>,
    terminal: bool,
}

impl DownloadBars {
    /// Bars when stderr is a terminal.
    pub fn new() -> Self {
        Self { bar: None, terminal: std::io::stderr().is_terminal() }
    }
}

impl afinar::hub::Progress for DownloadBars {
    fn file_start(&mut self, file: &str, total: u64, done: u64) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
        if !self.terminal {
            let resume =
                if done > 0 { format!(", resuming at {:.1} MB", done as f64 / 1e6) } else { String::new() };
            eprintln!("afinar: downloading {file} ({:.1} MB{resume})", total as f64 / 1e6);
            return;
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:30!} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {eta:>4}",
            )
            .expect("a valid progress template"),
        );
        bar.set_message(file.to_string());
        bar.set_position(done);
        self.bar = Some(bar);
    }

    fn file_bytes(&mut self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    fn file_done(&mut self, _file: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }

    fn note(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("afinar: {message}")),
            None => eprintln!("afinar: {message}"),
        }
    }
}

impl Drop for DownloadBars {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}
