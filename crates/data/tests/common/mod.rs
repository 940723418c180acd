//! Shared test helpers: the real tokenizers from the asset cache, scratch files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use afinar_checkpoint::gguf::{GgufFile, MetaValue};
use afinar_data::{Dataset, DatasetKind, DatasetSpec, Sample, IGNORE_INDEX};
use afinar_tokenizer::{GgufTokenizerSpec, Tokenizer};

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

/// The Llama-3 tokenizer (tokenizer.json + tokenizer_config.json: chat template, BOS/EOS).
pub fn llama3() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_file(&asset("llama3-tokenizer/tokenizer.json")).expect("Llama-3 tokenizer")
    })
}

/// SmolLM2-135M-Instruct's tokenizer, built from its GGUF metadata (ChatML template).
pub fn smollm2() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
        let file = GgufFile::open(&path).expect("open GGUF");
        let strings = |key: &str| -> Vec<String> {
            file.get(key)
                .and_then(MetaValue::as_array)
                .map(|a| a.iter().map(|s| s.as_str().expect(key).to_string()).collect())
                .unwrap_or_default()
        };
        let id = |key: &str| file.get(key).and_then(MetaValue::as_u64).map(|v| v as u32);
        let spec = GgufTokenizerSpec {
            model: file.get("tokenizer.ggml.model").and_then(MetaValue::as_str).expect("model").into(),
            pre: file.get("tokenizer.ggml.pre").and_then(MetaValue::as_str).map(str::to_string),
            tokens: strings("tokenizer.ggml.tokens"),
            merges: strings("tokenizer.ggml.merges"),
            token_types: file
                .get("tokenizer.ggml.token_type")
                .and_then(MetaValue::as_array)
                .map(|a| a.iter().map(|t| t.as_u64().expect("type") as i32).collect())
                .unwrap_or_default(),
            bos_id: id("tokenizer.ggml.bos_token_id"),
            eos_id: id("tokenizer.ggml.eos_token_id"),
            add_bos: file.get("tokenizer.ggml.add_bos_token").and_then(MetaValue::as_bool),
            chat_template: file
                .get("tokenizer.chat_template")
                .and_then(MetaValue::as_str)
                .map(str::to_string),
        };
        Tokenizer::from_gguf(spec).expect("SmolLM2 tokenizer")
    })
}

/// A fresh scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("afinar-data").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Writes `content` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write test file");
    path
}

/// Writes JSONL rows.
pub fn write_jsonl(dir: &Path, name: &str, rows: &[serde_json::Value]) -> PathBuf {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    write(dir, name, &text)
}

/// A spec with defaults for `kind` reading `path`.
pub fn spec(kind: DatasetKind, path: &Path) -> DatasetSpec {
    DatasetSpec::new(kind, path)
}

/// Loads, panicking with the error text.
pub fn load(spec: &DatasetSpec, tok: &Tokenizer) -> Dataset {
    Dataset::load(spec, tok).unwrap_or_else(|e| panic!("load failed: {e}"))
}

/// The ids that are targets somewhere in the sample, in order (label t is ids[t + 1]).
pub fn target_ids(s: &Sample) -> Vec<u32> {
    s.labels.iter().filter(|&&l| l != IGNORE_INDEX).map(|&l| l as u32).collect()
}

/// The contiguous runs of target positions, as (first target index in ids, ids) pairs.
pub fn target_runs(s: &Sample) -> Vec<Vec<u32>> {
    let mut runs: Vec<Vec<u32>> = Vec::new();
    let mut prev_masked = true;
    for &l in &s.labels {
        if l == IGNORE_INDEX {
            prev_masked = true;
            continue;
        }
        if prev_masked {
            runs.push(Vec::new());
        }
        runs.last_mut().unwrap().push(l as u32);
        prev_masked = false;
    }
    runs
}

/// Checks the label invariant: labels[t] is ids[t+1] or -100, and the last is -100.
pub fn check_shift(s: &Sample) {
    assert_eq!(s.ids.len(), s.labels.len());
    assert_eq!(*s.labels.last().unwrap(), IGNORE_INDEX);
    for t in 0..s.ids.len() - 1 {
        assert!(s.labels[t] == IGNORE_INDEX || s.labels[t] == s.ids[t + 1] as i32);
    }
}
