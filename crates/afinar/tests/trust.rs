//! A run never accepts bad input silently: the recipe end to end (config → data → tiny model →
//! checkpoints) on a small random Llama-3-shaped Hugging Face folder with the real Llama-3
//! tokenizer. Dataset statistics are printed; a resume compares its config with the saved one
//! (a longer run continues, bit for bit); a diverged run stops without saving its broken state;
//! leftovers of killed saves and duplicate metrics rows are cleaned up; `max_seq_len` beyond
//! the model's context is refused.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use afinar::checkpoint::safetensors::SafetensorsCheckpoint;
use afinar::checkpoint::DType;
use afinar::config::RecipeConfig;
use afinar::engine::{CpuBackend, WeightFormat};
use afinar::models::{Llama, LlamaConfig};
use afinar::recipes::finetune::Summary;
use afinar::recipes::metrics::{Reporter, StepMetrics};
use afinar::recipes::save::{FullSave, ModelSource};
use afinar::recipes::state::SaveTarget;
use afinar::tokenizer::Tokenizer;
use common::{asset, Tmp};

/// Collects what a run prints.
#[derive(Default)]
struct Notes(Vec<String>);

impl Reporter for Notes {
    fn start(&mut self, _: usize, message: &str) {
        self.0.push(message.to_string());
    }
    fn step(&mut self, _: &StepMetrics) {}
    fn note(&mut self, message: &str) {
        self.0.push(message.to_string());
    }
    fn finish(&mut self, message: &str) {
        self.0.push(message.to_string());
    }
}

impl Notes {
    fn find(&self, needle: &str) -> &str {
        self.0.iter().find(|n| n.contains(needle)).unwrap_or_else(|| panic!("no `{needle}` in {:#?}", self.0))
    }
}

fn config() -> LlamaConfig {
    LlamaConfig {
        family: Default::default(),
        vocab_size: 128_256,
        dim: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        ffn_dim: 64,
        norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_scaling: None,
        max_seq_len: 256,
        tie_embeddings: true,
    }
}

/// A folder with a tiny random model (config.json, safetensors, the Llama-3 tokenizer) and a
/// dataset of `rows` instruct rows.
struct World {
    dir: Tmp,
    model: PathBuf,
    data: PathBuf,
}

fn world(name: &str, rows: &[(String, String)]) -> World {
    let dir = Tmp::new(&format!("trust-{name}"));
    let be = CpuBackend::new(Some(2));
    let tok = Tokenizer::from_file(&asset("llama3-tokenizer/tokenizer.json")).unwrap();
    let model = Llama::random(&be, config(), 11, WeightFormat::F32).unwrap();
    let source = ModelSource {
        path: "random".into(),
        hf_dir: None,
        config_json: config().to_hf_json(Some(128000), Some(128009), "float32"),
        dtype: DType::F32,
        tokenizer: Some(Arc::new(tok)),
        max_seq_len: Some(256),
    };
    let model_dir = dir.join("model");
    FullSave { source }.save(&be, &model, &model_dir).unwrap();
    let lines: Vec<String> = rows
        .iter()
        .map(|(i, o)| serde_json::json!({"instruction": i, "input": "", "output": o}).to_string())
        .collect();
    let data = dir.join("data.jsonl");
    std::fs::write(&data, lines.join("\n")).unwrap();
    World { model: model_dir, data, dir }
}

fn rows(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("Count to {i}."),
                format!("Sure! {}", (0..i % 7).map(|k| k.to_string()).collect::<Vec<_>>().join(" ")),
            )
        })
        .collect()
}

impl World {
    fn out(&self) -> PathBuf {
        self.dir.join("out")
    }

    /// The recipe config, with `overrides` applied.
    fn config(&self, overrides: &[&str]) -> RecipeConfig {
        let yaml = format!(
            "recipe: lora_finetune
output_dir: {out}
model: {{path: {model}, dtype: fp32}}
tokenizer: {{max_seq_len: 64}}
lora: {{rank: 2, alpha: 4, target_modules: [q_proj, v_proj]}}
dataset: {{kind: instruct, source: {data}}}
seed: 3
batch_size: 2
epochs: 1
max_steps_per_epoch: 2
optimizer: {{lr: 1e-2, weight_decay: 0.01}}
lr_scheduler: {{kind: constant, warmup_steps: 0}}
threads: 2
merge_adapter: false
",
            out = self.out().display(),
            model = self.model.display(),
            data = self.data.display()
        );
        let path = self.dir.join("recipe.yaml");
        std::fs::write(&path, yaml).unwrap();
        RecipeConfig::load(path.to_str().unwrap(), overrides).unwrap()
    }

