//! The vectorised row primitives and the fast `f32` exponential.

mod common;

use afinar_engine::cpu::vector;
use afinar_engine::cpu::Real;
use common::Rng;

#[test]
fn fast_exp_f32_accuracy() {
    let mut worst = 0.0f64;
    let n = 200_000;
    for i in 0..=n {
        let x = -87.0f32 + (175.0 * i as f64 / n as f64) as f32;
        let got = x.exp_fast() as f64;
        let want = (x as f64).exp();
        worst = worst.max(((got - want) / want).abs());
    }
    assert!(worst < 4e-7, "relative error {worst:e}");
    assert_eq!(f32::NEG_INFINITY.exp_fast(), 0.0);
    assert_eq!((-100.0f32).exp_fast(), 0.0);
    assert!(f32::NAN.exp_fast().is_nan());
    assert_eq!(0.0f32.exp_fast(), 1.0);
}

#[test]
fn row_primitives_match_scalar_loops() {
    let mut rng = Rng::new(9);
    for len in [0usize, 1, 15, 16, 17, 100] {
        let x: Vec<f64> = rng.normals(len);
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(vector::max(&x), m);
        if len == 0 {
            continue;
        }
        let want: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
        let want_sum: f64 = want.iter().sum();
        assert!((vector::exp_sub_sum_ro(&x, m) - want_sum).abs() < 1e-12 * want_sum);
        let mut y = x.clone();
        let s = vector::exp_sub_sum(&mut y, m);
        assert!((s - want_sum).abs() < 1e-12 * want_sum);
        assert_eq!(y, want);
        vector::scale(&mut y, 0.5);
        assert!(y.iter().zip(&want).all(|(a, b)| *a == 0.5 * b));
        let mut p = x.clone();
        let mut dp: Vec<f64> = rng.normals(len);
        let dp0 = dp.clone();
        vector::softmax_grad_row(&mut p, &mut dp, m, 0.3);
        for i in 0..len {
            assert_eq!(p[i], want[i]);
            assert_eq!(dp[i], want[i] * (dp0[i] - 0.3));
        }
    }
}
