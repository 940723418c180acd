//! Recipe configuration: the YAML files that say what to fine-tune, on what, and how.
//!
//! A config is a YAML file (or the name of one shipped in the binary, see [`builtin_configs`])
//! plus command-line overrides, torchtune style (`optimizer.lr=1e-4`, `~max_steps_per_epoch`).
//! Loading it ([`RecipeConfig::load`]) goes through four steps, all before any weight is read:
//! 1. parse the YAML into a tree that remembers the line and column of every value;
//! 2. apply the overrides in order;
//! 3. resolve `${...}` references (other keys, `env:NAME[,default]`, `assets`);
//! 4. check it against the schema — the shared keys (declared once, as [`KeyDecl`]s and
//!    [`SectionDecl`]s, in `config/keys.rs`) plus the recipe's own sections, keys and dataset
//!    kinds (its [`RecipeSpec`](crate::recipes::RecipeSpec) in [`crate::recipes::registry()`]):
//!    unknown keys, types, ranges, sections that contradict the recipe, files that do not exist. Every failure is a [`ConfigError`] naming the file, line,
//!    column and key path: `my.yaml:14:3: optimizer.lr: expected a number > 0, got "fast"`.
//!
//! Relative `model.path`, `tokenizer.path` and `dataset.source` written in a config file are
//! relative to that file's folder (built-in configs: to the current directory); those given in
//! overrides, and `output_dir`, are relative to the current directory.

mod builtin;
mod error;
mod interp;
mod keys;
mod overrides;
mod schema;
mod types;
pub(crate) mod yaml;

use std::path::{Path, PathBuf};

pub(crate) use builtin::builtin_config;
pub use builtin::{builtin, builtin_configs, BuiltinConfig};
pub use error::{ConfigError, ConfigErrorKind, Location};
pub use interp::assets_dir;
pub use keys::{
    above, within, DatasetKindDecl, KeyDecl, KeyType, KeyValue, SectionDecl, LORA, LORA_OPTIONAL,
};
pub(crate) use schema::did_you_mean;
pub use types::{
    ConversationStyle, DatasetKind, DatasetSection, Dtype, FileFormat, LongRows, LoraSection, LoraTarget,
    ModelSection, OptimizerSection, RecipeConfig, SchedulerKind, SchedulerSection, TokenizerSection, TrainOn,
};

use error::ConfigErrorKind as K;
use schema::Cx;
use yaml::{Node, Pos};

/// A config document, parsed but not yet checked: what `afinar cat` shows and what overrides
/// edit. [`ConfigDoc::to_config`] checks it.
#[derive(Clone, Debug)]
pub struct ConfigDoc {
    text: String,
    cx_file: String,
    base_dir: Option<PathBuf>,
    builtin: Option<&'static BuiltinConfig>,
    root: Node,
}

impl ConfigDoc {
    /// Opens a built-in config by name (see [`builtin_configs`]) or a YAML file by path.
    pub fn open(name_or_path: &str) -> Result<ConfigDoc, ConfigError> {
        if let Some(b) = builtin(name_or_path) {
            return ConfigDoc::parse_with(b.yaml, b.label(), None, Some(b));
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(ConfigError::new(
                K::UnknownConfig,
                Location::Path(path.to_path_buf()),
                None,
                "no such file, nor a built-in config name (`afinar ls` lists them)",
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, "cannot read the config", e))?;
        ConfigDoc::parse(&text, path)
    }

    /// Parses YAML text read from `origin` (used in messages, and to resolve relative paths
    /// against its folder).
    pub fn parse(text: &str, origin: &Path) -> Result<ConfigDoc, ConfigError> {
        let base = origin.parent().map(Path::to_path_buf);
        ConfigDoc::parse_with(text, origin.display().to_string(), base, None)
    }

    fn parse_with(
        text: &str,
        file: String,
        base_dir: Option<PathBuf>,
        builtin: Option<&'static BuiltinConfig>,
    ) -> Result<ConfigDoc, ConfigError> {
        let cx = Cx { file: file.clone(), base_dir: base_dir.clone() };
        let root = match yaml::parse(text, None) {
            Ok(Some(root)) => root,
            Ok(None) => Node::map(Pos::File { line: 1, col: 1 }),
            Err(e) => return Err(ConfigError::new(K::Syntax, cx.location(&e.pos), None, e.msg)),
        };
        if root.entries().is_none() && !root.is_null() {
            return Err(cx.err(
                K::WrongType,
                &root.pos,
                "(top level)",
                format!("expected `key: value` lines, got {}", root.describe()),
            ));
        }
        let root = if root.is_null() { Node::map(root.pos) } else { root };
        Ok(ConfigDoc { text: text.to_string(), cx_file: file, base_dir, builtin, root })
    }

    fn cx(&self) -> Cx {
        Cx { file: self.cx_file.clone(), base_dir: self.base_dir.clone() }
    }

    /// The file name as shown in messages (`built-in:NAME.yaml` for a built-in config).
    pub fn origin(&self) -> &str {
        &self.cx_file
    }

    /// The built-in config this document is, if it is one.
    pub fn builtin(&self) -> Option<&'static BuiltinConfig> {
        self.builtin
    }

    /// The YAML text as written (comments included).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Applies command-line overrides in order: `a.b=VALUE` or `~a.b`.
    pub fn apply_overrides<S: AsRef<str>>(&mut self, overrides: &[S]) -> Result<(), ConfigError> {
        for ov in overrides {
            overrides::apply(&mut self.root, ov.as_ref())?;
        }
        Ok(())
    }

