//! The bridge driver: the reference `bridge` plugin's fields and semantics, in-process.
//!
//! ADD: validate everything → allocate addresses → ensure the bridge → one veth request creates both ends
//! (the pod end born inside the pod's netns, the host end in the node's) → attach the host end to the
//! bridge → configure the pod end → gateway address, forwarding, masquerading → result
//! `[bridge, host veth, pod iface]`. Each step that changes something pushes its undo; a failure unwinds.
//!
//! DEL: the pod end (which takes the host end with it), the addresses, the nftables state — each "already
//! gone" counts as done, and a missing netns only means there is no link left to delete.

use std::cell::RefCell;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::AddCtx;
use super::driver::{Driver, NativeType};
use super::iface::{
    Dad, IfaceOpts, check_iface, configure_iface, pod_sysctls, result_nets, sysctl,
};
use super::naming::{host_veth_name, owner_alias};
use super::undo::Undo;
use super::{PodNs, nft, pod_netns, sandbox};
use crate::cni::conf::{NetConf, check_ifname, decode};
use crate::cni::skel::CmdArgs;
use crate::cni::spec::{CniResult, Dns, Interface, Route};
use crate::error::{Error, Result};
use crate::ipam::{Ipam, IpamRelease};
use crate::netlink::{Link, Netlink, PortOpts, VethSpec, format_mac, is_exists, random_mac};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Raw {
    bridge: Option<String>,
    is_gateway: bool,
    is_default_gateway: bool,
    force_address: bool,
    ip_masq: bool,
    ip_masq_backend: Option<String>,
    mtu: Option<u32>,
    hairpin_mode: bool,
    promisc_mode: bool,
    vlan: Option<i64>,
    vlan_trunk: Option<Vec<RawTrunk>>,
    preserve_default_vlan: Option<bool>,
    macspoofchk: bool,
    enabledad: bool,
    disable_container_interface: bool,
    port_isolation: bool,
    dns: Option<Dns>,
}

#[derive(Deserialize)]
struct RawTrunk {
    id: Option<i64>,
    #[serde(rename = "minID")]
    min_id: Option<i64>,
    #[serde(rename = "maxID")]
    max_id: Option<i64>,
}

/// A validated bridge configuration.
#[derive(Debug)]
pub struct BridgeConf {
    pub network: String,
    pub bridge: String,
    pub is_gw: bool,
    pub is_default_gw: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub promisc: bool,
    pub vlan: u16,
    pub trunk: Vec<(u16, u16)>,
    pub preserve_default_vlan: bool,
    pub macspoofchk: bool,
    pub enable_dad: bool,
    pub disable_container_interface: bool,
    pub port_isolation: bool,
    pub mac: Option<[u8; 6]>,
    pub dns: Option<Dns>,
    pub ipam: Ipam,
}

fn vlan_id(v: i64, what: &str) -> Result<u16> {
    if !(0..=4094).contains(&v) {
        return Err(Error::config(format!(
            "{what} {v} is out of range: it must be 0 to 4094"
        )));
    }
    Ok(v as u16)
}

