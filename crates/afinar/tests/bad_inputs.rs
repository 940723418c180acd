//! Bad checkpoints and inputs end in clear errors naming the file, key or tensor: never a panic.

mod common;

use std::path::Path;

use afinar::engine::CpuBackend;
use afinar::models::{load_model, LoadOptions, Logits};
use common::{fixture, Tmp};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn load_err(path: &Path) -> String {
    let be = CpuBackend::new(Some(1));
    match load_model(&be, path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

/// A fresh folder, removed when the guard drops.
fn tmp(name: &str) -> Tmp {
    Tmp::new(&format!("bad-{name}"))
}

#[test]
fn missing_path() {
    let msg = load_err(Path::new("/nonexistent/model.gguf"));
    assert!(msg.contains("/nonexistent/model.gguf"), "{msg}");
}

#[test]
fn folder_without_config() {
    let d = tmp("noconfig");
    std::fs::create_dir_all(&d).unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn unknown_architecture() {
    let d = tmp("arch");
    copy_dir(&fixture("models/llama32_tiny"), &d);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(d.join("config.json"), cfg.replace("\"llama\"", "\"mamba\"")).unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("model_type") && msg.contains("mamba"), "{msg}");
}

#[test]
fn config_that_does_not_fit_the_weights() {
    let d = tmp("shape");
    copy_dir(&fixture("models/llama32_tiny"), &d);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"intermediate_size\": 128", "\"intermediate_size\": 96"),
    )
    .unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("mlp") && msg.contains("shape"), "{msg}");
}

#[test]
fn truncated_safetensors() {
    let d = tmp("trunc");
    copy_dir(&fixture("models/llama32_tiny"), &d);
    let f = d.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn truncated_gguf() {
    let d = tmp("gguf");
    std::fs::create_dir_all(&d).unwrap();
    let src = common::asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(src).unwrap();
    for cut in [3usize, 100, 5_000_000, bytes.len() - 1000] {
        let f = d.join(format!("cut{cut}.gguf"));
        std::fs::write(&f, &bytes[..cut]).unwrap();
        let msg = load_err(&f);
        assert!(msg.contains(&format!("cut{cut}.gguf")), "cut at {cut}: {msg}");
    }
}

#[test]
fn not_a_model_file() {
    let d = tmp("text");
    std::fs::create_dir_all(&d).unwrap();
    let f = d.join("notes.txt");
    std::fs::write(&f, "hello").unwrap();
    let msg = load_err(&f);
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn prompt_longer_than_context_and_bad_ids() {
    let be = CpuBackend::new(Some(1));
    let model = load_model(&be, &fixture("models/llama32_tiny"), &LoadOptions::default()).unwrap().model;
    let ctx = model.config.max_seq_len;
    let long: Vec<u32> = vec![5; ctx + 1];
    let msg = model.forward(&be, &long, 1, long.len(), None, Logits::Last).err().unwrap().to_string();
    assert!(msg.contains("context"), "{msg}");
    assert!(model.new_cache(&be, 1, ctx + 1).is_err());
    let msg = model.forward(&be, &[1, 2, 100_000], 1, 3, None, Logits::Last).err().unwrap().to_string();
    assert!(msg.contains("100000") && msg.contains("vocabulary"), "{msg}");
}

/// A config.json with fewer layers than the weights: the extra tensors are named, not ignored.
#[test]
fn config_with_fewer_layers_than_the_weights_is_refused() {
    let d = tmp("layers");
    copy_dir(&fixture("models/llama32_tiny"), &d);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
    )
    .unwrap();
    let msg = load_err(&d);
    assert!(
        msg.contains("model.layers.1.input_layernorm.weight")
            && msg.contains("not used by a model of the configured shape (1 layers"),
        "{msg}"
    );
}

/// Numbers of the wrong type in config.json are errors naming the key, not silent defaults.
#[test]
fn config_numbers_of_the_wrong_type_are_refused() {
    for (from, to, key) in [
        (
            "\"rms_norm_eps\": 1e-05",
            "\"rms_norm_eps\": \"abc\"",
            "rms_norm_eps: expected a number, got \"abc\"",
        ),
        ("\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": -1.0", "rms_norm_eps: expected a number > 0"),
        ("\"rope_theta\": 500000.0", "\"rope_theta\": [1]", "rope_theta: expected a number, got [1]"),
        (
            "\"tie_word_embeddings\": true",
            "\"tie_word_embeddings\": 1",
            "tie_word_embeddings: expected true or false",
        ),
    ] {
        let d = tmp("types");
        copy_dir(&fixture("models/llama32_tiny"), &d);
        let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
        assert!(cfg.contains(from), "{from}");
        std::fs::write(d.join("config.json"), cfg.replace(from, to)).unwrap();
        let msg = load_err(&d);
        assert!(msg.contains("config.json: ") && msg.contains(key), "{to}: {msg}");
    }
}
