//! The runc driver against the real runc: a busybox bundle from `spec::generate`, then
//! create, start, state, ps, exec, pause, resume, kill, exit statuses and delete.
//!
//! Needs root, `runc` on PATH and a static `/bin/busybox` (Debian's `busybox-static`);
//! without them each test prints why and passes. CI installs both. nextest runs each test
//! in its own process, so each test can make its process a child subreaper.

use std::error::Error as _;
use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as StdStdio};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::signal::Signal;
use oci_spec::runtime::LinuxNamespaceType;
mod common;

use common::{BUSYBOX, unavailable};
use strata_proto::ident::Namespace;
use strata_shim::runc::{CreateOpts, ExitStatus, Io, Status, Stdio, become_subreaper, wait_exit};
use strata_shim::{ContainerConfig, ContainerId, ErrorKind, RunOptions, Runc, generate};

/// A unique, valid container id.
fn unique_id() -> ContainerId {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    ContainerId::new(&format!(
        "strata-drv-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
    .unwrap()
}

/// A bundle in a temp dir: a busybox rootfs and a generated `config.json`.
struct Bundle {
    dir: tempfile::TempDir,
    id: ContainerId,
    runc: Runc,
}

impl Bundle {
    /// The bundle for `args`; `host_pid` drops the PID namespace so that the process is
    /// not a namespace init (which ignores SIGTERM without a handler).
    fn new(args: &[&str], host_pid: bool) -> Bundle {
        Bundle::with(args, host_pid, |_| {})
    }

    /// The bundle for `args` with `adjust(opts)`.
    fn with(args: &[&str], host_pid: bool, adjust: impl FnOnce(&mut RunOptions)) -> Bundle {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        for d in ["bin", "etc", "proc", "dev", "sys", "run", "tmp"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        for applet in ["sh", "echo", "sleep"] {
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
        adjust(&mut opts);
        let mut spec = generate(&image, &root, &opts).unwrap();
        if host_pid {
            let linux = spec.linux_mut().as_mut().unwrap();
            let namespaces = linux.namespaces_mut().as_mut().unwrap();
            namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Pid);
        }
        fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        let runc = Runc::new(dir.path().join("runc-state"));
        Bundle { dir, id, runc }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The spec's process with other args, written as JSON for `runc exec`.
    fn process_json(&self, args: &[&str]) -> PathBuf {
        let spec: oci_spec::runtime::Spec =
            serde_json::from_slice(&fs::read(self.path().join("config.json")).unwrap()).unwrap();
        let mut process = spec.process().clone().unwrap();
        process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        let path = self.path().join("exec-process.json");
        fs::write(&path, serde_json::to_vec(&process).unwrap()).unwrap();
        path
    }
}

impl Drop for Bundle {
    /// Deletes the container (and its cgroup) even if the test failed.
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&self.runc.root)
            .args(["delete", "--force", self.id.as_str()])
            .stderr(StdStdio::null())
            .status();
    }
}

/// Skips (returning false) when the machine cannot run runc; makes this test process a
/// subreaper otherwise.
fn ready() -> bool {
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return false;
    }
    become_subreaper().unwrap();
    true
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

#[test]
fn lifecycle_create_start_exec_pause_kill_delete() {
    if !ready() {
        return;
    }
    let b = Bundle::new(&["sleep", "1000"], true);
    let (runc, id) = (&b.runc, &b.id);

    let pid_file = b.path().join("init.pid");
    let pid = runc
        .create(
            id,
            b.path(),
            CreateOpts {
                pid_file: Some(pid_file.clone()),
                stdio: Stdio::null(),
                console_socket: None,
            },
        )
        .unwrap();
    assert_eq!(
        fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    let state = runc.state(id).unwrap();
    assert_eq!(state.id, id.as_str());
    assert_eq!(state.status, Status::Created);
    assert_eq!(state.pid, Some(pid));
    assert_eq!(state.bundle, b.path());

    runc.start(id).unwrap();
    assert_eq!(runc.state(id).unwrap().status, Status::Running);
    assert!(runc.ps(id).unwrap().contains(&pid));

    // exec `echo hi`, its stdout a pipe.
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let exec_pid = runc
        .exec(
            id,
            &b.process_json(&["echo", "hi"]),
            &b.path().join("exec.pid"),
            Stdio {
                stdout: Io::Fd(write_end),
                ..Stdio::null()
            },
        )
        .unwrap();
    let mut out = String::new();
    fs::File::from(read_end).read_to_string(&mut out).unwrap();
    assert_eq!(out, "hi\n");
    assert_eq!(wait_exit(exec_pid).unwrap(), ExitStatus::Code(0));

    runc.pause(id).unwrap();
    assert_eq!(runc.state(id).unwrap().status, Status::Paused);
    let e = runc.pause(id).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{}", chain(&e));
    runc.resume(id).unwrap();
    assert_eq!(runc.state(id).unwrap().status, Status::Running);

    // Deleting a running container needs force.
    let e = runc.delete(id, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{}", chain(&e));

    runc.kill(id, Signal::SIGTERM, false).unwrap();
    assert_eq!(wait_exit(pid).unwrap(), ExitStatus::Signal(15));
    let state = runc.state(id).unwrap();
    assert_eq!((state.status, state.pid), (Status::Stopped, None));

    runc.delete(id, false).unwrap();
    let e = runc.state(id).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{}", chain(&e));
    assert!(
        chain(&e).contains("container does not exist"),
        "{}",
        chain(&e)
    );
    let e = runc.kill(id, Signal::SIGKILL, true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{}", chain(&e));
    // Forced delete of a container that is gone succeeds.
    runc.delete(id, true).unwrap();
}

#[test]
fn sigkill_reaches_a_pid_namespace_init() {
    if !ready() {
        return;
    }
    let b = Bundle::new(&["sleep", "1000"], false);
    let pid = b
        .runc
        .create(&b.id, b.path(), CreateOpts::default())
        .unwrap();
    b.runc.start(&b.id).unwrap();
    b.runc.kill(&b.id, Signal::SIGKILL, true).unwrap();
    assert_eq!(wait_exit(pid).unwrap(), ExitStatus::Signal(9));
    b.runc.delete(&b.id, false).unwrap();
}

#[test]
fn exit_code_is_captured() {
    if !ready() {
        return;
    }
    let b = Bundle::new(&["sh", "-c", "exit 3"], false);
    let pid = b
        .runc
        .create(&b.id, b.path(), CreateOpts::default())
        .unwrap();
    b.runc.start(&b.id).unwrap();
    assert_eq!(wait_exit(pid).unwrap(), ExitStatus::Code(3));
    // Reaped once only.
    let e = wait_exit(pid).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    b.runc.delete(&b.id, false).unwrap();
}

#[test]
fn create_twice_is_already_exists() {
    if !ready() {
        return;
    }
    let b = Bundle::new(&["sleep", "1000"], false);
    b.runc
        .create(&b.id, b.path(), CreateOpts::default())
        .unwrap();
    let e = b
        .runc
        .create(&b.id, b.path(), CreateOpts::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{}", chain(&e));
}

#[test]
fn hostile_ids_are_refused_before_runc_runs() {
    // The driver takes only a `ContainerId`, so an id that fails validation cannot reach
    // runc (or a path under its root) at all.
    for bad in [
        "../x",
        "",
        &"a".repeat(300),
        "a/b",
        "/abs",
        ".",
        "..",
        "a\0b",
    ] {
        let e = ContainerId::new(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
    }
}

#[test]
fn runc_message_for_a_bundle_without_config_json() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let runc = Runc::new(dir.path().join("runc-state"));
    let id = unique_id();
    let e = runc
        .create(&id, dir.path(), CreateOpts::default())
        .unwrap_err();
    let msg = chain(&e);
    eprintln!("{msg}");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{msg}");
    assert!(msg.contains("config.json"), "{msg}");
    assert!(msg.starts_with(&format!("runc create {id}")), "{msg}");
    let runc_msg = e.source().unwrap().to_string();
    assert!(runc_msg.len() < 4096 + 100, "{runc_msg}");
    // No per-call log file is left behind in the root.
    let left: Vec<_> = fs::read_dir(&runc.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn persistent_log_gives_this_call_s_message() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut runc = Runc::new(dir.path().join("runc-state"));
    runc.log = Some(dir.path().join("runc.log"));
    let first = runc.state(&unique_id()).unwrap_err();
    assert_eq!(first.kind(), ErrorKind::NotFound, "{}", chain(&first));
    let e = runc
        .create(&unique_id(), dir.path(), CreateOpts::default())
        .unwrap_err();
    let msg = e.source().unwrap().to_string();
    assert!(msg.contains("config.json"), "{msg}");
    assert!(!msg.contains("does not exist"), "{msg}");
}

#[test]
fn missing_runc_binary_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let mut runc = Runc::new(dir.path().join("runc-state"));
    runc.binary = dir.path().join("no-such-runc");
    let e = runc.state(&unique_id()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{}", chain(&e));
}

/// Receives the one fd sent over `stream` with SCM_RIGHTS.
fn receive_fd(stream: &std::os::unix::net::UnixStream) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd, RawFd};
    let mut data = [0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // u64s keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 64];
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at live buffers of the lengths it gives.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: msg was filled in by recvmsg; the CMSG macros walk its control buffer.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
                return std::os::fd::OwnedFd::from_raw_fd(fd);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    panic!("no fd received");
}

#[test]
fn console_socket_receives_the_terminal() {
    if !ready() {
        return;
    }
    let b = Bundle::with(&["echo", "on a tty"], false, |o| o.terminal = true);
    let socket = b.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let receiver = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        receive_fd(&stream)
    });
    let pid = b
        .runc
        .create(
            &b.id,
            b.path(),
            CreateOpts {
                console_socket: Some(socket),
                ..CreateOpts::default()
            },
        )
        .unwrap();
    let master = receiver.join().unwrap();
    b.runc.start(&b.id).unwrap();
    // The slave's output arrives on the master until the last slave fd closes (EIO).
    let mut master = fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"\r\n") {
            break;
        }
    }
    assert_eq!(String::from_utf8_lossy(&out), "on a tty\r\n");
    assert_eq!(wait_exit(pid).unwrap(), ExitStatus::Code(0));
    b.runc.delete(&b.id, false).unwrap();
}
