//! The layer applier: extracts an uncompressed OCI/Docker layer tar into a directory,
//! converting whiteouts, and reports the layer's diff_id.
//!
//! # Threat model
//!
//! The layer is hostile. Its digest being right proves only that it is the layer the
//! manifest names, and anyone can push a manifest. Whatever the tar holds, applying it
//! must never create, modify, chmod, chown, link or remove anything outside `root`,
//! and must fail with bounded memory and work when it is oversized. Out of scope: other
//! processes changing `root` while a layer is applied (the snapshot is private to strata
//! until committed), and what the container later does with devices or setuid files
//! the image ships (those are the image's content; device nodes are only nodes).
//!
//! How the applier holds to that:
//! - Names are cleaned before use: `.` components, repeated and trailing slashes and a
//!   leading `/` are dropped (an absolute name is taken relative to `root`, as GNU tar
//!   and containerd do); any `..` component is refused; lengths are capped.
//! - No path is ever handed to the kernel from `/` or the working directory. The parent
//!   of every entry is opened with `openat2(root_fd, parent, RESOLVE_IN_ROOT |
//!   RESOLVE_NO_MAGICLINKS)`, which resolves symlinks, absolute or relative, as if `root`
//!   were `/`: a symlink in the archive pointing at `/etc` or `../../..` leads to
//!   `root/etc` or `root`, never out. Missing parents are made one component at a time
//!   with `mkdirat` on a descriptor that was resolved the same way.
//! - The final component is only ever used through `*at` calls on that parent
//!   descriptor that do not follow it: files are created `O_CREAT | O_EXCL |
//!   O_NOFOLLOW` after unlinking what was there, directories opened `O_NOFOLLOW`,
//!   ownership, mode, times and xattrs of symlinks and device nodes set with
//!   `AT_SYMLINK_NOFOLLOW`, and `linkat` never follows. So an entry replacing a
//!   directory with a symlink mid-archive cannot redirect later entries: they resolve
//!   the new symlink inside `root`.
//! - Hard link targets are cleaned like names and resolved inside `root`; a target that
//!   is missing or a directory is refused. A target that is a symlink is linked itself,
//!   not followed (as GNU tar and Docker do): the new name is one more symlink with the
//!   same text, which is no more than the archive could create directly.
//! - Whiteouts naming `.`, `..` or nothing are refused; their parent is resolved inside
//!   `root` like any entry's.
//! - PAX xattrs in the `trusted.overlay.` and `user.overlay.` namespaces are dropped with
//!   a warning: overlayfs reads them as whiteouts, opaque markers, redirects and
//!   metacopy origins, so a layer must not be able to forge them.
//! - Bodies are streamed in 128 KiB chunks; PAX and GNU long-name headers are buffered
//!   only up to [`Limits::max_header_size`]; bytes and entries are counted against
//!   [`Limits`]; the bookkeeping kept per entry is a few dozen bytes.
//!
//! # Semantics
//!
//! Entries replace what is there: a file over anything unlinks it first (a directory
//! tree is removed, within `root`), a directory over a directory keeps it and updates
//! its metadata. Ownership is set before the mode (chown clears setuid), xattrs after
//! both (chown clears `security.capability`), times last; a directory's times are set
//! when its entry is applied and set again after every later change inside it, so they
//! end as the archive says. An entry naming the root directory is ignored, as in
//! containerd. Header-only entry types (links, devices, directories, FIFOs) have no
//! body whatever their size field says, as in Go's archive/tar. Sparse files and
//! unknown entry types are refused. Nothing is synced: the caller syncs the filesystem
//! once per layer before committing the snapshot.
//!
//! Whiteouts follow [`WhiteoutMode`]. Per the OCI spec a whiteout applies only to what
//! lower layers hold, never to what this same layer wrote; the applier tracks the
//! inodes it wrote (and so also keeps the directories leading to them).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstat, fstatat,
    futimens, makedev, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use strata_proto::Digest;

use crate::Limits;

mod error;
pub use error::{ApplyError, ApplyResult, EntryName, Limit};

mod archive;
mod fs;

use archive::{Kind, RawEntry, TarReader, Timestamp};

