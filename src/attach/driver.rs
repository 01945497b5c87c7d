//! The native drivers behind one trait, and the one registry of them ([`NativeType`]).
//!
//! A driver parses its configuration into a validated type first (every field checked, nothing touched),
//! then ADD and CHECK run against that type; DEL and GC read only what teardown needs, leniently, so that
//! they succeed for a configuration ADD would refuse. The meta-plugin validates every native
//! configuration while planning and hands the checked one ([`Checked`]) to the run, so a configuration is
//! parsed once per ADD.

use std::future::Future;

use super::PodNs;
use super::bridge::BridgeConf;
use super::host_device::HostDeviceConf;
use super::sbr::SbrConf;
use super::sublink::{SubConf, SubLinkType};
use super::tuning::TuningConf;
use crate::cni::conf::NetConf;
use crate::cni::skel::{CmdArgs, Command};
use crate::cni::spec::CniResult;
use crate::error::{Error, Result};

/// What a native driver does.
pub trait Driver: Sized {
    /// Parse and validate the configuration for ADD or CHECK, touching nothing. `t` is the type it runs
    /// as (one driver may serve several).
    fn parse(t: NativeType, args: &CmdArgs, conf: &NetConf) -> Result<Self>;
    /// Make the attachment in the pod's namespace `pod` (shared by the invocation's native ADDs).
    /// `link_group` is the group the pod's interface joins (the meta-plugin's, so that DEL removes a
    /// pod's native interfaces together).
    fn add(
        &self,
        args: &CmdArgs,
        conf: &NetConf,
        pod: &PodNs,
        link_group: Option<u32>,
    ) -> impl Future<Output = Result<CniResult>>;
    /// Verify the attachment against the result ADD returned.
    fn check(
        &self,
        args: &CmdArgs,
        conf: &NetConf,
        prev: &CniResult,
    ) -> impl Future<Output = Result<()>>;
    /// Undo the attachment, best effort; "already gone" is done.
    fn del(args: &CmdArgs, conf: &NetConf) -> impl Future<Output = Result<()>>;
    /// GC: the IPAM's addresses of this network (host-local: its own folder, `<dataDir>/<name>`) that the
    /// runtime's valid-attachments list no longer names are released; other networks' are never looked
    /// at. The same for every driver: what a native attachment holds on the node beyond its link is its
    /// addresses.
    fn gc(args: &CmdArgs, conf: &NetConf) -> Result<()> {
        let valid = crate::cni::conf::valid_attachments(conf)?;
        let released = crate::ipam::IpamRelease::of(conf, args).gc(&valid)?;
        if !released.is_empty() {
            tracing::info!(network = %conf.name, ?released, "GC released stale addresses");
        }
        Ok(())
    }
}

/// The plugin types attache implements itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeType {
    Bridge,
    /// A link made on a node interface: macvlan, ipvlan, vlan.
    Sub(SubLinkType),
    /// Source-based routing, chained after a plugin that made the interface.
    Sbr,
    /// Sysctls and link attributes, chained after a plugin that made the interface.
    Tuning,
    /// A node device handed to the pod whole.
    HostDevice,
}

impl NativeType {
    pub const ALL: [NativeType; 7] = [
        NativeType::Bridge,
        NativeType::Sub(SubLinkType::MacVlan),
        NativeType::Sub(SubLinkType::IpVlan),
        NativeType::Sub(SubLinkType::Vlan),
        NativeType::Sbr,
        NativeType::Tuning,
        NativeType::HostDevice,
    ];

