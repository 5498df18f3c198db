//! Properties over generated pods and DynaKubes: the patch turns the pod into the mutated pod, mutation
//! is idempotent, the result is a valid pod, `restricted` pods stay `restricted`, and a reinvocation
//! after a container was appended touches only that container and the init container's container list.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSecurityContext, PodSpec,
    SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use proptest::prelude::*;
use pure_api::dynakube::DynaKube;
use serde_json::json;

use crate::names::{self, INIT_CONTAINER_NAME, env};
use crate::test_support::{Facts, apply, dynakube, init_containers, map};
use crate::tests::restricted_violations;
use crate::{PodResult, Skip};

const LIB: &str = "/opt/dynatrace/oneagent-paas/agent/lib64/liboneagentproc.so";

fn literal(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn env_vars() -> impl Strategy<Value = Vec<EnvVar>> {
    let preload = prop_oneof![
        Just(None),
        Just(Some(literal("LD_PRELOAD", ""))),
        Just(Some(literal("LD_PRELOAD", "/lib/a.so"))),
        Just(Some(literal("LD_PRELOAD", "/lib/a.so /lib/b.so"))),
        Just(Some(literal("LD_PRELOAD", LIB))),
        Just(Some(EnvVar {
            name: "LD_PRELOAD".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.annotations['preload']".into(),
                    api_version: None,
                }),
                ..Default::default()
            }),
        })),
    ];
    (
        preload,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(preload, foo, zone, metadata, release)| {
            let mut vars = Vec::new();
            if foo {
                vars.push(literal("FOO", "bar"));
            }
            vars.extend(preload);
            if zone {
                vars.push(literal(env::DT_NETWORK_ZONE, "mine"));
            }
            if metadata {
                vars.push(literal(env::DT_DEPLOYMENT_METADATA, "copied"));
            }
            if release {
                vars.push(literal(env::DT_RELEASE_VERSION, "9"));
            }
            vars
        })
}

fn seccomp() -> impl Strategy<Value = Option<SeccompProfile>> {
    prop_oneof![
        Just(None),
        Just(Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None
        })),
        Just(Some(SeccompProfile {
            type_: "Localhost".into(),
            localhost_profile: Some("p.json".into())
        })),
    ]
}

fn container_security() -> impl Strategy<Value = Option<SecurityContext>> {
    let ids = prop_oneof![Just(None), Just(Some(0_i64)), Just(Some(1000_i64))];
    let groups = prop_oneof![Just(None), Just(Some(0_i64)), Just(Some(2000_i64))];
    proptest::option::weighted(
        0.7,
        (
            ids,
            groups,
            proptest::option::of(any::<bool>()),
            seccomp(),
            proptest::option::of(any::<bool>()),
            any::<bool>(),
        )
            .prop_map(
                |(user, group, non_root, seccomp, escalation, drop_all)| SecurityContext {
                    run_as_user: user,
                    run_as_group: group,
                    run_as_non_root: non_root,
                    seccomp_profile: seccomp,
                    allow_privilege_escalation: escalation,
                    capabilities: drop_all.then(|| Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        add: None,
                    }),
                    ..Default::default()
                },
            ),
    )
}

fn container(name: String) -> impl Strategy<Value = Container> {
    (
        proptest::option::of("[a-z]{1,8}(:[0-9]{1,3})?"),
        env_vars(),
        any::<bool>(),
        container_security(),
    )
        .prop_map(move |(image, env, data, security)| Container {
            name: name.clone(),
            image,
            env: (!env.is_empty()).then_some(env),
            volume_mounts: data.then(|| {
                vec![VolumeMount {
                    name: "data".into(),
                    mount_path: "/data".into(),
                    ..Default::default()
                }]
            }),
            security_context: security,
            ..Default::default()
        })
}

fn pod_annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    let choices: Vec<(&str, Vec<&str>)> = vec![
        (names::ANNOTATION_INJECT, vec!["true", "false", "yes"]),
        (names::ANNOTATION_ONEAGENT_INJECT, vec!["true", "false"]),
        (names::ANNOTATION_DATA_INGEST_INJECT, vec!["true", "false"]),
        (names::ANNOTATION_INSTALL_PATH, vec!["/opt/custom", "/opt/x/"]),
        (names::ANNOTATION_TECHNOLOGIES, vec!["java,go", "all"]),
        (names::ANNOTATION_FAILURE_POLICY, vec!["fail", "silent", "odd"]),
        (names::ANNOTATION_FLAVOR, vec!["musl"]),
        (names::ANNOTATION_ONEAGENT_INJECTED, vec!["true"]),
    ];
    let entries: Vec<_> = choices
        .into_iter()
        .map(|(key, values)| {
            proptest::option::weighted(0.25, proptest::sample::select(values))
                .prop_map(move |v| v.map(|v| (key.to_owned(), v.to_owned())))
        })
        .collect();
    entries.prop_map(|pairs| pairs.into_iter().flatten().collect())
}

