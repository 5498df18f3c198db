//! Plain-value tests of every decision and every field, and JSON snapshots of the mutated pod per mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::core::v1::{Container, Pod};
use pure_desired::mapping::INSTANCE_LABEL;
use serde_json::json;

use crate::names::*;
use crate::test_support::*;
use crate::{EventTarget, EventType, PodResult, Skip};

const FF: &str = "feature.dynatrace.com/";

fn app_monitoring() -> pure_api::dynakube::DynaKube {
    dynakube("dk", json!({ "applicationMonitoring": {} }))
}

fn with_flags(mut dk: pure_api::dynakube::DynaKube, flags: &[(&str, &str)]) -> pure_api::dynakube::DynaKube {
    let annotations = dk.metadata.annotations.get_or_insert_with(Default::default);
    for (k, v) in flags {
        annotations.insert(format!("{FF}{k}"), (*v).to_owned());
    }
    dk
}

fn annotated(mut pod: Pod, annotations: &[(&str, &str)]) -> Pod {
    pod.metadata.annotations = Some(map(annotations));
    pod
}

fn skipped(facts: &Facts, pod: &Pod) -> (Skip, Vec<crate::EventSpec>) {
    let (outcome, _) = facts.mutate(pod);
    assert!(outcome.patch.0.is_empty(), "no patch when skipped");
    match outcome.result {
        PodResult::Unchanged(skip) => (skip, outcome.events),
        other => panic!("expected a skip, got {other:?}"),
    }
}

fn injected(facts: &Facts, pod: &Pod) -> (crate::PodOutcome, Pod) {
    let (outcome, after) = facts.mutate(pod);
    assert_eq!(outcome.result, PodResult::Injected, "{:?}", outcome.events);
    (outcome, after)
}

#[test]
fn skips_and_their_events() {
    let pod = app_pod();
    let mut facts = Facts::new(app_monitoring(), false);

    facts.labels.clear();
    assert_eq!(skipped(&facts, &pod), (Skip::NamespaceNotMapped, vec![]));
    facts.labels = map(&[(INSTANCE_LABEL, "dk")]);

    facts.dynakube = None;
    let (skip, events) = skipped(&facts, &pod);
    assert_eq!(skip, Skip::DynaKubeMissing { name: "dk".into() });
    assert!(skip.is_failure());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].type_, EventType::Warning);
    assert_eq!(events[0].reason, "DynaKubeMissing");
    assert_eq!(events[0].regarding, EventTarget::Namespace("shop".into()));
    assert!(
        events[0].message.contains("pod web-7d9f5c-<generated>")
            && events[0].message.contains("DynaKube dk, which does not exist"),
        "{}",
        events[0].message
    );

    facts.dynakube = Some(dynakube("dk", json!({ "classicFullStack": {} })));
    let (skip, events) = skipped(&facts, &pod);
    assert_eq!(skip, Skip::DynaKubeNotInjecting { name: "dk".into() });
    assert_eq!(events[0].reason, "DynaKubeNotInjecting");
    facts.dynakube = Some(app_monitoring());

    for value in ["false", "0", "F", "FALSE", "False", "f"] {
        let pod = annotated(app_pod(), &[(ANNOTATION_INJECT, value)]);
        assert_eq!(
            skipped(&facts, &pod),
            (Skip::InjectionDisabled, vec![]),
            "{value}"
        );
    }
    let pod = annotated(app_pod(), &[(ANNOTATION_INJECT, "maybe")]);
    injected(&facts, &pod);

    let debug = annotated(
        app_pod(),
        &[
            (ANNOTATION_OPENSHIFT_DEBUG_CONTAINER, "app"),
            (ANNOTATION_OPENSHIFT_DEBUG_RESOURCE, "pods/web"),
        ],
    );
    assert_eq!(skipped(&facts, &debug), (Skip::OpenShiftDebugPod, vec![]));
    injected(
        &facts,
        &annotated(app_pod(), &[(ANNOTATION_OPENSHIFT_DEBUG_CONTAINER, "app")]),
    );

    let empty = pod_json(json!({ "metadata": { "name": "p" }, "spec": { "containers": [] } }));
    assert_eq!(skipped(&facts, &empty).0, Skip::NoContainers);

    let opted_out = annotated(
        app_pod(),
        &[
            (ANNOTATION_ONEAGENT_INJECT, "false"),
            (ANNOTATION_DATA_INGEST_INJECT, "false"),
        ],
    );
    assert_eq!(skipped(&facts, &opted_out), (Skip::NotOptedIn, vec![]));

    facts.init_secret = false;
    let (skip, events) = skipped(&facts, &app_pod());
    assert_eq!(skip, Skip::InitSecretMissing);
    assert!(
        events[0].message.contains("dynatrace-dynakube-config"),
        "{}",
        events[0].message
    );
    facts.init_secret = true;

    let mut no_hosts = app_monitoring();
    no_hosts.status.as_mut().unwrap().one_agent = None;
    facts.dynakube = Some(no_hosts);
    assert_eq!(skipped(&facts, &app_pod()).0, Skip::EmptyConnectionInfo);
    facts.dynakube = Some(app_monitoring());

    facts.enrichment_secret = false;
    let enrichment_only = annotated(app_pod(), &[(ANNOTATION_ONEAGENT_INJECT, "false")]);
    let (skip, events) = skipped(&facts, &enrichment_only);
    assert_eq!(skip, Skip::EnrichmentSecretMissing);
    assert_eq!(events[0].reason, "EnrichmentSecretMissing");
    // With the code module the pod is injected, without enrichment, and the warning says so.
    let (outcome, after) = injected(&facts, &app_pod());
    assert_eq!(env(init(&after), env::DATA_INGEST_INJECTED), None);
    assert!(!volume_names(&after).contains(&VOLUME_DATA_INGEST_ENDPOINT.to_owned()));
    assert_eq!(
        outcome.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["EnrichmentSecretMissing", "Inject"]
    );
    facts.enrichment_secret = true;

    // Failure or choice.
    for (skip, failure) in [
        (Skip::NamespaceNotMapped, false),
        (Skip::InjectionDisabled, false),
        (Skip::OpenShiftDebugPod, false),
        (Skip::AlreadyInjected, false),
        (Skip::NotOptedIn, false),
        (Skip::NoContainers, false),
        (Skip::InitSecretMissing, true),
        (Skip::EmptyConnectionInfo, true),
        (Skip::EnrichmentSecretMissing, true),
    ] {
        assert_eq!(skip.is_failure(), failure, "{skip:?}");
    }
}

