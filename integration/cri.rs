//! The kubelet's path: containerd 1.6's CRI plugin, started privately inside a test node netns, called
//! over its gRPC socket with the kubelet's sequence — RunPodSandbox (metadata, annotations, port
//! mappings), PodSandboxStatus, StopPodSandbox, RemovePodSandbox — with attache as its one CNI
//! configuration. Pod annotations reach attache through `runtimeConfig` (the
//! `io.kubernetes.cri.pod-annotations` capability); the cluster network is Debian's ptp + portmap, exec'd.
//! Also `ctr run --cni`, containerd's own client, which sends DEL without `CNI_NETNS`.

use std::path::{Path, PathBuf};

use crate::runtime::{Containerd, PodSpec, addrs, leftovers, mac, pings};
use crate::testbed::{Node, REFERENCE_DIR, attache_bin, require_reference_plugins};
use serde_json::{Value, json};

/// containerd first, so that it is stopped (and its sandboxes gone) before the node is removed.
struct Bed {
    ctrd: Containerd,
    node: Node,
}

/// The reference plugins containerd's bin dir needs (the cluster network's, and `loopback`, which
/// containerd's CRI runs for `lo`), with `extra` (name, binary) added or taking a name's place.
fn plugins(extra: &[(&'static str, PathBuf)]) -> Vec<(&'static str, PathBuf)> {
    let mut v: Vec<(&str, PathBuf)> = ["ptp", "host-local", "portmap", "loopback", "bridge"]
        .iter()
        .filter(|p| !extra.iter().any(|(n, _)| n == *p))
        .map(|p| (*p, Path::new(REFERENCE_DIR).join(p)))
        .collect();
    v.extend(extra.iter().cloned());
    v
}

/// Definitions in the node's `networksDir`: a native bridge, a native macvlan on `nic0`, and a macvlan
/// with static addresses and the `ips` / `mac` capabilities for the JSON annotation form.
fn write_definitions(node: &Node) -> PathBuf {
    let ipam = node.path("ipam").display().to_string();
    crate::testbed::write_nads(
        node,
        "default",
        &[
            (
                "br-net",
                crate::testbed::bridge_nad(node, "br-att", "10.55.0.0/24"),
            ),
            (
                "mv-net",
                json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "nic0", "mode": "bridge",
                       "ipam": {"type": "host-local", "subnet": "10.56.0.0/24",
                                "rangeStart": "10.56.0.10", "dataDir": ipam}}),
            ),
            (
                "mv-fixed",
                json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "nic0", "mode": "bridge",
                       "capabilities": {"ips": true, "mac": true},
                       "ipam": {"type": "static"}}),
            ),
            (
                "mv-nomaster",
                json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "nosuch0",
                       "ipam": {"type": "host-local", "subnet": "10.58.0.0/24", "dataDir": ipam}}),
            ),
            (
                "masq-net",
                json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": "br-masq", "isGateway": true,
                       "ipMasq": true,
                       "ipam": {"type": "host-local", "subnet": "10.59.0.0/24", "dataDir": ipam}}),
            ),
            (
                "bad-subnet",
                json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": "br-bad",
                       "ipam": {"type": "host-local", "subnet": "10.300.0.0/24", "dataDir": ipam}}),
            ),
        ],
    )
}

/// attache as containerd's one configuration: meta mode, the cluster network ptp + portmap exec'd,
/// definitions from `networksDir`.
fn meta_conflist(node: &Node, networks_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "attache",
        "plugins": [{
            "type": "attache",
            "capabilities": {"io.kubernetes.cri.pod-annotations": true, "portMappings": true},
            "clusterNetwork": {
                "cniVersion": "1.0.0", "name": "cluster",
                "plugins": [
                    {"type": "ptp",
                     "ipam": {"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": node.path("ipam"),
                              "routes": [{"dst": "0.0.0.0/0"}]}},
                    {"type": "portmap", "capabilities": {"portMappings": true}}
                ]
            },
            "cacheDir": node.path("cache"),
            "networksDir": networks_dir,
            "logFile": node.path("attache.log"),
        }]
    })
}