/// How whiteout entries (`.wh.NAME`, `.wh..wh..opq`) are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// `root` is an overlayfs upper directory (not mounted): `.wh.NAME` becomes the
    /// whiteout overlayfs reads, a 0:0 character device named NAME, and
    /// `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory.
    ///
    /// Only the upper directory is seen: a hard link to a file of a lower layer is
    /// refused as missing, and a parent directory the layer does not list is made 0755
    /// root-owned. Right for a bottom layer; see `OverlayDetached` for the others.
    Overlay,
    /// As `Overlay`, for an upper directory extracted before the layers below it exist
    /// (strata unpacks layers in parallel). An entry whose result depends on them fails
    /// with [`ApplyError::NeedsLowerLayers`]: a hard link to a file this layer does not hold,
    /// and a parent directory this layer does not list (below, it may be a directory with
    /// another owner and mode, or a symlink). The caller then applies the layer again
    /// through a mount of its parents, as containerd does.
    OverlayDetached,
    /// `root` holds the parent's whole tree (a native or btrfs snapshot): `.wh.NAME`
    /// removes NAME recursively, and `.wh..wh..opq` removes every child of its directory
    /// that this layer did not write.
    Delete,
}

impl WhiteoutMode {
    /// The mode for a backend storing layers in `format` (a bottom layer; the unpacker
    /// switches to [`WhiteoutMode::OverlayDetached`] for layers it extracts in parallel).
    pub fn of(format: strata_snapshotter::Whiteouts) -> Self {
        match format {
            strata_snapshotter::Whiteouts::Overlay => WhiteoutMode::Overlay,
            strata_snapshotter::Whiteouts::Delete => WhiteoutMode::Delete,
        }
    }
}

/// What applying a layer did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyStats {
    /// sha256 of the uncompressed tar stream, every byte read included; equals the
    /// image config's `rootfs.diff_ids` entry for the layer.
    pub diff_id: Digest,
    /// Uncompressed bytes read.
    pub tar_bytes: u64,
    /// Tar entries applied (extension headers not counted; whiteouts counted).
    pub entries: u64,
    /// Bytes written to regular files.
    pub file_bytes: u64,
    /// Whiteout entries (opaque markers included).
    pub whiteouts: u64,
    /// xattrs dropped: overlayfs's own namespaces, or unsupported by the filesystem.
    pub dropped_xattrs: u64,
}

/// Extracts the uncompressed layer tar `layer` into `root`, converting whiteouts as
/// `whiteouts` says, within `limits`. See the [module docs](self) for the threat model
/// and semantics.
///
/// The whole stream is read, bytes after the end-of-archive marker included, so
/// [`ApplyStats::diff_id`] is the digest of exactly what `layer` yielded.
///
/// Errors: [`ApplyError::Malformed`], [`ApplyError::Refused`], [`ApplyError::Decompress`] for
/// malformed or hostile input; [`ApplyError::LimitExceeded`]; [`ApplyError::Read`] and
/// [`ApplyError::Io`] for failures of the stream or the filesystem. On error `root` holds
/// a partial layer and should be discarded.
pub fn apply_layer(
    layer: impl Read,
    root: &Path,
    whiteouts: WhiteoutMode,
    limits: &Limits,
) -> ApplyResult<ApplyStats> {
    apply(layer, root, whiteouts, limits, true)
}

/// [`apply_layer`] for a caller that hashes the stream itself (on the thread that
/// decompresses it, off the thread that creates files): the returned
/// [`ApplyStats::diff_id`] is meaningless, and the caller's digest of everything
/// `layer` yielded replaces it.
pub(crate) fn apply_layer_unhashed(
    layer: impl Read,
    root: &Path,
    whiteouts: WhiteoutMode,
    limits: &Limits,
) -> ApplyResult<ApplyStats> {
    apply(layer, root, whiteouts, limits, false)
}

