//! The node's own NICs, found by identity rather than by a name that differs from node to node.
//!
//! A network names the node interface it hangs off (`master` of macvlan / ipvlan / vlan / ipoib / sriov,
//! `device` of host-device) in one of three forms:
//! - a name, which may be an **altname** of up to 127 bytes (`ip link property add dev X altname Y`);
//! - a selector, `masterSelector` / `deviceSelector`: exactly one of `altName`, `mac` (the permanent MAC,
//!   `IFLA_PERM_ADDRESS`), `pciAddress` (with `devPort` when one PCI function carries several netdevs),
//!   `driver` (with `index`, counted in PCI address order), `physicalNetwork`;
//! - `physicalNetwork: "NAME"` (top level, or in the selector): NAME looked up in the node's map
//!   ([`PHYSNETS_FILE`], written by `attache install` from its ConfigMap) to one of the selectors above.
//!
//! [`resolve_plugin`] rewrites a plugin's configuration so that the field holds this node's primary name
//! before any plugin runs — native or exec'd alike (an exec'd reference plugin looks names up with Go's
//! `net.InterfaceByName`, which knows no altnames). Exactly one interface must match, or the ADD fails
//! with code 7 naming the node, the selector and the interfaces seen. MAC, PCI and driver selectors only
//! consider interfaces backed by a device (real hardware or virtio), never a vlan, bond or macvlan that
//! borrows a MAC. The identity found ([`Nic`]) goes into the attachment's record: DEL and CHECK use it
//! and never resolve again.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::netlink::{Link, Netlink, format_mac, parse_mac};

/// The node's physical-network map: `{"data": {"pciAddress": "0000:3b:00.0"}, ...}`.
pub const PHYSNETS_FILE: &str = "/etc/cni/net.d/attache.d/physnets.json";
/// Larger than any map of physical networks a node has.
const PHYSNETS_MAX: u64 = 1 << 20;
/// How many interfaces a refusal lists.
const LISTED: usize = 24;

/// One way of naming a node interface by identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    AltName(String),
    Mac([u8; 6]),
    Pci {
        address: String,
        dev_port: Option<u32>,
    },
    Driver {
        name: String,
        index: Option<usize>,
    },
    PhysicalNetwork(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSelector {
    alt_name: Option<String>,
    mac: Option<String>,
    pci_address: Option<String>,
    dev_port: Option<u32>,
    driver: Option<String>,
    index: Option<usize>,
    physical_network: Option<String>,
}

impl Selector {
    /// Read a selector object; `what` names it in errors (`masterSelector`, `physnets.json "data"`).
    pub fn from_value(v: &Value, what: &str) -> Result<Selector> {
        let raw: RawSelector = serde_json::from_value(v.clone()).map_err(|e| {
            Error::config(format!(
                "{what}: {e} (a selector is an object with one of altName, mac, pciAddress (+devPort), driver (+index), physicalNetwork)"
            ))
        })?;
        let given = [
            raw.alt_name.is_some(),
            raw.mac.is_some(),
            raw.pci_address.is_some(),
            raw.driver.is_some(),
            raw.physical_network.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given != 1 {
            return Err(Error::config(format!(
                "{what} must give exactly one of altName, mac, pciAddress, driver, physicalNetwork ({given} given)"
            )));
        }
        if raw.dev_port.is_some() && raw.pci_address.is_none() {
            return Err(Error::config(format!(
                "{what}: devPort goes with pciAddress"
            )));
        }
        if raw.index.is_some() && raw.driver.is_none() {
            return Err(Error::config(format!("{what}: index goes with driver")));
        }
        let s = if let Some(n) = raw.alt_name {
            check_nic_name(&n).map_err(|e| Error::config(format!("{what} altName: {e}")))?;
            Selector::AltName(n)
        } else if let Some(m) = raw.mac {
            Selector::Mac(parse_mac(&m).map_err(|e| Error::config(format!("{what} mac: {e}")))?)
        } else if let Some(a) = raw.pci_address {
            Selector::Pci {
                address: pci_address(&a)
                    .ok_or_else(|| {
                        Error::config(format!(
                            "{what} pciAddress {a:?} is not a PCI address (domain:bus:device.function, e.g. 0000:3b:00.0)"
                        ))
                    })?,
                dev_port: raw.dev_port,
            }
        } else if let Some(d) = raw.driver {
            if d.is_empty()
                || d.len() > 64
                || !d
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(Error::config(format!(
                    "{what} driver {d:?} is not a driver name"
                )));
            }
            Selector::Driver {
                name: d,
                index: raw.index,
            }
        } else {
            let n = raw.physical_network.unwrap_or_default();
            check_physnet_name(&n).map_err(|e| Error::config(format!("{what}: {e}")))?;
            Selector::PhysicalNetwork(n)
        };
        Ok(s)
    }

    /// Whether it matches only interfaces backed by a device.
    fn hardware_only(&self) -> bool {
        matches!(
            self,
            Selector::Mac(_) | Selector::Pci { .. } | Selector::Driver { .. }
        )
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::AltName(n) => write!(f, "altName {n:?}"),
            Selector::Mac(m) => write!(f, "mac {}", format_mac(m)),
            Selector::Pci { address, dev_port } => {
                write!(f, "pciAddress {address}")?;
                match dev_port {
                    Some(p) => write!(f, " devPort {p}"),
                    None => Ok(()),
                }
            }
            Selector::Driver { name, index } => {
                write!(f, "driver {name}")?;
                match index {
                    Some(i) => write!(f, " index {i}"),
                    None => Ok(()),
                }
            }
            Selector::PhysicalNetwork(n) => write!(f, "physicalNetwork {n}"),
        }
    }
}

