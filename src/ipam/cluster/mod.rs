//! attache-ipam: one address range shared by a whole cluster, cut into blocks that nodes claim through the
//! Kubernetes API (an `AddressBlock` object per block; creating it is the lock) and then allocate from
//! locally, in host-local's crash-safe store. The common ADD makes no API call; a node that needs a
//! block makes one write. See `docs/cluster-ipam.md` for the objects, the files and the guarantees.
//!
//! - [`block`]: the arithmetic of blocks and their names;
//! - [`local`]: the node's files (owned blocks, their stores) and the API-free paths;
//! - [`api`]: the custom resources, through the `kube` client;
//! - [`claim`]: the cold path — register the range in its pool, claim or adopt a block.

pub mod api;
pub mod block;
pub mod claim;
pub mod grant;
pub mod inspect;
pub mod local;
pub mod persist;
pub mod reconcile;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::cni::conf::{NetConf, decode};
use crate::cni::skel::CmdArgs;
use crate::cni::spec::{CniResult, Dns, IpConfig, Route};
use crate::error::{Error, Result};
use crate::ipam::host_local::range::{from_u128, to_u128};
use crate::k8s::PodRef;
use block::Layout;
use local::Local;

/// The type name, in a configuration's `ipam` and as the binary's name.
pub const TYPE: &str = "attache-ipam";
/// Where attache-ipam keeps its state unless `dataDir` says: it must survive reboots (the blocks a
/// node owns are recorded here).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/attache/ipam";
/// Files `attache install` writes for the plugin: the node's name and the kubeconfig.
pub const NODE_NAME_FILE: &str = "/etc/cni/net.d/attache.d/node-name";
pub const KUBECONFIG_FILE: &str = "/etc/cni/net.d/attache.d/attache.kubeconfig";
/// The address space of definitions that name none.
pub const DEFAULT_POOL: &str = "default";
const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(5);

/// The `ipam` object as written (Whereabouts' names where they mean the same).
#[derive(Deserialize)]
struct RawCluster {
    range: Option<String>,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    #[serde(default)]
    exclude: Vec<String>,
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
    network_name: Option<String>,
    #[serde(rename = "blockSize")]
    block_size: Option<u8>,
    node_slice_size: Option<Value>,
    #[serde(rename = "dataDir")]
    data_dir: Option<PathBuf>,
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
    kubeconfig: Option<PathBuf>,
    #[serde(rename = "apiTimeout")]
    api_timeout: Option<f64>,
    #[serde(rename = "ipRanges")]
    ip_ranges: Option<Value>,
    borrow: Option<bool>,
    sticky: Option<bool>,
    /// Set by the meta-plugin from the selection's `ipam-claim-reference`.
    #[serde(rename = "ipamClaimReference")]
    ipam_claim_reference: Option<String>,
}

/// `ip` as a number, if it is in `net` (`what` names it in the error).
fn in_net(net: &IpNet, ip: IpAddr, what: &str) -> Result<u128> {
    if ip.is_ipv4() != net.addr().is_ipv4() || !net.contains(&ip) {
        return Err(Error::config(format!(
            "ipam ({TYPE}): {what} {ip} is not in range {net}"
        )));
    }
    Ok(to_u128(ip))
}

