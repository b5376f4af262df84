//! `mailslot-edge`: the server connectors dial and visitors reach.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use mailslot::edge::{
    access, config::EdgeConfig, init, policy, token, Edge, EdgeSettings, Listeners,
};

/// See the `jemalloc` feature in Cargo.toml for why.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const USAGE: &str = "usage: mailslot-edge <command> [options]

commands:
  init --dir DIR --hostname NAME [--hostname NAME ...] [--cert FILE --key FILE]
        write DIR/edge.yml, an Ed25519 signing key pair and, without --cert, a private
        CA (ca.pem) and a certificate for the hostnames signed by it
  token --config edge.yml --tunnel NAME --allow PATTERN [--allow PATTERN ...]
        [--expires DURATION]
        print a signed tunnel token for the hostname patterns (exact or *.wildcard);
        DURATION like 90d, 12h, 30m (default 365d)
  access-token --config edge.yml --user NAME --hostname PATTERN [--hostname PATTERN ...]
        [--ttl DURATION]
        print a signed access token for `mailslot access` and HTTP hostnames with an
        access policy; PATTERN like ssh.dev42.example.com, *.dev42.example.com or
        ssh.*.example.com; DURATION like 8h (the default), 30m, 7d (at most 31d)
  enroll-key --config edge.yml --fleet NAME --hostname PATTERN [--hostname PATTERN ...]
        [--max-devices N] [--expires DURATION]
        print a signed enrolment key for the devices of fleet NAME (`enroll:` in the
        device config); PATTERN like '{device}.NAME.example.com', where {device} (a
        whole label) becomes each device's id; at most N devices enrol with the key;
        DURATION like 30d (default 365d): devices enrolled keep working after it
  serve --config edge.yml
        serve connectors and visitors until SIGTERM or Ctrl-C; SIGHUP reloads access
        policies, service tokens, revocations, verify keys and certificates from
        edge.yml
  devices ls --config edge.yml [--fleet F] [--offline] [--json]
        list the devices the running edge knows (through its admin-listen, with its
        admin-token): id, name, fleet, online or offline, last seen, version,
        protocol, RTT, temperature, load; --json prints the admin API's JSON
  devices show --config edge.yml ID [--json]
        every field of one device, its health and its connections
  devices revoke --config edge.yml ID
        cut one device at once and for good: it cannot register again
  devices push-config --config edge.yml (ID... | --fleet F) config.yml [--canary N%]
        [--canary-wait DURATION] [--no-wait] [--json]
        compile config.yml, sign it with the fleet's config key and send it to the
        devices (online ones first; with --canary, N% of them first, the rest once those
        applied it; stopped by the first rollback, or by a canary silent for
        --canary-wait, default 5m); prints the rollout id and follows it until it ends
        or only offline devices are left (they get it when they return)
  devices upgrade --config edge.yml (ID... | --fleet F) --version V [--canary N%]
        [--canary-wait DURATION] [--metered-ok] [--no-wait] [--json]
        offer release V (`release add`) to the devices, the build for each device's
        architecture; canaries first, stopped by the first rollback, as push-config
        (--canary-wait default 15m: a download takes time); --metered-ok lets devices
        on a metered link download it
  revoke tunnel ID... --config edge.yml [--json]
  revoke access-token ID... --config edge.yml [--json]
        revoke tunnels (the id `token` printed) or access tokens for good, through
        the running edge (its admin-listen, with its admin-token): kept in the fleet
        store and enforced at once by every edge sharing it (a cluster's Redis);
        needs `fleet:`. The revoked-tunnels: and revoked-access-tokens: lists of
        edge.yml keep working
  revoke ls --config edge.yml [--json]
        list the tunnels and access tokens revoked through the fleet store
  release keygen --out release.key
        make the release key (PKCS#8, mode 0600; keep it offline) and release.key.pub;
        print the public key for `fleet: release-key:`
  release sign FILE --key release.key --target TRIPLE [--version V]
        sign a device binary (on a workstation): write FILE.sig; the version is read
        from the binary unless given
  release add FILE --target TRIPLE [--sig FILE.sig | --key release.key]
        [--version V] [--config edge.yml]
        record a signed release in the releases folder (`fleet: releases:`, default
        releases/ beside edge.yml); refused unless `fleet: release-key:` verifies it
  release ls [--config edge.yml]
        list the recorded releases: version, target, size, SHA-256
  version

RUST_LOG=debug (or info, warn, error) sets the log level; the default is info.
";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailslot-edge: {e}");
            ExitCode::from(1)
        }
    }
}

