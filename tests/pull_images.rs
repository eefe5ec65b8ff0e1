//! `strata pull` of images built byte by byte (`common::oci`) and pushed to a real
//! docker-registry: layer formats against GNU tar's extraction, whiteouts, multi-platform
//! indexes, Docker media types, registry auth (with a canary password), mirrors from
//! `hosts.toml`, a pull interrupted by `kill -9` and resumed, concurrent pulls, and hostile
//! images (layers, blobs and documents).

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::oci::{self, Built, Compression, Image, Layer, Registry, Tar};
use common::{Daemon, harness, stderr, stdout};

// ---- Harness --------------------------------------------------------------------------

fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

/// Stops the registry and unmounts everything under the work dir.
struct Stop(PathBuf);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}/tests/harness/lib.sh; stop_all {}",
                manifest_dir(),
                self.0.display()
            ))
            .output();
    }
}

/// A work dir with a docker-registry and a daemon whose `[registry]` settings point into
/// it (`certs.d/` and `docker-config.json`). Dropped in field order: the daemon, then the
/// registry and mounts, then the directory.
struct Env {
    d: Daemon,
    reg: Registry,
    config: PathBuf,
    _stop: Stop,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(prefix: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .unwrap();
        let wd = dir.path().to_owned();
        let stop = Stop(wd.clone());
        std::fs::create_dir(wd.join("certs.d")).unwrap();
        let config = wd.join("strata.toml");
        std::fs::write(
            &config,
            format!(
                "[registry]\nhosts_dir = \"{0}/certs.d\"\ndocker_config = \"{0}/docker-config.json\"\n",
                wd.display()
            ),
        )
        .unwrap();
        let hostport = harness(&[], &["start_registry", wd.to_str().unwrap()]);
        let reg = Registry::new(&hostport, &wd.join("registry-data"));
        let d = Daemon::start(&wd, &[("STRATA_CONFIG", config.to_str().unwrap())]);
        Env {
            d,
            reg,
            config,
            _stop: stop,
            dir,
        }
    }

    fn wd(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the daemon (if running) and starts it again on the same root.
    fn restart_daemon(&mut self) {
        self.d.kill9();
        let cfg = self.config.to_str().unwrap().to_owned();
        self.d.restart(&[("STRATA_CONFIG", &cfg)]);
    }

    /// `strata pull --plain-http ARGS...`.
    fn pull(&self, args: &[&str]) -> Output {
        let mut a = vec!["pull", "--plain-http"];
        a.extend_from_slice(args);
        self.d.cli(&a)
    }

    /// Pulls and returns the chainID it unpacked as.
    fn pull_ok(&self, args: &[&str]) -> String {
        let out = self.pull(args);
        assert!(
            out.status.success(),
            "pull {args:?}: {}\n{}",
            stderr(&out),
            stdout(&out)
        );
        chain_of(&stdout(&out))
    }

    fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.reg.hostport)
    }

    /// Pushes `img` as `repo:tag`; returns the full reference.
    fn push(&self, repo_tag: &str, img: &Built) -> String {
        let (repo, tag) = repo_tag.split_once(':').unwrap();
        self.reg.push_image(repo, tag, img);
        self.image(repo_tag)
    }
}

fn chain_of(out: &str) -> String {
    out.lines()
        .find_map(|l| l.split("unpacked as ").nth(1))
        .unwrap_or_else(|| panic!("no chainID in {out}"))
        .trim()
        .to_owned()
}

/// (key, kind) of every snapshot in `sn`.
fn snapshots(d: &Daemon, sn: &str) -> Vec<(String, String)> {
    let out = d.cli(&["snapshots", "--snapshotter", sn, "ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), f.last()?.to_string()))
        })
        .collect()
}

fn lines(o: &Output) -> Vec<String> {
    let mut v: Vec<String> = stdout(o).lines().map(str::to_owned).collect();
    v.sort();
    v
}

/// A read-only view of `chain` mounted at `target`, unmounted and removed on drop.
struct View<'a> {
    d: &'a Daemon,
    sn: String,
    key: String,
    target: PathBuf,
    /// overlayfs: the lower directories, top layer first.
    lowers: Vec<PathBuf>,
}

impl<'a> View<'a> {
    fn new(d: &'a Daemon, sn: &str, chain: &str, target: &Path) -> View<'a> {
        std::fs::create_dir_all(target).unwrap();
        let key = format!("view-{}-{}", sn, rand::random::<u32>());
        let out = d.cli(&[
            "snapshots",
            "--snapshotter",
            sn,
            "view",
            "--target",
            target.to_str().unwrap(),
            &key,
            chain,
        ]);
        assert!(out.status.success(), "view: {}", stderr(&out));
        let mut lowers = Vec::new();
        for line in stdout(&out).lines() {
            // mount -t TYPE SOURCE TARGET -o OPTIONS
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() == 7 && f[0] == "mount", "{line}");
            for o in f[6].split(',') {
                if let Some(l) = o.strip_prefix("lowerdir=") {
                    lowers.extend(l.split(':').map(PathBuf::from));
                }
            }
            let st = Command::new("mount").args(&f[1..]).output().unwrap();
            assert!(st.status.success(), "{line}: {}", stderr(&st));
        }
        View {
            d,
            sn: sn.into(),
            key,
            target: target.to_owned(),
            lowers,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.target.join(p)
    }
}

impl Drop for View<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.target).output();
        let _ = self
            .d
            .cli(&["snapshots", "--snapshotter", &self.sn, "rm", &self.key]);
    }
}

// ---- Trees ----------------------------------------------------------------------------

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Every xattr of `p` (not following a symlink).
fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = cpath(p);
    let mut names = vec![0u8; 65536];
    // SAFETY: buffer and length match; c is a valid C string.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "llistxattr {}", p.display());
    let mut out = BTreeMap::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        // SAFETY: as above.
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(m >= 0, "lgetxattr {}", p.display());
        val.truncate(m as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), val);
    }
    out
}

/// What is compared of one tree entry.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    mtime: Option<i64>,
    content: Option<String>,
    link: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// Every entry under `root` (the root excluded), and the hard-link groups.
fn scan(root: &Path) -> (BTreeMap<PathBuf, Node>, Vec<Vec<PathBuf>>) {
    let mut nodes = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_owned();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(p.clone());
                "dir"
            } else if ft.is_file() {
                "file"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_char_device() {
                "char"
            } else if ft.is_block_device() {
                "block"
            } else {
                "other"
            };
            if !ft.is_dir() && m.nlink() > 1 {
                inodes.entry(m.ino()).or_default().push(rel.clone());
            }
            nodes.insert(
                rel,
                Node {
                    kind,
                    mode: if ft.is_symlink() {
                        0
                    } else {
                        m.mode() & 0o7777
                    },
                    uid: m.uid(),
                    gid: m.gid(),
                    rdev: m.rdev(),
                    // Directory times are not compared: overlayfs shows the top layer's.
                    mtime: (!ft.is_dir()).then(|| m.mtime()),
                    content: ft
                        .is_file()
                        .then(|| oci::sha256(&std::fs::read(&p).unwrap())),
                    link: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                    xattrs: xattrs(&p),
                },
            );
        }
    }
    let mut groups: Vec<Vec<PathBuf>> = inodes
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .filter(|v| v.len() > 1)
        .collect();
    groups.sort();
    (nodes, groups)
}