fn meta_bed(tag: &str) -> Bed {
    require_reference_plugins();
    let node = Node::with_nic(tag);
    // The wire behind nic0 has a router: macvlan pods reach 10.56.0.1 through it.
    assert!(node.ip_do(&["addr", "add", "10.56.0.1/24", "dev", "nicpeer"]));
    let dir = write_definitions(&node);
    let ctrd = Containerd::start(
        &node,
        &meta_conflist(&node, &dir),
        &plugins(&[("attache", attache_bin())])
            .iter()
            .map(|(n, p)| (*n, p.as_path()))
            .collect::<Vec<_>>(),
    );
    Bed { ctrd, node }
}

/// The address on `ifname`, without its prefix.
fn addr_of(netns: &str, ifname: &str) -> String {
    let a = addrs(netns, ifname);
    assert_eq!(a.len(), 1, "{ifname}: {a:?}");
    a[0].split('/').next().unwrap().to_string()
}

#[test]
fn kubelet_pods_get_native_networks_from_both_annotation_forms() {
    let bed = meta_bed("cri-nets");
    let a = PodSpec::new("pod-a").networks("br-net,mv-net");
    let b = PodSpec::new("pod-b").networks(
        r#"[{"name":"br-net","interface":"blue0"},
            {"name":"mv-fixed","interface":"fixed0","ips":["10.56.0.50/24"],"mac":"02:00:0a:38:00:32"}]"#,
    );
    let ida = bed.ctrd.run_pod(&a).expect("RunPodSandbox a");
    let idb = bed.ctrd.run_pod(&b).expect("RunPodSandbox b");
    let (na, nb) = (bed.ctrd.netns(&ida), bed.ctrd.netns(&idb));

    // The cluster network's address is what containerd reports for the pod.
    let (status, info) = bed.ctrd.pod_status(&ida);
    let eth0 = addr_of(&na, "eth0");
    assert_eq!(status["network"]["ip"], json!(eth0), "{status}");
    assert!(eth0.starts_with("10.77.0."), "{eth0}");
    assert!(
        info["cniResult"].to_string().contains(&eth0),
        "containerd's CNI result: {}",
        info["cniResult"]
    );

    // Comma form: net1 on the bridge, net2 on the macvlan, in annotation order.
    let a_net1 = addr_of(&na, "net1");
    let a_net2 = addr_of(&na, "net2");
    assert!(a_net1.starts_with("10.55.0."), "{a_net1}");
    assert!(a_net2.starts_with("10.56.0."), "{a_net2}");
    // JSON form: the interface names, the static address and the MAC it asked for.
    let b_blue = addr_of(&nb, "blue0");
    assert!(b_blue.starts_with("10.55.0."), "{b_blue}");
    assert_eq!(addrs(&nb, "fixed0"), vec!["10.56.0.50/24"]);
    assert_eq!(mac(&nb, "fixed0"), "02:00:0a:38:00:32");

    // Gateways, and each other on the secondary networks.
    assert!(pings(&na, "10.55.0.1"), "bridge gateway");
    assert!(pings(&na, "10.56.0.1"), "router behind the macvlan master");
    assert!(pings(&na, &b_blue), "pod a -> pod b over the bridge");
    assert!(pings(&na, "10.56.0.50"), "pod a -> pod b over macvlan");
    assert!(pings(&nb, &a_net2), "pod b -> pod a over macvlan");

    let addresses = vec![eth0, a_net1, a_net2, b_blue, "10.56.0.50".to_string()];
    for id in [&ida, &idb] {
        bed.ctrd.stop_pod(id).expect("StopPodSandbox");
        bed.ctrd.remove_pod(id).expect("RemovePodSandbox");
    }
    // containerd's two DELs per pod (stop with the netns, remove without) reached attache and succeeded.
    let dels = crate::testbed::logged(&bed.node, "DEL");
    assert_eq!(dels.len(), 4, "DELs: {dels:#?}");
    assert!(dels.iter().all(|l| l.contains("code=0")), "{dels:#?}");
    let left = leftovers(&bed.node, &[ida, idb], &addresses);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// Run `argv` inside `netns` in the background (a server for a port mapping).
