//! One passing and one failing case per rule, plus the denial format.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::*;

const API_URL: &str = "https://abc12345.live.dynatrace.com/api";

fn dynakube_in(namespace: &str, name: &str, spec: Value, annotations: Value) -> DynaKube {
    serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta1",
        "kind": "DynaKube",
        "metadata": { "name": name, "namespace": namespace, "annotations": annotations },
        "spec": spec,
    }))
    .unwrap()
}

fn dynakube(spec: Value) -> DynaKube {
    dynakube_in("dynatrace", "dynakube", spec, json!({}))
}

fn with_flags(spec: Value, annotations: Value) -> DynaKube {
    dynakube_in("dynatrace", "dynakube", spec, annotations)
}

fn meta(name: &str, labels: Value) -> ObjectMeta {
    serde_json::from_value(json!({ "name": name, "labels": labels })).unwrap()
}

fn node(name: &str, labels: Value) -> ObjectMeta {
    meta(name, labels)
}

fn namespace(name: &str, labels: Value) -> ObjectMeta {
    meta(name, labels)
}

fn errors(dynakube: &DynaKube) -> Vec<String> {
    validate(dynakube, &ClusterView::default(), &ProxySecret::NotLookedUp).errors
}

fn errors_in(dynakube: &DynaKube, cluster: ClusterView<'_>) -> Vec<String> {
    validate(dynakube, &cluster, &ProxySecret::NotLookedUp).errors
}

/// Each table row: a description, a DynaKube, and a text every error must... contain (or none expected).
fn check(cases: Vec<(&str, DynaKube, Option<&str>)>) {
    for (what, dk, expected) in cases {
        let found = errors(&dk);
        match expected {
            None => assert!(found.is_empty(), "{what}: expected no error, got {found:#?}"),
            Some(text) => assert!(
                found.iter().any(|e| e.contains(text)),
                "{what}: expected an error containing {text:?}, got {found:#?}"
            ),
        }
    }
}

#[test]
fn every_mode_with_a_good_api_url_is_valid() {
    for mode in [
        "classicFullStack",
        "cloudNativeFullStack",
        "applicationMonitoring",
        "hostMonitoring",
    ] {
        let dk = dynakube(json!({ "apiUrl": API_URL, "oneAgent": { mode: {} } }));
        assert_eq!(errors(&dk), Vec::<String>::new(), "{mode}");
    }
    let managed = dynakube(json!({ "apiUrl": "https://managed.example.com/e/1234/api" }));
    assert!(errors(&managed).is_empty());
}

#[test]
fn api_url_rules() {
    check(vec![
        ("good", dynakube(json!({ "apiUrl": API_URL })), None),
        (
            "example",
            dynakube(json!({ "apiUrl": EXAMPLE_API_URL })),
            Some("missing the API URL or still has the example"),
        ),
        (
            "empty",
            dynakube(json!({ "apiUrl": "" })),
            Some("missing the API URL"),
        ),
        (
            "no /api",
            dynakube(json!({ "apiUrl": "https://abc.live.dynatrace.com" })),
            Some("/api postfix"),
        ),
        (
            "not a URL",
            dynakube(json!({ "apiUrl": "abc.live.dynatrace.com/api" })),
            Some("invalid API URL"),
        ),
        (
            "empty first label",
            dynakube(json!({ "apiUrl": "https://.example.com/api" })),
            Some("invalid API URL"),
        ),
    ]);
    // The seed's case: the example host without the postfix breaks both rules.
    let seed = dynakube(json!({ "apiUrl": "https://ENVIRONMENTID.live.dynatrace.com" }));
    assert_eq!(errors(&seed).len(), 2);
    assert_eq!(
        errors(&dynakube(json!({ "apiUrl": "" }))).len(),
        2,
        "an empty URL breaks both rules"
    );
}

#[test]
fn csi_driver_rules() {
    let cloud = dynakube(json!({ "apiUrl": API_URL, "oneAgent": { "cloudNativeFullStack": {} } }));
    let without_csi = ClusterView {
        csi_driver_installed: Some(false),
        ..Default::default()
    };
    let with_csi = ClusterView {
        csi_driver_installed: Some(true),
        ..Default::default()
    };
    assert!(errors_in(&cloud, with_csi).is_empty());
    let found = errors_in(&cloud, without_csi);
    assert!(
        found[0].contains("needs the CSI driver") && found[0].contains("csidriver.enabled"),
        "{found:?}"
    );
    let classic = dynakube(json!({ "apiUrl": API_URL, "oneAgent": { "classicFullStack": {} } }));
    assert!(
        errors_in(&classic, without_csi).is_empty(),
        "classic does not need CSI"
    );

    let readonly = json!({ "feature.dynatrace.com/injection-readonly-volume": "true" });
    check(vec![
        (
            "read-only volume with CSI",
            with_flags(
                json!({ "apiUrl": API_URL, "oneAgent": { "cloudNativeFullStack": {} } }),
                readonly.clone(),
            ),
            None,
        ),
        (
            "read-only volume without CSI",
            with_flags(
                json!({ "apiUrl": API_URL, "oneAgent": { "classicFullStack": {} } }),
                readonly,
            ),
            Some("no CSI volume to mount read-only"),
        ),
    ]);
}

#[test]
fn proxy_rules() {
    let dk = |proxy: Value| dynakube(json!({ "apiUrl": API_URL, "proxy": proxy }));
    let run = |dk: &DynaKube, secret: ProxySecret| validate(dk, &ClusterView::default(), &secret).errors;
    assert!(
        run(
            &dk(json!({ "value": "http://user:pa55@proxy:3128" })),
            ProxySecret::NotLookedUp
        )
        .is_empty()
    );
    let bad_url = run(&dk(json!({ "value": "::not a url" })), ProxySecret::NotLookedUp);
    assert!(bad_url[0].contains("not a valid URL"), "{bad_url:?}");
    let bad_password = run(
        &dk(json!({ "value": "http://user:pa%26ss@proxy:3128" })),
        ProxySecret::NotLookedUp,
    );
    assert!(bad_password[0].contains("password"), "{bad_password:?}");

    let from_secret = dk(json!({ "valueFrom": "proxy-secret" }));
    assert!(run(&from_secret, ProxySecret::Value("http://proxy:3128".into())).is_empty());
    assert!(run(&from_secret, ProxySecret::MissingKey)[0].contains("has no key \"proxy\""));
    let unreadable = run(
        &from_secret,
        ProxySecret::Unreadable("secrets \"proxy-secret\" not found".into()),
    );
    assert!(unreadable[0].contains("cannot be read") && unreadable[0].contains("not found"));
    assert!(run(&from_secret, ProxySecret::Value("http://u:a b@proxy:1".into()))[0].contains("password"));
}

