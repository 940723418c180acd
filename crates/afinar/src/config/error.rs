//! [`ConfigError`]: what is wrong with a recipe config, and exactly where.

use std::fmt;
use std::path::PathBuf;

/// The class of a [`ConfigError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The config file could not be read, or the destination of `cp` written.
    Io,
    /// The name is neither a built-in config nor an existing file.
    UnknownConfig,
    /// The text is not valid YAML (or has a duplicate key).
    Syntax,
    /// A key the schema does not have.
    UnknownKey,
    /// A value of the wrong type (a word where a number belongs, a list where a section belongs).
    WrongType,
    /// A required key is absent.
    MissingKey,
    /// A value of the right type outside its allowed range.
    OutOfRange,
    /// Keys that contradict each other (a `lora` section in a full fine-tune, two model sources).
    Inconsistent,
    /// A command-line override that cannot be applied (no `=`, a path through a value, bad YAML).
    BadOverride,
    /// A `${...}` reference that cannot be resolved.
    Interpolation,
    /// A `model.path`, `tokenizer.path` or `dataset.source` that does not exist.
    MissingFile,
    /// The config is for another recipe than the one asked for.
    RecipeMismatch,
}

/// Where an error is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A config file (or a built-in config's name), with a 1-based line and column when known.
    File {
        /// The file as the user named it, or `built-in:NAME.yaml`.
        file: String,
        /// 1-based line and column.
        line_col: Option<(usize, usize)>,
    },
    /// A command-line override, as typed.
    Override(String),
    /// A path on disk (a file to write, for `cp`).
    Path(PathBuf),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { file, line_col: Some((l, c)) } => write!(f, "{file}:{l}:{c}"),
            Location::File { file, line_col: None } => write!(f, "{file}"),
            Location::Override(o) => write!(f, "override `{o}`"),
            Location::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A recipe config that cannot be used, with the file, line, column and key path at fault, e.g.
/// `configs/x.yaml:14:3: optimizer.lr: expected a number > 0, got "fast"`.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {}{message}", key_prefix(.key))]
pub struct ConfigError {
    /// The class of error.
    pub kind: ConfigErrorKind,
    /// Where it is.
    pub location: Location,
    /// The dotted key path at fault (`optimizer.lr`, `lora.target_modules[1]`), when there is one.
    pub key: Option<String>,
    /// What was expected and what was found.
    pub message: String,
    /// The operating system's error, for [`ConfigErrorKind::Io`].
    #[source]
    pub source: Option<std::io::Error>,
}

fn key_prefix(key: &Option<String>) -> String {
    match key {
        Some(k) => format!("{k}: "),
        None => String::new(),
    }
}

impl ConfigError {
    /// An error without an operating-system cause.
    pub fn new(
        kind: ConfigErrorKind,
        location: Location,
        key: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError { kind, location, key, message: message.into(), source: None }
    }

    /// A file that could not be read or written.
    pub fn io(path: impl Into<PathBuf>, message: impl Into<String>, source: std::io::Error) -> Self {
        ConfigError {
            kind: ConfigErrorKind::Io,
            location: Location::Path(path.into()),
            key: None,
            message: message.into(),
            source: Some(source),
        }
    }
}
