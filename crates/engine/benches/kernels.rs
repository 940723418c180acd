//! Throughput of the CPU kernels on a SmolLM2-135M-shaped layer (dim 576, 9/3 heads of 64,
//! ffn 1536, batch 4 × 512 tokens, vocab 49152).
//!
//!     cargo bench -p afinar-engine --bench kernels [-- filter] [--threads N]

use afinar_engine::cpu::{amx, matmul};
use afinar_engine::{AttnDims, Backend, CpuBackend, Products, QuantFormat, WeightFormat};
use std::time::Instant;

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

/// Minimum and median seconds of `reps` runs after one warm-up.
fn min_median(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[0], t[reps / 2])
}

/// Median seconds of `reps` runs after one warm-up.
fn time(reps: usize, f: impl FnMut()) -> f64 {
    min_median(reps, f).1
}

fn report(name: &str, secs: f64, flops: f64) {
    println!("{name:<44} {:>9.2} ms {:>8.1} GFLOP/s", secs * 1e3, flops / secs / 1e9);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads = args.iter().position(|a| a == "--threads").map(|i| args[i + 1].parse().unwrap());
    let filter = args
        .iter()
        .find(|a| !a.starts_with("--") && a.parse::<usize>().is_err())
        .cloned()
        .unwrap_or_default();
    let be = CpuBackend::new(threads);
    println!("{} (amx: {}, bf16 products: {})", be.name(), amx::available(), amx::bf16_products());
    // A section runs when its name contains the filter or the filter contains its name
    // ("lm_head BF16" runs only the bf16 half of "lm_head").
    let run = |n: &str| n.contains(&filter) || filter.contains(n);

    let (rows, dim, ffn, vocab) = (2048usize, 576usize, 1536usize, 49152usize);
    if run("linear") {
        let x = randn(rows * dim, 1);
        let dy = randn(rows * ffn, 2);
        for fmt in [WeightFormat::F32, WeightFormat::BF16] {
            let w = be.weight(&randn(ffn * dim, 3), ffn, dim, fmt).unwrap();
            let mut y = vec![0.0; rows * ffn];
            let mut dx = vec![0.0; rows * dim];
            let fl = 2.0 * (rows * dim * ffn) as f64;
            let t = time(10, || be.linear(&x, &w, &mut y, rows, false).unwrap());
            report(&format!("linear {fmt:?} 2048x576->1536 fwd"), t, fl);
            let t = time(10, || be.linear_backward_input(&dy, &w, &mut dx, rows, false).unwrap());
            report(&format!("linear {fmt:?} 2048x576->1536 dx"), t, fl);
        }
        // The same products on the reference path (bf16 tiles widened to f32, then `gemm`).
        let w = be.weight(&randn(ffn * dim, 3), ffn, dim, WeightFormat::BF16).unwrap();
        let (mut y, mut dx) = (vec![0.0; rows * ffn], vec![0.0; rows * dim]);
        let fl = 2.0 * (rows * dim * ffn) as f64;
        let t =
            time(10, || be.install(|| matmul::linear_forward(&x, w.as_ref(), &mut y, rows, ffn, dim, false)));
        report("linear BF16 2048x576->1536 fwd (gemm ref)", t, fl);
        let t = time(10, || {
            be.install(|| matmul::linear_backward_input(&dy, w.as_ref(), &mut dx, rows, ffn, dim, false))
        });
        report("linear BF16 2048x576->1536 dx (gemm ref)", t, fl);
        // The other SmolLM2 shape: ffn down-projection 1536 -> 576.
        for fmt in [WeightFormat::F32, WeightFormat::BF16] {
            let w = be.weight(&randn(dim * ffn, 4), dim, ffn, fmt).unwrap();
            let mut y = vec![0.0; rows * dim];
            let t = time(10, || be.linear(&dy, &w, &mut y, rows, false).unwrap());
            report(&format!("linear {fmt:?} 2048x1536->576 fwd"), t, fl);
        }
        let mut dw = vec![0.0; ffn * dim];
        let t = time(10, || {
            be.linear_backward_weight(&dy, &x, &mut dw, rows, ffn, dim, Products::F32, true).unwrap()
        });
        report("linear 2048x576->1536 dw", t, 2.0 * (rows * dim * ffn) as f64);
    }
    if run("packed") && amx::bf16_products() {
        // The bf16 units' parts: packing a bf16 weight, and the product over a packed one.
        let x = randn(rows * dim, 1);
        let wb: Vec<half::bf16> = randn(ffn * dim, 3).iter().map(|&v| half::bf16::from_f32(v)).collect();
        let wf = randn(ffn * dim, 3);
        let t = time(10, || drop(be.install(|| amx::pack_linear(&wb, ffn, dim))));
        println!("packed pack_linear bf16 1536x576 {:>9.2} ms", t * 1e3);
        let t = time(10, || drop(be.install(|| amx::pack_linear_f32(&wf, ffn, dim))));
        println!("packed pack_linear_f32 1536x576 {:>9.2} ms", t * 1e3);
        let t = time(10, || drop(be.install(|| amx::pack_linear_transposed(&wb, ffn, dim))));
        println!("packed pack_linear_transposed bf16 1536x576 {:>9.2} ms", t * 1e3);
        let packed = be.install(|| amx::pack_linear(&wb, ffn, dim));
        let mut y = vec![0.0; rows * ffn];
        let t = time(10, || be.install(|| amx::matmul_packed(&x, &packed, &mut y, rows, false)));
        report("packed matmul_packed 2048x576->1536", t, 2.0 * (rows * dim * ffn) as f64);
    }
    if run("decode") {
        // Few-row products (generation): weight-bandwidth bound, reported in GB/s of weight read.
        // GGUF blocks kept quantized: the int8 GEMV (AVX-512 VNNI, else AVX2) against the tile
        // path (dequantize to f32 tiles, then `gemm`) on the same weight.
        let quant = |q: QuantFormat, out: usize, inp: usize, name: &str| {
            let w = be.weight(&randn(out * inp, 3), out, inp, WeightFormat::Quant(q)).unwrap();
            let bytes = (out * q.row_bytes(inp).unwrap()) as f64;
            for r in [1usize, 4] {
                let x = randn(r * inp, 1);
                let mut y = vec![0.0; r * out];
                let t = time(50, || be.linear(&x, &w, &mut y, r, false).unwrap());
                let t_ref = time(10, || {
                    be.install(|| matmul::linear_forward(&x, w.as_ref(), &mut y, r, out, inp, false))
                });
                println!(
                    "decode {q:?} {r}x{name:<13} gemv {:>8.1} us {:>6.1} GB/s | tiles {:>8.1} us {:>6.1} GB/s",
                    t * 1e6,
                    bytes / t / 1e9,
                    t_ref * 1e6,
                    bytes / t_ref / 1e9
                );
            }
        };
        for (out, inp, name) in [(ffn, dim, "576->1536"), (vocab, dim, "576->49152")] {
            for fmt in [WeightFormat::F32, WeightFormat::BF16] {
                let w = be.weight(&randn(out * inp, 3), out, inp, fmt).unwrap();
                let bytes = (out * inp * if fmt == WeightFormat::F32 { 4 } else { 2 }) as f64;
                for r in [1usize, 4] {
                    let x = randn(r * inp, 1);
                    let mut y = vec![0.0; r * out];
                    let t = time(50, || be.linear(&x, &w, &mut y, r, false).unwrap());
                    let t_ref = time(50, || {
                        be.install(|| matmul::linear_forward(&x, w.as_ref(), &mut y, r, out, inp, false))
                    });
                    println!(
                        "decode {fmt:?} {r}x{name:<12} gemv {:>8.1} us {:>6.1} GB/s | gemm {:>8.1} us {:>6.1} GB/s",
                        t * 1e6,
                        bytes / t / 1e9,
                        t_ref * 1e6,
                        bytes / t_ref / 1e9
                    );
                }
            }
            for q in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4_1] {
                quant(q, out, inp, name);
            }
        }
        // Q4_K rows are whole 256-value super-blocks (576 columns are not): the down
        // projection's shape, beside Q4_1 on the same shape.
        for q in [QuantFormat::Q4_1, QuantFormat::Q4_K] {
            quant(q, dim, ffn, "1536->576");
        }
    }
    if run("stream") {
        // One decoding step's products over a whole model's weights in Q8_0 (30 layers of q, k, v,
        // o, gate, up, down and the 49152-row output: 143 MB, more than the caches hold), so the
        // weights stream from L3 or memory as in generation, not from L2 as above. Minimum and
        // median of 20 steps (the minimum is the least disturbed by other processes).
        let q = QuantFormat::Q8_0;
        let shapes = [(dim, dim), (192, dim), (192, dim), (dim, dim), (ffn, dim), (ffn, dim), (dim, ffn)];
        let mut ws = Vec::new();
        for l in 0..30 {
            for (i, &(o, n)) in shapes.iter().enumerate() {
                let w = be.weight(&randn(o * n, (l * 7 + i) as u64), o, n, WeightFormat::Quant(q)).unwrap();
                ws.push((w, o, n));
            }
        }
        ws.push((
            be.weight(&randn(vocab * dim, 99), vocab, dim, WeightFormat::Quant(q)).unwrap(),
            vocab,
            dim,
        ));
        let bytes: usize = ws.iter().map(|&(_, o, n)| o * q.row_bytes(n).unwrap()).sum();
        let x = randn(ffn, 5);
        let mut y = vec![0.0; vocab];
        let (min, med) = min_median(20, || {
            be.scoped(|| {
                for (w, _, _) in &ws {
                    be.linear(&x, w, &mut y, 1, false).unwrap();
                }
            })
        });
        println!(
            "stream Q8_0 model step ({:.0} MB)            min {:>7.2} ms {:>6.1} GB/s | median {:>7.2} ms {:>6.1} GB/s",
            bytes as f64 / 1e6,
            min * 1e3,
            bytes as f64 / min / 1e9,
            med * 1e3,
            bytes as f64 / med / 1e9
        );
    }
    if run("attention") {
        let d = AttnDims {
            batch: 4,
            q_len: 512,
            kv_len: 512,
            kv_stride: 512,
            q_heads: 9,
            kv_heads: 3,
            head_dim: 64,
            q_offset: 0,
            scale: 0.125,
        };
        let nq = 4 * 512 * 9 * 64;
        let nkv = 4 * 512 * 3 * 64;
        let (q, k, v, dout) = (randn(nq, 4), randn(nkv, 5), randn(nkv, 6), randn(nq, 7));
        let (mut o, mut l) = (vec![0.0; nq], vec![0.0; 4 * 9 * 512]);
        // Causal: half of the 2·(QKᵀ + PV) flops of full attention.
        let fwd_fl = 2.0 * 4.0 * 9.0 * 512.0 * 512.0 * 64.0;
        let t = time(5, || be.attention(&q, &k, &v, &mut o, &mut l, &d, None).unwrap());
        report("attention B4 T512 9/3x64 causal fwd", t, fwd_fl);
        let (mut dq, mut dk, mut dv) = (vec![0.0; nq], vec![0.0; nkv], vec![0.0; nkv]);
        let t = time(5, || {
            be.attention_backward(&dout, &q, &k, &v, &o, &l, &mut dq, &mut dk, &mut dv, &d, None).unwrap()
        });
        // 5 tile products (QKᵀ recomputed, dV, dP, dK, dQ) against the forward's 2.
        report("attention B4 T512 9/3x64 causal bwd", t, 2.5 * fwd_fl);
    }
    if run("decode_attention") {
        // One decoding step's attention over 30 layers of a 625-position cache (SmolLM2 after a
        // 497-token prompt and 128 new tokens; 9 query heads on 3 kv heads of 64): 28.8 MB of
        // keys and values in f32, 14.4 MB in f16, read once per step as in generation. Minimum
        // and median of 20 steps.
        let (layers, kv_len) = (30, 625);
        let d = AttnDims {
            batch: 1,
            q_len: 1,
            kv_len,
            kv_stride: kv_len,
            q_heads: 9,
            kv_heads: 3,
            head_dim: 64,
            q_offset: kv_len - 1,
            scale: 0.125,
        };
        let n = kv_len * 3 * 64;
        let q = randn(9 * 64, 11);
        let f32s: Vec<(Vec<f32>, Vec<f32>)> =
            (0..layers).map(|l| (randn(n, 100 + l as u64), randn(n, 200 + l as u64))).collect();
        let halves: Vec<_> = f32s
            .iter()
            .map(|(k, v)| {
                let (mut kh, mut vh) = (
                    be.zeros_half(n, afinar_engine::HalfFormat::F16).unwrap(),
                    be.zeros_half(n, afinar_engine::HalfFormat::F16).unwrap(),
                );
                be.to_half(k, 0, &mut kh, 0, n).unwrap();
                be.to_half(v, 0, &mut vh, 0, n).unwrap();
                (kh, vh)
            })
            .collect();
        let (mut o, mut l) = (vec![0.0; 9 * 64], vec![0.0; 9]);
        let mut steps = |f32_cache: bool| {
            min_median(20, || {
                be.scoped(|| {
                    for i in 0..layers {
                        if f32_cache {
                            be.attention(&q, &f32s[i].0, &f32s[i].1, &mut o, &mut l, &d, None).unwrap();
                        } else {
                            be.attention_half(&q, &halves[i].0, &halves[i].1, &mut o, &mut l, &d, None)
                                .unwrap();
                        }
                    }
                })
            })
        };
        for (name, f32_cache) in [("f32", true), ("f16", false)] {
            let (min, med) = steps(f32_cache);
            println!(
                "decode attention, 30 layers x 625 positions, {name} cache   min {:>7.3} ms | median {:>7.3} ms",
                min * 1e3,
                med * 1e3
            );
        }
    }
    if run("lm_head") {
        let h = randn(rows * dim, 8);
        let targets: Vec<i32> = (0..rows).map(|i| (i * 7919 % vocab) as i32).collect();
        for fmt in [WeightFormat::F32, WeightFormat::BF16] {
            if !run(&format!("lm_head {fmt:?}")) {
                continue;
            }
            let w = be.weight(&randn(vocab * dim, 9), vocab, dim, fmt).unwrap();
            let mut dh = vec![0.0; rows * dim];
            let mut dw = vec![0.0; vocab * dim];
            let fl = 2.0 * (rows * dim * vocab) as f64;
            let t = time(3, || {
                be.linear_cross_entropy(&h, &w, &targets, rows, 1.0, None, None).unwrap();
            });
            report(&format!("linear_cross_entropy {fmt:?} 49152 loss"), t, fl);
            let t = time(3, || {
                be.linear_cross_entropy(&h, &w, &targets, rows, 1.0, Some(&mut dh), None).unwrap();
            });
            report(&format!("linear_cross_entropy {fmt:?} 49152 +dh"), t, 2.0 * fl);
            let t = time(3, || {
                be.linear_cross_entropy(&h, &w, &targets, rows, 1.0, Some(&mut dh), Some(&mut dw)).unwrap();
            });
            report(&format!("linear_cross_entropy {fmt:?} 49152 +dh+dw"), t, 3.0 * fl);
        }
    }
    if run("elementwise") {
        let n = rows * ffn;
        let (g, u, dout) = (randn(n, 10), randn(n, 11), randn(n, 12));
        let (mut o, mut dg, mut du) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let t = time(10, || be.swiglu(&g, &u, &mut o, n).unwrap());
        report("swiglu 2048x1536 fwd", t, 0.0);
        let t = time(10, || be.swiglu_backward(&dout, &g, &u, &mut dg, &mut du, n).unwrap());
        report("swiglu 2048x1536 bwd", t, 0.0);
        let x = randn(rows * dim, 13);
        let w = randn(dim, 14);
        let (mut y, mut rstd, mut dx, mut dw) =
            (vec![0.0; rows * dim], vec![0.0; rows], vec![0.0; rows * dim], vec![0.0; dim]);
        let t = time(10, || be.rmsnorm(&x, &w, &mut y, &mut rstd, rows, dim, 1e-5).unwrap());
        report("rmsnorm 2048x576 fwd", t, 0.0);
        let t = time(10, || {
            be.rmsnorm_backward(&y, &x, &w, &rstd, &mut dx, Some(&mut dw), rows, dim, false).unwrap()
        });
        report("rmsnorm 2048x576 bwd", t, 0.0);
        let inv: Vec<f32> = afinar_engine::rope_inv_freq(64, 10000.0, None);
        let pos: Vec<u32> = (0..rows as u32).map(|i| i % 512).collect();
        let mut qq = randn(rows * 9 * 64, 15);
        let t = time(10, || be.rope(&mut qq, &pos, &inv, rows, 9, 64, false).unwrap());
        report("rope 2048x9x64", t, 0.0);
    }
}
