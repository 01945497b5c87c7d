//! The engine: what a validated CNI invocation does. `"type": "attache"` runs the meta-plugin (plan the
//! pod's attachments, run them in order, roll back on failure, keep a record, tear down from it); a type
//! attache implements natively runs that driver directly (drop-in mode); installed as `attache-ipam` it is
//! the cluster-wide IPAM plugin; anything else is refused.

pub mod audit;
pub mod chain;
pub mod config;
pub mod meta;
pub mod plan;
pub mod pod;
pub mod record;
pub mod routing;

use serde_json::Value;

use crate::attach::NativeType;
use crate::cni::conf::NetConf;
use crate::cni::skel::{CmdArgs, Command, Finished, Plugin};
use crate::error::{Error, Result};
use crate::metrics::{Outcome, Recorded, Sample};

/// The plugin behind the real binary. `invoked_as` is the binary's file name: installed as `bridge`
/// (a symlink), attache behaves as that plugin whatever `type` says, as the reference plugin would;
/// installed as `attache` it runs what `type` names (the meta-plugin or a native type); installed as
/// `attache-ipam`, the cluster IPAM plugin; under any other name it refuses to run, so that no configuration can make it exec itself in a role it does not have.
pub struct Engine {
    pub invoked_as: String,
    /// How many attache processes exec'd this one (`ATTACHE_EXEC_DEPTH`).
    pub depth: u32,
}

/// The name that runs whatever `type` says.
pub const META_NAME: &str = "attache";

/// How deep attache may find itself in a chain of execs of attache before it refuses to go on: a loop
/// through a copy of the binary (which `delegate`'s same-file check cannot see) ends here.
pub const MAX_EXEC_DEPTH: u32 = 4;

impl Engine {
    pub fn new(invoked_as: impl Into<String>) -> Engine {
        Engine {
            invoked_as: invoked_as.into(),
            depth: 0,
        }
    }

    /// What this invocation runs as, decided by the name it was invoked under: a native driver, or
    /// (`None`) the meta-plugin.
    pub fn role(&self, conf: &NetConf) -> Result<Option<NativeType>> {
        if let Some(t) = NativeType::of(&self.invoked_as) {
            return Ok(Some(t));
        }
        if self.invoked_as != META_NAME {
            return Err(Error::config(format!(
                "attache was invoked as {:?}, a name it does not answer to: install it as {META_NAME:?} (the meta-plugin) or under the name of a type it implements ({})",
                self.invoked_as,
                NativeType::names()
            )));
        }
        match conf.plugin_type.as_str() {
            META_NAME => Ok(None),
            t => NativeType::of(t).map(Some).ok_or_else(|| {
                Error::config(format!(
                    "attache does not implement plugin type {t:?}; it runs \"attache\" (the meta-plugin) and natively {}",
                    NativeType::names()
                ))
            }),
        }
    }
}

impl Engine {
    /// The `type` label of an invocation's metrics: the role [`Engine::role`] picks, from a fixed set of
    /// names (`attache`, the native types), or `unknown` when there is none — a configuration that could
    /// not be read, a type attache does not implement, a name it does not answer to.
    pub fn role_label(&self, conf_type: Option<&str>) -> &'static str {
        if let Some(t) = NativeType::of(&self.invoked_as) {
            return t.name();
        }
        if self.invoked_as == crate::ipam::cluster::TYPE {
            return crate::ipam::cluster::TYPE;
        }
        match conf_type {
            _ if self.invoked_as != META_NAME => UNKNOWN_ROLE,
            Some(META_NAME) => META_NAME,
            Some(t) => NativeType::of(t).map_or(UNKNOWN_ROLE, NativeType::name),
            None => UNKNOWN_ROLE,
        }
    }
}

/// The metrics' `type` of an invocation attache could not give a role.
pub const UNKNOWN_ROLE: &str = "unknown";

/// The capabilities a command needs, checked before anything is touched: links and nftables need
/// CAP_NET_ADMIN, entering a pod's namespace CAP_SYS_ADMIN. Without them the kernel's bare EPERM would
/// surface from deep inside, possibly half-way through.
pub fn require_capabilities(command: Command) -> Result<()> {
    use caps::{CapSet, Capability};
    if !matches!(
        command,
        Command::Add | Command::Del | Command::Check | Command::Gc
    ) {
        return Ok(());
    }
    let missing: Vec<String> = [Capability::CAP_NET_ADMIN, Capability::CAP_SYS_ADMIN]
        .into_iter()
        .filter(|c| !caps::has_cap(None, CapSet::Effective, *c).unwrap_or(true))
        .map(|c| c.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Privilege(format!(
        "attache needs {} for {} (it creates links and nftables rules and enters pod network namespaces), and its process does not have {}",
        missing.join(" and "),
        command.as_str(),
        if missing.len() == 1 { "it" } else { "them" }
    )))
}

