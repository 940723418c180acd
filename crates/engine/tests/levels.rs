//! Every CPU kernel family with per-level code, at every CPU level this machine can run
//! (`cpu::features`), against f64 references (or, for the attention backward, the f64 kernel
//! on the portable path, itself checked by finite differences in finite_diff.rs). Each family
//! also checks which levels' code it took, so a cap that silently changes nothing fails. The
//! cap is process-wide: the levels run serially in one test function, and the environment
//! variable is tested in child processes of this test binary.

mod common;

use afinar_engine::cpu::attention::{
    attention_backward, attention_forward, attention_forward_f16, kv_elems, lse_elems, q_elems, AttnBwdMode,
    AttnTiles,
};
use afinar_engine::cpu::features::{self, CpuLevel};
use afinar_engine::cpu::{amx, vector};
use afinar_engine::{
    run_on_device, AttnDims, Backend, CpuBackend, DeviceJob, Products, QuantFormat, WeightFormat,
};
use common::{naive_attention, norm_err32, rel_err, skipped, tested_path, Rng};
use half::f16;

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `max |a − b| / max |b|` of an f32 result against an f64 reference.
fn err(a: &[f32], b: &[f64]) -> f64 {
    rel_err(&f64s(a), b)
}

/// `y[r, o] = Σ_i x[r, i] · w[o, i]` in f64.
fn naive_linear(x: &[f64], w: &[f64], rows: usize, out: usize, inp: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * out];
    for r in 0..rows {
        for o in 0..out {
            y[r * out + o] = (0..inp).map(|i| x[r * inp + i] * w[o * inp + i]).sum();
        }
    }
    y
}

/// `c = aᵀ · b` in f64: `c[i, j] = Σ_t a[t, i] · b[t, j]` (`a: [t, m]`, `b: [t, n]`).
fn naive_at_b(a: &[f64], b: &[f64], t: usize, m: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for s in 0..t {
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] += a[s * m + i] * b[s * n + j];
            }
        }
    }
    c
}

/// One kernel family's check at the current level (it asserts; `features` says what it took).
type Family = fn(&CpuBackend, &Refs, &str);

/// References that come from the engine's own f64 kernels on the portable path (computed once,
/// before the levels run).
struct Refs {
    attn: AttnCase,
}

