//! Ingest throughput benchmark: a 1 GiB blob through the in-process writer and through
//! containerd's gRPC Write stream over a unix socket, against `openssl dgst -sha256` of the
//! same file (the hashing floor), all in one run.
//!
//! Usage: `ingest-bench [--size-mib N] [--runs N] [--dir DIR] [--fresh-fs]`. Prints MB/s
//! per path and the ratio to the floor; medians over the runs. With `--fresh-fs` (root)
//! every run's store lives on a newly made loop-mounted ext4, so an aged filesystem does
//! not skew the numbers.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use strata_content::service::{ContentService, StoreCell};
use strata_content::{Ingester, Labels, LocalStore, Manager, Scope, StoreOptions, WriterOptions};
use strata_proto::containerd::services::content::v1 as pb;
use strata_proto::containerd::services::content::v1::content_client::ContentClient;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};

const CHUNK: usize = 1 << 20;

struct Args {
    size_mib: usize,
    runs: usize,
    dir: Option<PathBuf>,
    fresh_fs: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        size_mib: 1024,
        runs: 3,
        dir: None,
        fresh_fs: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().context("missing value");
        match arg.as_str() {
            "--size-mib" => a.size_mib = val()?.parse()?,
            "--runs" => a.runs = val()?.parse()?,
            "--dir" => a.dir = Some(val()?.into()),
            "--fresh-fs" => a.fresh_fs = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn make_input(path: &Path, size: usize) -> anyhow::Result<String> {
    let mut f = File::create(path)?;
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut buf = vec![0u8; CHUNK];
    for _ in 0..size / CHUNK {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    drop(f);
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .arg(path)
        .output()
        .context("run openssl")?;
    let hex = String::from_utf8(out.stdout)?;
    Ok(format!(
        "sha256:{}",
        hex.split_whitespace().next().unwrap_or_default()
    ))
}

fn time_openssl(path: &Path) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let st = Command::new("openssl")
        .args(["dgst", "-sha256"])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(st.success(), "openssl failed");
    Ok(t.elapsed())
}

/// The in-process path's hashing alone (sha2 over the file, 4 MiB reads), to show how
/// much of the gap to the floor is the hash implementation and how much the writes.
fn time_hash_only(input: &Path) -> anyhow::Result<Duration> {
    use sha2::Digest as _;
    let mut f = File::open(input)?;
    let mut buf = vec![0u8; 4 * CHUNK];
    let t = Instant::now();
    let mut h = sha2::Sha256::new();
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    std::hint::black_box(h.finalize());
    Ok(t.elapsed())
}

/// The disk's floor for a durable ingest: copy the file with 4 MiB writes and fdatasync,
/// no hashing (what `dd conv=fdatasync` does).
fn time_durable_copy(input: &Path, dir: &Path) -> anyhow::Result<Duration> {
    let out = dir.join("copy.bin");
    let mut f = File::open(input)?;
    let mut buf = vec![0u8; 4 * CHUNK];
    let t = Instant::now();
    let mut o = File::create(&out)?;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        o.write_all(&buf[..n])?;
    }
    o.sync_data()?;
    let el = t.elapsed();
    drop(o);
    std::fs::remove_file(&out)?;
    Ok(el)
}

fn time_in_process(store: &LocalStore, input: &Path, run: usize) -> anyhow::Result<Duration> {
    let scope = Scope::ns("bench");
    let mut f = File::open(input)?;
    let mut buf = vec![0u8; 4 * CHUNK];
    let t = Instant::now();
    let mut w = store.writer(
        &scope,
        WriterOptions {
            r#ref: format!("inproc-{run}"),
            ..Default::default()
        },
    )?;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        w.write(&buf[..n])?;
    }
    let d = w.commit(0, None, Labels::new())?;
    let el = t.elapsed();
    store.delete(&scope, &d)?;
    Ok(el)
}

async fn time_grpc(
    client: &ContentClient<tonic::transport::Channel>,
    input: &Path,
    run: usize,
) -> anyhow::Result<Duration> {
    let mut client = client.clone();
    let (tx, rx) = mpsc::channel(8);
    let input = input.to_owned();
    let t = Instant::now();
    tx.send(pb::WriteContentRequest {
        action: pb::WriteAction::Stat as i32,
        r#ref: format!("grpc-{run}"),
        ..Default::default()
    })
    .await?;
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("containerd-namespace", "bench".parse()?);
    let mut resp = client.write(req).await?.into_inner();
    resp.message().await?;
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut f = File::open(input)?;
        let mut off = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            tx.blocking_send(pb::WriteContentRequest {
                action: pb::WriteAction::Write as i32,
                offset: off as i64,
                data: buf.into(),
                ..Default::default()
            })?;
            off += n as u64;
        }
        tx.blocking_send(pb::WriteContentRequest {
            action: pb::WriteAction::Commit as i32,
            offset: off as i64,
            total: off as i64,
            ..Default::default()
        })?;
        Ok(off)
    });
    let mut last = None;
    while let Some(m) = resp.message().await? {
        last = Some(m);
    }
    reader.await??;
    let el = t.elapsed();
    let digest = last.context("no commit response")?.digest;
    let mut del = tonic::Request::new(pb::DeleteContentRequest { digest });
    del.metadata_mut()
        .insert("containerd-namespace", "bench".parse()?);
    client.delete(del).await?;
    Ok(el)
}

