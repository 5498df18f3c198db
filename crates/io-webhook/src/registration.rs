//! Registering the webhooks with the API server: the CRDs (whose conversion points at the webhook), the
//! ValidatingWebhookConfiguration and the MutatingWebhookConfiguration.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt as _};
use pure_api::crd::ConversionEndpoint;

/// Name of the validating webhook, as in the reference's Helm chart.
pub const VALIDATING_WEBHOOK_NAME: &str = pure_install::VALIDATING_WEBHOOK_NAME;

/// A ValidatingWebhookConfiguration that sends DynaKube and OneAgent creates and updates to `url` (the
/// server's `/validate`), trusting `ca_pem`, for the namespaces `namespace_selector` picks (all if `None`).
/// The rules are the installation's ([`pure_install::validating_webhook_configuration`]); only the client
/// differs.
pub fn validating_configuration(
    name: &str,
    url: &str,
    ca_pem: &str,
    namespace_selector: Option<LabelSelector>,
) -> ValidatingWebhookConfiguration {
    let client = WebhookClientConfig {
        url: Some(url.to_owned()),
        ca_bundle: Some(k8s_openapi::ByteString(ca_pem.as_bytes().to_vec())),
        service: None,
    };
    let mut configuration = pure_install::validating_webhook_configuration(name, client);
    for webhook in configuration.webhooks.iter_mut().flatten() {
        webhook.namespace_selector = namespace_selector.clone();
    }
    configuration
}

/// A MutatingWebhookConfiguration that sends pod creates in mapped namespaces to `<base_url>/inject` and
/// namespace creates and updates to `<base_url>/label-ns`, trusting `ca_pem`. The rules are the
/// installation's ([`pure_install::mutating_webhook_configuration`]); only the clients differ.
pub fn mutating_configuration(name: &str, base_url: &str, ca_pem: &str) -> MutatingWebhookConfiguration {
    let client = |path: &str| WebhookClientConfig {
        url: Some(format!("{}{path}", base_url.trim_end_matches('/'))),
        ca_bundle: Some(k8s_openapi::ByteString(ca_pem.as_bytes().to_vec())),
        service: None,
    };
    pure_install::mutating_webhook_configuration(
        name,
        client(pure_install::INJECT_PATH),
        client(pure_install::LABEL_NAMESPACE_PATH),
    )
}

/// Applies a MutatingWebhookConfiguration (server-side, as `field_manager`).
pub async fn apply_mutating_configuration(
    client: &Client,
    configuration: &MutatingWebhookConfiguration,
    field_manager: &str,
) -> kube::Result<()> {
    apply_cluster_object(client, configuration, field_manager).await
}

/// Applies a cluster-scoped object server-side as `field_manager`, taking over conflicting fields.
async fn apply_cluster_object<K>(client: &Client, object: &K, field_manager: &str) -> kube::Result<()>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::all(client.clone())
        .patch(
            &object.name_any(),
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(object),
        )
        .await
        .map(drop)
}

/// Applies the CRDs (server-side, as `field_manager`) with conversion through `endpoint`, and waits up to
/// 30 s until the API server serves them, so that the caller can create resources at once.
pub async fn apply_crds(
    client: &Client,
    endpoint: &ConversionEndpoint,
    field_manager: &str,
) -> kube::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let all = pure_api::crd::all(endpoint);
    for crd in &all {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(crd),
        )
        .await?;
    }
    for crd in &all {
        let name = crd.name_any();
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        match tokio::time::timeout(std::time::Duration::from_secs(30), established).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(crd = %name, %error, "cannot watch the CRD until it is established")
            }
            Err(_) => {
                tracing::warn!(crd = %name, "the CRD is not established after 30 s; creating resources may fail")
            }
        }
    }
    Ok(())
}

/// Applies a ValidatingWebhookConfiguration (server-side, as `field_manager`).
pub async fn apply_validating_configuration(
    client: &Client,
    configuration: &ValidatingWebhookConfiguration,
    field_manager: &str,
) -> kube::Result<()> {
    apply_cluster_object(client, configuration, field_manager).await
}
