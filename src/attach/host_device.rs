//! The host-device driver: a whole node interface handed to the pod, and given back.
//!
//! The reference plugin's fields — one of `device` (a name or altname), `hwaddr`, `kernelpath`,
//! `pciBusID`, or the runtime's `deviceID` (a PCI address, or an auxiliary-bus device) — plus the
//! selectors every node-interface field takes (`deviceSelector`, `physicalNetwork`: resolved to `device`
//! before this runs, see [`super::nic`]), `mtu`, `ipam` and `dns`.
//!
//! ADD: find the device → record its identity (name, ifindex, permanent MAC, PCI address) in a state
//! file *before* anything moves → addresses → move it into the pod under `CNI_IFNAME` (one request: the
//! kernel closes it, moves it and names it) → MTU, sysctls, addresses, up, routes. A device bound to
//! vfio-pci or a uio driver has no netdev ("DPDK mode", as in the reference): nothing moves, the result
//! names the device.
//!
//! DEL gives the device back under its original name, always, from the state file — never from ifalias,
//! which the reference uses and loses when the pod renames the link:
//! - with the pod's netns alive, the device moves back and is renamed in the same request;
//! - with the netns gone, the kernel has already put it back on the node under its pod-side name
//!   (`net1`): DEL finds it by PCI address or permanent MAC and renames it;
//! - a second DEL finds no state file and does nothing.
//!
//! A later ADD that finds a device stranded under a pod-side name (its pod's netns died and no DEL has
//! run yet) names it back first, so neither the name nor the record goes wrong.
//!
//! The state lives in `/run/cni/attache-host-device` (`dataDir`): a reboot empties it, as it puts every
//! device back under its own name.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::driver::{Driver, NativeType};
use super::iface::{Dad, IfaceOpts, bring_up, check_iface};
use super::nic::{Candidate, Nic, candidates, check_nic_name, pci_address};
use super::undo::Undo;
use super::{AddCtx, PodNs, pod_netns, sandbox};
use crate::cni::conf::{NetConf, decode};
use crate::cni::skel::CmdArgs;
use crate::cni::spec::{CniResult, Dns, Interface};
use crate::error::{Error, Result};
use crate::ipam::{Ipam, IpamRelease};
use crate::netlink::{Link, Netlink, format_mac, is_exists, parse_mac};
use crate::netns::NetNs;

/// Where the identities of handed-over devices are kept (a boot empties it).
pub const DEFAULT_DATA_DIR: &str = "/run/cni/attache-host-device";
/// Drivers that take a device away from the kernel's network stack: "DPDK mode".
const USERSPACE_DRIVERS: &[&str] = &["vfio-pci", "uio_pci_generic", "igb_uio"];

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Raw {
    device: Option<String>,
    hwaddr: Option<String>,
    kernelpath: Option<String>,
    #[serde(rename = "pciBusID")]
    pci_bus_id: Option<String>,
    #[serde(rename = "deviceID")]
    device_id: Option<String>,
    runtime_config: Option<RawRuntime>,
    mtu: Option<i64>,
    data_dir: Option<String>,
    dns: Option<Dns>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawRuntime {
    #[serde(rename = "deviceID")]
    device_id: Option<String>,
}

/// How the configuration names the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Locate {
    /// `device`: a name or altname.
    Name(String),
    /// `hwaddr`: the device's current MAC.
    HwAddr([u8; 6]),
    /// `kernelpath`: its path under `/sys/devices`.
    KernelPath(PathBuf),
    /// `pciBusID`, or a `deviceID` that is a PCI address.
    Pci(String),
    /// A `deviceID` on the auxiliary bus (`mlx5_core.sf.4`).
    Auxiliary(String),
    /// `deviceSelector` / `physicalNetwork`, left as they are: CHECK and DEL go by the state file, and
    /// an ADD has them resolved to `device` first ([`super::nic`]).
    Selector,
}

/// A validated host-device configuration.
#[derive(Debug)]
pub struct HostDeviceConf {
    pub locate: Locate,
    pub mtu: Option<u32>,
    pub data_dir: PathBuf,
    pub dns: Option<Dns>,
    pub ipam: Ipam,
}

