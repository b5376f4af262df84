//! `mailslot-edge revoke tunnel|access-token ID... | ls`: tunnels and access tokens
//! revoked through the running edge's admin listener, kept in its fleet store (shared by
//! every edge of a cluster), so no list has to be copied into each `edge.yml`.

use std::ffi::OsString;
use std::path::PathBuf;

use bytes::Bytes;
use http::Method;

use super::cli::Admin;
use super::revoked::{parse_id, RevocationJson, RevokedKind};

/// Most ids one command revokes.
const MAX_IDS: usize = 1000;

/// What `revoke` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Revoke(RevokedKind, Vec<String>),
    Ls,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Args {
    config: PathBuf,
    command: Command,
    json: bool,
}

/// Parses what follows `revoke`; `None` when `--help` was asked for.
fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Option<Args>, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let (mut sub, mut ids, mut config, mut json) = (None::<String>, Vec::new(), None, false);
    let err = |e: lexopt::Error| e.to_string();
    while let Some(arg) = parser.next().map_err(err)? {
        match arg {
            Long("help") | Short('h') => return Ok(None),
            Long("config") | Short('c') => {
                config = Some(PathBuf::from(parser.value().map_err(err)?))
            }
            Long("json") => json = true,
            Value(v) if sub.is_none() => sub = Some(v.string().map_err(err)?),
            Value(v) if ids.len() < MAX_IDS => ids.push(v.string().map_err(err)?),
            Value(_) => return Err(format!("revoke: at most {MAX_IDS} ids at once")),
            other => return Err(other.unexpected().to_string()),
        }
    }
    let sub = sub.ok_or("revoke: tunnel ID..., access-token ID... or ls")?;
    let command = match (sub.as_str(), RevokedKind::of_word(&sub)) {
        ("ls", _) if ids.is_empty() => Command::Ls,
        ("ls", _) => return Err("revoke ls takes no ids".into()),
        (_, Some(kind)) if ids.is_empty() => {
            return Err(format!("revoke {}: an ID is required", kind.word()))
        }
        (_, Some(kind)) => {
            if let Some(bad) = ids.iter().find(|id| parse_id(id).is_none()) {
                return Err(format!(
                    "revoke {}: {bad:?} is not an id (32 hex digits, as `mailslot-edge \
                     token` or `access-token` printed it)",
                    kind.word()
                ));
            }
            Command::Revoke(kind, ids)
        }
        (other, None) => {
            return Err(format!(
                "revoke {other:?}: not a command (tunnel, access-token, ls)"
            ))
        }
    };
    let config = config.ok_or("revoke: --config edge.yml is required")?;
    Ok(Some(Args {
        config,
        command,
        json,
    }))
}

/// Runs `mailslot-edge revoke ...` (`args` after the command word).
pub fn main(args: impl IntoIterator<Item = OsString>, usage: &str) -> Result<(), String> {
    let Some(args) = parse(args)? else {
        print!("{usage}");
        return Ok(());
    };
    let admin = Admin::from_config(&args.config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async {
        match &args.command {
            Command::Ls => {
                let body = admin
                    .ok_with(Method::GET, "/api/v1/revocations", None, Bytes::new())
                    .await?;
                if args.json {
                    println!("{}", String::from_utf8_lossy(&body).trim_end());
                    return Ok(());
                }
                let list: Vec<RevocationJson> = serde_json::from_slice(&body)
                    .map_err(|e| format!("the edge answered what is not a list: {e}"))?;
                for r in list {
                    println!("{}\t{}\t{}", r.kind, r.id, super::api::rfc3339(r.at));
                }
                Ok(())
            }
            Command::Revoke(kind, ids) => {
                for id in ids {
                    let path = format!("/api/v1/{}s/{id}/revoke", kind.word());
                    let body = admin
                        .ok_with(Method::POST, &path, None, Bytes::new())
                        .await?;
                    if args.json {
                        println!("{}", String::from_utf8_lossy(&body).trim_end());
                        continue;
                    }
                    let r: RevocationJson = serde_json::from_slice(&body)
                        .map_err(|e| format!("the edge answered what is not a revocation: {e}"))?;
                    let what = match kind {
                        RevokedKind::Tunnel => {
                            "its connections are closed and it cannot register again"
                        }
                        RevokedKind::AccessToken => {
                            "it is refused and the sessions it opened are cut"
                        }
                    };
                    if r.new {
                        println!(
                            "{} {} revoked at every edge sharing the fleet store: {what}",
                            r.kind, r.id
                        );
                    } else {
                        println!(
                            "{} {} was revoked already (at {})",
                            r.kind,
                            r.id,
                            super::api::rfc3339(r.at)
                        );
                    }
                }
                Ok(())
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Option<Args>, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn parses_and_refuses_clearly() {
        let id = "ab".repeat(16);
        let a = p(&["tunnel", &id, "--config", "e.yml"]).unwrap().unwrap();
        assert_eq!(
            a.command,
            Command::Revoke(RevokedKind::Tunnel, vec![id.clone()])
        );
        let a = p(&["access-token", "-c", "e.yml", &id, "--json"])
            .unwrap()
            .unwrap();
        assert_eq!(
            a.command,
            Command::Revoke(RevokedKind::AccessToken, vec![id.clone()])
        );
        assert!(a.json);
        assert_eq!(
            p(&["ls", "--config", "e.yml"]).unwrap().unwrap().command,
            Command::Ls
        );
        assert!(p(&["--help"]).unwrap().is_none());
        for (args, says) in [
            (&["tunnel", "--config", "e.yml"][..], "an ID is required"),
            (&["tunnel", "xyz", "--config", "e.yml"][..], "not an id"),
            (&["device", &id, "--config", "e.yml"][..], "not a command"),
            (&["tunnel", &id][..], "--config edge.yml is required"),
            (&[][..], "tunnel ID..., access-token ID... or ls"),
            (&["ls", &id, "--config", "e.yml"][..], "takes no ids"),
        ] {
            let e = p(args).unwrap_err();
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }
}
