//! Safetensors checkpoints: one file, or a Hugging Face folder (single `model.safetensors`, or
//! shards named by `model.safetensors.index.json`), memory-mapped.
//!
//! A safetensors file is an 8-byte little-endian header length `n`, `n` bytes of JSON
//! (`{"__metadata__": {..}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ..}`),
//! then the tensor data; offsets are relative to the end of the header. The header is parsed
//! here (not by the `safetensors` crate) so that every error can name the tensor, and so a
//! dtype this crate cannot convert only fails when that tensor is asked for.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use serde_json::Value;

use crate::{CheckpointError, DType, Result, TensorView};

/// The file name of an unsharded Hugging Face checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The file name of a sharded Hugging Face checkpoint's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Largest JSON header accepted (as the reference implementation: 100 MB).
const MAX_HEADER: usize = 100_000_000;
const FILE_FORMAT: &str = "safetensors file";
const INDEX_FORMAT: &str = "safetensors index";
const SUPPORTED: &str = "F32, F16 and BF16";

/// One tensor's entry in a file header.
#[derive(Debug, Clone)]
struct Entry {
    /// The dtype as the header spells it.
    dtype_name: String,
    dtype: Option<DType>,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

#[derive(Debug)]
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    entries: BTreeMap<String, Entry>,
    metadata: BTreeMap<String, String>,
}

/// A safetensors checkpoint of one or more memory-mapped files.
#[derive(Debug)]
pub struct SafetensorsCheckpoint {
    /// The file or index the tensor names come from (used in "not found" errors).
    source: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name -> index into `shards`.
    names: BTreeMap<String, usize>,
}

