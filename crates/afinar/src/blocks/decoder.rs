use afinar_engine::{Backend, Result};

use super::attention::{AttnActs, AttnGrads, HalfAttnActs, KvTarget, Tokens};
use super::mlp::{HalfMlpActs, MlpActs, MlpGrads};
use super::{Attention, Dx, Linear, Mlp, RmsNorm};

/// One pre-norm residual block: `x += attn(norm(x)); x += mlp(norm(x))`.
pub struct DecoderLayer<B: Backend> {
    /// Norm before attention.
    pub attn_norm: RmsNorm<B>,
    /// Self-attention.
    pub attn: Attention<B>,
    /// Norm before the MLP.
    pub mlp_norm: RmsNorm<B>,
    /// Feed-forward block.
    pub mlp: Mlp<B>,
}

/// The activations of one layer's forward pass that its backward reads. Inference reuses one
/// for all layers; training keeps one per layer (or one, recomputed per layer, with activation
/// checkpointing). What is cheap to recompute (norm outputs, the residual stream after attention,
/// the MLP's hidden activation) lives in a [`LayerScratch`] shared by all layers instead.
pub struct LayerActs<B: Backend> {
    /// `1/rms` per row of the attention norm.
    pub rstd_attn: B::Buf,
    /// Attention activations.
    pub attn: AttnActs<B>,
    /// `1/rms` per row of the MLP norm.
    pub rstd_mlp: B::Buf,
    /// MLP activations.
    pub mlp: MlpActs<B>,
    /// Rows these buffers hold.
    pub rows: usize,
}

impl<B: Backend> LayerActs<B> {
    /// Buffers for up to `rows` tokens of a layer shaped like `layer`.
    pub fn new(be: &B, layer: &DecoderLayer<B>, rows: usize) -> Result<Self> {
        let a = &layer.attn;
        Ok(Self {
            rstd_attn: be.zeros(rows)?,
            attn: AttnActs::new(be, rows, a.n_heads, a.n_kv_heads, a.head_dim)?,
            rstd_mlp: be.zeros(rows)?,
            mlp: MlpActs::new(be, rows, layer.mlp.ffn_dim)?,
            rows,
        })
    }
}

/// A layer's [`LayerActs`] kept between its forward and its backward in mixed precision: the
/// large activations in bf16 (half of f32's memory), the per-row norm statistics in f32. The
/// forward rounds those activations to bf16 as it makes them (as `torch.autocast(bfloat16)`
/// stores product outputs in bf16), so forward and backward see the same values; one f32
/// [`LayerActs`] serves every layer as working space.
pub struct HalfLayerActs<B: Backend> {
    /// `1/rms` per row of the attention norm.
    pub rstd_attn: B::Buf,
    /// Attention activations.
    pub attn: HalfAttnActs<B>,
    /// `1/rms` per row of the MLP norm.
    pub rstd_mlp: B::Buf,
    /// MLP activations.
    pub mlp: HalfMlpActs<B>,
}

impl<B: Backend> HalfLayerActs<B> {
    /// Buffers for up to `rows` tokens of a layer shaped like `layer`.
    pub fn new(be: &B, layer: &DecoderLayer<B>, rows: usize) -> Result<Self> {
        let a = &layer.attn;
        Ok(Self {
            rstd_attn: be.zeros(rows)?,
            attn: HalfAttnActs::new(be, rows, a.n_heads, a.n_kv_heads, a.head_dim)?,
            rstd_mlp: be.zeros(rows)?,
            mlp: HalfMlpActs::new(be, rows, layer.mlp.ffn_dim)?,
        })
    }

    /// Writes the activations of `rows` tokens back into `acts` (f32) for `layer`'s backward.
    pub fn load(&self, be: &B, layer: &DecoderLayer<B>, acts: &mut LayerActs<B>, rows: usize) -> Result<()> {
        let a = &layer.attn;
        be.copy(&self.rstd_attn, 0, &mut acts.rstd_attn, 0, rows)?;
        self.attn.load(be, &mut acts.attn, rows, [a.n_heads, a.n_kv_heads, a.head_dim])?;
        be.copy(&self.rstd_mlp, 0, &mut acts.rstd_mlp, 0, rows)?;
        self.mlp.load(be, &mut acts.mlp, rows * layer.mlp.ffn_dim)
    }
}

