//! Serving an axum router on a TCP listener, in plain text or with rustls: HTTP/1.1 and HTTP/2, timeouts
//! for the TLS handshake, the request headers and idle connections, a cap on open connections that callers
//! can observe (for readiness), refusals logged once per interval, and a graceful shutdown that lets
//! requests in flight finish. Shared by the webhook server and the fake tenant.
//!
//! Also the rest of the plumbing every subcommand shares: [`logging`] set-up and the [`probes`] router
//! (`/livez`, `/readyz`, `/metrics`).

pub mod logging;
pub mod probes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Limits of a server.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time a client gets for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client gets to send request headers, and the time a new connection gets to start its first
    /// request (a connection that sends nothing, or only the HTTP/2 preface, is closed after it). hyper
    /// runs this timer while an HTTP/1.1 connection waits for its next request too, so an idle HTTP/1.1
    /// connection is closed after the shorter of this and `idle_timeout`.
    pub header_timeout: Duration,
    /// How long a connection may stay open without a request in flight after its last response. HTTP/2
    /// connections get a GOAWAY, HTTP/1.1 connections are closed. HTTP/2 pings do not count as activity.
    pub idle_timeout: Duration,
    /// How often an HTTP/2 connection is pinged to find out that the peer is gone; `None` never pings.
    pub http2_keep_alive_interval: Option<Duration>,
    /// How long a ping may stay unanswered before the HTTP/2 connection is closed.
    pub http2_keep_alive_timeout: Duration,
    /// Connections served at once; more are refused until one ends. A refusal makes connections that
    /// have been idle for a second close at once, so that the client's next attempt finds a slot.
    pub max_connections: usize,
    /// Refused connections are logged at most once per this interval, with their count.
    pub refusal_log_interval: Duration,
    /// How long requests in flight may take to finish after shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    /// Production defaults:
    /// - handshake and header timeouts of 10 s: a client on a working network needs milliseconds; the
    ///   API server's own client gives the TLS handshake 10 s.
    /// - an idle timeout of 120 s for HTTP/2: longer than the 90 s after which Go's HTTP client (the API
    ///   server's webhook client) drops its own idle connections, so it is the client, which knows when it
    ///   is about to send, that closes; short enough that a connection a client abandoned frees its slot
    ///   within two minutes. (Idle HTTP/1.1 connections close after the 10 s header timeout, as before.)
    /// - HTTP/2 pings every 30 s with 10 s to answer: a vanished peer (node gone, no FIN) is noticed
    ///   within 40 s even while a request is in flight; one ping frame per 30 s costs nothing.
    /// - 1,024 connections: far more than the API server replicas open (a few each); a refusal closes the
    ///   connections idle for a second, so legitimate clients get a slot on their retry.
    /// - refusals logged once per 10 s, drain of 10 s: within the 30 s grace period Kubernetes gives a
    ///   terminating pod.
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            http2_keep_alive_interval: Some(Duration::from_secs(30)),
            http2_keep_alive_timeout: Duration::from_secs(10),
            max_connections: 1024,
            refusal_log_interval: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// A port that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}; choose another address or port, or stop what uses it")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Why binding failed.
    pub source: std::io::Error,
}

/// Binds `addr` and serves `router` there in plain HTTP with the default [`ServeOptions`] until
/// `shutdown`: a subcommand's probes and metrics in one call. Returns the bound address (useful with port
/// 0) and the serving task.
pub async fn spawn_plain(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    let task = tokio::spawn(serve(listener, None, router, shutdown, ServeOptions::default()));
    Ok((bound, task))
}

/// The connection slots of a server: how many are in use, and whether a new connection would be refused.
/// Cloned handles observe the same server (for a readiness probe).
#[derive(Debug, Clone)]
pub struct Connections {
    slots: Arc<Semaphore>,
    max: usize,
    /// Signalled when a connection was refused: idle connections close early to make room.
    pressure: Arc<Notify>,
}

