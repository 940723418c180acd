//! GGUF files (llama.cpp's format), versions 2 and 3, little-endian, memory-mapped.
//!
//! Layout: magic `GGUF`, `version: u32`, `tensor_count: u64`, `kv_count: u64`; then `kv_count`
//! metadata entries (`key: string`, `type: u32`, value); then `tensor_count` tensor infos (`name:
//! string`, `n_dims: u32`, `dims: [u64; n_dims]` innermost first, `ggml_type: u32`, `offset:
//! u64`); then padding to `general.alignment` (default 32), where the tensor data starts; each
//! tensor's `offset` is relative to that point and a multiple of the alignment. A string is a
//! `u64` byte length followed by UTF-8 bytes.
//!
//! Every length, count and offset read from the file is checked against the bytes actually
//! present, with checked arithmetic, before it is used: a corrupt file gives an error naming the
//! file (and the key or tensor), never a panic or a huge allocation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use crate::dtype::ggml_type_info;
use crate::{CheckpointError, DType, Result, TensorView};

/// The alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Most dimensions a GGUF tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of metadata arrays accepted (arrays of arrays of ...).
const MAX_ARRAY_DEPTH: usize = 8;
const MAGIC: &[u8; 4] = b"GGUF";
const FORMAT: &str = "GGUF file";
const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// GGUF type 0.
    U8(u8),
    /// GGUF type 1.
    I8(i8),
    /// GGUF type 2.
    U16(u16),
    /// GGUF type 3.
    I16(i16),
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 5.
    I32(i32),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 11.
    I64(i64),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 12.
    F64(f64),
    /// GGUF type 7 (one byte, 0 or 1).
    Bool(bool),
    /// GGUF type 8 (UTF-8).
    Str(String),
    /// GGUF type 9: elements of one type (possibly arrays themselves).
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The GGUF name of the value's type (`"UINT32"`, `"STRING"`, `"ARRAY"`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "UINT8",
            MetaValue::I8(_) => "INT8",
            MetaValue::U16(_) => "UINT16",
            MetaValue::I16(_) => "INT16",
            MetaValue::U32(_) => "UINT32",
            MetaValue::I32(_) => "INT32",
            MetaValue::U64(_) => "UINT64",
            MetaValue::I64(_) => "INT64",
            MetaValue::F32(_) => "FLOAT32",
            MetaValue::F64(_) => "FLOAT64",
            MetaValue::Bool(_) => "BOOL",
            MetaValue::Str(_) => "STRING",
            MetaValue::Array(_) => "ARRAY",
        }
    }

    /// The value as u64, for any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as i64, for any integer type holding a value that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as f64: floats, and integers (converted, rounding beyond 2^53).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            MetaValue::U64(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value of a BOOL.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value of a STRING.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of an ARRAY.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of an ARRAY of STRINGs (`None` if it is not one).
    pub fn as_str_array(&self) -> Option<Vec<&str>> {
        self.as_array()?.iter().map(MetaValue::as_str).collect()
    }
}

impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::U8(v) => write!(f, "{v}"),
            MetaValue::I8(v) => write!(f, "{v}"),
            MetaValue::U16(v) => write!(f, "{v}"),
            MetaValue::I16(v) => write!(f, "{v}"),
            MetaValue::U32(v) => write!(f, "{v}"),
            MetaValue::I32(v) => write!(f, "{v}"),
            MetaValue::U64(v) => write!(f, "{v}"),
            MetaValue::I64(v) => write!(f, "{v}"),
            MetaValue::F32(v) => write!(f, "{v}"),
            MetaValue::F64(v) => write!(f, "{v}"),
            MetaValue::Bool(v) => write!(f, "{v}"),
            MetaValue::Str(s) => write!(f, "{s:?}"),
            MetaValue::Array(v) => write!(f, "[{} elements]", v.len()),
        }
    }
}

/// What the file says about one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// The tensor's name.
    pub name: String,
    /// The GGML type id as stored.
    pub ggml_type: u32,
    /// The GGML type's name (`"Q4_1"`, `"IQ2_XXS"`, ...).
    pub type_name: &'static str,
    /// The dtype, if this crate can read it.
    pub dtype: Option<DType>,
    /// The dimensions as stored (GGML order: innermost, contiguous dimension first).
    pub dims: Vec<usize>,
    /// The dimensions in row-major order, outermost first (`dims` reversed).
    pub shape: Vec<usize>,
    /// Offset of the data from the start of the tensor data section.
    pub offset: usize,
    /// Offset of the data from the start of the file.
    pub file_offset: usize,
    /// Size of the data in bytes.
    pub n_bytes: usize,
}

