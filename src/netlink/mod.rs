//! The one facade over rtnetlink, in domain verbs. One [`Netlink`] is one connection bound to one network
//! namespace (the node's, or a pod's), opened once per invocation. Message building, flags and errno
//! handling live here; callers never see a netlink message. It reads no configuration.
//!
//! Kernel surprises handled here:
//! - A veth is created in one request with both ends where they belong: the end named in the request is
//!   born in the namespace of the socket that asks, the peer in the namespace given by fd — so neither end
//!   is ever moved or renamed and a name clash is an EEXIST before anything exists.
//! - `RTM_SETLINK`/`RTM_DELLINK` accept a name instead of an index, saving a lookup per operation.
//! - Deleting every link of a group is one `unregister_netdevice_many`: the kernel's RCU wait per
//!   unregister (~15 ms for a veth) is paid once for all of them.

use std::net::IpAddr;
use std::os::fd::RawFd;

use futures::TryStreamExt;
use ipnet::IpNet;
use nix::errno::Errno;
use rtnetlink::packet_core::DefaultNla;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{self as packet_link, BridgeVlanInfoFlags};
use rtnetlink::packet_route::link::{
    InfoBridge, InfoBridgePort, InfoData, InfoIpVlan, InfoKind, InfoMacVlan, InfoPortData,
    InfoPortKind, InfoVeth, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, LinkBridgeVlan, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::error::{Error, Result};
use crate::netns::{NetNs, route_socket};

pub mod policy;

/// `IFLA_ALT_IFNAME` (not among netlink-packet-route's request attributes).
const IFLA_ALT_IFNAME: u16 = 53;

/// A link as attache needs to see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `veth`, `macvlan`, ... (`None` for plain devices).
    pub kind: Option<String>,
    pub mtu: u32,
    pub mac: Vec<u8>,
    pub master: Option<u32>,
    /// `IFLA_LINK`: a veth's peer index, a macvlan/vlan's lower device (in `link_netns_id`'s namespace).
    pub link: Option<u32>,
    pub link_netns_id: Option<i32>,
    pub up: bool,
    pub oper_up: bool,
    pub promisc: bool,
    /// `IFF_ALLMULTI`.
    pub allmulti: bool,
    /// `IFLA_TXQLEN`.
    pub txqlen: u32,
    pub group: u32,
    /// `IFLA_IFALIAS`: attache labels the node-side links it makes with their owner.
    pub alias: Option<String>,
    /// A bridge's `vlan_filtering`.
    pub vlan_filtering: bool,
    /// A macvlan's or ipvlan's mode, a vlan's id, as the kernel reports them (the ipvlan flag is not
    /// read back).
    pub sublink: Option<SubLinkKind>,
    /// Its alternative names (`ip link property add ... altname`), up to 127 bytes each.
    pub altnames: Vec<String>,
    /// `IFLA_PERM_ADDRESS`: the MAC burnt into the device (real hardware and virtio report one; a vlan,
    /// bond or macvlan does not: they borrow or make theirs).
    pub perm_mac: Option<Vec<u8>>,
    /// `IFLA_PARENT_DEV_NAME` / `_BUS_NAME`: the device behind the netdev (`0000:3b:00.0` on `pci`,
    /// `virtio0` on `virtio`, ...); `None` for a software link.
    pub parent: Option<(String, String)>,
    /// `IFLA_PHYS_PORT_NAME` (`p0`, a switchdev representor's `pf0vf1`, ...).
    pub phys_port_name: Option<String>,
}

/// The kinds of link made on top of a node's interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubLinkKind {
    MacVlan(MacVlanMode),
    IpVlan(IpVlanMode, Option<IpVlanFlag>),
    Vlan(u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacVlanMode {
    Private,
    Vepa,
    Bridge,
    Passthru,
    Source,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVlanMode {
    L2,
    L3,
    L3S,
}

/// ipvlan's flag: how pods on one master reach each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVlanFlag {
    Bridge,
    Private,
    Vepa,
}

/// Options of a bridge port, for [`Netlink::set_bridge_port`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortOpts {
    pub hairpin: bool,
    pub isolated: bool,
}

