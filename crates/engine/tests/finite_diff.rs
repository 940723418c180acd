//! Every CPU kernel's backward, instantiated in f64, against central finite differences of a
//! random scalar projection of its forward output. Forward kernels whose result is easy to write
//! as plain loops are also checked against such loops here (the PyTorch fixtures check the rest).

mod common;

use afinar_engine::cpu::attention::{
    attention_backward, attention_forward, kv_elems, lse_elems, q_elems, AttnBwdMode, AttnTiles,
};
use afinar_engine::cpu::matmul::{
    linear_backward_input, linear_backward_weight, linear_forward, matmul, WeightRef,
};
use afinar_engine::cpu::{elementwise, embedding, loss, norm, rope, swiglu};
use afinar_engine::{rope_inv_freq, AttnDims, RopeScaling};
use common::{check_grad, check_grad_maybe_zero, naive_attention, project, rel_err, Rng};
use half::bf16;

#[test]
fn matmul_all_transposes_match_loops() {
    let mut rng = Rng::new(1);
    let (m, n, k) = (5, 7, 6);
    for ta in [false, true] {
        for tb in [false, true] {
            let a = rng.normals(m * k);
            let b = rng.normals(k * n);
            let c0 = rng.normals(m * n);
            let (alpha, beta) = (0.7, -1.3);
            let mut c = c0.clone();
            matmul(&a, ta, &b, tb, &mut c, m, n, k, alpha, beta);
            let mut want = vec![0.0; m * n];
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0.0;
                    for p in 0..k {
                        let av = if ta { a[p * m + i] } else { a[i * k + p] };
                        let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                        s += av * bv;
                    }
                    want[i * n + j] = alpha * s + beta * c0[i * n + j];
                }
            }
            assert!(rel_err(&c, &want) < 1e-12, "ta={ta} tb={tb}");
            // beta = 0 must not read c (NaN there must not leak).
            let mut c = vec![f64::NAN; m * n];
            matmul(&a, ta, &b, tb, &mut c, m, n, k, 1.0, 0.0);
            assert!(c.iter().all(|x| x.is_finite()));
        }
    }
}

#[test]
fn linear_gradients() {
    let mut rng = Rng::new(2);
    let (rows, out, inp) = (4, 6, 5);
    let x = rng.normals(rows * inp);
    let w = rng.normals(out * inp);
    let r = rng.normals(rows * out);
    let f = |x: &[f64], w: &[f64]| {
        let mut y = vec![0.0; rows * out];
        linear_forward(x, WeightRef::Dense(w), &mut y, rows, out, inp, false);
        project(&r, &y)
    };
    let mut dx = vec![0.0; rows * inp];
    linear_backward_input(&r, WeightRef::Dense(&w), &mut dx, rows, out, inp, false);
    check_grad("linear dx", &x, &dx, |x| f(x, &w));
    let mut dw = vec![0.0; out * inp];
    linear_backward_weight(&r, &x, &mut dw, rows, out, inp, true);
    check_grad("linear dw", &w, &dw, |w| f(&x, w));
    // Accumulation adds to what is there.
    let base = rng.normals(rows * inp);
    let mut acc = base.clone();
    linear_backward_input(&r, WeightRef::Dense(&w), &mut acc, rows, out, inp, true);
    let want: Vec<f64> = base.iter().zip(&dx).map(|(a, b)| a + b).collect();
    assert!(rel_err(&acc, &want) < 1e-12);
    let mut dw2 = dw.clone();
    linear_backward_weight(&r, &x, &mut dw2, rows, out, inp, true);
    let want: Vec<f64> = dw.iter().map(|a| 2.0 * a).collect();
    assert!(rel_err(&dw2, &want) < 1e-12);
}

#[test]
fn bf16_weight_tiles_match_dense() {
    // Large enough for several converted tiles (2^18 elements each), with a ragged last tile.
    let mut rng = Rng::new(3);
    let (rows, out, inp) = (3, 700, 1000);
    let wb: Vec<bf16> = (0..out * inp).map(|_| bf16::from_f64(rng.normal())).collect();
    let wd: Vec<f64> = wb.iter().map(|v| v.to_f64()).collect();
    let x = rng.normals(rows * inp);
    let y0 = rng.normals(rows * out);
    for acc in [false, true] {
        let (mut y1, mut y2) = (y0.clone(), y0.clone());
        linear_forward(&x, WeightRef::Bf16(&wb), &mut y1, rows, out, inp, acc);
        linear_forward(&x, WeightRef::Dense(&wd), &mut y2, rows, out, inp, acc);
        assert!(rel_err(&y1, &y2) < 1e-12, "forward acc={acc}");
    }
    let dy = rng.normals(rows * out);
    let dx0 = rng.normals(rows * inp);
    for acc in [false, true] {
        let (mut d1, mut d2) = (dx0.clone(), dx0.clone());
        linear_backward_input(&dy, WeightRef::Bf16(&wb), &mut d1, rows, out, inp, acc);
        linear_backward_input(&dy, WeightRef::Dense(&wd), &mut d2, rows, out, inp, acc);
        assert!(rel_err(&d1, &d2) < 1e-12, "backward acc={acc}");
    }
}