/// A node interface as resolved: what the record keeps of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Nic {
    pub name: String,
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perm_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

impl Nic {
    /// `ens1f0 (0000:3b:00.0)`, `eth1`.
    pub fn describe(&self) -> String {
        match &self.pci_address {
            Some(p) => format!("{} ({p})", self.name),
            None => self.name.clone(),
        }
    }
}

/// One field of one plugin resolved: what the record keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    /// The plugin's index in its chain.
    pub plugin: usize,
    /// `master` or `device`.
    pub field: String,
    /// How it was named: `physicalNetwork data`, `altName "..."`, `pciAddress ...`.
    pub by: String,
    pub nic: Nic,
}

/// A node interface with what selectors look at.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub link: Link,
    /// Backed by a device (`/sys/class/net/X/device`): real hardware or virtio.
    pub hardware: bool,
    pub pci: Option<String>,
    pub driver: Option<String>,
    pub dev_port: Option<u32>,
}

impl Candidate {
    /// A link with its sysfs facts.
    pub fn of(mut link: Link) -> Candidate {
        let f = sysfs_facts(&link);
        link.parent = f.parent;
        Candidate {
            hardware: link.parent.is_some() && !is_representor(&link),
            link,
            pci: f.pci,
            driver: f.driver,
            dev_port: f.dev_port,
        }
    }

    pub fn nic(&self) -> Nic {
        Nic {
            name: self.link.name.clone(),
            index: self.link.index,
            perm_mac: self.link.perm_mac.as_deref().map(format_mac),
            pci_address: self.pci.clone(),
            driver: self.driver.clone(),
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.pci {
            parts.push(p.clone());
        }
        if let Some(m) = &self.link.perm_mac {
            parts.push(format_mac(m));
        }
        if let Some(d) = &self.driver {
            parts.push(d.clone());
        }
        if let Some(p) = self.dev_port.filter(|p| *p > 0) {
            parts.push(format!("devPort {p}"));
        }
        for a in &self.link.altnames {
            parts.push(format!("altname {a}"));
        }
        if parts.is_empty() {
            self.link.name.clone()
        } else {
            format!("{} ({})", self.link.name, parts.join(", "))
        }
    }

    fn matches(&self, s: &Selector) -> bool {
        if s.hardware_only() && !self.hardware {
            return false;
        }
        match s {
            Selector::AltName(n) => self.link.altnames.iter().any(|a| a == n),
            Selector::Mac(m) => self.link.perm_mac.as_deref() == Some(&m[..]),
            Selector::Pci { address, dev_port } => {
                self.pci.as_deref() == Some(address.as_str())
                    && dev_port.is_none_or(|p| self.dev_port.unwrap_or(0) == p)
            }
            Selector::Driver { name, .. } => self.driver.as_deref() == Some(name.as_str()),
            Selector::PhysicalNetwork(_) => false,
        }
    }
}

/// An interface name as the kernel takes it for an altname: 1..=127 bytes, not `.`/`..`, no `/`, `:`
/// or white space (`dev_valid_name`), and no control characters.
pub fn check_nic_name(name: &str) -> std::result::Result<(), String> {
    crate::cni::conf::check_link_name(name, 127)
}

/// A physical network's name: a label value's syntax (it becomes `physnet.attache.dev/NAME`).
pub fn check_physnet_name(n: &str) -> std::result::Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "physicalNetwork {n:?} is not a name (1-63 letters, digits, '-', '_', '.', starting and ending alphanumeric)"
        ))
    }
}