fn pod_json(value: serde_json::Value) -> Pod {
    pod(value)
}

#[test]
fn per_pod_opt_in_and_opt_out() {
    let facts = Facts::new(
        with_flags(app_monitoring(), &[("automatic-injection", "false")]),
        false,
    );
    assert_eq!(skipped(&facts, &app_pod()).0, Skip::NotOptedIn);
    let (_, after) = injected(
        &facts,
        &annotated(app_pod(), &[(ANNOTATION_ONEAGENT_INJECT, "true")]),
    );
    assert_eq!(env(init(&after), env::ONEAGENT_INJECTED), Some("true"));
    assert_eq!(env(init(&after), env::DATA_INGEST_INJECTED), None);

    let facts = Facts::new(app_monitoring(), false);
    let (_, after) = injected(
        &facts,
        &annotated(app_pod(), &[(ANNOTATION_ONEAGENT_INJECT, "false")]),
    );
    assert_eq!(env(init(&after), env::ONEAGENT_INJECTED), None);
    assert_eq!(env(init(&after), env::DATA_INGEST_INJECTED), Some("true"));
    assert_eq!(
        volume_names(&after),
        [VOLUME_DATA_INGEST_ENDPOINT, VOLUME_DATA_INGEST_ENRICHMENT]
    );
    let annotations = after.metadata.annotations.clone().unwrap();
    assert_eq!(annotations.get(ANNOTATION_ONEAGENT_INJECTED), None);
    assert_eq!(
        annotations
            .get(ANNOTATION_DATA_INGEST_INJECTED)
            .map(String::as_str),
        Some("true")
    );

    let facts = Facts::new(
        with_flags(app_monitoring(), &[("metadata-enrichment", "false")]),
        false,
    );
    let (_, after) = injected(&facts, &app_pod());
    assert_eq!(env(init(&after), env::DATA_INGEST_INJECTED), None);
    assert_eq!(
        skipped(
            &facts,
            &annotated(app_pod(), &[(ANNOTATION_ONEAGENT_INJECT, "false")])
        )
        .0,
        Skip::NotOptedIn
    );
}

#[test]
fn installer_mode_field_by_field() {
    let facts = Facts::new(app_monitoring(), false);
    let (outcome, after) = injected(&facts, &app_pod());
    let init = init(&after);
    assert_eq!(init_containers(&after).len(), 1);
    assert_eq!(
        init.image.as_deref(),
        Some("registry.example.com/dynatrace-operator:1.0.0")
    );
    assert_eq!(init.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(init.args, Some(vec!["init".to_owned()]));
    assert_eq!(init.resources, None, "no default resources without CSI");
    let e = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        env_pairs(init),
        e(&[
            ("FAILURE_POLICY", "silent"),
            ("K8S_PODNAME", "<from>"),
            ("K8S_PODUID", "<from>"),
            ("K8S_BASEPODNAME", "web-7d9f5c"),
            ("K8S_CLUSTER_ID", "cluster-uid"),
            ("K8S_NAMESPACE", "<from>"),
            ("K8S_NODE_NAME", "<from>"),
            ("FLAVOR", ""),
            ("TECHNOLOGIES", "all"),
            ("INSTALLPATH", "/opt/dynatrace/oneagent-paas"),
            ("INSTALLER_URL", ""),
            ("VERSION", "1.277.0.20230914-094321"),
            ("MODE", "installer"),
            ("CSI_VOLUME_READONLY", "false"),
            ("ONEAGENT_INJECTED", "true"),
            ("CONTAINERS_COUNT", "1"),
            ("CONTAINER_1_NAME", "app"),
            ("CONTAINER_1_IMAGE", "registry.example.com/shop/web:1.2"),
            ("DT_WORKLOAD_KIND", "Deployment"),
            ("DT_WORKLOAD_NAME", "web"),
            ("DATA_INGEST_INJECTED", "true"),
        ])
    );
    let fields: Vec<String> = init
        .env
        .iter()
        .flatten()
        .filter_map(|v| Some(v.value_from.clone()?.field_ref?.field_path))
        .collect();
    assert_eq!(
        fields,
        [
            "metadata.name",
            "metadata.uid",
            "metadata.namespace",
            "spec.nodeName"
        ]
    );
    let m = |triples: &[(&str, &str, Option<&str>)]| -> Vec<(String, String, Option<String>)> {
        triples
            .iter()
            .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), c.map(str::to_owned)))
            .collect()
    };
    assert_eq!(
        mounts(init),
        m(&[
            ("oneagent-bin", "/mnt/bin", None),
            ("oneagent-share", "/mnt/share", None),
            ("injection-config", "/mnt/config", None),
            ("data-ingest-enrichment", "/var/lib/dynatrace/enrichment", None),
        ])
    );
    let app = container(&after, "app");
    assert_eq!(
        mounts(app),
        m(&[
            ("oneagent-share", "/etc/ld.so.preload", Some("ld.so.preload")),
            ("oneagent-bin", "/opt/dynatrace/oneagent-paas", None),
            (
                "oneagent-share",
                "/var/lib/dynatrace/oneagent/agent/config/container.conf",
                Some("container_app.conf")
            ),
            ("data-ingest-enrichment", "/var/lib/dynatrace/enrichment", None),
            (
                "data-ingest-endpoint",
                "/var/lib/dynatrace/enrichment/endpoint",
                None
            ),
        ])
    );
    assert_eq!(
        env_pairs(app),
        e(&[
            (
                "DT_DEPLOYMENT_METADATA",
                &format!(
                    "orchestration_tech=Operator-application_monitoring;script_version={};orchestrator_id=cluster-uid",
                    crate::OPERATOR_VERSION
                )
            ),
            (
                "LD_PRELOAD",
                "/opt/dynatrace/oneagent-paas/agent/lib64/liboneagentproc.so"
            ),
        ])
    );
    assert_eq!(
        volume_names(&after),
        [
            "injection-config",
            "oneagent-bin",
            "oneagent-share",
            "data-ingest-endpoint",
            "data-ingest-enrichment"
        ]
    );
    let volumes = after.spec.as_ref().unwrap().volumes.clone().unwrap();
    assert!(volumes[1].empty_dir.is_some() && volumes[1].csi.is_none());
    assert_eq!(
        volumes[0].secret.as_ref().unwrap().secret_name.as_deref(),
        Some("dynatrace-dynakube-config")
    );
    assert_eq!(
        volumes[3].secret.as_ref().unwrap().secret_name.as_deref(),
        Some("dynatrace-data-ingest-endpoint")
    );
    assert_eq!(
        after.metadata.annotations,
        Some(map(&[
            (ANNOTATION_ONEAGENT_INJECTED, "true"),
            (ANNOTATION_DATA_INGEST_INJECTED, "true"),
            (ANNOTATION_DYNAKUBE_INJECTED, "true"),
        ]))
    );
    assert_eq!(outcome.events.len(), 1);
    assert_eq!(outcome.events[0].type_, EventType::Normal);
    assert_eq!(outcome.events[0].reason, "Inject");
    assert_eq!(
        outcome.events[0].regarding,
        EventTarget::DynaKube {
            namespace: "dynatrace".into(),
            name: "dk".into()
        }
    );
    assert!(outcome.events[0].message.contains("namespace shop"));
}

