//! Group sampling (`generate::generate_group`) on the tiny random Llama fixture: greedy rows
//! equal `generate`'s greedy text; seeded rows are reproducible; a row of a batch of 4 equals
//! the same row sampled alone (rows that finish early leave the batch, so the others go on in a
//! compacted cache); stop tokens, stop strings and the length limit end rows as documented.

mod common;

use afinar::engine::{CpuBackend, WeightFormat};
use afinar::generate::{
    generate, generate_group, row_seed, GenerateOptions, GroupOptions, GroupStop, SamplingParams,
};
use afinar::models::{load_model, Llama, LoadOptions};
use common::fixture;

fn load() -> (CpuBackend, Llama<CpuBackend>) {
    let be = CpuBackend::new(Some(2));
    let opts = LoadOptions { format: WeightFormat::F32, tokenizer: None, ..Default::default() };
    let loaded = load_model(&be, &fixture("models/llama31_tiny"), &opts).unwrap();
    (be, loaded.model)
}

const PROMPT: &[u32] = &[1, 17, 250, 33, 9, 101, 77];

fn opts(temperature: f32, max: usize, stop_ids: Vec<u32>, seeds: Vec<u64>) -> GroupOptions {
    GroupOptions {
        max_new_tokens: max,
        sampling: SamplingParams { temperature, top_k: 0, top_p: 1.0, seed: 0 },
        stop_ids,
        stop_strings: Vec::new(),
        seeds,
    }
}

fn seeds(n: usize) -> Vec<u64> {
    (0..n as u64).map(|j| row_seed(5, 1, 0, j)).collect()
}

/// Text of ids for the stop-string test: each token as `<id>`.
fn detok(ids: &[u32]) -> afinar::Result<String> {
    Ok(ids.iter().map(|i| format!("<{i}>")).collect())
}

#[test]
fn greedy_rows_equal_generate() {
    let (be, model) = load();
    let mut cache = model.new_cache(&be, 1, 64).unwrap();
    let gopts = GenerateOptions { max_new_tokens: 12, sampling: SamplingParams::default(), stop_ids: vec![] };
    let (want, _) = generate(&be, &model, &mut cache, PROMPT, &gopts, |_| Ok(true)).unwrap();
    assert_eq!(want.len(), 12);
    let (rows, stats) =
        generate_group(&be, &model, PROMPT, &opts(0.0, 12, vec![], seeds(3)), None, false).unwrap();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert_eq!(r.ids, want);
        assert!(r.truncated());
        assert_eq!(r.stop_token, None);
    }
    assert_eq!(stats.sampled_tokens, 36);
    assert_eq!(stats.decode_steps, 11);
    // a stop token that greedy decoding reaches at position 4 ends every row there, unemitted
    let stop = want[4];
    let first = want.iter().position(|&t| t == stop).unwrap();
    let (rows, _) =
        generate_group(&be, &model, PROMPT, &opts(0.0, 12, vec![stop], seeds(2)), None, false).unwrap();
    for r in &rows {
        assert_eq!(r.ids, want[..first]);
        assert_eq!(r.stop, GroupStop::StopToken);
        assert_eq!(r.stop_token, Some(stop));
        assert!(!r.truncated());
    }
}

#[test]
fn seeded_groups_are_reproducible_and_rows_differ() {
    let (be, model) = load();
    let o = opts(1.0, 16, vec![], seeds(4));
    let (a, _) = generate_group(&be, &model, PROMPT, &o, None, false).unwrap();
    let (b, _) = generate_group(&be, &model, PROMPT, &o, None, false).unwrap();
    assert_eq!(a, b);
    // near-uniform logits of a random model at temperature 1: four rows are not all equal
    assert!(a.iter().any(|r| r.ids != a[0].ids), "{a:?}");
    let other = opts(1.0, 16, vec![], (0..4).map(|j| row_seed(6, 1, 0, j)).collect());
    let (c, _) = generate_group(&be, &model, PROMPT, &other, None, false).unwrap();
    assert_ne!(a, c);
}

#[test]
fn a_row_of_a_batch_equals_the_row_sampled_alone() {
    let (be, model) = load();
    let s = seeds(4);
    let (free, _) =
        generate_group(&be, &model, PROMPT, &opts(1.0, 16, vec![], s.clone()), None, false).unwrap();
    // A stop token that row 0 samples at its third token: row 0 ends early, and so may others;
    // the rest go on in a compacted cache.
    let stop = free[0].ids[2];
    let o = opts(1.0, 16, vec![stop], s.clone());
    let (batch, stats) = generate_group(&be, &model, PROMPT, &o, None, false).unwrap();
    assert!(batch[0].ids.len() <= 2 && batch[0].stop == GroupStop::StopToken);
    assert!(batch.iter().any(|r| r.ids.len() > 2), "no row outlived row 0: {batch:?}");
    let lens: Vec<usize> = batch.iter().map(|r| r.ids.len() + usize::from(r.stop_token.is_some())).collect();
    assert_eq!(stats.sampled_tokens, lens.iter().sum::<usize>());
    for (j, row) in batch.iter().enumerate() {
        let alone = opts(1.0, 16, vec![stop], vec![s[j]]);
        let (single, _) = generate_group(&be, &model, PROMPT, &alone, None, false).unwrap();
        assert_eq!(&single[0], row, "row {j}");
        // up to its stop, the row is the unstopped row's prefix
        assert_eq!(row.ids[..], free[j].ids[..row.ids.len()], "row {j}");
    }
}

#[test]
fn stop_strings_end_rows_and_are_kept() {
    let (be, model) = load();
    let (free, _) =
        generate_group(&be, &model, PROMPT, &opts(0.0, 10, vec![], seeds(1)), None, false).unwrap();
    let ids = &free[0].ids;
    // the text of tokens 3 and 4 as a stop string (found first where it ends)
    let stop = format!("<{}><{}>", ids[3], ids[4]);
    let full = detok(ids).unwrap();
    let end = full.find(&stop).unwrap() + stop.len();
    let mut o = opts(0.0, 10, vec![], seeds(2));
    o.stop_strings = vec!["never-there".into(), stop.clone()];
    let d: &dyn Fn(&[u32]) -> afinar::Result<String> = &detok;
    let (rows, _) = generate_group(&be, &model, PROMPT, &o, Some(d), true).unwrap();
    for r in &rows {
        assert_eq!(r.stop, GroupStop::StopString);
        assert_eq!(r.text, full[..end]);
        assert!(r.text.ends_with(&stop));
        assert_eq!(detok(&r.ids).unwrap(), r.text);
        assert!(!r.truncated());
    }
    // texts of truncated rows are the whole completion
    let (rows, _) =
        generate_group(&be, &model, PROMPT, &opts(0.0, 10, vec![], seeds(1)), Some(d), true).unwrap();
    assert_eq!(rows[0].text, full);
    // stop strings without a detokenizer, no seeds, an empty prompt, a too long limit: errors
    let e = generate_group(&be, &model, PROMPT, &o, None, false).unwrap_err().to_string();
    assert!(e.contains("need a detokenizer"), "{e}");
    let e = generate_group(&be, &model, PROMPT, &opts(0.0, 10, vec![], vec![]), None, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no completions"), "{e}");
    let e = generate_group(&be, &model, &[], &opts(0.0, 10, vec![], seeds(1)), None, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("prompt is empty"), "{e}");
    let too_long = model.config.max_seq_len;
    let e = generate_group(&be, &model, PROMPT, &opts(0.0, too_long, vec![], seeds(1)), None, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("exceed the model's context"), "{e}");
}
