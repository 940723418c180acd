//! The output head for objectives that need more than the fused SFT cross-entropy: per-token
//! log-probabilities of given labels from the final hidden states (chunked, never the full
//! `[tokens × vocab]` logits) and their backward; a forward-only pass to the hidden states (a
//! frozen reference); and running the model with its LoRA adapters switched off (the reference
//! of a LoRA fine-tune without a second copy of the base).

use afinar_engine::Backend;

use super::train::TrainBatch;
use super::Llama;
use crate::blocks::{Linear, Lora, Tokens};
use crate::{Error, Result};

/// Rows of logits materialised at once through an output projection with a LoRA adapter.
const LORA_HEAD_CHUNK_ROWS: usize = 128;

impl<B: Backend> Llama<B> {
    /// Forward only, no activations kept and no gradients: the final-normed hidden states
    /// `[rows × dim]` of a batch (the same rows [`Llama::forward_hidden`] gives), e.g. for a
    /// frozen reference. `b.labels` are checked but not read.
    pub fn hidden_states(&self, be: &B, b: &TrainBatch<'_>, hidden: &mut B::Buf) -> Result<()> {
        self.check_batch(b)?;
        let rows = b.batch * b.seq;
        self.check_hidden_len(be, hidden, rows, "hidden")?;
        let t = Tokens { batch: b.batch, seq: b.seq, positions: b.positions, doc_ids: b.doc_ids };
        be.scoped(|| -> Result<()> {
            let x = self.decoder_forward(be, b.ids, &t, None)?;
            let mut rstd = be.zeros(rows)?;
            Ok(self.norm.forward(be, &x, hidden, &mut rstd, rows)?)
        })
    }

    /// Per-token log-probabilities `log softmax(hidden_t · Wᵀ)[labels_t]` of `rows` hidden states
    /// through the output head (its LoRA adapter included), one per row on the host; 0 where
    /// the label is -100. Labels are next-token targets, as [`TrainBatch::labels`].
    pub fn label_log_probs(&self, be: &B, hidden: &B::Buf, labels: &[i32], rows: usize) -> Result<Vec<f32>> {
        self.check_head_inputs(be, hidden, labels, rows)?;
        be.scoped(|| match &self.output {
            Some(out) if out.lora.is_some() => lora_head_log_probs(be, out, hidden, labels, rows),
            Some(out) => Ok(be.linear_log_probs(hidden, &out.weight, labels, rows)?),
            None => Ok(be.linear_log_probs(hidden, &self.embed, labels, rows)?),
        })
    }

    /// Backward of [`Llama::label_log_probs`] for `upstream[t] = ∂L/∂logp_t`: writes `∂L/∂hidden`
    /// into `dhidden` (`[rows × dim]`) and accumulates the gradient of a trainable head (the
    /// output weight, its LoRA adapter, or the tied embedding).
    pub fn label_log_probs_backward(
        &mut self,
        be: &B,
        hidden: &B::Buf,
        labels: &[i32],
        rows: usize,
        upstream: &[f32],
        dhidden: &mut B::Buf,
    ) -> Result<()> {
        self.check_head_inputs(be, hidden, labels, rows)?;
        self.check_hidden_len(be, dhidden, rows, "dhidden")?;
        if upstream.len() != rows {
            return Err(Error::Input(format!(
                "log-probability backward: {} upstream gradients for {rows} tokens",
                upstream.len()
            )));
        }
        if let Some(bad) = upstream.iter().position(|g| !g.is_finite()) {
            return Err(Error::Input(format!(
                "log-probability backward: upstream gradient {bad} is not finite"
            )));
        }
        let Self { output, embed, embed_state, .. } = self;
        be.scoped(|| match output {
            Some(out) if out.lora.is_some() => {
                lora_head_backward(be, out, hidden, labels, rows, upstream, dhidden)
            }
            Some(out) => {
                let dw = out.state.as_mut().map(|s| &mut s.grad);
                Ok(be.linear_log_probs_backward(
                    hidden,
                    &out.weight,
                    labels,
                    rows,
                    upstream,
                    Some(dhidden),
                    dw,
                )?)
            }
            None => {
                let dw = embed_state.as_mut().map(|s| &mut s.grad);
                Ok(be.linear_log_probs_backward(hidden, embed, labels, rows, upstream, Some(dhidden), dw)?)
            }
        })
    }

