//! The gate in front of HTTP hostnames with an access policy: the credential from the
//! request's headers, refusals as HTTP statuses, and access clients over a WebSocket
//! upgrade on the HTTPS port. Proxying the admitted request is the proxy's job.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::admit::admit;
use super::pipe::{pipe, AccessLog, Recheck};
use crate::access::ws::{self, Role, WsStream};
use crate::edge::body::{self, Body};
use crate::edge::policy::{Denied, HostKind};
use crate::edge::EdgeState;
use crate::wire::{self, AccessCredential, AccessError};

/// Header carrying a service token's id.
pub(crate) const CLIENT_ID_HEADER: &str = "mailslot-client-id";
/// Header carrying a service token's secret.
pub(crate) const CLIENT_SECRET_HEADER: &str = "mailslot-client-secret";

/// The credential in an HTTP request: `Authorization: Bearer msa1…` (or a tunnel token,
/// to say it is the wrong kind), else the service-token headers.
fn credential_of(headers: &HeaderMap) -> (AccessCredential, bool) {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| {
            t.starts_with(&format!("{}.", crate::edge::token::ACCESS_PREFIX))
                || t.starts_with(&format!("{}.", crate::edge::token::TUNNEL_PREFIX))
        });
    if let Some(t) = bearer {
        return (AccessCredential::Token(t.to_string()), true);
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    };
    match (text(CLIENT_ID_HEADER), text(CLIENT_SECRET_HEADER)) {
        (Some(id), Some(secret)) => (AccessCredential::Service { id, secret }, false),
        _ => (AccessCredential::None, false),
    }
}

fn is_access_upgrade(req: &Request<Incoming>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has(header::UPGRADE, "websocket")
        && has(header::SEC_WEBSOCKET_PROTOCOL, wire::ACCESS_WS_PROTOCOL)
}

fn status_of(error: AccessError) -> StatusCode {
    match error {
        AccessError::Unauthorized => StatusCode::UNAUTHORIZED,
        AccessError::Forbidden => StatusCode::FORBIDDEN,
        AccessError::NoTunnel => StatusCode::NOT_FOUND,
        AccessError::NotStream | AccessError::BadRequest => StatusCode::BAD_REQUEST,
        AccessError::Unavailable => StatusCode::BAD_GATEWAY,
    }
}

fn refusal(error: AccessError, message: String) -> Response<Body> {
    let status = status_of(error);
    let mut resp = body::text(status, message);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"mailslot\""),
        );
    }
    resp
}

/// The gate in front of the HTTP proxy: access upgrades are served here; requests for
/// hostnames with a policy need credentials, which are then removed before the request
/// goes on. `Err` is the answer to send instead of proxying. `client_ip` is the
/// client's address as rate limits see it (`Shield::client_ip`: the peer, or behind a
/// trusted proxy the address it forwarded for), so that `ip-allow` and rate limits
/// agree on who the client is.
pub(crate) async fn gate(
    mut req: Request<Incoming>,
    host: &str,
    peer: SocketAddr,
    client_ip: IpAddr,
    scheme: &str,
    state: &EdgeState,
) -> Result<Request<Incoming>, Response<Body>> {
    if is_access_upgrade(&req) {
        // Boxed: the rare path's state (2.7 KB) would otherwise be part of every HTTP
        // request's future, and copied with it.
        return Err(Box::pin(upgrade(req, host, peer, client_ip, scheme, state)).await);
    }
    let live = state.live();
    if live.policy.policy_for(host).is_none() {
        // HTTP without a policy is public; nothing to check or strip.
        return Ok(req);
    }
    let (cred, bearer) = credential_of(req.headers());
    match live.policy.check(
        host,
        HostKind::Http,
        client_ip,
        &cred,
        &live.verify_keys,
        crate::edge::token::now_unix(),
    ) {
        Ok(identity) => {
            log::debug!(
                "{host}: {} ({}) from {peer} admitted",
                identity.who,
                identity.how
            );
            let headers = req.headers_mut();
            if bearer {
                headers.remove(header::AUTHORIZATION);
            }
            headers.remove(CLIENT_ID_HEADER);
            headers.remove(CLIENT_SECRET_HEADER);
            Ok(req)
        }
        Err(Denied { error, message }) => {
            log::debug!("access denied: {host} from {peer} over {scheme}: {message}");
            let message = if error == AccessError::Unauthorized {
                format!(
                    "{message}.\nSend `Authorization: Bearer <access token>` (tokens come from \
                     `mailslot-edge access-token`), or a service token in the Mailslot-Client-Id \
                     and Mailslot-Client-Secret headers."
                )
            } else {
                message
            };
            Err(refusal(error, message))
        }
    }
}

/// An access client over HTTPS: check, open the tunnel stream, then answer 101 and
/// pipe the WebSocket to it.
async fn upgrade(
    mut req: Request<Incoming>,
    host: &str,
    peer: SocketAddr,
    client_ip: IpAddr,
    scheme: &str,
    state: &EdgeState,
) -> Response<Body> {
    if req.version() != http::Version::HTTP_11 || req.method() != Method::GET {
        return body::text(
            StatusCode::BAD_REQUEST,
            "access upgrades need GET over HTTP/1.1",
        );
    }
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 64)
        .map(String::from);
    let Some(key) = key.filter(|_| version_ok) else {
        return body::text(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key",
        );
    };
    let (cred, _) = credential_of(req.headers());
    let via = format!("{scheme} (websocket)");
    let recheck = Recheck::new(state, cred.clone());
    let (identity, tunnel, permit) = match admit(state, host, client_ip, &cred).await {
        Ok(x) => x,
        Err((error, message)) => {
            log::info!("access denied: {host} from {peer} over {via}: {message}");
            return refusal(error, message);
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut log = AccessLog::new(identity, host, peer, &via);
    log.client_ip = client_ip;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WsStream::new(TokioIo::new(upgraded), Role::Server, Vec::new());
                pipe(ws, tunnel, log, permit, Some(recheck)).await;
            }
            Err(e) => {
                let mut tunnel = tunnel;
                tunnel.abort();
                log::debug!("access upgrade from {peer} failed: {e}");
            }
        }
    });
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(wire::ACCESS_WS_PROTOCOL),
    );
    if let Ok(v) = HeaderValue::from_str(&ws::accept_key(&key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(credential_of(&h).0, AccessCredential::None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer msa1.a.b"),
        );
        assert_eq!(
            credential_of(&h),
            (AccessCredential::Token("msa1.a.b".into()), true)
        );
        // An origin's own bearer tokens are not ours.
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        h.insert(CLIENT_ID_HEADER, HeaderValue::from_static("ci"));
        h.insert(CLIENT_SECRET_HEADER, HeaderValue::from_static("s"));
        assert_eq!(
            credential_of(&h),
            (
                AccessCredential::Service {
                    id: "ci".into(),
                    secret: "s".into()
                },
                false
            )
        );
    }
}
