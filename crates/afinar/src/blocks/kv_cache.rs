use afinar_engine::{Backend, Result};

/// Keys and values of past positions, per layer `[batch, capacity, kv_heads, head_dim]`, so that
/// generation computes each new token's attention without recomputing the prompt.
pub struct KvCache<B: Backend> {
    /// Per-layer keys.
    pub k: Vec<B::Buf>,
    /// Per-layer values.
    pub v: Vec<B::Buf>,
    /// Sequences in the batch.
    pub batch: usize,
    /// Positions allocated per sequence.
    pub capacity: usize,
    /// Positions filled so far.
    pub len: usize,
    /// `kv_heads · head_dim`: the width of one position.
    pub width: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `n_layers` layers.
    pub fn new(be: &B, n_layers: usize, batch: usize, capacity: usize, width: usize) -> Result<Self> {
        let mut k = Vec::with_capacity(n_layers);
        let mut v = Vec::with_capacity(n_layers);
        for _ in 0..n_layers {
            k.push(be.zeros(batch * capacity * width)?);
            v.push(be.zeros(batch * capacity * width)?);
        }
        Ok(Self { k, v, batch, capacity, len: 0, width })
    }

    /// Forgets every position (keeps the memory).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drops positions from `len` on, e.g. to rewind a chat to a shared prefix.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}
