//! [`copy_tree`]: an exact copy of a directory tree, as the native backend needs to give a
//! child snapshot its parent's contents.
//!
//! Everything is reached through directory fds and `*at` calls with `AT_SYMLINK_NOFOLLOW`
//! / `O_NOFOLLOW`, so a symlink a container planted in a snapshot is copied as a link and
//! never followed, on either side. Xattrs of nodes that cannot be opened safely (symlinks,
//! devices, FIFOs, sockets) go through `/proc/self/fd/<dir fd>/<name>`, whose last
//! component the `l*xattr` calls do not follow. The walk is iterative; memory is one
//! directory listing per level plus the hard links still waiting for their other names.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, Whence};

use crate::Result;
use crate::fsutil::io;

/// Directory levels whose fds stay open; deeper ancestors are closed and reopened by name
/// (and checked to be the same inode), so a deep tree cannot exhaust the fd limit.
const KEEP_OPEN: usize = 32;

/// Read/write fallback buffer, for when `copy_file_range` does not work.
const BUF_SIZE: usize = 128 * 1024;

/// Copies the tree at `src` to `dst` (which must not exist; its parent must), preserving
/// file types, sparse files' holes, hard links, ownership, modes, xattrs and nanosecond
/// atimes/mtimes. Symlinks are never followed; filesystems mounted inside `src` are
/// skipped. On error `dst` may be partly written: the caller removes it.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let s =
        nix::fcntl::open(src, dir_flags, Mode::empty()).map_err(|e| io("open", src, e.into()))?;
    let meta = stat(s.as_fd(), c"", libc::AT_EMPTY_PATH).map_err(|e| io("stat", src, e))?;
    // 0700 until the contents are in: nobody else sees a half-made tree.
    nix::unistd::mkdir(dst, Mode::from_bits_truncate(0o700))
        .map_err(|e| io("create", dst, e.into()))?;
    let d =
        nix::fcntl::open(dst, dir_flags, Mode::empty()).map_err(|e| io("open", dst, e.into()))?;
    let entries = read_names(s.as_fd()).map_err(|(op, e)| io(op, src, e))?;
    let mut walk = Walk {
        dev: meta.dev,
        mnt_id: meta.mnt_id,
        links: HashMap::new(),
        buf: Vec::new(),
        stack: vec![Frame {
            name: CString::default(),
            meta,
            fds: Some((s, d)),
            entries: entries.into_iter(),
        }],
    };
    walk.run()
        .map_err(|(path, op, e)| io(op, &src.join(path), e))
}

/// A failed step: what was being done, and why it failed.
type Step<T> = std::result::Result<T, (&'static str, io::Error)>;

trait Ctx<T> {
    fn ctx(self, op: &'static str) -> Step<T>;
}

impl<T> Ctx<T> for nix::Result<T> {
    fn ctx(self, op: &'static str) -> Step<T> {
        self.map_err(|e| (op, e.into()))
    }
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, op: &'static str) -> Step<T> {
        self.map_err(|e| (op, e))
    }
}

/// The fields of `statx` the copy needs.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    ino: u64,
    dev: u64,
    rdev: u64,
    atime: TimeSpec,
    mtime: TimeSpec,
    /// `None` on kernels without `STATX_MNT_ID`.
    mnt_id: Option<u64>,
}

impl Meta {
    fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    fn perm(&self) -> Mode {
        Mode::from_bits_truncate(self.mode & 0o7777)
    }
}

fn stat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<Meta> {
    let mut buf = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `name` is NUL-terminated and `buf` is writable memory of statx's size; both
    // outlive the call.
    let r = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
            buf.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx succeeded and filled the buffer, which was zeroed (a valid statx) anyway.
    let s = unsafe { buf.assume_init() };
    let ts = |t: libc::statx_timestamp| TimeSpec::new(t.tv_sec, i64::from(t.tv_nsec));
    Ok(Meta {
        mode: u32::from(s.stx_mode),
        uid: s.stx_uid,
        gid: s.stx_gid,
        nlink: s.stx_nlink,
        ino: s.stx_ino,
        dev: libc::makedev(s.stx_dev_major, s.stx_dev_minor),
        rdev: libc::makedev(s.stx_rdev_major, s.stx_rdev_minor),
        atime: ts(s.stx_atime),
        mtime: ts(s.stx_mtime),
        mnt_id: (s.stx_mask & libc::STATX_MNT_ID != 0).then_some(s.stx_mnt_id),
    })
}

