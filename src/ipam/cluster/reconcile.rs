//! `attache ipam reconcile`: what CNI DEL and GC cannot see. A pod deleted while its node was down never
//! got a DEL; a node deleted from the cluster never gives its blocks back. Run on every node (the
//! DaemonSet does, periodically), it:
//!
//! 1. releases the addresses of this node whose pod no longer exists — judged by UID, never by name
//!    (a pod recreated under the same name is another pod), from a complete list of the node's pods
//!    read before the reservations, each candidate confirmed by a GET of the pod; a reservation made
//!    after the list was started, or without a UID (not made for a Kubernetes pod), is never touched;
//! 2. gives back this node's blocks that hold nothing (and have held nothing for `grace`), under the
//!    pool's claim lock and the block's lock, with a delete conditioned on the block object's UID;
//!    Blocks the API lists as this node's but made by a dataDir since lost go back to the pool once no
//!    pod of the node may use their addresses (see [`recover_lost_blocks`]);
//! 3. reclaims the blocks of nodes that no longer exist: missing from a complete node list on two
//!    passes at least `node_grace` apart, confirmed by a GET of the Node (404) and an empty list of the
//!    pods bound to it, deleted conditioned on UID and resourceVersion.
//!
//! Any failure of the API before a step's decision (an error, a timeout, a 403, an expired continue
//! token) makes that step release nothing: a failed list is not an empty list.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::api::{
    BORROWED, BlockObj, CLAIM, ClusterApi, GrantObj, KubeClusterApi, STICKY, Written,
};
use super::local::Local;
use crate::error::{Error, Result};

/// How long a reconcile waits for a claim in progress on this node.
const CLAIM_WAIT: Duration = Duration::from_secs(60);

pub struct Options {
    /// Empty blocks kept per range (the others go back).
    pub keep_blocks: usize,
    pub data_dir: PathBuf,
    pub node: String,
    pub kubeconfig: Option<PathBuf>,
    pub api_timeout: Duration,
    /// How long a block must have held nothing before it is given back.
    pub grace: Duration,
    /// How long a node must have been missing before its blocks are reclaimed.
    pub node_grace: Duration,
}

#[derive(Debug, Default, Serialize)]
pub struct Released {
    pub pool: String,
    pub ip: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub pod: String,
    #[serde(rename = "podUID")]
    pub pod_uid: String,
}

/// What a pass did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub node: String,
    /// Addresses of pods that are gone.
    pub released: Vec<Released>,
    /// Reservations without a pod UID: never released here (CNI GC still applies).
    pub unverifiable: usize,
    /// Reservations whose pod the list did not show but a GET did (a stale list): kept.
    pub confirmed_alive: usize,
    /// This node's empty blocks given back.
    #[serde(rename = "blocksReturned")]
    pub blocks_returned: Vec<String>,
    /// Blocks this node recorded as its own that the API says are not: no longer used.
    #[serde(rename = "blocksLost")]
    pub blocks_lost: Vec<String>,
    /// Blocks of this node claimed by a dataDir since lost (wiped, replaced), returned to the pool.
    #[serde(rename = "blocksRecovered")]
    pub blocks_recovered: Vec<String>,
    /// Such blocks that cannot go back yet, and what they wait for.
    #[serde(rename = "blocksWaiting")]
    pub blocks_waiting: Vec<String>,
    /// Blocks of deleted nodes reclaimed.
    #[serde(rename = "blocksReclaimed")]
    pub blocks_reclaimed: Vec<String>,
    /// Nodes missing from the cluster whose blocks wait for the grace period.
    #[serde(rename = "nodesMissing")]
    pub nodes_missing: Vec<String>,
    /// Grants of this node that no local address stood for, deleted.
    #[serde(rename = "grantsDeleted")]
    pub grants_deleted: Vec<String>,
    /// Sticky and claimed addresses lent from this node's blocks whose owner is gone, released.
    #[serde(rename = "persistentReleased")]
    pub persistent_released: Vec<String>,
    /// Steps that failed after the addresses were dealt with (each released nothing of its own).
    pub errors: Vec<String>,
}

