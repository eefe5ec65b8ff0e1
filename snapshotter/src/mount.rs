//! Mounting what a snapshotter returns, with the kernel's own syscalls.
//!
//! Overlay's options must fit in one page (4096 bytes); a 128-layer chain of absolute
//! `lowerdir` paths does not. containerd works around it by forking a child that chdirs
//! into the common parent and passes relative paths. A chdir is process-wide, so strata
//! instead opens each layer `O_PATH` and names it `/proc/self/fd/<n>`: about 17 bytes a
//! layer, resolved by the kernel at mount time, safe in a threaded process.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::Mode;

use crate::api::Mount;
use crate::{Error, ErrorKind, Result};

/// The kernel's limit on a mount's data (options) string, including the NUL.
const MAX_OPTIONS: usize = 4096;

/// Flags and data of an fstab-style option list: known flags become `MsFlags`, the rest
/// is passed to the filesystem as data.
fn parse_options(options: &[String]) -> (MsFlags, bool, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut recursive = false;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => {
                flags |= MsFlags::MS_BIND;
                recursive = true;
            }
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "suid" | "dev" | "exec" | "async" | "defaults" => {}
            _ => data.push(o.clone()),
        }
    }
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    (flags, recursive, data)
}

fn sys(op: &str, target: &Path, e: nix::Error) -> Error {
    Error::new(ErrorKind::Internal, format!("{op} {}", target.display()))
        .with_source(std::io::Error::from(e))
}

/// Rewrites `lowerdir=a:b:c` to `/proc/self/fd/<n>` paths when the options are too long;
/// the returned fds must stay open until the mount call returns.
fn compact_lowerdirs(data: &mut [String]) -> Result<Vec<OwnedFd>> {
    let len: usize = data.iter().map(|d| d.len() + 1).sum();
    if len < MAX_OPTIONS {
        return Ok(Vec::new());
    }
    let mut fds = Vec::new();
    for d in data.iter_mut() {
        let Some(dirs) = d.strip_prefix("lowerdir=") else {
            continue;
        };
        let mut short = Vec::new();
        for dir in dirs.split(':') {
            let fd = open(
                dir,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| sys("open lower dir", Path::new(dir), e))?;
            short.push(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            fds.push(fd);
        }
        *d = format!("lowerdir={}", short.join(":"));
    }
    Ok(fds)
}

/// Mounts `m` on `target`.
pub fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let (flags, _, mut data) = parse_options(&m.options);
    let is_bind = flags.contains(MsFlags::MS_BIND) || m.r#type == "bind";
    if is_bind {
        let bind = MsFlags::MS_BIND | (flags & MsFlags::MS_REC);
        mount(
            Some(m.source.as_str()),
            target,
            None::<&str>,
            bind,
            None::<&str>,
        )
        .map_err(|e| sys(&format!("bind-mount {} on", m.source), target, e))?;
        // A bind mount ignores every flag but MS_REC; the rest take a remount.
        let rest = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty()
            && let Err(e) = mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | rest,
                None::<&str>,
            )
        {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(sys("remount", target, e));
        }
        return Ok(());
    }
    let _fds = compact_lowerdirs(&mut data)?;
    let data = data.join(",");
    if data.len() >= MAX_OPTIONS {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "mount options of {} are {} bytes, over the kernel's {MAX_OPTIONS}",
                target.display(),
                data.len()
            ),
        ));
    }
    let data = CString::new(data)
        .map_err(|_| Error::new(ErrorKind::InvalidArgument, "mount options contain NUL"))?;
    mount(
        Some(m.source.as_str()),
        target,
        Some(m.r#type.as_str()),
        flags,
        Some(data.as_c_str()),
    )
    .map_err(|e| sys(&format!("mount {} ({}) on", m.source, m.r#type), target, e))
}

/// Mounts each of `mounts` on `target` in order (later ones stack on earlier ones). On
/// failure the ones already mounted are unmounted again.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..i {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts everything stacked on `target`, topmost first; `target` not being a mount
/// point is not an error.
pub fn unmount_all(target: &Path) -> Result<()> {
    loop {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(e) => return Err(sys("unmount", target, e)),
        }
    }
}
