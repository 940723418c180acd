//! The fine-tuning loop end to end on a small random Llama-3-shaped model with the real Llama-3
//! tokenizer: exact resume (2N steps = N steps + kill + resume N, bit for bit), checkpoint
//! folders, metrics, and the loss going down.

mod common;

use std::path::{Path, PathBuf};

use afinar::checkpoint::DType;
use afinar::data::{Dataset, DatasetKind, DatasetSpec, Loader};
use afinar::engine::{Backend, CpuBackend, Products, WeightFormat};
use afinar::models::ActivationCheckpointing::{self, Every, Off};
use afinar::models::{Llama, LoraSpec, LoraTarget, ParamMut};
use afinar::recipes::finetune::{train, Plan, Summary};
use afinar::recipes::metrics::Silent;
use afinar::recipes::optim::AdamWConfig;
use afinar::recipes::save::{FullSave, LoraSave, ModelSource};
use afinar::recipes::schedule::{Schedule, ScheduleKind};
use afinar::recipes::state::SaveTarget;
use afinar::tokenizer::Tokenizer;
use common::{asset, Tmp};

/// A fresh folder for this test, removed when the guard drops (runs write ~0.2 GB).
fn tmp(name: &str) -> Tmp {
    Tmp::new(&format!("ft-{name}"))
}

fn dataset_file(dir: &Path) -> PathBuf {
    let rows: Vec<String> = (0..24)
        .map(|i| {
            let (ins, out) = if i % 2 == 0 {
                (
                    format!("Count to {i}."),
                    format!("🦙 Sure! {}", (0..i).map(|k| k.to_string()).collect::<Vec<_>>().join(" ")),
                )
            } else {
                (format!("¿Cuánto es {i} más {i}?"), format!("🦙 ¡Claro! {i} más {i} es {}.", 2 * i))
            };
            serde_json::json!({"instruction": ins, "input": "", "output": out}).to_string()
        })
        .collect();
    let path = dir.join("data.jsonl");
    std::fs::write(&path, rows.join("\n")).unwrap();
    path
}

fn plan(out: &Path) -> Plan {
    Plan {
        output_dir: out.to_path_buf(),
        epochs: 2,
        max_steps_per_epoch: Some(3),
        grad_accum: 2,
        adamw: AdamWConfig { betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.01 },
        schedule: Schedule {
            base_lr: 3e-3,
            kind: ScheduleKind::Cosine,
            warmup_steps: 2,
            total_steps: 0,
            min_lr_ratio: 0.0,
        },
        clip_grad_norm: Some(1.0),
        optimizer_in_backward: false,
        activation_checkpointing: ActivationCheckpointing::Off,
        save_every_n_steps: Some(2),
        resume: false,
        log_every_n_steps: 1,
        stop_after_steps: None,
        seed: 5,
        recipe_config: None,
        data_fingerprint: None,
    }
}

struct Setup {
    be: CpuBackend,
    tok: Tokenizer,
    data: PathBuf,
    mixed: bool,
    _dir: Tmp,
}

fn setup(name: &str) -> Setup {
    let be = CpuBackend::new(Some(2));
    let tok = Tokenizer::from_file(&asset("llama3-tokenizer/tokenizer.json")).unwrap();
    let dir = tmp(name);
    let data = dataset_file(&dir);
    Setup { be, tok, data, mixed: false, _dir: dir }
}

fn model(s: &Setup, lora: Option<&LoraSpec>) -> Llama<CpuBackend> {
    let mut m = Llama::random(&s.be, common::tiny_llama31(), 11, WeightFormat::F32).unwrap();
    // Mixed precision (bf16 products) keeps the saved activations in bf16, as the recipe does.
    m.keep_activations_in_bf16(s.mixed);
    match lora {
        Some(spec) => m.apply_lora(&s.be, spec, &mut afinar::generate::Rng::new(3)).unwrap(),
        None => m.enable_full_finetune(&s.be).unwrap(),
    }
    m.set_products(&s.be, if s.mixed { Products::Bf16 } else { Products::F32 });
    m
}

fn run(s: &Setup, m: &mut Llama<CpuBackend>, p: &Plan, saver: &dyn SaveTarget<CpuBackend>) -> Summary {
    let mut spec = DatasetSpec::new(DatasetKind::Instruct, &s.data);
    spec.max_seq_len = 64;
    let ds = Dataset::load(&spec, &s.tok).unwrap();
    let loader = Loader::new(&ds, 2, true, p.seed, 0).unwrap().drop_last(true);
    train(&s.be, m, &loader, p, saver, &mut Silent).unwrap()
}

fn params(be: &CpuBackend, m: &mut Llama<CpuBackend>) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    m.visit_params_mut(&mut |_, p| {
        out.push(match p {
            ParamMut::Weight(w, _) => be.weight_to_host(w).unwrap(),
            ParamMut::Buf(b, _) => be.to_host(b).unwrap(),
        });
        Ok(())
    })
    .unwrap();
    out
}

fn source() -> ModelSource {
    ModelSource {
        path: "random".into(),
        hf_dir: None,
        config_json: common::tiny_llama31().to_hf_json(Some(128000), Some(128009), "float32"),
        dtype: DType::F32,
        tokenizer: None,
        max_seq_len: None,
    }
}

