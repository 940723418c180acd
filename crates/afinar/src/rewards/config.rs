//! The `rewards:` list of a config: declarations of every kind's keys, and the parsers (from the
//! project's YAML tree, with file:line:col errors, or from JSON).
//!
//! The config's section machinery ([`crate::config::SectionDecl`], whose values land in
//! [`crate::config::RecipeConfig::extra`] as scalars) has no place for a list of mappings. So a
//! recipe declares `rewards` as a top-level key ([`REWARDS_KEY`], a [`KeyType::Other`]); the
//! checker keeps a list or mapping under such a key as its JSON text, which
//! [`RewardSet::from_config`] reads (and [`check_rewards`], as the recipe's
//! [`RecipeSpec::check`](crate::recipes::RecipeSpec::check), checks at load time, reported at
//! the `rewards:` line). [`RewardSet::from_yaml`] reads the list from the document itself, with
//! the line and column of each bad value.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde_json::{Map, Value};

use super::{LengthUnit, RewardError, RewardKind, RewardSet, RewardSpec};
use crate::config::yaml::{self, Node, Pos};
use crate::config::{
    above, did_you_mean, ConfigError, ConfigErrorKind, KeyDecl, KeyType, KeyValue, Location, RecipeConfig,
};

/// The top-level `rewards:` key, for a recipe's [`RecipeSpec::keys`](crate::recipes::RecipeSpec::keys).
pub const REWARDS_KEY: KeyDecl = KeyDecl::required(
    "rewards",
    KeyType::Other { expect: "a list of rewards, each a mapping with kind and weight" },
    "The rewards, summed with their weights (kinds: exact_match, numeric_match, regex, format, \
     length_penalty, language, command).",
);

/// The recipe check for a config with [`REWARDS_KEY`]: `Err(("rewards", message))` when the list
/// does not make a [`RewardSet`].
pub fn check_rewards(cfg: &RecipeConfig) -> Result<(), (String, String)> {
    RewardSet::from_config(cfg).map(|_| ()).map_err(|e| ("rewards".to_string(), e.to_string()))
}

/// The keys every reward has.
pub const REWARD_COMMON_KEYS: &[KeyDecl] = &[
    KeyDecl::required(
        "kind",
        KeyType::Word { names: KIND_NAMES, default: None },
        "The rule: exact_match, numeric_match, regex (or format), length_penalty, language or command.",
    ),
    KeyDecl::new("weight", above(0.0, true, Some(1.0)), "Its weight in the summed reward."),
    KeyDecl::new(
        "name",
        KeyType::Text { expect: "a name for the metrics" },
        "Its name in the metrics (default: the kind, with _2, _3 … on repeats).",
    ),
];

const KIND_NAMES: &[&str] =
    &["exact_match", "numeric_match", "regex", "format", "length_penalty", "language", "command"];

/// One reward kind and the keys it takes besides [`REWARD_COMMON_KEYS`].
#[derive(Clone, Copy, Debug)]
pub struct RewardKindDecl {
    /// The word written as `kind:`.
    pub name: &'static str,
    /// Its own keys.
    pub keys: &'static [KeyDecl],
    /// One line of documentation.
    pub doc: &'static str,
}

const FIELD_ANSWER: KeyDecl = KeyDecl::new(
    "field",
    KeyType::Text { expect: "a column name" },
    "The row's column with the reference (default answer).",
);
const PATTERN_EXTRACT: KeyDecl = KeyDecl::new(
    "pattern",
    KeyType::Text { expect: "a regular expression with at most one capture group" },
    "Extracts the answer: the last match's group (or whole match).",
);

