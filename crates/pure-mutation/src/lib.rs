//! Code-module injection, decided without I/O (spec §3.3–3.9): a pod, its namespace, the DynaKube and a
//! few settings from the webhook's caches go in; the RFC 6902 patch of the pod, why nothing changed and
//! the events to record come out. The webhook server (`io-webhook`, `/inject` and `/label-ns`) only looks
//! things up and answers.
//!
//! - [`mutate_pod`]: the pod webhook. Never denies: every problem of ours admits the pod unchanged with a
//!   warning event ([`Skip::is_failure`]).
//! - [`workload`]: the pod's workload through its controller owners, for metadata enrichment.
//! - [`label_namespace`]: the namespace webhook. Never denies either.
//!
//! Differences from the reference, on purpose:
//! - The webhook never creates the init Secret (the operator does): a pod arriving before it is admitted
//!   unchanged with a warning, since a Secret volume that does not exist would keep the pod in
//!   ContainerCreating. The same for a missing DynaKube and empty connection info (the reference then
//!   still added its init container). A missing enrichment Secret drops only the enrichment.
//! - A DynaKube that asks for CSI while the driver is not installed injects in installer mode (download
//!   by the init container) with a warning, instead of a CSI volume that cannot mount.
//! - A pod counts as injected when it has our init container (either name); annotations copied from an
//!   injected pod's manifest without the init container do not stop the injection.
//! - Code modules and metadata enrichment follow their own namespace selectors
//!   (`spec.metadataEnrichment.namespaceSelector`, read from the cached DynaKube against the cached
//!   namespace labels): a namespace labelled for a DynaKube may get either part or both.
//! - Reinvocation injects every application container that lacks what we add and recomputes
//!   `CONTAINERS_COUNT` and `CONTAINER_<i>_*` for the whole container list (fixes §(b)15), so
//!   `mutate(mutate(p)) == mutate(p)`.
//! - The read-only CSI mounts follow the install path (fixes §(b)14).
//! - The init container's `runAsNonRoot` follows the user id only (group 0 is allowed by Pod Security
//!   `restricted`), and it gets the `RuntimeDefault` seccomp profile also when the application
//!   containers set a profile and the pod does not, so that injected `restricted` pods stay admissible.

mod enrichment;
mod init;
pub mod names;
mod namespace;
mod oneagent;
mod patch;
pub mod workload;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use pure_api::dynakube::{CsiDriverUse, DynaKube};
use pure_desired::mapping::{INSTANCE_LABEL, labelled_purposes};
use pure_desired::pod::env_value;
use serde::Serialize;

pub use namespace::{NamespaceOutcome, label_namespace};
pub use workload::{Lookup, OwnerRef, Workload, workload};

use names::{
    ANNOTATION_DATA_INGEST_INJECT, ANNOTATION_DATA_INGEST_INJECTED, ANNOTATION_DYNAKUBE_INJECTED,
    ANNOTATION_INJECT, ANNOTATION_ONEAGENT_INJECT, ANNOTATION_ONEAGENT_INJECTED,
    ANNOTATION_OPENSHIFT_DEBUG_CONTAINER, ANNOTATION_OPENSHIFT_DEBUG_RESOURCE, INIT_CONTAINER_NAME,
    LEGACY_INIT_CONTAINER_NAME, env,
};

/// The operator's version, for the deployment-metadata string (the workspace has one version).
pub const OPERATOR_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything the webhook knows besides the pod; all of it comes from watch caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The init container's image: the webhook's own.
    pub init_image: String,
    /// The UID of `kube-system`.
    pub cluster_id: String,
    /// The webhook's (and operator's) namespace, where the DynaKubes are.
    pub webhook_namespace: String,
    /// The CSI driver runs for the DynaKube, so CSI volumes can mount.
    pub csi_driver_installed: bool,
}

/// The namespace as cached.
#[derive(Debug, Clone, Copy)]
pub struct NamespaceFacts<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its labels (the injection label among them).
    pub labels: &'a BTreeMap<String, String>,
    /// Its annotations (the release mappings among them).
    pub annotations: &'a BTreeMap<String, String>,
}

