//! Model families: what distinguishes one decoder architecture from another, in one place.
//!
//! A family is a [`FamilySpec`] in its own file ([`llama`], [`qwen3`]): its names in
//! transformers (`model_type`, `architectures`) and llama.cpp (`general.architecture`), its
//! architectural switches (a norm on queries and keys) and its defaults for keys a config may
//! omit. [`Family::from_hf_model_type`] and [`Family::from_gguf_arch`] are the only places that
//! choose a family; the tensor name tables (Hugging Face ↔ GGUF, with each tensor's shape) and
//! the Q/K row permutation rule of GGUF files are here too, shared by loading, export and adapter
//! export. Adding a family: a file with its `SPEC`, a variant of [`Family`], its presets and
//! configs.

mod llama;
mod qwen3;

use std::path::Path;

use super::LlamaConfig;
use crate::{Error, Result};

/// The description of one model family.
#[derive(Debug)]
pub struct FamilySpec {
    /// Short name (`"llama"`).
    pub name: &'static str,
    /// The models it covers, for messages (`"Llama-3.x, SmolLM2"`).
    pub models: &'static str,
    /// transformers' `model_type`.
    pub hf_model_type: &'static str,
    /// transformers' class, written to `architectures`.
    pub hf_architecture: &'static str,
    /// llama.cpp's `general.architecture` (and prefix of its metadata keys).
    pub gguf_arch: &'static str,
    /// A per-head RMSNorm on queries and keys before RoPE (`q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// llama.cpp's GGUF files store the Q and K rows permuted for interleaved RoPE.
    pub gguf_permutes_qk: bool,
    /// RoPE base when the config does not say.
    pub default_rope_theta: f64,
    /// RMSNorm epsilon when the config does not say.
    pub default_norm_eps: f64,
    /// Head size when the config does not say (`None`: `hidden_size / heads`).
    pub default_head_dim: Option<usize>,
}

/// A supported model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// Llama-3.x, SmolLM2.
    #[default]
    Llama,
    /// Qwen3 (dense).
    Qwen3,
}

impl Family {
    /// Every family, in display order.
    pub const ALL: [Family; 2] = [Family::Llama, Family::Qwen3];

    /// This family's description.
    pub fn spec(self) -> &'static FamilySpec {
        match self {
            Family::Llama => &llama::SPEC,
            Family::Qwen3 => &qwen3::SPEC,
        }
    }

    /// Whether the attention normalises queries and keys per head before RoPE.
    pub fn qk_norm(self) -> bool {
        self.spec().qk_norm
    }

    fn supported(name: impl Fn(&FamilySpec) -> &'static str) -> String {
        Self::ALL
            .iter()
            .map(|f| format!("`{}` ({})", name(f.spec()), f.spec().models))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The family of a Hugging Face `config.json`'s `model_type`; `file` names it in the error.
    pub fn from_hf_model_type(model_type: &str, file: &Path) -> Result<Self> {
        Self::ALL.into_iter().find(|f| f.spec().hf_model_type == model_type).ok_or_else(|| Error::Config {
            file: file.to_path_buf(),
            key: "model_type".into(),
            msg: format!(
                "unsupported architecture `{model_type}`; afinar supports {}",
                Self::supported(|s| s.hf_model_type)
            ),
        })
    }

    /// The family of a GGUF file's `general.architecture`; `file` names it in the error.
    pub fn from_gguf_arch(arch: &str, file: &Path) -> Result<Self> {
        Self::ALL.into_iter().find(|f| f.spec().gguf_arch == arch).ok_or_else(|| Error::Config {
            file: file.to_path_buf(),
            key: "general.architecture".into(),
            msg: format!(
                "unsupported architecture `{arch}`; afinar supports {}",
                Self::supported(|s| s.gguf_arch)
            ),
        })
    }

    /// The GGUF name of a Hugging Face tensor name of this family (`None` for a name the family
    /// does not have).
    pub fn gguf_name(self, hf: &str) -> Option<String> {
        if let Some(t) = GLOBAL_TENSORS.iter().find(|t| t.hf == hf) {
            return Some(t.gguf.to_string());
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, field) = rest.split_once('.')?;
        layer.parse::<usize>().ok()?;
        let t = self.layer_tensors().find(|t| t.hf == field)?;
        Some(format!("blk.{layer}.{}", t.gguf))
    }

    /// The per-layer tensors of this family, in file order.
    pub fn layer_tensors(self) -> impl Iterator<Item = &'static TensorName> {
        LAYER_TENSORS.iter().filter(move |t| !t.qk_norm_only || self.qk_norm())
    }

    /// Heads whose rows llama.cpp permutes in a GGUF file for the Hugging Face tensor `hf`
    /// (queries and keys of a family that permutes), `None` otherwise. Also applies to a LoRA
    /// adapter's `lora_b` of those projections.
    pub fn gguf_permuted_heads(self, hf: &str, c: &LlamaConfig) -> Option<usize> {
        if !self.spec().gguf_permutes_qk {
            return None;
        }
        if hf.ends_with("self_attn.q_proj.weight") {
            Some(c.n_heads)
        } else if hf.ends_with("self_attn.k_proj.weight") {
            Some(c.n_kv_heads)
        } else {
            None
        }
    }
}

