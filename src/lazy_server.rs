//! Lazy layers served by processes of their own, so their mounts outlive the daemon.
//!
//! A FUSE mount dies with the last holder of its `/dev/fuse` fd: served from the daemon,
//! a `kill -9` of the daemon would turn every lazy layer under a running container into
//! ENOTCONN. So each lazy layer gets a server process, `strata lazy-serve SPEC` (this
//! binary), started in a session of its own; it mounts the layer, answers its reads,
//! prefetches and background-fetches, writes its counters to `stats.json`, and exits
//! when the layer is unmounted. The daemon only starts servers and unmounts layers; a
//! restarted daemon adopts every mount whose server still answers and starts a server
//! for the others. Reads never wait for the daemon. (A held fd with
//! `FUSE_NOTIFY_RESEND` would keep a single server; fuser cannot take over an already
//! initialised connection, and a server per layer needs no such hand-over at all.)

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use strata_puller::RegistryBlobs;
use strata_puller::service::RegistrySettings;
use strata_snapshotter::lazy::{LayerMounter, MountSpec, MountedLayer, serve, tree_usage};
use strata_snapshotter::{Error, Result, Usage};

/// How long a server may take to mount its layer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a server reports once its layer is mounted: `ready {"size":…,"inodes":…}`.
#[derive(Debug, Serialize, Deserialize)]
struct Ready {
    size: i64,
    inodes: i64,
}

/// Counters a server publishes for the daemon.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stats {
    fetched: u64,
    complete: bool,
}

fn stats_path(spec: &MountSpec) -> PathBuf {
    spec.lazy_dir.join("stats.json")
}

/// Starts `strata lazy-serve` processes.
pub(crate) struct ServerMounter {
    exe: PathBuf,
    registry: RegistrySettings,
}

impl ServerMounter {
    pub(crate) fn new(registry: RegistrySettings) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("find the strata binary")?;
        Ok(ServerMounter { exe, registry })
    }
}

/// Whether `p` is a FUSE mount point that answers.
fn is_served(p: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy().replace(' ', "\\040");
    let mounted = info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let fstype = f.iter().position(|x| *x == "-").and_then(|i| f.get(i + 1));
        f.get(4) == Some(&want.as_str()) && fstype.is_some_and(|t| t.starts_with("fuse"))
    });
    mounted && std::fs::metadata(p).is_ok()
}

impl LayerMounter for ServerMounter {
    fn mount(&self, spec: &MountSpec) -> Result<Box<dyn MountedLayer>> {
        let spec_path = spec.lazy_dir.join("spec.json");
        let json = serde_json::to_vec(spec).map_err(|e| Error::internal("encode spec", e))?;
        std::fs::write(&spec_path, json).map_err(|e| Error::io("write", &spec_path, e))?;
        let log_path = spec.lazy_dir.join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io("open", &log_path, e))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("lazy-serve")
            .arg("--hosts-dir")
            .arg(&self.registry.hosts_dir);
        if let Some(c) = &self.registry.docker_config {
            cmd.arg("--docker-config").arg(c);
        }
        cmd.arg(&spec_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // SAFETY: setsid is async-signal-safe and touches nothing of the parent: the
        // server leaves the daemon's session and process group, so neither a signal to
        // the daemon's group nor the daemon's exit reaches it.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| Error::io("start", &self.exe, e))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
        let ready = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|u| serde_json::from_str::<Ready>(u).ok());
        let Some(ready) = ready else {
            let _ = child.kill();
            let _ = child.wait();
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail = tail.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            return Err(Error::new(
                strata_snapshotter::ErrorKind::Unavailable,
                format!(
                    "lazy layer server did not mount {}: {tail}",
                    spec.mountpoint.display()
                ),
            ));
        };
        // The server outlives this handle; reap it when it exits so no zombie stays.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(Box::new(ServedLayer {
            spec: spec.clone(),
            usage: Usage {
                size: ready.size,
                inodes: ready.inodes,
            },
        }))
    }

    fn adopt(&self, spec: &MountSpec) -> Option<Box<dyn MountedLayer>> {
        // An adopted layer is committed already: its usage is on record.
        is_served(&spec.mountpoint).then(|| {
            Box::new(ServedLayer {
                spec: spec.clone(),
                usage: Usage::default(),
            }) as _
        })
    }
}

/// A layer served by a `strata lazy-serve` process.
struct ServedLayer {
    spec: MountSpec,
    usage: Usage,
}

impl ServedLayer {
    fn stats(&self) -> Stats {
        std::fs::read(stats_path(&self.spec))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

impl MountedLayer for ServedLayer {
    fn fetched_bytes(&self) -> u64 {
        self.stats().fetched
    }

    fn is_complete(&self) -> bool {
        self.stats().complete
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn unmount(self: Box<Self>) -> Result<()> {
        // Its server sees the connection end and exits.
        let p = &self.spec.mountpoint;
        match nix::mount::umount2(p, nix::mount::MntFlags::empty()) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
            Err(_) => nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| Error::io("unmount", p, e.into())),
        }
    }

    fn release(self: Box<Self>) {
        // The server keeps serving: containers on the layer never notice the daemon go.
    }
}

/// `strata lazy-serve SPEC`: serves one lazy layer until it is unmounted.
pub(crate) fn run(spec_path: &Path, registry: &RegistrySettings) -> anyhow::Result<()> {
    let spec: MountSpec = serde_json::from_slice(
        &std::fs::read(spec_path).with_context(|| format!("read {}", spec_path.display()))?,
    )
    .context("parse mount spec")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start runtime")?;
    let client = registry.client(false, None)?;
    let blobs = Arc::new(RegistryBlobs::new(client, rt.handle().clone()));
    let t = std::time::Instant::now();
    let tree = spec.tree()?;
    let parsed = t.elapsed();
    let usage = tree_usage(&tree);
    let mount = serve(&spec, tree, blobs)?;
    tracing::debug!(?parsed, took = ?t.elapsed(), "mounted");
    let ready = Ready {
        size: usage.size,
        inodes: usage.inodes,
    };
    println!("ready {}", serde_json::to_string(&ready)?);
    let reader = mount.reader().clone();
    let stats = stats_path(&spec);
    let publisher = std::thread::spawn(move || {
        let mut last = (u64::MAX, false);
        while !reader.is_stopped() {
            let now = (reader.fetched_bytes(), reader.is_complete());
            if now != last {
                let s = Stats {
                    fetched: now.0,
                    complete: now.1,
                };
                let tmp = stats.with_extension("tmp");
                if let Ok(b) = serde_json::to_vec(&s)
                    && std::fs::write(&tmp, b).is_ok()
                {
                    let _ = std::fs::rename(&tmp, &stats);
                }
                last = now;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let served = mount.wait();
    let _ = publisher.join();
    served?;
    Ok(())
}
