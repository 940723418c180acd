//! Qwen3's chat template in training data: the sample is the tokenized whole-conversation
//! rendering transformers gives (earlier turns without their `<think>` block), and the trained
//! tokens are exactly transformers' `return_assistant_tokens_mask` on that template with
//! `{% generation %}` markers (tests/fixtures/tokenizer/qwen3_chat.json, written by
//! scripts/fixtures/tokenizer_qwen3.py).

mod common;

use std::path::PathBuf;

use afinar_data::{DatasetKind, PromptFormat, TrainOn, IGNORE_INDEX};
use afinar_tokenizer::Tokenizer;
use common::*;
use serde_json::{json, Value};

fn fixture() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer/qwen3_chat.json");
    serde_json::from_slice(&std::fs::read(&path).expect("read qwen3_chat.json")).expect("JSON")
}

#[test]
fn qwen3_chats_train_on_transformers_assistant_mask() {
    let tok = Tokenizer::from_file(&asset("qwen3-tokenizer/tokenizer.json")).expect("Qwen3 tokenizer");
    let fx = fixture();
    let cases: Vec<&Value> =
        fx["cases"].as_array().unwrap().iter().filter(|c| c.get("assistant_masks").is_some()).collect();
    assert!(cases.len() >= 4, "{} masked cases", cases.len());
    assert!(cases.iter().any(|c| c["name"] == "multi_turn_think_history"));
    for case in cases {
        let name = case["name"].as_str().unwrap();
        if !case["enable_thinking"].is_null() {
            continue; // datasets render with the template's defaults
        }
        let want_ids: Vec<u32> =
            case["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let mask: Vec<bool> =
            case["assistant_masks"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() == 1).collect();
        let dir = scratch(&format!("qwen3-{name}"));
        let path = write_jsonl(&dir, "chat.jsonl", &[json!({ "messages": case["messages"] })]);
        let mut sp = spec(DatasetKind::Chat, &path);
        sp.train_on = TrainOn::Assistant;
        let ds = load(&sp, &tok);
        assert_eq!(ds.stats().prompt_format, Some(PromptFormat::ChatTemplate), "{name}: no fallback");
        let s = ds.sample(0);
        check_shift(s);
        assert_eq!(s.ids, want_ids, "{name}: the sample is transformers' rendering");
        // labels[t] predicts ids[t + 1]: token t + 1 is trained exactly when the mask says so.
        let trained: Vec<bool> = s.labels[..s.labels.len() - 1].iter().map(|&l| l != IGNORE_INDEX).collect();
        assert_eq!(trained, mask[1..], "{name}: trained tokens = transformers' assistant mask");
        assert!(!mask[0]);

        // TrainOn::Last keeps only the last assistant turn: the mask's last run.
        sp.train_on = TrainOn::Last;
        let ds = load(&sp, &tok);
        let s = ds.sample(0);
        let last_start = (1..mask.len()).rev().find(|&t| mask[t] && !mask[t - 1]).unwrap();
        let want_last: Vec<bool> = (1..mask.len()).map(|t| mask[t] && t >= last_start).collect();
        let trained: Vec<bool> = s.labels[..s.labels.len() - 1].iter().map(|&l| l != IGNORE_INDEX).collect();
        assert_eq!(trained, want_last, "{name}: train_on last");
    }
}
