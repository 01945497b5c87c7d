//! Borrowing: the slow path when a range has no unclaimed block left and this node's blocks are full.
//! The borrower asks another node for one address by creating an `AddressGrant` naming the lender's
//! block and the window its definition allows; only the lender — its agent, `attache ipam agent` —
//! picks the address, in its own store of that block (reserved as `grant:<name>`, so its own ADDs never
//! hand it out), and answers in the grant's status. The block's owner stays the only authority over
//! its addresses: nothing is ever handed out twice, whatever the timing. The borrower records the
//! address in `<pool>/borrowed/`; DEL releases it there and queues the grant's deletion
//! (`<pool>/returns/`), which the agent (or reconcile) carries out; the lender releases its
//! reservation when the grant is gone. About three API writes per borrowed address: the documented
//! slow path, not the common one.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;

use super::api::{BlockObj, ClusterApi, GrantObj, KubeClusterApi, Written};
use super::block::{Block, seed};
use super::local::{GRANT_PREFIX, HeldGrant, Local};
use super::{ClusterIpam, TYPE};
use crate::error::Result;
use crate::ipam::host_local::range::{Range, RangeSet, from_u128, to_u128};
use crate::ipam::host_local::store::Store;

/// Lenders asked per ADD, and how long each may take to answer.
const LENDERS: usize = 3;
const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// Between watches the server ended without a change.
const RETRY: Duration = Duration::from_millis(50);
/// The ifname of a lender's reservation.
const GRANT_IFNAME: &str = "grant";

fn interval(s: &str, v4: bool) -> Option<(u128, u128)> {
    let (a, b) = s.split_once('-')?;
    let (a, b): (IpAddr, IpAddr) = (a.parse().ok()?, b.parse().ok()?);
    (a.is_ipv4() == v4 && b.is_ipv4() == v4 && a <= b).then(|| (to_u128(a), to_u128(b)))
}

/// An address of another node's block for `(id, ifname)`, or `None` when every lender asked said no
/// (or did not answer in time). Runs under the pool's claim lock.
pub async fn borrow(
    c: &ClusterIpam,
    local: &Local,
    api: &impl ClusterApi,
    listed: &[&BlockObj],
    id: &str,
    ifname: &str,
) -> Result<Option<IpAddr>> {
    let range = c.layout.range.to_string();
    let v4 = c.layout.range.addr().is_ipv4();
    let mut lenders: Vec<(&BlockObj, Vec<(u128, u128)>)> = listed
        .iter()
        .filter(|o| o.range == range && o.node != c.node)
        .filter_map(|o| {
            let b = Block::of(o.cidr.parse::<IpNet>().ok()?);
            let free = c.layout.free_intervals(&b, &c.holes);
            (c.layout.has(&b) && !free.is_empty()).then_some((*o, free))
        })
        .collect();
    lenders.sort_by_key(|(o, _)| seed(&[&c.node, id, ifname, &o.name]));
    let name = format!("{}-b-{:016x}", c.pool, seed(&[&range, &c.node, id, ifname]));
    for (o, free) in lenders.into_iter().take(LENDERS) {
        // Each lender gets its own API deadline: a slow one must not use up the next one's.
        let api = &api.renewed();
        let want = GrantObj {
            name: name.clone(),
            pool: c.pool.clone(),
            range: range.clone(),
            block: o.name.clone(),
            cidr: o.cidr.clone(),
            lender: o.node.clone(),
            window: free
                .iter()
                .map(|(a, b)| format!("{}-{}", from_u128(*a, v4), from_u128(*b, v4)))
                .collect(),
            ..holder(c, id, ifname)
        };
        // The grant's UID and resourceVersion, and its answer if it has one already.
        let (uid, rv, answered) = match api.create_grant(&want).await? {
            Written::Done(g) => (g.uid, g.resource_version, None),
            _ => {
                // A grant of this name (ours: the name is this node's, container's and interface's)
                // left by an earlier try: asked of another lender, or answered after that try gave up.
                match api.grant(&name).await? {
                    // Reused only if no DEL queued its deletion (which would delete it under us).
                    Some(g)
                        if g.lender == o.node
                            && g.state != "Refused"
                            && !local.return_queued(&name) =>
                    {
                        let ip = (g.state == "Granted").then(|| g.ip.parse().ok()).flatten();
                        (g.uid, g.resource_version, ip)
                    }
                    Some(g) => {
                        api.delete_grant(&name, Some(&g.uid)).await?;
                        match api.create_grant(&want).await? {
                            Written::Done(g) => (g.uid, g.resource_version, None),
                            _ => continue,
                        }
                    }
                    None => continue,
                }
            }
        };
        // A panic while waiting must not skip the grant's deletion below (a crash leaves it to the
        // reconcile, which deletes grants no local address stands for).
        let answer = match answered {
            Some(ip) => Ok(Some(ip)),
            None => crate::fail::guarded(wait_answer(api, &name, &rv)).await,
        };
        match answer {
            Ok(Some(ip))
                if want.window.iter().any(|w| {
                    interval(w, v4).is_some_and(|(a, b)| (a..=b).contains(&to_u128(ip)))
                }) =>
            {
                if local.hold_borrowed(
                    c,
                    id,
                    ifname,
                    ip,
                    &HeldGrant {
                        name: &name,
                        purpose: super::api::BORROWED,
                        uid: &uid,
                    },
                )? {
                    tracing::info!(%ip, lender = %o.node, grant = %name, "borrowed");
                    return Ok(Some(ip));
                }
                tracing::warn!(%ip, "a granted address is already held here: given back");
            }
            Ok(_) => {}
            Err(e) => {
                let _ = api.renewed().delete_grant(&name, Some(&uid)).await;
                return Err(e);
            }
        }
        // Refused, no answer, or an answer this node cannot use: the grant goes (a lender that answers
        // later sees it gone and releases the address).
        api.delete_grant(&name, Some(&uid)).await?;
    }
    Ok(None)
}

