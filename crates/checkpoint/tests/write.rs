//! Checkpoint writing: safetensors files (single, sharded, like a reference) read back with our
//! reader, compared byte for byte with files the python library wrote, f32 -> bf16/f16
//! conversion against the `half` crate, atomic files and folders, side files. With
//! `AFINAR_PYTHON` set (a python with torch and safetensors), the files are also checked by
//! `scripts/verify/safetensors_roundtrip.py`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use afinar_checkpoint::safetensors::SafetensorsCheckpoint;
use afinar_checkpoint::write::{
    copy_side_files, f32_to_bf16_bits, f32_to_f16_bits, remove_leftovers, save_like, save_safetensors,
    save_safetensors_with, save_sharded, write_atomic, write_dir_atomic, TensorData, TensorSink, TensorWrite,
    SIDE_FILES,
};
use afinar_checkpoint::{CheckpointError, DType};
use common::{run_python, TempDir};
use serde_json::Value;

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models")
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Deterministic values with plenty of bits below bf16/f16 precision, some ties, negatives.
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let x = (i.wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(97))) >> 8;
            (x as f32 / (1 << 24) as f32 - 0.5) * 3.7
        })
        .collect()
}

fn f32_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bf16_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect()
}

fn f16_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes()).collect()
}

/// The bytes a tensor should have in the file.
fn expected_bytes(t: &TensorWrite) -> Vec<u8> {
    match (t.data, t.dtype) {
        (TensorData::Bytes(b), _) => b.to_vec(),
        (TensorData::F32(v), DType::F32) => f32_le(v),
        (TensorData::F32(v), DType::BF16) => bf16_le(v),
        (TensorData::F32(v), DType::F16) => f16_le(v),
        _ => unreachable!(),
    }
}

/// Checks that `ckpt` holds exactly `tensors`, bytes included.
fn assert_holds(ckpt: &SafetensorsCheckpoint, tensors: &[TensorWrite]) {
    let mut names: Vec<String> = tensors.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(ckpt.names(), names);
    for t in tensors {
        let v = ckpt.tensor(t.name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.dtype, t.dtype, "{}", t.name);
        assert_eq!(v.shape, t.shape, "{}", t.name);
        assert_eq!(v.data, expected_bytes(t).as_slice(), "{}", t.name);
    }
}

fn header(path: &Path) -> (usize, Value) {
    let bytes = std::fs::read(path).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let json = serde_json::from_slice(&bytes[8..8 + n]).expect("header JSON");
    (n, json)
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A fresh folder under the target's tmp folder, kept after the test so the python scripts can
/// be run on it by hand.
fn kept_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("afinar-checkpoint-write").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create");
    d
}

struct Owned {
    names: Vec<String>,
    data: Vec<Vec<f32>>,
    shapes: Vec<Vec<usize>>,
    dtypes: Vec<DType>,
}

impl Owned {
    fn tensors(&self) -> Vec<TensorWrite<'_>> {
        (0..self.names.len())
            .map(|i| {
                TensorWrite::from_f32(&self.names[i], self.dtypes[i], self.shapes[i].clone(), &self.data[i])
            })
            .collect()
    }
}

/// A small mixed set: five layers of a 16x16 F32 weight and a 16-element BF16 norm, then a large
/// F16 tensor.
fn layered() -> Owned {
    let mut o = Owned { names: vec![], data: vec![], shapes: vec![], dtypes: vec![] };
    for l in 0..5 {
        o.names.push(format!("model.layers.{l}.w.weight"));
        o.shapes.push(vec![16, 16]);
        o.dtypes.push(DType::F32);
        o.names.push(format!("model.layers.{l}.norm.weight"));
        o.shapes.push(vec![16]);
        o.dtypes.push(DType::BF16);
    }
    o.names.push("lm_head.weight".into());
    o.shapes.push(vec![48, 40]);
    o.dtypes.push(DType::F16);
    o.data = o.shapes.iter().enumerate().map(|(i, s)| values(s.iter().product(), i as u32)).collect();
    o
}