/// An attention problem with its f64 references.
struct AttnCase {
    d: AttnDims,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    dout: Vec<f64>,
    out: Vec<f64>,
    lse: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

impl AttnCase {
    fn new() -> Self {
        let d = AttnDims {
            batch: 2,
            q_len: 70,
            kv_len: 75,
            kv_stride: 80,
            q_heads: 4,
            kv_heads: 2,
            head_dim: 32,
            q_offset: 5,
            scale: 1.0 / 32f32.sqrt(),
        };
        let mut rng = Rng::new(31);
        let q = rng.normals(q_elems(&d));
        let k = rng.normals(kv_elems(&d));
        let v = rng.normals(kv_elems(&d));
        let dout = rng.normals(q_elems(&d));
        let (out, lse) = naive_attention(&q, &k, &v, &d, None);
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        attention_backward(
            &dout,
            &q,
            &k,
            &v,
            &out,
            &lse,
            &mut dq,
            &mut dk,
            &mut dv,
            &d,
            None,
            AttnTiles::default(),
            AttnBwdMode::Auto,
        );
        AttnCase { d, q, k, v, dout, out, lse, dq, dk, dv }
    }
}

fn row_primitives(_be: &CpuBackend, _: &Refs, tag: &str) {
    let mut rng = Rng::new(3);
    for len in [1usize, 17, 100, 1000] {
        let x = rng.normals(len);
        let xf = f32s(&x);
        let m = xf.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(vector::max(&xf), m, "{tag} max");
        let md = m as f64;
        let want: Vec<f64> = x.iter().map(|v| (v - md).exp()).collect();
        let want_sum: f64 = want.iter().sum();
        let s = vector::exp_sub_sum_ro(&xf, m) as f64;
        assert!((s - want_sum).abs() < 1e-6 * want_sum, "{tag} exp_sub_sum_ro {s} vs {want_sum}");
        let mut y = xf.clone();
        let s = vector::exp_sub_sum(&mut y, m) as f64;
        assert!((s - want_sum).abs() < 1e-6 * want_sum, "{tag} exp_sub_sum");
        assert!(err(&y, &want) < 1e-6, "{tag} exp_sub_sum values");
        vector::scale(&mut y, 0.5);
        let half: Vec<f64> = want.iter().map(|v| v * 0.5).collect();
        assert!(err(&y, &half) < 1e-6, "{tag} scale");
        let dp0 = rng.normals(len);
        let (mut p, mut dp) = (xf.clone(), f32s(&dp0));
        let lse = md + want_sum.ln();
        vector::softmax_grad_row(&mut p, &mut dp, lse as f32, 0.3);
        let pw: Vec<f64> = x.iter().map(|v| (v - lse).exp()).collect();
        let dpw: Vec<f64> = pw.iter().zip(&dp0).map(|(p, d)| p * (d - 0.3)).collect();
        assert!(err(&p, &pw) < 1e-5 && err(&dp, &dpw) < 1e-5, "{tag} softmax_grad_row");
    }
}

fn swiglu(be: &CpuBackend, _: &Refs, tag: &str) {
    let n = 5000; // over one parallel chunk (4096)
    let mut rng = Rng::new(4);
    let (g, u, d) = (rng.normals(n), rng.normals(n), rng.normals(n));
    let (gf, uf, df) = (f32s(&g), f32s(&u), f32s(&d));
    let mut out = vec![f32::NAN; n];
    be.swiglu(&gf, &uf, &mut out, n).unwrap();
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let want: Vec<f64> = (0..n).map(|i| g[i] * sig(g[i]) * u[i]).collect();
    assert!(err(&out, &want) < 1e-6, "{tag} forward {}", err(&out, &want));
    let (mut dg, mut du) = (vec![f32::NAN; n], vec![f32::NAN; n]);
    be.swiglu_backward(&df, &gf, &uf, &mut dg, &mut du, n).unwrap();
    let want_du: Vec<f64> = (0..n).map(|i| d[i] * g[i] * sig(g[i])).collect();
    let want_dg: Vec<f64> =
        (0..n).map(|i| d[i] * u[i] * sig(g[i]) * (1.0 + g[i] * (1.0 - sig(g[i])))).collect();
    assert!(err(&du, &want_du) < 1e-6 && err(&dg, &want_dg) < 1e-6, "{tag} backward");
}

fn rmsnorm(be: &CpuBackend, _: &Refs, tag: &str) {
    let (rows, dim, eps) = (5, 96, 1e-5f64);
    let mut rng = Rng::new(5);
    let (x, w, dout) = (rng.normals(rows * dim), rng.normals(dim), rng.normals(rows * dim));
    let (xf, wf, df) = (f32s(&x), f32s(&w), f32s(&dout));
    let (mut out, mut rstd) = (vec![f32::NAN; rows * dim], vec![f32::NAN; rows]);
    be.rmsnorm(&xf, &wf, &mut out, &mut rstd, rows, dim, eps as f32).unwrap();
    let (mut want, mut want_dx, mut want_dw) = (vec![0.0; rows * dim], vec![0.0; rows * dim], vec![0.0; dim]);
    for r in 0..rows {
        let xr = &x[r * dim..(r + 1) * dim];
        let s = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / dim as f64 + eps).sqrt();
        let dot: f64 = (0..dim).map(|i| dout[r * dim + i] * w[i] * xr[i]).sum();
        for i in 0..dim {
            want[r * dim + i] = xr[i] * s * w[i];
            want_dx[r * dim + i] = s * w[i] * dout[r * dim + i] - xr[i] * s * s * s * dot / dim as f64;
            want_dw[i] += dout[r * dim + i] * xr[i] * s;
        }
    }
    assert!(err(&out, &want) < 1e-5, "{tag} forward");
    let (mut dx, mut dw) = (vec![f32::NAN; rows * dim], vec![0.0f32; dim]);
    be.rmsnorm_backward(&df, &xf, &wf, &rstd, &mut dx, Some(&mut dw), rows, dim, false).unwrap();
    assert!(err(&dx, &want_dx) < 1e-5 && err(&dw, &want_dw) < 1e-5, "{tag} backward");
}

