//! The CUDA backend against the CPU backend, kernel by kernel, forward and backward, on fresh
//! random inputs. Without a GPU (or without the CUDA libraries) the GPU check says so on stderr
//! and passes; `kernels_compile` still runs wherever NVRTC can be loaded.
//!
//! Tolerances: kernels that compute in f32 on both backends within 1e-5 (max-relative); products,
//! which the GPU takes in bf16 (bf16 or quantized weights, attention) or TF32 (f32 operands) with
//! f32 accumulation, within 2e-2 of the norm (`‖gpu − cpu‖ / ‖cpu‖`).
#![cfg(feature = "cuda")]

mod common;

use std::io::Write;

use afinar_engine::cuda::{libs, module, CudaBackend};
use afinar_engine::{
    AdamW, AttnDims, Backend, CpuBackend, DistillSpec, Divergence, HalfFormat, Products, QuantFormat,
    WeightFormat,
};
use common::{rel_err32, Rng};

const F32_TOL: f64 = 1e-5;
const PRODUCT_TOL: f64 = 2e-2;

/// Says something on the real stderr, past the test harness's capture, so CI logs show it.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) => {
            common::skipped(&format!("the CUDA backend checks need a GPU: {e}"));
            None
        }
    }
}

/// `‖a − b‖ / ‖b‖`.
fn norm_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

struct Report {
    rows: Vec<(String, f64, f64)>,
}

impl Report {
    fn f32(&mut self, name: &str, gpu: &[f32], cpu: &[f32]) {
        let e = if gpu.iter().any(|v| !v.is_finite()) { f64::INFINITY } else { rel_err32(gpu, cpu) };
        self.rows.push((name.to_string(), e, F32_TOL));
    }
    fn product(&mut self, name: &str, gpu: &[f32], cpu: &[f32]) {
        let e = if gpu.iter().any(|v| !v.is_finite()) { f64::INFINITY } else { norm_err(gpu, cpu) };
        self.rows.push((name.to_string(), e, PRODUCT_TOL));
    }
    /// For a reference that is exactly zero in exact arithmetic: the RMS of the GPU's values
    /// against the same tolerance (the inputs are of unit scale).
    fn zero(&mut self, name: &str, gpu: &[f32]) {
        let rms = (gpu.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / gpu.len().max(1) as f64).sqrt();
        self.rows.push((name.to_string(), if rms.is_finite() { rms } else { f64::INFINITY }, PRODUCT_TOL));
    }
    fn exact(&mut self, name: &str, ok: bool) {
        self.rows.push((name.to_string(), if ok { 0.0 } else { f64::INFINITY }, 0.0));
    }
}

fn randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * scale) as f32).collect()
}

/// Uploads the same data to both backends.
fn both(g: &CudaBackend, c: &CpuBackend, x: &[f32]) -> (<CudaBackend as Backend>::Buf, Vec<f32>) {
    (g.from_host(x).unwrap(), c.from_host(x).unwrap())
}

#[test]
fn kernels_compile() {
    if let Err(e) = libs::load_nvrtc() {
        common::skipped(&format!("the NVRTC compile check needs NVRTC: {e}"));
        return;
    }
    for arch in ["compute_80", "compute_90"] {
        let ptx = module::compile(arch).unwrap_or_else(|e| panic!("{e}"));
        for k in module::KERNELS {
            assert!(ptx.contains(&format!(".entry {k}(")), "kernel {k} missing from the {arch} PTX");
        }
    }
}

