//! Bad evaluation input ends in a clear error naming the file, the line and what was expected:
//! missing files, malformed JSONL rows, wrong answer labels and indices, empty choices, texts
//! shorter than one window.

mod common;

use std::path::PathBuf;

use afinar::engine::CpuBackend;
use afinar::eval::{
    load_choice_docs, load_generation_docs, perplexity_of_ids, ChoiceFormat, PerplexityOptions,
};
use afinar::models::{load_model, LoadOptions};
use common::fixture;

fn tmp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("afinar-eval-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn choice_err(name: &str, format: ChoiceFormat, text: &str) -> String {
    let p = tmp_file(name, text);
    let e = load_choice_docs(&p, format).unwrap_err().to_string();
    assert!(e.starts_with(&p.display().to_string()), "{e}");
    e
}

const ARC_OK: &str =
    r#"{"question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}"#;

#[test]
fn multiple_choice_files() {
    let missing = load_choice_docs(&PathBuf::from("/nonexistent/arc.jsonl"), ChoiceFormat::Arc).unwrap_err();
    assert_eq!(missing.to_string(), "/nonexistent/arc.jsonl: no such file");

    let e = choice_err("bad_json.jsonl", ChoiceFormat::Arc, &format!("{ARC_OK}\n{{\"question\": \n"));
    assert!(e.contains(":2: not valid JSON") && e.contains("expected one JSON object per line"), "{e}");
    let e = choice_err("not_object.jsonl", ChoiceFormat::Arc, "[1, 2]\n");
    assert!(e.contains(":1: expected a JSON object, got a list"), "{e}");
    let e = choice_err("empty.jsonl", ChoiceFormat::Arc, "\n\n");
    assert!(e.contains("no rows"), "{e}");

    let e = choice_err(
        "no_question.jsonl",
        ChoiceFormat::Arc,
        &format!(
            "{ARC_OK}\n{{\"choices\": {{\"text\": [\"a\"], \"label\": [\"A\"]}}, \"answerKey\": \"A\"}}\n"
        ),
    );
    assert!(e.contains(":2: `question`: missing (the row has answerKey, choices)"), "{e}");
    let e = choice_err(
        "bad_key.jsonl",
        ChoiceFormat::Arc,
        &ARC_OK.replace("\"answerKey\": \"B\"", "\"answerKey\": \"E\""),
    );
    assert!(e.contains(":1: `answerKey`: \"E\" is not one of the labels A, B"), "{e}");
    let e = choice_err("labels.jsonl", ChoiceFormat::Arc, &ARC_OK.replace("[\"A\", \"B\"]", "[\"A\"]"));
    assert!(e.contains("`choices.label`: 1 labels for 2 choices"), "{e}");
    let e = choice_err("text_type.jsonl", ChoiceFormat::Arc, &ARC_OK.replace("[\"a\", \"b\"]", "[\"a\", 7]"));
    assert!(e.contains("`choices.text[1]`: expected a string, got 7"), "{e}");

    let piqa = r#"{"goal": "¿Cómo se abre una lata?", "sol1": "Con un abrelatas.", "sol2": "Con una cuchara.", "label": 2}"#;
    let e = choice_err("piqa.jsonl", ChoiceFormat::Piqa, piqa);
    assert!(e.contains(":1: `label`: answer index 2 is out of range for 2 choices (expected 0 to 1)"), "{e}");
    let e = choice_err(
        "piqa_label.jsonl",
        ChoiceFormat::Piqa,
        &piqa.replace("\"label\": 2", "\"label\": \"uno\""),
    );
    assert!(e.contains("`label`: expected a non-negative integer index, got the string \"uno\""), "{e}");

    let hs = r#"{"ctx": "Un hombre corta leña", "endings": [], "label": "0"}"#;
    let e = choice_err("hellaswag.jsonl", ChoiceFormat::Hellaswag, hs);
    assert!(e.contains(":1: `endings`: 0 choices: expected at least 2"), "{e}");
    let mmlu = r#"{"question": "2+2?", "choices": ["4"], "answer": 0, "subject": "math"}"#;
    let e = choice_err("mmlu.jsonl", ChoiceFormat::Mmlu, mmlu);
    assert!(e.contains("`choices`: 1 choice: expected at least 2"), "{e}");
}

