//! Namespace mapping (spec §4.1) and the Secrets replicated into mapped namespaces (§4.2).
//!
//! A namespace labelled `dynakube.internal.dynatrace.com/instance=<dk>` belongs to that DynaKube: its pods
//! get code modules injected, metadata enrichment, or both, as the DynaKube's selectors say
//! ([`pure_api::dynakube::NamespaceSelectors`]: `spec.namespaceSelector` for the code modules,
//! `spec.metadataEnrichment.namespaceSelector` for enrichment). A namespace is labelled when either selects
//! it; the webhook, which has the namespace's labels and the DynaKube in its caches, evaluates the two
//! selectors again to know which parts apply, so one label is enough. [`map_namespaces`] decides the label of every namespace from every DynaKube at once;
//! [`init_secret`] and [`data_ingest_secret`] build the Secrets each mapped namespace holds.
//!
//! Differences from the reference, on purpose:
//! - A namespace selected by two or more injecting DynaKubes does not abort the whole mapping (the
//!   reference stops at the first such namespace and its namespace webhook then rejects the namespace). It
//!   is reported as a [`Conflict`], gets no new label (it keeps its label when that names one of the
//!   DynaKubes selecting it, so nothing flaps), and every other namespace is still mapped.
//! - A DynaKube ignores a namespace for itself only; the reference skips the namespace for every DynaKube
//!   as soon as one ignores it.
//! - An invalid `namespaceSelector` freezes the DynaKube's mapping (its labels stay, no new ones) instead
//!   of aborting the run.
//! - A label naming a DynaKube that no longer injects, or no longer exists, is removed in the same run:
//!   the reference relied on the deleted DynaKube's not-found reconcile.
//! - The Secrets are identified by their labels, so the caller can delete them wherever a namespace is no
//!   longer mapped to their DynaKube (the reference never deletes them, weakness 10).

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use pure_api::dynakube::{DynaKube, Mode, NamespacePurposes, NamespaceSelectors, names};
use pure_api::selector::Labels;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::DesiredError;
use crate::pod::{LABEL_COMPONENT, LABEL_CREATED_BY, LABEL_NAME};
use crate::tokens::Tokens;

/// Namespace label naming the DynaKube that injects into the namespace's pods.
pub const INSTANCE_LABEL: &str = "dynakube.internal.dynatrace.com/instance";
/// Namespace annotation set with every label change the operator makes, so that the namespace webhook
/// knows the change is the operator's and does not map the namespace again (it removes the annotation).
pub const UPDATED_VIA_OPERATOR_ANNOTATION: &str = "dynatrace.com/updated-via-operator";
/// DynaKube condition type reporting namespaces that more than one DynaKube selects.
pub const NAMESPACE_CONFLICT_CONDITION: &str = "NamespaceConflict";
/// Reason of the [`NAMESPACE_CONFLICT_CONDITION`] while namespaces are selected by several DynaKubes.
pub const CONFLICT_REASON: &str = "SelectedByOtherDynaKubes";
/// Reason of the [`NAMESPACE_CONFLICT_CONDITION`] once the conflicts are gone.
pub const NO_CONFLICT_REASON: &str = "NoConflict";
/// Value of `app.kubernetes.io/name` on the per-namespace Secrets.
pub const OPERATOR_NAME: &str = "dynatrace-operator";
/// `app.kubernetes.io/component` of the init Secret.
pub const INIT_SECRET_COMPONENT: &str = "webhook";
/// `app.kubernetes.io/component` of the data-ingest Secret.
pub const DATA_INGEST_SECRET_COMPONENT: &str = "activegate";
/// Key of the init Secret with the JSON configuration of the init container.
pub const CONFIG_KEY: &str = "config";
/// Key of the init Secret with the proxy URL alone, so that it can be mounted without reading the Secret.
pub const PROXY_KEY: &str = "proxy";
/// Key of the data-ingest Secret.
pub const ENDPOINT_PROPERTIES_KEY: &str = "endpoint.properties";
/// `monitoringNodes` value of a node without a host OneAgent.
pub const NO_HOST_TENANT: &str = "-";
/// ActiveGate capability that routes metric ingest through the cluster's ActiveGate.
pub const METRICS_INGEST_CAPABILITY: &str = "metrics-ingest";
/// How many namespaces the conflict condition names before it only counts the rest.
const NAMED_CONFLICTS: usize = 10;

/// Identifies a DynaKube: its namespace and name. The namespace label holds the name only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DynaKubeRef {
    /// The DynaKube's namespace.
    pub namespace: String,
    /// The DynaKube's name (the value of [`INSTANCE_LABEL`]).
    pub name: String,
}

impl DynaKubeRef {
    /// The reference of a DynaKube as read from the API server.
    pub fn of(dynakube: &DynaKube) -> Self {
        Self {
            namespace: dynakube.metadata.namespace.clone().unwrap_or_default(),
            name: dynakube.metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for DynaKubeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The default ignored-namespace patterns of a DynaKube in `dynakube_namespace`: its own namespace and the
/// system namespaces of Kubernetes, OpenShift and GKE.
pub fn default_ignored_namespaces(dynakube_namespace: &str) -> Vec<String> {
    vec![
        format!("^{}$", regex::escape(dynakube_namespace)),
        "^kube-.*".to_owned(),
        "^openshift(-.*)?".to_owned(),
        "^gke-.*".to_owned(),
        "^gmp-.*".to_owned(),
    ]
}

/// The ignored-namespace patterns of a DynaKube: the `feature.dynatrace.com/ignored-namespaces` flag when
/// it holds a JSON array of strings (it replaces the defaults entirely), else
/// [`default_ignored_namespaces`].
pub fn ignored_namespace_patterns(dynakube: &DynaKube) -> Vec<String> {
    dynakube.feature_flags().ignored_namespaces().unwrap_or_else(|| {
        default_ignored_namespaces(dynakube.metadata.namespace.as_deref().unwrap_or_default())
    })
}

/// What the mapping needs to know about a namespace.
#[derive(Debug, Clone, Copy)]
pub struct NamespaceView<'a> {
    /// The namespace's name.
    pub name: &'a str,
    /// Its labels (including [`INSTANCE_LABEL`] when it has one).
    pub labels: Option<&'a Labels>,
}

impl<'a> NamespaceView<'a> {
    /// The DynaKube name in the namespace's [`INSTANCE_LABEL`], if any.
    pub fn current(&self) -> Option<&'a str> {
        self.labels?.get(INSTANCE_LABEL).map(String::as_str)
    }
}

/// A DynaKube that claims namespaces (cloudNativeFullStack or applicationMonitoring for both parts,
/// classicFullStack or hostMonitoring with an enrichment selector for enrichment only), prepared to be
/// matched against many namespaces: its ignored patterns are compiled once.
#[derive(Debug, Clone)]
pub struct Injector {
    /// The DynaKube.
    pub dynakube: DynaKubeRef,
    /// The injection and enrichment selectors.
    selectors: NamespaceSelectors,
    /// Why a selector is invalid; empty when both are valid.
    problems: Vec<String>,
    ignored: Vec<Regex>,
}

impl Injector {
    /// The injector of a DynaKube; `None` when it claims no namespace
    /// ([`NamespaceSelectors::claims_namespaces`]), has no name, or is being deleted (it has no finalizer,
    /// so it is about to go).
    pub fn new(dynakube: &DynaKube) -> Option<Self> {
        let selectors = dynakube.namespace_selectors();
        if !selectors.claims_namespaces()
            || dynakube.metadata.deletion_timestamp.is_some()
            || dynakube.metadata.name.as_deref().is_none_or(str::is_empty)
        {
            return None;
        }
        Some(Self {
            dynakube: DynaKubeRef::of(dynakube),
            problems: selectors.problems(),
            selectors,
            // An invalid pattern matches nothing, as in the reference (Go ignores the compile error).
            ignored: ignored_namespace_patterns(dynakube)
                .iter()
                .filter_map(|p| Regex::new(p).ok())
                .collect(),
        })
    }

    /// Whether one of the ignored patterns matches the namespace name (unanchored, like Go's
    /// `regexp.MatchString`: anchors are part of the patterns).
    pub fn ignores(&self, namespace: &str) -> bool {
        self.ignored.iter().any(|r| r.is_match(namespace))
    }

    /// Whether the DynaKube selects the namespace for injection or enrichment ([`Injector::purposes`]).
    pub fn selects(&self, namespace: &NamespaceView<'_>) -> bool {
        self.purposes(namespace).any()
    }

    /// What the DynaKube does in the namespace: nothing when it is ignored, else what its selectors match
    /// (an empty selector matches every namespace). With an invalid selector, exactly the namespaces that
    /// carry its label already stay selected, for both: nothing flaps until the selector is fixed.
    pub fn purposes(&self, namespace: &NamespaceView<'_>) -> NamespacePurposes {
        if self.ignores(namespace.name) {
            return NamespacePurposes::default();
        }
        if self.problems.is_empty() {
            let empty = Labels::new();
            self.selectors.purposes(namespace.labels.unwrap_or(&empty))
        } else {
            frozen(
                &self.selectors,
                namespace.current() == Some(self.dynakube.name.as_str()),
            )
        }
    }

    /// Why a namespace selector is invalid; empty when both are valid.
    pub fn selector_problems(&self) -> &[String] {
        &self.problems
    }
}

/// What a DynaKube does in a namespace labelled for it, for the pod webhook: what its selectors match
/// ([`pure_api::dynakube::NamespaceSelectors`]), or both while a selector is invalid (the mapping keeps
/// such labels, [`Injector::purposes`]). Ignored namespaces are not labelled, so they need no check here.
pub fn labelled_purposes(dynakube: &DynaKube, labels: &Labels) -> NamespacePurposes {
    let selectors = dynakube.namespace_selectors();
    if selectors.problems().is_empty() {
        selectors.purposes(labels)
    } else {
        frozen(&selectors, true)
    }
}

/// The purposes of a namespace while a selector is invalid: where it is labelled, every part the
/// DynaKube has turned on.
fn frozen(selectors: &NamespaceSelectors, labelled: bool) -> NamespacePurposes {
    NamespacePurposes {
        inject: labelled && selectors.inject.is_some(),
        enrich: labelled && selectors.enrich.is_some(),
    }
}

/// A namespace that more than one injecting DynaKube selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The namespace.
    pub namespace: String,
    /// Every DynaKube that selects it, sorted.
    pub dynakubes: Vec<DynaKubeRef>,
    /// The DynaKube whose label the namespace keeps: the one it was labelled with, if that is among them.
    pub kept: Option<DynaKubeRef>,
}