/// A PCI address in its full lower-case form (`3b:00.0` gets domain `0000`), or `None`.
pub fn pci_address(s: &str) -> Option<String> {
    let s = s.to_ascii_lowercase();
    let full = if s.len() == 7 { format!("0000:{s}") } else { s };
    let b = full.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    let ok = b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11]);
    ok.then_some(full)
}

/// The sysfs facts of a link: the device behind it (netlink's `IFLA_PARENT_DEV_*`, or on kernels before
/// 5.16 the `/sys/class/net/X/device` link), its PCI address — a PCI netdev's own, or a virtio netdev's
/// PCI parent's; never an ancestor's (an SF or a USB NIC is not its PF or controller) —, its driver and
/// `dev_port`. sysfs's `class/net` is the mount's namespace, which may not be the one asked about: it is
/// read only where the entry is this very link (same ifindex).
struct SysFacts {
    parent: Option<(String, String)>,
    pci: Option<String>,
    driver: Option<String>,
    dev_port: Option<u32>,
}

fn sysfs_facts(link: &Link) -> SysFacts {
    let class = Path::new("/sys/class/net").join(&link.name);
    let read = |f: &str| {
        std::fs::read_to_string(class.join(f))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let base = |p: PathBuf| p.file_name()?.to_str().map(String::from);
    let same = read("ifindex").as_deref() == Some(link.index.to_string().as_str());
    let parent = link.parent.clone().or_else(|| {
        if !same {
            return None;
        }
        let dev = std::fs::read_link(class.join("device"))
            .ok()
            .and_then(base)?;
        let bus = std::fs::read_link(class.join("device/subsystem"))
            .ok()
            .and_then(base)?;
        Some((dev, bus))
    });
    let Some((dev, bus)) = &parent else {
        return SysFacts {
            parent: None,
            pci: None,
            driver: None,
            dev_port: None,
        };
    };
    let sys = PathBuf::from(format!("/sys/bus/{bus}/devices/{dev}"));
    let pci = match bus.as_str() {
        "pci" => pci_address(dev),
        "virtio" => std::fs::canonicalize(&sys)
            .ok()
            .and_then(|p| p.parent()?.file_name()?.to_str().and_then(pci_address)),
        _ => None,
    };
    let driver = std::fs::read_link(sys.join("driver")).ok().and_then(base);
    let same_device = same
        && std::fs::read_link(class.join("device"))
            .ok()
            .and_then(base)
            .is_some_and(|n| n == *dev);
    let dev_port = if same_device {
        read("dev_port").and_then(|s| s.parse().ok())
    } else {
        None
    };
    SysFacts {
        parent,
        pci,
        driver,
        dev_port,
    }
}

/// A switchdev representor (`pf0vf1`, `c1pf0sf3`): the port of a VF or SF on the eswitch, not the device.
fn is_representor(link: &Link) -> bool {
    link.phys_port_name
        .as_deref()
        .is_some_and(|n| n.contains("vf") || n.contains("sf"))
}

/// Every interface of the namespace `nl` is in, with what selectors look at.
pub async fn candidates(nl: &Netlink) -> Result<Vec<Candidate>> {
    let mut out: Vec<Candidate> = nl.links().await?.into_iter().map(Candidate::of).collect();
    // PCI address order, then port, then name: what `driver` + `index` counts in.
    out.sort_by(|a, b| {
        (a.pci.is_none(), &a.pci, a.dev_port, &a.link.name).cmp(&(
            b.pci.is_none(),
            &b.pci,
            b.dev_port,
            &b.link.name,
        ))
    });
    Ok(out)
}

/// The node's physical-network map, read whole: a symlink, an unreadable or malformed file is code 7.
pub fn load_physnets(path: &Path) -> Result<BTreeMap<String, Selector>> {
    let bytes = crate::files::read_bounded(path, PHYSNETS_MAX).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(nix::libc::ELOOP) => "it is a symlink, which attache does not follow".to_string(),
            Some(nix::libc::ENOENT) => {
                "it does not exist (attache install writes it from its ConfigMap)".to_string()
            }
            _ => e.to_string(),
        };
        Error::config(format!(
            "the physical-network map {}: {why}",
            path.display()
        ))
    })?;
    let map: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|e| {
        Error::config(format!(
            "the physical-network map {} is not a JSON object of selectors: {e}",
            path.display()
        ))
    })?;
    let mut out = BTreeMap::new();
    for (name, v) in map {
        check_physnet_name(&name).map_err(|e| Error::config(format!("{}: {e}", path.display())))?;
        let s = Selector::from_value(&v, &format!("{} {name:?}", path.display()))?;
        if matches!(s, Selector::PhysicalNetwork(_)) {
            return Err(Error::config(format!(
                "{} {name:?}: a physical network maps to an interface selector, not to another physicalNetwork",
                path.display()
            )));
        }
        out.insert(name, s);
    }
    Ok(out)
}

