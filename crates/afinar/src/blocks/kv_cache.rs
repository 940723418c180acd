use afinar_engine::{AttnDims, Backend, HalfFormat, Result};

/// How a [`KvCache`] stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// IEEE binary16, as llama.cpp's default cache: half the memory and memory traffic of f32
    /// (decoding reads the whole cache once per token); keys and values are rounded to 11
    /// significant bits when stored.
    #[default]
    F16,
    /// 32-bit floats: the exact values of the forward pass (reference comparisons).
    F32,
}

impl KvDtype {
    /// `"f16"` or `"f32"`.
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "f16",
            KvDtype::F32 => "f32",
        }
    }
}

/// The per-layer key and value buffers of a [`KvCache`].
pub enum KvStore<B: Backend> {
    /// f32 buffers.
    F32 {
        /// Per-layer keys.
        k: Vec<B::Buf>,
        /// Per-layer values.
        v: Vec<B::Buf>,
    },
    /// 16-bit buffers ([`HalfFormat::F16`]).
    Half {
        /// Per-layer keys.
        k: Vec<B::Half>,
        /// Per-layer values.
        v: Vec<B::Half>,
    },
}

/// Keys and values of past positions, per layer `[batch, capacity, kv_heads, head_dim]`, so that
/// generation computes each new token's attention without recomputing the prompt.
pub struct KvCache<B: Backend> {
    /// The buffers.
    pub store: KvStore<B>,
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
    /// An empty cache for `n_layers` layers, storing keys and values as `dtype`.
    pub fn new(
        be: &B,
        n_layers: usize,
        batch: usize,
        capacity: usize,
        width: usize,
        dtype: KvDtype,
    ) -> Result<Self> {
        let n = batch * capacity * width;
        let store = match dtype {
            KvDtype::F32 => KvStore::F32 {
                k: (0..n_layers).map(|_| be.zeros(n)).collect::<Result<_>>()?,
                v: (0..n_layers).map(|_| be.zeros(n)).collect::<Result<_>>()?,
            },
            KvDtype::F16 => KvStore::Half {
                k: (0..n_layers).map(|_| be.zeros_half(n, HalfFormat::F16)).collect::<Result<_>>()?,
                v: (0..n_layers).map(|_| be.zeros_half(n, HalfFormat::F16)).collect::<Result<_>>()?,
            },
        };
        Ok(Self { store, batch, capacity, len: 0, width })
    }

    /// How keys and values are stored.
    pub fn dtype(&self) -> KvDtype {
        match self.store {
            KvStore::F32 { .. } => KvDtype::F32,
            KvStore::Half { .. } => KvDtype::F16,
        }
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        match &self.store {
            KvStore::F32 { k, .. } => k.len(),
            KvStore::Half { k, .. } => k.len(),
        }
    }

    /// Forgets every position (keeps the memory).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drops positions from `len` on, e.g. to rewind a chat to a shared prefix.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Stores `seq` positions of keys `k` and values `v` (`[batch, seq, width]`) of layer `layer`
    /// after the [`KvCache::len`] positions already held (which it does not change: the model
    /// advances it once all layers are written).
    pub fn append(&mut self, be: &B, layer: usize, k: &B::Buf, v: &B::Buf, seq: usize) -> Result<()> {
        let w = self.width;
        for b in 0..self.batch {
            let (src, dst) = (b * seq * w, (b * self.capacity + self.len) * w);
            match &mut self.store {
                KvStore::F32 { k: ck, v: cv } => {
                    be.copy(k, src, &mut ck[layer], dst, seq * w)?;
                    be.copy(v, src, &mut cv[layer], dst, seq * w)?;
                }
                KvStore::Half { k: ck, v: cv } => {
                    be.to_half(k, src, &mut ck[layer], dst, seq * w)?;
                    be.to_half(v, src, &mut cv[layer], dst, seq * w)?;
                }
            }
        }
        Ok(())
    }

