//! The `dpo` recipe end to end: a fresh LoRA adapter's first step is ln 2 on the real
//! SmolLM2-135M; killed and resumed runs equal uninterrupted ones bit for bit (LoRA with the
//! adapters-off reference, full fine-tuning with the precomputed reference cache); the recipe's
//! losses and rewards equal an independent computation through the model API and the objectives
//! (the flow of `preference_parity.rs`) at step 1 and, from the saved step-1 checkpoint, at step
//! 2; bad configs and data give named errors.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use afinar::checkpoint::DType;
use afinar::config::RecipeConfig;
use afinar::data::{DatasetKind, DatasetSpec, PreferenceDataset};
use afinar::engine::{Backend, CpuBackend, WeightFormat};
use afinar::models::{load_model, Llama, LoadOptions, TrainBatch};
use afinar::objectives::{dpo, orpo, simpo, DpoLoss, OrpoParams, SequenceLogps, SimpoParams, TokenSum};
use afinar::recipes::dpo::{run_on_with, REFERENCE_FILE};
use afinar::recipes::metrics::Silent;
use afinar::recipes::save::{FullSave, ModelSource};
use afinar::recipes::state::SaveTarget;
use afinar::tokenizer::Tokenizer;
use common::{asset, Tmp};

/// A tiny random Llama-3-shaped model saved as a Hugging Face folder with the real Llama-3
/// tokenizer, and a preference file of `pairs` pairs, in `dir`.
fn tiny_setup(dir: &Path, pairs: usize) -> (PathBuf, PathBuf) {
    let be = CpuBackend::new(Some(2));
    let tok = Tokenizer::from_file(&asset("llama3-tokenizer/tokenizer.json")).unwrap();
    let m = Llama::random(&be, common::tiny_llama31(), 11, WeightFormat::F32).unwrap();
    let model_dir = dir.join("tiny");
    let source = ModelSource {
        path: PathBuf::from("tiny"),
        hf_dir: None,
        config_json: m.config.to_hf_json(tok.bos_id(), tok.eos_id(), "float32"),
        dtype: DType::F32,
        tokenizer: Some(Arc::new(tok)),
        max_seq_len: Some(256),
    };
    FullSave { source }.save(&be, &m, &model_dir).unwrap();
    let data = common::preference_file(dir, pairs);
    (model_dir, data)
}

/// A `dpo` config for the tiny model: `lora` is the lora section (empty: full fine-tuning),
/// `loss` the loss section's body, `extra` more top-level lines.
fn tiny_yaml(model: &Path, data: &Path, out: &Path, lora: &str, loss: &str, extra: &str) -> String {
    format!(
        "recipe: dpo\noutput_dir: {}\nmodel:\n  path: {}\n  dtype: fp32\ntokenizer:\n  max_seq_len: 64\n{lora}\
         loss:\n{loss}\ndataset:\n  kind: preference\n  source: {}\nseed: 3\nshuffle: true\nbatch_size: 2\n\
         epochs: 2\nmax_steps_per_epoch: 2\ngradient_accumulation_steps: 2\noptimizer:\n  lr: 3e-3\n\
         lr_scheduler:\n  kind: cosine\n  warmup_steps: 1\nclip_grad_norm: 1.0\nsave_every_n_steps: 1\n\
         log_every_n_steps: 1\nthreads: 2\n{extra}",
        out.display(),
        model.display(),
        data.display()
    )
}

const LORA: &str = "lora:\n  rank: 4\n  alpha: 8\n  target_modules: [q_proj, v_proj, down_proj]\n";

