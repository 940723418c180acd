//! A frozen teacher for knowledge distillation: loaded once, run forward only to its final
//! hidden states ([`Llama::hidden_states`]: no saved activations, no gradients, no optimizer
//! state, no training buffers), its output head handed to the fused distillation head as it is
//! stored (f32, bf16, NF4 or a GGUF's quantized blocks).

use std::path::PathBuf;

use afinar_engine::{Backend, QuantFormat, WeightFormat};
use afinar_tokenizer::Tokenizer;

use crate::models::{load_model, presets, Llama, LoadOptions, TrainBatch};
use crate::{Error, Result};

/// How the teacher's weights are stored in memory (`teacher.dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeacherDtype {
    /// Every matrix in bfloat16 (products in bf16 with f32 sums).
    Bf16,
    /// The attention and MLP projections in NF4 (QLoRA's 4-bit NormalFloat, quantized as they
    /// are read; a bitsandbytes checkpoint's NF4 matrices are taken as they are), the embedding
    /// and output head in bf16.
    Nf4,
    /// As stored: a GGUF file's Q8_0/Q4_0/Q4_1/Q4_K blocks and a bitsandbytes checkpoint's NF4
    /// matrices kept as they are; every other tensor in f32.
    AsStored,
}

impl TeacherDtype {
    /// The words `teacher.dtype` accepts.
    pub const NAMES: &'static [&'static str] = &["bf16", "nf4", "as_stored"];

    /// The value of a word of [`TeacherDtype::NAMES`].
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "bf16" => Some(Self::Bf16),
            "nf4" => Some(Self::Nf4),
            "as_stored" => Some(Self::AsStored),
            _ => None,
        }
    }

    /// The word for this value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bf16 => "bf16",
            Self::Nf4 => "nf4",
            Self::AsStored => "as_stored",
        }
    }

    fn load_options(self) -> LoadOptions {
        let nf4 = WeightFormat::Quant(QuantFormat::Nf4);
        match self {
            Self::Bf16 => LoadOptions { format: WeightFormat::BF16, ..Default::default() },
            Self::Nf4 => {
                LoadOptions { format: WeightFormat::BF16, projections: Some(nf4), ..Default::default() }
            }
            Self::AsStored => LoadOptions { keep_quantized: true, ..Default::default() },
        }
    }
}

/// Where the teacher comes from: `teacher.path` or `teacher.preset`.
#[derive(Debug, Clone, PartialEq)]
pub enum TeacherSource {
    /// A GGUF file, a Hugging Face folder or a Hub reference (`hf://…`), as `model.path`.
    Path(PathBuf),
    /// A preset architecture with random weights (seeded; tests and smoke runs).
    Preset(String),
}

/// The `teacher:` section, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherSpec {
    /// Its weights.
    pub source: TeacherSource,
    /// Their storage.
    pub dtype: TeacherDtype,
}

impl TeacherSpec {
    /// The teacher's name in messages: its path or `preset NAME`.
    pub fn name(&self) -> String {
        match &self.source {
            TeacherSource::Path(p) => p.display().to_string(),
            TeacherSource::Preset(p) => format!("preset {p}"),
        }
    }
}

/// A loaded, frozen teacher.
pub struct Teacher<B: Backend> {
    /// The network; nothing in it is trainable.
    pub model: Llama<B>,
    /// Its tokenizer, when its checkpoint carries one.
    pub tokenizer: Option<Tokenizer>,
    /// Its path or preset, for messages.
    pub name: String,
}

impl<B: Backend> Teacher<B> {
    /// Loads the teacher `spec` describes (a preset draws random weights from `seed`).
    pub fn load(be: &B, spec: &TeacherSpec, seed: u64) -> Result<Self> {
        let name = spec.name();
        let opts = spec.dtype.load_options();
        let (model, tokenizer) = match &spec.source {
            TeacherSource::Path(path) => {
                let path = afinar_hub::resolve_model_path(path, &mut afinar_hub::Quiet)?;
                let loaded = load_model(be, &path, &opts)
                    .map_err(|e| Error::Input(format!("teacher.path: {}: {e}", path.display())))?;
                (loaded.model, loaded.tokenizer)
            }
            TeacherSource::Preset(p) => {
                let config = presets::preset(p)
                    .ok_or_else(|| Error::Input(format!("teacher.preset: unknown model `{p}`")))?;
                let projections = opts.projections.unwrap_or(opts.format);
                (Llama::random_with(be, config, seed, opts.format, projections)?, None)
            }
        };
        Ok(Teacher { model, tokenizer, name })
    }

    /// Refuses a teacher that does not share the student's vocabulary: the distributions are
    /// compared token id by token id, so the vocabulary sizes must be equal and, when both
    /// tokenizers are known, every token must be the same string.
    pub fn check_vocabulary(
        &self,
        student: &Llama<B>,
        student_tokenizer: &Tokenizer,
        student_name: &str,
    ) -> Result<()> {
        let (t, s) = (self.model.config.vocab_size, student.config.vocab_size);
        if t != s {
            return Err(Error::Input(format!(
                "teacher: {} has a vocabulary of {t} tokens but the student {student_name} has {s}: \
                 knowledge distillation compares the two output distributions token by token, so \
                 the teacher must use the student's tokenizer",
                self.name
            )));
        }
        let Some(tt) = &self.tokenizer else { return Ok(()) };
        if tt.vocab_size() != student_tokenizer.vocab_size() {
            return Err(Error::Input(format!(
                "teacher: the tokenizer of {} has {} tokens but the student's ({student_name}) has {}: \
                 knowledge distillation needs the same tokenizer",
                self.name,
                tt.vocab_size(),
                student_tokenizer.vocab_size()
            )));
        }
        for id in 0..tt.vocab_size() as u32 {
            let (a, b) = (tt.id_to_token(id), student_tokenizer.id_to_token(id));
            if a != b {
                return Err(Error::Input(format!(
                    "teacher: token {id} is {:?} in the tokenizer of {} but {:?} in the student's \
                     ({student_name}): knowledge distillation needs the same tokenizer",
                    a.unwrap_or_default(),
                    self.name,
                    b.unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    /// The teacher's final-normed hidden states of a batch into `hidden` (`[rows × dim_t]`),
    /// forward only.
    pub fn hidden_states(&self, be: &B, b: &TrainBatch<'_>, hidden: &mut B::Buf) -> Result<()> {
        self.model.hidden_states(be, b, hidden)
    }

    /// The matrix that maps the teacher's hidden states to logits (`[vocab × dim_t]`).
    pub fn head(&self) -> &B::Weight {
        self.model.output_weight()
    }

    /// Width of its hidden states.
    pub fn dim(&self) -> usize {
        self.model.config.dim
    }

    /// Bytes its weights take, as stored (a line of the run's notes).
    pub fn weight_bytes(&self, be: &B) -> usize {
        let bytes = |w: &B::Weight| {
            let (r, c) = be.weight_shape(w);
            match be.weight_format(w) {
                WeightFormat::F32 => 4 * r * c,
                WeightFormat::BF16 => 2 * r * c,
                WeightFormat::Quant(q) => q.matrix_bytes(r, c).unwrap_or(4 * r * c),
            }
        };
        let mut total = bytes(&self.model.embed);
        if let Some(o) = &self.model.output {
            total += bytes(&o.weight);
        }
        for layer in &self.model.layers {
            for l in layer.projections() {
                total += bytes(&l.weight);
            }
        }
        total
    }
}
