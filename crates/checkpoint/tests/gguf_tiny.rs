//! The tiny GGUF written by GGUFWriter (scripts/fixtures/gguf_quants.py): every metadata value
//! type, tensors of many dtypes and ranks, a custom alignment.

mod common;

use afinar_checkpoint::gguf::{GgufFile, MetaValue};
use afinar_checkpoint::{CheckpointError, DType};
use common::*;
use serde_json::Value;

/// Compares one parsed metadata value with its fixture description.
fn check_value(
    key: &str,
    got: &MetaValue,
    vtype: &str,
    want: &Value,
    elem: Option<&str>,
    inner: Option<&str>,
) {
    assert_eq!(got.type_name(), vtype, "{key}: type");
    match got {
        MetaValue::U8(_) | MetaValue::U16(_) | MetaValue::U32(_) | MetaValue::U64(_) => {
            assert_eq!(got.as_u64(), want.as_u64(), "{key}");
        }
        MetaValue::I8(_) | MetaValue::I16(_) | MetaValue::I32(_) | MetaValue::I64(_) => {
            assert_eq!(got.as_i64(), want.as_i64(), "{key}");
        }
        MetaValue::F32(v) => assert_eq!(u64::from(v.to_bits()), want.as_u64().expect("bits"), "{key}"),
        MetaValue::F64(v) => assert_eq!(v.to_bits(), want.as_u64().expect("bits"), "{key}"),
        MetaValue::Bool(v) => assert_eq!(Some(*v), want.as_bool(), "{key}"),
        MetaValue::Str(s) => assert_eq!(Some(s.as_str()), want.as_str(), "{key}"),
        MetaValue::Array(items) => {
            let want = want.as_array().expect("array");
            assert_eq!(items.len(), want.len(), "{key}: length");
            let elem = elem.expect("elem_type");
            for (i, (g, w)) in items.iter().zip(want).enumerate() {
                let k = format!("{key}[{i}]");
                if elem == "ARRAY" {
                    check_value(&k, g, "ARRAY", w, inner, None);
                } else {
                    check_value(&k, g, elem, w, None, None);
                }
            }
        }
    }
}

#[test]
fn metadata_matches() {
    let f = GgufFile::open(fixture("tiny.gguf")).expect("open tiny.gguf");
    let want = read_json("tiny_gguf.json");
    assert_eq!(f.version() as u64, want["version"].as_u64().expect("version"));
    let entries = want["metadata"].as_array().expect("metadata");
    assert_eq!(f.metadata().len(), entries.len(), "metadata count");
    let keys: Vec<&str> = entries.iter().map(|e| e["key"].as_str().expect("key")).collect();
    assert_eq!(f.metadata_keys(), keys.as_slice(), "file order");
    for e in entries {
        let key = e["key"].as_str().expect("key");
        let got = f.get(key).unwrap_or_else(|| panic!("missing {key}"));
        check_value(
            key,
            got,
            e["type"].as_str().expect("type"),
            &e["value"],
            e["elem_type"].as_str(),
            e["inner_elem_type"].as_str(),
        );
    }
    // Accessors.
    assert_eq!(f.get("general.architecture").and_then(MetaValue::as_str), Some("llama"));
    assert_eq!(f.require_str("general.architecture").expect("arch"), "llama");
    assert_eq!(f.require_u64("test.u8").expect("u8"), 250);
    assert_eq!(f.get("test.i8").and_then(MetaValue::as_u64), None, "negative is no u64");
    assert_eq!(f.get("test.i8").and_then(MetaValue::as_f64), Some(-120.0));
    assert!(f.require_f64("test.f32").is_ok());
    let strs = f.get("test.array_str").and_then(MetaValue::as_str_array).expect("strings");
    assert_eq!(strs.len(), 5);
    let e = f.require_u64("no.such.key").unwrap_err();
    assert!(e.to_string().contains("tiny.gguf") && e.to_string().contains("no.such.key"), "{e}");
    let e = f.require_u64("test.string").unwrap_err();
    assert!(e.to_string().contains("test.string"), "{e}");
}

#[test]
fn layout_matches_reference_reader() {
    let f = GgufFile::open(fixture("tiny.gguf")).expect("open");
    let want = read_json("tiny_gguf.json");
    let layout = &want["layout"];
    assert_eq!(f.alignment(), as_usize(&layout["alignment"]));
    assert_eq!(f.alignment(), 64, "fixture uses a custom alignment");
    assert_eq!(f.data_offset(), as_usize(&layout["data_offset"]));
    for t in want["tensors"].as_array().expect("tensors") {
        let name = t["name"].as_str().expect("name");
        let info = f.tensor_info(name).expect("info");
        assert_eq!(info.file_offset, as_usize(&t["file_offset"]), "{name}");
        assert_eq!(info.n_bytes, as_usize(&t["n_bytes"]), "{name}");
    }
}

#[test]
fn tensors_match_and_shapes_are_row_major() {
    let f = GgufFile::open(fixture("tiny.gguf")).expect("open");
    let want = read_json("tiny_gguf.json");
    let tensors = want["tensors"].as_array().expect("tensors");
    let names: Vec<&str> = tensors.iter().map(|t| t["name"].as_str().expect("name")).collect();
    assert_eq!(f.tensor_names(), names, "names in file order");
    let mut dtypes = std::collections::BTreeSet::new();
    for t in tensors {
        let name = t["name"].as_str().expect("name");
        let view = f.tensor(name).expect(name);
        let shape = usize_vec(&t["shape"]);
        assert_eq!(view.name, name);
        assert_eq!(view.shape, shape, "{name}: row-major shape [out, in]");
        let info = f.tensor_info(name).expect("info");
        let reversed: Vec<usize> = info.dims.iter().rev().copied().collect();
        assert_eq!(reversed, shape, "{name}: GGUF dims are innermost first");
        assert_eq!(view.dtype.name(), t["dtype"].as_str().expect("dtype"), "{name}");
        assert_eq!(view.numel(), shape.iter().product::<usize>());
        assert_eq!(Some(view.data.len()), view.dtype.bytes_for(view.numel()));
        let got = view.to_f32().expect(name);
        assert_bits_eq(name, &got, &f32_from_bits(&t["f32_bits"]));
        dtypes.insert(view.dtype.name());
    }
    assert_eq!(dtypes.len(), DType::ALL.len(), "the fixture covers every dtype: {dtypes:?}");
    // A linear weight is [out, in].
    assert_eq!(f.tensor("blk.0.attn_q.weight").expect("q").shape, vec![3, 96]);

    let e = f.tensor("missing.weight").unwrap_err();
    assert!(matches!(e, CheckpointError::TensorNotFound { .. }));
    assert!(e.to_string().contains("tiny.gguf") && e.to_string().contains("missing.weight"));
    assert!(!f.contains("missing.weight") && f.contains("f32.3d"));
}
