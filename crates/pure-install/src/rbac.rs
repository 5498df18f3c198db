//! The RBAC of the operator, the webhook and the CSI driver: every rule with the code that needs it, the
//! ClusterRoles, Roles and bindings built from them, the README's table of them, and the explanation of a
//! request the API server denied (which rule of which role is missing, and what to do).
//!
//! The least that works: no wildcards, no verb the code does not use, Secrets across the cluster only by the
//! names the operator writes (list and watch by name work through a `metadata.name` field selector), and
//! objects the code reads by one fixed name granted by that name. `create` stays wherever a server-side
//! apply may create the object: the API server checks `create` for an apply of an object that does not
//! exist yet. Proven by `crates/cli/tests/rbac.rs`, which runs the three components as these
//! ServiceAccounts.

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pure_api::dynakube::names;
use serde_json::Value;

use crate::{Installation, OPERATOR, WEBHOOK, labels, to_value};

/// A rule and why it is there (the code that makes the request).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The rule as it goes into the ClusterRole or Role.
    pub rule: PolicyRule,
    /// The code that needs it.
    pub why: &'static str,
}

/// One component's permissions: its ServiceAccount, the rules of its ClusterRole (across the cluster) and
/// of its Role (in the installation's namespace). Roles and bindings are named like the ServiceAccount.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// `operator`, `webhook` or `csi-driver`.
    pub component: &'static str,
    /// The ServiceAccount (and the name of its roles and bindings).
    pub account: &'static str,
    /// The ClusterRole's rules.
    pub cluster: Vec<Rule>,
    /// The Role's rules, in the installation's namespace.
    pub namespaced: Vec<Rule>,
}

/// Name of the operator's leader-election Lease (io-controller `leader::LEASE_NAME`).
pub const LEASE_NAME: &str = "dynatrace-operator-lock";
/// The CRD whose conversion webhook the operator gives its caBundle.
pub const DYNAKUBE_CRD: &str = "dynakubes.dynatrace.com";

impl Installation {
    /// The permissions of every component this installation runs: the operator, the webhook and, when
    /// installed, the CSI driver.
    pub fn grants(&self) -> Vec<Grant> {
        let mut grants = vec![
            Grant {
                component: "operator",
                account: OPERATOR,
                cluster: operator_cluster_rules(),
                namespaced: operator_namespace_rules(),
            },
            Grant {
                component: "webhook",
                account: WEBHOOK,
                cluster: webhook_cluster_rules(),
                namespaced: webhook_namespace_rules(),
            },
        ];
        if self.csi_driver.is_some() {
            grants.push(Grant {
                component: "csi-driver",
                account: crate::csi::CSI_DAEMONSET,
                cluster: csi_cluster_rules(),
                namespaced: csi_namespace_rules(),
            });
        }
        grants
    }

    /// The RBAC of the operator and the webhook: a ClusterRole for what they read or write across the
    /// cluster, a Role for their own namespace, each bound to its ServiceAccount. (The CSI driver's is in
    /// [`Installation::csi_rbac`].)
    pub fn rbac(&self) -> Vec<Value> {
        self.grants()
            .iter()
            .filter(|g| g.account != crate::csi::CSI_DAEMONSET)
            .flat_map(|g| self.rbac_objects(g))
            .collect()
    }

    /// The CSI pods' RBAC: a ClusterRole for events on application pods (the empty-volume warning) and the
    /// node, a Role for the namespace's DynaKubes, their token Secrets and trusted-CAs ConfigMaps, and the
    /// per-node status ConfigMaps the provisioner writes. Empty without the CSI driver.
    pub fn csi_rbac(&self) -> Vec<Value> {
        self.grants()
            .iter()
            .filter(|g| g.account == crate::csi::CSI_DAEMONSET)
            .flat_map(|g| self.rbac_objects(g))
            .collect()
    }

