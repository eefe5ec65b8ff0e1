//! Snapshot lifecycle benchmark: prepare + commit + remove latency (p50, p99) of every
//! strata backend, in-process and over snapshots.v1 gRPC on a unix socket, against
//! containerd 1.6's built-in overlayfs snapshotter driven over containerd's own socket, all
//! in one run; then List and Stat latency with many snapshots.
//!
//! A cycle is `prepare(key, parent=base)`, `commit(name, key)`, `remove(name)`, where
//! `base` is a committed snapshot holding a few small files (native copies them on every
//! prepare). Every snapshot carries `containerd.io/gc.root`, so containerd's garbage
//! collector leaves the committed base alone between operations. Targets take turns in
//! rounds whose order alternates, so no target always runs on a warmer or colder machine.
//!
//! Usage (root; containerd from `scripts/install-deps.sh`, `mkfs.btrfs` for btrfs):
//!
//! ```text
//! cargo build --workspace --all-targets
//! $CARGO_TARGET_DIR/debug/snapshot-bench [--cycles N] [--snapshots N] [--dir DIR]
//!                                        [--skip-btrfs] [--skip-containerd]
//! ```
//!
//! `--cycles` (default 1000) cycles per target; `--snapshots` (default 10000) active
//! snapshots on one committed base for the List/Stat part; `--dir` is where strata's roots
//! go (a temp dir inside it; default `/var/tmp`). containerd runs from the repo's harness
//! (`tests/harness/lib.sh`) in a temp dir under `/tmp` and is stopped on exit, also on error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use strata_snapshotter::service::{Backends, BackendsCell, SnapshotsService};
use strata_snapshotter::testsuite::{LoopBtrfs, gc_root};
use strata_snapshotter::{
    BtrfsSnapshotter, Cleanup, GrpcSnapshotter, NativeSnapshotter, OverlayOptions,
    OverlaySnapshotter, Snapshotter, mount, overlay::kernel_supports_index,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

/// Rounds the cycles are split into; the target order reverses every round. Many short
/// turns, because on a shared machine a burst of someone else's writeback lasts seconds and
/// would otherwise land on one target's turn only.
const ROUNDS: usize = 40;
/// Unrecorded cycles after each settle, so waking from its idle pause (parked threads, idle
/// disk) is not counted against whichever target happens to go next.
const REWARM: usize = 3;
/// Full Lists timed per target.
const LIST_REPS: usize = 20;
/// Stats of random keys timed per target.
const STATS: usize = 1000;
/// Size of the sparse image behind the btrfs targets.
const BTRFS_SIZE: u64 = 1 << 30;
/// Name the List/Stat overlay backend is served under, next to the cycle backends.
const LIST_BACKEND: &str = "overlayfs-list";
const BASE_DIRS: usize = 2;
const BASE_FILES_PER_DIR: usize = 5;
const BASE_FILE_SIZE: usize = 4096;

struct Args {
    cycles: usize,
    snapshots: usize,
    dir: Option<PathBuf>,
    skip_btrfs: bool,
    skip_containerd: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        cycles: 1000,
        snapshots: 10_000,
        dir: None,
        skip_btrfs: false,
        skip_containerd: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--cycles" => a.cycles = val()?.parse()?,
            "--snapshots" => a.snapshots = val()?.parse()?,
            "--dir" => a.dir = Some(val()?.into()),
            "--skip-btrfs" => a.skip_btrfs = true,
            "--skip-containerd" => a.skip_containerd = true,
            other => bail!(
                "unknown argument {other:?} (usage: snapshot-bench [--cycles N] [--snapshots N] \
                 [--dir DIR] [--skip-btrfs] [--skip-containerd])"
            ),
        }
    }
    anyhow::ensure!(a.cycles > 0, "--cycles must be at least 1");
    anyhow::ensure!(a.snapshots > 0, "--snapshots must be at least 1");
    Ok(a)
}

/// Nearest-rank percentile `q` (0..=1) of `v`.
fn pct(v: &[Duration], q: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Flushes dirty data and gives the disk a moment, so each target's turn starts level.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(100));
}

