//! Optimizer-side behaviour against PyTorch/transformers: gradient accumulation normalised by
//! the step's label tokens, two AdamW steps (with and without clipping) and the learning-rate
//! schedules. Fixtures: `scripts/fixtures/training.py`.

mod common;

use afinar::engine::{Backend, CpuBackend, WeightFormat};
use afinar::generate::Rng;
use afinar::models::{load_model, Llama, LoadOptions, LoraSpec, LoraTarget, ParamMut, TrainBatch};
use afinar::recipes::optim::{clip_grad_norm, AdamWConfig, Optimizer};
use afinar::recipes::schedule::{Schedule, ScheduleKind};
use common::{fixture, rel_err, Expected};

fn lora_model(exp: &Expected) -> (CpuBackend, Llama<CpuBackend>) {
    let be = CpuBackend::new(Some(2));
    let opts = LoadOptions { format: WeightFormat::F32, tokenizer: None, ..Default::default() };
    let mut m = load_model(&be, &fixture("models/llama31_tiny"), &opts).unwrap().model;
    let targets = LoraTarget::PROJECTIONS.to_vec();
    m.apply_lora(&be, &LoraSpec { rank: 4, alpha: 8.0, dropout: 0.0, targets }, &mut Rng::new(0)).unwrap();
    m.visit_params_mut(&mut |name, p| {
        if let ParamMut::Buf(b, _) = p {
            *b = be.from_host(&exp.f32(&format!("init.base_model.model.{name}")).1).unwrap();
        }
        Ok(())
    })
    .unwrap();
    (be, m)
}

/// ids, labels, positions, batch, seq of one micro-batch.
type MicroBatch = (Vec<u32>, Vec<i32>, Vec<u32>, usize, usize);

fn batch_of(exp: &Expected, prefix: &str) -> MicroBatch {
    let (shape, ids) = exp.ids(&format!("{prefix}input_ids"));
    let labels = exp.ids(&format!("{prefix}labels")).1.iter().map(|&l| l as i32).collect();
    let positions = (0..shape[0]).flat_map(|_| 0..shape[1] as u32).collect();
    (ids, labels, positions, shape[0], shape[1])
}

/// Runs forward/backward over micro-batches with the step's total label count; returns the
/// mean loss.
fn step_grads(be: &CpuBackend, m: &mut Llama<CpuBackend>, mbs: &[MicroBatch]) -> f64 {
    let total: usize = mbs.iter().map(|b| b.1.iter().filter(|&&l| l != -100).count()).sum();
    m.zero_grads(be).unwrap();
    let mut sum = 0.0;
    for (ids, labels, positions, batch, seq) in mbs {
        let b = TrainBatch { ids, labels, positions, doc_ids: None, batch: *batch, seq: *seq };
        sum += m.forward_backward(be, &b, 1.0 / total as f32, false).unwrap().sum;
    }
    sum / total as f64
}

fn compare(be: &CpuBackend, m: &mut Llama<CpuBackend>, exp: &Expected, what: &str, tol: f64) {
    m.visit_params_mut(&mut |name, p| {
        let (value, s) = match p {
            ParamMut::Buf(b, s) => (be.to_host(b).unwrap(), s),
            ParamMut::Weight(..) => unreachable!("LoRA trains buffers only"),
        };
        let got = match what.rsplit('.').next().unwrap() {
            "grad" | "grad_clipped" => be.to_host(&s.grad).unwrap(),
            "exp_avg" => be.to_host(&s.m).unwrap(),
            "exp_avg_sq" => be.to_host(&s.v).unwrap(),
            _ => value,
        };
        let key = format!("{what}.base_model.model.{name}");
        let (_, want) = exp.f32(&key);
        let err = rel_err(&got[..s.len], &want);
        assert!(err < tol, "{key}: relative error {err:e}");
        Ok(())
    })
    .unwrap();
}

