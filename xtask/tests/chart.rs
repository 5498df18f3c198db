//! The Helm chart in `chart/`: generated parts up to date, `helm lint --strict`, each value's effect on
//! the rendered objects, the schema rejecting misspelled values, the rendered objects equal to
//! `pure_install`'s for the same settings, and every variant accepted by the API server (server-side
//! dry run). Helm is the pinned build (`cargo xtask tools`); without it these tests skip, loudly, unless
//! `DTO_REQUIRE_TOOLS` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use pure_install::Installation;
use pure_install::csi::CsiDriverOptions;
use serde_json::{Value, json};

const IMAGE: &str = "registry.example.com/dynatrace/dynatrace-operator:1.2.3";

fn workspace() -> PathBuf {
    test_kit::tools::workspace_root()
}

/// The pinned Helm, or `None` (after saying why) when it is not built and tools are not required.
fn helm() -> Option<PathBuf> {
    match test_kit::tools::locate_helm() {
        Ok(path) => Some(path),
        Err(err) if std::env::var_os(test_kit::tools::REQUIRE_TOOLS_ENV).is_none() => {
            eprintln!(
                "SKIPPED: {err:#} (set {}=1 to fail instead)",
                test_kit::tools::REQUIRE_TOOLS_ENV
            );
            None
        }
        Err(err) => panic!("{err:#}"),
    }
}

/// Runs helm with its state directories under target/, so that tests never touch the user's Helm setup.
fn run_helm(helm: &PathBuf, args: &[&str]) -> std::process::Output {
    let home = workspace().join("target/helm-test-home");
    Command::new(helm)
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap()
}

/// `--set` arguments for a list of `key=value`.
fn set_args(values: &[&str]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| ["--set".to_owned(), (*v).to_owned()])
        .collect()
}

/// `helm template` of the chart in `namespace` with `values`: the objects, or Helm's error output.
fn try_render(helm: &PathBuf, namespace: &str, values: &[&str]) -> Result<Vec<Value>, String> {
    let chart = workspace().join("chart");
    let mut args = vec![
        "template".to_owned(),
        "dynatrace-operator".to_owned(),
        chart.display().to_string(),
        "--namespace".to_owned(),
        namespace.to_owned(),
    ];
    args.extend(set_args(values));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run_helm(helm, &args);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(parse_documents(&String::from_utf8_lossy(&output.stdout)))
}

fn render(helm: &PathBuf, namespace: &str, values: &[&str]) -> Vec<Value> {
    try_render(helm, namespace, values).unwrap_or_else(|err| panic!("helm template {values:?}: {err}"))
}

fn parse_documents(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for document in text.split("\n---") {
        let document = document.trim_start_matches("---");
        if document
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        let value: Value = serde_saphyr::from_str(document)
            .unwrap_or_else(|err| panic!("rendered YAML does not parse: {err}\n{document}"));
        if !value.is_null() {
            out.push(value);
        }
    }
    out
}

fn key(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

fn find<'a>(objects: &'a [Value], kind_name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| key(o) == kind_name)
}

fn get<'a>(objects: &'a [Value], kind_name: &str) -> &'a Value {
    find(objects, kind_name).unwrap_or_else(|| {
        panic!(
            "{kind_name} not rendered; rendered: {:?}",
            objects.iter().map(key).collect::<Vec<_>>()
        )
    })
}

fn pod_spec<'a>(objects: &'a [Value], kind_name: &str) -> &'a Value {
    &get(objects, kind_name)["spec"]["template"]["spec"]
}

const WEBHOOK: &str = "Deployment/dynatrace-webhook";
const OPERATOR: &str = "Deployment/dynatrace-operator";
const CSI: &str = "DaemonSet/dynatrace-oneagent-csi-driver";

// ---- generated parts and metadata (no Helm needed) ----

#[test]
fn the_chart_rbac_is_generated_from_pure_install() {
    for (path, generated) in [
        (
            pure_install::chart::CHART_RBAC_PATH,
            pure_install::chart::rbac_yaml().unwrap(),
        ),
        (
            pure_install::chart::CHART_CSI_RBAC_PATH,
            pure_install::chart::csi_rbac_yaml().unwrap(),
        ),
    ] {
        let committed = std::fs::read_to_string(workspace().join(path)).unwrap_or_default();
        assert!(
            committed == generated,
            "{path} is out of date with pure-install's RBAC; run `cargo xtask generate` and commit the result"
        );
    }
}

