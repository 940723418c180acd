use afinar_engine::{AttnDims, Backend, HalfFormat, Result};

use super::{Dx, KvCache, Linear, RmsNorm};

/// Per-head RMSNorm of queries and keys (Qwen3's `q_norm`, `k_norm`): each head's vector of
/// `head_dim` values is normalised with a gain of size `head_dim`, after the projection and
/// before RoPE, i.e. [`RmsNorm`] over `[tokens · heads, head_dim]` rows.
pub struct QkNorm<B: Backend> {
    /// Gain on the queries, `[head_dim]`.
    pub q: RmsNorm<B>,
    /// Gain on the keys, `[head_dim]`.
    pub k: RmsNorm<B>,
}

/// Causal grouped-query self-attention with rotary position embedding.
pub struct Attention<B: Backend> {
    /// `[heads · head_dim, dim]`.
    pub wq: Linear<B>,
    /// `[kv_heads · head_dim, dim]`.
    pub wk: Linear<B>,
    /// `[kv_heads · head_dim, dim]`.
    pub wv: Linear<B>,
    /// `[dim, heads · head_dim]`.
    pub wo: Linear<B>,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Norm of queries and keys before RoPE (Qwen3), if the family has one.
    pub qk_norm: Option<QkNorm<B>>,
}

/// Activations attention writes in its forward pass (kept for the backward).
pub struct AttnActs<B: Backend> {
    /// Queries after RoPE `[rows, heads · head_dim]`.
    pub q: B::Buf,
    /// Keys after RoPE `[rows, kv_heads · head_dim]`.
    pub k: B::Buf,
    /// Values `[rows, kv_heads · head_dim]`.
    pub v: B::Buf,
    /// Attention output before the output projection, like `q`.
    pub out: B::Buf,
    /// Softmax log-sum-exp per query and head.
    pub lse: B::Buf,
}

impl<B: Backend> AttnActs<B> {
    /// Buffers for up to `rows` tokens.
    pub fn new(be: &B, rows: usize, n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Result<Self> {
        Ok(Self {
            q: be.zeros(rows * n_heads * head_dim)?,
            k: be.zeros(rows * n_kv_heads * head_dim)?,
            v: be.zeros(rows * n_kv_heads * head_dim)?,
            out: be.zeros(rows * n_heads * head_dim)?,
            lse: be.zeros(rows * n_heads)?,
        })
    }
}

/// [`AttnActs`] kept in bf16 between a layer's forward and its backward (mixed precision): the
/// queries, keys, values and attention output, 16 bits each, and the log-sum-exp in f32.
pub struct HalfAttnActs<B: Backend> {
    /// Queries after RoPE.
    pub q: B::Half,
    /// Keys after RoPE.
    pub k: B::Half,
    /// Values.
    pub v: B::Half,
    /// Attention output.
    pub out: B::Half,
    /// Softmax log-sum-exp per query and head (f32).
    pub lse: B::Buf,
}

impl<B: Backend> HalfAttnActs<B> {
    /// Buffers for up to `rows` tokens.
    pub fn new(be: &B, rows: usize, n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Result<Self> {
        let (q, kv) = (rows * n_heads * head_dim, rows * n_kv_heads * head_dim);
        Ok(Self {
            q: be.zeros_half(q, HalfFormat::Bf16)?,
            k: be.zeros_half(kv, HalfFormat::Bf16)?,
            v: be.zeros_half(kv, HalfFormat::Bf16)?,
            out: be.zeros_half(q, HalfFormat::Bf16)?,
            lse: be.zeros(rows * n_heads)?,
        })
    }

    /// Writes these activations of `rows` tokens back into `a` (f32) for the backward.
    pub fn load(&self, be: &B, a: &mut AttnActs<B>, rows: usize, dims: [usize; 3]) -> Result<()> {
        let [hq, hkv, hd] = dims;
        be.from_half(&self.q, 0, &mut a.q, 0, rows * hq * hd)?;
        be.from_half(&self.k, 0, &mut a.k, 0, rows * hkv * hd)?;
        be.from_half(&self.v, 0, &mut a.v, 0, rows * hkv * hd)?;
        be.from_half(&self.out, 0, &mut a.out, 0, rows * hq * hd)?;
        be.copy(&self.lse, 0, &mut a.lse, 0, rows * hq)
    }
}

/// Rounds `x[..n]` to bf16 in place, keeping the 16-bit copy in `half`: the forward then
/// computes with exactly the values its backward reads back.
pub fn keep_bf16<B: Backend>(be: &B, x: &mut B::Buf, half: &mut B::Half, n: usize) -> Result<()> {
    be.to_half(x, 0, half, 0, n)?;
    be.from_half(half, 0, x, 0, n)
}

/// Gradient buffers of the attention backward, reused across layers.
pub struct AttnGrads<B: Backend> {
    /// Gradient of the attention output.
    pub out: B::Buf,
    /// Gradient of the queries.
    pub q: B::Buf,
    /// Gradient of the keys.
    pub k: B::Buf,
    /// Gradient of the values.
    pub v: B::Buf,
    /// With a query/key norm: room for one normalised projection `[rows, heads · head_dim]`
    /// and its `1/rms` per head `[rows · heads]`, recomputed by the backward.
    pub qk_norm: Option<(B::Buf, B::Buf)>,
}

impl<B: Backend> AttnGrads<B> {
    /// Buffers for up to `rows` tokens (with room for the query/key norm's backward when
    /// `qk_norm`).
    pub fn new(
        be: &B,
        rows: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        qk_norm: bool,
    ) -> Result<Self> {
        let qk_norm = match qk_norm {
            true => Some((be.zeros(rows * n_heads * head_dim)?, be.zeros(rows * n_heads)?)),
            false => None,
        };
        Ok(Self {
            out: be.zeros(rows * n_heads * head_dim)?,
            q: be.zeros(rows * n_heads * head_dim)?,
            k: be.zeros(rows * n_kv_heads * head_dim)?,
            v: be.zeros(rows * n_kv_heads * head_dim)?,
            qk_norm,
        })
    }
}

/// Where the keys and values of a forward pass go.
pub enum KvTarget<'a, B: Backend> {
    /// Attend within the batch only (training, evaluation of whole sequences).
    None,
    /// Append to layer `layer` of a cache, attending to everything cached before.
    Cache(&'a mut KvCache<B>, usize),
}

/// The token layout of one forward pass.
#[derive(Clone, Copy)]
pub struct Tokens<'a> {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// RoPE position of each token, `[batch · seq]`.
    pub positions: &'a [u32],
    /// Document number of each token for packed rows (block-causal attention).
    pub doc_ids: Option<&'a [u32]>,
}

impl Tokens<'_> {
    /// `batch · seq`.
    pub fn rows(&self) -> usize {
        self.batch * self.seq
    }
}

