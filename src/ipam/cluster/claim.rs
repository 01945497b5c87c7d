//! The cold path of an ADD: this node has no room in the blocks it owns. Under the pool's claim lock
//! (one claim per node and pool at a time), it registers the range in the pool's `AddressPool` (once
//! per node: the registry is append-only, and a node remembers what it saw), makes sure its node name
//! is a Node, and takes a block: one of its own it lost track of (created by this dataDir, not in
//! `owned/`), else the first free one in its seeded order, by creating the block's object — the
//! create succeeds for exactly one node. Exactly one API write per block claimed.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::api::{BlockObj, ClusterApi, KubeClusterApi, PoolRange, Written};
use super::block::{Block, seed};
use super::local::{Local, Owned};
use super::{ClusterIpam, KUBECONFIG_FILE, TYPE};
use crate::error::{Error, Result};

/// Attempts at a conditional write before giving up (each lost race is someone else's success).
const MAX_RACES: usize = 8;

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl ClusterIpam {
    /// The kubeconfig: `kubeconfig` in the configuration, else the one `attache install` writes, else
    /// the in-cluster service account.
    pub fn kubeconfig_path(&self) -> Option<std::path::PathBuf> {
        kubeconfig_or_installed(self.kubeconfig.clone())
    }

    fn api_name(&self, b: &Block) -> String {
        format!("{}-{}", self.pool, b.dir_name())
    }
}

/// `given`, else the kubeconfig `attache install` writes if there is one (`None`: in-cluster).
pub fn kubeconfig_or_installed(given: Option<std::path::PathBuf>) -> Option<std::path::PathBuf> {
    given.or_else(|| {
        let p = std::path::PathBuf::from(KUBECONFIG_FILE);
        p.exists().then_some(p)
    })
}

/// Register the configuration's range in its pool: refused (code 7) if it overlaps another range of the
/// pool, or is there with another block size.
async fn register(c: &ClusterIpam, local: &Local, api: &impl ClusterApi) -> Result<()> {
    let want = PoolRange {
        range: c.layout.range.to_string(),
        block_size: c.layout.prefix,
    };
    if local
        .registered()
        .contains(&(want.range.clone(), want.block_size))
    {
        return Ok(());
    }
    for _ in 0..MAX_RACES {
        let written = match api.pool(&c.pool).await? {
            None => {
                api.create_pool(&c.pool, std::slice::from_ref(&want))
                    .await?
            }
            Some(p) => {
                for r in &p.ranges {
                    let Ok(net) = r.range.parse::<IpNet>() else {
                        continue;
                    };
                    if r.range == want.range && r.block_size != want.block_size {
                        return Err(Error::config(format!(
                            "ipam ({TYPE}): range {} is registered in pool {} with blockSize {}, and this definition says {}: every definition of a range must use one block size",
                            want.range, c.pool, r.block_size, want.block_size
                        )));
                    }
                    if r.range != want.range && overlaps(&net, &c.layout.range) {
                        return Err(Error::config(format!(
                            "ipam ({TYPE}): range {} overlaps range {} of pool {}: ranges of one pool never overlap (give separate networks separate network_name values)",
                            want.range, r.range, c.pool
                        )));
                    }
                }
                if p.ranges.contains(&want) {
                    Written::Done(p)
                } else {
                    let mut ranges = p.ranges.clone();
                    ranges.push(want.clone());
                    api.replace_pool(&c.pool, &ranges, &p.resource_version)
                        .await?
                }
            }
        };
        if let Written::Done(p) = written {
            let seen: Vec<(String, u8)> = p
                .ranges
                .iter()
                .map(|r| (r.range.clone(), r.block_size))
                .collect();
            return local.set_registered(&seen);
        }
    }
    Err(Error::TryAgain(format!(
        "pool {}: the AddressPool changed {MAX_RACES} times while range {} was being registered",
        c.pool, want.range
    )))
}

/// What a claim got.
pub enum Claimed {
    /// A block is this node's now (created, or adopted): allocate from it.
    Block,
    /// No block was free: an address of another node's block, through a grant.
    Borrowed(std::net::IpAddr),
}

/// Make one more block of the configuration's range this node's — or, when the range has none left,
/// borrow one address for `(id, ifname)` — or fail saying why.
pub async fn claim(c: &ClusterIpam, local: &Local, id: &str, ifname: &str) -> Result<Claimed> {
    let c = &*c.with_node()?;
    let range = c.layout.range;
    let why = format!(
        "node {} needs a new block of pool {} (range {range})",
        c.node, c.pool
    );
    let api = KubeClusterApi::connect(c.kubeconfig_path().as_deref(), c.api_timeout)
        .await
        .map_err(|e| e.context(&why))?;
    claim_block(c, local, &api, id, ifname)
        .await
        .map_err(|e| e.context(&why))
}

