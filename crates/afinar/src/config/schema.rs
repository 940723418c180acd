//! From a YAML tree to a checked [`RecipeConfig`]: every key known, every value of the right
//! type and range, sections consistent with the recipe, files present. Errors name the file,
//! line, column and key path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::{ConfigError, ConfigErrorKind as K, Location};
use super::keys::{
    KeyDecl, KeyType, KeyValue, SectionDecl, COMMON_SECTIONS, DATASET, LORA, MODEL, OPTIMIZER, ROOT,
    SCHEDULER, TOKENIZER,
};
use super::types::*;
use super::yaml::{Entry, Node, Pos, Value};
use crate::models::presets;
use crate::recipes::RecipeSpec;

/// Every top-level key some recipe accepts: the shared keys and sections, then each recipe's
/// own, without repeats (for the unknown-key check, its hint, and `~key`).
fn all_root_names(recipes: &[&RecipeSpec]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = ROOT.iter().map(|k| k.name).collect();
    out.extend(COMMON_SECTIONS.iter().map(|s| s.name));
    for r in recipes {
        out.extend(r.sections.iter().map(|s| s.name));
        out.extend(r.keys.iter().map(|k| k.name));
    }
    let mut seen = Vec::with_capacity(out.len());
    out.retain(|n| {
        let new = !seen.contains(n);
        seen.push(*n);
        new
    });
    out
}

/// The declaration of section `name`: a shared one, else the first recipe's that has it.
fn section_decl(name: &str, recipes: &[&RecipeSpec]) -> Option<&'static SectionDecl> {
    COMMON_SECTIONS.iter().find(|s| s.name == name).or_else(|| recipes.iter().find_map(|r| r.section(name)))
}