/// attache installed as `attache-ipam`: the cluster-wide IPAM plugin, for exec'd plugins (sriov,
/// the reference macvlan ...) as for attache's own drivers. It touches no link and enters no namespace,
/// so it needs no capability.
async fn run_ipam(args: &CmdArgs, conf: &NetConf) -> Result<Option<Value>> {
    use crate::ipam::Ipam;
    let version = conf.version;
    match args.command {
        Command::Add => {
            let ipam = Ipam::from_conf(conf, args)?;
            if !matches!(ipam, Ipam::Cluster(_)) {
                return Err(Error::config(format!(
                    "attache was invoked as {} and the configuration's ipam.type is not {0:?}",
                    crate::ipam::cluster::TYPE
                )));
            }
            let r = ipam.add(args, conf).await?;
            Ok(Some(r.to_value(version)))
        }
        Command::Check => {
            Ipam::from_conf(conf, args)?.check(args, conf).await?;
            Ok(None)
        }
        Command::Del => {
            crate::ipam::IpamRelease::of(conf, args)
                .del(args, conf)
                .await?;
            Ok(None)
        }
        Command::Gc => {
            let valid = crate::cni::conf::valid_attachments(conf)?;
            let released = crate::ipam::IpamRelease::of(conf, args).gc(&valid)?;
            if !released.is_empty() {
                tracing::info!(network = %conf.name, ?released, "GC released stale addresses");
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

impl Plugin for Engine {
    fn run(&self, args: &CmdArgs, conf: NetConf) -> Result<Option<Value>> {
        if let Some(why) = &args.nothing_to_do {
            let (log_file, log_level) = config::logging_of(&conf);
            init_logging(log_file.as_deref(), log_level);
            tracing::info!(
                command = args.command.as_str(),
                ifname = %args.ifname,
                network = %conf.name,
                "nothing to tear down, answering success: {why}"
            );
            return Ok(None);
        }
        if self.invoked_as == crate::ipam::cluster::TYPE {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|e| Error::io("starting the async runtime", e))?;
            return rt.block_on(run_ipam(args, &conf));
        }
        let role = self.role(&conf)?;
        if self.depth >= MAX_EXEC_DEPTH {
            return Err(Error::config(format!(
                "attache found itself {} execs deep (ATTACHE_EXEC_DEPTH): a configuration makes it run itself in a loop",
                self.depth
            )));
        }
        require_capabilities(args.command)?;
        crate::delegate::set_exec_depth(self.depth);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Error::io("starting the async runtime", e))?;
        match role {
            None => rt.block_on(meta::run(args, conf)),
            Some(t) => {
                let version = conf.version;
                rt.block_on(t.run(args, conf, None))
                    .map(|r| r.map(|r| r.to_value(version)))
            }
        }
    }

    /// Count the invocation in `metricsDir`, when the configuration names one. The failing plugin is the
    /// delegate whose error it is, else attache in its role.
    fn finished(&self, done: &Finished<'_>) {
        let Some(dir) = done.metrics_dir else { return };
        let kind = self.role_label(done.conf_type);
        let outcome = match done.error {
            None => Outcome::Success,
            Some(e) => Outcome::Error {
                code: e.cni_code(),
                plugin: e.failing_plugin().unwrap_or(kind),
            },
        };
        let sample = Sample {
            command: done.command.as_str(),
            kind,
            outcome,
            seconds: done.elapsed.as_secs_f64(),
        };
        match crate::metrics::record(dir, &sample) {
            Ok(Recorded::Written) => {}
            Ok(Recorded::Pending) => tracing::debug!(
                "metrics: {} was locked by another invocation for {:?}; this one's sample is pending, for it to count",
                dir.display(),
                crate::metrics::LOCK_WAIT
            ),
            Err(e) => tracing::warn!("metrics not updated: {e}"),
        }
    }
}

/// Send `tracing` output to `file` at `level`. Logging never fails an operation: a file that cannot be
/// opened means no log.
pub fn init_logging(file: Option<&std::path::Path>, level: tracing::Level) {
    let Some(path) = file else { return };
    let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(f))
        .with_max_level(level)
        .with_ansi(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_type_is_the_role() {
        let conf = |t: &str| {
            crate::cni::conf::NetConf::from_value(serde_json::json!(
                {"cniVersion": "1.0.0", "name": "n", "type": t}
            ))
            .unwrap()
        };
        for (invoked_as, t) in [
            ("attache", "attache"),
            ("attache", "macvlan"),
            ("attache", "calico"),
            ("bridge", "whatever"),
            ("vlan", "attache"),
            ("attache-helper", "bridge"),
        ] {
            let e = Engine::new(invoked_as);
            let c = conf(t);
            let want = e
                .role(&c)
                .map_or(UNKNOWN_ROLE, |r| r.map_or(META_NAME, NativeType::name));
            assert_eq!(e.role_label(Some(t)), want, "{invoked_as} {t}");
        }
        assert_eq!(Engine::new("attache").role_label(None), UNKNOWN_ROLE);
        assert_eq!(Engine::new("ipvlan").role_label(None), "ipvlan");
        // Installed as the IPAM plugin, it is that whatever the main plugin's type.
        assert_eq!(
            Engine::new("attache-ipam").role_label(Some("sriov")),
            "attache-ipam"
        );
    }
}