/// What a handed-over device was on the node: the state file of one attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handed {
    pub container_id: String,
    pub ifname: String,
    /// The device as it was on the node (its name there is what DEL gives it back under).
    pub nic: Nic,
    /// `IFLA_PARENT_DEV_NAME`: which of a PCI function's netdevs (with `devPort`) it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_port: Option<u32>,
    /// Whether it was up on the node: DEL brings it up again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub up: bool,
    /// Its MAC at ADD (with `kind`, what identifies a software link in the pod).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// A software link's kind (`veth`, ...): `None` for a device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its MTU on the node: DEL puts it back when the configuration changed it.
    #[serde(default)]
    pub mtu: u32,
    /// A userspace-driver device: nothing was moved.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dpdk: bool,
}

impl Handed {
    /// Whether it is backed by a device (PCI address or permanent MAC): only such a one comes back to
    /// the node when a netns dies; a software link is destroyed with it.
    fn is_device(&self) -> bool {
        self.nic.pci_address.is_some() || self.nic.perm_mac.is_some()
    }

    /// Whether `c` is this device: by PCI address (and port where sysfs says it: a PCI function may
    /// carry several netdevs), and permanent MAC wherever both sides have one; a software link (a veth
    /// standing in for a NIC) by kind and MAC, which only the pod it was handed to is asked about.
    fn is(&self, c: &Candidate) -> bool {
        let perm = c.link.perm_mac.as_deref().map(format_mac);
        if !self.is_device() {
            return c.link.parent.is_none()
                && c.link.kind == self.kind
                && !self.mac.is_empty()
                && format_mac(&c.link.mac) == self.mac;
        }
        let pci_ok = match &self.nic.pci_address {
            Some(pci) => {
                c.pci.as_deref() == Some(pci.as_str())
                    && match (self.dev_port, c.dev_port) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }
            }
            None => true,
        };
        let mac_ok = match (&self.nic.perm_mac, &perm) {
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => self.nic.pci_address.is_some(),
            (None, _) => true,
        };
        pci_ok && mac_ok
    }

    /// The state names what it should: this attachment, a name the kernel takes.
    fn valid_for(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id
            && self.ifname == ifname
            && (self.dpdk || crate::cni::conf::check_ifname(&self.nic.name).is_ok())
    }
}

fn state_file(dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    dir.join(format!(
        "{:016x}.json",
        crate::files::fnv1a(&[container_id, ifname])
    ))
}

/// The state folder: a real directory of root's that nobody else may write (its files decide which node
/// devices get renamed).
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    crate::files::ensure_real_dir(dir)?;
    let md = std::fs::metadata(dir)
        .map_err(|e| Error::io(format!("inspecting {}", dir.display()), e))?;
    if md.uid() != nix::unistd::geteuid().as_raw() || md.mode() & 0o022 != 0 {
        if md.uid() == nix::unistd::geteuid().as_raw() {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(format!("securing {}", dir.display()), e))?;
        } else {
            return Err(Error::config(format!(
                "host-device dataDir {} belongs to another user: attache keeps no state there",
                dir.display()
            )));
        }
    }
    Ok(())
}

