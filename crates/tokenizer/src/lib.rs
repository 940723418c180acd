//! Tokenizer for afinar: byte-level BPE as Llama-3, Qwen3 and SmolLM2 use it, and chat prompts.
//!
//! - [`Tokenizer::from_file`] loads a Hugging Face `tokenizer.json` or a tiktoken
//!   `tokenizer.model` (Meta's Llama-3 format), reading `tokenizer_config.json` beside it for the
//!   chat template and BOS/EOS; [`Tokenizer::from_gguf`] builds the tokenizer stored in GGUF
//!   metadata from a [`GgufTokenizerSpec`].
//! - [`Tokenizer::encode`] / [`Tokenizer::decode`] give the same ids and text as Hugging Face
//!   `tokenizers`; [`DecodeStream`] decodes token by token for streaming output.
//! - [`Tokenizer::save_hf`] writes `tokenizer.json` + `tokenizer_config.json` for a Hugging Face
//!   checkpoint folder (loadable by `tokenizers`, transformers and [`Tokenizer::from_file`]).
//! - [`Tokenizer::to_gguf_spec`] gives the GGUF metadata form (the inverse of
//!   [`Tokenizer::from_gguf`]).
//! - [`render_chat`] renders a conversation with the model's jinja template (like transformers'
//!   `apply_chat_template`) or the native Llama-3 format; [`render_chat_with`] adds template
//!   variables ([`TemplateVars`]).
//! - [`token_stats`] measures tokens per word.
//!
//! The implementation is self-contained: hand-written pre-tokenizers for the Llama-3, Qwen2 and
//! GPT-2 split regexes (see [`PreTokenizer`]), the NFC normalizer Qwen uses ([`Normalizer`]), BPE
//! by merge rank, and an added-token matcher. Everything family-specific is read from the files:
//! `tokenizer.json` decides the normalizer and split regex, `tokenizer_config.json` the chat
//! template and BOS/EOS/PAD; [`render_chat_with`] passes template variables such as Qwen3's
//! `enable_thinking`.
//!
//! ```no_run
//! use afinar_tokenizer::{render_chat, Message, Tokenizer};
//! # fn main() -> Result<(), afinar_tokenizer::TokenizerError> {
//! let tok = Tokenizer::from_file(std::path::Path::new("tokenizer.json"))?;
//! let prompt = render_chat(&tok, &[Message::new("user", "Hola")], true)?;
//! let ids = tok.encode(&prompt, false)?;
//! assert_eq!(tok.decode(&ids, false)?, prompt);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod bpe;
mod bytelevel;
mod chat;
mod error;
mod gguf_spec;
mod hfjson;
mod load;
mod pretok;
mod save;
mod special;
mod stats;
mod tokenizer;

pub use chat::{
    render_chat, render_chat_with, render_llama3, render_template, render_template_with, Message,
    TemplateVars,
};
pub use error::TokenizerError;
pub use load::GgufTokenizerSpec;
pub use pretok::PreTokenizer;
pub use stats::{count_words, token_stats, TokenStats};
pub use tokenizer::{DecodeStream, Normalizer, Tokenizer};

#[cfg(test)]
mod tests {
    #[test]
    fn tokenizer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Tokenizer>();
    }
}
