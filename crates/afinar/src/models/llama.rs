use afinar_engine::Backend;

use super::train::TrainBuffers;
use super::LlamaConfig;
use crate::blocks::{
    DecoderLayer, KvCache, KvDtype, KvTarget, LayerActs, LayerScratch, Linear, ParamState, RmsNorm, Tokens,
};
use crate::{Error, Result};

/// A Llama-3-family decoder: token embedding, `n_layers` [`DecoderLayer`]s, final norm and the
/// output projection (the embedding itself when tied).
pub struct Llama<B: Backend> {
    /// Architecture numbers.
    pub config: LlamaConfig,
    /// Token embedding `[vocab, dim]`.
    pub embed: B::Weight,
    /// Gradient state of the embedding when it is trained.
    pub embed_state: Option<ParamState<B>>,
    /// Decoder blocks.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// Output projection `[vocab, dim]`; `None` when tied to `embed`.
    pub output: Option<Linear<B>>,
    /// RoPE inverse frequencies (scaled for Llama-3.1+; from `rope_freqs` for such GGUFs).
    pub inv_freq: Vec<f32>,
    /// How [`Llama::new_cache`] stores keys and values (f16 unless set otherwise).
    pub kv_cache: KvDtype,
    /// Activation and gradient buffers of the training pass, kept from one micro-batch to the
    /// next (see [`Llama::release_train_buffers`]).
    pub(crate) train_buffers: Option<TrainBuffers<B>>,
    /// With the optimizer step in the backward: gradient buffers shaped like one decoder
    /// layer's trainable tensors, lent to each layer during its backward (see
    /// [`Llama::share_layer_gradients`]).
    pub(crate) lent_grads: Option<Vec<B::Buf>>,
    /// Training keeps the activations for the backward in bf16 (see
    /// [`Llama::keep_activations_in_bf16`]).
    pub(crate) bf16_activations: bool,
}

/// Which positions' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// The last position of each sequence: `[batch, vocab]` (generation).
    Last,
    /// Every position: `[batch · seq, vocab]` (evaluation, tests).
    All,
}

impl<B: Backend> Llama<B> {
    /// A model of these parts, nothing trainable yet.
    pub(crate) fn from_parts(
        config: LlamaConfig,
        embed: B::Weight,
        layers: Vec<DecoderLayer<B>>,
        norm: RmsNorm<B>,
        output: Option<Linear<B>>,
        inv_freq: Vec<f32>,
    ) -> Self {
        Llama {
            config,
            embed,
            embed_state: None,
            layers,
            norm,
            output,
            inv_freq,
            kv_cache: KvDtype::default(),
            train_buffers: None,
            lent_grads: None,
            bf16_activations: false,
        }
    }

    /// The matrix that maps hidden states to logits.
    pub fn output_weight(&self) -> &B::Weight {
        self.output.as_ref().map_or(&self.embed, |o| &o.weight)
    }

    /// An empty KV cache for `batch` sequences of up to `capacity` positions, storing keys and
    /// values as [`Llama::kv_cache`] says.
    pub fn new_cache(&self, be: &B, batch: usize, capacity: usize) -> Result<KvCache<B>> {
        self.new_cache_as(be, batch, capacity, self.kv_cache)
    }

    /// [`Llama::new_cache`] with keys and values stored as `dtype`.
    pub fn new_cache_as(&self, be: &B, batch: usize, capacity: usize, dtype: KvDtype) -> Result<KvCache<B>> {
        let c = &self.config;
        if capacity > c.max_seq_len {
            return Err(Error::Input(format!(
                "requested {capacity} positions but the model's context is {} tokens",
                c.max_seq_len
            )));
        }
        Ok(KvCache::new(be, c.n_layers, batch, capacity, c.n_kv_heads * c.head_dim, dtype)?)
    }

    /// Runs `batch` sequences of `seq` tokens (`ids` is `[batch · seq]`) and returns logits on
    /// the host. With a cache, the tokens continue the cached positions and are appended to it.
    pub fn forward(
        &self,
        be: &B,
        ids: &[u32],
        batch: usize,
        seq: usize,
        cache: Option<&mut KvCache<B>>,
        which: Logits,
    ) -> Result<Vec<f32>> {
        be.scoped(|| self.forward_scoped(be, ids, batch, seq, cache, which))
    }

