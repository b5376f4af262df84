//! The admin listener (`admin-listen`, off by default; keep it on loopback): fleet
//! status, the fleet's devices (JSON API and HTML page) and Prometheus metrics. With
//! `admin-token` set, every request needs it, as `Authorization: Bearer TOKEN` or as
//! the password of HTTP Basic authentication (any user name; so that a browser can open
//! the fleet page); 401 otherwise. Basic authentication is for reading only: a `POST`
//! needs the bearer token, so that a page on another site cannot make a logged-in
//! browser revoke a device. Off loopback the token is required (the edge refuses to
//! start without it). Connections are closed after [`IDLE_TIMEOUT`] without a request,
//! at most [`MAX_CONNS`] are open at once; request bodies are at most [`MAX_BODY`].
//!
//! - `GET /tunnels`: one line per tunnel connection: tunnel, id, connector, index,
//!   protocol, connector address, hostnames.
//! - `GET /metrics`: counts of tunnels, connections and rejections; the fleet's
//!   families ([`super::fleet::metrics`]).
//! - `GET /api/v1/devices` (`fleet=F`, `offline=1`, pages: `limit=N`, `after=ID`),
//!   `GET /api/v1/devices/ID`, `POST /api/v1/devices/ID/revoke`: JSON
//!   ([`super::fleet::api`]; docs/fleet.md).
//! - `POST /api/v1/push-config` (a config push to devices or a fleet: bearer token
//!   only), `GET /api/v1/rollouts/ID`: JSON ([`super::fleet::api`]; docs/remote.md).
//! - `POST /api/v1/tunnels/ID/revoke`, `POST /api/v1/access-tokens/ID/revoke`,
//!   `GET /api/v1/revocations`: tunnels and access tokens revoked through the fleet
//!   store, enforced by every edge that shares it ([`super::fleet::revoked`]).
//! - `GET /fleet`, `GET /fleet/ID`: the fleet page ([`super::fleet::page`]); `GET /`
//!   sends a browser there.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};

use super::fleet::revoked::{self, RevokedKind};
use super::fleet::{api, page, Inventory};
use super::EdgeState;
use crate::transport::Transport;

/// Time an admin connection may stay without a request (also the time to send one).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an admin connection stays open at all.
const MAX_CONN_TIME: Duration = Duration::from_secs(300);
/// Admin connections open at once; more are refused.
pub(crate) const MAX_CONNS: usize = 64;
/// Largest request body read (no endpoint takes one today; a revoke may carry `{}`).
pub(crate) const MAX_BODY: usize = 1024;
/// Longest `Authorization` header looked at.
const MAX_AUTH_LEN: usize = 4096;
/// The realm a browser shows when it asks for the admin token.
const REALM: &str = "Basic realm=\"mailslot-edge\", charset=\"UTF-8\"";

/// Serves the admin endpoints until the task is dropped.
pub(crate) async fn serve(listener: tokio::net::TcpListener, state: Arc<EdgeState>) {
    let conns = Arc::new(tokio::sync::Semaphore::new(MAX_CONNS));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            continue; // dropping the socket refuses it
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(req, &state).await) }
            });
            // HTTP/1.1 only (curl and Prometheus speak it): its idle time is a head's.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(IDLE_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(MAX_CONN_TIME, conn).await;
        });
    }
}

/// How a request presented the admin token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// No token is configured: everything is open.
    Open,
    /// `Authorization: Bearer TOKEN`.
    Bearer,
    /// `Authorization: Basic` with the token as the password: reading only.
    Basic,
    /// No token, or a wrong one.
    Refused,
}

/// How `headers` authenticate against the configured admin token.
fn authenticate(headers: &HeaderMap, state: &EdgeState) -> Auth {
    let token = state.admin_token.borrow();
    let Some(token) = token.as_ref() else {
        return Auth::Open;
    };
    let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .filter(|v| v.len() <= MAX_AUTH_LEN)
    else {
        return Auth::Refused;
    };
    let (scheme, rest) = match v.iter().position(|&b| b == b' ') {
        Some(i) => (
            v.get(..i).unwrap_or_default(),
            v.get(i + 1..).unwrap_or_default(),
        ),
        None => (v, &[][..]),
    };
    let rest = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case(b"bearer") {
        if token.matches(rest) {
            return Auth::Bearer;
        }
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        use base64::Engine as _;
        let pair = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .unwrap_or_default();
        let password = pair
            .iter()
            .position(|&b| b == b':')
            .and_then(|i| pair.get(i + 1..));
        if password.is_some_and(|p| token.matches(p)) {
            return Auth::Basic;
        }
    }
    Auth::Refused
}

