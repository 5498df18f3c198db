//! A real registry client (`oci-client`) pulls from the fake tenant's registry: the proof that the
//! fake speaks the distribution protocol as clients expect it, challenge and Basic credentials included.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::*;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

fn oci_client() -> Client {
    // Its reqwest is built without a TLS provider of its own (plain HTTP here, but the builder needs one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

#[tokio::test]
async fn oci_client_pulls_the_latest_oneagent_image() {
    let dir = tempfile::tempdir().unwrap();
    let built = oci_layout(dir.path(), &[("1.277.0", b"#!/bin/sh\nexec sleep infinity\n")]);
    let tenant = start().await;
    tenant
        .add_image("linux/oneagent:1.277.0", dir.path())
        .await
        .unwrap();
    // The image name the operator derives from apiUrl http://127.0.0.1:PORT/api.
    let reference: Reference = format!("{}/linux/oneagent:latest", tenant.addr())
        .parse()
        .unwrap();

    let auth = RegistryAuth::Basic("127".into(), TOKEN.into());
    let image = oci_client()
        .pull(&reference, &auth, vec![IMAGE_LAYER_MEDIA_TYPE])
        .await
        .unwrap();
    assert_eq!(image.digest.as_deref(), Some(built[0].manifest_digest.as_str()));
    assert_eq!(image.layers.len(), 1);
    assert_eq!(digest(&image.layers[0].data), built[0].layer_digest);
    assert_eq!(
        file_in_layer(&image.layers[0].data, "opt/oneagent"),
        b"#!/bin/sh\nexec sleep infinity\n"
    );
    let config: serde_json::Value = serde_json::from_slice(&image.config.data).unwrap();
    assert_eq!(
        config["config"]["Labels"]["com.dynatrace.build-version"],
        "1.277.0"
    );

    // The digest of the tag, as the operator's version check would resolve it (HEAD).
    let digest = oci_client()
        .fetch_manifest_digest(&reference, &auth)
        .await
        .unwrap();
    assert_eq!(digest, built[0].manifest_digest);

    // A wrong token is refused.
    let wrong = RegistryAuth::Basic("abc12345".into(), "dt0c01.WRONG".into());
    let error = oci_client()
        .pull(&reference, &wrong, vec![IMAGE_LAYER_MEDIA_TYPE])
        .await
        .err()
        .expect("a wrong token must not pull");
    assert!(
        matches!(error, OciDistributionError::UnauthorizedError { .. }),
        "{error}"
    );
    tenant.shutdown().await;
}
