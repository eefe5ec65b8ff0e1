//! Daemon configuration: an optional TOML file, overridden by command-line flags.
//!
//! ```toml
//! root = "/var/lib/strata"
//! address = "/run/strata/strata.sock"
//!
//! [content]
//! sharing_policy = "shared"      # or "isolated"
//! ingest_expiry_secs = 86400     # unleased ingests of strata's namespaces
//! gc_interval_secs = 600         # 0 disables periodic garbage collection
//!
//! [snapshots]
//! default = "overlayfs"          # backend for unknown or empty snapshotter names (or native,
//!                                # btrfs, lazy: "lazy" behind a containerd proxy plugin)
//! btrfs_root = "/mnt/btrfs/strata"  # a directory on btrfs; enables the btrfs backend
//! lazy_background_fetch_secs = 5 # then a lazy layer's whole blob is fetched; 0: never
//!
//! [registry]
//! hosts_dir = "/etc/containerd/certs.d"     # containerd-style <host>/hosts.toml files
//! docker_config = "/root/.docker/config.json"  # default: $DOCKER_CONFIG or ~/.docker
//!
//! [runtime]
//! runc = "runc"                  # the runc binary (looked up on PATH)
//! shim = "/usr/local/bin/strata-shim"  # default: strata-shim next to the strata binary
//! ```
//!
//! overlayfs and native always live under `<root>/snapshots/`; btrfs is served when
//! `btrfs_root` is set, or when `<root>/snapshots/btrfs` is itself on btrfs.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// Default daemon root.
pub(crate) const DEFAULT_ROOT: &str = "/var/lib/strata";
/// Default socket address.
pub(crate) const DEFAULT_ADDRESS: &str = "/run/strata/strata.sock";

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Root directory.
    pub(crate) root: Option<PathBuf>,
    /// Unix socket to serve on.
    pub(crate) address: Option<PathBuf>,
    /// Content store settings.
    #[serde(default)]
    pub(crate) content: ContentConfig,
    /// Snapshotter settings.
    #[serde(default)]
    pub(crate) snapshots: SnapshotsConfig,
    /// Registry settings for pulls.
    #[serde(default)]
    pub(crate) registry: RegistryConfig,
    /// `[runtime]`.
    #[serde(default)]
    pub(crate) runtime: RuntimeConfig,
}

/// `[runtime]` settings: what runs containers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuntimeConfig {
    /// The runc binary.
    pub(crate) runc: Option<PathBuf>,
    /// The strata-shim binary.
    pub(crate) shim: Option<PathBuf>,
}

/// `[registry]` settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegistryConfig {
    /// Directory of per-registry `hosts.toml` files (containerd's layout).
    pub(crate) hosts_dir: Option<PathBuf>,
    /// Docker `config.json` holding registry credentials.
    pub(crate) docker_config: Option<PathBuf>,
}

/// `[snapshots]` settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotsConfig {
    /// Backend for requests naming no (or an unknown) snapshotter.
    #[serde(default = "default_snapshotter")]
    pub(crate) default: String,
    /// Root of the btrfs backend (must be on a btrfs filesystem).
    pub(crate) btrfs_root: Option<PathBuf>,
    /// Seconds after a lazy layer is mounted before its whole blob is fetched in the
    /// background (default 5; 0: never, reads fetch on demand only).
    pub(crate) lazy_background_fetch_secs: Option<u64>,
}

fn default_snapshotter() -> String {
    "overlayfs".into()
}

impl Default for SnapshotsConfig {
    fn default() -> Self {
        SnapshotsConfig {
            default: default_snapshotter(),
            btrfs_root: None,
            lazy_background_fetch_secs: None,
        }
    }
}

/// `[content]` settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContentConfig {
    /// `shared` or `isolated`.
    #[serde(default = "default_policy")]
    pub(crate) sharing_policy: String,
    /// Seconds an unleased ingest of a named namespace lives after its last write.
    #[serde(default = "default_expiry")]
    pub(crate) ingest_expiry_secs: u64,
    /// Seconds between garbage collections; 0 disables them.
    #[serde(default = "default_gc")]
    pub(crate) gc_interval_secs: u64,
}

fn default_policy() -> String {
    "shared".into()
}
fn default_expiry() -> u64 {
    24 * 3600
}
fn default_gc() -> u64 {
    600
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig {
            sharing_policy: default_policy(),
            ingest_expiry_secs: default_expiry(),
            gc_interval_secs: default_gc(),
        }
    }
}

impl Config {
    /// Reads and parses `path` (at most 1 MiB).
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("read config {}", path.display()))?;
        anyhow::ensure!(
            meta.len() <= 1 << 20,
            "config {} is larger than 1 MiB",
            path.display()
        );
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parse config {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let c: Config = toml::from_str(
            "root = \"/r\"\n[content]\nsharing_policy = \"isolated\"\ngc_interval_secs = 0\n",
        )
        .unwrap();
        assert_eq!(c.root.as_deref(), Some(Path::new("/r")));
        assert_eq!(c.content.sharing_policy, "isolated");
        assert_eq!(c.content.gc_interval_secs, 0);
        assert_eq!(c.content.ingest_expiry_secs, 86400);
        assert_eq!(c.snapshots.default, "overlayfs");
        let c: Config =
            toml::from_str("[snapshots]\ndefault = \"native\"\nbtrfs_root = \"/b\"\n").unwrap();
        assert_eq!(c.snapshots.default, "native");
        assert_eq!(c.snapshots.btrfs_root.as_deref(), Some(Path::new("/b")));
        assert!(toml::from_str::<Config>("[snapshots]\nbogus = 1").is_err());
        let c: Config = toml::from_str("[snapshots]\nlazy_background_fetch_secs = 0\n").unwrap();
        assert_eq!(c.snapshots.lazy_background_fetch_secs, Some(0));
        assert!(
            toml::from_str::<Config>("[snapshots]\nlazy_background_fetch_secs = -1").is_err(),
            "a negative delay is refused"
        );
        let c: Config =
            toml::from_str("[registry]\nhosts_dir = \"/h\"\ndocker_config = \"/d.json\"\n")
                .unwrap();
        assert_eq!(c.registry.hosts_dir.as_deref(), Some(Path::new("/h")));
        assert_eq!(
            c.registry.docker_config.as_deref(),
            Some(Path::new("/d.json"))
        );
        assert!(toml::from_str::<Config>("[registry]\nmirrors = []").is_err());
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        assert!(toml::from_str::<Config>("[content]\ngc_interval_secs = -1").is_err());
        assert!(toml::from_str::<Config>("root = [").is_err());
    }
}