#[test]
fn embedding_gradient_with_repeated_ids() {
    let mut rng = Rng::new(4);
    let (vocab, dim) = (7, 5);
    let ids = [3u32, 0, 3, 6, 3, 1];
    let table = rng.normals(vocab * dim);
    let r = rng.normals(ids.len() * dim);
    let f = |t: &[f64]| {
        let mut out = vec![0.0; ids.len() * dim];
        embedding::embedding_forward(&ids, WeightRef::Dense(t), &mut out, dim);
        project(&r, &out)
    };
    let mut out = vec![0.0; ids.len() * dim];
    embedding::embedding_forward(&ids, WeightRef::Dense(&table), &mut out, dim);
    for (i, &id) in ids.iter().enumerate() {
        let id = id as usize;
        assert_eq!(out[i * dim..(i + 1) * dim], table[id * dim..(id + 1) * dim]);
    }
    let base = rng.normals(vocab * dim);
    let mut dt = base.clone();
    embedding::embedding_backward(&ids, &r, &mut dt, dim);
    let grad: Vec<f64> = dt.iter().zip(&base).map(|(a, b)| a - b).collect();
    check_grad("embedding dtable", &table, &grad, f);
}

#[test]
fn rmsnorm_gradients() {
    let mut rng = Rng::new(5);
    let (rows, dim, eps) = (70, 6, 1e-5);
    let x = rng.normals(rows * dim);
    let w = rng.normals(dim);
    let r = rng.normals(rows * dim);
    let fwd = |x: &[f64], w: &[f64]| {
        let mut out = vec![0.0; rows * dim];
        let mut rstd = vec![0.0; rows];
        norm::rmsnorm_forward(x, w, &mut out, &mut rstd, rows, dim, eps);
        (out, rstd)
    };
    let (out, rstd) = fwd(&x, &w);
    for i in 0..rows {
        let xr = &x[i * dim..(i + 1) * dim];
        let ms = xr.iter().map(|v| v * v).sum::<f64>() / dim as f64;
        let rs = 1.0 / (ms + eps).sqrt();
        assert!((rstd[i] - rs).abs() < 1e-12 * rs);
        for j in 0..dim {
            assert!((out[i * dim + j] - xr[j] * rs * w[j]).abs() < 1e-12);
        }
    }
    let dx_base = rng.normals(rows * dim);
    let dw_base = rng.normals(dim);
    for acc in [false, true] {
        let mut dx = dx_base.clone();
        let mut dw = dw_base.clone();
        norm::rmsnorm_backward(&r, &x, &w, &rstd, &mut dx, Some(&mut dw), rows, dim, acc);
        if acc {
            for (d, b) in dx.iter_mut().zip(&dx_base) {
                *d -= b;
            }
        }
        for (d, b) in dw.iter_mut().zip(&dw_base) {
            *d -= b;
        }
        check_grad("rmsnorm dx", &x, &dx, |x| project(&r, &fwd(x, &w).0));
        check_grad("rmsnorm dw", &w, &dw, |w| project(&r, &fwd(&x, w).0));
    }
}

#[test]
fn rope_gradient_and_inverse() {
    let mut rng = Rng::new(6);
    let (tokens, heads, hd) = (5, 3, 8);
    let scaling = RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64.0,
    };
    for inv_freq in [rope_inv_freq(hd, 10000.0, None), rope_inv_freq(hd, 500000.0, Some(scaling))] {
        let positions = [0u32, 7, 1, 0, 300];
        let x = rng.normals(tokens * heads * hd);
        let r = rng.normals(tokens * heads * hd);
        let f = |x: &[f64]| {
            let mut y = x.to_vec();
            rope::rope(&mut y, &positions, &inv_freq, tokens, heads, hd, false);
            project(&r, &y)
        };
        let mut g = r.clone();
        rope::rope(&mut g, &positions, &inv_freq, tokens, heads, hd, true);
        check_grad("rope dx", &x, &g, f);
        // Position 0 is the identity; forward then inverse is the identity.
        let mut y = x.clone();
        rope::rope(&mut y, &positions, &inv_freq, tokens, heads, hd, false);
        assert_eq!(y[..heads * hd], x[..heads * hd]);
        rope::rope(&mut y, &positions, &inv_freq, tokens, heads, hd, true);
        assert!(rel_err(&y, &x) < 1e-12);
    }
}

