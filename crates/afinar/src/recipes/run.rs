//! The supervised fine-tuning runner shared by `full_finetune` and `lora_finetune`: from a checked [`RecipeConfig`] to a trained
//! checkpoint.

use std::path::PathBuf;

use afinar_checkpoint::DType;
use afinar_data::{self as data, Dataset, DatasetSpec, Loader};
use afinar_engine::{run_on_device, Backend, DeviceJob, Products, QuantFormat, WeightFormat};

use super::finetune::{train, Plan, Summary};
use super::metrics::Reporter;
use super::optim::AdamWConfig;
use super::save::{FullSave, LoraSave, ModelSource};
use super::schedule::{Schedule, ScheduleKind};
use super::state::SaveTarget;
use crate::config::{self as cfgmod, DatasetKindDecl, RecipeConfig};
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

/// The dataset kinds the SFT recipes read, with the column names each reader looks for (the
/// roles `dataset.column_map` may map).
pub const SFT_DATASET_KINDS: &[DatasetKindDecl] = &[
    DatasetKindDecl { kind: cfgmod::DatasetKind::Instruct, roles: &["instruction", "input", "output"] },
    DatasetKindDecl { kind: cfgmod::DatasetKind::Chat, roles: &["conversations", "messages"] },
    DatasetKindDecl { kind: cfgmod::DatasetKind::Text, roles: &["text"] },
];

