//! The few filesystem primitives the applier needs that nix does not wrap safely:
//! resolution inside the root with `openat2(RESOLVE_IN_ROOT)`, and xattrs set through a
//! file descriptor or relative to a directory descriptor without following symlinks.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

/// Opens the directory at `rel` (components joined by `/`, no `..`; empty is the root
/// itself) resolving every component, symlinks included, as if `root` were `/`: an
/// absolute symlink or a `..` in a symlink's target can never leave `root`. Magic links
/// (`/proc/self/fd/N` style) are refused.
pub(crate) fn open_dir_in_root(root: BorrowedFd<'_>, rel: &[u8]) -> nix::Result<OwnedFd> {
    let path: &[u8] = if rel.is_empty() { b"." } else { rel };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .mode(Mode::empty())
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // EAGAIN: a concurrent rename raced a `..` during RESOLVE_IN_ROOT; the kernel asks to
    // retry.
    let mut tries = 0;
    loop {
        match openat2(root, path, how) {
            Err(Errno::EAGAIN) if tries < 16 => tries += 1,
            other => return other,
        }
    }
}

/// Sets an xattr on an open file or directory.
pub(crate) fn fsetxattr(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> nix::Result<()> {
    let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `fd` is a live descriptor for the duration of the call; `name` is a
    // NUL-terminated string and `value` a valid buffer of `value.len()` bytes, both
    // outliving the call; the kernel only reads them.
    let res = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(res).map(drop)
}

/// `struct xattr_args` of setxattrat(2).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "x86",
    target_arch = "arm"
))]
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// setxattrat(2) is 463 on every architecture that uses the unified syscall table
/// (new syscalls share numbers since 5.1); libc 0.2 does not export it everywhere.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "x86",
    target_arch = "arm"
))]
const SYS_SETXATTRAT: libc::c_long = 463;

/// Sets an xattr on `name` in `dir` without following a symlink there (setxattrat(2),
/// Linux 6.13): for symlinks and device nodes, which must not be opened. `ENOSYS` on
/// older kernels.
pub(crate) fn setxattrat_nofollow(
    dir: BorrowedFd<'_>,
    name: &[u8],
    xname: &[u8],
    value: &[u8],
) -> nix::Result<()> {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "x86",
        target_arch = "arm"
    ))]
    {
        let path = CString::new(name).map_err(|_| Errno::EINVAL)?;
        let xname = CString::new(xname).map_err(|_| Errno::EINVAL)?;
        let args = XattrArgs {
            value: value.as_ptr() as u64,
            size: u32::try_from(value.len()).map_err(|_| Errno::E2BIG)?,
            flags: 0,
        };
        // SAFETY: every pointer passed (path, xattr name, args and the value buffer that
        // args points to) is valid, NUL-terminated where a string is expected, and
        // outlives the call; `size` is the exact size of `struct xattr_args`; the kernel
        // only reads them. `dir` is a live descriptor.
        let res = unsafe {
            libc::syscall(
                SYS_SETXATTRAT,
                dir.as_raw_fd(),
                path.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                xname.as_ptr(),
                &args as *const XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        Errno::result(res).map(drop)
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "x86",
        target_arch = "arm"
    )))]
    {
        let _ = (dir, name, xname, value);
        Err(Errno::ENOSYS)
    }
}

/// Opens `root` itself.
pub(crate) fn open_root(root: &std::path::Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Whether the directory `dir` has no entries besides `.` and `..`.
pub(crate) fn is_empty_dir(dir: BorrowedFd<'_>) -> nix::Result<bool> {
    let mut list = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    for ent in list.iter() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The process's umask, from `/proc/self/status` (reading it with umask(2) would change
/// it for a moment, for every thread).
pub(crate) fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}