    fn run(&self, overrides: &[&str]) -> (afinar::Result<Summary>, Notes) {
        let mut notes = Notes::default();
        let r = afinar::recipes::run(&self.config(overrides), &mut notes);
        (r, notes)
    }

    fn err(&self, overrides: &[&str]) -> String {
        match self.run(overrides).0 {
            Ok(_) => panic!("{overrides:?}: the run succeeded but should not"),
            Err(e) => e.to_string(),
        }
    }
}

fn adapter(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let ck = SafetensorsCheckpoint::open(dir.join("adapter_model.safetensors")).unwrap();
    let mut names = ck.names();
    names.sort();
    names.into_iter().map(|n| (n.clone(), ck.tensor(&n).unwrap().to_f32().unwrap())).collect()
}

fn metrics_steps(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect()
}

/// 8 rows, one longer than max_seq_len: the run says what it kept, truncated and dropped; the
/// `error` policy names the row.
#[test]
fn dataset_statistics_are_printed_and_long_rows_follow_the_policy() {
    let mut r = rows(8);
    r[5].0 = "word ".repeat(100);
    let w = world("stats", &r);
    let (res, notes) = w.run(&[]);
    res.unwrap();
    let line = notes.find("dataset ");
    assert!(
        line.contains("8 rows read, 7 examples kept")
            && line.contains("1 dropped: no token to train on (line 6, after truncation)"),
        "{line}"
    );
    assert!(line.contains("(long rows: truncate)"), "{line}");

    let err = w.err(&["dataset.long_rows=error"]);
    assert!(err.contains("data.jsonl: line 6: ") && err.contains("longer than max_seq_len 64"), "{err}");
    let err = w.err(&["dataset.long_rows=drop", "tokenizer.max_seq_len=8"]);
    assert!(err.contains("dropped: longer than max_seq_len 8"), "{err}");
}

/// Raising max_steps_per_epoch from 2 to 4 on resume trains steps 3 and 4, and the result is
/// bit-identical to a 4-step run from the start (constant schedule); metrics hold each step
/// once, rows after the resumed step (a killed run's) dropped; a finished run has nothing left.
#[test]
fn resume_with_a_longer_run_trains_the_extra_steps_exactly() {
    let w = world("longer", &rows(16));
    let (res, _) = w.run(&[]);
    assert_eq!(res.unwrap().steps, 2);
    // A killed run would have logged step 3 after its last save.
    let m = w.out().join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&m).unwrap();
    text.push_str("{\"step\": 3, \"loss\": 9.9}\n");
    std::fs::write(&m, text).unwrap();

    let (res, notes) = w.run(&["resume_from_checkpoint=true", "max_steps_per_epoch=4"]);
    let resumed = res.unwrap();
    assert_eq!((resumed.steps, resumed.losses.len()), (4, 2));
    let note = notes.find("length of training changed");
    assert!(note.contains("max_steps_per_epoch: 2 → 4") && note.contains("constant"), "{note}");
    notes.find("continuing epoch 0 from its step 2");
    notes.find("dropped 1 rows of steps after 2");
    assert_eq!(metrics_steps(&w.out()), [1, 2, 3, 4]);

    let straight = Tmp::new("trust-longer-straight");
    let out = straight.join("out");
    let (res, _) = w.run(&[&format!("output_dir={}", out.display()), "max_steps_per_epoch=4"]);
    let straight_run = res.unwrap();
    for (a, b) in straight_run.losses[2..].iter().zip(&resumed.losses) {
        assert_eq!(a.to_bits(), b.to_bits(), "loss {a} vs {b}");
    }
    assert_eq!(adapter(&out.join("epoch_0")), adapter(&w.out().join("epoch_0")));

    // Everything trained: resuming again has nothing to do, and says so.
    let err = w.err(&["resume_from_checkpoint=true", "max_steps_per_epoch=4"]);
    assert!(err.contains("nothing is left to train"), "{err}");
}

