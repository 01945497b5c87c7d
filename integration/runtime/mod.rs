//! Real container runtimes driving attache: containerd's CRI plugin (started privately inside a test
//! node's netns and called over its gRPC socket exactly as the kubelet calls it), podman with its CNI
//! backend, and cnitool. Every runtime gets private paths under the node's folder; what it leaves behind
//! — processes, mounts, cgroups — is removed on drop, also when a test fails.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::poll::eventually;
use crate::testbed::Node;

/// The image every runtime here runs: Debian's busybox-static, whose command sleeps (a pause image).
pub const IMAGE: &str = "localhost/attache-busybox:1";

/// Fail loudly when a runtime is missing: CI must never skip silently.
pub fn require(tools: &[&str]) {
    for t in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{t} is missing: scripts/test installs containerd, podman, runc and busybox-static"
        );
    }
}

pub fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// [`run`] for a runtime's own command (podman, ctr): one that dies by a signal — not its answer, a
/// crash, such as the SIGBUS a Go runtime took once on a machine loaded by a neighbour's build — is
/// run once more, and the log says so. A second death is the test's to report.
pub fn run_runtime(cmd: &mut Command) -> std::process::Output {
    use std::os::unix::process::ExitStatusExt;
    let out = run(cmd);
    match out.status.signal() {
        None => out,
        Some(sig) => {
            eprintln!(
                "runtime command died by signal {sig}; running it once more: {cmd:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            run(cmd)
        }
    }
}

pub fn must(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command run inside the netns at `path` (any netns file: `/run/netns/X` or a runtime's own).
pub fn in_netns(path: &str, argv: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={path}")).args(argv);
    c
}

/// `sh -c SCRIPT` inside the netns at `path`, in a private mount namespace of its own (mounts made there
/// — over /opt/cni/bin, /etc/cni/net.d, /var/lib — vanish with it).
pub fn in_private_mounts(path: &str, script: &str) -> Command {
    in_netns(
        path,
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ],
    )
}

/// `ip -j ARGS` in the netns at `path`.
pub fn ip_json(path: &str, args: &[&str]) -> Value {
    let mut argv = vec!["ip", "-j"];
    argv.extend_from_slice(args);
    let out = must(&mut in_netns(path, &argv));
    if out.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(&out).unwrap()
}

/// Addresses (CIDR) of `ifname` in the netns at `path`, link-local left out.
pub fn addrs(path: &str, ifname: &str) -> Vec<String> {
    ip_json(path, &["addr", "show", "dev", ifname])
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().unwrap().clone())
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

pub fn mac(path: &str, ifname: &str) -> String {
    ip_json(path, &["link", "show", "dev", ifname])[0]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

pub fn pings(from: &str, addr: &str) -> bool {
    run(&mut in_netns(from, &["ping", "-c", "1", "-W", "2", addr]))
        .status
        .success()
}

/// A docker-archive of the busybox image, tagged [`IMAGE`], built in `dir`: busybox-static with its
/// applets, `sleep` forever as the command. `ctr images import` and `podman load` both read it.
pub fn busybox_archive(dir: &Path) -> PathBuf {
    let bb = Path::new("/bin/busybox");
    assert!(
        bb.exists(),
        "/bin/busybox is missing: install busybox-static"
    );
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(bb, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "sleep", "ip", "ping", "cat", "ls", "nc", "echo", "true", "false",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    for d in ["etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let layer = dir.join("layer.tar");
    must(
        Command::new("tar")
            .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
    );
    let sum = must(Command::new("sha256sum").arg(&layer));
    let sha = sum.split_whitespace().next().unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sleep", "2147483647"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{sha}")]}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": [IMAGE], "Layers": ["layer.tar"]}]);
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    let archive = dir.join("busybox.tar");
    must(
        Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(&archive)
            .args(["manifest.json", "config.json", "layer.tar"]),
    );
    archive
}

/// Processes whose command line contains `needle` (shims name the socket of the containerd they
/// belong to; podman's conmon its private root).
fn pids_with(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

fn kill(pids: &[i32]) {
    for p in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Detach every mount at or under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Kill the processes left in the cgroup `parent` and below (in every v1 hierarchy, or the v2 one) and
/// remove those cgroups, deepest first; then its ancestors that are left empty (`/attache-test`,
/// shared by the tests running at the same time, goes with the last of them).
pub fn remove_cgroups(parent: &str) {
    let rel = parent.trim_start_matches('/');
    let mut hierarchies: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|h| h.path())
        .collect();
    hierarchies.push(PathBuf::from("/sys/fs/cgroup"));
    let mut dirs = Vec::new();
    for h in &hierarchies {
        let base = h.join(rel);
        if base.join("cgroup.procs").exists() {
            collect_dirs(&base, &mut dirs);
        }
    }
    for d in &dirs {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            kill(
                &procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>(),
            );
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.dedup();
    for d in dirs {
        // A killed process leaves its cgroup a moment later.
        eventually(5, || std::fs::remove_dir(&d).is_ok() || !d.exists());
    }
    for h in &hierarchies {
        let mut up = Path::new(rel);
        while let Some(p) = up.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::remove_dir(h.join(p));
            up = p;
        }
    }
}

fn collect_dirs(d: &Path, out: &mut Vec<PathBuf>) {
    out.push(d.to_path_buf());
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}

/// What a user would find left of pods after they are gone: node links other than the test's own
/// (`lo`, `nic0`, `nicpeer`) and the bridges (which stay, as the reference's do), host-local leases,
/// attache's records, and nftables / iptables rules naming the pods' addresses or containers.
pub fn leftovers(node: &Node, containers: &[String], addresses: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for l in node.ip(None, &["-d", "link", "show"]).as_array().unwrap() {
        let name = l["ifname"].as_str().unwrap();
        if !["lo", "nic0", "nicpeer"].contains(&name) && l["linkinfo"]["info_kind"] != "bridge" {
            out.push(format!("node link {name}"));
        }
    }
    for f in node.files("ipam") {
        if !f.ends_with("/lock") && !f.contains("last_reserved_ip") {
            out.push(format!("IP lease {f}"));
        }
    }
    for f in node.files("cache") {
        out.push(format!("record {f}"));
    }
    let ns = format!("/run/netns/{}", node.name);
    let rules = must(&mut in_netns(&ns, &["nft", "list", "ruleset"]))
        + &must(&mut in_netns(&ns, &["iptables-save"]));
    for needle in containers.iter().chain(addresses) {
        let short = &needle[..needle.len().min(12)];
        for line in rules.lines().filter(|l| names(l, short)) {
            out.push(format!("rule {line}"));
        }
    }
    out
}

/// Whether `line` holds `word` not followed by a digit (10.0.0.2 is not in 10.0.0.23).
fn names(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(i, _)| {
        !line[i + word.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// A pod as the kubelet describes it to the runtime.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub annotations: HashMap<String, String>,
    /// (container port, host port), TCP.
    pub ports: Vec<(i32, i32)>,
}

impl PodSpec {
    /// A pod of namespace `default` with a UID of its own.
    pub fn new(name: &str) -> PodSpec {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        PodSpec {
            name: name.to_string(),
            namespace: "default".into(),
            uid: format!("{:08x}-0000-4000-8000-{n:012x}", std::process::id()),
            annotations: HashMap::new(),
            ports: Vec::new(),
        }
    }

    pub fn networks(mut self, annotation: &str) -> PodSpec {
        self.annotations
            .insert("k8s.v1.cni.cncf.io/networks".into(), annotation.into());
        self
    }
}

/// containerd 1.6 with its CRI plugin, every path private under `<node>/ctrd`, started inside the node
/// netns (`nsenter --net`: `ip netns exec` breaks runc's cgroup lookup), CNI confs from `<node>/ctrd/net.d`
/// (`max_conf_num = 1`), plugins from `<node>/ctrd/bin`, sandboxes in the cgroup `/attache-test/<node>`.
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub cgroup_parent: String,
    node_netns: String,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    client: Option<RuntimeServiceClient<Channel>>,
}

/// A failed CRI call: what the kubelet would log.
#[derive(Debug)]
pub struct CriError {
    pub code: tonic::Code,
    pub message: String,
}

impl CriError {
    pub fn message(&self) -> &str {
        &self.message
    }
}

const CRI_TIMEOUT: Duration = Duration::from_secs(60);

impl Containerd {
    /// Start containerd on `node` with `conflist` as its one CNI configuration (written in place before
    /// start: 1.6's watcher ignores files renamed in) and `plugins` (name, binary) copied into its bin
    /// dir; the busybox image imported as the sandbox image.
    pub fn start(node: &Node, conflist: &Value, plugins: &[(&str, &Path)]) -> Containerd {
        require(&[
            "containerd",
            "ctr",
            "runc",
            "containerd-shim-runc-v2",
            "nsenter",
        ]);
        let dir = node.path("ctrd");
        let bin_dir = dir.join("bin");
        let conf_dir = dir.join("net.d");
        for d in [&bin_dir, &conf_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        for (name, from) in plugins {
            std::fs::copy(from, bin_dir.join(name))
                .unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
        }
        std::fs::write(conf_dir.join("10-test.conflist"), conflist.to_string()).unwrap();
        let socket = dir.join("c.sock");
        let cgroup_parent = format!("/attache-test/{}", node.name);
        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/bin"
    conf_dir = "{d}/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
"#
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let node_netns = format!("/run/netns/{}", node.name);
        let child = Command::new("nsenter")
            .arg(format!("--net={node_netns}"))
            .arg("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut me = Containerd {
            dir: dir.clone(),
            socket: socket.clone(),
            bin_dir,
            conf_dir,
            cgroup_parent,
            node_netns,
            child: Some(child),
            client: None,
            rt,
        };
        let up = eventually(30, || {
            if let Some(c) = me.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("containerd exited ({status}): {}", me.log());
            }
            socket.exists()
        });
        assert!(up, "containerd did not create its socket: {}", me.log());
        let path = socket.clone();
        let channel = me
            .rt
            .block_on(Endpoint::from_static("http://[::]").connect_with_connector(
                tower::service_fn(move |_: Uri| {
                    let p = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(p).await?,
                        ))
                    }
                }),
            ))
            .expect("connect to containerd's socket");
        me.client = Some(RuntimeServiceClient::new(channel));
        let archive = busybox_archive(&me.dir);
        me.ctr(
            &["-n", "k8s.io", "images", "import"],
            &[archive.as_os_str()],
        );
        // The CRI plugin loads the CNI configuration asynchronously: wait until it reports it.
        let ready = eventually(30, || {
            me.status().is_ok_and(|s| {
                s["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "NetworkReady" && c["status"] == true)
                })
            })
        });
        assert!(
            ready,
            "containerd's CRI never reported NetworkReady: {}",
            me.log()
        );
        me
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Run `ctr` against this containerd.
    pub fn ctr(&self, args: &[&str], more: &[&std::ffi::OsStr]) -> String {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a").arg(&self.socket).args(args).args(more);
        let out = run_runtime(&mut cmd);
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        self.client.clone().expect("connected to containerd")
    }

    fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CriError> {
        self.rt.block_on(async {
            match tokio::time::timeout(CRI_TIMEOUT, f).await {
                Ok(r) => r.map(tonic::Response::into_inner).map_err(|s| CriError {
                    code: s.code(),
                    message: s.message().to_string(),
                }),
                Err(_) => Err(CriError {
                    code: tonic::Code::DeadlineExceeded,
                    message: "the CRI call took over 60 s".into(),
                }),
            }
        })
    }

    /// The runtime's status (verbose), as JSON.
    pub fn status(&self) -> Result<Value, CriError> {
        let mut c = self.client();
        let r = self.call(c.status(cri::StatusRequest { verbose: true }))?;
        Ok(serde_json::to_value(r).unwrap())
    }

    /// RunPodSandbox as the kubelet sends it; the sandbox ID.
    pub fn run_pod(&self, pod: &PodSpec) -> Result<String, CriError> {
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                namespace: pod.namespace.clone(),
                attempt: 0,
            }),
            hostname: pod.name.clone(),
            log_directory: self.dir.join("pods").join(&pod.uid).display().to_string(),
            port_mappings: pod
                .ports
                .iter()
                .map(|(c, h)| cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port: *c,
                    host_port: *h,
                    host_ip: String::new(),
                })
                .collect(),
            labels: HashMap::from([("io.kubernetes.pod.name".into(), pod.name.clone())]),
            annotations: pod.annotations.clone(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/pod{}", self.cgroup_parent, pod.uid),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = self.client();
        let r = self.call(c.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        }))?;
        Ok(r.pod_sandbox_id)
    }

    /// PodSandboxStatus (verbose): the status, and containerd's info (runtime spec, CNI result).
    pub fn pod_status(&self, id: &str) -> (Value, Value) {
        let mut c = self.client();
        let r = self
            .call(c.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            }))
            .expect("PodSandboxStatus");
        let info = r
            .info
            .get("info")
            .map(|s| serde_json::from_str(s).unwrap())
            .unwrap_or(Value::Null);
        (serde_json::to_value(r.status).unwrap(), info)
    }

    /// The pod's netns, from the sandbox's runtime spec.
    pub fn netns(&self, id: &str) -> String {
        let (_, info) = self.pod_status(id);
        info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .unwrap_or_else(|| panic!("no network namespace in the sandbox's spec: {info}"))
            .to_string()
    }

    pub fn stop_pod(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.client();
        self.call(c.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        }))
        .map(|_| ())
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.client();
        self.call(c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        }))
        .map(|_| ())
    }

    /// The sandboxes containerd knows.
    pub fn pods(&self) -> Vec<String> {
        let Some(mut c) = self.client.clone() else {
            return Vec::new();
        };
        self.call(c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }))
            .map(|r| r.items.into_iter().map(|p| p.id).collect())
            .unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // What the kubelet would do first; errors do not matter here, the rest is removed by force.
        for id in self.pods() {
            let _ = self.stop_pod(&id);
            let _ = self.remove_pod(&id);
        }
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let exited = eventually(10, || c.try_wait().is_ok_and(|s| s.is_some()));
            if !exited {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // nsenter execs containerd, so containerd is gone; its shims (and their sandboxes) may not be.
        kill(&pids_with(&self.socket.display().to_string()));
        remove_cgroups(&self.cgroup_parent);
        unmount_under(&self.dir);
        let _ = Command::new("rm").arg("-rf").arg(&self.dir).output();
        // The parent cgroup, if no other test's containerd still uses it.
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(h.path().join("attache-test"));
        }
        let _ = std::fs::remove_dir("/sys/fs/cgroup/attache-test");
    }
}