/// A label change on a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelChange {
    /// The namespace.
    pub namespace: String,
    /// The current value of [`INSTANCE_LABEL`].
    pub from: Option<String>,
    /// The desired value; `None` removes the label.
    pub to: Option<String>,
}

/// The mapping of every namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    /// Namespace → the DynaKube that injects into it once the changes are made. Namespaces without one are
    /// absent.
    pub assigned: BTreeMap<String, DynaKubeRef>,
    /// The label changes to make, by namespace name.
    pub changes: Vec<LabelChange>,
    /// Namespaces selected by more than one DynaKube, by namespace name.
    pub conflicts: Vec<Conflict>,
    /// DynaKubes with an invalid namespace selector and why; they keep their labels but gain none.
    pub invalid_selectors: Vec<(DynaKubeRef, Vec<String>)>,
}

impl Mapping {
    /// The desired value of [`INSTANCE_LABEL`] on a namespace.
    pub fn desired_label(&self, namespace: &str) -> Option<&str> {
        self.assigned.get(namespace).map(|dk| dk.name.as_str())
    }

    /// The namespaces assigned to a DynaKube, by name.
    pub fn namespaces_of<'a>(&'a self, dynakube: &'a DynaKubeRef) -> impl Iterator<Item = &'a str> + 'a {
        self.assigned
            .iter()
            .filter(move |(_, dk)| *dk == dynakube)
            .map(|(namespace, _)| namespace.as_str())
    }

    /// The conflicts a DynaKube is part of.
    pub fn conflicts_of(&self, dynakube: &DynaKubeRef) -> Vec<&Conflict> {
        self.conflicts
            .iter()
            .filter(|c| c.dynakubes.contains(dynakube))
            .collect()
    }
}

/// Maps one namespace: the DynaKube that should inject into it, and the conflict when several select it.
/// The operator's own namespace is never mapped.
pub fn map_namespace(
    injectors: &[Injector],
    operator_namespace: &str,
    namespace: &NamespaceView<'_>,
) -> (Option<DynaKubeRef>, Option<Conflict>) {
    if namespace.name == operator_namespace {
        return (None, None);
    }
    let mut selecting: Vec<&Injector> = injectors.iter().filter(|i| i.selects(namespace)).collect();
    match selecting.as_slice() {
        [] => (None, None),
        [only] => (Some(only.dynakube.clone()), None),
        _ => {
            selecting.sort_by(|a, b| a.dynakube.cmp(&b.dynakube));
            let current = namespace.current();
            let kept = selecting
                .iter()
                .find(|i| Some(i.dynakube.name.as_str()) == current)
                .map(|i| i.dynakube.clone());
            let conflict = Conflict {
                namespace: namespace.name.to_owned(),
                dynakubes: selecting.iter().map(|i| i.dynakube.clone()).collect(),
                kept: kept.clone(),
            };
            (kept, Some(conflict))
        }
    }
}

/// Maps every namespace to at most one DynaKube (spec §4.1, with the fixes listed in the module
/// documentation). DynaKubes that do not inject are ignored, so labels naming them are removed.
pub fn map_namespaces<'a>(
    dynakubes: impl IntoIterator<Item = &'a DynaKube>,
    namespaces: impl IntoIterator<Item = NamespaceView<'a>>,
    operator_namespace: &str,
) -> Mapping {
    let injectors: Vec<Injector> = dynakubes.into_iter().filter_map(Injector::new).collect();
    let mut mapping = Mapping {
        invalid_selectors: injectors
            .iter()
            .filter(|i| !i.selector_problems().is_empty())
            .map(|i| (i.dynakube.clone(), i.selector_problems().to_vec()))
            .collect(),
        ..Mapping::default()
    };
    for namespace in namespaces {
        let (assigned, conflict) = map_namespace(&injectors, operator_namespace, &namespace);
        let to = assigned.as_ref().map(|dk| dk.name.clone());
        if namespace.current() != to.as_deref() {
            mapping.changes.push(LabelChange {
                namespace: namespace.name.to_owned(),
                from: namespace.current().map(str::to_owned),
                to,
            });
        }
        if let Some(dk) = assigned {
            mapping.assigned.insert(namespace.name.to_owned(), dk);
        }
        mapping.conflicts.extend(conflict);
    }
    mapping.changes.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    mapping.conflicts.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    mapping
}

/// The JSON merge patch of a namespace that sets [`INSTANCE_LABEL`] to `to` (or removes it) and marks the
/// change as the operator's with [`UPDATED_VIA_OPERATOR_ANNOTATION`]. It touches nothing else.
pub fn label_patch(to: Option<&str>) -> serde_json::Value {
    json!({
        "metadata": {
            "labels": { INSTANCE_LABEL: to },
            "annotations": { UPDATED_VIA_OPERATOR_ANNOTATION: "true" },
        }
    })
}

/// A condition to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate {
    /// `True` or `False`.
    pub status: &'static str,
    /// [`CONFLICT_REASON`] or [`NO_CONFLICT_REASON`].
    pub reason: &'static str,
    /// What is wrong and what to do, or that nothing is.
    pub message: String,
}

/// The [`NAMESPACE_CONFLICT_CONDITION`] a DynaKube should have, when it differs from `existing`:
/// - with conflicts: `True`, naming the namespaces (the first ten) and the other DynaKubes;
/// - without: `False`, but only when the condition exists; a DynaKube that never had a conflict gets no
///   condition (and no status write).
pub fn conflict_condition(
    dynakube: &DynaKubeRef,
    conflicts: &[&Conflict],
    existing: Option<&Condition>,
) -> Option<ConditionUpdate> {
    let desired = if conflicts.is_empty() {
        existing?;
        ConditionUpdate {
            status: "False",
            reason: NO_CONFLICT_REASON,
            message: "no namespace this DynaKube selects is selected by another DynaKube".to_owned(),
        }
    } else {
        let mut named: Vec<String> = conflicts
            .iter()
            .take(NAMED_CONFLICTS)
            .map(|c| {
                let others: Vec<String> = c
                    .dynakubes
                    .iter()
                    .filter(|dk| *dk != dynakube)
                    .map(ToString::to_string)
                    .collect();
                let kept = match &c.kept {
                    Some(kept) => format!("keeps {}", kept.name),
                    None => "not injected".to_owned(),
                };
                format!("{} (also {}; {kept})", c.namespace, others.join(", "))
            })
            .collect();
        if conflicts.len() > NAMED_CONFLICTS {
            named.push(format!("and {} more", conflicts.len() - NAMED_CONFLICTS));
        }
        ConditionUpdate {
            status: "True",
            reason: CONFLICT_REASON,
            message: format!(
                "{} namespace(s) are selected by this and another DynaKube, and a namespace can be injected by \
                 one DynaKube only: {}. They keep the injection label they have, or get none. Make the \
                 DynaKubes' spec.namespaceSelector and spec.metadataEnrichment.namespaceSelector (or the \
                 namespaces' labels) select each namespace once.",
                conflicts.len(),
                named.join(", ")
            ),
        }
    };
    let unchanged = existing.is_some_and(|c| {
        c.status == desired.status && c.reason == desired.reason && c.message == desired.message
    });
    (!unchanged).then_some(desired)
}

/// The label selector of every per-namespace Secret the operator writes (both kinds, every DynaKube).
pub fn managed_secrets_selector() -> String {
    format!(
        "{LABEL_NAME}={OPERATOR_NAME},{LABEL_CREATED_BY},{LABEL_COMPONENT} in \
         ({INIT_SECRET_COMPONENT},{DATA_INGEST_SECRET_COMPONENT})"
    )
}

/// The DynaKube name of a per-namespace Secret the operator wrote: its name is [`names::INIT_SECRET`] or
/// [`names::ENRICHMENT_SECRET`] and it has the labels of [`SecretTemplate::labels`]. `None` for any other
/// Secret (so a user's Secret of the same name is never touched).
pub fn managed_secret_owner(metadata: &ObjectMeta) -> Option<&str> {
    let component = match metadata.name.as_deref()? {
        names::INIT_SECRET => INIT_SECRET_COMPONENT,
        names::ENRICHMENT_SECRET => DATA_INGEST_SECRET_COMPONENT,
        _ => return None,
    };
    let labels = metadata.labels.as_ref()?;
    (labels.get(LABEL_NAME).map(String::as_str) == Some(OPERATOR_NAME)
        && labels.get(LABEL_COMPONENT).map(String::as_str) == Some(component))
    .then(|| labels.get(LABEL_CREATED_BY).map(String::as_str))
    .flatten()
}

/// A per-namespace Secret, the same in every namespace the DynaKube is mapped to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretTemplate {
    /// [`names::INIT_SECRET`] or [`names::ENRICHMENT_SECRET`].
    pub name: &'static str,
    /// The DynaKube's name (label `app.kubernetes.io/created-by`).
    pub dynakube: String,
    /// [`INIT_SECRET_COMPONENT`] or [`DATA_INGEST_SECRET_COMPONENT`].
    pub component: &'static str,
    /// The Secret's data.
    pub data: BTreeMap<String, ByteString>,
}

