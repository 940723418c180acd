//! Fine-tuning recipes: the training loop that ties a model, a dataset, the optimizer and
//! checkpointing together.

pub mod finetune;
pub mod metrics;
pub mod optim;
pub mod run;
pub mod save;
pub mod schedule;
pub mod state;
pub mod tensorboard;

pub use run::run;
