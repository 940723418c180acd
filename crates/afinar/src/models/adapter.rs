//! LoRA adapters kept beside one base model for inference: a PEFT folder is read into the same
//! [`Lora`] layers training uses, held outside the model, and swapped into its linear layers when
//! a request asks for it ([`Llama::swap_adapter`]) — a pointer swap, no merged copy of the base.

use std::collections::BTreeMap;
use std::path::Path;

use afinar_checkpoint::load_peft_adapter;
use afinar_checkpoint::peft::{parse_lora_name, LoraPart};
use afinar_engine::Backend;

use super::Llama;
use crate::blocks::{Linear, Lora, ParamState};
use crate::{Error, Result};

/// A LoRA adapter loaded for inference, one optional [`Lora`] per linear layer of the base model
/// (in [`Llama::linears`] order), not yet applied.
pub struct LoraAdapter<B: Backend> {
    slots: Vec<Option<Lora<B>>>,
    /// Number of adapted linear layers.
    pub modules: usize,
    /// The adapter's rank.
    pub rank: usize,
}

impl<B: Backend> Llama<B> {
    /// Every linear layer, mutable, in [`Llama::linears`] order.
    fn linears_mut(&mut self) -> Vec<&mut Linear<B>> {
        let mut out: Vec<&mut Linear<B>> = Vec::new();
        for layer in &mut self.layers {
            out.extend(layer.projections_mut());
        }
        if let Some(o) = &mut self.output {
            out.push(o);
        }
        out
    }

    /// Reads the PEFT adapter folder `dir` (`adapter_config.json` + `adapter_model.safetensors`,
    /// as afinar's LoRA recipes write it) for this model, without applying it. Errors name the
    /// file and tensor: a module the model does not have, a shape that does not fit it, tensors
    /// other than LoRA matrices (`modules_to_save` copies).
    pub fn load_adapter(&self, be: &B, dir: &Path) -> Result<LoraAdapter<B>> {
        let (cfg, ckpt) = load_peft_adapter(dir)?;
        let file = ckpt.path().to_path_buf();
        let bad =
            |tensor: &str, msg: String| Error::Weights { file: file.clone(), tensor: tensor.into(), msg };
        let names: Vec<(String, usize, usize)> =
            self.linears().into_iter().map(|(n, l)| (n, l.out_features, l.in_features)).collect();
        // linear index -> (lora_A, lora_B) values
        let mut parts: BTreeMap<usize, [Option<Vec<f32>>; 2]> = BTreeMap::new();
        for name in ckpt.names() {
            let Some((module, part)) = parse_lora_name(&name) else {
                return Err(bad(
                    &name,
                    "is not a LoRA matrix (lora_A / lora_B); afinar serves only those".into(),
                ));
            };
            let Some(index) = names.iter().position(|(n, _, _)| n == module) else {
                return Err(bad(&name, format!("module `{module}` is not a linear layer of the base model")));
            };
            let (_, out_f, in_f) = names[index];
            let expected = match part {
                LoraPart::A => [cfg.r, in_f],
                LoraPart::B => [out_f, cfg.r],
            };
            let (_, shape) = ckpt.tensor_info(&name).expect("listed tensors have infos");
            if shape != expected {
                return Err(bad(
                    &name,
                    format!(
                        "shape {shape:?}, but the base model's `{module}` needs {expected:?} (rank {})",
                        cfg.r
                    ),
                ));
            }
            let values = ckpt.tensor(&name)?.to_f32()?;
            let slot = parts.entry(index).or_default();
            match part {
                LoraPart::A => slot[0] = Some(values),
                LoraPart::B => slot[1] = Some(values),
            }
        }
        if parts.is_empty() {
            return Err(Error::Input(format!("{}: the adapter has no LoRA matrices", file.display())));
        }
        let scale = cfg.scaling() as f32;
        let mut slots: Vec<Option<Lora<B>>> = (0..names.len()).map(|_| None).collect();
        let modules = parts.len();
        for (index, [a, b]) in parts {
            // load_peft_adapter checks that the pairs are complete.
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad(&names[index].0, "has only one of lora_A and lora_B".into()));
            };
            slots[index] = Some(Lora {
                a: be.from_host(&a)?,
                b: be.from_host(&b)?,
                rank: cfg.r,
                scale,
                a_state: ParamState::new(be, 0)?,
                b_state: ParamState::new(be, 0)?,
                dropout: 0.0,
                dropout_seed: None,
            });
        }
        Ok(LoraAdapter { slots, modules, rank: cfg.r })
    }

    /// Exchanges the adapters held in `adapter` with those in the model's linear layers: called
    /// once it applies the adapter (on a model with none), called again it takes it out. `adapter`
    /// must come from [`Llama::load_adapter`] on this model.
    pub fn swap_adapter(&mut self, adapter: &mut LoraAdapter<B>) {
        for (l, slot) in self.linears_mut().into_iter().zip(&mut adapter.slots) {
            std::mem::swap(&mut l.lora, slot);
        }
    }
}