#[test]
fn every_kernel_matches_the_cpu_backend() {
    let Some(g) = gpu() else { return };
    let c = CpuBackend::new(None);
    let mut rng = Rng::new(0xC0DA);
    let mut r = Report { rows: Vec::new() };
    say(&format!("checking {} against {}", g.name(), c.name()));

    elementwise(&g, &c, &mut rng, &mut r);
    layers(&g, &c, &mut rng, &mut r);
    products(&g, &c, &mut rng, &mut r);
    losses(&g, &c, &mut rng, &mut r);
    distill(&g, &c, &mut rng, &mut r);
    for (b, t, h, kvh, hd) in
        [(2, 1, 8, 2, 64), (2, 17, 8, 2, 64), (2, 512, 8, 2, 64), (1, 4096, 4, 2, 64), (1, 33, 6, 6, 96)]
    {
        attention(&g, &c, &mut rng, &mut r, b, t, h, kvh, hd, 0, false);
    }
    attention(&g, &c, &mut rng, &mut r, 2, 1, 8, 2, 64, 40, false);
    attention(&g, &c, &mut rng, &mut r, 2, 7, 8, 2, 64, 25, false);
    attention(&g, &c, &mut rng, &mut r, 2, 200, 8, 2, 64, 0, true);

    let mut failed = Vec::new();
    say(&format!("{:<44} {:>12} {:>10}", "check", "error", "tolerance"));
    for (name, e, tol) in &r.rows {
        let ok = *e <= *tol;
        say(&format!("{:<44} {:>12.3e} {:>10.0e} {}", name, e, tol, if ok { "ok" } else { "FAIL" }));
        if !ok {
            failed.push(name.clone());
        }
    }
    assert!(failed.is_empty(), "GPU kernels differ from the CPU backend: {failed:?}");
}

