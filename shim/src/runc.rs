//! The runc driver: one method per `runc` subcommand the shim needs, and the reaping
//! helpers that give the shim its container's exit status.
//!
//! ```text
//! Runc { binary, root, log }
//!   create(id, bundle, CreateOpts)  runc create --bundle B [--pid-file P] [--console-socket S] ID
//!   start / pause / resume          runc start|pause|resume ID
//!   state(id) -> State              runc state ID            (JSON, read with a size bound)
//!   ps(id) -> Vec<Pid>              runc ps --format json ID
//!   exec(id, process.json, ...)     runc exec --detach --process F --pid-file P ID
//!   exec_with(id, process.json, o)  ... [--console-socket S] ID
//!   kill(id, signal, all)           runc kill [--all] ID SIGNUM
//!   delete(id, force)               runc delete [--force] ID
//! ```
//!
//! Every call runs `runc --root <root> --log <file> --log-format json ...`. The container
//! id is a [`ContainerId`], already checked against containerd's identifier rules, so no
//! id can name a path outside `root` (runc keeps its state in `<root>/<id>`).
//!
//! # Errors
//!
//! When runc fails, the error's context names the subcommand and container, and its
//! `source()` is runc's own message: the `error`-level entries runc wrote to its log
//! (falling back to its stderr when it wrote none), the last [`MAX_MESSAGE`] bytes. The
//! log is used because `create` and `exec` hand runc's stderr to the container. The kind
//! comes from runc's message: `container does not exist` is `NotFound`, `already exists`
//! is `AlreadyExists`, a container in the wrong state (`not running`, `not paused`,
//! `cannot delete ... not stopped`) is `FailedPrecondition`, a bundle without a
//! `config.json` is `InvalidArgument`; anything else is `Internal`. A runc binary that
//! cannot be started is `Unavailable`.
//!
//! With [`Runc::log`] set, runc appends to that file and the message is taken from what
//! this call appended; without it each call gets its own log file in `root`, removed
//! afterwards (runc skips plain files in its root).
//!
//! # Exit status: why the caller must be a child subreaper
//!
//! `runc create` forks `runc init`, which forks again to enter the container's PID
//! namespace; the container's init ends up a child of the `runc create` process, which
//! exits as soon as the container is created. The orphaned init is then re-parented to
//! the nearest ancestor that is a *child subreaper*, or to the host's PID 1. Only its
//! parent can `waitpid` it, so only a subreaper learns its exit status, and nobody else
//! can reap its zombie. `runc exec --detach` is the same. The shim therefore calls
//! [`become_subreaper`] once, before its first `create`, and gets the status with
//! [`wait_exit`] on the pid that `create` (or `exec`) returned — what containerd's
//! `containerd-shim-runc-v2` does.
//!
//! A subreaper also inherits every other orphan below it; the shim's reaper must collect
//! those too (or they stay zombies until the shim exits).

use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as StdStdio};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
pub use nix::unistd::Pid;
use serde::Deserialize;

use crate::{Error, ErrorKind, Result};
use strata_proto::ident::ContainerId;

/// The most of runc's error message kept in an error, in bytes (the end of it).
pub const MAX_MESSAGE: usize = 4096;

/// The most of `runc state` / `runc ps` output read.
pub const MAX_OUTPUT: u64 = 1 << 20;

/// The longest pid file read.
const MAX_PID_FILE: u64 = 64;

/// A runc binary and the state directory it keeps its containers in.
#[derive(Clone, Debug)]
pub struct Runc {
    /// The runc binary (a bare name is looked up on `PATH`).
    pub binary: PathBuf,
    /// runc's `--root`: its state directory, created mode 0700 when missing.
    pub root: PathBuf,
    /// runc's `--log`, appended to by every call; `None` for a log file per call.
    pub log: Option<PathBuf>,
}

/// Where one of a container's standard streams goes.
#[derive(Debug, Default)]
pub enum Io {
    /// The calling process's own stream.
    Inherit,
    /// `/dev/null`.
    #[default]
    Null,
    /// A file, pipe end or socket; closed in the caller once runc has it.
    Fd(OwnedFd),
}

