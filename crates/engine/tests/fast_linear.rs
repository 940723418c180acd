//! The fast linear paths of the CPU backend (few-row GEMV, AMX bf16) against the reference
//! `gemm` path (`cpu::matmul`), including results independent of the thread count.

mod common;

use common::{norm_err32, rel_err32, skipped, tested_path};

use afinar_engine::cpu::{amx, gemv, matmul};
use afinar_engine::{Backend, CpuBackend, Products, WeightFormat};
use half::bf16;

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

const FORMATS: [WeightFormat; 2] = [WeightFormat::F32, WeightFormat::BF16];

/// Whether this CPU has bf16 product units (AMX tiles, or AVX512-BF16 dot products); without
/// them, says so in a `SKIPPED` line (the bf16 kernels cannot run here), with them, names the
/// unit tested (`AFINAR_CPU_LEVEL=avx512_bf16` picks the dot products on an AMX machine; the
/// levels test runs both).
fn amx_here() -> bool {
    if amx::bf16_products() {
        tested_path(if amx::available() { "AMX bf16 tiles" } else { "AVX512-BF16 dot products" });
        true
    } else {
        skipped(
            "needs bf16 products (Intel AMX or AVX512-BF16), which this CPU lacks; the paths that run \
             here are checked by gemv_matches_gemm_path and mixed_precision_products_match_a_naive_reference",
        );
        false
    }
}

/// The GEMV path `CpuBackend::linear` takes for few rows on this CPU.
fn gemv_path() -> &'static str {
    if gemv::avx512_available() {
        "AVX-512 GEMV kernel (and the portable one, called directly)"
    } else {
        "portable GEMV only (no AVX-512 here: the backend runs the portable loop too)"
    }
}

/// `x[rows, inner] · w[cols, inner]ᵀ` in f64, the plainest triple loop: the reference that
/// shares no code with the backend.
fn naive_abt(a: &[f32], b: &[f32], rows: usize, cols: usize, inner: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let s: f64 = (0..inner).map(|k| a[r * inner + k] as f64 * b[c * inner + k] as f64).sum();
            y[r * cols + c] = s as f32;
        }
    }
    y
}

/// `m[rows, cols]ᵀ` (row-major).
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

#[test]
fn gemv_matches_gemm_path() {
    tested_path(gemv_path());
    let be = CpuBackend::new(Some(2));
    for (out, inp) in [(17, 33), (64, 576), (5, 16), (130, 7), (1, 1), (9, 100)] {
        for fmt in FORMATS {
            let wv = randn(out * inp, 3 + out as u64);
            let w = be.weight(&wv, out, inp, fmt).unwrap();
            for rows in 1..=gemv::GEMV_MAX_ROWS {
                let x = randn(rows * inp, 7 + rows as u64);
                for accumulate in [false, true] {
                    let y0 = randn(rows * out, 11);
                    let mut reference = y0.clone();
                    matmul::linear_forward(&x, w.as_ref(), &mut reference, rows, out, inp, accumulate);
                    let mut fast = if accumulate { y0.clone() } else { vec![f32::NAN; rows * out] };
                    be.linear(&x, &w, &mut fast, rows, accumulate).unwrap();
                    let mut portable = if accumulate { y0.clone() } else { vec![f32::NAN; rows * out] };
                    gemv::linear_gemv_portable(&x, w.as_ref(), &mut portable, rows, out, inp, accumulate);
                    for (name, got) in [("simd", &fast), ("portable", &portable)] {
                        let e = rel_err32(got, &reference);
                        assert!(e < 1e-5, "{name} {fmt:?} rows {rows} {out}x{inp} acc {accumulate}: {e}");
                    }
                }
            }
        }
    }
}

#[test]
fn gemv_is_independent_of_thread_count() {
    tested_path(gemv_path());
    let (rows, out, inp) = (3, 1000, 577);
    let x = randn(rows * inp, 1);
    for fmt in FORMATS {
        let mut results = Vec::new();
        for threads in [1, 2, 3, 5] {
            let be = CpuBackend::new(Some(threads));
            let w = be.weight(&randn(out * inp, 2), out, inp, fmt).unwrap();
            let mut y = vec![0.0; rows * out];
            be.linear(&x, &w, &mut y, rows, false).unwrap();
            results.push(y);
        }
        assert!(results.windows(2).all(|p| p[0] == p[1]), "{fmt:?}: results depend on the thread count");
    }
}