#[test]
fn csi_mode_and_its_fallback() {
    for one_agent in [
        json!({ "applicationMonitoring": { "useCSIDriver": true } }),
        json!({ "cloudNativeFullStack": {} }),
    ] {
        let facts = Facts::new(dynakube("dk", one_agent.clone()), true);
        let (outcome, after) = injected(&facts, &app_pod());
        let bin = after.spec.as_ref().unwrap().volumes.as_ref().unwrap()[1].clone();
        let csi = bin.csi.expect("a CSI volume");
        assert_eq!(csi.driver, "csi.oneagent.dynatrace.com");
        assert_eq!(csi.read_only, Some(false));
        assert_eq!(
            csi.volume_attributes,
            Some(map(&[("mode", "app"), ("dynakube", "dk")]))
        );
        let init_container = init(&after);
        assert_eq!(env(init_container, env::MODE), Some("provisioned"));
        let resources = init_container
            .resources
            .clone()
            .expect("default resources with CSI");
        let q = |m: Option<
            std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >,
                 k: &str| m.unwrap()[k].0.clone();
        assert_eq!(q(resources.requests.clone(), "cpu"), "30m");
        assert_eq!(q(resources.requests, "memory"), "30Mi");
        assert_eq!(q(resources.limits.clone(), "cpu"), "100m");
        assert_eq!(q(resources.limits, "memory"), "60Mi");
        assert_eq!(outcome.events.len(), 1, "{one_agent}");

        // Without the driver: installer mode, a warning on the DynaKube.
        let facts = Facts::new(dynakube("dk", one_agent), false);
        let (outcome, after) = injected(&facts, &app_pod());
        assert_eq!(env(init(&after), env::MODE), Some("installer"));
        assert!(
            after.spec.as_ref().unwrap().volumes.as_ref().unwrap()[1]
                .empty_dir
                .is_some()
        );
        assert_eq!(init(&after).resources, None);
        let warning = &outcome.events[0];
        assert_eq!(
            (warning.type_, warning.reason),
            (EventType::Warning, "CSIDriverMissing")
        );
        assert!(matches!(warning.regarding, EventTarget::DynaKube { .. }));
    }
    // applicationMonitoring without useCSIDriver (v1beta3 and later, or v1beta1 without the field)
    // follows the driver: CSI when it is installed, else installer mode without a warning.
    let facts = Facts::new(app_monitoring(), true);
    let (outcome, after) = injected(&facts, &app_pod());
    assert_eq!(env(init(&after), env::MODE), Some("provisioned"));
    assert!(
        after.spec.as_ref().unwrap().volumes.as_ref().unwrap()[1]
            .csi
            .is_some()
    );
    assert_eq!(outcome.events.len(), 1);
    let facts = Facts::new(app_monitoring(), false);
    let (outcome, after) = injected(&facts, &app_pod());
    assert_eq!(env(init(&after), env::MODE), Some("installer"));
    assert_eq!(
        outcome.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["Inject"],
        "no CSIDriverMissing warning when CSI is optional"
    );
    // useCSIDriver: false never uses CSI, driver or not.
    let never = dynakube(
        "dk",
        json!({ "applicationMonitoring": { "useCSIDriver": false } }),
    );
    let (outcome, after) = injected(&Facts::new(never, true), &app_pod());
    assert_eq!(env(init(&after), env::MODE), Some("installer"));
    assert_eq!(outcome.events.len(), 1);
}

/// applicationMonitoring with an injection selector and an enrichment selector of its own.
fn split_selectors(enabled: Option<bool>) -> pure_api::dynakube::DynaKube {
    let mut dk = app_monitoring();
    dk.spec.namespace_selector =
        serde_json::from_value(json!({ "matchLabels": { "inject": "yes" } })).unwrap();
    dk.spec.metadata_enrichment = serde_json::from_value(json!({
        "enabled": enabled,
        "namespaceSelector": { "matchLabels": { "enrich": "yes" } },
    }))
    .unwrap();
    dk
}

/// Whether the pod got the code module and enrichment.
fn parts(after: &Pod) -> (bool, bool) {
    let init = init(after);
    let oneagent = env(init, env::ONEAGENT_INJECTED) == Some("true");
    let enrichment = env(init, env::DATA_INGEST_INJECTED) == Some("true");
    let volumes = volume_names(after);
    assert_eq!(
        volumes.contains(&VOLUME_ONEAGENT_BIN.to_owned()),
        oneagent,
        "{volumes:?}"
    );
    assert_eq!(
        volumes.contains(&VOLUME_DATA_INGEST_ENDPOINT.to_owned()),
        enrichment,
        "{volumes:?}"
    );
    let app = container(after, "app");
    assert_eq!(
        env(app, "LD_PRELOAD").is_some() || mounts(app).iter().any(|m| m.1 == "/etc/ld.so.preload"),
        oneagent,
        "{:?}",
        mounts(app)
    );
    (oneagent, enrichment)
}