/// One admission of a pod.
#[derive(Debug, Clone)]
pub struct PodRequest<'a> {
    /// The pod as the API server sent it.
    pub pod: &'a Pod,
    /// The pod's namespace.
    pub namespace: NamespaceFacts<'a>,
    /// The DynaKube the namespace label names; `None` if it is not in the cache.
    pub dynakube: Option<&'a DynaKube>,
    /// The init Secret `dynatrace-dynakube-config` exists in the pod's namespace.
    pub init_secret_present: bool,
    /// The enrichment Secret `dynatrace-data-ingest-endpoint` exists there.
    pub enrichment_secret_present: bool,
    /// The pod's workload ([`workload`]).
    pub workload: Workload,
    /// The webhook's settings.
    pub settings: &'a Settings,
}

/// What `/inject` answers (always allowed) and records.
#[derive(Debug, Clone, PartialEq)]
pub struct PodOutcome {
    /// RFC 6902 patch of the pod; empty when nothing changes.
    pub patch: json_patch::Patch,
    /// What happened.
    pub result: PodResult,
    /// Events to record.
    pub events: Vec<EventSpec>,
}

/// What happened to a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodResult {
    /// Injected for the first time.
    Injected,
    /// Already injected; containers added since (by a later webhook) were injected.
    Updated,
    /// Admitted as it is.
    Unchanged(Skip),
}

/// Why a pod was admitted without change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The namespace has no injection label (stale cache, or every pod is sent).
    NamespaceNotMapped,
    /// The namespace label names a DynaKube that is not there.
    DynaKubeMissing {
        /// The name in the label.
        name: String,
    },
    /// The namespace label names a DynaKube that claims no namespace: it neither injects code modules nor
    /// enriches pods (its mode or selectors changed; the operator removes the label).
    DynaKubeNotInjecting {
        /// The DynaKube's name.
        name: String,
    },
    /// The pod has no containers to inject.
    NoContainers,
    /// The pod says `dynatrace.com/inject: "false"`.
    InjectionDisabled,
    /// An OpenShift debug pod (copy of another pod).
    OpenShiftDebugPod,
    /// Already injected, and nothing was added since (or reinvocation is turned off).
    AlreadyInjected,
    /// Neither the code module nor enrichment applies (per-pod opt-in, `automatic-injection: false`).
    NotOptedIn,
    /// The namespace is labelled for the DynaKube, but neither of its selectors (code modules,
    /// `metadataEnrichment`) selects it any more; the operator removes the label.
    NotSelected,
    /// The init Secret is not in the namespace yet (the operator creates it).
    InitSecretMissing,
    /// The DynaKube has no communication hosts yet (the operator fetches them).
    EmptyConnectionInfo,
    /// Only enrichment applies and its Secret is not in the namespace yet.
    EnrichmentSecretMissing,
}

