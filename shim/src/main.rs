//! `strata-shim`: the per-container shim. Started by the daemon through
//! `strata_shim::shim::spawn`; see `strata_shim_runner::shim` for what it does.

use std::path::PathBuf;

use clap::Parser;
use strata_shim::shim::server;

/// The per-container shim of strata: creates the container with runc, keeps its output and
/// exit status, and serves the daemon on `<state>/shim.sock`.
#[derive(Parser)]
#[command(name = "strata-shim")]
struct Cli {
    /// The container id.
    #[arg(long)]
    id: String,
    /// The strata namespace of the container.
    #[arg(long)]
    namespace: String,
    /// The state directory, which is also the OCI bundle.
    #[arg(long)]
    state: PathBuf,
    /// runc's state directory (`runc --root`).
    #[arg(long)]
    runc_root: PathBuf,
    /// The runc binary.
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    /// Give the container's init a terminal.
    #[arg(long)]
    tty: bool,
    /// The terminal's width in columns.
    #[arg(long, requires = "tty", default_value_t = 80)]
    width: u16,
    /// The terminal's height in rows.
    #[arg(long, requires = "tty", default_value_t = 24)]
    height: u16,
}

fn main() {
    let cli = Cli::parse();
    let code = server::main(&server::Args {
        id: cli.id,
        namespace: cli.namespace,
        state_dir: cli.state,
        runc_root: cli.runc_root,
        runc_binary: cli.runc,
        terminal: cli.tty.then_some((cli.width, cli.height)),
    });
    std::process::exit(code);
}