/// podman 4.3 with its CNI backend, every path private under `<node>/podman`: configuration
/// (`CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF`), storage, the networks' conflists and the plugin dir.
/// It runs inside the node netns (`nsenter --net`), containers in the cgroup `/attache-test/<node>`.
pub struct Podman {
    pub dir: PathBuf,
    pub net_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub cgroup_parent: String,
    node_netns: String,
}

impl Podman {
    /// podman with `networks` (conflists, each named by its `name`) and `plugins` (name, binary); the
    /// busybox image loaded.
    pub fn new(node: &Node, networks: &[Value], plugins: &[(&str, &Path)]) -> Podman {
        require(&["podman", "runc", "conmon", "nsenter"]);
        let dir = node.path("podman");
        let net_dir = dir.join("net.d");
        let bin_dir = dir.join("bin");
        for d in [&net_dir, &bin_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        for (name, from) in plugins {
            std::fs::copy(from, bin_dir.join(name))
                .unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
        }
        for n in networks {
            let name = n["name"].as_str().unwrap();
            std::fs::write(net_dir.join(format!("{name}.conflist")), n.to_string()).unwrap();
        }
        let d = dir.display();
        // Each setting was needed on this machine kind (research/real-clients.md).
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                r#"[containers]
netns = "private"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["{d}/bin"]
network_config_dir = "{d}/net.d"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
runtime = "runc"
tmp_dir = "{d}/tmp"
static_dir = "{d}/libpod"
volume_path = "{d}/volumes"
"#
            ),
        )
        .unwrap();
        // The image comes from one read-only store the whole suite shares, loaded once per machine.
        let images = shared_image_store();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n\
                 [storage.options]\nadditionalimagestores = [\"{}\"]\n",
                images.display()
            ),
        )
        .unwrap();
        let me = Podman {
            cgroup_parent: format!("/attache-test/{}", node.name),
            node_netns: format!("/run/netns/{}", node.name),
            dir,
            net_dir,
            bin_dir,
        };
        std::fs::write(
            me.dir.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
        let seen = me.podman(&["image", "exists", IMAGE]);
        assert!(
            seen.status.success(),
            "podman does not see {IMAGE} in the shared store {}: {}",
            images.display(),
            String::from_utf8_lossy(&seen.stderr)
        );
        me
    }

    /// Run podman with its private configuration inside the node netns.
    pub fn podman(&self, args: &[&str]) -> std::process::Output {
        run_runtime(
            Command::new("nsenter")
                .arg(format!("--net={}", self.node_netns))
                .arg("podman")
                .args(args)
                .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
                .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
                .env(
                    "CONTAINERS_REGISTRIES_CONF",
                    self.dir.join("registries.conf"),
                ),
        )
    }

    /// `podman run --rm --network NET IMAGE sh -c SCRIPT`, in the test's cgroup.
    pub fn run_rm(&self, network: &str, argv: &[&str]) -> std::process::Output {
        let cg = format!("--cgroup-parent={}", self.cgroup_parent);
        let mut args = vec!["run", "--rm", "--network", network, &cg, IMAGE];
        args.extend_from_slice(argv);
        self.podman(&args)
    }
}

