//! Corrupted checkpoints, written into a temporary folder from the good fixtures: every one must
//! give an error naming the file (and the tensor or key where there is one), never a panic.

mod common;

use std::path::Path;

use afinar_checkpoint::gguf::GgufFile;
use afinar_checkpoint::safetensors::SafetensorsCheckpoint;
use afinar_checkpoint::{CheckpointError, Result};
use common::*;

fn tiny() -> Vec<u8> {
    std::fs::read(fixture("tiny.gguf")).expect("tiny.gguf")
}

fn layout(key: &str) -> usize {
    as_usize(&read_json("tiny_gguf.json")["layout"][key])
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in fixture", String::from_utf8_lossy(needle)))
}

/// Offset of the value type of metadata `key` (just after the key string).
fn value_type_at(bytes: &[u8], key: &str) -> usize {
    find(bytes, key.as_bytes()) + key.len()
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes `bytes` as `name` and opens it; the open must fail with a message naming the file and
/// containing every one of `needles`.
fn gguf_err(dir: &TempDir, name: &str, bytes: &[u8], needles: &[&str]) -> CheckpointError {
    let path = dir.write(name, bytes);
    let e = match GgufFile::open(&path) {
        Ok(_) => panic!("{name}: corrupt GGUF opened without error"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{name}: message lacks the path: {msg}");
    for n in needles {
        assert!(msg.contains(n), "{name}: message lacks {n:?}: {msg}");
    }
    e
}

#[test]
fn gguf_truncated_at_every_section() {
    let dir = TempDir::new("gguf-trunc");
    let good = tiny();
    let want = read_json("tiny_gguf.json");
    let data_end = want["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .map(|t| as_usize(&t["file_offset"]) + as_usize(&t["n_bytes"]))
        .max()
        .expect("tensors");
    let (kv, ti, ti_end, data) =
        (layout("kv_start"), layout("tensor_info_start"), layout("tensor_info_end"), layout("data_offset"));
    // Named cut points: inside the magic, the header, the metadata, the tensor infos, the data.
    let cuts = [
        (2, "bad magic"),
        (6, "truncated"),
        (kv - 4, "truncated"),
        (kv + 5, "truncated"),
        ((kv + ti) / 2, "truncated"),
        (ti + 10, "truncated"),
        (ti_end - 3, "truncated"),
        (ti_end, "past the end of the file"),
        (data + 5, "past the end of the file"),
        (data_end - 1, "past the end of the file"),
    ];
    for (cut, needle) in cuts {
        let e = gguf_err(&dir, &format!("cut{cut}.gguf"), &good[..cut], &[needle]);
        if cut >= ti_end {
            assert!(matches!(e, CheckpointError::Tensor { .. }), "cut {cut}: names the tensor: {e}");
        }
    }
    // Every cut before the end of the last tensor's data fails; cuts in the trailing padding
    // still hold every tensor.
    for cut in (0..good.len()).filter(|c| c % 7 == 0 || *c < data + 64 || *c + 64 > data_end) {
        let file = dir.scratch("sweep.gguf", &good[..cut]);
        match GgufFile::open(file.path()) {
            Ok(f) => {
                assert!(cut >= data_end, "cut at {cut} (< {data_end}) opened");
                for name in f.tensor_names() {
                    f.tensor(name).expect("tensor").to_f32().expect("to_f32");
                }
            }
            Err(e) => {
                assert!(cut < data_end, "cut at {cut} failed: {e}");
                assert!(e.to_string().contains("sweep.gguf"), "{e}");
            }
        }
    }
    gguf_err(&dir, "empty.gguf", &[], &["bad magic"]);
}

#[test]
fn gguf_bad_header_fields() {
    let dir = TempDir::new("gguf-header");
    let good = tiny();

    let mut b = good.clone();
    b[..4].copy_from_slice(b"GGUX");
    gguf_err(&dir, "magic.gguf", &b, &["bad magic"]);

    for (v, needle) in [(1u32, "version 1"), (4, "version 4"), (0x0300_0000, "big-endian")] {
        let mut b = good.clone();
        put_u32(&mut b, 4, v);
        gguf_err(&dir, &format!("version{v}.gguf"), &b, &[needle]);
    }

    let mut b = good.clone();
    put_u64(&mut b, 8, 1 << 60);
    gguf_err(&dir, "tensor_count.gguf", &b, &["tensor count 1152921504606846976 is impossible"]);
    let mut b = good.clone();
    put_u64(&mut b, 16, u64::MAX);
    gguf_err(&dir, "kv_count.gguf", &b, &["metadata count"]);
    // One more entry than there is: the tensor infos are read as metadata and fail.
    let mut b = good.clone();
    put_u64(&mut b, 16, 100);
    gguf_err(&dir, "kv_count_100.gguf", &b, &["metadata entry"]);

    // Version 2 has the same layout: opens identically.
    let mut b = good.clone();
    put_u32(&mut b, 4, 2);
    let path = dir.write("v2.gguf", &b);
    let f = GgufFile::open(&path).expect("version 2");
    assert_eq!(f.version(), 2);
    let g = GgufFile::open(fixture("tiny.gguf")).expect("v3");
    for name in g.tensor_names() {
        assert_eq!(f.tensor(name).expect(name).data, g.tensor(name).expect(name).data);
    }

    let e = GgufFile::open(dir.path().join("does-not-exist.gguf")).unwrap_err();
    assert!(matches!(e, CheckpointError::Io { .. }) && e.to_string().contains("does-not-exist.gguf"));
}

#[test]
fn gguf_bad_metadata() {
    let dir = TempDir::new("gguf-meta");
    let good = tiny();
    let kv = layout("kv_start");

    // A string length of 2^60.
    let mut b = good.clone();
    put_u64(&mut b, kv, 1 << 60);
    gguf_err(&dir, "keylen.gguf", &b, &["metadata entry 0", "claims 1152921504606846976 bytes"]);

    // A string value length of 2^60.
    let mut b = good.clone();
    let at = value_type_at(&b, "test.string");
    put_u64(&mut b, at + 4, 1 << 60);
    gguf_err(&dir, "strlen.gguf", &b, &["test.string", "claims 1152921504606846976 bytes"]);

    // An array of 2^60 strings.
    let mut b = good.clone();
    let at = value_type_at(&b, "test.array_str");
    put_u64(&mut b, at + 8, 1 << 60);
    gguf_err(&dir, "arraylen.gguf", &b, &["test.array_str", "claims 1152921504606846976 elements"]);

    // An unknown value type, and an unknown array element type.
    let mut b = good.clone();
    let at = value_type_at(&b, "test.u16");
    put_u32(&mut b, at, 99);
    gguf_err(&dir, "vtype.gguf", &b, &["test.u16", "unknown metadata value type 99"]);
    let mut b = good.clone();
    let at = value_type_at(&b, "test.array_i32");
    put_u32(&mut b, at + 4, 13);
    gguf_err(&dir, "elemtype.gguf", &b, &["test.array_i32", "unknown element type 13"]);

    // A bool that is neither 0 nor 1, a string that is not UTF-8.
    let mut b = good.clone();
    let at = value_type_at(&b, "test.bool_true");
    b[at + 4] = 7;
    gguf_err(&dir, "bool.gguf", &b, &["test.bool_true", "expected 0 or 1"]);
    let mut b = good.clone();
    let at = value_type_at(&b, "test.string");
    b[at + 12] = 0xff;
    gguf_err(&dir, "utf8.gguf", &b, &["test.string", "UTF-8"]);

    // An alignment that is not a power of two.
    let mut b = good.clone();
    let at = value_type_at(&b, "general.alignment");
    put_u32(&mut b, at + 4, 48);
    gguf_err(&dir, "align.gguf", &b, &["general.alignment", "power of two"]);

    // A duplicated key.
    let mut b = good.clone();
    let at = find(&b, b"test.i16");
    b[at..at + 8].copy_from_slice(b"test.u16");
    gguf_err(&dir, "dupkey.gguf", &b, &["'test.u16' appears twice"]);
}

/// An in-place edit of a file's bytes.
type Patch<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;

#[test]
fn gguf_bad_tensor_infos() {
    let dir = TempDir::new("gguf-tensors");
    let good = tiny();
    let off = layout("first_tensor_offset_field");
    let ty = layout("first_tensor_type_field");
    let nd = layout("first_tensor_ndims_field");
    let first = "token_embd.weight";

    let cases: Vec<(&str, Patch<'_>, &str)> = vec![
        ("offset_oob.gguf", Box::new(|b| put_u64(b, off, 1 << 40)), "past the end of the file"),
        ("offset_overflow.gguf", Box::new(|b| put_u64(b, off, u64::MAX - 63)), "offset"),
        ("offset_misaligned.gguf", Box::new(|b| put_u64(b, off, 8)), "not a multiple of the alignment 64"),
        ("type_unknown.gguf", Box::new(|b| put_u32(b, ty, 99)), "unknown GGML type id 99"),
        ("ndims.gguf", Box::new(|b| put_u32(b, nd, 5)), "5 dimensions"),
        (
            "dims_overflow.gguf",
            Box::new(|b| {
                put_u64(b, nd + 4, 1 << 40);
                put_u64(b, nd + 12, 1 << 40);
            }),
            "overflow",
        ),
        ("dims_huge.gguf", Box::new(|b| put_u64(b, nd + 12, 1 << 32)), "past the end of the file"),
        (
            "row_not_blocks.gguf",
            Box::new(|b| put_u64(b, nd + 4, 48)),
            "not a multiple of the Q8_0 block size 32",
        ),
    ];
    for (name, patch, needle) in cases {
        let mut b = good.clone();
        patch(&mut b);
        let e = gguf_err(&dir, name, &b, &[needle, first]);
        assert!(matches!(e, CheckpointError::Tensor { .. }), "{name}: {e}");
    }

    // A duplicated tensor name.
    let mut b = good.clone();
    let at = find(&b, b"q5_0.matrix");
    b[at..at + 11].copy_from_slice(b"q4_0.matrix");
    gguf_err(&dir, "dupname.gguf", &b, &["q4_0.matrix", "appears twice"]);

    // A type the format knows but this crate does not decode: the file opens, the tensor errors.
    let mut b = good.clone();
    put_u32(&mut b, ty, 24); // I8: 320 bytes for [5, 64], inside the Q8_0 data's 340
    let path = dir.write("type_i8.gguf", &b);
    let f = GgufFile::open(&path).expect("opens");
    let e = f.tensor(first).unwrap_err();
    assert!(matches!(e, CheckpointError::UnsupportedDType { .. }));
    let msg = e.to_string();
    assert!(msg.contains("type_i8.gguf") && msg.contains(first) && msg.contains("I8"), "{msg}");
}

/// Deterministic random byte corruption of the header, metadata and tensor infos: opening and
/// reading must never panic, and every error names the file.
#[test]
fn gguf_random_corruption_never_panics() {
    let dir = TempDir::new("gguf-fuzz");
    let good = tiny();
    let data = layout("data_offset");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut err) = (0, 0);
    for i in 0..1500 {
        let mut b = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % data;
            b[at] = match next() % 3 {
                0 => next() as u8,
                1 => 0xff,
                _ => b[at] ^ (1 << (next() % 8)),
            };
        }
        let file = dir.scratch(&format!("fuzz{i}.gguf"), &b);
        let path = file.path();
        match GgufFile::open(path) {
            Ok(f) => {
                ok += 1;
                for name in f.tensor_names() {
                    if let Ok(view) = f.tensor(name) {
                        let _ = view.to_f32();
                    }
                }
            }
            Err(e) => {
                err += 1;
                assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            }
        }
    }
    assert!(err > 100 && ok > 10, "corruptions exercised both outcomes: {ok} ok, {err} errors");
}

// ---------------------------------------------------------------------------------------------
// Safetensors

fn st_err(result: Result<SafetensorsCheckpoint>, needles: &[&str]) -> CheckpointError {
    let e = match result {
        Ok(_) => panic!("corrupt safetensors opened without error (expected {needles:?})"),
        Err(e) => e,
    };
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "message lacks {n:?}: {msg}");
    }
    e
}

