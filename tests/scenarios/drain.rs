//! A clean stop of the connector while a download runs.

use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::netns::*;
use crate::scene::*;

pub fn sigterm_lets_a_download_finish_and_exits_0() {
    let mut s = Scene::new();
    s.connect(Device::default());
    let dir = TempDir::new("dl");
    let file = dir.path().join("big.bin");
    // 24 MiB at 3 MiB/s: about 8 s in flight.
    let mut dl = Proc::spawn(
        "download",
        s.net
            .cmd(&s.net.visitor, "curl")
            .args(["-sS", "--limit-rate", "3M", "--max-time", "60"])
            .args(["-H", &format!("Host: {HOST}"), "-w", "%{http_code}\n"])
            .arg("-o")
            .arg(&file)
            .arg(format!("http://{}/big.bin", EDGE_IPS[0])),
    );
    let started = Instant::now();
    while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) < 1024 * 1024 {
        assert!(started.elapsed() < WAIT, "the download did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let mut c = s.connector.take().unwrap();
    c.signal(15);
    let term = Instant::now();
    c.wait_line("draining");
    // New requests during the drain: the only connector is leaving, so the edge says
    // the tunnel is offline (502) rather than hanging.
    let during = s.get(1, "/", 5);
    let st = c
        .wait_exit(Duration::from_secs(35))
        .expect("exits within the grace period");
    let exit_after = term.elapsed();
    assert_eq!(st.code(), Some(0), "{}", c.dump());
    let dst = dl
        .wait_exit(Duration::from_secs(60))
        .expect("download ends");
    assert!(dst.success(), "{}", dl.dump());
    assert_eq!(dl.count("200"), 1, "{}", dl.dump());
    let body = std::fs::read(&file).unwrap();
    assert_eq!(body.len() as u64, BIG);
    assert_eq!(sha256_hex(&body), sha256_hex(&pattern(BIG)));
    eprintln!(
        "measured: download completed during the drain; connector exited 0 {:.1}s after \
         SIGTERM; a new request during the drain got {during:?}",
        exit_after.as_secs_f32()
    );
    assert!(exit_after <= Duration::from_secs(32));
}
