//! Random initialisation from a configuration alone (presets, benchmarks): weights from
//! `N(0, 0.02²)` like transformers' `initializer_range`, norm gains 1.

use afinar_engine::{Backend, WeightFormat};

use super::{Llama, LlamaConfig};
use crate::blocks::{Attention, DecoderLayer, Linear, Mlp, RmsNorm};
use crate::generate::Rng;
use crate::Result;

/// `n` values from N(0, std²). The matrix takes one draw of `rng` as its seed and fills chunks of
/// 64Ki values from seeds derived from it, in parallel: the values depend only on the seed, not
/// on the number of threads (a Llama-3.2-1B-shaped model initialises in seconds, not a minute).
fn normal(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let seed = rng.next_u64();
    let mut out = vec![0f32; n];
    let fill = |c: usize, dst: &mut [f32]| {
        let mut r = Rng::new(seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for v in dst {
            // Box-Muller
            let u1 = r.next_f64().max(f64::MIN_POSITIVE);
            let u2 = r.next_f64();
            *v = ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32;
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(n.div_ceil(CHUNK)).max(1);
    let chunks: Vec<(usize, &mut [f32])> = out.chunks_mut(CHUNK).enumerate().collect();
    let per = chunks.len().div_ceil(threads).max(1);
    let mut groups: Vec<Vec<(usize, &mut [f32])>> = Vec::new();
    let mut it = chunks.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(per).collect());
    }
    std::thread::scope(|s| {
        for g in groups {
            s.spawn(move || g.into_iter().for_each(|(c, d)| fill(c, d)));
        }
    });
    out
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
        Ok(Llama::from_parts(config, embed, layers, norm, output, inv_freq))
    }
}
