//! The knowledge-distillation objective against torchtune 0.6.1's own loss code: the script
//! `scripts/fixtures/kd_torchtune.py` (run here with `$AFINAR_PYTHON`, the reference venv) loads
//! torchtune's `kd_losses.py` and `ce_chunked_output_loss.py`, computes the recipe's
//! `(1 − kd_ratio) · CE + kd_ratio · KD` on random hidden states and heads, and its gradients
//! with respect to the student's hidden states and head by autograd; afinar's `KdObjective`
//! must give the same loss, terms and gradients within 1e-5.

mod common;

use afinar::engine::{Backend, CpuBackend, Divergence, WeightFormat};
use afinar::objectives::distill::{KdLoss, KdObjective};
use common::{reference_python, rel_err, Expected, Tmp};

const TOL: f64 = 1e-5;

/// Runs the fixture script into a temporary folder; `None` (after a SKIPPED line) without the
/// reference python.
fn fixture(tmp: &Tmp) -> Option<Expected> {
    let python = reference_python("torchtune 0.6.1 knowledge-distillation parity")?;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures/kd_torchtune.py");
    let out = tmp.join("kd.safetensors");
    let res = std::process::Command::new(python).arg(&script).arg(&out).output().unwrap();
    assert!(
        res.status.success(),
        "{} failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    Some(Expected::open(&out))
}

fn scalar(exp: &Expected, name: &str) -> f64 {
    exp.f32(name).1[0] as f64
}

fn close(name: &str, got: f64, want: f64) {
    let e = (got - want).abs() / want.abs().max(1e-30);
    assert!(e < TOL, "{name}: afinar {got} vs torchtune {want} (relative error {e:e})");
}

#[test]
fn kd_loss_and_gradients_equal_torchtune() {
    let tmp = Tmp::new("kd-parity");
    let Some(exp) = fixture(&tmp) else { return };
    let be = CpuBackend::new(None);
    for (case, divergence, bf16_teacher) in [
        ("forward", Divergence::ForwardKl, false),
        ("forward_bf16_teacher", Divergence::ForwardKl, true),
        ("reverse", Divergence::ReverseKl, false),
        ("kd_only", Divergence::ForwardKl, false),
    ] {
        let t = |n: &str| exp.f32(&format!("{case}.{n}"));
        let ((hs_shape, hs), (ws_shape, ws)) = (t("hs"), t("ws"));
        let ((ht_shape, ht), (wt_shape, wt)) = (t("ht"), t("wt"));
        let labels: Vec<i32> = exp.ids(&format!("{case}.labels")).1.into_iter().map(|v| v as i32).collect();
        let (rows, dim, vocab, dim_t) = (hs_shape[0], hs_shape[1], ws_shape[0], wt_shape[1]);
        assert_eq!((ht_shape[0], labels.len()), (rows, rows));
        let objective = KdObjective {
            kd_ratio: scalar(&exp, &format!("{case}.kd_ratio")) as f32,
            divergence,
            temperature: 1.0,
        };
        let ws = be.weight(&ws, vocab, dim, WeightFormat::F32).unwrap();
        let teacher_format = if bf16_teacher { WeightFormat::BF16 } else { WeightFormat::F32 };
        let wt = be.weight(&wt, vocab, dim_t, teacher_format).unwrap();
        let mut dh = vec![0.0; rows * dim];
        let mut dw = vec![0.0; vocab * dim];
        let got = objective
            .loss_and_grad(&be, &hs, &ws, &ht, &wt, &labels, rows, 1.0, Some(&mut dh), Some(&mut dw))
            .unwrap();
        let kept = labels.iter().filter(|&&l| l != -100).count();
        assert!(kept > 0 && kept < rows, "{case}: the fixture should ignore some labels");
        assert_eq!(got.tokens, kept);
        close(&format!("{case} loss"), got.loss, scalar(&exp, &format!("{case}.loss")));
        close(&format!("{case} class_loss"), got.class_loss, scalar(&exp, &format!("{case}.class_loss")));
        close(&format!("{case} kd_loss"), got.kd_loss, scalar(&exp, &format!("{case}.kd_loss")));
        let e_dh = rel_err(&dh, &t("grad_hs").1);
        assert!(e_dh < TOL, "{case}: d loss / d hidden differs from torchtune by {e_dh:e}");
        let e_dw = rel_err(&dw, &t("grad_ws").1);
        assert!(e_dw < TOL, "{case}: d loss / d head differs from torchtune by {e_dw:e}");
        eprintln!(
            "{case}: loss {:.6} (class {:.6}, kd {:.6}) matches torchtune 0.6.1; gradient errors: \
             hidden {e_dh:.1e}, head {e_dw:.1e}",
            got.loss, got.class_loss, got.kd_loss
        );

        // Values only, and a scaled gradient (gradient accumulation), agree with the above.
        let alone = objective.loss_and_grad(&be, &hs, &ws, &ht, &wt, &labels, rows, 1.0, None, None).unwrap();
        assert_eq!(alone, got);
        let mut half = vec![0.0; rows * dim];
        objective.loss_and_grad(&be, &hs, &ws, &ht, &wt, &labels, rows, 0.5, Some(&mut half), None).unwrap();
        let doubled: Vec<f32> = half.iter().map(|g| 2.0 * g).collect();
        assert!(rel_err(&doubled, &dh) < 1e-6, "{case}: grad_scale 0.5 should halve the gradient");
    }
}

#[test]
fn bad_settings_and_inputs_are_refused() {
    let be = CpuBackend::new(None);
    let (rows, vocab, dim) = (2, 8, 4);
    let w = be.weight(&vec![0.1; vocab * dim], vocab, dim, WeightFormat::F32).unwrap();
    let wt_other = be.weight(&vec![0.1; 9 * dim], 9, dim, WeightFormat::F32).unwrap();
    let h = vec![0.3; rows * dim];
    let ok = KdObjective::default();
    assert_eq!(ok, KdObjective { kd_ratio: 0.5, divergence: Divergence::ForwardKl, temperature: 1.0 });
    let run = |o: &KdObjective, labels: &[i32], wt| {
        o.loss_and_grad(&be, &h, &w, &h, wt, labels, rows, 1.0, None, None)
    };
    let msg = |r: afinar::Result<KdLoss>| r.unwrap_err().to_string();
    assert!(run(&ok, &[1, 2], &w).is_ok());
    assert!(msg(run(&KdObjective { kd_ratio: 1.5, ..ok }, &[1, 2], &w))
        .contains("kd_ratio: 1.5 is not in [0, 1]"));
    assert!(msg(run(&KdObjective { kd_ratio: f32::NAN, ..ok }, &[1, 2], &w)).contains("kd_ratio"));
    assert!(msg(run(&KdObjective { temperature: 0.0, ..ok }, &[1, 2], &w)).contains("temperature: 0"));
    assert!(msg(run(&ok, &[1], &w)).contains("1 labels for 2 positions"));
    assert!(msg(run(&ok, &[1, 8], &w)).contains("target 8 out of range for vocab 8"));
    assert!(msg(run(&ok, &[1, 2], &wt_other)).contains("same vocabulary"));
    // Every label ignored: a zero loss, as torchtune's KD term gives.
    assert_eq!(run(&ok, &[-100, -100], &w).unwrap(), KdLoss::default());
}