/// The node's name, for messages.
fn node() -> String {
    crate::ipam::cluster::node_name(None)
        .map(|(n, _)| n)
        .unwrap_or_else(|_| "?".into())
}

/// Pick the one interface a selector names among `all`, or say why not.
pub fn select<'a>(all: &'a [Candidate], s: &Selector, what: &str) -> Result<&'a Candidate> {
    let matching: Vec<&Candidate> = all.iter().filter(|c| c.matches(s)).collect();
    let pick = match s {
        Selector::Driver { index: Some(i), .. } => matching.get(*i).copied().ok_or_else(|| {
            format!(
                "matches {} interface(s), so it has no index {i}{}",
                matching.len(),
                listed(&matching)
            )
        }),
        _ => match matching.as_slice() {
            [one] => Ok(*one),
            [] => Err("matches no interface".to_string()),
            many => Err(format!(
                "matches {} interfaces{}: it must name exactly one{}",
                many.len(),
                listed(many),
                match s {
                    Selector::Pci { .. } => " (add devPort)",
                    Selector::Driver { .. } => " (add index)",
                    _ => "",
                }
            )),
        },
    };
    pick.map_err(|why| {
        let seen: Vec<&Candidate> = all
            .iter()
            .filter(|c| !s.hardware_only() || c.hardware)
            .filter(|c| c.link.name != "lo")
            .collect();
        let seen = if seen.is_empty() {
            if s.hardware_only() {
                "; it has no interface backed by a device (real hardware or virtio): mac, pciAddress and driver match only those".to_string()
            } else {
                "; it has no interfaces".to_string()
            }
        } else {
            format!("; it has {}", described(&seen))
        };
        Error::config(format!("node {}: {what} {s} {why}{seen}", node()))
    })
}

fn listed(c: &[&Candidate]) -> String {
    let names: Vec<&str> = c
        .iter()
        .take(LISTED)
        .map(|c| c.link.name.as_str())
        .collect();
    format!(" ({})", names.join(", "))
}

fn described(c: &[&Candidate]) -> String {
    let mut s: Vec<String> = c.iter().take(LISTED).map(|c| c.describe()).collect();
    if c.len() > LISTED {
        s.push(format!("and {} more", c.len() - LISTED));
    }
    s.join(", ")
}

/// What resolving the plugins of one network shares: the node's connection and interfaces, and its
/// physical-network map — each read on first need, once.
pub struct NodeNics {
    physnets: PathBuf,
    nl: Option<Netlink>,
    all: Option<Vec<Candidate>>,
    map: Option<BTreeMap<String, Selector>>,
}

impl NodeNics {
    pub fn new(physnets: &Path) -> NodeNics {
        NodeNics {
            physnets: physnets.to_path_buf(),
            nl: None,
            all: None,
            map: None,
        }
    }

    fn nl(&mut self) -> Result<&Netlink> {
        if self.nl.is_none() {
            self.nl = Some(Netlink::connect(None)?);
        }
        Ok(self.nl.as_ref().expect("set above"))
    }

    async fn all(&mut self) -> Result<&[Candidate]> {
        if self.all.is_none() {
            let c = candidates(self.nl()?).await?;
            self.all = Some(c);
        }
        Ok(self.all.as_deref().expect("set above"))
    }