/// Few rows (the GEMV) of f32 and bf16 weights, against f64 on the weight's stored values.
fn gemv(be: &CpuBackend, _: &Refs, tag: &str) {
    let (rows, out, inp) = (3, 70, 200);
    let mut rng = Rng::new(6);
    let (x, w) = (rng.normals(rows * inp), rng.normals(out * inp));
    for format in [WeightFormat::F32, WeightFormat::BF16] {
        let wt = be.weight(&f32s(&w), out, inp, format).unwrap();
        let want = naive_linear(&x, &f64s(&be.weight_to_host(&wt).unwrap()), rows, out, inp);
        let mut y = vec![f32::NAN; rows * out];
        be.linear(&f32s(&x), &wt, &mut y, rows, false).unwrap();
        assert!(err(&y, &want) < 1e-5, "{tag} {format:?}: {}", err(&y, &want));
    }
}

/// The bound on `|y − y_ref|` from rounding the activations to 8 bits per block of 32: each
/// activation moves by at most half a step `d_x / 2` of its block.
fn activation_bound(x: &[f64], w: &[f64]) -> f64 {
    x.chunks(32)
        .zip(w.chunks(32))
        .map(|(xb, wb)| {
            xb.iter().fold(0.0f64, |m, v| m.max(v.abs())) / 127.0 / 2.0
                * wb.iter().map(|v| v.abs()).sum::<f64>()
        })
        .sum()
}

/// `linear` of `rows` rows of `x` through the quantized weight `wt` (`[out, inp]`, few enough
/// rows for the int8 GEMV), against f64 on the dequantized weight within the activations'
/// rounding bound.
fn check_quant_gemv(be: &CpuBackend, wt: &afinar_engine::CpuWeight, x: &[f64], rows: usize, tag: &str) {
    let (out, inp) = be.weight_shape(wt);
    let xf = f32s(x);
    let wd = f64s(&be.weight_to_host(wt).unwrap());
    let want = naive_linear(&f64s(&xf), &wd, rows, out, inp);
    let mut y = vec![f32::NAN; rows * out];
    be.linear(&xf, wt, &mut y, rows, false).unwrap();
    for r in 0..rows {
        for o in 0..out {
            let bound = activation_bound(&x[r * inp..(r + 1) * inp], &wd[o * inp..(o + 1) * inp]);
            let e = (y[r * out + o] as f64 - want[r * out + o]).abs();
            assert!(e <= bound + 1e-4 * (1.0 + want[r * out + o].abs()), "{tag} ({r}, {o}): {e} > {bound}");
        }
    }
}

/// Few rows against GGUF-quantized weights (int8 activations), against f64 on the dequantized
/// weight within the activations' rounding bound.
fn quant_gemv(be: &CpuBackend, _: &Refs, tag: &str) {
    let (rows, out, inp) = (3, 40, 256);
    let mut rng = Rng::new(7);
    let (x, w) = (rng.normals(rows * inp), rng.normals(out * inp));
    for format in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4_1] {
        let wt = be.weight(&f32s(&w), out, inp, WeightFormat::Quant(format)).unwrap();
        check_quant_gemv(be, &wt, &x, rows, &format!("{tag} {format:?}"));
    }
}

/// Few rows against Q4_K weights (int8 activations, 256-value super-blocks), as [`quant_gemv`]:
/// quantized from normal values, and random super-blocks whose packed 6-bit scales and mins take
/// every value (all 63 in one super-block of each row), with 1 and 3 rows and 5 outputs (the
/// kernels' 4-row groups and single rows).
fn q4k_gemv(be: &CpuBackend, _: &Refs, tag: &str) {
    let (out, inp) = (41, 768);
    let mut rng = Rng::new(17);
    let x = rng.normals(3 * inp);
    let wt =
        be.weight(&f32s(&rng.normals(out * inp)), out, inp, WeightFormat::Quant(QuantFormat::Q4_K)).unwrap();
    check_quant_gemv(be, &wt, &x, 3, &format!("{tag} quantized"));
    let mut bits = 0x2545_f491_4f6c_dd1du64;
    let mut blocks = vec![0u8; out * inp / 256 * 144];
    for (i, b) in blocks.chunks_exact_mut(144).enumerate() {
        for v in b.iter_mut() {
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            *v = bits as u8;
        }
        let d = f16::from_f32(0.002 * (1.0 + (i % 5) as f32)).to_bits();
        let dmin = f16::from_f32(if i % 4 == 1 { 0.0 } else { 0.01 * (i % 3) as f32 }).to_bits();
        b[..2].copy_from_slice(&d.to_le_bytes());
        b[2..4].copy_from_slice(&dmin.to_le_bytes());
        if i % 3 == 2 {
            b[4..16].fill(0xff);
        }
    }
    for rows in [1, 3] {
        for o in [out, 5] {
            let wt = be.weight_quantized(&blocks[..o * inp / 256 * 144], QuantFormat::Q4_K, o, inp).unwrap();
            check_quant_gemv(be, &wt, &x[..rows * inp], rows, &format!("{tag} random blocks {rows}x{o}"));
        }
    }
}

