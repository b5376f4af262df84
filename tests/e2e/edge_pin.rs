//! `edge-pin`: a connector whose config pins the edge's key reaches only an edge with
//! that key, over both transports, on top of the CA check.

use std::process::Command;

use crate::common::*;

pub(crate) fn a_pinned_key_is_required_of_the_edge() {
    let edge = start_edge(init_edge(""));
    let token = edge.token("dev42", &["dev42.example.com"], "1h");
    let pin =
        mailslot::edge::init::edge_pin_of_cert_file(&edge.dir.path().join("edge.crt")).unwrap();
    let other = mailslot::tls::pin_to_string(&[7; 32]);
    let rules = "  - service: http_status:404\n";

    for protocol in ["quic", "http2"] {
        // The HTTP/2 fallback dials the tunnel port on TCP.
        let edge_addr = edge.tunnel.to_string();
        let yaml = |pins: &str| {
            format!(
                "{}edge-pin: {pins}\n",
                device_yaml_with(&edge_addr, &edge.ca(), protocol, &token, 1, rules)
            )
        };

        // Another key pinned: the CA vouches for the edge, the pin refuses it.
        let dir = TempDir::new("pin-other");
        let bin = compile(dir.path(), &yaml(&other));
        let p = Proc::spawn(
            "connector",
            Command::new(MAILSLOT).arg("run").arg("--config").arg(&bin),
        );
        let line = p.wait_line("is not one of the config's edge-pin keys");
        assert!(line.contains(&pin), "{protocol}: {line}");
        assert_eq!(p.count("registered: tunnel"), 0, "{protocol}");
        drop(p);

        // The edge's key among the pins: it registers.
        let dir = TempDir::new("pin-match");
        let p = start_connector(dir.path(), &yaml(&format!("[{other}, {pin}]")), 1);
        drop(p);
    }
}
