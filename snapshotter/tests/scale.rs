//! Scale: 10,000 snapshots in one backend, through the gRPC service. List returns every
//! one exactly once (in several stream messages), Stat and filters stay correct, and
//! removing them all leaves no directory behind. Latency is measured by `snapshot-bench`.

use std::collections::HashSet;
use std::sync::Arc;

use strata_snapshotter::service::{Backends, BackendsCell, SnapshotsService};
use strata_snapshotter::{
    Cleanup, GrpcSnapshotter, Kind, OverlayOptions, OverlaySnapshotter, Snapshotter,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

const N: usize = 10_000;

#[test]
fn ten_thousand_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let overlay = Arc::new(OverlaySnapshotter::new(&root, OverlayOptions::default()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sock = dir.path().join("sock");
    let listener = rt.block_on(async { UnixListener::bind(&sock).unwrap() });
    let backends = Backends::new("overlayfs").with(
        "overlayfs",
        strata_snapshotter::Backend::new(
            overlay.clone() as Arc<dyn Snapshotter>,
            strata_snapshotter::Whiteouts::Overlay,
        )
        .with_cleanup(overlay.clone() as Arc<dyn Cleanup + Send + Sync>),
    );
    rt.spawn(
        strata_proto::transport::server()
            .add_service(SnapshotsService::new(BackendsCell::ready(backends)).into_server())
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let channel = rt
        .block_on(strata_proto::transport::connect_unix(&sock))
        .unwrap();
    let sn = GrpcSnapshotter::new(channel, rt.handle().clone(), "overlayfs");

    sn.prepare("base-a", None, Default::default()).unwrap();
    sn.commit("base", "base-a", Default::default()).unwrap();
    // Half active on base, half committed chains of one, so kinds and parents vary.
    for i in 0..N / 2 {
        sn.prepare(&format!("active-{i}"), Some("base"), Default::default())
            .unwrap();
        sn.prepare(&format!("tmp-{i}"), None, Default::default())
            .unwrap();
        sn.commit(
            &format!("layer-{i}"),
            &format!("tmp-{i}"),
            Default::default(),
        )
        .unwrap();
    }
    let mut names = Vec::new();
    sn.walk(&[], &mut |i| {
        names.push(i.name);
        Ok(())
    })
    .unwrap();
    assert_eq!(names.len(), N + 1);
    assert_eq!(
        names.iter().collect::<HashSet<_>>().len(),
        N + 1,
        "duplicates in List"
    );
    let mut children = 0;
    sn.walk(&["parent==base".into()], &mut |i| {
        assert_eq!(i.kind, Kind::Active);
        children += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(children, N / 2);
    for i in (0..N / 2).step_by(97) {
        assert_eq!(
            sn.stat(&format!("layer-{i}")).unwrap().kind,
            Kind::Committed
        );
        assert_eq!(
            sn.stat(&format!("active-{i}")).unwrap().parent.as_deref(),
            Some("base")
        );
    }
    for i in 0..N / 2 {
        sn.remove(&format!("active-{i}")).unwrap();
        sn.remove(&format!("layer-{i}")).unwrap();
    }
    sn.remove("base").unwrap();
    sn.cleanup().unwrap();
    assert_eq!(
        std::fs::read_dir(root.join("snapshots")).unwrap().count(),
        0
    );
}
