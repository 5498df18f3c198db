//! The installation's RBAC (`pure_install`), proven with the real processes: on a private cluster that holds
//! only the installation's ServiceAccounts and RBAC, the operator, the webhook server and the CSI provisioner
//! run as host processes, each with a kubeconfig whose bearer token the TokenRequest API issued for its own
//! ServiceAccount. They go through their main scenarios (webhook certificates and caBundles, a DynaKube
//! reconciled to its DaemonSet and status, a namespace mapped and given its Secrets, a workload whose pod
//! missed injection restarted, a pod injected through the webhook's caches, a code module provisioned with
//! the node's status ConfigMap written and GC run, a graceful stop that releases the Lease), and none of
//! them logs a single `forbidden`. A second test takes one rule away and checks that the operator
//! and the webhook say which verb on which resource they lack and what to do.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pure_api::crd::ConversionEndpoint;
use pure_api::dynakube::DynaKube;
use pure_install::Installation;
use serde_json::{Value, json};
use test_fake_tenant::{FakeTenant, Listen, TenantConfig};
use test_kit::Cluster;
use test_kit::process::KillOnDrop;

const FIELD_MANAGER: &str = "rbac-test";
const TOKEN: &str = "dt0c01.test";
const SELECTOR: (&str, &str) = ("rbac.dynatrace.com/inject", "true");
const APPS_NAMESPACE: &str = "rbac-apps";
/// How long each scenario may take on a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(90);

/// The cluster with the installation's accounts and RBAC, the CRDs, the webhook registered by URL and the
/// fake tenant; the processes are started by the tests.
struct World {
    cluster: Cluster,
    client: Client,
    installation: Installation,
    tenant: FakeTenant,
    dir: tempfile::TempDir,
    webhook_port: u16,
}

