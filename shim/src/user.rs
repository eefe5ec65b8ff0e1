//! Resolving a USER value (`uid`, `name`, `uid:gid`, `name:group`, `uid:group`,
//! `name:gid`) against the container's own `/etc/passwd` and `/etc/group`.
//!
//! The rules follow containerd 1.6's `oci.WithUser` + `oci.WithAdditionalGIDs`:
//!
//! | USER          | uid                    | gid                               | additional gids |
//! |---------------|------------------------|-----------------------------------|-----------------|
//! | `uid`         | as given               | from passwd, **0** if not listed  | primary + the user's /etc/group memberships |
//! | `name`        | from passwd, else error| from passwd                       | primary + memberships |
//! | `uid:gid`     | as given               | as given (no file is read)        | primary |
//! | `x:group`, `name:x` | names looked up, else error | names looked up         | primary |
//!
//! An empty USER means `0`. A membership is a group whose member list names the user,
//! except a group named like the user itself (containerd's filter). An unknown name is
//! always an error: resolution never falls back to root.
//!
//! Numeric ids are `0..=4294967294`; `4294967295` is `(uid_t)-1`, which `setuid(2)` reads
//! as "unchanged", so it is refused, as are signs (`-1`, `+1`) and anything that
//! overflows.
//!
//! # Reading files of an untrusted rootfs
//!
//! `/etc/passwd` and `/etc/group` belong to the image, so they are opened with
//! `openat2(rootfs_fd, "/etc/passwd", RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: every
//! symlink (absolute or full of `..`) resolves inside the rootfs, and `/proc` magic links
//! are refused. The open is `O_NONBLOCK | O_NOCTTY` so a FIFO or a device cannot block it
//! or become a controlling terminal; `fstat` then requires a regular file. A file larger
//! than [`MAX_ETC_FILE_SIZE`] is an error rather than read up to the cap, because a
//! truncated line can still parse (`app:x:1000:10` cut from `app:x:1000:1000`) and would
//! give a wrong id. Malformed lines are skipped. A missing file is the same as an empty
//! one.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::Mode;

use crate::{Error, ErrorKind, Result};

/// Largest `/etc/passwd` or `/etc/group` read from a rootfs, in bytes (1 MiB).
pub const MAX_ETC_FILE_SIZE: u64 = 1 << 20;

/// Most additional gids a process may have (Linux's `NGROUPS_MAX`).
pub const MAX_ADDITIONAL_GIDS: usize = 65536;

/// Longest user or group name accepted in a USER value, in bytes.
const MAX_NAME_LEN: usize = 256;

/// The identity a container process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary group ids; the primary gid comes first.
    pub additional_gids: Vec<u32>,
}

/// Resolves `user` (an image's `User` or a `--user` value) inside `rootfs`.
///
/// # Errors
/// `InvalidArgument` for a malformed value or an id out of range; `NotFound` for a name
/// that neither file lists (or whose file is missing); `FailedPrecondition` if a file is
/// not a regular file or cannot be opened inside the rootfs; `ResourceExhausted` if it is
/// larger than [`MAX_ETC_FILE_SIZE`] or yields more than [`MAX_ADDITIONAL_GIDS`] groups;
/// `Unimplemented` on a kernel without `openat2` (Linux < 5.6).
pub fn resolve(rootfs: &Path, user: &str) -> Result<ResolvedUser> {
    let spec = if user.is_empty() { "0" } else { user };
    let mut parts = spec.split(':');
    let (first, second) = (parts.next().unwrap_or(""), parts.next());
    if parts.next().is_some() {
        return Err(Error::invalid(format!(
            "USER {} has more than one ':'",
            Shown(user)
        )));
    }
    let mut etc = Etc::new(rootfs);
    let user_part = parse_part("user", user, first)?;
    let Some(second) = second else {
        // Implicit group: the user's passwd entry gives it, and memberships count.
        let (uid, gid, name) = match user_part {
            Id::Num(uid) => match etc.passwd()?.and_then(|d| find_user(d, |e| e.uid == uid)) {
                Some(e) => (uid, e.gid, Some(e.name.to_vec())),
                None => (uid, 0, None),
            },
            Id::Name(name) => {
                let e = etc
                    .passwd()?
                    .and_then(|d| find_user(d, |e| e.name == name.as_bytes()))
                    .ok_or_else(|| unknown("user", name, "/etc/passwd"))?;
                (e.uid, e.gid, Some(e.name.to_vec()))
            }
        };
        let mut gids = vec![gid];
        if let Some(name) = name
            && let Some(group) = etc.group()?
        {
            for g in parse_group(group) {
                if g.name != name.as_slice() && g.members().any(|m| m == name.as_slice()) {
                    push_unique(&mut gids, g.gid)?;
                }
            }
        }
        return Ok(ResolvedUser {
            uid,
            gid,
            additional_gids: gids,
        });
    };
    let group_part = parse_part("group", user, second)?;
    let uid = match user_part {
        Id::Num(uid) => uid,
        Id::Name(name) => {
            etc.passwd()?
                .and_then(|d| find_user(d, |e| e.name == name.as_bytes()))
                .ok_or_else(|| unknown("user", name, "/etc/passwd"))?
                .uid
        }
    };
    let gid = match group_part {
        Id::Num(gid) => gid,
        Id::Name(name) => {
            etc.group()?
                .and_then(|d| parse_group(d).find(|g| g.name == name.as_bytes()))
                .ok_or_else(|| unknown("group", name, "/etc/group"))?
                .gid
        }
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: vec![gid],
    })
}

