//! containerd's remote-snapshot handshake, for the gRPC service and in-process callers
//! alike.
//!
//! When a Prepare carries `containerd.io/snapshot.ref=<chainID>` and a committed snapshot
//! with that target and the same parent already exists, the Prepare answers
//! `AlreadyExists`; containerd then adopts that snapshot (it Lists with the label and
//! parent) instead of unpacking the layer again. Layers are so shared between containerd
//! namespaces, and a lazily fetched backend plugs in by committing the target itself.

use crate::api::{Info, Remote, Snapshotter};
use crate::{Error, Result};

/// The label containerd's unpacker puts on a layer's Prepare and Commit: the chainID the
/// layer is committed as.
pub const SNAPSHOT_REF_LABEL: &str = "containerd.io/snapshot.ref";

/// Label on snapshots strata itself made (its puller): the strata namespace owning them.
/// Requests without a namespace header (a proxying containerd, whose garbage collector
/// removes every backend snapshot it did not record) never see them in List, nor adopt
/// them through the handshake.
pub const OWNER_LABEL: &str = "strata.io/owner";

/// Where the handshake looks targets up: a backend's [`Remote`] index, or a scan of its
/// committed snapshots for a backend without one (any other snapshots.v1 endpoint).
pub enum Targets<'a> {
    /// The backend's index.
    Indexed(&'a dyn Remote),
    /// A filtered walk.
    Scan(&'a dyn Snapshotter),
}

impl Targets<'_> {
    fn find(&self, target: &str) -> Result<Vec<Info>> {
        match self {
            Targets::Indexed(r) => r.targets(target),
            Targets::Scan(sn) => {
                let mut out = Vec::new();
                sn.walk(&["kind==committed".to_owned()], &mut |i| {
                    if i.labels.get(SNAPSHOT_REF_LABEL).map(String::as_str) == Some(target) {
                        out.push(i);
                    }
                    Ok(())
                })?;
                Ok(out)
            }
        }
    }
}

/// `AlreadyExists` when `target` is committed on `parent`; `see_owned` is whether the
/// caller may adopt snapshots strata's puller owns (it sent a namespace header).
pub fn check_target(
    targets: &Targets<'_>,
    target: &str,
    parent: Option<&str>,
    see_owned: bool,
) -> Result<()> {
    let found = targets.find(target)?.into_iter().find(|i| {
        (see_owned || !i.labels.contains_key(OWNER_LABEL)) && i.parent.as_deref() == parent
    });
    match found {
        Some(i) => Err(Error::already_exists(format!(
            "target snapshot {target:?} already exists as {:?}",
            i.name
        ))),
        None => Ok(()),
    }
}