/// The usage of one command: its lines of [`USAGE`], as `usage: mailslot-edge ...`.
fn usage_of(cmd: &str) -> String {
    mailslot::util::usage_of(USAGE, "mailslot-edge", cmd)
}

fn arg_err(e: lexopt::Error) -> String {
    e.to_string()
}

fn string(parser: &mut lexopt::Parser) -> Result<String, String> {
    use lexopt::ValueExt;
    parser.value().map_err(arg_err)?.string().map_err(arg_err)
}

fn real_main() -> Result<(), String> {
    let mut parser = lexopt::Parser::from_env();
    let Some(cmd) = command(&mut parser)? else {
        print!("{USAGE}");
        return Ok(());
    };
    if cmd == "release" {
        return release_cmd(&mut parser);
    }
    if cmd == "revoke" {
        return mailslot::edge::fleet::revoke_cli::main(
            parser.raw_args().map_err(arg_err)?,
            &usage_of(&cmd),
        );
    }
    if cmd == "devices" {
        return mailslot::edge::fleet::cli::main(
            parser.raw_args().map_err(arg_err)?,
            &usage_of(&cmd),
        );
    }
    let Some(args) = Args::parse(&cmd, &mut parser)? else {
        return Ok(());
    };
    match cmd.as_str() {
        "init" => init_cmd(args),
        "token" => token_cmd(args),
        "access-token" => access_token_cmd(args),
        "enroll-key" => enroll_key_cmd(args),
        "serve" => serve_cmd(args),
        "version" => {
            println!("mailslot-edge {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => Err(format!("unknown command {cmd:?}\n\n{USAGE}")),
    }
}

/// The command word; `None` when the usage was asked for (or nothing was given).
fn command(parser: &mut lexopt::Parser) -> Result<Option<String>, String> {
    use lexopt::prelude::*;
    match parser.next().map_err(arg_err)? {
        Some(Value(v)) => v.string().map(Some).map_err(arg_err),
        Some(Long("version")) => Ok(Some("version".into())),
        Some(Long("help")) | Some(Short('h')) | None => Ok(None),
        Some(other) => Err(other.unexpected().to_string()),
    }
}

/// The options after the command word (every command takes the same set; each uses
/// its own).
struct Args {
    config: Option<PathBuf>,
    dir: Option<PathBuf>,
    hostnames: Vec<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    tunnel: Option<String>,
    allow: Vec<String>,
    expires: Duration,
    user: Option<String>,
    ttl: Duration,
    fleet: Option<String>,
    max_devices: Option<u32>,
}

impl Args {
    /// Reads the options of `cmd`; `None` when `--help` printed its usage.
    fn parse(cmd: &str, parser: &mut lexopt::Parser) -> Result<Option<Args>, String> {
        use lexopt::prelude::*;
        let mut args = Args {
            config: None,
            dir: None,
            hostnames: Vec::new(),
            cert: None,
            key: None,
            tunnel: None,
            allow: Vec::new(),
            expires: Duration::from_secs(365 * 86400),
            user: None,
            ttl: Duration::from_secs(8 * 3600),
            fleet: None,
            max_devices: None,
        };
        while let Some(arg) = parser.next().map_err(arg_err)? {
            match arg {
                Long("help") | Short('h') => {
                    let usage = usage_of(cmd);
                    if usage.is_empty() {
                        return Err(format!("unknown command {cmd:?}\n\n{USAGE}"));
                    }
                    print!("{usage}");
                    return Ok(None);
                }
                Long("config") | Short('c') => {
                    args.config = Some(parser.value().map_err(arg_err)?.into())
                }
                Long("dir") => args.dir = Some(parser.value().map_err(arg_err)?.into()),
                Long("hostname") => args.hostnames.push(string(parser)?),
                Long("cert") => args.cert = Some(parser.value().map_err(arg_err)?.into()),
                Long("key") => args.key = Some(parser.value().map_err(arg_err)?.into()),
                Long("tunnel") => args.tunnel = Some(string(parser)?),
                Long("allow") => args.allow.push(string(parser)?),
                Long("expires") => {
                    let v = string(parser)?;
                    args.expires = parse_ttl("--expires", &v)?;
                }
                Long("user") => args.user = Some(string(parser)?),
                Long("ttl") => args.ttl = parse_ttl("--ttl", &string(parser)?)?,
                Long("fleet") => args.fleet = Some(string(parser)?),
                Long("max-devices") => {
                    let v = string(parser)?;
                    let n = v
                        .parse()
                        .map_err(|_| format!("--max-devices: {v:?} is not a number"))?;
                    args.max_devices = Some(n);
                }
                other => return Err(format!("{}\n\n{USAGE}", other.unexpected())),
            }
        }
        Ok(Some(args))
    }
}

/// `init`: writes the edge's directory, then says what to do next.
fn init_cmd(args: Args) -> Result<(), String> {
    let dir = args.dir.ok_or("init: --dir DIR is required")?;
    if args.hostnames.is_empty() {
        return Err("init: --hostname NAME is required (the name connectors dial)".into());
    }
    let cert = match (args.cert, args.key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("init: --cert and --key go together".into()),
    };
    let own_pki = cert.is_none();
    let cert_file = match &cert {
        Some((c, _)) => c.clone(),
        None => dir.join(init::CERT),
    };
    for f in init::init(&dir, &args.hostnames, cert)? {
        println!("wrote {}", f.display());
    }
    println!(
        "\nThe edge's key, for devices that pin it (`edge-pin:` in the device config):\n  {}",
        init::edge_pin_of_cert_file(&cert_file)?
    );
    if own_pki {
        println!(
            "\nThe certificate is signed by a private CA ({}): give it to connectors as `edge-ca`.",
            dir.join(init::CA_CERT).display()
        );
    }
    println!(
        "Next: mailslot-edge token --config {} --tunnel NAME --allow HOSTNAME",
        dir.join(init::EDGE_YML).display()
    );
    Ok(())
}

/// `token`: signs a tunnel token, prints it on stdout and what it grants on stderr.
fn token_cmd(args: Args) -> Result<(), String> {
    let config = args.config.ok_or("token: --config edge.yml is required")?;
    let tunnel = args.tunnel.ok_or("token: --tunnel NAME is required")?;
    if args.allow.is_empty() {
        return Err("token: at least one --allow HOSTNAME pattern is required".into());
    }
    for a in &args.allow {
        check_pattern(a)?;
    }
    let cfg = EdgeConfig::load(&config)?;
    let key_path = cfg
        .signing_key
        .ok_or("token: edge.yml has no signing-key; tokens are issued where the key is")?;
    let key = init::load_signing_key(&key_path)?;
    let signed = init::issue_tunnel_token(&key, &tunnel, &args.allow, args.expires.as_secs())?;
    let now = token::now_unix();
    let claims: token::TunnelClaims =
        token::verify(&signed, token::TUNNEL_PREFIX, &[init::public_key_of(&key)])
            .map_err(|e| format!("the new token does not verify: {e}"))?;
    // The token on stdout alone, so `$(mailslot-edge token ...)` captures just it.
    println!("{signed}");
    eprintln!(
        "tunnel {} id {id} may serve {}; expires in {}s (revoke with `mailslot-edge revoke \
         tunnel {id}`, or revoked-tunnels: [{id}] and SIGHUP)",
        claims.tunnel,
        claims.hosts.join(", "),
        claims.expires.saturating_sub(now),
        id = mailslot::util::hex(&claims.id),
    );
    Ok(())
}

/// `access-token`: signs an access token, prints it on stdout and its id on stderr.
fn access_token_cmd(args: Args) -> Result<(), String> {
    let config = args
        .config
        .ok_or("access-token: --config edge.yml is required")?;
    let user = args.user.ok_or("access-token: --user NAME is required")?;
    if args.hostnames.is_empty() {
        return Err("access-token: at least one --hostname PATTERN is required".into());
    }
    let cfg = EdgeConfig::load(&config)?;
    let key_path = cfg
        .signing_key
        .ok_or("access-token: edge.yml has no signing-key; tokens are issued where the key is")?;
    let key = init::load_signing_key(&key_path)?;
    let ttl = args.ttl;
    let token = policy::issue_access_token(&key, &user, &args.hostnames, ttl.as_secs())?;
    // The token on stdout alone, so `$(mailslot-edge access-token ...)` captures it.
    println!("{token}");
    let id = mailslot::util::hex(&policy::access_token_id(&token));
    eprintln!(
        "access token {id} for {user}: {}; expires in {}s (revoke with `mailslot-edge \
         revoke access-token {id}`, or revoked-access-tokens: [{id}] and SIGHUP)",
        args.hostnames.join(", "),
        ttl.as_secs()
    );
    Ok(())
}

/// `enroll-key`: signs an enrolment key, prints it on stdout and what it grants on
/// stderr.
fn enroll_key_cmd(args: Args) -> Result<(), String> {
    use mailslot::edge::fleet::enroll;
    let config = args
        .config
        .ok_or("enroll-key: --config edge.yml is required")?;
    let fleet = args.fleet.ok_or("enroll-key: --fleet NAME is required")?;
    if args.hostnames.is_empty() {
        return Err(
            "enroll-key: at least one --hostname PATTERN is required, like \
             '{device}.NAME.example.com'"
                .into(),
        );
    }
    let cfg = EdgeConfig::load(&config)?;
    let key_path = cfg
        .signing_key
        .ok_or("enroll-key: edge.yml has no signing-key; keys are issued where the key is")?;
    let key = init::load_signing_key(&key_path)?;
    let text = enroll::issue_enroll_key(
        &key,
        &fleet,
        &args.hostnames,
        args.max_devices,
        args.expires.as_secs(),
    )
    .map_err(|e| format!("enroll-key: {e}"))?;
    let claims = enroll::verify_enroll_key(&text, &[init::public_key_of(&key)], token::now_unix())
        .map_err(|e| format!("the new enrolment key does not verify: {e}"))?;
    // The key on stdout alone, so `$(mailslot-edge enroll-key ...)` captures just it.
    println!("{text}");
    eprintln!(
        "enrolment key {} of fleet {}: devices get {}; {}; expires in {}s",
        mailslot::util::hex(&claims.key_id),
        claims.fleet,
        claims.hostnames.join(", "),
        match claims.max_devices {
            Some(n) => format!("at most {n} devices"),
            None => "no device limit".into(),
        },
        claims.expires.saturating_sub(token::now_unix()),
    );
    Ok(())
}

/// `serve`: loads `edge.yml`, binds its listeners, then serves until SIGTERM or
/// Ctrl-C, reloading on SIGHUP.
fn serve_cmd(args: Args) -> Result<(), String> {
    let config = args.config.ok_or("serve: --config edge.yml is required")?;
    let cfg = EdgeConfig::load(&config)?;
    let settings = EdgeSettings::load(&cfg)?;
    let listeners = Listeners::bind(&cfg)?;
    let access_policy = policy::AccessPolicy::load(&cfg.access)?;
    let tcp_ports = access::bind_tcp_ports(&cfg.access.tcp_ports)?;
    let signing = cfg
        .signing_key
        .as_deref()
        .map(init::load_signing_key)
        .transpose()?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cfg.workers {
        rt.worker_threads(n.get());
    }
    let rt = rt
        .thread_name("edge-worker")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
        let edge = Edge::new(settings)
            .with_access(access_policy, tcp_ports)
            .with_admin_token(cfg.admin_token.clone())
            .with_fleet_in(&cfg.fleet, cfg.cluster.as_ref(), signing)?
            .with_releases(&cfg.releases)
            .with_acme(&cfg)?;
        let mut reloader = edge.reloader(config, cfg);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if let Err(e) = reloader.reload() {
                    log::error!("edge.yml not reloaded, the running config stays: {e}");
                }
            }
        });
        edge.serve(listeners, async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
    })
}

