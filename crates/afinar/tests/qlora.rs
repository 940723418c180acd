//! QLoRA: a LoRA step on a base whose attention and MLP projections are NF4.
//!
//! The fixture (`scripts/fixtures/qlora_grads.py` → `tests/fixtures/qlora/`) is a tiny random
//! Llama saved in f32, the bitsandbytes NF4 bytes of each of its projections, and PEFT's LoRA
//! gradients computed in f32 on the bitsandbytes-dequantized weights. Here the loader quantizes
//! the same f32 weights itself (which must give bitsandbytes' bytes), and the LoRA gradients must
//! match within 1e-4 relative. Then the shipped QLoRA configs validate, and a bad shape gives a
//! clear error.

mod common;

use afinar::blocks::PROJECTIONS;
use afinar::config::{builtin_configs, ConfigDoc, Dtype, LoraTarget as CfgTarget, RecipeConfig};
use afinar::engine::CpuWeightData;
use afinar::engine::{Backend, CpuBackend, QuantFormat, WeightFormat};
use afinar::formats::nf4::Nf4Ref;
use afinar::generate::Rng;
use afinar::models::{load_model, Llama, LoadOptions, LoraSpec, LoraTarget, TrainBatch};
use common::{apply_peft_lora, fixture, rel_err, Expected};

const NF4: WeightFormat = WeightFormat::Quant(QuantFormat::Nf4);

fn qlora_model(be: &CpuBackend) -> Llama<CpuBackend> {
    let opts = LoadOptions { format: WeightFormat::F32, projections: Some(NF4), ..Default::default() };
    load_model(be, &fixture("qlora/model"), &opts).unwrap().model
}

#[test]
fn loader_quantizes_projections_like_bitsandbytes() {
    let be = CpuBackend::new(Some(2));
    let m = qlora_model(&be);
    let exp = Expected::open(&fixture("qlora/qlora_grads.safetensors"));
    let bytes = std::fs::read(fixture("qlora/qlora_grads.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let u8s = |name: &str| st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}")).data().to_vec();
    // Embedding (tied output) and norms stay f32.
    assert_eq!(be.weight_format(&m.embed), WeightFormat::F32);
    let mut checked = 0;
    for (l, layer) in m.layers.iter().enumerate() {
        let weights = layer.projections();
        for (name, lin) in PROJECTIONS.iter().zip(weights) {
            let key = format!("model.layers.{l}.{name}.weight.nf4");
            let CpuWeightData::Quant { format: QuantFormat::Nf4, blocks } = lin.weight.data() else {
                panic!("{key}: not NF4")
            };
            let (rows, cols) = be.weight_shape(&lin.weight);
            let ours = Nf4Ref::new(blocks, rows, cols);
            assert_eq!(ours.packed, &u8s(&format!("{key}.packed"))[..], "{key}: packed indices");
            assert_eq!(ours.codes, &u8s(&format!("{key}.absmax_codes"))[..], "{key}: scale codes");
            let nested = exp.f32(&format!("{key}.nested_scales")).1;
            let got: Vec<f32> = (0..nested.len()).map(|j| ours.nested_scale(j)).collect();
            assert_eq!(got, nested, "{key}: nested scales");
            let offset = exp.f32(&format!("{key}.offset")).1[0];
            assert_eq!(ours.offset.to_bits(), offset.to_bits(), "{key}: offset {} vs {offset}", ours.offset);
            checked += 1;
        }
    }
    assert_eq!(checked, 14);
}

