//! Loaders: Hugging Face `tokenizer.json`, tiktoken `tokenizer.model`, GGUF metadata, and the
//! `tokenizer_config.json` that may sit beside a tokenizer file.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::bpe::{Bpe, FastMap};
use crate::bytelevel::ByteDecoder;
use crate::hfjson::{HfMerge, HfRoot, HfVocab};
use crate::pretok::PreTokenizer;
use crate::special::AddedToken;
use crate::tokenizer::{Normalizer, Parts, Tokenizer};
use crate::TokenizerError;

/// The Llama-3 split regex as `tokenizer.json` writes it.
pub(crate) const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Qwen2 split regex (Qwen2, Qwen2.5, Qwen3): Llama-3's with `\p{N}` for `\p{N}{1,3}`.
pub(crate) const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The GPT-2 split regex (Hugging Face `ByteLevel` with `use_regex`).
pub(crate) const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The tokenizer that GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`) describes.
///
/// The GGUF reader fills this in; [`Tokenizer::from_gguf`] builds the tokenizer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GgufTokenizerSpec {
    /// `tokenizer.ggml.model`; only `"gpt2"` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`: names the pre-tokenizer regex (`"llama-bpe"`, `"smollm"`, ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, in id order, spelled in the byte-level alphabet.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.merges`, `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte); empty if absent.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

fn io_err(path: &Path, source: std::io::Error) -> TokenizerError {
    TokenizerError::Io { path: path.to_path_buf(), source }
}

fn origin(path: &Path) -> String {
    path.display().to_string()
}

/// Short JSON rendering of a value for error messages.
fn brief(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 160 {
        format!("{}…", s.chars().take(160).collect::<String>())
    } else {
        s
    }
}

/// Token bytes from a vocabulary string: byte-level alphabet, or the string's own UTF-8 when it
/// uses other characters (as transformers does for GGUF vocabularies).
fn token_bytes(dec: &ByteDecoder, token: &str) -> Box<[u8]> {
    match dec.decode(token) {
        Some(b) => b.into_boxed_slice(),
        None => token.as_bytes().into(),
    }
}