    /// ClusterRole, ClusterRoleBinding, Role and RoleBinding of one grant.
    fn rbac_objects(&self, grant: &Grant) -> Vec<Value> {
        let subject = Subject {
            kind: "ServiceAccount".to_owned(),
            name: grant.account.to_owned(),
            namespace: Some(self.namespace.clone()),
            ..Default::default()
        };
        let cluster_meta = ObjectMeta {
            name: Some(grant.account.to_owned()),
            labels: Some(labels(grant.component)),
            ..Default::default()
        };
        let rules = |rules: &[Rule]| Some(rules.iter().map(|r| r.rule.clone()).collect());
        vec![
            to_value(&ClusterRole {
                metadata: cluster_meta.clone(),
                rules: rules(&grant.cluster),
                ..Default::default()
            }),
            to_value(&ClusterRoleBinding {
                metadata: cluster_meta,
                role_ref: role_ref("ClusterRole", grant.account),
                subjects: Some(vec![subject.clone()]),
            }),
            to_value(&Role {
                metadata: self.meta(grant.account, grant.component),
                rules: rules(&grant.namespaced),
            }),
            to_value(&RoleBinding {
                metadata: self.meta(grant.account, grant.component),
                role_ref: role_ref("Role", grant.account),
                subjects: Some(vec![subject]),
            }),
        ]
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
    }
}

fn rule(group: &str, resources: &[&str], verbs: &[&str], why: &'static str) -> Rule {
    Rule {
        rule: PolicyRule {
            api_groups: Some(vec![group.to_owned()]),
            resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
            ..Default::default()
        },
        why,
    }
}

/// [`rule`] limited to the objects named `names`.
fn named(group: &str, resources: &[&str], names: &[&str], verbs: &[&str], why: &'static str) -> Rule {
    let mut rule = rule(group, resources, verbs, why);
    rule.rule.resource_names = Some(names.iter().map(|n| (*n).to_owned()).collect());
    rule
}

const PER_NAMESPACE_SECRETS: [&str; 2] = [names::INIT_SECRET, names::ENRICHMENT_SECRET];

