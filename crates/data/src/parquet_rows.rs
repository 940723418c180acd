//! Parquet rows as JSON objects, through the `parquet` crate's record reader (no arrow).
//!
//! Strings stay strings, numbers numbers, lists (3-level `LIST` groups included) become arrays
//! and structs objects, so a `list<struct<role, content>>` column reads like OpenAI `messages`.
//! Codecs: uncompressed and snappy; others are reported with a hint.

use std::fs::File;
use std::path::Path;

use parquet::errors::ParquetError;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Number, Value};

use crate::formats::RawRow;
use crate::{DataError, RowLoc};

pub(crate) fn read(path: &Path, limit: usize) -> Result<Vec<RawRow>, DataError> {
    let file = File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let reader = SerializedFileReader::new(file).map_err(|e| error(path, None, e))?;
    let iter = reader.get_row_iter(None).map_err(|e| error(path, None, e))?;
    let mut rows = Vec::new();
    for (i, row) in iter.take(limit).enumerate() {
        let at = RowLoc::Row(i + 1);
        let row = row.map_err(|e| error(path, Some(at), e))?;
        let fields: Map<String, Value> =
            row.into_columns().into_iter().map(|(name, field)| (name, to_json(field))).collect();
        rows.push(RawRow { at, fields });
    }
    Ok(rows)
}

fn error(path: &Path, at: Option<RowLoc>, e: ParquetError) -> DataError {
    let message = e.to_string();
    if let Some(codec) = message.split("Disabled feature at compile time: ").nth(1) {
        return DataError::Unsupported {
            path: path.to_path_buf(),
            message: format!(
                "the file is compressed with {codec}, which afinar does not read; it reads \
                 uncompressed and snappy Parquet (pyarrow's default): re-save it with \
                 compression='snappy', or convert it to JSONL"
            ),
        };
    }
    DataError::Parse { path: path.to_path_buf(), at, message: format!("invalid Parquet: {message}") }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn to_json(field: Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(b),
        Field::Byte(v) => v.into(),
        Field::Short(v) => v.into(),
        Field::Int(v) => v.into(),
        Field::Long(v) => v.into(),
        Field::UByte(v) => v.into(),
        Field::UShort(v) => v.into(),
        Field::UInt(v) => v.into(),
        Field::ULong(v) => v.into(),
        Field::Float16(v) => float(f64::from(v)),
        Field::Float(v) => float(f64::from(v)),
        Field::Double(v) => float(v),
        Field::Str(s) => Value::String(s),
        // Binary columns written without the STRING annotation: text if it is UTF-8.
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::Array(b.data().iter().map(|&x| x.into()).collect()),
        },
        Field::Group(row) => {
            Value::Object(row.into_columns().into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
        Field::ListInternal(list) => Value::Array(list.elements().iter().cloned().map(to_json).collect()),
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match to_json(k.clone()) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, to_json(v.clone()))
                })
                .collect(),
        ),
        // Dates, times and decimals: their text, which no dataset kind reads as a column anyway.
        other => Value::String(other.to_string()),
    }
}