fn diff_trees(
    what: &str,
    want: &(BTreeMap<PathBuf, Node>, Vec<Vec<PathBuf>>),
    got: &(BTreeMap<PathBuf, Node>, Vec<Vec<PathBuf>>),
) {
    let mut diffs = Vec::new();
    for k in want.0.keys().chain(got.0.keys()) {
        let (a, b) = (want.0.get(k), got.0.get(k));
        if a != b
            && !diffs
                .iter()
                .any(|d: &String| d.starts_with(&format!("{k:?}:")))
        {
            diffs.push(format!("{k:?}:\n  tar:    {a:?}\n  strata: {b:?}"));
        }
    }
    if want.1 != got.1 {
        diffs.push(format!(
            "hard links:\n  tar:    {:?}\n  strata: {:?}",
            want.1, got.1
        ));
    }
    assert!(
        diffs.is_empty(),
        "{what} differs from GNU tar:\n{}",
        diffs.join("\n")
    );
}

/// GNU tar's extraction of `tars` applied in order into `dir`.
fn gnu_tar_extract(tars: &[&[u8]], dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, t) in tars.iter().enumerate() {
        let f = dir.with_extension(format!("layer{i}.tar"));
        std::fs::write(&f, t).unwrap();
        let out = Command::new("tar")
            .args([
                "--xattrs",
                "--xattrs-include=*",
                "--same-owner",
                "--numeric-owner",
                "-xpf",
            ])
            .arg(&f)
            .arg("-C")
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "tar: {}", stderr(&out));
    }
}

// ---- Layer contents -------------------------------------------------------------------

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::fill(&mut v[..]);
    v
}

/// Three layers exercising every entry type, owners, modes, times, xattrs and links.
fn format_layers() -> Vec<Vec<u8>> {
    let long_name = format!("long/{}", "n".repeat(140));
    let mut l1 = Tar::new();
    l1.mtime(1_500_000_000)
        .dir("etc")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .symlink("etc/abs", "/etc/passwd")
        .dir("bin")
        .file_mode("bin/tool", b"#!/bin/sh\necho tool\n", 0o4755)
        .owner(0, 50)
        .file_mode("bin/sgid", b"sgid", 0o2711)
        .owner(1000, 1000)
        .dir_mode("data", 0o750)
        .owner(1000, 2000)
        .mtime(1_234_567_890)
        .file_mode("data/a.txt", b"hard-linked content\n", 0o640)
        .hardlink("data/a-link", "data/a.txt")
        .mtime(1_500_000_000)
        .symlink("data/sym", "a.txt")
        .pax(&[("SCHILY.xattr.user.strata", b"hello")])
        .file("data/x.txt", b"with an xattr\n")
        .owner(0, 0)
        .dir("dev")
        .owner(5, 5)
        .fifo("dev/fifo", 0o620)
        .owner(0, 0)
        .device(b'3', "dev/null", 1, 3)
        .owner(65534, 65534)
        .dir("odd")
        .file("odd/nobody", b"nobody\n")
        .owner(123_456, 654_321)
        .file("odd/big-ids", b"big ids\n")
        .owner(0, 0)
        .dir("long")
        .file(&long_name, b"a name longer than 100 bytes\n");
    let l1 = l1.finish();

    let mut l2 = Tar::new();
    l2.mtime(1_600_000_000)
        .dir("etc")
        .file(
            "etc/passwd",
            b"root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home:/bin/sh\n",
        )
        .dir("usr")
        .dir("usr/lib")
        .file_mode("usr/lib/libx.so", &random_bytes(300 << 10), 0o755)
        .hardlink("usr/lib/libx.so.1", "usr/lib/libx.so")
        .owner(1000, 1000)
        .dir_mode("data", 0o770)
        .symlink("data/sym", "x.txt")
        .pax(&[
            ("SCHILY.xattr.user.strata", b"changed"),
            ("SCHILY.xattr.user.second", b"2"),
        ])
        .file("data/x.txt", b"replaced, two xattrs\n")
        .owner(0, 100)
        .dir_mode("shared", 0o2775)
        .owner(0, 0)
        .dir("dev")
        .device(b'4', "dev/blk", 7, 0);
    let l2 = l2.finish();

    let mut l3 = Tar::new();
    l3.mtime(1_700_000_000)
        .dir("opt")
        .dir("opt/app")
        .pax(&[("SCHILY.xattr.user.b", b"bin\x00ary\xff")])
        .file_mode("opt/app/run.sh", b"#!/bin/sh\nexec true\n", 0o755)
        .hardlink("opt/app/run2", "opt/app/run.sh")
        .owner(4242, 4242)
        .file_mode("empty.txt", b"", 0o400)
        .owner(0, 0)
        .dir("etc")
        .file("etc/hostname", b"strata\n")
        .dir_mode("bin", 0o711)
        .mtime(0)
        .file("bin/epoch", b"mtime 0\n");
    let l3 = l3.finish();
    vec![l1, l2, l3]
}