/// What the operator does across the cluster.
fn operator_cluster_rules() -> Vec<Rule> {
    vec![
        rule(
            "dynatrace.com",
            &["dynakubes", "oneagents"],
            &["get", "list", "watch", "patch"],
            "io-controller watches.rs: the DynaKube and OneAgent caches (list, watch); status.rs: takes over \
             status fields an earlier operator wrote (get, patch of managedFields); storage_migration.rs: \
             rewrites every DynaKube at the storage version (list, get, patch)",
        ),
        rule(
            "dynatrace.com",
            &["dynakubes/status", "oneagents/status"],
            &["patch"],
            "io-controller status.rs: phase, conditions and versions by server-side apply",
        ),
        rule(
            "dynatrace.com",
            &["dynakubes/finalizers", "oneagents/finalizers"],
            &["update"],
            "owner references with blockOwnerDeletion on the objects the operator creates (checked where the \
             OwnerReferencesPermissionEnforcement admission plugin is on, as on OpenShift)",
        ),
        rule(
            "apps",
            &["daemonsets"],
            &["get", "list", "watch", "create", "patch", "delete"],
            "io-controller watches.rs (list, watch); dynakube.rs/legacy.rs apply the OneAgent DaemonSet (get, \
             server-side apply: create, patch) and recreate it when its selector changes (delete); \
             injection.rs restarts DaemonSets whose pods missed injection (patch)",
        ),
        rule(
            "",
            &["namespaces"],
            &["get", "list", "watch", "patch"],
            "io-controller watches.rs (list, watch); namespaces.rs labels mapped namespaces (patch); \
             io-dynakube-inputs reads kube-system's UID as the cluster id (get)",
        ),
        rule(
            "",
            &["nodes"],
            &["get", "list", "watch"],
            "io-controller watches.rs: the node cache (DaemonSet node selection, nodes.rs host lifecycle) \
             (list, watch); nodes.rs: that a node is gone before its CSI status ConfigMap is deleted (get)",
        ),
        rule(
            "",
            &["pods"],
            &["list"],
            "io-controller dynakube.rs/legacy.rs: the OneAgent pods' rollout state; injection.rs: running \
             pods that missed injection (metadata only)",
        ),
        rule(
            "apps",
            &["replicasets"],
            &["get"],
            "io-controller injection.rs: a pod's ReplicaSet, for its Deployment",
        ),
        rule(
            "apps",
            &["deployments", "statefulsets"],
            &["patch"],
            "io-controller injection.rs: restarts workloads whose pods missed injection (flag \
             restart-missed-injections)",
        ),
        rule(
            "events.k8s.io",
            &["events"],
            &["create", "patch"],
            "io-controller dynakube.rs, namespaces.rs, injection.rs: events on DynaKubes and workloads \
             (kube's Recorder)",
        ),
        rule(
            "",
            &["secrets"],
            &["create"],
            "io-controller namespaces.rs: the per-namespace Secrets in mapped namespaces (server-side apply \
             creates them; create cannot be limited by name)",
        ),
        named(
            "",
            &["secrets"],
            &PER_NAMESPACE_SECRETS,
            &["list", "watch", "patch", "delete"],
            "io-controller watches.rs (by name), namespaces.rs: the per-namespace Secrets applied and removed",
        ),
        named(
            "admissionregistration.k8s.io",
            &["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
            &[WEBHOOK],
            &["get", "list", "watch", "patch"],
            "io-controller certificates.rs: watches the webhook configurations by name and writes their \
             caBundle",
        ),
        named(
            "apiextensions.k8s.io",
            &["customresourcedefinitions"],
            &[DYNAKUBE_CRD],
            &["get", "list", "watch", "patch"],
            "io-controller certificates.rs: the caBundle of the DynaKube CRD's conversion webhook; \
             storage_migration.rs: reads its storage version and storedVersions",
        ),
        named(
            "apiextensions.k8s.io",
            &["customresourcedefinitions/status"],
            &[DYNAKUBE_CRD],
            &["patch"],
            "io-controller storage_migration.rs: trims status.storedVersions to the storage version once every \
             DynaKube is rewritten",
        ),
    ]
}

/// What the operator does in its own namespace, where the DynaKubes, their Secrets and ConfigMaps live.
fn operator_namespace_rules() -> Vec<Rule> {
    vec![
        rule(
            "",
            &["secrets"],
            &["get", "list", "watch", "create", "update", "patch"],
            "io-dynakube-inputs: token, proxy and TLS Secrets (get); io-controller watches.rs: Secret metadata \
             (list, watch); certificates.rs: the webhook certificate Secret (create, update); dynakube.rs: \
             connection-info and pull Secrets (server-side apply)",
        ),
        rule(
            "",
            &["configmaps"],
            &["get", "list", "watch", "create", "update", "patch", "delete"],
            "io-dynakube-inputs: trusted-CAs ConfigMaps (get); io-controller watches.rs: ConfigMap metadata \
             (list, watch); nodes.rs: the node cache (create, update), the CSI status ConfigMaps of deleted \
             nodes (list, delete); dynakube.rs: connection-info ConfigMaps (server-side apply)",
        ),
        rule(
            "",
            &["pods"],
            &["delete"],
            "io-controller legacy.rs: recycles the legacy OneAgent's pods",
        ),
        rule(
            "",
            &["events"],
            &["list"],
            "io-controller dynakube.rs: the DaemonSet's FailedCreate events, for the DynaKube's status",
        ),
        named(
            "apps",
            &["deployments"],
            &[WEBHOOK],
            &["get", "list", "watch"],
            "io-controller certificates.rs: the webhook Deployment says that certificates are needed",
        ),
        named(
            "apps",
            &["deployments"],
            &[OPERATOR],
            &["get"],
            "io-controller owner.rs: the operator Deployment owns the Lease and the node cache (garbage \
             collected with it)",
        ),
        rule(
            "coordination.k8s.io",
            &["leases"],
            &["create"],
            "io-controller leader.rs: creates the leader-election Lease",
        ),
        named(
            "coordination.k8s.io",
            &["leases"],
            &[LEASE_NAME],
            &["get", "patch"],
            "io-controller leader.rs: reads and renews the leader-election Lease",
        ),
    ]
}

/// What the webhook reads across the cluster (io-webhook cluster.rs): for validation, and for injection
/// the per-namespace Secrets' presence (watched by name) and the workload owners of pods.
fn webhook_cluster_rules() -> Vec<Rule> {
    vec![
        rule(
            "dynatrace.com",
            &["dynakubes"],
            &["list", "watch"],
            "io-webhook cluster.rs: the DynaKube cache (validation against other DynaKubes, injection)",
        ),
        rule(
            "",
            &["namespaces", "nodes"],
            &["list", "watch"],
            "io-webhook cluster.rs: metadata caches (namespace mapping, cluster id, node rules)",
        ),
        named(
            "apps",
            &["daemonsets"],
            &[crate::csi::CSI_DAEMONSET],
            &["list", "watch"],
            "io-webhook cluster.rs: whether the CSI driver is installed (watched by name)",
        ),
        rule(
            "apps",
            &["replicasets"],
            &["list", "watch"],
            "io-webhook cluster.rs: the owner of a pod's ReplicaSet, for the workload name",
        ),
        rule(
            "batch",
            &["jobs"],
            &["list", "watch"],
            "io-webhook cluster.rs: the owner of a pod's Job",
        ),
        rule(
            "",
            &["replicationcontrollers"],
            &["list", "watch"],
            "io-webhook cluster.rs: the owner of a pod's ReplicationController",
        ),
        named(
            "",
            &["secrets"],
            &PER_NAMESPACE_SECRETS,
            &["list", "watch"],
            "io-webhook cluster.rs: whether a namespace has the Secrets injected pods mount (watched by name)",
        ),
        rule(
            "events.k8s.io",
            &["events"],
            &["create", "patch"],
            "io-webhook events.rs: events on pods that could not be injected (kube's Recorder)",
        ),
    ]
}

/// What the webhook reads in its namespace.
fn webhook_namespace_rules() -> Vec<Rule> {
    vec![
        named(
            "",
            &["secrets"],
            &[names::WEBHOOK_CERTS_SECRET],
            &["list", "watch"],
            "io-webhook tls.rs: the serving certificate from the operator's Secret (watched by name)",
        ),
        rule(
            "",
            &["secrets"],
            &["get"],
            "io-webhook cluster.rs: the proxy Secret a DynaKube names (validation)",
        ),
    ]
}

/// Across the cluster: the warning event on an application pod that started with an empty volume (in
/// the pod's namespace).
fn csi_cluster_rules() -> Vec<Rule> {
    vec![rule(
        "events.k8s.io",
        &["events"],
        &["create", "patch"],
        "io-csi-driver events.rs, provisioner.rs: events on pods and DynaKubes (kube's Recorder)",
    )]
}

/// In the operator's namespace: the DynaKubes that need code modules, their token Secrets and trusted-CAs
/// ConfigMaps (names chosen by the user, so not listed here), and the per-node status ConfigMaps.
fn csi_namespace_rules() -> Vec<Rule> {
    vec![
        rule(
            "dynatrace.com",
            &["dynakubes"],
            &["get", "list", "watch"],
            "io-csi-driver provisioner.rs: the DynaKube controller (list, watch) and the sweep of deleted \
             DynaKubes' records (get)",
        ),
        rule(
            "",
            &["secrets"],
            &["get"],
            "io-dynakube-inputs: the token and proxy Secrets of the DynaKubes, for the downloads",
        ),
        rule(
            "",
            &["configmaps"],
            &["get", "create", "patch"],
            "io-dynakube-inputs: trusted-CAs ConfigMaps (get); io-csi-driver status.rs: the node's status \
             ConfigMap (server-side apply: create, patch)",
        ),
        named(
            "apps",
            &["daemonsets"],
            &[crate::csi::CSI_DAEMONSET],
            &["get"],
            "io-csi-driver status.rs: the CSI DaemonSet owns the node status ConfigMaps (garbage collected \
             with it)",
        ),
    ]
}

/// A request the API server denied, as its 403 message tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The user, for a ServiceAccount `system:serviceaccount:<namespace>:<name>`.
    pub user: String,
    /// The verb (`list`, `patch`, ...).
    pub verb: String,
    /// The resource, with its subresource (`dynakubes/status`).
    pub resource: String,
    /// The API group (`""` for the core group).
    pub group: String,
    /// The namespace of the request; `None` across the cluster.
    pub namespace: Option<String>,
    /// The object's name, when the request named one.
    pub name: Option<String>,
}

