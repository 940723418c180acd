//! Qwen3 through the training objectives, on a tiny random Qwen3 (random init through afinar's
//! builder: hidden 64, 4 heads of head_dim 32 so head_dim ≠ hidden/heads, q/k norms, tied
//! embeddings) saved as a Hugging Face folder with the real Qwen3 tokenizer:
//! - `dpo` with LoRA: the first step's loss is ln 2 (a fresh adapter: policy = reference), a few
//!   steps run and the adapter is saved; `dpo` with QLoRA (NF4 base) runs a step;
//! - `knowledge_distillation` from a Qwen3 teacher that is the student itself: the KL of identical
//!   distributions (reverse KL, JSD) is 0 and the forward loss is finite;
//! - `full_finetune` with `model.dtype: bf16`: one step moves the q/k norm gains;
//! - eval perplexity through the eval config API equals exp of the mean NLL from the logits;
//! - `grpo` with LoRA and a KL term (reference = adapters off): two steps through the chat
//!   template, KL exactly 0 while the adapter is fresh and above 0 after a step.

mod common;

use std::path::{Path, PathBuf};

use afinar::checkpoint::safetensors::SafetensorsCheckpoint;
use afinar::config::RecipeConfig;
use afinar::engine::{CpuBackend, WeightFormat};
use afinar::eval::{run_tasks, EvalConfig, TaskResult};
use afinar::models::{load_model, Family, LlamaConfig, LoadOptions, Logits};
use afinar::recipes::metrics::Silent;
use common::{asset, instruct_file, metrics_rows, preference_file, save_random_model, Tmp};

fn tiny_qwen3() -> LlamaConfig {
    LlamaConfig {
        family: Family::Qwen3,
        vocab_size: 151_936,
        dim: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 32,
        ffn_dim: 128,
        norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        rope_scaling: None,
        max_seq_len: 256,
        tie_embeddings: true,
    }
}

/// The tiny Qwen3 folder (seed `seed`) in `dir/name`.
fn qwen3_folder(be: &CpuBackend, dir: &Path, name: &str, seed: u64) -> PathBuf {
    let path = dir.join(name);
    save_random_model(be, tiny_qwen3(), seed, &asset("qwen3-tokenizer/tokenizer.json"), &path);
    path
}

fn config(dir: &Path, name: &str, yaml: &str) -> RecipeConfig {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    RecipeConfig::load(path.to_str().unwrap(), &[] as &[&str]).unwrap_or_else(|e| panic!("{e}"))
}

const LORA: &str =
    "lora:\n  rank: 4\n  alpha: 8\n  target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]\n";

fn dpo_yaml(model: &Path, data: &Path, out: &Path, qlora: bool, steps: usize) -> String {
    let (dtype, nf4) = if qlora { ("bf16", "  quantize_base: true\n") } else { ("fp32", "") };
    format!(
        "recipe: dpo\noutput_dir: {}\nmodel:\n  path: {}\n  dtype: {dtype}\ntokenizer:\n  max_seq_len: 64\n{LORA}{nf4}\
         loss:\n  kind: sigmoid\n  beta: 0.1\ndataset:\n  kind: preference\n  source: {}\nseed: 3\nshuffle: false\n\
         batch_size: 2\nepochs: 1\nmax_steps_per_epoch: {steps}\noptimizer:\n  lr: 1e-2\nthreads: 2\n\
         log_every_n_steps: 1\nmerge_adapter: false\nsave_adapter_weights_only: true\n",
        out.display(),
        model.display(),
        data.display()
    )
}