impl MacVlanMode {
    fn packet(self) -> packet_link::MacVlanMode {
        match self {
            MacVlanMode::Private => packet_link::MacVlanMode::Private,
            MacVlanMode::Vepa => packet_link::MacVlanMode::Vepa,
            MacVlanMode::Bridge => packet_link::MacVlanMode::Bridge,
            MacVlanMode::Passthru => packet_link::MacVlanMode::Passthrough,
            MacVlanMode::Source => packet_link::MacVlanMode::Source,
        }
    }

    fn from_packet(m: packet_link::MacVlanMode) -> Option<MacVlanMode> {
        [
            MacVlanMode::Private,
            MacVlanMode::Vepa,
            MacVlanMode::Bridge,
            MacVlanMode::Passthru,
            MacVlanMode::Source,
        ]
        .into_iter()
        .find(|x| x.packet() == m)
    }
}

impl IpVlanMode {
    fn packet(self) -> packet_link::IpVlanMode {
        match self {
            IpVlanMode::L2 => packet_link::IpVlanMode::L2,
            IpVlanMode::L3 => packet_link::IpVlanMode::L3,
            IpVlanMode::L3S => packet_link::IpVlanMode::L3S,
        }
    }

    fn from_packet(m: packet_link::IpVlanMode) -> Option<IpVlanMode> {
        [IpVlanMode::L2, IpVlanMode::L3, IpVlanMode::L3S]
            .into_iter()
            .find(|x| x.packet() == m)
    }
}

impl IpVlanFlag {
    fn packet(self) -> packet_link::IpVlanFlags {
        match self {
            IpVlanFlag::Bridge => packet_link::IpVlanFlags::empty(),
            IpVlanFlag::Private => packet_link::IpVlanFlags::Private,
            IpVlanFlag::Vepa => packet_link::IpVlanFlags::Vepa,
        }
    }
}

impl SubLinkKind {
    pub fn name(&self) -> &'static str {
        match self {
            SubLinkKind::MacVlan(_) => "macvlan",
            SubLinkKind::IpVlan(..) => "ipvlan",
            SubLinkKind::Vlan(_) => "vlan",
        }
    }
}

/// A veth pair for [`Netlink::create_veth`]: `name` in the connection's namespace, `peer` moved into
/// the namespace `peer_netns` refers to, both with their MAC and `mtu` at birth.
#[derive(Clone, Copy, Debug)]
pub struct VethSpec<'a> {
    pub name: &'a str,
    pub mac: [u8; 6],
    pub up: bool,
    pub peer: &'a str,
    pub peer_mac: [u8; 6],
    pub peer_up: bool,
    pub peer_netns: RawFd,
    pub mtu: Option<u32>,
    /// The link group the peer joins (a pod's native interfaces are deleted together by group).
    pub peer_group: Option<u32>,
}

/// A macvlan, ipvlan or vlan link for [`Netlink::create_sublink`], on `master` (an index in the
/// connection's namespace), born in the namespace `netns` refers to (or the connection's).
#[derive(Clone, Copy, Debug)]
pub struct SubLinkSpec<'a> {
    pub kind: &'a SubLinkKind,
    pub name: &'a str,
    pub master: u32,
    pub netns: Option<RawFd>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub group: Option<u32>,
}

/// A route to install.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: u32,
    pub metric: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    /// The preferred source address (`src` in `ip route`).
    pub src: Option<IpAddr>,
}

impl RouteSpec {
    /// A main-table route to `dst` (via `gw`, if any) out of `oif`, with no other attributes.
    pub fn via(dst: IpNet, gw: Option<IpAddr>, oif: u32) -> RouteSpec {
        RouteSpec {
            dst,
            gw,
            oif,
            metric: None,
            table: None,
            scope: None,
            mtu: None,
            advmss: None,
            src: None,
        }
    }
}

