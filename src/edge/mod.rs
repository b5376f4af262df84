//! The edge: accepts connectors on the tunnel listener, serves visitors on HTTP and
//! HTTPS, routes each request to a tunnel by hostname and path, and issues tokens.
//!
//! - [`config`]: the `edge.yml` settings.
//! - `acme`: certificates from an ACME server for the hostnames tunnels serve.
//! - [`cidr`]: address ranges for `ip-allow:` and `trusted-proxies:`.
//! - [`init`]: first-time key and certificate generation.
//! - [`token`]: signed tunnel (and access) tokens.
//! - [`cluster`]: several edges sharing one fleet through Redis (`cluster:`).
//! - [`fleet`]: enrolment of devices with their own keys, the inventory and its store.
//! - [`registry`]: tunnels, hostnames, connections, rule matching.
//! - `tunnels`: the tunnel listener and the control handshake.
//! - `flood`: per-address counts (IPv6 per /64) and rate-limited logs against floods.
//! - `front`: the visitor listeners (HTTP/1.1, HTTP/2, TLS with SNI).
//! - [`path`]: the normal form of request paths, made before any rule matches them.
//! - `proxy`: one visitor request through a tunnel, as named steps (admit, route,
//!   attempt with retry, upgrade, respond).
//! - `forward`: header rewriting: smuggling checks, hop-by-hop headers, upgrades,
//!   `X-Forwarded-*` and `Forwarded`.
//! - `silence`: requests on a connection whose connector went silent.
//! - `stream`: tunnel streams to an origin (stream header, the connector's reply).
//! - `pool`: keep-alive origin connections inside tunnel streams.
//! - `body`: the edge's body type, its own text responses, bounded request bodies.
//! - [`policy`]: access policies, service tokens and signed access tokens.
//! - [`access`]: access clients, public TCP ports, and the gate for HTTP hostnames.
//! - [`live`]: what a reload of `edge.yml` (SIGHUP) changes while the edge runs.
//! - [`shield`]: limits, rate limits and counters against abusive visitors.
//! - [`admin`]: the admin listener (`/tunnels`, `/metrics`).
//! - `metrics`: request, latency and byte counters per tunnel, and their Prometheus text.

pub mod access;
pub(crate) mod acme;
pub mod admin;
pub(crate) mod body;
pub(crate) mod cap;
pub mod cidr;
pub mod cluster;
pub mod config;
pub mod fleet;
pub(crate) mod flood;
pub(crate) mod forward;
pub(crate) mod front;
pub mod init;
pub mod live;
pub(crate) mod metrics;
pub(crate) mod origin;
pub mod path;
pub mod policy;
pub(crate) mod pool;
pub(crate) mod proxy;
pub mod registry;
pub mod shield;
pub(crate) mod silence;
pub(crate) mod stream;
pub mod token;
pub(crate) mod tunnels;

/// For the fuzz target `fuzz/edge/fuzz_targets/forwarded_for.rs`.
#[doc(hidden)]
pub use forward::forwarded_for;

use std::future::Future;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use config::EdgeConfig;
use live::Live;
use registry::Registry;

/// Time connectors get to move elsewhere after the edge announces it is going away.
const GO_AWAY_GRACE: Duration = Duration::from_secs(2);

/// A certificate chain with its key.
pub struct CertKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl CertKey {
    /// Reads PEM files.
    pub(crate) fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<CertKey, String> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!("{}: no certificate in the file", cert.display()));
        }
        let key =
            PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
        Ok(CertKey { chain, key })
    }

    /// The edge's own certificate (`cert`/`key`) and those of `certs:`, from the files
    /// `cfg` names.
    pub(crate) fn load_all(cfg: &EdgeConfig) -> Result<(CertKey, Vec<CertKey>), String> {
        let own = CertKey::load(&cfg.cert.cert, &cfg.cert.key)?;
        let others = cfg
            .certs
            .iter()
            .map(|c| CertKey::load(&c.cert, &c.key))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((own, others))
    }

    /// Parses PEM text.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<CertKey, String> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate: {e}"))?;
        if chain.is_empty() {
            return Err("no certificate in the PEM text".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("key: {e}"))?;
        Ok(CertKey { chain, key })
    }

    fn certified(&self) -> Result<Arc<CertifiedKey>, String> {
        let provider = crate::tls::provider();
        CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider)
            .map(Arc::new)
            .map_err(|e| format!("certificate and key do not fit: {e}"))
    }
}