    /// Runs `f` on this model with every LoRA adapter switched off (the base model: the frozen
    /// reference of a LoRA fine-tune), then switches them back on, whatever `f` returns. The
    /// adapters' weights, gradients and moments are untouched.
    pub fn without_adapters<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let mut parked: Vec<Option<Lora<B>>> = Vec::new();
        self.for_each_linear(&mut |l| parked.push(l.lora.take()));
        let result = f(self);
        let mut it = parked.into_iter();
        self.for_each_linear(&mut |l| l.lora = it.next().flatten());
        result
    }

    /// Calls `f` on every linear layer in a fixed order (the decoder's projections, then the
    /// output projection).
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear<B>)) {
        for layer in &mut self.layers {
            for l in layer.projections_mut() {
                f(l);
            }
        }
        if let Some(o) = &mut self.output {
            f(o);
        }
    }

    fn check_head_inputs(&self, be: &B, hidden: &B::Buf, labels: &[i32], rows: usize) -> Result<()> {
        self.check_hidden_len(be, hidden, rows, "hidden")?;
        if labels.len() != rows {
            return Err(Error::Input(format!(
                "log-probabilities: {} labels for {rows} tokens",
                labels.len()
            )));
        }
        let vocab = self.config.vocab_size;
        if let Some(&bad) = labels.iter().find(|&&l| l != -100 && (l < 0 || l as usize >= vocab)) {
            return Err(Error::Input(format!("label {bad} is neither -100 nor a token id of {vocab}")));
        }
        Ok(())
    }
}

/// [`Llama::label_log_probs`] through an output projection with a LoRA adapter: logits
/// [`LORA_HEAD_CHUNK_ROWS`] rows at a time through [`Linear::forward`].
fn lora_head_log_probs<B: Backend>(
    be: &B,
    out: &Linear<B>,
    hidden: &B::Buf,
    labels: &[i32],
    rows: usize,
) -> Result<Vec<f32>> {
    let (dim, vocab) = (out.in_features, out.out_features);
    let chunk = LORA_HEAD_CHUNK_ROWS.min(rows);
    let mut h = be.zeros(chunk * dim)?;
    let mut logits = be.zeros(chunk * vocab)?;
    let mut losses = be.zeros(chunk)?;
    let mut logps = Vec::with_capacity(rows);
    let mut r0 = 0;
    while r0 < rows {
        let n = chunk.min(rows - r0);
        be.copy(hidden, r0 * dim, &mut h, 0, n * dim)?;
        out.forward(be, &h, &mut logits, n, false)?;
        be.cross_entropy(&logits, &labels[r0..r0 + n], &mut losses, None, n, vocab, 1.0)?;
        logps.extend(be.to_host(&losses)?[..n].iter().map(|l| -l));
        r0 += n;
    }
    Ok(logps)
}

/// [`Llama::label_log_probs_backward`] through an output projection with a LoRA adapter: the
/// per-token upstream gradients differ, so each row's logits go through cross-entropy with its
/// own scale (`−∂L/∂logp_t`, one row at a time) and then [`Linear::backward`].
fn lora_head_backward<B: Backend>(
    be: &B,
    out: &mut Linear<B>,
    hidden: &B::Buf,
    labels: &[i32],
    rows: usize,
    upstream: &[f32],
    dhidden: &mut B::Buf,
) -> Result<()> {
    let (dim, vocab) = (out.in_features, out.out_features);
    let mut h = be.zeros(dim)?;
    let mut dh = be.zeros(dim)?;
    let mut logits = be.zeros(vocab)?;
    let mut dlogits = be.zeros(vocab)?;
    let mut loss = be.zeros(1)?;
    for r in 0..rows {
        be.copy(hidden, r * dim, &mut h, 0, dim)?;
        if labels[r] == -100 || upstream[r] == 0.0 {
            be.fill(&mut dh, dim, 0.0)?;
        } else {
            out.forward(be, &h, &mut logits, 1, false)?;
            be.cross_entropy(
                &logits,
                &labels[r..r + 1],
                &mut loss,
                Some(&mut dlogits),
                1,
                vocab,
                -upstream[r],
            )?;
            out.backward(be, &h, &dlogits, Some(&mut dh), 1, false)?;
        }
        be.copy(&dh, 0, dhidden, r * dim, dim)?;
    }
    Ok(())
}
