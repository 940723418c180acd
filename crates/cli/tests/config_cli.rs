//! `afinar ls / cp / cat / validate / run` end to end: the built-in configs are listed, copied,
//! printed and checked; a broken config exits 1 naming its line, never panicking.

mod common;

use common::{afinar, text};
use std::path::{Path, PathBuf};
use std::process::Output;

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "should succeed; stderr: {}", text(&out.stderr));
}

fn assert_fails_with(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "should exit 1; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains(needle), "stderr should mention {needle:?}: {err}");
}

/// A scratch folder with an (empty) model file and a dataset file, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("afinar-cli-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("model.gguf"), "").unwrap();
        std::fs::write(p.join("data.jsonl"), "{}\n").unwrap();
        Scratch(p)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// Overrides pointing the model and the dataset at this folder's files.
    fn inputs(&self) -> [String; 2] {
        [
            format!("model.path={}", self.path("model.gguf").display()),
            format!("dataset.source={}", self.path("data.jsonl").display()),
        ]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const ALL: [&str; 36] = [
    "smollm2_135m_lora",
    "smollm2_135m_qlora",
    "smollm2_135m_full",
    "smollm2_360m_lora",
    "smollm2_360m_qlora",
    "smollm2_360m_full",
    "llama3_2_1b_lora",
    "llama3_2_1b_qlora",
    "llama3_2_1b_full",
    "llama3_2_3b_lora",
    "llama3_2_3b_qlora",
    "llama3_2_3b_full",
    "llama3_1_8b_lora",
    "llama3_1_8b_qlora",
    "llama3_1_8b_full",
    "smollm2_135m_dpo_lora",
    "smollm2_360m_dpo_lora",
    "llama3_2_1b_dpo_lora",
    "llama3_2_1b_dpo_qlora",
    "llama3_2_3b_dpo_lora",
    "llama3_2_3b_dpo_qlora",
    "llama3_1_8b_dpo_lora",
    "llama3_1_8b_dpo_qlora",
    "smollm2_360m_to_135m_kd_lora",
    "llama3_1_8b_to_3_2_1b_kd_lora",
    "qwen3_0_6b_lora",
    "qwen3_0_6b_qlora",
    "qwen3_0_6b_full",
    "qwen3_1_7b_lora",
    "qwen3_1_7b_qlora",
    "qwen3_1_7b_full",
    "qwen3_4b_lora",
    "qwen3_4b_qlora",
    "qwen3_8b_lora",
    "qwen3_8b_qlora",
    "smollm2_135m_grpo_lora",
];

#[test]
fn ls_lists_every_config_by_recipe() {
    let out = afinar(&["ls"]);
    assert_ok(&out);
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["RECIPE", "CONFIG"]);
    let mut recipe = "";
    let mut seen = Vec::new();
    for line in lines {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let config = match cols.as_slice() {
            [r, c] => {
                recipe = r;
                *c
            }
            [c] => *c,
            _ => panic!("bad line {line:?}"),
        };
        let want = if config.contains("_dpo_") {
            "dpo"
        } else if config.contains("_grpo_") {
            "grpo"
        } else if config.ends_with("_full") {
            "full_finetune"
        } else if config.contains("_kd_") {
            "knowledge_distillation"
        } else {
            "lora_finetune"
        };
        assert_eq!(recipe, want, "{config}");
        seen.push(config.to_string());
    }
    seen.sort();
    let mut all: Vec<String> = ALL.iter().map(|c| c.to_string()).collect();
    all.sort();
    assert_eq!(seen, all);

    let out = afinar(&["ls", "--verbose"]);
    assert_ok(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("DESCRIPTION"));
    // Each recipe's line with its description, from the registry.
    for r in afinar::recipes::registry() {
        assert!(stdout.lines().any(|l| l.starts_with(r.name) && l.ends_with(r.description)), "{stdout}");
    }
}

#[test]
fn cp_writes_a_config_that_validates() {
    let sc = Scratch::new("cp");
    let dest = sc.path("mine.yaml");
    let out = afinar(&["cp", "smollm2_135m_lora", s(&dest)]);
    assert_ok(&out);
    let written = std::fs::read_to_string(&dest).unwrap();
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/smollm2_135m_lora.yaml");
    assert_eq!(written, std::fs::read_to_string(shipped).unwrap());
    let leftovers: Vec<_> = std::fs::read_dir(&sc.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // validate with overrides (relative paths in the copy would be relative to its folder).
    let [model, data] = sc.inputs();
    let out = afinar(&[
        "validate",
        s(&dest),
        &model,
        &data,
        "lora.rank=16",
        "lora.target_modules=[q_proj,k_proj,v_proj]",
    ]);
    assert_ok(&out);
    assert_eq!(text(&out.stdout).trim(), "Config is well-formed!");

    // --no-clobber leaves an existing file alone.
    std::fs::write(&dest, "mine").unwrap();
    let out = afinar(&["cp", "-n", "smollm2_135m_lora", s(&dest)]);
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "mine");
    let out = afinar(&["cp", "smollm2_135m_full", s(&dest)]);
    assert_ok(&out);
    assert!(std::fs::read_to_string(&dest).unwrap().contains("recipe: full_finetune"));

    // A missing parent folder needs --make-parents; a folder destination gets NAME.yaml.
    let nested = sc.path("a/b/c.yaml");
    assert_fails_with(&afinar(&["cp", "llama3_2_1b_lora", s(&nested)]), "--make-parents");
    assert_ok(&afinar(&["cp", "--make-parents", "llama3_2_1b_lora", s(&nested)]));
    assert!(nested.is_file());
    assert_ok(&afinar(&["cp", "llama3_1_8b_full", s(&sc.0)]));
    assert!(sc.path("llama3_1_8b_full.yaml").is_file());
    assert_fails_with(&afinar(&["cp", "llama9_lora", s(&sc.0)]), "not a built-in config");
}

