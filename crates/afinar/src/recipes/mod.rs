//! Fine-tuning recipes: the training loop that ties a model, a dataset, the optimizer and
//! checkpointing together, and the [`registry`](mod@registry) of recipes.
//!
//! A recipe is one unit: one module declares it as a [`RecipeSpec`] (name, description, the
//! config sections and keys only it has, the dataset kinds it reads with their column roles,
//! its built-in configs and its `run` function), and everything else — `afinar ls`, `cp`,
//! `cat`, `validate`, `run`, the config checker with its `file:line:col` errors and "did you
//! mean" hints, `~key` deletions, `RecipeConfig::to_yaml` — reads the registry.
//!
//! # Adding a recipe
//!
//! 1. `crates/afinar/src/recipes/<name>.rs`: `pub static SPEC: RecipeSpec`, with its own
//!    sections and keys declared there as [`SectionDecl`](crate::config::SectionDecl)s and
//!    [`KeyDecl`](crate::config::KeyDecl)s (type, range or words, default, doc line); their
//!    checked values are in [`RecipeConfig::extra`](crate::config::RecipeConfig::extra) under
//!    their dotted paths (`loss.beta`), read by the recipe's `run`; rules across keys (a key
//!    that only applies to one `loss.kind`) go in its `check`, whose errors point at the key.
//! 2. `crates/afinar/src/recipes/registry.rs`: add `&<name>::SPEC` to [`registry()`], and
//!    `pub mod <name>;` in this file.
//! 3. `configs/<config>.yaml` for each built-in config, listed with `builtin_config!` in the
//!    recipe's `configs`.
//! 4. If needed, a loss in the engine's backend, and a dataset kind: its reader in
//!    `afinar-data`, a word in [`DatasetKind`](crate::config::DatasetKind)
//!    (`config/types.rs`) and its mapping in [`run::dataset_spec`]; the recipe declares which
//!    kinds it reads, with their column roles, in `dataset_kinds`.
//!
//! 5. A new objective trains through the shared loop: implement
//!    [`finetune::TrainObjective`] (micro-batches, units, `forward_backward`, optional extra
//!    resume state) and call [`finetune::train_objective`] from the recipe's `run` (see
//!    [`dpo`]); [`run::prepare_model`] loads the model, LoRA and the checkpoint writer as the
//!    other recipes do.
//!
//! Nothing in `config/schema.rs`, `config/keys.rs` or the CLI changes.

pub mod dpo;
pub mod finetune;
pub mod full_finetune;
pub mod grpo;
pub mod knowledge_distillation;
pub mod lora_finetune;
pub mod metrics;
pub mod optim;
pub mod registry;
pub mod run;
pub mod save;
pub mod schedule;
pub mod state;
pub mod teacher;
pub mod tensorboard;

pub use registry::{find, registry, RecipeCheck, RecipeSpec};
pub use run::run;