impl Driver for BridgeConf {
    fn parse(_: NativeType, args: &CmdArgs, conf: &NetConf) -> Result<BridgeConf> {
        let raw: Raw = decode("bridge", Value::Object(conf.raw.clone()))?;
        let network = conf.require_name()?.to_string();
        let bridge = raw.bridge.unwrap_or_else(|| "cni0".into());
        check_ifname(&bridge).map_err(|m| Error::config(format!("bridge: {m}")))?;
        if raw.hairpin_mode && raw.promisc_mode {
            return Err(Error::config(
                "cannot set hairpin mode and promiscuous mode at the same time",
            ));
        }
        // 0 means "the default", as in the reference plugin.
        let mtu = raw.mtu.filter(|m| *m != 0);
        if let Some(m) = mtu
            && !(68..=65535).contains(&m)
        {
            return Err(Error::config(format!(
                "mtu {m} is out of range: it must be 68 to 65535"
            )));
        }
        if let Some(b) = raw.ip_masq_backend.as_deref()
            && b != "nftables"
            && b != "iptables"
        {
            return Err(Error::config(format!(
                "ipMasqBackend {b:?} is not iptables or nftables"
            )));
        }
        let vlan = vlan_id(raw.vlan.unwrap_or(0), "vlan")?;
        let mut trunk = Vec::new();
        for t in raw.vlan_trunk.unwrap_or_default() {
            match (t.id, t.min_id, t.max_id) {
                (Some(id), None, None) => {
                    let id = vlan_id(id, "vlanTrunk id")?;
                    if id == 0 {
                        return Err(Error::config("vlanTrunk id 0 is not a vlan"));
                    }
                    trunk.push((id, id));
                }
                (None, Some(min), Some(max)) => {
                    let (lo, hi) = (
                        vlan_id(min, "vlanTrunk minID")?,
                        vlan_id(max, "vlanTrunk maxID")?,
                    );
                    if lo == 0 || lo > hi {
                        return Err(Error::config(format!(
                            "vlanTrunk range {min}-{max} is invalid"
                        )));
                    }
                    trunk.push((lo, hi));
                }
                _ => {
                    return Err(Error::config(
                        "a vlanTrunk entry needs either id, or both minID and maxID",
                    ));
                }
            }
        }
        let ipam = Ipam::from_conf(conf, args)?;
        if raw.disable_container_interface && !ipam.is_none() {
            return Err(Error::config(
                "cannot use IPAM when disableContainerInterface flag is set",
            ));
        }
        if vlan != 0 && (raw.is_gateway || raw.is_default_gateway) {
            return Err(Error::config(
                "isGateway with vlan is not supported by attache's bridge yet: give the gateway address to a vlan interface on the node",
            ));
        }
        let mac = super::requested_mac(conf, args)?;
        Ok(BridgeConf {
            network,
            bridge,
            is_gw: raw.is_gateway || raw.is_default_gateway,
            is_default_gw: raw.is_default_gateway,
            force_address: raw.force_address,
            ip_masq: raw.ip_masq,
            mtu,
            hairpin: raw.hairpin_mode,
            promisc: raw.promisc_mode,
            vlan,
            trunk,
            preserve_default_vlan: raw.preserve_default_vlan.unwrap_or(false),
            macspoofchk: raw.macspoofchk,
            enable_dad: raw.enabledad,
            disable_container_interface: raw.disable_container_interface,
            port_isolation: raw.port_isolation,
            mac,
            dns: raw.dns.filter(|d| !d.is_empty()),
            ipam,
        })
    }

    async fn add(
        &self,
        args: &CmdArgs,
        conf: &NetConf,
        pod: &PodNs,
        link_group: Option<u32>,
    ) -> Result<CniResult> {
        add(args, conf, self, pod, link_group).await
    }

    async fn check(&self, args: &CmdArgs, conf: &NetConf, prev: &CniResult) -> Result<()> {
        check(args, conf, self, prev).await
    }

    async fn del(args: &CmdArgs, conf: &NetConf) -> Result<()> {
        del(args, conf, &Teardown::new(conf, args)).await
    }
}

impl BridgeConf {
    fn vlan_filtering(&self) -> bool {
        self.vlan != 0 || !self.trunk.is_empty()
    }

    fn masq_chain(&self, args: &CmdArgs) -> String {
        masq_chain(&self.network, args)
    }

    fn spoof_chain(&self, args: &CmdArgs) -> String {
        spoof_chain(&self.network, args)
    }
}

fn masq_chain(network: &str, args: &CmdArgs) -> String {
    nft::chain_id("masq", network, &args.container_id, &args.ifname)
}

fn spoof_chain(network: &str, args: &CmdArgs) -> String {
    nft::chain_id("mac", network, &args.container_id, &args.ifname)
}

/// What teardown needs of a bridge configuration, read leniently (DEL and GC must succeed for a
/// configuration that ADD refused): the network name, which nftables state ADD may have made, and the
/// IPAM to release. Nothing else is looked at.
struct Teardown {
    network: String,
    ip_masq: bool,
    macspoofchk: bool,
    ipam: IpamRelease,
}

impl Teardown {
    fn new(conf: &NetConf, args: &CmdArgs) -> Teardown {
        let flag = |k: &str| conf.raw.get(k).and_then(Value::as_bool) == Some(true);
        Teardown {
            network: conf.name.clone(),
            ip_masq: flag("ipMasq"),
            macspoofchk: flag("macspoofchk"),
            ipam: IpamRelease::of(conf, args),
        }
    }
}

