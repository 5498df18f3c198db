//! Kubernetes events from the webhook, off the request path: a handler queues an event and returns; one
//! task writes the queued events through kube's [`Recorder`] (which folds repeats of the same event into a
//! series). The queue is bounded: when the API server is slow or the webhook is flooded, further events
//! are dropped and counted instead of holding memory or delaying admissions. Normal events (one `Inject`
//! per injected pod) are also limited to [`NORMAL_EVENTS_PER_SECOND`]: at a thousand pods a second they
//! would otherwise make the webhook a heavy writer of the API server for news nobody reads; warnings are
//! never throttled.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How many events may wait to be written.
pub const QUEUE_CAPACITY: usize = 256;
/// How many Normal events a second are written at most (a burst of as many is allowed).
pub const NORMAL_EVENTS_PER_SECOND: u32 = 10;

/// A token bucket for Normal events.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: std::time::Instant,
}

impl Bucket {
    fn take(&mut self, now: std::time::Instant) -> bool {
        let rate = f64::from(NORMAL_EVENTS_PER_SECOND);
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What an event is about: a Namespace (pods have no UID yet when they are admitted) or a DynaKube.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Regarding {
    /// The namespace a pod is being created in.
    Namespace(String),
    /// A DynaKube, by namespace and name.
    DynaKube {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl Regarding {
    fn reference(&self) -> ObjectReference {
        match self {
            // Written into the namespace itself, where `kubectl get events -n <namespace>` shows it.
            Self::Namespace(name) => ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Namespace".to_owned()),
                name: Some(name.clone()),
                namespace: Some(name.clone()),
                ..Default::default()
            },
            Self::DynaKube { namespace, name } => ObjectReference {
                api_version: Some("dynatrace.com/v1beta1".to_owned()),
                kind: Some("DynaKube".to_owned()),
                namespace: Some(namespace.clone()),
                name: Some(name.clone()),
                ..Default::default()
            },
        }
    }
}

/// One event to write.
#[derive(Debug, Clone)]
pub struct QueuedEvent {
    /// The object it is about.
    pub regarding: Regarding,
    /// Warning (something of ours failed) or Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// What happened and what to do.
    pub message: String,
    /// What the webhook did (`Inject`, `Admit`, ...).
    pub action: String,
}

/// The sending side, cheap to clone into handlers.
#[derive(Clone)]
pub struct EventQueue {
    sender: Option<mpsc::Sender<QueuedEvent>>,
    normal: std::sync::Arc<std::sync::Mutex<Bucket>>,
    metrics: Metrics,
}

fn full_bucket() -> std::sync::Arc<std::sync::Mutex<Bucket>> {
    std::sync::Arc::new(std::sync::Mutex::new(Bucket {
        tokens: f64::from(NORMAL_EVENTS_PER_SECOND),
        last: std::time::Instant::now(),
    }))
}

impl EventQueue {
    /// A queue whose events are written by a task using `client`, until `shutdown`.
    pub fn start(client: Client, metrics: Metrics, shutdown: CancellationToken) -> Self {
        let (sender, mut receiver) = mpsc::channel::<QueuedEvent>(QUEUE_CAPACITY);
        let reporter = Reporter {
            controller: "dynatrace-webhook".to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client, reporter);
        let writer_metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                let queued = tokio::select! {
                    () = shutdown.cancelled() => return,
                    queued = receiver.recv() => match queued { Some(q) => q, None => return },
                };
                let event = Event {
                    type_: if queued.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: queued.reason.clone(),
                    note: Some(queued.message.clone()),
                    action: queued.action.clone(),
                    secondary: None,
                };
                if let Err(err) = recorder.publish(&event, &queued.regarding.reference()).await {
                    writer_metrics.event("failed");
                    tracing::warn!(%err, reason = %queued.reason, regarding = ?queued.regarding,
                        "cannot write an event; check the webhook's RBAC for events.k8s.io events");
                } else {
                    writer_metrics.event("written");
                }
            }
        });
        Self {
            sender: Some(sender),
            normal: full_bucket(),
            metrics,
        }
    }

    /// A queue that drops everything (for servers without a Kubernetes client).
    pub fn disabled(metrics: Metrics) -> Self {
        Self {
            sender: None,
            normal: full_bucket(),
            metrics,
        }
    }

    /// The metrics the queue counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Queues an event; drops it (counted in the metrics) when the queue is full, or when it is a Normal
    /// event over [`NORMAL_EVENTS_PER_SECOND`].
    pub fn send(&self, event: QueuedEvent) {
        let Some(sender) = &self.sender else { return };
        if !event.warning {
            let allowed = self
                .normal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(std::time::Instant::now());
            if !allowed {
                self.metrics.event("throttled");
                return;
            }
        }
        if sender.try_send(event).is_err() {
            self.metrics.event("dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_events_are_limited_to_their_rate_after_a_burst() {
        let start = std::time::Instant::now();
        let mut bucket = Bucket {
            tokens: f64::from(NORMAL_EVENTS_PER_SECOND),
            last: start,
        };
        let burst = (0..100).filter(|_| bucket.take(start)).count();
        assert_eq!(burst, NORMAL_EVENTS_PER_SECOND as usize);
        // A tenth of a second later one more token has come.
        let later = start + std::time::Duration::from_millis(100);
        assert!(bucket.take(later));
        assert!(!bucket.take(later));
        // Tokens do not pile up beyond a burst.
        let much_later = start + std::time::Duration::from_secs(60);
        let burst = (0..100).filter(|_| bucket.take(much_later)).count();
        assert_eq!(burst, NORMAL_EVENTS_PER_SECOND as usize);
    }
}