/// The routes, by path segment.
enum Route<'a> {
    /// `/`: a browser is sent to the fleet page.
    Root,
    Tunnels,
    Metrics,
    Devices,
    Device(&'a str),
    Revoke(&'a str),
    /// `POST /api/v1/tunnels/ID/revoke`, `POST /api/v1/access-tokens/ID/revoke`.
    RevokeId(RevokedKind, &'a str),
    Revocations,
    PushConfig,
    Upgrade,
    Rollout(&'a str),
    FleetPage,
    DevicePage(&'a str),
    Unknown,
}

impl Route<'_> {
    fn of(path: &str) -> Route<'_> {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segs.as_slice() {
            [""] => Route::Root,
            ["tunnels"] => Route::Tunnels,
            ["metrics"] => Route::Metrics,
            ["api", "v1", "devices"] | ["api", "v1", "devices", ""] => Route::Devices,
            ["api", "v1", "devices", id] => Route::Device(id),
            ["api", "v1", "devices", id, "revoke"] => Route::Revoke(id),
            ["api", "v1", "tunnels", id, "revoke"] => Route::RevokeId(RevokedKind::Tunnel, id),
            ["api", "v1", "access-tokens", id, "revoke"] => {
                Route::RevokeId(RevokedKind::AccessToken, id)
            }
            ["api", "v1", "revocations"] => Route::Revocations,
            ["api", "v1", "push-config"] => Route::PushConfig,
            ["api", "v1", "upgrade"] => Route::Upgrade,
            ["api", "v1", "rollouts", id] => Route::Rollout(id),
            ["fleet"] | ["fleet", ""] => Route::FleetPage,
            ["fleet", id] => Route::DevicePage(id),
            _ => Route::Unknown,
        }
    }

    /// The method the route takes.
    fn method(&self) -> Method {
        match self {
            Route::Revoke(_) | Route::RevokeId(..) | Route::PushConfig | Route::Upgrade => {
                Method::POST
            }
            _ => Method::GET,
        }
    }

    /// Is its answer a page for a browser?
    fn is_html(&self) -> bool {
        matches!(self, Route::Root | Route::FleetPage | Route::DevicePage(_))
    }
}

async fn answer(req: Request<Incoming>, state: &EdgeState) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let route = Route::of(parts.uri.path());
    let query = parts.uri.query().unwrap_or("");
    let auth = authenticate(&parts.headers, state);
    if auth == Auth::Refused {
        return unauthorized(route.is_html());
    }
    let allowed = route.method();
    let method_ok =
        parts.method == allowed || (allowed == Method::GET && parts.method == Method::HEAD);
    if matches!(route, Route::Unknown) {
        return text(
            StatusCode::NOT_FOUND,
            "try /fleet, /api/v1/devices, /tunnels or /metrics\n".into(),
        );
    }
    if !method_ok {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{} takes {allowed} only", parts.uri.path()),
        );
        if let Ok(v) = http::HeaderValue::from_str(allowed.as_str()) {
            r.headers_mut().insert(http::header::ALLOW, v);
        }
        return r;
    }
    let mut posted = Bytes::new();
    if allowed == Method::POST {
        if auth == Auth::Basic {
            return error(
                StatusCode::FORBIDDEN,
                "changes need Authorization: Bearer <admin-token> (Basic authentication reads only)",
            );
        }
        let max = match route {
            Route::PushConfig => api::MAX_PUSH_BODY,
            Route::Upgrade => super::fleet::release::MAX_UPGRADE_BODY,
            _ => MAX_BODY,
        };
        let read = tokio::time::timeout(IDLE_TIMEOUT, Limited::new(body, max).collect());
        match read.await {
            Ok(Ok(b)) => posted = b.to_bytes(),
            _ => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("a request body has at most {max} bytes, sent in time"),
                )
            }
        }
    }
    match route {
        Route::Root => {
            let mut r = text(StatusCode::SEE_OTHER, "see /fleet\n".into());
            r.headers_mut().insert(
                http::header::LOCATION,
                http::HeaderValue::from_static("/fleet"),
            );
            r
        }
        Route::Tunnels => text(StatusCode::OK, tunnels(state)),
        Route::Metrics => text(StatusCode::OK, metrics(state)),
        Route::Devices => with_inventory(state, false, |inv| list_devices(inv, query)),
        Route::Device(id) => with_inventory(state, false, |inv| match known(inv, id) {
            Some(v) => json(StatusCode::OK, &api::DeviceJson::of(&v)),
            None => no_device(id),
        }),
        Route::Revoke(id) => match state.fleet.get() {
            None => not_loaded(false),
            Some(inv) => revoke(inv, id).await,
        },
        Route::RevokeId(kind, id) => match state.fleet.get() {
            None => not_loaded(false),
            Some(inv) => answered(revoked::revoke(inv, kind, id).await),
        },
        Route::Revocations => match state.fleet.get() {
            None => not_loaded(false),
            Some(inv) => answered(revoked::list(inv).await),
        },
        Route::PushConfig => match state.fleet.get() {
            None => not_loaded(false),
            Some(inv) => {
                let signing = state.enroller.get().and_then(|e| e.signing_key());
                answered(api::push_config(inv, signing, &posted).await)
            }
        },
        Route::Upgrade => match state.fleet.get() {
            None => not_loaded(false),
            Some(inv) => {
                let releases = state.releases.get().map(|r| &**r);
                answered(super::fleet::release::upgrade(inv, releases, &posted).await)
            }
        },
        Route::Rollout(id) => match state.fleet.get() {
            None => not_loaded(false),
            Some(inv) => answered(api::rollout(inv, id).await),
        },
        Route::FleetPage => with_inventory(state, true, |inv| {
            let now = super::token::now_unix();
            html(
                StatusCode::OK,
                page::fleet_page(&state.name, &inv.list(), query, now),
            )
        }),
        Route::DevicePage(id) => with_inventory(state, true, |inv| match known(inv, id) {
            Some(v) => {
                let now = super::token::now_unix();
                html(StatusCode::OK, page::device_page(&state.name, &v, now))
            }
            None => html(
                StatusCode::NOT_FOUND,
                page::message_page("No such device", &format!("No device has the id {id}.")),
            ),
        }),
        Route::Unknown => text(StatusCode::NOT_FOUND, String::new()),
    }
}

