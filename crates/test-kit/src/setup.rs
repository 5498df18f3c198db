//! The set-up integration test files share: the operator's CRDs installed and served, and a runtime of
//! the test binary's own for what must outlive each test (a controller, a server).

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt as _};

/// Field manager of the CRDs the tests apply.
pub const FIELD_MANAGER: &str = "testkit";

/// Namespace of the webhook Service that the CRDs of [`install_operator_crds`] convert through. Nothing
/// serves it in tests: the API server only calls it to convert stored objects between versions.
pub const OPERATOR_NAMESPACE: &str = "dynatrace";

/// How long the API server may take to serve new CRDs.
const SERVED_TIMEOUT: Duration = Duration::from_secs(60);

/// Installs the operator's CRDs (DynaKube, OneAgent; conversion through the webhook Service in
/// [`OPERATOR_NAMESPACE`]) and returns once the API server serves them.
pub async fn install_operator_crds(client: &Client) -> anyhow::Result<()> {
    let endpoint = pure_api::crd::ConversionEndpoint::Service {
        namespace: OPERATOR_NAMESPACE.into(),
    };
    install_crds(client, &pure_api::crd::all(&endpoint)).await
}

/// Applies `crds` (server-side, as [`FIELD_MANAGER`]) and returns once the API server serves each of them
/// (a list of its storage version succeeds), so that the caller can create resources at once.
pub async fn install_crds(client: &Client, crds: &[CustomResourceDefinition]) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        api.patch(
            &crd.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(crd),
        )
        .await
        .with_context(|| format!("applying CRD {}", crd.name_any()))?;
    }
    for crd in crds {
        let resource = storage_resource(crd)?;
        let objects: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        crate::eventually(
            &format!("CRD {} to be served", crd.name_any()),
            SERVED_TIMEOUT,
            || async {
                objects.list(&ListParams::default().limit(1)).await?;
                Ok(Some(()))
            },
        )
        .await?;
    }
    Ok(())
}

/// Applies objects given as JSON (server-side, as `field_manager`, forcing ownership), in order. Each kind
/// is looked up through discovery, so any built-in or served custom kind works; a CRD is waited for until
/// the API server serves it, so objects of its kind may follow in the same list.
pub async fn apply_objects(
    client: &Client,
    objects: &[serde_json::Value],
    field_manager: &str,
) -> anyhow::Result<()> {
    // Kinds looked up once per call: an installation lists many objects of few kinds.
    let mut kinds: std::collections::HashMap<String, (ApiResource, kube::discovery::ApiCapabilities)> =
        std::collections::HashMap::new();
    for value in objects {
        let object: DynamicObject =
            serde_json::from_value(value.clone()).context("an object to apply is not a Kubernetes object")?;
        let types = object
            .types
            .clone()
            .context("an object to apply has no apiVersion/kind")?;
        let name = object.name_any();
        let (group, version) = types
            .api_version
            .split_once('/')
            .unwrap_or(("", types.api_version.as_str()));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, &types.kind);
        let key = format!("{}/{}", types.api_version, types.kind);
        let (resource, capabilities) =
            match kinds.get(&key) {
                Some(known) => known.clone(),
                None => {
                    let found = kube::discovery::pinned_kind(client, &gvk).await.with_context(|| {
                    format!("the API server does not serve {key}; install its CRD before objects of its kind")
                })?;
                    kinds.insert(key, found.clone());
                    found
                }
            };
        let api: Api<DynamicObject> = match (&capabilities.scope, object.metadata.namespace.as_deref()) {
            (kube::discovery::Scope::Namespaced, Some(namespace)) => {
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("applying {} {name}", types.kind))?;
        if types.kind == "CustomResourceDefinition" {
            let crd: CustomResourceDefinition = serde_json::from_value(value.clone())?;
            install_crds(client, &[crd]).await?;
        }
    }
    Ok(())
}

/// The API resource of `crd`'s storage version.
fn storage_resource(crd: &CustomResourceDefinition) -> anyhow::Result<ApiResource> {
    let spec = &crd.spec;
    let version = spec
        .versions
        .iter()
        .find(|v| v.storage)
        .with_context(|| format!("CRD {} has no storage version", crd.name_any()))?;
    Ok(ApiResource {
        group: spec.group.clone(),
        version: version.name.clone(),
        api_version: format!("{}/{}", spec.group, version.name),
        kind: spec.names.kind.clone(),
        plural: spec.names.plural.clone(),
    })
}

/// A value set up once per test binary on a multi-threaded runtime of its own thread, which outlives every
/// test's runtime: a controller or a server started there keeps running while tests come and go.
///
/// ```no_run
/// static ENV: test_kit::PerBinary<String> = test_kit::PerBinary::new();
///
/// fn env() -> &'static String {
///     ENV.get_or_start("the test environment", || async {
///         let cluster = test_kit::shared_cluster().await?;
///         let client = cluster.client().await?;
///         test_kit::install_operator_crds(&client).await?;
///         // The value for the tests, and what runs on afterwards (here: nothing).
///         Ok(("ready".to_owned(), async {}))
///     })
/// }
/// ```
pub struct PerBinary<T> {
    cell: OnceLock<Result<T, String>>,
}

impl<T> Default for PerBinary<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> PerBinary<T> {
    /// Nothing set up yet.
    pub const fn new() -> Self {
        Self {
            cell: OnceLock::new(),
        }
    }
}

