//! Ingest throughput benchmark: a 1 GiB blob through the in-process writer and through
//! containerd's gRPC Write stream over a unix socket, against `openssl dgst -sha256` of the
//! same file (the hashing floor), all in one run.
//!
//! Usage: `ingest-bench [--size-mib N] [--runs N] [--dir DIR]`. Prints MB/s per path and
//! the ratio to the floor; medians over the runs.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use strata_content::service::{ContentService, StoreCell};
use strata_content::{Ingester, Labels, LocalStore, Manager, Scope, StoreOptions, WriterOptions};
use strata_proto::containerd::services::content::v1 as pb;
use strata_proto::containerd::services::content::v1::content_client::ContentClient;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::{Endpoint, Uri};

const CHUNK: usize = 1 << 20;

struct Args {
    size_mib: usize,
    runs: usize,
    dir: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        size_mib: 1024,
        runs: 3,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().context("missing value");
        match arg.as_str() {
            "--size-mib" => a.size_mib = val()?.parse()?,
            "--runs" => a.runs = val()?.parse()?,
            "--dir" => a.dir = Some(val()?.into()),
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
                data: buf,
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
    let store = LocalStore::open(&dir.path().join("root"), StoreOptions::default())?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let sock = dir.path().join("bench.sock");
    let client = rt.block_on(async {
        let listener = UnixListener::bind(&sock)?;
        let svc = ContentService::new(StoreCell::ready(store.clone())).into_server();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        let path = sock.clone();
        let ch = Endpoint::try_from("http://bench.invalid")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
            }))
            .await?;
        anyhow::Ok(
            ContentClient::new(ch)
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
        )
    })?;

    // Check correctness once before timing.
    let mut check = store.writer(
        &Scope::ns("bench"),
        WriterOptions {
            r#ref: "check".into(),
            ..Default::default()
        },
    )?;
    let mut f = File::open(&input)?;
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
    store.delete(&Scope::ns("bench"), &strata_proto::Digest::parse(&got)?)?;

    let (mut floor, mut inproc, mut grpc, mut hash) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        floor.push(time_openssl(&input)?);
        hash.push(time_hash_only(&input)?);
        inproc.push(time_in_process(&store, &input, run)?);
        grpc.push(rt.block_on(time_grpc(&client, &input, run))?);
    }
    let bytes = size as u64;
    let (f, i, g, h) = (median(floor), median(inproc), median(grpc), median(hash));
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