impl RawCluster {
    /// The range, its blocks and the bounds allocations stay within; and the holes no address is
    /// handed out from (network, broadcast, gateway, excludes).
    fn layout(&self) -> Result<(Layout, Vec<(u128, u128)>)> {
        if self.ip_ranges.is_some() {
            return Err(Error::config(format!(
                "ipam ({TYPE}): ipRanges is not supported: give one range per definition"
            )));
        }
        let range = self.range.as_deref().ok_or_else(|| {
            Error::config(format!(
                "ipam ({TYPE}): range is required (like 10.20.0.0/16)"
            ))
        })?;
        let (net, start_in_range, end_in_range) = parse_range(range)?;
        let v4 = net.addr().is_ipv4();
        let max = net.max_prefix_len();
        if net.prefix_len() + 2 > max {
            return Err(Error::config(format!(
                "ipam ({TYPE}): range {net} is too small to allocate from"
            )));
        }
        let block = block_size(self.block_size, self.node_slice_size.as_ref())?.unwrap_or(if v4 {
            26
        } else {
            122
        });
        if block > max || block < 1 {
            return Err(Error::config(format!(
                "ipam ({TYPE}): blockSize {block} is not a prefix length of {}",
                if v4 { "IPv4" } else { "IPv6" }
            )));
        }
        let netw = to_u128(net.network());
        let bcast = to_u128(net.broadcast());
        let start = match self.range_start.or(start_in_range) {
            Some(ip) => in_net(&net, ip, "range_start")?,
            None => netw,
        };
        let end = match self.range_end.or(end_in_range) {
            Some(ip) => in_net(&net, ip, "range_end")?,
            None => bcast,
        };
        let mut holes = vec![(netw, netw)];
        if v4 {
            holes.push((bcast, bcast));
        }
        if let Some(g) = self.gateway {
            let g = in_net(&net, g, "gateway")?;
            holes.push((g, g));
        }
        for e in &self.exclude {
            let x: IpNet = e.trim().parse().map_err(|_| {
                Error::config(format!(
                    "ipam ({TYPE}): exclude {e:?} is not a CIDR (like 10.20.0.0/28)"
                ))
            })?;
            if x.addr().is_ipv4() != v4 {
                return Err(Error::config(format!(
                    "ipam ({TYPE}): exclude {e} is not of the range's family"
                )));
            }
            holes.push((to_u128(x.network()), to_u128(x.broadcast())));
        }
        if start > end {
            return Err(Error::config(format!(
                "ipam ({TYPE}): range_start {} is after range_end {}",
                from_u128(start, v4),
                from_u128(end, v4)
            )));
        }
        let layout = Layout {
            range: net,
            prefix: block_prefix(&net, Some(block)),
            lo: start.max(netw),
            hi: end.min(bcast),
        };
        Ok((layout, holes))
    }

    /// A requested address (at most one) inside the bounds and in no hole, and never with sticky or a
    /// claim.
    fn check_requested(
        &self,
        requested: &[IpAddr],
        layout: &Layout,
        holes: &[(u128, u128)],
    ) -> Result<()> {
        if !requested.is_empty()
            && (self.sticky == Some(true) || self.ipam_claim_reference.is_some())
        {
            return Err(Error::config(format!(
                "ipam ({TYPE}): a requested address cannot be combined with sticky or ipamClaimReference"
            )));
        }
        for ip in requested {
            let n = in_net(&layout.range, *ip, "requested address")?;
            if n < layout.lo || n > layout.hi {
                return Err(Error::config(format!(
                    "ipam ({TYPE}): requested address {ip} is outside range_start..range_end"
                )));
            }
            if holes.iter().any(|(s, e)| (*s..=*e).contains(&n)) {
                return Err(Error::config(format!(
                    "ipam ({TYPE}): requested address {ip} is excluded (gateway, exclude, network or broadcast)"
                )));
            }
        }
        if requested.len() > 1 {
            return Err(Error::config(format!(
                "ipam ({TYPE}): one range gives one address, and {} were requested",
                requested.len()
            )));
        }
        Ok(())
    }

    fn data_dir(&self) -> Result<PathBuf> {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        if !data_dir.is_absolute() {
            return Err(Error::config(format!(
                "ipam ({TYPE}): dataDir must be an absolute path, got {}",
                data_dir.display()
            )));
        }
        Ok(data_dir)
    }

    fn api_timeout(&self) -> Result<Duration> {
        match self.api_timeout {
            None => Ok(DEFAULT_API_TIMEOUT),
            Some(t) if t > 0.0 && t <= 60.0 => Ok(Duration::from_secs_f64(t)),
            Some(t) => Err(Error::config(format!(
                "ipam ({TYPE}): apiTimeout {t} must be more than 0 and at most 60 seconds"
            ))),
        }
    }
}