/// Small deterministic generator for the Stat keys: the same sequence for every target.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The throwaway containerd of the baseline, stopped (with everything it mounted) on drop.
struct Containerd {
    lib: PathBuf,
    sock: PathBuf,
    version: String,
    // Dropped after `drop` has stopped containerd, which removes its state.
    wd: tempfile::TempDir,
}

fn harness_lib() -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    dir.join("../tests/harness/lib.sh")
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

fn harness(lib: &Path, func: &str, wd: &Path) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(format!("source \"$0\"; {func} \"$1\""))
        .arg(lib)
        .arg(wd);
    c
}

impl Containerd {
    fn start() -> anyhow::Result<Containerd> {
        if !on_path("containerd") || !on_path("ctr") {
            bail!(
                "containerd (and ctr) not found on PATH: install them with \
                 scripts/install-deps.sh, or pass --skip-containerd"
            );
        }
        let lib = harness_lib();
        anyhow::ensure!(
            lib.is_file(),
            "harness {} not found (set CARGO_MANIFEST_DIR to the benches crate dir)",
            lib.display()
        );
        // Short, because containerd's socket path must fit in 108 bytes.
        let wd = tempfile::Builder::new().prefix("sb-").tempdir_in("/tmp")?;
        let version = Command::new("containerd")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        // The guard exists before containerd does, so a half-failed start is stopped too.
        let mut c = Containerd {
            lib,
            sock: PathBuf::new(),
            version,
            wd,
        };
        let out = harness(&c.lib, "start_containerd", c.wd.path())
            .env("STRATA_BUILTIN_CONTENT", "1")
            // The harness defaults to debug logging, which would tax the baseline.
            .env("STRATA_CONTAINERD_LOG_LEVEL", "warn")
            .output()
            .context("run bash")?;
        anyhow::ensure!(
            out.status.success(),
            "start_containerd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sock = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        anyhow::ensure!(!sock.is_empty(), "start_containerd printed no socket");
        c.sock = sock.into();
        Ok(c)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        match harness(&self.lib, "stop_all", self.wd.path()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: stop_all {}: {}",
                self.wd.path().display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("warning: cannot run stop_all: {e}"),
        }
    }
}

/// Latencies of one target's cycles.
#[derive(Default)]
struct Cycles {
    prepare: Vec<Duration>,
    commit: Vec<Duration>,
    remove: Vec<Duration>,
    cycle: Vec<Duration>,
}

/// Something measured: a snapshotter, the committed base its cycles start from, and a key
/// prefix of its own.
struct Target {
    name: String,
    sn: Box<dyn Snapshotter>,
    base: String,
    prefix: String,
    next: usize,
    cycles: Cycles,
}

impl Target {
    fn new(name: &str, sn: Box<dyn Snapshotter>, mnt: &Path) -> anyhow::Result<Target> {
        let prefix = format!("bench/{}", name.replace(' ', "-"));
        let base = make_base(&*sn, &prefix, mnt)?;
        Ok(Target {
            name: name.to_owned(),
            sn,
            base,
            prefix,
            next: 0,
            cycles: Cycles::default(),
        })
    }

