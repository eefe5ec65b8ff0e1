//! `strata pull` end to end: a real docker-registry, the real daemon, real snapshotters.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Daemon, StopAll, harness, stderr, stdout};

#[test]
fn pull_unpacks_records_and_collects() {
    let dir = tempfile::Builder::new()
        .prefix("spl")
        .tempdir_in("/tmp")
        .unwrap();
    let wd = dir.path().to_str().unwrap().to_owned();
    let _stop = StopAll(dir.path());
    let d = Daemon::start(dir.path(), &[]);
    let registry = harness(
        &[("STRATA_IMAGE_EXTRA_KIB", "2048")],
        &["start_registry", &wd],
    );
    harness(
        &[("STRATA_IMAGE_EXTRA_KIB", "2048")],
        &[
            "build_push_test_image",
            &wd,
            &registry,
            "strata/pull:1",
            "hello from strata pull",
        ],
    );
    let image = format!("{registry}/strata/pull:1");
    let manifest = std::fs::read_to_string(dir.path().join("manifest.digest")).unwrap();
    let layer = std::fs::read_to_string(dir.path().join("layer.digest")).unwrap();

    // Two pulls of the same image at once: both succeed, the blobs are stored once.
    let out = d.cli(&["pull", "--plain-http", &image, &image]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("pulled {}", manifest.trim())),
        "{text}"
    );
    let chain = text
        .lines()
        .find_map(|l| l.split("unpacked as ").nth(1))
        .expect("an unpacked chainID")
        .trim()
        .to_owned();

    // The image record, the blobs and the committed snapshot.
    let images = stdout(&d.cli(&["images", "ls", "-q"]));
    assert_eq!(images.trim(), image);
    let blobs = stdout(&d.cli(&["content", "ls", "-q"]));
    assert!(
        blobs.contains(manifest.trim()) && blobs.contains(layer.trim()),
        "{blobs}"
    );
    let snaps = stdout(&d.cli(&["snapshots", "ls"]));
    assert!(
        snaps.contains(&chain) && snaps.contains("Committed"),
        "{snaps}"
    );
    // Hidden from a client without a namespace (a proxying containerd's GC).
    assert!(!stdout(&d.cli(&["-n", "", "snapshots", "ls"])).contains(&chain));
    // The snapshot holds the image's files.
    let view = d.cli(&["snapshots", "view", "--target", "/x", "v1", &chain]);
    let mount = stdout(&view);
    let src = mount.split_whitespace().nth(3).unwrap().to_owned();
    let hello = std::fs::read_to_string(Path::new(&src).join("hello.txt")).unwrap();
    assert_eq!(hello.trim(), "hello from strata pull");
    assert!(Path::new(&src).join("bin/busybox").exists());
    assert!(d.cli(&["snapshots", "rm", "v1"]).status.success());

    // Pulling again fetches and unpacks nothing.
    let again = stdout(&d.cli(&["pull", "--plain-http", &image]));
    assert!(
        again.contains(" exists ") || again.contains(" skipped "),
        "{again}"
    );
    assert!(!again.contains("downloading"), "{again}");

    // On a terminal, progress is drawn as bars (run under a pty with script(1)).
    let tty = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} --address {} pull --plain-http {image}",
            common::BIN,
            d.sock.display()
        ))
        .arg("/dev/null")
        .output()
        .unwrap();
    assert!(tty.status.success(), "{}", stderr(&tty));
    let drawn = stdout(&tty);
    assert!(
        drawn.contains("] ") && drawn.contains("/strata/pull:1"),
        "{drawn}"
    );
    assert!(
        !drawn.contains(": layer "),
        "plain lines on a terminal: {drawn}"
    );

    // Another backend, and fetch-only.
    let native = d.cli(&["pull", "--plain-http", "--snapshotter", "native", &image]);
    assert!(native.status.success(), "{}", stderr(&native));
    let ns = stdout(&d.cli(&["snapshots", "--snapshotter", "native", "ls"]));
    assert!(ns.contains(&chain), "{ns}");
    let labels = stdout(&d.cli(&["images", "inspect", &image]));
    assert!(
        labels.contains("strata.io/snapshot.overlayfs")
            && labels.contains("strata.io/snapshot.native"),
        "{labels}"
    );
    // Referenced snapshots survive a GC.
    assert!(d.cli(&["gc"]).status.success());
    assert!(stdout(&d.cli(&["snapshots", "ls"])).contains(&chain));
    let no = stdout(&d.cli(&["-n", "other", "pull", "--plain-http", "--no-unpack", &image]));
    assert!(!no.contains("unpacked as"), "{no}");

    // Clear errors, and nothing recorded, for bad references and missing images.
    for (bad, want) in [
        ("docker.io/UPPER/x:1", "invalid image reference"),
        ("a/../b", "invalid image reference"),
        (&format!("{registry}/strata/missing:1") as &str, "not found"),
        (
            &format!("{registry}/strata/pull@sha256:{}", "0".repeat(64)),
            "not found",
        ),
    ] {
        let out = d.cli(&["pull", "--plain-http", bad]);
        assert!(!out.status.success(), "{bad}");
        assert!(
            stderr(&out).to_lowercase().contains(want),
            "{bad}: {}",
            stderr(&out)
        );
    }
    assert_eq!(stdout(&d.cli(&["images", "ls", "-q"])).trim(), image);

    // An extraction snapshot an earlier daemon left behind is collected; one without
    // strata's label (another client's), or the live daemon's own, is not.
    for key in [
        "strata/extract/1-0-0/sha256:x",
        "strata/extract/2-0-0/sha256:y",
    ] {
        let mut args = vec!["snapshots", "prepare", key];
        if key.contains(":x") {
            args.extend(["--label", "strata.io/owner=default"]);
        }
        assert!(d.cli(&args).status.success());
    }
    let live = format!(
        "strata/extract/{}-0-0/sha256:z",
        d.child.as_ref().unwrap().id()
    );
    assert!(
        d.cli(&[
            "snapshots",
            "prepare",
            "--label",
            "strata.io/owner=default",
            &live
        ])
        .status
        .success()
    );
    assert!(d.cli(&["gc"]).status.success());
    let left = stdout(&d.cli(&["snapshots", "ls"]));
    assert!(!left.contains("sha256:x"), "{left}");
    assert!(left.contains("sha256:y") && left.contains(&live), "{left}");
    assert!(
        d.cli(&["snapshots", "rm", "strata/extract/2-0-0/sha256:y", &live])
            .status
            .success()
    );

    // Removing the image lets the GC collect its blobs.
    assert!(d.cli(&["images", "rm", &image]).status.success());
    assert!(d.cli(&["gc"]).status.success());
    let blobs = stdout(&d.cli(&["content", "ls", "-q"]));
    assert!(!blobs.contains(layer.trim()), "{blobs}");
    let inspect = d.cli(&["images", "inspect", &image]);
    assert!(!inspect.status.success());
    // ...and the snapshots it unpacked, in every backend; containerd's are not touched.
    for sn in ["overlayfs", "native"] {
        let left = stdout(&d.cli(&["snapshots", "--snapshotter", sn, "ls"]));
        assert!(!left.contains(&chain), "{sn}: {left}");
    }
}
