//! The `grpo` recipe end to end on a tiny random Llama-3-shaped model with the real Llama-3
//! tokenizer: two steps with the built-in rewards (numeric_match, format, language) and an
//! external reward command (a POSIX sh/awk script written by the test); metrics and the
//! completions log; a killed and resumed run equals an uninterrupted one bit for bit (killed
//! between the two iterations of a generation, and at a generation boundary), its
//! completions.jsonl included (no duplicate lines); with beta 0 no token goes through the
//! reference; bad configs and failing reward commands give named errors.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use afinar::checkpoint::DType;
use afinar::config::RecipeConfig;
use afinar::engine::{CpuBackend, WeightFormat};
use afinar::models::Llama;
use afinar::recipes::grpo::run_on_with;
use afinar::recipes::metrics::Silent;
use afinar::recipes::save::{FullSave, ModelSource};
use afinar::recipes::state::SaveTarget;
use afinar::tokenizer::Tokenizer;
use common::{asset, Tmp};

/// A tiny random model (HF folder, Llama-3 tokenizer), a prompt file of `n` rows (`prompt` a
/// message list, with `answer` and `lang`), and a reward script (awk: a score from the length of each JSON
/// line, so that completions of one group score differently), in `dir`.
fn tiny_setup(dir: &Path, n: usize) -> (PathBuf, PathBuf, PathBuf) {
    let be = CpuBackend::new(Some(2));
    let tok = Tokenizer::from_file(&asset("llama3-tokenizer/tokenizer.json")).unwrap();
    let m = Llama::random(&be, common::tiny_llama31(), 5, WeightFormat::F32).unwrap();
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
    let rows: Vec<String> = (0..n)
        .map(|i| {
            let (q, lang) = if i % 2 == 0 {
                (format!("What is {i} plus 2? End with 'Answer: N'."), "en")
            } else {
                (format!("¿Cuánto es {i} más 2? Termina con 'Respuesta: N'."), "es")
            };
            serde_json::json!({
                "prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q}],
                "answer": i + 2,
                "lang": lang,
            })
            .to_string()
        })
        .collect();
    let data = dir.join("prompts.jsonl");
    std::fs::write(&data, rows.join("\n")).unwrap();
    let script = dir.join("reward.sh");
    std::fs::write(&script, "#!/bin/sh\nawk '{ print (length($0) % 7) / 7 }'\n").unwrap();
    (model_dir, data, script)
}

const LORA: &str = "lora:\n  rank: 4\n  alpha: 8\n  target_modules: [q_proj, v_proj, down_proj]\n";

/// A `grpo` config for the tiny model; `grpo` is the grpo section's extra lines, `rewards` the
/// `rewards:` list's items, `extra` more top-level lines.
fn tiny_yaml(
    model: &Path,
    data: &Path,
    out: &Path,
    lora: &str,
    grpo: &str,
    rewards: &str,
    extra: &str,
) -> String {
    format!(
        "recipe: grpo\noutput_dir: {}\nmodel:\n  path: {}\n  dtype: fp32\ntokenizer:\n  max_seq_len: 128\n{lora}\
         grpo:\n  num_generations: 4\n  max_completion_length: 6\n  top_k: 50\n  log_completions_every: 1\n{grpo}\
         rewards:\n{rewards}dataset:\n  kind: prompt\n  source: {}\nseed: 3\nshuffle: true\nbatch_size: 2\n\
         epochs: 1\nmax_steps_per_epoch: 4\ngradient_accumulation_steps: 2\noptimizer:\n  lr: 3e-2\n\
         lr_scheduler:\n  kind: constant\n  warmup_steps: 0\nclip_grad_norm: 1.0\nsave_every_n_steps: 1\n\
         log_every_n_steps: 1\nthreads: 2\n{extra}",
        out.display(),
        model.display(),
        data.display()
    )
}