impl World {
    /// `edit` may change the installation's objects (a test takes a rule away) before they are applied.
    async fn start(edit: impl FnOnce(&mut Vec<Value>)) -> Self {
        // Private: the webhook configurations and the processes' watches are cluster-wide.
        let cluster = test_kit::start_private_cluster(2).await.unwrap();
        let client = cluster.client().await.unwrap();
        let installation = Installation::new("dynatrace-operator:rbac-test");
        let dir = tempfile::tempdir().unwrap();
        let webhook_port = test_kit::cluster::free_port().unwrap();
        let base = format!("https://127.0.0.1:{webhook_port}");
        // A CA of the test's until the operator writes its own into every caBundle.
        let placeholder_ca = test_kit::pki::CertificateAuthority::new("rbac-test-placeholder")
            .unwrap()
            .cert_pem();

        // What the chart installs, except that the webhook is reached by URL (host processes, no pods):
        // the namespace, the ServiceAccounts, the RBAC and the CSI driver's objects (the webhook and the
        // validation look for its DaemonSet).
        let mut objects: Vec<Value> = installation
            .objects()
            .into_iter()
            .filter(|o| {
                matches!(
                    o["kind"].as_str(),
                    Some(
                        "Namespace"
                            | "ServiceAccount"
                            | "ClusterRole"
                            | "ClusterRoleBinding"
                            | "Role"
                            | "RoleBinding"
                            | "PriorityClass"
                            | "CSIDriver"
                            | "DaemonSet"
                    )
                )
            })
            .collect();
        edit(&mut objects);
        test_kit::setup::apply_objects(&client, &objects, FIELD_MANAGER)
            .await
            .unwrap();
        let endpoint = ConversionEndpoint::Url {
            url: format!("{base}/convert"),
            ca_bundle_pem: placeholder_ca.clone(),
        };
        io_webhook::registration::apply_crds(&client, &endpoint, FIELD_MANAGER)
            .await
            .unwrap();
        let validating = io_webhook::registration::validating_configuration(
            pure_install::WEBHOOK,
            &format!("{base}/validate"),
            &placeholder_ca,
            None,
        );
        io_webhook::registration::apply_validating_configuration(&client, &validating, FIELD_MANAGER)
            .await
            .unwrap();
        let mutating =
            io_webhook::registration::mutating_configuration(pure_install::WEBHOOK, &base, &placeholder_ca);
        io_webhook::registration::apply_mutating_configuration(&client, &mutating, FIELD_MANAGER)
            .await
            .unwrap();
        let tenant = FakeTenant::start(TenantConfig::default(), Listen::Http)
            .await
            .unwrap();
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "dynakube", "namespace": installation.namespace },
            "stringData": { "apiToken": TOKEN },
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), &installation.namespace)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        Self {
            cluster,
            client,
            installation,
            tenant,
            dir,
            webhook_port,
        }
    }

    fn namespace(&self) -> &str {
        &self.installation.namespace
    }

    /// A kubeconfig authenticated as the ServiceAccount `account` of the installation.
    async fn kubeconfig(&self, account: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{account}.kubeconfig"));
        self.cluster
            .service_account_kubeconfig(self.namespace(), account, &path)
            .await
            .unwrap();
        path
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Starts `dynatrace-operator <args>` as the ServiceAccount `account`, logging to `<name>.log`.
    async fn spawn(&self, name: &str, account: &str, args: &[String], env: &[(&str, &str)]) -> KillOnDrop {
        let kubeconfig = self.kubeconfig(account).await;
        let log = std::fs::File::create(self.log(name)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dynatrace-operator"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", self.namespace())
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        KillOnDrop(child)
    }

    /// The operator as `dynatrace-operator`, with its health port.
    async fn operator(&self) -> (KillOnDrop, u16) {
        let port = test_kit::cluster::free_port().unwrap();
        let args = [
            "operator",
            "--health-address",
            &format!("127.0.0.1:{port}"),
            "--namespace",
            self.namespace(),
            "--pod-name",
            "operator-0",
            // The webhooks are registered by URL: the serving certificate must hold 127.0.0.1.
            "--webhook-cert-ip",
            "127.0.0.1",
        ]
        .map(String::from);
        let process = self.spawn("operator", pure_install::OPERATOR, &args, &[]).await;
        (process, port)
    }

    /// The webhook server as `dynatrace-webhook`, serving the operator's certificate from its Secret; with
    /// its metrics port.
    async fn webhook(&self) -> (KillOnDrop, u16) {
        let metrics_port = test_kit::cluster::free_port().unwrap();
        let args = [
            "webhook-server",
            "--certs-secret",
            pure_api::dynakube::names::WEBHOOK_CERTS_SECRET,
            "--namespace",
            self.namespace(),
            "--bind-address",
            "127.0.0.1",
            "--port",
            &self.webhook_port.to_string(),
            "--metrics-port",
            &metrics_port.to_string(),
            "--init-image",
            &self.installation.image,
        ]
        .map(String::from);
        let process = self.spawn("webhook", pure_install::WEBHOOK, &args, &[]).await;
        (process, metrics_port)
    }

    /// The CSI provisioner as `dynatrace-oneagent-csi-driver` for `node`, with a GC run every second.
    async fn csi_provisioner(&self, node: &str) -> KillOnDrop {
        let port = test_kit::cluster::free_port().unwrap();
        let data = self.dir.path().join("csi-data");
        let args = [
            "csi-provisioner",
            "--node-id",
            node,
            "--data-dir",
            &data.display().to_string(),
            "--health-probe-bind-address",
            &format!("127.0.0.1:{port}"),
            "--gc-interval",
            "1s",
        ]
        .map(String::from);
        self.spawn("csi-provisioner", pure_install::csi::CSI_DAEMONSET, &args, &[])
            .await
    }

    /// Fails the test with `error` and every denied request the processes logged, with the end of each log.
    fn fail(&self, error: &anyhow::Error) -> ! {
        let mut report = format!("{error:#}\n");
        for name in ["operator", "webhook", "csi-provisioner"] {
            let denied = forbidden_lines(&self.log(name));
            let tail = test_kit::process::log_tail(&self.log(name), 15);
            report.push_str(&format!("--- {name}: {} denied requests\n", denied.len()));
            for line in denied.iter().take(5) {
                report.push_str(&format!("{line}\n"));
            }
            report.push_str(&format!("--- {name}: last lines\n{tail}\n"));
        }
        panic!("{report}")
    }

    async fn apply<K>(&self, api: Api<K>, name: &str, object: Value)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
    }
}

