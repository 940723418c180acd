//! `afinar run full_finetune|lora_finetune`: from a checked [`RecipeConfig`] to a trained
//! checkpoint.

use std::path::PathBuf;

use afinar_checkpoint::DType;
use afinar_data::{self as data, Dataset, DatasetSpec, Loader};
use afinar_engine::{run_on_device, Backend, DeviceJob, QuantFormat, WeightFormat};

use super::finetune::{train, Plan, Summary};
use super::metrics::Reporter;
use super::optim::AdamWConfig;
use super::save::{FullSave, LoraSave, ModelSource};
use super::schedule::{Schedule, ScheduleKind};
use super::state::SaveTarget;
use crate::config::{self as cfgmod, RecipeConfig};
use crate::generate::Rng;
use crate::models::{
    load_model, load_tokenizer, presets, ActivationCheckpointing, Llama, LoadOptions, LoraSpec, LoraTarget,
};
use crate::{Error, Result};

fn lora_target(t: cfgmod::LoraTarget) -> LoraTarget {
    use cfgmod::LoraTarget as C;
    match t {
        C::QProj => LoraTarget::Q,
        C::KProj => LoraTarget::K,
        C::VProj => LoraTarget::V,
        C::OProj => LoraTarget::O,
        C::GateProj => LoraTarget::Gate,
        C::UpProj => LoraTarget::Up,
        C::DownProj => LoraTarget::Down,
        C::Output => LoraTarget::Output,
    }
}

/// The dataset description the data crate needs, from the recipe's `dataset` section.
pub fn dataset_spec(cfg: &RecipeConfig) -> DatasetSpec {
    let d = &cfg.dataset;
    let mut spec = DatasetSpec::new(
        match d.kind {
            cfgmod::DatasetKind::Instruct => data::DatasetKind::Instruct,
            cfgmod::DatasetKind::Chat => data::DatasetKind::Chat,
            cfgmod::DatasetKind::Text => data::DatasetKind::Text,
        },
        d.source.clone(),
    );
    spec.format = d.format.map(|f| match f {
        cfgmod::FileFormat::Json => data::FileFormat::Json,
        cfgmod::FileFormat::Jsonl => data::FileFormat::Jsonl,
        cfgmod::FileFormat::Csv => data::FileFormat::Csv,
        cfgmod::FileFormat::Parquet => data::FileFormat::Parquet,
    });
    spec.column_map = d.column_map.clone();
    spec.conversation_style = d.conversation_style.map(|s| match s {
        cfgmod::ConversationStyle::Sharegpt => data::ConversationStyle::ShareGpt,
        cfgmod::ConversationStyle::Openai => data::ConversationStyle::OpenAi,
    });
    spec.train_on = match d.train_on {
        cfgmod::TrainOn::All => data::TrainOn::All,
        cfgmod::TrainOn::Assistant => data::TrainOn::Assistant,
        cfgmod::TrainOn::Last => data::TrainOn::Last,
    };
    spec.max_seq_len = cfg.tokenizer.max_seq_len;
    spec.packed = d.packed;
    spec.max_rows = d.max_rows;
    spec
}

/// The loop's plan from the recipe.
pub fn plan(cfg: &RecipeConfig) -> Plan {
    Plan {
        output_dir: cfg.output_dir.clone(),
        epochs: cfg.epochs,
        max_steps_per_epoch: cfg.max_steps_per_epoch,
        grad_accum: cfg.gradient_accumulation_steps,
        adamw: AdamWConfig {
            betas: cfg.optimizer.betas,
            eps: cfg.optimizer.eps,
            weight_decay: cfg.optimizer.weight_decay,
        },
        schedule: Schedule {
            base_lr: cfg.optimizer.lr,
            kind: match cfg.lr_scheduler.kind {
                cfgmod::SchedulerKind::Cosine => ScheduleKind::Cosine,
                cfgmod::SchedulerKind::Linear => ScheduleKind::Linear,
                cfgmod::SchedulerKind::Constant => ScheduleKind::Constant,
            },
            warmup_steps: cfg.lr_scheduler.warmup_steps,
            total_steps: 0,
            min_lr_ratio: cfg.lr_scheduler.min_lr_ratio,
        },
        clip_grad_norm: cfg.clip_grad_norm,
        optimizer_in_backward: cfg.optimizer_in_bwd,
        activation_checkpointing: match (
            cfg.enable_activation_checkpointing,
            cfg.activation_checkpointing_every_n_layers,
        ) {
            (false, _) => ActivationCheckpointing::Off,
            (true, every) => ActivationCheckpointing::Every(every.unwrap_or(1)),
        },
        save_every_n_steps: cfg.save_every_n_steps,
        resume: cfg.resume_from_checkpoint,
        log_every_n_steps: cfg.log_every_n_steps,
        stop_after_steps: None,
        seed: cfg.seed,
    }
}

/// Runs the recipe on the device the config names.
pub fn run(cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary> {
    struct Recipe<'a> {
        cfg: &'a RecipeConfig,
        reporter: &'a mut dyn Reporter,
    }
    impl DeviceJob for Recipe<'_> {
        type Output = Result<Summary>;
        fn run<B: Backend>(self, be: &B) -> Result<Summary> {
            run_on(be, self.cfg, self.reporter)
        }
    }
    run_on_device(&cfg.device, cfg.threads, Recipe { cfg, reporter })
        .map_err(|e| Error::Input(format!("device `{}`: {e}", cfg.device)))?
}

