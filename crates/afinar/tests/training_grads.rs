//! Gradients of the explicit backward against PyTorch autograd (full fine-tuning) and PEFT
//! (LoRA) on the same weights and batch: within 1e-4 relative. Fixtures:
//! `scripts/fixtures/training.py`.

mod common;

use afinar::engine::{Backend, CpuBackend, WeightFormat};
use afinar::generate::Rng;
use afinar::models::ActivationCheckpointing::{self, Every, Off};
use afinar::models::{load_model, Llama, LoadOptions, LoraSpec, LoraTarget, TrainBatch};
use common::{apply_peft_lora, fixture, rel_err, Expected};

fn model(dir: &str) -> (CpuBackend, Llama<CpuBackend>) {
    let be = CpuBackend::new(Some(2));
    let opts = LoadOptions { format: WeightFormat::F32, tokenizer: None, ..Default::default() };
    let m = load_model(&be, &fixture(&format!("models/{dir}")), &opts).unwrap().model;
    (be, m)
}

struct Inputs {
    ids: Vec<u32>,
    labels: Vec<i32>,
    positions: Vec<u32>,
    doc_ids: Option<Vec<u32>>,
    batch: usize,
    seq: usize,
}

fn inputs(exp: &Expected) -> Inputs {
    let (shape, ids) = exp.ids("input_ids");
    let (_, labels) = exp.ids("labels");
    let (batch, seq) = (shape[0], shape[1]);
    let labels: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
    let (positions, doc_ids) = if exp.has("position_ids") {
        (exp.ids("position_ids").1, Some(exp.ids("doc_ids").1))
    } else {
        ((0..batch).flat_map(|_| 0..seq as u32).collect(), None)
    };
    Inputs { ids, labels, positions, doc_ids, batch, seq }
}

fn run(
    be: &CpuBackend,
    m: &mut Llama<CpuBackend>,
    x: &Inputs,
    checkpointing: ActivationCheckpointing,
) -> f64 {
    let tokens = x.labels.iter().filter(|&&l| l != -100).count();
    let b = TrainBatch {
        ids: &x.ids,
        labels: &x.labels,
        positions: &x.positions,
        doc_ids: x.doc_ids.as_deref(),
        batch: x.batch,
        seq: x.seq,
    };
    m.zero_grads(be).unwrap();
    let l = m.forward_backward(be, &b, 1.0 / tokens as f32, checkpointing).unwrap();
    assert_eq!(l.tokens, tokens);
    l.sum / tokens as f64
}

/// Compares every trainable tensor's gradient with the fixture's `grad.<prefix><name>`.
fn check_grads(be: &CpuBackend, m: &mut Llama<CpuBackend>, exp: &Expected, prefix: &str) -> usize {
    let all = grads(be, m);
    for (name, got) in &all {
        let (_, want) = exp.f32(&format!("grad.{prefix}{name}"));
        let err = rel_err(got, &want);
        assert!(err < 1e-4, "{name}: gradient relative error {err:e}");
    }
    all.len()
}

fn check_full(model_dir: &str, file: &str) {
    let exp = Expected::open(&fixture(&format!("training/{file}")));
    let x = inputs(&exp);
    for checkpointing in [Off, Every(1), Every(2)] {
        let (be, mut m) = model(model_dir);
        m.enable_full_finetune(&be).unwrap();
        let loss = run(&be, &mut m, &x, checkpointing);
        let (_, want) = exp.f32("loss");
        assert!(
            (loss - want[0] as f64).abs() / (want[0] as f64) < 1e-5,
            "{file}: loss {loss} vs {}",
            want[0]
        );
        let n = check_grads(&be, &mut m, &exp, "");
        assert!(n >= 20, "{file}: only {n} tensors checked");
    }
}