/// The certificates the edge presents: its own, and those of `certs:`, chosen by the
/// name a client asks for (SNI). Read at start and again at each reload.
#[derive(Debug)]
pub(crate) struct Certs {
    pub(crate) default: Arc<CertifiedKey>,
    pub(crate) others: Vec<Arc<CertifiedKey>>,
}

impl Certs {
    /// Checks that each key fits its certificate.
    pub(crate) fn new(own: &CertKey, others: &[CertKey]) -> Result<Certs, String> {
        Ok(Certs {
            default: own.certified().map_err(|e| format!("cert/key: {e}"))?,
            others: others
                .iter()
                .enumerate()
                .map(|(i, c)| c.certified().map_err(|e| format!("certs[{i}]: {e}")))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Reads the certificate and key files `cfg` names.
    pub(crate) fn load(cfg: &EdgeConfig) -> Result<Certs, String> {
        let (own, others) = CertKey::load_all(cfg)?;
        Certs::new(&own, &others)
    }
}

/// Everything the edge needs, loaded.
pub struct EdgeSettings {
    pub name: String,
    pub cert: CertKey,
    pub extra_certs: Vec<CertKey>,
    pub verify_keys: Vec<[u8; 32]>,
    pub origin_timeout: Duration,
    pub keepalive: Duration,
    pub idle_timeout: Duration,
    pub shield: Arc<shield::Shield>,
    /// Tunnel ids whose tokens are refused although their signatures are good.
    pub revoked: Vec<[u8; 16]>,
}

impl EdgeSettings {
    /// Loads the files `edge.yml` names.
    pub fn load(cfg: &EdgeConfig) -> Result<EdgeSettings, String> {
        let (cert, extra_certs) = CertKey::load_all(cfg)?;
        let verify_keys = live::load_verify_keys(cfg)?;
        Ok(EdgeSettings {
            name: cfg.name.clone(),
            cert,
            extra_certs,
            verify_keys,
            origin_timeout: cfg.origin_response_timeout,
            keepalive: cfg.keepalive,
            idle_timeout: cfg.idle_timeout,
            shield: cfg.shield.clone(),
            revoked: cfg.revoked_tunnels.clone(),
        })
    }
}

/// The sockets the edge serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// UDP for QUIC tunnel connections.
    pub tunnel: UdpSocket,
    /// TCP on the same port, for the HTTP/2 fallback.
    pub tunnel_tcp: Option<TcpListener>,
    pub http: Option<TcpListener>,
    pub https: Option<TcpListener>,
    /// Status and metrics (keep on loopback).
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses from `edge.yml`.
    pub fn bind(cfg: &EdgeConfig) -> Result<Listeners, String> {
        let tcp =
            |a: SocketAddr| TcpListener::bind(a).map_err(|e| format!("cannot listen on {a}: {e}"));
        let (tunnel, tunnel_tcp) = bind_tunnel(cfg.tunnel_listen)?;
        Ok(Listeners {
            tunnel,
            tunnel_tcp: Some(tunnel_tcp),
            http: cfg.http_listen.map(tcp).transpose()?,
            https: cfg.https_listen.map(tcp).transpose()?,
            admin: cfg.admin_listen.map(tcp).transpose()?,
        })
    }
}

/// Binds UDP and TCP on the same port; with port 0, finds a port free for both.
pub fn bind_tunnel(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), String> {
    let mut last = String::new();
    for _ in 0..32 {
        let udp = UdpSocket::bind(addr).map_err(|e| format!("cannot listen on udp {addr}: {e}"))?;
        let bound = udp.local_addr().map_err(|e| e.to_string())?;
        match TcpListener::bind(bound) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = e.to_string(),
            Err(e) => return Err(format!("cannot listen on tcp {bound}: {e}")),
        }
    }
    Err(format!(
        "no port free for both udp and tcp on {addr}: {last}"
    ))
}

/// State shared by the edge's tasks.
pub struct EdgeState {
    pub(crate) name: String,
    pub(crate) registry: Arc<Registry>,
    /// Keys, revocations and access policies: replaced whole by a reload, watched by
    /// tunnel connections and access streams.
    pub(crate) live: watch::Sender<Arc<Live>>,
    /// The certificates presented to visitors and connectors (set when serving starts,
    /// replaced by a reload); new TLS handshakes read them.
    pub(crate) certs: watch::Sender<Option<Arc<Certs>>>,
    /// Keep-alive origin connections inside tunnel streams.
    pub(crate) pool: Arc<pool::Pool>,
    pub(crate) origin_timeout: Duration,
    /// Set when the edge shuts down: connectors are told to go elsewhere.
    pub(crate) going_away: watch::Sender<bool>,
    pub(crate) shield: Arc<shield::Shield>,
    /// Access stream limits.
    pub(crate) access: access::AccessState,
    /// Bearer token the admin listener requires (`admin-token`); a reload replaces it.
    pub(crate) admin_token: watch::Sender<Option<config::AdminToken>>,
    /// The fleet's devices: set once when serving starts (the store is opened then).
    pub(crate) fleet: std::sync::OnceLock<Arc<fleet::Inventory>>,
    /// What admits devices (settings, signing key): set with `fleet`.
    pub(crate) enroller: std::sync::OnceLock<Arc<fleet::Enroller>>,
    /// Requests, origin latency and bytes per tunnel (bounded: `metrics::MAX_TUNNELS`).
    pub(crate) metrics: metrics::Metrics,
    /// Certificates from an ACME server (`acme:`): set once, before serving starts.
    pub(crate) acme: std::sync::OnceLock<Arc<acme::Acme>>,
    /// The cluster this edge belongs to (`cluster:`): set once, with `fleet`.
    pub(crate) cluster: std::sync::OnceLock<Arc<cluster::Cluster>>,
    /// The releases devices download (`fleet: releases:`): set once, with `fleet`.
    pub(crate) releases: std::sync::OnceLock<Arc<fleet::release::Releases>>,
}

impl EdgeState {
    /// The keys, revocations and policies in force.
    pub(crate) fn live(&self) -> Arc<Live> {
        self.live.borrow().clone()
    }
}

/// A configured edge, ready to serve.
pub struct Edge {
    state: Arc<EdgeState>,
    settings: EdgeSettings,
    tcp_ports: Vec<access::BoundTcpPort>,
}

impl Edge {
    pub fn new(settings: EdgeSettings) -> Edge {
        let registry = Arc::new(Registry::new(settings.shield.limits.max_streams_per_tunnel));
        let state = Arc::new(EdgeState {
            name: settings.name.clone(),
            pool: Arc::default(),
            registry,
            live: watch::channel(Arc::new(Live {
                verify_keys: settings.verify_keys.clone(),
                revoked: settings.revoked.iter().copied().collect(),
                ..Live::default()
            }))
            .0,
            certs: watch::channel(None).0,
            origin_timeout: settings.origin_timeout,
            going_away: watch::channel(false).0,
            shield: settings.shield.clone(),
            access: access::AccessState::default(),
            admin_token: watch::channel(None).0,
            fleet: std::sync::OnceLock::new(),
            enroller: std::sync::OnceLock::new(),
            metrics: metrics::Metrics::default(),
            acme: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            releases: std::sync::OnceLock::new(),
        });
        Edge {
            state,
            settings,
            tcp_ports: Vec::new(),
        }
    }

