//! The launcher: which binary a board runs, and the file steps of a binary update.
//!
//! The binary init starts (`/usr/bin/mailslot`, on a read-only root: it always works)
//! is the launcher. At `mailslot run` start, once root is dropped (an installed binary
//! never runs as root), it looks in the state folder (`--state-dir`, default
//! `/var/lib/mailslot`, writable by the unprivileged user):
//!
//! ```text
//!  mailslot.trial present  -> count the boot in trial.boots; after MAX_TRIAL_BOOTS
//!                             boots that never confirmed: roll back (below); else
//!                             exec it (MAILSLOT_LAUNCHED=trial); an exec that fails
//!                             (ENOEXEC: wrong CPU) is a failed boot too
//!  mailslot present        -> exec it (MAILSLOT_LAUNCHED=installed)
//!  neither                 -> run on (this binary is the one)
//! ```
//!
//! A launched binary sees `MAILSLOT_LAUNCHED` and does not launch again. The trial
//! binary confirms itself when its first connection registers ([`confirm`]):
//! `mailslot` is hard-linked to `mailslot.prev`, then `mailslot.trial` is renamed to
//! `mailslot` (that rename is the commit point) and the folder fsynced. It rolls back
//! itself when it has not registered within its deadline ([`roll_back`]:
//! `mailslot.trial` renamed to `mailslot.failed`, the reason written). Before exec'ing
//! a trial the launcher also arms `alarm(deadline + 30 s)` (kept across exec), so a
//! trial that hangs without registering is killed and counts as a failed boot.
//!
//! Every step is a rename, or a link, of a complete fsynced file, then an fsync of the
//! folder: power lost at any moment leaves `mailslot.trial` (tried again, counted),
//! `mailslot` (the last confirmed binary) or neither (the launcher runs itself).
//!
//! Files of the state folder, each written whole (temp file, fsync, rename):
//!
//! | file | what |
//! |---|---|
//! | `mailslot.part` | a download in progress (resumed from its length) |
//! | `mailslot.trial`, `trial.version`, `trial.boots` | a release on trial, its version, its boots so far |
//! | `mailslot`, `mailslot.prev` | the confirmed binary, the one before it |
//! | `mailslot.failed`, `failed.info` | the last release rolled back, its version and why (that version is not taken again) |
//! | `upgrade.report` | the outcome to report at the next registration |

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the state folder is unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mailslot";
/// Set by the launcher for the binary it starts: `trial` or `installed`.
pub const LAUNCHED_ENV: &str = "MAILSLOT_LAUNCHED";
/// Set by the launcher: its own path, to start again after an install or a rollback.
pub const LAUNCHER_ENV: &str = "MAILSLOT_LAUNCHER";
/// Boots a trial gets without confirming before it is rolled back.
pub const MAX_TRIAL_BOOTS: u32 = 3;
/// How long a trial binary has to register, unless `--trial-deadline` says otherwise.
pub const DEFAULT_TRIAL_DEADLINE: Duration = Duration::from_secs(120);
/// How much longer than its deadline a trial may live before `alarm` kills it.
const ALARM_MARGIN_SECS: u64 = 30;

/// The confirmed binary.
pub const INSTALLED: &str = "mailslot";
/// A release on trial.
pub const TRIAL: &str = "mailslot.trial";
/// The confirmed binary before the last confirmed update.
pub const PREV: &str = "mailslot.prev";
/// The last release rolled back.
pub const FAILED: &str = "mailslot.failed";
/// A download in progress.
pub const PART: &str = "mailslot.part";
const BOOTS: &str = "trial.boots";
const TRIAL_VERSION: &str = "trial.version";
const REPORT: &str = "upgrade.report";
/// The version of `mailslot.failed` and why it was rolled back.
const FAILED_INFO: &str = "failed.info";
/// Largest small state file read (a version, a count, a report).
const MAX_SMALL_FILE: u64 = 2048;

/// What started this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Init (or a person) did: the launcher.
    Launcher,
    /// The launcher, for the confirmed binary in the state folder.
    Installed,
    /// The launcher, for a release on trial.
    Trial,
}

/// This process's role, from [`LAUNCHED_ENV`].
pub fn role() -> Role {
    match std::env::var(LAUNCHED_ENV).as_deref() {
        Ok("trial") => Role::Trial,
        Ok("installed") => Role::Installed,
        _ => Role::Launcher,
    }
}