#[test]
fn each_part_follows_its_namespace_selector() {
    let mut facts = Facts::new(split_selectors(None), false);
    let label = (INSTANCE_LABEL, "dk");
    for (labels, expected) in [
        (vec![label, ("inject", "yes")], (true, false)),
        (vec![label, ("enrich", "yes")], (false, true)),
        (vec![label, ("inject", "yes"), ("enrich", "yes")], (true, true)),
    ] {
        facts.labels = map(&labels);
        let (outcome, after) = injected(&facts, &app_pod());
        assert_eq!(parts(&after), expected, "{labels:?}");
        if !expected.0 {
            // Without the code module the init Secret and connection info are not needed.
            let mut no_init_secret = facts.clone();
            no_init_secret.init_secret = false;
            injected(&no_init_secret, &app_pod());
            assert!(outcome.events[0].message.contains("metadata enrichment"));
        }
    }
    // Labelled, but neither selector selects it (the operator removes the label).
    facts.labels = map(&[label]);
    assert_eq!(skipped(&facts, &app_pod()), (Skip::NotSelected, vec![]));
    assert!(!Skip::NotSelected.is_failure());

    // Enrichment off: an enrichment-only namespace gets nothing, a both namespace only the code module.
    let mut facts = Facts::new(split_selectors(Some(false)), false);
    facts.labels = map(&[label, ("enrich", "yes")]);
    assert_eq!(skipped(&facts, &app_pod()).0, Skip::NotSelected);
    facts.labels = map(&[label, ("inject", "yes"), ("enrich", "yes")]);
    let (_, after) = injected(&facts, &app_pod());
    assert_eq!(parts(&after), (true, false));
}

/// classicFullStack and hostMonitoring DynaKubes enrich the pods of the namespaces their enrichment
/// selector selects, and never inject code modules (their OneAgent runs on the host); without the
/// selector they claim nothing.
#[test]
fn enrichment_only_modes_enrich_and_never_inject() {
    let label = (INSTANCE_LABEL, "dk");
    for mode in ["classicFullStack", "hostMonitoring"] {
        let mut dk = dynakube("dk", json!({ mode: {} }));
        let plain = Facts::new(dk.clone(), false);
        assert!(
            matches!(skipped(&plain, &app_pod()).0, Skip::DynaKubeNotInjecting { .. }),
            "{mode}"
        );

        dk.spec.metadata_enrichment = serde_json::from_value(json!({
            "namespaceSelector": { "matchLabels": { "enrich": "yes" } },
        }))
        .unwrap();
        let mut facts = Facts::new(dk, true);
        facts.labels = map(&[label, ("enrich", "yes")]);
        // No init Secret is written for these modes: enrichment does not need it.
        facts.init_secret = false;
        let (_, after) = injected(&facts, &app_pod());
        assert_eq!(parts(&after), (false, true), "{mode}");

        facts.labels = map(&[label]);
        assert_eq!(skipped(&facts, &app_pod()).0, Skip::NotSelected, "{mode}");
    }
}

#[test]
fn the_metadata_enrichment_field_wins_over_the_flag() {
    let mut off = with_flags(app_monitoring(), &[("metadata-enrichment", "true")]);
    off.spec.metadata_enrichment = serde_json::from_value(json!({ "enabled": false })).unwrap();
    let (_, after) = injected(&Facts::new(off, false), &app_pod());
    assert_eq!(parts(&after), (true, false));
    let mut on = with_flags(app_monitoring(), &[("metadata-enrichment", "false")]);
    on.spec.metadata_enrichment = serde_json::from_value(json!({ "enabled": true })).unwrap();
    let (_, after) = injected(&Facts::new(on, false), &app_pod());
    assert_eq!(parts(&after), (true, true));
    // Without the field, the flag still decides.
    let flag_off = with_flags(app_monitoring(), &[("metadata-enrichment", "false")]);
    let (_, after) = injected(&Facts::new(flag_off, false), &app_pod());
    assert_eq!(parts(&after), (true, false));
}

/// A namespace labelled for a DynaKube whose selector is invalid stays as it is: both parts, as the
/// mapping keeps the label.
#[test]
fn an_invalid_selector_keeps_injecting_the_labelled_namespace() {
    let mut dk = split_selectors(None);
    dk.spec.metadata_enrichment = serde_json::from_value(json!({
        "namespaceSelector": { "matchExpressions": [{ "key": "enrich", "operator": "Equals" }] },
    }))
    .unwrap();
    let facts = Facts::new(dk, false);
    let (_, after) = injected(&facts, &app_pod());
    assert_eq!(parts(&after), (true, true));
}

#[test]
fn init_resources_from_the_dynakube() {
    let dk = dynakube(
        "dk",
        json!({ "cloudNativeFullStack": { "initResources": { "limits": { "cpu": "1" } } } }),
    );
    let facts = Facts::new(dk, true);
    let (_, after) = injected(&facts, &app_pod());
    let resources = init(&after).resources.clone().unwrap();
    assert_eq!(resources.requests, None);
    assert_eq!(resources.limits.unwrap()["cpu"].0, "1");
}