/// A lower layer, and an upper one deleting a file and a directory and making a directory
/// opaque.
fn whiteout_layers() -> (Vec<u8>, Vec<u8>) {
    let l1 = Tar::new()
        .dir("a")
        .file("a/gone.txt", b"deleted above")
        .file("a/keep.txt", b"kept")
        .dir("opq")
        .file("opq/old1", b"hidden by the opaque dir")
        .dir("opq/sub")
        .file("opq/sub/old2", b"hidden too")
        .dir("gonedir")
        .file("gonedir/f", b"whole dir deleted")
        .finish();
    let l2 = Tar::new()
        .dir("a")
        .file("a/.wh.gone.txt", b"")
        .dir("opq")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new", b"new in the opaque dir")
        .file(".wh.gonedir", b"")
        .finish();
    (l1, l2)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---- 1. Formats -----------------------------------------------------------------------

#[test]
fn layer_formats_match_gnu_tar_in_overlayfs_and_native() {
    let env = Env::new("spi-fmt");
    let tars = format_layers();
    let img = Image::new(vec![
        Layer::new(tars[0].clone(), Compression::Gzip),
        Layer::new(tars[1].clone(), Compression::Zstd),
        Layer::new(tars[2].clone(), Compression::None),
    ])
    .build();
    let image = env.push("strata/formats:1", &img);

    let reference = env.wd().join("gnu-tar");
    let refs: Vec<&[u8]> = tars.iter().map(Vec::as_slice).collect();
    gnu_tar_extract(&refs, &reference);
    let want = scan(&reference);
    assert!(want.0.len() > 25, "{:?}", want.0.keys());

    let mut chains = Vec::new();
    for sn in ["overlayfs", "native"] {
        let chain = env.pull_ok(&["--snapshotter", sn, &image]);
        chains.push(chain.clone());
        let view = View::new(&env.d, sn, &chain, &env.wd().join(format!("view-{sn}")));
        let got = scan(&view.target);
        diff_trees(sn, &want, &got);
        // Spot checks, in case GNU tar and strata agree on something wrong.
        let m = std::fs::metadata(view.path("bin/tool")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o4755);
        let dev = std::fs::symlink_metadata(view.path("dev/null")).unwrap();
        assert!(dev.file_type().is_char_device() && dev.rdev() == libc::makedev(1, 3));
        assert_eq!(
            xattrs(&view.path("data/x.txt")).get("user.strata").unwrap(),
            b"changed"
        );
        let a = std::fs::metadata(view.path("data/a.txt")).unwrap();
        let b = std::fs::metadata(view.path("data/a-link")).unwrap();
        assert_eq!(
            (a.ino(), a.nlink(), a.uid(), a.gid()),
            (b.ino(), 2, 1000, 2000)
        );
        assert_eq!(
            std::fs::read_link(view.path("data/sym")).unwrap(),
            Path::new("x.txt")
        );
    }
    assert_eq!(chains[0], chains[1], "one chainID whatever the backend");

    // Whiteouts and an opaque directory.
    let (w1, w2) = whiteout_layers();
    let img = Image::new(vec![
        Layer::new(w1, Compression::Gzip),
        Layer::new(w2, Compression::Gzip),
    ])
    .build();
    let image = env.push("strata/whiteouts:1", &img);
    for sn in ["overlayfs", "native"] {
        let chain = env.pull_ok(&["--snapshotter", sn, &image]);
        let view = View::new(&env.d, sn, &chain, &env.wd().join(format!("wh-{sn}")));
        assert_eq!(names(&view.target), ["a", "opq"], "{sn}");
        assert_eq!(names(&view.path("a")), ["keep.txt"], "{sn}");
        assert_eq!(names(&view.path("opq")), ["new"], "{sn}");
        if sn == "overlayfs" {
            // The top layer's own directory holds overlay whiteouts and the opaque mark.
            let top = &view.lowers[0];
            for w in ["a/gone.txt", "gonedir"] {
                let m = std::fs::symlink_metadata(top.join(w)).unwrap();
                assert!(m.file_type().is_char_device() && m.rdev() == 0, "{w}");
            }
            assert_eq!(
                xattrs(&top.join("opq"))
                    .get("trusted.overlay.opaque")
                    .unwrap(),
                b"y"
            );
            assert!(!top.join("opq/.wh..wh..opq").exists());
        }
    }
}

// ---- 2. Multi-platform ----------------------------------------------------------------

fn arch_image(arch: &str, docker: bool) -> Built {
    let tar = Tar::new()
        .file("arch.txt", format!("{arch}\n").as_bytes())
        .file(&format!("only-{arch}"), b"")
        .finish();
    let img = Image::new(vec![Layer::new(tar, Compression::Gzip)]).arch(arch, None);
    if docker { img.docker() } else { img }.build()
}

#[test]
fn multi_platform_index_picks_the_platform() {
    let env = Env::new("spi-plat");
    let host = oci::host_arch();
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    let imgs = [arch_image(&host, false), arch_image(other, false)];
    for img in &imgs {
        env.reg.push_blob("strata/multi", &img.config);
        env.reg.push_blob("strata/multi", &img.blobs[0].1);
        env.reg.push_manifest(
            "strata/multi",
            &img.manifest_digest,
            img.manifest_type,
            &img.manifest,
        );
    }
    let (index, mt) = oci::index(&[imgs[0].descriptor(), imgs[1].descriptor()], false);
    let index_digest = env.reg.push_manifest("strata/multi", "1", mt, &index);
    let image = env.image("strata/multi:1");

    // A platform the index does not have: a clear error, and nothing is kept.
    let out = env.pull(&["--platform", "linux/s390x", &image]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("linux/s390x") && err.contains("no manifest for platform"),
        "{err}"
    );
    assert!(
        err.contains(&format!("linux/{host}")),
        "lists what it has: {err}"
    );
    assert!(
        stdout(&env.d.cli(&["images", "ls", "-q"]))
            .trim()
            .is_empty()
    );
    assert!(snapshots(&env.d, "overlayfs").is_empty());
    assert!(
        stdout(&env.d.cli(&["content", "ls", "-q"]))
            .trim()
            .is_empty(),
        "no blob committed"
    );

    // Default: this host's platform.
    for (i, platform) in [(0, String::new()), (1, format!("linux/{other}"))] {
        let mut args = vec![];
        if !platform.is_empty() {
            args.extend(["--platform", platform.as_str()]);
        }
        args.push(&image);
        let out = env.pull(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains(&format!("pulled {index_digest}")), "{text}");
        let chain = chain_of(&text);
        assert_eq!(
            chain, imgs[i].diff_ids[0],
            "one layer: the chainID is its diff_id"
        );
        let view = View::new(&env.d, "overlayfs", &chain, &env.wd().join(format!("v{i}")));
        let arch = if i == 0 { &host } else { other };
        assert_eq!(
            std::fs::read_to_string(view.path("arch.txt")).unwrap(),
            format!("{arch}\n")
        );
        assert!(view.path(&format!("only-{arch}")).exists());
        let blobs = stdout(&env.d.cli(&["content", "ls", "-q"]));
        assert!(blobs.contains(&imgs[i].manifest_digest), "{blobs}");
    }
    let inspect = stdout(&env.d.cli(&["images", "inspect", &image]));
    assert!(inspect.contains(&index_digest), "{inspect}");
}

// ---- 3. Docker media types ------------------------------------------------------------

#[test]
fn docker_media_types_pull() {
    let env = Env::new("spi-dock");
    let host = oci::host_arch();
    let img = arch_image(&host, true);
    assert!(String::from_utf8_lossy(&img.manifest).contains(oci::DOCKER_LAYER_GZIP));
    let image = env.push("strata/docker:1", &img);
    let chain = env.pull_ok(&[&image]);
    let view = View::new(&env.d, "overlayfs", &chain, &env.wd().join("v"));
    assert_eq!(
        std::fs::read_to_string(view.path("arch.txt")).unwrap(),
        format!("{host}\n")
    );
    drop(view);
    let inspect = stdout(&env.d.cli(&["images", "inspect", &image]));
    assert!(inspect.contains(oci::DOCKER_MANIFEST), "{inspect}");

    // A Docker manifest list of it (and another platform).
    let other = arch_image("ppc64le", true);
    env.reg.push_blob("strata/docker", &other.config);
    env.reg.push_blob("strata/docker", &other.blobs[0].1);
    env.reg.push_manifest(
        "strata/docker",
        &other.manifest_digest,
        other.manifest_type,
        &other.manifest,
    );
    let (list, mt) = oci::index(&[other.descriptor(), img.descriptor()], true);
    let list_digest = env.reg.push_manifest("strata/docker", "list", mt, &list);
    let out = env.pull(&[&env.image("strata/docker:list")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("pulled {list_digest}")));
    assert_eq!(chain_of(&stdout(&out)), chain);
}

// ---- 4. Auth --------------------------------------------------------------------------

/// A docker-registry with htpasswd auth over `data` (killed on drop).
struct AuthRegistry {
    child: std::process::Child,
    hostport: String,
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_htpasswd_registry(wd: &Path, user: &str, pass: &str) -> AuthRegistry {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, pass])
        .output()
        .expect("htpasswd (apache2-utils)");
    assert!(out.status.success());
    std::fs::write(wd.join("htpasswd"), &out.stdout).unwrap();
    let cfg = format!(
        "version: 0.1\nlog:\n  level: debug\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {wd}/registry-data\nhttp:\n  addr: 127.0.0.1:0\n  secret: strata-auth-test\nauth:\n  htpasswd:\n    realm: strata-test\n    path: {wd}/htpasswd\n",
        wd = wd.display()
    );
    std::fs::write(wd.join("auth-registry.yml"), cfg).unwrap();
    let log = wd.join("auth-registry.log");
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(wd.join("auth-registry.yml"))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let mut reg = AuthRegistry {
        child,
        hostport: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(i) = text.find("listening on 127.0.0.1:") {
            reg.hostport = text[i + "listening on ".len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            return reg;
        }
        assert!(Instant::now() < deadline, "auth registry: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file()
                && std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn registry_auth_user_flag_and_docker_config_never_leak_the_password() {
    let mut env = Env::new("spi-auth");
    let password = format!("canary-S3cr3t-{:016x}", rand::random::<u64>());
    let wrong = format!("canary-Wr0ng-{:016x}", rand::random::<u64>());
    let mut imgs = Vec::new();
    for n in 1..=3 {
        let tar = Tar::new()
            .file("private.txt", format!("private {n}\n").as_bytes())
            .finish();
        let img = Image::new(vec![Layer::new(tar, Compression::Gzip)]).build();
        env.push(&format!("strata/private:{n}"), &img);
        imgs.push(img);
    }
    harness(&[], &["stop_registry", env.wd().to_str().unwrap()]);
    let auth = start_htpasswd_registry(env.wd(), "alice", &password);
    let image = |n: u32| format!("{}/strata/private:{n}", auth.hostport);
    let mut outputs: Vec<Output> = Vec::new();

    // Anonymous: a clear unauthenticated error.
    let out = env.pull(&[&image(1)]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Unauthenticated") && err.contains("no credentials"),
        "{err}"
    );
    outputs.push(out);

    // A wrong password: unauthenticated, the user named, the password nowhere.
    let out = env.pull(&["--user", &format!("alice:{wrong}"), &image(1)]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Unauthenticated") && err.contains("alice"),
        "{err}"
    );
    outputs.push(out);
    assert!(
        stdout(&env.d.cli(&["images", "ls", "-q"]))
            .trim()
            .is_empty()
    );

    // --user, and STRATA_REGISTRY_USER.
    let out = env.pull(&["--user", &format!("alice:{password}"), &image(1)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("pulled {}", imgs[0].manifest_digest)));
    outputs.push(out);
    let out = Command::new(common::BIN)
        .arg("--address")
        .arg(&env.d.sock)
        .args(["pull", &image(2)])
        .env("STRATA_REGISTRY_USER", format!("alice:{password}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    outputs.push(out);

    // [registry] docker_config, read at each pull.
    std::fs::write(
        env.wd().join("docker-config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            auth.hostport,
            oci::base64(format!("alice:{password}").as_bytes())
        ),
    )
    .unwrap();
    let out = env.pull(&[&image(3)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("pulled {}", imgs[2].manifest_digest)));
    outputs.push(out);
    // ...and a wrong one there fails the same way.
    std::fs::write(
        env.wd().join("docker-config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"username":"alice","password":"{wrong}"}}}}}}"#,
            auth.hostport
        ),
    )
    .unwrap();
    let out = env.pull(&[&image(3)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Unauthenticated"), "{}", stderr(&out));
    outputs.push(out);
    assert_eq!(
        lines(&env.d.cli(&["images", "ls", "-q"])),
        [image(1), image(2), image(3)]
    );

    // The canary is in no CLI output, daemon log (STRATA_LOG=debug), or daemon file, even
    // after a restart.
    env.restart_daemon();
    for secret in [&password, &wrong] {
        for o in &outputs {
            assert!(
                !stdout(o).contains(secret.as_str()),
                "stdout: {}",
                stdout(o)
            );
            assert!(
                !stderr(o).contains(secret.as_str()),
                "stderr: {}",
                stderr(o)
            );
        }
        assert!(env.d.logs().contains("pull"), "debug log: {}", env.d.logs());
        assert!(
            !env.d.logs().contains(secret.as_str()),
            "canary in the daemon log"
        );
        let leaked = files_containing(&env.d.root, secret.as_bytes());
        assert!(leaked.is_empty(), "canary in {leaked:?}");
        for f in std::fs::read_dir(env.wd()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with("daemon-") {
                let text = std::fs::read(f.path()).unwrap();
                assert!(!text.windows(secret.len()).any(|w| w == secret.as_bytes()));
            }
        }
    }
    drop(auth);
}

// ---- 5. Mirrors -----------------------------------------------------------------------

#[test]
fn hosts_toml_mirror_serves_a_registry_that_does_not_exist() {
    let env = Env::new("spi-mirror");
    let tar = Tar::new()
        .file("mirrored.txt", b"via the mirror\n")
        .finish();
    let img = Image::new(vec![Layer::new(tar, Compression::Zstd)]).build();
    env.push("strata/mirrored:1", &img);
    env.push("library/strata-mirror-test:1", &img);
    for (registry, server) in [
        ("mirror.invalid:5000", "https://mirror.invalid:5000"),
        ("docker.io", "https://registry-1.docker.io"),
    ] {
        let dir = env.wd().join("certs.d").join(registry);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("hosts.toml"),
            format!(
                "server = \"{server}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                env.reg.hostport
            ),
        )
        .unwrap();
    }
    for image in [
        "mirror.invalid:5000/strata/mirrored:1",
        "docker.io/library/strata-mirror-test:1",
    ] {
        // No --plain-http: the mirror's own URL says http.
        let out = env.d.cli(&["pull", image]);
        assert!(out.status.success(), "{image}: {}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!("pulled {}", img.manifest_digest)),
            "{}",
            stdout(&out)
        );
        let chain = chain_of(&stdout(&out));
        let view = View::new(&env.d, "overlayfs", &chain, &env.wd().join("v"));
        assert_eq!(
            std::fs::read(view.path("mirrored.txt")).unwrap(),
            b"via the mirror\n"
        );
    }
    let images = lines(&env.d.cli(&["images", "ls", "-q"]));
    assert_eq!(
        images,
        [
            "docker.io/library/strata-mirror-test:1",
            "mirror.invalid:5000/strata/mirrored:1"
        ]
    );
    // The requests really went to the local registry.
    let log = std::fs::read_to_string(env.wd().join("registry.log")).unwrap();
    assert!(
        log.contains("/v2/library/strata-mirror-test/manifests/1"),
        "{log}"
    );
    // Without a hosts.toml the same kind of name does not resolve.
    let out = env
        .d
        .cli(&["pull", "nomirror.invalid:5000/strata/mirrored:1"]);
    assert!(!out.status.success());
}

// ---- 6. Interrupted pull --------------------------------------------------------------

/// A TCP proxy in front of the registry: counts the bytes it sends back, keeps the
/// requests' header lines, and sends at `rate` bytes/s (0 = as fast as it can) once more
/// than `slow_after` bytes went through.
struct Proxy {
    hostport: String,
    sent: Arc<AtomicU64>,
    rate: Arc<AtomicU64>,
    slow_after: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let hostport = l.local_addr().unwrap().to_string();
        let p = Proxy {
            hostport,
            sent: Arc::default(),
            rate: Arc::default(),
            slow_after: Arc::default(),
            requests: Arc::default(),
            stop: Arc::default(),
        };
        let (sent, rate, slow_after, requests, stop) = (
            p.sent.clone(),
            p.rate.clone(),
            p.slow_after.clone(),
            p.requests.clone(),
            p.stop.clone(),
        );
        let upstream = upstream.to_owned();
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (client, _) = match l.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let server = TcpStream::connect(&upstream).unwrap();
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let requests = requests.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 << 10];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]);
                        let mut r = requests.lock().unwrap();
                        r.extend(text.lines().map(str::to_owned));
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                let (sent, rate, slow_after, stop) =
                    (sent.clone(), rate.clone(), slow_after.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let slow =
                            sent.load(Ordering::Relaxed) >= slow_after.load(Ordering::Relaxed);
                        let r = rate.load(Ordering::Relaxed);
                        let chunk = if slow && r > 0 {
                            (r as usize / 20).clamp(1024, buf.len())
                        } else {
                            buf.len()
                        };
                        let n = match s_in.read(&mut buf[..chunk]) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if stop.load(Ordering::Relaxed) || c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent.fetch_add(n as u64, Ordering::Relaxed);
                        if slow && r > 0 {
                            std::thread::sleep(Duration::from_secs_f64(n as f64 / r as f64));
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        p
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The offset of the durable checkpoint of any ingest under `root`.
fn checkpointed(root: &Path) -> u64 {
    let mut best = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "checkpoint") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                if let Some(n) = text.split_whitespace().next().and_then(|n| n.parse().ok()) {
                    best = best.max(n);
                }
            }
        }
    }
    best
}

#[test]
fn pull_killed_mid_fetch_resumes_without_refetching() {
    let mut env = Env::new("spi-resume");
    // The content store checkpoints an ingest every 16 MiB (StoreOptions'
    // checkpoint_interval) and trusts nothing past the last checkpoint after a crash, so
    // a resume can only be seen on a blob larger than that. An uncompressed layer of
    // zeros keeps the test cheap.
    const CHECKPOINT: u64 = 16 << 20;
    const BIG: usize = 24 << 20;
    let mut t = Tar::new();
    t.file("big.bin", &vec![0u8; BIG]);
    t.file("small.txt", b"after the big file\n");
    let tar = t.finish();
    let img = Image::new(vec![Layer::new(tar, Compression::None)]).build();
    let (layer, blob_len) = (img.blobs[0].0.clone(), img.blobs[0].1.len() as u64);
    env.push("strata/big:1", &img);
    let proxy = Proxy::start(&env.reg.hostport);
    // Full speed up to just past the first checkpoint, then 1 MiB/s.
    proxy
        .slow_after
        .store(CHECKPOINT + (2 << 20), Ordering::Relaxed);
    proxy.rate.store(1 << 20, Ordering::Relaxed);
    let image = format!("{}/strata/big:1", proxy.hostport);

    let first = Command::new(common::BIN)
        .arg("--address")
        .arg(&env.d.sock)
        .args(["pull", &image])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut cp;
    loop {
        cp = checkpointed(&env.d.root);
        if cp >= CHECKPOINT {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint; proxy sent {}",
            proxy.sent.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let at_kill = proxy.sent.load(Ordering::Relaxed);
    env.d.kill9();
    assert!(
        at_kill < blob_len,
        "the fetch finished before the kill ({at_kill} of {blob_len})"
    );
    let out = first.wait_with_output().unwrap();
    assert!(!out.status.success(), "the interrupted pull failed");

    env.restart_daemon();
    proxy.rate.store(0, Ordering::Relaxed);
    proxy.sent.store(0, Ordering::Relaxed);
    proxy.requests.lock().unwrap().clear();
    let out = env.d.cli(&["pull", &image]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("pulled {}", img.manifest_digest)));
    let again = proxy.sent.load(Ordering::Relaxed);
    assert!(
        again < blob_len - cp + (64 << 10),
        "re-pull fetched {again} bytes of a {blob_len}-byte blob"
    );
    let requests = proxy.requests.lock().unwrap().clone();
    let ranges: Vec<&String> = requests
        .iter()
        .filter(|l| l.to_ascii_lowercase().starts_with("range:"))
        .collect();
    // The blob is asked for from the checkpoint on, once.
    let want = format!("bytes={cp}-{}", blob_len - 1);
    assert!(
        ranges.len() == 1 && ranges[0].trim_end().ends_with(&want),
        "want {want}: {ranges:?}"
    );
    assert!(
        requests
            .iter()
            .any(|l| l.contains(&format!("/blobs/{layer}")))
    );
    let chain = chain_of(&stdout(&out));
    let view = View::new(&env.d, "overlayfs", &chain, &env.wd().join("v"));
    assert_eq!(
        std::fs::metadata(view.path("big.bin")).unwrap().len(),
        BIG as u64
    );
    assert_eq!(
        std::fs::read(view.path("small.txt")).unwrap(),
        b"after the big file\n"
    );
}

// ---- 7. Concurrent pulls --------------------------------------------------------------

#[test]
fn concurrent_pull_processes_share_one_download() {
    let env = Env::new("spi-conc");
    let layers: Vec<Layer> = (0..2)
        .map(|i| {
            let tar = Tar::new()
                .file(&format!("part{i}.bin"), &random_bytes(3 << 20))
                .finish();
            Layer::new(tar, Compression::Gzip)
        })
        .collect();
    let img = Image::new(layers).build();
    env.push("strata/conc:1", &img);
    let proxy = Proxy::start(&env.reg.hostport);
    proxy.rate.store(4 << 20, Ordering::Relaxed);
    let image = format!("{}/strata/conc:1", proxy.hostport);
    let spawn = || {
        Command::new(common::BIN)
            .arg("--address")
            .arg(&env.d.sock)
            .args(["pull", &image])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for o in [&a, &b] {
        assert!(o.status.success(), "{}", stderr(o));
    }
    assert_eq!(chain_of(&stdout(&a)), chain_of(&stdout(&b)));
    let total: u64 = img.blobs.iter().map(|(_, b)| b.len() as u64).sum();
    let sent = proxy.sent.load(Ordering::Relaxed);
    assert!(
        sent < total + total / 4,
        "{sent} bytes sent for {total} bytes of layers"
    );
    let blob_gets = proxy
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|l| {
            l.starts_with("GET ") && l.contains("/blobs/sha256:") && !l.contains(&img.config_digest)
        })
        .count();
    assert_eq!(blob_gets, 2, "one GET per layer");
    // One copy of each blob on disk, no ingest left.
    for (d, _) in &img.blobs {
        let hex = &d[7..];
        let copies = files_named(&env.d.root, hex);
        assert_eq!(copies.len(), 1, "{copies:?}");
    }
    assert!(stdout(&env.d.cli(&["content", "active"])).lines().count() <= 1);
    // One committed chain, nothing active.
    let snaps = snapshots(&env.d, "overlayfs");
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert!(snaps.iter().all(|(_, k)| k == "Committed"), "{snaps:?}");
    assert_eq!(lines(&env.d.cli(&["images", "ls", "-q"])), [image]);
}

fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n.to_string_lossy() == name) {
                found.push(p.clone());
            }
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                stack.push(p);
            }
        }
    }
    found
}

