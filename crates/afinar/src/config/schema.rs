//! From a YAML tree to a checked [`RecipeConfig`]: every key known, every value of the right
//! type and range, sections consistent with the recipe, files present. Errors name the file,
//! line, column and key path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::{ConfigError, ConfigErrorKind as K, Location};
use super::types::*;
use super::yaml::{Entry, Node, Pos, Value};
use crate::models::presets;

/// Top-level keys.
pub(crate) const ROOT_KEYS: &[&str] = &[
    "recipe",
    "output_dir",
    "model",
    "tokenizer",
    "lora",
    "dataset",
    "seed",
    "shuffle",
    "batch_size",
    "epochs",
    "max_steps_per_epoch",
    "gradient_accumulation_steps",
    "optimizer",
    "lr_scheduler",
    "clip_grad_norm",
    "optimizer_in_bwd",
    "enable_activation_checkpointing",
    "activation_checkpointing_every_n_layers",
    "device",
    "threads",
    "save_every_n_steps",
    "save_adapter_weights_only",
    "merge_adapter",
    "resume_from_checkpoint",
    "resume_accept_config_changes",
    "log_every_n_steps",
];
const MODEL_KEYS: &[&str] = &["path", "preset", "dtype"];
const TOKENIZER_KEYS: &[&str] = &["path", "max_seq_len"];
const LORA_KEYS: &[&str] = &["rank", "alpha", "dropout", "target_modules", "quantize_base"];
const DATASET_KEYS: &[&str] = &[
    "kind",
    "source",
    "format",
    "column_map",
    "conversation_style",
    "train_on",
    "long_rows",
    "packed",
    "max_rows",
];
const OPTIMIZER_KEYS: &[&str] = &["lr", "weight_decay", "betas", "eps"];
const SCHEDULER_KEYS: &[&str] = &["kind", "warmup_steps", "min_lr_ratio"];

/// Sections and their keys.
const SECTIONS: &[(&str, &[&str])] = &[
    ("model", MODEL_KEYS),
    ("tokenizer", TOKENIZER_KEYS),
    ("lora", LORA_KEYS),
    ("dataset", DATASET_KEYS),
    ("optimizer", OPTIMIZER_KEYS),
    ("lr_scheduler", SCHEDULER_KEYS),
];

/// `column_map` roles each dataset kind reads (the column names `afinar-data` looks for).
fn column_roles(kind: DatasetKind) -> &'static [&'static str] {
    match kind {
        DatasetKind::Instruct => &["instruction", "input", "output"],
        DatasetKind::Chat => &["conversations", "messages"],
        DatasetKind::Text => &["text"],
    }
}

/// Whether a dotted key path names something the schema has (used by `~key` deletions).
pub(crate) fn is_known_path(path: &[&str]) -> bool {
    match path {
        [k] => ROOT_KEYS.contains(k),
        [s, k] => SECTIONS.iter().any(|(name, keys)| name == s && keys.contains(k)),
        ["dataset", "column_map", _] => true,
        _ => false,
    }
}

/// What every error needs: the file's name for messages and its folder for relative paths.
pub(crate) struct Cx {
    /// The file as shown in messages.
    pub file: String,
    /// Relative paths written in the file are resolved against this folder; `None`: the current
    /// directory (built-in configs).
    pub base_dir: Option<PathBuf>,
}

impl Cx {
    pub fn location(&self, pos: &Pos) -> Location {
        match pos {
            Pos::File { line, col } => {
                Location::File { file: self.file.clone(), line_col: Some((*line, *col)) }
            }
            Pos::Override(o) => Location::Override(o.to_string()),
        }
    }

    pub fn err(&self, kind: K, pos: &Pos, key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
        ConfigError::new(kind, self.location(pos), Some(key.into()), msg)
    }
}

type Result<T> = std::result::Result<T, ConfigError>;

/// Levenshtein distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn did_you_mean(key: &str, allowed: &[&str]) -> String {
    let best = allowed.iter().map(|k| (distance(key, k), *k)).min();
    match best {
        Some((d, k)) if d <= 2.max(key.len() / 3) => format!("did you mean `{k}`? "),
        _ => String::new(),
    }
}

/// A mapping of the document being read: its key path and where to point for missing keys.
struct Section<'a> {
    cx: &'a Cx,
    prefix: String,
    pos: Pos,
    entries: &'a [Entry],
}

