//! `attache ipam ...`: attache-ipam's node-side upkeep (see [`crate::ipam::cluster::reconcile`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::runtime;
use super::table::table;
use crate::error::{Error, Result};
use crate::ipam::cluster::inspect::Report;
use crate::ipam::cluster::{self, reconcile};

#[derive(Subcommand)]
pub enum IpamCmd {
    /// Release the addresses of pods that are gone (by UID), give back empty blocks, reclaim the blocks
    /// of deleted nodes. Prints what it did as JSON; a failed API call releases nothing.
    Reconcile(ReconcileArgs),
    /// Lend addresses of this node's blocks to nodes whose range has no free block (answering their
    /// AddressGrants as they come), take them back when the grants go, and delete the grants this node's
    /// DELs queued. Runs until killed (the DaemonSet's mode).
    Agent(AgentArgs),
    /// Show this node's blocks (used, lent, free), what it borrowed, and — when the API answers — the
    /// pools (blocks per node, free blocks, grants) and the leaks (addresses whose pod is not in the
    /// node's pod list). Changes nothing.
    Inspect(InspectArgs),
}

/// Where this node's attache-ipam state is and how it reaches the API.
#[derive(Args)]
pub struct NodeArgs {
    /// attache-ipam's dataDir on this node.
    #[arg(long, default_value = cluster::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// This node's name (default: $NODE_NAME, the file `attache install` writes, the host name).
    #[arg(long)]
    node: Option<String>,
    /// The kubeconfig (default: the one `attache install` writes, else the in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Do not ask the API (this node's files only).
    #[arg(long)]
    local: bool,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Seconds between full resyncs (a complete list of the grants asked of this node).
    #[arg(long, default_value_t = 60)]
    resync: u64,
}

#[derive(Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Seconds one API phase may take.
    #[arg(long, default_value_t = 10.0)]
    api_timeout: f64,
    /// Seconds a block must have been empty before it is given back.
    #[arg(long, default_value_t = 300)]
    grace: u64,
    /// Empty blocks kept per range on this node (so that its next pod needs no API call).
    #[arg(long, default_value_t = 1)]
    keep_blocks: usize,
    /// Seconds a node must have been missing before its blocks are reclaimed.
    #[arg(long, default_value_t = 300)]
    node_grace: u64,
    /// Run again every this many seconds, forever (the DaemonSet's mode); a failed pass is logged.
    #[arg(long)]
    every: Option<u64>,
}

pub fn run(cmd: &IpamCmd) -> Result<()> {
    match cmd {
        IpamCmd::Reconcile(a) => reconcile_cmd(a),
        IpamCmd::Agent(a) => agent_cmd(a),
        IpamCmd::Inspect(a) => inspect_cmd(a),
    }
}

fn node_of(arg: &Option<String>) -> Result<String> {
    let node = arg.clone().or_else(|| {
        std::env::var("NODE_NAME")
            .ok()
            .filter(|n| !n.trim().is_empty())
    });
    let (node, source) = cluster::node_name(node)?;
    cluster::validate_node(&node, &source)?;
    Ok(node)
}

fn kubeconfig_of(arg: &Option<PathBuf>) -> Option<PathBuf> {
    cluster::claim::kubeconfig_or_installed(arg.clone())
}

fn inspect_cmd(a: &InspectArgs) -> Result<()> {
    let node = node_of(&a.node.node)?;
    let kubeconfig = kubeconfig_of(&a.node.kubeconfig);
    let report = runtime()?.block_on(crate::ipam::cluster::inspect::gather(
        &a.node.data_dir,
        &node,
        kubeconfig.as_deref(),
        a.local,
    ))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::Internal(e.to_string()))?
        );
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

