//! Pre-tokenizer splits of random tricky strings against Hugging Face `tokenizers`.

mod common;

use afinar_tokenizer::PreTokenizer;
use common::{fixture, text};

fn check(pre: PreTokenizer, key: &str) {
    let fx = fixture("pretokenize.json");
    let cases = fx[key].as_array().expect("cases");
    assert!(cases.len() >= 100);
    let mut failures = Vec::new();
    for case in cases {
        let t = text(&case["text"]);
        let want: Vec<usize> =
            case["ends"].as_array().unwrap().iter().map(|e| e.as_u64().unwrap() as usize).collect();
        let pieces = pre.split_text(t);
        assert_eq!(pieces.concat(), t, "pieces must cover the text");
        let got: Vec<usize> = pieces
            .iter()
            .scan(0, |end, p| {
                *end += p.len();
                Some(*end)
            })
            .collect();
        if got != want {
            let show = |ends: &[usize]| {
                let mut start = 0;
                ends.iter()
                    .map(|&e| {
                        let p = &t[start..e];
                        start = e;
                        p
                    })
                    .collect::<Vec<_>>()
            };
            failures.push(format!("{t:?}\n  want {:?}\n  got  {:?}", show(&want), show(&got)));
        }
    }
    assert!(failures.is_empty(), "{key}: {} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn llama3_splits_match_hf() {
    check(PreTokenizer::Llama3, "llama3");
}

#[test]
fn smollm_splits_match_hf() {
    check(PreTokenizer::Gpt2 { individual_digits: true }, "smollm");
}