    /// One prepare + commit + remove; recorded unless `warmup`.
    fn cycle(&mut self, warmup: bool) -> anyhow::Result<()> {
        let i = self.next;
        self.next += 1;
        let key = format!("{}/active-{i}", self.prefix);
        let name = format!("{}/committed-{i}", self.prefix);
        let (l1, l2) = (gc_root(), gc_root());
        let t0 = Instant::now();
        self.sn
            .prepare(&key, Some(&self.base), l1)
            .with_context(|| format!("{}: prepare {key}", self.name))?;
        let t1 = Instant::now();
        self.sn
            .commit(&name, &key, l2)
            .with_context(|| format!("{}: commit {key}", self.name))?;
        let t2 = Instant::now();
        self.sn
            .remove(&name)
            .with_context(|| format!("{}: remove {name}", self.name))?;
        let t3 = Instant::now();
        if !warmup {
            self.cycles.prepare.push(t1 - t0);
            self.cycles.commit.push(t2 - t1);
            self.cycles.remove.push(t3 - t2);
            self.cycles.cycle.push(t3 - t0);
        }
        Ok(())
    }
}

/// Commits `<prefix>/base` with a few small files in it (through real mounts, as an
/// unpacked layer would be), and returns its name.
fn make_base(sn: &dyn Snapshotter, prefix: &str, mnt: &Path) -> anyhow::Result<String> {
    let key = format!("{prefix}/base-active");
    let name = format!("{prefix}/base");
    let mounts = sn.prepare(&key, None, gc_root()).context("prepare base")?;
    std::fs::create_dir_all(mnt)?;
    mount::mount_all(&mounts, mnt).with_context(|| format!("mount {mounts:?}"))?;
    let filled = (|| -> std::io::Result<()> {
        for d in 0..BASE_DIRS {
            let dir = mnt.join(format!("dir{d}"));
            std::fs::create_dir(&dir)?;
            for f in 0..BASE_FILES_PER_DIR {
                std::fs::write(
                    dir.join(format!("file{f}")),
                    vec![(d * 16 + f) as u8; BASE_FILE_SIZE],
                )?;
            }
        }
        Ok(())
    })();
    mount::unmount_all(mnt).context("unmount base")?;
    filled.context("fill base")?;
    sn.commit(&name, &key, gc_root()).context("commit base")?;
    Ok(name)
}

/// Both traits in one object, so the service gets the Cleanup capability as the daemon
/// gives it.
trait Backend: Snapshotter + Cleanup {
    fn snapshotter(self: Arc<Self>) -> Arc<dyn Snapshotter>;
    fn cleaner(self: Arc<Self>) -> Arc<dyn Cleanup + Send + Sync>;
}

impl<T: Snapshotter + Cleanup + 'static> Backend for T {
    fn snapshotter(self: Arc<Self>) -> Arc<dyn Snapshotter> {
        self
    }
    fn cleaner(self: Arc<Self>) -> Arc<dyn Cleanup + Send + Sync> {
        self
    }
}

fn overlay(root: &Path) -> anyhow::Result<Arc<dyn Backend>> {
    let opts = OverlayOptions {
        index_off: kernel_supports_index(),
        ..Default::default()
    };
    Ok(Arc::new(OverlaySnapshotter::new(root, opts)?))
}

/// Serves `backends` (by name; the first is the default) on the unix socket `sock`.
fn serve(
    rt: &tokio::runtime::Runtime,
    sock: &Path,
    backends: Vec<(String, Arc<dyn Backend>)>,
) -> anyhow::Result<()> {
    let mut b = Backends::new(backends.first().map(|(n, _)| n.clone()).unwrap_or_default());
    for (name, be) in backends {
        let entry = strata_snapshotter::Backend::new(
            be.clone().snapshotter(),
            strata_snapshotter::Whiteouts::Delete,
        )
        .with_cleanup(be.cleaner());
        b.insert(name, entry);
    }
    let listener = {
        let _g = rt.enter();
        UnixListener::bind(sock).with_context(|| format!("bind {}", sock.display()))?
    };
    rt.spawn(
        strata_proto::transport::server()
            .add_service(SnapshotsService::new(BackendsCell::ready(b)).into_server())
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    Ok(())
}

fn client(
    rt: &tokio::runtime::Runtime,
    sock: &Path,
    name: &str,
    ns: Option<&str>,
) -> anyhow::Result<GrpcSnapshotter> {
    let ch = rt
        .block_on(strata_proto::transport::connect_unix(sock))
        .with_context(|| format!("connect {}", sock.display()))?;
    let c = GrpcSnapshotter::new(ch, rt.handle().clone(), name);
    Ok(match ns {
        Some(ns) => c.with_namespace(ns),
        None => c,
    })
}

/// Runs the cycles: warm-up for every target, then `ROUNDS` rounds of equal shares, the
/// target order reversed every other round.
fn run_cycles(targets: &mut [Target], cycles: usize) -> anyhow::Result<usize> {
    let warmup = (cycles / 10).clamp(10, 100);
    for t in targets.iter_mut() {
        eprintln!("warm-up: {} ({warmup} cycles)", t.name);
        for _ in 0..warmup {
            t.cycle(true)?;
        }
    }
    let rounds = ROUNDS.min(cycles);
    for r in 0..rounds {
        let share = cycles / rounds + usize::from(r < cycles % rounds);
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        eprintln!("round {}/{rounds}: {share} cycles per target", r + 1);
        for i in order {
            settle();
            for _ in 0..REWARM {
                targets[i].cycle(true)?;
            }
            for _ in 0..share {
                targets[i].cycle(false)?;
            }
        }
    }
    Ok(warmup)
}

/// A List/Stat target: a snapshotter holding `n` active snapshots on one base.
struct ListTarget<'a> {
    name: String,
    sn: &'a dyn Snapshotter,
    keys: Vec<String>,
    lists: Vec<Duration>,
    stats: Vec<Duration>,
}