impl<'a> Section<'a> {
    /// Opens `node` as a section with these keys; unknown keys are errors.
    fn open(cx: &'a Cx, prefix: &str, node: &'a Node, pos: Pos, allowed: &[&str]) -> Result<Section<'a>> {
        let Some(entries) = node.entries() else {
            let what = if prefix.is_empty() { "the top level" } else { "a section" };
            return Err(cx.err(
                K::WrongType,
                &node.pos,
                if prefix.is_empty() { "(top level)" } else { prefix },
                format!("expected {what} of `key: value` lines, got {}", node.describe()),
            ));
        };
        let s = Section { cx, prefix: prefix.to_string(), pos, entries };
        for e in entries {
            if !allowed.contains(&e.key.as_str()) {
                return Err(cx.err(
                    K::UnknownKey,
                    &e.key_pos,
                    s.path(&e.key),
                    format!(
                        "unknown key ({}expected one of: {})",
                        did_you_mean(&e.key, allowed),
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(s)
    }

    /// An empty section (absent from the document), pointing at `pos` for missing keys.
    fn empty(cx: &'a Cx, prefix: &str, pos: Pos) -> Section<'a> {
        Section { cx, prefix: prefix.to_string(), pos, entries: &[] }
    }

    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn entry(&self, key: &str) -> Option<&'a Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// The value node of `key`, unless absent or null.
    fn node(&self, key: &str) -> Option<&'a Node> {
        self.entry(key).map(|e| &e.value).filter(|n| !n.is_null())
    }

    /// A sub-section; `None` when absent or null.
    fn section(&self, key: &str, allowed: &[&str]) -> Result<Option<Section<'a>>> {
        match self.entry(key) {
            Some(e) if !e.value.is_null() => {
                Section::open(self.cx, &self.path(key), &e.value, e.key_pos.clone(), allowed).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// A sub-section that must be present.
    fn required_section(&self, key: &str, allowed: &[&str], expect: &str) -> Result<Section<'a>> {
        self.section(key, allowed)?.ok_or_else(|| self.missing(key, expect))
    }

    /// A sub-section whose keys all have defaults.
    fn optional_section(&self, key: &str, allowed: &[&str]) -> Result<Section<'a>> {
        Ok(self
            .section(key, allowed)?
            .unwrap_or_else(|| Section::empty(self.cx, &self.path(key), self.pos.clone())))
    }

    fn missing(&self, key: &str, expect: &str) -> ConfigError {
        match self.entry(key) {
            Some(e) => self.cx.err(
                K::WrongType,
                &e.value.pos,
                self.path(key),
                format!("expected {expect}, got null"),
            ),
            None => self.cx.err(
                K::MissingKey,
                &self.pos,
                self.path(key),
                format!("missing required key ({expect})"),
            ),
        }
    }

    /// An optional value: parsed by `parse` (else a type error), checked by `ok` (else a range
    /// error); `expect` says what was expected in both messages.
    fn opt<T>(
        &self,
        key: &str,
        expect: &str,
        parse: impl Fn(&Node) -> Option<T>,
        ok: impl Fn(&T) -> bool,
    ) -> Result<Option<T>> {
        let Some(node) = self.node(key) else {
            return Ok(None);
        };
        check(self.cx, node, &self.path(key), expect, parse, ok).map(Some)
    }

    fn req<T>(
        &self,
        key: &str,
        expect: &str,
        parse: impl Fn(&Node) -> Option<T>,
        ok: impl Fn(&T) -> bool,
    ) -> Result<T> {
        self.opt(key, expect, parse, ok)?.ok_or_else(|| self.missing(key, expect))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        Ok(self.opt(key, "true or false", Node::as_bool, |_| true)?.unwrap_or(default))
    }

    /// An integer ≥ `min`.
    fn int(&self, key: &str, min: usize) -> Result<Option<usize>> {
        let expect = format!("an integer ≥ {min}");
        let v = self.opt(key, &expect, Node::as_int, |i| *i >= min as i128 && usize::try_from(*i).is_ok())?;
        Ok(v.map(|i| i as usize))
    }

    fn int_req(&self, key: &str, min: usize) -> Result<usize> {
        self.int(key, min)?.ok_or_else(|| self.missing(key, &format!("an integer ≥ {min}")))
    }

    fn num(&self, key: &str, expect: &str, ok: impl Fn(f64) -> bool) -> Result<Option<f64>> {
        self.opt(key, expect, Node::as_f64, |v| ok(*v))
    }

    fn word<E: Copy>(
        &self,
        key: &str,
        names: &[&str],
        from: impl Fn(&str) -> Option<E>,
    ) -> Result<Option<E>> {
        let expect = format!("one of {}", names.join(", "));
        let v = self.opt(key, &expect, |n| n.as_text().map(str::to_string), |s| from(s).is_some())?;
        Ok(v.and_then(|s| from(&s)))
    }

    fn text(&self, key: &str, expect: &str) -> Result<Option<String>> {
        self.opt(key, expect, |n| n.as_text().map(str::to_string), |s| !s.is_empty())
    }
}

/// Parses and range-checks one value.
fn check<T>(
    cx: &Cx,
    node: &Node,
    path: &str,
    expect: &str,
    parse: impl Fn(&Node) -> Option<T>,
    ok: impl Fn(&T) -> bool,
) -> Result<T> {
    match parse(node) {
        None => {
            Err(cx.err(K::WrongType, &node.pos, path, format!("expected {expect}, got {}", node.describe())))
        }
        Some(v) if !ok(&v) => {
            Err(cx.err(K::OutOfRange, &node.pos, path, format!("expected {expect}, got {}", node.describe())))
        }
        Some(v) => Ok(v),
    }
}

/// The items of a list value, or a type error.
fn list<'n>(cx: &Cx, node: &'n Node, path: &str, expect: &str) -> Result<&'n [Node]> {
    match &node.value {
        Value::Seq(items) => Ok(items),
        _ => {
            Err(cx.err(K::WrongType, &node.pos, path, format!("expected {expect}, got {}", node.describe())))
        }
    }
}

/// Expands `~/` and resolves a path written in the config file against its folder (paths from
/// overrides stay relative to the current directory).
fn resolve_path(cx: &Cx, text: &str, pos: &Pos) -> PathBuf {
    let home = || std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    let p = match (text.strip_prefix("~/"), text == "~") {
        (Some(rest), _) => home().map(|h| h.join(rest)).unwrap_or_else(|| PathBuf::from(text)),
        (None, true) => home().unwrap_or_else(|| PathBuf::from(text)),
        _ => PathBuf::from(text),
    };
    match (&cx.base_dir, pos) {
        (Some(base), Pos::File { .. }) if p.is_relative() => base.join(p),
        _ => p,
    }
}

/// Finds a node by dotted path.
pub(crate) fn lookup<'n>(root: &'n Node, path: &str) -> Option<&'n Node> {
    path.split('.').try_fold(root, |n, k| n.entries()?.iter().find(|e| e.key == k).map(|e| &e.value))
}