#[test]
fn single_file_round_trip_layout_and_metadata() {
    let dir = TempDir::new("write-single");
    let (w, a, c, e) = (values(15, 1), values(7, 2), values(6, 3), [2.5f32]);
    let raw = bf16_le(&values(4, 4));
    let tensors = vec![
        TensorWrite::from_f32("b.weight", DType::F32, vec![3, 5], &w),
        TensorWrite::from_f32("a.bias", DType::BF16, vec![7], &a),
        TensorWrite::from_f32("c.norm", DType::F16, vec![2, 3], &c),
        TensorWrite::from_bytes("d.raw", DType::BF16, vec![4], &raw),
        TensorWrite::from_f32("e.scalar", DType::F32, vec![], &e),
        TensorWrite::from_f32("f.empty", DType::F32, vec![0, 4], &[]),
    ];
    let path = dir.path().join("out.safetensors");
    save_safetensors(&path, &tensors, &meta(&[("step", "12")])).expect("save");

    let ckpt = SafetensorsCheckpoint::open(&path).expect("open");
    assert_holds(&ckpt, &tensors);
    assert_eq!(ckpt.metadata().cloned(), Some(meta(&[("format", "pt"), ("step", "12")])));

    // The python library's layout: header padded to 8 bytes, F32 then BF16 then F16, by name.
    let (n, json) = header(&path);
    assert_eq!(n % 8, 0);
    let raw_header = std::fs::read(&path).expect("read")[8..8 + n].to_vec();
    let text = String::from_utf8(raw_header).expect("utf8");
    assert!(
        text.starts_with(
            "{\"__metadata__\":{\"format\":\"pt\",\"step\":\"12\"},\"b.weight\":{\"dtype\":\"F32\",\
             \"shape\":[3,5],\"data_offsets\":[0,60]},\"e.scalar\""
        ),
        "{text}"
    );
    let order: Vec<&str> = ["b.weight", "e.scalar", "f.empty", "a.bias", "d.raw", "c.norm"].into();
    let mut at = 0u64;
    for name in order {
        let off = &json[name]["data_offsets"];
        assert_eq!(off[0].as_u64(), Some(at), "{name}");
        at = off[1].as_u64().expect("end");
    }
    assert_eq!(std::fs::metadata(&path).expect("meta").len(), 8 + n as u64 + at);
    assert_eq!(json["e.scalar"]["shape"], serde_json::json!([]));

    // A metadata "format" of the caller's wins; no temporary file is left.
    save_safetensors(&path, &tensors[..1], &meta(&[("format", "mlx")])).expect("save");
    let ckpt = SafetensorsCheckpoint::open(&path).expect("open");
    assert_eq!(ckpt.metadata().cloned(), Some(meta(&[("format", "mlx")])));
    assert_eq!(listing(dir.path()), vec!["out.safetensors"]);
}

/// bitsandbytes' `U8` tensors (packed 4-bit weights, codes, JSON) come after the floats, as the
/// python library orders dtypes, and read back unchanged through `raw_tensor`.
#[test]
fn u8_tensors_follow_the_floats_and_read_back_raw() {
    let dir = TempDir::new("u8");
    let path = dir.path().join("model.safetensors");
    let (w, packed, json) = (values(6, 1), vec![0x12u8, 0x34, 0xff, 0], br#"{"a": 1}"#.to_vec());
    let tensors = vec![
        TensorWrite::from_u8("a.weight", vec![4, 1], &packed),
        TensorWrite::from_u8("a.weight.quant_state.bitsandbytes__nf4", vec![json.len()], &json),
        TensorWrite::from_f32("b.weight", DType::BF16, vec![6], &w),
        TensorWrite::from_f32("a.weight.quant_map", DType::F32, vec![6], &w),
    ];
    save_safetensors(&path, &tensors, &BTreeMap::new()).unwrap();
    let (_, h) = header(&path);
    let mut order: Vec<(&str, u64)> = h
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| (k.as_str(), v["data_offsets"][0].as_u64().unwrap()))
        .collect();
    order.sort_by_key(|&(_, o)| o);
    let names: Vec<&str> = order.iter().map(|&(k, _)| k).collect();
    assert_eq!(
        names,
        ["a.weight.quant_map", "b.weight", "a.weight", "a.weight.quant_state.bitsandbytes__nf4"]
    );
    assert_eq!(h["a.weight"]["dtype"], "U8");
    let ckpt = SafetensorsCheckpoint::open(&path).unwrap();
    let raw = ckpt.raw_tensor("a.weight").unwrap();
    assert_eq!((raw.dtype, raw.shape, raw.data), ("U8", &[4usize, 1][..], &packed[..]));
    let err = ckpt.tensor("a.weight").unwrap_err().to_string();
    assert!(err.contains("a.weight") && err.contains("U8"), "{err}");
    // A length that does not match the shape is refused, naming the U8 dtype.
    let bad = [TensorWrite::from_u8("x", vec![3], &packed)];
    let err = save_safetensors(dir.path().join("bad.safetensors"), &bad, &BTreeMap::new()).unwrap_err();
    assert!(err.to_string().contains("of U8 needs 3 bytes"), "{err}");
}

