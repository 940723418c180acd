//! Preference objectives against TRL 1.16's trainers: DPO (`sigmoid`, `ipo`, `hinge`), SimPO
//! (`CPOTrainer`) and ORPO (`ORPOTrainer`) on `llama31_tiny` with a LoRA adapter, three SGD steps
//! on the same batches. Each step's loss, metrics and LoRA gradients, and the weights after the
//! last step, must match within 1e-4 relative. The reference is the model with its adapters
//! switched off, as TRL's for a new PEFT adapter. Fixtures: `scripts/fixtures/preference_trl.py`,
//! run by this test through `AFINAR_PYTHON` into a temporary folder.

mod common;

use afinar::engine::{Backend, CpuBackend, WeightFormat};
use afinar::models::ActivationCheckpointing::Off;
use afinar::models::{load_model, Llama, LoadOptions, LoraTarget, ParamMut, TrainBatch};
use afinar::objectives::{
    dpo, orpo, simpo, DpoLoss, OrpoParams, PreferenceOutput, SequenceLogps, SimpoParams, TokenSum,
};
use common::{apply_peft_lora, fixture, reference_python, rel_err, Expected, Tmp};

const TOL: f64 = 1e-4;

/// One recorded step of a trainer: its batch as afinar's tensors.
struct Step {
    ids: Vec<u32>,
    logp_labels: Vec<i32>,
    nll_labels: Option<Vec<i32>>,
    rows: usize,
    seq: usize,
}

fn labels(exp: &Expected, name: &str) -> Vec<i32> {
    exp.ids(name).1.into_iter().map(|v| v as i32).collect()
}

fn step(exp: &Expected, k: usize) -> Step {
    let (shape, ids) = exp.ids(&format!("step{k}.input_ids"));
    let nll = format!("step{k}.nll_labels");
    Step {
        ids,
        logp_labels: labels(exp, &format!("step{k}.logp_labels")),
        nll_labels: exp.has(&nll).then(|| labels(exp, &nll)),
        rows: shape[0],
        seq: shape[1],
    }
}

/// Per-row sums of `tok` over the positions `labels` counts, and their numbers.
fn row_sums(tok: &[f32], labels: &[i32], rows: usize, seq: usize) -> (Vec<f64>, Vec<usize>) {
    (0..rows)
        .map(|r| {
            let row = r * seq..(r + 1) * seq;
            let kept = || tok[row.clone()].iter().zip(&labels[row.clone()]).filter(|(_, &l)| l != -100);
            (kept().map(|(&v, _)| v as f64).sum::<f64>(), kept().count())
        })
        .unzip()
}

fn split(sums: (Vec<f64>, Vec<usize>)) -> SequenceLogps {
    let (l, n) = sums;
    let h = l.len() / 2;
    SequenceLogps {
        chosen: l[..h].to_vec(),
        rejected: l[h..].to_vec(),
        chosen_tokens: n[..h].to_vec(),
        rejected_tokens: n[h..].to_vec(),
    }
}

/// The objective of one run, from the fixture's hyper-parameters.
enum Objective {
    Dpo(DpoLoss, f64),
    Simpo(SimpoParams),
    Orpo(OrpoParams),
}

fn objective(name: &str, params: &serde_json::Value) -> Objective {
    let f = |k: &str| params[k].as_f64().unwrap_or_else(|| panic!("{name}: parameter {k} missing"));
    match name {
        "sigmoid" => Objective::Dpo(DpoLoss::Sigmoid, f("beta")),
        "ipo" => Objective::Dpo(DpoLoss::Ipo, f("beta")),
        "hinge" => Objective::Dpo(DpoLoss::Hinge, f("beta")),
        "simpo" => Objective::Simpo(SimpoParams {
            beta: f("beta"),
            gamma: f("simpo_gamma"),
            label_smoothing: f("label_smoothing"),
            cpo_alpha: f("cpo_alpha"),
        }),
        "orpo" => Objective::Orpo(OrpoParams { beta: f("beta") }),
        other => panic!("unknown run {other}"),
    }
}

