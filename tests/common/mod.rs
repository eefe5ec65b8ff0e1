//! Helpers for tests that run the real `strata` binary.

#![allow(dead_code, unreachable_pub)]

pub mod images;
pub mod oci;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_content::GrpcStore;

pub const BIN: &str = env!("CARGO_BIN_EXE_strata");

/// A daemon process on a temp root.
pub struct Daemon {
    pub root: PathBuf,
    pub sock: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `strata serve` and waits for its socket.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Daemon {
        let root = dir.join("root");
        let sock = dir.join("run/strata.sock");
        let log = dir.join(format!("daemon-{}.log", std::process::id()));
        let mut d = Daemon {
            root,
            sock,
            child: None,
            log,
        };
        d.restart(env);
        d
    }

    /// Starts the daemon, stopping (kill -9) one still running first.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        self.kill9();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--root"])
            .arg(&self.root)
            .arg("--address")
            .arg(&self.sock)
            .env("STRATA_LOG", "debug")
            .env_remove("STRATA_FAILPOINT")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn strata serve"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.sock).is_ok() {
                // Wait until the store answers too.
                if self.cli(&["content", "ls", "-q"]).status.success() {
                    return;
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited early with {st}: {}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a CLI command against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--address")
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("run strata")
    }

    pub fn cli_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = Command::new(BIN)
            .arg("--address")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let t = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        t.join().unwrap();
        out
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself (e.g. at a failpoint).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(Instant::now() < deadline, "daemon did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("running");
        // SAFETY: plain kill(2) on our child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        self.wait_exit(Duration::from_secs(20))
    }

    /// A gRPC client of this daemon (content + leases), driven on `rt`.
    pub fn client(&self, rt: &tokio::runtime::Runtime) -> GrpcStore {
        let channel = rt
            .block_on(strata_proto::transport::connect_unix(&self.sock))
            .unwrap();
        GrpcStore::new(channel, rt.handle().clone())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn runtime() -> Arc<tokio::runtime::Runtime> {
    Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The harness library (tests/harness/lib.sh) of the checkout being tested, found at run
/// time (cargo sets `CARGO_MANIFEST_DIR` for test processes): a test binary reused from a
/// shared target dir may have been compiled in another checkout.
pub fn harness_lib() -> String {
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    format!("{dir}/tests/harness/lib.sh")
}

/// Runs a harness function with `env` set; returns its trimmed stdout, failing the test
/// when it fails.
pub fn harness(env: &[(&str, &str)], args: &[&str]) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("source {}; \"$@\"", harness_lib()))
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

/// Runs the harness's `stop_all WD` when dropped: containerd and its shims, the registry,
/// every mount under WD.
pub struct StopAll<'a>(pub &'a Path);

impl Drop for StopAll<'_> {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; stop_all {}",
                harness_lib(),
                self.0.display()
            ))
            .output();
    }
}
