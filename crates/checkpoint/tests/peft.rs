//! LoRA adapters in the PEFT layout: writing, reading back, the config PEFT 0.21 writes, and the
//! checks on names, shapes and settings. With `AFINAR_PYTHON` set (a python with torch,
//! transformers and peft), an adapter for the tiny Llama-3.1 fixture is loaded by PEFT through
//! `scripts/verify/peft_adapter.py`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use afinar_checkpoint::peft::{
    base_tensor_name, load_peft_adapter, parse_lora_name, peft_tensor_name, save_peft_adapter,
    targets_module, LoraAdapterConfig, LoraPart, ADAPTER_CONFIG_FILE, ADAPTER_MODEL_FILE,
};
use afinar_checkpoint::write::{save_safetensors, TensorWrite};
use afinar_checkpoint::{CheckpointError, DType};
use common::{run_python, TempDir};
use serde_json::{json, Value};

/// What PEFT 0.21.2's `save_pretrained` wrote for `LoraConfig(r=4, lora_alpha=8,
/// target_modules=["q_proj", "v_proj", "lm_head"], task_type="CAUSAL_LM")`.
const PEFT_0_21_CONFIG: &str = r#"{
  "alora_invocation_tokens": null,
  "alpha_pattern": {},
  "arrow_config": null,
  "auto_mapping": null,
  "base_model_name_or_path": "/work/main/tests/fixtures/models/llama31_tiny",
  "bias": "none",
  "corda_config": null,
  "ensure_weight_tying": false,
  "eva_config": null,
  "exclude_modules": null,
  "fan_in_fan_out": false,
  "inference_mode": true,
  "init_lora_weights": true,
  "kasa_config": null,
  "layer_replication": null,
  "layers_pattern": null,
  "layers_to_transform": null,
  "loftq_config": {},
  "lora_alpha": 8,
  "lora_bias": false,
  "lora_dropout": 0.0,
  "lora_ga_config": null,
  "megatron_config": null,
  "megatron_core": "megatron.core",
  "modules_to_save": null,
  "monteclora_config": null,
  "peft_type": "LORA",
  "peft_version": "0.21.2",
  "qalora_group_size": 16,
  "r": 4,
  "rank_pattern": {},
  "revision": null,
  "target_modules": [
    "lm_head",
    "q_proj",
    "v_proj"
  ],
  "target_parameters": null,
  "task_type": "CAUSAL_LM",
  "trainable_token_indices": null,
  "use_bdlora": null,
  "use_dora": false,
  "use_qalora": false,
  "use_rslora": false,
  "velora_config": null
}"#;

fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let x = (i.wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(7919))) >> 8;
            (x as f32 / (1 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

/// LoRA pairs for `modules` (name, out, in), rank `r`, as owned data.
struct Lora {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    data: Vec<Vec<f32>>,
}

impl Lora {
    fn new(modules: &[(String, usize, usize)], r: usize, scale: f32) -> Lora {
        let mut l = Lora { names: vec![], shapes: vec![], data: vec![] };
        for (i, (m, out, inp)) in modules.iter().enumerate() {
            l.names.push(format!("{m}.lora_A.weight"));
            l.shapes.push(vec![r, *inp]);
            l.data.push(values(r * inp, 2 * i as u32, scale));
            l.names.push(format!("{m}.lora_B.weight"));
            l.shapes.push(vec![*out, r]);
            l.data.push(values(out * r, 2 * i as u32 + 1, scale));
        }
        l
    }

    fn tensors(&self, dtype: DType) -> Vec<TensorWrite<'_>> {
        (0..self.names.len())
            .map(|i| TensorWrite::from_f32(&self.names[i], dtype, self.shapes[i].clone(), &self.data[i]))
            .collect()
    }
}

fn small_modules() -> Vec<(String, usize, usize)> {
    let mut v = Vec::new();
    for l in 0..2 {
        v.push((format!("model.layers.{l}.self_attn.q_proj"), 8, 8));
        v.push((format!("model.layers.{l}.self_attn.v_proj"), 4, 8));
    }
    v.push(("lm_head".into(), 12, 8));
    v
}

#[test]
fn names() {
    let n = "model.layers.3.self_attn.q_proj.lora_A.weight";
    assert_eq!(peft_tensor_name(n), "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight");
    assert_eq!(peft_tensor_name(&peft_tensor_name(n)), peft_tensor_name(n));
    assert_eq!(base_tensor_name(&peft_tensor_name(n)), n);
    assert_eq!(parse_lora_name(&peft_tensor_name(n)), Some(("model.layers.3.self_attn.q_proj", LoraPart::A)));
    assert_eq!(parse_lora_name("base_model.model.lm_head.lora_B.weight"), Some(("lm_head", LoraPart::B)));
    assert_eq!(parse_lora_name("lm_head.base_layer.weight"), None);
    assert_eq!(parse_lora_name(".lora_A.weight"), None);
    let t = vec!["q_proj".to_string(), "self_attn.o_proj".to_string()];
    assert!(targets_module(&t, "model.layers.0.self_attn.q_proj"));
    assert!(targets_module(&t, "q_proj"));
    assert!(targets_module(&t, "model.layers.0.self_attn.o_proj"));
    assert!(!targets_module(&t, "model.layers.0.self_attn.xq_proj"));
    assert!(!targets_module(&t, "model.layers.0.mlp.o_proj"));
}

#[test]
fn save_and_load_round_trip() {
    let dir = TempDir::new("peft-roundtrip");
    let lora = Lora::new(&small_modules(), 4, 0.5);
    let tensors = lora.tensors(DType::F32);
    let mut cfg = LoraAdapterConfig::new(4, 16.0, &["v_proj", "q_proj", "lm_head"]);
    cfg.lora_dropout = 0.05;
    cfg.base_model_name_or_path = Some("meta-llama/Llama-3.2-1B".into());
    save_peft_adapter(dir.path(), &cfg, &tensors).expect("save");

    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, vec![ADAPTER_CONFIG_FILE, ADAPTER_MODEL_FILE]);

    let json: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(ADAPTER_CONFIG_FILE)).expect("config"))
            .expect("json");
    for (k, v) in [
        ("peft_type", json!("LORA")),
        ("task_type", json!("CAUSAL_LM")),
        ("r", json!(4)),
        ("lora_alpha", json!(16)),
        ("lora_dropout", json!(0.05)),
        ("target_modules", json!(["lm_head", "q_proj", "v_proj"])),
        ("bias", json!("none")),
        ("fan_in_fan_out", json!(false)),
        ("inference_mode", json!(true)),
        ("init_lora_weights", json!(true)),
        ("use_rslora", json!(false)),
        ("use_dora", json!(false)),
        ("modules_to_save", Value::Null),
        ("rank_pattern", json!({})),
        ("alpha_pattern", json!({})),
        ("base_model_name_or_path", json!("meta-llama/Llama-3.2-1B")),
        ("revision", Value::Null),
    ] {
        assert_eq!(json[k], v, "{k}");
    }
    // Sorted keys, as PEFT writes them.
    let keys: Vec<&String> = json.as_object().expect("object").keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);

    let (back, ckpt) = load_peft_adapter(dir.path()).expect("load");
    assert_eq!(back.r, 4);
    assert_eq!(back.lora_alpha, 16.0);
    assert_eq!(back.lora_dropout, 0.05);
    assert_eq!(back.target_modules, vec!["lm_head", "q_proj", "v_proj"]);
    assert_eq!(back.base_model_name_or_path, cfg.base_model_name_or_path);
    assert_eq!(back.scaling(), 4.0);
    assert_eq!(ckpt.metadata().cloned(), Some(BTreeMap::from([("format".to_string(), "pt".to_string())])));
    assert_eq!(ckpt.names().len(), tensors.len());
    for t in &tensors {
        let v = ckpt.tensor(&peft_tensor_name(t.name)).expect("tensor");
        assert_eq!(v.shape, t.shape);
        let afinar_checkpoint::TensorData::F32(want) = t.data else { unreachable!() };
        assert_eq!(v.to_f32().expect("f32"), want);
    }
    assert!(ckpt.contains("base_model.model.lm_head.lora_A.weight"));
    assert!(ckpt.contains("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"));

    // Writing the read config again gives the same file.
    let dir2 = TempDir::new("peft-roundtrip2");
    save_peft_adapter(dir2.path(), &back, &tensors).expect("save again");
    assert_eq!(
        std::fs::read(dir2.path().join(ADAPTER_CONFIG_FILE)).expect("a"),
        std::fs::read(dir.path().join(ADAPTER_CONFIG_FILE)).expect("b")
    );
}

