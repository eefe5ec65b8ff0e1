//! containerd 1.6 (Debian's, unmodified) with strata as its content store: pulls an image
//! from a real local docker-registry, runs it, and garbage-collects through strata.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Daemon, StopAll, harness, harness_lib, stderr, stdout};
use strata_content::testsuite::digest_of;

fn read_file(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_owned()
}

#[test]
fn containerd_pulls_into_strata() {
    // Short path: unix socket paths are limited to 108 bytes.
    let dir = tempfile::Builder::new()
        .prefix("sct")
        .tempdir_in("/tmp")
        .unwrap();
    let wd = dir.path().to_str().unwrap().to_owned();
    let _cleanup = StopAll(dir.path());
    let d = Daemon::start(dir.path(), &[]);
    let sock = d.sock.to_str().unwrap().to_owned();

    let registry = harness(&[], &["start_registry", &wd]);
    let image = format!("{registry}/strata/demo:1");
    // A few MiB of extra data so the layer spans many Write and Read messages.
    harness(
        &[("STRATA_IMAGE_EXTRA_KIB", "3072")],
        &[
            "build_push_test_image",
            &wd,
            &registry,
            "strata/demo:1",
            "hello from strata",
        ],
    );
    let manifest = read_file(&dir.path().join("manifest.digest"));
    let config = read_file(&dir.path().join("config.digest"));
    let layer = read_file(&dir.path().join("layer.digest"));

    harness(&[], &["start_containerd", &wd, &sock]);
    let pulled = harness(&[], &["ctr_pull", &wd, &image]);
    assert_eq!(pulled, manifest);

    // Every blob of the image is in strata's global space, byte-exact.
    let listed = stdout(&d.cli(&["-n", "", "content", "ls", "-q"]));
    for dg in [&manifest, &config, &layer] {
        assert!(
            listed.contains(dg.as_str()),
            "{dg} missing from strata: {listed}"
        );
        let out = d.cli(&["-n", "", "content", "get", dg]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(&digest_of(&out.stdout).to_string(), dg, "bytes of {dg}");
    }
    // Nothing leaked into strata's own namespaces, and no ingest is left.
    assert!(stdout(&d.cli(&["content", "ls", "-q"])).trim().is_empty());
    assert_eq!(
        stdout(&d.cli(&["-n", "", "content", "active"]))
            .lines()
            .count(),
        1
    );

    // The container's rootfs was unpacked from blobs read back out of strata.
    let run = harness(&[], &["ctr_run", &wd, &image, "strata-e2e"]);
    assert!(run.contains("hello from strata"), "container output: {run}");

    // strata's own GC never collects what containerd stored.
    assert!(d.cli(&["gc"]).status.success());
    let listed = stdout(&d.cli(&["-n", "", "content", "ls", "-q"]));
    assert!(
        listed.contains(layer.as_str()),
        "strata GC removed containerd's blob"
    );

    // containerd's GC deletes through strata's API.
    harness(&[], &["ctr_cmd", &wd, "images", "rm", "--sync", &image]);
    let listed = stdout(&d.cli(&["-n", "", "content", "ls", "-q"]));
    for dg in [&manifest, &config, &layer] {
        assert!(
            !listed.contains(dg.as_str()),
            "{dg} should be gone after containerd's GC: {listed}"
        );
    }
}

/// Rows of `ctr snapshots ls` / `strata snapshots ls` (KEY, PARENT, KIND), header skipped.
fn snapshot_rows(out: &str) -> Vec<(String, String, String)> {
    out.lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            match cols.as_slice() {
                [k, kind] => (k.to_string(), String::new(), kind.to_string()),
                [k, p, kind] => (k.to_string(), p.to_string(), kind.to_string()),
                _ => panic!("unexpected snapshot row {l:?}"),
            }
        })
        .collect()
}

