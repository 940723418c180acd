use afinar_engine::{Backend, Result};

use super::attention::{AttnScratch, KvTarget};
use super::mlp::MlpScratch;
use super::{Attention, Mlp, RmsNorm};

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

/// Every buffer one layer's forward pass writes, reused across layers.
pub struct LayerScratch<B: Backend> {
    /// Normalised input `[rows, dim]`.
    pub xn: B::Buf,
    /// `1/rms` per row.
    pub rstd: B::Buf,
    /// Attention buffers.
    pub attn: AttnScratch<B>,
    /// MLP buffers.
    pub mlp: MlpScratch<B>,
    /// Rows these buffers hold.
    pub rows: usize,
}

impl<B: Backend> LayerScratch<B> {
    /// Buffers for up to `rows` tokens of a layer shaped like `layer`.
    pub fn new(be: &B, layer: &DecoderLayer<B>, rows: usize) -> Result<Self> {
        let a = &layer.attn;
        Ok(Self {
            xn: be.zeros(rows * layer.attn_norm.dim)?,
            rstd: be.zeros(rows)?,
            attn: AttnScratch::new(be, rows, a.n_heads, a.n_kv_heads, a.head_dim)?,
            mlp: MlpScratch::new(be, rows, layer.mlp.ffn_dim)?,
            rows,
        })
    }
}

impl<B: Backend> DecoderLayer<B> {
    /// Runs the block on the residual stream `x[batch · seq, dim]` in place.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        x: &mut B::Buf,
        s: &mut LayerScratch<B>,
        batch: usize,
        seq: usize,
        positions: &[u32],
        inv_freq: &[f32],
        doc_ids: Option<&[u32]>,
        kv: KvTarget<'_, B>,
    ) -> Result<()> {
        let rows = batch * seq;
        self.attn_norm.forward(be, x, &mut s.xn, &mut s.rstd, rows)?;
        self.attn.forward_residual(
            be, &s.xn, x, &mut s.attn, batch, seq, positions, inv_freq, doc_ids, kv,
        )?;
        self.mlp_norm.forward(be, x, &mut s.xn, &mut s.rstd, rows)?;
        self.mlp.forward_residual(be, &s.xn, x, &mut s.mlp, rows)
    }
}
