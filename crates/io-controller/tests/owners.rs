//! What the operator creates without a DynaKube to own it goes with the operator Deployment (`helm
//! uninstall`): the leader Lease and the node cache get the Deployment as owner, when created and when an
//! earlier version left them without; and the CSI status ConfigMaps of deleted nodes, which their owner
//! (the CSI DaemonSet) outlives, are removed by the node controller. On the real control plane; each test
//! has its own namespace as the operator namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use io_controller::leader::{LeaderConfig, run_as_leader};
use io_controller::nodes::{NodeConfig, run};
use io_controller::owner::{OPERATOR_DEPLOYMENT, OWNER_READ_PATIENCE, deployment_owner};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use test_kit::{TestNamespace, eventually};

const WAIT: Duration = Duration::from_secs(30);
const CACHE: &str = "dynatrace-node-cache";

async fn install_crds(client: &Client) {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async { test_kit::install_operator_crds(client).await.unwrap() })
        .await;
}

/// Creates the operator Deployment (no replicas: only its identity matters) and returns its owner
/// reference as the operator reads it.
async fn operator_deployment(ns: &TestNamespace) -> OwnerReference {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": OPERATOR_DEPLOYMENT },
        "spec": {
            "replicas": 0,
            "selector": { "matchLabels": { "app": "operator" } },
            "template": {
                "metadata": { "labels": { "app": "operator" } },
                "spec": { "containers": [{ "name": "operator", "image": "operator" }] },
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    deployment_owner(&ns.client, &ns.name, OPERATOR_DEPLOYMENT, OWNER_READ_PATIENCE)
        .await
        .expect("the operator Deployment as owner")
}

/// Whether `references` hold `owner` as a plain owner: neither controller nor blocking its deletion.
fn owned_by(references: Option<&Vec<OwnerReference>>, owner: &OwnerReference) -> bool {
    references.into_iter().flatten().any(|r| {
        r.uid == owner.uid
            && r.kind == "Deployment"
            && r.name == OPERATOR_DEPLOYMENT
            && r.controller != Some(true)
            && r.block_owner_deletion != Some(true)
    })
}

/// Holds the Lease `lease` once (the leader's work ends at once) and returns it afterwards.
async fn lead_once(ns: &TestNamespace, lease: &str, owner: Option<OwnerReference>) -> Lease {
    let mut config = LeaderConfig::new(&ns.name, format!("{lease}-holder"));
    config.lease_name = lease.to_owned();
    config.owner = owner;
    let led = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = led.clone();
    run_as_leader(
        ns.client.clone(),
        config,
        io_controller::Metrics::new(),
        std::future::pending(),
        move |_stop| async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        },
    )
    .await
    .unwrap();
    assert!(led.load(std::sync::atomic::Ordering::SeqCst), "it led");
    Api::<Lease>::namespaced(ns.client.clone(), &ns.name)
        .get(lease)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_lease_is_owned_by_the_operator_deployment_new_or_left_by_an_earlier_version() {
    let ns = TestNamespace::create().await.unwrap();
    // Without the Deployment (a process outside the chart) there is no owner, and leading works.
    assert_eq!(
        deployment_owner(&ns.client, &ns.name, OPERATOR_DEPLOYMENT, OWNER_READ_PATIENCE).await,
        None
    );
    let unowned = lead_once(&ns, "no-owner-lock", None).await;
    assert_eq!(unowned.metadata.owner_references.unwrap_or_default(), []);

    let owner = operator_deployment(&ns).await;
    let created = lead_once(&ns, "dynatrace-operator-lock", Some(owner.clone())).await;
    assert!(
        owned_by(created.metadata.owner_references.as_ref(), &owner),
        "a new Lease is owned by the Deployment: {:?}",
        created.metadata.owner_references
    );
    assert!(
        created.spec.is_some(),
        "the lease manager used the Lease it found"
    );

    // The Lease an earlier version left without owner gets it, and keeps it when led again.
    let upgraded = lead_once(&ns, "no-owner-lock", Some(owner.clone())).await;
    assert!(
        owned_by(upgraded.metadata.owner_references.as_ref(), &owner),
        "an existing Lease gets the owner: {:?}",
        upgraded.metadata.owner_references
    );
    let again = lead_once(&ns, "no-owner-lock", Some(owner.clone())).await;
    assert_eq!(again.metadata.owner_references.map(|r| r.len()), Some(1));
}

/// The operator starting while its API server cannot be reached yet (a control plane restarting with it)
/// still finds its Deployment once the server answers, instead of running without owner until its next
/// restart. The API server is reached through a port where nothing listens for the first two seconds,
/// then a plain TCP forwarder to the real server.
#[tokio::test]
async fn the_owner_is_found_when_the_api_server_answers_only_after_the_start() {
    let ns = TestNamespace::create().await.unwrap();
    let expected = operator_deployment(&ns).await;

    let kubeconfig = kube::config::Kubeconfig::read_from(ns.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let server = config.cluster_url.authority().unwrap().as_str().to_owned();
    let port = test_kit::cluster::free_port().unwrap();
    config.cluster_url = format!("https://127.0.0.1:{port}").parse().unwrap();
    // The server certificate names the address the test reaches it on, not this port's.
    config.tls_server_name = Some(
        server
            .rsplit_once(':')
            .map_or(server.clone(), |(host, _)| host.to_owned()),
    );
    let late = Client::try_from(config).unwrap();
    let forwarder = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            let server = server.clone();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(server).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });

    let started = std::time::Instant::now();
    let found = deployment_owner(&late, &ns.name, OPERATOR_DEPLOYMENT, OWNER_READ_PATIENCE).await;
    forwarder.abort();
    assert_eq!(found, Some(expected), "the owner, read once the server answered");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it waited for the server"
    );
}

