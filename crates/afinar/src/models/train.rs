//! The training pass of a [`Llama`]: forward with saved activations (or per-layer recompute
//! when activation checkpointing is on), fused chunked cross-entropy, and the explicit backward
//! through every block. Only trainable tensors (those with a [`ParamState`]) get gradients.

use afinar_engine::Backend;

use super::trainable::visit_layer_params_mut;
use super::{Llama, ParamMut};
use crate::blocks::{Dx, HalfLayerActs, KvTarget, LayerActs, LayerGrads, LayerScratch, Linear, Tokens};
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

/// The optimizer's update of one trainable tensor (its name and gradient state), run by
/// [`Llama::forward_backward_stepping`] as soon as the tensor's gradient is complete.
pub type Update<'a, B> = dyn FnMut(&str, &mut ParamMut<'_, B>) -> Result<()> + Send + 'a;

/// Which decoder layers a training pass recomputes in its backward instead of keeping their
/// activations from the forward (activation checkpointing): each recomputed layer keeps only
/// its input, at the cost of running its forward twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActivationCheckpointing {
    /// Every layer keeps its activations.
    #[default]
    Off,
    /// Layers `0, k, 2k, …` are recomputed (`Every(1)`: all of them).
    Every(usize),
}

impl From<bool> for ActivationCheckpointing {
    /// `true`: every layer is recomputed.
    fn from(on: bool) -> Self {
        if on {
            Self::Every(1)
        } else {
            Self::Off
        }
    }
}

impl ActivationCheckpointing {
    /// Whether layer `l` is recomputed.
    pub fn recomputes(self, l: usize) -> bool {
        match self {
            Self::Off => false,
            Self::Every(k) => l.is_multiple_of(k.max(1)),
        }
    }
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
    /// accumulated micro-batches give the gradient of the step's mean token loss). The layers
    /// `checkpointing` selects keep only their input and are recomputed in the backward (`true`:
    /// all of them).
    pub fn forward_backward(
        &mut self,
        be: &B,
        b: &TrainBatch<'_>,
        grad_scale: f32,
        checkpointing: impl Into<ActivationCheckpointing>,
    ) -> Result<LossSum> {
        self.pass(be, b, grad_scale, checkpointing.into(), None)
    }

    /// [`Llama::forward_backward`] with the optimizer step inside the backward, as torchtune's
    /// `optimizer_in_bwd`: `update` runs on each decoder layer's trainable tensors right after
    /// that layer's backward, and on the embedding, final norm and output projection at the end;
    /// every gradient is zeroed after its update. The result equals a pass followed by an
    /// optimizer step over all tensors (no layer's backward reads another layer's weights), but
    /// with [`Llama::share_layer_gradients`] only one layer's gradients exist at a time. Leaves
    /// no room for gradient accumulation or clipping by the global norm.
    pub fn forward_backward_stepping(
        &mut self,
        be: &B,
        b: &TrainBatch<'_>,
        grad_scale: f32,
        checkpointing: impl Into<ActivationCheckpointing>,
        update: &mut Update<'_, B>,
    ) -> Result<LossSum> {
        self.pass(be, b, grad_scale, checkpointing.into(), Some(update))
    }

    fn pass(
        &mut self,
        be: &B,
        b: &TrainBatch<'_>,
        grad_scale: f32,
        checkpointing: ActivationCheckpointing,
        update: Option<&mut Update<'_, B>>,
    ) -> Result<LossSum> {
        self.check_batch(b)?;
        let t = Tokens { batch: b.batch, seq: b.seq, positions: b.positions, doc_ids: b.doc_ids };
        let mut buf = self.take_train_buffers(be, b.batch * b.seq, checkpointing)?;
        buf.forwarded = None;
        let result = be.scoped(|| self.train_pass(be, b, &t, grad_scale, checkpointing, &mut buf, update));
        self.train_buffers = Some(buf);
        let (sum, tokens) = result?;
        Ok(LossSum { sum, tokens })
    }

    /// Checks a training batch's shapes, length and token ids against the model.
    pub(crate) fn check_batch(&self, b: &TrainBatch<'_>) -> Result<()> {
        let c = &self.config;
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
        Ok(())
    }

    /// The kept training buffers when they serve `rows` tokens in this mode, else new ones.
    fn take_train_buffers(
        &mut self,
        be: &B,
        rows: usize,
        checkpointing: ActivationCheckpointing,
    ) -> Result<TrainBuffers<B>> {
        let mode = BufferMode { checkpointing, bf16: self.bf16_activations };
        match self.train_buffers.take() {
            Some(buf) if buf.fits(rows, mode) => Ok(buf),
            old => {
                drop(old);
                TrainBuffers::new(be, self, rows, mode)
            }
        }
    }