/// Make sure the bridge exists, is a bridge, is up; returns it.
async fn ensure_bridge(node: &Netlink, bc: &BridgeConf) -> Result<Link> {
    let mut created = false;
    let br = match node.link(&bc.bridge).await? {
        Some(l) => l,
        None => {
            match node
                .create_bridge(&bc.bridge, bc.mtu, random_mac()?, bc.vlan_filtering())
                .await
            {
                Ok(()) => created = true,
                Err(e) if is_exists(&e) => {} // another ADD created it meanwhile
                Err(e) => return Err(e),
            }
            node.link(&bc.bridge).await?.ok_or_else(|| {
                Error::Internal(format!("bridge {} vanished after creation", bc.bridge))
            })?
        }
    };
    if br.kind.as_deref() != Some("bridge") {
        return Err(Error::Conflict(format!(
            "{:?} already exists but is not a bridge",
            bc.bridge
        )));
    }
    if bc.promisc && !br.promisc {
        node.set_promisc(br.index, true).await?;
    }
    if !br.up {
        node.set_up(&bc.bridge).await?;
    }
    if bc.vlan_filtering() {
        let filtering = br.vlan_filtering;
        if !filtering {
            return Err(Error::config(format!(
                "bridge {} exists without vlan_filtering, which vlan/vlanTrunk need",
                bc.bridge
            )));
        }
    }
    if created {
        // A router advertisement must not configure the bridge; missing IPv6 support is fine.
        let _ = sysctl(&format!("net.ipv6.conf.{}.accept_ra", bc.bridge), "0");
    }
    Ok(br)
}

/// The gateway addresses to put on the bridge and the default routes to add, as `calcGateways` does:
/// every address points at the pod interface (index 2); a missing gateway is the subnet's first address.
fn apply_gateways(result: &mut CniResult, bc: &BridgeConf) -> Vec<IpNet> {
    let mut gws = Vec::new();
    let mut default_found = [false, false];
    for i in 0..result.ips.len() {
        result.ips[i].interface = Some(2);
        let addr = result.ips[i].address;
        if result.ips[i].gateway.is_none() && bc.is_gw {
            result.ips[i].gateway = Some(first_host(addr));
        }
        let fam = usize::from(addr.addr().is_ipv6());
        let default: IpNet = if addr.addr().is_ipv4() {
            "0.0.0.0/0"
        } else {
            "::/0"
        }
        .parse()
        .expect("literal");
        if bc.is_default_gw && !default_found[fam] {
            default_found[fam] = result
                .routes
                .iter()
                .any(|r| r.gw.is_some() && r.dst == default);
            if !default_found[fam] {
                result
                    .routes
                    .push(Route::new(default, result.ips[i].gateway));
                default_found[fam] = true;
            }
        }
        if bc.is_gw
            && let Some(gw) = result.ips[i].gateway
            && let Ok(n) = IpNet::new(gw, addr.prefix_len())
        {
            gws.push(n);
        }
    }
    gws
}

fn first_host(n: IpNet) -> IpAddr {
    crate::ipam::host_local::range::from_u128(
        crate::ipam::host_local::range::to_u128(n.network()) + 1,
        n.addr().is_ipv4(),
    )
}

/// Put `gw` on the bridge unless it is there, the reference `ensureAddr` way: another IPv4 address, or
/// an overlapping IPv6 one, is an error unless `forceAddress` (then it is replaced).
async fn ensure_gateway_addr(node: &Netlink, br: &Link, gw: IpNet, force: bool) -> Result<()> {
    let fam = if gw.addr().is_ipv4() { 4 } else { 6 };
    for a in node.addrs(br.index, Some(fam)).await? {
        if a == gw {
            return Ok(());
        }
        let conflicts = gw.addr().is_ipv4() || a.contains(&gw.addr()) || gw.contains(&a.addr());
        if conflicts {
            if force {
                node.del_addr(br.index, a).await?;
            } else {
                return Err(Error::Conflict(format!(
                    "{:?} already has an IP address different from {gw}",
                    br.name
                )));
            }
        }
    }
    node.add_addr(br.index, gw).await
}

