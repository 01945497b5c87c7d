//! Native attachment drivers, run in-process over netlink: the plugin types attache owns. Each one also
//! works on its own (drop-in mode): a conf with that `type`, or the binary installed under that name.
//!
//! What the drivers share lives here: the dispatch by command, the undo list that rolls a failed ADD back
//! in reverse order, and [`configure_iface`] — addresses, link up and routes on the pod side, the
//! reference plugins' `ConfigureIface`.

pub mod bridge;
pub mod nft;
pub mod sublink;

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::cni::conf::NetConf;
use crate::cni::skel::CmdArgs;
use crate::cni::spec::CniResult;
use crate::error::{Error, Result};
use crate::netlink::{Netlink, RouteSpec};
use crate::netns::{NetNs, NsWorker};

/// The plugin types attache implements itself.
pub const NATIVE_TYPES: &[&str] = &["bridge", "macvlan", "ipvlan", "vlan"];

pub fn is_native(t: &str) -> bool {
    NATIVE_TYPES.contains(&t)
}

/// The configuration key (internal, set by the meta-plugin) naming the link group of the pod interface.
pub const LINK_GROUP_KEY: &str = "attache.linkGroup";

/// Delete every pod interface of a link group at once: the kernel unregisters them together and waits
/// for one RCU grace period instead of one per interface. Teardown of each attachment follows and finds
/// its link gone.
pub async fn delete_link_group(netns: &std::path::Path, group: u32) -> Result<()> {
    let ns = NetNs::open(netns)?;
    Netlink::connect(Some(&ns))?.del_group(group).await
}

/// " and natively bridge, ..." for error messages.
pub fn native_list_suffix() -> String {
    format!(" and natively {}", NATIVE_TYPES.join(", "))
}

/// Run a native driver for one command — standalone (drop-in mode), or as a link in a chain.
pub async fn run_standalone(t: &str, args: &CmdArgs, conf: NetConf) -> Result<Option<Value>> {
    match t {
        "bridge" => bridge::run(args, &conf).await,
        "macvlan" | "ipvlan" | "vlan" => sublink::run(t, args, &conf).await,
        other => Err(Error::config(format!(
            "native type {other:?} is not available"
        ))),
    }
}

/// Validate a native plugin's configuration without touching anything (a meta-plugin plans first).
pub fn validate(t: &str, args: &CmdArgs, conf: &NetConf) -> Result<()> {
    match t {
        "bridge" => bridge::BridgeConf::new(conf, args).map(|_| ()),
        "macvlan" | "ipvlan" | "vlan" => sublink::SubConf::new(t, conf, args).map(|_| ()),
        other => Err(Error::config(format!(
            "native type {other:?} is not available"
        ))),
    }
}

/// The MAC a runtime or the configuration asks for: `runtimeConfig.mac` (capability), then
/// `args.cni.mac`, then `CNI_ARGS MAC=`, as the reference plugins read them.
pub fn requested_mac(conf: &NetConf, args: &CmdArgs) -> Result<Option<[u8; 6]>> {
    let from_conf = |path: &[&str]| {
        let mut v = conf.raw.get(path[0]);
        for k in &path[1..] {
            v = v.and_then(|x| x.get(k));
        }
        v.and_then(Value::as_str)
    };
    from_conf(&["runtimeConfig", "mac"])
        .or_else(|| from_conf(&["args", "cni", "mac"]))
        .or(args.args.get("MAC"))
        .filter(|m| !m.is_empty())
        .map(crate::netlink::parse_mac)
        .transpose()
        .map_err(Error::config)
}

/// The `sandbox` of a pod-side interface in a result: the netns path.
pub fn sandbox(args: &CmdArgs) -> String {
    args.netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The host-side name of a pod's veth: stable for a `(containerID, ifname)` so DEL, CHECK and a retried
/// ADD can find it without state, and `veth`-prefixed because NetworkManager leaves such devices alone.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = nft::fnv1a(&[container_id, ifname]);
    format!("veth{:011x}", h & 0xfff_ffff_ffff)
}

/// The label put on host-side links (`ip link` shows it), naming their owner: `attache <containerID>
/// <ifname>`. The kernel keeps at most 255 bytes of an alias, so a container ID longer than the
/// runtimes' 64 characters is replaced by `h:` and its hash.
pub fn owner_alias(container_id: &str, ifname: &str) -> String {
    format!("{}{ifname}", owner_alias_prefix(container_id))
}

/// The start of the alias of every host-side link of a container.
pub fn owner_alias_prefix(container_id: &str) -> String {
    if container_id.len() <= 64 {
        format!("attache {container_id} ")
    } else {
        format!("attache h:{:016x} ", nft::fnv1a(&[container_id]))
    }
}

/// Delete the node's links that carry a container's alias (what its attachments made there), whether
/// or not any configuration still describes them. Returns the names deleted.
pub async fn delete_owned_links(container_id: &str) -> Result<Vec<String>> {
    let node = Netlink::connect(None)?;
    let prefix = owner_alias_prefix(container_id);
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for l in node.links().await? {
        if l.alias.as_deref().is_some_and(|a| a.starts_with(&prefix)) {
            match node.del_link(&l.name).await {
                Ok(()) => deleted.push(l.name),
                Err(e) => errors.push(e),
            }
        }
    }
    Error::from_list(errors).map(|_| deleted)
}

/// Open the pod's netns named by `CNI_NETNS` (code 8 if it is not one).
pub fn pod_netns(args: &CmdArgs) -> Result<NetNs> {
    let p = args
        .netns
        .as_deref()
        .ok_or_else(|| Error::InvalidEnv("CNI_NETNS is required".into()))?;
    NetNs::open(p)
}

