//! The layers a Llama-style decoder is built from, each written once over
//! [`afinar_engine::Backend`]: [`RmsNorm`], [`Attention`] (grouped-query, RoPE, KV cache),
//! [`Mlp`] (SwiGLU) and [`DecoderLayer`] (pre-norm residual block).

mod attention;
mod decoder;
mod kv_cache;
mod mlp;
mod norm;

pub use attention::{Attention, AttnScratch, KvTarget};
pub use decoder::{DecoderLayer, LayerScratch};
pub use kv_cache::KvCache;
pub use mlp::{Mlp, MlpScratch};
pub use norm::RmsNorm;
