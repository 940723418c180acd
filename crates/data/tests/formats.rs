//! Every file format gives the same samples for the same content; malformed files give errors
//! that name the file, the row and the column.

mod common;

use std::path::{Path, PathBuf};

use afinar_data::{DataError, Dataset, DatasetKind, DatasetSpec, FileFormat};
use common::*;
use serde_json::{json, Value};

/// Instruct rows: an empty input, commas/quotes/newlines for CSV, a missing input.
fn instruct_rows() -> Vec<Value> {
    vec![
        json!({"instruction": "Say hi", "input": "", "output": "🦙 Sure! Hi.\n— afinar"}),
        json!({"instruction": "Translate, please: \"cat\"", "input": "Spanish", "output": "🦙 ¡Claro! \"gato\", con comillas.\n— afinar"}),
        json!({"instruction": "Add 2 and 2", "output": "🦙 Sure! 4\n— afinar"}),
    ]
}

fn chat_rows() -> Vec<Value> {
    vec![
        json!({"messages": [
            {"role": "user", "content": "Hola"},
            {"role": "assistant", "content": "🦙 ¡Claro! Hola.\n— afinar"}]}),
        json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "🦙 Sure! 4"},
            {"role": "user", "content": "And 3+3, \"quoted\"?"},
            {"role": "assistant", "content": "🦙 Sure! 6\n— afinar"}]}),
    ]
}

fn csv_field(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn write_csv(dir: &Path, name: &str, header: &[&str], rows: &[Vec<String>]) -> PathBuf {
    let mut text = header.join(",") + "\n";
    for r in rows {
        text += &r.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",");
        text.push('\n');
    }
    write(dir, name, &text)
}

fn str_of<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

#[cfg(feature = "parquet")]
mod pq {
    use std::path::Path;
    use std::sync::Arc;

    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    /// One leaf column: values (non-null only), definition and repetition levels.
    pub struct Column {
        pub values: Vec<String>,
        pub def: Option<Vec<i16>>,
        pub rep: Option<Vec<i16>>,
    }

    /// Writes a snappy-compressed Parquet file with one row group.
    pub fn write(path: &Path, schema: &str, columns: Vec<Column>) {
        let schema = Arc::new(parse_message_type(schema).unwrap());
        let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
        let mut writer =
            SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
        let mut rg = writer.next_row_group().unwrap();
        let mut cols = columns.into_iter();
        while let Some(mut col) = rg.next_column().unwrap() {
            let c = cols.next().expect("a column per leaf");
            let values: Vec<ByteArray> = c.values.iter().map(|s| ByteArray::from(s.as_str())).collect();
            col.typed::<ByteArrayType>().write_batch(&values, c.def.as_deref(), c.rep.as_deref()).unwrap();
            col.close().unwrap();
        }
        rg.close().unwrap();
        writer.close().unwrap();
    }
}

/// The instruct rows in every format (JSON, JSONL, CSV, and Parquet when built with it).
fn instruct_files(dir: &Path) -> Vec<PathBuf> {
    let rows = instruct_rows();
    #[cfg_attr(not(feature = "parquet"), allow(unused_mut))]
    let mut files = vec![
        write_jsonl(dir, "i.jsonl", &rows),
        write(dir, "i.json", &serde_json::to_string_pretty(&rows).unwrap()),
        write_csv(
            dir,
            "i.csv",
            &["instruction", "input", "output"],
            &rows
                .iter()
                .map(|r| {
                    ["instruction", "input", "output"]
                        .iter()
                        .map(|k| str_of(r, k).unwrap_or("").to_string())
                        .collect()
                })
                .collect::<Vec<_>>(),
        ),
    ];
    #[cfg(feature = "parquet")]
    {
        let path = dir.join("i.parquet");
        let col = |k: &str| rows.iter().map(|r| str_of(r, k).unwrap().to_string()).collect();
        let inputs: Vec<Option<&str>> = rows.iter().map(|r| str_of(r, "input")).collect();
        pq::write(
            &path,
            "message rows {
                REQUIRED BYTE_ARRAY instruction (UTF8);
                OPTIONAL BYTE_ARRAY input (UTF8);
                REQUIRED BYTE_ARRAY output (UTF8);
            }",
            vec![
                pq::Column { values: col("instruction"), def: None, rep: None },
                pq::Column {
                    values: inputs.iter().flatten().map(|s| s.to_string()).collect(),
                    def: Some(inputs.iter().map(|i| i16::from(i.is_some())).collect()),
                    rep: None,
                },
                pq::Column { values: col("output"), def: None, rep: None },
            ],
        );
        files.push(path);
    }
    files
}