#[test]
fn one_mode_only() {
    check(vec![
        (
            "one",
            dynakube(json!({ "apiUrl": API_URL, "oneAgent": { "hostMonitoring": {} } })),
            None,
        ),
        (
            "two",
            dynakube(
                json!({ "apiUrl": API_URL, "oneAgent": { "hostMonitoring": {}, "classicFullStack": {} } }),
            ),
            Some("multiple OneAgent modes"),
        ),
    ]);
}

#[test]
fn node_selector_conflicts_use_the_nodes_both_select() {
    let spec = |selector: Value| json!({ "apiUrl": API_URL, "oneAgent": { "classicFullStack": { "nodeSelector": selector } } });
    let mine = dynakube_in("dynatrace", "a", spec(json!({ "pool": "a" })), json!({}));
    let overlapping = dynakube_in("dynatrace", "b", spec(json!({ "zone": "z1" })), json!({}));
    let disjoint = dynakube_in("dynatrace", "c", spec(json!({ "pool": "c" })), json!({}));
    let elsewhere = dynakube_in("other", "d", spec(json!({ "zone": "z1" })), json!({}));
    let nodes = [
        node("n1", json!({ "pool": "a", "zone": "z1" })),
        node("n2", json!({ "pool": "c", "zone": "z2" })),
    ];
    let dynakubes = [mine.clone(), overlapping, disjoint, elsewhere];
    let cluster = ClusterView {
        dynakubes: &dynakubes,
        nodes: &nodes,
        ..Default::default()
    };
    let found = errors_in(&mine, cluster);
    // {pool: a} and {zone: z1} are no subsets of each other, but both select n1; every conflict is named.
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].contains("dynatrace/b") && found[0].contains("n1"));
    assert!(found[1].contains("other/d"));

    let allowed = dynakube_in(
        "dynatrace",
        "a",
        spec(json!({ "pool": "a" })),
        json!({ "feature.dynatrace.com/multiple-osagents-on-node": "true" }),
    );
    assert!(errors_in(&allowed, cluster).is_empty());
}

#[test]
fn node_selector_conflicts_without_nodes_use_the_subset_rule() {
    let spec = |selector: Value| json!({ "apiUrl": API_URL, "oneAgent": { "hostMonitoring": { "nodeSelector": selector } } });
    let mine = dynakube_in(
        "dynatrace",
        "a",
        spec(json!({ "pool": "a", "zone": "z1" })),
        json!({}),
    );
    let superset = dynakube_in("dynatrace", "b", spec(json!({ "pool": "a" })), json!({}));
    let unrelated = dynakube_in("dynatrace", "c", spec(json!({ "pool": "c" })), json!({}));
    let app_only = dynakube_in(
        "dynatrace",
        "e",
        json!({ "apiUrl": API_URL, "oneAgent": { "applicationMonitoring": {} } }),
        json!({}),
    );
    let dynakubes = [superset, unrelated, app_only];
    let found = errors_in(
        &mine,
        ClusterView {
            dynakubes: &dynakubes,
            ..Default::default()
        },
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].contains("dynatrace/b") && found[0].contains("contained"));
}

#[test]
fn invalid_node_selector_is_reported() {
    let dk = dynakube(
        json!({ "apiUrl": API_URL, "oneAgent": { "classicFullStack": { "nodeSelector": { "bad key": "x" } } } }),
    );
    let found = errors(&dk);
    assert!(
        found[0].contains("nodeSelector is invalid") && found[0].contains("bad key"),
        "{found:?}"
    );
}

#[test]
fn namespace_selector_rules() {
    let spec = |selector: Value| json!({ "apiUrl": API_URL, "namespaceSelector": selector, "oneAgent": { "applicationMonitoring": {} } });
    let team_a = dynakube_in(
        "dynatrace",
        "a",
        spec(json!({ "matchLabels": { "team": "a" } })),
        json!({}),
    );
    let team_b = dynakube_in(
        "dynatrace",
        "b",
        spec(json!({ "matchLabels": { "team": "b" } })),
        json!({}),
    );
    let everything = dynakube_in(
        "dynatrace",
        "all",
        json!({ "apiUrl": API_URL, "oneAgent": { "cloudNativeFullStack": {} } }),
        json!({}),
    );
    let namespaces = [
        namespace("shop", json!({ "team": "a" })),
        namespace("blog", json!({ "team": "b" })),
        namespace("kube-system", json!({ "team": "a" })),
    ];
    let dynakubes = [team_a.clone(), team_b.clone()];
    let cluster = ClusterView {
        dynakubes: &dynakubes,
        namespaces: &namespaces,
        ..Default::default()
    };
    assert!(errors_in(&team_a, cluster).is_empty(), "disjoint selectors");

    let found = errors_in(&everything, cluster);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].contains("no spec.namespaceSelector")
            && found[0].contains("dynatrace/a")
            && found[0].contains("shop")
    );
    assert!(
        !found.iter().any(|e| e.contains("kube-system")),
        "system namespaces are ignored"
    );

    let overlapping = dynakube_in(
        "dynatrace",
        "c",
        spec(json!({ "matchExpressions": [{ "key": "team", "operator": "Exists" }] })),
        json!({}),
    );
    let found = errors_in(&overlapping, cluster);
    assert!(
        found[0].contains("selects namespaces that DynaKube dynatrace/a"),
        "{found:#?}"
    );

    let invalid = dynakube(spec(
        json!({ "matchExpressions": [{ "key": "team", "operator": "Equals", "values": ["a"] }] }),
    ));
    assert!(errors(&invalid)[0].contains("spec.namespaceSelector is invalid"));
}

