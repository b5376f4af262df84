//! Unit tests of `mailslot access`'s argument handling, credentials and ssh-config output.
use super::*;

#[test]
fn the_edges_refusal_reaches_the_terminal_without_escape_sequences() {
    let e = ClientError::Refused {
        error: crate::wire::AccessError::Forbidden,
        message: "\u{1b}]0;owned\u{7}\u{1b}[2Jgo away".into(),
    };
    let text = explain(e, "ssh.dev42.example.com");
    assert!(!text.chars().any(char::is_control), "{text:?}");
    assert!(text.ends_with("go away"), "{text:?}");
}

#[test]
fn ssh_config_names_the_options_but_no_secrets() {
    let a = Args {
        hostname: Some("SSH.dev42.example.com".into()),
        edge: Some("edge.example.com:7844".into()),
        token: Some("msa1.secret.sig".into()),
        token_file: Some("/home/op/token".into()),
        transport: Some(Transport::Https),
        ..Args::default()
    };
    let text = ssh_config(&a).unwrap();
    assert!(text.contains("Host ssh.dev42.example.com\n"), "{text}");
    assert!(
        text.contains("access ssh --hostname %h --edge edge.example.com:7844"),
        "{text}"
    );
    assert!(
        text.contains("--transport https --token-file /home/op/token"),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
}

#[test]
fn edges_default_to_the_hostname() {
    let a = Args {
        hostname: Some("db.dev42.example.com".into()),
        token: Some("t".into()),
        ..Args::default()
    };
    let o = options(&a).unwrap();
    assert_eq!(o.quic_edge.to_string(), "db.dev42.example.com:7844");
    assert_eq!(o.https_edge.to_string(), "db.dev42.example.com:443");
    let a = Args {
        edge: Some("127.0.0.1:8443".into()),
        transport: Some(Transport::Https),
        ..a
    };
    assert_eq!(
        options(&a).unwrap().https_edge.to_string(),
        "127.0.0.1:8443"
    );
    assert!(validate_hostname("bad host").is_err());
}

/// The words a shell makes of the ProxyCommand line after ssh's `%` expansion
/// (`%h` → `host`, `%%` → `%`), as ssh runs it.
fn shell_words(text: &str, host: &str) -> Vec<String> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("  ProxyCommand "))
        .unwrap();
    let mut expanded = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (c, c == '%') {
            (_, true) => match chars.next() {
                Some('%') => expanded.push('%'),
                Some('h') => expanded.push_str(host),
                other => panic!("unexpected %{other:?} in {line}"),
            },
            (c, false) => expanded.push(c),
        }
    }
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf '%s\\0' {expanded}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{line}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(String::from)
        .collect()
}

#[test]
fn ssh_config_quotes_what_the_shell_and_ssh_would_read() {
    let dir = crate::config::testutil::TempDir::new();
    let marker = dir.path().join("ran");
    let evil = format!("$(touch {})`touch {}`", marker.display(), marker.display());
    let a = Args {
        hostname: Some("ssh.dev42.example.com".into()),
        edge: Some(format!("{evil}:7844")),
        edge_https: Some("it's \"a\" 100%h; \\ # x".into()),
        edge_ca: Some(dir.path().join("my ca's $HOME.pem")),
        service_id: Some("id%%".into()),
        ..Args::default()
    };
    let text = ssh_config(&a).unwrap();
    let words = shell_words(&text, "ssh.dev42.example.com");
    assert!(!marker.exists(), "the shell ran a command from:\n{text}");
    let exe = std::env::current_exe().unwrap();
    let ca = dir.path().join("my ca's $HOME.pem");
    let expect = [
        exe.to_str().unwrap(),
        "access",
        "ssh",
        "--hostname",
        "ssh.dev42.example.com",
        "--edge",
        &format!("{evil}:7844"),
        "--edge-https",
        "it's \"a\" 100%h; \\ # x",
        "--edge-ca",
        ca.to_str().unwrap(),
        "--service-token-id",
        "id%%",
    ];
    assert_eq!(words, expect, "{text}");
    // The block is three lines whatever the options hold.
    assert_eq!(text.lines().count(), 3, "{text}");
}

#[test]
fn ssh_config_refuses_line_breaks_and_control_characters() {
    for bad in [
        "e\nHost *\n  ProxyCommand touch /tmp/x",
        "e\r",
        "e\0",
        "e\x1b[2J",
    ] {
        let a = Args {
            hostname: Some("ssh.dev42.example.com".into()),
            edge: Some(bad.into()),
            ..Args::default()
        };
        let err = ssh_config(&a).unwrap_err();
        assert!(err.contains("--edge") && err.contains("control"), "{err}");
    }
}

#[test]
fn secrets_on_the_command_line_are_warned_about() {
    let a = Args {
        token: Some("msa1.x.y".into()),
        ..Args::default()
    };
    let w = cmdline_secret_warning(&a).unwrap();
    assert!(
        w.contains("--token") && w.contains("/proc/PID/cmdline"),
        "{w}"
    );
    assert!(
        w.contains("--token-file") && w.contains("MAILSLOT_ACCESS_TOKEN"),
        "{w}"
    );
    let a = Args {
        service_id: Some("id".into()),
        service_secret: Some("s".into()),
        ..Args::default()
    };
    let w = cmdline_secret_warning(&a).unwrap();
    assert!(w.contains("MAILSLOT_SERVICE_TOKEN_SECRET"), "{w}");
    let a = Args {
        token_file: Some("/t".into()),
        service_id: Some("id".into()),
        ..Args::default()
    };
    assert_eq!(cmdline_secret_warning(&a), None);
}