/// A freshly made ext4 on a loop device, unmounted and removed on drop (needs root).
struct FreshFs {
    image: PathBuf,
    mnt: PathBuf,
}

impl FreshFs {
    fn new(base: &Path, run: usize, size: u64) -> anyhow::Result<Self> {
        let image = base.join(format!("fs-{run}.img"));
        let mnt = base.join(format!("mnt-{run}"));
        File::create(&image)?.set_len(size)?;
        std::fs::create_dir_all(&mnt)?;
        let sh = |cmd: &mut Command| -> anyhow::Result<()> {
            let out = cmd.output()?;
            anyhow::ensure!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        sh(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt))?;
        Ok(FreshFs { image, mnt })
    }
}

impl Drop for FreshFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Flushes dirty data and gives the disk a moment, so the next measurement starts level.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(500));
}

/// One run of both strata paths on a store rooted at `root`: the in-process writer, then
/// the gRPC Write stream through a server on a unix socket.
fn measure(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    input: &Path,
    want: &str,
    run: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let store = LocalStore::open(root, StoreOptions::default())?;
    if run == 0 {
        // Check correctness once before timing.
        let scope = Scope::ns("bench");
        let mut check = store.writer(
            &scope,
            WriterOptions {
                r#ref: "check".into(),
                ..Default::default()
            },
        )?;
        let mut f = File::open(input)?;
        let mut buf = vec![0u8; 4 * CHUNK];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            check.write(&buf[..n])?;
        }
        let got = check.commit(0, None, Labels::new())?.to_string();
        anyhow::ensure!(got == want, "digest mismatch: strata {got}, openssl {want}");
        store.delete(&scope, &strata_proto::Digest::parse(&got)?)?;
    }
    // Alternate which path goes first, and let the disk settle before each, so neither
    // path always inherits the other's writeback and block freeing.
    let inproc_first = run.is_multiple_of(2);
    let mut inproc = Duration::ZERO;
    if inproc_first {
        settle();
        inproc = time_in_process(&store, input, run)?;
    }
    settle();
    let sock = root.join("bench.sock");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let grpc = rt.block_on(async {
        let listener = UnixListener::bind(&sock)?;
        let svc = ContentService::new(StoreCell::ready(store.clone())).into_server();
        let server = tokio::spawn(
            strata_proto::transport::server()
                .add_service(svc)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                }),
        );
        let ch = strata_proto::transport::connect_unix(&sock).await?;
        let client = ContentClient::new(ch)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20);
        let t = time_grpc(&client, input, run).await;
        drop(client);
        let _ = stop_tx.send(());
        let _ = server.await;
        t
    })?;
    if !inproc_first {
        settle();
        inproc = time_in_process(&store, input, run)?;
    }
    Ok((inproc, grpc))
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let dir = tempfile::Builder::new()
        .prefix("strata-ingest-bench")
        .tempdir_in(&base)?;
    let size = args.size_mib * CHUNK;
    let input = dir.path().join("input.bin");
    eprintln!("writing {} MiB input to {}", args.size_mib, input.display());
    let want = make_input(&input, size)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (mut floor, mut inproc, mut grpc, mut hash, mut copy) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        floor.push(time_openssl(&input)?);
        hash.push(time_hash_only(&input)?);
        let fs = if args.fresh_fs {
            Some(FreshFs::new(
                dir.path(),
                run,
                2 * size as u64 + (512 << 20),
            )?)
        } else {
            None
        };
        let root = match &fs {
            Some(f) => f.mnt.join("root"),
            None => dir.path().join(format!("root-{run}")),
        };
        std::fs::create_dir_all(&root)?;
        copy.push(time_durable_copy(&input, &root)?);
        let (i, g) = measure(&rt, &root, &input, &want, run)?;
        inproc.push(i);
        grpc.push(g);
        drop(fs);
    }
    let bytes = size as u64;
    let (f, i, g, h, c) = (
        median(floor),
        median(inproc),
        median(grpc),
        median(hash),
        median(copy),
    );
    println!(
        "ingest of {} MiB, median of {} runs (digest {want})",
        args.size_mib, args.runs
    );
    println!("{:<28} {:>10} {:>10}", "path", "MB/s", "vs floor");
    println!(
        "{:<28} {:>10.0} {:>10.2}",
        "openssl dgst -sha256 (floor)",
        mbps(bytes, f),
        1.0
    );
    println!(
        "{:<28} {:>10.0} {:>10.2}",
        "sha2 hash only (no writes)",
        mbps(bytes, h),
        f.as_secs_f64() / h.as_secs_f64()
    );
    println!(
        "{:<28} {:>10.0} {:>10.2}",
        "disk: copy + fdatasync",
        mbps(bytes, c),
        f.as_secs_f64() / c.as_secs_f64()
    );
    println!(
        "{:<28} {:>10.0} {:>10.2}",
        "strata in-process ingest",
        mbps(bytes, i),
        f.as_secs_f64() / i.as_secs_f64()
    );
    println!(
        "{:<28} {:>10.0} {:>10.2}",
        "strata gRPC Write stream",
        mbps(bytes, g),
        f.as_secs_f64() / g.as_secs_f64()
    );
    Ok(())
}