#[test]
fn readonly_fs_with_multiple_osagents() {
    check(vec![
        (
            "multiple agents, read-only",
            with_flags(
                json!({ "apiUrl": API_URL }),
                json!({ "feature.dynatrace.com/multiple-osagents-on-node": "true" }),
            ),
            None,
        ),
        (
            "multiple agents, writable",
            with_flags(
                json!({ "apiUrl": API_URL }),
                json!({
                    "feature.dynatrace.com/multiple-osagents-on-node": "true",
                    "feature.dynatrace.com/oneagent-readonly-host-fs": "false"
                }),
            ),
            Some("needs OneAgents with a read-only host file system"),
        ),
    ]);
}

#[test]
fn istio_must_be_installed() {
    let dk = dynakube(json!({ "apiUrl": API_URL, "enableIstio": true }));
    assert!(
        errors_in(
            &dk,
            ClusterView {
                istio_installed: Some(true),
                ..Default::default()
            }
        )
        .is_empty()
    );
    let found = errors_in(
        &dk,
        ClusterView {
            istio_installed: Some(false),
            ..Default::default()
        },
    );
    assert!(found[0].contains("Istio"));
}

#[test]
fn code_modules_image_needs_csi() {
    check(vec![
        (
            "with CSI",
            dynakube(
                json!({ "apiUrl": API_URL, "oneAgent": { "applicationMonitoring": { "codeModulesImage": "img", "useCSIDriver": true } } }),
            ),
            None,
        ),
        (
            "without CSI",
            dynakube(
                json!({ "apiUrl": API_URL, "oneAgent": { "applicationMonitoring": { "codeModulesImage": "img", "useCSIDriver": false } } }),
            ),
            Some("codeModulesImage is set"),
        ),
        (
            "CSI if installed, not known to be missing",
            dynakube(
                json!({ "apiUrl": API_URL, "oneAgent": { "applicationMonitoring": { "codeModulesImage": "img" } } }),
            ),
            None,
        ),
    ]);
}

#[test]
fn volume_storage_with_readonly_agents() {
    let env = |value: &str| json!({ "apiUrl": API_URL, "oneAgent": { "hostMonitoring": { "env": [{ "name": VOLUME_STORAGE_ENV, "value": value }] } } });
    check(vec![
        ("on", dynakube(env("true")), None),
        ("off", dynakube(env("false")), Some("need volume storage")),
        (
            "off, writable agents",
            with_flags(
                env("false"),
                json!({ "feature.dynatrace.com/oneagent-readonly-host-fs": "false" }),
            ),
            None,
        ),
    ]);
}

#[test]
fn dns1035_names() {
    let named = |name: &str| dynakube_in("dynatrace", name, json!({ "apiUrl": API_URL }), json!({}));
    check(vec![
        ("good", named("dynakube-1"), None),
        ("bad", named("1-Dynakube"), Some("DNS-1035")),
    ]);
}

#[test]
fn every_error_is_listed_in_one_numbered_denial() {
    let dk = dynakube_in(
        "dynatrace",
        "Bad_Name",
        json!({ "apiUrl": "", "oneAgent": { "hostMonitoring": {}, "classicFullStack": {} } }),
        json!({}),
    );
    let verdict = validate(&dk, &ClusterView::default(), &ProxySecret::NotLookedUp);
    let denial = verdict.denial().unwrap();
    assert!(
        denial.starts_with("4 error(s) found in the Dynakube\n\n1. "),
        "{denial}"
    );
    assert!(
        denial.contains("\n\n2. ") && denial.contains("\n\n3. ") && denial.contains("\n\n4. "),
        "{denial}"
    );
    assert_eq!(Verdict::default().denial(), None);
}

#[test]
fn warnings_for_deprecated_and_ineffective_flags() {
    let dk = with_flags(
        json!({ "apiUrl": API_URL, "oneAgent": { "classicFullStack": {} } }),
        json!({
            "alpha.operator.dynatrace.com/feature-automatic-injection": "false",
            "feature.dynatrace.com/disable-hosts-requests": "true",
            "feature.dynatrace.com/oneagent-readonly-host-fs": "true",
        }),
    );
    let verdict = validate(&dk, &ClusterView::default(), &ProxySecret::NotLookedUp);
    assert!(verdict.errors.is_empty());
    let all = verdict.warnings.join("\n");
    assert!(
        all.contains("rename it to feature.dynatrace.com/automatic-injection"),
        "{all}"
    );
    assert!(
        all.contains("use feature.dynatrace.com/hosts-requests: \"false\""),
        "{all}"
    );
    assert!(all.contains("no effect with classicFullStack"), "{all}");
    assert!(
        all.contains(
            "deprecated and will become spec fields: automatic-injection, oneagent-readonly-host-fs"
        ),
        "{all}"
    );
    assert!(
        validate(
            &dynakube(json!({ "apiUrl": API_URL })),
            &ClusterView::default(),
            &ProxySecret::NotLookedUp
        )
        .warnings
        .is_empty()
    );
}

#[test]
fn oneagent_resources_are_checked_too() {
    let oneagent = |name: &str, spec: Value| -> crate::oneagent::OneAgent {
        serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1alpha1", "kind": "OneAgent",
            "metadata": { "name": name, "namespace": "dynatrace" }, "spec": spec,
        }))
        .unwrap()
    };
    assert!(
        validate_oneagent(&oneagent("oneagent", json!({ "apiUrl": API_URL })))
            .errors
            .is_empty()
    );
    let bad = validate_oneagent(&oneagent(
        "One_Agent",
        json!({ "apiUrl": "", "nodeSelector": { "a b": "c" } }),
    ));
    assert_eq!(bad.errors.len(), 4, "{:#?}", bad.errors);
    let denial = bad.denial_for("OneAgent").unwrap();
    assert!(denial.starts_with("4 error(s) found in the OneAgent"), "{denial}");
    assert!(
        denial.contains("The OneAgent's specification is missing the API URL"),
        "{denial}"
    );
}

/// A DynaKube as written in `api_version`, read as the internal model (what the webhook validates).
fn written_in(api_version: &str, spec: Value) -> DynaKube {
    let object = json!({
        "apiVersion": api_version,
        "kind": "DynaKube",
        "metadata": { "name": "dynakube", "namespace": "dynatrace" },
        "spec": spec,
    });
    crate::dynakube::conversion::to_hub(object, api_version).unwrap()
}

