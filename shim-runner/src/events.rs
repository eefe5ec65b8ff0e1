//! The daemon's event bus: what happens to tasks, containers, images and snapshots,
//! fanned out to every `Events.Subscribe` stream.
//!
//! Publishing never blocks and never fails: a subscriber that falls more than
//! [`CAPACITY`] events behind loses the oldest ones (its stream reports the gap), as
//! containerd's exchange drops events for slow subscribers.

use std::time::SystemTime;

use strata_proto::filter::{Adaptor, Filter};
use strata_proto::strata::v1 as pb;
use strata_proto::time::to_timestamp;
use tokio::sync::broadcast;

/// Events kept for a slow subscriber.
pub const CAPACITY: usize = 1024;

/// Task created.
pub const TASK_CREATE: &str = "/tasks/create";
/// Task started.
pub const TASK_START: &str = "/tasks/start";
/// A task's process (init or exec) exited.
pub const TASK_EXIT: &str = "/tasks/exit";
/// Task deleted.
pub const TASK_DELETE: &str = "/tasks/delete";
/// A process was exec'd into a task.
pub const TASK_EXEC_ADDED: &str = "/tasks/exec-added";
/// Task paused.
pub const TASK_PAUSED: &str = "/tasks/paused";
/// Task resumed.
pub const TASK_RESUMED: &str = "/tasks/resumed";
/// Container created.
pub const CONTAINER_CREATE: &str = "/containers/create";
/// Container deleted.
pub const CONTAINER_DELETE: &str = "/containers/delete";
/// Image pulled and recorded.
pub const IMAGE_PULL: &str = "/images/pull";
/// Snapshot committed.
pub const SNAPSHOT_COMMIT: &str = "/snapshot/commit";

/// A cloneable handle on the bus.
#[derive(Clone, Debug)]
pub struct Events {
    tx: broadcast::Sender<pb::Envelope>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    /// An empty bus.
    pub fn new() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
        }
    }

    /// Publishes `event` under `topic` in namespace `ns` (empty for global events, such
    /// as a snapshot committed through containerd's unnamespaced proxy calls).
    pub fn publish(&self, ns: &str, topic: &str, event: pb::envelope::Event) {
        // No subscriber is not an error.
        let _ = self.tx.send(pb::Envelope {
            timestamp: Some(to_timestamp(SystemTime::now())),
            namespace: ns.to_owned(),
            topic: topic.to_owned(),
            event: Some(event),
        });
    }

    /// A new subscription, seeing events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::Envelope> {
        self.tx.subscribe()
    }
}

/// The filter fields of an envelope: `topic` and `namespace`.
struct EnvelopeFields<'a>(&'a pb::Envelope);

impl Adaptor for EnvelopeFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str) {
            Some("topic") if path.len() == 1 => Some(self.0.topic.clone()),
            Some("namespace") if path.len() == 1 => Some(self.0.namespace.clone()),
            _ => None,
        }
    }
}

/// Whether `e` passes `filter` (containerd's filter syntax over `topic` and `namespace`).
pub fn matches(filter: &Filter, e: &pb::Envelope) -> bool {
    filter.matches(&EnvelopeFields(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(ns: &str, topic: &str) -> pb::Envelope {
        pb::Envelope {
            timestamp: None,
            namespace: ns.into(),
            topic: topic.into(),
            event: None,
        }
    }

    #[test]
    fn filters_select_by_topic_and_namespace() {
        let f = Filter::parse_all(&[r#"topic~="^/tasks/",namespace==a"#, "topic==/images/pull"])
            .unwrap();
        assert!(matches(&f, &envelope("a", TASK_EXIT)));
        assert!(!matches(&f, &envelope("b", TASK_EXIT)));
        assert!(matches(&f, &envelope("b", IMAGE_PULL)));
        assert!(!matches(&f, &envelope("a", CONTAINER_CREATE)));
    }

    #[tokio::test]
    async fn subscribers_see_events_published_after_they_subscribe() {
        let bus = Events::new();
        bus.publish(
            "x",
            TASK_START,
            pb::envelope::Event::Task(Default::default()),
        );
        let mut rx = bus.subscribe();
        bus.publish(
            "x",
            TASK_EXIT,
            pb::envelope::Event::Task(pb::TaskEvent {
                container_id: "c".into(),
                exit_status: 3,
                ..Default::default()
            }),
        );
        let e = rx.recv().await.unwrap();
        assert_eq!(e.topic, TASK_EXIT);
        assert!(matches!(
            e.event,
            Some(pb::envelope::Event::Task(pb::TaskEvent {
                exit_status: 3,
                ..
            }))
        ));
    }
}
