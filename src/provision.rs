//! First-boot provisioning: a `config.bin` the user copied onto the boot partition
//! (FAT, writable from any laptop) is moved into the device's config folder when the
//! connector starts.
//!
//! ```text
//!  /boot/mailslot/config.bin            (or /boot/firmware/mailslot/config.bin)
//!        │  decode + validate: a bad file stays where it is, with an error in the log,
//!        │  and the installed config keeps running
//!        ▼
//!  /etc/mailslot/config.bin             written with store::write_atomic (the old
//!        │                              file is kept as config.bin.prev)
//!        ▼
//!  the boot copy is zeroed, fsynced,    the token must not linger on a FAT partition
//!  then deleted
//! ```
//!
//! Boot files are looked at in the order given; a missing one is not an error. Each
//! valid file is installed in turn (so the last valid one wins) and removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::{codec, store};

/// What happened to one boot file that was present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Installed as the config and removed from the boot partition.
    Installed,
    /// Identical to the installed config: only removed from the boot partition.
    Unchanged,
    /// Installed (or identical), but it could not be removed: the token is still there.
    NotRemoved(String),
    /// Not installed (unreadable, invalid, or the write failed); left where it is.
    Rejected(String),
}

/// One boot file that was present, and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The boot file.
    pub(crate) path: PathBuf,
    /// What happened to it.
    pub(crate) outcome: Outcome,
}

/// Installs each valid file of `boot` as `config` and removes it; logs one line per
/// file found. Files that do not exist are skipped silently.
pub(crate) fn install_from_boot(config: &Path, boot: &[PathBuf]) -> Vec<Report> {
    let mut reports = Vec::new();
    for path in boot {
        if fs::symlink_metadata(path).is_err() {
            continue;
        }
        let outcome = install_one(config, path);
        match &outcome {
            Outcome::Installed => log::info!(
                "provisioning: installed {} as {} and removed it from the boot partition",
                path.display(),
                config.display()
            ),
            Outcome::Unchanged => log::info!(
                "provisioning: {} is the installed config already; removed it from the boot \
                 partition",
                path.display()
            ),
            Outcome::NotRemoved(e) => log::error!(
                "provisioning: installed {} as {}, but cannot remove it: {e}; it holds the \
                 tunnel token: delete it from the boot partition",
                path.display(),
                config.display()
            ),
            Outcome::Rejected(e) => log::error!(
                "provisioning: {} not installed: {e}; the current config stays. Copy a valid \
                 config.bin there (`mailslot config check FILE`) or remove it",
                path.display()
            ),
        }
        reports.push(Report {
            path: path.clone(),
            outcome,
        });
    }
    reports
}

/// What `run` (and `provision`) do first, as root: install a boot-partition config,
/// then, given a user, hand the config to it and become it. A rejected boot file is not
/// an error (the installed config runs); an unknown user or a failed drop is.
pub fn prepare(config: &Path, boot: &[PathBuf], user: Option<&str>) -> Result<Vec<Report>, String> {
    let account = user.map(crate::runas::lookup).transpose()?;
    let reports = install_from_boot(config, boot);
    if let Some(account) = &account {
        crate::runas::hand_over(config, account)?;
        crate::runas::drop_to(account)?;
    }
    Ok(reports)
}

fn install_one(config: &Path, boot_file: &Path) -> Outcome {
    let meta = match fs::metadata(boot_file) {
        Ok(m) => m,
        Err(e) => return Outcome::Rejected(format!("cannot read it: {e}")),
    };
    if !meta.is_file() {
        return Outcome::Rejected("not a regular file".into());
    }
    let bytes = match store::read_bounded(boot_file) {
        Ok(b) => b,
        Err(e) => return Outcome::Rejected(e.to_string()),
    };
    if let Err(e) = codec::decode(&bytes) {
        return Outcome::Rejected(e.to_string());
    }
    let unchanged = fs::read(config).is_ok_and(|current| current == bytes);
    if !unchanged {
        if let Err(e) = install(config, &bytes) {
            return Outcome::Rejected(format!("cannot write {}: {e}", config.display()));
        }
    }
    if let Err(e) = remove_durably(boot_file) {
        return Outcome::NotRemoved(e.to_string());
    }
    if unchanged {
        Outcome::Unchanged
    } else {
        Outcome::Installed
    }
}

/// Writes `bytes` as `config`, creating its folder (mode 0700: it holds the token).
fn install(config: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = config.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir)?;
        }
    }
    store::write_atomic(config, bytes)
}