/// `f` of the fleet inventory, or 503 before it is loaded.
fn with_inventory(
    state: &EdgeState,
    html: bool,
    f: impl FnOnce(&Inventory) -> Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    match state.fleet.get() {
        Some(inv) => f(inv),
        None => not_loaded(html),
    }
}

/// A device by id; ids are short and plain (`identity::device_id`), anything else is
/// unknown without a look-up.
fn known(inv: &Inventory, id: &str) -> Option<super::fleet::DeviceView> {
    let plain = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric());
    plain.then(|| inv.get(id)).flatten()
}

fn list_devices(inv: &Inventory, query: &str) -> Response<Full<Bytes>> {
    match api::ListQuery::parse(query) {
        Ok(q) => json(StatusCode::OK, &api::list_page(&inv.list(), &q)),
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

async fn revoke(inv: &Inventory, id: &str) -> Response<Full<Bytes>> {
    if known(inv, id).is_none() {
        return no_device(id);
    }
    match inv.revoke(id).await {
        Ok(true) => {
            log::info!("device {id} revoked through the admin API");
            match inv.get(id) {
                Some(v) => json(StatusCode::OK, &api::DeviceJson::of(&v)),
                None => no_device(id),
            }
        }
        Ok(false) => no_device(id),
        Err(e) => {
            log::error!("device {id} not revoked: {e}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("not revoked: {e}"),
            )
        }
    }
}

/// A fleet API answer: its JSON, or the error with its status.
fn answered(r: Result<impl serde::Serialize, (u16, String)>) -> Response<Full<Bytes>> {
    match r {
        Ok(v) => json(StatusCode::OK, &v),
        Err((status, e)) => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &e,
        ),
    }
}

fn no_device(id: &str) -> Response<Full<Bytes>> {
    error(StatusCode::NOT_FOUND, &format!("no device {id}"))
}

fn not_loaded(html_page: bool) -> Response<Full<Bytes>> {
    const WHY: &str = "fleet inventory not loaded";
    if html_page {
        html(
            StatusCode::SERVICE_UNAVAILABLE,
            page::message_page("Fleet unavailable", WHY),
        )
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, WHY)
    }
}

