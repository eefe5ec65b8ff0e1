//! The per-container shim: one `strata-shim` process per container owns its stdio and its
//! exit status, so that the daemon can restart (or crash) without touching containers.
//!
//! # Design
//!
//! ```text
//! daemon ── shim::spawn(SpawnOptions) ──> strata-shim --id … --state DIR --runc-root …
//!   │          reads one handshake line        │ setsid, child subreaper
//!   │          {"pid":N} | {"error":{…}}       │ bind DIR/shim.sock, write DIR/shim.pid
//!   │                                          │ runc create (bundle = DIR)
//!   │                                          ├─ copier threads: stdout/stderr pipes (or
//!   │                                          │  the terminal master) ─> frames ─> init.log
//!   │                                          ├─ reaper thread: waitpid(init) ─> drain
//!   │                                          │  copiers ─> init.exit ─> wake waiters
//!   └── ShimClient (one connection per call) ──┴─ shim.sock: a thread per connection
//! ```
//!
//! The daemon keeps nothing about a shim but its state directory: after a restart it
//! makes a [`ShimClient`] for the directory and talks to the running shim again. The shim
//! never depends on a client: output is copied and exits are saved with nobody connected.
//! When the shim is gone (it exits after `delete`, or died), [`read_exit`] reads the saved
//! status.
//!
//! # The state directory
//!
//! ```text
//! <state>/                   also the OCI bundle; made and removed by the daemon
//!   config.json  rootfs/     the bundle
//!   shim.sock    shim.pid    the shim's socket (0600) and pid; removed when it exits
//!   shim.log                 the shim's stderr
//!   runc.log                 runc's JSON log
//!   init.pid                 the init's pid (runc --pid-file)
//!   init.log                 the init's output: frames, see [`log`]
//!   init.exit                {"exit_status":N,"exited_at_unix_nanos":T}, written
//!                            atomically before any waiter is told
//!   exec-<id>.json .pid .log .exit   the same for each exec
//! ```
//!
//! An exit status is the exit code, or 128 + the signal that killed the process
//! (containerd's convention).
//!
//! # Layers
//!
//! - [`protocol`]: the JSON request/response lines and the handshake.
//! - [`log`]: the output log's framing (Docker's `stdcopy`), writer and reader.
//! - [`server`]: the shim process itself (the `strata-shim` binary calls
//!   [`server::main`]); std threads and blocking I/O only, to stay small.
//! - [`client`]: [`spawn`] and [`ShimClient`], what the daemon uses.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub mod client;
pub mod log;
pub mod protocol;
pub mod server;

pub use client::{ProcessState, ShimClient, SpawnOptions, default_shim_binary, read_exit, spawn};
pub use protocol::Exit;

/// The output log of process `exec_id` (empty: the init) in a state directory.
pub fn log_path(state: &Path, exec_id: &str) -> PathBuf {
    process_file(state, exec_id, "log")
}

/// The saved exit status of process `exec_id` (empty: the init) in a state directory.
pub fn exit_path(state: &Path, exec_id: &str) -> PathBuf {
    process_file(state, exec_id, "exit")
}

/// `init.<ext>`, or `exec-<id>.<ext>` for an exec (its id already validated).
pub fn process_file(state: &Path, exec_id: &str, ext: &str) -> PathBuf {
    if exec_id.is_empty() {
        state.join(format!("init.{ext}"))
    } else {
        state.join(format!("exec-{exec_id}.{ext}"))
    }
}

/// Writes `path` so that a crash leaves its old content or the new, never a mix: a
/// temporary file (mode 0600) is written and fsynced, renamed over `path`, and the
/// directory fsynced.
///
/// # Errors
/// The I/O error of any step.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// The longest path bound or connected to directly; `sun_path` holds 108 bytes.
const MAX_SOCKET_PATH: usize = 100;

/// A unix socket's path, usable however long the state directory's path is: a long path
/// is reached through `/proc/<pid>/fd/<dir fd>/<name>`, the directory held open.
pub(crate) struct SocketPath {
    path: PathBuf,
    dir: Option<File>,
}

impl SocketPath {
    /// The socket at `path`.
    pub(crate) fn new(path: &Path) -> io::Result<SocketPath> {
        if path.as_os_str().len() <= MAX_SOCKET_PATH {
            return Ok(SocketPath {
                path: path.to_owned(),
                dir: None,
            });
        }
        let parent = path.parent().unwrap_or(Path::new("."));
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(parent)?;
        Ok(SocketPath {
            path: path.to_owned(),
            dir: Some(dir),
        })
    }

    /// The path for this process to bind or connect.
    pub(crate) fn for_self(&self) -> PathBuf {
        self.via("self")
    }

    /// The path for a child of this process (runc, for a console socket).
    pub(crate) fn for_children(&self) -> PathBuf {
        self.via(&std::process::id().to_string())
    }

    fn via(&self, proc: &str) -> PathBuf {
        match &self.dir {
            None => self.path.clone(),
            Some(d) => {
                let name = self.path.file_name().unwrap_or_default();
                Path::new("/proc")
                    .join(proc)
                    .join("fd")
                    .join(d.as_raw_fd().to_string())
                    .join(name)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn long_socket_paths_work() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("shim.sock");
        assert!(path.as_os_str().len() > 108);
        let sp = SocketPath::new(&path).unwrap();
        let _l = UnixListener::bind(sp.for_self()).unwrap();
        assert!(path.exists());
        UnixStream::connect(SocketPath::new(&path).unwrap().for_self()).unwrap();
        // A short path is used as it is.
        let short = tmp.path().join("s.sock");
        assert_eq!(SocketPath::new(&short).unwrap().for_self(), short);
    }
}