    /// Attention of `q` against layer `layer`'s keys and values ([`Backend::attention`] or
    /// [`Backend::attention_half`]); `dims` gives the cache's layout and valid length.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        be: &B,
        layer: usize,
        q: &B::Buf,
        out: &mut B::Buf,
        lse: &mut B::Buf,
        dims: &AttnDims,
        doc_ids: Option<&[u32]>,
    ) -> Result<()> {
        match &self.store {
            KvStore::F32 { k, v } => be.attention(q, &k[layer], &v[layer], out, lse, dims, doc_ids),
            KvStore::Half { k, v } => be.attention_half(q, &k[layer], &v[layer], out, lse, dims, doc_ids),
        }
    }

    /// Copies the first `self.len` positions of sequence 0 into every sequence of `dst` (which
    /// must have as many layers, the same width and room for them) and sets `dst.len` to match:
    /// a shared prompt prefix for a batch of continuations. Values pass through f32 where the
    /// two caches store different types (exact from f16 to f32; rounded the other way).
    pub fn broadcast_prefix(&self, be: &B, dst: &mut KvCache<B>) -> Result<()> {
        let (n, w) = (self.len * self.width, self.width);
        if dst.n_layers() != self.n_layers() || dst.width != w || dst.capacity < self.len {
            return Err(afinar_engine::EngineError::Shape {
                op: "broadcast_prefix",
                what: format!(
                    "{} positions of {} layers × {w} into a cache of {} layers × {} with {} positions",
                    self.len,
                    self.n_layers(),
                    dst.n_layers(),
                    dst.width,
                    dst.capacity
                ),
            });
        }
        let mut tmp = be.zeros(n.max(1))?;
        for layer in 0..self.n_layers() {
            for values in [false, true] {
                // Sequence 0's prefix as f32 (a copy, or widened).
                match &self.store {
                    KvStore::F32 { k, v } => {
                        be.copy(if values { &v[layer] } else { &k[layer] }, 0, &mut tmp, 0, n)?
                    }
                    KvStore::Half { k, v } => {
                        be.from_half(if values { &v[layer] } else { &k[layer] }, 0, &mut tmp, 0, n)?
                    }
                }
                for b in 0..dst.batch {
                    let off = b * dst.capacity * w;
                    match &mut dst.store {
                        KvStore::F32 { k, v } => {
                            be.copy(&tmp, 0, if values { &mut v[layer] } else { &mut k[layer] }, off, n)?
                        }
                        KvStore::Half { k, v } => {
                            be.to_half(&tmp, 0, if values { &mut v[layer] } else { &mut k[layer] }, off, n)?
                        }
                    }
                }
            }
        }
        dst.len = self.len;
        Ok(())
    }

    /// A cache holding only sequences `rows` of this one (in that order), with the same
    /// positions filled: e.g. to drop finished rows from a batch being decoded. Values are
    /// copied exactly (through f32 for 16-bit caches, which is lossless from f16).
    pub fn keep_rows(&self, be: &B, rows: &[usize]) -> Result<KvCache<B>> {
        if rows.is_empty() || rows.iter().any(|&r| r >= self.batch) {
            return Err(afinar_engine::EngineError::Shape {
                op: "keep_rows",
                what: format!("rows {rows:?} of a cache of {} sequences", self.batch),
            });
        }
        let (w, cap, n) = (self.width, self.capacity, self.len * self.width);
        let mut dst = KvCache::new(be, self.n_layers(), rows.len(), cap, w, self.dtype())?;
        let mut tmp = match self.store {
            KvStore::Half { .. } => Some(be.zeros(n.max(1))?),
            KvStore::F32 { .. } => None,
        };
        for layer in 0..self.n_layers() {
            for (to, &from) in rows.iter().enumerate() {
                let (src, off) = (from * cap * w, to * cap * w);
                match (&self.store, &mut dst.store, tmp.as_mut()) {
                    (KvStore::F32 { k, v }, KvStore::F32 { k: dk, v: dv }, _) => {
                        be.copy(&k[layer], src, &mut dk[layer], off, n)?;
                        be.copy(&v[layer], src, &mut dv[layer], off, n)?;
                    }
                    (KvStore::Half { k, v }, KvStore::Half { k: dk, v: dv }, Some(t)) => {
                        be.from_half(&k[layer], src, t, 0, n)?;
                        be.to_half(t, 0, &mut dk[layer], off, n)?;
                        be.from_half(&v[layer], src, t, 0, n)?;
                        be.to_half(t, 0, &mut dv[layer], off, n)?;
                    }
                    _ => unreachable!("the new cache has the same dtype"),
                }
            }
        }
        dst.len = self.len;
        Ok(dst)
    }
}