fn write_state(dir: &Path, h: &Handed) -> Result<()> {
    private_dir(dir)?;
    let path = state_file(dir, &h.container_id, &h.ifname);
    let bytes = serde_json::to_vec_pretty(h).map_err(|e| Error::Internal(e.to_string()))?;
    crate::fail::point("host_device.state")?;
    crate::files::replace(&path, &bytes, 0o600, true)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn read_state(path: &Path) -> Result<Option<Handed>> {
    match crate::files::read_bounded(path, 64 * 1024) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::io(
                format!("reading {}", path.display()),
                std::io::Error::other(e),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

fn remove_state(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// Every state file in `dir` (the devices handed to pods from this node), if the folder is attache's
/// own; unreadable ones are skipped.
fn all_states(dir: &Path) -> Vec<Handed> {
    use std::os::unix::fs::MetadataExt;
    let ours = std::fs::symlink_metadata(dir).is_ok_and(|m| {
        m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o022 == 0
    });
    let Ok(rd) = std::fs::read_dir(dir)
        .map_err(drop)
        .and_then(|rd| ours.then_some(rd).ok_or(()))
    else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| read_state(&e.path()).ok().flatten())
        .filter(|h| h.valid_for(&h.container_id, &h.ifname))
        .collect()
}

fn data_dir_of(conf: &NetConf) -> PathBuf {
    conf.raw
        .get("dataDir")
        .and_then(Value::as_str)
        .filter(|d| d.starts_with('/') && !d.split('/').any(|c| c == ".."))
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_DATA_DIR.into())
}

impl Driver for HostDeviceConf {
    fn parse(_: NativeType, args: &CmdArgs, conf: &NetConf) -> Result<HostDeviceConf> {
        let raw: Raw = decode("host-device", Value::Object(conf.raw.clone()))?;
        conf.require_name()?;
        let runtime_id = raw
            .runtime_config
            .and_then(|r| r.device_id)
            .or(raw.device_id)
            .filter(|d| !d.is_empty());
        let named: Vec<Locate> = [
            raw.device
                .filter(|d| !d.is_empty())
                .map(|d| {
                    check_nic_name(&d)
                        .map_err(|e| Error::config(format!("host-device device: {e}")))?;
                    Ok(Locate::Name(d))
                })
                .transpose()?,
            raw.hwaddr
                .filter(|d| !d.is_empty())
                .map(|m| {
                    parse_mac(&m)
                        .map(Locate::HwAddr)
                        .map_err(|e| Error::config(format!("host-device hwaddr: {e}")))
                })
                .transpose()?,
            raw.kernelpath
                .filter(|d| !d.is_empty())
                .map(|p| {
                    let ok = p.starts_with("/sys/devices/")
                        && !p.split('/').any(|c| c == ".." || c == ".");
                    if ok {
                        Ok(Locate::KernelPath(PathBuf::from(p)))
                    } else {
                        Err(Error::config(format!(
                            "host-device kernelpath {p:?} is not a path under /sys/devices"
                        )))
                    }
                })
                .transpose()?,
            raw.pci_bus_id
                .filter(|d| !d.is_empty())
                .map(|a| {
                    pci_address(&a).map(Locate::Pci).ok_or_else(|| {
                        Error::config(format!("host-device pciBusID {a:?} is not a PCI address"))
                    })
                })
                .transpose()?,
        ]
        .into_iter()
        .flatten()
        .collect();
        let selector =
            conf.raw.contains_key("deviceSelector") || conf.raw.contains_key("physicalNetwork");
        let locate = match (named.len(), runtime_id) {
            (0, None) if selector => Locate::Selector,
            // The device plugin's choice names the device (the conf's own fields are for pods without one).
            (_, Some(id)) => match pci_address(&id) {
                Some(a) => Locate::Pci(a),
                None if !id.is_empty()
                    && id.len() <= 128
                    && id.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')
                    }) =>
                {
                    Locate::Auxiliary(id)
                }
                None => {
                    return Err(Error::config(format!(
                        "host-device deviceID {id:?} is neither a PCI address nor an auxiliary device"
                    )));
                }
            },
            (1, None) => named.into_iter().next().expect("one"),
            (_, None) => {
                return Err(Error::config(
                    "specify either \"device\", \"hwaddr\", \"kernelpath\" or \"pciBusID\"",
                ));
            }
        };
        let mtu = match raw.mtu {
            None | Some(0) => None,
            Some(m) if (68..=65535).contains(&m) => Some(m as u32),
            Some(m) => {
                return Err(Error::config(format!(
                    "mtu {m} is out of range: it must be 68 to 65535"
                )));
            }
        };
        let data_dir = match raw.data_dir {
            Some(d) if !d.starts_with('/') || d.split('/').any(|c| c == "..") => {
                return Err(Error::config(format!(
                    "host-device dataDir {d:?} must be an absolute path"
                )));
            }
            Some(d) => PathBuf::from(d),
            None => DEFAULT_DATA_DIR.into(),
        };
        Ok(HostDeviceConf {
            locate,
            mtu,
            data_dir,
            dns: raw.dns.filter(|d| !d.is_empty()),
            ipam: Ipam::from_conf(conf, args)?,
        })
    }

    async fn add(
        &self,
        args: &CmdArgs,
        conf: &NetConf,
        pod: &PodNs,
        link_group: Option<u32>,
    ) -> Result<CniResult> {
        let node = Netlink::connect(None)?;
        let pod_nl = pod.netlink().await?;
        // Everything that can refuse the ADD before anything on the node changes (a stranded device is
        // named back in `find`).
        if pod_nl.link(&args.ifname).await?.is_some() {
            return Err(Error::Conflict(format!(
                "an interface named {} already exists in the pod",
                args.ifname
            )));
        }
        let found = self.find(&node).await?;
        let handed = match &found {
            Found::Netdev(c) => Handed {
                container_id: args.container_id.clone(),
                ifname: args.ifname.clone(),
                nic: c.nic(),
                parent: c.link.parent.as_ref().map(|p| p.0.clone()),
                dev_port: c.dev_port,
                up: c.link.up,
                mac: format_mac(&c.link.mac),
                kind: c.link.kind.clone().filter(|_| c.link.parent.is_none()),
                mtu: c.link.mtu,
                dpdk: false,
            },
            Found::Userspace { pci, driver } => Handed {
                container_id: args.container_id.clone(),
                ifname: args.ifname.clone(),
                nic: Nic {
                    name: String::new(),
                    index: 0,
                    perm_mac: None,
                    pci_address: Some(pci.clone()),
                    driver: Some(driver.clone()),
                },
                parent: Some(pci.clone()),
                dev_port: None,
                up: false,
                mac: String::new(),
                kind: None,
                mtu: 0,
                dpdk: true,
            },
        };
        let upper = match &found {
            Found::Netdev(c) => c.link.clone(),
            Found::Userspace { .. } => node_placeholder(),
        };
        let ctx = AddCtx {
            args,
            conf,
            driver: self,
            link_group,
            pod,
            node: &node,
            pod_nl: &pod_nl,
            upper: &upper,
            undo: std::cell::RefCell::new(Vec::new()),
        };
        let state = state_file(&self.data_dir, &args.container_id, &args.ifname);
        let r = ctx.undone_on_failure(&self.ipam, ctx.run(&handed)).await;
        if r.is_err() {
            // The state goes only once the device is back on the node: else the runtime's DEL needs it.
            let back = handed.dpdk
                || candidates(&node)
                    .await
                    .is_ok_and(|all| all.iter().any(|c| handed.is(c)) || !handed.is_device());
            if back {
                let _ = remove_state(&state);
            } else {
                tracing::error!(
                    "host-device: {} is not back on the node after the failed ADD: its state stays for DEL",
                    handed.nic.describe()
                );
            }
        }
        r
    }

    async fn check(&self, args: &CmdArgs, conf: &NetConf, prev: &CniResult) -> Result<()> {
        self.ipam.check(args, conf).await?;
        let state = state_file(&self.data_dir, &args.container_id, &args.ifname);
        let handed = read_state(&state)?.ok_or_else(|| {
            Error::Mismatch(format!(
                "host-device has no record of {} (DEL ran, or ADD never did)",
                args.ifname
            ))
        })?;
        if handed.dpdk {
            let pci = handed.nic.pci_address.clone().unwrap_or_default();
            let driver = pci_driver(&pci);
            if !driver
                .as_deref()
                .is_some_and(|d| USERSPACE_DRIVERS.contains(&d))
            {
                return Err(Error::Mismatch(format!(
                    "{pci} is no longer bound to a userspace driver ({})",
                    driver.as_deref().unwrap_or("none")
                )));
            }
            return Ok(());
        }
        let pod = pod_netns(args)?;
        let pod_nl = Netlink::connect(Some(&pod))?;
        let here = candidates(&pod_nl).await?;
        let c = here
            .iter()
            .find(|c| c.link.name == args.ifname)
            .ok_or_else(|| Error::Mismatch(format!("{} is missing from the pod", args.ifname)))?;
        if !handed.is(c) {
            return Err(Error::Mismatch(format!(
                "{} in the pod is not the device handed to it ({})",
                args.ifname,
                handed.nic.describe()
            )));
        }
        if let Some(m) = self.mtu
            && c.link.mtu != m
        {
            return Err(Error::Mismatch(format!(
                "{} has mtu {}, not {m}",
                args.ifname, c.link.mtu
            )));
        }
        check_iface(&pod_nl, &args.ifname, c.link.index, prev, 0).await
    }

    async fn del(args: &CmdArgs, conf: &NetConf) -> Result<()> {
        let dir = data_dir_of(conf);
        let state = state_file(&dir, &args.container_id, &args.ifname);
        let recorded = match read_state(&state) {
            Ok(Some(h)) if h.valid_for(&args.container_id, &args.ifname) => Some(h),
            Ok(Some(_)) => {
                tracing::warn!(
                    "host-device: {} names another attachment: ignored",
                    state.display()
                );
                None
            }
            Ok(None) => None,
            // A DEL that fails for ever strands the pod: an unreadable state is set aside.
            Err(e) => {
                tracing::warn!("host-device: {e}: ignored");
                let _ = std::fs::rename(&state, state.with_extension("unreadable"));
                None
            }
        };
        match recorded {
            Some(h) if !h.dpdk => {
                let pod = args.netns.as_deref().and_then(|p| NetNs::open(p).ok());
                give_back(pod.as_ref(), &args.ifname, &h).await?
            }
            Some(_) => {}
            None => give_back_unrecorded(args).await?,
        }
        IpamRelease::of(conf, args).del(args, conf).await?;
        // A killed ADD's half-written state goes too.
        crate::files::remove_dead_temporaries(&state);
        remove_state(&state)
    }
}