fn errors_as(api_version: &str, spec: Value, cluster: ClusterView<'_>) -> Vec<String> {
    validate_as(
        &written_in(api_version, spec),
        api_version,
        &cluster,
        &ProxySecret::NotLookedUp,
    )
    .errors
}

#[test]
fn messages_name_the_fields_as_written_in_the_users_version() {
    let bad = json!({ "matchLabels": { "bad key!": "x" } });
    let cloud_native = json!({
        "apiUrl": API_URL,
        "oneAgent": { "cloudNativeFullStack": { "namespaceSelector": bad, "nodeSelector": { "bad key!": "x" } } },
    });
    for version in ["dynatrace.com/v1beta2", "dynatrace.com/v1beta6"] {
        let found = errors_as(version, cloud_native.clone(), ClusterView::default());
        assert!(
            found
                .iter()
                .any(|e| e.contains("spec.oneAgent.cloudNativeFullStack.namespaceSelector is invalid")),
            "{version}: {found:#?}"
        );
        assert!(
            !found.iter().any(|e| e.contains("spec.namespaceSelector")),
            "{version}: {found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|e| e.contains("spec.oneAgent.cloudNativeFullStack.nodeSelector is invalid")),
            "{version}: {found:#?}"
        );
    }
    let v1beta1 = json!({
        "apiUrl": API_URL, "namespaceSelector": bad, "oneAgent": { "cloudNativeFullStack": {} },
    });
    let found = errors_as("dynatrace.com/v1beta1", v1beta1, ClusterView::default());
    assert!(
        found
            .iter()
            .any(|e| e.contains("spec.namespaceSelector is invalid")),
        "{found:#?}"
    );

    let v1alpha1 = json!({
        "apiUrl": API_URL, "classicFullStack": { "enabled": true, "nodeSelector": { "bad key!": "x" } },
    });
    let found = errors_as("dynatrace.com/v1alpha1", v1alpha1, ClusterView::default());
    assert!(
        found
            .iter()
            .any(|e| e.contains("spec.classicFullStack.nodeSelector is invalid")),
        "{found:#?}"
    );
}

#[test]
fn the_metadata_enrichment_selector_is_checked_in_every_version_that_has_it() {
    let spec = json!({
        "apiUrl": API_URL, "metadataEnrichment": { "namespaceSelector": { "matchLabels": { "bad key!": "x" } } },
    });
    for version in ["dynatrace.com/v1beta2", "dynatrace.com/v1beta6"] {
        let found = errors_as(version, spec.clone(), ClusterView::default());
        assert!(
            found
                .iter()
                .any(|e| e.contains("spec.metadataEnrichment.namespaceSelector is invalid")),
            "{version}: {found:#?}"
        );
    }
}

#[test]
fn from_v1beta3_a_code_modules_image_needs_an_installed_csi_driver_not_a_flag() {
    let spec = json!({
        "apiUrl": API_URL, "oneAgent": { "applicationMonitoring": { "codeModulesImage": "cm:1" } },
    });
    let installed = ClusterView {
        csi_driver_installed: Some(true),
        ..Default::default()
    };
    assert_eq!(
        errors_as("dynatrace.com/v1beta6", spec.clone(), installed),
        Vec::<String>::new()
    );
    // Without useCSIDriver the installed driver is used, so the image is too: no warning.
    let dk = written_in("dynatrace.com/v1beta6", spec.clone());
    let verdict = validate_as(
        &dk,
        "dynatrace.com/v1beta6",
        &installed,
        &ProxySecret::NotLookedUp,
    );
    assert!(verdict.warnings.is_empty(), "{:#?}", verdict.warnings);
    // An object that keeps useCSIDriver: false from v1beta2 never uses the driver: say so.
    let mut kept_false = dk.clone();
    if let Some(app) = kept_false
        .spec
        .one_agent
        .as_mut()
        .and_then(|o| o.application_monitoring.as_mut())
    {
        app.use_csi_driver = Some(false);
    }
    let warnings = validate_as(
        &kept_false,
        "dynatrace.com/v1beta6",
        &installed,
        &ProxySecret::NotLookedUp,
    )
    .warnings;
    assert!(
        warnings.iter().any(|w| w.contains("codeModulesImage")),
        "{warnings:#?}"
    );
    let missing = ClusterView {
        csi_driver_installed: Some(false),
        ..Default::default()
    };
    let found = errors_as("dynatrace.com/v1beta6", spec.clone(), missing);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].contains("csidriver.enabled"), "{found:#?}");
    assert!(
        !found[0].contains("useCSIDriver"),
        "v1beta6 has no useCSIDriver: {found:#?}"
    );
    // v1beta2 still has the flag (the API server defaults it to false), and the message names it.
    let v1beta2 = json!({
        "apiUrl": API_URL,
        "oneAgent": { "applicationMonitoring": { "codeModulesImage": "cm:1", "useCSIDriver": false } },
    });
    let found = errors_as("dynatrace.com/v1beta2", v1beta2, ClusterView::default());
    assert!(
        found.iter().any(|e| e.contains("useCSIDriver: true")),
        "{found:#?}"
    );
}

#[test]
fn a_host_group_field_wins_over_the_argument_with_a_warning() {
    let dk = written_in(
        "dynatrace.com/v1beta6",
        json!({
            "apiUrl": API_URL,
            "oneAgent": { "hostGroup": "field", "cloudNativeFullStack": { "args": ["--set-host-group=arg"] } },
        }),
    );
    assert_eq!(dk.host_group(), Some("field"));
    let verdict = validate_as(
        &dk,
        "dynatrace.com/v1beta6",
        &ClusterView::default(),
        &ProxySecret::NotLookedUp,
    );
    assert!(
        verdict
            .warnings
            .iter()
            .any(|w| w.contains("spec.oneAgent.hostGroup")),
        "{:#?}",
        verdict.warnings
    );
}