fn older_than(t: Option<SystemTime>, age: Duration, now: SystemTime) -> bool {
    t.is_some_and(|t| now.duration_since(t).is_ok_and(|d| d >= age))
}

pub async fn reconcile(o: &Options) -> Result<Report> {
    let mut api = KubeClusterApi::connect(o.kubeconfig.as_deref(), o.api_timeout).await?;
    reconcile_with(o, &mut api).await
}

/// [`reconcile`] with a connected client.
pub async fn reconcile_with(o: &Options, api: &mut impl ClusterApi) -> Result<Report> {
    let pools = Local::pools(&o.data_dir)?;
    let mut report = Report {
        node: o.node.clone(),
        ..Default::default()
    };
    release_gone_pods(o, api, &pools, &mut report)
        .await
        .map_err(|e| e.context("nothing released"))?;
    api.renew();
    if let Err(e) = verify_owned(o, api, &pools, &mut report).await {
        report
            .errors
            .push(format!("checking this node's blocks: {e}"));
    }
    api.renew();
    if let Err(e) = recover_lost_blocks(o, api, &mut report).await {
        report
            .errors
            .push(format!("recovering the blocks of a lost dataDir: {e}"));
    }
    api.renew();
    if let Err(e) = return_empty_blocks(o, api, &pools, &mut report).await {
        report.errors.push(format!("giving back empty blocks: {e}"));
    }
    api.renew();
    if let Err(e) = settle_grants(o, api, &pools, &mut report).await {
        report
            .errors
            .push(format!("settling borrowed addresses: {e}"));
    }
    api.renew();
    if let Err(e) = release_persistent(o, api, &mut report).await {
        report
            .errors
            .push(format!("releasing sticky and claimed addresses: {e}"));
    }
    api.renew();
    if let Err(e) = reclaim_deleted_nodes(o, api, &mut report).await {
        report
            .errors
            .push(format!("reclaiming the blocks of deleted nodes: {e}"));
    }
    Ok(report)
}

async fn release_gone_pods(
    o: &Options,
    api: &mut impl ClusterApi,
    pools: &[Local],
    report: &mut Report,
) -> Result<()> {
    // Anything reserved from here on may be a pod the list does not show yet.
    let started = SystemTime::now();
    let alive = api.pods_on(&o.node).await?;
    crate::fail::point("ipam.reconcile.listed")?;
    for local in pools {
        let pool = local.pool();
        for r in local.reservations()? {
            if r.id.starts_with(super::local::GRANT_PREFIX) {
                continue; // lent to another node: its grant decides
            }
            if r.pod_uid.is_empty() {
                report.unverifiable += 1;
                continue;
            }
            if alive.contains_key(&r.pod_uid) || r.made.is_none_or(|m| m >= started) {
                continue;
            }
            let Some((ns, name)) = r.pod.split_once('/') else {
                report.unverifiable += 1;
                continue;
            };
            api.renew();
            if api.pod_is(ns, name, &r.pod_uid).await? {
                tracing::warn!(ip = %r.ip, pod = r.pod, "the pod list of node {} did not show a pod that exists: its address is kept (is nodeName right?)", o.node);
                report.confirmed_alive += 1;
                continue;
            }
            if local.release_if_held(&r)? {
                tracing::info!(ip = %r.ip, pod = r.pod, pod_uid = r.pod_uid, "released: the pod is gone");
                report.released.push(Released {
                    pool: pool.clone(),
                    ip: r.ip.to_string(),
                    container_id: r.id,
                    ifname: r.ifname,
                    pod: r.pod,
                    pod_uid: r.pod_uid,
                });
            }
        }
    }
    Ok(())
}

/// Blocks this node records as its own that the API says are not (reclaimed while the node was
/// away, or its object replaced): no address is handed out of them any more. What they still hold
/// stays until its pods go (it may now collide with the new owner's: reported loudly).
async fn verify_owned(
    o: &Options,
    api: &mut impl ClusterApi,
    pools: &[Local],
    report: &mut Report,
) -> Result<()> {
    for local in pools {
        let owned = local.owned()?;
        if owned.is_empty() {
            continue;
        }
        let listed = api.blocks(&local.pool()).await?;
        let _claiming = local.claim_lock(CLAIM_WAIT)?;
        for b in owned {
            let Some(rec) = local.owned_record(&b)? else {
                continue;
            };
            let ours = listed
                .iter()
                .any(|x| x.name == rec.name && x.uid == rec.uid && x.node == o.node);
            if !ours && local.disown(&b)? {
                tracing::error!(block = %rec.name, "the API says this block is not this node's any more: no address is handed out of it now");
                report.blocks_lost.push(rec.name);
            }
        }
    }
    Ok(())
}

