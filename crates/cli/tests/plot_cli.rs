//! `afinar plot`: runs' metrics.jsonl into one chart, clean errors for bad folders.

mod common;

use common::{afinar, assert_clean_failure, text};

fn run_dir(root: &std::path::Path, name: &str, steps: usize, eval: bool) -> std::path::PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let mut s = String::new();
    for i in 1..=steps {
        s.push_str(&format!(
            "{{\"step\":{i},\"total_steps\":{steps},\"epoch\":0,\"loss\":{},\"lr\":{},\"grad_norm\":1.0,\"label_tokens\":100,\"tokens_per_sec\":{},\"elapsed_secs\":{i},\"peak_rss_mb\":10}}\n",
            3.0 / (i as f64).sqrt(),
            1e-4 * i as f64,
            500 + i
        ));
        if eval && i % 5 == 0 {
            s.push_str(&format!("{{\"step\":{i},\"eval_loss\":{}}}\n", 3.5 / (i as f64).sqrt()));
        }
    }
    std::fs::write(d.join("metrics.jsonl"), s).unwrap();
    d
}

#[test]
fn plot_compares_runs_and_fails_cleanly() {
    let root = std::env::temp_dir().join(format!("afinar-plot-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let a = run_dir(&root, "lora-r8", 20, true);
    let b = run_dir(&root, "lora-r16", 15, false);
    let out_base = root.join("cmp");
    let out = afinar(&["plot", a.to_str().unwrap(), b.to_str().unwrap(), "-o", out_base.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (png, svg) = (root.join("cmp.png"), root.join("cmp.svg"));
    assert_eq!(text(&out.stdout), format!("{}\n{}\n", png.display(), svg.display()));
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    for want in ["lora-r8", "lora-r8 (eval)", "lora-r16"] {
        assert!(svg_text.contains(want), "legend `{want}` missing");
    }
    // One run, default name: in its folder; -o FILE.svg: that file only.
    let out = afinar(&["plot", a.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(a.join("metrics.png").is_file() && a.join("metrics.svg").is_file());
    let only = root.join("only.svg");
    assert!(afinar(&["plot", b.to_str().unwrap(), "-o", only.to_str().unwrap()]).status.success());
    assert!(only.is_file() && !root.join("only.png").exists());

    let out = afinar(&["plot", root.join("nope").to_str().unwrap()]);
    assert_clean_failure(&out, "metrics.jsonl");
    std::fs::write(b.join("metrics.jsonl"), "{\"step\": 1}\n").unwrap();
    let out = afinar(&["plot", b.to_str().unwrap()]);
    assert_clean_failure(&out, "metrics.jsonl:1: expected `loss` or `eval_loss`");
    std::fs::remove_dir_all(&root).unwrap();
}
