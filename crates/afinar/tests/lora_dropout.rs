//! LoRA dropout: the backward of a `Linear` with an adapter and an active dropout mask agrees with
//! central finite differences of its own forward (same seed, so the same mask), and the mask
//! really drops inputs.

use afinar::blocks::{Linear, Lora, ParamState};
use afinar::engine::{Backend, CpuBackend, WeightFormat};
use afinar::generate::Rng;

fn rand(rng: &mut Rng, n: usize, s: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.next_f64() as f32 - 0.5) * 2.0 * s).collect()
}

/// `L = Σ r ⊙ linear(x)` for a fixed random `r`.
fn loss(be: &CpuBackend, l: &Linear<CpuBackend>, x: &[f32], r: &[f32], rows: usize) -> f64 {
    let mut y = be.zeros(rows * l.out_features).unwrap();
    l.forward(be, &be.from_host(x).unwrap(), &mut y, rows, false).unwrap();
    be.to_host(&y).unwrap().iter().zip(r).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
}

#[test]
fn lora_dropout_gradients_match_finite_differences() {
    let be = CpuBackend::new(Some(1));
    let (rows, inf, outf, rank) = (5, 12, 7, 3);
    let mut rng = Rng::new(4);
    let w = be.weight(&rand(&mut rng, outf * inf, 0.5), outf, inf, WeightFormat::F32).unwrap();
    let mut l = Linear::new(&be, w);
    l.lora = Some(Lora {
        a: be.from_host(&rand(&mut rng, rank * inf, 0.5)).unwrap(),
        b: be.from_host(&rand(&mut rng, outf * rank, 0.5)).unwrap(),
        rank,
        scale: 2.0,
        a_state: ParamState::new(&be, rank * inf).unwrap(),
        b_state: ParamState::new(&be, outf * rank).unwrap(),
        dropout: 0.4,
        dropout_seed: Some(77),
    });
    let x = rand(&mut rng, rows * inf, 1.0);
    let r = rand(&mut rng, rows * outf, 1.0);

    // Analytic gradients.
    let mut dx = be.zeros(rows * inf).unwrap();
    l.backward(&be, &be.from_host(&x).unwrap(), &be.from_host(&r).unwrap(), Some(&mut dx), rows, false)
        .unwrap();
    let dx = be.to_host(&dx).unwrap();
    let (da, db) = {
        let lora = l.lora.as_ref().unwrap();
        (be.to_host(&lora.a_state.grad).unwrap(), be.to_host(&lora.b_state.grad).unwrap())
    };

    let eps = 1e-2f32;
    let check = |analytic: f32, plus: f64, minus: f64, what: &str| {
        let numeric = (plus - minus) / (2.0 * eps as f64);
        let err = (numeric - analytic as f64).abs() / numeric.abs().max(1e-2);
        assert!(err < 2e-3, "{what}: analytic {analytic} vs numeric {numeric}");
    };
    // Input gradient (goes through the mask on the adapter branch only).
    for i in [0, 7, 20, 33, 59] {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[i] += eps;
        xm[i] -= eps;
        check(dx[i], loss(&be, &l, &xp, &r, rows), loss(&be, &l, &xm, &r, rows), &format!("dx[{i}]"));
    }
    // Adapter gradients.
    for (which, grad) in [("a", &da), ("b", &db)] {
        for i in [0, 5, 11, grad.len() - 1] {
            let get = |l: &Linear<CpuBackend>| {
                let lora = l.lora.as_ref().unwrap();
                be.to_host(if which == "a" { &lora.a } else { &lora.b }).unwrap()
            };
            let set = |l: &mut Linear<CpuBackend>, v: &[f32]| {
                let lora = l.lora.as_mut().unwrap();
                let buf = be.from_host(v).unwrap();
                if which == "a" {
                    lora.a = buf;
                } else {
                    lora.b = buf;
                }
            };
            let orig = get(&l);
            let mut p = orig.clone();
            p[i] += eps;
            set(&mut l, &p);
            let plus = loss(&be, &l, &x, &r, rows);
            p[i] -= 2.0 * eps;
            set(&mut l, &p);
            let minus = loss(&be, &l, &x, &r, rows);
            set(&mut l, &orig);
            check(grad[i], plus, minus, &format!("d{which}[{i}]"));
        }
    }
    // The mask matters: without dropout the adapter's gradient differs.
    l.lora.as_mut().unwrap().dropout_seed = None;
    l.lora.as_mut().unwrap().a_state.zero_grad(&be).unwrap();
    l.backward(&be, &be.from_host(&x).unwrap(), &be.from_host(&r).unwrap(), None, rows, false).unwrap();
    let da_nodrop = be.to_host(&l.lora.as_ref().unwrap().a_state.grad).unwrap();
    assert!(da_nodrop.iter().zip(&da).any(|(a, b)| (a - b).abs() > 1e-3));
}