fn resume_case(name: &str, lora: &str, loss: &str) {
    let dir = Tmp::new(&format!("dpo-{name}"));
    let (model, data) = tiny_setup(&dir, 10);
    let be = CpuBackend::new(Some(2));
    let whole = dir.join("whole");
    let cfg = common::recipe_config(&tiny_yaml(&model, &data, &whole, lora, loss, ""), &dir, "whole.yaml");
    let s = run_on_with(&be, &cfg, &mut Silent, None).unwrap();
    assert_eq!(s.steps, 4);
    let killed = dir.join("killed");
    let cfg = common::recipe_config(&tiny_yaml(&model, &data, &killed, lora, loss, ""), &dir, "killed.yaml");
    assert_eq!(run_on_with(&be, &cfg, &mut Silent, Some(1)).unwrap().steps, 1);
    // Resumed twice: after step 1 (mid-epoch) and after step 3.
    let cfg = common::recipe_config(
        &tiny_yaml(&model, &data, &killed, lora, loss, "resume_from_checkpoint: true\n"),
        &dir,
        "resumed.yaml",
    );
    assert_eq!(run_on_with(&be, &cfg, &mut Silent, Some(2)).unwrap().steps, 3);
    assert_eq!(run_on_with(&be, &cfg, &mut Silent, None).unwrap().steps, 4);
    let (a, b) = (common::metrics_rows(&whole), common::metrics_rows(&killed));
    assert_eq!(a.len(), 4);
    assert_eq!(b.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        for key in
            ["loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen"]
        {
            assert_eq!(
                common::metric(x, key).to_bits(),
                common::metric(y, key).to_bits(),
                "{name}: {key} at step {}",
                x["step"]
            );
        }
    }
    let (fa, fb) = (common::safetensors_files(&whole), common::safetensors_files(&killed));
    assert!(fa.len() >= 4, "{name}: {:?}", fa.iter().map(|f| &f.0).collect::<Vec<_>>());
    assert_eq!(fa.iter().map(|f| &f.0).collect::<Vec<_>>(), fb.iter().map(|f| &f.0).collect::<Vec<_>>());
    for ((n, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{name}: {n} differs between the whole and the resumed run");
    }
    // The loss moved: the runs trained something.
    assert_ne!(common::metric(&a[0], "loss"), common::metric(&a[3], "loss"));
}

#[test]
fn lora_dpo_resumes_bit_for_bit() {
    resume_case("lora", LORA, "  kind: sigmoid\n  beta: 0.5\n");
}

#[test]
fn full_dpo_with_a_precomputed_reference_resumes_bit_for_bit() {
    resume_case("full", "", "  kind: ipo\n  beta: 0.5\n");
    // The cache is in the output folder and in the recipe state.
    let dir = Tmp::new("dpo-full-cache");
    let (model, data) = tiny_setup(&dir, 6);
    let out = dir.join("out");
    let be = CpuBackend::new(Some(2));
    let cfg =
        common::recipe_config(&tiny_yaml(&model, &data, &out, "", "  kind: sigmoid\n", ""), &dir, "c.yaml");
    run_on_with(&be, &cfg, &mut Silent, Some(1)).unwrap();
    let cache =
        afinar::checkpoint::safetensors::SafetensorsCheckpoint::open(out.join(REFERENCE_FILE)).unwrap();
    let chosen = cache.tensor("chosen").unwrap().to_f32().unwrap();
    assert_eq!(chosen.len(), 6);
    assert!(chosen.iter().all(|v| v.is_finite() && *v < 0.0), "{chosen:?}");
    let state = afinar::recipes::state::load_objective_state(&out).unwrap();
    let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["reference.chosen", "reference.rejected"]);
    assert_eq!(state[0].1, chosen);
}

/// Per-pair summed response log-probabilities (and counts) of `pairs` under `m`, one pair row
/// at a time (no padding), through the model's forward and label log-probabilities; with
/// `nll`, also the sum over the chosen rows' prompt and response tokens.
fn independent_logps(
    be: &CpuBackend,
    m: &Llama<CpuBackend>,
    ds: &PreferenceDataset,
    pairs: &[usize],
) -> (SequenceLogps, TokenSum) {
    let mut s =
        SequenceLogps { chosen: vec![], rejected: vec![], chosen_tokens: vec![], rejected_tokens: vec![] };
    let mut nll = TokenSum { logp_sum: 0.0, tokens: 0 };
    for &i in pairs {
        let p = &ds.pairs()[i];
        for (k, resp) in [&p.chosen_ids, &p.rejected_ids].into_iter().enumerate() {
            let ids: Vec<u32> = p.prompt_ids.iter().chain(resp.iter()).copied().collect();
            let n = ids.len();
            // Next-token targets: every position for the NLL, the response's for the preference.
            let all: Vec<i32> = (0..n).map(|t| if t + 1 < n { ids[t + 1] as i32 } else { -100 }).collect();
            let resp_from = p.prompt_ids.len() - 1;
            let positions: Vec<u32> = (0..n as u32).collect();
            let b = TrainBatch {
                ids: &ids,
                labels: &all,
                positions: &positions,
                doc_ids: None,
                batch: 1,
                seq: n,
            };
            let mut h = be.zeros(n * m.config.dim).unwrap();
            m.hidden_states(be, &b, &mut h).unwrap();
            let tok = m.label_log_probs(be, &h, &all, n).unwrap();
            let sum: f64 = tok[resp_from..n - 1].iter().map(|&v| f64::from(v)).sum();
            if k == 0 {
                s.chosen.push(sum);
                s.chosen_tokens.push(resp.len());
                nll.logp_sum += tok[..n - 1].iter().map(|&v| f64::from(v)).sum::<f64>();
                nll.tokens += n - 1;
            } else {
                s.rejected.push(sum);
                s.rejected_tokens.push(resp.len());
            }
        }
    }
    (s, nll)
}

/// Padded batches against one row at a time, and (full fine-tuning) the reference cache in f32:
/// agreement to 1e-4 absolute plus 2e-4 relative.
fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-4 + 2e-4 * want.abs(), "{what}: recipe {got} vs independent {want}");
}

