//! The meta-plugin's own configuration (`"type": "attache"`): raw keys in, [`AttacheConf`] out.
//! Resolving `clusterNetwork` reads files, so it is a separate, explicit step ([`AttacheConf::cluster_network`]).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::cni::conf::{NetConf, decode};
use crate::engine::chain::NetworkList;
use crate::error::{Error, Result};

pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/attache";
/// Where `attache agent` keeps the node's mirror of NetworkAttachmentDefinitions (a cache: it can be
/// removed at any time, and is made again from the API).
pub const DEFAULT_NAD_MIRROR: &str = "/var/cache/attache/nads";

/// How many networks one pod may select (defaultNetworks included) unless `maxAttachments` says
/// otherwise; `MAX_ATTACHMENTS_LIMIT` is the most it may say.
pub const DEFAULT_MAX_ATTACHMENTS: usize = 64;
pub const MAX_ATTACHMENTS_LIMIT: u64 = 1024;
/// How long one invocation's API phase (reading, then reporting) may take unless `apiTimeout` (seconds)
/// says otherwise.
pub const DEFAULT_API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A list of names, as a JSON list or (Multus' spelling) one comma-separated string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Names {
    List(Vec<String>),
    Csv(String),
}

impl Names {
    fn into_vec(self) -> Vec<String> {
        match self {
            Names::List(v) => v,
            Names::Csv(s) => s
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect(),
        }
    }
}

/// Where the cluster network's configuration comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterRef {
    /// An inline conf or conflist.
    Inline(Value),
    /// A file name (or absolute path) in `confDir`, or the `name` of a network configured there.
    Named(String),
    /// A DEL's configuration whose `clusterNetwork` is unusable: the record is all there is to go by.
    Invalid(String),
}

#[derive(Clone, Debug)]
pub struct AttacheConf {
    pub cluster: ClusterRef,
    pub conf_dir: PathBuf,
    pub bin_dir: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    pub log_level: tracing::Level,
    /// Kubernetes API access; without it pods' annotations come only from the runtime.
    pub kubeconfig: Option<PathBuf>,
    /// A folder of NetworkAttachmentDefinition manifests, consulted before the API.
    pub networks_dir: Option<PathBuf>,
    /// A pod may use only definitions of its own namespace and of `global_namespaces`.
    pub namespace_isolation: bool,
    pub global_namespaces: Vec<String>,
    /// Pods in these namespaces get the cluster network only.
    pub system_namespaces: Vec<String>,
    /// Definitions attached to every pod (outside system namespaces), `name` in `multus_namespace` or
    /// `namespace/name`.
    pub default_networks: Vec<String>,
    pub multus_namespace: String,
    /// The kubelet's device-manager checkpoint (device IDs for definitions with a resourceName).
    pub device_checkpoint: PathBuf,
    /// Where device plugins write Device Information Spec files.
    pub device_info_dir: PathBuf,
    /// The most networks one pod may select.
    pub max_attachments: usize,
    /// The deadline of each API phase of one invocation.
    pub api_timeout: std::time::Duration,
    /// Written by `attache install` on a folder a boot empties (`/run`): while it is missing — after a
    /// reboot, until the DaemonSet has installed attache again — ADD answers "try again" (code 11)
    /// and STATUS "not ready".
    pub ready_file: Option<PathBuf>,
    /// The node's mirror of NetworkAttachmentDefinitions (`attache agent` keeps it): read before the
    /// API while it is live.
    pub nad_mirror: Option<PathBuf>,
    /// How long after the mirror was last live it still serves a definition when the API server
    /// cannot answer.
    pub nad_mirror_max_stale: std::time::Duration,
    /// `attache agent`'s socket: network-status and Events are handed to it (else sent directly).
    pub agent_socket: Option<PathBuf>,
    /// `podRouting`: `"source"` gives each secondary interface its own routing table and source rules
    /// (see [`super::routing`]); the default, `"main"`, leaves routing as the plugins made it.
    pub pod_routing: RoutingMode,
    /// The cluster's pod and Service CIDRs (`clusterCIDRs`, `serviceCIDRs`): when a selection moves the
    /// pod's default route off the cluster network, these stay on it.
    pub cluster_cidrs: Vec<ipnet::IpNet>,
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// `physnetsFile`: the node's map of physical networks to interface selectors
    /// ([`crate::attach::nic`]).
    pub physnets_file: PathBuf,
}

