//! The `preference` eval task: summed log-probabilities of the chosen and rejected responses
//! given the prompt, accuracy (margin > 0) and mean margin, per language.
//! - On a random tiny model (tests/fixtures/models/llama31_tiny) every response's score equals
//!   the sum computed independently from one full forward pass (no KV cache, no batching) with
//!   an f64 log-softmax, and accuracy and mean margin follow from those sums.
//! - On the real SmolLM2-135M-Instruct, a small bilingual file: the language filter, the same
//!   agreement with full-forward sums, an obvious pair scored the right way round, and the
//!   per-language table and JSON of `run_tasks`.

mod common;

use std::path::{Path, PathBuf};

use afinar::engine::{CpuBackend, WeightFormat};
use afinar::eval::{
    load_preference_pairs, run_tasks, score_preference_task, EvalConfig, PreferenceOptions, TaskResult,
};
use afinar::models::{load_model, Llama, LoadOptions, LoadedModel, Logits};
use afinar_data::{PreferencePair, RowLoc};
use common::{asset, fixture};
use serde_json::json;

/// Sum of log p(response[t] | prompt, response[..t]) from one full forward pass, in f64.
fn full_forward_logprob(be: &CpuBackend, model: &Llama<CpuBackend>, prompt: &[u32], response: &[u32]) -> f64 {
    let ids: Vec<u32> = prompt.iter().chain(response).copied().collect();
    let logits = model.forward(be, &ids, 1, ids.len(), None, Logits::All).unwrap();
    let vocab = model.config.vocab_size;
    let mut total = 0.0;
    for (t, &target) in response.iter().enumerate() {
        let row = &logits[(prompt.len() + t - 1) * vocab..(prompt.len() + t) * vocab];
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
        let lse = max + row.iter().map(|&x| (f64::from(x) - max).exp()).sum::<f64>().ln();
        total += f64::from(row[target as usize]) - lse;
    }
    total
}

#[test]
fn tiny_model_margins_equal_independent_full_forward_sums() {
    let be = CpuBackend::new(Some(2));
    let opts = LoadOptions { format: WeightFormat::F32, tokenizer: None, ..Default::default() };
    let model = load_model(&be, &fixture("models/llama31_tiny"), &opts).unwrap().model;
    let v = model.config.vocab_size as u32;
    let pair = |k: u32, p: usize, c: usize, r: usize| PreferencePair {
        prompt_ids: (0..p as u32).map(|i| (i * 7 + k) % v).collect(),
        chosen_ids: (0..c as u32).map(|i| (i * 13 + 3 * k + 1) % v).collect(),
        rejected_ids: (0..r as u32).map(|i| (i * 5 + 11 * k + 2) % v).collect(),
        truncated: false,
        lang: None,
        at: RowLoc::Line(k as usize + 1),
    };
    // Prompts longer and shorter than the prefill chunk, responses of different lengths.
    let pairs = vec![pair(0, 3, 4, 2), pair(1, 11, 1, 5), pair(2, 9, 6, 6), pair(3, 1, 2, 9)];
    let r = score_preference_task(&be, &model, &pairs, &PreferenceOptions::default(), |_, _| {}).unwrap();
    assert_eq!(r.pairs_scored, 4);
    let mut margins = Vec::new();
    for (p, item) in pairs.iter().zip(&r.items) {
        let c = full_forward_logprob(&be, &model, &p.prompt_ids, &p.chosen_ids);
        let j = full_forward_logprob(&be, &model, &p.prompt_ids, &p.rejected_ids);
        eprintln!(
            "{}: chosen {c:.6} ({:.6}), rejected {j:.6} ({:.6})",
            item.row, item.chosen_logprob, item.rejected_logprob
        );
        assert!(
            (item.chosen_logprob - c).abs() < 1e-4 * c.abs().max(1.0),
            "{}: {} vs {c}",
            item.row,
            item.chosen_logprob
        );
        assert!(
            (item.rejected_logprob - j).abs() < 1e-4 * j.abs().max(1.0),
            "{}: {} vs {j}",
            item.row,
            item.rejected_logprob
        );
        assert!((item.margin - (c - j)).abs() < 2e-4 * c.abs().max(j.abs()).max(1.0));
        assert_eq!(item.tokens, [p.prompt_ids.len(), p.chosen_ids.len(), p.rejected_ids.len()]);
        margins.push(c - j);
    }
    let acc = margins.iter().filter(|&&m| m > 0.0).count() as f64 / 4.0;
    let mean = margins.iter().sum::<f64>() / 4.0;
    assert_eq!(r.accuracy, acc);
    assert!((r.mean_margin - mean).abs() < 1e-3, "{} vs {mean}", r.mean_margin);
    assert!(r.accuracy_stderr.is_some() && r.mean_margin_stderr.is_some());
    // limit scores the first pairs; an empty prompt is refused.
    let opts = PreferenceOptions { limit: Some(2), ..Default::default() };
    assert_eq!(score_preference_task(&be, &model, &pairs, &opts, |_, _| {}).unwrap().pairs_scored, 2);
    let mut empty = pairs[0].clone();
    empty.prompt_ids.clear();
    let e =
        score_preference_task(&be, &model, &[empty], &PreferenceOptions::default(), |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("line 1: the prompt encodes to no tokens"), "{e}");
}

