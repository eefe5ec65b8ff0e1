//! The shim process: creates the container, copies its output into the frame log, reaps
//! its processes and saves their exit statuses, and serves [`Request`]s on `shim.sock`.
//!
//! Threads, all blocking (no async runtime: a shim per container must stay small):
//!
//! ```text
//! main        accept loop on shim.sock ──> one thread per connection (one request each)
//! copier      per output pipe / terminal master: read ──> frame ──> <name>.log
//! reaper      per process: waitid(WNOWAIT) ─> mark exiting ─> waitpid ─> join copiers
//!             ─> <name>.exit (tmp, fsync, rename, fsync dir) ─> wake waiters
//! ```
//!
//! Orphans: a subreaper inherits every orphan below it. With a PID namespace (what
//! `spec::generate` gives) the container's orphans go to its init, and all die with it;
//! only a container sharing the host's PID namespace can leave orphans to the shim, and
//! those stay zombies until the shim exits (reaping them would need one `waitpid(-1)`
//! loop that also owns runc's own children, which the runc driver waits for itself).
//!
//! Files: this one boots the shim and dispatches requests; `output` copies output into
//! frame logs, `console` receives terminals, `reaper` waits for exits and saves them.
//!
//! The process table is small: the init and the execs by id. The only lock held across a
//! blocking call is the init's phase lock (around `runc start`/`delete`) and a process's
//! state lock around `kill(2)`, so that a signal never reaches a pid reused after the
//! reaper collected it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use super::SocketPath;
use super::log::{STDERR, STDOUT, write_frame};
use super::protocol::{
    ExecReply, Exit, Handshake, MAX_LINE, PidsReply, Request, Response, StateReply, WireError,
};
use crate::runc::{
    CreateOpts, ExecOpts, ExitStatus, Io, Runc, Status, Stdio, become_subreaper, wait_exit,
};
use crate::{Error, ErrorKind, Result};
use strata_proto::ident::ContainerId;

mod console;
mod output;
mod reaper;

use console::{Console, set_window_size};
use output::{Drain, open_log, pipe, start_copiers};
use reaper::start_reaper;

/// How long a reaper waits for a process's output to drain after it exited. A process
/// that left children holding its stdout (possible without a PID namespace) must not
/// hold back its exit status for ever; the copiers keep copying after that.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the shim waits for runc to connect to a console socket after runc returned.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a blocked `wait` checks whether its client is still there.
const HANGUP_POLL: Duration = Duration::from_secs(1);

/// The stack of the shim's helper threads: they only copy and wait.
const THREAD_STACK: usize = 256 * 1024;

/// The shim's command line, parsed by the binary.
#[derive(Clone, Debug)]
pub struct Args {
    /// The container id (checked here, so a bad one is reported in the handshake).
    pub id: String,
    /// The strata namespace of the container (for the shim's log).
    pub namespace: String,
    /// The state directory: also the OCI bundle (`config.json`, `rootfs/`).
    pub state_dir: PathBuf,
    /// runc's `--root`.
    pub runc_root: PathBuf,
    /// The runc binary.
    pub runc_binary: PathBuf,
    /// A terminal of this width and height (columns, rows), or none.
    pub terminal: Option<(u16, u16)>,
}

/// The files of a state directory.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn socket(&self) -> PathBuf {
        self.path("shim.sock")
    }
    fn pid(&self) -> PathBuf {
        self.path("shim.pid")
    }
    /// Removes the shim's own files (not the logs and exit files: the daemon reads them).
    fn remove_shim_files(&self) {
        for p in [self.socket(), self.pid(), self.path("console.sock")] {
            let _ = fs::remove_file(p);
        }
    }
}