/// A grant's holder part: this node, `(id, ifname)` and the pod.
pub fn holder(c: &ClusterIpam, id: &str, ifname: &str) -> GrantObj {
    GrantObj {
        holder_node: c.node.clone(),
        container_id: id.to_string(),
        ifname: ifname.to_string(),
        pod_uid: c.pod.uid.clone(),
        pod: format!("{}/{}", c.pod.namespace, c.pod.name),
        ..Default::default()
    }
}

/// The lender's answer: the address, or `None` (refused, gone, or no answer within [`ANSWER_WAIT`]).
/// Watched from the grant's `resource_version`, so an answer is seen as it lands.
async fn wait_answer(
    api: &impl ClusterApi,
    name: &str,
    resource_version: &str,
) -> Result<Option<IpAddr>> {
    let end = tokio::time::Instant::now() + ANSWER_WAIT;
    let mut rv = resource_version.to_string();
    loop {
        crate::fail::point("ipam.grant.wait")?;
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let Some(Some(g)) = api.grant_change(name, &rv, left).await? else {
            return Ok(None);
        };
        match g.state.as_str() {
            "Granted" => return Ok(g.ip.parse().ok()),
            "Refused" => {
                tracing::info!(grant = name, lender = g.lender, "refused: {}", g.message);
                return Ok(None);
            }
            _ => {
                // A watch that ended early shows the grant as it was: no tight loop on it.
                if g.resource_version == rv {
                    tokio::time::sleep(RETRY).await;
                }
                rv = g.resource_version;
            }
        }
    }
}

/// The lender's side of one grant: reserve an address of the block in the asked window (or find the
/// one reserved already); `Err(message)` when it cannot.
pub fn lend(data_dir: &Path, g: &GrantObj) -> Result<std::result::Result<IpAddr, String>> {
    let Ok(net) = g.cidr.parse::<IpNet>() else {
        return Ok(Err(format!("{:?} is not a block", g.cidr)));
    };
    if super::validate_pool(&g.pool).is_err() {
        return Ok(Err(format!("{:?} is not a pool", g.pool)));
    }
    let block = Block::of(net);
    let local = Local::new(data_dir, &g.pool);
    if !local.is_owned(&block) {
        return Ok(Err(format!("block {net} is not this node's")));
    }
    let mut store = local.store(&block)?;
    if !local.is_owned(&block) {
        return Ok(Err(format!("block {net} is being given back")));
    }
    let id = format!("{GRANT_PREFIX}{}", g.name);
    if let Some(ip) = store.get_by_id(&id, GRANT_IFNAME)?.first() {
        return Ok(Ok(*ip));
    }
    let v4 = block.v4;
    let ranges: Vec<Range> = g
        .window
        .iter()
        .filter_map(|w| interval(w, v4))
        .filter_map(|(a, b)| {
            let (a, b) = (a.max(block.first), b.min(block.last()));
            (a <= b).then(|| Range {
                subnet: net,
                start: from_u128(a, v4),
                end: from_u128(b, v4),
                gateway: None,
            })
        })
        .collect();
    if ranges.is_empty() {
        return Ok(Err(format!("the asked window is not in block {net}")));
    }
    let set = RangeSet(ranges);
    let last = store.last_reserved(0)?;
    for (ip, _) in set.candidates(last) {
        if store.reserve(&id, GRANT_IFNAME, ip, 0)? {
            return Ok(Ok(ip));
        }
    }
    Ok(Err(format!(
        "block {net} has no free address in the asked window"
    )))
}

/// The lender's reservation for grant `name` goes (the grant was deleted).
pub fn unlend(data_dir: &Path, g: &GrantObj) -> Result<()> {
    let Ok(net) = g.cidr.parse::<IpNet>() else {
        return Ok(());
    };
    if super::validate_pool(&g.pool).is_err() {
        return Ok(());
    }
    let local = Local::new(data_dir, &g.pool);
    let block = Block::of(net);
    if !local.dir().join("blocks").join(block.dir_name()).exists() {
        return Ok(());
    }
    let released = local
        .store(&block)?
        .release_by_id(&format!("{GRANT_PREFIX}{}", g.name), GRANT_IFNAME)?;
    if !released.is_empty() {
        tracing::info!(grant = g.name, ?released, "lent address back");
    }
    Ok(())
}