/// The dataset description the data crate needs, from the recipe's `dataset` section.
pub fn dataset_spec(cfg: &RecipeConfig) -> DatasetSpec {
    let d = &cfg.dataset;
    let mut spec = DatasetSpec::new(
        match d.kind {
            cfgmod::DatasetKind::Instruct => data::DatasetKind::Instruct,
            cfgmod::DatasetKind::Chat => data::DatasetKind::Chat,
            cfgmod::DatasetKind::Text => data::DatasetKind::Text,
            cfgmod::DatasetKind::Preference => data::DatasetKind::Preference,
            cfgmod::DatasetKind::Prompt => data::DatasetKind::Prompt,
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
    spec.long_rows = match d.long_rows {
        cfgmod::LongRows::Truncate => data::LongRows::Truncate,
        cfgmod::LongRows::Drop => data::LongRows::Drop,
        cfgmod::LongRows::Error => data::LongRows::Error,
    };
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
        recipe_config: Some(cfg.to_yaml()),
        data_fingerprint: None,
    }
}

/// A recipe's body, generic over the backend: [`on_device`] runs it on the device a config names.
pub(crate) trait RecipeBody {
    /// Runs the recipe on `be`.
    fn run_on<B: Backend>(be: &B, cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary>;
}

/// Runs recipe `R` on the device the config names (`device`, `threads`).
pub(crate) fn on_device<R: RecipeBody>(cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary> {
    struct Job<'a, R> {
        cfg: &'a RecipeConfig,
        reporter: &'a mut dyn Reporter,
        recipe: std::marker::PhantomData<R>,
    }
    impl<R: RecipeBody> DeviceJob for Job<'_, R> {
        type Output = Result<Summary>;
        fn run<B: Backend>(self, be: &B) -> Result<Summary> {
            R::run_on(be, self.cfg, self.reporter)
        }
    }
    let job = Job::<R> { cfg, reporter, recipe: std::marker::PhantomData };
    run_on_device(&cfg.device, cfg.threads, job)
        .map_err(|e| Error::Input(format!("device `{}`: {e}", cfg.device)))?
}

/// The supervised fine-tuning body ([`run_on`]).
struct SftBody;

impl RecipeBody for SftBody {
    fn run_on<B: Backend>(be: &B, cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary> {
        run_on(be, cfg, reporter)
    }
}

/// Runs the recipe on the device the config names.
pub fn run(cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary> {
    on_device::<SftBody>(cfg, reporter)
}

/// Top-level keys a resume may change freely: they change how a run is logged, saved, placed
/// or scheduled on the machine, not what it computes (activation checkpointing recomputes
/// exactly).
const RESUME_FREE_KEYS: &[&str] = &[
    "output_dir",
    "threads",
    "log_every_n_steps",
    "save_every_n_steps",
    "save_adapter_weights_only",
    "merge_adapter",
    "resume_from_checkpoint",
    "resume_accept_config_changes",
    "enable_activation_checkpointing",
    "activation_checkpointing_every_n_layers",
];

/// Keys that only set the length of training: a resume continues with the new length.
const RESUME_LENGTH_KEYS: &[&str] = &["epochs", "max_steps_per_epoch"];

/// Before a resume: compares `cfg` with the resolved config saved with the recipe state in
/// `cfg.output_dir` and returns the notes to print, or refuses.
///
/// - Keys of `RESUME_FREE_KEYS` may change.
/// - A changed length (`epochs`, `max_steps_per_epoch`) continues: the extra steps are trained
///   (or, shorter, the run ends earlier). The learning-rate schedule is the one of the new
///   length — its total steps are those of a run configured that long from the start — so the
///   steps after the resume are those of such a run; the steps before it were taken with the
///   old schedule's rates. The run is therefore bit-identical to a run of the new length from
///   the start when both schedules give the steps already taken the same rates (a constant
///   schedule, or steps still in the warm-up), and differs by those rates otherwise. The note
///   says which case applies.
/// - Any other change (data, model, learning rate, batch size, seed, …) is refused, naming each
///   key with its old and new value, unless `resume_accept_config_changes` is set; then each
///   change is printed.
pub fn check_resume(cfg: &RecipeConfig) -> Result<Vec<String>> {
    if !cfg.resume_from_checkpoint {
        return Ok(Vec::new());
    }
    let state = cfg.output_dir.join("recipe_state").join("state.safetensors");
    let Some(saved) = super::state::saved_value(&cfg.output_dir, super::state::CONFIG_KEY)? else {
        // No state at all: the loop says there is nothing to resume.
        return Ok(if state.exists() {
            vec![format!(
                "{} holds no config (written by an older afinar): this config cannot be checked \
                 against the one the checkpoint was trained with",
                state.display()
            )]
        } else {
            Vec::new()
        });
    };
    let changes = cfg.changes_since(&saved, &state)?;
    let line = |c: &cfgmod::ConfigChange| format!("{}: {} → {}", c.key, c.old, c.new);
    let top = |c: &cfgmod::ConfigChange| c.key.split('.').next().unwrap_or_default().to_string();
    let length: Vec<String> =
        changes.iter().filter(|c| RESUME_LENGTH_KEYS.contains(&c.key.as_str())).map(line).collect();
    let other: Vec<String> = changes
        .iter()
        .filter(|c| {
            !RESUME_LENGTH_KEYS.contains(&c.key.as_str()) && !RESUME_FREE_KEYS.contains(&top(c).as_str())
        })
        .map(line)
        .collect();
    let mut notes = Vec::new();
    if !other.is_empty() {
        if !cfg.resume_accept_config_changes {
            return Err(Error::Input(format!(
                "resume_from_checkpoint: this config differs from the one the checkpoint in {} was \
                 trained with (saved in {}):\n  {}\nresume with the saved values, use another \
                 output_dir for a new run, or set resume_accept_config_changes=true to continue \
                 with the new values",
                cfg.output_dir.display(),
                state.display(),
                other.join("\n  ")
            )));
        }
        notes.push(format!(
            "resume_accept_config_changes: continuing with changed settings ({}); the result equals \
             no run made with a single config",
            other.join("; ")
        ));
    }
    if !length.is_empty() {
        let schedule = match cfg.lr_scheduler.kind {
            cfgmod::SchedulerKind::Constant => {
                "the learning rate is constant after the warm-up, so the run equals one configured \
                 this long from the start"
                    .to_string()
            }
            kind => format!(
                "the {kind} learning-rate schedule now spans the new length, as if the run had been \
                 configured this long from the start; the steps already taken kept the rates of the \
                 old schedule, so the run equals one configured this long from the start only where \
                 both schedules agree (the warm-up)"
            ),
        };
        notes.push(format!("resume: the length of training changed ({}): {schedule}", length.join("; ")));
    }
    Ok(notes)
}

/// On resume, after the data is loaded: compares its fingerprint with the one saved with the
/// recipe state, so that data edited in place (same path, other rows, or another tokenizer) is
/// refused unless `resume_accept_config_changes` is set.
pub(crate) fn check_resume_data(
    cfg: &RecipeConfig,
    fingerprint: &str,
    reporter: &mut dyn Reporter,
) -> Result<()> {
    let Some(saved) = super::state::saved_value(&cfg.output_dir, super::state::DATA_KEY)? else {
        return Ok(());
    };
    if saved == fingerprint {
        return Ok(());
    }
    let what = format!(
        "the data the checkpoint in {} was trained on differs from {} as now tokenized (fingerprint \
         {saved} → {fingerprint}): the file, its rows or the tokenization changed",
        cfg.output_dir.display(),
        cfg.dataset.source.display()
    );
    if !cfg.resume_accept_config_changes {
        return Err(Error::Input(format!(
            "resume_from_checkpoint: {what}; resume with the same data, use another output_dir for a \
             new run, or set resume_accept_config_changes=true to continue on the new data"
        )));
    }
    reporter.note(&format!("resume_accept_config_changes: {what}; continuing on the new data"));
    Ok(())
}

/// Prepares `cfg.output_dir` for a run: removes what killed saves left there (saying so),
/// checks a resume against the saved config ([`check_resume`]) and saves the resolved config as
/// `recipe_config.yaml`. Returns the notes to print.
pub fn prepare_output(cfg: &RecipeConfig) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    for l in afinar_checkpoint::write::remove_leftovers(&cfg.output_dir)? {
        notes.push(format!(
            "removed {} ({:.1} MB), left by an interrupted save",
            l.path.display(),
            l.bytes as f64 / 1e6
        ));
    }
    notes.extend(check_resume(cfg)?);
    std::fs::create_dir_all(&cfg.output_dir)
        .map_err(|source| Error::Io { path: cfg.output_dir.clone(), source })?;
    let yaml = cfg.to_yaml();
    afinar_checkpoint::write::write_atomic(cfg.output_dir.join("recipe_config.yaml"), |w| {
        w.write_all(yaml.as_bytes())
    })?;
    Ok(notes)
}

/// A model ready to train (adapters applied, or every weight trainable), its tokenizer, and the
/// writer of the recipe's checkpoints (PEFT adapter and merged model, or full weights).
pub struct Prepared<B: Backend> {
    /// The model.
    pub model: Llama<B>,
    /// Its tokenizer.
    pub tokenizer: std::sync::Arc<afinar_tokenizer::Tokenizer>,
    /// What writes each checkpoint.
    pub saver: Box<dyn SaveTarget<B>>,
}

/// Runs the recipe on `be`.
pub fn run_on<B: Backend>(be: &B, cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary> {
    let Prepared { mut model, tokenizer, saver } = prepare_model(be, cfg, reporter)?;
    let dataset =
        Dataset::load(&dataset_spec(cfg), &tokenizer).map_err(|e| Error::Input(format!("dataset: {e}")))?;
    let pad = tokenizer.eos_id().unwrap_or(0);
    let loader = Loader::new(&dataset, cfg.batch_size, cfg.shuffle, cfg.seed, pad)
        .map_err(|e| Error::Input(format!("dataset: {e}")))?
        .drop_last(true);
    reporter.note(&dataset_summary(cfg, &dataset));
    let fingerprint = super::finetune::data_fingerprint(dataset.samples());
    if cfg.resume_from_checkpoint {
        check_resume_data(cfg, &fingerprint, reporter)?;
    }
    let plan = Plan { data_fingerprint: Some(fingerprint), ..plan(cfg) };
    train(be, &mut model, &loader, &plan, saver.as_ref(), reporter)
}

/// Everything a recipe's run does before its data: prepares the output folder
/// ([`prepare_output`]), loads the model and its tokenizer as `model:`/`tokenizer:` say, checks
/// the context length, applies LoRA (or makes every weight trainable), sets the precision, and
/// builds the checkpoint writer.
pub fn prepare_model<B: Backend>(
    be: &B,
    cfg: &RecipeConfig,
    reporter: &mut dyn Reporter,
) -> Result<Prepared<B>> {
    for note in prepare_output(cfg)? {
        reporter.note(&note);
    }
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
    if cfg.tokenizer.max_seq_len > model.config.max_seq_len {
        return Err(Error::Input(format!(
            "tokenizer.max_seq_len is {}, beyond the {}-token context of {} (its \
             max_position_embeddings / context length, RoPE scaling included): set \
             tokenizer.max_seq_len to at most {}",
            cfg.tokenizer.max_seq_len,
            model.config.max_seq_len,
            source.0.display(),
            model.config.max_seq_len
        )));
    }
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
    model.set_products(be, if mixed { Products::Bf16 } else { Products::F32 });
    model.keep_activations_in_bf16(bf16);
    if mixed {
        reporter.note(
            "mixed precision: f32 weights and optimizer state, bf16 matrix products and saved activations",
        );
    }
    let tokenizer = std::sync::Arc::new(tokenizer);
    let config_json = match &source.1 {
        Some(hf) => hf.config_json.clone(),
        None => model.config.to_hf_json(tokenizer.bos_id(), tokenizer.eos_id(), "float32"),
    };
    let source = ModelSource {
        path: source.0,
        hf_dir: source.1.map(|hf| hf.dir),
        config_json,
        dtype: DType::F32,
        tokenizer: Some(tokenizer.clone()),
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
    Ok(Prepared { model, tokenizer, saver })
}

/// The statistics printed at the start of a run: rows read, examples kept, truncated and
/// dropped (why and where), tokens.
pub fn dataset_summary(cfg: &RecipeConfig, dataset: &Dataset) -> String {
    let st = dataset.stats();
    let packs = st.packs.map(|p| format!(", packed into {p} rows")).unwrap_or_default();
    format!(
        "dataset {}: {}{packs}; {} tokens, {} label tokens (long rows: {})",
        cfg.dataset.source.display(),
        st.summary(cfg.tokenizer.max_seq_len),
        dataset.num_tokens(),
        dataset.num_label_tokens(),
        cfg.dataset.long_rows
    )
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

/// Loads and tokenizes `cfg.dataset` with `tokenizer` (the summary line goes to `reporter`).
pub fn load_dataset(
    cfg: &RecipeConfig,
    tokenizer: &afinar_tokenizer::Tokenizer,
    reporter: &mut dyn Reporter,
) -> Result<Dataset> {
    let dataset =
        Dataset::load(&dataset_spec(cfg), tokenizer).map_err(|e| Error::Input(format!("dataset: {e}")))?;
    reporter.note(&dataset_summary(cfg, &dataset));
    Ok(dataset)
}

/// The batches of `dataset` as `cfg` asks (batch size, shuffle, seed; the last partial batch
/// dropped), padded with `tokenizer`'s end-of-sequence token.
pub fn loader<'a>(
    cfg: &RecipeConfig,
    dataset: &'a Dataset,
    tokenizer: &afinar_tokenizer::Tokenizer,
) -> Result<Loader<'a>> {
    let pad = tokenizer.eos_id().unwrap_or(0);
    Ok(Loader::new(dataset, cfg.batch_size, cfg.shuffle, cfg.seed, pad)
        .map_err(|e| Error::Input(format!("dataset: {e}")))?
        .drop_last(true))
}

/// The loop's plan for a run of `cfg` on `dataset`: [`plan`], with the data's fingerprint, after
/// checking it against the saved one on a resume.
pub fn plan_for(cfg: &RecipeConfig, dataset: &Dataset, reporter: &mut dyn Reporter) -> Result<Plan> {
    let fingerprint = super::finetune::data_fingerprint(dataset.samples());
    if cfg.resume_from_checkpoint {
        check_resume_data(cfg, &fingerprint, reporter)?;
    }
    Ok(Plan { data_fingerprint: Some(fingerprint), ..plan(cfg) })
}
