//! The device's idea of "now" for certificate checks, and the last-known-good time that
//! keeps it from going back to 1970.
//!
//! A board without an RTC boots at 1970 until NTP answers. Certificates are checked
//! against the latest of three times ([`floor`], [`effective_secs`]):
//!
//! - the system clock;
//! - the time this binary was built ([`BUILD_UNIX`]);
//! - the last-known-good time: the system time a set clock showed on an earlier run,
//!   kept in a small file beside the config ([`state_path`]: `config.bin.clock`, one
//!   line of decimal Unix seconds).
//!
//! The file is written rarely, because the board's flash wears: only when the clock is
//! set and the stored time is at least a day old ([`due`]), checked once an hour and at
//! a clean stop. A time within a day of the stored one is never written, so the file
//! changes at most once a day and not at all on a board that runs for less than a day.
//! The time kept may therefore lag the true time by up to a day (and an hour): with
//! an unset clock, a certificate that expired less than that before the last stop is
//! still accepted.
//!
//! Each write is atomic (temp file, fsync, rename, fsync of the folder). A missing,
//! unreadable or garbled file only means no last-known-good time.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time at which this binary was built.
pub const BUILD_UNIX: u64 = match u64::from_str_radix(env!("MAILSLOT_BUILD_UNIX"), 10) {
    Ok(t) => t,
    Err(_) => 0,
};

/// The least time between two writes of the last-known-good file: a day.
pub(crate) const WRITE_EVERY_SECS: u64 = 24 * 3600;

/// How often a running connector asks [`Keeper::save_if_due`]: an hour. Asking writes
/// nothing unless a write is [`due`].
pub const CHECK_EVERY_SECS: u64 = 3600;

/// Largest last-known-good file read: one line of digits.
const MAX_FILE_LEN: usize = 32;

/// The last-known-good time this process knows, Unix seconds (0: none).
static LAST_KNOWN_GOOD: AtomicU64 = AtomicU64::new(0);

/// Where the last-known-good time of the config at `config` is kept:
/// `config.bin` → `config.bin.clock`, in the config's own folder (which `runas` hands
/// to the connector's user, and whose other files start with the config's name too).
pub(crate) fn state_path(config: &Path) -> PathBuf {
    let mut name = config.as_os_str().to_os_string();
    name.push(".clock");
    PathBuf::from(name)
}

/// The system clock, Unix seconds (0 before 1970).
pub fn system_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The earliest time "now" can be: the later of the build time and the last-known-good
/// time this process has loaded or saved.
pub(crate) fn floor() -> u64 {
    BUILD_UNIX.max(LAST_KNOWN_GOOD.load(Ordering::Relaxed))
}

/// The latest of `now` (the system clock), the build time and `last_known_good`.
pub(crate) fn effective_secs(now: u64, last_known_good: u64) -> u64 {
    now.max(BUILD_UNIX).max(last_known_good)
}

/// True when the system clock reads earlier than [`floor`]: it has not been set.
pub(crate) fn unset() -> bool {
    system_secs() < floor()
}

/// Raises the process's last-known-good time to `secs` (never lowers it).
fn remember(secs: u64) {
    LAST_KNOWN_GOOD.fetch_max(secs, Ordering::Relaxed);
}

/// True when `now`, read from the system clock, is worth writing over `stored`: the
/// clock is set (not before the build) and the stored time is a day old or missing.
pub(crate) fn due(stored: Option<u64>, now: u64) -> bool {
    now >= BUILD_UNIX && stored.is_none_or(|s| now >= s.saturating_add(WRITE_EVERY_SECS))
}

/// Keeps the last-known-good file of one config: loads it once, then writes it when
/// [`due`].
pub struct Keeper {
    path: PathBuf,
    /// The time in the file (as loaded or last written).
    stored: Option<u64>,
    /// A failed write was logged: later ones are not (the check runs hourly).
    warned: bool,
}

