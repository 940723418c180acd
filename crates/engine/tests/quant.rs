//! Quantized (GGUF block) weights on the CPU backend (Q8_0, Q4_0, Q4_1 and Q4_K): dequantization
//! bit-exact against `afinar_checkpoint::quant` (and, for Q4_K, `afinar_formats`' reference), the
//! decode GEMV (8-bit activations) within the error bound of its activation rounding, the tile
//! path (rows > 8, input gradient, fused output loss) against dequantize-then-f32, embedding
//! lookups, and independence of the thread count. Q4_K rows are whole 256-value super-blocks,
//! so it skips the shapes with fewer columns and has some of its own.

mod common;

use common::{norm_err32, rel_err32};

use afinar_checkpoint::{quant as ckpt, DType};
use afinar_engine::cpu::{gemv, matmul, quant, CpuWeightData};
use afinar_engine::{AdamW, Backend, CpuBackend, EngineError, QuantFormat, WeightFormat};

const FORMATS: [QuantFormat; 4] =
    [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Q4_K];

fn dtype(f: QuantFormat) -> DType {
    match f {
        QuantFormat::Q8_0 => DType::Q8_0,
        QuantFormat::Q4_0 => DType::Q4_0,
        QuantFormat::Q4_1 => DType::Q4_1,
        QuantFormat::Q4_K => DType::Q4_K,
        QuantFormat::Nf4 => unreachable!("NF4 has no GGUF type (tested in nf4.rs)"),
    }
}

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

/// Random blocks of `format` for a `[rows, cols]` matrix: random quant bytes, f16 scales of
/// magnitude up to `scale` (with the occasional zero, subnormal and negative scale). Q4_K's
/// packed 6-bit sub-block scales and mins are random bytes too (every value 0..=63), except for
/// some super-blocks with all of them at 63 or at 0; its `d` and `dmin` are smaller (the 6-bit
/// scales multiply them), so that its values are of the same size as the other formats'.
fn random_blocks(format: QuantFormat, rows: usize, cols: usize, seed: u64, scale: f32) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let bb = format.block_bytes();
    let mut out = vec![0u8; rows * cols / format.block_len() * bb];
    let k = format == QuantFormat::Q4_K;
    for (i, b) in out.chunks_exact_mut(bb).enumerate() {
        for v in b.iter_mut() {
            *v = rng.next() as u8;
        }
        let d = match i % 23 {
            5 => 0.0,
            11 => 3e-7, // subnormal in f16
            _ => rng.f() * if k { scale / 32.0 } else { scale },
        };
        b[..2].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
        if format == QuantFormat::Q4_1 {
            let m = rng.f() * scale * 8.0;
            b[2..4].copy_from_slice(&half::f16::from_f32(m).to_bits().to_le_bytes());
        }
        if k {
            let dmin = if i % 19 == 7 { 0.0 } else { rng.f() * scale / 8.0 };
            b[2..4].copy_from_slice(&half::f16::from_f32(dmin).to_bits().to_le_bytes());
            match i % 7 {
                3 => b[4..16].fill(0xff), // every scale and min 63
                4 => b[4..16].fill(0),    // every scale and min 0
                _ => {}
            }
        }
    }
    out
}

