//! The operator's controllers. For now the DynaKube controller: tokens, connection info, OneAgent version
//! and the OneAgent DaemonSet, reported in the DynaKube's status.

pub mod dynakube;

use std::future::Future;
use std::sync::Arc;

use api::dynakube::DynaKube;
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt as _};

pub use dynakube::{Context, ReconcileError, Requeue};

/// Runs the DynaKube controller until `shutdown` completes. It watches DynaKubes in every namespace, the
/// DaemonSets they own, and Secret metadata: a token Secret created or changed reconciles the DynaKube of
/// the same name (the default token Secret name) at once instead of after a backoff.
pub async fn run(
    client: Client,
    operator_version: String,
    requeue: Requeue,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        operator_version,
        requeue,
    });
    Controller::new(Api::<DynaKube>::all(client.clone()), watcher::Config::default())
        .owns(Api::<DaemonSet>::all(client.clone()), watcher::Config::default())
        .watches(
            Api::<PartialObjectMeta<Secret>>::all(client),
            watcher::Config::default(),
            |secret| {
                let namespace = secret.namespace()?;
                Some(ObjectRef::<DynaKube>::new(&secret.name_any()).within(&namespace))
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(dynakube::reconcile, dynakube::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(dynakube = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile did not finish"),
            }
        })
        .await;
}
