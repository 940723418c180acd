//! Writing what a run produces: Hugging Face checkpoints (the input's tensor names and shard
//! layout, `config.json`, tokenizer files), PEFT LoRA adapters and merged weights. Every folder
//! is written to a temporary sibling and renamed into place, so a reader never sees half of one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use afinar_checkpoint::safetensors::SafetensorsCheckpoint;
use afinar_checkpoint::write::{
    copy_side_files, save_like, save_sharded, write_atomic, write_dir_atomic, TensorWrite,
};
use afinar_checkpoint::{save_peft_adapter, DType, LoraAdapterConfig};
use std::sync::Arc;

use afinar_engine::Backend;
use afinar_tokenizer::Tokenizer;

use super::state::SaveTarget;
use crate::models::{LazyTensor, Llama, LoraSpec};
use crate::{Error, Result};

/// Largest shard `save_sharded` writes when the input had no layout to copy (transformers'
/// default).
const MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Where the base model came from, which decides names, layout and side files of the output.
#[derive(Clone)]
pub struct ModelSource {
    /// The path the user gave (GGUF file or HF folder/file), for `base_model_name_or_path`.
    pub path: PathBuf,
    /// The HF folder when the input was a safetensors checkpoint (its `config.json`, tokenizer
    /// files and shard layout are reused).
    pub hf_dir: Option<PathBuf>,
    /// `config.json` to write with full weights.
    pub config_json: serde_json::Value,
    /// Storage type of the written weights.
    pub dtype: DType,
    /// Tokenizer to write as `tokenizer.json` + `tokenizer_config.json` when the input had no
    /// tokenizer files to copy (a GGUF file).
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// `model_max_length` for the exported tokenizer config.
    pub max_seq_len: Option<usize>,
}

impl ModelSource {
    /// Writes full weights into `dir`, reading one tensor at a time from the backend.
    fn write_full(&self, lazy: &[LazyTensor<'_>], dir: &Path) -> Result<()> {
        let tensors: Vec<TensorWrite> = lazy
            .iter()
            .map(|t| TensorWrite::from_fetch(&t.name, self.dtype, t.shape.clone(), &*t.fetch))
            .collect();
        match &self.hf_dir {
            Some(src) => {
                let reference = SafetensorsCheckpoint::open(src)?;
                save_like(dir, &tensors, &reference)?;
                copy_side_files(src, dir)?;
            }
            None => {
                save_sharded(dir, &tensors, MAX_SHARD_BYTES, &BTreeMap::new())?;
                if let Some(tok) = &self.tokenizer {
                    tok.save_hf_with_max_length(dir, self.max_seq_len)?;
                }
            }
        }
        let json = serde_json::to_vec_pretty(&self.config_json).expect("a JSON value serialises");
        let path = dir.join("config.json");
        write_atomic(&path, |w| w.write_all(&json))?;
        Ok(())
    }
}

/// Saves full weights (full fine-tuning).
pub struct FullSave {
    /// The input model.
    pub source: ModelSource,
}

impl<B: Backend> SaveTarget<B> for FullSave {
    fn save(&self, be: &B, model: &Llama<B>, dir: &Path) -> Result<()> {
        let tensors = model.lazy_state_tensors(be, false);
        write_dir_atomic(dir, |tmp: &Path| self.source.write_full(&tensors, tmp))
    }
}

/// Saves a LoRA run: the PEFT adapter, and the base model with the adapter merged in (in
/// `merged/`) unless turned off.
pub struct LoraSave {
    /// The input model.
    pub source: ModelSource,
    /// Adapter settings.
    pub spec: LoraSpec,
    /// Also write merged full weights.
    pub merged: bool,
}

impl<B: Backend> SaveTarget<B> for LoraSave {
    fn save(&self, be: &B, model: &Llama<B>, dir: &Path) -> Result<()> {
        let lora = model.lora_tensors(be)?;
        let tensors: Vec<TensorWrite> =
            lora.iter().map(|(n, s, d)| TensorWrite::from_f32(n, DType::F32, s.clone(), d)).collect();
        let cfg = LoraAdapterConfig {
            r: self.spec.rank,
            lora_alpha: self.spec.alpha as f64,
            lora_dropout: self.spec.dropout as f64,
            target_modules: self.spec.targets.iter().map(|t| t.module_name().to_string()).collect(),
            base_model_name_or_path: Some(self.source.path.display().to_string()),
            ..LoraAdapterConfig::default()
        };
        let merged = self.merged.then(|| model.lazy_state_tensors(be, true));
        write_dir_atomic(dir, |tmp: &Path| -> Result<()> {
            save_peft_adapter(tmp, &cfg, &tensors)?;
            if let Some(m) = &merged {
                let mdir = tmp.join("merged");
                std::fs::create_dir_all(&mdir).map_err(|source| Error::Io { path: mdir.clone(), source })?;
                self.source.write_full(m, &mdir)?;
            }
            Ok(())
        })
    }
}
