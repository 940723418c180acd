//! The GRPO objective against TRL 1.16's `GRPOTrainer` on `llama31_tiny` with a LoRA adapter, for
//! a fixed batch of prompts, completions and rewards: every `loss_type` (grpo, bnpo, dr_grpo,
//! dapo) × `beta` 0 / 0.04 × `num_iterations` 1 / 2 (the second pass after one SGD step on the
//! same batch, so ratios differ from 1 and clip). The advantages, the old and reference
//! log-probabilities (sampling temperature 0.7), and each pass's loss, metrics and LoRA gradients
//! must match within 1e-4 relative. The reference is the model with its adapters switched off, as
//! TRL's for a new PEFT adapter. Fixtures: `scripts/fixtures/grpo_trl.py`, run by this test
//! through `AFINAR_PYTHON` into a temporary folder.

mod common;

use afinar::engine::{Backend, CpuBackend, WeightFormat};
use afinar::models::ActivationCheckpointing::{Every, Off};
use afinar::models::{load_model, LoadOptions, LoraTarget, ParamMut, TrainBatch};
use afinar::objectives::grpo::{
    advantages, forward_backward, is_truncated, per_token_logps, GrpoBatch, GrpoParams, LossType,
    ScaleRewards,
};
use common::{apply_peft_lora, fixture, reference_python, rel_err, Expected, Tmp};

const TOL: f64 = 1e-4;

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= TOL * want.abs().max(1e-2)
}

/// The fixture's batch as afinar's packed rows: prompt then completion (right-padded), labels
/// the completion tokens TRL's mask keeps.
struct Rows {
    ids: Vec<u32>,
    labels: Vec<i32>,
    positions: Vec<u32>,
    rows: usize,
    seq: usize,
    prompt: usize,
    completion: usize,
}

impl Rows {
    fn batch(&self) -> TrainBatch<'_> {
        TrainBatch {
            ids: &self.ids,
            labels: &self.labels,
            positions: &self.positions,
            doc_ids: None,
            batch: self.rows,
            seq: self.seq,
        }
    }

    /// Position of completion token `j` of row `r` in the per-token arrays: its label sits one
    /// position before it.
    fn at(&self, r: usize, j: usize) -> usize {
        r * self.seq + self.prompt - 1 + j
    }

    /// Compares afinar's per-token log-probabilities with TRL's `[rows × completion]` ones on the
    /// tokens the loss counts.
    fn check_logps(&self, got: &[f32], want: &[f32], what: &str) {
        let mut n = 0;
        for r in 0..self.rows {
            for j in 0..self.completion {
                let t = self.at(r, j);
                if self.labels[t] == -100 {
                    continue;
                }
                let (g, w) = (got[t] as f64, want[r * self.completion + j] as f64);
                assert!(close(g, w), "{what}: row {r} token {j}: afinar {g} vs TRL {w}");
                n += 1;
            }
        }
        assert!(n > 10, "{what}: only {n} tokens compared");
    }
}

fn rows(exp: &Expected, meta: &serde_json::Value) -> Rows {
    let (ps, prompts) = exp.ids("prompt_ids");
    let (cs, completions) = exp.ids("completion_ids");
    let (_, mask) = exp.ids("completion_mask");
    let (rows, prompt, completion) = (ps[0], ps[1], cs[1]);
    let seq = prompt + completion;
    let (eos, pad) = (meta["eos"].as_u64().unwrap() as u32, meta["pad"].as_u64().unwrap() as u32);
    let mut ids = Vec::with_capacity(rows * seq);
    let mut labels = vec![-100; rows * seq];
    for r in 0..rows {
        ids.extend_from_slice(&prompts[r * prompt..(r + 1) * prompt]);
        let c = &completions[r * completion..(r + 1) * completion];
        ids.extend_from_slice(c);
        // afinar's own masking of truncated completions must give TRL's mask.
        let given: Vec<u32> =
            meta["completions"][r].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let keep = !is_truncated(&given, &[eos, pad]);
        for (j, &tok) in c.iter().enumerate() {
            let counted = keep && j < given.len();
            assert_eq!(counted, mask[r * completion + j] == 1, "row {r} token {j}: mask differs from TRL's");
            if counted {
                labels[r * seq + prompt - 1 + j] = tok as i32;
            }
        }
    }
    let positions = (0..rows).flat_map(|_| 0..seq as u32).collect();
    Rows { ids, labels, positions, rows, seq, prompt, completion }
}