/// Runs the recipe for 2 steps on the same batch (all pairs, no shuffle) and checks steps 1
/// and 2 against the independent flow on the base model and on the saved step-1 checkpoint.
fn wiring_case(
    name: &str,
    lora: &str,
    loss: &str,
    objective: &dyn Fn(&SequenceLogps, &SequenceLogps, TokenSum) -> afinar::objectives::PreferenceOutput,
) {
    let dir = Tmp::new(&format!("dpo-wiring-{name}"));
    let (model, data) = tiny_setup(&dir, 4);
    let out = dir.join("out");
    let yaml = tiny_yaml(&model, &data, &out, lora, loss, "")
        .replace("shuffle: true", "shuffle: false")
        .replace("warmup_steps: 1", "warmup_steps: 0")
        .replace("batch_size: 2", "batch_size: 4")
        .replace(
            "epochs: 2\nmax_steps_per_epoch: 2\ngradient_accumulation_steps: 2",
            "epochs: 2\nmax_steps_per_epoch: 1\ngradient_accumulation_steps: 1",
        );
    let cfg = common::recipe_config(&yaml, &dir, "w.yaml");
    let be = CpuBackend::new(Some(2));
    run_on_with(&be, &cfg, &mut Silent, None).unwrap();
    let rows = common::metrics_rows(&out);
    assert_eq!(rows.len(), 2);
    let tok = load_model(&be, &model, &LoadOptions::default()).unwrap().tokenizer.unwrap();
    let mut spec = DatasetSpec::new(DatasetKind::Preference, &data);
    spec.max_seq_len = 64;
    let ds = PreferenceDataset::load(&spec, &tok).unwrap();
    let all: Vec<usize> = (0..4).collect();
    let opts = LoadOptions { format: WeightFormat::F32, tokenizer: None, ..Default::default() };
    let base = load_model(&be, &model, &opts).unwrap().model;
    let (reference, _) = independent_logps(&be, &base, &ds, &all);
    let after1 = if lora.is_empty() { out.join("epoch_0") } else { out.join("epoch_0/merged") };
    let stepped = load_model(&be, &after1, &opts).unwrap().model;
    for (k, m) in [(0, &base), (1, &stepped)] {
        let (policy, nll) = independent_logps(&be, m, &ds, &all);
        let want = objective(&policy, &reference, nll);
        let row = &rows[k];
        close(common::metric(row, "loss"), want.loss, &format!("{name} step {} loss", k + 1));
        for (metric_name, v) in &want.metrics {
            // At step 1 the policy is the reference: which side wins is rounding.
            if k == 0 && *metric_name == "rewards/accuracies" && !matches!(name, "simpo" | "orpo") {
                continue;
            }
            if row.get(*metric_name).is_some() {
                close(common::metric(row, metric_name), *v, &format!("{name} step {} {metric_name}", k + 1));
            }
        }
        assert!(row.get("rewards/margins").is_some() && row.get("logps/rejected").is_some(), "{row}");
    }
    // The second step's loss is not the first's: the update reached the policy.
    assert_ne!(common::metric(&rows[0], "loss"), common::metric(&rows[1], "loss"));
}

#[test]
fn recipe_losses_equal_the_independent_flow() {
    wiring_case("sigmoid", LORA, "  kind: sigmoid\n  beta: 0.5\n  label_smoothing: 0.1\n", &|p, r, _| {
        afinar::objectives::dpo_smoothed(DpoLoss::Sigmoid, 0.5, 0.1, p, r).unwrap()
    });
    wiring_case("hinge-full", "", "  kind: hinge\n  beta: 0.5\n", &|p, r, _| {
        dpo(DpoLoss::Hinge, 0.5, p, r).unwrap()
    });
    let sp = SimpoParams { beta: 2.0, gamma: 0.3, label_smoothing: 0.0, cpo_alpha: 0.5 };
    wiring_case(
        "simpo",
        LORA,
        "  kind: simpo\n  beta: 2.0\n  simpo_gamma: 0.3\n  cpo_alpha: 0.5\n",
        &|p, _, _| simpo(&sp, p).unwrap(),
    );
    wiring_case("orpo", LORA, "  kind: orpo\n  beta: 0.2\n", &|p, _, nll| {
        orpo(&OrpoParams { beta: 0.2 }, p, nll).unwrap()
    });
}