fn apply(
    layer: impl Read,
    root: &Path,
    whiteouts: WhiteoutMode,
    limits: &Limits,
    hash: bool,
) -> ApplyResult<ApplyStats> {
    let root_fd =
        fs::open_root(root).map_err(|e| ApplyError::Root(root.display().to_string(), e.into()))?;
    let fresh = fs::is_empty_dir(root_fd.as_fd())
        .map_err(|e| ApplyError::Root(root.display().to_string(), e.into()))?;
    let mut reader = TarReader::new(layer, limits);
    if !hash {
        reader = reader.without_hash();
    }
    let mut applier = Applier {
        root: root_fd,
        mode: whiteouts,
        limits,
        fresh,
        written: HashSet::new(),
        dir_times: HashMap::new(),
        parent: None,
        umask: fs::umask(),
        euid: nix::unistd::geteuid(),
        egid: nix::unistd::getegid(),
        entries: 0,
        file_bytes: 0,
        whiteouts: 0,
        dropped_xattrs: 0,
    };
    while let Some(entry) = reader.next_entry()? {
        applier.entries += 1;
        applier.apply(&entry, &mut reader)?;
    }
    let (diff_id, tar_bytes) = reader.finish()?;
    applier.set_dir_times()?;
    tracing::debug!(
        %diff_id,
        tar_bytes,
        entries = applier.entries,
        whiteouts = applier.whiteouts,
        "layer applied"
    );
    Ok(ApplyStats {
        diff_id,
        tar_bytes,
        entries: applier.entries,
        file_bytes: applier.file_bytes,
        whiteouts: applier.whiteouts,
        dropped_xattrs: applier.dropped_xattrs,
    })
}

type InodeKey = (u64, u64);

fn key(st: &FileStat) -> InodeKey {
    (st.st_dev, st.st_ino)
}

fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn timespec(t: Timestamp) -> TimeSpec {
    TimeSpec::new(t.sec, i64::from(t.nsec))
}

/// Splits a cleaned path into its parent and last component.
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Where an xattr goes: an open file or directory, or a name in a directory (symlinks
/// and device nodes, which are never opened).
#[derive(Clone, Copy)]
enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a [u8]),
}

struct Applier<'l> {
    root: OwnedFd,
    mode: WhiteoutMode,
    limits: &'l Limits,
    /// The root was empty at the start: everything in it is this layer's, and `written`
    /// need not be kept.
    fresh: bool,
    /// Inodes this layer wrote, as (st_dev, st_ino) (unless `fresh`).
    written: HashSet<InodeKey>,
    /// Times of directories this layer wrote and where: set once all entries are in, as
    /// GNU tar does, for every entry written inside a directory changes its times.
    dir_times: HashMap<InodeKey, (Vec<u8>, TimeSpec, TimeSpec)>,
    /// The last parent directory opened, by path: consecutive entries mostly share one.
    /// Dropped whenever anything is removed, so a path never outlives what it named.
    parent: Option<(Vec<u8>, Rc<OwnedFd>, FileStat)>,
    /// The process's umask, when known: a file whose mode it leaves alone is created
    /// with that mode, saving a chmod.
    umask: Option<u32>,
    euid: Uid,
    egid: Gid,
    entries: u64,
    file_bytes: u64,
    whiteouts: u64,
    dropped_xattrs: u64,
}

