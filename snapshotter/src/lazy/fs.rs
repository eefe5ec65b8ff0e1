//! The FUSE filesystem of one lazy layer: read-only, its tree from the TOC, its file
//! content from a [`LayerReader`]. Overlayfs stacks the container's writable layer on
//! top, so no write ever reaches it.
//!
//! Built on `fuser` rather than `fuse3`: fuser speaks FUSE protocol 7.40 (extended
//! INIT, FUSE passthrough through `ReplyOpen::open_backing`, a stack depth that lets
//! overlayfs sit on a passthrough mount), gives each worker thread its own cloned
//! `/dev/fuse` fd, and can wrap an already opened fd (`Session::from_fd`); fuse3 stops
//! at protocol 7.31, with no passthrough, and serves every request through one reader.
//!
//! Passthrough: a file whose content is one chunk that is already local is opened with
//! its cache file as the backing file (`FOPEN_PASSTHROUGH`, Linux >= 6.9), so its reads
//! go from the kernel to the cache and never reach this process. The kernel refuses (EIO)
//! to open an inode in passthrough while it is open through the page cache, or the other
//! way round, so an inode keeps the mode of its first open until its last release (an
//! executable running from a file keeps it open). Everything else (and
//! every file on a kernel without passthrough, or when the cache's own filesystem is
//! stacked too deep) is read through [`LayerReader::read`].

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::reader::LayerReader;
use crate::ErrorKind;
use crate::estargz::{Node, NodeKind};

/// The tree never changes: the kernel may cache entries and attributes for long.
const TTL: Duration = Duration::from_secs(3600);

/// A lazy layer as a FUSE filesystem.
#[derive(Debug)]
pub struct LazyFs {
    reader: Arc<LayerReader>,
    /// Whether the kernel took FUSE_PASSTHROUGH at init.
    passthrough: AtomicBool,
    /// Open inodes: how often, and their backing file when opened in passthrough.
    opens: Mutex<Opens>,
    next_fh: AtomicU64,
}

#[derive(Debug, Default)]
struct Opens {
    inodes: HashMap<u64, (u32, Option<BackingId>)>,
    handles: HashMap<u64, u64>,
}

impl LazyFs {
    /// The filesystem serving `reader`'s layer.
    pub fn new(reader: Arc<LayerReader>) -> Self {
        LazyFs {
            reader,
            passthrough: AtomicBool::new(false),
            opens: Mutex::new(Opens::default()),
            next_fh: AtomicU64::new(1),
        }
    }

    /// `n`'s local cache file registered as backing file, if it can be.
    fn backing(&self, n: &Node, reply: &ReplyOpen) -> Option<BackingId> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let path = self.reader.whole_file(n)?;
        let file = std::fs::File::open(&path).ok()?;
        match reply.open_backing(&file) {
            Ok(id) => Some(id),
            Err(e) => {
                // A cache on a stacked filesystem, for one: reads go through the reader.
                tracing::debug!(path = %path.display(), error = %e, "no passthrough");
                self.passthrough.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.reader.tree().node(ino.0).ok_or(Errno::ENOENT)
    }

    fn attr(ino: u64, n: &Node) -> FileAttr {
        let kind = file_type(n.kind);
        let t = if n.mtime >= 0 {
            UNIX_EPOCH + Duration::from_secs(n.mtime as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(n.mtime.unsigned_abs())
        };
        FileAttr {
            ino: INodeNo(ino),
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm: n.mode as u16,
            nlink: n.nlink,
            uid: n.uid,
            gid: n.gid,
            rdev: libc::makedev(n.rdev.0, n.rdev.1) as u32,
            blksize: 4096,
            flags: 0,
        }
    }
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Char => FileType::CharDevice,
        NodeKind::Block => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
    }
}

impl Filesystem for LazyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // One level of stacking for the backing files, so that overlayfs can still sit on
        // this mount (the kernel allows two in all).
        let on = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.passthrough.store(on, Ordering::Relaxed);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let tree = self.reader.tree();
        match tree.lookup(parent.0, name.as_bytes()) {
            Some(ino) => {
                let n = tree.node(u64::from(ino)).expect("children are nodes");
                reply.entry(&TTL, &Self::attr(u64::from(ino), n), Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(n) => reply.attr(&TTL, &Self::attr(ino.0, n)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino) {
            Ok(n) if n.kind == NodeKind::Symlink => reply.data(&n.link),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Ok(n) if n.kind == NodeKind::Dir => reply.error(Errno::EISDIR),
            Ok(_) if flags.acc_mode() != OpenAccMode::O_RDONLY => reply.error(Errno::EROFS),
            Ok(n) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                let mut opens = self.opens.lock().unwrap_or_else(|e| e.into_inner());
                opens.handles.insert(fh, ino.0);
                let (count, backing) = opens
                    .inodes
                    .entry(ino.0)
                    .or_insert_with(|| (0, self.backing(n, &reply)));
                *count += 1;
                match backing {
                    Some(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), id),
                    // Content never changes: keep the page cache across opens.
                    None => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut opens = self.opens.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ino) = opens.handles.remove(&fh.0)
            && let Some((count, _)) = opens.inodes.get_mut(&ino)
        {
            *count -= 1;
            if *count == 0 {
                // Dropping the id closes the kernel's reference to the backing file.
                opens.inodes.remove(&ino);
            }
        }
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.reader.read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => {
                tracing::warn!(ino = ino.0, offset, error = %e, "lazy read failed");
                reply.error(match e.kind() {
                    ErrorKind::NotFound => Errno::ENOENT,
                    _ => Errno::EIO,
                });
            }
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Ok(n) if n.kind == NodeKind::Dir => {
                reply.opened(
                    FileHandle(0),
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
                );
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let n = match self.node(ino) {
            Ok(n) if n.kind == NodeKind::Dir => n,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        let tree = self.reader.tree();
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (u64::from(n.parent), FileType::Directory, OsStr::new("..")),
        ];
        let children = n.children.iter().map(|(name, &child)| {
            let kind = tree
                .node(u64::from(child))
                .map_or(FileType::RegularFile, |c| file_type(c.kind));
            (u64::from(child), kind, OsStr::from_bytes(name))
        });
        for (i, (child, kind, name)) in dots
            .into_iter()
            .chain(children)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let tree = self.reader.tree();
        let blocks = tree.content_bytes().div_ceil(4096);
        reply.statfs(blocks, 0, 0, tree.nodes.len() as u64, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match n
            .xattrs
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
        {
            None => reply.error(Errno::NO_XATTR),
            Some((_, v)) if size == 0 => reply.size(v.len() as u32),
            Some((_, v)) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Some((_, v)) => reply.data(v),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let mut names = Vec::new();
        for (k, _) in &n.xattrs {
            names.extend_from_slice(k);
            names.push(0);
        }
        if size == 0 {
            reply.size(names.len() as u32);
        } else if names.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&names);
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // `default_permissions` makes the kernel check modes; this only says it exists.
        match self.node(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