/// How far the API server's clock and a node's may be apart, where their times are compared.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Whether block `b` is one this very dataDir (`data_dir` on `node`) made before it was lost: the same
/// node and dataDir path, another instance id. A block of another dataDir of the node (a definition
/// with its own) is not; nor one that does not say which dataDir made it.
pub fn of_lost_data_dir(b: &BlockObj, node: &str, data_dir: &str, instance: &str) -> bool {
    b.node == node && b.data_dir == data_dir && !b.instance.is_empty() && b.instance != instance
}

/// Blocks the API lists as this node's but made by another dataDir (`spec.instance`): this node's
/// dataDir was wiped or replaced, and with it the record of which of their addresses are in use. Such a
/// block goes back to the pool (a delete conditioned on its UID and resourceVersion; this node, or any,
/// may claim it again) once nothing can hold an address of it: no grant is lent from it, and no pod
/// bound to this node reports an address in it — a pod that reports none of its interfaces (no
/// network-status annotation) counts when it was made before this dataDir. Until then the report says
/// what the block waits for.
async fn recover_lost_blocks(
    o: &Options,
    api: &mut impl ClusterApi,
    report: &mut Report,
) -> Result<()> {
    let instance = super::local::instance_of(&o.data_dir)?;
    let here = o.data_dir.display().to_string();
    let lost: Vec<BlockObj> = api
        .all_blocks()
        .await?
        .into_iter()
        .filter(|b| of_lost_data_dir(b, &o.node, &here, &instance))
        .collect();
    if lost.is_empty() {
        return Ok(());
    }
    let born = super::local::instance_born(&o.data_dir);
    api.renew();
    let pods = api.pod_addresses_on(&o.node).await?;
    api.renew();
    let lending: Vec<GrantObj> = api.grants_of_lender(&o.node).await?.0;
    for b in lost {
        let Ok(net) = b.cidr.parse::<ipnet::IpNet>() else {
            continue;
        };
        let holders: Vec<&str> = pods
            .iter()
            .filter(|p| !p.host_network)
            .filter(|p| {
                p.ips.iter().any(|ip| net.contains(ip))
                    || (!p.has_status
                        && match (p.made, born) {
                            // The API server's clock against this node's: a margin for their skew.
                            (Some(m), Some(b)) => m <= b + CLOCK_SKEW,
                            _ => true,
                        })
            })
            .map(|p| p.pod.as_str())
            .collect();
        let grants = lending.iter().filter(|g| g.block == b.name).count();
        if !holders.is_empty() || grants > 0 {
            let more = if holders.len() > 5 { ", ..." } else { "" };
            report.blocks_waiting.push(format!(
                "block {} ({}) was claimed by this node with a dataDir since lost (instance {}); it returns to the pool once no pod of this node may use its addresses and no grant is lent from it — now {} pod(s) ({}{more}) and {grants} grant(s); drain the node to hurry it",
                b.name,
                b.cidr,
                b.instance,
                holders.len(),
                holders[..holders.len().min(5)].join(", "),
            ));
            continue;
        }
        match api.delete_block(&b).await? {
            Written::Done(()) => {
                tracing::info!(block = %b.name, "returned a block of this node's lost dataDir to the pool");
                report.blocks_recovered.push(b.name);
            }
            Written::Conflict | Written::Gone => {}
        }
    }
    Ok(())
}

