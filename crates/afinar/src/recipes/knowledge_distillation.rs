//! `knowledge_distillation`: a student (LoRA adapters when the config has a `lora:` section,
//! every weight when it has none) learns from a frozen teacher that shares its tokenizer, with
//! torchtune's objective `(1 − kd_ratio) · CE + kd_ratio · KD` ([`KdObjective`]), on the SFT
//! datasets and with the SFT outputs (PEFT adapter and merged checkpoint, or full weights) and
//! exact resume.
//!
//! Per micro-batch: the teacher's final hidden states, forward only
//! ([`Teacher::hidden_states`]); the student's ([`Llama::forward_hidden`]); both through their
//! output heads into the divergence and the cross-entropy in one chunked pass
//! ([`KdObjective::loss_and_grad`], never a `[tokens × vocab]` logits tensor), which writes
//! `∂loss/∂hidden` (and the student head's gradient in full fine-tuning); then
//! [`Llama::backward_hidden`].
//!
//! Normalisation: each micro-batch's terms are token means over its labels (torchtune's); with
//! gradient accumulation the step's loss is the token-weighted mean over its micro-batches, as
//! the SFT loop normalises by the step's label tokens — with one micro-batch per step this is
//! exactly torchtune's. `loss`, `class_loss` and `kd_loss` are logged per step as torchtune
//! logs them.

use afinar_data::{Batch, Loader};
use afinar_engine::{Backend, Divergence};

use super::finetune::{train_batch, train_objective, MicroOutput, Summary, TrainObjective};
use super::metrics::Reporter;
use super::registry::RecipeSpec;
use super::run::SFT_DATASET_KINDS;
use super::teacher::{Teacher, TeacherDtype, TeacherSource, TeacherSpec};
use crate::config::{above, builtin_config, within, KeyDecl, KeyType, KeyValue, RecipeConfig, SectionDecl};
use crate::config::{LoraTarget, LORA_OPTIONAL};
use crate::models::{presets, ActivationCheckpointing, Llama};
use crate::objectives::distill::KdObjective;
use crate::{Error, Result};

/// The words `kd_loss` accepts.
pub const KD_LOSSES: &[&str] = &["forward_kl", "reverse_kl", "jsd"];

/// `teacher:`, this recipe's own section.
pub const TEACHER: SectionDecl = SectionDecl {
    name: "teacher",
    keys: &[
        KeyDecl::new(
            "path",
            KeyType::ModelPath,
            "The teacher: a GGUF file, a Hugging Face folder or a Hub repository, with the student's tokenizer.",
        ),
        KeyDecl::new(
            "preset",
            KeyType::Text { expect: "a model preset name" },
            "A preset: random weights (tests, smoke runs).",
        ),
        KeyDecl::new(
            "dtype",
            KeyType::Word { names: TeacherDtype::NAMES, default: Some("bf16") },
            "Storage of the frozen teacher: bf16, nf4 (projections) or as_stored (a GGUF's quantized blocks).",
        ),
    ],
    required: true,
    expect: "a section with path (or preset) and dtype",
    doc: "The frozen teacher the student learns from.",
};

/// The recipe's registry entry.
pub static SPEC: RecipeSpec = RecipeSpec {
    name: "knowledge_distillation",
    description: "Distillation from a frozen teacher with the same tokenizer: (1 - kd_ratio) CE + kd_ratio KL; LoRA or full student",
    sections: &[LORA_OPTIONAL, TEACHER],
    keys: &[
        KeyDecl::new(
            "kd_ratio",
            within(0.0, 1.0, true, Some(0.5)),
            "Weight of the distillation term; the cross-entropy gets 1 - kd_ratio.",
        ),
        KeyDecl::new(
            "kd_loss",
            KeyType::Word { names: KD_LOSSES, default: Some("forward_kl") },
            "forward_kl (torchtune's ForwardKLLoss), reverse_kl or jsd (β = 0.5).",
        ),
        KeyDecl::new(
            "temperature",
            above(0.0, false, Some(1.0)),
            "Divides both logits in the distillation term (no T² factor; 1: torchtune).",
        ),
    ],
    dataset_kinds: SFT_DATASET_KINDS,
    configs: &[
        builtin_config!("smollm2_360m_to_135m_kd_lora", "knowledge_distillation", "SmolLM2-360M-Instruct teaches SmolLM2-135M-Instruct (LoRA student) on the bilingual dataset; teacher folder from $SMOLLM2_DIR"),
        builtin_config!("llama3_1_8b_to_3_2_1b_kd_lora", "knowledge_distillation", "Llama-3.1-8B-Instruct in NF4 teaches Llama-3.2-1B-Instruct (LoRA student); models from $LLAMA_TEACHER_DIR and $LLAMA_DIR"),
    ],
    check: Some(check),
    run,
};

