//! The knowledge distillation head (`Backend::linear_distill`, `cpu::distill`): the f64 kernel
//! against a naive f64 reference written from the definitions (full logits, explicit
//! distributions and mixture), its gradients against finite differences of that reference, the
//! CPU backend (f32) against the f64 kernel, teachers stored in bf16, NF4 and GGUF blocks, and
//! the errors of bad calls. torchtune parity is in `crates/afinar/tests/kd_parity.rs`.

mod common;

use afinar_engine::cpu::distill::linear_distill;
use afinar_engine::cpu::matmul::WeightRef;
use afinar_engine::{
    Backend, CpuBackend, DistillSpec, DistillSums, Divergence, EngineError, QuantFormat, WeightFormat,
};
use common::{check_grad, rel_err, rel_err32, Rng};

const ALL: [Divergence; 3] = [Divergence::ForwardKl, Divergence::ReverseKl, Divergence::Jsd];

fn spec(divergence: Divergence, temperature: f32, kd: f32, ce: f32) -> DistillSpec {
    DistillSpec { divergence, temperature, kd_grad_scale: kd, ce_grad_scale: ce }
}

/// Shapes and data of one problem: student `[rows, dim]` · `[vocab, dim]ᵀ`, teacher
/// `[rows, dim_t]` · `[vocab, dim_t]ᵀ`.
struct Problem {
    rows: usize,
    vocab: usize,
    dim: usize,
    dim_t: usize,
    hs: Vec<f64>,
    ws: Vec<f64>,
    ht: Vec<f64>,
    wt: Vec<f64>,
    targets: Vec<i32>,
}

impl Problem {
    fn new(rng: &mut Rng, rows: usize, vocab: usize, dim: usize, dim_t: usize) -> Self {
        let targets = (0..rows).map(|i| if i % 4 == 2 { -100 } else { rng.below(vocab) as i32 }).collect();
        Problem {
            rows,
            vocab,
            dim,
            dim_t,
            hs: rng.normals(rows * dim),
            ws: rng.normals(vocab * dim),
            ht: rng.normals(rows * dim_t),
            wt: rng.normals(vocab * dim_t),
            targets,
        }
    }

    /// The f64 kernel on `hs`, `ws`; gradients when asked.
    fn kernel(
        &self,
        hs: &[f64],
        ws: &[f64],
        s: &DistillSpec,
        dh: Option<&mut [f64]>,
        dw: Option<&mut [f64]>,
        chunk: usize,
    ) -> DistillSums {
        linear_distill(
            hs,
            WeightRef::Dense(ws),
            &self.ht,
            WeightRef::Dense(&self.wt),
            &self.targets,
            self.rows,
            self.vocab,
            self.dim,
            self.dim_t,
            s,
            dh,
            dw,
            chunk,
        )
    }
}

fn logits(h: &[f64], w: &[f64], rows: usize, vocab: usize, dim: usize) -> Vec<Vec<f64>> {
    (0..rows)
        .map(|r| (0..vocab).map(|v| (0..dim).map(|k| h[r * dim + k] * w[v * dim + k]).sum()).collect())
        .collect()
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter().zip(q).map(|(a, b)| a * (a / b).ln()).sum()
}

/// `(Σ kd, Σ ce, count)` from the definitions, on full logits.
fn naive(p: &Problem, hs: &[f64], ws: &[f64], d: Divergence, temp: f64) -> (f64, f64, usize) {
    let s = logits(hs, ws, p.rows, p.vocab, p.dim);
    let t = logits(&p.ht, &p.wt, p.rows, p.vocab, p.dim_t);
    let (mut kd, mut ce, mut n) = (0.0, 0.0, 0);
    for r in 0..p.rows {
        let y = p.targets[r];
        if y == -100 {
            continue;
        }
        let ps = softmax(&s[r].iter().map(|x| x / temp).collect::<Vec<_>>());
        let pt = softmax(&t[r].iter().map(|x| x / temp).collect::<Vec<_>>());
        kd += match d {
            Divergence::ForwardKl => -pt.iter().zip(&ps).map(|(a, b)| a * b.ln()).sum::<f64>(),
            Divergence::ReverseKl => kl(&ps, &pt),
            Divergence::Jsd => {
                let m: Vec<f64> = ps.iter().zip(&pt).map(|(a, b)| 0.5 * (a + b)).collect();
                0.5 * kl(&pt, &m) + 0.5 * kl(&ps, &m)
            }
        };
        ce -= softmax(&s[r])[y as usize].ln();
        n += 1;
    }
    (kd, ce, n)
}