/// Every reward kind (`format` is another word for `regex`).
pub const REWARD_KINDS: &[RewardKindDecl] = &[
    RewardKindDecl {
        name: "exact_match",
        keys: &[FIELD_ANSWER, PATTERN_EXTRACT],
        doc: "1 when the extracted answer (default: after `####`) equals the row's field, trimmed.",
    },
    RewardKindDecl {
        name: "numeric_match",
        keys: &[
            FIELD_ANSWER,
            PATTERN_EXTRACT,
            KeyDecl::new("tolerance", above(0.0, true, Some(1e-6)), "Largest accepted absolute difference."),
        ],
        doc: "1 when the extracted number (default: the last one) equals the row's field.",
    },
    RewardKindDecl {
        name: "regex",
        keys: &[
            KeyDecl::required("pattern", KeyType::Text { expect: "a regular expression" }, "The pattern."),
            KeyDecl::new(
                "full",
                KeyType::Bool { default: false },
                "The whole trimmed completion must match.",
            ),
        ],
        doc: "1 when the completion matches the pattern.",
    },
    RewardKindDecl {
        name: "length_penalty",
        keys: &[
            KeyDecl::required(
                "target",
                KeyType::Int { min: 0, default: None },
                "Lengths up to this score 1.",
            ),
            KeyDecl::required("max", KeyType::Int { min: 1, default: None }, "Lengths from this on score 0."),
            KeyDecl::new(
                "unit",
                KeyType::Word { names: &["tokens", "chars"], default: Some("tokens") },
                "What is counted.",
            ),
        ],
        doc: "1 up to target, falling linearly to 0 at max.",
    },
    RewardKindDecl {
        name: "language",
        keys: &[KeyDecl::new(
            "field",
            KeyType::Text { expect: "a column name" },
            "The row's column with the language (default lang); without it, the prompt's language.",
        )],
        doc: "1 when the completion is in the row's (or the prompt's) language (en or es).",
    },
    RewardKindDecl {
        name: "command",
        keys: &[
            KeyDecl::required(
                "command",
                KeyType::Other { expect: "a non-empty list of strings (the program and its arguments)" },
                "The program and its arguments.",
            ),
            KeyDecl::new("timeout_s", above(0.0, false, Some(60.0)), "Seconds allowed per batch."),
            KeyDecl::new("cwd", KeyType::Text { expect: "a folder path" }, "Its working directory."),
        ],
        doc: "An external program: JSON lines in, one number per line out.",
    },
];

fn kind_decl(name: &str) -> &'static RewardKindDecl {
    let name = if name == "format" { "regex" } else { name };
    REWARD_KINDS.iter().find(|k| k.name == name).expect("a declared kind")
}

fn spec_err(path: String, message: impl Into<String>) -> RewardError {
    RewardError::Spec { path, message: message.into() }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// One reward's mapping, with its key path for messages.
struct Entry<'a> {
    path: String,
    map: &'a Map<String, Value>,
    decls: Vec<KeyDecl>,
}

impl Entry<'_> {
    fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn decl(&self, key: &str) -> &KeyDecl {
        self.decls.iter().find(|d| d.name == key).expect("declared")
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn missing_or<T>(&self, key: &str, v: Option<T>) -> Result<Option<T>, RewardError> {
        let d = self.decl(key);
        match v {
            None if d.required => {
                Err(spec_err(self.at(key), format!("missing required key ({})", d.ty.expect())))
            }
            v => Ok(v),
        }
    }

    fn wrong(&self, key: &str, v: &Value) -> RewardError {
        spec_err(self.at(key), format!("expected {}, got {}", self.decl(key).ty.expect(), describe(v)))
    }

    fn text(&self, key: &str) -> Result<Option<String>, RewardError> {
        let v = match self.get(key) {
            None => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(v) => return Err(self.wrong(key, v)),
        };
        let v = v.or_else(|| match self.decl(key).ty {
            KeyType::Word { default, .. } => default.map(str::to_string),
            _ => None,
        });
        if let (Some(s), KeyType::Word { names, .. }) = (&v, self.decl(key).ty) {
            if !names.contains(&s.as_str()) {
                return Err(spec_err(
                    self.at(key),
                    format!("{}expected {}, got {s:?}", did_you_mean(s, names), self.decl(key).ty.expect()),
                ));
            }
        }
        self.missing_or(key, v)
    }

    fn num(&self, key: &str) -> Result<Option<f64>, RewardError> {
        let ty = self.decl(key).ty;
        let v = match self.get(key) {
            None => None,
            Some(v @ Value::Number(n)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if !ty.num_ok(x) {
                    return Err(self.wrong(key, v));
                }
                Some(x)
            }
            Some(v) => return Err(self.wrong(key, v)),
        };
        let v = v.or(match ty {
            KeyType::Num { default, .. } => default,
            _ => None,
        });
        self.missing_or(key, v)
    }

    fn int(&self, key: &str) -> Result<Option<usize>, RewardError> {
        let KeyType::Int { min, default } = self.decl(key).ty else { unreachable!("an int key") };
        let v = match self.get(key) {
            None => None,
            Some(v @ Value::Number(n)) => match n.as_u64().and_then(|u| usize::try_from(u).ok()) {
                Some(u) if u >= min => Some(u),
                _ => return Err(self.wrong(key, v)),
            },
            Some(v) => return Err(self.wrong(key, v)),
        };
        self.missing_or(key, v.or(default))
    }

    fn flag(&self, key: &str) -> Result<bool, RewardError> {
        let KeyType::Bool { default } = self.decl(key).ty else { unreachable!("a bool key") };
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.wrong(key, v)),
        }
    }

    fn regex(
        &self,
        key: &str,
        anchored: bool,
        max_groups: Option<usize>,
    ) -> Result<Option<Regex>, RewardError> {
        let Some(src) = self.text(key)? else { return Ok(None) };
        let full = if anchored { format!(r"\A(?:{src})\z") } else { src.clone() };
        let re = Regex::new(&full)
            .map_err(|e| spec_err(self.at(key), format!("not a valid regular expression: {e}")))?;
        if let Some(max) = max_groups {
            if re.captures_len() - 1 > max {
                return Err(spec_err(
                    self.at(key),
                    format!(
                        "{src:?} has {} capture groups; expected at most {max} (the answer); write (?:...) for groups \
                         that only group",
                        re.captures_len() - 1
                    ),
                ));
            }
        }
        Ok(Some(re))
    }
}