/// Stats what `fd` opened and checks it is the inode `want` described: the entry may
/// have been replaced between the stat by name and the open.
fn same_inode(fd: BorrowedFd<'_>, want: &Meta) -> Step<()> {
    let got = stat(fd, c"", libc::AT_EMPTY_PATH).ctx("stat")?;
    if got.dev != want.dev || got.ino != want.ino {
        return Err(("open", io::Error::other("changed while being copied")));
    }
    Ok(())
}

fn read_names(dir: BorrowedFd<'_>) -> Step<Vec<CString>> {
    // A dup shares the offset, but the original is only ever used for `*at` calls.
    let fd = dir.try_clone_to_owned().ctx("read directory")?;
    let mut d = nix::dir::Dir::from_fd(fd).ctx("read directory")?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e.ctx("read directory")?;
        let n = e.file_name();
        if n != c"." && n != c".." {
            names.push(n.to_owned());
        }
    }
    Ok(names)
}

/// A directory being copied.
struct Frame {
    /// Name in the parent (empty for the root).
    name: CString,
    /// The source directory's metadata, applied to the copy after its contents, so that
    /// neither a read-only mode nor a default ACL gets in the way of filling it and the
    /// copying does not change its times.
    meta: Meta,
    /// Source and destination directory; `None` while closed (see [`KEEP_OPEN`]).
    fds: Option<(OwnedFd, OwnedFd)>,
    entries: std::vec::IntoIter<CString>,
}

/// A node with more links than names seen so far.
struct Link {
    /// Path of its first copy, relative to the destination root.
    path: Vec<CString>,
    /// Names still to come.
    left: u32,
}

struct Walk {
    dev: u64,
    mnt_id: Option<u64>,
    /// By source (dev, ino).
    links: HashMap<(u64, u64), Link>,
    buf: Vec<u8>,
    stack: Vec<Frame>,
}