#[test]
fn values_match_the_definitions_for_every_divergence_temperature_and_chunk() {
    let mut rng = Rng::new(0xD157);
    let p = Problem::new(&mut rng, 9, 13, 6, 4);
    for d in ALL {
        for temp in [1.0f32, 2.0, 0.5] {
            let (kd, ce, n) = naive(&p, &p.hs, &p.ws, d, temp as f64);
            assert_eq!(n, 7);
            for chunk in [1, 4, 9, 100] {
                let got = p.kernel(&p.hs, &p.ws, &spec(d, temp, 1.0, 0.0), None, None, chunk);
                assert_eq!(got.count, n);
                assert!(
                    (got.kd - kd).abs() < 1e-12 * kd.abs().max(1.0),
                    "{d:?} T={temp}: {} vs {kd}",
                    got.kd
                );
                assert!((got.ce - ce).abs() < 1e-12 * ce.abs(), "{d:?} T={temp} ce");
            }
            // The same sums when gradients are asked for.
            let mut dh = vec![0.0; p.rows * p.dim];
            let got = p.kernel(&p.hs, &p.ws, &spec(d, temp, 0.3, 0.7), Some(&mut dh), None, 4);
            assert!((got.kd - kd).abs() < 1e-12 * kd.abs().max(1.0));
        }
    }
    // KL(pT ‖ pS) = forward value − H(pT): the reverse and JSD are non-negative, the forward
    // value at least the teacher's entropy.
    let same = Problem { ws: p.wt.clone(), hs: p.ht.clone(), dim: p.dim_t, ..p };
    for d in [Divergence::ReverseKl, Divergence::Jsd] {
        let got = same.kernel(&same.hs, &same.ws, &spec(d, 1.5, 1.0, 0.0), None, None, 4);
        assert!(got.kd.abs() < 1e-12, "{d:?} of a distribution with itself: {}", got.kd);
    }
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = Rng::new(0x6AD);
    let p = Problem::new(&mut rng, 6, 7, 5, 3);
    for d in ALL {
        for (temp, kd_s, ce_s) in [(1.0f32, 0.5f32, 0.5f32), (2.0, 0.8, 0.0), (0.7, 1.0, 0.25)] {
            let s = spec(d, temp, kd_s, ce_s);
            let obj = |hs: &[f64], ws: &[f64]| {
                let (kd, ce, _) = naive(&p, hs, ws, d, temp as f64);
                kd_s as f64 * kd + ce_s as f64 * ce
            };
            for chunk in [1, 4] {
                let mut dh = vec![f64::NAN; p.rows * p.dim];
                let base = rng.normals(p.vocab * p.dim);
                let mut dw = base.clone();
                p.kernel(&p.hs, &p.ws, &s, Some(&mut dh), Some(&mut dw), chunk);
                dw.iter_mut().zip(&base).for_each(|(g, b)| *g -= b);
                let name = format!("{d:?} T={temp} kd={kd_s} ce={ce_s} chunk={chunk}");
                check_grad(&format!("{name} dh"), &p.hs, &dh, |h| obj(h, &p.ws));
                check_grad(&format!("{name} dw"), &p.ws, &dw, |w| obj(&p.hs, w));
                // Ignored rows get a zero gradient.
                for r in (0..p.rows).filter(|&r| p.targets[r] == -100) {
                    assert!(dh[r * p.dim..(r + 1) * p.dim].iter().all(|&g| g == 0.0));
                }
            }
            // Only dw.
            let mut dw = vec![0.0; p.vocab * p.dim];
            p.kernel(&p.hs, &p.ws, &s, None, Some(&mut dw), 2);
            check_grad(&format!("{d:?} T={temp} dw only"), &p.ws, &dw, |w| obj(&p.hs, w));
        }
    }
}

fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