/// A memory-mapped GGUF file: its metadata, parsed, and its tensors, as views into the map.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: BTreeMap<String, MetaValue>,
    metadata_order: Vec<String>,
    tensors: Vec<GgufTensorInfo>,
    by_name: HashMap<String, usize>,
}

impl GgufFile {
    /// Opens and memory-maps `path`, parses its header, metadata and tensor infos, and checks
    /// that every tensor's data lies inside the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mmap = crate::map_file(&path)?;
        let parsed = parse(&mmap).map_err(|e| e.with_path(&path))?;
        let by_name = parsed.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile {
            path,
            mmap,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            metadata_order: parsed.metadata_order,
            tensors: parsed.tensors,
            by_name,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of the tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Where the tensor data section starts, in bytes from the start of the file.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// Metadata keys in the order the file stores them.
    pub fn metadata_keys(&self) -> &[String] {
        &self.metadata_order
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// One metadata value, or an error naming the file and the missing key.
    pub fn require(&self, key: &str) -> Result<&MetaValue> {
        self.get(key).ok_or_else(|| CheckpointError::Format {
            path: self.path.clone(),
            format: FORMAT,
            message: format!("metadata key '{key}' is missing"),
        })
    }

    /// A metadata value that must be a non-negative integer, or an error naming file and key.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| self.bad_type(key, v, "a non-negative integer"))
    }

    /// A metadata value that must be a number, or an error naming file and key.
    pub fn require_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.bad_type(key, v, "a number"))
    }

    /// A metadata value that must be a string, or an error naming file and key.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.bad_type(key, v, "a string"))
    }

    fn bad_type(&self, key: &str, v: &MetaValue, expected: &str) -> CheckpointError {
        CheckpointError::Format {
            path: self.path.clone(),
            format: FORMAT,
            message: format!("metadata key '{key}' is {} {v}, expected {expected}", v.type_name()),
        }
    }

    /// Tensor names in file order.
    pub fn tensor_names(&self) -> Vec<&str> {
        self.tensors.iter().map(|t| t.name.as_str()).collect()
    }

    /// All tensor infos in file order.
    pub fn tensor_infos(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The info of one tensor.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// Whether the file has a tensor of that name.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// A view of one tensor: row-major shape (`[out, in]` for a linear weight) and its bytes.
    ///
    /// Errors, naming file and tensor, when there is no such tensor or its GGML type is one this
    /// crate does not decode (the IQ and TQ formats, integers, F64, ...).
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let info = self.tensor_info(name).ok_or_else(|| CheckpointError::TensorNotFound {
            path: self.path.clone(),
            tensor: name.to_string(),
        })?;
        let dtype = info.dtype.ok_or_else(|| CheckpointError::UnsupportedDType {
            path: self.path.clone(),
            tensor: info.name.clone(),
            dtype: info.type_name.to_string(),
            supported: SUPPORTED,
        })?;
        let data = info
            .file_offset
            .checked_add(info.n_bytes)
            .and_then(|end| self.mmap.get(info.file_offset..end))
            .ok_or_else(|| CheckpointError::Tensor {
                path: self.path.clone(),
                tensor: info.name.clone(),
                message: format!("data at bytes {}..+{} is outside the file", info.file_offset, info.n_bytes),
            })?;
        Ok(TensorView { name: &info.name, dtype, shape: info.shape.clone(), data })
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

struct Parsed {
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: BTreeMap<String, MetaValue>,
    metadata_order: Vec<String>,
    tensors: Vec<GgufTensorInfo>,
}

/// A parse error before the path is attached.
enum ParseError {
    File(String),
    Tensor { tensor: String, message: String },
}

impl ParseError {
    fn with_path(self, path: &Path) -> CheckpointError {
        match self {
            ParseError::File(message) => {
                CheckpointError::Format { path: path.to_path_buf(), format: FORMAT, message }
            }
            ParseError::Tensor { tensor, message } => {
                CheckpointError::Tensor { path: path.to_path_buf(), tensor, message }
            }
        }
    }
}

impl From<String> for ParseError {
    fn from(message: String) -> Self {
        ParseError::File(message)
    }
}

/// A bounds-checked reader over the file's bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes; `what` names them in the error.
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end.and_then(|e| self.buf.get(self.pos..e)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(format!(
                "file truncated: {what} needs {n} bytes at offset {}, only {} left (file is {} bytes)",
                self.pos,
                self.remaining(),
                self.buf.len()
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    /// A length-prefixed UTF-8 string; the length is checked against the bytes left first.
    fn string(&mut self, what: &str) -> Result<String, String> {
        let at = self.pos;
        let len = self.u64(what)?;
        let len = usize::try_from(len).ok().filter(|&l| l <= self.remaining()).ok_or_else(|| {
            format!(
                "{what} at offset {at} claims {len} bytes, but only {} bytes are left in the \
                     file (truncated or corrupt)",
                self.remaining()
            )
        })?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| format!("{what} at offset {at} is not valid UTF-8: {e}"))
    }
}

/// Smallest encoded size of one value of a metadata type (to bound array counts), or `None`
/// for an unknown type.
fn min_value_size(vtype: u32) -> Option<usize> {
    Some(match vtype {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

fn parse_value(c: &mut Cursor<'_>, vtype: u32, depth: usize) -> Result<MetaValue, String> {
    Ok(match vtype {
        0 => MetaValue::U8(u8::from_le_bytes(c.array("UINT8 value")?)),
        1 => MetaValue::I8(i8::from_le_bytes(c.array("INT8 value")?)),
        2 => MetaValue::U16(u16::from_le_bytes(c.array("UINT16 value")?)),
        3 => MetaValue::I16(i16::from_le_bytes(c.array("INT16 value")?)),
        4 => MetaValue::U32(c.u32("UINT32 value")?),
        5 => MetaValue::I32(i32::from_le_bytes(c.array("INT32 value")?)),
        6 => MetaValue::F32(f32::from_le_bytes(c.array("FLOAT32 value")?)),
        7 => {
            let at = c.pos;
            match c.array::<1>("BOOL value")?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("BOOL value at offset {at} is {b}, expected 0 or 1")),
            }
        }
        8 => MetaValue::Str(c.string("string value")?),
        9 => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(format!(
                    "arrays nested deeper than {MAX_ARRAY_DEPTH} levels at offset {}",
                    c.pos
                ));
            }
            let at = c.pos;
            let elem_type = c.u32("array element type")?;
            let min = min_value_size(elem_type).ok_or_else(|| {
                format!("array at offset {at} has unknown element type {elem_type} (valid: 0-12)")
            })?;
            let count = c.u64("array length")?;
            let fits = usize::try_from(count)
                .ok()
                .and_then(|n| n.checked_mul(min))
                .is_some_and(|bytes| bytes <= c.remaining());
            if !fits {
                return Err(format!(
                    "array at offset {at} claims {count} elements of type {elem_type} (at least \
                     {min} bytes each), but only {} bytes are left in the file (truncated or corrupt)",
                    c.remaining()
                ));
            }
            // `count * min <= remaining` bounds the allocation by the file's size.
            let count = count as usize;
            let mut items = Vec::with_capacity(count);
            for i in 0..count {
                let item =
                    parse_value(c, elem_type, depth + 1).map_err(|e| format!("array element {i}: {e}"))?;
                items.push(item);
            }
            MetaValue::Array(items)
        }
        10 => MetaValue::U64(c.u64("UINT64 value")?),
        11 => MetaValue::I64(i64::from_le_bytes(c.array("INT64 value")?)),
        12 => MetaValue::F64(f64::from_le_bytes(c.array("FLOAT64 value")?)),
        t => return Err(format!("unknown metadata value type {t} (valid: 0-12)")),
    })
}

fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    let mut c = Cursor { buf, pos: 0 };
    if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
        let head = &buf[..buf.len().min(4)];
        return Err(
            format!("bad magic {head:02x?} (expected \"GGUF\" = [47, 47, 55, 46]): not a GGUF file").into()
        );
    }
    c.pos = MAGIC.len();
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => return Err("GGUF version 1 is not supported (only versions 2 and 3)".to_string().into()),
        v if matches!(v.swap_bytes(), 2 | 3) => {
            return Err(format!("big-endian GGUF (version {}) is not supported", v.swap_bytes()).into())
        }
        v => return Err(format!("unsupported GGUF version {v} (expected 2 or 3)").into()),
    }
    let tensor_count = c.u64("tensor count")?;
    let kv_count = c.u64("metadata count")?;
    // Each metadata entry takes at least 13 bytes (key length, type, one byte of value), each
    // tensor info at least 24 (name length, n_dims, type, offset).
    check_count(kv_count, 13, c.remaining(), "metadata count")?;
    check_count(tensor_count, 24, c.remaining(), "tensor count")?;

    let mut metadata = BTreeMap::new();
    let mut metadata_order = Vec::with_capacity(kv_count as usize);
    for i in 0..kv_count {
        let key = c.string("metadata key").map_err(|e| format!("metadata entry {i}: {e}"))?;
        let value = c
            .u32("metadata value type")
            .and_then(|t| parse_value(&mut c, t, 0))
            .map_err(|e| format!("metadata entry {i} ('{key}'): {e}"))?;
        if metadata.contains_key(&key) {
            return Err(format!("metadata key '{key}' appears twice").into());
        }
        metadata_order.push(key.clone());
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => {
            v.as_u64().and_then(|a| usize::try_from(a).ok()).filter(|a| a.is_power_of_two()).ok_or_else(
                || format!("general.alignment is {} {v}, expected a non-zero power of two", v.type_name()),
            )?
        }
    };

    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut seen = HashMap::with_capacity(tensor_count as usize);
    for i in 0..tensor_count {
        let name = c.string("tensor name").map_err(|e| format!("tensor info {i}: {e}"))?;
        let info = parse_tensor_info(&mut c).map_err(|message| ParseError::Tensor {
            tensor: name.clone(),
            message: format!("tensor info {i}: {message}"),
        })?;
        if seen.insert(name.clone(), i).is_some() {
            return Err(ParseError::Tensor { tensor: name, message: "tensor name appears twice".into() });
        }
        let (dims, ggml_type, offset) = info;
        tensors.push((name, dims, ggml_type, offset));
    }

    let data_offset =
        c.pos.checked_next_multiple_of(alignment).ok_or_else(|| "data offset overflows".to_string())?;

    let mut infos = Vec::with_capacity(tensors.len());
    for (name, dims, ggml_type, offset) in tensors {
        let info = tensor_layout(buf.len(), data_offset, alignment, name, dims, ggml_type, offset)?;
        infos.push(info);
    }

    Ok(Parsed { version, alignment, data_offset, metadata, metadata_order, tensors: infos })
}