/// Few rows against NF4 weights (dequantized rows, f32 dots).
fn nf4_gemv(be: &CpuBackend, _: &Refs, tag: &str) {
    let (rows, out, inp) = (3, 40, 256);
    let mut rng = Rng::new(8);
    let (x, w) = (rng.normals(rows * inp), rng.normals(out * inp));
    let wt = be.weight(&f32s(&w), out, inp, WeightFormat::Quant(QuantFormat::Nf4)).unwrap();
    let want = naive_linear(&x, &f64s(&be.weight_to_host(&wt).unwrap()), rows, out, inp);
    let mut y = vec![f32::NAN; rows * out];
    be.linear(&f32s(&x), &wt, &mut y, rows, false).unwrap();
    assert!(err(&y, &want) < 1e-5, "{tag}: {}", err(&y, &want));
}

/// Values rounded to f32 and then to bf16 (nearest even), as the bf16 units round the f32
/// operands they are given.
fn bf16_round(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| half::bf16::from_f32(x as f32).to_f64()).collect()
}

/// Whether the bf16 product units (AVX512-BF16 dot products or AMX) run at the current level.
fn bf16_units() -> bool {
    features::level() >= CpuLevel::Avx512Bf16
}

/// Many rows: the linear layer, its input gradient and its weight gradient, in f32 and in bf16
/// products (AVX512-BF16 dot products or AMX where the level allows them). Shapes that are no
/// multiple of the kernels' 32 × 32 blocks (and an odd inner dimension for the input gradient),
/// so the padding is checked too. Where the bf16 units run, the reference takes the operands
/// rounded to bf16 as they do, and the bound is f32 summation's, not bf16's.
fn linear(be: &CpuBackend, _: &Refs, tag: &str) {
    // out · inp · rows ≥ 2^20: big enough for the mixed-precision weight gradient.
    let (rows, out, inp) = (70, 73, 264);
    let mut rng = Rng::new(9);
    let (x, w, dy) = (rng.normals(rows * inp), rng.normals(out * inp), rng.normals(rows * out));
    let (xf, dyf) = (f32s(&x), f32s(&dy));
    for (format, products) in [
        (WeightFormat::F32, Products::F32),
        (WeightFormat::F32, Products::Bf16),
        (WeightFormat::BF16, Products::F32),
    ] {
        let mut wt = be.weight(&f32s(&w), out, inp, format).unwrap();
        be.set_weight_products(&mut wt, products);
        let wd = f64s(&be.weight_to_host(&wt).unwrap());
        // The products round their operands to bf16 on the bf16 units for a bf16 weight or bf16
        // products; elsewhere they are f32 products of the stored values.
        let rounded = bf16_units() && (products == Products::Bf16 || format == WeightFormat::BF16);
        let (xr, wr, dyr) = if rounded {
            (bf16_round(&x), bf16_round(&wd), bf16_round(&dy))
        } else {
            (x.clone(), wd.clone(), dy.clone())
        };
        let tol = 1e-5;
        let t = format!("{tag} {format:?} {products:?} (bf16 operands: {rounded})");
        let mut y = vec![f32::NAN; rows * out];
        be.linear(&xf, &wt, &mut y, rows, false).unwrap();
        let want = naive_linear(&xr, &wr, rows, out, inp);
        let e = norm_err32(&y, &f32s(&want));
        assert!(e < tol, "{t} forward: {e}");
        let mut dx = vec![f32::NAN; rows * inp];
        be.linear_backward_input(&dyf, &wt, &mut dx, rows, false).unwrap();
        // dx[r, i] = Σ_o dy[r, o] · w[o, i]
        let mut want_dx = vec![0.0; rows * inp];
        for r in 0..rows {
            for o in 0..out {
                for i in 0..inp {
                    want_dx[r * inp + i] += dyr[r * out + o] * wr[o * inp + i];
                }
            }
        }
        assert!(norm_err32(&dx, &f32s(&want_dx)) < tol, "{t} input gradient");
        let mut dw = vec![f32::NAN; out * inp];
        be.linear_backward_weight(&dyf, &xf, &mut dw, rows, out, inp, products, false).unwrap();
        let (dyw, xw) = if bf16_units() && products == Products::Bf16 {
            (bf16_round(&dy), bf16_round(&x))
        } else {
            (dy.clone(), x.clone())
        };
        let want_dw = naive_at_b(&dyw, &xw, rows, out, inp);
        assert!(norm_err32(&dw, &f32s(&want_dw)) < tol, "{t} weight gradient");
    }
}

