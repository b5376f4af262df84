//! A real HTTP origin on loopback and the bytes it serves.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// A real HTTP origin on loopback, counting what it receives.
pub struct Origin {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 7) as u8
}

/// The bytes `/bytes/N` serves.
pub fn pattern(n: u64) -> Vec<u8> {
    (0..n).map(pattern_byte).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

type OBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn origin_handle(
    name: String,
    req: Request<Incoming>,
    conns: Arc<AtomicUsize>,
) -> Response<OBody> {
    let path = req.uri().path().to_string();
    let text = |s: String| Response::new(Full::new(Bytes::from(s)).boxed());
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap_or(0);
        // Streamed in 64 KiB chunks: the origin never holds the whole body.
        let mut r = Response::new(ChunkStream { pos: 0, end: n }.boxed());
        r.headers_mut()
            .insert("content-length", n.to_string().parse().unwrap());
        return r;
    }
    match path.as_str() {
        "/sha256" => {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let mut len = 0usize;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return text("body error".into());
                };
                if let Ok(d) = frame.into_data() {
                    len += d.len();
                    ctx.update(&d);
                }
            }
            text(format!("{} {len}", hex(ctx.finish().as_ref())))
        }
        p if p.starts_with("/delay/") => {
            let ms: u64 = p["/delay/".len()..].parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms.min(30_000))).await;
            text("done".into())
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            text("late".into())
        }
        "/headers" => {
            let mut s = String::new();
            for (k, v) in req.headers() {
                s.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            text(s)
        }
        "/connections" => text(conns.load(Ordering::SeqCst).to_string()),
        _ => text(format!("origin {name} {path}")),
    }
}

/// The body of `/bytes/N`, produced in 64 KiB chunks.
pub struct ChunkStream {
    pos: u64,
    end: u64,
}

impl http_body::Body for ChunkStream {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let me = self.get_mut();
        if me.pos >= me.end {
            return std::task::Poll::Ready(None);
        }
        let n = (me.end - me.pos).min(64 * 1024);
        let v: Vec<u8> = (me.pos..me.pos + n).map(pattern_byte).collect();
        me.pos += n;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(v)))))
    }
}

impl Origin {
    pub fn start(name: &str) -> Origin {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c2, r2, name) = (connections.clone(), requests.clone(), name.to_string());
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c2.fetch_add(1, Ordering::SeqCst);
                let (c3, r3, name) = (c2.clone(), r2.clone(), name.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        r3.fetch_add(1, Ordering::SeqCst);
                        let (name, c3) = (name.clone(), c3.clone());
                        async move { Ok::<_, Infallible>(origin_handle(name, req, c3).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Origin {
            addr,
            connections,
            requests,
            _rt: rt,
        }
    }
}
