//! Reading JSONL task files with errors that name the file, the line and what was expected.

use std::path::Path;

use serde_json::{Map, Value};

use crate::{Error, Result};

/// One row of a JSONL file: its 1-based line number and its object.
pub(crate) struct Row<'a> {
    pub file: &'a Path,
    pub line: usize,
    pub obj: Map<String, Value>,
}

/// Reads a whole text file, with a clear error when it is missing.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    if !path.exists() {
        return Err(Error::Input(format!("{}: no such file", path.display())));
    }
    std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// Reads every non-empty line of a JSONL file as a JSON object.
pub(crate) fn read_rows(path: &Path) -> Result<Vec<Row<'_>>> {
    let text = read_text(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| {
            Error::Input(format!(
                "{}:{}: not valid JSON ({e}); expected one JSON object per line",
                path.display(),
                i + 1
            ))
        })?;
        let Value::Object(obj) = value else {
            return Err(Error::Input(format!(
                "{}:{}: expected a JSON object, got {}",
                path.display(),
                i + 1,
                kind(&value)
            )));
        };
        rows.push(Row { file: path, line: i + 1, obj });
    }
    if rows.is_empty() {
        return Err(Error::Input(format!("{}: no rows (expected one JSON object per line)", path.display())));
    }
    Ok(rows)
}

/// How a JSON value reads in an error message.
pub(crate) fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let short: String = s.chars().take(40).collect();
            format!("the string {short:?}")
        }
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

impl Row<'_> {
    /// An error about `key` of this row.
    pub fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::Input(format!("{}:{}: `{key}`: {msg}", self.file.display(), self.line))
    }

    /// The value at `key`, which must be present.
    pub fn get(&self, key: &str) -> Result<&Value> {
        self.obj.get(key).ok_or_else(|| {
            let mut keys: Vec<&str> = self.obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            self.err(
                key,
                format!(
                    "missing (the row has {})",
                    if keys.is_empty() { "no keys".into() } else { keys.join(", ") }
                ),
            )
        })
    }

    /// A string field.
    pub fn str(&self, key: &str) -> Result<&str> {
        let v = self.get(key)?;
        v.as_str().ok_or_else(|| self.err(key, format!("expected a string, got {}", kind(v))))
    }

    /// An optional string field.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.str(key).map(Some),
        }
    }

    /// An optional boolean field.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, format!("expected true or false, got {}", kind(v)))),
        }
    }

    /// A list of strings.
    pub fn str_list(&self, key: &str) -> Result<Vec<String>> {
        str_list(self, key, self.get(key)?)
    }

    /// A non-negative integer, also accepted as a string of digits (HellaSwag's `label` is "3").
    pub fn index(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let parsed = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        parsed
            .map(|n| n as usize)
            .ok_or_else(|| self.err(key, format!("expected a non-negative integer index, got {}", kind(v))))
    }

    /// An id for reports: `id` (or `ind`) when present, else `LINE`.
    pub fn id(&self) -> String {
        match self.obj.get("id").or_else(|| self.obj.get("ind")) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => format!("line {}", self.line),
        }
    }
}

/// `v` as a list of strings, for messages about `key` of `row`.
pub(crate) fn str_list(row: &Row<'_>, key: &str, v: &Value) -> Result<Vec<String>> {
    let Value::Array(items) = v else {
        return Err(row.err(key, format!("expected a list of strings, got {}", kind(v))));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| row.err(&format!("{key}[{i}]"), format!("expected a string, got {}", kind(x))))
        })
        .collect()
}