async fn ready(port: u16) -> anyhow::Result<Option<()>> {
    Ok(test_kit::http_get(port, "/readyz")
        .await
        .filter(|a| a.starts_with("HTTP/1.1 200"))
        .map(drop))
}

/// The lines of `log` that tell of a denied request.
fn forbidden_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let lower = l.to_lowercase();
            lower.contains("forbidden") || lower.contains("code: 403")
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn operator_webhook_and_csi_provisioner_do_their_work_as_their_service_accounts_without_a_403() {
    let world = World::start(|_| {}).await;
    let ns = world.namespace().to_owned();
    let client = world.client.clone();
    // The CSI status of a node that no longer exists: the operator's node controller deletes it (it reads
    // the node, then deletes the ConfigMap).
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let stale_status = pure_csi::status::config_map_name(&format!("{ns}-gone"));
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {
                    "name": stale_status,
                    "labels": { (pure_csi::status::NODE_LABEL): format!("{ns}-gone") },
                },
                "data": { "versions": "[]" },
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    let (mut operator, operator_port) = world.operator().await;
    let (_webhook, webhook_metrics) = world.webhook().await;
    test_kit::eventually("the operator to be ready", TIMEOUT, || ready(operator_port))
        .await
        .unwrap();
    // Ready only once the operator has written the certificate Secret and the webhook's caches are synced.
    test_kit::eventually(
        "the webhook server to load the operator's certificate",
        TIMEOUT,
        || ready(webhook_metrics),
    )
    .await
    .unwrap_or_else(|e| world.fail(&e));

    test_kit::eventually("the operator to delete the stale CSI status", TIMEOUT, || async {
        Ok(config_maps.get_opt(&stale_status).await?.is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|e| world.fail(&e));

    // A classicFullStack DynaKube, admitted by the webhook (whose CA the operator wrote), reconciled into
    // its DaemonSet, pods on the nodes and phase Running.
    let dynakubes: Api<DynaKube> = Api::namespaced(client.clone(), &ns);
    let api_url = world.tenant.api_url();
    test_kit::eventually("the DynaKube to be admitted", TIMEOUT, || async {
        dynakubes
            .patch(
                "dynakube",
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(json!({
                    "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
                    "metadata": { "name": "dynakube", "namespace": ns },
                    "spec": { "apiUrl": api_url, "oneAgent": { "classicFullStack": {} } },
                })),
            )
            .await?;
        Ok(Some(()))
    })
    .await
    .unwrap_or_else(|e| world.fail(&e));
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    let daemonset = pure_api::dynakube::names::one_agent_daemonset("dynakube");
    test_kit::eventually("the OneAgent DaemonSet's pods to be ready", TIMEOUT, || async {
        let Some(daemonset) = daemonsets.get_opt(&daemonset).await? else {
            return Ok(None);
        };
        let status = daemonset.status.unwrap_or_default();
        Ok(
            (status.desired_number_scheduled > 0 && status.number_ready == status.desired_number_scheduled)
                .then_some(()),
        )
    })
    .await
    .unwrap_or_else(|e| world.fail(&e));
    test_kit::eventually("the DynaKube's phase Running", TIMEOUT, || async {
        let status = dynakubes.get("dynakube").await?.status.unwrap_or_default();
        Ok((status.phase.as_deref() == Some("Running")).then_some(()))
    })
    .await
    .unwrap_or_else(|e| world.fail(&e));

    // An applicationMonitoring DynaKube with the CSI driver that maps a namespace: the operator labels it
    // and writes its Secrets there, and a pod created there is injected through the webhook's caches.
    let node = "kwok-node-0";
    let _provisioner = world.csi_provisioner(node).await;
    // The namespace and a Deployment in it before any DynaKube maps it: its pod runs without injection,
    // and the operator restarts the Deployment (pod list, ReplicaSet get, Deployment patch).
    world
        .apply(
            Api::<Namespace>::all(client.clone()),
            APPS_NAMESPACE,
            json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": APPS_NAMESPACE, "labels": { SELECTOR.0: SELECTOR.1 } },
            }),
        )
        .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), APPS_NAMESPACE);
    world
        .apply(
            deployments.clone(),
            "missed",
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": "missed", "namespace": APPS_NAMESPACE },
                "spec": {
                    "replicas": 1,
                    "selector": { "matchLabels": { "app": "missed" } },
                    "template": {
                        "metadata": { "labels": { "app": "missed" } },
                        "spec": { "containers": [{ "name": "app", "image": "sample-app" }] },
                    },
                },
            }),
        )
        .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), APPS_NAMESPACE);
    test_kit::eventually("the uninjected pod to run", TIMEOUT, || async {
        let list = pods.list(&ListParams::default().labels("app=missed")).await?;
        Ok(list
            .items
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| world.fail(&e));
    let apps = |touch: &str| {
        json!({
            "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
            "metadata": { "name": "apps", "namespace": ns, "annotations": {
                "feature.dynatrace.com/restart-missed-injections": "true",
                "rbac.dynatrace.com/touch": touch,
            } },
            "spec": {
                "apiUrl": api_url, "tokens": "dynakube",
                "namespaceSelector": { "matchLabels": { SELECTOR.0: SELECTOR.1 } },
                "oneAgent": { "applicationMonitoring": { "useCSIDriver": true } },
            },
        })
    };
    world.apply(dynakubes.clone(), "apps", apps("0")).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), APPS_NAMESPACE);
    test_kit::eventually("the mapped namespace's init Secret", TIMEOUT, || async {
        Ok(secrets.get_opt(pure_api::dynakube::names::INIT_SECRET).await?)
    })
    .await
    .unwrap_or_else(|e| world.fail(&e));
    // A change of the DynaKube's annotations starts a missed-injection check now that the namespace is
    // mapped.
    world.apply(dynakubes.clone(), "apps", apps("1")).await;
    test_kit::eventually("the uninjected pod's Deployment restarted", TIMEOUT, || async {
        let deployment = deployments.get("missed").await?;
        Ok(deployment
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(pure_desired::missed::RESTART_CAUSE_ANNOTATION)
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| world.fail(&e));
    let labelled = Api::<Namespace>::all(client.clone())
        .get(APPS_NAMESPACE)
        .await
        .unwrap();
    assert_eq!(
        labelled
            .metadata
            .labels
            .unwrap_or_default()
            .get(pure_desired::mapping::INSTANCE_LABEL)
            .map(String::as_str),
        Some("apps"),
        "the namespace is labelled for the DynaKube"
    );
    let injected = test_kit::eventually("a pod injected by the webhook", TIMEOUT, || async {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "generateName": "app-" },
            "spec": { "containers": [{ "name": "app", "image": "sample-app" }] },
        }))?;
        let pod = pods.create(&PostParams::default(), &pod).await?;
        let injected = pod.metadata.annotations.as_ref().is_some_and(|a| {
            a.get("oneagent.dynatrace.com/injected")
                .is_some_and(|v| v == "true")
        });
        Ok(injected.then_some(pod))
    })
    .await
    .unwrap_or_else(|e| world.fail(&e));
    assert!(
        injected
            .spec
            .unwrap()
            .volumes
            .unwrap_or_default()
            .iter()
            .any(|v| v.csi.is_some()),
        "the webhook saw the CSI driver's DaemonSet and gave the pod a CSI volume"
    );

    // The provisioner downloads the version the operator resolved, writes the node's status ConfigMap and
    // runs its GC.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let status_map = pure_csi::status::config_map_name(node);
    test_kit::eventually(
        "the CSI node status ConfigMap: the version ready for `apps`",
        TIMEOUT,
        || async {
            let Some(map) = config_maps.get_opt(&status_map).await? else {
                return Ok(None);
            };
            let data = map.data.unwrap_or_default();
            let dynakubes = data
                .get(pure_csi::status::DYNAKUBES_KEY)
                .cloned()
                .unwrap_or_default();
            Ok(dynakubes.contains(r#""ready":true"#).then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| world.fail(&e));
    test_kit::eventually("a GC run", TIMEOUT, || async {
        let log = std::fs::read_to_string(world.log("csi-provisioner"))?;
        Ok(log.contains("garbage collection done").then_some(()))
    })
    .await
    .unwrap_or_else(|e| world.fail(&e));

    // A few more seconds for the periodic work (resyncs, status refreshes) to hit a missing rule, then a
    // graceful stop, which releases the Lease.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = rustix::process::Pid::from_raw(i32::try_from(operator.0.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::task::spawn_blocking(move || operator.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "the operator's exit status: {status}");
    let log = std::fs::read_to_string(world.log("operator")).unwrap();
    assert!(log.contains("released the Lease"), "{log}");
    let mut denied = Vec::new();
    for name in ["operator", "webhook", "csi-provisioner"] {
        for line in forbidden_lines(&world.log(name)) {
            denied.push(format!("{name}: {line}"));
        }
    }
    assert!(denied.is_empty(), "denied requests:\n{}", denied.join("\n"));
}

/// Removes `verb` from the rules of the ClusterRole or Role `role` that grant it on `resource`.
fn without_verb(objects: &mut [Value], role: &str, resource: &str, verb: &str) {
    let mut removed = false;
    for object in objects.iter_mut() {
        let is_role = object["kind"] == "ClusterRole" || object["kind"] == "Role";
        if !is_role || object["metadata"]["name"] != role {
            continue;
        }
        for rule in object["rules"].as_array_mut().unwrap() {
            if rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == resource)
            {
                let verbs = rule["verbs"].as_array_mut().unwrap();
                let before = verbs.len();
                verbs.retain(|v| v != verb);
                removed |= verbs.len() < before;
            }
        }
    }
    assert!(removed, "no rule of {role} grants {verb} on {resource}");
}

#[tokio::test]
async fn a_missing_rule_is_reported_with_the_verb_the_resource_and_what_to_do() {
    let world = World::start(|objects| {
        without_verb(objects, pure_install::OPERATOR, "nodes", "list");
        without_verb(objects, pure_install::WEBHOOK, "nodes", "list");
        without_verb(objects, pure_install::csi::CSI_DAEMONSET, "dynakubes", "list");
    })
    .await;
    let (_operator, _port) = world.operator().await;
    let (_webhook, _metrics) = world.webhook().await;
    let _provisioner = world.csi_provisioner("kwok-node-0").await;
    let log = world.log("operator");
    // The API server's message names verb and resource; the operator adds which role of the installation
    // lacks the rule, so that whoever reads the log knows what to fix.
    let line = test_kit::eventually(
        "the operator to say which rule the denied list of nodes needs",
        TIMEOUT,
        || async {
            Ok(std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains("ClusterRole dynatrace-operator") && l.contains(r#"on "nodes""#))
                .map(str::to_owned))
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}; the operator logged:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    for words in [r#"may not list nodes"#, r#"add "list" on "nodes""#] {
        assert!(line.contains(words), "{words:?} missing from {line}");
    }
    // The webhook's watches say the same about its own ClusterRole.
    let webhook_log = world.log("webhook");
    let line = test_kit::eventually(
        "the webhook to say which rule the denied list of nodes needs",
        TIMEOUT,
        || async {
            Ok(std::fs::read_to_string(&webhook_log)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains("ClusterRole dynatrace-webhook") && l.contains(r#"on "nodes""#))
                .map(str::to_owned))
        },
    )
    .await
    .unwrap();
    assert!(line.contains(r#"add "list" on "nodes""#), "{line}");
    // The CSI provisioner, whose DynaKube watch is denied, says so at warning level with its Role,
    // instead of waiting silently.
    let provisioner_log = world.log("csi-provisioner");
    let line = test_kit::eventually(
        "the CSI provisioner to say which rule the denied list of DynaKubes needs",
        TIMEOUT,
        || async {
            Ok(std::fs::read_to_string(&provisioner_log)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains("Role dynatrace-oneagent-csi-driver"))
                .map(str::to_owned))
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}; the CSI provisioner logged:\n{}",
            std::fs::read_to_string(&provisioner_log).unwrap_or_default()
        )
    });
    let record: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["level"], "WARN", "{line}");
    let advice = record["fields"]["advice"].as_str().unwrap_or_default();
    assert!(advice.contains(r#"add "list" on "dynakubes""#), "{line}");
}
