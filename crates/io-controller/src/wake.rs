//! Waiting between the passes of the loop-driven controllers (webhook certificates, namespace mapping).

use std::future::Future;
use std::time::Duration;

use tokio::sync::Notify;

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
