//! Many connectors in one process, for the edge's scale benchmark (`bench/scale.py`).
//!
//! Each simulated tunnel is a tunnel token of its own (signed here with the edge's
//! signing key, as `mailslot-edge token` does) and `--conns` QUIC connections speaking
//! the real protocol: the edge's hello, a registration with one rule
//! (`t<i>.<domain>`), the edge's `Registered`; then the connection idles, sending QUIC
//! keep-alives like a connector, reading what the edge says on the control stream and
//! answering the data streams it opens. The first `--serve` tunnels answer each HTTP
//! request on a data stream with a 2-byte `ok` (a trivial origin inside the stream), so
//! a request through a simulated tunnel proves the path; the others refuse streams as
//! a connector without the rule would.
//!
//! The connections are spread over `--sources` UDP sockets, each bound to its own
//! loopback address (127.0.1.1, 127.0.1.2, ...), so the edge sees many source
//! addresses and ports, as from many devices; at most `--per-source` handshakes run at
//! once per socket (the edge admits 16 per address).
//!
//! Output (stdout, one line each): `registered N tunnels (M connections) in S s: R
//! tunnels/s, F failed`, then `holding`; on SIGTERM or SIGINT `alive: A of M
//! connections (L lost while idle)` and the process closes every connection and exits.
//!
//! ```sh
//! cargo build --release --example swarm
//! target/release/examples/swarm --edge 127.0.0.1:7844 --ca DIR/ca.pem \
//!     --signing-key DIR/signing.key --tunnels 1000
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailslot::wire::{
    self, ConnectorMsg, EdgeMsg, Register, RuleAction, RuleInfo, StreamError, StreamHeader,
    StreamReply, PROTOCOL_VERSION,
};
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::Semaphore;

/// Most tunnels one swarm simulates.
const MAX_TUNNELS: usize = 200_000;
/// Most UDP sockets (source addresses): 127.0.1.1 up to 127.0.1.250.
const MAX_SOURCES: usize = 250;
/// Registration attempts per connection before it counts as failed.
const ATTEMPTS: u32 = 5;
/// Largest HTTP request head the trivial origin reads.
const MAX_HEAD: usize = 16 * 1024;

struct Args {
    edge: SocketAddr,
    server_name: String,
    ca: PathBuf,
    signing_key: PathBuf,
    tunnels: usize,
    conns: u8,
    sources: usize,
    per_source: usize,
    serve: usize,
    domain: String,
    keepalive: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        edge: SocketAddr::from((Ipv4Addr::LOCALHOST, 7844)),
        server_name: "localhost".into(),
        ca: PathBuf::new(),
        signing_key: PathBuf::new(),
        tunnels: 100,
        conns: 2,
        sources: 64,
        per_source: 8,
        serve: 1,
        domain: "scale.test".into(),
        keepalive: Duration::from_secs(15),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--edge" => a.edge = val()?.parse().map_err(|e| format!("--edge: {e}"))?,
            "--server-name" => a.server_name = val()?,
            "--ca" => a.ca = val()?.into(),
            "--signing-key" => a.signing_key = val()?.into(),
            "--tunnels" => a.tunnels = num(val()?)?,
            "--conns" => a.conns = u8::try_from(num(val()?)?).map_err(|e| e.to_string())?,
            "--sources" => a.sources = num(val()?)?,
            "--per-source" => a.per_source = num(val()?)?,
            "--serve" => a.serve = num(val()?)?,
            "--domain" => a.domain = val()?,
            "--keepalive-secs" => a.keepalive = Duration::from_secs(num(val()?)? as u64),
            "--help" | "-h" => {
                println!(
                    "swarm --edge ADDR --ca PEM --signing-key KEY [--tunnels N] [--conns C] \
                     [--sources S] [--per-source P] [--serve K] [--domain D] \
                     [--server-name NAME] [--keepalive-secs S]"
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if a.ca.as_os_str().is_empty() || a.signing_key.as_os_str().is_empty() {
        return Err("--ca and --signing-key are required".into());
    }
    if !(1..=MAX_TUNNELS).contains(&a.tunnels)
        || !(1..=MAX_SOURCES).contains(&a.sources)
        || a.conns == 0
        || a.per_source == 0
    {
        return Err(format!(
            "--tunnels 1..={MAX_TUNNELS}, --sources 1..={MAX_SOURCES}, --conns and --per-source ≥ 1"
        ));
    }
    Ok(a)
}

fn client_config(a: &Args) -> Result<quinn::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&a.ca).map_err(|e| format!("{e}"))? {
        roots
            .add(cert.map_err(|e| format!("{e}"))?)
            .map_err(|e| format!("{e}"))?;
    }
    // A connector's TLS: its cipher suites in its order (AES-128-GCM with SHA-256 first
    // on CPUs with AES instructions; rustls's default puts AES-256 with SHA-384 first,
    // whose key schedule hashes in software here). No resumption: every registration
    // costs the edge a full handshake, as after its restart.
    let mut tls = rustls::ClientConfig::builder_with_provider(mailslot::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"mailslot".to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    // As a device's connection: keep-alives, an idle timeout, the edge may open streams.
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(a.keepalive));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(a.keepalive * 4).map_err(|e| e.to_string())?,
    ));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(64));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.stream_receive_window(quinn::VarInt::from_u32(256 * 1024));
    t.receive_window(quinn::VarInt::from_u32(512 * 1024));
    cfg.transport_config(Arc::new(t));
    Ok(cfg)
}