/// The outcome of a release, kept in `upgrade.report` until an edge is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Applied { version: String },
    RolledBack { version: String, reason: String },
}

/// Which binary the launcher starts now, without starting it: the trial (with the
/// boots it had so far), the installed one, or none (the launcher itself).
pub fn choice(state: &Path) -> (Option<PathBuf>, u32) {
    let trial = state.join(TRIAL);
    if trial.exists() {
        return (Some(trial), read_boots(state));
    }
    let installed = state.join(INSTALLED);
    (installed.exists().then_some(installed), 0)
}

/// The launcher's step (see the module doc). Returns when this process is the one to
/// run: it was launched, or the state folder holds no binary to start. A trial that
/// used its boots is rolled back here.
pub fn launch(state: &Path, deadline: Duration) {
    if role() != Role::Launcher || !state.is_dir() {
        return;
    }
    let me = std::env::current_exe().ok();
    let mut exec_error: Option<String> = None;
    loop {
        let trial = state.join(TRIAL);
        if trial.exists() {
            let boots = read_boots(state);
            if boots >= MAX_TRIAL_BOOTS {
                let reason = match exec_error.take() {
                    Some(e) => format!("it cannot run: {e}"),
                    None => format!(
                        "it started {boots} times without registering with an edge \
                         (crashed, killed, or hung)"
                    ),
                };
                if let Err(e) = roll_back(state, &reason) {
                    log::error!("launcher: cannot roll back {}: {e}", trial.display());
                    return;
                }
                continue;
            }
            if let Err(e) = write_small(&state.join(BOOTS), format!("{}\n", boots + 1).as_bytes()) {
                // Without a count a crash loop would never end: run this binary.
                log::error!("launcher: cannot count the trial's boot: {e}; running this binary");
                return;
            }
            log::info!(
                "launcher: starting {} (boot {} of {MAX_TRIAL_BOOTS})",
                trial.display(),
                boots + 1
            );
            set_alarm(deadline.as_secs().saturating_add(ALARM_MARGIN_SECS));
            let e = exec(&trial, "trial", me.as_deref());
            set_alarm(0);
            log::error!("launcher: cannot start {}: {e}", trial.display());
            exec_error = Some(e.to_string());
            continue;
        }
        let installed = state.join(INSTALLED);
        if installed.exists() {
            let e = exec(&installed, "installed", me.as_deref());
            log::error!(
                "launcher: cannot start {}: {e}; running this binary instead",
                installed.display()
            );
        }
        return;
    }
}

/// Replaces this process with `bin`, same arguments; returns only on failure.
fn exec(bin: &Path, role: &str, launcher: Option<&Path>) -> io::Error {
    let mut set: Vec<(&str, &OsStr)> = vec![(LAUNCHED_ENV, OsStr::new(role))];
    if let Some(l) = launcher {
        set.push((LAUNCHER_ENV, l.as_os_str()));
    }
    execve(bin.as_os_str(), &set)
}

/// Starts the launcher again (same arguments): after an install, or after a trial
/// rolled itself back. Returns only on failure.
pub fn relaunch() -> io::Error {
    set_alarm(0);
    let launcher: OsString = match std::env::var_os(LAUNCHER_ENV) {
        Some(l) => l,
        None => match std::env::current_exe() {
            Ok(p) => p.into_os_string(),
            Err(e) => return e,
        },
    };
    execve(&launcher, &[])
}