/// A one-trick registry on 127.0.0.1: `/v2/` answers 200, any manifest GET answers
/// `body` as an OCI manifest, with a Content-Length if the path ends in `length`, else
/// read to the close. Returns its host:port.
fn serve_manifest(body: Vec<u8>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let hostport = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { break };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let path = line.split_whitespace().nth(1).unwrap_or("");
                let _ = if path.contains("/manifests/") {
                    let len = if path.ends_with("length") {
                        format!("Content-Length: {}\r\n", body.len())
                    } else {
                        String::new()
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\n{len}Connection: close\r\n\r\n",
                        oci::OCI_MANIFEST
                    );
                    c.write_all(head.as_bytes())
                        .and_then(|_| c.write_all(&body))
                } else {
                    c.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    )
                };
            });
        }
    });
    hostport
}

// ---- 8. Hostile images ----------------------------------------------------------------

/// The state outside the daemon's root a hostile image must not change.
struct Outside {
    sentinel: PathBuf,
    outside: PathBuf,
    escape: String,
    passwd: (u64, u64, Vec<u8>),
}

impl Outside {
    fn new(wd: &Path) -> Outside {
        let sentinel = wd.join("sentinel");
        std::fs::write(&sentinel, b"sentinel").unwrap();
        let outside = wd.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"keep").unwrap();
        let m = std::fs::metadata("/etc/passwd").unwrap();
        Outside {
            sentinel,
            outside,
            escape: format!("strata-escape-{:08x}", rand::random::<u32>()),
            passwd: (m.ino(), m.nlink(), std::fs::read("/etc/passwd").unwrap()),
        }
    }

    fn check(&self, what: &str) {
        assert_eq!(
            std::fs::read(&self.sentinel).unwrap(),
            b"sentinel",
            "{what}"
        );
        assert_eq!(names(&self.outside), ["keep"], "{what}");
        assert_eq!(
            std::fs::read(self.outside.join("keep")).unwrap(),
            b"keep",
            "{what}"
        );
        for dir in ["/tmp", "/etc", "/"] {
            assert!(
                !Path::new(dir).join(&self.escape).exists(),
                "{what}: escaped into {dir}"
            );
        }
        let m = std::fs::metadata("/etc/passwd").unwrap();
        assert_eq!(
            (m.ino(), m.nlink(), std::fs::read("/etc/passwd").unwrap()),
            self.passwd,
            "{what}: /etc/passwd"
        );
    }
}