/// "90d", "12h", "30m", "45s" or a number of seconds.
fn parse_ttl(flag: &str, v: &str) -> Result<Duration, String> {
    if let Some(days) = v.strip_suffix('d') {
        let d: u64 = days
            .parse()
            .map_err(|_| format!("{flag}: {v:?} is not a duration like 90d"))?;
        return Ok(Duration::from_secs(d.saturating_mul(86400)));
    }
    mailslot::edge::config::parse_duration(v).map_err(|e| format!("{flag}: {e}"))
}

/// A tunnel token's hostname pattern: exact or `*.` ([`mailslot::hostname`]).
fn check_pattern(p: &str) -> Result<(), String> {
    match mailslot::hostname::HostPattern::parse(p) {
        Ok(pattern) if pattern.is_routable() => Ok(()),
        _ => Err(format!(
            "--allow {p:?} is not a hostname or *.wildcard pattern"
        )),
    }
}

/// `release keygen|sign|add|ls`.
fn release_cmd(parser: &mut lexopt::Parser) -> Result<(), String> {
    use lexopt::prelude::*;
    use mailslot::edge::fleet::release::{self, Releases, Signer};
    let mut sub: Option<String> = None;
    let mut file: Option<PathBuf> = None;
    let (mut out, mut key, mut sig, mut target, mut version) = (None, None, None, None, None);
    let mut config = PathBuf::from("edge.yml");
    while let Some(arg) = parser.next().map_err(arg_err)? {
        match arg {
            Long("help") | Short('h') => {
                print!("{}", usage_of("release"));
                return Ok(());
            }
            Long("out") => out = Some(PathBuf::from(parser.value().map_err(arg_err)?)),
            Long("key") => key = Some(PathBuf::from(parser.value().map_err(arg_err)?)),
            Long("sig") => sig = Some(PathBuf::from(parser.value().map_err(arg_err)?)),
            Long("target") => target = Some(string(parser)?),
            Long("version") => version = Some(string(parser)?),
            Long("config") | Short('c') => config = parser.value().map_err(arg_err)?.into(),
            Value(v) if sub.is_none() => sub = Some(v.string().map_err(arg_err)?),
            Value(v) if file.is_none() => file = Some(v.into()),
            other => return Err(format!("{}\n\n{}", other.unexpected(), usage_of("release"))),
        }
    }
    let need_file = || file.clone().ok_or("release: a FILE is required");
    let need_target = || target.clone().ok_or("release: --target TRIPLE is required");
    let releases = || -> Result<Releases, String> {
        let cfg = EdgeConfig::load(&config)?;
        Ok(Releases::new(cfg.releases.dir, cfg.releases.key))
    };
    match sub.as_deref() {
        Some("keygen") => {
            let out = out.ok_or("release keygen: --out FILE is required")?;
            let public = release::keygen(&out)?;
            println!("{public}");
            eprintln!(
                "release key written to {} (keep it offline); public key in {}.pub: put it \
                 in edge.yml as `fleet: release-key: {public}`",
                out.display(),
                out.display()
            );
            Ok(())
        }
        Some("sign") => {
            let key = key.ok_or("release sign: --key release.key is required")?;
            let (path, offer) =
                release::sign(&need_file()?, &key, &need_target()?, version.as_deref())?;
            println!(
                "{}: release {} for {} ({} B)",
                path.display(),
                offer.version,
                offer.target,
                offer.size
            );
            Ok(())
        }
        Some("add") => {
            let file = need_file()?;
            let signer = match (&sig, &key) {
                (Some(s), None) => Signer::Sig(s),
                (None, Some(k)) => Signer::Key(k),
                (None, None) => {
                    return Err("release add: --sig FILE.sig (from `release sign`) or --key release.key is required".into())
                }
                (Some(_), Some(_)) => return Err("release add: --sig or --key, not both".into()),
            };
            let r = release::add(
                &releases()?,
                &file,
                &need_target()?,
                signer,
                version.as_deref(),
            )?;
            println!(
                "release {} for {} recorded: {} ({} B, sha256 {})",
                r.offer.version,
                r.offer.target,
                r.file.display(),
                r.offer.size,
                mailslot::util::hex(&r.offer.sha256)
            );
            Ok(())
        }
        Some("ls") => {
            let releases = releases()?;
            for r in release::list(&releases.dir) {
                println!(
                    "{}\t{}\t{} B\t{}",
                    r.offer.version,
                    r.offer.target,
                    r.offer.size,
                    mailslot::util::hex(&r.offer.sha256)
                );
            }
            Ok(())
        }
        _ => Err(format!(
            "release needs keygen, sign, add or ls\n\n{}",
            usage_of("release")
        )),
    }
}
