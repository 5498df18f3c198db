//! The node status (`pure_csi::status`): the ConfigMap `dynatrace-csi-<node>` in the DynaKubes'
//! namespace, owned by the Node object so that it is deleted with the node. Recomputed from the data
//! directory after every reconcile and GC run, written (server-side apply) only when it changed.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource as _, ResourceExt as _};
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
}

impl NodeStatus {
    /// The status of `node` in `namespace`.
    pub fn new(client: Client, namespace: String, node: String) -> Self {
        Self {
            client,
            namespace,
            node,
            last: tokio::sync::Mutex::default(),
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
        let owner = match Api::<Node>::all(self.client.clone()).get_opt(&self.node).await? {
            Some(node) => node.controller_owner_ref(&()).map(|mut owner: OwnerReference| {
                owner.controller = Some(false);
                owner.block_owner_deletion = None;
                owner
            }),
            None => {
                tracing::warn!(node = %self.node, "the Node object is missing; the status ConfigMap has no owner");
                None
            }
        };
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
            (
                "csi.oneagent.dynatrace.com/node".to_owned(),
                label_value(&self.node),
            ),
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
