//! `strata snapshots ...`: the snapshots.v1 API from the command line, output as
//! `ctr snapshots`.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use strata_proto::containerd::services::snapshots::v1 as pb;
use strata_proto::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use strata_proto::containerd::types::Mount;
use strata_proto::time::from_timestamp;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::{Client, human_size, parse_label, rfc3339, rpc};

/// The snapshots client, sending the CLI's namespace (so strata's own snapshots show).
type Api = SnapshotsClient<InterceptedService<Channel, crate::cli::NamespaceInterceptor>>;

/// `strata snapshots [--snapshotter S] <command>`.
#[derive(Args, Debug)]
pub(crate) struct SnapshotsArgs {
    /// Snapshotter to address ("" = the daemon's default).
    #[arg(long, env = "STRATA_SNAPSHOTTER", default_value = "")]
    snapshotter: String,
    #[command(subcommand)]
    cmd: SnapshotsCmd,
}

#[derive(Subcommand, Debug)]
enum SnapshotsCmd {
    /// List snapshots (KEY, PARENT, KIND).
    #[command(alias = "list")]
    Ls {
        /// containerd filters (repeat for OR), e.g. `kind==active`.
        #[arg(long = "filter")]
        filters: Vec<String>,
    },
    /// Print a snapshot's metadata as JSON.
    Info { key: String },
    /// Print the snapshots as a tree of parents and children.
    Tree,
    /// Disk usage of snapshots (all, or the given keys).
    Usage {
        keys: Vec<String>,
        /// Print bytes instead of human-readable sizes.
        #[arg(short = 'b')]
        bytes: bool,
    },
    /// Print the mount commands for an active snapshot or view.
    Mounts { target: String, key: String },
    /// Create an active snapshot.
    Prepare {
        key: String,
        parent: Option<String>,
        /// Print the mount commands for this target.
        #[arg(long)]
        target: Option<String>,
        /// Labels KEY=VALUE.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Create a read-only view.
    View {
        key: String,
        parent: Option<String>,
        /// Print the mount commands for this target.
        #[arg(long)]
        target: Option<String>,
        /// Labels KEY=VALUE.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Commit an active snapshot as NAME.
    Commit {
        name: String,
        key: String,
        /// Labels KEY=VALUE.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Remove snapshots.
    #[command(alias = "remove", alias = "delete", alias = "del")]
    Rm {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Set labels (KEY=VALUE) or clear them (KEY= or KEY).
    Label { key: String, labels: Vec<String> },
    /// Remove directories no snapshot refers to.
    Cleanup,
}

fn kind_name(k: i32) -> &'static str {
    match pb::Kind::try_from(k) {
        Ok(pb::Kind::View) => "View",
        Ok(pb::Kind::Active) => "Active",
        Ok(pb::Kind::Committed) => "Committed",
        _ => "Unknown",
    }
}

fn labels_in(args: &[String]) -> anyhow::Result<HashMap<String, String>> {
    args.iter().map(|l| parse_label(l)).collect()
}

/// `mount -t T SOURCE TARGET -o OPTS` lines, as `ctr snapshots mounts` prints them.
fn print_mounts(target: &str, mounts: &[Mount]) {
    for m in mounts {
        println!(
            "mount -t {} {} {} -o {}",
            m.r#type,
            m.source,
            target,
            m.options.join(",")
        );
    }
}

impl SnapshotsArgs {
    pub(crate) async fn run(self, c: &Client) -> anyhow::Result<()> {
        let sn = self.snapshotter;
        let mut api = SnapshotsClient::with_interceptor(c.channel(), c.namespace_interceptor());
        match self.cmd {
            SnapshotsCmd::Ls { filters } => {
                let infos = list(&mut api, &sn, filters).await?;
                let rows: Vec<[String; 3]> = infos
                    .iter()
                    .map(|i| [i.name.clone(), i.parent.clone(), kind_name(i.kind).into()])
                    .collect();
                table(&["KEY", "PARENT", "KIND"], &rows);
            }
            SnapshotsCmd::Info { key } => {
                let i = stat(&mut api, &sn, &key).await?;
                println!("{}", info_json(&i)?);
            }
            SnapshotsCmd::Tree => {
                let infos = list(&mut api, &sn, vec![]).await?;
                print!("{}", tree(&infos));
            }
            SnapshotsCmd::Usage { keys, bytes } => {
                let keys = if keys.is_empty() {
                    list(&mut api, &sn, vec![])
                        .await?
                        .into_iter()
                        .map(|i| i.name)
                        .collect()
                } else {
                    keys
                };
                let mut rows = Vec::new();
                for key in keys {
                    let u = api
                        .usage(pb::UsageRequest {
                            snapshotter: sn.clone(),
                            key: key.clone(),
                        })
                        .await
                        .map_err(|s| rpc(&format!("usage of {key}"), &s))?
                        .into_inner();
                    let size = if bytes {
                        u.size.to_string()
                    } else {
                        human_size(u.size)
                    };
                    rows.push([key, size, u.inodes.to_string()]);
                }
                table(&["KEY", "SIZE", "INODES"], &rows);
            }
            SnapshotsCmd::Mounts { target, key } => {
                let m = api
                    .mounts(pb::MountsRequest {
                        snapshotter: sn,
                        key: key.clone(),
                    })
                    .await
                    .map_err(|s| rpc(&format!("mounts of {key}"), &s))?
                    .into_inner();
                print_mounts(&target, &m.mounts);
            }
            SnapshotsCmd::Prepare {
                key,
                parent,
                target,
                labels,
            } => {
                let m = api
                    .prepare(pb::PrepareSnapshotRequest {
                        snapshotter: sn,
                        key: key.clone(),
                        parent: parent.unwrap_or_default(),
                        labels: labels_in(&labels)?,
                    })
                    .await
                    .map_err(|s| rpc(&format!("prepare {key}"), &s))?
                    .into_inner();
                if let Some(t) = target {
                    print_mounts(&t, &m.mounts);
                }
            }
            SnapshotsCmd::View {
                key,
                parent,
                target,
                labels,
            } => {
                let m = api
                    .view(pb::ViewSnapshotRequest {
                        snapshotter: sn,
                        key: key.clone(),
                        parent: parent.unwrap_or_default(),
                        labels: labels_in(&labels)?,
                    })
                    .await
                    .map_err(|s| rpc(&format!("view {key}"), &s))?
                    .into_inner();
                if let Some(t) = target {
                    print_mounts(&t, &m.mounts);
                }
            }
            SnapshotsCmd::Commit { name, key, labels } => {
                api.commit(pb::CommitSnapshotRequest {
                    snapshotter: sn,
                    name,
                    key: key.clone(),
                    labels: labels_in(&labels)?,
                    parent: String::new(),
                })
                .await
                .map_err(|s| rpc(&format!("commit {key}"), &s))?;
            }
            SnapshotsCmd::Rm { keys } => {
                let mut failed = 0;
                for key in keys {
                    let r = api
                        .remove(pb::RemoveSnapshotRequest {
                            snapshotter: sn.clone(),
                            key: key.clone(),
                        })
                        .await;
                    if let Err(s) = r {
                        eprintln!("error: {:#}", rpc(&format!("remove {key}"), &s));
                        failed += 1;
                    }
                }
                if failed > 0 {
                    bail!("{failed} snapshot(s) not removed");
                }
            }
            SnapshotsCmd::Label { key, labels } => {
                let mut set = HashMap::new();
                let mut paths = Vec::new();
                for l in &labels {
                    let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                    if k.is_empty() {
                        bail!("label {l:?} has an empty key");
                    }
                    paths.push(format!("labels.{k}"));
                    if !v.is_empty() {
                        set.insert(k.to_owned(), v.to_owned());
                    }
                }
                let i = api
                    .update(pb::UpdateSnapshotRequest {
                        snapshotter: sn,
                        info: Some(pb::Info {
                            name: key.clone(),
                            labels: set,
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask { paths }),
                    })
                    .await
                    .map_err(|s| rpc(&format!("label {key}"), &s))?
                    .into_inner()
                    .info
                    .ok_or_else(|| anyhow!("the daemon returned no info"))?;
                let l: BTreeMap<_, _> = i.labels.into_iter().collect();
                for (k, v) in l {
                    println!("{k}={v}");
                }
            }
            SnapshotsCmd::Cleanup => {
                api.cleanup(pb::CleanupRequest { snapshotter: sn })
                    .await
                    .map_err(|s| rpc("cleanup", &s))?;
            }
        }
        Ok(())
    }
}

async fn list(api: &mut Api, sn: &str, filters: Vec<String>) -> anyhow::Result<Vec<pb::Info>> {
    let mut stream = api
        .list(pb::ListSnapshotsRequest {
            snapshotter: sn.to_owned(),
            filters,
        })
        .await
        .map_err(|s| rpc("list snapshots", &s))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream
        .message()
        .await
        .map_err(|s| rpc("list snapshots", &s))?
    {
        out.extend(batch.info);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn stat(api: &mut Api, sn: &str, key: &str) -> anyhow::Result<pb::Info> {
    api.stat(pb::StatSnapshotRequest {
        snapshotter: sn.to_owned(),
        key: key.to_owned(),
    })
    .await
    .map_err(|s| rpc(&format!("stat {key}"), &s))?
    .into_inner()
    .info
    .context("the daemon returned no info")
}

/// `ctr snapshots info`'s JSON: Kind, Name, Parent, Labels, Created, Updated.
fn info_json(i: &pb::Info) -> anyhow::Result<String> {
    let time = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map(|t| rfc3339(from_timestamp(t)))
            .unwrap_or_default()
    };
    let labels: BTreeMap<_, _> = i.labels.iter().collect();
    let mut v = serde_json::Map::new();
    v.insert("Kind".into(), kind_name(i.kind).into());
    v.insert("Name".into(), i.name.clone().into());
    if !i.parent.is_empty() {
        v.insert("Parent".into(), i.parent.clone().into());
    }
    if !labels.is_empty() {
        v.insert("Labels".into(), serde_json::to_value(labels)?);
    }
    v.insert("Created".into(), time(&i.created_at).into());
    v.insert("Updated".into(), time(&i.updated_at).into());
    Ok(serde_json::to_string_pretty(&v)?)
}

/// Parents before children, children indented under them with `\_ `, as `ctr snapshots
/// tree`.
fn tree(infos: &[pb::Info]) -> String {
    let names: std::collections::HashSet<&str> = infos.iter().map(|i| i.name.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut roots = Vec::new();
    for i in infos {
        if i.parent.is_empty() || !names.contains(i.parent.as_str()) {
            roots.push(i.name.as_str());
        } else {
            children.entry(i.parent.as_str()).or_default().push(&i.name);
        }
    }
    let mut out = String::new();
    let mut stack: Vec<(&str, usize)> = roots.into_iter().rev().map(|r| (r, 0)).collect();
    while let Some((name, depth)) = stack.pop() {
        if depth == 0 {
            out.push_str(name);
        } else {
            out.push_str(&format!("{}\\_ {name}", "  ".repeat(depth)));
        }
        out.push('\n');
        if let Some(c) = children.get(name) {
            stack.extend(c.iter().rev().map(|c| (*c, depth + 1)));
        }
    }
    out
}

/// Left-aligned columns separated by at least three spaces, as Go's tabwriter in ctr.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut width = header.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = width[i]));
            }
        }
        s.trim_end().to_owned()
    };
    println!("{}", line(header.to_vec()));
    for r in rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, parent: &str) -> pb::Info {
        pb::Info {
            name: name.into(),
            parent: parent.into(),
            ..Default::default()
        }
    }

    #[test]
    fn tree_nests_children_under_parents() {
        let t = tree(&[
            info("c", "b"),
            info("a", ""),
            info("b", "a"),
            info("v", "a"),
            info("orphan", "gone"),
        ]);
        assert_eq!(t, "a\n  \\_ b\n    \\_ c\n  \\_ v\norphan\n");
    }

    #[test]
    fn info_json_has_ctr_fields() {
        let mut i = info("n", "p");
        i.kind = pb::Kind::Committed as i32;
        i.labels.insert("k\"".into(), "v\n".into());
        let j: serde_json::Value = serde_json::from_str(&info_json(&i).unwrap()).unwrap();
        assert_eq!(j["Kind"], "Committed");
        assert_eq!(j["Parent"], "p");
        assert_eq!(j["Labels"]["k\""], "v\n");
    }
}