/// Overwrites `path`'s contents with zeros and syncs them, then removes it and syncs
/// its folder, so neither the token nor the file survives a power cut.
///
/// Unlinking alone leaves the bytes in the partition's free clusters, readable from a
/// raw image of it. Zeros written over the file's own length reach the same clusters
/// on FAT and ext4 (no copy-on-write); the flash controller of an SD card or USB stick
/// may still keep the old pages until it reuses them (see image/README.md).
fn remove_durably(path: &Path) -> io::Result<()> {
    wipe(path)?;
    fs::remove_file(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Some file systems cannot sync a folder; the removal itself has happened.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes zeros over the whole of `path` (no symlink followed; its length as opened)
/// and fsyncs them.
fn wipe(path: &Path) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let zeros = [0u8; 4096];
    let mut left = meta.len();
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(zeros.get(..n).unwrap_or_default())?;
        left -= n as u64;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::codec::encode;
    use crate::config::testutil::{sample_config, TempDir};

    struct Setup {
        _dir: TempDir,
        config: PathBuf,
        boot: PathBuf,
        firmware: PathBuf,
    }

    fn setup() -> Setup {
        let dir = TempDir::new();
        let etc = dir.path().join("etc/mailslot");
        let boot = dir.path().join("boot/mailslot");
        let firmware = dir.path().join("boot/firmware/mailslot");
        fs::create_dir_all(&boot).unwrap();
        fs::create_dir_all(&firmware).unwrap();
        Setup {
            config: etc.join("config.bin"),
            boot: boot.join("config.bin"),
            firmware: firmware.join("config.bin"),
            _dir: dir,
        }
    }

    fn other_config() -> Vec<u8> {
        let mut c = sample_config();
        c.tunnel = "other".try_into().unwrap();
        encode(&c).unwrap()
    }

    #[test]
    fn good_file_installed_and_removed() {
        let s = setup();
        let bytes = encode(&sample_config()).unwrap();
        fs::write(&s.boot, &bytes).unwrap();
        let reports = install_from_boot(&s.config, &[s.boot.clone(), s.firmware.clone()]);
        assert_eq!(
            reports,
            vec![Report {
                path: s.boot.clone(),
                outcome: Outcome::Installed
            }]
        );
        assert_eq!(fs::read(&s.config).unwrap(), bytes);
        assert!(!s.boot.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let dir_mode = fs::metadata(s.config.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dir_mode & 0o777, 0o700);
            let mode = fs::metadata(&s.config).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // A newer file replaces it; the old one is kept as .prev.
        let newer = other_config();
        fs::write(&s.firmware, &newer).unwrap();
        let reports = install_from_boot(&s.config, &[s.boot.clone(), s.firmware.clone()]);
        assert_eq!(reports[0].outcome, Outcome::Installed);
        assert_eq!(reports[0].path, s.firmware);
        assert_eq!(fs::read(&s.config).unwrap(), newer);
        assert_eq!(fs::read(store::prev_path(&s.config)).unwrap(), bytes);
        assert!(!s.firmware.exists());

        // The same file again is only removed.
        fs::write(&s.boot, &newer).unwrap();
        let reports = install_from_boot(&s.config, std::slice::from_ref(&s.boot));
        assert_eq!(reports[0].outcome, Outcome::Unchanged);
        assert!(!s.boot.exists());
        assert_eq!(fs::read(store::prev_path(&s.config)).unwrap(), bytes);
    }

    /// The boot file's bytes are zeros on the partition before it is removed: a second
    /// name of the same file (a hard link the test keeps) shows what is left of it.
    #[test]
    fn boot_copy_zeroed_before_removal() {
        let s = setup();
        let bytes = encode(&sample_config()).unwrap();
        fs::write(&s.boot, &bytes).unwrap();
        let witness = s.boot.with_file_name("witness");
        fs::hard_link(&s.boot, &witness).unwrap();
        let reports = install_from_boot(&s.config, std::slice::from_ref(&s.boot));
        assert_eq!(reports[0].outcome, Outcome::Installed);
        assert!(!s.boot.exists());
        let left = fs::read(&witness).unwrap();
        assert_eq!(left.len(), bytes.len());
        assert!(
            left.iter().all(|&b| b == 0),
            "token bytes left on the partition"
        );

        // The same when the file only duplicates the installed config.
        fs::write(&s.boot, &bytes).unwrap();
        fs::remove_file(&witness).unwrap();
        fs::hard_link(&s.boot, &witness).unwrap();
        let reports = install_from_boot(&s.config, std::slice::from_ref(&s.boot));
        assert_eq!(reports[0].outcome, Outcome::Unchanged);
        assert!(fs::read(&witness).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn bad_file_left_in_place_and_config_kept() {
        let s = setup();
        let good = encode(&sample_config()).unwrap();
        fs::create_dir_all(s.config.parent().unwrap()).unwrap();
        store::write_atomic(&s.config, &good).unwrap();
        let mut bad = other_config();
        let last = bad.len() - 1;
        bad[last] ^= 0xff; // checksum mismatch
        fs::write(&s.boot, &bad).unwrap();
        fs::write(&s.firmware, b"not a config").unwrap();
        let reports = install_from_boot(&s.config, &[s.boot.clone(), s.firmware.clone()]);
        assert_eq!(reports.len(), 2);
        for r in &reports {
            let Outcome::Rejected(why) = &r.outcome else {
                panic!("{r:?}");
            };
            assert!(!why.is_empty());
        }
        assert!(
            matches!(&reports[0].outcome, Outcome::Rejected(w) if w.contains("checksum")),
            "{reports:?}"
        );
        assert_eq!(fs::read(&s.boot).unwrap(), bad);
        assert_eq!(fs::read(&s.firmware).unwrap(), b"not a config");
        assert_eq!(fs::read(&s.config).unwrap(), good);
        assert!(!store::prev_path(&s.config).exists());
    }

    #[test]
    fn no_boot_file_is_a_no_op() {
        let s = setup();
        let reports = install_from_boot(&s.config, &[s.boot.clone(), s.firmware.clone()]);
        assert!(reports.is_empty());
        assert!(!s.config.exists());
        assert!(!s.config.parent().unwrap().exists());
        assert!(install_from_boot(&s.config, &[]).is_empty());
    }

    #[test]
    fn a_folder_in_the_way_is_rejected() {
        let s = setup();
        fs::create_dir(s.boot.with_file_name("dir.bin")).unwrap();
        let reports = install_from_boot(&s.config, &[s.boot.with_file_name("dir.bin")]);
        assert_eq!(
            reports[0].outcome,
            Outcome::Rejected("not a regular file".into())
        );
    }
}
