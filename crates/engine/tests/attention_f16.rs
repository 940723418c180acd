//! Attention against an f16 KV cache (`cpu::attention::attention_forward_f16`, its portable
//! variant and `Backend::attention_half`) against the f32 kernel on the same values widened to
//! f32: grouped-query heads, odd cache lengths, caches longer than their valid part, several
//! sequences, a few queries at an offset (decoding) and a prompt pass (the widening path); and
//! the CUDA backend against the CPU one where a GPU is present.

mod common;

use afinar_engine::cpu::attention::{
    attention_forward, attention_forward_f16, attention_forward_f16_portable, f16_simd_available, kv_elems,
    lse_elems, q_elems, AttnTiles,
};
use afinar_engine::AttnDims;
use common::Rng;
use half::f16;

/// Queries, keys and values as f16 bits, keys and values widened to f32.
type Case = (Vec<f32>, Vec<u16>, Vec<u16>, Vec<f32>, Vec<f32>);

/// Random queries and an f16 cache for `d`, plus the cache widened to f32.
fn case(d: &AttnDims, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let q: Vec<f32> = rng.normals(q_elems(d)).into_iter().map(|x| x as f32).collect();
    let mut half =
        |n: usize| -> Vec<u16> { rng.normals(n).into_iter().map(|x| f16::from_f64(x).to_bits()).collect() };
    let (k, v) = (half(kv_elems(d)), half(kv_elems(d)));
    let widen = |h: &[u16]| h.iter().map(|&b| f16::from_bits(b).to_f32()).collect::<Vec<f32>>();
    let (kf, vf) = (widen(&k), widen(&v));
    (q, k, v, kf, vf)
}

fn dims(
    batch: usize,
    q_len: usize,
    kv_len: usize,
    kv_stride: usize,
    q_heads: usize,
    kv_heads: usize,
    hd: usize,
) -> AttnDims {
    AttnDims {
        batch,
        q_len,
        kv_len,
        kv_stride,
        q_heads,
        kv_heads,
        head_dim: hd,
        q_offset: kv_len.saturating_sub(q_len),
        scale: 1.0 / (hd as f32).sqrt(),
    }
}

/// Largest |a − b| over the valid outputs, relative to the largest |b| (1 when all are zero).
fn rel(a: &[f32], b: &[f32]) -> f32 {
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    diff / b.iter().map(|y| y.abs()).fold(0.0f32, f32::max).max(1.0)
}

fn check(d: &AttnDims, doc: Option<&[u32]>, seed: u64) {
    let (q, k, v, kf, vf) = case(d, seed);
    let (mut out_ref, mut lse_ref) = (vec![0.0f32; q_elems(d)], vec![0.0f32; lse_elems(d)]);
    attention_forward(&q, &kf, &vf, &mut out_ref, &mut lse_ref, d, doc, AttnTiles::for_forward(d));
    type Kernel = fn(&[f32], &[u16], &[u16], &mut [f32], &mut [f32], &AttnDims, Option<&[u32]>);
    let kernels: [(&str, Kernel); 2] =
        [("dispatch", attention_forward_f16), ("portable", attention_forward_f16_portable)];
    for (name, f) in kernels {
        // Start from garbage so that unwritten outputs show.
        let (mut out, mut lse) = (vec![f32::NAN; q_elems(d)], vec![f32::NAN; lse_elems(d)]);
        f(&q, &k, &v, &mut out, &mut lse, d, doc);
        let (eo, el) = (rel(&out, &out_ref), rel(&lse, &lse_ref));
        assert!(eo < 1e-5 && el < 1e-5, "{name} {d:?}: out error {eo}, lse error {el}");
    }
}

