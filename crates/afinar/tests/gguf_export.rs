//! GGUF export (`afinar::quantize`): f32 round trips give identical logits, quantized exports
//! use llama.cpp's per-tensor types and stay close, the tokenizer and chat template survive,
//! LoRA adapters get llama.cpp's layout; and, with the reference venv (`AFINAR_PYTHON`),
//! llama.cpp loads the files and agrees with afinar (`scripts/verify/gguf_export.py`).

mod common;

use std::path::Path;

use afinar::checkpoint::gguf::{GgufFile, MetaValue};
use afinar::checkpoint::peft::parse_lora_name;
use afinar::checkpoint::DType;
use afinar::engine::{Backend, CpuBackend, QuantFormat, WeightFormat};
use afinar::generate::{generate, GenerateOptions, Rng, SamplingParams};
use afinar::models::{
    load_model, load_tokenizer, Llama, LlamaConfig, LoadOptions, LoadedModel, Logits, LoraSpec, LoraTarget,
    ParamMut,
};
use afinar::quantize::{
    base_config, export_gguf, export_lora_adapter, permute_rows, tensor_dtype, AdapterExportOptions,
    ExportOptions, Scheme, TensorRole,
};
use afinar::recipes::save::{FullSave, LoraSave, ModelSource};
use afinar::recipes::state::SaveTarget;
use afinar::tokenizer::{render_chat, Message, Tokenizer};
use common::{asset, fixture, rel_err, run_verify_script, Tmp};

fn load(be: &CpuBackend, path: &Path, keep_quantized: bool) -> LoadedModel<CpuBackend> {
    let opts =
        LoadOptions { format: WeightFormat::F32, tokenizer: None, keep_quantized, ..Default::default() };
    load_model(be, path, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn export(be: &CpuBackend, m: &LoadedModel<CpuBackend>, out: &Path, scheme: Scheme) {
    let opts = ExportOptions { scheme, ..Default::default() };
    export_gguf(be, m, out, &opts, &mut |_| {}).unwrap_or_else(|e| panic!("export {scheme}: {e}"));
}

fn logits(be: &CpuBackend, m: &LoadedModel<CpuBackend>, ids: &[u32]) -> Vec<f32> {
    m.model.forward(be, ids, 1, ids.len(), None, Logits::All).unwrap()
}

fn test_ids(vocab: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| ((7 + 31 * i * i + 11 * i) % vocab) as u32).collect()
}

#[test]
fn f32_export_round_trips_tiny_models_bit_for_bit() {
    let be = CpuBackend::new(Some(2));
    let dir = Tmp::new("gguf-tiny");
    // llama31_tiny: untied output, Llama-3.1 RoPE scaling; llama32_tiny: tied embeddings.
    for name in ["llama31_tiny", "llama32_tiny"] {
        let src = load(&be, &fixture(&format!("models/{name}")), false);
        let out = dir.0.join(format!("{name}.gguf"));
        export(&be, &src, &out, Scheme::F32);
        let back = load(&be, &out, false);
        // GGUF keeps Llama-3.1 scaling in `rope_freqs` (applied to `inv_freq`), not the config.
        let expected = afinar::models::LlamaConfig { rope_scaling: None, ..src.model.config.clone() };
        assert_eq!(back.model.config, expected);
        assert_eq!(back.model.inv_freq, src.model.inv_freq, "{name}: RoPE frequencies");
        let ids = test_ids(src.model.config.vocab_size, 24);
        let (a, b) = (logits(&be, &src, &ids), logits(&be, &back, &ids));
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name}: logits differ");
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.contains("output.weight"), !src.model.config.tie_embeddings, "{name}");
        assert!(f.contains("rope_freqs.weight"), "{name}: Llama-3.1 scaling as rope_freqs");
        assert_eq!(f.require_str("general.architecture").unwrap(), "llama");
        assert_eq!(f.require_u64("llama.block_count").unwrap() as usize, src.model.config.n_layers);
        assert_eq!(
            f.require_u64("llama.attention.head_count_kv").unwrap() as usize,
            src.model.config.n_kv_heads
        );
    }
}