#[test]
fn conversions_match_half_round_to_nearest_even() {
    let check = |bits: u32| {
        let x = f32::from_bits(bits);
        assert_eq!(f32_to_bf16_bits(x), half::bf16::from_f32(x).to_bits(), "bf16 of {x:e} ({bits:#010x})");
        assert_eq!(f32_to_f16_bits(x), half::f16::from_f32(x).to_bits(), "f16 of {x:e} ({bits:#010x})");
    };
    // Every exponent and sign with mantissas at and around the rounding points of both
    // formats (bf16 drops 16 bits, f16 13 or more for subnormals).
    let mut mantissas = vec![0u32, 1, 0x7F_FFFF, 0x40_0000, 0x3F_FFFF];
    for shift in 0..23 {
        let half_bit = 1u32 << shift;
        for m in [half_bit, half_bit - 1, half_bit + 1, 3 * half_bit, 3 * half_bit - 1] {
            mantissas.push(m & 0x7F_FFFF);
            mantissas.push((m | 0x55_5555 & !(2 * half_bit - 1)) & 0x7F_FFFF);
        }
    }
    for sign in [0u32, 0x8000_0000] {
        for exp in 0..=255u32 {
            for &m in &mantissas {
                check(sign | exp << 23 | m);
            }
        }
    }
    // And a stride through every bit pattern.
    let mut bits = 0u32;
    while let Some(next) = bits.checked_add(4099) {
        check(bits);
        bits = next;
    }
    // Ties go to even, as torch rounds.
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F80_8000)), 0x3F80);
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F81_8000)), 0x3F82);
    assert_eq!(f32_to_f16_bits(1.0 + 2f32.powi(-11)), 0x3C00);
    assert_eq!(f32_to_f16_bits(65520.0), 0x7C00);
    assert_eq!(f32_to_f16_bits(65519.0), 0x7BFF);
    assert!(half::f16::from_bits(f32_to_f16_bits(f32::NAN)).is_nan());
    assert!(half::bf16::from_bits(f32_to_bf16_bits(f32::NAN)).is_nan());
}