fn agent_cmd(a: &AgentArgs) -> Result<()> {
    let node = node_of(&a.node.node)?;
    let kubeconfig = kubeconfig_of(&a.node.kubeconfig);
    runtime()?.block_on(crate::ipam::cluster::grant::agent(
        &a.node.data_dir,
        &node,
        kubeconfig.as_deref(),
        Duration::from_secs(a.resync.max(1)),
    ))
}

fn reconcile_cmd(a: &ReconcileArgs) -> Result<()> {
    let node = node_of(&a.node.node)?;
    if !(a.api_timeout > 0.0 && a.api_timeout <= 300.0) {
        return Err(Error::config(
            "--api-timeout must be more than 0 and at most 300 seconds",
        ));
    }
    let opts = reconcile::Options {
        keep_blocks: a.keep_blocks,
        data_dir: a.node.data_dir.clone(),
        node,
        kubeconfig: kubeconfig_of(&a.node.kubeconfig),
        api_timeout: Duration::from_secs_f64(a.api_timeout),
        grace: Duration::from_secs(a.grace),
        node_grace: Duration::from_secs(a.node_grace),
    };
    let rt = runtime()?;
    loop {
        let failed = match rt.block_on(reconcile::reconcile(&opts)) {
            Ok(report) => {
                println!(
                    "{}",
                    serde_json::to_string(&report).map_err(|e| Error::Internal(e.to_string()))?
                );
                (!report.errors.is_empty()).then(|| Error::TryAgain(report.errors.join("; ")))
            }
            Err(e) => Some(e),
        };
        match (failed, a.every) {
            (Some(e), Some(_)) => eprintln!("attache ipam reconcile: {e}"),
            (Some(e), None) => return Err(e),
            (None, _) => {}
        }
        match a.every {
            Some(s) => std::thread::sleep(Duration::from_secs(s.max(1))),
            None => return Ok(()),
        }
    }
}

/// attache-ipam's node report as tables.
fn render(report: &Report) -> String {
    let mut out = format!("attache-ipam on node {}\n\n", report.node);
    let rows: Vec<Vec<String>> = report
        .blocks
        .iter()
        .map(|b| {
            vec![
                b.pool.clone(),
                b.cidr.clone(),
                b.used.to_string(),
                b.lent.to_string(),
                b.free.to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("This node owns no block.\n");
    } else {
        out.push_str(&table(&["POOL", "BLOCK", "USED", "LENT", "FREE"], &rows));
    }
    out.push_str(&format!(
        "\n{} borrowed address(es), {} grant deletion(s) queued, {} address(es) without a pod UID\n",
        report.borrowed, report.queued_returns, report.unverifiable
    ));
    if let Some(e) = &report.api_error {
        out.push_str(&format!("\nThe cluster's view is missing: {e}\n"));
    }
    if let Some(pools) = &report.pools {
        for p in pools {
            out.push_str(&format!(
                "\npool {}: {} — {} free block(s), grants {:?}\n",
                p.pool,
                p.ranges.join(", "),
                p.free_blocks,
                p.grants
            ));
            let rows: Vec<Vec<String>> = p
                .nodes
                .iter()
                .map(|(n, bs)| vec![n.clone(), bs.len().to_string(), bs.join(" ")])
                .collect();
            out.push_str(&table(&["NODE", "BLOCKS", "CIDRS"], &rows));
        }
    }
    if let Some(leaks) = &report.leaks {
        if leaks.is_empty() {
            out.push_str("\nNo leak: every address here belongs to a pod of this node.\n");
        } else {
            out.push_str(&format!(
                "\n{} leak(s): the pod is not in this node's pod list (attache ipam reconcile releases them):\n",
                leaks.len()
            ));
            let rows: Vec<Vec<String>> = leaks
                .iter()
                .map(|l| {
                    vec![
                        l.pool.clone(),
                        l.ip.clone(),
                        l.pod.clone(),
                        l.pod_uid.clone(),
                    ]
                })
                .collect();
            out.push_str(&table(&["POOL", "IP", "POD", "UID"], &rows));
        }
    }
    out
}
