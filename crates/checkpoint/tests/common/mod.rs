//! Shared helpers of the integration tests: fixture paths, JSON, temporary files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// `tests/fixtures/checkpoint/` at the workspace root (written by
/// `scripts/fixtures/gguf_quants.py`).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/checkpoint")
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

pub fn read_json(name: &str) -> Value {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fixtures/gguf_quants.py)", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn as_usize(v: &Value) -> usize {
    v.as_u64().expect("expected a non-negative integer in the fixture JSON") as usize
}

pub fn usize_vec(v: &Value) -> Vec<usize> {
    v.as_array().expect("expected an array").iter().map(as_usize).collect()
}

/// f32 values from a fixture's list of IEEE bit patterns.
pub fn f32_from_bits(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("expected an array of f32 bit patterns")
        .iter()
        .map(|b| f32::from_bits(b.as_u64().expect("bit pattern") as u32))
        .collect()
}

/// Asserts bit-identical f32 slices (NaN == NaN only with the same bits too).
pub fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: element {i}: got {g:e} ({:#010x}), want {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

/// A fresh, empty temporary directory (removed when dropped).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "afinar-checkpoint-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `bytes` to `name` inside the directory and returns its path.
    ///
    /// Do not rewrite one name in a loop: on ext4, truncating and rewriting a file flushes it to
    /// disk on close, which makes loops slow on a busy machine; use [`TempDir::scratch`].
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write temp file");
        p
    }

    /// Writes `bytes` to a new file called `name` with a unique suffix, removed when the
    /// returned guard is dropped.
    pub fn scratch(&self, name: &str, bytes: &[u8]) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = self.0.join(format!("{}-{name}", N.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&p, bytes).expect("write temp file");
        Scratch(p)
    }
}

/// A temporary file, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real SmolLM2 GGUF asset (`$AFINAR_CACHE/assets` or `~/.cache/afinar/assets`); fails the
/// test when it is missing.
pub fn smollm2_asset() -> PathBuf {
    let base = match std::env::var_os("AFINAR_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is not set")).join(".cache/afinar"),
    };
    let p = base.join("assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/fetch-assets.sh", p.display());
    p
}

/// Runs `scripts/verify/SCRIPT` with `$AFINAR_PYTHON` and returns its JSON, or `None` (with a
/// `SKIPPED` line, see [`reference_python`]) when the variable is not set.
pub fn run_python(script: &str, args: &[&Path]) -> Option<Value> {
    let python = reference_python(&format!("the python check scripts/verify/{script}"))?;
    let script_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/verify").join(script);
    let out = std::process::Command::new(&python).arg(&script_path).args(args).output().expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}")))
}

#[path = "../../../../tests/support/skip.rs"]
mod skip;
#[allow(unused_imports)] // not every test binary that includes `common` uses both
pub use skip::{reference_python, skipped};