    /// The first half of a training pass, for objectives that own the output head: runs the
    /// batch through the decoder and the final norm, writes the normed hidden states
    /// `[rows × dim]` into `hidden`, and keeps what [`Llama::backward_hidden`] needs (the
    /// activations `checkpointing` does not drop). `b.labels` are not read.
    pub fn forward_hidden(
        &mut self,
        be: &B,
        b: &TrainBatch<'_>,
        checkpointing: impl Into<ActivationCheckpointing>,
        hidden: &mut B::Buf,
    ) -> Result<()> {
        let checkpointing = checkpointing.into();
        self.check_batch(b)?;
        let rows = b.batch * b.seq;
        self.check_hidden_len(be, hidden, rows, "hidden")?;
        let t = Tokens { batch: b.batch, seq: b.seq, positions: b.positions, doc_ids: b.doc_ids };
        let mut buf = self.take_train_buffers(be, rows, checkpointing)?;
        let result = be.scoped(|| -> Result<()> {
            self.forward_part(be, b.ids, &t, checkpointing, &mut buf)?;
            Ok(be.copy(&buf.xn, 0, hidden, 0, rows * self.config.dim)?)
        });
        buf.forwarded = result.is_ok().then_some((rows, checkpointing));
        self.train_buffers = Some(buf);
        result
    }

    /// The second half of a training pass: backward from `dhidden = ∂L/∂hidden` (`[rows × dim]`,
    /// for the hidden states of the last [`Llama::forward_hidden`] on this same batch and
    /// checkpointing) through the final norm and every layer, accumulating the gradients of the
    /// trainable tensors (the output head's own gradient is the objective's, see
    /// [`Llama::label_log_probs_backward`]).
    pub fn backward_hidden(
        &mut self,
        be: &B,
        b: &TrainBatch<'_>,
        checkpointing: impl Into<ActivationCheckpointing>,
        dhidden: &B::Buf,
    ) -> Result<()> {
        let checkpointing = checkpointing.into();
        self.check_batch(b)?;
        let rows = b.batch * b.seq;
        self.check_hidden_len(be, dhidden, rows, "dhidden")?;
        let mut buf = match self.train_buffers.take() {
            Some(buf) if buf.forwarded == Some((rows, checkpointing)) => buf,
            other => {
                self.train_buffers = other;
                return Err(Error::Input(format!(
                    "backward_hidden of {rows} tokens needs a forward_hidden of the same batch and \
                     activation checkpointing just before it"
                )));
            }
        };
        buf.forwarded = None;
        let t = Tokens { batch: b.batch, seq: b.seq, positions: b.positions, doc_ids: b.doc_ids };
        let result = be.scoped(|| -> Result<()> {
            be.copy(dhidden, 0, &mut buf.dxn, 0, rows * self.config.dim)?;
            self.backward_part(be, b.ids, &t, checkpointing, &mut buf, None)
        });
        self.train_buffers = Some(buf);
        result
    }

    /// Errors unless `buf` holds at least `rows × dim` values.
    pub(crate) fn check_hidden_len(&self, be: &B, buf: &B::Buf, rows: usize, what: &str) -> Result<()> {
        let need = rows * self.config.dim;
        if be.len(buf) < need {
            return Err(Error::Input(format!(
                "{what} holds {} values, {rows} tokens × {} need {need}",
                be.len(buf),
                self.config.dim
            )));
        }
        Ok(())
    }

    /// Mixed precision: with `on`, the training pass rounds the activations its backward reads
    /// (queries, keys, values, attention output, gate and up projections) to bf16 as they are
    /// made and keeps them in 16 bits, as `torch.autocast(bfloat16)` keeps product outputs:
    /// about half the memory of saved activations. The residual stream, norms and gradients
    /// stay f32.
    pub fn keep_activations_in_bf16(&mut self, on: bool) {
        self.bf16_activations = on;
    }

    /// Frees the buffers the training pass keeps between micro-batches (about the size of all
    /// layers' saved activations), e.g. before writing a checkpoint; the next
    /// [`Llama::forward_backward`] allocates them again.
    pub fn release_train_buffers(&mut self) {
        self.train_buffers = None;
    }

