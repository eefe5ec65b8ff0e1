//! The daemon's side: [`spawn`] a shim, then talk to it with a [`ShimClient`].
//!
//! Every call opens its own connection to `<state>/shim.sock`, so a blocking
//! [`ShimClient::wait`] and a [`ShimClient::kill`] can run at once from two threads. All
//! calls block: async callers run them on a blocking thread.
//!
//! # Errors
//!
//! An error the shim reports comes back with the same [`ErrorKind`] and the shim's whole
//! message as `source()`. No shim listening (never spawned, exited, died) is
//! `Unavailable`; then [`read_exit`] tells whether its process's status was saved.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::Pid;
use serde::de::DeserializeOwned;

use super::SocketPath;
use super::protocol::{
    ExecReply, Exit, Handshake, MAX_LINE, PidsReply, Request, Response, StateReply,
};
use crate::{Error, ErrorKind, Result};
use strata_proto::ident::ContainerId;

/// The most of `shim.log` quoted when a shim dies before its handshake.
const LOG_TAIL: u64 = 4096;

/// The most of an exit file read.
const MAX_EXIT_FILE: u64 = 4096;

/// What [`spawn`] needs to start a shim.
#[derive(Clone, Debug)]
pub struct SpawnOptions {
    /// The `strata-shim` binary ([`default_shim_binary`]).
    pub shim_binary: PathBuf,
    /// The container id.
    pub id: ContainerId,
    /// The strata namespace the container lives in.
    pub namespace: String,
    /// The state directory, which is also the bundle: `config.json` and the mounted
    /// `rootfs/` are there already.
    pub state_dir: PathBuf,
    /// The runc binary.
    pub runc_binary: PathBuf,
    /// runc's `--root`.
    pub runc_root: PathBuf,
    /// A terminal of this (width, height); the spec must ask for a terminal too.
    pub terminal: Option<(u16, u16)>,
}

/// The `strata-shim` next to the running executable (cargo builds both into one
/// directory, and an install puts them side by side).
pub fn default_shim_binary() -> PathBuf {
    std::env::current_exe()
        .map(|exe| exe.with_file_name("strata-shim"))
        .unwrap_or_else(|_| PathBuf::from("strata-shim"))
}

/// Starts a shim for a prepared state directory and waits for its handshake: the
/// container is created (not started) when this returns. Returns the client and the
/// init's pid.
///
/// The shim's stderr goes to `<state>/shim.log`, its stdin is `/dev/null`, its stdout a
/// pipe for the handshake. The shim is then left alone: a detached thread reaps it
/// when it exits, so it never lingers as a zombie of the daemon; it runs in its own
/// session, so signals to the daemon's process group never reach it.
///
/// # Errors
/// The shim's error, with its kind, when it could not create the container (runc's
/// message included); `Unavailable` if the binary cannot be started; `Internal` if the
/// shim died without a handshake (the end of `shim.log` is the `source()`).
pub fn spawn(opts: &SpawnOptions) -> Result<(ShimClient, Pid)> {
    let log_path = opts.state_dir.join("shim.log");
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("opening {}", log_path.display()),
            )
            .with_source(e)
        })?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(&opts.shim_binary);
    cmd.arg("--id")
        .arg(opts.id.as_str())
        .arg("--namespace")
        .arg(&opts.namespace)
        .arg("--state")
        .arg(&opts.state_dir)
        .arg("--runc-root")
        .arg(&opts.runc_root)
        .arg("--runc")
        .arg(&opts.runc_binary);
    if let Some((w, h)) = opts.terminal {
        cmd.arg("--tty")
            .arg("--width")
            .arg(w.to_string())
            .arg("--height")
            .arg(h.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    let mut child = cmd.spawn().map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("starting shim {}", opts.shim_binary.display()),
        )
        .with_source(e)
    })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = Vec::new();
    let read = BufReader::new(stdout)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line);
    let handshake = read
        .ok()
        .and_then(|_| serde_json::from_slice::<Handshake>(&line).ok());
    let what = format!("shim for container {}", opts.id);
    match handshake {
        Some(Handshake::Ready { pid }) => {
            // Reaps the shim whenever it exits; nothing waits for that thread.
            std::thread::Builder::new()
                .name(format!("shim-{}", opts.id))
                .stack_size(64 * 1024)
                .spawn(move || {
                    let _ = child.wait();
                })
                .map_err(|e| {
                    Error::new(ErrorKind::Internal, format!("{what}: a reaping thread"))
                        .with_source(e)
                })?;
            let pid = i32::try_from(pid).ok().filter(|&p| p > 0).ok_or_else(|| {
                Error::new(ErrorKind::Internal, format!("{what}: handshake pid {pid}"))
            })?;
            Ok((ShimClient::new(&opts.state_dir), Pid::from_raw(pid)))
        }
        Some(Handshake::Failed { error }) => {
            let _ = child.wait();
            Err(Error::new(error.kind(), what).with_source(ShimMessage(error.message)))
        }
        None => {
            let status = child.wait();
            let tail = log_tail(&log_path, log_start);
            Err(Error::new(
                ErrorKind::Internal,
                format!("{what} exited without a handshake ({status:?}); its log says"),
            )
            .with_source(ShimMessage(tail)))
        }
    }
}

