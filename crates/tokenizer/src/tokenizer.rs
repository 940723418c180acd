//! The [`Tokenizer`]: encoding, decoding and token lookups.

use std::path::Path;

use crate::bpe::Bpe;
use crate::bytelevel;
use crate::pretok::PreTokenizer;
use crate::special::{AddedMatcher, AddedToken};
use crate::TokenizerError;

/// Names of tokens that end a generation, besides the tokenizer's own EOS.
const STOP_TOKENS: [&str; 5] = ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>"];

/// The Unicode normalization applied to text (outside added tokens) before pre-tokenization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalizer {
    /// Text is used as it is (Llama-3, SmolLM2).
    None,
    /// Unicode NFC, canonical composition (Qwen2/2.5/3's `{"type": "NFC"}`).
    Nfc,
}

impl Normalizer {
    /// `text` normalized; borrowed when nothing changes (always for ASCII).
    pub fn apply<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};
        match self {
            Normalizer::Nfc if !text.is_ascii() && is_nfc_quick(text.chars()) != IsNormalized::Yes => {
                let nfc: String = text.nfc().collect();
                if nfc == text {
                    std::borrow::Cow::Borrowed(text)
                } else {
                    std::borrow::Cow::Owned(nfc)
                }
            }
            _ => std::borrow::Cow::Borrowed(text),
        }
    }
}

/// A byte-level BPE tokenizer (Llama-3, Qwen2/2.5/3, GPT-2-style vocabularies such as SmolLM2).
///
/// Build it with [`Tokenizer::from_file`] (Hugging Face `tokenizer.json` or tiktoken
/// `tokenizer.model`) or [`Tokenizer::from_gguf`]. Encoding gives the same ids as Hugging Face
/// `tokenizers` (and tiktoken for Llama-3); decoding turns ids back into text.
pub struct Tokenizer {
    pub(crate) bpe: Bpe,
    pub(crate) pre: PreTokenizer,
    pub(crate) normalizer: Normalizer,
    pub(crate) added: AddedMatcher,
    /// The bytes each id stands for (added tokens: their text); `None` for unused ids.
    pub(crate) id_bytes: Vec<Option<Box<[u8]>>>,
    /// Which ids are special added tokens (skipped by `decode(.., true)`).
    pub(crate) is_special: Vec<bool>,
    pub(crate) bos_id: Option<u32>,
    pub(crate) eos_id: Option<u32>,
    pub(crate) pad_id: Option<u32>,
    pub(crate) add_bos_default: bool,
    pub(crate) chat_template: Option<String>,
    pub(crate) bos_token: Option<String>,
    pub(crate) eos_token: Option<String>,
}

/// Everything a loader gathers; [`Tokenizer::assemble`] checks it and builds the tokenizer.
pub(crate) struct Parts {
    pub origin: String,
    pub bpe: Bpe,
    pub pre: PreTokenizer,
    pub added: Vec<AddedToken>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub normalizer: Normalizer,
    pub add_bos_default: bool,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

impl Tokenizer {
    pub(crate) fn assemble(p: Parts) -> Result<Self, TokenizerError> {
        let max_vocab = p.bpe.vocab().map(|(_, id)| id).max();
        let max_added = p.added.iter().map(|t| t.id).max();
        let size = max_vocab.max(max_added).map_or(0, |m| m as usize + 1);
        let mut id_bytes: Vec<Option<Box<[u8]>>> = vec![None; size];
        for (bytes, id) in p.bpe.vocab() {
            id_bytes[id as usize] = Some(bytes.into());
        }
        let mut is_special = vec![false; size];
        for t in &p.added {
            id_bytes[t.id as usize] = Some(t.content.as_bytes().into());
            is_special[t.id as usize] = t.special;
        }
        for (name, id) in [("BOS", p.bos), ("EOS", p.eos), ("PAD", p.pad)] {
            if let Some(id) = id {
                if id as usize >= size {
                    return Err(TokenizerError::format(
                        &p.origin,
                        format!("{name} id {id} is outside the vocabulary of {size} ids"),
                    ));
                }
            }
        }
        let mut tok = Tokenizer {
            bpe: p.bpe,
            pre: p.pre,
            normalizer: p.normalizer,
            added: AddedMatcher::new(p.added),
            id_bytes,
            is_special,
            bos_id: p.bos,
            eos_id: p.eos,
            pad_id: p.pad,
            add_bos_default: p.add_bos_default,
            chat_template: p.chat_template,
            bos_token: p.bos_token,
            eos_token: p.eos_token,
        };
        if tok.bos_token.is_none() {
            tok.bos_token = tok.bos_id.map(|id| tok.id_text(id));
        }
        if tok.eos_token.is_none() {
            tok.eos_token = tok.eos_id.map(|id| tok.id_text(id));
        }
        Ok(tok)
    }

