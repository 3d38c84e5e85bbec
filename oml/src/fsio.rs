//! Files that are either whole or absent: written under a temporary name, flushed to the disk,
//! then renamed into place. A process killed (or a disk filling) in the middle leaves the old file
//! (or none), never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The temporary name `path` is written under before it is renamed into place.
pub(crate) fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Flushes a file (or a folder's entries) to the disk.
pub(crate) fn sync(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    f.sync_all().map_err(|e| Error::io("cannot flush", path, e))
}

/// Flushes a folder's entries (the renames in it) to the disk. Best effort: some file systems
/// cannot open folders for this.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Writes `path` whole or not at all: `write` fills a temporary file beside it, which is flushed
/// and renamed over `path`. On failure the temporary file is removed and `path` is unchanged.
pub(crate) fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io("cannot create folder", parent, e))?;
    let tmp = temp_name(path);
    let done = write(&tmp).and_then(|()| sync(&tmp)).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| Error::io("cannot rename", &tmp, e))
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done?;
    sync_dir(parent);
    Ok(())
}

/// [`write_atomic`] of bytes.
pub(crate) fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |tmp| {
        let mut f = std::fs::File::create(tmp).map_err(|e| Error::io("cannot create", tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("cannot write", tmp, e))
    })
}

/// [`write_atomic`] of tensors as safetensors.
pub(crate) fn save_safetensors_atomic(
    path: &Path,
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    write_atomic(path, |tmp| save_safetensors(tmp, tensors))
}

/// Tensors as a safetensors file (not atomic: see [`save_safetensors_atomic`]).
pub(crate) fn save_safetensors(
    path: &Path,
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    candle_core::safetensors::save(tensors, path).map_err(|e| {
        // candle wraps the I/O error; say what failed and where.
        Error::Msg(format!("cannot write {}: {e}", path.display()))
    })
}

/// The sha256 of a file, in hex.
pub(crate) fn sha256_of(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io("cannot read", path, e))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// A test hook: when the environment variable `OML_CRASH_AT` names this point (`name` or
/// `name:N` for its N-th time, counted from 1 in this process), the process aborts here, as a
/// `kill -9` would end it: nothing is flushed or cleaned up. The crash tests use it to stop a run
/// at each step of a checkpoint write.
pub(crate) fn crash_point(name: &str) {
    use std::sync::Mutex;
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, usize)>> = OnceLock::new();
    static SEEN: Mutex<usize> = Mutex::new(0);
    let target = TARGET.get_or_init(|| {
        let v = std::env::var("OML_CRASH_AT").ok()?;
        Some(match v.rsplit_once(':') {
            Some((n, k)) if k.parse::<usize>().is_ok() => (n.to_owned(), k.parse().unwrap_or(1)),
            _ => (v, 1),
        })
    });
    if let Some((n, k)) = target
        && n == name
    {
        let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        *seen += 1;
        if *seen == *k {
            eprintln!("OML_CRASH_AT={name}:{k}: aborting here");
            std::process::abort();
        }
    }
}