fn elementwise(g: &CudaBackend, c: &CpuBackend, rng: &mut Rng, r: &mut Report) {
    let n = 100_003;
    let x = randn(rng, n, 1.0);
    let y = randn(rng, n, 1.0);
    let (gx, cx) = both(g, c, &x);
    let (mut gy, mut cy) = both(g, c, &y);
    g.add_assign(&mut gy, &gx, n - 5).unwrap();
    c.add_assign(&mut cy, &cx, n - 5).unwrap();
    r.f32("add_assign", &g.to_host(&gy).unwrap(), &cy);
    g.scale(&mut gy, n, -0.37).unwrap();
    c.scale(&mut cy, n, -0.37).unwrap();
    r.f32("scale", &g.to_host(&gy).unwrap(), &cy);
    g.fill(&mut gy, 1000, 2.5).unwrap();
    c.fill(&mut cy, 1000, 2.5).unwrap();
    r.f32("fill", &g.to_host(&gy).unwrap(), &cy);
    let mut gz = g.zeros(n).unwrap();
    g.copy(&gx, 10, &mut gz, 20, 500).unwrap();
    let mut cz = vec![0.0; n];
    cz[20..520].copy_from_slice(&x[10..510]);
    r.f32("copy", &g.to_host(&gz).unwrap(), &cz);

    let (mut go, mut co) = (g.zeros(n).unwrap(), vec![0.0; n]);
    g.swiglu(&gx, &gy, &mut go, n).unwrap();
    c.swiglu(&cx, &cy, &mut co, n).unwrap();
    r.f32("swiglu", &g.to_host(&go).unwrap(), &co);
    let d = randn(rng, n, 1.0);
    let (gd, cd) = both(g, c, &d);
    let (mut gg, mut gu, mut cg, mut cu) =
        (g.zeros(n).unwrap(), g.zeros(n).unwrap(), vec![0.0; n], vec![0.0; n]);
    g.swiglu_backward(&gd, &gx, &gy, &mut gg, &mut gu, n).unwrap();
    c.swiglu_backward(&cd, &cx, &cy, &mut cg, &mut cu, n).unwrap();
    r.f32("swiglu_backward dgate", &g.to_host(&gg).unwrap(), &cg);
    r.f32("swiglu_backward dup", &g.to_host(&gu).unwrap(), &cu);

    g.dropout(&gx, &mut go, n, 0.3, 77).unwrap();
    c.dropout(&cx, &mut co, n, 0.3, 77).unwrap();
    r.exact("dropout (same mask)", g.to_host(&go).unwrap() == co);
    for format in [HalfFormat::Bf16, HalfFormat::F16] {
        // Values past f16's range and below its normal range round as on the CPU.
        let mut x = randn(rng, n, 1.0);
        x[..4].copy_from_slice(&[7.0e4, -1.0e5, 3.0e-6, 1.0e-8]);
        let (gs, cs) = both(g, c, &x);
        let (mut gh, mut ch) = (g.zeros_half(n + 3, format).unwrap(), c.zeros_half(n + 3, format).unwrap());
        g.to_half(&gs, 1, &mut gh, 3, n - 1).unwrap();
        c.to_half(&cs, 1, &mut ch, 3, n - 1).unwrap();
        let (mut gw, mut cw) = (g.zeros(n + 3).unwrap(), vec![0.0; n + 3]);
        g.from_half(&gh, 0, &mut gw, 0, n + 3).unwrap();
        c.from_half(&ch, 0, &mut cw, 0, n + 3).unwrap();
        let same = g.to_host(&gw).unwrap().iter().zip(&cw).all(|(a, b)| a.to_bits() == b.to_bits());
        r.exact(&format!("to_half / from_half {format:?} (bit for bit)"), same);
    }
    let (sg, sc) = (g.sum_squares(&gx, n).unwrap(), c.sum_squares(&cx, n).unwrap());
    r.f32("sum_squares", &[sg as f32], &[sc as f32]);

    let hp = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 3 };
    let m = randn(rng, n, 0.1);
    let v: Vec<f32> = randn(rng, n, 0.1).iter().map(|a| a * a).collect();
    let (mut gp, mut cp) = both(g, c, &x);
    let (mut gm, mut cm) = both(g, c, &m);
    let (mut gv, mut cv) = both(g, c, &v);
    g.adamw(&mut gp, &gd, &mut gm, &mut gv, n, &hp).unwrap();
    c.adamw(&mut cp, &cd, &mut cm, &mut cv, n, &hp).unwrap();
    r.f32("adamw param", &g.to_host(&gp).unwrap(), &cp);
    r.f32("adamw m", &g.to_host(&gm).unwrap(), &cm);
    r.f32("adamw v", &g.to_host(&gv).unwrap(), &cv);
    let (rows, cols) = (37, 64);
    let mut gw = g.weight(&x[..rows * cols], rows, cols, WeightFormat::F32).unwrap();
    let mut cw = c.weight(&x[..rows * cols], rows, cols, WeightFormat::F32).unwrap();
    g.adamw_weight(&mut gw, &gd, &mut gm, &mut gv, &hp).unwrap();
    c.adamw_weight(&mut cw, &cd, &mut cm, &mut cv, &hp).unwrap();
    r.f32("adamw_weight", &g.weight_to_host(&gw).unwrap(), &c.weight_to_host(&cw).unwrap());
}

