//! Decoder models of the supported families ([`family`]: Llama-3.x/SmolLM2, Qwen3):
//! configurations ([`LlamaConfig`], [`presets`]), the decoder ([`Llama`]) wired from
//! [`crate::blocks`] by one builder over a weight source (checkpoint, GGUF, random
//! initialisation), and checkpoint loading ([`load`]).

mod adapter;
mod build;
mod config;
pub mod family;
mod head;
mod init;
mod llama;
pub mod load;
pub mod presets;
mod train;
mod trainable;

pub use adapter::LoraAdapter;
pub use config::LlamaConfig;
pub use family::Family;
pub use llama::{Llama, Logits, ModelTensor, TensorRef};
pub use load::{is_gguf, load_model, load_tokenizer, LoadOptions, LoadedModel};
pub use train::{ActivationCheckpointing, LossSum, TrainBatch, Update};
pub use trainable::{LazyTensor, LoraSpec, LoraTarget, NamedTensor, ParamMut};