/// DynaKubes shaped like the reference's samples for each version (written from its documented fields)
/// are valid in every version they belong to.
#[test]
fn sample_dynakubes_of_every_later_version_are_valid() {
    let samples = [
        json!({
            "apiUrl": API_URL,
            "metadataEnrichment": { "enabled": true },
            "oneAgent": { "cloudNativeFullStack": {
                "namespaceSelector": { "matchLabels": { "monitor": "true" } },
                "tolerations": [{ "effect": "NoSchedule", "key": "node-role.kubernetes.io/master", "operator": "Exists" }],
            } },
            "activeGate": { "capabilities": ["routing", "kubernetes-monitoring", "dynatrace-api"],
                "resources": { "requests": { "cpu": "500m", "memory": "512Mi" }, "limits": { "cpu": "1000m", "memory": "1.5Gi" } } },
        }),
        json!({
            "apiUrl": API_URL,
            "oneAgent": { "applicationMonitoring": { "namespaceSelector": { "matchExpressions": [
                { "key": "team", "operator": "In", "values": ["a", "b"] },
            ] } } },
        }),
        json!({ "apiUrl": API_URL, "oneAgent": { "hostMonitoring": {}, "hostGroup": "infra" } }),
        json!({ "apiUrl": API_URL, "oneAgent": { "classicFullStack": { "env": [{ "name": "ONEAGENT_ENABLE_VOLUME_STORAGE", "value": "false" }] } } }),
    ];
    let cluster = ClusterView {
        csi_driver_installed: Some(true),
        ..Default::default()
    };
    for version in ["v1beta2", "v1beta3", "v1beta4", "v1beta5", "v1beta6"] {
        let api_version = format!("dynatrace.com/{version}");
        for sample in &samples {
            let found = errors_as(&api_version, sample.clone(), cluster);
            assert_eq!(found, Vec::<String>::new(), "{version}: {sample}");
        }
    }
    let logs = json!({ "apiUrl": API_URL, "logMonitoring": {}, "kspm": {}, "templates": { "logMonitoring": { "imageRef": { "repository": "r", "tag": "t" } } } });
    for version in ["v1beta3", "v1beta6"] {
        let dk = written_in(&format!("dynatrace.com/{version}"), logs.clone());
        assert!(
            dk.spec.log_monitoring.is_some() && dk.spec.templates.is_some(),
            "{version}: kept"
        );
    }
}

/// Every version a DynaKube can be written in, with the path of its classicFullStack section.
const EVERY_VERSION: [(&str, &str); 7] = [
    ("dynatrace.com/v1alpha1", "spec.classicFullStack"),
    ("dynatrace.com/v1beta1", "spec.oneAgent.classicFullStack"),
    ("dynatrace.com/v1beta2", "spec.oneAgent.classicFullStack"),
    ("dynatrace.com/v1beta3", "spec.oneAgent.classicFullStack"),
    ("dynatrace.com/v1beta4", "spec.oneAgent.classicFullStack"),
    ("dynatrace.com/v1beta5", "spec.oneAgent.classicFullStack"),
    ("dynatrace.com/v1beta6", "spec.oneAgent.classicFullStack"),
];

/// A classicFullStack spec in `api_version`'s shape with the given OneAgent settings.
fn classic_in(api_version: &str, settings: Value) -> Value {
    if api_version.ends_with("v1alpha1") {
        let mut section = json!({ "enabled": true });
        if let (Some(section), Some(settings)) = (section.as_object_mut(), settings.as_object()) {
            section.extend(settings.clone());
        }
        json!({ "apiUrl": API_URL, "classicFullStack": section })
    } else {
        json!({ "apiUrl": API_URL, "oneAgent": { "classicFullStack": settings } })
    }
}

#[test]
fn the_oneagent_version_must_have_the_full_format_in_every_version() {
    let good = ["1.277.0.20230914-094321", "10.0.12.20991231-235959"];
    let bad = [
        "1.277.0",
        "1.277.0.20230914",
        "1.277.0.2023091-094321",
        "1.277.0.20230914-09432",
        "1.277.x.20230914-094321",
        "1.277.0.20230914-094321 ",
        "v1.277.0.20230914-094321",
        "1.277.0.20230914_094321",
        "1..0.20230914-094321",
        "1.2.3.4.20230914-094321",
        "latest",
    ];
    for mode in ["classicFullStack", "hostMonitoring", "cloudNativeFullStack"] {
        for version in good {
            let dk = dynakube(json!({ "apiUrl": API_URL, "oneAgent": { mode: { "version": version } } }));
            assert_eq!(errors(&dk), Vec::<String>::new(), "{mode} {version}");
        }
        for version in bad {
            let dk = dynakube(json!({ "apiUrl": API_URL, "oneAgent": { mode: { "version": version } } }));
            let found = errors(&dk);
            assert_eq!(found.len(), 1, "{mode} {version:?}: {found:#?}");
            assert!(
                found[0].contains(&format!("spec.oneAgent.{mode}.version"))
                    && found[0].contains(&format!("{version:?}"))
                    && found[0].contains("<major>.<minor>.<patch>.<yyyymmdd>-<hhmmss>"),
                "{found:#?}"
            );
        }
    }
    // Unset or empty: the environment's latest version.
    let empty = dynakube(json!({ "apiUrl": API_URL, "oneAgent": { "hostMonitoring": { "version": "" } } }));
    assert_eq!(errors(&empty), Vec::<String>::new());
    for (api_version, section) in EVERY_VERSION {
        let (spec, field) = if api_version.ends_with("v1alpha1") {
            // v1alpha1 keeps the version beside the image, in spec.oneAgent.
            let mut spec = classic_in(api_version, json!({}));
            spec["oneAgent"] = json!({ "version": "1.2" });
            (spec, "spec.oneAgent.version".to_owned())
        } else {
            (
                classic_in(api_version, json!({ "version": "1.2" })),
                format!("{section}.version"),
            )
        };
        let found = errors_as(api_version, spec, ClusterView::default());
        assert!(
            found.iter().any(|e| e.contains(&format!("{field} \"1.2\""))),
            "{api_version}: {found:#?}"
        );
    }
}