#[test]
fn swiglu_gradients() {
    let mut rng = Rng::new(7);
    let n = 5000; // more than one parallel chunk
    let g = rng.normals(n).iter().map(|v| 3.0 * v).collect::<Vec<_>>();
    let u = rng.normals(n);
    let r = rng.normals(n);
    let f = |g: &[f64], u: &[f64]| {
        let mut o = vec![0.0; n];
        swiglu::swiglu_forward(g, u, &mut o, n);
        project(&r, &o)
    };
    let mut o = vec![0.0; n];
    swiglu::swiglu_forward(&g, &u, &mut o, n);
    for i in 0..n {
        let want = g[i] / (1.0 + (-g[i]).exp()) * u[i];
        assert!((o[i] - want).abs() < 1e-12);
    }
    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    swiglu::swiglu_backward(&r, &g, &u, &mut dg, &mut du, n);
    // Finite differences on a prefix keep the test fast; the kernel is elementwise.
    let m = 64;
    check_grad("swiglu dgate", &g[..m], &dg[..m], |gp| {
        let mut gg = g.clone();
        gg[..m].copy_from_slice(gp);
        f(&gg, &u)
    });
    check_grad("swiglu dup", &u[..m], &du[..m], |up| {
        let mut uu = u.clone();
        uu[..m].copy_from_slice(up);
        f(&g, &uu)
    });
}

#[test]
fn elementwise_kernels() {
    let mut rng = Rng::new(8);
    let n = 40000;
    let x = rng.normals(n);
    let y0 = rng.normals(n);
    let mut y = y0.clone();
    elementwise::add_assign(&mut y, &x, n - 3);
    for i in 0..n {
        let want = if i < n - 3 { y0[i] + x[i] } else { y0[i] };
        assert_eq!(y[i], want);
    }
    elementwise::scale(&mut y, n - 5, 0.5);
    for i in 0..n {
        let want = if i < n - 3 { y0[i] + x[i] } else { y0[i] };
        let want = if i < n - 5 { want * 0.5 } else { want };
        assert_eq!(y[i], want);
    }
}

fn check_attention(d: AttnDims, doc: Option<&[u32]>, tiles: AttnTiles, seed: u64) {
    let mut rng = Rng::new(seed);
    let q = rng.normals(q_elems(&d));
    let mut k = rng.normals(kv_elems(&d));
    let mut v = rng.normals(kv_elems(&d));
    // Garbage beyond kv_len must not matter.
    for b in 0..d.batch {
        for s in d.kv_len..d.kv_stride {
            let o = (b * d.kv_stride + s) * d.kv_heads * d.head_dim;
            for i in 0..d.kv_heads * d.head_dim {
                k[o + i] = f64::NAN;
                v[o + i] = f64::NAN;
            }
        }
    }
    let r = rng.normals(q_elems(&d));
    let fwd = |q: &[f64], k: &[f64], v: &[f64]| {
        let mut out = vec![0.0; q_elems(&d)];
        let mut lse = vec![0.0; lse_elems(&d)];
        attention_forward(q, k, v, &mut out, &mut lse, &d, doc, tiles);
        (out, lse)
    };
    let (out, lse) = fwd(&q, &k, &v);
    let (want_out, want_lse) = naive_attention(&q, &k, &v, &d, doc);
    assert!(rel_err(&out, &want_out) < 1e-12, "forward out");
    assert!(rel_err(&lse, &want_lse) < 1e-12, "forward lse");
    for mode in [AttnBwdMode::SinglePass, AttnBwdMode::TwoPass, AttnBwdMode::Auto] {
        let mut dq = vec![f64::NAN; q_elems(&d)];
        let mut dk = vec![f64::NAN; kv_elems(&d)];
        let mut dv = vec![f64::NAN; kv_elems(&d)];
        attention_backward(&r, &q, &k, &v, &out, &lse, &mut dq, &mut dk, &mut dv, &d, doc, tiles, mode);
        // Positions beyond kv_len get zero gradients.
        for b in 0..d.batch {
            let lo = (b * d.kv_stride + d.kv_len) * d.kv_heads * d.head_dim;
            let hi = (b + 1) * d.kv_stride * d.kv_heads * d.head_dim;
            assert!(dk[lo..hi].iter().chain(&dv[lo..hi]).all(|&x| x == 0.0));
        }
        // With a single key the softmax is constant: dq and dk are exactly zero.
        let fq = |q: &[f64]| project(&r, &fwd(q, &k, &v).0);
        let name = format!("attention dq {mode:?}");
        if d.kv_len == 1 {
            check_grad_maybe_zero(&name, &q, &dq, fq);
        } else {
            check_grad(&name, &q, &dq, fq);
        }
        // Finite differences only over the valid keys (NaN padding stays NaN).
        let valid: Vec<usize> =
            (0..kv_elems(&d)).filter(|&i| (i / (d.kv_heads * d.head_dim)) % d.kv_stride < d.kv_len).collect();
        let pick = |x: &[f64]| valid.iter().map(|&i| x[i]).collect::<Vec<_>>();
        let put = |base: &[f64], sub: &[f64]| {
            let mut x = base.to_vec();
            for (&i, &s) in valid.iter().zip(sub) {
                x[i] = s;
            }
            x
        };
        let fk = |ks: &[f64]| project(&r, &fwd(&q, &put(&k, ks), &v).0);
        let name = format!("attention dk {mode:?}");
        if d.kv_len == 1 {
            check_grad_maybe_zero(&name, &pick(&k), &pick(&dk), fk);
        } else {
            check_grad(&name, &pick(&k), &pick(&dk), fk);
        }
        check_grad(&format!("attention dv {mode:?}"), &pick(&v), &pick(&dv), |vs| {
            project(&r, &fwd(&q, &k, &put(&v, vs)).0)
        });
    }
}