impl Skip {
    /// A stable CamelCase name for events and the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NamespaceNotMapped => "NamespaceNotMapped",
            Self::DynaKubeMissing { .. } => "DynaKubeMissing",
            Self::DynaKubeNotInjecting { .. } => "DynaKubeNotInjecting",
            Self::NoContainers => "NoContainers",
            Self::InjectionDisabled => "InjectionDisabled",
            Self::OpenShiftDebugPod => "OpenShiftDebugPod",
            Self::AlreadyInjected => "AlreadyInjected",
            Self::NotOptedIn => "NotOptedIn",
            Self::NotSelected => "NotSelected",
            Self::InitSecretMissing => "InitSecretMissing",
            Self::EmptyConnectionInfo => "EmptyConnectionInfo",
            Self::EnrichmentSecretMissing => "EnrichmentSecretMissing",
        }
    }

    /// Whether the pod should have been injected and was not because of us (a warning event), rather
    /// than by the user's choice or because there was nothing to do.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Self::DynaKubeMissing { .. }
                | Self::DynaKubeNotInjecting { .. }
                | Self::InitSecretMissing
                | Self::EmptyConnectionInfo
                | Self::EnrichmentSecretMissing
        )
    }

    /// For a failure: what went wrong and what to do, for the warning event.
    fn explain(&self, namespace: &str, dynakube: &str) -> String {
        match self {
            Self::DynaKubeMissing { name } => format!(
                "namespace {namespace} is assigned to DynaKube {name}, which does not exist; create it or \
                 remove the label {INSTANCE_LABEL} from the namespace"
            ),
            Self::DynaKubeNotInjecting { name } => format!(
                "namespace {namespace} is labelled for DynaKube {name}, which neither injects code modules \
                 nor enriches pods (classicFullStack and hostMonitoring enrich only with \
                 spec.metadataEnrichment.namespaceSelector); the operator removes the label on its next \
                 reconcile"
            ),
            Self::InitSecretMissing => format!(
                "the Secret {} is not in namespace {namespace} yet; the operator creates it when it \
                 reconciles DynaKube {dynakube}: check the operator's logs and the DynaKube's status, then \
                 restart the pod",
                pure_api::dynakube::names::INIT_SECRET
            ),
            Self::EmptyConnectionInfo => format!(
                "DynaKube {dynakube} has no communication hosts in its status yet; the operator fetches them \
                 from the tenant: check the DynaKube's status and the operator's logs, then restart the pod"
            ),
            Self::EnrichmentSecretMissing => format!(
                "the Secret {} is not in namespace {namespace} yet, so metadata enrichment was left out; the \
                 operator creates it when it reconciles DynaKube {dynakube}",
                pure_api::dynakube::names::ENRICHMENT_SECRET
            ),
            other => other.reason().to_owned(),
        }
    }
}

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTarget {
    /// The pod's namespace (the pod has no name or UID yet at admission).
    Namespace(String),
    /// A DynaKube.
    DynaKube {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something the user may want to know.
    Normal,
    /// Something went wrong.
    Warning,
}

/// An event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    /// What it is about.
    pub regarding: EventTarget,
    /// Normal or Warning.
    pub type_: EventType,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What happened, and what to do when it is a warning.
    pub message: String,
}

/// Event reason of a first injection.
pub const EVENT_INJECT: &str = "Inject";
/// Event reason of a reinvocation that injected added containers.
pub const EVENT_UPDATE_POD: &str = "UpdatePod";
/// Event reason of a DynaKube that wants CSI without the driver.
pub const EVENT_CSI_DRIVER_MISSING: &str = "CSIDriverMissing";

/// The pod webhook: decides and builds the patch (spec §3.4, with the differences in the crate
/// documentation).
pub fn mutate_pod(req: &PodRequest<'_>) -> PodOutcome {
    mutate(req).0
}

/// [`mutate_pod`] with the mutated pod (the original when it is unchanged), which the patch must turn
/// the original into.
pub(crate) fn mutate(req: &PodRequest<'_>) -> (PodOutcome, Pod) {
    match decide(req) {
        Ok(mutated) => mutated,
        Err(skip) => {
            let events = if skip.is_failure() {
                let dynakube = req
                    .dynakube
                    .and_then(|d| d.metadata.name.as_deref())
                    .unwrap_or_default();
                vec![EventSpec {
                    regarding: EventTarget::Namespace(req.namespace.name.to_owned()),
                    type_: EventType::Warning,
                    reason: skip.reason(),
                    message: format!(
                        "pod {} was admitted without injection: {}",
                        pod_display_name(req.pod),
                        skip.explain(req.namespace.name, dynakube)
                    ),
                }]
            } else {
                Vec::new()
            };
            let outcome = PodOutcome {
                patch: json_patch::Patch(Vec::new()),
                result: PodResult::Unchanged(skip),
                events,
            };
            (outcome, req.pod.clone())
        }
    }
}

