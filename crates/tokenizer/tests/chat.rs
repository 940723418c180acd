//! Llama-3 chat rendering: the model's template and the native fallback against the reference.

mod common;

use afinar_tokenizer::{render_chat, render_llama3, Tokenizer};
use common::{asset, fixture, ids, messages, text};

#[test]
fn llama3_template_and_native_fallback_match_reference() {
    let with_template = Tokenizer::from_file(&asset("llama3-tokenizer/tokenizer.json")).unwrap();
    assert!(with_template.chat_template().is_some(), "tokenizer_config.json beside gives the template");
    // The same vocabulary without tokenizer_config.json: a tiktoken model alone, no template.
    let dir = std::env::temp_dir().join(format!("afinar-tokenizer-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tokenizer.model");
    with_template.write_tiktoken_model(&model).unwrap();
    let without = Tokenizer::from_file(&model).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(without.chat_template().is_none());

    let fx = fixture("chat.json");
    for (key, tok) in [("llama3_template", &with_template), ("llama3_native", &without)] {
        for case in fx[key].as_array().unwrap() {
            let msgs = messages(&case["messages"]);
            let agp = case["add_generation_prompt"].as_bool().unwrap();
            let out = render_chat(tok, &msgs, agp).unwrap();
            assert_eq!(out, text(&case["text"]), "{key} add_generation_prompt={agp}");
            assert_eq!(tok.encode(&out, false).unwrap(), ids(&case["ids"]), "{key}");
            if key == "llama3_native" {
                assert_eq!(render_llama3(&msgs, agp), out);
            }
        }
    }
}
