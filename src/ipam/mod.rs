//! IP address management for the native drivers: host-local (on-disk compatible with the reference
//! plugin), static, and any other type delegated by exec. Configuration is validated into an [`Ipam`]
//! before anything happens; IPAM never touches netlink.

pub mod range;
pub mod store;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::cni::conf::{NetConf, decode};
use crate::cni::skel::{CmdArgs, Command};
use crate::cni::spec::{CniResult, Dns, IpConfig, Route};
use crate::delegate::{self, Invocation};
use crate::error::{Error, Result};
use range::{RangeSet, RawRange};
use store::{DiskStore, Store};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// A validated IPAM configuration.
#[derive(Clone, Debug)]
pub enum Ipam {
    /// No `ipam` (or `{}`): a layer-2 attachment.
    None,
    HostLocal(HostLocal),
    Static(Static),
    /// A type attache does not own (`dhcp`, `whereabouts`, ...), run by exec with the whole configuration.
    External(String),
}

#[derive(Clone, Debug)]
pub struct HostLocal {
    pub network: String,
    pub data_dir: PathBuf,
    pub range_sets: Vec<RangeSet>,
    pub requested: Vec<IpAddr>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Clone, Debug)]
pub struct Static {
    pub addresses: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHostLocal {
    ranges: Option<Vec<Vec<RawRange>>>,
    #[serde(flatten)]
    legacy: RawRange,
    #[serde(default)]
    routes: Vec<Route>,
    data_dir: Option<PathBuf>,
    resolv_conf: Option<PathBuf>,
}

#[derive(Deserialize)]
struct RawStaticAddr {
    address: String,
    gateway: Option<IpAddr>,
}

#[derive(Deserialize)]
struct RawStatic {
    #[serde(default)]
    addresses: Vec<RawStaticAddr>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

/// The `ips` a runtime or the conf's `args` ask for: `runtimeConfig.ips`, then `args.cni.ips`.
fn requested_ips(conf: &NetConf) -> Result<(Vec<String>, Vec<String>)> {
    let list = |v: Option<&Value>, what: &str| -> Result<Vec<String>> {
        match v {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| {
                        Error::config(format!("{what}: every entry must be a string"))
                    })
                })
                .collect(),
            Some(_) => Err(Error::config(format!("{what} must be a list"))),
        }
    };
    let runtime = list(
        conf.raw.get("runtimeConfig").and_then(|r| r.get("ips")),
        "runtimeConfig.ips",
    )?;
    let args = list(
        conf.raw
            .get("args")
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get("ips")),
        "args.cni.ips",
    )?;
    Ok((runtime, args))
}

fn parse_ip_or_cidr(s: &str) -> Result<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<IpNet>().map(|n| n.addr()))
        .map_err(|_| Error::config(format!("{s:?} is not an IP address")))
}

fn parse_cidr(s: &str) -> Result<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>().map_err(|_| {
        Error::config(format!(
            "{s:?} is not an address with a prefix length (like 10.1.2.3/24)"
        ))
    })
}

