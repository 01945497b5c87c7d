//! The test bed: a uniquely named "node" netns standing in for the host, "pod" netns beside it, and a
//! private folder for configuration, IPAM state and records. Plugins (attache and Debian's reference
//! plugins) run inside the node netns per the CNI protocol. Everything is removed on drop — also when a
//! test fails or panics — and nothing ever touches the machine's own namespace or interfaces.
#![allow(dead_code)]

pub mod state;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// Where Debian's containernetworking-plugins live.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn attache_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_attache"))
}

/// Fail loudly when something a test needs is missing: CI must never skip silently.
pub fn require_reference_plugins() {
    for p in [
        "bridge",
        "ptp",
        "host-local",
        "static",
        "tuning",
        "sbr",
        "macvlan",
    ] {
        let path = Path::new(REFERENCE_DIR).join(p);
        assert!(
            path.exists(),
            "{} is missing: install Debian's containernetworking-plugins (scripts/test does)",
            path.display()
        );
    }
}

/// Record a reliability figure (failpoints exercised, kill trials, duplicates ...): printed, and appended
/// to `<target tmpdir>/reliability-figures.txt`, which scripts/test shows at the end of a run.
pub fn figure(line: &str) {
    use std::io::Write;
    println!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-figures.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Write NetworkAttachmentDefinitions of namespace `ns` (name, spec.config) into `<node>/networks`, the
/// folder a meta configuration names as `networksDir`; returns it.
pub fn write_nads(node: &Node, ns: &str, nads: &[(&str, Value)]) -> PathBuf {
    let dir = node.path("networks");
    std::fs::create_dir_all(&dir).unwrap();
    let yaml: String = nads
        .iter()
        .map(|(n, config)| {
            format!(
                "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: {n}\n  namespace: {ns}\nspec:\n  config: '{config}'\n---\n"
            )
        })
        .collect();
    std::fs::write(dir.join("nets.yaml"), yaml).unwrap();
    dir
}

/// A native bridge definition (`isGateway`, host-local on `subnet` in the node's IPAM folder).
pub fn bridge_nad(node: &Node, bridge: &str, subnet: &str) -> Value {
    serde_json::json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": bridge, "isGateway": true,
        "ipam": {"type": "host-local", "subnet": subnet, "dataDir": node.path("ipam")}})
}

/// The delegated cluster network of the meta-plugin tests: Debian's ptp with host-local, named `cluster`,
/// state in the node's folder.
pub fn ptp_cluster(node: &Node) -> Value {
    serde_json::json!({
        "cniVersion": "1.0.0", "name": "cluster", "type": "ptp",
        "ipam": {"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": node.path("ipam"),
                 "routes": [{"dst": "0.0.0.0/0"}]}
    })
}

/// A meta configuration with [`ptp_cluster`], definitions from `networks_dir`, and the runtime passing
/// the pod's networks annotation.
pub fn meta_conf(node: &Node, networks_dir: &Path, networks: &str) -> Value {
    serde_json::json!({
        "cniVersion": "1.1.0", "name": "attache", "type": "attache",
        "clusterNetwork": ptp_cluster(node),
        "cacheDir": node.path("cache"),
        "networksDir": networks_dir,
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"k8s.v1.cni.cncf.io/networks": networks}}
    })
}

