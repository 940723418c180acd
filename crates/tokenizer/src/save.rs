//! Export to Hugging Face: `tokenizer.json` and `tokenizer_config.json`, so that a checkpoint
//! folder written by afinar loads in `tokenizers`, transformers (`AutoTokenizer`), PEFT and afinar
//! itself, whatever the tokenizer was built from (`tokenizer.json`, tiktoken, GGUF metadata).
//!
//! What is written, and why:
//!
//! - `model`: byte-level BPE. `vocab` holds every BPE token spelled in the byte-level alphabet and
//!   every added token under its own text, all with their ids: `tokenizers` takes an added
//!   token's id from the model vocabulary (the `id` in `added_tokens` is only checked), so added
//!   tokens that sit below the BPE ids (SmolLM2's `<|endoftext|>` = 0) must be in `vocab`.
//!   `merges` are `["left", "right"]` pairs in rank order (the form `tokenizers` ≥ 0.20 writes;
//!   it reads `"left right"` too). `ignore_merges` is kept, `byte_fallback` is off.
//! - `pre_tokenizer`: [`PreTokenizer::Llama3`] is `Sequence[Split(Llama-3 regex, Isolated),
//!   ByteLevel(use_regex = false)]`, [`PreTokenizer::Qwen2`] the same with the Qwen2 regex, GPT-2 is `ByteLevel(use_regex = true)`, and GPT-2 with
//!   individual digits (SmolLM2, llama.cpp `smollm`) is `Sequence[Digits(individual_digits),
//!   ByteLevel(use_regex = true)]`; `add_prefix_space` is always off.
//! - `added_tokens`: with `normalized: false` (matched in the raw text before any normalizer;
//!   this makes `tokenizers` match all added tokens in one leftmost-longest pass, as
//!   [`Tokenizer::encode`] does).
//! - `post_processor`: `ByteLevel` (offsets only), followed by a `TemplateProcessing` that puts
//!   BOS first when the tokenizer adds BOS by default ([`Tokenizer::add_bos_default`]).
//! - `decoder`: `ByteLevel`; `normalizer`: `{"type": "NFC"}` for an NFC tokenizer (Qwen3), else
//!   null.
//! - `tokenizer_config.json`: `tokenizer_class` `PreTrainedTokenizerFast` (so transformers uses
//!   `tokenizer.json` as it is), `bos_token`, `eos_token`, `add_bos_token`, `add_eos_token: false`,
//!   `chat_template`, `added_tokens_decoder`, `clean_up_tokenization_spaces: false` and, when
//!   given, `model_max_length` and `pad_token`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::bytelevel;
use crate::load::{LLAMA3_PATTERN, QWEN2_PATTERN};
use crate::pretok::PreTokenizer;
use crate::special::AddedToken;
use crate::tokenizer::{Normalizer, Tokenizer};
use crate::TokenizerError;

/// The file name of the Hugging Face tokenizer.
const TOKENIZER_JSON: &str = "tokenizer.json";
/// The file name of the transformers tokenizer settings.
const TOKENIZER_CONFIG_JSON: &str = "tokenizer_config.json";

/// A JSON string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

/// Writes `parts` (already-serialized JSON values under their keys) as an object, one key per
/// line, keeping the order given.
fn object(parts: &[(&str, String)], indent: &str) -> String {
    let mut out = String::from("{\n");
    for (i, (k, v)) in parts.iter().enumerate() {
        out.push_str(indent);
        out.push_str("  ");
        out.push_str(&js(k));
        out.push_str(": ");
        out.push_str(v);
        out.push_str(if i + 1 < parts.len() { ",\n" } else { "\n" });
    }
    out.push_str(indent);
    out.push('}');
    out
}

/// An added token as `tokenizers` serializes it (`id` first when `with_id`).
fn added_token_json(t: &AddedToken, with_id: bool) -> Value {
    let mut v = json!({
        "content": t.content,
        "single_word": t.single_word,
        "lstrip": t.lstrip,
        "rstrip": t.rstrip,
        "normalized": false,
        "special": t.special,
    });
    if with_id {
        v["id"] = json!(t.id);
    }
    v
}

/// The `pre_tokenizer` that splits as `pre` does.
fn pre_tokenizer_json(pre: PreTokenizer) -> Value {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    match pre {
        PreTokenizer::Llama3 | PreTokenizer::Qwen2 => json!({
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": if pre == PreTokenizer::Llama3 { LLAMA3_PATTERN } else { QWEN2_PATTERN }},
                    "behavior": "Isolated",
                    "invert": false,
                },
                byte_level(false),
            ],
        }),
        PreTokenizer::Gpt2 { individual_digits: false } => byte_level(true),
        PreTokenizer::Gpt2 { individual_digits: true } => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
        }),
    }
}

