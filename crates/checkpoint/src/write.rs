//! Checkpoint writing: atomic files and folders, safetensors files (single, sharded with a Hugging
//! Face index, or sharded like a reference checkpoint) and the tokenizer side files of a Hugging
//! Face folder.
//!
//! Files come out as the python `safetensors` library writes them (`save_file`): the header JSON
//! holds `__metadata__` first, then the tensors ordered by dtype (F32, then BF16, then F16, then
//! U8) and name, in that same order in the data section, and is padded with spaces to a multiple of 8
//! bytes. For the same tensors and a one-key metadata map the bytes are identical to python's.
//!
//! Tensors are streamed to disk one by one (f32 data converted in bounded chunks), so writing a
//! checkpoint never holds a second copy of it in memory. Every file is written atomically
//! ([`write_atomic`]): a reader sees the old file or the new one, never a half-written one. For a
//! checkpoint of several files (shards, index, config, tokenizer), write the whole folder with
//! [`write_dir_atomic`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde_json::{Map, Value};

use crate::safetensors::{SafetensorsCheckpoint, INDEX_FILE, SINGLE_FILE};
use crate::{CheckpointError, DType, Result, TensorView};

/// The tokenizer and generation files that [`copy_side_files`] copies when the source has them.
pub const SIDE_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
];

/// Largest header the readers accept (as the reference implementation: 100 MB).
const MAX_HEADER: usize = 100_000_000;
/// f32 elements converted per chunk while streaming a tensor (4 MiB of f32).
const CHUNK: usize = 1 << 20;

/// Where a tensor's values come from.
#[derive(Clone, Copy)]
pub enum TensorData<'a> {
    /// f32 values, converted to the tensor's dtype on the way out (F16 and BF16 round to
    /// nearest, ties to even, as torch does).
    F32(&'a [f32]),
    /// Raw little-endian bytes, already in the tensor's dtype; written unchanged.
    Bytes(&'a [u8]),
    /// f32 values produced only when the tensor is written (and dropped right after), so that a
    /// whole model never needs to sit on the host at once (weights read back from a device,
    /// merged adapters). An error from the producer aborts the file.
    Fetch(&'a Fetch<'a>),
    /// Unsigned bytes stored as a safetensors `U8` tensor, one element per byte (bitsandbytes'
    /// packed 4-bit weights, 8-bit scale codes and quant-state JSON); the tensor's `dtype` is
    /// not used (see [`TensorWrite::from_u8`]).
    U8(&'a [u8]),
}

/// The producer of a [`TensorData::Fetch`] tensor: its f32 values, or what went wrong.
pub type Fetch<'a> = dyn Fn() -> std::result::Result<Vec<f32>, String> + Sync + 'a;

impl fmt::Debug for TensorData<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorData::F32(v) => write!(f, "F32([{} values])", v.len()),
            TensorData::Bytes(b) => write!(f, "Bytes([{} bytes])", b.len()),
            TensorData::Fetch(_) => write!(f, "Fetch(..)"),
            TensorData::U8(b) => write!(f, "U8([{} bytes])", b.len()),
        }
    }
}

/// One tensor to write: its name, the dtype to store it in, its shape (row-major, outermost
/// first) and its data.
#[derive(Debug, Clone)]
pub struct TensorWrite<'a> {
    /// The name in the file (e.g. `model.layers.0.self_attn.q_proj.weight`).
    pub name: &'a str,
    /// The stored dtype: [`DType::F32`], [`DType::BF16`] or [`DType::F16`] (safetensors has no
    /// GGML block types).
    pub dtype: DType,
    /// Dimensions, outermost first. An empty shape is a scalar.
    pub shape: Vec<usize>,
    /// The values.
    pub data: TensorData<'a>,
}

impl<'a> TensorWrite<'a> {
    /// A tensor stored as `dtype` from f32 values (converted on the way out).
    pub fn from_f32(name: &'a str, dtype: DType, shape: Vec<usize>, data: &'a [f32]) -> Self {
        TensorWrite { name, dtype, shape, data: TensorData::F32(data) }
    }

    /// A tensor stored as `dtype` whose f32 values `fetch` produces when it is written.
    pub fn from_fetch(name: &'a str, dtype: DType, shape: Vec<usize>, fetch: &'a Fetch<'a>) -> Self {
        TensorWrite { name, dtype, shape, data: TensorData::Fetch(fetch) }
    }

