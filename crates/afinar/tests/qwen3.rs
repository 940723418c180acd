//! Qwen3 against transformers' `Qwen3ForCausalLM` and PEFT on tiny random-weight models (tied
//! embeddings with head_dim 32, untied with head_dim 24; hidden 64 and 4 heads, so head_dim ≠
//! hidden/heads), written by `scripts/fixtures/qwen3.py`, which this test runs with
//! `$AFINAR_PYTHON` into a temporary folder: logits within 1e-4 relative, the 32-token greedy
//! continuation (KV cache) equal, LoRA gradients within 1e-4 of PEFT's; a LoRA run's adapter and
//! merged folder (afinar's `config.json`) load in PEFT and transformers; an f32 GGUF export
//! (`qwen3` architecture, Q/K not permuted) loads back with the same logits; and a tiny random
//! Qwen3 with the real Qwen3 vocabulary (`scripts/fixtures/qwen3_vocab.py`), exported to GGUF
//! with its tokenizer, loads in llama.cpp with afinar's ids, last-position logits and greedy
//! tokens (`scripts/verify/qwen3_gguf.py`).

mod common;

use std::collections::BTreeMap;

use afinar::blocks::KvDtype;
use afinar::checkpoint::gguf::{GgufFile, MetaValue};
use afinar::checkpoint::write::{save_safetensors, TensorWrite};
use afinar::checkpoint::DType;
use afinar::engine::{Backend, CpuBackend, WeightFormat};
use afinar::generate::{generate, GenerateOptions};
use afinar::models::{
    load_model, Family, Llama, LoadOptions, LoadedModel, Logits, LoraSpec, LoraTarget, TrainBatch,
};
use afinar::quantize::{export_gguf, ExportOptions, Scheme};
use afinar::recipes::save::{LoraSave, ModelSource};
use afinar::recipes::state::SaveTarget;
use afinar::tokenizer::{render_chat, Message};
use common::{apply_peft_lora, asset, reference_python, rel_err, run_verify_script, skipped, Expected, Tmp};

const CASES: [(&str, bool, usize); 2] = [("tied", true, 32), ("untied", false, 24)];