/// What a hostile pull may leave: no new committed snapshot (unless it succeeded), no
/// active or extraction snapshot, no image record, a live daemon.
fn assert_contained(
    env: &mut Env,
    outside: &Outside,
    what: &str,
    image: &str,
    before: &BTreeMap<&str, Vec<(String, String)>>,
    succeeded: bool,
) {
    outside.check(what);
    assert!(
        env.d.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "{what}: the daemon died: {}",
        env.d.logs()
    );
    for (sn, was) in before {
        let now = snapshots(&env.d, sn);
        for (k, kind) in &now {
            assert!(kind == "Committed", "{what}: {sn} left {k} {kind}");
            assert!(!k.contains("extract"), "{what}: {sn} left {k}");
        }
        if !succeeded {
            assert_eq!(&now, was, "{what}: {sn} committed something");
        }
    }
    let images = stdout(&env.d.cli(&["images", "ls", "-q"]));
    assert_eq!(
        images.lines().any(|l| l == image),
        succeeded,
        "{what}: images {images}"
    );
}

fn all_snapshots(d: &Daemon) -> BTreeMap<&'static str, Vec<(String, String)>> {
    ["overlayfs", "native"]
        .into_iter()
        .map(|sn| (sn, snapshots(d, sn)))
        .collect()
}