impl Denied {
    /// Finds the API server's forbidden message in `text` (an error's message, which may wrap it):
    /// `<resource> ["<name>"] is forbidden: User "<user>" cannot <verb> resource "<resource>" in API group
    /// "<group>" (at the cluster scope | in the namespace "<namespace>")`.
    pub fn find(text: &str) -> Option<Self> {
        const FORBIDDEN: &str = " is forbidden: User \"";
        let at = text.find(FORBIDDEN)?;
        let before = &text[..at];
        let name = before
            .strip_suffix('"')
            .and_then(|b| b.rsplit_once('"'))
            .map(|(_, name)| name.to_owned());
        let rest = &text[at + FORBIDDEN.len()..];
        let (user, rest) = rest.split_once("\" cannot ")?;
        let (verb, rest) = rest.split_once(" resource \"")?;
        let (resource, rest) = rest.split_once("\" in API group \"")?;
        let (group, rest) = rest.split_once('"')?;
        let namespace = match rest.strip_prefix(" in the namespace \"") {
            Some(rest) => Some(rest.split_once('"')?.0.to_owned()),
            None if rest.starts_with(" at the cluster scope") => None,
            None => return None,
        };
        Some(Self {
            user: user.to_owned(),
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            group: group.to_owned(),
            namespace,
            name,
        })
    }

