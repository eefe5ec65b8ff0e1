//! `strata convert --estargz SRC DST`: rewrites an image's layers as eStargz, registry to
//! registry, with the registry settings pulls use. It needs no daemon.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use strata_puller::registry::{Credentials, Platform, Reference};
use strata_puller::service::RegistrySettings;
use strata_snapshotter::estargz::WriteOptions;

/// `strata convert`.
#[derive(Args, Debug)]
pub(crate) struct ConvertArgs {
    /// Convert every layer to eStargz (the only conversion there is; required).
    #[arg(long, required = true)]
    estargz: bool,
    /// A file of paths (one per line) the workload reads first: they go before the
    /// `.prefetch.landmark` and are fetched when a layer is mounted.
    #[arg(long)]
    prefetch_from: Option<PathBuf>,
    /// Uncompressed bytes per chunk.
    #[arg(long, default_value_t = 4 << 20)]
    chunk_size: u64,
    /// Platform to convert from a multi-platform image (os/arch[/variant]).
    #[arg(long, default_value = "")]
    platform: String,
    /// Talk to registries without a hosts.toml over plain http.
    #[arg(long)]
    plain_http: bool,
    /// Registry credentials "user:password" (for both).
    #[arg(long, env = "STRATA_REGISTRY_USER", hide_env_values = true)]
    user: Option<String>,
    /// The image to convert.
    src: String,
    /// Where to push the converted image.
    dst: String,
}

impl ConvertArgs {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let src = Reference::parse(&self.src)?;
        let dst = Reference::parse(&self.dst)?;
        let platform = if self.platform.is_empty() {
            Platform::host()
        } else {
            Platform::parse(&self.platform)?
        };
        let prefetch = match &self.prefetch_from {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("read {}", p.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| l.trim_start_matches('/').to_owned())
                .collect(),
            None => Vec::new(),
        };
        let opts = WriteOptions {
            chunk_size: self.chunk_size,
            prefetch,
            ..WriteOptions::default()
        };
        let user = self
            .user
            .as_deref()
            .map(Credentials::parse_user_pass)
            .transpose()?;
        let client = RegistrySettings::default().client(self.plain_http, user)?;
        let rt = tokio::runtime::Handle::current();
        let converted = tokio::task::spawn_blocking(move || {
            strata_puller::convert::convert_estargz(&rt, &client, &src, &dst, &platform, &opts)
        })
        .await??;
        for l in &converted.layers {
            println!(
                "layer {} -> {} ({} bytes, toc {})",
                l.from, l.digest, l.size, l.toc_digest
            );
        }
        println!("{}: converted {}", self.dst, converted.manifest);
        Ok(())
    }
}
