//! Where `config.bin` lives on the device: atomic writes that keep the last good file,
//! and a loader that falls back to it.
//!
//! A write goes to a temp file in the same folder, which is fsynced; then the current
//! file, if it is a valid config, is copied to `config.bin.prev` (temp file, fsync,
//! rename); then the temp file is renamed over `config.bin` and the folder is fsynced.
//! Whenever power is lost, `config.bin` is the old or the new file, never a partial
//! one, and `config.bin.prev` is the one before. [`load`] takes the first that is a
//! valid config, so a file corrupted later (SD card) still leaves the device a config.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::codec::{self, DecodeError, MAX_FILE_LEN};
use super::DeviceConfig;

/// A config read by [`load`].
#[derive(Debug)]
pub struct Loaded {
    /// The config.
    pub config: Box<DeviceConfig>,
    /// The file it came from: the one asked for, or its `.prev`.
    pub path: PathBuf,
    /// Why the file asked for was rejected, when `.prev` was used.
    pub fallback_reason: Option<String>,
}

/// Why no config could be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Neither the file nor its `.prev` holds a valid config.
    #[error("no usable config: {}: {primary_error}; {}: {prev_error}", primary.display(), prev.display())]
    NoValidConfig {
        /// The file asked for.
        primary: PathBuf,
        /// Why it was rejected.
        primary_error: Box<DecodeError>,
        /// Its `.prev`.
        prev: PathBuf,
        /// Why that was rejected.
        prev_error: Box<DecodeError>,
    },
}

/// `path` with `.prev` appended: `config.bin` → `config.bin.prev`.
pub fn prev_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".prev");
    PathBuf::from(name)
}

/// Reads a file of at most [`MAX_FILE_LEN`] bytes; a larger one is refused by its size
/// before any of it is read.
pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, DecodeError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len > MAX_FILE_LEN as u64 {
        return Err(DecodeError::TooLarge { len });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The file may grow after the size check: read one byte past the limit at most.
    file.take(MAX_FILE_LEN as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > MAX_FILE_LEN {
        return Err(DecodeError::TooLarge {
            len: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// Reads and decodes one config file, without falling back.
pub fn decode_file(path: &Path) -> Result<Box<DeviceConfig>, DecodeError> {
    codec::decode(&read_bounded(path)?)
}

/// Loads `path`, or `path.prev` when `path` is missing or not a valid config.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let primary_error = match decode_file(path) {
        Ok(config) => {
            return Ok(Loaded {
                config,
                path: path.to_path_buf(),
                fallback_reason: None,
            })
        }
        Err(e) => e,
    };
    let prev = prev_path(path);
    match decode_file(&prev) {
        Ok(config) => Ok(Loaded {
            config,
            path: prev,
            fallback_reason: Some(format!("{}: {primary_error}", path.display())),
        }),
        Err(prev_error) => Err(LoadError::NoValidConfig {
            primary: path.to_path_buf(),
            primary_error: Box::new(primary_error),
            prev,
            prev_error: Box::new(prev_error),
        }),
    }
}

/// The prefix of `path`'s temp files: `.config.bin.tmp.`.
fn temp_prefix(name: &std::ffi::OsStr) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".tmp.");
    prefix
}

/// Writes `bytes` to `path` so that a crash at any moment leaves `path` either old or
/// new, and keeps the old file as `path.prev` if it was a valid config.
///
/// The old file is copied to `.prev` (through its own temp file) rather than renamed,
/// so `path` itself is never missing, not even between two renames; this costs one
/// more small write per compile, which is rare. Temp files left by an earlier crash are
/// removed first; two processes writing the same config at once is not supported (one
/// of them may fail, neither corrupts).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "config path has no file name")
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = temp_prefix(name);
    remove_stale_temps(dir, &prefix);
    let old = read_bounded(path)
        .ok()
        .filter(|old| codec::decode(old).is_ok());
    let tmp = write_temp(dir, &prefix, bytes)?;
    let installed = (|| {
        if let Some(old) = old {
            let prev_tmp = write_temp(dir, &prefix, &old)?;
            if let Err(e) = fs::rename(&prev_tmp, prev_path(path)) {
                let _ = fs::remove_file(&prev_tmp);
                return Err(e);
            }
        }
        fs::rename(&tmp, path)
    })();
    if let Err(e) = installed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

/// Puts `path.prev` back as `path` (temp file, fsync, rename, fsync of the folder),
/// leaving `path.prev` as it is: a pushed config rolled back. The restored bytes.
pub(crate) fn restore_prev(path: &Path) -> io::Result<Vec<u8>> {
    let prev = read_bounded(&prev_path(path)).map_err(|e| io::Error::other(e.to_string()))?;
    codec::decode(&prev)
        .map_err(|e| io::Error::other(format!("{}: {e}", prev_path(path).display())))?;
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "config path has no file name")
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = write_temp(dir, &temp_prefix(name), &prev)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()?;
    Ok(prev)
}