impl Io {
    fn into_std(self) -> StdStdio {
        match self {
            Io::Inherit => StdStdio::inherit(),
            Io::Null => StdStdio::null(),
            Io::Fd(fd) => StdStdio::from(fd),
        }
    }
}

/// A container process's stdin, stdout and stderr (ignored with a console socket).
///
/// runc passes them to the process as they are, and writes its own errors to the same
/// stderr as well as to its log.
#[derive(Debug, Default)]
pub struct Stdio {
    /// Standard input.
    pub stdin: Io,
    /// Standard output.
    pub stdout: Io,
    /// Standard error.
    pub stderr: Io,
}

impl Stdio {
    /// All three to `/dev/null`.
    pub fn null() -> Self {
        Stdio::default()
    }

    /// All three shared with the calling process.
    pub fn inherit() -> Self {
        Stdio {
            stdin: Io::Inherit,
            stdout: Io::Inherit,
            stderr: Io::Inherit,
        }
    }
}

/// Options of [`Runc::create`].
#[derive(Debug, Default)]
pub struct CreateOpts {
    /// Where runc writes the init's pid; `None` to learn it from `runc state`.
    pub pid_file: Option<PathBuf>,
    /// The init's standard streams.
    pub stdio: Stdio,
    /// A unix socket runc sends the terminal's master fd to (the spec must ask for a
    /// terminal).
    pub console_socket: Option<PathBuf>,
}

/// Options of [`Runc::exec_with`].
#[derive(Debug)]
pub struct ExecOpts {
    /// Where runc writes the process's pid.
    pub pid_file: PathBuf,
    /// The process's standard streams (ignored with a console socket).
    pub stdio: Stdio,
    /// A unix socket runc sends the terminal's master fd to (the process JSON must ask
    /// for a terminal).
    pub console_socket: Option<PathBuf>,
}

/// A container's status as runc reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created.
    Creating,
    /// Created; its init waits for `start`.
    Created,
    /// Its process runs.
    Running,
    /// Frozen by `pause`.
    Paused,
    /// Its init exited; it waits for `delete`.
    Stopped,
}

/// The output of `runc state`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct State {
    /// The container id.
    pub id: String,
    /// The init's pid on the host; `None` once stopped (runc reports 0).
    #[serde(deserialize_with = "pid_or_none")]
    pub pid: Option<Pid>,
    /// Its status.
    pub status: Status,
    /// The bundle directory it was created from.
    pub bundle: PathBuf,
}

fn pid_or_none<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Pid>, D::Error> {
    let raw = i32::deserialize(d)?;
    Ok((raw > 0).then(|| Pid::from_raw(raw)))
}

/// How a reaped process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal (this number) killed it.
    Signal(i32),
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// What runc said when it failed: the `source()` of a driver error.
#[derive(Debug)]
pub struct RuncFailure {
    /// runc's exit status.
    pub status: std::process::ExitStatus,
    /// runc's message (its last [`MAX_MESSAGE`] bytes).
    pub message: String,
}

impl fmt::Display for RuncFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "runc failed ({}): {}", self.status, self.message)
    }
}

impl std::error::Error for RuncFailure {}

/// Makes the calling process a child subreaper (`PR_SET_CHILD_SUBREAPER`), so that the
/// container processes runc leaves behind become its children; see the module docs.
///
/// # Errors
/// `Internal` if `prctl` fails.
pub fn become_subreaper() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| {
        Error::new(ErrorKind::Internal, "prctl(PR_SET_CHILD_SUBREAPER)").with_source(e)
    })
}