impl Ipam {
    /// Validate the `ipam` section of `conf` (and the requested addresses from args and runtime).
    pub fn from_conf(conf: &NetConf, args: &CmdArgs) -> Result<Ipam> {
        let section = match conf.raw.get("ipam") {
            None | Some(Value::Null) => return Ok(Ipam::None),
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(Error::config(format!(
                    "ipam must be an object, got {other}"
                )));
            }
        };
        let kind = match section.get("type") {
            None => return Ok(Ipam::None),
            Some(Value::String(t)) if t.is_empty() => return Ok(Ipam::None),
            Some(Value::String(t)) => t.as_str(),
            Some(other) => {
                return Err(Error::config(format!(
                    "ipam.type must be a string, got {other}"
                )));
            }
        };
        let section = Value::Object(section.clone());
        match kind {
            "host-local" => {
                let raw: RawHostLocal = decode("ipam (host-local)", section)?;
                HostLocal::new(conf, args, raw).map(Ipam::HostLocal)
            }
            "static" => {
                let raw: RawStatic = decode("ipam (static)", section)?;
                Static::new(conf, args, raw).map(Ipam::Static)
            }
            other => {
                crate::cni::conf::validate_plugin_type(other)?;
                Ok(Ipam::External(other.to_string()))
            }
        }
    }

    /// What DEL and GC need of the `ipam` section, read leniently: a configuration that ADD refused
    /// must still be torn down. host-local needs only the network name and `dataDir` (addresses are
    /// released by container and interface), static the addresses it can parse (for address-keyed
    /// state such as masquerading), any other type its name. What cannot be used is logged and skipped:
    /// ADD never made anything with it.
    pub fn for_teardown(conf: &NetConf, args: &CmdArgs) -> Ipam {
        let Some(Value::Object(section)) = conf.raw.get("ipam") else {
            return Ipam::None;
        };
        match section.get("type").and_then(Value::as_str) {
            None | Some("") => Ipam::None,
            Some("host-local") => {
                let data_dir = match section.get("dataDir") {
                    None | Some(Value::Null) => PathBuf::from(DEFAULT_DATA_DIR),
                    Some(Value::String(d)) if Path::new(d).is_absolute() => PathBuf::from(d),
                    Some(other) => {
                        tracing::warn!(
                            "ipam dataDir {other} is not an absolute path: no address was ever reserved there"
                        );
                        return Ipam::None;
                    }
                };
                if crate::cni::conf::validate_network_name(&conf.name).is_err() {
                    tracing::warn!("no usable network name: host-local holds nothing for it");
                    return Ipam::None;
                }
                Ipam::HostLocal(HostLocal {
                    network: conf.name.clone(),
                    data_dir,
                    range_sets: vec![],
                    requested: vec![],
                    routes: vec![],
                    dns: Dns::default(),
                })
            }
            Some("static") => {
                let mut addresses: Vec<IpConfig> = section
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.get("address")?.as_str()?.trim().parse::<IpNet>().ok())
                    .map(|address| IpConfig {
                        interface: None,
                        address,
                        gateway: None,
                    })
                    .collect();
                for part in args.args.get("IP").unwrap_or_default().split(',') {
                    if let Ok(address) = part.trim().parse::<IpNet>() {
                        addresses.push(IpConfig {
                            interface: None,
                            address,
                            gateway: None,
                        });
                    }
                }
                Ipam::Static(Static {
                    addresses,
                    routes: vec![],
                    dns: Dns::default(),
                })
            }
            Some(t) if crate::cni::conf::validate_plugin_type(t).is_ok() => {
                Ipam::External(t.to_string())
            }
            Some(t) => {
                tracing::warn!("ipam type {t:?} names no plugin: nothing to release");
                Ipam::None
            }
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Ipam::None)
    }

    /// Allocate. The result carries no interface indexes: the driver assigns them.
    pub async fn add(&self, args: &CmdArgs, conf: &NetConf) -> Result<CniResult> {
        match self {
            Ipam::None => Ok(CniResult::default()),
            Ipam::HostLocal(h) => h.add(&args.container_id, &args.ifname),
            Ipam::Static(s) => Ok(s.result()),
            Ipam::External(t) => {
                let out = delegate::exec(
                    Command::Add,
                    t,
                    &Value::Object(conf.raw.clone()),
                    &invocation(args),
                )
                .await?
                .ok_or_else(|| Error::Ipam(format!("IPAM plugin {t:?} printed no result")))?;
                let mut r = CniResult::from_value(&out, conf.version)?;
                r.interfaces.clear();
                for ip in &mut r.ips {
                    ip.interface = None;
                }
                Ok(r)
            }
        }
    }

    /// Release. Nothing held is success.
    pub async fn del(&self, args: &CmdArgs, conf: &NetConf) -> Result<()> {
        match self {
            Ipam::None | Ipam::Static(_) => Ok(()),
            Ipam::HostLocal(h) => h.release(&args.container_id, &args.ifname).map(|_| ()),
            Ipam::External(t) => delegate::exec(
                Command::Del,
                t,
                &Value::Object(conf.raw.clone()),
                &invocation(args),
            )
            .await
            .map(|_| ()),
        }
    }

    pub async fn check(&self, args: &CmdArgs, conf: &NetConf) -> Result<()> {
        match self {
            Ipam::None | Ipam::Static(_) => Ok(()),
            Ipam::HostLocal(h) => {
                let held = h.held(&args.container_id, &args.ifname)?;
                if held.is_empty() {
                    return Err(Error::Ipam(format!(
                        "host-local: no address is held for container {} interface {} in network {}",
                        args.container_id, args.ifname, h.network
                    )));
                }
                Ok(())
            }
            Ipam::External(t) => delegate::exec(
                Command::Check,
                t,
                &Value::Object(conf.raw.clone()),
                &invocation(args),
            )
            .await
            .map(|_| ()),
        }
    }

    /// Release every address whose `(containerID, ifname)` is not in `valid`.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<IpAddr>> {
        match self {
            Ipam::HostLocal(h) => h.gc(valid),
            _ => Ok(vec![]),
        }
    }

    /// The addresses this attachment holds (for teardown of address-keyed state such as masquerading).
    pub fn held(&self, args: &CmdArgs) -> Result<Vec<IpAddr>> {
        match self {
            Ipam::HostLocal(h) => h.held(&args.container_id, &args.ifname),
            Ipam::Static(s) => Ok(s.addresses.iter().map(|a| a.address.addr()).collect()),
            _ => Ok(vec![]),
        }
    }
}

