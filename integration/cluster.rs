//! The seed's first day, for real: a two-node Kubernetes v1.20.2 cluster (`scripts/cluster`: etcd and
//! the control plane, two nodes with containerd and a kubelet each, joined by an L2 segment, a cluster
//! network of the reference bridge), attache deployed from `deploy/` by its DaemonSet through the real
//! scheduler and controller-manager — then the seed's steps, checked as its author checked them: a pod
//! without annotations has eth0 only; the seed's bridge NetworkAttachmentDefinition (its exact
//! configuration, cniVersion 0.3.0) gives a pod net1 from its range, and the bridge is on the node; pods
//! on the two nodes reach each other on a macvlan over the segment, their addresses from attache-ipam's
//! blocks; deleting the pods releases every address.
//!
//! The cluster has its own namespace prefix and folder, so a person's `scripts/cluster` is not touched,
//! and it is taken down when the test ends, also when it fails.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::poll::eventually;

/// One cluster at a time: two would share the machine's two cores with everything else.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The cluster of this test, up while it lives.
struct Cluster {
    dir: PathBuf,
    prefix: String,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// A cluster whose namespaces are named `<prefix>-*`.
    fn up(prefix: &str) -> Cluster {
        let c = Cluster {
            _one: ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()),
            dir: PathBuf::from(format!(
                "/srv/attache-cluster-test-{prefix}-{}",
                std::process::id()
            )),
            prefix: prefix.into(),
        };
        let out = c.script(&["up"]);
        assert!(
            out.status.success(),
            "scripts/cluster up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    fn script(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster"))
            .args(args)
            .env("ATTACHE_CLUSTER", &self.prefix)
            .env("ATTACHE_CLUSTER_DIR", &self.dir)
            .env("ATTACHE_BIN", env!("CARGO_BIN_EXE_attache"))
            .stdin(Stdio::null())
            .output()
            .expect("bash")
    }

    fn kubectl_with(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-cp", self.prefix), "kubectl"])
            .arg(format!(
                "--kubeconfig={}",
                self.dir.join("pki/admin.kubeconfig").display()
            ))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_with(args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, doc: &Value) {
        let out = self.kubectl_with(&["apply", "-f", "-"], Some(&doc.to_string()));
        assert!(
            out.status.success(),
            "kubectl apply {doc}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn get(&self, what: &[&str]) -> Value {
        let mut args = vec!["get", "-o", "json"];
        args.extend_from_slice(what);
        serde_json::from_str(&self.kubectl(&args)).unwrap()
    }

    /// A pod pinned to `node`, with the networks annotation when given; Running, or the test fails
    /// with its events.
    fn pod(&self, name: &str, node: &str, networks: Option<&Value>) {
        self.make_pod(name, node, networks);
        let running = eventually(90, || {
            self.get(&["pod", name])["status"]["phase"] == "Running"
        });
        assert!(
            running,
            "pod {name} is not Running: {}",
            self.kubectl(&["describe", "pod", name])
        );
    }

    /// A definition `name` in namespace default: a macvlan on each node's NIC (the segment), addresses
    /// from attache-ipam's `range` in /28 blocks.
    fn segment_nad(&self, name: &str, range: &str) {
        self.apply(&json!({
            "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"config": json!({
                "cniVersion": "1.0.0", "type": "macvlan", "master": "eth1", "mode": "bridge",
                "ipam": {"type": "attache-ipam", "range": range, "blockSize": 28}
            }).to_string()}
        }));
    }

    /// [`Cluster::pod`] without waiting for it.
    fn make_pod(&self, name: &str, node: &str, networks: Option<&Value>) {
        let mut annotations = json!({});
        if let Some(n) = networks {
            annotations["k8s.v1.cni.cncf.io/networks"] = match n {
                Value::String(s) => json!(s),
                other => json!(other.to_string()),
            };
        }
        self.apply(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": {
                "nodeName": node,
                "automountServiceAccountToken": false,
                "dnsPolicy": "Default",
                "terminationGracePeriodSeconds": 2,
                "containers": [{
                    "name": "c", "image": "localhost/attache-busybox:1", "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 2147483647 & wait"]
                }]
            }
        }));
    }

    /// `kubectl exec POD -- CMD...`.
    fn exec(&self, pod: &str, cmd: &[&str]) -> String {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(cmd);
        self.kubectl(&args)
    }

    /// A command on a node (its netns and mount namespace).
    fn on_node(&self, node: &str, cmd: &[&str]) -> String {
        let mut args = vec!["exec", node];
        args.extend_from_slice(cmd);
        let out = self.script(&args);
        assert!(
            out.status.success(),
            "on {node}: {cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A node's folder, as the host sees it (the node's /var is `<dir>/<node>/var`).
    fn node_path(&self, node: &str, rel: &str) -> PathBuf {
        self.dir.join(node).join(rel)
    }

    /// The IPv4 addresses of `ifname` in a pod, with their prefix.
    fn pod_addrs(&self, pod: &str, ifname: &str) -> Vec<String> {
        self.exec(pod, &["ip", "-o", "-4", "addr", "show", "dev", ifname])
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                w.position(|x| x == "inet")?;
                w.next().map(str::to_string)
            })
            .collect()
    }

    fn delete_pods(&self, names: &[&str]) {
        let mut args = vec!["delete", "pod", "--wait=true", "--timeout=90s"];
        args.extend_from_slice(names);
        self.kubectl(&args);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = self.script(&["down"]);
        if !out.status.success() {
            eprintln!(
                "scripts/cluster down: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The files of a host-local folder that name addresses (`lock` and `last_reserved_ip.*` aside).
fn leases(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_seeds_first_day_on_two_nodes() {
    let c = Cluster::up("act1");
    // attache came from deploy/: one DaemonSet pod per node, scheduled and run by the real control plane.
    let ds = c.get(&["-n", "kube-system", "daemonset", "attache"]);
    assert_eq!(ds["status"]["numberReady"], 2, "{ds}");
    for node in ["n1", "n2"] {
        let conf: Value = serde_json::from_slice(
            &std::fs::read(c.node_path(node, "cni-conf/00-attache.conflist")).unwrap(),
        )
        .unwrap();
        assert_eq!(conf["plugins"][0]["type"], "attache", "{node}: {conf}");
    }

    // A pod without annotations: the cluster network alone, as eth0.
    c.pod("test-pod1", "n1", None);
    let eth0 = c.pod_addrs("test-pod1", "eth0");
    assert!(
        eth0.len() == 1 && eth0[0].starts_with("10.244.1."),
        "{eth0:?}"
    );
    let links = c.exec("test-pod1", &["ip", "-o", "link"]);
    assert!(!links.contains("net1"), "{links}");

    // The seed's NetworkAttachmentDefinition, as it wrote it.
    c.apply(&json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "test-network", "namespace": "default"},
        "spec": {"config": r#"{
            "cniVersion": "0.3.0",
            "type": "bridge",
            "bridge": "test-br",
            "ipam": {
                "type": "host-local",
                "subnet": "192.168.1.0/24",
                "rangeStart": "192.168.1.100",
                "rangeEnd": "192.168.1.200"
            }
        }"#}
    }));
    c.pod("test-pod2", "n2", Some(&json!("test-network")));
    let net1 = c.pod_addrs("test-pod2", "net1");
    assert_eq!(net1.len(), 1, "{net1:?}");
    let ip: std::net::Ipv4Addr = net1[0].split('/').next().unwrap().parse().unwrap();
    assert!(
        net1[0].ends_with("/24") && (100..=200).contains(&ip.octets()[3]),
        "{net1:?}"
    );
    // The bridge is on the node, with the pod's veth in it.
    let br = c.on_node("n2", &["ip", "-o", "link", "show", "master", "test-br"]);
    assert!(br.contains("veth"), "{br}");
    // network-status: the cluster network and test-network, as Multus reports them.
    let status: Value = serde_json::from_str(
        c.get(&["pod", "test-pod2"])["metadata"]["annotations"]
            ["k8s.v1.cni.cncf.io/network-status"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cluster", "default/test-network"], "{status}");
    assert_eq!(status[1]["interface"], "net1");

    // Pods on both nodes on one segment: a macvlan on each node's NIC, addresses from attache-ipam.
    c.segment_nad("segment", "10.251.0.0/24");
    c.pod("seg-a", "n1", Some(&json!("segment")));
    c.pod("seg-b", "n2", Some(&json!("segment")));
    let a = c.pod_addrs("seg-a", "net1");
    let b = c.pod_addrs("seg-b", "net1");
    assert!(a.len() == 1 && b.len() == 1 && a != b, "{a:?} {b:?}");
    let b_ip = b[0].split('/').next().unwrap().to_string();
    let ping = c.exec("seg-a", &["ping", "-c", "2", "-W", "2", &b_ip]);
    assert!(ping.contains(" 0% packet loss"), "{ping}");
    // Each node handed out its own block's address.
    let blocks = c.get(&["addressblocks.ipam.attache.dev"]);
    let owners: Vec<(String, String)> = blocks["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["spec"]["cidr"].as_str().unwrap().to_string(),
                b["spec"]["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(owners.len(), 2, "{owners:?}");
    for (pod_ip, node) in [(&a[0], "n1"), (&b[0], "n2")] {
        let ip: std::net::IpAddr = pod_ip.split('/').next().unwrap().parse().unwrap();
        assert!(
            owners
                .iter()
                .any(|(cidr, n)| n == node && cidr.parse::<ipnet::IpNet>().unwrap().contains(&ip)),
            "{pod_ip} of {node} is in no block of {node}: {owners:?}"
        );
    }

    // Deleting the pods releases every address through DEL, on both nodes.
    c.delete_pods(&["test-pod1", "test-pod2", "seg-a", "seg-b"]);
    let released = eventually(30, || {
        leases(&c.node_path("n2", "var/lib/cni/networks/test-network")).is_empty()
            && leases(&c.node_path("n1", "var/lib/cni/networks/cluster")).is_empty()
            && leases(&c.node_path("n2", "var/lib/cni/networks/cluster")).is_empty()
    });
    assert!(
        released,
        "host-local addresses left: {:?} {:?}",
        leases(&c.node_path("n2", "var/lib/cni/networks/test-network")),
        leases(&c.node_path("n1", "var/lib/cni/networks/cluster"))
    );
    for node in ["n1", "n2"] {
        let held = c.on_node(
            node,
            &[
                "/opt/cni/bin/attache",
                "ipam",
                "inspect",
                "--local",
                "--json",
            ],
        );
        let v: Value = serde_json::from_str(&held).unwrap_or(Value::Null);
        let used: u64 = v["blocks"]
            .as_array()
            .map(|bs| bs.iter().filter_map(|b| b["used"].as_u64()).sum())
            .unwrap_or(u64::MAX);
        assert_eq!(
            used, 0,
            "{node}: attache-ipam still holds addresses: {held}"
        );
        let veths = c.on_node(node, &["ip", "-o", "link", "show", "type", "veth"]);
        assert!(
            !veths.contains("test-br") && veths.lines().count() <= 1,
            "{node}: veths left: {veths}"
        );
    }

    // Every request attache made — its DaemonSet's containers and the plugin exec'd on the nodes, all
    // as its ServiceAccount — was allowed by deploy/'s RBAC: none refused.
    // (The definitions come from the node's mirror, which the DaemonSet's agent keeps with a list and
    // a watch; a GET only when a pod names a definition seconds old.)
    let wanted = [
        "list network-attachment-definitions",
        "watch network-attachment-definitions",
        "patch pods/status",
        "create events",
    ];
    // The agents may still be starting on a loaded machine: the log is read until it shows them.
    let mut seen = (Default::default(), Vec::new());
    let all_made = eventually(90, || {
        seen = audit_of_attache(&c);
        wanted.iter().all(|w| seen.0.contains(*w))
    });
    let (used, refused) = seen;
    assert!(
        refused.is_empty(),
        "refused by the RBAC: {refused:?} (used: {used:?})"
    );
    assert!(
        all_made,
        "not all of {wanted:?} made: {used:?}\nagents: {}",
        c.kubectl_with(
            &[
                "-n",
                "kube-system",
                "logs",
                "-l",
                "app=attache",
                "-c",
                "agent",
                "--tail=30"
            ],
            None
        )
        .stdout
        .iter()
        .map(|b| *b as char)
        .collect::<String>()
    );
}

/// What attache's ServiceAccount asked of the API server (`verb resource[/subresource]`), from the
/// audit log, and what of it was refused.
fn audit_of_attache(c: &Cluster) -> (std::collections::BTreeSet<String>, Vec<String>) {
    let audit = std::fs::read_to_string(c.dir.join("audit.log")).unwrap_or_default();
    let mut used = std::collections::BTreeSet::new();
    let mut refused = Vec::new();
    for e in audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        // A watch is answered at its start (ResponseStarted) and complete only when it ends.
        let answered = e["stage"] == "ResponseComplete"
            || (e["stage"] == "ResponseStarted" && e["verb"] == "watch");
        if e["user"]["username"] != "system:serviceaccount:kube-system:attache" || !answered {
            continue;
        }
        let what = format!(
            "{} {}{}",
            e["verb"].as_str().unwrap_or_default(),
            e["objectRef"]["resource"].as_str().unwrap_or_default(),
            e["objectRef"]["subresource"]
                .as_str()
                .map(|s| format!("/{s}"))
                .unwrap_or_default()
        );
        if e["responseStatus"]["code"] == 403 {
            refused.push(what.clone());
        }
        used.insert(what);
    }
    (used, refused)
}

/// `ns/name` of the pods a node's attache records name (one record per pod: its cluster interface).
fn records(c: &Cluster, node: &str) -> Vec<String> {
    let dir = c.node_path(node, "var/lib/attache");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("eth0.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn day_two_a_rolling_update_a_reboot_a_drain_and_an_uninstall() {
    let c = Cluster::up("act2");
    c.apply(&json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "blue", "namespace": "default"},
        "spec": {"config": json!({
            "cniVersion": "1.0.0", "type": "bridge", "bridge": "br-blue",
            "ipam": {"type": "host-local", "subnet": "10.30.0.0/24"}
        }).to_string()}
    }));
    let blue = json!("blue");
    c.pod("a1", "n1", Some(&blue));
    c.pod("b1", "n2", Some(&blue));
    let before = c.pod_addrs("a1", "net1");
    assert_eq!(before.len(), 1, "{before:?}");

    // A rolling update to a new image: running pods keep their networks; a pod made during the update
    // gets its networks.
    let out = c.script(&["image", "0.1.1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let images: Vec<String> = ["install", "agent", "ipam-reconcile", "ipam-agent"]
        .iter()
        .map(|container| format!("{container}={image}"))
        .collect();
    let mut args = vec!["-n", "kube-system", "set", "image", "daemonset/attache"];
    args.extend(images.iter().map(String::as_str));
    c.kubectl(&args);
    c.pod("a2", "n1", Some(&blue));
    assert_eq!(c.pod_addrs("a2", "net1").len(), 1);
    let rolled = eventually(180, || {
        let ds = c.get(&["-n", "kube-system", "daemonset", "attache"]);
        ds["status"]["updatedNumberScheduled"] == 2 && ds["status"]["numberReady"] == 2
    });
    assert!(
        rolled,
        "{}",
        c.kubectl(&["-n", "kube-system", "get", "pods", "-o", "wide"])
    );
    assert_eq!(c.pod_addrs("a1", "net1"), before, "a1 kept its address");
    c.pod("a3", "n1", Some(&blue));
    assert_eq!(c.pod_addrs("a3", "net1").len(), 1);

    // A node "reboot": its pods' netns are gone, and /run (a tmpfs) is empty, attache's readiness
    // mark with it. attache's image is taken out of n1's containerd first, so that the DaemonSet's pod
    // cannot install attache again until the test says: meanwhile a new pod waits, saying why.
    // A pod on attache-ipam (a macvlan on the segment), deleted while its node is down.
    c.segment_nad("green", "10.252.0.0/24");
    c.pod("g1", "n1", Some(&json!("green")));
    let g1 = c.pod_addrs("g1", "net1");
    assert_eq!(g1.len(), 1, "{g1:?}");
    let g1_ip = g1[0].split('/').next().unwrap().to_string();
    let sock = c.node_path("n1", "ctrd/c.sock");
    c.on_node(
        "n1",
        &[
            "ctr",
            "--address",
            &sock.to_string_lossy(),
            "-n",
            "k8s.io",
            "images",
            "rm",
            &image,
        ],
    );
    let out = c.script(&["stop", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.kubectl(&["delete", "pod", "g1", "--grace-period=0", "--force"]);
    let out = c.script(&["start", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.make_pod("r1", "n1", Some(&blue));
    let held = eventually(120, || {
        c.kubectl(&[
            "get",
            "events",
            "-o",
            "json",
            "--field-selector",
            "involvedObject.name=r1",
        ])
        .contains("attache has not been installed on this node since it started")
    });
    assert!(held, "{}", c.kubectl(&["describe", "pod", "r1"]));
    assert_ne!(c.get(&["pod", "r1"])["status"]["phase"], "Running");
    // The image is back: the DaemonSet's pod installs attache, and the kubelet makes new sandboxes
    // (ADD) for the pods and DELs the old ones without a netns. The pods come back with their networks,
    // and nothing is left of the old sandboxes: as many host-local leases and records as pods.
    let out = c.script(&["image", "0.1.1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for pod in ["a1", "a2", "a3", "r1"] {
        let back = eventually(240, || {
            let p = c.get(&["pod", pod]);
            p["status"]["phase"] == "Running"
                && p["status"]["containerStatuses"][0]["ready"] == true
                && c.kubectl_with(&["exec", pod, "--", "ip", "link", "show", "net1"], None)
                    .status
                    .success()
        });
        assert!(
            back,
            "{pod} did not come back: {}",
            c.kubectl(&["describe", "pod", pod])
        );
    }
    let settled = eventually(60, || {
        leases(&c.node_path("n1", "var/lib/cni/networks/blue")).len() == 4
            && records(&c, "n1").len() == 4
    });
    assert!(
        settled,
        "after the reboot: leases {:?}, records {:?}",
        leases(&c.node_path("n1", "var/lib/cni/networks/blue")),
        records(&c, "n1")
    );

    // g1, deleted while n1 was down, holds no address once n1 is back: the kubelet tears its old
    // sandbox down (a DEL without a netns) or, where no DEL comes, `attache ipam reconcile` releases it
    // (its pod's UID is gone). After a pass of reconcile, n1's attache-ipam store holds no address and
    // inspect sees no leak.
    let ipam_dir = c.node_path("n1", "var/lib/attache/ipam/default/blocks");
    let held_g1 = || {
        std::fs::read_dir(&ipam_dir)
            .map(|rd| rd.flatten().any(|b| b.path().join(&g1_ip).exists()))
            .unwrap_or(false)
    };
    let report = c.on_node("n1", &["/opt/cni/bin/attache", "ipam", "reconcile"]);
    assert!(
        eventually(60, || !held_g1()),
        "g1's {g1_ip} is still held on n1; reconcile said {report}"
    );
    let inspect = c.on_node("n1", &["/opt/cni/bin/attache", "ipam", "inspect", "--json"]);
    let v: Value = serde_json::from_str(&inspect).unwrap_or(Value::Null);
    assert_eq!(v["leaks"], json!([]), "{inspect}");

    // Taking attache off a node: the DaemonSet goes (the node stays configured), the node is drained,
    // `attache uninstall` runs there; then a pod on it has the cluster network alone.
    c.kubectl(&[
        "-n",
        "kube-system",
        "delete",
        "daemonset",
        "attache",
        "--wait=true",
    ]);
    c.kubectl(&[
        "drain",
        "n2",
        "--ignore-daemonsets",
        "--force",
        "--grace-period=2",
        "--timeout=120s",
    ]);
    let drained = eventually(60, || records(&c, "n2").is_empty());
    assert!(drained, "records left on n2: {:?}", records(&c, "n2"));
    c.on_node(
        "n2",
        &[
            "/opt/cni/bin/attache",
            "uninstall",
            "--bin-dir=/opt/cni/bin",
            "--conf-dir=/etc/cni/net.d",
        ],
    );
    assert!(!c.node_path("n2", "cni-conf/00-attache.conflist").exists());
    assert!(!c.node_path("n2", "cni-bin/attache").exists());
    assert!(leases(&c.node_path("n2", "var/lib/cni/networks/blue")).is_empty());
    c.kubectl(&["uncordon", "n2"]);
    c.pod("b2", "n2", None);
    let links = c.exec("b2", &["ip", "-o", "link"]);
    assert!(links.contains("eth0") && !links.contains("net1"), "{links}");
}