#[test]
fn gemv_empty_inner_dimension_gives_zeros() {
    let be = CpuBackend::new(Some(2));
    let w = be.weight(&[], 3, 0, WeightFormat::BF16).unwrap();
    let mut y = vec![f32::NAN; 6];
    be.linear(&Vec::new(), &w, &mut y, 2, false).unwrap();
    assert_eq!(y, vec![0.0; 6]);
}

/// Shapes with ragged edges in every dimension, and the SmolLM2 attention shape.
const AMX_SHAPES: [(usize, usize, usize); 6] =
    [(9, 17, 31), (33, 50, 70), (100, 96, 576), (64, 32, 32), (40, 1, 1), (70, 200, 33)];

#[test]
fn amx_linear_matches_gemm_path() {
    if !amx_here() {
        return;
    }
    let be = CpuBackend::new(Some(2));
    for (rows, out, inp) in AMX_SHAPES {
        let wv = randn(out * inp, 5);
        let w = be.weight(&wv, out, inp, WeightFormat::BF16).unwrap();
        let bits: Vec<bf16> = wv.iter().map(|&v| bf16::from_f32(v)).collect();
        let x = randn(rows * inp, 6);
        let dy = randn(rows * out, 8);
        for accumulate in [false, true] {
            // Forward: the activations are rounded to bf16 and the products accumulate in f32,
            // so the result equals the f32 path on bf16-rounded activations up to the order of
            // additions, and the unrounded product to bf16 precision.
            let y0 = randn(rows * out, 9);
            let mut fast = if accumulate { y0.clone() } else { vec![f32::NAN; rows * out] };
            be.linear(&x, &w, &mut fast, rows, accumulate).unwrap();
            let mut same_input = y0.clone();
            matmul::linear_forward(&round_bf16(&x), w.as_ref(), &mut same_input, rows, out, inp, accumulate);
            let mut exact = y0.clone();
            matmul::linear_forward(&x, w.as_ref(), &mut exact, rows, out, inp, accumulate);
            let tag = format!("fwd {rows}x{inp}->{out} acc {accumulate}");
            assert!(rel_err32(&fast, &same_input) < 1e-5, "{tag}: {}", rel_err32(&fast, &same_input));
            assert!(norm_err32(&fast, &exact) < 1e-2, "{tag}: {}", norm_err32(&fast, &exact));
            let mut direct = if accumulate { y0.clone() } else { vec![f32::NAN; rows * out] };
            amx::linear_forward(&x, &bits, &mut direct, rows, out, inp, accumulate);
            assert_eq!(direct, fast, "{tag}: backend and direct call differ");

            // Input gradient.
            let dx0 = randn(rows * inp, 10);
            let mut fast = if accumulate { dx0.clone() } else { vec![f32::NAN; rows * inp] };
            be.linear_backward_input(&dy, &w, &mut fast, rows, accumulate).unwrap();
            let mut same_input = dx0.clone();
            matmul::linear_backward_input(
                &round_bf16(&dy),
                w.as_ref(),
                &mut same_input,
                rows,
                out,
                inp,
                accumulate,
            );
            let mut exact = dx0.clone();
            matmul::linear_backward_input(&dy, w.as_ref(), &mut exact, rows, out, inp, accumulate);
            let tag = format!("dx {rows}x{out}->{inp} acc {accumulate}");
            assert!(rel_err32(&fast, &same_input) < 1e-5, "{tag}: {}", rel_err32(&fast, &same_input));
            assert!(norm_err32(&fast, &exact) < 1e-2, "{tag}: {}", norm_err32(&fast, &exact));
        }
    }
}

