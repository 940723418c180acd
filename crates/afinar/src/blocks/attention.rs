use afinar_engine::{AttnDims, Backend, Result};

use super::KvCache;

/// Causal grouped-query self-attention with rotary position embedding.
pub struct Attention<B: Backend> {
    /// `[heads · head_dim, dim]`.
    pub wq: B::Weight,
    /// `[kv_heads · head_dim, dim]`.
    pub wk: B::Weight,
    /// `[kv_heads · head_dim, dim]`.
    pub wv: B::Weight,
    /// `[dim, heads · head_dim]`.
    pub wo: B::Weight,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
}

/// Buffers attention writes during a forward pass.
pub struct AttnScratch<B: Backend> {
    /// Queries `[rows, heads · head_dim]`.
    pub q: B::Buf,
    /// Keys `[rows, kv_heads · head_dim]`.
    pub k: B::Buf,
    /// Values `[rows, kv_heads · head_dim]`.
    pub v: B::Buf,
    /// Attention output before the output projection, like `q`.
    pub out: B::Buf,
    /// Softmax log-sum-exp per query and head.
    pub lse: B::Buf,
}

impl<B: Backend> AttnScratch<B> {
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

/// Where the keys and values of a forward pass go.
pub enum KvTarget<'a, B: Backend> {
    /// Attend within the batch only (training, evaluation of whole sequences).
    None,
    /// Append to layer `layer` of a cache, attending to everything cached before.
    Cache(&'a mut KvCache<B>, usize),
}

impl<B: Backend> Attention<B> {
    /// Adds `attention(xn)` to the residual stream `residual` for `batch` sequences of `seq`
    /// tokens; `positions` (`[batch · seq]`) are the RoPE positions, `doc_ids` optional
    /// per-token document numbers for packed sequences.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_residual(
        &self,
        be: &B,
        xn: &B::Buf,
        residual: &mut B::Buf,
        s: &mut AttnScratch<B>,
        batch: usize,
        seq: usize,
        positions: &[u32],
        inv_freq: &[f32],
        doc_ids: Option<&[u32]>,
        kv: KvTarget<'_, B>,
    ) -> Result<()> {
        let rows = batch * seq;
        let (hq, hkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        be.linear(xn, &self.wq, &mut s.q, rows, false)?;
        be.linear(xn, &self.wk, &mut s.k, rows, false)?;
        be.linear(xn, &self.wv, &mut s.v, rows, false)?;
        be.rope(&mut s.q, positions, inv_freq, rows, hq, hd, false)?;
        be.rope(&mut s.k, positions, inv_freq, rows, hkv, hd, false)?;
        let mut dims = AttnDims {
            batch,
            q_len: seq,
            kv_len: seq,
            kv_stride: seq,
            q_heads: hq,
            kv_heads: hkv,
            head_dim: hd,
            q_offset: 0,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        match kv {
            KvTarget::None => {
                be.attention(&s.q, &s.k, &s.v, &mut s.out, &mut s.lse, &dims, doc_ids)?;
            }
            KvTarget::Cache(cache, layer) => {
                let width = hkv * hd;
                let past = cache.len;
                for b in 0..batch {
                    let dst = (b * cache.capacity + past) * width;
                    be.copy(&s.k, b * seq * width, &mut cache.k[layer], dst, seq * width)?;
                    be.copy(&s.v, b * seq * width, &mut cache.v[layer], dst, seq * width)?;
                }
                dims.kv_len = past + seq;
                dims.kv_stride = cache.capacity;
                dims.q_offset = past;
                be.attention(
                    &s.q,
                    &cache.k[layer],
                    &cache.v[layer],
                    &mut s.out,
                    &mut s.lse,
                    &dims,
                    doc_ids,
                )?;
            }
        }
        be.linear(&s.out, &self.wo, residual, rows, true)
    }
}