/// A validated attache-ipam configuration.
#[derive(Clone, Debug)]
pub struct ClusterIpam {
    /// The address space (`network_name`, else `default`): one `AddressPool` object, whose ranges
    /// never overlap.
    pub pool: String,
    /// The network (the configuration's `name`): recorded with each address, for GC.
    pub network: String,
    pub layout: Layout,
    /// Addresses never handed out: the gateway, `exclude`, the range's network (and v4 broadcast).
    pub holes: Vec<(u128, u128)>,
    pub gateway: Option<IpAddr>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    pub data_dir: PathBuf,
    /// This node (empty until [`ClusterIpam::with_node`] when the configuration names none).
    pub node: String,
    /// Where the node name came from (for errors).
    pub node_source: String,
    pub kubeconfig: Option<PathBuf>,
    pub api_timeout: Duration,
    pub requested: Vec<IpAddr>,
    pub pod: PodRef,
    /// Borrow single addresses from other nodes' blocks when the range has no free block.
    pub borrow: bool,
    /// A StatefulSet's pods keep their address across incarnations and nodes.
    pub sticky: bool,
    /// The IPAMClaim (in the pod's namespace) the address belongs to.
    pub claim: Option<String>,
}

/// A Whereabouts-style `range`: a CIDR (host bits allowed: the window then starts there) or
/// `first-last/prefix`. Returns the network and the window it implies.
fn parse_range(s: &str) -> Result<(IpNet, Option<IpAddr>, Option<IpAddr>)> {
    let bad = || {
        Error::config(format!(
            "ipam ({TYPE}): range {s:?} is neither a CIDR (10.20.0.0/16) nor first-last/prefix (10.20.0.10-10.20.0.99/24)"
        ))
    };
    let (addr, prefix) = s.trim().rsplit_once('/').ok_or_else(bad)?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let (first, last) = match addr.split_once('-') {
        Some((a, b)) => (
            a.trim().parse::<IpAddr>().map_err(|_| bad())?,
            Some(b.trim().parse::<IpAddr>().map_err(|_| bad())?),
        ),
        None => (addr.trim().parse::<IpAddr>().map_err(|_| bad())?, None),
    };
    let net = IpNet::new(first, prefix).map_err(|_| bad())?.trunc();
    let start = (first != net.network()).then_some(first);
    Ok((net, start, last))
}

/// The block size a configuration asks for: `blockSize`, or Whereabouts' `node_slice_size` (`"/26"`);
/// both and different is refused.
fn block_size(block_size: Option<u8>, node_slice_size: Option<&Value>) -> Result<Option<u8>> {
    let Some(v) = node_slice_size else {
        return Ok(block_size);
    };
    let s = match v {
        Value::String(s) => s.trim_start_matches('/').to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let n: u8 = s.parse().map_err(|_| {
        Error::config(format!(
            "ipam ({TYPE}): node_slice_size {v} is not a prefix length (like \"/26\")"
        ))
    })?;
    if block_size.is_some_and(|b| b != n) {
        return Err(Error::config(format!(
            "ipam ({TYPE}): blockSize {} and node_slice_size {v} disagree",
            block_size.unwrap_or_default()
        )));
    }
    Ok(Some(n))
}

/// The prefix of `net`'s blocks for a requested size (default 26 / 122): a range smaller than one block
/// is one block, and no block is smaller than an address.
fn block_prefix(net: &IpNet, requested: Option<u8>) -> u8 {
    let v4 = net.addr().is_ipv4();
    requested
        .unwrap_or(if v4 { 26 } else { 122 })
        .max(net.prefix_len())
        .min(net.max_prefix_len())
}

/// The address space's name: a DNS label of at most 40 characters (it prefixes block names).
pub(crate) fn validate_pool(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "ipam ({TYPE}): network_name {name:?} must be a DNS label of at most 40 characters (lower-case letters, digits, '-')"
        )))
    }
}

