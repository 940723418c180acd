//! `afinar quantize` and `afinar export-adapter` from the command line: a file is written, and
//! bad input (scheme, output, folder, architecture, adapter) fails with a clear message, never a
//! panic, before any long work.

mod common;

use common::{afinar, assert_clean_failure, fixture, text};
use std::path::{Path, PathBuf};
use std::process::Output;

fn stderr(out: &Output) -> String {
    text(&out.stderr)
}

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("afinar-quantize-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn quantize_writes_a_gguf_and_refuses_to_overwrite_it() {
    let tmp = Tmp::new("ok");
    let model = fixture("models/llama32_tiny");
    let model = model.to_str().unwrap();
    let out = tmp.path("tiny.gguf");
    let res = afinar(&["quantize", "--model", model, "--scheme", "q8_0", "--output", &out]);
    assert!(res.status.success(), "{}", stderr(&res));
    assert!(stderr(&res).contains("wrote") && stderr(&res).contains("Q8_0"), "{}", stderr(&res));
    assert!(Path::new(&out).is_file());
    let res = afinar(&["quantize", "--model", model, "--scheme", "q4_0", "--output", &out]);
    assert_clean_failure(&res, "already exists; pass --force");
    let res = afinar(&["quantize", "--model", model, "--scheme", "q4_0", "--output", &out, "--force"]);
    assert!(res.status.success(), "{}", stderr(&res));
}

#[test]
fn quantize_rejects_bad_input_clearly() {
    let tmp = Tmp::new("bad");
    let model = fixture("models/llama32_tiny");
    let model = model.to_str().unwrap();
    let out = tmp.path("x.gguf");
    assert_clean_failure(
        &afinar(&["quantize", "--model", model, "--scheme", "q3_k", "--output", &out]),
        "unknown quantization scheme `q3_k`",
    );
    assert_clean_failure(
        &afinar(&["quantize", "--model", model, "--scheme", "nf4", "--output", &out]),
        "not available yet",
    );
    assert_clean_failure(
        &afinar(&["quantize", "--model", model, "--scheme", "f16", "--output", &tmp.path("missing/x.gguf")]),
        "does not exist",
    );
    assert_clean_failure(
        &afinar(&["quantize", "--model", model, "--scheme", "f16", "--output", &tmp.path("")]),
        "is a folder",
    );
    // A Hugging Face folder of another architecture.
    let other = tmp.0.join("mistral");
    std::fs::create_dir_all(&other).unwrap();
    let cfg = std::fs::read_to_string(fixture("models/llama32_tiny/config.json")).unwrap();
    std::fs::write(other.join("config.json"), cfg.replace("\"llama\"", "\"mistral\"")).unwrap();
    assert_clean_failure(
        &afinar(&["quantize", "--model", other.to_str().unwrap(), "--scheme", "f16", "--output", &out]),
        "unsupported architecture `mistral`",
    );
    assert!(!Path::new(&out).exists(), "nothing is written on failure");
    // export-adapter: a folder without an adapter.
    assert_clean_failure(
        &afinar(&[
            "export-adapter",
            "--adapter",
            tmp.0.to_str().unwrap(),
            "--model",
            model,
            "--output",
            &out,
        ]),
        "adapter_config.json",
    );
}
