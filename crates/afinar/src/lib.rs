//! afinar: fine-tune, evaluate, quantize and run Llama-3 family models.
//!
//! Layout: [`blocks`] are the layers a model is built from (attention, MLP, norm, decoder layer),
//! [`models`] wire blocks with a model family's numbers and load checkpoints, [`generate`] runs
//! them token by token, [`quantize`] writes them as llama.cpp GGUF files. Kernels live in the
//! `afinar-engine` crate, checkpoint formats in
//! `afinar-checkpoint`, tokenizers and chat templates in `afinar-tokenizer`.

pub mod blocks;
pub mod config;
pub mod error;
pub mod eval;
pub mod generate;
pub mod models;
pub mod objectives;
pub mod plot;
pub mod quantize;
pub mod recipes;
pub mod rewards;

pub use afinar_checkpoint as checkpoint;
pub use afinar_data as data;
pub use afinar_engine as engine;
pub use afinar_formats as formats;
pub use afinar_hub as hub;
pub use afinar_tokenizer as tokenizer;
pub use error::{Error, Result};