#[test]
fn containerd_uses_strata_as_its_snapshotter() {
    let dir = tempfile::Builder::new()
        .prefix("scs")
        .tempdir_in("/tmp")
        .unwrap();
    let wd = dir.path().to_str().unwrap().to_owned();
    let _cleanup = StopAll(dir.path());
    let mut d = Daemon::start(dir.path(), &[]);
    let sock = d.sock.to_str().unwrap().to_owned();
    let registry = harness(&[], &["start_registry", &wd]);
    let image = format!("{registry}/strata/snap:1");
    harness(
        &[],
        &[
            "build_push_test_image",
            &wd,
            &registry,
            "strata/snap:1",
            "hello from a strata snapshot",
        ],
    );
    harness(&[], &["start_containerd", &wd, &sock]);
    let snap = [("STRATA_SNAPSHOTTER", "strata")];
    harness(&snap, &["ctr_pull", &wd, &image]);
    let ctr_snap = |args: &[&str]| {
        let mut a = vec![
            "ctr_cmd",
            wd.as_str(),
            "snapshots",
            "--snapshotter",
            "strata",
        ];
        a.extend_from_slice(args);
        harness(&[], &a)
    };

    // containerd sees the unpacked layer as one committed snapshot named by its chainID;
    // strata holds it under containerd's namespaced key.
    let rows = snapshot_rows(&ctr_snap(&["ls"]));
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (chain, parent, kind) = &rows[0];
    assert!(chain.starts_with("sha256:") && parent.is_empty() && kind == "Committed");
    let ours = snapshot_rows(&stdout(&d.cli(&["snapshots", "ls"])));
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert!(ours[0].0.ends_with(&format!("/{chain}")), "{ours:?}");
    assert_eq!(ours[0].2, "Committed");
    let info = ctr_snap(&["info", chain]);
    assert!(
        info.contains("\"Kind\": \"committed\"") || info.contains("\"Kind\": \"Committed\""),
        "{info}"
    );
    let usage = ctr_snap(&["usage", chain]);
    let inodes: i64 = usage
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(inodes > 5, "busybox layer should have inodes: {usage}");
    assert!(ctr_snap(&["tree"]).contains(chain.as_str()));

    // A container runs on a strata snapshot.
    let run = harness(&snap, &["ctr_run", &wd, &image, "snap-run"]);
    assert!(run.contains("hello from a strata snapshot"), "{run}");

    // A long-running container keeps its rootfs across a strata restart, and strata still
    // knows its active snapshot afterwards.
    harness(
        &[],
        &[
            "ctr_cmd",
            &wd,
            "run",
            "-d",
            "--runc-root",
            &format!("{wd}/runc"),
            "--fifo-dir",
            &format!("{wd}/fifo"),
            "--snapshotter",
            "strata",
            &image,
            "bg",
            "sleep",
            "300",
        ],
    );
    let before = snapshot_rows(&ctr_snap(&["ls"]));
    assert!(
        before
            .iter()
            .any(|(k, p, kind)| k == "bg" && p == chain && kind == "Active"),
        "{before:?}"
    );
    assert!(d.sigterm().success());
    d.restart(&[]);
    // containerd redials a proxy with backoff (capped at 3 s), so it may take a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let after = loop {
        let lib = harness_lib();
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {lib}; ctr_cmd {wd} snapshots --snapshotter strata ls"
            ))
            .output()
            .unwrap();
        if out.status.success() {
            break stdout(&out);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "containerd did not reconnect: {}",
            stderr(&out)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(snapshot_rows(&after), before);
    let tasks = harness(&[], &["ctr_cmd", &wd, "tasks", "ls"]);
    assert!(tasks.contains("RUNNING"), "{tasks}");
    let cat = harness(
        &[],
        &[
            "ctr_cmd",
            &wd,
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            "bg",
            "cat",
            "/hello.txt",
        ],
    );
    assert_eq!(cat, "hello from a strata snapshot");

    // Removing the container and the image lets containerd's GC remove every snapshot
    // through strata, and strata's Cleanup leaves no directory behind.
    harness(
        &[],
        &["ctr_cmd", &wd, "tasks", "kill", "-s", "SIGKILL", "bg"],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !harness(&[], &["ctr_cmd", &wd, "tasks", "ls"]).contains("STOPPED") {
        assert!(std::time::Instant::now() < deadline, "task did not stop");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    harness(&[], &["ctr_cmd", &wd, "tasks", "rm", "bg"]);
    harness(&[], &["ctr_cmd", &wd, "containers", "rm", "bg"]);
    harness(&[], &["ctr_cmd", &wd, "images", "rm", "--sync", &image]);
    assert!(snapshot_rows(&ctr_snap(&["ls"])).is_empty());
    assert!(snapshot_rows(&stdout(&d.cli(&["snapshots", "ls"]))).is_empty());
    let dirs = std::fs::read_dir(d.root.join("snapshots/overlayfs/snapshots"))
        .unwrap()
        .count();
    assert_eq!(dirs, 0, "snapshot directories left behind");
}

/// The remote-snapshot handshake through a real containerd: a layer committed in one
/// containerd namespace is adopted by another (containerd's Prepare gets AlreadyExists
/// from strata, Lists by label and parent, and records strata's snapshot) instead of
/// being unpacked twice.
#[test]
fn containerd_adopts_a_layer_committed_in_another_namespace() {
    use strata_snapshotter::service::SNAPSHOT_REF_LABEL;
    use strata_snapshotter::{ErrorKind, GrpcSnapshotter, Kind, Snapshotter};

    let dir = tempfile::Builder::new()
        .prefix("scr")
        .tempdir_in("/tmp")
        .unwrap();
    let wd = dir.path().to_str().unwrap().to_owned();
    let _cleanup = StopAll(dir.path());
    let d = Daemon::start(dir.path(), &[]);
    let csock = harness(&[], &["start_containerd", &wd, d.sock.to_str().unwrap()]);
    let rt = common::runtime();
    let channel = rt
        .block_on(strata_proto::transport::connect_unix(Path::new(&csock)))
        .unwrap();
    let ns = |n: &str| {
        GrpcSnapshotter::new(channel.clone(), rt.handle().clone(), "strata").with_namespace(n)
    };
    let (a, b) = (ns("a"), ns("b"));
    let mut labels = strata_snapshotter::Labels::new();
    labels.insert(SNAPSHOT_REF_LABEL.into(), "sha256:layer1".into());
    labels.insert(
        "containerd.io/gc.root".into(),
        "2026-01-01T00:00:00Z".into(),
    );
    let (a2, b2, l2) = (a.clone(), b.clone(), labels.clone());
    std::thread::spawn(move || {
        a2.prepare("extract-1 sha256:layer1", None, l2.clone())
            .unwrap();
        a2.commit("sha256:layer1", "extract-1 sha256:layer1", l2.clone())
            .unwrap();
        let err = b2
            .prepare("extract-2 sha256:layer1", None, l2)
            .expect_err("the layer is already there");
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err:?}");
        let st = b2
            .stat("sha256:layer1")
            .expect("namespace b adopted the layer");
        assert_eq!(st.kind, Kind::Committed);
        assert!(b2.stat("extract-2 sha256:layer1").is_err());
    })
    .join()
    .unwrap();
    // strata holds one committed snapshot, under namespace a's key.
    let ours = snapshot_rows(&stdout(&d.cli(&["snapshots", "ls"])));
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert!(
        ours[0].0.starts_with("a/") && ours[0].2 == "Committed",
        "{ours:?}"
    );
}
