//! Validation of DynaKubes: every rule runs, every problem is reported at once, each message says what is
//! wrong, where, and how to fix it.
//!
//! The rules are pure functions of the DynaKube and a [`ClusterView`], the part of the cluster's state some
//! rules need (other DynaKubes, nodes, namespaces, whether the CSI driver is installed). The webhook server
//! fills the view from its caches.

pub mod messages;

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt as _;
use regex::Regex;
use url::Url;

use crate::dynakube::{
    CsiDriverUse, DynaKube, EXAMPLE_API_URL, Mode, NamespaceSelectors, ProxySource, feature_flags as ff,
    names,
};
use crate::selector::{
    Labels, is_dns1035_label, label_key_problem, label_value_problem, node_selector_matches,
    selector_problems,
};

/// Environment variable of the OneAgent that turns volume storage on or off.
pub const VOLUME_STORAGE_ENV: &str = "ONEAGENT_ENABLE_VOLUME_STORAGE";

/// How many example nodes or namespaces a conflict message names.
const EXAMPLES: usize = 3;

/// The proxy Secret named by `spec.proxy.valueFrom`, as the webhook found it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProxySecret {
    /// `valueFrom` is not used, or the Secret was not looked up.
    #[default]
    NotLookedUp,
    /// The value of the Secret's `proxy` key.
    Value(String),
    /// The Secret exists but has no `proxy` key.
    MissingKey,
    /// The Secret could not be read (the text says why).
    Unreadable(String),
}

/// The cluster state some rules need. Unknown parts (`None`) skip the rules that need them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterView<'a> {
    /// Every DynaKube in the cluster (the one being validated may be among them and is skipped).
    pub dynakubes: &'a [DynaKube],
    /// Every node's metadata (the rules need names and labels only).
    pub nodes: &'a [ObjectMeta],
    /// Every namespace's metadata.
    pub namespaces: &'a [ObjectMeta],
    /// Whether the CSI driver's DaemonSet exists in the DynaKube's namespace.
    pub csi_driver_installed: Option<bool>,
    /// Whether Istio's CRDs are installed.
    pub istio_installed: Option<bool>,
}

/// The result of validating one DynaKube.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Problems that deny the request, in rule order.
    pub errors: Vec<String>,
    /// Advice returned with an allowed request.
    pub warnings: Vec<String>,
}

impl Verdict {
    /// The denial text for a DynaKube: a count header and the numbered errors, or `None` when there are
    /// none.
    pub fn denial(&self) -> Option<String> {
        self.denial_for("Dynakube")
    }

    /// The denial text, naming `kind` in the header.
    pub fn denial_for(&self, kind: &str) -> Option<String> {
        if self.errors.is_empty() {
            return None;
        }
        let mut text = messages::denial_header(self.errors.len(), kind);
        for (i, error) in self.errors.iter().enumerate() {
            text.push_str(&format!("\n\n{}. {error}", i + 1));
        }
        Some(text)
    }
}

/// How the user's API version spells the fields that messages name. The rules run on the internal model,
/// so they hold for every version; only the names in the messages differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// v1alpha1: classicFullStack at the top of `spec`.
    V1alpha1,
    /// v1beta1 (and the internal model): one top-level `namespaceSelector`.
    V1beta1,
    /// v1beta2: the selector inside each app-injection mode; `useCSIDriver` still exists.
    V1beta2,
    /// v1beta3 and later: as v1beta2, without `useCSIDriver` (the CSI driver is used when installed).
    V1beta3OrLater,
}

impl Spelling {
    /// The spelling of an `apiVersion` (`dynatrace.com/v1beta6`); unknown versions read as v1beta1.
    pub fn of(api_version: &str) -> Self {
        match api_version.rsplit('/').next().unwrap_or_default() {
            "v1alpha1" => Self::V1alpha1,
            "v1beta2" => Self::V1beta2,
            "v1beta3" | "v1beta4" | "v1beta5" | "v1beta6" => Self::V1beta3OrLater,
            _ => Self::V1beta1,
        }
    }

    /// The path of a mode's section.
    fn mode(self, mode: Mode) -> String {
        match (self, mode) {
            (Self::V1alpha1, Mode::ClassicFullStack) => "spec.classicFullStack".to_owned(),
            _ => format!("spec.oneAgent.{}", mode.field()),
        }
    }

    /// The path of a host mode's OneAgent version (v1alpha1 keeps it in `spec.oneAgent`).
    fn version(self, mode: Mode) -> String {
        match self {
            Self::V1alpha1 => "spec.oneAgent.version".to_owned(),
            _ => format!("{}.version", self.mode(mode)),
        }
    }