async fn return_empty_blocks(
    o: &Options,
    api: &mut impl ClusterApi,
    pools: &[Local],
    report: &mut Report,
) -> Result<()> {
    let now = SystemTime::now();
    for local in pools {
        // No claim on this node while blocks are given back: a claim would adopt a block this pass
        // has disowned locally and is about to delete.
        let _claiming = local.claim_lock(CLAIM_WAIT)?;
        // Owned blocks per range: the last `keep_blocks` of each stay (a busy node's next pod must not
        // need the API, nor claim the block back a minute later).
        let mut per_range: BTreeMap<String, usize> = BTreeMap::new();
        for b in local.owned()? {
            if let Some(rec) = local.owned_record(&b)? {
                *per_range.entry(rec.range).or_default() += 1;
            }
        }
        for b in local.owned()? {
            let (claimed, changed) = local.block_times(&b);
            if !older_than(claimed, o.grace, now)
                || (changed.is_some() && !older_than(changed, o.grace, now))
            {
                continue;
            }
            let Some(rec) = local.owned_record(&b)? else {
                continue;
            };
            let left = per_range.get(&rec.range).copied().unwrap_or(0);
            if left <= o.keep_blocks || !local.disown_if_empty(&b)? {
                continue;
            }
            per_range.insert(rec.range.clone(), left - 1);
            let obj = BlockObj {
                name: rec.name.clone(),
                uid: rec.uid.clone(),
                resource_version: String::new(),
                pool: local.pool(),
                range: rec.range.clone(),
                cidr: rec.cidr.clone(),
                node: o.node.clone(),
                instance: String::new(),
                data_dir: String::new(),
            };
            api.renew();
            match api.delete_block(&obj).await {
                Ok(Written::Done(()) | Written::Gone) => {
                    local.forget(&b);
                    tracing::info!(block = %rec.name, "empty block given back");
                    report.blocks_returned.push(rec.name);
                }
                Ok(Written::Conflict) => {
                    // Another object of that name: not the one this node created. Not ours to keep.
                    tracing::warn!(block = %rec.name, "the block's object is not the one this node created: forgotten locally");
                    local.forget(&b);
                }
                Err(e) => {
                    // The delete may have happened all the same (an answer lost): owned again only
                    // if the API still has the very object. Unknown: left disowned — a claim adopts
                    // it later if it is still this node's.
                    if let Ok(Some(x)) = api.renewed().block(&rec.name).await
                        && x.uid == rec.uid
                    {
                        local.adopt(&b, &rec)?;
                    }
                    return Err(e.context(format!("giving back block {}", rec.name)));
                }
            }
        }
    }
    Ok(())
}

/// The borrower's side of grants: queued returns carried out, and grants of this node that no local
/// address stands for (a crash between the lender's answer and the local record) deleted — under each
/// pool's claim lock, so no borrow is in flight.
async fn settle_grants(
    o: &Options,
    api: &mut impl ClusterApi,
    pools: &[Local],
    report: &mut Report,
) -> Result<()> {
    super::grant::drain_returns(api, &o.data_dir).await?;
    let grants = api.grants_of_holder(&o.node).await?;
    for local in pools {
        let _claiming = local.claim_lock(CLAIM_WAIT)?;
        let held: std::collections::BTreeSet<String> = local
            .reservations()?
            .into_iter()
            .filter_map(|r| r.grant)
            .collect();
        // Only borrowed grants: a sticky or claimed one outlives its holder's containers on purpose.
        for g in grants
            .iter()
            .filter(|g| g.pool == local.pool() && g.purpose == BORROWED)
        {
            if !held.contains(&g.name) {
                api.renew();
                if matches!(
                    api.delete_grant(&g.name, Some(&g.uid)).await?,
                    Written::Done(())
                ) {
                    report.grants_deleted.push(g.name.clone());
                }
            }
        }
    }
    Ok(())
}

/// The lender's side of persistent addresses: a claim's goes with the claim; a StatefulSet pod's when
/// the StatefulSet is gone or scaled below the pod's ordinal, and the pod is gone.
async fn release_persistent(
    o: &Options,
    api: &mut impl ClusterApi,
    report: &mut Report,
) -> Result<()> {
    let (grants, _) = api.grants_of_lender(&o.node).await?;
    for g in grants {
        api.renew();
        if owner_gone(api, &g).await?
            && matches!(
                api.delete_grant_if(&g.name, Some(&g.uid), Some(&g.resource_version))
                    .await?,
                Written::Done(()) | Written::Gone
            )
        {
            super::grant::unlend(&o.data_dir, &g)?;
            tracing::info!(
                grant = g.name,
                ip = g.ip,
                "persistent address released: its owner is gone"
            );
            report.persistent_released.push(g.name);
        }
    }
    Ok(())
}

