//! The macvlan, ipvlan and vlan drivers: a link made on top of one of the node's interfaces (the
//! master), given to the pod. The reference plugins' fields and semantics; one flow for all three, which
//! differ only in the kind of link and its options.
//!
//! ADD: validate (mode, vlan id, MTU against the master's, the master itself) → addresses → the link is
//! created straight into the pod's namespace under a temporary name (a fresh random one on EEXIST) and
//! renamed to `CNI_IFNAME` there — the kernel checks a new link's name where it is created, so the final
//! name could clash with a node interface otherwise → sysctls, addresses, up, routes.
//! DEL: addresses released first, then the link, if the pod is still there. It never needs the master,
//! so it succeeds when the master has disappeared (the reference vlan plugin fails then).

use serde::Deserialize;
use serde_json::Value;

use super::AddCtx;
use super::driver::{Driver, NativeType};
use super::iface::{Dad, IfaceOpts, bring_up, check_iface};
use super::undo::Undo;
use super::{PodNs, pod_netns, sandbox};
use crate::cni::conf::{NetConf, decode};
use crate::cni::skel::CmdArgs;
use crate::cni::spec::{CniResult, Dns, Interface};
use crate::error::{Error, Result};
use crate::ipam::{Ipam, IpamRelease};
use crate::netlink::{
    IpVlanFlag, IpVlanMode, Link, MacVlanMode, Netlink, SubLinkKind, SubLinkSpec, format_mac,
    is_exists, random_bytes, random_mac,
};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Raw {
    master: Option<String>,
    mode: Option<String>,
    /// ipvlan only: `bridge` (default), `private` or `vepa`.
    flag: Option<String>,
    #[serde(rename = "vlanId")]
    vlan_id: Option<i64>,
    mtu: Option<i64>,
    link_in_container: bool,
    dns: Option<Dns>,
}

/// The three kinds of link made on a node interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubLinkType {
    MacVlan,
    IpVlan,
    Vlan,
}

impl SubLinkType {
    pub fn name(self) -> &'static str {
        match self {
            SubLinkType::MacVlan => "macvlan",
            SubLinkType::IpVlan => "ipvlan",
            SubLinkType::Vlan => "vlan",
        }
    }
}

/// A validated macvlan / ipvlan / vlan configuration.
#[derive(Debug)]
pub struct SubConf {
    pub kind: SubLinkKind,
    /// `None`: the interface of the default route.
    pub master: Option<String>,
    pub mtu: Option<u32>,
    pub link_in_container: bool,
    pub mac: Option<[u8; 6]>,
    pub dns: Option<Dns>,
    pub ipam: Ipam,
}

