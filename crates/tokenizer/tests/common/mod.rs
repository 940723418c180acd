//! Shared helpers: fixture and asset locations.
#![allow(dead_code)]

use std::path::PathBuf;

use afinar_tokenizer::{GgufTokenizerSpec, Message};
use serde_json::Value;

/// An English paragraph for token statistics.
pub const EN: &str = "The history of the printing press begins in the fifteenth century, when Johannes \
    Gutenberg combined movable metal type, oil-based ink and a wooden press adapted from wine making. \
    Books became cheaper, literacy spread across Europe, and scientists could share their results \
    faster than ever before. Within fifty years, millions of copies had been printed.";
/// The same paragraph in Spanish.
pub const ES: &str = "La historia de la imprenta comienza en el siglo quince, cuando Johannes Gutenberg \
    combinó tipos móviles de metal, tinta a base de aceite y una prensa de madera adaptada de la \
    fabricación de vino. Los libros se abarataron, la alfabetización se extendió por Europa y los \
    científicos pudieron compartir sus resultados más rápido que nunca. En cincuenta años se habían \
    impreso millones de ejemplares.";

/// `tests/fixtures/tokenizer/` at the workspace root (written by scripts/fixtures/tokenizer_ids.py).
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer")
}

pub fn fixture(name: &str) -> Value {
    let path = fixture_dir().join(name);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    serde_json::from_slice(&data).unwrap_or_else(|e| panic!("fixture {} is not JSON: {e}", path.display()))
}

/// The asset cache: `$AFINAR_CACHE/assets` or `~/.cache/afinar/assets`.
pub fn asset(rel: &str) -> PathBuf {
    let base = match std::env::var_os("AFINAR_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/afinar"),
    };
    let path = base.join("assets").join(rel);
    assert!(path.exists(), "missing test asset {}: run scripts/fetch-assets.sh", path.display());
    path
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("ids array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

pub fn text(v: &Value) -> &str {
    v.as_str().expect("string")
}

pub fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .expect("messages")
        .iter()
        .map(|m| Message::new(text(&m["role"]), text(&m["content"])))
        .collect()
}

/// The SmolLM2 GGUF tokenizer metadata dumped by the fixture script.
pub fn smollm2_spec() -> GgufTokenizerSpec {
    let v = fixture("smollm2_spec.json");
    let strings =
        |k: &str| -> Vec<String> { v[k].as_array().expect(k).iter().map(|s| text(s).to_string()).collect() };
    GgufTokenizerSpec {
        model: text(&v["model"]).to_string(),
        pre: v["pre"].as_str().map(str::to_string),
        tokens: strings("tokens"),
        merges: strings("merges"),
        token_types: v["token_types"]
            .as_array()
            .expect("token_types")
            .iter()
            .map(|t| t.as_i64().expect("type") as i32)
            .collect(),
        bos_id: v["bos_id"].as_u64().map(|x| x as u32),
        eos_id: v["eos_id"].as_u64().map(|x| x as u32),
        add_bos: v["add_bos"].as_bool(),
        chat_template: v["chat_template"].as_str().map(str::to_string),
    }
}

#[path = "../../../../tests/support/skip.rs"]
mod skip;
#[allow(unused_imports)] // not every test binary that includes `common` uses both
pub use skip::{reference_python, skipped};
