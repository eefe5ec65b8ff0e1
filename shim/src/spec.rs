//! The OCI runtime spec (runc's `config.json`) for one container, from its image config
//! and the `strata run` options.
//!
//! [`generate`] starts from containerd 1.6's `oci.WithDefaultSpec()` on Linux (the values
//! below are what containerd 1.6.20's `ctr oci spec` prints) and applies, in order:
//!
//! 1. **process**: args = image `Entrypoint` + (`RunOptions::args` if any, else image
//!    `Cmd`), as `docker run` does; env = default `PATH`, then the image's `Env`, then
//!    `RunOptions::env`, each replacing an earlier entry of the same key (`TERM=xterm` is
//!    added for a terminal unless set); cwd = `RunOptions::cwd`, else `WorkingDir`, else
//!    `/`; the user is resolved inside the rootfs by [`crate::user::resolve`];
//! 2. **identity**: hostname = container id (cut to 63 bytes), cgroup path
//!    `/strata/<namespace>/<id>`;
//! 3. **isolation** (containerd's defaults): namespaces pid, ipc, uts, mount, network
//!    (network can be the host's); capabilities bounding = effective = permitted =
//!    [`DEFAULT_CAPABILITIES`], none inheritable or ambient; all devices denied in the
//!    device cgroup (runc still allows its default set: null, zero, full, tty, random,
//!    urandom, pts); [`MASKED_PATHS`], [`READONLY_PATHS`]; `RLIMIT_NOFILE` 1024/1024;
//! 4. **mounts**: containerd's (`/proc`, `/dev`, `/dev/pts`, `/dev/shm`, `/dev/mqueue`,
//!    `/sys` ro, `/run`) plus `/sys/fs/cgroup` ro (as nerdctl and Docker add), then the
//!    bind mounts of [`RunOptions::mounts`]; the rootfs read-only on request.
//!
//! `noNewPrivileges` is [`RunOptions::no_new_privileges`], false by default. containerd's
//! bare default spec sets it true, but its front ends (the CRI plugin, nerdctl) and
//! Docker run with it false unless asked, so that setuid programs in images work; `strata
//! run` follows them.
//!
//! Image labels are never read here: an image cannot grant itself privileges, mounts or
//! namespaces, whatever its labels say.

use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use strata_proto::ident::Namespace;

use crate::image::ContainerConfig;
use crate::user;
use crate::{Error, ErrorKind, Result};

/// The runtime spec version written, as containerd 1.6 writes it.
pub const OCI_VERSION: &str = "1.0.2-dev";

/// The `PATH` a container gets when neither the image nor the options set one
/// (containerd's `defaultUnixEnv`).
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest hostname: the container id is cut to this many bytes (`HOST_NAME_MAX`).
pub const MAX_HOSTNAME_LEN: usize = 63;

/// The parent of every container's cgroup: `/strata/<namespace>/<id>`.
pub const CGROUP_PARENT: &str = "/strata";

/// containerd's `defaultUnixCaps()`, in its order.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// containerd 1.6's default `linux.maskedPaths`.
pub const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// containerd 1.6's default `linux.readonlyPaths`.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The default mounts: containerd 1.6's, then `/sys/fs/cgroup` read-only. Each is
/// `(destination, type, source, options)`.
pub const DEFAULT_MOUNTS: [(&str, &str, &str, &[&str]); 8] = [
    ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
    (
        "/dev",
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    ),
    (
        "/dev/pts",
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ],
    ),
    (
        "/dev/shm",
        "tmpfs",
        "shm",
        &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    ),
    (
        "/dev/mqueue",
        "mqueue",
        "mqueue",
        &["nosuid", "noexec", "nodev"],
    ),
    (
        "/sys",
        "sysfs",
        "sysfs",
        &["nosuid", "noexec", "nodev", "ro"],
    ),
    (
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        &["nosuid", "noexec", "nodev", "relatime", "ro"],
    ),
    (
        "/run",
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    ),
];

pub use strata_proto::ident::ContainerId;

/// A host directory or file bind-mounted into the container: `--mount src:dst[:ro|:rw]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path inside the container, without `..`, not `/`.
    pub destination: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
}

