//! Client commands: `strata content ...`, `strata leases ...`, `strata gc`, `strata version`
//! (`strata snapshots ...` is in [`crate::snapshots`]).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use clap::Subcommand;
use strata_proto::containerd::services::content::v1 as pb;
use strata_proto::containerd::services::content::v1::content_client::ContentClient;
use strata_proto::containerd::services::leases::v1 as lpb;
use strata_proto::containerd::services::leases::v1::leases_client::LeasesClient;
use strata_proto::strata::v1::admin_client::AdminClient;
use strata_proto::time::from_timestamp;
use strata_proto::{Digest, NAMESPACE_HEADER};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// A connection to the daemon plus the namespace requests carry.
#[derive(Clone)]
pub(crate) struct Client {
    channel: Channel,
    namespace: String,
}

/// Adds the namespace header, when there is one, to each request.
#[derive(Clone)]
pub(crate) struct NamespaceInterceptor(
    Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
);

impl tonic::service::Interceptor for NamespaceInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(NAMESPACE_HEADER, v.clone());
        }
        Ok(req)
    }
}

/// Turns a gRPC status into an error that reads like the rest of the chain.
pub(crate) fn rpc(what: &str, s: &tonic::Status) -> anyhow::Error {
    anyhow!("{} ({:?})", s.message(), s.code()).context(what.to_owned())
}

impl Client {
    /// Connects to the daemon's unix socket.
    pub(crate) async fn connect(address: &Path, namespace: &str) -> anyhow::Result<Self> {
        let channel = strata_proto::transport::connect_unix(address)
            .await
            .with_context(|| format!("connect to strata daemon at {}", address.display()))?;
        Ok(Client {
            channel,
            namespace: namespace.to_owned(),
        })
    }

    pub(crate) fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if !self.namespace.is_empty()
            && let Ok(v) = self.namespace.parse()
        {
            r.metadata_mut().insert(NAMESPACE_HEADER, v);
        }
        r
    }

    fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }

    /// An interceptor adding this client's namespace header to every request.
    pub(crate) fn namespace_interceptor(&self) -> NamespaceInterceptor {
        NamespaceInterceptor(
            (!self.namespace.is_empty())
                .then(|| self.namespace.parse().ok())
                .flatten(),
        )
    }

    /// The connection, for service clients defined elsewhere.
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }

    /// `strata gc`.
    pub(crate) async fn gc(&self) -> anyhow::Result<()> {
        let r = AdminClient::new(self.channel.clone())
            .garbage_collect(())
            .await
            .map_err(|s| rpc("garbage collect", &s))?
            .into_inner();
        println!(
            "removed {} records, {} blobs, {} ingests, {} leases, {} snapshots",
            r.records, r.blobs, r.ingests, r.leases, r.snapshots
        );
        Ok(())
    }

    /// `strata version`.
    pub(crate) async fn version(&self) -> anyhow::Result<()> {
        let r = AdminClient::new(self.channel.clone())
            .version(())
            .await
            .map_err(|s| rpc("version", &s))?
            .into_inner();
        println!(
            "strata {} (client {})",
            r.version,
            env!("CARGO_PKG_VERSION")
        );
        println!("root: {}", r.root);
        for s in r.services {
            println!("serves: {s}");
        }
        for s in r.snapshotters {
            let caps = if s.capabilities.is_empty() {
                "-".to_owned()
            } else {
                s.capabilities.join(",")
            };
            println!(
                "snapshotter: {} capabilities={caps} whiteouts={} root={}",
                s.name, s.whiteouts, s.root
            );
        }
        Ok(())
    }
}

/// The snapshotter a `--lazy` pull or run uses: the `lazy` backend, which mounts eStargz
/// layers lazily and unpacks the others.
pub(crate) fn lazy_snapshotter(lazy: bool, snapshotter: &str) -> anyhow::Result<String> {
    match (lazy, snapshotter) {
        (false, s) => Ok(s.to_owned()),
        (true, "" | "lazy") => Ok("lazy".to_owned()),
        (true, other) => anyhow::bail!("--lazy needs the lazy snapshotter, not {other:?}"),
    }
}