fn pods() -> impl Strategy<Value = Pod> {
    (
        (1_usize..4).prop_flat_map(|n| (0..n).map(|i| container(format!("c{i}"))).collect::<Vec<_>>()),
        pod_annotations(),
        proptest::option::of(prop_oneof![Just(0_i64), Just(1000), Just(3000)]),
        proptest::option::of(prop_oneof![Just(0_i64), Just(4000)]),
        proptest::option::of(any::<bool>()),
        seccomp(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(containers, annotations, user, group, non_root, seccomp, named, setup, harden)| {
                let pod = Pod {
                    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                        name: named.then(|| "web-abc-xyz".to_owned()),
                        generate_name: Some("web-abc-".to_owned()),
                        namespace: Some("shop".to_owned()),
                        annotations: (!annotations.is_empty()).then_some(annotations),
                        ..Default::default()
                    },
                    spec: Some(PodSpec {
                        containers,
                        init_containers: setup.then(|| {
                            vec![Container {
                                name: "setup".into(),
                                image: Some("s".into()),
                                ..Default::default()
                            }]
                        }),
                        volumes: Some(vec![pure_desired::pod::empty_dir_volume("data")]),
                        security_context: Some(PodSecurityContext {
                            run_as_user: user,
                            run_as_group: group,
                            run_as_non_root: non_root,
                            seccomp_profile: seccomp,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    status: None,
                };
                if harden { restricted(pod) } else { pod }
            },
        )
}

/// `pod` changed as little as needed to pass `restricted`, keeping where each setting is made.
fn restricted(mut pod: Pod) -> Pod {
    let spec = pod.spec.as_mut().unwrap();
    let pod_sc = spec.security_context.get_or_insert_with(Default::default);
    if pod_sc.run_as_user == Some(0) {
        pod_sc.run_as_user = Some(1000);
    }
    pod_sc.run_as_non_root = Some(true);
    let pod_seccomp = pod_sc.seccomp_profile.is_some();
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        let sc = c.security_context.get_or_insert_with(Default::default);
        sc.allow_privilege_escalation = Some(false);
        sc.capabilities = Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        });
        if sc.run_as_non_root == Some(false) {
            sc.run_as_non_root = None;
        }
        if sc.run_as_user == Some(0) {
            sc.run_as_user = Some(1000);
        }
        if !pod_seccomp && sc.seccomp_profile.is_none() {
            sc.seccomp_profile = Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            });
        }
    }
    pod
}

