//! Export to GGUF metadata: the [`GgufTokenizerSpec`] that [`Tokenizer::from_gguf`] reads back
//! into the same tokenizer, and that llama.cpp reads as a `gpt2` (byte-level BPE) vocabulary.

use crate::bytelevel;
use crate::load::GgufTokenizerSpec;
use crate::pretok::PreTokenizer;
use crate::tokenizer::Tokenizer;
use crate::TokenizerError;

/// GGUF token types (llama.cpp's `llama_token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

impl Tokenizer {
    /// The `tokenizer.ggml.pre` name llama.cpp uses for this tokenizer's split rules:
    /// `llama-bpe` (Llama-3 regex, whole-word pieces skip merging), `smaug-bpe` (Llama-3 regex
    /// with merging), `qwen2` (Llama-3 regex with single digits, Qwen2/2.5/3), `smollm` (GPT-2
    /// regex after isolating digits) or `gpt2`.
    pub fn gguf_pre_name(&self) -> &'static str {
        match (self.pre, self.bpe.ignore_merges()) {
            (PreTokenizer::Llama3, true) => "llama-bpe",
            (PreTokenizer::Llama3, false) => "smaug-bpe",
            (PreTokenizer::Qwen2, _) => "qwen2",
            (PreTokenizer::Gpt2 { individual_digits: true }, _) => "smollm",
            (PreTokenizer::Gpt2 { individual_digits: false }, _) => "gpt2",
        }
    }

    /// This tokenizer as GGUF metadata (`tokenizer.ggml.*`), as llama.cpp's converter writes it:
    /// one token per id up to `vocab_size` (at least [`Tokenizer::vocab_size`]; ids with no
    /// token, e.g. padding rows of the embedding, become `[PAD<id>]` of type unused), BPE tokens
    /// in the byte-level alphabet (type normal), added tokens under their text (type control
    /// when special, user-defined otherwise), merges as `"left right"` in rank order, BOS/EOS,
    /// `add_bos` and the chat template.
    ///
    /// [`Tokenizer::from_gguf`] on the result encodes and decodes exactly like `self`.
    pub fn to_gguf_spec(&self, vocab_size: usize) -> Result<GgufTokenizerSpec, TokenizerError> {
        let origin = "GGUF export";
        let n = vocab_size.max(self.vocab_size());
        let table = bytelevel::byte_to_char_table();
        let mut tokens: Vec<Option<String>> = vec![None; n];
        let mut types = vec![UNUSED; n];
        for (bytes, id) in self.bpe.vocab() {
            tokens[id as usize] = Some(bytelevel::encode(bytes, &table));
            types[id as usize] = NORMAL;
        }
        for t in self.added.tokens() {
            tokens[t.id as usize] = Some(t.content.clone());
            types[t.id as usize] = if t.special { CONTROL } else { USER_DEFINED };
        }
        let tokens: Vec<String> =
            tokens.into_iter().enumerate().map(|(id, t)| t.unwrap_or_else(|| format!("[PAD{id}]"))).collect();
        let mut merges: Vec<(u32, u32, u32)> = self.bpe.merges().map(|(a, b, m)| (m.rank, a, b)).collect();
        merges.sort_unstable();
        let merges = merges
            .into_iter()
            .map(|(rank, a, b)| {
                let (sa, sb) = (&tokens[a as usize], &tokens[b as usize]);
                if sa.contains(' ') || sb.contains(' ') {
                    return Err(TokenizerError::format(
                        origin,
                        format!("merge of rank {rank} ({sa:?} + {sb:?}) has a space, which GGUF merges cannot hold"),
                    ));
                }
                Ok(format!("{sa} {sb}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GgufTokenizerSpec {
            model: "gpt2".into(),
            pre: Some(self.gguf_pre_name().into()),
            tokens,
            merges,
            token_types: types,
            bos_id: self.bos_id,
            eos_id: self.eos_id,
            add_bos: Some(self.add_bos_default),
            chat_template: self.chat_template.clone(),
        })
    }
}