/// Temporaries of one layer's pass, shared by all layers: the forward writes the norm outputs
/// and the MLP's hidden activation here, and the backward recomputes them here (the norm outputs
/// and hidden activation only when a trainable projection needs them as its input: frozen
/// projections need only output gradients), together with the residual stream after attention
/// (`x_in + o_proj(attention)`: one output projection per layer, bit for bit the forward's sum).
/// That keeps `[rows, dim]` three times and `[rows, ffn]` once out of every layer's saved
/// activations.
pub struct LayerScratch<B: Backend> {
    /// A norm output `[rows, dim]`.
    pub xn: B::Buf,
    /// The residual stream after attention `[rows, dim]`, recomputed by the backward.
    pub x_mid: B::Buf,
    /// `1/rms` of a recomputed norm `[rows]`.
    pub rstd: B::Buf,
    /// `silu(gate) · up` `[rows, ffn]`.
    pub hidden: B::Buf,
}

impl<B: Backend> LayerScratch<B> {
    /// Buffers for up to `rows` tokens of a layer shaped like `layer`.
    pub fn new(be: &B, layer: &DecoderLayer<B>, rows: usize) -> Result<Self> {
        Ok(Self {
            xn: be.zeros(rows * layer.attn_norm.dim)?,
            x_mid: be.zeros(rows * layer.attn_norm.dim)?,
            rstd: be.zeros(rows)?,
            hidden: be.zeros(rows * layer.mlp.ffn_dim)?,
        })
    }
}

/// Gradient buffers of one layer's backward, reused across layers.
pub struct LayerGrads<B: Backend> {
    /// Gradient of a norm output.
    pub dxn: B::Buf,
    /// Attention gradients.
    pub attn: AttnGrads<B>,
    /// MLP gradients.
    pub mlp: MlpGrads<B>,
}

impl<B: Backend> LayerGrads<B> {
    /// Buffers for up to `rows` tokens of a layer shaped like `layer`.
    pub fn new(be: &B, layer: &DecoderLayer<B>, rows: usize) -> Result<Self> {
        let a = &layer.attn;
        Ok(Self {
            dxn: be.zeros(rows * layer.attn_norm.dim)?,
            attn: AttnGrads::new(be, rows, a.n_heads, a.n_kv_heads, a.head_dim, a.qk_norm.is_some())?,
            mlp: MlpGrads::new(be, rows, layer.mlp.ffn_dim)?,
        })
    }
}

/// Hugging Face names of a layer's projections, in the order of [`DecoderLayer::projections`]:
/// attention first (4), then the MLP (3).
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

impl<B: Backend> DecoderLayer<B> {
    /// The layer's norms with their Hugging Face names (after `model.layers.N.`), in file
    /// order: `input_layernorm`, the query/key norms when the layer has them,
    /// `post_attention_layernorm`.
    pub fn norms(&self) -> Vec<(&'static str, &RmsNorm<B>)> {
        let mut out = vec![("input_layernorm.weight", &self.attn_norm)];
        if let Some(n) = &self.attn.qk_norm {
            out.push(("self_attn.q_norm.weight", &n.q));
            out.push(("self_attn.k_norm.weight", &n.k));
        }
        out.push(("post_attention_layernorm.weight", &self.mlp_norm));
        out
    }

    /// [`DecoderLayer::norms`], mutable.
    pub fn norms_mut(&mut self) -> Vec<(&'static str, &mut RmsNorm<B>)> {
        let mut out = vec![("input_layernorm.weight", &mut self.attn_norm)];
        if let Some(n) = &mut self.attn.qk_norm {
            out.push(("self_attn.q_norm.weight", &mut n.q));
            out.push(("self_attn.k_norm.weight", &mut n.k));
        }
        out.push(("post_attention_layernorm.weight", &mut self.mlp_norm));
        out
    }

    /// The layer's linear projections, in the order of [`PROJECTIONS`].
    pub fn projections(&self) -> [&Linear<B>; 7] {
        let ([q, k, v, o], [g, u, d]) = (self.attn.projections(), self.mlp.projections());
        [q, k, v, o, g, u, d]
    }

