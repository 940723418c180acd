//! The CPU backend (f32) against PyTorch: inputs, outputs and autograd gradients written by
//! `scripts/fixtures/kernels.py` into `tests/fixtures/kernels/`. Tolerance: max abs difference
//! over max abs reference < 1e-5.

mod common;

use afinar_engine::cpu::{amx, gemv};
use afinar_engine::{rope_inv_freq, AttnDims, Backend, CpuBackend, RopeScaling, WeightFormat};
use common::rel_err32;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;

const TOL: f64 = 1e-5;

struct Fixture {
    name: String,
    bytes: Vec<u8>,
}

impl Fixture {
    fn load(name: &str) -> Fixture {
        let path = format!("{}/../../tests/fixtures/kernels/{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Fixture { name: name.into(), bytes }
    }

    fn raw(&self, key: &str, dtype: Dtype) -> (Vec<usize>, Vec<[u8; 4]>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(key).unwrap_or_else(|e| panic!("{}: {key}: {e}", self.name));
        assert_eq!(t.dtype(), dtype, "{}: {key}", self.name);
        let data = t.data().chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
        (t.shape().to_vec(), data)
    }

    fn f32(&self, key: &str) -> Vec<f32> {
        self.raw(key, Dtype::F32).1.into_iter().map(f32::from_le_bytes).collect()
    }

    fn i32(&self, key: &str) -> Vec<i32> {
        self.raw(key, Dtype::I32).1.into_iter().map(i32::from_le_bytes).collect()
    }

    fn u32(&self, key: &str) -> Vec<u32> {
        self.i32(key).into_iter().map(|x| x as u32).collect()
    }

    /// The `config` metadata entry: a JSON object of strings.
    fn meta(&self) -> HashMap<String, String> {
        let (_, m) = SafeTensors::read_metadata(&self.bytes).unwrap();
        let config = &m.metadata().as_ref().expect("metadata")["config"];
        serde_json::from_str(config).unwrap()
    }

    fn usize(&self, key: &str) -> usize {
        self.meta()[key].parse().unwrap()
    }

    fn f64(&self, key: &str) -> f64 {
        self.meta()[key].parse().unwrap()
    }
}

#[track_caller]
fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let e = rel_err32(got, want);
    assert!(e < TOL, "{what}: relative error {e:e}");
}

fn backend() -> CpuBackend {
    CpuBackend::new(Some(2))
}

#[test]
fn linear_f32_and_bf16() {
    let f = Fixture::load("linear");
    let be = backend();
    let (rows, out, inp) = (f.usize("rows"), f.usize("out"), f.usize("inp"));
    let x = f.f32("x");
    let dy = f.f32("dy");
    // With bf16 products (AMX or AVX512-BF16), bf16 weights over more than a GEMV's rows take bf16-rounded activations too.
    let mixed = amx::bf16_products() && rows > gemv::GEMV_MAX_ROWS;
    let (ybf, dxbf) = if mixed { ("y_bf16_mixed", "dx_bf16_mixed") } else { ("y_bf16", "dx_bf16") };
    for (fmt, wkey, ykey, dxkey) in
        [(WeightFormat::F32, "w", "y", "dx"), (WeightFormat::BF16, "w", ybf, dxbf)]
    {
        let w = be.weight(&f.f32(wkey), out, inp, fmt).unwrap();
        assert_eq!(be.weight_shape(&w), (out, inp));
        if fmt == WeightFormat::BF16 {
            assert_eq!(be.weight_to_host(&w).unwrap(), f.f32("w_bf16"));
        }
        let mut y = be.zeros(rows * out + 3).unwrap();
        be.linear(&x, &w, &mut y, rows, false).unwrap();
        close(&format!("{fmt:?} y"), &y[..rows * out], &f.f32(ykey));
        assert_eq!(y[rows * out..], [0.0; 3], "wrote past the rows");
        // accumulate doubles it
        be.linear(&x, &w, &mut y, rows, true).unwrap();
        let twice: Vec<f32> = f.f32(ykey).iter().map(|v| 2.0 * v).collect();
        close(&format!("{fmt:?} y acc"), &y[..rows * out], &twice);
        let mut dx = vec![f32::NAN; rows * inp];
        be.linear_backward_input(&dy, &w, &mut dx, rows, false).unwrap();
        close(&format!("{fmt:?} dx"), &dx, &f.f32(dxkey));
    }
    let mut dw = vec![0.0; out * inp];
    be.matmul(&dy, true, &x, false, &mut dw, out, inp, rows, 1.0, 1.0).unwrap();
    close("dw", &dw, &f.f32("dw"));
}

#[test]
fn matmul_all_transposes() {
    let f = Fixture::load("matmul");
    let be = backend();
    let (m, n, k) = (f.usize("m"), f.usize("n"), f.usize("k"));
    let (alpha, beta) = (f.f64("alpha") as f32, f.f64("beta") as f32);
    for ta in [false, true] {
        for tb in [false, true] {
            let tag = format!("t{}{}", ta as u8, tb as u8);
            let mut c = f.f32(&format!("c0_{tag}"));
            be.matmul(
                &f.f32(&format!("a_{tag}")),
                ta,
                &f.f32(&format!("b_{tag}")),
                tb,
                &mut c,
                m,
                n,
                k,
                alpha,
                beta,
            )
            .unwrap();
            close(&tag, &c, &f.f32(&format!("c_{tag}")));
        }
    }
}