fn dims(batch: usize, q_len: usize, kv_len: usize, kv_stride: usize, q_offset: usize) -> AttnDims {
    AttnDims { batch, q_len, kv_len, kv_stride, q_heads: 4, kv_heads: 2, head_dim: 4, q_offset, scale: 0.5 }
}

#[test]
fn attention_causal_gqa_with_offset_and_stride() {
    let tiles = AttnTiles { bq: 2, bk: 3 };
    check_attention(dims(2, 5, 8, 10, 3), None, tiles, 10);
    // Tiles larger than the problem.
    check_attention(dims(1, 6, 6, 6, 0), None, AttnTiles::default(), 11);
}

#[test]
fn attention_block_causal_documents() {
    let d = dims(2, 7, 7, 9, 0);
    let doc = [0u32, 0, 0, 1, 1, 2, 2, 5, 5, 5, 5, 6, 7, 7];
    check_attention(d, Some(&doc), AttnTiles { bq: 3, bk: 2 }, 12);
    // With a cache offset: queries are positions 3..7 of each row.
    let d = dims(2, 4, 7, 8, 3);
    check_attention(d, Some(&doc), AttnTiles { bq: 2, bk: 4 }, 13);
}

#[test]
fn attention_with_keys_and_values_transposed() {
    // From 16 queries on, keys and values are transposed once per call: causal with a cache
    // offset and padded stride, and block-causal.
    check_attention(dims(2, 17, 20, 22, 3), None, AttnTiles { bq: 5, bk: 6 }, 16);
    let doc: Vec<u32> = (0..2 * 18).map(|i| (i / 5) as u32).collect();
    check_attention(dims(2, 18, 18, 18, 0), Some(&doc), AttnTiles { bq: 4, bk: 7 }, 17);
}

#[test]
fn attention_decode_step_and_single_token() {
    // One query against a cache of 6 (stride 9).
    check_attention(dims(2, 1, 7, 9, 6), None, AttnTiles { bq: 2, bk: 3 }, 14);
    // A sequence of length 1.
    check_attention(dims(3, 1, 1, 1, 0), None, AttnTiles::default(), 15);
}