fn layers(g: &CudaBackend, c: &CpuBackend, rng: &mut Rng, r: &mut Report) {
    // Embedding tables in every format, looked up and read back.
    let (vocab, dim) = (300, 128);
    let table = randn(rng, vocab * dim, 0.5);
    let ids: Vec<u32> = (0..77).map(|_| rng.below(vocab) as u32).collect();
    for (name, f) in [
        ("f32", WeightFormat::F32),
        ("bf16", WeightFormat::BF16),
        ("q8_0", WeightFormat::Quant(QuantFormat::Q8_0)),
        ("q4_0", WeightFormat::Quant(QuantFormat::Q4_0)),
        ("q4_1", WeightFormat::Quant(QuantFormat::Q4_1)),
        ("nf4", WeightFormat::Quant(QuantFormat::Nf4)),
    ] {
        let gt = g.weight(&table, vocab, dim, f).unwrap();
        let ct = c.weight(&table, vocab, dim, f).unwrap();
        r.f32(
            &format!("weight_to_host {name}"),
            &g.weight_to_host(&gt).unwrap(),
            &c.weight_to_host(&ct).unwrap(),
        );
        let (mut go, mut co) = (g.zeros(ids.len() * dim).unwrap(), vec![0.0; ids.len() * dim]);
        g.embedding(&ids, &gt, &mut go).unwrap();
        c.embedding(&ids, &ct, &mut co).unwrap();
        r.f32(&format!("embedding {name}"), &g.to_host(&go).unwrap(), &co);
    }
    let dout = randn(rng, ids.len() * dim, 1.0);
    let (gd, cd) = both(g, c, &dout);
    let base = randn(rng, vocab * dim, 1.0);
    let (mut gt, mut ct) = both(g, c, &base);
    g.embedding_backward(&ids, &gd, &mut gt, dim).unwrap();
    c.embedding_backward(&ids, &cd, &mut ct, dim).unwrap();
    r.f32("embedding_backward", &g.to_host(&gt).unwrap(), &ct);

    // RMSNorm forward and backward (with and without dw, accumulating and not).
    let (rows, dim) = (67, 576);
    let x = randn(rng, rows * dim, 2.0);
    let w = randn(rng, dim, 1.0);
    let (gx, cx) = both(g, c, &x);
    let (gw, cw) = both(g, c, &w);
    let (mut go, mut co) = (g.zeros(rows * dim).unwrap(), vec![0.0; rows * dim]);
    let (mut grs, mut crs) = (g.zeros(rows).unwrap(), vec![0.0; rows]);
    g.rmsnorm(&gx, &gw, &mut go, &mut grs, rows, dim, 1e-5).unwrap();
    c.rmsnorm(&cx, &cw, &mut co, &mut crs, rows, dim, 1e-5).unwrap();
    r.f32("rmsnorm", &g.to_host(&go).unwrap(), &co);
    r.f32("rmsnorm rstd", &g.to_host(&grs).unwrap(), &crs);
    let dout = randn(rng, rows * dim, 1.0);
    let (gd, cd) = both(g, c, &dout);
    let prev = randn(rng, rows * dim, 1.0);
    let (mut gdx, mut cdx) = both(g, c, &prev);
    let dw0 = randn(rng, dim, 1.0);
    let (mut gdw, mut cdw) = both(g, c, &dw0);
    g.rmsnorm_backward(&gd, &gx, &gw, &grs, &mut gdx, Some(&mut gdw), rows, dim, true).unwrap();
    c.rmsnorm_backward(&cd, &cx, &cw, &crs, &mut cdx, Some(&mut cdw), rows, dim, true).unwrap();
    r.f32("rmsnorm_backward dx (+=)", &g.to_host(&gdx).unwrap(), &cdx);
    r.f32("rmsnorm_backward dw", &g.to_host(&gdw).unwrap(), &cdw);
    g.rmsnorm_backward(&gd, &gx, &gw, &grs, &mut gdx, None, rows, dim, false).unwrap();
    c.rmsnorm_backward(&cd, &cx, &cw, &crs, &mut cdx, None, rows, dim, false).unwrap();
    r.f32("rmsnorm_backward dx", &g.to_host(&gdx).unwrap(), &cdx);

    // RoPE, plain and Llama-3.1-scaled frequencies, forward and inverse, large positions.
    let (tokens, heads, hd) = (45, 6, 64);
    let x = randn(rng, tokens * heads * hd, 1.0);
    let pos: Vec<u32> = (0..tokens).map(|_| rng.below(131_072) as u32).collect();
    let llama31 = afinar_engine::RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };
    for (name, scaling) in [("rope", None), ("rope scaled", Some(llama31))] {
        let inv = afinar_engine::rope_inv_freq(hd, 500_000.0, scaling);
        for inverse in [false, true] {
            let (mut gx, mut cx) = both(g, c, &x);
            g.rope(&mut gx, &pos, &inv, tokens, heads, hd, inverse).unwrap();
            c.rope(&mut cx, &pos, &inv, tokens, heads, hd, inverse).unwrap();
            r.f32(&format!("{name}{}", if inverse { " inverse" } else { "" }), &g.to_host(&gx).unwrap(), &cx);
        }
    }
}

