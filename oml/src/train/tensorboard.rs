//! TensorBoard event files, written without TensorFlow: a run with a `logs_dir` writes
//! `logs_dir/tb/events.out.tfevents.<seconds>.<host>` (`tensorboard --logdir logs_dir/tb`).
//!
//! The format is TensorFlow's: a sequence of records, each `length: u64 LE`, `masked_crc32c
//! (length): u32 LE`, `data`, `masked_crc32c(data): u32 LE`; every `data` an `Event` protocol
//! buffer. The first event carries `file_version: "brain.Event:2"`; each later one a `Summary`
//! of `simple_value` scalars at a step. [`read_scalars`] reads a file back, checking every CRC.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// CRC-32C (Castagnoli) of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    const POLY: u32 = 0x82F6_3B78;
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC.
fn masked(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field `field` holding `bytes`.
fn bytes_field(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// An `Event` with the wall time, the step, and either the file version or scalars.
fn event(wall_time: f64, step: i64, version: Option<&str>, scalars: &[(String, f32)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(0x09); // wall_time: field 1, 64-bit
    out.extend_from_slice(&wall_time.to_le_bytes());
    out.push(0x10); // step: field 2, varint
    varint(step as u64, &mut out);
    if let Some(v) = version {
        bytes_field(3, v.as_bytes(), &mut out);
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            bytes_field(1, tag.as_bytes(), &mut v); // Summary.Value.tag
            v.push(0x15); // simple_value: field 2, 32-bit
            v.extend_from_slice(&value.to_le_bytes());
            bytes_field(1, &v, &mut summary); // Summary.value
        }
        bytes_field(5, &summary, &mut out); // Event.summary
    }
    out
}

fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked(crc32c(&len)).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked(crc32c(data)).to_le_bytes());
    out
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes scalars to a new event file in a folder.
#[derive(Debug)]
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (created if needed), its version record written.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
        let wall = now();
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or_else(|| "oml".into());
        // Two fits in the same second get distinct files.
        let mut n = 0;
        let path = loop {
            let suffix = if n == 0 {
                String::new()
            } else {
                format!(".{n}")
            };
            let p = dir.join(format!(
                "events.out.tfevents.{}.{host}{suffix}",
                wall as u64
            ));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let file = File::create(&path).map_err(|e| Error::io("cannot create", &path, e))?;
        let mut w = EventWriter { file, path };
        w.write(&event(wall, 0, Some("brain.Event:2"), &[]))?;
        Ok(w)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(&record(data))
            .map_err(|e| Error::io("cannot write", &self.path, e))
    }

    /// A `SessionLog { status: START }` event at `step`: TensorBoard then discards the points
    /// of earlier files from `step` on (what a resumed run writes again).
    pub fn session_start(&mut self, step: usize) -> Result<()> {
        let mut data = event(now(), step as i64, None, &[]);
        bytes_field(7, &[0x08, 0x01], &mut data); // Event.session_log { status: START }
        self.write(&data)
    }

    /// Scalars `(tag, value)` at `step`, as one event. Non-finite values are written as they
    /// are (TensorBoard shows them as gaps).
    pub fn scalars(&mut self, step: usize, scalars: &[(String, f32)]) -> Result<()> {
        if scalars.is_empty() {
            return Ok(());
        }
        self.write(&event(now(), step as i64, None, scalars))
    }
}

/// One scalar read back from an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The tag (`train/loss`).
    pub tag: String,
    /// The step.
    pub step: i64,
    /// The value.
    pub value: f32,
}

fn read_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields `(number, wire type, payload)` of a protocol buffer message.
fn fields(b: &[u8]) -> Option<Vec<(u64, u8, &[u8])>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = read_varint(b, &mut i)?;
        let (field, wire) = (key >> 3, (key & 7) as u8);
        let start = i;
        let end = match wire {
            0 => {
                read_varint(b, &mut i)?;
                i
            }
            1 => i + 8,
            2 => {
                let n = read_varint(b, &mut i)? as usize;
                let s = i;
                i = s.checked_add(n)?;
                out.push((field, wire, b.get(s..i)?));
                continue;
            }
            5 => i + 4,
            _ => return None,
        };
        out.push((field, wire, b.get(start..end)?));
        i = end;
    }
    Some(out)
}