/// Writes `data` to `dir/name` through a temporary file in the same folder and a rename, so that
/// a reader never sees a half-written file.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf, TokenizerError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| TokenizerError::Io { path: p, source }
    };
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

impl Tokenizer {
    /// Writes the tokenizer as Hugging Face files into `dir` (created if missing):
    /// `tokenizer.json` and `tokenizer_config.json`, each atomically (temporary file + rename).
    /// Returns the paths written.
    ///
    /// [`Tokenizer::from_file`] on the written `tokenizer.json` gives back a tokenizer with the
    /// same ids, BOS/EOS, `add_bos_default` and chat template; Hugging Face `tokenizers` and
    /// transformers' `AutoTokenizer` load the folder and encode alike. `model_max_length` is left
    /// out (transformers then assumes no limit); see [`Tokenizer::save_hf_with_max_length`].
    ///
    /// Fails when the folder cannot be written, or in the rare case that the vocabulary cannot be
    /// written faithfully (a merge whose parts do not spell its result, two tokens with the same
    /// spelling and different ids).
    pub fn save_hf(&self, dir: &Path) -> Result<Vec<PathBuf>, TokenizerError> {
        self.save_hf_with_max_length(dir, None)
    }

    /// [`Tokenizer::save_hf`], also recording the model's context length as `model_max_length`
    /// in `tokenizer_config.json` (transformers warns when an input is longer).
    pub fn save_hf_with_max_length(
        &self,
        dir: &Path,
        model_max_length: Option<usize>,
    ) -> Result<Vec<PathBuf>, TokenizerError> {
        let tokenizer_json = self.hf_tokenizer_json()?;
        let config_json = self.hf_tokenizer_config_json(model_max_length);
        std::fs::create_dir_all(dir)
            .map_err(|source| TokenizerError::Io { path: dir.to_path_buf(), source })?;
        Ok(vec![
            write_atomic(dir, TOKENIZER_JSON, tokenizer_json.as_bytes())?,
            write_atomic(dir, TOKENIZER_CONFIG_JSON, config_json.as_bytes())?,
        ])
    }

    /// Added tokens, ordered by id.
    fn added_by_id(&self) -> Vec<&AddedToken> {
        let mut added: Vec<&AddedToken> = self.added.tokens().iter().collect();
        added.sort_by_key(|t| t.id);
        added
    }

    /// The text of `tokenizer.json`.
    fn hf_tokenizer_json(&self) -> Result<String, TokenizerError> {
        let origin = "Hugging Face export";
        let table = bytelevel::byte_to_char_table();
        // BPE tokens by id, spelled in the byte-level alphabet.
        let mut spelled: Vec<Option<String>> = vec![None; self.vocab_size()];
        for (bytes, id) in self.bpe.vocab() {
            spelled[id as usize] = Some(bytelevel::encode(bytes, &table));
        }
        // vocab: BPE tokens, then added tokens under their own text unless that spelling is taken.
        let mut key_id: HashMap<&str, u32> = HashMap::with_capacity(spelled.len());
        let mut vocab: Vec<(u32, &str)> = Vec::with_capacity(spelled.len());
        for (id, s) in spelled.iter().enumerate() {
            if let Some(s) = s {
                key_id.insert(s, id as u32);
                vocab.push((id as u32, s));
            }
        }
        let added = self.added_by_id();
        for t in &added {
            match key_id.get(t.content.as_str()) {
                Some(&id) if id == t.id => {}
                Some(&id) => {
                    return Err(TokenizerError::format(
                        origin,
                        format!(
                            "added token {:?} (id {}) is spelled like the BPE token with id {id}; \
                             tokenizer.json cannot tell them apart",
                            t.content, t.id
                        ),
                    ))
                }
                None => {
                    key_id.insert(&t.content, t.id);
                    vocab.push((t.id, &t.content));
                }
            }
        }
        vocab.sort_by_key(|&(id, _)| id);

        let mut merges: Vec<(u32, u32, u32, u32)> =
            self.bpe.merges().map(|(a, b, m)| (m.rank, a, b, m.id)).collect();
        merges.sort_unstable();

        let mut out = String::with_capacity(vocab.len() * 24 + merges.len() * 20);
        out.push_str("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n");
        out.push_str("  \"added_tokens\": [");
        for (i, t) in added.iter().enumerate() {
            out.push_str(if i == 0 { "\n    " } else { ",\n    " });
            out.push_str(&added_token_json(t, true).to_string());
        }
        out.push_str(if added.is_empty() { "],\n" } else { "\n  ],\n" });
        out.push_str(match self.normalizer {
            Normalizer::None => "  \"normalizer\": null,\n",
            Normalizer::Nfc => "  \"normalizer\": {\"type\": \"NFC\"},\n",
        });
        out.push_str(&format!("  \"pre_tokenizer\": {},\n", pre_tokenizer_json(self.pre)));
        out.push_str(&format!("  \"post_processor\": {},\n", self.post_processor_json()));
        let decoder =
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
        out.push_str(&format!("  \"decoder\": {decoder},\n"));
        out.push_str(
            "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n",
        );
        out.push_str("    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n");
        out.push_str("    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n");
        out.push_str(&format!("    \"ignore_merges\": {},\n", self.bpe.ignore_merges()));
        out.push_str("    \"vocab\": {");
        for (i, (id, s)) in vocab.iter().enumerate() {
            out.push_str(if i == 0 { "\n      " } else { ",\n      " });
            out.push_str(&js(s));
            out.push_str(": ");
            out.push_str(&id.to_string());
        }
        out.push_str(if vocab.is_empty() { "},\n" } else { "\n    },\n" });
        out.push_str("    \"merges\": [");
        for (i, &(rank, a, b, id)) in merges.iter().enumerate() {
            let part = |x: u32| spelled.get(x as usize).and_then(|s| s.as_deref());
            let (Some(sa), Some(sb), Some(sm)) = (part(a), part(b), part(id)) else {
                return Err(TokenizerError::format(
                    origin,
                    format!(
                        "merge of rank {rank} ({a} + {b} → {id}) involves an id outside the BPE vocabulary"
                    ),
                ));
            };
            if sa.len() + sb.len() != sm.len() || !sm.starts_with(sa) || !sm.ends_with(sb) {
                return Err(TokenizerError::format(
                    origin,
                    format!("merge of rank {rank} ({sa:?} + {sb:?}) gives {sm:?}, which is not their concatenation"),
                ));
            }
            out.push_str(if i == 0 { "\n      [" } else { ",\n      [" });
            out.push_str(&js(sa));
            out.push_str(", ");
            out.push_str(&js(sb));
            out.push(']');
        }
        out.push_str(if merges.is_empty() { "]\n" } else { "\n    ]\n" });
        out.push_str("  }\n}\n");
        Ok(out)
    }

