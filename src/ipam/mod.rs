//! IP address management for the native drivers: host-local (on-disk compatible with the reference
//! plugin), static, and any other type delegated by exec. Configuration is validated into an [`Ipam`]
//! before anything happens; IPAM never touches netlink. This file is the dispatch; each kind lives in
//! its own module ([`conf`] reads the `ipam` object into them).

pub mod cluster;
pub mod conf;
mod exec;
pub mod host_local;
pub mod static_ip;

use std::net::IpAddr;

use serde_json::Value;

use crate::cni::conf::NetConf;
use crate::cni::skel::{CmdArgs, Command};
use crate::cni::spec::CniResult;
use crate::error::{Error, Result};
pub use conf::parse_resolv_conf;
pub use host_local::{HostLocal, allocate};
pub use static_ip::Static;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// A validated IPAM configuration: what ADD allocates with and CHECK verifies. Teardown reads the
/// configuration another way, into an [`IpamRelease`], which can only release: "teardown asked to
/// allocate" does not compile.
#[derive(Clone, Debug)]
pub enum Ipam {
    /// No `ipam` (or `{}`): a layer-2 attachment.
    None,
    HostLocal(HostLocal),
    Static(Static),
    /// attache-ipam, validated for ADD and CHECK.
    Cluster(Box<cluster::ClusterIpam>),
    /// A type attache does not own (`dhcp`, `whereabouts`, ...), run by exec with the whole configuration.
    External(String),
}

/// The IPAM as DEL and GC read it, leniently (see [`IpamRelease::of`]): it releases, and says what an
/// attachment holds, and nothing else.
#[derive(Clone, Debug)]
pub enum IpamRelease {
    None,
    HostLocal(HostLocal),
    Static(Static),
    /// attache-ipam: its folder.
    Cluster(cluster::Teardown),
    External(String),
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
            "host-local" => conf::host_local(conf, args, section).map(Ipam::HostLocal),
            "static" => conf::static_ip(conf, args, section).map(Ipam::Static),
            cluster::TYPE => cluster::ClusterIpam::from_conf(conf, args, section)
                .map(|c| Ipam::Cluster(Box::new(c))),
            other => {
                crate::cni::conf::validate_plugin_type(other)?;
                Ok(Ipam::External(other.to_string()))
            }
        }
    }

    /// The releasing side of this configuration (a failed ADD's rollback releases with it).
    pub fn release(&self) -> IpamRelease {
        match self {
            Ipam::None => IpamRelease::None,
            Ipam::HostLocal(h) => IpamRelease::HostLocal(h.clone()),
            Ipam::Static(s) => IpamRelease::Static(s.clone()),
            Ipam::Cluster(c) => IpamRelease::Cluster(cluster::Teardown::of(c)),
            Ipam::External(t) => IpamRelease::External(t.clone()),
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
            Ipam::Cluster(c) => c.add(args).await,
            Ipam::External(t) => exec::add(t, args, conf).await,
        }
    }

    /// Release (a failed ADD's rollback). Nothing held is success.
    pub async fn del(&self, args: &CmdArgs, conf: &NetConf) -> Result<()> {
        self.release().del(args, conf).await
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
            Ipam::Cluster(c) => c.check(args),
            Ipam::External(t) => exec::run(Command::Check, t, args, conf).await,
        }
    }
}

impl IpamRelease {
    /// What DEL and GC need of the `ipam` section, read leniently: a configuration that ADD refused
    /// must still be torn down. host-local needs the network name and `dataDir` (and its ranges if
    /// they can be read, to release by the addresses `prevResult` names), static the
    /// addresses it can parse (for address-keyed state such as masquerading), any other type its
    /// name. What cannot be used is logged and skipped: ADD never made anything with it.
    pub fn of(conf: &NetConf, args: &CmdArgs) -> IpamRelease {
        let Some(Value::Object(section)) = conf.raw.get("ipam") else {
            return IpamRelease::None;
        };
        match section.get("type").and_then(Value::as_str) {
            None | Some("") => IpamRelease::None,
            Some("host-local") => conf::host_local_for_teardown(conf, section)
                .map(IpamRelease::HostLocal)
                .unwrap_or(IpamRelease::None),
            Some("static") => IpamRelease::Static(conf::static_for_teardown(section, args)),
            Some(cluster::TYPE) => cluster::Teardown::from_section(&conf.name, section)
                .map(IpamRelease::Cluster)
                .unwrap_or(IpamRelease::None),
            Some(t) if crate::cni::conf::validate_plugin_type(t).is_ok() => {
                IpamRelease::External(t.to_string())
            }
            Some(t) => {
                tracing::warn!("ipam type {t:?} names no plugin: nothing to release");
                IpamRelease::None
            }
        }
    }

    /// Release. Nothing held is success.
    pub async fn del(&self, args: &CmdArgs, conf: &NetConf) -> Result<()> {
        // The addresses the runtime (or the chain) says this attachment has; a prevResult that cannot
        // be read names none, and a search finds them.
        let named = || -> Vec<IpAddr> {
            match conf.prev_result() {
                Ok(Some(prev)) => prev.ips.iter().map(|i| i.address.addr()).collect(),
                _ => vec![],
            }
        };
        match self {
            IpamRelease::None | IpamRelease::Static(_) => Ok(()),
            IpamRelease::HostLocal(h) => h
                .release_named(&args.container_id, &args.ifname, &named())
                .map(|_| ()),
            IpamRelease::Cluster(t) => t
                .del(&args.container_id, &args.ifname, &named())
                .map(|_| ()),
            IpamRelease::External(t) => exec::run(Command::Del, t, args, conf).await,
        }
    }

    /// Release every address whose `(containerID, ifname)` is not in `valid`.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<IpAddr>> {
        match self {
            IpamRelease::HostLocal(h) => h.gc(valid),
            IpamRelease::Cluster(t) => t.gc(valid),
            _ => Ok(vec![]),
        }
    }

    /// The addresses this attachment holds (for teardown of address-keyed state such as masquerading).
    pub fn held(&self, args: &CmdArgs) -> Result<Vec<IpAddr>> {
        match self {
            IpamRelease::HostLocal(h) => h.held(&args.container_id, &args.ifname),
            IpamRelease::Static(s) => Ok(s.addresses.iter().map(|a| a.address.addr()).collect()),
            IpamRelease::Cluster(t) => t.held(&args.container_id, &args.ifname),
            _ => Ok(vec![]),
        }
    }
}