#[test]
fn quantized_exports_use_llama_cpp_types_and_stay_close() {
    let be = CpuBackend::new(Some(2));
    let dir = Tmp::new("gguf-quant");
    let src = load(&be, &fixture("models/llama31_tiny"), false);
    let c = &src.model.config;
    let ids = test_ids(c.vocab_size, 24);
    let reference = logits(&be, &src, &ids);
    let mut errs = Vec::new();
    for scheme in [Scheme::F16, Scheme::Q8_0, Scheme::Q4_0, Scheme::Q4_K] {
        let out = dir.0.join(format!("{scheme}.gguf"));
        export(&be, &src, &out, scheme);
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.require_u64("general.file_type").unwrap() as u32, scheme.file_type());
        for t in f.tensor_infos() {
            let role =
                TensorRole { name: &t.name, shape: &t.shape, tied: c.tie_embeddings, n_layers: c.n_layers };
            assert_eq!(t.dtype, Some(tensor_dtype(scheme, role)), "{scheme} {}", t.name);
        }
        // Q8_0, Q4_0 and Q4_K matrices load as they are (afinar's int8 path; this model's rows
        // of 64 and 160 values are no whole Q4_K super-blocks, so its Q4_K file has none).
        let back = load(&be, &out, true);
        let err = rel_err(&logits(&be, &back, &ids), &reference);
        eprintln!("{scheme}: logits relative error {err:.2e}");
        errs.push(err);
    }
    assert!(errs[0] < 5e-3 && errs[1] < 5e-2 && errs[2] < 0.5 && errs[3] < 0.5, "{errs:?}");
    assert!(errs[0] < errs[1] && errs[1] < errs[2], "more bits, less error: {errs:?}");
}