#[test]
fn prefixed_names_bf16_and_derived_targets() {
    let dir = TempDir::new("peft-derived");
    let lora = Lora::new(&small_modules(), 4, 0.5);
    let prefixed: Vec<String> = lora.names.iter().map(|n| peft_tensor_name(n)).collect();
    let tensors: Vec<TensorWrite> = (0..prefixed.len())
        .map(|i| TensorWrite::from_f32(&prefixed[i], DType::BF16, lora.shapes[i].clone(), &lora.data[i]))
        .collect();
    let mut cfg = LoraAdapterConfig { r: 4, lora_alpha: 6.5, use_rslora: true, ..Default::default() };
    cfg.extra.insert("layers_to_transform".into(), json!([0, 1]));
    save_peft_adapter(dir.path(), &cfg, &tensors).expect("save");
    let (back, ckpt) = load_peft_adapter(dir.path()).expect("load");
    assert_eq!(back.target_modules, vec!["lm_head", "q_proj", "v_proj"]);
    assert_eq!(back.lora_alpha, 6.5);
    assert!(back.use_rslora);
    assert_eq!(back.scaling(), 6.5 / 2.0);
    assert_eq!(back.extra["layers_to_transform"], json!([0, 1]));
    let (dtype, shape) = ckpt.tensor_info("base_model.model.lm_head.lora_B.weight").expect("info");
    assert_eq!((dtype, shape), ("BF16", &[12usize, 4][..]));
}