#[test]
fn embedding_forward_backward() {
    let f = Fixture::load("embedding");
    let be = backend();
    let (vocab, dim) = (f.usize("vocab"), f.usize("dim"));
    let ids = f.u32("ids");
    let table = f.f32("table");
    let w = be.weight(&table, vocab, dim, WeightFormat::F32).unwrap();
    let mut out = vec![0.0; ids.len() * dim];
    be.embedding(&ids, &w, &mut out).unwrap();
    close("out", &out, &f.f32("out"));
    // A bf16 table gives the rounded rows.
    let wb = be.weight(&table, vocab, dim, WeightFormat::BF16).unwrap();
    let rounded = be.weight_to_host(&wb).unwrap();
    be.embedding(&ids, &wb, &mut out).unwrap();
    for (i, &id) in ids.iter().enumerate() {
        let r = id as usize * dim;
        assert_eq!(out[i * dim..(i + 1) * dim], rounded[r..r + dim]);
    }
    let mut dtable = vec![0.0; vocab * dim];
    be.embedding_backward(&ids, &f.f32("dout"), &mut dtable, dim).unwrap();
    close("dtable", &dtable, &f.f32("dtable"));
}

#[test]
fn rmsnorm_forward_backward() {
    let f = Fixture::load("rmsnorm");
    let be = backend();
    let (rows, dim, eps) = (f.usize("rows"), f.usize("dim"), f.f64("eps") as f32);
    let (x, w) = (f.f32("x"), f.f32("w"));
    let mut out = vec![0.0; rows * dim];
    let mut rstd = vec![0.0; rows];
    be.rmsnorm(&x, &w, &mut out, &mut rstd, rows, dim, eps).unwrap();
    close("out", &out, &f.f32("out"));
    close("rstd", &rstd, &f.f32("rstd"));
    let dout = f.f32("dout");
    let mut dx = vec![f32::NAN; rows * dim];
    let mut dw = vec![0.0; dim];
    be.rmsnorm_backward(&dout, &x, &w, &rstd, &mut dx, Some(&mut dw), rows, dim, false).unwrap();
    close("dx", &dx, &f.f32("dx"));
    close("dw", &dw, &f.f32("dw"));
    // accumulate: dx += ∂L/∂x on top of the residual gradient; no dw.
    let mut dx2 = dout.clone();
    be.rmsnorm_backward(&dout, &x, &w, &rstd, &mut dx2, None, rows, dim, true).unwrap();
    let want: Vec<f32> = dout.iter().zip(f.f32("dx")).map(|(a, b)| a + b).collect();
    close("dx accumulate", &dx2, &want);
}

#[test]
fn rope_plain_and_llama3_scaled() {
    let f = Fixture::load("rope");
    let be = backend();
    let (tokens, heads, hd) = (f.usize("tokens"), f.usize("heads"), f.usize("head_dim"));
    let positions = f.u32("positions");
    let scaling = RopeScaling {
        factor: f.f64("llama3_factor"),
        low_freq_factor: f.f64("llama3_low_freq_factor"),
        high_freq_factor: f.f64("llama3_high_freq_factor"),
        original_max_position_embeddings: f.f64("llama3_original_max_position_embeddings"),
    };
    for (name, inv_freq) in [
        ("plain", rope_inv_freq(hd, f.f64("plain_theta"), None)),
        ("llama3", rope_inv_freq(hd, f.f64("llama3_theta"), Some(scaling))),
    ] {
        // The engine's table equals the float64 table rounded once (to an ulp), and Hugging
        // Face's float32 table to float32 accuracy.
        let e64 = rel_err32(&inv_freq, &f.f32(&format!("inv_freq_{name}")));
        assert!(e64 < 2e-7, "{name}: inv_freq vs float64 table {e64:e}");
        for (a, b) in inv_freq.iter().zip(f.f32(&format!("inv_freq_hf32_{name}"))) {
            assert!((a - b).abs() <= 4e-6 * b.abs(), "{name}: inv_freq {a} vs HF {b}");
        }
        let mut x = f.f32(&format!("x_{name}"));
        be.rope(&mut x, &positions, &inv_freq, tokens, heads, hd, false).unwrap();
        close(&format!("{name} y"), &x, &f.f32(&format!("y_{name}")));
        let mut d = f.f32(&format!("dy_{name}"));
        be.rope(&mut d, &positions, &inv_freq, tokens, heads, hd, true).unwrap();
        close(&format!("{name} dx"), &d, &f.f32(&format!("dx_{name}")));
    }
}