/// Pulls `image` into both backends, expecting failures mentioning `want` (all of them),
/// and checks containment.
fn expect_refused(env: &mut Env, outside: &Outside, image: &str, want: &[&str]) {
    for sn in ["overlayfs", "native"] {
        let before = all_snapshots(&env.d);
        let out = env.pull(&["--snapshotter", sn, image]);
        let what = format!("{image} into {sn}");
        assert!(!out.status.success(), "{what}: pulled: {}", stdout(&out));
        let err = stderr(&out);
        eprintln!("{what}: {}", err.trim());
        for w in want {
            assert!(err.contains(w), "{what}: error lacks {w:?}: {err}");
        }
        assert_contained(env, outside, &what, image, &before, false);
    }
}

/// A one-layer image of `tar` pushed as `strata/hostile:<tag>`.
fn push_layer(env: &Env, tag: &str, tar: Vec<u8>) -> String {
    let img = Image::new(vec![Layer::new(tar, Compression::Gzip)]).build();
    env.push(&format!("strata/hostile:{tag}"), &img)
}

fn good_image(env: &Env) -> String {
    let tar = Tar::new().file("good.txt", b"good\n").finish();
    let img = Image::new(vec![Layer::new(tar, Compression::Gzip)]).build();
    env.push("strata/good:1", &img)
}

fn pull_good(env: &Env, image: &str) {
    for sn in ["overlayfs", "native"] {
        let chain = env.pull_ok(&["--snapshotter", sn, image]);
        let view = View::new(&env.d, sn, &chain, &env.wd().join("good"));
        assert_eq!(std::fs::read(view.path("good.txt")).unwrap(), b"good\n");
    }
}

