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
pub struct Account {
    /// Its name (or the numeric spec it was given as).
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group id, the only group it keeps.
    pub gid: u32,
}

/// Finds `spec`, a user name in `/etc/passwd` or `UID:GID`.
pub fn lookup(spec: &str) -> Result<Account, String> {
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

/// Gives `config`, its `.prev` and their folder to `account`, and closes the folder to
/// everyone else (it holds the token). Nothing is written when all is as it should be.
///
/// The folder is handed over only when it holds nothing but the config's own files, so a
/// config kept directly in, say, `/etc` does not give `/etc` away.
pub fn hand_over(config: &Path, account: &Account) -> Result<(), String> {
    let prev = store::prev_path(config);
    for file in [config, prev.as_path()] {
        match fs::symlink_metadata(file) {
            Ok(m) if m.is_file() => give(file, &m, account, None)?,
            _ => {}
        }
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
            let own = name.as_encoded_bytes();
            n.starts_with(own) || (n.first() == Some(&b'.') && n[1..].starts_with(own))
        });
    let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if dedicated {
        give(dir, &meta, account, Some(0o700))
    } else {
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

/// chowns `path` to `account` and sets `mode` when they differ.
fn give(
    path: &Path,
    meta: &fs::Metadata,
    account: &Account,
    mode: Option<u32>,
) -> Result<(), String> {
    if meta.uid() != account.uid || meta.gid() != account.gid {
        std::os::unix::fs::chown(path, Some(account.uid), Some(account.gid)).map_err(|e| {
            format!(
                "cannot give {} to user {}: {e}",
                path.display(),
                account.name
            )
        })?;
    }
    if let Some(mode) = mode {
        if meta.permissions().mode() & 0o7777 != mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Becomes `account` for good: supplementary groups, group, user. Must be called before
/// the runtime starts any thread. Without root this only checks that the process runs
/// as that user already.
pub fn drop_to(account: &Account) -> Result<(), String> {
    // SAFETY: these calls take no pointers except setgroups', which gets one valid gid.
    unsafe {
        if libc::geteuid() != 0 {
            if libc::getuid() == account.uid {
                return Ok(());
            }
            return Err(format!(
                "--user {} needs root: started as uid {}",
                account.name,
                libc::getuid()
            ));
        }
        if account.uid == 0 {
            return Ok(());
        }
        let groups = [account.gid as libc::gid_t];
        if libc::setgroups(1, groups.as_ptr()) != 0 {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        if libc::setgid(account.gid as libc::gid_t) != 0 {
            return Err(format!("setgid: {}", std::io::Error::last_os_error()));
        }
        if libc::setuid(account.uid as libc::uid_t) != 0 {
            return Err(format!("setuid: {}", std::io::Error::last_os_error()));
        }
        // Root must be gone for good: a setuid(0) that works means it is not.
        if libc::setuid(0) == 0 || libc::geteuid() != account.uid || libc::getegid() != account.gid
        {
            return Err(format!("could not drop root for user {}", account.name));
        }
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

    #[test]
    fn hand_over_a_dedicated_folder_only() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: chown needs root");
            return;
        }
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
        hand_over(&config, &acct).unwrap();
        for p in [&etc, &config, &store::prev_path(&config)] {
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
}