/// The built-in rewards (weights 1, 0.2, 0.1) and the awk command (weight 0.5).
fn command_rewards(script: &Path) -> String {
    format!(
        "  - {{kind: numeric_match, name: correct, weight: 1.0}}\n  - kind: format\n    weight: 0.2\n    \
         pattern: '(?im)^\\s*(?:answer|respuesta)\\s*:'\n  - {{kind: language, weight: 0.1}}\n  \
         - {{kind: command, weight: 0.5, command: [sh, {}]}}\n",
        script.display()
    )
}

/// The weights of [`command_rewards`], by name.
const WEIGHTS: [(&str, f64); 4] = [("correct", 1.0), ("regex", 0.2), ("language", 0.1), ("command", 0.5)];

#[test]
fn two_steps_with_the_builtin_and_the_command_reward() {
    let dir = Tmp::new("grpo-two");
    let (model, data, script) = tiny_setup(&dir, 6);
    let be = CpuBackend::new(Some(2));
    let out = dir.join("out");
    let yaml = tiny_yaml(&model, &data, &out, LORA, "  beta: 0.04\n", &command_rewards(&script), "")
        .replace("max_steps_per_epoch: 4", "max_steps_per_epoch: 2");
    let cfg = common::recipe_config(&yaml, &dir, "two.yaml");
    let s = run_on_with(&be, &cfg, &mut Silent, None).unwrap();
    assert_eq!(s.steps, 2);
    let rows = common::metrics_rows(&out);
    assert_eq!(rows.len(), 2);
    for row in &rows {
        for key in [
            "reward",
            "reward_std",
            "rewards/correct/mean",
            "rewards/correct/std",
            "rewards/regex/mean",
            "rewards/language/mean",
            "rewards/language/std",
            "rewards/command/mean",
            "rewards/command/std",
        ] {
            let v = common::metric(row, key);
            assert!((0.0..=1.8).contains(&v), "{key} {v}: {row}");
        }
        // the awk reward varies with the completion: groups are not all flat
        assert!(common::metric(row, "rewards/command/std") > 0.0, "{row}");
        assert!(common::metric(row, "frac_reward_zero_std") < 1.0, "{row}");
        let mean_len = common::metric(row, "completions/mean_length");
        assert!(mean_len > 0.0 && mean_len <= 7.0, "{row}");
        assert!(common::metric(row, "completions/max_length") <= 7.0, "{row}");
        assert!((0.0..=1.0).contains(&common::metric(row, "completions/clipped_ratio")), "{row}");
        assert!(
            common::metric(row, "gen_tokens_per_sec") > 0.0
                && common::metric(row, "train_tokens_per_sec") > 0.0
        );
        assert!(common::metric(row, "reference_tokens") > 0.0, "beta 0.04 runs the reference: {row}");
        assert!(common::metric(row, "kl") >= 0.0 && common::metric(row, "kl").is_finite(), "{row}");
        for key in ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"] {
            assert!((0.0..=1.0).contains(&common::metric(row, key)), "{row}");
        }
        assert!(common::metric(row, "loss").is_finite() && common::metric(row, "grad_norm") > 0.0, "{row}");
    }
    // step 1: the adapters are fresh (B = 0), so the policy is the reference: KL exactly 0
    assert_eq!(common::metric(&rows[0], "kl"), 0.0);
    assert!(common::metric(&rows[1], "kl") > 0.0, "{}", rows[1]);
    // the completions log: 2 generations × 2 prompts × 4 completions
    let log = std::fs::read_to_string(out.join("completions.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 16);
    for l in &lines {
        assert!(l["prompt"].as_str().unwrap().contains("<|start_header_id|>user"), "{l}");
        assert!(l["completion"].is_string() && l["rewards"]["command"].is_number(), "{l}");
        let r: f64 = WEIGHTS.iter().map(|(n, w)| w * l["rewards"][n].as_f64().unwrap()).sum();
        assert!((l["reward"].as_f64().unwrap() - r).abs() < 1e-12, "{l}");
    }
    // each reward's mean in the metrics is the mean over the logged completions of its step
    for (step, row) in rows.iter().enumerate() {
        for (n, _) in WEIGHTS {
            let g = &lines[step * 8..(step + 1) * 8];
            let mean = g.iter().map(|l| l["rewards"][n].as_f64().unwrap()).sum::<f64>() / 8.0;
            assert!((common::metric(row, &format!("rewards/{n}/mean")) - mean).abs() < 1e-9, "{n}: {row}");
        }
    }
    assert!(
        out.join("step_2/adapter_model.safetensors").exists()
            || out.join("epoch_0/adapter_model.safetensors").exists()
    );
}

#[test]
fn killed_and_resumed_runs_equal_the_uninterrupted_run() {
    let dir = Tmp::new("grpo-resume");
    let (model, data, script) = tiny_setup(&dir, 6);
    let be = CpuBackend::new(Some(2));
    let grpo = "  beta: 0.04\n  num_iterations: 2\n  loss_type: grpo\n  epsilon_high: 0.3\n";
    let rewards = command_rewards(&script);
    let whole = dir.join("whole");
    let cfg = common::recipe_config(
        &tiny_yaml(&model, &data, &whole, LORA, grpo, &rewards, ""),
        &dir,
        "whole.yaml",
    );
    assert_eq!(run_on_with(&be, &cfg, &mut Silent, None).unwrap().steps, 4);
    let killed = dir.join("killed");
    let cfg = common::recipe_config(
        &tiny_yaml(&model, &data, &killed, LORA, grpo, &rewards, ""),
        &dir,
        "killed.yaml",
    );
    // killed after step 1: between the two iterations over the first generated batch
    assert_eq!(run_on_with(&be, &cfg, &mut Silent, Some(1)).unwrap().steps, 1);
    let resumed = tiny_yaml(&model, &data, &killed, LORA, grpo, &rewards, "resume_from_checkpoint: true\n");
    let cfg = common::recipe_config(&resumed, &dir, "resumed.yaml");
    // then after step 2: at a generation boundary
    assert_eq!(run_on_with(&be, &cfg, &mut Silent, Some(1)).unwrap().steps, 2);
    assert_eq!(run_on_with(&be, &cfg, &mut Silent, None).unwrap().steps, 4);
    let (a, b) = (common::metrics_rows(&whole), common::metrics_rows(&killed));
    assert_eq!((a.len(), b.len()), (4, 4));
    for (x, y) in a.iter().zip(&b) {
        for key in ["loss", "grad_norm", "reward", "rewards/command/mean", "kl", "clip_ratio/region_mean"] {
            assert_eq!(
                common::metric(x, key).to_bits(),
                common::metric(y, key).to_bits(),
                "{key} at step {}",
                x["step"]
            );
        }
    }
    // the second iteration over a batch sees ratios ≠ 1 after the first step
    assert!(common::metric(&a[1], "loss") != common::metric(&a[0], "loss"));
    // completions.jsonl: the same lines, none repeated by the resumed runs
    let (la, lb) = (
        std::fs::read_to_string(whole.join("completions.jsonl")).unwrap(),
        std::fs::read_to_string(killed.join("completions.jsonl")).unwrap(),
    );
    assert_eq!(la.lines().count(), 2 * 2 * 4, "2 generations × 2 prompts × 4 completions");
    assert_eq!(la, lb, "completions.jsonl of the killed and resumed run");
    // Killed after generation 2 was sampled and logged (step 3) but saved only at step 2: the
    // resumed run samples it again and replaces its lines rather than appending a second copy.
    let gappy = dir.join("gappy");
    let every2 = |extra: &str| {
        tiny_yaml(&model, &data, &gappy, LORA, grpo, &rewards, extra)
            .replace("save_every_n_steps: 1", "save_every_n_steps: 2")
    };
    let cfg = common::recipe_config(&every2(""), &dir, "gappy.yaml");
    assert_eq!(run_on_with(&be, &cfg, &mut Silent, Some(3)).unwrap().steps, 3);
    let logged = std::fs::read_to_string(gappy.join("completions.jsonl")).unwrap();
    assert_eq!(logged, la, "both generations logged before the kill");
    let cfg = common::recipe_config(&every2("resume_from_checkpoint: true\n"), &dir, "gappy_resumed.yaml");
    assert_eq!(run_on_with(&be, &cfg, &mut Silent, None).unwrap().steps, 4);
    assert_eq!(std::fs::read_to_string(gappy.join("completions.jsonl")).unwrap(), la);
    let (fa, fb) = (common::safetensors_files(&whole), common::safetensors_files(&killed));
    assert!(fa.len() >= 4, "{:?}", fa.iter().map(|f| &f.0).collect::<Vec<_>>());
    assert_eq!(fa.iter().map(|f| &f.0).collect::<Vec<_>>(), fb.iter().map(|f| &f.0).collect::<Vec<_>>());
    for ((n, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{n} differs between the whole and the resumed run");
    }
}

#[test]
fn beta_zero_runs_no_reference_and_full_finetuning_trains() {
    let dir = Tmp::new("grpo-beta0");
    let (model, data, script) = tiny_setup(&dir, 4);
    let be = CpuBackend::new(Some(2));
    for (name, lora) in [("lora", LORA), ("full", "")] {
        let out = dir.join(name);
        let yaml = tiny_yaml(&model, &data, &out, lora, "  loss_type: bnpo\n", &command_rewards(&script), "")
            .replace("max_steps_per_epoch: 4", "max_steps_per_epoch: 1");
        let cfg = common::recipe_config(&yaml, &dir, &format!("{name}.yaml"));
        assert_eq!(run_on_with(&be, &cfg, &mut Silent, None).unwrap().steps, 1);
        let rows = common::metrics_rows(&out);
        assert_eq!(common::metric(&rows[0], "reference_tokens"), 0.0, "{name}");
        assert!(rows[0].get("kl").is_none(), "{name}: {}", rows[0]);
        assert!(common::metric(&rows[0], "grad_norm") > 0.0, "{name}: {}", rows[0]);
    }
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
fn bad_configs_and_failing_rewards_give_named_errors() {
    let dir = Tmp::new("grpo-bad");
    let (model, data, script) = tiny_setup(&dir, 4);
    let out = dir.join("out");
    let rewards = command_rewards(&script);
    let good = tiny_yaml(&model, &data, &out, LORA, "", &rewards, "");
    common::recipe_config(&good, &dir, "good.yaml");
    let cases: &[(&str, &str, &str)] = &[
        (LORA, "", "@@beta"),
        (
            "  top_k: 50\n",
            "  top_k: 50\n  loss_type: ppo\n",
            "grpo.loss_type: expected one of grpo, bnpo, dr_grpo, dapo",
        ),
        ("  top_k: 50\n", "  top_k: 50\n  num_generation: 4\n", "did you mean `num_generations`?"),
        ("  num_generations: 4\n", "  num_generations: 1\n", "grpo.num_generations: expected an integer ≥ 2"),
        ("  top_k: 50\n", "  top_k: 50\n  temperature: 0\n", "grpo.temperature: expected a number > 0"),
        (
            "gradient_accumulation_steps: 2",
            "gradient_accumulation_steps: 3",
            "do not split into 3 equal micro-batches",
        ),
        ("kind: numeric_match", "kind: numeric_matc", "rewards[0].kind"),
        (
            "{kind: language, weight: 0.1}",
            "{kind: language, weight: -0.1}",
            "rewards[2].weight: expected a number ≥ 0",
        ),
        (
            "  top_k: 50\n",
            "  top_k: 50\n  stop: [\"ok\", 3]\n",
            "grpo.stop: [1]: expected a non-empty stop string",
        ),
        ("kind: prompt", "kind: chat", "dataset.kind"),
    ];
    for (from, to, want) in cases {
        let yaml = if *want == "@@beta" {
            // full fine-tuning (no lora section) with a KL term
            good.replace(LORA, "").replace("  top_k: 50\n", "  top_k: 50\n  beta: 0.1\n")
        } else {
            assert!(good.contains(from), "{from}");
            good.replacen(from, to, 1)
        };
        let e = config_error(&yaml, &dir);
        let want =
            if *want == "@@beta" { "the frozen reference for full fine-tuning needs beta: 0" } else { want };
        assert!(e.contains(want), "want {want:?} in:\n{e}");
    }
    let no_rewards = tiny_yaml(&model, &data, &out, LORA, "", "", "").replace("rewards:\n", "");
    let e = config_error(&no_rewards, &dir);
    assert!(e.contains("rewards") && e.contains("missing"), "{e}");
    // several stop strings are accepted
    let stops = good.replacen("  top_k: 50\n", "  top_k: 50\n  stop: [\"\\nQ:\", \"###\"]\n", 1);
    let cfg = common::recipe_config(&stops, &dir, "stops.yaml");
    assert_eq!(afinar::recipes::grpo::settings(&cfg).stop, ["\nQ:", "###"]);

    // Reward commands that fail: each a named error, no panic.
    let be = CpuBackend::new(Some(2));
    let scripts: &[(&str, &str)] = &[
        ("echo broken >&2; exit 3", "exited with status 3"),
        ("head -n 1 >/dev/null; echo 1", "wrote 1 line on stdout for 8 completions"),
        ("awk '{ print \"x\" }'", "stdout line 1 (completion 0, dataset row"),
        ("awk '{ print \"nan\" }'", "expected a finite number"),
        ("sleep 5", "did not finish within timeout_s = 1 s"),
    ];
    for (i, (body, want)) in scripts.iter().enumerate() {
        let path = dir.join(format!("bad{i}.sh"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        let rewards = format!("  - {{kind: command, command: [sh, {}], timeout_s: 1}}\n", path.display());
        let out = dir.join(format!("out{i}"));
        let cfg = common::recipe_config(
            &tiny_yaml(&model, &data, &out, LORA, "", &rewards, ""),
            &dir,
            "badcmd.yaml",
        );
        let e = run_on_with(&be, &cfg, &mut Silent, None).unwrap_err().to_string();
        assert!(e.contains("reward command (command") && e.contains(want), "want {want:?} in:\n{e}");
    }
}

#[test]
fn eval_reward_task_scores_held_out_prompts_per_language() {
    use afinar::eval::{run_tasks, EvalConfig, TaskResult};
    use afinar::models::{load_model, LoadOptions};
    let dir = Tmp::new("grpo-eval");
    let (model, data, script) = tiny_setup(&dir, 6);
    let yaml = format!(
        "tasks:\n  - name: arith\n    language: en\n    kind: reward\n    file: {d}\n    max_new_tokens: 5\n    \
         rewards:\n      - {{kind: numeric_match, weight: 1.0}}\n      - {{kind: command, weight: 0.5, command: [sh, {s}]}}\n  \
         - name: arith\n    language: es\n    kind: reward\n    file: {d}\n    max_new_tokens: 5\n    \
         rewards:\n      - {{kind: numeric_match, weight: 1.0}}\n      - {{kind: command, weight: 0.5, command: [sh, {s}]}}\n",
        d = data.display(),
        s = script.display()
    );
    let cfg = EvalConfig::parse(&yaml, &dir.join("eval.yaml")).unwrap();
    let be = CpuBackend::new(Some(2));
    let loaded =
        load_model(&be, &model, &LoadOptions { format: WeightFormat::F32, ..Default::default() }).unwrap();
    let tok = loaded.tokenizer.unwrap();
    let report = run_tasks(&be, &loaded.model, &tok, "tiny", &cfg.tasks, |_, _, _| {}).unwrap();
    for (t, lang) in report.tasks.iter().zip(["en", "es"]) {
        let TaskResult::Reward(r) = &t.result else { panic!("not a reward result") };
        assert_eq!(t.language, lang);
        // 6 alternating rows: 3 per language, the right ones
        assert_eq!(r.items_scored, 3);
        let rows: Vec<usize> = r.items.iter().map(|i| i.row).collect();
        assert_eq!(rows, if lang == "en" { vec![0, 2, 4] } else { vec![1, 3, 5] });
        let mean = r.items.iter().map(|i| i.reward).sum::<f64>() / 3.0;
        assert!((r.mean_reward - mean).abs() < 1e-12);
        assert_eq!(r.reward_means.len(), 2);
    }
    let table = report.table();
    assert!(table.contains("mean reward") && table.contains("en") && table.contains("es"), "{table}");
    // greedy: the same answers again
    let again = run_tasks(&be, &loaded.model, &tok, "tiny", &cfg.tasks[..1], |_, _, _| {}).unwrap();
    let (TaskResult::Reward(a), TaskResult::Reward(b)) = (&report.tasks[0].result, &again.tasks[0].result)
    else {
        panic!()
    };
    assert_eq!(
        a.items.iter().map(|i| &i.answer).collect::<Vec<_>>(),
        b.items.iter().map(|i| &i.answer).collect::<Vec<_>>()
    );
    // a reward task without a reward is a named config error
    let bad = format!(
        "tasks:\n  - name: arith\n    language: en\n    kind: reward\n    file: {}\n    max_new_tokens: 5\n",
        data.display()
    );
    let e = EvalConfig::parse(&bad, &dir.join("eval.yaml")).unwrap_err().to_string();
    assert!(e.contains("a reward task needs a rewards list"), "{e}");
    let bad = format!("{}    rewards:\n      - {{kind: numeric_match, weight: -1}}\n", bad);
    let e = EvalConfig::parse(&bad, &dir.join("eval.yaml")).unwrap_err().to_string();
    assert!(e.contains("rewards[0].weight: expected a number ≥ 0"), "{e}");
}

/// The shipped config's prompts (`data/grpo_arith`, `prompt` as a message list) load as a prompt
/// dataset with their `answer` and `lang` fields, through the chat template, and the shipped
/// config's rewards are the preset of `data/grpo_arith/rewards.yaml`.
#[test]
fn shipped_arithmetic_prompts_load() {
    use afinar::data::{DatasetKind, DatasetSpec, PromptDataset};
    use afinar::rewards::RewardSet;
    let tok = Tokenizer::from_file(&asset("llama3-tokenizer/tokenizer.json")).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut spec = DatasetSpec::new(DatasetKind::Prompt, root.join("data/grpo_arith/heldout.jsonl"));
    spec.max_prompt_tokens = Some(192);
    let data = PromptDataset::load(&spec, &tok).unwrap();
    let rows = data.rows();
    assert!(rows.len() >= 100, "{}", rows.len());
    for lang in ["en", "es"] {
        assert!(rows.iter().any(|r| r.fields["lang"] == lang), "{lang}");
    }
    for r in rows {
        assert!(r.fields["answer"].is_number(), "row {}", r.row);
        assert!(r.text.contains("<|start_header_id|>user") && r.ids.len() <= 192, "row {}", r.row);
    }
    let preset = RewardSet::from_config_file(&root.join("data/grpo_arith/rewards.yaml")).unwrap();
    let shipped = RewardSet::from_config_file(&root.join("configs/smollm2_135m_grpo_lora.yaml")).unwrap();
    assert_eq!(format!("{:?}", preset.rewards()), format!("{:?}", shipped.rewards()));
    assert_eq!(shipped.rewards().iter().map(|r| r.weight).collect::<Vec<_>>(), [0.7, 0.2, 0.1]);
    // The held-out eval config scores with the same rewards and stops, in both languages.
    let eval = afinar::eval::EvalConfig::load(&root.join("data/grpo_arith/eval.yaml")).unwrap();
    let langs: Vec<&str> = eval.tasks.iter().map(|t| t.language.as_str()).collect();
    assert_eq!(langs, ["en", "es"]);
    for t in &eval.tasks {
        match &t.kind {
            afinar::eval::TaskKind::Reward { file, opts } => {
                assert!(file.ends_with("grpo_arith/heldout.jsonl"), "{}", file.display());
                assert_eq!(format!("{:?}", opts.rewards.rewards()), format!("{:?}", shipped.rewards()));
                assert_eq!(opts.stop, ["\nQuestion:", "\nPregunta:", "\n\n\n"]);
                assert_eq!(opts.max_new_tokens, 64);
            }
            other => panic!("data/grpo_arith/eval.yaml: a {} task", other.name()),
        }
    }
}