/// How a tensor's shape follows from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeRule {
    /// `[dim]` (norm gains).
    Dim,
    /// `[head_dim]` (query/key norm gains).
    HeadDim,
    /// `[heads · head_dim, dim]`.
    QOut,
    /// `[kv_heads · head_dim, dim]`.
    KvOut,
    /// `[dim, heads · head_dim]`.
    QIn,
    /// `[ffn, dim]`.
    FfnOut,
    /// `[dim, ffn]`.
    FfnIn,
    /// `[vocab, dim]`.
    Vocab,
}

impl ShapeRule {
    /// The shape under `c`.
    pub fn shape(self, c: &LlamaConfig) -> Vec<usize> {
        let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        match self {
            ShapeRule::Dim => vec![c.dim],
            ShapeRule::HeadDim => vec![c.head_dim],
            ShapeRule::QOut => vec![q, c.dim],
            ShapeRule::KvOut => vec![kv, c.dim],
            ShapeRule::QIn => vec![c.dim, q],
            ShapeRule::FfnOut => vec![c.ffn_dim, c.dim],
            ShapeRule::FfnIn => vec![c.dim, c.ffn_dim],
            ShapeRule::Vocab => vec![c.vocab_size, c.dim],
        }
    }
}

/// One tensor's names (per-layer ones without the `model.layers.N.` / `blk.N.` prefix).
#[derive(Debug)]
pub struct TensorName {
    /// Hugging Face name.
    pub hf: &'static str,
    /// llama.cpp name.
    pub gguf: &'static str,
    /// Its shape.
    pub shape: ShapeRule,
    /// Only in families with [`FamilySpec::qk_norm`].
    pub qk_norm_only: bool,
}

const fn t(hf: &'static str, gguf: &'static str, shape: ShapeRule) -> TensorName {
    TensorName { hf, gguf, shape, qk_norm_only: false }
}

/// The tensors outside the layers.
pub const GLOBAL_TENSORS: [TensorName; 3] = [
    t("model.embed_tokens.weight", "token_embd.weight", ShapeRule::Vocab),
    t("model.norm.weight", "output_norm.weight", ShapeRule::Dim),
    t("lm_head.weight", "output.weight", ShapeRule::Vocab),
];

/// The tensors of one decoder layer, in file order.
pub const LAYER_TENSORS: [TensorName; 11] = [
    t("input_layernorm.weight", "attn_norm.weight", ShapeRule::Dim),
    t("self_attn.q_proj.weight", "attn_q.weight", ShapeRule::QOut),
    t("self_attn.k_proj.weight", "attn_k.weight", ShapeRule::KvOut),
    t("self_attn.v_proj.weight", "attn_v.weight", ShapeRule::KvOut),
    t("self_attn.o_proj.weight", "attn_output.weight", ShapeRule::QIn),
    TensorName {
        qk_norm_only: true,
        ..t("self_attn.q_norm.weight", "attn_q_norm.weight", ShapeRule::HeadDim)
    },
    TensorName {
        qk_norm_only: true,
        ..t("self_attn.k_norm.weight", "attn_k_norm.weight", ShapeRule::HeadDim)
    },
    t("post_attention_layernorm.weight", "ffn_norm.weight", ShapeRule::Dim),
    t("mlp.gate_proj.weight", "ffn_gate.weight", ShapeRule::FfnOut),
    t("mlp.up_proj.weight", "ffn_up.weight", ShapeRule::FfnOut),
    t("mlp.down_proj.weight", "ffn_down.weight", ShapeRule::FfnIn),
];

impl LlamaConfig {
    /// The shape and GGUF name of a Hugging Face tensor of this model (`None` when the model
    /// has no such tensor: an unknown name, a layer past the last, a family without it).
    pub fn tensor(&self, hf: &str) -> Option<(Vec<usize>, String)> {
        let gguf = self.family.gguf_name(hf)?;
        let rule = match GLOBAL_TENSORS.iter().find(|t| t.hf == hf) {
            Some(t) => t.shape,
            None => {
                let (layer, field) = hf.strip_prefix("model.layers.")?.split_once('.')?;
                if layer.parse::<usize>().ok()? >= self.n_layers {
                    return None;
                }
                self.family.layer_tensors().find(|t| t.hf == field)?.shape
            }
        };
        Some((rule.shape(self), gguf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_per_family() {
        assert_eq!(
            Family::Llama.gguf_name("model.layers.3.self_attn.q_proj.weight").unwrap(),
            "blk.3.attn_q.weight"
        );
        assert_eq!(Family::Llama.gguf_name("model.layers.3.self_attn.q_norm.weight"), None);
        assert_eq!(
            Family::Qwen3.gguf_name("model.layers.3.self_attn.k_norm.weight").unwrap(),
            "blk.3.attn_k_norm.weight"
        );
        assert_eq!(Family::Qwen3.gguf_name("lm_head.weight").unwrap(), "output.weight");
        assert_eq!(Family::Qwen3.gguf_name("model.layers.x.mlp.up_proj.weight"), None);
        let p = Path::new("config.json");
        assert_eq!(Family::from_hf_model_type("qwen3", p).unwrap(), Family::Qwen3);
        let e = Family::from_hf_model_type("qwen2", p).unwrap_err().to_string();
        assert!(e.contains("qwen2") && e.contains("`qwen3` (Qwen3)"), "{e}");
        assert!(Family::from_gguf_arch("gemma", p).is_err());
    }
}
