//! Smoke tests proving that the test cluster's parts are real: the DaemonSet controller, the scheduler with
//! taints and tolerations, kwok running pods, and the API server calling an admission webhook over HTTPS.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::{Api, Client, ResourceExt as _};
use rustls::pki_types::pem::PemObject as _;
use serde_json::json;
use test_kit::TestNamespace;
use test_kit::pki::CertificateAuthority;

const WAIT: Duration = Duration::from_secs(90);

fn pod(name: &str, node_selector: serde_json::Value, tolerations: serde_json::Value) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": {
            "nodeSelector": node_selector,
            "tolerations": tolerations,
            "containers": [{ "name": "main", "image": "registry.invalid/smoke:1" }]
        }
    }))?)
}

fn is_running_and_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn daemonset_with_node_selector_runs_only_on_matching_nodes() -> anyhow::Result<()> {
    let ns = TestNamespace::create().await?;
    let pool = ns.name.clone();
    let mut matching = BTreeSet::new();
    for suffix in ["pool-a", "pool-b"] {
        matching.insert(
            ns.create_node(suffix, &[("smoke/pool", &pool)], Vec::new())
                .await?
                .name_any(),
        );
    }
    // A node with the label key but another value must not get a pod.
    ns.create_node("other", &[("smoke/pool", "someone-else")], Vec::new())
        .await?;

    let daemonset: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": { "name": "agent" },
        "spec": {
            "selector": { "matchLabels": { "app": "agent" } },
            "template": {
                "metadata": { "labels": { "app": "agent" } },
                "spec": {
                    "nodeSelector": { "smoke/pool": pool },
                    "containers": [{ "name": "agent", "image": "registry.invalid/agent:1" }]
                }
            }
        }
    }))?;
    let daemonsets: Api<DaemonSet> = Api::namespaced(ns.client.clone(), &ns.name);
    daemonsets.create(&PostParams::default(), &daemonset).await?;

    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let agent_pods = ListParams::default().labels("app=agent");
    let nodes = test_kit::eventually("two Running agent pods", WAIT, || async {
        let list = pods.list(&agent_pods).await?;
        let running: Vec<_> = list.items.iter().filter(|p| is_running_and_ready(p)).collect();
        Ok((running.len() == 2).then(|| {
            running
                .iter()
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .collect::<BTreeSet<_>>()
        }))
    })
    .await?;
    assert_eq!(
        nodes, matching,
        "agent pods must run on exactly the selected nodes"
    );

    let status = test_kit::eventually("DaemonSet status to count 2 ready pods", WAIT, || async {
        let status = daemonsets.get("agent").await?.status.context("no status")?;
        Ok((status.number_ready == 2).then_some(status))
    })
    .await?;
    assert_eq!(
        status.desired_number_scheduled, 2,
        "the shared nodes and the other pool must not be selected"
    );
    assert_eq!(
        pods.list(&agent_pods).await?.items.len(),
        2,
        "no pod anywhere else"
    );
    Ok(())
}

#[tokio::test]
async fn a_pod_marked_never_ready_is_scheduled_but_never_becomes_ready() -> anyhow::Result<()> {
    let ns = TestNamespace::create().await?;
    ns.create_node("ready", &[("smoke/ready", &ns.name)], Vec::new())
        .await?;
    let selector = json!({ "smoke/ready": ns.name });
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut stuck = pod("stuck", selector.clone(), json!([]))?;
    stuck.metadata.annotations = Some(
        [(
            test_kit::cluster::NEVER_READY_ANNOTATION.to_owned(),
            "true".to_owned(),
        )]
        .into(),
    );
    pods.create(&PostParams::default(), &stuck).await?;
    pods.create(&PostParams::default(), &pod("fine", selector, json!([]))?)
        .await?;
    test_kit::eventually("the unmarked pod to run", WAIT, || async {
        Ok(is_running_and_ready(&pods.get("fine").await?).then_some(()))
    })
    .await?;
    // kwok handles both pods in the same pass; give it a moment more to be sure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stuck = pods.get("stuck").await?;
    assert!(!is_running_and_ready(&stuck), "{:?}", stuck.status);
    assert!(stuck.spec.and_then(|s| s.node_name).is_some(), "it was scheduled");
    Ok(())
}

