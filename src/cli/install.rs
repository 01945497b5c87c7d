//! `attache install` and `attache uninstall`: put attache on a node and keep it there, or take it off.
//!
//! Install copies the binary into the node's CNI bin dir (temp file + rename: an ADD never execs a
//! half-written binary, and a running one is never "text file busy"), optionally under the drop-in names
//! too (an existing plugin of that name is kept aside and restored by uninstall); keeps a kubeconfig whose
//! `tokenFile` is a copy of the pod's projected service-account token, rewritten atomically whenever the
//! kubelet rotates it; waits for the cluster network's configuration (the first `.conf` / `.conflist` /
//! `.json` in lexical order that is not attache's own, or the one named) and writes `00-attache.conflist`
//! wrapping it, with the cluster's capabilities plus the pod-annotations one — whole, under its final
//! name (written beside it, then renamed over it), and again whenever the cluster's configuration changes.
//! Uninstall removes that configuration first, so the node falls back to the cluster network and never
//! keeps a configuration naming a missing binary, then the kubeconfig, then the binaries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::engine::config::DEFAULT_CACHE_DIR;
use crate::error::{Error, Result};
use crate::k8s::api::ClusterCidrs;

/// The configuration attache writes: first in lexical order, so runtimes that load one file use it.
pub const CONF_NAME: &str = "00-attache.conflist";
/// attache's folder in the configuration dir: kubeconfig and token file.
const STATE_DIR: &str = "attache.d";
const POD_ANNOTATIONS: &str = "io.kubernetes.cri.pod-annotations";
/// The node's name, in [`STATE_DIR`] (see [`crate::ipam::cluster::NODE_NAME_FILE`]).
const NODE_NAME: &str = "node-name";
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(clap::Args, Debug, Clone)]
pub struct InstallArgs {
    /// The node's CNI binary dir, as mounted here.
    #[arg(long, default_value = "/host/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The node's CNI configuration dir, as mounted here.
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The configuration dir as the node sees it: the paths written into files name it.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub node_conf_dir: PathBuf,
    /// Also install attache under these plugin names (drop-in mode), e.g. bridge,macvlan,vlan,ipvlan.
    #[arg(long, value_delimiter = ',')]
    pub drop_in: Vec<String>,
    /// The cluster network's configuration file in the configuration dir (default: the first .conf /
    /// .conflist / .json in lexical order that is not attache's own).
    #[arg(long)]
    pub cluster_network: Option<String>,
    /// attache's state on the node (the configuration's cacheDir).
    #[arg(long, default_value = DEFAULT_CACHE_DIR)]
    pub cache_dir: PathBuf,
    /// Extra keys for the generated configuration, as a JSON object (networksDir, logFile,
    /// defaultNetworks ...).
    #[arg(long)]
    pub config: Option<String>,
    /// The service-account token to keep copied for the plugin (none: no kubeconfig is written).
    #[arg(long)]
    pub token: Option<PathBuf>,
    /// The API server's CA bundle.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The API server's URL (default: from KUBERNETES_SERVICE_HOST / _PORT).
    #[arg(long)]
    pub server: Option<String>,
    /// Do one pass (waiting for the cluster network up to --wait seconds) and exit, instead of staying
    /// to keep the configuration and the token current.
    #[arg(long)]
    pub once: bool,
    /// With --once: how long to wait for the cluster network's configuration.
    #[arg(long, default_value_t = 300)]
    pub wait: u64,
    /// Seconds between checks of the cluster network's configuration and the token.
    #[arg(long, default_value_t = 2)]
    pub interval: u64,
    /// The binary to install (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// This node's name, written for attache-ipam (default: $NODE_NAME, which the DaemonSet sets from
    /// the Downward API; none: attache-ipam falls back to the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// A folder of the node that a boot empties (a tmpfs), as mounted here: `ready` is written there
    /// once attache is in place, and until it is — after every boot — ADD answers "try again".
    #[arg(long, default_value = "/host/run/attache")]
    pub run_dir: PathBuf,
    /// The same folder as the node sees it (the configuration's `readyFile` names `ready` in it); ""
    /// leaves the check out.
    #[arg(long, default_value = "/run/attache")]
    pub node_run_dir: PathBuf,
    /// The node's mirror of NetworkAttachmentDefinitions that `attache agent` keeps (the
    /// configuration's `nadMirror`, a path of the node); "" leaves it out.
    #[arg(long, default_value = crate::engine::config::DEFAULT_NAD_MIRROR)]
    pub nad_mirror: PathBuf,
    /// The cluster's physical networks (its ConfigMap, mounted): this node's entries are written to
    /// attache.d/physnets.json, where `physicalNetwork` is looked up (see [`super::physnets`]).
    #[arg(long)]
    pub physnets: Option<PathBuf>,
    /// Label the Node `physnet.attache.dev/<name>=true` for each physical network it has, and remove
    /// the label of one it no longer has (needs `patch nodes`: deploy/'s attache-label-node role).
    #[arg(long, requires = "physnets")]
    pub label_node: bool,
}

