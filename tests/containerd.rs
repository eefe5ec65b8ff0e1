//! containerd 1.6 (Debian's, unmodified) with strata as its content store: pulls an image
//! from a real local docker-registry, runs it, and garbage-collects through strata.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Daemon, stderr, stdout};
use strata_content::testsuite::digest_of;

/// The harness library of the checkout being tested: looked up at run time (cargo sets
/// `CARGO_MANIFEST_DIR` for test processes), since a test binary reused from a shared
/// target dir may have been compiled in another checkout.
fn harness_lib() -> String {
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    format!("{dir}/tests/harness/lib.sh")
}

/// Runs a harness function (tests/harness/lib.sh) and returns its trimmed stdout.
fn harness(env: &[(&str, &str)], args: &[&str]) -> String {
    let lib = harness_lib();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("source {lib}; \"$@\""))
        .arg("_")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run bash");
    assert!(
        out.status.success(),
        "harness {args:?} failed: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    stdout(&out).trim().to_owned()
}

struct Cleanup<'a>(&'a Path);
impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let wd = self.0.to_str().unwrap();
        let lib = harness_lib();
        let _ = Command::new("bash")
            .arg("-c")
            .arg(format!("source {lib}; stop_all {wd}"))
            .output();
    }
}

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
    let _cleanup = Cleanup(dir.path());
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