/// Prepares `n` active snapshots on `base` and returns their keys.
fn populate(sn: &dyn Snapshotter, what: &str, base: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let t = Instant::now();
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("bench/list/{i:07}");
        sn.prepare(&key, Some(base), gc_root())
            .with_context(|| format!("{what}: prepare {key}"))?;
        keys.push(key);
        if (i + 1) % 2000 == 0 {
            eprintln!("  {what}: {} of {n} prepared", i + 1);
        }
    }
    eprintln!(
        "  {what}: {n} prepared in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(keys)
}

fn run_lists(targets: &mut [ListTarget<'_>], expect: usize) -> anyhow::Result<()> {
    for rep in 0..LIST_REPS {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let t = &mut targets[i];
            let mut n = 0usize;
            let t0 = Instant::now();
            t.sn.walk(&[], &mut |_| {
                n += 1;
                Ok(())
            })
            .with_context(|| format!("{}: list", t.name))?;
            t.lists.push(t0.elapsed());
            anyhow::ensure!(
                n == expect,
                "{}: listed {n} snapshots, expected {expect}",
                t.name
            );
        }
    }
    const CHUNK: usize = 100;
    for c in 0..STATS.div_ceil(CHUNK) {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if c % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let t = &mut targets[i];
            // Seeded per chunk: every target stats the same keys.
            let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ c as u64);
            for _ in 0..CHUNK.min(STATS - c * CHUNK) {
                let key = &t.keys[(rng.next() % t.keys.len() as u64) as usize];
                let t0 = Instant::now();
                std::hint::black_box(
                    t.sn.stat(key)
                        .with_context(|| format!("{}: stat {key}", t.name))?,
                );
                t.stats.push(t0.elapsed());
            }
        }
    }
    Ok(())
}

fn ratio(base: Option<Duration>, d: Duration) -> String {
    match base {
        Some(b) => format!("{:.2}", b.as_secs_f64() / d.as_secs_f64()),
        None => "-".into(),
    }
}

fn print_cycles(targets: &[Target], baseline: Option<&str>) {
    let base_p50 = baseline
        .and_then(|b| targets.iter().find(|t| t.name == b))
        .map(|t| pct(&t.cycles.cycle, 0.5));
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "target (latency in us)",
        "prep p50",
        "prep p99",
        "comm p50",
        "comm p99",
        "rm p50",
        "rm p99",
        "cyc p50",
        "cyc p99",
        "vs ctrd"
    );
    for t in targets {
        let c = &t.cycles;
        println!(
            "{:<34} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8}",
            t.name,
            us(pct(&c.prepare, 0.5)),
            us(pct(&c.prepare, 0.99)),
            us(pct(&c.commit, 0.5)),
            us(pct(&c.commit, 0.99)),
            us(pct(&c.remove, 0.5)),
            us(pct(&c.remove, 0.99)),
            us(pct(&c.cycle, 0.5)),
            us(pct(&c.cycle, 0.99)),
            ratio(base_p50, pct(&c.cycle, 0.5)),
        );
    }
}

