//! The plain-HTTP endpoints every subcommand serves: `/livez`, `/readyz` and `/metrics`.

use std::borrow::Cow;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse as _;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Content type of the OpenMetrics text format that `/metrics` answers with.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether a component is ready: `Err` carries the reason `/readyz` answers with its 503.
pub type Readiness = Result<(), Cow<'static, str>>;

/// A readiness check, asked on every `/readyz` request (keep it cheap: read a flag, not the network).
pub trait ReadinessCheck: Send + Sync + 'static {
    /// `Ok` when ready, else why not.
    fn check(&self) -> Readiness;
}

impl<F> ReadinessCheck for F
where
    F: Fn() -> Readiness + Send + Sync + 'static,
{
    fn check(&self) -> Readiness {
        self()
    }
}

/// The metrics of `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// `/livez` (always 200 `ok`) and `/readyz` (200 `ok`, or 503 with the reason `ready` gives).
pub fn probes(ready: impl ReadinessCheck) -> Router {
    let ready = Arc::new(ready);
    Router::new().route("/livez", get(|| async { "ok" })).route(
        "/readyz",
        get(move || async move {
            match ready.check() {
                Ok(()) => "ok".into_response(),
                Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
            }
        }),
    )
}

/// [`probes`] plus `/metrics`, which encodes `registry` on every request.
pub fn probes_and_metrics(registry: Arc<Registry>, ready: impl ReadinessCheck) -> Router {
    probes(ready).route(
        "/metrics",
        get(move || async move {
            (
                [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
                encode(&registry),
            )
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio_util::sync::CancellationToken;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn readyz_follows_the_check_and_metrics_encode_the_registry() {
        let mut registry = Registry::with_prefix("probe_test");
        let counter = Counter::<u64>::default();
        registry.register("events", "Events seen", counter.clone());
        counter.inc();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let router = probes_and_metrics(Arc::new(registry), move || {
            if flag.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("still starting".into())
            }
        });
        let shutdown = CancellationToken::new();
        let (addr, server) = crate::spawn_plain(([127, 0, 0, 1], 0).into(), router, shutdown.clone())
            .await
            .unwrap();

        let expect = |answer: String, status: &str, body: &str| {
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")) && answer.ends_with(body),
                "expected {status} ending in {body:?}: {answer}"
            );
        };
        expect(get(addr, "/livez").await, "200", "ok");
        expect(get(addr, "/readyz").await, "503", "still starting");
        ready.store(true, Ordering::Release);
        expect(get(addr, "/readyz").await, "200", "ok");
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains(OPENMETRICS_CONTENT_TYPE), "{metrics}");
        expect(metrics, "200", "probe_test_events_total 1\n# EOF\n");
        shutdown.cancel();
        server.await.unwrap();
    }
}
