//! The btrfs backend: every snapshot is a btrfs subvolume, so a layer on a parent is an
//! O(1) copy-on-write snapshot instead of a stack of overlay lower dirs.
//!
//! ```text
//! <root>/metadata/          MetaStore (RocksDB)
//! <root>/snapshots/<id>     the snapshot's subvolume (its whole tree, parents included)
//! ```
//!
//! - Prepare: a new empty subvolume (root mode 0755), or a writable snapshot of the
//!   parent's subvolume. View: a read-only snapshot of the parent, or an empty read-only
//!   subvolume.
//! - Commit sets the active subvolume read-only in place: the MetaStore keeps the id at
//!   commit, so the subvolume already sits where the committed snapshot belongs, and a
//!   flag flip is atomic where snapshot-then-delete (containerd's way, between two
//!   directories) would need a rename window.
//! - Mounts: one `bind` of the subvolume directory (`rw` or `ro`, `rbind`). containerd's
//!   btrfs returns `type=btrfs` with `subvolid=`; a bind of the subvolume's path mounts the
//!   same tree and needs no device path, so every client can apply it.
//! - Usage is the snapshot's difference from its parent (as containerd's `fs.DiffUsage`):
//!   snapshots keep inode numbers, so an entry whose (ino, ctime, size, mode) equals the
//!   parent's at the same path is shared and not counted.
//!
//! Subvolumes are made and destroyed with the kernel's ioctls, always by a single name
//! relative to the `snapshots` directory's descriptor, never by a path a container can
//! change.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2, renameat};
use nix::sys::stat::{FileStat, Mode, fchmod, fstatat};
use nix::sys::statfs::{BTRFS_SUPER_MAGIC, fstatfs, statfs};
use tracing::warn;

use crate::api::{Kind, Mount, Usage};
use crate::driver::{Driver, MetaSnapshotter};
use crate::fsutil::{io, is_live};
use crate::meta::Snapshot;
use crate::{Error, ErrorKind, Result};

/// The kernel's ioctl interface to subvolumes (`linux/btrfs.h`).
mod ioc {
    /// `struct btrfs_ioctl_vol_args`: `fd` is unused by create and destroy.
    #[repr(C)]
    pub(super) struct VolArgs {
        pub(super) fd: i64,
        pub(super) name: [u8; 4088],
    }

    /// `struct btrfs_ioctl_vol_args_v2` (the qgroup union as its `unused` spelling).
    #[repr(C)]
    pub(super) struct VolArgsV2 {
        pub(super) fd: i64,
        pub(super) transid: u64,
        pub(super) flags: u64,
        pub(super) unused: [u64; 4],
        pub(super) name: [u8; 4040],
    }

    // The request numbers encode the size; both structs are 4 KiB in the kernel.
    const _: () = assert!(size_of::<VolArgs>() == 4096 && size_of::<VolArgsV2>() == 4096);

    /// `BTRFS_SUBVOL_RDONLY`.
    pub(super) const SUBVOL_RDONLY: u64 = 1 << 1;
    /// The inode number of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
    pub(super) const SUBVOL_ROOT_INO: u64 = 256;

    nix::ioctl_write_ptr!(subvol_create, 0x94, 14, VolArgs);
    nix::ioctl_write_ptr!(snap_destroy, 0x94, 15, VolArgs);
    nix::ioctl_write_ptr!(snap_create_v2, 0x94, 23, VolArgsV2);
    nix::ioctl_read!(subvol_getflags, 0x94, 25, u64);
    nix::ioctl_write_ptr!(subvol_setflags, 0x94, 26, u64);
}

/// `name` as the NUL-terminated single path component an ioctl takes.
fn component<const N: usize>(name: &str) -> std::io::Result<[u8; N]> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.len() >= N
        || name.bytes().any(|b| b == b'/' || b == 0)
    {
        return Err(std::io::Error::from(Errno::EINVAL));
    }
    let mut out = [0u8; N];
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

