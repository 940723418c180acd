//! Preference data: every layout (strings, UltraFeedback, HH-RLHF) and format (JSON, JSONL, CSV,
//! Parquet) gives the ids the chat template (or plain text) gives; truncation cuts the prompt
//! from the left and responses at the end; bad rows name the file, row and column; the pair
//! loader shuffles deterministically and resumes exactly.

mod common;

use std::path::Path;

use afinar_data::{
    DataError, Dataset, DatasetKind, DatasetSpec, FileFormat, InstructTemplate, LongRows, PreferenceDataset,
    PreferenceLoader, PreferencePair, RowLoc, IGNORE_INDEX,
};
use afinar_tokenizer::{render_template, Message, Tokenizer};
use common::*;
use serde_json::{json, Value};

fn pref_spec(path: &Path) -> DatasetSpec {
    DatasetSpec::new(DatasetKind::Preference, path)
}

fn load_pairs(spec: &DatasetSpec, tok: &Tokenizer) -> PreferenceDataset {
    PreferenceDataset::load(spec, tok).unwrap_or_else(|e| panic!("load failed: {e}"))
}

fn load_err(spec: &DatasetSpec, tok: &Tokenizer) -> String {
    match PreferenceDataset::load(spec, tok) {
        Ok(_) => panic!("expected an error loading {}", spec.source.display()),
        Err(e) => e.to_string(),
    }
}

fn render(tok: &Tokenizer, messages: &[Message], generation_prompt: bool) -> String {
    render_template(
        tok.chat_template().unwrap(),
        messages,
        generation_prompt,
        tok.bos_token(),
        tok.eos_token(),
    )
    .unwrap()
}

/// The ids the chat template gives: the prompt with the generation prompt, and each response up
/// to its `<|im_end|>` (the newline after it is markup, not part of the response).
fn expected_chat(tok: &Tokenizer, prompt: &[Message], answer: &str) -> (Vec<u32>, Vec<u32>) {
    let p = render(tok, prompt, true);
    let mut all = prompt.to_vec();
    all.push(Message::new("assistant", answer));
    let full = render(tok, &all, false);
    let body = full.strip_prefix(&p).unwrap();
    let end = body.find("<|im_end|>").unwrap() + "<|im_end|>".len();
    (tok.encode(&p, false).unwrap(), tok.encode(&body[..end], false).unwrap())
}