/// How a pod's interfaces are routed (`podRouting`, and per selection or definition `attache.routing`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// As the plugins made it: every route in the main table.
    #[default]
    Main,
    /// Per interface: its own table, `from <address>` rules, one default route in main.
    Source,
}

/// One key of the configuration, decoded on its own (absent or `null`: `None`); a wrong type is an
/// error naming the key.
fn key<T: serde::de::DeserializeOwned>(conf: &NetConf, k: &str) -> Result<Option<T>> {
    match conf.raw.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => decode(&format!("attache configuration: {k}"), v.clone()).map(Some),
    }
}

/// An optional path key that must be absolute.
fn absolute(conf: &NetConf, k: &str) -> Result<Option<PathBuf>> {
    match key::<PathBuf>(conf, k)? {
        Some(d) if !d.is_absolute() => Err(Error::config(format!(
            "{k} must be an absolute path, got {}",
            d.display()
        ))),
        d => Ok(d),
    }
}

/// The configuration read key by key, every key on its own: each one that does not validate is an
/// error, and its default stands in its place. ADD refuses the first error ([`AttacheConf::from_conf`]);
/// teardown warns and goes on ([`AttacheConf::for_teardown`]). No rule spans two keys, so that DEL can
/// always use every key that is right.
struct Reading {
    errors: Vec<Error>,
}

impl Reading {
    fn take<T>(&mut self, r: Result<T>, default: impl FnOnce() -> T) -> T {
        r.unwrap_or_else(|e| {
            self.errors.push(e);
            default()
        })
    }
}

fn cluster_ref(conf: &NetConf) -> Result<ClusterRef> {
    match conf.raw.get("clusterNetwork") {
        None | Some(Value::Null) => Err(Error::config(
            "clusterNetwork is required: an inline conf or conflist, or the name of a .conf/.conflist in confDir",
        )),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(Error::config("clusterNetwork is empty"))
        }
        Some(Value::String(s)) => Ok(ClusterRef::Named(s.clone())),
        Some(v @ Value::Object(_)) => {
            // Validate the shape now so a broken inline conf is refused before anything happens.
            NetworkList::from_value(v, &conf.cni_version)
                .map_err(|e| e.context("clusterNetwork"))?;
            Ok(ClusterRef::Inline(v.clone()))
        }
        Some(other) => Err(Error::config(format!(
            "clusterNetwork must be an object or a string, got {other}"
        ))),
    }
}

fn default_networks(conf: &NetConf) -> Result<Vec<String>> {
    let list = key::<Names>(conf, "defaultNetworks")?
        .map(Names::into_vec)
        .unwrap_or_default();
    for n in &list {
        let ok = match n.split_once('/') {
            Some((ns, name)) => {
                crate::k8s::annotation::is_dns1123_label(ns)
                    && crate::k8s::annotation::is_dns1123_label(name)
            }
            None => crate::k8s::annotation::is_dns1123_label(n),
        };
        if !ok {
            return Err(Error::config(format!(
                "defaultNetworks: {n:?} is not a [namespace/]name"
            )));
        }
    }
    Ok(list)
}

fn max_attachments(conf: &NetConf) -> Result<usize> {
    match key::<u64>(conf, "maxAttachments")? {
        None => Ok(DEFAULT_MAX_ATTACHMENTS),
        Some(n) if (1..=MAX_ATTACHMENTS_LIMIT).contains(&n) => Ok(n as usize),
        Some(n) => Err(Error::config(format!(
            "maxAttachments {n} is out of range: it must be 1 to {MAX_ATTACHMENTS_LIMIT}"
        ))),
    }
}