    /// The path of the app-injection namespace selector, for the DynaKube's mode.
    fn namespace_selector(self, mode: Option<Mode>) -> String {
        match (self, mode) {
            (
                Self::V1beta2 | Self::V1beta3OrLater,
                Some(mode @ (Mode::CloudNativeFullStack | Mode::ApplicationMonitoring)),
            ) => format!("{}.namespaceSelector", self.mode(mode)),
            _ => "spec.namespaceSelector".to_owned(),
        }
    }
}

/// Validates a DynaKube against every rule, naming fields as v1beta1 spells them.
pub fn validate(dynakube: &DynaKube, cluster: &ClusterView<'_>, proxy_secret: &ProxySecret) -> Verdict {
    validate_as(dynakube, "dynatrace.com/v1beta1", cluster, proxy_secret)
}

/// Validates a DynaKube (the internal model) that the user wrote in `api_version`: every rule holds for
/// every version, and messages name the fields as that version spells them.
pub fn validate_as(
    dynakube: &DynaKube,
    api_version: &str,
    cluster: &ClusterView<'_>,
    proxy_secret: &ProxySecret,
) -> Verdict {
    let spelling = Spelling::of(api_version);
    let mut errors = Vec::new();
    errors.extend(api_url_errors(&dynakube.spec.api_url));
    errors.extend(csi_driver_errors(dynakube, cluster));
    errors.extend(proxy_errors(dynakube, proxy_secret));
    errors.extend(one_agent_mode_errors(dynakube));
    errors.extend(node_selector_errors(dynakube, cluster, spelling));
    errors.extend(namespace_selector_errors(dynakube, cluster, spelling));
    errors.extend(metadata_enrichment_errors(dynakube));
    if !dynakube.feature_flags().readonly_host_fs() && dynakube.feature_flags().multiple_osagents_on_node() {
        errors.push(messages::READONLY_FS_DISABLED_WITH_MULTIPLE_OSAGENTS.to_owned());
    }
    if dynakube.spec.enable_istio == Some(true) && cluster.istio_installed == Some(false) {
        errors.push(
            "The DynaKube sets spec.enableIstio, but Istio's resources (networking.istio.io) are not installed \
             in the cluster. Install Istio first, or remove spec.enableIstio."
                .to_owned(),
        );
    }
    errors.extend(code_modules_image_errors(dynakube, cluster, spelling));
    errors.extend(volume_storage_errors(dynakube));
    errors.extend(one_agent_version_errors(dynakube, spelling));
    errors.extend(one_agent_args_errors(dynakube, spelling));
    errors.extend(control_character_errors(dynakube, spelling));
    errors.extend(host_path_errors(dynakube, spelling));
    let name = dynakube.name_any();
    if !name.is_empty() && !is_dns1035_label(&name) {
        errors.push(messages::NAME_VIOLATES_DNS1035.to_owned());
    }
    Verdict {
        errors,
        warnings: warnings(dynakube)
            .into_iter()
            .chain(unused_code_modules_image(dynakube, spelling))
            .chain(deprecated_auto_update(dynakube, spelling))
            .chain(overridden_flags(dynakube, spelling))
            .collect(),
    }
}

/// An applicationMonitoring DynaKube written in v1beta3 or later that still carries `useCSIDriver: false`
/// (kept from when it was written as v1beta2) never uses the CSI driver, so an image would be ignored.
fn unused_code_modules_image(dynakube: &DynaKube, spelling: Spelling) -> Option<String> {
    let image_set = dynakube
        .app_injection_spec()
        .and_then(|a| a.code_modules_image.as_deref())
        .is_some_and(|i| !i.is_empty());
    (spelling == Spelling::V1beta3OrLater
        && dynakube.mode() == Some(Mode::ApplicationMonitoring)
        && image_set
        && dynakube.csi_driver_use() == CsiDriverUse::Never)
        .then(|| {
            "spec.oneAgent.applicationMonitoring.codeModulesImage is not used: this DynaKube keeps \
         useCSIDriver: false from when it was written as dynatrace.com/v1beta2, so pods download the code \
         modules instead. Write the DynaKube as v1beta2 without useCSIDriver (or with useCSIDriver: true) \
         to use the image."
                .to_owned()
        })
}

/// The path of the metadata-enrichment namespace selector.
const ENRICHMENT_SELECTOR: &str = "spec.metadataEnrichment.namespaceSelector";

/// The syntax of `spec.metadataEnrichment.namespaceSelector` (v1beta2 and later).
fn metadata_enrichment_errors(dynakube: &DynaKube) -> Vec<String> {
    let problems = dynakube
        .spec
        .metadata_enrichment
        .as_ref()
        .and_then(|m| m.namespace_selector.as_ref())
        .map(selector_problems)
        .unwrap_or_default();
    problems
        .into_iter()
        .map(|p| {
            format!("spec.metadataEnrichment.namespaceSelector is invalid: {p}. Fix the label selector.")
        })
        .collect()
}