impl Applier<'_> {
    fn apply<R: Read>(
        &mut self,
        entry: &RawEntry,
        reader: &mut TarReader<'_, R>,
    ) -> ApplyResult<()> {
        let raw = entry.path.as_slice();
        let path = clean_path(raw, raw, self.limits)?;
        if path.is_empty() {
            if entry.kind == Kind::Dir {
                tracing::debug!(entry = %EntryName::new(raw), "ignoring an entry for the root");
                return Ok(());
            }
            return Err(ApplyError::refused(raw, "names the root directory"));
        }
        let (parent, name) = split(&path);
        if let Some(target) = name.strip_prefix(b".wh.") {
            return self.whiteout(raw, parent, target);
        }
        let uid = u32::try_from(entry.uid)
            .ok()
            .filter(|u| *u != u32::MAX)
            .ok_or_else(|| ApplyError::refused(raw, "uid out of range"))?;
        let gid = u32::try_from(entry.gid)
            .ok()
            .filter(|g| *g != u32::MAX)
            .ok_or_else(|| ApplyError::refused(raw, "gid out of range"))?;
        let owner = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        let perm = Mode::from_bits_truncate(entry.mode & 0o7777);
        let mtime = timespec(entry.mtime);
        let atime = timespec(entry.atime.unwrap_or(entry.mtime));

        let dir = self.parent_dir(raw, parent, true)?.expect("created");
        match entry.kind {
            Kind::File => {
                let chown = self.needs_chown(uid, gid);
                // Created with its final mode when neither the umask nor a chown (which
                // clears setuid bits) would change it; else private until chmod-ed.
                let direct = !chown
                    && perm.bits() & 0o7000 == 0
                    && self.umask.is_some_and(|m| perm.bits() & m == 0);
                let create_mode = if direct {
                    perm
                } else {
                    Mode::from_bits_truncate(0o600)
                };
                let create = || {
                    openat(
                        &dir,
                        name,
                        OFlag::O_WRONLY
                            | OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        create_mode,
                    )
                };
                // Most names are new: try first, make room only when something is there.
                let fd = match create() {
                    Err(Errno::EEXIST) => {
                        self.clear_slot(raw, &dir, name, false)?;
                        create()
                    }
                    r => r,
                }
                .map_err(|e| io_err(raw, "create file", e))?;
                let mut file = File::from(fd);
                reader.copy_body(&mut file)?.map_err(|e| ApplyError::Io {
                    path: EntryName::new(raw),
                    op: "write file",
                    source: e,
                })?;
                self.file_bytes += entry.size;
                if chown {
                    fchown(&file, owner.0, owner.1).map_err(|e| io_err(raw, "chown", e))?;
                }
                if !direct {
                    fchmod(&file, perm).map_err(|e| io_err(raw, "chmod", e))?;
                }
                self.set_xattrs(raw, XattrTarget::Fd(file.as_fd()), &entry.xattrs)?;
                futimens(&file, &atime, &mtime).map_err(|e| io_err(raw, "set times", e))?;
                self.mark_fd(raw, &file)?;
            }
            Kind::Dir => {
                if self.clear_slot(raw, &dir, name, true)?.is_none() {
                    mkdirat(&dir, name, Mode::from_bits_truncate(0o700))
                        .map_err(|e| io_err(raw, "create directory", e))?;
                }
                let fd = openat(
                    &dir,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_err(raw, "open directory", e))?;
                fchown(&fd, owner.0, owner.1).map_err(|e| io_err(raw, "chown", e))?;
                fchmod(&fd, perm).map_err(|e| io_err(raw, "chmod", e))?;
                self.set_xattrs(raw, XattrTarget::Fd(fd.as_fd()), &entry.xattrs)?;
                futimens(&fd, &atime, &mtime).map_err(|e| io_err(raw, "set times", e))?;
                let st = fstat(&fd).map_err(|e| io_err(raw, "stat", e))?;
                self.dir_times
                    .insert(key(&st), (path.clone(), atime, mtime));
                self.mark(&st);
            }
            Kind::Symlink => {
                let target = entry.link.as_slice();
                if target.is_empty() {
                    return Err(ApplyError::refused(raw, "symlink with an empty target"));
                }
                if target.contains(&0) {
                    return Err(ApplyError::refused(
                        raw,
                        "symlink target contains a NUL byte",
                    ));
                }
                if target.len() > self.limits.max_path_len {
                    return Err(ApplyError::LimitExceeded {
                        what: Limit::PathLength,
                        limit: self.limits.max_path_len as u64,
                        at: Some(EntryName::new(raw)),
                    });
                }
                self.clear_slot(raw, &dir, name, false)?;
                symlinkat(target, &dir, name).map_err(|e| io_err(raw, "create symlink", e))?;
                self.finish_at(raw, &dir, name, owner, None, entry, (atime, mtime))?;
            }
            Kind::HardLink => self.hard_link(raw, &entry.link, &dir, name)?,
            Kind::Char | Kind::Block | Kind::Fifo => {
                let (kind, dev) = match entry.kind {
                    Kind::Char => (
                        SFlag::S_IFCHR,
                        makedev(entry.dev_major.into(), entry.dev_minor.into()),
                    ),
                    Kind::Block => (
                        SFlag::S_IFBLK,
                        makedev(entry.dev_major.into(), entry.dev_minor.into()),
                    ),
                    _ => (SFlag::S_IFIFO, 0),
                };
                self.clear_slot(raw, &dir, name, false)?;
                mknodat(&dir, name, kind, Mode::from_bits_truncate(0o600), dev)
                    .map_err(|e| io_err(raw, "create node", e))?;
                self.finish_at(raw, &dir, name, owner, Some(perm), entry, (atime, mtime))?;
            }
        }
        Ok(())
    }

    /// Whether a file just created in the cached parent needs a chown to get `uid:gid`:
    /// it belongs to our euid, and to our egid or a setgid parent's group.
    fn needs_chown(&self, uid: u32, gid: u32) -> bool {
        let Some((_, _, pst)) = &self.parent else {
            return true;
        };
        let inherited = if pst.st_mode & libc::S_ISGID != 0 {
            pst.st_gid
        } else {
            self.egid.as_raw()
        };
        uid != self.euid.as_raw() || gid != inherited
    }

    fn mark(&mut self, st: &FileStat) {
        if !self.fresh {
            self.written.insert(key(st));
        }
    }

    fn is_written(&self, st: &FileStat) -> bool {
        self.fresh || self.written.contains(&key(st))
    }

    /// Sets the times of the directories this layer wrote, found again by path; one
    /// replaced since (by a later entry) is skipped.
    fn set_dir_times(&mut self) -> ApplyResult<()> {
        self.parent = None;
        for (k, (path, atime, mtime)) in std::mem::take(&mut self.dir_times) {
            let fd = match fs::open_dir_in_root(self.root.as_fd(), &path) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
                Err(e) => return Err(io_err(&path, "open directory", e)),
            };
            let st = fstat(&fd).map_err(|e| io_err(&path, "stat directory", e))?;
            if key(&st) == k {
                futimens(&fd, &atime, &mtime)
                    .map_err(|e| io_err(&path, "set directory times", e))?;
            }
        }
        Ok(())
    }

    /// Sets owner, mode, xattrs and times of a symlink or node by name, never following
    /// it, and marks it written.
    #[allow(clippy::too_many_arguments)]
    fn finish_at(
        &mut self,
        raw: &[u8],
        dir: &OwnedFd,
        name: &[u8],
        owner: (Option<Uid>, Option<Gid>),
        perm: Option<Mode>,
        entry: &RawEntry,
        (atime, mtime): (TimeSpec, TimeSpec),
    ) -> ApplyResult<()> {
        fchownat(dir, name, owner.0, owner.1, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(raw, "chown", e))?;
        if let Some(perm) = perm {
            fchmodat(dir, name, perm, FchmodatFlags::NoFollowSymlink)
                .map_err(|e| io_err(raw, "chmod", e))?;
        }
        self.set_xattrs(raw, XattrTarget::At(dir.as_fd(), name), &entry.xattrs)?;
        utimensat(dir, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| io_err(raw, "set times", e))?;
        if !self.fresh {
            let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| io_err(raw, "stat", e))?;
            self.mark(&st);
        }
        Ok(())
    }

    fn mark_fd(&mut self, raw: &[u8], fd: &impl AsFd) -> ApplyResult<()> {
        if !self.fresh {
            let st = fstat(fd).map_err(|e| io_err(raw, "stat", e))?;
            self.mark(&st);
        }
        Ok(())
    }

    fn hard_link(
        &mut self,
        raw: &[u8],
        link: &[u8],
        dir: &OwnedFd,
        name: &[u8],
    ) -> ApplyResult<()> {
        let target = clean_path(link, raw, self.limits)?;
        if target.is_empty() {
            return Err(ApplyError::refused(raw, "hard link to the root directory"));
        }
        let (tparent, tname) = split(&target);
        let detached = self.mode == WhiteoutMode::OverlayDetached;
        let missing = || {
            if detached {
                return ApplyError::NeedsLowerLayers {
                    path: EntryName::new(raw),
                    reason: "a hard link target is not in this layer",
                };
            }
            ApplyError::refused(
                raw,
                format!("hard link target {} does not exist", EntryName::new(link)),
            )
        };
        let tdir = self.parent_dir(raw, tparent, false)?.ok_or_else(missing)?;
        let tst = stat_at(&tdir, tname)
            .map_err(|e| io_err(raw, "stat hard link target", e))?
            .ok_or_else(missing)?;
        if is_dir(&tst) {
            return Err(ApplyError::refused(raw, "hard link to a directory"));
        }
        if let Some(st) = stat_at(dir, name).map_err(|e| io_err(raw, "stat", e))?
            && key(&st) == key(&tst)
        {
            self.mark(&tst);
            return Ok(());
        }
        self.clear_slot(raw, dir, name, false)?;
        // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never followed.
        linkat(&tdir, tname, dir, name, AtFlags::empty())
            .map_err(|e| io_err(raw, "create hard link", e))?;
        self.mark(&tst);
        Ok(())
    }

    /// Opens the directory `parent` inside the root. With `create`, missing components
    /// are made (mode 0755, root-owned, as GNU tar and containerd do); without, a
    /// missing directory is `None`.
    fn parent_dir(
        &mut self,
        raw: &[u8],
        parent: &[u8],
        create: bool,
    ) -> ApplyResult<Option<Rc<OwnedFd>>> {
        if let Some((p, fd, _)) = &self.parent
            && p == parent
        {
            return Ok(Some(fd.clone()));
        }
        let fd = match self.open_parent(raw, parent, create)? {
            Some(fd) => Rc::new(fd),
            None => return Ok(None),
        };
        let st = fstat(&fd).map_err(|e| io_err(raw, "stat parent directory", e))?;
        self.parent = Some((parent.to_vec(), fd.clone(), st));
        Ok(Some(fd))
    }

    fn open_parent(
        &mut self,
        raw: &[u8],
        parent: &[u8],
        create: bool,
    ) -> ApplyResult<Option<OwnedFd>> {
        match fs::open_dir_in_root(self.root.as_fd(), parent) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::ENOENT) if create && self.mode == WhiteoutMode::OverlayDetached => {
                return Err(ApplyError::NeedsLowerLayers {
                    path: EntryName::new(raw),
                    reason: "a parent directory is not in this layer",
                });
            }
            Err(Errno::ENOENT) if create => {}
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(resolve_err(raw, e)),
        }
        let mut dir = fs::open_dir_in_root(self.root.as_fd(), b"")
            .map_err(|e| io_err(raw, "open root", e))?;
        let mut end = 0;
        for comp in parent.split(|b| *b == b'/') {
            end += comp.len();
            let prefix = &parent[..end];
            end += 1;
            match fs::open_dir_in_root(self.root.as_fd(), prefix) {
                Ok(fd) => {
                    dir = fd;
                    continue;
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(resolve_err(raw, e)),
            }
            match mkdirat(&dir, comp, Mode::from_bits_truncate(0o755)) {
                Ok(()) => {}
                Err(Errno::EEXIST) => {
                    return Err(ApplyError::Refused {
                        path: EntryName::new(raw),
                        reason: format!("parent {} is a dangling symlink", EntryName::new(prefix)),
                        source: None,
                    });
                }
                Err(e) => return Err(io_err(raw, "create parent directory", e)),
            }
            dir = openat(
                &dir,
                comp,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(raw, "open parent directory", e))?;
        }
        Ok(Some(dir))
    }

    /// Makes room for a new entry at `name`: unlinks a non-directory, removes a
    /// directory tree unless a directory is wanted there. Returns the directory kept.
    fn clear_slot(
        &mut self,
        raw: &[u8],
        dir: &OwnedFd,
        name: &[u8],
        want_dir: bool,
    ) -> ApplyResult<Option<FileStat>> {
        let Some(st) = stat_at(dir, name).map_err(|e| io_err(raw, "stat", e))? else {
            return Ok(None);
        };
        if is_dir(&st) {
            if want_dir {
                return Ok(Some(st));
            }
            self.parent = None;
            self.prune(raw, dir, name, false)?;
        } else {
            unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| io_err(raw, "remove", e))?;
        }
        Ok(None)
    }

    /// Removes `name` in `dir` and everything below it, except (with `keep_written`)
    /// what this layer wrote and the directories leading to it. Returns whether
    /// something was kept at `name`, and if so whether it is a directory.
    ///
    /// Recursive, holding one descriptor per level: a tree deeper than the process's
    /// descriptor limit fails with `EMFILE` (trees made by this applier are at most
    /// [`Limits::max_path_len`] / 2 deep).
    fn prune(
        &mut self,
        raw: &[u8],
        dir: &OwnedFd,
        name: &[u8],
        keep_written: bool,
    ) -> ApplyResult<Option<bool>> {
        let Some(st) = stat_at(dir, name).map_err(|e| io_err(raw, "stat", e))? else {
            return Ok(None);
        };
        let written = keep_written && self.is_written(&st);
        if is_dir(&st) {
            let sub = openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(raw, "open directory", e))?;
            let kept_any = self.prune_children(raw, &sub, keep_written)?;
            if written || kept_any {
                return Ok(Some(true));
            }
            drop(sub);
            unlinkat(dir, name, UnlinkatFlags::RemoveDir)
                .map_err(|e| io_err(raw, "remove directory", e))?;
        } else {
            if written {
                return Ok(Some(false));
            }
            unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| io_err(raw, "remove", e))?;
        }
        Ok(None)
    }

    /// [`prune`](Self::prune) for every child of `dir`; returns whether any was kept.
    fn prune_children(
        &mut self,
        raw: &[u8],
        dir: &OwnedFd,
        keep_written: bool,
    ) -> ApplyResult<bool> {
        let names: Vec<Vec<u8>> = {
            let mut list = nix::dir::Dir::openat(
                dir,
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(raw, "list directory", e))?;
            let mut names = Vec::new();
            for ent in list.iter() {
                let ent = ent.map_err(|e| io_err(raw, "list directory", e))?;
                let n = ent.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(n.to_vec());
                }
            }
            names
        };
        let mut kept = false;
        for n in &names {
            if self.prune(raw, dir, n, keep_written)?.is_some() {
                kept = true;
            }
        }
        Ok(kept)
    }

    fn whiteout(&mut self, raw: &[u8], parent: &[u8], target: &[u8]) -> ApplyResult<()> {
        self.whiteouts += 1;
        // A whiteout removes things: no cached path may outlive it.
        self.parent = None;
        if target == b".wh..opq" {
            return self.opaque(raw, parent);
        }
        if target.starts_with(b".wh.") {
            // `.wh..wh.*`: AUFS metadata (hard link dirs and the like), meaningless here.
            tracing::debug!(entry = %EntryName::new(raw), "ignoring AUFS metadata");
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." {
            return Err(ApplyError::refused(raw, "whiteout names no file"));
        }
        match self.mode {
            WhiteoutMode::Overlay | WhiteoutMode::OverlayDetached => {
                let dir = self.parent_dir(raw, parent, true)?.expect("created");
                match self.prune(raw, &dir, target, true)? {
                    // This layer wrote a directory there (or below it): hide the lower
                    // directory's content, keep this layer's.
                    Some(true) => {
                        let sub = openat(
                            &dir,
                            target,
                            OFlag::O_RDONLY
                                | OFlag::O_DIRECTORY
                                | OFlag::O_NOFOLLOW
                                | OFlag::O_CLOEXEC,
                            Mode::empty(),
                        )
                        .map_err(|e| io_err(raw, "open directory", e))?;
                        fs::fsetxattr(sub.as_fd(), b"trusted.overlay.opaque", b"y")
                            .map_err(|e| io_err(raw, "set overlay opaque xattr", e))?;
                    }
                    // This layer wrote a file there; it already hides the lower one.
                    Some(false) => {}
                    None => {
                        mknodat(&dir, target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                            .map_err(|e| io_err(raw, "create overlay whiteout", e))?;
                    }
                }
                Ok(())
            }
            WhiteoutMode::Delete => {
                let Some(dir) = self.parent_dir(raw, parent, false)? else {
                    return Ok(());
                };
                self.prune(raw, &dir, target, true)?;
                self.parent = None;
                Ok(())
            }
        }
    }

    fn opaque(&mut self, raw: &[u8], parent: &[u8]) -> ApplyResult<()> {
        match self.mode {
            WhiteoutMode::Overlay | WhiteoutMode::OverlayDetached => {
                let dir = self.parent_dir(raw, parent, true)?.expect("created");
                fs::fsetxattr(dir.as_fd(), b"trusted.overlay.opaque", b"y")
                    .map_err(|e| io_err(raw, "set overlay opaque xattr", e))
            }
            WhiteoutMode::Delete => {
                let Some(dir) = self.parent_dir(raw, parent, false)? else {
                    return Ok(());
                };
                self.parent = None;
                self.prune_children(raw, &dir, true).map(drop)
            }
        }
    }

    fn set_xattrs(
        &mut self,
        raw: &[u8],
        target: XattrTarget<'_>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> ApplyResult<()> {
        for (name, value) in xattrs {
            if name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") {
                tracing::warn!(
                    entry = %EntryName::new(raw),
                    xattr = %EntryName::new(name),
                    "dropping an overlayfs xattr from the layer"
                );
                self.dropped_xattrs += 1;
                continue;
            }
            if name.is_empty() || name.len() > 255 || name.contains(&0) || !name.contains(&b'.') {
                return Err(ApplyError::refused(
                    raw,
                    format!("invalid xattr name {}", EntryName::new(name)),
                ));
            }
            if value.len() > 65536 {
                return Err(ApplyError::refused(
                    raw,
                    format!("xattr {} value too large", EntryName::new(name)),
                ));
            }
            let res = match target {
                XattrTarget::Fd(fd) => fs::fsetxattr(fd, name, value),
                XattrTarget::At(dir, n) => fs::setxattrat_nofollow(dir, n, name, value),
            };
            match res {
                Ok(()) => {}
                // Unsupported by the filesystem, by the kernel (setxattrat before 6.13),
                // or for this file type (user.* on symlinks and devices).
                Err(e)
                    if e == Errno::EOPNOTSUPP
                        || e == Errno::ENOSYS
                        || (e == Errno::EPERM && name.starts_with(b"user.")) =>
                {
                    tracing::warn!(
                        entry = %EntryName::new(raw),
                        xattr = %EntryName::new(name),
                        error = %e,
                        "xattr not supported here, dropped"
                    );
                    self.dropped_xattrs += 1;
                }
                Err(e) => return Err(io_err(raw, "set xattr", e)),
            }
        }
        Ok(())
    }
}

