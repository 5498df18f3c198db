//! The webhook server over real HTTPS: TLS versions, certificate reload, malformed input, metrics,
//! conversion, and graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use common::{http, https, https_with, start};
use proptest::strategy::{Strategy as _, ValueTree as _};
use serde_json::{Value, json};

fn admission_review(kind: &str, api_version: &str, object: Value) -> Vec<u8> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0f1e2d3c-0000-4000-8000-000000000001",
            "kind": { "group": group, "version": version, "kind": kind },
            "resource": { "group": group, "version": version, "resource": format!("{}s", kind.to_lowercase()) },
            "operation": "CREATE",
            "userInfo": { "username": "test" },
            "name": object["metadata"]["name"],
            "namespace": "dynatrace",
            "object": object,
        }
    }))
    .unwrap()
}

fn dynakube(api_url: &str) -> Value {
    json!({
        "apiVersion": "dynatrace.com/v1beta1",
        "kind": "DynaKube",
        "metadata": { "name": "dynakube", "namespace": "dynatrace" },
        "spec": { "apiUrl": api_url, "oneAgent": { "classicFullStack": {} } },
    })
}

#[tokio::test]
async fn probes_answer_over_tls13_and_tls12_is_the_minimum() {
    let t = start(None).await;
    let answer = https(t.server.addr, &t.ca_pem, "GET", "/livez", b"")
        .await
        .unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    assert_eq!(
        answer.tls,
        Some(rustls::ProtocolVersion::TLSv1_3),
        "TLS 1.3 is preferred"
    );
    let tls12 = https_with(
        t.server.addr,
        &t.ca_pem,
        &[&rustls::version::TLS12],
        "GET",
        "/readyz",
        b"",
    )
    .await
    .unwrap();
    assert_eq!(
        (tls12.status, tls12.tls),
        (200, Some(rustls::ProtocolVersion::TLSv1_2))
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn validate_denies_with_every_error_and_allows_a_good_dynakube() {
    let t = start(None).await;
    let review = admission_review(
        "DynaKube",
        "dynatrace.com/v1beta1",
        dynakube("https://ENVIRONMENTID.live.dynatrace.com"),
    );
    let answer = https(t.server.addr, &t.ca_pem, "POST", "/validate", &review)
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let response: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(response["response"]["allowed"], false);
    let message = response["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("2 error(s) found in the Dynakube"),
        "{message}"
    );

    let good = admission_review(
        "DynaKube",
        "dynatrace.com/v1beta1",
        dynakube("https://abc.live.dynatrace.com/api"),
    );
    let answer = https(t.server.addr, &t.ca_pem, "POST", "/validate", &good)
        .await
        .unwrap();
    let response: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(response["response"]["allowed"], true, "{}", answer.body);
    assert_eq!(
        response["response"]["uid"],
        "0f1e2d3c-0000-4000-8000-000000000001"
    );
    t.server.shutdown().await;
}

/// `autoUpdate` is deprecated from v1beta3 on: a v1beta6 request that sets it is allowed with a warning
/// naming the field; the same object in v1beta2 gets none.
#[tokio::test]
async fn validate_warns_about_auto_update_from_v1beta3_on() {
    let t = start(None).await;
    for (version, warned) in [("v1beta2", false), ("v1beta3", true), ("v1beta6", true)] {
        let api_version = format!("dynatrace.com/{version}");
        let object = json!({
            "apiVersion": api_version, "kind": "DynaKube",
            "metadata": { "name": "dynakube", "namespace": "dynatrace" },
            "spec": {
                "apiUrl": "https://abc.live.dynatrace.com/api",
                "oneAgent": { "classicFullStack": { "autoUpdate": false } },
            },
        });
        let review = admission_review("DynaKube", &api_version, object);
        let answer = https(t.server.addr, &t.ca_pem, "POST", "/validate", &review)
            .await
            .unwrap();
        let response: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(
            response["response"]["allowed"], true,
            "{version}: {}",
            answer.body
        );
        let warnings: Vec<&str> = response["response"]["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|w| w.contains("spec.oneAgent.classicFullStack.autoUpdate is deprecated"))
            .collect();
        assert_eq!(warnings.len(), usize::from(warned), "{version}: {}", answer.body);
    }
    t.server.shutdown().await;
}

#[tokio::test]
async fn convert_answers_a_conversion_review() {
    let t = start(None).await;
    let review = serde_json::to_vec(&json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "ConversionReview",
        "request": {
            "uid": "c0ffee00-0000-4000-8000-000000000002",
            "desiredAPIVersion": "dynatrace.com/v1alpha1",
            "objects": [dynakube("https://abc.live.dynatrace.com/api")],
        }
    }))
    .unwrap();
    let answer = https(t.server.addr, &t.ca_pem, "POST", "/convert", &review)
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let response: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(
        response["response"]["result"]["status"], "Success",
        "{}",
        answer.body
    );
    let converted = &response["response"]["convertedObjects"][0];
    assert_eq!(converted["apiVersion"], "dynatrace.com/v1alpha1");
    assert_eq!(converted["spec"]["classicFullStack"]["enabled"], true);

    let unsupported = serde_json::to_vec(&json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
        "request": { "uid": "u", "desiredAPIVersion": "dynatrace.com/v9", "objects": [dynakube("x")] }
    }))
    .unwrap();
    let answer = https(t.server.addr, &t.ca_pem, "POST", "/convert", &unsupported)
        .await
        .unwrap();
    let response: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(response["response"]["result"]["status"], "Failure");
    assert!(
        response["response"]["result"]["message"]
            .as_str()
            .unwrap()
            .contains("dynatrace.com/v9")
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_get_a_clear_400_and_the_server_keeps_answering() {
    let t = start(None).await;
    let pod = admission_review(
        "Pod",
        "v1",
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p" } }),
    );
    let no_request = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec();
    let huge = vec![b'x'; io_webhook::handlers::MAX_BODY_BYTES + 1024];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "/validate",
            b"not json".to_vec(),
            "not an admission.k8s.io/v1 AdmissionReview",
        ),
        ("/validate", pod, "not Pod"),
        ("/validate", no_request, "no usable request"),
        ("/validate", huge.clone(), "at most"),
        (
            "/convert",
            b"{\"kind\":".to_vec(),
            "not an apiextensions.k8s.io/v1 ConversionReview",
        ),
        ("/convert", huge, "at most"),
    ];
    for (path, body, expected) in cases {
        let answer = https(t.server.addr, &t.ca_pem, "POST", path, &body)
            .await
            .unwrap();
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert!(
            answer.body.contains(expected),
            "{path}: expected {expected:?} in {:?}",
            answer.body
        );
    }
    assert_eq!(
        https(t.server.addr, &t.ca_pem, "GET", "/livez", b"")
            .await
            .unwrap()
            .status,
        200
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn random_bodies_never_break_the_server() {
    let t = start(None).await;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let bytes = proptest::collection::vec(proptest::num::u8::ANY, 0..4096);
    let json_like = "\\{\"(apiVersion|kind|request|uid|object)\":[\\[\\{\"a-z0-9,:\\]\\} ]{0,200}";
    let bodies = proptest::strategy::Union::new(vec![
        bytes.boxed(),
        json_like.prop_map(String::into_bytes).boxed(),
    ]);
    for i in 0..150 {
        let body = bodies.new_tree(&mut runner).unwrap().current();
        let path = if i % 2 == 0 { "/validate" } else { "/convert" };
        let answer = https(t.server.addr, &t.ca_pem, "POST", path, &body)
            .await
            .unwrap();
        assert!(
            matches!(answer.status, 200 | 400),
            "{path} answered {} to {body:?}",
            answer.status
        );
    }
    let metrics = http(t.server.metrics_addr, "/metrics").await.unwrap();
    assert!(
        metrics
            .body
            .contains("dynatrace_webhook_requests_total{endpoint=\"validate\",outcome=\"bad_request\"}")
    );
    assert_eq!(
        https(t.server.addr, &t.ca_pem, "GET", "/livez", b"")
            .await
            .unwrap()
            .status,
        200
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn a_rotated_certificate_is_served_within_seconds_without_restart() {
    let t = start(None).await;
    let new_ca = common::write_certificate(&t.certs_dir);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if https(t.server.addr, &new_ca, "GET", "/livez", b"")
            .await
            .is_ok_and(|a| a.status == 200)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        https(t.server.addr, &t.ca_pem, "GET", "/livez", b"")
            .await
            .is_err(),
        "the old certificate is gone"
    );

    // A broken pair (a key without its certificate) keeps the working certificate in place.
    std::fs::write(t.certs_dir.join(io_webhook::tls::CERT_FILE), "garbage").unwrap();
    tokio::time::sleep(io_webhook::tls::RELOAD_INTERVAL * 2).await;
    assert_eq!(
        https(t.server.addr, &new_ca, "GET", "/livez", b"")
            .await
            .unwrap()
            .status,
        200
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn metrics_and_probes_on_the_plain_port_and_a_graceful_shutdown() {
    let t = start(None).await;
    let review = admission_review(
        "DynaKube",
        "dynatrace.com/v1beta1",
        dynakube("https://abc.live.dynatrace.com/api"),
    );
    https(t.server.addr, &t.ca_pem, "POST", "/validate", &review)
        .await
        .unwrap();
    let metrics = http(t.server.metrics_addr, "/metrics").await.unwrap();
    assert!(
        metrics
            .body
            .contains("dynatrace_webhook_requests_total{endpoint=\"validate\",outcome=\"allowed\"} 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("dynatrace_webhook_request_duration_seconds_bucket")
    );
    assert_eq!(http(t.server.metrics_addr, "/readyz").await.unwrap().status, 200);
    assert_eq!(
        http(t.server.metrics_addr, "/validate").await.unwrap().status,
        404,
        "no admission on the plain port"
    );

    let (addr, metrics_addr) = (t.server.addr, t.server.metrics_addr);
    tokio::time::timeout(Duration::from_secs(15), t.server.shutdown())
        .await
        .expect("shutdown finishes");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "HTTPS port closed"
    );
    assert!(
        tokio::net::TcpStream::connect(metrics_addr).await.is_err(),
        "metrics port closed"
    );
}

#[tokio::test]
async fn a_body_far_over_the_limit_gets_the_400_not_a_reset() {
    let t = start(None).await;
    let body = vec![b' '; 50 * 1024 * 1024];
    for path in ["/validate", "/convert"] {
        let answer = common::https_whole_body(t.server.addr, &t.ca_pem, path, &body)
            .await
            .unwrap_or_else(|err| panic!("{path}: no answer to a 50 MiB body: {err:#}"));
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert!(
            answer.body.contains("too large") && answer.body.contains("at most 7340032 bytes"),
            "{path}: {}",
            answer.body
        );
    }
    t.server.shutdown().await;
}

#[tokio::test]
async fn deep_nesting_and_bodies_too_dense_to_parse_get_a_400() {
    let t = start(None).await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let answer = https(t.server.addr, &t.ca_pem, "POST", "/validate", deep.as_bytes())
        .await
        .unwrap();
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("100000 levels deep"), "{}", answer.body);
    // 3.5 million tiny values: well over 100 MiB once parsed, more than the whole budget.
    let dense = format!("[{}0]", "0,".repeat(3_500_000));
    let answer = https(t.server.addr, &t.ca_pem, "POST", "/convert", dense.as_bytes())
        .await
        .unwrap();
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("JSON values"), "{}", answer.body);
    t.server.shutdown().await;
}

#[tokio::test]
async fn silent_connections_fill_the_cap_readyz_says_so_and_they_are_closed() {
    let options = io_serving::ServeOptions {
        max_connections: 4,
        header_timeout: Duration::from_secs(2),
        ..io_webhook::serve_options()
    };
    let t = common::start_with(None, options).await;
    // TLS done, then nothing: two that negotiated HTTP/1.1, two HTTP/2 with the preface only.
    let mut silent = Vec::new();
    for alpn in [&b"http/1.1"[..], b"http/1.1", b"h2", b"h2"] {
        let mut tls = common::tls_connection(t.server.addr, &t.ca_pem, alpn)
            .await
            .unwrap();
        if alpn == b"h2" {
            tokio::io::AsyncWriteExt::write_all(&mut tls, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
        }
        silent.push(tls);
    }
    let readyz = http(t.server.metrics_addr, "/readyz").await.unwrap();
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    assert!(
        readyz.body.contains("all 4 connection slots are in use"),
        "{}",
        readyz.body
    );
    assert!(
        https(t.server.addr, &t.ca_pem, "GET", "/livez", b"")
            .await
            .is_err(),
        "a fifth connection is refused"
    );

    // Closed by the server after the header timeout: each read ends.
    let started = std::time::Instant::now();
    for mut tls in silent {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(
                Duration::from_secs(10),
                tokio::io::AsyncReadExt::read(&mut tls, &mut buf),
            )
            .await
            {
                Err(_) => panic!("a silent connection was still open after 10 s"),
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => {}
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(http(t.server.metrics_addr, "/readyz").await.unwrap().status, 200);
    let answer = https(t.server.addr, &t.ca_pem, "GET", "/livez", b"")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    t.server.shutdown().await;
}