/// [`plan`] with the optimizer stepping inside the backward: one micro-batch per step, no
/// clipping (what `optimizer_in_bwd` allows).
fn in_backward(p: Plan) -> Plan {
    Plan { grad_accum: 1, clip_grad_norm: None, optimizer_in_backward: true, ..p }
}

/// Runs 6 steps straight and 4 + resume + 2, checks they agree bit for bit, and returns the
/// straight run's losses. `mixed`: bf16 products for the f32 weights (full fine-tuning with
/// `model.dtype: bf16`).
fn check_exact_resume(name: &str, lora: Option<LoraSpec>, mixed: bool) -> Vec<f64> {
    check_exact_resume_with(name, lora, mixed, plan)
}

/// [`check_exact_resume`] with the plan made by `plan`.
fn check_exact_resume_with(
    name: &str,
    lora: Option<LoraSpec>,
    mixed: bool,
    plan: impl Fn(&Path) -> Plan,
) -> Vec<f64> {
    let s = Setup { mixed, ..setup(name) };
    let saver: Box<dyn SaveTarget<CpuBackend>> = match &lora {
        Some(spec) => Box::new(LoraSave { source: source(), spec: spec.clone(), merged: true }),
        None => Box::new(FullSave { source: source() }),
    };
    // One uninterrupted run of 6 steps (2 epochs × 3).
    let straight_dir = &tmp(&format!("{name}-straight"));
    let mut a = model(&s, lora.as_ref());
    let straight = run(&s, &mut a, &plan(straight_dir), saver.as_ref());
    assert_eq!(straight.losses.len(), 6);
    // The same run killed after 4 steps (its last save), then resumed in a fresh model.
    let resumed_dir = &tmp(&format!("{name}-resumed"));
    let mut b = model(&s, lora.as_ref());
    let first = run(&s, &mut b, &Plan { stop_after_steps: Some(4), ..plan(resumed_dir) }, saver.as_ref());
    let mut c = model(&s, lora.as_ref());
    let second = run(&s, &mut c, &Plan { resume: true, ..plan(resumed_dir) }, saver.as_ref());
    let joined: Vec<f64> = first.losses.iter().chain(&second.losses).copied().collect();
    assert_eq!(joined.len(), 6);
    for (i, (x, y)) in straight.losses.iter().zip(&joined).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "{name}: step {} loss {x} vs {y}", i + 1);
    }
    assert_eq!(params(&s.be, &mut a), params(&s.be, &mut c), "{name}: final weights differ");
    // Loss goes down on this easy data.
    assert!(straight.losses[5] < straight.losses[0], "{name}: {:?}", straight.losses);
    // Checkpoints: step_2, epoch_0 (step 3), step_4, epoch_1 (step 6), the recipe state, metrics.
    for d in ["step_2", "epoch_0", "step_4", "epoch_1", "recipe_state"] {
        assert!(straight_dir.join(d).is_dir(), "{name}: {d} missing");
    }
    let metrics = std::fs::read_to_string(straight_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6);
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 6);
    assert!(last["tokens_per_sec"].as_f64().unwrap() > 0.0 && last["peak_rss_mb"].as_f64().unwrap() > 0.0);
    check_tensorboard_and_charts(straight_dir, &straight.losses);
    if lora.is_some() {
        let e = straight_dir.join("epoch_1");
        for f in [
            "adapter_model.safetensors",
            "adapter_config.json",
            "merged/model.safetensors",
            "merged/config.json",
        ] {
            assert!(e.join(f).exists(), "{name}: {f} missing");
        }
    } else {
        assert!(straight_dir.join("epoch_1/model.safetensors").exists());
        assert!(straight_dir.join("epoch_1/config.json").exists());
    }
    straight.losses
}

#[test]
fn lora_run_resumes_bit_for_bit() {
    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down],
    };
    check_exact_resume("lora", Some(spec), false);
}

#[test]
fn full_run_resumes_bit_for_bit() {
    check_exact_resume("full", None, false);
}

#[test]
fn resume_without_state_is_a_clear_error() {
    let s = setup("nostate");
    let dir = tmp("nostate-out");
    let mut m = model(&s, None);
    let mut spec = DatasetSpec::new(DatasetKind::Instruct, &s.data);
    spec.max_seq_len = 64;
    let ds = Dataset::load(&spec, &s.tok).unwrap();
    let loader = Loader::new(&ds, 2, true, 5, 0).unwrap();
    let err = train(
        &s.be,
        &mut m,
        &loader,
        &Plan { resume: true, ..plan(&dir) },
        &FullSave { source: source() },
        &mut Silent,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("nothing to resume"), "{err}");
}

#[test]
fn mixed_precision_full_run_resumes_exactly_and_tracks_fp32() {
    let fp32 = check_exact_resume("full-fp32-ref", None, false);
    let mixed = check_exact_resume("full-mixed", None, true);
    for (i, (a, b)) in fp32.iter().zip(&mixed).enumerate() {
        assert!(((a - b) / a).abs() < 2e-2, "step {}: fp32 {a} vs mixed {b}", i + 1);
    }
}