#[test]
fn readonly_csi_follows_the_install_path() {
    let dk = with_flags(
        dynakube("dk", json!({ "cloudNativeFullStack": {} })),
        &[("injection-readonly-volume", "true")],
    );
    let facts = Facts::new(dk, true);
    let pod = annotated(app_pod(), &[(ANNOTATION_INSTALL_PATH, "/opt/custom/")]);
    let (_, after) = injected(&facts, &pod);
    assert_eq!(
        volume_names(&after)[..6],
        [
            "injection-config",
            "oneagent-bin",
            "oneagent-share",
            "oneagent-agent-conf",
            "oneagent-data-storage",
            "oneagent-log"
        ]
    );
    let volumes = after.spec.as_ref().unwrap().volumes.clone().unwrap();
    assert_eq!(volumes[1].csi.as_ref().unwrap().read_only, Some(true));
    let init = init(&after);
    assert_eq!(env(init, env::CSI_VOLUME_READONLY), Some("true"));
    assert_eq!(env(init, env::INSTALLPATH), Some("/opt/custom/"));
    assert!(mounts(init).contains(&("oneagent-agent-conf".into(), "/mnt/agent-conf".into(), None)));
    let app = mounts(container(&after, "app"));
    for (volume, path) in [
        ("oneagent-bin", "/opt/custom/"),
        ("oneagent-agent-conf", "/opt/custom/agent/conf"),
        ("oneagent-data-storage", "/opt/custom/datastorage"),
        ("oneagent-log", "/opt/custom/log"),
    ] {
        assert!(
            app.contains(&(volume.into(), path.into(), None)),
            "{volume} at {path}: {app:?}"
        );
    }
    assert_eq!(
        env(container(&after, "app"), env::LD_PRELOAD),
        Some("/opt/custom/agent/lib64/liboneagentproc.so")
    );
    // The flag without CSI changes nothing.
    let facts = Facts::new(
        with_flags(
            dynakube(
                "dk",
                json!({ "applicationMonitoring": { "useCSIDriver": false } }),
            ),
            &[("injection-readonly-volume", "true")],
        ),
        true,
    );
    let (_, after) = injected(&facts, &app_pod());
    assert_eq!(
        env(init_containers(&after).last().unwrap(), env::CSI_VOLUME_READONLY),
        Some("false")
    );
}

#[test]
fn ld_preload_is_appended_never_replaced() {
    let lib = "/opt/dynatrace/oneagent-paas/agent/lib64/liboneagentproc.so";
    let cases: [(serde_json::Value, Option<String>); 6] = [
        (json!({ "name": "LD_PRELOAD", "value": "" }), Some(lib.to_owned())),
        (
            json!({ "name": "LD_PRELOAD", "value": "/lib/a.so" }),
            Some(format!("/lib/a.so:{lib}")),
        ),
        (
            json!({ "name": "LD_PRELOAD", "value": "/lib/a.so /lib/b.so" }),
            Some(format!("/lib/a.so /lib/b.so {lib}")),
        ),
        (
            json!({ "name": "LD_PRELOAD", "value": format!("{lib}:/lib/a.so") }),
            Some(format!("{lib}:/lib/a.so")),
        ),
        (
            json!({ "name": "LD_PRELOAD", "valueFrom": { "configMapKeyRef": { "name": "c", "key": "k" } } }),
            None,
        ),
        (json!({ "name": "OTHER", "value": "x" }), Some(lib.to_owned())),
    ];
    let facts = Facts::new(app_monitoring(), false);
    for (var, expected) in cases {
        let pod = pod(json!({
            "metadata": { "name": "p" },
            "spec": { "containers": [{ "name": "app", "image": "i", "env": [var.clone()] }] }
        }));
        let (_, after) = injected(&facts, &pod);
        let app = container(&after, "app");
        let preloads: Vec<_> = app
            .env
            .iter()
            .flatten()
            .filter(|v| v.name == "LD_PRELOAD")
            .collect();
        assert_eq!(preloads.len(), 1, "{var}");
        assert_eq!(preloads[0].value, expected, "{var}");
    }
}

#[test]
fn network_zone_certificate_and_curl_options() {
    let mut dk = with_flags(
        dynakube("dk", json!({ "cloudNativeFullStack": {} })),
        &[("oneagent-initial-connect-retry-ms", "6000")],
    );
    dk.spec.network_zone = Some("eu-west".into());
    dk.spec.active_gate = serde_json::from_value(json!({ "tlsSecretName": "ag-tls" })).unwrap();
    let facts = Facts::new(dk, true);
    let pod = pod(json!({
        "metadata": { "name": "p" },
        "spec": { "containers": [
            { "name": "a", "image": "i" },
            { "name": "b", "image": "j", "env": [{ "name": "DT_NETWORK_ZONE", "value": "mine" }] }
        ] }
    }));
    let (_, after) = injected(&facts, &pod);
    assert_eq!(env(container(&after, "a"), env::DT_NETWORK_ZONE), Some("eu-west"));
    assert_eq!(
        env(container(&after, "b"), env::DT_NETWORK_ZONE),
        Some("mine"),
        "the container's own zone wins"
    );
    let a = mounts(container(&after, "a"));
    assert!(a.contains(&(
        "oneagent-share".into(),
        CUSTOM_PEM_PATH.into(),
        Some("custom.pem".into())
    )));
    assert!(a.contains(&(
        "oneagent-share".into(),
        CURL_OPTIONS_PATH.into(),
        Some("curl_options.conf".into())
    )));
    // Neither without the settings (and no zone variable).
    let facts = Facts::new(
        with_flags(app_monitoring(), &[("oneagent-initial-connect-retry-ms", "0")]),
        false,
    );
    let (_, after) = injected(&facts, &pod);
    let a = container(&after, "a");
    assert_eq!(env(a, env::DT_NETWORK_ZONE), None);
    assert!(!mounts(a).iter().any(|(_, path, _)| path.contains("customkeys")));
}