fn push_unique(gids: &mut Vec<u32>, gid: u32) -> Result<()> {
    if !gids.contains(&gid) {
        if gids.len() == MAX_ADDITIONAL_GIDS {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                format!("user is in more than {MAX_ADDITIONAL_GIDS} groups"),
            ));
        }
        gids.push(gid);
    }
    Ok(())
}

fn unknown(what: &str, name: &str, file: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("{what} {} not found in the rootfs's {file}", Shown(name)),
    )
}

/// A user or group part of a USER value.
enum Id<'a> {
    Num(u32),
    Name(&'a str),
}

fn parse_part<'a>(what: &str, whole: &str, s: &'a str) -> Result<Id<'a>> {
    let bad = |why: &str| Error::invalid(format!("USER {}: {what} {why}", Shown(whole)));
    if s.is_empty() {
        return Err(bad("is empty"));
    }
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        if unsigned.len() != s.len() {
            return Err(bad("id has a sign"));
        }
        return match parse_id(s.as_bytes()) {
            Some(id) => Ok(Id::Num(id)),
            None => Err(bad("id is out of range 0..=4294967294")),
        };
    }
    if s.len() > MAX_NAME_LEN {
        return Err(bad("name is too long"));
    }
    if s.chars().any(char::is_control) {
        return Err(bad("name has a control character"));
    }
    Ok(Id::Name(s))
}

/// Parses an all-digits id in `0..=u32::MAX - 1`.
fn parse_id(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        if v >= u64::from(u32::MAX) {
            return None;
        }
    }
    u32::try_from(v).ok()
}

/// A valid `/etc/passwd` line: `name:password:uid:gid[:gecos:home:shell]`.
struct PasswdEntry<'a> {
    name: &'a [u8],
    uid: u32,
    gid: u32,
}

fn find_user<'a>(
    data: &'a [u8],
    pred: impl Fn(&PasswdEntry<'a>) -> bool,
) -> Option<PasswdEntry<'a>> {
    lines(data)
        .filter_map(|line| {
            let mut f = line.split(|&b| b == b':');
            let name = f.next().filter(|n| !n.is_empty())?;
            let _password = f.next()?;
            let uid = parse_id(f.next()?)?;
            let gid = parse_id(f.next()?)?;
            Some(PasswdEntry { name, uid, gid })
        })
        .find(|e| pred(e))
}

/// A valid `/etc/group` line: `name:password:gid[:member,member...]`.
struct GroupEntry<'a> {
    name: &'a [u8],
    gid: u32,
    members: &'a [u8],
}

impl<'a> GroupEntry<'a> {
    fn members(&self) -> impl Iterator<Item = &'a [u8]> {
        self.members.split(|&b| b == b',').filter(|m| !m.is_empty())
    }
}

fn parse_group(data: &[u8]) -> impl Iterator<Item = GroupEntry<'_>> {
    lines(data).filter_map(|line| {
        let mut f = line.split(|&b| b == b':');
        let name = f.next().filter(|n| !n.is_empty())?;
        let _password = f.next()?;
        let gid = parse_id(f.next()?)?;
        let members = f.next().unwrap_or_default();
        Some(GroupEntry { name, gid, members })
    })
}

/// Lines without their `\n` (and a `\r` before it), comments and blank lines dropped.
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
}

