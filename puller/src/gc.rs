//! Garbage collection of the snapshots strata's puller made.

use strata_content::ImageContentStore;
use strata_snapshotter::Snapshotter;

use crate::pull::SNAPSHOT_LABEL_PREFIX;
use crate::{Result, ResultExt};

/// Removes committed snapshots strata's puller made ([`crate::unpack::OWNER_LABEL`]) in
/// `name`'s backend that no image references (through its `strata.io/snapshot.<name>`
/// label, and the chain below it), leaf first, and extraction snapshots an earlier
/// daemon left behind. Snapshots containerd or other clients
/// made are never touched. Returns how many were removed.
pub fn collect_snapshots(
    store: &dyn ImageContentStore,
    name: &str,
    sn: &dyn Snapshotter,
) -> Result<usize> {
    use std::collections::{HashMap, HashSet};
    let key = format!("{SNAPSHOT_LABEL_PREFIX}{name}");
    let mut keep: HashSet<String> = HashSet::new();
    let mut owned: HashMap<String, Option<String>> = HashMap::new();
    let mut parents: HashMap<String, Option<String>> = HashMap::new();
    // Extraction snapshots of an earlier daemon (killed mid-unpack): their key carries
    // the pid of the process that made them.
    let mut stale_extractions = Vec::new();
    sn.walk(&[], &mut |i| {
        if i.kind == strata_snapshotter::Kind::Active
            && i.labels.contains_key(crate::unpack::OWNER_LABEL)
            && crate::unpack::extraction_pid(&i.name).is_some_and(|p| p != std::process::id())
        {
            stale_extractions.push(i.name.clone());
        }
        parents.insert(i.name.clone(), i.parent.clone());
        if i.kind == strata_snapshotter::Kind::Committed
            && i.labels.contains_key(crate::unpack::OWNER_LABEL)
        {
            owned.insert(i.name, i.parent);
        }
        Ok(())
    })
    .context("list snapshots")?;
    let images = store.all_images().context("list images")?;
    for (_, image) in images {
        let mut next = image.labels.get(&key).cloned();
        while let Some(n) = next {
            if !keep.insert(n.clone()) {
                break;
            }
            next = parents.get(&n).cloned().flatten();
        }
    }
    // Anything else uses a snapshot as parent: keep the chain below it too.
    for (child, parent) in &parents {
        if owned.contains_key(child) {
            continue;
        }
        let mut next = parent.clone();
        while let Some(n) = next {
            if !keep.insert(n.clone()) {
                break;
            }
            next = parents.get(&n).cloned().flatten();
        }
    }
    let mut doomed: Vec<String> = owned
        .keys()
        .filter(|n| !keep.contains(*n))
        .cloned()
        .collect();
    doomed.extend(stale_extractions);
    let mut removed = 0;
    // Leaf first: a snapshot with children is retried after they are gone.
    loop {
        let before = doomed.len();
        doomed.retain(|n| match sn.remove(n) {
            Ok(()) => {
                removed += 1;
                false
            }
            Err(_) => true,
        });
        if doomed.is_empty() || doomed.len() == before {
            break;
        }
    }
    Ok(removed)
}