fn string_rows() -> Vec<Value> {
    vec![
        json!({"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "La capital de Francia es París.", "lang": "en"}),
        json!({"prompt": "¿Cuánto es 2 más 2?", "chosen": "4.", "rejected": "Sure! 2 plus 2 equals 4, \"quoted\", with a comma.", "lang": "es"}),
    ]
}

#[test]
fn string_rows_encode_through_the_chat_template() {
    let tok = smollm2();
    let dir = scratch("pref-strings");
    let ds = load_pairs(&pref_spec(&write_jsonl(&dir, "p.jsonl", &string_rows())), tok);
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.stats().truncated, 0);
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    for (pair, row) in ds.pairs().iter().zip(string_rows()) {
        let prompt = [Message::new("user", row["prompt"].as_str().unwrap())];
        let (p, c) = expected_chat(tok, &prompt, row["chosen"].as_str().unwrap());
        let (_, r) = expected_chat(tok, &prompt, row["rejected"].as_str().unwrap());
        assert_eq!((&pair.prompt_ids, &pair.chosen_ids, &pair.rejected_ids), (&p, &c, &r));
        assert_eq!(*pair.chosen_ids.last().unwrap(), im_end);
        assert_eq!(pair.lang.as_deref(), row["lang"].as_str());
        // Labels: the response tokens only (shifted), nothing on the prompt.
        let s = pair.chosen_sample();
        check_shift(&s);
        assert_eq!(s.ids.len(), p.len() + c.len());
        assert_eq!(target_ids(&s), c);
        assert!(s.labels[..p.len() - 1].iter().all(|&l| l == IGNORE_INDEX));
        assert_eq!(target_ids(&pair.rejected_sample()), r);
    }
    assert_eq!(ds.pairs()[0].at, RowLoc::Line(1));
}

#[test]
fn ultrafeedback_and_hh_rlhf_layouts_give_the_same_pairs_as_strings() {
    let tok = smollm2();
    let dir = scratch("pref-layouts");
    let q = "What is the capital of France?";
    let user = json!({"role": "user", "content": q});
    let a = |t: &str| json!({"role": "assistant", "content": t});
    let strings = load_pairs(
        &pref_spec(&write_jsonl(
            &dir,
            "s.jsonl",
            &[json!({"prompt": q, "chosen": "Paris.", "rejected": "Lyon."})],
        )),
        tok,
    );
    // UltraFeedback: a prompt string, conversations repeating it; and with answers only.
    let uf = write_jsonl(
        &dir,
        "uf.jsonl",
        &[
            json!({"prompt": q, "chosen": [user, a("Paris.")], "rejected": [user, a("Lyon.")]}),
            json!({"prompt": [user], "chosen": [a("Paris.")], "rejected": [a("Lyon.")]}),
        ],
    );
    let uf = load_pairs(&pref_spec(&uf), tok);
    // HH-RLHF: two whole conversations, the prompt is their shared start.
    let hh = write_jsonl(
        &dir,
        "hh.jsonl",
        &[json!({"chosen": [user, a("Paris.")], "rejected": [user, a("Lyon.")]})],
    );
    let hh = load_pairs(&pref_spec(&hh), tok);
    let ids = |p: &PreferencePair| (p.prompt_ids.clone(), p.chosen_ids.clone(), p.rejected_ids.clone());
    let want = ids(&strings.pairs()[0]);
    assert_eq!(ids(&uf.pairs()[0]), want);
    assert_eq!(ids(&uf.pairs()[1]), want);
    assert_eq!(ids(&hh.pairs()[0]), want);

    // A multi-turn HH-RLHF row: the prompt is every shared message, ShareGPT keys work too.
    let turns = [
        json!({"from": "human", "value": "Hi!"}),
        json!({"from": "gpt", "value": "Hello."}),
        json!({"from": "human", "value": "2+2?"}),
    ];
    let row = json!({
        "chosen": [turns[0], turns[1], turns[2], {"from": "gpt", "value": "4."}],
        "rejected": [turns[0], turns[1], turns[2], {"from": "gpt", "value": "Five, I think."}],
    });
    let hh = load_pairs(&pref_spec(&write_jsonl(&dir, "hh2.jsonl", &[row])), tok);
    let prompt =
        [Message::new("user", "Hi!"), Message::new("assistant", "Hello."), Message::new("user", "2+2?")];
    let (p, c) = expected_chat(tok, &prompt, "4.");
    let (_, r) = expected_chat(tok, &prompt, "Five, I think.");
    assert_eq!(ids(&hh.pairs()[0]), (p, c, r));
}

#[test]
fn every_format_gives_the_same_pairs() {
    let tok = smollm2();
    let dir = scratch("pref-formats");
    let rows = string_rows();
    let cols = ["prompt", "chosen", "rejected", "lang"];
    let csv_field = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut csv = cols.join(",") + "\n";
    for r in &rows {
        csv += &cols.iter().map(|c| csv_field(r[c].as_str().unwrap())).collect::<Vec<_>>().join(",");
        csv.push('\n');
    }
    // Message lists in CSV cells are JSON text (UltraFeedback layout here).
    let uf_csv = format!(
        "prompt,chosen,rejected,lang\n{},{},{},{}\n",
        csv_field(rows[0]["prompt"].as_str().unwrap()),
        csv_field(&json!([{"role": "assistant", "content": rows[0]["chosen"]}]).to_string()),
        csv_field(&json!([{"role": "assistant", "content": rows[0]["rejected"]}]).to_string()),
        "en"
    );
    #[cfg_attr(not(feature = "parquet"), allow(unused_mut))]
    let mut files = vec![
        write_jsonl(&dir, "p.jsonl", &rows),
        write(&dir, "p.json", &serde_json::to_string_pretty(&rows).unwrap()),
        write(&dir, "p.csv", &csv),
    ];
    #[cfg(feature = "parquet")]
    files.push(write_parquet(&dir, &rows, &cols));
    let reference = load_pairs(&pref_spec(&files[0]), tok);
    for f in &files[1..] {
        let ds = load_pairs(&pref_spec(f), tok);
        for (a, b) in ds.pairs().iter().zip(reference.pairs()) {
            assert_eq!(
                (&a.prompt_ids, &a.chosen_ids, &a.rejected_ids, &a.lang),
                (&b.prompt_ids, &b.chosen_ids, &b.rejected_ids, &b.lang),
                "{}",
                f.display()
            );
        }
        assert_eq!(ds.len(), reference.len(), "{}", f.display());
    }
    let uf = load_pairs(&pref_spec(&write(&dir, "uf.csv", &uf_csv)), tok);
    assert_eq!(uf.pairs()[0].chosen_ids, reference.pairs()[0].chosen_ids);
    assert_eq!(uf.pairs()[0].rejected_ids, reference.pairs()[0].rejected_ids);
}

#[cfg(feature = "parquet")]
fn write_parquet(dir: &Path, rows: &[Value], cols: &[&str]) -> std::path::PathBuf {
    use std::sync::Arc;

    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let path = dir.join("p.parquet");
    let schema = format!(
        "message rows {{ {} }}",
        cols.iter().map(|c| format!("REQUIRED BYTE_ARRAY {c} (UTF8);")).collect::<String>()
    );
    let schema = Arc::new(parse_message_type(&schema).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let mut writer = SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, props).unwrap();
    let mut rg = writer.next_row_group().unwrap();
    let mut i = 0;
    while let Some(mut col) = rg.next_column().unwrap() {
        let values: Vec<ByteArray> =
            rows.iter().map(|r| ByteArray::from(r[cols[i]].as_str().unwrap())).collect();
        col.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
        col.close().unwrap();
        i += 1;
    }
    rg.close().unwrap();
    writer.close().unwrap();
    path
}

#[test]
fn plain_text_is_bos_prompt_then_response_and_eos() {
    let tok = llama3();
    let dir = scratch("pref-plain");
    let path =
        write_jsonl(&dir, "p.jsonl", &[json!({"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5"})]);
    let mut spec = pref_spec(&path);
    spec.template = InstructTemplate::Plain;
    let ds = load_pairs(&spec, tok);
    let p = &ds.pairs()[0];
    let bos = tok.bos_id().unwrap();
    let eos = tok.eos_id().unwrap();
    // BOS only where the tokenizer's own configuration adds one to plain text.
    let mut want_prompt = if tok.add_bos_default() { vec![bos] } else { vec![] };
    want_prompt.extend(tok.encode("Q: 2+2?\nA:", false).unwrap());
    assert_eq!(p.prompt_ids, want_prompt);
    let mut want_chosen = tok.encode(" 4", false).unwrap();
    want_chosen.push(eos);
    assert_eq!(p.chosen_ids, want_chosen);
    assert_eq!(ds.stats().prompt_format.map(|f| f.to_string()).as_deref(), Some("text"));
    // Message lists have no plain-text form.
    let path = write_jsonl(
        &dir,
        "m.jsonl",
        &[json!({"prompt": [{"role": "user", "content": "Hi"}], "chosen": "a", "rejected": "b"})],
    );
    let mut spec = pref_spec(&path);
    spec.template = InstructTemplate::Plain;
    let e = load_err(&spec, tok);
    assert!(
        e.contains("m.jsonl: line 1: column \"prompt\": plain-text preference data needs strings"),
        "{e}"
    );
}

#[test]
fn long_pairs_cut_the_prompt_from_the_left_and_responses_at_the_end() {
    let tok = llama3();
    let dir = scratch("pref-truncate");
    let words = |n: usize, w: &str| vec![w; n].join(" ");
    let rows = [
        json!({"prompt": words(50, "alpha"), "chosen": words(20, "yes"), "rejected": words(5, "no")}),
        json!({"prompt": "short", "chosen": "ok", "rejected": "no"}),
    ];
    let path = write_jsonl(&dir, "long.jsonl", &rows);
    let mut spec = pref_spec(&path);
    spec.template = InstructTemplate::Plain;
    let full = load_pairs(&spec, tok);
    let (p0, c0, r0) = {
        let p = &full.pairs()[0];
        (p.prompt_ids.clone(), p.chosen_ids.clone(), p.rejected_ids.clone())
    };
    assert!(p0.len() > 45 && c0.len() > 15 && r0.len() < 10, "{} {} {}", p0.len(), c0.len(), r0.len());

    // Room for min_response_tokens = 8 response tokens: the prompt keeps its last 40 - 8 tokens,
    // both responses their first 8.
    spec.max_seq_len = 40;
    spec.min_response_tokens = 8;
    let ds = load_pairs(&spec, tok);
    let p = &ds.pairs()[0];
    assert!(p.truncated && !ds.pairs()[1].truncated);
    assert_eq!(p.prompt_ids, p0[p0.len() - 32..]);
    assert_eq!(p.chosen_ids, c0[..8]);
    assert_eq!(p.rejected_ids, r0[..r0.len().min(8)]);
    assert_eq!(ds.stats().truncated, 1);
    assert_eq!(ds.stats().truncated_at, [RowLoc::Line(1)]);

    // A prompt that fits leaves all the rest to the responses (cut at the end).
    spec.max_seq_len = p0.len() + 10;
    let ds = load_pairs(&spec, tok);
    let p = &ds.pairs()[0];
    assert_eq!((p.prompt_ids.clone(), p.chosen_ids.clone()), (p0.clone(), c0[..10].to_vec()));
    assert!(p.prompt_ids.len() + p.chosen_ids.len().max(p.rejected_ids.len()) <= spec.max_seq_len);

    // min_response_tokens larger than the responses: room for the longer one only.
    spec.max_seq_len = 40;
    spec.min_response_tokens = 1000;
    let p = load_pairs(&spec, tok).pairs()[0].clone();
    assert_eq!(p.chosen_ids, c0);
    assert_eq!(p.prompt_ids, p0[p0.len() - (40 - c0.len())..]);

    // drop and error.
    spec.long_rows = LongRows::Drop;
    let ds = load_pairs(&spec, tok);
    assert_eq!((ds.len(), ds.stats().dropped_too_long), (1, 1));
    assert!(ds.stats().summary(40).contains("1 dropped: longer than max_seq_len 40 (line 1)"));
    spec.long_rows = LongRows::Error;
    let e = load_err(&spec, tok);
    assert!(e.contains("long.jsonl: line 1:") && e.contains("longer than max_seq_len 40"), "{e}");
}

#[test]
fn bad_rows_name_file_row_and_column() {
    let tok = smollm2();
    let dir = scratch("pref-bad");
    let user = json!({"role": "user", "content": "Hi"});
    let a = |t: &str| json!({"role": "assistant", "content": t});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"prompt": "Hi", "chosen": "a"}), "line 2: missing column \"rejected\""),
        (json!({"chosen": "a", "rejected": "b"}), "line 2: missing column \"prompt\""),
        (json!({"prompt": "Hi", "chosen": 3, "rejected": "b"}), "line 2: column \"chosen\": expected a string or a list of messages, found a number"),
        (json!({"prompt": "Hi", "chosen": "a", "rejected": [a("b")]}), "line 2: column \"rejected\": is a message list but \"chosen\" is a string"),
        (json!({"prompt": "Hi", "chosen": [user, a("x")], "rejected": [a("y"), user]}), "line 2: column \"rejected[1]\": the last message must be the assistant's answer, found role \"user\""),
        (json!({"prompt": "Hello", "chosen": [user, a("x")], "rejected": [a("y")]}), "line 2: column \"chosen\": the messages before the answer must be the prompt's messages"),
        (json!({"chosen": [a("x")], "rejected": [a("y")]}), "line 2: column \"chosen\": without a \"prompt\" column"),
        (json!({"chosen": [user, a("x")], "rejected": [user]}), "line 2: column \"rejected\": the conversation is all prefix shared"),
        (json!({"chosen": [user, a("x"), user], "rejected": [user, a("y"), user]}), "line 2: column \"chosen\": after the prefix shared with \"rejected\", expected only assistant messages"),
        (json!({"prompt": "Hi", "chosen": [user, {"role": "robot", "content": "x"}], "rejected": [a("y")]}), "line 2: column \"chosen[1].role\": unknown role \"robot\""),
        (json!({"prompt": [], "chosen": "a", "rejected": "b"}), "line 2: column \"prompt\": the conversation has no messages"),
        (json!({"prompt": "Hi", "chosen": "a", "rejected": "b", "lang": 1}), "line 2: column \"lang\": expected a string, found a number"),
    ];
    let good = json!({"prompt": "Hi", "chosen": "a", "rejected": "b"});
    for (i, (bad, want)) in cases.into_iter().enumerate() {
        let path = write_jsonl(&dir, &format!("bad{i}.jsonl"), &[good.clone(), bad]);
        let e = load_err(&pref_spec(&path), tok);
        assert!(e.contains(&format!("bad{i}.jsonl: {want}")), "case {i}: {e}");
    }
    // CSV rows are numbered with their line.
    let path = write(&dir, "bad.csv", "prompt,chosen\nHi,a\n");
    let e = load_err(&pref_spec(&path), tok);
    assert!(e.contains("bad.csv: row 1 (line 2): missing column \"rejected\""), "{e}");
    // column_map renames, and its keys are checked.
    let path = write_jsonl(&dir, "renamed.jsonl", &[json!({"question": "Hi", "good": "a", "bad": "b"})]);
    let mut spec = pref_spec(&path);
    for (k, v) in [("prompt", "question"), ("chosen", "good"), ("rejected", "bad")] {
        spec.column_map.insert(k.into(), v.into());
    }
    assert_eq!(load_pairs(&spec, tok).len(), 1);
    spec.column_map.insert("output".into(), "x".into());
    assert!(load_err(&spec, tok).contains("column_map key \"output\" is not a column of preference datasets"));
    // Settings that do not fit preference data.
    let mut spec = pref_spec(&path);
    spec.template = InstructTemplate::Alpaca;
    assert!(load_err(&spec, tok).contains("template alpaca is for instruct datasets"));
    let mut spec = pref_spec(&path);
    spec.packed = true;
    assert!(load_err(&spec, tok).contains("preference pairs cannot be packed"));
    let e = Dataset::load(&pref_spec(&path), tok).unwrap_err();
    assert!(matches!(e, DataError::Config(_)) && e.to_string().contains("PreferenceDataset::load"), "{e}");
    let e = PreferenceDataset::load(&DatasetSpec::new(DatasetKind::Chat, &path), tok).unwrap_err();
    assert!(e.to_string().contains("reads preference datasets, not chat"), "{e}");
    assert_eq!("dpo".parse::<DatasetKind>().unwrap(), DatasetKind::Preference);
    assert_eq!(FileFormat::from_extension("jsonl"), Some(FileFormat::Jsonl));
}