/// Writes `bytes` to a new temp file in `dir` and fsyncs it; removes it on failure.
fn write_temp(dir: &Path, prefix: &OsString, bytes: &[u8]) -> io::Result<PathBuf> {
    let (tmp, mut file) = create_temp(dir, prefix)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Creates a new temp file `.NAME.tmp.PID.N` that did not exist before.
fn create_temp(dir: &Path, prefix: &OsString) -> io::Result<(PathBuf, File)> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        // The file holds the tunnel token.
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut last_err = None;
    for n in 0..100u32 {
        let mut name = prefix.clone();
        name.push(format!("{}.{n}", std::process::id()));
        let tmp = dir.join(name);
        match options.open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no free temp file name")))
}

/// Removes temp files an interrupted write left behind; failures are harmless.
fn remove_stale_temps(dir: &Path, prefix: &OsString) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = prefix.as_encoded_bytes();
    for entry in entries.flatten() {
        if entry.file_name().as_encoded_bytes().starts_with(prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::codec::encode;
    use crate::config::testutil::{sample_config, TempDir};

    fn two_configs() -> (Vec<u8>, Vec<u8>) {
        let a = sample_config();
        let mut b = sample_config();
        b.tunnel = "other".try_into().unwrap();
        (encode(&a).unwrap(), encode(&b).unwrap())
    }

    #[test]
    fn write_rotates_and_load_falls_back() {
        let dir = TempDir::new();
        let path = dir.path().join("config.bin");
        let prev = prev_path(&path);
        let (a, b) = two_configs();
        write_atomic(&path, &a).unwrap();
        assert_eq!(fs::read(&path).unwrap(), a);
        assert!(!prev.exists());
        write_atomic(&path, &b).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b);
        assert_eq!(fs::read(&prev).unwrap(), a);
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.path, path);
        assert_eq!(loaded.config.tunnel, "other");
        assert!(loaded.fallback_reason.is_none());

        // A corrupt primary: load uses .prev and says why.
        fs::write(&path, &b[..b.len() - 1]).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.path, prev);
        assert_eq!(loaded.config.tunnel, "dev42");
        let reason = loaded.fallback_reason.unwrap();
        assert!(
            reason.contains("config.bin") && reason.contains("truncated"),
            "{reason}"
        );

        // Writing over a corrupt file keeps the good .prev.
        write_atomic(&path, &b).unwrap();
        assert_eq!(fs::read(&prev).unwrap(), a);

        // A missing primary falls back too.
        fs::remove_file(&path).unwrap();
        assert_eq!(load(&path).unwrap().path, prev);

        // Neither: the error names both files and both reasons.
        fs::write(&prev, b"junk").unwrap();
        let msg = load(&path).unwrap_err().to_string();
        assert!(
            msg.contains("config.bin:") && msg.contains("config.bin.prev:"),
            "{msg}"
        );
        assert!(
            msg.contains("truncated") && msg.contains("cannot read"),
            "{msg}"
        );

        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            leftovers
                .iter()
                .all(|n| !n.to_string_lossy().contains(".tmp.")),
            "{leftovers:?}"
        );
    }

    #[test]
    fn stale_temps_removed() {
        let dir = TempDir::new();
        let path = dir.path().join("config.bin");
        let stale = dir.path().join(".config.bin.tmp.1.0");
        fs::write(&stale, b"partial").unwrap();
        let other = dir.path().join(".other.bin.tmp.1.0");
        fs::write(&other, b"keep").unwrap();
        write_atomic(&path, &two_configs().0).unwrap();
        assert!(!stale.exists());
        assert!(other.exists());
    }

    #[test]
    fn oversized_file_refused_by_size() {
        let dir = TempDir::new();
        let path = dir.path().join("config.bin");
        let file = File::create(&path).unwrap();
        file.set_len(1 << 30).unwrap();
        assert!(matches!(decode_file(&path), Err(DecodeError::TooLarge { len }) if len == 1 << 30));
    }

    #[test]
    fn relative_path_in_current_folder() {
        assert_eq!(
            prev_path(Path::new("config.bin")),
            Path::new("config.bin.prev")
        );
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }
}