fn attention(_be: &CpuBackend, refs: &Refs, tag: &str) {
    let c = &refs.attn;
    let d = &c.d;
    let (q, k, v, dout) = (f32s(&c.q), f32s(&c.k), f32s(&c.v), f32s(&c.dout));
    let (mut out, mut lse) = (vec![f32::NAN; q_elems(d)], vec![f32::NAN; lse_elems(d)]);
    attention_forward(&q, &k, &v, &mut out, &mut lse, d, None, AttnTiles::default());
    assert!(err(&out, &c.out) < 1e-5 && err(&lse, &c.lse) < 1e-5, "{tag} forward");
    for mode in [AttnBwdMode::SinglePass, AttnBwdMode::TwoPass] {
        let (mut dq, mut dk, mut dv) =
            (vec![f32::NAN; q.len()], vec![f32::NAN; k.len()], vec![f32::NAN; v.len()]);
        attention_backward(
            &dout,
            &q,
            &k,
            &v,
            &out,
            &lse,
            &mut dq,
            &mut dk,
            &mut dv,
            d,
            None,
            AttnTiles::default(),
            mode,
        );
        for (name, got, want) in [("dq", &dq, &c.dq), ("dk", &dk, &c.dk), ("dv", &dv, &c.dv)] {
            assert!(err(got, want) < 1e-4, "{tag} backward {mode:?} {name}: {}", err(got, want));
        }
    }
}

/// Attention against an f16 cache, decoding (a few queries) and a prompt (the widening path).
fn attention_f16(_be: &CpuBackend, _: &Refs, tag: &str) {
    for (q_len, kv_len, q_offset) in [(2, 37, 35), (40, 45, 5)] {
        let d = AttnDims {
            batch: 2,
            q_len,
            kv_len,
            kv_stride: 48,
            q_heads: 4,
            kv_heads: 2,
            head_dim: 64,
            q_offset,
            scale: 0.125,
        };
        let mut rng = Rng::new(10 + q_len as u64);
        let q = rng.normals(q_elems(&d));
        let mut half = |n: usize| -> Vec<u16> {
            rng.normals(n).into_iter().map(|x| f16::from_f64(x).to_bits()).collect()
        };
        let (k, v) = (half(kv_elems(&d)), half(kv_elems(&d)));
        let widen = |h: &[u16]| h.iter().map(|&b| f16::from_bits(b).to_f64()).collect::<Vec<f64>>();
        let (want_out, want_lse) = naive_attention(&q, &widen(&k), &widen(&v), &d, None);
        let (mut out, mut lse) = (vec![f32::NAN; q_elems(&d)], vec![f32::NAN; lse_elems(&d)]);
        attention_forward_f16(&f32s(&q), &k, &v, &mut out, &mut lse, &d, None);
        assert!(err(&out, &want_out) < 1e-5 && err(&lse, &want_lse) < 1e-5, "{tag} q_len {q_len}");
    }
}

