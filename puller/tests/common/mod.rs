//! Helpers shared by the applier's tests: a tar writer that writes any bytes as names
//! (the `tar` crate's Builder refuses `..`), sandboxes with sentinels outside the root,
//! and tree snapshots to compare.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes a tar stream header by header.
#[derive(Default)]
pub struct Tar {
    pub buf: Vec<u8>,
    pub mtime: u64,
    pub uid: u64,
    pub gid: u64,
}

impl Tar {
    pub fn new() -> Self {
        Tar {
            mtime: 1_600_000_000,
            ..Default::default()
        }
    }

    /// A header with raw name and link bytes (each at most 100 bytes).
    pub fn header(typeflag: u8, name: &[u8], link: &[u8], size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(size);
        h.set_mtime(1_600_000_000);
        h.set_entry_type(tar::EntryType::new(typeflag));
        h.set_cksum();
        h
    }

    /// Appends a header (its checksum recomputed) and a padded body.
    pub fn raw(&mut self, mut h: tar::Header, body: &[u8]) -> &mut Self {
        h.set_mtime(self.mtime);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        self.body(body)
    }

    /// Appends a header exactly as given.
    pub fn raw_exact(&mut self, h: &[u8; 512], body: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(h);
        self.body(body)
    }

    pub fn body(&mut self, body: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(body);
        let pad = (512 - body.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0, pad));
        self
    }

    pub fn entry(
        &mut self,
        typeflag: u8,
        name: &[u8],
        link: &[u8],
        body: &[u8],
        mode: u32,
    ) -> &mut Self {
        let h = Self::header(typeflag, name, link, body.len() as u64, mode);
        self.raw(h, body)
    }

    pub fn file(&mut self, name: &str, body: &[u8]) -> &mut Self {
        self.entry(b'0', name.as_bytes(), b"", body, 0o644)
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(b'5', name.as_bytes(), b"", b"", 0o755)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(b'2', name.as_bytes(), target.as_bytes(), b"", 0o777)
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(b'1', name.as_bytes(), target.as_bytes(), b"", 0o644)
    }

    /// A PAX extended header for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            body.extend(pax_record(k, v));
        }
        let h = Self::header(b'x', b"PaxHeader", b"", body.len() as u64, 0o644);
        self.raw(h, &body)
    }

    /// The end-of-archive marker, padded to a 10 KiB record as GNU tar does.
    pub fn finish(&mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0, 1024));
        while !self.buf.len().is_multiple_of(10240) {
            self.buf.push(0);
        }
        std::mem::take(&mut self.buf)
    }
}

pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3;
    let mut len = body_len + 1;
    while len.to_string().len() + body_len != len {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

/// A temp dir holding `root` (where layers go) and sentinels beside it: `outside/`
/// (a directory with a file, a subdirectory and a symlink) whose state must never
/// change.
pub struct Sandbox {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub outside: PathBuf,
    before: Snapshot,
}

impl Sandbox {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("strata-sentinel")
            .tempdir_in("/tmp")
            .unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::create_dir(outside.join("sub")).unwrap();
        fs::write(outside.join("keep"), b"sentinel").unwrap();
        fs::write(outside.join("sub/keep"), b"sentinel").unwrap();
        std::os::unix::fs::symlink("keep", outside.join("link")).unwrap();
        fs::set_permissions(outside.join("keep"), fs::Permissions::from_mode(0o640)).unwrap();
        // Old times, so that a touch would show.
        for p in [
            outside.join("keep"),
            outside.join("sub/keep"),
            outside.join("sub"),
            outside.clone(),
        ] {
            set_mtime(&p, 1_000_000_000);
        }
        let before = Snapshot::of_outside(tmp.path());
        Sandbox {
            tmp,
            root,
            outside,
            before,
        }
    }

    /// Asserts that nothing outside `root` changed: the temp dir's other entries,
    /// `outside/` in full, and /etc/passwd.
    pub fn assert_outside_untouched(&self) {
        let after = Snapshot::of_outside(self.tmp.path());
        let keys: std::collections::BTreeSet<_> =
            self.before.0.keys().chain(after.0.keys()).collect();
        let changed: Vec<_> = keys
            .into_iter()
            .filter(|k| self.before.0.get(*k) != after.0.get(*k))
            .map(|k| {
                format!(
                    "{}: {:?} -> {:?}",
                    k.display(),
                    self.before.0.get(k),
                    after.0.get(k)
                )
            })
            .collect();
        assert!(
            changed.is_empty(),
            "changed outside the root:\n{}",
            changed.join("\n")
        );
    }

    /// A name no host path has, for entries that must land in the root when written
    /// through a symlink to `/`: were the applier to escape, it would make `/<name>`,
    /// which [`Sandbox::assert_no_escape`] catches and removes.
    pub fn escape_name(&self) -> String {
        let tmp = self.tmp.path().file_name().unwrap().to_str().unwrap();
        format!("strata-escape-test-{tmp}")
    }

    /// Asserts that `/<escape_name>` does not exist (removing it if it does).
    pub fn assert_no_escape(&self) {
        let host = Path::new("/").join(self.escape_name());
        if host.symlink_metadata().is_ok() {
            let _ = fs::remove_file(&host);
            panic!("{} was created outside the root", host.display());
        }
    }

    /// The absolute path of `outside`, as a symlink target.
    pub fn outside_abs(&self) -> String {
        self.outside.to_str().unwrap().to_owned()
    }
}

pub fn set_mtime(p: &Path, sec: i64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: 0,
        },
    ];
    // SAFETY: `c` is a NUL-terminated path and `ts` two timespecs, both valid for the
    // call.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0);
}

/// Metadata of every file in a tree, keyed by relative path.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot(pub BTreeMap<PathBuf, Node>);

#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub content: Option<Vec<u8>>,
    pub link: Option<PathBuf>,
    pub rdev: u64,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub nlink: u64,
    pub ino: u64,
}

impl Snapshot {
    /// Every entry of the temp dir except `root`'s content, plus /etc/passwd.
    fn of_outside(tmp: &Path) -> Snapshot {
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

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips a test that needs root, saying why.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("skipped: needs root (chown, mknod, trusted xattrs)");
            return;
        }
    };
}

/// The peak resident set of this process, in MiB.
pub fn peak_rss_mib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024
}
