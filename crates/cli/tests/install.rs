//! The installation built by `pure-install` against the real API server: every object is accepted as it is
//! (schemas, RBAC references, webhook configuration), applying it again changes nothing, and the
//! Deployments and the CSI driver's DaemonSet get their pods (their ServiceAccounts and the PriorityClass
//! exist). Runs on a private cluster: the installation's
//! webhook configuration would send every DynaKube of a shared cluster to a webhook that is not running.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::ListParams;
use kube::{Api, ResourceExt as _};
use pure_install::csi::{CSI_DAEMONSET, CSI_DRIVER};
use pure_install::{FIELD_MANAGER, Installation};

#[tokio::test]
async fn the_installation_is_accepted_as_is_and_applying_it_again_changes_nothing() {
    let cluster = test_kit::start_private_cluster(1).await.unwrap();
    let client = cluster.client().await.unwrap();
    let installation = Installation::new("dynatrace-operator:0.1.0-dev");
    let objects = installation.objects();
    test_kit::setup::apply_objects(&client, &objects, FIELD_MANAGER)
        .await
        .unwrap();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &installation.namespace);
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &installation.namespace);
    let generations = || async {
        let list = deployments.list(&ListParams::default()).await.unwrap();
        let mut generations = list
            .items
            .iter()
            .map(|d| (d.name_any(), d.metadata.generation.unwrap()))
            .collect::<Vec<(String, i64)>>();
        let csi = daemonsets.get(CSI_DAEMONSET).await.unwrap();
        generations.push((csi.name_any(), csi.metadata.generation.unwrap()));
        generations
    };
    let before = generations().await;
    assert_eq!(before.len(), 3, "{before:?}");
    test_kit::setup::apply_objects(&client, &objects, FIELD_MANAGER)
        .await
        .unwrap();
    let after = generations().await;
    assert_eq!(
        before, after,
        "a second apply changed a Deployment's or the DaemonSet's spec (its generation)"
    );
    let driver = Api::<CSIDriver>::all(client.clone())
        .get(CSI_DRIVER)
        .await
        .unwrap();
    assert_eq!(driver.spec.pod_info_on_mount, Some(true));

    // One operator pod and the webhook's replicas, created by the ReplicaSets, and one CSI driver pod per
    // node, created by the DaemonSet (so the ServiceAccounts and the PriorityClass exist).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &installation.namespace);
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    let expected = 1 + usize::try_from(installation.webhook_replicas).unwrap() + nodes;
    test_kit::eventually(
        "the operator and webhook pods",
        Duration::from_secs(60),
        || async {
            let count = pods.list(&ListParams::default()).await?.items.len();
            Ok((count == expected).then_some(()))
        },
    )
    .await
    .unwrap();
}