    /// The body of [`Llama::forward_backward`] over its buffers: forward, the fused head and
    /// cross-entropy, backward.
    #[allow(clippy::too_many_arguments)]
    fn train_pass(
        &mut self,
        be: &B,
        b: &TrainBatch<'_>,
        t: &Tokens<'_>,
        grad_scale: f32,
        checkpointing: ActivationCheckpointing,
        buf: &mut TrainBuffers<B>,
        update: Option<&mut Update<'_, B>>,
    ) -> Result<(f64, usize)> {
        let rows = t.rows();
        self.forward_part(be, b.ids, t, checkpointing, buf)?;
        let TrainBuffers { xn, dxn, .. } = buf;
        let (sum, tokens) = match &mut self.output {
            // An adapted output projection: logits chunk by chunk through the Linear block.
            Some(out) if out.lora.is_some() => {
                output_lora_loss(be, out, xn, b.labels, rows, grad_scale, dxn)?
            }
            Some(out) => {
                let dw = out.state.as_mut().map(|s| &mut s.grad);
                be.linear_cross_entropy(xn, &out.weight, b.labels, rows, grad_scale, Some(dxn), dw)?
            }
            None => {
                let dw = self.embed_state.as_mut().map(|s| &mut s.grad);
                be.linear_cross_entropy(xn, &self.embed, b.labels, rows, grad_scale, Some(dxn), dw)?
            }
        };
        self.backward_part(be, b.ids, t, checkpointing, buf, update)?;
        Ok((sum, tokens))
    }

    /// Forward of a training pass into `buf`: the embedding, every layer (saving what the
    /// backward reads) and the final norm (`buf.xn`).
    fn forward_part(
        &self,
        be: &B,
        ids: &[u32],
        t: &Tokens<'_>,
        checkpointing: ActivationCheckpointing,
        buf: &mut TrainBuffers<B>,
    ) -> Result<()> {
        let dim = self.config.dim;
        let rows = t.rows();
        let n_layers = self.layers.len();
        let TrainBuffers { x, inputs, acts, halves, scratch, xn, rstd, .. } = buf;
        // Per-layer activations: f32 in `acts[slot]`, or (bf16) in `halves[slot]` with `acts[0]`
        // as working space; the layers recomputed in the backward share one slot.
        let slot = |l: usize| slot_of(checkpointing, n_layers, l);
        let compact = !halves.is_empty();
        be.embedding(ids, &self.embed, x)?;
        for l in 0..n_layers {
            be.copy(x, 0, &mut inputs[l], 0, rows * dim)?;
            let a = &mut acts[if compact { 0 } else { slot(l) }];
            let keep = halves.get_mut(slot(l));
            self.layers[l].forward(be, x, a, scratch, t, &self.inv_freq, KvTarget::None, keep)?;
        }
        self.norm.forward(be, x, xn, rstd, rows)?;
        Ok(())
    }

    /// Backward of a training pass from `buf.dxn` (the gradient of the final norm's output)
    /// through the norm, every layer and the embedding; with `update`, the optimizer step runs
    /// on each tensor as soon as its gradient is complete.
    fn backward_part(
        &mut self,
        be: &B,
        ids: &[u32],
        t: &Tokens<'_>,
        checkpointing: ActivationCheckpointing,
        buf: &mut TrainBuffers<B>,
        mut update: Option<&mut Update<'_, B>>,
    ) -> Result<()> {
        let dim = self.config.dim;
        let rows = t.rows();
        let n_layers = self.layers.len();
        let TrainBuffers { x, inputs, acts, halves, scratch, rstd, dxn, dx, grads, .. } = buf;
        let slot = |l: usize| slot_of(checkpointing, n_layers, l);
        let compact = !halves.is_empty();
        be.fill(dx, rows * dim, 0.0)?;
        self.norm.backward(be, dxn, x, rstd, Dx::Add(&mut *dx), rows)?;
        let embed_trained = self.embed_state.is_some();
        for l in (0..n_layers).rev() {
            let a = &mut acts[if compact { 0 } else { slot(l) }];
            if checkpointing.recomputes(l) {
                be.copy(&inputs[l], 0, x, 0, rows * dim)?;
                let keep = halves.get_mut(slot(l));
                self.layers[l].forward(be, x, a, scratch, t, &self.inv_freq, KvTarget::None, keep)?;
            } else if compact {
                halves[slot(l)].load(be, &self.layers[l], a, rows)?;
            }
            let a = &*a;
            let need_input_grad = l > 0 || embed_trained;
            let lend = update.is_some() && self.lent_grads.is_some();
            if lend {
                self.swap_lent_grads(l)?;
            }
            self.layers[l].backward(
                be,
                &inputs[l],
                a,
                scratch,
                dx,
                grads,
                t,
                &self.inv_freq,
                need_input_grad,
            )?;
            if let Some(update) = update.as_deref_mut() {
                visit_layer_params_mut(&mut self.layers[l], l, &mut |name, p| {
                    step_and_zero(be, update, name, p)
                })?;
            }
            if lend {
                self.swap_lent_grads(l)?;
            }
        }
        if let Some(s) = &mut self.embed_state {
            be.embedding_backward(ids, dx, &mut s.grad, dim)?;
        }
        if let Some(update) = update {
            self.visit_outer_params_mut(&mut |name, p| step_and_zero(be, update, name, p))?;
        }
        Ok(())
    }

