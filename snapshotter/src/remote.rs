//! What remote (lazily fetched) snapshots rest on: containerd's remote-snapshot handshake,
//! for the gRPC service and in-process callers alike, and [`BlobSource`], the random
//! access to registry blobs a lazy backend reads through.
//!
//! When a Prepare carries `containerd.io/snapshot.ref=<chainID>` and a committed snapshot
//! with that target and the same parent already exists, the Prepare answers
//! `AlreadyExists`; containerd then adopts that snapshot (it Lists with the label and
//! parent) instead of unpacking the layer again. Layers are so shared between containerd
//! namespaces, and a lazily fetched backend plugs in by committing the target itself.

use std::ops::Range;

use strata_proto::Digest;

use crate::api::{Info, Remote, Snapshotter};
use crate::{Error, Result};

/// A layer blob in a registry, as a lazy backend knows it from the layer's descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RemoteBlob {
    /// The image reference the layer belongs to (`host/repo[:tag][@digest]`): it names
    /// the registry and repository, and so the credentials and mirrors that apply.
    pub reference: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes, from its descriptor.
    pub size: u64,
}

/// Random access to remote layer blobs: what a lazy backend reads through. The daemon
/// wires in the puller's implementation over the registry client, with the registry's
/// credentials, mirrors and TLS settings; the backend never sees HTTP.
///
/// # Contract
/// - `read_range` returns exactly the bytes of `range` (`OutOfRange` if it does not lie
///   within `0..size`), from a server that honours ranges or not.
/// - The bytes are not verified: the caller checks them against its own digests (a TOC's
///   chunk digests) and never serves what fails.
/// - `NotFound` when the registry has no such blob, `Unauthenticated` or
///   `PermissionDenied` when it refuses the credentials, `Unavailable` for failures a
///   retry may cure.
pub trait BlobSource: Send + Sync {
    /// The bytes `range` of `blob`.
    fn read_range(&self, blob: &RemoteBlob, range: Range<u64>) -> Result<Vec<u8>>;

    /// The size of blob `digest` of image `reference`, asked of the registry (the labels
    /// containerd gives a remote snapshotter name a layer but not its size).
    fn blob_size(&self, reference: &str, digest: &Digest) -> Result<u64>;
}

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
