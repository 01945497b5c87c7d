//! Addresses that outlive a pod: a StatefulSet pod's (`sticky: true`: the same namespace/name gets the
//! same address back, on whatever node it lands) and an IPAMClaim's (`ipamClaimReference`, NPWG v1.3:
//! the address lives as long as the claim, recorded in its status).
//!
//! Both are a persistent `AddressGrant` (purpose `Sticky` or `Claim`), named by the identity, holding
//! one address of a block: the block's owner keeps it reserved as `grant:<name>` for as long as the
//! grant exists (its agent releases it when the grant goes), so its own ADDs never hand it out. The
//! node the pod runs on records it in `borrowed/` like a borrowed address, but its DEL leaves the grant:
//! the next incarnation takes the grant over (a resourceVersion-conditioned patch of its holder) and
//! gets the same address — without asking the lender anything. The grant is deleted by the lender's
//! reconcile when the claim is gone, or the StatefulSet is gone or scaled below the pod's ordinal and
//! the pod is gone. These pods make API calls on every ADD: it is the price of an identity.

use std::net::IpAddr;

use super::api::{CLAIM, ClusterApi, GrantObj, KubeClusterApi, STICKY, Written};
use super::block::seed;
use super::local::{GRANT_PREFIX, HeldGrant, Local};
use super::{ClusterIpam, TYPE, claim};
use crate::error::{Error, Result};

/// The identity an address belongs to.
struct Identity {
    purpose: &'static str,
    grant: String,
    owner_namespace: String,
    owner_name: String,
    ordinal: Option<u64>,
}

const RACES: usize = 4;

/// A persistent address for this ADD, or `None` when the pod has no identity (not a StatefulSet's,
/// with `sticky`): the ordinary path then.
pub async fn add(c: &ClusterIpam, local: &Local, id: &str, ifname: &str) -> Result<Option<IpAddr>> {
    let c = &*c.with_node()?;
    let what = match &c.claim {
        Some(cl) => format!("IPAMClaim {}/{cl}", c.pod.namespace),
        None => format!(
            "the sticky address of pod {}/{}",
            c.pod.namespace, c.pod.name
        ),
    };
    let r = match KubeClusterApi::connect(c.kubeconfig_path().as_deref(), c.api_timeout).await {
        Ok(api) => add_with(c, local, &api, id, ifname).await,
        Err(e) => Err(e),
    };
    match r {
        // The API is down and nothing says this pod has an identity: a pod whose name cannot be a
        // StatefulSet's (`<set>-<ordinal>`) is served like any other, from this node's blocks, so
        // that a sticky network does not stop every pod while the API is away.
        Err(Error::TryAgain(m)) if c.claim.is_none() && !stateful_name(&c.pod.name) => {
            tracing::warn!(pod = %c.pod.name, "sticky: the API is unreachable ({m}); the pod's name is no StatefulSet's: an ordinary address");
            Ok(None)
        }
        r => r.map_err(|e| e.context(&what)),
    }
}

