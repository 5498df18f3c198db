//! The registry under `/v2/`: the pull sequence of a container runtime, `latest` following the tenant's
//! version, authentication, HEAD, errors, faults and streaming of big blobs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use std::io::Write as _;
use test_fake_tenant::{Endpoint, FakeTenant, Fault, ImageError, Listen};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The tag the operator asks for when the DynaKube pins the latest version.
const LATEST_TAG: &str = "1.277.0";
const NEWER: &str = "1.278.0.20231001-000000";
const NEWER_TAG: &str = "1.278.0";

/// What a kubelet passes from the pull Secret: the environment id and the token.
fn pull(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request.basic_auth("abc12345", Some(TOKEN))
}

fn v2(tenant: &FakeTenant, rest: &str) -> String {
    format!("{}/v2/{rest}", tenant.base_url())
}

/// Asserts a registry error answer and returns its message.
async fn expect_registry_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], code, "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty());
    message
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers()[name].to_str().unwrap().to_owned()
}

/// A tenant with `linux/oneagent:<tag>` loaded from a fresh layout for each `(tag, content)`.
async fn tenant_with(images: &[(&str, &[u8])]) -> (FakeTenant, tempfile::TempDir, Vec<BuiltImage>) {
    let dir = tempfile::tempdir().unwrap();
    let built = oci_layout(dir.path(), images);
    let tenant = start().await;
    for image in &built {
        let info = tenant
            .add_image(&format!("linux/oneagent:{}", image.tag), dir.path())
            .await
            .unwrap();
        assert_eq!(info.digest, image.manifest_digest);
        assert_eq!(info.media_type, OCI_MANIFEST);
        assert_eq!(info.blobs, 2);
    }
    (tenant, dir, built)
}