/// Validates a legacy OneAgent resource: its API URL, the syntax of its node selector, and its name.
pub fn validate_oneagent(oneagent: &crate::oneagent::OneAgent) -> Verdict {
    let mut errors: Vec<String> = api_url_errors(&oneagent.spec.api_url)
        .into_iter()
        .map(|e| e.replace("The DynaKube's", "The OneAgent's"))
        .collect();
    for (key, value) in oneagent.spec.node_selector.iter().flatten() {
        let problems = label_key_problem(key)
            .map(|p| format!("key {key:?} {p}"))
            .into_iter()
            .chain(label_value_problem(value).map(|p| format!("value {value:?} of {key:?} {p}")));
        errors.extend(
            problems
                .map(|p| format!("spec.nodeSelector is invalid: {p}. Fix the label in the node selector.")),
        );
    }
    let name = oneagent.name_any();
    if !name.is_empty() && !is_dns1035_label(&name) {
        errors.push(messages::NAME_VIOLATES_DNS1035.replace("DynaKube", "OneAgent"));
    }
    Verdict {
        errors,
        warnings: Vec::new(),
    }
}

/// Rules 1 and 2: the API URL is set, not the example, and looks like an environment's API URL.
fn api_url_errors(api_url: &str) -> Vec<String> {
    let mut errors = Vec::new();
    // Besides the exact example, catch an edited copy that still has the placeholder host.
    if api_url.is_empty() || api_url == EXAMPLE_API_URL || api_url.contains("ENVIRONMENTID") {
        errors.push(messages::NO_API_URL.to_owned());
    }
    let host_ok = Url::parse(api_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http"))
        .and_then(|u| {
            u.host_str()
                .map(|h| !h.split('.').next().unwrap_or_default().is_empty())
        })
        .unwrap_or(false);
    if !api_url.ends_with("/api") || !host_ok {
        errors.push(format!(
            "The DynaKube's specification has an invalid API URL value set (spec.apiUrl: {api_url:?}). Make sure \
             you correctly specify the URL in your custom resource (including the /api postfix): \
             https://<environment-id>.live.dynatrace.com/api, or https://<host>/e/<environment-id>/api for \
             Dynatrace Managed."
        ));
    }
    errors
}

/// Rules 3 and 4: the CSI driver is installed when the mode needs it, and only then can the read-only CSI
/// volume be used.
fn csi_driver_errors(dynakube: &DynaKube, cluster: &ClusterView<'_>) -> Vec<String> {
    let mut errors = Vec::new();
    let csi = dynakube.csi_driver_use();
    if csi == CsiDriverUse::Required && cluster.csi_driver_installed == Some(false) {
        let mode = dynakube.mode().map_or("this configuration", Mode::field);
        errors.push(format!(
            "The DynaKube uses {mode}, which needs the CSI driver, but the DaemonSet {} does not exist in \
             namespace {:?}. Install the operator with the CSI driver (Helm value csidriver.enabled=true), \
             or use a mode that does not need it.",
            names::CSI_DAEMONSET,
            dynakube.namespace().unwrap_or_default()
        ));
    }
    if dynakube.feature_flags().injection_readonly_volume() && !csi.may_use() {
        errors.push(format!(
            "The DynaKube sets {}{}: \"true\", but its configuration does not use the CSI driver, so there is \
             no CSI volume to mount read-only. Remove the annotation, or use cloudNativeFullStack or \
             applicationMonitoring with useCSIDriver: true.",
            ff::PREFIX,
            ff::INJECTION_READONLY_VOLUME
        ));
    }
    errors
}

/// Characters a proxy password must not contain: the OneAgent's proxy setting cannot escape them.
const FORBIDDEN_PROXY_PASSWORD_CHARS: &[char] = &[' ', '\'', '`', ',', '&', '=', '+', '%', '\\'];

/// Rule 9: the proxy URL parses, its password has no characters the agents cannot handle, and a proxy
/// Secret can be read.
fn proxy_errors(dynakube: &DynaKube, secret: &ProxySecret) -> Vec<String> {
    let (url, field) = match dynakube.proxy() {
        Some(ProxySource::Value(value)) => (value.to_owned(), "spec.proxy.value".to_owned()),
        Some(ProxySource::Secret(secret_name)) => {
            let field = format!("the key \"proxy\" of Secret {secret_name:?} (spec.proxy.valueFrom)");
            match secret {
                ProxySecret::Value(value) => (value.clone(), field),
                ProxySecret::MissingKey => {
                    return vec![format!(
                        "The proxy Secret {secret_name:?} named by spec.proxy.valueFrom has no key \"proxy\". \
                         Put the proxy URL under the key \"proxy\"."
                    )];
                }
                ProxySecret::Unreadable(reason) => {
                    return vec![format!(
                        "The proxy Secret {secret_name:?} named by spec.proxy.valueFrom cannot be read: \
                         {reason}. Create it in the DynaKube's namespace with the proxy URL under the key \
                         \"proxy\"."
                    )];
                }
                ProxySecret::NotLookedUp => return Vec::new(),
            }
        }
        None => return Vec::new(),
    };
    let parsed = match Url::parse(&url) {
        Ok(parsed) if parsed.host_str().is_some() => parsed,
        _ => {
            return vec![format!(
                "The proxy URL in {field} is not a valid URL. Use the form http://[user:password@]host:port."
            )];
        }
    };
    let password = parsed.password().map(percent_decode).unwrap_or_default();
    if password.contains(FORBIDDEN_PROXY_PASSWORD_CHARS) {
        return vec![format!(
            "The proxy password in {field} contains a character OneAgent cannot use (one of: space ' ` , & = + \
             % \\). Choose a password without them."
        )];
    }
    Vec::new()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Rule 10: at most one OneAgent mode.
fn one_agent_mode_errors(dynakube: &DynaKube) -> Vec<String> {
    let modes = dynakube
        .spec
        .one_agent
        .as_ref()
        .map(|o| o.modes())
        .unwrap_or_default();
    if modes.len() > 1 {
        let set: Vec<_> = modes.iter().map(|m| m.field()).collect();
        vec![format!(
            "{} (set: {}.)",
            messages::CONFLICTING_ONE_AGENT_MODES,
            set.join(", ")
        )]
    } else {
        Vec::new()
    }
}

fn labels_of(meta: &ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

fn name_of(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn same_object(a: &DynaKube, b: &DynaKube) -> bool {
    a.name_any() == b.name_any() && a.namespace() == b.namespace()
}

fn qualified(dynakube: &DynaKube) -> String {
    format!(
        "{}/{}",
        dynakube.namespace().unwrap_or_default(),
        dynakube.name_any()
    )
}

fn examples(items: &[String]) -> String {
    let shown: Vec<_> = items.iter().take(EXAMPLES).cloned().collect();
    let more = items.len().saturating_sub(EXAMPLES);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Rule 11, and the syntax of the node selector: a node runs one OneAgent, so two DynaKubes with OneAgents
/// must not select the same node. With nodes in the cluster the nodes both select are compared (any
/// overlap counts, not only subset selectors); without nodes, a selector that is empty or a subset of the
/// other is a conflict. Every conflicting DynaKube is named.
fn node_selector_errors(dynakube: &DynaKube, cluster: &ClusterView<'_>, spelling: Spelling) -> Vec<String> {
    let Some(host) = dynakube.host_spec() else {
        return Vec::new();
    };
    let mode = dynakube.mode().map_or_else(String::new, |m| spelling.mode(m));
    let selector = host.node_selector.clone().unwrap_or_default();
    let mut errors: Vec<String> = selector
        .iter()
        .flat_map(|(key, value)| {
            let key_problem = label_key_problem(key).map(|p| format!("key {key:?} {p}"));
            let value_problem = label_value_problem(value).map(|p| format!("value {value:?} of {key:?} {p}"));
            key_problem.into_iter().chain(value_problem)
        })
        .map(|problem| {
            format!("{mode}.nodeSelector is invalid: {problem}. Fix the label in the node selector.")
        })
        .collect();
    if !errors.is_empty() || dynakube.feature_flags().multiple_osagents_on_node() {
        return errors;
    }
    for other in cluster.dynakubes {
        if same_object(dynakube, other) || !other.needs_one_agent() {
            continue;
        }
        let other_selector = other
            .host_spec()
            .and_then(|h| h.node_selector.clone())
            .unwrap_or_default();
        let conflict = if cluster.nodes.is_empty() {
            let subset = |a: &Labels, b: &Labels| a.iter().all(|(k, v)| b.get(k) == Some(v));
            (selector.is_empty()
                || other_selector.is_empty()
                || subset(&selector, &other_selector)
                || subset(&other_selector, &selector))
            .then(|| "its node selector is empty or contained in the other's".to_owned())
        } else {
            let shared: Vec<String> = cluster
                .nodes
                .iter()
                .filter(|n| {
                    let labels = labels_of(n);
                    node_selector_matches(&selector, &labels)
                        && node_selector_matches(&other_selector, &labels)
                })
                .map(name_of)
                .collect();
            (!shared.is_empty()).then(|| format!("both select the nodes {}", examples(&shared)))
        };
        if let Some(why) = conflict {
            errors.push(format!(
                "The node selector {mode}.nodeSelector conflicts with DynaKube {}: {why}. A node \
                 runs one OneAgent, so make the node selectors disjoint (or set \
                 {}{}: \"true\" if several OneAgents per node are intended).",
                qualified(other),
                ff::PREFIX,
                ff::MULTIPLE_OSAGENTS_ON_NODE
            ));
        }
    }
    errors
}

/// Namespaces a DynaKube never injects into: its own namespace and system namespaces, or the regexes of
/// the `ignored-namespaces` flag.
fn ignored_namespace_patterns(dynakube: &DynaKube) -> Vec<Regex> {
    let defaults = || {
        vec![
            format!("^{}$", regex::escape(&dynakube.namespace().unwrap_or_default())),
            "^kube-.*".to_owned(),
            "^openshift(-.*)?".to_owned(),
            "^gke-.*".to_owned(),
            "^gmp-.*".to_owned(),
        ]
    };
    let patterns = dynakube
        .feature_flags()
        .ignored_namespaces()
        .unwrap_or_else(defaults);
    patterns.iter().filter_map(|p| Regex::new(p).ok()).collect()
}

/// Whether the DynaKube injects into or enriches the namespace: either makes the namespace its own.
fn injects_into(selectors: &NamespaceSelectors, namespace: &ObjectMeta, ignored: &[Regex]) -> bool {
    if ignored.iter().any(|r| r.is_match(&name_of(namespace))) {
        return false;
    }
    selectors.purposes(&labels_of(namespace)).any()
}

/// Rule 12, and the syntax of the namespace selector: a namespace is injected by at most one DynaKube.
fn namespace_selector_errors(
    dynakube: &DynaKube,
    cluster: &ClusterView<'_>,
    spelling: Spelling,
) -> Vec<String> {
    let field = spelling.namespace_selector(dynakube.mode());
    let problems = dynakube
        .spec
        .namespace_selector
        .as_ref()
        .map(selector_problems)
        .unwrap_or_default();
    if !problems.is_empty() {
        return problems
            .into_iter()
            .map(|p| format!("{field} is invalid: {p}. Fix the label selector."))
            .collect();
    }
    let selectors = dynakube.namespace_selectors();
    if !selectors.claims_namespaces() {
        return Vec::new();
    }
    let ignored = ignored_namespace_patterns(dynakube);
    let mine: Vec<&ObjectMeta> = cluster
        .namespaces
        .iter()
        .filter(|ns| injects_into(&selectors, ns, &ignored))
        .collect();
    let enriches_apart = dynakube.metadata_enrichment_selector().is_some() && selectors.enrich.is_some();
    let empty_selector = dynakube
        .spec
        .namespace_selector
        .as_ref()
        .is_none_or(|s| s == &Default::default());
    let mut errors = Vec::new();
    for other in cluster.dynakubes {
        let other_selectors = other.namespace_selectors();
        if same_object(dynakube, other) || !other_selectors.claims_namespaces() {
            continue;
        }
        let other_ignored = ignored_namespace_patterns(other);
        let shared: Vec<String> = mine
            .iter()
            .filter(|ns| injects_into(&other_selectors, ns, &other_ignored))
            .map(|ns| name_of(ns))
            .collect();
        if shared.is_empty() {
            continue;
        }
        let what = if selectors.inject.is_none() {
            format!("The DynaKube's {ENRICHMENT_SELECTOR} selects namespaces that")
        } else if empty_selector {
            format!("The DynaKube has no {field}, so it would inject into every namespace, but")
        } else {
            format!("The DynaKube's {field} selects namespaces that")
        };
        let claims = if other_selectors.inject.is_some() {
            "injects into"
        } else {
            "enriches the pods of"
        };
        // Enrichment with a selector of its own claims namespaces too: name both fields then.
        let fields = if selectors.inject.is_none() {
            ENRICHMENT_SELECTOR.to_owned()
        } else if enriches_apart || other.metadata_enrichment_selector().is_some() {
            format!("{field} or {ENRICHMENT_SELECTOR}")
        } else {
            field.clone()
        };
        errors.push(format!(
            "{what} DynaKube {} already {claims} {}. A namespace can be claimed by one DynaKube only: \
             narrow {fields} so the two select different namespaces.",
            qualified(other),
            examples(&shared)
        ));
    }
    errors
}

/// Rule 15: a code-modules image needs the CSI driver.
fn code_modules_image_errors(
    dynakube: &DynaKube,
    cluster: &ClusterView<'_>,
    spelling: Spelling,
) -> Vec<String> {
    let image_set = dynakube
        .app_injection_spec()
        .and_then(|a| a.code_modules_image.as_deref())
        .is_some_and(|i| !i.is_empty());
    if dynakube.mode() != Some(Mode::ApplicationMonitoring) || !image_set {
        return Vec::new();
    }
    match dynakube.csi_driver_use() {
        // `csi_driver_errors` reports a missing driver.
        CsiDriverUse::Required => Vec::new(),
        CsiDriverUse::IfInstalled if cluster.csi_driver_installed == Some(false) => vec![format!(
            "spec.oneAgent.applicationMonitoring.codeModulesImage is set, but code modules from an image are \
             provided by the CSI driver, and the DaemonSet {} does not exist in namespace {:?}. Install the \
             operator with the CSI driver (Helm value csidriver.enabled=true), or remove codeModulesImage.",
            names::CSI_DAEMONSET,
            dynakube.namespace().unwrap_or_default()
        )],
        CsiDriverUse::IfInstalled => Vec::new(),
        // Versions without useCSIDriver cannot set it: `unused_code_modules_image` warns instead.
        CsiDriverUse::Never if spelling == Spelling::V1beta3OrLater => Vec::new(),
        CsiDriverUse::Never => vec![messages::CODE_MODULES_IMAGE_WITHOUT_CSI.to_owned()],
    }
}

/// Rule 16: read-only OneAgents need volume storage.
fn volume_storage_errors(dynakube: &DynaKube) -> Vec<String> {
    if !dynakube.needs_readonly_one_agents() {
        return Vec::new();
    }
    let value = dynakube
        .host_spec()
        .and_then(|h| h.env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == VOLUME_STORAGE_ENV))
        .map(|e| e.value.clone().unwrap_or_default());
    match value {
        Some(value) if value != "true" => vec![format!(
            "The OneAgent environment sets {VOLUME_STORAGE_ENV}={value:?}, but OneAgents with a read-only host \
             file system (the default for hostMonitoring and cloudNativeFullStack) need volume storage. Remove \
             the variable, or set {}{}: \"false\".",
            ff::PREFIX,
            ff::READONLY_HOST_FS
        )],
        _ => Vec::new(),
    }
}

/// Whether `version` has the form of a OneAgent version, `<major>.<minor>.<patch>.<yyyymmdd>-<hhmmss>`,
/// all digits (the reference's `^\d+.\d+.\d+.\d{8}-\d{6}$`, with literal dots).
fn is_oneagent_version(version: &str) -> bool {
    let digits = |part: &str, len: Option<usize>| {
        !part.is_empty()
            && part.bytes().all(|b| b.is_ascii_digit())
            && len.is_none_or(|len| part.len() == len)
    };
    let Some((dotted, time)) = version.split_once('-') else {
        return false;
    };
    let parts: Vec<&str> = dotted.split('.').collect();
    matches!(parts.as_slice(), [major, minor, patch, date]
        if digits(major, None) && digits(minor, None) && digits(patch, None) && digits(date, Some(8)))
        && digits(time, Some(6))
}

/// The OneAgent version of a host mode, when pinned, has the full format: the image tag and the update
/// logic depend on it.
fn one_agent_version_errors(dynakube: &DynaKube, spelling: Spelling) -> Vec<String> {
    let (Some(mode), Some(version)) = (
        dynakube.mode(),
        dynakube
            .host_spec()
            .and_then(|h| h.version.as_deref())
            .filter(|v| !v.is_empty()),
    ) else {
        return Vec::new();
    };
    if is_oneagent_version(version) {
        return Vec::new();
    }
    vec![format!(
        "{} {version:?} is not a OneAgent version. Use the form <major>.<minor>.<patch>.<yyyymmdd>-<hhmmss>,          all digits (for example 1.277.0.20230914-094321, as listed by the environment), or remove it to          follow the environment's latest version.",
        spelling.version(mode)
    )]
}

/// Installer arguments that may be given more than once (each value once).
const REPEATABLE_ARGS: &[&str] = &["--set-host-property", "--set-host-tag"];
/// The installer argument the operator sets itself in cloudNativeFullStack.
const HOST_ID_SOURCE_ARG: &str = "--set-host-id-source";

/// The OneAgent's installer arguments: only host properties and tags repeat (each value once), and
/// cloudNativeFullStack leaves the host-id source to the operator.
fn one_agent_args_errors(dynakube: &DynaKube, spelling: Spelling) -> Vec<String> {
    let (Some(mode), Some(args)) = (
        dynakube.mode(),
        dynakube.host_spec().and_then(|h| h.args.as_ref()),
    ) else {
        return Vec::new();
    };
    let field = format!("{}.args", spelling.mode(mode));
    let mut errors = Vec::new();
    let mut seen_names = BTreeSet::new();
    let mut seen_args = BTreeSet::new();
    let mut reported = BTreeSet::new();
    for arg in args {
        let name = arg.split_once('=').map_or(arg.as_str(), |(name, _)| name);
        let duplicate = if REPEATABLE_ARGS.contains(&name) {
            (!seen_args.insert(arg.as_str())).then(|| arg.clone())
        } else {
            (!seen_names.insert(name)).then(|| name.to_owned())
        };
        if let Some(what) = duplicate
            && reported.insert(what.clone())
        {
            let rule = if REPEATABLE_ARGS.contains(&name) {
                "the same host property or tag may be given once"
            } else {
                "only --set-host-property and --set-host-tag may be given more than once"
            };
            errors.push(format!(
                "{field} has {what} more than once: {rule}. Remove the duplicate."
            ));
        }
    }
    if mode == Mode::CloudNativeFullStack && seen_names.contains(HOST_ID_SOURCE_ARG) {
        errors.push(format!(
            "{field} sets {HOST_ID_SOURCE_ARG}, which cloudNativeFullStack does not allow: the operator sets              it to k8s-node-name so that hosts match their Kubernetes nodes. Remove the argument."
        ));
    }
    errors
}

/// Control characters (line breaks, tabs, NUL, ...) in values that end up in the OneAgent's command line
/// and configuration files.
fn control_character_errors(dynakube: &DynaKube, spelling: Spelling) -> Vec<String> {
    let mut values: Vec<(String, &str)> = Vec::new();
    if let Some(zone) = dynakube.spec.network_zone.as_deref() {
        values.push(("spec.networkZone".to_owned(), zone));
    }
    if let Some(group) = dynakube
        .spec
        .one_agent
        .as_ref()
        .and_then(|o| o.host_group.as_deref())
    {
        values.push(("spec.oneAgent.hostGroup".to_owned(), group));
    }
    if let (Some(mode), Some(args)) = (
        dynakube.mode(),
        dynakube.host_spec().and_then(|h| h.args.as_ref()),
    ) {
        let field = format!("{}.args", spelling.mode(mode));
        values.extend(
            args.iter()
                .enumerate()
                .map(|(i, arg)| (format!("{field}[{i}]"), arg.as_str())),
        );
    }
    values
        .into_iter()
        .filter(|(_, value)| value.chars().any(char::is_control))
        .map(|(field, value)| {
            format!(
                "{field} ({value:?}) contains a control character (such as a line break or tab), which                  OneAgent cannot take. Remove it."
            )
        })
        .collect()
}

/// Flags that a spec field replaced and that the field, when set, overrides. From v1beta2 on the API server
/// fills in `dynatraceApiRequestThreshold: 15`, so there the threshold flag never applies.
fn overridden_flags(dynakube: &DynaKube, spelling: Spelling) -> Vec<String> {
    let flags = dynakube.feature_flags();
    let mut overridden = Vec::new();
    if let (Some(_), Some(minutes)) = (
        flags.raw(ff::API_REQUEST_THRESHOLD),
        dynakube.spec.dynatrace_api_request_threshold,
    ) {
        overridden.push((
            ff::API_REQUEST_THRESHOLD,
            format!("spec.dynatraceApiRequestThreshold ({minutes})"),
        ));
    }
    if let (Some(_), Some(mode), Some(profile)) = (
        flags.raw(ff::SECCOMP_PROFILE),
        dynakube.mode(),
        dynakube
            .host_spec()
            .and_then(|h| h.sec_comp_profile.as_deref())
            .filter(|p| !p.is_empty()),
    ) {
        overridden.push((
            ff::SECCOMP_PROFILE,
            format!("{}.secCompProfile ({profile:?})", spelling.mode(mode)),
        ));
    }
    overridden
        .into_iter()
        .map(|(flag, field)| {
            format!(
                "annotation {}{flag} has no effect: {field} is set and wins. Remove the annotation and set the                  field to the value you want.",
                ff::PREFIX
            )
        })
        .collect()
}

/// `storageHostPath` and `secCompProfile` become a hostPath volume and a Localhost seccomp profile of the
/// OneAgent DaemonSet. The API server refuses a seccomp profile that is absolute or climbs with `..`, and
/// a hostPath with `..`; a relative hostPath has no meaning on the node. Refused here, where the user sees
/// why, rather than as a DaemonSet the operator cannot apply.
fn host_path_errors(dynakube: &DynaKube, spelling: Spelling) -> Vec<String> {
    let (Some(mode), Some(host)) = (dynakube.mode(), dynakube.host_spec()) else {
        return Vec::new();
    };
    let section = spelling.mode(mode);
    let climbs = |path: &str| path.split('/').any(|segment| segment == "..");
    let mut errors = Vec::new();
    if let Some(path) = host.storage_host_path.as_deref().filter(|p| !p.is_empty())
        && (!path.starts_with('/') || climbs(path))
    {
        errors.push(format!(
            "{section}.storageHostPath ({path:?}) must be an absolute path on the node without '..', \
             for example /var/opt/dynatrace."
        ));
    }
    if let Some(profile) = host.sec_comp_profile.as_deref().filter(|p| !p.is_empty())
        && (profile.starts_with('/') || climbs(profile))
    {
        errors.push(format!(
            "{section}.secCompProfile ({profile:?}) must be a path relative to the kubelet's seccomp \
             directory (usually /var/lib/kubelet/seccomp) without '..', for example profiles/oneagent.json."
        ));
    }
    errors
}

/// `autoUpdate` is deprecated from v1beta3 on (it still works: unset or true follows the latest version).
fn deprecated_auto_update(dynakube: &DynaKube, spelling: Spelling) -> Option<String> {
    let mode = dynakube.mode()?;
    dynakube.host_spec()?.auto_update?;
    (spelling == Spelling::V1beta3OrLater).then(|| {
        let section = spelling.mode(mode);
        format!(
            "{section}.autoUpdate is deprecated from dynatrace.com/v1beta3 on and will be removed. Remove it:              without {section}.version OneAgents follow the environment's latest version, and setting              {section}.version pins one."
        )
    })
}

/// Flags that still work but will become spec fields (the reference warns about them).
const DEPRECATED_FLAGS: &[&str] = &[
    ff::INJECTION_FAILURE_POLICY,
    ff::LABEL_VERSION_DETECTION,
    ff::AUTOMATIC_INJECTION,
    ff::METADATA_ENRICHMENT,
    ff::WEBHOOK_REINVOCATION_POLICY,
    ff::READONLY_HOST_FS,
    ff::HOSTS_REQUESTS,
];

/// Deprecated negative flags and their replacements.
const DEPRECATED_DISABLE_FLAGS: &[(&str, &str)] = &[
    (ff::DISABLE_HOSTS_REQUESTS, ff::HOSTS_REQUESTS),
    (ff::DISABLE_READONLY_HOST_FS, ff::READONLY_HOST_FS),
    (
        ff::DISABLE_WEBHOOK_REINVOCATION_POLICY,
        ff::WEBHOOK_REINVOCATION_POLICY,
    ),
    (ff::DISABLE_METADATA_ENRICHMENT, ff::METADATA_ENRICHMENT),
];

/// Advice for an allowed DynaKube.
fn warnings(dynakube: &DynaKube) -> Vec<String> {
    let flags = dynakube.feature_flags();
    let mut warnings: Vec<String> = flags
        .legacy_prefixed()
        .into_iter()
        .map(|(old, new)| format!("annotation {old} uses a deprecated prefix; rename it to {new}"))
        .collect();
    for (disable, replacement) in DEPRECATED_DISABLE_FLAGS {
        if flags.raw(disable).is_some() {
            warnings.push(format!(
                "annotation {}{disable} is deprecated; use {}{replacement}: \"false\" instead",
                ff::PREFIX,
                ff::PREFIX
            ));
        }
    }
    if dynakube.mode() == Some(Mode::ClassicFullStack)
        && (flags.raw(ff::READONLY_HOST_FS).is_some() || flags.raw(ff::DISABLE_READONLY_HOST_FS).is_some())
    {
        warnings.push(format!(
            "annotation {}{} has no effect with classicFullStack; remove it",
            ff::PREFIX,
            ff::READONLY_HOST_FS
        ));
    }
    let host_group_arg = dynakube
        .host_spec()
        .and_then(|h| h.args.as_ref())
        .is_some_and(|args| args.iter().any(|a| a.starts_with("--set-host-group")));
    let host_group_field = dynakube
        .spec
        .one_agent
        .as_ref()
        .and_then(|o| o.host_group.as_deref())
        .is_some_and(|g| !g.is_empty());
    if host_group_arg && host_group_field {
        warnings.push(
            "spec.oneAgent.hostGroup and a --set-host-group argument are both set; the field wins. Remove the \
             argument."
                .to_owned(),
        );
    }
    let enrichment_field = dynakube
        .spec
        .metadata_enrichment
        .as_ref()
        .is_some_and(|m| m.enabled.is_some());
    let enrichment_flag =
        flags.raw(ff::METADATA_ENRICHMENT).is_some() || flags.raw(ff::DISABLE_METADATA_ENRICHMENT).is_some();
    if enrichment_field && enrichment_flag {
        warnings.push(format!(
            "spec.metadataEnrichment.enabled and the annotation {}{} are both set; the field wins. Remove the \
             annotation.",
            ff::PREFIX,
            ff::METADATA_ENRICHMENT
        ));
    }
    let deprecated: BTreeSet<&str> = DEPRECATED_FLAGS
        .iter()
        .copied()
        .filter(|f| flags.raw(f).is_some())
        .collect();
    if !deprecated.is_empty() {
        let list: Vec<_> = deprecated.into_iter().collect();
        warnings.push(format!(
            "these feature flags are deprecated and will become spec fields: {}",
            list.join(", ")
        ));
    }
    warnings
}

#[cfg(test)]
mod tests;