/// Waits for the child `pid` to end and reaps it.
///
/// # Errors
/// `FailedPrecondition` if `pid` is not a child of this process (for a container's init:
/// the process was not a subreaper when runc exited, see [`become_subreaper`], or it was
/// reaped already); `Internal` for another `waitpid` failure.
pub fn wait_exit(pid: Pid) -> Result<ExitStatus> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(ExitStatus::Signal(signal as i32)),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => {
                return Err(Error::new(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "process {pid} is not a child to wait for (is this process a subreaper?)"
                    ),
                )
                .with_source(Errno::ECHILD));
            }
            Err(e) => {
                return Err(
                    Error::new(ErrorKind::Internal, format!("waitpid {pid}")).with_source(e)
                );
            }
        }
    }
}

/// The log runc writes for one call and where this call's part of it starts.
struct CallLog {
    path: PathBuf,
    start: u64,
    remove: bool,
}

impl CallLog {
    /// runc's message: the `error`-level entries this call logged, else `stderr`.
    fn message(&self, stderr: &[u8]) -> String {
        let logged = File::open(&self.path).and_then(|mut f| {
            let len = f.metadata()?.len();
            // Error entries are short; the last 64 KiB holds the ones that matter.
            let from = self.start.max(len.saturating_sub(64 * 1024));
            f.seek(SeekFrom::Start(from))?;
            let mut buf = Vec::new();
            f.take(64 * 1024).read_to_end(&mut buf)?;
            Ok(buf)
        });
        let from_log = logged.map(|b| log_errors(&b)).unwrap_or_default();
        let text = if from_log.is_empty() {
            String::from_utf8_lossy(stderr).trim().to_owned()
        } else {
            from_log
        };
        tail(&text, MAX_MESSAGE)
    }
}

impl Drop for CallLog {
    fn drop(&mut self) {
        if self.remove {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The messages of the `error` and `fatal` entries of runc's JSON log, one a line.
fn log_errors(log: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        level: String,
        #[serde(default)]
        msg: String,
    }
    let mut out = Vec::new();
    for line in log.split(|&b| b == b'\n') {
        if let Ok(e) = serde_json::from_slice::<Entry>(line)
            && matches!(e.level.as_str(), "error" | "fatal")
            && !e.msg.is_empty()
        {
            out.push(e.msg);
        }
    }
    out.join("\n")
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn tail(s: &str, max: usize) -> String {
    let mut from = s.len().saturating_sub(max);
    while !s.is_char_boundary(from) {
        from += 1;
    }
    s[from..].to_owned()
}

/// The error kind runc's message means.
fn classify(message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    if m.contains("container does not exist") {
        ErrorKind::NotFound
    } else if m.contains("already exists") {
        ErrorKind::AlreadyExists
    } else if m.contains("json specification file") || m.contains("config.json") {
        ErrorKind::InvalidArgument
    } else if [
        "not running",
        "not paused",
        "not stopped",
        "still running",
        "container paused",
        "cannot start",
        "cannot exec",
    ]
    .iter()
    .any(|p| m.contains(p))
    {
        ErrorKind::FailedPrecondition
    } else {
        ErrorKind::Internal
    }
}

/// Reads at most `max` bytes of `r`.
fn read_bounded(r: impl Read, max: u64, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("reading {what}")).with_source(e))?;
    if buf.len() as u64 > max {
        return Err(Error::new(
            ErrorKind::ResourceExhausted,
            format!("{what} is longer than {max} bytes"),
        ));
    }
    Ok(buf)
}

/// Reads a pid file runc wrote.
fn read_pid_file(path: &Path) -> Result<Pid> {
    let what = format!("pid file {}", path.display());
    let f = File::open(path)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("opening {what}")).with_source(e))?;
    let raw = read_bounded(f, MAX_PID_FILE, &what)?;
    let pid = std::str::from_utf8(&raw)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|&p| p > 0)
        .ok_or_else(|| Error::new(ErrorKind::Internal, format!("{what} does not hold a pid")))?;
    Ok(Pid::from_raw(pid))
}