fn api_timeout(conf: &NetConf) -> Result<std::time::Duration> {
    match key::<f64>(conf, "apiTimeout")? {
        None => Ok(DEFAULT_API_TIMEOUT),
        Some(t) if t > 0.0 && t <= 60.0 => Ok(std::time::Duration::from_secs_f64(t)),
        Some(t) => Err(Error::config(format!(
            "apiTimeout {t} is out of range: it must be more than 0 and at most 60 seconds"
        ))),
    }
}

fn max_stale(conf: &NetConf) -> Result<std::time::Duration> {
    match key::<f64>(conf, "nadMirrorMaxStale")? {
        None => Ok(crate::k8s::mirror::DEFAULT_MAX_STALE),
        Some(t) if (0.0..=30.0 * 86400.0).contains(&t) => Ok(std::time::Duration::from_secs_f64(t)),
        Some(t) => Err(Error::config(format!(
            "nadMirrorMaxStale {t} is out of range: it must be 0 to 2592000 seconds (30 days)"
        ))),
    }
}

/// A list of CIDRs (`clusterCIDRs`, `serviceCIDRs`): networks, not addresses with host bits.
fn cidrs(conf: &NetConf, k: &str) -> Result<Vec<ipnet::IpNet>> {
    let list = key::<Vec<String>>(conf, k)?.unwrap_or_default();
    list.iter()
        .map(|c| {
            let net: ipnet::IpNet = c
                .parse()
                .map_err(|_| Error::config(format!("{k}: {c:?} is not a CIDR")))?;
            if net.trunc() != net {
                return Err(Error::config(format!(
                    "{k}: {c} has host bits set (the network is {})",
                    net.trunc()
                )));
            }
            Ok(net)
        })
        .collect()
}

impl AttacheConf {
    /// Every key read on its own; the errors of those that do not validate, in the order of the keys.
    fn read(conf: &NetConf) -> (AttacheConf, Vec<Error>) {
        let mut r = Reading { errors: Vec::new() };
        let names = |k: &str, default: &str| {
            key::<Names>(conf, k).map(|n| {
                n.map(Names::into_vec)
                    .unwrap_or_else(|| vec![default.to_string()])
            })
        };
        let cluster = cluster_ref(conf).unwrap_or_else(|e| {
            let why = e.to_string();
            r.errors.push(e);
            ClusterRef::Invalid(why)
        });
        let ac = AttacheConf {
            cluster,
            log_level: r.take(
                key::<String>(conf, "logLevel")
                    .and_then(|l| parse_level(l.as_deref().unwrap_or("info"))),
                || tracing::Level::INFO,
            ),
            conf_dir: r
                .take(absolute(conf, "confDir"), || None)
                .unwrap_or_else(|| DEFAULT_CONF_DIR.into()),
            cache_dir: r
                .take(absolute(conf, "cacheDir"), || None)
                .unwrap_or_else(|| DEFAULT_CACHE_DIR.into()),
            networks_dir: r.take(absolute(conf, "networksDir"), || None),
            kubeconfig: r.take(absolute(conf, "kubeconfig"), || None),
            bin_dir: r.take(key(conf, "binDir"), || None),
            log_file: r.take(key(conf, "logFile"), || None),
            default_networks: r.take(default_networks(conf), Vec::new),
            max_attachments: r.take(max_attachments(conf), || DEFAULT_MAX_ATTACHMENTS),
            api_timeout: r.take(api_timeout(conf), || DEFAULT_API_TIMEOUT),
            ready_file: r.take(absolute(conf, "readyFile"), || None),
            nad_mirror: r.take(absolute(conf, "nadMirror"), || None),
            agent_socket: r.take(absolute(conf, "agentSocket"), || None),
            nad_mirror_max_stale: r.take(max_stale(conf), || crate::k8s::mirror::DEFAULT_MAX_STALE),
            pod_routing: r.take(key(conf, "podRouting"), || None).unwrap_or_default(),
            cluster_cidrs: r.take(cidrs(conf, "clusterCIDRs"), Vec::new),
            service_cidrs: r.take(cidrs(conf, "serviceCIDRs"), Vec::new),
            physnets_file: r
                .take(absolute(conf, "physnetsFile"), || None)
                .unwrap_or_else(|| crate::attach::nic::PHYSNETS_FILE.into()),
            namespace_isolation: r
                .take(key(conf, "namespaceIsolation"), || None)
                .unwrap_or(true),
            global_namespaces: r.take(names("globalNamespaces", "default"), || {
                vec!["default".into()]
            }),
            system_namespaces: r.take(names("systemNamespaces", "kube-system"), || {
                vec!["kube-system".into()]
            }),
            multus_namespace: r
                .take(key(conf, "multusNamespace"), || None)
                .unwrap_or_else(|| "kube-system".into()),
            device_checkpoint: r
                .take(key(conf, "deviceCheckpoint"), || None)
                .unwrap_or_else(|| crate::k8s::devices::DEFAULT_CHECKPOINT.into()),
            device_info_dir: r
                .take(key(conf, "deviceInfoDir"), || None)
                .unwrap_or_else(|| crate::k8s::devices::DEFAULT_DEVINFO_DIR.into()),
        };
        (ac, r.errors)
    }

