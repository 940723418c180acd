//! The training pass split at the hidden states, with the objective owning the head: forward to
//! the hidden states, per-token label log-probabilities, their backward and the backward from the
//! hidden states must give the fused SFT pass's loss and gradients when the upstream gradient is
//! the token-mean cross-entropy's (LoRA on the projections, LoRA on the output projection, full
//! fine-tuning of a tied model, with and without activation checkpointing). Also: the forward-only
//! hidden states, running with adapters off, and clear errors for misuse.

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
    batch: usize,
    seq: usize,
}

impl Inputs {
    fn from(exp: &Expected) -> Self {
        let (shape, ids) = exp.ids("input_ids");
        let labels = exp.ids("labels").1.into_iter().map(|l| l as i32).collect();
        let (batch, seq) = (shape[0], shape[1]);
        Inputs { ids, labels, positions: (0..batch).flat_map(|_| 0..seq as u32).collect(), batch, seq }
    }

    fn batch(&self) -> TrainBatch<'_> {
        TrainBatch {
            ids: &self.ids,
            labels: &self.labels,
            positions: &self.positions,
            doc_ids: None,
            batch: self.batch,
            seq: self.seq,
        }
    }
}

fn grads(be: &CpuBackend, m: &mut Llama<CpuBackend>) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    m.visit_params_mut(&mut |name, mut p| {
        out.push((name.to_string(), be.to_host(&p.state().grad)?));
        Ok(())
    })
    .unwrap();
    out
}

/// The fused SFT pass and the split pass with a token-mean cross-entropy objective agree.
fn split_equals_fused(be: &CpuBackend, m: &mut Llama<CpuBackend>, x: &Inputs, ckpt: ActivationCheckpointing) {
    let b = x.batch();
    let rows = x.batch * x.seq;
    let tokens = x.labels.iter().filter(|&&l| l != -100).count();
    m.zero_grads(be).unwrap();
    let fused = m.forward_backward(be, &b, 1.0 / tokens as f32, ckpt).unwrap();
    let want = grads(be, m);

    m.zero_grads(be).unwrap();
    let mut hidden = be.zeros(rows * m.config.dim).unwrap();
    m.forward_hidden(be, &b, ckpt, &mut hidden).unwrap();
    let logps = m.label_log_probs(be, &hidden, &x.labels, rows).unwrap();
    let loss = -logps.iter().map(|&v| v as f64).sum::<f64>() / tokens as f64;
    let want_loss = fused.sum / fused.tokens as f64;
    assert!((loss - want_loss).abs() < 1e-5 * want_loss, "loss {loss} vs fused {want_loss}");
    assert!(logps.iter().zip(&x.labels).all(|(&v, &l)| l != -100 || v == 0.0), "ignored rows give 0");
    let upstream: Vec<f32> =
        x.labels.iter().map(|&l| if l == -100 { 0.0 } else { -1.0 / tokens as f32 }).collect();
    let mut dhidden = be.zeros(rows * m.config.dim).unwrap();
    m.label_log_probs_backward(be, &hidden, &x.labels, rows, &upstream, &mut dhidden).unwrap();
    m.backward_hidden(be, &b, ckpt, &dhidden).unwrap();
    let got = grads(be, m);
    assert_eq!(got.len(), want.len());
    assert!(!got.is_empty());
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        let err = rel_err(g, w);
        assert!(err < 1e-5, "{name}: split pass gradient differs from the fused pass by {err:e}");
    }
}

#[test]
fn split_pass_matches_fused_pass_with_lora() {
    let exp = Expected::open(&fixture("training/lora_grads.safetensors"));
    let x = Inputs::from(&exp);
    let (be, mut m) = model("llama31_tiny");
    apply_peft_lora(&be, &mut m, LoraTarget::PROJECTIONS.to_vec(), &exp);
    split_equals_fused(&be, &mut m, &x, Off);
    split_equals_fused(&be, &mut m, &x, Every(1));
}

#[test]
fn split_pass_matches_fused_pass_with_lora_on_the_output() {
    let exp = Expected::open(&fixture("training/lora_grads_with_output.safetensors"));
    let x = Inputs::from(&exp);
    let (be, mut m) = model("llama31_tiny");
    let mut targets = LoraTarget::PROJECTIONS.to_vec();
    targets.push(LoraTarget::Output);
    apply_peft_lora(&be, &mut m, targets, &exp);
    split_equals_fused(&be, &mut m, &x, Off);
}

