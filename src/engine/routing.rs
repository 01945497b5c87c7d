//! Routing of a pod with several interfaces (`podRouting: "source"`, or `attache.routing` on a selection
//! or a definition): each routed interface gets a table of its own and `from <address>` rules, so that
//! what comes in on an interface goes out through it, with exactly one default route in main.
//!
//! - **Tables and rules**: interface `i` (pod-side ifindex) gets table [`table_for`]`(i)` — `100 + i`,
//!   stepping over the kernel's 253–255: no scan, no lock, nothing shared between pods — and a rule
//!   `from <address> lookup <table>` at priority [`RULE_PRIORITY`] for each of its addresses. Its routes
//!   of the main table are copied there, with a default via its gateway; a default route it had in main
//!   leaves main (only the cluster network's, or the one `default-route` names, stays).
//! - **A default moved off the cluster network** (`default-route` on a selection): the cluster interface
//!   is routed by source too (its own default lives in its table), and `clusterCIDRs` / `serviceCIDRs`
//!   stay on it in main. Without them, such a pod is refused: cut off from its Services silently is the
//!   failure this exists to prevent.
//! - **Sysctls, before any interface exists**: `rp_filter` loose (2) in the pod's `conf/default` (every
//!   interface made afterwards is born with it) and in `conf/all` when that is strict (1; a new netns
//!   copies the host's `conf/all`, and the effective value is the larger of `all` and the interface's).
//!   Interfaces that share a subnet get `arp_ignore=1` and `arp_announce=2` (each answers ARP only for
//!   its own address).
//!
//! All of it is in the record ([`PodRouting`]): CHECK verifies it, DEL (and a failed ADD) removes the
//! rules, empties the tables, and restores the sysctls when the netns still exists; without the netns
//! there is nothing to do.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::engine::config::AttacheConf;
use crate::engine::record::{AttachmentRecord, PodRecord};
use crate::error::{Error, Result};
use crate::netlink::policy::{MAIN_TABLE, Rule};
use crate::netlink::{Netlink, RouteSpec};
use crate::netns::NetNs;

/// The priority of every source rule attache makes: before `main` (32766), after `local` (0).
pub const RULE_PRIORITY: u32 = 1000;

/// The table of the pod interface with index `ifindex`: `100 + ifindex`, never one of the kernel's own
/// (253 default, 254 main, 255 local).
pub fn table_for(ifindex: u32) -> u32 {
    if ifindex < 153 {
        100 + ifindex
    } else {
        ifindex.saturating_add(103)
    }
}

/// A sysctl attache set in the pod, with the value it had. `key` is its path under `/proc/sys`
/// (`net/ipv4/conf/net1/arp_ignore`: an interface name may hold dots).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysctlChange {
    pub key: String,
    pub before: String,
    pub value: String,
}

/// One interface's table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRec {
    pub ifname: String,
    pub table: u32,
}

/// A route kept in main for a cluster CIDR, through the cluster interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidrRoute {
    pub dst: IpNet,
    pub gw: IpAddr,
    pub ifname: String,
}

/// What routing set in a pod beyond its attachments.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRouting {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<SysctlChange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableRec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_routes: Vec<CidrRoute>,
}

/// Whether the pod is routed by source (some secondary interface asks for it).
pub fn wanted(rec: &PodRecord) -> bool {
    rec.attachments.iter().skip(1).any(|a| a.source_routing)
}

/// Whether a selection takes the default route off the cluster network.
fn default_moved(rec: &PodRecord) -> bool {
    rec.attachments
        .iter()
        .skip(1)
        .any(|a| !a.default_route.is_empty())
}

/// Refuse, before anything is made, a pod routed by source whose default route leaves the cluster
/// network while the configuration does not say which CIDRs must stay on it.
pub fn refuse_lost_services(rec: &PodRecord, ac: &AttacheConf) -> Result<()> {
    if wanted(rec)
        && default_moved(rec)
        && (ac.cluster_cidrs.is_empty() || ac.service_cidrs.is_empty())
    {
        return Err(Error::config(
            "podRouting \"source\" with a default-route off the cluster network needs clusterCIDRs and serviceCIDRs in the configuration (attache install fills them where it can read them): without them the pod would reach no Service and no other pod",
        ));
    }
    Ok(())
}

fn read_sysctl(path: &str) -> Option<String> {
    crate::attach::iface::read_sysctl(path).ok()
}