impl Runc {
    /// The `runc` on `PATH`, keeping its state in `root`, a log file per call.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Runc {
            binary: PathBuf::from("runc"),
            root: root.into(),
            log: None,
        }
    }

    /// `runc create`: sets up the container from `bundle` (holding `config.json`); its
    /// init waits for [`start`](Self::start). Returns the init's pid: a child of this
    /// process if it is a subreaper (see the module docs).
    ///
    /// # Errors
    /// `AlreadyExists` if `id` is taken; `InvalidArgument` for a bundle without a
    /// `config.json`; others as the module docs say.
    pub fn create(&self, id: &ContainerId, bundle: &Path, opts: CreateOpts) -> Result<Pid> {
        let mut args = vec!["create".into(), "--bundle".into(), bundle.into()];
        if let Some(p) = &opts.pid_file {
            args.extend(["--pid-file".into(), p.into()]);
        }
        if let Some(s) = &opts.console_socket {
            args.extend(["--console-socket".into(), s.into()]);
        }
        args.push(id.as_str().into());
        self.run_with_stdio("create", id, &args, opts.stdio)?;
        match &opts.pid_file {
            Some(p) => read_pid_file(p),
            None => self.state(id)?.pid.ok_or_else(|| {
                Error::new(
                    ErrorKind::Internal,
                    format!("runc state {id}: no pid after create"),
                )
            }),
        }
    }

    /// `runc start`: runs the created container's process.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` if it is not `created`.
    pub fn start(&self, id: &ContainerId) -> Result<()> {
        self.run("start", id, &["start".into(), id.as_str().into()])
            .map(drop)
    }

    /// `runc state`.
    ///
    /// # Errors
    /// `NotFound` if there is no such container; `ResourceExhausted` if runc prints more
    /// than [`MAX_OUTPUT`] bytes.
    pub fn state(&self, id: &ContainerId) -> Result<State> {
        let out = self.run("state", id, &["state".into(), id.as_str().into()])?;
        serde_json::from_slice(&out).map_err(|e| {
            Error::new(ErrorKind::Internal, format!("parsing runc state {id}")).with_source(e)
        })
    }

    /// `runc kill`: sends `signal` to the container's init, or with `all` to every
    /// process in it.
    ///
    /// A PID namespace's init gets only the signals it handles (and SIGKILL): SIGTERM to
    /// an init without a handler does nothing.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` if it is not running (or created, or paused).
    pub fn kill(&self, id: &ContainerId, signal: Signal, all: bool) -> Result<()> {
        let mut args = vec!["kill".into()];
        if all {
            args.push("--all".into());
        }
        args.extend([id.as_str().into(), (signal as i32).to_string().into()]);
        self.run("kill", id, &args).map(drop)
    }

    /// `runc pause`: freezes every process of the container.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` if it is not running.
    pub fn pause(&self, id: &ContainerId) -> Result<()> {
        self.run("pause", id, &["pause".into(), id.as_str().into()])
            .map(drop)
    }

    /// `runc resume`: thaws a paused container.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` if it is not paused.
    pub fn resume(&self, id: &ContainerId) -> Result<()> {
        self.run("resume", id, &["resume".into(), id.as_str().into()])
            .map(drop)
    }

    /// `runc ps --format json`: the host pids of the container's processes.
    ///
    /// # Errors
    /// `NotFound`; `ResourceExhausted` past [`MAX_OUTPUT`] bytes of output.
    pub fn ps(&self, id: &ContainerId) -> Result<Vec<Pid>> {
        let args = [
            "ps".into(),
            "--format".into(),
            "json".into(),
            id.as_str().into(),
        ];
        let out = self.run("ps", id, &args)?;
        let pids: Option<Vec<i32>> = serde_json::from_slice(&out).map_err(|e| {
            Error::new(ErrorKind::Internal, format!("parsing runc ps {id}")).with_source(e)
        })?;
        Ok(pids
            .unwrap_or_default()
            .into_iter()
            .map(Pid::from_raw)
            .collect())
    }

    /// `runc exec --detach`: starts the process described by the OCI process JSON at
    /// `process` inside the running container and returns its pid (also written to
    /// `pid_file`). runc does not wait for it: like a container's init, it is re-parented
    /// to this process if it is a subreaper, and [`wait_exit`] gives its status.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` if the container is not running; `Internal` for
    /// a bad process JSON (runc's message says what).
    pub fn exec(
        &self,
        id: &ContainerId,
        process: &Path,
        pid_file: &Path,
        stdio: Stdio,
    ) -> Result<Pid> {
        self.exec_with(
            id,
            process,
            ExecOpts {
                pid_file: pid_file.to_owned(),
                stdio,
                console_socket: None,
            },
        )
    }

    /// [`exec`](Self::exec) with a console socket: for a process JSON that asks for a
    /// terminal, runc sends the terminal's master to `opts.console_socket`.
    ///
    /// # Errors
    /// As [`exec`](Self::exec).
    pub fn exec_with(&self, id: &ContainerId, process: &Path, opts: ExecOpts) -> Result<Pid> {
        let mut args = vec![
            "exec".into(),
            "--detach".into(),
            "--process".into(),
            process.into(),
            "--pid-file".into(),
            opts.pid_file.clone().into(),
        ];
        if let Some(s) = &opts.console_socket {
            args.extend(["--console-socket".into(), s.into()]);
        }
        args.push(id.as_str().into());
        self.run_with_stdio("exec", id, &args, opts.stdio)?;
        read_pid_file(&opts.pid_file)
    }

    /// `runc delete`: removes a stopped container; with `force`, kills it first if it
    /// still runs, and succeeds if it does not exist.
    ///
    /// # Errors
    /// `NotFound` (without `force`); `FailedPrecondition` if it runs (without `force`).
    pub fn delete(&self, id: &ContainerId, force: bool) -> Result<()> {
        let mut args = vec!["delete".into()];
        if force {
            args.push("--force".into());
        }
        args.push(id.as_str().into());
        self.run("delete", id, &args).map(drop)
    }

    /// Creates the root and the log this call uses.
    fn call_log(&self) -> Result<CallLog> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("creating runc root {}", self.root.display()),
                )
                .with_source(e)
            })?;
        if let Some(path) = &self.log {
            let start = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            return Ok(CallLog {
                path: path.clone(),
                start,
                remove: false,
            });
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        loop {
            let name = format!(
                ".strata-runc-{}-{}.log",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let path = self.root.join(name);
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => {
                    return Ok(CallLog {
                        path,
                        start: 0,
                        remove: true,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        format!("creating runc log {}", path.display()),
                    )
                    .with_source(e));
                }
            }
        }
    }

    fn command(&self, log: &CallLog, args: &[std::ffi::OsString]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&log.path)
            .args(["--log-format", "json"])
            .args(args);
        cmd
    }

    fn spawn_error(&self, op: &str, id: &ContainerId, e: std::io::Error) -> Error {
        Error::new(
            ErrorKind::Unavailable,
            format!("runc {op} {id}: running {}", self.binary.display()),
        )
        .with_source(e)
    }

    fn failure(
        op: &str,
        id: &ContainerId,
        status: std::process::ExitStatus,
        message: String,
    ) -> Error {
        Error::new(classify(&message), format!("runc {op} {id}"))
            .with_source(RuncFailure { status, message })
    }

    /// Runs a subcommand whose output is runc's own: stdout read (bounded), stderr kept
    /// for the error message.
    fn run(&self, op: &str, id: &ContainerId, args: &[std::ffi::OsString]) -> Result<Vec<u8>> {
        let log = self.call_log()?;
        let mut child = self
            .command(&log, args)
            .stdin(StdStdio::null())
            .stdout(StdStdio::piped())
            .stderr(StdStdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(op, id, e))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            // Keep reading to the end so runc never blocks; remember the tail.
            let mut tail = Vec::new();
            let mut buf = [0u8; 4096];
            let mut stderr = stderr;
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * MAX_MESSAGE {
                    tail.drain(..tail.len() - MAX_MESSAGE);
                }
            }
            tail
        });
        let stdout = child.stdout.take().expect("stdout is piped");
        let out = read_bounded(stdout, MAX_OUTPUT, &format!("runc {op} {id} output"));
        if out.is_err() {
            let _ = child.kill();
        }
        let status = child.wait().map_err(|e| {
            Error::new(ErrorKind::Internal, format!("runc {op} {id}: waiting")).with_source(e)
        })?;
        let stderr = stderr.join().unwrap_or_default();
        // Output past the bound killed runc: that, not runc's status, is the error.
        let out = out?;
        if !status.success() {
            return Err(Self::failure(op, id, status, log.message(&stderr)));
        }
        Ok(out)
    }

    /// Runs a subcommand whose stdio is the container's.
    fn run_with_stdio(
        &self,
        op: &str,
        id: &ContainerId,
        args: &[std::ffi::OsString],
        stdio: Stdio,
    ) -> Result<()> {
        let log = self.call_log()?;
        let status = {
            // The command owns the caller's fds; it is dropped right after runc exits
            // so that this process keeps no copy of, say, a pipe's write end.
            let mut cmd = self.command(&log, args);
            cmd.stdin(stdio.stdin.into_std())
                .stdout(stdio.stdout.into_std())
                .stderr(stdio.stderr.into_std());
            let mut child = cmd.spawn().map_err(|e| self.spawn_error(op, id, e))?;
            drop(cmd);
            child.wait().map_err(|e| {
                Error::new(ErrorKind::Internal, format!("runc {op} {id}: waiting")).with_source(e)
            })?
        };
        if !status.success() {
            return Err(Self::failure(op, id, status, log.message(&[])));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_errors_keeps_error_entries_only() {
        let log = br#"{"level":"warning","msg":"ignored","time":"t"}
not json at all
{"level":"error","msg":"container does not exist","time":"t"}
{"level":"fatal","msg":"second","time":"t"}
"#;
        assert_eq!(log_errors(log), "container does not exist\nsecond");
        assert_eq!(log_errors(b""), "");
    }

    #[test]
    fn tail_is_bounded_and_utf8() {
        let s = "é".repeat(5000);
        let t = tail(&s, MAX_MESSAGE);
        assert!(t.len() <= MAX_MESSAGE);
        assert!(t.chars().all(|c| c == 'é'));
        assert_eq!(tail("short", MAX_MESSAGE), "short");
    }

    #[test]
    fn kinds_from_runc_messages() {
        for (msg, kind) in [
            ("container does not exist", ErrorKind::NotFound),
            (
                "container with given ID already exists",
                ErrorKind::AlreadyExists,
            ),
            (
                "JSON specification file config.json not found",
                ErrorKind::InvalidArgument,
            ),
            ("container not running", ErrorKind::FailedPrecondition),
            ("container not paused", ErrorKind::FailedPrecondition),
            (
                "cannot delete container x that is not stopped: running",
                ErrorKind::FailedPrecondition,
            ),
            ("something else broke", ErrorKind::Internal),
        ] {
            assert_eq!(classify(msg), kind, "{msg}");
        }
    }

    #[test]
    fn state_json() {
        let s: State = serde_json::from_str(
            r#"{"ociVersion":"1.0.2-dev","id":"c1","pid":42,"status":"created",
                "bundle":"/b","rootfs":"/b/rootfs","created":"2026-01-01T00:00:00Z","owner":""}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            State {
                id: "c1".into(),
                pid: Some(Pid::from_raw(42)),
                status: Status::Created,
                bundle: "/b".into(),
            }
        );
        let s: State =
            serde_json::from_str(r#"{"id":"c1","pid":0,"status":"stopped","bundle":"/b"}"#)
                .unwrap();
        assert_eq!((s.pid, s.status), (None, Status::Stopped));
        assert!(
            serde_json::from_str::<State>(r#"{"id":"c","pid":1,"status":"odd","bundle":"/"}"#)
                .is_err()
        );
    }

    #[test]
    fn bounded_read() {
        assert_eq!(read_bounded(&b"abc"[..], 3, "x").unwrap(), b"abc");
        let e = read_bounded(&b"abcd"[..], 3, "x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
    }
}