#[test]
fn amx_is_independent_of_thread_count() {
    if !amx_here() {
        return;
    }
    let (rows, out, inp) = (300, 260, 200);
    let x = randn(rows * inp, 1);
    let dy = randn(rows * out, 2);
    let wv = randn(out * inp, 3);
    let mut results = Vec::new();
    for threads in [1, 2, 3] {
        let be = CpuBackend::new(Some(threads));
        let w = be.weight(&wv, out, inp, WeightFormat::BF16).unwrap();
        let mut y = vec![0.0; rows * out];
        be.linear(&x, &w, &mut y, rows, false).unwrap();
        let mut dx = vec![0.0; rows * inp];
        be.linear_backward_input(&dy, &w, &mut dx, rows, false).unwrap();
        results.push((y, dx));
    }
    assert!(results.windows(2).all(|p| p[0] == p[1]), "results depend on the thread count");
}

#[test]
fn amx_propagates_non_finite_inputs() {
    if !amx_here() {
        return;
    }
    let (rows, out, inp) = (20, 18, 40);
    let mut x = randn(rows * inp, 1);
    x[3 * inp + 5] = f32::NAN;
    x[7 * inp] = f32::INFINITY;
    let bits: Vec<bf16> = randn(out * inp, 2).iter().map(|&v| bf16::from_f32(v)).collect();
    let mut y = vec![0.0; rows * out];
    amx::linear_forward(&x, &bits, &mut y, rows, out, inp, false);
    for r in 0..rows {
        let row = &y[r * out..(r + 1) * out];
        match r {
            3 => assert!(row.iter().all(|v| v.is_nan())),
            7 => assert!(row.iter().all(|v| !v.is_finite())),
            _ => assert!(row.iter().all(|v| v.is_finite())),
        }
    }
}

#[test]
fn amx_linear_cross_entropy_matches_f32_path() {
    if !amx_here() {
        return;
    }
    let be = CpuBackend::new(Some(2));
    // Ragged vocab and dim; 300 rows fit one block of the vocabulary, 4100 rows take two row
    // chunks, the first in three vocabulary blocks (the last one short).
    for (rows, vocab, dim) in [(300, 1000, 96), (4100, 1500, 64)] {
        let w_bits: Vec<f32> = round_bf16(&randn(vocab * dim, 1));
        let h = randn(rows * dim, 2);
        let targets: Vec<i32> =
            (0..rows).map(|r| if r % 7 == 3 { -100 } else { (r * 37 % vocab) as i32 }).collect();
        let w = be.weight(&w_bits, vocab, dim, WeightFormat::BF16).unwrap();
        let (mut dh, mut dw) = (vec![f32::NAN; rows * dim], vec![0.0; vocab * dim]);
        let (sum, count) =
            be.linear_cross_entropy(&h, &w, &targets, rows, 0.5, Some(&mut dh), Some(&mut dw)).unwrap();
        // Reference: the f32 path on bf16-rounded activations (AMX rounds h to bf16).
        let wf = be.weight(&w_bits, vocab, dim, WeightFormat::F32).unwrap();
        let (mut dh_ref, mut dw_ref) = (vec![0.0; rows * dim], vec![0.0; vocab * dim]);
        let (sum_ref, count_ref) = be
            .linear_cross_entropy(
                &round_bf16(&h),
                &wf,
                &targets,
                rows,
                0.5,
                Some(&mut dh_ref),
                Some(&mut dw_ref),
            )
            .unwrap();
        assert_eq!(count, count_ref);
        assert!((sum - sum_ref).abs() < 1e-5 * sum_ref.abs(), "{rows} rows: loss {sum} vs {sum_ref}");
        // dh rounds the logit gradients to bf16 before the product; dW (of a bf16 weight) does not.
        assert!(norm_err32(&dh, &dh_ref) < 1e-2, "{rows} rows: dh: {}", norm_err32(&dh, &dh_ref));
        assert!(norm_err32(&dw, &dw_ref) < 1e-2, "{rows} rows: dw: {}", norm_err32(&dw, &dw_ref));
        // The loss alone (no gradients) is the same sum.
        let (alone, _) = be.linear_cross_entropy(&h, &w, &targets, rows, 0.5, None, None).unwrap();
        assert_eq!(alone.to_bits(), sum.to_bits());
    }
    let (rows, vocab, dim) = (300, 1000, 96);
    let w_bits: Vec<f32> = round_bf16(&randn(vocab * dim, 1));
    let h = randn(rows * dim, 2);
    // A packed weight serves many products: same result as packing per call.
    let bits: Vec<bf16> = w_bits.iter().map(|&v| bf16::from_f32(v)).collect();
    let packed = amx::pack_linear(&bits, vocab, dim);
    let (mut y1, mut y2) = (vec![0.0; rows * vocab], vec![0.0; rows * vocab]);
    amx::matmul_packed(&h, &packed, &mut y1, rows, false);
    amx::linear_forward(&h, &bits, &mut y2, rows, vocab, dim, false);
    assert_eq!(y1, y2);
}

