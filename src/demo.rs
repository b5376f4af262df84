//! `mailslot demo`: an edge, a connector and a hello-world origin in one process, on
//! loopback, with generated credentials. Everything goes through real sockets: the
//! connector dials the edge over QUIC and the origin over TCP.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::config::{DeviceConfig, IngressRule, OriginOptions, Protocol, Service};
use crate::connector::Connector;
use crate::edge::{self, init, CertKey, Edge, EdgeSettings, Listeners};

/// The hostname the demo tunnel serves; browsers resolve `*.localhost` to loopback.
pub(crate) const DEMO_HOST: &str = "hello.localhost";

/// Serves the hello-world page on `listener` until the task is dropped.
pub(crate) async fn hello_origin(listener: tokio::net::TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let host = req
                    .headers()
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_string();
                let xff = req
                    .headers()
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string();
                let body = format!(
                    "Hello from mailslot!\n\nThis page comes from a service on the device, reached through \
                     the tunnel.\nrequest: {} {}\nhost: {host}\nx-forwarded-for: {xff}\n",
                    req.method(),
                    req.uri()
                );
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                resp.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn hs<const N: usize>(s: &str) -> Result<heapless::String<N>, String> {
    heapless::String::try_from(s).map_err(|_| format!("{s:?} is longer than {N} bytes"))
}

/// A device config for the demo tunnel.
pub(crate) fn demo_config(
    token: &str,
    edge: SocketAddr,
    ca_der: &[u8],
    origin: SocketAddr,
) -> Result<Box<DeviceConfig>, String> {
    let mut cas = heapless::Vec::new();
    cas.push(heapless::Vec::from_slice(ca_der).map_err(|_| "CA too large")?)
        .map_err(|_| "too many CAs")?;
    let mut edges = heapless::Vec::new();
    edges
        .push(hs(&edge.to_string())?)
        .map_err(|_| "too many edges")?;
    let mut ingress = heapless::Vec::new();
    let origin_opts = OriginOptions {
        connect_timeout_ms: 10_000,
        ..Default::default()
    };
    ingress
        .push(IngressRule {
            hostname: Some(hs(DEMO_HOST)?),
            path: None,
            service: Service::Http {
                host: hs(&origin.ip().to_string())?,
                port: origin.port(),
                tls: false,
            },
            origin: origin_opts.clone(),
        })
        .map_err(|_| "too many rules")?;
    ingress
        .push(IngressRule {
            hostname: None,
            path: None,
            service: Service::HttpStatus(404),
            origin: origin_opts,
        })
        .map_err(|_| "too many rules")?;
    Ok(Box::new(DeviceConfig {
        tunnel: hs("demo")?,
        token: hs(token)?,
        edges,
        edge_ca: Some(0),
        cas,
        protocol: Protocol::Quic,
        ha_connections: 2,
        keepalive_secs: 15,
        idle_timeout_secs: 45,
        grace_period_secs: 5,
        ingress,
        edge_pins: heapless::Vec::new(),
        metered: false,
        data_cap: None,
        essential: 0,
    }))
}

/// Runs the demo until `shutdown`; `http` is where visitors connect.
pub async fn run(http: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let origin = tokio::net::TcpListener::bind(lo)
        .await
        .map_err(|e| e.to_string())?;
    let origin_addr = origin.local_addr().map_err(|e| e.to_string())?;
    let origin_task = tokio::spawn(hello_origin(origin));

    let pki = init::generate_pki(&["127.0.0.1".into(), "localhost".into()])?;
    let signing = init::generate_signing_key()?;
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(&signing).map_err(|e| e.to_string())?;
    let token = init::issue_tunnel_token(&key, "demo", &[DEMO_HOST.into()], 24 * 3600)?;
    let cert = CertKey::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())?;
    let (tunnel, tunnel_tcp) = edge::bind_tunnel(lo)?;
    let tunnel_addr = tunnel.local_addr().map_err(|e| e.to_string())?;
    let http_addr = http.local_addr().map_err(|e| e.to_string())?;
    let edge = Edge::new(EdgeSettings {
        name: "demo-edge".into(),
        cert,
        extra_certs: Vec::new(),
        verify_keys: vec![init::public_key_of(&key)],
        origin_timeout: Duration::from_secs(30),
        keepalive: Duration::from_secs(15),
        idle_timeout: Duration::from_secs(60),
        revoked: Vec::new(),
        shield: Arc::new(edge::shield::Shield::new(
            Default::default(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        )),
    });
    let registry: Arc<edge::registry::Registry> = edge.registry();
    let (edge_stop_tx, mut edge_stop) = tokio::sync::watch::channel(false);
    let (conn_stop_tx, mut conn_stop) = tokio::sync::watch::channel(false);
    let edge_task = tokio::spawn(edge.serve(
        Listeners {
            tunnel,
            tunnel_tcp: Some(tunnel_tcp),
            http: Some(http),
            https: None,
            admin: None,
        },
        async move {
            let _ = edge_stop.wait_for(|s| *s).await;
        },
    ));
    let connector = Connector::new(demo_config(&token, tunnel_addr, &pki.ca_der, origin_addr)?)?;
    let conn_task = {
        let c = connector.clone();
        tokio::spawn(async move {
            c.run(async move {
                let _ = conn_stop.wait_for(|s| *s).await;
            })
            .await
        })
    };
    tokio::select! {
        _ = registry.wait_for(DEMO_HOST, 1) => {}
        _ = tokio::time::sleep(Duration::from_secs(15)) => {
            return Err("the demo connector did not connect within 15 s (see the log above)".into());
        }
    }
    let port = http_addr.port();
    println!();
    println!("mailslot demo is up: edge, connector and a hello-world service on loopback.");
    println!("  open   http://{DEMO_HOST}:{port}/");
    println!("  or     curl -H 'Host: {DEMO_HOST}' http://127.0.0.1:{port}/");
    println!("Ctrl-C stops it.");
    println!();
    shutdown.await;
    conn_stop_tx.send_replace(true);
    let _ = conn_task.await;
    edge_stop_tx.send_replace(true);
    let _ = edge_task.await;
    origin_task.abort();
    Ok(())
}