/// Other changes are refused, naming each key with its old and new value, unless accepted.
#[test]
fn resume_with_other_settings_is_refused_unless_accepted() {
    let w = world("changed", &rows(16));
    w.run(&["save_every_n_steps=1", "max_steps_per_epoch=4"]).0.unwrap();
    let err =
        w.err(&["resume_from_checkpoint=true", "max_steps_per_epoch=4", "optimizer.lr=0.02", "batch_size=4"]);
    assert!(err.contains("optimizer.lr: 0.01 → 0.02") && err.contains("batch_size: 2 → 4"), "{err}");
    assert!(err.contains("resume_accept_config_changes=true"), "{err}");
    // recipe_config.yaml still holds the config the checkpoint was trained with.
    let saved = std::fs::read_to_string(w.out().join("recipe_config.yaml")).unwrap();
    assert!(saved.contains("batch_size: 2"), "{saved}");
    // Free keys (logging) change nothing; the accepted change is printed.
    let (res, notes) = w.run(&[
        "resume_from_checkpoint=true",
        "max_steps_per_epoch=6",
        "optimizer.lr=0.02",
        "log_every_n_steps=2",
        "resume_accept_config_changes=true",
    ]);
    assert_eq!(res.unwrap().steps, 6);
    let note = notes.find("resume_accept_config_changes");
    assert!(note.contains("optimizer.lr: 0.01 → 0.02") && !note.contains("log_every_n_steps"), "{note}");

    // Data edited in place (same path): refused too.
    let text = std::fs::read_to_string(&w.data).unwrap();
    std::fs::write(&w.data, text.replacen("Count to 3.", "Count to three.", 1)).unwrap();
    let err = w.err(&["resume_from_checkpoint=true", "max_steps_per_epoch=8", "optimizer.lr=0.02"]);
    assert!(err.contains("the data the checkpoint") && err.contains("data.jsonl as now tokenized"), "{err}");
}

/// lr = 1e6 breaks the run: it stops with the step and the quantity, and the broken state is not
/// saved (the last good checkpoint stays).
#[test]
fn a_diverged_run_stops_without_saving_its_broken_state() {
    let w = world("diverged", &rows(40));
    let (res, notes) = w.run(&["optimizer.lr=1e6", "save_every_n_steps=1", "max_steps_per_epoch=10"]);
    let err = res.expect_err("the run should stop").to_string();
    eprintln!("{err}");
    let at: u64 = err
        .strip_prefix("training diverged at step ")
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(err.contains("stopped without saving this state") && err.contains("optimizer.lr"), "{err}");
    assert!(!w.out().join(format!("step_{at}")).exists(), "step_{at} was saved");
    if at > 1 {
        assert!(err.contains(&format!("step_{}", at - 1)), "{err}");
        notes.find(&format!("saved {}", w.out().join(format!("step_{}", at - 1)).display()));
    }
    // A normal run of the same length raises no alarm.
    w.run(&[
        "save_every_n_steps=1",
        "max_steps_per_epoch=10",
        &format!("output_dir={}", w.dir.join("ok").display()),
    ])
    .0
    .unwrap();
}

/// Leftovers of a killed save are removed at the next start, and said so.
#[test]
fn leftovers_of_a_killed_save_are_removed_at_the_next_start() {
    let w = world("leftovers", &rows(8));
    let stale = w.out().join("step_7.tmp-4999999-3");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("adapter_model.safetensors"), vec![0u8; 2_000_000]).unwrap();
    let (res, notes) = w.run(&[]);
    res.unwrap();
    assert!(!stale.exists());
    let note = notes.find("left by an interrupted save");
    assert!(note.contains("step_7.tmp-4999999-3 (2.0 MB)"), "{note}");
}

/// max_seq_len beyond the model's context (256 here) is an error naming both numbers.
#[test]
fn max_seq_len_beyond_the_context_is_refused() {
    let w = world("context", &rows(8));
    let err = w.err(&["tokenizer.max_seq_len=1000000"]);
    assert!(err.contains("tokenizer.max_seq_len is 1000000, beyond the 256-token context"), "{err}");
}