/// The file in `--run-dir` that says attache was installed since the node started.
const READY: &str = "ready";

#[derive(clap::Args, Debug, Clone)]
pub struct UninstallArgs {
    #[arg(long, default_value = "/host/opt/cni/bin")]
    pub bin_dir: PathBuf,
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The drop-in names install created.
    #[arg(long, value_delimiter = ',')]
    pub drop_in: Vec<String>,
    /// attache's records, as this process sees them [default: the installed configuration's cacheDir].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Uninstall even though attache has records of pods on this node: nothing will tear their
    /// secondary networks down after that (the runtime's DEL goes to the cluster network alone).
    #[arg(long)]
    pub force: bool,
}

/// Write an installed file whole and durably ([`crate::files::replace`]).
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    crate::files::replace(path, bytes, mode, true)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Write only when the content differs (no event for runtimes watching the dir, no new inode).
pub fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    write_atomic(path, bytes, mode)?;
    Ok(true)
}

fn is_conf_file(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e == "conf" || e == "conflist" || e == "json")
        && !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Whether a configuration is attache's own (its meta-plugin), which is never the cluster network.
fn is_attache_conf(v: &Value) -> bool {
    let is = |p: &Value| p.get("type").and_then(Value::as_str) == Some(crate::engine::META_NAME);
    is(v)
        || v.get("plugins")
            .and_then(Value::as_array)
            .is_some_and(|ps| ps.iter().any(is))
}

/// The cluster network's configuration file and its content: the named one, or the first in lexical
/// order that is not attache's own. `None` while there is none (or it is not valid JSON yet).
pub fn find_cluster_conf(conf_dir: &Path, named: Option<&str>) -> Option<(PathBuf, Value)> {
    let read = |p: &Path| -> Option<Value> {
        serde_json::from_slice(&std::fs::read(p).ok()?)
            .ok()
            .filter(Value::is_object)
    };
    if let Some(n) = named {
        let p = conf_dir.join(n);
        return read(&p).map(|v| (p, v));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_conf_file(p) && p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != CONF_NAME))
        .find_map(|p| read(&p).filter(|v| !is_attache_conf(v)).map(|v| (p, v)))
}

/// The configuration attache writes around the cluster network's: the same `cniVersion` (the runtime
/// speaks it), the cluster's capabilities plus the pod-annotations one, the cluster network by file name.
/// How often the cluster's CIDRs are read again from the API (and after a failed read, a minute).
const CIDRS_EVERY: Duration = Duration::from_secs(600);
const CIDRS_RETRY: Duration = Duration::from_secs(60);

/// The cluster's CIDRs as last read, and when to read them again.
static CIDRS: std::sync::Mutex<Option<(std::time::Instant, ClusterCidrs)>> =
    std::sync::Mutex::new(None);

/// The cluster's pod and Service CIDRs for the configuration's `clusterCIDRs` / `serviceCIDRs`, read
/// from the API (kubeadm's ClusterConfiguration, ServiceCIDR objects) in a cluster (`--token`): a pod
/// routed by source whose default leaves the cluster network needs them. Empty where the API says
/// nothing or cannot be reached (a warning; the last good answer stays).
fn cluster_cidrs(args: &InstallArgs) -> ClusterCidrs {
    if args.token.is_none() {
        return ClusterCidrs::default();
    }
    let mut cached = CIDRS.lock().unwrap_or_else(|p| p.into_inner());
    let now = std::time::Instant::now();
    if let Some((next, c)) = &*cached
        && now < *next
    {
        return c.clone();
    }
    let read = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(e.to_string()))
        .and_then(|rt| {
            rt.block_on(async {
                let timeout = crate::engine::config::DEFAULT_API_TIMEOUT;
                crate::k8s::client::KubeApi::connect(None, timeout)
                    .await?
                    .cluster_cidrs()
                    .await
            })
        });
    match read {
        Ok(c) => {
            *cached = Some((now + CIDRS_EVERY, c.clone()));
            c
        }
        Err(e) => {
            eprintln!("attache: reading the cluster's CIDRs from the API: {e}");
            let last = cached.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
            *cached = Some((now + CIDRS_RETRY, last.clone()));
            last
        }
    }
}

