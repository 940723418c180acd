//! Typed views of Hugging Face `tokenizer.json` for fast loading: the vocabulary and merges are
//! read straight into vectors; the small, varied parts stay as JSON values.

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// The top level of `tokenizer.json`.
#[derive(Deserialize)]
pub(crate) struct HfRoot {
    #[serde(default)]
    pub model: Option<HfModel>,
    #[serde(default)]
    pub normalizer: Value,
    #[serde(default)]
    pub pre_tokenizer: Value,
    #[serde(default)]
    pub post_processor: Value,
    #[serde(default)]
    pub added_tokens: Value,
}

/// The `model` object; other model types (Unigram, WordPiece) parse too, to be reported by type.
#[derive(Deserialize)]
pub(crate) struct HfModel {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub vocab: HfVocab,
    #[serde(default)]
    pub merges: Option<Vec<HfMerge>>,
    #[serde(default)]
    pub ignore_merges: Option<bool>,
    #[serde(default)]
    pub continuing_subword_prefix: Value,
    #[serde(default)]
    pub end_of_word_suffix: Value,
}

/// `model.vocab`: an object of token → id for BPE; anything else is remembered by its kind.
#[derive(Default)]
pub(crate) enum HfVocab {
    #[default]
    Missing,
    /// Entries in file order; ids are checked by the loader.
    Map(Vec<(String, Value)>),
    /// Not an object: what it was instead.
    Other(&'static str),
}

impl<'de> Deserialize<'de> for HfVocab {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HfVocab;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a vocabulary")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HfVocab, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(k) = map.next_key::<String>()? {
                    out.push((k, map.next_value::<Value>()?));
                }
                Ok(HfVocab::Map(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HfVocab, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(HfVocab::Other("a list"))
            }
            fn visit_str<E>(self, _: &str) -> Result<HfVocab, E> {
                Ok(HfVocab::Other("a string"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<HfVocab, E> {
                Ok(HfVocab::Other("a number"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<HfVocab, E> {
                Ok(HfVocab::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<HfVocab, E> {
                Ok(HfVocab::Other("a number"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<HfVocab, E> {
                Ok(HfVocab::Other("a boolean"))
            }
            fn visit_unit<E>(self) -> Result<HfVocab, E> {
                Ok(HfVocab::Missing)
            }
        }
        d.deserialize_any(V)
    }
}

/// One entry of `model.merges`: `"left right"` or `["left", "right"]`.
pub(crate) enum HfMerge {
    Pair(String, String),
    /// Neither form: a short rendering of what was found.
    Bad(String),
}

impl<'de> Deserialize<'de> for HfMerge {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HfMerge;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a merge, \"left right\" or [left, right]")
            }
            fn visit_str<E>(self, s: &str) -> Result<HfMerge, E> {
                Ok(match s.split_once(' ') {
                    Some((a, b)) => HfMerge::Pair(a.to_string(), b.to_string()),
                    None => HfMerge::Bad(format!("{s:?}")),
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HfMerge, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element::<Value>()? {
                    items.push(v);
                }
                Ok(match items.as_slice() {
                    [Value::String(a), Value::String(b)] => HfMerge::Pair(a.clone(), b.clone()),
                    _ => HfMerge::Bad(Value::Array(items).to_string()),
                })
            }
            fn visit_u64<E>(self, n: u64) -> Result<HfMerge, E> {
                Ok(HfMerge::Bad(n.to_string()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<HfMerge, E> {
                Ok(HfMerge::Bad(n.to_string()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<HfMerge, E> {
                Ok(HfMerge::Bad(n.to_string()))
            }
            fn visit_bool<E>(self, b: bool) -> Result<HfMerge, E> {
                Ok(HfMerge::Bad(b.to_string()))
            }
            fn visit_unit<E>(self) -> Result<HfMerge, E> {
                Ok(HfMerge::Bad("null".into()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HfMerge, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(HfMerge::Bad("an object".into()))
            }
        }
        d.deserialize_any(V)
    }
}