impl SecretTemplate {
    /// The labels: `app.kubernetes.io/name: dynatrace-operator`, `app.kubernetes.io/created-by: <dk>`,
    /// `app.kubernetes.io/component: webhook|activegate` (as the reference).
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_owned(), OPERATOR_NAME.to_owned()),
            (LABEL_CREATED_BY.to_owned(), self.dynakube.clone()),
            (LABEL_COMPONENT.to_owned(), self.component.to_owned()),
        ])
    }

    /// The Secret in `namespace` (type Opaque, no owner: owner references cannot cross namespaces).
    pub fn for_namespace(&self, namespace: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(self.labels()),
                ..Default::default()
            },
            data: Some(self.data.clone()),
            type_: Some("Opaque".to_owned()),
            ..Default::default()
        }
    }

    /// Whether a Secret in the cluster already is this one: same data, type Opaque, and our labels (other
    /// labels are left alone).
    pub fn is_current(&self, existing: &Secret) -> bool {
        let labels = existing.metadata.labels.as_ref();
        existing.data.as_ref() == Some(&self.data)
            && existing.type_.as_deref().unwrap_or("Opaque") == "Opaque"
            && self
                .labels()
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    }

    /// A fingerprint of what [`SecretTemplate::is_current`] compares (data, type Opaque, our labels): a
    /// Secret in the cluster is current when its [`secret_fingerprint`] equals this. A cache keeps these
    /// 8 bytes instead of the Secret (an init Secret lists every monitored node: tens of kB).
    pub fn fingerprint(&self) -> u64 {
        let labels = self.labels();
        fingerprint_parts(Some(&self.data), "Opaque", |key| {
            labels.get(key).map(String::as_str)
        })
    }
}

/// The fingerprint of a Secret in the cluster, to compare with [`SecretTemplate::fingerprint`]: equal
/// exactly when [`SecretTemplate::is_current`] holds (up to 64-bit hash collisions).
pub fn secret_fingerprint(secret: &Secret) -> u64 {
    let labels = secret.metadata.labels.as_ref();
    fingerprint_parts(
        secret.data.as_ref(),
        secret.type_.as_deref().unwrap_or("Opaque"),
        |key| labels.and_then(|l| l.get(key)).map(String::as_str),
    )
}

/// Hashes what [`SecretTemplate::is_current`] compares. Only the keys of [`SecretTemplate::labels`] count:
/// other labels are left alone.
fn fingerprint_parts<'a>(
    data: Option<&BTreeMap<String, ByteString>>,
    type_: &str,
    label: impl Fn(&str) -> Option<&'a str>,
) -> u64 {
    let mut hasher = DefaultHasher::new();
    data.is_some().hash(&mut hasher);
    for (key, value) in data.into_iter().flatten() {
        (key, &value.0).hash(&mut hasher);
    }
    type_.hash(&mut hasher);
    for key in [LABEL_NAME, LABEL_CREATED_BY, LABEL_COMPONENT] {
        label(key).hash(&mut hasher);
    }
    hasher.finish()
}

/// What the init Secret needs besides the DynaKube, resolved by the caller.
#[derive(Debug, Clone, Copy)]
pub struct InitSecretFacts<'a> {
    /// The tokens from the token Secret.
    pub tokens: &'a Tokens,
    /// The proxy URL: `spec.proxy.value`, or the key `proxy` of the Secret `spec.proxy.valueFrom`.
    pub proxy: Option<&'a str>,
    /// PEM certificates: the key `certs` of the ConfigMap `spec.trustedCAs`.
    pub trusted_cas: Option<&'a str>,
    /// The ActiveGate's certificate: the key `server.crt` of the Secret `spec.activeGate.tlsSecretName`.
    pub tls_cert: Option<&'a str>,
    /// `status.oneAgent.connectionInfoStatus.tenantUUID`.
    pub tenant_uuid: &'a str,
    /// UID of the kube-system namespace.
    pub cluster_id: &'a str,
    /// Node name → host tenant, from [`monitoring_nodes`].
    pub monitoring_nodes: &'a BTreeMap<String, String>,
}

/// The `monitoringNodes` map of the init Secret (spec §4.3, operator path): empty unless
/// cloudNativeFullStack; else every node → `-` (no host agent), then every node the OneAgent's nodeSelector
/// selects → `tenant_uuid`, or removed when the tenant is unknown (the init container then fails for
/// pods there, unless `ignore-unknown-state` keeps the `-`).
pub fn monitoring_nodes<'a>(
    dynakube: &DynaKube,
    nodes: impl IntoIterator<Item = (&'a str, Option<&'a Labels>)>,
    tenant_uuid: Option<&str>,
) -> BTreeMap<String, String> {
    if dynakube.mode() != Some(Mode::CloudNativeFullStack) {
        return BTreeMap::new();
    }
    let empty = Labels::new();
    let node_selector = dynakube
        .host_spec()
        .and_then(|h| h.node_selector.as_ref())
        .unwrap_or(&empty);
    let tenant_uuid = tenant_uuid.filter(|t| !t.is_empty());
    let ignore_unknown = dynakube.feature_flags().ignore_unknown_state();
    let mut map = BTreeMap::new();
    for (name, labels) in nodes {
        let selected = pure_api::selector::node_selector_matches(node_selector, labels.unwrap_or(&empty));
        match (selected, tenant_uuid) {
            (true, Some(tenant)) => {
                map.insert(name.to_owned(), tenant.to_owned());
            }
            (true, None) if !ignore_unknown => {}
            _ => {
                map.insert(name.to_owned(), NO_HOST_TENANT.to_owned());
            }
        }
    }
    map
}

/// The configuration the init container reads from the key `config` of the init Secret (spec §4.2), as
/// JSON with the reference's field names. The operator writes it ([`init_config`]) and `dynatrace-operator
/// init` reads it, through this one type. Reading tolerates missing fields (they take their defaults), so
/// a Secret written by another operator version still works. `Debug` leaves the tokens out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InitConfig {
    /// `spec.apiUrl`.
    pub api_url: String,
    /// `apiToken` of the token Secret.
    pub api_token: String,
    /// `paasToken` of the token Secret, else `apiToken`.
    pub paas_token: String,
    /// The proxy URL, `""` for none.
    pub proxy: String,
    /// The `no-proxy` flag: comma-separated hosts that bypass the proxy.
    pub no_proxy: String,
    /// `spec.networkZone`, `""` for none.
    pub network_zone: String,
    /// PEM certificates to trust instead of the system's, `""` for none.
    #[serde(rename = "trustedCAs")]
    pub trusted_cas: String,
    /// `spec.skipCertCheck`.
    pub skip_cert_check: bool,
    /// The environment's UUID.
    #[serde(rename = "tenantUUID")]
    pub tenant_uuid: String,
    /// Whether a host OneAgent runs on the nodes (cloudNativeFullStack).
    pub has_host: bool,
    /// Node name → host tenant (`-` for a node without a host OneAgent).
    pub monitoring_nodes: BTreeMap<String, String>,
    /// The ActiveGate's TLS certificate (PEM), `""` for none.
    pub tls_cert: String,
    /// The host group, `""` for none.
    pub host_group: String,
    /// UID of the kube-system namespace.
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    /// `initialConnectRetryMs` for the agent, -1 when unset.
    pub initial_connect_retry: i64,
}

impl Default for InitConfig {
    fn default() -> Self {
        Self {
            api_url: String::new(),
            api_token: String::new(),
            paas_token: String::new(),
            proxy: String::new(),
            no_proxy: String::new(),
            network_zone: String::new(),
            trusted_cas: String::new(),
            skip_cert_check: false,
            tenant_uuid: String::new(),
            has_host: false,
            monitoring_nodes: BTreeMap::new(),
            tls_cert: String::new(),
            host_group: String::new(),
            cluster_id: String::new(),
            initial_connect_retry: -1,
        }
    }
}

/// Tokens and the proxy (which may carry credentials) stay out of logs.
impl fmt::Debug for InitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitConfig")
            .field("api_url", &self.api_url)
            .field("api_token", &"<redacted>")
            .field("paas_token", &"<redacted>")
            .field("proxy", &(!self.proxy.is_empty()).then_some("<redacted>"))
            .field("no_proxy", &self.no_proxy)
            .field("network_zone", &self.network_zone)
            .field("trusted_cas", &!self.trusted_cas.is_empty())
            .field("skip_cert_check", &self.skip_cert_check)
            .field("tenant_uuid", &self.tenant_uuid)
            .field("has_host", &self.has_host)
            .field("monitoring_nodes", &self.monitoring_nodes)
            .field("tls_cert", &!self.tls_cert.is_empty())
            .field("host_group", &self.host_group)
            .field("cluster_id", &self.cluster_id)
            .field("initial_connect_retry", &self.initial_connect_retry)
            .finish()
    }
}