fn products(g: &CudaBackend, c: &CpuBackend, rng: &mut Rng, r: &mut Report) {
    let (rows, inn, out) = (70, 256, 192);
    let x = randn(rng, rows * inn, 1.0);
    let wv = randn(rng, out * inn, 0.05);
    let (gx, cx) = both(g, c, &x);
    let dy = randn(rng, rows * out, 1.0);
    let (gdy, cdy) = both(g, c, &dy);
    for (name, f) in [
        ("f32", WeightFormat::F32),
        ("bf16", WeightFormat::BF16),
        ("q8_0", WeightFormat::Quant(QuantFormat::Q8_0)),
        ("q4_1", WeightFormat::Quant(QuantFormat::Q4_1)),
        ("nf4", WeightFormat::Quant(QuantFormat::Nf4)),
    ] {
        let gw = g.weight(&wv, out, inn, f).unwrap();
        let cw = c.weight(&wv, out, inn, f).unwrap();
        let y0 = randn(rng, rows * out, 1.0);
        let (mut gy, mut cy) = both(g, c, &y0);
        g.linear(&gx, &gw, &mut gy, rows, true).unwrap();
        c.linear(&cx, &cw, &mut cy, rows, true).unwrap();
        r.product(&format!("linear {name} (+=)"), &g.to_host(&gy).unwrap(), &cy);
        g.linear(&gx, &gw, &mut gy, rows, false).unwrap();
        c.linear(&cx, &cw, &mut cy, rows, false).unwrap();
        r.product(&format!("linear {name}"), &g.to_host(&gy).unwrap(), &cy);
        let (mut gdx, mut cdx) = (g.zeros(rows * inn).unwrap(), vec![0.0; rows * inn]);
        g.linear_backward_input(&gdy, &gw, &mut gdx, rows, false).unwrap();
        c.linear_backward_input(&cdy, &cw, &mut cdx, rows, false).unwrap();
        r.product(&format!("linear_backward_input {name}"), &g.to_host(&gdx).unwrap(), &cdx);
    }
    for accumulate in [false, true] {
        let dw0 = randn(rng, out * inn, 1.0);
        let (mut gdw, mut cdw) = both(g, c, &dw0);
        g.linear_backward_weight(&gdy, &gx, &mut gdw, rows, out, inn, Products::F32, accumulate).unwrap();
        c.linear_backward_weight(&cdy, &cx, &mut cdw, rows, out, inn, Products::F32, accumulate).unwrap();
        r.product(
            &format!("linear_backward_weight accumulate={accumulate}"),
            &g.to_host(&gdw).unwrap(),
            &cdw,
        );
    }
    let (m, n, k) = (65, 47, 129);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = randn(rng, m * k, 1.0);
        let b = randn(rng, k * n, 1.0);
        let c0 = randn(rng, m * n, 1.0);
        let (ga, ca) = both(g, c, &a);
        let (gb, cb) = both(g, c, &b);
        let (mut gc, mut cc) = both(g, c, &c0);
        g.matmul(&ga, ta, &gb, tb, &mut gc, m, n, k, 0.5, 1.0).unwrap();
        c.matmul(&ca, ta, &cb, tb, &mut cc, m, n, k, 0.5, 1.0).unwrap();
        r.product(&format!("matmul ta={ta} tb={tb}"), &g.to_host(&gc).unwrap(), &cc);
    }
}

