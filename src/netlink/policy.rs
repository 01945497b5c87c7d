//! Policy routing: `ip rule`s, and routes seen whole so that they can be copied into another table with
//! every attribute they had (protocol, scope, preferred source, metric).

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::IpVersion;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};

use super::{Netlink, is_exists, is_not_found, nl, tolerate};
use crate::error::Result;

/// The kernel's main routing table.
pub const MAIN_TABLE: u32 = 254;

/// A `from <src> lookup <table>` rule (the only kind attache makes).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    /// The source prefix (`None`: every source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<IpNet>,
    pub table: u32,
    /// `None`: the kernel picks one below the lowest existing (as `ip rule add` without `pref`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Its family, for a rule without a source.
    #[serde(default)]
    pub v6: bool,
}

impl Rule {
    /// `from <addr>/32` (or `/128`) `lookup <table>`.
    pub fn from_addr(addr: IpAddr, table: u32, priority: Option<u32>) -> Rule {
        Rule {
            src: Some(IpNet::from(addr)),
            table,
            priority,
            v6: addr.is_ipv6(),
        }
    }

    fn message(&self) -> RuleMessage {
        let mut m = RuleMessage::default();
        let v6 = self.src.map_or(self.v6, |s| s.addr().is_ipv6());
        m.header.family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.header.action = RuleAction::ToTable;
        m.header.table = if self.table < 256 {
            self.table as u8
        } else {
            0
        };
        m.attributes.push(RuleAttribute::Table(self.table));
        if let Some(src) = self.src {
            m.header.src_len = src.prefix_len();
            m.attributes.push(RuleAttribute::Source(src.addr()));
        }
        if let Some(p) = self.priority {
            m.attributes.push(RuleAttribute::Priority(p));
        }
        m
    }

    fn parse(m: &RuleMessage) -> Option<Rule> {
        if m.header.action != RuleAction::ToTable {
            return None;
        }
        let mut r = Rule {
            src: None,
            table: m.header.table as u32,
            priority: None,
            v6: m.header.family == AddressFamily::Inet6,
        };
        for a in &m.attributes {
            match a {
                RuleAttribute::Table(t) => r.table = *t,
                RuleAttribute::Priority(p) => r.priority = Some(*p),
                RuleAttribute::Source(ip) => r.src = IpNet::new(*ip, m.header.src_len).ok(),
                _ => {}
            }
        }
        Some(r)
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = self.priority {
            write!(f, "{p}: ")?;
        }
        match self.src {
            Some(s) => write!(f, "from {s} lookup {}", self.table),
            None => write!(f, "from all lookup {}", self.table),
        }
    }
}

/// A route as the kernel lists it, whole.
#[derive(Clone, Debug)]
pub struct RouteEntry {
    msg: RouteMessage,
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    /// The preferred source (`src` in `ip route`).
    pub prefsrc: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    /// `scope link` (a route on the link, as the kernel's connected routes are).
    pub link_scope: bool,
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

impl RouteEntry {
    fn parse(msg: RouteMessage) -> Option<RouteEntry> {
        let v4 = msg.header.address_family == AddressFamily::Inet;
        let mut dst_ip = None;
        let (mut gw, mut prefsrc, mut oif) = (None, None, None);
        let mut table = msg.header.table as u32;
        for a in &msg.attributes {
            match a {
                RouteAttribute::Destination(d) => dst_ip = route_addr(d),
                RouteAttribute::Gateway(g) => gw = route_addr(g),
                RouteAttribute::PrefSource(s) => prefsrc = route_addr(s),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        let unspecified = if v4 {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        };
        let dst = IpNet::new(
            dst_ip.unwrap_or(unspecified),
            msg.header.destination_prefix_length,
        )
        .ok()?;
        let link_scope = msg.header.scope == rtnetlink::packet_route::route::RouteScope::Link;
        Some(RouteEntry {
            msg,
            dst,
            gw,
            prefsrc,
            oif,
            table,
            link_scope,
        })
    }

    /// The same route in `table`, as a request (what the kernel only reports is left out).
    fn in_table(&self, table: u32) -> RouteMessage {
        let mut m = self.msg.clone();
        m.header.table = if table < 256 { table as u8 } else { 0 };
        // A cloned (dynamically made) route's flags would make the add fail with EINVAL.
        m.header.flags = RouteFlags::empty();
        m.attributes.retain(|a| {
            !matches!(
                a,
                RouteAttribute::Table(_)
                    | RouteAttribute::CacheInfo(_)
                    | RouteAttribute::Expires(_)
                    | RouteAttribute::MulticastExpires(_)
            )
        });
        m.attributes.push(RouteAttribute::Table(table));
        m
    }
}

impl std::fmt::Display for RouteEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(g) = self.gw {
            write!(f, " via {g}")?;
        }
        if let Some(s) = self.prefsrc {
            write!(f, " src {s}")?;
        }
        write!(f, " table {}", self.table)
    }
}

impl Netlink {
    /// Every `lookup` rule of both families.
    pub async fn rules(&self) -> Result<Vec<Rule>> {
        let mut out = Vec::new();
        for v in [IpVersion::V4, IpVersion::V6] {
            let msgs: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(v)
                .execute()
                .try_collect()
                .await
                .map_err(nl("list rules"))?;
            out.extend(msgs.iter().filter_map(Rule::parse));
        }
        Ok(out)
    }

    /// Add a rule; the same rule already there is success.
    pub async fn add_rule(&self, r: &Rule) -> Result<()> {
        crate::fail::point("netlink.add_rule")?;
        let mut req = self.handle.rule().add();
        *req.message_mut() = r.message();
        tolerate(req.execute().await, format!("add rule {r}"), is_exists)
    }

    /// Delete a rule; already gone is success.
    pub async fn del_rule(&self, r: &Rule) -> Result<()> {
        crate::fail::point("netlink.del_rule")?;
        tolerate(
            self.handle.rule().del(r.message()).execute().await,
            format!("delete rule {r}"),
            is_not_found,
        )
    }

    /// The unicast routes of both families in `table` (`None`: every table), of one interface or all.
    pub async fn route_entries(
        &self,
        table: Option<u32>,
        oif: Option<u32>,
    ) -> Result<Vec<RouteEntry>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let msgs = self.dump_routes(family).await?;
            out.extend(
                msgs.into_iter()
                    .filter(|m| m.header.kind == rtnetlink::packet_route::route::RouteType::Unicast)
                    .filter_map(RouteEntry::parse)
                    .filter(|e| table.is_none_or(|t| e.table == t))
                    .filter(|e| oif.is_none_or(|o| e.oif == Some(o))),
            );
        }
        Ok(out)
    }

    /// Put a copy of `r` into `table`, replacing a route of the same key there.
    pub async fn copy_route(&self, r: &RouteEntry, table: u32) -> Result<()> {
        crate::fail::point("netlink.add_route")?;
        self.handle
            .route()
            .add(r.in_table(table))
            .replace()
            .execute()
            .await
            .map_err(nl(format!("copy route {r} to table {table}")))
    }

    /// Delete a listed route; already gone is success.
    pub async fn del_route_entry(&self, r: &RouteEntry) -> Result<()> {
        crate::fail::point("netlink.del_route")?;
        tolerate(
            self.handle.route().del(r.msg.clone()).execute().await,
            format!("delete route {r}"),
            is_not_found,
        )
    }
}