#[test]
fn prompts_follow_the_harness_configs() {
    let hs = r#"{"activity_label": "Cooking", "ctx_a": "A man [header] stirs a pot.", "ctx_b": "then HE", "endings": ["adds salt [title] Done", "leaves."], "label": "1"}"#;
    let d = &load_choice_docs(&tmp_file("hs_ok.jsonl", hs), ChoiceFormat::Hellaswag).unwrap()[0];
    assert_eq!(d.query, "Cooking: A man stirs a pot. Then he");
    assert_eq!(d.choices, ["adds salt. Done", "leaves."]);
    assert_eq!(d.gold, 1);
    let mmlu = r#"{"question": " ¿Cuánto es 2+2? ", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "elementary_mathematics"}"#;
    let d = &load_choice_docs(&tmp_file("mmlu_ok.jsonl", mmlu), ChoiceFormat::Mmlu).unwrap()[0];
    assert_eq!(d.query, "¿Cuánto es 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:");
    assert_eq!(d.choices, ["A", "B", "C", "D"]);
    assert_eq!(
        d.description,
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
    );
    let piqa = r#"{"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Freeze it.", "label": 0}"#;
    let d = &load_choice_docs(&tmp_file("piqa_ok.jsonl", piqa), ChoiceFormat::Piqa).unwrap()[0];
    assert_eq!(
        (d.query.as_str(), d.choices.len(), d.id.as_str()),
        ("Question: Open a jar\nAnswer:", 2, "line 1")
    );
}

#[test]
fn generation_files() {
    let e = load_generation_docs(&tmp_file("gen.jsonl", "{\"prompt\": \"2+2=\"}\n")).unwrap_err().to_string();
    assert!(e.contains("gen.jsonl:1: `target`: missing (the row has prompt)"), "{e}");
    let e = load_generation_docs(&tmp_file("gen2.jsonl", "{\"prompt\": \"\", \"target\": \"4\"}\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gen2.jsonl:1: `prompt`: empty"), "{e}");
    let e = load_generation_docs(&tmp_file(
        "gen3.jsonl",
        "{\"prompt\": \"a\", \"target\": \"4\", \"chat\": \"yes\"}\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("`chat`: expected true or false, got the string \"yes\""), "{e}");
}

#[test]
fn perplexity_settings_and_short_texts() {
    let be = CpuBackend::new(Some(1));
    let loaded = load_model(&be, &fixture("models/llama32_tiny"), &LoadOptions::default()).unwrap();
    let m = &loaded.model;
    let e = perplexity_of_ids(&be, m, &[3], &PerplexityOptions::default()).unwrap_err().to_string();
    assert!(e.contains("shorter than one window: perplexity needs at least 2 tokens"), "{e}");
    let opts = PerplexityOptions { max_length: Some(4), stride: Some(8), add_bos: None };
    let e = perplexity_of_ids(&be, m, &[1, 2, 3, 4, 5], &opts).unwrap_err().to_string();
    assert!(e.contains("--stride must be between 1 and the window length (4), got 8"), "{e}");
    let too_long = m.config.max_seq_len + 1;
    let opts = PerplexityOptions { max_length: Some(too_long), stride: None, add_bos: None };
    let e = perplexity_of_ids(&be, m, &[1, 2, 3], &opts).unwrap_err().to_string();
    assert!(e.contains("longer than the model's context"), "{e}");

    // Batched windows give the same numbers as one window at a time (the last one is shorter).
    let ids: Vec<u32> = (0..23).map(|i| (i * 7 % 50) as u32 + 1).collect();
    let opts = PerplexityOptions { max_length: Some(8), stride: Some(3), add_bos: None };
    let r = perplexity_of_ids(&be, m, &ids, &opts).unwrap();
    assert_eq!((r.windows, r.scored_tokens), (6, 22));
    let mut nll = 0.0;
    for w in afinar::eval::plan_windows(ids.len(), 8, 3).unwrap() {
        let part = &ids[w.begin..w.end];
        let logits = m.forward(&be, part, 1, part.len(), None, afinar::models::Logits::All).unwrap();
        let v = m.config.vocab_size;
        for t in w.first_scored..w.end {
            let row = &logits[(t - 1 - w.begin) * v..(t - w.begin) * v];
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            nll += lse - row[ids[t] as usize] as f64;
        }
    }
    assert!((r.nll_sum - nll).abs() < 1e-6 * nll.abs().max(1.0), "{} vs {nll}", r.nll_sum);
}
