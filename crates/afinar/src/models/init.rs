//! Random initialisation from a configuration alone (presets, benchmarks): weights from
//! `N(0, 0.02²)` like transformers' `initializer_range`, norm gains 1.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

use afinar_engine::{Backend, WeightFormat};

use super::build::{build, WeightSource};
use super::{Llama, LlamaConfig};
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

/// Random initialisation as a [`WeightSource`]: every matrix drawn from `N(0, 0.02²)` in the
/// order the builder asks for it (one draw of the seed per matrix), every norm gain 1.
struct RandomSource {
    rng: RefCell<Rng>,
}

impl WeightSource for RandomSource {
    fn file(&self) -> &Path {
        Path::new("(random initialisation)")
    }
    fn has(&self, _hf_name: &str) -> bool {
        true
    }
    fn load(&self, _hf_name: &str, shape: &[usize]) -> Result<(Vec<usize>, Vec<f32>)> {
        let n = shape.iter().product();
        let values = match shape.len() {
            1 => vec![1.0; n],
            _ => normal(&mut self.rng.borrow_mut(), n, 0.02),
        };
        Ok((shape.to_vec(), values))
    }
    fn unused(&self, _used: &BTreeSet<String>) -> Vec<String> {
        Vec::new()
    }
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
        config.validate(Path::new("(preset)"))?;
        let inv_freq = config.inv_freq();
        let src = RandomSource { rng: RefCell::new(Rng::new(seed)) };
        build(be, config, inv_freq, &src, format, projections)
    }
}