impl Connections {
    /// Slots for `max` connections at once.
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            pressure: Arc::new(Notify::new()),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether every slot is taken, so that a new connection would be refused.
    pub fn is_full(&self) -> bool {
        self.slots.available_permits() == 0
    }
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown`, then waits up to
/// `options.drain_timeout` for requests in flight.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    shutdown: CancellationToken,
    options: ServeOptions,
) {
    let connections = Connections::new(options.max_connections);
    serve_with(listener, tls, router, shutdown, options, connections).await;
}

/// [`serve`] with connection slots the caller can observe; their cap replaces `options.max_connections`.
pub async fn serve_with(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    shutdown: CancellationToken,
    options: ServeOptions,
    connections: Connections,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.http2_keep_alive_interval)
        .keep_alive_timeout(options.http2_keep_alive_timeout);
    let builder = Arc::new(builder);
    let tasks = TaskTracker::new();
    let mut refusals = RefusalLog::new(options.refusal_log_interval);
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(err) => {
                    tracing::warn!(%err, "accepting a connection failed");
                    // Out of file descriptors, for example: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = connections.slots.clone().try_acquire_owned() else {
            refusals.refused(connections.max, options.idle_timeout);
            // Make room for the client's retry: idle connections close now rather than at their timeout.
            connections.pressure.notify_waiters();
            continue;
        };
        refusals.accepted();
        // Answers are small and written at once; Nagle's algorithm would only hold back a response's last
        // segment until the client acknowledges the previous one.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, %err, "setting TCP_NODELAY failed");
        }
        let (tls, builder, router, shutdown) =
            (tls.clone(), builder.clone(), router.clone(), shutdown.clone());
        let pressure = connections.pressure.clone();
        tasks.spawn(async move {
            let result = match tls {
                None => serve_connection(&builder, tcp, router, &options, &shutdown, &pressure).await,
                Some(acceptor) => {
                    match tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(&builder, stream, router, &options, &shutdown, &pressure).await
                        }
                        Ok(Err(err)) => return tracing::debug!(%peer, %err, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tasks.close();
    // Each connection closes within the drain timeout by itself; a little slack for the last writes.
    if tokio::time::timeout(options.drain_timeout + Duration::from_secs(1), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "some requests did not finish within {:?} of shutdown",
            options.drain_timeout
        );
    }
}

/// How long an idle HTTP/2 connection gets to acknowledge its GOAWAY: a live client answers within a
/// round trip, and no request of ours is in flight (Go's HTTP/2 server waits 1 s as well).
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a connection must have been idle to be closed early when the cap is reached: a client that
/// sends requests back to back keeps its connection.
const MIN_IDLE_UNDER_PRESSURE: Duration = Duration::from_secs(1);

/// Whether a connection has requests in flight, and since when it has none.
#[derive(Debug, Clone, Copy)]
struct Activity {
    in_flight: usize,
    /// When the last request ended, or when the connection opened.
    since: Instant,
    /// Whether a request has arrived at all.
    served: bool,
}

/// Counts a request as in flight until its response body is done (or dropped).
struct InFlight(Arc<watch::Sender<Activity>>);

impl InFlight {
    fn begin(activity: &Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| {
            a.in_flight += 1;
            a.served = true;
        });
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.in_flight = a.in_flight.saturating_sub(1);
            a.since = Instant::now();
        });
    }
}

/// Returns once the connection has had no request in flight for the idle timeout (before the first
/// request: for the header timeout), or, when a connection was refused for want of a slot, once it has had
/// none for [`MIN_IDLE_UNDER_PRESSURE`].
async fn idle(activity: &mut watch::Receiver<Activity>, options: &ServeOptions, pressure: &Notify) {
    loop {
        let now = *activity.borrow_and_update();
        if now.in_flight == 0 {
            let limit = if now.served {
                options.idle_timeout
            } else {
                options.header_timeout
            };
            tokio::select! {
                () = tokio::time::sleep_until(now.since + limit) => return,
                changed = activity.changed() => if changed.is_err() { return },
                () = pressure.notified() => if now.since.elapsed() >= MIN_IDLE_UNDER_PRESSURE { return },
            }
        } else if activity.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_connection<I>(
    builder: &Builder<TokioExecutor>,
    io: I,
    router: Router,
    options: &ServeOptions,
    shutdown: &CancellationToken,
    pressure: &Notify,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (activity, mut watch_activity) = watch::channel(Activity {
        in_flight: 0,
        since: Instant::now(),
        served: false,
    });
    let activity = Arc::new(activity);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let in_flight = InFlight::begin(&activity);
        let mut router = router.clone();
        async move {
            let response = tower_service::Service::call(&mut router, request.map(Body::new)).await?;
            // The guard lives as long as the response body, so a long download is not idle.
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &in_flight;
                    frame
                }))
            }))
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let grace = tokio::select! {
        result = connection.as_mut() => return result,
        () = shutdown.cancelled() => options.drain_timeout,
        () = idle(&mut watch_activity, options, pressure) => {
            tracing::debug!("closing an idle connection");
            IDLE_CLOSE_GRACE
        }
    };
    // HTTP/2 clients get a GOAWAY and may finish their streams; a client that never completes the
    // close handshake (it does not answer the ping that follows the GOAWAY) is cut off after the grace.
    connection.as_mut().graceful_shutdown();
    match tokio::time::timeout(grace, connection).await {
        Ok(result) => result,
        Err(_) => Err(format!("the connection did not close within {grace:?}").into()),
    }
}

/// Refused connections, reported at most once per interval with their count.
struct RefusalLog {
    interval: Duration,
    last_report: Option<Instant>,
    unreported: u64,
}

impl RefusalLog {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_report: None,
            unreported: 0,
        }
    }

    fn due(&self) -> bool {
        self.last_report
            .is_none_or(|last| last.elapsed() >= self.interval)
    }

    fn refused(&mut self, max: usize, idle_timeout: Duration) {
        self.unreported += 1;
        if self.due() {
            tracing::warn!(
                refused = self.unreported,
                max_connections = max,
                "refused {} connection(s) since the last report: all {max} connection slots are in use \
                 (idle connections are closed after {idle_timeout:?}; raise the cap or find the client that \
                 holds them)",
                self.unreported,
            );
            self.last_report = Some(Instant::now());
            self.unreported = 0;
        }
    }

    fn accepted(&mut self) {
        if self.unreported > 0 && self.due() {
            tracing::warn!(
                refused = self.unreported,
                "refused {} more connection(s) since the last report; accepting again",
                self.unreported,
            );
            self.last_report = Some(Instant::now());
            self.unreported = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn serves_plain_http_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let router = Router::new().route("/", get(|| async { "hello" }));
        let server = tokio::spawn(serve(
            listener,
            None,
            router,
            shutdown.clone(),
            ServeOptions::default(),
        ));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"),
            "{answer}"
        );
        shutdown.cancel();
        server.await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }
}