impl Tokenizer {
    /// Loads a tokenizer file: Hugging Face `tokenizer.json` (byte-level BPE) or a tiktoken
    /// `tokenizer.model` (`base64(token) rank` per line, the Llama-3 format).
    ///
    /// The format is told by content (JSON starts with `{`). For `tokenizer.model`, the Llama-3
    /// split regex is used and the 256 Llama-3 special tokens follow the ranks (`<|begin_of_text|>`
    /// = 128000 ... `<|reserved_special_token_N|>`); their names come from
    /// `tokenizer_config.json`'s `added_tokens_decoder` when that file is beside, else from the
    /// Llama-3.1 list. If a `tokenizer_config.json` sits beside the file, `chat_template`,
    /// `bos_token`, `eos_token` and `add_bos_token` are read from it (a `chat_template.jinja`
    /// beside it also provides the template).
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let data = std::fs::read(path).map_err(|e| io_err(path, e))?;
        let config = Config::beside(path)?;
        let first = data.iter().find(|b| !b.is_ascii_whitespace()).copied();
        if first == Some(b'{') {
            from_hf_json(path, &data, config)
        } else {
            from_tiktoken(path, &data, config)
        }
    }

    /// Builds the tokenizer embedded in GGUF metadata (`tokenizer.ggml.model = "gpt2"`).
    ///
    /// `pre` picks the split regex as llama.cpp does: `llama-bpe` (and its aliases) the Llama-3
    /// one, `qwen2` the Qwen2 one (with the NFC normalizer of Qwen's `tokenizer.json`),
    /// `smollm`/`starcoder`/... the GPT-2 one after isolating digits, `gpt2`/`default`/none
    /// the plain GPT-2 one. Control tokens (type 3) become special added tokens, user-defined ones
    /// (type 4) plain added tokens.
    pub fn from_gguf(spec: GgufTokenizerSpec) -> Result<Self, TokenizerError> {
        let origin = "GGUF metadata".to_string();
        if spec.model != "gpt2" {
            return Err(TokenizerError::Unsupported {
                origin,
                what: "tokenizer.ggml.model".into(),
                found: format!("{:?}", spec.model),
                expected: "\"gpt2\" (byte-level BPE)".into(),
            });
        }
        let (pre, ignore_merges) = gguf_pre_tokenizer(spec.pre.as_deref())?;
        if spec.tokens.is_empty() {
            return Err(TokenizerError::format(
                "GGUF metadata tokenizer.ggml.tokens",
                "is empty; expected the vocabulary",
            ));
        }
        if !spec.token_types.is_empty() && spec.token_types.len() != spec.tokens.len() {
            return Err(TokenizerError::format(
                "GGUF metadata tokenizer.ggml.token_type",
                format!(
                    "has {} entries; expected one per token ({})",
                    spec.token_types.len(),
                    spec.tokens.len()
                ),
            ));
        }
        let dec = ByteDecoder::new();
        let mut by_bytes: FastMap<Box<[u8]>, u32> = FastMap::default();
        let mut by_name: FastMap<&str, u32> = FastMap::default();
        let mut added = Vec::new();
        for (i, token) in spec.tokens.iter().enumerate() {
            let id = i as u32;
            by_name.insert(token.as_str(), id);
            match spec.token_types.get(i).copied().unwrap_or(1) {
                t @ (3 | 4) => added.push(AddedToken {
                    content: token.clone(),
                    id,
                    special: t == 3,
                    lstrip: false,
                    rstrip: false,
                    single_word: false,
                }),
                _ => {
                    by_bytes.entry(token_bytes(&dec, token)).or_insert(id);
                }
            }
        }
        let mut bpe = Bpe::new(by_bytes, ignore_merges);
        bpe.reserve_merges(spec.merges.len());
        let mut joined = String::new();
        for (rank, merge) in spec.merges.iter().enumerate() {
            let bad = |why: &str| {
                TokenizerError::format(
                    "GGUF metadata tokenizer.ggml.merges",
                    format!("merge {rank} {merge:?} {why}"),
                )
            };
            let (a, b) =
                merge.split_once(' ').ok_or_else(|| bad("is not two tokens separated by a space"))?;
            let ia =
                *by_name.get(a).ok_or_else(|| bad("names a token missing from tokenizer.ggml.tokens"))?;
            let ib =
                *by_name.get(b).ok_or_else(|| bad("names a token missing from tokenizer.ggml.tokens"))?;
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let id = *by_name
                .get(joined.as_str())
                .ok_or_else(|| bad("makes a token missing from tokenizer.ggml.tokens"))?;
            bpe.add_merge(ia, ib, rank as u32, id);
        }
        for (key, id) in [("bos_token_id", spec.bos_id), ("eos_token_id", spec.eos_id)] {
            if let Some(id) = id {
                if id as usize >= spec.tokens.len() {
                    return Err(TokenizerError::format(
                        format!("GGUF metadata tokenizer.ggml.{key}"),
                        format!("is {id}; expected an id below {}", spec.tokens.len()),
                    ));
                }
            }
        }
        Tokenizer::assemble(Parts {
            origin,
            bpe,
            pre,
            added,
            bos: spec.bos_id,
            eos: spec.eos_id,
            pad: None,
            // GGUF has no normalizer field; Qwen2/2.5/3 were trained with NFC (their
            // tokenizer.json says so, and transformers' GGUF converter for them adds it).
            normalizer: if pre == PreTokenizer::Qwen2 { Normalizer::Nfc } else { Normalizer::None },
            add_bos_default: spec.add_bos.unwrap_or(false),
            chat_template: spec.chat_template,
            bos_token: None,
            eos_token: None,
        })
    }
}

