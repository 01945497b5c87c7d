//! What the meta-plugin does to a pod as a whole, beyond its attachments: one link group for the pod's
//! native interfaces (deleted together, in one kernel wait), the node links labelled as the container's,
//! and the pod's default route.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::netlink::{Netlink, RouteSpec};
use crate::netns::NetNs;

/// The link group of a pod's native interfaces: derived from the attachment record's key, never 0
/// (the kernel's default group).
pub fn link_group(container_id: &str, ifname: &str) -> u32 {
    (crate::files::fnv1a(&[container_id, ifname]) as u32) | 0x8000_0000
}

/// Delete every pod interface of a link group at once: the kernel unregisters them together and waits
/// for one RCU grace period instead of one per interface. Teardown of each attachment follows and finds
/// its link gone.
pub async fn delete_link_group(netns: &Path, group: u32) -> Result<()> {
    let ns = NetNs::open(netns)?;
    Netlink::connect(Some(&ns))?.del_group(group).await
}

/// Delete the node's links that carry a container's alias (what its attachments made there), whether
/// or not any configuration still describes them. Returns the names deleted.
pub async fn delete_owned_links(container_id: &str) -> Result<Vec<String>> {
    let node = Netlink::connect(None)?;
    let prefix = crate::attach::naming::owner_alias_prefix(container_id);
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for l in node.links().await? {
        if l.alias.as_deref().is_some_and(|a| a.starts_with(&prefix)) {
            match node.del_link(&l.name).await {
                Ok(true) => deleted.push(l.name),
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    Error::from_list(errors).map(|_| deleted)
}

/// An interface in a pod's namespace, as `attache inspect` shows one it has no record of.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PodLink {
    pub name: String,
    /// `veth`, `macvlan`, ... (`None` for plain devices).
    pub kind: Option<String>,
    /// Its addresses (CIDR), link-local IPv6 aside.
    pub addresses: Vec<String>,
}

/// The interfaces of a network namespace, `lo` aside. Read only.
pub async fn pod_links(ns: &NetNs) -> Result<Vec<PodLink>> {
    let nl = Netlink::connect(Some(ns))?;
    let mut out = Vec::new();
    for l in nl.links().await? {
        if l.name == "lo" {
            continue;
        }
        let addresses = nl
            .addrs(l.index, None)
            .await?
            .into_iter()
            .filter(|a| !matches!(a, IpNet::V6(v6) if v6.addr().segments()[0] & 0xffc0 == 0xfe80))
            .map(|a| a.to_string())
            .collect();
        out.push(PodLink {
            name: l.name,
            kind: l.kind,
            addresses,
        });
    }
    Ok(out)
}

/// Make `gw` via `ifname` the pod's default route of its family: other default routes of that family
/// (on any interface) go.
pub async fn move_default_route(netns: &Path, ifname: &str, gw: IpAddr) -> Result<()> {
    let ns = NetNs::open(netns)?;
    let nl = Netlink::connect(Some(&ns))?;
    let link = nl
        .link(ifname)
        .await?
        .ok_or_else(|| Error::Internal(format!("{ifname} is not in the pod")))?;
    for (dst, g, oif) in nl.routes(gw.is_ipv4(), None).await? {
        if dst.prefix_len() == 0 && !(oif == Some(link.index) && g == Some(gw)) {
            nl.del_route(&RouteSpec::via(dst, g, oif.unwrap_or(0)))
                .await?;
        }
    }
    let default: IpNet = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" }
        .parse()
        .expect("literal");
    nl.add_route(&RouteSpec::via(default, Some(gw), link.index))
        .await
}
