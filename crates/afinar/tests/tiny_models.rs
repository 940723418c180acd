//! Random tiny Llama-3.1-style (scaled RoPE, GQA, untied) and Llama-3.2-style (tied, one KV
//! head) models saved by `transformers`: afinar's logits must match transformers' within 1e-4.
//! Fixtures: `scripts/fixtures/models.py`.

mod common;

use afinar::blocks::KvDtype;
use afinar::engine::{Backend, CpuBackend, WeightFormat};
use afinar::generate::{argmax, generate, GenerateOptions, SamplingParams};
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

/// Prefill plus one-token steps through the KV cache gives the logits of one full forward pass:
/// to f32 rounding with an f32 cache, and within f16 rounding of keys and values (11 significant
/// bits) with an f16 cache, the same argmax at every position.
#[test]
fn kv_cache_steps_equal_full_forward() {
    let (be, model) = load("llama31_tiny", WeightFormat::F32);
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 % 384) as u32).collect();
    let full = model.forward(&be, &ids, 1, ids.len(), None, Logits::All).unwrap();
    let vocab = model.config.vocab_size;
    for (dtype, tol) in [(KvDtype::F32, 1e-5), (KvDtype::F16, 2e-3)] {
        let mut cache = model.new_cache_as(&be, 1, 32, dtype).unwrap();
        assert_eq!(cache.dtype(), dtype);
        let first = model.forward(&be, &ids[..10], 1, 10, Some(&mut cache), Logits::All).unwrap();
        let err = rel_err(&first, &full[..10 * vocab]);
        assert!(err < tol, "{dtype:?} prefill: {err:e}");
        let mut worst = err;
        for t in 10..ids.len() {
            let step = model.forward(&be, &ids[t..t + 1], 1, 1, Some(&mut cache), Logits::Last).unwrap();
            let want = &full[t * vocab..(t + 1) * vocab];
            let err = rel_err(&step, want);
            assert!(err < tol, "{dtype:?} position {t}: {err:e}");
            assert_eq!(argmax(&step), argmax(want), "{dtype:?} position {t}");
            worst = worst.max(err);
        }
        eprintln!("{dtype:?} cache: largest relative logit error {worst:e}");
        assert_eq!(cache.len, ids.len());
    }
}

/// A prompt prefix cached once and copied into every sequence of a batch cache
/// (`broadcast_prefix`, as multiple-choice scoring does) continues exactly like the prefix's own
/// cache, for each pair of cache types.
#[test]
fn broadcast_prefix_continues_like_the_prefix_cache() {
    let (be, model) = load("llama31_tiny", WeightFormat::F32);
    let ids: Vec<u32> = (0..12).map(|i| (i * 53 % 384) as u32).collect();
    let next = [7u32, 99];
    for src in [KvDtype::F32, KvDtype::F16] {
        let mut prefix = model.new_cache_as(&be, 1, ids.len(), src).unwrap();
        model.forward(&be, &ids, 1, ids.len(), Some(&mut prefix), Logits::Last).unwrap();
        for dst in [KvDtype::F32, KvDtype::F16] {
            let mut batch = model.new_cache_as(&be, 2, ids.len() + 1, dst).unwrap();
            prefix.broadcast_prefix(&be, &mut batch).unwrap();
            assert_eq!(batch.len, ids.len());
            let got = model.forward(&be, &next, 2, 1, Some(&mut batch), Logits::Last).unwrap();
            let vocab = model.config.vocab_size;
            for (b, &id) in next.iter().enumerate() {
                let mut one = model.new_cache_as(&be, 1, ids.len() + 1, src).unwrap();
                model.forward(&be, &ids, 1, ids.len(), Some(&mut one), Logits::Last).unwrap();
                let want = model.forward(&be, &[id], 1, 1, Some(&mut one), Logits::Last).unwrap();
                // Same type: the same values and kernel. f16 → f32 widens exactly, but the f32
                // kernel sums in another order than the f16 one. f32 → f16 rounds the values.
                let tol = match (src, dst) {
                    _ if src == dst => 1e-6,
                    (KvDtype::F16, _) => 1e-4,
                    _ => 2e-3,
                };
                let err = rel_err(&got[b * vocab..(b + 1) * vocab], &want);
                assert!(err < tol, "{src:?} -> {dst:?}, sequence {b}: {err:e}");
            }
        }
    }
    // A destination without room for the prefix is an error.
    let mut prefix = model.new_cache(&be, 1, ids.len()).unwrap();
    model.forward(&be, &ids, 1, ids.len(), Some(&mut prefix), Logits::Last).unwrap();
    let mut small = model.new_cache(&be, 2, ids.len() - 1).unwrap();
    assert!(prefix.broadcast_prefix(&be, &mut small).is_err());
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