#[test]
fn hostile_layers_are_refused_or_contained() {
    let mut env = Env::new("spi-hl");
    let outside = Outside::new(env.wd());
    let good = good_image(&env);
    let esc = outside.escape.clone();
    let out_abs = outside.outside.to_str().unwrap().to_owned();
    let up = "../".repeat(12);

    // Path traversal, plain and through a PAX path.
    let img = push_layer(
        &env,
        "traversal",
        Tar::new().file(&format!("{up}tmp/{esc}"), b"evil").finish(),
    );
    expect_refused(
        &mut env,
        &outside,
        &img,
        &["unpack layer 0", "name contains a '..' component"],
    );
    let img = push_layer(
        &env,
        "traversal-pax",
        Tar::new()
            .pax(&[("path", format!("a/{up}{}/x", &out_abs[1..]).as_bytes())])
            .file("placeholder", b"evil")
            .finish(),
    );
    expect_refused(&mut env, &outside, &img, &["'..'"]);

    // A symlink to an absolute outside directory, then a file through it: the link
    // resolves inside the snapshot, where it dangles.
    let img = push_layer(
        &env,
        "abs-symlink",
        Tar::new()
            .symlink("evil", &out_abs)
            .file("evil/pwned", b"evil")
            .finish(),
    );
    expect_refused(
        &mut env,
        &outside,
        &img,
        &["parent \"evil\" is a dangling symlink"],
    );
    let img = push_layer(
        &env,
        "etc-symlink",
        Tar::new()
            .symlink("etc", "/etc")
            .file(&format!("etc/{esc}"), b"evil")
            .finish(),
    );
    expect_refused(
        &mut env,
        &outside,
        &img,
        &[&format!(
            "entry \"etc/{esc}\": parent directory cannot be resolved inside the root"
        )],
    );
    // A relative one climbing out.
    let img = push_layer(
        &env,
        "rel-symlink",
        Tar::new()
            .symlink("evil", &format!("{up}{}", &out_abs[1..]))
            .file("evil/pwned", b"evil")
            .finish(),
    );
    expect_refused(&mut env, &outside, &img, &["dangling symlink"]);
    // `/tmp` and `/` through symlinks: contained, the file lands inside the snapshot.
    let tar = Tar::new()
        .dir("tmp")
        .symlink("t", "/tmp")
        .file(&format!("t/{esc}"), b"inside")
        .symlink("r", "/")
        .file(&format!("r/{esc}"), b"inside too")
        .finish();
    let img = push_layer(&env, "tmp-symlink", tar);
    for sn in ["overlayfs", "native"] {
        let before = all_snapshots(&env.d);
        let chain = env.pull_ok(&["--snapshotter", sn, &img]);
        assert_contained(&mut env, &outside, &img, &img, &before, true);
        let view = View::new(&env.d, sn, &chain, &env.wd().join("hv"));
        assert_eq!(
            std::fs::read(view.path(&format!("tmp/{esc}"))).unwrap(),
            b"inside"
        );
        assert_eq!(std::fs::read(view.path(&esc)).unwrap(), b"inside too");
    }

    // Hard links: to an outside absolute path, climbing out, and to a symlink.
    let img = push_layer(
        &env,
        "hardlink-passwd",
        Tar::new().hardlink("pw", "/etc/passwd").finish(),
    );
    expect_refused(&mut env, &outside, &img, &["does not exist"]);
    let img = push_layer(
        &env,
        "hardlink-up",
        Tar::new()
            .hardlink("k", &format!("{up}{}/keep", &out_abs[1..]))
            .finish(),
    );
    expect_refused(&mut env, &outside, &img, &["'..'"]);
    let img = push_layer(
        &env,
        "hardlink-symlink",
        Tar::new()
            .symlink("s", "/etc/passwd")
            .hardlink("h", "s")
            .file("h", b"replaces the link, not /etc/passwd")
            .symlink("s2", &format!("{out_abs}/keep"))
            .hardlink("h2", "s2")
            .finish(),
    );
    for sn in ["overlayfs", "native"] {
        let before = all_snapshots(&env.d);
        let chain = env.pull_ok(&["--snapshotter", sn, &img]);
        assert_contained(&mut env, &outside, &img, &img, &before, true);
        let view = View::new(&env.d, sn, &chain, &env.wd().join("hv"));
        assert_eq!(
            std::fs::read(view.path("h")).unwrap(),
            b"replaces the link, not /etc/passwd"
        );
        assert_eq!(
            std::fs::read_link(view.path("h2")).unwrap(),
            Path::new(&format!("{out_abs}/keep"))
        );
    }

    // Whiteouts of `..` and of nothing.
    for (tag, name) in [
        ("wh-dotdot", ".wh..."),
        ("wh-sub-dotdot", "a/.wh..."),
        ("wh-dot", "a/.wh.."),
        ("wh-empty", ".wh."),
    ] {
        let img = push_layer(&env, tag, Tar::new().dir("a").file(name, b"").finish());
        let entry = format!("entry \"{name}\": whiteout names no file");
        expect_refused(&mut env, &outside, &img, &["unpack layer 0", &entry]);
    }

    // Forged overlay xattrs: dropped, the pull succeeds, the lower layer shows through.
    let l1 = Tar::new()
        .dir("d")
        .file("d/lower", b"must stay visible")
        .dir("r")
        .finish();
    let l2 = Tar::new()
        .pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")])
        .dir("d")
        .file("d/upper", b"")
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.user.overlay.opaque", b"y"),
        ])
        .dir("r")
        .finish();
    let img = Image::new(vec![
        Layer::new(l1, Compression::Gzip),
        Layer::new(l2, Compression::Gzip),
    ])
    .build();
    let img = env.push("strata/hostile:xattrs", &img);
    for sn in ["overlayfs", "native"] {
        let before = all_snapshots(&env.d);
        let chain = env.pull_ok(&["--snapshotter", sn, &img]);
        assert_contained(&mut env, &outside, &img, &img, &before, true);
        let view = View::new(&env.d, sn, &chain, &env.wd().join("hv"));
        assert_eq!(names(&view.path("d")), ["lower", "upper"], "{sn}");
        assert!(names(&view.path("r")).is_empty());
        let dirs: Vec<PathBuf> = if sn == "overlayfs" {
            vec![view.lowers[0].join("d"), view.lowers[0].join("r")]
        } else {
            vec![view.path("d"), view.path("r")]
        };
        for dir in dirs {
            let x = xattrs(&dir);
            assert!(
                !x.keys().any(|k| k.contains("overlay.")),
                "{sn}: {} has {x:?}",
                dir.display()
            );
        }
    }

    // Decompression and header bombs (the 32 GiB total-size limit is too large to hit in
    // a test; a PAX header over the 1 MiB limit and a zstd frame asking for a 2 GiB window
    // are refused before they are buffered).
    let mut t = Tar::new();
    t.pax(&[("comment", &vec![b'a'; 2 << 20])]).file("x", b"");
    let img = push_layer(&env, "pax-bomb", t.finish());
    expect_refused(
        &mut env,
        &outside,
        &img,
        &["extension header size exceeds the limit of 1048576"],
    );
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    enc.set_parameter(zstd::zstd_safe::CParameter::WindowLog(31))
        .unwrap();
    enc.write_all(&Tar::new().file("x", &random_bytes(4096)).finish())
        .unwrap();
    let mut layer = Layer::new(Vec::new(), Compression::Zstd);
    layer.tar = Tar::new().file("x", b"").finish();
    layer.blob = Some(enc.finish().unwrap());
    let img = Image::new(vec![layer]).build();
    let img = env.push("strata/hostile:zstd-window", &img);
    expect_refused(
        &mut env,
        &outside,
        &img,
        &["zstd window size exceeds the limit of 134217728"],
    );

    pull_good(&env, &good);
}