fn unauthorized(html_page: bool) -> Response<Full<Bytes>> {
    let (challenge, mut r) = if html_page {
        (
            REALM,
            html(
                StatusCode::UNAUTHORIZED,
                page::message_page(
                    "Admin token required",
                    "Sign in with any user name and the edge's admin-token as the password.",
                ),
            ),
        )
    } else {
        (
            "Bearer",
            text(
                StatusCode::UNAUTHORIZED,
                "401 the admin listener needs Authorization: Bearer <admin-token>\n".into(),
            ),
        )
    };
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static(challenge),
    );
    r
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", Bytes::from(body))
}

/// A page: no script runs in it, whatever a device named itself, and no other site
/// frames it.
fn html(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = respond(status, "text/html; charset=utf-8", Bytes::from(body));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    r
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            respond(status, "application/json", Bytes::from(body))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `{"error": "..."}`.
fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string() + "\n";
    respond(status, "application/json", Bytes::from(body))
}

fn tunnels(state: &EdgeState) -> String {
    let mut out = String::new();
    for line in state.registry.connection_lines() {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn metrics(state: &EdgeState) -> String {
    let conns = state.registry.all_conns();
    let mut tunnels: Vec<[u8; 16]> = conns.iter().map(|c| c.tunnel_id).collect();
    tunnels.sort();
    tunnels.dedup();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP mailslot_edge_tunnels Tunnels with at least one connection."
    );
    let _ = writeln!(out, "# TYPE mailslot_edge_tunnels gauge");
    let _ = writeln!(out, "mailslot_edge_tunnels {}", tunnels.len());
    let _ = writeln!(
        out,
        "# HELP mailslot_edge_connections Tunnel connections, by protocol."
    );
    let _ = writeln!(out, "# TYPE mailslot_edge_connections gauge");
    for proto in [Transport::Quic, Transport::Http2] {
        let n = conns
            .iter()
            .filter(|c| c.session.protocol() == proto)
            .count();
        let _ = writeln!(out, "mailslot_edge_connections{{protocol=\"{proto}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP mailslot_edge_rejections_total Visitor requests and connections refused by the shield.");
    let _ = writeln!(out, "# TYPE mailslot_edge_rejections_total counter");
    for (name, v) in state.shield.counters.snapshot() {
        let _ = writeln!(
            out,
            "mailslot_edge_rejections_total{{reason=\"{name}\"}} {v}"
        );
    }
    super::fleet::metrics::append(&mut out, state);
    state.metrics.render(&mut out);
    super::acme::append_metrics(&mut out, state);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::edge::fleet::api::tests::view;
    use crate::edge::fleet::{DeviceRecord, Enrolled, Store, StoreError};
    use crate::edge::{init, CertKey, Edge, EdgeSettings};

    const TOKEN: &str = "admin-0123456789-unit-secret";

    /// Records in memory: the store behind a real [`Inventory`] in these tests.
    #[derive(Default)]
    struct MemStore(Mutex<HashMap<String, DeviceRecord>>);

    impl Store for MemStore {
        fn enroll(&self, r: &DeviceRecord, _: Option<u32>) -> Result<Enrolled, StoreError> {
            self.0.lock().unwrap().insert(r.id.clone(), r.clone());
            Ok(Enrolled::New)
        }
        fn get(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
            Ok(self.0.lock().unwrap().get(id).cloned())
        }
        fn list(&self) -> Result<Vec<DeviceRecord>, StoreError> {
            Ok(self.0.lock().unwrap().values().cloned().collect())
        }
        fn update(&self, records: &[DeviceRecord]) -> Result<(), StoreError> {
            let mut m = self.0.lock().unwrap();
            for r in records {
                m.insert(r.id.clone(), r.clone());
            }
            Ok(())
        }
        fn revoke(&self, id: &str, at: u64) -> Result<bool, StoreError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .get_mut(id)
                .map(|r| r.revoked = Some(at))
                .is_some())
        }
    }

    /// An edge state with an admin token and, when `records` is given, an inventory.
    fn state(records: Option<Vec<DeviceRecord>>) -> (Arc<EdgeState>, Arc<MemStore>) {
        let pki = init::generate_pki(&["127.0.0.1".into()]).unwrap();
        let cert = CertKey::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
        let edge = Edge::new(EdgeSettings {
            name: "edge-<1>".into(),
            cert,
            extra_certs: Vec::new(),
            verify_keys: Vec::new(),
            origin_timeout: Duration::from_secs(30),
            keepalive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            revoked: Vec::new(),
            shield: Arc::new(crate::edge::shield::Shield::new(
                Default::default(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            )),
        })
        .with_admin_token(Some(crate::edge::config::AdminToken::new(TOKEN).unwrap()));
        let store = Arc::new(MemStore::default());
        if let Some(records) = records {
            store.update(&records).unwrap();
            let inv = Inventory::load(store.clone(), edge.state.registry.clone()).unwrap();
            assert!(edge.state.fleet.set(Arc::new(inv)).is_ok());
        }
        (edge.state.clone(), store)
    }

    /// Serves the admin listener of `state` on a port of its own.
    async fn listen(state: Arc<EdgeState>) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, state));
        addr
    }

    /// One request on its own connection: status, head and body.
    async fn call(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        auth: &str,
    ) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = if auth.is_empty() {
            String::new()
        } else {
            format!("Authorization: {auth}\r\n")
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head.to_string(), body.to_string())
    }

    fn bearer() -> String {
        format!("Bearer {TOKEN}")
    }

    fn basic(user_pass: &str) -> String {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[tokio::test]
    async fn the_api_lists_shows_and_revokes_devices() {
        let mut a = view(1, "<script>alert(1)</script>", "shop", false);
        a.record.last_seen = 1;
        let b = view(2, "pi-2", "home", false);
        let (state, store) = state(Some(vec![a.record.clone(), b.record.clone()]));
        let addr = listen(state).await;
        let (status, head, body) = call(addr, "GET", "/api/v1/devices", &bearer()).await;
        assert_eq!(status, 200, "{body}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let list: api::DeviceList = serde_json::from_str(&body).unwrap();
        assert_eq!((list.total, list.devices.len(), list.next), (2, 2, None));
        let (_, _, body) = call(addr, "GET", "/api/v1/devices?fleet=home", &bearer()).await;
        let list: api::DeviceList = serde_json::from_str(&body).unwrap();
        assert_eq!(list.devices[0].name, "pi-2");
        let (_, _, body) = call(addr, "GET", "/api/v1/devices?limit=1", &bearer()).await;
        let list: api::DeviceList = serde_json::from_str(&body).unwrap();
        assert_eq!(list.devices.len(), 1);
        assert_eq!(list.next.as_deref(), Some(list.devices[0].id.as_str()));
        let (status, _, body) = call(addr, "GET", "/api/v1/devices?limit=0", &bearer()).await;
        assert_eq!(status, 400, "{body}");

        let id = &a.record.id;
        let (status, _, body) =
            call(addr, "GET", &format!("/api/v1/devices/{id}"), &bearer()).await;
        assert_eq!(status, 200);
        let d: api::DeviceJson = serde_json::from_str(&body).unwrap();
        assert_eq!(d.name, "<script>alert(1)</script>");
        assert_eq!(d.public_key, "01".repeat(32));
        for unknown in ["aaaaaaaaaaaaaaaa", "..%2F..", "a.b"] {
            let (status, _, body) = call(
                addr,
                "GET",
                &format!("/api/v1/devices/{unknown}"),
                &bearer(),
            )
            .await;
            assert_eq!(status, 404, "{unknown}: {body}");
            assert!(body.contains("\"error\""), "{body}");
        }

        // Revoking takes POST with the bearer token.
        let revoke = format!("/api/v1/devices/{id}/revoke");
        assert_eq!(call(addr, "GET", &revoke, &bearer()).await.0, 405);
        let (status, _, _) = call(addr, "POST", &revoke, &basic(&format!("me:{TOKEN}"))).await;
        assert_eq!(status, 403);
        assert!(store.get(id).unwrap().unwrap().revoked.is_none());
        let (status, _, body) = call(addr, "POST", &revoke, &bearer()).await;
        assert_eq!(status, 200, "{body}");
        let d: api::DeviceJson = serde_json::from_str(&body).unwrap();
        assert_eq!(d.state, "revoked");
        assert!(store.get(id).unwrap().unwrap().revoked.is_some());
        let (status, _, _) = call(
            addr,
            "POST",
            "/api/v1/devices/aaaaaaaaaaaaaaaa/revoke",
            &bearer(),
        )
        .await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn the_fleet_page_takes_basic_auth_and_escapes_device_texts() {
        let a = view(1, "<script>alert(1)</script>", "shop", false);
        let (state, _) = state(Some(vec![a.record.clone()]));
        let addr = listen(state).await;
        let (status, head, body) = call(addr, "GET", "/fleet", "").await;
        assert_eq!(status, 401);
        assert!(
            head.contains("www-authenticate: Basic realm=\"mailslot-edge\""),
            "{head}"
        );
        assert!(body.contains("admin-token"));
        for wrong in ["admin:nope-0123456789-nope", TOKEN, ""] {
            assert_eq!(call(addr, "GET", "/fleet", &basic(wrong)).await.0, 401);
        }
        assert_eq!(call(addr, "GET", "/fleet", "Basic !!!").await.0, 401);
        let (status, head, body) = call(
            addr,
            "GET",
            "/fleet?sort=temp",
            &basic(&format!("admin:{TOKEN}")),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            head.contains("content-security-policy: default-src 'none'"),
            "{head}"
        );
        assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!body.contains("<script>"));
        assert!(body.contains("edge-&lt;1&gt;"));
        let (status, _, body) = call(
            addr,
            "GET",
            &format!("/fleet/{}", a.record.id),
            &basic(&format!(":{TOKEN}")),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("shop.example.com"));
        let (status, _, _) = call(addr, "GET", "/fleet/nope", &bearer()).await;
        assert_eq!(status, 404);
        assert_eq!(call(addr, "POST", "/fleet", &bearer()).await.0, 405);
        let (status, _, body) = call(addr, "GET", "/metrics", &bearer()).await;
        assert_eq!(status, 200);
        assert!(
            body.contains("mailslot_edge_fleet_devices_offline{fleet=\"shop\"} 1"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn without_an_inventory_the_fleet_answers_503() {
        let (state, _) = state(None);
        let addr = listen(state).await;
        for path in [
            "/api/v1/devices",
            "/api/v1/devices/abc",
            "/fleet",
            "/fleet/abc",
        ] {
            let (status, _, body) = call(addr, "GET", path, &bearer()).await;
            assert_eq!(status, 503, "{path}");
            assert!(
                body.contains("fleet inventory not loaded"),
                "{path}: {body}"
            );
        }
        let (status, _, body) = call(addr, "GET", "/metrics", &bearer()).await;
        assert_eq!(status, 200);
        assert!(!body.contains("mailslot_edge_fleet"), "{body}");
        assert_eq!(call(addr, "GET", "/nothing", &bearer()).await.0, 404);
        let (status, head, _) = call(addr, "GET", "/", &basic(&format!("a:{TOKEN}"))).await;
        assert_eq!(status, 303);
        assert!(head.contains("location: /fleet"), "{head}");
        let (status, head, _) = call(addr, "GET", "/", "").await;
        assert_eq!(status, 401);
        assert!(head.contains("www-authenticate: Basic"), "{head}");
    }
}