    /// The ServiceAccount `(namespace, name)` that made the request, if a ServiceAccount did.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        self.user.strip_prefix("system:serviceaccount:")?.split_once(':')
    }

    /// Whether `rule` allows this request.
    pub fn allowed_by(&self, rule: &PolicyRule) -> bool {
        let has = |list: &Option<Vec<String>>, value: &str| list.iter().flatten().any(|v| v == value);
        has(&rule.api_groups, &self.group)
            && has(&rule.resources, &self.resource)
            && rule.verbs.contains(&self.verb)
            && match (&rule.resource_names, &self.name) {
                (None, _) => true,
                (Some(names), Some(name)) => names.contains(name),
                (Some(_), None) => false,
            }
    }

    /// What to do, for someone who reads a log: which role lacks which rule, and whether the installation
    /// of this version grants it (then the RBAC in the cluster is older or was edited) or not (a bug).
    pub fn explain(&self) -> String {
        let scope = match &self.namespace {
            Some(namespace) => format!("in the namespace {namespace}"),
            None => "across the cluster".to_owned(),
        };
        let name = self.name.as_ref().map(|n| format!(" {n:?}")).unwrap_or_default();
        let what = format!(
            "may not {} {}{name} (API group {:?}) {scope}",
            self.verb, self.resource, self.group
        );
        let rule = format!(
            "add {:?} on {:?} (API group {:?}{})",
            self.verb,
            self.resource,
            self.group,
            self.name
                .as_ref()
                .map(|n| format!(", or only the name {n:?}"))
                .unwrap_or_default()
        );
        let Some((account_namespace, account)) = self.service_account() else {
            return format!("{} {what}: {rule} to a role bound to it", self.user);
        };
        let installation = Installation {
            namespace: account_namespace.to_owned(),
            ..Installation::new("")
        };
        let grant = installation.grants().into_iter().find(|g| g.account == account);
        let in_own_namespace = self.namespace.as_deref() == Some(account_namespace);
        let granted = |rules: &[Rule]| rules.iter().any(|r| self.allowed_by(&r.rule));
        let (cluster_grants, role_grants) = grant.as_ref().map_or((false, false), |g| {
            (granted(&g.cluster), in_own_namespace && granted(&g.namespaced))
        });
        let role = if role_grants || (!cluster_grants && in_own_namespace) {
            format!("the Role {account} in {account_namespace}")
        } else {
            format!("the ClusterRole {account}")
        };
        let version = match grant {
            None => String::new(),
            Some(_) if cluster_grants || role_grants => {
                "; the RBAC of this version grants it, so the cluster's is older or was edited: apply this \
                 version's RBAC (Helm chart) again"
                    .to_owned()
            }
            Some(_) => "; the RBAC of this version lacks it: please report this as a bug".to_owned(),
        };
        format!("ServiceAccount {account_namespace}/{account} {what}: {rule} to {role}{version}")
    }
}

