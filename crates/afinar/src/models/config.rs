//! The numbers that define a Llama-3-family model, from presets, HF `config.json` or GGUF metadata.

use std::path::Path;

use afinar_engine::{rope_inv_freq, RopeScaling};
use serde_json::Value;

use super::family::Family;
use crate::{Error, Result};

/// Architecture hyper-parameters of a Llama-style decoder (of any supported [`Family`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// The model family: its architectural switches and names ([`Family`]).
    pub family: Family,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub dim: usize,
    /// Number of decoder layers.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub n_kv_heads: usize,
    /// Size of one attention head.
    pub head_dim: usize,
    /// Hidden size of the SwiGLU MLP.
    pub ffn_dim: usize,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f64,
    /// Llama-3.1+ frequency scaling.
    pub rope_scaling: Option<RopeScaling>,
    /// Longest sequence the model supports.
    pub max_seq_len: usize,
    /// Output projection shares the token embedding (Llama-3.2 1B/3B, SmolLM2).
    pub tie_embeddings: bool,
}

/// Reads a JSON file, naming it in the error when it cannot be read or parsed.
pub fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        file: path.to_path_buf(),
        key: "(document)".into(),
        msg: format!("not valid JSON: {e}"),
    })
}

impl LlamaConfig {
    /// Checks internal consistency; `source` names the file for the error message.
    pub fn validate(&self, source: &Path) -> Result<()> {
        let err = |key: &str, msg: String| Error::Config { file: source.to_path_buf(), key: key.into(), msg };
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.dim),
            ("num_hidden_layers", self.n_layers),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.ffn_dim),
            ("max_position_embeddings", self.max_seq_len),
        ] {
            if v == 0 {
                return Err(err(key, "must be positive".into()));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(err(
                "num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {} key/value heads",
                    self.n_heads, self.n_kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(err("head_dim", format!("{} is odd; RoPE needs pairs", self.head_dim)));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(err("rope_theta", "must be positive".into()));
        }
        Ok(())
    }

    /// RoPE inverse frequencies for this model.
    pub fn inv_freq(&self) -> Vec<f32> {
        rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)
    }

    /// Number of parameters (embedding counted once when tied).
    pub fn num_params(&self) -> usize {
        let attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads);
        let mlp = 3 * self.dim * self.ffn_dim;
        let qk_norm = if self.family.qk_norm() { 2 * self.head_dim } else { 0 };
        let layer = attn + mlp + 2 * self.dim + qk_norm;
        let embed = self.vocab_size * self.dim;
        embed * if self.tie_embeddings { 1 } else { 2 } + self.n_layers * layer + self.dim
    }

    /// Reads a Hugging Face `config.json` of a supported family (`model_type`; transformers 4.x
    /// `rope_theta` / `rope_scaling` keys or 5.x `rope_parameters`).
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        Self::from_hf_value(&read_json(path)?, path)
    }

    /// Parses an already loaded HF config; `path` is used in error messages.
    pub fn from_hf_value(json: &Value, path: &Path) -> Result<Self> {
        let err = |key: &str, msg: &str| Error::Config {
            file: path.to_path_buf(),
            key: key.into(),
            msg: msg.into(),
        };
        let model_type = match json.get("model_type") {
            None | Some(Value::Null) => "llama",
            Some(v) => v.as_str().ok_or_else(|| err("model_type", "expected a string"))?,
        };
        let family = Family::from_hf_model_type(model_type, path)?;
        let spec = family.spec();
        let usize_key = |key: &str| -> Result<usize> {
            json.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| err(key, "missing or not a non-negative integer"))
        };
        let dim = usize_key("hidden_size")?;
        let n_heads = usize_key("num_attention_heads")?;
        let n_kv_heads = match json.get("num_key_value_heads") {
            None | Some(Value::Null) => n_heads,
            Some(_) => usize_key("num_key_value_heads")?,
        };
        let head_dim = match (json.get("head_dim"), spec.default_head_dim) {
            (None | Some(Value::Null), Some(d)) => d,
            (None | Some(Value::Null), None) => {
                if n_heads == 0 || dim % n_heads != 0 {
                    return Err(err("hidden_size", "not divisible by num_attention_heads"));
                }
                dim / n_heads
            }
            (Some(_), _) => usize_key("head_dim")?,
        };
        // transformers 5 moved rope_theta and rope_scaling into rope_parameters.
        let rope_params = json.get("rope_parameters").filter(|v| v.is_object());
        // Optional keys: absent or null takes the default; anything else must be of the right type.
        let opt_f64 = |obj: &Value, key: &str, shown: &str| -> Result<Option<f64>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() => Ok(Some(x)),
                    _ => Err(err(shown, &format!("expected a number, got {v}"))),
                },
            }
        };
        let opt_bool = |key: &str| -> Result<Option<bool>> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(v) => Err(err(key, &format!("expected true or false, got {v}"))),
            }
        };
        let rope_theta = match opt_f64(json, "rope_theta", "rope_theta")? {
            Some(t) => Some(t),
            None => match rope_params {
                Some(p) => opt_f64(p, "rope_theta", "rope_parameters.rope_theta")?,
                None => None,
            },
        }
        .unwrap_or(spec.default_rope_theta);
        let norm_eps = opt_f64(json, "rms_norm_eps", "rms_norm_eps")?.unwrap_or(spec.default_norm_eps);
        if norm_eps <= 0.0 {
            return Err(err("rms_norm_eps", &format!("expected a number > 0, got {norm_eps}")));
        }
        let tie_embeddings = opt_bool("tie_word_embeddings")?.unwrap_or(false);
        // Switches afinar's decoder does not have: refuse rather than compute another model.
        for key in ["attention_bias", "mlp_bias", "use_sliding_window"] {
            if opt_bool(key)? == Some(true) {
                return Err(err(
                    key,
                    &format!("`{key}: true` is not supported (afinar's decoder has no such variant)"),
                ));
            }
        }
        let scaling_obj = json.get("rope_scaling").filter(|v| v.is_object()).or(rope_params);
        let rope_scaling = match scaling_obj {
            None => None,
            Some(s) => {
                let kind =
                    s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
                match kind {
                    "default" => None,
                    "llama3" => {
                        let f = |k: &str| -> Result<f64> {
                            s.get(k)
                                .and_then(Value::as_f64)
                                .ok_or_else(|| err(&format!("rope_scaling.{k}"), "missing or not a number"))
                        };
                        Some(RopeScaling {
                            factor: f("factor")?,
                            low_freq_factor: f("low_freq_factor")?,
                            high_freq_factor: f("high_freq_factor")?,
                            original_max_position_embeddings: f("original_max_position_embeddings")?,
                        })
                    }
                    other => {
                        return Err(err(
                            "rope_scaling.rope_type",
                            &format!("unsupported RoPE scaling `{other}` (supported: default, llama3)"),
                        ))
                    }
                }
            }
        };
        let cfg = LlamaConfig {
            family,
            vocab_size: usize_key("vocab_size")?,
            dim,
            n_layers: usize_key("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: usize_key("intermediate_size")?,
            norm_eps: norm_eps as f32,
            rope_theta,
            rope_scaling,
            max_seq_len: usize_key("max_position_embeddings")?,
            tie_embeddings,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }
}

