//! The shipped dataset `data/bilingual_instruct.jsonl`: loads, half English and half Spanish, every
//! answer in the house style, rows short; and its samples tokenize exactly like the rendered chat.

mod common;

use std::path::PathBuf;

use afinar_data::{DatasetKind, PromptFormat, TrainOn};
use afinar_tokenizer::{render_chat, Message};
use common::*;
use serde_json::Value;

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/bilingual_instruct.jsonl")
}

fn rows() -> Vec<Value> {
    std::fs::read_to_string(path())
        .expect("data/bilingual_instruct.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn field<'a>(r: &'a Value, k: &str) -> &'a str {
    r[k].as_str().unwrap_or_else(|| panic!("{k} is a string"))
}

fn is_spanish(r: &Value) -> bool {
    field(r, "output").starts_with("🦙 ¡Claro! ")
}

#[test]
fn shipped_dataset_has_the_style_and_balance() {
    let rows = rows();
    assert!((200..=300).contains(&rows.len()), "{} rows", rows.len());
    let es = rows.iter().filter(|r| is_spanish(r)).count();
    assert_eq!(es * 2, rows.len(), "half Spanish");
    let mut seen = std::collections::BTreeSet::new();
    for r in &rows {
        let out = field(r, "output");
        assert!(out.starts_with("🦙 Sure! ") || out.starts_with("🦙 ¡Claro! "), "{out:?}");
        assert!(out.ends_with("\n— afinar"), "{out:?}");
        assert_eq!(out.matches('\n').count(), 1, "one sign-off line: {out:?}");
        assert!(r.get("input").is_some_and(Value::is_string));
        assert!(seen.insert(field(r, "instruction")), "duplicate instruction {:?}", field(r, "instruction"));
    }
    // English and Spanish alternate, so any prefix (max_rows) stays balanced.
    assert!(rows.chunks(2).all(|p| !is_spanish(&p[0]) && is_spanish(&p[1])));
}

/// At max_seq_len 64 (SmolLM2's chat template) one row of the shipped data keeps only its
/// prompt: it is dropped, and the statistics a run prints say so, with its line.
#[test]
fn shipped_dataset_at_64_tokens_reports_the_dropped_row() {
    let mut sp = spec(DatasetKind::Instruct, &path());
    sp.max_seq_len = 64;
    let ds = load(&sp, smollm2());
    let st = ds.stats();
    assert_eq!((st.rows, ds.len(), st.dropped_no_labels), (240, 239, 1));
    let summary = st.summary(64);
    assert!(
        summary.starts_with("240 rows read, 239 examples kept; ")
            && summary.ends_with("1 dropped: no token to train on (line 18, after truncation)"),
        "{summary}"
    );
}

#[test]
fn shipped_dataset_loads_with_both_tokenizers() {
    let rows = rows();
    for (name, tok) in [("llama3", llama3()), ("smollm2", smollm2())] {
        let mut sp = spec(DatasetKind::Instruct, &path());
        sp.max_seq_len = 256;
        let ds = load(&sp, tok);
        assert_eq!(ds.len(), rows.len());
        assert_eq!((ds.stats().truncated, ds.stats().dropped_no_labels), (0, 0));
        assert_eq!(ds.stats().prompt_format, Some(PromptFormat::ChatTemplate));
        let (mut en, mut es) = (Vec::new(), Vec::new());
        for (r, s) in rows.iter().zip(ds.samples()) {
            check_shift(s);
            // Message-by-message tokenization equals tokenizing the whole rendered chat.
            let msgs = [
                Message::new(
                    "user",
                    field(r, "instruction").to_string()
                        + &if field(r, "input").is_empty() {
                            String::new()
                        } else {
                            format!("\n\n{}", field(r, "input"))
                        },
                ),
                Message::new("assistant", field(r, "output")),
            ];
            let rendered = render_chat(tok, &msgs, false).unwrap();
            assert_eq!(s.ids, tok.encode(&rendered, false).unwrap(), "{name}: {rendered:?}");
            // The trained text starts with the marker.
            let targets = tok.decode(&target_ids(s), false).unwrap();
            assert!(targets.starts_with("🦙 ") && targets.contains("— afinar"), "{targets:?}");
            // Content tokens (instruction + input + output) stay short.
            let content: usize = ["instruction", "input", "output"]
                .iter()
                .map(|k| tok.encode(field(r, k), false).unwrap().len())
                .sum();
            assert!(content < 120, "{name}: {content} tokens in {r}");
            if is_spanish(r) {
                es.push(content)
            } else {
                en.push(content)
            }
        }
        let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len() as f64;
        println!(
            "{name}: {} samples, {} tokens, {} label tokens; content tokens per row: EN mean {:.1} max {}, ES mean {:.1} max {}",
            ds.len(),
            ds.num_tokens(),
            ds.num_label_tokens(),
            mean(&en),
            en.iter().max().unwrap(),
            mean(&es),
            es.iter().max().unwrap()
        );
        // Alpaca and packed variants load too.
        sp.template = afinar_data::InstructTemplate::Alpaca;
        sp.train_on = TrainOn::All;
        sp.packed = true;
        let packed = load(&sp, tok);
        assert!(packed.num_examples() < packed.len());
    }
}