impl BindMount {
    /// A validated bind mount.
    ///
    /// # Errors
    /// `InvalidArgument` if `source` is not absolute, or `destination` is not absolute,
    /// is `/`, or has a `..` component; or either has a NUL byte.
    pub fn new(source: &Path, destination: &Path, readonly: bool) -> Result<Self> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "bind mount {} -> {}: {why}",
                source.display(),
                destination.display()
            ))
        };
        let has_nul = |p: &Path| p.as_os_str().as_encoded_bytes().contains(&0);
        if has_nul(source) || has_nul(destination) {
            return Err(bad("path has a NUL byte"));
        }
        if !source.is_absolute() {
            return Err(bad("source is not absolute"));
        }
        if !destination.is_absolute() {
            return Err(bad("destination is not absolute"));
        }
        if destination.components().any(|c| c == Component::ParentDir) {
            return Err(bad("destination has a '..' component"));
        }
        if !destination
            .components()
            .any(|c| matches!(c, Component::Normal(_)))
        {
            return Err(bad("destination is the container's root"));
        }
        Ok(BindMount {
            source: source.to_owned(),
            destination: destination.to_owned(),
            readonly,
        })
    }
}

impl FromStr for BindMount {
    type Err = Error;

    /// Parses `src:dst`, `src:dst:ro` or `src:dst:rw`.
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let readonly = match parts.get(2).copied() {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(mode) => {
                return Err(Error::invalid(format!(
                    "bind mount {s:?}: mode {mode:?} is not ro or rw"
                )));
            }
        };
        if !(2..=3).contains(&parts.len()) {
            return Err(Error::invalid(format!(
                "bind mount {s:?} is not src:dst[:ro|rw]"
            )));
        }
        BindMount::new(Path::new(parts[0]), Path::new(parts[1]), readonly)
    }
}

/// Which network namespace the container gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// A new, empty network namespace (loopback only).
    #[default]
    Private,
    /// The host's network namespace.
    Host,
}

/// What `strata run` adds to the image's config. Only these, never the image's labels,
/// shape the spec.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The container id: hostname and cgroup path.
    pub id: ContainerId,
    /// The strata namespace the container lives in: cgroup path.
    pub namespace: Namespace,
    /// Command-line arguments; non-empty replaces the image's `Cmd`.
    pub args: Vec<String>,
    /// `KEY=value` entries that replace the image's entry of the same key.
    pub env: Vec<String>,
    /// A USER value replacing the image's.
    pub user: Option<String>,
    /// An absolute working directory replacing the image's.
    pub cwd: Option<String>,
    /// Give the process a terminal (`-t`); adds `TERM=xterm` unless set.
    pub terminal: bool,
    /// Mount the rootfs read-only.
    pub readonly_rootfs: bool,
    /// The network namespace.
    pub network: Network,
    /// Extra bind mounts, mounted after the default ones in this order.
    pub mounts: Vec<BindMount>,
    /// Set `noNewPrivileges` (setuid binaries then gain nothing).
    pub no_new_privileges: bool,
}

impl RunOptions {
    /// Options that add nothing to the image's config.
    pub fn new(id: ContainerId, namespace: Namespace) -> Self {
        RunOptions {
            id,
            namespace,
            args: Vec::new(),
            env: Vec::new(),
            user: None,
            cwd: None,
            terminal: false,
            readonly_rootfs: false,
            network: Network::Private,
            mounts: Vec::new(),
            no_new_privileges: false,
        }
    }
}