    /// The layer's linear projections, mutable, in the order of [`PROJECTIONS`].
    pub fn projections_mut(&mut self) -> [&mut Linear<B>; 7] {
        let ([q, k, v, o], [g, u, d]) = (self.attn.projections_mut(), self.mlp.projections_mut());
        [q, k, v, o, g, u, d]
    }

    /// Runs the block on the residual stream `x[rows, dim]` in place. With `keep` (training in
    /// mixed precision) the activations the backward needs are rounded to bf16 and kept there
    /// too (see [`HalfLayerActs`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        x: &mut B::Buf,
        acts: &mut LayerActs<B>,
        s: &mut LayerScratch<B>,
        t: &Tokens<'_>,
        inv_freq: &[f32],
        kv: KvTarget<'_, B>,
        mut keep: Option<&mut HalfLayerActs<B>>,
    ) -> Result<()> {
        let rows = t.rows();
        self.attn_norm.forward(be, x, &mut s.xn, &mut acts.rstd_attn, rows)?;
        let keep_attn = keep.as_deref_mut().map(|h| &mut h.attn);
        self.attn.forward_residual(be, &s.xn, x, &mut acts.attn, t, inv_freq, kv, keep_attn)?;
        self.mlp_norm.forward(be, x, &mut s.xn, &mut acts.rstd_mlp, rows)?;
        let keep_mlp = match keep {
            Some(h) => {
                be.copy(&acts.rstd_attn, 0, &mut h.rstd_attn, 0, rows)?;
                be.copy(&acts.rstd_mlp, 0, &mut h.rstd_mlp, 0, rows)?;
                Some(&mut h.mlp)
            }
            None => None,
        };
        self.mlp.forward_residual(be, &s.xn, x, &mut acts.mlp, &mut s.hidden, rows, keep_mlp)
    }

    /// Backward of [`DecoderLayer::forward`]: `dx` holds the gradient of the layer's output on
    /// entry and of its input `x_in` on return (unless `need_input_grad` is false and nothing
    /// before needs it). Parameter gradients accumulate.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        be: &B,
        x_in: &B::Buf,
        acts: &LayerActs<B>,
        s: &mut LayerScratch<B>,
        dx: &mut B::Buf,
        g: &mut LayerGrads<B>,
        t: &Tokens<'_>,
        inv_freq: &[f32],
        need_input_grad: bool,
    ) -> Result<()> {
        let rows = t.rows();
        // x_mid = x_in + o_proj(out): the same kernels on the same inputs as the forward.
        be.copy(x_in, 0, &mut s.x_mid, 0, rows * self.attn_norm.dim)?;
        self.attn.wo.forward(be, &acts.attn.out, &mut s.x_mid, rows, true)?;
        if self.mlp.gate.needs_input() || self.mlp.up.needs_input() {
            self.mlp_norm.forward(be, &s.x_mid, &mut s.xn, &mut s.rstd, rows)?;
        }
        self.mlp.backward(be, &s.xn, &acts.mlp, &mut s.hidden, dx, Some(&mut g.dxn), &mut g.mlp, rows)?;
        self.mlp_norm.backward(be, &g.dxn, &s.x_mid, &acts.rstd_mlp, Dx::Add(&mut *dx), rows)?;
        let through_norm = need_input_grad || self.attn_norm.state.is_some();
        let dxn = if through_norm { Some(&mut g.dxn) } else { None };
        let a = &self.attn;
        // The query/key norm's backward recomputes the projections from the norm output.
        if a.wq.needs_input() || a.wk.needs_input() || a.wv.needs_input() || a.qk_norm.is_some() {
            self.attn_norm.forward(be, x_in, &mut s.xn, &mut s.rstd, rows)?;
        }
        self.attn.backward(be, &s.xn, &acts.attn, dx, dxn, &mut g.attn, t, inv_freq)?;
        if through_norm {
            self.attn_norm.backward(be, &g.dxn, x_in, &acts.rstd_attn, Dx::Add(&mut *dx), rows)?;
        }
        Ok(())
    }
}