    /// A tensor from raw little-endian bytes already in `dtype`.
    pub fn from_bytes(name: &'a str, dtype: DType, shape: Vec<usize>, data: &'a [u8]) -> Self {
        TensorWrite { name, dtype, shape, data: TensorData::Bytes(data) }
    }

    /// A safetensors `U8` tensor of `shape` holding `data` (one element per byte). Its `dtype`
    /// field is set to [`DType::F32`] and ignored: safetensors' `U8` has no [`DType`].
    pub fn from_u8(name: &'a str, shape: Vec<usize>, data: &'a [u8]) -> Self {
        TensorWrite { name, dtype: DType::F32, shape, data: TensorData::U8(data) }
    }

    /// The same tensor as a view read from a checkpoint: name, dtype, shape and bytes copied
    /// through unchanged (a quantized GGUF view is rejected when written: dequantize it first).
    pub fn from_view(view: &TensorView<'a>) -> Self {
        TensorWrite {
            name: view.name,
            dtype: view.dtype,
            shape: view.shape.clone(),
            data: TensorData::Bytes(view.data),
        }
    }

    /// Number of elements: the product of the shape (1 for a scalar), saturating.
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |acc, &d| acc.saturating_mul(d))
    }

    /// Checks the tensor (name, dtype, data length against shape) and returns its size in the
    /// file in bytes. `path` is the file it goes to, for the error.
    fn checked_bytes(&self, path: &Path) -> Result<usize> {
        let bad = |message: String| CheckpointError::Tensor {
            path: path.to_path_buf(),
            tensor: self.name.to_string(),
            message,
        };
        let (numel, bytes) = match self.data {
            TensorData::U8(_) => {
                let (numel, _) = stored_size(path, self.name, DType::F32, &self.shape)?;
                (numel, numel)
            }
            _ => stored_size(path, self.name, self.dtype, &self.shape)?,
        };
        match self.data {
            TensorData::F32(v) if v.len() != numel => Err(bad(format!(
                "shape {:?} has {numel} elements, the data holds {} f32 values",
                self.shape,
                v.len()
            ))),
            TensorData::Bytes(b) | TensorData::U8(b) if b.len() != bytes => Err(bad(format!(
                "shape {:?} of {} needs {bytes} bytes, the data holds {}",
                self.shape,
                dtype_key(self).0,
                b.len()
            ))),
            _ => Ok(bytes),
        }
    }
}

/// Element count and stored bytes of a tensor of `dtype` and `shape` named `name` in the
/// safetensors file `path`: an error for a reserved name, a dtype safetensors cannot hold or a
/// size that overflows.
fn stored_size(path: &Path, name: &str, dtype: DType, shape: &[usize]) -> Result<(usize, usize)> {
    let bad = |message: String| CheckpointError::Tensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        message,
    };
    if name.is_empty() || name == "__metadata__" {
        return Err(bad("is not a valid tensor name (empty or \"__metadata__\")".into()));
    }
    let elem = match dtype {
        DType::F32 => 4,
        DType::F16 | DType::BF16 => 2,
        other => {
            return Err(bad(format!(
                "dtype {other} cannot be stored in safetensors (F32, BF16 or F16 only): dequantize it first"
            )))
        }
    };
    let numel = crate::checked_product(shape)
        .ok_or_else(|| bad(format!("shape {shape:?} overflows the element count")))?;
    let bytes =
        numel.checked_mul(elem).ok_or_else(|| bad(format!("shape {shape:?} overflows the byte count")))?;
    Ok((numel, bytes))
}

/// f32 to bfloat16 / IEEE binary16 bits, rounding to nearest with ties to even (as torch and
/// the `half` crate): [`afinar_formats::float`]'s conversions, under the names this module's
/// callers know.
pub use afinar_formats::float::{f32_to_bf16 as f32_to_bf16_bits, f32_to_f16 as f32_to_f16_bits};

// ---------------------------------------------------------------------------------------------
// Atomic files and folders.

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_err(path: &Path) -> impl Fn(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes a temporary file or folder when dropped, unless disarmed (errors and panics alike).
struct TempGuard {
    path: Option<PathBuf>,
    dir: bool,
}

impl TempGuard {
    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = if self.dir { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
        }
    }
}