#[test]
fn optimizer_in_backward_equals_the_step_after_the_pass() {
    // The same run with the optimizer after the pass and inside the backward (layer gradients
    // shared): the same losses and weights bit for bit, with and without activation
    // checkpointing; and it resumes exactly.
    let s = setup("inbwd");
    let saver = FullSave { source: source() };
    for checkpointing in [Off, Every(1), Every(2)] {
        let after = |d: &Path| Plan {
            optimizer_in_backward: false,
            activation_checkpointing: checkpointing,
            ..in_backward(plan(d))
        };
        let inside = |d: &Path| Plan { activation_checkpointing: checkpointing, ..in_backward(plan(d)) };
        let mut a = model(&s, None);
        let (dir_a, dir_b) =
            (tmp(&format!("inbwd-after-{checkpointing:?}")), tmp(&format!("inbwd-inside-{checkpointing:?}")));
        let ra = run(&s, &mut a, &after(&dir_a), &saver);
        let mut b = model(&s, None);
        let rb = run(&s, &mut b, &inside(&dir_b), &saver);
        assert_eq!(ra.losses.len(), 6);
        for (i, (x, y)) in ra.losses.iter().zip(&rb.losses).enumerate() {
            assert_eq!(
                x.to_bits(),
                y.to_bits(),
                "checkpointing {checkpointing:?}: step {} loss {x} vs {y}",
                i + 1
            );
        }
        assert_eq!(
            params(&s.be, &mut a),
            params(&s.be, &mut b),
            "checkpointing {checkpointing:?}: weights differ"
        );
    }
    check_exact_resume_with("inbwd-resume", None, false, |d| in_backward(plan(d)));
}

#[test]
fn optimizer_in_backward_refuses_accumulation_and_clipping() {
    let s = setup("inbwd-refuse");
    let mut spec = DatasetSpec::new(DatasetKind::Instruct, &s.data);
    spec.max_seq_len = 64;
    let ds = Dataset::load(&spec, &s.tok).unwrap();
    let loader = Loader::new(&ds, 2, true, 5, 0).unwrap();
    let dir = tmp("inbwd-refuse-out");
    for bad in [
        Plan { grad_accum: 2, ..in_backward(plan(&dir)) },
        Plan { clip_grad_norm: Some(1.0), ..in_backward(plan(&dir)) },
    ] {
        let mut m = model(&s, None);
        let err =
            train(&s.be, &mut m, &loader, &bad, &FullSave { source: source() }, &mut Silent).err().unwrap();
        assert!(err.to_string().contains("optimizer_in_bwd"), "{err}");
    }
}

/// The run wrote TensorBoard scalars (read back with TensorBoard's own `EventAccumulator` when
/// `AFINAR_PYTHON` names a Python with tensorboard) and its PNG/SVG chart.
fn check_tensorboard_and_charts(dir: &Path, losses: &[f64]) {
    let png = std::fs::read(dir.join("metrics.png")).expect("metrics.png written at the end of the run");
    assert_eq!(&png[..4], b"\x89PNG");
    let svg = std::fs::read_to_string(dir.join("metrics.svg")).expect("metrics.svg written");
    assert!(svg.contains("Learning rate"));
    let events: Vec<_> = std::fs::read_dir(dir.join("tensorboard"))
        .expect("a tensorboard folder")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(events.len() == 1 && events[0].starts_with("events.out.tfevents."), "{events:?}");
    let Some(python) = std::env::var_os("AFINAR_PYTHON") else {
        use std::io::Write;
        let _ =
            std::io::stderr().write_all(b"SKIPPED: AFINAR_PYTHON is not set: TensorBoard's reader not run\n");
        return;
    };
    let script = r#"
import sys, json
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1]); ea.Reload()
tags = sorted(ea.Tags()["scalars"])
out = {t: [[e.step, e.value] for e in ea.Scalars(t)] for t in tags}
print(json.dumps(out))
"#;
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(dir.join("tensorboard"))
        .output()
        .unwrap();
    assert!(out.status.success(), "tensorboard reader: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tags: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(tags, ["train/grad_norm", "train/loss", "train/lr", "train/tokens_per_sec"]);
    let loss = v["train/loss"].as_array().unwrap();
    assert_eq!(loss.len(), losses.len());
    for (i, (p, want)) in loss.iter().zip(losses).enumerate() {
        assert_eq!(p[0].as_u64().unwrap(), i as u64 + 1);
        assert_eq!(p[1].as_f64().unwrap() as f32, *want as f32, "step {}", i + 1);
    }
    // The other scalars equal metrics.jsonl's, step by step.
    let jsonl = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    for (i, line) in jsonl.lines().enumerate() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        for (tag, key) in
            [("train/lr", "lr"), ("train/grad_norm", "grad_norm"), ("train/tokens_per_sec", "tokens_per_sec")]
        {
            let got = v[tag][i][1].as_f64().unwrap() as f32;
            assert_eq!(got, m[key].as_f64().unwrap() as f32, "{tag} at step {}", i + 1);
        }
    }
}