pub fn generate_conf(
    cluster_file: &Path,
    cluster: &Value,
    args: &InstallArgs,
    kubeconfig: Option<&Path>,
    cidrs: &ClusterCidrs,
) -> Result<Value> {
    let version = cluster
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("1.0.0");
    let mut caps = Map::new();
    let plugins: Vec<&Value> = match cluster.get("plugins").and_then(Value::as_array) {
        Some(ps) => ps.iter().collect(),
        None => vec![cluster],
    };
    for p in plugins {
        if let Some(c) = p.get("capabilities").and_then(Value::as_object) {
            for (k, v) in c {
                if v == &Value::Bool(true) {
                    caps.insert(k.clone(), Value::Bool(true));
                }
            }
        }
    }
    caps.insert(POD_ANNOTATIONS.into(), Value::Bool(true));
    let file = cluster_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut plugin = json!({
        "type": crate::engine::META_NAME,
        "capabilities": caps,
        "clusterNetwork": file,
        "confDir": args.node_conf_dir,
        "cacheDir": args.cache_dir,
    });
    if let Some(kc) = kubeconfig {
        plugin["kubeconfig"] = json!(kc);
    }
    if readiness(args) {
        plugin["readyFile"] = json!(args.node_run_dir.join(READY));
        plugin["agentSocket"] = json!(args.node_run_dir.join(crate::k8s::relay::SOCKET_NAME));
    }
    if !args.nad_mirror.as_os_str().is_empty() {
        plugin["nadMirror"] = json!(args.nad_mirror);
    }
    // The map install writes, where the node sees it (the plugin's default path needs no key).
    let physnets = args
        .node_conf_dir
        .join(STATE_DIR)
        .join(super::physnets::MAP_NAME);
    if args.physnets.is_some() && physnets != Path::new(crate::attach::nic::PHYSNETS_FILE) {
        plugin["physnetsFile"] = json!(physnets);
    }
    // What the API says of the cluster's networks (`--config` may say otherwise: it comes last).
    if !cidrs.pods.is_empty() {
        plugin["clusterCIDRs"] = json!(cidrs.pods);
    }
    if !cidrs.services.is_empty() {
        plugin["serviceCIDRs"] = json!(cidrs.services);
    }
    if let Some(extra) = &args.config {
        let extra: Value = serde_json::from_str(extra)
            .map_err(|e| Error::config(format!("--config is not JSON: {e}")))?;
        let Value::Object(extra) = extra else {
            return Err(Error::config("--config must be a JSON object"));
        };
        for (k, v) in extra {
            plugin[k] = v;
        }
    }
    Ok(json!({"cniVersion": version, "name": crate::engine::META_NAME, "plugins": [plugin]}))
}

/// Copy the binary in as `attache` and under the drop-in names (hard links of it, each renamed into
/// place). A plugin of a drop-in name that is not attache is kept as `.<name>.before-attache`.
fn install_binaries(args: &InstallArgs) -> Result<()> {
    let me = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| Error::io("finding this binary", e))?,
    };
    std::fs::metadata(&me).map_err(|e| Error::io(format!("reading {}", me.display()), e))?;
    std::fs::create_dir_all(&args.bin_dir)
        .map_err(|e| Error::io(format!("creating {}", args.bin_dir.display()), e))?;
    // The binary is copied and compared a buffer at a time, never read whole: the DaemonSet's container
    // runs under a memory limit of about twice its size.
    let install = |target: &Path| {
        crate::files::replace_with_copy(target, &me, 0o755, true)
            .map_err(|e| Error::io(format!("writing {}", target.display()), e))
    };
    // attache, and attache-ipam (the cluster IPAM plugin, found by exec'd plugins under that name).
    for name in [crate::engine::META_NAME, crate::ipam::cluster::TYPE] {
        let p = args.bin_dir.join(name);
        if !crate::files::same_content(&p, &me) {
            install(&p)?;
            eprintln!("attache: installed {}", p.display());
        }
    }
    for name in &args.drop_in {
        crate::cni::conf::validate_plugin_type(name)?;
        if crate::attach::NativeType::of(name).is_none() {
            return Err(Error::config(format!(
                "--drop-in {name:?}: attache implements {}, host-local and static",
                crate::attach::NativeType::names()
            )));
        }
        let target = args.bin_dir.join(name);
        match std::fs::symlink_metadata(&target) {
            Ok(_) if crate::files::same_content(&target, &me) => continue,
            Ok(_) => {
                let keep = args.bin_dir.join(format!(".{name}.before-attache"));
                if !keep.exists() {
                    std::fs::rename(&target, &keep)
                        .map_err(|e| Error::io(format!("keeping {}", target.display()), e))?;
                    eprintln!("attache: kept the existing {name} as {}", keep.display());
                }
            }
            Err(_) => {}
        }
        install(&target)?;
        eprintln!("attache: installed {} (drop-in)", target.display());
    }
    Ok(())
}