fn params(run: &serde_json::Value, meta: &serde_json::Value) -> GrpoParams {
    let p = &run["params"];
    let eps = p["epsilon"].as_f64().unwrap();
    GrpoParams {
        epsilon_low: eps,
        epsilon_high: p["epsilon_high"].as_f64().unwrap_or(eps),
        beta: p["beta"].as_f64().unwrap(),
        loss_type: p["loss_type"].as_str().unwrap().parse().unwrap(),
        scale_rewards: p["scale_rewards"].as_str().unwrap().parse().unwrap(),
        num_iterations: p["num_iterations"].as_u64().unwrap() as usize,
        max_completion_length: meta["max_completion_length"].as_u64().unwrap() as usize,
        temperature: meta["temperature"].as_f64().unwrap() as f32,
        mask_truncated_completions: true,
        ..Default::default()
    }
}

fn check_run(name: &str, dir: &std::path::Path, meta: &serde_json::Value) {
    let exp = Expected::open(&dir.join(format!("{name}.safetensors")));
    let run = &meta["runs"][name];
    let p = params(run, meta);
    let lr = run["lr"].as_f64().unwrap() as f32;
    let group = meta["num_generations"].as_u64().unwrap() as usize;
    let be = CpuBackend::new(Some(2));
    let opts = LoadOptions { format: WeightFormat::F32, tokenizer: None, ..Default::default() };
    let mut m = load_model(&be, &fixture("models/llama31_tiny"), &opts).unwrap().model;
    apply_peft_lora(&be, &mut m, LoraTarget::PROJECTIONS.to_vec(), &exp);
    let rows = rows(&exp, meta);
    let b = rows.batch();

    let adv = advantages(&exp.f32("rewards").1, group, p.scale_rewards).unwrap();
    let err = rel_err(&adv, &exp.f32("advantages").1);
    assert!(err < TOL, "{name}: advantages relative error {err:e}: {adv:?}");

    let reference = (p.beta != 0.0).then(|| {
        let got = m.without_adapters(|m| per_token_logps(&be, m, &b, p.temperature)).unwrap();
        rows.check_logps(&got, &exp.f32("ref_logps").1, &format!("{name}: reference"));
        got
    });
    let old = (p.num_iterations > 1).then(|| {
        let got = per_token_logps(&be, &m, &b, p.temperature).unwrap();
        rows.check_logps(&got, &exp.f32("old_logps").1, &format!("{name}: old"));
        got
    });
    let tokens = rows.labels.iter().filter(|&&l| l != -100).count();
    assert_eq!(tokens as f64, run["num_items_in_batch"].as_f64().unwrap(), "{name}: completion tokens");
    let denominator = p.denominator(rows.rows, tokens, tokens, 1);
    for k in 1..=p.num_iterations {
        if k > 1 {
            // TRL's optimizer step between iterations, as the fixture does it: plain SGD.
            m.visit_params_mut(&mut |_, p| {
                let ParamMut::Buf(w, state) = p else { panic!("only LoRA tensors train here") };
                let g = be.to_host(&state.grad)?;
                let mut v = be.to_host(w)?;
                v.iter_mut().zip(&g).for_each(|(v, g)| *v -= lr * g);
                *w = be.from_host(&v)?;
                Ok(())
            })
            .unwrap();
        }
        m.zero_grads(&be).unwrap();
        let gb = GrpoBatch {
            batch: rows.batch(),
            old_logps: old.as_deref(),
            ref_logps: reference.as_deref(),
            advantages: &adv,
        };
        // Activation checkpointing must not change the result: the second pass uses it.
        let ckpt = if k == 1 { Off } else { Every(1) };
        let out = forward_backward(&be, &mut m, &gb, &p, denominator, 1.0, ckpt).unwrap();
        let want = exp.f32(&format!("pass{k}.loss")).1[0] as f64;
        assert!(close(out.loss, want), "{name} pass {k}: loss {} vs TRL {want}", out.loss);
        let mut compared = 0;
        for (metric, got) in out.metrics() {
            let key = format!("pass{k}.metric.{metric}");
            assert!(exp.has(&key), "{name} pass {k}: TRL did not log {metric}");
            let want = exp.f32(&key).1[0] as f64;
            assert!(close(got, want), "{name} pass {k}: {metric} {got} vs TRL {want}");
            compared += 1;
        }
        let trl_kl = exp.has(&format!("pass{k}.metric.kl"));
        assert_eq!(trl_kl, p.beta != 0.0, "{name} pass {k}: kl logged by TRL iff beta ≠ 0");
        assert_eq!(compared, 5 + usize::from(trl_kl), "{name} pass {k}: metrics compared");
        let (mut n, mut worst, mut largest) = (0, 0.0f64, 0.0f32);
        m.visit_params_mut(&mut |pname, q| {
            let ParamMut::Buf(_, state) = q else { panic!("{pname}: only LoRA tensors train here") };
            let g = be.to_host(&state.grad)?;
            let want = exp.f32(&format!("pass{k}.grad.base_model.model.{pname}")).1;
            let err = rel_err(&g, &want);
            assert!(err < TOL, "{name} pass {k}: {pname} gradient relative error {err:e}");
            worst = worst.max(err);
            largest = want.iter().fold(largest, |a, w| a.max(w.abs()));
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 28, "{name}: LoRA tensors");
        // Not a vacuous comparison: some tokens are unclipped with a non-zero advantage.
        assert!(largest > 1e-4, "{name} pass {k}: TRL's LoRA gradients are all (nearly) zero");
        if k > 1 {
            let region = out.clip_region_mean;
            assert!(
                region > 0.0 && region < 1.0,
                "{name} pass {k}: clip ratio {region}, expected some clipped tokens"
            );
        }
        let metrics: Vec<String> = out.metrics().iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        eprintln!(
            "{name} pass {k}: loss {:.6} matches TRL (relative {:.1e}), LoRA gradients within {worst:.1e}; {}",
            out.loss,
            (out.loss - want).abs() / want.abs(),
            metrics.join(", ")
        );
    }
}

#[test]
fn grpo_loss_and_lora_gradients_match_trl_for_every_loss_type() {
    let Some(python) = reference_python("TRL GRPO parity") else { return };
    let dir = Tmp::new("grpo");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures/grpo_trl.py");
    let res = std::process::Command::new(&python).arg(&script).arg("--out").arg(&*dir).output().unwrap();
    assert!(
        res.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&res.stderr).lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grpo.json")).unwrap()).unwrap();

    // The advantages of each scale_rewards.
    let adv = Expected::open(&dir.join("advantages.safetensors"));
    let rewards = adv.f32("rewards").1;
    let group = meta["num_generations"].as_u64().unwrap() as usize;
    for (scale, s) in
        [("group", ScaleRewards::Group), ("batch", ScaleRewards::Batch), ("none", ScaleRewards::None)]
    {
        let got = advantages(&rewards, group, s).unwrap();
        let err = rel_err(&got, &adv.f32(scale).1);
        assert!(err < TOL, "scale_rewards {scale}: advantages relative error {err:e}: {got:?}");
    }

    let names: Vec<&String> = meta["runs"].as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 16, "runs: {names:?}");
    let mut types = std::collections::HashSet::new();
    let mut clipped = 0;
    let mut failed = Vec::new();
    for name in names {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_run(name, &dir, &meta)));
        if ok.is_err() {
            failed.push(name.clone());
        }
        let run = &meta["runs"][name];
        types.insert(run["params"]["loss_type"].as_str().unwrap().parse::<LossType>().unwrap().name());
        if run["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["clip_ratio/region_mean"].as_f64().unwrap() > 0.0)
        {
            clipped += 1;
        }
    }
    assert!(failed.is_empty(), "runs that differ from TRL (see above): {failed:?}");
    assert_eq!(types.len(), 4, "loss types covered: {types:?}");
    assert!(clipped >= 8, "only {clipped} runs clip any token: the second passes must exercise the clipping");
}

