//! Unpacking layers from a real content store into each real snapshotter: overlayfs in
//! parallel (Rebase), native and btrfs in chain order. The merged result, seen through a
//! view, is the layers applied in order; diff_id mismatches commit nothing.

use std::sync::Mutex;

use strata_content::testsuite::{digest_of, write_blob};
use strata_content::{Labels, LocalStore, Scope, StoreOptions};
use strata_proto::Digest;
use strata_puller::unpack::OWNER_LABEL;
use strata_puller::{Layer, Limits, UnpackEvent, Unpacker, WhiteoutMode, chain_ids};
use strata_snapshotter::mount::{mount_all, unmount_all};
use strata_snapshotter::testsuite::LoopBtrfs;
use strata_snapshotter::{
    BtrfsSnapshotter, Kind, NativeSnapshotter, OverlayOptions, OverlaySnapshotter, Rebase,
    Snapshotter,
};
use strata_testkit::{Tar, gzip, zstd};

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const PLAIN: &str = "application/vnd.oci.image.layer.v1.tar";

/// Three layers exercising replacement, whiteouts and an opaque directory, as blobs.
fn layers(store: &LocalStore, scope: &Scope) -> Vec<Layer> {
    let l1 = Tar::new()
        .file("a", b"a from 1")
        .dir("d")
        .file("d/x", b"x from 1")
        .file("keep", b"kept")
        .finish();
    let l2 = Tar::new()
        .file(".wh.a", b"")
        .file("b", b"b from 2")
        .file("d/.wh..wh..opq", b"")
        .file("d/y", b"y from 2")
        .finish();
    let l3 = Tar::new().file("b", b"b from 3").finish();
    [(l1, GZIP), (l2, ZSTD), (l3, PLAIN)]
        .into_iter()
        .enumerate()
        .map(|(i, (tar, mt))| {
            let blob = match mt {
                GZIP => gzip(&tar),
                ZSTD => zstd(&tar),
                _ => tar.clone(),
            };
            let digest = write_blob(store, scope, &format!("l{i}"), &blob, Labels::new()).unwrap();
            Layer {
                media_type: mt.into(),
                digest,
                diff_id: digest_of(&tar),
            }
        })
        .collect()
}

fn check_merged(sn: &dyn Snapshotter, top: &Digest) {
    let m = sn
        .view("check-view", Some(&top.to_string()), Labels::new())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    mount_all(&m, dir.path()).unwrap();
    let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).ok();
    let got = (read("a"), read("b"), read("d/x"), read("d/y"), read("keep"));
    unmount_all(dir.path()).unwrap();
    sn.remove("check-view").unwrap();
    assert_eq!(
        got,
        (
            None,
            Some("b from 3".into()),
            None,
            Some("y from 2".into()),
            Some("kept".into())
        )
    );
}

fn run(sn: &dyn Snapshotter, rebase: Option<&(dyn Rebase + Send + Sync)>, mode: WhiteoutMode) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
    let scope = Scope::ns("unpack");
    let ls = layers(&store, &scope);
    let unpacker = Unpacker {
        store: &store,
        scope: &scope,
        snapshotter: sn,
        rebase,
        whiteouts: mode,
        limits: Limits::default(),
        concurrency: 3,
        labels: Labels::new(),
        owner: "unpack".into(),
    };
    let events = Mutex::new(Vec::new());
    let record = |e: UnpackEvent| events.lock().unwrap().push(e);
    let top = unpacker.unpack(&ls, &record).unwrap().unwrap();
    let chains = chain_ids(&ls.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>());
    assert_eq!(top, chains[2]);
    for (i, c) in chains.iter().enumerate() {
        let info = sn.stat(&c.to_string()).unwrap();
        assert_eq!(info.kind, Kind::Committed);
        let parent = i.checked_sub(1).map(|p| chains[p].to_string());
        assert_eq!(info.parent, parent, "layer {i} parent");
        assert_eq!(
            info.labels.get(OWNER_LABEL).map(String::as_str),
            Some("unpack")
        );
    }
    check_merged(sn, &top);
    let done = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, UnpackEvent::Done { skipped: false, .. }))
        .count();
    assert_eq!(done, 3);
    // No extraction snapshot is left behind.
    let mut actives = 0;
    sn.walk(&["kind==active".into()], &mut |_| {
        actives += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(actives, 0);

    // A second unpack finds every chainID and does nothing.
    events.lock().unwrap().clear();
    assert_eq!(unpacker.unpack(&ls, &record).unwrap(), Some(top.clone()));
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .all(|e| matches!(e, UnpackEvent::Done { skipped: true, .. }))
    );

    // A layer whose content does not match its diff_id is refused and commits nothing.
    let mut bad = ls.clone();
    bad[2].diff_id = digest_of(b"something else");
    let bad_chain =
        chain_ids(&bad.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>())[2].clone();
    let err = unpacker.unpack(&bad, &|_| {}).unwrap_err();
    assert_eq!(
        err.kind(),
        strata_proto::ErrorKind::InvalidArgument,
        "{err:?}"
    );
    assert!(format!("{err:?}").contains("layer 2"), "{err:?}");
    assert!(sn.stat(&bad_chain.to_string()).is_err());
    let mut actives = 0;
    sn.walk(&["kind==active".into()], &mut |_| {
        actives += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(actives, 0, "failed extraction left an active snapshot");
}

#[test]
fn overlay_unpacks_layers_in_parallel_and_chains_them_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::sync::Arc::new(
        OverlaySnapshotter::new(
            dir.path(),
            OverlayOptions {
                index_off: strata_snapshotter::overlay::kernel_supports_index(),
                ..Default::default()
            },
        )
        .unwrap(),
    );
    run(&*o, Some(&*o), WhiteoutMode::Overlay);
}

#[test]
fn overlay_unpacks_in_order_without_rebase() {
    let dir = tempfile::tempdir().unwrap();
    let o = OverlaySnapshotter::new(dir.path(), OverlayOptions::default()).unwrap();
    run(&o, None, WhiteoutMode::Overlay);
}

#[test]
fn native_unpacks_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let n = NativeSnapshotter::new(dir.path()).unwrap();
    run(&n, None, WhiteoutMode::Delete);
}

#[test]
fn btrfs_unpacks_in_order() {
    let fs = LoopBtrfs::new(512 << 20);
    let b = BtrfsSnapshotter::new(&fs.path().join("root")).unwrap();
    run(&b, None, WhiteoutMode::Delete);
}