/// A GGUF written with `--scheme q4_k` keeps its Q4_K matrices as Q4_K blocks when quantized
/// weights are kept (`--dtype native`, and `auto` on the CPU): on a tiny random model whose rows
/// are whole 256-value super-blocks, every Q4_K tensor of the file (the embedding and most
/// projections; the output and the last layer's v/down projections are Q6_K) loads as Q4_K and
/// everything else as f32, and the logits and greedy tokens match the same file dequantized to
/// f32 up to the int8 activations' error.
#[test]
fn q4_k_matrices_load_as_q4_k_blocks_and_match_the_dequantized_model() {
    let be = CpuBackend::new(Some(2));
    let dir = Tmp::new("gguf-q4k");
    let config = LlamaConfig {
        family: Default::default(),
        vocab_size: 384,
        dim: 256,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
        ffn_dim: 512,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_seq_len: 128,
        tie_embeddings: false,
    };
    // A random model saved as a Hugging Face folder (no tokenizer), exported as `--scheme q4_k`.
    let model = Llama::random(&be, config.clone(), 11, WeightFormat::F32).unwrap();
    let source = ModelSource {
        path: "random".into(),
        hf_dir: None,
        config_json: config.to_hf_json(Some(1), Some(2), "float32"),
        dtype: DType::F32,
        tokenizer: None,
        max_seq_len: Some(config.max_seq_len),
    };
    let hf = dir.0.join("hf");
    FullSave { source }.save(&be, &model, &hf).unwrap();
    drop(model);
    let src = load(&be, &hf, false);
    let file = dir.0.join("q4_k.gguf");
    export(&be, &src, &file, Scheme::Q4_K);
    let n_q4k =
        GgufFile::open(&file).unwrap().tensor_infos().iter().filter(|t| t.dtype == Some(DType::Q4_K)).count();
    let kept = load(&be, &file, true);
    let plain = load(&be, &file, false);
    let formats = |m: &LoadedModel<CpuBackend>| -> Vec<WeightFormat> {
        let mut w = vec![&m.model.embed];
        w.extend(m.model.output.iter().map(|o| &o.weight));
        w.extend(m.model.layers.iter().flat_map(|l| l.projections()).map(|l| &l.weight));
        w.into_iter().map(|w| be.weight_format(w)).collect()
    };
    let q4k = WeightFormat::Quant(QuantFormat::Q4_K);
    let kept_formats = formats(&kept);
    assert_eq!(kept_formats.iter().filter(|&&f| f == q4k).count(), n_q4k, "{kept_formats:?}");
    assert!(kept_formats.iter().all(|&f| f == q4k || f == WeightFormat::F32), "{kept_formats:?}");
    // 2 layers of 7 projections and the embedding, less the 2 Q6_K projections of layer 1.
    assert_eq!(n_q4k, 13);
    assert!(formats(&plain).iter().all(|&f| f == WeightFormat::F32));

    // Prompt logits (more than the int8 GEMV's rows take the dequantizing tile path; one row
    // takes the GEMV).
    let ids = test_ids(384, 40);
    let err = rel_err(&logits(&be, &kept, &ids), &logits(&be, &plain, &ids));
    let err1 = rel_err(&logits(&be, &kept, &ids[..1]), &logits(&be, &plain, &ids[..1]));
    eprintln!("Q4_K kept vs dequantized: logits relative error {err:.2e} (40 tokens), {err1:.2e} (1 token)");
    assert!(err < 1e-4 && err1 < 2e-2, "{err} {err1}");

    // Greedy decoding (one row at a time: the int8 GEMV) gives the same tokens, except where the
    // dequantized model's two best logits are closer than the int8 activations can tell apart
    // (this random model's logits are nearly flat, so such near ties do occur): checked along the
    // dequantized model's greedy tokens, each step from the same context, and the kept model's
    // own greedy tokens follow them up to the first near tie.
    let prompt = &ids[..5];
    let n = 24;
    let a = greedy(&be, &plain, prompt, n);
    let b = greedy(&be, &kept, prompt, n);
    let last =
        |m: &LoadedModel<CpuBackend>, ctx: &[u32]| logits(&be, m, ctx)[(ctx.len() - 1) * 384..].to_vec();
    let (mut ties, mut first_tie) = (0, n);
    for i in 0..n {
        let ctx: Vec<u32> = prompt.iter().chain(&a[..i]).copied().collect();
        let (p, k) = (last(&plain, &ctx), last(&kept, &ctx));
        let best = (0..384).max_by(|&x, &y| k[x].total_cmp(&k[y])).unwrap() as u32;
        if best != a[i] {
            let gap = p[a[i] as usize] - p[best as usize];
            let scale = p.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(
                gap < 2e-2 * scale,
                "step {i}: the kept model picks {best}, not {}, by a clear margin {gap}",
                a[i]
            );
            ties += 1;
            first_tie = first_tie.min(i);
        }
    }
    let agree = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    eprintln!("greedy: {ties} near ties in {n} steps; the kept model's own tokens agree for {agree} steps");
    assert!(agree >= first_tie, "tokens differ at {agree} before any near tie: {a:?} vs {b:?}");
    assert!(ties <= n / 4, "{ties} near ties in {n} steps");
}

/// English, Spanish, code, numbers, special tokens and odd whitespace.
const CORPUS: &[&str] = &[
    "Hello, world! How are you today? I'm fine, they'll say.",
    "¿Dónde está la biblioteca? Mañana iré al médico con el señor Núñez; ¡qué pingüino tan cigüeño!",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}\n",
    "def cuadrado(x):\n\treturn x ** 2  # devuelve el cuadrado\n",
    "Números: 12345, 3.14159, 1/2 ½, 100 € y 42%. Año 2026.",
    "<|im_start|>user\nHola, ¿qué tal?<|im_end|>\n<|im_start|>assistant\n",
    "   espacios    múltiples\n\n\n\ny saltos   \t de línea  ",
    "🦙 afinar 🚀 — Ünïcödé: ñ ç ß ø 漢字 かな",
];