/// Mixed precision ([`Products::Bf16`] on the weight and the weight-gradient call): products with
/// f32 weights, weight gradients and the
/// fused output projection take bf16-rounded operands with f32 sums (AMX), so they equal a naive
/// f64 reference on operands rounded to bf16 beforehand, up to summation order. Without AMX the
/// flag changes nothing: the f32 path must then equal the reference on the unrounded operands.
#[test]
fn mixed_precision_products_match_a_naive_reference() {
    let be = CpuBackend::new(Some(2));
    let amx = amx::bf16_products();
    tested_path(if amx {
        "bf16 products (AMX or AVX512-BF16) on f32 weights (mixed precision)"
    } else {
        "f32 products (no bf16 units here: Products::Bf16 has no effect), against the naive reference"
    });
    let (rows, out, inp) = (70, 96, 160);
    let (x, wv, dy) = (randn(rows * inp, 1), randn(out * inp, 2), randn(rows * out, 3));
    let r = |v: &[f32]| if amx { round_bf16(v) } else { v.to_vec() };
    let mut w = be.weight(&wv, out, inp, WeightFormat::F32).unwrap();
    be.set_weight_products(&mut w, Products::Bf16);
    assert_eq!(be.weight_products(&w), Products::Bf16);

    let y0 = randn(rows * out, 4);
    let mut y = y0.clone();
    be.linear(&x, &w, &mut y, rows, true).unwrap();
    let y_ref: Vec<f32> =
        naive_abt(&r(&x), &r(&wv), rows, out, inp).iter().zip(&y0).map(|(a, b)| a + b).collect();
    assert!(rel_err32(&y, &y_ref) < 1e-5, "linear: {}", rel_err32(&y, &y_ref));

    let mut dx = vec![f32::NAN; rows * inp];
    be.linear_backward_input(&dy, &w, &mut dx, rows, false).unwrap();
    let dx_ref = naive_abt(&r(&dy), &transpose(&r(&wv), out, inp), rows, inp, out);
    assert!(rel_err32(&dx, &dx_ref) < 1e-5, "input grad: {}", rel_err32(&dx, &dx_ref));

    let dw0 = randn(out * inp, 5);
    let mut dw = dw0.clone();
    be.linear_backward_weight(&dy, &x, &mut dw, rows, out, inp, Products::Bf16, true).unwrap();
    let dw_ref: Vec<f32> =
        naive_abt(&transpose(&r(&dy), rows, out), &transpose(&r(&x), rows, inp), out, inp, rows)
            .iter()
            .zip(&dw0)
            .map(|(a, b)| a + b)
            .collect();
    assert!(rel_err32(&dw, &dw_ref) < 1e-5, "weight grad: {}", rel_err32(&dw, &dw_ref));

    // Fused output projection against softmax cross-entropy written out: loss and dh as the
    // reference on rounded operands; dW within bf16 rounding of the logits' gradient (which
    // the reference keeps in f64).
    let (vocab, dim, n) = (300, 64, 40);
    let scale = 0.5f32;
    let (h, ov) = (randn(n * dim, 6), randn(vocab * dim, 7));
    let targets: Vec<i32> =
        (0..n as i32).map(|i| if i % 9 == 4 { -100 } else { (i * 37) % vocab as i32 }).collect();
    let mut ow = be.weight(&ov, vocab, dim, WeightFormat::F32).unwrap();
    be.set_weight_products(&mut ow, Products::Bf16);
    let (mut dh, mut gw) = (vec![0.0; n * dim], vec![0.0; vocab * dim]);
    let (l, c) = be.linear_cross_entropy(&h, &ow, &targets, n, scale, Some(&mut dh), Some(&mut gw)).unwrap();
    let (hr, owr) = (r(&h), r(&ov));
    let logits = naive_abt(&hr, &owr, n, vocab, dim);
    let (mut l_ref, mut c_ref) = (0.0f64, 0usize);
    let mut g = vec![0.0f32; n * vocab]; // ∂(scale · Σ loss)/∂logits
    for (i, &t) in targets.iter().enumerate() {
        if t < 0 {
            continue;
        }
        let row = &logits[i * vocab..(i + 1) * vocab];
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
        let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        l_ref += m + z.ln() - row[t as usize] as f64;
        c_ref += 1;
        for (j, &v) in row.iter().enumerate() {
            let p = (v as f64 - m).exp() / z - if j == t as usize { 1.0 } else { 0.0 };
            g[i * vocab + j] = (scale as f64 * p) as f32;
        }
    }
    let dh_ref = naive_abt(&g, &transpose(&owr, vocab, dim), n, dim, vocab);
    let gw_ref = naive_abt(&transpose(&g, n, vocab), &transpose(&hr, n, dim), vocab, dim, n);
    assert_eq!(c, c_ref);
    assert!(((l - l_ref) / l_ref).abs() < 1e-5, "loss {l} vs {l_ref}");
    assert!(norm_err32(&dh, &dh_ref) < 1e-2, "dh: {}", norm_err32(&dh, &dh_ref));
    assert!(norm_err32(&gw, &gw_ref) < 1e-2, "dW: {}", norm_err32(&gw, &gw_ref));
    if !amx {
        // The f32 path keeps the logits' gradient in f32: far closer than bf16 rounding.
        assert!(norm_err32(&dh, &dh_ref) < 1e-5, "dh: {}", norm_err32(&dh, &dh_ref));
        assert!(norm_err32(&gw, &gw_ref) < 1e-5, "dW: {}", norm_err32(&gw, &gw_ref));
    }
}