    /// The interface a selector names (a physical network through the map).
    pub async fn by_selector(&mut self, s: &Selector, what: &str) -> Result<Nic> {
        let s = match s {
            Selector::PhysicalNetwork(n) => {
                if self.map.is_none() {
                    self.map = Some(load_physnets(&self.physnets)?);
                }
                let map = self.map.as_ref().expect("set above");
                map.get(n).cloned().ok_or_else(|| {
                    Error::config(format!(
                        "node {}: physicalNetwork {n:?} is not in {} (it has: {})",
                        node(),
                        self.physnets.display(),
                        if map.is_empty() {
                            "nothing".to_string()
                        } else {
                            map.keys().cloned().collect::<Vec<_>>().join(", ")
                        }
                    ))
                })?
            }
            other => other.clone(),
        };
        let all = self.all().await?;
        Ok(select(all, &s, what)?.nic())
    }

    /// The interface a name names, when that name is an altname: `None` when it is a primary name, or
    /// names nothing (the plugin says so itself).
    pub async fn by_altname(&mut self, name: &str) -> Result<Option<Nic>> {
        let Some(link) = self.nl()?.link(name).await? else {
            return Ok(None);
        };
        if link.name == name {
            return Ok(None);
        }
        Ok(Some(Candidate::of(link).nic()))
    }
}

/// The field of a plugin type that names a node interface: `master`, or host-device's `device`.
fn field_of(plugin_type: &str) -> Option<&'static str> {
    match plugin_type {
        "macvlan" | "ipvlan" | "vlan" | "ipoib" | "sriov" => Some("master"),
        "host-device" => Some("device"),
        _ => None,
    }
}

/// Rewrite plugin `i`'s node-interface reference (see the module's doc) to this node's primary name.
/// Returns what it resolved, if anything was to resolve. Nothing is touched on the node.
pub async fn resolve_plugin(
    i: usize,
    p: &mut Map<String, Value>,
    nics: &mut NodeNics,
) -> Result<Option<Resolved>> {
    let t = p.get("type").and_then(Value::as_str).unwrap_or_default();
    let (field, sel_key) = match field_of(t) {
        Some("device") => ("device", "deviceSelector"),
        Some(_) => ("master", "masterSelector"),
        // Another type is resolved only when it asks to be.
        None if p.contains_key("deviceSelector") => ("device", "deviceSelector"),
        None if p.contains_key("masterSelector") || p.contains_key("physicalNetwork") => {
            ("master", "masterSelector")
        }
        None => return Ok(None),
    };
    let other_sel = if sel_key == "masterSelector" {
        "deviceSelector"
    } else {
        "masterSelector"
    };
    if p.contains_key(other_sel) {
        return Err(Error::config(format!(
            "{t}: {other_sel} is not a field of {t} (it names its interface with {field} / {sel_key})"
        )));
    }
    let selector = match (p.get(sel_key), p.get("physicalNetwork")) {
        (Some(_), Some(_)) => {
            return Err(Error::config(format!(
                "{t}: give {sel_key} or physicalNetwork, not both"
            )));
        }
        (Some(v), None) => Some(Selector::from_value(v, sel_key)?),
        (None, Some(Value::String(n))) => {
            check_physnet_name(n).map_err(Error::config)?;
            Some(Selector::PhysicalNetwork(n.clone()))
        }
        (None, Some(other)) => {
            return Err(Error::config(format!(
                "physicalNetwork must be a string, got {other}"
            )));
        }
        (None, None) => None,
    };
    if selector.is_some() && p.get("linkInContainer").and_then(Value::as_bool) == Some(true) {
        return Err(Error::config(format!(
            "{t}: a selector or physicalNetwork names a node interface, not one inside the pod (linkInContainer)"
        )));
    }
    // The device plugin chose the device (resourceName): the selector only said which kind.
    if field == "device" && p.get("deviceID").is_some_and(|d| d != "") {
        p.remove(sel_key);
        p.remove("physicalNetwork");
        return Ok(None);
    }
    let resolved = match selector {
        Some(s) => {
            if p.get(field).is_some_and(|v| v != "") {
                return Err(Error::config(format!(
                    "{t}: give {field} or {}, not both",
                    if p.contains_key(sel_key) {
                        sel_key
                    } else {
                        "physicalNetwork"
                    }
                )));
            }
            let what = if p.contains_key(sel_key) {
                format!("{t} {sel_key}")
            } else {
                t.to_string()
            };
            let nic = nics.by_selector(&s, &what).await?;
            Resolved {
                plugin: i,
                field: field.into(),
                by: s.to_string(),
                nic,
            }
        }
        None => {
            let Some(name) = p
                .get(field)
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            else {
                return Ok(None);
            };
            // A master in the pod's namespace is not the node's to resolve.
            if p.get("linkInContainer").and_then(Value::as_bool) == Some(true) {
                return Ok(None);
            }
            check_nic_name(name).map_err(|e| Error::config(format!("{t} {field}: {e}")))?;
            let name = name.to_string();
            match nics.by_altname(&name).await? {
                Some(nic) => Resolved {
                    plugin: i,
                    field: field.into(),
                    by: format!("altname {name:?}"),
                    nic,
                },
                None => return Ok(None),
            }
        }
    };
    tracing::debug!(
        "{t} {}: {} -> {}",
        resolved.field,
        resolved.by,
        resolved.nic.describe()
    );
    p.remove(sel_key);
    p.remove("physicalNetwork");
    p.insert(field.into(), Value::String(resolved.nic.name.clone()));
    Ok(Some(resolved))
}

