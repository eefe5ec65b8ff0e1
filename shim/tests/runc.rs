//! `spec::generate` against the real runc: a busybox rootfs, a generated `config.json`,
//! `runc run`, and what the container saw.
//!
//! Needs root, `runc` on PATH and a static `/bin/busybox` (Debian's `busybox-static`);
//! without them each test prints why and passes. CI installs both.

use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{BUSYBOX, unavailable};
use strata_proto::ident::Namespace;
use strata_shim::{ContainerConfig, ContainerId, RunOptions, generate};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A tiny rootfs: busybox with its applets, and users and groups to resolve.
fn build_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "proc", "dev", "sys", "run", "tmp", "work"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "id", "env", "pwd", "cat", "hostname"] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345:App:/work:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\nappgrp:x:2345:\nextra:x:3456:app\nmore:x:4567:other,app\nnot:x:5678:other\n",
    )
    .unwrap();
    root
}

struct Outcome {
    code: i32,
    stdout: String,
}

/// Deletes the container (and its cgroup) even if the test fails.
struct Cleanup<'a> {
    state: &'a Path,
    id: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(self.state)
            .args(["delete", "-f", &self.id])
            .stderr(Stdio::null())
            .status();
    }
}

/// Generates the spec for `image` + `adjust(opts)` and runs it with `runc run`.
fn run(image: &ContainerConfig, adjust: impl FnOnce(&mut RunOptions)) -> Option<Outcome> {
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return None;
    }
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let id = format!(
        "strata-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let dir = tempfile::tempdir().unwrap();
    let rootfs = build_rootfs(dir.path());
    let namespace = Namespace::new("strata-test").unwrap();
    let mut opts = RunOptions::new(ContainerId::new(&id).unwrap(), namespace);
    adjust(&mut opts);
    let spec = generate(image, &rootfs, &opts).unwrap();
    fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();

    let state = dir.path().join("runc-state");
    let _cleanup = Cleanup {
        state: &state,
        id: id.clone(),
    };
    let mut child = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .arg("run")
        .arg("--bundle")
        .arg(dir.path())
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("runc run {id} did not finish in {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().unwrap().unwrap();
    let code = status.code().expect("runc was killed by a signal");
    Some(Outcome { code, stdout })
}

fn cmd(args: &[&str]) -> ContainerConfig {
    ContainerConfig {
        cmd: args.iter().map(|s| s.to_string()).collect(),
        ..ContainerConfig::default()
    }
}

#[test]
fn echo_reaches_stdout() {
    let Some(out) = run(&cmd(&["echo", "hello", "from strata"]), |_| {}) else {
        return;
    };
    assert_eq!(out.code, 0);
    assert_eq!(out.stdout, "hello from strata\n");
}

#[test]
fn exit_code_is_the_process_s() {
    let mut image = cmd(&["exit 3"]);
    image.entrypoint = vec!["sh".into(), "-c".into()];
    let Some(out) = run(&image, |_| {}) else {
        return;
    };
    assert_eq!(out.code, 3);
}

#[test]
fn cli_args_replace_cmd_after_entrypoint() {
    let mut image = cmd(&["echo image cmd"]);
    image.entrypoint = vec!["sh".into(), "-c".into()];
    let Some(out) = run(&image, |o| o.args = vec!["echo cli args; exit 0".into()]) else {
        return;
    };
    assert_eq!((out.code, out.stdout.as_str()), (0, "cli args\n"));
}

#[test]
fn env_is_image_then_cli_with_default_path() {
    let mut image = cmd(&["env"]);
    image.env = vec!["FOO=image".into(), "BAR=image".into()];
    let Some(out) = run(&image, |o| o.env = vec!["BAR=cli".into(), "BAZ=cli".into()]) else {
        return;
    };
    assert_eq!(out.code, 0);
    let env: Vec<&str> = out.stdout.lines().collect();
    for want in [
        "FOO=image",
        "BAR=cli",
        "BAZ=cli",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ] {
        assert!(env.contains(&want), "{want} missing from {env:?}");
    }
    assert!(!env.contains(&"BAR=image"), "{env:?}");
}

#[test]
fn user_from_the_rootfs_passwd_and_group() {
    let mut image = cmd(&["id -u; id -g; id -G"]);
    image.entrypoint = vec!["sh".into(), "-c".into()];
    image.user = "app".into();
    let Some(out) = run(&image, |_| {}) else {
        return;
    };
    assert_eq!(out.code, 0);
    assert_eq!(out.stdout, "1234\n2345\n2345 3456 4567\n");

    let Some(out) = run(&image, |o| o.user = Some("app:extra".into())) else {
        return;
    };
    assert_eq!(out.stdout, "1234\n3456\n3456\n");
}

#[test]
fn cwd_from_image_or_options() {
    let mut image = cmd(&["pwd"]);
    image.working_dir = "/work".into();
    let Some(out) = run(&image, |_| {}) else {
        return;
    };
    assert_eq!((out.code, out.stdout.as_str()), (0, "/work\n"));
    let Some(out) = run(&image, |o| o.cwd = Some("/tmp".into())) else {
        return;
    };
    assert_eq!(out.stdout, "/tmp\n");
}

#[test]
fn hostname_is_the_container_id() {
    let Some(out) = run(&cmd(&["hostname"]), |_| {}) else {
        return;
    };
    assert!(out.stdout.starts_with("strata-test-"), "{}", out.stdout);
}