/// Is a grant's reason to exist gone? Borrowed: its holder's containers decide (never here). Claim:
/// the IPAMClaim is gone. Sticky: the StatefulSet is gone or scaled below the ordinal, and the pod is
/// gone.
async fn owner_gone(api: &impl ClusterApi, g: &GrantObj) -> Result<bool> {
    Ok(match g.purpose.as_str() {
        CLAIM => api
            .ipamclaim(&g.owner_namespace, &g.owner_name)
            .await?
            .is_none(),
        STICKY => {
            let scaled_away = match api
                .statefulset_replicas(&g.owner_namespace, &g.owner_name)
                .await?
            {
                None => true,
                Some(r) => g
                    .ordinal
                    .is_some_and(|n| n >= u64::try_from(r).unwrap_or(0)),
            };
            let pod_gone = match g.pod.split_once('/') {
                Some((ns, name)) => api.pod_uid(ns, name).await?.is_none(),
                None => true,
            };
            scaled_away && pod_gone
        }
        _ => false,
    })
}

/// `<dataDir>/reclaim.json`: node -> when this node first saw it missing (seconds since the epoch).
fn missing_file(o: &Options) -> PathBuf {
    o.data_dir.join("reclaim.json")
}

async fn reclaim_deleted_nodes(
    o: &Options,
    api: &mut impl ClusterApi,
    report: &mut Report,
) -> Result<()> {
    let nodes = api.node_names().await?;
    let blocks = api.all_blocks().await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let seen: BTreeMap<String, u64> = crate::files::read_bounded(&missing_file(o), 1 << 20)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut missing: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_node: BTreeMap<String, Vec<BlockObj>> = BTreeMap::new();
    for b in blocks.into_iter().filter(|b| !nodes.contains(&b.node)) {
        by_node.entry(b.node.clone()).or_default().push(b);
    }
    for (node, blocks) in by_node {
        let first = *seen.get(&node).unwrap_or(&now);
        missing.insert(node.clone(), first);
        if now.saturating_sub(first) < o.node_grace.as_secs() {
            report.nodes_missing.push(node);
            continue;
        }
        api.renew();
        if node.is_empty()
            || api.node_uid(&node).await?.is_some()
            || !api.pods_on(&node).await?.is_empty()
        {
            report.nodes_missing.push(node);
            continue;
        }
        // The node is gone. Its borrowed grants go (the lenders take the addresses back); grants lent
        // from its blocks keep those blocks until they end — sticky and claimed ones by the same rules
        // as on a live lender, decided here since the lender's own reconcile will not run again.
        for g in api.grants_of_holder(&node).await? {
            if g.purpose == BORROWED {
                api.delete_grant(&g.name, Some(&g.uid)).await?;
                report.grants_deleted.push(g.name);
            }
        }
        let mut lending = false;
        for g in api.grants_of_lender(&node).await?.0 {
            let done = g.purpose != BORROWED
                && owner_gone(api, &g).await?
                && matches!(
                    api.delete_grant_if(&g.name, Some(&g.uid), Some(&g.resource_version))
                        .await?,
                    Written::Done(()) | Written::Gone
                );
            if done {
                report.persistent_released.push(g.name);
            } else {
                lending = true;
            }
        }
        if lending {
            report.nodes_missing.push(node);
            continue;
        }
        for b in blocks {
            match api.delete_block(&b).await? {
                Written::Done(()) => {
                    tracing::info!(block = %b.name, node, "reclaimed the block of a deleted node");
                    report.blocks_reclaimed.push(b.name);
                }
                // Changed or gone meanwhile (another node's reconcile): decided again next pass.
                Written::Conflict | Written::Gone => {}
            }
        }
        missing.remove(&node);
    }
    let bytes = serde_json::to_vec(&missing).map_err(|e| Error::Internal(e.to_string()))?;
    crate::files::ensure_real_dir(&o.data_dir)?;
    super::local::replace_file(&missing_file(o), &bytes)
}