/// The default extraction pattern of `exact_match`: GSM8K's `#### answer` line.
pub const DEFAULT_EXACT_PATTERN: &str = r"####\s*(.+)";
/// The default extraction pattern of `numeric_match`: any number (the last one is used).
pub const DEFAULT_NUMBER_PATTERN: &str = r"-?\d[\d,]*(?:\.\d+)?";

impl RewardSet {
    /// Reads a `rewards:` list given as JSON: `[{"kind": ..., "weight": ..., ...}, ...]`.
    /// Errors name the key path (`rewards[1].weight`) and what was expected; relative `cwd`s
    /// are resolved against `base_dir` when given.
    pub fn from_json(list: &Value, base_dir: Option<&Path>) -> Result<RewardSet, RewardError> {
        let Value::Array(items) = list else {
            return Err(spec_err(
                "rewards".into(),
                format!("expected a list of rewards, got {}", describe(list)),
            ));
        };
        if items.is_empty() {
            return Err(spec_err("rewards".into(), "expected at least one reward, got an empty list"));
        }
        let mut specs: Vec<RewardSpec> = Vec::with_capacity(items.len());
        let default_exact = Regex::new(DEFAULT_EXACT_PATTERN).expect("a valid pattern");
        let default_number = Regex::new(DEFAULT_NUMBER_PATTERN).expect("a valid pattern");
        for (i, item) in items.iter().enumerate() {
            let path = format!("rewards[{i}]");
            let Value::Object(map) = item else {
                return Err(spec_err(
                    path,
                    format!("expected a mapping with kind and weight, got {}", describe(item)),
                ));
            };
            let head = Entry { path: path.clone(), map, decls: REWARD_COMMON_KEYS.to_vec() };
            let word = head.text("kind")?.expect("required");
            let decl = kind_decl(&word);
            let mut decls = REWARD_COMMON_KEYS.to_vec();
            decls.extend_from_slice(decl.keys);
            let e = Entry { path: path.clone(), map, decls };
            let allowed: Vec<&str> = e.decls.iter().map(|d| d.name).collect();
            for key in map.keys() {
                if !allowed.contains(&key.as_str()) {
                    return Err(spec_err(
                        e.at(key),
                        format!(
                            "unknown key for a {word} reward ({}expected one of: {})",
                            did_you_mean(key, &allowed),
                            allowed.join(", ")
                        ),
                    ));
                }
            }
            let weight = e.num("weight")?.expect("defaulted");
            let kind = match decl.name {
                "exact_match" => RewardKind::ExactMatch {
                    field: e.text("field")?.unwrap_or_else(|| "answer".into()),
                    pattern: match e.regex("pattern", false, Some(1))? {
                        Some(r) => r,
                        None => default_exact.clone(),
                    },
                },
                "numeric_match" => RewardKind::NumericMatch {
                    field: e.text("field")?.unwrap_or_else(|| "answer".into()),
                    pattern: match e.regex("pattern", false, Some(1))? {
                        Some(r) => r,
                        None => default_number.clone(),
                    },
                    tolerance: e.num("tolerance")?.expect("defaulted"),
                },
                "regex" => {
                    let full = e.flag("full")?;
                    RewardKind::Regex { pattern: e.regex("pattern", full, None)?.expect("required"), full }
                }
                "length_penalty" => {
                    let target = e.int("target")?.expect("required");
                    let max = e.int("max")?.expect("required");
                    if max <= target {
                        return Err(spec_err(
                            e.at("max"),
                            format!("expected an integer > target ({target}), got {max}"),
                        ));
                    }
                    let unit = match e.text("unit")?.as_deref() {
                        Some("chars") => LengthUnit::Chars,
                        _ => LengthUnit::Tokens,
                    };
                    RewardKind::LengthPenalty { target, max, unit }
                }
                "language" => {
                    RewardKind::Language { field: e.text("field")?.unwrap_or_else(|| "lang".into()) }
                }
                "command" => {
                    let argv = match e.get("command") {
                        Some(Value::Array(parts)) if !parts.is_empty() => parts
                            .iter()
                            .enumerate()
                            .map(|(j, p)| match p {
                                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                                Value::Number(n) => Ok(n.to_string()),
                                other => Err(spec_err(
                                    format!("{}[{j}]", e.at("command")),
                                    format!("expected a non-empty string, got {}", describe(other)),
                                )),
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                        Some(other) => return Err(e.wrong("command", other)),
                        None => return Err(e.missing_or::<()>("command", None).expect_err("required")),
                    };
                    let timeout = Duration::from_secs_f64(e.num("timeout_s")?.expect("defaulted"));
                    let cwd = e.text("cwd")?.map(|c| match base_dir {
                        Some(b) if Path::new(&c).is_relative() => b.join(c),
                        _ => PathBuf::from(c),
                    });
                    if let Some(dir) = &cwd {
                        if !dir.is_dir() {
                            return Err(spec_err(e.at("cwd"), format!("{} is not a folder", dir.display())));
                        }
                    }
                    RewardKind::Command { argv, timeout, cwd }
                }
                _ => unreachable!("every declared kind is handled"),
            };
            let name = match e.text("name")? {
                Some(n) => {
                    if specs.iter().any(|s| s.name == n) {
                        return Err(spec_err(
                            e.at("name"),
                            format!("the name {n:?} is used by an earlier reward; names must be unique"),
                        ));
                    }
                    n
                }
                None => {
                    let base = kind.word();
                    let mut n = base.to_string();
                    let mut k = 2;
                    while specs.iter().any(|s| s.name == n) {
                        n = format!("{base}_{k}");
                        k += 1;
                    }
                    n
                }
            };
            specs.push(RewardSpec { name, weight, kind });
        }
        RewardSet::new(specs)
    }

    /// Reads the top-level `rewards:` list of a YAML document (a recipe config), read from
    /// `origin` (for messages; relative `cwd`s resolve against its folder). Errors are
    /// [`ConfigError`]s naming `origin:line:col` and the key path, as the rest of the config's.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<RewardSet, ConfigError> {
        let file = origin.display().to_string();
        let loc = |pos: &Pos| match pos {
            Pos::File { line, col } => Location::File { file: file.clone(), line_col: Some((*line, *col)) },
            Pos::Override(o) => Location::Override(o.to_string()),
        };
        let root = match yaml::parse(text, None) {
            Ok(Some(root)) => root,
            Ok(None) => Node::map(Pos::File { line: 1, col: 1 }),
            Err(e) => return Err(ConfigError::new(ConfigErrorKind::Syntax, loc(&e.pos), None, e.msg)),
        };
        let Some(entry) = root.entries().and_then(|es| es.iter().find(|e| e.key == "rewards")) else {
            return Err(ConfigError::new(
                ConfigErrorKind::MissingKey,
                Location::File { file: file.clone(), line_col: None },
                Some("rewards".into()),
                "missing required key (a list of rewards, each with kind and weight)",
            ));
        };
        let mut positions = Vec::new();
        let value = yaml::to_json(&entry.value, "rewards", &mut positions);
        positions.push(("rewards".to_string(), entry.key_pos.clone()));
        RewardSet::from_json(&value, origin.parent()).map_err(|e| {
            let (path, message) = match e {
                RewardError::Spec { path, message } => (path, message),
                other => ("rewards".to_string(), other.to_string()),
            };
            // The deepest node the path names (a missing key: its mapping; an unknown key: the
            // key itself).
            let key_pos = positions.iter().find(|(k, _)| *k == format!("{path}#key")).map(|(_, p)| p.clone());
            let mut probe = path.as_str();
            let pos = if let (Some(p), true) = (key_pos, message.starts_with("unknown key")) {
                p
            } else {
                loop {
                    if let Some((_, p)) = positions.iter().find(|(k, _)| k == probe) {
                        break p.clone();
                    }
                    match probe.rfind(['.', '[']) {
                        Some(cut) => probe = &probe[..cut],
                        None => break entry.key_pos.clone(),
                    }
                }
            };
            let kind = if message.starts_with("missing required key") {
                ConfigErrorKind::MissingKey
            } else if message.starts_with("unknown key") {
                ConfigErrorKind::UnknownKey
            } else if message.contains(", got ") && !message.contains("an integer >") {
                ConfigErrorKind::WrongType
            } else {
                ConfigErrorKind::Inconsistent
            };
            ConfigError::new(kind, loc(&pos), Some(path), message)
        })
    }

    /// The rewards of a checked config whose recipe declares [`REWARDS_KEY`] (the list kept as
    /// JSON text by the checker; a config saved and reloaded holds the same text as a string).
    /// Relative `cwd`s resolve against the current directory.
    pub fn from_config(cfg: &RecipeConfig) -> Result<RewardSet, RewardError> {
        let text = match cfg.extra(REWARDS_KEY.name) {
            Some(KeyValue::Text(t)) => t,
            Some(other) => {
                return Err(spec_err(
                    "rewards".into(),
                    format!(
                        "expected a list of rewards, got {}",
                        serde_json::to_string(other).unwrap_or_default()
                    ),
                ))
            }
            None => return Err(spec_err("rewards".into(), "missing required key (a list of rewards)")),
        };
        let list: Value = serde_json::from_str(text).map_err(|_| {
            spec_err("rewards".into(), format!("expected a list of rewards, got the text {text:?}"))
        })?;
        RewardSet::from_json(&list, None)
    }

    /// [`RewardSet::from_yaml`] on a config file.
    pub fn from_config_file(path: &Path) -> Result<RewardSet, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, "cannot read the config", e))?;
        RewardSet::from_yaml(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigDoc, DatasetKind, DatasetKindDecl};
    use crate::recipes::RecipeSpec;

    fn no_run(
        _: &RecipeConfig,
        _: &mut dyn crate::recipes::metrics::Reporter,
    ) -> crate::Result<crate::recipes::finetune::Summary> {
        Err(crate::Error::Input("a test recipe does not run".into()))
    }

    static TEST_GRPO: RecipeSpec = RecipeSpec {
        name: "test_grpo",
        description: "test only",
        sections: &[],
        keys: &[REWARDS_KEY],
        dataset_kinds: &[DatasetKindDecl { kind: DatasetKind::Prompt, roles: &["prompt"] }],
        configs: &[],
        check: Some(check_rewards),
        run: no_run,
    };

    const CONFIG: &str = "\
recipe: test_grpo
output_dir: out
model:
  path: data.jsonl