/// The kubeconfig the plugin reads: the API server, its CA, and a token *file* — a copy of the
/// projected token, which [`refresh_token`] keeps current. Its path as the node sees it.
fn write_kubeconfig(args: &InstallArgs) -> Result<Option<PathBuf>> {
    let token = match &args.token {
        Some(t) => t.clone(),
        None if Path::new(SA_DIR).join("token").exists() => Path::new(SA_DIR).join("token"),
        None => return Ok(None),
    };
    let ca = args
        .ca
        .clone()
        .unwrap_or_else(|| Path::new(SA_DIR).join("ca.crt"));
    let server = match &args.server {
        Some(s) => s.clone(),
        None => {
            let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
                Error::config(
                    "no --server and no KUBERNETES_SERVICE_HOST: where is the API server?",
                )
            })?;
            let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
            if host.contains(':') {
                format!("https://[{host}]:{port}")
            } else {
                format!("https://{host}:{port}")
            }
        }
    };
    let dir = args.conf_dir.join(STATE_DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let ca_bytes =
        std::fs::read(&ca).map_err(|e| Error::io(format!("reading {}", ca.display()), e))?;
    write_if_changed(&dir.join("ca.crt"), &ca_bytes, 0o644)?;
    refresh_token(args, &token)?;
    let node_dir = args.node_conf_dir.join(STATE_DIR);
    let kc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {"server": server,
                      "certificate-authority": node_dir.join("ca.crt")}}],
        "users": [{"name": "attache", "user": {"tokenFile": node_dir.join("token")}}],
        "contexts": [{"name": "attache", "context": {"cluster": "cluster", "user": "attache"}}],
        "current-context": "attache"
    });
    let text = serde_json::to_string_pretty(&kc).map_err(|e| Error::Internal(e.to_string()))?;
    write_if_changed(&dir.join("attache.kubeconfig"), text.as_bytes(), 0o600)?;
    Ok(Some(node_dir.join("attache.kubeconfig")))
}

/// Copy the projected token into the token file when it changed (the kubelet rotates it at 80% of
/// its lifetime, so the copy is renewed long before it expires).
fn refresh_token(args: &InstallArgs, source: &Path) -> Result<()> {
    let token = std::fs::read(source)
        .map_err(|e| Error::io(format!("reading the token {}", source.display()), e))?;
    // `kubectl create token ... > file` ends it in a newline: the copy is the token alone.
    let token = token.trim_ascii();
    if token.is_empty() {
        return Err(Error::config(format!(
            "the token {} is empty",
            source.display()
        )));
    }
    let path = args.conf_dir.join(STATE_DIR).join("token");
    if write_if_changed(&path, token, 0o600)? {
        eprintln!("attache: token file {} updated", path.display());
    }
    Ok(())
}

/// `attache.d/node-name`: the node's name for attache-ipam (a CNI plugin sees no Downward API).
fn write_node_name(args: &InstallArgs) -> Result<()> {
    let name = args.node_name.clone().or_else(|| {
        std::env::var("NODE_NAME")
            .ok()
            .filter(|n| !n.trim().is_empty())
    });
    let Some(name) = name else { return Ok(()) };
    crate::ipam::cluster::validate_node(name.trim(), "--node-name / $NODE_NAME")?;
    let dir = args.conf_dir.join(STATE_DIR);
    crate::files::ensure_real_dir(&dir)?;
    write_if_changed(&dir.join(NODE_NAME), name.trim().as_bytes(), 0o644)?;
    Ok(())
}

