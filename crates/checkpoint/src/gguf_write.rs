//! Writing GGUF files (version 3), the layout [`crate::gguf`] reads.
//!
//! The header (metadata and tensor infos) is computed up front from each tensor's shape and
//! type, so the tensor data can be streamed: [`write_gguf`] asks the caller for one tensor's
//! bytes at a time, in file order, and writes them straight out. Only one tensor's bytes are in
//! memory at once. The file is written to a temporary sibling and renamed into place
//! ([`crate::write_atomic`]): a reader never sees half a file, and a failed export leaves an
//! existing file untouched.

use std::io::{self, Write};
use std::path::Path;

use crate::gguf::{MetaValue, DEFAULT_ALIGNMENT, MAX_DIMS};
use crate::{CheckpointError, DType, Result};

/// The GGUF version written.
pub const VERSION: u32 = 3;

/// One tensor to write: its name, row-major shape (outermost first, `[out, in]` for a linear
/// weight; written reversed, innermost first, as GGUF stores dimensions) and encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorSpec {
    /// The tensor's GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// How the data is encoded.
    pub dtype: DType,
}

impl GgufTensorSpec {
    /// Bytes of the tensor's data, or `None` when its innermost dimension is not a whole number
    /// of blocks (or the size overflows).
    pub fn n_bytes(&self) -> Option<usize> {
        let row = self.shape.last().copied().unwrap_or(1);
        if !row.is_multiple_of(self.dtype.block_size()) {
            return None;
        }
        self.dtype.bytes_for(crate::checked_product(&self.shape)?)
    }
}

fn value_type(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::Str(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends the encoding of `v` (without its type tag); errors on a mixed-type array.
fn put_value(out: &mut Vec<u8>, v: &MetaValue, key: &str) -> std::result::Result<(), String> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::Str(s) => put_str(out, s),
        MetaValue::Array(items) => {
            // An empty array needs some element type; GGUF readers accept any.
            let elem = items.first().map_or(value_type(&MetaValue::U8(0)), value_type);
            if let Some(bad) = items.iter().find(|i| value_type(i) != elem) {
                return Err(format!(
                    "metadata key '{key}': array mixes {} and {} elements (GGUF arrays hold one type)",
                    items[0].type_name(),
                    bad.type_name()
                ));
            }
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item, key)?;
            }
        }
    }
    Ok(())
}

/// The header bytes (magic to the end of the tensor infos, unpadded) and each tensor's offset
/// in the data section.
fn header(
    metadata: &[(String, MetaValue)],
    tensors: &[GgufTensorSpec],
    alignment: usize,
) -> std::result::Result<(Vec<u8>, Vec<usize>), String> {
    if !alignment.is_power_of_two() {
        return Err(format!("alignment {alignment} is not a power of two"));
    }
    let mut seen = std::collections::HashSet::new();
    for (k, _) in metadata {
        if !seen.insert(k.as_str()) {
            return Err(format!("metadata key '{k}' is given twice"));
        }
    }
    let mut kvs: Vec<(String, MetaValue)> = metadata.to_vec();
    match metadata.iter().find(|(k, _)| k == "general.alignment") {
        Some((_, v)) if v.as_u64() != Some(alignment as u64) => {
            return Err(format!("metadata general.alignment is {v} but the file is written with {alignment}"))
        }
        Some(_) => {}
        None if alignment != DEFAULT_ALIGNMENT => {
            kvs.push(("general.alignment".into(), MetaValue::U32(alignment as u32)));
        }
        None => {}
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in &kvs {
        put_str(&mut out, k);
        out.extend_from_slice(&value_type(v).to_le_bytes());
        put_value(&mut out, v, k)?;
    }
    let mut names = std::collections::HashSet::new();
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(format!("tensor '{}' is given twice", t.name));
        }
        if t.shape.is_empty() || t.shape.len() > MAX_DIMS {
            return Err(format!(
                "tensor '{}': shape {:?} has {} dimensions, GGUF takes 1 to {MAX_DIMS}",
                t.name,
                t.shape,
                t.shape.len()
            ));
        }
        let n_bytes = t.n_bytes().ok_or_else(|| {
            format!(
                "tensor '{}': shape {:?} has rows of {} values, not a whole number of {} blocks of {}",
                t.name,
                t.shape,
                t.shape.last().copied().unwrap_or(1),
                t.dtype,
                t.dtype.block_size()
            )
        })?;
        put_str(&mut out, &t.name);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&t.dtype.ggml_type().to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offsets.push(offset);
        offset = offset
            .checked_add(n_bytes)
            .and_then(|o| o.checked_next_multiple_of(alignment))
            .ok_or_else(|| "tensor data size overflows".to_string())?;
    }
    Ok((out, offsets))
}

