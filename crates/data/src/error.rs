//! The crate's error type, and where in a file a row sits.

use std::fmt;
use std::path::PathBuf;

use afinar_tokenizer::TokenizerError;

/// Where a row sits in its file, as a user would look it up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowLoc {
    /// A JSONL line (1-based, counting blank lines).
    Line(usize),
    /// The n-th data row (1-based): an element of a JSON array, a Parquet row.
    Row(usize),
    /// The n-th CSV data row (1-based, the header not counted) and the file line it starts on.
    Csv {
        /// 1-based data row.
        row: usize,
        /// 1-based line of the file where the record starts.
        line: u64,
    },
}

impl fmt::Display for RowLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowLoc::Line(n) => write!(f, "line {n}"),
            RowLoc::Row(n) => write!(f, "row {n}"),
            RowLoc::Csv { row, line } => write!(f, "row {row} (line {line})"),
        }
    }
}

/// Everything that can go wrong while reading, tokenizing or batching a dataset.
///
/// Row-level errors name the file, the row (see [`RowLoc`]) and the column, so a user can find and
/// fix the offending record without reading the source.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No format was given and the extension does not name one.
    #[error(
        "{}: cannot tell the file format from its extension {ext:?}: name the file .json, .jsonl, \
         .csv or .parquet, or set the format explicitly",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Its extension (empty when it has none).
        ext: String,
    },
    /// The file (or one of its rows) is not valid JSON / CSV / Parquet, or a row is not a record.
    #[error("{}: {}{message}", path.display(), at.map(|a| format!("{a}: ")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The row, when the problem is local to one.
        at: Option<RowLoc>,
        /// What is wrong.
        message: String,
    },
    /// A row lacks a column the dataset kind needs.
    #[error("{}: {at}: missing column \"{column}\" (the row has {available})", path.display())]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The row.
        at: RowLoc,
        /// The column looked for (after `column_map`).
        column: String,
        /// The columns the row does have, for spotting a typo or a missing `column_map` entry.
        available: String,
    },
    /// A column holds a value of the wrong type.
    #[error("{}: {at}: column \"{column}\": expected {expected}, found {found}", path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The row.
        at: RowLoc,
        /// The column (for chat messages: `messages[2].role` and the like).
        column: String,
        /// The type wanted.
        expected: String,
        /// The type found.
        found: String,
    },
    /// A column has the right type but an unusable value (an unknown chat role, an empty
    /// conversation, ...).
    #[error("{}: {at}: column \"{column}\": {message}", path.display())]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// The row.
        at: RowLoc,
        /// The column.
        column: String,
        /// What is wrong with the value.
        message: String,
    },
    /// A row is longer than `max_seq_len` and the spec says to refuse such rows
    /// ([`crate::LongRows::Error`]).
    #[error(
        "{}: {at}: {tokens} tokens, longer than max_seq_len {max_seq_len} (long rows are set to be an \
         error): shorten the row, raise max_seq_len, or truncate or drop long rows",
        path.display()
    )]
    TooLong {
        /// The file.
        path: PathBuf,
        /// The row.
        at: RowLoc,
        /// Its length in tokens.
        tokens: usize,
        /// The limit.
        max_seq_len: usize,
    },
    /// The file has no data rows, or no row has a token to train on.
    #[error("{}: {message}", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// What is empty.
        message: String,
    },
    /// Rendering or tokenizing a row failed (a chat template that raises, for instance).
    #[error("{}: {at}: {source}", path.display())]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// The row.
        at: RowLoc,
        /// The tokenizer's error.
        #[source]
        source: Box<TokenizerError>,
    },
    /// The file uses a feature this crate does not read (a Parquet codec, a format left out at
    /// build time).
    #[error("{}: {message}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is unsupported, and what to do instead.
        message: String,
    },
    /// The dataset settings are inconsistent (an unknown `column_map` key, `max_seq_len` 0, a
    /// batch size of 0, ...).
    #[error("invalid dataset settings: {0}")]
    Config(String),
}

/// The JSON type name of a value, for error messages ("a string", "null", ...).
pub(crate) fn json_type(v: &serde_json::Value) -> &'static str {
    use serde_json::Value as V;
    match v {
        V::Null => "null",
        V::Bool(_) => "a boolean",
        V::Number(_) => "a number",
        V::String(_) => "a string",
        V::Array(_) => "a list",
        V::Object(_) => "an object",
    }
}