fn open_dir(dir: BorrowedFd<'_>, name: &str) -> std::io::Result<OwnedFd> {
    Ok(openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

fn subvol_create(dir: BorrowedFd<'_>, name: &str) -> std::io::Result<()> {
    let args = ioc::VolArgs {
        fd: 0,
        name: component(name)?,
    };
    // SAFETY: `args` is a live, fully initialised `btrfs_ioctl_vol_args` (the struct the
    // request number encodes) with a NUL-terminated name; the kernel only reads it.
    unsafe { ioc::subvol_create(dir.as_raw_fd(), &args) }?;
    Ok(())
}

fn snapshot(
    dir: BorrowedFd<'_>,
    name: &str,
    source: BorrowedFd<'_>,
    readonly: bool,
) -> std::io::Result<()> {
    let args = ioc::VolArgsV2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: if readonly { ioc::SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: component(name)?,
    };
    // SAFETY: `args` is a live, fully initialised `btrfs_ioctl_vol_args_v2` with a
    // NUL-terminated name and a descriptor that stays open for the call; without the
    // QGROUP_INHERIT flag the kernel reads no pointer from it.
    unsafe { ioc::snap_create_v2(dir.as_raw_fd(), &args) }?;
    Ok(())
}

fn set_readonly(subvol: BorrowedFd<'_>, readonly: bool) -> std::io::Result<()> {
    let mut flags = 0u64;
    // SAFETY: the kernel writes one u64 through a pointer to a live u64.
    unsafe { ioc::subvol_getflags(subvol.as_raw_fd(), &mut flags) }?;
    let want = if readonly {
        flags | ioc::SUBVOL_RDONLY
    } else {
        flags & !ioc::SUBVOL_RDONLY
    };
    if want != flags {
        // SAFETY: the kernel reads one u64 through a pointer to a live u64.
        unsafe { ioc::subvol_setflags(subvol.as_raw_fd(), &want) }?;
    }
    Ok(())
}

/// Destroys the subvolume `name` in `dir`.
fn destroy(dir: BorrowedFd<'_>, name: &str) -> std::io::Result<()> {
    // Root may destroy read-only subvolumes, but clearing the flag first keeps this working
    // where the kernel checks it (user_subvol_rm_allowed).
    set_readonly(open_dir(dir, name)?.as_fd(), false)?;
    let args = ioc::VolArgs {
        fd: 0,
        name: component(name)?,
    };
    // SAFETY: as in `subvol_create`: a live, initialised vol_args the kernel only reads.
    unsafe { ioc::snap_destroy(dir.as_raw_fd(), &args) }?;
    Ok(())
}

/// Whether `name` in `dir` is a subvolume (as opposed to a plain directory or file).
fn is_subvolume(dir: BorrowedFd<'_>, name: &str) -> std::io::Result<bool> {
    let st = fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR && st.st_ino == ioc::SUBVOL_ROOT_INO)
}

fn not_btrfs(path: &Path, found: i64) -> Error {
    Error::new(
        ErrorKind::InvalidArgument,
        format!(
            "{} is not on a btrfs filesystem (filesystem magic {found:#x}, btrfs is {:#x})",
            path.display(),
            BTRFS_SUPER_MAGIC.0
        ),
    )
}

/// The btrfs snapshotter: the btrfs [`Driver`] under the shared metadata.
pub type BtrfsSnapshotter = MetaSnapshotter<BtrfsDriver>;

impl BtrfsSnapshotter {
    /// Opens (creating) a btrfs snapshotter rooted at `root`, which must be on btrfs
    /// (`InvalidArgument` otherwise, before anything is created).
    pub fn new(root: &Path) -> Result<Self> {
        let driver = BtrfsDriver::open(root)?;
        MetaSnapshotter::open(&root.join("metadata"), driver)
    }
}

/// The storage of the btrfs backend: a subvolume per snapshot. Commits seal (flip the
/// subvolume read-only), so the generic snapshotter serialises them: a failed commit can
/// then clear the flag it set without undoing a concurrent commit of the same key that
/// succeeded.
pub struct BtrfsDriver {
    root: PathBuf,
    /// `<root>/snapshots`, opened once: every subvolume is named relative to it.
    snaps: OwnedFd,
}

impl BtrfsDriver {
    fn open(root: &Path) -> Result<Self> {
        let existing = root
            .ancestors()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        let st = statfs(existing).map_err(|e| io("statfs", existing, e.into()))?;
        if st.filesystem_type() != BTRFS_SUPER_MAGIC {
            return Err(not_btrfs(root, st.filesystem_type().0));
        }
        let snaps_path = root.join("snapshots");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&snaps_path)
            .map_err(|e| io("create", &snaps_path, e))?;
        let snaps = openat(
            nix::fcntl::AT_FDCWD,
            &snaps_path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open", &snaps_path, e.into()))?;
        // Something else may be mounted at (or below) the root.
        let st = fstatfs(&snaps).map_err(|e| io("statfs", &snaps_path, e.into()))?;
        if st.filesystem_type() != BTRFS_SUPER_MAGIC {
            return Err(not_btrfs(&snaps_path, st.filesystem_type().0));
        }
        Ok(BtrfsDriver {
            root: root.to_owned(),
            snaps,
        })
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn mounts_of(&self, s: &Snapshot) -> Vec<Mount> {
        let ro = s.kind != Kind::Active;
        vec![Mount {
            r#type: "bind".into(),
            source: self.dir(s.id).to_string_lossy().into_owned(),
            target: String::new(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        }]
    }

    fn open_snapshot(&self, id: u64) -> Result<OwnedFd> {
        open_dir(self.snaps.as_fd(), &id.to_string()).map_err(|e| io("open", &self.dir(id), e))
    }

    /// Makes the subvolume `tmp` for a new snapshot of `kind` on `parent_id`.
    fn make_subvolume(&self, tmp: &str, parent_id: Option<u64>, kind: Kind) -> Result<()> {
        let snaps = self.snaps.as_fd();
        let path = self.root.join("snapshots").join(tmp);
        let readonly = kind == Kind::View;
        match parent_id {
            Some(pid) => {
                let src = self.open_snapshot(pid)?;
                snapshot(snaps, tmp, src.as_fd(), readonly)
                    .map_err(|e| io("snapshot subvolume", &path, e))
            }
            None => {
                subvol_create(snaps, tmp).map_err(|e| io("create subvolume", &path, e))?;
                // The kernel applies the umask; the root of a snapshot is always 0755.
                let done = open_dir(snaps, tmp).and_then(|fd| {
                    fchmod(&fd, Mode::from_bits_truncate(0o755))?;
                    if readonly {
                        set_readonly(fd.as_fd(), true)?;
                    }
                    Ok(())
                });
                done.map_err(|e| {
                    let _ = destroy(snaps, tmp);
                    io("set up subvolume", &path, e)
                })
            }
        }
    }

    fn diff_usage(&self, s: &Snapshot) -> Result<Usage> {
        let top = self.open_snapshot(s.id)?;
        let parent = match s.parent_ids.first() {
            Some(&p) => Some(self.open_snapshot(p)?),
            None => None,
        };
        diff_usage(top.as_fd(), parent.as_ref().map(|p| p.as_fd()))
            .map_err(|e| io("measure usage of", &self.dir(s.id), e))
    }
}

/// Opens the directory `rel` beneath `root` without following symlinks or leaving it.
fn open_beneath(root: BorrowedFd<'_>, rel: &Path) -> nix::Result<OwnedFd> {
    openat2(
        root,
        rel,
        OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            ),
    )
}

fn same_inode(a: &FileStat, b: &FileStat) -> bool {
    (a.st_ino, a.st_ctime, a.st_ctime_nsec, a.st_size, a.st_mode)
        == (b.st_ino, b.st_ctime, b.st_ctime_nsec, b.st_size, b.st_mode)
}

/// Bytes (allocated blocks) and inodes of the entries under `top` that are not the same
/// inode at the same path under `parent` (everything, without a parent). Nothing is
/// followed: directories are opened beneath their subvolume without symlinks, and entries
/// of nested subvolumes (another device) are skipped. Entries that vanish mid-walk (an
/// active snapshot in use) are skipped too.
fn diff_usage(top: BorrowedFd<'_>, parent: Option<BorrowedFd<'_>>) -> std::io::Result<Usage> {
    let nofollow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
    let gone = |e: Errno| {
        matches!(
            e,
            Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV
        )
    };
    let dev = nix::sys::stat::fstat(top)?.st_dev;
    let mut usage = Usage::default();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![PathBuf::from(".")];
    while let Some(rel) = stack.pop() {
        let dir = match open_beneath(top, &rel) {
            Ok(d) => d,
            Err(e) if gone(e) => continue,
            Err(e) => return Err(e.into()),
        };
        // A directory missing from the parent (or not a directory there) makes every
        // entry below it new.
        let pdir = parent.and_then(|p| open_beneath(p, &rel).ok());
        let mut d = nix::dir::Dir::from_fd(dir)?;
        let names: Vec<CString> = d
            .iter()
            .map(|e| e.map(|e| e.file_name().to_owned()))
            .filter(|n| !matches!(n, Ok(n) if n.as_c_str() == c"." || n.as_c_str() == c".."))
            .collect::<nix::Result<_>>()?;
        for name in names {
            let st = match fstatat(&d, name.as_c_str(), nofollow) {
                Ok(st) => st,
                Err(e) if gone(e) => continue,
                Err(e) => return Err(e.into()),
            };
            if st.st_dev != dev {
                continue;
            }
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if is_dir {
                stack.push(rel.join(OsStr::from_bytes(name.as_bytes())));
            }
            let shared = pdir
                .as_ref()
                .and_then(|p| fstatat(p, name.as_c_str(), nofollow).ok())
                .is_some_and(|ps| same_inode(&ps, &st));
            if shared || !seen.insert(st.st_ino) {
                continue;
            }
            usage.inodes += 1;
            usage.size = usage.size.saturating_add(st.st_blocks.saturating_mul(512));
        }
    }
    Ok(usage)
}

impl Driver for BtrfsDriver {
    fn create(&self, tmp: &str, parent: Option<u64>, kind: Kind) -> Result<()> {
        self.make_subvolume(tmp, parent, kind)
    }

    fn install(&self, tmp: &str, id: u64) -> Result<()> {
        let snaps = self.snaps.as_fd();
        renameat(snaps, tmp, snaps, id.to_string().as_str())
            .map_err(|e| io("rename snapshot into place", &self.dir(id), e.into()))
    }

    fn discard(&self, tmp: &str) {
        if let Err(d) = destroy(self.snaps.as_fd(), tmp) {
            warn!(error = %d, name = tmp, "temp subvolume left for cleanup");
        }
    }

    fn mounts(&self, s: &Snapshot) -> Vec<Mount> {
        self.mounts_of(s)
    }

    fn usage(&self, s: &Snapshot) -> Result<Usage> {
        self.diff_usage(s)
    }

    fn seals_on_commit(&self) -> bool {
        true
    }

    fn seal(&self, s: &Snapshot) -> Result<()> {
        let fd = self.open_snapshot(s.id)?;
        set_readonly(fd.as_fd(), true).map_err(|e| io("set read-only", &self.dir(s.id), e))
    }

    fn unseal(&self, s: &Snapshot) {
        let undone = self.open_snapshot(s.id).and_then(|fd| {
            set_readonly(fd.as_fd(), false).map_err(|e| io("clear read-only", &self.dir(s.id), e))
        });
        if let Err(u) = undone {
            warn!(error = %u, id = s.id, "active snapshot left read-only after a failed commit");
        }
    }

    fn remove(&self, id: u64) {
        // Destroying a subvolume unlinks it at once (the kernel frees it in the
        // background), so no half-removed tree can be taken for a live snapshot.
        if let Err(e) = destroy(self.snaps.as_fd(), &id.to_string()) {
            warn!(error = %e, id, "snapshot subvolume left for cleanup");
        }
    }

    fn cleanup(&self, ids: &HashMap<u64, String>) -> Result<()> {
        let snaps_path = self.root.join("snapshots");
        let snaps = self.snaps.as_fd();
        let mut first_err = None;
        for entry in fs::read_dir(&snaps_path).map_err(|e| io("read directory", &snaps_path, e))? {
            let entry = entry.map_err(|e| io("read directory", &snaps_path, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Temp subvolumes of this process belong to creations in flight.
            if is_live(&name, ids) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // Only direct children of our own directory are removed, by name: nothing
            // inside a snapshot (which a container can change) is followed.
            let path = entry.path();
            let res = match is_subvolume(snaps, &name) {
                Ok(true) => destroy(snaps, &name),
                Ok(false) => fs::remove_dir_all(&path),
                Err(e) => Err(e),
            };
            if let Err(e) = res {
                warn!(error = %e, path = %path.display(), "cannot remove unreferenced snapshot");
                first_err.get_or_insert(io("remove", &path, e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