fn invocation(args: &CmdArgs) -> Invocation<'_> {
    Invocation {
        container_id: &args.container_id,
        netns: args.netns.as_deref(),
        ifname: &args.ifname,
        cni_args: args.args.clone(),
        link_group: None,
        path: &args.path,
    }
}

impl HostLocal {
    fn new(conf: &NetConf, args: &CmdArgs, raw: RawHostLocal) -> Result<HostLocal> {
        let network = conf.require_name()?.to_string();
        let mut sets: Vec<Vec<RawRange>> = Vec::new();
        // Runtime-provided ranges (ipRanges capability) come first, then the legacy single range.
        if let Some(Value::Array(rs)) = conf
            .raw
            .get("runtimeConfig")
            .and_then(|r| r.get("ipRanges"))
        {
            for set in rs {
                let set: Vec<RawRange> = decode("runtimeConfig.ipRanges", set.clone())?;
                sets.push(set);
            }
        }
        if raw.legacy.subnet.is_some() {
            sets.push(vec![raw.legacy.clone()]);
        }
        sets.extend(raw.ranges.unwrap_or_default());
        if sets.is_empty() {
            return Err(Error::config("ipam (host-local): no IP ranges specified"));
        }
        let range_sets = sets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                RangeSet::from_raw(s).map_err(|e| e.context(format!("ipam range set {i}")))
            })
            .collect::<Result<Vec<_>>>()?;
        for (i, a) in range_sets.iter().enumerate() {
            for (j, b) in range_sets.iter().enumerate().skip(i + 1) {
                if a.overlaps(b) {
                    return Err(Error::config(format!(
                        "ipam: range set {i} overlaps with {j}"
                    )));
                }
            }
        }
        let mut requested = Vec::new();
        if let Some(ip) = args.args.get("IP") {
            for part in ip.split(',').filter(|p| !p.trim().is_empty()) {
                requested.push(parse_ip_or_cidr(part)?);
            }
        }
        let (runtime, cni_args) = requested_ips(conf)?;
        for s in cni_args.iter().chain(runtime.iter()) {
            requested.push(parse_ip_or_cidr(s)?);
        }
        let dns = match &raw.resolv_conf {
            Some(p) => parse_resolv_conf(p)?,
            None => Dns::default(),
        };
        if let Some(d) = &raw.data_dir
            && !d.is_absolute()
        {
            return Err(Error::config(format!(
                "ipam (host-local): dataDir must be an absolute path, got {}",
                d.display()
            )));
        }
        Ok(HostLocal {
            network,
            data_dir: raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            range_sets,
            requested,
            routes: raw.routes,
            dns,
        })
    }

    fn store(&self) -> Result<DiskStore> {
        DiskStore::open(&self.data_dir, &self.network)
    }

    pub fn add(&self, id: &str, ifname: &str) -> Result<CniResult> {
        let mut store = self.store()?;
        let ips = allocate(&mut store, &self.range_sets, &self.requested, id, ifname)?;
        Ok(CniResult {
            interfaces: vec![],
            ips,
            routes: self.routes.clone(),
            dns: self.dns.clone(),
        })
    }

    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        if !self.data_dir.join(&self.network).exists() {
            return Ok(vec![]);
        }
        self.store()?.release_by_id(id, ifname)
    }

    pub fn held(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        if !self.data_dir.join(&self.network).exists() {
            return Ok(vec![]);
        }
        self.store()?.get_by_id(id, ifname)
    }

    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<IpAddr>> {
        if !self.data_dir.join(&self.network).exists() {
            return Ok(vec![]);
        }
        let mut store = self.store()?;
        let mut released = Vec::new();
        for (ip, id, ifname) in store.all()? {
            let keep = valid
                .iter()
                .any(|(v_id, v_if)| *v_id == id && (*v_if == ifname || ifname.is_empty()));
            if !keep {
                store.release(ip)?;
                released.push(ip);
            }
        }
        Ok(released)
    }
}