/// A node name as Kubernetes has them: a DNS subdomain.
pub(crate) fn validate_node(name: &str, source: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .split('.')
            .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "ipam ({TYPE}): node name {name:?} (from {source}) is not a Kubernetes node name"
        )))
    }
}

/// The node: `nodeName` in the configuration, else the file `attache install` writes, else the host
/// name.
pub(crate) fn node_name(conf: Option<String>) -> Result<(String, String)> {
    if let Some(n) = conf {
        return Ok((n, "the ipam configuration's nodeName".into()));
    }
    let file = std::env::var_os("ATTACHE_NODE_NAME_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(NODE_NAME_FILE));
    if let Ok(b) = crate::files::read_bounded(&file, 1024) {
        let n = String::from_utf8_lossy(&b).trim().to_string();
        if !n.is_empty() {
            return Ok((n, file.display().to_string()));
        }
    }
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| Error::io("reading the host name", e))?;
    Ok((h.trim().to_lowercase(), "the host name".into()))
}

impl ClusterIpam {
    /// Validate the `ipam` section for ADD and CHECK: nothing is touched before this passes.
    pub fn from_conf(conf: &NetConf, args: &CmdArgs, section: Value) -> Result<ClusterIpam> {
        let raw: RawCluster = decode(&format!("ipam ({TYPE})"), section)?;
        let (layout, holes) = raw.layout()?;
        let pool = raw
            .network_name
            .clone()
            .unwrap_or_else(|| DEFAULT_POOL.into());
        validate_pool(&pool)?;
        // A node name the configuration gives is checked now; the fallbacks (a file, the host name)
        // are read only by the paths that need the node, off the warm ADD ([`ClusterIpam::with_node`]).
        let (node, node_source) = match raw.node_name.clone() {
            Some(n) => {
                let (n, source) = node_name(Some(n))?;
                validate_node(&n, &source)?;
                (n, source)
            }
            None => (String::new(), String::new()),
        };
        let data_dir = raw.data_dir()?;
        let api_timeout = raw.api_timeout()?;
        let requested = crate::ipam::conf::requested(conf, args)?;
        raw.check_requested(&requested, &layout, &holes)?;
        Ok(ClusterIpam {
            network: conf.name.clone(),
            pool,
            layout,
            holes,
            data_dir,
            api_timeout,
            node,
            node_source,
            requested,
            pod: PodRef::of(args),
            gateway: raw.gateway,
            routes: raw.routes,
            dns: raw.dns,
            kubeconfig: raw.kubeconfig,
            borrow: raw.borrow.unwrap_or(true),
            sticky: raw.sticky.unwrap_or(false),
            claim: raw.ipam_claim_reference.filter(|c| !c.is_empty()),
        })
    }