/// The outcome lines attache logged (its `logFile` at `<node>/attache.log`) for `command`, one per
/// invocation.
pub fn logged(node: &Node, command: &str) -> Vec<String> {
    std::fs::read_to_string(node.path("attache.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("command=\"{command}\"")))
        .map(str::to_string)
        .collect()
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn must(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first address of a CNI result, without its prefix length.
pub fn first_ip(result: &Value) -> String {
    let a = result["ips"][0]["address"]
        .as_str()
        .expect("the result has an address");
    a.split('/').next().unwrap_or_default().to_string()
}

/// The outcome of one plugin invocation.
#[derive(Debug)]
pub struct CniOutput {
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutput {
    /// stdout as JSON (it must be exactly one document, or empty).
    pub fn json(&self) -> Value {
        if self.stdout.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {:?}", self.stdout))
    }

    pub fn ok(self) -> Value {
        assert_eq!(
            self.exit, 0,
            "plugin failed: {} {}",
            self.stdout, self.stderr
        );
        self.json()
    }

    /// Assert a CNI error with `code`; returns the error document.
    pub fn err(self, code: u64) -> Value {
        let v = self.json();
        assert_eq!(
            self.exit, 1,
            "expected exit 1 with code {code}, got {}: {}",
            self.exit, self.stdout
        );
        assert_eq!(v["code"].as_u64(), Some(code), "wrong code: {v}");
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "no msg: {v}"
        );
        v
    }
}

/// A CNI call: command, container, interface and extra environment.
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<String>,
    pub ifname: &'a str,
    pub args: &'a str,
    pub path: String,
    pub extra_env: Vec<(String, String)>,
    pub bin: PathBuf,
}

pub struct Node {
    pub name: String,
    pub pods: Vec<String>,
    pub dir: PathBuf,
}

