//! Kubernetes events from the webhook, off the request path: a handler queues an event and returns; one
//! task writes the queued events through kube's [`Recorder`] (which folds repeats of the same event into a
//! series). The queue is bounded: when the API server is slow or the webhook is flooded, further events
//! are dropped and counted instead of holding memory or delaying admissions.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How many events may wait to be written.
pub const QUEUE_CAPACITY: usize = 256;

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
    metrics: Metrics,
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
            metrics,
        }
    }

    /// A queue that drops everything (for servers without a Kubernetes client).
    pub fn disabled(metrics: Metrics) -> Self {
        Self {
            sender: None,
            metrics,
        }
    }

    /// Queues an event; drops it (counted in the metrics) when the queue is full.
    pub fn send(&self, event: QueuedEvent) {
        let Some(sender) = &self.sender else { return };
        if sender.try_send(event).is_err() {
            self.metrics.event("dropped");
        }
    }
}