fn assert_same_tokenizer(a: &Tokenizer, b: &Tokenizer, what: &str) {
    for text in CORPUS {
        let ids = a.encode(text, false).unwrap();
        assert_eq!(b.encode(text, false).unwrap(), ids, "{what}: ids of {text:?}");
        assert_eq!(b.decode(&ids, false).unwrap(), a.decode(&ids, false).unwrap(), "{what}: decode {text:?}");
    }
    assert_eq!(b.bos_id(), a.bos_id(), "{what}: BOS");
    assert_eq!(b.eos_id(), a.eos_id(), "{what}: EOS");
    assert_eq!(b.add_bos_default(), a.add_bos_default(), "{what}: add_bos");
    assert_eq!(b.chat_template(), a.chat_template(), "{what}: chat template");
    let chat = [Message::new("system", "Eres útil."), Message::new("user", "¿Cuál es la capital de España?")];
    if a.chat_template().is_some() {
        assert_eq!(
            render_chat(b, &chat, true).unwrap(),
            render_chat(a, &chat, true).unwrap(),
            "{what}: chat"
        );
    }
}

#[test]
fn smollm2_f32_round_trip_keeps_logits_tokenizer_and_chat_template() {
    let be = CpuBackend::new(Some(2));
    let dir = Tmp::new("gguf-smollm2");
    let src = load(&be, &asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"), false);
    let out = dir.0.join("smollm2_f32.gguf");
    export(&be, &src, &out, Scheme::F32);
    let back = load(&be, &out, false);
    let tok = src.tokenizer.as_ref().unwrap();
    let ids = tok.encode("La inteligencia artificial es", false).unwrap();
    let (a, b) = (logits(&be, &src, &ids), logits(&be, &back, &ids));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "logits differ after the round trip");
    assert_same_tokenizer(tok, back.tokenizer.as_ref().unwrap(), "SmolLM2 via GGUF");
    assert_same_tokenizer(tok, &load_tokenizer(&out).unwrap(), "load_tokenizer");
    let f = GgufFile::open(&out).unwrap();
    let orig = GgufFile::open(&src.source).unwrap();
    for key in
        ["tokenizer.ggml.pre", "tokenizer.ggml.padding_token_id", "general.name", "llama.rope.freq_base"]
    {
        assert_eq!(f.get(key), orig.get(key), "{key}");
    }
    assert_eq!(f.get("tokenizer.ggml.token_type"), orig.get("tokenizer.ggml.token_type"));
    assert_eq!(f.get("tokenizer.ggml.tokens"), orig.get("tokenizer.ggml.tokens"));
    assert_eq!(f.get("tokenizer.ggml.merges"), orig.get("tokenizer.ggml.merges"));
}

#[test]
fn llama3_tokenizer_survives_gguf_metadata() {
    let tok = Tokenizer::from_file(&asset("llama3-tokenizer/tokenizer.json")).unwrap();
    let spec = tok.to_gguf_spec(tok.vocab_size()).unwrap();
    assert_eq!(spec.pre.as_deref(), Some("llama-bpe"));
    assert_eq!(spec.tokens.len(), 128_256);
    assert_eq!(
        spec.token_types.iter().filter(|&&t| t == 3).count(),
        256,
        "the special tokens are control tokens"
    );
    assert_same_tokenizer(&tok, &Tokenizer::from_gguf(spec).unwrap(), "Llama-3 via GGUF metadata");
}

/// A LoRA on every projection with a non-zero `B` (uniform in ±`b_range`/2), as after training.
fn add_random_lora(
    be: &CpuBackend,
    m: &mut afinar::models::Llama<CpuBackend>,
    rank: usize,
    alpha: f32,
    b_range: f32,
) -> LoraSpec {
    let targets = LoraTarget::PROJECTIONS.to_vec();
    let spec = LoraSpec { rank, alpha, dropout: 0.0, targets };
    m.apply_lora(be, &spec, &mut Rng::new(1)).unwrap();
    let mut rng = Rng::new(2);
    m.visit_params_mut(&mut |name, p| {
        if let (true, ParamMut::Buf(b, s)) = (name.ends_with("lora_B.weight"), p) {
            let v: Vec<f32> = (0..s.len).map(|_| (rng.next_f64() as f32 - 0.5) * b_range).collect();
            *b = be.from_host(&v).unwrap();
        }
        Ok(())
    })
    .unwrap();
    spec
}