/// Runs the shim; returns the process's exit code (it only returns on failure: a
/// `delete` of the init ends the process from its connection thread).
pub fn main(args: &Args) -> i32 {
    // Own session: a daemon's process group (Ctrl-C, a group kill) never reaches us.
    // EPERM means the spawner made us a group leader already; a session of our own is
    // still what we want, but nothing else can be done about it.
    if let Err(e) = nix::unistd::setsid() {
        eprintln!("strata-shim: setsid: {e}");
    }
    // Every file and socket the shim creates is private to root.
    nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
    let files = Files {
        dir: args.state_dir.clone(),
    };
    eprintln!(
        "strata-shim {}: container {} in namespace {}, state {}",
        std::process::id(),
        args.id,
        args.namespace,
        args.state_dir.display()
    );
    match boot(args, &files) {
        Ok((shim, listener)) => {
            handshake(&Handshake::Ready {
                pid: shim.init.pid.as_raw() as u32,
            });
            serve(&shim, &listener);
            0
        }
        Err(e) => {
            eprintln!("strata-shim: {}", super::protocol::chain(&e));
            files.remove_shim_files();
            handshake(&Handshake::Failed {
                error: WireError::from_error(&e),
            });
            1
        }
    }
}

/// Writes the handshake line to stdout, then points stdout at `/dev/null` so that the
/// spawner's pipe closes.
fn handshake(h: &Handshake) {
    let mut line = serde_json::to_vec(h).expect("a handshake serializes");
    line.push(b'\n');
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
        eprintln!("strata-shim: writing the handshake: {e}");
    }
    match File::open("/dev/null") {
        Ok(null) => {
            if let Err(e) = nix::unistd::dup2_stdout(&null) {
                eprintln!("strata-shim: closing stdout: {e}");
            }
        }
        Err(e) => eprintln!("strata-shim: opening /dev/null: {e}"),
    }
}

/// The shim's state, shared by the connection threads.
struct Shim {
    id: ContainerId,
    files: Files,
    runc: Runc,
    init: Arc<Process>,
    phase: Mutex<Phase>,
    /// Execs by id; `None` while one is being created (the id is taken).
    execs: Mutex<HashMap<String, Option<Arc<Process>>>>,
}

/// Where the container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `runc create` done, `runc start` not.
    Created,
    /// Started.
    Started,
    /// Deleted: the shim is exiting.
    Deleted,
}

/// A process the shim reaps: the init or an exec.
struct Process {
    pid: Pid,
    exit_file: PathBuf,
    /// The terminal's master, for a process with a terminal.
    console: Option<File>,
    state: Mutex<ProcState>,
    exited: Condvar,
}

#[derive(Default)]
struct ProcState {
    /// It is a zombie about to be reaped (or reaped): no signal may be sent to its pid.
    exiting: bool,
    exit: Option<Exit>,
}

impl Process {
    fn lock(&self) -> MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exit(&self) -> Option<Exit> {
        self.lock().exit
    }

