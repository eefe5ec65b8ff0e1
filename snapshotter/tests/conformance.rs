//! containerd's snapshotter conformance suite against each backend, in-process and over
//! the snapshots.v1 gRPC service on a real unix socket, with real kernel mounts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_snapshotter::service::{Backends, BackendsCell, SnapshotsService};
use strata_snapshotter::testsuite as ts;
use strata_snapshotter::{
    BtrfsSnapshotter, Cleanup, GrpcSnapshotter, NativeSnapshotter, OverlayOptions,
    OverlaySnapshotter, Rebase, Remote, Snapshotter, overlay::kernel_supports_index,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

/// A backend the suite runs against: where its root goes and how it opens.
trait Backend {
    /// Name it is served under.
    const NAME: &'static str;
    /// Whether renaming a lower directory works (overlay lacks redirect_dir).
    const RENAME_DIRS: bool;
    /// Makes the root under `dir`; the guard keeps whatever backs it alive.
    fn root(dir: &Path) -> (PathBuf, Box<dyn std::any::Any>) {
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        (root, Box::new(()))
    }
    /// Opens the backend on `root`.
    fn open(root: &Path) -> Arc<dyn SnapshotterAndCleanup>;
    /// Opens the backend with its Rebase capability, if it has one.
    fn open_with_rebase(root: &Path) -> (Arc<dyn SnapshotterAndCleanup>, Option<Rebaser>) {
        (Self::open(root), None)
    }
}

type Rebaser = Arc<dyn Rebase + Send + Sync>;

/// The traits in one object, so the service gets the Cleanup and Remote capabilities.
trait SnapshotterAndCleanup: Snapshotter + Cleanup + Remote {
    fn as_snapshotter(self: Arc<Self>) -> Arc<dyn Snapshotter>;
    fn as_cleanup(self: Arc<Self>) -> Arc<dyn Cleanup + Send + Sync>;
    fn as_remote(self: Arc<Self>) -> Arc<dyn Remote + Send + Sync>;
}

impl<T: Snapshotter + Cleanup + Remote + 'static> SnapshotterAndCleanup for T {
    fn as_snapshotter(self: Arc<Self>) -> Arc<dyn Snapshotter> {
        self
    }
    fn as_cleanup(self: Arc<Self>) -> Arc<dyn Cleanup + Send + Sync> {
        self
    }
    fn as_remote(self: Arc<Self>) -> Arc<dyn Remote + Send + Sync> {
        self
    }
}

struct Overlay;