fn check_count(count: u64, min_size: usize, remaining: usize, what: &str) -> Result<(), String> {
    let fits =
        usize::try_from(count).ok().and_then(|n| n.checked_mul(min_size)).is_some_and(|b| b <= remaining);
    if fits {
        Ok(())
    } else {
        Err(format!(
            "{what} {count} is impossible: the {remaining} bytes after the header cannot hold \
             that many entries of at least {min_size} bytes (file truncated or corrupt)"
        ))
    }
}

type RawInfo = (Vec<usize>, u32, u64);

fn parse_tensor_info(c: &mut Cursor<'_>) -> Result<RawInfo, String> {
    let n_dims = c.u32("number of dimensions")?;
    if n_dims as usize > MAX_DIMS {
        return Err(format!("has {n_dims} dimensions, GGUF allows at most {MAX_DIMS}"));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        let d = c.u64("dimension")?;
        let d = usize::try_from(d).map_err(|_| format!("dimension {d} does not fit in memory"))?;
        dims.push(d);
    }
    let ggml_type = c.u32("GGML type")?;
    let offset = c.u64("data offset")?;
    Ok((dims, ggml_type, offset))
}

fn tensor_layout(
    file_len: usize,
    data_offset: usize,
    alignment: usize,
    name: String,
    dims: Vec<usize>,
    ggml_type: u32,
    offset: u64,
) -> Result<GgufTensorInfo, ParseError> {
    let fail = |message: String| ParseError::Tensor { tensor: name.clone(), message };
    let (type_name, block_size, type_size) =
        ggml_type_info(ggml_type).ok_or_else(|| fail(format!("unknown GGML type id {ggml_type}")))?;
    let numel = crate::checked_product(&dims)
        .ok_or_else(|| fail(format!("dimensions {dims:?} overflow the element count")))?;
    let row = dims.first().copied().unwrap_or(1);
    if row % block_size != 0 {
        return Err(fail(format!(
            "row length {row} (dimensions {dims:?}) is not a multiple of the {type_name} block \
             size {block_size}"
        )));
    }
    let n_bytes = (numel / block_size)
        .checked_mul(type_size)
        .ok_or_else(|| fail(format!("dimensions {dims:?} overflow the byte size")))?;
    let offset = usize::try_from(offset).ok().filter(|o| o % alignment == 0).ok_or_else(|| {
        fail(format!("data offset {offset} is not a multiple of the alignment {alignment}"))
    })?;
    let file_offset = data_offset.checked_add(offset);
    let end = file_offset.and_then(|s| s.checked_add(n_bytes));
    let (Some(file_offset), Some(end)) = (file_offset, end) else {
        return Err(fail(format!("data offset {offset} overflows")));
    };
    if end > file_len {
        return Err(fail(format!(
            "{type_name} data of {n_bytes} bytes at file offset {file_offset} (data section \
             offset {offset}) ends at byte {end}, past the end of the file ({file_len} bytes): \
             truncated or corrupt"
        )));
    }
    let shape = dims.iter().rev().copied().collect();
    Ok(GgufTensorInfo {
        name,
        ggml_type,
        type_name,
        dtype: DType::from_ggml_type(ggml_type),
        dims,
        shape,
        offset,
        file_offset,
        n_bytes,
    })
}