#[test]
fn qwen3_lora_and_qlora_dpo() {
    let dir = Tmp::new("qwen3-dpo");
    let be = CpuBackend::new(Some(2));
    let model = qwen3_folder(&be, &dir, "qwen3", 11);
    let data = preference_file(&dir, 6);

    // LoRA: a fresh adapter leaves the policy equal to the reference (adapters off).
    let out = dir.join("lora");
    let cfg = config(&dir, "lora.yaml", &dpo_yaml(&model, &data, &out, false, 3));
    let s = afinar::recipes::dpo::run_on(&be, &cfg, &mut Silent).unwrap();
    assert_eq!(s.steps, 3);
    let rows = metrics_rows(&out);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let first = &rows[0];
    let loss = common::metric(first, "loss");
    assert!((loss - std::f64::consts::LN_2).abs() < 1e-6, "first step loss {loss}, not ln 2: {first}");
    for k in ["rewards/chosen", "rewards/rejected", "rewards/margins"] {
        assert!(common::metric(first, k).abs() < 1e-6, "{k}: {first}");
    }
    assert!(
        common::metric(first, "logps/chosen") < 0.0 && common::metric(first, "grad_norm") > 0.0,
        "{first}"
    );
    // The adapter moved the policy away from the reference after the first update.
    assert_ne!(common::metric(&rows[1], "loss"), loss, "{rows:?}");
    assert!(rows.iter().all(|r| common::metric(r, "loss").is_finite()), "{rows:?}");
    let adapter = out.join("epoch_0/adapter_model.safetensors");
    let file = SafetensorsCheckpoint::open(&adapter).unwrap();
    let b = file.tensor("base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight").unwrap();
    assert_eq!(b.shape, [4 * 32, 4], "q_proj's B: n_heads · head_dim rows");
    assert!(b.to_f32().unwrap().iter().any(|&v| v != 0.0), "the saved adapter's B is still zero");

    // QLoRA: the frozen projections in NF4 (blocks of 64), the rest in bf16.
    let out = dir.join("qlora");
    let cfg = config(&dir, "qlora.yaml", &dpo_yaml(&model, &data, &out, true, 1));
    let s = afinar::recipes::dpo::run_on(&be, &cfg, &mut Silent).unwrap();
    assert_eq!(s.steps, 1);
    let row = &metrics_rows(&out)[0];
    let loss = common::metric(row, "loss");
    assert!((loss - std::f64::consts::LN_2).abs() < 1e-6, "QLoRA first step loss {loss}: {row}");
    assert!(common::metric(row, "grad_norm") > 0.0 && common::metric(row, "grad_norm").is_finite(), "{row}");
    assert!(out.join("epoch_0/adapter_model.safetensors").exists());
}

#[test]
fn qwen3_distilled_from_itself_has_zero_kl() {
    let dir = Tmp::new("qwen3-kd");
    let be = CpuBackend::new(Some(2));
    let student = qwen3_folder(&be, &dir, "student", 5);
    let data = instruct_file(&dir, 8);
    let mut kd = Vec::new();
    for divergence in ["forward_kl", "reverse_kl", "jsd"] {
        let out = dir.join(divergence);
        let yaml = format!(
            "recipe: knowledge_distillation\noutput_dir: {}\nmodel: {{path: {s}, dtype: fp32}}\n\
             tokenizer: {{max_seq_len: 48}}\nteacher:\n  path: {s}\n  dtype: as_stored\n\
             dataset: {{kind: instruct, source: {}}}\nseed: 3\nbatch_size: 2\nepochs: 1\nmax_steps_per_epoch: 1\n\
             optimizer: {{lr: 1e-2}}\nthreads: 2\nkd_ratio: 0.5\nkd_loss: {divergence}\n",
            out.display(),
            data.display(),
            s = student.display(),
        );
        let cfg = config(&dir, &format!("{divergence}.yaml"), &yaml);
        let s = afinar::recipes::knowledge_distillation::run_on(&be, &cfg, &mut Silent, |p| p).unwrap();
        assert_eq!(s.steps, 1);
        let row = &metrics_rows(&out)[0];
        let (loss, class, k) =
            (common::metric(row, "loss"), common::metric(row, "class_loss"), common::metric(row, "kd_loss"));
        assert!(loss.is_finite() && class.is_finite() && k.is_finite(), "{divergence}: {row}");
        assert!((loss - (0.5 * class + 0.5 * k)).abs() <= 1e-5 * loss.abs(), "{divergence}: {row}");
        kd.push(k);
    }
    // torchtune's forward "KL" is the cross-entropy −Σ p_t log p_s: with p_s = p_t it is the
    // teacher's entropy, near ln(vocab) for a random model, not 0.
    assert!(kd[0] > 1.0 && kd[0] <= (151_936f64).ln() + 1e-3, "forward_kl {}", kd[0]);
    // KL(p_s ‖ p_t) and the Jensen-Shannon divergence of identical distributions.
    assert!(kd[1].abs() < 1e-5, "reverse_kl of a model against itself: {}", kd[1]);
    assert!(kd[2].abs() < 1e-5, "jsd of a model against itself: {}", kd[2]);
}