/// Maps GGUF `tokenizer.ggml.pre` to a pre-tokenizer and whether whole pieces skip merging.
fn gguf_pre_tokenizer(pre: Option<&str>) -> Result<(PreTokenizer, bool), TokenizerError> {
    Ok(match pre {
        // llama.cpp's LLAMA3 pre-type, which also ignores merges for whole-token pieces.
        Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral") => {
            (PreTokenizer::Llama3, true)
        }
        Some("smaug-bpe" | "dbrx") => (PreTokenizer::Llama3, false),
        Some("qwen2" | "deepseek-r1-qwen") => (PreTokenizer::Qwen2, false),
        Some("smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone") => {
            (PreTokenizer::Gpt2 { individual_digits: true }, false)
        }
        None | Some("default" | "gpt2" | "gpt-2" | "mpt" | "olmo") => {
            (PreTokenizer::Gpt2 { individual_digits: false }, false)
        }
        Some(other) => {
            return Err(TokenizerError::Unsupported {
                origin: "GGUF metadata".into(),
                what: "tokenizer.ggml.pre".into(),
                found: format!("{other:?}"),
                expected: "one of llama-bpe, llama3, llama-v3, falcon3, falcon-h1, pixtral, smaug-bpe, dbrx \
                           (Llama-3 regex), qwen2, deepseek-r1-qwen (Qwen2 regex), smollm, starcoder, refact, command-r, codeshell, exaone \
                           (digits + GPT-2 regex), default, gpt2, mpt, olmo (GPT-2 regex)"
                    .into(),
            })
        }
    })
}

/// What `tokenizer_config.json` (and `chat_template.jinja`) beside a tokenizer file say.
#[derive(Default)]
pub(crate) struct Config {
    path: Option<PathBuf>,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    add_bos_token: Option<bool>,
    /// `added_tokens_decoder`: id → token.
    added_tokens: Vec<AddedToken>,
}

/// A special-token entry: a plain string or an `AddedToken` object with `content`.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn added_token(v: &Value, id: u32, origin: &str, at: &str) -> Result<AddedToken, TokenizerError> {
    let content = v.get("content").and_then(Value::as_str).ok_or_else(|| {
        TokenizerError::format(origin, format!("{at}: expected an object with a string \"content\""))
    })?;
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    Ok(AddedToken {
        content: content.to_string(),
        id,
        special: flag("special"),
        lstrip: flag("lstrip"),
        rstrip: flag("rstrip"),
        single_word: flag("single_word"),
    })
}

impl Config {
    /// Reads `tokenizer_config.json` and `chat_template.jinja` from the directory of `path`, if
    /// they exist. A config that exists but is broken is an error.
    fn beside(path: &Path) -> Result<Config, TokenizerError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let cfg_path = dir.join("tokenizer_config.json");
        let mut cfg = Config::default();
        if cfg_path.is_file() {
            let data = std::fs::read(&cfg_path).map_err(|e| io_err(&cfg_path, e))?;
            let v: Value = serde_json::from_slice(&data)
                .map_err(|source| TokenizerError::Json { path: cfg_path.clone(), source })?;
            let o = origin(&cfg_path);
            let obj = v
                .as_object()
                .ok_or_else(|| TokenizerError::format(&o, "expected a JSON object at the top level"))?;
            cfg.chat_template = match obj.get("chat_template") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default" (or the first).
                Some(Value::Array(list)) => {
                    let named = |n: &str| {
                        list.iter()
                            .find(|t| t.get("name").and_then(Value::as_str) == Some(n))
                            .and_then(|t| t.get("template"))
                            .and_then(Value::as_str)
                    };
                    let first = list.first().and_then(|t| t.get("template")).and_then(Value::as_str);
                    Some(named("default").or(first).map(str::to_string).ok_or_else(|| {
                        TokenizerError::format(
                            &o,
                            "chat_template: expected a string or a list of {\"name\", \"template\"} objects",
                        )
                    })?)
                }
                Some(other) => {
                    return Err(TokenizerError::format(
                        &o,
                        format!("chat_template: expected a string, found {}", brief(other)),
                    ))
                }
            };
            cfg.bos_token = obj.get("bos_token").and_then(token_content);
            cfg.eos_token = obj.get("eos_token").and_then(token_content);
            cfg.pad_token = obj.get("pad_token").and_then(token_content);
            cfg.add_bos_token = obj.get("add_bos_token").and_then(Value::as_bool);
            if let Some(dec) = obj.get("added_tokens_decoder") {
                let map = dec.as_object().ok_or_else(|| {
                    TokenizerError::format(&o, "added_tokens_decoder: expected an object of id → token")
                })?;
                for (k, t) in map {
                    let id: u32 = k.parse().map_err(|_| {
                        TokenizerError::format(
                            &o,
                            format!("added_tokens_decoder: key {k:?} is not a token id"),
                        )
                    })?;
                    cfg.added_tokens.push(added_token(t, id, &o, &format!("added_tokens_decoder.{k}"))?);
                }
            }
            cfg.path = Some(cfg_path);
        }
        if cfg.chat_template.is_none() {
            let jinja = dir.join("chat_template.jinja");
            if jinja.is_file() {
                cfg.chat_template = Some(std::fs::read_to_string(&jinja).map_err(|e| io_err(&jinja, e))?);
            }
        }
        Ok(cfg)
    }

    /// Resolves a token name from the config against the tokenizer's added tokens and vocabulary.
    fn resolve(&self, name: &Option<String>, added: &[AddedToken], bpe: &Bpe) -> Option<u32> {
        let name = name.as_deref()?;
        added.iter().find(|t| t.content == name).map(|t| t.id).or_else(|| bpe.token_id(name.as_bytes()))
    }
}