/// One connection to the kernel's routing subsystem inside one namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let op = op.into();
    move |e| match e {
        rtnetlink::Error::NetlinkError(m) => Error::kernel(op, Errno::from_raw(-m.raw_code())),
        other => Error::Internal(format!("{op}: {other}")),
    }
}

/// A request whose "already there" or "already gone" answer (`ok`) counts as success.
fn tolerate(
    r: std::result::Result<(), rtnetlink::Error>,
    op: impl Into<String>,
    ok: fn(&Error) -> bool,
) -> Result<()> {
    match r.map_err(nl(op)) {
        Err(e) if !ok(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Whether an error is the kernel saying "already exists".
pub fn is_exists(e: &Error) -> bool {
    e.errno() == Some(Errno::EEXIST)
}

/// Whether an error is the kernel saying "no such device / entry".
pub fn is_not_found(e: &Error) -> bool {
    matches!(
        e.errno(),
        Some(Errno::ENODEV | Errno::ENOENT | Errno::ESRCH | Errno::EADDRNOTAVAIL)
    )
}

impl Netlink {
    /// Connect inside `ns` (`None`: the namespace attache runs in). Must be called within the runtime;
    /// the connection task is spawned on it and lives until the runtime ends.
    pub fn connect(ns: Option<&NetNs>) -> Result<Netlink> {
        let sock = route_socket(ns)?;
        let (conn, handle, _) = rtnetlink::from_socket(sock);
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Connect inside the namespace of a worker (which can keep serving that namespace afterwards).
    pub async fn connect_worker(w: &crate::netns::NsWorker) -> Result<Netlink> {
        let sock = w.route_socket().await?;
        let (conn, handle, _) = rtnetlink::from_socket(sock);
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    async fn add_link(&self, msg: LinkMessage, op: impl Into<String>) -> Result<()> {
        self.handle.link().add(msg).execute().await.map_err(nl(op))
    }

    async fn set_link(&self, msg: LinkMessage, op: impl Into<String>) -> Result<()> {
        self.handle.link().set(msg).execute().await.map_err(nl(op))
    }

    /// A link by name or alternative name; `None` if there is none. (`IFLA_IFNAME` finds an altname of
    /// up to 15 bytes; a longer one only by `IFLA_ALT_IFNAME`, as iproute2 asks.)
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut get = self.handle.link().get();
        if name.len() < 16 {
            get = get.match_name(name.to_string());
        } else {
            let mut bytes = name.as_bytes().to_vec();
            bytes.push(0);
            get = get.match_index(0);
            get.message_mut()
                .attributes
                .push(LinkAttribute::Other(DefaultNla::new(
                    IFLA_ALT_IFNAME,
                    bytes,
                )));
        }
        let mut req = get.execute();
        match req.try_next().await {
            Ok(m) => Ok(m.map(parse_link)),
            Err(e) => {
                let e = nl(format!("get link {name}"))(e);
                // A kernel before 5.5 knows no IFLA_ALT_IFNAME: no altname is there either.
                let old_kernel = name.len() > 15 && e.errno() == Some(Errno::EINVAL);
                if is_not_found(&e) || old_kernel {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// A link by index; `None` if there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut req = self.handle.link().get().match_index(index).execute();
        match req.try_next().await {
            Ok(m) => Ok(m.map(parse_link)),
            Err(e) => {
                let e = nl(format!("get link {index}"))(e);
                if is_not_found(&e) { Ok(None) } else { Err(e) }
            }
        }
    }

    /// Every link in the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("dump links"))?;
        Ok(msgs.into_iter().map(parse_link).collect())
    }

    /// Create a bridge, up, with a fixed MAC (so it does not follow its lowest port's as ports churn).
    pub async fn create_bridge(
        &self,
        name: &str,
        mtu: Option<u32>,
        mac: [u8; 6],
        vlan_filtering: bool,
    ) -> Result<()> {
        crate::fail::point("netlink.create_bridge")?;
        let mut b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Bridge)
            .name(name.to_string())
            .address(mac.to_vec())
            .up();
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        if vlan_filtering {
            // Bridge options must be given at creation (NewLink), not by SetLink.
            b = b.set_info_data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(true)]));
        }
        self.add_link(b.build(), format!("create bridge {name}"))
            .await
    }

    /// Create a veth pair in one request: `name` in this connection's namespace, `peer` in the namespace
    /// `peer_netns` refers to. Both ends get their MAC and MTU at birth, and `name` its up flag; the peer
    /// cannot be born up (the kernel opens it before the pair is joined: ENOTCONN).
    pub async fn create_veth(&self, v: &VethSpec<'_>) -> Result<()> {
        crate::fail::point("netlink.create_veth")?;
        let VethSpec {
            name,
            mac,
            up,
            peer,
            peer_mac,
            peer_up,
            peer_netns,
            mtu,
            peer_group,
        } = *v;
        // txqueuelen 0 on both ends, as the reference plugins create them (a veth has no queue anyway).
        let mut pb = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .address(peer_mac.to_vec())
            .txqueuelen(0)
            .setns_by_fd(peer_netns);
        if peer_up {
            pb = pb.up();
        }
        if let Some(g) = peer_group {
            pb = pb.link_group(g);
        }
        if let Some(m) = mtu {
            pb = pb.mtu(m);
        }
        let mut b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .address(mac.to_vec())
            .txqueuelen(0)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(pb.build())));
        if up {
            b = b.up();
        }
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.add_link(b.build(), format!("create veth {name} with peer {peer}"))
            .await
    }

    /// Create a macvlan, ipvlan or vlan link on `master` (an index in this connection's namespace), born in
    /// the namespace `netns` refers to (or this one), down, under `name`.
    pub async fn create_sublink(&self, s: &SubLinkSpec<'_>) -> Result<()> {
        crate::fail::point("netlink.create_sublink")?;
        let SubLinkSpec {
            kind,
            name,
            master,
            netns,
            mtu,
            mac,
            group,
        } = *s;
        let mut msg = match kind {
            SubLinkKind::MacVlan(mode) => {
                rtnetlink::LinkMacVlan::new(name, master, mode.packet()).build()
            }
            SubLinkKind::IpVlan(mode, flag) => {
                let mut b = rtnetlink::LinkIpVlan::new(name, master, mode.packet());
                if let Some(f) = flag {
                    b = b.flag(f.packet());
                }
                b.build()
            }
            SubLinkKind::Vlan(id) => rtnetlink::LinkVlan::new(name, master, *id).build(),
        };
        // txqueuelen 0, as the reference plugins create these links.
        msg.attributes.push(LinkAttribute::TxQueueLen(0));
        if let Some(fd) = netns {
            msg.attributes.push(LinkAttribute::NetNsFd(fd));
        }
        if let Some(m) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        if let Some(a) = mac {
            msg.attributes.push(LinkAttribute::Address(a.to_vec()));
        }
        if let Some(g) = group {
            msg.attributes.push(LinkAttribute::Group(g));
        }
        self.add_link(
            msg,
            format!("create {} link {name} on {master}", kind.name()),
        )
        .await
    }

    /// Rename a link (by name; it must be down). A name already taken is EEXIST.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        crate::fail::point("netlink.rename")?;
        let index = self
            .link(from)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| Error::kernel(format!("rename {from}"), Errno::ENODEV))?;
        let msg = LinkUnspec::new_with_index(index)
            .name(to.to_string())
            .build();
        self.set_link(msg, format!("rename {from} to {to}")).await
    }

    /// Rename a link by index (it must be down).
    pub async fn rename_index(&self, index: u32, to: &str) -> Result<()> {
        crate::fail::point("netlink.rename")?;
        let msg = LinkUnspec::new_with_index(index)
            .name(to.to_string())
            .build();
        self.set_link(msg, format!("rename link {index} to {to}"))
            .await
    }

    /// Remove an alternative name of a link (by index).
    pub async fn del_altname(&self, index: u32, name: &str) -> Result<()> {
        crate::fail::point("netlink.set_link")?;
        self.handle
            .link()
            .property_del(index)
            .alt_ifname(&[name])
            .execute()
            .await
            .map_err(nl(format!("remove altname {name} of link {index}")))
    }

    /// Take a link (by index) down.
    pub async fn set_down(&self, index: u32) -> Result<()> {
        crate::fail::point("netlink.set_link")?;
        let msg = LinkUnspec::new_with_index(index).down().build();
        self.set_link(msg, format!("set link {index} down")).await
    }

    /// Move a link (by index) into the namespace `netns` refers to, named `name` there: the kernel
    /// closes it first (it arrives down), and names it `name` when its own name is taken there.
    pub async fn move_link(&self, index: u32, netns: RawFd, name: &str) -> Result<()> {
        crate::fail::point("netlink.move_link")?;
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns)
            .name(name.to_string())
            .build();
        self.set_link(msg, format!("move link {index} as {name}"))
            .await
    }

    /// Put a link (by name) under a master, label it, and bring it up, in one request.
    pub async fn set_master_up(&self, name: &str, master: u32, alias: &str) -> Result<()> {
        crate::fail::point("netlink.set_master_up")?;
        let msg = LinkUnspec::new_with_name(name)
            .controller(master)
            .alias(alias)
            .up()
            .build();
        self.set_link(msg, format!("attach {name} to its bridge"))
            .await
    }

    /// Bring a link (by index) up.
    pub async fn set_up_index(&self, index: u32) -> Result<()> {
        crate::fail::point("netlink.set_up")?;
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set_link(msg, format!("set link {index} up")).await
    }

    /// Bring a link (by name) up.
    pub async fn set_up(&self, name: &str) -> Result<()> {
        crate::fail::point("netlink.set_up")?;
        let msg = LinkUnspec::new_with_name(name).up().build();
        self.set_link(msg, format!("set {name} up")).await
    }

    pub async fn set_promisc(&self, index: u32, on: bool) -> Result<()> {
        crate::fail::point("netlink.set_promisc")?;
        let msg = LinkUnspec::new_with_index(index).promiscuous(on).build();
        self.set_link(msg, "set promiscuous mode").await
    }

    pub async fn set_mac(&self, index: u32, mac: &[u8]) -> Result<()> {
        crate::fail::point("netlink.set_mac")?;
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.set_link(msg, "set MAC address").await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        crate::fail::point("netlink.set_link")?;
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.set_link(msg, format!("set MTU {mtu}")).await
    }

    pub async fn set_allmulti(&self, index: u32, on: bool) -> Result<()> {
        crate::fail::point("netlink.set_link")?;
        let msg = LinkUnspec::new_with_index(index).allmulticast(on).build();
        self.set_link(msg, "set all-multicast mode").await
    }

    pub async fn set_txqlen(&self, index: u32, len: u32) -> Result<()> {
        crate::fail::point("netlink.set_link")?;
        let msg = LinkUnspec::new_with_index(index).txqueuelen(len).build();
        self.set_link(msg, format!("set transmit queue length {len}"))
            .await
    }

    /// Set the link group of a link (by name), so that a pod's links can be deleted together.
    pub async fn set_group(&self, name: &str, group: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_name(name).link_group(group).build();
        self.set_link(msg, format!("set group of {name}")).await
    }

    /// Set bridge-port options of a link (by name) that is already a bridge port.
    pub async fn set_bridge_port(&self, name: &str, o: PortOpts) -> Result<()> {
        crate::fail::point("netlink.set_bridge_port")?;
        let mut opts = Vec::new();
        if o.hairpin {
            opts.push(InfoBridgePort::HairpinMode(true));
        }
        if o.isolated {
            opts.push(InfoBridgePort::Isolated(true));
        }
        if opts.is_empty() {
            return Ok(());
        }
        let msg = LinkUnspec::new_with_name(name)
            .set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(opts))
            .build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(nl("set bridge port options"))
    }

    /// Add a VLAN to a bridge port (`bridge vlan add vid V dev PORT [pvid untagged]`).
    pub async fn bridge_vlan_add(&self, port: u32, vid: u16, pvid_untagged: bool) -> Result<()> {
        let flags = if pvid_untagged {
            BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged
        } else {
            BridgeVlanInfoFlags::empty()
        };
        let msg = LinkBridgeVlan::new(port).vlan(vid, flags).build();
        self.set_link(msg, format!("add vlan {vid} to bridge port {port}"))
            .await
    }

    /// Remove a VLAN from a bridge port. Not there is success.
    pub async fn bridge_vlan_del(&self, port: u32, vid: u16) -> Result<()> {
        let msg = LinkBridgeVlan::new(port)
            .vlan(vid, BridgeVlanInfoFlags::empty())
            .build();
        tolerate(
            self.handle.link().del_with_message(msg).execute().await,
            format!("remove vlan {vid} from bridge port {port}"),
            is_not_found,
        )
    }

    /// Delete a link by name: `true` when it was deleted, `false` when it was already gone (success too).
    pub async fn del_link(&self, name: &str) -> Result<bool> {
        crate::fail::point("netlink.del_link")?;
        let msg = LinkUnspec::new_with_name(name).build();
        match self.handle.link().del_with_message(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) => match nl(format!("delete link {name}"))(e) {
                e if is_not_found(&e) => Ok(false),
                e => Err(e),
            },
        }
    }

    /// Delete every link of a group in one unregister. None left is success.
    pub async fn del_group(&self, group: u32) -> Result<()> {
        crate::fail::point("netlink.del_group")?;
        let msg = LinkMessageBuilder::<LinkUnspec>::new()
            .link_group(group)
            .build();
        tolerate(
            self.handle.link().del_with_message(msg).execute().await,
            format!("delete link group {group}"),
            is_not_found,
        )
    }

    /// Add an address to a link. Already there is success.
    pub async fn add_addr(&self, index: u32, addr: IpNet) -> Result<()> {
        crate::fail::point("netlink.add_addr")?;
        match self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = nl(format!("add address {addr}"))(e);
                if is_exists(&e) { Ok(()) } else { Err(e) }
            }
        }
    }

    /// The addresses on a link (`family` 4 or 6, or `None` for both), link-local IPv6 included.
    pub async fn addrs(&self, index: u32, family: Option<u8>) -> Result<Vec<IpNet>> {
        let mut req = self.handle.address().get().set_link_index_filter(index);
        if let Some(f) = family {
            req.message_mut().header.family = if f == 4 {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
        }
        let msgs: Vec<AddressMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(nl("list addresses"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                let ip = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    })
                    .or_else(|| {
                        m.attributes.iter().find_map(|a| match a {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })?;
                IpNet::new(ip, m.header.prefix_len).ok()
            })
            .collect())
    }

    /// Remove an address from a link. Already gone is success.
    pub async fn del_addr(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = addr.prefix_len();
        msg.header.family = if addr.addr().is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        msg.attributes.push(AddressAttribute::Local(addr.addr()));
        if addr.addr().is_ipv6() {
            msg.attributes.push(AddressAttribute::Address(addr.addr()));
        }
        tolerate(
            self.handle.address().del(msg).execute().await,
            format!("delete address {addr}"),
            is_not_found,
        )
    }

    /// Add a route. An identical one already present is success.
    pub async fn add_route(&self, r: &RouteSpec) -> Result<()> {
        crate::fail::point("netlink.add_route")?;
        let msg = route_message(r)?;
        tolerate(
            self.handle.route().add(msg).execute().await,
            format!(
                "add route {}{}",
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
            ),
            is_exists,
        )
    }

    /// Routes of one family in the main table (or `table`), as (dst, gw, oif) triples.
    pub async fn routes(
        &self,
        v4: bool,
        table: Option<u32>,
    ) -> Result<Vec<(IpNet, Option<IpAddr>, Option<u32>)>> {
        let family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let msgs = self.dump_routes(family).await?;
        let want_table = table.unwrap_or(254);
        Ok(msgs
            .iter()
            .filter(|m| route_table(m) == want_table)
            .filter_map(|m| {
                let addr = |a: &RouteAddress| match a {
                    RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
                    RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
                    _ => None,
                };
                let dst_ip = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Destination(d) => addr(d),
                        _ => None,
                    })
                    .unwrap_or(if v4 {
                        IpAddr::from([0u8; 4])
                    } else {
                        IpAddr::from([0u16; 8])
                    });
                let dst = IpNet::new(dst_ip, m.header.destination_prefix_length).ok()?;
                let gw = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(g) => addr(g),
                    _ => None,
                });
                let oif = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                Some((dst, gw, oif))
            })
            .collect())
    }

    /// Every route of one family, of every table.
    async fn dump_routes(&self, family: AddressFamily) -> Result<Vec<RouteMessage>> {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        self.handle
            .route()
            .get(m)
            .execute()
            .try_collect()
            .await
            .map_err(nl("list routes"))
    }

    /// Delete a route (dst, optional gateway, interface). Already gone is success.
    pub async fn del_route(&self, r: &RouteSpec) -> Result<()> {
        crate::fail::point("netlink.del_route")?;
        let msg = route_message(r)?;
        tolerate(
            self.handle.route().del(msg).execute().await,
            format!("delete route {}", r.dst),
            is_not_found,
        )
    }
}

fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(m.header.table as u32)
}

fn route_message(r: &RouteSpec) -> Result<RouteMessage> {
    let bad = |e: &dyn std::fmt::Display| Error::config(format!("route {}: {e}", r.dst));
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix_len())
        .map_err(|e| bad(&e))?
        .output_interface(r.oif);
    if let Some(gw) = r.gw {
        b = b.gateway(gw).map_err(|e| bad(&e))?;
    }
    if let Some(m) = r.metric {
        b = b.priority(m);
    }
    if let Some(t) = r.table {
        b = b.table_id(t);
    }
    if let Some(src) = r.src {
        b = b.pref_source(src).map_err(|e| bad(&e))?;
    }
    let scope = match r.scope {
        Some(s) => RouteScope::from(s),
        // A route without a gateway reaches its destination on the link.
        None if r.gw.is_none() => RouteScope::Link,
        None => RouteScope::Universe,
    };
    // Protocol "boot", as routes added by `ip route` and the reference plugins are.
    b = b
        .scope(scope)
        .kind(RouteType::Unicast)
        .protocol(RouteProtocol::Boot);
    let mut msg = b.build();
    let mut metrics = Vec::new();
    if let Some(m) = r.mtu {
        metrics.push(RouteMetric::Mtu(m));
    }
    if let Some(m) = r.advmss {
        metrics.push(RouteMetric::Advmss(m));
    }
    if !metrics.is_empty() {
        msg.attributes.push(RouteAttribute::Metrics(metrics));
    }
    Ok(msg)
}

