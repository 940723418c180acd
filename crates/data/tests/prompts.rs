//! Prompt data (GRPO): string and message-list prompts give the ids the chat template (or plain
//! text) gives, from JSONL, JSON, CSV and Parquet alike; every other column is kept for the
//! rewards; long prompts are cut from the left (or dropped, or refused); bad rows name the file,
//! row and column; the loader shuffles deterministically and resumes exactly; the shipped
//! `data/grpo_arith` task loads.

mod common;

use std::path::Path;

use afinar_data::{
    DataError, Dataset, DatasetKind, DatasetSpec, InstructTemplate, LongRows, PromptDataset, PromptLoader,
    RowLoc,
};
use afinar_tokenizer::{render_template, Message, Tokenizer};
use common::*;
use serde_json::{json, Value};

fn prompt_spec(path: &Path) -> DatasetSpec {
    DatasetSpec::new(DatasetKind::Prompt, path)
}

fn load_prompts(spec: &DatasetSpec, tok: &Tokenizer) -> PromptDataset {
    PromptDataset::load(spec, tok).unwrap_or_else(|e| panic!("load failed: {e}"))
}

fn load_err(spec: &DatasetSpec, tok: &Tokenizer) -> String {
    match PromptDataset::load(spec, tok) {
        Ok(_) => panic!("expected an error loading {}", spec.source.display()),
        Err(e) => e.to_string(),
    }
}

fn render(tok: &Tokenizer, messages: &[Message]) -> String {
    render_template(tok.chat_template().unwrap(), messages, true, tok.bos_token(), tok.eos_token()).unwrap()
}

fn rows() -> Vec<Value> {
    vec![
        json!({"prompt": [
                {"role": "system", "content": "Answer briefly. End with: Answer: <number>"},
                {"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples?"}],
               "answer": 7, "lang": "en"}),
        json!({"prompt": "¿Cuánto es 2 más 2?", "answer": "4", "lang": "es", "extra": {"k": [1, 2]}}),
    ]
}

#[test]
fn chat_and_string_prompts_render_through_the_template_and_keep_their_columns() {
    let tok = smollm2();
    let dir = scratch("prompt-chat");
    let path = write_jsonl(&dir, "p.jsonl", &rows());
    let ds = load_prompts(&prompt_spec(&path), tok);
    assert_eq!(ds.len(), 2);
    let m0 = vec![
        Message::new("system", "Answer briefly. End with: Answer: <number>"),
        Message::new("user", "Tom has 3 apples and buys 4 more. How many apples?"),
    ];
    let m1 = vec![Message::new("user", "¿Cuánto es 2 más 2?")];
    for (r, m) in ds.rows().iter().zip([&m0, &m1]) {
        let text = render(tok, m);
        assert!(text.ends_with("<|im_start|>assistant\n"), "{text:?}");
        assert_eq!(r.text, text);
        assert_eq!(r.ids, tok.encode(&text, false).unwrap());
        assert_eq!(&r.messages, m);
        assert!(!r.truncated);
    }
    let (a, b) = (&ds.rows()[0], &ds.rows()[1]);
    assert_eq!((a.row, a.at, b.row, b.at), (0, RowLoc::Line(1), 1, RowLoc::Line(2)));
    assert_eq!(a.fields.keys().collect::<Vec<_>>(), ["answer", "lang"]);
    assert_eq!((&a.fields["answer"], &a.fields["lang"]), (&json!(7), &json!("en")));
    assert_eq!(b.fields["extra"], json!({"k": [1, 2]}));
    assert_eq!(a.user_text(), "Tom has 3 apples and buys 4 more. How many apples?");
    assert_eq!(b.user_text(), "¿Cuánto es 2 más 2?");
    assert_eq!(ds.stats().kept, 2);
    assert_eq!(ds.stats().tokens, a.ids.len() + b.ids.len());
}

