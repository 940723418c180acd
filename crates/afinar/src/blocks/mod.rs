//! The layers a Llama-style decoder is built from, each written once over
//! [`afinar_engine::Backend`] with its forward and backward side by side: [`Linear`] (frozen,
//! trainable or LoRA-adapted), [`RmsNorm`], [`Attention`] (grouped-query, RoPE, KV cache),
//! [`Mlp`] (SwiGLU) and [`DecoderLayer`] (pre-norm residual block).

mod attention;
mod decoder;
mod kv_cache;
mod linear;
mod mlp;
mod norm;

pub use attention::{Attention, AttnActs, AttnGrads, HalfAttnActs, KvTarget, QkNorm, Tokens};
pub use decoder::{DecoderLayer, HalfLayerActs, LayerActs, LayerGrads, LayerScratch, PROJECTIONS};
pub use kv_cache::{KvCache, KvDtype, KvStore};
pub use linear::{Linear, Lora, ParamState};
pub use mlp::{HalfMlpActs, Mlp, MlpActs, MlpGrads};
pub use norm::{Dx, RmsNorm};
