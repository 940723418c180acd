//! The main job end to end through the binary: `afinar run lora_finetune` with the shipped
//! `smollm2_135m_lora` config on the real SmolLM2-135M-Instruct (a few short steps), killed with
//! SIGKILL in the middle of a step after its first checkpoint, resumed with
//! `resume_from_checkpoint=true`, and compared with an uninterrupted run bit for bit: every file
//! of every checkpoint (adapter, merged model, tokenizer, config) and of `recipe_state/`, and
//! each step's numbers in `metrics.jsonl`.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::smollm2;
use serde_json::Value;

/// Steps of the run; a checkpoint every `SAVE_EVERY` steps, and the process is killed during
/// the step after `KILL_AFTER`'s metrics row appears (after the `step_SAVE_EVERY` checkpoint).
const STEPS: usize = 4;
const SAVE_EVERY: usize = 2;
const KILL_AFTER: usize = 3;

/// A scratch folder removed when dropped (also when the test fails).
struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `afinar run` of the main job's config, made small, writing to `out`; stderr to `log`.
fn command(out: &Path, log: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_afinar"));
    c.current_dir(repo())
        .args(["run", "lora_finetune", "--config", "smollm2_135m_lora"])
        .arg(format!("model.path={}", smollm2().display()))
        .arg(format!("dataset.source={}", repo().join("data/bilingual_instruct.jsonl").display()))
        .arg(format!("output_dir={}", out.display()))
        .args(["tokenizer.max_seq_len=48", "batch_size=1", "lr_scheduler.warmup_steps=1"])
        .arg(format!("max_steps_per_epoch={STEPS}"))
        .arg(format!("save_every_n_steps={SAVE_EVERY}"))
        .arg(format!("resume_from_checkpoint={resume}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    c
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs to the end and checks it succeeded.
fn run_to_end(out: &Path, log: &Path, resume: bool) {
    let status = command(out, log, resume).status().expect("run afinar");
    assert!(status.success(), "afinar run (resume {resume}) failed ({status}):\n{}", read(log));
}

/// The rows of `metrics.jsonl` by step (a later row for the same step replaces an earlier one),
/// without the fields that measure time or memory.
fn metrics(path: &Path) -> BTreeMap<u64, Value> {
    let mut rows = BTreeMap::new();
    for (i, line) in read(path).lines().enumerate() {
        let mut v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1));
        let obj = v.as_object_mut().unwrap();
        for volatile in ["elapsed_secs", "tokens_per_sec", "peak_rss_mb", "peak_device_mb"] {
            obj.remove(volatile);
        }
        let step = obj["step"].as_u64().unwrap();
        rows.insert(step, v);
    }
    rows
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Whether two files hold the same bytes (streamed: merged models are hundreds of MB).
/// The recipe states `a` and `b` (safetensors) hold the same tensors bit for bit and the same
/// metadata, but for the saved config's `output_dir` and `resume_from_checkpoint`, which name
/// where the run was written and how it was started.
fn same_state(a: &Path, b: &Path) {
    let split = |p: &Path| {
        let bytes = std::fs::read(p).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        (header, bytes[8 + n..].to_vec())
    };
    let ((mut ha, da), (mut hb, db)) = (split(a), split(b));
    assert!(da == db, "recipe_state/state.safetensors: the tensors differ after kill + resume");
    let placement =
        |line: &&str| !line.starts_with("output_dir:") && !line.starts_with("resume_from_checkpoint:");
    let mut configs = Vec::new();
    for h in [&mut ha, &mut hb] {
        let meta = h["__metadata__"].as_object_mut().expect("the recipe state has metadata");
        let yaml = meta.remove("recipe_config").expect("the recipe state holds the run's config");
        let yaml = yaml.as_str().unwrap().to_string();
        configs.push(yaml.lines().filter(placement).map(str::to_string).collect::<Vec<_>>());
    }
    assert_eq!(configs[0], configs[1], "recipe_state: the saved configs differ beyond output_dir and resume");
    assert!(!configs[0].is_empty());
    assert_eq!(ha, hb, "recipe_state/state.safetensors: the header differs after kill + resume");
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    if std::fs::metadata(a).unwrap().len() != std::fs::metadata(b).unwrap().len() {
        return false;
    }
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

#[test]
fn main_job_killed_and_resumed_matches_the_uninterrupted_run_bit_for_bit() {
    let t0 = Instant::now();
    let tmp = Tmp(std::env::temp_dir().join(format!("afinar-main-job-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&tmp.0);
    std::fs::create_dir_all(&tmp.0).unwrap();
    let (straight, killed) = (tmp.0.join("straight"), tmp.0.join("killed"));

    run_to_end(&straight, &tmp.0.join("straight.log"), false);

    // The same run, killed (SIGKILL) once step KILL_AFTER's row is written: during the next step,
    // after the step_SAVE_EVERY checkpoint and its recipe state.
    let log = tmp.0.join("killed.log");
    let mut child = command(&killed, &log, false).spawn().expect("run afinar");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let logged = std::fs::read_to_string(killed.join("metrics.jsonl")).unwrap_or_default();
        if logged.lines().any(|l| l.contains(&format!("\"step\":{KILL_AFTER},"))) {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("afinar exited ({status}) before step {KILL_AFTER}:\n{}", read(&log));
        }
        assert!(Instant::now() < deadline, "no step {KILL_AFTER} after 10 minutes:\n{}", read(&log));
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "afinar was not killed mid-run ({status}):\n{}", read(&log));
    assert!(killed.join(format!("step_{SAVE_EVERY}")).is_dir());
    assert!(!killed.join("epoch_0").exists(), "the killed run got to its end:\n{}", read(&log));

    let resume_log = tmp.0.join("resumed.log");
    run_to_end(&killed, &resume_log, true);
    let resumed = read(&resume_log);

    // Checkpoints and recipe state: the same files, byte for byte. recipe_config.yaml names the
    // output folder and whether the run resumed; metrics.jsonl times and memory: compared below.
    // The logs for people (TensorBoard event files, named by process and time; the charts, with
    // the throughput) carry wall-clock figures: they must be there, not equal.
    let is_log = |f: &PathBuf| {
        f.starts_with("tensorboard") || f.starts_with("metrics.png") || f.starts_with("metrics.svg")
    };
    for dir in [&straight, &killed] {
        let logs = files(dir).into_iter().filter(is_log).collect::<Vec<_>>();
        assert!(logs.len() >= 3, "{}: no TensorBoard events or charts: {logs:?}", dir.display());
    }
    let checkpoint_files = |dir: &Path| files(dir).into_iter().filter(|f| !is_log(f)).collect::<Vec<_>>();
    let (want, got) = (checkpoint_files(&straight), checkpoint_files(&killed));
    assert_eq!(got, want, "the resumed run's files differ from the uninterrupted run's:\n{resumed}");
    assert!(want.iter().any(|f| f.ends_with("epoch_0/adapter_model.safetensors")), "{want:?}");
    assert!(want.iter().any(|f| f.ends_with("epoch_0/merged/model.safetensors")), "{want:?}");
    assert!(want.iter().any(|f| f.starts_with("recipe_state")), "{want:?}");
    let mut compared = 0;
    for f in &want {
        if f == Path::new("metrics.jsonl") || f == Path::new("recipe_config.yaml") {
            continue;
        }
        if f == Path::new("recipe_state/state.safetensors") {
            same_state(&straight.join(f), &killed.join(f));
            compared += 1;
            continue;
        }
        assert!(
            same_bytes(&straight.join(f), &killed.join(f)),
            "{} differs after kill + resume",
            f.display()
        );
        compared += 1;
    }

    // Metrics: every step's loss, gradient norm, learning rate and tokens, bit for bit.
    let (m_want, m_got) = (metrics(&straight.join("metrics.jsonl")), metrics(&killed.join("metrics.jsonl")));
    assert_eq!(m_want.keys().copied().collect::<Vec<_>>(), (1..=STEPS as u64).collect::<Vec<_>>());
    for (step, row) in &m_want {
        let other = m_got.get(step).unwrap_or_else(|| panic!("step {step} missing after the resume"));
        for key in ["loss", "grad_norm", "lr"] {
            let (a, b) = (row[key].as_f64().unwrap(), other[key].as_f64().unwrap());
            assert_eq!(a.to_bits(), b.to_bits(), "step {step}: {key} {a} uninterrupted, {b} resumed");
        }
        assert_eq!(row, other, "step {step}: metrics differ");
    }
    assert_eq!(m_got.len(), m_want.len());
    eprintln!("{compared} files and {STEPS} steps identical; {:.1}s", t0.elapsed().as_secs_f64());
}