impl<T: Send + Sync + 'static> PerBinary<T> {
    /// The value; the first call runs `start` on the binary's own runtime, which returns the value and a
    /// future that then runs there for the rest of the binary (a controller, say). The runtime stays up
    /// after that future ends, with whatever it spawned. Panics naming `what` when the set-up failed, in
    /// every test that asks.
    pub fn get_or_start<F, Fut, R>(&'static self, what: &str, start: F) -> &'static T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<(T, R)>>,
        R: Future<Output = ()>,
    {
        let result = self.cell.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("testkit-per-binary".into())
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(err) => return drop(tx.send(Err(format!("cannot build its runtime: {err}")))),
                    };
                    runtime.block_on(async move {
                        match start().await {
                            Ok((value, then)) => {
                                if tx.send(Ok(value)).is_ok() {
                                    then.await;
                                    std::future::pending::<()>().await;
                                }
                            }
                            Err(err) => drop(tx.send(Err(format!("{err:#}")))),
                        }
                    });
                });
            match spawned {
                Ok(_) => rx
                    .recv()
                    .unwrap_or_else(|_| Err("the set-up thread panicked (see its message above)".into())),
                Err(err) => Err(format!("cannot start the set-up thread: {err}")),
            }
        });
        match result {
            Ok(value) => value,
            Err(err) => panic!("setting up {what} failed: {err}"),
        }
    }
}

/// A task that runs until [`RunningTask::stop`] (or until dropped): a controller under test, say, started
/// with the [`StopSignal`] as its shutdown future.
pub struct RunningTask {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Completes when its [`RunningTask`] is stopped or dropped.
pub struct StopSignal(tokio::sync::oneshot::Receiver<()>);

impl Future for StopSignal {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(drop)
    }
}

/// How long a stopped task may take to end.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl RunningTask {
    /// Spawns `run(stop)` on the current runtime.
    pub fn spawn<Fut>(run: impl FnOnce(StopSignal) -> Fut) -> Self
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, signal) = tokio::sync::oneshot::channel();
        Self {
            stop,
            task: tokio::spawn(run(StopSignal(signal))),
        }
    }

    /// Signals the task to stop and waits until it ended; panics when it takes longer than 10 s or
    /// panicked itself.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(STOP_TIMEOUT, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("the stopped task failed: {err}"),
            Err(_) => panic!("the task did not stop within {STOP_TIMEOUT:?} of being told to"),
        }
    }
}

/// A stand-in for the reference operator's DynaKube CRD at its HEAD: v1beta4, v1beta5 and v1beta6 served,
/// `storage` stored, schemas that keep every field and no conversion. Apply it, store objects, then apply
/// it again with another `storage` to get the `status.storedVersions` a cluster upgraded through those
/// versions has.
pub fn reference_dynakube_crd(storage: &str) -> serde_json::Value {
    let versions: Vec<serde_json::Value> = ["v1beta4", "v1beta5", "v1beta6"]
        .iter()
        .map(|v| {
            serde_json::json!({
                "name": v, "served": true, "storage": *v == storage,
                "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } },
                "subresources": { "status": {} },
            })
        })
        .collect();
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": { "name": "dynakubes.dynatrace.com" },
        "spec": {
            "group": "dynatrace.com", "scope": "Namespaced",
            "names": { "kind": "DynaKube", "listKind": "DynaKubeList", "plural": "dynakubes", "singular": "dynakube" },
            "versions": versions,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn per_binary_sets_up_once_and_keeps_running_after_the_tests_runtimes() {
        static SHARED: PerBinary<Arc<AtomicUsize>> = PerBinary::new();
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let mut seen = Vec::new();
        for _ in 0..2 {
            // Each test has a runtime of its own that ends with it.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let ticks = runtime.block_on(async {
                SHARED.get_or_start("the ticker", || async {
                    STARTS.fetch_add(1, Ordering::SeqCst);
                    let ticks = Arc::new(AtomicUsize::new(0));
                    let counter = ticks.clone();
                    let ticking = async move {
                        loop {
                            counter.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    };
                    Ok((ticks, ticking))
                })
            });
            seen.push(Arc::as_ptr(ticks));
        }
        assert_eq!(STARTS.load(Ordering::SeqCst), 1);
        assert_eq!(seen[0], seen[1]);
        let ticks = SHARED.get_or_start("the ticker", || async {
            Err::<(_, std::future::Ready<()>), _>(anyhow::anyhow!("set up twice"))
        });
        let before = ticks.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        assert!(ticks.load(Ordering::SeqCst) > before, "the future keeps running");
    }

    #[test]
    #[should_panic(expected = "setting up the broken thing failed: boom")]
    fn a_failed_set_up_fails_every_test_with_its_reason() {
        static BROKEN: PerBinary<()> = PerBinary::new();
        BROKEN.get_or_start("the broken thing", || async {
            Err::<((), std::future::Ready<()>), _>(anyhow::anyhow!("boom"))
        });
    }

    #[tokio::test]
    async fn a_running_task_ends_when_stopped() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = RunningTask::spawn(|stop| async move {
            stop.await;
            let _ = tx.send("stopped");
        });
        task.stop().await;
        assert_eq!(rx.await.unwrap(), "stopped");
    }
}