    /// Exchanges layer `l`'s (empty) gradient buffers with the shared ones, in and out.
    fn swap_lent_grads(&mut self, l: usize) -> Result<()> {
        let Some(pool) = self.lent_grads.as_mut() else { return Ok(()) };
        let mut k = 0;
        visit_layer_params_mut(&mut self.layers[l], l, &mut |_, mut p| {
            std::mem::swap(&mut p.state().grad, &mut pool[k]);
            k += 1;
            Ok(())
        })
    }
}

/// Layers of `n_layers` whose activations a pass keeps.
fn saved_layers(c: ActivationCheckpointing, n_layers: usize) -> usize {
    (0..n_layers).filter(|&l| !c.recomputes(l)).count()
}

/// The activation slot of layer `l` of `n_layers`: saved layers count up from 0 in order, and
/// all recomputed layers share the slot after the last saved one.
fn slot_of(c: ActivationCheckpointing, n_layers: usize, l: usize) -> usize {
    if c.recomputes(l) {
        saved_layers(c, n_layers)
    } else {
        saved_layers(c, l)
    }
}

/// Runs `update` on a tensor whose gradient is complete, then zeroes the gradient.
fn step_and_zero<B: Backend>(
    be: &B,
    update: &mut Update<'_, B>,
    name: &str,
    mut p: ParamMut<'_, B>,
) -> Result<()> {
    update(name, &mut p)?;
    Ok(p.state().zero_grad(be)?)
}

/// The buffers of one training pass, kept by the model between micro-batches so that a step
/// allocates (and page-faults in) nothing: the residual stream, every layer's input and saved
/// activations (one set with activation checkpointing), the shared per-layer scratch, the final
/// norm's output and the gradient buffers reused by every layer.
pub(crate) struct TrainBuffers<B: Backend> {
    /// Rows (tokens) the buffers hold.
    rows: usize,
    mode: BufferMode,
    x: B::Buf,
    inputs: Vec<B::Buf>,
    acts: Vec<LayerActs<B>>,
    halves: Vec<HalfLayerActs<B>>,
    scratch: LayerScratch<B>,
    xn: B::Buf,
    rstd: B::Buf,
    dxn: B::Buf,
    dx: B::Buf,
    grads: LayerGrads<B>,
    /// Rows and checkpointing of a [`Llama::forward_hidden`] whose activations these buffers
    /// hold for [`Llama::backward_hidden`].
    forwarded: Option<(usize, ActivationCheckpointing)>,
}

/// How a training pass keeps its activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BufferMode {
    /// Which layers are recomputed (they share one set of activation buffers).
    checkpointing: ActivationCheckpointing,
    /// Activations kept in bf16.
    bf16: bool,
}

impl<B: Backend> TrainBuffers<B> {
    fn new(be: &B, m: &Llama<B>, rows: usize, mode: BufferMode) -> Result<Self> {
        let (dim, first, n_layers) = (m.config.dim, &m.layers[0], m.layers.len());
        let saved = saved_layers(mode.checkpointing, n_layers);
        let slots = saved + usize::from(saved < n_layers);
        let (n_acts, n_halves) = if mode.bf16 { (1, slots) } else { (slots, 0) };
        Ok(Self {
            rows,
            mode,
            x: be.zeros(rows * dim)?,
            inputs: (0..m.layers.len())
                .map(|_| be.zeros(rows * dim))
                .collect::<std::result::Result<_, _>>()?,
            acts: (0..n_acts)
                .map(|_| LayerActs::new(be, first, rows))
                .collect::<std::result::Result<_, _>>()?,
            halves: (0..n_halves)
                .map(|_| HalfLayerActs::new(be, first, rows))
                .collect::<std::result::Result<_, _>>()?,
            scratch: LayerScratch::new(be, first, rows)?,
            xn: be.zeros(rows * dim)?,
            rstd: be.zeros(rows)?,
            dxn: be.zeros(rows * dim)?,
            dx: be.zeros(rows * dim)?,
            grads: LayerGrads::new(be, first, rows)?,
            forwarded: None,
        })
    }

    /// Whether these buffers serve a pass of `rows` tokens in this mode.
    fn fits(&self, rows: usize, mode: BufferMode) -> bool {
        rows <= self.rows && mode == self.mode
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
