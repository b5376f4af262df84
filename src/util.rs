//! Small helpers both programs use, owned by neither side: lowercase hex of ids,
//! random bytes, a poison-tolerant lock, a task that ends with its handle. Nothing here
//! knows about tunnels, configs or the network.

use std::sync::{Mutex, MutexGuard};

/// Lowercase hex of an id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Random bytes from the system, or from the clock if it has none.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No system randomness: fall back to the clock, good enough for ids and jitter.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8;
        }
    }
    b
}

/// Locks `m`, taking over a lock a panicking thread left poisoned. For data whose
/// every critical section is a single assignment or a whole-value update, so that a
/// panic cannot leave it half-updated.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The usage of one command of a program's `usage` text: each line that starts (after
/// two spaces) with `cmd` and the lines indented under it, as `usage: PROGRAM ...`.
/// Both binaries print their commands' `--help` with it.
pub fn usage_of(usage: &str, program: &str, cmd: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in usage.lines() {
        let body = line.strip_prefix("  ").unwrap_or(line);
        if line.starts_with("  ") && !body.starts_with(' ') {
            inside = body == cmd
                || body
                    .strip_prefix(cmd)
                    .is_some_and(|rest| rest.starts_with(' '));
            if inside {
                out.push_str("usage: ");
                out.push_str(program);
                out.push(' ');
                out.push_str(body);
                out.push('\n');
                continue;
            }
        } else if !line.starts_with("    ") {
            inside = false;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_picks_a_command_and_its_indented_lines() {
        let usage =
            "usage: p <command>\n\ncommands:\n  run --x\n        runs\n  run-more\n  version\n";
        assert_eq!(
            usage_of(usage, "p", "run"),
            "usage: p run --x\n        runs\n"
        );
        assert_eq!(usage_of(usage, "p", "version"), "usage: p version\n");
        assert_eq!(usage_of(usage, "p", "nothing"), "");
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn a_poisoned_lock_is_taken_over() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            panic!("poison");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
