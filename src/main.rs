//! `strata`: the daemon (`strata serve`) and its command-line client.
//!
//! The client follows `ctr` conventions: `--address` picks the socket, `--namespace` the
//! containerd namespace (an empty namespace addresses the global space that a proxying
//! containerd uses). Errors print their whole cause chain, one cause per line.

mod cli;
mod config;
mod containers;
mod convert;
mod daemon;
mod images;
mod lazy_server;
mod snapshots;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// strata: storage-first container image service.
#[derive(Parser, Debug)]
#[command(name = "strata", version, about)]
struct Args {
    /// Unix socket of the daemon [default: /run/strata/strata.sock].
    #[arg(long, global = true, env = "STRATA_ADDRESS")]
    address: Option<PathBuf>,
    /// containerd namespace of requests ("" = the global space).
    #[arg(
        short = 'n',
        long,
        global = true,
        env = "STRATA_NAMESPACE",
        default_value = "default"
    )]
    namespace: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Root directory (default /var/lib/strata).
        #[arg(long)]
        root: Option<PathBuf>,
        /// TOML configuration file.
        #[arg(long, env = "STRATA_CONFIG")]
        config: Option<PathBuf>,
        /// Log filter (tracing's env-filter syntax), e.g. "info" or "strata_content=debug".
        #[arg(long, env = "STRATA_LOG", default_value = "info")]
        log: String,
    },
    /// Manage content.
    #[command(subcommand)]
    Content(cli::ContentCmd),
    /// Manage leases.
    #[command(subcommand)]
    Leases(cli::LeasesCmd),
    /// Pull images from a registry into the content store and a snapshotter.
    Pull(images::PullArgs),
    /// Manage images.
    #[command(subcommand)]
    Images(images::ImagesCmd),
    /// Convert an image's layers (to eStargz), registry to registry.
    Convert(convert::ConvertArgs),
    /// Manage snapshots.
    Snapshots(snapshots::SnapshotsArgs),
    /// Run a container from an image (pulled if missing) and exit with its status.
    Run(containers::RunArgs),
    /// List containers and their tasks.
    Ps(containers::PsArgs),
    /// Run another process in a running container.
    Exec(containers::ExecArgs),
    /// Signal a container's process.
    Kill(containers::KillArgs),
    /// Freeze every process of a container.
    Pause(containers::PauseArgs),
    /// Thaw a paused container.
    Resume(containers::PauseArgs),
    /// Remove containers (their task, snapshot and logs).
    Rm(containers::RmArgs),
    /// Print a container's output.
    Logs(containers::LogsArgs),
    /// Print events as they happen.
    Events(containers::EventsArgs),
    /// Run the garbage collector now.
    Gc,
    /// Print the daemon's version and services.
    Version,
    /// Serve one lazy layer until it is unmounted (started by the daemon).
    #[command(hide = true)]
    LazyServe {
        /// The layer's mount spec (JSON).
        spec: PathBuf,
        /// containerd-style hosts.toml directory.
        #[arg(long)]
        hosts_dir: PathBuf,
        /// Docker config with credentials.
        #[arg(long)]
        docker_config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<containers::ExitWith>().is_some() => {
            let code = e.downcast_ref::<containers::ExitWith>().map_or(1, |c| c.0);
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Serve { root, config, log } => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::try_new(&log)?)
                .with_writer(std::io::stderr)
                .init();
            let cfg = match &config {
                Some(p) => config::Config::load(p)?,
                None => config::Config::default(),
            };
            let opts = daemon::ServeOptions::from_config(cfg, root, args.address)?;
            daemon::serve(opts).await
        }
        Command::Convert(c) => c.run().await,
        Command::LazyServe {
            spec,
            hosts_dir,
            docker_config,
        } => {
            // The daemon's STRATA_LOG reaches its servers through the environment.
            let log = std::env::var("STRATA_LOG").unwrap_or_else(|_| "info".into());
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::try_new(&log)?)
                .with_writer(std::io::stderr)
                .init();
            let registry = strata_puller::service::RegistrySettings {
                hosts_dir,
                docker_config,
            };
            // Its own runtime and threads: not inside this one.
            tokio::task::spawn_blocking(move || lazy_server::run(&spec, &registry)).await?
        }
        command => {
            let address = args
                .address
                .unwrap_or_else(|| config::DEFAULT_ADDRESS.into());
            let client = cli::Client::connect(&address, &args.namespace).await?;
            match command {
                Command::Content(c) => c.run(&client).await,
                Command::Leases(c) => c.run(&client).await,
                Command::Snapshots(c) => c.run(&client).await,
                Command::Pull(c) => c.run(&client).await,
                Command::Images(c) => c.run(&client).await,
                Command::Run(c) => c.run(&client).await,
                Command::Ps(c) => c.run(&client).await,
                Command::Exec(c) => c.run(&client).await,
                Command::Kill(c) => c.run(&client).await,
                Command::Pause(c) => c.run(&client, true).await,
                Command::Resume(c) => c.run(&client, false).await,
                Command::Rm(c) => c.run(&client).await,
                Command::Logs(c) => c.run(&client).await,
                Command::Events(c) => c.run(&client).await,
                Command::Gc => client.gc().await,
                Command::Version => client.version().await,
                Command::Serve { .. } | Command::Convert(_) | Command::LazyServe { .. } => {
                    unreachable!("handled above")
                }
            }
        }
    }
}
