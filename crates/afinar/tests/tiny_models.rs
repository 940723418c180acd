//! Random tiny Llama-3.1-style (scaled RoPE, GQA, untied) and Llama-3.2-style (tied, one KV
//! head) models saved by `transformers`: afinar's logits must match transformers' within 1e-4.
//! Fixtures: `scripts/fixtures/models.py`.

mod common;

use afinar::engine::{Backend, CpuBackend, WeightFormat};
use afinar::generate::{generate, GenerateOptions, SamplingParams};
use afinar::models::{load_model, LoadOptions, Logits};
use common::{fixture, rel_err, Expected};

fn load(dir: &str, format: WeightFormat) -> (CpuBackend, afinar::models::Llama<CpuBackend>) {
    let be = CpuBackend::new(Some(2));
    let opts = LoadOptions { format, tokenizer: None, ..Default::default() };
    let loaded = load_model(&be, &fixture(&format!("models/{dir}")), &opts).unwrap();
    (be, loaded.model)
}

fn check_logits(dir: &str, expected: &str, logits_name: &str, format: WeightFormat) {
    let (be, model) = load(dir, format);
    let exp = Expected::open(&fixture(&format!("models/{expected}/expected.safetensors")));
    let (shape, ids) = exp.ids("input_ids");
    let (_, want) = exp.f32(logits_name);
    let got = model.forward(&be, &ids, shape[0], shape[1], None, Logits::All).unwrap();
    let err = rel_err(&got, &want);
    assert!(err < 1e-4, "{dir}: logits relative error {err:e}");
    eprintln!("{dir} {logits_name}: relative error {err:e}");
}

#[test]
fn llama31_style_logits_match_transformers() {
    check_logits("llama31_tiny", "llama31_tiny", "logits", WeightFormat::F32);
}

#[test]
fn llama31_bf16_sharded_checkpoint_logits_match_transformers() {
    check_logits("llama31_tiny_bf16_sharded", "llama31_tiny", "logits_bf16_sharded", WeightFormat::F32);
}

#[test]
fn llama32_style_tied_logits_match_transformers() {
    check_logits("llama32_tiny", "llama32_tiny", "logits", WeightFormat::F32);
}

#[test]
fn scaled_rope_frequencies_match_transformers() {
    for dir in ["llama31_tiny", "llama32_tiny"] {
        let (_, model) = load(dir, WeightFormat::F32);
        let exp = Expected::open(&fixture(&format!("models/{dir}/expected.safetensors")));
        let (_, want) = exp.f32("rope.inv_freq");
        let (_, unscaled) = exp.f32("rope.inv_freq_unscaled");
        assert!(rel_err(&model.inv_freq, &want) < 1e-6, "{dir}");
        assert!(rel_err(&model.inv_freq, &unscaled) > 1e-2, "{dir}: scaling had no effect");
    }
}

/// Positions far beyond `original_max_position_embeddings` exercise every RoPE scaling regime.
#[test]
fn long_sequence_logits_match_transformers() {
    for dir in ["llama31_tiny", "llama32_tiny"] {
        let (be, model) = load(dir, WeightFormat::F32);
        let exp = Expected::open(&fixture(&format!("models/{dir}/expected.safetensors")));
        let (shape, ids) = exp.ids("long.input_ids");
        let (_, want) = exp.f32("long.logits_last16");
        let got = model.forward(&be, &ids, 1, shape[1], None, Logits::All).unwrap();
        let vocab = model.config.vocab_size;
        let tail = &got[(shape[1] - 16) * vocab..];
        let err = rel_err(tail, &want);
        assert!(err < 1e-4, "{dir}: long-sequence logits relative error {err:e}");
    }
}

/// Prefill plus one-token steps through the KV cache gives the logits of one full forward pass.
#[test]
fn kv_cache_steps_equal_full_forward() {
    let (be, model) = load("llama31_tiny", WeightFormat::F32);
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 % 384) as u32).collect();
    let full = model.forward(&be, &ids, 1, ids.len(), None, Logits::All).unwrap();
    let mut cache = model.new_cache(&be, 1, 32).unwrap();
    let vocab = model.config.vocab_size;
    let first = model.forward(&be, &ids[..10], 1, 10, Some(&mut cache), Logits::All).unwrap();
    assert!(rel_err(&first, &full[..10 * vocab]) < 1e-5);
    for t in 10..ids.len() {
        let step = model.forward(&be, &ids[t..t + 1], 1, 1, Some(&mut cache), Logits::Last).unwrap();
        let err = rel_err(&step, &full[t * vocab..(t + 1) * vocab]);
        assert!(err < 1e-5, "position {t}: {err:e}");
    }
    assert_eq!(cache.len, ids.len());
}

#[test]
fn greedy_generation_matches_transformers() {
    for dir in ["llama31_tiny", "llama32_tiny"] {
        let (be, model) = load(dir, WeightFormat::F32);
        let text = std::fs::read_to_string(fixture(&format!("models/{dir}/generate.json"))).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ids = |k: &str| -> Vec<u32> {
            json[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
        };
        let (prompt, want) = (ids("prompt_ids"), ids("new_ids"));
        let mut cache = model.new_cache(&be, 1, prompt.len() + want.len()).unwrap();
        let opts = GenerateOptions {
            max_new_tokens: want.len(),
            sampling: SamplingParams::default(),
            stop_ids: vec![],
        };
        let (got, _) = generate(&be, &model, &mut cache, &prompt, &opts, |_| Ok(true)).unwrap();
        assert_eq!(got, want, "{dir}");
    }
}

/// bf16 storage of the same weights stays close to f32 (bf16 has 8 bits of mantissa).
#[test]
fn bf16_weights_stay_close_to_f32() {
    let (be, f32_model) = load("llama31_tiny", WeightFormat::F32);
    let (_, bf16_model) = load("llama31_tiny", WeightFormat::BF16);
    let ids: Vec<u32> = (0..16).map(|i| (i * 11 % 384) as u32).collect();
    let a = f32_model.forward(&be, &ids, 1, 16, None, Logits::All).unwrap();
    let b = bf16_model.forward(&be, &ids, 1, 16, None, Logits::All).unwrap();
    let err = rel_err(&b, &a);
    assert!(err < 2e-2 && err > 0.0, "bf16 vs f32: {err:e}");
    let _ = be.name();
}