/// Things a failed ADD undoes, newest first.
pub enum Undo {
    /// A link, by name, in a namespace (`None`: the node's).
    Link {
        netns: Option<NetNs>,
        name: String,
    },
    Nft(nft::Removal),
    Ipam,
}

/// Run an undo list in reverse; errors are logged, the ADD's own error is what the caller sees.
///
/// Links are deleted over a fresh netlink connection: the one the ADD used may be exactly what failed
/// (a connection whose task died answers nothing). And an address reservation is released only when
/// every link made before it is gone — a link left holding an address whose reservation is released
/// would hand the next pod a duplicate; kept, the reservation goes with the runtime's DEL.
pub async fn rollback(undo: Vec<Undo>, args: &CmdArgs, conf: &NetConf, ipam: &crate::ipam::Ipam) {
    let mut link_left = false;
    for u in undo.into_iter().rev() {
        let (what, r) = match &u {
            Undo::Link { netns, name } => {
                let r = match Netlink::connect(netns.as_ref()) {
                    Ok(nl) => nl.del_link(name).await,
                    Err(e) => Err(e),
                };
                link_left |= r.is_err();
                (format!("delete link {name}"), r)
            }
            Undo::Nft(r) => ("remove nftables state".to_string(), nft::remove(r).await),
            Undo::Ipam if link_left => {
                tracing::error!(
                    container = %args.container_id,
                    ifname = %args.ifname,
                    "rollback: a link could not be deleted, so its addresses stay reserved until a DEL succeeds"
                );
                continue;
            }
            Undo::Ipam => ("release addresses".to_string(), ipam.del(args, conf).await),
        };
        match r {
            Ok(()) => tracing::debug!(ifname = %args.ifname, "rollback: {what}"),
            Err(e) => tracing::warn!(ifname = %args.ifname, "rollback: {what} failed: {e}"),
        }
    }
}

/// Write a sysctl under `/proc/sys` of the calling thread's namespace.
pub fn sysctl(key: &str, value: &str) -> Result<()> {
    crate::fail::point("sysctl")?;
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|e| Error::io(format!("setting {key}"), e))
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
        };
        async move { pod_nl.add_route(&spec).await }
    }))
    .await?;
    Ok(())
}

/// Make `gw` via `ifname` the pod's default route of its family: other default routes of that family
/// (on any interface) go.
pub async fn move_default_route(netns: &std::path::Path, ifname: &str, gw: IpAddr) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A named netns for one unit test, removed on drop.
    struct TestNs(String);

    impl TestNs {
        fn new(tag: &str) -> TestNs {
            let name = format!("att-unit-{tag}-{}", std::process::id());
            let ok = std::process::Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap();
            assert!(ok.success(), "ip netns add (the unit tests run as root)");
            TestNs(name)
        }

        fn path(&self) -> std::path::PathBuf {
            std::path::PathBuf::from(format!("/run/netns/{}", self.0))
        }

        fn links(&self) -> String {
            let o = std::process::Command::new("ip")
                .args(["-n", &self.0, "-o", "link", "show"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        }
    }

    impl Drop for TestNs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }

    #[test]
    fn rollback_reconnects_and_keeps_reservations_while_a_link_remains() {
        let ns = TestNs::new("rollback");
        let data = crate::testutil::tempdir("rollback");
        let conf = NetConf::from_value(serde_json::json!({"cniVersion":"1.0.0","name":"rb",
            "type":"bridge","ipam":{"type":"host-local","subnet":"10.3.0.0/24","dataDir":data}}))
        .unwrap();
        let args = crate::testutil::cmd_args("");
        let ipam = crate::ipam::Ipam::from_conf(&conf, &args).unwrap();
        let held = || ipam.held(&args).unwrap().len();
        let ok = std::process::Command::new("ip")
            .args([
                "-n", &ns.0, "link", "add", "rb0", "type", "veth", "peer", "name", "rb1",
            ])
            .status()
            .unwrap();
        assert!(ok.success());
        // The ADD's own runtime (and every connection on it) is gone by the time the rollback runs.
        crate::testutil::rt()
            .block_on(ipam.add(&args, &conf))
            .unwrap();
        assert_eq!(held(), 1);
        let undo = |name: &str| {
            vec![
                Undo::Ipam,
                Undo::Link {
                    netns: Some(NetNs::open(&ns.path()).unwrap()),
                    name: name.into(),
                },
            ]
        };
        // A link that cannot be deleted (lo): the address stays reserved.
        crate::testutil::rt().block_on(rollback(undo("lo"), &args, &conf, &ipam));
        assert_eq!(held(), 1, "released while a link may still hold it");
        // A link that can: it goes over a fresh connection, then the address.
        crate::testutil::rt().block_on(rollback(undo("rb0"), &args, &conf, &ipam));
        assert!(!ns.links().contains("rb0"), "{}", ns.links());
        assert_eq!(held(), 0);
        std::fs::remove_dir_all(&data).unwrap();
    }

    #[test]
    fn aliases_fit_the_kernel() {
        assert_eq!(owner_alias("c1", "net1"), "attache c1 net1");
        let long = "a".repeat(255);
        let a = owner_alias(&long, "net1");
        assert!(
            a.len() < 64 && a.starts_with("attache h:") && a.ends_with(" net1"),
            "{a}"
        );
        assert_eq!(a, owner_alias(&long, "net1"));
        assert!(a.starts_with(&owner_alias_prefix(&long)));
    }

    #[test]
    fn host_veth_names() {
        let a = host_veth_name("c1", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_eq!(a, host_veth_name("c1", "eth0"));
        assert_ne!(a, host_veth_name("c1", "net1"));
        crate::cni::conf::check_ifname(&a).unwrap();
    }
}
