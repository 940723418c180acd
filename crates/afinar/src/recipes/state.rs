//! Recipe state for exact resume: every trainable tensor with its AdamW moments, the optimizer
//! step and the position in the data, saved atomically as `recipe_state/` in the output folder.
//! The data order is a pure function of (seed, epoch) and dropout masks of (seed, step), so
//! nothing else is needed to continue a run bit for bit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use afinar_checkpoint::safetensors::SafetensorsCheckpoint;
use afinar_checkpoint::write::{save_safetensors_with, write_dir_atomic, TensorMeta, TensorSink};
use afinar_checkpoint::DType;
use afinar_engine::{Backend, WeightFormat};

use crate::models::{Llama, ParamMut};
use crate::{Error, Result};

const STATE_DIR: &str = "recipe_state";
const STATE_FILE: &str = "state.safetensors";

/// Writes a model checkpoint (the weights a user takes away) into a folder.
pub trait SaveTarget<B: Backend> {
    /// Writes the checkpoint of `model` into `dir` (replacing it atomically).
    fn save(&self, be: &B, model: &Llama<B>, dir: &Path) -> Result<()>;
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipeState {
    /// Optimizer steps taken.
    pub optimizer_step: u64,
    /// Epoch to continue in.
    pub epoch: usize,
    /// Optimizer steps already done in that epoch.
    pub step_in_epoch: usize,
    /// Optimizer steps per epoch of the run that saved this state (`None` in states written
    /// before it was recorded): lets a resume with a longer epoch continue the epoch the saved
    /// run ended early.
    pub steps_per_epoch: Option<usize>,
}

/// The metadata key of the state file that holds the run's resolved config (YAML).
pub const CONFIG_KEY: &str = "recipe_config";

/// The metadata key of the state file that holds the fingerprint of the run's tokenized data
/// ([`afinar_data::Dataset`]'s samples): a resume on edited data is caught even when the file's
/// path is the same.
pub const DATA_KEY: &str = "data_fingerprint";

/// The value of metadata `key` of the recipe state saved in `output_dir`, if there is a state
/// and it has that key (states written by older versions have neither config nor fingerprint).
pub fn saved_value(output_dir: &Path, key: &str) -> Result<Option<String>> {
    let path = state_path(output_dir);
    if !path.exists() {
        return Ok(None);
    }
    let ckpt = SafetensorsCheckpoint::open(&path)?;
    Ok(ckpt.metadata().and_then(|m| m.get(key)).cloned())
}

/// The prefix of an objective's own tensors in the state file.
const OBJECTIVE_PREFIX: &str = "objective.";

/// The objective's own resume state saved by [`RecipeState::save_with`] in `output_dir`, as
/// `(name, values)` in name order; empty when there is no state or it has none.
pub fn load_objective_state(output_dir: &Path) -> Result<Vec<(String, Vec<f32>)>> {
    let path = state_path(output_dir);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let ckpt = SafetensorsCheckpoint::open(&path)?;
    let mut names: Vec<String> =
        ckpt.names().into_iter().filter(|n| n.starts_with(OBJECTIVE_PREFIX)).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let v = ckpt.tensor(&n)?.to_f32()?;
            Ok((n[OBJECTIVE_PREFIX.len()..].to_string(), v))
        })
        .collect()
}

fn state_path(output_dir: &Path) -> PathBuf {
    output_dir.join(STATE_DIR).join(STATE_FILE)
}

impl RecipeState {
    /// Saves this state with every trainable tensor and its moments, streamed one tensor at a
    /// time (the optimizer state is twice the trainable weights: it never sits on the host whole),
    /// and `config`, the run's resolved config (YAML), and `data`, the fingerprint of its
    /// tokenized data, that a resume compares with its own.
    pub fn save<B: Backend>(
        &self,
        output_dir: &Path,
        be: &B,
        model: &mut Llama<B>,
        config: Option<&str>,
        data: Option<&str>,
    ) -> Result<()> {
        self.save_with(output_dir, be, model, config, data, &[])
    }

