//! The training pass of a [`Llama`]: forward with saved activations (or per-layer recompute
//! when activation checkpointing is on), fused chunked cross-entropy, and the explicit backward
//! through every block. Only trainable tensors (those with a [`ParamState`]) get gradients.

use afinar_engine::Backend;

use super::Llama;
use crate::blocks::{KvTarget, LayerActs, LayerGrads, Linear, Tokens};
use crate::{Error, Result};

/// One micro-batch: `batch` rows of `seq` tokens, row-major.
pub struct TrainBatch<'a> {
    /// Input token ids `[batch · seq]`.
    pub ids: &'a [u32],
    /// Next-token targets `[batch · seq]` (-100 = no loss).
    pub labels: &'a [i32],
    /// RoPE positions `[batch · seq]` (restarting per document in packed rows).
    pub positions: &'a [u32],
    /// Document numbers for packed rows (block-causal attention).
    pub doc_ids: Option<&'a [u32]>,
    /// Rows.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
}

/// Loss of one micro-batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossSum {
    /// Sum of token losses over non-ignored labels.
    pub sum: f64,
    /// Number of non-ignored labels.
    pub tokens: usize,
}

impl<B: Backend> Llama<B> {
    /// Forward and backward of one micro-batch. Gradients of trainable tensors accumulate,
    /// scaled by `grad_scale` (1 / label tokens of the whole optimizer step, so that
    /// accumulated micro-batches give the gradient of the step's mean token loss). With
    /// `checkpointing`, only each layer's input is kept and the layer is recomputed in the
    /// backward.
    pub fn forward_backward(
        &mut self,
        be: &B,
        b: &TrainBatch<'_>,
        grad_scale: f32,
        checkpointing: bool,
    ) -> Result<LossSum> {
        let c = self.config.clone();
        let rows = b.batch * b.seq;
        if rows == 0
            || b.ids.len() != rows
            || b.labels.len() != rows
            || b.positions.len() != rows
            || b.doc_ids.is_some_and(|d| d.len() != rows)
        {
            return Err(Error::Input(format!(
                "training batch of {} rows × {} tokens has {} ids, {} labels, {} positions",
                b.batch,
                b.seq,
                b.ids.len(),
                b.labels.len(),
                b.positions.len()
            )));
        }
        if b.seq > c.max_seq_len {
            return Err(Error::Input(format!(
                "training sequence of {} tokens is longer than the model's context of {} tokens",
                b.seq, c.max_seq_len
            )));
        }
        if let Some(&bad) = b.ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the model's vocabulary of {} tokens",
                c.vocab_size
            )));
        }
        if let Some(&bad) = b.labels.iter().find(|&&l| l != -100 && (l < 0 || l as usize >= c.vocab_size)) {
            return Err(Error::Input(format!("label {bad} is neither -100 nor a token id")));
        }
        let t = Tokens { batch: b.batch, seq: b.seq, positions: b.positions, doc_ids: b.doc_ids };
        let n_layers = self.layers.len();

        // ---- forward ------------------------------------------------------------------------
        let mut x = be.zeros(rows * c.dim)?;
        be.embedding(b.ids, &self.embed, &mut x)?;
        let mut inputs = Vec::with_capacity(n_layers);
        let mut acts: Vec<LayerActs<B>> = Vec::with_capacity(if checkpointing { 1 } else { n_layers });
        for l in 0..n_layers {
            let mut x_in = be.zeros(rows * c.dim)?;
            be.copy(&x, 0, &mut x_in, 0, rows * c.dim)?;
            inputs.push(x_in);
            if acts.len() <= l && (!checkpointing || acts.is_empty()) {
                acts.push(LayerActs::new(be, &self.layers[l], rows)?);
            }
            let a = if checkpointing { &mut acts[0] } else { &mut acts[l] };
            self.layers[l].forward(be, &mut x, a, &t, &self.inv_freq, KvTarget::None, true)?;
        }
        let mut xn = be.zeros(rows * c.dim)?;
        let mut rstd = be.zeros(rows)?;
        self.norm.forward(be, &x, &mut xn, &mut rstd, rows)?;

        // ---- loss and its gradient ----------------------------------------------------------
        let mut dxn = be.zeros(rows * c.dim)?;
        let (sum, tokens) = match &mut self.output {
            // An adapted output projection: logits chunk by chunk through the Linear block.
            Some(out) if out.lora.is_some() => {
                output_lora_loss(be, out, &xn, b.labels, rows, grad_scale, &mut dxn)?
            }
            Some(out) => {
                let dw = out.state.as_mut().map(|s| &mut s.grad);
                be.linear_cross_entropy(&xn, &out.weight, b.labels, rows, grad_scale, Some(&mut dxn), dw)?
            }
            None => {
                let dw = self.embed_state.as_mut().map(|s| &mut s.grad);
                be.linear_cross_entropy(&xn, &self.embed, b.labels, rows, grad_scale, Some(&mut dxn), dw)?
            }
        };

        // ---- backward -----------------------------------------------------------------------
        let mut dx = be.zeros(rows * c.dim)?;
        self.norm.backward_accumulate(be, &dxn, &x, &rstd, &mut dx, rows)?;
        drop((dxn, xn, rstd));
        let mut grads = LayerGrads::new(be, &self.layers[0], rows)?;
        let embed_trained = self.embed_state.is_some();
        for l in (0..n_layers).rev() {
            if checkpointing {
                be.copy(&inputs[l], 0, &mut x, 0, rows * c.dim)?;
                self.layers[l].forward(be, &mut x, &mut acts[0], &t, &self.inv_freq, KvTarget::None, true)?;
            }
            let a = if checkpointing { &acts[0] } else { &acts[l] };
            let need_input_grad = l > 0 || embed_trained;
            self.layers[l].backward(
                be,
                &inputs[l],
                a,
                &mut dx,
                &mut grads,
                &t,
                &self.inv_freq,
                need_input_grad,
            )?;
        }
        if let Some(s) = &mut self.embed_state {
            be.embedding_backward(b.ids, &dx, &mut s.grad, c.dim)?;
        }
        Ok(LossSum { sum, tokens })
    }
}