fn decide(req: &PodRequest<'_>) -> Result<(PodOutcome, Pod), Skip> {
    let label = req
        .namespace
        .labels
        .get(INSTANCE_LABEL)
        .ok_or(Skip::NamespaceNotMapped)?;
    // A pod injected before (a reinvocation) is not our failure, whatever happened to its DynaKube.
    let missing = |skip| {
        if is_injected(req.pod) {
            Skip::AlreadyInjected
        } else {
            skip
        }
    };
    let dynakube = req
        .dynakube
        .ok_or_else(|| missing(Skip::DynaKubeMissing { name: label.clone() }))?;
    if !dynakube.namespace_selectors().claims_namespaces() {
        return Err(missing(Skip::DynaKubeNotInjecting { name: label.clone() }));
    }
    let annotation = |key: &str| {
        req.pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    };
    if annotation(ANNOTATION_INJECT).and_then(parse_bool) == Some(false) {
        return Err(Skip::InjectionDisabled);
    }
    if annotation(ANNOTATION_OPENSHIFT_DEBUG_CONTAINER).is_some()
        && annotation(ANNOTATION_OPENSHIFT_DEBUG_RESOURCE).is_some()
    {
        return Err(Skip::OpenShiftDebugPod);
    }
    if req.pod.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
        return Err(Skip::NoContainers);
    }
    let flags = dynakube.feature_flags();
    let dynakube_event = |type_, reason, message| EventSpec {
        regarding: EventTarget::DynaKube {
            namespace: dynakube.metadata.namespace.clone().unwrap_or_default(),
            name: dynakube.metadata.name.clone().unwrap_or_default(),
        },
        type_,
        reason,
        message,
    };
    let mut pod = req.pod.clone();

    if let Some(init) = init_container_index(&pod) {
        if !flags.webhook_reinvocation_policy() {
            return Err(Skip::AlreadyInjected);
        }
        reinvoke(&mut pod, init, req, dynakube);
        // Most reinvocations find nothing to do: comparing the typed pods is far cheaper than the diff.
        if pod == *req.pod {
            return Err(Skip::AlreadyInjected);
        }
        let patch = patch::pod(req.pod, &pod);
        if patch.0.is_empty() {
            return Err(Skip::AlreadyInjected);
        }
        let outcome = PodOutcome {
            patch,
            result: PodResult::Updated,
            events: vec![dynakube_event(
                EventType::Normal,
                EVENT_UPDATE_POD,
                format!(
                    "injected the containers added to pod {} in namespace {} by a later webhook",
                    pod_display_name(req.pod),
                    req.namespace.name
                ),
            )],
        };
        return Ok((outcome, pod));
    }

    // Which parts the namespace gets: its labels against the DynaKube's two selectors, both cached.
    let purposes = labelled_purposes(dynakube, req.namespace.labels);
    if !purposes.any() {
        return Err(Skip::NotSelected);
    }
    let automatic = flags.automatic_injection();
    let inject_oneagent = purposes.inject
        && annotation(ANNOTATION_ONEAGENT_INJECT)
            .and_then(parse_bool)
            .unwrap_or(automatic);
    let mut inject_enrichment = purposes.enrich
        && annotation(ANNOTATION_DATA_INGEST_INJECT)
            .and_then(parse_bool)
            .unwrap_or(automatic);
    if !inject_oneagent && !inject_enrichment {
        return Err(Skip::NotOptedIn);
    }
    let mut events = Vec::new();
    if inject_oneagent {
        if !req.init_secret_present {
            return Err(Skip::InitSecretMissing);
        }
        if !has_communication_hosts(dynakube) {
            return Err(Skip::EmptyConnectionInfo);
        }
    }
    if inject_enrichment && !req.enrichment_secret_present {
        if !inject_oneagent {
            return Err(Skip::EnrichmentSecretMissing);
        }
        inject_enrichment = false;
        events.push(EventSpec {
            regarding: EventTarget::Namespace(req.namespace.name.to_owned()),
            type_: EventType::Warning,
            reason: Skip::EnrichmentSecretMissing.reason(),
            message: format!(
                "pod {} was injected without metadata enrichment: {}",
                pod_display_name(req.pod),
                Skip::EnrichmentSecretMissing.explain(
                    req.namespace.name,
                    dynakube.metadata.name.as_deref().unwrap_or_default()
                )
            ),
        });
    }

    let plan = inject_oneagent.then(|| oneagent::Plan::fresh(req, dynakube));
    if let Some(plan) = &plan
        && dynakube.csi_driver_use() == CsiDriverUse::Required
        && !plan.csi
    {
        events.push(dynakube_event(
            EventType::Warning,
            EVENT_CSI_DRIVER_MISSING,
            format!(
                "DynaKube needs the CSI driver {} for code modules, but it is not installed; pod {} in \
                 namespace {} downloads the code module itself instead (installer mode). Install the CSI \
                 driver to share one copy per node",
                names::CSI_DRIVER,
                pod_display_name(req.pod),
                req.namespace.name
            ),
        ));
    }
    let mut init = init::base(req, dynakube, plan.as_ref().is_some_and(|p| p.csi));
    let mut annotations = Vec::new();
    if let Some(plan) = &plan {
        oneagent::inject_pod(&mut pod, &mut init, plan, req, dynakube);
        annotations.push(ANNOTATION_ONEAGENT_INJECTED);
    }
    if inject_enrichment {
        enrichment::inject_pod(&mut pod, &mut init, &req.workload);
        annotations.push(ANNOTATION_DATA_INGEST_INJECTED);
    }
    annotations.push(ANNOTATION_DYNAKUBE_INJECTED);
    let pod_annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for key in annotations {
        pod_annotations.insert(key.to_owned(), "true".to_owned());
    }
    if let Some(spec) = pod.spec.as_mut() {
        spec.init_containers.get_or_insert_with(Vec::new).push(init);
    }
    events.push(dynakube_event(
        EventType::Normal,
        EVENT_INJECT,
        format!(
            "injecting {} into pod {} in namespace {}",
            match (inject_oneagent, inject_enrichment) {
                (true, true) => "the OneAgent code module and metadata enrichment",
                (true, false) => "the OneAgent code module",
                _ => "metadata enrichment",
            },
            pod_display_name(req.pod),
            req.namespace.name
        ),
    ));
    let outcome = PodOutcome {
        patch: patch::pod(req.pod, &pod),
        result: PodResult::Injected,
        events,
    };
    Ok((outcome, pod))
}