/// A path value, resolved against the config's folder and checked to exist.
fn path_value(s: &Section, key: &str, raw: &Node, required: bool, expect: &str) -> Result<Option<PathBuf>> {
    let text =
        if required { Some(s.req(key, expect, text_of, |t| !t.is_empty())?) } else { s.text(key, expect)? };
    let Some(text) = text else { return Ok(None) };
    let node = s.node(key).expect("present");
    let path = resolve_path(s.cx, &text, &node.pos);
    if !path.exists() {
        let full = s.path(key);
        let written = lookup(raw, &full).and_then(Node::as_text).filter(|w| *w != text);
        let from = written.map(|w| format!(" (from `{w}`)")).unwrap_or_default();
        return Err(s.cx.err(
            K::MissingFile,
            &node.pos,
            full.clone(),
            format!(
                "no such file or folder: {}{from}; fix the path or override it with {full}=PATH",
                path.display()
            ),
        ));
    }
    Ok(Some(path))
}

/// `model.path`: a local GGUF file or Hugging Face folder (checked to exist), or a Hub repository
/// (`hf://org/name[@rev][/file.gguf]`, or a bare `org/name` where no such local path exists),
/// kept as `hf://…` and fetched through the Hugging Face cache when the run starts.
fn model_path_value(s: &Section, raw: &Node) -> Result<Option<PathBuf>> {
    const EXPECT: &str = "a GGUF file, a Hugging Face folder or hf://org/name, or else model.preset";
    if let Some(text) = s.text("path", EXPECT)? {
        let node = s.node("path").expect("present");
        let local = resolve_path(s.cx, &text, &node.pos);
        if let Some(r) = afinar_hub::as_hub_reference(&text, &local) {
            afinar_hub::RepoRef::parse(&r, false)
                .map_err(|e| s.cx.err(K::WrongType, &node.pos, s.path("path"), e.to_string()))?;
            return Ok(Some(PathBuf::from(r)));
        }
    }
    path_value(s, "path", raw, true, EXPECT)
}