    /// The configuration ADD, CHECK, STATUS and GC run with: any key that does not validate refuses it.
    pub fn from_conf(conf: &NetConf) -> Result<AttacheConf> {
        let (ac, errors) = AttacheConf::read(conf);
        match errors.into_iter().next() {
            None => Ok(ac),
            Some(first) => Err(first),
        }
    }

    /// The configuration as DEL reads it: what teardown needs must never be refused because something
    /// else in the configuration is wrong (a DEL that fails forever strands the pod's sandbox). Each key
    /// that does not validate is ignored with a warning and its default used; an unusable
    /// `clusterNetwork` leaves only the record to go by.
    pub fn for_teardown(conf: &NetConf) -> AttacheConf {
        let (ac, errors) = AttacheConf::read(conf);
        for e in &errors {
            tracing::warn!("DEL ignores part of the configuration: {e}");
        }
        ac
    }

    /// Load the cluster network's configuration. `default_version` applies to a conf that names none.
    pub fn cluster_network(&self, default_version: &str) -> Result<NetworkList> {
        let list = match &self.cluster {
            ClusterRef::Inline(v) => NetworkList::from_value(v, default_version)?,
            ClusterRef::Named(name) => load_named(&self.conf_dir, name, default_version)?,
            ClusterRef::Invalid(why) => return Err(Error::config(why.clone())),
        };
        if list.name.is_empty() {
            return Err(Error::config("clusterNetwork has no \"name\""));
        }
        crate::cni::conf::validate_network_name(&list.name)?;
        Ok(list)
    }

    /// Whether `attache install` has run since the node started (`readyFile`; none named: always).
    pub fn check_installed(&self) -> Result<()> {
        match &self.ready_file {
            Some(f) if !f.exists() => Err(Error::NotReady(format!(
                "attache has not been installed on this node since it started: {} is missing (the DaemonSet's `attache install` writes it)",
                f.display()
            ))),
            _ => Ok(()),
        }
    }

    /// The directories searched for delegate binaries: `binDir` first, then `CNI_PATH`.
    pub fn search_path(&self, cni_path: &[PathBuf]) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.bin_dir.iter().cloned().collect();
        dirs.extend(
            cni_path
                .iter()
                .filter(|p| Some(*p) != self.bin_dir.as_ref())
                .cloned(),
        );
        dirs
    }
}

/// The largest configuration file read for its attache plugin.
const MAX_CONF: u64 = 1 << 20;