#[test]
fn oneagent_args_may_repeat_only_host_properties_and_tags_with_different_values() {
    let args_error = |args: Value| {
        errors(&dynakube(
            json!({ "apiUrl": API_URL, "oneAgent": { "classicFullStack": { "args": args } } }),
        ))
    };
    let fine = json!([
        "--set-host-property=team=a",
        "--set-host-property=owner=b",
        "--set-host-tag=tier=web",
        "--set-host-tag=critical",
        "--set-monitoring-mode=fullstack",
        "--set-app-log-content-access=true",
    ]);
    assert_eq!(args_error(fine), Vec::<String>::new());
    for (args, named) in [
        (
            json!([
                "--set-monitoring-mode=fullstack",
                "--set-monitoring-mode=infra-only"
            ]),
            "--set-monitoring-mode",
        ),
        (
            json!(["--set-host-group=a", "--set-host-group=a"]),
            "--set-host-group",
        ),
        (
            json!(["--set-host-tag=tier=web", "--set-host-tag=tier=web"]),
            "--set-host-tag=tier=web",
        ),
        (
            json!(["--set-host-property=team=a", "--set-host-property=team=a"]),
            "--set-host-property=team=a",
        ),
    ] {
        let found = args_error(args.clone());
        assert_eq!(found.len(), 1, "{args}: {found:#?}");
        assert!(
            found[0].contains("spec.oneAgent.classicFullStack.args") && found[0].contains(named),
            "{args}: {found:#?}"
        );
    }
    for (api_version, section) in EVERY_VERSION {
        let found = errors_as(
            api_version,
            classic_in(
                api_version,
                json!({ "args": ["--set-host-group=a", "--set-host-group=b"] }),
            ),
            ClusterView::default(),
        );
        assert!(
            found.iter().any(|e| e.contains(&format!("{section}.args"))),
            "{api_version}: {found:#?}"
        );
    }
}

#[test]
fn the_host_id_source_argument_is_forbidden_in_cloud_native_full_stack_only() {
    let with_arg = |mode: &str| {
        dynakube(json!({
            "apiUrl": API_URL, "oneAgent": { mode: { "args": ["--set-host-id-source=fqdn"] } },
        }))
    };
    let found = errors(&with_arg("cloudNativeFullStack"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("spec.oneAgent.cloudNativeFullStack.args")
            && found[0].contains("--set-host-id-source"),
        "{found:#?}"
    );
    assert_eq!(errors(&with_arg("classicFullStack")), Vec::<String>::new());
    assert_eq!(errors(&with_arg("hostMonitoring")), Vec::<String>::new());
    for version in ["v1beta1", "v1beta2", "v1beta3", "v1beta4", "v1beta5", "v1beta6"] {
        let api_version = format!("dynatrace.com/{version}");
        let spec = json!({
            "apiUrl": API_URL, "oneAgent": { "cloudNativeFullStack": { "args": ["--set-host-id-source=auto"] } },
        });
        let found = errors_as(&api_version, spec, ClusterView::default());
        assert!(
            found
                .iter()
                .any(|e| e.contains("spec.oneAgent.cloudNativeFullStack.args")),
            "{version}: {found:#?}"
        );
    }
}

#[test]
fn control_characters_are_forbidden_in_host_group_network_zone_and_args() {
    for bad in ["a\nb", "a\rb", "a\tb", "a\u{0}b", "a\u{7f}b", "a\u{85}b"] {
        let dk = dynakube(json!({
            "apiUrl": API_URL, "networkZone": bad,
            "oneAgent": { "hostGroup": bad, "hostMonitoring": { "args": ["--set-host-tag=x", bad] } },
        }));
        let found = errors(&dk);
        assert_eq!(found.len(), 3, "{bad:?}: {found:#?}");
        assert!(found.iter().any(|e| e.contains("spec.networkZone")), "{found:#?}");
        assert!(
            found.iter().any(|e| e.contains("spec.oneAgent.hostGroup")),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|e| e.contains("spec.oneAgent.hostMonitoring.args[1]")),
            "{found:#?}"
        );
        assert!(
            found.iter().all(|e| e.contains("control character")),
            "{found:#?}"
        );
    }
    let fine = dynakube(json!({
        "apiUrl": API_URL, "networkZone": "zone-a.eu_1",
        "oneAgent": { "hostGroup": "prod ü-1", "hostMonitoring": { "args": ["--set-host-tag=a b"] } },
    }));
    assert_eq!(errors(&fine), Vec::<String>::new());
    for (api_version, section) in EVERY_VERSION {
        let mut spec = classic_in(api_version, json!({ "args": ["--set-host-tag=a\nb"] }));
        spec["networkZone"] = json!("zone\n");
        let found = errors_as(api_version, spec, ClusterView::default());
        assert!(
            found.iter().any(|e| e.contains(&format!("{section}.args[0]"))),
            "{api_version}: {found:#?}"
        );
        assert!(
            found.iter().any(|e| e.contains("spec.networkZone")),
            "{api_version}: {found:#?}"
        );
    }
    for version in ["v1beta2", "v1beta6"] {
        let spec =
            json!({ "apiUrl": API_URL, "oneAgent": { "hostGroup": "a\u{1b}b", "hostMonitoring": {} } });
        let found = errors_as(&format!("dynatrace.com/{version}"), spec, ClusterView::default());
        assert!(
            found.iter().any(|e| e.contains("spec.oneAgent.hostGroup")),
            "{version}: {found:#?}"
        );
    }
}

#[test]
fn the_host_group_warning_in_every_version_with_the_field() {
    for version in ["v1beta1", "v1beta2", "v1beta3", "v1beta4", "v1beta5", "v1beta6"] {
        let api_version = format!("dynatrace.com/{version}");
        let dk = written_in(
            &api_version,
            json!({
                "apiUrl": API_URL,
                "oneAgent": { "hostGroup": "field", "hostMonitoring": { "args": ["--set-host-group=arg"] } },
            }),
        );
        let verdict = validate_as(
            &dk,
            &api_version,
            &ClusterView::default(),
            &ProxySecret::NotLookedUp,
        );
        assert_eq!(verdict.errors, Vec::<String>::new(), "{version}");
        assert!(
            verdict
                .warnings
                .iter()
                .any(|w| w.contains("spec.oneAgent.hostGroup") && w.contains("--set-host-group")),
            "{version}: {:#?}",
            verdict.warnings
        );
    }
}