/// Counters shared by every simulated connection.
#[derive(Default)]
struct Stats {
    registered: AtomicUsize,
    failed: AtomicUsize,
    alive: AtomicUsize,
    lost: AtomicUsize,
    requests: AtomicUsize,
}

struct Source {
    endpoint: quinn::Endpoint,
    handshakes: Semaphore,
}

struct Tunnel {
    index: usize,
    token: String,
    hostname: String,
    connector_id: [u8; 16],
    serve: bool,
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("swarm: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swarm: no runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swarm: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(a: Args) -> Result<(), String> {
    let key = mailslot::edge::init::load_signing_key(&a.signing_key)?;
    let cfg = client_config(&a)?;
    let mut sources = Vec::with_capacity(a.sources);
    for i in 0..a.sources {
        let ip = Ipv4Addr::new(127, 0, 1, (i + 1) as u8);
        let socket = std::net::UdpSocket::bind((ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| format!("endpoint on {ip}: {e}"))?;
        endpoint.set_default_client_config(cfg.clone());
        sources.push(Arc::new(Source {
            endpoint,
            handshakes: Semaphore::new(a.per_source),
        }));
    }
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let mut ramp = tokio::task::JoinSet::new();
    for i in 0..a.tunnels {
        let hostname = format!("t{i}.{}", a.domain);
        let token = mailslot::edge::init::issue_tunnel_token(
            &key,
            &format!("swarm-{i}"),
            std::slice::from_ref(&hostname),
            86_400,
        )?;
        let mut connector_id = [0u8; 16];
        for (d, b) in connector_id.iter_mut().zip((i as u64).to_be_bytes()) {
            *d = b;
        }
        let tunnel = Arc::new(Tunnel {
            index: i,
            token,
            hostname,
            connector_id,
            serve: i < a.serve,
        });
        for c in 0..a.conns {
            let source = sources
                .get((i * usize::from(a.conns) + usize::from(c)) % sources.len())
                .cloned()
                .ok_or("no source")?;
            let (tunnel, stats, edge, name) =
                (tunnel.clone(), stats.clone(), a.edge, a.server_name.clone());
            ramp.spawn(async move {
                let mut last = String::new();
                for attempt in 0..ATTEMPTS {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                    let permit = source.handshakes.acquire().await;
                    match register(&source.endpoint, edge, &name, &tunnel, c).await {
                        Ok((conn, send, recv)) => {
                            drop(permit);
                            stats.registered.fetch_add(1, Ordering::Relaxed);
                            stats.alive.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(idle(conn, send, recv, tunnel, stats));
                            return;
                        }
                        Err(e) => last = e,
                    }
                }
                stats.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("swarm: tunnel {} connection {c}: {last}", tunnel.index);
            });
        }
    }
    while ramp.join_next().await.is_some() {}
    let secs = start.elapsed().as_secs_f64();
    let conns = stats.registered.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    println!(
        "registered {} tunnels ({conns} connections) in {secs:.2} s: {:.0} tunnels/s, {failed} failed",
        a.tunnels,
        a.tunnels as f64 / secs.max(1e-9)
    );
    println!("holding");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!(
        "alive: {} of {conns} connections ({} lost while idle), {} requests served",
        stats.alive.load(Ordering::Relaxed),
        stats.lost.load(Ordering::Relaxed),
        stats.requests.load(Ordering::Relaxed)
    );
    for s in &sources {
        s.endpoint
            .close(quinn::VarInt::from_u32(0), b"swarm stopping");
    }
    for s in &sources {
        let _ = tokio::time::timeout(Duration::from_secs(5), s.endpoint.wait_idle()).await;
    }
    Ok(())
}

/// Dials, and runs the handshake: hello, register, registered.
async fn register(
    endpoint: &quinn::Endpoint,
    edge: SocketAddr,
    server_name: &str,
    t: &Tunnel,
    index: u8,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), String> {
    let connecting = endpoint
        .connect(edge, server_name)
        .map_err(|e| e.to_string())?;
    let steps = async {
        let conn = connecting.await.map_err(|e| format!("handshake: {e}"))?;
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        match wire::read_control::<_, EdgeMsg>(&mut recv).await {
            Ok(EdgeMsg::Hello { .. }) => {}
            other => return Err(format!("expected hello, got {other:?}")),
        }
        let msg = ConnectorMsg::Register(Register {
            version: PROTOCOL_VERSION,
            token: t.token.clone(),
            connector_id: t.connector_id,
            conn_index: index,
            rules_generation: 1,
            rules: vec![
                RuleInfo {
                    hostname: Some(t.hostname.clone()),
                    path: None,
                    action: RuleAction::Http,
                    host_header: None,
                },
                // The last rule must match everything.
                RuleInfo {
                    hostname: None,
                    path: None,
                    action: RuleAction::Status(404),
                    host_header: None,
                },
            ],
            software: "swarm".into(),
        });
        wire::write_control(&mut send, &msg)
            .await
            .map_err(|e| e.to_string())?;
        match wire::read_control::<_, EdgeMsg>(&mut recv).await {
            Ok(EdgeMsg::Registered { .. }) => Ok((conn, send, recv)),
            other => Err(format!("expected registered, got {other:?}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(20), steps)
        .await
        .map_err(|_| "no registration within 20 s".to_string())?
}

/// Holds a registered connection: reads the control stream and answers data streams.
async fn idle(
    conn: quinn::Connection,
    _send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    t: Arc<Tunnel>,
    stats: Arc<Stats>,
) {
    let control = async {
        while let Ok(msg) = wire::read_control::<_, EdgeMsg>(&mut recv).await {
            if let EdgeMsg::GoAway { .. } = msg {
                break;
            }
        }
    };
    let streams = async {
        while let Ok((send, recv)) = conn.accept_bi().await {
            tokio::spawn(stream(send, recv, t.clone(), stats.clone()));
        }
    };
    tokio::select! {
        _ = control => {}
        _ = streams => {}
    }
    stats.alive.fetch_sub(1, Ordering::Relaxed);
    stats.lost.fetch_add(1, Ordering::Relaxed);
}

/// One data stream: the header, the reply, then (serving tunnels) HTTP/1.1 requests
/// answered with `ok` until the edge closes the stream.
async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    t: Arc<Tunnel>,
    stats: Arc<Stats>,
) -> Result<(), String> {
    let header: StreamHeader = wire::read_stream_frame(&mut recv)
        .await
        .map_err(|e| e.to_string())?;
    let reply = if t.serve && header.hostname == t.hostname {
        StreamReply::Ok
    } else {
        StreamReply::Err {
            error: StreamError::UnknownRule,
            message: "this simulated tunnel serves nothing".into(),
        }
    };
    let frame = wire::encode_stream_frame(&reply).map_err(|e| e.to_string())?;
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    if reply != StreamReply::Ok {
        let _ = send.finish();
        return Ok(());
    }
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err("request head too large".into());
            }
            let Some(n) = recv.read(&mut chunk).await.map_err(|e| e.to_string())? else {
                let _ = send.finish();
                return Ok(());
            };
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        };
        buf.drain(..end);
        send.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok",
        )
        .await
        .map_err(|e| e.to_string())?;
        stats.requests.fetch_add(1, Ordering::Relaxed);
    }
}
