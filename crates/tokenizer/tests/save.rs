//! Hugging Face export: `Tokenizer::save_hf` writes `tokenizer.json` + `tokenizer_config.json`
//! that load back (here with our loader; with `AFINAR_PYTHON` set, also with Hugging Face
//! `tokenizers` and transformers through scripts/verify/tokenizer_export.py) to the same ids,
//! BOS/EOS and chat rendering.
//!
//! Tokenizers exported: Llama-3 from `tokenizer.json`, Llama-3 from tiktoken `tokenizer.model`
//! (adds BOS by default, merges rebuilt from ranks), SmolLM2 from GGUF metadata (individual
//! digits, special tokens at the low ids), and Qwen3 from `tokenizer.json` (NFC, Qwen2 split
//! regex, PAD, `enable_thinking` in its template).

mod common;

use std::path::{Path, PathBuf};

use afinar_tokenizer::{render_chat_with, TemplateVars, Tokenizer};
use common::{asset, fixture, fixture_dir, ids, messages, smollm2_spec, text};
use serde_json::Value;

/// A fresh temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("afinar-tokenizer-save-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn read_json(path: &Path) -> Value {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&data).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Saves `tok` into `dir`, checks the file list and that no temporary file is left, and loads the
/// written `tokenizer.json` back with our loader.
fn save_and_reload(tok: &Tokenizer, dir: &Path) -> Tokenizer {
    let written = tok.save_hf(dir).expect("save_hf");
    assert_eq!(written, [dir.join("tokenizer.json"), dir.join("tokenizer_config.json")]);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["tokenizer.json", "tokenizer_config.json"], "temporary files left behind");
    Tokenizer::from_file(&dir.join("tokenizer.json")).expect("load the exported tokenizer.json")
}

/// The template variables of a chat case: `enable_thinking` when the fixture passed it.
fn vars(case: &Value) -> TemplateVars {
    let mut vars = TemplateVars::new();
    if let Some(b) = case.get("enable_thinking").and_then(Value::as_bool) {
        vars.insert("enable_thinking".into(), Value::Bool(b));
    }
    vars
}

/// Checks that `b` (reloaded) behaves as `a` (original) on a fixture corpus and the chat cases
/// `chat_key` of `chat.json` (or, for `qwen3_chat.json:cases`, of that file).
fn assert_same(a: &Tokenizer, b: &Tokenizer, corpus: &str, chat_key: &str) {
    assert_eq!(b.vocab_size(), a.vocab_size());
    assert_eq!(b.pre_tokenizer(), a.pre_tokenizer());
    assert_eq!(b.normalizer(), a.normalizer());
    assert_eq!(b.pad_id(), a.pad_id());
    assert_eq!(b.bos_id(), a.bos_id());
    assert_eq!(b.eos_id(), a.eos_id());
    assert_eq!(b.bos_token(), a.bos_token());
    assert_eq!(b.eos_token(), a.eos_token());
    assert_eq!(b.add_bos_default(), a.add_bos_default());
    assert_eq!(b.chat_template(), a.chat_template());
    assert_eq!(b.stop_ids(), a.stop_ids());
    for id in 0..a.vocab_size() as u32 {
        assert_eq!(b.id_to_token(id), a.id_to_token(id), "id {id}");
        assert_eq!(b.is_special(id), a.is_special(id), "id {id}");
    }
    let fx = fixture(corpus);
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20, "{corpus}: {} cases", cases.len());
    for case in cases {
        let t = text(&case["text"]);
        let want = ids(&case["ids"]);
        assert_eq!(a.encode(t, false).unwrap(), want, "original, {t:?}");
        assert_eq!(b.encode(t, false).unwrap(), want, "reloaded, {t:?}");
        assert_eq!(b.encode(t, true).unwrap(), a.encode(t, true).unwrap(), "with BOS, {t:?}");
        assert_eq!(b.decode(&want, false).unwrap(), case.get("decoded").map_or(t, text));
    }
    let (chat_file, chat_key) = chat_key.split_once(':').unwrap_or(("chat.json", chat_key));
    let chat = fixture(chat_file);
    for case in chat[chat_key].as_array().expect(chat_key) {
        let msgs = messages(&case["messages"]);
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let out = render_chat_with(b, &msgs, agp, &vars(case)).expect("render with the reloaded tokenizer");
        assert_eq!(out, render_chat_with(a, &msgs, agp, &vars(case)).unwrap());
        assert_eq!(out, text(&case["text"]), "{chat_key} add_generation_prompt={agp}");
        assert_eq!(b.encode(&out, false).unwrap(), ids(&case["ids"]));
    }
}

fn llama3_json() -> Tokenizer {
    Tokenizer::from_file(&asset("llama3-tokenizer/tokenizer.json")).expect("load tokenizer.json")
}