    /// Puts access policies in force and serves `tcp_ports` (bound by the caller). An
    /// edge without them keeps every raw-stream hostname closed.
    pub fn with_access(
        mut self,
        policy: policy::AccessPolicy,
        tcp_ports: Vec<access::BoundTcpPort>,
    ) -> Edge {
        self.state.live.send_modify(|live| {
            let mut next = Live {
                policy,
                ..live.copy()
            };
            if let Some(inventory) = self.state.fleet.get() {
                next.add_store_revocations(&inventory.revoked_ids());
            }
            *live = Arc::new(next);
        });
        self.tcp_ports = tcp_ports;
        self
    }

    /// Requires `token` as `Authorization: Bearer` on the admin listener (a reload
    /// replaces it with the file's `admin-token`).
    pub fn with_admin_token(self, token: Option<config::AdminToken>) -> Edge {
        self.state.admin_token.send_replace(token);
        self
    }

    /// Opens the fleet's store (`fleet: store:`) and admits enrolled devices: with
    /// `signing_key`, it enrols them and issues and renews their credentials. A store
    /// that cannot be opened (in use by another edge, unreadable) is an error: the
    /// edge must not serve devices it cannot record.
    pub fn with_fleet(
        self,
        cfg: &config::FleetConfig,
        signing_key: Option<ring::signature::Ed25519KeyPair>,
    ) -> Result<Edge, String> {
        self.with_fleet_in(cfg, None, signing_key)
    }