fn dynakubes() -> impl Strategy<Value = DynaKube> {
    let flags = [
        ("injection-readonly-volume", "true"),
        ("label-version-detection", "true"),
        ("metadata-enrichment", "false"),
        ("automatic-injection", "false"),
        ("webhook-reinvocation-policy", "false"),
        ("injection-failure-policy", "fail"),
        ("init-container-seccomp-profile", "true"),
        ("oneagent-initial-connect-retry-ms", "100"),
    ];
    (
        prop_oneof![
            Just(json!({ "cloudNativeFullStack": {} })),
            Just(json!({ "applicationMonitoring": {} })),
            Just(json!({ "applicationMonitoring": { "useCSIDriver": true } })),
        ],
        proptest::sample::subsequence(flags.to_vec(), 0..=3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(one_agent, flags, zone, tls)| {
            let mut dk = dynakube("dk", one_agent);
            dk.metadata.annotations = Some(
                flags
                    .iter()
                    .map(|(k, v)| (format!("feature.dynatrace.com/{k}"), (*v).to_owned()))
                    .collect(),
            );
            if zone {
                dk.spec.network_zone = Some("eu".into());
            }
            if tls {
                dk.spec.active_gate = serde_json::from_value(json!({ "tlsSecretName": "ag" })).unwrap();
            }
            dk
        })
}

fn facts() -> impl Strategy<Value = Facts> {
    (
        dynakubes(),
        any::<bool>(),
        proptest::bool::weighted(0.85),
        proptest::bool::weighted(0.85),
        any::<bool>(),
    )
        .prop_map(|(dk, csi, init_secret, enrichment_secret, mapping)| {
            let mut facts = Facts::new(dk, csi);
            facts.init_secret = init_secret;
            facts.enrichment_secret = enrichment_secret;
            if mapping {
                facts.annotations = map(&[("mapping.release.dynatrace.com/stage", "metadata.labels['s']")]);
            }
            facts
        })
}

/// Structural validity the API server checks: unique volume and container names, every mount names a
/// volume, one mount per path in a container, no duplicate variable that we added.
fn validity_problems(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    let volumes: Vec<&Volume> = spec.volumes.iter().flatten().collect();
    let mut problems = Vec::new();
    let mut names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        problems.push(format!("duplicate volumes {names:?}"));
    }
    let containers: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut container_names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    container_names.sort_unstable();
    if container_names.windows(2).any(|w| w[0] == w[1]) {
        problems.push(format!("duplicate containers {container_names:?}"));
    }
    for c in containers {
        let mut paths = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            if !names.contains(&m.name.as_str()) {
                problems.push(format!("{}: mount of missing volume {}", c.name, m.name));
            }
            if paths.contains(&&m.mount_path) {
                problems.push(format!("{}: two mounts at {}", c.name, m.mount_path));
            }
            paths.push(&m.mount_path);
        }
        for ours in [
            env::LD_PRELOAD,
            env::DT_DEPLOYMENT_METADATA,
            env::CONTAINERS_COUNT,
        ] {
            if c.env.iter().flatten().filter(|v| v.name == ours).count() > 1 {
                problems.push(format!("{}: {ours} twice", c.name));
            }
        }
    }
    problems
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn patch_gives_the_mutated_pod_and_mutation_is_idempotent(pod in pods(), facts in facts()) {
        let (outcome, mutated) = crate::mutate(&facts.request(&pod));
        let patched = apply(&pod, &outcome.patch);
        prop_assert_eq!(&patched, &mutated);
        match &outcome.result {
            PodResult::Unchanged(_) => prop_assert!(outcome.patch.0.is_empty()),
            PodResult::Injected | PodResult::Updated => prop_assert!(!outcome.patch.0.is_empty()),
        }
        let (again, twice) = crate::mutate(&facts.request(&patched));
        prop_assert!(again.patch.0.is_empty(), "second mutation patched: {:?} {:?}", again.result, again.patch);
        prop_assert_eq!(&twice, &patched);
        prop_assert!(matches!(again.result, PodResult::Unchanged(_)));
        prop_assert_eq!(validity_problems(&patched), Vec::<String>::new());
        if restricted_violations(&pod).is_empty() {
            prop_assert_eq!(restricted_violations(&patched), Vec::<String>::new());
        }
        if outcome.result == PodResult::Injected {
            let ours = init_containers(&patched).iter().filter(|c| c.name == INIT_CONTAINER_NAME).count();
            prop_assert_eq!(ours, 1);
            prop_assert_eq!(init_containers(&patched).last().map(|c| c.name.as_str()), Some(INIT_CONTAINER_NAME));
        }
    }

    #[test]
    fn reinvocation_after_an_appended_container_touches_only_it(
        pod in pods(),
        facts in facts(),
        late in container("late".to_owned()),
    ) {
        let (outcome, first) = crate::mutate(&facts.request(&pod));
        prop_assume!(outcome.result == PodResult::Injected);
        let mut added = first.clone();
        added.spec.as_mut().unwrap().containers.push(late);
        let (outcome, second) = crate::mutate(&facts.request(&added));
        let reinvocation_on = facts
            .dynakube
            .as_ref()
            .unwrap()
            .feature_flags()
            .webhook_reinvocation_policy();
        if !reinvocation_on {
            prop_assert_eq!(outcome.result, PodResult::Unchanged(Skip::AlreadyInjected));
            return Ok(());
        }
        prop_assert_eq!(&second.metadata, &first.metadata);
        let (before, after) = (first.spec.as_ref().unwrap(), second.spec.as_ref().unwrap());
        prop_assert_eq!(&before.volumes, &after.volumes);
        prop_assert_eq!(&before.containers[..], &after.containers[..before.containers.len()]);
        let init_before = init_containers(&first);
        let init_after = init_containers(&second);
        prop_assert_eq!(init_before.len(), init_after.len());
        for (b, a) in init_before.iter().zip(init_after) {
            let strip = |c: &Container| {
                let mut c = c.clone();
                if let Some(env) = c.env.as_mut() {
                    env.retain(|v| v.name != env::CONTAINERS_COUNT && !env::is_container_var(&v.name));
                }
                c
            };
            prop_assert_eq!(strip(b), strip(a), "only the container list of the init container changes");
        }
        let ours = init_after.iter().find(|c| c.name == INIT_CONTAINER_NAME).unwrap();
        if crate::test_support::env(ours, env::ONEAGENT_INJECTED) == Some("true") {
            let count = after.containers.len();
            let count_text = count.to_string();
            prop_assert_eq!(crate::test_support::env(ours, env::CONTAINERS_COUNT), Some(count_text.as_str()));
            prop_assert_eq!(crate::test_support::env(ours, &env::container_name(count)), Some("late"));
        }
        let (again, _) = crate::mutate(&facts.request(&second));
        prop_assert!(again.patch.0.is_empty());
    }
}
