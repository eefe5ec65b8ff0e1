//! The container lifecycle end to end: `strata run`, `ps`, `exec`, `kill`, `rm`, `logs`
//! and `events` against a real daemon, real runc and real overlayfs, with images built
//! by `common::images` and pushed to a real docker-registry. Each test has its own temp
//! dir, registry and daemon. Waits poll with generous deadlines; nothing asserts on time.
//!
//! Covered: exit statuses and output streams, signals, env/user/working directory,
//! exec, cleanup after `--rm` and `rm` (container, snapshot, mounts, directory), logs
//! after exit, a daemon killed and restarted under running (and exiting) containers, a
//! real Debian image, a rootfs taken from containerd 1.6's own snapshotter, hostile
//! images and arguments, and the event stream.

mod common;

use std::io::{BufRead as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::images::{self, Passwd};
use common::oci::{Built, Compression, Image, Layer, Registry, Tar};
use common::{BIN, Daemon, harness, stderr, stdout};
use serde_json::json;
use sha2::Digest as _;

/// How long one CLI command may take before the test calls it hung.
const CLI_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a wait for a state change may take.
const WAIT: Duration = Duration::from_secs(60);

// ---- Harness --------------------------------------------------------------------------

fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

fn output_within(mut cmd: Command, timeout: Duration, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?} (hung)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// A command's status and output, for failure messages.
fn show(o: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        o.status,
        stdout(o),
        stderr(o)
    )
}

/// Kills what the daemon left running under `wd` (runc containers, shims), then stops
/// the registry and containerd and unmounts everything under `wd`.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let wd = self.0.to_str().unwrap().to_owned();
        let runc_root = self.0.join("root/runc/default");
        if runc_root.exists() {
            let list = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["list", "-q"])
                .output();
            if let Ok(list) = list {
                for id in stdout(&list).lines() {
                    let _ = Command::new("runc")
                        .arg("--root")
                        .arg(&runc_root)
                        .args(["delete", "-f", id])
                        .output();
                }
            }
        }
        for pid in processes_mentioning(&wd) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.starts_with("strata-shim") || comm.trim() == "strata" {
                // SAFETY: plain kill(2) of a process this test's daemon started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}/tests/harness/lib.sh; stop_all {wd}",
                manifest_dir()
            ))
            .output();
    }
}

/// Pids whose command line has an argument under `dir`.
fn processes_mentioning(dir: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|&b| b == 0)
            .any(|a| a.starts_with(dir.as_bytes()))
        {
            pids.push(pid);
        }
    }
    pids
}

/// True if `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// True if `pid` has a handler for `sig` (its `SigCgt` mask in /proc).
fn catches(pid: u32, sig: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (sig - 1)) != 0)
}

/// Polls `f` until it returns `Some`, failing with `what()` after [`WAIT`].
fn wait_for<T>(what: impl Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {}", what());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One row of `strata ps`.
#[derive(Clone, Debug)]
struct PsRow {
    id: String,
    pid: String,
    status: String,
    snapshotter: String,
}

/// A work dir with a docker-registry and a daemon. Dropped in field order: the daemon,
/// then whatever it left running and the registry and mounts, then the directory.
struct Env {
    d: Daemon,
    reg: Registry,
    _cleanup: Cleanup,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(prefix: &str) -> Env {
        preconditions();
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .unwrap();
        let wd = dir.path().to_owned();
        let cleanup = Cleanup(wd.clone());
        let hostport = harness(&[], &["start_registry", wd.to_str().unwrap()]);
        let reg = Registry::new(&hostport, &wd.join("registry-data"));
        let d = Daemon::start(&wd, &[]);
        Env {
            d,
            reg,
            _cleanup: cleanup,
            dir,
        }
    }

    fn wd(&self) -> &Path {
        self.dir.path()
    }

    fn sock(&self) -> &str {
        self.d.sock.to_str().unwrap()
    }

    /// The tail of the daemon's log, for failure messages.
    fn daemon_log(&self) -> String {
        let log = self.d.logs();
        let start = log.len().saturating_sub(6000);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(log.len());
        format!("--- daemon log (tail) ---\n{}", &log[start..])
    }

    /// `strata --address SOCK ARGS...`, failing if it hangs.
    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--address").arg(&self.d.sock).args(args);
        output_within(cmd, CLI_TIMEOUT, &format!("strata {args:?}"))
    }

    /// Like [`Env::cli`], and it must succeed.
    fn ok(&self, args: &[&str]) -> Output {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "strata {args:?}: {}\n{}",
            show(&out),
            self.daemon_log()
        );
        out
    }

    /// `strata run --plain-http ARGS...`.
    fn run(&self, args: &[&str]) -> Output {
        let mut a = vec!["run", "--plain-http"];
        a.extend_from_slice(args);
        self.cli(&a)
    }

    /// `strata run --plain-http ARGS...`, which must exit 0; returns its stdout.
    fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "strata run {args:?}: {}\n{}",
            show(&out),
            self.daemon_log()
        );
        stdout(&out)
    }

    /// Pushes `img` as `repo:tag`; returns its reference.
    fn push(&self, repo_tag: &str, img: &Built) -> String {
        let (repo, tag) = repo_tag.split_once(':').unwrap();
        self.reg.push_image(repo, tag, img);
        format!("{}/{repo_tag}", self.reg.hostport)
    }

    /// Pushes the busybox image as `busybox:latest`; returns its reference.
    fn busybox(&self) -> String {
        self.push("busybox:latest", &images::busybox())
    }

    fn ps(&self) -> Vec<PsRow> {
        let out = self.ok(&["ps"]);
        stdout(&out)
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert!(f.len() >= 5, "ps row {l:?}");
                PsRow {
                    id: f[0].to_owned(),
                    pid: f[2].to_owned(),
                    status: f[3..f.len() - 1].join(" "),
                    snapshotter: f[f.len() - 1].to_owned(),
                }
            })
            .collect()
    }

    fn ps_row(&self, id: &str) -> Option<PsRow> {
        self.ps().into_iter().find(|r| r.id == id)
    }

    fn ps_q(&self) -> Vec<String> {
        stdout(&self.ok(&["ps", "-q"]))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Polls `strata ps` until container `id` has `status`.
    fn wait_status(&self, id: &str, status: &str) -> PsRow {
        wait_for(
            || {
                format!(
                    "container {id} never reached status {status:?}: {:?}\n{}",
                    self.ps(),
                    self.daemon_log()
                )
            },
            || self.ps_row(id).filter(|r| r.status == status),
        )
    }

    /// The keys of the daemon's default snapshotter (namespace default).
    fn snapshot_keys(&self) -> Vec<String> {
        stdout(&self.ok(&["snapshots", "ls"]))
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    fn containers_dir(&self) -> PathBuf {
        self.d.root.join("containers")
    }

    /// `<root>/containers/<hash>` of container `id` in namespace default.
    fn container_dir(&self, id: &str) -> PathBuf {
        let h = sha2::Sha256::digest(format!("default/{id}").as_bytes());
        self.containers_dir().join(&hex::encode(h)[..24])
    }

    /// Mount points under `<root>/containers/`.
    fn container_mounts(&self) -> Vec<String> {
        let prefix = format!("{}/", self.containers_dir().display());
        mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&prefix))
            .collect()
    }

    /// Container `id` left nothing behind: no record, snapshot, mount or directory.
    fn assert_gone(&self, id: &str) {
        let ids = self.ps_q();
        assert!(!ids.contains(&id.to_owned()), "{id} still listed: {ids:?}");
        let key = format!("strata-container/default/{id}");
        let keys = self.snapshot_keys();
        assert!(!keys.contains(&key), "snapshot {key} left: {keys:?}");
        let mounts = self.container_mounts();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        let dir = self.container_dir(id);
        assert!(!dir.exists(), "{} left", dir.display());
    }

    /// No container, container snapshot, mount or container directory at all.
    fn assert_nothing_left(&self) {
        let ids = self.ps_q();
        assert!(ids.is_empty(), "containers left: {ids:?}");
        let keys: Vec<String> = self
            .snapshot_keys()
            .into_iter()
            .filter(|k| k.starts_with("strata-container/"))
            .collect();
        assert!(keys.is_empty(), "container snapshots left: {keys:?}");
        let mounts = self.container_mounts();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        let dirs: Vec<_> = std::fs::read_dir(self.containers_dir())
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(dirs.is_empty(), "container dirs left: {dirs:?}");
    }
}

