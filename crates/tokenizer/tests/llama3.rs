//! Llama-3 tokenizer: tokenizer.json and tiktoken tokenizer.model against the reference ids.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use afinar_tokenizer::{token_stats, Tokenizer};
use common::{asset, fixture, ids, text};

fn llama3() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_file(&asset("llama3-tokenizer/tokenizer.json")).expect("load tokenizer.json")
    })
}

/// A fresh temporary directory under the target dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("afinar-tokenizer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn check_corpus(tok: &Tokenizer, what: &str) {
    let fx = fixture("llama3.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 40, "the corpus has {} strings", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let t = text(&case["text"]);
        let want = ids(&case["ids"]);
        let got = tok.encode(t, false).expect("encode");
        if got != want {
            failures.push(format!("{t:?}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{what}: {} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn tokenizer_json_matches_hf_ids() {
    check_corpus(llama3(), "tokenizer.json");
}

#[test]
fn bos_and_specials_match_hf() {
    let tok = llama3();
    let fx = fixture("llama3.json");
    let case = &fx["with_bos"];
    assert_eq!(tok.encode(text(&case["text"]), true).unwrap(), ids(&case["ids"]));
    assert_eq!(tok.vocab_size() as u64, fx["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.bos_id().map(u64::from), fx["bos_id"].as_u64());
    for (name, id) in fx["special"].as_object().unwrap() {
        assert_eq!(tok.token_to_id(name).map(u64::from), id.as_u64(), "{name}");
        assert_eq!(tok.id_to_token(id.as_u64().unwrap() as u32).as_deref(), Some(name.as_str()));
    }
    let eot = tok.token_to_id("<|eot_id|>").unwrap();
    let end = tok.token_to_id("<|end_of_text|>").unwrap();
    let stops = tok.stop_ids();
    assert!(stops.contains(&eot) && stops.contains(&end), "{stops:?}");
    assert_eq!(tok.eos_id(), Some(end));
    // A BPE token by its byte-level spelling.
    let the = tok.encode(" the", false).unwrap();
    assert_eq!(the.len(), 1);
    assert_eq!(tok.token_to_id("Ġthe"), Some(the[0]));
    assert_eq!(tok.id_to_token(the[0]).as_deref(), Some("Ġthe"));
}

#[test]
fn decode_round_trips_and_streams() {
    let tok = llama3();
    let fx = fixture("llama3.json");
    for case in fx["cases"].as_array().unwrap() {
        let t = text(&case["text"]);
        let ids = tok.encode(t, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), t);
        // Streaming gives the same text, and each step only complete characters.
        let mut stream = tok.decode_stream(false);
        let mut streamed = String::new();
        for &id in &ids {
            if let Some(piece) = stream.step(id).unwrap() {
                assert!(!piece.contains('\u{FFFD}') || t.contains('\u{FFFD}'), "{piece:?}");
                streamed.push_str(&piece);
            }
        }
        if let Some(rest) = stream.flush() {
            streamed.push_str(&rest);
        }
        assert_eq!(streamed, t);
    }
    let ids = tok.encode("<|begin_of_text|>Hi<|eot_id|>", false).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "Hi");
    let mut stream = tok.decode_stream(true);
    let out: String = ids.iter().filter_map(|&id| stream.step(id).unwrap()).collect();
    assert_eq!(out, "Hi");
    // A character split across tokens is held back until complete: "🦀" is several byte tokens.
    let crab = tok.encode("🦀", false).unwrap();
    assert!(crab.len() > 1, "{crab:?}");
    let mut stream = tok.decode_stream(false);
    let steps: Vec<Option<String>> = crab.iter().map(|&id| stream.step(id).unwrap()).collect();
    assert!(steps[..steps.len() - 1].iter().all(Option::is_none), "{steps:?}");
    assert_eq!(steps.last().unwrap().as_deref(), Some("🦀"));
    // A cut-off character decodes lossily, never panics.
    assert_eq!(tok.decode(&crab[..1], false).unwrap(), "\u{FFFD}");
    let err = tok.decode(&[tok.vocab_size() as u32], false).unwrap_err().to_string();
    assert!(err.contains("out of range"), "{err}");
}

/// CRC-32 (IEEE), to compare the written tokenizer.model with the one the Python script wrote.
fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
        *slot = c;
    }
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

fn write_model(dir: &Path) -> PathBuf {
    let model = dir.join("tokenizer.model");
    llama3().write_tiktoken_model(&model).expect("write tokenizer.model");
    let fx = fixture("llama3.json");
    let bytes = std::fs::read(&model).unwrap();
    assert_eq!(bytes.len() as u64, fx["tiktoken"]["model_size"].as_u64().unwrap());
    assert_eq!(
        crc32(&bytes) as u64,
        fx["tiktoken"]["model_crc32"].as_u64().unwrap(),
        "tokenizer.model differs from the one scripts/fixtures/tokenizer_ids.py wrote"
    );
    model
}

#[test]
fn tiktoken_model_with_config_matches_hf_ids() {
    let dir = temp_dir("tiktoken-config");
    let model = write_model(&dir);
    std::fs::copy(asset("llama3-tokenizer/tokenizer_config.json"), dir.join("tokenizer_config.json"))
        .unwrap();
    let tok = Tokenizer::from_file(&model).expect("load tokenizer.model");
    check_corpus(&tok, "tokenizer.model + tokenizer_config.json");
    assert_eq!(tok.vocab_size(), llama3().vocab_size());
    assert_eq!(tok.chat_template(), llama3().chat_template());
    assert_eq!(tok.bos_id(), llama3().bos_id());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tiktoken_model_alone_uses_llama31_specials() {
    let dir = temp_dir("tiktoken-alone");
    let model = write_model(&dir);
    let tok = Tokenizer::from_file(&model).expect("load tokenizer.model");
    let _ = std::fs::remove_dir_all(&dir);
    // The corpus uses only special tokens that Llama-3 and 3.1 name alike.
    check_corpus(&tok, "tokenizer.model");
    assert_eq!(tok.vocab_size(), 128_256);
    assert_eq!(tok.bos_id(), Some(128_000));
    assert_eq!(tok.token_to_id("<|eom_id|>"), Some(128_008));
    assert_eq!(tok.token_to_id("<|python_tag|>"), Some(128_010));
    assert_eq!(tok.token_to_id("<|reserved_special_token_247|>"), Some(128_255));
    assert!(tok.add_bos_default());
    let mut stops = tok.stop_ids();
    stops.sort();
    assert_eq!(stops, [128_001, 128_008, 128_009]);
    assert_eq!(tok.chat_template(), None);
}

#[test]
fn stats_for_english_and_spanish() {
    let tok = llama3();
    let en = token_stats(tok, common::EN).unwrap();
    let es = token_stats(tok, common::ES).unwrap();
    println!("llama3 EN {en:?}\nllama3 ES {es:?}");
    assert_eq!(en.words, 54);
    assert_eq!(en.tokens, tok.encode(common::EN, false).unwrap().len());
    assert_eq!(en.chars, common::EN.chars().count());
    assert!((en.tokens_per_word - en.tokens as f64 / en.words as f64).abs() < 1e-12);
    // Spanish costs more tokens per word than English with Llama-3's English-heavy merges.
    assert!(es.tokens_per_word > en.tokens_per_word, "{en:?} {es:?}");
}