#[test]
fn sharded_round_trip_index_and_stale_files() {
    let dir = TempDir::new("write-sharded");
    let o = layered();
    let tensors = o.tensors();
    let sizes: Vec<u64> =
        tensors.iter().map(|t| (t.numel() * if t.dtype == DType::F32 { 4 } else { 2 }) as u64).collect();
    let max = 2112;
    std::fs::write(dir.path().join("config.json"), "{}").expect("write");
    let written = save_sharded(dir.path(), &tensors, max, &meta(&[])).expect("save");

    // 1056 bytes per layer: two layers a shard, then layer 4, then lm_head (3840 B > max) alone.
    assert_eq!(sizes[0] + sizes[1], 1056);
    let n = written.len() - 1;
    assert_eq!(n, 4);
    let names: Vec<String> =
        written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for (i, name) in names[..n].iter().enumerate() {
        assert_eq!(name, &format!("model-{:05}-of-{n:05}.safetensors", i + 1));
    }
    assert_eq!(names[n], "model.safetensors.index.json");

    let index: Value = serde_json::from_slice(&std::fs::read(&written[n]).expect("index")).expect("json");
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(sizes.iter().sum::<u64>()));
    let params: usize = tensors.iter().map(TensorWrite::numel).sum();
    assert_eq!(index["metadata"]["total_parameters"].as_u64(), Some(params as u64));
    let wm = index["weight_map"].as_object().expect("weight_map");
    assert_eq!(wm.len(), tensors.len());

    // Packing is sequential: shards hold consecutive runs of the input, each within the limit
    // unless it is a single tensor.
    let mut next = 0;
    for (i, shard) in names[..n].iter().enumerate() {
        let sub = SafetensorsCheckpoint::open(&written[i]).expect("shard");
        let members: Vec<&TensorWrite> =
            tensors.iter().filter(|t| wm[t.name].as_str() == Some(shard.as_str())).collect();
        assert_eq!(sub.names().len(), members.len());
        let bytes: u64 =
            members.iter().map(|t| sizes[tensors.iter().position(|u| u.name == t.name).unwrap()]).sum();
        assert!(bytes <= max || members.len() == 1, "{shard}: {bytes}");
        for t in members {
            assert_eq!(t.name, tensors[next].name);
            next += 1;
        }
    }
    assert_eq!(next, tensors.len());
    assert_holds(&SafetensorsCheckpoint::open(dir.path()).expect("open"), &tensors);

    // Saving again unsharded replaces the shards and index with one file; other files stay.
    let written = save_sharded(dir.path(), &tensors, u64::MAX, &meta(&[])).expect("save");
    assert_eq!(written, vec![dir.path().join("model.safetensors")]);
    assert_eq!(listing(dir.path()), vec!["config.json", "model.safetensors"]);
    assert_holds(&SafetensorsCheckpoint::open(dir.path()).expect("open"), &tensors);

    // And sharded again: the single file goes (transformers would prefer it to the index).
    save_sharded(dir.path(), &tensors, 5000, &meta(&[])).expect("save");
    assert_eq!(
        listing(dir.path()),
        vec![
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json"
        ]
    );
    assert_holds(&SafetensorsCheckpoint::open(dir.path()).expect("open"), &tensors);
}

#[test]
fn save_like_reproduces_the_python_sharded_fixture_byte_for_byte() {
    let fixture = models().join("llama31_tiny_bf16_sharded");
    let reference = SafetensorsCheckpoint::open(&fixture).expect("fixture");
    let names = reference.names();
    let views: Vec<_> = names.iter().map(|n| reference.tensor(n).expect("tensor")).collect();
    let tensors: Vec<TensorWrite> = views.iter().map(TensorWrite::from_view).collect();

    let dir = TempDir::new("write-like");
    let written = save_like(dir.path(), &tensors, &reference).expect("save_like");
    assert_eq!(written.len(), 7);
    for p in &written[..6] {
        let name = p.file_name().unwrap();
        assert_eq!(
            std::fs::read(p).expect("ours"),
            std::fs::read(fixture.join(name)).expect("theirs"),
            "{}",
            name.to_string_lossy()
        );
    }
    let index =
        |p: &Path| -> Value { serde_json::from_slice(&std::fs::read(p).expect("index")).expect("json") };
    let ours = index(&written[6]);
    let theirs = index(&fixture.join("model.safetensors.index.json"));
    assert_eq!(ours["weight_map"], theirs["weight_map"]);
    assert_eq!(ours["metadata"], theirs["metadata"]);
    assert_holds(&SafetensorsCheckpoint::open(dir.path()).expect("open"), &tensors);

    // A tensor the reference lacks goes to the last shard; shards left empty are not written.
    let extra = values(8, 9);
    let mut some: Vec<TensorWrite> = tensors
        .iter()
        .filter(|t| t.name.starts_with("model.layers.1.mlp.") || t.name == "lm_head.weight")
        .cloned()
        .collect();
    some.push(TensorWrite::from_f32("extra.bias", DType::F32, vec![8], &extra));
    let dir2 = TempDir::new("write-like-subset");
    save_like(dir2.path(), &some, &reference).expect("save_like");
    let got = SafetensorsCheckpoint::open(dir2.path()).expect("open");
    assert_holds(&got, &some);
    let idx = index(&dir2.path().join("model.safetensors.index.json"));
    assert_eq!(idx["weight_map"]["extra.bias"], "model-00006-of-00006.safetensors");
    assert_eq!(
        listing(dir2.path()),
        vec![
            "model-00004-of-00006.safetensors",
            "model-00005-of-00006.safetensors",
            "model-00006-of-00006.safetensors",
            "model.safetensors.index.json"
        ]
    );
}

