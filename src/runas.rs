//! Running as an unprivileged user. Started as root by an init script, the connector
//! installs a boot-partition config (which needs root: the FAT partition belongs to
//! root), hands its config folder to the user and drops root before it opens a socket.
//! It needs no privilege after that: it listens on nothing.
//!
//! The user is looked up in `/etc/passwd` (no NSS on a static musl binary), or given as
//! numeric `UID:GID`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::config::store;

/// The user the connector runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    /// Its name (or the numeric spec it was given as).
    pub(crate) name: String,
    /// Its user id.
    pub(crate) uid: u32,
    /// Its primary group id, the only group it keeps.
    pub(crate) gid: u32,
}

/// Finds `spec`, a user name in `/etc/passwd` or `UID:GID`.
pub(crate) fn lookup(spec: &str) -> Result<Account, String> {
    if let Some((u, g)) = spec.split_once(':') {
        if let (Ok(uid), Ok(gid)) = (u.parse(), g.parse()) {
            return Ok(Account {
                name: spec.to_string(),
                uid,
                gid,
            });
        }
    }
    let passwd = fs::read_to_string("/etc/passwd")
        .map_err(|e| format!("cannot look up user {spec:?}: /etc/passwd: {e}"))?;
    lookup_in(&passwd, spec).ok_or_else(|| {
        format!(
            "no user {spec:?} in /etc/passwd: create it (the init script and systemd-sysusers \
             do) or pass --user UID:GID"
        )
    })
}

/// Finds `name` in the text of a passwd file.
fn lookup_in(passwd: &str, name: &str) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        Some(Account {
            name: name.to_string(),
            uid: f.next()?.parse().ok()?,
            gid: f.next()?.parse().ok()?,
        })
    })
}

/// Gives `config`, its `.prev` (and the last-known-good time, the device key and
/// credential beside them: [`crate::clock::state_path`], [`crate::identity::key_path`])
/// and their folder to `account`, and closes the folder to
/// everyone else (it holds the token). Nothing is written when all is as it should be.
///
/// The folder is handed over only when it holds nothing but the config's own files, so a
/// config kept directly in, say, `/etc` does not give `/etc` away.
///
/// Root runs this, in a folder the account may write to (it owns it from the last
/// start): every file is opened without following a symlink, checked on the open
/// descriptor and changed through it (`fchown`), so nothing the account placed there can
/// make root change another file. A file is handed over only if root created it (owned by
/// root, one link: a hard link to someone else's file has two) or it is the account's
/// already.
pub(crate) fn hand_over(config: &Path, account: &Account) -> Result<(), String> {
    let prev = store::prev_path(config);
    let clock = crate::clock::state_path(config);
    // An enrolled device's key and credential: made by the connector after it dropped
    // root, or by root (`mailslot identity --create`) before; the user reads the key and
    // replaces the credential.
    let key = crate::identity::key_path(config);
    let cred = crate::connector::device::cred_path(config);
    for file in [config, &prev, &clock, &key, &cred] {
        give(file, Kind::File, account, None)?;
    }
    let Some(dir) = config.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let Some(name) = config.file_name() else {
        return Ok(());
    };
    let dedicated = fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .all(|e| {
            let n = e.file_name();
            let n = n.as_encoded_bytes();
            let n = n.strip_prefix(b".").unwrap_or(n);
            [
                name.as_encoded_bytes(),
                crate::identity::KEY_FILE.as_bytes(),
                crate::connector::device::CRED_FILE.as_bytes(),
            ]
            .iter()
            .any(|own| n.starts_with(own))
        });
    if dedicated {
        give(dir, Kind::Dir, account, Some(0o700))
    } else {
        let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if meta.uid() != account.uid {
            log::warn!(
                "{} holds other files: not handing it to user {}; it must let that user in",
                dir.display(),
                account.name
            );
        }
        Ok(())
    }
}

/// What [`give`] expects to find.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
}

