//! Safetensors checkpoints written with torch + the `safetensors` package: a single file and a
//! sharded folder with its index (scripts/fixtures/gguf_quants.py).

mod common;

use afinar_checkpoint::safetensors::SafetensorsCheckpoint;
use afinar_checkpoint::CheckpointError;
use common::*;
use serde_json::Value;

fn check_all(ckpt: &SafetensorsCheckpoint, want: &serde_json::Map<String, Value>, what: &str) {
    let mut names: Vec<String> = want.keys().cloned().collect();
    names.sort();
    assert_eq!(ckpt.names(), names, "{what}: names");
    for (name, t) in want {
        assert!(ckpt.contains(name));
        let dtype = t["dtype"].as_str().expect("dtype");
        let shape = usize_vec(&t["shape"]);
        let (info_dtype, info_shape) = ckpt.tensor_info(name).expect("info");
        assert_eq!((info_dtype, info_shape), (dtype, shape.as_slice()), "{what}: {name}");
        match t.get("f32_bits") {
            Some(bits) => {
                let view = ckpt.tensor(name).expect(name);
                assert_eq!(view.name, name);
                assert_eq!(view.dtype.name(), dtype, "{what}: {name}");
                assert_eq!(view.shape, shape, "{what}: {name}");
                let got = view.to_f32().expect(name);
                assert_bits_eq(&format!("{what}: {name}"), &got, &f32_from_bits(bits));
            }
            None => {
                // Not a float tensor: a clear error naming the file, the tensor and the dtype.
                let e = ckpt.tensor(name).unwrap_err();
                assert!(matches!(e, CheckpointError::UnsupportedDType { .. }), "{e}");
                let msg = e.to_string();
                assert!(
                    msg.contains("model.safetensors") && msg.contains(name) && msg.contains(dtype),
                    "{msg}"
                );
            }
        }
        if let Some(shard) = t.get("shard").and_then(Value::as_str) {
            assert!(ckpt.shard_paths().iter().any(|p| p.ends_with(shard)), "{shard}");
        }
    }
}

#[test]
fn single_file_all_tensors_and_dtypes() {
    let want = read_json("safetensors.json");
    let want = want["single"].as_object().expect("single");
    let dtypes: std::collections::BTreeSet<&str> =
        want.values().map(|t| t["dtype"].as_str().expect("dtype")).collect();
    for d in ["F32", "F16", "BF16"] {
        assert!(dtypes.contains(d), "fixture lacks {d}");
    }
    // As a file and as a folder holding model.safetensors.
    let file = fixture("st_single/model.safetensors");
    let by_file = SafetensorsCheckpoint::open(&file).expect("open file");
    check_all(&by_file, want, "file");
    assert_eq!(by_file.path(), file.as_path());
    assert_eq!(by_file.metadata().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
    let by_dir = SafetensorsCheckpoint::open(fixture("st_single")).expect("open folder");
    check_all(&by_dir, want, "folder");
    // Scalars and empty tensors.
    assert_eq!(by_file.tensor("scalar").expect("scalar").shape, Vec::<usize>::new());
    assert_eq!(by_file.tensor("scalar").expect("scalar").to_f32().expect("scalar").len(), 1);
    assert!(by_file.tensor("empty").expect("empty").to_f32().expect("empty").is_empty());
}

#[test]
fn sharded_folder_names_from_index() {
    let want = read_json("safetensors.json");
    let want = want["sharded"].as_object().expect("sharded");
    let ckpt = SafetensorsCheckpoint::open(fixture("st_sharded")).expect("open sharded");
    assert_eq!(ckpt.shard_paths().len(), 2);
    assert!(ckpt.path().ends_with("model.safetensors.index.json"));
    check_all(&ckpt, want, "sharded");
    // The index itself can be opened too.
    let by_index =
        SafetensorsCheckpoint::open(fixture("st_sharded/model.safetensors.index.json")).expect("open index");
    check_all(&by_index, want, "index");

    let e = ckpt.tensor("model.layers.7.mlp.up_proj.weight").unwrap_err();
    assert!(matches!(e, CheckpointError::TensorNotFound { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("model.safetensors.index.json") && msg.contains("model.layers.7.mlp.up_proj.weight"),
        "{msg}"
    );
}
