//! Output copying: each output pipe (or the terminal master) is read by a copier thread
//! of its own and written as frames into the process's log.

use super::*;

/// Opens (creating, mode 0600) an output log for appending.
pub(super) fn open_log(path: &Path) -> Result<Arc<Mutex<File>>> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map(|f| Arc::new(Mutex::new(f)))
        .map_err(internal(format!("opening log {}", path.display())))
}

/// A pipe whose ends are close-on-exec (a `dup2` onto a child's stdio clears it there), so
/// no other child of the shim holds a write end and keeps a copier from seeing EOF.
pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| Error::new(ErrorKind::Internal, "creating a pipe").with_source(e))
}

/// The copiers of one process: a channel each one signals when it ends.
pub(super) struct Drain {
    done: mpsc::Receiver<()>,
    count: usize,
}

impl Drain {
    /// Waits until every copier ended, at most `timeout`.
    pub(super) fn wait(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for _ in 0..self.count {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.done.recv_timeout(left).is_err() {
                eprintln!("strata-shim: output still open {timeout:?} after the exit; not waiting");
                return;
            }
        }
    }
}

/// Starts the copier threads of a process's output into `log`.
pub(super) fn start_copiers(
    name: &str,
    sources: Vec<(File, u8)>,
    log: &Arc<Mutex<File>>,
) -> Result<Drain> {
    let (tx, done) = mpsc::channel();
    let count = sources.len();
    for (src, stream) in sources {
        let (log, tx) = (Arc::clone(log), tx.clone());
        spawn_thread(&format!("copy-{name}-{stream}"), move || {
            copy_frames(src, stream, &log);
            let _ = tx.send(());
        })?;
    }
    Ok(Drain { done, count })
}

/// Copies `src` into `log` as frames of `stream` until EOF (EIO on a terminal master: the
/// slave side closed).
pub(super) fn copy_frames(mut src: File, stream: u8, log: &Mutex<File>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return,
            Err(e) => {
                eprintln!("strata-shim: reading output: {e}");
                return;
            }
        };
        let mut f = lock(log);
        if let Err(e) = write_frame(&mut *f, stream, &buf[..n]) {
            // Keep draining the pipe so the process never blocks on a full one.
            eprintln!("strata-shim: writing the output log: {e}");
        }
    }
}
