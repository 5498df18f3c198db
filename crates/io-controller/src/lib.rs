//! The operator's controllers: DynaKube and legacy OneAgent (tokens, connection info, OneAgent version
//! and the OneAgent DaemonSet, reported in the status), the webhook certificates, and leader election.

pub mod certificates;
pub mod dynakube;
pub mod error;
pub mod injection;
pub mod leader;
pub mod legacy;
pub mod metrics;
pub mod namespaces;
pub mod nodes;
pub mod owner;
pub mod status;
pub mod storage_migration;
mod wake;
pub mod watches;

use std::future::Future;
use std::sync::Arc;

use futures::{FutureExt, StreamExt as _};
use kube::runtime::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt as _};
use pure_api::oneagent::OneAgent;

pub use dynakube::{Context, ReconcileError, Requeue};

/// How long reconciles in flight may take to finish after shutdown begins (the kubelet's default grace
/// period is 30 s).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
pub use metrics::Metrics;

/// The settings of the operator process's controllers (see [`run_all`]).
#[derive(Debug, Clone)]
pub struct OperatorSettings {
    /// The operator's version, as reported in status and events.
    pub operator_version: String,
    /// Requeue intervals and timeouts.
    pub requeue: Requeue,
    /// The operator's namespace: never labelled for injection; holds the node cache.
    pub operator_namespace: String,
    /// The owner of the node cache (the operator Deployment, [`owner::deployment_owner`]); `None` outside it.
    pub owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    /// The webhook certificates to manage; `None` when another tool manages them.
    pub certificates: Option<certificates::CertificateConfig>,
}

/// Runs every controller of the operator process until `shutdown` completes: DynaKube, legacy OneAgent,
/// namespace mapping, node lifecycle, missed-injection detection, the DynaKube storage migration and, when
/// `settings.certificates` is given, the webhook certificates. With leader election, this is what the leader
/// runs.
pub async fn run_all(
    client: Client,
    settings: OperatorSettings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let OperatorSettings {
        operator_version,
        requeue,
        operator_namespace,
        owner,
        certificates,
    } = settings;
    let shutdown =
        FutureExt::shared(Box::pin(shutdown) as std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>>);
    let certificates = {
        let (client, shutdown) = (client.clone(), shutdown.clone());
        async move {
            if let Some(config) = certificates {
                certificates::run(client, config, shutdown).await;
            }
        }
    };
    // One watch per kind for all controllers: each subscribes while it is set up, then the watches open.
    let watches = watches::Watches::new(&client);
    let mut mapping = namespaces::NamespaceConfig::new(&operator_namespace);
    mapping.metrics = Some(metrics.clone());
    let namespaces = namespaces::controller(&watches, client.clone(), mapping, shutdown.clone());
    let mut node_config = nodes::NodeConfig::new(&operator_namespace, metrics.clone());
    node_config.cache_owner = owner;
    let nodes = nodes::controller(&watches, client.clone(), node_config, shutdown.clone());
    let injection = injection::controller(
        &watches,
        client.clone(),
        injection::InjectionConfig {
            interval: requeue.missed_injection_check,
            metrics: metrics.clone(),
        },
        shutdown.clone(),
    );
    let migration = storage_migration::run(client.clone(), metrics.clone(), shutdown.clone());
    let dynakubes = controllers(&watches, client, operator_version, requeue, metrics, shutdown);
    let _running = watches.start();
    futures::future::join(
        futures::future::join5(dynakubes, certificates, namespaces, nodes, injection),
        migration,
    )
    .await;
}

/// Runs the DynaKube and legacy OneAgent controllers until `shutdown` completes. They watch their
/// resources in every namespace, the DaemonSets they own, and Secret metadata: a token Secret created or
/// changed reconciles the resource of the same name (the default token Secret name) at once instead of
/// after a backoff.
pub async fn run(
    client: Client,
    operator_version: String,
    requeue: Requeue,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let watches = watches::Watches::new(&client);
    let controllers = controllers(&watches, client, operator_version, requeue, metrics, shutdown);
    let _running = watches.start();
    controllers.await;
}

/// Sets up the DynaKube and legacy OneAgent controllers on `watches` (see [`run`]); they run when the
/// returned future is polled and the watches have started.
fn controllers(
    watches: &watches::Watches,
    client: Client,
    operator_version: String,
    requeue: Requeue,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    metrics.set_ready();
    let reporter = kube::runtime::events::Reporter {
        controller: "dynatrace-operator".to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        reporter,
        client: client.clone(),
        checked_secrets: Arc::default(),
        inputs: io_dynakube_inputs::Reader::new(client.clone()),
        openshift: Arc::default(),
        operator_version,
        requeue,
        metrics,
    });
    // Every reconcile is idempotent, so one cut short by the grace period is redone by the next operator.
    let shutdown =
        FutureExt::shared(Box::pin(shutdown) as std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>>);
    let cached_dynakubes = watches.dynakubes.store();
    let dynakubes =
        Controller::for_shared_stream(watches.dynakubes.controller_stream(), watches.dynakubes.store())
            .owns_shared_stream(watches.daemonsets.touched())
            .watches_shared_stream(watches.secret_metadata.touched(), move |secret| {
                // The token Secret: named after the DynaKube unless `spec.tokens` names another.
                let (namespace, name) = (secret.namespace(), secret.name_any());
                cached_dynakubes
                    .state()
                    .into_iter()
                    .filter(|dk| {
                        dk.namespace() == namespace
                            && (dk.name_any() == name || dk.tokens_secret_name() == name)
                    })
                    .map(|dk| ObjectRef::from_obj(dk.as_ref()))
                    .collect::<Vec<_>>()
            })
            .graceful_shutdown_on(shutdown.clone())
            .run(dynakube::reconcile, dynakube::error_policy, ctx.clone())
            .for_each(|result| async move {
                match result {
                    Ok((object, _)) => tracing::debug!(dynakube = %object.name, "reconciled"),
                    Err(error) => tracing::debug!(%error, "reconcile did not finish"),
                }
            });
    // The legacy OneAgent resource, through the same steps (see `legacy`).
    let oneagents =
        Controller::for_shared_stream(watches.oneagents.controller_stream(), watches.oneagents.store())
            .owns_shared_stream(watches.daemonsets.touched())
            .watches_shared_stream(watches.secret_metadata.touched(), |secret| {
                let namespace = secret.namespace()?;
                Some(ObjectRef::<OneAgent>::new(&secret.name_any()).within(&namespace))
            })
            .graceful_shutdown_on(shutdown.clone())
            .run(
                legacy::reconcile,
                |oneagent: Arc<OneAgent>, error: &ReconcileError, ctx: Arc<Context>| {
                    tracing::warn!(oneagent = %oneagent.name_any(), %error, "reconcile failed");
                    kube::runtime::controller::Action::requeue(ctx.requeue.fix_backoff)
                },
                ctx,
            )
            .for_each(|result| async move {
                match result {
                    Ok((object, _)) => tracing::debug!(oneagent = %object.name, "reconciled"),
                    Err(error) => tracing::debug!(%error, "reconcile did not finish"),
                }
            });
    async move {
        let controller = futures::future::join(dynakubes, oneagents);
        let grace = async {
            shutdown.clone().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            _ = controller => {}
            () = grace => tracing::warn!("the controller did not stop within {SHUTDOWN_GRACE:?} of shutdown; stopping anyway"),
        }
    }
}