/// What the configuration names, found on the node.
enum Found {
    Netdev(Box<Candidate>),
    /// A PCI device bound to a userspace driver: no netdev.
    Userspace {
        pci: String,
        driver: String,
    },
}

/// The driver a PCI device is bound to.
fn pci_driver(pci: &str) -> Option<String> {
    std::fs::read_link(format!("/sys/bus/pci/devices/{pci}/driver"))
        .ok()
        .and_then(|p| p.file_name()?.to_str().map(String::from))
}

/// The link an [`AddCtx`] wants for a device that has none.
fn node_placeholder() -> Link {
    Link {
        index: 0,
        name: String::new(),
        kind: None,
        mtu: 0,
        mac: vec![],
        master: None,
        link: None,
        link_netns_id: None,
        up: false,
        oper_up: false,
        promisc: false,
        allmulti: false,
        txqlen: 0,
        group: 0,
        alias: None,
        vlan_filtering: false,
        sublink: None,
        altnames: vec![],
        perm_mac: None,
        parent: None,
        phys_port_name: None,
    }
}

impl HostDeviceConf {
    /// Find the device on the node. A device stranded under a pod-side name (its pod's netns died
    /// before DEL) gets its own name back first.
    async fn find(&self, node: &Netlink) -> Result<Found> {
        let all = candidates(node).await?;
        let what = || match &self.locate {
            Locate::Name(n) => format!("device {n:?}"),
            Locate::HwAddr(m) => format!("hwaddr {}", format_mac(m)),
            Locate::KernelPath(p) => format!("kernelpath {}", p.display()),
            Locate::Pci(a) => format!("PCI device {a}"),
            Locate::Auxiliary(a) => format!("auxiliary device {a}"),
            Locate::Selector => "deviceSelector".to_string(),
        };
        let first = |mut v: Vec<&Candidate>| {
            v.sort_by(|a, b| (a.dev_port, &a.link.name).cmp(&(b.dev_port, &b.link.name)));
            v.first().map(|c| (*c).clone())
        };
        let found = match &self.locate {
            Locate::Selector => {
                return Err(Error::Internal(
                    "host-device: deviceSelector reached ADD unresolved".into(),
                ));
            }
            Locate::Name(n) => match node.link(n).await? {
                Some(l) => all.iter().find(|c| c.link.index == l.index).cloned(),
                None => self.reclaim_by_name(node, &all, n).await?,
            },
            Locate::HwAddr(m) => all.iter().find(|c| c.link.mac == m[..]).cloned(),
            Locate::KernelPath(p) => {
                let want = std::fs::canonicalize(p).ok();
                first(
                    all.iter()
                        .filter(|c| {
                            want.is_some()
                                && c.hardware
                                && c.link.parent.as_ref().is_some_and(|(dev, bus)| {
                                    std::fs::canonicalize(format!("/sys/bus/{bus}/devices/{dev}"))
                                        .ok()
                                        .is_some_and(|real| {
                                            Some(&real) == want.as_ref()
                                                || real.parent() == want.as_deref()
                                        })
                                })
                        })
                        .collect(),
                )
            }
            Locate::Pci(a) => {
                let on = first(
                    all.iter()
                        .filter(|c| c.hardware && c.pci.as_deref() == Some(a))
                        .collect(),
                );
                if on.is_none() {
                    match pci_driver(a) {
                        Some(d) if USERSPACE_DRIVERS.contains(&d.as_str()) => {
                            return Ok(Found::Userspace {
                                pci: a.clone(),
                                driver: d,
                            });
                        }
                        _ => {}
                    }
                }
                on
            }
            Locate::Auxiliary(a) => first(
                all.iter()
                    .filter(|c| {
                        c.link
                            .parent
                            .as_ref()
                            .is_some_and(|(dev, bus)| dev == a && bus == "auxiliary")
                    })
                    .collect(),
            ),
        };
        let Some(c) = found else {
            return Err(Error::config(format!(
                "host-device: {} is not on node {}",
                what(),
                crate::ipam::cluster::node_name(None)
                    .map(|(n, _)| n)
                    .unwrap_or_default()
            )));
        };
        let c = self.reclaim(node, c).await?;
        Ok(Found::Netdev(Box::new(c)))
    }

