//! A real browser: Debian's `chromium` in headless mode (`.ci/run` installs the
//! `chromium` package). A test that needs it and finds none is reported as ignored
//! with the reason ([`Browser::find`] returns [`Skip`]).
//!
//! Credentials for HTTP Basic authentication go in the URL
//! (`http://admin:TOKEN@127.0.0.1:PORT/fleet`): Debian's headless Chromium answers the
//! server's `401` with them on a top-level navigation, and without them it gives up
//! with `net::ERR_INVALID_AUTH_CREDENTIALS` on stderr and an empty DOM.
//!
//! `MAILSLOT_SCREENSHOT_DIR=DIR` keeps a phone-sized PNG of every page a test passes to
//! [`Browser::keep_screenshot`], for a developer to look at.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Skip, TempDir};

/// Longest a page may take to load and render.
const PAGE_WAIT: Duration = Duration::from_secs(60);
/// A phone's viewport (an iPhone 12-15 in CSS pixels).
pub const PHONE: (u32, u32) = (390, 844);

/// Headless Chromium.
pub struct Browser {
    bin: PathBuf,
    /// Its own profile, so that tests running at once do not share one.
    profile: TempDir,
}

/// What the browser made of one URL.
pub struct Loaded {
    /// The DOM after loading, serialised (empty when the page did not load).
    pub dom: String,
    /// Chromium's own messages (load failures are named there).
    pub stderr: String,
}

impl Browser {
    /// `MAILSLOT_CHROMIUM`, or `chromium` (Debian), `chromium-browser` or
    /// `google-chrome` on the PATH.
    pub fn find() -> Result<Browser, Skip> {
        let named = std::env::var_os("MAILSLOT_CHROMIUM").map(PathBuf::from);
        let path = std::env::var_os("PATH").unwrap_or_default();
        let found = named.into_iter().find(|p| p.is_file()).or_else(|| {
            ["chromium", "chromium-browser", "google-chrome"]
                .iter()
                .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
                .find(|p| p.is_file())
        });
        match found {
            Some(bin) => Ok(Browser {
                bin,
                profile: TempDir::new("chromium"),
            }),
            None => Err(Skip(
                "no chromium (apt-get install chromium, or set MAILSLOT_CHROMIUM)".into(),
            )),
        }
    }

    /// Runs Chromium headless on `url` with `extra` flags, to its end.
    fn run(&self, url: &str, extra: &[&str]) -> Loaded {
        let child = Command::new(&self.bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        let deadline = Instant::now() + PAGE_WAIT;
        let pid = child.id();
        // Chromium exits once the page is loaded; past the deadline it is killed.
        let waited = std::thread::spawn(move || child.wait_with_output());
        while !waited.is_finished() {
            if Instant::now() > deadline {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                panic!("chromium did not finish {url} within {PAGE_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = waited.join().unwrap().unwrap();
        Loaded {
            dom: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The DOM of `url` once loaded (`--dump-dom`).
    pub fn dump_dom(&self, url: &str) -> Loaded {
        self.run(url, &["--dump-dom"])
    }

    /// A screenshot of `url` in a `width`×`height` window, written to `png`.
    pub fn screenshot(&self, url: &str, png: &Path, (width, height): (u32, u32)) {
        let loaded = self.run(
            url,
            &[
                &format!("--screenshot={}", png.display()),
                &format!("--window-size={width},{height}"),
            ],
        );
        let len = std::fs::metadata(png).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > 1000,
            "no screenshot of {url} in {}:\n{}",
            png.display(),
            loaded.stderr
        );
    }

    /// With `MAILSLOT_SCREENSHOT_DIR` set: a phone-sized screenshot of `url` saved there
    /// as `NAME.png`; its path is printed.
    pub fn keep_screenshot(&self, url: &str, name: &str) {
        let Some(dir) = std::env::var_os("MAILSLOT_SCREENSHOT_DIR") else {
            return;
        };
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let png = dir.join(format!("{name}.png"));
        self.screenshot(url, &png, PHONE);
        println!("screenshot: {}", png.display());
    }
}