/// One optimizer step's forward, objective and backward; leaves the LoRA gradients in the model.
fn forward_backward(
    be: &CpuBackend,
    m: &mut Llama<CpuBackend>,
    s: &Step,
    obj: &Objective,
) -> PreferenceOutput {
    let rows = s.rows * s.seq;
    let positions: Vec<u32> = (0..s.rows).flat_map(|_| 0..s.seq as u32).collect();
    // One label per position for the head: the NLL term's where it has one (ORPO: the chosen
    // rows' prompt and completion), else the preference term's; both are the next token.
    let head_labels: Vec<i32> = match &s.nll_labels {
        Some(nll) => nll
            .iter()
            .zip(&s.logp_labels)
            .map(|(&n, &l)| {
                assert!(n == -100 || l == -100 || n == l, "NLL and preference targets disagree");
                if n != -100 {
                    n
                } else {
                    l
                }
            })
            .collect(),
        None => s.logp_labels.clone(),
    };
    let b = TrainBatch {
        ids: &s.ids,
        labels: &head_labels,
        positions: &positions,
        doc_ids: None,
        batch: s.rows,
        seq: s.seq,
    };
    m.zero_grads(be).unwrap();
    let mut hidden = be.zeros(rows * m.config.dim).unwrap();
    m.forward_hidden(be, &b, Off, &mut hidden).unwrap();
    let tok = m.label_log_probs(be, &hidden, &head_labels, rows).unwrap();
    let policy = split(row_sums(&tok, &s.logp_labels, s.rows, s.seq));
    let out = match obj {
        Objective::Dpo(kind, beta) => {
            let ref_tok = m.without_adapters(|m| {
                let mut h = be.zeros(rows * m.config.dim).unwrap();
                m.hidden_states(be, &b, &mut h).unwrap();
                m.label_log_probs(be, &h, &s.logp_labels, rows).unwrap()
            });
            let reference = split(row_sums(&ref_tok, &s.logp_labels, s.rows, s.seq));
            dpo(*kind, *beta, &policy, &reference).unwrap()
        }
        Objective::Simpo(p) => simpo(p, &policy).unwrap(),
        Objective::Orpo(p) => {
            let nll = s.nll_labels.as_ref().expect("ORPO fixture has nll_labels");
            let (sums, counts) = row_sums(&tok, nll, s.rows, s.seq);
            let sum = TokenSum { logp_sum: sums.iter().sum(), tokens: counts.iter().sum() };
            orpo(p, &policy, sum).unwrap()
        }
    };
    // ∂loss/∂logp per token: the sequence's gradient on its counted tokens, plus the NLL term's.
    let per_row: Vec<f64> = out.d_chosen.iter().chain(&out.d_rejected).copied().collect();
    let upstream: Vec<f32> = (0..rows)
        .map(|i| {
            let mut g = 0.0;
            if s.logp_labels[i] != -100 {
                g += per_row[i / s.seq];
            }
            if s.nll_labels.as_ref().is_some_and(|n| n[i] != -100) {
                g += out.d_nll_token;
            }
            g as f32
        })
        .collect();
    let mut dhidden = be.zeros(rows * m.config.dim).unwrap();
    m.label_log_probs_backward(be, &hidden, &head_labels, rows, &upstream, &mut dhidden).unwrap();
    m.backward_hidden(be, &b, Off, &dhidden).unwrap();
    out
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= TOL * want.abs().max(1e-2)
}

fn check_run(name: &str, dir: &std::path::Path, meta: &serde_json::Value) {
    let exp = Expected::open(&dir.join(format!("{name}.safetensors")));
    let run = &meta["runs"][name];
    let obj = objective(name, &run["params"]);
    let lr = meta["optimizer"]["lr"].as_f64().unwrap() as f32;
    let steps = meta["optimizer"]["steps"].as_u64().unwrap() as usize;
    let be = CpuBackend::new(Some(2));
    let opts = LoadOptions { format: WeightFormat::F32, tokenizer: None, ..Default::default() };
    let mut m = load_model(&be, &fixture("models/llama31_tiny"), &opts).unwrap().model;
    apply_peft_lora(&be, &mut m, LoraTarget::PROJECTIONS.to_vec(), &exp);
    for k in 1..=steps {
        let out = forward_backward(&be, &mut m, &step(&exp, k), &obj);
        let want = exp.f32(&format!("step{k}.loss")).1[0] as f64;
        assert!(close(out.loss, want), "{name} step {k}: loss {} vs TRL {want}", out.loss);
        let mut checked = 0;
        for &(metric, got) in &out.metrics {
            let key = format!("step{k}.metric.{metric}");
            if exp.has(&key) {
                let want = exp.f32(&key).1[0] as f64;
                assert!(close(got, want), "{name} step {k}: {metric} {got} vs TRL {want}");
                checked += 1;
            }
        }
        assert!(checked >= 6, "{name} step {k}: only {checked} metrics compared");
        // Gradients, then the SGD step.
        let mut n = 0;
        m.visit_params_mut(&mut |pname, p| {
            let ParamMut::Buf(w, state) = p else { panic!("{pname}: only LoRA tensors train here") };
            let g = be.to_host(&state.grad)?;
            let want = exp.f32(&format!("step{k}.grad.base_model.model.{pname}")).1;
            let err = rel_err(&g, &want);
            assert!(err < TOL, "{name} step {k}: {pname} gradient relative error {err:e}");
            let mut v = be.to_host(w)?;
            v.iter_mut().zip(&g).for_each(|(v, g)| *v -= lr * g);
            *w = be.from_host(&v)?;
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 28, "{name}: LoRA tensors");
    }
    m.visit_params_mut(&mut |pname, p| {
        let ParamMut::Buf(w, _) = p else { unreachable!() };
        let want = exp.f32(&format!("final.base_model.model.{pname}")).1;
        let err = rel_err(&be.to_host(w)?, &want);
        assert!(err < TOL, "{name}: {pname} after {steps} steps, relative error {err:e}");
        Ok(())
    })
    .unwrap();
    eprintln!("{name}: {steps} steps match TRL (losses {})", run["losses"]);
}

#[test]
fn preference_losses_match_trl_trainers_over_three_steps() {
    let Some(python) = reference_python("TRL preference parity") else { return };
    let dir = Tmp::new("preference");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures/preference_trl.py");
    let res = std::process::Command::new(&python).arg(&script).arg("--out").arg(&*dir).output().unwrap();
    assert!(
        res.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&res.stderr).lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("preference.json")).unwrap()).unwrap();
    for name in ["sigmoid", "ipo", "hinge", "simpo", "orpo"] {
        check_run(name, &dir, &meta);
    }
}