    /// A device named by its node name that is not there may be stranded under a pod-side name.
    async fn reclaim_by_name(
        &self,
        node: &Netlink,
        all: &[Candidate],
        name: &str,
    ) -> Result<Option<Candidate>> {
        for h in all_states(&self.data_dir) {
            if h.nic.name != name || h.dpdk {
                continue;
            }
            if let Some(c) = all.iter().find(|c| stranded(&h, c)) {
                return self.reclaim(node, c.clone()).await.map(Some);
            }
        }
        Ok(None)
    }

    /// If `c` is a device a pod had and lost with its netns (a state file names it, and it is back on
    /// the node down, under the name it had in that pod), give it its own name back before it is handed
    /// over again.
    async fn reclaim(&self, node: &Netlink, c: Candidate) -> Result<Candidate> {
        let Some(h) = all_states(&self.data_dir)
            .into_iter()
            .find(|h| stranded(h, &c))
        else {
            return Ok(c);
        };
        tracing::info!(
            "host-device: {} is {} stranded by a pod whose netns is gone: renaming it back",
            c.link.name,
            h.nic.name
        );
        rename_back(node, &c.link, &h.nic.name).await?;
        let link = node
            .link_by_index(c.link.index)
            .await?
            .ok_or_else(|| Error::Internal(format!("{} vanished", h.nic.name)))?;
        Ok(Candidate { link, ..c })
    }
}