#[test]
fn cpu_backend_matches_the_f64_kernel() {
    let be = CpuBackend::new(None);
    let mut rng = Rng::new(0xF32);
    // Several chunks of the backend (64 rows each for this vocabulary), the last one partial.
    let (rows, vocab, dim, dim_t) = (150, 4100, 16, 24);
    assert_eq!(afinar_engine::cpu::distill::default_chunk_rows(vocab), 64);
    let mut p = Problem::new(&mut rng, rows, vocab, dim, dim_t);
    // f32 inputs exactly: the f64 reference then sees the same values.
    for v in [&mut p.hs, &mut p.ws, &mut p.ht, &mut p.wt] {
        v.iter_mut().for_each(|x| *x = (*x * 0.5) as f32 as f64);
    }
    let ws = be.weight(&f32s(&p.ws), vocab, dim, WeightFormat::F32).unwrap();
    let wt = be.weight(&f32s(&p.wt), vocab, dim_t, WeightFormat::F32).unwrap();
    let (hs, ht) = (f32s(&p.hs), f32s(&p.ht));
    for d in ALL {
        let s = spec(d, 1.5, 0.25, 0.5);
        let mut dh64 = vec![0.0; rows * dim];
        let mut dw64 = vec![0.0; vocab * dim];
        let want = p.kernel(&p.hs, &p.ws, &s, Some(&mut dh64), Some(&mut dw64), 7);
        let mut dh = vec![0.0; rows * dim];
        let mut dw = vec![0.0; vocab * dim];
        let got = be
            .linear_distill(&hs, &ws, &ht, &wt, &p.targets, rows, &s, Some(&mut dh), Some(&mut dw))
            .unwrap();
        assert_eq!(got.count, want.count);
        assert!((got.kd - want.kd).abs() < 1e-4 * want.kd.abs(), "{d:?} kd {} vs {}", got.kd, want.kd);
        assert!((got.ce - want.ce).abs() < 1e-5 * want.ce.abs(), "{d:?} ce");
        assert!(rel_err32(&dh, &f32s(&dh64)) < 1e-4, "{d:?} dh {}", rel_err32(&dh, &f32s(&dh64)));
        assert!(rel_err32(&dw, &f32s(&dw64)) < 1e-4, "{d:?} dw");
        // Values only: the same sums.
        let alone = be.linear_distill(&hs, &ws, &ht, &wt, &p.targets, rows, &s, None, None).unwrap();
        assert_eq!((alone.kd, alone.ce, alone.count), (got.kd, got.ce, got.count));
    }
}

#[test]
fn teacher_weights_in_bf16_nf4_and_gguf_blocks() {
    let be = CpuBackend::new(None);
    let mut rng = Rng::new(0x7EAC);
    // dim_t a multiple of 64 (NF4 blocks) and different from the student's.
    let (rows, vocab, dim, dim_t) = (21, 300, 32, 128);
    let r = |rng: &mut Rng, n: usize, sc: f64| -> Vec<f32> {
        (0..n).map(|_| (rng.normal() * sc) as f32).collect()
    };
    let (hs, ws, ht, wt) = (
        r(&mut rng, rows * dim, 1.0),
        r(&mut rng, vocab * dim, 0.2),
        r(&mut rng, rows * dim_t, 1.0),
        r(&mut rng, vocab * dim_t, 0.2),
    );
    let targets: Vec<i32> =
        (0..rows).map(|i| if i % 5 == 1 { -100 } else { rng.below(vocab) as i32 }).collect();
    let ws = be.weight(&ws, vocab, dim, WeightFormat::F32).unwrap();
    for format in [
        WeightFormat::BF16,
        WeightFormat::Quant(QuantFormat::Nf4),
        WeightFormat::Quant(QuantFormat::Q8_0),
        WeightFormat::Quant(QuantFormat::Q4_0),
        WeightFormat::Quant(QuantFormat::Q4_1),
    ] {
        let stored = be.weight(&wt, vocab, dim_t, format).unwrap();
        // The same values the format holds, as an f32 weight: the reference.
        let values = be.weight_to_host(&stored).unwrap();
        assert!(rel_err32(&values, &wt) > 1e-4, "{format:?} should round the weight");
        let dense = be.weight(&values, vocab, dim_t, WeightFormat::F32).unwrap();
        for d in ALL {
            let s = spec(d, 2.0, 1.0, 0.5);
            let mut dh_q = vec![0.0; rows * dim];
            let mut dh_d = vec![0.0; rows * dim];
            let q =
                be.linear_distill(&hs, &ws, &ht, &stored, &targets, rows, &s, Some(&mut dh_q), None).unwrap();
            let f =
                be.linear_distill(&hs, &ws, &ht, &dense, &targets, rows, &s, Some(&mut dh_d), None).unwrap();
            assert_eq!(q.count, f.count);
            assert!((q.kd - f.kd).abs() < 1e-5 * f.kd.abs(), "{format:?} {d:?}: kd {} vs {}", q.kd, f.kd);
            assert_eq!(q.ce, f.ce, "{format:?}: the student's cross-entropy does not see the teacher");
            let e = rel_err32(&dh_q, &dh_d);
            assert!(e < 1e-5, "{format:?} {d:?}: dh differs by {e:e}");
        }
    }
    // A bf16 student head (LoRA: the head is frozen) with a quantized teacher.
    let ws16 = be.weight(&be.weight_to_host(&ws).unwrap(), vocab, dim, WeightFormat::BF16).unwrap();
    let wt4 = be.weight(&wt, vocab, dim_t, WeightFormat::Quant(QuantFormat::Q4_0)).unwrap();
    let s = spec(Divergence::ForwardKl, 1.0, 1.0, 0.0);
    let mut dh = vec![0.0; rows * dim];
    let got = be.linear_distill(&hs, &ws16, &ht, &wt4, &targets, rows, &s, Some(&mut dh), None).unwrap();
    assert!(got.kd.is_finite() && dh.iter().any(|&g| g != 0.0));
}

