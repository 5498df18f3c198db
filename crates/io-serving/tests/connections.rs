//! Connection limits over real TCP: silent and idle HTTP/1.1 and HTTP/2 connections are closed, the cap
//! frees up again once they are, and refusals are logged once per interval.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use io_serving::{Connections, ServeOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

struct Server {
    addr: SocketAddr,
    connections: Connections,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(options: ServeOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let connections = Connections::new(options.max_connections);
        let router = Router::new().route("/", get(|| async { "hello" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        );
        let task = tokio::spawn(io_serving::serve_with(
            listener,
            None,
            router,
            shutdown.clone(),
            options,
            connections.clone(),
        ));
        Self {
            addr,
            connections,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the server stops")
            .unwrap();
    }
}

fn options(header_timeout: Duration, idle_timeout: Duration) -> ServeOptions {
    ServeOptions {
        header_timeout,
        idle_timeout,
        drain_timeout: Duration::from_secs(2),
        ..ServeOptions::default()
    }
}

/// How long until the server closes `tcp` (reads and discards whatever it sends first).
async fn time_until_closed(tcp: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), tcp.read(&mut buf)).await {
            Err(_) => panic!("the connection was still open after {limit:?}"),
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// One HTTP/1.1 keep-alive GET; returns the connection for reuse.
async fn get_keep_alive(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"hello") {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    tcp
}

async fn get_once(addr: SocketAddr) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await?;
    anyhow::ensure!(answer.starts_with("HTTP/1.1 200"), "answer: {answer:?}");
    Ok(answer)
}

#[tokio::test]
async fn connections_that_never_send_a_request_are_closed_after_the_header_timeout() {
    let server = Server::start(options(Duration::from_millis(700), Duration::from_secs(60))).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut preface_only = TcpStream::connect(server.addr).await.unwrap();
    preface_only.write_all(PREFACE).await.unwrap();
    let limit = Duration::from_secs(10);
    let (silent_closed, preface_closed) = tokio::join!(
        time_until_closed(&mut silent, limit),
        time_until_closed(&mut preface_only, limit)
    );
    for (what, after) in [("silent", silent_closed), ("HTTP/2 preface only", preface_closed)] {
        assert!(
            after >= Duration::from_millis(600) && after < Duration::from_secs(5),
            "{what}: closed after {after:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn idle_http1_and_http2_connections_are_closed_after_the_idle_timeout() {
    // The header timeout is longer, so it is the idle timeout that closes them.
    let server = Server::start(options(Duration::from_secs(30), Duration::from_secs(1))).await;

    let mut http1 = get_keep_alive(server.addr).await;
    let http1_closed = time_until_closed(&mut http1, Duration::from_secs(10)).await;

    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/", server.addr))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    drop(body);
    let started = Instant::now();
    // The server's GOAWAY ends the client's connection task.
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the HTTP/2 connection was still open after 10 s")
        .unwrap()
        .ok();
    let http2_closed = started.elapsed();
    drop(client);

    for (what, after) in [("HTTP/1.1", http1_closed), ("HTTP/2", http2_closed)] {
        assert!(
            after >= Duration::from_millis(800) && after < Duration::from_secs(5),
            "{what}: closed after {after:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn at_the_cap_connections_are_refused_until_idle_ones_are_closed() {
    let options = ServeOptions {
        max_connections: 3,
        ..options(Duration::from_secs(2), Duration::from_secs(60))
    };
    let server = Server::start(options).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while !server.connections.is_full() {
        assert!(Instant::now() < deadline, "the cap was not reached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.connections.open(), 3);
    assert!(get_once(server.addr).await.is_err(), "refused at the cap");

    // The silent ones are closed after the header timeout; then requests are served again.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        if get_once(server.addr).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "still refused after 8 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!server.connections.is_full());
    server.stop().await;
}

/// Log lines written while a test runs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The `refused=N` counts of the refusal lines.
    fn refusal_counts(&self) -> Vec<u64> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter_map(|line| line.split("refused=").nth(1))
            .map(|count| count.split_whitespace().next().unwrap().parse().unwrap())
            .collect()
    }
}

#[tokio::test]
async fn refusals_are_logged_once_per_interval_with_their_count() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    // A current-thread test runtime: the server's tasks log on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    let options = ServeOptions {
        max_connections: 1,
        refusal_log_interval: Duration::from_millis(1500),
        ..options(Duration::from_secs(30), Duration::from_secs(60))
    };
    let server = Server::start(options).await;
    // A request in flight: its connection is not idle, so refusals do not close it.
    let mut held = TcpStream::connect(server.addr).await.unwrap();
    held.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..40 {
        assert!(get_once(server.addr).await.is_err());
    }
    assert_eq!(
        captured.refusal_counts(),
        [1],
        "one line for the first refusal, the rest wait for the interval"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    for _ in 0..10 {
        assert!(get_once(server.addr).await.is_err());
    }
    assert_eq!(
        captured.refusal_counts(),
        [1, 40],
        "the next line counts every refusal since the last one"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_refusal_closes_connections_idle_for_a_second_so_the_retry_is_served() {
    let options = ServeOptions {
        max_connections: 2,
        ..options(Duration::from_secs(30), Duration::from_secs(60))
    };
    let server = Server::start(options).await;
    let mut idle = vec![
        TcpStream::connect(server.addr).await.unwrap(),
        get_keep_alive(server.addr).await,
    ];
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(server.connections.is_full());
    assert!(get_once(server.addr).await.is_err(), "refused at the cap");
    for tcp in &mut idle {
        let closed = time_until_closed(tcp, Duration::from_secs(5)).await;
        assert!(closed < Duration::from_secs(2), "closed after {closed:?}");
    }
    get_once(server.addr).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn an_http1_connection_waiting_for_its_next_request_gets_the_header_timeout() {
    // hyper's header timer runs while it waits for the next request head, so an idle HTTP/1.1
    // connection closes after the shorter of the two timeouts.
    let server = Server::start(options(Duration::from_secs(1), Duration::from_secs(60))).await;
    let mut http1 = get_keep_alive(server.addr).await;
    let closed = time_until_closed(&mut http1, Duration::from_secs(10)).await;
    assert!(closed < Duration::from_secs(4), "closed after {closed:?}");
    server.stop().await;
}
