//! NF4 (QLoRA) weights on the CPU backend.
//!
//! Against bitsandbytes (`scripts/fixtures/nf4.py` → `tests/fixtures/nf4/nf4.safetensors`, random
//! data and real SmolLM2 rows): the code books, identical packed indices, scale codes and nested
//! scales when the engine quantizes the same f32 input, and dequantized values equal to
//! bitsandbytes' (both from bitsandbytes' own bytes and from the engine's). Then the products:
//! `linear` (GEMV and tile paths), `linear_backward_input`, embedding lookups and the fused output
//! loss on NF4 weights against the same products on the dequantized f32 matrix.

mod common;

use common::{rel_err32, Rng};

use afinar_engine::cpu::nf4::{self, Nf4Ref};
use afinar_engine::cpu::CpuWeightData;
use afinar_engine::{AdamW, Backend, CpuBackend, EngineError, QuantFormat, WeightFormat};
use safetensors::{Dtype, SafeTensors};

const NF4: WeightFormat = WeightFormat::Quant(QuantFormat::Nf4);

fn fixture_bytes() -> Vec<u8> {
    let path = format!("{}/../../tests/fixtures/nf4/nf4.safetensors", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (run scripts/fixtures/nf4.py)"))
}

fn tensor(st: &SafeTensors<'_>, key: &str) -> (Vec<usize>, Dtype, Vec<u8>) {
    let t = st.tensor(key).unwrap_or_else(|e| panic!("nf4.safetensors: {key}: {e}"));
    (t.shape().to_vec(), t.dtype(), t.data().to_vec())
}

fn f32s(st: &SafeTensors<'_>, key: &str) -> Vec<f32> {
    let (_, dt, d) = tensor(st, key);
    assert_eq!(dt, Dtype::F32, "{key}");
    d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn u8s(st: &SafeTensors<'_>, key: &str) -> Vec<u8> {
    let (_, dt, d) = tensor(st, key);
    assert_eq!(dt, Dtype::U8, "{key}");
    d
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

const CASES: [&str; 2] = ["random", "smollm2_ffn_down"];

#[test]
fn code_books_are_bitsandbytes() {
    let bytes = fixture_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(bits(&f32s(&st, "nf4_code")), bits(&nf4::NF4_CODE), "NF4 code book");
    let want = f32s(&st, "nested_code");
    let diff: Vec<(usize, f32, f32)> = want
        .iter()
        .zip(nf4::dynamic_map())
        .enumerate()
        .filter(|(_, (a, b))| a.to_bits() != b.to_bits())
        .map(|(i, (a, b))| (i, *b, *a))
        .collect();
    assert!(diff.is_empty(), "8-bit dynamic map: (index, ours, bitsandbytes') {diff:?}");
}

#[test]
fn quantization_matches_bitsandbytes() {
    let bytes = fixture_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let be = CpuBackend::new(Some(2));
    for case in CASES {
        let (shape, _, _) = tensor(&st, &format!("{case}.input"));
        let (rows, cols) = (shape[0], shape[1]);
        let x = f32s(&st, &format!("{case}.input"));
        let w = be.weight(&x, rows, cols, NF4).unwrap();
        let CpuWeightData::Quant { format: QuantFormat::Nf4, blocks } = w.data() else {
            panic!("{case}: not stored as NF4")
        };
        let ours = Nf4Ref::new(blocks, rows, cols);
        let packed = u8s(&st, &format!("{case}.packed"));
        let codes = u8s(&st, &format!("{case}.absmax_codes"));
        let nested = f32s(&st, &format!("{case}.nested_scales"));
        let offset = f32s(&st, &format!("{case}.offset"))[0];
        let want = f32s(&st, &format!("{case}.dequantized"));

        let diff = ours.packed.iter().zip(&packed).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{case}: {diff} of {} packed bytes differ", packed.len());
        assert_eq!(ours.packed.len(), packed.len());
        // The offset is torch's f32 mean (its cascade sum, reproduced), so every part is equal.
        assert_eq!(
            ours.offset.to_bits(),
            offset.to_bits(),
            "{case}: offset {} vs bitsandbytes {offset}",
            ours.offset
        );
        assert_eq!(ours.codes, &codes[..], "{case}: absmax codes");
        let ours_nested: Vec<f32> = (0..nested.len()).map(|j| ours.nested_scale(j)).collect();
        assert!(
            ours_nested.iter().zip(&nested).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{case}: nested scales {ours_nested:?} vs {nested:?}"
        );

        // Dequantized values, through the backend (tile path of weight_to_host).
        let got = be.weight_to_host(&w).unwrap();
        let e = rel_err32(&got, &want);
        assert!(e <= 1e-6, "{case}: dequantized values differ by {e:e} (relative to the largest)");

        // bitsandbytes' own bytes, dequantized by the engine: bit for bit its dequantization.
        let mut blob = packed.clone();
        blob.extend_from_slice(&codes);
        for s in &nested {
            blob.extend_from_slice(&s.to_le_bytes());
        }
        blob.extend_from_slice(&offset.to_le_bytes());
        let theirs = be.weight_quantized(&blob, QuantFormat::Nf4, rows, cols).unwrap();
        let deq = be.weight_to_host(&theirs).unwrap();
        assert_eq!(bits(&deq), bits(&want), "{case}: dequantizing bitsandbytes' bytes");

        // Storage: 4 bits per value, 8 bits per 64 values, 32 bits per 16384, plus the offset.
        let bpv = nf4::bytes_per_value(rows, cols);
        let expect = 0.5 + 1.0 / 64.0 + (4 * nested.len() + 4) as f64 / (rows * cols) as f64;
        assert!((bpv - expect).abs() < 1e-12, "{case}: {bpv} bytes per value");
        println!("{case}: [{rows}, {cols}] {bpv:.4} bytes per value, dequantized within {e:e}");
    }
}

/// Random weights with a realistic spread (normal, per-row scales).
fn random_weight(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    let mut w = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let s = 0.02 * (1.0 + 3.0 * rng.uniform());
        w.extend((0..cols).map(|_| (rng.normal() * s) as f32));
    }
    w
}

#[test]
fn products_match_dequantize_then_f32() {
    let be = CpuBackend::new(Some(2));
    let mut rng = Rng::new(7);
    let (out, inp) = (200, 192);
    let wq = be.weight(&random_weight(&mut rng, out, inp), out, inp, NF4).unwrap();
    let deq = be.weight_to_host(&wq).unwrap();
    let dense = be.weight(&deq, out, inp, WeightFormat::F32).unwrap();
    // 1 and 3 rows take the GEMV path, 37 the tile path.
    for rows in [1usize, 3, 37] {
        let x: Vec<f32> = (0..rows * inp).map(|_| rng.normal() as f32).collect();
        for accumulate in [false, true] {
            let init: Vec<f32> = (0..rows * out).map(|_| rng.normal() as f32).collect();
            let (mut want, mut got) = (init.clone(), init.clone());
            be.linear(&x, &dense, &mut want, rows, accumulate).unwrap();
            be.linear(&x, &wq, &mut got, rows, accumulate).unwrap();
            let e = rel_err32(&got, &want);
            assert!(e < 1e-5, "linear rows={rows} accumulate={accumulate}: {e:e}");

            let dy: Vec<f32> = (0..rows * out).map(|_| rng.normal() as f32).collect();
            let init: Vec<f32> = (0..rows * inp).map(|_| rng.normal() as f32).collect();
            let (mut want, mut got) = (init.clone(), init);
            be.linear_backward_input(&dy, &dense, &mut want, rows, accumulate).unwrap();
            be.linear_backward_input(&dy, &wq, &mut got, rows, accumulate).unwrap();
            let e = rel_err32(&got, &want);
            assert!(e < 1e-5, "linear_backward_input rows={rows} accumulate={accumulate}: {e:e}");
        }
    }
    // Embedding rows come out exactly as dequantized.
    let ids = [0u32, 199, 17, 17, 120];
    let mut emb = vec![0.0f32; ids.len() * inp];
    be.embedding(&ids, &wq, &mut emb).unwrap();
    for (i, &id) in ids.iter().enumerate() {
        let r = id as usize * inp;
        assert_eq!(bits(&emb[i * inp..(i + 1) * inp]), bits(&deq[r..r + inp]), "embedding row {id}");
    }
    // Fused output projection + cross-entropy on an NF4 table.
    let rows = 9;
    let h: Vec<f32> = (0..rows * inp).map(|_| rng.normal() as f32).collect();
    let targets: Vec<i32> = (0..rows).map(|i| if i == 4 { -100 } else { rng.below(out) as i32 }).collect();
    let (mut dh_want, mut dh_got) = (vec![0.0; rows * inp], vec![0.0; rows * inp]);
    let want = be.linear_cross_entropy(&h, &dense, &targets, rows, 0.5, Some(&mut dh_want), None).unwrap();
    let got = be.linear_cross_entropy(&h, &wq, &targets, rows, 0.5, Some(&mut dh_got), None).unwrap();
    assert_eq!(got.1, want.1);
    assert!((got.0 - want.0).abs() <= 1e-5 * want.0.abs(), "loss {} vs {}", got.0, want.0);
    assert!(rel_err32(&dh_got, &dh_want) < 1e-5);
}

#[test]
fn gemv_is_independent_of_thread_count() {
    let mut rng = Rng::new(11);
    let (out, inp, rows) = (130, 256, 2);
    let w = random_weight(&mut rng, out, inp);
    let x: Vec<f32> = (0..rows * inp).map(|_| rng.normal() as f32).collect();
    let run = |threads| {
        let be = CpuBackend::new(Some(threads));
        let wq = be.weight(&w, out, inp, NF4).unwrap();
        let mut y = vec![0.0f32; rows * out];
        be.linear(&x, &wq, &mut y, rows, false).unwrap();
        (bits(&y), be.weight_to_host(&wq).unwrap())
    };
    let (a, da) = run(1);
    let (b, db) = run(2);
    assert_eq!(a, b);
    assert_eq!(bits(&da), bits(&db));
}

#[test]
fn nf4_weights_check_sizes_and_are_frozen() {
    let be = CpuBackend::new(Some(1));
    // Columns must be a multiple of 64.
    let err = be.weight(&[0.0; 96], 3, 32, NF4).unwrap_err();
    assert!(err.to_string().contains("multiple of 64"), "{err}");
    let err = be.weight_quantized(&[0u8; 10], QuantFormat::Nf4, 2, 64).unwrap_err();
    assert!(matches!(err, EngineError::Shape { .. }), "{err}");
    assert!(err.to_string().contains("nf4"), "{err}");
    // Frozen.
    let mut w = be.weight(&vec![0.5; 128], 2, 64, NF4).unwrap();
    let (g, mut m, mut v) = (vec![0.0; 128], vec![0.0; 128], vec![0.0; 128]);
    let hp = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 1 };
    let err = be.adamw_weight(&mut w, &g, &mut m, &mut v, &hp).unwrap_err();
    assert!(err.to_string().contains("nf4"), "{err}");
    // A constant matrix (all scales equal: nested absmax 0) still round-trips exactly.
    assert_eq!(be.weight_to_host(&w).unwrap(), vec![0.5; 128]);
    // Zeros stay zeros.
    let z = be.weight(&vec![0.0; 128], 2, 64, NF4).unwrap();
    assert_eq!(be.weight_to_host(&z).unwrap(), vec![0.0; 128]);
}
