//! Metadata snapshots of a tree: what a test compares before and after, or between two
//! trees that must be equal (an unpack and a lazy mount of the same layer).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Metadata of every file in a tree, keyed by relative path.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot(pub BTreeMap<PathBuf, Node>);

/// One file's metadata.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Node {
    /// `dir`, `symlink`, `file`, `char`, `block`, `fifo` or `other`.
    pub kind: &'static str,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// A regular file's bytes.
    pub content: Option<Vec<u8>>,
    /// A symlink's target.
    pub link: Option<PathBuf>,
    /// A device's number.
    pub rdev: u64,
    /// Every extended attribute.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Hard link count.
    pub nlink: u64,
    /// Inode number (to tell hard links apart).
    pub ino: u64,
}

impl Snapshot {
    /// Every entry of the temp dir except `root`'s content, plus /etc/passwd.
    pub(crate) fn of_outside(tmp: &Path) -> Snapshot {
        let mut map = BTreeMap::new();
        map.insert(PathBuf::from("."), node(tmp));
        for e in fs::read_dir(tmp).unwrap() {
            let p = e.unwrap().path();
            let name = PathBuf::from(p.file_name().unwrap());
            // The root's own times change with its content; all else must not.
            if name.as_os_str() == "root" {
                continue;
            }
            map.insert(name.clone(), node(&p));
            if p.symlink_metadata().unwrap().is_dir() {
                walk(&p, &name, &mut map);
            }
        }
        let mut passwd = node(Path::new("/etc/passwd"));
        passwd.content = passwd.content.map(|c| c.len().to_string().into_bytes());
        map.insert(PathBuf::from("/etc/passwd"), passwd);
        map.insert(PathBuf::from("/etc"), node(Path::new("/etc")));
        Snapshot(map)
    }

    /// Every entry below `dir` (not `dir` itself).
    pub fn of(dir: &Path) -> Snapshot {
        let mut map = BTreeMap::new();
        walk(dir, Path::new(""), &mut map);
        Snapshot(map)
    }
}

fn walk(dir: &Path, rel: &Path, map: &mut BTreeMap<PathBuf, Node>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let r = rel.join(p.file_name().unwrap());
        let n = node(&p);
        let is_dir = n.kind == "dir";
        map.insert(r.clone(), n);
        if is_dir {
            walk(&p, &r, map);
        }
    }
}

/// The metadata of `p` (not following a symlink), with a file's content.
pub fn node(p: &Path) -> Node {
    let md = p.symlink_metadata().unwrap();
    let ft = md.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "other"
    };
    Node {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: (md.mtime(), md.mtime_nsec()),
        content: ft.is_file().then(|| fs::read(p).unwrap()),
        link: ft.is_symlink().then(|| fs::read_link(p).unwrap()),
        rdev: md.rdev(),
        xattrs: xattrs(p),
        nlink: md.nlink(),
        ino: md.ino(),
    }
}

/// Every xattr of `p` (not following a symlink).
pub fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: `c` is NUL-terminated; `names` is a writable buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "llistxattr {}", p.display());
    let mut out = BTreeMap::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        // SAFETY: both strings are NUL-terminated; `val` is a writable buffer of the
        // given length.
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(m >= 0);
        val.truncate(m as usize);
        out.insert(name.to_vec(), val);
    }
    out
}

/// One xattr of `p`, if set.
pub fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    xattrs(p).remove(name.as_bytes())
}