fn losses(g: &CudaBackend, c: &CpuBackend, rng: &mut Rng, r: &mut Report) {
    let (rows, vocab) = (33, 50_000);
    let logits = randn(rng, rows * vocab, 3.0);
    let targets: Vec<i32> =
        (0..rows).map(|i| if i % 7 == 3 { -100 } else { rng.below(vocab) as i32 }).collect();
    let (gl, cl) = both(g, c, &logits);
    let (mut gls, mut cls) = (g.zeros(rows).unwrap(), vec![0.0; rows]);
    let (mut gdl, mut cdl) = (g.zeros(rows * vocab).unwrap(), vec![0.0; rows * vocab]);
    g.cross_entropy(&gl, &targets, &mut gls, Some(&mut gdl), rows, vocab, 0.25).unwrap();
    c.cross_entropy(&cl, &targets, &mut cls, Some(&mut cdl), rows, vocab, 0.25).unwrap();
    r.f32("cross_entropy losses", &g.to_host(&gls).unwrap(), &cls);
    r.f32("cross_entropy dlogits", &g.to_host(&gdl).unwrap(), &cdl);

    let (rows, dim, vocab) = (150, 128, 3000);
    let h = randn(rng, rows * dim, 1.0);
    let wv = randn(rng, vocab * dim, 0.1);
    let targets: Vec<i32> =
        (0..rows).map(|i| if i % 5 == 0 { -100 } else { rng.below(vocab) as i32 }).collect();
    let (gh, ch) = both(g, c, &h);
    for (name, f) in [
        ("f32", WeightFormat::F32),
        ("bf16", WeightFormat::BF16),
        ("nf4", WeightFormat::Quant(QuantFormat::Nf4)),
    ] {
        let gw = g.weight(&wv, vocab, dim, f).unwrap();
        let cw = c.weight(&wv, vocab, dim, f).unwrap();
        let (mut gdh, mut cdh) = (g.zeros(rows * dim).unwrap(), vec![0.0; rows * dim]);
        let dw0 = randn(rng, vocab * dim, 0.01);
        let (mut gdw, mut cdw) = both(g, c, &dw0);
        let (gs, gn) =
            g.linear_cross_entropy(&gh, &gw, &targets, rows, 0.5, Some(&mut gdh), Some(&mut gdw)).unwrap();
        let (cs, cn) =
            c.linear_cross_entropy(&ch, &cw, &targets, rows, 0.5, Some(&mut cdh), Some(&mut cdw)).unwrap();
        r.exact(&format!("linear_cross_entropy {name} count"), gn == cn);
        r.product(&format!("linear_cross_entropy {name} loss"), &[gs as f32], &[cs as f32]);
        r.product(&format!("linear_cross_entropy {name} dh"), &g.to_host(&gdh).unwrap(), &cdh);
        let gdw: Vec<f32> = g.to_host(&gdw).unwrap().iter().zip(&dw0).map(|(a, b)| a - b).collect();
        let cdw: Vec<f32> = cdw.iter().zip(&dw0).map(|(a, b)| a - b).collect();
        r.product(&format!("linear_cross_entropy {name} dw (+=)"), &gdw, &cdw);

        // Per-token log-probabilities and their backward for a per-row upstream gradient.
        let glp = g.linear_log_probs(&gh, &gw, &targets, rows).unwrap();
        let clp = c.linear_log_probs(&ch, &cw, &targets, rows).unwrap();
        r.product(&format!("linear_log_probs {name}"), &glp, &clp);
        let up = randn(rng, rows, 1.0);
        let (mut gdh, mut cdh) = (g.zeros(rows * dim).unwrap(), vec![0.0; rows * dim]);
        let (mut gdw, mut cdw) = both(g, c, &dw0);
        g.linear_log_probs_backward(&gh, &gw, &targets, rows, &up, Some(&mut gdh), Some(&mut gdw)).unwrap();
        c.linear_log_probs_backward(&ch, &cw, &targets, rows, &up, Some(&mut cdh), Some(&mut cdw)).unwrap();
        r.product(&format!("linear_log_probs_backward {name} dh"), &g.to_host(&gdh).unwrap(), &cdh);
        let gdw: Vec<f32> = g.to_host(&gdw).unwrap().iter().zip(&dw0).map(|(a, b)| a - b).collect();
        let cdw: Vec<f32> = cdw.iter().zip(&dw0).map(|(a, b)| a - b).collect();
        r.product(&format!("linear_log_probs_backward {name} dw (+=)"), &gdw, &cdw);
    }
}