/// attache's plugin in a conf or conflist.
pub fn attache_plugin(v: &Value) -> Option<&Value> {
    let is_attache =
        |p: &&Value| p.get("type").and_then(Value::as_str) == Some(crate::engine::META_NAME);
    match v.get("plugins").and_then(Value::as_array) {
        Some(list) => list.iter().find(is_attache),
        None => Some(v).filter(is_attache),
    }
}

/// The cacheDir of attache's plugin in a conf or conflist (`file` names it in errors).
pub fn cache_dir_of(v: &Value, file: &Path) -> Result<PathBuf> {
    let plugin = attache_plugin(v).ok_or_else(|| {
        Error::config(format!(
            "{} has no plugin of type {:?}",
            file.display(),
            crate::engine::META_NAME
        ))
    })?;
    match plugin.get("cacheDir") {
        None | Some(Value::Null) => Ok(DEFAULT_CACHE_DIR.into()),
        Some(Value::String(d)) if Path::new(d).is_absolute() => Ok(d.into()),
        Some(other) => Err(Error::config(format!(
            "{}: cacheDir must be an absolute path, got {other}",
            file.display()
        ))),
    }
}

/// The cacheDir of attache's plugin in the conf or conflist `file` (an operator's command's question);
/// `None` when there is no such file.
pub fn cache_dir_in(file: &Path) -> Result<Option<PathBuf>> {
    let bytes = match crate::files::read_bounded(file, MAX_CONF) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", file.display()), e)),
    };
    let v: Value = serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
        what: file.display().to_string(),
        source,
    })?;
    cache_dir_of(&v, file).map(Some)
}

impl AttacheConf {
    /// The configuration a teardown outside a runtime's DEL runs with (`attache inspect --gc`): attache's
    /// plugin in `file`, read leniently as DEL reads it (its `binDir` finds delegated plugins), with
    /// `cache_dir`; without a readable file, the defaults.
    pub fn for_teardown_in(file: &Path, cache_dir: &Path) -> AttacheConf {
        let mut raw = crate::files::read_bounded(file, MAX_CONF)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| attache_plugin(&v).and_then(Value::as_object).cloned())
            .unwrap_or_default();
        raw.insert("cniVersion".into(), "1.1.0".into());
        raw.insert("type".into(), crate::engine::META_NAME.into());
        raw.entry("name").or_insert_with(|| "attache".into());
        raw.insert("cacheDir".into(), cache_dir.display().to_string().into());
        let conf = NetConf::from_value(Value::Object(raw)).unwrap_or_else(|e| {
            tracing::warn!("{}: {e}: tearing down with the defaults", file.display());
            NetConf::from_value(serde_json::json!({
                "cniVersion": "1.1.0", "name": "attache", "type": crate::engine::META_NAME,
                "cacheDir": cache_dir
            }))
            .expect("a literal configuration")
        });
        AttacheConf::for_teardown(&conf)
    }
}

/// `logFile` and `logLevel` read straight from the raw keys, so that logging starts before (and
/// whether or not) the rest of the configuration validates.
pub fn logging_of(conf: &NetConf) -> (Option<PathBuf>, tracing::Level) {
    let file = conf
        .raw
        .get("logFile")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let level = conf
        .raw
        .get("logLevel")
        .and_then(Value::as_str)
        .and_then(|l| parse_level(l).ok())
        .unwrap_or(tracing::Level::INFO);
    (file, level)
}

fn parse_level(s: &str) -> Result<tracing::Level> {
    use tracing::Level;
    Ok(match s.to_ascii_lowercase().as_str() {
        "error" | "panic" => Level::ERROR,
        "warn" | "warning" => Level::WARN,
        "info" => Level::INFO,
        "debug" | "verbose" => Level::DEBUG,
        "trace" => Level::TRACE,
        other => {
            return Err(Error::config(format!(
                "logLevel {other:?} is not one of error, warn, info, debug, trace"
            )));
        }
    })
}