tokenizer:
  max_seq_len: 64
dataset:
  kind: prompt
  source: data.jsonl
batch_size: 1
optimizer:
  lr: 1e-4
rewards:
  - kind: numeric_match
    weight: 0.7
  - {kind: format, weight: 0.3, pattern: 'Answer: \\d+$'}
";

    fn load(text: &str) -> Result<RecipeConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("afinar-rewards-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data.jsonl"), "{\"prompt\": \"x\"}\n").unwrap();
        ConfigDoc::parse(text, &dir.join("grpo.yaml"))?.to_config_in(&[&TEST_GRPO], None)
    }

    #[test]
    fn a_recipe_config_carries_its_rewards_list() {
        let cfg = load(CONFIG).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.dataset.kind, DatasetKind::Prompt);
        let set = RewardSet::from_config(&cfg).unwrap();
        assert_eq!(set.names(), ["numeric_match", "regex"]);
        assert_eq!(set.rewards()[1].weight, 0.3);
        // Written out and read back (the list as its JSON text): the same config and rewards.
        let back = load(&cfg.to_yaml()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, cfg);
        assert_eq!(RewardSet::from_config(&back).unwrap().names(), ["numeric_match", "regex"]);
        // A bad list fails at load time, at the rewards line, naming the entry.
        let e = load(&CONFIG.replace("weight: 0.7", "weight: -0.7")).unwrap_err().to_string();
        assert!(
            e.contains("grpo.yaml:14:3: rewards: rewards[0].weight: expected a number ≥ 0, got -0.7"),
            "{e}"
        );
        let e = load(&CONFIG.replace("rewards:\n", "rewardz:\n")).unwrap_err().to_string();
        assert!(e.contains("did you mean `rewards`?"), "{e}");
    }
}