impl Backend for Overlay {
    const NAME: &'static str = "overlayfs";
    const RENAME_DIRS: bool = false;
    fn open(root: &Path) -> Arc<dyn SnapshotterAndCleanup> {
        Self::open_with_rebase(root).0
    }
    fn open_with_rebase(root: &Path) -> (Arc<dyn SnapshotterAndCleanup>, Option<Rebaser>) {
        let o = Arc::new(
            OverlaySnapshotter::new(
                root,
                OverlayOptions {
                    index_off: kernel_supports_index(),
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        (o.clone(), Some(o))
    }
}

struct Native;

impl Backend for Native {
    const NAME: &'static str = "native";
    const RENAME_DIRS: bool = true;
    fn open(root: &Path) -> Arc<dyn SnapshotterAndCleanup> {
        Arc::new(NativeSnapshotter::new(root).unwrap())
    }
}

struct Btrfs;

impl Backend for Btrfs {
    const NAME: &'static str = "btrfs";
    const RENAME_DIRS: bool = true;
    fn root(_dir: &Path) -> (PathBuf, Box<dyn std::any::Any>) {
        let fs = ts::LoopBtrfs::new(512 << 20);
        (fs.path().join("root"), Box::new(fs))
    }
    fn open(root: &Path) -> Arc<dyn SnapshotterAndCleanup> {
        Arc::new(BtrfsSnapshotter::new(root).unwrap())
    }
}

/// A case's world: temp dirs, the backend, and (over gRPC) the server and client.
struct Harness {
    work: PathBuf,
    root: PathBuf,
    sock: PathBuf,
    sn: Option<Box<dyn Snapshotter>>,
    rt: Option<tokio::runtime::Runtime>,
    _guard: Box<dyn std::any::Any>,
    _dir: tempfile::TempDir,
}

/// Temp dirs and the backend's root, with nothing open yet.
fn dirs<B: Backend>() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (root, guard) = B::root(dir.path());
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    Harness {
        work,
        sock: dir.path().join("sock"),
        root,
        sn: None,
        rt: None,
        _guard: guard,
        _dir: dir,
    }
}

fn in_process<B: Backend>() -> Harness {
    let mut h = dirs::<B>();
    h.sn = Some(Box::new(B::open(&h.root).as_snapshotter()));
    h
}

fn client(rt: &tokio::runtime::Runtime, sock: &Path, name: &str) -> GrpcSnapshotter {
    let channel = rt
        .block_on(strata_proto::transport::connect_unix(sock))
        .unwrap();
    GrpcSnapshotter::new(channel, rt.handle().clone(), name)
}

fn over_grpc<B: Backend>() -> Harness {
    let mut h = dirs::<B>();
    let (backend, rebaser) = B::open_with_rebase(&h.root);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(async { UnixListener::bind(&h.sock).unwrap() });
    let whiteouts = if rebaser.is_some() {
        strata_snapshotter::Whiteouts::Overlay
    } else {
        strata_snapshotter::Whiteouts::Delete
    };
    let mut entry = strata_snapshotter::Backend::new(backend.clone().as_snapshotter(), whiteouts)
        .with_cleanup(backend.clone().as_cleanup())
        .with_remote(backend.as_remote());
    if let Some(r) = rebaser {
        entry = entry.with_rebase(r);
    }
    let backends = Backends::new(B::NAME).with(B::NAME, entry);
    rt.spawn(
        strata_proto::transport::server()
            .add_service(SnapshotsService::new(BackendsCell::ready(backends)).into_server())
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    h.sn = Some(Box::new(client(&rt, &h.sock, B::NAME)));
    h.rt = Some(rt);
    h
}

impl Harness {
    fn sn(&self) -> &dyn Snapshotter {
        self.sn.as_deref().expect("the case's snapshotter")
    }

    /// Reopens what the case talks to: the backend on the same root in-process, or a
    /// new connection to the same server over gRPC.
    fn reopen<B: Backend>(&self) -> Box<dyn Snapshotter> {
        match &self.rt {
            None => Box::new(B::open(&self.root).as_snapshotter()),
            Some(rt) => Box::new(client(rt, &self.sock, B::NAME)),
        }
    }
}

macro_rules! suite {
    ($backend:ident, $($mode:ident),*) => {
        $(
        #[allow(non_snake_case)]
        mod $mode {
            use super::*;
            fn h() -> Harness { $mode::<$backend>() }
            #[test] fn basic() { let h = h(); ts::basic(h.sn(), &h.work); }
            #[test] fn stat_active() { let h = h(); ts::stat_active(h.sn(), &h.work); }
            #[test] fn stat_committed() { let h = h(); ts::stat_committed(h.sn(), &h.work); }
            #[test] fn transitivity() { let h = h(); ts::transitivity(h.sn(), &h.work); }
            #[test] fn prepare_view_failing() { let h = h(); ts::prepare_view_failing(h.sn(), &h.work); }
            #[test] fn update() { let h = h(); ts::update(h.sn(), &h.work); }
            #[test] fn remove() { let h = h(); ts::remove(h.sn(), &h.work); }
            #[test] fn walk() { let h = h(); ts::walk(h.sn(), &h.work); }
            #[test] fn layer_file_update() { let h = h(); ts::layer_file_update(h.sn(), &h.work); }
            #[test] fn remove_directory_in_lower_layer() { let h = h(); ts::remove_directory_in_lower_layer(h.sn(), &h.work); }
            #[test] fn chown() { let h = h(); ts::chown(h.sn(), &h.work); }
            #[test] fn directory_permission_on_commit() { let h = h(); ts::directory_permission_on_commit(h.sn(), &h.work); }
            #[test] fn remove_intermediate_snapshot() { let h = h(); ts::remove_intermediate_snapshot(h.sn(), &h.work); }
            #[test] fn deleted_files_in_child_snapshot() { let h = h(); ts::deleted_files_in_child_snapshot(h.sn(), &h.work); }
            #[test] fn move_file_from_lower_layer() { let h = h(); ts::move_file_from_lower_layer(h.sn(), &h.work); }
            #[test] fn view_readonly() { let h = h(); ts::view_readonly(h.sn(), &h.work); }
            #[test] fn stat_in_walk() { let h = h(); ts::stat_in_walk(h.sn(), &h.work); }
            #[test] fn close_twice() {
                let mut h = h();
                // The case opens its own handles; the harness's must not hold the root.
                h.sn = None;
                ts::close_twice(&|| h.reopen::<$backend>(), &h.work);
            }
            #[test] fn root_permission() { let h = h(); ts::root_permission(h.sn(), &h.work); }
            #[test] fn rename() { let h = h(); ts::rename(h.sn(), &h.work, $backend::RENAME_DIRS); }
            #[test] fn layers_128() { let h = h(); ts::layers_128(h.sn(), &h.work); }
            #[test] fn hostile_input() { let h = h(); ts::hostile_input(h.sn(), &h.work); }
        }
        )*
    };
}

mod overlay {
    use super::*;
    suite!(Overlay, in_process, over_grpc);
}

mod btrfs {
    use super::*;
    suite!(Btrfs, in_process, over_grpc);
}

mod native {
    use super::*;
    suite!(Native, in_process, over_grpc);
}

/// containerd's remote-snapshot handshake, served for every backend: a Prepare labelled
/// with a target that is already committed (same parent) is `AlreadyExists`, and List
/// with the label and parent finds it.
#[test]
fn remote_snapshot_handshake_over_grpc() {
    use strata_snapshotter::ErrorKind;
    use strata_snapshotter::service::SNAPSHOT_REF_LABEL;
    let h = over_grpc::<Overlay>();
    let sn = h.sn();
    let with_ref = |t: &str| {
        let mut l = ts::gc_root();
        l.insert(SNAPSHOT_REF_LABEL.into(), t.into());
        l
    };
    // Nothing committed yet: the first namespace unpacks.
    sn.prepare("ns1/1/extract-a sha256:c1", None, with_ref("sha256:c1"))
        .unwrap();
    sn.commit(
        "ns1/2/sha256:c1",
        "ns1/1/extract-a sha256:c1",
        with_ref("sha256:c1"),
    )
    .unwrap();
    // The second namespace is told the target exists, and nothing is created.
    let err = sn
        .prepare("ns2/1/extract-b sha256:c1", None, with_ref("sha256:c1"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err:?}");
    assert!(sn.stat("ns2/1/extract-b sha256:c1").is_err());
    let filter = format!(r#"labels."{SNAPSHOT_REF_LABEL}"=="sha256:c1",parent=="""#);
    let mut found = Vec::new();
    sn.walk(&[filter], &mut |i| {
        found.push(i.name);
        Ok(())
    })
    .unwrap();
    assert_eq!(found, ["ns1/2/sha256:c1"]);
    // A different parent is a different layer: it is unpacked.
    sn.prepare(
        "ns2/2/extract-c sha256:c2",
        Some("ns1/2/sha256:c1"),
        with_ref("sha256:c1"),
    )
    .unwrap();
    // An active snapshot with the label is not a target.
    let err = sn.prepare("ns3/1/x", None, with_ref("sha256:c2"));
    assert!(err.is_ok(), "{err:?}");

    // Snapshots strata's puller owns are invisible to clients without a namespace (a
    // proxying containerd would garbage-collect them) and never adopted by them.
    use strata_snapshotter::service::OWNER_LABEL;
    let mut owned = with_ref("sha256:o1");
    owned.insert(OWNER_LABEL.into(), "default".into());
    let strata = client(h.rt.as_ref().unwrap(), &h.sock, "overlayfs").with_namespace("default");
    strata.prepare("o-a", None, owned.clone()).unwrap();
    strata.commit("sha256:o1", "o-a", owned).unwrap();
    let names = |c: &dyn Snapshotter| {
        let mut v = Vec::new();
        c.walk(&[], &mut |i| {
            v.push(i.name);
            Ok(())
        })
        .unwrap();
        v
    };
    assert!(!names(sn).contains(&"sha256:o1".to_string()));
    assert!(names(&strata).contains(&"sha256:o1".to_string()));
    sn.prepare("ns4/1/extract sha256:o1", None, with_ref("sha256:o1"))
        .expect("a header-less client unpacks its own copy");
    assert_eq!(
        strata
            .prepare("x2", None, with_ref("sha256:o1"))
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists
    );
}

/// containerd's `rebase` capability over gRPC: layers prepared without a parent (so they
/// can be unpacked in parallel) are chained at commit. overlayfs has it; the others answer
/// Unimplemented and change nothing.
fn rebase_case<B: Backend>(supported: bool) {
    use strata_snapshotter::ErrorKind;
    let h = over_grpc::<B>();
    let sn = h.sn();
    let client = client(h.rt.as_ref().unwrap(), &h.sock, B::NAME);
    let layer = |key: &str, file: &str| {
        let m = sn.prepare(key, None, ts::gc_root()).unwrap();
        let target = h.work.join(key);
        std::fs::create_dir_all(&target).unwrap();
        strata_snapshotter::mount::mount_all(&m, &target).unwrap();
        std::fs::write(target.join(file), file).unwrap();
        strata_snapshotter::mount::unmount_all(&target).unwrap();
    };
    layer("l1", "one");
    layer("l2", "two");
    sn.commit("c1", "l1", ts::gc_root()).unwrap();
    let r = client.commit_onto("c2", "l2", "c1", ts::gc_root());
    if !supported {
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Unimplemented);
        assert_eq!(
            sn.stat("l2").unwrap().kind,
            strata_snapshotter::Kind::Active
        );
        return;
    }
    r.unwrap();
    assert_eq!(sn.stat("c2").unwrap().parent.as_deref(), Some("c1"));
    let m = sn.view("v", Some("c2"), ts::gc_root()).unwrap();
    let target = h.work.join("v");
    std::fs::create_dir_all(&target).unwrap();
    strata_snapshotter::mount::mount_all(&m, &target).unwrap();
    let both = (
        std::fs::read_to_string(target.join("one")),
        std::fs::read_to_string(target.join("two")),
    );
    strata_snapshotter::mount::unmount_all(&target).unwrap();
    assert_eq!(
        (both.0.unwrap(), both.1.unwrap()),
        ("one".into(), "two".into())
    );
    // A snapshot prepared on one parent cannot be rebased onto another, nor onto an
    // active snapshot or a missing one.
    sn.prepare("l3", Some("c1"), ts::gc_root()).unwrap();
    for (parent, kind) in [
        ("c2", ErrorKind::FailedPrecondition),
        ("v", ErrorKind::FailedPrecondition),
        ("missing", ErrorKind::FailedPrecondition),
    ] {
        let e = client
            .commit_onto("c3", "l3", parent, ts::gc_root())
            .unwrap_err();
        assert_eq!(e.kind(), kind, "rebase onto {parent}: {e:?}");
    }
    sn.prepare("l4", None, ts::gc_root()).unwrap();
    assert_eq!(
        client
            .commit_onto("c4", "l4", "v", ts::gc_root())
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        client
            .commit_onto("c4", "l4", "missing", ts::gc_root())
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        sn.stat("l4").unwrap().kind,
        strata_snapshotter::Kind::Active
    );
    // The parent now has a child, so it cannot be removed first.
    assert_eq!(
        sn.remove("c1").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
}

#[test]
fn rebase_on_commit_overlay() {
    rebase_case::<Overlay>(true);
}

#[test]
fn rebase_on_commit_native_is_unimplemented() {
    rebase_case::<Native>(false);
}
