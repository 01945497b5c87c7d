//! `sbr`, source-based routing, natively: a chained plugin that makes the traffic *from* an interface's
//! addresses leave through that interface, as the reference `sbr` does. For each address of
//! `CNI_IFNAME` in `prevResult`: a rule `from <addr> lookup <table>` (the first table from 100 up that
//! no rule or route uses, one per address), a default route via the address's gateway (or the
//! configured `gateways`) in that table, and the interface's routes of the main table copied there;
//! then they leave the main table — all of them, or, with `addSourceHints`, all but the subnet route,
//! which stays with the address as its preferred source. With `table`, only the rules are added (the
//! table is the user's). The result is `prevResult`, unchanged.
//!
//! DEL removes the rules whose source is an address of the interface (or, when the interface is gone
//! already, of `prevResult`); its routes went with it. A namespace already gone is done. CHECK verifies
//! the rules. Debian 12's reference `sbr` (1.1.1) has neither `table`, `gateways` nor `addSourceHints`
//! and puts all addresses in one table; for one address per family the two agree. Unlike the reference,
//! a configured gateway stays the table's default when the main table had a default route on the
//! interface too (the reference's copy of that route replaces the one it added).

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::PodNs;
use super::driver::{Driver, NativeType};
use crate::cni::conf::NetConf;
use crate::cni::skel::CmdArgs;
use crate::cni::spec::{CniResult, IpConfig};
use crate::error::{Error, Result};
use crate::netlink::policy::{MAIN_TABLE, Rule};
use crate::netlink::{Netlink, RouteSpec};

/// The first table the reference picks from.
pub const FIRST_TABLE: u32 = 100;

/// Whether a routing table number is one a configuration may name: not 0 (unspecified) and not the
/// kernel's own `default` (253), `main` (254) and `local` (255).
pub fn check_table(t: u64, key: &str) -> Result<u32> {
    match t {
        0 | 253..=255 => Err(Error::config(format!(
            "{key}: table {t} is the kernel's own (0 unspecified, 253 default, 254 main, 255 local)"
        ))),
        t if t > u32::MAX as u64 - 1 => Err(Error::config(format!(
            "{key}: table {t} is out of range (1 to {})",
            u32::MAX - 1
        ))),
        t => Ok(t as u32),
    }
}

/// The checked configuration.
#[derive(Debug)]
pub struct SbrConf {
    table: Option<u32>,
    gw4: Option<IpAddr>,
    gw6: Option<IpAddr>,
    add_source_hints: bool,
}

/// The configuration's keys DEL needs: `table` (read leniently).
fn table_of(conf: &NetConf) -> Option<u32> {
    conf.raw
        .get("table")
        .and_then(Value::as_u64)
        .and_then(|t| check_table(t, "sbr").ok())
}

/// The addresses of `ifname` in a result: those whose interface index names it, or names none.
pub fn addresses_of<'a>(prev: &'a CniResult, ifname: &str) -> Vec<&'a IpConfig> {
    prev.ips
        .iter()
        .filter(|ip| match ip.interface {
            Some(i) if i < prev.interfaces.len() => prev.interfaces[i].name == ifname,
            _ => true,
        })
        .collect()
}