impl SafetensorsCheckpoint {
    /// Opens `path`: a `*.safetensors` file, a `*.index.json` index, or a folder holding
    /// `model.safetensors.index.json` (sharded; preferred when both exist) or `model.safetensors`.
    ///
    /// Every file is memory-mapped and its header validated (offsets inside the file, sizes
    /// matching shape and dtype); for a sharded checkpoint every tensor of the index's
    /// `weight_map` must be present in the shard it names.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            let index = path.join(INDEX_FILE);
            let single = path.join(SINGLE_FILE);
            if index.is_file() {
                Self::open_index(&index)
            } else if single.is_file() {
                Self::open_file(&single)
            } else {
                Err(CheckpointError::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("folder has neither {INDEX_FILE} nor {SINGLE_FILE}"),
                    ),
                })
            }
        } else if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".index.json")) {
            Self::open_index(path)
        } else {
            Self::open_file(path)
        }
    }

    fn open_file(path: &Path) -> Result<Self> {
        let shard = Shard::open(path)?;
        let names = shard.entries.keys().map(|k| (k.clone(), 0)).collect();
        Ok(SafetensorsCheckpoint { source: path.to_path_buf(), shards: vec![shard], names })
    }

    fn open_index(index: &Path) -> Result<Self> {
        let bad = |message: String| CheckpointError::Format {
            path: index.to_path_buf(),
            format: INDEX_FORMAT,
            message,
        };
        let text = std::fs::read(index)
            .map_err(|source| CheckpointError::Io { path: index.to_path_buf(), source })?;
        let json: Value = serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
        let folder = index.parent().unwrap_or_else(|| Path::new(""));

        // Shard file name -> (shard index, first tensor naming it).
        let mut shard_ids: BTreeMap<&str, usize> = BTreeMap::new();
        let mut shards = Vec::new();
        let mut names = BTreeMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                bad(format!("weight_map entry for tensor '{tensor}' is {file}, expected a file name"))
            })?;
            let id = match shard_ids.get(file) {
                Some(&id) => id,
                None => {
                    let rel = Path::new(file);
                    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
                    if file.is_empty() || !plain {
                        return Err(bad(format!(
                            "weight_map names shard '{file}' for tensor '{tensor}': expected a \
                             file name relative to the index's folder"
                        )));
                    }
                    let shard_path = folder.join(rel);
                    if !shard_path.is_file() {
                        return Err(bad(format!(
                            "weight_map names shard '{}' for tensor '{tensor}', which does not \
                             exist",
                            shard_path.display()
                        )));
                    }
                    shards.push(Shard::open(&shard_path)?);
                    shard_ids.insert(file, shards.len() - 1);
                    shards.len() - 1
                }
            };
            let shard = &shards[id];
            if !shard.entries.contains_key(tensor) {
                return Err(CheckpointError::Tensor {
                    path: shard.path.clone(),
                    tensor: tensor.clone(),
                    message: format!(
                        "{} lists this tensor in this shard, but the shard does not contain it",
                        index.display()
                    ),
                });
            }
            names.insert(tensor.clone(), id);
        }
        Ok(SafetensorsCheckpoint { source: index.to_path_buf(), shards, names })
    }

    /// The file or index the checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.source
    }

    /// The files holding the tensors (one per shard).
    pub fn shard_paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// The `__metadata__` string map of the first file (e.g. `{"format": "pt"}`).
    pub fn metadata(&self) -> Option<&BTreeMap<String, String>> {
        self.shards.first().map(|s| &s.metadata)
    }

    /// All tensor names, sorted (for a sharded checkpoint: the index's `weight_map` keys).
    pub fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    /// Whether the checkpoint has a tensor of that name.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// The dtype name (as the file spells it) and shape of a tensor, without reading it.
    pub fn tensor_info(&self, name: &str) -> Option<(&str, &[usize])> {
        let entry = self.entry(name)?.1;
        Some((entry.dtype_name.as_str(), entry.shape.as_slice()))
    }

    fn entry(&self, name: &str) -> Option<(&Shard, &Entry)> {
        let shard = self.shards.get(*self.names.get(name)?)?;
        Some((shard, shard.entries.get(name)?))
    }

    /// A view of one tensor (F32, F16 or BF16; other dtypes give an error naming file and
    /// tensor).
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let raw = self.raw_tensor(name)?;
        let entry = self.entry(name).map(|(_, e)| e);
        let dtype = entry.and_then(|e| e.dtype).ok_or_else(|| CheckpointError::UnsupportedDType {
            path: raw.path.to_path_buf(),
            tensor: name.to_string(),
            dtype: raw.dtype.to_string(),
            supported: SUPPORTED,
        })?;
        Ok(TensorView { name: raw.name, dtype, shape: raw.shape.to_vec(), data: raw.data })
    }

    /// One tensor's bytes as stored, in any dtype (also those [`SafetensorsCheckpoint::tensor`]
    /// does not convert, such as the `U8` tensors of a bitsandbytes checkpoint). The size was
    /// checked against shape and dtype when the file was opened.
    pub fn raw_tensor(&self, name: &str) -> Result<RawTensor<'_>> {
        let (shard, entry) = self.entry(name).ok_or_else(|| CheckpointError::TensorNotFound {
            path: self.source.clone(),
            tensor: name.to_string(),
        })?;
        let (key, _) = shard.entries.get_key_value(name).ok_or_else(|| CheckpointError::TensorNotFound {
            path: shard.path.clone(),
            tensor: name.to_string(),
        })?;
        let data = shard.mmap.get(entry.start..entry.end).ok_or_else(|| CheckpointError::Tensor {
            path: shard.path.clone(),
            tensor: name.to_string(),
            message: format!("data {}..{} is outside the file", entry.start, entry.end),
        })?;
        Ok(RawTensor { name: key, dtype: &entry.dtype_name, shape: &entry.shape, data, path: &shard.path })
    }
}

/// A tensor as stored in a safetensors file ([`SafetensorsCheckpoint::raw_tensor`]).
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    /// The tensor's name.
    pub name: &'a str,
    /// The dtype as the header spells it (`"U8"`, `"F32"`, ...).
    pub dtype: &'a str,
    /// Dimensions, outermost first.
    pub shape: &'a [usize],
    /// The stored bytes (little-endian).
    pub data: &'a [u8],
    /// The file holding it (for errors).
    pub path: &'a Path,
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
        let mmap = crate::map_file(path)?;
        let (entries, metadata) = parse_header(&mmap).map_err(|e| match e {
            HeaderError::File(message) => {
                CheckpointError::Format { path: path.to_path_buf(), format: FILE_FORMAT, message }
            }
            HeaderError::Tensor(tensor, message) => {
                CheckpointError::Tensor { path: path.to_path_buf(), tensor, message }
            }
        })?;
        Ok(Shard { path: path.to_path_buf(), mmap, entries, metadata })
    }
}