/// The end of what a shim wrote to its log since `start`.
fn log_tail(path: &Path, start: u64) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(start.max(len.saturating_sub(LOG_TAIL))))?;
        let mut buf = Vec::new();
        f.take(LOG_TAIL).read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).trim().to_owned())
    };
    read().unwrap_or_else(|e| format!("(unreadable: {e})"))
}

/// A message from the shim: the `source()` of an error it reported.
#[derive(Debug)]
pub struct ShimMessage(pub String);

impl fmt::Display for ShimMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShimMessage {}

/// How a process of the container is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessState {
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// Its host pid.
    pub pid: u32,
    /// Once it exited and its status is saved.
    pub exit: Option<Exit>,
}

/// Reads a saved exit file (`init.exit`, `exec-<id>.exit`): what the daemon uses when the
/// shim is gone. `Ok(None)` if there is none (the process had not exited, or the shim
/// died before saving it).
///
/// # Errors
/// `DataLoss` for a file that is not an exit status; `Internal` if it cannot be read.
pub fn read_exit(path: &Path) -> Result<Option<Exit>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(
                Error::new(ErrorKind::Internal, format!("opening {}", path.display()))
                    .with_source(e),
            );
        }
    };
    let mut buf = Vec::new();
    f.take(MAX_EXIT_FILE).read_to_end(&mut buf).map_err(|e| {
        Error::new(ErrorKind::Internal, format!("reading {}", path.display())).with_source(e)
    })?;
    serde_json::from_slice(&buf).map(Some).map_err(|e| {
        Error::new(
            ErrorKind::DataLoss,
            format!("{} is not an exit status", path.display()),
        )
        .with_source(e)
    })
}

/// A client of one container's shim, found by its state directory.
#[derive(Clone, Debug)]
pub struct ShimClient {
    state_dir: PathBuf,
}

