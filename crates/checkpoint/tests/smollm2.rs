//! The real SmolLM2-135M-Instruct Q4_1 GGUF (fetched by scripts/fetch-assets.sh), against what
//! the `gguf` package's GGUFReader and dequantizer report (tests/fixtures/checkpoint/smollm2_q4_1.json).

mod common;

use afinar_checkpoint::gguf::{GgufFile, MetaValue};
use common::*;

#[test]
fn smollm2_gguf_matches_reference_reader() {
    let path = smollm2_asset();
    let want = read_json("smollm2_q4_1.json");
    let size = std::fs::metadata(&path).expect("stat").len();
    assert_eq!(size, want["file_len"].as_u64().expect("file_len"), "not the fixture's asset");

    let f = GgufFile::open(&path).expect("open SmolLM2 GGUF");
    assert_eq!(u64::from(f.version()), want["version"].as_u64().expect("version"));
    assert_eq!(f.metadata().len(), as_usize(&want["kv_count"]));
    assert_eq!(f.alignment(), as_usize(&want["alignment"]));
    assert_eq!(f.data_offset(), as_usize(&want["data_offset"]));
    for (key, v) in want["metadata"].as_object().expect("metadata") {
        let got = f.get(key).unwrap_or_else(|| panic!("missing {key}"));
        match v {
            serde_json::Value::String(s) => assert_eq!(got.as_str(), Some(s.as_str()), "{key}"),
            _ => assert_eq!(got.as_u64(), v.as_u64(), "{key}"),
        }
    }
    let tokens = f.get("tokenizer.ggml.tokens").and_then(MetaValue::as_str_array).expect("tokens");
    assert_eq!(tokens.len(), as_usize(&want["token_count"]));
    for (i, t) in want["tokens_sample"].as_object().expect("sample") {
        let i: usize = i.parse().expect("index");
        assert_eq!(Some(tokens[i]), t.as_str(), "token {i}");
    }

    let tensors = want["tensors"].as_array().expect("tensors");
    assert_eq!(f.tensor_names().len(), as_usize(&want["tensor_count"]));
    for (info, t) in f.tensor_infos().iter().zip(tensors) {
        assert_eq!(info.name, t["name"].as_str().expect("name"));
        assert_eq!(info.type_name, t["dtype"].as_str().expect("dtype"), "{}", info.name);
        assert_eq!(info.shape, usize_vec(&t["shape"]), "{}", info.name);
    }
    // Row-major: the embedding is [vocab, dim], a projection [out, in].
    assert_eq!(f.tensor("token_embd.weight").expect("embd").shape, vec![49152, 576]);
    assert_eq!(f.tensor("blk.0.attn_k.weight").expect("k").shape, vec![192, 576]);
    assert_eq!(f.tensor("blk.0.ffn_down.weight").expect("down").shape, vec![576, 1536]);

    for (name, s) in want["stats"].as_object().expect("stats") {
        let view = f.tensor(name).expect(name);
        assert_eq!(view.dtype.name(), s["dtype"].as_str().expect("dtype"), "{name}");
        let x = view.to_f32().expect(name);
        assert_eq!(x.len(), as_usize(&s["numel"]), "{name}");
        assert_bits_eq(&format!("{name} first 16"), &x[..16], &f32_from_bits(&s["first16_bits"]));
        let sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
        let sum_sq: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        for (what, got, want) in [("sum", sum, &s["sum"]), ("sum of squares", sum_sq, &s["sum_sq"])] {
            let want = want.as_f64().expect("number");
            let rel = (got - want).abs() / want.abs().max(f64::MIN_POSITIVE);
            assert!(rel <= 1e-6, "{name} {what}: got {got}, want {want} (relative {rel:e})");
        }
    }
}