/// execve(2) of `bin` with this process's arguments and environment, less the
/// launcher's variables, plus `set`. Plain execve rather than `std::process::Command`:
/// no `/bin/sh` retry on ENOEXEC (the reason stays visible), and none of std's process
/// spawning in the device binary.
fn execve(bin: &OsStr, set: &[(&str, &OsStr)]) -> io::Error {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |b: &[u8]| CString::new(b).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let built = (|| {
        let path = c(bin.as_bytes())?;
        let mut args = vec![path.clone()];
        for a in std::env::args_os().skip(1) {
            args.push(c(a.as_bytes())?);
        }
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            if k == LAUNCHED_ENV || k == LAUNCHER_ENV {
                continue;
            }
            env.push(c(&[k.as_bytes(), b"=", v.as_bytes()].concat())?);
        }
        for (k, v) in set {
            env.push(c(&[k.as_bytes(), b"=", v.as_bytes()].concat())?);
        }
        Ok::<_, io::Error>((path, args, env))
    })();
    let (path, args, env) = match built {
        Ok(b) => b,
        Err(e) => return e,
    };
    let argv: Vec<*const libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut busy = 0;
    loop {
        // SAFETY: `path` is a NUL-terminated string; `argv` and `envp` are
        // null-terminated arrays of pointers to NUL-terminated strings, all alive until
        // execve returns (it returns only on failure).
        unsafe {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        let e = io::Error::last_os_error();
        // ETXTBSY: a writer still holds the file open (a copy being finished, or a
        // descriptor another process inherited for an instant): not the binary's fault,
        // so not a failed boot while it passes.
        if e.raw_os_error() == Some(libc::ETXTBSY) && busy < EXEC_BUSY_TRIES {
            busy += 1;
            std::thread::sleep(EXEC_BUSY_WAIT);
            continue;
        }
        return e;
    }
}

/// How often an exec that finds the file open for writing is tried again, and the wait
/// before each try: a second in all.
const EXEC_BUSY_TRIES: u32 = 20;
const EXEC_BUSY_WAIT: Duration = Duration::from_millis(50);

fn set_alarm(secs: u64) {
    let secs = u32::try_from(secs).unwrap_or(u32::MAX);
    // SAFETY: alarm(2) only arms or cancels this process's timer.
    unsafe {
        libc::alarm(secs);
    }
}

/// Makes `part` (complete, checked) the release on trial: the version first, a fresh
/// boot count, then one rename.
pub fn install_trial(state: &Path, part: &Path, version: &str) -> io::Result<()> {
    File::open(part)?.sync_all()?;
    write_small(&state.join(TRIAL_VERSION), version.as_bytes())?;
    remove_if_there(&state.join(BOOTS))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(part, fs::Permissions::from_mode(0o755))?;
    }
    fs::rename(part, state.join(TRIAL))?;
    sync_dir(state)
}

/// The trial binary registered: it becomes the installed binary (the previous one is
/// kept as `mailslot.prev`). `None` when there was no trial (confirmed already).
pub fn confirm(state: &Path) -> io::Result<Option<String>> {
    let trial = state.join(TRIAL);
    if !trial.exists() {
        return Ok(None);
    }
    let installed = state.join(INSTALLED);
    if installed.exists() {
        let tmp = state.join(".mailslot.prev.tmp");
        remove_if_there(&tmp)?;
        fs::hard_link(&installed, &tmp)?;
        fs::rename(&tmp, state.join(PREV))?;
    }
    fs::rename(&trial, &installed)?;
    sync_dir(state)?;
    set_alarm(0);
    let version = read_small(&state.join(TRIAL_VERSION)).unwrap_or_default();
    let version = version.trim().to_string();
    write_report(
        state,
        &Report::Applied {
            version: version.clone(),
        },
    )?;
    remove_if_there(&state.join(BOOTS))?;
    remove_if_there(&state.join(TRIAL_VERSION))?;
    Ok(Some(version))
}

/// Undoes the release on trial: it becomes `mailslot.failed`, and `reason` is kept for
/// the next registration.
pub fn roll_back(state: &Path, reason: &str) -> io::Result<()> {
    let version = read_small(&state.join(TRIAL_VERSION)).unwrap_or_default();
    let version = version.trim().to_string();
    let trial = state.join(TRIAL);
    if trial.exists() {
        fs::rename(&trial, state.join(FAILED))?;
        sync_dir(state)?;
    }
    log::error!("release {version} rolled back: {reason}");
    let reason_line: String = reason.chars().take(400).collect();
    write_small(
        &state.join(FAILED_INFO),
        format!("{version}\n{}\n", reason_line.replace('\n', " ")).as_bytes(),
    )?;
    write_report(
        state,
        &Report::RolledBack {
            version,
            reason: reason.to_string(),
        },
    )?;
    remove_if_there(&state.join(BOOTS))?;
    remove_if_there(&state.join(TRIAL_VERSION))
}

/// The release last rolled back here and why: a board does not take that version
/// again (offer a new one).
pub fn failed_release(state: &Path) -> Option<(String, String)> {
    let text = read_small(&state.join(FAILED_INFO)).ok()?;
    let (version, reason) = text.split_once('\n')?;
    Some((version.to_string(), reason.trim_end().to_string()))
}

