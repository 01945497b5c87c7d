//! The `ipam` object of a configuration, read into the typed forms: host-local's range sets, requested
//! addresses (`CNI_ARGS IP=`, `args.cni.ips`, `runtimeConfig.ips`), `resolvConf`; static's addresses;
//! and the lenient reading DEL and GC make of both. No I/O but reading a `resolvConf`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::DEFAULT_DATA_DIR;
use super::host_local::HostLocal;
use super::host_local::range::{RangeSet, RawRange};
use super::static_ip::Static;
use crate::cni::conf::{NetConf, decode};
use crate::cni::skel::CmdArgs;
use crate::cni::spec::{Dns, IpConfig, Route};
use crate::error::{Error, Result};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawHostLocal {
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
pub(super) struct RawStatic {
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

/// The range sets in the order the reference numbers them (`last_reserved_ip.<index>`): runtime-provided
/// ranges (the `ipRanges` capability) first, then the legacy single range, then `ranges`.
fn range_sets(conf: &NetConf, raw: &RawHostLocal) -> Result<Vec<RangeSet>> {
    let mut sets: Vec<Vec<RawRange>> = Vec::new();
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
    sets.extend(raw.ranges.clone().unwrap_or_default());
    if sets.is_empty() {
        return Err(Error::config("ipam (host-local): no IP ranges specified"));
    }
    let range_sets = sets
        .iter()
        .enumerate()
        .map(|(i, s)| RangeSet::from_raw(s).map_err(|e| e.context(format!("ipam range set {i}"))))
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
    Ok(range_sets)
}

/// The addresses asked for: `CNI_ARGS IP=`, then `args.cni.ips`, then `runtimeConfig.ips`.
pub(super) fn requested(conf: &NetConf, args: &CmdArgs) -> Result<Vec<IpAddr>> {
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
    Ok(requested)
}

/// Validate a host-local section for ADD and CHECK.
pub(super) fn host_local(conf: &NetConf, args: &CmdArgs, section: Value) -> Result<HostLocal> {
    let raw: RawHostLocal = decode("ipam (host-local)", section)?;
    let network = conf.require_name()?.to_string();
    let range_sets = range_sets(conf, &raw)?;
    let requested = requested(conf, args)?;
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

/// What DEL and GC need of a host-local section, read leniently: the network name and `dataDir`, and the
/// range sets when they can be read (DEL's release by the addresses `prevResult` names uses them to
/// know it has seen every set; without them it searches). `None`: nothing can be held.
pub(super) fn host_local_for_teardown(
    conf: &NetConf,
    section: &Map<String, Value>,
) -> Option<HostLocal> {
    let data_dir = match section.get("dataDir") {
        None | Some(Value::Null) => PathBuf::from(DEFAULT_DATA_DIR),
        Some(Value::String(d)) if Path::new(d).is_absolute() => PathBuf::from(d),
        Some(other) => {
            tracing::warn!(
                "ipam dataDir {other} is not an absolute path: no address was ever reserved there"
            );
            return None;
        }
    };
    if crate::cni::conf::validate_network_name(&conf.name).is_err() {
        tracing::warn!("no usable network name: host-local holds nothing for it");
        return None;
    }
    let range_sets = decode::<RawHostLocal>("ipam (host-local)", Value::Object(section.clone()))
        .and_then(|raw| range_sets(conf, &raw))
        .unwrap_or_default();
    Some(HostLocal {
        network: conf.name.clone(),
        data_dir,
        range_sets,
        requested: vec![],
        routes: vec![],
        dns: Dns::default(),
    })
}

/// Validate a static section for ADD and CHECK.
pub(super) fn static_ip(conf: &NetConf, args: &CmdArgs, section: Value) -> Result<Static> {
    let raw: RawStatic = decode("ipam (static)", section)?;
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
                let gw: IpAddr = g
                    .trim()
                    .parse()
                    .map_err(|_| Error::config(format!("GATEWAY {g:?} is not an IP address")))?;
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

/// What DEL needs of a static section: the addresses it can parse (for address-keyed state such as
/// masquerading); what cannot be parsed was never configured.
pub(super) fn static_for_teardown(section: &Map<String, Value>, args: &CmdArgs) -> Static {
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
    Static {
        addresses,
        routes: vec![],
        dns: Dns::default(),
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
    use super::super::Ipam;
    use super::*;
    use serde_json::json;

    fn args(cni_args: &str) -> CmdArgs {
        crate::testutil::cmd_args(cni_args)
    }

    fn conf(ipam: Value) -> NetConf {
        NetConf::from_value(json!({"cniVersion":"1.0.0","name":"n","type":"bridge","ipam": ipam}))
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
        let Ipam::HostLocal(h) = Ipam::from_conf(
            &conf(
                json!({"type":"host-local","subnet":"10.0.0.0/24","ranges":[[{"subnet":"fd00::/64"}]],
                "routes":[{"dst":"0.0.0.0/0"}]}),
            ),
            &args("IP=10.0.0.7"),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(h.range_sets.len(), 2);
        assert!(h.range_sets[0].is_v4());
        assert_eq!(h.requested, vec!["10.0.0.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(h.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn teardown_reads_ranges_leniently() {
        let td = |ipam: Value| match crate::ipam::IpamRelease::of(&conf(ipam), &args("")) {
            crate::ipam::IpamRelease::HostLocal(h) => h,
            other => panic!("{other:?}"),
        };
        let h = td(json!({"type":"host-local","subnet":"10.0.0.0/24","dataDir":"/x"}));
        assert_eq!(h.range_sets.len(), 1);
        assert_eq!(h.data_dir, PathBuf::from("/x"));
        // Ranges ADD would refuse: DEL still runs, without them.
        let h = td(json!({"type":"host-local","subnet":"10.0.0.5/24","routes":"bad"}));
        assert!(h.range_sets.is_empty());
        assert_eq!(h.network, "n");
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