/// Runs the fixture script into `tmp`; `None` (after a SKIPPED line) without the reference python.
fn fixtures(tmp: &Tmp) -> Option<()> {
    let python = reference_python("Qwen3 parity with transformers and PEFT")?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures/qwen3.py");
    let res = std::process::Command::new(python).arg(&script).arg(&tmp.0).output().unwrap();
    assert!(
        res.status.success(),
        "{} failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    Some(())
}

fn load(be: &CpuBackend, path: &std::path::Path) -> LoadedModel<CpuBackend> {
    load_model(be, path, &LoadOptions { format: WeightFormat::F32, ..Default::default() }).unwrap()
}

fn check_logits(be: &CpuBackend, m: &Llama<CpuBackend>, exp: &Expected, what: &str) {
    let (shape, ids) = exp.ids("input_ids");
    let got = m.forward(be, &ids, shape[0], shape[1], None, Logits::All).unwrap();
    let err = rel_err(&got, &exp.f32("logits").1);
    assert!(err < 1e-4, "{what}: logits relative error {err:e}");
}

#[test]
fn qwen3_logits_greedy_and_lora_gradients_match_transformers_and_peft() {
    let tmp = Tmp::new("qwen3-parity");
    let Some(()) = fixtures(&tmp) else { return };
    let be = CpuBackend::new(Some(2));
    for (case, tied, head_dim) in CASES {
        let exp = Expected::open(&tmp.join(format!("{case}.safetensors")));
        let loaded = load(&be, &tmp.join(case));
        let m = &loaded.model;
        let c = &m.config;
        assert_eq!(
            (c.family, c.tie_embeddings, c.head_dim, c.dim, c.n_heads),
            (Family::Qwen3, tied, head_dim, 64, 4)
        );
        assert_eq!(c.rope_theta, 1e6);
        assert!(m.layers.iter().all(|l| l.attn.qk_norm.is_some()));
        check_logits(&be, m, &exp, case);

        // Greedy continuation with the KV cache (f32, like transformers' cache).
        let margin = exp.f32("min_margin").1[0];
        assert!(margin > 1e-3, "{case}: the fixture's greedy steps are too close to a tie ({margin})");
        let prompt = exp.ids("prompt_ids").1;
        let want = exp.ids("greedy_ids").1;
        let mut cache = m.new_cache_as(&be, 1, prompt.len() + want.len(), KvDtype::F32).unwrap();
        let opts =
            GenerateOptions { max_new_tokens: want.len(), sampling: Default::default(), stop_ids: vec![] };
        let (got, _) = generate(&be, m, &mut cache, &prompt, &opts, |_| Ok(true)).unwrap();
        assert_eq!(got, want, "{case}: greedy continuation differs from transformers'");

        // LoRA gradients against PEFT on the same weights and batch.
        let mut m = load(&be, &tmp.join(case)).model;
        apply_peft_lora(&be, &mut m, LoraTarget::PROJECTIONS.to_vec(), &exp);
        let (shape, ids) = exp.ids("input_ids");
        let labels: Vec<i32> = exp.ids("labels").1.iter().map(|&l| l as i32).collect();
        let (batch, seq) = (shape[0], shape[1]);
        let positions: Vec<u32> = (0..batch).flat_map(|_| 0..seq as u32).collect();
        let tokens = labels.iter().filter(|&&l| l != -100).count();
        let b = TrainBatch { ids: &ids, labels: &labels, positions: &positions, doc_ids: None, batch, seq };
        m.zero_grads(&be).unwrap();
        let l = m
            .forward_backward(&be, &b, 1.0 / tokens as f32, afinar::models::ActivationCheckpointing::Off)
            .unwrap();
        let loss = l.sum / tokens as f64;
        let want_loss = exp.f32("loss").1[0] as f64;
        assert!((loss - want_loss).abs() / want_loss < 1e-5, "{case}: loss {loss} vs PEFT {want_loss}");
        let mut checked = 0;
        m.visit_params_mut(&mut |name, mut p| {
            let s = p.state();
            let got = be.to_host(&s.grad).unwrap()[..s.len].to_vec();
            let want = exp.f32(&format!("grad.base_model.model.{name}")).1;
            let err = rel_err(&got, &want);
            assert!(err < 1e-4, "{case}: {name}: gradient relative error {err:e}");
            checked += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(checked, 2 * 7 * 2, "{case}: LoRA A and B of 7 projections in 2 layers");

        // Full fine-tuning: every parameter's gradient, the q/k norm gains included.
        let mut m = load(&be, &tmp.join(case)).model;
        m.enable_full_finetune(&be).unwrap();
        m.zero_grads(&be).unwrap();
        let l = m
            .forward_backward(&be, &b, 1.0 / tokens as f32, afinar::models::ActivationCheckpointing::Off)
            .unwrap();
        let (loss, want_loss) = (l.sum / tokens as f64, exp.f32("full.loss").1[0] as f64);
        assert!((loss - want_loss).abs() / want_loss < 1e-5, "{case}: full loss {loss} vs {want_loss}");
        let mut names = Vec::new();
        m.visit_params_mut(&mut |name, mut p| {
            let s = p.state();
            let got = be.to_host(&s.grad).unwrap()[..s.len].to_vec();
            let err = rel_err(&got, &exp.f32(&format!("full.grad.{name}")).1);
            assert!(err < 1e-4, "{case}: {name}: full fine-tuning gradient relative error {err:e}");
            names.push(name.to_string());
            Ok(())
        })
        .unwrap();
        assert!(
            names.iter().any(|n| n.ends_with("q_norm.weight"))
                && names.iter().any(|n| n.ends_with("k_norm.weight"))
        );
        assert_eq!(names.len(), 1 + 2 * 11 + 1 + usize::from(!tied), "{case}: {names:?}");
    }
}

#[test]
fn qwen3_lora_run_loads_in_peft_and_transformers() {
    let tmp = Tmp::new("qwen3-save");
    let Some(()) = fixtures(&tmp) else { return };
    let python = reference_python("Qwen3 PEFT/transformers load").unwrap();
    let be = CpuBackend::new(Some(2));
    for (case, _, _) in CASES {
        let base = tmp.join(case);
        let mut m = load(&be, &base).model;
        let exp = Expected::open(&tmp.join(format!("{case}.safetensors")));
        apply_peft_lora(&be, &mut m, LoraTarget::PROJECTIONS.to_vec(), &exp);
        let spec = LoraSpec { rank: 4, alpha: 8.0, dropout: 0.0, targets: LoraTarget::PROJECTIONS.to_vec() };
        let run_dir = tmp.join(format!("{case}-run"));
        // afinar's own config.json (no HF folder to copy from): transformers must read it as Qwen3.
        let config_json = m.config.to_hf_json(None, None, "float32");
        assert_eq!(config_json["architectures"][0], "Qwen3ForCausalLM");
        let source = ModelSource {
            path: base.clone(),
            hf_dir: None,
            config_json,
            dtype: DType::F32,
            tokenizer: None,
            max_seq_len: None,
        };
        LoraSave { source, spec, merged: true }.save(&be, &m, &run_dir).unwrap();
        let reread = afinar::models::LlamaConfig::from_hf_json(&run_dir.join("merged/config.json")).unwrap();
        assert_eq!(reread, m.config, "{case}: the written config.json reads back as another model");
        let (shape, ids) = exp.ids("input_ids");
        let (b, t) = (shape[0], shape[1]);
        let logits = m.forward(&be, &ids, b, t, None, Logits::All).unwrap();
        let ids_f32: Vec<f32> = ids.iter().map(|&i| i as f32).collect();
        let vocab = m.config.vocab_size;
        let tensors = [
            TensorWrite::from_f32("logits", DType::F32, vec![b, t, vocab], &logits),
            TensorWrite::from_f32("input_ids", DType::F32, vec![b, t], &ids_f32),
        ];
        save_safetensors(run_dir.join("afinar_logits.safetensors"), &tensors, &BTreeMap::new()).unwrap();
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/verify/lora_export.py");
        let res = std::process::Command::new(&python).arg(script).arg(&base).arg(&run_dir).output().unwrap();
        let stdout = String::from_utf8_lossy(&res.stdout);
        eprintln!(
            "{case}: {stdout}{}",
            String::from_utf8_lossy(&res.stderr).lines().rev().take(5).collect::<Vec<_>>().join("\n")
        );
        assert!(res.status.success(), "{case}: PEFT/transformers disagree with afinar: {stdout}");
    }
}

#[test]
fn qwen3_gguf_round_trip_keeps_the_logits() {
    let tmp = Tmp::new("qwen3-gguf");
    let Some(()) = fixtures(&tmp) else { return };
    let be = CpuBackend::new(Some(2));
    for (case, _, _) in CASES {
        let exp = Expected::open(&tmp.join(format!("{case}.safetensors")));
        let src = load(&be, &tmp.join(case));
        let out = tmp.join(format!("{case}.gguf"));
        export_gguf(
            &be,
            &src,
            &out,
            &ExportOptions { scheme: Scheme::F32, ..Default::default() },
            &mut |_| {},
        )
        .unwrap();
        let file = afinar::checkpoint::gguf::GgufFile::open(&out).unwrap();
        assert_eq!(file.require_str("general.architecture").unwrap(), "qwen3");
        assert!(file.contains("blk.0.attn_q_norm.weight") && file.contains("blk.1.attn_k_norm.weight"));
        // Qwen3 GGUFs keep Hugging Face's Q/K row order (llama.cpp runs NeoX RoPE for qwen3).
        let q = file.tensor("blk.0.attn_q.weight").unwrap().to_f32().unwrap();
        assert_eq!(q, be.weight_to_host(&src.model.layers[0].attn.wq.weight).unwrap());
        let back = load(&be, &out);
        assert_eq!(back.model.config, src.model.config, "{case}");
        check_logits(&be, &back.model, &exp, &format!("{case} (GGUF)"));
    }
    // llama.cpp on a Qwen3 GGUF: `qwen3_gguf_export_loads_in_llama_cpp_with_the_same_greedy_tokens`
    // (these fixtures carry no tokenizer, which llama.cpp needs to load a model).
}

#[test]
fn qwen3_gguf_export_loads_in_llama_cpp_with_the_same_greedy_tokens() {
    let Some(python) = reference_python("llama.cpp on a Qwen3 GGUF export") else { return };
    let has_llama_cpp = std::process::Command::new(&python)
        .args(["-c", "import llama_cpp"])
        .output()
        .unwrap()
        .status
        .success();
    if !has_llama_cpp {
        skipped(
            "llama.cpp check of the Qwen3 GGUF export not run: `import llama_cpp` fails in AFINAR_PYTHON",
        );
        return;
    }
    let tok_dir = asset("qwen3-tokenizer");
    if !tok_dir.join("tokenizer.json").is_file() {
        skipped(&format!(
            "{} is missing (scripts/fetch-assets.sh)",
            tok_dir.join("tokenizer.json").display()
        ));
        return;
    }
    let tmp = Tmp::new("qwen3-llamacpp");
    let model_dir = tmp.join("qwen3-vocab");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures/qwen3_vocab.py");
    let res =
        std::process::Command::new(&python).arg(&script).arg(&tok_dir).arg(&model_dir).output().unwrap();
    assert!(
        res.status.success(),
        "{} failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    let be = CpuBackend::new(Some(2));
    let src = load(&be, &model_dir);
    let c = &src.model.config;
    assert_eq!((c.family, c.vocab_size, c.dim, c.tie_embeddings), (Family::Qwen3, 151_936, 64, true));
    let tok = src.tokenizer.as_ref().expect("the folder's tokenizer.json");
    assert_eq!(tok.vocab_size(), 151_669, "the real Qwen3 vocabulary, added tokens included");

    let out = tmp.join("qwen3-vocab.gguf");
    export_gguf(&be, &src, &out, &ExportOptions { scheme: Scheme::F32, ..Default::default() }, &mut |_| {})
        .unwrap();
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.require_str("general.architecture").unwrap(), "qwen3");
    assert_eq!(f.require_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(f.require_str("tokenizer.ggml.pre").unwrap(), "qwen2");
    let id = |k: &str| f.get(k).and_then(MetaValue::as_u64);
    assert_eq!(id("tokenizer.ggml.eos_token_id"), Some(151_645), "<|im_end|>");
    assert_eq!(id("tokenizer.ggml.padding_token_id"), Some(151_643), "<|endoftext|>");
    let Some(MetaValue::Array(types)) = f.get("tokenizer.ggml.token_type") else { panic!("token_type") };
    assert_eq!(types.len(), 151_936, "one token per embedding row");
    assert!(types[151_669..].iter().all(|t| t == &MetaValue::I32(5)), "padding rows are unused tokens");
    assert_eq!(types[151_644], MetaValue::I32(3), "<|im_start|> is a control token");

    let mut prompts = vec![
        "The three primary colors are".to_string(),
        "Había una vez, en un pueblo de Castilla, un niño que".to_string(),
    ];
    if tok.chat_template().is_some() {
        prompts
            .push(render_chat(tok, &[Message::new("user", "¿Cuál es la capital de España?")], true).unwrap());
    }
    let n = 32;
    let mut specs = Vec::new();
    for text in &prompts {
        let ids = tok.encode(text, tok.add_bos_default()).unwrap();
        let m = &src.model;
        let logits = m.forward(&be, &ids, 1, ids.len(), None, Logits::Last).unwrap();
        assert_eq!(logits.len(), c.vocab_size);
        // f32 KV cache: llama.cpp runs with one too (its default f16 cache rounds K and V).
        let mut cache = m.new_cache_as(&be, 1, ids.len() + n, KvDtype::F32).unwrap();
        let opts = GenerateOptions { max_new_tokens: n, sampling: Default::default(), stop_ids: vec![] };
        let (tokens, _) = generate(&be, m, &mut cache, &ids, &opts, |_| Ok(true)).unwrap();
        assert_eq!(tokens.len(), n);
        specs.push(serde_json::json!({"text": text, "ids": ids, "tokens": tokens, "last_logits": logits}));
    }
    // afinar reads its own export back into the same model: the same greedy tokens.
    let back = load(&be, &out);
    assert_eq!(back.model.config, src.model.config);
    let ids: Vec<u32> =
        specs[0]["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let a = src.model.forward(&be, &ids, 1, ids.len(), None, Logits::All).unwrap();
    let b = back.model.forward(&be, &ids, 1, ids.len(), None, Logits::All).unwrap();
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "logits differ after the GGUF round trip"
    );

    let spec = serde_json::json!({"file": out, "prompts": specs});
    run_verify_script(&python, "qwen3_gguf.py", &spec, &tmp, "llama.cpp on the Qwen3 GGUF");
}