impl<B: Backend> Attention<B> {
    /// `[wq, wk, wv, wo]`.
    pub fn projections(&self) -> [&Linear<B>; 4] {
        [&self.wq, &self.wk, &self.wv, &self.wo]
    }

    /// `[wq, wk, wv, wo]`, mutable.
    pub fn projections_mut(&mut self) -> [&mut Linear<B>; 4] {
        [&mut self.wq, &mut self.wk, &mut self.wv, &mut self.wo]
    }

    fn dims(&self, t: &Tokens<'_>) -> AttnDims {
        AttnDims {
            batch: t.batch,
            q_len: t.seq,
            kv_len: t.seq,
            kv_stride: t.seq,
            q_heads: self.n_heads,
            kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            q_offset: 0,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
        }
    }

    /// Adds `attention(xn)` to the residual stream `residual`. With `keep` (training in mixed
    /// precision), the queries, keys, values and output are rounded to bf16 as they are made and
    /// kept there too (see [`HalfAttnActs::load`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_residual(
        &self,
        be: &B,
        xn: &B::Buf,
        residual: &mut B::Buf,
        a: &mut AttnActs<B>,
        t: &Tokens<'_>,
        inv_freq: &[f32],
        kv: KvTarget<'_, B>,
        mut keep: Option<&mut HalfAttnActs<B>>,
    ) -> Result<()> {
        let rows = t.rows();
        let (hq, hkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        match &self.qk_norm {
            None => {
                self.wq.forward(be, xn, &mut a.q, rows, false)?;
                self.wk.forward(be, xn, &mut a.k, rows, false)?;
            }
            Some(n) => {
                // The projections go to `out` (free until the attention writes it), the norm
                // statistics to `lse` (likewise); the backward recomputes both.
                self.wq.forward(be, xn, &mut a.out, rows, false)?;
                n.q.forward(be, &a.out, &mut a.q, &mut a.lse, rows * hq)?;
                self.wk.forward(be, xn, &mut a.out, rows, false)?;
                n.k.forward(be, &a.out, &mut a.k, &mut a.lse, rows * hkv)?;
            }
        }
        self.wv.forward(be, xn, &mut a.v, rows, false)?;
        be.rope(&mut a.q, t.positions, inv_freq, rows, hq, hd, false)?;
        be.rope(&mut a.k, t.positions, inv_freq, rows, hkv, hd, false)?;
        if let Some(h) = keep.as_deref_mut() {
            keep_bf16(be, &mut a.q, &mut h.q, rows * hq * hd)?;
            keep_bf16(be, &mut a.k, &mut h.k, rows * hkv * hd)?;
            keep_bf16(be, &mut a.v, &mut h.v, rows * hkv * hd)?;
        }
        let mut dims = self.dims(t);
        match kv {
            KvTarget::None => {
                be.attention(&a.q, &a.k, &a.v, &mut a.out, &mut a.lse, &dims, t.doc_ids)?;
            }
            KvTarget::Cache(cache, layer) => {
                let past = cache.len;
                cache.append(be, layer, &a.k, &a.v, t.seq)?;
                dims.kv_len = past + t.seq;
                dims.kv_stride = cache.capacity;
                dims.q_offset = past;
                cache.attention(be, layer, &a.q, &mut a.out, &mut a.lse, &dims, t.doc_ids)?;
            }
        }
        if let Some(h) = keep {
            keep_bf16(be, &mut a.out, &mut h.out, rows * hq * hd)?;
            be.copy(&a.lse, 0, &mut h.lse, 0, rows * hq)?;
        }
        self.wo.forward(be, &a.out, residual, rows, true)
    }

    /// Backward of [`Attention::forward_residual`] (without a cache): from the residual gradient
    /// `dy`, writes the gradient of `xn` into `dxn` when given and accumulates parameter
    /// gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        be: &B,
        xn: &B::Buf,
        a: &AttnActs<B>,
        dy: &B::Buf,
        dxn: Option<&mut B::Buf>,
        g: &mut AttnGrads<B>,
        t: &Tokens<'_>,
        inv_freq: &[f32],
    ) -> Result<()> {
        let rows = t.rows();
        let (hq, hkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        self.wo.backward(be, &a.out, dy, Some(&mut g.out), rows, false)?;
        let dims = self.dims(t);
        be.attention_backward(
            &g.out, &a.q, &a.k, &a.v, &a.out, &a.lse, &mut g.q, &mut g.k, &mut g.v, &dims, t.doc_ids,
        )?;
        // The backward of a rotation is the inverse rotation.
        be.rope(&mut g.q, t.positions, inv_freq, rows, hq, hd, true)?;
        be.rope(&mut g.k, t.positions, inv_freq, rows, hkv, hd, true)?;
        if let (Some(n), Some((normed, rstd))) = (&mut self.qk_norm, &mut g.qk_norm) {
            // Through the norm: recompute the projection (into `g.out`, free now) and its
            // statistics, then replace the gradient of the normalised values by that of the
            // projection's output.
            self.wq.forward(be, xn, &mut g.out, rows, false)?;
            n.q.forward(be, &g.out, normed, rstd, rows * hq)?;
            n.q.backward(be, &g.q, &g.out, rstd, Dx::Overwrite(&mut *normed), rows * hq)?;
            be.copy(normed, 0, &mut g.q, 0, rows * hq * hd)?;
            self.wk.forward(be, xn, &mut g.out, rows, false)?;
            n.k.forward(be, &g.out, normed, rstd, rows * hkv)?;
            n.k.backward(be, &g.k, &g.out, rstd, Dx::Overwrite(&mut *normed), rows * hkv)?;
            be.copy(normed, 0, &mut g.k, 0, rows * hkv * hd)?;
        }
        match dxn {
            Some(dxn) => {
                self.wq.backward(be, xn, &g.q, Some(&mut *dxn), rows, false)?;
                self.wk.backward(be, xn, &g.k, Some(&mut *dxn), rows, true)?;
                self.wv.backward(be, xn, &g.v, Some(dxn), rows, true)
            }
            None => {
                self.wq.backward(be, xn, &g.q, None, rows, false)?;
                self.wk.backward(be, xn, &g.k, None, rows, false)?;
                self.wv.backward(be, xn, &g.v, None, rows, false)
            }
        }
    }
}