/// The read-only image store every [`Podman`] of every test reads [`IMAGE`] from
/// (`additionalimagestores`): the busybox image is loaded into it once per machine (in the test cache,
/// outside the repository) — and once per test binary at most, under a lock — instead of once per test.
/// A store whose busybox differs from the installed one is loaded afresh.
pub fn shared_image_store() -> PathBuf {
    static STORE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    STORE
        .get_or_init(|| {
            let cache = PathBuf::from(
                std::env::var("ATTACHE_TEST_CACHE").unwrap_or("/var/cache/attache-test".into()),
            );
            let store = cache.join("podman-images");
            std::fs::create_dir_all(&cache).unwrap();
            let lock = std::fs::File::create(cache.join("podman-images.lock")).unwrap();
            let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .expect("locking the shared image store");
            let busybox = std::fs::read("/bin/busybox").expect("busybox-static");
            let stamp = format!("{IMAGE} busybox {} bytes {:x}", busybox.len(), {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                busybox.hash(&mut h);
                h.finish()
            });
            let stamp_file = cache.join("podman-images.stamp");
            if std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
                return store;
            }
            let _ = std::fs::remove_file(&stamp_file);
            unmount_under(&store);
            let _ = Command::new("rm").arg("-rf").arg(&store).output();
            let work = cache.join("podman-images.work");
            let _ = Command::new("rm").arg("-rf").arg(&work).output();
            std::fs::create_dir_all(&work).unwrap();
            let archive = busybox_archive(&work);
            let out = run_runtime(
                Command::new("podman")
                    .arg("--root")
                    .arg(&store)
                    .arg("--runroot")
                    .arg(work.join("run"))
                    .args([
                        "--storage-driver",
                        "overlay",
                        "--cgroup-manager",
                        "cgroupfs",
                    ])
                    .args(["--events-backend", "none", "load", "-i"])
                    .arg(&archive)
                    .env("CONTAINERS_CONF", "/dev/null")
                    .env("CONTAINERS_REGISTRIES_CONF", "/dev/null"),
            );
            assert!(
                out.status.success(),
                "podman load into {}: {}",
                store.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            unmount_under(&work);
            let _ = Command::new("rm").arg("-rf").arg(&work).output();
            std::fs::write(&stamp_file, &stamp).unwrap();
            store
        })
        .clone()
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        let dir = self.dir.display().to_string();
        kill(&pids_with(&dir));
        remove_cgroups(&self.cgroup_parent);
        unmount_under(&self.dir);
        let _ = Command::new("rm").arg("-rf").arg(&self.dir).output();
    }
}