/// Whether a dotted key path names something the schema of some registered recipe has (used by
/// `~key` deletions).
pub(crate) fn is_known_path(path: &[&str]) -> bool {
    let recipes = crate::recipes::registry();
    match path {
        [k] => all_root_names(recipes).contains(k),
        [s, k] => section_decl(s, recipes).is_some_and(|d| d.key(k).is_some()),
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

/// `did you mean `NAME`? ` for the nearest of `allowed` when it is near enough, else nothing.
pub(crate) fn did_you_mean(key: &str, allowed: &[&str]) -> String {
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
    /// The declarations of the keys read through [`Section::value`] and its typed forms.
    decls: Vec<KeyDecl>,
}

impl<'a> Section<'a> {
    /// Opens `node` as a section with these keys (`allowed`, of which `decls` are declared
    /// values); unknown keys are errors.
    fn open(
        cx: &'a Cx,
        prefix: &str,
        node: &'a Node,
        pos: Pos,
        allowed: &[&str],
        decls: Vec<KeyDecl>,
    ) -> Result<Section<'a>> {
        let Some(entries) = node.entries() else {
            let what = if prefix.is_empty() { "the top level" } else { "a section" };
            return Err(cx.err(
                K::WrongType,
                &node.pos,
                if prefix.is_empty() { "(top level)" } else { prefix },
                format!("expected {what} of `key: value` lines, got {}", node.describe()),
            ));
        };
        let s = Section { cx, prefix: prefix.to_string(), pos, entries, decls };
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
    fn empty(cx: &'a Cx, prefix: &str, pos: Pos, decls: Vec<KeyDecl>) -> Section<'a> {
        Section { cx, prefix: prefix.to_string(), pos, entries: &[], decls }
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

    /// A declared sub-section; `None` when absent or null.
    fn section(&self, decl: &SectionDecl) -> Result<Option<Section<'a>>> {
        match self.entry(decl.name) {
            Some(e) if !e.value.is_null() => Section::open(
                self.cx,
                &self.path(decl.name),
                &e.value,
                e.key_pos.clone(),
                &decl.names(),
                decl.keys.to_vec(),
            )
            .map(Some),
            _ => Ok(None),
        }
    }

    /// A declared sub-section that must be present.
    fn required_section(&self, decl: &SectionDecl) -> Result<Section<'a>> {
        self.section(decl)?.ok_or_else(|| self.missing(decl.name, decl.expect))
    }

    /// A declared sub-section whose keys all have defaults or are optional.
    fn optional_section(&self, decl: &SectionDecl) -> Result<Section<'a>> {
        Ok(self.section(decl)?.unwrap_or_else(|| {
            Section::empty(self.cx, &self.path(decl.name), self.pos.clone(), decl.keys.to_vec())
        }))
    }

    /// The declaration of `key`, which the code reading it must have declared in this section
    /// (`config/keys.rs` or the recipe's spec).
    fn decl(&self, key: &str) -> KeyDecl {
        *self
            .decls
            .iter()
            .find(|d| d.name == key)
            .unwrap_or_else(|| panic!("config key {} read but not declared", self.path(key)))
    }

    /// The value of a declared key: checked against its type and range, its default when absent;
    /// a required key that is absent is an error. [`KeyType::Other`] values are read as text.
    fn value(&self, d: &KeyDecl) -> Result<Option<KeyValue>> {
        let expect = d.ty.expect();
        let key = d.name;
        let v = match d.ty {
            KeyType::Bool { default } => {
                Some(KeyValue::Bool(self.opt(key, &expect, Node::as_bool, |_| true)?.unwrap_or(default)))
            }
            KeyType::Int { min, default } => self
                .opt(key, &expect, Node::as_int, |i| *i >= min as i128 && usize::try_from(*i).is_ok())?
                .map(|i| i as usize)
                .or(default)
                .map(KeyValue::Int),
            KeyType::Num { default, .. } => {
                self.opt(key, &expect, Node::as_f64, |v| d.ty.num_ok(*v))?.or(default).map(KeyValue::Num)
            }
            KeyType::Word { names, default } => self
                .opt(key, &expect, text_of, |s| names.contains(&s.as_str()))?
                .or(default.map(str::to_string))
                .map(KeyValue::Text),
            KeyType::Text { .. } | KeyType::Other { .. } => {
                self.opt(key, &expect, text_of, |s| !s.is_empty())?.map(KeyValue::Text)
            }
            KeyType::ModelPath => {
                panic!("config key {} is a model path: read it with model_path_value", self.path(key))
            }
        };
        match v {
            None if d.required => Err(self.missing(key, &expect)),
            v => Ok(v),
        }
    }

    /// A declared [`KeyType::Bool`].
    fn get_bool(&self, key: &str) -> Result<bool> {
        Ok(self.value(&self.decl(key))?.and_then(|v| v.as_bool()).unwrap_or(false))
    }

    /// A declared [`KeyType::Int`].
    fn get_int(&self, key: &str) -> Result<Option<usize>> {
        Ok(self.value(&self.decl(key))?.and_then(|v| v.as_int()))
    }

    /// A declared [`KeyType::Num`].
    fn get_num(&self, key: &str) -> Result<Option<f64>> {
        Ok(self.value(&self.decl(key))?.and_then(|v| v.as_num()))
    }

    /// A declared [`KeyType::Word`], as its enum.
    fn get_word<E>(&self, key: &str, from: impl Fn(&str) -> Option<E>) -> Result<Option<E>> {
        Ok(self.value(&self.decl(key))?.and_then(|v| v.as_text().and_then(&from)))
    }

    /// A declared [`KeyType::Text`].
    fn get_text(&self, key: &str) -> Result<Option<String>> {
        Ok(self.value(&self.decl(key))?.and_then(|v| v.as_text().map(str::to_string)))
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
fn path_value(s: &Section, key: &str, raw: &Node, required: bool) -> Result<Option<PathBuf>> {
    let expect = s.decl(key).ty.expect();
    let text = s.opt(key, &expect, text_of, |t| !t.is_empty())?;
    let text = match text {
        None if required => return Err(s.missing(key, &expect)),
        t => t,
    };
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

/// `model.path` (and any [`KeyType::ModelPath`] key, such as a teacher's): a local GGUF file or
/// Hugging Face folder (checked to exist), or a Hub repository (`hf://org/name[@rev][/file.gguf]`,
/// or a bare `org/name` where no such local path exists), kept as `hf://…` and fetched through
/// the Hugging Face cache when the run starts. Absent: an error when `required`, else `None`.
fn model_path_value(s: &Section, key: &str, raw: &Node, required: bool) -> Result<Option<PathBuf>> {
    let expect = s.decl(key).ty.expect();
    if let Some(text) = s.opt(key, &expect, text_of, |t| !t.is_empty())? {
        let node = s.node(key).expect("present");
        let local = resolve_path(s.cx, &text, &node.pos);
        if let Some(r) = afinar_hub::as_hub_reference(&text, &local) {
            afinar_hub::RepoRef::parse(&r, false)
                .map_err(|e| s.cx.err(K::WrongType, &node.pos, s.path(key), e.to_string()))?;
            return Ok(Some(PathBuf::from(r)));
        }
    }
    path_value(s, key, raw, required)
}

/// The checked value of a key a recipe declares (see [`Section::value`]); a
/// [`KeyType::ModelPath`] is resolved and checked on disk, its value the path as text.
fn recipe_value(s: &Section, d: &KeyDecl, raw: &Node) -> Result<Option<KeyValue>> {
    match d.ty {
        KeyType::ModelPath => Ok(model_path_value(s, d.name, raw, d.required)?
            .map(|p| KeyValue::Text(p.to_string_lossy().into_owned()))),
        // A list or mapping under a recipe's `Other` key (the grpo `rewards:` list) is kept as
        // its JSON text, for the recipe to read (see `crate::rewards::RewardSet::from_config`).
        KeyType::Other { .. } => match s.node(d.name) {
            Some(n) if matches!(n.value, Value::Seq(_) | Value::Map(_)) => Ok(Some(KeyValue::Text(
                super::yaml::to_json(n, &s.path(d.name), &mut Vec::new()).to_string(),
            ))),
            _ => s.value(d),
        },
        _ => s.value(d),
    }
}

fn text_of(n: &Node) -> Option<String> {
    n.as_text().map(str::to_string)
}

fn check_device(d: &str) -> bool {
    afinar_engine::device::parse_device(d).is_some()
}

/// Reads and checks the whole config. `raw` is the document before interpolation (for hints);
/// `want` is the recipe the caller runs, if any.
pub(crate) fn extract(
    root: &Node,
    raw: &Node,
    cx: &Cx,
    recipes: &[&RecipeSpec],
    want: Option<&str>,
) -> Result<RecipeConfig> {
    let mut top = Section::open(cx, "", root, root.pos.clone(), &all_root_names(recipes), ROOT.to_vec())?;

    let names: Vec<&str> = recipes.iter().map(|r| r.name).collect();
    let expect = format!("one of {}", names.join(", "));
    let recipe_name =
        top.opt("recipe", &expect, text_of, |_| true)?.ok_or_else(|| top.missing("recipe", &expect))?;
    if !names.contains(&recipe_name.as_str()) {
        let node = top.node("recipe").expect("present");
        return Err(cx.err(
            K::OutOfRange,
            &node.pos,
            "recipe",
            format!(
                "unknown recipe {} ({}expected one of {})",
                node.describe(),
                did_you_mean(&recipe_name, &names),
                names.join(", ")
            ),
        ));
    }
    let spec: &RecipeSpec = recipes.iter().find(|r| r.name == recipe_name).expect("checked");
    let recipe = spec.name;
    if let Some(want) = want.filter(|w| *w != recipe) {
        let node = top.node("recipe").expect("present");
        return Err(cx.err(
            K::RecipeMismatch,
            &node.pos,
            "recipe",
            format!("this config is for {recipe}, but the recipe to run is {want}; run `afinar run {recipe}` or use a {want} config"),
        ));
    }
    // A key or section of another recipe.
    for e in top.entries {
        let k = e.key.as_str();
        let ours = ROOT.iter().any(|d| d.name == k)
            || COMMON_SECTIONS.iter().any(|s| s.name == k)
            || spec.section(k).is_some()
            || spec.keys.iter().any(|d| d.name == k);
        if ours {
            continue;
        }
        let is_section = recipes.iter().any(|r| r.section(k).is_some());
        let owners: Vec<&str> = recipes
            .iter()
            .filter(|r| r.section(k).is_some() || r.keys.iter().any(|d| d.name == k))
            .map(|r| r.name)
            .collect();
        return Err(cx.err(
            K::Inconsistent,
            &e.key_pos,
            k,
            format!(
                "a {recipe} config has no {k} {}: remove it (override ~{k}) or set recipe: {}",
                if is_section { "section" } else { "key" },
                owners.join(" or ")
            ),
        ));
    }
    top.decls.extend_from_slice(spec.keys);
    let output_dir = PathBuf::from(top.get_text("output_dir")?.expect("required"));

    // Model.
    let model_s = top.required_section(&MODEL)?;
    let preset = model_s.get_text("preset")?;
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
    let path = if preset.is_some() { None } else { model_path_value(&model_s, "path", raw, true)? };
    let dtype = model_s.get_word("dtype", Dtype::from_name)?.expect("defaulted");
    let model = ModelSection { path, preset, dtype };

    // Tokenizer.
    let tok_s = top.required_section(&TOKENIZER)?;
    let max_seq_len = tok_s.get_int("max_seq_len")?.expect("required");
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
    let tokenizer = TokenizerSection { path: path_value(&tok_s, "path", raw, false)?, max_seq_len };

    // LoRA.
    // LoRA: the shared typed section, for the recipes that list it (a foreign section was
    // refused above).
    // A recipe lists it as required ([`LORA`]) or optional ([`super::LORA_OPTIONAL`]: without
    // the section every weight trains).
    let lora_decl = spec.section(LORA.name);
    let lora = match (lora_decl, lora_decl.map(|d| top.section(d)).transpose()?.flatten()) {
        (None, _) => None,
        (Some(d), None) if d.required => {
            return Err(top.missing("lora", &format!("{}, required by recipe {recipe}", LORA.expect)));
        }
        (Some(_), None) => None,
        (Some(_), Some(s)) => Some(lora_section(&s)?),
    };

    let dataset = dataset_section(&top.required_section(&DATASET)?, raw, spec)?;

    // Training loop.
    let seed = top
        .opt("seed", &top.decl("seed").ty.expect(), Node::as_int, |i| u64::try_from(*i).is_ok())?
        .map_or(0, |i| i as u64);
    let shuffle = top.get_bool("shuffle")?;
    let batch_size = top.get_int("batch_size")?.expect("required");
    let epochs = top.get_int("epochs")?.expect("defaulted");
    let max_steps_per_epoch = top.get_int("max_steps_per_epoch")?;
    let gradient_accumulation_steps = top.get_int("gradient_accumulation_steps")?.expect("defaulted");

    let opt_s = top.required_section(&OPTIMIZER)?;
    let lr = opt_s.get_num("lr")?.expect("required");
    let weight_decay = opt_s.get_num("weight_decay")?.expect("defaulted");
    let betas = match opt_s.node("betas") {
        None => [0.9, 0.999],
        Some(node) => {
            let expect = opt_s.decl("betas").ty.expect();
            let expect = expect.as_str();
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
    let eps = opt_s.get_num("eps")?.expect("defaulted");
    let optimizer = OptimizerSection { lr, weight_decay, betas, eps };

    let sched_s = top.optional_section(&SCHEDULER)?;
    let lr_scheduler = SchedulerSection {
        kind: sched_s.get_word("kind", SchedulerKind::from_name)?.expect("defaulted"),
        warmup_steps: sched_s.get_int("warmup_steps")?.expect("defaulted"),
        min_lr_ratio: sched_s.get_num("min_lr_ratio")?.expect("defaulted"),
    };

    let clip_grad_norm = top.get_num("clip_grad_norm")?;
    let optimizer_in_bwd = top.get_bool("optimizer_in_bwd")?;
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
    let enable_activation_checkpointing = top.get_bool("enable_activation_checkpointing")?;
    let activation_checkpointing_every_n_layers = top.get_int("activation_checkpointing_every_n_layers")?;
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
        .opt("device", &top.decl("device").ty.expect(), text_of, |d| check_device(d))?
        .unwrap_or_else(|| "cpu".into());
    let threads = top.get_int("threads")?;
    let save_every_n_steps = top.get_int("save_every_n_steps")?;
    let save_adapter_weights_only = top.get_bool("save_adapter_weights_only")?;
    if save_adapter_weights_only && lora.is_none() {
        let node = top.node("save_adapter_weights_only").expect("present");
        let owners: Vec<&str> =
            recipes.iter().filter(|r| r.section(LORA.name).is_some()).map(|r| r.name).collect();
        return Err(cx.err(
            K::Inconsistent,
            &node.pos,
            "save_adapter_weights_only",
            format!("only a {} has adapter weights; set it to false for {recipe}", owners.join(" or ")),
        ));
    }
    let merge_adapter = top.get_bool("merge_adapter")?;
    let resume_from_checkpoint = top.get_bool("resume_from_checkpoint")?;
    let resume_accept_config_changes = top.get_bool("resume_accept_config_changes")?;
    let log_every_n_steps = top.get_int("log_every_n_steps")?.expect("defaulted");

    // The recipe's own keys and sections, by dotted path.
    let mut extra = BTreeMap::new();
    for d in spec.keys {
        if let Some(v) = recipe_value(&top, d, raw)? {
            extra.insert(d.name.to_string(), v);
        }
    }
    for sd in spec.sections.iter().filter(|s| s.name != LORA.name) {
        let s = match top.section(sd)? {
            Some(s) => s,
            None if sd.required => {
                return Err(top.missing(sd.name, &format!("{}, required by recipe {recipe}", sd.expect)))
            }
            None => Section::empty(cx, sd.name, top.pos.clone(), sd.keys.to_vec()),
        };
        for d in sd.keys {
            if let Some(v) = recipe_value(&s, d, raw)? {
                extra.insert(format!("{}.{}", sd.name, d.name), v);
            }
        }
    }

    let config = RecipeConfig {
        recipe: recipe.to_string(),
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
        extra,
    };
    if let Some(Err((path, msg))) = spec.check.map(|f| f(&config)) {
        let pos = lookup(root, &path).map_or_else(|| root.pos.clone(), |n| n.pos.clone());
        return Err(cx.err(K::Inconsistent, &pos, path, msg));
    }
    Ok(config)
}

fn lora_section(s: &Section) -> Result<LoraSection> {
    let cx = s.cx;
    let rank = s.get_int("rank")?.expect("required");
    let alpha = s.get_num("alpha")?.expect("required") as f32;
    let dropout = s.get_num("dropout")?.expect("defaulted") as f32;
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
    let quantize_base = s.get_bool("quantize_base")?;
    Ok(LoraSection { rank, alpha, dropout, target_modules, quantize_base })
}

/// `dataset:`, with the dataset kinds (and their column roles) the recipe declares.
fn dataset_section(s: &Section, raw: &Node, spec: &RecipeSpec) -> Result<DatasetSection> {
    let cx = s.cx;
    let kinds: Vec<&str> = spec.dataset_kinds.iter().map(|k| k.kind.as_str()).collect();
    let expect = format!("one of {}", kinds.join(", "));
    let kind_decl = s
        .opt("kind", &expect, text_of, |k| spec.dataset_kind(k).is_some())?
        .and_then(|k| spec.dataset_kind(&k))
        .ok_or_else(|| s.missing("kind", &expect))?;
    let kind = kind_decl.kind;
    let format = s.get_word("format", FileFormat::from_name)?;
    let source = path_value(s, "source", raw, true)?.expect("required");
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
        let roles = kind_decl.roles;
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
    let conversation_style = s.get_word("conversation_style", ConversationStyle::from_name)?;
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
        train_on: s.get_word("train_on", TrainOn::from_name)?.expect("defaulted"),
        long_rows: s.get_word("long_rows", LongRows::from_name)?.expect("defaulted"),
        packed: s.get_bool("packed")?,
        max_rows: s.get_int("max_rows")?,
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
        ("recipe", raw_node(&c.recipe)),
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
    // The recipe's own keys, then its sections (each key in path order).
    let value_node = |v: &KeyValue| match v {
        KeyValue::Bool(b) => raw_node(b),
        KeyValue::Int(i) => raw_node(i),
        KeyValue::Num(x) => raw_node(format!("{x:?}")),
        KeyValue::Text(t) => text_node(t),
    };
    let mut sections: Vec<(&str, Vec<(&str, Node)>)> = Vec::new();
    for (path, v) in &c.extra {
        match path.split_once('.') {
            None => top.push((path.as_str(), value_node(v))),
            Some((sec, key)) => match sections.iter_mut().find(|(s, _)| *s == sec) {
                Some((_, keys)) => keys.push((key, value_node(v))),
                None => sections.push((sec, vec![(key, value_node(v))])),
            },
        }
    }
    top.extend(sections.into_iter().map(|(sec, keys)| (sec, map(keys))));
    map(top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys::{above, within, DatasetKindDecl};
    use crate::config::{yaml, ConfigDoc};

    #[test]
    fn known_paths() {
        assert!(is_known_path(&["lora", "rank"]));
        assert!(is_known_path(&["clip_grad_norm"]));
        assert!(is_known_path(&["dataset", "column_map", "input"]));
        assert!(!is_known_path(&["lora", "rnak"]));
        assert!(!is_known_path(&["optimizer", "lr", "x"]));
        let root = all_root_names(crate::recipes::registry());
        for s in COMMON_SECTIONS {
            assert!(root.contains(&s.name));
            assert!(!ROOT.iter().any(|k| k.name == s.name), "{} both a key and a section", s.name);
        }
        for r in crate::recipes::registry() {
            for sd in r.sections {
                // Lists: lora.target_modules, and grpo.stop (checked by the grpo recipe's check).
                assert!(
                    !sd.keys.iter().any(|k| matches!(k.ty, KeyType::Other { .. })
                        && sd.name != LORA.name
                        && (sd.name, k.name) != ("grpo", "stop")),
                    "{}: recipe-declared keys need a checkable type",
                    sd.name
                );
            }
        }
    }

    #[test]
    fn hints() {
        assert_eq!(distance("rnak", "rank"), 2);
        assert_eq!(did_you_mean("rnak", &LORA.names()), "did you mean `rank`? ");
        assert_eq!(did_you_mean("zzzzzzzz", &LORA.names()), "");
        assert!(
            check_device("cuda:0") && check_device("cpu") && !check_device("cuda:") && !check_device("gpu")
        );
    }

    // A recipe that is not registered, declaring its own section, top-level keys and dataset
    // kind: the extension point a new recipe (knowledge distillation here) uses.
    const TEACHER: SectionDecl = SectionDecl {
        name: "teacher",
        keys: &[
            KeyDecl::required("path", KeyType::Text { expect: "a teacher checkpoint" }, "The teacher."),
            KeyDecl::new(
                "dtype",
                KeyType::Word { names: Dtype::NAMES, default: Some("bf16") },
                "Its storage.",
            ),
        ],
        required: true,
        expect: "a section with path",
        doc: "The teacher model.",
    };

    fn no_run(
        _: &RecipeConfig,
        _: &mut dyn crate::recipes::metrics::Reporter,
    ) -> crate::Result<crate::recipes::finetune::Summary> {
        Err(crate::Error::Input("a test recipe does not run".into()))
    }

    static TEST_KD: RecipeSpec = RecipeSpec {
        name: "test_distill",
        description: "test only",
        sections: &[TEACHER],
        keys: &[
            KeyDecl::new("kd_ratio", within(0.0, 1.0, true, Some(0.5)), "Weight of the distillation loss."),
            KeyDecl::new(
                "kd_loss",
                KeyType::Word { names: &["forward_kl", "reverse_kl", "jsd"], default: Some("forward_kl") },
                "Distillation loss.",
            ),
            KeyDecl::new("temperature", above(0.0, false, Some(1.0)), "Softmax temperature."),
        ],
        dataset_kinds: &[DatasetKindDecl { kind: DatasetKind::Text, roles: &["text", "prompt"] }],
        configs: &[],
        check: Some(kd_check),
        run: no_run,
    };

    /// The test recipe's rule across keys: jsd takes no temperature.
    fn kd_check(c: &RecipeConfig) -> std::result::Result<(), (String, String)> {
        let jsd = c.extra("kd_loss").and_then(KeyValue::as_text) == Some("jsd");
        match c.extra("temperature").and_then(KeyValue::as_num) {
            Some(t) if jsd && t != 1.0 => Err((
                "temperature".into(),
                "kd_loss jsd takes no temperature: remove it or set it to 1".into(),
            )),
            _ => Ok(()),
        }
    }

    const KD: &str = "\
recipe: test_distill
output_dir: out
model:
  path: data.jsonl
tokenizer:
  max_seq_len: 64
teacher:
  path: big
kd_ratio: 0.25
dataset:
  kind: text
  source: data.jsonl
  column_map:
    prompt: question
batch_size: 1
optimizer:
  lr: 1e-4
";

    fn check_kd(text: &str) -> Result<RecipeConfig> {
        let dir = std::env::temp_dir().join(format!("afinar-schema-kd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data.jsonl"), "{}\n").unwrap();
        let path = dir.join("kd.yaml");
        let doc = ConfigDoc::parse(text, &path)?;
        let recipes: [&RecipeSpec; 2] = [&TEST_KD, &crate::recipes::lora_finetune::SPEC];
        doc.to_config_in(&recipes, None)
    }

    #[test]
    fn a_recipe_declares_its_own_section_keys_and_dataset_kind() {
        let c = check_kd(KD).unwrap();
        assert_eq!(c.recipe, "test_distill");
        assert_eq!(c.extra("teacher.path"), Some(&KeyValue::Text("big".into())));
        assert_eq!(c.extra("teacher.dtype"), Some(&KeyValue::Text("bf16".into())));
        assert_eq!(c.extra("kd_ratio").and_then(KeyValue::as_num), Some(0.25));
        assert_eq!(c.extra("kd_loss").and_then(KeyValue::as_text), Some("forward_kl"));
        assert_eq!(c.extra("temperature").and_then(KeyValue::as_num), Some(1.0));
        assert_eq!(c.dataset.column_map.get("prompt").map(String::as_str), Some("question"));
        assert_eq!(c.lora, None);
        // Written out and read back: the same config.
        let back = check_kd(&yaml::emit(&to_node(&c))).unwrap();
        assert_eq!(back, c);

        let err = |text: &str| check_kd(text).unwrap_err().to_string();
        let e = err(&KD.replace("  path: big", "  pth: big"));
        assert!(
            e.ends_with(
                "kd.yaml:8:3: teacher.pth: unknown key (did you mean `path`? expected one of: path, dtype)"
            ),
            "{e}"
        );
        let e = err(&KD.replace("recipe: test_distill", "recipe: test_distil"));
        assert!(e.ends_with("kd.yaml:1:9: recipe: unknown recipe \"test_distil\" (did you mean `test_distill`? expected one of test_distill, lora_finetune)"), "{e}");
        let e = err(&KD.replace("kd_ratio: 0.25", "kd_rato: 0.25"));
        assert!(e.contains("kd.yaml:9:1: kd_rato: unknown key (did you mean `kd_ratio`? "), "{e}");
        let e = err(&KD.replace("kd_ratio: 0.25", "kd_ratio: 2"));
        assert!(e.ends_with("kd.yaml:9:11: kd_ratio: expected a number in [0, 1], got 2"), "{e}");
        let e = err(&KD.replace("kd_ratio: 0.25", "kd_loss: kl"));
        assert!(e.ends_with("kd_loss: expected one of forward_kl, reverse_kl, jsd, got \"kl\""), "{e}");
        let e = err(&KD.replace("teacher:\n  path: big\n", ""));
        assert!(
            e.contains(
                "teacher: missing required key (a section with path, required by recipe test_distill)"
            ),
            "{e}"
        );
        let e = err(&KD.replace("    prompt: question", "    promt: question"));
        assert!(e.contains("kd.yaml:14:5: dataset.column_map.promt: unknown role for dataset kind text (did you mean `prompt`?"), "{e}");
        let e = err(&KD.replace("  kind: text", "  kind: chat"));
        assert!(e.ends_with("dataset.kind: expected one of text, got \"chat\""), "{e}");
        let e = err(&KD.replace("kd_ratio: 0.25", "kd_loss: jsd\ntemperature: 2"));
        assert!(
            e.ends_with(
                "kd.yaml:10:14: temperature: kd_loss jsd takes no temperature: remove it or set it to 1"
            ),
            "{e}"
        );
        check_kd(&KD.replace("kd_ratio: 0.25", "kd_loss: jsd")).unwrap();
        // Another recipe's section, and this recipe's keys in another recipe's config.
        let e = err(&KD.replace("teacher:", "lora:\n  rank: 2\nteacher:"));
        assert!(e.contains("kd.yaml:7:1: lora: a test_distill config has no lora section: remove it (override ~lora) or set recipe: lora_finetune"), "{e}");
        let e = err(&KD.replace("recipe: test_distill", "recipe: lora_finetune"));
        assert!(e.contains("kd.yaml:7:1: teacher: a lora_finetune config has no teacher section: remove it (override ~teacher) or set recipe: test_distill"), "{e}");
    }
}
