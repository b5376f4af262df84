//! `mailslot access ssh|tcp|ssh-config`: argument parsing, credential lookup and the
//! two ways of carrying bytes (stdin/stdout for ssh's ProxyCommand, a local listener).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::client::{
    AccessClient, ClientError, ClientOptions, HostPort, Transport, DEFAULT_HTTPS_PORT,
    DEFAULT_QUIC_PORT,
};
use crate::wire::AccessCredential;

/// Usage text of `mailslot access`.
pub(crate) const USAGE: &str =
    "usage: mailslot access <ssh|tcp|ssh-config> --hostname NAME [options]

  access ssh --hostname NAME [options]
                                   carry ssh's connection on stdin/stdout, for
                                   ssh -o ProxyCommand='mailslot access ssh --hostname %h'
  access tcp --hostname NAME --listen ADDR [options]
                                   listen on ADDR locally; carry each connection to NAME
  access ssh-config --hostname NAME [options]
                                   print an ssh_config block using the options given
    options: --edge HOST[:PORT]         the edge (default: NAME; QUIC port 7844, or 443
                                        with --transport https)
             --edge-https HOST[:PORT]   the edge's HTTPS address for auto's fallback
                                        (default: the --edge host, port 443)
             --edge-ca FILE             PEM CA certificate of an edge with a private CA
             --transport auto|quic|https (default auto: QUIC, then HTTPS after 3 s)
             --token TOKEN | --token-file FILE
                                        a signed access token (else MAILSLOT_ACCESS_TOKEN,
                                        else ~/.config/mailslot/access-token)
             --service-token-id ID --service-token-secret SECRET
                                        a service token (else MAILSLOT_SERVICE_TOKEN_ID
                                        and MAILSLOT_SERVICE_TOKEN_SECRET)
";

/// Largest token or CA file read.
const MAX_FILE: u64 = 64 * 1024;
/// Time allowed to close a stream cleanly at its end.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Most local connections `access tcp` carries at once.
const MAX_LOCAL_CONNS: usize = 256;

#[derive(Default)]
struct Args {
    hostname: Option<String>,
    edge: Option<String>,
    edge_https: Option<String>,
    edge_ca: Option<PathBuf>,
    transport: Option<Transport>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    service_id: Option<String>,
    service_secret: Option<String>,
    listen: Option<String>,
}

fn arg_err(e: lexopt::Error) -> String {
    e.to_string()
}

fn string(parser: &mut lexopt::Parser) -> Result<String, String> {
    use lexopt::ValueExt;
    parser.value().map_err(arg_err)?.string().map_err(arg_err)
}