impl Keeper {
    /// Reads the last-known-good time of the config at `config` and raises the
    /// process's [`floor`] to it. A missing or unreadable file is no time at all.
    pub fn load(config: &Path) -> Keeper {
        let path = state_path(config);
        let stored = match read(&path) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("last-known-good time {} ignored: {e}", path.display());
                None
            }
        };
        if let Some(t) = stored {
            remember(t);
            let now = system_secs();
            if now >= BUILD_UNIX && now.saturating_add(WRITE_EVERY_SECS) < t {
                log::warn!(
                    "the system clock ({now}) reads more than a day earlier than the \
                     last-known-good time {t} in {}: certificates are checked against that \
                     time; if the clock is right, that file is wrong: delete it",
                    path.display()
                );
            }
        }
        Keeper {
            path,
            stored,
            warned: false,
        }
    }

    /// The time in the file.
    #[cfg(test)]
    pub(crate) fn stored(&self) -> Option<u64> {
        self.stored
    }

    /// Writes `now` (the system clock, Unix seconds) when [`due`]; returns whether it
    /// wrote. A failed write is logged (the first time) and tried again at the next call.
    pub fn save_if_due(&mut self, now: u64) -> bool {
        if !due(self.stored, now) {
            return false;
        }
        remember(now);
        match write_atomic(&self.path, now) {
            Ok(()) => {
                log::info!(
                    "last-known-good time {now} saved to {}",
                    self.path.display()
                );
                self.stored = Some(now);
                true
            }
            Err(e) => {
                if !std::mem::replace(&mut self.warned, true) {
                    log::warn!(
                        "cannot save the last-known-good time to {}: {e}; a device without \
                         a clock falls back to the build time after a restart",
                        self.path.display()
                    );
                }
                false
            }
        }
    }
}

/// The time in `path`: `None` when there is no file.
fn read(path: &Path) -> io::Result<Option<u64>> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // One read of a few bytes: the file is one short line, written whole by rename.
    let mut buf = [0u8; MAX_FILE_LEN];
    let n = file.read(&mut buf)?;
    std::str::from_utf8(buf.get(..n).unwrap_or_default())
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a number of seconds"))
}

/// Writes `secs` to `path` through a temp file beside it, fsynced and renamed.
fn write_atomic(path: &Path, secs: u64) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
        let mut file = options.open(&tmp)?;
        writeln!(file, "{secs}")?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::TempDir;

    #[test]
    fn effective_time_is_the_latest_of_three() {
        const { assert!(BUILD_UNIX > 1_700_000_000, "build time recorded") };
        assert_eq!(effective_secs(10, 0), BUILD_UNIX);
        assert_eq!(effective_secs(10, BUILD_UNIX + 5), BUILD_UNIX + 5);
        assert_eq!(
            effective_secs(BUILD_UNIX + 9, BUILD_UNIX + 5),
            BUILD_UNIX + 9
        );
    }

    #[test]
    fn written_at_most_once_a_day() {
        let dir = TempDir::new();
        let config = dir.path().join("config.bin");
        let file = state_path(&config);
        let t0 = BUILD_UNIX + 1000;

        let mut k = Keeper::load(&config);
        assert_eq!(k.stored(), None);
        // An unset clock (1970) is never written.
        assert!(!k.save_if_due(10));
        assert!(!file.exists());
        // The first set clock is.
        assert!(k.save_if_due(t0));
        assert_eq!(fs::read_to_string(&file).unwrap(), format!("{t0}\n"));
        // Hourly checks and a clean stop within the day write nothing.
        let before = fs::metadata(&file).unwrap().modified().unwrap();
        for h in 1..24 {
            assert!(!k.save_if_due(t0 + h * CHECK_EVERY_SECS), "hour {h}");
        }
        assert!(!k.save_if_due(t0 + WRITE_EVERY_SECS - 1));
        assert_eq!(fs::metadata(&file).unwrap().modified().unwrap(), before);
        assert_eq!(fs::read_to_string(&file).unwrap(), format!("{t0}\n"));
        // A day later it is written again, once.
        assert!(k.save_if_due(t0 + WRITE_EVERY_SECS));
        assert!(!k.save_if_due(t0 + WRITE_EVERY_SECS + 1));
        // A clock set back (or reset to 1970) never lowers it.
        assert!(!k.save_if_due(t0));

        // The next start reads it and raises the floor.
        let k = Keeper::load(&config);
        assert_eq!(k.stored(), Some(t0 + WRITE_EVERY_SECS));
        assert!(floor() >= t0 + WRITE_EVERY_SECS);
        // No temp file is left.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_garbled_file_is_no_time() {
        let dir = TempDir::new();
        let config = dir.path().join("config.bin");
        fs::write(state_path(&config), "yesterday\n").unwrap();
        assert_eq!(Keeper::load(&config).stored(), None);
        fs::write(state_path(&config), "9".repeat(100)).unwrap();
        assert_eq!(Keeper::load(&config).stored(), None);
    }
}