#[test]
fn label_version_detection() {
    let dk = with_flags(app_monitoring(), &[("label-version-detection", "true")]);
    let mut facts = Facts::new(dk, false);
    let pod = pod(json!({
        "metadata": { "name": "p" },
        "spec": { "containers": [{ "name": "a", "image": "i",
            "env": [{ "name": "DT_RELEASE_PRODUCT", "value": "mine" }] }] }
    }));
    let fields = |after: &Pod| -> Vec<(String, String)> {
        container(after, "a")
            .env
            .iter()
            .flatten()
            .filter(|v| v.name.starts_with("DT_RELEASE_"))
            .map(|v| {
                let path = v
                    .value_from
                    .as_ref()
                    .and_then(|f| f.field_ref.as_ref())
                    .map_or_else(
                        || format!("={}", v.value.clone().unwrap_or_default()),
                        |f| f.field_path.clone(),
                    );
                (v.name.clone(), path)
            })
            .collect()
    };
    let (_, after) = injected(&facts, &pod);
    assert_eq!(
        fields(&after),
        [
            ("DT_RELEASE_PRODUCT".to_owned(), "=mine".to_owned()),
            (
                "DT_RELEASE_VERSION".to_owned(),
                "metadata.labels['app.kubernetes.io/version']".to_owned()
            ),
        ]
    );
    facts.annotations = map(&[
        (
            "mapping.release.dynatrace.com/version",
            "metadata.labels['my-version']",
        ),
        (
            "mapping.release.dynatrace.com/stage",
            "metadata.annotations['stage']",
        ),
        (
            "mapping.release.dynatrace.com/build-version",
            "spec.containers[0].image",
        ),
    ]);
    let (_, after) = injected(&facts, &pod);
    assert_eq!(
        fields(&after),
        [
            ("DT_RELEASE_PRODUCT".to_owned(), "=mine".to_owned()),
            (
                "DT_RELEASE_VERSION".to_owned(),
                "metadata.labels['my-version']".to_owned()
            ),
            (
                "DT_RELEASE_STAGE".to_owned(),
                "metadata.annotations['stage']".to_owned()
            ),
        ],
        "an unsupported field path is left out: the API server would reject the pod"
    );
    // Off by default.
    let facts = Facts::new(app_monitoring(), false);
    let (_, after) = injected(&facts, &pod);
    assert_eq!(
        fields(&after),
        [("DT_RELEASE_PRODUCT".to_owned(), "=mine".to_owned())]
    );
}

#[test]
fn annotations_reach_the_init_container() {
    let facts = Facts::new(
        with_flags(app_monitoring(), &[("injection-failure-policy", "fail")]),
        false,
    );
    let (_, after) = injected(&facts, &app_pod());
    assert_eq!(env(init(&after), env::FAILURE_POLICY), Some("fail"));
    let pod = annotated(
        app_pod(),
        &[
            (ANNOTATION_FAILURE_POLICY, "silent"),
            (ANNOTATION_FLAVOR, "musl"),
            (ANNOTATION_TECHNOLOGIES, "java,nodejs go"),
            (ANNOTATION_INSTALLER_URL, "https://example.com/agent.zip"),
        ],
    );
    let (_, after) = injected(&facts, &pod);
    let init = init(&after);
    assert_eq!(env(init, env::FAILURE_POLICY), Some("silent"));
    assert_eq!(env(init, env::FLAVOR), Some("musl"));
    assert_eq!(env(init, env::TECHNOLOGIES), Some("java%2Cnodejs+go"));
    assert_eq!(
        env(init, env::INSTALLER_URL),
        Some("https://example.com/agent.zip")
    );
}

#[test]
fn base_pod_names() {
    for (name, generate, base) in [
        (None, Some("web-7d9f-"), "web-7d9f"),
        (Some("web-7d9f-abcde"), Some("web-7d9f-"), "web-7d9f"),
        (Some("single"), None, "single"),
        (Some(""), Some("job-"), "job"),
        (None, None, ""),
    ] {
        let mut pod = app_pod();
        pod.metadata.name = name.map(str::to_owned);
        pod.metadata.generate_name = generate.map(str::to_owned);
        assert_eq!(crate::init::base_pod_name(&pod), base, "{name:?} {generate:?}");
    }
}

#[test]
fn security_context_from_pod_then_first_container() {
    let facts = Facts::new(app_monitoring(), false);
    let context = |pod: &Pod| init(&facts.mutate(pod).1).security_context.clone().unwrap();
    let sc = context(&app_pod());
    assert_eq!(sc.run_as_user, Some(1001));
    assert_eq!(sc.run_as_group, Some(1001));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(sc.seccomp_profile, None, "off by default, as the reference");

    let pod = pod(json!({
        "metadata": { "name": "p" },
        "spec": {
            "securityContext": { "runAsUser": 2000, "runAsGroup": 3000 },
            "containers": [
                { "name": "a", "image": "i", "securityContext": { "runAsUser": 4000 } },
                { "name": "b", "image": "i", "securityContext": { "runAsGroup": 5000 } }
            ]
        }
    }));
    let sc = context(&pod);
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(4000), Some(3000)));

    let root = pod_json(json!({
        "metadata": { "name": "p" },
        "spec": { "securityContext": { "runAsUser": 0 }, "containers": [{ "name": "a", "image": "i" }] }
    }));
    assert_eq!(context(&root).run_as_non_root, Some(false));
    let group_zero = pod_json(json!({
        "metadata": { "name": "p" },
        "spec": { "securityContext": { "runAsGroup": 0 }, "containers": [{ "name": "a", "image": "i" }] }
    }));
    assert_eq!(
        context(&group_zero).run_as_non_root,
        Some(true),
        "group 0 is not root (the reference said false)"
    );

    let flagged = Facts::new(
        with_flags(app_monitoring(), &[("init-container-seccomp-profile", "true")]),
        false,
    );
    let sc = init(&flagged.mutate(&app_pod()).1)
        .security_context
        .clone()
        .unwrap();
    assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
}