#[test]
fn save_like_single_file_reference_matches_python_bytes() {
    let fixture = models().join("llama31_tiny/model.safetensors");
    let reference = SafetensorsCheckpoint::open(&fixture).expect("fixture");
    let names = reference.names();
    let views: Vec<_> = names.iter().map(|n| reference.tensor(n).expect("tensor")).collect();
    let tensors: Vec<TensorWrite> = views.iter().map(TensorWrite::from_view).collect();
    let dir = TempDir::new("write-like-single");
    let written = save_like(dir.path(), &tensors, &reference).expect("save_like");
    assert_eq!(written, vec![dir.path().join("model.safetensors")]);
    assert_eq!(std::fs::read(&written[0]).expect("ours"), std::fs::read(&fixture).expect("theirs"));
}

#[test]
fn save_like_other_file_names_leaves_model_files_alone() {
    let src = TempDir::new("write-like-other-src");
    let v = values(6, 1);
    let t = [TensorWrite::from_f32("x", DType::BF16, vec![2, 3], &v)];
    let ref_path = src.path().join("adapter.safetensors");
    save_safetensors(&ref_path, &t, &meta(&[("kind", "adapter")])).expect("save");
    let reference = SafetensorsCheckpoint::open(&ref_path).expect("open");

    let dst = TempDir::new("write-like-other-dst");
    dst.write("model.safetensors", b"someone else's");
    let written = save_like(dst.path(), &t, &reference).expect("save_like");
    assert_eq!(written, vec![dst.path().join("adapter.safetensors")]);
    assert_eq!(listing(dst.path()), vec!["adapter.safetensors", "model.safetensors"]);
    let got = SafetensorsCheckpoint::open(&written[0]).expect("open");
    assert_holds(&got, &t);
    assert_eq!(got.metadata().cloned(), Some(meta(&[("format", "pt"), ("kind", "adapter")])));
}

