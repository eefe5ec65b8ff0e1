//! The real `strata` binary: serve lifecycle, the CLI, and crash safety under kill -9.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Daemon, runtime, stderr, stdout};
use strata_content::testsuite::{content, digest_of};
use strata_content::{ErrorKind, IngestManager, Ingester, Labels, Provider, Scope, WriterOptions};

#[test]
fn serve_lifecycle_and_exclusive_root() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &[]);
    let sock_dir = d.sock.parent().unwrap();
    assert_eq!(
        std::fs::metadata(sock_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(&d.root).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // A second daemon on the same root fails fast and leaves the first one serving.
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--root"])
        .arg(&d.root)
        .arg("--address")
        .arg(dir.path().join("other.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("in use by another strata daemon"),
        "{}",
        stderr(&out)
    );
    // And one on the same socket too.
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--root"])
        .arg(dir.path().join("root2"))
        .arg("--address")
        .arg(&d.sock)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already serving"), "{}", stderr(&out));
    assert!(d.cli(&["version"]).status.success());

    let st = d.sigterm();
    assert!(st.success(), "clean exit on SIGTERM: {st}");
    assert!(!d.sock.exists(), "socket removed on shutdown");
    // A stale socket file does not stop the next start.
    std::os::unix::net::UnixListener::bind(&d.sock).unwrap();
    d.restart(&[]);
    assert!(d.cli(&["version"]).status.success());
}

#[test]
fn cli_content_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let data = content(3 << 20, 1);
    let digest = digest_of(&data);
    let out = d.cli_stdin(
        &[
            "content",
            "ingest",
            "--ref",
            "cli-1",
            "--expected",
            &digest.to_string(),
            "--label",
            "a=b",
        ],
        &data,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), digest.to_string());

    let ls = stdout(&d.cli(&["content", "ls"]));
    assert!(
        ls.contains(&digest.to_string()) && ls.contains("a=b"),
        "{ls}"
    );
    assert!(
        ls.contains("containerd.io/gc.root="),
        "CLI ingests are GC roots: {ls}"
    );
    let got = d.cli(&["content", "get", &digest.to_string()]);
    assert!(got.status.success());
    assert!(got.stdout == data, "get returns the bytes");

    // Other namespaces do not see it; the global space (what containerd uses) does.
    assert!(
        stdout(&d.cli(&["-n", "other", "content", "ls", "-q"]))
            .trim()
            .is_empty()
    );
    assert!(stdout(&d.cli(&["-n", "", "content", "ls", "-q"])).contains(&digest.to_string()));

    let out = d.cli(&["content", "label", &digest.to_string(), "a=", "c=d"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ls = stdout(&d.cli(&["content", "ls", "labels.c==d"]));
    assert!(
        ls.contains(&digest.to_string()) && !ls.contains("a=b"),
        "{ls}"
    );

    // Wrong expected digest: a clear error with its cause, nothing committed.
    let wrong = digest_of(b"other");
    let out = d.cli_stdin(
        &[
            "content",
            "ingest",
            "--ref",
            "cli-2",
            "--expected",
            &wrong.to_string(),
        ],
        b"some bytes",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("unexpected commit digest") && err.contains("FailedPrecondition"),
        "{err}"
    );
    assert!(
        !stdout(&d.cli(&["content", "ls", "-q"])).contains(&digest_of(b"some bytes").to_string())
    );
    assert!(stdout(&d.cli(&["content", "active"])).contains("cli-2"));
    assert!(d.cli(&["content", "abort", "cli-2"]).status.success());

    // Hostile arguments.
    for args in [
        vec!["content", "get", "sha256:../../etc/passwd"],
        vec!["content", "rm", "md5:abc"],
        vec!["content", "ls", "labels.\"open"],
        vec!["-n", "bad/ns", "content", "ls"],
    ] {
        let out = d.cli(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            stderr(&out).starts_with("error: "),
            "{args:?}: {}",
            stderr(&out)
        );
    }

    // Leases.
    let out = d.cli(&[
        "leases",
        "create",
        "--id",
        "l1",
        "--label",
        "x=y",
        "--expires-in",
        "3600",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ls = stdout(&d.cli(&["leases", "ls"]));
    assert!(
        ls.contains("l1") && ls.contains("containerd.io/gc.expire="),
        "{ls}"
    );
    assert!(d.cli(&["leases", "rm", "l1"]).status.success());
    assert!(!d.cli(&["leases", "rm", "l1"]).status.success());

    assert!(
        d.cli(&["content", "rm", &digest.to_string()])
            .status
            .success()
    );
    assert!(
        !d.cli(&["content", "get", &digest.to_string()])
            .status
            .success()
    );
    assert!(d.cli(&["gc"]).status.success());
}

#[test]
fn kill9_during_ingest_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &[]);
    let rt = runtime();
    let ns = Scope::ns("default");
    let data = content(150 << 20, 2);
    let digest = digest_of(&data);
    // An acknowledged blob that must survive everything below.
    let keep = content(1 << 20, 3);
    let keep_d = {
        let c = d.client(&rt);
        strata_content::testsuite::write_blob(&c, &ns, "keep", &keep, Labels::new()).unwrap()
    };
    let opts = WriterOptions {
        r#ref: "big".into(),
        total: data.len() as u64,
        expected: Some(digest.clone()),
    };
    {
        let c = d.client(&rt);
        let mut w = c.writer(&ns, opts.clone()).unwrap();
        w.write(&data[..100 << 20]).unwrap();
        d.kill9();
        // The stream is dead: further writes fail instead of hanging.
        assert!(w.write(&data[100 << 20..101 << 20]).is_err());
    }
    d.restart(&[]);
    let c = d.client(&rt);
    let mut w = c.writer(&ns, opts).unwrap();
    let off = w.status().unwrap().offset as usize;
    assert!(
        off > 0 && off <= 100 << 20,
        "resumes from a durable checkpoint, got {off}"
    );
    assert_eq!(
        w.digest(),
        digest_of(&data[..off]),
        "resumed prefix verifies"
    );
    w.write(&data[off..]).unwrap();
    assert_eq!(
        w.commit(data.len() as u64, Some(&digest), Labels::new())
            .unwrap(),
        digest
    );
    w.close().unwrap();
    assert_eq!(c.info(&ns, &digest).unwrap().size, data.len() as u64);
    assert_eq!(
        strata_content::api::read_all(&c, &ns, &keep_d).unwrap(),
        keep
    );
}

#[test]
fn kill9_during_commit_leaves_old_or_new_state() {
    for point in [
        "commit-before-rename",
        "commit-after-rename",
        "commit-after-record",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::start(dir.path(), &[]);
        let rt = runtime();
        let ns = Scope::ns("default");
        let keep = content(4096, 10);
        let keep_d = strata_content::testsuite::write_blob(
            &d.client(&rt),
            &ns,
            "keep",
            &keep,
            Labels::new(),
        )
        .unwrap();
        d.kill9();
        d.restart(&[("STRATA_FAILPOINT", point)]);

        let data = content(5 << 20, 11);
        let digest = digest_of(&data);
        let c = d.client(&rt);
        let opts = WriterOptions {
            r#ref: "layer".into(),
            total: data.len() as u64,
            expected: Some(digest.clone()),
        };
        let mut w = c.writer(&ns, opts.clone()).unwrap();
        w.write(&data).unwrap();
        let res = w.commit(data.len() as u64, Some(&digest), Labels::new());
        assert!(
            res.is_err(),
            "{point}: the daemon died before acknowledging"
        );
        drop(w);
        let st = d.wait_exit(Duration::from_secs(10));
        assert!(!st.success(), "{point}: killed");

        d.restart(&[]);
        let c = d.client(&rt);
        match c.info(&ns, &digest) {
            Ok(info) => {
                // New state: the blob is whole and the ingest is gone.
                assert_eq!(info.size, data.len() as u64, "{point}");
                assert_eq!(
                    strata_content::api::read_all(&c, &ns, &digest).unwrap(),
                    data,
                    "{point}"
                );
                assert_eq!(
                    c.status(&ns, "layer").unwrap_err().kind(),
                    ErrorKind::NotFound,
                    "{point}"
                );
                assert_ne!(point, "commit-before-rename");
            }
            Err(e) => {
                // Old state: the ingest is whole and commits on retry.
                assert_eq!(e.kind(), ErrorKind::NotFound, "{point}");
                assert_eq!(point, "commit-before-rename");
                let mut w = c.writer(&ns, opts).unwrap();
                assert_eq!(
                    w.status().unwrap().offset,
                    data.len() as u64,
                    "{point}: ingest kept"
                );
                assert_eq!(
                    w.commit(data.len() as u64, Some(&digest), Labels::new())
                        .unwrap(),
                    digest
                );
                w.close().unwrap();
            }
        }
        assert_eq!(
            strata_content::api::read_all(&c, &ns, &keep_d).unwrap(),
            keep,
            "{point}"
        );
        assert!(d.logs().contains("failpoint reached"), "{point}");
    }
}

#[test]
fn snapshots_over_the_daemon_socket() {
    use strata_proto::containerd::services::snapshots::v1 as pb;
    use strata_proto::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
    use tonic::Code;

    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let rt = runtime();
    rt.block_on(async {
        let ch = strata_proto::transport::connect_unix(&d.sock)
            .await
            .unwrap();
        let mut c = SnapshotsClient::new(ch);
        let prep = |sn: &str, key: &str, parent: &str| pb::PrepareSnapshotRequest {
            snapshotter: sn.into(),
            key: key.into(),
            parent: parent.into(),
            labels: Default::default(),
        };
        let m = c
            .prepare(prep("overlayfs", "k1", ""))
            .await
            .unwrap()
            .into_inner()
            .mounts;
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].r#type, "bind");
        assert!(m[0].source.starts_with(d.root.to_str().unwrap()));
        c.commit(pb::CommitSnapshotRequest {
            snapshotter: "overlayfs".into(),
            name: "base".into(),
            key: "k1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        // Any other snapshotter name routes to the default backend.
        let m = c
            .prepare(prep("strata", "k2", "base"))
            .await
            .unwrap()
            .into_inner()
            .mounts;
        assert_eq!(m[0].r#type, "overlay");
        let st = c
            .stat(pb::StatSnapshotRequest {
                snapshotter: String::new(),
                key: "k2".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap();
        assert_eq!(
            (st.kind, st.parent.as_str()),
            (pb::Kind::Active as i32, "base")
        );

        let lc = c.clone();
        let list = |filters: Vec<String>| {
            let mut c = lc.clone();
            async move {
                let mut s = c
                    .list(pb::ListSnapshotsRequest {
                        snapshotter: "overlayfs".into(),
                        filters,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let mut names = Vec::new();
                while let Some(m) = s.message().await.unwrap() {
                    names.extend(m.info.into_iter().map(|i| i.name));
                }
                names.sort();
                names
            }
        };
        assert_eq!(list(vec!["parent==base".into()]).await, vec!["k2"]);
        assert_eq!(list(vec!["kind==committed".into()]).await, vec!["base"]);
        assert_eq!(list(vec![]).await, vec!["base", "k2"]);

        // Hostile and invalid requests: clear codes, nothing changed.
        let code = |r: Result<tonic::Response<pb::PrepareSnapshotResponse>, tonic::Status>| {
            r.unwrap_err().code()
        };
        assert_eq!(
            code(c.prepare(prep("", "k3", "missing")).await),
            Code::NotFound
        );
        assert_eq!(
            code(c.prepare(prep("", "k3", "k2")).await),
            Code::InvalidArgument
        );
        assert_eq!(
            code(c.prepare(prep("", "k2", "")).await),
            Code::AlreadyExists
        );
        assert_eq!(
            code(c.prepare(prep("", "", "")).await),
            Code::InvalidArgument
        );
        let upd = pb::UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(pb::Info {
                name: "base".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["parent".into()],
            }),
        };
        assert_eq!(
            c.update(upd).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        let bad_filter = c
            .list(pb::ListSnapshotsRequest {
                snapshotter: String::new(),
                filters: vec!["kind==".into()],
            })
            .await;
        assert_eq!(
            bad_filter.err().map(|s| s.code()),
            Some(Code::InvalidArgument)
        );
        let rm = |key: &str| pb::RemoveSnapshotRequest {
            snapshotter: String::new(),
            key: key.into(),
        };
        assert_eq!(
            c.remove(rm("base")).await.unwrap_err().code(),
            Code::FailedPrecondition
        );
        assert_eq!(list(vec![]).await, vec!["base", "k2"]);

        let u = c
            .usage(pb::UsageRequest {
                snapshotter: String::new(),
                key: "base".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(u.inodes >= 0 && u.size >= 0);
        c.remove(rm("k2")).await.unwrap();
        c.remove(rm("base")).await.unwrap();
        assert!(list(vec![]).await.is_empty());

        // Cleanup removes directories no snapshot refers to, and only those.
        let snaps = d.root.join("snapshots/overlayfs/snapshots");
        std::fs::create_dir_all(snaps.join("4242/fs")).unwrap();
        c.prepare(prep("", "live", "")).await.unwrap();
        c.cleanup(pb::CleanupRequest {
            snapshotter: "overlayfs".into(),
        })
        .await
        .unwrap();
        let left: Vec<_> = std::fs::read_dir(&snaps)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left.len(),
            1,
            "only the live snapshot's directory is left: {left:?}"
        );
        assert_ne!(left[0], std::ffi::OsString::from("4242"));
    });
}

#[test]
fn snapshots_cli_drives_every_backend_like_ctr() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("strata.toml");
    std::fs::write(&cfg, "[snapshots]\ndefault = \"native\"\n").unwrap();
    let d = Daemon::start(dir.path(), &[("STRATA_CONFIG", cfg.to_str().unwrap())]);
    let version = stdout(&d.cli(&["version"]));
    assert!(
        version.contains("snapshotter native (default)"),
        "{version}"
    );
    assert!(version.contains("snapshotter overlayfs"), "{version}");
    // The backend registry reports each backend's capabilities and whiteout format.
    assert!(
        version.contains(
            "snapshotter: overlayfs capabilities=rebase,cleanup,remote whiteouts=overlay"
        ),
        "{version}"
    );
    assert!(
        version.contains("snapshotter: native capabilities=cleanup,remote whiteouts=delete"),
        "{version}"
    );
    assert!(
        version.contains("snapshotter: lazy capabilities=rebase,cleanup,remote whiteouts=overlay"),
        "{version}"
    );

    let ok = |args: &[&str]| {
        let out = d.cli(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    for sn in ["native", "overlayfs"] {
        let s = |args: &[&str]| {
            let mut a = vec!["snapshots", "--snapshotter", sn];
            a.extend_from_slice(args);
            ok(&a)
        };
        let mounts = s(&["prepare", "--target", "/mnt/x", "--label", "a=1", "k1"]);
        assert!(mounts.starts_with("mount -t bind "), "{sn}: {mounts}");
        assert!(mounts.contains(" /mnt/x -o "), "{sn}: {mounts}");
        // Write a file through the mount source so usage has something to count.
        let src = mounts.split_whitespace().nth(3).unwrap();
        std::fs::write(std::path::Path::new(src).join("f"), vec![7u8; 64 << 10]).unwrap();
        s(&["commit", "--label", "b=2", "base", "k1"]);
        s(&["prepare", "k2", "base"]);
        s(&["view", "v1", "base"]);
        let ls = s(&["ls"]);
        let rows: Vec<Vec<&str>> = ls.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0], ["KEY", "PARENT", "KIND"]);
        assert!(rows.contains(&vec!["base", "Committed"]), "{sn}: {ls}");
        assert!(rows.contains(&vec!["k2", "base", "Active"]), "{sn}: {ls}");
        assert!(rows.contains(&vec!["v1", "base", "View"]), "{sn}: {ls}");
        assert_eq!(
            s(&["ls", "--filter", "kind==view"]).lines().count(),
            2,
            "{sn}: filter"
        );
        let tree = s(&["tree"]);
        assert!(tree.starts_with("base\n"), "{sn}: {tree}");
        assert!(
            tree.contains("  \\_ k2\n") && tree.contains("  \\_ v1\n"),
            "{sn}: {tree}"
        );
        let info: serde_json::Value = serde_json::from_str(&s(&["info", "base"])).unwrap();
        assert_eq!(info["Kind"], "Committed");
        assert_eq!(info["Labels"]["b"], "2");
        let usage = s(&["usage", "-b", "base"]);
        let cols: Vec<&str> = usage.lines().nth(1).unwrap().split_whitespace().collect();
        assert!(cols[1].parse::<i64>().unwrap() >= 64 << 10, "{sn}: {usage}");
        assert!(cols[2].parse::<i64>().unwrap() >= 1, "{sn}: {usage}");
        assert_eq!(s(&["label", "base", "c=3", "b="]).trim(), "c=3");
        let m = s(&["mounts", "/t", "v1"]);
        let opts = m.trim().rsplit_once(" -o ").map(|(_, o)| o).unwrap_or("");
        assert!(
            m.contains(" /t -o ") && opts.split(',').any(|o| o == "ro"),
            "{sn}: {m}"
        );

        // Refusals: a clear error, a non-zero exit, and nothing changed.
        let before = s(&["ls"]);
        for bad in [
            vec!["rm", "base"],
            vec!["prepare", "k3", "missing"],
            vec!["prepare", "k3", "k2"],
            vec!["commit", "base", "k2"],
            vec!["ls", "--filter", "labels.\"x"],
            vec!["label", "base", "=v"],
        ] {
            let mut a = vec!["snapshots", "--snapshotter", sn];
            a.extend_from_slice(&bad);
            let out = d.cli(&a);
            assert!(!out.status.success(), "{sn} {bad:?} should fail");
            assert!(
                stderr(&out).starts_with("error: "),
                "{sn} {bad:?}: {}",
                stderr(&out)
            );
        }
        assert_eq!(s(&["ls"]), before, "{sn}: a refused command changed state");
        s(&["rm", "k2", "v1", "base"]);
        assert_eq!(s(&["ls"]).lines().count(), 1, "{sn}: all removed");
        s(&["cleanup"]);
    }
}
