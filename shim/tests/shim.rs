//! The `strata-shim` binary and its client against the real runc: a busybox state dir
//! (bundle) from `spec::generate`, `shim::spawn`, then every operation of the protocol.
//!
//! Needs root, `runc` on PATH and a static `/bin/busybox` (Debian's `busybox-static`);
//! without them each test prints why and passes. Waits are bounded polls with generous
//! deadlines: time never decides a result, only how long a failure takes to show.

use std::error::Error as _;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as StdStdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{BUSYBOX, unavailable};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use strata_proto::ident::Namespace;
use strata_shim::shim::log::{FrameReader, STDERR, STDOUT};
use strata_shim::shim::{Exit, ShimClient, SpawnOptions, read_exit, spawn};
use strata_shim::{ContainerConfig, ContainerId, ErrorKind, RunOptions, generate};

const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `f` until it is true; panics with `what` after [`DEADLINE`].
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The whole error chain on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn unique_id() -> ContainerId {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    ContainerId::new(&format!(
        "strata-shim-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
    .unwrap()
}

/// A state dir (the bundle: busybox rootfs + config.json) and a runc root in a temp dir.
struct Fixture {
    _dir: tempfile::TempDir,
    state: PathBuf,
    runc_root: PathBuf,
    id: ContainerId,
    terminal: bool,
}

impl Fixture {
    fn new(args: &[&str], terminal: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let root = state.join("rootfs");
        for d in ["bin", "etc", "proc", "dev", "sys", "run", "tmp"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        for applet in ["sh", "echo", "sleep", "cat", "true"] {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        let id = unique_id();
        let image = ContainerConfig {
            cmd: args.iter().map(|s| s.to_string()).collect(),
            ..ContainerConfig::default()
        };
        let mut opts = RunOptions::new(id.clone(), Namespace::new("strata-test").unwrap());
        opts.terminal = terminal;
        let spec = generate(&image, &root, &opts).unwrap();
        fs::write(
            state.join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        Fixture {
            runc_root: dir.path().join("runc"),
            _dir: dir,
            state,
            id,
            terminal,
        }
    }

    fn options(&self) -> SpawnOptions {
        SpawnOptions {
            shim_binary: env!("CARGO_BIN_EXE_strata-shim").into(),
            id: self.id.clone(),
            namespace: "strata-test".into(),
            state_dir: self.state.clone(),
            runc_binary: "runc".into(),
            runc_root: self.runc_root.clone(),
            terminal: self.terminal.then_some((100, 30)),
        }
    }

    fn spawn(&self) -> (ShimClient, Pid) {
        spawn(&self.options()).unwrap_or_else(|e| panic!("spawn: {}", chain(&e)))
    }

    /// The spec's process with other args, for an exec.
    fn process(&self, args: &[&str]) -> serde_json::Value {
        let spec: serde_json::Value =
            serde_json::from_slice(&fs::read(self.state.join("config.json")).unwrap()).unwrap();
        let mut p = spec["process"].clone();
        p["args"] = serde_json::json!(args);
        p
    }

    /// The frames in a log of the state dir.
    fn frames(&self, name: &str) -> Vec<(u8, Vec<u8>)> {
        let mut r = FrameReader::new(fs::File::open(self.state.join(name)).unwrap());
        let mut out = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            out.push(f);
        }
        assert_eq!(r.pending(), 0, "a partial frame at the end of {name}");
        out
    }

    /// All of a stream's output in a log.
    fn output(&self, name: &str, stream: u8) -> String {
        let bytes: Vec<u8> = self
            .frames(name)
            .into_iter()
            .filter(|(s, _)| *s == stream)
            .flat_map(|(_, d)| d)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn shim_pid(&self) -> Option<Pid> {
        let s = fs::read_to_string(self.state.join("shim.pid")).ok()?;
        Some(Pid::from_raw(s.trim().parse().ok()?))
    }
}

impl Drop for Fixture {
    /// Kills the shim and deletes the container (and its cgroup) even if the test failed.
    fn drop(&mut self) {
        if let Some(pid) = self.shim_pid() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&self.runc_root)
            .args(["delete", "--force", self.id.as_str()])
            .stderr(StdStdio::null())
            .status();
    }
}

/// Whether a process exists (a zombie counts as gone).
fn process_exists(pid: Pid) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let after = stat.rsplit_once(')').map(|(_, a)| a.trim()).unwrap_or("");
            !after.starts_with('Z')
        }
        Err(_) => false,
    }
}

fn skip() -> bool {
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return true;
    }
    false
}