fn pad(w: &mut dyn Write, written: usize, alignment: usize) -> io::Result<usize> {
    let padded = written.next_multiple_of(alignment);
    w.write_all(&vec![0u8; padded - written])?;
    Ok(padded)
}

/// Writes a GGUF file at `path`: `metadata` in the order given, then the tensor infos, then each
/// tensor's data, which `data(i, spec)` returns for `tensors[i]` when it is its turn (exactly
/// [`GgufTensorSpec::n_bytes`] bytes, encoded as `spec.dtype`, rows innermost-contiguous).
///
/// `alignment` (a power of two, usually [`DEFAULT_ALIGNMENT`]) is recorded as
/// `general.alignment` when it is not the default. The write is atomic; on any error (a bad
/// spec, a producer error, a wrong byte count, the file system) nothing is left at `path`
/// beyond what was there before.
pub fn write_gguf<F>(
    path: impl AsRef<Path>,
    metadata: &[(String, MetaValue)],
    tensors: &[GgufTensorSpec],
    alignment: usize,
    mut data: F,
) -> Result<()>
where
    F: FnMut(usize, &GgufTensorSpec) -> Result<Vec<u8>>,
{
    let path = path.as_ref();
    let (head, offsets) = header(metadata, tensors, alignment).map_err(|message| {
        CheckpointError::Format { path: path.to_path_buf(), format: "GGUF file", message }
    })?;
    // `write_atomic` takes an io::Result closure; keep the real error to return it as it is.
    let mut failure: Option<CheckpointError> = None;
    let result = crate::write_atomic(path, |w| {
        w.write_all(&head)?;
        let mut pos = pad(w, head.len(), alignment)?;
        let data_start = pos;
        for (i, t) in tensors.iter().enumerate() {
            debug_assert_eq!(pos - data_start, offsets[i]);
            let bytes = match data(i, t) {
                Ok(b) => b,
                Err(e) => {
                    failure = Some(e);
                    return Err(io::Error::other("tensor data producer failed"));
                }
            };
            let expected = t.n_bytes().unwrap_or(0);
            if bytes.len() != expected {
                failure = Some(CheckpointError::Tensor {
                    path: path.to_path_buf(),
                    tensor: t.name.clone(),
                    message: format!(
                        "{} bytes of data given, a {:?} {} tensor takes {expected}",
                        bytes.len(),
                        t.shape,
                        t.dtype
                    ),
                });
                return Err(io::Error::other("wrong tensor size"));
            }
            w.write_all(&bytes)?;
            pos = pad(w, pos + bytes.len(), alignment)?;
        }
        Ok(())
    });
    match (result, failure) {
        (_, Some(e)) => Err(e),
        (r, None) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_arrays_and_bad_shapes_are_rejected() {
        let meta =
            vec![("a".to_string(), MetaValue::Array(vec![MetaValue::U32(1), MetaValue::Str("x".into())]))];
        assert!(header(&meta, &[], 32).unwrap_err().contains("mixes UINT32 and STRING"));
        let t = GgufTensorSpec { name: "w".into(), shape: vec![2, 33], dtype: DType::Q8_0 };
        assert!(header(&[], &[t], 32).unwrap_err().contains("not a whole number of Q8_0 blocks"));
        assert!(header(&[], &[], 48).unwrap_err().contains("power of two"));
    }
}