    /// As [`Edge::with_fleet`]; with `cluster`, the store is the cluster's Redis
    /// (shared with the other edges, which this edge follows) instead of the embedded
    /// file. A Redis that does not answer at start is an error, as a store that cannot
    /// be opened is.
    pub fn with_fleet_in(
        self,
        cfg: &config::FleetConfig,
        cluster: Option<&config::ClusterConfig>,
        signing_key: Option<ring::signature::Ed25519KeyPair>,
    ) -> Result<Edge, String> {
        let (store, shown): (Arc<dyn fleet::Store>, String) = match cluster {
            Some(c) => {
                let cluster = Arc::new(cluster::Cluster::new(c)?);
                let shown = format!("redis {}", cluster.shown());
                let store = Arc::new(cluster.store());
                let _ = self.state.cluster.set(cluster);
                (store, shown)
            }
            None => {
                let store = fleet::RedbStore::open(&cfg.store).map_err(|e| e.to_string())?;
                (Arc::new(store), cfg.store.display().to_string())
            }
        };
        let inventory = fleet::Inventory::load(store, self.state.registry.clone())?;
        log::info!(
            "edge {}: fleet store {shown}: {} devices",
            self.state.name,
            inventory.list().len()
        );
        if let Some(c) = self.state.cluster.get() {
            log::info!("edge {}: cluster member {}", self.state.name, c.member());
        }
        let enroller = fleet::Enroller::new(
            signing_key.map(Arc::new),
            cfg.credential_lifetime,
            cfg.health_every,
        );
        self.state.live.send_modify(|live| {
            let mut next = live.copy();
            next.add_store_revocations(&inventory.revoked_ids());
            *live = Arc::new(next);
        });
        let _ = self.state.fleet.set(Arc::new(inventory));
        let _ = self.state.enroller.set(Arc::new(enroller));
        Ok(self)
    }

    /// Serves the releases of `cfg` (`fleet: releases:`, `fleet: release-key:`) to
    /// devices.
    pub fn with_releases(self, cfg: &config::ReleasesConfig) -> Edge {
        let releases = fleet::release::Releases::new(cfg.dir.clone(), cfg.key);
        let _ = self.state.releases.set(Arc::new(releases));
        self
    }

    /// Obtains and renews certificates for the hostnames tunnels serve, as `cfg`'s
    /// `acme:` says (nothing without it). The cache is read now; orders start with
    /// [`Edge::serve`].
    pub fn with_acme(self, cfg: &EdgeConfig) -> Result<Edge, String> {
        if let Some(a) = &cfg.acme {
            let shared = self.state.cluster.get().map(|c| {
                let store: Arc<dyn acme::store::CertStore> = c.cert_store();
                store
            });
            let _ = self
                .state
                .acme
                .set(Arc::new(acme::Acme::new(cfg, a, shared)?));
        }
        Ok(self)
    }

    /// The fleet's inventory, once [`Edge::with_fleet`] opened its store.
    pub fn inventory(&self) -> Option<Arc<fleet::Inventory>> {
        self.state.fleet.get().cloned()
    }

