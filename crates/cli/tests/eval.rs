//! `afinar eval` end to end on the real SmolLM2-135M-Instruct GGUF: the per-language table on
//! stdout and the JSON report; bad input exits non-zero with a message naming the file, line or
//! key, never a panic, and (except for texts too short to score) before the model is loaded.

mod common;

use common::{afinar, assert_clean_failure as assert_fails_with, text};
use std::path::{Path, PathBuf};

fn smollm2() -> String {
    common::smollm2().display().to_string()
}

fn data(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/eval").join(rel).display().to_string()
}

fn tmp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("afinar-eval-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn eval_reports_english_and_spanish_side_by_side() {
    let out_json = tmp_dir().join("results.json");
    let (en_txt, es_txt) = (data("text_en.txt"), data("text_es.txt"));
    let (en_mc, es_mc) = (data("general_knowledge_en.jsonl"), data("general_knowledge_es.jsonl"));
    let (en_fs, es_fs) =
        (data("general_knowledge_fewshot_en.jsonl"), data("general_knowledge_fewshot_es.jsonl"));
    let em = data("exact_match_es.jsonl");
    let args = [
        "eval",
        "--model",
        &smollm2(),
        "--max-length",
        "64",
        "--stride",
        "64",
        "--perplexity",
        &format!("en={en_txt}"),
        "--perplexity",
        &format!("es={es_txt}"),
        "--choice",
        &format!("en={en_mc}"),
        "--choice",
        &format!("es={es_mc}"),
        "--fewshot-file",
        &format!("en={en_fs}"),
        "--fewshot-file",
        &format!("es={es_fs}"),
        "--num-fewshot",
        "1",
        "--exact-match",
        &format!("es={em}"),
        "--max-new-tokens",
        "4",
        "--ignore-case",
        "--ignore-punctuation",
        "--limit",
        "3",
        "--output",
        out_json.to_str().unwrap(),
    ];
    let out = afinar(&args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stderr: {stderr}");
    eprintln!("{stdout}");
    let header = stdout.lines().next().unwrap();
    assert!(header.split_whitespace().eq(["task", "metric", "en", "es"]), "{stdout}");
    for metric in ["perplexity", "tokens/word", "acc", "acc_norm", "exact_match"] {
        assert!(
            stdout.lines().any(|l| l.split_whitespace().any(|w| w == metric)),
            "{metric} missing: {stdout}"
        );
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    let tasks = report["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 5);
    let find = |kind: &str, lang: &str| {
        tasks
            .iter()
            .find(|t| t["kind"] == kind && t["language"] == lang)
            .unwrap_or_else(|| panic!("{kind} {lang}"))
    };
    for lang in ["en", "es"] {
        let p = &find("perplexity", lang)["result"];
        assert_eq!(p["max_length"], 64);
        let scored = p["scored_tokens"].as_u64().unwrap();
        // stride == window: disjoint windows, whose first tokens are context only.
        assert_eq!(scored, p["tokens"].as_u64().unwrap() - p["windows"].as_u64().unwrap());
        assert!((p["perplexity"].as_f64().unwrap() - p["mean_nll"].as_f64().unwrap().exp()).abs() < 1e-6);
        let mc = &find("multiple_choice", lang)["result"];
        assert_eq!(mc["items_scored"], 3);
        let item = &mc["items"][0];
        assert_eq!(item["loglikelihoods"].as_array().unwrap().len(), 4);
        // 1-shot: one solved example, the separator, then the question.
        assert_eq!(item["context"].as_str().unwrap().matches("\nAnswer:").count(), 2);
    }
    let es_ppl = &find("perplexity", "es")["result"]["tokens_per_word"];
    let en_ppl = &find("perplexity", "en")["result"]["tokens_per_word"];
    assert!(es_ppl.as_f64() > en_ppl.as_f64(), "Spanish costs more tokens per word here");
    assert_eq!(find("exact_match", "es")["result"]["items_scored"], 3);
}

#[test]
fn eval_config_drives_the_same_tasks() {
    let dir = tmp_dir();
    let cfg = dir.join("eval.yaml");
    std::fs::write(
        &cfg,
        format!(
            "tasks:\n  - name: story\n    language: es\n    kind: perplexity\n    file: {}\n    max_length: 32\n    stride: 32\n",
            data("text_es.txt")
        ),
    )
    .unwrap();
    let out = afinar(&["eval", "--model", &smollm2(), "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.lines().next().unwrap().split_whitespace().eq(["task", "metric", "es"]), "{stdout}");
    assert!(stdout.contains("story") && stdout.contains("perplexity"), "{stdout}");
}

#[test]
fn eval_bad_inputs_fail_cleanly() {
    let dir = tmp_dir();
    let model = smollm2();
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    // Nothing to do.
    assert_fails_with(&afinar(&["eval", "--model", &model]), "nothing to evaluate");
    // A missing file, named with its flag.
    assert_fails_with(
        &afinar(&["eval", "--model", &model, "--perplexity", "es=/no/such.txt"]),
        "--perplexity es=/no/such.txt: /no/such.txt: no such file",
    );
    // A malformed JSONL row: file, line and what was expected.
    let bad = write("bad.jsonl", "{\"question\": \"¿Qué?\", \"choices\": {\"text\": [\"a\", \"b\"], \"label\": [\"A\", \"B\"]}, \"answerKey\": \"A\"}\n{oops\n");
    assert_fails_with(
        &afinar(&["eval", "--model", &model, "--choice", &bad]),
        &format!("{bad}:2: not valid JSON"),
    );
    // An answer label that is not among the choices.
    let label = write("label.jsonl", "{\"question\": \"Q\", \"choices\": {\"text\": [\"a\", \"b\"], \"label\": [\"A\", \"B\"]}, \"answerKey\": \"C\"}\n");
    assert_fails_with(
        &afinar(&["eval", "--model", &model, "--choice", &label]),
        "`answerKey`: \"C\" is not one of the labels A, B",
    );
    // A row of another format, then empty choices.
    let empty = write("empty.jsonl", "{\"goal\": \"g\", \"sol1\": \"x\", \"sol2\": \"y\", \"label\": 1}\n{\"question\": \"q\", \"choices\": [], \"answer\": 0}\n");
    assert_fails_with(
        &afinar(&["eval", "--model", &model, "--choice", &empty, "--format", "mmlu"]),
        "empty.jsonl:1: `choices`: missing (the row has goal, label, sol1, sol2)",
    );
    let empty = write("empty2.jsonl", "{\"question\": \"q\", \"choices\": [], \"answer\": 0}\n");
    assert_fails_with(
        &afinar(&["eval", "--model", &model, "--choice", &empty, "--format", "mmlu"]),
        "empty2.jsonl:1: `choices`: 0 choices: expected at least 2",
    );
    // Few-shot without a few-shot file.
    let mc = data("general_knowledge_en.jsonl");
    assert_fails_with(
        &afinar(&["eval", "--model", &model, "--choice", &mc, "--num-fewshot", "2"]),
        "--num-fewshot 2 needs a --fewshot-file",
    );
    // The output folder must exist (checked before the model is loaded).
    assert_fails_with(
        &afinar(&["eval", "--model", &model, "--choice", &mc, "--output", "/no/such/dir/r.json"]),
        "the folder /no/such/dir does not exist",
    );
    // Config errors: file, line, column, key.
    let cfg = write(
        "bad.yaml",
        "tasks:\n  - name: x\n    language: en\n    kind: perplexity\n    file: /\n    strid: 3\n",
    );
    assert_fails_with(
        &afinar(&["eval", "--model", &model, "--config", &cfg]),
        &format!("{cfg}:6:5: tasks[0].strid: unknown key"),
    );
    // A text shorter than one window.
    let short = write("short.txt", "A");
    assert_fails_with(
        &afinar(&["eval", "--model", &model, "--perplexity", &short]),
        "shorter than one window",
    );
}