/// chowns `path` to `account` and sets `mode` when they differ, through a descriptor
/// opened without following symlinks. A missing file, or a symlink in the file's place,
/// is left alone (the config loader refuses what it cannot read).
fn give(path: &Path, kind: Kind, account: &Account, mode: Option<u32>) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    if kind == Kind::Dir {
        flags |= libc::O_DIRECTORY;
    }
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        // O_NOFOLLOW on a symlink: not ours to touch.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(()),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    let refuse = |why: String| {
        Err(format!(
            "refusing to give {} to user {}: {why}; remove it (root did not create it)",
            path.display(),
            account.name
        ))
    };
    match kind {
        Kind::File if !meta.is_file() => return Ok(()),
        Kind::Dir if !meta.is_dir() => return refuse("not a folder".into()),
        _ => {}
    }
    let theirs = meta.uid() == account.uid && meta.gid() == account.gid;
    if !theirs {
        if meta.uid() != 0 {
            return refuse(format!(
                "it belongs to uid {}, neither root nor that user",
                meta.uid()
            ));
        }
        if kind == Kind::File && meta.nlink() != 1 {
            return refuse(format!(
                "it has {} hard links: another name of the same file is elsewhere",
                meta.nlink()
            ));
        }
        // SAFETY: fchown takes the descriptor `file` owns, open for this call's length.
        let rc = unsafe {
            libc::fchown(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                account.uid as libc::uid_t,
                account.gid as libc::gid_t,
            )
        };
        if rc != 0 {
            return Err(format!(
                "cannot give {} to user {}: {}",
                path.display(),
                account.name,
                std::io::Error::last_os_error()
            ));
        }
    }
    if let Some(mode) = mode {
        if meta.permissions().mode() & 0o7777 != mode {
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Becomes `account` for good: supplementary groups, group, user. Must be called before
/// the runtime starts any thread. Without root this only checks that the process runs
/// as that user already.
pub(crate) fn drop_to(account: &Account) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        if uid == account.uid {
            return Ok(());
        }
        return Err(format!(
            "--user {} needs root: started as uid {uid}",
            account.name
        ));
    }
    if account.uid == 0 {
        return Ok(());
    }
    let groups = [account.gid as libc::gid_t];
    // SAFETY: `groups` holds the one gid the count says, alive for the call.
    if unsafe { libc::setgroups(1, groups.as_ptr()) } != 0 {
        return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: setgid takes no pointers; failure is reported by its return value.
    if unsafe { libc::setgid(account.gid as libc::gid_t) } != 0 {
        return Err(format!("setgid: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: setuid takes no pointers; failure is reported by its return value.
    if unsafe { libc::setuid(account.uid as libc::uid_t) } != 0 {
        return Err(format!("setuid: {}", std::io::Error::last_os_error()));
    }
    // Root must be gone for good: a setuid(0) that works means it is not.
    // SAFETY: as above; here success is the failure this checks for.
    let regained = unsafe { libc::setuid(0) } == 0;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    // SAFETY: getegid has no preconditions and cannot fail.
    let egid = unsafe { libc::getegid() };
    if regained || euid != account.uid || egid != account.gid {
        return Err(format!("could not drop root for user {}", account.name));
    }
    log::info!(
        "running as user {} (uid {}, gid {})",
        account.name,
        account.uid,
        account.gid
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::TempDir;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
        mailslot:x:998:997:mailslot:/etc/mailslot:/bin/false\n\
        broken:x:zz:1::/:/bin/false\n";

    #[test]
    fn passwd_lookup() {
        assert_eq!(
            lookup_in(PASSWD, "mailslot"),
            Some(Account {
                name: "mailslot".into(),
                uid: 998,
                gid: 997
            })
        );
        assert_eq!(lookup_in(PASSWD, "mail"), None);
        assert_eq!(lookup_in(PASSWD, "broken"), None);
        assert_eq!(lookup_in(PASSWD, ""), None);
        assert_eq!(lookup("123:456").unwrap().uid, 123);
        assert_eq!(lookup("123:456").unwrap().gid, 456);
        let e = lookup("no-such-user-here").unwrap_err();
        assert!(e.contains("no user \"no-such-user-here\""), "{e}");
    }

    /// The hand-over tests chown files: they need root, so they are ignored by default
    /// (a plain `cargo test` reports them as ignored, with this reason) and `.ci/run`,
    /// which runs as root, runs them with `--ignored`. Run by hand as non-root they fail
    /// rather than pass without having run.
    const NEEDS_ROOT: &str = "needs root (chown): cargo test --lib -- --ignored runas:: as root";

    fn require_root() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "{NEEDS_ROOT}");
    }

    #[test]
    #[ignore = "needs root (chown): cargo test --lib -- --ignored runas:: as root"]
    fn hand_over_a_dedicated_folder_only() {
        require_root();
        let dir = TempDir::new();
        let acct = Account {
            name: "test".into(),
            uid: 4242,
            gid: 4343,
        };
        let etc = dir.path().join("mailslot");
        fs::create_dir(&etc).unwrap();
        fs::set_permissions(&etc, fs::Permissions::from_mode(0o755)).unwrap();
        let config = etc.join("config.bin");
        fs::write(&config, b"x").unwrap();
        fs::write(store::prev_path(&config), b"y").unwrap();
        // The device key root made (`mailslot identity --create`) goes with them.
        let key = crate::identity::key_path(&config);
        crate::identity::load_or_create_key(&key).unwrap();
        hand_over(&config, &acct).unwrap();
        for p in [&etc, &config, &store::prev_path(&config), &key] {
            let m = fs::metadata(p).unwrap();
            assert_eq!((m.uid(), m.gid()), (4242, 4343), "{}", p.display());
        }
        assert_eq!(
            fs::metadata(&etc).unwrap().permissions().mode() & 0o777,
            0o700
        );

        // A shared folder keeps its owner; the files are still handed over.
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::write(shared.join("passwd"), b"").unwrap();
        let config = shared.join("config.bin");
        fs::write(&config, b"x").unwrap();
        hand_over(&config, &acct).unwrap();
        assert_eq!(fs::metadata(&shared).unwrap().uid(), 0);
        assert_eq!(fs::metadata(&config).unwrap().uid(), 4242);
    }

    /// A hard link planted where a config file is handed over: the file it names (owned
    /// by someone else, or by root outside the folder) keeps its owner.
    #[test]
    #[ignore = "needs root (chown): cargo test --lib -- --ignored runas:: as root"]
    fn hard_links_are_not_handed_over() {
        require_root();
        let dir = TempDir::new();
        let acct = Account {
            name: "test".into(),
            uid: 4242,
            gid: 4343,
        };
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let shadow = outside.join("shadow");
        fs::write(&shadow, b"root's").unwrap();
        let theirs = outside.join("theirs");
        fs::write(&theirs, b"another user's").unwrap();
        std::os::unix::fs::chown(&theirs, Some(5555), Some(5555)).unwrap();

        let etc = dir.path().join("mailslot");
        fs::create_dir(&etc).unwrap();
        let config = etc.join("config.bin");
        fs::write(&config, b"x").unwrap();
        for (target, planted) in [
            (&shadow, store::prev_path(&config)),
            (&theirs, crate::clock::state_path(&config)),
        ] {
            fs::hard_link(target, &planted).unwrap();
            let err = hand_over(&config, &acct).unwrap_err();
            assert!(err.contains(&planted.display().to_string()), "{err}");
            fs::remove_file(&planted).unwrap();
        }
        // A symlink is not followed either.
        std::os::unix::fs::symlink(&shadow, store::prev_path(&config)).unwrap();
        hand_over(&config, &acct).unwrap();
        assert_eq!(fs::metadata(&shadow).unwrap().uid(), 0);
        assert_eq!(fs::metadata(&theirs).unwrap().uid(), 5555);
        assert_eq!(fs::metadata(&config).unwrap().uid(), 4242);

        // A config that belongs to a third user is not taken from it.
        std::os::unix::fs::chown(&config, Some(5555), Some(5555)).unwrap();
        let err = hand_over(&config, &acct).unwrap_err();
        assert!(err.contains("uid 5555"), "{err}");
        assert_eq!(fs::metadata(&config).unwrap().uid(), 5555);
    }
}