/// Whether `c`, on the node, is the device of `h` stranded by its pod's dead netns: the kernel returned
/// it down, under its pod-side name.
fn stranded(h: &Handed, c: &Candidate) -> bool {
    !h.dpdk
        && h.is_device()
        && h.is(c)
        && c.link.name == h.ifname
        && c.link.name != h.nic.name
        && !c.link.up
}

/// Take a node link down and give it `name`.
async fn rename_back(node: &Netlink, link: &Link, name: &str) -> Result<()> {
    if link.up {
        node.set_down(link.index).await?;
    }
    node.rename_index(link.index, name).await
}

impl AddCtx<'_, HostDeviceConf> {
    async fn run(&self, handed: &Handed) -> Result<CniResult> {
        let (args, conf, hd) = (self.args, self.conf, self.driver);
        // The identity first: whatever happens after, a DEL knows what to give back.
        write_state(&hd.data_dir, handed)?;
        let mut result = hd.ipam.add(args, conf).await?;
        self.undo.borrow_mut().push(Undo::Ipam);
        if handed.dpdk {
            // Nothing moves: the result names the device, for the device-information path.
            result.interfaces = vec![Interface {
                name: args.ifname.clone(),
                sandbox: sandbox(args),
                pci_id: handed.nic.pci_address.clone().unwrap_or_default(),
                ..Default::default()
            }];
            return Ok(result);
        }
        let (pod, pod_nl) = (&self.pod.ns, self.pod_nl);
        // Pushed first: a move the kernel made before it failed to name the device is undone too.
        self.undo.borrow_mut().push(Undo::GiveBack {
            netns: pod.try_clone()?,
            ifname: args.ifname.clone(),
            handed: Box::new(handed.clone()),
        });
        self.node
            .move_link(handed.nic.index, pod.raw_fd(), &args.ifname)
            .await
            .map_err(|e| {
                if is_exists(&e) {
                    Error::Conflict(format!(
                        "an interface named {} already exists in the pod",
                        args.ifname
                    ))
                } else {
                    e
                }
            })?;
        let link = pod_nl
            .link(&args.ifname)
            .await?
            .ok_or_else(|| Error::Internal(format!("{} did not arrive in the pod", args.ifname)))?;
        if let Some(m) = hd.mtu {
            pod_nl.set_mtu(link.index, m).await.map_err(|e| {
                if e.errno() == Some(nix::errno::Errno::EINVAL) {
                    Error::config(format!(
                        "mtu {m} is not one {} takes (its driver refused it)",
                        handed.nic.name
                    ))
                } else {
                    e
                }
            })?;
        }
        for ip in &mut result.ips {
            ip.interface = Some(0);
        }
        let opts = IfaceOpts {
            dad: Dad::Kernel,
            ndisc_notify: false,
            arp_notify: false,
        };
        bring_up(
            self.pod,
            &args.ifname,
            link.index,
            &result,
            !hd.ipam.is_none(),
            &opts,
        )
        .await?;
        let link = pod_nl.link_by_index(link.index).await?.unwrap_or(link);
        result.interfaces = vec![Interface {
            name: args.ifname.clone(),
            mac: format_mac(&link.mac),
            sandbox: sandbox(args),
            ..Default::default()
        }];
        if let Some(d) = &hd.dns {
            result.dns = d.clone();
        }
        Ok(result)
    }
}