/// The recipe's settings, read from a checked config.
#[derive(Debug, Clone, PartialEq)]
pub struct KdSettings {
    /// The objective (`kd_ratio`, `kd_loss`, `temperature`).
    pub objective: KdObjective,
    /// The `teacher:` section.
    pub teacher: TeacherSpec,
}

impl KdSettings {
    /// The settings of a config checked for this recipe.
    pub fn from_config(cfg: &RecipeConfig) -> Result<Self> {
        let num = |k: &str| cfg.extra(k).and_then(KeyValue::as_num);
        let text = |k: &str| cfg.extra(k).and_then(KeyValue::as_text);
        let missing = |k: &str| Error::Input(format!("{k}: missing from a {} config", SPEC.name));
        let divergence = match text("kd_loss").ok_or_else(|| missing("kd_loss"))? {
            "forward_kl" => Divergence::ForwardKl,
            "reverse_kl" => Divergence::ReverseKl,
            "jsd" => Divergence::Jsd,
            other => {
                return Err(Error::Input(format!(
                    "kd_loss: `{other}` is not one of {}",
                    KD_LOSSES.join(", ")
                )))
            }
        };
        let objective = KdObjective {
            kd_ratio: num("kd_ratio").ok_or_else(|| missing("kd_ratio"))? as f32,
            divergence,
            temperature: num("temperature").ok_or_else(|| missing("temperature"))? as f32,
        };
        objective.validate()?;
        let source = match (text("teacher.path"), text("teacher.preset")) {
            (Some(p), None) => TeacherSource::Path(p.into()),
            (None, Some(p)) => TeacherSource::Preset(p.to_string()),
            _ => return Err(Error::Input("teacher: give path or preset (one of them)".into())),
        };
        let dtype = text("teacher.dtype").and_then(TeacherDtype::from_name).ok_or_else(|| {
            Error::Input(format!("teacher.dtype: expected one of {}", TeacherDtype::NAMES.join(", ")))
        })?;
        Ok(KdSettings { objective, teacher: TeacherSpec { source, dtype } })
    }
}

/// Rules across the recipe's keys, checked when the config is loaded (errors at the key's
/// `file:line:col`).
fn check(c: &RecipeConfig) -> std::result::Result<(), (String, String)> {
    let text = |k: &str| c.extra(k).and_then(KeyValue::as_text);
    match (text("teacher.path"), text("teacher.preset")) {
        (None, None) => {
            return Err((
                "teacher".into(),
                "give the teacher's weights: teacher.path (a GGUF file, a Hugging Face folder or \
                 hf://org/name) or teacher.preset"
                    .into(),
            ))
        }
        (Some(_), Some(_)) => {
            return Err((
                "teacher.preset".into(),
                "give teacher.path or teacher.preset, not both (override ~teacher.path or ~teacher.preset)"
                    .into(),
            ))
        }
        (None, Some(p)) => {
            let Some(teacher) = presets::preset(p) else {
                return Err((
                    "teacher.preset".into(),
                    format!("expected one of {}, got \"{p}\"", presets::PRESETS.join(", ")),
                ));
            };
            if let Some(student) = c.model.preset.as_deref().and_then(presets::preset) {
                if student.vocab_size != teacher.vocab_size {
                    return Err((
                        "teacher.preset".into(),
                        format!(
                            "the teacher {p} has a vocabulary of {} tokens but the student {} has {}: \
                             knowledge distillation needs a teacher with the student's tokenizer",
                            teacher.vocab_size,
                            c.model.preset.as_deref().unwrap_or_default(),
                            student.vocab_size
                        ),
                    ));
                }
            }
        }
        (Some(_), None) => {}
    }
    if let Some(l) = &c.lora {
        if l.target_modules.contains(&LoraTarget::Output) {
            return Err((
                "lora.target_modules".into(),
                "knowledge_distillation computes the student's output head together with the \
                 teacher's in one fused pass, which takes the head's weight as it is: an adapter \
                 on `output` is not supported (remove it, or train every weight without a lora \
                 section)"
                    .into(),
            ));
        }
    }
    if c.optimizer_in_bwd {
        return Err((
            "optimizer_in_bwd".into(),
            "knowledge_distillation steps the optimizer after the backward: set optimizer_in_bwd to false"
                .into(),
        ));
    }
    Ok(())
}

/// The distillation objective over SFT batches, for the shared loop ([`train_objective`]):
/// units are label tokens; each micro-batch runs the teacher forward, the student forward to
/// its hidden states, the fused head and the student's backward.
pub struct Distill<'a, B: Backend> {
    loader: Loader<'a>,
    teacher: &'a Teacher<B>,
    objective: KdObjective,
}

impl<'a, B: Backend> Distill<'a, B> {
    /// Distillation from `teacher` over the batches of `loader`.
    pub fn new(loader: &Loader<'a>, teacher: &'a Teacher<B>, objective: KdObjective) -> Result<Self> {
        objective.validate()?;
        Ok(Distill { loader: *loader, teacher, objective })
    }
}

