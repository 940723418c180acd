//! `afinar quantize` and `afinar export-adapter` from the command line: a file (or, for nf4, a
//! bitsandbytes folder) is written, and bad input (scheme, output, folder, dtype, architecture,
//! adapter) fails with a clear message, never a panic, before any long work.

mod common;

use common::{afinar, assert_clean_failure, fixture, smollm2, text};
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
        &afinar(&["quantize", "--model", model, "--scheme", "q8_0", "--dtype", "f16", "--output", &out]),
        "--dtype f16 applies to --scheme nf4 only",
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

#[test]
fn quantize_nf4_writes_a_bitsandbytes_folder() {
    let tmp = Tmp::new("nf4");
    let model = fixture("models/llama32_tiny");
    let model = model.to_str().unwrap();
    let out = tmp.path("tiny-nf4");
    let res = afinar(&["quantize", "--model", model, "--scheme", "nf4", "--output", &out]);
    assert!(res.status.success(), "{}", stderr(&res));
    let err = stderr(&res);
    assert!(err.contains("NF4") && err.contains("BF16") && err.contains("bytes per parameter"), "{err}");
    for f in ["model.safetensors", "config.json", "generation_config.json"] {
        assert!(Path::new(&out).join(f).is_file(), "{f}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&out).join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["bnb_4bit_quant_type"], "nf4");
    assert_eq!(cfg["quantization_config"]["bnb_4bit_compute_dtype"], "bfloat16");
    // The folder quantizes again (read through bitsandbytes' layout).
    let again = tmp.path("again.gguf");
    let res = afinar(&["quantize", "--model", &out, "--scheme", "q8_0", "--output", &again]);
    assert!(res.status.success(), "{}", stderr(&res));
    // An existing folder needs --force; a file, the model's own folder and a bad dtype are refused.
    assert_clean_failure(
        &afinar(&["quantize", "--model", model, "--scheme", "nf4", "--output", &out]),
        "already exists; pass --force",
    );
    let res = afinar(&[
        "quantize", "--model", model, "--scheme", "nf4", "--dtype", "f32", "--output", &out, "--force",
    ]);
    assert!(res.status.success(), "{}", stderr(&res));
    assert_clean_failure(
        &afinar(&["quantize", "--model", model, "--scheme", "nf4", "--output", &again]),
        "is a file; --scheme nf4 writes a Hugging Face folder",
    );
    assert_clean_failure(
        &afinar(&["quantize", "--model", &out, "--scheme", "nf4", "--output", &out, "--force"]),
        "is the model's own folder",
    );
    assert_clean_failure(
        &afinar(&[
            "quantize",
            "--model",
            model,
            "--scheme",
            "nf4",
            "--dtype",
            "q8_0",
            "--output",
            &tmp.path("x"),
        ]),
        "invalid value 'q8_0' for '--dtype",
    );
    assert_clean_failure(
        &afinar(&["quantize", "--model", model, "--scheme", "nf4", "--output", &tmp.path("missing/x")]),
        "does not exist",
    );
    assert!(!Path::new(&tmp.path("x")).exists(), "nothing is written on failure");
}

#[test]
fn nf4_smollm2_folder_generates() {
    let tmp = Tmp::new("nf4-smollm2");
    let out = tmp.path("smollm2-nf4");
    let res =
        afinar(&["quantize", "--model", smollm2().to_str().unwrap(), "--scheme", "nf4", "--output", &out]);
    assert!(res.status.success(), "{}", stderr(&res));
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        assert!(Path::new(&out).join(f).is_file(), "{f}");
    }
    let res = afinar(&[
        "generate",
        "--model",
        &out,
        "--prompt",
        "The capital of France is",
        "--max-new-tokens",
        "8",
    ]);
    assert!(res.status.success(), "{}", stderr(&res));
    assert!(text(&res.stdout).contains("Paris"), "{}", text(&res.stdout));
}