/// The outcome waiting to be reported, if any.
pub fn pending_report(state: &Path) -> Option<Report> {
    let text = read_small(&state.join(REPORT)).ok()?;
    let mut lines = text.splitn(3, '\n');
    let kind = lines.next()?;
    let version = lines.next()?.to_string();
    match kind {
        "applied" => Some(Report::Applied { version }),
        "rolled-back" => Some(Report::RolledBack {
            version,
            reason: lines.next().unwrap_or("").trim_end().to_string(),
        }),
        _ => None,
    }
}

/// Forgets the outcome once an edge was told.
pub fn reported(state: &Path) -> io::Result<()> {
    remove_if_there(&state.join(REPORT))
}

fn write_report(state: &Path, report: &Report) -> io::Result<()> {
    let text = match report {
        Report::Applied { version } => format!("applied\n{version}\n"),
        Report::RolledBack { version, reason } => {
            let reason: String = reason.chars().take(400).collect();
            format!("rolled-back\n{version}\n{}\n", reason.replace('\n', " "))
        }
    };
    write_small(&state.join(REPORT), text.as_bytes())
}

fn read_boots(state: &Path) -> u32 {
    read_small(&state.join(BOOTS))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        // A count that does not read (cut by a power loss) counts as used up.
        .unwrap_or_else(|| match state.join(BOOTS).exists() {
            true => MAX_TRIAL_BOOTS,
            false => 0,
        })
}

fn read_small(path: &Path) -> io::Result<String> {
    let mut s = String::new();
    File::open(path)?
        .take(MAX_SMALL_FILE)
        .read_to_string(&mut s)?;
    Ok(s)
}

/// Writes a small file whole: temp file, fsync, rename, fsync of the folder.
pub(crate) fn write_small(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent(path);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::TempDir;

    fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn install_confirm_and_the_next_rollback_leave_the_right_files() {
        let tmp = TempDir::new();
        let d = tmp.path();
        assert_eq!(choice(d), (None, 0));
        let part = file(d, PART, "v2");
        install_trial(d, &part, "2.0").unwrap();
        assert_eq!(choice(d), (Some(d.join(TRIAL)), 0));
        assert!(!part.exists());
        assert_eq!(confirm(d).unwrap().as_deref(), Some("2.0"));
        assert_eq!(confirm(d).unwrap(), None);
        assert_eq!(choice(d), (Some(d.join(INSTALLED)), 0));
        assert_eq!(
            pending_report(d),
            Some(Report::Applied {
                version: "2.0".into()
            })
        );
        reported(d).unwrap();
        assert_eq!(pending_report(d), None);

        let part = file(d, PART, "v3");
        install_trial(d, &part, "3.0").unwrap();
        write_small(&d.join(BOOTS), b"2\n").unwrap();
        assert_eq!(choice(d), (Some(d.join(TRIAL)), 2));
        roll_back(d, "it crashed\ntwice").unwrap();
        assert_eq!(
            failed_release(d),
            Some(("3.0".into(), "it crashed twice".into()))
        );
        assert_eq!(fs::read_to_string(d.join(INSTALLED)).unwrap(), "v2");
        assert_eq!(fs::read_to_string(d.join(FAILED)).unwrap(), "v3");
        assert_eq!(
            pending_report(d),
            Some(Report::RolledBack {
                version: "3.0".into(),
                reason: "it crashed twice".into()
            })
        );
        // The next confirmed update keeps the one before as prev.
        let part = file(d, PART, "v4");
        install_trial(d, &part, "4.0").unwrap();
        confirm(d).unwrap();
        assert_eq!(fs::read_to_string(d.join(PREV)).unwrap(), "v2");
        assert_eq!(fs::read_to_string(d.join(INSTALLED)).unwrap(), "v4");
    }

    #[test]
    fn an_unreadable_boot_count_counts_as_used_up() {
        let tmp = TempDir::new();
        let d = tmp.path();
        assert_eq!(read_boots(d), 0);
        fs::write(d.join(BOOTS), "").unwrap();
        assert_eq!(read_boots(d), MAX_TRIAL_BOOTS);
        fs::write(d.join(BOOTS), "1\n").unwrap();
        assert_eq!(read_boots(d), 1);
    }
}