    /// Reloads `path` into this edge when asked (on SIGHUP); `running` is the config the
    /// edge was started with.
    pub fn reloader(&self, path: std::path::PathBuf, running: EdgeConfig) -> live::Reloader {
        live::Reloader::new(self.state.clone(), path, running)
    }

    /// The tunnel registry (for status and tests).
    pub fn registry(&self) -> Arc<Registry> {
        self.state.registry.clone()
    }

    fn tls_server_config(&self, mut alpn: Vec<Vec<u8>>) -> Result<rustls::ServerConfig, String> {
        let sni = front::SniResolver::new(&self.state, true);
        let resolver: Arc<dyn rustls::server::ResolvesServerCert> = match self.state.acme.get() {
            Some(a) => {
                if a.answers_tls_alpn() {
                    alpn.push(acme::ACME_TLS_ALPN.to_vec());
                }
                Arc::new(acme::Resolver::new(a.clone(), sni))
            }
            None => Arc::new(sni),
        };
        let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        cfg.alpn_protocols = alpn;
        Ok(cfg)
    }

    /// Serves until `shutdown` resolves, then tells connectors to go elsewhere and stops.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), String> {
        let certs = Certs::new(&self.settings.cert, &self.settings.extra_certs)?;
        self.state.certs.send_replace(Some(Arc::new(certs)));
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        log::info!(
            "edge {}: {workers} worker thread{}",
            self.state.name,
            if workers == 1 { "" } else { "s" }
        );
        let mut tasks = Vec::new();
        let endpoint = self.serve_tunnels(listeners.tunnel, listeners.tunnel_tcp, &mut tasks)?;
        self.serve_visitors(listeners.http, listeners.https, &mut tasks)?;
        if let Some(l) = listeners.admin {
            let l = to_tokio(l)?;
            log::info!(
                "edge {}: admin (/tunnels, /metrics) on {}",
                self.state.name,
                l.local_addr().map_err(|e| e.to_string())?
            );
            tasks.push(tokio::spawn(admin::serve(l, self.state.clone())));
        }
        for port in self.tcp_ports {
            let spec = port.spec;
            let l = to_tokio(port.listener)?;
            log::info!(
                "edge {}: TCP port {} for {}",
                self.state.name,
                l.local_addr().map_err(|e| e.to_string())?,
                spec.hostname
            );
            tasks.push(tokio::spawn(access::serve_tcp_port(
                l,
                spec,
                self.state.clone(),
            )));
        }
        if let Some(inventory) = self.state.fleet.get() {
            tasks.push(inventory.spawn_writer());
            tasks.push(tokio::spawn(live::enforce_store_revocations(
                self.state.clone(),
                inventory.watch_revoked(),
            )));
            if let Some(c) = self.state.cluster.get() {
                tasks.push(c.serve_peers(self.state.clone())?);
                tasks.push(c.spawn_follower(inventory.clone()));
                let port = endpoint.local_addr().map_or(0, |a| a.port());
                tasks.push(c.spawn_presence(self.state.registry.clone(), port)?);
            }
        }
        if let Some(a) = self.state.acme.get() {
            tasks.push(a.clone().spawn(self.state.clone()));
            if let Some(c) = self.state.cluster.get() {
                tasks.push(c.spawn_cert_follower(a.clone()));
            }
        }
        shutdown.await;
        if let Some(c) = self.state.cluster.get() {
            c.leave_members().await;
        }
        go_away(&self.state, tasks, endpoint).await;
        if let Some(c) = self.state.cluster.get() {
            c.close_peers();
        }
        if let Some(inventory) = self.state.fleet.get() {
            // Connections closed by the shutdown marked their devices last seen.
            inventory
                .flush()
                .await
                .map_err(|e| format!("fleet records not written at shutdown: {e}"))?;
        }
        Ok(())
    }