/// The arguments after the subcommand; `None` when they ask for help.
fn parse_args(parser: &mut lexopt::Parser) -> Result<Option<Args>, String> {
    use lexopt::prelude::*;
    let mut a = Args::default();
    while let Some(arg) = parser.next().map_err(arg_err)? {
        match arg {
            Long("help") | Short('h') => return Ok(None),
            Long("hostname") => a.hostname = Some(string(parser)?),
            Long("edge") => a.edge = Some(string(parser)?),
            Long("edge-https") => a.edge_https = Some(string(parser)?),
            Long("edge-ca") => a.edge_ca = Some(parser.value().map_err(arg_err)?.into()),
            Long("transport") => a.transport = Some(string(parser)?.parse()?),
            Long("token") => a.token = Some(string(parser)?),
            Long("token-file") => a.token_file = Some(parser.value().map_err(arg_err)?.into()),
            Long("service-token-id") => a.service_id = Some(string(parser)?),
            Long("service-token-secret") => a.service_secret = Some(string(parser)?),
            Long("listen") => a.listen = Some(string(parser)?),
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(Some(a))
}

/// Runs `mailslot access …`; usage errors come back as `Err`.
pub fn main(parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    use lexopt::prelude::*;
    let sub = match parser.next().map_err(arg_err)? {
        Some(Value(v)) => v.string().map_err(arg_err)?,
        Some(Long("help")) | Some(Short('h')) => "help".into(),
        _ => {
            return Err(format!(
                "access needs a subcommand: ssh, tcp or ssh-config\n\n{USAGE}"
            ))
        }
    };
    if matches!(sub.as_str(), "help" | "--help" | "-h") {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    if !matches!(sub.as_str(), "ssh" | "tcp" | "ssh-config") {
        return Err(format!("unknown access subcommand {sub:?}\n\n{USAGE}"));
    }
    let Some(args) = parse_args(parser)? else {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    };
    if sub != "ssh-config" {
        if let Some(warning) = cmdline_secret_warning(&args) {
            eprintln!("{warning}");
        }
    }
    match sub.as_str() {
        "ssh" => with_client(&args, |client, rt| rt.block_on(run_stdio(client))),
        "tcp" => {
            let listen = args
                .listen
                .clone()
                .ok_or("access tcp: --listen ADDR is required (e.g. 127.0.0.1:5432)")?;
            let listen: std::net::SocketAddr = listen.parse().map_err(|_| {
                format!("--listen {listen:?} is not an address like 127.0.0.1:5432")
            })?;
            with_client(&args, |client, rt| {
                rt.block_on(run_listener(client, listen))
            })
        }
        "ssh-config" => {
            print!("{}", ssh_config(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(format!("unknown access subcommand {sub:?}\n\n{USAGE}")),
    }
}

/// The warning for a secret on the command line, which any local user can read in
/// `/proc/PID/cmdline` (`ps`) for as long as the client runs.
fn cmdline_secret_warning(a: &Args) -> Option<String> {
    let flag = match (&a.token, &a.service_secret) {
        (Some(_), _) => "--token",
        (None, Some(_)) => "--service-token-secret",
        (None, None) => return None,
    };
    let instead = if a.token.is_some() {
        "--token-file FILE, MAILSLOT_ACCESS_TOKEN or ~/.config/mailslot/access-token"
    } else {
        "MAILSLOT_SERVICE_TOKEN_SECRET"
    };
    Some(format!(
        "mailslot access: warning: the secret given with {flag} can be read by every local user \
         (ps, /proc/PID/cmdline) for as long as this runs; use {instead} instead"
    ))
}

fn with_client(
    args: &Args,
    run: impl FnOnce(Arc<AccessClient>, &tokio::runtime::Runtime) -> Result<(), String>,
) -> Result<ExitCode, String> {
    let opts = options(args)?;
    let rt = crate::runtime()?;
    let client = AccessClient::new(opts);
    let result = run(client, &rt);
    // A blocking read of stdin may still be pending: do not wait for it.
    rt.shutdown_background();
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("mailslot access: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn validate_hostname(h: &str) -> Result<String, String> {
    let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(h)
    } else {
        Err(format!("--hostname {h:?} is not a DNS name"))
    }
}

fn read_small(path: &Path, what: &str) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if meta.len() > MAX_FILE {
        return Err(format!(
            "{what} {}: larger than {MAX_FILE} bytes",
            path.display()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `$XDG_CONFIG_HOME/mailslot/access-token`, else `~/.config/mailslot/access-token`.
pub(crate) fn default_token_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("mailslot").join("access-token"))
}

/// Flags, then the environment, then the default token file.
fn credential(a: &Args) -> Result<AccessCredential, String> {
    let token_given = a.token.is_some() || a.token_file.is_some();
    let service_given = a.service_id.is_some() || a.service_secret.is_some();
    if token_given && service_given {
        return Err("give an access token or a service token, not both".into());
    }
    if a.token.is_some() && a.token_file.is_some() {
        return Err("--token and --token-file are exclusive".into());
    }
    if let Some(t) = &a.token {
        return Ok(AccessCredential::Token(t.trim().to_string()));
    }
    if let Some(p) = &a.token_file {
        return Ok(AccessCredential::Token(
            read_small(p, "--token-file")?.trim().to_string(),
        ));
    }
    if service_given {
        let id = a
            .service_id
            .clone()
            .or_else(|| env("MAILSLOT_SERVICE_TOKEN_ID"));
        let secret = a
            .service_secret
            .clone()
            .or_else(|| env("MAILSLOT_SERVICE_TOKEN_SECRET"));
        return match (id, secret) {
            (Some(id), Some(secret)) => Ok(AccessCredential::Service { id, secret }),
            _ => Err("a service token needs --service-token-id and --service-token-secret".into()),
        };
    }
    if let Some(t) = env("MAILSLOT_ACCESS_TOKEN") {
        return Ok(AccessCredential::Token(t.trim().to_string()));
    }
    if let (Some(id), Some(secret)) = (
        env("MAILSLOT_SERVICE_TOKEN_ID"),
        env("MAILSLOT_SERVICE_TOKEN_SECRET"),
    ) {
        return Ok(AccessCredential::Service { id, secret });
    }
    if let Some(p) = default_token_file().filter(|p| p.exists()) {
        return Ok(AccessCredential::Token(
            read_small(&p, "token file")?.trim().to_string(),
        ));
    }
    Ok(AccessCredential::None)
}

fn options(a: &Args) -> Result<ClientOptions, String> {
    let hostname = validate_hostname(
        a.hostname
            .as_deref()
            .ok_or("--hostname NAME is required (the device service's hostname)")?,
    )?;
    let transport = a.transport.unwrap_or(Transport::Auto);
    let edge_or_host = a.edge.clone().unwrap_or_else(|| hostname.clone());
    let quic_edge =
        HostPort::parse(&edge_or_host, DEFAULT_QUIC_PORT).map_err(|e| format!("--edge: {e}"))?;
    let https_edge = match (&a.edge_https, transport) {
        (Some(h), _) => {
            HostPort::parse(h, DEFAULT_HTTPS_PORT).map_err(|e| format!("--edge-https: {e}"))?
        }
        (None, Transport::Https) => HostPort::parse(&edge_or_host, DEFAULT_HTTPS_PORT)
            .map_err(|e| format!("--edge: {e}"))?,
        (None, _) => HostPort {
            host: quic_edge.host.clone(),
            port: DEFAULT_HTTPS_PORT,
        },
    };
    let edge_ca = match &a.edge_ca {
        None => None,
        Some(p) => Some(
            crate::config::pem::pem_to_der(&read_small(p, "--edge-ca")?)
                .map_err(|e| format!("--edge-ca {}: {e}", p.display()))?,
        ),
    };
    Ok(ClientOptions {
        hostname,
        quic_edge,
        https_edge,
        edge_ca,
        credential: credential(a)?,
        transport,
    })
}

fn explain(e: ClientError, hostname: &str) -> String {
    match e {
        ClientError::Refused { error, message } => {
            use crate::wire::AccessError::*;
            let hint = match error {
                Unauthorized => {
                    "\n  (pass --token or --token-file, set MAILSLOT_ACCESS_TOKEN, or put the \
                     token in ~/.config/mailslot/access-token)"
                }
                _ => "",
            };
            // The edge's words go to the operator's terminal: no escape sequences.
            let message = crate::wire::bounded_reason(message);
            format!("the edge refused access to {hostname}: {message}{hint}")
        }
        ClientError::Transport(m) => format!("cannot reach the edge: {m}"),
    }
}

/// `access ssh`: one stream, carried on stdin and stdout. Ends when the service closes.
async fn run_stdio(client: Arc<AccessClient>) -> Result<(), String> {
    let host = client.options().hostname.clone();
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let stream = client.open().await.map_err(|e| explain(e, &host))?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let result = {
        let up = async {
            let mut stdin = tokio::io::stdin();
            let r = tokio::io::copy(&mut stdin, &mut wr).await;
            let _ = wr.shutdown().await;
            r
        };
        let down = async {
            let mut stdout = tokio::io::stdout();
            let r = tokio::io::copy(&mut rd, &mut stdout).await;
            let _ = stdout.flush().await;
            r
        };
        tokio::pin!(up, down);
        let mut up_done = false;
        loop {
            tokio::select! {
                // ssh hangs up on its ProxyCommand when the session ends.
                _ = hangup.recv() => break Ok(0),
                _ = term.recv() => break Ok(0),
                r = &mut up, if !up_done => {
                    up_done = true;
                    if let Err(e) = r {
                        log::debug!("stdin: {e}");
                    }
                }
                r = &mut down => break r,
            }
        }
    };
    // The service is done: end our side too (which also closes the transport cleanly)
    // without waiting on stdin, and let the edge hear it before the connection closes.
    let mut stream = rd.unsplit(wr);
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, async {
        let _ = stream.shutdown().await;
        stream.delivered().await;
    })
    .await;
    client.close().await;
    match result {
        Ok(_) => Ok(()),
        // ssh closing our stdout at its end is normal.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("connection to {host} ended: {e}")),
    }
}

/// `access tcp`: a local listener; each connection gets its own stream.
async fn run_listener(
    client: Arc<AccessClient>,
    listen: std::net::SocketAddr,
) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let host = client.options().hostname.clone();
    eprintln!("mailslot access: listening on {local} for {host}");
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let limit = Arc::new(Semaphore::new(MAX_LOCAL_CONNS));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("accept on {local} failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            log::warn!("{peer}: {MAX_LOCAL_CONNS} connections already open; refused");
            continue;
        };
        let client = client.clone();
        let host = host.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let mut tcp = tcp;
            match client.open().await {
                Ok(mut stream) => {
                    match tokio::io::copy_bidirectional(&mut tcp, &mut stream).await {
                        Ok((up, down)) => {
                            // Both directions done: this closes the transport cleanly.
                            let _ = tokio::time::timeout(SHUTDOWN_WAIT, async {
                                let _ = stream.shutdown().await;
                                stream.delivered().await;
                            })
                            .await;
                            log::info!("{peer}: done, {up} B to {host}, {down} B back")
                        }
                        Err(e) => log::info!("{peer}: connection to {host} ended: {e}"),
                    }
                }
                Err(e) => eprintln!("mailslot access: {peer}: {}", explain(e, &host)),
            }
        });
    }
    client.close().await;
    Ok(())
}

/// One argument of the `ProxyCommand` line `access ssh-config` writes.
///
/// ssh expands `%` tokens in the line, then runs it with the user's shell (`$SHELL -c
/// "exec ..."`); OpenSSH also checks the line's quotes when it reads it. An argument
/// made only of characters that mean nothing to either is written as it is; any other
/// is put in single quotes, inside which a shell takes every character literally (`$`,
/// backquotes, `;`, `"`, `\`), with a `'` written `'\''` (which ssh_config reads as
/// balanced quotes too), and every `%` doubled for ssh. A line break or other control
/// character cannot be written into one ssh_config line at all: it is refused.
fn quote(what: &str, arg: &OsString) -> Result<String, String> {
    let Some(s) = arg.to_str() else {
        return Err(format!("{what}: {arg:?} is not UTF-8"));
    };
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{what}: {s:?} holds the control character {c:?}, which cannot go into ssh_config"
        ));
    }
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:@=+,".contains(c));
    let quoted = if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    };
    Ok(quoted.replace('%', "%%"))
}