    /// [`RecipeState::save`] with an objective's own resume state (e.g. DPO's cached reference
    /// log-probabilities): each `(name, values)` is stored as tensor `objective.<name>`, read
    /// back by [`load_objective_state`].
    pub fn save_with<B: Backend>(
        &self,
        output_dir: &Path,
        be: &B,
        model: &mut Llama<B>,
        config: Option<&str>,
        data: Option<&str>,
        objective: &[(String, Vec<f32>)],
    ) -> Result<()> {
        // First the names and shapes, then the values in the same order.
        let mut metas: Vec<TensorMeta> = Vec::new();
        model.visit_params_mut(&mut |name, p| {
            let shape = match p {
                ParamMut::Weight(w, _) => {
                    let (r, c) = be.weight_shape(w);
                    vec![r, c]
                }
                ParamMut::Buf(_, s) => vec![s.len],
            };
            for suffix in ["", ".exp_avg", ".exp_avg_sq"] {
                metas.push((format!("{name}{suffix}"), DType::F32, shape.clone()));
            }
            Ok(())
        })?;
        for (name, values) in objective {
            metas.push((format!("{OBJECTIVE_PREFIX}{name}"), DType::F32, vec![values.len()]));
        }
        let mut meta = BTreeMap::new();
        meta.insert("afinar_recipe_state".to_string(), "1".to_string());
        meta.insert("optimizer_step".to_string(), self.optimizer_step.to_string());
        meta.insert("epoch".to_string(), self.epoch.to_string());
        meta.insert("step_in_epoch".to_string(), self.step_in_epoch.to_string());
        if let Some(n) = self.steps_per_epoch {
            meta.insert("steps_per_epoch".to_string(), n.to_string());
        }
        if let Some(c) = config {
            meta.insert(CONFIG_KEY.to_string(), c.to_string());
        }
        if let Some(d) = data {
            meta.insert(DATA_KEY.to_string(), d.to_string());
        }
        write_dir_atomic(output_dir.join(STATE_DIR), |tmp: &Path| -> Result<()> {
            save_safetensors_with(
                tmp.join(STATE_FILE),
                &metas,
                &meta,
                |sink: &mut TensorSink<'_>| -> Result<()> {
                    model.visit_params_mut(&mut |_, p| {
                        let (value, s) = match p {
                            ParamMut::Weight(w, s) => (be.weight_to_host(w)?, s),
                            ParamMut::Buf(b, s) => (be.to_host(b)?, s),
                        };
                        let n = s.len;
                        sink.write_f32(&value[..n])?;
                        drop(value);
                        sink.write_f32(&be.to_host(&s.m)?[..n])?;
                        sink.write_f32(&be.to_host(&s.v)?[..n])?;
                        Ok(())
                    })?;
                    for (_, values) in objective {
                        sink.write_f32(values)?;
                    }
                    Ok(())
                },
            )
        })
    }

    /// Loads the state saved in `output_dir` into `model` (which must have been made trainable
    /// the same way) and returns the position to continue from.
    pub fn load<B: Backend>(output_dir: &Path, be: &B, model: &mut Llama<B>) -> Result<Self> {
        let path = state_path(output_dir);
        if !path.exists() {
            return Err(Error::Input(format!(
                "resume_from_checkpoint is set but {} does not exist: nothing to resume",
                path.display()
            )));
        }
        let ckpt = SafetensorsCheckpoint::open(&path)?;
        let meta = ckpt.metadata().cloned().unwrap_or_default();
        let num = |key: &str| -> Result<u64> {
            meta.get(key).and_then(|v| v.parse().ok()).ok_or_else(|| Error::Weights {
                file: path.clone(),
                tensor: "__metadata__".into(),
                msg: format!("`{key}` missing or not a number: not an afinar recipe state"),
            })
        };
        let state = RecipeState {
            optimizer_step: num("optimizer_step")?,
            epoch: num("epoch")? as usize,
            step_in_epoch: num("step_in_epoch")? as usize,
            steps_per_epoch: match meta.get("steps_per_epoch") {
                None => None,
                Some(_) => Some(num("steps_per_epoch")? as usize),
            },
        };
        let read = |name: &str, n: usize| -> Result<Vec<f32>> {
            if !ckpt.contains(name) {
                return Err(Error::Weights {
                    file: path.clone(),
                    tensor: name.into(),
                    msg: "missing: the saved state is from a different model or recipe configuration".into(),
                });
            }
            let v = ckpt.tensor(name)?.to_f32()?;
            if v.len() != n {
                return Err(Error::Weights {
                    file: path.clone(),
                    tensor: name.into(),
                    msg: format!("{} values, the model needs {n}", v.len()),
                });
            }
            Ok(v)
        };
        model.visit_params_mut(&mut |name, p| {
            match p {
                ParamMut::Weight(w, s) => {
                    let (r, c) = be.weight_shape(w);
                    // The new weight keeps the old one's product precision (mixed precision's
                    // bf16 products would otherwise fall back to f32 after a resume).
                    let products = be.weight_products(w);
                    *w = be.weight(&read(name, r * c)?, r, c, WeightFormat::F32)?;
                    be.set_weight_products(w, products);
                    s.m = be.from_host(&read(&format!("{name}.exp_avg"), s.len)?)?;
                    s.v = be.from_host(&read(&format!("{name}.exp_avg_sq"), s.len)?)?;
                }
                ParamMut::Buf(b, s) => {
                    *b = be.from_host(&read(name, s.len)?)?;
                    s.m = be.from_host(&read(&format!("{name}.exp_avg"), s.len)?)?;
                    s.v = be.from_host(&read(&format!("{name}.exp_avg_sq"), s.len)?)?;
                }
            }
            Ok(())
        })?;
        Ok(state)
    }
}
