//! The pod side of an attachment, shared by the drivers: sysctls, addresses, link up and routes (the
//! reference plugins' `ConfigureIface`), and CHECK of what a result says is there.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::cni::spec::CniResult;
use crate::error::{Error, Result};
use crate::netlink::{Netlink, RouteSpec};
use crate::netns::NsWorker;

/// Write a sysctl under `/proc/sys` of the calling thread's namespace.
pub fn sysctl(key: &str, value: &str) -> Result<()> {
    write_sysctl(&key.replace('.', "/"), value)
}

/// Write a sysctl by its path under `/proc/sys` (`net/ipv4/conf/eth0.100/rp_filter`: a path keeps the
/// dots of an interface name that a dotted key would split).
pub fn write_sysctl(path: &str, value: &str) -> Result<()> {
    crate::fail::point("sysctl")?;
    std::fs::write(format!("/proc/sys/{path}"), value)
        .map_err(|e| Error::io(format!("setting {path}"), e))
}

/// A sysctl of the calling thread's netns by its path under `/proc/sys`, without its newline.
pub fn read_sysctl(path: &str) -> std::io::Result<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .map(|s| s.trim_end_matches('\n').to_string())
}

/// What an attachment does with IPv6 duplicate address detection on its pod interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dad {
    /// Leave the kernel's value: macvlan, ipvlan and vlan sit on a physical segment, where DAD is what
    /// finds a duplicate address (the reference plugins never touch it there).
    Kernel,
    /// `accept_dad=0` (bridge without `enabledad`; hairpin and promiscuous bridges echo NS back).
    Off,
    /// `enabledad`: DAD with enhanced DAD.
    On,
}

/// Options of [`configure_iface`].
pub struct IfaceOpts {
    pub dad: Dad,
    /// Send unsolicited neighbour advertisements on IPv6 changes (macvlan/ipvlan, as reference v1.4+).
    pub ndisc_notify: bool,
    /// Send a gratuitous ARP when the link comes up (all but vlan, as the reference plugins do).
    pub arp_notify: bool,
}

/// The pod-side sysctls of an attachment, set before its link comes up (so that the link coming up
/// announces itself with a gratuitous ARP): `arp_notify`, IPv6 on where there are IPv6 addresses, DAD.
pub async fn pod_sysctls(
    pod: &NsWorker,
    ifname: &str,
    result: &CniResult,
    opts: &IfaceOpts,
) -> Result<()> {
    let has_v6 = result.ips.iter().any(|ip| ip.address.addr().is_ipv6());
    let i = ifname.to_string();
    let (dad, arp, ndisc) = (opts.dad, opts.arp_notify, opts.ndisc_notify);
    pod.run(move || -> Result<()> {
        if arp {
            sysctl(&format!("net.ipv4.conf.{i}.arp_notify"), "1")?;
        }
        if has_v6 {
            sysctl("net.ipv6.conf.lo.disable_ipv6", "0")?;
            sysctl(&format!("net.ipv6.conf.{i}.disable_ipv6"), "0")?;
        }
        // IPv6 may be off in the pod; then these keys do not exist and there is nothing to set.
        if std::path::Path::new(&format!("/proc/sys/net/ipv6/conf/{i}")).exists() {
            match dad {
                Dad::Kernel => {}
                Dad::Off => sysctl(&format!("net.ipv6.conf.{i}.accept_dad"), "0")?,
                Dad::On => {
                    sysctl(&format!("net.ipv6.conf.{i}.enhanced_dad"), "1")?;
                    sysctl(&format!("net.ipv6.conf.{i}.accept_dad"), "1")?;
                }
            }
            if ndisc {
                sysctl(&format!("net.ipv6.conf.{i}.ndisc_notify"), "1")?;
            }
        }
        Ok(())
    })
    .await?
}

/// Configure the pod side of an attachment whose sysctls are set ([`pod_sysctls`]), as the reference
/// `ConfigureIface` does: addresses, link up, then the routes — a route without a gateway uses its
/// family's gateway. Independent requests of one step go out together.
pub async fn configure_iface(
    pod_nl: &Netlink,
    ifname: &str,
    index: u32,
    result: &CniResult,
) -> Result<()> {
    futures::future::try_join_all(
        result
            .ips
            .iter()
            .map(|ip| pod_nl.add_addr(index, ip.address)),
    )
    .await?;
    pod_nl.set_up(ifname).await?;
    futures::future::try_join_all(result.routes.iter().map(|r| {
        let gw = r.gw.or_else(|| family_gateway(result, r.dst.addr()));
        let spec = RouteSpec {
            dst: r.dst,
            gw,
            oif: index,
            metric: r.priority,
            table: r.table,
            scope: r.scope,
            mtu: r.mtu,
            advmss: r.adv_mss,
            src: None,
        };
        async move { pod_nl.add_route(&spec).await }
    }))
    .await?;
    Ok(())
}

/// Bring a new pod interface up, as macvlan, ipvlan, vlan and host-device do: without addresses (no
/// IPAM) just up; with them its sysctls first, then addresses, up, routes. A tuning chained after the
/// driver is applied before the link comes up, either way.
pub async fn bring_up(
    pod: &super::PodNs,
    ifname: &str,
    index: u32,
    result: &CniResult,
    layer3: bool,
    opts: &IfaceOpts,
) -> Result<()> {
    let pod_nl = pod.netlink().await?;
    if !layer3 {
        super::tuning::before_up(pod, ifname).await?;
        return pod_nl.set_up(ifname).await;
    }
    pod_sysctls(&pod.worker, ifname, result, opts).await?;
    super::tuning::before_up(pod, ifname).await?;
    configure_iface(&pod_nl, ifname, index, result).await
}

/// The first gateway of `like`'s family among the result's addresses.
pub fn family_gateway(result: &CniResult, like: IpAddr) -> Option<IpAddr> {
    result
        .ips
        .iter()
        .filter_map(|i| i.gateway)
        .find(|g| g.is_ipv4() == like.is_ipv4())
}

/// Check that the pod side still carries what a previous result says it should.
pub async fn check_iface(
    pod_nl: &Netlink,
    ifname: &str,
    index: u32,
    prev: &CniResult,
    pod_iface: usize,
) -> Result<()> {
    let have = pod_nl.addrs(index, None).await?;
    for ip in prev
        .ips
        .iter()
        .filter(|i| i.interface.is_none_or(|n| n == pod_iface))
    {
        if !have.contains(&ip.address) {
            return Err(Error::Mismatch(format!(
                "{ifname} is missing its address {}",
                ip.address
            )));
        }
    }
    for r in &prev.routes {
        let gw = r.gw.or_else(|| family_gateway(prev, r.dst.addr()));
        let routes = pod_nl.routes(r.dst.addr().is_ipv4(), r.table).await?;
        let found = routes.iter().any(|(dst, g, oif)| {
            *dst == r.dst && (gw.is_none() || *g == gw) && oif.is_none_or(|o| o == index)
        });
        if !found {
            return Err(Error::Mismatch(format!(
                "{ifname} is missing the route {}{}",
                r.dst,
                gw.map(|g| format!(" via {g}")).unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// The addresses of a result as networks (for nft).
pub fn result_nets(result: &CniResult) -> Vec<IpNet> {
    result.ips.iter().map(|i| i.address).collect()
}