#[test]
fn auto_update_is_deprecated_from_v1beta3_on() {
    let auto_update_warnings = |api_version: &str, mode: &str, auto_update: Value| {
        let mut settings = json!({});
        if !auto_update.is_null() {
            settings["autoUpdate"] = auto_update;
        }
        let dk = written_in(
            api_version,
            json!({ "apiUrl": API_URL, "oneAgent": { mode: settings } }),
        );
        validate_as(
            &dk,
            api_version,
            &ClusterView::default(),
            &ProxySecret::NotLookedUp,
        )
        .warnings
        .into_iter()
        .filter(|w| w.contains("autoUpdate"))
        .collect::<Vec<_>>()
    };
    for mode in ["classicFullStack", "hostMonitoring", "cloudNativeFullStack"] {
        for version in ["v1beta3", "v1beta4", "v1beta5", "v1beta6"] {
            let api_version = format!("dynatrace.com/{version}");
            for value in [json!(true), json!(false)] {
                let found = auto_update_warnings(&api_version, mode, value.clone());
                assert_eq!(found.len(), 1, "{version} {mode} {value}: {found:#?}");
                assert!(
                    found[0].contains(&format!("spec.oneAgent.{mode}.autoUpdate"))
                        && found[0].contains(&format!("spec.oneAgent.{mode}.version"))
                        && found[0].contains("deprecated")
                        && found[0].contains("removed"),
                    "{found:#?}"
                );
            }
            assert_eq!(
                auto_update_warnings(&api_version, mode, Value::Null),
                Vec::<String>::new(),
                "{version} {mode}: unset"
            );
        }
        for version in ["v1beta1", "v1beta2"] {
            let api_version = format!("dynatrace.com/{version}");
            assert_eq!(
                auto_update_warnings(&api_version, mode, json!(false)),
                Vec::<String>::new(),
                "{version} {mode}"
            );
        }
    }
    // The behaviour is the same in every version: unset or true follows the latest version.
    for version in ["v1beta2", "v1beta6"] {
        let api_version = format!("dynatrace.com/{version}");
        for (value, follows) in [(json!(null), true), (json!(true), true), (json!(false), false)] {
            let mut settings = json!({});
            if !value.is_null() {
                settings["autoUpdate"] = value.clone();
            }
            let dk = written_in(
                &api_version,
                json!({ "apiUrl": API_URL, "oneAgent": { "hostMonitoring": settings } }),
            );
            assert_eq!(dk.should_auto_update_one_agent(), follows, "{version} {value}");
        }
    }
}

#[test]
fn a_flag_the_spec_field_overrides_warns() {
    let threshold_flag = "feature.dynatrace.com/dynatrace-api-request-threshold";
    let seccomp_flag = "feature.dynatrace.com/oneagent-seccomp-profile";
    let annotations = json!({ threshold_flag: "0", seccomp_flag: "flag.json" });
    let warnings_of = |spec: Value| {
        validate(
            &with_flags(spec, annotations.clone()),
            &ClusterView::default(),
            &ProxySecret::NotLookedUp,
        )
        .warnings
    };
    let both = warnings_of(json!({
        "apiUrl": API_URL, "dynatraceApiRequestThreshold": 15,
        "oneAgent": { "hostMonitoring": { "secCompProfile": "field.json" } },
    }));
    assert!(
        both.iter().any(|w| w.contains(threshold_flag)
            && w.contains("spec.dynatraceApiRequestThreshold")
            && w.contains("no effect")),
        "{both:#?}"
    );
    assert!(
        both.iter().any(|w| w.contains(seccomp_flag)
            && w.contains("spec.oneAgent.hostMonitoring.secCompProfile")
            && w.contains("no effect")),
        "{both:#?}"
    );
    let flags_only = warnings_of(json!({ "apiUrl": API_URL, "oneAgent": { "hostMonitoring": {} } }));
    assert!(
        !flags_only.iter().any(|w| w.contains("no effect")),
        "{flags_only:#?}"
    );
}

/// Values the API server would refuse in the OneAgent DaemonSet are refused on the DynaKube already, where
/// the user can see why.
#[test]
fn storage_host_path_and_sec_comp_profile_must_be_paths_the_daemonset_can_use() {
    let with = |settings: Value| {
        errors(&dynakube(
            json!({ "apiUrl": API_URL, "oneAgent": { "hostMonitoring": settings } }),
        ))
    };
    for good in ["/var/opt/dynatrace", "/", "/a/b.c/d-e"] {
        assert_eq!(
            with(json!({ "storageHostPath": good })),
            Vec::<String>::new(),
            "{good}"
        );
    }
    for bad in ["var/opt", "./x", "/var/../etc", "/a/.."] {
        let found = with(json!({ "storageHostPath": bad }));
        assert_eq!(found.len(), 1, "{bad}: {found:#?}");
        assert!(
            found[0].contains("spec.oneAgent.hostMonitoring.storageHostPath")
                && found[0].contains("absolute"),
            "{found:#?}"
        );
    }
    for good in ["oneagent.json", "profiles/oneagent.json", "a..b.json"] {
        assert_eq!(
            with(json!({ "secCompProfile": good })),
            Vec::<String>::new(),
            "{good}"
        );
    }
    for bad in [
        "/var/lib/kubelet/seccomp/oneagent.json",
        "../oneagent.json",
        "a/../b.json",
    ] {
        let found = with(json!({ "secCompProfile": bad }));
        assert_eq!(found.len(), 1, "{bad}: {found:#?}");
        assert!(
            found[0].contains("spec.oneAgent.hostMonitoring.secCompProfile") && found[0].contains("relative"),
            "{found:#?}"
        );
    }
    // Named as written, in the versions that have the fields.
    for version in ["v1beta4", "v1beta6"] {
        let spec = json!({ "apiUrl": API_URL, "oneAgent": { "cloudNativeFullStack": {
            "storageHostPath": "rel", "secCompProfile": "/abs.json",
        } } });
        let found = errors_as(
            &format!("dynatrace.com/{version}"),
            spec,
            ClusterView {
                csi_driver_installed: Some(true),
                ..Default::default()
            },
        );
        assert_eq!(found.len(), 2, "{version}: {found:#?}");
        assert!(
            found[0].contains("spec.oneAgent.cloudNativeFullStack.storageHostPath"),
            "{found:#?}"
        );
        assert!(
            found[1].contains("spec.oneAgent.cloudNativeFullStack.secCompProfile"),
            "{found:#?}"
        );
    }
}