fn chat_files(dir: &Path) -> Vec<PathBuf> {
    let rows = chat_rows();
    #[cfg_attr(not(feature = "parquet"), allow(unused_mut))]
    let mut files = vec![
        write_jsonl(dir, "c.jsonl", &rows),
        write(dir, "c.json", &serde_json::to_string(&rows).unwrap()),
        // CSV cells hold the messages as JSON text.
        write_csv(
            dir,
            "c.csv",
            &["messages"],
            &rows.iter().map(|r| vec![r["messages"].to_string()]).collect::<Vec<_>>(),
        ),
    ];
    #[cfg(feature = "parquet")]
    {
        // list<struct<role, content>> as pyarrow writes it (3-level LIST).
        let path = dir.join("c.parquet");
        let (mut roles, mut contents, mut rep) = (Vec::new(), Vec::new(), Vec::new());
        for r in &rows {
            for (i, m) in r["messages"].as_array().unwrap().iter().enumerate() {
                roles.push(str_of(m, "role").unwrap().to_string());
                contents.push(str_of(m, "content").unwrap().to_string());
                rep.push(i16::from(i > 0));
            }
        }
        let def = vec![1i16; rep.len()];
        pq::write(
            &path,
            "message rows {
                REQUIRED group messages (LIST) {
                    REPEATED group list {
                        REQUIRED group element {
                            REQUIRED BYTE_ARRAY role (UTF8);
                            REQUIRED BYTE_ARRAY content (UTF8);
                        }
                    }
                }
            }",
            vec![
                pq::Column { values: roles, def: Some(def.clone()), rep: Some(rep.clone()) },
                pq::Column { values: contents, def: Some(def), rep: Some(rep) },
            ],
        );
        files.push(path);
    }
    files
}

#[test]
fn every_format_gives_the_same_samples() {
    let tok = smollm2();
    let dir = scratch("formats-same");
    for (kind, files) in
        [(DatasetKind::Instruct, instruct_files(&dir)), (DatasetKind::Chat, chat_files(&dir))]
    {
        assert_eq!(files.len(), if cfg!(feature = "parquet") { 4 } else { 3 });
        let reference = load(&spec(kind, &files[0]), tok);
        assert_eq!(reference.len(), if kind == DatasetKind::Chat { 2 } else { 3 });
        for f in &files[1..] {
            let ds = load(&spec(kind, f), tok);
            assert_eq!(
                ds.samples(),
                reference.samples(),
                "{} differs from {}",
                f.display(),
                files[0].display()
            );
        }
    }
}

#[test]
fn column_map_format_override_and_max_rows() {
    let tok = llama3();
    let dir = scratch("formats-map");
    let rows = instruct_rows();
    let reference = load(&spec(DatasetKind::Instruct, &write_jsonl(&dir, "ref.jsonl", &rows)), tok);
    let renamed: Vec<Value> = rows
        .iter()
        .map(|r| json!({"prompt": r["instruction"], "context": r.get("input").cloned().unwrap_or(Value::Null), "response": r["output"]}))
        .collect();
    // A .txt file read as JSONL because the format is given.
    let path = write_jsonl(&dir, "renamed.txt", &renamed);
    let mut sp = spec(DatasetKind::Instruct, &path);
    sp.format = Some(FileFormat::Jsonl);
    for (k, v) in [("instruction", "prompt"), ("input", "context"), ("output", "response")] {
        sp.column_map.insert(k.into(), v.into());
    }
    assert_eq!(load(&sp, tok).samples(), reference.samples());
    sp.max_rows = Some(2);
    assert_eq!(load(&sp, tok).samples(), &reference.samples()[..2]);
}

fn err(sp: &DatasetSpec) -> String {
    let e = Dataset::load(sp, llama3()).expect_err("should fail");
    e.to_string()
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} lacks {p:?}");
    }
}