/// Without Python: [`forward_backward`]'s LoRA gradients at temperature 0.7 (LoRA on every
/// projection and on the output head, so the `1/T` scaling reaches both the head's own gradient
/// and the hidden states') against central finite differences of the loss that
/// [`per_token_logps`] and the pure loss give, with ratios ≠ 1 and the KL term on.
#[test]
fn model_gradient_at_a_temperature_matches_finite_differences() {
    use afinar::generate::Rng;
    use afinar::models::LoraSpec;
    use afinar::objectives::grpo::{grpo_loss, TokenBatch};
    let be = CpuBackend::new(Some(2));
    let opts = LoadOptions { format: WeightFormat::F32, tokenizer: None, ..Default::default() };
    let mut m = load_model(&be, &fixture("models/llama31_tiny"), &opts).unwrap().model;
    let spec = LoraSpec { rank: 4, alpha: 8.0, dropout: 0.0, targets: LoraTarget::ALL.to_vec() };
    m.apply_lora(&be, &spec, &mut Rng::new(7)).unwrap();
    // Non-zero B matrices (PEFT starts them at 0), deterministic.
    let mut k = 0u32;
    m.visit_params_mut(&mut |_, p| {
        let ParamMut::Buf(w, _) = p else { unreachable!() };
        let v: Vec<f32> = be
            .to_host(w)?
            .iter()
            .map(|_| {
                k = k.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                ((k >> 8) % 2001) as f32 / 1000.0 - 1.0
            })
            .map(|x| 0.3 * x)
            .collect();
        *w = be.from_host(&v)?;
        Ok(())
    })
    .unwrap();
    // Two rows: 3 prompt tokens, then 4 completion tokens (the second row's last one masked).
    let ids: Vec<u32> = vec![1, 17, 45, 201, 33, 87, 2, 1, 250, 8, 54, 310, 77, 5];
    let mut labels = vec![-100i32; 14];
    for (t, l) in [(2, 201), (3, 33), (4, 87), (5, 2), (9, 54), (10, 310), (11, 77)] {
        labels[t] = l;
    }
    let positions: Vec<u32> = (0..2).flat_map(|_| 0..7u32).collect();
    let tb =
        || TrainBatch { ids: &ids, labels: &labels, positions: &positions, doc_ids: None, batch: 2, seq: 7 };
    let b = tb();
    let p = GrpoParams {
        loss_type: LossType::Grpo,
        beta: 0.04,
        epsilon_high: 0.28,
        temperature: 0.7,
        ..Default::default()
    };
    let now = per_token_logps(&be, &m, &b, p.temperature).unwrap();
    // Old log-probabilities spread so that ratios fall inside and outside the clip range.
    let shifts = [0.0, 0.0, 0.1, -0.5, 0.05, 0.4, 0.0, 0.0, 0.0, -0.1, 0.35, -0.3, 0.0, 0.0];
    let old: Vec<f32> = now.iter().zip(shifts).map(|(l, s)| l + s).collect();
    let reference = m.without_adapters(|m| per_token_logps(&be, m, &b, p.temperature)).unwrap();
    let adv = [0.9f32, -0.6];
    let mask: Vec<bool> = labels.iter().map(|&l| l != -100).collect();
    let denominator = p.denominator(2, 7, 7, 1);
    let loss_at = |m: &afinar::models::Llama<CpuBackend>| {
        let logps = per_token_logps(&be, m, &b, p.temperature).unwrap();
        let tb = TokenBatch {
            rows: 2,
            len: 7,
            logps: &logps,
            old_logps: Some(&old),
            ref_logps: Some(&reference),
            mask: &mask,
            advantages: &adv,
        };
        grpo_loss(&p, &tb, denominator).unwrap().loss
    };
    m.zero_grads(&be).unwrap();
    let gb = GrpoBatch { batch: tb(), old_logps: Some(&old), ref_logps: Some(&reference), advantages: &adv };
    let out = forward_backward(&be, &mut m, &gb, &p, denominator, 1.0, Off).unwrap();
    assert!((out.loss - loss_at(&m)).abs() < 1e-6, "loss {} vs the pure loss {}", out.loss, loss_at(&m));
    assert!(out.clip_region_mean > 0.0 && out.clip_region_mean < 1.0, "clip ratio {}", out.clip_region_mean);
    // Directional derivative along the gradient of each tensor (a sum over all its entries).
    let mut names = Vec::new();
    m.visit_params_mut(&mut |name, _| {
        names.push(name.to_string());
        Ok(())
    })
    .unwrap();
    let mut checked = 0;
    for name in names.iter().filter(|n| n.contains("layers.1.") || n.starts_with("lm_head")) {
        let mut g = Vec::new();
        let mut w0 = Vec::new();
        m.visit_params_mut(&mut |n, q| {
            if n == name {
                let ParamMut::Buf(w, s) = q else { unreachable!() };
                g = be.to_host(&s.grad)?;
                w0 = be.to_host(w)?;
            }
            Ok(())
        })
        .unwrap();
        let norm = g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!(norm > 0.0, "{name}: zero gradient");
        let h = 1e-2 / norm;
        let mut at = |sign: f64| {
            m.visit_params_mut(&mut |n, q| {
                if n == name {
                    let ParamMut::Buf(w, _) = q else { unreachable!() };
                    let v: Vec<f32> =
                        w0.iter().zip(&g).map(|(w, g)| (*w as f64 + sign * h * *g as f64) as f32).collect();
                    *w = be.from_host(&v)?;
                }
                Ok(())
            })
            .unwrap();
            loss_at(&m)
        };
        let fd = (at(1.0) - at(-1.0)) / (2.0 * h);
        at(0.0);
        let rel = (fd - norm * norm).abs() / (norm * norm);
        assert!(rel < 2e-2, "{name}: directional derivative {fd} vs |g|² {}: relative {rel:e}", norm * norm);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} tensors checked");
}