/// The pod-wide sysctls to set before any interface exists: `rp_filter` loose in `conf/default`, and in
/// `conf/all` when that is strict. Reads only.
pub fn pod_sysctls(netns: &Path) -> Result<Vec<SysctlChange>> {
    let ns = NetNs::open(netns)?;
    ns.run(|| {
        let mut out = Vec::new();
        // conf/default: every interface made afterwards is born loose; conf/all: only when strict (1),
        // as 0 and 2 are no stricter than the interfaces' 2.
        for (key, strict_only) in [
            ("net/ipv4/conf/default/rp_filter", false),
            ("net/ipv4/conf/all/rp_filter", true),
        ] {
            if let Some(before) = read_sysctl(key)
                && (if strict_only {
                    before == "1"
                } else {
                    before != "2"
                })
            {
                out.push(SysctlChange {
                    key: key.into(),
                    before,
                    value: "2".into(),
                });
            }
        }
        out
    })
}

/// Write recorded sysctl changes in the pod.
pub fn set_sysctls(netns: &Path, changes: &[SysctlChange]) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let ns = NetNs::open(netns)?;
    let changes = changes.to_vec();
    ns.run(move || -> Result<()> {
        for c in &changes {
            crate::attach::iface::write_sysctl(&c.key, &c.value)?;
        }
        Ok(())
    })?
}

/// The default gateways of an attachment, by family: its default routes' gateways, else its addresses'.
pub fn gateways(a: &AttachmentRecord) -> Vec<IpAddr> {
    let Some(res) = &a.result else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for v4 in [true, false] {
        let gw = res
            .routes
            .iter()
            .filter(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == v4)
            .find_map(|r| r.gw)
            .or_else(|| {
                res.ips
                    .iter()
                    .filter_map(|i| i.gateway)
                    .find(|g| g.is_ipv4() == v4)
            });
        out.extend(gw);
    }
    out
}

fn default_of(v4: bool) -> IpNet {
    if v4 { "0.0.0.0/0" } else { "::/0" }
        .parse()
        .expect("literal")
}

/// Plan the pod's routing once every attachment is made: its tables, rules and cluster routes, from
/// the interfaces' indexes and results, into `rec.routing` (which already holds the pod-wide sysctls).
/// Reads only; `cluster_gws` are the cluster network's default gateways as its ADD made them.
pub async fn plan(
    netns: &Path,
    ac: &AttacheConf,
    rec: &mut PodRecord,
    cluster_gws: &[IpAddr],
) -> Result<()> {
    let ns = NetNs::open(netns)?;
    let nl = Netlink::connect(Some(&ns))?;
    let moved = default_moved(rec);
    let wanted_here = wanted(rec);
    let mut in_use: Vec<u32> = nl.rules().await?.iter().map(|r| r.table).collect();
    in_use.extend(nl.route_entries(None, None).await?.iter().map(|r| r.table));
    // Worked on a copy: a plan that fails leaves the record's sysctls for the rollback to restore.
    let mut routing = rec.routing.clone().unwrap_or_default();
    for (i, a) in rec.attachments.iter().enumerate() {
        let routed = if i == 0 {
            moved && wanted_here
        } else {
            a.source_routing
        };
        let Some(res) = a.result.as_ref().filter(|_| routed) else {
            continue;
        };
        let addrs = crate::attach::sbr::addresses_of(res, &a.ifname);
        // An interface without addresses (layer 2 only), or none in the pod (a device handed to an
        // application): nothing to route.
        let Some(link) = (match addrs.is_empty() {
            true => None,
            false => nl.link(&a.ifname).await?,
        }) else {
            continue;
        };
        let table = table_for(link.index);
        // A table something else in the pod uses already (a chained sbr picks from 100 up) is not
        // attache's to fill, nor to empty at DEL.
        if in_use.contains(&table) {
            return Err(Error::config(format!(
                "{}: routing table {table} is already in use in the pod (a chained sbr?); podRouting \"source\" and sbr on one interface do the same job: use one",
                a.ifname
            )));
        }
        routing.tables.push(TableRec {
            ifname: a.ifname.clone(),
            table,
        });
        for ip in addrs {
            routing.rules.push(Rule::from_addr(
                ip.address.addr(),
                table,
                Some(RULE_PRIORITY),
            ));
        }
    }
    if moved {
        let cluster = &rec.attachments[0].ifname;
        for dst in ac.cluster_cidrs.iter().chain(&ac.service_cidrs) {
            if let Some(gw) = cluster_gws
                .iter()
                .find(|g| g.is_ipv4() == dst.addr().is_ipv4())
            {
                routing.cluster_routes.push(CidrRoute {
                    dst: *dst,
                    gw: *gw,
                    ifname: cluster.clone(),
                });
            }
        }
    }
    // Interfaces sharing a subnet: each answers ARP for its own addresses only.
    let subnets: Vec<(String, IpNet)> = rec
        .attachments
        .iter()
        .flat_map(|a| {
            a.result.iter().flat_map(move |r| {
                crate::attach::sbr::addresses_of(r, &a.ifname)
                    .into_iter()
                    .filter(|ip| ip.address.addr().is_ipv4())
                    .map(move |ip| (a.ifname.clone(), ip.address.trunc()))
            })
        })
        .collect();
    let mut shared: Vec<String> = Vec::new();
    for (i, (a, na)) in subnets.iter().enumerate() {
        for (b, nb) in &subnets[i + 1..] {
            if a != b && (na.contains(nb) || nb.contains(na)) {
                for n in [a, b] {
                    if !shared.contains(n) {
                        shared.push(n.clone());
                    }
                }
            }
        }
    }
    let keys: Vec<(String, &str)> = shared
        .iter()
        .flat_map(|n| {
            [
                (format!("net/ipv4/conf/{n}/arp_ignore"), "1"),
                (format!("net/ipv4/conf/{n}/arp_announce"), "2"),
            ]
        })
        .collect();
    let befores = ns.run(move || {
        keys.into_iter()
            .filter_map(|(k, v)| {
                read_sysctl(&k).map(|before| SysctlChange {
                    key: k,
                    before,
                    value: v.to_string(),
                })
            })
            .collect::<Vec<_>>()
    })?;
    routing.sysctls.extend(befores);
    rec.routing = Some(routing);
    Ok(())
}