/// Take the selectors out of a network's plugins without resolving them (a teardown's plan: no plugin
/// must see a key it does not know, and none needs the node's interface to tear down).
pub fn strip_selectors(plugins: &mut [Map<String, Value>]) {
    for p in plugins {
        for k in ["masterSelector", "deviceSelector", "physicalNetwork"] {
            p.remove(k);
        }
    }
}

/// CHECK of a recorded resolution: the node interface is still there under its index, name and
/// permanent MAC (a host-device's is in the pod: its driver checks it).
pub async fn check_resolved(nl: &Netlink, r: &Resolved) -> Result<()> {
    if r.field == "device" {
        return Ok(());
    }
    let link = nl.link_by_index(r.nic.index).await?;
    let same = link.as_ref().is_some_and(|l| {
        l.name == r.nic.name && l.perm_mac.as_deref().map(format_mac) == r.nic.perm_mac
    });
    if !same {
        return Err(Error::Mismatch(format!(
            "the node interface {} ({}) that {} named at ADD is gone or changed",
            r.nic.describe(),
            r.by,
            r.field
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cand(
        name: &str,
        pci: Option<&str>,
        mac: Option<[u8; 6]>,
        driver: Option<&str>,
    ) -> Candidate {
        Candidate {
            link: Link {
                index: 1,
                name: name.into(),
                kind: None,
                mtu: 1500,
                mac: vec![],
                master: None,
                link: None,
                link_netns_id: None,
                up: true,
                oper_up: true,
                promisc: false,
                allmulti: false,
                txqlen: 0,
                group: 0,
                alias: None,
                vlan_filtering: false,
                sublink: None,
                altnames: vec![format!("{name}-long-alternative-name")],
                perm_mac: mac.map(|m| m.to_vec()),
                parent: pci.map(|p| (p.to_string(), "pci".to_string())),
                phys_port_name: None,
            },
            hardware: pci.is_some(),
            pci: pci.map(String::from),
            driver: driver.map(String::from),
            dev_port: Some(0),
        }
    }

    #[test]
    fn selectors_read_one_form_each() {
        let ok = |v: Value| Selector::from_value(&v, "masterSelector").unwrap();
        assert_eq!(
            ok(json!({"pciAddress":"3B:00.1"})),
            Selector::Pci {
                address: "0000:3b:00.1".into(),
                dev_port: None
            }
        );
        assert_eq!(
            ok(json!({"driver":"virtio_net","index":1})).to_string(),
            "driver virtio_net index 1"
        );
        assert_eq!(
            ok(json!({"mac":"52:54:00:A7:7A:01"})).to_string(),
            "mac 52:54:00:a7:7a:01"
        );
        for bad in [
            json!({}),
            json!({"mac":"52:54:00:a7:7a:01","driver":"e1000"}),
            json!({"pciAddress":"0000:3b:00.9"}),
            json!({"pciAddress":"../../etc"}),
            json!({"driver":"../x"}),
            json!({"altName":"a b"}),
            json!({"altName":"x".repeat(128)}),
            json!({"devPort":1,"mac":"52:54:00:a7:7a:01"}),
            json!({"index":0,"altName":"x"}),
            json!({"physicalNetwork":"-x"}),
            json!({"colour":"red"}),
            json!("eth0"),
        ] {
            let e = Selector::from_value(&bad, "masterSelector").unwrap_err();
            assert_eq!(e.cni_code(), 7, "{bad}");
            assert!(e.to_string().contains("masterSelector"), "{bad}: {e}");
        }
    }

    #[test]
    fn exactly_one_match_or_a_message_naming_what_was_seen() {
        let all = vec![
            cand(
                "ens1f0",
                Some("0000:3b:00.0"),
                Some([2, 0, 0, 0, 0, 1]),
                Some("ice"),
            ),
            cand(
                "ens1f1",
                Some("0000:3b:00.1"),
                Some([2, 0, 0, 0, 0, 2]),
                Some("ice"),
            ),
            cand("veth0", None, None, None),
        ];
        let pick =
            |s: Selector| select(&all, &s, "macvlan masterSelector").map(|c| c.link.name.clone());
        assert_eq!(pick(Selector::Mac([2, 0, 0, 0, 0, 2])).unwrap(), "ens1f1");
        assert_eq!(
            pick(Selector::Driver {
                name: "ice".into(),
                index: Some(0)
            })
            .unwrap(),
            "ens1f0"
        );
        assert_eq!(
            pick(Selector::AltName("veth0-long-alternative-name".into())).unwrap(),
            "veth0"
        );
        let two = pick(Selector::Driver {
            name: "ice".into(),
            index: None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            two.contains("matches 2 interfaces (ens1f0, ens1f1)"),
            "{two}"
        );
        assert!(two.contains("add index"), "{two}");
        let none = pick(Selector::Pci {
            address: "0000:5e:00.0".into(),
            dev_port: None,
        })
        .unwrap_err()
        .to_string();
        assert!(none.contains("config: node "), "{none}");
        assert!(
            none.contains("pciAddress 0000:5e:00.0 matches no interface"),
            "{none}"
        );
        assert!(
            none.contains("ens1f0 (0000:3b:00.0, 02:00:00:00:00:01, ice"),
            "{none}"
        );
        // A software link is never a hardware match, and not listed as one.
        assert!(!none.contains("veth0"), "{none}");
        let out = pick(Selector::Driver {
            name: "ice".into(),
            index: Some(2),
        })
        .unwrap_err()
        .to_string();
        assert!(out.contains("no index 2"), "{out}");
    }

    #[test]
    fn names_may_be_altnames_of_127_bytes() {
        check_nic_name(&"a".repeat(127)).unwrap();
        check_nic_name("enp59s0f0np0-data-fabric-a").unwrap();
        for bad in ["", ".", "a/b", "a:b", "a b", "a\nb", &"a".repeat(128)] {
            assert!(check_nic_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(pci_address("0000:00:10.0").as_deref(), Some("0000:00:10.0"));
        assert_eq!(pci_address("00:10.0").as_deref(), Some("0000:00:10.0"));
        assert_eq!(pci_address("virtio3"), None);
    }

    #[test]
    fn the_map_is_refused_when_a_symlink_malformed_or_nested() {
        let d = crate::testutil::tempdir("physnets");
        let f = d.join("physnets.json");
        std::fs::write(
            &f,
            r#"{"data":{"pciAddress":"0000:3b:00.0"},"mgmt":{"altName":"mgmt0"}}"#,
        )
        .unwrap();
        let m = load_physnets(&f).unwrap();
        assert_eq!(m.len(), 2);
        let link = d.join("link.json");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        for (path, content, needle) in [
            (&link, None, "symlink"),
            (&f, Some("[1,2]"), "not a JSON object"),
            (
                &f,
                Some(r#"{"a":{"physicalNetwork":"b"}}"#),
                "not to another",
            ),
            (&f, Some(r#"{"a b":{"altName":"x"}}"#), "not a name"),
            (&f, Some(r#"{"a":{"mac":"zz"}}"#), "mac"),
            (&d.join("none.json"), None, "does not exist"),
        ] {
            if let Some(c) = content {
                std::fs::write(path, c).unwrap();
            }
            let e = load_physnets(path).unwrap_err();
            assert_eq!(e.cni_code(), 7);
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