    /// The TLS settings of the tunnel listener, for QUIC and for HTTP/2 over TCP.
    /// Connectors check the edge's own certificate; `certs:` are for visitors.
    fn tunnel_tls(&self) -> Result<(rustls::ServerConfig, rustls::ServerConfig), String> {
        let mut quic = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(front::SniResolver::new(&self.state, false)));
        // HTTP/2 tunnel connections on TCP speak only the tunnel protocol; QUIC also
        // takes access clients.
        quic.alpn_protocols = vec![crate::wire::ALPN.to_vec()];
        let tcp = quic.clone();
        quic.alpn_protocols.push(crate::wire::ACCESS_ALPN.to_vec());
        Ok((quic, tcp))
    }

    /// Starts the tunnel listener: QUIC on `udp` and, when given, HTTP/2 on `tcp`.
    /// Returns the QUIC endpoint, closed at shutdown.
    fn serve_tunnels(
        &self,
        udp: UdpSocket,
        tcp: Option<TcpListener>,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> Result<quinn::Endpoint, String> {
        let (quic_tls, tcp_tls) = self.tunnel_tls()?;
        let tunnel_addr = udp.local_addr().map_err(|e| e.to_string())?;
        let reset_key = crate::transport::quic::reset_key(self.settings.cert.key.secret_der());
        let listener = crate::transport::quic::Listener::new(
            udp,
            quic_tls,
            self.settings.keepalive,
            self.settings.idle_timeout,
            reset_key,
        )
        .map_err(|e| format!("tunnel listener on {tunnel_addr}: {e}"))?;
        let endpoint = listener.endpoint.clone();
        self.state.pool.spawn_sweeper();
        tasks.push(tokio::spawn(tunnels::accept_quic(
            Arc::new(listener),
            self.state.clone(),
        )));
        let Some(l) = tcp else {
            log::info!(
                "edge {}: tunnel listener on udp {tunnel_addr} (QUIC)",
                self.state.name
            );
            return Ok(endpoint);
        };
        let l = to_tokio(l)?;
        let tcp_addr = l.local_addr().map_err(|e| e.to_string())?;
        log::info!(
            "edge {}: tunnel listener on udp {tunnel_addr} (QUIC) and tcp {tcp_addr} (HTTP/2)",
            self.state.name
        );
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(tcp_tls));
        tasks.push(tokio::spawn(tunnels::accept_h2(
            l,
            tls,
            self.state.clone(),
            self.settings.keepalive,
            self.settings.idle_timeout,
        )));
        Ok(endpoint)
    }

    /// Starts the visitor listeners: HTTP in the clear, and HTTPS (HTTP/2 or HTTP/1.1
    /// by ALPN).
    fn serve_visitors(
        &self,
        http: Option<TcpListener>,
        https: Option<TcpListener>,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> Result<(), String> {
        if let Some(l) = http {
            let l = to_tokio(l)?;
            log::info!(
                "edge {}: HTTP on {}",
                self.state.name,
                l.local_addr().map_err(|e| e.to_string())?
            );
            tasks.push(tokio::spawn(front::serve(l, None, self.state.clone())));
        }
        if let Some(l) = https {
            let l = to_tokio(l)?;
            let tls = self.tls_server_config(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?;
            log::info!(
                "edge {}: HTTPS on {}",
                self.state.name,
                l.local_addr().map_err(|e| e.to_string())?
            );
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
            tasks.push(tokio::spawn(front::serve(
                l,
                Some(acceptor),
                self.state.clone(),
            )));
        }
        Ok(())
    }
}

/// A bound listener, handed to tokio.
fn to_tokio(l: TcpListener) -> Result<tokio::net::TcpListener, String> {
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())
}

/// Shuts the edge down: connectors are told to reconnect elsewhere and get
/// [`GO_AWAY_GRACE`] to leave, then every task stops and the QUIC endpoint closes.
async fn go_away(state: &EdgeState, tasks: Vec<JoinHandle<()>>, endpoint: quinn::Endpoint) {
    log::info!(
        "edge {}: shutting down; telling connectors to reconnect elsewhere",
        state.name
    );
    state.going_away.send_replace(true);
    let registry = state.registry.clone();
    let all_gone = async {
        while !registry.all_conns().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(GO_AWAY_GRACE, all_gone).await;
    for t in tasks {
        t.abort();
    }
    endpoint.close(0u32.into(), b"edge shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}