/// `<set>-<ordinal>`: a name a StatefulSet's pod has.
fn stateful_name(name: &str) -> bool {
    name.rsplit_once('-').is_some_and(|(set, n)| {
        !set.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

async fn identity(
    c: &ClusterIpam,
    api: &impl ClusterApi,
    ifname: &str,
) -> Result<Option<Identity>> {
    let range = c.layout.range.to_string();
    let ns = &c.pod.namespace;
    if let Some(cl) = &c.claim {
        let Some((iface, _)) = api.ipamclaim(ns, cl).await? else {
            return Err(Error::config(format!("IPAMClaim {ns}/{cl} does not exist")));
        };
        if !iface.is_empty() && iface != ifname {
            return Err(Error::config(format!(
                "IPAMClaim {ns}/{cl} is for interface {iface}, not {ifname}"
            )));
        }
        return Ok(Some(Identity {
            purpose: CLAIM,
            grant: format!("{}-c-{:016x}", c.pool, seed(&[&range, ns, cl])),
            owner_namespace: ns.clone(),
            owner_name: cl.clone(),
            ordinal: None,
        }));
    }
    let Some((_, Some(set))) = api.pod_owner(ns, &c.pod.name).await? else {
        return Ok(None);
    };
    let ordinal = c
        .pod
        .name
        .strip_prefix(&format!("{set}-"))
        .and_then(|o| o.parse().ok());
    Ok(Some(Identity {
        purpose: STICKY,
        grant: format!(
            "{}-s-{:016x}",
            c.pool,
            seed(&[&range, ns, &c.pod.name, ifname])
        ),
        owner_namespace: ns.clone(),
        owner_name: set,
        ordinal,
    }))
}

async fn add_with(
    c: &ClusterIpam,
    local: &Local,
    api: &impl ClusterApi,
    id: &str,
    ifname: &str,
) -> Result<Option<IpAddr>> {
    if c.pod.name.is_empty() || c.pod.namespace.is_empty() {
        return match &c.claim {
            Some(_) => Err(Error::config(
                "an IPAMClaim needs the pod (K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS)",
            )),
            None => Ok(None),
        };
    }
    let Some(who) = identity(c, api, ifname).await? else {
        return Ok(None);
    };
    let me = super::grant::holder(c, id, ifname);
    for _ in 0..RACES {
        let (ip, uid) = match api.grant(&who.grant).await? {
            Some(g) => {
                let ip = match g.ip.parse::<IpAddr>() {
                    Ok(ip) if c.layout.range.contains(&ip) => ip,
                    _ => {
                        return Err(Error::Ipam(format!(
                            "AddressGrant {} holds {:?}, which is no address of range {}",
                            g.name, g.ip, c.layout.range
                        )));
                    }
                };
                if who.purpose == CLAIM && !g.pod_uid.is_empty() && g.pod_uid != c.pod.uid {
                    // Another pod holds the claim: refused while that pod exists.
                    if let Some((ns, name)) = g.pod.split_once('/')
                        && api.pod_uid(ns, name).await?.as_deref() == Some(g.pod_uid.as_str())
                    {
                        // Transient (a live migration's source not gone yet): the runtime retries.
                        return Err(Error::TryAgain(format!(
                            "it is used by pod {} (UID {}): one claim, one pod at a time",
                            g.pod, g.pod_uid
                        )));
                    }
                }
                match api.take_grant(&g, &me).await? {
                    Written::Done(()) => (ip, g.uid.clone()),
                    _ => continue, // changed meanwhile: read again
                }
            }
            None => match create(c, local, api, &who, &me, id, ifname).await? {
                Some(got) => got,
                None => continue, // another node created it first: take it over
            },
        };
        if !local.hold_borrowed(
            c,
            id,
            ifname,
            ip,
            &HeldGrant {
                name: &who.grant,
                purpose: who.purpose,
                uid: &uid,
            },
        )? {
            return Err(Error::Ipam(format!(
                "{ip} ({}) is already held here by another container",
                who.grant
            )));
        }
        if who.purpose == CLAIM {
            let cidr = format!("{ip}/{}", c.layout.range.prefix_len());
            api.set_claim_status(&who.owner_namespace, &who.owner_name, &[cidr], &c.pod.name)
                .await?;
        }
        return Ok(Some(ip));
    }
    Err(Error::TryAgain(format!(
        "AddressGrant {} kept changing ({RACES} tries)",
        who.grant
    )))
}

/// A new persistent address, from a block of this node (claimed if need be): reserved for the grant,
/// then the grant created. `None` if another node created the grant first (this reservation goes).
async fn create(
    c: &ClusterIpam,
    local: &Local,
    api: &impl ClusterApi,
    who: &Identity,
    me: &GrantObj,
    id: &str,
    ifname: &str,
) -> Result<Option<(IpAddr, String)>> {
    let lender_id = format!("{GRANT_PREFIX}{}", who.grant);
    let mut ip = local.allocate(c, &lender_id, "grant")?;
    if ip.is_none() {
        let _claiming = local.claim_lock(c.api_timeout * 3)?;
        ip = local.allocate(c, &lender_id, "grant")?;
        if ip.is_none() {
            let mut plain = c.clone();
            plain.borrow = false;
            claim::claim_block(&plain, local, api, id, ifname).await?;
            ip = local.allocate(c, &lender_id, "grant")?;
        }
    }
    let Some(ip) = ip else {
        return Err(Error::Ipam(format!(
            "{TYPE}: pool {} has no free address in this node's blocks for a persistent address",
            c.pool
        )));
    };
    let block = c
        .layout
        .block_of(ip)
        .ok_or_else(|| Error::Internal(format!("{ip} is outside the range")))?;
    let rec = local
        .owned_record(&block)?
        .unwrap_or_else(|| super::local::Owned {
            name: String::new(),
            uid: String::new(),
            cidr: block.net().to_string(),
            range: c.layout.range.to_string(),
        });
    let g = GrantObj {
        name: who.grant.clone(),
        pool: c.pool.clone(),
        range: c.layout.range.to_string(),
        block: rec.name,
        cidr: block.net().to_string(),
        lender: c.node.clone(),
        window: vec![format!("{ip}-{ip}")],
        purpose: who.purpose.to_string(),
        owner_namespace: who.owner_namespace.clone(),
        owner_name: who.owner_name.clone(),
        ordinal: who.ordinal,
        ip: ip.to_string(),
        ..me.clone()
    };
    match api.create_grant(&g).await? {
        Written::Done(made) => Ok(Some((ip, made.uid))),
        // Another node created it first: this reservation goes. (On an error the create may have
        // happened: the reservation stays, and the agent's sync releases it if no grant names it.)
        _ => {
            let released = local.release(&lender_id, "grant", &[ip], Some(&c.layout));
            if let Err(e) = released {
                tracing::warn!(%ip, "could not release a reservation for {}: {e}", who.grant);
            }
            Ok(None)
        }
    }
}