/// The distillation head: every divergence, a temperature, ignored rows, several chunks' worth
/// of rows on neither side, student heads in f32 (trainable, with `dw`) and bf16, teachers in
/// f32, bf16, NF4 and Q8_0, and a teacher wider than the student.
fn distill(g: &CudaBackend, c: &CpuBackend, rng: &mut Rng, r: &mut Report) {
    let (rows, dim, dim_t, vocab) = (70, 64, 128, 3000);
    let hs = randn(rng, rows * dim, 1.0);
    let ht = randn(rng, rows * dim_t, 1.0);
    let ws = randn(rng, vocab * dim, 0.1);
    let wt = randn(rng, vocab * dim_t, 0.1);
    let targets: Vec<i32> =
        (0..rows).map(|i| if i % 6 == 1 { -100 } else { rng.below(vocab) as i32 }).collect();
    let (ghs, chs) = both(g, c, &hs);
    let (ght, cht) = both(g, c, &ht);
    let cases = [
        (Divergence::ForwardKl, 1.0, WeightFormat::F32, WeightFormat::F32),
        (Divergence::ForwardKl, 2.0, WeightFormat::F32, WeightFormat::BF16),
        (Divergence::ReverseKl, 1.0, WeightFormat::F32, WeightFormat::Quant(QuantFormat::Nf4)),
        (Divergence::ReverseKl, 0.5, WeightFormat::BF16, WeightFormat::Quant(QuantFormat::Q8_0)),
        (Divergence::Jsd, 1.0, WeightFormat::BF16, WeightFormat::BF16),
        (Divergence::Jsd, 1.5, WeightFormat::F32, WeightFormat::Quant(QuantFormat::Q8_0)),
    ];
    for (div, temperature, fs, ft) in cases {
        let name = format!("linear_distill {div:?} T={temperature} {fs:?}/{ft:?}");
        let spec = DistillSpec { divergence: div, temperature, kd_grad_scale: 0.3, ce_grad_scale: 0.2 };
        let (gws, cws) = (g.weight(&ws, vocab, dim, fs).unwrap(), c.weight(&ws, vocab, dim, fs).unwrap());
        let (gwt, cwt) = (g.weight(&wt, vocab, dim_t, ft).unwrap(), c.weight(&wt, vocab, dim_t, ft).unwrap());
        let (mut gdh, mut cdh) = (g.zeros(rows * dim).unwrap(), vec![0.0; rows * dim]);
        let trainable = fs == WeightFormat::F32;
        let dw0 = randn(rng, vocab * dim, 0.01);
        let (mut gdw, mut cdw) = both(g, c, &dw0);
        let gs = g
            .linear_distill(
                &ghs,
                &gws,
                &ght,
                &gwt,
                &targets,
                rows,
                &spec,
                Some(&mut gdh),
                trainable.then_some(&mut gdw),
            )
            .unwrap();
        let cs = c
            .linear_distill(
                &chs,
                &cws,
                &cht,
                &cwt,
                &targets,
                rows,
                &spec,
                Some(&mut cdh),
                trainable.then_some(&mut cdw),
            )
            .unwrap();
        r.exact(&format!("{name} count"), gs.count == cs.count);
        r.product(&format!("{name} kd"), &[gs.kd as f32], &[cs.kd as f32]);
        r.product(&format!("{name} ce"), &[gs.ce as f32], &[cs.ce as f32]);
        r.product(&format!("{name} dh"), &g.to_host(&gdh).unwrap(), &cdh);
        if trainable {
            let gdw: Vec<f32> = g.to_host(&gdw).unwrap().iter().zip(&dw0).map(|(a, b)| a - b).collect();
            let cdw: Vec<f32> = cdw.iter().zip(&dw0).map(|(a, b)| a - b).collect();
            r.product(&format!("{name} dw (+=)"), &gdw, &cdw);
        }
        let alone = g.linear_distill(&ghs, &gws, &ght, &gwt, &targets, rows, &spec, None, None).unwrap();
        r.product(&format!("{name} kd without grads"), &[alone.kd as f32], &[cs.kd as f32]);
    }
}