#[test]
fn output_is_framed_and_the_exit_code_saved() {
    if skip() {
        return;
    }
    let f = Fixture::new(&["sh", "-c", "echo out; echo err >&2; exit 3"], false);
    let (c, pid) = f.spawn();
    assert!(c.alive());
    let mode = fs::metadata(f.state.join("shim.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let st = c.state("").unwrap();
    assert_eq!(
        (st.status.as_str(), st.pid),
        ("created", pid.as_raw() as u32)
    );
    assert_eq!(st.exit, None);
    c.start().unwrap();
    let exit = c.wait("").unwrap();
    assert_eq!(exit.exit_status, 3);
    assert!(exit.exited_at_unix_nanos > 0);
    // The status is on disk, and told again the same.
    assert_eq!(read_exit(&f.state.join("init.exit")).unwrap(), Some(exit));
    assert_eq!(c.wait("").unwrap(), exit);
    let st = c.state("").unwrap();
    assert_eq!((st.status.as_str(), st.exit), ("stopped", Some(exit)));
    assert_eq!(f.output("init.log", STDOUT), "out\n");
    assert_eq!(f.output("init.log", STDERR), "err\n");
    let e = c.kill("", 9, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{}", chain(&e));
    let e = c.start().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{}", chain(&e));

    // delete ends the shim, and leaves the exit file and the log for the daemon.
    let shim = f.shim_pid().unwrap();
    assert_eq!(c.delete("").unwrap(), exit);
    eventually("the shim to exit", || !process_exists(shim));
    assert!(!c.alive());
    assert!(!f.state.join("shim.sock").exists());
    assert!(!f.state.join("shim.pid").exists());
    assert!(f.state.join("init.log").exists());
    assert_eq!(read_exit(&f.state.join("init.exit")).unwrap(), Some(exit));
    let e = c.state("").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{}", chain(&e));
}

#[test]
fn kill_9_is_137_and_wait_runs_beside_other_calls() {
    if skip() {
        return;
    }
    let f = Fixture::new(&["sleep", "1000"], false);
    let (c, _) = f.spawn();
    c.start().unwrap();
    assert_eq!(c.state("").unwrap().status, "running");
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || c.wait(""))
    };
    // Deleting a running container is refused.
    let e = c.delete("").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{}", chain(&e));
    c.kill("", 9, false).unwrap();
    let exit = waiter.join().unwrap().unwrap();
    assert_eq!(exit.exit_status, 137);
    assert_eq!(read_exit(&f.state.join("init.exit")).unwrap(), Some(exit));
    assert_eq!(c.state("").unwrap().status, "stopped");
    assert_eq!(c.delete("").unwrap(), exit);
}

#[test]
fn execs_pause_resume_and_pids() {
    if skip() {
        return;
    }
    let f = Fixture::new(&["sleep", "1000"], false);
    let (c, init) = f.spawn();
    // No exec before the start.
    let e = c.exec("early", &f.process(&["true"]), false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{}", chain(&e));
    c.start().unwrap();

    let pid = c
        .exec(
            "e1",
            &f.process(&["sh", "-c", "echo from-exec; echo oops >&2; exit 5"]),
            false,
        )
        .unwrap();
    assert!(pid > 0);
    let exit = c.wait("e1").unwrap();
    assert_eq!(exit.exit_status, 5);
    assert_eq!(
        read_exit(&f.state.join("exec-e1.exit")).unwrap(),
        Some(exit)
    );
    assert_eq!(f.output("exec-e1.log", STDOUT), "from-exec\n");
    assert_eq!(f.output("exec-e1.log", STDERR), "oops\n");
    assert_eq!(c.state("e1").unwrap().status, "stopped");
    // The id stays taken until deleted.
    let e = c.exec("e1", &f.process(&["true"]), false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{}", chain(&e));

    // Hostile exec ids never reach a path.
    for bad in ["../x", "", "a/b", ".hidden", &"x".repeat(300)] {
        let e = c.exec(bad, &f.process(&["true"]), false).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::InvalidArgument,
            "{bad:?}: {}",
            chain(&e)
        );
    }
    assert!(!f.state.parent().unwrap().join("x.log").exists());
    let e = c
        .exec("p", &serde_json::json!("not an object"), false)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", chain(&e));

    // A long exec, killed directly.
    let sleeper = c.exec("e2", &f.process(&["sleep", "1000"]), false).unwrap();
    let st = c.state("e2").unwrap();
    assert_eq!((st.status.as_str(), st.pid), ("running", sleeper));
    let e = c.delete("e2").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{}", chain(&e));
    let pids = c.pids().unwrap();
    assert!(pids.contains(&(init.as_raw() as u32)), "{pids:?}");
    assert!(pids.contains(&sleeper), "{pids:?}");
    // No terminal: no resize, no attach.
    let e = c.resize("e2", 10, 10).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{}", chain(&e));
    let e = c.attach("").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{}", chain(&e));

    c.pause().unwrap();
    assert_eq!(c.state("").unwrap().status, "paused");
    let e = c.pause().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{}", chain(&e));
    c.resume().unwrap();
    assert_eq!(c.state("").unwrap().status, "running");

    c.kill("e2", 9, false).unwrap();
    assert_eq!(c.wait("e2").unwrap().exit_status, 137);
    let e = c.kill("e2", 9, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{}", chain(&e));
    assert_eq!(c.delete("e2").unwrap().exit_status, 137);
    let e = c.state("e2").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{}", chain(&e));
    // Its id is free again.
    c.exec("e2", &f.process(&["true"]), false).unwrap();
    assert_eq!(c.wait("e2").unwrap().exit_status, 0);
    let e = c.state("nope").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{}", chain(&e));

    c.kill("", 9, true).unwrap();
    assert_eq!(c.wait("").unwrap().exit_status, 137);
    c.delete("").unwrap();
}

/// Sends a raw line and reads the raw response line.
fn raw(state: &Path, line: &[u8]) -> serde_json::Value {
    let mut s = UnixStream::connect(state.join("shim.sock")).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(line).unwrap();
    let mut resp = String::new();
    BufReader::new(&s).read_line(&mut resp).unwrap();
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{resp:?}: {e}"))
}

#[test]
fn garbage_and_dropped_connections_do_not_hurt_the_shim() {
    if skip() {
        return;
    }
    let f = Fixture::new(&["sleep", "1000"], false);
    let (c, _) = f.spawn();
    c.start().unwrap();
    for line in [
        &b"not json\n"[..],
        b"{\"op\":\"explode\"}\n",
        b"{\"op\":\"kill\",\"signal\":\"nine\"}\n",
        b"\xff\xfe\n",
        b"[1,2,3]\n",
    ] {
        let r = raw(&f.state, line);
        assert_eq!(r["error"]["kind"], "InvalidArgument", "{line:?}: {r}");
    }
    // A line past the bound, never ending in a newline.
    {
        let mut s = UnixStream::connect(f.state.join("shim.sock")).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let big = vec![b'x'; (1 << 20) + 10];
        // The shim may answer and close before it all is written.
        let _ = s.write_all(&big);
        let mut resp = String::new();
        BufReader::new(&s).read_line(&mut resp).unwrap();
        assert!(resp.contains("InvalidArgument"), "{resp}");
    }
    // A bad signal number.
    let e = c.kill("", 12345, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", chain(&e));
    // Clients that go away mid-request: a wait, an empty connection, half a line.
    for line in [
        &b"{\"op\":\"wait\",\"exec_id\":\"\"}\n"[..],
        b"",
        b"{\"op\":",
    ] {
        let mut s = UnixStream::connect(f.state.join("shim.sock")).unwrap();
        s.write_all(line).unwrap();
        drop(s);
    }
    assert!(c.alive());
    assert_eq!(c.state("").unwrap().status, "running");
    // Waiters that hang up leave no thread behind in the shim.
    let shim = f.shim_pid().unwrap();
    // The connection threads ("conn"); the earlier dropped wait's ends within a second.
    let conns = || {
        fs::read_dir(format!("/proc/{shim}/task"))
            .unwrap()
            .filter(|t| {
                let comm = fs::read_to_string(t.as_ref().unwrap().path().join("comm"));
                comm.is_ok_and(|c| c.trim() == "conn")
            })
            .count()
    };
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let mut s = UnixStream::connect(f.state.join("shim.sock")).unwrap();
            s.write_all(b"{\"op\":\"wait\"}\n").unwrap();
            s
        })
        .collect();
    eventually("five waits to be served", || conns() == 5);
    drop(waiters);
    eventually("the waiting threads to end", || conns() == 0);
    c.kill("", 9, false).unwrap();
    assert_eq!(c.wait("").unwrap().exit_status, 137);
    c.delete("").unwrap();
}

#[test]
fn a_created_container_can_be_deleted() {
    if skip() {
        return;
    }
    let f = Fixture::new(&["sleep", "1000"], false);
    let (c, _) = f.spawn();
    let shim = f.shim_pid().unwrap();
    let exit = c.delete("").unwrap();
    assert_eq!(exit.exit_status, 137);
    eventually("the shim to exit", || !process_exists(shim));
    let out = Command::new("runc")
        .arg("--root")
        .arg(&f.runc_root)
        .args(["state", f.id.as_str()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the container is still there");
}

#[test]
fn spawn_failure_reports_the_kind_and_cleans_up() {
    if skip() {
        return;
    }
    let f = Fixture::new(&["true"], false);
    fs::remove_file(f.state.join("config.json")).unwrap();
    let e = spawn(&f.options()).unwrap_err();
    let msg = chain(&e);
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{msg}");
    assert!(msg.contains("config.json"), "{msg}");
    assert!(e.source().is_some());
    assert!(!f.state.join("shim.sock").exists());
    assert!(!f.state.join("shim.pid").exists());
    let log = fs::read_to_string(f.state.join("shim.log")).unwrap();
    assert!(log.contains("config.json"), "{log}");

    // A shim binary that is not there.
    let mut o = f.options();
    o.shim_binary = f.state.join("no-such-shim");
    assert_eq!(spawn(&o).unwrap_err().kind(), ErrorKind::Unavailable);
}

/// Set to a state dir, runc root and container id, `spawn_helper` spawns a shim for them
/// and exits: the shim outlives its spawner.
const HELPER_ENV: &str = "STRATA_SHIM_TEST_SPAWN";

#[test]
fn spawn_helper() {
    let Ok(spec) = std::env::var(HELPER_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('\n').collect();
    let opts = SpawnOptions {
        shim_binary: env!("CARGO_BIN_EXE_strata-shim").into(),
        id: ContainerId::new(parts[2]).unwrap(),
        namespace: "strata-test".into(),
        state_dir: parts[0].into(),
        runc_binary: "runc".into(),
        runc_root: parts[1].into(),
        terminal: None,
    };
    let (_, pid) = spawn(&opts).unwrap();
    println!("init pid {pid}");
}

#[test]
fn the_shim_survives_its_spawner_in_its_own_session() {
    if skip() {
        return;
    }
    let f = Fixture::new(&["sh", "-c", "read x || echo eof; exit 7"], false);
    let spec = format!("{}\n{}\n{}", f.state.display(), f.runc_root.display(), f.id);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "spawn_helper",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(HELPER_ENV, spec)
        .stdin(StdStdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The spawner is gone; the shim serves.
    let c = ShimClient::new(&f.state);
    assert!(c.alive());
    let shim = f.shim_pid().unwrap();
    let stat = fs::read_to_string(format!("/proc/{shim}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // Fields after the name: state, ppid, pgrp, session.
    assert_eq!(fields[3], shim.to_string(), "session of the shim: {stat}");
    c.start().unwrap();
    // Its stdin is /dev/null: `read` ends at once.
    let exit = c.wait("").unwrap();
    assert_eq!(exit.exit_status, 7);
    assert_eq!(f.output("init.log", STDOUT), "eof\n");
    c.delete("").unwrap();
    eventually("the shim to exit", || !process_exists(shim));
}

#[test]
fn terminal_output_and_attach() {
    if skip() {
        return;
    }
    let f = Fixture::new(&["sh", "-c", "read x; echo got:$x"], true);
    let (c, _) = f.spawn();
    c.start().unwrap();
    c.resize("", 120, 40).unwrap();
    let mut stdin = c.attach("").unwrap();
    stdin.write_all(b"hi\n").unwrap();
    let exit = c.wait("").unwrap();
    assert_eq!(exit.exit_status, 0);
    drop(stdin);
    let frames = f.frames("init.log");
    assert!(frames.iter().all(|(s, _)| *s == STDOUT), "{frames:?}");
    let out = f.output("init.log", STDOUT);
    assert!(out.contains("got:hi"), "{out:?}");
    // Attaching to an exited process is refused.
    let e = c.attach("").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{}", chain(&e));
    c.delete("").unwrap();
}

#[test]
fn exec_with_a_terminal() {
    if skip() {
        return;
    }
    let f = Fixture::new(&["sleep", "1000"], false);
    let (c, _) = f.spawn();
    c.start().unwrap();
    let mut p = f.process(&["sh", "-c", "read x; echo exec-got:$x; exit 4"]);
    p["consoleSize"] = serde_json::json!({"height": 25, "width": 90});
    c.exec("t1", &p, true).unwrap();
    c.resize("t1", 100, 50).unwrap();
    let mut stdin = c.attach("t1").unwrap();
    stdin.write_all(b"there\n").unwrap();
    let exit: Exit = c.wait("t1").unwrap();
    assert_eq!(exit.exit_status, 4);
    let out = f.output("exec-t1.log", STDOUT);
    assert!(out.contains("exec-got:there"), "{out:?}");
    c.kill("", 9, false).unwrap();
    c.wait("").unwrap();
    c.delete("").unwrap();
}
