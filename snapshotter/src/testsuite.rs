//! containerd's snapshotter conformance suite (`core/snapshots/testsuite`), one function
//! per case, for any [`Snapshotter`]: a backend in-process or one behind a gRPC socket.
//!
//! Each case takes the snapshotter and an empty `work` dir for mount points, mounts what
//! the snapshotter returns with real kernel mounts ([`crate::mount`]), and panics with a
//! message naming what differs. Layers are built by [`Op`] lists applied both through the
//! snapshotter's mounts and to a flat reference directory, which must then be equal.
//! Every snapshot carries `containerd.io/gc.root`, as in containerd's harness.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::ErrorKind;
use crate::api::{Info, Kind, Labels, Snapshotter};
use crate::mount::{mount_all, unmount_all};

/// A change to a directory tree, as containerd's `fstest` appliers.
#[derive(Clone, Debug)]
pub enum Op {
    /// Writes a file with content and mode (replacing what was there).
    File(&'static str, Vec<u8>, u32),
    /// Creates a directory with mode (chmod if it exists).
    Dir(&'static str, u32),
    /// Creates a symlink `path -> target`.
    Symlink(&'static str, &'static str),
    /// Hard-links `new` to the existing `old`.
    Link(&'static str, &'static str),
    /// Changes owner.
    Chown(&'static str, u32, u32),
    /// Changes mode.
    Chmod(&'static str, u32),
    /// Removes a path and everything under it.
    RemoveAll(&'static str),
    /// Renames `old` to `new`.
    Rename(&'static str, &'static str),
}

fn at(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// Applies `ops` to the tree at `root`.
pub fn apply(root: &Path, ops: &[Op]) -> std::io::Result<()> {
    for op in ops {
        match op {
            Op::File(p, data, mode) => {
                let path = at(root, p);
                let mut f = fs::File::create(&path)?;
                f.write_all(data)?;
                f.set_len(data.len() as u64)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
            }
            Op::Dir(p, mode) => {
                let path = at(root, p);
                match fs::create_dir(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    r => r?,
                }
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
            }
            Op::Symlink(p, target) => std::os::unix::fs::symlink(target, at(root, p))?,
            Op::Link(old, new) => fs::hard_link(at(root, old), at(root, new))?,
            Op::Chown(p, uid, gid) => {
                std::os::unix::fs::lchown(at(root, p), Some(*uid), Some(*gid))?
            }
            Op::Chmod(p, mode) => {
                fs::set_permissions(at(root, p), fs::Permissions::from_mode(*mode))?
            }
            Op::RemoveAll(p) => {
                let path = at(root, p);
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(&path)?,
                    Ok(_) => fs::remove_file(&path)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Op::Rename(old, new) => fs::rename(at(root, old), at(root, new))?,
        }
    }
    Ok(())
}

/// What is compared of one entry of a tree.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    content: Option<Vec<u8>>,
    link: Option<PathBuf>,
    /// Other paths of the same inode (hard links), for regular files.
    same_inode: BTreeSet<String>,
}

fn scan(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<String>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            let path = root.join(&rel);
            let md = fs::symlink_metadata(&path).unwrap();
            let name = rel.to_string_lossy().into_owned();
            let ft = md.file_type();
            if ft.is_dir() {
                stack.push(rel);
            } else if ft.is_file() {
                inodes.entry(md.ino()).or_default().push(name.clone());
            }
            out.insert(
                name,
                Entry {
                    mode: md.mode(),
                    uid: md.uid(),
                    gid: md.gid(),
                    rdev: md.rdev(),
                    content: ft.is_file().then(|| fs::read(&path).unwrap()),
                    link: ft.is_symlink().then(|| fs::read_link(&path).unwrap()),
                    same_inode: BTreeSet::new(),
                },
            );
        }
    }
    for names in inodes.values().filter(|n| n.len() > 1) {
        for n in names {
            let others = names.iter().filter(|o| *o != n).cloned().collect();
            if let Some(e) = out.get_mut(n) {
                e.same_inode = others;
            }
        }
    }
    out
}

/// Panics unless the trees at `expected` and `actual` hold the same entries (type, mode,
/// owner, device numbers, content, link targets, hard-link groups).
pub fn check_equal(expected: &Path, actual: &Path) {
    let (e, a) = (scan(expected), scan(actual));
    let mut diffs = Vec::new();
    for (k, ev) in &e {
        match a.get(k) {
            None => diffs.push(format!("missing {k}")),
            Some(av) if av != ev => diffs.push(format!("{k}: expected {ev:?}, got {av:?}")),
            _ => {}
        }
    }
    for k in a.keys().filter(|k| !e.contains_key(*k)) {
        diffs.push(format!("unexpected {k}"));
    }
    assert!(
        diffs.is_empty(),
        "{} differs from {}:\n{}",
        actual.display(),
        expected.display(),
        diffs.join("\n")
    );
}

/// The labels every snapshot of the suite carries.
pub fn gc_root() -> Labels {
    let mut l = Labels::new();
    l.insert(
        "containerd.io/gc.root".into(),
        "2026-01-01T00:00:00Z".into(),
    );
    l
}

fn key(work: &Path, name: &str) -> String {
    work.join(name).to_string_lossy().into_owned()
}

/// A mount point that is unmounted when dropped, even if the case panics.
struct Mounted(PathBuf);

impl Mounted {
    fn new(mounts: &[crate::Mount], target: PathBuf) -> Mounted {
        fs::create_dir_all(&target).unwrap();
        mount_all(mounts, &target).unwrap_or_else(|e| panic!("mount {mounts:?}: {e:?}"));
        Mounted(target)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = unmount_all(&self.0)
            && !std::thread::panicking()
        {
            panic!("unmount {}: {e:?}", self.0.display());
        }
    }
}

/// Prepares `name` on `parent`, mounts it, applies `ops`, unmounts and commits it as
/// `committed`.
fn layer(
    sn: &dyn Snapshotter,
    work: &Path,
    parent: Option<&str>,
    name: &str,
    ops: &[Op],
) -> String {
    let k = key(work, &format!("{name}-active"));
    let m = sn.prepare(&k, parent, gc_root()).expect("prepare");
    {
        let mnt = Mounted::new(&m, work.join(format!("{name}-mnt")));
        apply(&mnt.0, ops).expect("apply layer");
    }
    let committed = key(work, name);
    sn.commit(&committed, &k, gc_root()).expect("commit");
    committed
}

/// Views `name` and checks it equals `flat`.
fn check_view(sn: &dyn Snapshotter, work: &Path, name: &str, flat: &Path) {
    let v = key(work, &format!("{name}-view"));
    let m = sn.view(&v, Some(name), gc_root()).expect("view");
    {
        let mnt = Mounted::new(&m, work.join("view-mnt"));
        check_equal(flat, &mnt.0);
    }
    sn.remove(&v).expect("remove view");
}

/// containerd's `checkSnapshots`: builds a chain from `layers`, each checked through a
/// view against a flat directory with the same changes applied.
pub fn check_snapshots(sn: &dyn Snapshotter, work: &Path, layers: &[Vec<Op>]) {
    let flat = work.join("flat");
    fs::create_dir_all(&flat).unwrap();
    let mut parent: Option<String> = None;
    for (i, ops) in layers.iter().enumerate() {
        let name = layer(sn, work, parent.as_deref(), &format!("layer-{i}"), ops);
        apply(&flat, ops).expect("apply to flat");
        check_view(sn, work, &name, &flat);
        parent = Some(name);
    }
}

fn assert_kind(r: crate::Result<impl std::fmt::Debug>, kind: ErrorKind, what: &str) {
    match r {
        Err(e) if e.kind() == kind => {}
        other => panic!("{what}: expected {kind:?}, got {other:?}"),
    }
}

fn mkdir(work: &Path, name: &str) -> PathBuf {
    let p = work.join(name);
    fs::create_dir_all(&p).unwrap();
    p
}

/// `Basic` (case 1): the whole lifecycle.
pub fn basic(sn: &dyn Snapshotter, work: &Path) {
    let initial = vec![
        Op::File("/foo", b"foo\n".to_vec(), 0o777),
        Op::Dir("/a", 0o755),
        Op::Dir("/a/b", 0o755),
        Op::Dir("/a/b/c", 0o755),
    ];
    let diff = vec![
        Op::File("/bar", b"bar\n".to_vec(), 0o777),
        Op::File("/foo", b"bar\n".to_vec(), 0o777),
        Op::RemoveAll("/a/b"),
    ];
    let preparing = key(work, "preparing");
    let m = sn.prepare(&preparing, None, gc_root()).unwrap();
    assert!(!m.is_empty(), "prepare returned no mounts");
    {
        let mnt = Mounted::new(&m, mkdir(work, "preparing"));
        apply(&mnt.0, &initial).unwrap();
    }
    let committed = key(work, "committed");
    sn.commit(&committed, &preparing, gc_root()).unwrap();
    let si = sn.stat(&committed).unwrap();
    assert_eq!((si.parent.as_deref(), si.kind), (None, Kind::Committed));
    assert_kind(
        sn.stat(&preparing),
        ErrorKind::NotFound,
        "stat after commit",
    );

    let next = key(work, "nextlayer");
    let m = sn.prepare(&next, Some(&committed), gc_root()).unwrap();
    {
        let mnt = Mounted::new(&m, mkdir(work, "nextlayer"));
        let flat = mkdir(work, "flat-initial");
        apply(&flat, &initial).unwrap();
        check_equal(&flat, &mnt.0);
        apply(&mnt.0, &diff).unwrap();
    }
    let ni = sn.stat(&next).unwrap();
    assert_eq!(ni.parent.as_deref(), Some(committed.as_str()));
    assert_eq!(ni.kind, Kind::Active);
    let next_committed = key(work, "committed-next");
    sn.commit(&next_committed, &next, gc_root()).unwrap();
    let si2 = sn.stat(&next_committed).unwrap();
    assert_eq!(si2.parent.as_deref(), Some(committed.as_str()));
    assert_eq!(si2.kind, Kind::Committed);
    assert_kind(sn.stat(&next), ErrorKind::NotFound, "stat after commit");

    let mut walked = HashMap::new();
    sn.walk(&[], &mut |i| {
        walked.insert(i.name.clone(), i);
        Ok(())
    })
    .unwrap();
    assert_eq!(walked.get(&committed), Some(&si));
    assert_eq!(walked.get(&next_committed), Some(&si2));

    let nextnext = key(work, "nextnextlayer");
    let m = sn
        .view(&nextnext, Some(&next_committed), gc_root())
        .unwrap();
    {
        let mnt = Mounted::new(&m, mkdir(work, "nextnextlayer"));
        let flat = mkdir(work, "flat-both");
        apply(&flat, &initial).unwrap();
        apply(&flat, &diff).unwrap();
        check_equal(&flat, &mnt.0);
    }
    sn.remove(&nextnext).unwrap();
    let err = sn
        .remove(&committed)
        .expect_err("removing a parent with children");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(
        err.to_string().contains("remove"),
        "error should say remove: {err}"
    );
    sn.remove(&next_committed).unwrap();
    sn.remove(&committed).unwrap();
}

fn prepare_mounted(
    sn: &dyn Snapshotter,
    work: &Path,
    name: &str,
    parent: Option<&str>,
) -> (String, Mounted) {
    let k = key(work, name);
    let m = sn.prepare(&k, parent, gc_root()).unwrap();
    assert!(!m.is_empty(), "prepare returned no mounts");
    (k, Mounted::new(&m, mkdir(work, name)))
}

/// `StatActive` (case 2).
pub fn stat_active(sn: &dyn Snapshotter, work: &Path) {
    let (k, mnt) = prepare_mounted(sn, work, "preparing", None);
    fs::write(mnt.0.join("foo"), "foo\n").unwrap();
    let si = sn.stat(&k).unwrap();
    assert_eq!(si.name, k);
    assert_eq!(si.kind, Kind::Active);
    assert_eq!(si.parent, None);
}

/// `StatComitted` (case 3).
pub fn stat_committed(sn: &dyn Snapshotter, work: &Path) {
    let (k, mnt) = prepare_mounted(sn, work, "preparing", None);
    fs::write(mnt.0.join("foo"), "foo\n").unwrap();
    let committed = key(work, "committed");
    sn.commit(&committed, &k, gc_root()).unwrap();
    let si = sn.stat(&committed).unwrap();
    assert_eq!(si.name, committed);
    assert_eq!(si.kind, Kind::Committed);
    assert_eq!(si.parent, None);
}

/// `TransitivityTest` (case 4): A <- B, parents resolve.
pub fn transitivity(sn: &dyn Snapshotter, work: &Path) {
    let (k, mnt) = prepare_mounted(sn, work, "preparing", None);
    fs::write(mnt.0.join("foo"), "foo\n").unwrap();
    let a = key(work, "snapA");
    sn.commit(&a, &k, gc_root()).unwrap();
    let (k, mnt2) = prepare_mounted(sn, work, "next", Some(&a));
    fs::write(mnt2.0.join("foo"), "foo bar\n").unwrap();
    let b = key(work, "snapB");
    sn.commit(&b, &k, gc_root()).unwrap();
    let sa = sn.stat(&a).unwrap();
    let sb = sn.stat(&b).unwrap();
    let sbp = sn
        .stat(sb.parent.as_deref().expect("B has a parent"))
        .unwrap();
    assert_eq!(sa.parent, None);
    assert_eq!(sb.parent.as_deref(), Some(a.as_str()));
    assert_eq!(sbp.parent, None);
    drop((mnt, mnt2));
}

/// `PreareViewFailingtest` (case 5): a key is taken by any kind.
pub fn prepare_view_failing(sn: &dyn Snapshotter, work: &Path) {
    let (k, _mnt) = prepare_mounted(sn, work, "preparing", None);
    let a = key(work, "snapA");
    sn.commit(&a, &k, gc_root()).unwrap();
    let new = key(work, "newlayer");
    sn.prepare(&new, Some(&a), gc_root()).unwrap();
    assert_kind(
        sn.view(&new, Some(&a), gc_root()),
        ErrorKind::AlreadyExists,
        "view on a prepared key",
    );
    let prep = key(work, "prepLayer");
    sn.prepare(&prep, Some(&a), gc_root()).unwrap();
    assert_kind(
        sn.prepare(&prep, Some(&a), gc_root()),
        ErrorKind::AlreadyExists,
        "prepare twice",
    );
    let view = key(work, "viewLayer");
    sn.view(&view, Some(&a), gc_root()).unwrap();
    assert_kind(
        sn.view(&view, Some(&a), gc_root()),
        ErrorKind::AlreadyExists,
        "view twice",
    );
}

fn base_snapshots(sn: &dyn Snapshotter) {
    sn.prepare("c1-a", None, gc_root()).unwrap();
    sn.commit("c1", "c1-a", gc_root()).unwrap();
    sn.prepare("c2-a", Some("c1"), gc_root()).unwrap();
    sn.commit("c2", "c2-a", gc_root()).unwrap();
    sn.prepare("a1", Some("c2"), gc_root()).unwrap();
    sn.prepare("a2", None, gc_root()).unwrap();
    sn.view("v1", Some("c2"), gc_root()).unwrap();
    sn.view("v2", None, gc_root()).unwrap();
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `Update` (case 6): times, kinds, parents, and label masks.
pub fn update(sn: &dyn Snapshotter, _work: &Path) {
    let t1 = SystemTime::now();
    base_snapshots(sn);
    let t2 = SystemTime::now();
    let cases = [
        ("c1", Kind::Committed, None),
        ("c2", Kind::Committed, Some("c1")),
        ("a1", Kind::Active, Some("c2")),
        ("a2", Kind::Active, None),
        ("v1", Kind::View, Some("c2")),
        ("v2", Kind::View, None),
    ];
    for (name, kind, parent) in cases {
        let st = sn.stat(name).unwrap();
        assert!(
            st.created_at >= t1 && st.created_at <= t2,
            "{name}: created outside the window"
        );
        assert_eq!(st.created_at, st.updated_at, "{name}: updated != created");
        assert_eq!(
            (st.kind, st.parent.as_deref(), st.name.as_str()),
            (kind, parent, name)
        );
        let created = st.created_at;
        let root = "2026-11-27T00:00:00Z";
        let expected = labels(&[
            ("l1", "v1"),
            ("l2", "v2"),
            ("l3", "v3"),
            ("containerd.io/gc.root", root),
        ]);
        let mut req = st.clone();
        req.parent = Some("doesnotexist".into());
        req.labels = expected.clone();
        let u1 = SystemTime::now();
        let st = sn.update(req, &[]).unwrap();
        let u2 = SystemTime::now();
        assert_eq!(st.created_at, created, "{name}: created changed");
        assert!(
            st.updated_at >= u1 && st.updated_at <= u2,
            "{name}: updated outside the window"
        );
        assert_eq!(
            (st.kind, st.parent.as_deref(), st.name.as_str()),
            (kind, parent, name)
        );
        assert_eq!(st.labels, expected);

        let mut req = st.clone();
        req.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
        let st = sn
            .update(req, &["labels.l1".into(), "labels.l2".into()])
            .unwrap();
        assert_eq!(
            st.labels,
            labels(&[
                ("l1", "updated"),
                ("l3", "v3"),
                ("containerd.io/gc.root", root)
            ])
        );

        let mut req = st.clone();
        let expected = labels(&[("l4", "v4"), ("containerd.io/gc.root", root)]);
        req.labels = expected.clone();
        let st = sn.update(req, &["labels".into()]).unwrap();
        assert_eq!(st.labels, expected);

        let mut req = st.clone();
        req.parent = Some("doesnotexist".into());
        assert_kind(
            sn.update(req, &["parent".into()]),
            ErrorKind::InvalidArgument,
            "update of parent",
        );
        assert_eq!(
            sn.stat(name).unwrap(),
            st,
            "{name}: a refused update changed it"
        );
    }
}

/// `Remove` (case 7): keys and committed names are reusable after removal.
pub fn remove(sn: &dyn Snapshotter, _work: &Path) {
    sn.prepare("committed-a", None, gc_root()).unwrap();
    sn.commit("committed-1", "committed-a", gc_root()).unwrap();
    sn.prepare("reuse-1", Some("committed-1"), gc_root())
        .unwrap();
    sn.remove("reuse-1").unwrap();
    sn.view("reuse-1", Some("committed-1"), gc_root()).unwrap();
    sn.remove("reuse-1").unwrap();
    sn.prepare("reuse-1", None, gc_root()).unwrap();
    sn.remove("committed-1").unwrap();
    sn.commit("committed-1", "reuse-1", gc_root()).unwrap();
    assert_eq!(sn.stat("committed-1").unwrap().kind, Kind::Committed);
    assert_kind(
        sn.stat("reuse-1"),
        ErrorKind::NotFound,
        "stat of a committed key",
    );
}

fn walk_names(sn: &dyn Snapshotter, filters: &[&str]) -> BTreeSet<String> {
    let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
    let mut out = BTreeSet::new();
    sn.walk(&filters, &mut |i| {
        out.insert(i.name);
        Ok(())
    })
    .unwrap();
    out
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// `Walk` (case 8): containerd's filter cases.
pub fn walk(sn: &dyn Snapshotter, _work: &Path) {
    let with = |extra: &[(&str, &str)]| {
        let mut l = gc_root();
        l.extend(labels(extra));
        l
    };
    sn.prepare("p-tmp", None, gc_root()).unwrap();
    sn.commit("p", "p-tmp", with(&[("l", "1")])).unwrap();
    sn.prepare("a-np", None, gc_root()).unwrap();
    sn.prepare("a-np-wl", None, with(&[("l", "2")])).unwrap();
    sn.prepare("a-wp", Some("p"), gc_root()).unwrap();
    sn.prepare("a-wp-wl", Some("p"), with(&[("l", "2")]))
        .unwrap();
    sn.view("v-np", None, gc_root()).unwrap();
    sn.view("v-wp-wl", Some("p"), with(&[("l", "3")])).unwrap();
    let root = r#"labels."containerd.io/gc.root"=="2026-01-01T00:00:00Z""#;
    let all = set(&["p", "a-np", "a-np-wl", "a-wp", "a-wp-wl", "v-np", "v-wp-wl"]);
    let cases: [(Vec<String>, BTreeSet<String>); 10] = [
        (vec![], all.clone()),
        (vec![root.into()], all),
        (
            vec![format!("kind==active,{root}")],
            set(&["a-np", "a-np-wl", "a-wp", "a-wp-wl"]),
        ),
        (
            vec![format!("kind==view,{root}")],
            set(&["v-np", "v-wp-wl"]),
        ),
        (vec![format!("kind==committed,{root}")], set(&["p"])),
        (
            vec!["name==p".into(), "name==a-np-wl".into()],
            set(&["p", "a-np-wl"]),
        ),
        (
            vec!["labels.l".into()],
            set(&["p", "a-np-wl", "a-wp-wl", "v-wp-wl"]),
        ),
        (
            vec!["parent==p".into()],
            set(&["a-wp", "a-wp-wl", "v-wp-wl"]),
        ),
        (
            vec![r#"parent!="""#.into()],
            set(&["a-wp", "a-wp-wl", "v-wp-wl"]),
        ),
        (vec!["labels.l==2".into()], set(&["a-np-wl", "a-wp-wl"])),
    ];
    for (filters, expected) in cases {
        let f: Vec<&str> = filters.iter().map(String::as_str).collect();
        assert_eq!(walk_names(sn, &f), expected, "filters {filters:?}");
    }
    let bad = ["labels.", "name==", "kind~=(", "==x"].map(String::from);
    for f in bad {
        assert_kind(
            sn.walk(std::slice::from_ref(&f), &mut |_| Ok(())),
            ErrorKind::InvalidArgument,
            &format!("filter {f:?}"),
        );
    }
}

/// `LayerFileupdate` (case 9) (docker#21555): a file rewritten in upper layers.
pub fn layer_file_update(sn: &dyn Snapshotter, work: &Path) {
    check_snapshots(
        sn,
        work,
        &[
            vec![Op::File("/foo", b"foo\n".to_vec(), 0o777)],
            vec![Op::File("/foo", b"bar\n".to_vec(), 0o777)],
            vec![Op::File("/foo", b"longer than before\n".to_vec(), 0o644)],
            vec![Op::File("/foo", b"x".to_vec(), 0o600)],
        ],
    );
}

/// `RemoveDirectoryInLowerLayer` (case 10) (docker#25244): a removed lower dir stays gone.
pub fn remove_directory_in_lower_layer(sn: &dyn Snapshotter, work: &Path) {
    check_snapshots(
        sn,
        work,
        &[
            vec![
                Op::Dir("/lib", 0o700),
                Op::File("/lib/hidden", b"hidden".to_vec(), 0o644),
            ],
            vec![
                Op::RemoveAll("/lib"),
                Op::Dir("/lib", 0o700),
                Op::File("/lib/not-hidden", b"not-hidden".to_vec(), 0o644),
            ],
            vec![Op::File("/lib/newfile", b"new".to_vec(), 0o644)],
        ],
    );
}

/// `Chown` (case 11) (docker#20240, #24913, #28391): ownership changes of lower files.
pub fn chown(sn: &dyn Snapshotter, work: &Path) {
    check_snapshots(
        sn,
        work,
        &[
            vec![
                Op::Dir("/opt", 0o711),
                Op::Dir("/opt/a", 0o700),
                Op::Dir("/opt/a/b", 0o700),
                Op::File("/opt/a/b/file.txt", b"hello".to_vec(), 0o644),
            ],
            vec![
                Op::Chown("/opt", 1, 1),
                Op::Chown("/opt/a", 1, 1),
                Op::Chown("/opt/a/b", 1, 1),
                Op::Chown("/opt/a/b/file.txt", 1, 1),
            ],
        ],
    );
}

/// `DirectoryPermissionOnCommit` (case 12) (docker#27298).
pub fn directory_permission_on_commit(sn: &dyn Snapshotter, work: &Path) {
    check_snapshots(
        sn,
        work,
        &[
            vec![
                Op::Dir("/dir1", 0o700),
                Op::Dir("/dir2", 0o750),
                Op::Dir("/dir3", 0o777),
                Op::Chown("/dir1", 1, 1),
                Op::Chown("/dir2", 2, 2),
                Op::Chown("/dir3", 3, 3),
            ],
            vec![
                Op::Dir("/dir4", 0o700),
                Op::Chown("/dir4", 1, 1),
                Op::File("/dir1/file", b"in dir1".to_vec(), 0o644),
                Op::Chmod("/dir2", 0o1777),
            ],
        ],
    );
}

/// `RemoveIntermediateSnapshot` (case 13): removal is leaf-first.
pub fn remove_intermediate_snapshot(sn: &dyn Snapshotter, work: &Path) {
    let (base, _mnt) = prepare_mounted(sn, work, "base", None);
    let committed_base = key(work, "committed-base");
    sn.commit(&committed_base, &base, gc_root()).unwrap();
    let inter = key(work, "intermediate");
    sn.prepare(&inter, Some(&committed_base), gc_root())
        .unwrap();
    let committed_inter = key(work, "committed-inter");
    sn.commit(&committed_inter, &inter, gc_root()).unwrap();
    let top = key(work, "toplayer");
    sn.prepare(&top, Some(&committed_inter), gc_root()).unwrap();
    assert_kind(
        sn.remove(&committed_inter),
        ErrorKind::FailedPrecondition,
        "remove intermediate",
    );
    assert_eq!(sn.stat(&committed_inter).unwrap().kind, Kind::Committed);
    sn.remove(&top).unwrap();
    sn.remove(&committed_inter).unwrap();
    sn.remove(&committed_base).unwrap();
}

/// `DeletedFilesInChildSnapshot` (case 14): deletions propagate to later layers.
pub fn deleted_files_in_child_snapshot(sn: &dyn Snapshotter, work: &Path) {
    check_snapshots(
        sn,
        work,
        &[
            vec![
                Op::File("/foo", b"foo\n".to_vec(), 0o777),
                Op::File("/foobar", b"foobar\n".to_vec(), 0o777),
            ],
            vec![Op::RemoveAll("/foobar")],
            vec![],
        ],
    );
}

/// `MoveFileFromLowerLayer` (case 15): move by hard link plus delete.
pub fn move_file_from_lower_layer(sn: &dyn Snapshotter, work: &Path) {
    check_snapshots(
        sn,
        work,
        &[
            vec![
                Op::Dir("/dir1", 0o700),
                Op::File("/dir1/f1", b"Hello".to_vec(), 0o644),
                Op::Dir("/dir2", 0o700),
                Op::File("/dir2/f2", b"...".to_vec(), 0o644),
            ],
            vec![
                Op::Dir("/dir3", 0o700),
                Op::File("/dir3/f1", b"Hello".to_vec(), 0o644),
                Op::RemoveAll("/dir1"),
                Op::Link("/dir2/f2", "/dir3/f2"),
                Op::RemoveAll("/dir2/f2"),
            ],
        ],
    );
}

/// `ViewReadonly` (case 16): a view's mount refuses writes.
pub fn view_readonly(sn: &dyn Snapshotter, work: &Path) {
    let preparing = key(work, "preparing");
    sn.prepare(&preparing, None, gc_root()).unwrap();
    let committed = key(work, "committed");
    sn.commit(&committed, &preparing, gc_root()).unwrap();
    let view = key(work, "view");
    let m = sn.view(&view, Some(&committed), gc_root()).unwrap();
    {
        let mnt = Mounted::new(&m, mkdir(work, "view-mount"));
        let err = fs::write(mnt.0.join("testfile"), "testcontent").expect_err("write to a view");
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EROFS),
            "write to a view: {err}"
        );
    }
    sn.remove(&view).unwrap();
    sn.remove(&committed).unwrap();
}

/// `StatInWalk` (case 17): the walk callback may call back into the snapshotter.
pub fn stat_in_walk(sn: &dyn Snapshotter, _work: &Path) {
    base_snapshots(sn);
    let mut n = 0;
    sn.walk(&[], &mut |i: Info| {
        let st = sn.stat(&i.name)?;
        assert_eq!(st, i);
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 6);
}

/// `CloseTwice` (case 18): a snapshotter (or client) can be dropped and opened again, twice,
/// with its state intact. `open` opens the snapshotter on the same root each time.
pub fn close_twice(open: &dyn Fn() -> Box<dyn Snapshotter>, _work: &Path) {
    let sn = open();
    sn.prepare("closeTwice-prepare", None, gc_root()).unwrap();
    sn.commit("closeTwice", "closeTwice-prepare", gc_root())
        .unwrap();
    sn.prepare("closeTwice-keep", Some("closeTwice"), gc_root())
        .unwrap();
    drop(sn);
    let sn = open();
    assert_eq!(
        sn.stat("closeTwice-keep").unwrap().parent.as_deref(),
        Some("closeTwice")
    );
    sn.remove("closeTwice-keep").unwrap();
    sn.remove("closeTwice").unwrap();
    drop(sn);
    let sn = open();
    assert_kind(
        sn.stat("closeTwice"),
        ErrorKind::NotFound,
        "stat after remove and reopen",
    );
}

/// `RootPermission` (case 19): a new snapshot's root is 0755.
pub fn root_permission(sn: &dyn Snapshotter, work: &Path) {
    // A narrow umask must not leak into the snapshot's root.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let r = sn.prepare(&key(work, "preparing"), None, gc_root());
    nix::sys::stat::umask(old);
    let m = r.unwrap();
    let mnt = Mounted::new(&m, mkdir(work, "preparing"));
    let mode = fs::metadata(&mnt.0).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755, "root of a new snapshot is {mode:o}");
}

/// `Rename` (case 20) (docker#25409): files renamed over files across layers. Renaming a lower
/// directory needs overlay's redirect_dir, so `rename_dirs` is false for overlayfs.
pub fn rename(sn: &dyn Snapshotter, work: &Path, rename_dirs: bool) {
    let mut second = vec![
        Op::Rename("/dir1/f1", "/dir1/f2"),
        Op::Rename("/dir2/f2", "/dir3/moved"),
        Op::Rename("/top", "/dir1/top"),
    ];
    if rename_dirs {
        second.push(Op::Rename("/dir2", "/dir4"));
    }
    check_snapshots(
        sn,
        work,
        &[
            vec![
                Op::Dir("/dir1", 0o700),
                Op::Dir("/dir2", 0o700),
                Op::Dir("/dir3", 0o700),
                Op::File("/dir1/f1", b"f1".to_vec(), 0o644),
                Op::File("/dir1/f2", b"f2 to be replaced".to_vec(), 0o600),
                Op::File("/dir2/f2", b"f2".to_vec(), 0o644),
                Op::File("/top", b"top".to_vec(), 0o644),
            ],
            second,
            vec![Op::File("/dir1/f1", b"f1 again".to_vec(), 0o644)],
        ],
    );
}

/// `128LayersMount` (case 21): every step of a 128-layer chain mounts and reads right, so
/// long lower chains fit the kernel's mount option limit.
pub fn layers_128(sn: &dyn Snapshotter, work: &Path) {
    let flat = mkdir(work, "flat");
    let mut ops = vec![vec![
        Op::File("/bottom", b"way at the bottom\n".to_vec(), 0o777),
        Op::File("/overwriteme", b"FIRST!\n".to_vec(), 0o777),
        Op::Dir("/ADDHERE", 0o755),
        Op::Dir("/ONLYME", 0o755),
        Op::File("/ONLYME/bottom", b"bye!\n".to_vec(), 0o777),
    ]];
    let names: Vec<&'static str> = (1..128)
        .map(|i| &*Box::leak(format!("/ADDHERE/file-{i}").into_boxed_str()))
        .collect();
    let only: Vec<&'static str> = (1..128)
        .map(|i| &*Box::leak(format!("/ONLYME/file-{i}").into_boxed_str()))
        .collect();
    for i in 1..128 {
        ops.push(vec![
            Op::File(
                "/overwriteme",
                format!("{i} WAS HERE!\n").into_bytes(),
                0o777,
            ),
            Op::File(names[i - 1], b"same\n".to_vec(), 0o755),
            Op::RemoveAll("/ONLYME"),
            Op::Dir("/ONLYME", 0o755),
            Op::File(only[i - 1], b"only me!\n".to_vec(), 0o777),
        ]);
    }
    let mut parent: Option<String> = None;
    for (i, layer_ops) in ops.iter().enumerate() {
        let k = key(work, &format!("layer-{i}-active"));
        let m = sn.prepare(&k, parent.as_deref(), gc_root()).unwrap();
        {
            let mnt = Mounted::new(&m, work.join("mnt"));
            check_equal(&flat, &mnt.0);
            apply(&mnt.0, layer_ops).unwrap();
            apply(&flat, layer_ops).unwrap();
            check_equal(&flat, &mnt.0);
        }
        let name = key(work, &format!("layer-{i}"));
        sn.commit(&name, &k, gc_root()).unwrap();
        parent = Some(name);
    }
    check_view(sn, work, parent.as_deref().unwrap(), &flat);
}

/// Hostile input: each refused with the contract's code, and nothing changed.
pub fn hostile_input(sn: &dyn Snapshotter, _work: &Path) {
    sn.prepare("base-a", None, gc_root()).unwrap();
    sn.commit("base", "base-a", gc_root()).unwrap();
    sn.prepare("active", Some("base"), gc_root()).unwrap();
    let before = walk_names(sn, &[]);
    let long = "k".repeat(64 * 1024);
    for k in ["", "a\0b", long.as_str()] {
        assert_kind(
            sn.prepare(k, None, gc_root()),
            ErrorKind::InvalidArgument,
            &format!("prepare key {:.20?}", k),
        );
        assert_kind(
            sn.view(k, None, gc_root()),
            ErrorKind::InvalidArgument,
            "view with a bad key",
        );
    }
    assert_kind(
        sn.prepare("x", Some("missing"), gc_root()),
        ErrorKind::NotFound,
        "missing parent",
    );
    assert_kind(
        sn.prepare("x", Some("active"), gc_root()),
        ErrorKind::InvalidArgument,
        "active parent",
    );
    assert_kind(
        sn.view("x", Some("active"), gc_root()),
        ErrorKind::InvalidArgument,
        "active parent of a view",
    );
    let mut big = gc_root();
    big.insert("k".into(), "v".repeat(5000));
    assert_kind(
        sn.prepare("x", None, big.clone()),
        ErrorKind::InvalidArgument,
        "oversized label",
    );
    assert_kind(
        sn.commit("x", "active", big.clone()),
        ErrorKind::InvalidArgument,
        "oversized label on commit",
    );
    assert_kind(
        sn.commit("", "active", gc_root()),
        ErrorKind::InvalidArgument,
        "empty commit name",
    );
    assert_kind(
        sn.commit("base", "active", gc_root()),
        ErrorKind::AlreadyExists,
        "commit onto a taken name",
    );
    assert_kind(
        sn.commit("y", "base", gc_root()),
        ErrorKind::FailedPrecondition,
        "commit of a committed snapshot",
    );
    assert_kind(
        sn.commit("y", "missing", gc_root()),
        ErrorKind::NotFound,
        "commit of a missing key",
    );
    assert_kind(sn.remove("missing"), ErrorKind::NotFound, "remove missing");
    assert_kind(
        sn.remove("base"),
        ErrorKind::FailedPrecondition,
        "remove with children",
    );
    assert_kind(
        sn.mounts("missing"),
        ErrorKind::NotFound,
        "mounts of missing",
    );
    assert_kind(sn.usage("missing"), ErrorKind::NotFound, "usage of missing");
    assert_kind(sn.stat(""), ErrorKind::NotFound, "stat of the empty key");
    let mut info = sn.stat("active").unwrap();
    for field in ["name", "parent", "kind", "created_at", "labels.", "x"] {
        assert_kind(
            sn.update(info.clone(), &[field.to_string()]),
            ErrorKind::InvalidArgument,
            &format!("update mask {field}"),
        );
    }
    info.labels = big;
    assert_kind(
        sn.update(info, &[]),
        ErrorKind::InvalidArgument,
        "update with an oversized label",
    );
    let mut missing = sn.stat("active").unwrap();
    missing.name = "missing".into();
    assert_kind(
        sn.update(missing, &[]),
        ErrorKind::NotFound,
        "update of missing",
    );
    assert_kind(
        sn.walk(&["labels.\"unterminated".into()], &mut |_| Ok(())),
        ErrorKind::InvalidArgument,
        "malformed filter",
    );
    assert_eq!(
        walk_names(sn, &[]),
        before,
        "a refused request changed the snapshots"
    );
    assert_eq!(sn.stat("active").unwrap().labels, gc_root());
}

/// A fresh btrfs filesystem on a loop device (a sparse image in a temp dir), for tests
/// and benchmarks of the btrfs backend; unmounted and detached on drop, also when a test
/// panics. Needs root, `mkfs.btrfs` and `losetup`.
pub struct LoopBtrfs {
    mnt: PathBuf,
    loopdev: String,
    _dir: tempfile::TempDir,
}

fn run_tool(cmd: &str, args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (install btrfs-progs): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl LoopBtrfs {
    /// Makes and mounts a btrfs of `size` bytes.
    pub fn new(size: u64) -> LoopBtrfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let img = dir.path().join("btrfs.img");
        fs::File::create(&img)
            .and_then(|f| f.set_len(size))
            .expect("create image");
        let img = img.to_str().expect("utf-8 temp path");
        run_tool("mkfs.btrfs", &["-q", img]);
        let out = run_tool("losetup", &["--find", "--show", img]);
        let loopdev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).expect("mount point");
        let fs = LoopBtrfs {
            mnt,
            loopdev,
            _dir: dir,
        };
        // Constructed before mounting, so a failed mount still detaches the device.
        run_tool(
            "mount",
            &["-t", "btrfs", &fs.loopdev, fs.mnt.to_str().expect("utf-8")],
        );
        fs
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        let ok = |c: &mut std::process::Command| c.status().is_ok_and(|s| s.success());
        if !ok(std::process::Command::new("umount").arg(&self.mnt)) {
            // Busy (a test's mount or open file left behind): detach lazily, never leak.
            ok(std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.mnt));
        }
        // On a busy device this sets autoclear, freeing it once the last user is gone.
        ok(std::process::Command::new("losetup").args(["-d", &self.loopdev]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(ops: &[Op]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        apply(d.path(), ops).unwrap();
        d
    }

    fn differs(a: &[Op], b: &[Op]) -> bool {
        let (a, b) = (tree(a), tree(b));
        std::panic::catch_unwind(|| check_equal(a.path(), b.path())).is_err()
    }

    #[test]
    fn check_equal_sees_every_difference() {
        let base = vec![
            Op::Dir("/d", 0o755),
            Op::File("/d/f", b"x".to_vec(), 0o644),
            Op::Symlink("/l", "d/f"),
        ];
        assert!(!differs(&base, &base));
        let with = |extra: Op| {
            let mut v = base.clone();
            v.push(extra);
            v
        };
        assert!(differs(&base, &with(Op::Chmod("/d/f", 0o600))));
        assert!(differs(&base, &with(Op::Chown("/d", 1, 1))));
        assert!(differs(
            &base,
            &with(Op::File("/d/f", b"y".to_vec(), 0o644))
        ));
        assert!(differs(&base, &with(Op::RemoveAll("/l"))));
        assert!(differs(&base, &with(Op::File("/extra", vec![], 0o644))));
        assert!(differs(&base, &with(Op::Link("/d/f", "/d/g"))));
        let mut relinked = base.clone();
        relinked[2] = Op::Symlink("/l", "/d/f");
        assert!(differs(&base, &relinked));
        let copies = with(Op::File("/d/g", b"x".to_vec(), 0o644));
        assert!(differs(&copies, &with(Op::Link("/d/f", "/d/g"))));
    }
}