fn copy_sharded(dir: &Path) {
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ] {
        std::fs::copy(fixture(&format!("st_sharded/{f}")), dir.join(f)).expect("copy");
    }
}

#[test]
fn safetensors_truncated_and_bad_headers() {
    let dir = TempDir::new("st-file");
    let good = std::fs::read(fixture("st_single/model.safetensors")).expect("fixture");
    let header_end = 8 + u64::from_le_bytes(good[..8].try_into().expect("8 bytes")) as usize;
    for cut in [0, 4, 8, 20, header_end - 1] {
        let p = dir.write(&format!("cut{cut}.safetensors"), &good[..cut]);
        let e = st_err(SafetensorsCheckpoint::open(&p), &[&format!("cut{cut}.safetensors")]);
        assert!(matches!(e, CheckpointError::Format { .. }), "{e}");
    }
    // Cut inside the data: the error names a tensor whose data is missing.
    for cut in [header_end + 3, good.len() - 1] {
        let p = dir.write(&format!("cut{cut}.safetensors"), &good[..cut]);
        let e = st_err(SafetensorsCheckpoint::open(&p), &[&format!("cut{cut}.safetensors"), "outside"]);
        assert!(matches!(e, CheckpointError::Tensor { .. }), "{e}");
    }
    // Every cut fails (the last tensor ends the file).
    for cut in 0..good.len() {
        let file = dir.scratch("sweep.safetensors", &good[..cut]);
        st_err(SafetensorsCheckpoint::open(file.path()), &["sweep.safetensors"]);
    }

    let mut b = good.clone();
    b[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let p = dir.write("hlen.safetensors", &b);
    st_err(SafetensorsCheckpoint::open(&p), &["hlen.safetensors", "header length 1152921504606846976"]);

    let mut b = good.clone();
    b[8] = b'[';
    let p = dir.write("json.safetensors", &b);
    st_err(SafetensorsCheckpoint::open(&p), &["json.safetensors", "JSON"]);

    // A shape that does not match the data size (same header length: one digit changed).
    let mut b = good.clone();
    let at = find(&b[..header_end], b"\"model.layers.0.self_attn.q_proj.weight\"");
    let shape = at + find(&b[at..header_end], b"\"shape\":[4,4]") + "\"shape\":[4,".len();
    b[shape] = b'5';
    let p = dir.write("shape.safetensors", &b);
    st_err(
        SafetensorsCheckpoint::open(&p),
        &["shape.safetensors", "model.layers.0.self_attn.q_proj.weight", "needs 80 bytes"],
    );
}

#[test]
fn safetensors_bad_indexes() {
    // A shard named by the index is missing.
    let dir = TempDir::new("st-missing-shard");
    copy_sharded(dir.path());
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).expect("rm");
    st_err(
        SafetensorsCheckpoint::open(dir.path()),
        &["model.safetensors.index.json", "model-00002-of-00002.safetensors", "does not exist"],
    );

    // The index lists a tensor its shard does not hold.
    let dir = TempDir::new("st-bad-entry");
    copy_sharded(dir.path());
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).expect("index")).expect("json");
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors".into();
    std::fs::write(&index_path, index.to_string()).expect("write");
    let e = st_err(
        SafetensorsCheckpoint::open(dir.path()),
        &["model-00001-of-00002.safetensors", "model.norm.weight", "does not contain"],
    );
    assert!(matches!(e, CheckpointError::Tensor { .. }));

    // A tensor missing from the index is not part of the checkpoint.
    let dir = TempDir::new("st-missing-tensor");
    copy_sharded(dir.path());
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).expect("index")).expect("json");
    index["weight_map"].as_object_mut().expect("map").remove("lm_head.weight");
    std::fs::write(&index_path, index.to_string()).expect("write");
    let ckpt = SafetensorsCheckpoint::open(dir.path()).expect("opens");
    assert!(!ckpt.contains("lm_head.weight"));
    let e = ckpt.tensor("lm_head.weight").unwrap_err();
    assert!(matches!(e, CheckpointError::TensorNotFound { .. }));
    assert!(
        e.to_string().contains("model.safetensors.index.json") && e.to_string().contains("lm_head.weight")
    );

    // Broken index files.
    for (name, text, needle) in [
        ("not-json", "{\"weight_map\": ", "not valid JSON"),
        ("no-map", "{\"metadata\": {}}", "weight_map"),
        ("escape", "{\"weight_map\": {\"w\": \"../model.safetensors\"}}", "relative"),
        ("not-string", "{\"weight_map\": {\"w\": 3}}", "expected a file name"),
    ] {
        let dir = TempDir::new(name);
        let p = dir.write("model.safetensors.index.json", text.as_bytes());
        st_err(SafetensorsCheckpoint::open(dir.path()), &[&p.display().to_string(), needle]);
    }

    // A folder with neither file.
    let dir = TempDir::new("st-empty");
    st_err(SafetensorsCheckpoint::open(dir.path()), &[&dir.path().display().to_string(), "neither"]);
}
