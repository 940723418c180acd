//! Recipe configs: every shipped config loads, overrides and interpolation work, and each class
//! of mistake is reported with the file, line, column and key path written in the test's YAML.

use std::path::{Path, PathBuf};

use afinar::config::{
    builtin, builtin_configs, ConfigDoc, ConfigError, ConfigErrorKind, DatasetKind, Dtype, FileFormat,
    LoraTarget, RecipeConfig, SchedulerKind, TrainOn,
};

/// A scratch folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("afinar-config-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A folder with an (empty) model file and dataset file, as `model.path` and
    /// `dataset.source` only need to exist.
    fn with_inputs(tag: &str) -> Scratch {
        let s = Scratch::new(tag);
        s.write("model.gguf", "");
        s.write("data.jsonl", "{}\n");
        s
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small valid config; the error tests edit it and point at its lines:
/// line 4 `model.path`, 8 `lora.rank`, 12 `dataset.source`, 13 `batch_size`, 15 `optimizer.lr`.
const BASE: &str = "\
recipe: lora_finetune
output_dir: out
model:
  path: model.gguf
tokenizer:
  max_seq_len: 128
lora:
  rank: 8
  alpha: 16
dataset:
  kind: instruct
  source: data.jsonl
batch_size: 2
optimizer:
  lr: 3e-4
";

/// Writes `text` as `config.yaml` in a folder with the inputs, and loads it with `overrides`.
fn load(tag: &str, text: &str, overrides: &[&str]) -> (Scratch, PathBuf, Result<RecipeConfig, ConfigError>) {
    let s = Scratch::with_inputs(tag);
    let path = s.write("config.yaml", text);
    let r = RecipeConfig::load(path.to_str().unwrap(), overrides);
    (s, path, r)
}

/// Loads and expects an error of `kind` whose message is exactly `at(path) + rest`, where
/// `at` is `PATH:` for file positions.
fn expect_err(tag: &str, text: &str, overrides: &[&str], kind: ConfigErrorKind, rest: &str) {
    let (_s, path, r) = load(tag, text, overrides);
    let e = r.expect_err("should fail");
    let msg = e.to_string();
    let want = rest.replace("@", &path.display().to_string());
    assert_eq!(msg, want, "kind {:?}", e.kind);
    assert_eq!(e.kind, kind, "{msg}");
}

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

// ---------------------------------------------------------------------------------------------
// Shipped configs.

#[test]
fn every_shipped_config_loads() {
    let s = Scratch::with_inputs("shipped");
    let model = format!("model.path={}", s.0.join("model.gguf").display());
    let data = format!("dataset.source={}", s.0.join("data.jsonl").display());
    // A distillation config's teacher is a model path too (checked to exist like model.path).
    let teacher = format!("teacher.path={}", s.0.join("model.gguf").display());
    assert_eq!(builtin_configs().count(), 36);
    for b in builtin_configs() {
        let mut doc = ConfigDoc::open(b.name).unwrap();
        assert_eq!(doc.origin(), format!("built-in:{}.yaml", b.name));
        let kd = b.recipe == "knowledge_distillation";
        let overrides: Vec<&str> = if kd {
            vec![model.as_str(), data.as_str(), teacher.as_str()]
        } else {
            vec![model.as_str(), data.as_str()]
        };
        doc.apply_overrides(&overrides).unwrap();
        let cfg = doc.to_config(Some(b.recipe)).unwrap_or_else(|e| panic!("{}: {e}", b.name));
        assert_eq!(cfg.recipe, b.recipe, "{}", b.name);
        assert_eq!(cfg.lora.is_some(), b.recipe != "full_finetune", "{}", b.name);
        if kd {
            let path = cfg.extra("teacher.path").and_then(afinar::config::KeyValue::as_text);
            assert_eq!(path, Some(s.0.join("model.gguf").to_str().unwrap()), "{}", b.name);
        }
        assert_eq!(cfg.model.path.as_deref(), Some(s.0.join("model.gguf").as_path()));
        assert_eq!(cfg.dataset.file_format(), Some(FileFormat::Jsonl));
        // The YAML shipped in the binary is the file in configs/.
        let on_disk = std::fs::read_to_string(configs_dir().join(format!("{}.yaml", b.name))).unwrap();
        assert_eq!(b.yaml, on_disk);
        assert!(b.yaml.starts_with("# "), "{}: starts with a comment saying what it is", b.name);
    }
    // Every file in configs/ is registered.
    let mut files: Vec<String> = std::fs::read_dir(configs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut names: Vec<String> = builtin_configs().map(|b| format!("{}.yaml", b.name)).collect();
    names.sort();
    assert_eq!(files, names);
}

#[test]
fn shipped_settings() {
    let s = Scratch::with_inputs("settings");
    let ov = [
        format!("model.path={}", s.0.join("model.gguf").display()),
        format!("dataset.source={}", s.0.join("data.jsonl").display()),
    ];
    let get = |name: &str| RecipeConfig::load(name, &ov).unwrap();

    let c = get("smollm2_135m_lora");
    let l = c.lora.as_ref().unwrap();
    assert_eq!((l.rank, l.alpha, l.dropout), (16, 32.0, 0.0));
    assert_eq!(
        l.target_modules,
        vec![
            LoraTarget::QProj,
            LoraTarget::KProj,
            LoraTarget::VProj,
            LoraTarget::OProj,
            LoraTarget::GateProj,
            LoraTarget::UpProj,
            LoraTarget::DownProj
        ]
    );
    assert_eq!((c.batch_size, c.tokenizer.max_seq_len), (4, 512));
    assert_eq!(c.optimizer.lr, 1e-3);
    assert_eq!((c.lr_scheduler.kind, c.lr_scheduler.warmup_steps), (SchedulerKind::Cosine, 5));
    assert_eq!((c.dataset.kind, c.dataset.train_on), (DatasetKind::Instruct, TrainOn::Assistant));
    assert_eq!(c.device, "cpu");

    let c = get("smollm2_135m_full");
    assert_eq!(c.optimizer.lr, 2e-5);
    assert_eq!((c.batch_size, c.tokenizer.max_seq_len), (4, 512));

    for name in
        ["llama3_2_1b_lora", "llama3_2_3b_lora", "qwen3_0_6b_lora", "qwen3_1_7b_lora", "qwen3_4b_lora"]
    {
        let c = get(name);
        let l = c.lora.unwrap();
        assert_eq!((l.rank, l.alpha), (64, 128.0), "{name}");
        assert_eq!(l.target_modules.len(), 7, "{name}: every linear layer of the blocks");
        assert_eq!(c.model.dtype, Dtype::Bf16);
    }
    for name in ["llama3_1_8b_lora", "llama3_1_8b_full", "qwen3_8b_lora", "qwen3_8b_qlora"] {
        assert!(get(name).enable_activation_checkpointing, "{name}");
    }
    assert!(!get("smollm2_135m_lora").enable_activation_checkpointing);
}

/// `${assets}` and `${env:LLAMA_DIR,...}` in the shipped configs: the SmolLM2 model is looked
/// for in the asset cache, a missing Llama checkpoint is reported with the path and its origin.
#[test]
fn shipped_paths_come_from_assets_and_env() {
    let s = Scratch::with_inputs("assets");
    let data = format!("dataset.source={}", s.0.join("data.jsonl").display());
    let gguf =
        afinar::config::assets_dir().unwrap().join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    match RecipeConfig::load("smollm2_135m_lora", &[data.as_str()]) {
        Ok(c) => assert_eq!(c.model.path.unwrap(), gguf),
        Err(e) => {
            assert_eq!(e.kind, ConfigErrorKind::MissingFile, "{e}");
            assert!(e.to_string().contains(&gguf.display().to_string()), "{e}");
        }
    }
    if std::env::var_os("LLAMA_DIR").is_none() {
        let e = RecipeConfig::load("llama3_2_1b_lora", &[data.as_str()]).unwrap_err();
        let line =
            builtin("llama3_2_1b_lora").unwrap().yaml.lines().position(|l| l.contains("path:")).unwrap() + 1;
        assert_eq!(
            e.to_string(),
            format!(
                "built-in:llama3_2_1b_lora.yaml:{line}:9: model.path: no such file or folder: \
                 ./models/Llama-3.2-1B-Instruct (from `${{env:LLAMA_DIR,./models/Llama-3.2-1B-Instruct}}`); \
                 fix the path or override it with model.path=PATH"
            )
        );
    }
}

#[test]
fn unknown_config_name() {
    let e = RecipeConfig::load::<&str>("smollm2_135m_lroa", &[]).unwrap_err();
    assert_eq!(e.kind, ConfigErrorKind::UnknownConfig);
    assert!(e.to_string().starts_with("smollm2_135m_lroa: no such file, nor a built-in config"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Defaults, paths, overrides, interpolation.

#[test]
fn defaults_fill_in() {
    let (s, _, r) = load("defaults", BASE, &[]);
    let c = r.unwrap();
    assert_eq!(c.recipe, "lora_finetune");
    assert_eq!(c.output_dir, PathBuf::from("out"), "output_dir stays relative to the current directory");
    assert_eq!(c.model.path, Some(s.0.join("model.gguf")), "relative to the config's folder");
    assert_eq!(c.model.dtype, Dtype::Fp32);
    assert_eq!(c.tokenizer.path, None);
    let l = c.lora.as_ref().unwrap();
    assert_eq!((l.dropout, l.quantize_base), (0.0, false));
    assert_eq!(l.target_modules, vec![LoraTarget::QProj, LoraTarget::VProj]);
    assert_eq!(c.dataset.source, s.0.join("data.jsonl"));
    assert_eq!((c.dataset.format, c.dataset.train_on, c.dataset.packed), (None, TrainOn::Assistant, false));
    assert!(c.dataset.column_map.is_empty());
    assert_eq!((c.seed, c.shuffle, c.epochs, c.gradient_accumulation_steps), (0, true, 1, 1));
    assert_eq!(c.max_steps_per_epoch, None);
    assert_eq!((c.optimizer.weight_decay, c.optimizer.betas, c.optimizer.eps), (0.01, [0.9, 0.999], 1e-8));
    assert_eq!(
        (c.lr_scheduler.kind, c.lr_scheduler.warmup_steps, c.lr_scheduler.min_lr_ratio),
        (SchedulerKind::Cosine, 0, 0.0)
    );
    assert_eq!((c.clip_grad_norm, c.enable_activation_checkpointing), (None, false));
    assert_eq!((c.device.as_str(), c.threads, c.save_every_n_steps), ("cpu", None, None));
    assert_eq!(
        (c.save_adapter_weights_only, c.merge_adapter, c.resume_from_checkpoint),
        (false, true, false)
    );
    assert_eq!(c.log_every_n_steps, 1);
}

#[test]
fn overrides_set_and_delete_keys() {
    let text = format!("{BASE}epochs: 3\nlr_scheduler:\n  warmup_steps: 5\n");
    let (_s, _, r) = load(
        "overrides",
        &text,
        &[
            "optimizer.weight_decay=0",
            "optimizer.betas=[0.8, 0.95]",
            "lora.target_modules=[q_proj,v_proj,o_proj]",
            "dataset.column_map={input: question, output: answer}",
            "~epochs",
            "~lr_scheduler.warmup_steps",
            "lr_scheduler.kind=linear",
            "max_steps_per_epoch=10",
            "max_steps_per_epoch=",
            "device=cuda:1",
            "dataset.format=json",
            "~clip_grad_norm",
            "tokenizer.max_seq_len=64",
        ],
    );
    let c = r.unwrap();
    assert_eq!(c.optimizer.weight_decay, 0.0);
    assert_eq!(c.optimizer.betas, [0.8, 0.95]);
    assert_eq!(c.lora.unwrap().target_modules, vec![LoraTarget::QProj, LoraTarget::VProj, LoraTarget::OProj]);
    assert_eq!(c.dataset.column_map.get("input").map(String::as_str), Some("question"));
    assert_eq!(c.dataset.column_map.get("output").map(String::as_str), Some("answer"));
    assert_eq!(c.epochs, 1, "a deleted optional key takes its default");
    assert_eq!((c.lr_scheduler.kind, c.lr_scheduler.warmup_steps), (SchedulerKind::Linear, 0));
    assert_eq!(c.max_steps_per_epoch, None, "the later override wins; empty is null");
    assert_eq!(c.device, "cuda:1");
    assert_eq!(c.dataset.format, Some(FileFormat::Json));
    assert_eq!(c.tokenizer.max_seq_len, 64);

    // Switching recipe: drop the lora section, which full_finetune forbids.
    let (_s, _, r) = load("overrides-recipe", BASE, &["recipe=full_finetune", "~lora"]);
    let c = r.unwrap();
    assert_eq!((c.recipe.as_str(), c.lora), ("full_finetune", None));

    // Creating a section that is not in the file.
    let full = BASE
        .replace("recipe: lora_finetune", "recipe: full_finetune")
        .replace("lora:\n  rank: 8\n  alpha: 16\n", "");
    let (_s, _, r) =
        load("overrides-create", &full, &["recipe=lora_finetune", "lora.rank=4", "lora.alpha=8"]);
    let l = r.unwrap().lora.unwrap();
    assert_eq!((l.rank, l.alpha), (4, 8.0));

    // Overrides' relative paths are relative to the current directory, not the config's folder.
    let (_s, _, r) = load("overrides-cwd", BASE, &["dataset.source=Cargo.toml", "dataset.format=csv"]);
    assert_eq!(r.unwrap().dataset.source, PathBuf::from("Cargo.toml"));

    // A model preset instead of a file.
    let (_s, _, r) = load(
        "overrides-preset",
        BASE,
        &["~model.path", "model.preset=smollm2-135m", "tokenizer.path=Cargo.toml"],
    );
    let c = r.unwrap();
    assert_eq!((c.model.path, c.model.preset.as_deref()), (None, Some("smollm2-135m")));
    assert_eq!(c.tokenizer.path, Some(PathBuf::from("Cargo.toml")));
}

#[test]
fn interpolation() {
    let s = Scratch::with_inputs("interp");
    let dir = s.0.display().to_string();
    let text = BASE
        .replace("output_dir: out", &format!("output_dir: {dir}"))
        .replace("source: data.jsonl", "source: ${output_dir}/data.jsonl")
        .replace(
            "batch_size: 2",
            "batch_size: 2\nepochs: ${batch_size}\ndevice: ${env:AFINAR_TEST_SURELY_UNSET_7,cuda:0}",
        );
    let path = s.write("config.yaml", &text);
    let c = RecipeConfig::load::<&str>(path.to_str().unwrap(), &[]).unwrap();
    assert_eq!(c.dataset.source, s.0.join("data.jsonl"));
    assert_eq!(c.epochs, 2, "a whole-value reference keeps the referenced type");
    assert_eq!(c.device, "cuda:0", "an unset variable takes the default");

    // Variables that are set, references in overrides, and the escape.
    let c = RecipeConfig::load(path.to_str().unwrap(), &["dataset.column_map.input=\\${not}/${env:PATH}"])
        .unwrap();
    let want = format!("${{not}}/{}", std::env::var("PATH").unwrap());
    assert_eq!(c.dataset.column_map["input"], want);
    let c = RecipeConfig::load(path.to_str().unwrap(), &["model.path=${dataset.source}"]).unwrap();
    assert_eq!(c.model.path, Some(s.0.join("data.jsonl")));

    // Errors point at the value that holds the reference.
    let e = RecipeConfig::load(path.to_str().unwrap(), &["epochs=${batch_sise}"]).unwrap_err();
    assert_eq!(e.kind, ConfigErrorKind::Interpolation);
    assert_eq!(
        e.to_string(),
        "override `epochs=${batch_sise}`: epochs: unknown reference `${batch_sise}` (expected the name of another key of this config, env:NAME or assets)"
    );
    let e = RecipeConfig::load(path.to_str().unwrap(), &["device=${env:AFINAR_TEST_SURELY_UNSET_7}"])
        .unwrap_err();
    assert!(e.to_string().ends_with("device: environment variable AFINAR_TEST_SURELY_UNSET_7 is not set (set it, or give a default: ${env:AFINAR_TEST_SURELY_UNSET_7,DEFAULT})"), "{e}");
    let e = RecipeConfig::load(path.to_str().unwrap(), &["output_dir=${device}", "device=${output_dir}"])
        .unwrap_err();
    assert!(e.to_string().contains("circular reference: output_dir -> device -> output_dir"), "{e}");
    let e = RecipeConfig::load(path.to_str().unwrap(), &["device=${lora}"]).unwrap_err();
    assert!(e.to_string().ends_with("device: `${lora}` is a mapping, not a single value"), "{e}");
}

#[test]
fn resolved_yaml_loads_back_to_the_same_config() {
    let (s, _, r) = load(
        "roundtrip",
        BASE,
        &["lora.dropout=0.05", "dataset.column_map={input: q}", "clip_grad_norm=1", "threads=2"],
    );
    let c = r.unwrap();
    let text = c.to_yaml();
    let again =
        RecipeConfig::load_str(&text, s.0.join("resolved.yaml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(again, c);
    assert!(text.contains("  dropout: 0.05\n"), "{text}");
}

#[test]
fn config_errors_convert_into_the_library_error() {
    let (_s, _, r) = load("convert", BASE, &["batch_size=0"]);
    let e: afinar::Error = r.unwrap_err().into();
    assert!(matches!(e, afinar::Error::RecipeConfig(_)));
    assert!(e.to_string().contains("batch_size: expected an integer ≥ 1, got 0"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Each class of error: file:line:col, key path, what was expected.

#[test]
fn unknown_key() {
    let text = BASE.replace("  rank: 8\n", "  rnak: 8\n");
    expect_err(
        "unknown",
        &text,
        &[],
        ConfigErrorKind::UnknownKey,
        "@:8:3: lora.rnak: unknown key (did you mean `rank`? expected one of: rank, alpha, dropout, target_modules, quantize_base)",
    );
    let text = BASE.replace("batch_size: 2", "batch_sizes: 2");
    let (_s, path, r) = load("unknown-top", &text, &[]);
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!(
            "{}:13:1: batch_sizes: unknown key (did you mean `batch_size`?",
            path.display()
        )),
        "{msg}"
    );
}

#[test]
fn wrong_type() {
    let text = BASE.replace("lr: 3e-4", "lr: fast");
    expect_err(
        "type-lr",
        &text,
        &[],
        ConfigErrorKind::WrongType,
        "@:15:7: optimizer.lr: expected a number > 0, got \"fast\"",
    );
    let text = BASE.replace("rank: 8", "rank: \"8\"");
    expect_err(
        "type-rank",
        &text,
        &[],
        ConfigErrorKind::WrongType,
        "@:8:9: lora.rank: expected an integer ≥ 1, got \"8\"",
    );
    let text = BASE.replace("batch_size: 2", "batch_size: [2]");
    expect_err(
        "type-list",
        &text,
        &[],
        ConfigErrorKind::WrongType,
        "@:13:13: batch_size: expected an integer ≥ 1, got a list",
    );
    let text = BASE.replace("  kind: instruct", "  kind: conversation");
    expect_err(
        "type-enum",
        &text,
        &[],
        ConfigErrorKind::OutOfRange,
        "@:11:9: dataset.kind: expected one of instruct, chat, text, got \"conversation\"",
    );
    let text = BASE.replace("optimizer:\n  lr: 3e-4\n", "optimizer: 3e-4\n");
    expect_err(
        "type-section",
        &text,
        &[],
        ConfigErrorKind::WrongType,
        "@:14:12: optimizer: expected a section of `key: value` lines, got 3e-4",
    );
}

#[test]
fn missing_key() {
    let text = BASE.replace("  lr: 3e-4\n", "  weight_decay: 0.1\n");
    expect_err(
        "missing-lr",
        &text,
        &[],
        ConfigErrorKind::MissingKey,
        "@:14:1: optimizer.lr: missing required key (a number > 0)",
    );
    let text = BASE.replace("batch_size: 2\n", "");
    expect_err(
        "missing-top",
        &text,
        &[],
        ConfigErrorKind::MissingKey,
        "@:1:1: batch_size: missing required key (an integer ≥ 1)",
    );
    // Deleting a required key with an override.
    expect_err(
        "missing-deleted",
        BASE,
        &["~dataset.source"],
        ConfigErrorKind::MissingKey,
        "@:10:1: dataset.source: missing required key (a dataset file)",
    );
    // A lora_finetune without its section.
    let text = BASE.replace("lora:\n  rank: 8\n  alpha: 16\n", "");
    expect_err(
        "missing-lora",
        &text,
        &[],
        ConfigErrorKind::MissingKey,
        "@:1:1: lora: missing required key (a section with rank and alpha, required by recipe lora_finetune)",
    );
    // Null where a value is required.
    let text = BASE.replace("batch_size: 2", "batch_size: null");
    expect_err(
        "missing-null",
        &text,
        &[],
        ConfigErrorKind::WrongType,
        "@:13:13: batch_size: expected an integer ≥ 1, got null",
    );
}

#[test]
fn out_of_range() {
    let cases: &[(&str, &str, &str)] = &[
        ("rank: 8", "rank: 0", "@:8:9: lora.rank: expected an integer ≥ 1, got 0"),
        ("lr: 3e-4", "lr: -1", "@:15:7: optimizer.lr: expected a number > 0, got -1"),
        ("lr: 3e-4", "lr: 0", "@:15:7: optimizer.lr: expected a number > 0, got 0"),
        ("lr: 3e-4", "lr: .nan", "@:15:7: optimizer.lr: expected a number > 0, got .nan"),
        ("batch_size: 2", "batch_size: 0", "@:13:13: batch_size: expected an integer ≥ 1, got 0"),
        (
            "alpha: 16",
            "alpha: 16\n  dropout: 1.0",
            "@:10:12: lora.dropout: expected a number in [0, 1), got 1.0",
        ),
        (
            "max_seq_len: 128",
            "max_seq_len: -5",
            "@:6:16: tokenizer.max_seq_len: expected an integer ≥ 1, got -5",
        ),
        (
            "batch_size: 2",
            "batch_size: 2\ndevice: gpu",
            "@:14:9: device: expected cpu, cuda or cuda:N, got \"gpu\"",
        ),
    ];
    for (i, (from, to, want)) in cases.iter().enumerate() {
        let text = BASE.replace(from, to);
        let kind = ConfigErrorKind::OutOfRange;
        expect_err(&format!("range-{i}"), &text, &[], kind, want);
    }
    // An item of a list.
    let text =
        BASE.replace("  alpha: 16\n", "  alpha: 16\n  target_modules:\n    - q_proj\n    - qkv_proj\n");
    expect_err(
        "range-item",
        &text,
        &[],
        ConfigErrorKind::OutOfRange,
        "@:12:7: lora.target_modules[1]: expected one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, output, got \"qkv_proj\"",
    );
}

#[test]
fn bad_override() {
    let cases: &[(&str, ConfigErrorKind, &str)] = &[
        ("epochs", ConfigErrorKind::BadOverride, "override `epochs`: expected KEY=VALUE to set a key, or ~KEY to delete one"),
        ("optimizer..lr=1", ConfigErrorKind::BadOverride, "override `optimizer..lr=1`: `optimizer..lr` is not a key path (names joined by dots, like optimizer.lr)"),
        ("lora.rank.x=1", ConfigErrorKind::BadOverride, "override `lora.rank.x=1`: lora.rank.x: `lora.rank` is a single value, not a section with keys"),
        ("lora.target_modules=[q_proj", ConfigErrorKind::BadOverride, "override `lora.target_modules=[q_proj`: lora.target_modules: cannot read the value as YAML: "),
        ("~lora.rank=3", ConfigErrorKind::BadOverride, "override `~lora.rank=3`: `~KEY` deletes a key and takes no value"),
        ("optimizer.lr=fast", ConfigErrorKind::WrongType, "override `optimizer.lr=fast`: optimizer.lr: expected a number > 0, got \"fast\""),
        ("optimizer.lrr=1", ConfigErrorKind::UnknownKey, "override `optimizer.lrr=1`: optimizer.lrr: unknown key (did you mean `lr`? expected one of: lr, weight_decay, betas, eps)"),
        ("~lora.rnak", ConfigErrorKind::UnknownKey, "override `~lora.rnak`: lora.rnak: unknown key: nothing to delete"),
    ];
    for (i, (ov, kind, want)) in cases.iter().enumerate() {
        let (_s, _, r) = load(&format!("override-{i}"), BASE, &[ov]);
        let e = r.unwrap_err();
        assert!(e.to_string().starts_with(want), "{ov}: got {e}\nwant {want}");
        assert_eq!(e.kind, *kind, "{ov}: {e}");
    }
    // Deleting a known key that the file does not have is fine.
    let (_s, _, r) = load("override-absent", BASE, &["~clip_grad_norm"]);
    r.unwrap();
}

#[test]
fn missing_file() {
    let text = BASE.replace("path: model.gguf", "path: nowhere/model.gguf");
    let (s, path, r) = load("missing-file", &text, &[]);
    let e = r.unwrap_err();
    assert_eq!(e.kind, ConfigErrorKind::MissingFile);
    assert_eq!(
        e.to_string(),
        format!(
            "{}:4:9: model.path: no such file or folder: {}; fix the path or override it with model.path=PATH",
            path.display(),
            s.0.join("nowhere/model.gguf").display()
        )
    );
    let model = format!("model.path={}", s.0.join("model.gguf").display());
    let e =
        RecipeConfig::load(path.to_str().unwrap(), &[model.as_str(), "dataset.source=/no/such/data.jsonl"])
            .unwrap_err();
    assert!(e.to_string().starts_with("override `dataset.source=/no/such/data.jsonl`: dataset.source: no such file or folder: /no/such/data.jsonl"), "{e}");
    let text = BASE.replace("  max_seq_len: 128", "  path: tok/tokenizer.json\n  max_seq_len: 128");
    let (_s, path, r) = load("missing-tok", &text, &[]);
    assert!(r
        .unwrap_err()
        .to_string()
        .starts_with(&format!("{}:6:9: tokenizer.path: no such file or folder", path.display())));
}

#[test]
fn recipe_mismatch_and_inconsistent_sections() {
    let s = Scratch::with_inputs("mismatch");
    let path = s.write("config.yaml", BASE);
    let e = RecipeConfig::load_for::<&str>("full_finetune", path.to_str().unwrap(), &[]).unwrap_err();
    assert_eq!(e.kind, ConfigErrorKind::RecipeMismatch);
    assert_eq!(
        e.to_string(),
        format!(
            "{}:1:9: recipe: this config is for lora_finetune, but the recipe to run is full_finetune; run `afinar run lora_finetune` or use a full_finetune config",
            path.display()
        )
    );
    let text = BASE.replace("recipe: lora_finetune", "recipe: full_finetune");
    expect_err(
        "inconsistent-lora",
        &text,
        &[],
        ConfigErrorKind::Inconsistent,
        "@:7:1: lora: a full_finetune config has no lora section: remove it (override ~lora) or set recipe: lora_finetune \
         or dpo or knowledge_distillation or grpo",
    );
    expect_err(
        "inconsistent-model",
        BASE,
        &["model.preset=llama3.2-1b"],
        ConfigErrorKind::Inconsistent,
        "override `model.preset=llama3.2-1b`: model.preset: give model.path or model.preset, not both (override ~model.path or ~model.preset)",
    );
    let text = BASE.replace("  kind: instruct", "  kind: instruct\n  conversation_style: sharegpt");
    expect_err(
        "inconsistent-style",
        &text,
        &[],
        ConfigErrorKind::Inconsistent,
        "@:12:23: dataset.conversation_style: only a chat dataset has a conversation style (this one is instruct)",
    );
}

#[test]
fn optimizer_in_bwd_excludes_accumulation_and_clipping() {
    let (_s, _, r) = load("inbwd-ok", BASE, &["optimizer_in_bwd=true"]);
    assert!(r.unwrap().optimizer_in_bwd);
    expect_err(
        "inbwd-accum",
        BASE,
        &["optimizer_in_bwd=true", "gradient_accumulation_steps=4"],
        ConfigErrorKind::Inconsistent,
        "override `optimizer_in_bwd=true`: optimizer_in_bwd: the optimizer steps inside the backward, so gradients cannot accumulate over micro-batches: set gradient_accumulation_steps to 1 (it is 4) or optimizer_in_bwd to false",
    );
    expect_err(
        "inbwd-clip",
        &format!("{BASE}optimizer_in_bwd: true\nclip_grad_norm: 1.0\n"),
        &[],
        ConfigErrorKind::Inconsistent,
        "@:16:19: optimizer_in_bwd: the optimizer steps inside the backward, before the global gradient norm is known: remove clip_grad_norm (`~clip_grad_norm` on the command line) or set optimizer_in_bwd to false",
    );
}

#[test]
fn partial_activation_checkpointing_needs_checkpointing_on() {
    let on = ["enable_activation_checkpointing=true", "activation_checkpointing_every_n_layers=3"];
    let (_s, _, r) = load("ac-every", BASE, &on);
    let c = r.unwrap();
    assert_eq!(
        (c.enable_activation_checkpointing, c.activation_checkpointing_every_n_layers),
        (true, Some(3))
    );
    expect_err(
        "ac-every-off",
        BASE,
        &["activation_checkpointing_every_n_layers=2"],
        ConfigErrorKind::Inconsistent,
        "override `activation_checkpointing_every_n_layers=2`: activation_checkpointing_every_n_layers: chooses which layers activation checkpointing recomputes, but enable_activation_checkpointing is false: set it to true or remove this key",
    );
    expect_err(
        "ac-every-zero",
        BASE,
        &["enable_activation_checkpointing=true", "activation_checkpointing_every_n_layers=0"],
        ConfigErrorKind::OutOfRange,
        "override `activation_checkpointing_every_n_layers=0`: activation_checkpointing_every_n_layers: expected an integer ≥ 1, got 0",
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let text = BASE.replace("  lr: 3e-4", "  lr: [3e-4");
    let (_s, path, r) = load("syntax", &text, &[]);
    let e = r.unwrap_err();
    assert_eq!(e.kind, ConfigErrorKind::Syntax);
    assert!(e.to_string().starts_with(&format!("{}:", path.display())), "{e}");
    let text = format!("{BASE}batch_size: 3\n");
    expect_err(
        "duplicate",
        &text,
        &[],
        ConfigErrorKind::Syntax,
        "@:16:1: duplicate key `batch_size` (first at line 13)",
    );
    let e = RecipeConfig::load_str("- a\n- b\n", Path::new("list.yaml")).unwrap_err();
    assert_eq!(e.to_string(), "list.yaml:1:1: (top level): expected `key: value` lines, got a list");
    let e = RecipeConfig::load_str("", Path::new("empty.yaml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "empty.yaml:1:1: recipe: missing required key (one of full_finetune, lora_finetune, dpo, knowledge_distillation, grpo)"
    );
}

/// Cut short anywhere or missing any line, a shipped config gives an error or a config, never a
/// panic.
#[test]
fn damaged_configs_never_panic() {
    for b in builtin_configs() {
        let lines: Vec<&str> = b.yaml.lines().collect();
        for skip in 0..lines.len() {
            let text: Vec<&str> =
                lines.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, l)| *l).collect();
            let _ = RecipeConfig::load_str(&text.join("\n"), "damaged.yaml");
        }
    }
    let yaml = builtin("smollm2_135m_lora").unwrap().yaml;
    for (i, _) in yaml.char_indices() {
        let _ = RecipeConfig::load_str(&yaml[..i], "cut.yaml");
        let _ =
            RecipeConfig::load_str(&format!("{}{}", &yaml[..i], &yaml[i..].replacen(':', "", 1)), "cut.yaml");
    }
}

/// `model.path` takes a Hub repository: `hf://…` kept as is, a bare `org/name` that is no local
/// path turned into `hf://org/name`, a local path preferred when it exists, a bad id refused.
#[test]
fn model_path_accepts_hub_repositories() {
    let (_s, _, r) = load("hub-ref", BASE, &["model.path=hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"]);
    assert_eq!(r.unwrap().model.path, Some(PathBuf::from("hf://HuggingFaceTB/SmolLM2-135M-Instruct@main")));
    let (s, _, r) = load("hub-bare", BASE, &["model.path=org/name"]);
    let c = r.unwrap();
    assert_eq!(c.model.path, Some(PathBuf::from("hf://org/name")));
    let saved = s.write("resolved.yaml", &c.to_yaml());
    let reloaded = RecipeConfig::load(saved.to_str().unwrap(), &[] as &[&str]);
    assert_eq!(
        reloaded.unwrap().model.path,
        Some(PathBuf::from("hf://org/name")),
        "the saved config keeps it"
    );
    let s = Scratch::with_inputs("hub-local");
    std::fs::create_dir_all(s.0.join("org/name")).unwrap();
    let p = s.write("config.yaml", &BASE.replace("path: model.gguf", "path: org/name"));
    let c = RecipeConfig::load(p.to_str().unwrap(), &[] as &[&str]).unwrap();
    assert_eq!(c.model.path, Some(s.0.join("org/name")), "an existing local folder wins");
    let (_s, _, r) = load("hub-bad", BASE, &["model.path=hf://org"]);
    let e = r.unwrap_err();
    assert!(e.to_string().contains("is not a Hugging Face repository reference"), "{e}");
}