/// The ssh_config block for `access ssh-config`. Secrets are never written into it.
fn ssh_config(a: &Args) -> Result<String, String> {
    let hostname = validate_hostname(a.hostname.as_deref().ok_or("--hostname NAME is required")?)?;
    if a.token.is_some() || a.service_secret.is_some() {
        eprintln!(
            "mailslot access: secrets given on the command line are not written into ssh_config; \
             use --token-file, ~/.config/mailslot/access-token or the environment"
        );
    }
    let exe = std::env::current_exe()
        .map(|p| p.into_os_string())
        .unwrap_or_else(|_| OsString::from("mailslot"));
    let mut cmd = vec![
        quote("the mailslot binary's path", &exe)?,
        "access".into(),
        "ssh".into(),
        "--hostname".into(),
        "%h".into(),
    ];
    let abs = |p: &PathBuf| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.clone())
            .into_os_string()
    };
    let mut option = |flag: &str, value: &OsString| -> Result<(), String> {
        cmd.extend([flag.to_string(), quote(flag, value)?]);
        Ok(())
    };
    if let Some(e) = &a.edge {
        option("--edge", &e.into())?;
    }
    if let Some(e) = &a.edge_https {
        option("--edge-https", &e.into())?;
    }
    if let Some(p) = &a.edge_ca {
        option("--edge-ca", &abs(p))?;
    }
    if let Some(t) = a.transport {
        let t = match t {
            Transport::Auto => "auto",
            Transport::Quic => "quic",
            Transport::Https => "https",
        };
        option("--transport", &t.into())?;
    }
    if let Some(p) = &a.token_file {
        option("--token-file", &abs(p))?;
    }
    if let Some(id) = &a.service_id {
        option("--service-token-id", &id.into())?;
    }
    Ok(format!(
        "# mailslot: ssh to {hostname} through the edge\nHost {hostname}\n  ProxyCommand {}\n",
        cmd.join(" ")
    ))
}

#[cfg(test)]
mod tests;