    /// Blocks until the exit status is saved.
    fn wait(&self) -> Exit {
        let mut s = self.lock();
        loop {
            if let Some(e) = s.exit {
                return e;
            }
            s = self.exited.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Blocks until the exit status is saved, or (`None`) until `client` hangs up: a
    /// daemon that restarts many times leaves no threads behind waiting for nobody.
    fn wait_for(&self, client: &UnixStream) -> Option<Exit> {
        let mut s = self.lock();
        loop {
            if let Some(e) = s.exit {
                return Some(e);
            }
            if hung_up(client) {
                return None;
            }
            s = self
                .exited
                .wait_timeout(s, HANGUP_POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn console(&self) -> Result<&File> {
        self.console.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::FailedPrecondition,
                format!("process {} has no terminal", self.pid),
            )
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn internal(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |e| Error::new(ErrorKind::Internal, context).with_source(e)
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(THREAD_STACK)
        .spawn(f)
        .map(drop)
        .map_err(internal(format!("starting thread {name}")))
}

/// Whether the peer of `stream` closed its end (it sends nothing after its request).
fn hung_up(stream: &UnixStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: pfd is one valid pollfd; a zero timeout does not block.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Binds the socket, creates the container, starts its copiers and reaper.
fn boot(args: &Args, files: &Files) -> Result<(Arc<Shim>, UnixListener)> {
    let id = ContainerId::new(&args.id)?;
    become_subreaper()?;

    let sock = files.socket();
    match fs::remove_file(&sock) {
        Ok(()) => eprintln!("strata-shim: removed a stale {}", sock.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(internal(format!("removing {}", sock.display()))(e)),
    }
    let short = SocketPath::new(&sock).map_err(internal(format!("socket {}", sock.display())))?;
    let listener = UnixListener::bind(short.for_self())
        .map_err(internal(format!("binding {}", sock.display())))?;
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o600))
        .map_err(internal(format!("chmod {}", sock.display())))?;
    super::write_atomic(&files.pid(), format!("{}\n", std::process::id()).as_bytes())
        .map_err(internal(format!("writing {}", files.pid().display())))?;

    let runc = Runc {
        binary: args.runc_binary.clone(),
        root: args.runc_root.clone(),
        log: Some(files.path("runc.log")),
    };
    let log = open_log(&super::log_path(&files.dir, ""))?;
    let pid_file = files.path("init.pid");
    let (pid, console, drain) = match args.terminal {
        None => {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            // Copying starts before runc runs, so no pipe ever fills; if create fails,
            // the write ends close with it and the copiers end.
            let drain = start_copiers(
                "init",
                vec![(File::from(out_r), STDOUT), (File::from(err_r), STDERR)],
                &log,
            )?;
            let opts = CreateOpts {
                pid_file: Some(pid_file),
                stdio: Stdio {
                    stdin: Io::Null,
                    stdout: Io::Fd(out_w),
                    stderr: Io::Fd(err_w),
                },
                console_socket: None,
            };
            (runc.create(&id, &files.dir, opts)?, None, drain)
        }
        Some((width, height)) => {
            let console = Console::listen(files.path("console.sock"))?;
            let opts = CreateOpts {
                pid_file: Some(pid_file),
                stdio: Stdio::null(),
                console_socket: Some(console.for_runc.clone()),
            };
            let pid = runc.create(&id, &files.dir, opts)?;
            let master = console
                .receive()
                .and_then(|m| set_window_size(&m, width, height).map(|()| m))
                .inspect_err(|_| {
                    let _ = runc.delete(&id, true);
                })?;
            drop(console);
            let copy = master
                .try_clone()
                .map_err(internal("duplicating the terminal"))?;
            let drain = start_copiers("init", vec![(copy, STDOUT)], &log)?;
            (pid, Some(master), drain)
        }
    };
    let init = Arc::new(Process {
        pid,
        exit_file: super::exit_path(&files.dir, ""),
        console,
        state: Mutex::new(ProcState::default()),
        exited: Condvar::new(),
    });
    start_reaper("init", &init, drain)?;
    let shim = Arc::new(Shim {
        id,
        files: Files {
            dir: files.dir.clone(),
        },
        runc,
        init,
        phase: Mutex::new(Phase::Created),
        execs: Mutex::new(HashMap::new()),
    });
    // The socket path's directory fd is no longer needed once bound.
    drop(short);
    Ok((shim, listener))
}

/// Accepts connections for ever, a thread each.
fn serve(shim: &Arc<Shim>, listener: &UnixListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let shim = Arc::clone(shim);
                if let Err(e) = spawn_thread("conn", move || shim.connection(stream)) {
                    eprintln!("strata-shim: {}", super::protocol::chain(&e));
                }
            }
            Err(e) => {
                eprintln!("strata-shim: accept: {e}");
                // EMFILE and the like: do not spin.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads one request line of at most [`MAX_LINE`] bytes.
fn read_request(stream: &UnixStream) -> Result<Option<Request>> {
    let mut line = Vec::new();
    let mut r = BufReader::new(stream).take(MAX_LINE as u64 + 1);
    r.read_until(b'\n', &mut line)
        .map_err(internal("reading a request"))?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_LINE {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("request line longer than {MAX_LINE} bytes"),
        ));
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| Error::new(ErrorKind::InvalidArgument, "malformed request").with_source(e))
}

fn respond(mut stream: &UnixStream, r: Result<serde_json::Value>) {
    let response = match r {
        Ok(v) => Response::Ok(v),
        Err(e) => Response::Error(WireError::from_error(&e)),
    };
    let mut line = serde_json::to_vec(&response).expect("a response serializes");
    line.push(b'\n');
    // The client may be gone (a daemon restarting); that is its business.
    let _ = stream.write_all(&line);
}

fn empty() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn to_value<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("a reply serializes")
}

impl Shim {
    fn connection(self: &Arc<Self>, stream: UnixStream) {
        let req = match read_request(&stream) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => return respond(&stream, Err(e)),
        };
        match req {
            Request::Attach { exec_id } => self.attach(&exec_id, stream),
            Request::Wait { exec_id } => match self.process(&exec_id) {
                Ok(p) => {
                    if let Some(exit) = p.wait_for(&stream) {
                        respond(&stream, Ok(to_value(&exit)));
                    }
                }
                Err(e) => respond(&stream, Err(e)),
            },
            Request::Delete { exec_id } if exec_id.is_empty() => {
                let r = self.delete_init();
                let deleted = r.is_ok();
                respond(&stream, r.map(|e| to_value(&e)));
                if deleted {
                    self.exit_process(&stream);
                }
            }
            Request::Shutdown => {
                let r = self.shutdown();
                let ok = r.is_ok();
                respond(&stream, r.map(|()| empty()));
                if ok {
                    self.exit_process(&stream);
                }
            }
            req => respond(&stream, self.handle(req)),
        }
    }

    /// Ends the shim after its container was deleted.
    fn exit_process(&self, stream: &UnixStream) {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        self.files.remove_shim_files();
        eprintln!("strata-shim: container {} deleted, exiting", self.id);
        std::process::exit(0);
    }

    fn handle(&self, req: Request) -> Result<serde_json::Value> {
        match req {
            Request::Start { exec_id } => self.start(&exec_id).map(|()| empty()),
            Request::State { exec_id } => self.state(&exec_id).map(|s| to_value(&s)),
            Request::Kill {
                exec_id,
                signal,
                all,
            } => self.kill(&exec_id, signal, all).map(|()| empty()),
            Request::Pause => self.runc.pause(&self.id).map(|()| empty()),
            Request::Resume => self.runc.resume(&self.id).map(|()| empty()),
            Request::Pids => {
                let pids = self.runc.ps(&self.id)?;
                Ok(to_value(&PidsReply {
                    pids: pids.into_iter().map(|p| p.as_raw() as u32).collect(),
                }))
            }
            Request::Exec {
                exec_id,
                process,
                tty,
            } => self
                .exec(&exec_id, process, tty)
                .map(|pid| to_value(&ExecReply { pid })),
            Request::Resize {
                exec_id,
                width,
                height,
            } => {
                let p = self.process(&exec_id)?;
                set_window_size(p.console()?, width, height).map(|()| empty())
            }
            Request::Delete { exec_id } => self.delete_exec(&exec_id).map(|e| to_value(&e)),
            Request::Attach { .. } | Request::Wait { .. } | Request::Shutdown => {
                unreachable!("handled by connection")
            }
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        lock(&self.phase)
    }

    /// The process `exec_id` names ("" = init).
    fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            if *self.phase() == Phase::Deleted {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("container {} is deleted", self.id),
                ));
            }
            return Ok(Arc::clone(&self.init));
        }
        match lock(&self.execs).get(exec_id) {
            Some(Some(p)) => Ok(Arc::clone(p)),
            _ => Err(Error::new(
                ErrorKind::NotFound,
                format!("exec {exec_id:?} of container {}", self.id),
            )),
        }
    }