fn save_lora(be: &CpuBackend, m: &mut LoadedModel<CpuBackend>, spec: &LoraSpec, dir: &Path, merged: bool) {
    let c = &m.model.config;
    let source = ModelSource {
        path: m.source.clone(),
        hf_dir: m.hf_folder.as_ref().map(|h| h.dir.clone()),
        config_json: m
            .hf_folder
            .as_ref()
            .map_or_else(|| c.to_hf_json(None, None, "float32"), |h| h.config_json.clone()),
        dtype: DType::F32,
        tokenizer: m.tokenizer.take().map(std::sync::Arc::new),
        max_seq_len: Some(c.max_seq_len),
    };
    LoraSave { source, spec: spec.clone(), merged }.save(be, &m.model, dir).unwrap();
}

#[test]
fn lora_adapters_export_with_llama_cpp_layout() {
    let be = CpuBackend::new(Some(2));
    let dir = Tmp::new("gguf-lora");
    let base_path = fixture("models/llama31_tiny");
    let mut m = load(&be, &base_path, false);
    let spec = add_random_lora(&be, &mut m.model, 4, 8.0, 0.1);
    let adapter = dir.0.join("run");
    save_lora(&be, &mut m, &spec, &adapter, false);
    let out = dir.0.join("adapter.gguf");
    let cfg = base_config(&base_path).unwrap();
    export_lora_adapter(&adapter, &cfg, &out, &AdapterExportOptions::default(), &mut |_| {}).unwrap();

    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.require_str("general.type").unwrap(), "adapter");
    assert_eq!(f.require_str("adapter.type").unwrap(), "lora");
    assert_eq!(f.get("adapter.lora.alpha"), Some(&MetaValue::F32(8.0)));
    let (_, peft) = afinar::checkpoint::load_peft_adapter(&adapter).unwrap();
    assert_eq!(f.tensor_infos().len(), peft.names().len());
    for name in peft.names() {
        let (module, part) = parse_lora_name(&name).unwrap();
        let (layer, field) = module.strip_prefix("model.layers.").unwrap().split_once('.').unwrap();
        let g = match field.rsplit('.').next().unwrap() {
            "q_proj" => "attn_q",
            "k_proj" => "attn_k",
            "v_proj" => "attn_v",
            "o_proj" => "attn_output",
            "gate_proj" => "ffn_gate",
            "up_proj" => "ffn_up",
            "down_proj" => "ffn_down",
            other => panic!("{other}"),
        };
        let suffix = if part == afinar::checkpoint::peft::LoraPart::A { "lora_a" } else { "lora_b" };
        let gname = format!("blk.{layer}.{g}.weight.{suffix}");
        let view = f.tensor(&gname).unwrap_or_else(|e| panic!("{gname}: {e}"));
        let want = peft.tensor(&name).unwrap();
        assert_eq!(view.shape, want.shape, "{gname}");
        let mut w = want.to_f32().unwrap();
        let heads = match (g, suffix) {
            ("attn_q", "lora_b") => Some(cfg.n_heads),
            ("attn_k", "lora_b") => Some(cfg.n_kv_heads),
            _ => None,
        };
        if let Some(h) = heads {
            w = permute_rows(&w, want.shape[0], want.shape[1], h).unwrap();
        }
        assert_eq!(view.to_f32().unwrap(), w, "{gname}");
    }
    // A base model of other dimensions is refused, naming the tensor.
    let other = base_config(&fixture("models/smollm2")).unwrap();
    let err = export_lora_adapter(
        &adapter,
        &other,
        &dir.0.join("x.gguf"),
        &AdapterExportOptions::default(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("lora_") && err.contains("needs"), "{err}");
    // The model itself, still carrying its adapters, is not exported as if it were merged.
    let err =
        export_gguf(&be, &m, &dir.0.join("y.gguf"), &ExportOptions::default(), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("LoRA"), "{err}");
    let err = export_gguf(
        &be,
        &m,
        &dir.0.join("y.gguf"),
        &ExportOptions { scheme: Scheme::Nf4, ..Default::default() },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("GGUF has no NF4 type"), "{err}");
}