#[test]
fn swiglu_forward_backward() {
    let f = Fixture::load("swiglu");
    let be = backend();
    let n = f.usize("n");
    let (g, u) = (f.f32("gate"), f.f32("up"));
    let mut out = vec![0.0; n];
    be.swiglu(&g, &u, &mut out, n).unwrap();
    close("out", &out, &f.f32("out"));
    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    be.swiglu_backward(&f.f32("dout"), &g, &u, &mut dg, &mut du, n).unwrap();
    close("dgate", &dg, &f.f32("dgate"));
    close("dup", &du, &f.f32("dup"));
}

#[test]
fn attention_cases() {
    let f = Fixture::load("attention");
    let be = backend();
    let meta = f.meta();
    for case in ["causal", "causal_small", "docs", "decode"] {
        let v: Vec<usize> = meta[case].split(',').map(|s| s.parse().unwrap()).collect();
        let d = AttnDims {
            batch: v[0],
            q_len: v[1],
            kv_len: v[2],
            kv_stride: v[3],
            q_heads: v[4],
            kv_heads: v[5],
            head_dim: v[6],
            q_offset: v[7],
            scale: 1.0 / (v[6] as f32).sqrt(),
        };
        let key = |k: &str| format!("{case}_{k}");
        let doc = (case == "docs").then(|| f.u32(&key("doc_ids")));
        let (q, k, vv) = (f.f32(&key("q")), f.f32(&key("k")), f.f32(&key("v")));
        let mut out = vec![f32::NAN; q.len()];
        let mut lse = vec![f32::NAN; d.batch * d.q_heads * d.q_len];
        be.attention(&q, &k, &vv, &mut out, &mut lse, &d, doc.as_deref()).unwrap();
        close(&key("out"), &out, &f.f32(&key("out")));
        close(&key("lse"), &lse, &f.f32(&key("lse")));
        let (mut dq, mut dk, mut dv) =
            (vec![f32::NAN; q.len()], vec![f32::NAN; k.len()], vec![f32::NAN; k.len()]);
        be.attention_backward(
            &f.f32(&key("dout")),
            &q,
            &k,
            &vv,
            &out,
            &lse,
            &mut dq,
            &mut dk,
            &mut dv,
            &d,
            doc.as_deref(),
        )
        .unwrap();
        close(&key("dq"), &dq, &f.f32(&key("dq")));
        close(&key("dk"), &dk, &f.f32(&key("dk")));
        close(&key("dv"), &dv, &f.f32(&key("dv")));
    }
}

#[test]
fn cross_entropy_with_ignore_index() {
    let f = Fixture::load("cross_entropy");
    let be = backend();
    let (rows, vocab, gs) = (f.usize("rows"), f.usize("vocab"), f.f64("grad_scale"));
    let logits = f.f32("logits");
    let targets = f.i32("targets");
    let mut losses = vec![f32::NAN; rows];
    let mut dl = vec![f32::NAN; rows * vocab];
    be.cross_entropy(&logits, &targets, &mut losses, Some(&mut dl), rows, vocab, gs as f32).unwrap();
    close("losses", &losses, &f.f32("losses"));
    close("dlogits", &dl, &f.f32("dlogits"));
    let total: f64 = losses.iter().map(|&x| x as f64).sum();
    close("total", &[total as f32], &f.f32("total"));
    // Without a gradient buffer.
    let mut l2 = vec![0.0; rows];
    be.cross_entropy(&logits, &targets, &mut l2, None, rows, vocab, 1.0).unwrap();
    assert_eq!(l2, losses);
}

#[test]
fn linear_cross_entropy_vs_full_logits() {
    let f = Fixture::load("linear_cross_entropy");
    let be = backend();
    let (rows, vocab, dim) = (f.usize("rows"), f.usize("vocab"), f.usize("dim"));
    let gs = f.f64("grad_scale") as f32;
    let h = f.f32("h");
    let targets = f.i32("targets");
    // With bf16 products (AMX or AVX512-BF16), they take bf16-rounded activations too.
    let bf16_tag = if amx::bf16_products() { "_bf16_mixed" } else { "_bf16" };
    for (fmt, tag) in [(WeightFormat::F32, ""), (WeightFormat::BF16, bf16_tag)] {
        let w = be.weight(&f.f32("w"), vocab, dim, fmt).unwrap();
        let mut dh = vec![f32::NAN; rows * dim];
        let mut dw = vec![0.0; vocab * dim];
        let (sum, count) =
            be.linear_cross_entropy(&h, &w, &targets, rows, gs, Some(&mut dh), Some(&mut dw)).unwrap();
        assert_eq!(count, f.usize("count"));
        close(&format!("total{tag}"), &[sum as f32], &f.f32(&format!("total{tag}")));
        close(&format!("dh{tag}"), &dh, &f.f32(&format!("dh{tag}")));
        close(&format!("dw{tag}"), &dw, &f.f32(&format!("dw{tag}")));
        // Loss only.
        let (sum2, count2) = be.linear_cross_entropy(&h, &w, &targets, rows, gs, None, None).unwrap();
        assert_eq!((sum2, count2), (sum, count));
    }
}