#[tokio::test]
async fn only_a_pod_with_a_toleration_lands_on_a_tainted_node() -> anyhow::Result<()> {
    let ns = TestNamespace::create().await?;
    let taint = Taint {
        key: "smoke/dedicated".into(),
        value: Some(ns.name.clone()),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    let node = ns
        .create_node("tainted", &[("smoke/tainted", &ns.name)], vec![taint])
        .await?
        .name_any();
    let selector = json!({ "smoke/tainted": ns.name });
    let toleration: Toleration = serde_json::from_value(json!({
        "key": "smoke/dedicated", "operator": "Equal", "value": ns.name, "effect": "NoSchedule"
    }))?;

    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod("tolerant", selector.clone(), json!([toleration]))?,
    )
    .await?;
    pods.create(&PostParams::default(), &pod("intolerant", selector, json!([]))?)
        .await?;

    let tolerant = test_kit::eventually("the tolerant pod to run", WAIT, || async {
        let pod = pods.get("tolerant").await?;
        Ok(is_running_and_ready(&pod).then_some(pod))
    })
    .await?;
    assert_eq!(
        tolerant.spec.and_then(|s| s.node_name).as_deref(),
        Some(node.as_str())
    );

    let reason = test_kit::eventually("the scheduler to reject the intolerant pod", WAIT, || async {
        let pod = pods.get("intolerant").await?;
        let condition = pod.status.and_then(|s| s.conditions).and_then(|c| {
            c.into_iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        });
        Ok(condition.map(|c| (c.reason.unwrap_or_default(), c.message.unwrap_or_default())))
    })
    .await?;
    assert_eq!(reason.0, "Unschedulable");
    assert!(
        reason.1.contains("untolerated taint"),
        "scheduler message: {}",
        reason.1
    );
    let intolerant = pods.get("intolerant").await?;
    assert_eq!(
        intolerant.spec.and_then(|s| s.node_name),
        None,
        "the intolerant pod must stay unbound"
    );
    Ok(())
}

/// A mutating webhook served by this test: it labels every pod it sees and counts its calls.
struct LabelingWebhook {
    url: String,
    ca_pem: String,
    calls: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for LabelingWebhook {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl LabelingWebhook {
    async fn start() -> anyhow::Result<Self> {
        let ca = CertificateAuthority::new("smoke-webhook-ca")?;
        let serving = ca.issue_server_cert(
            "smoke-webhook",
            &["localhost"],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        )?;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())?;
        let mut tls =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let url = format!("https://{}/mutate", listener.local_addr()?);
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counter) = (acceptor.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let counter = counter.clone();
                        async move { mutate(request, &counter).await }
                    });
                    let _ =
                        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                            .await;
                });
            }
        });
        Ok(Self {
            url,
            ca_pem: ca.cert_pem(),
            calls,
            server,
        })
    }
}

async fn mutate(
    request: hyper::Request<hyper::body::Incoming>,
    calls: &AtomicUsize,
) -> anyhow::Result<hyper::Response<http_body_util::Full<hyper::body::Bytes>>> {
    use http_body_util::BodyExt as _;
    calls.fetch_add(1, Ordering::SeqCst);
    let body = request.into_body().collect().await?.to_bytes();
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(&body)?;
    let admission: AdmissionRequest<DynamicObject> = review.try_into()?;
    let mut response = AdmissionResponse::from(&admission);
    if let Some(object) = &admission.object {
        let before = serde_json::to_value(object)?;
        let mut after = before.clone();
        after["metadata"]["labels"]["smoke.dynatrace.com/mutated"] = json!("true");
        response = response.with_patch(json_patch::diff(&before, &after))?;
    }
    let json = serde_json::to_vec(&response.into_review())?;
    Ok(hyper::Response::builder()
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(json.into()))?)
}

#[tokio::test]
async fn api_server_calls_an_https_webhook_registered_by_url_and_stores_its_patch() -> anyhow::Result<()> {
    let ns = TestNamespace::create().await?;
    let webhook = LabelingWebhook::start().await?;
    let name = format!("smoke-{}", ns.name);
    let configuration = MutatingWebhookConfiguration {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "pods.smoke.dynatrace.com".into(),
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            failure_policy: Some("Fail".into()),
            timeout_seconds: Some(10),
            client_config: WebhookClientConfig {
                url: Some(webhook.url.clone()),
                ca_bundle: Some(k8s_openapi::ByteString(webhook.ca_pem.clone().into_bytes())),
                service: None,
            },
            // Only this test's namespace, so a failure here cannot block pods of other tests.
            namespace_selector: Some(LabelSelector {
                match_labels: Some([("kubernetes.io/metadata.name".to_owned(), ns.name.clone())].into()),
                ..Default::default()
            }),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            ..Default::default()
        }]),
    };
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(ns.client.clone());
    configurations
        .create(&PostParams::default(), &configuration)
        .await?;
    let result = check_pod_is_mutated(&ns.client, &ns.name, &webhook).await;
    configurations.delete(&name, &DeleteParams::default()).await?;
    result
}

async fn check_pod_is_mutated(
    client: &Client,
    namespace: &str,
    webhook: &LabelingWebhook,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    // The API server learns about new webhook configurations through an informer; retry until it calls us.
    let attempt = AtomicUsize::new(0);
    let stored = test_kit::eventually("a pod created through the webhook", WAIT, || async {
        let name = format!("app-{}", attempt.fetch_add(1, Ordering::SeqCst));
        let created = pods
            .create(&PostParams::default(), &pod(&name, json!({}), json!([]))?)
            .await?;
        if created.labels().contains_key("smoke.dynatrace.com/mutated") {
            return Ok(Some(pods.get(&name).await?));
        }
        pods.delete(&name, &DeleteParams::default()).await?;
        Ok(None)
    })
    .await?;
    assert_eq!(
        stored
            .labels()
            .get("smoke.dynatrace.com/mutated")
            .map(String::as_str),
        Some("true")
    );
    assert!(
        webhook.calls.load(Ordering::SeqCst) >= 1,
        "the webhook server saw no request"
    );
    Ok(())
}