#[test]
fn qwen3_full_finetune_in_bf16_moves_the_qk_norms() {
    let dir = Tmp::new("qwen3-full");
    let be = CpuBackend::new(Some(2));
    let model = qwen3_folder(&be, &dir, "qwen3", 7);
    let data = instruct_file(&dir, 8);
    let out = dir.join("out");
    let yaml = format!(
        "recipe: full_finetune\noutput_dir: {}\nmodel:\n  path: {}\n  dtype: bf16\ntokenizer:\n  max_seq_len: 48\n\
         dataset:\n  kind: instruct\n  source: {}\nseed: 3\nbatch_size: 2\nepochs: 1\nmax_steps_per_epoch: 1\n\
         optimizer:\n  lr: 1e-2\nthreads: 2\n",
        out.display(),
        model.display(),
        data.display()
    );
    let cfg = config(&dir, "full.yaml", &yaml);
    let s = afinar::recipes::run::run_on(&be, &cfg, &mut Silent).unwrap();
    assert_eq!(s.steps, 1);
    let row = &metrics_rows(&out)[0];
    assert!(common::metric(row, "loss").is_finite() && common::metric(row, "grad_norm") > 0.0, "{row}");
    let before = SafetensorsCheckpoint::open(model.join("model.safetensors")).unwrap();
    let after = SafetensorsCheckpoint::open(out.join("epoch_0/model.safetensors")).unwrap();
    for l in 0..2 {
        for n in ["q_norm", "k_norm"] {
            let name = format!("model.layers.{l}.self_attn.{n}.weight");
            let a = before.tensor(&name).unwrap().to_f32().unwrap();
            let b = after.tensor(&name).unwrap().to_f32().unwrap();
            assert_eq!(a.len(), 32, "{name}: one gain per head dimension");
            // AdamW's first step moves every weight with a nonzero gradient by about lr.
            let moved = a.iter().zip(&b).filter(|(x, y)| (*x - *y).abs() > 1e-3).count();
            assert!(moved > a.len() / 2, "{name}: {moved} of {} gains moved: {a:?} → {b:?}", a.len());
        }
    }
}