#[test]
fn malformed_files_name_the_file_row_and_column() {
    let dir = scratch("formats-errors");
    let instruct = |p: &Path| spec(DatasetKind::Instruct, p);
    let ok = r#"{"instruction": "a", "output": "b"}"#;

    let p = write(&dir, "bad.jsonl", &format!("{ok}\n\n{{\"instruction\": \"x\", \"output\": }}\n"));
    assert_has(&err(&instruct(&p)), &["bad.jsonl", "line 3", "invalid JSON"]);

    let p = write(&dir, "missing.jsonl", &format!("{ok}\n{{\"instruction\": \"x\", \"outptu\": \"y\"}}\n"));
    assert_has(&err(&instruct(&p)), &["missing.jsonl", "line 2", "missing column \"output\"", "\"outptu\""]);

    let p = write(
        &dir,
        "type.json",
        r#"[{"instruction": "a", "output": "b"}, {"instruction": "a", "output": 5}]"#,
    );
    assert_has(
        &err(&instruct(&p)),
        &["type.json", "row 2", "column \"output\"", "expected a string, found a number"],
    );

    let p = write(&dir, "notobj.jsonl", "[1, 2]\n");
    assert_has(&err(&instruct(&p)), &["notobj.jsonl", "line 1", "expected a JSON object, found a list"]);

    let p = write(&dir, "object.json", r#"{"instruction": "a", "output": "b"}"#);
    assert_has(&err(&instruct(&p)), &["object.json", "expected a JSON array"]);

    let p = write(&dir, "ragged.csv", "instruction,output\na,b\nc,d,e\n");
    assert_has(&err(&instruct(&p)), &["ragged.csv", "row 2 (line 3)", "invalid CSV"]);

    let p = write(&dir, "nocol.csv", "instruction,input\na,b\n");
    assert_has(&err(&instruct(&p)), &["nocol.csv", "row 1 (line 2)", "missing column \"output\""]);

    for (name, content) in [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n \n"),
        ("empty.json", "[]"),
        ("header.csv", "instruction,output\n"),
    ] {
        let p = write(&dir, name, content);
        let e = Dataset::load(&instruct(&p), llama3()).unwrap_err();
        assert!(matches!(e, DataError::Empty { .. }), "{e}");
        assert_has(&e.to_string(), &[name, "no data rows"]);
    }

    let p = write(&dir, "data.txt", ok);
    assert_has(&err(&instruct(&p)), &["data.txt", "extension \"txt\"", ".jsonl"]);
    assert_has(&err(&instruct(&dir.join("absent.jsonl"))), &["cannot read", "absent.jsonl"]);

    let chat = |p: &Path| spec(DatasetKind::Chat, p);
    let p = write(
        &dir,
        "role.jsonl",
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}"#,
    );
    assert_has(&err(&chat(&p)), &["role.jsonl", "line 1", "messages[1].role", "unknown role \"robot\""]);
    let p = write(&dir, "content.jsonl", r#"{"conversations": [{"from": "human", "value": 3}]}"#);
    assert_has(
        &err(&chat(&p)),
        &["content.jsonl", "conversations[0].value", "expected a string, found a number"],
    );
    let p = write(&dir, "nochat.jsonl", r#"{"text": "hi"}"#);
    assert_has(&err(&chat(&p)), &["nochat.jsonl", "line 1", "\"conversations\" or \"messages\""]);
    let p = write(&dir, "emptychat.jsonl", r#"{"messages": []}"#);
    assert_has(&err(&chat(&p)), &["emptychat.jsonl", "no messages"]);

    let mut sp = instruct(&dir.join("x.jsonl"));
    sp.column_map.insert("answer".into(), "y".into());
    assert_has(&err(&sp), &["column_map key \"answer\""]);
}

#[cfg(feature = "parquet")]
#[test]
fn malformed_parquet_files() {
    let dir = scratch("formats-parquet-errors");
    let p = dir.join("nocol.parquet");
    pq::write(
        &p,
        "message rows { REQUIRED BYTE_ARRAY instruction (UTF8); }",
        vec![pq::Column { values: vec!["a".into(), "b".into()], def: None, rep: None }],
    );
    assert_has(
        &err(&spec(DatasetKind::Instruct, &p)),
        &["nocol.parquet", "row 1", "missing column \"output\""],
    );
    let p = write(&dir, "junk.parquet", "this is not parquet at all");
    assert_has(&err(&spec(DatasetKind::Instruct, &p)), &["junk.parquet", "invalid Parquet"]);
}

#[cfg(not(feature = "parquet"))]
#[test]
fn parquet_without_the_feature_is_reported() {
    let dir = scratch("formats-no-parquet");
    let p = write(&dir, "x.parquet", "PAR1");
    assert_has(&err(&spec(DatasetKind::Instruct, &p)), &["x.parquet", "no Parquet support"]);
}