#[allow(clippy::too_many_arguments)]
fn attention(
    g: &CudaBackend,
    c: &CpuBackend,
    rng: &mut Rng,
    r: &mut Report,
    batch: usize,
    q_len: usize,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    q_offset: usize,
    docs: bool,
) {
    let kv_len = q_offset + q_len;
    let kv_stride = kv_len + if q_offset > 0 { 5 } else { 0 };
    let dims = AttnDims {
        batch,
        q_len,
        kv_len,
        kv_stride,
        q_heads,
        kv_heads,
        head_dim,
        q_offset,
        scale: 1.0 / (head_dim as f32).sqrt(),
    };
    let nq = batch * q_len * q_heads * head_dim;
    let nk = batch * kv_stride * kv_heads * head_dim;
    let q = randn(rng, nq, 1.0);
    let k = randn(rng, nk, 1.0);
    let v = randn(rng, nk, 1.0);
    let doc: Option<Vec<u32>> =
        docs.then(|| (0..batch * kv_len).map(|i| ((i % kv_len) / 37 + 10 * (i / kv_len)) as u32).collect());
    let (gq, cq) = both(g, c, &q);
    let (gk, ck) = both(g, c, &k);
    let (gv, cv) = both(g, c, &v);
    let (mut go, mut co) = (g.zeros(nq).unwrap(), vec![0.0; nq]);
    let nl = batch * q_heads * q_len;
    let (mut gl, mut cl) = (g.zeros(nl).unwrap(), vec![0.0; nl]);
    g.attention(&gq, &gk, &gv, &mut go, &mut gl, &dims, doc.as_deref()).unwrap();
    c.attention(&cq, &ck, &cv, &mut co, &mut cl, &dims, doc.as_deref()).unwrap();
    let tag = format!(
        "attention b{batch} t{q_len} h{q_heads}/{kv_heads} d{head_dim}{}{}",
        if q_offset > 0 { format!(" off{q_offset}") } else { String::new() },
        if docs { " docs" } else { "" }
    );
    r.product(&format!("{tag} out"), &g.to_host(&go).unwrap(), &co);
    r.product(&format!("{tag} lse"), &g.to_host(&gl).unwrap(), &cl);
    let dout = randn(rng, nq, 1.0);
    let (gd, cd) = both(g, c, &dout);
    let (mut gdq, mut cdq) = (g.zeros(nq).unwrap(), vec![0.0; nq]);
    let (mut gdk, mut cdk) = (g.from_host(&vec![9.0; nk]).unwrap(), vec![9.0; nk]);
    let (mut gdv, mut cdv) = (g.from_host(&vec![9.0; nk]).unwrap(), vec![9.0; nk]);
    g.attention_backward(&gd, &gq, &gk, &gv, &go, &gl, &mut gdq, &mut gdk, &mut gdv, &dims, doc.as_deref())
        .unwrap();
    c.attention_backward(&cd, &cq, &ck, &cv, &co, &cl, &mut cdq, &mut cdk, &mut cdv, &dims, doc.as_deref())
        .unwrap();
    if kv_len == 1 {
        // One key: the softmax is constant, so dq and dk are exactly zero (the CPU's are rounding
        // noise near 1e-8, the GPU's bf16 noise near 1e-3): check their size, not a ratio.
        r.zero(&format!("{tag} dq (exactly 0)"), &g.to_host(&gdq).unwrap());
        r.zero(&format!("{tag} dk (exactly 0)"), &g.to_host(&gdk).unwrap());
    } else {
        r.product(&format!("{tag} dq"), &g.to_host(&gdq).unwrap(), &cdq);
        r.product(&format!("{tag} dk"), &g.to_host(&gdk).unwrap(), &cdk);
    }
    r.product(&format!("{tag} dv"), &g.to_host(&gdv).unwrap(), &cdv);
}
