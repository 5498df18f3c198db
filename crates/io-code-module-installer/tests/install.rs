//! The installer against archives served over HTTP (`Source::Url`): hostile ones that only a whole-archive
//! view catches, corruption, replacement of an earlier install, and leftovers of a killed run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::Write as _;
use std::path::Path;

use io_code_module_installer::{InstallError, InstallOptions, STAGING_PREFIX, Source, install};
use io_tenant_client::{ClientConfig, TenantClient};
use zip::write::SimpleFileOptions;

const VERSION: &str = "1.277.0.20230914-094321";

/// Serves `body` to every request on a local port.
async fn serve(body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/agent.zip", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(&body).await.unwrap();
            let _ = socket.shutdown().await;
        }
    });
    url
}

fn client() -> TenantClient {
    TenantClient::new(ClientConfig::new("http://127.0.0.1:1/api", "unused")).unwrap()
}

/// An agent tree, then `extra` adds more entries.
fn archive(extra: impl FnOnce(&mut zip::ZipWriter<std::io::Cursor<Vec<u8>>>)) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.add_directory(format!("agent/bin/{VERSION}/"), options)
        .unwrap();
    zip.start_file("agent/conf/ruxitagentproc.conf", options).unwrap();
    zip.write_all(b"[general]\n").unwrap();
    zip.start_file("agent/lib64/liboneagentproc.so", options).unwrap();
    zip.write_all(b"library").unwrap();
    extra(&mut zip);
    zip.finish().unwrap().into_inner()
}

async fn install_from(body: Vec<u8>, target: &Path) -> Result<(), InstallError> {
    let url = serve(body).await;
    let options = InstallOptions {
        attempts: 1,
        ..InstallOptions::default()
    };
    install(&client(), &Source::Url(url), target, &options)
        .await
        .map(drop)
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_chain_of_harmless_looking_links_that_leaves_the_target_is_refused() {
    let body = archive(|zip| {
        let options = SimpleFileOptions::default();
        // deep/a/b/l leads to the root; s goes one further up through it.
        zip.add_symlink("deep/a/b/l", "../../..", options).unwrap();
        zip.add_symlink("s", "deep/a/b/l/..", options).unwrap();
    });
    let target = tempfile::tempdir().unwrap();
    let error = install_from(body, target.path()).await.unwrap_err();
    assert!(error.to_string().contains("\"s\""), "{error}");
    assert!(listing(target.path()).is_empty(), "{:?}", listing(target.path()));
}

#[tokio::test]
async fn a_file_below_a_symlink_entry_is_refused() {
    let body = archive(|zip| {
        let options = SimpleFileOptions::default();
        zip.add_symlink("agent/out", "../../../../tmp", options).unwrap();
        zip.start_file("agent/out/x", options).unwrap();
        zip.write_all(b"x").unwrap();
    });
    let target = tempfile::tempdir().unwrap();
    let error = install_from(body, target.path()).await.unwrap_err();
    assert!(error.to_string().contains("\"agent/out/x\""), "{error}");
    assert!(listing(target.path()).is_empty());
}

#[tokio::test]
async fn corrupted_data_fails_its_crc() {
    let mut body = archive(|_| {});
    let at = body.windows(7).position(|w| w == b"library").unwrap();
    body[at] = b'L';
    let target = tempfile::tempdir().unwrap();
    let error = install_from(body, target.path()).await.unwrap_err();
    assert!(error.to_string().contains("CRC-32"), "{error}");
    assert!(listing(target.path()).is_empty());
}

#[tokio::test]
async fn not_a_zip_is_said_so() {
    let target = tempfile::tempdir().unwrap();
    let error = install_from(b"<html>login</html>".to_vec(), target.path())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("is it a zip file?"), "{error}");
    assert!(listing(target.path()).is_empty());
}

#[tokio::test]
async fn an_install_replaces_the_previous_tree_and_leftovers() {
    let target = tempfile::tempdir().unwrap();
    let body = archive(|zip| {
        zip.start_file("agent/old-only", SimpleFileOptions::default())
            .unwrap();
    });
    install_from(body, target.path()).await.unwrap();
    assert!(target.path().join("agent/old-only").is_file());
    // A killed run's staging directory, and a file of the volume's own.
    std::fs::create_dir(target.path().join(format!("{STAGING_PREFIX}1-2"))).unwrap();
    std::fs::write(target.path().join("unrelated"), "kept").unwrap();
    install_from(archive(|_| {}), target.path()).await.unwrap();
    assert!(
        !target.path().join("agent/old-only").exists(),
        "the agent tree is replaced"
    );
    assert_eq!(listing(target.path()), ["agent", "unrelated"]);
    assert_eq!(
        std::fs::read_link(target.path().join("agent/bin/current")).unwrap(),
        Path::new(VERSION)
    );
}

#[tokio::test]
async fn an_archive_without_a_version_directory_is_incomplete() {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("agent/lib64/liboneagentproc.so", SimpleFileOptions::default())
        .unwrap();
    let body = zip.finish().unwrap().into_inner();
    let target = tempfile::tempdir().unwrap();
    let error = install_from(body, target.path()).await.unwrap_err();
    assert!(
        error.to_string().contains("the code module is incomplete"),
        "{error}"
    );
    assert!(listing(target.path()).is_empty());
}