impl Driver for SubConf {
    fn parse(t: NativeType, args: &CmdArgs, conf: &NetConf) -> Result<SubConf> {
        let NativeType::Sub(sub) = t else {
            return Err(Error::Internal(format!("{t:?} is not a sub-link type")));
        };
        let t = sub.name();
        let raw: Raw = decode(t, Value::Object(conf.raw.clone()))?;
        conf.require_name()?;
        let kind = match sub {
            SubLinkType::MacVlan => {
                SubLinkKind::MacVlan(match raw.mode.as_deref().unwrap_or("bridge") {
                    "bridge" => MacVlanMode::Bridge,
                    "private" => MacVlanMode::Private,
                    "vepa" => MacVlanMode::Vepa,
                    "passthru" => MacVlanMode::Passthru,
                    "source" => MacVlanMode::Source,
                    other => {
                        return Err(Error::config(format!(
                            "macvlan mode {other:?} is not one of bridge, private, vepa, passthru, source"
                        )));
                    }
                })
            }
            SubLinkType::IpVlan => {
                let mode = match raw.mode.as_deref().unwrap_or("l2") {
                    "l2" => IpVlanMode::L2,
                    "l3" => IpVlanMode::L3,
                    "l3s" => IpVlanMode::L3S,
                    other => {
                        return Err(Error::config(format!(
                            "ipvlan mode {other:?} is not one of l2, l3, l3s"
                        )));
                    }
                };
                let flags = match raw.flag.as_deref() {
                    None => None,
                    Some("bridge") => Some(IpVlanFlag::Bridge),
                    Some("private") => Some(IpVlanFlag::Private),
                    Some("vepa") => Some(IpVlanFlag::Vepa),
                    Some(other) => {
                        return Err(Error::config(format!(
                            "ipvlan flag {other:?} is not one of bridge, private, vepa"
                        )));
                    }
                };
                SubLinkKind::IpVlan(mode, flags)
            }
            SubLinkType::Vlan => {
                let id = raw
                    .vlan_id
                    .ok_or_else(|| Error::config("vlan: vlanId is required"))?;
                if !(1..=4094).contains(&id) {
                    return Err(Error::config(format!(
                        "vlanId {id} is out of range: it must be 1 to 4094"
                    )));
                }
                SubLinkKind::Vlan(id as u16)
            }
        };
        if sub == SubLinkType::Vlan && raw.master.as_deref().is_none_or(str::is_empty) {
            return Err(Error::config("vlan: master is required"));
        }
        if let Some(m) = raw.master.as_deref().filter(|m| !m.is_empty()) {
            super::nic::check_nic_name(m).map_err(|e| Error::config(format!("{t} master: {e}")))?;
        }
        let mtu = match raw.mtu {
            None | Some(0) => None,
            Some(m) if (68..=65535).contains(&m) => Some(m as u32),
            Some(m) => {
                return Err(Error::config(format!(
                    "mtu {m} is out of range: it must be 68 to 65535"
                )));
            }
        };
        // Only macvlan has its own MAC; the reference reads runtimeConfig over args.cni over CNI_ARGS.
        let mac = if sub == SubLinkType::MacVlan {
            super::requested_mac(conf, args)?
        } else {
            None
        };
        let ipam = Ipam::from_conf(conf, args)?;
        if sub == SubLinkType::Vlan && ipam.is_none() {
            return Err(Error::config(
                "vlan: ipam is required (use static or host-local)",
            ));
        }
        Ok(SubConf {
            kind,
            master: raw.master.filter(|m| !m.is_empty()),
            mtu,
            link_in_container: raw.link_in_container,
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

    /// Teardown reads only what it needs: the interface name and the IPAM to release.
    async fn del(args: &CmdArgs, conf: &NetConf) -> Result<()> {
        del(args, conf, &IpamRelease::of(conf, args)).await
    }
}

/// The master: the configured one, or the interface of the default route. Missing is code 7.
async fn find_master(nl: &Netlink, sc: &SubConf, where_: &str) -> Result<Link> {
    let name = match &sc.master {
        Some(m) => m.clone(),
        None => {
            let routes = nl.routes(true, None).await?;
            let oif = routes
                .iter()
                .find(|(dst, _, oif)| dst.prefix_len() == 0 && oif.is_some())
                .and_then(|(_, _, oif)| *oif)
                .ok_or_else(|| {
                    Error::config(format!(
                        "no master given and no default route in the {where_} to take it from"
                    ))
                })?;
            return nl.link_by_index(oif).await?.ok_or_else(|| {
                Error::config(format!("the default route's interface ({oif}) is gone"))
            });
        }
    };
    nl.link(&name)
        .await?
        .ok_or_else(|| Error::config(format!("master {name:?} does not exist in the {where_}")))
}

fn temp_name() -> Result<String> {
    let mut b = [0u8; 4];
    random_bytes(&mut b)?;
    Ok(format!("att{:08x}", u32::from_le_bytes(b)))
}

async fn add(
    args: &CmdArgs,
    conf: &NetConf,
    sc: &SubConf,
    pod: &PodNs,
    link_group: Option<u32>,
) -> Result<CniResult> {
    let node = Netlink::connect(None)?;
    let pod_nl = pod.netlink().await?;
    let master_nl = if sc.link_in_container { &pod_nl } else { &node };
    let master = find_master(
        master_nl,
        sc,
        if sc.link_in_container { "pod" } else { "node" },
    )
    .await?;
    if let Some(m) = sc.mtu
        && master.mtu > 0
        && m > master.mtu
    {
        return Err(Error::config(format!(
            "mtu {m} is above the mtu of master {:?} ({})",
            master.name, master.mtu
        )));
    }
    let ctx = AddCtx {
        args,
        conf,
        driver: sc,
        link_group,
        pod,
        node: &node,
        pod_nl: &pod_nl,
        upper: &master,
        undo: std::cell::RefCell::new(Vec::new()),
    };
    ctx.undone_on_failure(&sc.ipam, ctx.run()).await
}

impl AddCtx<'_, SubConf> {
    async fn run(&self) -> Result<CniResult> {
        let (args, conf, sc, link_group) = (self.args, self.conf, self.driver, self.link_group);
        let (pod, node, pod_nl, master) = (&self.pod.ns, self.node, self.pod_nl, self.upper);
        let mut result = sc.ipam.add(args, conf).await?;
        self.undo.borrow_mut().push(Undo::Ipam);
        let mac = match sc.kind {
            SubLinkKind::MacVlan(_) => Some(match sc.mac {
                Some(m) => m,
                None => random_mac()?,
            }),
            _ => None,
        };
        let (creator, netns) = if sc.link_in_container {
            (pod_nl, None)
        } else {
            (node, Some(pod.raw_fd()))
        };
        let mut tmp = String::new();
        for attempt in 0..3 {
            tmp = temp_name()?;
            match creator
                .create_sublink(&SubLinkSpec {
                    kind: &sc.kind,
                    name: &tmp,
                    master: master.index,
                    netns,
                    mtu: sc.mtu,
                    mac,
                    group: link_group,
                })
                .await
            {
                Ok(()) => break,
                Err(e) if is_exists(&e) && attempt < 2 => continue,
                Err(e) => return Err(e),
            }
        }
        self.undo.borrow_mut().push(Undo::Link {
            netns: Some(pod.try_clone()?),
            name: tmp.clone(),
        });
        if let Err(e) = pod_nl.rename(&tmp, &args.ifname).await {
            if is_exists(&e) {
                return Err(Error::Conflict(format!(
                    "an interface named {} already exists in the pod",
                    args.ifname
                )));
            }
            return Err(e);
        }
        self.undo.borrow_mut().pop();
        self.undo.borrow_mut().push(Undo::Link {
            netns: Some(pod.try_clone()?),
            name: args.ifname.clone(),
        });
        let link = pod_nl
            .link(&args.ifname)
            .await?
            .ok_or_else(|| Error::Internal(format!("{} did not appear in the pod", args.ifname)))?;
        for ip in &mut result.ips {
            ip.interface = Some(0);
        }
        let opts = IfaceOpts {
            dad: Dad::Kernel,
            ndisc_notify: !matches!(sc.kind, SubLinkKind::Vlan(_)),
            arp_notify: !matches!(sc.kind, SubLinkKind::Vlan(_)),
        };
        bring_up(
            self.pod,
            &args.ifname,
            link.index,
            &result,
            !sc.ipam.is_none(),
            &opts,
        )
        .await?;
        result.interfaces = vec![Interface {
            name: args.ifname.clone(),
            mac: format_mac(&link.mac),
            sandbox: sandbox(args),
            ..Default::default()
        }];
        if let Some(d) = &sc.dns {
            result.dns = d.clone();
        }
        Ok(result)
    }
}

/// DEL: the link (if the pod is still there), then the addresses — only once no interface can hold
/// them any more. It never needs the master.
async fn del(args: &CmdArgs, conf: &NetConf, ipam: &IpamRelease) -> Result<()> {
    if let Some(Ok(pod)) = args.netns.as_deref().map(crate::netns::NetNs::open) {
        Netlink::connect(Some(&pod))?
            .del_link(&args.ifname)
            .await
            .map(|deleted| super::log_deleted(deleted, &args.ifname, "the pod"))
            .map_err(|e| {
                e.context(format!(
                    "deleting {}; its addresses stay reserved until a DEL succeeds",
                    args.ifname
                ))
            })?;
    }
    ipam.del(args, conf).await
}

async fn check(args: &CmdArgs, conf: &NetConf, sc: &SubConf, prev: &CniResult) -> Result<()> {
    sc.ipam.check(args, conf).await?;
    let pod = pod_netns(args)?;
    let pod_nl = Netlink::connect(Some(&pod))?;
    let link = pod_nl
        .link(&args.ifname)
        .await?
        .ok_or_else(|| Error::Mismatch(format!("{} is missing from the pod", args.ifname)))?;
    let want = sc.kind.name();
    if link.kind.as_deref() != Some(want) {
        return Err(Error::Mismatch(format!(
            "{} is a {}, not a {want}",
            args.ifname,
            link.kind.as_deref().unwrap_or("plain device")
        )));
    }
    // The ipvlan flag is not compared: the kernel does not report it back.
    let ok = match (sc.kind, link.sublink) {
        (SubLinkKind::IpVlan(want, _), Some(SubLinkKind::IpVlan(have, _))) => want == have,
        (want, have) => Some(want) == have,
    };
    if !ok {
        return Err(Error::Mismatch(format!(
            "{} does not have the configured {want} mode or id",
            args.ifname
        )));
    }
    if let Some(m) = sc.mtu
        && link.mtu != m
    {
        return Err(Error::Mismatch(format!(
            "{} has mtu {}, not {m}",
            args.ifname, link.mtu
        )));
    }
    // The master: in the node (the link's peer namespace) unless linkInContainer.
    if let (Some(name), Some(idx)) = (&sc.master, link.link) {
        let master_nl = if sc.link_in_container {
            pod_nl.clone()
        } else {
            Netlink::connect(None)?
        };
        let m = master_nl.link_by_index(idx).await?;
        if m.as_ref().map(|l| &l.name) != Some(name) {
            return Err(Error::Mismatch(format!(
                "{} is not on master {name}",
                args.ifname
            )));
        }
    }
    check_iface(&pod_nl, &args.ifname, link.index, prev, 0).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args() -> CmdArgs {
        crate::testutil::cmd_args("")
    }

    fn sc(t: &str, extra: Value) -> Result<SubConf> {
        let mut c = json!({"cniVersion":"1.0.0","name":"n","type":t,
            "ipam":{"type":"host-local","subnet":"10.1.0.0/24"}});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        let t = NativeType::of(t).unwrap();
        SubConf::parse(t, &args(), &NetConf::from_value(c).unwrap())
    }

    #[test]
    fn modes_and_defaults() {
        assert_eq!(
            sc("macvlan", json!({})).unwrap().kind,
            SubLinkKind::MacVlan(MacVlanMode::Bridge)
        );
        assert_eq!(
            sc("macvlan", json!({"mode":"passthru"})).unwrap().kind,
            SubLinkKind::MacVlan(MacVlanMode::Passthru)
        );
        assert_eq!(
            sc("ipvlan", json!({})).unwrap().kind,
            SubLinkKind::IpVlan(IpVlanMode::L2, None)
        );
        assert_eq!(
            sc("ipvlan", json!({"mode":"l3s","flag":"private"}))
                .unwrap()
                .kind,
            SubLinkKind::IpVlan(IpVlanMode::L3S, Some(IpVlanFlag::Private))
        );
        assert_eq!(
            sc("vlan", json!({"master":"eth1","vlanId":100}))
                .unwrap()
                .kind,
            SubLinkKind::Vlan(100)
        );
        // macvlan may be layer 2 only.
        assert!(sc("macvlan", json!({"ipam":{}})).unwrap().ipam.is_none());
        assert_eq!(
            sc(
                "macvlan",
                json!({"runtimeConfig":{"mac":"0a:00:00:00:00:07"}})
            )
            .unwrap()
            .mac,
            Some([0x0a, 0, 0, 0, 0, 7])
        );
    }

    #[test]
    fn offending_values_are_code_7() {
        for (t, extra, needle) in [
            ("vlan", json!({"master":"eth1","vlanId":4095}), "4095"),
            ("vlan", json!({"master":"eth1","vlanId":0}), "0"),
            ("vlan", json!({"master":"eth1"}), "vlanId"),
            ("vlan", json!({"vlanId":5}), "master"),
            (
                "vlan",
                json!({"master":"eth1","vlanId":5,"ipam":{}}),
                "ipam",
            ),
            ("macvlan", json!({"mode":"turbo"}), "turbo"),
            ("ipvlan", json!({"mode":"l4"}), "l4"),
            ("ipvlan", json!({"flag":"loud"}), "loud"),
            ("macvlan", json!({"mtu":70000}), "70000"),
            ("macvlan", json!({"master":"a/b"}), "master"),
        ] {
            let e = sc(t, extra.clone()).unwrap_err();
            assert_eq!(e.cni_code(), 7, "{t} {extra}");
            assert!(e.to_string().contains(needle), "{t} {extra}: {e}");
        }
    }
}
