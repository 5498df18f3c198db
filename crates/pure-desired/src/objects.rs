//! The small objects around the OneAgent (spec §1.7): the tenant-token Secret, the connection-info and
//! deployment-metadata ConfigMaps and the pull Secret. Each is in the DynaKube's namespace, with the
//! operator's labels, and owned by the DynaKube ([`owned_metadata`]).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pure_api::dynakube::{DynaKube, names};

use crate::DesiredError;
use crate::owner::owned_metadata;
use crate::pod::{LABEL_CREATED_BY, LABEL_MANAGED_BY, LABEL_NAME};
use crate::versions::tenant_registry;

/// Key of the tenant token in the tenant Secret.
pub const TENANT_TOKEN_KEY: &str = "tenant-token";
/// Key of the environment's UUID in the connection-info ConfigMap.
pub const TENANT_UUID_KEY: &str = "tenant-uuid";
/// Key of the formatted communication endpoints in the connection-info ConfigMap.
pub const COMMUNICATION_ENDPOINTS_KEY: &str = "communication-endpoints";
/// Key of the OneAgent deployment metadata in the deployment-metadata ConfigMap.
pub const ONEAGENT_METADATA_KEY: &str = "oneagent";
/// Key of the operator version in the deployment-metadata ConfigMap.
pub const OPERATOR_VERSION_KEY: &str = "operator";
/// Key of the Docker configuration in the pull Secret.
pub const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";
/// Type of the pull Secret.
pub const DOCKER_CONFIG_TYPE: &str = "kubernetes.io/dockerconfigjson";

const HINT_FROM_API_SERVER: &str = "pass the DynaKube as read from the API server, which always sets it";

/// The DynaKube's name, after checking that it has a name and a namespace, which every object here needs.
fn checked_name(dynakube: &DynaKube) -> Result<String, DesiredError> {
    let name = dynakube
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or(DesiredError::Missing {
            dynakube: String::new(),
            field: "metadata.name",
            hint: HINT_FROM_API_SERVER,
        })?;
    if dynakube.metadata.namespace.as_deref().is_none_or(str::is_empty) {
        return Err(DesiredError::Missing {
            dynakube: name,
            field: "metadata.namespace",
            hint: HINT_FROM_API_SERVER,
        });
    }
    Ok(name)
}

fn require(dynakube: &str, value: &str, field: &'static str, hint: &'static str) -> Result<(), DesiredError> {
    if value.is_empty() {
        return Err(DesiredError::Missing {
            dynakube: dynakube.to_owned(),
            field,
            hint,
        });
    }
    Ok(())
}

/// Metadata of the object named `object` made for the DynaKube named `name`: in its namespace, with the
/// operator's labels, owned by it.
fn metadata(dynakube: &DynaKube, name: &str, object: String) -> Result<ObjectMeta, DesiredError> {
    let labels = BTreeMap::from([
        (LABEL_NAME.to_owned(), "dynatrace-operator".to_owned()),
        (LABEL_CREATED_BY.to_owned(), name.to_owned()),
        (LABEL_MANAGED_BY.to_owned(), "dynatrace-operator".to_owned()),
    ]);
    owned_metadata(dynakube, object, labels)
}

/// The Secret `<dk>-oneagent-tenant-secret` with the tenant token (key `tenant-token`) that the OneAgents
/// mount. An empty token is an error: OneAgents could not connect with it.
pub fn tenant_secret(dynakube: &DynaKube, tenant_token: &str) -> Result<Secret, DesiredError> {
    let name = checked_name(dynakube)?;
    require(
        &name,
        tenant_token,
        "the tenant token",
        "take it from the connection info of the environment before writing the Secret",
    )?;
    Ok(Secret {
        metadata: metadata(dynakube, &name, names::tenant_secret(&name))?,
        data: Some(BTreeMap::from([(
            TENANT_TOKEN_KEY.to_owned(),
            ByteString(tenant_token.as_bytes().to_vec()),
        )])),
        // What the API server fills in anyway; set so that the desired Secret equals the stored one.
        type_: Some("Opaque".to_owned()),
        ..Default::default()
    })
}