impl Driver for SbrConf {
    fn parse(_: NativeType, _: &CmdArgs, conf: &NetConf) -> Result<SbrConf> {
        let raw = &conf.raw;
        let table = match raw.get("table") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(t) => Some(check_table(t, "sbr")?),
                None => {
                    return Err(Error::config(format!(
                        "sbr: table {n} is out of range (1 to {})",
                        u32::MAX - 1
                    )));
                }
            },
            Some(other) => {
                return Err(Error::config(format!(
                    "sbr: table must be a number, got {other}"
                )));
            }
        };
        let (mut gw4, mut gw6) = (None, None);
        match raw.get("gateways") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                if list.len() > 2 {
                    return Err(Error::config(
                        "sbr: gateways may hold at most 2 entries (one IPv4, one IPv6)",
                    ));
                }
                for g in list {
                    let ip: IpAddr = g.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                        Error::config(format!("sbr: gateways: {g} is not an IP address"))
                    })?;
                    let slot = if ip.is_ipv4() { &mut gw4 } else { &mut gw6 };
                    if let Some(prev) = slot.replace(ip) {
                        return Err(Error::config(format!(
                            "sbr: gateways holds two addresses of one family: {prev} and {ip}"
                        )));
                    }
                }
            }
            Some(other) => {
                return Err(Error::config(format!(
                    "sbr: gateways must be a list of addresses, got {other}"
                )));
            }
        }
        let add_source_hints = match raw.get("addSourceHints") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(Error::config(format!(
                    "sbr: addSourceHints must be true or false, got {other}"
                )));
            }
        };
        Ok(SbrConf {
            table,
            gw4,
            gw6,
            add_source_hints,
        })
    }

    async fn add(
        &self,
        args: &CmdArgs,
        conf: &NetConf,
        pod: &PodNs,
        _: Option<u32>,
    ) -> Result<CniResult> {
        let prev = conf.prev_result()?.ok_or_else(|| {
            Error::config("sbr must be called as a chained plugin: no prevResult")
        })?;
        let ips = addresses_of(&prev, &args.ifname);
        if ips.is_empty() {
            return Err(Error::config(format!(
                "sbr: prevResult has no address on interface {}",
                args.ifname
            )));
        }
        let nl = pod.netlink().await?;
        // Two sbr ADDs in one pod at once would pick the same free table: one at a time per pod, as
        // the reference locks the netns file.
        let _lock = lock_netns(args)?;
        let link = nl
            .link(&args.ifname)
            .await?
            .ok_or_else(|| Error::config(format!("sbr: {} is not in the pod", args.ifname)))?;
        if let Some(table) = self.table {
            for ip in &ips {
                nl.add_rule(&Rule::from_addr(ip.address.addr(), table, None))
                    .await?;
            }
            return Ok(prev);
        }
        let rules = nl.rules().await?;
        let all_routes = nl.route_entries(None, None).await?;
        let used =
            |t: u32| rules.iter().any(|r| r.table == t) || all_routes.iter().any(|r| r.table == t);
        let next_free = |mut t: u32| {
            while used(t) || (253..=255).contains(&t) {
                t += 1;
            }
            t
        };
        let link_routes = nl.route_entries(Some(MAIN_TABLE), Some(link.index)).await?;
        let mut table = next_free(FIRST_TABLE);
        for ip in &ips {
            let addr = ip.address.addr();
            nl.add_rule(&Rule::from_addr(addr, table, None)).await?;
            let gw = match addr {
                IpAddr::V4(_) => self.gw4,
                IpAddr::V6(_) => self.gw6,
            }
            .or(ip.gateway);
            if let Some(gw) = gw {
                let default: IpNet = if addr.is_ipv4() { "0.0.0.0/0" } else { "::/0" }
                    .parse()
                    .expect("literal");
                let mut r = RouteSpec::via(default, Some(gw), link.index);
                r.table = Some(table);
                nl.add_route(&r).await?;
            }
            let subnet = ip.address.trunc();
            let configured_gw = match addr {
                IpAddr::V4(_) => self.gw4.is_some(),
                IpAddr::V6(_) => self.gw6.is_some(),
            };
            for r in &link_routes {
                let ours = r.prefsrc.is_some_and(|s| subnet.contains(&s))
                    || r.gw.is_some_and(|g| subnet.contains(&g))
                    || (r.prefsrc.is_none() && r.gw.is_none());
                // A configured gateway is the table's default: the main table's default route must not
                // replace it (the reference copies it over the one it just added).
                let replaces_configured = configured_gw && r.dst.prefix_len() == 0;
                if ours && !replaces_configured {
                    nl.copy_route(r, table).await?;
                }
            }
            table = next_free(table + 1);
        }
        if self.add_source_hints {
            for ip in &ips {
                let subnet = ip.address.trunc();
                if let Err(e) = source_hint(&nl, link.index, subnet, ip.address.addr()).await {
                    tracing::warn!("sbr: the subnet route {subnet} with its source hint: {e}");
                }
            }
            for r in link_routes.iter().filter(|r| !r.link_scope) {
                if let Err(e) = nl.del_route_entry(r).await {
                    tracing::warn!("sbr: {e}");
                }
            }
        } else {
            for r in &link_routes {
                nl.del_route_entry(r).await?;
            }
        }
        Ok(prev)
    }

    async fn check(&self, args: &CmdArgs, conf: &NetConf, prev: &CniResult) -> Result<()> {
        let _ = conf;
        let ns = super::pod_netns(args)?;
        let nl = Netlink::connect(Some(&ns))?;
        let rules = nl.rules().await?;
        for ip in addresses_of(prev, &args.ifname) {
            let addr = ip.address.addr();
            let found = rules.iter().any(|r| {
                r.src.is_some_and(|s| s.addr() == addr) && self.table.is_none_or(|t| r.table == t)
            });
            if !found {
                return Err(Error::Mismatch(format!(
                    "{}: no rule routes traffic from {addr} by its source",
                    args.ifname
                )));
            }
        }
        Ok(())
    }

    async fn del(args: &CmdArgs, conf: &NetConf) -> Result<()> {
        let Some(path) = args.netns.as_deref() else {
            return Ok(());
        };
        let ns = match crate::netns::NetNs::open(path) {
            Ok(ns) => ns,
            // The namespace is gone, and its rules with it.
            Err(_) if !path.exists() => return Ok(()),
            Err(e) => return Err(e),
        };
        let nl = Netlink::connect(Some(&ns))?;
        let addrs: Vec<IpAddr> = match nl.link(&args.ifname).await? {
            Some(l) => nl
                .addrs(l.index, None)
                .await?
                .iter()
                .map(IpNet::addr)
                .collect(),
            // The interface went first: the addresses it had, as the chain's result names them.
            None => conf
                .prev_result()
                .ok()
                .flatten()
                .map(|p| {
                    addresses_of(&p, &args.ifname)
                        .iter()
                        .map(|i| i.address.addr())
                        .collect()
                })
                .unwrap_or_default(),
        };
        let table = table_of(conf);
        let mut errors = Vec::new();
        for r in nl.rules().await? {
            let ours = r.src.is_some_and(|s| addrs.contains(&s.addr()))
                && table.is_none_or(|t| r.table == t);
            if ours && let Err(e) = nl.del_rule(&r).await {
                errors.push(e);
            }
        }
        Error::from_list(errors)
    }

    fn gc(_: &CmdArgs, _: &NetConf) -> Result<()> {
        Ok(())
    }
}

/// The subnet route in the main table with the address as its preferred source (`addSourceHints`).
async fn source_hint(nl: &Netlink, index: u32, subnet: IpNet, src: IpAddr) -> Result<()> {
    // Replaced whole: the kernel's connected route without `src` becomes one with it.
    for r in nl.route_entries(Some(MAIN_TABLE), Some(index)).await? {
        if r.dst == subnet && r.prefsrc != Some(src) {
            nl.del_route_entry(&r).await?;
        }
    }
    let mut r = RouteSpec::via(subnet, None, index);
    r.src = Some(src);
    nl.add_route(&r).await
}

/// An exclusive lock on the pod's netns file while the rules are made.
fn lock_netns(args: &CmdArgs) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    let Some(p) = args.netns.as_deref() else {
        return Ok(None);
    };
    let f = std::fs::File::open(p).map_err(|e| Error::io(format!("opening {}", p.display()), e))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map(Some)
        .map_err(|(_, e)| Error::io(format!("locking {}", p.display()), e.into()))
}