    /// `ByteLevel` for offsets, then BOS in front when the tokenizer adds it by default.
    fn post_processor_json(&self) -> Value {
        let byte_level =
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
        let (Some(bos_id), true) = (self.bos_id, self.add_bos_default) else {
            return byte_level;
        };
        let bos = self.id_to_token(bos_id).unwrap_or_default();
        let special = |type_id: u32| json!({"SpecialToken": {"id": bos, "type_id": type_id}});
        let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
        let template = json!({
            "type": "TemplateProcessing",
            "single": [special(0), seq("A", 0)],
            "pair": [special(0), seq("A", 0), special(1), seq("B", 1)],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        });
        json!({"type": "Sequence", "processors": [byte_level, template]})
    }

    /// The text of `tokenizer_config.json`.
    fn hf_tokenizer_config_json(&self, model_max_length: Option<usize>) -> String {
        // Pretty JSON for a value written at the second level of nesting.
        let pretty = |v: &Value| {
            serde_json::to_string_pretty(v).expect("JSON values always serialize").replace('\n', "\n    ")
        };
        let token = |t: Option<&str>| t.map_or_else(|| "null".to_string(), js);
        let decoder: Vec<(String, String)> = self
            .added_by_id()
            .into_iter()
            .map(|t| (t.id.to_string(), pretty(&added_token_json(t, false))))
            .collect();
        let decoder: Vec<(&str, String)> = decoder.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let mut parts: Vec<(&str, String)> = vec![
            ("add_bos_token", self.add_bos_default.to_string()),
            ("add_eos_token", "false".into()),
            ("added_tokens_decoder", object(&decoder, "  ")),
            ("bos_token", token(self.bos_token())),
        ];
        if let Some(t) = self.chat_template() {
            parts.push(("chat_template", js(t)));
        }
        parts.push(("clean_up_tokenization_spaces", "false".into()));
        parts.push(("eos_token", token(self.eos_token())));
        parts.push(("model_input_names", r#"["input_ids", "attention_mask"]"#.into()));
        if let Some(n) = model_max_length {
            parts.push(("model_max_length", n.to_string()));
        }
        if let Some(pad) = self.pad_id.and_then(|id| self.id_to_token(id)) {
            parts.push(("pad_token", js(&pad)));
        }
        parts.push(("tokenizer_class", js("PreTrainedTokenizerFast")));
        let mut out = object(&parts, "");
        out.push('\n');
        out
    }
}