#[test]
fn qwen3_eval_perplexity_equals_the_mean_nll_of_its_logits() {
    let dir = Tmp::new("qwen3-eval");
    let be = CpuBackend::new(Some(2));
    let model = qwen3_folder(&be, &dir, "qwen3", 3);
    let text = "Había una vez un pequeño modelo que aprendía a hablar. The end.";
    std::fs::write(dir.join("text.txt"), text).unwrap();
    std::fs::write(
        dir.join("eval.yaml"),
        "tasks:\n  - name: story\n    language: es\n    kind: perplexity\n    file: text.txt\n    max_length: 64\n",
    )
    .unwrap();
    let cfg = EvalConfig::load(&dir.join("eval.yaml")).unwrap();
    let opts = LoadOptions { format: WeightFormat::F32, ..Default::default() };
    let loaded = load_model(&be, &model, &opts).unwrap();
    assert_eq!(loaded.model.config.family, Family::Qwen3);
    let tok = loaded.tokenizer.as_ref().unwrap();
    let report = run_tasks(&be, &loaded.model, tok, "qwen3", &cfg.tasks, |_, _, _| {}).unwrap();
    let TaskResult::Perplexity(r) = &report.tasks[0].result else { panic!("not a perplexity result") };

    // Independently: one forward over the whole text, log-softmax in f64.
    let ids = tok.encode(text, tok.add_bos_default()).unwrap();
    assert!(ids.len() < 64, "one window");
    assert_eq!((r.tokens, r.windows, r.scored_tokens), (ids.len(), 1, ids.len() - 1));
    let v = loaded.model.config.vocab_size;
    let logits = loaded.model.forward(&be, &ids, 1, ids.len(), None, Logits::All).unwrap();
    let mut nll = 0.0f64;
    for t in 0..ids.len() - 1 {
        let row = &logits[t * v..(t + 1) * v];
        let max = row.iter().map(|&x| x as f64).fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        nll += lse - row[ids[t + 1] as usize] as f64;
    }
    let mean = nll / (ids.len() - 1) as f64;
    assert!((r.mean_nll - mean).abs() < 1e-4, "mean NLL {} vs {mean}", r.mean_nll);
    assert!((r.perplexity / mean.exp() - 1.0).abs() < 1e-4, "perplexity {} vs {}", r.perplexity, mean.exp());
    assert!(r.perplexity.is_finite() && r.perplexity > 1.0, "{r:?}");
}

#[test]
fn qwen3_lora_grpo_with_the_kl_term() {
    let dir = Tmp::new("qwen3-grpo");
    let be = CpuBackend::new(Some(2));
    let model = qwen3_folder(&be, &dir, "qwen3", 13);
    let rows: Vec<String> = (0..4)
        .map(|i| {
            let q =
                if i % 2 == 0 { format!("What is {i} plus 2?") } else { format!("¿Cuánto es {i} más 2?") };
            serde_json::json!({"prompt": [{"role": "user", "content": q}], "answer": i + 2}).to_string()
        })
        .collect();
    let data = dir.join("prompts.jsonl");
    std::fs::write(&data, rows.join("\n")).unwrap();
    // A reward that differs between the completions of a group (the length of their JSON line).
    let script = dir.join("reward.sh");
    std::fs::write(&script, "#!/bin/sh\nawk '{ print (length($0) % 7) / 7 }'\n").unwrap();
    let out = dir.join("out");
    let yaml = format!(
        "recipe: grpo\noutput_dir: {}\nmodel:\n  path: {}\n  dtype: fp32\ntokenizer:\n  max_seq_len: 128\n{LORA}\
         grpo:\n  num_generations: 4\n  max_completion_length: 6\n  top_k: 50\n  beta: 0.04\n\
         rewards:\n  - {{kind: numeric_match, name: correct, weight: 1.0}}\n  \
         - {{kind: command, weight: 0.5, command: [sh, {}]}}\ndataset:\n  kind: prompt\n  source: {}\n\
         seed: 3\nshuffle: false\nbatch_size: 2\nepochs: 1\nmax_steps_per_epoch: 2\n\
         optimizer:\n  lr: 3e-2\nlr_scheduler:\n  kind: constant\n  warmup_steps: 0\nthreads: 2\n\
         log_every_n_steps: 1\nmerge_adapter: false\nsave_adapter_weights_only: true\n",
        out.display(),
        model.display(),
        script.display(),
        data.display()
    );
    let cfg = config(&dir, "grpo.yaml", &yaml);
    afinar::recipes::grpo::run_on(&be, &cfg, &mut Silent).unwrap_or_else(|e| panic!("{e}"));
    let rows = metrics_rows(&out);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        assert!(common::metric(r, "loss").is_finite(), "{r}");
    }
    assert_eq!(common::metric(&rows[0], "kl"), 0.0, "a fresh adapter is the reference: {}", rows[0]);
    assert!(common::metric(&rows[1], "kl") > 0.0, "after a step the policy left the reference: {}", rows[1]);
    assert!(out.join("epoch_0/adapter_model.safetensors").exists());
}