/// The Pod Security Standard `restricted` (Kubernetes 1.25+), checked on every container including
/// init containers: the violations, empty when the pod is admissible.
pub(crate) fn restricted_violations(pod: &Pod) -> Vec<String> {
    let mut violations = Vec::new();
    let spec = pod.spec.as_ref().unwrap();
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    for (what, set) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ] {
        if set == Some(true) {
            violations.push(format!("pod: {what}"));
        }
    }
    const ALLOWED_VOLUMES: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in spec.volumes.iter().flatten() {
        let json = serde_json::to_value(volume).unwrap();
        for key in json.as_object().unwrap().keys().filter(|k| *k != "name") {
            if !ALLOWED_VOLUMES.contains(&key.as_str()) {
                violations.push(format!("volume {}: type {key}", volume.name));
            }
        }
    }
    if pod_sc.run_as_user == Some(0) {
        violations.push("pod: runAsUser 0".into());
    }
    let pod_seccomp = pod_sc.seccomp_profile.as_ref().map(|p| p.type_.clone());
    if pod_seccomp.as_deref() == Some("Unconfined") {
        violations.push("pod: seccomp Unconfined".into());
    }
    let containers: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    for c in containers {
        let sc = c.security_context.clone().unwrap_or_default();
        let name = &c.name;
        if sc.privileged == Some(true) {
            violations.push(format!("{name}: privileged"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            violations.push(format!("{name}: allowPrivilegeEscalation must be false"));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            violations.push(format!("{name}: must drop ALL capabilities"));
        }
        if caps.add.iter().flatten().any(|a| a != "NET_BIND_SERVICE") {
            violations.push(format!("{name}: adds capabilities"));
        }
        let non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root);
        if sc.run_as_non_root == Some(false) || non_root != Some(true) {
            violations.push(format!("{name}: runAsNonRoot must be true"));
        }
        if sc.run_as_user == Some(0) {
            violations.push(format!("{name}: runAsUser 0"));
        }
        let seccomp = sc
            .seccomp_profile
            .as_ref()
            .map(|p| p.type_.clone())
            .or(pod_seccomp.clone());
        if !matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")) {
            violations.push(format!(
                "{name}: seccomp profile must be RuntimeDefault or Localhost"
            ));
        }
        if c.ports
            .iter()
            .flatten()
            .any(|p| p.host_port.is_some_and(|h| h != 0))
        {
            violations.push(format!("{name}: hostPort"));
        }
    }
    violations
}

/// Pods that pass `restricted` in the three ways users write them.
pub(crate) fn restricted_pods() -> Vec<Pod> {
    let hardened = json!({ "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } });
    vec![
        // Pod-level: non-root and seccomp for every container.
        pod(json!({
            "metadata": { "name": "pod-level" },
            "spec": {
                "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
                "containers": [{ "name": "a", "image": "i", "securityContext": hardened }]
            }
        })),
        // Container-level only, group 0 (allowed by restricted).
        pod(json!({
            "metadata": { "name": "container-level" },
            "spec": { "containers": [
                { "name": "a", "image": "i", "securityContext": {
                    "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] },
                    "runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 0,
                    "seccompProfile": { "type": "RuntimeDefault" } } },
                { "name": "b", "image": "j", "securityContext": {
                    "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"], "add": ["NET_BIND_SERVICE"] },
                    "runAsNonRoot": true, "seccompProfile": { "type": "Localhost", "localhostProfile": "p.json" } } }
            ] }
        })),
        // Mixed: user at pod level, seccomp in the container.
        pod(json!({
            "metadata": { "name": "mixed" },
            "spec": {
                "securityContext": { "runAsNonRoot": true, "runAsUser": 2000, "runAsGroup": 0 },
                "containers": [{ "name": "a", "image": "i", "securityContext": {
                    "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] },
                    "seccompProfile": { "type": "RuntimeDefault" } } }]
            }
        })),
    ]
}

#[test]
fn injected_restricted_pods_stay_restricted() {
    let modes = [
        (app_monitoring(), false),
        (
            dynakube("dk", json!({ "applicationMonitoring": { "useCSIDriver": true } })),
            true,
        ),
        (
            with_flags(
                dynakube("dk", json!({ "cloudNativeFullStack": {} })),
                &[("injection-readonly-volume", "true")],
            ),
            true,
        ),
    ];
    for pod in restricted_pods() {
        assert_eq!(
            restricted_violations(&pod),
            Vec::<String>::new(),
            "the test pod itself"
        );
        for (dk, csi) in &modes {
            let facts = Facts::new(dk.clone(), *csi);
            let (_, after) = injected(&facts, &pod);
            assert_eq!(
                restricted_violations(&after),
                Vec::<String>::new(),
                "{:?} in {:?}",
                pod.metadata.name,
                dk.mode()
            );
        }
    }
    // The checker does see violations.
    let mut loose = app_pod();
    loose.spec.as_mut().unwrap().host_network = Some(true);
    assert!(restricted_violations(&loose).len() >= 4);
}

#[test]
fn reinvocation_injects_only_added_containers() {
    let facts = Facts::new(app_monitoring(), false);
    let (_, first) = injected(&facts, &app_pod());
    let mut added = first.clone();
    added.spec.as_mut().unwrap().containers.push(Container {
        name: "sidecar".into(),
        image: Some("proxy:1".into()),
        ..Default::default()
    });
    let (outcome, after) = facts.mutate(&added);
    assert_eq!(outcome.result, PodResult::Updated);
    assert_eq!(outcome.events[0].reason, "UpdatePod");
    assert_eq!(
        container(&after, "app"),
        container(&first, "app"),
        "the injected container is untouched"
    );
    let sidecar = container(&after, "sidecar");
    assert!(mounts(sidecar).contains(&(
        "oneagent-share".into(),
        CONTAINER_CONF_PATH.into(),
        Some("container_sidecar.conf".into())
    )));
    assert!(
        mounts(sidecar)
            .iter()
            .any(|(v, _, _)| v == VOLUME_DATA_INGEST_ENRICHMENT)
    );
    assert!(env(sidecar, env::DT_DEPLOYMENT_METADATA).is_some());
    let init = init(&after);
    assert_eq!(env(init, env::CONTAINERS_COUNT), Some("2"));
    assert_eq!(env(init, "CONTAINER_2_NAME"), Some("sidecar"));
    assert_eq!(env(init, "CONTAINER_2_IMAGE"), Some("proxy:1"));
    assert_eq!(volume_names(&after), volume_names(&first));
    // Applying again changes nothing.
    let (again, _) = facts.mutate(&after);
    assert_eq!(again.result, PodResult::Unchanged(Skip::AlreadyInjected));
    assert!(again.events.is_empty());

    // Inserted in the middle: the indices follow the containers' order.
    let mut inserted = first.clone();
    inserted.spec.as_mut().unwrap().containers.insert(
        0,
        Container {
            name: "first".into(),
            image: Some("f:1".into()),
            ..Default::default()
        },
    );
    let (_, after) = facts.mutate(&inserted);
    let init = super::test_support::init(&after);
    assert_eq!(
        (1..=2)
            .map(|i| env(init, &format!("CONTAINER_{i}_NAME")).unwrap())
            .collect::<Vec<_>>(),
        ["first", "app"]
    );

    // Turned off by the flag.
    let off = Facts::new(
        with_flags(app_monitoring(), &[("webhook-reinvocation-policy", "false")]),
        false,
    );
    assert_eq!(skipped(&off, &added).0, Skip::AlreadyInjected);
}

