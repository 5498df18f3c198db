//! Waiting between the passes of the loop-driven controllers (webhook certificates, namespace mapping).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Waits until `wait` has passed or `trigger` fired, then `debounce` more so that a burst of watch events
/// makes one pass. Returns `false` when `shutdown` completed first.
pub(crate) async fn next_pass(
    shutdown: &mut (impl Future<Output = ()> + Unpin),
    trigger: &Notify,
    wait: Duration,
    debounce: Duration,
) -> bool {
    tokio::select! {
        () = &mut *shutdown => false,
        () = tokio::time::sleep(wait) => true,
        () = trigger.notified() => {
            tokio::select! {
                () = &mut *shutdown => false,
                () = tokio::time::sleep(debounce) => true,
            }
        }
    }
}

/// Background tasks that stop with their owner: dropping a [`JoinHandle`] alone leaves the task running.
pub(crate) struct AbortOnDrop(Vec<JoinHandle<()>>);

impl From<JoinHandle<()>> for AbortOnDrop {
    fn from(task: JoinHandle<()>) -> Self {
        Self(vec![task])
    }
}

impl FromIterator<JoinHandle<()>> for AbortOnDrop {
    fn from_iter<I: IntoIterator<Item = JoinHandle<()>>>(tasks: I) -> Self {
        Self(tasks.into_iter().collect())
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Watches the objects `api` and `config` select and wakes a loop-driven controller (named by `controller`,
/// for the log) on every change; the initial list wakes nobody.
pub(crate) fn spawn_trigger<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    controller: &'static str,
    trigger: Arc<Notify>,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                Ok(_) => trigger.notify_one(),
                Err(err) => tracing::warn!(
                    kind,
                    controller,
                    %err,
                    "watching for changes that the {controller} controller acts on failed: {}; retrying with \
                     backoff",
                    crate::error::advice(&err)
                ),
            }
        }
    })
}
