//! The admin HTTP endpoint: `/metrics` for Prometheus and `/healthz` for monitoring.
//!
//! Bound to loopback by default; the config refuses a non-loopback address unless the
//! technician says so explicitly, because metrics name groups and categories.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::server::Handler;

/// Binds the admin address (before serving, so a bad address fails start-up).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics` and `/healthz` until the task is dropped. `/healthz` asks the DNS
/// listener at `probe` a real question, so "answering" means a query really got an answer.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    handler: Arc<Handler>,
    probe: Option<SocketAddr>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                let handler = handler.clone();
                async move {
                    let answering = req.uri().path() == "/healthz" && answers(probe).await;
                    Ok::<_, Infallible>(route(&req, &metrics, &handler, answering))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Sends one query the server answers itself (`resolver.arpa`, never forwarded) over UDP.
async fn answers(probe: Option<SocketAddr>) -> bool {
    let Some(mut to) = probe else {
        return false;
    };
    if to.ip().is_unspecified() {
        to.set_ip(if to.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let local: SocketAddr = if to.is_ipv4() {
        (std::net::Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (std::net::Ipv6Addr::LOCALHOST, 0).into()
    };
    let Ok(sock) = tokio::net::UdpSocket::bind(local).await else {
        return false;
    };
    // ID 0x5347, RD, one question: resolver.arpa A IN.
    let query =
        b"\x53\x47\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x08resolver\x04arpa\x00\x00\x01\x00\x01";
    if sock.send_to(query, to).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    let answer = tokio::time::timeout(std::time::Duration::from_secs(1), sock.recv(&mut buf)).await;
    matches!(answer, Ok(Ok(n)) if n >= 12 && buf[..2] == [0x53, 0x47] && buf[2] & 0x80 != 0)
}

fn route(
    req: &Request<Incoming>,
    metrics: &Metrics,
    handler: &Handler,
    answering: bool,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/healthz" => {
            let engine = handler.engine();
            let loaded = engine.index_len() > 0 || engine.config().start_unfiltered;
            let status = match (answering, loaded) {
                (false, _) => "not answering",
                (true, false) => "unfiltered",
                (true, true) => "ok",
            };
            let upstreams: Vec<_> = handler
                .upstream_health()
                .into_iter()
                .map(|(addr, aside)| {
                    serde_json::json!({"addr": addr.to_string(), "set_aside": aside})
                })
                .collect();
            let forwards: Vec<_> = handler
                .forward_health()
                .into_iter()
                .map(|(zone, addr, aside)| {
                    serde_json::json!({"zone": zone, "addr": addr.to_string(), "set_aside": aside})
                })
                .collect();
            let log = handler.journal_stats().map(|s| {
                serde_json::json!({
                    "breach_pending": s.breach_pending.load(Ordering::Relaxed),
                    "breach_lost": s.breach_lost.load(Ordering::Relaxed),
                    "write_errors": s.write_errors.load(Ordering::Relaxed),
                    "last_error": s.last_error.lock().ok().and_then(|e| e.clone()),
                })
            });
            // Upstreams and logging are reported, not judged: blocked names and cached
            // answers are still served without them.
            let body = serde_json::json!({
                "status": status,
                "answering": answering,
                "lists_loaded": loaded,
                "names": engine.index_len(),
                "upstreams": upstreams,
                "forwards": forwards,
                "log": log,
            });
            let code = if loaded && answering {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(code, "application/json", body.to_string())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /healthz\n".into(),
        ),
    }
}

fn reply(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}
