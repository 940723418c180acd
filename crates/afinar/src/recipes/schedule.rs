//! Learning-rate schedules with warmup, as Hugging Face's `get_*_schedule_with_warmup` define
//! them (which torchtune uses): the value for optimizer step `s` (0-based) is
//! `base_lr · factor(s)`.

/// Shape of the schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    /// Half a cosine from 1 down to `min_lr_ratio`.
    Cosine,
    /// Straight line down to 0.
    Linear,
    /// Stays at 1.
    Constant,
}

/// A learning-rate schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub base_lr: f64,
    /// Shape after warmup.
    pub kind: ScheduleKind,
    /// Linear warmup from 0 over this many steps.
    pub warmup_steps: usize,
    /// Steps in the whole run.
    pub total_steps: usize,
    /// Floor of the cosine, as a fraction of `base_lr`.
    pub min_lr_ratio: f64,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        self.base_lr * self.factor(step)
    }

    fn factor(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = (step - self.warmup_steps) as f64 / decay_steps;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((self.total_steps as f64 - step as f64) / decay_steps).max(0.0),
            ScheduleKind::Cosine => {
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                let f = cos.max(0.0);
                f * (1.0 - self.min_lr_ratio) + self.min_lr_ratio
            }
        }
    }
}