/// Runs the recipe on `be`.
pub fn run_on<B: Backend>(be: &B, cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary> {
    let lora = cfg.lora.as_ref().map(|l| LoraSpec {
        rank: l.rank,
        alpha: l.alpha,
        dropout: l.dropout,
        targets: l.target_modules.iter().map(|&t| lora_target(t)).collect(),
    });
    // Trainable weights are f32; frozen ones may be bf16, and with QLoRA the projections NF4.
    let format = match (&lora, cfg.model.dtype) {
        (Some(_), cfgmod::Dtype::Bf16) => WeightFormat::BF16,
        _ => WeightFormat::F32,
    };
    let qlora = cfg.lora.as_ref().is_some_and(|l| l.quantize_base);
    let projections = if qlora { WeightFormat::Quant(QuantFormat::Nf4) } else { format };
    let (mut model, tokenizer, source) = match (&cfg.model.path, &cfg.model.preset) {
        (Some(path), _) => {
            // A Hub reference (`hf://…`) through the Hugging Face cache; a local path as is.
            let path = &afinar_hub::resolve_model_path(path, &mut afinar_hub::Quiet)?;
            let opts = LoadOptions {
                format,
                tokenizer: cfg.tokenizer.path.clone(),
                projections: Some(projections),
                ..Default::default()
            };
            let loaded = load_model(be, path, &opts)?;
            let tok = loaded.tokenizer.ok_or_else(|| {
                Error::Input(format!("{} has no tokenizer: set tokenizer.path", path.display()))
            })?;
            (loaded.model, tok, (path.clone(), loaded.hf_folder))
        }
        (None, Some(name)) => {
            let config = presets::preset(name)
                .ok_or_else(|| Error::Input(format!("model.preset: unknown model `{name}`")))?;
            let tok_path =
                cfg.tokenizer.path.as_ref().ok_or_else(|| {
                    Error::Input("model.preset has no tokenizer: set tokenizer.path".into())
                })?;
            let tok = load_tokenizer(tok_path)?;
            (Llama::random_with(be, config, cfg.seed, format, projections)?, tok, (PathBuf::from(name), None))
        }
        (None, None) => return Err(Error::Input("model: give `path` or `preset`".into())),
    };
    if qlora {
        reporter.note(&qlora_summary(be, &model));
    }
    let mut rng = Rng::new(cfg.seed ^ 0x4C6F_5241);
    match &lora {
        Some(spec) => model.apply_lora(be, spec, &mut rng)?,
        None => model.enable_full_finetune(be)?,
    }
    // Full fine-tuning with `model.dtype: bf16`: f32 weights, gradients and AdamW state, products
    // in bf16 with f32 sums (mixed precision, as torch.autocast). With bf16 (frozen or mixed),
    // the activations saved for the backward are kept in bf16 too.
    let bf16 = cfg.model.dtype == cfgmod::Dtype::Bf16;
    let mixed = lora.is_none() && bf16;
    be.set_bf16_products(mixed);
    model.keep_activations_in_bf16(bf16);
    if mixed {
        reporter.note(
            "mixed precision: f32 weights and optimizer state, bf16 matrix products and saved activations",
        );
    }
    let dataset =
        Dataset::load(&dataset_spec(cfg), &tokenizer).map_err(|e| Error::Input(format!("dataset: {e}")))?;
    let pad = tokenizer.eos_id().unwrap_or(0);
    let loader = Loader::new(&dataset, cfg.batch_size, cfg.shuffle, cfg.seed, pad)
        .map_err(|e| Error::Input(format!("dataset: {e}")))?
        .drop_last(true);
    reporter.note(&format!(
        "dataset {}: {} examples, {} tokens, {} label tokens",
        cfg.dataset.source.display(),
        dataset.len(),
        dataset.num_tokens(),
        dataset.num_label_tokens()
    ));
    let config_json = match &source.1 {
        Some(hf) => hf.config_json.clone(),
        None => model.config.to_hf_json(tokenizer.bos_id(), tokenizer.eos_id(), "float32"),
    };
    let source = ModelSource {
        path: source.0,
        hf_dir: source.1.map(|hf| hf.dir),
        config_json,
        dtype: DType::F32,
        tokenizer: Some(std::sync::Arc::new(tokenizer)),
        max_seq_len: Some(model.config.max_seq_len),
    };
    let saver: Box<dyn SaveTarget<B>> = match &lora {
        Some(spec) => Box::new(LoraSave {
            source,
            spec: spec.clone(),
            merged: cfg.merge_adapter && !cfg.save_adapter_weights_only,
        }),
        None => Box::new(FullSave { source }),
    };
    train(be, &mut model, &loader, &plan(cfg), saver.as_ref(), reporter)
}

/// One line on what QLoRA quantized: how many projection values are stored as NF4, in how many
/// bytes, and what stays in the base dtype.
fn qlora_summary<B: Backend>(be: &B, model: &Llama<B>) -> String {
    let (mut values, mut bytes) = (0usize, 0usize);
    for layer in &model.layers {
        for l in layer.projections() {
            let (r, c) = be.weight_shape(&l.weight);
            if let WeightFormat::Quant(q) = be.weight_format(&l.weight) {
                values += r * c;
                bytes += q.matrix_bytes(r, c).unwrap_or(0);
            }
        }
    }
    let (vocab, dim) = be.weight_shape(&model.embed);
    let kept = vocab * dim + model.output.as_ref().map_or(0, |o| o.out_features * o.in_features);
    format!(
        "QLoRA: {:.1}M projection weights in NF4, {:.1} MiB ({:.3} bytes per value, {:.2}x smaller than f32); \
         {:.1}M embedding/output weights and the norms kept in {}",
        values as f64 / 1e6,
        bytes as f64 / (1u64 << 20) as f64,
        bytes as f64 / values.max(1) as f64,
        (4 * values) as f64 / bytes.max(1) as f64,
        kept as f64 / 1e6,
        match be.weight_format(&model.embed) {
            WeightFormat::BF16 => "bf16",
            _ => "f32",
        }
    )
}