/// A reinvoked admission of an injected pod: every application container gets what it lacks, and the
/// init container's container list is recomputed. What was injected is read from our init container,
/// not from annotations a user may have copied.
fn reinvoke(pod: &mut Pod, init_index: usize, req: &PodRequest<'_>, dynakube: &DynaKube) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let Some(mut init) = spec
        .init_containers
        .as_ref()
        .and_then(|c| c.get(init_index))
        .cloned()
    else {
        return;
    };
    if env_value(init.env.as_deref(), env::ONEAGENT_INJECTED) == Some("true") {
        let plan = oneagent::Plan::from_init(&init, req, dynakube);
        for container in &mut spec.containers {
            oneagent::inject_container(container, &plan);
        }
        oneagent::set_container_vars(&mut init, &spec.containers);
    }
    if env_value(init.env.as_deref(), env::DATA_INGEST_INJECTED) == Some("true") {
        for container in &mut spec.containers {
            enrichment::inject_container(container);
        }
    }
    if let Some(slot) = spec.init_containers.as_mut().and_then(|c| c.get_mut(init_index)) {
        *slot = init;
    }
}

/// Whether the pod has our init container (by its current or its pre-v1.4 name): it was injected. A pod
/// of a mapped namespace that is not, and for which [`mutate_pod`] answers [`PodResult::Injected`], missed
/// its injection (created while the webhook was down or before the namespace was labelled).
pub fn is_injected(pod: &Pod) -> bool {
    init_container_index(pod).is_some()
}

/// The index of our init container, by its current or its pre-v1.4 name.
fn init_container_index(pod: &Pod) -> Option<usize> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .position(|c: &Container| c.name == INIT_CONTAINER_NAME || c.name == LEGACY_INIT_CONTAINER_NAME)
}

/// The DynaKube's status has OneAgent communication hosts.
fn has_communication_hosts(dynakube: &DynaKube) -> bool {
    dynakube
        .status
        .as_ref()
        .and_then(|s| s.one_agent.as_ref())
        .and_then(|o| o.connection_info_status.as_ref())
        .and_then(|c| c.communication_hosts.as_ref())
        .is_some_and(|h| !h.is_empty())
}

/// The pod's name for messages: its name, else its `generateName` prefix.
fn pod_display_name(pod: &Pod) -> String {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}<generated>"),
        _ => "<unnamed>".to_owned(),
    }
}

/// Go's `strconv.ParseBool`, which the reference uses for annotations.
pub use pure_api::annotations::parse_bool;

/// The RFC 6902 patch from `before` to `after`, both as serialized.
pub(crate) fn diff<T: Serialize>(before: &T, after: &T) -> json_patch::Patch {
    // Kubernetes types always serialize; a failure on both sides gives an empty patch, not a wrong one.
    let before = serde_json::to_value(before).unwrap_or_default();
    let after = serde_json::to_value(after).unwrap_or_default();
    json_patch::diff(&before, &after)
}
