//! The operator's commands of the one binary — `attache install`, `uninstall`, `inspect` — run by the
//! DaemonSet or by hand on a node. A runtime never reaches here: it always sets `CNI_COMMAND`, and then
//! the binary speaks the CNI protocol ([`crate::cni::skel`]).

pub mod agent;
pub mod inspect;
pub mod install;
pub mod ipam;
pub mod physnets;
pub mod table;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "attache",
    version,
    about = "attache: a CNI meta-plugin giving pods several network interfaces.\n\
             Run by a container runtime (CNI_COMMAND set) it speaks the CNI protocol; these commands are for operators."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Put attache on this node: binary, drop-in names, kubeconfig, and a configuration wrapping the
    /// cluster network, kept current (the DaemonSet's process).
    Install(Box<install::InstallArgs>),
    /// Take attache off this node: its configuration first (the node falls back to the cluster network),
    /// then its binaries.
    Uninstall(install::UninstallArgs),
    /// Show the node's attachments, address pools and leaks; `--gc` releases the leaks.
    #[command(after_help = inspect::AFTER_HELP)]
    Inspect(inspect::InspectArgs),
    /// attache-ipam's upkeep on this node (`attache ipam reconcile`).
    #[command(subcommand)]
    Ipam(ipam::IpamCmd),
    /// The node agent (a DaemonSet container): keeps the node's mirror of NetworkAttachmentDefinitions,
    /// so that ADD reads them from the node's disk. Runs until killed.
    Agent(agent::AgentArgs),
}

/// The async runtime an operator's command runs its I/O on (netlink, the API, the CRI).
pub(crate) fn runtime() -> crate::error::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| crate::error::Error::io("starting the async runtime", e))
}

/// Whether this invocation is the operator's (arguments, no `CNI_COMMAND`) rather than a runtime's.
pub fn is_cli(invoked_as: &str) -> bool {
    invoked_as == crate::engine::META_NAME
        && std::env::var_os("CNI_COMMAND").is_none()
        && std::env::args_os().len() > 1
}

pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let r = match cli.command {
        Cmd::Install(a) => install::install(&a),
        Cmd::Uninstall(a) => install::uninstall(&a),
        Cmd::Inspect(a) => inspect::run(&a, &mut std::io::stdout().lock()),
        Cmd::Ipam(c) => ipam::run(&c),
        Cmd::Agent(a) => agent::run(&a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attache: {e}");
            ExitCode::from(1)
        }
    }
}
