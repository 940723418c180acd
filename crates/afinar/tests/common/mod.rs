//! Helpers shared by the integration tests: fixture paths, safetensors readers, comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `tests/fixtures/<rel>` at the repository root.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel)
}

/// A real asset fetched by `scripts/fetch-assets.sh`; fails loudly when it is missing.
pub fn asset(rel: &str) -> PathBuf {
    let base = std::env::var_os("AFINAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/afinar"));
    let p = base.join("assets").join(rel);
    assert!(p.exists(), "{} is missing: run scripts/fetch-assets.sh", p.display());
    p
}

/// Reads every tensor of a fixture safetensors file as f64 values with its shape.
pub struct Expected {
    bytes: Vec<u8>,
}

impl Expected {
    pub fn open(path: &Path) -> Self {
        Self { bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) }
    }

    pub fn has(&self, name: &str) -> bool {
        safetensors::SafeTensors::deserialize(&self.bytes).unwrap().tensor(name).is_ok()
    }

    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture tensor {name} missing"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        (t.shape().to_vec(), v)
    }

    pub fn ids(&self, name: &str) -> (Vec<usize>, Vec<u32>) {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture tensor {name} missing"));
        let v = match t.dtype() {
            safetensors::Dtype::I64 => {
                t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
            }
            safetensors::Dtype::I32 => {
                t.data().chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32).collect()
            }
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        (t.shape().to_vec(), v)
    }
}

/// Max |a − b| divided by max |b|: the error measure of the acceptance criteria.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
    diff / scale.max(1e-30)
}

/// Applies LoRA (rank 4, alpha 8, no dropout) on `targets` and sets every adapter matrix to the
/// fixture's PEFT initial value (`init.base_model.model.<name>`), as the PEFT reference scripts
/// build their models.
pub fn apply_peft_lora(
    be: &afinar::engine::CpuBackend,
    m: &mut afinar::models::Llama<afinar::engine::CpuBackend>,
    targets: Vec<afinar::models::LoraTarget>,
    exp: &Expected,
) {
    use afinar::engine::Backend;
    use afinar::models::{LoraSpec, ParamMut};
    let spec = LoraSpec { rank: 4, alpha: 8.0, dropout: 0.0, targets };
    m.apply_lora(be, &spec, &mut afinar::generate::Rng::new(0)).unwrap();
    m.visit_params_mut(&mut |name, p| {
        if let ParamMut::Buf(b, _) = p {
            *b = be.from_host(&exp.f32(&format!("init.base_model.model.{name}")).1).unwrap();
        }
        Ok(())
    })
    .unwrap();
}

/// A fresh temporary folder (`afinar-TAG-PID` under the system's), removed when dropped.
pub struct Tmp(pub PathBuf);

impl Tmp {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("afinar-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl std::ops::Deref for Tmp {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Tmp {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `spec` as `afinar.json` in `dir` and runs `scripts/verify/SCRIPT` on it with `python`;
/// fails the test (naming `peer`) unless the script succeeds. Prints its output.
pub fn run_verify_script(
    python: &std::ffi::OsStr,
    script: &str,
    spec: &serde_json::Value,
    dir: &Path,
    peer: &str,
) {
    let spec_path = dir.join("afinar.json");
    std::fs::write(&spec_path, serde_json::to_string_pretty(spec).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/verify").join(script);
    let res = std::process::Command::new(python).arg(script).arg(&spec_path).output().unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    eprintln!(
        "{stdout}{}",
        String::from_utf8_lossy(&res.stderr).lines().rev().take(8).collect::<Vec<_>>().join("\n")
    );
    assert!(res.status.success(), "{peer} disagrees with afinar:\n{stdout}");
}

/// Says that the running test did not run (all or part of it) and why, as
/// `SKIPPED: <test>: <why>` on the process's real stderr: libtest captures only the
/// `print!`/`eprint!` macros, so this line shows in `cargo test`'s log even when the test passes.
pub fn skipped(why: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = std::io::stderr().write_all(format!("SKIPPED: {test}: {why}\n").as_bytes());
}

/// The reference python (`$AFINAR_PYTHON`, the venv `scripts/reference-venv.sh` makes), or `None`
/// after a `SKIPPED` line naming `check` when it is not set (`scripts/test.sh` sets it unless
/// `AFINAR_SKIP_PYTHON=1`). A set but missing python fails the test.
pub fn reference_python(check: &str) -> Option<std::ffi::OsString> {
    match std::env::var_os("AFINAR_PYTHON").filter(|p| !p.is_empty()) {
        Some(p) => {
            assert!(
                std::path::Path::new(&p).is_file(),
                "AFINAR_PYTHON={} is not a file (create the venv with scripts/reference-venv.sh)",
                std::path::Path::new(&p).display()
            );
            Some(p)
        }
        None => {
            skipped(&format!(
                "{check} not run: AFINAR_PYTHON is not set (the reference venv's python, from \
                 scripts/reference-venv.sh; ./scripts/test.sh sets it)"
            ));
            None
        }
    }
}
