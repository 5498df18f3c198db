//! Warning events on pods whose volume was published empty, written off the publish path: publish queues
//! the event and returns; one task writes them. Without a Kubernetes client (or with a full queue) the
//! event is logged and counted instead: it never fails or slows a publish.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How many events may wait; empty volumes are rare, a full queue means the API server is unreachable.
const QUEUE_CAPACITY: usize = 256;

/// One warning on a pod.
#[derive(Debug, Clone)]
pub struct PodWarning {
    /// The pod's name.
    pub pod: String,
    /// Its namespace.
    pub namespace: String,
    /// Its UID, when the kubelet gave it.
    pub uid: Option<String>,
    /// CamelCase reason.
    pub reason: String,
    /// What happened and what to do.
    pub message: String,
}

/// The sending side.
#[derive(Clone, Debug)]
pub struct PodEvents {
    sender: Option<mpsc::Sender<PodWarning>>,
    metrics: Metrics,
}

impl PodEvents {
    /// Events written with `client` by a task that runs until `shutdown`.
    pub fn start(client: kube::Client, node: &str, metrics: Metrics, shutdown: CancellationToken) -> Self {
        let (sender, mut receiver) = mpsc::channel::<PodWarning>(QUEUE_CAPACITY);
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "dynatrace-oneagent-csi-driver".to_owned(),
                instance: Some(node.to_owned()),
            },
        );
        let task_metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                let warning = tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = receiver.recv() => match next { Some(w) => w, None => return },
                };
                let reference = ObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Pod".to_owned()),
                    name: Some(warning.pod.clone()),
                    namespace: Some(warning.namespace.clone()),
                    uid: warning.uid.clone(),
                    ..Default::default()
                };
                let event = Event {
                    type_: EventType::Warning,
                    reason: warning.reason.clone(),
                    note: Some(warning.message.clone()),
                    action: "PublishVolume".to_owned(),
                    secondary: None,
                };
                if let Err(err) = recorder.publish(&event, &reference).await {
                    task_metrics.event_dropped();
                    tracing::warn!(%err, pod = %warning.pod, namespace = %warning.namespace,
                        "cannot write an event on the pod; check the CSI driver's RBAC for events.k8s.io events");
                }
            }
        });
        Self {
            sender: Some(sender),
            metrics,
        }
    }

    /// Events that are only logged (no Kubernetes client).
    pub fn disabled(metrics: Metrics) -> Self {
        Self {
            sender: None,
            metrics,
        }
    }

    /// Queues `warning`; logs it instead when it cannot be queued.
    pub fn warn(&self, warning: PodWarning) {
        let Some(sender) = &self.sender else {
            self.metrics.event_dropped();
            tracing::warn!(pod = %warning.pod, namespace = %warning.namespace, reason = %warning.reason,
                "{} (no Kubernetes client: event not written)", warning.message);
            return;
        };
        if let Err(err) = sender.try_send(warning) {
            self.metrics.event_dropped();
            let warning = match err {
                mpsc::error::TrySendError::Full(w) | mpsc::error::TrySendError::Closed(w) => w,
            };
            tracing::warn!(pod = %warning.pod, namespace = %warning.namespace, reason = %warning.reason,
                "{} (event queue full: event not written)", warning.message);
        }
    }
}