/// The real SmolLM2-135M-Instruct with a fresh LoRA adapter: the policy is the reference, so the
/// first DPO step's loss is ln 2 and its rewards are 0.
#[test]
fn first_dpo_step_on_smollm2_is_ln2() {
    let dir = Tmp::new("dpo-smollm2");
    let gguf = asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/prefs_bilingual/train.jsonl");
    let out = dir.join("out");
    let yaml = format!(
        "recipe: dpo\noutput_dir: {}\nmodel:\n  path: {}\n  dtype: bf16\ntokenizer:\n  max_seq_len: 128\n{LORA}\
         loss:\n  kind: sigmoid\n  beta: 0.1\ndataset:\n  kind: preference\n  source: {}\n  max_rows: 8\n\
         batch_size: 4\nepochs: 1\nmax_steps_per_epoch: 1\noptimizer:\n  lr: 1e-3\nthreads: 2\n\
         merge_adapter: false\nsave_adapter_weights_only: true\n",
        out.display(),
        gguf.display(),
        data.display()
    );
    let cfg = common::recipe_config(&yaml, &dir, "smollm2.yaml");
    let be = CpuBackend::new(Some(2));
    run_on_with(&be, &cfg, &mut Silent, None).unwrap();
    let row = &common::metrics_rows(&out)[0];
    let loss = common::metric(row, "loss");
    assert!((loss - std::f64::consts::LN_2).abs() < 1e-6, "first step loss {loss}, not ln 2: {row}");
    for k in ["rewards/chosen", "rewards/rejected", "rewards/margins"] {
        assert!(common::metric(row, k).abs() < 1e-6, "{k}: {row}");
    }
    assert!(common::metric(row, "logps/chosen") < 0.0 && common::metric(row, "grad_norm") > 0.0, "{row}");
    assert!(out.join("epoch_0/adapter_model.safetensors").exists());
}

fn config_error(yaml: &str, dir: &Path) -> String {
    let path = dir.join("bad.yaml");
    std::fs::write(&path, yaml).unwrap();
    RecipeConfig::load(path.to_str().unwrap(), &[] as &[&str])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| panic!("accepted:\n{yaml}"))
}

#[test]
fn bad_configs_and_data_give_named_errors() {
    let dir = Tmp::new("dpo-bad");
    let (model, data) = tiny_setup(&dir, 4);
    let out = dir.join("out");
    let good = tiny_yaml(&model, &data, &out, LORA, "  kind: sigmoid\n", "");
    let cases: &[(&str, &str, &str)] = &[
        (
            "  kind: sigmoid\n",
            "  kind: sigmod\n",
            "loss.kind: expected one of sigmoid, ipo, hinge, simpo, orpo, got \"sigmod\"",
        ),
        ("  kind: sigmoid\n", "  kind: sigmoid\n  bta: 0.1\n", "did you mean `beta`?"),
        (
            "  kind: sigmoid\n",
            "  kind: sigmoid\n  simpo_gamma: 0.5\n",
            "loss.simpo_gamma: applies to loss.kind simpo only",
        ),
        (
            "  kind: sigmoid\n",
            "  kind: hinge\n  label_smoothing: 0.2\n",
            "loss.label_smoothing: applies to loss.kind sigmoid and simpo only",
        ),
        ("  kind: sigmoid\n", "  kind: sigmoid\n  beta: 0\n", "loss.beta"),
        (
            "  kind: sigmoid\n",
            "  kind: orpo\nreference:\n  kind: adapters_off\n",
            "reference.kind: loss.kind orpo uses no reference model",
        ),
        ("kind: preference", "kind: instruct", "dataset.kind"),
    ];
    for (from, to, want) in cases {
        assert!(good.contains(from));
        let e = config_error(&good.replacen(from, to, 1), &dir);
        assert!(e.contains(want), "{to:?}: {e}");
        assert!(e.contains("bad.yaml:"), "{e}");
    }
    // adapters_off without adapters.
    let full = tiny_yaml(&model, &data, &out, "", "  kind: sigmoid\nreference:\n  kind: adapters_off\n", "");
    let e = config_error(&full, &dir);
    assert!(e.contains("reference.kind: adapters_off needs LoRA adapters"), "{e}");
    assert!(e.contains("bad.yaml:"), "{e}");
    // A row without its rejected response: the file and the row are named.
    let broken = dir.join("broken.jsonl");
    std::fs::write(&broken, "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\", \"chosen\": \"b\"}\n").unwrap();
    let cfg = common::recipe_config(
        &good.replace(&data.display().to_string(), &broken.display().to_string()),
        &dir,
        "broken.yaml",
    );
    let be = CpuBackend::new(Some(2));
    let e = run_on_with(&be, &cfg, &mut Silent, None).err().unwrap().to_string();
    assert!(e.contains("broken.jsonl") && e.contains("2") && e.contains("rejected"), "{e}");
    // optimizer_in_bwd is refused.
    let e = config_error(
        &good
            .replace("clip_grad_norm: 1.0\n", "optimizer_in_bwd: true\n")
            .replace("gradient_accumulation_steps: 2", "gradient_accumulation_steps: 1"),
        &dir,
    );
    assert!(e.contains("optimizer_in_bwd: is not available with dpo"), "{e}");
}