#[test]
fn split_pass_matches_fused_pass_full_finetune_tied() {
    let exp = Expected::open(&fixture("training/full_grads_tied.safetensors"));
    let x = Inputs::from(&exp);
    let (be, mut m) = model("llama32_tiny");
    assert!(m.output.is_none(), "llama32_tiny ties its embedding");
    m.enable_full_finetune(&be).unwrap();
    split_equals_fused(&be, &mut m, &x, Every(2));
}

#[test]
fn hidden_states_and_adapters_off() {
    let exp = Expected::open(&fixture("training/lora_grads.safetensors"));
    let x = Inputs::from(&exp);
    let (be, mut m) = model("llama31_tiny");
    let rows = x.batch * x.seq;
    let dim = m.config.dim;
    let b = x.batch();
    let base_logps = {
        let mut h = be.zeros(rows * dim).unwrap();
        m.hidden_states(&be, &b, &mut h).unwrap();
        m.label_log_probs(&be, &h, &x.labels, rows).unwrap()
    };
    apply_peft_lora(&be, &mut m, LoraTarget::PROJECTIONS.to_vec(), &exp);
    // Forward-only hidden states equal the training forward's.
    let (mut h1, mut h2) = (be.zeros(rows * dim).unwrap(), be.zeros(rows * dim).unwrap());
    m.hidden_states(&be, &b, &mut h1).unwrap();
    m.forward_hidden(&be, &b, Off, &mut h2).unwrap();
    assert!(rel_err(&be.to_host(&h1).unwrap(), &be.to_host(&h2).unwrap()) < 1e-6);
    let adapted = m.label_log_probs(&be, &h1, &x.labels, rows).unwrap();
    assert!(rel_err(&adapted, &base_logps) > 1e-3, "the adapters change the model");
    // Adapters off: the base model again, bit for bit; then back on.
    let off = m.without_adapters(|m| {
        let mut h = be.zeros(rows * dim).unwrap();
        m.hidden_states(&be, &b, &mut h).unwrap();
        m.label_log_probs(&be, &h, &x.labels, rows).unwrap()
    });
    assert_eq!(off, base_logps);
    let mut h3 = be.zeros(rows * dim).unwrap();
    m.hidden_states(&be, &b, &mut h3).unwrap();
    assert_eq!(m.label_log_probs(&be, &h3, &x.labels, rows).unwrap(), adapted);
    assert_eq!(m.linears().iter().filter(|(_, l)| l.lora.is_some()).count(), 14);
}

#[test]
fn misuse_is_a_clear_error() {
    let exp = Expected::open(&fixture("training/lora_grads.safetensors"));
    let x = Inputs::from(&exp);
    let (be, mut m) = model("llama31_tiny");
    let spec = LoraSpec { rank: 4, alpha: 8.0, dropout: 0.0, targets: LoraTarget::PROJECTIONS.to_vec() };
    m.apply_lora(&be, &spec, &mut Rng::new(1)).unwrap();
    let (rows, dim) = (x.batch * x.seq, m.config.dim);
    let b = x.batch();
    let mut h = be.zeros(rows * dim).unwrap();
    let dh = be.zeros(rows * dim).unwrap();
    let msg = |e: afinar::Error| e.to_string();
    // A backward with no forward before it.
    let e = msg(m.backward_hidden(&be, &b, Off, &dh).unwrap_err());
    assert!(e.contains("forward_hidden"), "{e}");
    // A backward with other checkpointing than its forward; then one backward per forward.
    m.forward_hidden(&be, &b, Off, &mut h).unwrap();
    assert!(m.backward_hidden(&be, &b, Every(1), &dh).is_err());
    m.backward_hidden(&be, &b, Off, &dh).unwrap();
    assert!(m.backward_hidden(&be, &b, Off, &dh).is_err());
    // Buffers too small, labels out of range, upstream of the wrong length or not finite.
    let mut small = be.zeros(rows * dim - 1).unwrap();
    assert!(msg(m.forward_hidden(&be, &b, Off, &mut small).unwrap_err()).contains("hidden"));
    let mut bad = x.labels.clone();
    bad[0] = m.config.vocab_size as i32;
    assert!(msg(m.label_log_probs(&be, &h, &bad, rows).unwrap_err()).contains("label"));
    let mut dh = be.zeros(rows * dim).unwrap();
    let e = msg(m.label_log_probs_backward(&be, &h, &x.labels, rows, &[0.0; 3], &mut dh).unwrap_err());
    assert!(e.contains("upstream"), "{e}");
    let mut up = vec![0.0f32; rows];
    up[1] = f32::INFINITY;
    assert!(m.label_log_probs_backward(&be, &h, &x.labels, rows, &up, &mut dh).is_err());
}