#[test]
fn qlora_gradients_match_peft_on_the_dequantized_base() {
    let be = CpuBackend::new(Some(2));
    let mut m = qlora_model(&be);
    let exp = Expected::open(&fixture("qlora/qlora_grads.safetensors"));
    apply_peft_lora(&be, &mut m, LoraTarget::PROJECTIONS.to_vec(), &exp);
    let (shape, ids) = exp.ids("input_ids");
    let labels: Vec<i32> = exp.ids("labels").1.iter().map(|&l| l as i32).collect();
    let (batch, seq) = (shape[0], shape[1]);
    let positions: Vec<u32> = (0..batch).flat_map(|_| 0..seq as u32).collect();
    let tokens = labels.iter().filter(|&&l| l != -100).count();
    let b = TrainBatch { ids: &ids, labels: &labels, positions: &positions, doc_ids: None, batch, seq };
    m.zero_grads(&be).unwrap();
    let l = m.forward_backward(&be, &b, 1.0 / tokens as f32, false).unwrap();
    let loss = l.sum / tokens as f64;
    let want = exp.f32("loss").1[0] as f64;
    assert!((loss - want).abs() / want < 1e-5, "loss {loss} vs PEFT {want}");
    let mut n = 0;
    let mut worst = 0.0f64;
    m.visit_params_mut(&mut |name, mut p| {
        let s = p.state();
        let got = be.to_host(&s.grad).unwrap();
        let (_, want) = exp.f32(&format!("grad.base_model.model.{name}"));
        let err = rel_err(&got[..s.len], &want);
        assert!(err < 1e-4, "{name}: gradient relative error {err:e}");
        worst = worst.max(err);
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 28, "every LoRA A and B (and nothing else) is trainable");
    println!("QLoRA: loss {loss:.6} (PEFT {want:.6}), 28 LoRA gradients, worst relative error {worst:e}");
}

#[test]
fn merged_weights_are_the_dequantized_base_plus_the_update() {
    let be = CpuBackend::new(Some(1));
    let mut m = qlora_model(&be);
    let spec = LoraSpec { rank: 2, alpha: 4.0, dropout: 0.0, targets: vec![LoraTarget::V] };
    m.apply_lora(&be, &spec, &mut Rng::new(3)).unwrap();
    // B starts at zero: merged = dequantized NF4 base, which differs from the f32 input.
    let merged = m.merged_state_tensors(&be).unwrap();
    let v = merged.iter().find(|t| t.0 == "model.layers.0.self_attn.v_proj.weight").unwrap();
    let base = be.weight_to_host(&m.layers[0].attn.wv.weight).unwrap();
    assert_eq!(v.2, base);
    let f32_model = load_model(&be, &fixture("qlora/model"), &LoadOptions::default()).unwrap().model;
    let orig = be.weight_to_host(&f32_model.layers[0].attn.wv.weight).unwrap();
    let e = rel_err(&base, &orig);
    // Half an NF4 step is at most 0.14 of a block's absmax.
    assert!(e > 0.0 && e <= 0.15, "NF4 rounding of v_proj: {e}");
}

#[test]
fn nf4_needs_whole_blocks_of_64() {
    // llama31_tiny's MLP is 160 wide: down_proj rows are not whole NF4 blocks.
    let be = CpuBackend::new(Some(1));
    let opts = LoadOptions { projections: Some(NF4), ..Default::default() };
    let err = load_model(&be, &fixture("models/llama31_tiny"), &opts).err().expect("must fail").to_string();
    assert!(err.contains("down_proj") && err.contains("nf4") && err.contains("multiple of 64"), "{err}");
}

#[test]
fn shipped_qlora_configs_validate() {
    let dir = std::env::temp_dir().join(format!("afinar-qlora-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.gguf"), "").unwrap();
    std::fs::write(dir.join("data.jsonl"), "{}\n").unwrap();
    let ov = [
        format!("model.path={}", dir.join("model.gguf").display()),
        format!("dataset.source={}", dir.join("data.jsonl").display()),
    ];
    let ov: Vec<&str> = ov.iter().map(String::as_str).collect();
    // The SFT QLoRA configs here; every recipe's QLoRA configs must quantize the base (below).
    let qlora = || builtin_configs().filter(|b| b.name.ends_with("_qlora"));
    let names: Vec<&str> = qlora().filter(|b| b.recipe == "lora_finetune").map(|b| b.name).collect();
    assert_eq!(
        names,
        [
            "smollm2_135m_qlora",
            "smollm2_360m_qlora",
            "llama3_2_1b_qlora",
            "llama3_2_3b_qlora",
            "llama3_1_8b_qlora",
            "qwen3_0_6b_qlora",
            "qwen3_1_7b_qlora",
            "qwen3_4b_qlora",
            "qwen3_8b_qlora",
        ]
    );
    for name in names {
        let mut doc = ConfigDoc::open(name).unwrap();
        doc.apply_overrides(&ov).unwrap();
        let cfg = doc.to_config(None).unwrap_or_else(|e| panic!("{name}: {e}"));
        let lora = cfg.lora.as_ref().unwrap_or_else(|| panic!("{name}: no lora section"));
        assert!(lora.quantize_base, "{name}");
        assert_eq!(lora.target_modules.len(), 7, "{name}: QLoRA adapts every projection");
        assert!(!lora.target_modules.contains(&CfgTarget::Output), "{name}");
        // The LoRA config of the same model differs only where QLoRA needs it.
        let lora_cfg = RecipeConfig::load(&name.replace("_qlora", "_lora"), &ov).unwrap();
        assert_eq!(cfg.model.dtype, lora_cfg.model.dtype, "{name}");
        assert!(matches!(cfg.model.dtype, Dtype::Fp32 | Dtype::Bf16));
    }
    let others: Vec<&str> = qlora().filter(|b| b.recipe != "lora_finetune").map(|b| b.name).collect();
    assert!(!others.is_empty(), "the dpo recipe ships QLoRA configs");
    for name in others {
        let cfg = RecipeConfig::load(name, &ov).unwrap_or_else(|e| panic!("{name}: {e}"));
        let lora = cfg.lora.as_ref().unwrap_or_else(|| panic!("{name}: no lora section"));
        assert!(lora.quantize_base, "{name}: a _qlora config quantizes its base");
    }
    // `quantize_base` must be a boolean (Spanish users write `sí` too: a clear error).
    let err = RecipeConfig::load("smollm2_135m_qlora", &[ov[0], ov[1], "lora.quantize_base=sí"]).unwrap_err();
    assert!(err.to_string().contains("lora.quantize_base"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