    fn start(&self, exec_id: &str) -> Result<()> {
        if !exec_id.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("start of exec {exec_id:?}: an exec starts when it is created"),
            ));
        }
        let mut phase = self.phase();
        match *phase {
            Phase::Created => {
                self.runc.start(&self.id)?;
                *phase = Phase::Started;
                Ok(())
            }
            Phase::Started => Err(Error::new(
                ErrorKind::FailedPrecondition,
                format!("container {} is already started", self.id),
            )),
            Phase::Deleted => Err(Error::new(
                ErrorKind::NotFound,
                format!("container {} is deleted", self.id),
            )),
        }
    }

    fn state(&self, exec_id: &str) -> Result<StateReply> {
        let p = self.process(exec_id)?;
        let pid = p.pid.as_raw() as u32;
        if let Some(exit) = p.exit() {
            return Ok(StateReply {
                status: "stopped".into(),
                pid,
                exit_status: Some(exit.exit_status),
                exited_at_unix_nanos: Some(exit.exited_at_unix_nanos),
            });
        }
        let status = if exec_id.is_empty() {
            match self.runc.state(&self.id)?.status {
                Status::Creating | Status::Created => "created",
                Status::Running => "running",
                Status::Paused => "paused",
                // Exited; its status is being saved.
                Status::Stopped => "stopped",
            }
        } else {
            "running"
        };
        Ok(StateReply {
            status: status.into(),
            pid,
            exit_status: None,
            exited_at_unix_nanos: None,
        })
    }

    fn kill(&self, exec_id: &str, signal: i32, all: bool) -> Result<()> {
        let sig = Signal::try_from(signal).map_err(|e| {
            Error::new(ErrorKind::InvalidArgument, format!("signal {signal}")).with_source(e)
        })?;
        let p = self.process(exec_id)?;
        let finished = || {
            Error::new(
                ErrorKind::NotFound,
                format!("process {} already finished", p.pid),
            )
        };
        if exec_id.is_empty() {
            if p.lock().exiting {
                return Err(finished());
            }
            return self.runc.kill(&self.id, sig, all);
        }
        // Held across kill(2): the reaper cannot collect the pid meanwhile.
        let s = p.lock();
        if s.exiting {
            return Err(finished());
        }
        nix::sys::signal::kill(p.pid, sig).map_err(|e| {
            let kind = if e == Errno::ESRCH {
                ErrorKind::NotFound
            } else {
                ErrorKind::Internal
            };
            Error::new(kind, format!("kill {} with {sig}", p.pid)).with_source(e)
        })
    }

    fn exec(&self, exec_id: &str, mut process: serde_json::Value, tty: bool) -> Result<u32> {
        strata_proto::ident::validate_identifier("exec id", exec_id).map_err(|e| {
            Error::new(ErrorKind::InvalidArgument, "invalid exec id").with_source(e)
        })?;
        let Some(obj) = process.as_object_mut() else {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("exec {exec_id}: process is not a JSON object"),
            ));
        };
        obj.insert("terminal".into(), tty.into());
        let console_size = obj.get("consoleSize").cloned();
        {
            let phase = self.phase();
            if *phase != Phase::Started || self.init.lock().exiting {
                return Err(Error::new(
                    ErrorKind::FailedPrecondition,
                    format!("exec {exec_id}: container {} is not running", self.id),
                ));
            }
        }
        {
            let mut execs = lock(&self.execs);
            if execs.contains_key(exec_id) {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("exec {exec_id:?} of container {}", self.id),
                ));
            }
            execs.insert(exec_id.to_owned(), None);
        }
        match self.create_exec(exec_id, &process, tty, console_size.as_ref()) {
            Ok(p) => {
                let pid = p.pid.as_raw() as u32;
                lock(&self.execs).insert(exec_id.to_owned(), Some(p));
                Ok(pid)
            }
            Err(e) => {
                lock(&self.execs).remove(exec_id);
                Err(e)
            }
        }
    }

    fn create_exec(
        &self,
        exec_id: &str,
        process: &serde_json::Value,
        tty: bool,
        console_size: Option<&serde_json::Value>,
    ) -> Result<Arc<Process>> {
        let f = &self.files;
        let json_path = f.path(&format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(process).expect("a JSON value serializes");
        super::write_atomic(&json_path, &json)
            .map_err(internal(format!("writing {}", json_path.display())))?;
        let pid_file = f.path(&format!("exec-{exec_id}.pid"));
        let log = open_log(&super::log_path(&f.dir, exec_id))?;
        let name = format!("exec-{exec_id}");
        let (pid, console, drain) = if tty {
            // Named by a counter, not the exec id: a socket path is short (108 bytes).
            static SEQ: AtomicU64 = AtomicU64::new(0);
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let console = Console::listen(f.path(&format!("console-{n}.sock")))?;
            let opts = ExecOpts {
                pid_file,
                stdio: Stdio::null(),
                console_socket: Some(console.for_runc.clone()),
            };
            let pid = self.runc.exec_with(&self.id, &json_path, opts)?;
            // The process runs: a failure from here on leaves it to the container's end.
            let master = console.receive()?;
            if let Some(size) = console_size {
                let dim = |k: &str| size.get(k).and_then(|v| v.as_u64()).unwrap_or(0) as u16;
                if dim("width") > 0 && dim("height") > 0 {
                    set_window_size(&master, dim("width"), dim("height"))?;
                }
            }
            let copy = master
                .try_clone()
                .map_err(internal("duplicating the terminal"))?;
            let drain = start_copiers(&name, vec![(copy, STDOUT)], &log)?;
            (pid, Some(master), drain)
        } else {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let drain = start_copiers(
                &name,
                vec![(File::from(out_r), STDOUT), (File::from(err_r), STDERR)],
                &log,
            )?;
            let opts = ExecOpts {
                pid_file,
                stdio: Stdio {
                    stdin: Io::Null,
                    stdout: Io::Fd(out_w),
                    stderr: Io::Fd(err_w),
                },
                console_socket: None,
            };
            (
                self.runc.exec_with(&self.id, &json_path, opts)?,
                None,
                drain,
            )
        };
        let p = Arc::new(Process {
            pid,
            exit_file: super::exit_path(&f.dir, exec_id),
            console,
            state: Mutex::new(ProcState::default()),
            exited: Condvar::new(),
        });
        start_reaper(&name, &p, drain)?;
        Ok(p)
    }

    fn attach(&self, exec_id: &str, stream: UnixStream) {
        let master = self.process(exec_id).and_then(|p| {
            if p.exit().is_some() {
                return Err(Error::new(
                    ErrorKind::FailedPrecondition,
                    format!("process {} exited", p.pid),
                ));
            }
            p.console()?
                .try_clone()
                .map_err(internal("duplicating the terminal"))
        });
        let mut master = match master {
            Ok(m) => m,
            Err(e) => return respond(&stream, Err(e)),
        };
        respond(&stream, Ok(empty()));
        let mut stream = stream;
        let mut buf = [0u8; 8192];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            // EIO: the terminal's process side closed; nothing more to forward.
            if master.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    }

    fn delete_exec(&self, exec_id: &str) -> Result<Exit> {
        let p = self.process(exec_id)?;
        let Some(exit) = p.exit() else {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                format!("exec {exec_id} (pid {}) is still running", p.pid),
            ));
        };
        lock(&self.execs).remove(exec_id);
        for ext in ["json", "pid"] {
            let _ = fs::remove_file(self.files.path(&format!("exec-{exec_id}.{ext}")));
        }
        Ok(exit)
    }

    /// Deletes the container: it must have exited, or never started (then it is killed).
    fn delete_init(&self) -> Result<Exit> {
        let mut phase = self.phase();
        let exit = match *phase {
            Phase::Deleted => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("container {} is deleted", self.id),
                ));
            }
            Phase::Created => {
                self.runc.delete(&self.id, true)?;
                self.init.wait()
            }
            Phase::Started => {
                let Some(exit) = self.init.exit() else {
                    return Err(Error::new(
                        ErrorKind::FailedPrecondition,
                        format!("container {} is still running", self.id),
                    ));
                };
                self.runc.delete(&self.id, false)?;
                exit
            }
        };
        *phase = Phase::Deleted;
        Ok(exit)
    }

    fn shutdown(&self) -> Result<()> {
        if *self.phase() != Phase::Created {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                format!("container {} started: delete it to end the shim", self.id),
            ));
        }
        self.delete_init().map(drop)
    }
}
