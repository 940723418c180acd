//! TensorBoard event files: a run's scalars, written during training to
//! `OUTPUT_DIR/tensorboard/events.out.tfevents.<time>.<host>.<pid>.afinar` next to
//! `metrics.jsonl`, so that `tensorboard --logdir OUTPUT_DIR` (or a notebook) shows them.
//!
//! The format: TFRecord framing (`u64` length, masked CRC32C of the length, the data, masked
//! CRC32C of the data; little-endian) of `tensorflow.Event` protocol buffers, the first holding
//! `file_version: "brain.Event:2"`, the others a `Summary` of `simple_value` scalars. The few
//! protobuf fields are encoded here by hand: the Rust TensorBoard writers on crates.io
//! (`tensorboard-rs`, `tboard`) are unmaintained single-author releases on old protobuf stacks,
//! and three messages with five scalar fields do not justify a protobuf code generator. The
//! checksum comes from the maintained `crc` crate.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Error, Result};

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// CRC32C of `data`, masked as TFRecord masks it (rotated right by 15, plus 0xa282ead8).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = CASTAGNOLI.checksum(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, masked CRC of the length, `data`, masked CRC of `data`.
pub fn frame_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// An `Event` protobuf: `wall_time` (1, double), `step` (2, int64), then `file_version` (3) or a
/// `Summary` (5) of `Value { tag (1), simple_value (2, float) }`.
pub fn encode_event(
    wall_time: f64,
    step: i64,
    file_version: Option<&str>,
    scalars: &[(&str, f32)],
) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(1 << 3 | 1);
    out.extend_from_slice(&wall_time.to_le_bytes());
    out.push(2 << 3);
    varint(&mut out, step as u64);
    if let Some(v) = file_version {
        bytes_field(&mut out, 3, v.as_bytes());
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            bytes_field(&mut v, 1, tag.as_bytes());
            v.push(2 << 3 | 5);
            v.extend_from_slice(&value.to_le_bytes());
            bytes_field(&mut summary, 1, &v);
        }
        bytes_field(&mut out, 5, &summary);
    }
    out
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Appends scalar events to a new event file; each step is flushed so TensorBoard shows the run
/// while it trains.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<time>.<host>.<pid>.afinar` (a new file per run, as
    /// TensorBoard expects) with its version record.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().replace(['/', '\\'], "_"))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let name = format!("events.out.tfevents.{}.{host}.{}.afinar", now() as u64, std::process::id());
        let path = dir.join(name);
        let file = File::create(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let mut w = Self { path, file: BufWriter::new(file) };
        w.record(&encode_event(now(), 0, Some("brain.Event:2"), &[]))?;
        Ok(w)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the scalars of one step and flushes.
    pub fn scalars(&mut self, step: u64, scalars: &[(&str, f32)]) -> Result<()> {
        self.record(&encode_event(now(), step as i64, None, scalars))
    }

    fn record(&mut self, event: &[u8]) -> Result<()> {
        self.file
            .write_all(&frame_record(event))
            .and_then(|_| self.file.flush())
            .map_err(|source| Error::Io { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask() {
        // The CRC-32C check value, and the mask of TensorFlow's crc32c::Mask.
        assert_eq!(CASTAGNOLI.checksum(b"123456789"), 0xe306_9283);
        // ((c >> 15) | (c << 17)) + 0xa282ead8, computed independently.
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn record_framing_reads_back() {
        let data = encode_event(1.5, 7, None, &[("train/loss", 2.25)]);
        let rec = frame_record(&data);
        assert_eq!(rec.len(), data.len() + 16);
        let len = u64::from_le_bytes(rec[..8].try_into().unwrap());
        assert_eq!(len as usize, data.len());
        assert_eq!(u32::from_le_bytes(rec[8..12].try_into().unwrap()), masked_crc32c(&rec[..8]));
        assert_eq!(&rec[12..12 + data.len()], &data[..]);
        assert_eq!(u32::from_le_bytes(rec[12 + data.len()..].try_into().unwrap()), masked_crc32c(&data));
        // A flipped bit changes the data checksum.
        let mut bad = data.clone();
        bad[3] ^= 1;
        assert_ne!(masked_crc32c(&bad), masked_crc32c(&data));
    }

    #[test]
    fn event_bytes_are_the_protobuf_encoding() {
        // wall_time 1.0, step 300, one value {tag "a", simple_value 1.0}: as protoc encodes it.
        let e = encode_event(1.0, 300, None, &[("a", 1.0)]);
        let mut want = vec![0x09];
        want.extend_from_slice(&1.0f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 0xac, 0x02]);
        want.extend_from_slice(&[0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, b'a', 0x15]);
        want.extend_from_slice(&1.0f32.to_le_bytes());
        assert_eq!(e, want);
        let v = encode_event(0.0, 0, Some("brain.Event:2"), &[]);
        assert_eq!(&v[v.len() - 15..], b"\x1a\x0dbrain.Event:2");
    }
}