/// The [`InitConfig`] the init container reads from the key `config` of the init Secret (spec §4.2).
/// Sources:
///
/// | Field | Source |
/// |---|---|
/// | `apiUrl` | `spec.apiUrl` |
/// | `apiToken` | `apiToken` of the token Secret |
/// | `paasToken` | `paasToken` of the token Secret, else `apiToken` |
/// | `proxy` | [`InitSecretFacts::proxy`], `""` without one or with the `oneagent-ignore-proxy` flag |
/// | `noProxy` | the `no-proxy` flag |
/// | `networkZone` | `spec.networkZone` |
/// | `trustedCAs` | [`InitSecretFacts::trusted_cas`] |
/// | `skipCertCheck` | `spec.skipCertCheck` |
/// | `tenantUUID` | [`InitSecretFacts::tenant_uuid`] |
/// | `hasHost` | true for cloudNativeFullStack only |
/// | `monitoringNodes` | [`InitSecretFacts::monitoring_nodes`] |
/// | `tlsCert` | [`InitSecretFacts::tls_cert`] |
/// | `hostGroup` | `spec.oneAgent.hostGroup`, else `--set-host-group` of the cloudNativeFullStack args |
/// | `clusterID` | [`InitSecretFacts::cluster_id`] |
/// | `initialConnectRetry` | the `oneagent-initial-connect-retry-ms` flag, -1 when unset |
pub fn init_config(dynakube: &DynaKube, facts: &InitSecretFacts<'_>) -> InitConfig {
    let flags = dynakube.feature_flags();
    let spec = &dynakube.spec;
    let initial_connect_retry = flags
        .initial_connect_retry_ms()
        .map_or(-1, |ms| i64::try_from(ms).unwrap_or(i64::MAX));
    InitConfig {
        api_url: spec.api_url.clone(),
        api_token: facts.tokens.api_token.clone(),
        paas_token: facts.tokens.paas_or_api().to_owned(),
        proxy: effective_proxy(dynakube, facts.proxy).to_owned(),
        no_proxy: flags.no_proxy().to_owned(),
        network_zone: spec.network_zone.clone().unwrap_or_default(),
        trusted_cas: facts.trusted_cas.unwrap_or_default().to_owned(),
        skip_cert_check: spec.skip_cert_check.unwrap_or(false),
        tenant_uuid: facts.tenant_uuid.to_owned(),
        has_host: dynakube.mode() == Some(Mode::CloudNativeFullStack),
        monitoring_nodes: facts.monitoring_nodes.clone(),
        tls_cert: facts.tls_cert.unwrap_or_default().to_owned(),
        host_group: dynakube.host_group().unwrap_or_default().to_owned(),
        cluster_id: facts.cluster_id.to_owned(),
        initial_connect_retry,
    }
}

/// The proxy given to injected pods: none with the `oneagent-ignore-proxy` flag.
fn effective_proxy<'a>(dynakube: &DynaKube, proxy: Option<&'a str>) -> &'a str {
    if dynakube.feature_flags().oneagent_ignore_proxy() {
        ""
    } else {
        proxy.unwrap_or_default()
    }
}

fn dynakube_name(dynakube: &DynaKube) -> Result<String, DesiredError> {
    dynakube
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or(DesiredError::Missing {
            dynakube: String::new(),
            field: "metadata.name",
            hint: "pass the DynaKube as read from the API server, which always sets it",
        })
}

/// The init Secret `dynatrace-dynakube-config` (spec §4.2): key `config` with [`init_config`], key `proxy`
/// with the proxy URL alone (empty without one). The tenant UUID and the cluster id must be known: the
/// init container cannot work without them.
pub fn init_secret(dynakube: &DynaKube, facts: &InitSecretFacts<'_>) -> Result<SecretTemplate, DesiredError> {
    let name = dynakube_name(dynakube)?;
    let missing = |field, hint| DesiredError::Missing {
        dynakube: name.clone(),
        field,
        hint,
    };
    if facts.tenant_uuid.is_empty() {
        return Err(missing(
            "status.oneAgent.connectionInfoStatus.tenantUUID",
            "wait until the DynaKube reconcile has read the connection info from the environment",
        ));
    }
    if facts.cluster_id.is_empty() {
        return Err(missing(
            "the cluster id (UID of the kube-system namespace)",
            "read the kube-system namespace before writing the Secret",
        ));
    }
    let config = serde_json::to_vec(&init_config(dynakube, facts)).map_err(|e| DesiredError::Serialize {
        what: "the init container configuration",
        reason: e.to_string(),
    })?;
    let proxy = effective_proxy(dynakube, facts.proxy);
    Ok(SecretTemplate {
        name: names::INIT_SECRET,
        dynakube: name,
        component: INIT_SECRET_COMPONENT,
        data: BTreeMap::from([
            (CONFIG_KEY.to_owned(), ByteString(config)),
            (PROXY_KEY.to_owned(), ByteString(proxy.as_bytes().to_vec())),
        ]),
    })
}

/// The metrics ingest URL for enrichment: through the cluster's ActiveGate when it has the
/// `metrics-ingest` capability (`http://<dk>-activegate.<namespace>/e/<environment id>/api/v2/metrics/ingest`,
/// the environment id taken from `spec.apiUrl`), else `<spec.apiUrl>/v2/metrics/ingest`.
pub fn data_ingest_url(dynakube: &DynaKube) -> Result<String, DesiredError> {
    let name = dynakube_name(dynakube)?;
    let api_url = dynakube.spec.api_url.trim_end_matches('/');
    let invalid = || DesiredError::InvalidApiUrl {
        dynakube: name.clone(),
        api_url: dynakube.spec.api_url.clone(),
    };
    if api_url.is_empty() {
        return Err(invalid());
    }
    let capabilities = dynakube
        .spec
        .active_gate
        .as_ref()
        .and_then(|ag| ag.capabilities.as_ref());
    if capabilities.is_some_and(|c| c.iter().any(|c| c == METRICS_INGEST_CAPABILITY)) {
        let namespace = dynakube.metadata.namespace.as_deref().unwrap_or_default();
        let tenant = dynakube.tenant_uuid().ok_or_else(invalid)?;
        return Ok(format!(
            "http://{name}-activegate.{namespace}/e/{tenant}/api/v2/metrics/ingest"
        ));
    }
    Ok(format!("{api_url}/v2/metrics/ingest"))
}