    /// The document (with overrides applied) as YAML, keys sorted when `sort`; comments are
    /// not kept and `${...}` is not resolved.
    pub fn to_yaml(&self, sort: bool) -> String {
        let mut root = self.root.clone();
        if sort {
            root.sort_keys();
        }
        yaml::emit(&root)
    }

    /// Resolves `${...}` and checks everything against the recipes of
    /// [`crate::recipes::registry()`]; `recipe`: the recipe about to run, which the config's
    /// `recipe` key must name.
    pub fn to_config(&self, recipe: Option<&str>) -> Result<RecipeConfig, ConfigError> {
        self.to_config_in(crate::recipes::registry(), recipe)
    }

    /// [`ConfigDoc::to_config`] against the given recipes instead of the registry's (tests of
    /// recipes that are not registered).
    pub fn to_config_in(
        &self,
        recipes: &[&crate::recipes::RecipeSpec],
        recipe: Option<&str>,
    ) -> Result<RecipeConfig, ConfigError> {
        let cx = self.cx();
        let mut root = self.root.clone();
        interp::interpolate(&mut root, &cx)?;
        schema::extract(&root, &self.root, &cx, recipes, recipe)
    }
}

/// One key whose value differs between two configs: its dotted path, the old and the new value
/// (as YAML; `(absent)` for a key one side lacks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigChange {
    /// Dotted key path (`optimizer.lr`).
    pub key: String,
    /// The value in the earlier config.
    pub old: String,
    /// The value in this config.
    pub new: String,
}

/// Every leaf of a YAML tree as (dotted path, value as YAML); lists are one value.
fn flatten(node: &Node, prefix: &str, out: &mut Vec<(String, String)>) {
    fn render(n: &Node) -> String {
        match &n.value {
            yaml::Value::Scalar { text, .. } => text.clone(),
            yaml::Value::Seq(items) => {
                format!("[{}]", items.iter().map(render).collect::<Vec<_>>().join(", "))
            }
            yaml::Value::Map(_) => yaml::emit(n).trim().to_string(),
        }
    }
    match &node.value {
        yaml::Value::Map(entries) if !entries.is_empty() || prefix.is_empty() => {
            for e in entries {
                let key = if prefix.is_empty() { e.key.clone() } else { format!("{prefix}.{}", e.key) };
                flatten(&e.value, &key, out);
            }
        }
        _ => out.push((prefix.to_string(), render(node))),
    }
}

impl RecipeConfig {
    /// The keys whose values differ between `earlier`, a config written by
    /// [`RecipeConfig::to_yaml`] (e.g. the one saved with a checkpoint; `origin` names it in
    /// errors), and this config, in this config's key order.
    pub fn changes_since(&self, earlier: &str, origin: &Path) -> Result<Vec<ConfigChange>, ConfigError> {
        let cx = Cx { file: origin.display().to_string(), base_dir: None };
        let old = match yaml::parse(earlier, None) {
            Ok(Some(root)) => root,
            Ok(None) => Node::map(Pos::File { line: 1, col: 1 }),
            Err(e) => return Err(ConfigError::new(K::Syntax, cx.location(&e.pos), None, e.msg)),
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        flatten(&old, "", &mut a);
        flatten(&schema::to_node(self), "", &mut b);
        let old: std::collections::BTreeMap<_, _> = a.into_iter().collect();
        let mut out = Vec::new();
        let absent = || "(absent)".to_string();
        for (key, new) in &b {
            let was = old.get(key).cloned().unwrap_or_else(absent);
            if &was != new {
                out.push(ConfigChange { key: key.clone(), old: was, new: new.clone() });
            }
        }
        let here: std::collections::BTreeSet<_> = b.iter().map(|(k, _)| k.as_str()).collect();
        for (key, was) in &old {
            if !here.contains(key.as_str()) {
                out.push(ConfigChange { key: key.clone(), old: was.clone(), new: absent() });
            }
        }
        Ok(out)
    }

    /// Loads a built-in config (by name) or a YAML file (by path), applies `overrides`
    /// (`a.b=VALUE`, `~a.b`), resolves `${...}` and checks everything, files on disk included.
    pub fn load<S: AsRef<str>>(name_or_path: &str, overrides: &[S]) -> Result<RecipeConfig, ConfigError> {
        let mut doc = ConfigDoc::open(name_or_path)?;
        doc.apply_overrides(overrides)?;
        doc.to_config(None)
    }

    /// [`RecipeConfig::load`] for a given recipe: a config for another one is an error.
    pub fn load_for<S: AsRef<str>>(
        recipe: &str,
        name_or_path: &str,
        overrides: &[S],
    ) -> Result<RecipeConfig, ConfigError> {
        let mut doc = ConfigDoc::open(name_or_path)?;
        doc.apply_overrides(overrides)?;
        doc.to_config(Some(recipe))
    }

    /// Loads YAML text as if read from the file `origin` (for messages and relative paths).
    pub fn load_str(text: &str, origin: impl AsRef<Path>) -> Result<RecipeConfig, ConfigError> {
        ConfigDoc::parse(text, origin.as_ref())?.to_config(None)
    }

    /// The config as YAML with every key written out (defaults included) in schema order; it
    /// loads back to the same config.
    pub fn to_yaml(&self) -> String {
        yaml::emit(&schema::to_node(self))
    }
}
