//! On a cluster that serves an OpenShift API group, the operator uses OpenShift's images. The cluster of
//! this test binary serves `route.openshift.io` through a CustomResourceDefinition, which is enough for the
//! API server's discovery to list the group, as on OpenShift.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::PostParams;
use pure_api::oneagent::OneAgent;
use serde_json::json;
use test_fake_tenant::{FakeTenant, Listen, TenantConfig};
use test_kit::TestNamespace;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_legacy_oneagent_on_openshift_gets_the_openshift_installer_image() {
    let ns = TestNamespace::create().await.unwrap();
    let client = ns.client.clone();
    let routes: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": { "name": "routes.route.openshift.io" },
        "spec": {
            "group": "route.openshift.io", "scope": "Namespaced",
            "names": { "plural": "routes", "singular": "route", "kind": "Route" },
            "versions": [ { "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } } } ],
        },
    }))
    .unwrap();
    test_kit::install_crds(&client, &[routes]).await.unwrap();
    test_kit::install_operator_crds(&client).await.unwrap();
    test_kit::eventually("the route group to be discovered", WAIT, || async {
        let groups = client.list_api_groups().await?;
        Ok(groups
            .groups
            .iter()
            .any(|g| g.name == "route.openshift.io")
            .then_some(()))
    })
    .await
    .unwrap();
    let tenant = FakeTenant::start(TenantConfig::default(), Listen::Http)
        .await
        .unwrap();
    let controller = tokio::spawn(io_controller::run(
        client.clone(),
        "0.1.0-test".into(),
        io_controller::Requeue::default(),
        io_controller::Metrics::new(),
        std::future::pending(),
    ));

    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "openshift" },
        "stringData": { "apiToken": "dt0c01.test", "paasToken": "dt0c01.test" },
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let oneagent: OneAgent = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1alpha1", "kind": "OneAgent",
        "metadata": { "name": "openshift" },
        "spec": { "apiUrl": tenant.api_url(), "nodeSelector": { "none": ns.name.clone() } },
    }))
    .unwrap();
    Api::<OneAgent>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &oneagent)
        .await
        .unwrap();
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    let daemonset = test_kit::eventually("the OneAgent DaemonSet", WAIT, || async {
        daemonsets.get_opt("openshift").await.map_err(Into::into)
    })
    .await
    .unwrap();
    let image = daemonset.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(
        image.as_deref(),
        Some(pure_desired::legacy::OPENSHIFT_INSTALLER_IMAGE)
    );
    controller.abort();
    tenant.shutdown().await;
}
