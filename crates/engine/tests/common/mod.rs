//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

/// A small deterministic generator (SplitMix64) so the tests need no extra crates.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `max |a − b| / max |b|`.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// Same for f32 data, computed in f64.
pub fn rel_err32(a: &[f32], b: &[f32]) -> f64 {
    let a: Vec<f64> = a.iter().map(|&x| x as f64).collect();
    let b: Vec<f64> = b.iter().map(|&x| x as f64).collect();
    rel_err(&a, &b)
}

/// Relative error of the whole vector, ‖a − b‖ / ‖b‖, computed in f64.
pub fn norm_err32(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n.max(1e-300)).sqrt()
}

/// Central finite differences of `f` at `x`, element by element.
pub fn numeric_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = xp[i];
            xp[i] = x0 + h;
            let fp = f(&xp);
            xp[i] = x0 - h;
            let fm = f(&xp);
            xp[i] = x0;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// Checks an analytic gradient against finite differences (relative error < 1e-6), and that
/// the gradient is not trivially zero.
#[track_caller]
pub fn check_grad(name: &str, x: &[f64], analytic: &[f64], f: impl Fn(&[f64]) -> f64) {
    let num = numeric_grad(x, f);
    let scale = num.iter().map(|y| y.abs()).fold(0.0, f64::max);
    assert!(scale > 1e-3, "{name}: numeric gradient is ~0 ({scale}); the test would be vacuous");
    let e = rel_err(analytic, &num);
    assert!(e < 1e-6, "{name}: relative error {e:e} vs finite differences");
}

/// `Σ r ∘ y`.
pub fn project(r: &[f64], y: &[f64]) -> f64 {
    r.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Like [`check_grad`] for a gradient that is legitimately zero (e.g. softmax over one element):
/// the analytic gradient must then be zero as well.
#[track_caller]
pub fn check_grad_maybe_zero(name: &str, x: &[f64], analytic: &[f64], f: impl Fn(&[f64]) -> f64) {
    let num = numeric_grad(x, f);
    let scale = num.iter().map(|y| y.abs()).fold(0.0, f64::max);
    if scale < 1e-9 {
        let a = analytic.iter().map(|y| y.abs()).fold(0.0, f64::max);
        assert!(a < 1e-12, "{name}: numeric gradient is 0, analytic max {a:e}");
    } else {
        let e = rel_err(analytic, &num);
        assert!(e < 1e-6, "{name}: relative error {e:e} vs finite differences");
    }
}

/// Says that the running test did not run (all or part of it) and why, as
/// `SKIPPED: <test>: <why>` on the process's real stderr: libtest captures only the
/// `print!`/`eprint!` macros, so this line shows in `cargo test`'s log even when the test passes.
pub fn skipped(why: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = std::io::stderr().write_all(format!("SKIPPED: {test}: {why}\n").as_bytes());
}

/// Says which implementation the running test exercised (a fast path picked at run time by the
/// CPU's features), as `PATH: <test>: <what>` on the real stderr, past libtest's capture.
pub fn tested_path(what: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = std::io::stderr().write_all(format!("PATH: {test}: {what}\n").as_bytes());
}

/// Plain-loop attention in f64 with an explicit mask and softmax.
pub fn naive_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    d: &afinar_engine::AttnDims,
    doc: Option<&[u32]>,
) -> (Vec<f64>, Vec<f64>) {
    let hd = d.head_dim;
    let grp = d.q_heads / d.kv_heads;
    let mut out = vec![0.0; afinar_engine::cpu::attention::q_elems(d)];
    let mut lse = vec![0.0; afinar_engine::cpu::attention::lse_elems(d)];
    for b in 0..d.batch {
        for h in 0..d.q_heads {
            let g = h / grp;
            for t in 0..d.q_len {
                let ta = d.q_offset + t;
                let qo = ((b * d.q_len + t) * d.q_heads + h) * hd;
                let mut scores = vec![f64::NEG_INFINITY; d.kv_len];
                for (s, sc) in scores.iter_mut().enumerate() {
                    let visible =
                        s <= ta && doc.is_none_or(|doc| doc[b * d.kv_len + s] == doc[b * d.kv_len + ta]);
                    if visible {
                        let ko = ((b * d.kv_stride + s) * d.kv_heads + g) * hd;
                        let dot: f64 = (0..hd).map(|i| q[qo + i] * k[ko + i]).sum();
                        *sc = dot * d.scale as f64;
                    }
                }
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                lse[(b * d.q_heads + h) * d.q_len + t] = m + z.ln();
                for (s, sc) in scores.iter().enumerate() {
                    let p = (sc - m).exp() / z;
                    let vo = ((b * d.kv_stride + s) * d.kv_heads + g) * hd;
                    for i in 0..hd {
                        out[qo + i] += p * v[vo + i];
                    }
                }
            }
        }
    }
    (out, lse)
}
