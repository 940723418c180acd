//! A LoRA checkpoint written by afinar loads in Hugging Face PEFT (adapter) and transformers
//! (merged weights) and gives afinar's logits. Needs the reference venv: set `AFINAR_PYTHON`
//! (e.g. `$(scripts/reference-venv.sh)`); without it the test says so and passes.

mod common;

use std::collections::BTreeMap;

use afinar::checkpoint::write::{save_safetensors, TensorWrite};
use afinar::checkpoint::DType;
use afinar::engine::{Backend, CpuBackend, WeightFormat};
use afinar::generate::Rng;
use afinar::models::{load_model, LoadOptions, Logits, LoraSpec, LoraTarget, ParamMut};
use afinar::recipes::save::{LoraSave, ModelSource};
use afinar::recipes::state::SaveTarget;
use common::fixture;

#[test]
fn lora_adapter_and_merged_weights_load_in_peft_and_transformers() {
    let Some(python) = common::reference_python("the PEFT check") else { return };
    let be = CpuBackend::new(Some(2));
    let base = fixture("models/llama31_tiny");
    let mut m = load_model(
        &be,
        &base,
        &LoadOptions { format: WeightFormat::F32, tokenizer: None, ..Default::default() },
    )
    .unwrap()
    .model;
    let targets = LoraTarget::PROJECTIONS.to_vec();
    let spec = LoraSpec { rank: 4, alpha: 8.0, dropout: 0.0, targets };
    m.apply_lora(&be, &spec, &mut Rng::new(1)).unwrap();
    // A trained-looking adapter: B non-zero.
    let mut rng = Rng::new(2);
    m.visit_params_mut(&mut |name, p| {
        if let (true, ParamMut::Buf(b, s)) = (name.ends_with("lora_B.weight"), p) {
            let v: Vec<f32> = (0..s.len).map(|_| (rng.next_f64() as f32 - 0.5) * 0.2).collect();
            *b = be.from_host(&v).unwrap();
        }
        Ok(())
    })
    .unwrap();
    let out = std::env::temp_dir().join(format!("afinar-peft-{}", std::process::id()));
    let run_dir = out.join("epoch_0");
    let config_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    let source = ModelSource {
        path: base.clone(),
        hf_dir: Some(base.clone()),
        config_json,
        dtype: DType::F32,
        tokenizer: None,
        max_seq_len: None,
    };
    LoraSave { source, spec, merged: true }.save(&be, &m, &run_dir).unwrap();

    let (b, t) = (2usize, 12usize);
    let vocab = m.config.vocab_size;
    let ids: Vec<u32> =
        (0..b).flat_map(|r| (0..t).map(move |c| ((17 + 31 * r + 7 * c) % vocab) as u32)).collect();
    let logits = m.forward(&be, &ids, b, t, None, Logits::All).unwrap();
    // Token ids below 2^24 are exact in f32; the script casts them back to integers.
    let ids_f32: Vec<f32> = ids.iter().map(|&i| i as f32).collect();
    let tensors = [
        TensorWrite::from_f32("logits", DType::F32, vec![b, t, vocab], &logits),
        TensorWrite::from_f32("input_ids", DType::F32, vec![b, t], &ids_f32),
    ];
    save_safetensors(run_dir.join("afinar_logits.safetensors"), &tensors, &BTreeMap::new()).unwrap();

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/verify/lora_export.py");
    let res = std::process::Command::new(python).arg(script).arg(&base).arg(&run_dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    eprintln!(
        "{stdout}{}",
        String::from_utf8_lossy(&res.stderr).lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    assert!(res.status.success(), "PEFT/transformers disagree with afinar: {stdout}");
}