fn parse_link(m: LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        mac: Vec::new(),
        master: None,
        link: None,
        link_netns_id: None,
        up: m.header.flags.contains(LinkFlags::Up),
        oper_up: false,
        promisc: m.header.flags.contains(LinkFlags::Promisc),
        allmulti: m.header.flags.contains(LinkFlags::Allmulti),
        txqlen: 0,
        group: 0,
        alias: None,
        vlan_filtering: false,
        sublink: None,
        altnames: Vec::new(),
        perm_mac: None,
        parent: None,
        phys_port_name: None,
    };
    let (mut parent_dev, mut parent_bus) = (None, None);
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Mtu(v) => l.mtu = v,
            LinkAttribute::Address(mac) => l.mac = mac,
            LinkAttribute::Controller(i) => l.master = Some(i),
            LinkAttribute::Link(i) => l.link = Some(i),
            LinkAttribute::LinkNetNsId(i) => l.link_netns_id = Some(i),
            LinkAttribute::OperState(s) => l.oper_up = s == State::Up,
            LinkAttribute::Group(g) => l.group = g,
            LinkAttribute::TxQueueLen(q) => l.txqlen = q,
            LinkAttribute::IfAlias(a) => l.alias = Some(a),
            LinkAttribute::PropList(props) => {
                l.altnames = props
                    .into_iter()
                    .filter_map(|p| match p {
                        packet_link::Prop::AltIfName(n) => Some(n),
                        _ => None,
                    })
                    .collect()
            }
            LinkAttribute::PermAddress(mac) if mac.iter().any(|b| *b != 0) => {
                l.perm_mac = Some(mac)
            }
            LinkAttribute::ParentDevName(n) => parent_dev = Some(n),
            LinkAttribute::PhysPortName(n) => l.phys_port_name = Some(n),
            LinkAttribute::ParentDevBusName(n) => parent_bus = Some(n),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                        LinkInfo::Data(d) => read_info_data(&mut l, d),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l.parent = parent_dev.zip(parent_bus);
    l
}