#[test]
fn the_chart_version_and_app_version_are_the_workspace_version() {
    let chart: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(workspace().join("chart/Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["name"], "dynatrace-operator");
    assert_eq!(
        chart["version"],
        env!("CARGO_PKG_VERSION"),
        "chart/Chart.yaml version"
    );
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "chart/Chart.yaml appVersion"
    );
}

#[test]
fn the_sample_dynakube_is_a_valid_v1beta1_dynakube() {
    let text = std::fs::read_to_string(workspace().join("samples/dynakube.yaml")).unwrap();
    let dynakube: pure_api::dynakube::v1beta1::DynaKube = serde_saphyr::from_str(&text).unwrap();
    // What the webhook would say with the chart's CSI driver installed: nothing.
    let cluster = pure_api::validation::ClusterView {
        csi_driver_installed: Some(true),
        ..Default::default()
    };
    let verdict = pure_api::validation::validate(&dynakube, &cluster, &Default::default());
    assert!(
        verdict.errors.is_empty() && verdict.warnings.is_empty(),
        "{verdict:?}"
    );
    assert!(dynakube.spec.one_agent.unwrap().cloud_native_full_stack.is_some());
}

// ---- helm lint and the schema ----

/// Every variant the tests render: each value that changes the output.
const VARIANTS: &[&[&str]] = &[
    &[],
    &["csidriver.enabled=false"],
    &["webhook.highAvailability=false"],
    &["platform=openshift"],
    &["installCRD=false"],
    &["customPullSecret=my-pull-secret"],
    &[
        "csidriver.kubeletPath=/data/kubelet/",
        "csidriver.maxUnmountedVolumeAge=3",
    ],
    &["csidriver.existingPriorityClassName=system-node-critical"],
    &[
        "webhook.hostNetwork=true",
        "webhook.mutatingWebhook.timeoutSeconds=4",
    ],
    &["imageRef.repository=registry.example.com/op", "imageRef.tag=v9"],
];

#[test]
fn helm_lint_strict_passes_for_every_variant() {
    let Some(helm) = helm() else { return };
    let chart = workspace().join("chart").display().to_string();
    for values in VARIANTS {
        let mut args = vec!["lint".to_owned(), "--strict".to_owned(), chart.clone()];
        args.extend(set_args(values));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = run_helm(&helm, &args);
        assert!(
            output.status.success(),
            "helm lint --strict {values:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_schema_rejects_misspelled_and_ill_typed_values_by_name() {
    let Some(helm) = helm() else { return };
    let err = try_render(&helm, "dynatrace", &["webhook.highAvailabilty=false"]).unwrap_err();
    assert!(
        err.contains("highAvailabilty") && err.contains("additional properties"),
        "{err}"
    );
    let err = try_render(&helm, "dynatrace", &["csidriver.enable=true"]).unwrap_err();
    assert!(err.contains("enable"), "{err}");
    let err = try_render(&helm, "dynatrace", &["platform=openshfit"]).unwrap_err();
    assert!(err.contains("platform"), "{err}");
    let chart = workspace().join("chart").display().to_string();
    let output = run_helm(
        &helm,
        &["template", "x", &chart, "--set-string", "csidriver.enabled=yes"],
    );
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && err.contains("/csidriver/enabled") && err.contains("want boolean"),
        "{err}"
    );
}

// ---- the rendered objects are pure_install's ----

/// Labels that differ by installer (Helm or code); everything else must be equal.
const INSTALLER_LABELS: &[&str] = &[
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
    "helm.sh/chart",
];

fn strip_installer_labels(labels: &mut Value) {
    if let Some(map) = labels.as_object_mut() {
        for label in INSTALLER_LABELS {
            map.remove(*label);
        }
    }
}

/// An object reduced to what both installers must agree on: the chart's own additions (resources of the
/// operator and webhook, HA spreading, pull secrets, host network) and the installer labels removed.
fn significant(object: &Value) -> Value {
    let mut object = object.clone();
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.retain(|k, _| k == "name" || k == "namespace" || k == "labels");
        if let Some(labels) = metadata.get_mut("labels") {
            strip_installer_labels(labels);
        }
    }
    if kind == "Deployment" || kind == "DaemonSet" {
        let template = &mut object["spec"]["template"];
        strip_installer_labels(&mut template["metadata"]["labels"]);
        if let Some(spec) = template["spec"].as_object_mut() {
            for chart_only in [
                "imagePullSecrets",
                "topologySpreadConstraints",
                "hostNetwork",
                "dnsPolicy",
            ] {
                spec.remove(chart_only);
            }
        }
        if kind == "Deployment" {
            for container in template["spec"]["containers"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                container.as_object_mut().unwrap().remove("resources");
            }
        }
    }
    if kind == "CustomResourceDefinition" {
        object["metadata"].as_object_mut().unwrap().remove("labels");
    }
    object
}

/// Renders the chart with `values` and compares each object `install` builds with the rendered one.
fn assert_chart_matches_code(helm: &PathBuf, values: &[&str], install: &Installation) {
    let mut all_values = vec![format!("image={}", install.image)];
    all_values.extend(values.iter().map(|v| (*v).to_owned()));
    let all_values: Vec<&str> = all_values.iter().map(String::as_str).collect();
    let rendered = render(helm, &install.namespace, &all_values);
    let code = install.objects();
    let code_keys: Vec<String> = code.iter().map(key).collect();
    for object in &code {
        if object["kind"] == "Namespace" {
            continue; // `helm install --create-namespace` makes it
        }
        let Some(chart_object) = find(&rendered, &key(object)) else {
            panic!("{values:?}: the chart does not render {}", key(object));
        };
        let (expected, actual) = (significant(object), significant(chart_object));
        if expected != actual {
            panic!(
                "{values:?}: {} differs between pure_install and the chart.\ncode:\n{}\nchart:\n{}",
                key(object),
                serde_json::to_string_pretty(&expected).unwrap(),
                serde_json::to_string_pretty(&actual).unwrap()
            );
        }
    }
    // What only the chart renders, on purpose.
    for object in &rendered {
        let name = key(object);
        let chart_only = matches!(
            name.as_str(),
            "ServiceAccount/dynatrace-activegate"
                | "ServiceAccount/dynatrace-kubernetes-monitoring"
                | "PodDisruptionBudget/dynatrace-webhook"
        ) || object["kind"] == "SecurityContextConstraints";
        assert!(
            chart_only || code_keys.contains(&name),
            "{values:?}: the chart renders {name}, which pure_install does not build"
        );
    }
}

#[test]
fn the_rendered_objects_are_the_ones_pure_install_builds() {
    let Some(helm) = helm() else { return };
    let default = Installation::new(IMAGE);
    let with_csi = |change: &dyn Fn(&mut CsiDriverOptions)| {
        let mut install = default.clone();
        change(install.csi_driver.as_mut().unwrap());
        install
    };
    let cases: Vec<(&[&str], Installation)> = vec![
        (&[], default.clone()),
        (
            &["webhook.highAvailability=false"],
            Installation {
                webhook_replicas: 1,
                ..default.clone()
            },
        ),
        (
            &["csidriver.enabled=false"],
            Installation {
                csi_driver: None,
                ..default.clone()
            },
        ),
        (
            &[
                "csidriver.kubeletPath=/data/kubelet/",
                "csidriver.maxUnmountedVolumeAge=3",
            ],
            with_csi(&|o| {
                o.kubelet_dir = "/data/kubelet/".into();
                o.max_unmounted_volume_age_days = Some(3);
            }),
        ),
        (
            &["csidriver.existingPriorityClassName=system-node-critical"],
            with_csi(&|o| o.priority_class = Some("system-node-critical".into())),
        ),
        (&["platform=openshift"], with_csi(&|o| o.openshift = true)),
        (
            &[],
            Installation {
                namespace: "monitoring".into(),
                ..default.clone()
            },
        ),
    ];
    for (values, install) in &cases {
        assert_chart_matches_code(&helm, values, install);
    }
}

// ---- what each value changes ----

#[test]
fn each_value_changes_what_it_names() {
    let Some(helm) = helm() else { return };
    let default = render(&helm, "dynatrace", &[]);

    // High availability: two spread replicas and a PDB; off: one replica, neither.
    assert_eq!(get(&default, WEBHOOK)["spec"]["replicas"], 2);
    let spread = &pod_spec(&default, WEBHOOK)["topologySpreadConstraints"];
    assert_eq!(spread[1]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread[1]["whenUnsatisfiable"], "DoNotSchedule");
    assert_eq!(spread[0]["topologyKey"], "topology.kubernetes.io/zone");
    assert_eq!(
        get(&default, "PodDisruptionBudget/dynatrace-webhook")["spec"]["minAvailable"],
        1
    );
    let single = render(&helm, "dynatrace", &["webhook.highAvailability=false"]);
    assert_eq!(get(&single, WEBHOOK)["spec"]["replicas"], 1);
    assert!(
        pod_spec(&single, WEBHOOK)
            .get("topologySpreadConstraints")
            .is_none()
    );
    assert!(find(&single, "PodDisruptionBudget/dynatrace-webhook").is_none());

    // The CSI driver is on by default (HEAD's default); off removes every CSI object.
    for name in [
        CSI,
        "CSIDriver/csi.oneagent.dynatrace.com",
        "PriorityClass/dynatrace-high-priority",
        "ServiceAccount/dynatrace-oneagent-csi-driver",
        "ClusterRole/dynatrace-oneagent-csi-driver",
        "RoleBinding/dynatrace-oneagent-csi-driver",
    ] {
        assert!(find(&default, name).is_some(), "{name}");
    }
    let driver = get(&default, "CSIDriver/csi.oneagent.dynatrace.com");
    assert_eq!(driver["spec"]["attachRequired"], false);
    assert_eq!(driver["spec"]["podInfoOnMount"], true);
    assert_eq!(driver["spec"]["volumeLifecycleModes"], json!(["Ephemeral"]));
    let without_csi = render(&helm, "dynatrace", &["csidriver.enabled=false"]);
    let leftovers: Vec<String> = without_csi
        .iter()
        .map(key)
        .filter(|k| k.contains("csi") || k.contains("high-priority"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // An existing PriorityClass replaces ours.
    let existing = render(
        &helm,
        "dynatrace",
        &["csidriver.existingPriorityClassName=system-node-critical"],
    );
    assert!(find(&existing, "PriorityClass/dynatrace-high-priority").is_none());
    assert_eq!(
        pod_spec(&existing, CSI)["priorityClassName"],
        "system-node-critical"
    );
    let value = render(&helm, "dynatrace", &["csidriver.priorityClassValue=5000"]);
    assert_eq!(
        get(&value, "PriorityClass/dynatrace-high-priority")["value"],
        5000
    );

    // The kubelet path moves every host path and the registration path; the volume age reaches the env.
    let moved = render(
        &helm,
        "dynatrace",
        &[
            "csidriver.kubeletPath=/data/kubelet",
            "csidriver.maxUnmountedVolumeAge=3",
        ],
    );
    let spec = pod_spec(&moved, CSI);
    for volume in spec["volumes"].as_array().unwrap() {
        if let Some(path) = volume["hostPath"]["path"].as_str() {
            assert!(path.starts_with("/data/kubelet/"), "{path}");
        }
    }
    let server_args = spec["containers"][0]["args"].to_string();
    assert!(
        server_args.contains(
            "--kubelet-registration-path=/data/kubelet/plugins/csi.oneagent.dynatrace.com/csi.sock"
        ),
        "{server_args}"
    );
    let env = &spec["containers"][1]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "MAX_UNMOUNTED_VOLUME_AGE", "value": "3"})),
        "{env}"
    );
    assert!(
        !pod_spec(&default, CSI)["containers"][1]["env"]
            .to_string()
            .contains("MAX_UNMOUNTED")
    );

    // OpenShift: the SCCs and the CSIDriver's profile label; none elsewhere.
    let openshift = render(&helm, "dynatrace", &["platform=openshift"]);
    for name in [
        "SecurityContextConstraints/dynatrace-operator",
        "SecurityContextConstraints/dynatrace-dynakube-oneagent",
        "SecurityContextConstraints/dynatrace-oneagent-csi-driver",
    ] {
        assert!(find(&openshift, name).is_some(), "{name}");
    }
    let users = &get(&openshift, "SecurityContextConstraints/dynatrace-operator")["users"];
    assert!(
        users
            .to_string()
            .contains("system:serviceaccount:dynatrace:dynatrace-webhook"),
        "{users}"
    );
    assert_eq!(
        get(&openshift, "CSIDriver/csi.oneagent.dynatrace.com")["metadata"]["labels"]["security.openshift.io/csi-ephemeral-volume-profile"],
        "restricted"
    );
    assert!(!default.iter().any(|o| o["kind"] == "SecurityContextConstraints"));

    // installCRD: the CRDs (kept on uninstall) or nothing.
    let crd = get(&default, "CustomResourceDefinition/dynakubes.dynatrace.com");
    assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
    assert_eq!(
        crd["spec"]["conversion"]["webhook"]["clientConfig"]["service"]["namespace"],
        "dynatrace"
    );
    assert!(find(&default, "CustomResourceDefinition/oneagents.dynatrace.com").is_some());
    let no_crd = render(&helm, "dynatrace", &["installCRD=false"]);
    assert!(!no_crd.iter().any(|o| o["kind"] == "CustomResourceDefinition"));

    // customPullSecret reaches every pod.
    let pulling = render(&helm, "dynatrace", &["customPullSecret=my-pull-secret"]);
    for workload in [OPERATOR, WEBHOOK, CSI] {
        assert_eq!(
            pod_spec(&pulling, workload)["imagePullSecrets"],
            json!([{"name": "my-pull-secret"}]),
            "{workload}"
        );
        assert!(pod_spec(&default, workload).get("imagePullSecrets").is_none());
    }

    // The image: appVersion by default, imageRef, or image; the webhook hands it to injected pods.
    let images = |objects: &[Value]| -> Vec<String> {
        [OPERATOR, WEBHOOK, CSI]
            .iter()
            .flat_map(|w| pod_spec(objects, w)["containers"].as_array().unwrap().clone())
            .map(|c| c["image"].as_str().unwrap().to_owned())
            .collect()
    };
    let default_image = format!("dynatrace-operator:{}", env!("CARGO_PKG_VERSION"));
    assert!(
        images(&default).iter().all(|i| *i == default_image),
        "{:?}",
        images(&default)
    );
    let by_ref = render(
        &helm,
        "dynatrace",
        &["imageRef.repository=registry.example.com/op", "imageRef.tag=v9"],
    );
    assert!(images(&by_ref).iter().all(|i| i == "registry.example.com/op:v9"));
    let by_image = render(
        &helm,
        "dynatrace",
        &[&format!("image={IMAGE}"), "imageRef.tag=ignored"],
    );
    assert!(images(&by_image).iter().all(|i| i == IMAGE));
    assert!(
        pod_spec(&by_image, WEBHOOK)["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("--init-image={IMAGE}")))
    );

    // Timeouts and host network of the webhook.
    let tuned = render(
        &helm,
        "dynatrace",
        &[
            "webhook.mutatingWebhook.timeoutSeconds=4",
            "webhook.validatingWebhook.timeoutSeconds=7",
            "webhook.hostNetwork=true",
        ],
    );
    for webhook in get(&tuned, "MutatingWebhookConfiguration/dynatrace-webhook")["webhooks"]
        .as_array()
        .unwrap()
    {
        assert_eq!(webhook["timeoutSeconds"], 4);
        assert!(webhook["clientConfig"].get("caBundle").is_none());
    }
    assert_eq!(
        get(&tuned, "ValidatingWebhookConfiguration/dynatrace-webhook")["webhooks"][0]["timeoutSeconds"],
        7
    );
    assert_eq!(pod_spec(&tuned, WEBHOOK)["hostNetwork"], true);
    assert_eq!(pod_spec(&tuned, WEBHOOK)["dnsPolicy"], "ClusterFirstWithHostNet");

    // Resources of the operator and the webhook come from the values.
    let resources = &pod_spec(&default, WEBHOOK)["containers"][0]["resources"];
    assert_eq!(resources["requests"], json!({"cpu": "300m", "memory": "128Mi"}));
    let resources = &pod_spec(&default, OPERATOR)["containers"][0]["resources"];
    assert_eq!(resources["limits"], json!({"cpu": "100m", "memory": "128Mi"}));

    // Every ServiceAccount the components and the operator's workloads run as.
    for account in [
        "dynatrace-operator",
        "dynatrace-webhook",
        "dynatrace-dynakube-oneagent",
        "dynatrace-activegate",
        "dynatrace-kubernetes-monitoring",
        "dynatrace-oneagent-csi-driver",
    ] {
        assert!(
            find(&default, &format!("ServiceAccount/{account}")).is_some(),
            "{account}"
        );
    }
}