#[test]
fn cat_prints_the_yaml() {
    let out = afinar(&["cat", "llama3_2_1b_lora"]);
    assert_ok(&out);
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/llama3_2_1b_lora.yaml");
    assert_eq!(text(&out.stdout), std::fs::read_to_string(shipped).unwrap());

    let out = afinar(&["cat", "llama3_2_1b_lora", "--sort"]);
    assert_ok(&out);
    let stdout = text(&out.stdout);
    let top: Vec<&str> = stdout.lines().filter(|l| !l.starts_with(' ') && !l.is_empty()).collect();
    let mut sorted = top.clone();
    sorted.sort();
    assert_eq!(top, sorted);
    assert!(top[0].starts_with("batch_size:"), "{stdout}");

    // --resolved: overrides applied, references resolved, defaults written out.
    let sc = Scratch::new("cat");
    let [model, data] = sc.inputs();
    let out = afinar(&["cat", "--resolved", "llama3_2_1b_lora", &model, &data, "lora.rank=4"]);
    assert_ok(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("  rank: 4\n"), "{stdout}");
    assert!(stdout.contains(&format!("  path: {}\n", sc.path("model.gguf").display())), "{stdout}");
    assert!(stdout.contains("  eps: 1e-8\n"), "{stdout}");
    assert!(stdout.contains("merge_adapter: true\n"), "{stdout}");
}

#[test]
fn validate_a_broken_file_exits_1_naming_the_line() {
    let sc = Scratch::new("broken");
    let cfg = sc.path("broken.yaml");
    let yaml = format!(
        "recipe: lora_finetune\noutput_dir: out\nmodel:\n  path: {}\ntokenizer:\n  max_seq_len: 256\nlora:\n  rank: 8\n  alpha: 16\ndataset:\n  kind: instruct\n  source: data.jsonl\nbatch_size: 2\noptimizer:\n  lr: fast\n",
        sc.path("model.gguf").display()
    );
    std::fs::write(&cfg, yaml).unwrap();
    let out = afinar(&["validate", s(&cfg)]);
    assert_fails_with(
        &out,
        &format!("{}:15:7: optimizer.lr: expected a number > 0, got \"fast\"", cfg.display()),
    );
    assert!(text(&out.stdout).is_empty());

    // The same file with the value fixed by an override validates.
    assert_ok(&afinar(&["validate", s(&cfg), "optimizer.lr=1e-4"]));
    // A bad override names the override.
    assert_fails_with(
        &afinar(&["validate", s(&cfg), "optimizer.lr"]),
        "override `optimizer.lr`: expected KEY=VALUE",
    );
    // YAML syntax errors name the line too.
    std::fs::write(&cfg, "recipe: lora_finetune\nmodel:\n  path: [x\n").unwrap();
    assert_fails_with(&afinar(&["validate", s(&cfg)]), &format!("{}:", cfg.display()));
    // A missing file and an unknown name.
    assert_fails_with(
        &afinar(&["validate", s(&sc.path("nope.yaml"))]),
        "no such file, nor a built-in config",
    );
}

#[test]
fn run_checks_the_recipe_before_anything_else() {
    let sc = Scratch::new("run");
    let [model, data] = sc.inputs();
    let out = afinar(&["run", "full_finetune", "--config", "smollm2_135m_lora", &model, &data]);
    assert_fails_with(&out, "built-in:smollm2_135m_lora.yaml:11:9: recipe: this config is for lora_finetune");
    assert_fails_with(&afinar(&["run", "kto", "--config", "smollm2_135m_lora"]), "unknown recipe `kto`");
    assert_fails_with(
        &afinar(&["run", "lora_fintune", "--config", "smollm2_135m_lora"]),
        "unknown recipe `lora_fintune` (did you mean `lora_finetune`? expected one of full_finetune, lora_finetune, dpo, \
         knowledge_distillation, grpo)",
    );
    assert_fails_with(
        &afinar(&["run", "lora_finetune", "--config", "smollm2_135m_lora", &model, &data, "epochs=0"]),
        "override `epochs=0`: epochs: expected an integer ≥ 1, got 0",
    );
}
