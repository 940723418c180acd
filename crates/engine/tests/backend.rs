//! The CPU backend's memory operations, shape checking (every method returns
//! `EngineError::Shape` on a short buffer or bad index instead of panicking) and edge cases.

mod common;

use afinar_engine::{AttnDims, Backend, CpuBackend, EngineError, HalfFormat, Products, Result, WeightFormat};
use common::{rel_err32, Rng};

fn f32s(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

#[track_caller]
fn shape_err<T: std::fmt::Debug>(r: Result<T>) {
    match r {
        Err(EngineError::Shape { .. }) => {}
        other => panic!("expected a shape error, got {other:?}"),
    }
}

#[test]
fn memory_operations() {
    let be = CpuBackend::new(Some(2));
    assert_eq!(be.threads(), 2);
    assert!(be.name().starts_with("cpu (2 threads"), "{}", be.name());
    assert!(CpuBackend::default().threads() >= 1);
    let z = be.zeros(5).unwrap();
    assert_eq!((be.len(&z), be.to_host(&z).unwrap()), (5, vec![0.0; 5]));
    let a = be.from_host(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    let mut b = be.zeros(6).unwrap();
    be.copy(&a, 1, &mut b, 2, 3).unwrap();
    assert_eq!(b, [0.0, 0.0, 2.0, 3.0, 4.0, 0.0]);
    be.fill(&mut b, 2, 7.0).unwrap();
    assert_eq!(b, [7.0, 7.0, 2.0, 3.0, 4.0, 0.0]);
    shape_err(be.copy(&a, 2, &mut b, 0, 3));
    shape_err(be.copy(&a, 0, &mut b, 4, 3));
    shape_err(be.copy(&a, usize::MAX, &mut b, 0, 3));
    shape_err(be.fill(&mut b, 7, 0.0));

    let data = [1.0f32, -2.5, 3.3, 1e-3, 65504.0, -0.0];
    let w = be.weight(&data, 2, 3, WeightFormat::F32).unwrap();
    assert_eq!(be.weight_shape(&w), (2, 3));
    assert_eq!(w.format(), WeightFormat::F32);
    assert_eq!(be.weight_to_host(&w).unwrap(), data);
    let wb = be.weight(&data, 3, 2, WeightFormat::BF16).unwrap();
    assert_eq!(be.weight_shape(&wb), (3, 2));
    assert_eq!(wb.format(), WeightFormat::BF16);
    let back = be.weight_to_host(&wb).unwrap();
    for (x, y) in back.iter().zip(&data) {
        assert_eq!(*x, half::bf16::from_f32(*y).to_f32());
    }
    shape_err(be.weight(&data, 2, 2, WeightFormat::F32));
    shape_err(be.weight(&data, 4, 2, WeightFormat::BF16));
}

#[test]
fn half_buffers_round_to_nearest_even() {
    let be = CpuBackend::new(Some(2));
    let mut rng = Rng::new(16);
    // Long enough to be split over the threads; special values at both ends.
    let n = 300_001;
    let mut x = f32s(&mut rng, n);
    let special = [7.0e4, -1.0e5, 3.0e-6, 1.0e-8, f32::INFINITY, -0.0, 1.0 + 1.0 / 512.0];
    x[..special.len()].copy_from_slice(&special);
    x[n - special.len()..].copy_from_slice(&special);
    for format in [HalfFormat::Bf16, HalfFormat::F16] {
        let mut h = be.zeros_half(n + 2, format).unwrap();
        assert_eq!(be.half_shape(&h), (n + 2, format));
        be.to_half(&x, 0, &mut h, 1, n).unwrap();
        let mut back = be.zeros(n + 2).unwrap();
        be.from_half(&h, 0, &mut back, 0, n + 2).unwrap();
        assert_eq!((back[0], back[n + 1]), (0.0, 0.0), "{format:?}: outside the written range");
        for (i, (&y, &v)) in back[1..=n].iter().zip(&x).enumerate() {
            let want = match format {
                HalfFormat::Bf16 => half::bf16::from_f32(v).to_f32(),
                HalfFormat::F16 => half::f16::from_f32(v).to_f32(),
            };
            assert_eq!(y.to_bits(), want.to_bits(), "{format:?} element {i}: {v} -> {y}, want {want}");
        }
        // Ties go to even: 1 + 2^-9 is halfway between two bf16 values.
        if format == HalfFormat::Bf16 {
            assert_eq!(back[special.len()], 1.0);
        } else {
            assert_eq!(back[1], f32::INFINITY);
        }
        shape_err(be.to_half(&x, 1, &mut h, 0, n));
        shape_err(be.to_half(&x, 0, &mut h, 3, n));
        shape_err(be.from_half(&h, 3, &mut back, 0, n));
        shape_err(be.from_half(&h, 0, &mut back, 3, n));
    }
}

#[test]
fn linear_family_shape_errors() {
    let be = CpuBackend::new(Some(2));
    let w = be.weight(&[0.0; 12], 3, 4, WeightFormat::F32).unwrap();
    let x = vec![0.0; 8]; // 2 rows of 4
    let mut y = vec![0.0; 6];
    be.linear(&x, &w, &mut y, 2, false).unwrap();
    shape_err(be.linear(&x, &w, &mut y, 3, false));
    shape_err(be.linear(&x, &w, &mut vec![0.0; 5], 2, false));
    let mut dx = vec![0.0; 8];
    be.linear_backward_input(&y, &w, &mut dx, 2, false).unwrap();
    shape_err(be.linear_backward_input(&y, &w, &mut vec![0.0; 7], 2, false));
    shape_err(be.linear_backward_input(&vec![0.0; 5], &w, &mut dx, 2, false));
    let mut c = vec![0.0; 6];
    be.matmul(&x, false, &w.as_ref_dense(), true, &mut c, 2, 3, 4, 1.0, 0.0).unwrap();
    shape_err(be.matmul(&x, false, &x, true, &mut c, 2, 3, 4, 1.0, 0.0));
    shape_err(be.matmul(&x, false, &vec![0.0; 12], true, &mut c, 3, 3, 4, 1.0, 0.0));
    shape_err(be.matmul(&x, false, &vec![0.0; 12], true, &mut c, 2, 4, 4, 1.0, 0.0));
    shape_err(be.matmul(&x, false, &x, false, &mut c, usize::MAX, 2, 2, 1.0, 0.0));
    shape_err(be.add_assign(&mut c, &x, 7));
    shape_err(be.add_assign(&mut vec![0.0; 9], &x, 9));
    shape_err(be.scale(&mut c, 7, 2.0));
    let mut dw = vec![0.0; 12];
    be.linear_backward_weight(&y, &x, &mut dw, 2, 3, 4, Products::F32, true).unwrap();
    shape_err(be.linear_backward_weight(&y, &x, &mut vec![0.0; 11], 2, 3, 4, Products::F32, true));
    shape_err(be.linear_backward_weight(&y, &x, &mut dw, 3, 3, 4, Products::Bf16, false));
    shape_err(be.linear_backward_weight(&vec![0.0; 5], &x, &mut dw, 2, 3, 4, Products::F32, true));
}

/// The weight gradient `dw (+)= dyᵀ x`: overwriting ignores the old contents (NaN included),
/// accumulating adds to them, both against a sum written out in f64; over no rows it is zero
/// (or leaves `dw` as it was). Products::Bf16 is f32 here unless the CPU has AMX (the mixed
/// path is checked in fast_linear).
#[test]
fn linear_backward_weight_overwrites_or_accumulates() {
    let be = CpuBackend::new(Some(2));
    let mut rng = Rng::new(17);
    let (rows, out, inp) = (5, 3, 7);
    let (dy, x) = (f32s(&mut rng, rows * out), f32s(&mut rng, rows * inp));
    let want: Vec<f32> = (0..out * inp)
        .map(|i| {
            (0..rows).map(|r| f64::from(dy[r * out + i / inp]) * f64::from(x[r * inp + i % inp])).sum::<f64>()
                as f32
        })
        .collect();
    let mut dw = vec![f32::NAN; out * inp];
    be.linear_backward_weight(&dy, &x, &mut dw, rows, out, inp, Products::F32, false).unwrap();
    assert!(rel_err32(&dw, &want) < 1e-6, "overwrite: {}", rel_err32(&dw, &want));
    be.linear_backward_weight(&dy, &x, &mut dw, rows, out, inp, Products::Bf16, true).unwrap();
    let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
    assert!(rel_err32(&dw, &twice) < 1e-6, "accumulate: {}", rel_err32(&dw, &twice));
    let mut nan = vec![f32::NAN; out * inp];
    be.linear_backward_weight(&dy, &x, &mut nan, 0, out, inp, Products::F32, false).unwrap();
    assert!(nan.iter().all(|&v| v == 0.0), "no rows, overwrite: {nan:?}");
    be.linear_backward_weight(&dy, &x, &mut dw, 0, out, inp, Products::F32, true).unwrap();
    assert!(rel_err32(&dw, &twice) < 1e-6, "no rows, accumulate");
}

/// Test-only access to an f32 weight's data as a buffer.
trait DenseData {
    fn as_ref_dense(&self) -> Vec<f32>;
}

impl DenseData for afinar_engine::cpu::CpuWeight {
    fn as_ref_dense(&self) -> Vec<f32> {
        match self.data() {
            afinar_engine::cpu::CpuWeightData::F32(d) => d.clone(),
            _ => unreachable!("f32 weight expected"),
        }
    }
}

#[test]
fn layer_shape_errors() {
    let be = CpuBackend::new(Some(2));
    let table = be.weight(&[0.5; 20], 5, 4, WeightFormat::F32).unwrap();
    let mut out = vec![0.0; 8];
    be.embedding(&[1, 4], &table, &mut out).unwrap();
    shape_err(be.embedding(&[1, 5], &table, &mut out));
    shape_err(be.embedding(&[1, 2, 3], &table, &mut out));
    let mut dt = vec![0.0; 20];
    be.embedding_backward(&[1, 4], &out, &mut dt, 4).unwrap();
    shape_err(be.embedding_backward(&[1, 5], &out, &mut dt, 4));
    shape_err(be.embedding_backward(&[1, 2, 3], &out, &mut dt, 4));
    shape_err(be.embedding_backward(&[1], &out, &mut dt, 0));

    let x = vec![1.0; 8];
    let w = vec![1.0; 4];
    let (mut o, mut rstd) = (vec![0.0; 8], vec![0.0; 2]);
    be.rmsnorm(&x, &w, &mut o, &mut rstd, 2, 4, 1e-5).unwrap();
    shape_err(be.rmsnorm(&x, &w, &mut o, &mut rstd, 3, 4, 1e-5));
    shape_err(be.rmsnorm(&x, &w, &mut o, &mut rstd, 2, 5, 1e-5));
    shape_err(be.rmsnorm(&x, &w, &mut o, &mut vec![0.0; 1], 2, 4, 1e-5));
    let mut dx = vec![0.0; 8];
    be.rmsnorm_backward(&o, &x, &w, &rstd, &mut dx, Some(&mut vec![0.0; 4]), 2, 4, false).unwrap();
    shape_err(be.rmsnorm_backward(&o, &x, &w, &rstd, &mut dx, Some(&mut vec![0.0; 3]), 2, 4, false));
    shape_err(be.rmsnorm_backward(&o, &x, &w, &vec![0.0; 1], &mut dx, None, 2, 4, false));
    shape_err(be.rmsnorm_backward(&o, &x, &w, &rstd, &mut vec![0.0; 7], None, 2, 4, false));

    let mut q = vec![1.0; 2 * 3 * 4];
    let inv = [1.0, 0.5];
    be.rope(&mut q, &[0, 1], &inv, 2, 3, 4, false).unwrap();
    shape_err(be.rope(&mut q, &[0], &inv, 2, 3, 4, false));
    shape_err(be.rope(&mut q, &[0, 1], &inv[..1], 2, 3, 4, false));
    shape_err(be.rope(&mut q, &[0, 1], &inv, 2, 4, 4, false));
    shape_err(be.rope(&mut q, &[0, 1], &inv, 2, 3, 3, false));

    let (g, u) = (vec![0.1; 6], vec![0.2; 6]);
    let mut so = vec![0.0; 6];
    be.swiglu(&g, &u, &mut so, 6).unwrap();
    shape_err(be.swiglu(&g, &u, &mut vec![0.0; 5], 6));
    shape_err(be.swiglu(&g, &vec![0.0; 5], &mut so, 6));
    let (mut dg, mut du) = (vec![0.0; 6], vec![0.0; 6]);
    be.swiglu_backward(&so, &g, &u, &mut dg, &mut du, 6).unwrap();
    shape_err(be.swiglu_backward(&so, &g, &u, &mut dg, &mut vec![0.0; 5], 6));
    shape_err(be.swiglu_backward(&vec![0.0; 5], &g, &u, &mut dg, &mut du, 6));

    let logits = vec![0.0; 2 * 5];
    let mut losses = vec![0.0; 2];
    be.cross_entropy(&logits, &[1, -100], &mut losses, None, 2, 5, 1.0).unwrap();
    shape_err(be.cross_entropy(&logits, &[1, 5], &mut losses, None, 2, 5, 1.0));
    shape_err(be.cross_entropy(&logits, &[1, -1], &mut losses, None, 2, 5, 1.0));
    shape_err(be.cross_entropy(&logits, &[1], &mut losses, None, 2, 5, 1.0));
    shape_err(be.cross_entropy(&logits, &[1, 2], &mut losses, Some(&mut vec![0.0; 9]), 2, 5, 1.0));
    shape_err(be.cross_entropy(&logits, &[1, 2], &mut vec![0.0; 1], None, 2, 5, 1.0));
    shape_err(be.cross_entropy(&logits, &[1, 2, 3], &mut losses, None, 3, 5, 1.0));

    let lm = be.weight(&[0.1; 20], 5, 4, WeightFormat::F32).unwrap();
    let h = vec![1.0; 8];
    be.linear_cross_entropy(&h, &lm, &[0, 4], 2, 1.0, None, None).unwrap();
    shape_err(be.linear_cross_entropy(&h, &lm, &[0, 5], 2, 1.0, None, None));
    shape_err(be.linear_cross_entropy(&h, &lm, &[0], 2, 1.0, None, None));
    shape_err(be.linear_cross_entropy(&h, &lm, &[0, 1, 2], 3, 1.0, None, None));
    shape_err(be.linear_cross_entropy(&h, &lm, &[0, 1], 2, 1.0, Some(&mut vec![0.0; 7]), None));
    shape_err(be.linear_cross_entropy(&h, &lm, &[0, 1], 2, 1.0, None, Some(&mut vec![0.0; 19])));
}

fn small_dims() -> AttnDims {
    AttnDims {
        batch: 2,
        q_len: 3,
        kv_len: 4,
        kv_stride: 5,
        q_heads: 4,
        kv_heads: 2,
        head_dim: 4,
        q_offset: 1,
        scale: 0.5,
    }
}

#[test]
fn attention_shape_errors() {
    let be = CpuBackend::new(Some(2));
    let d = small_dims();
    let nq = 2 * 3 * 4 * 4;
    let nkv = 2 * 5 * 2 * 4;
    let nl = 2 * 4 * 3;
    let mut rng = Rng::new(1);
    let (q, k, v) = (f32s(&mut rng, nq), f32s(&mut rng, nkv), f32s(&mut rng, nkv));
    let (mut o, mut l) = (vec![0.0; nq], vec![0.0; nl]);
    be.attention(&q, &k, &v, &mut o, &mut l, &d, None).unwrap();
    let bad = |f: &dyn Fn(&mut AttnDims)| {
        let mut d2 = d;
        f(&mut d2);
        d2
    };
    for d2 in [
        bad(&|d| d.q_heads = 3),
        bad(&|d| d.kv_heads = 0),
        bad(&|d| d.kv_len = 6),
        bad(&|d| d.batch = 3),
        bad(&|d| d.head_dim = 5),
        bad(&|d| d.q_len = 4),
    ] {
        let (mut o, mut l) = (vec![0.0; nq], vec![0.0; nl]);
        shape_err(be.attention(&q, &k, &v, &mut o, &mut l, &d2, None));
        let (mut dq, mut dk, mut dv) = (vec![0.0; nq], vec![0.0; nkv], vec![0.0; nkv]);
        shape_err(be.attention_backward(&q, &q, &k, &v, &o, &l, &mut dq, &mut dk, &mut dv, &d2, None));
    }
    shape_err(be.attention(&q, &k, &v, &mut o, &mut vec![0.0; nl - 1], &d, None));
    shape_err(be.attention(&q, &k[1..].to_vec(), &v, &mut o, &mut l, &d, None));
    // Document ids: one per valid key, and the queries must lie inside kv_len.
    shape_err(be.attention(&q, &k, &v, &mut o, &mut l, &d, Some(&[0; 7])));
    let past_end = AttnDims { kv_len: 3, ..d };
    shape_err(be.attention(&q, &k, &v, &mut o, &mut l, &past_end, Some(&[0; 8])));
    let (mut dq, mut dk, mut dv) = (vec![0.0; nq], vec![0.0; nkv], vec![0.0; nkv]);
    be.attention_backward(&q, &q, &k, &v, &o, &l, &mut dq, &mut dk, &mut dv, &d, None).unwrap();
    shape_err(be.attention_backward(
        &q,
        &q,
        &k,
        &v,
        &o,
        &l,
        &mut dq,
        &mut vec![0.0; nkv - 1],
        &mut dv,
        &d,
        None,
    ));
    shape_err(be.attention_backward(
        &q,
        &q,
        &k,
        &v,
        &o,
        &l[1..].to_vec(),
        &mut dq,
        &mut dk,
        &mut dv,
        &d,
        None,
    ));
}

/// The backward picks a different work split with 1 and with 3 threads; the results agree.
#[test]
fn attention_thread_counts_agree() {
    let d = AttnDims {
        batch: 1,
        q_len: 150,
        kv_len: 150,
        kv_stride: 160,
        q_heads: 4,
        kv_heads: 2,
        head_dim: 16,
        q_offset: 0,
        scale: 0.25,
    };
    let nq = d.batch * d.q_len * d.q_heads * d.head_dim;
    let nkv = d.batch * d.kv_stride * d.kv_heads * d.head_dim;
    let mut rng = Rng::new(2);
    let (q, k, v, dout) = (f32s(&mut rng, nq), f32s(&mut rng, nkv), f32s(&mut rng, nkv), f32s(&mut rng, nq));
    let run = |threads| {
        let be = CpuBackend::new(Some(threads));
        let (mut o, mut l) = (vec![0.0; nq], vec![0.0; d.q_heads * d.q_len]);
        be.attention(&q, &k, &v, &mut o, &mut l, &d, None).unwrap();
        let (mut dq, mut dk, mut dv) = (vec![0.0; nq], vec![0.0; nkv], vec![0.0; nkv]);
        be.attention_backward(&dout, &q, &k, &v, &o, &l, &mut dq, &mut dk, &mut dv, &d, None).unwrap();
        (o, dq, dk, dv)
    };
    let (a, b) = (run(1), run(3));
    assert_eq!(a.0, b.0);
    assert!(rel_err32(&a.1, &b.1) < 1e-6);
    assert!(rel_err32(&a.2, &b.2) < 1e-6);
    assert!(rel_err32(&a.3, &b.3) < 1e-6);
}

#[test]
fn linear_cross_entropy_all_ignored() {
    let be = CpuBackend::new(Some(2));
    let mut rng = Rng::new(3);
    let (rows, vocab, dim) = (300, 40, 8); // rows not a multiple of the 128-row chunk
    let w = be.weight(&f32s(&mut rng, vocab * dim), vocab, dim, WeightFormat::F32).unwrap();
    let h = f32s(&mut rng, rows * dim);
    let targets = vec![-100; rows];
    let mut dh = vec![f32::NAN; rows * dim];
    let dw0 = f32s(&mut rng, vocab * dim);
    let mut dw = dw0.clone();
    let (sum, count) =
        be.linear_cross_entropy(&h, &w, &targets, rows, 1.0, Some(&mut dh), Some(&mut dw)).unwrap();
    assert_eq!((sum, count), (0.0, 0));
    assert!(dh.iter().all(|&x| x == 0.0));
    assert_eq!(dw, dw0);
    // Zero rows is a no-op.
    let (sum, count) = be.linear_cross_entropy(&h, &w, &[], 0, 1.0, Some(&mut dh), None).unwrap();
    assert_eq!((sum, count), (0.0, 0));
}

/// The f32 attention paths (per-output dot products for few queries, transposed keys for many,
/// head sizes that are not a multiple of 16) against the same kernels in f64.
#[test]
fn attention_f32_paths_match_f64() {
    use afinar_engine::cpu::attention::{attention_backward, attention_forward, AttnBwdMode, AttnTiles};
    let be = CpuBackend::new(Some(2));
    for (q_len, kv_len, head_dim) in [(1, 70, 20), (3, 40, 12), (5, 5, 64), (20, 33, 24)] {
        let d = AttnDims {
            batch: 2,
            q_len,
            kv_len,
            kv_stride: kv_len + 2,
            q_heads: 6,
            kv_heads: 2,
            head_dim,
            q_offset: kv_len - q_len,
            scale: 0.3,
        };
        let nq = d.batch * d.q_len * d.q_heads * d.head_dim;
        let nkv = d.batch * d.kv_stride * d.kv_heads * d.head_dim;
        let mut rng = Rng::new(9 + head_dim as u64);
        let (q, k, v, dout) =
            (f32s(&mut rng, nq), f32s(&mut rng, nkv), f32s(&mut rng, nkv), f32s(&mut rng, nq));
        let (mut o, mut l) = (vec![0.0; nq], vec![0.0; d.batch * d.q_heads * d.q_len]);
        be.attention(&q, &k, &v, &mut o, &mut l, &d, None).unwrap();
        let (mut dq, mut dk, mut dv) = (vec![0.0; nq], vec![0.0; nkv], vec![0.0; nkv]);
        be.attention_backward(&dout, &q, &k, &v, &o, &l, &mut dq, &mut dk, &mut dv, &d, None).unwrap();
        let w = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let (q6, k6, v6, do6) = (w(&q), w(&k), w(&v), w(&dout));
        let (mut o6, mut l6) = (vec![0.0; nq], vec![0.0; l.len()]);
        let tiles = AttnTiles::for_forward(&d);
        attention_forward(&q6, &k6, &v6, &mut o6, &mut l6, &d, None, tiles);
        let (mut dq6, mut dk6, mut dv6) = (vec![0.0; nq], vec![0.0; nkv], vec![0.0; nkv]);
        let mode = AttnBwdMode::Auto;
        attention_backward(
            &do6,
            &q6,
            &k6,
            &v6,
            &o6,
            &l6,
            &mut dq6,
            &mut dk6,
            &mut dv6,
            &d,
            None,
            AttnTiles::default(),
            mode,
        );
        let n = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        for (name, got, want) in
            [("out", &o, n(&o6)), ("dq", &dq, n(&dq6)), ("dk", &dk, n(&dk6)), ("dv", &dv, n(&dv6))]
        {
            let e = rel_err32(got, &want);
            assert!(e < 1e-5, "q_len {q_len} kv {kv_len} hd {head_dim} {name}: {e}");
        }
    }
}

/// Per-token log-probabilities through the output projection and their backward for a per-row
/// upstream gradient, against a naive f64 computation of the full logits (rows past one chunk,
/// ignored rows, a bf16 weight, several row and vocabulary tilings).
#[test]
fn linear_log_probs_match_f64() {
    let be = CpuBackend::new(Some(2));
    let mut rng = Rng::new(11);
    let (rows, vocab, dim) = (150, 37, 12);
    let wv = f32s(&mut rng, vocab * dim);
    let h = f32s(&mut rng, rows * dim);
    let targets: Vec<i32> =
        (0..rows).map(|i| if i % 6 == 2 { -100 } else { ((i * 7) % vocab) as i32 }).collect();
    let up = f32s(&mut rng, rows);
    for format in [WeightFormat::F32, WeightFormat::BF16] {
        let w = be.weight(&wv, vocab, dim, format).unwrap();
        let wr: Vec<f64> = be.weight_to_host(&w).unwrap().iter().map(|&x| x as f64).collect();
        // f64 reference: logp = z_t − lse(z); ∂L/∂z = g (onehot − softmax).
        let (mut lp, mut dh, mut dw) =
            (vec![0.0f64; rows], vec![0.0f64; rows * dim], vec![0.0f64; vocab * dim]);
        for r in 0..rows {
            if targets[r] < 0 {
                continue;
            }
            let z: Vec<f64> =
                (0..vocab).map(|v| (0..dim).map(|k| h[r * dim + k] as f64 * wr[v * dim + k]).sum()).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            let t = targets[r] as usize;
            lp[r] = z[t] - lse;
            for v in 0..vocab {
                let dz = up[r] as f64 * (f64::from(u8::from(v == t)) - (z[v] - lse).exp());
                for k in 0..dim {
                    dh[r * dim + k] += dz * wr[v * dim + k];
                    dw[v * dim + k] += dz * h[r * dim + k] as f64;
                }
            }
        }
        let got = be.linear_log_probs(&h, &w, &targets, rows).unwrap();
        let f = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<_>>();
        assert!(rel_err32(&got, &f(&lp)) < 1e-5, "{format:?} logp: {}", rel_err32(&got, &f(&lp)));
        let dw0 = f32s(&mut rng, vocab * dim);
        let (mut gdh, mut gdw) = (vec![f32::NAN; rows * dim], dw0.clone());
        be.linear_log_probs_backward(&h, &w, &targets, rows, &up, Some(&mut gdh), Some(&mut gdw)).unwrap();
        let gdw: Vec<f32> = gdw.iter().zip(&dw0).map(|(a, b)| a - b).collect();
        assert!(rel_err32(&gdh, &f(&dh)) < 1e-5, "{format:?} dh: {}", rel_err32(&gdh, &f(&dh)));
        assert!(rel_err32(&gdw, &f(&dw)) < 1e-4, "{format:?} dw: {}", rel_err32(&gdw, &f(&dw)));
    }
    // The kernel itself over other tilings: vocabulary blocks that do not divide the vocabulary,
    // one block, row chunks of 7 (the online logsumexp must not depend on the tiling).
    {
        use afinar_engine::cpu::{loss, matmul::WeightRef};
        let w = be.weight(&wv, vocab, dim, WeightFormat::F32).unwrap();
        let want_lp = be.linear_log_probs(&h, &w, &targets, rows).unwrap();
        let dw0 = vec![0f32; vocab * dim];
        let (mut want_dh, mut want_dw) = (vec![0f32; rows * dim], dw0.clone());
        be.linear_log_probs_backward(&h, &w, &targets, rows, &up, Some(&mut want_dh), Some(&mut want_dw))
            .unwrap();
        for (row_chunk, vocab_chunk) in [(16, 8), (7, 37), (150, 5), (1, 100)] {
            let wr = WeightRef::Dense(&wv);
            let mut lp = vec![f32::NAN; rows];
            loss::linear_log_probs(
                &h,
                wr,
                &targets,
                rows,
                vocab,
                dim,
                Some(&mut lp),
                None,
                None,
                None,
                row_chunk,
                vocab_chunk,
            );
            let (mut dh, mut dw) = (vec![f32::NAN; rows * dim], dw0.clone());
            let (dhs, dws) = (Some(dh.as_mut_slice()), Some(dw.as_mut_slice()));
            loss::linear_log_probs(
                &h,
                wr,
                &targets,
                rows,
                vocab,
                dim,
                None,
                Some(&up),
                dhs,
                dws,
                row_chunk,
                vocab_chunk,
            );
            let tiling = format!("{row_chunk} rows × {vocab_chunk} vocabulary");
            assert!(rel_err32(&lp, &want_lp) < 1e-5, "{tiling}: logp");
            assert!(rel_err32(&dh, &want_dh) < 1e-5, "{tiling}: dh");
            assert!(rel_err32(&dw, &want_dw) < 1e-5, "{tiling}: dw");
        }
    }
    // Bad inputs are errors, not panics.
    let w = be.weight(&wv, vocab, dim, WeightFormat::F32).unwrap();
    assert!(be.linear_log_probs(&h, &w, &targets[..3], rows).is_err());
    let mut dh = vec![0.0; rows * dim];
    assert!(be.linear_log_probs_backward(&h, &w, &targets, rows, &up[..3], Some(&mut dh), None).is_err());
    let mut nan_up = up.clone();
    nan_up[4] = f32::NAN;
    assert!(be.linear_log_probs_backward(&h, &w, &targets, rows, &nan_up, Some(&mut dh), None).is_err());
}

/// Quantized output weights are cut into vocabulary blocks by whole rows of blocks (NF4, whose
/// scales live apart, is taken whole): every tiling gives the log-probabilities and gradients of
/// one block over the whole vocabulary.
#[test]
fn linear_log_probs_quantized_tilings_agree() {
    use afinar_engine::cpu::loss;
    use afinar_engine::QuantFormat;
    let be = CpuBackend::new(Some(2));
    let mut rng = Rng::new(5);
    let (rows, vocab, dim) = (20, 37, 64);
    let wv = f32s(&mut rng, vocab * dim);
    let h = f32s(&mut rng, rows * dim);
    let targets: Vec<i32> =
        (0..rows).map(|i| if i % 5 == 1 { -100 } else { ((i * 11) % vocab) as i32 }).collect();
    let up = f32s(&mut rng, rows);
    for q in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Nf4] {
        let w = be.weight(&wv, vocab, dim, WeightFormat::Quant(q)).unwrap();
        let run = |vocab_chunk: usize| {
            let mut lp = vec![0f32; rows];
            let (mut dh, mut dw) = (vec![0f32; rows * dim], vec![0f32; vocab * dim]);
            let wr = w.as_ref();
            loss::linear_log_probs(
                &h,
                wr,
                &targets,
                rows,
                vocab,
                dim,
                Some(&mut lp),
                None,
                None,
                None,
                8,
                vocab_chunk,
            );
            let (dhs, dws) = (Some(dh.as_mut_slice()), Some(dw.as_mut_slice()));
            loss::linear_log_probs(
                &h,
                wr,
                &targets,
                rows,
                vocab,
                dim,
                None,
                Some(&up),
                dhs,
                dws,
                8,
                vocab_chunk,
            );
            (lp, dh, dw)
        };
        let (lp, dh, dw) = run(vocab);
        for chunk in [6, 16] {
            let (lp2, dh2, dw2) = run(chunk);
            assert!(rel_err32(&lp2, &lp) < 1e-5, "{q:?} chunk {chunk}: logp");
            assert!(rel_err32(&dh2, &dh) < 1e-5, "{q:?} chunk {chunk}: dh");
            assert!(rel_err32(&dw2, &dw) < 1e-5, "{q:?} chunk {chunk}: dw");
        }
        assert!(lp.iter().zip(&targets).all(|(&v, &t)| if t == -100 { v == 0.0 } else { v < 0.0 }));
    }
}