fn text_of(n: &Node) -> Option<String> {
    n.as_text().map(str::to_string)
}

fn check_device(d: &str) -> bool {
    afinar_engine::device::parse_device(d).is_some()
}

/// Reads and checks the whole config. `raw` is the document before interpolation (for hints);
/// `want` is the recipe the caller runs, if any.
pub(crate) fn extract(root: &Node, raw: &Node, cx: &Cx, want: Option<Recipe>) -> Result<RecipeConfig> {
    let top = Section::open(cx, "", root, root.pos.clone(), ROOT_KEYS)?;

    let recipe = top
        .word("recipe", Recipe::NAMES, Recipe::from_name)?
        .ok_or_else(|| top.missing("recipe", &format!("one of {}", Recipe::NAMES.join(", "))))?;
    if let Some(want) = want.filter(|w| *w != recipe) {
        let node = top.node("recipe").expect("present");
        return Err(cx.err(
            K::RecipeMismatch,
            &node.pos,
            "recipe",
            format!("this config is for {recipe}, but the recipe to run is {want}; run `afinar run {recipe}` or use a {want} config"),
        ));
    }
    let output_dir = PathBuf::from(top.req("output_dir", "a folder path", text_of, |t| !t.is_empty())?);

    // Model.
    let model_s = top.required_section("model", MODEL_KEYS, "a section with path (or preset) and dtype")?;
    let preset = model_s.text("preset", "a model preset name")?;
    if let Some(p) = &preset {
        let node = model_s.node("preset").expect("present");
        if presets::preset(p).is_none() {
            return Err(cx.err(
                K::OutOfRange,
                &node.pos,
                "model.preset",
                format!("expected one of {}, got {}", presets::PRESETS.join(", "), node.describe()),
            ));
        }
        if model_s.node("path").is_some() {
            return Err(cx.err(
                K::Inconsistent,
                &node.pos,
                "model.preset",
                "give model.path or model.preset, not both (override ~model.path or ~model.preset)",
            ));
        }
    }
    let path = if preset.is_some() { None } else { model_path_value(&model_s, raw)? };
    let dtype = model_s.word("dtype", Dtype::NAMES, Dtype::from_name)?.unwrap_or(Dtype::Fp32);
    let model = ModelSection { path, preset, dtype };

    // Tokenizer.
    let tok_s = top.required_section("tokenizer", TOKENIZER_KEYS, "a section with max_seq_len")?;
    let max_seq_len = tok_s.int_req("max_seq_len", 1)?;
    if let Some(cfg) = model.preset.as_deref().and_then(presets::preset) {
        if max_seq_len > cfg.max_seq_len {
            let node = tok_s.node("max_seq_len").expect("present");
            return Err(cx.err(
                K::OutOfRange,
                &node.pos,
                "tokenizer.max_seq_len",
                format!("expected an integer ≤ {} (the model's context), got {max_seq_len}", cfg.max_seq_len),
            ));
        }
    }
    if model.preset.is_some() && tok_s.node("path").is_none() {
        return Err(cx.err(
            K::MissingKey,
            &tok_s.pos,
            "tokenizer.path",
            "missing required key (a model.preset has no tokenizer of its own: give tokenizer.path)",
        ));
    }
    let tokenizer = TokenizerSection {
        path: path_value(&tok_s, "path", raw, false, "a tokenizer file or folder")?,
        max_seq_len,
    };

    // LoRA.
    let lora = match (recipe, top.section("lora", LORA_KEYS)?) {
        (Recipe::FullFinetune, Some(_)) => {
            let e = top.entry("lora").expect("present");
            return Err(cx.err(
                K::Inconsistent,
                &e.key_pos,
                "lora",
                "a full_finetune config has no lora section: remove it (override ~lora) or set recipe: lora_finetune",
            ));
        }
        (Recipe::FullFinetune, None) => None,
        (Recipe::LoraFinetune, None) => {
            return Err(
                top.missing("lora", "a section with rank and alpha, required by recipe lora_finetune")
            );
        }
        (Recipe::LoraFinetune, Some(s)) => Some(lora_section(&s)?),
    };

    let dataset = dataset_section(
        &top.required_section("dataset", DATASET_KEYS, "a section with kind and source")?,
        raw,
    )?;

    // Training loop.
    let seed = top
        .opt("seed", "an integer ≥ 0", Node::as_int, |i| u64::try_from(*i).is_ok())?
        .map_or(0, |i| i as u64);
    let shuffle = top.bool_or("shuffle", true)?;
    let batch_size = top.int_req("batch_size", 1)?;
    let epochs = top.int("epochs", 1)?.unwrap_or(1);
    let max_steps_per_epoch = top.int("max_steps_per_epoch", 1)?;
    let gradient_accumulation_steps = top.int("gradient_accumulation_steps", 1)?.unwrap_or(1);

    let opt_s = top.required_section("optimizer", OPTIMIZER_KEYS, "a section with lr")?;
    let lr = opt_s.num("lr", "a number > 0", |v| v > 0.0 && v.is_finite())?;
    let lr = lr.ok_or_else(|| opt_s.missing("lr", "a number > 0"))?;
    let weight_decay =
        opt_s.num("weight_decay", "a number ≥ 0", |v| v >= 0.0 && v.is_finite())?.unwrap_or(0.01);
    let betas = match opt_s.node("betas") {
        None => [0.9, 0.999],
        Some(node) => {
            let expect = "a list of two numbers in [0, 1)";
            let items = list(cx, node, "optimizer.betas", expect)?;
            if items.len() != 2 {
                return Err(cx.err(
                    K::OutOfRange,
                    &node.pos,
                    "optimizer.betas",
                    format!("expected {expect}, got {} items", items.len()),
                ));
            }
            let mut b = [0.0; 2];
            for (i, item) in items.iter().enumerate() {
                b[i] = check(
                    cx,
                    item,
                    &format!("optimizer.betas[{i}]"),
                    "a number in [0, 1)",
                    Node::as_f64,
                    |v| (0.0..1.0).contains(v),
                )?;
            }
            b
        }
    };
    let eps = opt_s.num("eps", "a number > 0", |v| v > 0.0 && v.is_finite())?.unwrap_or(1e-8);
    let optimizer = OptimizerSection { lr, weight_decay, betas, eps };

    let sched_s = top.optional_section("lr_scheduler", SCHEDULER_KEYS)?;
    let lr_scheduler = SchedulerSection {
        kind: sched_s
            .word("kind", SchedulerKind::NAMES, SchedulerKind::from_name)?
            .unwrap_or(SchedulerKind::Cosine),
        warmup_steps: sched_s.int("warmup_steps", 0)?.unwrap_or(0),
        min_lr_ratio: sched_s
            .num("min_lr_ratio", "a number in [0, 1]", |v| (0.0..=1.0).contains(&v))?
            .unwrap_or(0.0),
    };

    let clip_grad_norm = top.num("clip_grad_norm", "a number > 0", |v| v > 0.0 && v.is_finite())?;
    let optimizer_in_bwd = top.bool_or("optimizer_in_bwd", false)?;
    if optimizer_in_bwd {
        let node = top.node("optimizer_in_bwd").expect("present");
        if gradient_accumulation_steps > 1 {
            return Err(cx.err(
                K::Inconsistent,
                &node.pos,
                "optimizer_in_bwd",
                format!(
                    "the optimizer steps inside the backward, so gradients cannot accumulate over \
                     micro-batches: set gradient_accumulation_steps to 1 (it is {gradient_accumulation_steps}) \
                     or optimizer_in_bwd to false"
                ),
            ));
        }
        if clip_grad_norm.is_some() {
            return Err(cx.err(
                K::Inconsistent,
                &node.pos,
                "optimizer_in_bwd",
                "the optimizer steps inside the backward, before the global gradient norm is known: \
                 remove clip_grad_norm (`~clip_grad_norm` on the command line) or set optimizer_in_bwd \
                 to false",
            ));
        }
    }
    let enable_activation_checkpointing = top.bool_or("enable_activation_checkpointing", false)?;
    let activation_checkpointing_every_n_layers = top.int("activation_checkpointing_every_n_layers", 1)?;
    if activation_checkpointing_every_n_layers.is_some() && !enable_activation_checkpointing {
        let key = "activation_checkpointing_every_n_layers";
        let node = top.node(key).expect("present");
        return Err(cx.err(
            K::Inconsistent,
            &node.pos,
            key,
            "chooses which layers activation checkpointing recomputes, but \
             enable_activation_checkpointing is false: set it to true or remove this key",
        ));
    }
    let device = top
        .opt("device", "cpu, cuda or cuda:N", text_of, |d| check_device(d))?
        .unwrap_or_else(|| "cpu".into());
    let threads = top.int("threads", 1)?;
    let save_every_n_steps = top.int("save_every_n_steps", 1)?;
    let save_adapter_weights_only = top.bool_or("save_adapter_weights_only", false)?;
    if save_adapter_weights_only && recipe == Recipe::FullFinetune {
        let node = top.node("save_adapter_weights_only").expect("present");
        return Err(cx.err(
            K::Inconsistent,
            &node.pos,
            "save_adapter_weights_only",
            "only a lora_finetune has adapter weights; set it to false for full_finetune",
        ));
    }
    let merge_adapter = top.bool_or("merge_adapter", true)?;
    let resume_from_checkpoint = top.bool_or("resume_from_checkpoint", false)?;
    let resume_accept_config_changes = top.bool_or("resume_accept_config_changes", false)?;
    let log_every_n_steps = top.int("log_every_n_steps", 1)?.unwrap_or(1);

    Ok(RecipeConfig {
        recipe,
        output_dir,
        model,
        tokenizer,
        lora,
        dataset,
        seed,
        shuffle,
        batch_size,
        epochs,
        max_steps_per_epoch,
        gradient_accumulation_steps,
        optimizer,
        lr_scheduler,
        clip_grad_norm,
        optimizer_in_bwd,
        enable_activation_checkpointing,
        activation_checkpointing_every_n_layers,
        device,
        threads,
        save_every_n_steps,
        save_adapter_weights_only,
        merge_adapter,
        resume_from_checkpoint,
        resume_accept_config_changes,
        log_every_n_steps,
    })
}