#[test]
fn hostile_blobs_and_documents_are_refused() {
    let mut env = Env::new("spi-hb");
    let outside = Outside::new(env.wd());
    let good = good_image(&env);
    let layer = |text: &str| {
        Layer::new(
            Tar::new().file("f.txt", text.as_bytes()).finish(),
            Compression::Gzip,
        )
    };

    // A config whose diff_id is not the layer's.
    let mut l = layer("diff_id lie");
    l.diff_id = Some(oci::sha256(b"something else"));
    let img = env.push("strata/bad:diffid", &Image::new(vec![l]).build());
    expect_refused(
        &mut env,
        &outside,
        &img,
        &["extracts to", "the image config says"],
    );

    // Stored blobs altered behind the registry's back: other bytes, short, long.
    for (tag, change) in [("corrupt", 0), ("short", 1), ("long", 2)] {
        let built = Image::new(vec![layer(&format!("blob {tag}"))]).build();
        let img = env.push(&format!("strata/bad:{tag}"), &built);
        let (digest, bytes) = &built.blobs[0];
        let mut altered = bytes.clone();
        match change {
            0 => {
                let n = altered.len();
                altered[n / 2] ^= 0xff;
            }
            1 => altered.truncate(altered.len() - 10),
            _ => altered.extend_from_slice(b"trailing bytes"),
        }
        env.reg.overwrite_blob("strata/bad", digest, &altered);
        let why = if change == 0 {
            "does not verify"
        } else {
            "Content-Length"
        };
        expect_refused(&mut env, &outside, &img, &["fetch layer 0", why]);
        assert!(
            !stdout(&env.d.cli(&["content", "ls", "-q"])).contains(digest.as_str()),
            "{tag}: a bad blob was committed"
        );
    }

    // Manifest descriptors that lie about the size (larger, smaller).
    for (tag, delta) in [("size-big", 100i64), ("size-small", -10)] {
        let mut l = layer(&format!("size lie {tag}"));
        let real = l.blob().len() as i64;
        l.size = Some(real + delta);
        let img = env.push(&format!("strata/bad:{tag}"), &Image::new(vec![l]).build());
        expect_refused(&mut env, &outside, &img, &["fetch layer 0", "DataLoss"]);
    }
    // A descriptor naming another (existing) blob's digest: the bytes are verified
    // against it, so the layer is that other blob, whose diff_id does not match.
    let decoy = layer("decoy");
    let decoy_digest = env.reg.push_blob("strata/bad", &decoy.blob());
    let mut l = layer("digest lie");
    l.digest = Some(decoy_digest.clone());
    l.size = Some(decoy.blob().len() as i64);
    let built = Image::new(vec![l]).build();
    env.reg.push_blob("strata/bad", &built.config);
    env.reg
        .push_manifest("strata/bad", "digest", built.manifest_type, &built.manifest);
    {
        let r = env.image("strata/bad:digest");
        expect_refused(
            &mut env,
            &outside,
            &r,
            &["extracts to", "the image config says"],
        );
    }

    // A manifest over 4 MiB. docker-registry 2.8 itself will neither take nor serve one
    // ("storage: read exceeds limit"), so a tiny HTTP server stands in for it, sending
    // the body with a Content-Length and then without one (read to the close).
    let built = Image::new(vec![layer("huge manifest")]).build();
    env.push("strata/bad:small", &built);
    let mut m: serde_json::Value = serde_json::from_slice(&built.manifest).unwrap();
    m["annotations"] = serde_json::json!({"pad": "p".repeat(5 << 20)});
    let body = serde_json::to_vec(&m).unwrap();
    let huge = serve_manifest(body);
    for tag in ["length", "close"] {
        let r = format!("{huge}/strata/bad:{tag}");
        expect_refused(
            &mut env,
            &outside,
            &r,
            &["manifest is larger than 4194304 bytes"],
        );
    }
    // An index entry claiming a manifest over 4 MiB: refused before it is fetched.
    let mut entry = built.descriptor();
    entry["size"] = serde_json::json!(5 << 20);
    let (index, mt) = oci::index(&[entry], false);
    env.reg
        .push_manifest("strata/bad", "huge-entry", mt, &index);
    {
        let r = env.image("strata/bad:huge-entry");
        expect_refused(
            &mut env,
            &outside,
            &r,
            &["is 5242880 bytes, more than the 4194304 allowed"],
        );
    }

    // A malformed digest in a layer descriptor.
    let mut m: serde_json::Value = serde_json::from_slice(&built.manifest).unwrap();
    m["layers"][0]["digest"] = serde_json::json!("sha256:../../etc");
    let body = serde_json::to_vec(&m).unwrap();
    env.reg.plant_manifest("strata/bad", "baddigest", &body);
    {
        let r = env.image("strata/bad:baddigest");
        expect_refused(&mut env, &outside, &r, &["digest has 9 hex characters"]);
    }

    // An index whose entry says "manifest" but is an index (of the good manifest).
    let (inner, inner_mt) = oci::index(&[built.descriptor()], false);
    let inner_digest = env
        .reg
        .push_manifest("strata/bad", "inner", inner_mt, &inner);
    let mut entry = built.descriptor();
    entry["digest"] = serde_json::json!(inner_digest);
    entry["size"] = serde_json::json!(inner.len());
    let (outer, outer_mt) = oci::index(&[entry], false);
    env.reg
        .push_manifest("strata/bad", "confused", outer_mt, &outer);
    {
        let r = env.image("strata/bad:confused");
        expect_refused(
            &mut env,
            &outside,
            &r,
            &["expected a manifest but the registry sent an index"],
        );
    }

    pull_good(&env, &good);
}

/// A layer that depends on the layers below it (a hard link to a lower layer's file, a
/// parent directory it does not list, a parent that is a symlink below: `lib -> usr/lib`)
/// cannot be extracted alone, as overlayfs's parallel unpack does; it is applied again
/// over its mounted parents, so every backend gives the same tree as GNU tar.
#[test]
fn overlayfs_layers_see_the_layers_below() {
    let env = Env::new("spi-lower");
    let l1 = Tar::new()
        .owner(1000, 1000)
        .dir_mode("data", 0o750)
        .file("data/a", b"a")
        .owner(0, 0)
        .file("f", b"linked across layers")
        .dir("usr")
        .dir("usr/lib")
        .symlink("lib", "usr/lib")
        .finish();
    let cases = [
        ("hardlink", Tar::new().hardlink("g", "f").finish()),
        ("implicit-parent", Tar::new().file("data/b", b"b").finish()),
        ("symlinked-parent", Tar::new().file("lib/x", b"x").finish()),
    ];
    let mut failures = Vec::new();
    for (tag, l2) in cases {
        let img = Image::new(vec![
            Layer::new(l1.clone(), Compression::Gzip),
            Layer::new(l2.clone(), Compression::Gzip),
        ])
        .build();
        let image = env.push(&format!("strata/lower:{tag}"), &img);
        let reference = env.wd().join(format!("gnu-{tag}"));
        gnu_tar_extract(&[&l1, &l2], &reference);
        let want = scan(&reference);
        for sn in ["native", "overlayfs"] {
            let out = env.pull(&["--snapshotter", sn, &image]);
            if !out.status.success() {
                failures.push(format!("{tag} {sn}: {}", stderr(&out)));
                continue;
            }
            let chain = chain_of(&stdout(&out));
            let view = View::new(&env.d, sn, &chain, &env.wd().join(format!("v-{tag}-{sn}")));
            let got = scan(&view.target);
            if got != want {
                failures.push(format!(
                    "{tag} {sn}: {:?}",
                    got.0.keys().collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