    fn id_text(&self, id: u32) -> String {
        let bytes = self.id_bytes.get(id as usize).and_then(|b| b.as_deref()).unwrap_or(&[]);
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// Encodes text into token ids.
    ///
    /// Added tokens written in the text (e.g. `<|eot_id|>`) become their ids, as Hugging Face does
    /// with `split_special_tokens=False`; the rest is pre-tokenized and BPE-encoded. With `add_bos`
    /// the BOS id (if the tokenizer has one) is put first.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            if let Some(bos) = self.bos_id {
                out.push(bos);
            }
        }
        let mut pos = 0;
        while let Some(found) = self.added.find(text, pos) {
            self.encode_ordinary(&text[pos..found.start], &mut out)?;
            out.push(found.id);
            pos = found.end;
        }
        self.encode_ordinary(&text[pos..], &mut out)?;
        Ok(out)
    }

    /// Encodes text that contains no added token: normalize, pre-tokenize, BPE.
    fn encode_ordinary(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        let text = self.normalizer.apply(text);
        let mut result = Ok(());
        self.pre.split(&text, |piece| {
            if result.is_ok() {
                result = self.bpe.encode_piece(piece.as_bytes(), out);
            }
        });
        result
    }

    /// The bytes an id stands for.
    fn bytes_of(&self, id: u32) -> Result<&[u8], TokenizerError> {
        self.id_bytes
            .get(id as usize)
            .and_then(|b| b.as_deref())
            .ok_or(TokenizerError::UnknownId { id, vocab_size: self.vocab_size() })
    }

    /// Whether `id` is a special added token (BOS, EOS, `<|eot_id|>`, ...).
    pub fn is_special(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }

    /// Decodes ids into text; invalid UTF-8 (a multi-byte character cut between ids) becomes
    /// U+FFFD. With `skip_special`, special tokens are left out. Unknown ids are an error.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let b = self.bytes_of(id)?;
            if !(skip_special && self.is_special(id)) {
                bytes.extend_from_slice(b);
            }
        }
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// A streaming decoder that returns text as soon as it forms complete UTF-8.
    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream<'_> {
        DecodeStream { tok: self, skip_special, pending: Vec::new() }
    }

    /// Number of ids (the largest id plus one), e.g. 128,256 for Llama-3.
    pub fn vocab_size(&self) -> usize {
        self.id_bytes.len()
    }

    /// The id of a token given as the vocabulary spells it: an added token's text
    /// (`<|eot_id|>`) or a BPE token in the byte-level alphabet (`Ġthe`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        if let Some(t) = self.added.tokens().iter().find(|t| t.content == token) {
            return Some(t.id);
        }
        let bytes = bytelevel::ByteDecoder::new().decode(token);
        match bytes {
            Some(b) => self.bpe.token_id(&b),
            None => self.bpe.token_id(token.as_bytes()),
        }
    }

    /// The token an id stands for, spelled as the vocabulary spells it (the inverse of
    /// [`Tokenizer::token_to_id`]).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        if let Some(t) = self.added.tokens().iter().find(|t| t.id == id) {
            return Some(t.content.clone());
        }
        let bytes = self.id_bytes.get(id as usize)?.as_deref()?;
        Some(bytelevel::encode(bytes, &bytelevel::byte_to_char_table()))
    }

    /// The beginning-of-sequence id, if the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The end-of-sequence id, if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The padding id: `tokenizer_config.json`'s `pad_token` (Qwen3: `<|endoftext|>`), if any.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// The BOS token's text (e.g. `<|begin_of_text|>`), as chat templates see it.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The EOS token's text, as chat templates see it.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Whether the model's own configuration asks for BOS in front of plain-text prompts (GGUF
    /// `tokenizer.ggml.add_bos_token`, `tokenizer_config.json` `add_bos_token`, a post-processor
    /// that adds it; Llama-3 `tokenizer.model`: yes).
    pub fn add_bos_default(&self) -> bool {
        self.add_bos_default
    }

    /// Ids that end a generation: EOS, and whichever of Llama-3's `<|eot_id|>`, `<|eom_id|>`,
    /// `<|end_of_text|>`, ChatML's `<|im_end|>` and GPT-style `<|endoftext|>` exist as added tokens.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.eos_id.into_iter().collect();
        for name in STOP_TOKENS {
            if let Some(t) = self.added.tokens().iter().find(|t| t.content == name) {
                if !ids.contains(&t.id) {
                    ids.push(t.id);
                }
            }
        }
        ids
    }

    /// The model's jinja chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The normalization this tokenizer applies before pre-tokenization.
    pub fn normalizer(&self) -> Normalizer {
        self.normalizer
    }

    /// The split rule this tokenizer applies before BPE.
    pub fn pre_tokenizer(&self) -> PreTokenizer {
        self.pre
    }

    /// Writes the BPE vocabulary as a tiktoken `tokenizer.model`: one `base64(token bytes) rank`
    /// line per token, ranks ascending, ranks being the token ids (added tokens are not written,
    /// tiktoken keeps them apart). This is faithful when ids follow merge order, as in Llama-3.
    pub fn write_tiktoken_model(&self, path: &Path) -> Result<(), TokenizerError> {
        let mut vocab: Vec<(u32, &[u8])> = self.bpe.vocab().map(|(b, id)| (id, b)).collect();
        vocab.sort_unstable_by_key(|&(id, _)| id);
        let mut out = String::with_capacity(vocab.len() * 16);
        for (id, bytes) in vocab {
            crate::load::base64_encode(bytes, &mut out);
            out.push(' ');
            out.push_str(&id.to_string());
            out.push('\n');
        }
        std::fs::write(path, out).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("pre_tokenizer", &self.pre)
            .field("added_tokens", &self.added.tokens().len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("normalizer", &self.normalizer)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// Incremental decoding for streaming generation: push ids one at a time and get back only text
/// made of complete UTF-8 characters; bytes of a character split across tokens wait for the rest.
///
/// The concatenation of everything [`DecodeStream::step`] and [`DecodeStream::flush`] return
/// equals [`Tokenizer::decode`] of all the ids.
pub struct DecodeStream<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    pending: Vec<u8>,
}

impl DecodeStream<'_> {
    /// Adds one id; returns the text it completes, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        let bytes = self.tok.bytes_of(id)?;
        if self.skip_special && self.tok.is_special(id) {
            return Ok(None);
        }
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid])
                            .expect("prefix checked valid"),
                    );
                    start += valid;
                    match e.error_len() {
                        // An invalid sequence: replace it, as lossy decoding does.
                        Some(len) => {
                            out.push('\u{FFFD}');
                            start += len;
                        }
                        // A character cut short at the end: wait for the next id.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
        Ok(if out.is_empty() { None } else { Some(out) })
    }

    /// Ends the stream: returns whatever bytes are still held (an incomplete character becomes
    /// U+FFFD).
    pub fn flush(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(s)
    }
}
