//! Events as a wrapper: [`Observed`] implements the whole [`Snapshotter`] (and [`Rebase`])
//! around another one and reports each commit to a [`SnapshotEvents`] sink. Whoever
//! commits — the snapshots.v1 service for a client, the puller's unpacker in-process —
//! goes through the same wrapper, so every commit is published once, with the namespace
//! of the request that made it. Metrics plug in the same way.

use std::sync::Arc;

use crate::Result;
use crate::api::{Info, Labels, Mount, Rebase, Snapshotter, Usage};

/// What a snapshotter did, as containerd's `/snapshot/*` events say it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotEvent {
    /// Active snapshot `key` was committed as `name`.
    Commit {
        /// The active key.
        key: String,
        /// The committed name.
        name: String,
    },
}

/// Receives snapshot events (the daemon publishes them on its event bus).
pub trait SnapshotEvents: Send + Sync {
    /// `event` happened on backend `snapshotter`, at the request of namespace `ns` (empty
    /// for a client that sent none, such as a proxying containerd).
    fn publish(&self, ns: &str, snapshotter: &str, event: SnapshotEvent);
}

/// A sink that drops every event.
pub struct Discard;

impl SnapshotEvents for Discard {
    fn publish(&self, _: &str, _: &str, _: SnapshotEvent) {}
}

/// A snapshotter that reports its commits. Cheap to make per request: it holds the
/// request's namespace.
pub struct Observed {
    inner: Arc<dyn Snapshotter>,
    rebase: Option<Arc<dyn Rebase + Send + Sync>>,
    sink: Arc<dyn SnapshotEvents>,
    ns: String,
    snapshotter: String,
}

impl Observed {
    /// `inner` (backend `snapshotter`, with its Rebase capability if any), reporting to
    /// `sink` on behalf of namespace `ns`.
    pub fn new(
        inner: Arc<dyn Snapshotter>,
        rebase: Option<Arc<dyn Rebase + Send + Sync>>,
        sink: Arc<dyn SnapshotEvents>,
        ns: &str,
        snapshotter: &str,
    ) -> Self {
        Observed {
            inner,
            rebase,
            sink,
            ns: ns.to_owned(),
            snapshotter: snapshotter.to_owned(),
        }
    }

    /// Whether the wrapped snapshotter can rebase (then [`Rebase`] on this forwards).
    pub fn can_rebase(&self) -> bool {
        self.rebase.is_some()
    }

    fn committed(&self, key: &str, name: &str) {
        self.sink.publish(
            &self.ns,
            &self.snapshotter,
            SnapshotEvent::Commit {
                key: key.to_owned(),
                name: name.to_owned(),
            },
        );
    }
}

impl Snapshotter for Observed {
    fn stat(&self, key: &str) -> Result<Info> {
        self.inner.stat(key)
    }
    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        self.inner.update(info, fieldpaths)
    }
    fn usage(&self, key: &str) -> Result<Usage> {
        self.inner.usage(key)
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.inner.mounts(key)
    }
    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.inner.prepare(key, parent, labels)
    }
    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.inner.view(key, parent, labels)
    }
    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.inner.commit(name, key, labels)?;
        self.committed(key, name);
        Ok(())
    }
    fn remove(&self, key: &str) -> Result<()> {
        self.inner.remove(key)
    }
    fn walk(&self, filters: &[String], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()> {
        self.inner.walk(filters, f)
    }
}

impl Rebase for Observed {
    fn commit_onto(&self, name: &str, key: &str, parent: &str, labels: Labels) -> Result<()> {
        let Some(r) = &self.rebase else {
            return Err(crate::Error::new(
                crate::ErrorKind::Unimplemented,
                format!("snapshotter {} cannot rebase on commit", self.snapshotter),
            ));
        };
        r.commit_onto(name, key, parent, labels)?;
        self.committed(key, name);
        Ok(())
    }
}

#[cfg(all(test, feature = "backends"))]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{Kind, OverlayOptions, OverlaySnapshotter};

    #[derive(Default)]
    struct Sink(Mutex<Vec<(String, String, SnapshotEvent)>>);

    impl SnapshotEvents for Sink {
        fn publish(&self, ns: &str, snapshotter: &str, event: SnapshotEvent) {
            self.0
                .lock()
                .unwrap()
                .push((ns.to_owned(), snapshotter.to_owned(), event));
        }
    }

    #[test]
    fn commits_are_published_once_and_failures_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let o = Arc::new(OverlaySnapshotter::new(d.path(), OverlayOptions::default()).unwrap());
        let sink = Arc::new(Sink::default());
        let sn = Observed::new(o.clone(), Some(o), sink.clone(), "ns1", "overlayfs");
        sn.prepare("a", None, Labels::new()).unwrap();
        sn.commit("base", "a", Labels::new()).unwrap();
        sn.prepare("b", None, Labels::new()).unwrap();
        sn.commit_onto("top", "b", "base", Labels::new()).unwrap();
        // A failed commit publishes nothing.
        assert!(sn.commit("x", "missing", Labels::new()).is_err());
        assert_eq!(sn.stat("top").unwrap().kind, Kind::Committed);
        let got = sink.0.lock().unwrap().clone();
        let commit = |k: &str, n: &str| {
            (
                "ns1".to_owned(),
                "overlayfs".to_owned(),
                SnapshotEvent::Commit {
                    key: k.into(),
                    name: n.into(),
                },
            )
        };
        assert_eq!(got, vec![commit("a", "base"), commit("b", "top")]);
    }
}