// ---- the API server accepts what the chart renders ----

/// Server-side apply with dryRun of every rendered object into the test namespace; the kinds the cluster
/// does not serve (OpenShift's SCCs) are returned instead of applied.
async fn dry_run_apply(
    client: &kube::Client,
    namespace: &str,
    objects: &[Value],
) -> Result<Vec<String>, String> {
    let mut not_served = Vec::new();
    let params = PatchParams::apply("dynatrace-operator-chart-test")
        .force()
        .dry_run();
    for object in objects {
        let typed: DynamicObject = serde_json::from_value(object.clone()).unwrap();
        let gvk = GroupVersionKind::try_from(typed.types.as_ref().unwrap()).unwrap();
        let (resource, capabilities) = match kube::discovery::pinned_kind(client, &gvk).await {
            Ok(found) => found,
            Err(_) if gvk.group == "security.openshift.io" => {
                not_served.push(key(object));
                continue;
            }
            Err(err) => return Err(format!("{}: {err}", key(object))),
        };
        let api: Api<DynamicObject> = if capabilities.scope == Scope::Namespaced {
            Api::namespaced_with(client.clone(), namespace, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let name = object["metadata"]["name"].as_str().unwrap();
        if let Err(err) = api.patch(name, &params, &Patch::Apply(object)).await {
            return Err(format!("the API server rejects {}: {err}", key(object)));
        }
    }
    Ok(not_served)
}

#[tokio::test]
async fn the_api_server_accepts_the_rendered_chart_in_a_dry_run() {
    let Some(helm) = helm() else { return };
    let namespace = test_kit::TestNamespace::create().await.unwrap();
    // The dry run does check: an object the API server must refuse is refused.
    let mut broken = render(&helm, &namespace.name, &[]);
    broken.retain(|o| key(o) == WEBHOOK);
    broken[0]["spec"]["replicas"] = json!("two");
    let refused = dry_run_apply(&namespace.client, &namespace.name, &broken).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("replicas")),
        "{refused:?}"
    );
    let mut variants: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    variants.insert("default", vec![]);
    variants.insert("CSI off", vec!["csidriver.enabled=false"]);
    variants.insert("HA off", vec!["webhook.highAvailability=false"]);
    variants.insert("OpenShift", vec!["platform=openshift"]);
    variants.insert(
        "everything set",
        vec![
            "customPullSecret=pull",
            "csidriver.kubeletPath=/data/kubelet",
            "csidriver.maxUnmountedVolumeAge=3",
            "webhook.hostNetwork=true",
            "operator.nodeSelector.pool=system",
            "operator.tolerations[0].operator=Exists",
        ],
    );
    for (name, values) in &variants {
        let objects = render(&helm, &namespace.name, values);
        assert!(objects.len() > 10, "{name}: only {} objects", objects.len());
        let not_served = dry_run_apply(&namespace.client, &namespace.name, &objects)
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        if !not_served.is_empty() {
            eprintln!(
                "{name}: not checked by the API server (OpenShift's CRD is not installed on the local cluster): {not_served:?}"
            );
        }
        assert!(
            *name == "OpenShift" || not_served.is_empty(),
            "{name}: {not_served:?}"
        );
    }
}