#[test]
fn cross_entropy_gradient_with_ignored_rows() {
    let mut rng = Rng::new(16);
    let (rows, vocab) = (6, 9);
    let logits: Vec<f64> = rng.normals(rows * vocab).iter().map(|x| 2.0 * x).collect();
    let targets = [3, -100, 0, 8, -100, 4];
    let gs = 0.37;
    let f = |l: &[f64]| {
        let mut losses = vec![0.0; rows];
        loss::cross_entropy(l, &targets, &mut losses, None, rows, vocab, gs);
        gs * losses.iter().sum::<f64>()
    };
    let mut losses = vec![f64::NAN; rows];
    let mut dl = vec![f64::NAN; rows * vocab];
    loss::cross_entropy(&logits, &targets, &mut losses, Some(&mut dl), rows, vocab, gs);
    for (i, &t) in targets.iter().enumerate() {
        let row = &logits[i * vocab..(i + 1) * vocab];
        if t < 0 {
            assert_eq!(losses[i], 0.0);
            assert!(dl[i * vocab..(i + 1) * vocab].iter().all(|&x| x == 0.0));
        } else {
            let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            assert!((losses[i] - (lse - row[t as usize])).abs() < 1e-12);
        }
    }
    check_grad("cross_entropy dlogits", &logits, &dl, f);
    // All targets ignored: zero losses and gradients.
    let all = [-100; 6];
    loss::cross_entropy(&logits, &all, &mut losses, Some(&mut dl), rows, vocab, gs);
    assert!(losses.iter().chain(&dl).all(|&x| x == 0.0));
}

#[test]
fn linear_cross_entropy_gradients_chunked() {
    let mut rng = Rng::new(17);
    let (rows, vocab, dim) = (7, 11, 5);
    let h = rng.normals(rows * dim);
    let w = rng.normals(vocab * dim);
    let targets = [2, 10, -100, 0, 5, 5, -100];
    let gs = 0.6;
    let f = |h: &[f64], w: &[f64], chunk: usize| {
        loss::linear_cross_entropy(h, WeightRef::Dense(w), &targets, rows, vocab, dim, gs, None, None, chunk)
    };
    // Same loss as projection + cross-entropy on the full logits.
    let mut logits = vec![0.0; rows * vocab];
    linear_forward(&h, WeightRef::Dense(&w), &mut logits, rows, vocab, dim, false);
    let mut losses = vec![0.0; rows];
    loss::cross_entropy(&logits, &targets, &mut losses, None, rows, vocab, gs);
    for chunk in [1, 3, 7, 100] {
        let (sum, count) = f(&h, &w, chunk);
        assert_eq!(count, 5);
        assert!((sum - losses.iter().sum::<f64>()).abs() < 1e-12);
        let mut dh = vec![f64::NAN; rows * dim];
        let dw_base = rng.normals(vocab * dim);
        let mut dw = dw_base.clone();
        let (sum2, _) = loss::linear_cross_entropy(
            &h,
            WeightRef::Dense(&w),
            &targets,
            rows,
            vocab,
            dim,
            gs,
            Some(&mut dh),
            Some(&mut dw),
            chunk,
        );
        assert_eq!(sum, sum2);
        for (d, b) in dw.iter_mut().zip(&dw_base) {
            *d -= b;
        }
        check_grad("linear_cross_entropy dh", &h, &dh, |h| gs * f(h, &w, chunk).0);
        check_grad("linear_cross_entropy dw", &w, &dw, |w| gs * f(&h, w, chunk).0);
    }
    // Only dw requested.
    let mut dw = vec![0.0; vocab * dim];
    loss::linear_cross_entropy(
        &h,
        WeightRef::Dense(&w),
        &targets,
        rows,
        vocab,
        dim,
        gs,
        None,
        Some(&mut dw),
        3,
    );
    check_grad("linear_cross_entropy dw only", &w, &dw, |w| gs * f(&h, w, 3).0);
}

#[test]
fn attention_decode_tiles_over_a_long_cache_match_the_reference() {
    // One query (and then four) against 1,100 cached keys: several 512-key decode tiles.
    for q_len in [1, 4] {
        let d = dims(2, q_len, 1100, 1104, 1100 - q_len);
        let tiles = AttnTiles::for_forward(&d);
        assert_eq!((tiles.bq, tiles.bk), (q_len, 512));
        let mut rng = Rng::new(40 + q_len as u64);
        let (q, k, v) = (rng.normals(q_elems(&d)), rng.normals(kv_elems(&d)), rng.normals(kv_elems(&d)));
        let mut out = vec![0.0; q_elems(&d)];
        let mut lse = vec![0.0; lse_elems(&d)];
        attention_forward(&q, &k, &v, &mut out, &mut lse, &d, None, tiles);
        let (want_out, want_lse) = naive_attention(&q, &k, &v, &d, None);
        assert!(rel_err(&out, &want_out) < 1e-12, "q_len {q_len}: out");
        assert!(rel_err(&lse, &want_lse) < 1e-12, "q_len {q_len}: lse");
    }
}