#[test]
fn bad_adapters_are_refused_naming_file_and_tensor() {
    let dir = TempDir::new("peft-bad");
    let cfg = LoraAdapterConfig::new(4, 8.0, &["q_proj", "v_proj", "lm_head"]);
    let lora = Lora::new(&small_modules(), 4, 0.5);
    let all = lora.tensors(DType::F32);
    let wrong_rank = Lora::new(&small_modules(), 3, 0.5);
    let untargeted = Lora::new(&[("model.layers.0.mlp.up_proj".to_string(), 8, 8)], 4, 0.5);
    let v = vec![0f32; 32];
    let cases: Vec<(Vec<TensorWrite>, &str, &str)> = vec![
        (all[..9].to_vec(), "lm_head.lora_A.weight", "no lora_B"),
        (all[1..].to_vec(), "q_proj.lora_B.weight", "no lora_A"),
        (wrong_rank.tensors(DType::F32), "lora_A.weight", "rank 3, the config says r = 4"),
        (untargeted.tensors(DType::F32), "up_proj", "target_modules"),
        (
            vec![TensorWrite::from_f32("lm_head.weight", DType::F32, vec![4, 8], &v)],
            "lm_head.weight",
            "not a LoRA tensor name",
        ),
        (
            vec![TensorWrite::from_f32("lm_head.lora_A.weight", DType::F32, vec![4, 2, 4], &v)],
            "lm_head.lora_A.weight",
            "not 2-D",
        ),
    ];
    for (tensors, tensor, want) in cases {
        let e = save_peft_adapter(dir.path(), &cfg, &tensors).unwrap_err();
        assert!(matches!(e, CheckpointError::Tensor { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(ADAPTER_MODEL_FILE) && msg.contains(tensor) && msg.contains(want), "{msg}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

#[test]
fn reads_the_config_peft_writes() {
    let cfg =
        LoraAdapterConfig::from_json(&serde_json::from_str(PEFT_0_21_CONFIG).expect("json")).expect("config");
    assert_eq!(cfg.r, 4);
    assert_eq!(cfg.lora_alpha, 8.0);
    assert_eq!(cfg.target_modules, vec!["lm_head", "q_proj", "v_proj"]);
    assert_eq!(cfg.task_type, "CAUSAL_LM");
    assert_eq!(cfg.base_model_name_or_path.as_deref(), Some("/work/main/tests/fixtures/models/llama31_tiny"));
    assert_eq!(cfg.scaling(), 2.0);
    assert_eq!(cfg.extra["megatron_core"], "megatron.core");
    assert!(!cfg.extra.contains_key("peft_version"));
    assert!(!cfg.extra.contains_key("r"));
    // Written back, every key PEFT wrote is there with the same value (peft_version aside).
    let again = cfg.to_json();
    let orig: Value = serde_json::from_str(PEFT_0_21_CONFIG).expect("json");
    for (k, v) in orig.as_object().expect("object") {
        if k != "peft_version" {
            assert_eq!(&again[k], v, "{k}");
        }
    }
}

#[test]
fn unsupported_configs_are_refused() {
    let base: Value = serde_json::from_str(PEFT_0_21_CONFIG).expect("json");
    for (key, value, want) in [
        ("use_dora", json!(true), "DoRA"),
        ("rank_pattern", json!({"q_proj": 8}), "rank_pattern"),
        ("alpha_pattern", json!({"q_proj": 8}), "alpha_pattern"),
        ("bias", json!("all"), "bias"),
        ("fan_in_fan_out", json!(true), "fan_in_fan_out"),
        ("peft_type", json!("IA3"), "only LoRA"),
        ("r", json!(0), "\"r\""),
        ("lora_alpha", json!("8"), "lora_alpha"),
    ] {
        let mut j = base.clone();
        j[key] = value;
        let e = LoraAdapterConfig::from_json(&j).unwrap_err();
        assert!(e.contains(want), "{key}: {e}");
    }
    // Through the folder reader: the error names the config file.
    let dir = TempDir::new("peft-unsupported");
    let mut j = base.clone();
    j["use_dora"] = json!(true);
    dir.write(ADAPTER_CONFIG_FILE, j.to_string().as_bytes());
    let e = load_peft_adapter(dir.path()).unwrap_err();
    assert!(matches!(e, CheckpointError::Format { .. }), "{e}");
    assert!(e.to_string().contains(ADAPTER_CONFIG_FILE), "{e}");

    // A pickle-only adapter says so.
    let dir = TempDir::new("peft-bin");
    dir.write(ADAPTER_CONFIG_FILE, PEFT_0_21_CONFIG.as_bytes());
    dir.write("adapter_model.bin", b"pickle");
    let e = load_peft_adapter(dir.path()).unwrap_err();
    assert!(e.to_string().contains("adapter_model.bin"), "{e}");
}

#[test]
fn load_accepts_extra_tensors_peft_saves_and_checks_lora_ones() {
    // PEFT saves `lm_head.base_layer.weight` when lm_head is a target: not LoRA, kept.
    let dir = TempDir::new("peft-extra");
    dir.write(ADAPTER_CONFIG_FILE, PEFT_0_21_CONFIG.as_bytes());
    let lora = Lora::new(&[("lm_head".to_string(), 12, 8)], 4, 0.5);
    let base = vec![0.25f32; 96];
    let peft_names: Vec<String> = lora.names.iter().map(|n| peft_tensor_name(n)).collect();
    let mut tensors: Vec<TensorWrite> = (0..2)
        .map(|i| TensorWrite::from_f32(&peft_names[i], DType::F32, lora.shapes[i].clone(), &lora.data[i]))
        .collect();
    tensors.push(TensorWrite::from_f32(
        "base_model.model.lm_head.base_layer.weight",
        DType::F32,
        vec![12, 8],
        &base,
    ));
    let path = dir.path().join(ADAPTER_MODEL_FILE);
    save_safetensors(&path, &tensors, &BTreeMap::new()).expect("save");
    let (_, ckpt) = load_peft_adapter(dir.path()).expect("load");
    assert_eq!(ckpt.names().len(), 3);

    // A lora_A without its lora_B is refused, naming the file and tensor.
    save_safetensors(&path, &tensors[..1], &BTreeMap::new()).expect("save");
    let e = load_peft_adapter(dir.path()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(ADAPTER_MODEL_FILE) && msg.contains("lm_head.lora_A.weight"), "{msg}");
}

/// The tiny Llama-3.1 fixture's linear layers (module, out, in), from its config.json.
fn tiny_linear_modules(base: &Path) -> Vec<(String, usize, usize)> {
    let c: Value =
        serde_json::from_slice(&std::fs::read(base.join("config.json")).expect("config")).expect("json");
    let u = |k: &str| c[k].as_u64().expect(k) as usize;
    let (h, ffn, heads, kv, vocab) = (
        u("hidden_size"),
        u("intermediate_size"),
        u("num_attention_heads"),
        u("num_key_value_heads"),
        u("vocab_size"),
    );
    let hd = c["head_dim"].as_u64().map_or(h / heads, |d| d as usize);
    let mut v = Vec::new();
    for l in 0..u("num_hidden_layers") {
        let a = format!("model.layers.{l}.self_attn");
        let m = format!("model.layers.{l}.mlp");
        v.push((format!("{a}.q_proj"), heads * hd, h));
        v.push((format!("{a}.k_proj"), kv * hd, h));
        v.push((format!("{a}.v_proj"), kv * hd, h));
        v.push((format!("{a}.o_proj"), h, heads * hd));
        v.push((format!("{m}.gate_proj"), ffn, h));
        v.push((format!("{m}.up_proj"), ffn, h));
        v.push((format!("{m}.down_proj"), h, ffn));
    }
    v.push(("lm_head".into(), vocab, h));
    v
}

#[test]
fn peft_loads_our_adapter_and_matches_a_hand_merge() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama31_tiny");
    let root: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("afinar-checkpoint-peft");
    let modules = tiny_linear_modules(&base);
    let lora = Lora::new(&modules, 4, 0.4);
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"];
    for (dtype, name) in [(DType::F32, "adapter_f32"), (DType::BF16, "adapter_bf16")] {
        let dir = root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = LoraAdapterConfig::new(4, 8.0, &targets);
        cfg.base_model_name_or_path = Some(base.to_string_lossy().into_owned());
        save_peft_adapter(&dir, &cfg, &lora.tensors(dtype)).expect("save");
        let out = root.join(format!("{name}_logits.safetensors"));
        let Some(summary) = run_python("peft_adapter.py", &[&base, &dir, Path::new("--out"), &out]) else {
            return;
        };
        assert_eq!(summary["ok"], true, "{summary}");
        assert_eq!(summary["lora_tensors_matched"].as_u64(), Some(lora.names.len() as u64), "{summary}");
        assert_eq!(summary["lora_params_in_model"].as_u64(), Some(lora.names.len() as u64));
        assert_eq!(summary["scaling"], 2.0);
        let merge = summary["max_abs_diff_vs_hand_merge"].as_f64().expect("diff");
        let effect = summary["max_abs_diff_vs_base"].as_f64().expect("diff");
        assert!(merge <= 1e-4, "{summary}");
        assert!(effect > 1e-2, "the adapter changed nothing: {summary}");
        assert!(out.is_file());
    }
}
