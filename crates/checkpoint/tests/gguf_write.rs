//! The GGUF writer: what it writes reads back (metadata of every value type, tensors of several
//! types, custom alignment), and a failed write leaves an existing file untouched.

mod common;

use afinar_checkpoint::gguf::{GgufFile, MetaValue};
use afinar_checkpoint::gguf_write::{write_gguf, GgufTensorSpec};
use afinar_checkpoint::quant::quantize;
use afinar_checkpoint::DType;
use common::TempDir;

fn metadata() -> Vec<(String, MetaValue)> {
    let values = vec![
        MetaValue::U8(200),
        MetaValue::I8(-5),
        MetaValue::U16(60_000),
        MetaValue::I16(-30_000),
        MetaValue::U32(4_000_000_000),
        MetaValue::I32(-2_000_000_000),
        MetaValue::U64(1 << 40),
        MetaValue::I64(-(1 << 40)),
        MetaValue::F32(0.1),
        MetaValue::F64(-0.1),
        MetaValue::Bool(true),
        MetaValue::Str("¿Qué tal? ñandú".into()),
        MetaValue::Array(vec![MetaValue::Str("a".into()), MetaValue::Str("b c".into())]),
        MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::I32(1)]), MetaValue::Array(vec![])]),
        MetaValue::Array(vec![]),
    ];
    values.into_iter().enumerate().map(|(i, v)| (format!("test.key{i}"), v)).collect()
}

fn tensors() -> Vec<(GgufTensorSpec, Vec<f32>)> {
    let vals = |n: usize| (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect::<Vec<f32>>();
    [
        (vec![3, 64], DType::Q8_0),
        (vec![64], DType::F32),
        (vec![2, 256], DType::Q4_K),
        (vec![5, 7], DType::F16),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (shape, dtype))| {
        let n = shape.iter().product();
        (GgufTensorSpec { name: format!("t{i}.weight"), shape, dtype }, vals(n))
    })
    .collect()
}

#[test]
fn written_files_read_back() {
    let dir = TempDir::new("gguf-write");
    for alignment in [32, 64] {
        let path = dir.path().join(format!("a{alignment}.gguf"));
        let meta = metadata();
        let ts = tensors();
        let specs: Vec<GgufTensorSpec> = ts.iter().map(|t| t.0.clone()).collect();
        write_gguf(&path, &meta, &specs, alignment, |i, s| quantize(s.dtype, &ts[i].1)).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), alignment);
        for (k, v) in &meta {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        let extra = f.metadata().len() - meta.len();
        assert_eq!(extra, usize::from(alignment != 32), "general.alignment only when not the default");
        assert_eq!(f.tensor_names(), specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>());
        for (spec, vals) in &ts {
            let view = f.tensor(&spec.name).unwrap();
            assert_eq!(view.shape, spec.shape);
            assert_eq!(view.dtype, spec.dtype);
            assert_eq!(view.data, quantize(spec.dtype, vals).unwrap().as_slice());
            assert_eq!(f.tensor_info(&spec.name).unwrap().offset % alignment, 0);
        }
    }
}

#[test]
fn failed_writes_leave_the_old_file_and_no_temporary() {
    let dir = TempDir::new("gguf-write-fail");
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, b"old").unwrap();
    let ts = tensors();
    let specs: Vec<GgufTensorSpec> = ts.iter().map(|t| t.0.clone()).collect();
    // The producer fails on the third tensor: its error comes back as it is.
    let err = write_gguf(&path, &[], &specs, 32, |i, s| {
        if i == 2 {
            Err(afinar_checkpoint::CheckpointError::Data { what: "test".into(), message: "boom".into() })
        } else {
            quantize(s.dtype, &ts[i].1)
        }
    })
    .unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    // A wrong byte count names the tensor.
    let err = write_gguf(&path, &[], &specs, 32, |_, _| Ok(vec![0u8; 3])).unwrap_err();
    assert!(err.to_string().contains("t0.weight") && err.to_string().contains("3 bytes"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "temporary files left behind: {left:?}");
    // Unwritable folder: a clear I/O error naming the path.
    let err = write_gguf(dir.path().join("missing/m.gguf"), &[], &[], 32, |_, _| Ok(vec![])).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}
