//! Native attachment drivers, run in-process over netlink: the plugin types attache owns. Each one also
//! works on its own (drop-in mode): a conf with that `type`, or the binary installed under that name.
//!
//! Rooms: [`driver`] (the trait and the registry of types), [`bridge`] and [`sublink`] (macvlan, ipvlan,
//! vlan) — the drivers; [`sbr`] and [`tuning`] (chained after one); [`iface`] (the pod side every driver configures the same way), [`undo`] (rolling
//! a failed ADD back), [`naming`] (node link names and owner labels), [`nft`] (nftables state). What is
//! left here are the small readers of a driver's invocation.

pub mod bridge;
pub mod driver;
pub mod host_device;
pub mod iface;
pub mod naming;
pub mod nft;
pub mod nic;
pub mod sbr;
pub mod sublink;
pub mod tuning;
pub mod undo;

pub use driver::{Checked, Driver, NativeType};

use serde_json::Value;

use crate::cni::conf::NetConf;
use crate::cni::skel::CmdArgs;
use crate::error::{Error, Result};
use crate::netlink::Netlink;
use crate::netns::{NetNs, NsWorker};

/// What one native ADD works with, whatever its driver `D` (its checked configuration): the invocation,
/// the pod's namespace with its thread and connection, the node's connection, the node-side link the
/// pod's interface hangs off (a bridge, a master), and the undo list its steps fill. Steps may run
/// concurrently on the one-threaded runtime: none holds a borrow of `undo` across an await.
pub struct AddCtx<'a, D> {
    pub args: &'a CmdArgs,
    pub conf: &'a NetConf,
    pub driver: &'a D,
    /// The group the pod's interface joins (see [`Driver::add`]).
    pub link_group: Option<u32>,
    pub pod: &'a PodNs,
    pub node: &'a Netlink,
    pub pod_nl: &'a Netlink,
    pub upper: &'a crate::netlink::Link,
    pub undo: std::cell::RefCell<Vec<undo::Undo>>,
}

impl<D> AddCtx<'_, D> {
    /// Run a driver's ADD steps; when they fail or panic, undo what they did (newest first) and return
    /// their error.
    pub async fn undone_on_failure(
        &self,
        ipam: &crate::ipam::Ipam,
        steps: impl std::future::Future<Output = Result<crate::cni::spec::CniResult>>,
    ) -> Result<crate::cni::spec::CniResult> {
        let r = crate::fail::guarded(steps).await;
        if r.is_err() {
            undo::rollback(self.undo.take(), self.args, self.conf, ipam).await;
        }
        r
    }
}

/// The pod's namespace as the native ADDs of one invocation share it: opened once, with one thread
/// inside it (for sysctls and the netlink socket) and one netlink connection there, however many native
/// interfaces the pod gets.
pub struct PodNs {
    pub ns: NetNs,
    pub worker: NsWorker,
    nl: std::cell::OnceCell<Netlink>,
    /// Tunings chained after the drivers that make their interfaces, applied before those come up.
    pub tuned: tuning::EarlySlot,
}

impl PodNs {
    /// Open the pod's netns named by `CNI_NETNS` and start its thread (which comes up while the caller
    /// goes on: the connection is made on first use).
    pub fn open(args: &CmdArgs) -> Result<PodNs> {
        let ns = pod_netns(args)?;
        let worker = ns.worker()?;
        Ok(PodNs {
            ns,
            worker,
            nl: std::cell::OnceCell::new(),
            tuned: Default::default(),
        })
    }

    /// The netlink connection inside the pod.
    pub async fn netlink(&self) -> Result<Netlink> {
        if let Some(nl) = self.nl.get() {
            return Ok(nl.clone());
        }
        let nl = Netlink::connect_worker(&self.worker).await?;
        Ok(self.nl.get_or_init(|| nl).clone())
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

/// DEL's account of a link it looked for: what was actually deleted, or that nothing was there.
pub fn log_deleted(deleted: bool, name: &str, place: &str) {
    match deleted {
        true => tracing::debug!("deleted {name} in {place}"),
        false => tracing::debug!("{name} was not in {place}: nothing to delete"),
    }
}

/// Open the pod's netns named by `CNI_NETNS` (code 8 if it is not one).
pub fn pod_netns(args: &CmdArgs) -> Result<NetNs> {
    let p = args
        .netns
        .as_deref()
        .ok_or_else(|| Error::InvalidEnv("CNI_NETNS is required".into()))?;
    NetNs::open(p)
}