#[test]
fn invalid_tensors_name_file_and_tensor_and_write_nothing() {
    let dir = TempDir::new("write-invalid");
    let path = dir.path().join("x.safetensors");
    let v = values(6, 0);
    let raw = [0u8; 5];
    let ok = TensorWrite::from_f32("ok", DType::F32, vec![6], &v);
    let cases: Vec<(TensorWrite, &str)> = vec![
        (TensorWrite::from_f32("short", DType::F32, vec![7], &v), "7 elements"),
        (TensorWrite::from_bytes("odd", DType::BF16, vec![3], &raw), "needs 6 bytes"),
        (TensorWrite::from_f32("q", DType::Q4_0, vec![6], &v), "dequantize"),
        (TensorWrite::from_f32("__metadata__", DType::F32, vec![6], &v), "not a valid tensor name"),
        (TensorWrite::from_f32("ok", DType::F16, vec![6], &v), "appears twice"),
    ];
    for (bad, want) in cases {
        let name = bad.name.to_string();
        let e = save_safetensors(&path, &[ok.clone(), bad], &meta(&[])).unwrap_err();
        assert!(matches!(e, CheckpointError::Tensor { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("x.safetensors") && msg.contains(&name) && msg.contains(want), "{msg}");
        assert!(listing(dir.path()).is_empty(), "{msg}");
    }
    let e = save_sharded(
        dir.path().join("sub"),
        &[TensorWrite::from_f32("short", DType::F32, vec![7], &v)],
        10,
        &meta(&[]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("short"), "{e}");
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn write_atomic_keeps_the_old_file_on_error_and_panic() {
    let dir = TempDir::new("write-atomic");
    let path = dir.path().join("state.bin");
    std::fs::write(&path, b"old contents").expect("write");

    let e = write_atomic(&path, |w| {
        w.write_all(b"half of the new")?;
        Err(std::io::Error::other("disk on fire"))
    })
    .unwrap_err();
    assert!(e.to_string().contains("state.bin") && e.to_string().contains("disk on fire"), "{e}");
    assert_eq!(std::fs::read(&path).expect("read"), b"old contents");
    assert_eq!(listing(dir.path()), vec!["state.bin"]);

    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = write_atomic(&path, |w| {
            w.write_all(b"partial")?;
            panic!("writer panicked");
        });
    }));
    assert!(r.is_err());
    assert_eq!(std::fs::read(&path).expect("read"), b"old contents");
    assert_eq!(listing(dir.path()), vec!["state.bin"]);

    // A failing safetensors save (bad tensor) leaves the old file too.
    let v = values(3, 0);
    save_safetensors(&path, &[TensorWrite::from_f32("t", DType::F32, vec![4], &v)], &meta(&[])).unwrap_err();
    assert_eq!(std::fs::read(&path).expect("read"), b"old contents");

    write_atomic(&path, |w| w.write_all(b"new")).expect("write");
    assert_eq!(std::fs::read(&path).expect("read"), b"new");
    assert_eq!(listing(dir.path()), vec!["state.bin"]);

    // A missing folder is an error naming the file.
    let e = write_atomic(dir.path().join("nope/file"), |w| w.write_all(b"x")).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[derive(Debug)]
enum AppError {
    Checkpoint(CheckpointError),
    Other(&'static str),
}

impl From<CheckpointError> for AppError {
    fn from(e: CheckpointError) -> Self {
        AppError::Checkpoint(e)
    }
}

#[test]
fn write_dir_atomic_replaces_whole_folders_or_nothing() {
    let root = TempDir::new("write-dir");
    let ckpt = root.path().join("ckpt");
    std::fs::create_dir(&ckpt).expect("mkdir");
    std::fs::write(ckpt.join("old.txt"), b"old").expect("write");

    // A failing writer: the old folder stays as it was, the temporary one is gone.
    let r: Result<(), AppError> = write_dir_atomic(&ckpt, |tmp| {
        std::fs::write(tmp.join("new.txt"), b"new").expect("write");
        Err(AppError::Other("failed half way"))
    });
    assert!(matches!(r, Err(AppError::Other("failed half way"))));
    assert_eq!(listing(root.path()), vec!["ckpt"]);
    assert_eq!(listing(&ckpt), vec!["old.txt"]);

    // A checkpoint error inside converts through From.
    let v = values(2, 0);
    let r: Result<(), AppError> = write_dir_atomic(&ckpt, |tmp| {
        save_safetensors(
            tmp.join("model.safetensors"),
            &[TensorWrite::from_f32("t", DType::F32, vec![3], &v)],
            &meta(&[]),
        )?;
        Ok(())
    });
    match r {
        Err(AppError::Checkpoint(e)) => assert!(e.to_string().contains("'t'"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(listing(&ckpt), vec!["old.txt"]);

    // Success: the folder is the new one, nothing else is left beside it.
    let o = layered();
    let tensors = o.tensors();
    let files = write_dir_atomic(&ckpt, |tmp| -> Result<_, CheckpointError> {
        std::fs::write(tmp.join("config.json"), b"{}").expect("write");
        save_sharded(tmp, &tensors, 3000, &meta(&[]))
    })
    .expect("write_dir_atomic");
    assert!(files.iter().all(|p| !p.starts_with(&ckpt)));
    assert_eq!(listing(root.path()), vec!["ckpt"]);
    assert!(!ckpt.join("old.txt").exists());
    assert!(ckpt.join("config.json").is_file());
    assert_holds(&SafetensorsCheckpoint::open(&ckpt).expect("open"), &tensors);

    // Into a folder that does not exist yet (parents created).
    let fresh = root.path().join("a/b/c");
    write_dir_atomic(&fresh, |tmp| -> Result<(), CheckpointError> {
        std::fs::write(tmp.join("x"), b"1").expect("write");
        Ok(())
    })
    .expect("write_dir_atomic");
    assert_eq!(listing(&fresh), vec!["x"]);
    assert_eq!(listing(&root.path().join("a/b")), vec!["c"]);
}

#[test]
fn copy_side_files_copies_what_is_there() {
    let src = TempDir::new("side-src");
    let dst = TempDir::new("side-dst");
    for (name, body) in [
        ("tokenizer.json", "{\"model\": {}}"),
        ("generation_config.json", "{\"eos_token_id\": 2}"),
        ("config.json", "{}"),
        ("model.safetensors", "not copied"),
    ] {
        src.write(name, body.as_bytes());
    }
    let out = dst.path().join("out");
    let copied = copy_side_files(src.path(), &out).expect("copy");
    assert_eq!(copied, vec![out.join("tokenizer.json"), out.join("generation_config.json")]);
    assert_eq!(
        std::fs::read_to_string(out.join("generation_config.json")).expect("read"),
        "{\"eos_token_id\": 2}"
    );
    assert_eq!(listing(&out), vec!["generation_config.json", "tokenizer.json"]);
    assert!(SIDE_FILES.contains(&"tokenizer_config.json"));
    assert!(SIDE_FILES.contains(&"special_tokens_map.json"));
    let e = copy_side_files(src.path().join("missing"), &out).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn python_safetensors_reads_what_we_write() {
    let single = kept_dir("single");
    let sharded = kept_dir("sharded");
    let o = layered();
    let tensors = o.tensors();
    save_safetensors(single.join("model.safetensors"), &tensors, &meta(&[])).expect("save");
    save_sharded(&sharded, &tensors, 2100, &meta(&[])).expect("save");

    for dir in [&single, &sharded] {
        let Some(summary) = run_python("safetensors_roundtrip.py", &[dir.as_path()]) else {
            return;
        };
        assert_eq!(summary["ok"], true, "{summary}");
        let files = summary["files"].as_object().expect("files");
        let mut seen = 0;
        for (file, info) in files {
            assert_eq!(info["identical_bytes"], true, "{file}");
            assert_eq!(info["metadata"]["format"], "pt", "{file}");
            for (name, t) in info["tensors"].as_object().expect("tensors") {
                let want = tensors.iter().find(|w| w.name == name).expect("known");
                let ckpt_bytes = expected_bytes(want);
                let decoded: Vec<f64> = match want.dtype {
                    DType::F32 => ckpt_bytes
                        .chunks(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                        .collect(),
                    DType::BF16 => ckpt_bytes
                        .chunks(2)
                        .map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f64())
                        .collect(),
                    _ => ckpt_bytes
                        .chunks(2)
                        .map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f64())
                        .collect(),
                };
                // Compared as f32: every value is an f32, and serde_json's default float
                // parsing may be an ulp of f64 off python's shortest repr.
                let got: Vec<f32> = t["values"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|v| v.as_f64().expect("number") as f32)
                    .collect();
                let exp: Vec<f32> = decoded[..got.len()].iter().map(|&x| x as f32).collect();
                assert_eq!(got, exp, "{name}");
                assert_eq!(t["dtype"], want.dtype.name(), "{name}");
                seen += 1;
            }
        }
        assert_eq!(seen, tensors.len());
    }
}

#[test]
fn streamed_file_holds_the_tensors_in_the_announced_order() {
    let dir = TempDir::new("streamed");
    let path = dir.path().join("state.safetensors");
    let a = values(6, 1);
    let b = values(12, 2);
    let metas =
        vec![("w".to_string(), DType::F32, vec![2, 3]), ("w.exp_avg".to_string(), DType::BF16, vec![3, 4])];
    save_safetensors_with(&path, &metas, &meta(&[("k", "v")]), |sink: &mut TensorSink<'_>| {
        sink.write_f32(&a)?;
        sink.write_f32(&b)
    })
    .unwrap_or_else(|e: CheckpointError| panic!("{e}"));
    let ckpt = SafetensorsCheckpoint::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_holds(
        &ckpt,
        &[
            TensorWrite::from_f32("w", DType::F32, vec![2, 3], &a),
            TensorWrite::from_f32("w.exp_avg", DType::BF16, vec![3, 4], &b),
        ],
    );
    // Offsets follow the announced order, not the sorted one.
    let (_, h) = header(&path);
    assert_eq!(h["w"]["data_offsets"][0], 0);
    assert_eq!(h["w.exp_avg"]["data_offsets"][0], 24);

    // Too few tensors, a wrong count, or an error from the producer: no file is left behind.
    let bad = dir.path().join("bad.safetensors");
    let short =
        save_safetensors_with(&bad, &metas, &meta(&[]), |sink: &mut TensorSink<'_>| sink.write_f32(&a));
    assert!(matches!(short, Err(CheckpointError::Format { .. })), "{short:?}");
    let wrong =
        save_safetensors_with(&bad, &metas, &meta(&[]), |sink: &mut TensorSink<'_>| sink.write_f32(&b));
    let wrong = wrong.unwrap_err();
    assert!(matches!(&wrong, CheckpointError::Tensor { tensor, .. } if tensor == "w"), "{wrong}");
    #[derive(Debug)]
    enum Failure {
        Checkpoint(#[allow(dead_code)] CheckpointError),
        DeviceLost,
    }
    impl From<CheckpointError> for Failure {
        fn from(e: CheckpointError) -> Self {
            Failure::Checkpoint(e)
        }
    }
    let failed =
        save_safetensors_with(&bad, &metas, &meta(&[]), |_: &mut TensorSink<'_>| Err(Failure::DeviceLost));
    assert!(matches!(failed, Err(Failure::DeviceLost)), "{failed:?}");
    assert!(!bad.exists());
    assert_eq!(listing(dir.path()), vec!["state.safetensors".to_string()]);
}

/// What a killed atomic write leaves (`step_3.tmp-PID-K/`, `.metrics.jsonl.tmp-PID-K`,
/// `epoch_0.old-PID-K/`) is removed by name pattern when its process is gone; everything else,
/// and the temporaries of a running process, stay.
#[test]
fn leftovers_of_killed_writes_are_removed_and_nothing_else() {
    let dir = TempDir::new("leftovers");
    let d = dir.path();
    // A pid no process has (above the Linux pid_max limit of 2^22).
    let dead = 4_999_999;
    let mk_dir = |name: &str| {
        std::fs::create_dir_all(d.join(name)).unwrap();
        std::fs::write(d.join(name).join("model.safetensors"), vec![0u8; 1000]).unwrap();
    };
    mk_dir(&format!("step_3.tmp-{dead}-7"));
    mk_dir(&format!("epoch_0.old-{dead}-2"));
    std::fs::write(d.join(format!(".metrics.jsonl.tmp-{dead}-0")), b"x").unwrap();
    // Kept: real checkpoints, a running process's temporary, names that only look similar.
    mk_dir("step_2");
    mk_dir(&format!("step_4.tmp-{}-1", std::process::id()));
    mk_dir("notes.tmp-abc-1");
    std::fs::write(d.join("metrics.jsonl"), b"{}").unwrap();
    let removed = remove_leftovers(d).unwrap();
    let names: Vec<String> =
        removed.iter().map(|l| l.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        names,
        [
            format!(".metrics.jsonl.tmp-{dead}-0"),
            format!("epoch_0.old-{dead}-2"),
            format!("step_3.tmp-{dead}-7")
        ]
    );
    assert_eq!(removed[2].bytes, 1000);
    for kept in ["step_2", "notes.tmp-abc-1", "metrics.jsonl"] {
        assert!(d.join(kept).exists(), "{kept} removed");
    }
    assert!(d.join(format!("step_4.tmp-{}-1", std::process::id())).exists());
    assert!(remove_leftovers(&d.join("absent")).unwrap().is_empty());
}