#[test]
fn every_file_format_gives_the_same_prompts() {
    let tok = smollm2();
    let dir = scratch("prompt-formats");
    let rows = rows();
    let csv_field = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    // CSV: a message-list prompt is a cell holding its JSON text; other cells are strings.
    let mut csv = String::from("prompt,answer,lang\n");
    for r in &rows {
        let prompt = match &r["prompt"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let answer = match &r["answer"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        csv += &format!(
            "{},{},{}\n",
            csv_field(&prompt),
            csv_field(&answer),
            csv_field(r["lang"].as_str().unwrap())
        );
    }
    let reference = load_prompts(&prompt_spec(&write_jsonl(&dir, "p.jsonl", &rows)), tok);
    let json_ds =
        load_prompts(&prompt_spec(&write(&dir, "p.json", &serde_json::to_string(&rows).unwrap())), tok);
    let csv_ds = load_prompts(&prompt_spec(&write(&dir, "p.csv", &csv)), tok);
    for ds in [&json_ds, &csv_ds] {
        assert_eq!(ds.len(), reference.len());
        for (a, b) in ds.rows().iter().zip(reference.rows()) {
            assert_eq!((&a.ids, &a.text, &a.fields["lang"]), (&b.ids, &b.text, &b.fields["lang"]));
        }
    }
    assert_eq!(json_ds.rows()[0].at, RowLoc::Row(1));
    // CSV cells are strings: the answer 7 arrives as "7" (the rewards parse it).
    assert_eq!(csv_ds.rows()[0].fields["answer"], json!("7"));
    assert_eq!(csv_ds.rows()[1].at, RowLoc::Csv { row: 2, line: 3 });
    #[cfg(feature = "parquet")]
    {
        let path = write_parquet(&dir, &["Hello there, how many?", "¿Cuántos hay?"], &["3", "4"]);
        let pq = load_prompts(&prompt_spec(&path), tok);
        let jl = load_prompts(
            &prompt_spec(&write_jsonl(
                &dir,
                "q.jsonl",
                &[
                    json!({"prompt": "Hello there, how many?", "answer": "3"}),
                    json!({"prompt": "¿Cuántos hay?", "answer": "4"}),
                ],
            )),
            tok,
        );
        for (a, b) in pq.rows().iter().zip(jl.rows()) {
            assert_eq!((&a.ids, &a.fields), (&b.ids, &b.fields));
        }
        assert_eq!(pq.len(), 2);
    }
}

#[cfg(feature = "parquet")]
fn write_parquet(dir: &Path, prompts: &[&str], answers: &[&str]) -> std::path::PathBuf {
    use std::sync::Arc;

    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let path = dir.join("p.parquet");
    let schema = "message rows { REQUIRED BYTE_ARRAY prompt (UTF8); REQUIRED BYTE_ARRAY answer (UTF8); }";
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let mut writer = SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, props).unwrap();
    let mut rg = writer.next_row_group().unwrap();
    for values in [prompts, answers] {
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = values.iter().map(|s| ByteArray::from(*s)).collect();
        col.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
        col.close().unwrap();
    }
    rg.close().unwrap();
    writer.close().unwrap();
    path
}

#[test]
fn plain_prompts_are_bos_and_the_text() {
    let tok = llama3();
    let dir = scratch("prompt-plain");
    let path = write_jsonl(&dir, "p.jsonl", &[json!({"prompt": "Q: 2+2?\nA:", "answer": 4})]);
    let mut spec = prompt_spec(&path);
    spec.template = InstructTemplate::Plain;
    let ds = load_prompts(&spec, tok);
    let mut want = if tok.add_bos_default() { vec![tok.bos_id().unwrap()] } else { vec![] };
    want.extend(tok.encode("Q: 2+2?\nA:", false).unwrap());
    assert_eq!(ds.rows()[0].ids, want);
    assert_eq!(ds.rows()[0].text, "Q: 2+2?\nA:");
    // Message lists need a template.
    let path = write_jsonl(&dir, "m.jsonl", &[json!({"prompt": [{"role": "user", "content": "hi"}]})]);
    let mut spec = prompt_spec(&path);
    spec.template = InstructTemplate::Plain;
    let e = load_err(&spec, tok);
    assert!(e.contains("m.jsonl: line 1: column \"prompt\"") && e.contains("needs string prompts"), "{e}");
}

#[test]
fn long_prompts_keep_their_end_or_are_dropped_or_refused() {
    let tok = smollm2();
    let dir = scratch("prompt-long");
    let long = "word ".repeat(60);
    let path = write_jsonl(
        &dir,
        "p.jsonl",
        &[json!({"prompt": "short?"}), json!({"prompt": long.clone()}), json!({"prompt": "also short?"})],
    );
    let full = load_prompts(&prompt_spec(&path), tok);
    let limit = full.rows()[0].ids.len().max(full.rows()[2].ids.len()) + 1;
    assert!(full.rows()[1].ids.len() > limit);
    let mut spec = prompt_spec(&path);
    spec.max_prompt_tokens = Some(limit);
    let cut = load_prompts(&spec, tok);
    let (a, b) = (&cut.rows()[1], &full.rows()[1]);
    assert!(a.truncated && !cut.rows()[0].truncated);
    assert_eq!(a.ids.as_slice(), &b.ids[b.ids.len() - limit..], "the last tokens are kept");
    assert_eq!(a.text, b.text, "the text is the whole rendered prompt");
    assert_eq!((cut.stats().truncated, cut.stats().truncated_at.clone()), (1, vec![RowLoc::Line(2)]));
    assert_eq!(cut.max_prompt_tokens(), limit);

    spec.long_rows = LongRows::Drop;
    let dropped = load_prompts(&spec, tok);
    assert_eq!(dropped.len(), 2);
    assert_eq!(dropped.rows().iter().map(|r| r.row).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(dropped.stats().dropped_too_long, 1);

    spec.long_rows = LongRows::Error;
    let e = load_err(&spec, tok);
    assert!(e.contains("p.jsonl: line 2:") && e.contains(&format!("longer than max_seq_len {limit}")), "{e}");

    // Without max_prompt_tokens, max_seq_len is the limit.
    let mut spec = prompt_spec(&path);
    spec.max_seq_len = limit;
    assert_eq!(load_prompts(&spec, tok).stats().truncated, 1);
}

#[test]
fn bad_rows_name_the_file_row_and_column() {
    let tok = smollm2();
    let dir = scratch("prompt-bad");
    let cases: Vec<(Vec<Value>, &str)> = vec![
        (vec![json!({"prompt": "ok"}), json!({"question": "x"})], "line 2: missing column \"prompt\""),
        (vec![json!({"prompt": 3})], "line 1: column \"prompt\": expected a string or a list of messages"),
        (vec![json!({"prompt": "   "})], "line 1: column \"prompt\": the prompt is empty"),
        (
            vec![
                json!({"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
            ],
            "line 1: column \"prompt[1]\": the prompt ends with an assistant message",
        ),
        (
            vec![json!({"prompt": [{"role": "wizard", "content": "a"}]})],
            "column \"prompt[0].role\": unknown role",
        ),
        (vec![json!({"prompt": []})], "line 1: column \"prompt\": the conversation has no messages"),
    ];
    for (i, (rows, want)) in cases.into_iter().enumerate() {
        let path = write_jsonl(&dir, &format!("b{i}.jsonl"), &rows);
        let e = load_err(&prompt_spec(&path), tok);
        assert!(e.contains(&format!("b{i}.jsonl: ")) && e.contains(want), "case {i}: {e}");
    }
    let e = load_err(&prompt_spec(&write(&dir, "empty.jsonl", "")), tok);
    assert!(e.contains("no data rows"), "{e}");
    let mut spec = prompt_spec(&write_jsonl(&dir, "ok.jsonl", &[json!({"prompt": "x"})]));
    spec.template = InstructTemplate::Alpaca;
    assert!(load_err(&spec, tok).contains("template alpaca is for instruct datasets"));
    spec.template = InstructTemplate::Auto;
    spec.column_map.insert("answer".into(), "a".into());
    assert!(load_err(&spec, tok).contains("column_map key \"answer\""));
    // The column can be renamed; the other loaders refuse prompt specs.
    let mut spec = prompt_spec(&write_jsonl(&dir, "q.jsonl", &[json!({"question": "x", "answer": 1})]));
    spec.column_map.insert("prompt".into(), "question".into());
    let ds = load_prompts(&spec, tok);
    assert_eq!(ds.rows()[0].fields.keys().collect::<Vec<_>>(), ["answer"]);
    assert!(
        matches!(Dataset::load(&spec, tok), Err(DataError::Config(m)) if m.contains("PromptDataset::load"))
    );
    assert_eq!("grpo".parse::<DatasetKind>().unwrap(), DatasetKind::Prompt);
}

#[test]
fn the_loader_shuffles_per_epoch_and_resumes() {
    let tok = smollm2();
    let dir = scratch("prompt-loader");
    let rows: Vec<Value> =
        (0..10).map(|i| json!({"prompt": format!("question {i}?"), "answer": i})).collect();
    let ds = load_prompts(&prompt_spec(&write_jsonl(&dir, "p.jsonl", &rows)), tok);
    let loader = PromptLoader::new(&ds, 4, true, 7).unwrap();
    assert_eq!(loader.batches_per_epoch(), 3);
    let epoch0: Vec<Vec<usize>> = (0..3).map(|b| loader.batch(0, b).unwrap()).collect();
    assert_eq!(epoch0.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
    let mut seen: Vec<usize> = epoch0.concat();
    seen.sort();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert_ne!(loader.order(0), loader.order(1), "a new order each epoch");
    assert_ne!(loader.order(0), (0..10).collect::<Vec<_>>());
    // The same seed gives the same batches, so a resumed run picks up the same prompts.
    let again = PromptLoader::new(&ds, 4, true, 7).unwrap();
    assert_eq!(again.batch(0, 1), loader.batch(0, 1));
    assert_eq!(loader.batch(0, 3), None);
    assert_eq!(loader.locate(4), (1, 1));
    let dl = PromptLoader::new(&ds, 4, false, 0).unwrap().drop_last(true);
    assert_eq!((dl.batches_per_epoch(), dl.batch(0, 1)), (2, Some(vec![4, 5, 6, 7])));
    assert!(PromptLoader::new(&ds, 0, false, 0).is_err());
}

#[test]
fn the_shipped_arithmetic_task_loads_balanced_with_answers() {
    let tok = smollm2();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/grpo_arith");
    for (file, per_lang) in [("train.jsonl", 400), ("heldout.jsonl", 100)] {
        let ds = load_prompts(&prompt_spec(&root.join(file)), tok);
        assert_eq!(ds.len(), 2 * per_lang, "{file}");
        let mut langs = [0, 0];
        for r in ds.rows() {
            let lang = r.fields["lang"].as_str().unwrap();
            langs[usize::from(lang == "es")] += 1;
            assert!(r.fields["answer"].is_u64(), "{file} row {}", r.row);
            let word = if lang == "es" { "Respuesta:" } else { "Answer:" };
            assert!(r.text.contains(word), "{file} row {}: the format is asked for", r.row);
            assert!(r.ids.len() < 128, "{file} row {}: {} tokens", r.row, r.ids.len());
        }
        assert_eq!(langs, [per_lang, per_lang], "{file}");
    }
    let train = load_prompts(&prompt_spec(&root.join("train.jsonl")), tok);
    let held = load_prompts(&prompt_spec(&root.join("heldout.jsonl")), tok);
    for h in held.rows() {
        assert!(
            !train.rows().iter().any(|t| t.text == h.text),
            "held-out row {} is a training prompt",
            h.row
        );
    }
}