#[test]
fn pods_injected_by_the_old_init_container_name_are_recognised() {
    let facts = Facts::new(app_monitoring(), false);
    let (_, mut first) = injected(&facts, &app_pod());
    let spec = first.spec.as_mut().unwrap();
    spec.init_containers.as_mut().unwrap()[0].name = LEGACY_INIT_CONTAINER_NAME.into();
    assert_eq!(skipped(&facts, &first).0, Skip::AlreadyInjected);
    spec_push(&mut first, "late");
    let (outcome, after) = facts.mutate(&first);
    assert_eq!(outcome.result, PodResult::Updated);
    assert_eq!(init_containers(&after).len(), 1, "no second init container");
    assert_eq!(env(&init_containers(&after)[0], env::CONTAINERS_COUNT), Some("2"));
}

fn spec_push(pod: &mut Pod, name: &str) {
    pod.spec.as_mut().unwrap().containers.push(Container {
        name: name.into(),
        image: Some("late:1".into()),
        ..Default::default()
    });
}

#[test]
fn injected_pods_are_recognised() {
    let mut facts = Facts::new(app_monitoring(), false);
    let pod = app_pod();
    assert!(!crate::is_injected(&pod));
    let (_, after) = injected(&facts, &pod);
    assert!(crate::is_injected(&after));
    // Reinvoked after the DynaKube went: nothing to warn about.
    facts.dynakube = None;
    assert_eq!(skipped(&facts, &after), (Skip::AlreadyInjected, vec![]));
    facts.dynakube = Some(dynakube("dk", json!({ "classicFullStack": {} })));
    assert_eq!(skipped(&facts, &after), (Skip::AlreadyInjected, vec![]));
}

#[test]
fn copied_annotations_without_the_init_container_do_not_stop_injection() {
    let facts = Facts::new(app_monitoring(), false);
    let pod = annotated(
        app_pod(),
        &[
            (ANNOTATION_ONEAGENT_INJECTED, "true"),
            (ANNOTATION_DYNAKUBE_INJECTED, "true"),
        ],
    );
    let (_, after) = injected(&facts, &pod);
    assert_eq!(init_containers(&after).len(), 1);
}

#[test]
fn users_volumes_mounts_and_init_containers_are_kept() {
    let facts = Facts::new(app_monitoring(), false);
    let pod = pod(json!({
        "metadata": { "name": "p" },
        "spec": {
            "initContainers": [{ "name": "setup", "image": "s" }],
            "volumes": [{ "name": "data", "emptyDir": {} }],
            "containers": [{ "name": "a", "image": "i",
                "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
                "env": [{ "name": "X", "value": "1" }] }]
        }
    }));
    let (_, after) = injected(&facts, &pod);
    assert_eq!(
        init_containers(&after)
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["setup", "dynatrace-operator"],
        "ours runs last"
    );
    assert_eq!(volume_names(&after)[0], "data");
    assert_eq!(mounts(container(&after, "a"))[0].1, "/data");
    assert_eq!(
        env_pairs(container(&after, "a"))[0],
        ("X".to_owned(), "1".to_owned())
    );
}

/// Snapshots of the mutated pod, one per mode and option.
#[test]
fn snapshots() {
    let base_pod = pod(json!({
        "metadata": {
            "generateName": "web-7d9f5c-",
            "namespace": "shop",
            "labels": { "app.kubernetes.io/version": "1.2", "app": "web" },
        },
        "spec": {
            "securityContext": { "runAsNonRoot": true, "runAsUser": 1000 },
            "containers": [
                { "name": "web", "image": "registry.example.com/shop/web:1.2",
                  "env": [{ "name": "LD_PRELOAD", "value": "/usr/lib/libjemalloc.so" }] },
                { "name": "metrics", "image": "registry.example.com/shop/metrics:3" }
            ]
        }
    }));
    let cloud = || dynakube("dk", json!({ "cloudNativeFullStack": {} }));
    /// Name, DynaKube, CSI driver installed, namespace annotations.
    type Case<'a> = (
        &'a str,
        pure_api::dynakube::DynaKube,
        bool,
        &'a [(&'a str, &'a str)],
    );
    let cases: Vec<Case<'_>> = vec![
        ("cloud_native_full_stack", cloud(), true, &[]),
        (
            "application_monitoring_csi",
            dynakube("dk", json!({ "applicationMonitoring": { "useCSIDriver": true } })),
            true,
            &[],
        ),
        ("application_monitoring_installer", app_monitoring(), false, &[]),
        (
            "enrichment_off",
            with_flags(app_monitoring(), &[("metadata-enrichment", "false")]),
            false,
            &[],
        ),
        (
            "readonly_csi",
            with_flags(cloud(), &[("injection-readonly-volume", "true")]),
            true,
            &[],
        ),
        (
            "label_version_detection",
            with_flags(app_monitoring(), &[("label-version-detection", "true")]),
            false,
            &[("mapping.release.dynatrace.com/stage", "metadata.labels['stage']")],
        ),
        (
            "network_zone",
            {
                let mut dk = cloud();
                dk.spec.network_zone = Some("eu-west".into());
                dk
            },
            true,
            &[],
        ),
    ];
    for (name, dk, csi, ns_annotations) in cases {
        let mut facts = Facts::new(dk, csi);
        facts.annotations = map(ns_annotations);
        let (outcome, after) = injected(&facts, &base_pod);
        // The operator's version is in DT_DEPLOYMENT_METADATA; a release must not change the snapshots.
        let text = serde_json::to_string(&after).unwrap().replace(
            &format!("script_version={}", crate::OPERATOR_VERSION),
            "script_version=<version>",
        );
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        insta::assert_json_snapshot!(name, json);
        let (again, _) = facts.mutate(&after);
        assert!(again.patch.0.is_empty(), "{name}: idempotent");
        assert_eq!(outcome.events.last().unwrap().reason, "Inject", "{name}");
    }
}
