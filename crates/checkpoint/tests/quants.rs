//! Dequantization against the `gguf` python package's numpy reference (fixtures written by
//! scripts/fixtures/gguf_quants.py): every supported type, bit for bit.

mod common;

use afinar_checkpoint::{gguf::ggml_type_info, quant, CheckpointError, DType, TensorView};
use common::*;

struct Case {
    name: String,
    dtype: DType,
    n: usize,
    raw: Vec<u8>,
    want: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let meta = read_json("quants.json");
    let bin = std::fs::read(fixture("quants.bin")).expect("quants.bin");
    meta["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let name = c["name"].as_str().expect("name").to_string();
            let dtype = DType::from_name(c["dtype"].as_str().expect("dtype")).expect("known dtype");
            let n = as_usize(&c["n"]);
            let (ro, rl, fo) =
                (as_usize(&c["raw_offset"]), as_usize(&c["raw_len"]), as_usize(&c["f32_offset"]));
            let raw = bin[ro..ro + rl].to_vec();
            let want = bin[fo..fo + 4 * n]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Case { name, dtype, n, raw, want }
        })
        .collect()
}

#[test]
fn every_type_has_fixtures() {
    let cases = cases();
    for dtype in DType::ALL {
        assert!(cases.iter().any(|c| c.dtype == dtype), "no fixture case for {dtype}");
    }
    // The quantizable types are covered by real quantized data as well as random blocks.
    for name in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"] {
        assert!(cases.iter().any(|c| c.name == format!("{name}.quantized")));
    }
}

/// Every dtype's kernel gives the numpy reference's values with identical bits (NaN payloads
/// included): each value is computed with the same f32 operations in the same order.
#[test]
fn dequantize_matches_gguf_python_bit_exactly() {
    for c in cases() {
        let got = quant::dequantize(c.dtype, &c.raw, c.n).expect(&c.name);
        assert_bits_eq(&c.name, &got, &c.want);
    }
}

/// Big inputs take the parallel path (chunks over rayon's pool): repeat each case's blocks
/// until it is well over the threshold and check every repetition.
#[test]
fn parallel_dequantize_matches_reference() {
    for c in cases().into_iter().filter(|c| c.n <= 4096) {
        let reps = (300_000 / c.n).max(2);
        let raw = c.raw.repeat(reps);
        let n = c.n * reps;
        let view = TensorView { name: &c.name, dtype: c.dtype, shape: vec![reps, c.n], data: &raw };
        let got = view.to_f32().expect(&c.name);
        assert_eq!(got.len(), n);
        for (r, chunk) in got.chunks_exact(c.n).enumerate() {
            assert_bits_eq(&format!("{} repetition {r}", c.name), chunk, &c.want);
        }
    }
}

#[test]
fn f16_conversion_agrees_with_half_on_every_bit_pattern() {
    for h in 0..=u16::MAX {
        let got = quant::f16_to_f32(h);
        let want = half::f16::from_bits(h).to_f32();
        if want.is_nan() {
            // half may quiet signalling NaNs (hardware F16C); numpy keeps the payload as is, and
            // the reference fixture (F16.all_bit_patterns) checks those bits.
            assert!(got.is_nan(), "{h:#06x}");
        } else {
            assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
        }
    }
}

#[test]
fn block_tables_match_gguf_constants() {
    let meta = read_json("quants.json");
    let types = meta["types"].as_object().expect("types");
    for dtype in DType::ALL {
        let t = &types[dtype.name()];
        assert_eq!(dtype.ggml_type() as usize, as_usize(&t["id"]), "{dtype} id");
        assert_eq!(dtype.block_size(), as_usize(&t["block_size"]), "{dtype} block");
        assert_eq!(dtype.type_size(), as_usize(&t["type_size"]), "{dtype} type size");
        assert_eq!(DType::from_ggml_type(dtype.ggml_type()), Some(dtype));
    }
    // The GGUF reader's size table covers every type the package knows, with its sizes.
    for (name, t) in types {
        let id = as_usize(&t["id"]) as u32;
        let Some((n, bs, ts)) = ggml_type_info(id) else {
            // Types newer than this reader (NVFP4, Q1_0, ...) are reported as unknown ids.
            assert!(id >= 40, "GGML type {name} ({id}) missing from the size table");
            continue;
        };
        assert_eq!(n, name, "name of id {id}");
        assert_eq!((bs, ts), (as_usize(&t["block_size"]), as_usize(&t["type_size"])), "{name}");
    }
}

#[test]
fn size_mismatches_are_errors() {
    // Not a whole number of blocks.
    let e = quant::dequantize(DType::Q4_K, &[0u8; 144], 255).unwrap_err();
    assert!(e.to_string().contains("not a whole number of Q4_K blocks"), "{e}");
    // Wrong byte count.
    let e = quant::dequantize(DType::Q8_0, &[0u8; 33], 32).unwrap_err();
    assert!(e.to_string().contains("take 34 bytes, got 33"), "{e}");
    // A hand-built view whose bytes do not match its shape names the tensor.
    let data = [0u8; 10];
    let view = TensorView { name: "w", dtype: DType::F32, shape: vec![3], data: &data };
    let e = view.to_f32().unwrap_err();
    assert!(matches!(e, CheckpointError::Data { .. }));
    assert!(e.to_string().contains("tensor 'w'"), "{e}");
    // An overflowing shape is an error, not a panic or a huge allocation.
    let view = TensorView { name: "big", dtype: DType::F32, shape: vec![usize::MAX, 2], data: &data };
    assert!(view.to_f32().unwrap_err().to_string().contains("tensor 'big'"));
    // Empty input is fine.
    assert!(quant::dequantize(DType::Q6_K, &[], 0).expect("empty").is_empty());
}
