//! The node status (`pure_csi::status`): the ConfigMap `dynatrace-csi-<node>` in the DynaKubes'
//! namespace, owned by the CSI DaemonSet so that the garbage collector deletes it with the driver
//! (`helm uninstall`); the operator's node controller deletes the ones of deleted nodes. Recomputed from
//! the data directory after every reconcile and GC run, written (server-side apply) only when it changed.
//! The apply names the whole owner list, so a status written by an earlier version, owned by the Node,
//! changes owner at its first write.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt as _};
use pure_csi::layout::{DynakubeRecord, Layout};

use crate::records;

/// The field manager of the status writes.
pub const FIELD_MANAGER: &str = "dynatrace-csi-provisioner";

/// Writes one node's status.
pub struct NodeStatus {
    client: Client,
    namespace: String,
    node: String,
    /// The content last written; `None` before the first write of this process.
    last: tokio::sync::Mutex<Option<BTreeMap<String, String>>>,
    /// The owner, read once: the CSI DaemonSet, `None` when it is not there (the provisioner runs without
    /// it, as in tests).
    owner: tokio::sync::OnceCell<Option<OwnerReference>>,
}

impl NodeStatus {
    /// The status of `node` in `namespace`.
    pub fn new(client: Client, namespace: String, node: String) -> Self {
        Self {
            client,
            namespace,
            node,
            last: tokio::sync::Mutex::default(),
            owner: tokio::sync::OnceCell::new(),
        }
    }

    /// Recomputes the status from the data directory and writes it when it changed. Errors are logged:
    /// the status is information, and the next refresh writes it.
    pub async fn refresh(&self, layout: &Layout) {
        let mut last = self.last.lock().await;
        let data = read_state(layout);
        if last.as_ref() == Some(&data) {
            return;
        }
        match self.write(&data).await {
            Ok(()) => *last = Some(data),
            Err(error) => tracing::warn!(
                %error,
                advice = %pure_install::rbac::advice(&error, crate::provisioner::CSI_DRIVER),
                config_map = %pure_csi::status::config_map_name(&self.node),
                "cannot write the node's CSI status; the next reconcile tries again"
            ),
        }
    }

    async fn write(&self, data: &BTreeMap<String, String>) -> Result<(), kube::Error> {
        let owner = self.owner.get_or_try_init(|| self.read_owner()).await?.clone();
        let mut map = ConfigMap::default();
        map.metadata.name = Some(pure_csi::status::config_map_name(&self.node));
        map.metadata.namespace = Some(self.namespace.clone());
        map.metadata.owner_references = owner.map(|o| vec![o]);
        map.metadata.labels = Some(BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                "dynatrace-operator".to_owned(),
            ),
            ("app.kubernetes.io/component".to_owned(), "csi-driver".to_owned()),
            (pure_csi::status::NODE_LABEL.to_owned(), label_value(&self.node)),
        ]));
        map.data = Some(data.clone());
        let mut value = serde_json::to_value(&map).map_err(kube::Error::SerdeError)?;
        value["apiVersion"] = "v1".into();
        value["kind"] = "ConfigMap".into();
        Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace)
            .patch(
                &map.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(value),
            )
            .await?;
        Ok(())
    }
}

impl NodeStatus {
    /// The CSI DaemonSet as the status's owner. Missing or not readable: no owner, logged once, for the
    /// status is written all the same. Other errors are returned, and the next write asks again.
    async fn read_owner(&self) -> Result<Option<OwnerReference>, kube::Error> {
        let name = pure_install::csi::CSI_DAEMONSET;
        match Api::<DaemonSet>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(name)
            .await
        {
            Ok(Some(daemon_set)) => Ok(pure_desired::owner::garbage_collection_owner(&daemon_set)),
            Ok(None) => {
                tracing::info!(daemon_set = %format!("{}/{name}", self.namespace),
                    "not running from the CSI DaemonSet; the node status ConfigMap gets no owner and stays \
                     after the driver is removed");
                Ok(None)
            }
            Err(kube::Error::Api(status)) if status.code == 403 => {
                tracing::warn!(daemon_set = %format!("{}/{name}", self.namespace), message = %status.message,
                    "may not read the CSI DaemonSet; the node status ConfigMap gets no owner and stays after \
                     the driver is removed (grant get on it by name)");
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }
}

/// A label value holds at most 63 characters; node names can be longer.
fn label_value(node: &str) -> String {
    node.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.', '_'])
        .to_owned()
}

/// The complete versions and the records, as on disk now.
fn read_state(layout: &Layout) -> BTreeMap<String, String> {
    let names = |dir: &std::path::Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .map(|read| {
                read.filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let versions = names(&layout.codemodules());
    let records: BTreeMap<String, DynakubeRecord> = names(&layout.dynakubes())
        .into_iter()
        .filter_map(|name| {
            let path = layout.dynakube_record(&name).ok()?;
            let record = records::read(&path).ok()??;
            Some((name, record))
        })
        .collect();
    pure_csi::status::data(&versions, &records)
}