/// The data-ingest Secret `dynatrace-data-ingest-endpoint` (spec §4.2): key `endpoint.properties` with
/// `DT_METRICS_INGEST_URL=<`[`data_ingest_url`]`>` and `DT_METRICS_INGEST_API_TOKEN=<dataIngestToken>`
/// (empty without one, as the reference), one per line. `None` when metadata enrichment is off
/// ([`DynaKube::metadata_enrichment_enabled`]): nothing reads the Secret then (the reference wrote an empty
/// file instead).
pub fn data_ingest_secret(
    dynakube: &DynaKube,
    tokens: &Tokens,
) -> Result<Option<SecretTemplate>, DesiredError> {
    if !dynakube.metadata_enrichment_enabled() {
        return Ok(None);
    }
    let url = data_ingest_url(dynakube)?;
    let token = tokens.data_ingest_token.as_deref().unwrap_or_default();
    let properties = format!("DT_METRICS_INGEST_URL={url}\nDT_METRICS_INGEST_API_TOKEN={token}\n");
    Ok(Some(SecretTemplate {
        name: names::ENRICHMENT_SECRET,
        dynakube: dynakube_name(dynakube)?,
        component: DATA_INGEST_SECRET_COMPONENT,
        data: BTreeMap::from([(
            ENDPOINT_PROPERTIES_KEY.to_owned(),
            ByteString(properties.into_bytes()),
        )]),
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::Value;

    use super::*;

    const OPERATOR_NS: &str = "dynatrace";

    fn dk_in(namespace: &str, name: &str, spec: Value, annotations: Value) -> DynaKube {
        let mut spec = spec;
        spec["apiUrl"] = json!("https://abc12345.live.dynatrace.com/api");
        serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1beta1",
            "kind": "DynaKube",
            "metadata": { "name": name, "namespace": namespace, "annotations": annotations },
            "spec": spec,
        }))
        .unwrap()
    }

    /// A cloudNativeFullStack DynaKube in the operator namespace with the given namespace selector.
    fn dk(name: &str, selector: Value) -> DynaKube {
        dk_in(
            OPERATOR_NS,
            name,
            json!({ "namespaceSelector": selector, "oneAgent": { "cloudNativeFullStack": {} } }),
            json!({}),
        )
    }

    fn app_monitoring(name: &str, selector: Value) -> DynaKube {
        dk_in(
            OPERATOR_NS,
            name,
            json!({ "namespaceSelector": selector, "oneAgent": { "applicationMonitoring": {} } }),
            json!({}),
        )
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Namespaces by name with their labels.
    struct Cluster(Vec<(String, Labels)>);

    impl Cluster {
        fn new(namespaces: &[(&str, &[(&str, &str)])]) -> Self {
            Self(
                namespaces
                    .iter()
                    .map(|(name, l)| ((*name).to_owned(), labels(l)))
                    .collect(),
            )
        }

        fn views(&self) -> impl Iterator<Item = NamespaceView<'_>> {
            self.0.iter().map(|(name, labels)| NamespaceView {
                name,
                labels: Some(labels),
            })
        }

        fn map(&self, dynakubes: &[DynaKube]) -> Mapping {
            map_namespaces(dynakubes, self.views(), OPERATOR_NS)
        }

        /// Applies the mapping's changes, as the controller would.
        fn apply(&mut self, mapping: &Mapping) {
            for change in &mapping.changes {
                let (_, labels) = self.0.iter_mut().find(|(n, _)| *n == change.namespace).unwrap();
                match &change.to {
                    Some(dk) => labels.insert(INSTANCE_LABEL.to_owned(), dk.clone()),
                    None => labels.remove(INSTANCE_LABEL),
                };
            }
        }

        fn label(&self, namespace: &str) -> Option<&str> {
            let (_, labels) = self.0.iter().find(|(n, _)| n == namespace).unwrap();
            labels.get(INSTANCE_LABEL).map(String::as_str)
        }

        fn set_labels(&mut self, namespace: &str, pairs: &[(&str, &str)]) {
            let (_, labels) = self.0.iter_mut().find(|(n, _)| n == namespace).unwrap();
            let instance = labels.get(INSTANCE_LABEL).cloned();
            *labels = super::tests::labels(pairs);
            if let Some(instance) = instance {
                labels.insert(INSTANCE_LABEL.to_owned(), instance);
            }
        }
    }

    fn assigned(mapping: &Mapping) -> BTreeMap<&str, &str> {
        mapping
            .assigned
            .iter()
            .map(|(ns, dk)| (ns.as_str(), dk.name.as_str()))
            .collect()
    }

    fn dk_ref(name: &str) -> DynaKubeRef {
        DynaKubeRef {
            namespace: OPERATOR_NS.into(),
            name: name.into(),
        }
    }

    #[test]
    fn match_labels_select_and_others_do_not() {
        let cluster = Cluster::new(&[
            ("team-a", &[("inject", "yes")]),
            ("team-b", &[("inject", "no")]),
            ("team-c", &[]),
        ]);
        let mapping = cluster.map(&[dk("dk", json!({ "matchLabels": { "inject": "yes" } }))]);
        assert_eq!(assigned(&mapping), BTreeMap::from([("team-a", "dk")]));
        assert_eq!(
            mapping.changes,
            vec![LabelChange {
                namespace: "team-a".into(),
                from: None,
                to: Some("dk".into())
            }]
        );
        assert!(mapping.conflicts.is_empty() && mapping.invalid_selectors.is_empty());
    }

    /// A classicFullStack or hostMonitoring DynaKube claims, for enrichment only, exactly the namespaces
    /// its `metadataEnrichment.namespaceSelector` selects; without that selector, or with enrichment off,
    /// it claims none (and a label naming it goes).
    #[test]
    fn enrichment_only_dynakubes_label_what_their_enrichment_selector_selects() {
        let mut cluster = Cluster::new(&[
            ("shop", &[("enrich", "yes")]),
            ("blog", &[("enrich", "no")]),
            ("plain", &[]),
        ]);
        for mode in ["classicFullStack", "hostMonitoring"] {
            let with = |enrichment: Value| {
                dk_in(
                    OPERATOR_NS,
                    "dk",
                    json!({ "metadataEnrichment": enrichment, "oneAgent": { mode: {} } }),
                    json!({}),
                )
            };
            let selecting = with(json!({ "namespaceSelector": { "matchLabels": { "enrich": "yes" } } }));
            let mapping = cluster.map(std::slice::from_ref(&selecting));
            assert_eq!(assigned(&mapping), BTreeMap::from([("shop", "dk")]), "{mode}");
            assert!(mapping.conflicts.is_empty(), "{mode}");
            let injector = Injector::new(&selecting).unwrap();
            let shop = labels(&[("enrich", "yes")]);
            let purposes = injector.purposes(&NamespaceView {
                name: "shop",
                labels: Some(&shop),
            });
            assert_eq!(
                purposes,
                NamespacePurposes {
                    inject: false,
                    enrich: true
                },
                "{mode}"
            );
            cluster.apply(&mapping);

            for claims_nothing in [
                with(json!({})),
                with(
                    json!({ "enabled": false, "namespaceSelector": { "matchLabels": { "enrich": "yes" } } }),
                ),
            ] {
                let mapping = cluster.map(std::slice::from_ref(&claims_nothing));
                assert!(assigned(&mapping).is_empty(), "{mode}: {mapping:?}");
                assert_eq!(mapping.changes.len(), 1, "{mode}: the label goes");
            }
            let mut unlabelled = cluster.map(&[]);
            cluster.apply(&unlabelled);
            unlabelled = cluster.map(&[]);
            assert!(unlabelled.changes.is_empty());
        }
    }

    /// An enrichment-only DynaKube and an injecting one selecting the same namespace conflict.
    #[test]
    fn enrichment_only_and_injecting_dynakubes_conflict() {
        let cluster = Cluster::new(&[("shop", &[("team", "a")]), ("blog", &[("team", "b")])]);
        let classic = dk_in(
            OPERATOR_NS,
            "classic",
            json!({
                "metadataEnrichment": { "namespaceSelector": { "matchLabels": { "team": "a" } } },
                "oneAgent": { "classicFullStack": {} },
            }),
            json!({}),
        );
        let app = app_monitoring("app", json!({ "matchLabels": { "team": "a" } }));
        let mapping = cluster.map(&[classic, app]);
        assert!(assigned(&mapping).is_empty());
        assert_eq!(mapping.conflicts.len(), 1);
        assert_eq!(
            mapping.conflicts[0].dynakubes,
            vec![dk_ref("app"), dk_ref("classic")]
        );
    }

    #[test]
    fn match_expressions_select() {
        let cluster = Cluster::new(&[
            ("prod", &[("env", "prod"), ("team", "a")]),
            ("stage", &[("env", "stage"), ("team", "a")]),
            ("dev", &[("env", "dev"), ("team", "a")]),
            ("db", &[("env", "prod"), ("tier", "db"), ("team", "a")]),
            ("no-team", &[("env", "prod")]),
            ("opt-out", &[("env", "prod"), ("team", "a"), ("skip", "")]),
        ]);
        let selector = json!({ "matchExpressions": [
            { "key": "env", "operator": "In", "values": ["prod", "stage"] },
            { "key": "tier", "operator": "NotIn", "values": ["db"] },
            { "key": "team", "operator": "Exists" },
            { "key": "skip", "operator": "DoesNotExist" },
        ] });
        let mapping = cluster.map(&[app_monitoring("dk", selector)]);
        assert_eq!(
            assigned(&mapping),
            BTreeMap::from([("prod", "dk"), ("stage", "dk")])
        );
    }

    #[test]
    fn empty_or_missing_selector_selects_every_namespace_that_is_not_ignored() {
        let cluster = Cluster::new(&[
            ("default", &[]),
            ("team-a", &[("x", "y")]),
            ("kube-system", &[]),
            (OPERATOR_NS, &[]),
        ]);
        for selector in [json!({}), Value::Null] {
            let mapping = cluster.map(&[dk("dk", selector.clone())]);
            assert_eq!(
                assigned(&mapping),
                BTreeMap::from([("default", "dk"), ("team-a", "dk")]),
                "{selector}"
            );
        }
    }

    #[test]
    fn default_ignored_namespaces() {
        let names = [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "openshift",
            "openshift-monitoring",
            "gke-managed-system",
            "gmp-system",
            "dk-home",
        ];
        let mut namespaces: Vec<(&str, &[(&str, &str)])> = names.iter().map(|n| (*n, &[][..])).collect();
        // Anchored patterns: these only look similar.
        let similar = ["my-kube-apps", "kube", "gke", "team-openshift", "dk-home-2"];
        namespaces.extend(similar.iter().map(|n| (*n, &[][..])));
        let cluster = Cluster::new(&namespaces);
        let dynakube = dk_in(
            "dk-home",
            "dk",
            json!({ "oneAgent": { "applicationMonitoring": {} } }),
            json!({}),
        );
        let mapping = map_namespaces([&dynakube], cluster.views(), "operator-elsewhere");
        let expected: BTreeMap<&str, &str> = similar.iter().map(|n| (*n, "dk")).collect();
        assert_eq!(assigned(&mapping), expected);
        // The patterns anchor only the start, as the reference's: `^openshift(-.*)?` matches any prefix.
        assert!(Injector::new(&dynakube).unwrap().ignores("openshiftx"));
    }

    #[test]
    fn ignored_namespaces_flag_replaces_the_defaults() {
        let cluster = Cluster::new(&[
            ("kube-system", &[]),
            ("team-a", &[]),
            ("team-b", &[]),
            ("apps", &[]),
            ("elsewhere", &[]),
        ]);
        let flagged = |annotations: Value| {
            dk_in(
                "elsewhere",
                "dk",
                json!({ "oneAgent": { "cloudNativeFullStack": {} } }),
                annotations,
            )
        };
        let with_flag = flagged(json!({ "feature.dynatrace.com/ignored-namespaces": r#"["^team-.*"]"# }));
        let mapping = cluster.map(&[with_flag]);
        assert_eq!(
            assigned(&mapping),
            BTreeMap::from([("apps", "dk"), ("elsewhere", "dk"), ("kube-system", "dk")]),
            "the flag replaces the defaults, including the DynaKube's own namespace"
        );

        let legacy = flagged(
            json!({ "alpha.operator.dynatrace.com/feature-ignored-namespaces": r#"["^apps$", "[invalid"]"# }),
        );
        let mapping = cluster.map(&[legacy]);
        assert!(
            !mapping.assigned.contains_key("apps") && mapping.assigned.contains_key("team-a"),
            "the legacy prefix is read; an invalid pattern matches nothing"
        );

        let not_json = flagged(json!({ "feature.dynatrace.com/ignored-namespaces": "^apps$" }));
        let mapping = cluster.map(&[not_json]);
        assert_eq!(
            assigned(&mapping),
            BTreeMap::from([("apps", "dk"), ("team-a", "dk"), ("team-b", "dk")]),
            "invalid JSON falls back to the defaults"
        );
    }

    #[test]
    fn ignoring_is_per_dynakube() {
        let cluster = Cluster::new(&[("team-a", &[])]);
        let ignores = dk_in(
            OPERATOR_NS,
            "a",
            json!({ "oneAgent": { "cloudNativeFullStack": {} } }),
            json!({ "feature.dynatrace.com/ignored-namespaces": r#"["^team-"]"# }),
        );
        let takes = dk_in(
            OPERATOR_NS,
            "b",
            json!({ "oneAgent": { "applicationMonitoring": {} } }),
            json!({}),
        );
        let mapping = cluster.map(&[ignores, takes]);
        assert_eq!(assigned(&mapping), BTreeMap::from([("team-a", "b")]));
        assert!(mapping.conflicts.is_empty());
    }

    #[test]
    fn operator_namespace_is_never_labelled_and_loses_its_label() {
        let flag = json!({ "feature.dynatrace.com/ignored-namespaces": "[]" });
        let everything = dk_in(
            "elsewhere",
            "dk",
            json!({ "oneAgent": { "cloudNativeFullStack": {} } }),
            flag,
        );
        let cluster = Cluster::new(&[(OPERATOR_NS, &[]), ("apps", &[])]);
        assert_eq!(
            assigned(&cluster.map(std::slice::from_ref(&everything))),
            BTreeMap::from([("apps", "dk")])
        );
        let labelled = Cluster::new(&[(OPERATOR_NS, &[(INSTANCE_LABEL, "dk")])]);
        assert_eq!(
            labelled.map(&[everything]).changes,
            vec![LabelChange {
                namespace: OPERATOR_NS.into(),
                from: Some("dk".into()),
                to: None
            }]
        );
    }

    #[test]
    fn ignored_namespace_loses_its_label() {
        let cluster = Cluster::new(&[("kube-system", &[(INSTANCE_LABEL, "dk")])]);
        let mapping = cluster.map(&[dk("dk", json!({}))]);
        assert_eq!(mapping.changes[0].to, None);
    }

    #[test]
    fn only_injecting_modes_label_and_other_modes_lose_their_labels() {
        let cluster = Cluster::new(&[("apps", &[(INSTANCE_LABEL, "dk")]), ("web", &[])]);
        for mode in ["classicFullStack", "hostMonitoring"] {
            let dynakube = dk_in(OPERATOR_NS, "dk", json!({ "oneAgent": { mode: {} } }), json!({}));
            let mapping = cluster.map(&[dynakube]);
            assert!(mapping.assigned.is_empty(), "{mode}");
            assert_eq!(
                mapping.changes,
                vec![LabelChange {
                    namespace: "apps".into(),
                    from: Some("dk".into()),
                    to: None
                }],
                "{mode}"
            );
        }
        let no_mode = dk_in(OPERATOR_NS, "dk", json!({}), json!({}));
        assert!(cluster.map(&[no_mode]).assigned.is_empty());
    }

    #[test]
    fn a_deleted_or_deleting_dynakube_loses_its_labels() {
        let cluster = Cluster::new(&[("apps", &[(INSTANCE_LABEL, "gone")])]);
        assert_eq!(cluster.map(&[]).changes[0].to, None);
        let mut deleting = dk("gone", json!({}));
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let mapping = cluster.map(&[deleting]);
        assert!(mapping.assigned.is_empty());
        assert_eq!(mapping.changes[0].to, None);
    }

    #[test]
    fn two_dynakubes_on_one_namespace_is_a_conflict_that_blocks_nothing_else() {
        let cluster = Cluster::new(&[
            ("shared", &[("team", "a"), ("env", "prod")]),
            ("only-a", &[("team", "a")]),
            ("only-b", &[("env", "prod")]),
            ("neither", &[]),
        ]);
        let a = dk("a", json!({ "matchLabels": { "team": "a" } }));
        let b = app_monitoring("b", json!({ "matchLabels": { "env": "prod" } }));
        let mapping = cluster.map(&[a, b]);
        assert_eq!(
            assigned(&mapping),
            BTreeMap::from([("only-a", "a"), ("only-b", "b")])
        );
        assert_eq!(
            mapping.conflicts,
            vec![Conflict {
                namespace: "shared".into(),
                dynakubes: vec![dk_ref("a"), dk_ref("b")],
                kept: None
            }]
        );
        assert_eq!(mapping.conflicts_of(&dk_ref("a")).len(), 1);
        assert_eq!(mapping.conflicts_of(&dk_ref("b")).len(), 1);
        assert!(mapping.conflicts_of(&dk_ref("c")).is_empty());
        assert!(
            mapping.changes.iter().all(|c| c.namespace != "shared"),
            "no label for a new conflict"
        );
    }

    #[test]
    fn a_conflicting_namespace_keeps_the_label_of_a_selecting_dynakube_and_drops_any_other() {
        let a = dk("a", json!({}));
        let b = dk("b", json!({}));
        let cluster = Cluster::new(&[
            ("was-a", &[(INSTANCE_LABEL, "a")]),
            ("was-b", &[(INSTANCE_LABEL, "b")]),
            ("was-c", &[(INSTANCE_LABEL, "c")]),
        ]);
        let mapping = cluster.map(&[a, b]);
        assert_eq!(
            assigned(&mapping),
            BTreeMap::from([("was-a", "a"), ("was-b", "b")])
        );
        assert_eq!(
            mapping.changes,
            vec![LabelChange {
                namespace: "was-c".into(),
                from: Some("c".into()),
                to: None
            }]
        );
        assert_eq!(mapping.conflicts.len(), 3);
        assert_eq!(mapping.conflicts[0].kept, Some(dk_ref("a")));
        assert_eq!(mapping.conflicts[2].kept, None);
    }

    #[test]
    fn same_name_in_two_namespaces_is_told_apart() {
        let one = dk_in(
            "one",
            "dk",
            json!({ "namespaceSelector": { "matchLabels": { "t": "1" } }, "oneAgent": { "cloudNativeFullStack": {} } }),
            json!({}),
        );
        let two = dk_in(
            "two",
            "dk",
            json!({ "namespaceSelector": { "matchLabels": { "t": "2" } }, "oneAgent": { "cloudNativeFullStack": {} } }),
            json!({}),
        );
        let cluster = Cluster::new(&[("x", &[("t", "1")]), ("y", &[("t", "2")])]);
        let mapping = cluster.map(&[one, two]);
        assert_eq!(mapping.assigned["x"].namespace, "one");
        assert_eq!(mapping.assigned["y"].namespace, "two");
        assert_eq!(mapping.desired_label("y"), Some("dk"));
    }

    #[test]
    fn relabel_from_one_dynakube_to_another_and_unlabel() {
        let mut cluster = Cluster::new(&[("apps", &[("team", "a")]), ("web", &[("team", "a")])]);
        let a = dk("a", json!({ "matchLabels": { "team": "a" } }));
        let b = dk("b", json!({ "matchLabels": { "team": "b" } }));
        let dynakubes = [a, b];
        let mapping = cluster.map(&dynakubes);
        cluster.apply(&mapping);
        assert_eq!(
            (cluster.label("apps"), cluster.label("web")),
            (Some("a"), Some("a"))
        );
        assert!(cluster.map(&dynakubes).changes.is_empty(), "converged");

        cluster.set_labels("apps", &[("team", "b")]);
        let mapping = cluster.map(&dynakubes);
        assert_eq!(
            mapping.changes,
            vec![LabelChange {
                namespace: "apps".into(),
                from: Some("a".into()),
                to: Some("b".into())
            }]
        );
        cluster.apply(&mapping);

        cluster.set_labels("web", &[]);
        let mapping = cluster.map(&dynakubes);
        assert_eq!(
            mapping.changes,
            vec![LabelChange {
                namespace: "web".into(),
                from: Some("a".into()),
                to: None
            }]
        );
        cluster.apply(&mapping);
        assert_eq!((cluster.label("apps"), cluster.label("web")), (Some("b"), None));

        // The DynaKube's selector changes instead of the namespace.
        let b_moved = dk("b", json!({ "matchLabels": { "team": "c" } }));
        let mapping = cluster.map(&[b_moved]);
        assert_eq!(mapping.changes[0].to, None);
    }

    #[test]
    fn an_invalid_selector_freezes_the_dynakube_and_is_reported() {
        let cluster = Cluster::new(&[("labelled", &[(INSTANCE_LABEL, "dk")]), ("new", &[])]);
        let bad = dk(
            "dk",
            json!({ "matchExpressions": [ { "key": "x", "operator": "Equals", "values": ["1"] } ] }),
        );
        let mapping = cluster.map(&[bad]);
        assert_eq!(assigned(&mapping), BTreeMap::from([("labelled", "dk")]));
        assert!(mapping.changes.is_empty());
        assert_eq!(mapping.invalid_selectors.len(), 1);
        assert!(mapping.invalid_selectors[0].1[0].contains("Equals"));
    }

    #[test]
    fn a_thousand_namespaces() {
        let namespaces: Vec<(String, Labels)> = (0..1000)
            .map(|i| {
                let team = ["a", "b", "c", "none"][i % 4];
                let mut l = labels(&[("team", team)]);
                if i % 7 == 0 {
                    l.insert(INSTANCE_LABEL.to_owned(), "stale".to_owned());
                }
                (format!("ns-{i:04}"), l)
            })
            .collect();
        let mut cluster = Cluster(namespaces);
        let dynakubes = [
            dk("a", json!({ "matchLabels": { "team": "a" } })),
            app_monitoring(
                "b",
                json!({ "matchExpressions": [ { "key": "team", "operator": "In", "values": ["b"] } ] }),
            ),
            dk("c", json!({ "matchLabels": { "team": "c" } })),
        ];
        let started = std::time::Instant::now();
        let mapping = cluster.map(&dynakubes);
        let elapsed = started.elapsed();
        assert!(elapsed < std::time::Duration::from_secs(1), "{elapsed:?}");
        assert_eq!(mapping.assigned.len(), 750);
        for (i, (name, _)) in cluster.0.iter().enumerate() {
            let expected = ["a", "b", "c"].get(i % 4).copied();
            assert_eq!(mapping.desired_label(name), expected, "{name}");
        }
        // Every newly labelled namespace plus the stale labels on unselected ones.
        let stale_unselected = (0..1000).filter(|i| i % 7 == 0 && i % 4 == 3).count();
        assert_eq!(stale_unselected, 36);
        assert_eq!(mapping.changes.len(), 750 + stale_unselected);
        assert_eq!(mapping.namespaces_of(&dk_ref("b")).count(), 250);
        cluster.apply(&mapping);
        assert!(cluster.map(&dynakubes).changes.is_empty());
    }

    #[test]
    fn label_patch_sets_or_removes_the_label_and_marks_the_change() {
        assert_eq!(
            label_patch(Some("dk")),
            json!({ "metadata": {
                "labels": { "dynakube.internal.dynatrace.com/instance": "dk" },
                "annotations": { "dynatrace.com/updated-via-operator": "true" },
            } })
        );
        assert_eq!(
            label_patch(None)["metadata"]["labels"],
            json!({ "dynakube.internal.dynatrace.com/instance": null })
        );
    }

    fn condition(update: &ConditionUpdate) -> Condition {
        Condition {
            type_: NAMESPACE_CONFLICT_CONDITION.into(),
            status: update.status.into(),
            reason: update.reason.into(),
            message: update.message.clone(),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }
    }

    #[test]
    fn conflict_condition_names_namespaces_and_the_other_dynakubes() {
        let a = dk_ref("a");
        let conflict = |ns: &str, kept: Option<&str>| Conflict {
            namespace: ns.into(),
            dynakubes: vec![dk_ref("a"), dk_ref("b")],
            kept: kept.map(dk_ref),
        };
        let (one, two) = (conflict("shared", None), conflict("old", Some("a")));
        assert_eq!(
            conflict_condition(&a, &[], None),
            None,
            "no conflict, no condition"
        );
        let update = conflict_condition(&a, &[&one, &two], None).unwrap();
        assert_eq!((update.status, update.reason), ("True", CONFLICT_REASON));
        assert!(
            update
                .message
                .contains("shared (also dynatrace/b; not injected), old (also dynatrace/b; keeps a)"),
            "{}",
            update.message
        );
        let existing = condition(&update);
        assert_eq!(conflict_condition(&a, &[&one, &two], Some(&existing)), None);
        let resolved = conflict_condition(&a, &[], Some(&existing)).unwrap();
        assert_eq!((resolved.status, resolved.reason), ("False", NO_CONFLICT_REASON));
        assert_eq!(conflict_condition(&a, &[], Some(&condition(&resolved))), None);
    }

    #[test]
    fn conflict_condition_names_ten_namespaces_and_counts_the_rest() {
        let conflicts: Vec<Conflict> = (0..25)
            .map(|i| Conflict {
                namespace: format!("ns-{i:02}"),
                dynakubes: vec![dk_ref("a"), dk_ref("b")],
                kept: None,
            })
            .collect();
        let refs: Vec<&Conflict> = conflicts.iter().collect();
        let message = conflict_condition(&dk_ref("b"), &refs, None).unwrap().message;
        assert!(message.starts_with("25 namespace(s)"), "{message}");
        assert!(
            message.contains("ns-09 (also dynatrace/a; not injected), and 15 more"),
            "{message}"
        );
        assert!(!message.contains("ns-10"), "{message}");
        assert!(message.len() < 1024, "fits an event note: {}", message.len());
    }

    fn tokens(paas: bool, ingest: bool) -> Tokens {
        Tokens {
            api_token: "dt0c01.API".into(),
            paas_token: paas.then(|| "dt0c01.PAAS".into()),
            data_ingest_token: ingest.then(|| "dt0c01.INGEST".into()),
        }
    }

    fn config_of(template: &SecretTemplate) -> Value {
        serde_json::from_slice(&template.data[CONFIG_KEY].0).unwrap()
    }

    fn cloud_native(extra_spec: Value, annotations: Value) -> DynaKube {
        let mut spec = json!({ "oneAgent": { "cloudNativeFullStack": {
            "args": ["--set-host-group=prod"],
            "nodeSelector": { "pool": "apps" },
        } } });
        for (k, v) in extra_spec.as_object().unwrap() {
            spec[k] = v.clone();
        }
        dk_in(OPERATOR_NS, "dk", spec, annotations)
    }

    #[test]
    fn init_secret_has_every_field_from_its_source() {
        let dynakube = cloud_native(
            json!({ "networkZone": "zone-1", "skipCertCheck": true }),
            json!({
                "feature.dynatrace.com/no-proxy": "internal.example",
                "feature.dynatrace.com/oneagent-initial-connect-retry-ms": "6000",
            }),
        );
        let nodes = BTreeMap::from([("node-1".to_owned(), "uuid-1".to_owned())]);
        let tokens = tokens(true, false);
        let facts = InitSecretFacts {
            tokens: &tokens,
            proxy: Some("http://proxy:3128"),
            trusted_cas: Some("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"),
            tls_cert: Some("AG-CERT"),
            tenant_uuid: "uuid-1",
            cluster_id: "kube-system-uid",
            monitoring_nodes: &nodes,
        };
        let template = init_secret(&dynakube, &facts).unwrap();
        assert_eq!(
            config_of(&template),
            json!({
                "apiUrl": "https://abc12345.live.dynatrace.com/api",
                "apiToken": "dt0c01.API",
                "paasToken": "dt0c01.PAAS",
                "proxy": "http://proxy:3128",
                "noProxy": "internal.example",
                "networkZone": "zone-1",
                "trustedCAs": "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
                "skipCertCheck": true,
                "tenantUUID": "uuid-1",
                "hasHost": true,
                "monitoringNodes": { "node-1": "uuid-1" },
                "tlsCert": "AG-CERT",
                "hostGroup": "prod",
                "clusterID": "kube-system-uid",
                "initialConnectRetry": 6000,
            })
        );
        assert_eq!(template.data[PROXY_KEY].0, b"http://proxy:3128");
        assert_eq!(template.data.len(), 2);

        let secret = template.for_namespace("apps");
        assert_eq!(secret.metadata.name.as_deref(), Some("dynatrace-dynakube-config"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        assert_eq!(
            secret.metadata.labels.clone().unwrap(),
            BTreeMap::from([
                (
                    "app.kubernetes.io/name".to_owned(),
                    "dynatrace-operator".to_owned()
                ),
                ("app.kubernetes.io/created-by".to_owned(), "dk".to_owned()),
                ("app.kubernetes.io/component".to_owned(), "webhook".to_owned()),
            ])
        );
        assert_eq!(secret.metadata.owner_references, None);
        assert_eq!(managed_secret_owner(&secret.metadata), Some("dk"));
    }

    #[test]
    fn init_config_round_trips_and_reads_partial_json() {
        let dynakube = cloud_native(json!({}), json!({}));
        let tokens = tokens(true, false);
        let nodes = BTreeMap::from([("node-1".to_owned(), "uuid-1".to_owned())]);
        let facts = InitSecretFacts {
            tokens: &tokens,
            proxy: Some("http://user:pw@proxy:3128"),
            trusted_cas: None,
            tls_cert: None,
            tenant_uuid: "uuid-1",
            cluster_id: "cid",
            monitoring_nodes: &nodes,
        };
        let template = init_secret(&dynakube, &facts).unwrap();
        let read: InitConfig = serde_json::from_slice(&template.data[CONFIG_KEY].0).unwrap();
        assert_eq!(read, init_config(&dynakube, &facts));
        let debug = format!("{read:?}");
        assert!(!debug.contains("dt0c01") && !debug.contains("pw@"), "{debug}");
        let partial: InitConfig = serde_json::from_str(r#"{"apiUrl":"https://x/api"}"#).unwrap();
        assert_eq!(partial.initial_connect_retry, -1);
        assert_eq!(partial.api_url, "https://x/api");
    }

    #[test]
    fn init_secret_defaults_and_application_monitoring() {
        let dynakube = app_monitoring("dk", json!({}));
        let tokens = tokens(false, false);
        let nodes = BTreeMap::new();
        let facts = InitSecretFacts {
            tokens: &tokens,
            proxy: None,
            trusted_cas: None,
            tls_cert: None,
            tenant_uuid: "uuid-1",
            cluster_id: "cid",
            monitoring_nodes: &nodes,
        };
        let template = init_secret(&dynakube, &facts).unwrap();
        let config = config_of(&template);
        assert_eq!(config["paasToken"], "dt0c01.API", "falls back to the API token");
        assert_eq!(config["proxy"], "");
        assert_eq!(config["noProxy"], "");
        assert_eq!(config["networkZone"], "");
        assert_eq!(config["trustedCAs"], "");
        assert_eq!(config["tlsCert"], "");
        assert_eq!(config["skipCertCheck"], false);
        assert_eq!(config["hasHost"], false);
        assert_eq!(config["hostGroup"], "");
        assert_eq!(config["monitoringNodes"], json!({}));
        assert_eq!(config["initialConnectRetry"], -1);
        assert_eq!(template.data[PROXY_KEY].0, b"");
    }

    #[test]
    fn ignore_proxy_flag_empties_both_proxy_fields() {
        let dynakube = cloud_native(
            json!({}),
            json!({ "feature.dynatrace.com/oneagent-ignore-proxy": "true" }),
        );
        let tokens = tokens(false, false);
        let nodes = BTreeMap::new();
        let facts = InitSecretFacts {
            tokens: &tokens,
            proxy: Some("http://proxy:3128"),
            trusted_cas: None,
            tls_cert: None,
            tenant_uuid: "uuid-1",
            cluster_id: "cid",
            monitoring_nodes: &nodes,
        };
        let template = init_secret(&dynakube, &facts).unwrap();
        assert_eq!(config_of(&template)["proxy"], "");
        assert_eq!(template.data[PROXY_KEY].0, b"");
    }

    #[test]
    fn init_secret_needs_the_tenant_uuid_and_cluster_id() {
        let dynakube = cloud_native(json!({}), json!({}));
        let tokens = tokens(false, false);
        let nodes = BTreeMap::new();
        let mut facts = InitSecretFacts {
            tokens: &tokens,
            proxy: None,
            trusted_cas: None,
            tls_cert: None,
            tenant_uuid: "",
            cluster_id: "cid",
            monitoring_nodes: &nodes,
        };
        let err = init_secret(&dynakube, &facts).unwrap_err();
        assert!(err.to_string().contains("tenantUUID"), "{err}");
        facts.tenant_uuid = "uuid";
        facts.cluster_id = "";
        let err = init_secret(&dynakube, &facts).unwrap_err();
        assert!(err.to_string().contains("kube-system"), "{err}");
    }

    #[test]
    fn monitoring_nodes_follow_the_node_selector_and_the_tenant() {
        let node_labels = [
            labels(&[("pool", "apps")]),
            labels(&[("pool", "db")]),
            labels(&[("pool", "apps"), ("zone", "b")]),
        ];
        let nodes = || ["n1", "n2", "n3"].into_iter().zip(node_labels.iter().map(Some));
        let dynakube = cloud_native(json!({}), json!({}));
        assert_eq!(
            monitoring_nodes(&dynakube, nodes(), Some("uuid")),
            BTreeMap::from([
                ("n1".to_owned(), "uuid".to_owned()),
                ("n2".to_owned(), "-".to_owned()),
                ("n3".to_owned(), "uuid".to_owned()),
            ])
        );
        assert_eq!(
            monitoring_nodes(&dynakube, nodes(), None),
            BTreeMap::from([("n2".to_owned(), "-".to_owned())]),
            "selected nodes of an unknown tenant are left out"
        );
        let ignoring = cloud_native(
            json!({}),
            json!({ "feature.dynatrace.com/ignore-unknown-state": "true" }),
        );
        assert_eq!(monitoring_nodes(&ignoring, nodes(), Some("")).len(), 3);
        assert!(monitoring_nodes(&app_monitoring("dk", json!({})), nodes(), Some("uuid")).is_empty());
        let everywhere = dk("dk", json!({}));
        assert_eq!(
            monitoring_nodes(&everywhere, nodes(), Some("uuid"))
                .values()
                .collect::<BTreeSet<_>>(),
            BTreeSet::from([&"uuid".to_owned()]),
            "no nodeSelector selects every node"
        );
    }

    fn properties(template: &SecretTemplate) -> String {
        String::from_utf8(template.data[ENDPOINT_PROPERTIES_KEY].0.clone()).unwrap()
    }

    #[test]
    fn data_ingest_secret_contents() {
        let dynakube = cloud_native(json!({}), json!({}));
        let template = data_ingest_secret(&dynakube, &tokens(false, true))
            .unwrap()
            .unwrap();
        assert_eq!(
            properties(&template),
            "DT_METRICS_INGEST_URL=https://abc12345.live.dynatrace.com/api/v2/metrics/ingest\n\
             DT_METRICS_INGEST_API_TOKEN=dt0c01.INGEST\n"
        );
        let secret = template.for_namespace("apps");
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("dynatrace-data-ingest-endpoint")
        );
        assert_eq!(
            secret.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"],
            "activegate"
        );
        assert_eq!(managed_secret_owner(&secret.metadata), Some("dk"));

        let without_token = data_ingest_secret(&dynakube, &tokens(false, false))
            .unwrap()
            .unwrap();
        assert!(
            properties(&without_token).ends_with("DT_METRICS_INGEST_API_TOKEN=\n"),
            "as the reference: an empty token"
        );
    }

    #[test]
    fn data_ingest_through_the_activegate_with_metrics_ingest() {
        let dynakube = cloud_native(
            json!({ "activeGate": { "capabilities": ["routing", "metrics-ingest"] } }),
            json!({}),
        );
        assert_eq!(
            data_ingest_url(&dynakube).unwrap(),
            "http://dk-activegate.dynatrace/e/abc12345/api/v2/metrics/ingest"
        );
        let mut managed = cloud_native(json!({}), json!({}));
        managed.spec.api_url = "https://managed.example/e/env-1/api/".into();
        assert_eq!(
            data_ingest_url(&managed).unwrap(),
            "https://managed.example/e/env-1/api/v2/metrics/ingest"
        );
        managed.spec.api_url = String::new();
        assert!(matches!(
            data_ingest_url(&managed),
            Err(DesiredError::InvalidApiUrl { .. })
        ));
    }

    #[test]
    fn no_data_ingest_secret_without_metadata_enrichment() {
        for annotations in [
            json!({ "feature.dynatrace.com/metadata-enrichment": "false" }),
            json!({ "feature.dynatrace.com/disable-metadata-enrichment": "true" }),
        ] {
            let dynakube = cloud_native(json!({}), annotations);
            assert_eq!(data_ingest_secret(&dynakube, &tokens(false, true)), Ok(None));
        }
    }

    #[test]
    fn the_metadata_enrichment_field_wins_over_the_flag_for_the_data_ingest_secret() {
        let off = cloud_native(
            json!({ "metadataEnrichment": { "enabled": false } }),
            json!({ "feature.dynatrace.com/metadata-enrichment": "true" }),
        );
        assert_eq!(data_ingest_secret(&off, &tokens(false, true)), Ok(None));
        let on = cloud_native(
            json!({ "metadataEnrichment": { "enabled": true } }),
            json!({ "feature.dynatrace.com/metadata-enrichment": "false" }),
        );
        assert!(data_ingest_secret(&on, &tokens(false, true)).unwrap().is_some());
    }

    /// A namespace belongs to a DynaKube when its injection or its enrichment selector selects it.
    fn split(name: &str, enabled: bool) -> DynaKube {
        dk_in(
            OPERATOR_NS,
            name,
            json!({
                "namespaceSelector": { "matchLabels": { "inject": name } },
                "metadataEnrichment": {
                    "enabled": enabled,
                    "namespaceSelector": { "matchLabels": { "enrich": name } },
                },
                "oneAgent": { "applicationMonitoring": {} },
            }),
            json!({}),
        )
    }

    #[test]
    fn namespaces_selected_for_enrichment_only_are_labelled_too() {
        let cluster = Cluster::new(&[
            ("injected", &[("inject", "dk")]),
            ("enriched", &[("enrich", "dk")]),
            ("both", &[("inject", "dk"), ("enrich", "dk")]),
            ("neither", &[]),
        ]);
        let mapping = cluster.map(&[split("dk", true)]);
        let labelled: BTreeSet<&str> = mapping.assigned.keys().map(String::as_str).collect();
        assert_eq!(labelled, BTreeSet::from(["both", "enriched", "injected"]));
        let injector = Injector::new(&split("dk", true)).unwrap();
        let view = |name: &str| cluster.views().find(|v| v.name == name).unwrap();
        let purposes = |name: &str| injector.purposes(&view(name));
        assert_eq!(
            purposes("enriched"),
            NamespacePurposes {
                inject: false,
                enrich: true
            }
        );
        assert_eq!(
            purposes("injected"),
            NamespacePurposes {
                inject: true,
                enrich: false
            }
        );

        // Enrichment off: its selector claims nothing.
        let mapping = cluster.map(&[split("dk", false)]);
        let labelled: BTreeSet<&str> = mapping.assigned.keys().map(String::as_str).collect();
        assert_eq!(labelled, BTreeSet::from(["both", "injected"]));
    }

    #[test]
    fn enrichment_of_one_dynakube_and_injection_of_another_conflict() {
        let cluster = Cluster::new(&[
            ("shared", &[("inject", "a"), ("enrich", "b")]),
            ("a-only", &[("inject", "a")]),
        ]);
        let mapping = cluster.map(&[split("a", true), split("b", true)]);
        assert_eq!(mapping.conflicts.len(), 1, "{mapping:#?}");
        assert_eq!(mapping.conflicts[0].namespace, "shared");
        assert_eq!(mapping.desired_label("a-only"), Some("a"));
        assert_eq!(mapping.desired_label("shared"), None);
    }

    #[test]
    fn an_invalid_enrichment_selector_freezes_the_mapping() {
        let mut dk = split("dk", true);
        dk.spec.metadata_enrichment = serde_json::from_value(json!({
            "namespaceSelector": { "matchExpressions": [{ "key": "enrich", "operator": "Equals" }] },
        }))
        .unwrap();
        let cluster = Cluster::new(&[("kept", &[(INSTANCE_LABEL, "dk")]), ("new", &[("inject", "dk")])]);
        let mapping = cluster.map(&[dk]);
        assert_eq!(mapping.invalid_selectors.len(), 1);
        assert_eq!(mapping.desired_label("kept"), Some("dk"));
        assert_eq!(mapping.desired_label("new"), None);
    }

    #[test]
    fn is_current_compares_data_type_and_our_labels() {
        let template = data_ingest_secret(&cloud_native(json!({}), json!({})), &tokens(false, true))
            .unwrap()
            .unwrap();
        // The fingerprints say the same as `is_current` in every case below.
        let same = |existing: &Secret| {
            let current = template.is_current(existing);
            assert_eq!(secret_fingerprint(existing) == template.fingerprint(), current);
            current
        };
        let mut existing = template.for_namespace("apps");
        assert!(same(&existing));
        existing
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("extra".into(), "kept".into());
        assert!(same(&existing), "other labels do not matter");
        let mut changed = existing.clone();
        changed.data = Some(BTreeMap::new());
        assert!(!same(&changed));
        let mut no_data = existing.clone();
        no_data.data = None;
        assert!(!same(&no_data));
        let mut typed = existing.clone();
        typed.type_ = Some("kubernetes.io/tls".into());
        assert!(!same(&typed));
        typed.type_ = None;
        assert!(same(&typed), "no type is Opaque");
        let mut unlabelled = existing.clone();
        unlabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(LABEL_COMPONENT);
        assert!(!same(&unlabelled));
        let mut relabelled = existing.clone();
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_CREATED_BY.into(), "other".into());
        assert!(!same(&relabelled));
    }

    #[test]
    fn managed_secrets_are_recognised_by_name_and_labels() {
        let meta = |name: &str, component: &str| ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels(&[
                (LABEL_NAME, OPERATOR_NAME),
                (LABEL_CREATED_BY, "dk"),
                (LABEL_COMPONENT, component),
            ])),
            ..Default::default()
        };
        assert_eq!(
            managed_secret_owner(&meta(names::INIT_SECRET, "webhook")),
            Some("dk")
        );
        assert_eq!(
            managed_secret_owner(&meta(names::ENRICHMENT_SECRET, "activegate")),
            Some("dk")
        );
        assert_eq!(
            managed_secret_owner(&meta(names::INIT_SECRET, "activegate")),
            None
        );
        assert_eq!(
            managed_secret_owner(&meta("dk-oneagent-tenant-secret", "webhook")),
            None
        );
        let mut users = meta(names::INIT_SECRET, "webhook");
        users.labels = None;
        assert_eq!(
            managed_secret_owner(&users),
            None,
            "a user's Secret of the same name"
        );
        assert_eq!(
            managed_secrets_selector(),
            "app.kubernetes.io/name=dynatrace-operator,app.kubernetes.io/created-by,\
             app.kubernetes.io/component in (webhook,activegate)"
        );
    }
}