pub(crate) fn parse_label(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("label {s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        bail!("label {s:?} has an empty key");
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn parse_digest(s: &str) -> anyhow::Result<Digest> {
    Digest::parse(s).with_context(|| format!("invalid digest {s:?}"))
}

fn age(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else { return "-".into() };
    let secs = SystemTime::now()
        .duration_since(from_timestamp(t))
        .unwrap_or_default()
        .as_secs();
    match secs {
        0..=59 => format!("{secs} seconds"),
        60..=3599 => format!("{} minutes", secs / 60),
        3600..=172_799 => format!("{} hours", secs / 3600),
        _ => format!("{} days", secs / 86400),
    }
}

pub(crate) fn human_size(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn labels_str(l: &HashMap<String, String>) -> String {
    let mut v: Vec<_> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// `strata content ...`
#[derive(Subcommand, Debug)]
pub(crate) enum ContentCmd {
    /// List content (optionally filtered, e.g. `labels."containerd.io/gc.root"`).
    Ls {
        /// Print only digests.
        #[arg(short, long)]
        quiet: bool,
        /// Filters (OR of filters; commas inside one are AND).
        filters: Vec<String>,
    },
    /// Write a blob's bytes to stdout.
    Get {
        /// The blob's digest.
        digest: String,
    },
    /// Ingest stdin as a blob; resumes an interrupted ingest of the same ref.
    Ingest {
        /// The ingest ref (resumable key).
        #[arg(long = "ref")]
        r#ref: String,
        /// Expected digest; the commit fails if the bytes differ.
        #[arg(long)]
        expected: Option<String>,
        /// Expected size in bytes.
        #[arg(long, default_value_t = 0)]
        size: i64,
        /// Labels to set, KEY=VALUE.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Do not add the `containerd.io/gc.root` label that keeps the blob from GC.
        #[arg(long)]
        no_gc_root: bool,
    },
    /// Remove blobs.
    Rm {
        /// Digests to remove.
        #[arg(required = true)]
        digests: Vec<String>,
    },
    /// Set (KEY=VALUE) or remove (KEY=) labels of a blob.
    Label {
        /// The blob's digest.
        digest: String,
        /// Labels.
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// List active ingests.
    Active {
        /// Filters on `ref`.
        filters: Vec<String>,
    },
    /// Abort an active ingest.
    Abort {
        /// The ingest ref.
        r#ref: String,
    },
}

impl ContentCmd {
    /// Runs the command.
    pub(crate) async fn run(self, c: &Client) -> anyhow::Result<()> {
        let mut cc = c.content();
        match self {
            ContentCmd::Ls { quiet, filters } => {
                let mut s = cc
                    .list(c.req(pb::ListContentRequest { filters }))
                    .await
                    .map_err(|s| rpc("list content", &s))?
                    .into_inner();
                let mut out = std::io::stdout().lock();
                if !quiet {
                    writeln!(out, "DIGEST\tSIZE\tAGE\tLABELS")?;
                }
                while let Some(m) = s.message().await.map_err(|s| rpc("list content", &s))? {
                    for i in m.info {
                        if quiet {
                            writeln!(out, "{}", i.digest)?;
                        } else {
                            writeln!(
                                out,
                                "{}\t{}\t{}\t{}",
                                i.digest,
                                human_size(i.size),
                                age(i.created_at.as_ref()),
                                labels_str(&i.labels)
                            )?;
                        }
                    }
                }
            }
            ContentCmd::Get { digest } => {
                let d = parse_digest(&digest)?;
                let mut s = cc
                    .read(c.req(pb::ReadContentRequest {
                        digest: d.to_string(),
                        offset: 0,
                        size: 0,
                    }))
                    .await
                    .map_err(|s| rpc(&format!("read {d}"), &s))?
                    .into_inner();
                let mut out = std::io::stdout().lock();
                while let Some(m) = s
                    .message()
                    .await
                    .map_err(|s| rpc(&format!("read {d}"), &s))?
                {
                    out.write_all(&m.data)?;
                }
                out.flush()?;
            }
            ContentCmd::Ingest {
                r#ref,
                expected,
                size,
                labels,
                no_gc_root,
            } => {
                let expected = expected.as_deref().map(parse_digest).transpose()?;
                let mut labels: HashMap<String, String> = labels
                    .iter()
                    .map(|l| parse_label(l))
                    .collect::<anyhow::Result<_>>()?;
                if !no_gc_root {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                    labels
                        .entry(strata_content::GC_ROOT.to_owned())
                        .or_insert_with(|| now.to_string());
                }
                let d = ingest(c, &r#ref, expected, size, labels, std::io::stdin()).await?;
                println!("{d}");
            }
            ContentCmd::Rm { digests } => {
                for d in digests {
                    let d = parse_digest(&d)?;
                    cc.delete(c.req(pb::DeleteContentRequest {
                        digest: d.to_string(),
                    }))
                    .await
                    .map_err(|s| rpc(&format!("remove {d}"), &s))?;
                    println!("{d}");
                }
            }
            ContentCmd::Label { digest, labels } => {
                let d = parse_digest(&digest)?;
                let mut map = HashMap::new();
                let mut paths = Vec::new();
                for l in &labels {
                    let (k, v) = parse_label(l)?;
                    paths.push(format!("labels.{k}"));
                    if !v.is_empty() {
                        map.insert(k, v);
                    }
                }
                let info = cc
                    .update(c.req(pb::UpdateRequest {
                        info: Some(pb::Info {
                            digest: d.to_string(),
                            labels: map,
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask { paths }),
                    }))
                    .await
                    .map_err(|s| rpc(&format!("label {d}"), &s))?
                    .into_inner()
                    .info
                    .unwrap_or_default();
                println!("{}\t{}", info.digest, labels_str(&info.labels));
            }
            ContentCmd::Active { filters } => {
                let r = cc
                    .list_statuses(c.req(pb::ListStatusesRequest { filters }))
                    .await
                    .map_err(|s| rpc("list ingests", &s))?
                    .into_inner();
                println!("REF\tSIZE\tTOTAL\tUPDATED");
                for s in r.statuses {
                    println!(
                        "{}\t{}\t{}\t{}",
                        s.r#ref,
                        s.offset,
                        s.total,
                        age(s.updated_at.as_ref())
                    );
                }
            }
            ContentCmd::Abort { r#ref } => {
                cc.abort(c.req(pb::AbortRequest {
                    r#ref: r#ref.clone(),
                }))
                .await
                .map_err(|s| rpc(&format!("abort {ref}"), &s))?;
            }
        }
        Ok(())
    }
}

/// Streams `input` into the ingest `ref` over one Write stream: STAT for the resume
/// offset, skip that many input bytes, pipelined WRITEs, then COMMIT.
pub(crate) async fn ingest(
    c: &Client,
    r#ref: &str,
    expected: Option<Digest>,
    size: i64,
    labels: HashMap<String, String>,
    input: impl Read + Send + 'static,
) -> anyhow::Result<String> {
    let what = format!("ingest {ref}");
    let (tx, rx) = mpsc::channel::<pb::WriteContentRequest>(8);
    tx.send(pb::WriteContentRequest {
        action: pb::WriteAction::Stat as i32,
        r#ref: r#ref.to_owned(),
        total: size,
        expected: expected
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        ..Default::default()
    })
    .await?;
    let mut resp = c
        .content()
        .write(c.req(ReceiverStream::new(rx)))
        .await
        .map_err(|s| rpc(&what, &s))?
        .into_inner();
    let stat = match resp.message().await {
        Ok(Some(m)) => m,
        Ok(None) => bail!("{what}: stream ended"),
        Err(s) if s.code() == Code::AlreadyExists => {
            return expected
                .map(|d| d.to_string())
                .ok_or_else(|| rpc(&what, &s));
        }
        Err(s) => return Err(rpc(&what, &s)),
    };
    let resume = u64::try_from(stat.offset).unwrap_or(0);
    // Read stdin on a blocking thread; the channel gives back-pressure.
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        let mut input = input;
        let mut skip = resume;
        loop {
            let mut buf = vec![0u8; 1 << 20];
            match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if skip > 0 {
                        let s = usize::try_from(skip.min(n as u64)).unwrap_or(n);
                        buf.drain(..s);
                        skip -= s as u64;
                        if buf.is_empty() {
                            continue;
                        }
                    }
                    if chunks_tx.blocking_send(Ok(buf)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = chunks_tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    let mut offset = resume;
    let mut in_flight = 0usize;
    while let Some(chunk) = chunks_rx.recv().await {
        let data = chunk.context("read input")?;
        let n = data.len() as u64;
        if tx
            .send(pb::WriteContentRequest {
                action: pb::WriteAction::Write as i32,
                offset: i64::try_from(offset)?,
                data: data.into(),
                ..Default::default()
            })
            .await
            .is_err()
        {
            // The daemon ended the stream; its reason is on the response side.
            return Err(match resp.message().await {
                Err(s) => rpc(&what, &s),
                Ok(_) => anyhow!("{what}: stream closed by the daemon"),
            });
        }
        offset += n;
        in_flight += 1;
        // Keep a few writes in flight; every write gets one response.
        while in_flight > 4 {
            resp.message().await.map_err(|s| rpc(&what, &s))?;
            in_flight -= 1;
        }
    }
    tx.send(pb::WriteContentRequest {
        action: pb::WriteAction::Commit as i32,
        offset: i64::try_from(offset)?,
        total: i64::try_from(offset)?,
        expected: expected
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        labels,
        ..Default::default()
    })
    .await
    .map_err(|_| anyhow!("{what}: stream closed by the daemon"))?;
    drop(tx);
    let mut last = None;
    while let Some(m) = resp.message().await.map_err(|s| rpc(&what, &s))? {
        last = Some(m);
    }
    let last = last.ok_or_else(|| anyhow!("{what}: no commit response"))?;
    Ok(last.digest)
}

/// `strata leases ...`
#[derive(Subcommand, Debug)]
pub(crate) enum LeasesCmd {
    /// List leases.
    Ls {
        /// Filters (`id`, `labels.*`).
        filters: Vec<String>,
    },
    /// Create a lease and print its id.
    Create {
        /// Lease id (default: generated).
        #[arg(long)]
        id: Option<String>,
        /// Labels, KEY=VALUE.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Expire the lease after this many seconds (`containerd.io/gc.expire`).
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// Delete leases.
    Rm {
        /// Lease ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Collect garbage before returning.
        #[arg(long)]
        sync: bool,
    },
}

pub(crate) use strata_proto::time::format_rfc3339 as rfc3339;

impl LeasesCmd {
    /// Runs the command.
    pub(crate) async fn run(self, c: &Client) -> anyhow::Result<()> {
        let mut lc = c.leases();
        match self {
            LeasesCmd::Ls { filters } => {
                let r = lc
                    .list(c.req(lpb::ListRequest { filters }))
                    .await
                    .map_err(|s| rpc("list leases", &s))?
                    .into_inner();
                println!("ID\tCREATED AT\tLABELS");
                for l in r.leases {
                    let created = l
                        .created_at
                        .as_ref()
                        .map(|t| rfc3339(from_timestamp(t)))
                        .unwrap_or_default();
                    println!("{}\t{}\t{}", l.id, created, labels_str(&l.labels));
                }
            }
            LeasesCmd::Create {
                id,
                labels,
                expires_in,
            } => {
                let id = id.unwrap_or_else(|| {
                    let n = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos();
                    format!("strata-{n}")
                });
                let mut map: HashMap<String, String> = labels
                    .iter()
                    .map(|l| parse_label(l))
                    .collect::<anyhow::Result<_>>()?;
                if let Some(s) = expires_in {
                    map.insert(
                        strata_content::GC_EXPIRE.to_owned(),
                        rfc3339(SystemTime::now() + Duration::from_secs(s)),
                    );
                }
                let r = lc
                    .create(c.req(lpb::CreateRequest { id, labels: map }))
                    .await
                    .map_err(|s| rpc("create lease", &s))?
                    .into_inner();
                println!("{}", r.lease.unwrap_or_default().id);
            }
            LeasesCmd::Rm { ids, sync } => {
                for id in ids {
                    lc.delete(c.req(lpb::DeleteRequest {
                        id: id.clone(),
                        sync,
                    }))
                    .await
                    .map_err(|s| rpc(&format!("delete lease {id}"), &s))?;
                    println!("{id}");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_through_the_gc_parser() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_204_400);
        let s = rfc3339(t);
        assert_eq!(s, "2024-02-29T11:00:00Z");
        assert_eq!(strata_content::parse_rfc3339(&s), Some(t));
    }

    #[test]
    fn labels_parse() {
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_label("a=").unwrap(), ("a".into(), String::new()));
        assert!(parse_label("nokey").is_err());
        assert!(parse_label("=v").is_err());
    }
}
