//! Runnable test images for the lifecycle tests: a busybox image made from the host's
//! static `/bin/busybox` (with users, groups and a config that sets env, command and
//! working directory), variants of it whose `/etc/passwd` is hostile, and a Debian
//! bookworm minbase image made from the rootfs `scripts/debian-rootfs.sh` prepares.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use super::oci::{Built, Compression, Image, Layer, Tar};

/// The static busybox the test images are made of (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// The busybox applets the image links to `/bin/busybox`.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "pwd", "sleep", "env", "ls", "true", "false", "touch", "head", "wc",
    "mkdir", "rm", "kill",
];

/// The busybox image's `/etc/passwd`.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
app:x:1000:1000:app:/work:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";

/// The busybox image's `/etc/group`: `app` is also in `staff` (50).
pub const GROUP: &str = "root:x:0:\napp:x:1000:\nstaff:x:50:app\nnogroup:x:65534:\n";

/// Where `scripts/debian-rootfs.sh` puts the Debian bookworm minbase rootfs.
pub const DEBIAN_ROOTFS: &str = "/var/tmp/strata-debian/rootfs";

/// What the busybox image has at `/etc/passwd`.
pub enum Passwd {
    /// [`PASSWD`].
    Default,
    /// A regular file with these bytes.
    File(Vec<u8>),
    /// A FIFO (reading it would block forever).
    Fifo,
    /// A symlink to this target.
    Symlink(String),
}

/// The busybox layer's tar: `/bin/busybox` and its applets, `/etc/passwd` (as given),
/// `/etc/group`, `/tmp` (1777), `/work` (owned by 1000), and empty `/proc`, `/sys`, `/dev`.
pub fn busybox_tar(passwd: &Passwd) -> Vec<u8> {
    let elf = std::fs::read(BUSYBOX).unwrap_or_else(|e| {
        panic!("read {BUSYBOX}: {e} (install busybox-static: scripts/install-deps.sh)")
    });
    let mut t = Tar::new();
    t.owner(0, 0)
        .dir("bin")
        .file_mode("bin/busybox", &elf, 0o755);
    for a in APPLETS {
        t.symlink(&format!("bin/{a}"), "busybox");
    }
    t.dir("etc");
    match passwd {
        Passwd::Default => t.file("etc/passwd", PASSWD.as_bytes()),
        Passwd::File(body) => t.file("etc/passwd", body),
        Passwd::Fifo => t.fifo("etc/passwd", 0o644),
        Passwd::Symlink(target) => t.symlink("etc/passwd", target),
    };
    t.file("etc/group", GROUP.as_bytes())
        .dir_mode("tmp", 0o1777)
        .owner(1000, 1000)
        .dir("work")
        .owner(0, 0)
        .dir("root")
        .dir("proc")
        .dir("sys")
        .dir("dev");
    t.finish()
}

/// The busybox image's run config.
pub fn busybox_config() -> Value {
    json!({
        "Env": ["PATH=/bin", "FROM_IMAGE=yes"],
        "Cmd": ["/bin/sh", "-c", "echo hello from busybox"],
        "WorkingDir": "/work",
    })
}

/// The busybox image with `passwd` and run config `config`.
pub fn busybox_with(passwd: &Passwd, config: Value) -> Built {
    Image::new(vec![Layer::new(busybox_tar(passwd), Compression::Gzip)])
        .config(config)
        .build()
}

/// The busybox image.
pub fn busybox() -> Built {
    busybox_with(&Passwd::Default, busybox_config())
}

/// The Debian image: one zstd layer holding [`DEBIAN_ROOTFS`] (its `/dev` left empty, as
/// in images built by docker), tarred with GNU tar into `work` (the test's temp dir).
pub fn debian(work: &Path) -> Built {
    let rootfs = Path::new(DEBIAN_ROOTFS);
    assert!(
        rootfs.join("etc/debian_version").exists(),
        "{DEBIAN_ROOTFS} is missing: run scripts/debian-rootfs.sh (scripts/install-deps.sh does)"
    );
    let tar = work.join("debian-layer.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["--numeric-owner", "--exclude=./dev/*", "-cf"])
        .arg(&tar)
        .arg(".")
        .output()
        .expect("run GNU tar");
    assert!(
        out.status.success(),
        "tar {DEBIAN_ROOTFS}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&tar).unwrap();
    Image::new(vec![Layer::new(bytes, Compression::Zstd)])
        .config(json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["bash"],
        }))
        .build()
}

/// A busybox whose base layer is eStargz (with its TOC digest annotated) and a second,
/// ordinary gzip layer: one lazy layer and one unpacked over it.
pub fn lazy_busybox() -> (Built, String) {
    use strata_snapshotter::estargz::{TOC_DIGEST_ANNOTATION, WriteOptions, write_estargz};
    let base = busybox_tar(&Passwd::Default);
    let mut blob = Vec::new();
    let w = write_estargz(&base[..], &mut blob, &WriteOptions::default()).unwrap();
    let mut l0 = Layer::new(base, Compression::Gzip);
    l0.blob = Some(blob);
    l0.diff_id = Some(w.diff_id.to_string());
    l0.annotations = vec![(TOC_DIGEST_ANNOTATION.into(), w.toc_digest.to_string())];
    let mut t = Tar::new();
    t.dir("etc").file("etc/motd", b"lazy hello\n");
    let l1 = Layer::new(t.finish(), Compression::Gzip);
    let img = Image::new(vec![l0, l1]).config(busybox_config());
    (img.build(), w.digest.to_string())
}
