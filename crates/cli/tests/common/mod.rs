//! Helpers shared by the CLI tests: running the binary, test assets and fixtures, and the check
//! that a failure is clean (non-zero exit, a message, no panic).
#![allow(dead_code)] // each test binary uses its own subset

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A file of the test assets (`scripts/fetch-assets.sh`), which must exist.
pub fn asset(rel: &str) -> PathBuf {
    let base = std::env::var_os("AFINAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/afinar"));
    let p = base.join("assets").join(rel);
    assert!(p.exists(), "{} is missing: run scripts/fetch-assets.sh", p.display());
    p
}

/// The real SmolLM2-135M-Instruct Q4_1 GGUF of the assets.
pub fn smollm2() -> PathBuf {
    asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// A file under the repository's `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel)
}

/// Runs `afinar` with `args` and no input.
pub fn afinar(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_afinar")).args(args).output().expect("run afinar")
}

/// Runs `afinar` with `args`, writing `stdin` (if any) to its input.
pub fn afinar_with_input(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_afinar"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run afinar");
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

/// Output bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The run failed with a non-zero exit, did not panic, and its stderr mentions `needle`.
pub fn assert_clean_failure(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains(needle), "stderr should mention {needle:?}: {err}");
}
