//! The kubelet's plugin manager dials the registration socket by its path, so grpc-go sends that path as the
//! HTTP/2 `:authority`, which is not an RFC 3986 authority. The registration service must answer such a
//! request (with an unpatched `h2` the stream was reset with PROTOCOL_ERROR and the kubelet never registered
//! the driver; see tools/patched/README.md).
//!
//! The request is written byte by byte (HPACK literals without Huffman coding), because no Rust HTTP/2
//! client sends an authority like that.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Duration;

use io_csi_driver::server::{Registrar, RegistrationState, registration_socket, serve_registration};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

const HEADERS: u8 = 0x1;
const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// A literal header field without indexing, its name taken from the static table entry `index` (< 15).
fn literal_indexed_name(index: u8, value: &str) -> Vec<u8> {
    let mut out = vec![index];
    out.push(u8::try_from(value.len()).unwrap());
    out.extend(value.as_bytes());
    out
}

/// A literal header field without indexing with a new name.
fn literal_new_name(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0, u8::try_from(name.len()).unwrap()];
    out.extend(name.as_bytes());
    out.push(u8::try_from(value.len()).unwrap());
    out.extend(value.as_bytes());
    out
}

#[tokio::test]
async fn get_info_is_answered_when_the_authority_is_the_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let socket = registration_socket(dir.path());
    let listener = UnixListener::bind(&socket).unwrap();
    let shutdown = CancellationToken::new();
    let registrar = Registrar {
        kubelet_endpoint: "/var/lib/kubelet/plugins/csi.oneagent.dynatrace.com/csi.sock".to_owned(),
        state: RegistrationState::default(),
    };
    let server = tokio::spawn(serve_registration(listener, registrar, shutdown.clone()));

    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table, indexed)
    block.extend(literal_indexed_name(
        4,
        "/pluginregistration.Registration/GetInfo",
    )); // :path
    block.extend(literal_indexed_name(1, &socket.display().to_string())); // :authority, as grpc-go sends it
    block.extend(literal_new_name("content-type", "application/grpc"));
    block.extend(literal_new_name("te", "trailers"));
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    request.extend(frame(SETTINGS, 0, 0, &[]));
    request.extend(frame(HEADERS, END_HEADERS, 1, &block));
    // An empty InfoRequest: uncompressed, length 0.
    request.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]));

    let mut stream = UnixStream::connect(&socket).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut header = [0_u8; 9];
            stream.read_exact(&mut header).await.unwrap();
            let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0_u8; len];
            stream.read_exact(&mut payload).await.unwrap();
            let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            if id == 1 && (header[3] == HEADERS || header[3] == RST_STREAM) {
                return header[3];
            }
        }
    })
    .await
    .expect("an answer on the request's stream");
    assert_eq!(
        answer, HEADERS,
        "the request was answered, not reset (RST_STREAM = {RST_STREAM})"
    );
    // The server shuts down gracefully: it waits for open connections.
    drop(stream);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}