#[test]
fn f32_weights_pack_as_their_bf16_rounding() {
    // Packing f32 values (vector conversion, ragged panels, odd row counts, inner sizes off
    // multiples of 32) gives the same products as packing their bf16 rounding.
    if !amx_here() {
        return;
    }
    for (rows, out, inp) in [(33, 37, 100), (40, 50, 45), (64, 96, 160), (5, 17, 31)] {
        let (w, x) = (randn(out * inp, 11), randn(rows * inp, 12));
        let bits: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let (mut y, mut y_ref) = (vec![0.0; rows * out], vec![0.0; rows * out]);
        amx::matmul_packed(&x, &amx::pack_linear_f32(&w, out, inp), &mut y, rows, false);
        amx::matmul_packed(&x, &amx::pack_linear(&bits, out, inp), &mut y_ref, rows, false);
        assert_eq!(y, y_ref, "{out}×{inp} weight");
        let dy = randn(rows * out, 13);
        let (mut dx, mut dx_ref) = (vec![0.0; rows * inp], vec![0.0; rows * inp]);
        amx::matmul_packed(&dy, &amx::pack_linear_transposed_f32(&w, out, inp), &mut dx, rows, false);
        amx::matmul_packed(&dy, &amx::pack_linear_transposed(&bits, out, inp), &mut dx_ref, rows, false);
        assert_eq!(dx, dx_ref, "{out}×{inp} weight, transposed");
    }
}

#[test]
fn amx_weight_gradient_over_no_rows_is_zero() {
    // A weight gradient over zero rows (k = 0): zeros, or the old values when accumulating.
    if !amx_here() {
        return;
    }
    let (out, inp) = (40, 24);
    let mut dw = vec![f32::NAN; out * inp];
    amx::weight_grad(&[], &[], &mut dw, 0, out, inp, false);
    assert!(dw.iter().all(|&v| v == 0.0));
    let mut dw = vec![1.5; out * inp];
    amx::weight_grad(&[], &[], &mut dw, 0, out, inp, true);
    assert!(dw.iter().all(|&v| v == 1.5));
}