/// applicationMonitoring without useCSIDriver follows the installed driver: a missing driver is no error
/// (pods download the code modules); with useCSIDriver: true it is.
#[test]
fn only_a_required_csi_driver_is_an_error_when_missing() {
    let missing = || ClusterView {
        csi_driver_installed: Some(false),
        ..Default::default()
    };
    let follows = dynakube(json!({ "apiUrl": API_URL, "oneAgent": { "applicationMonitoring": {} } }));
    assert_eq!(errors_in(&follows, missing()), Vec::<String>::new());
    let never = dynakube(
        json!({ "apiUrl": API_URL, "oneAgent": { "applicationMonitoring": { "useCSIDriver": false } } }),
    );
    assert_eq!(errors_in(&never, missing()), Vec::<String>::new());
    let required = dynakube(
        json!({ "apiUrl": API_URL, "oneAgent": { "applicationMonitoring": { "useCSIDriver": true } } }),
    );
    let found = errors_in(&required, missing());
    assert!(
        found.len() == 1 && found[0].contains("needs the CSI driver"),
        "{found:#?}"
    );
}

/// Two DynaKubes may not both claim a namespace, whether they inject into it or enrich it.
#[test]
fn metadata_enrichment_selectors_conflict_like_injection_selectors() {
    let with = |name: &str, inject: Value, enrich: Value| {
        dynakube_in(
            "dynatrace",
            name,
            json!({
                "apiUrl": API_URL,
                "namespaceSelector": inject,
                "metadataEnrichment": { "namespaceSelector": enrich },
                "oneAgent": { "applicationMonitoring": {} },
            }),
            json!({}),
        )
    };
    let a = with(
        "a",
        json!({ "matchLabels": { "team": "a" } }),
        json!({ "matchLabels": { "enrich": "a" } }),
    );
    let namespaces = [
        namespace("shop", json!({ "team": "a" })),
        namespace("blog", json!({ "team": "b", "enrich": "a" })),
    ];
    let dynakubes = [a];
    let cluster = ClusterView {
        dynakubes: &dynakubes,
        namespaces: &namespaces,
        ..Default::default()
    };
    // b injects into blog, which a enriches.
    let b = with(
        "b",
        json!({ "matchLabels": { "team": "b" } }),
        json!({ "matchLabels": { "enrich": "b" } }),
    );
    let found = errors_in(&b, cluster);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("dynatrace/a")
            && found[0].contains("blog")
            && found[0].contains("spec.metadataEnrichment.namespaceSelector"),
        "{found:#?}"
    );
    // c enriches shop, which a injects into.
    let c = with(
        "c",
        json!({ "matchLabels": { "team": "c" } }),
        json!({ "matchLabels": { "team": "a" } }),
    );
    assert_eq!(errors_in(&c, cluster).len(), 1);
    // d claims neither.
    let d = with(
        "d",
        json!({ "matchLabels": { "team": "d" } }),
        json!({ "matchLabels": { "enrich": "d" } }),
    );
    assert_eq!(errors_in(&d, cluster), Vec::<String>::new());
}

#[test]
fn the_metadata_enrichment_field_and_flag_together_warn_that_the_field_wins() {
    let both = with_flags(
        json!({ "apiUrl": API_URL, "metadataEnrichment": { "enabled": true }, "oneAgent": { "applicationMonitoring": {} } }),
        json!({ "feature.dynatrace.com/metadata-enrichment": "false" }),
    );
    let warnings = validate(&both, &ClusterView::default(), &ProxySecret::NotLookedUp).warnings;
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("spec.metadataEnrichment.enabled") && w.contains("the field wins")),
        "{warnings:#?}"
    );
    let field_only = dynakube(
        json!({ "apiUrl": API_URL, "metadataEnrichment": { "enabled": true }, "oneAgent": { "applicationMonitoring": {} } }),
    );
    let warnings = validate(&field_only, &ClusterView::default(), &ProxySecret::NotLookedUp).warnings;
    assert!(
        !warnings.iter().any(|w| w.contains("metadataEnrichment")),
        "{warnings:#?}"
    );
}

/// A classicFullStack DynaKube enriching through its own selector claims namespaces like an injecting one:
/// sharing one with an injecting DynaKube is a conflict, both ways; without the selector it claims none.
#[test]
fn enrichment_only_dynakubes_conflict_with_injecting_ones() {
    let classic = |name: &str, enrich: Option<Value>| {
        let mut spec = json!({ "apiUrl": API_URL, "oneAgent": { "classicFullStack": {} } });
        if let Some(enrich) = enrich {
            spec["metadataEnrichment"] = json!({ "namespaceSelector": enrich });
        }
        dynakube_in("dynatrace", name, spec, json!({}))
    };
    let app = dynakube_in(
        "dynatrace",
        "app",
        json!({
            "apiUrl": API_URL,
            "namespaceSelector": { "matchLabels": { "team": "a" } },
            "oneAgent": { "applicationMonitoring": {} },
        }),
        json!({}),
    );
    let namespaces = [
        namespace("shop", json!({ "team": "a" })),
        namespace("blog", json!({ "team": "b" })),
    ];
    let claiming = classic("classic", Some(json!({ "matchLabels": { "team": "a" } })));
    let elsewhere = classic("elsewhere", Some(json!({ "matchLabels": { "team": "b" } })));
    let unselected = classic("plain", None);

    let with_app = [app.clone()];
    let cluster = ClusterView {
        dynakubes: &with_app,
        namespaces: &namespaces,
        ..Default::default()
    };
    let found = errors_in(&claiming, cluster);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("dynatrace/app")
            && found[0].contains("shop")
            && found[0].contains("spec.metadataEnrichment.namespaceSelector"),
        "{found:#?}"
    );
    assert_eq!(errors_in(&elsewhere, cluster), Vec::<String>::new());
    assert_eq!(errors_in(&unselected, cluster), Vec::<String>::new());

    let with_classic = [claiming];
    let cluster = ClusterView {
        dynakubes: &with_classic,
        namespaces: &namespaces,
        ..Default::default()
    };
    let found = errors_in(&app, cluster);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("dynatrace/classic") && found[0].contains("shop"),
        "{found:#?}"
    );
}