#[tokio::test]
async fn a_runtime_pulls_the_latest_oneagent_image() {
    let (tenant, _dir, built) = tenant_with(&[(LATEST_TAG, b"#!/bin/sh\necho oneagent 1.277\n")]).await;
    let http = client(None);

    // Version check without credentials: the Basic challenge.
    let response = http.get(v2(&tenant, "")).send().await.unwrap();
    let challenge = header(&response, "www-authenticate");
    assert!(challenge.starts_with("Basic realm=\""), "{challenge}");
    expect_registry_error(response, 401, "UNAUTHORIZED").await;
    let response = pull(http.get(v2(&tenant, ""))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        header(&response, "docker-distribution-api-version"),
        "registry/2.0"
    );

    // containerd resolves the tag with HEAD first, and is challenged as well.
    let response = http
        .head(v2(&tenant, "linux/oneagent/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert!(response.headers().contains_key("www-authenticate"));

    let response = pull(http.get(v2(&tenant, "linux/oneagent/manifests/latest")))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(header(&response, "content-type"), OCI_MANIFEST);
    let manifest_digest = header(&response, "docker-content-digest");
    let length: usize = header(&response, "content-length").parse().unwrap();
    let manifest = response.bytes().await.unwrap();
    assert_eq!(manifest.len(), length);
    assert_eq!(digest(&manifest), manifest_digest);
    assert_eq!(manifest_digest, built[0].manifest_digest);

    // By digest: the same bytes.
    let by_digest = pull(http.get(v2(
        &tenant,
        &format!("linux/oneagent/manifests/{manifest_digest}"),
    )))
    .send()
    .await
    .unwrap();
    assert_eq!(by_digest.status().as_u16(), 200);
    assert_eq!(by_digest.bytes().await.unwrap(), manifest);

    // Config and layer blobs, each checked against its descriptor.
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let mut descriptors = vec![manifest["config"].clone()];
    descriptors.extend(manifest["layers"].as_array().unwrap().iter().cloned());
    let mut blobs = Vec::new();
    for descriptor in &descriptors {
        let wanted = descriptor["digest"].as_str().unwrap();
        let response = pull(http.get(v2(&tenant, &format!("linux/oneagent/blobs/{wanted}"))))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(header(&response, "docker-content-digest"), wanted);
        let body = response.bytes().await.unwrap();
        assert_eq!(body.len() as u64, descriptor["size"].as_u64().unwrap());
        assert_eq!(digest(&body), wanted);
        blobs.push(body);
    }
    let config: serde_json::Value = serde_json::from_slice(&blobs[0]).unwrap();
    assert_eq!(
        config["config"]["Labels"]["com.dynatrace.build-version"],
        LATEST_TAG
    );
    assert_eq!(
        file_in_layer(&blobs[1], "opt/oneagent"),
        b"#!/bin/sh\necho oneagent 1.277\n"
    );

    // Every call is in the log with its endpoint, status and the token of the credentials.
    let log = tenant.requests();
    let calls: Vec<_> = log
        .iter()
        .map(|r| (r.endpoint, r.method.as_str(), r.status))
        .collect();
    assert_eq!(
        calls,
        [
            (Endpoint::RegistryBase, "GET", 401),
            (Endpoint::RegistryBase, "GET", 200),
            (Endpoint::RegistryManifests, "HEAD", 401),
            (Endpoint::RegistryManifests, "GET", 200),
            (Endpoint::RegistryManifests, "GET", 200),
            (Endpoint::RegistryBlobs, "GET", 200),
            (Endpoint::RegistryBlobs, "GET", 200),
        ]
    );
    assert_eq!(log[1].token.as_deref(), Some(TOKEN));
    assert_eq!(tenant.request_count(Endpoint::RegistryBlobs), 2);
    tenant.shutdown().await;
}

#[tokio::test]
async fn latest_follows_the_published_version() {
    let (tenant, _dir, built) = tenant_with(&[(LATEST_TAG, b"old"), (NEWER_TAG, b"new")]).await;
    let http = client(None);
    let latest_digest = || async {
        let response = pull(http.head(v2(&tenant, "linux/oneagent/manifests/latest")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        header(&response, "docker-content-digest")
    };
    assert_eq!(latest_digest().await, built[0].manifest_digest);

    tenant.publish_version(NEWER);
    assert_eq!(latest_digest().await, built[1].manifest_digest);
    let tags: serde_json::Value = pull(http.get(v2(&tenant, "linux/oneagent/tags/list")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        tags,
        json!({"name": "linux/oneagent", "tags": [LATEST_TAG, NEWER_TAG, "latest"]})
    );

    // Back to an older version (published again), then to one without an image.
    tenant.publish_version(LATEST);
    assert_eq!(latest_digest().await, built[0].manifest_digest);
    tenant.publish_version("1.279.0.20231101-000000");
    let response = pull(http.get(v2(&tenant, "linux/oneagent/manifests/latest")))
        .send()
        .await
        .unwrap();
    let message = expect_registry_error(response, 404, "MANIFEST_UNKNOWN").await;
    assert!(message.contains("1.279.0.20231101-000000"), "{message}");
    assert!(message.contains("linux/oneagent:1.279.0"), "{message}");

    // latest cannot be loaded by hand: it would hide the version's image.
    let error = tenant
        .add_image("linux/oneagent:latest", _dir.path())
        .await
        .unwrap_err();
    assert!(matches!(error, ImageError::OneAgentLatest), "{error}");
    tenant.shutdown().await;
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_refused() {
    let (tenant, _dir, _) = tenant_with(&[(LATEST_TAG, b"x")]).await;
    let http = client(None);
    let url = v2(&tenant, "linux/oneagent/manifests/latest");

    let response = http
        .get(&url)
        .basic_auth("abc12345", Some("dt0c01.WRONG"))
        .send()
        .await
        .unwrap();
    assert!(header(&response, "www-authenticate").starts_with("Basic "));
    let message = expect_registry_error(response, 401, "UNAUTHORIZED").await;
    assert!(message.contains("abc12345"), "{message}");
    assert!(
        !message.contains("dt0c01.WRONG"),
        "the token leaks into {message}"
    );

    // A token of the environment without InstallerDownload.
    let response = http
        .get(&url)
        .basic_auth("abc12345", Some(EXPORT_ONLY))
        .send()
        .await
        .unwrap();
    expect_registry_error(response, 403, "DENIED").await;

    // The API's own header does not authenticate the registry.
    let response = http
        .get(&url)
        .header("Authorization", format!("Api-Token {TOKEN}"))
        .send()
        .await
        .unwrap();
    expect_registry_error(response, 401, "UNAUTHORIZED").await;
    tenant.shutdown().await;
}

#[tokio::test]
async fn head_gives_the_headers_of_get_without_a_body() {
    let (tenant, _dir, built) = tenant_with(&[(LATEST_TAG, b"payload")]).await;
    let http = client(None);
    let names = [
        "content-type",
        "content-length",
        "docker-content-digest",
        "docker-distribution-api-version",
    ];
    for path in [
        "linux/oneagent/manifests/latest".to_owned(),
        format!("linux/oneagent/manifests/{}", built[0].manifest_digest),
        format!("linux/oneagent/blobs/{}", built[0].layer_digest),
        format!("linux/oneagent/blobs/{}", built[0].config_digest),
    ] {
        let get = pull(http.get(v2(&tenant, &path))).send().await.unwrap();
        let head = pull(http.head(v2(&tenant, &path))).send().await.unwrap();
        assert_eq!(
            (get.status().as_u16(), head.status().as_u16()),
            (200, 200),
            "{path}"
        );
        for name in names {
            assert_eq!(
                get.headers().get(name),
                head.headers().get(name),
                "{name} of {path}"
            );
        }
        let length: usize = header(&head, "content-length").parse().unwrap();
        assert!(length > 0);
        assert_eq!(get.bytes().await.unwrap().len(), length);
        assert!(head.bytes().await.unwrap().is_empty());
    }
    tenant.shutdown().await;
}

#[tokio::test]
async fn unknown_names_manifests_and_blobs_are_registry_errors() {
    let (tenant, _dir, built) = tenant_with(&[(LATEST_TAG, b"x")]).await;
    let http = client(None);
    let get = |path: String| pull(http.get(v2(&tenant, &path))).send();

    let message = expect_registry_error(
        get("linux/nope/manifests/1".into()).await.unwrap(),
        404,
        "NAME_UNKNOWN",
    )
    .await;
    assert!(message.contains("linux/nope"), "{message}");
    let message = expect_registry_error(
        get("linux/oneagent/manifests/9.9.9".into()).await.unwrap(),
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert!(message.contains(LATEST_TAG), "names the known tags: {message}");
    let unknown = digest(b"nothing");
    expect_registry_error(
        get(format!("linux/oneagent/blobs/{unknown}")).await.unwrap(),
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    // A manifest is not served as a blob of another repository.
    expect_registry_error(
        get(format!("linux/other/blobs/{}", built[0].layer_digest))
            .await
            .unwrap(),
        404,
        "NAME_UNKNOWN",
    )
    .await;
    expect_registry_error(
        get("Linux/oneagent/manifests/1".into()).await.unwrap(),
        400,
        "NAME_INVALID",
    )
    .await;
    let response = pull(http.put(v2(&tenant, "linux/oneagent/manifests/2")))
        .send()
        .await
        .unwrap();
    expect_registry_error(response, 405, "UNSUPPORTED").await;

    // A range of a blob.
    let response = pull(http.get(v2(
        &tenant,
        &format!("linux/oneagent/blobs/{}", built[0].layer_digest),
    )))
    .header("range", "bytes=512-")
    .send()
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 206);
    let len = built[0].layer.len();
    assert_eq!(
        header(&response, "content-range"),
        format!("bytes 512-{}/{len}", len - 1)
    );
    assert_eq!(response.bytes().await.unwrap(), built[0].layer[512..]);
    tenant.shutdown().await;
}

#[tokio::test]
async fn faults_and_latency_apply_to_registry_calls() {
    let (tenant, _dir, built) = tenant_with(&[(LATEST_TAG, b"faulty")]).await;
    let http = client(None);
    let manifest = v2(&tenant, "linux/oneagent/manifests/latest");
    let blob = v2(
        &tenant,
        &format!("linux/oneagent/blobs/{}", built[0].layer_digest),
    );

    tenant.set_fault(Endpoint::RegistryManifests, Fault::Unavailable, Some(1));
    let response = pull(http.get(&manifest)).send().await.unwrap();
    assert_eq!(header(&response, "retry-after"), "1");
    expect_registry_error(response, 503, "UNAVAILABLE").await;
    assert_eq!(
        pull(http.get(&manifest)).send().await.unwrap().status().as_u16(),
        200
    );

    // Unauthorized comes with the challenge, even with good credentials.
    tenant.set_fault(Endpoint::RegistryBase, Fault::Unauthorized, Some(1));
    let response = pull(http.get(v2(&tenant, ""))).send().await.unwrap();
    assert!(response.headers().contains_key("www-authenticate"));
    expect_registry_error(response, 401, "UNAUTHORIZED").await;

    tenant.set_fault(Endpoint::RegistryBlobs, Fault::Latency { millis: 300 }, Some(1));
    let started = std::time::Instant::now();
    let response = pull(http.get(&blob)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A corrupted blob keeps its length and digest header: the client's digest check catches it.
    tenant.set_fault(Endpoint::RegistryBlobs, Fault::Corrupt, Some(1));
    let response = pull(http.get(&blob)).send().await.unwrap();
    assert_eq!(header(&response, "docker-content-digest"), built[0].layer_digest);
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len(), built[0].layer.len());
    assert_ne!(digest(&body), built[0].layer_digest);

    // A cut blob: the connection drops before the announced length.
    tenant.set_fault(Endpoint::RegistryBlobs, Fault::CutAfter { bytes: 100 }, Some(1));
    let response = pull(http.get(&blob)).send().await.unwrap();
    assert!(response.bytes().await.is_err());
    let response = pull(http.get(&blob)).send().await.unwrap();
    assert_eq!(digest(&response.bytes().await.unwrap()), built[0].layer_digest);

    // The admin API sets body faults on registry blobs too.
    let admin = client(None)
        .put(format!("{}/admin/faults", tenant.base_url()))
        .json(&json!({"endpoint": "registry_blobs", "fault": {"kind": "corrupt"}, "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status().as_u16(), 204);
    let statuses: Vec<_> = tenant
        .requests()
        .iter()
        .filter(|r| r.endpoint != Endpoint::Admin)
        .map(|r| (r.endpoint.as_str().to_owned(), r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("registry_manifests".into(), 503),
            ("registry_manifests".into(), 200),
            ("registry_base".into(), 401),
            ("registry_blobs".into(), 200),
            ("registry_blobs".into(), 200),
            ("registry_blobs".into(), 200),
            ("registry_blobs".into(), 200),
        ]
    );
    tenant.shutdown().await;
}

#[tokio::test]
async fn serves_the_registry_over_https_and_http2() {
    let ca = test_kit::pki::CertificateAuthority::new("fake-tenant-registry-ca").unwrap();
    let leaf = ca
        .issue_server_cert("fake-tenant", &["localhost"], &["127.0.0.1".parse().unwrap()])
        .unwrap();
    let tenant = FakeTenant::start(
        config(),
        Listen::Https {
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let built = oci_layout(dir.path(), &[(LATEST_TAG, b"tls")]);
    tenant
        .add_image(&format!("linux/oneagent:{LATEST_TAG}"), dir.path())
        .await
        .unwrap();
    for http in [client(Some(&ca.cert_pem())), client_h2(Some(&ca.cert_pem()))] {
        let response = pull(http.get(v2(
            &tenant,
            &format!("linux/oneagent/blobs/{}", built[0].layer_digest),
        )))
        .send()
        .await
        .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(digest(&response.bytes().await.unwrap()), built[0].layer_digest);
    }
    tenant.shutdown().await;
}

/// Resident memory of this process in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_big_blob_streams_with_flat_memory() {
    const SIZE: usize = 256 << 20;
    let dir = tempfile::tempdir().unwrap();
    // The layer is written to disk in pieces: neither the test nor the server holds it whole.
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let partial = blobs.join("partial");
    let mut hasher = Sha256::new();
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&partial).unwrap());
        let mut chunk = vec![0u8; 1 << 20];
        for i in 0..SIZE / chunk.len() {
            chunk
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (i * 31 + j) as u8);
            hasher.update(&chunk);
            file.write_all(&chunk).unwrap();
        }
        file.flush().unwrap();
    }
    let layer_hex = hex::encode(hasher.finalize());
    let layer_digest = format!("sha256:{layer_hex}");
    std::fs::rename(&partial, blobs.join(&layer_hex)).unwrap();
    let config = image_config(LATEST_TAG, &[&layer_digest]);
    let config_digest = write_blob(dir.path(), &config);
    let (manifest, manifest_digest) = write_manifest(
        dir.path(),
        &config_digest,
        config.len(),
        &[(layer_digest.clone(), SIZE as u64)],
    );
    write_index(dir.path(), &[(LATEST_TAG, &manifest, &manifest_digest)]);

    let tenant = start().await;
    let before_load = rss_kib();
    let info = tenant
        .add_image(&format!("linux/oneagent:{LATEST_TAG}"), dir.path())
        .await
        .unwrap();
    assert_eq!(info.blob_bytes, SIZE as u64 + config.len() as u64);

    let before = rss_kib();
    let response = pull(client(None).get(v2(&tenant, &format!("linux/oneagent/blobs/{layer_digest}"))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.content_length(), Some(SIZE as u64));
    let mut stream = response.bytes_stream();
    let mut received = 0usize;
    let mut peak = before;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        hasher.update(&chunk);
        received += chunk.len();
        if received % (8 << 20) < chunk.len() {
            peak = peak.max(rss_kib());
        }
    }
    assert_eq!(received, SIZE);
    assert_eq!(format!("sha256:{}", hex::encode(hasher.finalize())), layer_digest);
    let growth_mib = peak.saturating_sub(before) / 1024;
    println!(
        "256 MiB blob: resident memory {} MiB before loading, {} MiB before the pull, peak {} MiB (+{growth_mib} MiB)",
        before_load / 1024,
        before / 1024,
        peak / 1024
    );
    assert!(
        growth_mib < 32,
        "resident memory grew by {growth_mib} MiB while streaming 256 MiB"
    );
    tenant.shutdown().await;
}

#[tokio::test]
async fn archives_and_the_admin_api_load_images() {
    let dir = tempfile::tempdir().unwrap();
    // An OCI archive: the layout as a tar.
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let built = oci_layout(&layout, &[("1.2.3", b"oci archive"), ("1.2.4", b"other")]);
    let oci_tar = dir.path().join("oci.tar");
    {
        let mut builder = tar::Builder::new(std::fs::File::create(&oci_tar).unwrap());
        builder.append_dir_all(".", &layout).unwrap();
        builder.finish().unwrap();
    }
    // A legacy docker archive: manifest.json naming a config and layer files.
    let docker = dir.path().join("docker");
    std::fs::create_dir_all(docker.join("abc")).unwrap();
    let layer = layer_tar("opt/oneagent", b"docker archive");
    std::fs::write(docker.join("abc/layer.tar"), &layer).unwrap();
    let docker_config = image_config("1.2.5", &[&digest(&layer)]);
    std::fs::write(docker.join("config.json"), &docker_config).unwrap();
    std::fs::write(
        docker.join("manifest.json"),
        serde_json::to_vec(&json!([{
            "Config": "config.json",
            "RepoTags": ["fake-oneagent:1.2.5"],
            "Layers": ["abc/layer.tar"],
        }]))
        .unwrap(),
    )
    .unwrap();
    let docker_tar = dir.path().join("docker.tar");
    {
        let mut builder = tar::Builder::new(std::fs::File::create(&docker_tar).unwrap());
        builder.append_dir_all(".", &docker).unwrap();
        builder.finish().unwrap();
    }

    let tenant = FakeTenant::start(config(), Listen::Http).await.unwrap();
    let admin = client(None);
    let load = |image: &str, path: &std::path::Path| {
        admin
            .post(format!("{}/admin/images", tenant.base_url()))
            .json(&json!({"image": image, "path": path}))
            .send()
    };
    let response = load("linux/oneagent:1.2.4", &oci_tar).await.unwrap();
    let info = json(response, 201).await;
    assert_eq!(info["digest"], built[1].manifest_digest.as_str());
    let response = load("linux/oneagent:1.2.5", &docker_tar).await.unwrap();
    let info = json(response, 201).await;
    let docker_digest = info["digest"].as_str().unwrap().to_owned();

    // An archive with two images and a tag it does not name; a path that does not exist.
    let message = expect_error(load("linux/oneagent:9.9.9", &oci_tar).await.unwrap(), 400).await;
    assert!(
        message.contains("1.2.3") && message.contains("1.2.4"),
        "{message}"
    );
    let message = expect_error(
        load("linux/oneagent:1.0.0", &dir.path().join("nope.tar"))
            .await
            .unwrap(),
        422,
    )
    .await;
    assert!(message.contains("nope.tar"), "{message}");
    let message = expect_error(load("Bad Name", &oci_tar).await.unwrap(), 400).await;
    assert!(message.contains("<name>:<tag>"), "{message}");

    let listed = json(
        admin
            .get(format!("{}/admin/images", tenant.base_url()))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(tenant.images().len(), 2);

    // latest is the docker archive's image once 1.2.5 is the latest version.
    tenant.publish_version("1.2.5.20240101-000000");
    let http = client(None);
    let response = pull(http.get(v2(&tenant, "linux/oneagent/manifests/latest")))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "docker-content-digest"), docker_digest);
    let manifest: serde_json::Value = response.json().await.unwrap();
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    assert_eq!(layer_digest, digest(&layer));
    let blob = pull(http.get(v2(&tenant, &format!("linux/oneagent/blobs/{layer_digest}"))))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(file_in_layer(&blob, "opt/oneagent"), b"docker archive");

    // The unpacked archives live in the cache directory, removed at shutdown.
    let cache = tenant.cache_dir().to_owned();
    assert!(cache.join("images").exists());
    tenant.shutdown().await;
    assert!(!cache.exists());
}