/// The runtime spec for a container running `image` on the mounted `rootfs` (an absolute
/// path; `/etc/passwd` and `/etc/group` are read from it to resolve the user).
///
/// # Errors
/// `InvalidArgument` if the command line is empty or has a NUL byte, an env entry is not
/// `KEY=value`, the working directory or rootfs is not absolute, or the USER value is
/// malformed; the errors of [`user::resolve`] otherwise.
pub fn generate(image: &ContainerConfig, rootfs: &Path, opts: &RunOptions) -> Result<Spec> {
    if !rootfs.is_absolute() {
        return Err(Error::invalid(format!(
            "rootfs {} is not absolute",
            rootfs.display()
        )));
    }
    let args = command_line(image, opts)?;
    let env = environment(image, opts)?;
    let cwd = working_dir(image, opts)?;
    let user_spec = opts.user.as_deref().unwrap_or(&image.user);
    let user = user::resolve(rootfs, user_spec)?;

    let caps: oci_spec::runtime::Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
    let mut capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .map_err(internal)?;
    // The builder fills unset sets from `LinuxCapabilities::default()`, which is not empty.
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);
    let process = ProcessBuilder::default()
        .terminal(opts.terminal)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids)
                .build()
                .map_err(internal)?,
        )
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(1024u64)
                .soft(1024u64)
                .build()
                .map_err(internal)?,
        ])
        .no_new_privileges(opts.no_new_privileges)
        .build()
        .map_err(internal)?;

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if opts.network == Network::Private {
        namespaces.push(LinuxNamespaceType::Network);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(internal)?;
    let linux = LinuxBuilder::default()
        .resources(
            LinuxResourcesBuilder::default()
                .devices(vec![
                    LinuxDeviceCgroupBuilder::default()
                        .allow(false)
                        .access("rwm")
                        .build()
                        .map_err(internal)?,
                ])
                .build()
                .map_err(internal)?,
        )
        .cgroups_path(cgroup_path(opts))
        .namespaces(namespaces)
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec())
        .build()
        .map_err(internal)?;

    let mut spec = SpecBuilder::default()
        .version(OCI_VERSION)
        .root(
            RootBuilder::default()
                .path(rootfs)
                .readonly(opts.readonly_rootfs)
                .build()
                .map_err(internal)?,
        )
        .mounts(mounts(opts)?)
        .process(process)
        .hostname(hostname(&opts.id))
        .linux(linux)
        .build()
        .map_err(internal)?;
    // The builder fills unset fields from `Spec::default()`, which has an empty map here.
    spec.set_annotations(None);
    Ok(spec)
}

/// `/strata/<namespace>/<id>`.
fn cgroup_path(opts: &RunOptions) -> PathBuf {
    Path::new(CGROUP_PARENT)
        .join(opts.namespace.as_str())
        .join(opts.id.as_str())
}

fn hostname(id: &ContainerId) -> String {
    // Identifiers are ASCII, so any byte offset is a char boundary.
    let id = id.as_str();
    id[..id.len().min(MAX_HOSTNAME_LEN)].to_owned()
}

fn internal(e: oci_spec::OciSpecError) -> Error {
    Error::new(ErrorKind::Internal, "build runtime spec").with_source(e)
}

fn command_line(image: &ContainerConfig, opts: &RunOptions) -> Result<Vec<String>> {
    let tail = if opts.args.is_empty() {
        &image.cmd
    } else {
        &opts.args
    };
    let args: Vec<String> = image.entrypoint.iter().chain(tail).cloned().collect();
    match args.first() {
        None => {
            return Err(Error::invalid(
                "no command: the image has no Entrypoint or Cmd and none was given",
            ));
        }
        Some(a) if a.is_empty() => {
            return Err(Error::invalid("the command's program name is empty"));
        }
        Some(_) => {}
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err(Error::invalid("a command argument has a NUL byte"));
    }
    Ok(args)
}

fn environment(image: &ContainerConfig, opts: &RunOptions) -> Result<Vec<String>> {
    let mut env: Vec<String> = Vec::new();
    for (from, entries) in [("image config Env", &image.env), ("--env", &opts.env)] {
        for entry in entries {
            set_env(&mut env, from, entry)?;
        }
    }
    if !env.iter().any(|e| env_key(e) == "PATH") {
        env.insert(0, DEFAULT_PATH_ENV.to_owned());
    }
    if opts.terminal && !env.iter().any(|e| env_key(e) == "TERM") {
        env.push("TERM=xterm".to_owned());
    }
    Ok(env)
}

/// Replaces the entry with `entry`'s key, or appends it.
fn set_env(env: &mut Vec<String>, from: &str, entry: &str) -> Result<()> {
    let key = match entry.split_once('=') {
        Some((k, _)) if !k.is_empty() => k,
        _ => {
            return Err(Error::invalid(format!(
                "{from} entry {:?} is not KEY=value",
                truncate(entry)
            )));
        }
    };
    if entry.contains('\0') {
        return Err(Error::invalid(format!(
            "{from} entry for {:?} has a NUL byte",
            truncate(key)
        )));
    }
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(e) => entry.clone_into(e),
        None => env.push(entry.to_owned()),
    }
    Ok(())
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

fn working_dir(image: &ContainerConfig, opts: &RunOptions) -> Result<String> {
    let cwd = match opts.cwd.as_deref() {
        Some(c) => c,
        None if image.working_dir.is_empty() => "/",
        None => &image.working_dir,
    };
    if !cwd.starts_with('/') {
        return Err(Error::invalid(format!(
            "working directory {:?} is not absolute",
            truncate(cwd)
        )));
    }
    if cwd.contains('\0') {
        return Err(Error::invalid("working directory has a NUL byte"));
    }
    Ok(cwd.to_owned())
}