/// The first of `names` that is an added token.
fn first_added(added: &[AddedToken], names: &[&str]) -> Option<u32> {
    names.iter().find_map(|n| added.iter().find(|t| t.content == *n).map(|t| t.id))
}

fn from_hf_json(path: &Path, data: &[u8], config: Config) -> Result<Tokenizer, TokenizerError> {
    let o = origin(path);
    // Typed parsing of the large parts (vocab, merges) avoids building a JSON tree of ~400k nodes.
    let root: HfRoot = serde_json::from_slice(data)
        .map_err(|source| TokenizerError::Json { path: path.to_path_buf(), source })?;
    let fmt = |m: String| TokenizerError::format(&o, m);
    let model = root.model.ok_or_else(|| {
        fmt("missing key \"model\"; expected a Hugging Face tokenizer.json with a BPE model".into())
    })?;
    let kind = model.kind.as_deref().unwrap_or("BPE");
    if kind != "BPE" {
        return Err(TokenizerError::Unsupported {
            origin: o,
            what: "model type (model.type)".into(),
            found: format!("{kind:?}"),
            expected: "\"BPE\" (byte-level)".into(),
        });
    }
    for (key, v) in [
        ("continuing_subword_prefix", &model.continuing_subword_prefix),
        ("end_of_word_suffix", &model.end_of_word_suffix),
    ] {
        if !v.is_null() && v.as_str() != Some("") {
            return Err(TokenizerError::Unsupported {
                origin: o,
                what: format!("model.{key}"),
                found: brief(v),
                expected: "null (byte-level BPE)".into(),
            });
        }
    }
    let normalizer = match root.normalizer.get("type").and_then(Value::as_str) {
        _ if root.normalizer.is_null() => Normalizer::None,
        Some("NFC") => Normalizer::Nfc,
        _ => {
            return Err(TokenizerError::Unsupported {
                origin: o,
                what: "normalizer".into(),
                found: brief(&root.normalizer),
                expected: "null or {\"type\": \"NFC\"}".into(),
            })
        }
    };
    let pre = hf_pre_tokenizer(&root.pre_tokenizer).ok_or_else(|| TokenizerError::Unsupported {
        origin: o.clone(),
        what: "pre_tokenizer".into(),
        found: brief(&root.pre_tokenizer),
        expected: "Sequence[Split(Llama-3 or Qwen2 regex), ByteLevel], ByteLevel (GPT-2 regex), or \
                   Sequence[Digits(individual_digits), ByteLevel]"
            .into(),
    })?;
    let vocab = match &model.vocab {
        HfVocab::Map(entries) => entries,
        HfVocab::Missing => {
            return Err(fmt("missing key model.vocab; expected an object of token → id".into()))
        }
        HfVocab::Other(what) => {
            return Err(fmt(format!("model.vocab: expected an object of token → id, found {what}")))
        }
    };
    let dec = ByteDecoder::new();
    let mut by_bytes: FastMap<Box<[u8]>, u32> = FastMap::default();
    let mut by_name: FastMap<&str, u32> = FastMap::default();
    by_bytes.reserve(vocab.len());
    by_name.reserve(vocab.len());
    for (token, id) in vocab {
        let id =
            id.as_u64().filter(|&i| i <= u32::MAX as u64).ok_or_else(|| {
                fmt(format!("model.vocab[{token:?}]: expected a token id, found {}", brief(id)))
            })? as u32;
        by_name.insert(token.as_str(), id);
        by_bytes.insert(token_bytes(&dec, token), id);
    }
    let mut bpe = Bpe::new(by_bytes, model.ignore_merges.unwrap_or(false));
    let merges = model
        .merges
        .as_ref()
        .ok_or_else(|| fmt("missing key model.merges; expected a list of merges".into()))?;
    bpe.reserve_merges(merges.len());
    let mut joined = String::new();
    for (rank, m) in merges.iter().enumerate() {
        let (a, b) = match m {
            HfMerge::Pair(a, b) => (a.as_str(), b.as_str()),
            HfMerge::Bad(found) => {
                return Err(fmt(format!(
                    "model.merges[{rank}]: expected \"left right\" or [left, right], found {found}"
                )))
            }
        };
        let missing =
            |t: &str| fmt(format!("model.merges[{rank}] ({a} {b}): token {t:?} is not in model.vocab"));
        let ia = *by_name.get(a).ok_or_else(|| missing(a))?;
        let ib = *by_name.get(b).ok_or_else(|| missing(b))?;
        joined.clear();
        joined.push_str(a);
        joined.push_str(b);
        let id = *by_name.get(joined.as_str()).ok_or_else(|| missing(&joined))?;
        bpe.add_merge(ia, ib, rank as u32, id);
    }
    let mut added = Vec::new();
    if let Some(list) = Some(&root.added_tokens).filter(|v| !v.is_null()) {
        let list = list.as_array().ok_or_else(|| fmt("added_tokens: expected a list".into()))?;
        for (i, t) in list.iter().enumerate() {
            let at = format!("added_tokens[{i}]");
            let id = t
                .get("id")
                .and_then(Value::as_u64)
                .filter(|&i| i <= u32::MAX as u64)
                .ok_or_else(|| fmt(format!("{at}: expected a numeric \"id\"")))? as u32;
            added.push(added_token(t, id, &o, &at)?);
        }
    }
    // BOS / EOS: the config's names, else the conventional Llama-3 / GPT names.
    let bos = config
        .resolve(&config.bos_token, &added, &bpe)
        .or_else(|| first_added(&added, &["<|begin_of_text|>"]));
    let eos = config
        .resolve(&config.eos_token, &added, &bpe)
        .or_else(|| first_added(&added, &["<|end_of_text|>", "<|endoftext|>"]));
    let pad = config.resolve(&config.pad_token, &added, &bpe);
    let post_adds_bos = bos.is_some_and(|b| post_processor_adds(Some(&root.post_processor), b));
    Tokenizer::assemble(Parts {
        origin: o,
        bpe,
        pre,
        added,
        bos,
        eos,
        pad,
        normalizer,
        add_bos_default: config.add_bos_token.unwrap_or(post_adds_bos),
        chat_template: config.chat_template,
        bos_token: config.bos_token,
        eos_token: config.eos_token,
    })
}