#[test]
fn accumulation_normalises_by_the_steps_label_tokens() {
    let exp = Expected::open(&fixture("training/accum.safetensors"));
    let (be, mut m) = lora_model(&exp);
    let loss = step_grads(&be, &mut m, &[batch_of(&exp, "mb0."), batch_of(&exp, "mb1.")]);
    let want = exp.f32("loss").1[0] as f64;
    assert!((loss - want).abs() / want < 1e-5, "{loss} vs {want}");
    compare(&be, &mut m, &exp, "grad", 1e-4);
}

const ADAMW: AdamWConfig = AdamWConfig { betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.01 };

#[test]
fn two_adamw_steps_match_torch() {
    let exp = Expected::open(&fixture("training/adamw.safetensors"));
    let (be, mut m) = lora_model(&exp);
    let batch = [batch_of(&exp, "")];
    let mut opt = Optimizer::new(ADAMW);
    for step in 1..=2 {
        let loss = step_grads(&be, &mut m, &batch);
        let want = exp.f32(&format!("step{step}.loss")).1[0] as f64;
        assert!((loss - want).abs() / want < 1e-5, "step {step}: loss {loss} vs {want}");
        compare(&be, &mut m, &exp, &format!("step{step}.grad"), 1e-4);
        opt.step(&be, &mut m, 1e-3).unwrap();
        compare(&be, &mut m, &exp, &format!("step{step}.param"), 1e-5);
        compare(&be, &mut m, &exp, &format!("step{step}.exp_avg"), 1e-4);
        compare(&be, &mut m, &exp, &format!("step{step}.exp_avg_sq"), 1e-4);
    }
}

#[test]
fn clipped_adamw_steps_match_torch() {
    let exp = Expected::open(&fixture("training/adamw.safetensors"));
    let (be, mut m) = lora_model(&exp);
    let batch = [batch_of(&exp, "")];
    let mut opt = Optimizer::new(ADAMW);
    for step in 1..=2 {
        step_grads(&be, &mut m, &batch);
        let norm = clip_grad_norm(&be, &mut m, 0.05).unwrap();
        let want = exp.f32(&format!("clip.step{step}.total_norm")).1[0] as f64;
        assert!((norm - want).abs() / want < 1e-5, "step {step}: norm {norm} vs {want}");
        compare(&be, &mut m, &exp, &format!("clip.step{step}.grad_clipped"), 1e-4);
        opt.step(&be, &mut m, 1e-3).unwrap();
        // Clipped gradients are tiny, so entries near zero sit close to eps where
        // g / (|g| + eps) magnifies f32 rounding of the gradient: the gradient's tolerance.
        compare(&be, &mut m, &exp, &format!("clip.step{step}.param"), 1e-4);
    }
}

#[test]
fn learning_rate_schedules_match_transformers() {
    let text = std::fs::read_to_string(fixture("training/lr_schedule.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let base_lr = json["base_lr"].as_f64().unwrap();
    let warmup = json["num_warmup_steps"].as_u64().unwrap() as usize;
    let total = json["num_training_steps"].as_u64().unwrap() as usize;
    for (name, kind, min_lr_ratio) in [
        ("cosine", ScheduleKind::Cosine, 0.0),
        ("linear", ScheduleKind::Linear, 0.0),
        ("cosine_with_min_lr", ScheduleKind::Cosine, 0.1),
    ] {
        let s = &json["schedules"][name];
        let lrs: Vec<f64> = s["lrs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let ratio = s["kwargs"]["min_lr_rate"].as_f64().unwrap_or(min_lr_ratio);
        assert_eq!(ratio, min_lr_ratio, "{name}");
        let sched = Schedule { base_lr, kind, warmup_steps: warmup, total_steps: total, min_lr_ratio };
        for (k, want) in lrs.iter().enumerate() {
            let got = sched.lr(k);
            assert!((got - want).abs() <= 1e-12 + 1e-9 * want.abs(), "{name} step {k}: {got} vs {want}");
        }
    }
}