/// Flushes a folder's entry table to disk (best effort: not every platform can open a folder).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `path` atomically: `write` fills a temporary file in the same folder (buffered), which
/// is then flushed, fsynced and renamed over `path`.
///
/// On any error (from `write` or from the file system), or a panic in `write`, the temporary
/// file is removed and an existing file at `path` is left untouched. The folder must exist.
pub fn write_atomic<F>(path: impl AsRef<Path>, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let path = path.as_ref();
    write_atomic_with(path, |w| write(w).map_err(io_err(path)))
}

/// [`write_atomic`] with a closure that returns a [`CheckpointError`] (and a value).
fn write_atomic_with<T, F>(path: &Path, write: F) -> Result<T>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<T>,
{
    let file_name = path.file_name().ok_or_else(|| {
        io_err(path)(io::Error::new(io::ErrorKind::InvalidInput, "not a file path (no file name)"))
    })?;
    let dir = parent_dir(path);
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}-{}", std::process::id(), TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
    let tmp = dir.join(tmp_name);
    let file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err(&tmp))?;
    let mut guard = TempGuard { path: Some(tmp.clone()), dir: false };
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let value = write(&mut w)?;
    let file = w.into_inner().map_err(|e| io_err(path)(e.into_error()))?;
    file.sync_all().map_err(io_err(path))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    guard.disarm();
    sync_dir(dir);
    Ok(value)
}

/// Fsyncs every file and folder under `dir` (files written by other means than
/// [`write_atomic`] may still be in the page cache).
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err(&path))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            File::open(&path).and_then(|f| f.sync_all()).map_err(io_err(&path))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

/// Writes the folder `dir` atomically: `write` fills a fresh sibling folder
/// `DIR.tmp-<pid>-<n>` (passed to it), whose files are then fsynced; the new folder then takes
/// `dir`'s place (an existing `dir` is first renamed aside to `DIR.old-<pid>-<n>`, then
/// removed).
///
/// A reader never sees a half-written checkpoint: it sees the old folder, the new one, or (for
/// the instant between the two renames) none. On an error from `write` (or a panic) the
/// temporary folder is removed and `dir` is left untouched. Nothing is carried over from the old
/// folder: `write` must write every file the new one should hold.
pub fn write_dir_atomic<T, E, F>(dir: impl AsRef<Path>, write: F) -> std::result::Result<T, E>
where
    F: FnOnce(&Path) -> std::result::Result<T, E>,
    E: From<CheckpointError>,
{
    let dir = dir.as_ref();
    let name = match dir.components().next_back() {
        Some(Component::Normal(n)) => n.to_os_string(),
        _ => {
            return Err(io_err(dir)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a folder path that can be replaced (no final name)",
            ))
            .into())
        }
    };
    let parent = parent_dir(dir);
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let sibling = |tag: &str| {
        let mut s = name.clone();
        s.push(format!(".{tag}-{}-{n}", std::process::id()));
        parent.join(s)
    };
    let tmp = sibling("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let mut guard = TempGuard { path: Some(tmp.clone()), dir: true };
    let value = write(&tmp)?;
    sync_tree(&tmp)?;

    let old = sibling("old");
    let had_old = match fs::symlink_metadata(dir) {
        Ok(_) => {
            fs::rename(dir, &old).map_err(io_err(dir))?;
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(dir)(e).into()),
    };
    if let Err(e) = fs::rename(&tmp, dir) {
        if had_old {
            let _ = fs::rename(&old, dir);
        }
        return Err(io_err(dir)(e).into());
    }
    guard.disarm();
    sync_dir(parent);
    if had_old {
        // The new checkpoint is in place; a leftover old copy is only wasted space.
        let _ = match fs::symlink_metadata(&old) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&old),
            _ => fs::remove_file(&old),
        };
    }
    Ok(value)
}

/// A temporary file or folder that [`write_atomic`] (`.NAME.tmp-<pid>-<n>`) or
/// [`write_dir_atomic`] (`NAME.tmp-<pid>-<n>`, `NAME.old-<pid>-<n>`) left in `dir` when its
/// process was killed mid-write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// The file or folder.
    pub path: PathBuf,
    /// Its size in bytes (files under a folder summed).
    pub bytes: u64,
}