/// The rootfs's `/etc` files, each read on first use.
struct Etc<'a> {
    rootfs: &'a Path,
    passwd: Option<Option<Vec<u8>>>,
    group: Option<Option<Vec<u8>>>,
}

impl<'a> Etc<'a> {
    fn new(rootfs: &'a Path) -> Self {
        Etc {
            rootfs,
            passwd: None,
            group: None,
        }
    }

    fn passwd(&mut self) -> Result<Option<&[u8]>> {
        if self.passwd.is_none() {
            self.passwd = Some(self.read("/etc/passwd")?);
        }
        Ok(self.passwd.as_ref().and_then(|d| d.as_deref()))
    }

    fn group(&mut self) -> Result<Option<&[u8]>> {
        if self.group.is_none() {
            self.group = Some(self.read("/etc/group")?);
        }
        Ok(self.group.as_ref().and_then(|d| d.as_deref()))
    }

    fn open_root(&self) -> Result<OwnedFd> {
        open(
            self.rootfs,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            let kind = if e == Errno::ENOENT {
                ErrorKind::NotFound
            } else {
                ErrorKind::FailedPrecondition
            };
            Error::new(kind, format!("open rootfs {}", self.rootfs.display())).with_source(e)
        })
    }

    /// Reads `path` (absolute, as seen from inside the rootfs); `None` if it is missing.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let root = self.open_root()?;
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = match openat2(&root, path, how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ENOSYS) => {
                return Err(Error::new(
                    ErrorKind::Unimplemented,
                    "openat2 is unavailable (Linux 5.6 or later is needed)",
                )
                .with_source(Errno::ENOSYS));
            }
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::FailedPrecondition,
                    format!("open {path} in the rootfs"),
                )
                .with_source(e));
            }
        };
        let file = File::from(fd);
        let io = |e| {
            Error::new(ErrorKind::Internal, format!("read {path} in the rootfs")).with_source(e)
        };
        let meta = file.metadata().map_err(io)?;
        if !meta.file_type().is_file() {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                format!("{path} in the rootfs is not a regular file"),
            ));
        }
        let too_big = || {
            Error::new(
                ErrorKind::ResourceExhausted,
                format!("{path} in the rootfs is larger than {MAX_ETC_FILE_SIZE} bytes"),
            )
        };
        if meta.len() > MAX_ETC_FILE_SIZE {
            return Err(too_big());
        }
        let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.take(MAX_ETC_FILE_SIZE + 1)
            .read_to_end(&mut data)
            .map_err(io)?;
        if data.len() as u64 > MAX_ETC_FILE_SIZE {
            return Err(too_big());
        }
        Ok(Some(data))
    }
}