#[test]
fn decode_matches_f32_kernel_gqa_odd_lengths() {
    eprintln!("AVX-512 f16 kernel available: {}", f16_simd_available());
    // SmolLM2's shape (9 query heads on 3 kv heads of 64), one new token, cache lengths around
    // the kernel's 64-key runs; then a cache with spare capacity, two sequences, 3 new tokens.
    for (seed, kv_len) in (1..).zip([1, 2, 7, 63, 64, 65, 128, 129, 300, 625]) {
        check(&dims(1, 1, kv_len, kv_len, 9, 3, 64), None, seed);
    }
    check(&dims(1, 1, 77, 200, 9, 3, 64), None, 20);
    check(&dims(2, 1, 150, 161, 9, 3, 64), None, 21);
    check(&dims(2, 3, 133, 140, 9, 3, 64), None, 22);
    check(&dims(1, 8, 8, 8, 4, 4, 32), None, 23);
    // Head size 128 (Llama 3): two rows per pass of the value kernel, an odd row last.
    check(&dims(1, 3, 200, 210, 8, 2, 128), None, 26);
    check(&dims(1, 1, 65, 65, 1, 1, 128), None, 27);
    // Head sizes that are not a multiple of 16 (the SIMD kernel's step) take the portable loops.
    check(&dims(1, 1, 41, 45, 6, 2, 24), None, 24);
    check(&dims(2, 2, 19, 19, 2, 1, 8), None, 25);
}

#[test]
fn prompt_pass_and_documents_match_f32_kernel() {
    // More than 8 queries: the keys and values are widened and the f32 kernel runs.
    check(&dims(1, 40, 40, 64, 9, 3, 64), None, 30);
    check(&dims(2, 17, 50, 60, 9, 3, 64), None, 31);
    // Document ids take the same path, also for a single query.
    let d = dims(1, 1, 30, 30, 4, 2, 16);
    let doc: Vec<u32> = (0..30).map(|i| u32::from(i >= 12)).collect();
    check(&d, Some(&doc), 32);
}

#[test]
fn empty_cache_gives_zero_output() {
    // No visible key (kv_len 0 with q_offset 0 is impossible for causal self-attention, but a
    // cache call may be made with nothing to attend): zero output, lse = −∞, as the f32 kernel.
    let d = AttnDims { q_offset: 0, ..dims(1, 1, 0, 4, 2, 1, 16) };
    let (q, k, v, _, _) = case(&d, 40);
    let (mut out, mut lse) = (vec![f32::NAN; q_elems(&d)], vec![f32::NAN; lse_elems(&d)]);
    attention_forward_f16(&q, &k, &v, &mut out, &mut lse, &d, None);
    assert!(out.iter().all(|&x| x == 0.0) && lse.iter().all(|&x| x == f32::NEG_INFINITY));
}

#[test]
fn backend_attention_half_matches_attention_on_widened_values() {
    use afinar_engine::{Backend, CpuBackend, HalfFormat};
    let be = CpuBackend::new(Some(2));
    // Decoding (direct f16 kernel), a prompt pass (widened), and a bf16 cache (widened).
    let cases = [
        (dims(1, 1, 300, 320, 9, 3, 64), HalfFormat::F16),
        (dims(2, 2, 70, 80, 9, 3, 64), HalfFormat::F16),
        (dims(1, 20, 20, 32, 4, 2, 32), HalfFormat::F16),
        (dims(2, 1, 45, 50, 9, 3, 64), HalfFormat::Bf16),
    ];
    for (i, (d, format)) in cases.into_iter().enumerate() {
        let mut rng = Rng::new(50 + i as u64);
        let mut f32s = |n: usize| -> Vec<f32> { rng.normals(n).into_iter().map(|x| x as f32).collect() };
        let (q, kf, vf) = (f32s(q_elems(&d)), f32s(kv_elems(&d)), f32s(kv_elems(&d)));
        let n = kv_elems(&d);
        let (mut kh, mut vh) = (be.zeros_half(n, format).unwrap(), be.zeros_half(n, format).unwrap());
        be.to_half(&kf, 0, &mut kh, 0, n).unwrap();
        be.to_half(&vf, 0, &mut vh, 0, n).unwrap();
        // The reference reads the same rounded values as f32.
        let (mut kw, mut vw) = (vec![0.0; n], vec![0.0; n]);
        be.from_half(&kh, 0, &mut kw, 0, n).unwrap();
        be.from_half(&vh, 0, &mut vw, 0, n).unwrap();
        let (mut out_ref, mut lse_ref) = (vec![0.0; q_elems(&d)], vec![0.0; lse_elems(&d)]);
        be.attention(&q, &kw, &vw, &mut out_ref, &mut lse_ref, &d, None).unwrap();
        let (mut out, mut lse) = (vec![f32::NAN; q_elems(&d)], vec![f32::NAN; lse_elems(&d)]);
        be.attention_half(&q, &kh, &vh, &mut out, &mut lse, &d, None).unwrap();
        let (eo, el) = (rel(&out, &out_ref), rel(&lse, &lse_ref));
        assert!(eo < 1e-5 && el < 1e-5, "{format:?} {d:?}: out error {eo}, lse error {el}");
        // A cache shorter than the dims ask for is a shape error, not a panic.
        let short = be.zeros_half(n - 1, format).unwrap();
        assert!(be.attention_half(&q, &short, &vh, &mut out, &mut lse, &d, None).is_err());
    }
}