fn print_lists(targets: &[ListTarget<'_>], baseline: Option<&str>) {
    let base = baseline
        .and_then(|b| targets.iter().find(|t| t.name == b))
        .map(|t| (pct(&t.lists, 0.5), pct(&t.stats, 0.5)));
    println!(
        "{:<34} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8}",
        "target", "list p50", "list p99", "vs ctrd", "stat p50", "stat p99", "vs ctrd"
    );
    println!(
        "{:<34} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8}",
        "", "(ms)", "(ms)", "", "(us)", "(us)", ""
    );
    for t in targets {
        println!(
            "{:<34} {:>9.2} {:>9.2} {:>8} {:>9.0} {:>9.0} {:>8}",
            t.name,
            ms(pct(&t.lists, 0.5)),
            ms(pct(&t.lists, 0.99)),
            ratio(base.map(|b| b.0), pct(&t.lists, 0.5)),
            us(pct(&t.stats, 0.5)),
            us(pct(&t.stats, 0.99)),
            ratio(base.map(|b| b.1), pct(&t.stats, 0.5)),
        );
    }
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

const CTRD: &str = "containerd overlayfs (its socket)";

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let parent = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    // Declared first, dropped last: everything below lives in or is mounted from these.
    let dir = tempfile::Builder::new()
        .prefix("strata-snapshot-bench.")
        .tempdir_in(&parent)
        .with_context(|| format!("temp dir in {}", parent.display()))?;
    let containerd = if args.skip_containerd {
        None
    } else {
        eprintln!("starting containerd");
        Some(Containerd::start()?)
    };
    let btrfs = if args.skip_btrfs {
        None
    } else {
        eprintln!("making a {} MiB btrfs on a loop device", BTRFS_SIZE >> 20);
        // LoopBtrfs reports failures by panicking (it is test support); turn that into an
        // error so the guards above still clean up in order.
        Some(
            std::panic::catch_unwind(|| LoopBtrfs::new(BTRFS_SIZE))
                .map_err(|_| anyhow::anyhow!("cannot make a loop-mounted btrfs (needs root, mkfs.btrfs, losetup); pass --skip-btrfs"))?,
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let root = |name: &str| -> anyhow::Result<PathBuf> {
        let p = dir.path().join(name);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    };

    // One backend per target, each on a root of its own, so every target starts equal.
    let mut inproc: Vec<(String, Arc<dyn Backend>)> = vec![
        ("overlayfs".into(), overlay(&root("overlayfs-inproc")?)?),
        (
            "native".into(),
            Arc::new(NativeSnapshotter::new(&root("native-inproc")?)?),
        ),
    ];
    let mut served: Vec<(String, Arc<dyn Backend>)> = vec![
        ("overlayfs".into(), overlay(&root("overlayfs-grpc")?)?),
        (
            "native".into(),
            Arc::new(NativeSnapshotter::new(&root("native-grpc")?)?),
        ),
    ];
    if let Some(fs) = &btrfs {
        inproc.push((
            "btrfs".into(),
            Arc::new(BtrfsSnapshotter::new(&fs.path().join("inproc"))?),
        ));
        served.push((
            "btrfs".into(),
            Arc::new(BtrfsSnapshotter::new(&fs.path().join("grpc"))?),
        ));
    }
    let list_backend = overlay(&root("overlayfs-list")?)?;
    served.push((LIST_BACKEND.into(), list_backend.clone()));
    let sock = dir.path().join("strata.sock");
    serve(&rt, &sock, served.clone())?;

    let mnt = root("mnt")?;
    let mut targets = Vec::new();
    for (name, be) in &inproc {
        targets.push(Target::new(
            &format!("{name} in-process"),
            Box::new(be.clone().snapshotter()),
            &mnt,
        )?);
        targets.push(Target::new(
            &format!("{name} grpc"),
            Box::new(client(&rt, &sock, name, None)?),
            &mnt,
        )?);
    }
    if let Some(c) = &containerd {
        targets.push(Target::new(
            CTRD,
            Box::new(client(&rt, &c.sock, "overlayfs", Some("bench"))?),
            &mnt,
        )?);
    }

    eprintln!(
        "cycles: {} per target, {} targets",
        args.cycles,
        targets.len()
    );
    let t = Instant::now();
    let warmup = run_cycles(&mut targets, args.cycles)?;
    eprintln!("cycles done in {:.0} s", t.elapsed().as_secs_f64());

    // List/Stat: N active snapshots on one committed base. strata's overlay holds them
    // once and is listed both directly and through the socket.
    eprintln!(
        "List/Stat: preparing {} snapshots per store",
        args.snapshots
    );
    let list_inproc: Arc<dyn Snapshotter> = list_backend.snapshotter();
    let list_grpc = client(&rt, &sock, LIST_BACKEND, None)?;
    let base = make_base(&*list_inproc, "bench/list", &mnt)?;
    let keys = populate(&*list_inproc, "strata overlayfs", &base, args.snapshots)?;
    let ctrd_list = match &containerd {
        Some(c) => {
            // A namespace of its own, so the cycle targets' base is not listed with them.
            let sn = client(&rt, &c.sock, "overlayfs", Some("bench-list"))?;
            let base = make_base(&sn, "bench/list", &mnt)?;
            let keys = populate(&sn, "containerd overlayfs", &base, args.snapshots)?;
            Some((sn, keys))
        }
        None => None,
    };
    let mut lists = vec![
        ListTarget {
            name: "overlayfs in-process".into(),
            sn: &*list_inproc,
            keys: keys.clone(),
            lists: Vec::new(),
            stats: Vec::new(),
        },
        ListTarget {
            name: "overlayfs grpc".into(),
            sn: &list_grpc,
            keys,
            lists: Vec::new(),
            stats: Vec::new(),
        },
    ];
    if let Some((sn, keys)) = &ctrd_list {
        lists.push(ListTarget {
            name: CTRD.into(),
            sn,
            keys: keys.clone(),
            lists: Vec::new(),
            stats: Vec::new(),
        });
    }
    settle();
    run_lists(&mut lists, args.snapshots + 1)?;

    let fmt_base = BASE_DIRS * BASE_FILES_PER_DIR;
    println!(
        "snapshot-bench: kernel {}, {} CPUs, strata roots in {}, {}",
        kernel(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        dir.path().display(),
        containerd
            .as_ref()
            .map_or("baseline skipped".to_owned(), |c| c.version.clone()),
    );
    println!();
    println!(
        "cycle = prepare(key, parent=base) + commit(name, key) + remove(name); base holds {fmt_base} files \
         of {} KiB in {BASE_DIRS} dirs; labels containerd.io/gc.root",
        BASE_FILE_SIZE / 1024
    );
    println!(
        "{} cycles per target after {warmup} warm-up cycles, in {} rounds of alternating target order \
         (sync, then {REWARM} unrecorded cycles, before each target's turn)",
        args.cycles,
        ROUNDS.min(args.cycles)
    );
    println!("vs ctrd = containerd cycle p50 / target cycle p50 (>1: strata faster)");
    println!();
    print_cycles(&targets, containerd.as_ref().map(|_| CTRD));
    if containerd.is_none() {
        println!("baseline skipped");
    }
    println!();
    println!(
        "List (full, unfiltered) and Stat (random keys) with N = {} active snapshots prepared on one \
         committed base (N + 1 listed); {LIST_REPS} Lists (p99 = max) and {STATS} Stats per target, \
         target order alternating",
        args.snapshots
    );
    println!("vs ctrd = containerd p50 / target p50 (>1: strata faster)");
    println!();
    print_lists(&lists, containerd.as_ref().map(|_| CTRD));
    if containerd.is_none() {
        println!("baseline skipped");
    }

    // Clients and servers go before the filesystems they use: the runtime holds the served
    // backends, and btrfs cannot be unmounted while a backend holds a directory open.
    drop(lists);
    drop(ctrd_list);
    drop(list_grpc);
    drop(list_inproc);
    drop(targets);
    drop(inproc);
    drop(served);
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(btrfs);
    drop(containerd);
    drop(dir);
    Ok(())
}
