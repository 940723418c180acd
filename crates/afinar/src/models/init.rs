//! Random initialisation from a configuration alone (presets, benchmarks): weights from
//! `N(0, 0.02²)` like transformers' `initializer_range`, norm gains 1.

use afinar_engine::{Backend, WeightFormat};

use super::{Llama, LlamaConfig};
use crate::blocks::{Attention, DecoderLayer, Linear, Mlp, RmsNorm};
use crate::generate::Rng;
use crate::Result;

fn normal(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            // Box-Muller
            let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
            let u2 = rng.next_f64();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect()
}

impl<B: Backend> Llama<B> {
    /// A model with random weights (seeded), for benchmarks and tests.
    pub fn random(be: &B, config: LlamaConfig, seed: u64, format: WeightFormat) -> Result<Self> {
        Self::random_with(be, config, seed, format, format)
    }

    /// [`Llama::random`] with the attention and MLP projections stored as `projections` (QLoRA:
    /// NF4, each matrix quantized as it is drawn) and the embedding and output projection as
    /// `format`. The values drawn are the same whatever the formats.
    pub fn random_with(
        be: &B,
        config: LlamaConfig,
        seed: u64,
        format: WeightFormat,
        projections: WeightFormat,
    ) -> Result<Self> {
        config.validate(std::path::Path::new("(preset)"))?;
        let c = &config;
        let mut rng = Rng::new(seed);
        let mut matrix = |rows: usize, cols: usize, format: WeightFormat| -> Result<Linear<B>> {
            Ok(Linear::new(be, be.weight(&normal(&mut rng, rows * cols, 0.02), rows, cols, format)?))
        };
        let mut linear = |rows: usize, cols: usize| matrix(rows, cols, projections);
        let norm = || -> Result<RmsNorm<B>> {
            Ok(RmsNorm { weight: be.from_host(&vec![1.0; c.dim])?, dim: c.dim, eps: c.norm_eps, state: None })
        };
        let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let mut layers = Vec::with_capacity(c.n_layers);
        for _ in 0..c.n_layers {
            layers.push(DecoderLayer {
                attn_norm: norm()?,
                attn: Attention {
                    wq: linear(q, c.dim)?,
                    wk: linear(kv, c.dim)?,
                    wv: linear(kv, c.dim)?,
                    wo: linear(c.dim, q)?,
                    n_heads: c.n_heads,
                    n_kv_heads: c.n_kv_heads,
                    head_dim: c.head_dim,
                },
                mlp_norm: norm()?,
                mlp: Mlp {
                    gate: linear(c.ffn_dim, c.dim)?,
                    up: linear(c.ffn_dim, c.dim)?,
                    down: linear(c.dim, c.ffn_dim)?,
                    ffn_dim: c.ffn_dim,
                },
            });
        }
        let embed = matrix(c.vocab_size, c.dim, format)?.weight;
        let output = if c.tie_embeddings { None } else { Some(matrix(c.vocab_size, c.dim, format)?) };
        let norm = norm()?;
        let inv_freq = c.inv_freq();
        Ok(Llama { config, embed, embed_state: None, layers, norm, output, inv_freq, train_buffers: None })
    }
}