/// The CUDA backend's `attention_half` (the trait's default: widen, then its f32 attention)
/// against the CPU backend's on the same f16 caches: decoding with GQA and spare capacity, and a
/// prompt pass. Skips without a GPU.
#[cfg(feature = "cuda")]
#[test]
fn cuda_attention_half_matches_cpu() {
    use afinar_engine::{Backend, CpuBackend, CudaBackend, HalfFormat};
    let g = match CudaBackend::new(0) {
        Ok(g) => g,
        Err(e) => {
            common::skipped(&format!("needs a GPU: {e}"));
            return;
        }
    };
    let c = CpuBackend::new(Some(2));
    for (i, d) in
        [dims(1, 1, 300, 320, 9, 3, 64), dims(2, 3, 70, 80, 9, 3, 64), dims(1, 20, 20, 32, 4, 2, 32)]
            .into_iter()
            .enumerate()
    {
        let mut rng = Rng::new(70 + i as u64);
        let mut f32s = |n: usize| -> Vec<f32> { rng.normals(n).into_iter().map(|x| x as f32).collect() };
        let (q, k, v) = (f32s(q_elems(&d)), f32s(kv_elems(&d)), f32s(kv_elems(&d)));
        let n = kv_elems(&d);
        let half = |x: &[f32]| {
            let (gs, mut gh) = (g.from_host(x).unwrap(), g.zeros_half(n, HalfFormat::F16).unwrap());
            g.to_half(&gs, 0, &mut gh, 0, n).unwrap();
            let mut ch = c.zeros_half(n, HalfFormat::F16).unwrap();
            c.to_half(&x.to_vec(), 0, &mut ch, 0, n).unwrap();
            (gh, ch)
        };
        let ((gk, ck), (gv, cv)) = (half(&k), half(&v));
        let gq = g.from_host(&q).unwrap();
        let (mut go, mut gl) = (g.zeros(q_elems(&d)).unwrap(), g.zeros(lse_elems(&d)).unwrap());
        g.attention_half(&gq, &gk, &gv, &mut go, &mut gl, &d, None).unwrap();
        let (mut co, mut cl) = (vec![0.0; q_elems(&d)], vec![0.0; lse_elems(&d)]);
        c.attention_half(&q, &ck, &cv, &mut co, &mut cl, &d, None).unwrap();
        // The GPU's attention takes bf16 operands (see tests/cuda.rs): a product's tolerance.
        let (eo, el) = (rel(&g.to_host(&go).unwrap(), &co), rel(&g.to_host(&gl).unwrap(), &cl));
        assert!(eo < 2e-2 && el < 2e-2, "{d:?}: out error {eo}, lse error {el}");
    }
}
