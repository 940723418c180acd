//! Reading a file into rows: JSON, JSONL, CSV and Parquet all become JSON objects, so one piece
//! of code checks columns and types for every format.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::json_type;
use crate::{DataError, FileFormat, RowLoc};

/// One record of a file, and where it came from.
#[derive(Clone, Debug)]
pub(crate) struct RawRow {
    pub at: RowLoc,
    pub fields: Map<String, Value>,
}

/// Reads up to `max_rows` rows of `path`.
pub(crate) fn read_rows(
    path: &Path,
    format: FileFormat,
    max_rows: Option<usize>,
) -> Result<Vec<RawRow>, DataError> {
    let limit = max_rows.unwrap_or(usize::MAX);
    match format {
        FileFormat::Json => read_json(path, &read(path)?, limit),
        FileFormat::Jsonl => read_jsonl(path, &read(path)?, limit),
        FileFormat::Csv => read_csv(path, &read(path)?, limit),
        FileFormat::Parquet => read_parquet(path, limit),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

fn object(path: &Path, at: RowLoc, v: Value) -> Result<RawRow, DataError> {
    match v {
        Value::Object(fields) => Ok(RawRow { at, fields }),
        other => Err(DataError::Parse {
            path: path.to_path_buf(),
            at: Some(at),
            message: format!("expected a JSON object, found {}", json_type(&other)),
        }),
    }
}

fn read_json(path: &Path, bytes: &[u8], limit: usize) -> Result<Vec<RawRow>, DataError> {
    let v: Value = serde_json::from_slice(strip_bom(bytes)).map_err(|e| DataError::Parse {
        path: path.to_path_buf(),
        at: None,
        message: format!("invalid JSON: {e}"),
    })?;
    let Value::Array(items) = v else {
        return Err(DataError::Parse {
            path: path.to_path_buf(),
            at: None,
            message: format!(
                "expected a JSON array of objects, found {} (for one object per line, name the \
                 file .jsonl)",
                json_type(&v)
            ),
        });
    };
    items
        .into_iter()
        .take(limit)
        .enumerate()
        .map(|(i, item)| object(path, RowLoc::Row(i + 1), item))
        .collect()
}

fn read_jsonl(path: &Path, bytes: &[u8], limit: usize) -> Result<Vec<RawRow>, DataError> {
    let mut rows = Vec::new();
    for (i, line) in strip_bom(bytes).split(|&b| b == b'\n').enumerate() {
        if rows.len() == limit {
            break;
        }
        let at = RowLoc::Line(i + 1);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: Value = serde_json::from_slice(line).map_err(|e| DataError::Parse {
            path: path.to_path_buf(),
            at: Some(at),
            message: format!("invalid JSON: {e}"),
        })?;
        rows.push(object(path, at, v)?);
    }
    Ok(rows)
}

fn read_csv(path: &Path, bytes: &[u8], limit: usize) -> Result<Vec<RawRow>, DataError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(strip_bom(bytes));
    let csv_err = |at: Option<RowLoc>, e: csv::Error| DataError::Parse {
        path: path.to_path_buf(),
        at,
        message: format!("invalid CSV: {e}"),
    };
    let headers: Vec<String> =
        reader.headers().map_err(|e| csv_err(None, e))?.iter().map(str::to_string).collect();
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        if rows.len() == limit {
            break;
        }
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            csv_err(Some(RowLoc::Csv { row: i + 1, line }), e)
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let fields = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
            .collect();
        rows.push(RawRow { at: RowLoc::Csv { row: i + 1, line }, fields });
    }
    Ok(rows)
}

#[cfg(feature = "parquet")]
fn read_parquet(path: &Path, limit: usize) -> Result<Vec<RawRow>, DataError> {
    crate::parquet_rows::read(path, limit)
}

#[cfg(not(feature = "parquet"))]
fn read_parquet(path: &Path, _limit: usize) -> Result<Vec<RawRow>, DataError> {
    Err(DataError::Unsupported {
        path: path.to_path_buf(),
        message: "this build of afinar has no Parquet support (the `parquet` feature of \
                  afinar-data is off); convert the file to JSONL"
            .into(),
    })
}