/// The README's table of every rule: component, role (ClusterRole or Role in the installation's
/// namespace), API group, resources, verbs, names and the code that needs it. Markdown, one row per rule.
pub fn markdown_table(installation: &Installation) -> String {
    let mut out = String::from(
        "| Component (ServiceAccount) | Role | API group | Resources | Verbs | Only the names | Why (code) |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let code = |items: &[String]| {
        items
            .iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for grant in installation.grants() {
        for (role, rules) in [("ClusterRole", &grant.cluster), ("Role", &grant.namespaced)] {
            for rule in rules {
                let groups = rule.rule.api_groups.clone().unwrap_or_default();
                let group = groups
                    .iter()
                    .map(|g| {
                        if g.is_empty() {
                            "core".to_owned()
                        } else {
                            format!("`{g}`")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                out.push_str(&format!(
                    "| {} (`{}`) | {role} | {group} | {} | {} | {} | {} |\n",
                    grant.component,
                    grant.account,
                    code(&rule.rule.resources.clone().unwrap_or_default()),
                    code(&rule.rule.verbs),
                    rule.rule.resource_names.as_deref().map(code).unwrap_or_default(),
                    rule.why,
                ));
            }
        }
    }
    out
}

/// [`Denied::explain`] for the forbidden message in `text`, if it holds one.
pub fn explain_forbidden(text: &str) -> Option<String> {
    Denied::find(text).map(|d| d.explain())
}

/// What to do about a failed Kubernetes call of `component` (for example "the operator"): for a denied
/// request the missing rule and the role it belongs in, else where to look.
pub fn advice(error: &dyn std::fmt::Display, component: &str) -> String {
    explain_forbidden(&error.to_string())
        .unwrap_or_else(|| format!("check the RBAC of {component} and that the API server is reachable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denied_list_across_the_cluster_names_the_rule_and_the_cluster_role() {
        let text = r#"failed to perform initial object list: ApiError: nodes is forbidden: User "system:serviceaccount:dynatrace:dynatrace-operator" cannot list resource "nodes" in API group "" at the cluster scope: Forbidden (Status { message: "nodes is forbidden: User \"system...\"" })"#;
        let denied = Denied::find(text).unwrap();
        assert_eq!(denied.verb, "list");
        assert_eq!(denied.resource, "nodes");
        assert_eq!((denied.namespace, denied.name.clone()), (None, None));
        assert_eq!(
            explain_forbidden(text).unwrap(),
            "ServiceAccount dynatrace/dynatrace-operator may not list nodes (API group \"\") across the \
             cluster: add \"list\" on \"nodes\" (API group \"\") to the ClusterRole dynatrace-operator; the \
             RBAC of this version grants it, so the cluster's is older or was edited: apply this version's \
             RBAC (Helm chart) again"
        );
    }

    #[test]
    fn a_denied_named_request_in_the_own_namespace_points_at_the_role() {
        let text = r#"leases.coordination.k8s.io "dynatrace-operator-lock" is forbidden: User "system:serviceaccount:dt:dynatrace-operator" cannot patch resource "leases" in API group "coordination.k8s.io" in the namespace "dt""#;
        let denied = Denied::find(text).unwrap();
        assert_eq!(denied.name.as_deref(), Some(LEASE_NAME));
        assert_eq!(denied.namespace.as_deref(), Some("dt"));
        let explained = denied.explain();
        assert!(
            explained.contains("to the Role dynatrace-operator in dt"),
            "{explained}"
        );
        assert!(explained.contains("grants it"), "{explained}");
    }

    #[test]
    fn a_request_this_version_does_not_grant_is_a_bug_and_other_users_get_the_rule() {
        let text = r#"pods "x" is forbidden: User "system:serviceaccount:dynatrace:dynatrace-webhook" cannot delete resource "pods" in API group "" in the namespace "apps""#;
        let explained = explain_forbidden(text).unwrap();
        assert!(
            explained.contains("to the ClusterRole dynatrace-webhook"),
            "{explained}"
        );
        assert!(explained.contains("report this as a bug"), "{explained}");
        let text = r#"nodes is forbidden: User "jane" cannot list resource "nodes" in API group "" at the cluster scope"#;
        assert_eq!(
            explain_forbidden(text).unwrap(),
            "jane may not list nodes (API group \"\") across the cluster: add \"list\" on \"nodes\" (API group \
             \"\") to a role bound to it"
        );
        assert_eq!(explain_forbidden("connection refused"), None);
    }

    #[test]
    fn no_rule_uses_a_wildcard_and_every_rule_says_why() {
        for grant in Installation::new("image").grants() {
            for rule in grant.cluster.iter().chain(&grant.namespaced) {
                assert!(!format!("{:?}", rule.rule).contains('*'), "{rule:?}");
                assert!(rule.why.len() > 20, "{rule:?}");
            }
        }
    }
}