/// The ConfigMap `<dk>-oneagent-connection-info`: the environment's UUID (`tenant-uuid`) and the formatted
/// communication endpoints (`communication-endpoints`) that the OneAgents read through `DT_TENANT` and
/// `DT_SERVER`. Both must be non-empty: the reference writes the connection info only once it has hosts.
pub fn connection_info_config_map(
    dynakube: &DynaKube,
    tenant_uuid: &str,
    formatted_endpoints: &str,
) -> Result<ConfigMap, DesiredError> {
    let name = checked_name(dynakube)?;
    let hint = "take it from the connection info of the environment before writing the ConfigMap";
    require(&name, tenant_uuid, "the tenant UUID", hint)?;
    require(&name, formatted_endpoints, "the communication endpoints", hint)?;
    Ok(ConfigMap {
        metadata: metadata(dynakube, &name, names::connection_info_config_map(&name))?,
        data: Some(BTreeMap::from([
            (TENANT_UUID_KEY.to_owned(), tenant_uuid.to_owned()),
            (
                COMMUNICATION_ENDPOINTS_KEY.to_owned(),
                formatted_endpoints.to_owned(),
            ),
        ])),
        ..Default::default()
    })
}

/// The ConfigMap `<dk>-deployment-metadata`, read by the OneAgents through `DT_DEPLOYMENT_METADATA` and
/// `DT_OPERATOR_VERSION`:
/// - `oneagent`, when the DynaKube sets a mode: the [`deployment_metadata`] string for the mode
///   (`classic_fullstack`, `host_monitoring`, `cloud_native_fullstack`, `application_monitoring`);
/// - `operator`: the operator version.
///
/// The reference also writes `activegate` (`orchestration_tech=Operator-activegate;...`), but only for a
/// DynaKube that deploys an ActiveGate, which this operator never does; so there is no `activegate` key.
/// The reference writes `oneagent` only for modes with a OneAgent DaemonSet; it is written for
/// applicationMonitoring too, so that injection can read the same string.
pub fn deployment_metadata_config_map(
    dynakube: &DynaKube,
    cluster_id: &str,
    operator_version: &str,
) -> Result<ConfigMap, DesiredError> {
    let name = checked_name(dynakube)?;
    require(
        &name,
        cluster_id,
        "the cluster id (UID of the kube-system namespace)",
        "read the kube-system namespace before writing the ConfigMap",
    )?;
    require(
        &name,
        operator_version,
        "the operator version",
        "pass the version this operator was built as",
    )?;
    let mut data = BTreeMap::from([(OPERATOR_VERSION_KEY.to_owned(), operator_version.to_owned())]);
    if let Some(mode) = dynakube.mode() {
        data.insert(
            ONEAGENT_METADATA_KEY.to_owned(),
            deployment_metadata(mode.metadata_name(), cluster_id, operator_version),
        );
    }
    Ok(ConfigMap {
        metadata: metadata(dynakube, &name, names::deployment_metadata_config_map(&name))?,
        data: Some(data),
        ..Default::default()
    })
}

/// The deployment-metadata string: `orchestration_tech=Operator-<deployment type>;script_version=<operator
/// version>;orchestrator_id=<cluster id>`.
pub fn deployment_metadata(deployment_type: &str, cluster_id: &str, operator_version: &str) -> String {
    format!(
        "orchestration_tech=Operator-{deployment_type};script_version={operator_version};\
         orchestrator_id={cluster_id}"
    )
}