fn stat_at(dir: &OwnedFd, name: &[u8]) -> nix::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn io_err(raw: &[u8], op: &'static str, e: Errno) -> ApplyError {
    ApplyError::Io {
        path: EntryName::new(raw),
        op,
        source: e.into(),
    }
}

/// An error resolving a parent inside the root: the layer's doing (a file where a
/// directory is needed, a symlink loop) unless the system failed.
fn resolve_err(raw: &[u8], e: Errno) -> ApplyError {
    match e {
        Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV | Errno::ENAMETOOLONG => ApplyError::Refused {
            path: EntryName::new(raw),
            reason: "parent directory cannot be resolved inside the root".into(),
            source: Some(e.into()),
        },
        _ => io_err(raw, "open parent directory", e),
    }
}

/// Cleans an entry name or hard link target: drops a leading `/`, `.` components and
/// empty ones; refuses `..` and NUL bytes; enforces the length limits. The result is
/// relative to the root, components joined by `/`, empty for the root itself. `raw`
/// names the entry in errors.
fn clean_path(name: &[u8], raw: &[u8], limits: &Limits) -> ApplyResult<Vec<u8>> {
    if name.len() > limits.max_path_len {
        return Err(ApplyError::LimitExceeded {
            what: Limit::PathLength,
            limit: limits.max_path_len as u64,
            at: Some(EntryName::new(raw)),
        });
    }
    if name.contains(&0) {
        return Err(ApplyError::refused(raw, "name contains a NUL byte"));
    }
    let mut out = Vec::with_capacity(name.len());
    for comp in name.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err(ApplyError::refused(raw, "name contains a '..' component")),
            _ if comp.len() > limits.max_component_len => {
                return Err(ApplyError::LimitExceeded {
                    what: Limit::ComponentLength,
                    limit: limits.max_component_len as u64,
                    at: Some(EntryName::new(raw)),
                });
            }
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        let l = Limits::default();
        assert_eq!(clean_path(b"./a//b/./c/", b"", &l).unwrap(), b"a/b/c");
        assert_eq!(clean_path(b"/abs/x", b"", &l).unwrap(), b"abs/x");
        assert_eq!(clean_path(b"./", b"", &l).unwrap(), b"");
        assert!(matches!(
            clean_path(b"../x", b"", &l),
            Err(ApplyError::Refused { .. })
        ));
        assert!(matches!(
            clean_path(b"a/../../x", b"", &l),
            Err(ApplyError::Refused { .. })
        ));
        assert!(matches!(
            clean_path(b"a/..", b"", &l),
            Err(ApplyError::Refused { .. })
        ));
        let long = vec![b'a'; 256];
        assert!(matches!(
            clean_path(&long, b"", &l),
            Err(ApplyError::LimitExceeded {
                what: Limit::ComponentLength,
                ..
            })
        ));
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
    }
}