/// The fused output projection and cross-entropy, with its gradients (one ignored row), with
/// f32 products and with bf16 products (mixed precision: on the bf16 units where the level has
/// them, with operands rounded as they round them).
fn cross_entropy(be: &CpuBackend, _: &Refs, tag: &str) {
    let (rows, vocab, dim) = (5, 300, 64);
    let mut rng = Rng::new(11);
    let (h, w) = (rng.normals(rows * dim), rng.normals(vocab * dim));
    let targets: Vec<i32> = vec![3, 299, -100, 0, 150];
    for products in [Products::F32, Products::Bf16] {
        let tag = format!("{tag} {products:?}");
        let mut wt = be.weight(&f32s(&w), vocab, dim, WeightFormat::F32).unwrap();
        be.set_weight_products(&mut wt, products);
        let (mut dh, mut dw) = (vec![f32::NAN; rows * dim], vec![0.0f32; vocab * dim]);
        let (sum, n) = be
            .linear_cross_entropy(&f32s(&h), &wt, &targets, rows, 0.5, Some(&mut dh), Some(&mut dw))
            .unwrap();
        // On the bf16 units the logits come from rounded h and W, and so do the products of
        // their gradients (dh = dlogits · W with dlogits rounded too; dW from rounded dlogits
        // and h): the reference rounds the same operands; the loss bound is bf16's.
        let bf = products == Products::Bf16 && bf16_units();
        let (hr, wr) = if bf { (bf16_round(&h), bf16_round(&w)) } else { (h.clone(), w.clone()) };
        let logits = naive_linear(&hr, &wr, rows, vocab, dim);
        let (mut want_sum, mut dlogits) = (0.0, vec![0.0; rows * vocab]);
        for r in 0..rows {
            if targets[r] < 0 {
                continue;
            }
            let l = &logits[r * vocab..(r + 1) * vocab];
            let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + l.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            want_sum += lse - l[targets[r] as usize];
            for j in 0..vocab {
                let onehot = if j == targets[r] as usize { 1.0 } else { 0.0 };
                dlogits[r * vocab + j] = 0.5 * ((l[j] - lse).exp() - onehot);
            }
        }
        assert_eq!(n, 4, "{tag} counted rows");
        assert!((sum - want_sum).abs() < 1e-5 * want_sum.abs(), "{tag} loss {sum} vs {want_sum}");
        let dl = if bf { bf16_round(&dlogits) } else { dlogits.clone() };
        // dh = dlogits · W, dW = dlogitsᵀ · h
        let want_dh = {
            let mut d = vec![0.0; rows * dim];
            for r in 0..rows {
                for j in 0..vocab {
                    for i in 0..dim {
                        d[r * dim + i] += dl[r * vocab + j] * wr[j * dim + i];
                    }
                }
            }
            d
        };
        let want_dw = naive_at_b(&dl, &hr, rows, vocab, dim);
        // Rounding dlogits on the kernel's side starts from f32 logits: a rare value sits on a
        // rounding boundary, so the bf16 bound is a few bf16 steps, not f32's.
        let tol = if bf { 2e-3 } else { 1e-5 };
        assert!(err(&dh, &want_dh) < tol && err(&dw, &want_dw) < tol, "{tag} gradients");
    }
}

/// Each family, and the levels that have code of their own in it (lowest first; `Portable`
/// when the portable path marks itself).
fn families(amx_granted: bool) -> Vec<(&'static str, Family, Vec<CpuLevel>)> {
    use CpuLevel::*;
    let rows = vec![Portable, Avx2, Avx512];
    // The bf16 product units: AVX512-BF16 dot products, AMX tiles where the system grants them.
    let bf16 = if amx_granted { vec![Avx512Bf16, Amx] } else { vec![Avx512Bf16] };
    vec![
        ("row primitives", row_primitives as Family, rows.clone()),
        ("swiglu", swiglu, rows.clone()),
        ("rmsnorm", rmsnorm, vec![]),
        ("gemv f32/bf16", gemv, vec![Portable, Avx512]),
        ("gemv q8_0/q4_0/q4_1", quant_gemv, vec![Portable, Avx2, Avx512Vnni]),
        ("gemv q4_k", q4k_gemv, vec![Portable, Avx2, Avx512Vnni]),
        ("gemv nf4", nf4_gemv, vec![]),
        ("linear + weight gradient", linear, bf16.clone()),
        ("attention", attention, rows.clone()),
        ("attention f16 cache", attention_f16, rows.clone()),
        ("fused cross-entropy", cross_entropy, [rows, bf16].concat()),
    ]
}