/// Whether a `TemplateProcessing` post-processor (possibly in a `Sequence`) starts with `bos`.
fn post_processor_adds(pp: Option<&Value>, bos: u32) -> bool {
    let Some(pp) = pp else { return false };
    match pp.get("type").and_then(Value::as_str) {
        Some("Sequence") => pp
            .get("processors")
            .and_then(Value::as_array)
            .is_some_and(|l| l.iter().any(|p| post_processor_adds(Some(p), bos))),
        Some("TemplateProcessing") => {
            let first = pp
                .get("single")
                .and_then(Value::as_array)
                .and_then(|l| l.first())
                .and_then(|f| f.get("SpecialToken"))
                .and_then(|s| s.get("id"))
                .and_then(Value::as_str);
            let ids = first.and_then(|name| pp.get("special_tokens")?.get(name)?.get("ids")?.as_array());
            ids.is_some_and(|ids| ids.first().and_then(Value::as_u64) == Some(bos as u64))
        }
        _ => false,
    }
}

/// Recognises the supported `pre_tokenizer` configurations.
fn hf_pre_tokenizer(v: &Value) -> Option<PreTokenizer> {
    let ty = |x: &Value| x.get("type").and_then(Value::as_str).map(str::to_string);
    let flag = |x: &Value, k: &str, default: bool| x.get(k).and_then(Value::as_bool).unwrap_or(default);
    let byte_level = |x: &Value, use_regex: bool| {
        ty(x).as_deref() == Some("ByteLevel")
            && !flag(x, "add_prefix_space", true)
            && flag(x, "use_regex", true) == use_regex
    };
    let split = |x: &Value| -> Option<PreTokenizer> {
        if ty(x).as_deref() != Some("Split")
            || x.get("behavior").and_then(Value::as_str) != Some("Isolated")
            || flag(x, "invert", false)
        {
            return None;
        }
        match x.get("pattern")?.get("Regex")?.as_str()? {
            LLAMA3_PATTERN => Some(PreTokenizer::Llama3),
            QWEN2_PATTERN => Some(PreTokenizer::Qwen2),
            GPT2_PATTERN => Some(PreTokenizer::Gpt2 { individual_digits: false }),
            _ => None,
        }
    };
    if byte_level(v, true) {
        return Some(PreTokenizer::Gpt2 { individual_digits: false });
    }
    if ty(v).as_deref() != Some("Sequence") {
        return None;
    }
    let list = v.get("pretokenizers")?.as_array()?;
    match list.as_slice() {
        [s, b] if byte_level(b, false) => split(s),
        [d, b]
            if ty(d).as_deref() == Some("Digits")
                && flag(d, "individual_digits", false)
                && byte_level(b, true) =>
        {
            Some(PreTokenizer::Gpt2 { individual_digits: true })
        }
        _ => None,
    }
}