    /// The body of [`Llama::forward`], run inside [`Backend::scoped`].
    fn forward_scoped(
        &self,
        be: &B,
        ids: &[u32],
        batch: usize,
        seq: usize,
        mut cache: Option<&mut KvCache<B>>,
        which: Logits,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let rows = batch * seq;
        if rows == 0 || ids.len() != rows {
            return Err(Error::Input(format!(
                "forward: {} token ids for {batch} sequences of {seq} tokens",
                ids.len()
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the model's vocabulary of {} tokens",
                c.vocab_size
            )));
        }
        let past = match cache.as_deref() {
            Some(cache) => {
                if cache.batch != batch {
                    return Err(Error::Input(format!(
                        "KV cache holds {} sequences, forward got {batch}",
                        cache.batch
                    )));
                }
                if cache.len + seq > cache.capacity {
                    return Err(Error::Input(format!(
                        "sequence of {} tokens does not fit the context of {} tokens",
                        cache.len + seq,
                        cache.capacity
                    )));
                }
                cache.len
            }
            None => 0,
        };
        if past + seq > c.max_seq_len {
            return Err(Error::Input(format!(
                "sequence of {} tokens is longer than the model's context of {} tokens",
                past + seq,
                c.max_seq_len
            )));
        }
        let positions: Vec<u32> = (0..batch).flat_map(|_| (0..seq).map(move |t| (past + t) as u32)).collect();

        let tokens = Tokens { batch, seq, positions: &positions, doc_ids: None };
        let x = self.decoder_forward(be, ids, &tokens, cache.as_deref_mut())?;
        if let Some(cache) = cache {
            cache.len += seq;
        }

        let (hidden, out_rows) = match which {
            Logits::All => (x, rows),
            Logits::Last => {
                let mut last = be.zeros(batch * c.dim)?;
                for b in 0..batch {
                    be.copy(&x, (b * seq + seq - 1) * c.dim, &mut last, b * c.dim, c.dim)?;
                }
                (last, batch)
            }
        };
        let mut normed = be.zeros(out_rows * c.dim)?;
        let mut rstd = be.zeros(out_rows)?;
        self.norm.forward(be, &hidden, &mut normed, &mut rstd, out_rows)?;
        let mut logits = be.zeros(out_rows * c.vocab_size)?;
        match &self.output {
            Some(out) => out.forward(be, &normed, &mut logits, out_rows, false)?,
            None => be.linear(&normed, &self.embed, &mut logits, out_rows, false)?,
        }
        let mut host = be.to_host(&logits)?;
        host.truncate(out_rows * c.vocab_size);
        Ok(host)
    }

    /// The residual stream after every decoder layer (before the final norm), `[rows × dim]`,
    /// without keeping activations; with a cache, keys and values are appended to it (the
    /// caller advances its length).
    pub(crate) fn decoder_forward(
        &self,
        be: &B,
        ids: &[u32],
        tokens: &Tokens<'_>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Result<B::Buf> {
        let rows = tokens.rows();
        let mut x = be.zeros(rows * self.config.dim)?;
        be.embedding(ids, &self.embed, &mut x)?;
        let mut acts = LayerActs::new(be, &self.layers[0], rows)?;
        let mut scratch = LayerScratch::new(be, &self.layers[0], rows)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let kv = match cache.as_deref_mut() {
                Some(cache) => KvTarget::Cache(cache, l),
                None => KvTarget::None,
            };
            layer.forward(be, &mut x, &mut acts, &mut scratch, tokens, &self.inv_freq, kv, None)?;
        }
        Ok(x)
    }
}

/// Where one of a model's tensors lives (see [`Llama::tensors`]).
pub enum TensorRef<'a, B: Backend> {
    /// A matrix (embedding or a linear layer, with its LoRA adapter if any).
    Matrix(&'a B::Weight, &'a Linear<B>),
    /// The token embedding (also the output projection when tied).
    Embedding(&'a B::Weight),
    /// A norm gain of this many values.
    Norm(&'a B::Buf, usize),
}

/// One tensor of a model: Hugging Face name, shape, where it lives.
pub struct ModelTensor<'a, B: Backend> {
    /// Hugging Face name.
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Its storage.
    pub source: TensorRef<'a, B>,
}

impl<B: Backend> Llama<B> {
    /// Every tensor of the model, in file order (the embedding; per layer its input norm, the
    /// attention projections, the query/key norms when the family has them, the MLP norm and
    /// projections; the final norm; the output projection when untied): what checkpoints and
    /// GGUF exports hold, named once here.
    pub fn tensors(&self) -> Vec<ModelTensor<'_, B>> {
        let c = &self.config;
        let mut out = vec![ModelTensor {
            name: "model.embed_tokens.weight".into(),
            shape: vec![c.vocab_size, c.dim],
            source: TensorRef::Embedding(&self.embed),
        }];
        for (i, layer) in self.layers.iter().enumerate() {
            let mut norms: Vec<ModelTensor<'_, B>> = layer
                .norms()
                .into_iter()
                .map(|(name, n)| ModelTensor {
                    name: format!("model.layers.{i}.{name}"),
                    shape: vec![n.dim],
                    source: TensorRef::Norm(&n.weight, n.dim),
                })
                .collect();
            let mut linears =
                crate::blocks::PROJECTIONS.iter().zip(layer.projections()).map(|(name, l)| ModelTensor {
                    name: format!("model.layers.{i}.{name}.weight"),
                    shape: vec![l.out_features, l.in_features],
                    source: TensorRef::Matrix(&l.weight, l),
                });
            // input_layernorm, q/k/v/o, [q_norm, k_norm], post_attention_layernorm, gate/up/down
            let post = norms.pop().expect("a layer has norms");
            let mut norms = norms.into_iter();
            out.extend(norms.next());
            out.extend(linears.by_ref().take(4));
            out.extend(norms);
            out.push(post);
            out.extend(linears);
        }
        out.push(ModelTensor {
            name: "model.norm.weight".into(),
            shape: vec![c.dim],
            source: TensorRef::Norm(&self.norm.weight, c.dim),
        });
        if let Some(o) = &self.output {
            out.push(ModelTensor {
                name: "lm_head.weight".into(),
                shape: vec![o.out_features, o.in_features],
                source: TensorRef::Matrix(&o.weight, o),
            });
        }
        out
    }
}