/// Whether `[_, cols]` matrices of `format` exist (Q4_K needs whole 256-value super-blocks).
fn fits(format: QuantFormat, cols: usize) -> bool {
    format.row_bytes(cols).is_some()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn dequantization_is_bit_exact() {
    let be = CpuBackend::new(Some(2));
    for format in FORMATS {
        for (rows, cols, seed) in
            [(1, 32, 1), (7, 96, 2), (300, 576, 3), (65, 1536, 4), (1, 256, 5), (40, 512, 6)]
        {
            if !fits(format, cols) {
                continue;
            }
            let blocks = random_blocks(format, rows, cols, seed, 0.05);
            let want = ckpt::dequantize(dtype(format), &blocks, rows * cols).unwrap();
            if format == QuantFormat::Q4_K {
                // The formats crate's reference dequantizer, directly.
                let mut reference = vec![f32::NAN; rows * cols];
                afinar_formats::ggml::k_quants::dequantize_q4_k(&blocks, &mut reference);
                assert_eq!(bits(&reference), bits(&want));
            }
            let w = be.weight_quantized(&blocks, format, rows, cols).unwrap();
            assert_eq!(be.weight_shape(&w), (rows, cols));
            assert_eq!(be.weight_format(&w), WeightFormat::Quant(format));
            assert!(matches!(w.data(), CpuWeightData::Quant { .. }));
            let got = be.weight_to_host(&w).unwrap();
            assert_eq!(bits(&got), bits(&want), "{format:?} [{rows}, {cols}]");
            // Row ranges (the tile path's unit) and single rows (embedding lookups).
            let q = quant::QuantRef::new(format, &blocks, rows, cols);
            let r0 = rows / 3;
            let mut part = vec![f32::NAN; (rows - r0) * cols];
            quant::dequantize_rows(q, r0, &mut part);
            assert_eq!(bits(&part), bits(&want[r0 * cols..]));
            let ids: Vec<u32> = (0..rows as u32).rev().step_by(3).chain([0, 0]).collect();
            let mut emb = vec![f32::NAN; ids.len() * cols];
            be.embedding(&ids, &w, &mut emb).unwrap();
            for (i, &id) in ids.iter().enumerate() {
                let id = id as usize;
                assert_eq!(bits(&emb[i * cols..(i + 1) * cols]), bits(&want[id * cols..(id + 1) * cols]));
            }
        }
    }
}

/// The bound on `|y − y_ref|` from rounding the activations: each `x` moves by at most half a
/// step `d_x / 2` of its block, so an output moves by at most `Σ_b d_x,b / 2 · Σ_{i∈b} |w_i|`.
fn activation_bound(x: &[f32], w: &[f32], inp: usize) -> f32 {
    let mut bound = 0.0f64;
    for (xb, wb) in x[..inp].chunks(32).zip(w[..inp].chunks(32)) {
        let d = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
        bound += d / 2.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>();
    }
    bound as f32
}

#[test]
fn gemv_is_within_the_activation_rounding_bound() {
    let be = CpuBackend::new(Some(2));
    let mut worst = [0.0f64; 4];
    for (fi, format) in FORMATS.into_iter().enumerate() {
        let shapes = [
            (64, 576),
            (17, 32),
            (130, 96),
            (1, 1536),
            (576, 1536),
            (5, 64),
            (64, 512),
            (5, 256),
            (130, 768),
        ];
        for (out, inp) in shapes {
            if !fits(format, inp) {
                continue;
            }
            let blocks = random_blocks(format, out, inp, out as u64 + 7 * inp as u64, 0.02);
            let w = be.weight_quantized(&blocks, format, out, inp).unwrap();
            let wd = be.weight_to_host(&w).unwrap();
            // Up to GEMV_MAX_ROWS, and the short prompts that take this path for GGUF blocks.
            for rows in [1, 2, 3, 4, 5, 8, 9, 25, gemv::QUANT_GEMV_MAX_ROWS] {
                let mut rng = Rng::new(rows as u64);
                let x = rng.vec(rows * inp);
                for accumulate in [false, true] {
                    let y0 = rng.vec(rows * out);
                    let mut reference = y0.clone();
                    matmul::linear_forward(
                        &x,
                        matmul::WeightRef::Dense(&wd),
                        &mut reference,
                        rows,
                        out,
                        inp,
                        accumulate,
                    );
                    let mut fast = if accumulate { y0.clone() } else { vec![f32::NAN; rows * out] };
                    be.linear(&x, &w, &mut fast, rows, accumulate).unwrap();
                    let mut portable = if accumulate { y0.clone() } else { vec![f32::NAN; rows * out] };
                    gemv::linear_gemv_portable(&x, w.as_ref(), &mut portable, rows, out, inp, accumulate);
                    let tag = format!("{format:?} rows {rows} {out}x{inp} acc {accumulate}");
                    for r in 0..rows {
                        for o in 0..out {
                            let bound = activation_bound(&x[r * inp..], &wd[o * inp..], inp);
                            let i = r * out + o;
                            // f32 rounding of the sums on top of the bound.
                            let slack = 1e-5 * (1.0 + reference[i].abs());
                            let e = (fast[i] - reference[i]).abs();
                            assert!(e <= bound + slack, "{tag} ({r}, {o}): err {e} > bound {bound}");
                            let e = (portable[i] - reference[i]).abs();
                            assert!(e <= bound + slack, "{tag} ({r}, {o}) portable: err {e} > bound {bound}");
                        }
                    }
                    // The SIMD and portable kernels compute the same exact integer block dots and
                    // differ only in the order of the f32 sums.
                    assert!(rel_err32(&fast, &portable) < 1e-5, "{tag}: simd vs portable");
                    // (A norm over one or a few outputs is one noisy sample: keep the big ones.)
                    if !accumulate && out >= 64 {
                        worst[fi] = worst[fi].max(norm_err32(&fast, &reference));
                    }
                }
            }
        }
    }
    eprintln!("GEMV vs f32 on the dequantized weight, worst ‖Δ‖/‖y‖ (Q8_0, Q4_0, Q4_1, Q4_K): {worst:?}");
    // 8-bit activations: each activation moves by a uniform-like error of at most half a step,
    // rms ≈ max|x| / (254 · √3) ≈ 0.4% of rms(x) for these uniform inputs, so ≈ 0.5% of ‖y‖
    // when the weights have no common offset (observed: 0.45% for Q8_0 and Q4_0) and somewhat
    // more for Q4_1's random offsets, whose large |w| add error while their sums cancel
    // (observed: 1.0%). The per-output bound above is the strict check.
    // Q4_K's random mins play the part of Q4_1's offsets.
    assert!(worst[..2].iter().all(|&e| e < 6e-3) && worst[2..].iter().all(|&e| e < 1.5e-2), "{worst:?}");
}

#[test]
fn gemv_is_independent_of_thread_count() {
    let (rows, out, inp) = (3, 1000, 768);
    let x = Rng::new(1).vec(rows * inp);
    for format in FORMATS {
        let blocks = random_blocks(format, out, inp, 9, 0.02);
        let mut results = Vec::new();
        for threads in [1, 2, 3, 5] {
            let be = CpuBackend::new(Some(threads));
            let w = be.weight_quantized(&blocks, format, out, inp).unwrap();
            let mut y = vec![0.0; rows * out];
            be.linear(&x, &w, &mut y, rows, false).unwrap();
            results.push(y);
        }
        assert!(results.windows(2).all(|p| p[0] == p[1]), "{format:?}: results depend on the thread count");
    }
}

/// Extreme blocks, where a kernel that widens byte products to `i16` pairs the wrong way would
/// saturate: Q8_0 weights of −128 and 127, 4-bit weights of 0 and 15, against activations at the
/// full ±127 with signs matching (row 0) or opposing (row 1) the weight signs of output 0. The
/// activations ±1 quantize exactly (up to `d_x · 127 ≈ 1`), so every path must give the f64 dot
/// of the dequantized weights to f32 rounding. Outputs 8 and 3 cover the 4-row and 1-row kernels.
/// Q4_K's blocks have every 6-bit scale at 63 and every min at 0.
#[test]
fn gemv_does_not_saturate_on_extreme_blocks() {
    let be = CpuBackend::new(Some(2));
    // Signs of output 0's weights, by column, equal within each pair of columns (the i16 pairs).
    let big = |o: usize, i: usize| (i / 2 + o).is_multiple_of(3);
    for format in FORMATS {
        // An odd number of blocks (the VNNI kernel's single-block tail), two Q4_K super-blocks.
        let (rows, inp) = (2, if format == QuantFormat::Q4_K { 512 } else { 96 });
        let x: Vec<f32> = (0..rows * inp)
            .map(|k| {
                let s = if big(0, k % inp) { 1.0 } else { -1.0 };
                if k < inp {
                    s
                } else {
                    -s
                }
            })
            .collect();
        for out in [8, 3] {
            let (bb, bl) = (format.block_bytes(), format.block_len());
            let mut blocks = vec![0u8; out * inp / bl * bb];
            for (n, b) in blocks.chunks_exact_mut(bb).enumerate() {
                let (o, c0) = (n / (inp / bl), n % (inp / bl) * bl);
                b[..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
                match format {
                    QuantFormat::Q8_0 => {
                        for (j, q) in b[2..].iter_mut().enumerate() {
                            *q = if big(o, c0 + j) { 0x7f } else { 0x80 };
                        }
                    }
                    QuantFormat::Q4_K => {
                        // dmin = 0 (bytes 2..4 stay zero); scales 0-3 = 63 with the top bits of
                        // scales 4-7 (bytes 0-3), mins 0 (bytes 4-7), low bits of scales 4-7.
                        b[4..8].fill(0xff);
                        b[12..16].fill(0x0f);
                        for (k, q) in b[16..].iter_mut().enumerate() {
                            // Byte 32c + i: element i of sub-blocks 2c (low) and 2c + 1 (high).
                            let (c, i) = (k / 32, k % 32);
                            let lo = if big(o, c0 + 64 * c + i) { 0x0f } else { 0 };
                            let hi = if big(o, c0 + 64 * c + 32 + i) { 0xf0 } else { 0 };
                            *q = lo | hi;
                        }
                    }
                    _ => {
                        // Q4_1's offset m = 0 (bytes 2..4 stay zero).
                        let qs = if format == QuantFormat::Q4_0 { &mut b[2..18] } else { &mut b[4..20] };
                        for (j, q) in qs.iter_mut().enumerate() {
                            let lo = if big(o, c0 + j) { 0x0f } else { 0 };
                            let hi = if big(o, c0 + j + 16) { 0xf0 } else { 0 };
                            *q = lo | hi;
                        }
                    }
                }
            }
            let w = be.weight_quantized(&blocks, format, out, inp).unwrap();
            let wd = be.weight_to_host(&w).unwrap();
            let want: Vec<f32> = (0..rows * out)
                .map(|k| {
                    let (r, o) = (k / out, k % out);
                    (0..inp).map(|i| x[r * inp + i] as f64 * wd[o * inp + i] as f64).sum::<f64>() as f32
                })
                .collect();
            // Row 0 against output 0: every product has the same sign, the largest the format has.
            let aligned: f64 = wd[..inp].iter().map(|v| v.abs() as f64).sum();
            assert_eq!(want[0] as f64, aligned as f32 as f64, "{format:?}: the case is not extreme");
            let mut fast = vec![f32::NAN; rows * out];
            be.linear(&x, &w, &mut fast, rows, false).unwrap();
            let mut portable = vec![f32::NAN; rows * out];
            gemv::linear_gemv_portable(&x, w.as_ref(), &mut portable, rows, out, inp, false);
            for (k, &v) in want.iter().enumerate() {
                let tol = 1e-5 * (1.0 + v.abs());
                assert!((fast[k] - v).abs() <= tol, "{format:?} out {out} [{k}]: {} vs {v}", fast[k]);
                assert!(
                    (portable[k] - v).abs() <= tol,
                    "{format:?} out {out} [{k}] portable: {}",
                    portable[k]
                );
            }
        }
    }
}

#[test]
fn gemv_propagates_non_finite_activations() {
    let be = CpuBackend::new(Some(2));
    for format in FORMATS {
        let (rows, out, inp) = (3, 10, if format == QuantFormat::Q4_K { 256 } else { 64 });
        let w = be.weight_quantized(&random_blocks(format, out, inp, 3, 0.02), format, out, inp).unwrap();
        let mut x = Rng::new(2).vec(rows * inp);
        x[inp + 40] = f32::NAN;
        x[2 * inp + 3] = f32::INFINITY;
        let mut y = vec![0.0; rows * out];
        be.linear(&x, &w, &mut y, rows, false).unwrap();
        assert!(y[..out].iter().all(|v| v.is_finite()), "{format:?}");
        assert!(y[out..].iter().all(|v| !v.is_finite()), "{format:?}");
    }
}

#[test]
fn tile_path_matches_dequantize_then_f32() {
    let be = CpuBackend::new(Some(2));
    for format in FORMATS {
        // Past QUANT_GEMV_MAX_ROWS (fewer rows take the int8 GEMV path, tested above).
        for (rows, out, inp) in
            [(33, 17, 32), (40, 576, 576), (100, 300, 1536), (35, 1, 64), (33, 5, 256), (40, 130, 768)]
        {
            if !fits(format, inp) {
                continue;
            }
            let blocks = random_blocks(format, out, inp, rows as u64, 0.02);
            let w = be.weight_quantized(&blocks, format, out, inp).unwrap();
            let wd = be.weight_to_host(&w).unwrap();
            let dense = be.weight(&wd, out, inp, WeightFormat::F32).unwrap();
            let mut rng = Rng::new(out as u64);
            let x = rng.vec(rows * inp);
            let dy = rng.vec(rows * out);
            for accumulate in [false, true] {
                let tag = format!("{format:?} {rows}x{inp}->{out} acc {accumulate}");
                let y0 = rng.vec(rows * out);
                let mut want = y0.clone();
                be.linear(&x, &dense, &mut want, rows, accumulate).unwrap();
                let mut got = if accumulate { y0.clone() } else { vec![f32::NAN; rows * out] };
                be.linear(&x, &w, &mut got, rows, accumulate).unwrap();
                assert!(rel_err32(&got, &want) < 1e-5, "fwd {tag}: {}", rel_err32(&got, &want));

                // The input gradient takes the tile path for any number of rows.
                for r in [rows, 1, 3] {
                    let dx0 = rng.vec(r * inp);
                    let mut want = dx0.clone();
                    be.linear_backward_input(&dy, &dense, &mut want, r, accumulate).unwrap();
                    let mut got = if accumulate { dx0.clone() } else { vec![f32::NAN; r * inp] };
                    be.linear_backward_input(&dy, &w, &mut got, r, accumulate).unwrap();
                    assert!(rel_err32(&got, &want) < 1e-5, "dx {tag} rows {r}: {}", rel_err32(&got, &want));
                }
            }
        }
    }
}

#[test]
fn fused_output_loss_on_a_quantized_table() {
    let be = CpuBackend::new(Some(2));
    for format in FORMATS {
        let (rows, vocab, dim) = (11, 300, if format == QuantFormat::Q4_K { 256 } else { 64 });
        let w = be.weight_quantized(&random_blocks(format, vocab, dim, 5, 0.05), format, vocab, dim).unwrap();
        let dense = be.weight(&be.weight_to_host(&w).unwrap(), vocab, dim, WeightFormat::F32).unwrap();
        let h = Rng::new(3).vec(rows * dim);
        let targets: Vec<i32> = (0..rows as i32).map(|i| if i == 4 { -100 } else { i * 13 % 300 }).collect();
        let mut dh_q = vec![0.0; rows * dim];
        let mut dh_d = vec![0.0; rows * dim];
        let (lq, nq) = be.linear_cross_entropy(&h, &w, &targets, rows, 0.5, Some(&mut dh_q), None).unwrap();
        let (ld, nd) =
            be.linear_cross_entropy(&h, &dense, &targets, rows, 0.5, Some(&mut dh_d), None).unwrap();
        assert_eq!(nq, nd);
        assert!((lq - ld).abs() < 1e-5 * ld.abs(), "{format:?}: {lq} vs {ld}");
        assert!(rel_err32(&dh_q, &dh_d) < 1e-5, "{format:?}");
    }
}

#[test]
fn weight_quantizes_f32_values() {
    let be = CpuBackend::new(Some(2));
    for format in FORMATS {
        let (rows, cols) = (20, if format == QuantFormat::Q4_K { 512 } else { 96 });
        let mut v = Rng::new(4).vec(rows * cols);
        v[5] = 0.0;
        v[32..64].fill(0.0); // an all-zero block (a Q4_K sub-block)
        let w = be.weight(&v, rows, cols, WeightFormat::Quant(format)).unwrap();
        assert_eq!(be.weight_format(&w), WeightFormat::Quant(format));
        let back = be.weight_to_host(&w).unwrap();
        let CpuWeightData::Quant { blocks, .. } = w.data() else { panic!("not quantized") };
        assert_eq!(bits(&back), bits(&ckpt::dequantize(dtype(format), blocks, rows * cols).unwrap()));
        // Each value is within half a quantization step of its block (steps: max|x| / 127 for
        // Q8_0, max|x| / 8 for Q4_0, (max − min) / 15 for Q4_1), plus the f16 rounding of the
        // scales; Q4_0 spans −8..=7 steps from the signed extreme, so values of the other sign
        // beyond 7 steps clip, by up to one step. Q4_K's sub-blocks of 32 fit a scale and min by
        // a weighted search and round both to 6 bits against their super-block's largest, so
        // a value can be off by up to about a whole step (max − min) / 15.
        for (x, y) in v.chunks(32).zip(back.chunks(32)) {
            let amax = x.iter().fold(0.0f32, |m, a| m.max(a.abs()));
            let step = match format {
                QuantFormat::Q8_0 => amax / 127.0,
                QuantFormat::Q4_0 => amax / 8.0,
                QuantFormat::Q4_1 | QuantFormat::Q4_K => {
                    let (lo, hi) = x.iter().fold((f32::MAX, f32::MIN), |(l, h), &a| (l.min(a), h.max(a)));
                    (hi - lo) / 15.0
                }
                QuantFormat::Nf4 => unreachable!("not in FORMATS"),
            };
            for (a, b) in x.iter().zip(y) {
                let tol = match format {
                    QuantFormat::Q4_0 | QuantFormat::Q4_K => step,
                    _ => step * 0.5,
                };
                assert!((a - b).abs() <= tol + amax * 2e-3 + 1e-7, "{format:?}: {a} -> {b}");
            }
        }
        assert!(back[32..64].iter().all(|&b| b == 0.0));
    }
}

#[test]
fn quantized_weights_check_sizes_and_are_frozen() {
    let be = CpuBackend::new(Some(1));
    for format in FORMATS {
        let c = if format == QuantFormat::Q4_K { 256 } else { 64 };
        let blocks = random_blocks(format, 4, c, 1, 0.1);
        let shape_err = |r: afinar_engine::Result<_>| assert!(matches!(r, Err(EngineError::Shape { .. })));
        shape_err(be.weight_quantized(&blocks[1..], format, 4, c));
        shape_err(be.weight_quantized(&blocks, format, 3, c));
        shape_err(be.weight_quantized(&blocks, format, c / 4, 16)); // not whole blocks per row
        shape_err(be.weight(&[0.0; 48], 2, 24, WeightFormat::Quant(format)));
        if format == QuantFormat::Q4_K {
            // Whole 32-value blocks are not whole super-blocks; the error names the block length.
            let e =
                be.weight(&vec![0.0; 2 * 96], 2, 96, WeightFormat::Quant(format)).unwrap_err().to_string();
            assert!(e.contains("q4_k") && e.contains("256"), "{e}");
        }
        let mut w = be.weight_quantized(&blocks, format, 4, c).unwrap();
        let (g, mut m, mut v) = (vec![0.0; 4 * c], vec![0.0; 4 * c], vec![0.0; 4 * c]);
        let hp = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 1 };
        match be.adamw_weight(&mut w, &g, &mut m, &mut v, &hp) {
            Err(EngineError::Unsupported(msg)) => assert!(msg.contains("frozen"), "{msg}"),
            other => panic!("{other:?}"),
        }
        // Empty matrices work.
        let e = be.weight_quantized(&[], format, 0, c).unwrap();
        let mut y = vec![];
        be.linear(&vec![0.0; c], &e, &mut y, 1, false).unwrap();
        let e = be.weight_quantized(&[], format, 3, 0).unwrap();
        let mut y = vec![f32::NAN; 3];
        be.linear(&vec![], &e, &mut y, 1, false).unwrap();
        assert_eq!(y, vec![0.0; 3]);
    }
}