#[test]
fn the_pair_loader_shuffles_by_seed_and_resumes_exactly() {
    let tok = smollm2();
    let dir = scratch("pref-loader");
    let rows: Vec<Value> = (0..7)
        .map(|i| json!({"prompt": format!("Question {i}?"), "chosen": "Yes.", "rejected": format!("No, {}", "really ".repeat(i))}))
        .collect();
    let ds = load_pairs(&pref_spec(&write_jsonl(&dir, "p.jsonl", &rows)), tok);
    let pad = 0;
    let loader = PreferenceLoader::new(&ds, 3, true, 42, pad).unwrap();
    assert_eq!(loader.batches_per_epoch(), 3);
    let epoch: Vec<_> = loader.epoch(1).collect();
    assert_eq!(epoch, loader.epoch(1).collect::<Vec<_>>(), "same seed and epoch, same batches");
    assert_eq!(loader.epoch_from(1, 1).collect::<Vec<_>>(), epoch[1..], "resume at batch 1");
    assert_ne!(loader.order(0), loader.order(1));
    let mut seen: Vec<usize> = epoch.iter().flat_map(|b| b.indices.clone()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..7).collect::<Vec<_>>());
    assert_eq!(loader.locate(4), (1, 1));
    // Rows 0..n chosen, n..2n rejected, right-padded, labels on the responses only.
    let b = &epoch[0];
    assert_eq!((b.pairs, b.batch.batch), (3, 6));
    for (k, &i) in b.indices.iter().enumerate() {
        let pair = &ds.pairs()[i];
        for (row, sample) in [(k, pair.chosen_sample()), (b.pairs + k, pair.rejected_sample())] {
            let seq = b.batch.seq;
            let ids = &b.batch.ids[row * seq..(row + 1) * seq];
            let labels = &b.batch.labels[row * seq..(row + 1) * seq];
            assert_eq!(ids[..sample.len()], sample.ids);
            assert!(ids[sample.len()..].iter().all(|&t| t == pad));
            assert_eq!(labels[..sample.len()], sample.labels);
            assert!(labels[sample.len()..].iter().all(|&l| l == IGNORE_INDEX));
        }
    }
    let total: usize =
        b.indices.iter().map(|&i| ds.pairs()[i].chosen_ids.len() + ds.pairs()[i].rejected_ids.len()).sum();
    assert_eq!(
        b.batch.label_tokens, total,
        "every response token is a target (the first one of the prompt's end)"
    );
    assert_eq!(PreferenceLoader::new(&ds, 3, false, 0, 0).unwrap().drop_last(true).batches_per_epoch(), 2);
    assert!(PreferenceLoader::new(&ds, 0, false, 0, 0).is_err());
}