fn llama3_tiktoken() -> Tokenizer {
    Tokenizer::from_file(&asset("llama3-tokenizer/tokenizer.model")).expect("load tokenizer.model")
}

fn smollm2() -> Tokenizer {
    Tokenizer::from_gguf(smollm2_spec()).expect("build from GGUF spec")
}

#[test]
fn llama3_tokenizer_json_round_trips() {
    let tok = llama3_json();
    let dir = temp_dir("llama3");
    let back = save_and_reload(&tok, &dir);
    assert_same(&tok, &back, "llama3.json", "llama3_template");

    let j = read_json(&dir.join("tokenizer.json"));
    let pre = &j["pre_tokenizer"];
    assert_eq!(pre["type"], "Sequence");
    assert_eq!(pre["pretokenizers"][0]["type"], "Split");
    assert_eq!(pre["pretokenizers"][0]["behavior"], "Isolated");
    assert_eq!(pre["pretokenizers"][1]["use_regex"], false);
    assert_eq!(j["model"]["ignore_merges"], true);
    assert_eq!(j["model"]["byte_fallback"], false);
    assert!(j["normalizer"].is_null());
    assert_eq!(j["decoder"]["type"], "ByteLevel");
    // Merges in rank order, as [left, right] pairs: the original's first ones.
    let merges = j["model"]["merges"].as_array().unwrap();
    assert_eq!(merges[0], serde_json::json!(["Ġ", "Ġ"]));
    assert_eq!(merges[1], serde_json::json!(["Ġ", "ĠĠĠ"]));
    assert_eq!(j["model"]["vocab"]["Ġthe"], 279);
    assert_eq!(j["model"]["vocab"]["<|eot_id|>"], 128009);
    assert_eq!(j["added_tokens"].as_array().unwrap().len(), 256);
    assert_eq!(j["added_tokens"][9]["content"], "<|eot_id|>");
    assert_eq!(j["added_tokens"][9]["special"], true);
    // This tokenizer.json does not add BOS (ByteLevel post-processor only), and says so.
    assert!(!tok.add_bos_default());
    assert_eq!(j["post_processor"]["type"], "ByteLevel");

    let c = read_json(&dir.join("tokenizer_config.json"));
    assert_eq!(c["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(c["bos_token"], "<|begin_of_text|>");
    assert_eq!(c["eos_token"], "<|end_of_text|>");
    assert_eq!(c["add_bos_token"], false);
    assert_eq!(c["add_eos_token"], false);
    assert_eq!(c["clean_up_tokenization_spaces"], false);
    assert_eq!(c["added_tokens_decoder"]["128009"]["content"], "<|eot_id|>");
    assert!(c.get("model_max_length").is_none());
    assert_eq!(c["chat_template"].as_str(), tok.chat_template());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn llama3_tiktoken_round_trips_with_bos_post_processor() {
    let tok = llama3_tiktoken();
    assert!(tok.add_bos_default());
    let dir = temp_dir("llama3-tiktoken");
    let back = save_and_reload(&tok, &dir);
    assert_same(&tok, &back, "llama3.json", "llama3_template");
    let fx = fixture("llama3.json");
    let with_bos = &fx["with_bos"];
    assert_eq!(back.encode(text(&with_bos["text"]), true).unwrap(), ids(&with_bos["ids"]));

    let j = read_json(&dir.join("tokenizer.json"));
    let pp = &j["post_processor"];
    assert_eq!(pp["type"], "Sequence");
    let template = &pp["processors"][1];
    assert_eq!(template["type"], "TemplateProcessing");
    assert_eq!(template["single"][0]["SpecialToken"]["id"], "<|begin_of_text|>");
    assert_eq!(template["special_tokens"]["<|begin_of_text|>"]["ids"], serde_json::json!([128000]));
    let c = read_json(&dir.join("tokenizer_config.json"));
    assert_eq!(c["add_bos_token"], true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn smollm2_from_gguf_round_trips() {
    let tok = smollm2();
    let dir = temp_dir("smollm2");
    let back = save_and_reload(&tok, &dir);
    assert_same(&tok, &back, "smollm2.json", "smollm2_template");

    let j = read_json(&dir.join("tokenizer.json"));
    let pre = &j["pre_tokenizer"];
    assert_eq!(pre["type"], "Sequence");
    assert_eq!(pre["pretokenizers"][0], serde_json::json!({"type": "Digits", "individual_digits": true}));
    assert_eq!(pre["pretokenizers"][1]["type"], "ByteLevel");
    assert_eq!(pre["pretokenizers"][1]["use_regex"], true);
    assert_eq!(pre["pretokenizers"][1]["add_prefix_space"], false);
    assert_eq!(j["model"]["ignore_merges"], false);
    // The control tokens at the low ids are in the model vocabulary too, so that Hugging Face
    // keeps their ids.
    assert_eq!(j["model"]["vocab"]["<|endoftext|>"], 0);
    assert_eq!(j["model"]["vocab"]["<|im_start|>"], 1);
    assert_eq!(j["post_processor"]["type"], "ByteLevel");

    let c = read_json(&dir.join("tokenizer_config.json"));
    assert_eq!(c["bos_token"], "<|im_start|>");
    assert_eq!(c["eos_token"], "<|im_end|>");
    assert_eq!(c["add_bos_token"], false);
    assert_eq!(c["added_tokens_decoder"]["2"]["content"], "<|im_end|>");
    let _ = std::fs::remove_dir_all(&dir);
}

fn qwen3() -> Tokenizer {
    Tokenizer::from_file(&asset("qwen3-tokenizer/tokenizer.json")).expect("load Qwen3 tokenizer.json")
}

#[test]
fn qwen3_tokenizer_json_round_trips() {
    let tok = qwen3();
    let dir = temp_dir("qwen3");
    let back = save_and_reload(&tok, &dir);
    assert_same(&tok, &back, "qwen3.json", "qwen3_chat.json:cases");

    let j = read_json(&dir.join("tokenizer.json"));
    assert_eq!(j["normalizer"], serde_json::json!({"type": "NFC"}));
    let pre = &j["pre_tokenizer"]["pretokenizers"];
    let original = read_json(&asset("qwen3-tokenizer/tokenizer.json"));
    assert_eq!(pre[0]["pattern"], original["pre_tokenizer"]["pretokenizers"][0]["pattern"]);
    assert_eq!(pre[1]["use_regex"], false);
    assert_eq!(j["model"]["ignore_merges"], false);
    assert_eq!(j["model"]["vocab"]["<|im_end|>"], 151645);
    assert_eq!(
        j["added_tokens"].as_array().unwrap().len(),
        original["added_tokens"].as_array().unwrap().len()
    );
    let c = read_json(&dir.join("tokenizer_config.json"));
    assert!(c["bos_token"].is_null());
    assert_eq!(c["eos_token"], "<|im_end|>");
    assert_eq!(c["pad_token"], "<|endoftext|>");
    assert_eq!(c["add_bos_token"], false);
    assert_eq!(c["added_tokens_decoder"]["151657"]["content"], "<tool_call>");
    assert_eq!(c["added_tokens_decoder"]["151657"]["special"], false);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn model_max_length_and_missing_folder() {
    let tok = smollm2();
    let dir = temp_dir("max-length").join("nested/checkpoint");
    let written = tok.save_hf_with_max_length(&dir, Some(8192)).expect("save into a new folder");
    assert_eq!(written.len(), 2);
    assert_eq!(read_json(&dir.join("tokenizer_config.json"))["model_max_length"], 8192);
    // Saving again replaces the files.
    tok.save_hf(&dir).expect("save again");
    assert!(read_json(&dir.join("tokenizer_config.json")).get("model_max_length").is_none());
    let _ = std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap());

    // A path that is a file cannot be a folder: an I/O error naming it.
    let file = temp_dir("not-a-dir").join("file");
    std::fs::write(&file, "x").unwrap();
    let e = tok.save_hf(&file).unwrap_err().to_string();
    assert!(e.contains(&file.display().to_string()), "{e}");
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

/// Runs scripts/verify/tokenizer_export.py on each exported folder: Hugging Face `tokenizers` and
/// transformers `AutoTokenizer` must load it and give the fixture's ids and chat text.
#[test]
fn hugging_face_loads_the_export() {
    let Some(python) = common::reference_python("the Hugging Face tokenizers/transformers check") else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/verify/tokenizer_export.py");
    let cases: [(&str, Tokenizer, &str, &str, &str); 4] = [
        ("hf-llama3", llama3_json(), "llama3.json", "chat.json", "llama3_template"),
        ("hf-llama3-tiktoken", llama3_tiktoken(), "llama3.json", "chat.json", "llama3_template"),
        ("hf-smollm2", smollm2(), "smollm2.json", "chat.json", "smollm2_template"),
        ("hf-qwen3", qwen3(), "qwen3.json", "qwen3_chat.json", "cases"),
    ];
    for (name, tok, corpus, chat_file, chat_key) in cases {
        let chat = fixture_dir().join(chat_file);
        let dir = temp_dir(name);
        tok.save_hf(&dir).expect("save_hf");
        let out = std::process::Command::new(&python)
            .arg(&script)
            .arg(&dir)
            .arg(fixture_dir().join(corpus))
            .arg("--chat")
            .arg(&chat)
            .arg("--chat-key")
            .arg(chat_key)
            .output()
            .expect("run python");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: tokenizer_export.py failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        assert_eq!(report["ok"], true, "{name}: {report}");
        println!("{name}: {}", report["checked"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