#[test]
fn all_rows_ignored_and_no_rows() {
    let be = CpuBackend::new(None);
    let (rows, vocab, dim) = (3, 40, 8);
    let ws = be.weight(&vec![0.1; vocab * dim], vocab, dim, WeightFormat::F32).unwrap();
    let wt = be.weight(&vec![0.2; vocab * dim], vocab, dim, WeightFormat::F32).unwrap();
    let h: Vec<f32> = (0..rows * dim).map(|i| i as f32 * 0.1).collect();
    let mut dh = vec![7.0; rows * dim];
    let mut dw = vec![1.0; vocab * dim];
    let s = spec(Divergence::Jsd, 1.0, 1.0, 1.0);
    let got =
        be.linear_distill(&h, &ws, &h, &wt, &[-100; 3], rows, &s, Some(&mut dh), Some(&mut dw)).unwrap();
    assert_eq!(got, DistillSums { kd: 0.0, ce: 0.0, count: 0 });
    assert!(dh.iter().all(|&g| g == 0.0), "dh is overwritten with zeros");
    assert!(dw.iter().all(|&g| g == 1.0), "dw accumulates nothing");
    let got = be.linear_distill(&h, &ws, &h, &wt, &[], 0, &s, Some(&mut dh), None).unwrap();
    assert_eq!(got.count, 0);
}

fn shape_err(r: afinar_engine::Result<DistillSums>, want: &str) {
    match r {
        Err(EngineError::Shape { op: "linear_distill", what }) => {
            assert!(what.contains(want), "error {what:?} should mention {want:?}")
        }
        other => panic!("expected a linear_distill shape error mentioning {want:?}, got {other:?}"),
    }
}

#[test]
fn bad_calls_are_refused_with_a_reason() {
    let be = CpuBackend::new(None);
    let (rows, vocab, dim) = (2, 10, 4);
    let ws = be.weight(&vec![0.1; vocab * dim], vocab, dim, WeightFormat::F32).unwrap();
    let wt = be.weight(&vec![0.1; vocab * 6], vocab, 6, WeightFormat::F32).unwrap();
    let wt_other = be.weight(&vec![0.1; 11 * 6], 11, 6, WeightFormat::F32).unwrap();
    let (hs, ht) = (vec![0.5; rows * dim], vec![0.5; rows * 6]);
    let ok = spec(Divergence::ForwardKl, 1.0, 1.0, 0.0);
    let t = [1, -100];
    assert!(be.linear_distill(&hs, &ws, &ht, &wt, &t, rows, &ok, None, None).is_ok());
    shape_err(be.linear_distill(&hs, &ws, &ht, &wt_other, &t, rows, &ok, None, None), "same vocabulary");
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let s = spec(Divergence::Jsd, bad, 1.0, 0.0);
        shape_err(be.linear_distill(&hs, &ws, &ht, &wt, &t, rows, &s, None, None), "temperature");
    }
    let s = spec(Divergence::Jsd, 1.0, f32::NAN, 0.0);
    shape_err(be.linear_distill(&hs, &ws, &ht, &wt, &t, rows, &s, None, None), "kd_grad_scale");
    shape_err(be.linear_distill(&hs, &ws, &ht, &wt, &[1, 10], rows, &ok, None, None), "target 10");
    shape_err(be.linear_distill(&hs, &ws, &ht, &wt, &[1], rows, &ok, None, None), "targets");
    shape_err(be.linear_distill(&hs, &ws, &hs, &wt, &t, rows, &ok, None, None), "ht has 8");
    shape_err(be.linear_distill(&hs[..7].to_vec(), &ws, &ht, &wt, &t, rows, &ok, None, None), "hs");
    let mut short = vec![0.0; 7];
    shape_err(be.linear_distill(&hs, &ws, &ht, &wt, &t, rows, &ok, Some(&mut short), None), "dh");
    shape_err(be.linear_distill(&hs, &ws, &ht, &wt, &t, rows, &ok, None, Some(&mut short)), "dw");
}

#[test]
fn forward_kl_is_the_cross_entropy_under_the_teacher() {
    // With a one-hot-like teacher (huge logit gap) the forward value approaches the student's
    // cross-entropy against the teacher's argmax: a check independent of the reference above.
    let mut rng = Rng::new(5);
    let mut p = Problem::new(&mut rng, 4, 6, 3, 1);
    p.ht = vec![1.0; 4];
    p.wt = (0..6).map(|v| if v == 2 { 100.0 } else { 0.0 }).collect();
    p.targets = vec![2; 4];
    let got = p.kernel(&p.hs, &p.ws, &spec(Divergence::ForwardKl, 1.0, 1.0, 0.0), None, None, 2);
    assert!(rel_err(&[got.kd], &[got.ce]) < 1e-12, "{} vs {}", got.kd, got.ce);
}