/// One pass: the kubeconfig and token, then (if the cluster network is configured) attache's
/// configuration. Whether the configuration is in place.
fn pass(args: &InstallArgs) -> Result<bool> {
    let kubeconfig = write_kubeconfig(args)?;
    write_node_name(args)?;
    let node = args
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.trim().is_empty());
    if let Err(e) = super::physnets::pass(args, node.as_deref().map(str::trim)) {
        // The map and the labels are the physical networks' business: the cluster network goes on.
        eprintln!("attache: physical networks: {e}");
    }
    let Some((file, cluster)) = find_cluster_conf(&args.conf_dir, args.cluster_network.as_deref())
    else {
        return Ok(false);
    };
    let cidrs = cluster_cidrs(args);
    let conf = generate_conf(&file, &cluster, args, kubeconfig.as_deref(), &cidrs)?;
    let text = serde_json::to_string_pretty(&conf).map_err(|e| Error::Internal(e.to_string()))?;
    if write_if_changed(&args.conf_dir.join(CONF_NAME), text.as_bytes(), 0o644)? {
        eprintln!(
            "attache: wrote {} around the cluster network {}",
            args.conf_dir.join(CONF_NAME).display(),
            file.display()
        );
    }
    mark_ready(args)?;
    Ok(true)
}

/// Whether the node's run folder is here (the DaemonSet mounts it): only then does the configuration
/// name a readiness file — a manifest from before it, without the mount, must not leave every ADD
/// waiting for a file written where the node never sees it.
fn readiness(args: &InstallArgs) -> bool {
    !args.node_run_dir.as_os_str().is_empty() && args.run_dir.is_dir()
}

/// The first bytes of the readiness file: uninstall removes only a file that says so.
const READY_MARK: &str = "installed by attache";