/// Starts the node controller of `ns` with `owner` for the cache; returns the stop signal and the task.
fn start_nodes(
    ns: &TestNamespace,
    owner: Option<OwnerReference>,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let mut config = NodeConfig::new(ns.name.clone(), io_controller::Metrics::new());
    config.cache_owner = owner;
    config.cleanup_interval = Duration::from_secs(1);
    config.min_backoff = Duration::from_millis(500);
    config.max_backoff = Duration::from_secs(2);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(ns.client.clone(), config, async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

async fn cache_owned_by(ns: &TestNamespace, owner: &OwnerReference) {
    let config_maps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually(
        "the node cache owned by the operator Deployment",
        WAIT,
        || async {
            let cache = config_maps.get_opt(CACHE).await?;
            Ok(cache.filter(|c| owned_by(c.metadata.owner_references.as_ref(), owner)))
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_node_cache_is_owned_by_the_operator_deployment_new_or_left_by_an_earlier_version() {
    let fresh = TestNamespace::create().await.unwrap();
    install_crds(&fresh.client).await;
    let owner = operator_deployment(&fresh).await;
    let (stop, task) = start_nodes(&fresh, Some(owner.clone()));
    cache_owned_by(&fresh, &owner).await;
    let _ = stop.send(());
    task.await.unwrap();

    // An earlier version wrote the cache without owner (and with content that is current).
    let upgraded = TestNamespace::create().await.unwrap();
    let owner = operator_deployment(&upgraded).await;
    let old: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": CACHE },
        "data": {},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(upgraded.client.clone(), &upgraded.name)
        .create(&PostParams::default(), &old)
        .await
        .unwrap();
    let (stop, task) = start_nodes(&upgraded, Some(owner.clone()));
    cache_owned_by(&upgraded, &owner).await;
    let _ = stop.send(());
    task.await.unwrap();
}

/// A CSI status ConfigMap as the provisioner writes it (`labelled`) or a user's ConfigMap of the same
/// shape of name.
async fn status_map(ns: &TestNamespace, node: &str, labelled: bool) {
    let labels = if labelled {
        BTreeMap::from([(pure_csi::status::NODE_LABEL.to_owned(), node.to_owned())])
    } else {
        BTreeMap::new()
    };
    let map: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": pure_csi::status::config_map_name(node), "labels": labels },
        "data": { "versions": "[]" },
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &map)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_csi_status_of_a_deleted_node_is_removed() {
    let ns = TestNamespace::create().await.unwrap();
    install_crds(&ns.client).await;
    let live = ns.create_node("live", &[], Vec::new()).await.unwrap();
    let live = live.metadata.name.unwrap();
    let doomed = ns.create_node("doomed", &[], Vec::new()).await.unwrap();
    let doomed = doomed.metadata.name.unwrap();
    let gone = format!("{}-gone", ns.name);
    let foreign = format!("{}-foreign", ns.name);
    for node in [&live, &doomed, &gone] {
        status_map(&ns, node, true).await;
    }
    status_map(&ns, &foreign, false).await;
    let (stop, task) = start_nodes(&ns, None);

    let config_maps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let exists = |node: String| {
        let config_maps = config_maps.clone();
        async move {
            config_maps
                .get_opt(&pure_csi::status::config_map_name(&node))
                .await
                .unwrap()
                .is_some()
        }
    };
    eventually(
        "the status of a node deleted while the operator was away removed",
        WAIT,
        || async { Ok((!exists(gone.clone()).await).then_some(())) },
    )
    .await
    .unwrap();
    assert!(
        exists(live.clone()).await,
        "the status of a node that exists stays"
    );
    assert!(
        exists(doomed.clone()).await,
        "the status of a node that exists stays"
    );
    assert!(
        exists(foreign.clone()).await,
        "a ConfigMap without the status label is not touched"
    );

    Api::<Node>::all(ns.client.clone())
        .delete(&doomed, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the status of a node deleted now removed", WAIT, || async {
        Ok((!exists(doomed.clone()).await).then_some(()))
    })
    .await
    .unwrap();
    assert!(
        exists(live.clone()).await,
        "the status of a node that exists stays"
    );
    let _ = stop.send(());
    task.await.unwrap();
}