/// Rows of logits materialised at once when the output projection carries a LoRA adapter.
const OUTPUT_CHUNK_ROWS: usize = 128;

/// Loss and input gradient through an output projection with a LoRA adapter: the fused kernel
/// cannot add the adapter, so logits are built `OUTPUT_CHUNK_ROWS` rows at a time with
/// [`Linear::forward`], then cross-entropy and [`Linear::backward`] run on each chunk.
fn output_lora_loss<B: Backend>(
    be: &B,
    out: &mut Linear<B>,
    xn: &B::Buf,
    labels: &[i32],
    rows: usize,
    grad_scale: f32,
    dxn: &mut B::Buf,
) -> Result<(f64, usize)> {
    let (dim, vocab) = (out.in_features, out.out_features);
    let chunk = OUTPUT_CHUNK_ROWS.min(rows);
    let mut h = be.zeros(chunk * dim)?;
    let mut dh = be.zeros(chunk * dim)?;
    let mut logits = be.zeros(chunk * vocab)?;
    let mut dlogits = be.zeros(chunk * vocab)?;
    let mut losses = be.zeros(chunk)?;
    let (mut sum, mut tokens) = (0.0f64, 0usize);
    let mut r0 = 0;
    while r0 < rows {
        let n = chunk.min(rows - r0);
        let targets = &labels[r0..r0 + n];
        be.copy(xn, r0 * dim, &mut h, 0, n * dim)?;
        out.forward(be, &h, &mut logits, n, false)?;
        be.cross_entropy(&logits, targets, &mut losses, Some(&mut dlogits), n, vocab, grad_scale)?;
        let host = be.to_host(&losses)?;
        for (l, &t) in host[..n].iter().zip(targets) {
            if t != -100 {
                sum += *l as f64;
                tokens += 1;
            }
        }
        out.backward(be, &h, &dlogits, Some(&mut dh), n, false)?;
        be.copy(&dh, 0, dxn, r0 * dim, n * dim)?;
        r0 += n;
    }
    Ok((sum, tokens))
}