/// Say that attache is in place since this boot (binaries and configuration written): ADD stops
/// answering "try again". Once per boot: the folder is a tmpfs.
fn mark_ready(args: &InstallArgs) -> Result<()> {
    if !readiness(args) {
        return Ok(());
    }
    let ready = args.run_dir.join(READY);
    if ready.exists() {
        return Ok(());
    }
    write_atomic(
        &ready,
        format!("{READY_MARK} {}\n", env!("CARGO_PKG_VERSION")).as_bytes(),
        0o644,
    )?;
    eprintln!("attache: ready ({})", ready.display());
    Ok(())
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

pub fn install(args: &InstallArgs) -> Result<()> {
    install_binaries(args)?;
    if args.once {
        let end = std::time::Instant::now() + Duration::from_secs(args.wait);
        loop {
            if pass(args)? {
                return Ok(());
            }
            if std::time::Instant::now() >= end {
                return Err(Error::NotReady(format!(
                    "no cluster network configuration appeared in {} within {} s",
                    args.conf_dir.display(),
                    args.wait
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The DaemonSet's process: stay, keep the configuration and the token current, leave on SIGTERM
    // (files stay: taking attache off the node is `uninstall`'s decision).
    use nix::sys::signal::{SigHandler, Signal, signal};
    for s in [Signal::SIGTERM, Signal::SIGINT] {
        #[allow(unsafe_code)]
        // SAFETY: the handler only stores to an atomic.
        let installed = unsafe { signal(s, SigHandler::Handler(on_signal)) };
        installed.map_err(|e| Error::kernel("installing a signal handler", e))?;
    }
    let mut waiting_said = false;
    while !STOP.load(std::sync::atomic::Ordering::SeqCst) {
        match pass(args) {
            Ok(true) => waiting_said = false,
            Ok(false) if !waiting_said => {
                eprintln!(
                    "attache: waiting for the cluster network's configuration in {}",
                    args.conf_dir.display()
                );
                waiting_said = true;
            }
            Ok(false) => {}
            Err(e) => eprintln!("attache: {e}"),
        }
        let mut slept = Duration::ZERO;
        while slept < Duration::from_secs(args.interval.max(1))
            && !STOP.load(std::sync::atomic::Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_millis(100));
            slept += Duration::from_millis(100);
        }
    }
    Ok(())
}

/// The pods attache has records of in `args`' cacheDir (`namespace/name`, else the container ID).
fn recorded_pods(args: &UninstallArgs) -> Result<(PathBuf, Vec<String>)> {
    let conf = args.conf_dir.join(CONF_NAME);
    let dir = match &args.cache_dir {
        Some(d) => d.clone(),
        // A configuration that cannot be read is no reason to refuse: the default cacheDir is asked.
        None => match std::fs::read(&conf) {
            Ok(b) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&b).map_err(|source| Error::Decode {
                        what: conf.display().to_string(),
                        source,
                    })?;
                crate::engine::config::cache_dir_of(&v, &conf)?
            }
            Err(_) => crate::engine::config::DEFAULT_CACHE_DIR.into(),
        },
    };
    let store = crate::engine::record::RecordStore::new(&dir);
    let mut pods: Vec<String> = store
        .entries(None)
        .into_iter()
        .map(|e| match e.record {
            Ok(r) => r
                .pod
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .unwrap_or(r.container_id),
            Err(_) => e.container_id,
        })
        .collect();
    pods.sort();
    pods.dedup();
    Ok((dir, pods))
}

pub fn uninstall(args: &UninstallArgs) -> Result<()> {
    // Taken off with pods still attached, nothing tears their other networks down: the runtime's DEL
    // goes to the cluster network alone, and a runtime without CNI GC never says they are gone.
    let (cache_dir, pods) = recorded_pods(args)?;
    if !pods.is_empty() {
        let shown: Vec<&str> = pods.iter().take(5).map(String::as_str).collect();
        let more = match pods.len() > shown.len() {
            true => format!(" and {} more", pods.len() - shown.len()),
            false => String::new(),
        };
        let what = format!(
            "attache has records of {} pod{} on this node in {} ({}{more})",
            pods.len(),
            if pods.len() == 1 { "" } else { "s" },
            cache_dir.display(),
            shown.join(", ")
        );
        if !args.force {
            return Err(Error::Conflict(format!(
                "{what}: uninstalled now, their secondary networks would never be torn down. Drain the node first (kubectl drain), then `attache inspect --gc` tears down what is left; --force uninstalls anyway"
            )));
        }
        eprintln!("attache: --force: {what}; they are left as they are");
    }
    let rm = |p: &Path| -> Result<()> {
        match std::fs::remove_file(p) {
            Ok(()) => {
                eprintln!("attache: removed {}", p.display());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", p.display()), e)),
        }
    };
    // The readiness mark the configuration names (a path of the node: uninstall runs there).
    let installed: Option<Value> = std::fs::read(args.conf_dir.join(CONF_NAME))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let named = |key: &str| {
        installed
            .as_ref()
            .and_then(crate::engine::config::attache_plugin)
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let (ready, socket, mirror) = (named("readyFile"), named("agentSocket"), named("nadMirror"));
    // The configuration first: from now on runtimes use the cluster network's own.
    rm(&args.conf_dir.join(CONF_NAME))?;
    // Only attache's own readiness file (its name, its first words).
    if let Some(r) = ready.filter(|r| {
        r.file_name().is_some_and(|n| n == READY)
            && crate::files::read_bounded(r, 256)
                .is_ok_and(|b| b.starts_with(READY_MARK.as_bytes()))
    }) {
        rm(&r)?;
    }
    // The agent's socket (only a socket) and the node's mirror of the definitions.
    if let Some(s) = socket {
        use std::os::unix::fs::FileTypeExt;
        if std::fs::symlink_metadata(&s).is_ok_and(|m| m.file_type().is_socket()) {
            rm(&s)?;
        }
    }
    if let Some(m) = mirror {
        crate::k8s::mirror::Mirror::new(&m).clear()?;
    }
    let state = args.conf_dir.join(STATE_DIR);
    for f in ["attache.kubeconfig", "token", "ca.crt", NODE_NAME] {
        rm(&state.join(f))?;
    }
    let _ = std::fs::remove_dir(&state);
    let main = args.bin_dir.join(crate::engine::META_NAME);
    let ours = std::fs::read(&main).ok();
    for name in &args.drop_in {
        crate::cni::conf::validate_plugin_type(name)?;
        let target = args.bin_dir.join(name);
        // Only a drop-in that is attache goes; what it replaced comes back.
        if ours.is_some() && std::fs::read(&target).ok() == ours {
            rm(&target)?;
        }
        let kept = args.bin_dir.join(format!(".{name}.before-attache"));
        if kept.exists() && !target.exists() {
            std::fs::rename(&kept, &target)
                .map_err(|e| Error::io(format!("restoring {}", target.display()), e))?;
            eprintln!("attache: restored {}", target.display());
        }
    }
    let ipam = args.bin_dir.join(crate::ipam::cluster::TYPE);
    if ours.is_some() && std::fs::read(&ipam).ok() == ours {
        rm(&ipam)?;
    }
    rm(&main)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> InstallArgs {
        InstallArgs {
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            node_conf_dir: dir.join("net.d"),
            drop_in: vec![],
            cluster_network: None,
            cache_dir: dir.join("cache"),
            config: None,
            token: None,
            ca: None,
            server: None,
            once: true,
            wait: 0,
            interval: 1,
            binary: None,
            node_name: None,
            run_dir: dir.join("run"),
            node_run_dir: dir.join("run"),
            nad_mirror: dir.join("nads"),
            physnets: None,
            label_node: false,
        }
    }

    #[test]
    fn the_cluster_network_is_the_first_conf_that_is_not_attaches() {
        let d = crate::testutil::tempdir("install-find");
        let net = d.join("net.d");
        std::fs::create_dir_all(&net).unwrap();
        assert!(find_cluster_conf(&net, None).is_none());
        std::fs::write(net.join(CONF_NAME), r#"{"plugins":[{"type":"attache"}]}"#).unwrap();
        std::fs::write(
            net.join("05-other.conflist"),
            r#"{"plugins":[{"type":"attache"}]}"#,
        )
        .unwrap();
        std::fs::write(net.join("10-calico.conflist"), r#"{"name":"k8s-pod-network","cniVersion":"0.3.1","plugins":[{"type":"calico"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#).unwrap();
        std::fs::write(
            net.join("20-flannel.conf"),
            r#"{"name":"cbr0","type":"flannel"}"#,
        )
        .unwrap();
        std::fs::write(net.join(".hidden.conf"), r#"{"name":"x","type":"x"}"#).unwrap();
        std::fs::write(net.join("01-broken.conf"), "{ not json").unwrap();
        let (f, v) = find_cluster_conf(&net, None).unwrap();
        assert_eq!(f, net.join("10-calico.conflist"));
        let conf = generate_conf(
            &f,
            &v,
            &args(&d),
            Some(Path::new("/k")),
            &ClusterCidrs::default(),
        )
        .unwrap();
        assert_eq!(conf["cniVersion"], "0.3.1");
        assert_eq!(conf["plugins"][0]["clusterNetwork"], "10-calico.conflist");
        assert_eq!(
            conf["plugins"][0]["capabilities"],
            json!({"portMappings": true, POD_ANNOTATIONS: true})
        );
        assert_eq!(conf["plugins"][0]["kubeconfig"], "/k");
        let (f, _) = find_cluster_conf(&net, Some("20-flannel.conf")).unwrap();
        assert_eq!(f, net.join("20-flannel.conf"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn extra_keys_join_and_bad_ones_are_refused() {
        let d = Path::new("/nonexistent");
        let mut a = args(d);
        a.config = Some(r#"{"networksDir":"/etc/attache/networks","logLevel":"debug"}"#.into());
        let cidrs = ClusterCidrs {
            pods: vec!["10.244.0.0/16".parse().unwrap()],
            services: vec!["10.96.0.0/12".parse().unwrap()],
        };
        let c = generate_conf(
            Path::new("10-x.conf"),
            &json!({"type": "x"}),
            &a,
            None,
            &cidrs,
        )
        .unwrap();
        assert_eq!(c["plugins"][0]["networksDir"], "/etc/attache/networks");
        assert!(c["plugins"][0].get("kubeconfig").is_none());
        // The API's CIDRs go in; --config's own say otherwise.
        assert_eq!(c["plugins"][0]["clusterCIDRs"], json!(["10.244.0.0/16"]));
        assert_eq!(c["plugins"][0]["serviceCIDRs"], json!(["10.96.0.0/12"]));
        a.config = Some(r#"{"serviceCIDRs":["10.100.0.0/16"]}"#.into());
        let c = generate_conf(
            Path::new("10-x.conf"),
            &json!({"type": "x"}),
            &a,
            None,
            &cidrs,
        )
        .unwrap();
        assert_eq!(c["plugins"][0]["serviceCIDRs"], json!(["10.100.0.0/16"]));
        a.config = Some("[1]".into());
        assert!(generate_conf(Path::new("10-x.conf"), &json!({}), &a, None, &cidrs).is_err());
    }
}
