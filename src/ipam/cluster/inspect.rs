//! `attache ipam inspect`: attache-ipam's pools as this node sees them — its blocks with what each holds
//! (own addresses, addresses lent to other nodes), what it borrowed, grant deletions still queued —
//! and, when the API answers, the whole pool: its ranges, every block by node, the free blocks left,
//! the grants, and the addresses here whose pod is not in the node's pod list (leaks, which the
//! reconcile releases after confirming each). Reads only; changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::api::{ClusterApi, KubeClusterApi};
use super::block::Block;
use super::local::{GRANT_PREFIX, Local, Reservation};
use crate::error::Result;

#[derive(Debug, Default, Serialize)]
pub struct BlockRow {
    pub pool: String,
    pub cidr: String,
    /// Addresses handed out here (to this node's containers).
    pub used: usize,
    /// Addresses reserved for other nodes (borrowed, sticky, claimed).
    pub lent: usize,
    /// The block's other addresses (its network and broadcast, exclusions and gateways not counted).
    pub free: u128,
}

/// An address whose pod is not in the node's pod list (what reconcile would confirm and release).
pub type Leak = super::reconcile::Released;

#[derive(Debug, Default, Serialize)]
pub struct PoolRow {
    pub pool: String,
    pub ranges: Vec<String>,
    /// node -> blocks it owns.
    pub nodes: BTreeMap<String, Vec<String>>,
    /// Blocks of the ranges nobody owns yet.
    #[serde(rename = "freeBlocks")]
    pub free_blocks: u128,
    /// Grants by purpose (Borrowed, Sticky, Claim).
    pub grants: BTreeMap<String, usize>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub node: String,
    pub blocks: Vec<BlockRow>,
    pub borrowed: usize,
    #[serde(rename = "queuedReturns")]
    pub queued_returns: usize,
    /// Reservations without a pod UID (not made for a Kubernetes pod): never judged.
    pub unverifiable: usize,
    /// `None`: the API was not asked or did not answer (`api_error` says why).
    pub pools: Option<Vec<PoolRow>>,
    pub leaks: Option<Vec<Leak>>,
    #[serde(rename = "apiError", skip_serializing_if = "Option::is_none")]
    pub api_error: Option<String>,
}

pub async fn gather(
    data_dir: &Path,
    node: &str,
    kubeconfig: Option<&Path>,
    local_only: bool,
) -> Result<Report> {
    let mut r = Report {
        node: node.to_string(),
        ..Default::default()
    };
    let pools = Local::pools(data_dir)?;
    let mut reservations = Vec::new();
    for local in &pools {
        let pool = local.pool();
        let res = local.reservations()?;
        r.blocks.extend(block_rows(local, &res)?);
        r.borrowed += res.iter().filter(|x| x.grant.is_some()).count();
        r.queued_returns += local.returns().len();
        r.unverifiable += res
            .iter()
            .filter(|x| x.pod_uid.is_empty() && !x.id.starts_with(GRANT_PREFIX))
            .count();
        reservations.extend(res.into_iter().map(|x| (pool.clone(), x)));
    }
    if local_only {
        return Ok(r);
    }
    let cluster = async {
        let api = KubeClusterApi::connect(kubeconfig, Duration::from_secs(10)).await?;
        let alive = api.pods_on(node).await?;
        let leaks: Vec<Leak> = reservations
            .iter()
            .filter(|(_, x)| {
                !x.pod_uid.is_empty()
                    && !x.id.starts_with(GRANT_PREFIX)
                    && !alive.contains_key(&x.pod_uid)
            })
            .map(|(pool, x)| Leak {
                pool: pool.clone(),
                ip: x.ip.to_string(),
                container_id: x.id.clone(),
                ifname: x.ifname.clone(),
                pod: x.pod.clone(),
                pod_uid: x.pod_uid.clone(),
            })
            .collect();
        let blocks = api.all_blocks().await?;
        let names: BTreeSet<String> = blocks.iter().map(|b| b.pool.clone()).collect();
        let mut rows = Vec::new();
        for name in names {
            let Some(p) = api.pool(&name).await? else {
                continue;
            };
            let mut row = PoolRow {
                pool: name.clone(),
                ranges: p
                    .ranges
                    .iter()
                    .map(|x| format!("{} /{}", x.range, x.block_size))
                    .collect(),
                ..Default::default()
            };
            let mine: Vec<_> = blocks.iter().filter(|b| b.pool == name).collect();
            for b in &mine {
                row.nodes
                    .entry(b.node.clone())
                    .or_default()
                    .push(b.cidr.clone());
            }
            let total: u128 = p
                .ranges
                .iter()
                .filter_map(|x| {
                    let net: ipnet::IpNet = x.range.parse().ok()?;
                    let bits = u32::from(x.block_size.saturating_sub(net.prefix_len()));
                    Some(if bits >= 127 {
                        u128::MAX
                    } else {
                        1u128 << bits
                    })
                })
                .fold(0u128, |a, n| a.saturating_add(n));
            row.free_blocks = total.saturating_sub(mine.len() as u128);
            rows.push(row);
        }
        let mut grant_counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for g in api
            .grants_of_holder(node)
            .await?
            .into_iter()
            .chain(api.grants_of_lender(node).await?.0)
        {
            *grant_counts
                .entry(g.pool.clone())
                .or_default()
                .entry(g.purpose.clone())
                .or_default() += 1;
        }
        for row in &mut rows {
            row.grants = grant_counts.remove(&row.pool).unwrap_or_default();
        }
        Ok::<_, crate::error::Error>((rows, leaks))
    };
    match cluster.await {
        Ok((rows, leaks)) => {
            r.pools = Some(rows);
            r.leaks = Some(leaks);
        }
        Err(e) => r.api_error = Some(e.to_string()),
    }
    Ok(r)
}

/// This node's blocks of `local`'s pool, with what `res` (its reservations) holds in each.
pub fn block_rows(local: &Local, res: &[Reservation]) -> Result<Vec<BlockRow>> {
    let mut out = Vec::new();
    for b in local.owned()? {
        let in_block: Vec<_> = res
            .iter()
            .filter(|x| x.grant.is_none() && x.block == b)
            .collect();
        let lent = in_block
            .iter()
            .filter(|x| x.id.starts_with(GRANT_PREFIX))
            .count();
        out.push(BlockRow {
            pool: local.pool(),
            cidr: b.net().to_string(),
            used: in_block.len() - lent,
            lent,
            free: block_size(&b).saturating_sub(in_block.len() as u128),
        });
    }
    Ok(out)
}

fn block_size(b: &Block) -> u128 {
    let bits = u32::from(if b.v4 { 32 } else { 128 } - b.prefix);
    if bits >= 127 {
        u128::MAX
    } else {
        1u128 << bits
    }
}