type WalkErr = (PathBuf, &'static str, io::Error);

impl Walk {
    fn path(&self, name: Option<&CStr>) -> PathBuf {
        let mut p = PathBuf::new();
        for n in self
            .stack
            .iter()
            .skip(1)
            .map(|f| f.name.as_c_str())
            .chain(name)
        {
            p.push(OsStr::from_bytes(n.to_bytes()));
        }
        p
    }

    fn run(&mut self) -> std::result::Result<(), WalkErr> {
        while let Some(top) = self.stack.last_mut() {
            match top.entries.next() {
                Some(name) => {
                    self.entry(&name)
                        .map_err(|(op, e)| (self.path(Some(&name)), op, e))?;
                }
                None => {
                    let at = self.path(None);
                    let f = self.stack.pop().expect("the stack is not empty");
                    let (s, d) = f.fds.expect("the innermost directory is open");
                    finish(Node::Fd(s.as_fd()), Node::Fd(d.as_fd()), &f.meta)
                        .map_err(|(op, e)| (at.clone(), op, e))?;
                    if self.stack.last().is_some_and(|f| f.fds.is_none()) {
                        self.reopen().map_err(|(op, e)| (at, op, e))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn entry(&mut self, name: &CStr) -> Step<()> {
        let top = self.stack.last().expect("the stack is not empty");
        let (s, d) = top.fds.as_ref().expect("the innermost directory is open");
        let (s, d) = (s.as_fd(), d.as_fd());
        let m = stat(s, name, 0).ctx("stat")?;
        if m.dev != self.dev || m.mnt_id.zip(self.mnt_id).is_some_and(|(a, b)| a != b) {
            // A mount point: what is mounted there belongs to another filesystem.
            return Ok(());
        }
        if m.kind() == libc::S_IFDIR {
            nix::sys::stat::mkdirat(d, name, Mode::from_bits_truncate(0o700)).ctx("mkdir")?;
            let fds = open_dirs(s, d, name, &m)?;
            let entries = read_names(fds.0.as_fd())?;
            self.stack.push(Frame {
                name: name.to_owned(),
                meta: m,
                fds: Some(fds),
                entries: entries.into_iter(),
            });
            if let Some(far) = self.stack.len().checked_sub(KEEP_OPEN + 1)
                && far > 0
            {
                self.stack[far].fds = None;
            }
            return Ok(());
        }
        if m.nlink > 1
            && let Some(l) = self.links.get_mut(&(m.dev, m.ino))
        {
            let root = self.stack[0].fds.as_ref().expect("the root stays open");
            let root = root.1.as_fd();
            let (last, dirs) = l.path.split_last().expect("a path has a name");
            let dir = open_dst_dir(root, dirs)?;
            let dir = dir.as_ref().map_or(root, |f| f.as_fd());
            nix::unistd::linkat(dir, &**last, d, name, AtFlags::empty()).ctx("link")?;
            l.left -= 1;
            if l.left == 0 {
                self.links.remove(&(m.dev, m.ino));
            }
            return Ok(());
        }
        match m.kind() {
            libc::S_IFREG => copy_file(&mut self.buf, s, d, name, &m)?,
            libc::S_IFLNK => {
                let target = nix::fcntl::readlinkat(s, name).ctx("readlink")?;
                nix::unistd::symlinkat(target.as_os_str(), d, name).ctx("symlink")?;
                finish(Node::At(s, name), Node::At(d, name), &m)?;
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK => {
                let kind = SFlag::from_bits_truncate(m.kind());
                nix::sys::stat::mknodat(d, name, kind, Mode::S_IRUSR | Mode::S_IWUSR, m.rdev)
                    .ctx("mknod")?;
                finish(Node::At(s, name), Node::At(d, name), &m)?;
            }
            _ => return Err(("copy", io::Error::other("unknown file type"))),
        }
        if m.nlink > 1 {
            let mut path: Vec<CString> = self.stack[1..].iter().map(|f| f.name.clone()).collect();
            path.push(name.to_owned());
            let left = m.nlink - 1;
            self.links.insert((m.dev, m.ino), Link { path, left });
        }
        Ok(())
    }

    /// Reopens the closed innermost directory, and the open window above it, by name
    /// from the nearest open ancestor.
    fn reopen(&mut self) -> Step<()> {
        let top = self.stack.len() - 1;
        let open = (0..top)
            .rev()
            .find(|&i| self.stack[i].fds.is_some())
            .expect("the root stays open");
        let keep = (open + 1).max((top + 1).saturating_sub(KEEP_OPEN));
        let mut cur: Option<(OwnedFd, OwnedFd)> = None;
        for k in open + 1..=top {
            let fds = {
                let (s, d) = match &cur {
                    Some(p) => p,
                    None => self.stack[k - 1].fds.as_ref().expect("opened in order"),
                };
                let f = &self.stack[k];
                open_dirs(s.as_fd(), d.as_fd(), &f.name, &f.meta)?
            };
            if k >= keep {
                self.stack[k].fds = Some(fds);
                cur = None;
            } else {
                cur = Some(fds);
            }
        }
        Ok(())
    }
}

fn copy_file(
    buf: &mut Vec<u8>,
    sdir: BorrowedFd<'_>,
    ddir: BorrowedFd<'_>,
    name: &CStr,
    m: &Meta,
) -> Step<()> {
    // O_NONBLOCK: should the entry have become a FIFO since the stat, open must not
    // hang (same_inode then rejects it).
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let s = nix::fcntl::openat(sdir, name, flags | OFlag::O_CLOEXEC, Mode::empty()).ctx("open")?;
    same_inode(s.as_fd(), m)?;
    let s = File::from(s);
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
    let d = nix::fcntl::openat(
        ddir,
        name,
        flags | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .ctx("create")?;
    let d = File::from(d);
    let size = s.metadata().ctx("stat")?.len();
    copy_data(buf, &s, &d, size)?;
    d.set_len(size).ctx("truncate")?;
    finish(Node::Fd(s.as_fd()), Node::Fd(d.as_fd()), m)
}

/// Copies the data segments of `s` below `size` to the same offsets of the empty `d`,
/// leaving holes as holes.
fn copy_data(buf: &mut Vec<u8>, s: &File, d: &File, size: u64) -> Step<()> {
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    let mut fast = true;
    let mut off = 0;
    while off < size {
        let start = match nix::unistd::lseek(s, off, Whence::SeekData) {
            Ok(o) => o,
            Err(Errno::ENXIO) => break,
            // No SEEK_DATA here: treat the rest as data.
            Err(Errno::EINVAL) => off,
            Err(e) => return Err(("seek", e.into())),
        };
        if start >= size {
            break;
        }
        let end = match nix::unistd::lseek(s, start, Whence::SeekHole) {
            Ok(o) => o.min(size),
            Err(Errno::EINVAL) => size,
            Err(e) => return Err(("seek", e.into())),
        };
        if !copy_range(buf, s, d, start, end, &mut fast)? {
            break;
        }
        off = end;
    }
    Ok(())
}

/// Copies `[pos, end)`; false if the source ended early (it shrank meanwhile).
fn copy_range(
    buf: &mut Vec<u8>,
    s: &File,
    d: &File,
    mut pos: i64,
    end: i64,
    fast: &mut bool,
) -> Step<bool> {
    while pos < end {
        let len = usize::try_from(end - pos).unwrap_or(usize::MAX);
        if *fast {
            let (mut i, mut o) = (pos, pos);
            // SAFETY: both fds are open for the call and the offsets are valid i64s it
            // may update.
            let r = unsafe {
                libc::copy_file_range(s.as_raw_fd(), &mut i, d.as_raw_fd(), &mut o, len, 0)
            };
            match Errno::result(r).map(|n| n as usize) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    pos += n as i64;
                    continue;
                }
                Err(Errno::EINTR) => continue,
                // Not supported between these files: read and write instead.
                Err(Errno::EXDEV | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EINVAL) => {
                    *fast = false;
                }
                Err(e) => return Err(("copy data", e.into())),
            }
        }
        if buf.is_empty() {
            *buf = vec![0; BUF_SIZE];
        }
        let n = len.min(buf.len());
        let n = s.read_at(&mut buf[..n], pos as u64).ctx("read")?;
        if n == 0 {
            return Ok(false);
        }
        d.write_all_at(&buf[..n], pos as u64).ctx("write")?;
        pos += n as i64;
    }
    Ok(true)
}

/// Opens the source directory `name` (checked against `m`) and its copy.
fn open_dirs(
    s: BorrowedFd<'_>,
    d: BorrowedFd<'_>,
    name: &CStr,
    m: &Meta,
) -> Step<(OwnedFd, OwnedFd)> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let sf = nix::fcntl::openat(s, name, flags, Mode::empty()).ctx("open")?;
    same_inode(sf.as_fd(), m)?;
    let df = nix::fcntl::openat(d, name, flags, Mode::empty()).ctx("open copy")?;
    Ok((sf, df))
}

/// Opens the destination directory at `dirs` below `root`; `None` for the root itself.
fn open_dst_dir(root: BorrowedFd<'_>, dirs: &[CString]) -> Step<Option<OwnedFd>> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir: Option<OwnedFd> = None;
    for n in dirs {
        let at = dir.as_ref().map_or(root, |f| f.as_fd());
        dir = Some(nix::fcntl::openat(at, &**n, flags, Mode::empty()).ctx("open link source")?);
    }
    Ok(dir)
}

/// How to reach a node's inode for metadata calls.
#[derive(Clone, Copy)]
enum Node<'a> {
    /// An fd opened on the node itself (regular files, directories).
    Fd(BorrowedFd<'a>),
    /// A name in a directory: for nodes that are not opened.
    At(BorrowedFd<'a>, &'a CStr),
}

impl Node<'_> {
    /// A path to the node whose only symlinks are the kernel's `/proc/self/fd` link to the
    /// directory, for the `l*xattr` calls (which do not follow the last component).
    fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> CString {
        let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
        p.extend_from_slice(name.to_bytes());
        CString::new(p).expect("directory entry names have no NUL")
    }
}

/// Gives `d` the owner, xattrs, mode and times of `s` (described by `m`), in that order:
/// chown clears setuid/setgid and `security.capability`, so those come after it.
fn finish(s: Node<'_>, d: Node<'_>, m: &Meta) -> Step<()> {
    let (uid, gid) = (Some(Uid::from_raw(m.uid)), Some(Gid::from_raw(m.gid)));
    match d {
        Node::Fd(fd) => nix::unistd::fchown(fd, uid, gid),
        Node::At(dir, name) => {
            nix::unistd::fchownat(dir, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
        }
    }
    .ctx("chown")?;
    copy_xattrs(s, d)?;
    match d {
        Node::Fd(fd) => nix::sys::stat::fchmod(fd, m.perm()).ctx("chmod")?,
        // Symlinks have no mode of their own on Linux.
        Node::At(..) if m.kind() == libc::S_IFLNK => {}
        Node::At(dir, name) => {
            nix::sys::stat::fchmodat(dir, name, m.perm(), FchmodatFlags::NoFollowSymlink)
                .ctx("chmod")?;
        }
    }
    match d {
        Node::Fd(fd) => nix::sys::stat::futimens(fd, &m.atime, &m.mtime),
        Node::At(dir, name) => nix::sys::stat::utimensat(
            dir,
            name,
            &m.atime,
            &m.mtime,
            UtimensatFlags::NoFollowSymlink,
        ),
    }
    .ctx("set times")
}

/// Calls `f(buf, len)` first to size the buffer, then to fill it, retrying if the value
/// grew in between (ERANGE). `buf` is null with `len` 0, or points to `len` writable bytes:
/// the SAFETY comments of the callers rely on this.
fn sized(mut f: impl FnMut(*mut libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let n = f(std::ptr::null_mut(), 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n as usize];
        let n = f(buf.as_mut_ptr().cast(), buf.len());
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

fn list_xattrs(n: Node<'_>) -> io::Result<Vec<u8>> {
    match n {
        Node::Fd(fd) => sized(|b, len| {
            // SAFETY: the buffer is as `sized` promises; the fd outlives the call.
            unsafe { libc::flistxattr(fd.as_raw_fd(), b.cast(), len) }
        }),
        Node::At(dir, name) => {
            let p = Node::proc_path(dir, name);
            sized(|b, len| {
                // SAFETY: the buffer is as `sized` promises; the path is NUL-terminated
                // and outlives the call.
                unsafe { libc::llistxattr(p.as_ptr(), b.cast(), len) }
            })
        }
    }
}

fn get_xattr(n: Node<'_>, key: &CStr) -> io::Result<Vec<u8>> {
    match n {
        Node::Fd(fd) => sized(|b, len| {
            // SAFETY: the buffer is as `sized` promises; the fd and the NUL-terminated key
            // outlive the call.
            unsafe { libc::fgetxattr(fd.as_raw_fd(), key.as_ptr(), b, len) }
        }),
        Node::At(dir, name) => {
            let p = Node::proc_path(dir, name);
            sized(|b, len| {
                // SAFETY: the buffer is as `sized` promises; path and key are
                // NUL-terminated and outlive the call.
                unsafe { libc::lgetxattr(p.as_ptr(), key.as_ptr(), b, len) }
            })
        }
    }
}

fn set_xattr(n: Node<'_>, key: &CStr, value: &[u8]) -> io::Result<()> {
    let (v, len) = (value.as_ptr().cast(), value.len());
    let r = match n {
        // SAFETY: `value` is readable for `len` bytes; the fd and the NUL-terminated key
        // outlive the call.
        Node::Fd(fd) => unsafe { libc::fsetxattr(fd.as_raw_fd(), key.as_ptr(), v, len, 0) },
        Node::At(dir, name) => {
            let p = Node::proc_path(dir, name);
            // SAFETY: `value` is readable for `len` bytes; path and key are NUL-terminated
            // and outlive the call.
            unsafe { libc::lsetxattr(p.as_ptr(), key.as_ptr(), v, len, 0) }
        }
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies every xattr (`trusted.*` and `security.*` included: overlay's opaque markers
/// and file capabilities live there).
fn copy_xattrs(s: Node<'_>, d: Node<'_>) -> Step<()> {
    let names = match list_xattrs(s) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(()),
        Err(e) => return Err(("list xattrs", e)),
    };
    for key in names.split(|&b| b == 0).filter(|k| !k.is_empty()) {
        let key = CString::new(key).expect("split at NUL");
        let value = match get_xattr(s, &key) {
            Ok(v) => v,
            // Removed since the listing.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(("get xattr", e)),
        };
        set_xattr(d, &key, &value).ctx("set xattr")?;
    }
    Ok(())
}