fn lora_section(s: &Section) -> Result<LoraSection> {
    let cx = s.cx;
    let rank = s.int_req("rank", 1)?;
    let alpha = s.num("alpha", "a number > 0", |v| v > 0.0 && v.is_finite())?;
    let alpha = alpha.ok_or_else(|| s.missing("alpha", "a number > 0"))? as f32;
    let dropout = s.num("dropout", "a number in [0, 1)", |v| (0.0..1.0).contains(&v))?.unwrap_or(0.0) as f32;
    let target_modules = match s.node("target_modules") {
        None => vec![LoraTarget::QProj, LoraTarget::VProj],
        Some(node) => {
            let expect = format!("a list of layer names ({})", LoraTarget::NAMES.join(", "));
            let items = list(cx, node, "lora.target_modules", &expect)?;
            if items.is_empty() {
                return Err(cx.err(
                    K::OutOfRange,
                    &node.pos,
                    "lora.target_modules",
                    format!("expected {expect}, got []"),
                ));
            }
            let mut out: Vec<LoraTarget> = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let key = format!("lora.target_modules[{i}]");
                let name = check(
                    cx,
                    item,
                    &key,
                    &format!("one of {}", LoraTarget::NAMES.join(", ")),
                    text_of,
                    |t| LoraTarget::from_name(t).is_some(),
                )?;
                let t = LoraTarget::from_name(&name).expect("checked");
                if out.contains(&t) {
                    return Err(cx.err(K::Inconsistent, &item.pos, key, format!("`{t}` is listed twice")));
                }
                out.push(t);
            }
            out
        }
    };
    let quantize_base = s.bool_or("quantize_base", false)?;
    Ok(LoraSection { rank, alpha, dropout, target_modules, quantize_base })
}