/// Fails (never skips) when this machine cannot run the tests.
fn preconditions() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the lifecycle tests need root (real runc and overlayfs)"
    );
    let runc = Command::new("runc").arg("--version").output();
    assert!(
        runc.is_ok_and(|o| o.status.success()),
        "runc is not installed (scripts/install-deps.sh)"
    );
}

/// Every mount point of this mount namespace (octal escapes decoded).
fn mount_points() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .collect()
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(n);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

// ---- 1. Output and exit status ----------------------------------------------------------

#[test]
fn busybox_default_command_output_and_exit_status() {
    let env = Env::new("srun1");
    let image = env.busybox();

    // The first run pulls the image (a 127.0.0.1 registry is plain http: no flag).
    let out = env.cli(&["run", "--rm", &image]);
    assert!(out.status.success(), "{}\n{}", show(&out), env.daemon_log());
    assert_eq!(stdout(&out), "hello from busybox\n");

    let out = env.run(&["--rm", &image, "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert_eq!(stdout(&out), "out\n", "{}", show(&out));
    assert!(
        lines(&stderr(&out)).contains(&"err"),
        "stderr: {}",
        show(&out)
    );
    env.assert_nothing_left();
}

// ---- 2. Killed by a signal ---------------------------------------------------------------

#[test]
fn killed_container_exits_137_and_is_removed() {
    let env = Env::new("srun2");
    let image = env.busybox();
    let out = env.run_ok(&["-d", "--name", "k", &image, "sleep", "1000"]);
    assert_eq!(out.trim(), "k");
    let row = env.wait_status("k", "running");
    let pid: u32 = row.pid.parse().expect("a pid for a running task");
    assert!(alive(pid), "pid {pid} of a running container");
    // The rootfs is mounted while the task exists (which makes the checks that no mount
    // is left meaningful).
    let rootfs = format!("{}/rootfs", env.container_dir("k").display());
    assert!(
        env.container_mounts().contains(&rootfs),
        "{rootfs} not mounted: {:?}",
        env.container_mounts()
    );

    env.ok(&["kill", "--signal", "KILL", "k"]);
    env.wait_status("k", "exited (137)");
    assert!(!alive(pid), "pid {pid} still alive after SIGKILL");

    let out = env.ok(&["rm", "k"]);
    assert_eq!(stdout(&out).trim(), "k");
    env.assert_gone("k");
    env.assert_nothing_left();
}

#[test]
fn sigterm_by_default_and_by_number() {
    let env = Env::new("srun2b");
    let image = env.busybox();
    // sh as pid 1 ignores SIGTERM unless it traps it: trap, then exit with a marker.
    env.run_ok(&[
        "-d",
        "--name",
        "t",
        &image,
        "sh",
        "-c",
        "trap 'echo got-term; exit 42' TERM; while true; do sleep 0.2; done",
    ]);
    env.wait_status("t", "running");
    env.ok(&["kill", "t"]);
    env.wait_status("t", "exited (42)");
    let logs = env.ok(&["logs", "t"]);
    assert!(stdout(&logs).contains("got-term"), "{}", show(&logs));
    env.ok(&["rm", "t"]);

    env.run_ok(&["-d", "--name", "n", &image, "sleep", "1000"]);
    env.wait_status("n", "running");
    env.ok(&["kill", "--signal", "9", "n"]);
    env.wait_status("n", "exited (137)");
    env.ok(&["rm", "n"]);
    env.assert_nothing_left();
}

#[test]
fn attached_run_reports_signals_and_forwards_them() {
    let env = Env::new("srun2c");
    let image = env.busybox();
    env.ok(&["pull", "--plain-http", &image]);
    let spawn = |name: &str, script: &str| {
        Command::new(BIN)
            .args(["--address", env.sock(), "run", "--name", name, &image])
            .args(["sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let finish = |child: std::process::Child| {
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(CLI_TIMEOUT) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                // SAFETY: plain kill(2) of our own child.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
                panic!("strata run (pid {pid}) did not exit");
            }
        }
    };

    // Killed from elsewhere: the attached run exits 128 + 9.
    let child = spawn("sk", "sleep 1000");
    env.wait_status("sk", "running");
    env.ok(&["kill", "--signal", "KILL", "sk"]);
    let out = finish(child);
    assert_eq!(out.status.code(), Some(137), "{}", show(&out));
    env.ok(&["rm", "sk"]);

    // SIGINT to strata run reaches the container's process.
    let child = spawn(
        "si",
        "trap 'echo got-int; exit 9' INT; while true; do sleep 0.2; done",
    );
    env.wait_status("si", "running");
    // strata run catches SIGINT once it forwards signals: wait for its handler, or the
    // default action would kill strata run itself.
    let pid = child.id();
    wait_for(
        || format!("strata run (pid {pid}) never caught SIGINT"),
        || catches(pid, libc::SIGINT).then_some(()),
    );
    // SAFETY: plain kill(2) of our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = finish(child);
    assert_eq!(out.status.code(), Some(9), "{}", show(&out));
    assert!(stdout(&out).contains("got-int"), "{}", show(&out));
    env.ok(&["rm", "si"]);
    env.assert_nothing_left();
}

// ---- 3. Env, user, working directory -----------------------------------------------------

#[test]
fn env_user_and_working_directory() {
    let env = Env::new("srun3");
    let image = env.busybox();

    let out = env.run_ok(&["--rm", &image, "env"]);
    let vars = lines(&out);
    assert!(vars.contains(&"FROM_IMAGE=yes"), "{out}");
    assert!(vars.contains(&"PATH=/bin"), "{out}");

    let out = env.run_ok(&["--rm", "-e", "A=1", "-e", "FROM_IMAGE=no", &image, "env"]);
    let vars = lines(&out);
    assert!(vars.contains(&"A=1"), "{out}");
    assert!(vars.contains(&"FROM_IMAGE=no"), "{out}");
    assert!(!vars.contains(&"FROM_IMAGE=yes"), "{out}");
    assert_eq!(
        vars.iter().filter(|v| v.starts_with("FROM_IMAGE=")).count(),
        1,
        "{out}"
    );

    let out = env.run_ok(&["--rm", &image, "id"]);
    assert!(out.starts_with("uid=0(root) gid=0(root)"), "{out}");

    let out = env.run_ok(&["--rm", "-u", "app", &image, "id"]);
    assert!(out.starts_with("uid=1000(app) gid=1000(app)"), "{out}");
    assert!(out.contains("50(staff)"), "additional group staff: {out}");
    let out = env.run_ok(&["--rm", "-u", "app", &image, "id", "-G"]);
    let mut gids: Vec<&str> = out.split_whitespace().collect();
    gids.sort_unstable();
    assert_eq!(gids, ["1000", "50"], "{out}");

    let out = env.run_ok(&["--rm", "-u", "1234:5678", &image, "id"]);
    assert!(out.starts_with("uid=1234 gid=5678"), "{out}");
    let out = env.run_ok(&["--rm", "-u", "app:staff", &image, "id", "-u"]);
    assert_eq!(out, "1000\n");
    let out = env.run_ok(&["--rm", "-u", "app:staff", &image, "id", "-g"]);
    assert_eq!(out, "50\n");
    // A uid the image does not list: gid 0.
    let out = env.run_ok(&["--rm", "-u", "4321", &image, "id"]);
    assert!(out.starts_with("uid=4321 gid=0(root)"), "{out}");
    // An unknown name is an error, never root.
    let out = env.run(&["--rm", "-u", "nosuchuser", &image, "id"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("nosuchuser"), "{}", show(&out));

    assert_eq!(env.run_ok(&["--rm", &image, "pwd"]), "/work\n");
    assert_eq!(env.run_ok(&["--rm", "-w", "/tmp", &image, "pwd"]), "/tmp\n");
    env.assert_nothing_left();
}

// ---- 4. Exec ----------------------------------------------------------------------------

#[test]
fn exec_into_a_running_container() {
    let env = Env::new("srun4");
    let image = env.busybox();
    let id = env
        .run_ok(&["-d", &image, "sleep", "1000"])
        .trim()
        .to_owned();
    assert!(!id.is_empty(), "run -d printed no id");
    env.wait_status(&id, "running");

    let out = env.cli(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo in-exec; echo exec-err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));
    assert_eq!(stdout(&out), "in-exec\n");
    assert!(lines(&stderr(&out)).contains(&"exec-err"), "{}", show(&out));

    let out = env.ok(&["exec", &id, "sh", "-c", "echo $FROM_IMAGE; id -u; pwd"]);
    assert_eq!(stdout(&out), "yes\n0\n/work\n", "{}", show(&out));

    let out = env.ok(&[
        "exec",
        "-e",
        "X=1",
        "-u",
        "app",
        "-w",
        "/tmp",
        &id,
        "sh",
        "-c",
        "echo $X; id -u; id -g; pwd",
    ]);
    assert_eq!(stdout(&out), "1\n1000\n1000\n/tmp\n", "{}", show(&out));
    let out = env.ok(&["exec", "-u", "1234:5678", &id, "id"]);
    assert!(
        stdout(&out).starts_with("uid=1234 gid=5678"),
        "{}",
        show(&out)
    );

    // A detached exec with a chosen id; its output is in its logs.
    let out = env.ok(&[
        "exec",
        "-d",
        "--exec-id",
        "bg",
        &id,
        "sh",
        "-c",
        "echo from-bg",
    ]);
    assert_eq!(stdout(&out).trim(), "bg");
    wait_for(
        || "the output of exec bg".to_owned(),
        || {
            let o = env.cli(&["logs", "--exec-id", "bg", &id]);
            stdout(&o).contains("from-bg").then_some(())
        },
    );

    // The init is still running; exec into a missing container fails.
    assert_eq!(env.ps_row(&id).unwrap().status, "running");
    let out = env.cli(&["exec", "nosuch", "true"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("NotFound"), "{}", show(&out));

    env.ok(&["rm", "-f", &id]);
    env.assert_gone(&id);
}

// ---- Mounts and options ----------------------------------------------------------------

#[test]
fn bind_mounts_and_read_only_rootfs() {
    let env = Env::new("srunm");
    let image = env.busybox();
    let host = env.wd().join("shared");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("in"), b"from-host\n").unwrap();
    let rw = format!("{}:/shared", host.display());
    let ro = format!("{}:/shared:ro", host.display());

    let out = env.run_ok(&[
        "--rm",
        "--mount",
        &rw,
        &image,
        "sh",
        "-c",
        "cat /shared/in; echo from-container > /shared/out",
    ]);
    assert_eq!(out, "from-host\n");
    assert_eq!(
        std::fs::read_to_string(host.join("out")).unwrap(),
        "from-container\n"
    );

    let out = env.run(&["--rm", "--mount", &ro, &image, "touch", "/shared/nope"]);
    assert!(
        !out.status.success(),
        "write to a :ro mount: {}",
        show(&out)
    );
    assert!(!host.join("nope").exists());

    let out = env.run(&["--rm", "--read-only", &image, "touch", "/work/nope"]);
    assert!(
        !out.status.success(),
        "write to a read-only rootfs: {}",
        show(&out)
    );
    // The same write succeeds on a writable rootfs.
    env.run_ok(&["--rm", &image, "touch", "/work/yes"]);

    // Bad mount specs are refused before anything is created.
    for bad in ["relative:/x", "/tmp:relative", "/tmp", "/tmp:/x:bogus"] {
        let out = env.run(&["--rm", "--mount", bad, &image, "true"]);
        assert!(!out.status.success(), "--mount {bad}: {}", show(&out));
        env.assert_nothing_left();
    }
    // --rm with -d is refused.
    let out = env.run(&["--rm", "-d", &image, "true"]);
    assert!(!out.status.success(), "--rm -d: {}", show(&out));
    env.assert_nothing_left();
}

#[test]
fn terminal_for_run_and_exec() {
    let env = Env::new("srunt");
    let image = env.busybox();
    // stdin is /dev/null here: the process still gets a terminal for its stdio.
    let out = env.run(&[
        "--rm",
        "-t",
        &image,
        "sh",
        "-c",
        "[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo is-a-tty; exit 6",
    ]);
    assert_eq!(out.status.code(), Some(6), "{}", show(&out));
    assert!(stdout(&out).contains("is-a-tty"), "{}", show(&out));

    env.run_ok(&["-d", "--name", "tt", &image, "sleep", "1000"]);
    env.wait_status("tt", "running");
    let out = env.cli(&["exec", "-t", "tt", "sh", "-c", "[ -t 1 ] && echo exec-tty"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stdout(&out).contains("exec-tty"), "{}", show(&out));
    let out = env.ok(&["exec", "tt", "sh", "-c", "[ -t 1 ] || echo no-tty"]);
    assert_eq!(stdout(&out), "no-tty\n");
    env.ok(&["rm", "-f", "tt"]);
    env.assert_nothing_left();
}

// ---- 5. --rm cleans up ------------------------------------------------------------------

#[test]
fn run_rm_leaves_nothing_behind() {
    let env = Env::new("srun5");
    let image = env.busybox();
    let out = env.run_ok(&["--rm", "--name", "gone", &image, "echo", "hi"]);
    assert_eq!(out, "hi\n");
    env.assert_gone("gone");
    // A failing command too.
    let out = env.run(&["--rm", "--name", "gone2", &image, "false"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    env.assert_gone("gone2");
    // The same name can be used again.
    assert_eq!(
        env.run_ok(&["--rm", "--name", "gone", &image, "echo", "again"]),
        "again\n"
    );
    env.assert_nothing_left();
}

// ---- 6. Without --rm --------------------------------------------------------------------

#[test]
fn container_kept_after_exit_has_logs_until_rm() {
    let env = Env::new("srun6");
    let image = env.busybox();
    let out = env.run(&[
        "--name",
        "keep",
        &image,
        "sh",
        "-c",
        "echo kept-out; echo kept-err >&2; exit 2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert_eq!(stdout(&out), "kept-out\n");

    // The run has returned: the status is final.
    let row = env.ps_row("keep").expect("keep is listed");
    assert_eq!(row.status, "exited (2)", "{row:?}");
    assert_eq!(row.snapshotter, "overlayfs", "{row:?}");
    assert!(env.container_dir("keep").exists());
    assert!(
        env.snapshot_keys()
            .contains(&"strata-container/default/keep".to_owned())
    );
    // The rootfs is mounted only while a task exists.
    let mounts = env.container_mounts();
    assert!(mounts.is_empty(), "rootfs still mounted: {mounts:?}");

    let logs = env.ok(&["logs", "keep"]);
    assert!(stdout(&logs).contains("kept-out"), "{}", show(&logs));
    assert!(stderr(&logs).contains("kept-err"), "{}", show(&logs));

    // The id is taken until rm.
    let out = env.run(&["--name", "keep", &image, "true"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("AlreadyExists"), "{}", show(&out));

    let out = env.ok(&["rm", "keep"]);
    assert_eq!(stdout(&out).trim(), "keep");
    env.assert_gone("keep");
    let out = env.cli(&["logs", "keep"]);
    assert!(
        !out.status.success(),
        "logs of a removed container: {}",
        show(&out)
    );
    env.assert_nothing_left();
}

// ---- 7. Daemon restart ------------------------------------------------------------------

#[test]
fn containers_survive_a_daemon_restart() {
    let mut env = Env::new("srun7");
    let image = env.busybox();
    let signal = env.wd().join("signal");
    std::fs::create_dir(&signal).unwrap();
    let mount = format!("{}:/signal", signal.display());
    env.run_ok(&[
        "-d",
        "--name",
        "r",
        "--mount",
        &mount,
        &image,
        "sh",
        "-c",
        "while [ ! -e /signal/go ]; do sleep 0.1; done; echo done; exit 5",
    ]);
    env.run_ok(&[
        "-d",
        "--name",
        "w",
        "--mount",
        &mount,
        &image,
        "sh",
        "-c",
        "while [ ! -e /signal/go-w ]; do sleep 0.1; done; echo bye; exit 7",
    ]);
    let pid_r: u32 = env.wait_status("r", "running").pid.parse().unwrap();
    let pid_w: u32 = env.wait_status("w", "running").pid.parse().unwrap();

    env.d.kill9();
    assert!(alive(pid_r), "container r died with the daemon");
    assert!(alive(pid_w), "container w died with the daemon");
    // w exits while the daemon is down.
    std::fs::write(signal.join("go-w"), b"").unwrap();
    wait_for(
        || format!("container w (pid {pid_w}) to exit"),
        || (!alive(pid_w)).then_some(()),
    );
    assert!(alive(pid_r), "container r died while the daemon was down");

    env.d.restart(&[]);
    let row = env.wait_status("r", "running");
    assert_eq!(row.pid, pid_r.to_string(), "{row:?}");
    env.wait_status("w", "exited (7)");
    let logs = env.ok(&["logs", "w"]);
    assert!(stdout(&logs).contains("bye"), "{}", show(&logs));

    std::fs::write(signal.join("go"), b"").unwrap();
    env.wait_status("r", "exited (5)");
    let logs = env.ok(&["logs", "r"]);
    assert!(stdout(&logs).contains("done"), "{}", show(&logs));

    // Exec and kill work on a recovered task too.
    env.run_ok(&["-d", "--name", "s", &image, "sleep", "1000"]);
    env.wait_status("s", "running");
    env.d.restart(&[]);
    env.wait_status("s", "running");
    let out = env.ok(&["exec", "s", "echo", "after-restart"]);
    assert_eq!(stdout(&out), "after-restart\n");
    env.ok(&["kill", "--signal", "KILL", "s"]);
    env.wait_status("s", "exited (137)");

    env.ok(&["rm", "r", "w", "s"]);
    env.assert_nothing_left();
}

// ---- 8. Debian --------------------------------------------------------------------------

#[test]
fn debian_image_runs_with_its_own_users() {
    let env = Env::new("srun8");
    let image = env.push("debian:12", &images::debian(env.wd()));
    let _ = std::fs::remove_file(env.wd().join("debian-layer.tar"));

    let out = env.run_ok(&["--rm", &image, "cat", "/etc/debian_version"]);
    assert!(out.starts_with("12."), "debian_version {out:?}");
    assert_eq!(
        env.run_ok(&["--rm", "-u", "nobody", &image, "id", "-u"]),
        "65534\n"
    );
    // _apt is in Debian's /etc/passwd (uid 42), with nogroup as its group.
    assert_eq!(
        env.run_ok(&["--rm", "-u", "_apt", &image, "id", "-u"]),
        "42\n"
    );
    assert_eq!(
        env.run_ok(&["--rm", "-u", "_apt", &image, "id", "-g"]),
        "65534\n"
    );
    // The image's Cmd (bash) runs, and PATH comes from its config.
    let out = env.run_ok(&[
        "--rm",
        &image,
        "bash",
        "-c",
        "echo $BASH_VERSION; command -v ls",
    ]);
    assert!(
        out.contains("/usr/bin/ls") || out.contains("/bin/ls"),
        "{out}"
    );
    env.assert_nothing_left();
}

// ---- 9. A rootfs from containerd's snapshotter -------------------------------------------

#[test]
fn rootfs_from_containerd_overlayfs_snapshotter() {
    let env = Env::new("srun9");
    let image = env.busybox();
    let wd = env.wd().to_str().unwrap().to_owned();
    let builtin = [("STRATA_BUILTIN_CONTENT", "1")];
    let csock = harness(&builtin, &["start_containerd", &wd]);
    harness(
        &[("STRATA_SNAPSHOTTER", "overlayfs")],
        &["ctr_pull", &wd, &image],
    );
    // strata reads the image config from its own store.
    env.ok(&["pull", "--plain-http", &image]);
    let ctr_keys = || -> Vec<String> {
        let out = harness(
            &[],
            &[
                "ctr_cmd",
                &wd,
                "snapshots",
                "--snapshotter",
                "overlayfs",
                "ls",
            ],
        );
        out.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let before = ctr_keys();

    let out = env.run_ok(&[
        "--rm",
        "--snapshots-address",
        &csock,
        "--snapshotter",
        "overlayfs",
        &image,
        "echo",
        "from-containerd",
    ]);
    assert_eq!(out, "from-containerd\n");
    assert_eq!(ctr_keys(), before, "containerd snapshots after run --rm");

    env.run_ok(&[
        "-d",
        "--name",
        "c1",
        "--snapshots-address",
        &csock,
        "--snapshotter",
        "overlayfs",
        &image,
        "sleep",
        "1000",
    ]);
    env.wait_status("c1", "running");
    let key = "strata-container/default/c1".to_owned();
    let keys = ctr_keys();
    assert!(keys.contains(&key), "{key} not in containerd: {keys:?}");
    // Not in strata's own snapshotter.
    assert!(!env.snapshot_keys().contains(&key));
    let out = env.ok(&["exec", "c1", "cat", "/etc/group"]);
    assert!(stdout(&out).contains("staff:x:50:app"), "{}", show(&out));

    env.ok(&["rm", "-f", "c1"]);
    let keys = ctr_keys();
    assert!(!keys.contains(&key), "{key} left in containerd: {keys:?}");
    assert_eq!(keys, before);
    env.assert_nothing_left();
}

// ---- 10. Hostile input ------------------------------------------------------------------

/// `run` failed with a message naming `needle`, and left nothing behind.
fn assert_refused(env: &Env, out: &Output, needle: &str) {
    assert!(!out.status.success(), "run succeeded: {}", show(out));
    assert!(
        stderr(out).contains(needle),
        "error does not mention {needle:?}: {}",
        show(out)
    );
    env.assert_nothing_left();
}

#[test]
fn hostile_users_are_refused() {
    let env = Env::new("srun10u");
    let mut config = images::busybox_config();
    config["User"] = json!("99999999999");
    let image = env.push("baduser:1", &images::busybox_with(&Passwd::Default, config));
    let out = env.run(&["--rm", &image, "id"]);
    assert_refused(&env, &out, "99999999999");
    let out = env.run(&["--name", "kept", &image, "id"]);
    assert_refused(&env, &out, "99999999999");

    let image = env.busybox();
    for user in ["4294967296", "4294967295", "-1", "app:99999999999"] {
        let flag = format!("--user={user}");
        let out = env.run(&["--rm", &flag, &image, "id"]);
        assert_refused(&env, &out, user.split(':').next_back().unwrap());
    }
}

#[test]
fn hostile_passwd_files_are_refused() {
    let env = Env::new("srun10p");

    // A FIFO: an error, not a hang (the CLI timeout would fail the test).
    let image = env.push(
        "fifo:1",
        &images::busybox_with(&Passwd::Fifo, images::busybox_config()),
    );
    let out = env.run(&["--rm", "-u", "app", &image, "id"]);
    assert_refused(&env, &out, "/etc/passwd");

    // 2 MiB.
    let mut big = images::PASSWD.as_bytes().to_vec();
    while big.len() < 2 << 20 {
        big.extend_from_slice(b"filler:x:2000:2000:filler:/:/bin/false\n");
    }
    let image = env.push(
        "big:1",
        &images::busybox_with(&Passwd::File(big), images::busybox_config()),
    );
    let out = env.run(&["--rm", "-u", "app", &image, "id"]);
    assert_refused(&env, &out, "larger than");

    // Symlinks out of the rootfs resolve inside it. A copy of the host's passwd in the
    // work dir exists only on the host; the image has no such file.
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let host_only = host_passwd
        .lines()
        .filter_map(|l| l.split(':').next())
        .find(|u| !u.is_empty() && !images::PASSWD.contains(&format!("{u}:")))
        .expect("a host user the image lacks")
        .to_owned();
    let copy = env.wd().join("host-passwd");
    std::fs::write(&copy, &host_passwd).unwrap();
    let rel = copy.to_str().unwrap().trim_start_matches('/').to_owned();
    for (tag, target) in [
        ("abs", format!("/../../../../../../../../../../{rel}")),
        ("rel", format!("../../../../../../../../../../{rel}")),
        ("proc", "/proc/self/root/etc/passwd".to_owned()),
        ("loop", "/../../../../../../../../etc/passwd".to_owned()),
    ] {
        let image = env.push(
            &format!("link-{tag}:1"),
            &images::busybox_with(&Passwd::Symlink(target.clone()), images::busybox_config()),
        );
        for user in [host_only.as_str(), "root"] {
            let out = env.run(&["--rm", "-u", user, &image, "id"]);
            assert!(
                !out.status.success(),
                "-u {user} with /etc/passwd -> {target} ran: {}",
                show(&out)
            );
            if tag != "loop" {
                // The file is missing inside the rootfs: the user is not found.
                assert!(
                    stderr(&out).contains("NotFound") && stderr(&out).contains(user),
                    "-u {user} with /etc/passwd -> {target}: {}",
                    show(&out)
                );
            }
            env.assert_nothing_left();
        }
        if tag == "loop" {
            // A symlink loop is an error even for a numeric user (its gid is looked up).
            continue;
        }
        // Numeric users need no file: the missing one means gid 0.
        assert_eq!(
            env.run_ok(&["--rm", "-u", "0", &image, "id", "-u"]),
            "0\n",
            "-u 0 with /etc/passwd -> {target}"
        );
    }
    env.assert_nothing_left();
}

#[test]
fn image_labels_change_nothing() {
    let env = Env::new("srun10l");
    let mut config = images::busybox_config();
    config["Labels"] = json!({
        "strata.io/container": "default/victim",
        "strata.io/evil": "yes",
        "containerd.io/gc.root": "image-says",
        "containerd.io/snapshot/remote": "true",
    });
    let image = env.push("labels:1", &images::busybox_with(&Passwd::Default, config));
    assert_eq!(
        env.run_ok(&["--rm", &image, "echo", "labels-ok"]),
        "labels-ok\n"
    );

    env.run_ok(&["-d", "--name", "lab", &image, "sleep", "1000"]);
    env.wait_status("lab", "running");
    let info = env.ok(&["snapshots", "info", "strata-container/default/lab"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let labels = &info["Labels"];
    assert_eq!(labels["strata.io/container"], "default/lab", "{info}");
    assert_ne!(labels["containerd.io/gc.root"], "image-says", "{info}");
    assert!(labels.get("strata.io/evil").is_none(), "{info}");
    assert!(
        labels.get("containerd.io/snapshot/remote").is_none(),
        "{info}"
    );
    env.ok(&["rm", "-f", "lab"]);
    env.assert_nothing_left();
}

#[test]
fn bad_names_and_signals_are_refused() {
    let env = Env::new("srun10n");
    let image = env.busybox();
    env.ok(&["pull", "--plain-http", &image]);
    let long = "a".repeat(200);
    for name in ["../x", "a/b", "..", "x/../../y", long.as_str(), "-x", "a b"] {
        let flag = format!("--name={name}");
        let out = env.run(&["--rm", &flag, &image, "true"]);
        assert_refused(&env, &out, "container id");
        let out = env.cli(&["rm", "--", name]);
        assert!(!out.status.success(), "rm {name:?}: {}", show(&out));
    }
    // Nothing was created anywhere under the root for them.
    assert!(
        !env.d.root.join("x").exists() && !env.d.root.join("a").exists(),
        "a path from a bad name was created"
    );

    env.run_ok(&["-d", "--name", "x", &image, "sleep", "1000"]);
    env.wait_status("x", "running");
    for sig in ["0", "NOPE", "65", "-9", ""] {
        let flag = format!("--signal={sig}");
        let out = env.cli(&["kill", &flag, "x"]);
        assert!(
            !out.status.success(),
            "kill --signal {sig:?}: {}",
            show(&out)
        );
        assert!(!stderr(&out).is_empty(), "no error for --signal {sig:?}");
    }
    let out = env.cli(&["kill", "--signal", "NOPE", "x"]);
    assert!(stderr(&out).contains("NOPE"), "{}", show(&out));
    assert_eq!(env.ps_row("x").unwrap().status, "running");
    // rm without -f refuses a running container.
    let out = env.cli(&["rm", "x"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert_eq!(env.ps_row("x").unwrap().status, "running");
    env.ok(&["rm", "-f", "x"]);
    env.assert_nothing_left();
}

// ---- 11. Events -------------------------------------------------------------------------

/// `strata events` in the background; its lines collected by a thread.
struct Events {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Events {
    /// `strata events FILTERS...`.
    fn start(sock: &str, filters: &[&str]) -> Events {
        let mut child = Command::new(BIN)
            .args(["--address", sock, "events"])
            .args(filters)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { return };
                sink.lock().unwrap().push(l);
            }
        });
        Events { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn wait_line(&self, pred: impl Fn(&str) -> bool, what: &str) {
        wait_for(
            || format!("event {what}: {:#?}", self.lines()),
            || self.lines().iter().any(|l| pred(l)).then_some(()),
        );
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The topic of an event line (`<ts> <namespace> <topic> k=v...`).
fn topic(line: &str) -> &str {
    line.split_whitespace().nth(2).unwrap_or("")
}

fn has_field(line: &str, kv: &str) -> bool {
    line.split_whitespace().any(|f| f == kv)
}

#[test]
fn events_follow_the_lifecycle() {
    let env = Env::new("srun11");
    let image = env.busybox();
    let mut marker = Tar::new();
    marker.file("marker", b"marker\n");
    let marker = Image::new(vec![Layer::new(marker.finish(), Compression::Gzip)]).build();
    let events = Events::start(env.sock(), &[]);
    // The subscription is in place once a pull made after it shows (a new tag each
    // time, in case pulling a known image again published nothing).
    let mut n = 0;
    wait_for(
        || format!("events never showed a pull: {:#?}", events.lines()),
        || {
            n += 1;
            let marker = env.push(&format!("marker:{n}"), &marker);
            env.ok(&["pull", "--plain-http", &marker]);
            std::thread::sleep(Duration::from_millis(200));
            events
                .lines()
                .iter()
                .any(|l| topic(l) == "/images/pull")
                .then_some(())
        },
    );

    env.ok(&["pull", "--plain-http", &image]);
    events.wait_line(
        |l| topic(l) == "/images/pull" && has_field(l, &format!("name={image}")),
        "/images/pull of busybox",
    );
    // A commit through the snapshots API.
    env.ok(&["snapshots", "prepare", "ev-active"]);
    env.ok(&["snapshots", "commit", "ev-committed", "ev-active"]);
    events.wait_line(
        |l| {
            topic(l) == "/snapshot/commit"
                && has_field(l, "key=ev-active")
                && has_field(l, "name=ev-committed")
        },
        "/snapshot/commit of ev-active",
    );
    env.ok(&["snapshots", "rm", "ev-committed"]);

    let out = env.run(&["--rm", "--name", "ev", &image, "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    events.wait_line(
        |l| topic(l) == "/containers/delete" && has_field(l, "id=ev"),
        "/containers/delete of ev",
    );
    let lines = events.lines();
    let ours: Vec<&String> = lines
        .iter()
        .filter(|l| has_field(l, "id=ev") || has_field(l, "container_id=ev"))
        .collect();
    for l in &ours {
        assert_eq!(l.split_whitespace().nth(1), Some("default"), "{l}");
    }
    let want = [
        "/containers/create",
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
        "/containers/delete",
    ];
    let mut it = ours.iter();
    for w in want {
        assert!(
            it.any(|l| topic(l) == w),
            "{w} missing or out of order in {ours:#?}"
        );
    }
    let exit = ours.iter().find(|l| topic(l) == "/tasks/exit").unwrap();
    assert!(has_field(exit, "exit_status=3"), "{exit}");
    let start = ours.iter().find(|l| topic(l) == "/tasks/start").unwrap();
    assert!(
        !has_field(start, "pid=0"),
        "/tasks/start without a pid: {start}"
    );

    // A filter narrows the stream to one topic.
    let filtered = Events::start(env.sock(), &["topic==\"/tasks/exit\""]);
    wait_for(
        || format!("filtered events: {:#?}", filtered.lines()),
        || {
            let out = env.run(&["--rm", &image, "sh", "-c", "exit 4"]);
            assert_eq!(out.status.code(), Some(4), "{}", show(&out));
            filtered
                .lines()
                .iter()
                .any(|l| has_field(l, "exit_status=4"))
                .then_some(())
        },
    );
    for l in filtered.lines() {
        assert_eq!(topic(&l), "/tasks/exit", "{l}");
    }
}

#[test]
fn pause_and_resume_freeze_and_thaw_the_container() {
    let env = Env::new("srun12");
    let image = env.busybox();
    let out = env.wd().join("ticks");
    std::fs::create_dir(&out).unwrap();
    let mount = format!("{}:/ticks", out.display());
    env.run_ok(&[
        "-d",
        "--name",
        "p",
        "--mount",
        &mount,
        &image,
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i >/ticks/n; sleep 0.05; done",
    ]);
    env.wait_status("p", "running");
    let ticks = || std::fs::read_to_string(out.join("n")).unwrap_or_default();
    wait_for(
        || "the first tick".into(),
        || (!ticks().is_empty()).then_some(()),
    );
    env.ok(&["pause", "p"]);
    env.wait_status("p", "paused");
    // Frozen: the counter stays put (a second pause is refused, not an error that kills it).
    let frozen = ticks();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ticks(), frozen, "the counter moved while paused");
    let again = env.cli(&["pause", "p"]);
    assert!(!again.status.success(), "{}", show(&again));
    env.ok(&["resume", "p"]);
    env.wait_status("p", "running");
    wait_for(
        || format!("the counter to move past {frozen:?}"),
        || (ticks() != frozen).then_some(()),
    );
    env.ok(&["kill", "--signal", "KILL", "p"]);
    env.wait_status("p", "exited (137)");
    env.ok(&["rm", "p"]);
    env.assert_nothing_left();
}

#[test]
fn exec_processes_are_found_again_after_a_daemon_restart() {
    let mut env = Env::new("srun13");
    let image = env.busybox();
    env.run_ok(&["-d", "--name", "x", &image, "sleep", "1000"]);
    env.wait_status("x", "running");
    env.ok(&[
        "exec",
        "-d",
        "--exec-id",
        "long",
        "x",
        "sh",
        "-c",
        "echo started; sleep 1000",
    ]);
    env.ok(&[
        "exec",
        "-d",
        "--exec-id",
        "quick",
        "x",
        "sh",
        "-c",
        "echo quick; exit 6",
    ]);
    // A followed log ends once the exec has exited.
    env.ok(&["logs", "-f", "--exec-id", "quick", "x"]);

    env.d.kill9();
    env.d.restart(&[]);
    env.wait_status("x", "running");
    // The finished exec is known with its exit, not an unknown id.
    let k = env.cli(&["kill", "--exec-id", "quick", "x"]);
    assert!(!k.status.success(), "{}", show(&k));
    assert!(
        String::from_utf8_lossy(&k.stderr).contains("already finished"),
        "{}",
        show(&k)
    );
    let unknown = env.cli(&["kill", "--exec-id", "never", "x"]);
    assert!(!unknown.status.success(), "{}", show(&unknown));
    assert!(
        !String::from_utf8_lossy(&unknown.stderr).contains("already finished"),
        "{}",
        show(&unknown)
    );
    // The running one can still be signalled, and its exit is heard: a followed log ends.
    env.ok(&["kill", "--signal", "KILL", "--exec-id", "long", "x"]);
    let logs = env.ok(&["logs", "-f", "--exec-id", "long", "x"]);
    assert_eq!(stdout(&logs), "started\n", "{}", show(&logs));
    let quick = env.ok(&["logs", "--exec-id", "quick", "x"]);
    assert_eq!(stdout(&quick), "quick\n", "{}", show(&quick));

    env.ok(&["rm", "-f", "x"]);
    env.assert_nothing_left();
}

// ---- Lazy layers -------------------------------------------------------------------------

#[test]
fn lazy_run_starts_without_downloading_the_estargz_layer() {
    let env = Env::new("srunlazy");
    let (built, estargz) = images::lazy_busybox();
    let image = env.push("lazybox:1", &built);
    let out = stdout(&env.ok(&["pull", "--lazy", &image]));
    assert!(
        out.contains(&format!("layer {} lazy", &estargz[7..19])),
        "{out}"
    );
    let plain = &built.blobs[1].0;
    assert!(
        out.contains(&format!("layer {} unpacked", &plain[7..19])),
        "{out}"
    );
    // The container runs on the lazy base and the unpacked layer over it.
    let got = env.run_ok(&[
        "--rm",
        "--lazy",
        &image,
        "sh",
        "-c",
        "cat /etc/motd; ls /bin/busybox",
    ]);
    assert_eq!(got, "lazy hello\n/bin/busybox\n");
    // The eStargz blob never entered the content store; the ordinary one did.
    let blobs = stdout(&env.ok(&["content", "ls", "-q"]));
    assert!(!blobs.contains(&estargz), "{blobs}");
    assert!(blobs.contains(plain.as_str()), "{blobs}");
    // Mixed in the other order of preference: the same image on overlayfs unpacks both.
    let out = stdout(&env.ok(&["pull", "--snapshotter", "overlayfs", &image]));
    assert!(!out.contains(" lazy "), "{out}");
    env.assert_nothing_left();
}

#[test]
fn convert_to_estargz_then_run_lazily() {
    let env = Env::new("srunconv");
    let mut t = Tar::new();
    t.dir("etc").file("etc/motd", b"converted hello\n");
    let plain = Image::new(vec![
        Layer::new(images::busybox_tar(&Passwd::Default), Compression::Gzip),
        Layer::new(t.finish(), Compression::Zstd),
    ])
    .config(images::busybox_config())
    .build();
    let src = env.push("plainbox:1", &plain);
    let dst = format!("{}/lazybox:estargz", env.reg.hostport);
    let list = env.wd().join("prefetch.txt");
    std::fs::write(&list, "/bin/busybox\n# a comment\netc/motd\n").unwrap();
    let out = stdout(&env.ok(&[
        "convert",
        "--estargz",
        "--prefetch-from",
        list.to_str().unwrap(),
        &src,
        &dst,
    ]));
    assert!(out.contains(&format!("{dst}: converted sha256:")), "{out}");
    assert_eq!(out.matches(" toc sha256:").count(), 2, "{out}");

    // Every layer of the converted image is lazy; none is downloaded.
    let pulled = stdout(&env.ok(&["pull", "--lazy", &dst]));
    assert_eq!(pulled.matches(" lazy ").count(), 2, "{pulled}");
    let got = env.run_ok(&["--rm", "--lazy", &dst, "cat", "/etc/motd"]);
    assert_eq!(got, "converted hello\n");
    let blobs = stdout(&env.ok(&["content", "ls", "-q"]));
    for l in out.lines().filter(|l| l.starts_with("layer ")) {
        let converted = l.split_whitespace().nth(3).unwrap();
        assert!(
            !blobs.contains(converted),
            "{converted} downloaded: {blobs}"
        );
    }
    // The converted image is an ordinary image too: unpacked in full on overlayfs.
    let got = env.run_ok(&[
        "--rm",
        "--snapshotter",
        "overlayfs",
        &dst,
        "cat",
        "/etc/motd",
    ]);
    assert_eq!(got, "converted hello\n");
    env.assert_nothing_left();
}

/// Pids of the lazy layer servers of this test's daemon.
fn lazy_servers(wd: &Path) -> Vec<i32> {
    let wd = wd.to_str().unwrap().to_owned();
    processes_mentioning(&wd)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"lazy-serve"))
        })
        .collect()
}

#[test]
fn lazy_mounts_survive_a_kill9_of_the_daemon() {
    let mut env = Env::new("srunlazy9");
    let (built, _) = images::lazy_busybox();
    let image = env.push("lazybox:k9", &built);
    let signal = env.wd().join("signal");
    std::fs::create_dir(&signal).unwrap();
    let mount = format!("{}:/signal", signal.display());
    // Reads and hashes files of the lazy layer in a loop, saying when anything differs
    // or fails; counts its rounds.
    let script = "files='/bin/busybox /etc/passwd /etc/group /etc/motd'; \
        first=$(busybox md5sum $files) || echo READFAIL; n=0; \
        while [ ! -e /signal/stop ]; do \
          cur=$(busybox md5sum $files) || echo READFAIL; \
          [ \"$cur\" = \"$first\" ] || echo DIFF; \
          n=$((n+1)); echo $n > /signal/rounds; \
        done; echo rounds $n";
    env.run_ok(&[
        "-d", "--lazy", "--name", "reader", "--mount", &mount, &image, "sh", "-c", script,
    ]);
    env.wait_status("reader", "running");
    let servers = lazy_servers(env.wd());
    assert_eq!(servers.len(), 1, "one server per lazy layer: {servers:?}");
    let rounds = || {
        std::fs::read_to_string(signal.join("rounds"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };

    env.d.kill9();
    // With the daemon gone the page cache is dropped: the reads go to FUSE again.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let before = rounds();
    wait_for(
        || format!("the reader to go on past round {before}"),
        || (rounds() > before + 20).then_some(()),
    );
    assert_eq!(
        lazy_servers(env.wd()),
        servers,
        "the server outlives the daemon"
    );

    // A restarted daemon adopts the mount instead of serving it again.
    env.d.restart(&[]);
    env.wait_status("reader", "running");
    assert_eq!(lazy_servers(env.wd()), servers);
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let before = rounds();
    wait_for(
        || format!("the reader to go on past round {before}"),
        || (rounds() > before + 20).then_some(()),
    );
    std::fs::write(signal.join("stop"), b"").unwrap();
    env.wait_status("reader", "exited (0)");
    let logs = stdout(&env.ok(&["logs", "reader"]));
    assert!(logs.contains("rounds "), "{logs}");
    assert!(
        !logs.contains("READFAIL") && !logs.contains("DIFF"),
        "{logs}"
    );
    let errs = stderr(&env.ok(&["logs", "reader"]));
    assert!(errs.trim().is_empty(), "the reader saw errors: {errs}");

    // Removing the image's snapshots unmounts the lazy layer; its server exits.
    env.ok(&["rm", "reader"]);
    env.ok(&["images", "rm", &image]);
    env.ok(&["gc"]);
    wait_for(
        || "the lazy layer's server to exit".to_owned(),
        || lazy_servers(env.wd()).is_empty().then_some(()),
    );
    env.assert_nothing_left();
}

#[test]
fn the_snapshots_api_answers_the_remote_handshake_with_a_lazy_layer() {
    use strata_snapshotter::estargz::{TOC_DIGEST_ANNOTATION, WriteOptions, write_estargz};
    let env = Env::new("srunlazyapi");
    let base = images::busybox_tar(&Passwd::Default);
    let mut blob = Vec::new();
    let w = write_estargz(&base[..], &mut blob, &WriteOptions::default()).unwrap();
    let digest = env.reg.push_blob("handshake", &blob);
    let chain = w.diff_id.to_string();
    // What `ctr-remote images rpull` sends for a layer (stargz's label family).
    let label = |k: &str, v: &str| format!("{k}={v}");
    let reference = format!("{}/handshake:1", env.reg.hostport);
    let labels = [
        label("containerd.io/snapshot.ref", &chain),
        label(TOC_DIGEST_ANNOTATION, &w.toc_digest.to_string()),
        label("containerd.io/snapshot/remote/stargz.reference", &reference),
        label("containerd.io/snapshot/remote/stargz.digest", &digest),
    ];
    let mut args = vec!["snapshots", "--snapshotter", "lazy", "prepare"];
    for l in &labels {
        args.extend(["--label", l.as_str()]);
    }
    let key = format!("extract-1 {chain}");
    args.push(&key);
    let out = env.cli(&args);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("AlreadyExists"), "{}", show(&out));
    let info = stdout(&env.ok(&["snapshots", "--snapshotter", "lazy", "info", &chain]));
    assert!(info.contains("containerd.io/snapshot/remote"), "{info}");
    assert_eq!(lazy_servers(env.wd()).len(), 1);
    // The committed layer is the FUSE mount, reading through the registry.
    let snaps = env.d.root.join("snapshots/lazy/snapshots");
    let fs: Vec<PathBuf> = std::fs::read_dir(&snaps)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("fs"))
        .filter(|p| p.join("etc").exists())
        .collect();
    assert_eq!(fs.len(), 1, "{fs:?}");
    assert_eq!(
        std::fs::read_to_string(fs[0].join("etc/passwd")).unwrap(),
        images::PASSWD
    );
    env.ok(&["snapshots", "--snapshotter", "lazy", "rm", &chain]);
    wait_for(
        || "the lazy layer's server to exit".to_owned(),
        || lazy_servers(env.wd()).is_empty().then_some(()),
    );
}