/// Make what [`plan`] recorded: each table (the interface's routes of main copied, its default via its
/// gateway), the rules, the cluster's CIDRs on the cluster interface, the sysctls; the secondary
/// interfaces' defaults leave main (and their recorded results say which table holds them).
pub async fn apply(netns: &Path, rec: &mut PodRecord, cluster_gws: &[IpAddr]) -> Result<()> {
    let Some(routing) = rec.routing.clone() else {
        return Ok(());
    };
    let ns = NetNs::open(netns)?;
    let nl = Netlink::connect(Some(&ns))?;
    for t in &routing.tables {
        let Some(i) = rec.attachments.iter().position(|a| a.ifname == t.ifname) else {
            continue;
        };
        let Some(link) = nl.link(&t.ifname).await? else {
            return Err(Error::Internal(format!("{} is not in the pod", t.ifname)));
        };
        let keeps_default =
            (i == 0 && !default_moved(rec)) || !rec.attachments[i].default_route.is_empty();
        let main = nl.route_entries(Some(MAIN_TABLE), Some(link.index)).await?;
        for r in &main {
            nl.copy_route(r, t.table).await?;
        }
        let gws = if i == 0 {
            cluster_gws.to_vec()
        } else {
            gateways(&rec.attachments[i])
        };
        for gw in gws {
            let has_default = main
                .iter()
                .any(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == gw.is_ipv4());
            if !has_default {
                let mut r = RouteSpec::via(default_of(gw.is_ipv4()), Some(gw), link.index);
                r.table = Some(t.table);
                nl.add_route(&r).await?;
            }
        }
        if !keeps_default {
            for r in main.iter().filter(|r| r.dst.prefix_len() == 0) {
                nl.del_route_entry(r).await?;
            }
            if let Some(res) = rec.attachments[i].result.as_mut() {
                for route in res.routes.iter_mut().filter(|r| r.dst.prefix_len() == 0) {
                    route.table = Some(t.table);
                }
            }
        }
        // Born loose from conf/default; set again for an interface that came in from elsewhere.
        let key = format!("net/ipv4/conf/{}/rp_filter", t.ifname);
        ns.run(move || crate::attach::iface::write_sysctl(&key, "2"))??;
    }
    for r in &routing.rules {
        nl.add_rule(r).await?;
    }
    let main = nl.route_entries(Some(MAIN_TABLE), None).await?;
    for c in &routing.cluster_routes {
        let Some(link) = nl.link(&c.ifname).await? else {
            return Err(Error::Internal(format!("{} is not in the pod", c.ifname)));
        };
        // Another route to the same network (the kernel would answer "exists" and keep it) would
        // leave the CIDR off the cluster network without a word.
        if let Some(other) = main
            .iter()
            .find(|r| r.dst == c.dst && !(r.gw == Some(c.gw) && r.oif == Some(link.index)))
        {
            return Err(Error::config(format!(
                "{} must stay on {} via {}, and the pod already routes it otherwise ({other})",
                c.dst, c.ifname, c.gw
            )));
        }
        nl.add_route(&RouteSpec::via(c.dst, Some(c.gw), link.index))
            .await?;
    }
    let arp: Vec<SysctlChange> = routing
        .sysctls
        .iter()
        .filter(|c| {
            !c.key.starts_with("net/ipv4/conf/all/") && !c.key.starts_with("net/ipv4/conf/default/")
        })
        .cloned()
        .collect();
    set_sysctls(netns, &arp)
}

