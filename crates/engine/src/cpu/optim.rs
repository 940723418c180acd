//! Optimiser-side kernels: AdamW, sum of squares (gradient clipping) and hashed dropout.

use rayon::prelude::*;

use crate::backend::AdamW;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// One AdamW step, in the order `torch.optim.AdamW` computes it.
pub fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], hp: &AdamW) {
    let crate::backend::AdamWScalars { decay, step_size, bc2_sqrt } = hp.scalars();
    let (b1, b2, eps) = (hp.beta1, hp.beta2, hp.eps);
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for i in 0..p.len() {
                p[i] *= decay;
                m[i] += (g[i] - m[i]) * (1.0 - b1);
                v[i] = v[i] * b2 + (1.0 - b2) * g[i] * g[i];
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        });
}

/// `Σ x²` in f64. Partial sums are added in a fixed order, so the result does not depend on
/// how rayon splits the work (training must be bit-for-bit reproducible).
pub fn sum_squares(x: &[f32]) -> f64 {
    let partials: Vec<f64> =
        x.par_chunks(CHUNK).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).collect();
    partials.iter().sum()
}

/// A uniform value in `[0, 1)` from `(seed, i)` (splitmix64 finaliser).
pub fn hash_uniform(seed: u64, i: u64) -> f32 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

/// Inverted dropout with a hashed mask.
pub fn dropout(x: &[f32], out: &mut [f32], p: f32, seed: u64) {
    let scale = 1.0 / (1.0 - p);
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        let base = c * CHUNK;
        for (j, o) in o.iter_mut().enumerate() {
            let i = base + j;
            *o = if hash_uniform(seed, i as u64) < p { 0.0 } else { x[i] * scale };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_keeps_about_one_minus_p_and_rescales() {
        let x = vec![1.0f32; 100_000];
        let mut out = vec![0.0f32; x.len()];
        dropout(&x, &mut out, 0.25, 9);
        let kept = out.iter().filter(|&&v| v != 0.0).count() as f64 / x.len() as f64;
        assert!((kept - 0.75).abs() < 0.01, "{kept}");
        assert!(out.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let mut again = vec![0.0f32; x.len()];
        dropout(&x, &mut again, 0.25, 9);
        assert_eq!(out, again);
    }
}