    /// The type a plugin `type` names, if attache implements it.
    pub fn of(name: &str) -> Option<NativeType> {
        NativeType::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            NativeType::Bridge => "bridge",
            NativeType::Sub(s) => s.name(),
            NativeType::Sbr => "sbr",
            NativeType::Tuning => "tuning",
            NativeType::HostDevice => "host-device",
        }
    }

    /// Whether it makes the pod's interface (and so puts it in the pod's link group), rather than
    /// working on one a plugin before it made.
    pub fn makes_link(self) -> bool {
        !matches!(self, NativeType::Sbr | NativeType::Tuning)
    }

    /// Whether the interface it makes is the pod's to delete (and so joins the pod's link group, which
    /// DEL deletes at once): not a node device handed over, which DEL gives back.
    pub fn deletes_link(self) -> bool {
        self.makes_link() && self != NativeType::HostDevice
    }

    /// "bridge, macvlan, ipvlan, vlan, sbr, tuning", for messages.
    pub fn names() -> String {
        NativeType::ALL.map(NativeType::name).join(", ")
    }

    /// Validate a configuration for ADD or CHECK: the checked configuration a run uses.
    pub fn check_conf(self, args: &CmdArgs, conf: NetConf) -> Result<Checked> {
        let driver = match self {
            NativeType::Bridge => Parsed::Bridge(BridgeConf::parse(self, args, &conf)?),
            NativeType::Sub(_) => Parsed::Sub(SubConf::parse(self, args, &conf)?),
            NativeType::Sbr => Parsed::Sbr(SbrConf::parse(self, args, &conf)?),
            NativeType::Tuning => Parsed::Tuning(TuningConf::parse(self, args, &conf)?),
            NativeType::HostDevice => Parsed::HostDevice(HostDeviceConf::parse(self, args, &conf)?),
        };
        Ok(Checked { conf, driver })
    }

    /// Run one command — standalone (drop-in mode), or as a plugin of a chain.
    pub async fn run(
        self,
        args: &CmdArgs,
        conf: NetConf,
        link_group: Option<u32>,
    ) -> Result<Option<CniResult>> {
        match args.command {
            Command::Add => {
                let checked = self.check_conf(args, resolve_nic(conf).await?)?;
                let pod = PodNs::open(args)?;
                checked.add(args, &pod, link_group).await.map(Some)
            }
            Command::Check => {
                // Standalone: the prevResult of stdin, read once here, as ADD's and DEL's input is.
                let prev = conf.prev_result();
                // A handed-over device is in the pod, not on the node: its CHECK goes by what ADD
                // recorded.
                let conf = match self {
                    NativeType::HostDevice => conf,
                    _ => resolve_nic(conf).await?,
                };
                let checked = self.check_conf(args, conf)?;
                let prev = prev?.ok_or_else(|| Error::config("CHECK needs prevResult"))?;
                checked.check(args, &prev).await.map(|_| None)
            }
            Command::Del => match self {
                NativeType::Bridge => BridgeConf::del(args, &conf).await,
                NativeType::Sub(_) => SubConf::del(args, &conf).await,
                NativeType::Sbr => SbrConf::del(args, &conf).await,
                NativeType::Tuning => TuningConf::del(args, &conf).await,
                NativeType::HostDevice => HostDeviceConf::del(args, &conf).await,
            }
            .map(|_| None),
            Command::Gc => match self {
                NativeType::Bridge => BridgeConf::gc(args, &conf),
                NativeType::Sub(_) => SubConf::gc(args, &conf),
                NativeType::Sbr => SbrConf::gc(args, &conf),
                NativeType::Tuning => TuningConf::gc(args, &conf),
                NativeType::HostDevice => HostDeviceConf::gc(args, &conf),
            }
            .map(|_| None),
            Command::Status => Ok(None),
            Command::Version => Err(Error::Internal("VERSION is answered by skel".into())),
        }
    }
}

/// A configuration run on its own (drop-in mode) with its node interface named by altname, selector or
/// physical network: rewritten to the node's primary name, as the meta-plugin does for a chain.
async fn resolve_nic(conf: NetConf) -> Result<NetConf> {
    let mut raw = conf.raw.clone();
    // `physnetsFile` as the meta-plugin's configuration names it, for a node whose map is elsewhere.
    let map = raw
        .get("physnetsFile")
        .and_then(serde_json::Value::as_str)
        .filter(|p| p.starts_with('/'))
        .unwrap_or(super::nic::PHYSNETS_FILE)
        .to_string();
    let mut nics = super::nic::NodeNics::new(std::path::Path::new(&map));
    match super::nic::resolve_plugin(0, &mut raw, &mut nics).await? {
        Some(_) => NetConf::from_value(serde_json::Value::Object(raw)),
        None => Ok(conf),
    }
}

/// A native plugin's configuration, validated for one attachment: what ADD and CHECK run against.
pub struct Checked {
    pub conf: NetConf,
    driver: Parsed,
}

enum Parsed {
    Bridge(BridgeConf),
    Sub(SubConf),
    Sbr(SbrConf),
    Tuning(TuningConf),
    HostDevice(HostDeviceConf),
}

impl Checked {
    /// The tuning configuration, if this is one (for its driver to apply before the link is up).
    pub fn tuning(&self) -> Option<&TuningConf> {
        match &self.driver {
            Parsed::Tuning(t) => Some(t),
            _ => None,
        }
    }

    pub async fn add(
        &self,
        args: &CmdArgs,
        pod: &PodNs,
        link_group: Option<u32>,
    ) -> Result<CniResult> {
        match &self.driver {
            Parsed::Bridge(d) => d.add(args, &self.conf, pod, link_group).await,
            Parsed::Sub(d) => d.add(args, &self.conf, pod, link_group).await,
            Parsed::Sbr(d) => d.add(args, &self.conf, pod, link_group).await,
            Parsed::Tuning(d) => d.add(args, &self.conf, pod, link_group).await,
            Parsed::HostDevice(d) => d.add(args, &self.conf, pod, link_group).await,
        }
    }

    /// CHECK against the result the chain's ADD returned.
    pub async fn check(&self, args: &CmdArgs, prev: &CniResult) -> Result<()> {
        match &self.driver {
            Parsed::Bridge(d) => d.check(args, &self.conf, prev).await,
            Parsed::Sub(d) => d.check(args, &self.conf, prev).await,
            Parsed::Sbr(d) => d.check(args, &self.conf, prev).await,
            Parsed::Tuning(d) => d.check(args, &self.conf, prev).await,
            Parsed::HostDevice(d) => d.check(args, &self.conf, prev).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_names_each_type_once() {
        for t in NativeType::ALL {
            assert_eq!(NativeType::of(t.name()), Some(t));
        }
        assert_eq!(
            NativeType::names(),
            "bridge, macvlan, ipvlan, vlan, sbr, tuning, host-device"
        );
        assert_eq!(NativeType::of("ptp"), None);
        assert_eq!(NativeType::of("attache"), None);
    }
}