    /// This configuration with its node known (resolved from the fallbacks if the configuration named
    /// none): what the cold paths start with.
    pub fn with_node(&self) -> Result<std::borrow::Cow<'_, ClusterIpam>> {
        if !self.node.is_empty() {
            return Ok(std::borrow::Cow::Borrowed(self));
        }
        let (node, source) = node_name(None)?;
        validate_node(&node, &source)?;
        Ok(std::borrow::Cow::Owned(ClusterIpam {
            node,
            node_source: source,
            ..self.clone()
        }))
    }

    fn local(&self) -> Local {
        Local::new(&self.data_dir, &self.pool)
    }

    fn result(&self, ip: IpAddr) -> CniResult {
        CniResult {
            interfaces: vec![],
            ips: vec![IpConfig {
                interface: None,
                address: IpNet::new(ip, self.layout.range.prefix_len()).expect("prefix checked"),
                gateway: self.gateway,
            }],
            routes: self.routes.clone(),
            dns: self.dns.clone(),
        }
    }

    /// ADD: from a block this node owns (no API call), else after claiming one.
    pub async fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let local = self.local();
        if (self.sticky || self.claim.is_some())
            && let Some(ip) = persist::add(self, &local, &args.container_id, &args.ifname).await?
        {
            return Ok(self.result(ip));
        }
        if let Some(ip) = local.allocate(self, &args.container_id, &args.ifname)? {
            return Ok(self.result(ip));
        }
        // Cold: one claim at a time per node and pool; another ADD may have claimed meanwhile.
        let _claiming = local.claim_lock(self.api_timeout * 3)?;
        if let Some(ip) = local.allocate(self, &args.container_id, &args.ifname)? {
            return Ok(self.result(ip));
        }
        // A claim adopts the blocks this node lost track of (which may be full) or creates one.
        for _ in 0..4 {
            if let claim::Claimed::Borrowed(ip) =
                claim::claim(self, &local, &args.container_id, &args.ifname).await?
            {
                return Ok(self.result(ip));
            }
            if let Some(ip) = local.allocate(self, &args.container_id, &args.ifname)? {
                return Ok(self.result(ip));
            }
        }
        Err(Error::Internal(format!(
            "{TYPE}: blocks of pool {} were claimed and had no free address",
            self.pool
        )))
    }

    pub fn check(&self, args: &CmdArgs) -> Result<()> {
        let held = self
            .local()
            .held(&args.container_id, &args.ifname, Some(&self.layout))?;
        if held.is_empty() {
            return Err(Error::Ipam(format!(
                "{TYPE}: no address is held for container {} interface {} in pool {} range {}",
                args.container_id, args.ifname, self.pool, self.layout.range
            )));
        }
        Ok(())
    }
}

/// What DEL and GC need, read leniently: the pool's folder (and the layout, when it can be read, to go
/// straight to the block of an address `prevResult` names).
#[derive(Clone, Debug)]
pub struct Teardown {
    pub local: Local,
    pub layout: Option<Layout>,
    pub network: String,
}

impl Teardown {
    pub fn of(c: &ClusterIpam) -> Teardown {
        Teardown {
            local: c.local(),
            layout: Some(c.layout.clone()),
            network: c.network.clone(),
        }
    }

    pub fn from_section(network: &str, section: &Map<String, Value>) -> Option<Teardown> {
        let data_dir = match section.get("dataDir") {
            None | Some(Value::Null) => PathBuf::from(DEFAULT_DATA_DIR),
            Some(Value::String(d)) if Path::new(d).is_absolute() => PathBuf::from(d),
            Some(other) => {
                tracing::warn!(
                    "{TYPE}: dataDir {other} is not an absolute path: nothing to release"
                );
                return None;
            }
        };
        let pool = match section.get("network_name") {
            None | Some(Value::Null) => DEFAULT_POOL.to_string(),
            Some(Value::String(s)) if validate_pool(s).is_ok() => s.clone(),
            Some(other) => {
                tracing::warn!("{TYPE}: network_name {other} names no pool: nothing to release");
                return None;
            }
        };
        let layout = section
            .get("range")
            .and_then(Value::as_str)
            .and_then(|r| parse_range(r).ok())
            .map(|(net, _, _)| {
                let given = section
                    .get("blockSize")
                    .and_then(Value::as_u64)
                    .and_then(|b| u8::try_from(b).ok());
                let block = block_size(given, section.get("node_slice_size"))
                    .ok()
                    .flatten();
                Layout {
                    range: net,
                    prefix: block_prefix(&net, block),
                    lo: to_u128(net.network()),
                    hi: to_u128(net.broadcast()),
                }
            });
        Some(Teardown {
            local: Local::new(&data_dir, &pool),
            layout,
            network: network.to_string(),
        })
    }

    /// DEL: release what `(id, ifname)` holds in the pool, never touching the API. `named` (the
    /// addresses `prevResult` names) leads straight to their blocks; without them every block is asked.
    pub fn del(&self, id: &str, ifname: &str, named: &[IpAddr]) -> Result<Vec<IpAddr>> {
        self.local.release(id, ifname, named, self.layout.as_ref())
    }

    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<IpAddr>> {
        self.local.gc(&self.network, valid)
    }

    pub fn held(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        self.local.held(id, ifname, None)
    }
}

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