/// Answer one grant if it is pending.
async fn serve(api: &impl ClusterApi, data_dir: &Path, g: &GrantObj) -> Result<()> {
    if !g.state.is_empty() || g.name.is_empty() {
        return Ok(());
    }
    let (state, ip, msg) = match lend(data_dir, g)? {
        Ok(ip) => ("Granted", ip.to_string(), String::new()),
        Err(m) => ("Refused", String::new(), m),
    };
    match api.answer_grant(g, state, &ip, &msg).await? {
        Written::Done(()) => {
            eprintln!(
                "attache ipam agent: grant {} of {} for {}: {state} {ip}{msg}",
                g.name, g.cidr, g.holder_node
            );
            Ok(())
        }
        // Deleted (or replaced) meanwhile: the borrower gave up; what was reserved goes.
        _ => unlend(data_dir, g),
    }
}

/// One sync of the lender's side from a complete list: pending grants answered, reservations of
/// grants that no longer exist released; and this node's queued returns carried out.
async fn sync(api: &impl ClusterApi, data_dir: &Path, node: &str) -> Result<String> {
    // A reservation made from here on may be for a grant the list does not show yet.
    let started = std::time::SystemTime::now();
    let (grants, rv) = api.grants_of_lender(node).await?;
    for g in &grants {
        serve(api, data_dir, g).await?;
    }
    let names: std::collections::BTreeSet<String> = grants
        .iter()
        .map(|g| format!("{GRANT_PREFIX}{}", g.name))
        .collect();
    for local in Local::pools(data_dir)? {
        for r in local.reservations()? {
            if r.id.starts_with(GRANT_PREFIX)
                && !names.contains(&r.id)
                && r.made.is_some_and(|m| m < started)
            {
                local.release_if_held(&r)?;
                tracing::info!(ip = %r.ip, grant = r.id, "lent address back (its grant is gone)");
            }
        }
    }
    drain_returns(api, data_dir).await?;
    Ok(rv)
}

/// Delete the grants this node's DELs queued.
pub async fn drain_returns(api: &impl ClusterApi, data_dir: &Path) -> Result<()> {
    for local in Local::pools(data_dir)? {
        for (grant, uid) in local.returns() {
            let uid = Some(uid.as_str()).filter(|u| !u.is_empty());
            match api.delete_grant(&grant, uid).await {
                // A 409: a grant of that name with another UID, made later: not this one.
                Ok(_) => local.returned(&grant),
                Err(e) => eprintln!("attache ipam: deleting AddressGrant {grant}: {e}"),
            }
        }
    }
    Ok(())
}

/// `attache ipam agent`: answer the grants asked of this node's blocks as they come (a watch), resync
/// from a complete list every `resync`, carry out queued returns. Runs until killed; API failures are
/// logged and retried.
pub async fn agent(
    data_dir: &Path,
    node: &str,
    kubeconfig: Option<&Path>,
    resync: Duration,
) -> Result<()> {
    let mut api = KubeClusterApi::connect(kubeconfig, Duration::from_secs(30)).await?;
    eprintln!(
        "attache ipam agent: lending the blocks of node {node} ({})",
        data_dir.display()
    );
    loop {
        api.renew();
        let rv = match sync(&api, data_dir, node).await {
            Ok(rv) => rv,
            Err(e) => {
                tracing::warn!("{TYPE} agent: {e}");
                eprintln!("attache ipam agent: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let until = tokio::time::Instant::now() + resync;
        api.renew();
        let secs = resync.as_secs().clamp(1, 290) as u32;
        let mut events = match api.watch_grants(node, &rv, secs).await {
            Ok(s) => Box::pin(s),
            Err(e) => {
                eprintln!("attache ipam agent: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                ev = events.next() => ev,
                _ = tokio::time::sleep_until(until) => None,
                _ = tokio::time::sleep(Duration::from_secs(1)) => Some(Some((false, GrantObj::default()))),
            };
            api.renew();
            let r = match next {
                None | Some(None) => break,
                // Deleted: the address comes back, unless a grant of that name exists again.
                Some(Some((true, g))) => match api.grant(&g.name).await {
                    Ok(None) => unlend(data_dir, &g),
                    Ok(Some(_)) => Ok(()),
                    Err(e) => Err(e),
                },
                Some(Some((false, g))) if g.name.is_empty() => drain_returns(&api, data_dir).await,
                Some(Some((false, g))) => serve(&api, data_dir, &g).await,
            };
            if let Err(e) = r {
                eprintln!("attache ipam agent: {e}");
            }
        }
    }
}
