//! curl, the real HTTP client, with its outcome as a struct.

use std::process::Command;
use std::time::Duration;

use super::{EdgeProc, TempDir};

/// What one curl run gave.
///
/// The helper asks curl for the status and total time (`-w`, written to stderr) and
/// for the response headers (`-D FILE`). A caller that passes its own `-w` or `-D`
/// (several URLs in one run, `-D -`) replaces the helper's: then `status` is 0, `time`
/// zero or `headers` empty, and the caller reads what it asked for from `body`.
pub struct Curl {
    /// curl exited 0.
    pub ok: bool,
    /// The HTTP status of the (last) response; 0 when there was none.
    pub status: u16,
    /// Its HTTP version as curl writes it ("1.1", "2"); "0" when there was none.
    pub version: String,
    /// The (last) response's header lines, names in lower case.
    pub headers: Vec<(String, String)>,
    /// What curl wrote to stdout: the body, unless the caller sent it elsewhere.
    pub body: Vec<u8>,
    /// curl's `time_total`.
    pub time: Duration,
    /// curl's own messages (without the helper's write-out line).
    pub stderr: String,
}

/// Marks the helper's write-out line on curl's stderr.
const MARK: &str = "@@mailslot-test-curl ";

impl Curl {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Runs curl (silent but for errors, at most 60 s) with `args`.
pub fn curl(args: &[&str]) -> Curl {
    let dir = TempDir::new("curl");
    let head = dir.join("headers");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-D"])
        .arg(&head)
        .args([
            "-w",
            &format!("%{{stderr}}{MARK}%{{http_code}} %{{http_version}} %{{time_total}}\\n"),
        ])
        .args(args)
        .output()
        .expect("curl is installed");
    let err = String::from_utf8_lossy(&out.stderr);
    let (mut status, mut version, mut time) = (0, String::new(), Duration::ZERO);
    let mut stderr = String::new();
    for line in err.lines() {
        let fields: Option<Vec<&str>> = line
            .strip_prefix(MARK)
            .map(|r| r.split_whitespace().collect());
        match fields.as_deref() {
            Some([code, http, secs]) => {
                status = code.parse().unwrap_or(0);
                version = http.to_string();
                time = secs
                    .parse()
                    .map(Duration::from_secs_f64)
                    .unwrap_or_default();
            }
            _ => {
                stderr.push_str(line);
                stderr.push('\n');
            }
        }
    }
    Curl {
        ok: out.status.success(),
        status,
        version,
        headers: last_headers(&std::fs::read_to_string(&head).unwrap_or_default()),
        body: out.stdout,
        time,
        stderr,
    }
}

/// The header lines of the last response in a `-D` dump (which holds one block per
/// response: interim 1xx ones and redirects come first).
fn last_headers(dump: &str) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    for line in dump.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            headers.clear();
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    headers
}

/// curl with `Host: host` against the edge's HTTP listener, asserting curl succeeded;
/// the status and the body (the image test destructures these two).
pub fn get(edge: &EdgeProc, host: &str, path: &str) -> (u16, Vec<u8>) {
    let url = format!("http://{}{path}", edge.http);
    let r = curl(&["-H", &format!("Host: {host}"), &url]);
    assert!(r.ok, "curl {url} failed: {}", r.stderr);
    (r.status, r.body)
}
