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

#[path = "../../../../tests/support/skip.rs"]
mod skip;
#[allow(unused_imports)] // not every test binary that includes `common` uses both
pub use skip::{reference_python, skipped};

/// Saves a random model of `config` (f32, seed `seed`) as a Hugging Face folder `dir` with the
/// tokenizer at `tokenizer` (a `tokenizer.json`): the tiny models of the recipe tests.
pub fn save_random_model(
    be: &afinar::engine::CpuBackend,
    config: afinar::models::LlamaConfig,
    seed: u64,
    tokenizer: &Path,
    dir: &Path,
) {
    let tok = afinar::tokenizer::Tokenizer::from_file(tokenizer)
        .unwrap_or_else(|e| panic!("{}: {e}", tokenizer.display()));
    let model =
        afinar::models::Llama::random(be, config.clone(), seed, afinar::engine::WeightFormat::F32).unwrap();
    let source = afinar::recipes::save::ModelSource {
        path: "random".into(),
        hf_dir: None,
        config_json: config.to_hf_json(tok.bos_id(), tok.eos_id(), "float32"),
        dtype: afinar::checkpoint::DType::F32,
        tokenizer: Some(std::sync::Arc::new(tok)),
        max_seq_len: Some(config.max_seq_len),
    };
    use afinar::recipes::state::SaveTarget;
    afinar::recipes::save::FullSave { source }.save(be, &model, dir).unwrap();
}

/// The rows of `metrics.jsonl` in a run's output folder.
pub fn metrics_rows(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap_or_else(|e| panic!("{}: {e}", out.join("metrics.jsonl").display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `dir/prefs.jsonl`: `pairs` bilingual preference rows (prompt, chosen, rejected) of the
/// recipe tests.
pub fn preference_file(dir: &Path, pairs: usize) -> PathBuf {
    let rows: Vec<String> = (0..pairs)
        .map(|i| {
            let (p, c, r) = if i % 2 == 0 {
                (
                    format!("What is {i} plus {i}?"),
                    format!("{}.", 2 * i),
                    format!("{i} más {i} son {}.", 2 * i),
                )
            } else {
                (
                    format!("¿Cuánto es {i} más 1?"),
                    format!("{}.", i + 1),
                    format!("{i} plus one is {}, of course.", i + 1),
                )
            };
            serde_json::json!({"prompt": p, "chosen": c, "rejected": r}).to_string()
        })
        .collect();
    let path = dir.join("prefs.jsonl");
    std::fs::write(&path, rows.join("\n")).unwrap();
    path
}

/// `dir/data.jsonl`: `rows` bilingual instruct rows (instruction, input, output) of the recipe
/// tests.
pub fn instruct_file(dir: &Path, rows: usize) -> PathBuf {
    let path = dir.join("data.jsonl");
    write_instruct_rows(&path, 0..rows);
    path
}

/// Writes the instruct rows numbered `rows` of [`instruct_file`] to `path`.
pub fn write_instruct_rows(path: &Path, rows: std::ops::Range<usize>) {
    let rows: Vec<String> = rows
        .map(|i| {
            let (q, a) = if i % 2 == 0 {
                (
                    format!("Count to {i}."),
                    format!("Sure! {}", (0..i).map(|k| k.to_string()).collect::<Vec<_>>().join(" ")),
                )
            } else {
                (format!("¿Cuánto es {i} más {i}?"), format!("¡Claro! {i} más {i} es {}.", 2 * i))
            };
            serde_json::json!({"instruction": q, "input": "", "output": a}).to_string()
        })
        .collect();
    std::fs::write(path, rows.join("\n")).unwrap();
}

/// The tiny Llama-3.1 shape the recipe tests train (the real Llama-3 vocabulary, 2 layers of
/// width 64, grouped-query attention, Llama-3.1 RoPE scaling, tied embeddings).
pub fn tiny_llama31() -> afinar::models::LlamaConfig {
    afinar::models::LlamaConfig {
        family: Default::default(),
        vocab_size: 128_256,
        dim: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        ffn_dim: 128,
        norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_scaling: Some(afinar::engine::RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        }),
        max_seq_len: 256,
        tie_embeddings: true,
    }
}

/// Every safetensors file under `dir` (relative path → bytes, sorted), skipping the TensorBoard
/// and recipe-state folders: what two runs that should be bit-identical are compared by.
pub fn safetensors_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("tensorboard") && !p.ends_with("recipe_state") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "safetensors") {
                out.push((p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Writes `yaml` to `dir/name` and loads it as a recipe config (panics with the error).
pub fn recipe_config(yaml: &str, dir: &Path, name: &str) -> afinar::config::RecipeConfig {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    afinar::config::RecipeConfig::load(path.to_str().unwrap(), &[] as &[&str])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The number `name` of a `metrics.jsonl` row.
pub fn metric(row: &serde_json::Value, name: &str) -> f64 {
    row[name].as_f64().unwrap_or_else(|| panic!("metrics row has no {name}: {row}"))
}