impl Node {
    /// A fresh node netns (with `lo` up) and a private folder.
    pub fn new(tag: &str) -> Node {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("att-{tag}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Construct first so that Drop cleans up even if a later step panics.
        let node = Node {
            name: name.clone(),
            pods: Vec::new(),
            dir,
        };
        must(Command::new("ip").args(["netns", "add", &name]));
        must(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        node
    }

    /// A fresh node with `nic0`, one end of a veth pair (mtu 1500, both ends up), standing in for the
    /// node's NIC (a macvlan master).
    pub fn with_nic(tag: &str) -> Node {
        let node = Node::new(tag);
        for args in [
            &[
                "link", "add", "nic0", "mtu", "1500", "type", "veth", "peer", "name", "nicpeer",
            ][..],
            &["link", "set", "nic0", "up"],
            &["link", "set", "nicpeer", "up"],
        ] {
            assert!(node.ip_do(args), "ip {args:?}");
        }
        node
    }

    /// Run `ip -n <node> ARGS`; whether it succeeded.
    pub fn ip_do(&self, args: &[&str]) -> bool {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
            .status
            .success()
    }

    /// A new pod netns; returns its path. Never one an earlier pod of the node had (a runtime does not
    /// reuse a dead sandbox's netns path either).
    pub fn pod(&mut self) -> String {
        let name = format!("{}-p{}", self.name, COUNTER.fetch_add(1, Ordering::SeqCst));
        self.pods.push(name.clone());
        must(Command::new("ip").args(["netns", "add", &name]));
        must(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        format!("/run/netns/{name}")
    }

    /// Remove a pod's netns early (to test DEL after the pod is gone).
    pub fn delete_pod(&mut self, path: &str) {
        let name = path.rsplit('/').next().unwrap().to_string();
        must(Command::new("ip").args(["netns", "del", &name]));
        self.pods.retain(|p| *p != name);
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// A call with the usual defaults: attache binary, reference plugins in CNI_PATH.
    pub fn call<'a>(
        &self,
        command: &'a str,
        container_id: &'a str,
        netns: &str,
        ifname: &'a str,
    ) -> Call<'a> {
        Call {
            command,
            container_id,
            netns: Some(netns.to_string()),
            ifname,
            args: "",
            path: REFERENCE_DIR.to_string(),
            extra_env: Vec::new(),
            bin: attache_bin(),
        }
    }

    /// Run a plugin inside the node netns with exactly the CNI environment (nothing inherited).
    pub fn exec(&self, call: &Call<'_>, conf: &Value) -> CniOutput {
        self.exec_raw(call, conf.to_string().as_bytes())
    }

    pub fn exec_raw(&self, call: &Call<'_>, stdin: &[u8]) -> CniOutput {
        let out = self.spawn(call, stdin).wait_with_output().unwrap();
        CniOutput {
            exit: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Start a plugin as [`Node::exec`] does, its configuration written, without waiting for it. The
    /// child's pid is the plugin's (`ip netns exec` execs it).
    pub fn spawn(&self, call: &Call<'_>, stdin: &[u8]) -> std::process::Child {
        use std::io::Write;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(&call.bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut set = |k: &str, v: &str| {
            if !v.is_empty() {
                cmd.env(k, v);
            }
        };
        set("CNI_COMMAND", call.command);
        set("CNI_CONTAINERID", call.container_id);
        set("CNI_IFNAME", call.ifname);
        set("CNI_ARGS", call.args);
        set("CNI_PATH", &call.path);
        if let Some(ns) = &call.netns {
            set("CNI_NETNS", ns);
        }
        for (k, v) in &call.extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn plugin");
        // A plugin killed early may not read it all: that is its business.
        let _ = child.stdin.take().unwrap().write_all(stdin);
        child
    }

    /// `ip -j ARGS` inside a netns (`None` = the node).
    pub fn ip(&self, netns: Option<&str>, args: &[&str]) -> Value {
        let ns = netns
            .map(|p| p.rsplit('/').next().unwrap().to_string())
            .unwrap_or(self.name.clone());
        let out = must(Command::new("ip").arg("-n").arg(&ns).arg("-j").args(args));
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap()
    }

    /// Names of the links in a netns.
    pub fn links(&self, netns: Option<&str>) -> Vec<String> {
        self.ip(netns, &["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }

    /// Addresses (CIDR) on one interface in a netns, without link-local IPv6.
    pub fn addrs(&self, netns: Option<&str>, ifname: &str) -> Vec<String> {
        let v = self.ip(netns, &["addr", "show", "dev", ifname]);
        let mut out = Vec::new();
        for l in v.as_array().unwrap() {
            for a in l["addr_info"].as_array().unwrap() {
                if a["scope"] == "link" {
                    continue;
                }
                out.push(format!(
                    "{}/{}",
                    a["local"].as_str().unwrap(),
                    a["prefixlen"]
                ));
            }
        }
        out
    }

    /// Whether one ping from a netns to `addr` is answered within 2 s.
    pub fn pings(&self, from: &str, addr: &str) -> bool {
        self.sh(Some(from), &["ping", "-c", "1", "-W", "2", addr])
            .status
            .success()
    }

    /// Run a command inside a netns.
    pub fn sh(&self, netns: Option<&str>, cmdline: &[&str]) -> std::process::Output {
        let ns = netns
            .map(|p| p.rsplit('/').next().unwrap().to_string())
            .unwrap_or(self.name.clone());
        run(Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(cmdline))
    }

    /// Files under a folder of the node's private dir (recursively), relative names, sorted; attache's
    /// host-local index (`<dataDir>/.attache/`, a cache of what the folders say) and its DEL tombstones
    /// (`<cacheDir>/.deleted/`, which DELs are done) are left out: [`Node::tombstones`] lists those.
    pub fn files(&self, rel: &str) -> Vec<String> {
        fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    let p = e.path();
                    if e.file_name() == ".attache" || e.file_name() == ".deleted" {
                        continue;
                    }
                    if p.is_dir() {
                        walk(base, &p, out);
                    } else {
                        out.push(p.strip_prefix(base).unwrap().display().to_string());
                    }
                }
            }
        }
        let base = self.dir.join(rel);
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.sort();
        out
    }
}

impl Node {
    /// The container IDs with a DEL tombstone in `<node>/<cache>/.deleted/`.
    pub fn tombstones(&self, cache: &str) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.dir.join(cache).join(".deleted"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for p in &self.pods {
            let _ = Command::new("ip").args(["netns", "del", p]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `attache agent` in the node's netns: a mirror of the definitions in `<node>/nads`, its report socket at
/// `<node>/run/agent.sock`, its log in `<node>/agent.log`; killed on drop.
pub struct Agent {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Agent {
    pub fn start(node: &Node, kubeconfig: &std::path::Path) -> Agent {
        let log = node.path("agent.log");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &node.name])
            .arg(attache_bin())
            .arg("agent")
            .arg("--nad-mirror")
            .arg(node.path("nads"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--socket")
            .arg(node.path("run/agent.sock"))
            .env_remove("CNI_COMMAND")
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
