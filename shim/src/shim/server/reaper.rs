//! Reaping: a thread per process waits for its exit, lets its output drain, saves the
//! exit status durably and only then wakes its waiters.

use super::*;

pub(super) fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// containerd's exit status: the code, or 128 + the signal.
pub(super) fn exit_status(s: ExitStatus) -> u32 {
    match s {
        ExitStatus::Code(c) => c as u32,
        ExitStatus::Signal(s) => 128 + s as u32,
    }
}

/// Starts the reaper of `p`: see the module docs.
pub(super) fn start_reaper(name: &str, p: &Arc<Process>, drain: Drain) -> Result<()> {
    let p = Arc::clone(p);
    spawn_thread(&format!("reap-{name}"), move || {
        // Wait for the zombie without reaping it, so that while `exiting` is being set a
        // kill can only reach the zombie, never a reused pid.
        loop {
            match waitid(Id::Pid(p.pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Err(Errno::EINTR) => continue,
                Err(e) => eprintln!("strata-shim: waitid {}: {e}", p.pid),
                Ok(_) => {}
            }
            break;
        }
        lock(&p.state).exiting = true;
        let status = match wait_exit(p.pid) {
            Ok(s) => exit_status(s),
            Err(e) => {
                // Not our child (cannot happen for a pid runc gave a subreaper): report
                // 255, containerd's status for an unknown exit.
                eprintln!("strata-shim: {}", crate::shim::protocol::chain(&e));
                255
            }
        };
        let exit = Exit {
            exit_status: status,
            exited_at_unix_nanos: now_unix_nanos(),
        };
        drain.wait(DRAIN_TIMEOUT);
        let json = serde_json::to_vec(&exit).expect("an exit serializes");
        // The status is on disk before any waiter hears of it. A failing disk is retried
        // a few times; after that the waiters are told anyway (the daemon holds it then).
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=5 {
            match crate::shim::write_atomic(&p.exit_file, &json) {
                Ok(()) => break,
                Err(e) => {
                    eprintln!(
                        "strata-shim: saving {} (attempt {attempt}): {e}",
                        p.exit_file.display()
                    );
                    std::thread::sleep(delay);
                    delay *= 2;
                }
            }
        }
        lock(&p.state).exit = Some(exit);
        p.exited.notify_all();
    })
}