fn serve(netns: &str, script: &str) -> std::process::Child {
    crate::runtime::in_netns(netns, &["busybox", "sh", "-c", script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a server in the pod")
}

#[test]
fn port_mappings_with_containerds_capitalised_keys_reach_portmap() {
    let bed = meta_bed("cri-ports");
    let mut pod = PodSpec::new("web").networks("br-net");
    pod.ports = vec![(80, 8080)];
    let id = bed.ctrd.run_pod(&pod).expect("RunPodSandbox");
    let netns = bed.ctrd.netns(&id);
    let eth0 = addr_of(&netns, "eth0");
    let node = format!("/run/netns/{}", bed.node.name);

    // portmap (exec'd as the cluster network's second plugin) got the mapping: the node's port 8080
    // leads to the pod's port 80.
    let mut server = serve(&netns, "echo hello-from-the-pod | busybox nc -l -p 80");
    let answered = crate::poll::eventually(10, || {
        let out = crate::runtime::run(&mut crate::runtime::in_netns(
            &node,
            &["busybox", "nc", "-w", "2", "10.77.0.1", "8080"],
        ));
        String::from_utf8_lossy(&out.stdout).contains("hello-from-the-pod")
    });
    let _ = server.kill();
    let _ = server.wait();
    assert!(answered, "node:8080 did not reach the pod's port 80");

    bed.ctrd.stop_pod(&id).expect("StopPodSandbox");
    bed.ctrd.remove_pod(&id).expect("RemovePodSandbox");
    let left = leftovers(&bed.node, &[id], &[eth0]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[test]
fn a_failing_definition_fails_run_pod_sandbox_with_attaches_message_and_leaves_nothing() {
    let bed = meta_bed("cri-fail");
    for (networks, says) in [
        ("br-net,no-such-net", "no-such-net"),
        ("bad-subnet", "10.300.0.0/24"),
        // Fails after the cluster network and br-net are attached: the rollback undoes them.
        ("br-net,mv-nomaster", "nosuch0"),
        (r#"[{"name":"mv-fixed","ips":["not-an-ip"]}]"#, "not-an-ip"),
    ] {
        let err = bed
            .ctrd
            .run_pod(&PodSpec::new("broken").networks(networks))
            .expect_err("RunPodSandbox must fail");
        assert!(
            err.message().contains(says) && err.message().contains("attache"),
            "{networks}: containerd's error does not carry attache's message: {}",
            err.message()
        );
        assert!(bed.ctrd.pods().is_empty(), "{networks}: a sandbox is left");
        let left = leftovers(&bed.node, &[], &[]);
        assert!(left.is_empty(), "{networks}: left behind: {left:#?}");
    }
    // containerd's own cleanup DELs succeeded.
    let dels = crate::testbed::logged(&bed.node, "DEL");
    assert!(
        !dels.is_empty() && dels.iter().all(|l| l.contains("code=0")),
        "{dels:#?}"
    );
}

/// attache installed as `bridge` (drop-in) under containerd; `conf` the bridge plugin's configuration.
fn drop_in_conflist(conf: Value) -> Value {
    json!({"cniVersion": "1.0.0", "name": "dropin", "plugins": [conf]})
}

fn drop_in_bridge(node: &Node, extra: Value) -> Value {
    let mut conf = json!({"type": "bridge", "bridge": "br-drop", "isGateway": true,
        "ipam": {"type": "host-local", "subnet": "10.66.0.0/24", "dataDir": node.path("ipam")}});
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    drop_in_conflist(conf)
}

/// What ADD refuses and DEL must still take: a range start outside the subnet and an MTU that is no
/// number.
fn refused(node: &Node) -> Value {
    let mut c = drop_in_bridge(node, json!({"mtu": "big"}));
    c["plugins"][0]["ipam"]["rangeStart"] = json!("10.99.0.5");
    c
}

#[test]
fn a_drop_in_conf_that_add_refuses_can_still_be_stopped_and_removed() {
    require_reference_plugins();
    let node = Node::new("cri-dropin");
    // Declared after the node, so dropped (stopped) before it.
    let ctrd = Containerd::start(
        &node,
        &drop_in_bridge(&node, json!({})),
        &plugins(&[("bridge", attache_bin())])
            .iter()
            .map(|(n, p)| (*n, p.as_path()))
            .collect::<Vec<_>>(),
    );
    // attache answers as `bridge`: a pod gets its address from the drop-in.
    let id = ctrd.run_pod(&PodSpec::new("kept")).expect("RunPodSandbox");
    let netns = ctrd.netns(&id);
    let eth0 = addr_of(&netns, "eth0");
    assert!(eth0.starts_with("10.66.0."), "{eth0}");
    assert!(pings(&netns, "10.66.0.1"));

    // The operator breaks the configuration (written in place: containerd 1.6 ignores renames) ...
    std::fs::write(
        ctrd.conf_dir.join("10-test.conflist"),
        refused(&node).to_string(),
    )
    .unwrap();
    let reloaded = crate::poll::eventually(20, || {
        ctrd.status()
            .is_ok_and(|s| s["info"]["cniconfig"].to_string().contains("10.99.0.5"))
    });
    assert!(reloaded, "containerd did not load the new configuration");
    // ... new pods are refused with attache's reason, and leave nothing ...
    let err = ctrd
        .run_pod(&PodSpec::new("refused"))
        .expect_err("ADD must refuse the configuration");
    assert!(
        err.message().contains("bridge: mtu: invalid type"),
        "{}",
        err.message()
    );
    assert_eq!(ctrd.pods(), vec![id.clone()], "only the first pod is left");
    // ... and the pod made before can still be stopped and removed: DEL reads only what teardown needs.
    ctrd.stop_pod(&id)
        .expect("StopPodSandbox with a configuration ADD refuses");
    ctrd.remove_pod(&id).expect("RemovePodSandbox");
    assert!(ctrd.pods().is_empty());
    let left = leftovers(&node, &[id], &[eth0]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// `ctr run --rm --cni` in meta mode: ctr reads `/etc/cni/net.d` and `/opt/cni/bin`, so it runs in a
/// private mount namespace where those are the test's folders. It sends ADD with the task's netns and,
/// after the command exits, DEL without `CNI_NETNS`.
#[test]
fn ctr_run_with_cni_attaches_and_its_del_without_a_netns_leaves_nothing() {
    require_reference_plugins();
    let node = Node::with_nic("ctr-run");
    let dir = write_definitions(&node);
    let mut conf = meta_conflist(&node, &dir);
    conf["plugins"][0]["defaultNetworks"] = json!(["default/br-net"]);
    let plugins = plugins(&[("attache", attache_bin())]);
    let ctrd = Containerd::start(
        &node,
        &conf,
        &plugins
            .iter()
            .map(|(n, p)| (*n, p.as_path()))
            .collect::<Vec<_>>(),
    );
    let id = format!("ctr-{}", std::process::id());
    let script = format!(
        "set -e; mount -t tmpfs tmpfs /opt; mkdir -p /opt/cni/bin; mount --bind {bin} /opt/cni/bin; \
         mount --bind {conf} /etc/cni/net.d; \
         exec ctr -a {sock} -n k8s.io run --rm --cni --cgroup {cg}/{id} --runc-root {root} {image} {id} \
         sh -c 'ip -o -4 addr show; ping -c 1 -W 2 10.55.0.1 >/dev/null && echo gateway-answered'",
        bin = ctrd.bin_dir.display(),
        conf = ctrd.conf_dir.display(),
        sock = ctrd.socket.display(),
        cg = ctrd.cgroup_parent,
        root = ctrd.dir.join("ctr-runc").display(),
        image = crate::runtime::IMAGE,
    );
    let out = crate::runtime::run(&mut crate::runtime::in_private_mounts(
        &format!("/run/netns/{}", node.name),
        &script,
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ctr run failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The cluster network (ptp) and the default network (native bridge) inside the task.
    assert!(
        stdout.contains("eth0") && stdout.contains("inet 10.77.0."),
        "{stdout}"
    );
    assert!(
        stdout.contains("net1") && stdout.contains("inet 10.55.0."),
        "{stdout}"
    );
    assert!(stdout.contains("gateway-answered"), "{stdout}");

    let dels = crate::testbed::logged(&node, "DEL");
    assert_eq!(dels.len(), 1, "{dels:#?}");
    assert!(dels[0].contains("code=0"), "{dels:#?}");
    let addresses: Vec<String> = stdout
        .split_whitespace()
        .filter(|w| w.starts_with("10."))
        .map(|w| w.split('/').next().unwrap().to_string())
        .collect();
    let left = leftovers(&node, &[id], &addresses);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// `attache ARGS` inside the node netns (its teardowns touch the node's links, never the machine's).
fn attache_cli(node: &Node, args: &[&str]) -> std::process::Output {
    let bin = attache_bin().display().to_string();
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    node.sh(None, &argv)
}

/// attache's configuration as `install` would have written it for this node, with `bin_dir`; its path.
fn installed_conf(node: &Node, bin_dir: &Path) -> String {
    let mut c = meta_conflist(node, &node.path("networks"));
    c["plugins"][0]["binDir"] = json!(bin_dir);
    let p = node.path("00-attache.conflist");
    std::fs::write(&p, c.to_string()).unwrap();
    p.display().to_string()
}

/// host-local's leases under the node's `ipam/`, as `network/ip`.
fn leases(node: &Node) -> Vec<String> {
    node.files("ipam")
        .into_iter()
        .filter(|f| !f.ends_with("/lock") && !f.contains("last_reserved_ip"))
        .collect()
}

fn masq_chains(node: &Node) -> usize {
    let o = node.sh(None, &["nft", "list", "table", "inet", "attache"]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.trim().starts_with("chain masq-"))
        .count()
}

// Issue 19.7: attache taken off a node while a pod is still attached. `uninstall` refuses and says to
// drain first; forced, containerd's DEL goes to the cluster network alone and the secondary network's
// lease, record and masquerade chain stay. `inspect --gc` then tears the record down as DEL would — once
// the CRI no longer lists the sandbox (a stopped one may still get its DEL) or, where no CRI answers,
// once the record is older than --older-than.
#[test]
fn uninstall_refuses_with_pods_attached_and_inspect_gc_tears_down_what_no_runtime_will_del() {
    let bed = meta_bed("cri-uninst");
    let node = &bed.node;
    let pod = PodSpec::new("web").networks("masq-net");
    let id = bed.ctrd.run_pod(&pod).expect("RunPodSandbox");
    assert_eq!(leases(node).len(), 2, "{:?}", leases(node));
    assert_eq!(masq_chains(node), 1);

    let cache = node.path("cache").display().to_string();
    let (bin, conf) = (node.path("host-bin"), node.path("host-net.d"));
    for d in [&bin, &conf] {
        std::fs::create_dir_all(d).unwrap();
    }
    let uninstall = |force: bool| {
        let mut a = vec![
            "uninstall".to_string(),
            format!("--bin-dir={}", bin.display()),
            format!("--conf-dir={}", conf.display()),
            format!("--cache-dir={cache}"),
        ];
        if force {
            a.push("--force".into());
        }
        attache_cli(node, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let refused = uninstall(false);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("default/web") && said.contains("Drain the node"),
        "{said}"
    );
    assert!(uninstall(true).status.success());

    // What uninstall does to the runtime: containerd's configuration is the cluster network alone.
    let cluster_only = json!({"cniVersion": "1.0.0", "name": "cluster", "plugins": [
        {"type": "ptp", "ipam": {"type": "host-local", "subnet": "10.77.0.0/24",
                                 "dataDir": node.path("ipam"), "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": true}}]});
    std::fs::write(
        bed.ctrd.conf_dir.join("10-test.conflist"),
        cluster_only.to_string(),
    )
    .unwrap();
    let reloaded = crate::poll::eventually(30, || {
        bed.ctrd
            .status()
            .is_ok_and(|s| !s.to_string().contains("attache.log"))
    });
    assert!(reloaded, "containerd kept attache's configuration");
    bed.ctrd.stop_pod(&id).expect("StopPodSandbox");
    let stranded = leases(node);
    assert_eq!(
        stranded.len(),
        1,
        "the secondary's lease stays: {stranded:?}"
    );
    assert!(stranded[0].starts_with("masq-net/"), "{stranded:?}");
    assert_eq!(node.files("cache").len(), 1, "the record stays");
    assert_eq!(masq_chains(node), 1);

    // The configuration attache was installed with, as inspect reads it: cacheDir, and binDir for the
    // cluster network's plugin, whose DEL the teardown runs.
    let installed = installed_conf(node, &bed.ctrd.bin_dir);
    let socket = bed.ctrd.socket.display().to_string();
    let gc = || {
        let out = attache_cli(
            node,
            &[
                "inspect",
                "--conf",
                &installed,
                "--gc",
                "--yes",
                "--cri-socket",
                &socket,
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Stopped, the sandbox is still listed: its removal may still send a DEL.
    let kept = gc();
    assert!(
        kept.contains("left alone") && kept.contains("lists 1 sandbox"),
        "{kept}"
    );
    assert_eq!(node.files("cache").len(), 1);
    bed.ctrd.remove_pod(&id).expect("RemovePodSandbox");
    let torn = gc();
    assert!(torn.contains("tore down default/web"), "{torn}");
    assert!(node.files("cache").is_empty(), "{:?}", node.files("cache"));
    assert!(leases(node).is_empty(), "{:?}", leases(node));
    assert_eq!(masq_chains(node), 0);
    let veths: Vec<String> = node
        .links(None)
        .into_iter()
        .filter(|l| l.starts_with("veth"))
        .collect();
    assert!(veths.is_empty(), "{veths:?}");

    // Where no CRI answers (podman, ctr): the operator's age.
    let mut node2 = Node::new("cri-uninst-age");
    let netns = node2.pod();
    let plugin = meta_conflist(&node2, &write_definitions(&node2))["plugins"][0].clone();
    let mut meta = plugin;
    meta["cniVersion"] = json!("1.0.0");
    meta["name"] = json!("attache");
    meta["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations":
        {"k8s.v1.cni.cncf.io/networks": "masq-net"}});
    let mut call = node2.call("ADD", "noruntime1", &netns, "eth0");
    call.args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=plain";
    node2.exec(&call, &meta).ok();
    assert_eq!(leases(&node2).len(), 2);
    node2.delete_pod(&netns);
    let installed = installed_conf(&node2, Path::new(REFERENCE_DIR));
    let gc_without_cri = |extra: &[&str]| {
        let mut argv = vec!["inspect", "--conf", &installed, "--gc", "--yes"];
        argv.extend(["--cri-socket", "/nonexistent.sock"]);
        argv.extend_from_slice(extra);
        attache_cli(&node2, &argv)
    };
    let out = gc_without_cri(&[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no --older-than"));
    assert_eq!(node2.files("cache").len(), 1, "kept without an age");
    let out = gc_without_cri(&["--older-than", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(node2.files("cache").is_empty());
    assert!(leases(&node2).is_empty(), "{:?}", leases(&node2));
    assert_eq!(masq_chains(&node2), 0);
}
