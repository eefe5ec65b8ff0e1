//! `strata pull` (progress bars on a terminal, one line per layer state otherwise) and
//! `strata images ...`.

use anyhow::bail;
use clap::{Args, Subcommand};
use strata_proto::strata::v1 as pb;
use strata_proto::strata::v1::images_client::ImagesClient;

use crate::cli::{Client, human_size, rpc};

/// `strata pull [flags] REF...`: several references are pulled at once.
#[derive(Args, Debug)]
pub(crate) struct PullArgs {
    /// Image references.
    #[arg(required = true)]
    refs: Vec<String>,
    /// Talk to the registry over plain http.
    #[arg(long)]
    plain_http: bool,
    /// Platform to pull from a multi-platform image (os/arch[/variant]).
    #[arg(long, default_value = "")]
    platform: String,
    /// Snapshotter to unpack into ("" = the daemon's default).
    #[arg(long, env = "STRATA_SNAPSHOTTER", default_value = "")]
    snapshotter: String,
    /// Fetch only; do not unpack.
    #[arg(long)]
    no_unpack: bool,
    /// Mount eStargz layers lazily (the `lazy` snapshotter), unpack the others.
    #[arg(long, conflicts_with = "no_unpack")]
    lazy: bool,
    /// Layers downloaded at once per image.
    #[arg(long, default_value_t = 3)]
    max_concurrent_downloads: u32,
    /// Registry credentials "user:password".
    #[arg(long, env = "STRATA_REGISTRY_USER", hide_env_values = true)]
    user: Option<String>,
}

impl PullArgs {
    pub(crate) async fn run(self, c: &Client) -> anyhow::Result<()> {
        use std::io::IsTerminal as _;
        let multi = std::io::stdout()
            .is_terminal()
            .then(indicatif::MultiProgress::new);
        let snapshotter = crate::cli::lazy_snapshotter(self.lazy, &self.snapshotter)?;
        let mut tasks = Vec::new();
        for r in &self.refs {
            let multi = multi.clone();
            let req = pb::PullRequest {
                reference: r.clone(),
                plain_http: self.plain_http,
                platform: self.platform.clone(),
                snapshotter: snapshotter.clone(),
                no_unpack: self.no_unpack,
                max_concurrent_downloads: self.max_concurrent_downloads,
                user: self.user.clone().unwrap_or_default(),
            };
            let mut api = ImagesClient::new(c.channel());
            let req = c.req(req);
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                let mut stream = api
                    .pull(req)
                    .await
                    .map_err(|s| rpc(&format!("pull {r}"), &s))?
                    .into_inner();
                let mut last_states: Vec<String> = Vec::new();
                let mut last: Option<pb::PullProgress> = None;
                let mut bars: Vec<indicatif::ProgressBar> = Vec::new();
                while let Some(p) = stream
                    .message()
                    .await
                    .map_err(|s| rpc(&format!("pull {r}"), &s))?
                {
                    // On a terminal: a bar per layer.
                    if let Some(multi) = &multi {
                        while bars.len() < p.layers.len() {
                            let l = &p.layers[bars.len()];
                            let b = multi.add(indicatif::ProgressBar::new(l.size.max(0) as u64));
                            b.set_style(bar_style());
                            b.set_prefix(format!("{} {}", p.name, short(&l.digest)));
                            bars.push(b);
                        }
                        for (b, l) in bars.iter().zip(&p.layers) {
                            b.set_position(l.fetched.max(0) as u64);
                            b.set_message(l.state.clone());
                        }
                        last = Some(p);
                        continue;
                    }
                    // Otherwise plain lines: one per layer state change.
                    for l in &p.layers {
                        let line = format!(
                            "{}: layer {} {} {}/{}",
                            p.name,
                            short(&l.digest),
                            l.state,
                            human_size(l.fetched),
                            human_size(l.size)
                        );
                        let i = l.index as usize;
                        if last_states.len() <= i {
                            last_states.resize(i + 1, String::new());
                        }
                        if last_states[i] != l.state {
                            last_states[i] = l.state.clone();
                            println!("{line}");
                        }
                    }
                    last = Some(p);
                }
                for b in &bars {
                    b.finish();
                }
                let Some(p) = last else {
                    bail!("pull {r}: the daemon sent no progress");
                };
                if p.stage != "done" {
                    bail!("pull {r}: ended at stage {}", p.stage);
                }
                println!("{}: pulled {}", p.name, p.digest);
                if !p.chain_id.is_empty() {
                    println!("{}: unpacked as {}", p.name, p.chain_id);
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        let mut failed = 0;
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    eprintln!("error: {e:#}");
                    failed += 1;
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    failed += 1;
                }
            }
        }
        if failed > 0 {
            bail!("{failed} of {} pulls failed", self.refs.len());
        }
        Ok(())
    }
}

fn bar_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn short(d: &str) -> &str {
    let hex = d.split_once(':').map_or(d, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

/// `strata images ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum ImagesCmd {
    /// List images (REF, TYPE, DIGEST, SIZE).
    #[command(alias = "list")]
    Ls {
        /// Print names only.
        #[arg(short)]
        quiet: bool,
        /// containerd filters, e.g. `name~=busybox`.
        filters: Vec<String>,
    },
    /// Print an image record.
    Inspect { name: String },
    /// Remove images (their blobs become collectable).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

impl ImagesCmd {
    pub(crate) async fn run(self, c: &Client) -> anyhow::Result<()> {
        let mut api = ImagesClient::new(c.channel());
        match self {
            ImagesCmd::Ls { quiet, filters } => {
                let r = api
                    .list(c.req(pb::ListImagesRequest { filters }))
                    .await
                    .map_err(|s| rpc("list images", &s))?
                    .into_inner();
                if !quiet {
                    println!("REF\tTYPE\tDIGEST\tSIZE");
                }
                for i in r.images {
                    if quiet {
                        println!("{}", i.name);
                        continue;
                    }
                    let t = i.target.unwrap_or_default();
                    println!(
                        "{}\t{}\t{}\t{}",
                        i.name,
                        t.media_type,
                        t.digest,
                        human_size(t.size)
                    );
                }
            }
            ImagesCmd::Inspect { name } => {
                let i = api
                    .get(c.req(pb::GetImageRequest { name: name.clone() }))
                    .await
                    .map_err(|s| rpc(&format!("get image {name}"), &s))?
                    .into_inner();
                let t = i.target.unwrap_or_default();
                let mut v = serde_json::Map::new();
                v.insert("Name".into(), i.name.into());
                v.insert(
                    "Target".into(),
                    serde_json::json!({"MediaType": t.media_type, "Digest": t.digest, "Size": t.size}),
                );
                let labels: std::collections::BTreeMap<_, _> = i.labels.into_iter().collect();
                v.insert("Labels".into(), serde_json::to_value(labels)?);
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            ImagesCmd::Rm { names } => {
                let mut failed = 0;
                for name in names {
                    match api
                        .delete(c.req(pb::DeleteImageRequest { name: name.clone() }))
                        .await
                    {
                        Ok(_) => println!("{name}"),
                        Err(s) => {
                            eprintln!("error: {:#}", rpc(&format!("remove image {name}"), &s));
                            failed += 1;
                        }
                    }
                }
                if failed > 0 {
                    bail!("{failed} image(s) not removed");
                }
            }
        }
        Ok(())
    }
}
