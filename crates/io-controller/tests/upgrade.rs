//! Switching to this operator from one that wrote the status with updates (the reference, or an earlier
//! build): what the new operator does not report disappears from the status too. The cluster of this test
//! binary has no controller running until the earlier operator's status is in place.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use pure_api::dynakube::DynaKube;
use serde_json::json;
use test_fake_tenant::{FakeTenant, Listen, TenantConfig};
use test_kit::TestNamespace;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn the_status_an_earlier_operator_wrote_keeps_only_what_is_reported() {
    let ns = TestNamespace::create().await.unwrap();
    let client = ns.client.clone();
    test_kit::install_operator_crds(&client).await.unwrap();
    let tenant = FakeTenant::start(TenantConfig::default(), Listen::Http)
        .await
        .unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "upgraded" },
        "stringData": { "apiToken": "dt0c01.test" },
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let dynakubes: Api<DynaKube> = Api::namespaced(client.clone(), &ns.name);
    let dk: DynaKube = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
        "metadata": { "name": "upgraded" },
        // Never the CSI driver, so no code-module version of the operator's own replaces the earlier one.
        "spec": { "apiUrl": tenant.api_url(), "oneAgent": { "applicationMonitoring": { "useCSIDriver": false } } },
    }))
    .unwrap();
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();

    // The earlier operator's status, written with an update as controller-runtime does.
    let earlier = json!({ "status": {
        "phase": "Running",
        "codeModules": { "version": "1.270.0.20230601-000000" },
        "oneAgent": { "instances": { "gone-node": { "podName": "upgraded-oneagent-x", "ipAddress": "10.0.0.9" } } },
        "conditions": [
            { "type": "Tokens", "status": "True", "reason": "TokenReady", "message": "old", "lastTransitionTime": "2024-01-01T00:00:00Z" },
            { "type": "OldCondition", "status": "True", "reason": "Old", "message": "old", "lastTransitionTime": "2024-01-01T00:00:00Z" },
        ],
    } });
    let params = PatchParams {
        field_manager: Some("dynatrace-operator".into()),
        ..PatchParams::default()
    };
    dynakubes
        .patch_status("upgraded", &params, &Patch::Merge(&earlier))
        .await
        .unwrap();

    let controller = tokio::spawn(io_controller::run(
        client.clone(),
        "0.1.0-test".into(),
        io_controller::Requeue::default(),
        io_controller::Metrics::new(),
        std::future::pending(),
    ));
    let status = test_kit::eventually("only what the operator reports", WAIT, || async {
        let status = dynakubes.get("upgraded").await?.status.unwrap_or_default();
        let stale = status.code_modules.is_some()
            || status
                .one_agent
                .as_ref()
                .and_then(|o| o.instances.as_ref())
                .is_some_and(|i| i.contains_key("gone-node"))
            || status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "OldCondition");
        Ok((!stale
            && status
                .one_agent
                .as_ref()
                .is_some_and(|o| o.connection_info_status.is_some()))
        .then_some(status))
    })
    .await
    .unwrap();
    let tokens = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Tokens")
        .unwrap();
    assert_eq!(tokens.reason, "TokenReady");
    assert_ne!(
        tokens.message, "old",
        "the operator's own message replaced the earlier one"
    );
    controller.abort();
    tenant.shutdown().await;
}