enum HeaderError {
    File(String),
    Tensor(String, String),
}

/// Bits per element of the safetensors dtypes (for size checks of tensors we cannot convert).
fn dtype_bits(name: &str) -> Option<usize> {
    Some(match name {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ" | "F8_E5M2FNUZ" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

type Header = (BTreeMap<String, Entry>, BTreeMap<String, String>);

fn parse_header(buf: &[u8]) -> Result<Header, HeaderError> {
    let file = |m: String| HeaderError::File(m);
    let len = buf.len();
    let Some(prefix) = buf.first_chunk::<8>() else {
        return Err(file(format!("file is {len} bytes, shorter than the 8-byte header length")));
    };
    let n = u64::from_le_bytes(*prefix);
    let header_end = usize::try_from(n)
        .ok()
        .filter(|&n| n <= MAX_HEADER)
        .and_then(|n| n.checked_add(8))
        .filter(|&end| end <= len)
        .ok_or_else(|| {
            file(format!(
                "header length {n} does not fit in the file ({len} bytes; at most {MAX_HEADER} \
                 accepted): truncated or not a safetensors file"
            ))
        })?;
    let json: serde_json::Map<String, Value> = serde_json::from_slice(&buf[8..header_end])
        .map_err(|e| file(format!("header is not a valid JSON object: {e}")))?;
    let data_len = len - header_end;

    let mut entries = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, v) in json {
        if name == "__metadata__" {
            let obj = v.as_object().ok_or_else(|| file("__metadata__ is not an object".into()))?;
            for (k, v) in obj {
                let s =
                    v.as_str().ok_or_else(|| file(format!("__metadata__ value of '{k}' is not a string")))?;
                metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        let entry =
            parse_entry(&v, header_end, data_len).map_err(|m| HeaderError::Tensor(name.clone(), m))?;
        entries.insert(name, entry);
    }
    Ok((entries, metadata))
}

fn parse_entry(v: &Value, header_end: usize, data_len: usize) -> Result<Entry, String> {
    let dtype_name =
        v.get("dtype").and_then(Value::as_str).ok_or("header entry has no \"dtype\" string")?.to_string();
    let shape = v
        .get("shape")
        .and_then(Value::as_array)
        .ok_or("header entry has no \"shape\" array")?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or("shape must hold non-negative integers")?;
    let offsets = v
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .ok_or("header entry has no \"data_offsets\" pair")?;
    let off = |i: usize| offsets.get(i).and_then(Value::as_u64).and_then(|o| usize::try_from(o).ok());
    let (Some(begin), Some(end)) = (off(0), off(1)) else {
        return Err("data_offsets must be two non-negative integers".into());
    };
    if begin > end || end > data_len {
        return Err(format!(
            "data_offsets [{begin}, {end}] lie outside the {data_len} bytes of tensor data \
             (truncated file?)"
        ));
    }
    let numel = crate::checked_product(&shape)
        .ok_or_else(|| format!("shape {shape:?} overflows the element count"))?;
    if let Some(bits) = dtype_bits(&dtype_name) {
        let expected = numel.checked_mul(bits).map(|b| b.div_ceil(8));
        if expected != Some(end - begin) {
            return Err(format!(
                "shape {shape:?} of {dtype_name} needs {} bytes, data_offsets [{begin}, {end}] \
                 give {}",
                expected.map_or("too many".to_string(), |e| e.to_string()),
                end - begin
            ));
        }
    }
    let dtype = match dtype_name.as_str() {
        "F32" => Some(DType::F32),
        "F16" => Some(DType::F16),
        "BF16" => Some(DType::BF16),
        _ => None,
    };
    Ok(Entry { dtype_name, dtype, shape, start: header_end + begin, end: header_end + end })
}