async fn add(
    args: &CmdArgs,
    conf: &NetConf,
    bc: &BridgeConf,
    pod: &PodNs,
    link_group: Option<u32>,
) -> Result<CniResult> {
    let node = Netlink::connect(None)?;
    // The pod's connection and the bridge are independent: ask for both at once.
    let (pod_nl, br) = futures::try_join!(pod.netlink(), ensure_bridge(&node, bc))?;
    let ctx = AddCtx {
        args,
        conf,
        driver: bc,
        link_group,
        pod,
        node: &node,
        pod_nl: &pod_nl,
        upper: &br,
        undo: RefCell::new(Vec::new()),
    };
    ctx.undone_on_failure(&bc.ipam, ctx.run()).await
}

impl AddCtx<'_, BridgeConf> {
    async fn run(&self) -> Result<CniResult> {
        let (args, bc) = (self.args, self.driver);
        let host = host_veth_name(&args.container_id, &args.ifname);

        // Addresses first: running out of them should not cost a veth.
        let mut result = bc.ipam.add(args, self.conf).await?;
        self.undo.borrow_mut().push(Undo::Ipam);
        if !bc.ipam.is_none() && result.ips.is_empty() {
            return Err(Error::Ipam("IPAM plugin returned missing IP config".into()));
        }

        let pod_mac = match bc.mac {
            Some(m) => m,
            None => random_mac()?,
        };
        let host_mac = random_mac()?;
        self.create_veth(&host, host_mac, pod_mac).await?;
        self.undo.borrow_mut().push(Undo::Link {
            netns: None,
            name: host.clone(),
        });

        // From here the node side (port, gateway, nftables) and the pod side (addresses, routes) are
        // independent: both run at once, and both finish before any error is acted on, so the undo list
        // is complete when a rollback reads it.
        let gws = apply_gateways(&mut result, bc);
        let (node_side, pod_side) = futures::join!(
            self.node_side(&host, pod_mac, &gws, &result),
            self.pod_side(&result)
        );
        node_side?;
        pod_side?;

        // Without a pinned MAC a bridge takes its lowest port's, which may just have changed: report the
        // MAC it has now (a bridge attache creates is pinned from birth, but this one may not be attache's).
        let br_mac = if bc.is_gw {
            self.upper.mac.clone()
        } else {
            self.node
                .link_by_index(self.upper.index)
                .await?
                .map(|l| l.mac)
                .unwrap_or_else(|| self.upper.mac.clone())
        };
        result.interfaces = vec![
            Interface {
                name: bc.bridge.clone(),
                mac: format_mac(&br_mac),
                ..Default::default()
            },
            Interface {
                name: host,
                mac: format_mac(&host_mac),
                ..Default::default()
            },
            Interface {
                name: args.ifname.clone(),
                mac: format_mac(&pod_mac),
                sandbox: sandbox(args),
                ..Default::default()
            },
        ];
        if let Some(d) = &bc.dns {
            result.dns = d.clone();
        }
        Ok(result)
    }

    /// One request makes both ends. A clash on the host name (derived from containerID and ifname) is a
    /// leftover of an earlier ADD of this very attachment: it is removed and the request repeated once.
    async fn create_veth(&self, host: &str, host_mac: [u8; 6], pod_mac: [u8; 6]) -> Result<()> {
        let ifname = &self.args.ifname;
        for attempt in 0..2 {
            let created = self
                .node
                .create_veth(&VethSpec {
                    name: host,
                    mac: host_mac,
                    up: false,
                    peer: ifname,
                    peer_mac: pod_mac,
                    peer_up: false,
                    peer_netns: self.pod.ns.raw_fd(),
                    mtu: self.driver.mtu,
                    peer_group: self.link_group,
                })
                .await;
            match created {
                Ok(()) => return Ok(()),
                Err(e) if is_exists(&e) && attempt == 0 => {
                    if self.pod_nl.link(ifname).await?.is_some() {
                        return Err(Error::Conflict(format!(
                            "container veth name provided ({ifname}) already exists"
                        )));
                    }
                    match self.node.link(host).await? {
                        Some(l) if l.kind.as_deref() == Some("veth") => {
                            self.node.del_link(host).await?;
                        }
                        _ => return Err(e.context(format!("host interface name {host} is taken"))),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Internal(format!("could not create {host}")))
    }

    async fn node_side(
        &self,
        host: &str,
        pod_mac: [u8; 6],
        gws: &[IpNet],
        result: &CniResult,
    ) -> Result<()> {
        let (args, bc, node, br) = (self.args, self.driver, self.node, self.upper);
        node.set_master_up(
            host,
            br.index,
            &owner_alias(&args.container_id, &args.ifname),
        )
        .await?;
        node.set_bridge_port(
            host,
            PortOpts {
                hairpin: bc.hairpin,
                isolated: bc.port_isolation,
            },
        )
        .await?;
        if bc.vlan_filtering() {
            let port = node
                .link(host)
                .await?
                .ok_or_else(|| Error::Internal(format!("{host} vanished")))?;
            if bc.vlan != 0 {
                node.bridge_vlan_add(port.index, bc.vlan, true).await?;
            }
            for (lo, hi) in &bc.trunk {
                for vid in *lo..=*hi {
                    node.bridge_vlan_add(port.index, vid, false).await?;
                }
            }
            if !bc.preserve_default_vlan
                && bc.vlan != 1
                && !bc.trunk.iter().any(|(lo, hi)| (*lo..=*hi).contains(&1))
            {
                node.bridge_vlan_del(port.index, 1).await?;
            }
        }
        if bc.macspoofchk {
            let chain = bc.spoof_chain(args);
            nft::apply(&nft::spoofchk_add_script(
                &chain,
                host,
                &format_mac(&pod_mac),
            ))
            .await?;
            self.undo
                .borrow_mut()
                .push(Undo::Nft(nft::spoofchk_del(&chain, host)));
        }
        if bc.is_gw {
            for gw in gws {
                ensure_gateway_addr(node, br, *gw, bc.force_address).await?;
            }
            // Pin the bridge MAC: otherwise it follows the lowest-numbered port's and changes as ports
            // churn. (Pinned to the MAC it has now, so the result can report it without asking again.)
            node.set_mac(br.index, &br.mac).await?;
            if gws.iter().any(|g| g.addr().is_ipv4()) {
                sysctl("net.ipv4.ip_forward", "1")?;
            }
            if gws.iter().any(|g| g.addr().is_ipv6()) {
                sysctl("net.ipv6.conf.all.forwarding", "1")?;
            }
        }
        if bc.ip_masq && !result.ips.is_empty() {
            let chain = bc.masq_chain(args);
            nft::apply(&nft::masq_add_script(&chain, &result_nets(result))).await?;
            let ips: Vec<IpAddr> = result.ips.iter().map(|i| i.address.addr()).collect();
            self.undo
                .borrow_mut()
                .push(Undo::Nft(nft::masq_del(&chain, &ips)));
        }
        Ok(())
    }

    async fn pod_side(&self, result: &CniResult) -> Result<()> {
        let (args, bc) = (self.args, self.driver);
        let opts = IfaceOpts {
            dad: if bc.enable_dad && !(bc.hairpin || bc.promisc) {
                Dad::On
            } else {
                Dad::Off
            },
            ndisc_notify: false,
            arp_notify: true,
        };
        let layer3 = !bc.ipam.is_none();
        // The link's index (for addresses and routes) and the sysctls (by name) are independent.
        let (link, sysctls) = futures::join!(self.pod_nl.link(&args.ifname), async {
            if layer3 {
                pod_sysctls(&self.pod.worker, &args.ifname, result, &opts).await
            } else {
                Ok(())
            }
        });
        let pod_link = link?
            .ok_or_else(|| Error::Internal(format!("{} did not appear in the pod", args.ifname)))?;
        sysctls?;
        super::tuning::before_up(self.pod, &args.ifname).await?;
        if !layer3 {
            if !bc.disable_container_interface {
                self.pod_nl.set_up(&args.ifname).await?;
            }
            return Ok(());
        }
        configure_iface(self.pod_nl, &args.ifname, pod_link.index, result).await
    }
}

async fn del(args: &CmdArgs, conf: &NetConf, td: &Teardown) -> Result<()> {
    let mut errors = Vec::new();
    // Masquerading is keyed by address: the ones ADD returned (prevResult), else what the IPAM says the
    // attachment holds, asked before it forgets them. Without ipMasq nothing needs them.
    let ips: Vec<IpAddr> = match conf.prev_result() {
        _ if !td.ip_masq => vec![],
        Ok(Some(prev)) if !prev.ips.is_empty() => {
            prev.ips.iter().map(|i| i.address.addr()).collect()
        }
        _ => td.ipam.held(args).unwrap_or_default(),
    };
    let host = host_veth_name(&args.container_id, &args.ifname);
    // The link goes first, by its name in the pod as the reference deletes it (whoever made it: a pod
    // attached by another plugin has no name attache derives): an address is released only once no
    // interface can hold it any more.
    let link_gone = match args.netns.as_deref().map(crate::netns::NetNs::open) {
        // Deleting either end of a veth deletes both.
        Some(Ok(pod)) => Netlink::connect(Some(&pod))?
            .del_link(&args.ifname)
            .await
            .inspect(|deleted| super::log_deleted(*deleted, &args.ifname, "the pod")),
        // No netns (gone, or never given): the pod end went with it; a host end may be left.
        _ => Netlink::connect(None)?
            .del_link(&host)
            .await
            .inspect(|deleted| super::log_deleted(*deleted, &host, "the node")),
    };
    match link_gone {
        Ok(_) => {
            if let Err(e) = td.ipam.del(args, conf).await {
                errors.push(e);
            }
        }
        Err(e) => {
            errors.push(e.context(format!(
                "deleting {}; its addresses stay reserved until a DEL succeeds",
                args.ifname
            )));
        }
    }
    if td.macspoofchk
        && let Err(e) =
            nft::remove(&nft::spoofchk_del(&spoof_chain(&td.network, args), &host)).await
    {
        errors.push(e);
    }
    if td.ip_masq
        && !ips.is_empty()
        && let Err(e) = nft::remove(&nft::masq_del(&masq_chain(&td.network, args), &ips)).await
    {
        errors.push(e);
    }
    Error::from_list(errors)
}

async fn check(args: &CmdArgs, conf: &NetConf, bc: &BridgeConf, prev: &CniResult) -> Result<()> {
    bc.ipam.check(args, conf).await?;
    let pod = pod_netns(args)?;
    let node = Netlink::connect(None)?;
    let pod_nl = Netlink::connect(Some(&pod))?;
    let br = node
        .link(&bc.bridge)
        .await?
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .ok_or_else(|| Error::Mismatch(format!("bridge {} is missing", bc.bridge)))?;
    let link = pod_nl
        .link(&args.ifname)
        .await?
        .ok_or_else(|| Error::Mismatch(format!("{} is missing from the pod", args.ifname)))?;
    if link.kind.as_deref() != Some("veth") {
        return Err(Error::Mismatch(format!("{} is not a veth", args.ifname)));
    }
    let pod_iface = prev
        .interfaces
        .iter()
        .position(|i| i.name == args.ifname && !i.sandbox.is_empty());
    if let Some(i) = pod_iface {
        let want = &prev.interfaces[i].mac;
        if !want.is_empty() && !want.eq_ignore_ascii_case(&format_mac(&link.mac)) {
            return Err(Error::Mismatch(format!(
                "{} has MAC {}, not {want}",
                args.ifname,
                format_mac(&link.mac)
            )));
        }
    }
    let peer = match link.link {
        Some(idx) => node.link_by_index(idx).await?,
        None => None,
    }
    .ok_or_else(|| Error::Mismatch(format!("the node end of {} is missing", args.ifname)))?;
    if peer.master != Some(br.index) {
        return Err(Error::Mismatch(format!(
            "the node end of {} ({}) is not attached to bridge {}",
            args.ifname, peer.name, bc.bridge
        )));
    }
    check_iface(
        &pod_nl,
        &args.ifname,
        link.index,
        prev,
        pod_iface.unwrap_or(2),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(cni_args: &str) -> CmdArgs {
        crate::testutil::cmd_args(cni_args)
    }

    fn bc(extra: Value, cni_args: &str) -> Result<BridgeConf> {
        let mut c = json!({"cniVersion":"1.0.0","name":"n","type":"bridge",
            "ipam":{"type":"host-local","subnet":"10.1.0.0/24"}});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        BridgeConf::parse(
            NativeType::Bridge,
            &args(cni_args),
            &NetConf::from_value(c).unwrap(),
        )
    }

    #[test]
    fn defaults() {
        let b = bc(json!({}), "").unwrap();
        assert_eq!(b.bridge, "cni0");
        assert!(!b.is_gw && !b.ip_masq && !b.vlan_filtering());
        let b = bc(json!({"isDefaultGateway": true}), "").unwrap();
        assert!(b.is_gw && b.is_default_gw);
    }

    #[test]
    fn invalid_fields_are_code_7() {
        for extra in [
            json!({"hairpinMode": true, "promiscMode": true}),
            json!({"bridge": "a-very-long-bridge-name"}),
            json!({"bridge": "br/0"}),
            json!({"mtu": 20}),
            json!({"mtu": -5}),
            json!({"vlan": 4095}),
            json!({"vlan": -1}),
            json!({"vlanTrunk": [{"id": 5000}]}),
            json!({"vlanTrunk": [{"minID": 10, "maxID": 5}]}),
            json!({"vlanTrunk": [{"minID": 10}]}),
            json!({"disableContainerInterface": true}),
            json!({"runtimeConfig": {"mac": "01:00:5e:00:00:01"}}),
            json!({"args": {"cni": {"mac": "nope"}}}),
            json!({"ipMasqBackend": "pf"}),
            json!({"isGateway": "yes"}),
            json!({"ipam": {"type": "host-local", "subnet": "10.1.0.0/33"}}),
        ] {
            let e = bc(extra.clone(), "").unwrap_err();
            assert_eq!(e.cni_code(), 7, "{extra}: {e}");
        }
    }

    #[test]
    fn a_badly_typed_field_is_named() {
        for (extra, says) in [
            (json!({"mtu": "big"}), "bridge: mtu: invalid type"),
            (
                json!({"vlanTrunk": [{"id": "x"}]}),
                "bridge: vlanTrunk[0].id: invalid type",
            ),
        ] {
            let e = bc(extra.clone(), "").unwrap_err().to_string();
            assert!(e.contains(says), "{extra}: {e}");
        }
    }

    #[test]
    fn vlan_trunk_and_mac_sources() {
        let b = bc(
            json!({"vlan": 100, "vlanTrunk": [{"id": 101}, {"minID": 200, "maxID": 203}]}),
            "",
        )
        .unwrap();
        assert_eq!(b.vlan, 100);
        assert_eq!(b.trunk, vec![(101, 101), (200, 203)]);
        assert!(b.vlan_filtering());
        let b = bc(json!({"runtimeConfig": {"mac": "0a:00:00:00:00:01"}, "args": {"cni": {"mac": "0a:00:00:00:00:02"}}}), "IgnoreUnknown=1;MAC=0a:00:00:00:00:03").unwrap();
        assert_eq!(b.mac, Some([0x0a, 0, 0, 0, 0, 1]));
        let b = bc(json!({}), "MAC=0a:00:00:00:00:03").unwrap();
        assert_eq!(b.mac, Some([0x0a, 0, 0, 0, 0, 3]));
    }

    #[test]
    fn gateways_and_default_routes() {
        let b = bc(json!({"isDefaultGateway": true}), "").unwrap();
        let mut r = CniResult::from_value(
            &json!({"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"},{"address":"fd00::5/64","gateway":"fd00::fe"}],
                "routes":[{"dst":"10.9.0.0/16"}]}),
            crate::cni::spec::Version::V1_0_0,
        )
        .unwrap();
        let gws = apply_gateways(&mut r, &b);
        assert_eq!(
            gws,
            vec![
                "10.1.0.1/24".parse::<IpNet>().unwrap(),
                "fd00::fe/64".parse().unwrap()
            ]
        );
        assert!(r.ips.iter().all(|i| i.interface == Some(2)));
        let routes: Vec<String> = r
            .routes
            .iter()
            .map(|r| format!("{} {:?}", r.dst, r.gw.map(|g| g.to_string())))
            .collect();
        assert_eq!(
            routes,
            [
                "10.9.0.0/16 None",
                "0.0.0.0/0 Some(\"10.1.0.1\")",
                "::/0 Some(\"fd00::fe\")"
            ]
        );
    }
}