/// Greedy continuation of `prompt` (exactly `n` tokens, no stop token).
fn greedy(be: &CpuBackend, m: &LoadedModel<CpuBackend>, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = m.model.new_cache(be, 1, prompt.len() + n).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: n,
        sampling: SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 },
        stop_ids: Vec::new(),
    };
    generate(be, &m.model, &mut cache, prompt, &opts, |_| Ok(true)).unwrap().0
}

#[test]
fn llama_cpp_loads_exports_and_agrees_with_afinar() {
    let Some(python) = common::reference_python("the llama.cpp check") else { return };
    let t0 = std::time::Instant::now();
    let be = CpuBackend::new(Some(2));
    let dir = Tmp::new("gguf-llamacpp");
    let src = load(&be, &asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"), false);
    let tok = src.tokenizer.as_ref().unwrap();
    let chat = render_chat(tok, &[Message::new("user", "¿Cuál es la capital de España?")], true).unwrap();
    let prompts = ["The three primary colors are", "Había una vez, en un pueblo de Castilla,", chat.as_str()];
    let prompt_ids: Vec<Vec<u32>> =
        prompts.iter().map(|p| tok.encode(p, tok.add_bos_default()).unwrap()).collect();
    let n = 32;
    let mut runs = serde_json::Map::new();
    for scheme in [Scheme::F32, Scheme::F16, Scheme::Q8_0, Scheme::Q4_0, Scheme::Q4_K] {
        let file = dir.0.join(format!("smollm2_{scheme}.gguf"));
        export(&be, &src, &file, scheme);
        // --dtype native: Q8_0/Q4_0 blocks stay quantized (int8 dot products, as llama.cpp).
        let m = load(&be, &file, true);
        let tokens: Vec<Vec<u32>> = prompt_ids.iter().map(|p| greedy(&be, &m, p, n)).collect();
        runs.insert(scheme.name().into(), serde_json::json!({"file": file, "tokens": tokens}));
    }
    // LoRA: afinar's merged model against llama.cpp's base f32 GGUF + adapter GGUF.
    let mut m = load(&be, &asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"), false);
    let spec = add_random_lora(&be, &mut m.model, 8, 16.0, 0.5);
    let run = dir.0.join("lora_run");
    save_lora(&be, &mut m, &spec, &run, true);
    drop(m);
    let adapter = dir.0.join("adapter.gguf");
    let cfg = base_config(&dir.0.join("smollm2_f32.gguf")).unwrap();
    export_lora_adapter(&run, &cfg, &adapter, &AdapterExportOptions::default(), &mut |_| {}).unwrap();
    let merged = load(&be, &run.join("merged"), false);
    let lora_tokens: Vec<Vec<u32>> = prompt_ids.iter().map(|p| greedy(&be, &merged, p, n)).collect();
    let base_tokens = &runs["f32"]["tokens"];
    assert_ne!(&serde_json::json!(lora_tokens), base_tokens, "the adapter should change the output");

    let spec = serde_json::json!({
        "prompts": prompts.iter().zip(&prompt_ids).map(|(t, ids)| serde_json::json!({"text": t, "ids": ids})).collect::<Vec<_>>(),
        "runs": runs,
        "lora": {"base": dir.0.join("smollm2_f32.gguf"), "adapter": adapter, "tokens": lora_tokens},
        "perplexity_text": Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/bilingual_instruct.jsonl"),
    });
    eprintln!("afinar side done in {:.1}s", t0.elapsed().as_secs_f64());
    run_verify_script(&python, "gguf_export.py", &spec, &dir.0, "llama.cpp");
}
