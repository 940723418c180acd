//! Llama-3-family models: configurations ([`LlamaConfig`], [`presets`]), the decoder
//! ([`Llama`]) wired from [`crate::blocks`], and checkpoint loading ([`load`]).

mod adapter;
mod config;
mod head;
mod init;
mod llama;
pub mod load;
pub mod presets;
mod train;
mod trainable;

pub use adapter::LoraAdapter;
pub use config::LlamaConfig;
pub use llama::{Llama, Logits};
pub use load::{is_gguf, load_model, load_tokenizer, LoadOptions, LoadedModel};
pub use train::{ActivationCheckpointing, LossSum, TrainBatch, Update};
pub use trainable::{LazyTensor, LoraSpec, LoraTarget, NamedTensor, ParamMut};