/// The Llama-3.1 special tokens, in id order from the first id after the ranks.
pub(crate) fn llama3_special_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|reserved_special_token_2|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let fixed = names.len();
    names.extend((0..256 - fixed).map(|i| format!("<|reserved_special_token_{}|>", 3 + i)));
    names
}

fn from_tiktoken(path: &Path, data: &[u8], config: Config) -> Result<Tokenizer, TokenizerError> {
    let o = origin(path);
    let text = std::str::from_utf8(data).map_err(|e| {
        TokenizerError::format(
            &o,
            format!("not UTF-8 ({e}); expected a tokenizer.json or a tiktoken tokenizer.model (base64 token and rank per line)"),
        )
    })?;
    let mut by_bytes: FastMap<Box<[u8]>, u32> = FastMap::default();
    let mut max_rank: Option<u32> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| {
            TokenizerError::format(&o, format!("line {}: {why}; expected \"<base64 token> <rank>\"", n + 1))
        };
        let (tok, rank) = line.split_once(' ').ok_or_else(|| bad("no space"))?;
        let rank: u32 = rank.trim().parse().map_err(|_| bad("the rank is not a number"))?;
        let bytes = base64_decode(tok).ok_or_else(|| bad("the token is not valid base64"))?;
        if by_bytes.insert(bytes.into_boxed_slice(), rank).is_some() {
            return Err(bad("the token appears twice"));
        }
        max_rank = max_rank.max(Some(rank));
    }
    let Some(max_rank) = max_rank else {
        return Err(TokenizerError::format(&o, "no ranks; expected \"<base64 token> <rank>\" lines"));
    };
    // tiktoken merges any two adjacent parts whose concatenation is a token, lowest rank first:
    // register every split of every token into two tokens as a merge with the token's rank.
    let mut merges = Vec::new();
    for (bytes, &id) in &by_bytes {
        for k in 1..bytes.len() {
            if let (Some(&a), Some(&b)) = (by_bytes.get(&bytes[..k]), by_bytes.get(&bytes[k..])) {
                merges.push((a, b, id));
            }
        }
    }
    let mut bpe = Bpe::new(by_bytes, true);
    bpe.reserve_merges(merges.len());
    for (a, b, id) in merges {
        bpe.add_merge(a, b, id, id);
    }
    let added: Vec<AddedToken> = if config.added_tokens.is_empty() {
        llama3_special_names()
            .into_iter()
            .enumerate()
            .map(|(i, content)| AddedToken {
                content,
                id: max_rank + 1 + i as u32,
                special: true,
                lstrip: false,
                rstrip: false,
                single_word: false,
            })
            .collect()
    } else {
        config.added_tokens.clone()
    };
    let bos = config
        .resolve(&config.bos_token, &added, &bpe)
        .or_else(|| first_added(&added, &["<|begin_of_text|>"]));
    let eos =
        config.resolve(&config.eos_token, &added, &bpe).or_else(|| first_added(&added, &["<|end_of_text|>"]));
    let pad = config.resolve(&config.pad_token, &added, &bpe);
    Tokenizer::assemble(Parts {
        origin: o,
        bpe,
        pre: PreTokenizer::Llama3,
        added,
        bos,
        eos,
        pad,
        normalizer: Normalizer::None,
        add_bos_default: config.add_bos_token.unwrap_or(true),
        chat_template: config.chat_template,
        bos_token: config.bos_token,
        eos_token: config.eos_token,
    })
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with `=` padding.
pub(crate) fn base64_encode(bytes: &[u8], out: &mut String) {
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

/// Decodes standard base64 (padding optional); `None` on any other character.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be padding zeros, and a lone 6-bit group is not valid base64.
    if bits >= 6 || acc != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "abcd", " the", "\u{00ff}\u{0100}"] {
            let mut e = String::new();
            base64_encode(s.as_bytes(), &mut e);
            assert_eq!(base64_decode(&e).unwrap(), s.as_bytes(), "{s:?} -> {e}");
        }
        let mut e = String::new();
        base64_encode(b"Hello", &mut e);
        assert_eq!(e, "SGVsbG8=");
        assert_eq!(base64_decode("IQ==").unwrap(), b"!");
        assert_eq!(base64_decode("I*=="), None);
        assert_eq!(base64_decode("IR=="), None);
    }

    #[test]
    fn llama3_specials_are_256_with_known_ids() {
        let n = llama3_special_names();
        assert_eq!(n.len(), 256);
        assert_eq!(n[9], "<|eot_id|>");
        assert_eq!(n[8], "<|eom_id|>");
        assert_eq!(n[255], "<|reserved_special_token_247|>");
    }

    #[test]
    fn gguf_pre_names() {
        assert_eq!(gguf_pre_tokenizer(Some("llama-bpe")).unwrap(), (PreTokenizer::Llama3, true));
        assert_eq!(
            gguf_pre_tokenizer(Some("smollm")).unwrap().0,
            PreTokenizer::Gpt2 { individual_digits: true }
        );
        assert_eq!(gguf_pre_tokenizer(Some("qwen2")).unwrap(), (PreTokenizer::Qwen2, false));
        let e = gguf_pre_tokenizer(Some("qwen9")).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.pre") && e.contains("\"qwen9\""), "{e}");
    }
}