fn smollm2(be: &CpuBackend) -> LoadedModel<CpuBackend> {
    let folder = std::env::var_os("AFINAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/afinar"))
        .join("eval/smollm2-135m-instruct-f32");
    let path = if folder.join("model.safetensors").exists() {
        folder
    } else {
        asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    };
    let opts = LoadOptions {
        format: WeightFormat::F32,
        tokenizer: None,
        keep_quantized: false,
        ..Default::default()
    };
    load_model(be, &path, &opts).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("afinar-eval-preference").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn smollm2_scores_a_bilingual_preference_file_per_language() {
    let be = CpuBackend::new(None);
    let loaded = smollm2(&be);
    let tok = loaded.tokenizer.as_ref().unwrap();
    let model = &loaded.model;
    let dir = scratch("smollm2");
    let rows = [
        json!({"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Zebra purple seventeen kettle.", "lang": "en"}),
        json!({"prompt": "What is 2 plus 3?", "chosen": "5.", "rejected": "2 más 3 es igual a 5.", "lang": "en"}),
        json!({"prompt": "¿Cuál es la capital de Francia?", "chosen": "París.", "rejected": "Cebra morada diecisiete tetera.", "lang": "es"}),
        json!({"prompt": "¿De qué color es la nieve?", "chosen": "Blanca.", "rejected": "Snow is white.", "lang": "es"}),
        json!({"prompt": "¿Qué día va después del lunes?", "chosen": "Martes.", "rejected": "Tuesday.", "lang": "es"}),
    ];
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    let file = dir.join("prefs.jsonl");
    std::fs::write(&file, text).unwrap();
    let opts = PreferenceOptions::default();
    let max = model.config.max_seq_len;

    let es = load_preference_pairs(&file, tok, "es", max, &opts).unwrap();
    assert_eq!(
        es.iter().map(|p| p.at).collect::<Vec<_>>(),
        [RowLoc::Line(3), RowLoc::Line(4), RowLoc::Line(5)]
    );
    assert_eq!(load_preference_pairs(&file, tok, "-", max, &opts).unwrap().len(), 5, "`-`: every row");
    let e = load_preference_pairs(&file, tok, "fr", max, &opts).unwrap_err().to_string();
    assert!(e.contains("no row has lang \"fr\" (the file's languages: en, es)"), "{e}");

    let en = load_preference_pairs(&file, tok, "en", max, &opts).unwrap();
    let r = score_preference_task(&be, model, &en, &opts, |_, _| {}).unwrap();
    for (p, item) in en.iter().zip(&r.items) {
        let c = full_forward_logprob(&be, model, &p.prompt_ids, &p.chosen_ids);
        let j = full_forward_logprob(&be, model, &p.prompt_ids, &p.rejected_ids);
        eprintln!(
            "{}: chosen {:.4} (full {c:.4}), rejected {:.4} (full {j:.4})",
            item.row, item.chosen_logprob, item.rejected_logprob
        );
        // f32 sums over 30 layers in another order (chunked prefill, KV cache, batched
        // continuations): within 2e-3 plus 5e-4 of the magnitude.
        let tol = |x: f64| 2e-3 + 5e-4 * x.abs();
        assert!((item.chosen_logprob - c).abs() < tol(c), "{}", item.row);
        assert!((item.rejected_logprob - j).abs() < tol(j), "{}", item.row);
    }
    // Gibberish is far less likely than the right answer.
    assert!(r.items[0].margin > 5.0, "{:?}", r.items[0]);

    // Through an eval config: one file, a column per language.
    let config = dir.join("eval.yaml");
    std::fs::write(
        &config,
        "tasks:\n  - name: prefs\n    language: en\n    kind: preference\n    file: prefs.jsonl\n  - name: prefs\n    language: es\n    kind: preference\n    file: prefs.jsonl\n    template: chat\n",
    )
    .unwrap();
    let cfg = EvalConfig::load(&config).unwrap();
    let report = run_tasks(&be, model, tok, "smollm2", &cfg.tasks, |_, _, _| {}).unwrap();
    let TaskResult::Preference(en_r) = &report.tasks[0].result else { panic!("not a preference result") };
    let TaskResult::Preference(es_r) = &report.tasks[1].result else { panic!("not a preference result") };
    assert_eq!((en_r.pairs_scored, es_r.pairs_scored), (2, 3));
    assert_eq!(en_r.accuracy, r.accuracy);
    assert!(es_r.items[0].margin > 5.0, "{:?}", es_r.items[0]);
    let table = report.table();
    eprintln!("{table}");
    assert!(
        table.contains("prefs") && table.contains("accuracy") && table.contains("mean margin"),
        "{table}"
    );
    assert!(table.lines().next().unwrap().contains("en") && table.lines().next().unwrap().contains("es"));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["tasks"][1]["kind"], "preference");
    assert_eq!(json["tasks"][1]["result"]["pairs_scored"], 3);
    assert!(json["tasks"][1]["result"]["mean_margin"].is_number());
    assert!(json["tasks"][1]["result"]["items"][0]["margin"].is_number());

    // Config errors name the key.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "tasks:\n  - name: p\n    language: en\n    kind: preference\n    file: prefs.jsonl\n    template: alpaca\n").unwrap();
    let e = EvalConfig::load(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.yaml:6:15: tasks[0].template: expected auto, chat or plain, got \"alpaca\""),
        "{e}"
    );
    std::fs::write(
        &bad,
        "tasks:\n  - name: p\n    language: en\n    kind: preference\n    file: prefs.jsonl\n    stride: 3\n",
    )
    .unwrap();
    let e = EvalConfig::load(&bad).unwrap_err().to_string();
    assert!(e.contains("tasks[0].stride: not a setting of a preference task"), "{e}");
}