/// Find a network by file name or by network name in `dir`, as runtimes and Multus do.
pub fn load_named(dir: &Path, name: &str, default_version: &str) -> Result<NetworkList> {
    let read = |p: &Path| -> Result<NetworkList> {
        let bytes = crate::files::read_bounded(p, crate::cni::skel::MAX_STDIN)
            .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
            what: p.display().to_string(),
            source,
        })?;
        NetworkList::from_value(&v, default_version).map_err(|e| e.context(p.display()))
    };
    let direct = Path::new(name);
    if direct.is_absolute() {
        return read(direct);
    }
    if name.contains('/') {
        return Err(Error::config(format!(
            "clusterNetwork {name:?}: a name in confDir cannot contain '/'"
        )));
    }
    for candidate in [
        name.to_string(),
        format!("{name}.conflist"),
        format!("{name}.conf"),
        format!("{name}.json"),
    ] {
        let p = dir.join(&candidate);
        if p.is_file() {
            return read(&p);
        }
    }
    // By the network's `name`, scanning confDir in order (`.conflist` wins over `.conf` of the same name).
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for ext in ["conflist", "conf", "json"] {
        for p in files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == ext))
        {
            if let Ok(list) = read(p)
                && list.name == name
            {
                return Ok(list);
            }
        }
    }
    Err(Error::NotReady(format!(
        "network {name:?} is not configured: no file of that name and no network of that name in {}",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> NetConf {
        NetConf::from_value(v).unwrap()
    }

    #[test]
    fn cache_dir_from_a_configuration() {
        let f = Path::new("/x/00-attache.conflist");
        let conflist = json!({"cniVersion": "1.0.0", "name": "attache", "plugins": [
            {"type": "attache", "cacheDir": "/var/lib/elsewhere"}, {"type": "portmap"}]});
        assert_eq!(
            cache_dir_of(&conflist, f).unwrap(),
            PathBuf::from("/var/lib/elsewhere")
        );
        let conf = json!({"cniVersion": "1.0.0", "name": "attache", "type": "attache"});
        assert_eq!(
            cache_dir_of(&conf, f).unwrap(),
            PathBuf::from(DEFAULT_CACHE_DIR)
        );
        let e = cache_dir_of(&json!({"plugins": [{"type": "ptp"}]}), f).unwrap_err();
        assert!(e.to_string().contains("no plugin of type"), "{e}");
        assert!(cache_dir_of(&json!({"type": "attache", "cacheDir": "rel"}), f).is_err());
        assert!(
            cache_dir_in(Path::new("/nonexistent/attache.conflist"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn an_inspect_teardown_reads_the_installed_plugin_leniently() {
        let d = crate::testutil::tempdir("teardown-conf");
        let f = d.join("00-attache.conflist");
        std::fs::write(
            &f,
            json!({"cniVersion": "1.0.0", "name": "attache", "plugins": [
                {"type": "attache", "binDir": "/opt/x/bin", "maxAttachments": "many",
                 "cacheDir": "/elsewhere"}]})
            .to_string(),
        )
        .unwrap();
        let a = AttacheConf::for_teardown_in(&f, Path::new("/var/lib/y"));
        assert_eq!(a.bin_dir, Some(PathBuf::from("/opt/x/bin")));
        assert_eq!(a.cache_dir, PathBuf::from("/var/lib/y"));
        assert_eq!(a.max_attachments, DEFAULT_MAX_ATTACHMENTS);
        let a = AttacheConf::for_teardown_in(&d.join("missing"), Path::new("/var/lib/z"));
        assert_eq!(a.cache_dir, PathBuf::from("/var/lib/z"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn requires_cluster_network() {
        let c = conf(json!({"cniVersion":"1.0.0","name":"a","type":"attache"}));
        assert_eq!(AttacheConf::from_conf(&c).unwrap_err().cni_code(), 7);
        let c = conf(json!({"cniVersion":"1.0.0","name":"a","type":"attache","clusterNetwork":5}));
        assert_eq!(AttacheConf::from_conf(&c).unwrap_err().cni_code(), 7);
        let c = conf(
            json!({"cniVersion":"1.0.0","name":"a","type":"attache","clusterNetwork":{"name":"x"}}),
        );
        assert_eq!(AttacheConf::from_conf(&c).unwrap_err().cni_code(), 7);
        let c = conf(
            json!({"cniVersion":"1.0.0","name":"a","type":"attache","clusterNetwork":"x","logLevel":"loud"}),
        );
        assert_eq!(AttacheConf::from_conf(&c).unwrap_err().cni_code(), 7);
        let c = conf(
            json!({"cniVersion":"1.0.0","name":"a","type":"attache","clusterNetwork":"x","cacheDir":"rel"}),
        );
        assert_eq!(AttacheConf::from_conf(&c).unwrap_err().cni_code(), 7);
    }

    #[test]
    fn teardown_reads_what_it_can() {
        let c = conf(json!({"cniVersion":"1.0.0","name":"a","type":"attache",
            "clusterNetwork": 5, "cacheDir": "/var/lib/x", "logLevel": "loud",
            "maxAttachments": 0, "networksDir": "relative"}));
        assert!(AttacheConf::from_conf(&c).is_err());
        let a = AttacheConf::for_teardown(&c);
        assert_eq!(a.cache_dir, PathBuf::from("/var/lib/x"));
        assert_eq!(a.log_level, tracing::Level::INFO);
        assert_eq!(a.max_attachments, DEFAULT_MAX_ATTACHMENTS);
        assert_eq!(a.networks_dir, None);
        assert!(matches!(a.cluster, ClusterRef::Invalid(_)));
        assert_eq!(a.cluster_network("1.0.0").unwrap_err().cni_code(), 7);
        let c = conf(json!({"cniVersion":"1.0.0","name":"a","type":"attache",
            "clusterNetwork": "net", "logLevel": "loud"}));
        let a = AttacheConf::for_teardown(&c);
        assert_eq!(a.cluster, ClusterRef::Named("net".into()));
    }

    #[test]
    fn teardown_takes_every_right_key_whatever_the_others_say() {
        let keys = [
            "clusterNetwork",
            "confDir",
            "binDir",
            "cacheDir",
            "logFile",
            "logLevel",
            "kubeconfig",
            "networksDir",
            "namespaceIsolation",
            "globalNamespaces",
            "systemNamespaces",
            "defaultNetworks",
            "multusNamespace",
            "deviceCheckpoint",
            "deviceInfoDir",
            "maxAttachments",
            "apiTimeout",
        ];
        // Every key wrong at once: ADD refuses, DEL reads the defaults and never panics.
        let mut all = json!({"cniVersion":"1.0.0","name":"a","type":"attache"});
        for k in keys {
            all[k] = json!({"wrong": [1]});
        }
        assert_eq!(
            AttacheConf::from_conf(&conf(all.clone()))
                .unwrap_err()
                .cni_code(),
            7
        );
        let a = AttacheConf::for_teardown(&conf(all.clone()));
        assert_eq!(a.cache_dir, PathBuf::from(DEFAULT_CACHE_DIR));
        assert_eq!(a.api_timeout, DEFAULT_API_TIMEOUT);
        assert!(
            matches!(a.cluster, ClusterRef::Invalid(ref why) if why.contains("clusterNetwork"))
        );
        // One right key among wrong ones is used.
        all["cacheDir"] = json!("/var/lib/y");
        all["apiTimeout"] = json!(7);
        let a = AttacheConf::for_teardown(&conf(all));
        assert_eq!(a.cache_dir, PathBuf::from("/var/lib/y"));
        assert_eq!(a.api_timeout, std::time::Duration::from_secs(7));
    }

    #[test]
    fn kubernetes_keys() {
        let c =
            conf(json!({"cniVersion":"1.0.0","name":"a","type":"attache","clusterNetwork":"net"}));
        let a = AttacheConf::from_conf(&c).unwrap();
        assert!(a.namespace_isolation);
        assert_eq!(a.global_namespaces, vec!["default"]);
        assert_eq!(a.system_namespaces, vec!["kube-system"]);
        let c = conf(
            json!({"cniVersion":"1.0.0","name":"a","type":"attache","clusterNetwork":"net",
            "namespaceIsolation": false, "globalNamespaces": "shared, infra", "systemNamespaces": ["kube-system","ops"],
            "defaultNetworks": ["mon", "infra/logs"], "networksDir": "/etc/attache/networks"}),
        );
        let a = AttacheConf::from_conf(&c).unwrap();
        assert!(!a.namespace_isolation);
        assert_eq!(a.global_namespaces, vec!["shared", "infra"]);
        assert_eq!(a.default_networks, vec!["mon", "infra/logs"]);
        for bad in [
            json!({"defaultNetworks": ["Bad_Name"]}),
            json!({"networksDir": "rel"}),
            json!({"kubeconfig": 5}),
            json!({"maxAttachments": 0}),
            json!({"maxAttachments": 5000}),
            json!({"apiTimeout": 0}),
            json!({"apiTimeout": "2s"}),
        ] {
            let mut v =
                json!({"cniVersion":"1.0.0","name":"a","type":"attache","clusterNetwork":"net"});
            for (k, x) in bad.as_object().unwrap() {
                v[k] = x.clone();
            }
            assert_eq!(
                AttacheConf::from_conf(&conf(v)).unwrap_err().cni_code(),
                7,
                "{bad}"
            );
        }
    }

    #[test]
    fn defaults_and_search_path() {
        let c = conf(
            json!({"cniVersion":"1.0.0","name":"a","type":"attache","clusterNetwork":"net","binDir":"/opt/cni/bin"}),
        );
        let a = AttacheConf::from_conf(&c).unwrap();
        assert_eq!(a.cache_dir, PathBuf::from(DEFAULT_CACHE_DIR));
        assert_eq!(a.conf_dir, PathBuf::from(DEFAULT_CONF_DIR));
        assert_eq!(
            a.search_path(&[PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")]),
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn finds_cluster_network_by_file_or_name() {
        let d = std::env::temp_dir().join(format!("attache-confdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("10-flat.conflist"),
            r#"{"cniVersion":"0.4.0","name":"flat","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(
            d.join("20-other.conf"),
            r#"{"cniVersion":"1.0.0","name":"other","type":"ptp"}"#,
        )
        .unwrap();
        std::fs::write(d.join("30-broken.conf"), "{").unwrap();
        let mk = |name: &str| {
            AttacheConf::from_conf(&conf(
                json!({"cniVersion":"1.0.0","name":"a","type":"attache",
                "clusterNetwork": name, "confDir": d}),
            ))
            .unwrap()
        };
        assert_eq!(
            mk("10-flat.conflist")
                .cluster_network("1.0.0")
                .unwrap()
                .name,
            "flat"
        );
        assert_eq!(mk("10-flat").cluster_network("1.0.0").unwrap().name, "flat");
        assert_eq!(
            mk("flat")
                .cluster_network("1.0.0")
                .unwrap()
                .version
                .to_string(),
            "0.4.0"
        );
        assert_eq!(
            mk("other").cluster_network("1.0.0").unwrap().plugin_type(0),
            "ptp"
        );
        let abs = d.join("20-other.conf");
        assert_eq!(
            mk(abs.to_str().unwrap())
                .cluster_network("1.0.0")
                .unwrap()
                .name,
            "other"
        );
        // Not there (yet): the node is not ready, and ADD says try again.
        assert_eq!(
            mk("nope").cluster_network("1.0.0").unwrap_err().cni_code(),
            11
        );
        assert_eq!(
            mk("30-broken.conf")
                .cluster_network("1.0.0")
                .unwrap_err()
                .cni_code(),
            6
        );
        assert_eq!(
            mk("../etc")
                .cluster_network("1.0.0")
                .unwrap_err()
                .cni_code(),
            7
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