/// The features a level needs beyond what this CPU has.
fn missing(level: CpuLevel, detected: CpuLevel) -> String {
    CpuLevel::ALL
        .into_iter()
        .filter(|&l| l > detected && l <= level)
        .map(|l| l.features())
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn every_family_at_every_level() {
    let detected = features::detected();
    let be = CpuBackend::new(Some(2));
    // What the machine grants with no cap (AMX also needs the operating system's permission).
    features::set_cap(None);
    let amx_granted = detected == CpuLevel::Amx && amx::available();
    assert_eq!(features::set_cap(Some(CpuLevel::Portable)), CpuLevel::Portable);
    let refs = Refs { attn: AttnCase::new() };
    let mut ran = Vec::new();
    for level in CpuLevel::ALL {
        if level > detected {
            skipped(&format!("level {level} needs {} (this CPU: {detected})", missing(level, detected)));
            continue;
        }
        assert_eq!(features::set_cap(Some(level)), level);
        assert_eq!(features::level(), level);
        assert!(be.name().contains(level.name()), "{}", be.name());
        for (name, run, levels) in families(amx_granted) {
            features::reset_taken();
            run(&be, &refs, &format!("{name} at {level}"));
            let taken = features::taken_levels();
            assert!(taken.iter().all(|&t| t <= level), "{name} at {level} took {taken:?}");
            match levels.iter().rev().find(|&&l| l <= level) {
                Some(&want) => assert_eq!(taken.last(), Some(&want), "{name} at {level}: took {taken:?}"),
                None => {
                    assert!(taken.iter().all(|&t| t == CpuLevel::Portable), "{name} at {level}: {taken:?}")
                }
            }
            tested_path(&format!("{name} at {level}: took {taken:?}"));
        }
        ran.push(level.name());
    }
    features::set_cap(None);
    eprintln!("levels run: {} (detected {detected})", ran.join(", "));
}

/// Runs one test of this binary in a child process with `AFINAR_CPU_LEVEL=value`.
fn child(mode: &str, value: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "env_child", "--nocapture", "--test-threads=1"])
        .env("AFINAR_LEVELS_CHILD", mode)
        .env(features::ENV_VAR, value)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child {mode} failed:\n{text}");
    assert!(text.contains(&format!("CHILD OK {mode}")), "child {mode} did not run:\n{text}");
    text
}

struct Name;

impl DeviceJob for Name {
    type Output = String;
    fn run<B: Backend>(self, be: &B) -> String {
        be.name()
    }
}

/// The child side of [`env_var_caps_and_bad_values_are_errors`] (does nothing in a plain run).
#[test]
fn env_child() {
    let Ok(mode) = std::env::var("AFINAR_LEVELS_CHILD") else { return };
    let detected = features::detected();
    match mode.as_str() {
        "capped" => {
            assert_eq!(features::env_cap(), Ok(Some(CpuLevel::Portable)));
            assert_eq!(features::level(), CpuLevel::Portable);
            let be = CpuBackend::try_new(Some(1)).unwrap();
            let name = be.name();
            if detected > CpuLevel::Portable {
                let want = format!("portable; capped from {detected} by AFINAR_CPU_LEVEL");
                assert!(name.contains(&want), "{name}");
            }
            features::reset_taken();
            let x: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
            let m = vector::max(&x);
            assert!(m > 0.99);
            let mut o = vec![0.0f32; 100];
            be.swiglu(&x, &x, &mut o, 100).unwrap();
            assert_eq!(features::taken_levels(), vec![CpuLevel::Portable]);
            println!("{name}");
        }
        "bad" => {
            let e = CpuBackend::try_new(Some(1)).unwrap_err().to_string();
            for want in
                ["AFINAR_CPU_LEVEL", "\"avx9\"", "portable, avx2, avx512, avx512_vnni, avx512_bf16, amx"]
            {
                assert!(e.contains(want), "{e}");
            }
            let e = run_on_device("cpu", Some(1), Name).unwrap_err().to_string();
            assert!(e.contains("AFINAR_CPU_LEVEL"), "{e}");
            println!("{e}");
        }
        other => panic!("unknown child mode {other}"),
    }
    println!("CHILD OK {mode}");
}

#[test]
fn env_var_caps_and_bad_values_are_errors() {
    let text = child("capped", "portable");
    eprintln!("AFINAR_CPU_LEVEL=portable: {}", text.lines().find(|l| l.starts_with("cpu (")).unwrap_or("?"));
    let text = child("bad", "avx9");
    assert!(text.contains("expected one of"), "{text}");
}