impl ShimClient {
    /// The client of the shim whose state directory is `state_dir`; no I/O.
    pub fn new(state_dir: &Path) -> Self {
        ShimClient {
            state_dir: state_dir.to_owned(),
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Whether a shim accepts connections on the socket.
    pub fn alive(&self) -> bool {
        self.connect("connect").is_ok()
    }

    /// Starts the container's init (`runc start`).
    ///
    /// # Errors
    /// `FailedPrecondition` if it was started already; `NotFound` once deleted.
    pub fn start(&self) -> Result<()> {
        self.call_empty(
            "start",
            &Request::Start {
                exec_id: String::new(),
            },
        )
    }

    /// The state of the init (`exec_id` empty) or an exec.
    ///
    /// # Errors
    /// `NotFound` for an unknown exec.
    pub fn state(&self, exec_id: &str) -> Result<ProcessState> {
        let r: StateReply = self.call(
            "state",
            &Request::State {
                exec_id: exec_id.to_owned(),
            },
        )?;
        let exit = match (r.exit_status, r.exited_at_unix_nanos) {
            (Some(exit_status), Some(exited_at_unix_nanos)) => Some(Exit {
                exit_status,
                exited_at_unix_nanos,
            }),
            _ => None,
        };
        Ok(ProcessState {
            status: r.status,
            pid: r.pid,
            exit,
        })
    }

    /// Blocks until the process exits (at once if it did) and returns its saved status.
    ///
    /// # Errors
    /// `NotFound` for an unknown exec; `Unavailable` if the shim goes away meanwhile.
    pub fn wait(&self, exec_id: &str) -> Result<Exit> {
        self.call(
            "wait",
            &Request::Wait {
                exec_id: exec_id.to_owned(),
            },
        )
    }

    /// Sends `signal` to the process (init: through `runc kill`, to every process of the
    /// container with `all`).
    ///
    /// # Errors
    /// `NotFound` if the process already finished; `InvalidArgument` for a bad signal.
    pub fn kill(&self, exec_id: &str, signal: i32, all: bool) -> Result<()> {
        self.call_empty(
            "kill",
            &Request::Kill {
                exec_id: exec_id.to_owned(),
                signal,
                all,
            },
        )
    }

    /// Freezes the container.
    ///
    /// # Errors
    /// `FailedPrecondition` if it is not running.
    pub fn pause(&self) -> Result<()> {
        self.call_empty("pause", &Request::Pause)
    }

    /// Thaws the container.
    ///
    /// # Errors
    /// `FailedPrecondition` if it is not paused.
    pub fn resume(&self) -> Result<()> {
        self.call_empty("resume", &Request::Resume)
    }

    /// The host pids of the container's processes.
    ///
    /// # Errors
    /// runc's.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let r: PidsReply = self.call("pids", &Request::Pids)?;
        Ok(r.pids)
    }

    /// Runs `process` (an OCI runtime spec `process` object) in the container as exec
    /// `exec_id`; returns its host pid. Its output goes to `exec-<exec_id>.log`.
    ///
    /// # Errors
    /// `InvalidArgument` for an exec id breaking the identifier rules; `AlreadyExists`
    /// for one in use; `FailedPrecondition` if the container is not running.
    pub fn exec(&self, exec_id: &str, process: &serde_json::Value, tty: bool) -> Result<u32> {
        let r: ExecReply = self.call(
            "exec",
            &Request::Exec {
                exec_id: exec_id.to_owned(),
                process: process.clone(),
                tty,
            },
        )?;
        Ok(r.pid)
    }

    /// Sets the process's terminal size.
    ///
    /// # Errors
    /// `FailedPrecondition` for a process without a terminal.
    pub fn resize(&self, exec_id: &str, width: u16, height: u16) -> Result<()> {
        self.call_empty(
            "resize",
            &Request::Resize {
                exec_id: exec_id.to_owned(),
                width,
                height,
            },
        )
    }

    /// A connection whose bytes go to the process's terminal until it is closed.
    ///
    /// # Errors
    /// `FailedPrecondition` for a process without a terminal (its stdin is
    /// `/dev/null`) or one that exited.
    pub fn attach(&self, exec_id: &str) -> Result<UnixStream> {
        let req = Request::Attach {
            exec_id: exec_id.to_owned(),
        };
        let (stream, _) = self.exchange::<serde_json::Value>("attach", &req)?;
        Ok(stream)
    }

    /// Deletes an exited process and returns its status. For the init this deletes the
    /// container (one never started is killed first) and the shim exits.
    ///
    /// # Errors
    /// `FailedPrecondition` if the process still runs.
    pub fn delete(&self, exec_id: &str) -> Result<Exit> {
        self.call(
            "delete",
            &Request::Delete {
                exec_id: exec_id.to_owned(),
            },
        )
    }

    fn connect(&self, op: &str) -> Result<UnixStream> {
        let path = self.state_dir.join("shim.sock");
        SocketPath::new(&path)
            .and_then(|p| UnixStream::connect(p.for_self()))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("shim {op}: connecting to {}", path.display()),
                )
                .with_source(e)
            })
    }

    fn call<T: DeserializeOwned>(&self, op: &str, req: &Request) -> Result<T> {
        self.exchange(op, req).map(|(_, v)| v)
    }

    fn call_empty(&self, op: &str, req: &Request) -> Result<()> {
        self.call::<serde_json::Value>(op, req).map(drop)
    }

    /// Sends `req` on a new connection and reads the response line.
    fn exchange<T: DeserializeOwned>(&self, op: &str, req: &Request) -> Result<(UnixStream, T)> {
        let mut stream = self.connect(op)?;
        let mut line = serde_json::to_vec(req).expect("a request serializes");
        line.push(b'\n');
        let lost = |e: io::Error| {
            Error::new(
                ErrorKind::Unavailable,
                format!("shim {op} ({}): connection lost", self.state_dir.display()),
            )
            .with_source(e)
        };
        stream.write_all(&line).map_err(lost)?;
        // The shim writes nothing after the response line, so reading through a buffer
        // loses nothing of an attach connection.
        let mut response = Vec::new();
        BufReader::new(&stream)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut response)
            .map_err(lost)?;
        if response.last() != Some(&b'\n') {
            return Err(lost(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "no complete response line",
            )));
        }
        let bad = |e: serde_json::Error| {
            Error::new(
                ErrorKind::Internal,
                format!("shim {op} ({}): bad response", self.state_dir.display()),
            )
            .with_source(e)
        };
        match serde_json::from_slice::<Response>(&response).map_err(bad)? {
            Response::Ok(v) => Ok((stream, serde_json::from_value(v).map_err(bad)?)),
            Response::Error(e) => Err(Error::new(
                e.kind(),
                format!("shim {op} ({})", self.state_dir.display()),
            )
            .with_source(ShimMessage(e.message))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn exit_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("init.exit");
        assert_eq!(read_exit(&p).unwrap(), None);
        fs::write(&p, r#"{"exit_status":137,"exited_at_unix_nanos":5}"#).unwrap();
        assert_eq!(
            read_exit(&p).unwrap(),
            Some(Exit {
                exit_status: 137,
                exited_at_unix_nanos: 5
            })
        );
        fs::write(&p, "garbage").unwrap();
        assert_eq!(read_exit(&p).unwrap_err().kind(), ErrorKind::DataLoss);
    }

    #[test]
    fn no_shim_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let c = ShimClient::new(dir.path());
        assert!(!c.alive());
        assert_eq!(c.state("").unwrap_err().kind(), ErrorKind::Unavailable);
    }
}