/// Undo what the record says routing set, in a pod whose netns still exists. Best effort: every step
/// runs, errors are collected.
pub async fn teardown(netns: &Path, routing: &PodRouting) -> Result<()> {
    let ns = NetNs::open(netns)?;
    let nl = Netlink::connect(Some(&ns))?;
    let mut errors = Vec::new();
    for r in &routing.rules {
        if let Err(e) = nl.del_rule(r).await {
            errors.push(e);
        }
    }
    for t in &routing.tables {
        match nl.route_entries(Some(t.table), None).await {
            Ok(routes) => {
                for r in routes {
                    if let Err(e) = nl.del_route_entry(&r).await {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    for c in &routing.cluster_routes {
        if let Ok(Some(link)) = nl.link(&c.ifname).await
            && let Err(e) = nl
                .del_route(&RouteSpec::via(c.dst, Some(c.gw), link.index))
                .await
        {
            errors.push(e);
        }
    }
    // Restored where the value is still attache's (an interface gone took its own with it).
    let sysctls = routing.sysctls.clone();
    let restored = ns.run(move || -> Vec<Error> {
        let mut errors = Vec::new();
        for c in &sysctls {
            if read_sysctl(&c.key).as_deref() == Some(c.value.as_str())
                && let Err(e) = crate::attach::iface::write_sysctl(&c.key, &c.before)
            {
                errors.push(e);
            }
        }
        errors
    })?;
    errors.extend(restored);
    Error::from_list(errors)
}

/// CHECK: every recorded rule is there, every table has routes, every sysctl has its value.
pub async fn check(netns: &Path, routing: &PodRouting) -> Result<()> {
    let ns = NetNs::open(netns)?;
    let nl = Netlink::connect(Some(&ns))?;
    let rules = nl.rules().await?;
    for r in &routing.rules {
        if !rules.contains(r) {
            return Err(Error::Mismatch(format!("the pod has lost its rule {r}")));
        }
    }
    for t in &routing.tables {
        if nl.route_entries(Some(t.table), None).await?.is_empty() {
            return Err(Error::Mismatch(format!(
                "table {} of {} is empty",
                t.table, t.ifname
            )));
        }
    }
    let main = nl.route_entries(Some(MAIN_TABLE), None).await?;
    for c in &routing.cluster_routes {
        let index = nl.link(&c.ifname).await?.map(|l| l.index);
        if !main
            .iter()
            .any(|r| r.dst == c.dst && r.gw == Some(c.gw) && r.oif.is_some() && r.oif == index)
        {
            return Err(Error::Mismatch(format!(
                "the pod no longer routes {} via {} on {}",
                c.dst, c.gw, c.ifname
            )));
        }
    }
    let sysctls = routing.sysctls.clone();
    let wrong = ns.run(move || {
        sysctls
            .into_iter()
            .find(|c| read_sysctl(&c.key).as_deref() != Some(c.value.as_str()))
    })?;
    if let Some(c) = wrong {
        return Err(Error::Mismatch(format!(
            "{} is no longer {}",
            c.key, c.value
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_one_per_index_and_never_the_kernels() {
        let mut seen = std::collections::HashSet::new();
        for i in 1..2000 {
            let t = table_for(i);
            assert!(!(253..=255).contains(&t) && t >= 100, "{i} -> {t}");
            assert!(seen.insert(t), "{i} -> {t} twice");
        }
        assert_eq!(table_for(2), 102);
        assert_eq!(table_for(u32::MAX), u32::MAX);
    }
}