/// The kind-specific data attache looks at.
fn read_info_data(l: &mut Link, d: InfoData) {
    match d {
        InfoData::Bridge(i) => l.vlan_filtering = i.contains(&InfoBridge::VlanFiltering(true)),
        InfoData::MacVlan(i) => {
            l.sublink = i.into_iter().find_map(|x| match x {
                InfoMacVlan::Mode(m) => MacVlanMode::from_packet(m).map(SubLinkKind::MacVlan),
                _ => None,
            })
        }
        InfoData::IpVlan(i) => {
            l.sublink = i.into_iter().find_map(|x| match x {
                InfoIpVlan::Mode(m) => {
                    IpVlanMode::from_packet(m).map(|m| SubLinkKind::IpVlan(m, None))
                }
                _ => None,
            })
        }
        InfoData::Vlan(i) => {
            l.sublink = i.into_iter().find_map(|x| match x {
                InfoVlan::Id(id) => Some(SubLinkKind::Vlan(id)),
                _ => None,
            })
        }
        _ => {}
    }
}

/// Format a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse `aa:bb:cc:dd:ee:ff` (or with `-`), unicast only.
pub fn parse_mac(s: &str) -> std::result::Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let bad = || format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 == 1 {
        return Err(format!("{s:?} is a multicast MAC address"));
    }
    Ok(mac)
}

