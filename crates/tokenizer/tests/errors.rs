//! Bad input gives errors that name the file or key and say what was expected.

mod common;

use std::path::{Path, PathBuf};

use afinar_tokenizer::{render_template, GgufTokenizerSpec, Message, Tokenizer, TokenizerError};

fn temp_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("afinar-tokenizer-errors-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// Loads `path` expecting an error; removes the temporary directory afterwards.
fn load_err(path: &Path) -> String {
    let err = Tokenizer::from_file(path).expect_err("loading must fail");
    let _ = std::fs::remove_dir_all(path.parent().expect("temp dir"));
    err.to_string()
}

#[test]
fn missing_file_names_the_path() {
    let path = Path::new("/nonexistent/afinar/tokenizer.json");
    let err = Tokenizer::from_file(path).unwrap_err();
    assert!(matches!(err, TokenizerError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/afinar/tokenizer.json"), "{err}");
}

#[test]
fn invalid_json_names_the_path_and_position() {
    let path = temp_file("tokenizer.json", "{\"model\": {\"type\": \"BPE\", ");
    let msg = load_err(&path);
    assert!(msg.contains(&path.display().to_string()) && msg.contains("invalid JSON"), "{msg}");
    assert!(msg.contains("line 1"), "{msg}");
}

#[test]
fn unsupported_model_type_names_the_path_and_expectation() {
    let path = temp_file(
        "unigram.json",
        r#"{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}, "normalizer": null, "pre_tokenizer": null}"#,
    );
    let msg = load_err(&path);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("\"Unigram\"") && msg.contains("expected \"BPE\""), "{msg}");
}

#[test]
fn malformed_tokenizer_json_contents() {
    let pre = r#"{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}"#;
    let cases = [
        (r#"{"version": "1.0"}"#, "missing key \"model\""),
        (
            &*format!(
                r#"{{"model": {{"type": "BPE", "vocab": {{"a": 0}}, "merges": ["a b"]}}, "pre_tokenizer": {pre}}}"#
            ),
            "model.merges[0] (a b): token \"b\" is not in model.vocab",
        ),
        (
            r#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Whitespace"}}"#,
            "unsupported pre_tokenizer",
        ),
        (
            &*format!(
                r#"{{"model": {{"type": "BPE", "vocab": {{"a": "x"}}, "merges": []}}, "pre_tokenizer": {pre}}}"#
            ),
            "model.vocab[\"a\"]: expected a token id",
        ),
        (
            &*format!(
                r#"{{"model": {{"type": "BPE", "vocab": {{"a": 0}}, "merges": []}}, "normalizer": {{"type": "NFKC"}}, "pre_tokenizer": {pre}}}"#
            ),
            "unsupported normalizer",
        ),
    ];
    for (i, (json, want)) in cases.iter().enumerate() {
        let path = temp_file(&format!("bad{i}.json"), json);
        let msg = load_err(&path);
        assert!(msg.contains(&path.display().to_string()) && msg.contains(want), "{msg}\n(wanted {want:?})");
    }
}

#[test]
fn malformed_tiktoken_model_names_the_line() {
    let path = temp_file("tokenizer.model", "IQ== 0\nnot-base64! 1\n");
    let msg = load_err(&path);
    assert!(msg.contains(&path.display().to_string()) && msg.contains("line 2"), "{msg}");
    assert!(msg.contains("<base64 token> <rank>"), "{msg}");
}

#[test]
fn broken_tokenizer_config_beside_is_an_error() {
    let dir = std::env::temp_dir().join(format!("afinar-tokenizer-errors-{}-cfg", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.model"), "IQ== 0\n").unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), "{\"chat_template\": 3}").unwrap();
    let msg = load_err(&dir.join("tokenizer.model"));
    assert!(msg.contains("tokenizer_config.json") && msg.contains("chat_template"), "{msg}");
}

#[test]
fn bad_gguf_specs() {
    let base = GgufTokenizerSpec {
        model: "gpt2".into(),
        pre: Some("gpt2".into()),
        tokens: vec!["a".into(), "b".into(), "ab".into()],
        merges: vec!["a b".into()],
        ..Default::default()
    };
    let tok = Tokenizer::from_gguf(base.clone()).unwrap();
    assert_eq!(tok.encode("ab", false).unwrap(), [2]);
    let err = tok.encode("abc", false).unwrap_err().to_string();
    assert!(err.contains("0x63"), "{err}");

    let cases = [
        (GgufTokenizerSpec { model: "llama".into(), ..base.clone() }, "tokenizer.ggml.model \"llama\""),
        (GgufTokenizerSpec { pre: Some("qwen9".into()), ..base.clone() }, "tokenizer.ggml.pre \"qwen9\""),
        (GgufTokenizerSpec { merges: vec!["a c".into()], ..base.clone() }, "tokenizer.ggml.merges: merge 0"),
        (GgufTokenizerSpec { token_types: vec![1], ..base.clone() }, "tokenizer.ggml.token_type"),
        (GgufTokenizerSpec { bos_id: Some(9), ..base.clone() }, "tokenizer.ggml.bos_token_id"),
        (GgufTokenizerSpec { tokens: vec![], merges: vec![], ..base.clone() }, "tokenizer.ggml.tokens"),
    ];
    for (spec, want) in cases {
        let msg = Tokenizer::from_gguf(spec).unwrap_err().to_string();
        assert!(msg.contains("GGUF metadata") && msg.contains(want), "{msg}\n(wanted {want:?})");
    }
}

#[test]
fn bad_templates_are_errors() {
    let msgs = [Message::new("user", "hi")];
    let err = render_template("{% for m in messages %}", &msgs, true, None, None).unwrap_err();
    assert!(matches!(err, TokenizerError::Template(_)), "{err:?}");
    let err = render_template(
        "{% if messages[0]['role'] == 'user' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}",
        &msgs,
        true,
        None,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("Conversation roles must alternate"), "{err}");
}