fn mounts(opts: &RunOptions) -> Result<Vec<Mount>> {
    let defaults = DEFAULT_MOUNTS.iter().map(|&(dst, typ, src, options)| {
        MountBuilder::default()
            .destination(dst)
            .typ(typ)
            .source(src)
            .options(options.iter().map(|&o| o.to_owned()).collect::<Vec<_>>())
            .build()
    });
    let binds = opts.mounts.iter().map(|m| {
        MountBuilder::default()
            .destination(&m.destination)
            .typ("bind")
            .source(&m.source)
            .options(vec![
                "rbind".to_owned(),
                if m.readonly { "ro" } else { "rw" }.to_owned(),
            ])
            .build()
    });
    defaults
        .chain(binds)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(internal)
}

/// At most 64 characters of a user-supplied string, for messages.
fn truncate(s: &str) -> &str {
    s.char_indices().nth(64).map_or(s, |(i, _)| &s[..i])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fs;

    use serde_json::{Value, json};

    use super::*;

    fn opts(id: &str) -> RunOptions {
        RunOptions::new(
            ContainerId::new(id).unwrap(),
            Namespace::new("default").unwrap(),
        )
    }

    fn image(cmd: &[&str]) -> ContainerConfig {
        ContainerConfig {
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..ContainerConfig::default()
        }
    }

    fn rootfs() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            root.join("etc/group"),
            "root:x:0:\napp:x:1001:\nwheel:x:10:app\n",
        )
        .unwrap();
        (dir, root)
    }

    fn gen_json(img: &ContainerConfig, o: &RunOptions) -> Value {
        let (_d, root) = rootfs();
        let spec = generate(img, &root, o).unwrap();
        serde_json::to_value(&spec).unwrap()
    }

    fn err(img: &ContainerConfig, o: &RunOptions) -> Error {
        let (_d, root) = rootfs();
        generate(img, &root, o).unwrap_err()
    }

    fn strs(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    }

    /// The defaults are containerd 1.6.20's `ctr oci spec` output, field for field, with
    /// strata's id-dependent values and the /sys/fs/cgroup mount.
    #[test]
    fn defaults_match_containerd() {
        let (_d, root) = rootfs();
        let spec = generate(&image(&["/bin/true"]), &root, &opts("c1")).unwrap();
        let mut v = serde_json::to_value(&spec).unwrap();
        // Capabilities serialize from a set; compare them as sets.
        let caps = v["process"]["capabilities"].take();
        let want: BTreeSet<String> = [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_MKNOD",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE",
        ]
        .map(String::from)
        .into();
        let caps = caps.as_object().unwrap();
        assert_eq!(
            caps.keys().collect::<Vec<_>>(),
            ["bounding", "effective", "permitted"]
        );
        for set in caps.values() {
            assert_eq!(strs(set).into_iter().collect::<BTreeSet<_>>(), want);
        }
        let expected = json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0, "additionalGids": [0]},
                "args": ["/bin/true"],
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "capabilities": null,
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": false
            },
            "root": {"path": root.to_str().unwrap(), "readonly": false},
            "hostname": "c1",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
                {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
            ],
            "linux": {
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "cgroupsPath": "/strata/default/c1",
                "namespaces": [
                    {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                    {"type": "mount"}, {"type": "network"}
                ],
                "maskedPaths": [
                    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                    "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
                ],
                "readonlyPaths": [
                    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
                ]
            }
        });
        assert_eq!(v, expected, "{}", serde_json::to_string_pretty(&v).unwrap());
    }

    #[test]
    fn args_follow_docker_semantics() {
        let o = opts("c");
        let mut img = image(&["-c", "echo hi"]);
        img.entrypoint = vec!["/bin/sh".into()];
        assert_eq!(
            strs(&gen_json(&img, &o)["process"]["args"]),
            ["/bin/sh", "-c", "echo hi"]
        );
        let mut o2 = opts("c");
        o2.args = vec!["-c".into(), "exit 3".into()];
        assert_eq!(
            strs(&gen_json(&img, &o2)["process"]["args"]),
            ["/bin/sh", "-c", "exit 3"]
        );
        img.entrypoint.clear();
        assert_eq!(
            strs(&gen_json(&img, &o2)["process"]["args"]),
            ["-c", "exit 3"]
        );
        assert_eq!(
            strs(&gen_json(&img, &o)["process"]["args"]),
            ["-c", "echo hi"]
        );
    }

    #[test]
    fn empty_or_bad_command_is_an_error() {
        let o = opts("c");
        assert_eq!(err(&image(&[]), &o).kind(), ErrorKind::InvalidArgument);
        assert_eq!(err(&image(&[""]), &o).kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            err(&image(&["a", "b\0c"]), &o).kind(),
            ErrorKind::InvalidArgument
        );
        let mut img = image(&[]);
        img.entrypoint = vec![String::new(), "x".into()];
        assert_eq!(err(&img, &o).kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn env_merges_by_key() {
        let mut img = image(&["x"]);
        img.env = vec!["A=1".into(), "B=2".into(), "A=3".into(), "EMPTY=".into()];
        let mut o = opts("c");
        o.env = vec!["B=cli".into(), "C=x=y".into()];
        assert_eq!(
            strs(&gen_json(&img, &o)["process"]["env"]),
            [DEFAULT_PATH_ENV, "A=3", "B=cli", "EMPTY=", "C=x=y"]
        );
        img.env.push("PATH=/image".into());
        assert_eq!(
            strs(&gen_json(&img, &o)["process"]["env"]),
            ["A=3", "B=cli", "EMPTY=", "PATH=/image", "C=x=y"]
        );
        o.env.push("PATH=/cli".into());
        let env = strs(&gen_json(&img, &o)["process"]["env"]);
        assert!(env.contains(&"PATH=/cli".to_owned()), "{env:?}");
        assert!(!env.iter().any(|e| e == "PATH=/image"));
    }

    #[test]
    fn terminal_sets_term_unless_given() {
        let mut o = opts("c");
        o.terminal = true;
        let v = gen_json(&image(&["x"]), &o);
        assert_eq!(v["process"]["terminal"], json!(true));
        assert!(strs(&v["process"]["env"]).contains(&"TERM=xterm".to_owned()));
        o.env = vec!["TERM=dumb".into()];
        let env = strs(&gen_json(&image(&["x"]), &o)["process"]["env"]);
        assert!(env.contains(&"TERM=dumb".to_owned()) && !env.contains(&"TERM=xterm".to_owned()));
    }

    #[test]
    fn bad_env_is_refused() {
        for bad in ["NOEQUALS", "=value", "", "K=a\0b"] {
            let mut img = image(&["x"]);
            img.env = vec![bad.into()];
            assert_eq!(
                err(&img, &opts("c")).kind(),
                ErrorKind::InvalidArgument,
                "{bad:?}"
            );
            let mut o = opts("c");
            o.env = vec![bad.into()];
            assert_eq!(
                err(&image(&["x"]), &o).kind(),
                ErrorKind::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cwd_from_options_then_image_then_root() {
        let mut img = image(&["x"]);
        assert_eq!(gen_json(&img, &opts("c"))["process"]["cwd"], json!("/"));
        img.working_dir = "/srv/app".into();
        assert_eq!(
            gen_json(&img, &opts("c"))["process"]["cwd"],
            json!("/srv/app")
        );
        let mut o = opts("c");
        o.cwd = Some("/tmp".into());
        assert_eq!(gen_json(&img, &o)["process"]["cwd"], json!("/tmp"));
        for bad in ["relative", "./x", "", "/a\0b"] {
            o.cwd = Some(bad.into());
            assert_eq!(err(&img, &o).kind(), ErrorKind::InvalidArgument, "{bad:?}");
        }
        img.working_dir = "srv".into();
        assert_eq!(err(&img, &opts("c")).kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn user_from_options_then_image() {
        let mut img = image(&["x"]);
        img.user = "app".into();
        let v = gen_json(&img, &opts("c"));
        assert_eq!(
            v["process"]["user"],
            json!({"uid": 1000, "gid": 1001, "additionalGids": [1001, 10]})
        );
        let mut o = opts("c");
        o.user = Some("5:6".into());
        assert_eq!(
            gen_json(&img, &o)["process"]["user"],
            json!({"uid": 5, "gid": 6, "additionalGids": [6]})
        );
        img.user = "ghost".into();
        assert_eq!(err(&img, &opts("c")).kind(), ErrorKind::NotFound);
        img.user = "4294967295".into();
        assert_eq!(err(&img, &opts("c")).kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn hostname_is_the_id_cut_to_63() {
        let long = "a".repeat(76);
        let v = gen_json(&image(&["x"]), &opts(&long));
        assert_eq!(v["hostname"], json!("a".repeat(63)));
        assert_eq!(
            v["linux"]["cgroupsPath"],
            json!(format!("/strata/default/{long}"))
        );
    }

    #[test]
    fn ids_and_namespaces_are_validated() {
        for bad in ["", "a/b", "..", "a..b", "-a", "a b", &"a".repeat(77)] {
            assert_eq!(
                ContainerId::new(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{bad:?}"
            );
        }
        let mut o = opts("web-1");
        o.namespace = Namespace::new("team.a").unwrap();
        assert_eq!(
            gen_json(&image(&["x"]), &o)["linux"]["cgroupsPath"],
            json!("/strata/team.a/web-1")
        );
    }

    #[test]
    fn options_toggle_rootfs_network_privileges() {
        let mut o = opts("c");
        o.readonly_rootfs = true;
        o.network = Network::Host;
        o.no_new_privileges = true;
        let v = gen_json(&image(&["x"]), &o);
        assert_eq!(v["root"]["readonly"], json!(true));
        assert_eq!(v["process"]["noNewPrivileges"], json!(true));
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount"]);
    }

    #[test]
    fn bind_mounts_parse_and_validate() {
        let m: BindMount = "/host/data:/data:ro".parse().unwrap();
        assert_eq!(
            m,
            BindMount::new(Path::new("/host/data"), Path::new("/data"), true).unwrap()
        );
        let m: BindMount = "/h:/c".parse().unwrap();
        assert!(!m.readonly);
        assert!(!"/h:/c:rw".parse::<BindMount>().unwrap().readonly);
        for bad in [
            "/h",
            "/h:/c:ro:x",
            "/h:/c:rx",
            "h:/c",
            "/h:c",
            "/h:/",
            "/h://",
            "/h:/a/../etc",
            "/h:/..",
            "/h:/a/..",
            "/h:/a\0b",
            ":/c",
            "/h:",
        ] {
            let e = bad.parse::<BindMount>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        }
        let mut o = opts("c");
        o.mounts = vec!["/h:/data:ro".parse().unwrap(), "/h2:/rw".parse().unwrap()];
        let v = gen_json(&image(&["x"]), &o);
        let mounts = v["mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), DEFAULT_MOUNTS.len() + 2);
        assert_eq!(
            mounts[DEFAULT_MOUNTS.len()],
            json!({"destination": "/data", "type": "bind", "source": "/h", "options": ["rbind", "ro"]})
        );
        assert_eq!(
            mounts[DEFAULT_MOUNTS.len() + 1],
            json!({"destination": "/rw", "type": "bind", "source": "/h2", "options": ["rbind", "rw"]})
        );
    }

    #[test]
    fn rootfs_must_be_absolute() {
        let e = generate(&image(&["x"]), Path::new("rootfs"), &opts("c")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    /// Labels are informational: none of them, however official they look, changes the
    /// spec.
    #[test]
    fn labels_never_change_the_spec() {
        let plain = image(&["x"]);
        let mut labelled = plain.clone();
        for (k, v) in [
            ("strata.io/privileged", "true"),
            ("strata.io/network", "host"),
            ("strata.io/mounts", "/:/host"),
            ("strata.io/user", "0"),
            ("strata.io/readonly-rootfs", "false"),
            ("containerd.io/privileged", "true"),
            ("containerd.io/restart.status", "running"),
            ("io.kubernetes.cri.privileged", "true"),
            ("io.kubernetes.container.capabilities", "CAP_SYS_ADMIN"),
            ("io.containerd.runc.v2.seccomp", "unconfined"),
            ("org.opencontainers.image.security", "privileged"),
            ("com.docker.security.apparmor", "unconfined"),
        ] {
            labelled.labels.insert(k.into(), v.into());
        }
        let mut o = opts("c");
        o.user = Some("app".into());
        let (_d, root) = rootfs();
        let a = generate(&plain, &root, &o).unwrap();
        let b = generate(&labelled, &root, &o).unwrap();
        // Field for field; capability sets compare as sets (their JSON order is a
        // HashSet's).
        assert_eq!(a, b);
        assert!(b.annotations().is_none());
    }
}