/// [`claim`] with a connected client.
pub async fn claim_block(
    c: &ClusterIpam,
    local: &Local,
    api: &impl ClusterApi,
    id: &str,
    ifname: &str,
) -> Result<Claimed> {
    register(c, local, api).await?;
    if api.node_uid(&c.node).await?.is_none() {
        return Err(Error::config(format!(
            "nodeName {:?} (from {}) names no Node of the cluster: a block must belong to a node",
            c.node, c.node_source
        )));
    }
    let instance = local.instance()?;
    let owned: BTreeSet<Block> = local.owned()?.into_iter().collect();
    let listed = api.blocks(&c.pool).await?;
    let ours = |o: &BlockObj| o.node == c.node && o.instance == instance;
    let adopt = |b: &Block, o: &BlockObj| {
        local.adopt(
            b,
            &Owned {
                name: o.name.clone(),
                uid: o.uid.clone(),
                cidr: o.cidr.clone(),
                range: o.range.clone(),
            },
        )
    };
    // Blocks this dataDir created and lost track of (a crash, or an answer lost after the create).
    let mut adopted = false;
    for o in listed.iter().filter(|o| ours(o)) {
        let Some(b) = o.cidr.parse::<IpNet>().ok().map(Block::of) else {
            continue;
        };
        if c.layout.has(&b) && !owned.contains(&b) {
            tracing::info!(block = %o.name, "adopting a block this node created");
            adopt(&b, o)?;
            adopted = true;
        }
    }
    if adopted {
        return Ok(Claimed::Block);
    }
    let here = c.data_dir.display().to_string();
    let lost = listed
        .iter()
        .filter(|o| super::reconcile::of_lost_data_dir(o, &c.node, &here, &instance))
        .count();
    if lost > 0 {
        tracing::warn!(
            "{lost} block(s) of pool {} are this node's from a dataDir since lost (not {}): not used; `attache ipam reconcile` returns them to the pool once no pod of this node may use their addresses",
            c.pool,
            c.data_dir.display()
        );
    }
    let taken: BTreeSet<&str> = listed.iter().map(|o| o.name.as_str()).collect();
    let requested = c.requested.first().and_then(|ip| c.layout.block_of(*ip));
    if let (Some(b), Some(ip)) = (requested, c.requested.first())
        && let Some(o) = listed.iter().find(|o| o.name == c.api_name(&b))
    {
        return Err(Error::Ipam(format!(
            "requested address {ip} lies in block {} of node {}: only that node hands it out",
            o.cidr, o.node
        )));
    }
    let candidates: Box<dyn Iterator<Item = Block>> = match requested {
        Some(b) => Box::new(std::iter::once(b)),
        None => Box::new(
            c.layout
                .order(seed(&[&c.node, &c.pool, &c.layout.range.to_string()])),
        ),
    };
    let mut lost = 0;
    for b in candidates {
        let name = c.api_name(&b);
        if taken.contains(name.as_str()) || c.layout.free_intervals(&b, &c.holes).is_empty() {
            continue;
        }
        let want = BlockObj {
            name: name.clone(),
            uid: String::new(),
            resource_version: String::new(),
            pool: c.pool.clone(),
            range: c.layout.range.to_string(),
            cidr: b.net().to_string(),
            node: c.node.clone(),
            instance: instance.clone(),
            data_dir: c.data_dir.display().to_string(),
        };
        match api.create_block(&want).await? {
            Written::Done(o) => {
                tracing::info!(block = %name, "claimed");
                return adopt(&b, &o).map(|()| Claimed::Block);
            }
            _ => match api.block(&name).await? {
                Some(o) if ours(&o) => return adopt(&b, &o).map(|()| Claimed::Block),
                _ => {
                    lost += 1;
                    if lost >= MAX_RACES {
                        return Err(Error::TryAgain(format!(
                            "lost {lost} races for blocks of pool {} to other nodes",
                            c.pool
                        )));
                    }
                }
            },
        }
    }
    let range = c.layout.range.to_string();
    let listed: Vec<&BlockObj> = listed.iter().filter(|o| o.range == range).collect();
    let mine = listed.iter().filter(|o| o.node == c.node).count();
    let mut borrowed = String::new();
    if c.borrow && c.requested.is_empty() {
        if let Some(ip) = super::grant::borrow(c, local, api, &listed, id, ifname).await? {
            return Ok(Claimed::Borrowed(ip));
        }
        borrowed = ", and no other node lent an address".into();
    }
    Err(Error::Ipam(format!(
        "pool {} range {range} is full: this node's {mine} block(s) have no free address for this definition, every other block of the range ({} of {}) is claimed by another node{borrowed}",
        c.pool,
        listed.len() - mine,
        c.layout.count()
    )))
}