/// The process id in a name written by this module (`…​.tmp-<pid>-<n>` or `…​.old-<pid>-<n>`),
/// if it is one.
fn temporary_pid(name: &str) -> Option<u32> {
    let (stem, n) = name.rsplit_once('-')?;
    let (stem, pid) = stem.rsplit_once('-')?;
    if !(stem.ends_with(".tmp") || stem.ends_with(".old")) || stem.len() <= 4 {
        return None;
    }
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` is running (Linux: `/proc/<pid>` exists; elsewhere: assumed not, so
/// only this process's own writes are kept).
fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

fn size_of(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            fs::read_dir(path).map_or(0, |rd| rd.flatten().map(|e| size_of(&e.path())).sum())
        }
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// Removes the temporary files and folders that atomic writes of a killed process left directly
/// in `dir` (names as [`Leftover`] describes, whose process is no longer running; nothing else
/// is touched) and returns what was removed. A missing `dir` has none.
pub fn remove_leftovers(dir: &Path) -> Result<Vec<Leftover>> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temporary_pid) else { continue };
        if process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let bytes = size_of(&path);
        let kind = entry.file_type().map_err(io_err(&path))?;
        if kind.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) }
            .map_err(io_err(&path))?;
        removed.push(Leftover { path, bytes });
    }
    removed.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(removed)
}

// ---------------------------------------------------------------------------------------------
// Safetensors.

/// The safetensors dtype name of a tensor and its sort rank in the python library (descending:
/// F32, BF16, F16, U8).
fn dtype_key(t: &TensorWrite) -> (&'static str, u8) {
    match (t.data, t.dtype) {
        (TensorData::U8(_), _) => ("U8", 0),
        (_, DType::F32) => ("F32", 3),
        (_, DType::BF16) => ("BF16", 2),
        _ => ("F16", 1),
    }
}

/// Validates `tensors` for the file `path` (names unique) and returns their byte sizes.
fn check_all(path: &Path, tensors: &[&TensorWrite]) -> Result<Vec<usize>> {
    let mut seen = BTreeSet::new();
    tensors
        .iter()
        .map(|t| {
            if !seen.insert(t.name) {
                return Err(CheckpointError::Tensor {
                    path: path.to_path_buf(),
                    tensor: t.name.to_string(),
                    message: "appears twice in the tensors to write".into(),
                });
            }
            t.checked_bytes(path)
        })
        .collect()
}

/// The metadata map written to each file: the caller's, with `format: pt` unless it sets one.
fn file_metadata(metadata: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut m = metadata.clone();
    m.entry("format".into()).or_insert_with(|| "pt".into());
    m
}

/// Writes one safetensors file from pre-validated tensors and their sizes.
fn write_file(
    path: &Path,
    tensors: &[&TensorWrite],
    sizes: &[usize],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    // Layout order of the python library: dtype (F32, BF16, F16), then name.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (ta, tb) = (tensors[a], tensors[b]);
        dtype_key(tb).1.cmp(&dtype_key(ta).1).then(ta.name.cmp(tb.name))
    });

    let metas: Vec<(&str, &str, &[usize])> =
        order.iter().map(|&t| (tensors[t].name, dtype_key(tensors[t]).0, &tensors[t].shape[..])).collect();
    let ordered_sizes: Vec<usize> = order.iter().map(|&t| sizes[t]).collect();
    let header = header_text(path, &metas, &ordered_sizes, metadata)?;
    write_atomic_with(path, |w| {
        let io = io_err(path);
        w.write_all(&(header.len() as u64).to_le_bytes()).map_err(&io)?;
        w.write_all(header.as_bytes()).map_err(&io)?;
        let mut buf = Vec::new();
        for &t in &order {
            write_tensor_data(w, tensors[t], &mut buf).map_err(&io)?;
        }
        Ok(())
    })
}

/// The JSON header of a safetensors file holding `metas` (name, safetensors dtype name, shape)
/// laid out in that order with their byte `sizes`, padded with spaces to a multiple of 8.
fn header_text(
    path: &Path,
    metas: &[(&str, &str, &[usize])],
    sizes: &[usize],
    metadata: &BTreeMap<String, String>,
) -> Result<String> {
    let json = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut header = String::from("{");
    if !metadata.is_empty() {
        header.push_str("\"__metadata__\":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            header.push_str(&json(k));
            header.push(':');
            header.push_str(&json(v));
        }
        header.push('}');
    }
    let mut offset = 0usize;
    for (i, (&(name, dtype, shape), size)) in metas.iter().zip(sizes).enumerate() {
        if i > 0 || !metadata.is_empty() {
            header.push(',');
        }
        let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let end = offset + size;
        header.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            json(name),
            dtype,
            shape.join(",")
        ));
        offset = end;
    }
    header.push('}');
    let padded = header.len().next_multiple_of(8);
    if padded > MAX_HEADER {
        return Err(CheckpointError::Format {
            path: path.to_path_buf(),
            format: "safetensors file",
            message: format!("the header would be {padded} bytes, more than the {MAX_HEADER} readers accept"),
        });
    }
    header.extend(std::iter::repeat_n(' ', padded - header.len()));
    Ok(header)
}

/// Name, stored dtype and shape of a tensor written by [`save_safetensors_with`].
pub type TensorMeta = (String, DType, Vec<usize>);

/// Receives the tensors of [`save_safetensors_with`] one at a time, in the announced order.
pub struct TensorSink<'a> {
    path: &'a Path,
    metas: &'a [TensorMeta],
    w: &'a mut dyn Write,
    next: usize,
    buf: Vec<u8>,
}

impl TensorSink<'_> {
    /// Writes the next tensor from f32 values (converted to its stored dtype); an error if the
    /// count does not match its shape or every announced tensor was already written.
    pub fn write_f32(&mut self, values: &[f32]) -> Result<()> {
        let Some((name, dtype, shape)) = self.metas.get(self.next) else {
            return Err(CheckpointError::Format {
                path: self.path.to_path_buf(),
                format: "safetensors file",
                message: format!("more tensors written than the {} announced", self.metas.len()),
            });
        };
        let t = TensorWrite::from_f32(name, *dtype, shape.clone(), values);
        t.checked_bytes(self.path)?;
        write_tensor_data(self.w, &t, &mut self.buf).map_err(io_err(self.path))?;
        self.next += 1;
        Ok(())
    }
}

/// Writes the safetensors file `path` (atomically) whose tensors `tensors` lists, letting `fill`
/// produce their values one at a time in that order through a [`TensorSink`]: only one tensor
/// needs to be in memory at once (saving optimizer state or a large model from a device).
/// `metadata` as in [`save_safetensors`]. An error from `fill`, or `fill` writing fewer or more
/// tensors than announced, leaves no file behind.
pub fn save_safetensors_with<E, F>(
    path: impl AsRef<Path>,
    tensors: &[TensorMeta],
    metadata: &BTreeMap<String, String>,
    fill: F,
) -> std::result::Result<(), E>
where
    E: From<CheckpointError>,
    F: FnOnce(&mut TensorSink<'_>) -> std::result::Result<(), E>,
{
    let path = path.as_ref();
    let mut seen = BTreeSet::new();
    let mut sizes = Vec::with_capacity(tensors.len());
    for (name, dtype, shape) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(CheckpointError::Tensor {
                path: path.to_path_buf(),
                tensor: name.clone(),
                message: "appears twice in the tensors to write".into(),
            }
            .into());
        }
        sizes.push(stored_size(path, name, *dtype, shape)?.1);
    }
    let metas: Vec<(&str, &str, &[usize])> = tensors
        .iter()
        .map(|(n, d, s)| (n.as_str(), dtype_key(&TensorWrite::from_bytes(n, *d, Vec::new(), &[])).0, &s[..]))
        .collect();
    let header = header_text(path, &metas, &sizes, &file_metadata(metadata))?;
    let mut fill_err = None;
    let result = write_atomic_with(path, |w| {
        let io = io_err(path);
        w.write_all(&(header.len() as u64).to_le_bytes()).map_err(&io)?;
        w.write_all(header.as_bytes()).map_err(&io)?;
        let mut sink = TensorSink { path, metas: tensors, w, next: 0, buf: Vec::new() };
        if let Err(e) = fill(&mut sink) {
            fill_err = Some(e);
            return Err(CheckpointError::Format {
                path: path.to_path_buf(),
                format: "safetensors file",
                message: "not written: producing a tensor failed".into(),
            });
        }
        if sink.next != tensors.len() {
            return Err(CheckpointError::Format {
                path: path.to_path_buf(),
                format: "safetensors file",
                message: format!("{} of the {} announced tensors were written", sink.next, tensors.len()),
            });
        }
        Ok(())
    });
    match (fill_err, result) {
        (Some(e), _) => Err(e),
        (None, r) => r.map_err(E::from),
    }
}

/// Streams one tensor's data in its stored dtype, converting f32 in chunks through `buf`.
fn write_tensor_data(w: &mut dyn Write, t: &TensorWrite, buf: &mut Vec<u8>) -> io::Result<()> {
    let fetched;
    let values = match t.data {
        TensorData::Bytes(b) | TensorData::U8(b) => return w.write_all(b),
        TensorData::F32(v) => v,
        TensorData::Fetch(f) => {
            fetched = f().map_err(|e| io::Error::other(format!("tensor '{}': {e}", t.name)))?;
            let numel = t.numel();
            if fetched.len() != numel {
                return Err(io::Error::other(format!(
                    "tensor '{}': shape {:?} has {numel} elements, its producer gave {}",
                    t.name,
                    t.shape,
                    fetched.len()
                )));
            }
            &fetched[..]
        }
    };
    let elem = if t.dtype == DType::F32 { 4 } else { 2 };
    for chunk in values.chunks(CHUNK) {
        buf.resize(chunk.len() * elem, 0);
        let out = &mut buf[..chunk.len() * elem];
        const PAR: usize = 1 << 14;
        match t.dtype {
            DType::F32 => out.par_chunks_mut(PAR * 4).zip(chunk.par_chunks(PAR)).for_each(|(o, v)| {
                for (o, x) in o.chunks_exact_mut(4).zip(v) {
                    o.copy_from_slice(&x.to_le_bytes());
                }
            }),
            DType::BF16 | DType::F16 => {
                let conv = if t.dtype == DType::BF16 { f32_to_bf16_bits } else { f32_to_f16_bits };
                out.par_chunks_mut(PAR * 2).zip(chunk.par_chunks(PAR)).for_each(|(o, v)| {
                    for (o, &x) in o.chunks_exact_mut(2).zip(v) {
                        o.copy_from_slice(&conv(x).to_le_bytes());
                    }
                })
            }
            // Rejected by `checked_bytes` before anything is written.
            _ => return Err(io::Error::other("unsupported dtype")),
        }
        w.write_all(out)?;
    }
    Ok(())
}

/// Writes `tensors` into the safetensors file `path` (atomically, streaming one tensor at a
/// time), with `metadata` as its `__metadata__` plus `format: pt` unless `metadata` sets
/// `format`.
///
/// Every tensor is checked before anything is written (unique names, dtype F32/BF16/F16, data
/// length matching the shape); an error names the file and the tensor. The folder must exist.
pub fn save_safetensors(
    path: impl AsRef<Path>,
    tensors: &[TensorWrite],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let refs: Vec<&TensorWrite> = tensors.iter().collect();
    let sizes = check_all(path, &refs)?;
    write_file(path, &refs, &sizes, &file_metadata(metadata))
}

/// `model-00001-of-00003.safetensors`, as `transformers` names shards.
fn shard_name(i: usize, n: usize) -> String {
    format!("model-{i:05}-of-{n:05}.safetensors")
}

/// Whether `name` looks like a shard file name `model-NNNNN-of-NNNNN.safetensors`.
fn is_shard_name(name: &str) -> bool {
    let Some(mid) = name.strip_prefix("model-").and_then(|s| s.strip_suffix(".safetensors")) else {
        return false;
    };
    match mid.split_once("-of-") {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// Writes the files of `groups` (file name -> tensors) into `dir`, then the index named
/// `index_name` if any, then, when this is a standard Hugging Face model checkpoint (`model.safetensors`
/// or `model.safetensors.index.json`), removes stale checkpoint files of an earlier save
/// (`model.safetensors`, the index, `model-*-of-*` shards) that are not part of this one.
/// Returns the files written, the index last.
fn write_groups(
    dir: &Path,
    groups: &[(String, Vec<usize>)],
    tensors: &[TensorWrite],
    sizes: &[usize],
    metadata: &BTreeMap<String, String>,
    index_name: Option<&str>,
) -> Result<Vec<PathBuf>> {
    let standard = match index_name {
        Some(index) => index == INDEX_FILE,
        None => groups.len() == 1 && groups[0].0 == SINGLE_FILE,
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut written = Vec::new();
    for (file, members) in groups {
        let path = dir.join(file);
        let refs: Vec<&TensorWrite> = members.iter().map(|&i| &tensors[i]).collect();
        let s: Vec<usize> = members.iter().map(|&i| sizes[i]).collect();
        write_file(&path, &refs, &s, metadata)?;
        written.push(path);
    }
    if let Some(index_name) = index_name {
        let weight_map: BTreeMap<&str, &str> = groups
            .iter()
            .flat_map(|(file, members)| members.iter().map(move |&i| (tensors[i].name, file.as_str())))
            .collect();
        let total_size: usize = sizes.iter().sum();
        let total_parameters: usize = tensors.iter().map(TensorWrite::numel).sum();
        let mut meta = Map::new();
        meta.insert("total_parameters".into(), total_parameters.into());
        meta.insert("total_size".into(), total_size.into());
        let mut wm = Map::new();
        for (k, v) in weight_map {
            wm.insert(k.into(), v.into());
        }
        let mut index = Map::new();
        index.insert("metadata".into(), Value::Object(meta));
        index.insert("weight_map".into(), Value::Object(wm));
        let path = dir.join(index_name);
        write_json(&path, &Value::Object(index))?;
        written.push(path);
    }

    if !standard {
        return Ok(written);
    }
    // Remove what an earlier save left that would shadow or confuse this one: a reader that
    // prefers the single file (transformers) or the index (afinar) must find only ours.
    let ours: BTreeSet<&std::ffi::OsStr> = written.iter().filter_map(|p| p.file_name()).collect();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if ours.contains(name.as_os_str()) {
            continue;
        }
        let stale = name.to_str().is_some_and(|n| n == SINGLE_FILE || n == INDEX_FILE || is_shard_name(n));
        if stale && entry.file_type().is_ok_and(|t| t.is_file()) {
            let p = entry.path();
            fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    sync_dir(dir);
    Ok(written)
}

/// Writes `value` as pretty JSON (two-space indent, as python's `json.dumps(indent=2)`) and a
/// final newline, atomically (for `config.json` and other side files). Object keys come out in
/// the map's order (sorted, unless serde_json's `preserve_order` feature is on).
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CheckpointError::Format {
        path: path.to_path_buf(),
        format: "JSON file",
        message: e.to_string(),
    })?;
    write_atomic(path, |w| {
        w.write_all(text.as_bytes())?;
        w.write_all(b"\n")
    })
}

/// Writes `tensors` into the folder `dir` (created if missing) as a Hugging Face checkpoint:
/// one `model.safetensors` when their data fits in `max_shard_bytes`, else shards
/// `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json` (`metadata.total_size`,
/// `metadata.total_parameters`, `weight_map`).
///
/// Tensors are packed in the order given (as `transformers` does): a shard is closed when the
/// next tensor would take it past `max_shard_bytes`; a tensor larger than that gets a shard of
/// its own. Each file is written atomically; stale checkpoint files of an earlier save in `dir`
/// (`model.safetensors`, the index, other `model-*-of-*` shards) are removed afterwards, other
/// files are left alone. For an all-or-nothing folder, call this inside [`write_dir_atomic`].
///
/// Returns the files written: the safetensors files in order, then the index if any.
pub fn save_sharded(
    dir: impl AsRef<Path>,
    tensors: &[TensorWrite],
    max_shard_bytes: u64,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let refs: Vec<&TensorWrite> = tensors.iter().collect();
    let sizes = check_all(dir, &refs)?;
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_bytes = 0u64;
    for (i, &s) in sizes.iter().enumerate() {
        let s = s as u64;
        if !current.is_empty() && current_bytes.saturating_add(s) > max_shard_bytes {
            shards.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push(i);
        current_bytes = current_bytes.saturating_add(s);
    }
    if !current.is_empty() || shards.is_empty() {
        shards.push(current);
    }
    let n = shards.len();
    let metadata = file_metadata(metadata);
    if n == 1 {
        let groups = vec![(SINGLE_FILE.to_string(), shards.remove(0))];
        return write_groups(dir, &groups, tensors, &sizes, &metadata, None);
    }
    let groups: Vec<(String, Vec<usize>)> =
        shards.into_iter().enumerate().map(|(i, m)| (shard_name(i + 1, n), m)).collect();
    write_groups(dir, &groups, tensors, &sizes, &metadata, Some(INDEX_FILE))
}

/// Writes `tensors` into the folder `dir` with the sharding of `reference`: each tensor goes
/// into the file of the same name as the reference's file holding the tensor of that name;
/// tensors the reference does not have go into its last file (by name). The `__metadata__` of
/// each file is the reference's (first file's), with `format: pt` added when missing.
///
/// A sharded reference gives shards plus an index of the reference index's file name; reference
/// files that would receive no tensor are not written. A single-file reference gives one file of
/// the same name. When the result is a standard `model.safetensors` or
/// `model.safetensors.index.json` checkpoint, stale files are removed as in [`save_sharded`].
/// Returns the files written, the index last.
pub fn save_like(
    dir: impl AsRef<Path>,
    tensors: &[TensorWrite],
    reference: &SafetensorsCheckpoint,
) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let refs: Vec<&TensorWrite> = tensors.iter().collect();
    let sizes = check_all(dir, &refs)?;
    let metadata = file_metadata(&reference.metadata().cloned().unwrap_or_default());
    let ref_path = reference.path();
    let ref_name = ref_path.file_name().and_then(|n| n.to_str()).unwrap_or(SINGLE_FILE).to_string();

    if !ref_name.ends_with(".index.json") {
        let groups = vec![(ref_name, (0..tensors.len()).collect())];
        return write_groups(dir, &groups, tensors, &sizes, &metadata, None);
    }

    // Sharded: the reference's tensor -> file map, read again from its index.
    let bad = |message: String| CheckpointError::Format {
        path: ref_path.to_path_buf(),
        format: "safetensors index",
        message,
    };
    let text = fs::read(ref_path).map_err(io_err(ref_path))?;
    let json: Value = serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut file_of: HashMap<&str, &str> = HashMap::new();
    let mut files: BTreeSet<&str> = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .filter(|f| !f.is_empty() && Path::new(f).components().all(|c| matches!(c, Component::Normal(_))))
            .ok_or_else(|| bad(format!("weight_map entry of tensor '{tensor}' is not a file name")))?;
        file_of.insert(tensor.as_str(), file);
        files.insert(file);
    }
    let last = files.iter().next_back().copied().ok_or_else(|| bad("weight_map is empty".into()))?;
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, t) in tensors.iter().enumerate() {
        let file = file_of.get(t.name).copied().unwrap_or(last);
        groups.entry(file).or_default().push(i);
    }
    let groups: Vec<(String, Vec<usize>)> = groups.into_iter().map(|(f, m)| (f.to_string(), m)).collect();
    write_groups(dir, &groups, tensors, &sizes, &metadata, Some(&ref_name))
}

/// Copies the tokenizer and generation files of a Hugging Face folder ([`SIDE_FILES`]:
/// `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`,
/// `generation_config.json`, `chat_template.jinja`, `chat_template.json`, `tokenizer.model`)
/// that `src_dir` has into `dst_dir` (created if missing), each atomically. Returns the files
/// written. `config.json` is not copied: the model side writes it.
pub fn copy_side_files(src_dir: impl AsRef<Path>, dst_dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let (src_dir, dst_dir) = (src_dir.as_ref(), dst_dir.as_ref());
    if !src_dir.is_dir() {
        return Err(io_err(src_dir)(io::Error::new(io::ErrorKind::NotFound, "not a folder")));
    }
    fs::create_dir_all(dst_dir).map_err(io_err(dst_dir))?;
    let mut written = Vec::new();
    for name in SIDE_FILES {
        let src = src_dir.join(name);
        if !src.is_file() {
            continue;
        }
        let mut file = File::open(&src).map_err(io_err(&src))?;
        let dst = dst_dir.join(name);
        write_atomic_with(&dst, |w| {
            io::copy(&mut file, w).map_err(io_err(&src))?;
            Ok(())
        })?;
        written.push(dst);
    }
    Ok(written)
}