impl LlamaConfig {
    /// A Hugging Face `config.json` for this architecture (`LlamaForCausalLM`,
    /// `Qwen3ForCausalLM`, …), as `transformers` writes it.
    pub fn to_hf_json(&self, bos_id: Option<u32>, eos_id: Option<u32>, dtype: &str) -> Value {
        let spec = self.family.spec();
        let mut v = serde_json::json!({
            "architectures": [spec.hf_architecture],
            "model_type": spec.hf_model_type,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "hidden_act": "silu",
            "hidden_size": self.dim,
            "intermediate_size": self.ffn_dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_seq_len,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_embeddings,
            "vocab_size": self.vocab_size,
            "mlp_bias": false,
            "torch_dtype": dtype,
            "use_cache": true,
        });
        if self.family == Family::Qwen3 {
            v["use_sliding_window"] = false.into();
            v["sliding_window"] = Value::Null;
            v["max_window_layers"] = self.n_layers.into();
        }
        if let Some(s) = self.rope_scaling {
            v["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        if let Some(b) = bos_id {
            v["bos_token_id"] = b.into();
        }
        if let Some(e) = eos_id {
            v["eos_token_id"] = e.into();
        }
        v
    }
}

impl LlamaConfig {
    /// Reads the architecture numbers of a GGUF file's metadata (`general.architecture` chooses
    /// the family, whose `<arch>.*` keys are read); `path` names the file in errors. The head
    /// size is `attention.key_length`, else `rope.dimension_count`, else `dim / heads`; tied
    /// embeddings when the file has no `output.weight`.
    pub fn from_gguf(file: &afinar_checkpoint::gguf::GgufFile, path: &Path) -> Result<Self> {
        use afinar_checkpoint::gguf::MetaValue;
        let err = |key: &str, msg: &str| Error::Config {
            file: path.to_path_buf(),
            key: key.into(),
            msg: msg.into(),
        };
        let arch = file
            .get("general.architecture")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| err("general.architecture", "missing or not a string"))?;
        let family = Family::from_gguf_arch(arch, path)?;
        let spec = family.spec();
        let int = |key: &str| -> Result<Option<usize>> {
            match file.get(&format!("{arch}.{key}")) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|v| Some(v as usize))
                    .ok_or_else(|| err(&format!("{arch}.{key}"), "not an integer")),
            }
        };
        let required = |key: &str| -> Result<usize> {
            int(key)?.ok_or_else(|| err(&format!("{arch}.{key}"), "missing"))
        };
        let float = |key: &str| -> Result<Option<f64>> {
            match file.get(&format!("{arch}.{key}")) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .map(Some)
                    .ok_or_else(|| err(&format!("{arch}.{key}"), "not a finite number")),
            }
        };
        let dim = required("embedding_length")?;
        let n_heads = required("attention.head_count")?;
        if n_heads == 0 {
            return Err(err(&format!("{arch}.attention.head_count"), "must be positive"));
        }
        let n_kv_heads = int("attention.head_count_kv")?.unwrap_or(n_heads);
        let head_dim = match int("attention.key_length")? {
            Some(h) => h,
            None => int("rope.dimension_count")?.unwrap_or(dim / n_heads),
        };
        let vocab_size = match int("vocab_size")? {
            Some(v) => v,
            None => file.tensor_info("token_embd.weight").and_then(|t| t.shape.first().copied()).unwrap_or(0),
        };
        if let Some(kind) = file.get(&format!("{arch}.rope.scaling.type")).and_then(MetaValue::as_str) {
            if kind != "none" {
                return Err(err(
                    &format!("{arch}.rope.scaling.type"),
                    &format!("RoPE scaling `{kind}` is not supported"),
                ));
            }
        }
        let config = LlamaConfig {
            family,
            vocab_size,
            dim,
            n_layers: required("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: required("feed_forward_length")?,
            norm_eps: float("attention.layer_norm_rms_epsilon")?.unwrap_or(spec.default_norm_eps) as f32,
            rope_theta: float("rope.freq_base")?.unwrap_or(spec.default_rope_theta),
            rope_scaling: None,
            max_seq_len: required("context_length")?,
            tie_embeddings: !file.contains("output.weight"),
        };
        config.validate(path)?;
        Ok(config)
    }
}