/// The names of the metrics [`Distill`] logs besides `loss`, as torchtune logs them.
pub const METRICS: [&str; 2] = ["class_loss", "kd_loss"];

impl<B: Backend> TrainObjective<B> for Distill<'_, B> {
    type Micro = Batch;

    fn unit_name(&self) -> &'static str {
        "label tokens"
    }

    fn batches_per_epoch(&self) -> usize {
        self.loader.batches_per_epoch()
    }

    fn epoch_from(&self, epoch: usize, start: usize) -> Box<dyn Iterator<Item = Batch> + '_> {
        Box::new(self.loader.epoch_from(epoch, start))
    }

    fn units(&self, micro: &Batch) -> usize {
        micro.label_tokens
    }

    fn forward_backward(
        &self,
        be: &B,
        model: &mut Llama<B>,
        micro: &Batch,
        grad_scale: f32,
        checkpointing: ActivationCheckpointing,
    ) -> Result<MicroOutput> {
        let b = train_batch(micro);
        let rows = b.batch * b.seq;
        let mut teacher_hidden = be.zeros(rows * self.teacher.dim())?;
        self.teacher.hidden_states(be, &b, &mut teacher_hidden)?;
        let mut hidden = be.zeros(rows * model.config.dim)?;
        model.forward_hidden(be, &b, checkpointing, &mut hidden)?;
        let mut dhidden = be.zeros(rows * model.config.dim)?;
        // The objective's terms are means over this micro-batch's label tokens; the loop's
        // `grad_scale` is 1 / (label tokens of the step): scaled back by the micro-batch's
        // tokens, the step's gradient is that of its token-weighted mean.
        let scale = grad_scale * micro.label_tokens as f32;
        let Llama { output, embed, embed_state, .. } = &mut *model;
        let (head, head_grad) = match output {
            Some(o) => (&o.weight, o.state.as_mut().map(|s| &mut s.grad)),
            None => (&*embed, embed_state.as_mut().map(|s| &mut s.grad)),
        };
        let out = self.objective.loss_and_grad(
            be,
            &hidden,
            head,
            &teacher_hidden,
            self.teacher.head(),
            b.labels,
            rows,
            scale,
            Some(&mut dhidden),
            head_grad,
        )?;
        model.backward_hidden(be, &b, checkpointing, &dhidden)?;
        let n = out.tokens as f64;
        Ok(MicroOutput {
            loss_sum: out.loss * n,
            metric_sums: vec![(METRICS[0], out.class_loss * n), (METRICS[1], out.kd_loss * n)],
        })
    }

    fn zero_gradient_is_divergence(&self) -> bool {
        // The cross-entropy's gradient never vanishes; with kd_ratio = 1 a student that equals
        // its teacher has none.
        self.objective.kd_ratio < 1.0
    }
}

/// This recipe's body for [`super::run::on_device`].
struct KdBody;

impl super::run::RecipeBody for KdBody {
    fn run_on<B: Backend>(be: &B, cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary> {
        run_on(be, cfg, reporter, |p| p)
    }
}

/// Runs the recipe on the device the config names.
pub fn run(cfg: &RecipeConfig, reporter: &mut dyn Reporter) -> Result<Summary> {
    super::run::on_device::<KdBody>(cfg, reporter)
}

/// Runs the recipe on `be`; `adjust` may change the loop's plan (tests: stop after some
/// steps to simulate a killed run).
pub fn run_on<B: Backend>(
    be: &B,
    cfg: &RecipeConfig,
    reporter: &mut dyn Reporter,
    adjust: impl FnOnce(super::finetune::Plan) -> super::finetune::Plan,
) -> Result<Summary> {
    let settings = KdSettings::from_config(cfg)?;
    let super::run::Prepared { mut model, tokenizer, saver } = super::run::prepare_model(be, cfg, reporter)?;
    let student = match (&cfg.model.path, &cfg.model.preset) {
        (Some(p), _) => p.display().to_string(),
        (None, p) => format!("preset {}", p.as_deref().unwrap_or_default()),
    };
    let teacher = Teacher::load(be, &settings.teacher, cfg.seed ^ 0x7EAC_4E55)?;
    teacher.check_vocabulary(&model, &tokenizer, &student)?;
    reporter.note(&format!(
        "teacher {}: {} layers × {} wide, {:.1} MiB of frozen weights ({}), forward only",
        teacher.name,
        teacher.model.config.n_layers,
        teacher.model.config.dim,
        teacher.weight_bytes(be) as f64 / (1u64 << 20) as f64,
        settings.teacher.dtype.as_str()
    ));
    let dataset = super::run::load_dataset(cfg, &tokenizer, reporter)?;
    let loader = super::run::loader(cfg, &dataset, &tokenizer)?;
    let plan = adjust(super::run::plan_for(cfg, &dataset, reporter)?);
    let mut objective = Distill::new(&loader, &teacher, settings.objective)?;
    train_objective(be, &mut model, &mut objective, &plan, saver.as_ref(), reporter)
}