// ---- install, upgrade from the previous chart, uninstall ----

/// A copy of the chart as the previous release: version 0.0.1, and its DynaKube CRD marked with a label
/// that the current chart does not set (so that the upgrade visibly changes the CRD).
fn previous_chart(dir: &std::path::Path) {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    copy(&workspace().join("chart"), dir);
    let chart_yaml = dir.join("Chart.yaml");
    let text = std::fs::read_to_string(&chart_yaml).unwrap();
    let text = text.replacen(
        &format!("version: {}", env!("CARGO_PKG_VERSION")),
        "version: 0.0.1",
        1,
    );
    std::fs::write(&chart_yaml, text).unwrap();
    let crds = dir.join("templates/crds.yaml");
    let text = std::fs::read_to_string(&crds).unwrap();
    let marked = text.replacen(
        "  name: dynakubes.dynatrace.com\n",
        "  labels:\n    chart-test/previous: \"true\"\n  name: dynakubes.dynatrace.com\n",
        1,
    );
    assert_ne!(marked, text, "the DynaKube CRD's name line moved; adapt the test");
    std::fs::write(&crds, marked).unwrap();
}

#[tokio::test]
async fn helm_upgrade_keeps_dynakubes_and_applies_crd_changes_and_uninstall_keeps_the_crds() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{ApiResource, DeleteParams, PostParams};
    use std::time::Duration;

    let Some(helm) = helm() else { return };
    // A cluster of its own: the installed webhook configurations apply to the whole cluster.
    let cluster = test_kit::start_private_cluster(3).await.unwrap();
    let namespace = test_kit::TestNamespace::create_in(&cluster).await.unwrap();
    let client = namespace.client.clone();
    let kubeconfig = namespace.kubeconfig().display().to_string();
    let previous = workspace().join(format!("target/chart-previous-{}", std::process::id()));
    previous_chart(&previous);
    let current = workspace().join("chart").display().to_string();
    let helm_in_cluster = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--namespace", &namespace.name, "--kubeconfig", &kubeconfig]);
        let output = run_helm(&helm, &all);
        assert!(
            output.status.success(),
            "helm {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let previous_dir = previous.display().to_string();
    helm_in_cluster(&[
        "install",
        "dynatrace-operator",
        &previous_dir,
        "--wait",
        "--timeout",
        "120s",
    ]);

    // The webhook's pods run on kwok nodes and answer nothing: without the validating webhook (which
    // fails closed) a DynaKube can be created. The upgrade puts the configuration back.
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    validating
        .delete("dynatrace-webhook", &DeleteParams::default())
        .await
        .unwrap();
    let gvk = GroupVersionKind::gvk("dynatrace.com", "v1beta1", "DynaKube");
    let dynakubes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace.name, &ApiResource::from_gvk(&gvk));
    let dynakube: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta1",
        "kind": "DynaKube",
        "metadata": {"name": "dynakube"},
        "spec": {
            "apiUrl": "https://abc12345.live.dynatrace.com/api",
            "oneAgent": {"classicFullStack": {}}
        }
    }))
    .unwrap();
    test_kit::eventually("the DynaKube is created", Duration::from_secs(30), || async {
        Ok(dynakubes.create(&PostParams::default(), &dynakube).await.ok())
    })
    .await
    .unwrap();

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let marked = |crd: &CustomResourceDefinition| {
        crd.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key("chart-test/previous"))
    };
    assert!(marked(&crds.get("dynakubes.dynatrace.com").await.unwrap()));

    helm_in_cluster(&[
        "upgrade",
        "dynatrace-operator",
        &current,
        "--wait",
        "--timeout",
        "120s",
    ]);
    assert!(
        !marked(&crds.get("dynakubes.dynatrace.com").await.unwrap()),
        "the upgrade did not apply the current chart's CRD"
    );
    assert!(
        dynakubes.get_opt("dynakube").await.unwrap().is_some(),
        "the upgrade lost the DynaKube"
    );
    assert!(validating.get_opt("dynatrace-webhook").await.unwrap().is_some());

    helm_in_cluster(&["uninstall", "dynatrace-operator", "--wait"]);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace.name);
    assert!(deployments.get_opt("dynatrace-operator").await.unwrap().is_none());
    assert!(validating.get_opt("dynatrace-webhook").await.unwrap().is_none());
    assert!(crds.get_opt("oneagents.dynatrace.com").await.unwrap().is_some());
    assert!(
        dynakubes.get_opt("dynakube").await.unwrap().is_some(),
        "helm uninstall removed the DynaKube"
    );
    std::fs::remove_dir_all(&previous).unwrap();
}