/// Every scalar of an event file, in order; an error names the file and the record that is
/// truncated or fails its CRC.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>> {
    let data = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    let bad = |n: usize, what: &str| Error::Format {
        path: path.to_path_buf(),
        message: format!("event record {n}: {what}"),
    };
    let mut out = Vec::new();
    let mut i = 0;
    let mut n = 0;
    while i < data.len() {
        let head = data
            .get(i..i + 12)
            .ok_or_else(|| bad(n, "truncated header"))?;
        let len_bytes: [u8; 8] = head[..8].try_into().map_err(|_| bad(n, "header"))?;
        let crc = u32::from_le_bytes(head[8..12].try_into().map_err(|_| bad(n, "header"))?);
        if masked(crc32c(&len_bytes)) != crc {
            return Err(bad(n, "length CRC mismatch"));
        }
        let len = usize::try_from(u64::from_le_bytes(len_bytes))
            .ok()
            .filter(|&l| l <= data.len())
            .ok_or_else(|| bad(n, "a length beyond the file"))?;
        let body = data
            .get(i + 12..i + 12 + len)
            .ok_or_else(|| bad(n, "truncated data"))?;
        let tail = data
            .get(i + 12 + len..i + 16 + len)
            .ok_or_else(|| bad(n, "truncated data CRC"))?;
        let crc = u32::from_le_bytes(tail.try_into().map_err(|_| bad(n, "data CRC"))?);
        if masked(crc32c(body)) != crc {
            return Err(bad(n, "data CRC mismatch"));
        }
        let ev = fields(body).ok_or_else(|| bad(n, "not an Event"))?;
        let step = ev
            .iter()
            .find(|f| f.0 == 2 && f.1 == 0)
            .and_then(|f| read_varint(f.2, &mut 0))
            .unwrap_or(0) as i64;
        for (_, _, summary) in ev.iter().filter(|f| f.0 == 5 && f.1 == 2) {
            for (_, _, value) in fields(summary)
                .ok_or_else(|| bad(n, "not a Summary"))?
                .into_iter()
                .filter(|f| f.0 == 1 && f.1 == 2)
            {
                let v = fields(value).ok_or_else(|| bad(n, "not a Summary.Value"))?;
                let tag = v.iter().find(|f| f.0 == 1 && f.1 == 2);
                let val = v.iter().find(|f| f.0 == 2 && f.1 == 5);
                if let (Some(t), Some(x)) = (tag, val) {
                    out.push(Scalar {
                        tag: String::from_utf8_lossy(t.2).into_owned(),
                        step,
                        value: f32::from_le_bytes(x.2.try_into().map_err(|_| bad(n, "value"))?),
                    });
                }
            }
        }
        i += 16 + len;
        n += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value of "123456789" (RFC 3720, appendix B.4).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn scalars_round_trip_and_a_flipped_byte_is_caught() {
        let dir = std::env::temp_dir().join(format!("oml-tb-{}", std::process::id()));
        let mut w = EventWriter::create(&dir).expect("writer");
        w.scalars(3, &[("train/loss".into(), 0.25), ("train/lr".into(), 1e-4)])
            .expect("write");
        w.session_start(4).expect("session");
        w.scalars(300, &[("valid/OVERALL/cmc/1".into(), 0.5)])
            .expect("write");
        let path = w.path().to_path_buf();
        drop(w);
        let got = read_scalars(&path).expect("read");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].tag, "train/loss");
        assert_eq!((got[0].step, got[0].value), (3, 0.25));
        assert_eq!((got[2].step, got[2].value), (300, 0.5));
        let mut bytes = std::fs::read(&path).expect("bytes");
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).expect("write");
        let err = read_scalars(&path).expect_err("corrupt");
        assert!(err.to_string().contains("CRC"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
