//! The one model builder: a [`Llama`] of any [`super::family::Family`] from a [`WeightSource`]
//! (a Hugging Face checkpoint, a GGUF file, or random initialisation), checking every tensor's
//! shape against the configuration and that the source holds nothing the model does not use.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

use afinar_engine::{Backend, QuantFormat, WeightFormat};

use super::{Llama, LlamaConfig};
use crate::blocks::{Attention, DecoderLayer, Linear, Mlp, QkNorm, RmsNorm};
use crate::{Error, Result};

/// A matrix kept in GGUF blocks: its shape, block layout and row-major bytes.
pub(crate) type QuantTensor = (Vec<usize>, QuantFormat, Vec<u8>);

/// A tensor getter that hides the checkpoint format and its naming scheme; names are Hugging
/// Face's.
pub(crate) trait WeightSource {
    /// The file (or a description of the source) for error messages.
    fn file(&self) -> &Path;
    /// Whether the source holds `hf_name`.
    fn has(&self, hf_name: &str) -> bool;
    /// The tensor as f32 with its row-major shape; `shape` is the one the configuration
    /// expects (a source that stores shapes returns its own, which the builder checks).
    fn load(&self, hf_name: &str, shape: &[usize]) -> Result<(Vec<usize>, Vec<f32>)>;
    /// The matrix's raw blocks with its shape, when it is stored in a block format the engine
    /// can keep ([`QuantFormat`]) and quantized weights were asked for (`keep_quantized`, or
    /// `format`, the storage wanted for this matrix, is that block format); `None` otherwise.
    fn load_quantized(&self, _hf_name: &str, _format: WeightFormat) -> Result<Option<QuantTensor>> {
        Ok(None)
    }
    /// The file's tensors that none of the `used` (Hugging Face) names account for.
    fn unused(&self, used: &BTreeSet<String>) -> Vec<String>;
}

/// Builds every block of the model from `src`, checking each tensor's shape: the embedding and
/// output projection stored as `format`, the attention and MLP projections as `proj_format`,
/// norm gains in f32.
pub(crate) fn build<B: Backend>(
    be: &B,
    config: LlamaConfig,
    inv_freq: Vec<f32>,
    src: &dyn WeightSource,
    format: WeightFormat,
    proj_format: WeightFormat,
) -> Result<Llama<B>> {
    let c = &config;
    let used = RefCell::new(BTreeSet::new());
    let load_checked = |name: &str, expect: &[usize]| -> Result<Vec<f32>> {
        used.borrow_mut().insert(name.to_string());
        if !src.has(name) {
            return Err(Error::Weights {
                file: src.file().to_path_buf(),
                tensor: name.into(),
                msg: "missing from the checkpoint".into(),
            });
        }
        let (shape, data) = src.load(name, expect)?;
        if shape != expect {
            return Err(Error::Weights {
                file: src.file().to_path_buf(),
                tensor: name.into(),
                msg: format!("shape {shape:?}, the config needs {expect:?}"),
            });
        }
        Ok(data)
    };
    let weight = |name: &str, rows: usize, cols: usize, format: WeightFormat| -> Result<B::Weight> {
        used.borrow_mut().insert(name.to_string());
        if src.has(name) {
            if let Some((shape, q, blocks)) = src.load_quantized(name, format)? {
                if shape != [rows, cols] {
                    return Err(Error::Weights {
                        file: src.file().to_path_buf(),
                        tensor: name.into(),
                        msg: format!("shape {shape:?}, the config needs {:?}", [rows, cols]),
                    });
                }
                return Ok(be.weight_quantized(&blocks, q, rows, cols)?);
            }
        }
        if let WeightFormat::Quant(q) = format {
            if q.matrix_bytes(rows, cols).is_none() {
                return Err(Error::Weights {
                    file: src.file().to_path_buf(),
                    tensor: name.into(),
                    msg: format!(
                        "[{rows}, {cols}] cannot be stored as {}: its rows need a multiple of {} values",
                        q.name(),
                        q.block_len()
                    ),
                });
            }
        }
        let data = load_checked(name, &[rows, cols])?;
        Ok(be.weight(&data, rows, cols, format)?)
    };
    let matrix = |name: &str, rows: usize, cols: usize| -> Result<Linear<B>> {
        Ok(Linear::new(be, weight(name, rows, cols, proj_format)?))
    };
    let norm = |name: &str, dim: usize| -> Result<RmsNorm<B>> {
        let data = load_checked(name, &[dim])?;
        Ok(RmsNorm { weight: be.from_host(&data)?, dim, eps: c.norm_eps, state: None })
    };
    let (q_rows, kv_rows) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let mut layers = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        let attn_norm = norm(&p("input_layernorm.weight"), c.dim)?;
        let (wq, wk, wv, wo) = (
            matrix(&p("self_attn.q_proj.weight"), q_rows, c.dim)?,
            matrix(&p("self_attn.k_proj.weight"), kv_rows, c.dim)?,
            matrix(&p("self_attn.v_proj.weight"), kv_rows, c.dim)?,
            matrix(&p("self_attn.o_proj.weight"), c.dim, q_rows)?,
        );
        let qk_norm = match c.family.qk_norm() {
            true => Some(QkNorm {
                q: norm(&p("self_attn.q_norm.weight"), c.head_dim)?,
                k: norm(&p("self_attn.k_norm.weight"), c.head_dim)?,
            }),
            false => None,
        };
        let attn = Attention {
            wq,
            wk,
            wv,
            wo,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            qk_norm,
        };
        let mlp_norm = norm(&p("post_attention_layernorm.weight"), c.dim)?;
        let mlp = Mlp {
            gate: matrix(&p("mlp.gate_proj.weight"), c.ffn_dim, c.dim)?,
            up: matrix(&p("mlp.up_proj.weight"), c.ffn_dim, c.dim)?,
            down: matrix(&p("mlp.down_proj.weight"), c.dim, c.ffn_dim)?,
            ffn_dim: c.ffn_dim,
        };
        layers.push(DecoderLayer { attn_norm, attn, mlp_norm, mlp });
    }
    let embed = weight("model.embed_tokens.weight", c.vocab_size, c.dim, format)?;
    let output = if c.tie_embeddings {
        None
    } else {
        Some(Linear::new(be, weight("lm_head.weight", c.vocab_size, c.dim, format)?))
    };
    let norm = norm("model.norm.weight", c.dim)?;
    let mut used = used.into_inner();
    if c.tie_embeddings {
        // Tied checkpoints may still carry a copy of the embedding as lm_head (transformers
        // ignores it too).
        used.insert("lm_head.weight".into());
    }
    let unused = src.unused(&used);
    if !unused.is_empty() {
        const SHOWN: usize = 6;
        let more =
            if unused.len() > SHOWN { format!(", … ({} in all)", unused.len()) } else { String::new() };
        return Err(Error::Weights {
            file: src.file().to_path_buf(),
            tensor: unused[..unused.len().min(SHOWN)].join("`, `") + &more,
            msg: format!(
                "not used by a model of the configured shape ({} layers, vocab {}, {}, family `{}`): the \
                 config and the weights disagree; fix the config (e.g. num_hidden_layers) or the checkpoint",
                c.n_layers,
                c.vocab_size,
                if c.tie_embeddings { "tied embeddings" } else { "separate lm_head" },
                c.family.spec().name
            ),
        });
    }
    Ok(Llama::from_parts(config, embed, layers, norm, output, inv_freq))
}