fn grads(be: &CpuBackend, m: &mut Llama<CpuBackend>) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    m.visit_params_mut(&mut |name, mut p| {
        let s = p.state();
        out.push((name.to_string(), be.to_host(&s.grad).unwrap()[..s.len].to_vec()));
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn bf16_saved_activations_track_pytorch_and_recompute_exactly() {
    // Activations kept in bf16 (mixed precision): the same gradients with and without
    // activation checkpointing (the forward computes with the rounded values its backward reads
    // back), different from the f32 pass, and within bf16 rounding of PyTorch's f32 gradients.
    let exp = Expected::open(&fixture("training/full_grads_packed.safetensors"));
    let x = inputs(&exp);
    let pass = |bf16: bool, checkpointing: ActivationCheckpointing| {
        let (be, mut m) = model("llama31_tiny");
        m.enable_full_finetune(&be).unwrap();
        m.keep_activations_in_bf16(bf16);
        let loss = run(&be, &mut m, &x, checkpointing);
        // A second pass on the same buffers gives the same result.
        let again = run(&be, &mut m, &x, checkpointing);
        assert_eq!(loss.to_bits(), again.to_bits());
        (loss, grads(&be, &mut m))
    };
    let (loss, g) = pass(true, Off);
    let (loss32, g32) = pass(false, Off);
    for checkpointing in [Every(1), Every(2)] {
        let (loss_ck, g_ck) = pass(true, checkpointing);
        assert_eq!(loss.to_bits(), loss_ck.to_bits());
        assert_eq!(g, g_ck, "bf16 activations: {checkpointing:?} changes the gradients");
    }
    assert_ne!(g, g32, "bf16 activations made no difference");
    let (_, want) = exp.f32("loss");
    assert!(
        (loss - want[0] as f64).abs() / (want[0] as f64) < 1e-3,
        "loss {loss} vs {} ({loss32} in f32)",
        want[0]
    );
    for (name, got) in &g {
        let (_, want) = exp.f32(&format!("grad.{name}"));
        let err = rel_err(got, &want);
        assert!(err < 2e-2, "{name}: gradient relative error {err:e} with bf16 activations");
    }
}

#[test]
fn full_finetune_gradients_match_pytorch() {
    check_full("llama31_tiny", "full_grads.safetensors");
}

#[test]
fn full_finetune_gradients_match_pytorch_with_tied_embeddings() {
    check_full("llama32_tiny", "full_grads_tied.safetensors");
}

#[test]
fn packed_rows_with_block_causal_attention_match_pytorch() {
    check_full("llama31_tiny", "full_grads_packed.safetensors");
}

/// `llama31_tiny` with LoRA (rank 4, alpha 8) on `targets`, A and B set to the fixture's PEFT
/// initial values; returns the fixture's loss after checking ours.
fn check_lora(file: &str, targets: Vec<LoraTarget>) -> (CpuBackend, Llama<CpuBackend>, Expected) {
    let exp = Expected::open(&fixture(&format!("training/{file}")));
    let x = inputs(&exp);
    let (be, mut m) = model("llama31_tiny");
    // PEFT's initial A and B (B non-zero so every gradient is informative).
    apply_peft_lora(&be, &mut m, targets, &exp);
    let loss = run(&be, &mut m, &x, Off);
    let (_, want) = exp.f32("loss");
    assert!((loss - want[0] as f64).abs() / (want[0] as f64) < 1e-5, "{file}: loss {loss} vs {}", want[0]);
    (be, m, exp)
}

#[test]
fn lora_gradients_match_peft() {
    let (be, mut m, exp) = check_lora("lora_grads.safetensors", LoraTarget::PROJECTIONS.to_vec());
    assert_eq!(check_grads(&be, &mut m, &exp, "base_model.model."), 28);
}

#[test]
fn lora_on_the_output_projection_matches_peft() {
    let targets = LoraTarget::PROJECTIONS.iter().copied().chain([LoraTarget::Output]).collect();
    let (be, mut m, exp) = check_lora("lora_grads_with_output.safetensors", targets);
    assert_eq!(check_grads(&be, &mut m, &exp, "base_model.model."), 30);
}

#[test]
fn lora_on_a_tied_output_projection_is_a_clear_error() {
    let (be, mut m) = model("llama32_tiny");
    let spec = LoraSpec { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec![LoraTarget::Output] };
    let err = m.apply_lora(&be, &spec, &mut Rng::new(0)).err().unwrap().to_string();
    assert!(err.contains("tied") && err.contains("output"), "{err}");
}