/// One address per range set, under the store's lock, the reference plugin's way: a requested address
/// must lie in a range and not be its gateway; otherwise a container may hold one address per set; the
/// search starts after the last address reserved. Everything is released again if any set fails.
pub fn allocate(
    store: &mut dyn Store,
    sets: &[RangeSet],
    requested: &[IpAddr],
    id: &str,
    ifname: &str,
) -> Result<Vec<IpConfig>> {
    let mut out = Vec::new();
    let mut remaining: Vec<IpAddr> = requested.to_vec();
    let result = (|| -> Result<()> {
        for (idx, set) in sets.iter().enumerate() {
            let want = remaining
                .iter()
                .position(|ip| set.range_for(*ip).is_some())
                .map(|i| remaining.remove(i));
            let (ip, r) = match want {
                Some(ip) => {
                    let r = set.range_for(ip).expect("checked above");
                    if r.gateway == Some(ip) {
                        return Err(Error::Ipam(format!(
                            "requested IP {ip} is the subnet's gateway"
                        )));
                    }
                    if !store.reserve(id, ifname, ip, idx)? {
                        return Err(Error::Ipam(format!(
                            "requested IP address {ip} is not available in range set {idx}"
                        )));
                    }
                    (ip, r)
                }
                None => {
                    if let Some(have) = store
                        .get_by_id(id, ifname)?
                        .into_iter()
                        .find(|ip| set.range_for(*ip).is_some())
                    {
                        return Err(Error::Ipam(format!(
                            "{have} has been allocated to {id}, duplicate allocation is not allowed"
                        )));
                    }
                    let last = store.last_reserved(idx)?;
                    let mut got = None;
                    for (ip, r) in set.candidates(last) {
                        if store.reserve(id, ifname, ip, idx)? {
                            got = Some((ip, r));
                            break;
                        }
                    }
                    got.ok_or_else(|| {
                        let ranges: Vec<String> = set
                            .0
                            .iter()
                            .map(|r| format!("{}-{}", r.start, r.end))
                            .collect();
                        Error::Ipam(format!(
                            "no IP addresses available in range set: {}",
                            ranges.join(",")
                        ))
                    })?
                }
            };
            out.push(IpConfig {
                interface: None,
                address: IpNet::new(ip, r.subnet.prefix_len())
                    .expect("prefix comes from a valid subnet"),
                gateway: r.gateway,
            });
        }
        if !remaining.is_empty() {
            let list: Vec<String> = remaining.iter().map(|i| i.to_string()).collect();
            return Err(Error::Ipam(format!(
                "failed to allocate all requested IPs: {} (not in any range)",
                list.join(", ")
            )));
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(out),
        Err(e) => {
            for ip in &out {
                let _ = store.release(ip.address.addr());
            }
            Err(e)
        }
    }
}

impl Static {
    fn new(conf: &NetConf, args: &CmdArgs, raw: RawStatic) -> Result<Static> {
        let mut addresses = raw
            .addresses
            .iter()
            .map(|a| {
                Ok(IpConfig {
                    interface: None,
                    address: parse_cidr(&a.address)?,
                    gateway: a.gateway,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // CNI_ARGS IP= adds addresses, GATEWAY= sets the gateway of the one it falls in.
        if let Some(ips) = args.args.get("IP") {
            for part in ips.split(',').filter(|p| !p.trim().is_empty()) {
                addresses.push(IpConfig {
                    interface: None,
                    address: parse_cidr(part)?,
                    gateway: None,
                });
            }
            if let Some(gws) = args.args.get("GATEWAY") {
                for g in gws.split(',').filter(|p| !p.trim().is_empty()) {
                    let gw: IpAddr = g.trim().parse().map_err(|_| {
                        Error::config(format!("GATEWAY {g:?} is not an IP address"))
                    })?;
                    for a in addresses.iter_mut().filter(|a| a.address.contains(&gw)) {
                        a.gateway = Some(gw);
                    }
                }
            }
        }
        // args.cni.ips, then the ips capability, each replace what came before.
        let (runtime, cni_args) = requested_ips(conf)?;
        for list in [cni_args, runtime] {
            if !list.is_empty() {
                addresses = list
                    .iter()
                    .map(|s| {
                        Ok(IpConfig {
                            interface: None,
                            address: parse_cidr(s)?,
                            gateway: None,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
            }
        }
        for a in &addresses {
            if let Some(gw) = a.gateway
                && gw.is_ipv4() != a.address.addr().is_ipv4()
            {
                return Err(Error::config(format!(
                    "gateway {gw} is not of the family of {}",
                    a.address
                )));
            }
        }
        Ok(Static {
            addresses,
            routes: raw.routes,
            dns: raw.dns,
        })
    }

    fn result(&self) -> CniResult {
        CniResult {
            interfaces: vec![],
            ips: self.addresses.clone(),
            routes: self.routes.clone(),
            dns: self.dns.clone(),
        }
    }
}

/// Read a resolv.conf into a DNS block.
pub fn parse_resolv_conf(path: &Path) -> Result<Dns> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.nameservers.extend(words.next().map(str::to_string)),
            Some("domain") => dns.domain = words.next().unwrap_or_default().to_string(),
            Some("search") => dns.search = words.map(str::to_string).collect(),
            Some("options") => dns.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    Ok(dns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use store::MemStore;

    fn args(cni_args: &str) -> CmdArgs {
        crate::testutil::cmd_args(cni_args)
    }

    fn conf(ipam: Value) -> NetConf {
        NetConf::from_value(json!({"cniVersion":"1.0.0","name":"n","type":"bridge","ipam": ipam}))
            .unwrap()
    }

    fn host_local(ipam: Value, cni_args: &str) -> HostLocal {
        match Ipam::from_conf(&conf(ipam), &args(cni_args)).unwrap() {
            Ipam::HostLocal(h) => h,
            other => panic!("{other:?}"),
        }
    }

    fn set(subnet: &str) -> RangeSet {
        RangeSet::from_raw(&[RawRange {
            subnet: Some(subnet.into()),
            ..Default::default()
        }])
        .unwrap()
    }

    #[test]
    fn kinds() {
        assert!(
            Ipam::from_conf(&conf(json!({})), &args(""))
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            Ipam::from_conf(&conf(json!({"type":"dhcp"})), &args("")).unwrap(),
            Ipam::External(t) if t == "dhcp"
        ));
        for bad in [
            json!({"type":"host-local"}),
            json!({"type":"host-local","subnet":"10.0.0.0/33"}),
            json!({"type":"host-local","subnet":"10.0.0.0/24","dataDir":"relative/dir"}),
            json!({"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.0/25"}]]}),
            json!({"type":"static","addresses":[{"address":"10.0.0.1"}]}),
            json!({"type":"../bin/sh"}),
            json!("host-local"),
        ] {
            assert_eq!(
                Ipam::from_conf(&conf(bad.clone()), &args(""))
                    .unwrap_err()
                    .cni_code(),
                7,
                "{bad}"
            );
        }
    }

    #[test]
    fn legacy_and_ranges_and_requested_ips() {
        let h = host_local(
            json!({"type":"host-local","subnet":"10.0.0.0/24","ranges":[[{"subnet":"fd00::/64"}]],
                "routes":[{"dst":"0.0.0.0/0"}]}),
            "IP=10.0.0.7",
        );
        assert_eq!(h.range_sets.len(), 2);
        assert!(h.range_sets[0].is_v4());
        assert_eq!(h.requested, vec!["10.0.0.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(h.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn allocates_round_robin_one_per_set() {
        let mut s = MemStore::default();
        let sets = vec![set("10.0.0.0/29"), set("fd00::/125")];
        let a = allocate(&mut s, &sets, &[], "c1", "eth0").unwrap();
        assert_eq!(a[0].address.to_string(), "10.0.0.2/29");
        assert_eq!(a[0].gateway, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(a[1].address.to_string(), "fd00::2/125");
        // Duplicate for the same container and interface is refused, and nothing is left over.
        let e = allocate(&mut s, &sets, &[], "c1", "eth0").unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        assert_eq!(s.held.len(), 2);
        // Round robin: after a release the next one does not reuse the freed address.
        let b = allocate(&mut s, &sets[..1], &[], "c2", "eth0").unwrap();
        assert_eq!(b[0].address.to_string(), "10.0.0.3/29");
        s.release_by_id("c2", "eth0").unwrap();
        let c = allocate(&mut s, &sets[..1], &[], "c3", "eth0").unwrap();
        assert_eq!(c[0].address.to_string(), "10.0.0.4/29");
    }

    #[test]
    fn exhaustion_and_requested_addresses() {
        let mut s = MemStore::default();
        let sets = vec![set("10.0.0.0/30")]; // .1 is the gateway, .2 the only address
        allocate(&mut s, &sets, &[], "c1", "eth0").unwrap();
        let e = allocate(&mut s, &sets, &[], "c2", "eth0").unwrap_err();
        assert!(e.to_string().contains("no IP addresses available"), "{e}");
        let sets = vec![set("10.1.0.0/24")];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let got = allocate(&mut s, &sets, &[ip("10.1.0.50")], "c3", "eth0").unwrap();
        assert_eq!(got[0].address.to_string(), "10.1.0.50/24");
        assert!(allocate(&mut s, &sets, &[ip("10.1.0.50")], "c4", "eth0").is_err());
        assert!(
            allocate(&mut s, &sets, &[ip("10.1.0.1")], "c4", "eth0")
                .unwrap_err()
                .to_string()
                .contains("gateway")
        );
        let e = allocate(&mut s, &sets, &[ip("10.9.0.1")], "c4", "eth0").unwrap_err();
        assert!(
            e.to_string().contains("failed to allocate all requested"),
            "{e}"
        );
        assert!(s.get_by_id("c4", "eth0").unwrap().is_empty(), "rolled back");
    }

    #[test]
    fn static_sources_and_priority() {
        let c = conf(
            json!({"type":"static","addresses":[{"address":"10.0.0.5/24","gateway":"10.0.0.1"}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.0.0.53"]}}),
        );
        let Ipam::Static(s) =
            Ipam::from_conf(&c, &args("IP=10.1.0.5/24,fd00::5/64;GATEWAY=10.1.0.254")).unwrap()
        else {
            panic!()
        };
        let r = s.result();
        let addrs: Vec<String> = r.ips.iter().map(|i| i.address.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.5/24", "10.1.0.5/24", "fd00::5/64"]);
        assert_eq!(r.ips[1].gateway, Some("10.1.0.254".parse().unwrap()));
        assert_eq!(r.dns.nameservers, vec!["10.0.0.53".to_string()]);
        let mut v = c.raw.clone();
        v.insert("runtimeConfig".into(), json!({"ips":["192.168.5.5/24"]}));
        let c2 = NetConf::from_value(Value::Object(v)).unwrap();
        let Ipam::Static(s) = Ipam::from_conf(&c2, &args("")).unwrap() else {
            panic!()
        };
        assert_eq!(s.result().ips.len(), 1);
        assert_eq!(s.result().ips[0].address.to_string(), "192.168.5.5/24");
    }

    #[test]
    fn resolv_conf() {
        let p = std::env::temp_dir().join(format!("attache-resolv-{}", std::process::id()));
        std::fs::write(&p, "# c\nnameserver 10.0.0.53\nnameserver 10.0.0.54\ndomain example.org\nsearch a.example b.example\noptions ndots:5\n").unwrap();
        let d = parse_resolv_conf(&p).unwrap();
        assert_eq!(d.nameservers.len(), 2);
        assert_eq!(d.domain, "example.org");
        assert_eq!(d.search, vec!["a.example", "b.example"]);
        assert_eq!(d.options, vec!["ndots:5"]);
        std::fs::remove_file(p).unwrap();
    }
}