/// A random locally administered unicast MAC, as the kernel would pick (`eth_random_addr`).
pub fn random_mac() -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    random_bytes(&mut mac)?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// Fill `buf` from the kernel's random source; an error if it cannot be read (never zeros: two pods
/// would get the same MAC).
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| Error::io("reading /dev/urandom", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("0a:58:0A:01:00:02").unwrap(),
            [0x0a, 0x58, 0x0a, 1, 0, 2]
        );
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0x0a, 1, 0, 2]),
            "0a:58:0a:01:00:02"
        );
        assert!(parse_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_mac("0a:58:0a:01:00").is_err());
        assert!(parse_mac("zz:58:0a:01:00:02").is_err());
        let m = random_mac().unwrap();
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
        assert_ne!(random_mac().unwrap(), m);
    }

    #[test]
    fn route_messages() {
        let r = RouteSpec {
            dst: "0.0.0.0/0".parse().unwrap(),
            gw: Some("10.0.0.1".parse().unwrap()),
            oif: 3,
            metric: Some(100),
            table: None,
            scope: None,
            mtu: Some(1400),
            advmss: None,
            src: None,
        };
        let m = route_message(&r).unwrap();
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert!(m.attributes.contains(&RouteAttribute::Priority(100)));
        assert!(
            m.attributes
                .contains(&RouteAttribute::Metrics(vec![RouteMetric::Mtu(1400)]))
        );
        let mut link = r.clone();
        link.gw = None;
        assert_eq!(route_message(&link).unwrap().header.scope, RouteScope::Link);
    }
}