/// Give a handed-over device back: out of the pod (`pod`, if it is still there) wherever it is in it —
/// under `ifname` or a name the workload gave it —, then on the node under its own name (unless that
/// name is taken there now: then it keeps the one it has, and the log says so), with its MTU and up
/// state as they were. A device the pod's dead netns returned is found on the node by its identity; a
/// software link only right after it moved, or under its own name (it dies with a netns, and vlans
/// share their MAC). Used by
/// DEL and by a failed ADD's rollback.
pub async fn give_back(pod: Option<&NetNs>, ifname: &str, h: &Handed) -> Result<()> {
    let name = &h.nic.name;
    let mut moved = None;
    if let Some(pod) = pod {
        let pod_nl = Netlink::connect(Some(pod))?;
        let here = candidates(&pod_nl).await?;
        let mine = here
            .iter()
            .find(|c| c.link.name == ifname && h.is(c))
            .or_else(|| here.iter().find(|c| h.is(c)));
        if let Some(c) = mine {
            if c.link.up {
                pod_nl.set_down(c.link.index).await?;
            }
            let node = NetNs::current()?;
            match pod_nl.move_link(c.link.index, node.raw_fd(), name).await {
                Ok(()) => {}
                // The kernel moves it first, then names it: a name taken on the node fails the naming.
                Err(e) if is_exists(&e) => {}
                Err(e) => {
                    return Err(
                        e.context(format!("giving {} back to the node as {name}", c.link.name))
                    );
                }
            }
            moved = Some(c.link.index);
        }
    }
    let node = Netlink::connect(None)?;
    let all = candidates(&node).await?;
    // A device by its identity; a software link by its index, or the name it was given (the kernel
    // gives it another index when its own is taken on the node).
    let on_node = match moved {
        _ if h.is_device() => all.iter().find(|c| h.is(c)),
        Some(index) => all
            .iter()
            .find(|c| c.link.index == index && h.is(c))
            .or_else(|| all.iter().find(|c| c.link.name == *name && h.is(c))),
        // Back under its own name already (an interrupted DEL moved it): name, kind and MAC all agree.
        None => all.iter().find(|c| c.link.name == *name && h.is(c)),
    };
    let Some(c) = on_node else {
        tracing::warn!(
            "host-device: {} is neither in the pod nor on the node: nothing to give back",
            h.nic.describe()
        );
        return Ok(());
    };
    if c.link.name != *name {
        // udev may have given the device its own name as an altname meanwhile: a name it holds itself
        // is freed for it.
        if c.link.altnames.iter().any(|a| a == name) {
            node.del_altname(c.link.index, name).await?;
        }
        if node.link(name).await?.is_some() {
            tracing::warn!(
                "host-device: {name} is taken on the node by another link: the device stays {}",
                c.link.name
            );
        } else {
            rename_back(&node, &c.link, name)
                .await
                .map_err(|e| e.context(format!("naming {} back to {name}", c.link.name)))?;
            tracing::info!("host-device: {} is back on the node as {name}", c.link.name);
        }
    }
    if h.mtu > 0
        && c.link.mtu != h.mtu
        && let Err(e) = node.set_mtu(c.link.index, h.mtu).await
    {
        tracing::warn!("host-device: restoring the MTU {} of {name}: {e}", h.mtu);
    }
    if h.up {
        let up = node
            .link_by_index(c.link.index)
            .await?
            .is_some_and(|l| l.up);
        if !up {
            node.set_up_index(c.link.index).await?;
        }
    }
    Ok(())
}