fn dataset_section(s: &Section, raw: &Node) -> Result<DatasetSection> {
    let cx = s.cx;
    let kind = s
        .word("kind", DatasetKind::NAMES, DatasetKind::from_name)?
        .ok_or_else(|| s.missing("kind", &format!("one of {}", DatasetKind::NAMES.join(", "))))?;
    let format = s.word("format", FileFormat::NAMES, FileFormat::from_name)?;
    let source = path_value(s, "source", raw, true, "a dataset file")?.expect("required");
    if format.is_none() && FileFormat::from_extension(&source).is_none() {
        let node = s.node("source").expect("present");
        return Err(cx.err(
            K::MissingKey,
            &node.pos,
            "dataset.format",
            format!(
                "cannot tell the format of {} from its extension: set dataset.format to one of {}",
                source.display(),
                FileFormat::NAMES.join(", ")
            ),
        ));
    }
    let mut column_map = BTreeMap::new();
    if let Some(node) = s.node("column_map") {
        let roles = column_roles(kind);
        let Some(entries) = node.entries() else {
            return Err(cx.err(
                K::WrongType,
                &node.pos,
                "dataset.column_map",
                format!(
                    "expected a mapping of role: column (roles: {}), got {}",
                    roles.join(", "),
                    node.describe()
                ),
            ));
        };
        for e in entries {
            let key = format!("dataset.column_map.{}", e.key);
            if !roles.contains(&e.key.as_str()) {
                return Err(cx.err(
                    K::UnknownKey,
                    &e.key_pos,
                    key,
                    format!(
                        "unknown role for dataset kind {kind} ({}expected one of: {})",
                        did_you_mean(&e.key, roles),
                        roles.join(", ")
                    ),
                ));
            }
            let col = check(cx, &e.value, &key, "a column name", text_of, |t| !t.is_empty())?;
            column_map.insert(e.key.clone(), col);
        }
    }
    let conversation_style =
        s.word("conversation_style", ConversationStyle::NAMES, ConversationStyle::from_name)?;
    if conversation_style.is_some() && kind != DatasetKind::Chat {
        let node = s.node("conversation_style").expect("present");
        return Err(cx.err(
            K::Inconsistent,
            &node.pos,
            "dataset.conversation_style",
            format!("only a chat dataset has a conversation style (this one is {kind})"),
        ));
    }
    Ok(DatasetSection {
        kind,
        source,
        format,
        column_map,
        conversation_style,
        train_on: s.word("train_on", TrainOn::NAMES, TrainOn::from_name)?.unwrap_or(TrainOn::Assistant),
        long_rows: s.word("long_rows", LongRows::NAMES, LongRows::from_name)?.unwrap_or(LongRows::Truncate),
        packed: s.bool_or("packed", false)?,
        max_rows: s.int("max_rows", 1)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Back to YAML (for `afinar cat --resolved` and for saving the config next to checkpoints).

fn generated() -> Pos {
    Pos::File { line: 0, col: 0 }
}

/// A string scalar, quoted when it would read back as something else.
fn text_node(t: &str) -> Node {
    let n = Node::scalar(t, true, generated());
    let typed = n.is_null() || n.as_bool().is_some() || n.as_f64().is_some();
    Node::scalar(t, !typed, generated())
}

fn raw_node(t: impl ToString) -> Node {
    Node::scalar(t.to_string(), true, generated())
}

fn null() -> Node {
    raw_node("null")
}

fn opt_node<T>(v: &Option<T>, f: impl Fn(&T) -> Node) -> Node {
    v.as_ref().map_or_else(null, f)
}

fn path_node(p: &Path) -> Node {
    text_node(&p.to_string_lossy())
}

fn map(entries: Vec<(&str, Node)>) -> Node {
    Node {
        value: Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| Entry { key: k.to_string(), key_pos: generated(), value: v })
                .collect(),
        ),
        pos: generated(),
    }
}

fn seq(items: Vec<Node>) -> Node {
    Node { value: Value::Seq(items), pos: generated() }
}

/// The config as a YAML tree, every key present, in schema order.
pub(crate) fn to_node(c: &RecipeConfig) -> Node {
    let f64n = |v: &f64| raw_node(format!("{v:?}"));
    let usizen = |v: &usize| raw_node(v);
    let mut top = vec![
        ("recipe", raw_node(c.recipe)),
        ("output_dir", path_node(&c.output_dir)),
        (
            "model",
            map(vec![
                ("path", opt_node(&c.model.path, |p| path_node(p))),
                ("preset", opt_node(&c.model.preset, |p| text_node(p))),
                ("dtype", raw_node(c.model.dtype)),
            ]),
        ),
        (
            "tokenizer",
            map(vec![
                ("path", opt_node(&c.tokenizer.path, |p| path_node(p))),
                ("max_seq_len", raw_node(c.tokenizer.max_seq_len)),
            ]),
        ),
    ];
    if let Some(l) = &c.lora {
        top.push((
            "lora",
            map(vec![
                ("rank", raw_node(l.rank)),
                ("alpha", raw_node(format!("{:?}", l.alpha))),
                ("dropout", raw_node(format!("{:?}", l.dropout))),
                ("target_modules", seq(l.target_modules.iter().map(raw_node).collect())),
                ("quantize_base", raw_node(l.quantize_base)),
            ]),
        ));
    }
    let d = &c.dataset;
    top.extend([
        (
            "dataset",
            map(vec![
                ("kind", raw_node(d.kind)),
                ("source", path_node(&d.source)),
                ("format", opt_node(&d.format, |f| raw_node(f))),
                ("column_map", map(d.column_map.iter().map(|(k, v)| (k.as_str(), text_node(v))).collect())),
                ("conversation_style", opt_node(&d.conversation_style, |s| raw_node(s))),
                ("train_on", raw_node(d.train_on)),
                ("long_rows", raw_node(d.long_rows)),
                ("packed", raw_node(d.packed)),
                ("max_rows", opt_node(&d.max_rows, usizen)),
            ]),
        ),
        ("seed", raw_node(c.seed)),
        ("shuffle", raw_node(c.shuffle)),
        ("batch_size", raw_node(c.batch_size)),
        ("epochs", raw_node(c.epochs)),
        ("max_steps_per_epoch", opt_node(&c.max_steps_per_epoch, usizen)),
        ("gradient_accumulation_steps", raw_node(c.gradient_accumulation_steps)),
        (
            "optimizer",
            map(vec![
                ("lr", f64n(&c.optimizer.lr)),
                ("weight_decay", f64n(&c.optimizer.weight_decay)),
                ("betas", seq(c.optimizer.betas.iter().map(f64n).collect())),
                ("eps", f64n(&c.optimizer.eps)),
            ]),
        ),
        (
            "lr_scheduler",
            map(vec![
                ("kind", raw_node(c.lr_scheduler.kind)),
                ("warmup_steps", raw_node(c.lr_scheduler.warmup_steps)),
                ("min_lr_ratio", f64n(&c.lr_scheduler.min_lr_ratio)),
            ]),
        ),
        ("clip_grad_norm", opt_node(&c.clip_grad_norm, f64n)),
        ("optimizer_in_bwd", raw_node(c.optimizer_in_bwd)),
        ("enable_activation_checkpointing", raw_node(c.enable_activation_checkpointing)),
        (
            "activation_checkpointing_every_n_layers",
            opt_node(&c.activation_checkpointing_every_n_layers, usizen),
        ),
        ("device", text_node(&c.device)),
        ("threads", opt_node(&c.threads, usizen)),
        ("save_every_n_steps", opt_node(&c.save_every_n_steps, usizen)),
        ("save_adapter_weights_only", raw_node(c.save_adapter_weights_only)),
        ("merge_adapter", raw_node(c.merge_adapter)),
        ("resume_from_checkpoint", raw_node(c.resume_from_checkpoint)),
        ("resume_accept_config_changes", raw_node(c.resume_accept_config_changes)),
        ("log_every_n_steps", raw_node(c.log_every_n_steps)),
    ]);
    map(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths() {
        assert!(is_known_path(&["lora", "rank"]));
        assert!(is_known_path(&["clip_grad_norm"]));
        assert!(is_known_path(&["dataset", "column_map", "input"]));
        assert!(!is_known_path(&["lora", "rnak"]));
        assert!(!is_known_path(&["optimizer", "lr", "x"]));
        for (name, _) in SECTIONS {
            assert!(ROOT_KEYS.contains(name));
        }
    }

    #[test]
    fn hints() {
        assert_eq!(distance("rnak", "rank"), 2);
        assert_eq!(did_you_mean("rnak", LORA_KEYS), "did you mean `rank`? ");
        assert_eq!(did_you_mean("zzzzzzzz", LORA_KEYS), "");
        assert!(
            check_device("cuda:0") && check_device("cpu") && !check_device("cuda:") && !check_device("gpu")
        );
    }
}