/// A user-supplied string in a message: quoted, escaped, cut at 64 characters.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(64) {
            Some((i, _)) => write!(f, "{:?}...", &self.0[..i]),
            None => write!(f, "{:?}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::time::Duration;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
garbage line without colons
short:x:7
badid:x:12a:5:::
neg:x:-4:5:::
huge:x:4294967295:5:::
\u{1}\u{ff}binary:\0:\n
app:x:1000:1000:App,,,:/home/app:/bin/sh
app:x:2000:2000:duplicate, the first wins::
other:x:1001:100::/:/bin/sh
crlf:x:1002:1002::/:/bin/sh\r
last:x:1003:1003::/:/bin/sh";

    const GROUP: &str = "\
root:x:0:
users:x:100:app,other
app:x:1000:app
staff:x:50:other,app
audio:x:29:other
broken:x:
video:x:44:,app,
users2:x:100:app
bad:x:99999999999:app
";

    fn rootfs() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), PASSWD).unwrap();
        fs::write(root.join("etc/group"), GROUP).unwrap();
        (dir, root)
    }

    fn user(uid: u32, gid: u32, additional_gids: &[u32]) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: additional_gids.to_vec(),
        }
    }

    fn kind(root: &Path, spec: &str) -> ErrorKind {
        match resolve(root, spec) {
            Ok(u) => panic!("{spec:?} resolved to {u:?}"),
            Err(e) => e.kind(),
        }
    }

    #[test]
    fn name_gives_passwd_ids_and_memberships() {
        let (_d, root) = rootfs();
        // users(100), staff(50), video(44); not the group named "app"; no duplicate 100.
        assert_eq!(
            resolve(&root, "app").unwrap(),
            user(1000, 1000, &[1000, 100, 50, 44])
        );
        assert_eq!(
            resolve(&root, "other").unwrap(),
            user(1001, 100, &[100, 50, 29])
        );
        assert_eq!(resolve(&root, "daemon").unwrap(), user(1, 1, &[1]));
    }

    #[test]
    fn uid_looks_up_its_gid_and_defaults_to_group_0() {
        let (_d, root) = rootfs();
        assert_eq!(
            resolve(&root, "1000").unwrap(),
            user(1000, 1000, &[1000, 100, 50, 44])
        );
        assert_eq!(resolve(&root, "0").unwrap(), user(0, 0, &[0]));
        assert_eq!(resolve(&root, "4242").unwrap(), user(4242, 0, &[0]));
        assert_eq!(
            resolve(&root, "0001003").unwrap(),
            user(1003, 1003, &[1003])
        );
    }

    #[test]
    fn empty_user_is_root() {
        let (_d, root) = rootfs();
        assert_eq!(resolve(&root, "").unwrap(), user(0, 0, &[0]));
    }

    #[test]
    fn explicit_group_forms() {
        let (_d, root) = rootfs();
        assert_eq!(resolve(&root, "app:staff").unwrap(), user(1000, 50, &[50]));
        assert_eq!(resolve(&root, "1000:staff").unwrap(), user(1000, 50, &[50]));
        assert_eq!(resolve(&root, "app:7").unwrap(), user(1000, 7, &[7]));
        assert_eq!(resolve(&root, "5:6").unwrap(), user(5, 6, &[6]));
        assert_eq!(
            resolve(&root, "last:last").unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn numeric_pair_reads_no_file() {
        let root = Path::new("/nonexistent/strata/rootfs");
        assert_eq!(resolve(root, "123:456").unwrap(), user(123, 456, &[456]));
        assert_eq!(
            kind(root, "123"),
            ErrorKind::NotFound,
            "a lone uid reads passwd"
        );
    }

    #[test]
    fn unknown_names_never_fall_back_to_root() {
        let (_d, root) = rootfs();
        for spec in [
            "nobody",
            "nobody:0",
            "0:nogroup",
            "app:nogroup",
            "ROOT",
            "root ",
        ] {
            assert_eq!(kind(&root, spec), ErrorKind::NotFound, "{spec:?}");
        }
        // Names on malformed lines are not users.
        for spec in [
            "short",
            "badid",
            "neg",
            "huge",
            "garbage line without colons",
            "broken:x",
        ] {
            assert_eq!(kind(&root, spec), ErrorKind::NotFound, "{spec:?}");
        }
        assert_eq!(kind(&root, "0:broken"), ErrorKind::NotFound);
        assert_eq!(kind(&root, "0:bad"), ErrorKind::NotFound);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let (_d, root) = rootfs();
        assert_eq!(resolve(&root, "crlf").unwrap(), user(1002, 1002, &[1002]));
        assert_eq!(resolve(&root, "last").unwrap(), user(1003, 1003, &[1003]));
        let garbage: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        fs::write(root.join("etc/passwd"), &garbage).unwrap();
        fs::write(root.join("etc/group"), &garbage).unwrap();
        assert_eq!(kind(&root, "app"), ErrorKind::NotFound);
        assert_eq!(resolve(&root, "77").unwrap(), user(77, 0, &[0]));
    }

    #[test]
    fn missing_files() {
        let (_d, root) = rootfs();
        fs::remove_file(root.join("etc/group")).unwrap();
        assert_eq!(resolve(&root, "app").unwrap(), user(1000, 1000, &[1000]));
        assert_eq!(kind(&root, "app:staff"), ErrorKind::NotFound);
        fs::remove_dir_all(root.join("etc")).unwrap();
        assert_eq!(resolve(&root, "1000").unwrap(), user(1000, 0, &[0]));
        assert_eq!(
            resolve(&root, "1000:1000").unwrap(),
            user(1000, 1000, &[1000])
        );
        assert_eq!(kind(&root, "app"), ErrorKind::NotFound);
        assert_eq!(kind(&root, "root"), ErrorKind::NotFound);
    }

    #[test]
    fn hostile_values_are_refused() {
        let (_d, root) = rootfs();
        for spec in [
            "4294967295",
            "4294967296",
            "99999999999",
            "99999999999999999999999999",
            "-1",
            "+1",
            "-0",
            "0:4294967296",
            "0:4294967295",
            "0:-1",
            "4294967295:0",
            ":",
            "0:",
            ":0",
            "app:",
            "a:b:c",
            "0:0:0",
            "na\0me",
            "app\n",
            "app:st\0ff",
        ] {
            assert_eq!(kind(&root, spec), ErrorKind::InvalidArgument, "{spec:?}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(kind(&root, &long), ErrorKind::InvalidArgument);
        assert_eq!(
            resolve(&root, "4294967294:4294967294").unwrap().uid,
            4294967294
        );
    }

    #[test]
    fn oversized_file_is_an_error() {
        let (_d, root) = rootfs();
        let f = File::create(root.join("etc/passwd")).unwrap();
        f.set_len(64 << 20).unwrap(); // sparse
        assert_eq!(kind(&root, "app"), ErrorKind::ResourceExhausted);
        assert_eq!(kind(&root, "1000"), ErrorKind::ResourceExhausted);
        // Exactly at the cap is read.
        let mut data = PASSWD.as_bytes().to_vec();
        data.push(b'\n');
        data.resize(usize::try_from(MAX_ETC_FILE_SIZE).unwrap(), b'#');
        fs::write(root.join("etc/passwd"), &data).unwrap();
        assert_eq!(resolve(&root, "app").unwrap().uid, 1000);
    }

    #[test]
    fn fifo_does_not_block() {
        let (_d, root) = rootfs();
        fs::remove_file(root.join("etc/passwd")).unwrap();
        nix::unistd::mkfifo(&root.join("etc/passwd"), Mode::from_bits_truncate(0o644)).unwrap();
        let (tx, rx) = mpsc::channel();
        let r = root.clone();
        std::thread::spawn(move || tx.send(resolve(&r, "app").map_err(|e| e.kind())));
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("resolving a FIFO /etc/passwd hung");
        assert_eq!(got, Err(ErrorKind::FailedPrecondition));
    }

    #[test]
    fn directory_is_refused() {
        let (_d, root) = rootfs();
        fs::remove_file(root.join("etc/passwd")).unwrap();
        fs::create_dir(root.join("etc/passwd")).unwrap();
        assert_eq!(kind(&root, "app"), ErrorKind::FailedPrecondition);
    }

    #[test]
    fn symlinks_resolve_inside_the_rootfs() {
        let (_d, root) = rootfs();
        fs::write(root.join("etc/shadow"), "inside:x:4321:4321:::\n").unwrap();
        fs::remove_file(root.join("etc/passwd")).unwrap();
        for target in [
            "/../../../../../../etc/shadow",
            "../../../../../../../etc/shadow",
            "/etc/shadow",
        ] {
            let _ = fs::remove_file(root.join("etc/passwd"));
            symlink(target, root.join("etc/passwd")).unwrap();
            assert_eq!(resolve(&root, "inside").unwrap().uid, 4321, "{target}");
            // The host's root user is not visible through the link.
            assert_eq!(kind(&root, "root"), ErrorKind::NotFound, "{target}");
        }
        // A link to a host file that the rootfs lacks is a missing file, not the host's.
        fs::remove_file(root.join("etc/passwd")).unwrap();
        symlink("/../../../../etc/hostname", root.join("etc/passwd")).unwrap();
        assert_eq!(kind(&root, "root"), ErrorKind::NotFound);
        // Through a symlinked /etc too.
        fs::rename(root.join("etc"), root.join("real-etc")).unwrap();
        symlink("/../../real-etc", root.join("etc")).unwrap();
        fs::remove_file(root.join("real-etc/passwd")).unwrap();
        fs::write(root.join("real-etc/passwd"), "viaetc:x:55:56:::\n").unwrap();
        assert_eq!(resolve(&root, "viaetc").unwrap(), user(55, 56, &[56]));
    }

    #[test]
    fn proc_links_resolve_inside_the_rootfs() {
        let (_d, root) = rootfs();
        // "/proc" here is the rootfs's (absent) /proc, never the host's procfs, so no
        // magic link is reachable; RESOLVE_NO_MAGICLINKS is the second line of defence.
        fs::remove_file(root.join("etc/passwd")).unwrap();
        symlink("/proc/self/root/etc/passwd", root.join("etc/passwd")).unwrap();
        assert_eq!(kind(&root, "root"), ErrorKind::NotFound);
    }

    #[test]
    fn shown_truncates() {
        let long = "x".repeat(100);
        let s = Shown(&long).to_string();
        assert!(s.len() < 80, "{s}");
        assert_eq!(Shown("a\0b").to_string(), "\"a\\0b\"");
    }
}