/// DEL of a device attache has no state file of — handed over by the reference plugin before attache
/// replaced it: the device named `CNI_IFNAME` in the pod goes back under the name the reference kept in
/// its ifalias. Nothing else moves (without that mark it may be another plugin's).
async fn give_back_unrecorded(args: &CmdArgs) -> Result<()> {
    let Some(Ok(pod)) = args.netns.as_deref().map(NetNs::open) else {
        return Ok(());
    };
    let pod_nl = Netlink::connect(Some(&pod))?;
    let Some(link) = pod_nl.link(&args.ifname).await? else {
        return Ok(());
    };
    let Some(name) = link
        .alias
        .clone()
        .filter(|a| crate::cni::conf::check_ifname(a).is_ok())
    else {
        return Ok(());
    };
    if link.up {
        pod_nl.set_down(link.index).await?;
    }
    let node = NetNs::current()?;
    pod_nl
        .move_link(link.index, node.raw_fd(), &name)
        .await
        .map_err(|e| e.context(format!("giving {} back to the node as {name}", args.ifname)))?;
    tracing::info!(
        "host-device: {} had no state of attache's (the reference's ADD?): back on the node as {name}",
        args.ifname
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(extra: Value) -> Result<HostDeviceConf> {
        let mut c = json!({"cniVersion":"1.0.0","name":"n","type":"host-device"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        HostDeviceConf::parse(
            NativeType::HostDevice,
            &crate::testutil::cmd_args(""),
            &NetConf::from_value(c).unwrap(),
        )
    }

    #[test]
    fn one_way_of_naming_the_device() {
        assert_eq!(
            parse(json!({"device":"ens1f0"})).unwrap().locate,
            Locate::Name("ens1f0".into())
        );
        assert_eq!(
            parse(json!({"pciBusID":"3b:00.0"})).unwrap().locate,
            Locate::Pci("0000:3b:00.0".into())
        );
        // The runtime's device wins over the configuration's.
        assert_eq!(
            parse(json!({"device":"x","runtimeConfig":{"deviceID":"0000:5e:00.2"}}))
                .unwrap()
                .locate,
            Locate::Pci("0000:5e:00.2".into())
        );
        assert_eq!(
            parse(json!({"deviceID":"mlx5_core.sf.4"})).unwrap().locate,
            Locate::Auxiliary("mlx5_core.sf.4".into())
        );
        for (bad, needle) in [
            (json!({}), "specify either"),
            (
                json!({"device":"a","hwaddr":"02:00:00:00:00:01"}),
                "specify either",
            ),
            (json!({"kernelpath":"/etc/passwd"}), "/sys/devices"),
            (
                json!({"kernelpath":"/sys/devices/../../etc"}),
                "/sys/devices",
            ),
            (json!({"pciBusID":"zz"}), "PCI"),
            (json!({"hwaddr":"zz"}), "hwaddr"),
            (json!({"device":"a/b"}), "device"),
            (json!({"device":"a","mtu":10}), "mtu"),
            (json!({"device":"a","dataDir":"rel"}), "dataDir"),
            (json!({"deviceID":"../x"}), "deviceID"),
        ] {
            let e = parse(bad.clone()).unwrap_err();
            assert_eq!(e.cni_code(), 7, "{bad}");
            assert!(e.to_string().contains(needle), "{bad}: {e}");
        }
    }
}