/// The pull Secret `<dk>-pull-secret` for the environment's registry, or `None` when
/// `spec.customPullSecret` names the user's own. `.dockerconfigjson` has one entry under `auths`, keyed by
/// the `apiUrl` host (with an explicit port, as in image names): username = the environment id from the
/// URL, password = `paas_or_api_token` (the PaaS token, else the API token), auth = base64 of
/// `username:password`.
pub fn pull_secret(dynakube: &DynaKube, paas_or_api_token: &str) -> Result<Option<Secret>, DesiredError> {
    if dynakube
        .spec
        .custom_pull_secret
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        return Ok(None);
    }
    let name = checked_name(dynakube)?;
    let invalid_url = || DesiredError::InvalidApiUrl {
        dynakube: name.clone(),
        api_url: dynakube.spec.api_url.clone(),
    };
    let registry = tenant_registry(&dynakube.spec.api_url).ok_or_else(invalid_url)?;
    let username = dynakube.tenant_uuid().ok_or_else(invalid_url)?;
    require(
        &name,
        paas_or_api_token,
        "the token for the pull Secret",
        "read paasToken (or apiToken) from the token Secret before writing the pull Secret",
    )?;
    let auth = BASE64.encode(format!("{username}:{paas_or_api_token}"));
    let config = serde_json::json!({
        "auths": { registry: { "username": username, "password": paas_or_api_token, "auth": auth } }
    });
    Ok(Some(Secret {
        metadata: metadata(dynakube, &name, names::pull_secret(&name))?,
        data: Some(BTreeMap::from([(
            DOCKER_CONFIG_KEY.to_owned(),
            ByteString(config.to_string().into_bytes()),
        )])),
        type_: Some(DOCKER_CONFIG_TYPE.to_owned()),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dynakube(one_agent: serde_json::Value) -> DynaKube {
        serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1beta1",
            "kind": "DynaKube",
            "metadata": { "name": "dk", "namespace": "dynatrace", "uid": "dk-uid" },
            "spec": { "apiUrl": "https://abc12345.live.dynatrace.com/api", "oneAgent": one_agent }
        }))
        .unwrap()
    }

    fn classic() -> DynaKube {
        dynakube(json!({ "classicFullStack": {} }))
    }

    fn assert_meta(meta: &ObjectMeta, name: &str) {
        assert_eq!(meta.name.as_deref(), Some(name));
        assert_eq!(meta.namespace.as_deref(), Some("dynatrace"));
        assert_eq!(
            meta.labels.clone().unwrap(),
            BTreeMap::from([
                (
                    "app.kubernetes.io/name".to_owned(),
                    "dynatrace-operator".to_owned()
                ),
                ("app.kubernetes.io/created-by".to_owned(), "dk".to_owned()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "dynatrace-operator".to_owned()
                ),
            ])
        );
        assert_eq!(meta.annotations, None);
        let owners = meta.owner_references.clone().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (
                owners[0].kind.as_str(),
                owners[0].name.as_str(),
                owners[0].uid.as_str()
            ),
            ("DynaKube", "dk", "dk-uid")
        );
        assert_eq!(
            (owners[0].controller, owners[0].block_owner_deletion),
            (Some(true), Some(true))
        );
    }

    fn secret_data(secret: &Secret) -> BTreeMap<&str, &[u8]> {
        secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.0.as_slice()))
            .collect()
    }

    fn missing_field(err: DesiredError) -> &'static str {
        match err {
            DesiredError::Missing { field, .. } => field,
            other => panic!("not Missing: {other:?}"),
        }
    }

    #[test]
    fn tenant_secret_contents() {
        let secret = tenant_secret(&classic(), "tenant-token-value").unwrap();
        assert_meta(&secret.metadata, "dk-oneagent-tenant-secret");
        assert_eq!(
            secret_data(&secret),
            BTreeMap::from([("tenant-token", &b"tenant-token-value"[..])])
        );
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        assert_eq!(secret.string_data, None);
    }

    #[test]
    fn every_object_needs_the_dynakubes_uid_to_name_its_owner() {
        let mut dk = classic();
        dk.metadata.uid = None;
        let no_owner = |result: Result<(), DesiredError>| {
            assert!(
                matches!(result, Err(DesiredError::NoOwnerUid { .. })),
                "{result:?}"
            );
        };
        no_owner(tenant_secret(&dk, "t").map(drop));
        no_owner(connection_info_config_map(&dk, "u", "e").map(drop));
        no_owner(deployment_metadata_config_map(&dk, "c", "v").map(drop));
        no_owner(pull_secret(&dk, "t").map(drop));
    }

    #[test]
    fn tenant_secret_needs_a_token_name_and_namespace() {
        let err = tenant_secret(&classic(), "").unwrap_err();
        assert!(err.to_string().contains("the tenant token"), "{err}");
        let mut no_name = classic();
        no_name.metadata.name = None;
        assert_eq!(
            missing_field(tenant_secret(&no_name, "t").unwrap_err()),
            "metadata.name"
        );
        let mut no_namespace = classic();
        no_namespace.metadata.namespace = Some(String::new());
        assert_eq!(
            missing_field(tenant_secret(&no_namespace, "t").unwrap_err()),
            "metadata.namespace"
        );
    }

    #[test]
    fn connection_info_contents() {
        let endpoints = "https://a.live.dynatrace.com:443/communication,https://10.0.0.1:9999/communication";
        let cm = connection_info_config_map(&classic(), "abc12345", endpoints).unwrap();
        assert_meta(&cm.metadata, "dk-oneagent-connection-info");
        assert_eq!(
            cm.data.unwrap(),
            BTreeMap::from([
                ("tenant-uuid".to_owned(), "abc12345".to_owned()),
                ("communication-endpoints".to_owned(), endpoints.to_owned()),
            ])
        );
        assert_eq!(cm.binary_data, None);
    }

    #[test]
    fn connection_info_needs_uuid_and_endpoints() {
        assert_eq!(
            missing_field(connection_info_config_map(&classic(), "", "https://x").unwrap_err()),
            "the tenant UUID"
        );
        assert_eq!(
            missing_field(connection_info_config_map(&classic(), "abc", "").unwrap_err()),
            "the communication endpoints"
        );
    }

    #[test]
    fn deployment_metadata_per_mode() {
        for (mode, name) in [
            ("classicFullStack", "classic_fullstack"),
            ("hostMonitoring", "host_monitoring"),
            ("cloudNativeFullStack", "cloud_native_fullstack"),
            ("applicationMonitoring", "application_monitoring"),
        ] {
            let cm =
                deployment_metadata_config_map(&dynakube(json!({ mode: {} })), "uid-1", "0.1.0").unwrap();
            assert_meta(&cm.metadata, "dk-deployment-metadata");
            assert_eq!(
                cm.data.unwrap(),
                BTreeMap::from([
                    (
                        "oneagent".to_owned(),
                        format!(
                            "orchestration_tech=Operator-{name};script_version=0.1.0;orchestrator_id=uid-1"
                        )
                    ),
                    ("operator".to_owned(), "0.1.0".to_owned()),
                ]),
                "{mode}"
            );
        }
    }

    #[test]
    fn deployment_metadata_without_a_mode_has_only_the_operator_version() {
        for one_agent in [json!({}), json!({ "classicFullStack": {}, "hostMonitoring": {} })] {
            let cm = deployment_metadata_config_map(&dynakube(one_agent), "uid-1", "0.1.0").unwrap();
            assert_eq!(
                cm.data.unwrap(),
                BTreeMap::from([("operator".to_owned(), "0.1.0".to_owned())])
            );
        }
    }

    #[test]
    fn deployment_metadata_needs_cluster_id_and_version() {
        let err = deployment_metadata_config_map(&classic(), "", "0.1.0").unwrap_err();
        assert!(err.to_string().contains("kube-system"), "{err}");
        assert_eq!(
            missing_field(deployment_metadata_config_map(&classic(), "uid", "").unwrap_err()),
            "the operator version"
        );
    }

    fn docker_config(secret: &Secret) -> serde_json::Value {
        serde_json::from_slice(secret_data(secret)[".dockerconfigjson"]).unwrap()
    }

    #[test]
    fn pull_secret_contents() {
        let secret = pull_secret(&classic(), "dt0c01.TOKEN").unwrap().unwrap();
        assert_meta(&secret.metadata, "dk-pull-secret");
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
        assert_eq!(secret_data(&secret).len(), 1);
        let config = docker_config(&secret);
        assert_eq!(
            config,
            json!({ "auths": { "abc12345.live.dynatrace.com": {
                "username": "abc12345",
                "password": "dt0c01.TOKEN",
                "auth": "YWJjMTIzNDU6ZHQwYzAxLlRPS0VO",
            } } })
        );
        let auth = config["auths"]["abc12345.live.dynatrace.com"]["auth"]
            .as_str()
            .unwrap();
        assert_eq!(BASE64.decode(auth).unwrap(), b"abc12345:dt0c01.TOKEN");
    }

    #[test]
    fn pull_secret_for_managed_uses_the_environment_id_and_port() {
        let mut dk = classic();
        dk.spec.api_url = "https://managed.example:9999/e/1234-abcd/api".into();
        let secret = pull_secret(&dk, "tok").unwrap().unwrap();
        assert_eq!(
            docker_config(&secret),
            json!({ "auths": { "managed.example:9999": {
                "username": "1234-abcd",
                "password": "tok",
                "auth": BASE64.encode("1234-abcd:tok"),
            } } })
        );
    }

    #[test]
    fn no_pull_secret_with_a_custom_one() {
        let mut dk = classic();
        dk.spec.custom_pull_secret = Some("mine".into());
        assert_eq!(pull_secret(&dk, "tok"), Ok(None));
        dk.spec.custom_pull_secret = Some(String::new());
        assert!(
            pull_secret(&dk, "tok").unwrap().is_some(),
            "an empty name is no custom secret"
        );
    }

    #[test]
    fn pull_secret_errors() {
        let mut dk = classic();
        dk.spec.api_url = "not a url".into();
        assert_eq!(
            pull_secret(&dk, "tok"),
            Err(DesiredError::InvalidApiUrl {
                dynakube: "dk".into(),
                api_url: "not a url".into()
            })
        );
        let err = pull_secret(&classic(), "").unwrap_err();
        assert!(err.to_string().contains("paasToken (or apiToken)"), "{err}");
    }

    #[test]
    fn deployment_metadata_string() {
        assert_eq!(
            deployment_metadata("host_monitoring", "uid", "1.0.0"),
            "orchestration_tech=Operator-host_monitoring;script_version=1.0.0;orchestrator_id=uid"
        );
    }
}
