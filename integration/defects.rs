//! Regression tests for the field defects real runtimes, a hanging API server and a hostile-input probe
//! found (issue 8): one test per defect, each asserting what a user would check afterwards — links,
//! addresses held, records, nftables, the error code — in test namespaces only.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::testbed::{CniOutput, Node, REFERENCE_DIR, require_reference_plugins};
use serde_json::{Value, json};

const POD_NS: &str = "team-a";
const POD_NAME: &str = "web-0";
const POD_UID: &str = "0b3c2f4e-0000-4000-8000-000000000001";

fn k8s_args() -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NS};K8S_POD_NAME={POD_NAME};K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID={POD_UID}"
    )
}

/// A meta configuration named `name`, its cluster network `cluster`, two native bridge networks
/// (`blue` with isGateway and ipMasq, `red` with macspoofchk) in its networksDir.
fn meta(node: &Node, name: &str) -> Value {
    let ipam = node.path("ipam").display().to_string();
    let dir = crate::testbed::write_nads(
        node,
        POD_NS,
        &[
            (
                "blue",
                json!({"cniVersion":"1.0.0","type":"bridge","bridge":"br-blue","isGateway":true,"ipMasq":true,
                       "ipam":{"type":"host-local","subnet":"10.21.0.0/24","dataDir":ipam}}),
            ),
            (
                "red",
                json!({"cniVersion":"1.0.0","type":"bridge","bridge":"br-red","macspoofchk":true,
                       "ipam":{"type":"host-local","subnet":"10.22.0.0/24","dataDir":ipam}}),
            ),
        ],
    );
    json!({
        "cniVersion": "1.1.0",
        "name": name,
        "type": "attache",
        "clusterNetwork": crate::testbed::ptp_cluster(node),
        "cacheDir": node.path("cache"),
        "confDir": node.path("net.d"),
        "networksDir": dir,
        "logFile": node.path("attache.log"),
        "logLevel": "debug"
    })
}

/// The runtime passes the pod's networks annotation (containerd's pod-annotations capability).
fn annotated(mut conf: Value, networks: &str) -> Value {
    conf["runtimeConfig"] =
        json!({"io.kubernetes.cri.pod-annotations": {"k8s.v1.cni.cncf.io/networks": networks}});
    conf
}

/// Addresses held by host-local, as `network/ip`.
fn leases(node: &Node) -> Vec<String> {
    node.files("ipam")
        .into_iter()
        .filter(|f| !f.ends_with("/lock") && !f.contains("last_reserved_ip"))
        .collect()
}

fn veths(node: &Node) -> Vec<String> {
    node.links(None)
        .into_iter()
        .filter(|l| l.starts_with("veth"))
        .collect()
}

/// The per-attachment chains in attache's nftables tables (masquerade and MAC spoof check) of the node.
fn nft_chains(node: &Node) -> Vec<String> {
    let mut out = Vec::new();
    for table in [["inet", "attache"], ["bridge", "attache"]] {
        let o = node.sh(None, &["nft", "list", "table", table[0], table[1]]);
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            let l = l.trim();
            if let Some(name) = l.strip_prefix("chain ") {
                let name = name.trim_end_matches(" {");
                if name.starts_with("masq-") || name.starts_with("mac-") {
                    out.push(name.to_string());
                }
            }
        }
    }
    out
}

fn add_pod(node: &Node, pod: &str, id: &str, conf: &Value) -> Value {
    let args = k8s_args();
    let mut call = node.call("ADD", id, pod, "eth0");
    call.args = &args;
    node.exec(&call, conf).ok()
}

fn del_pod(node: &Node, pod: &str, id: &str, conf: &Value) -> CniOutput {
    let args = k8s_args();
    let mut call = node.call("DEL", id, pod, "eth0");
    call.args = &args;
    node.exec(&call, conf)
}

fn gc(node: &Node, conf: &Value, valid: Value) -> CniOutput {
    let mut c = conf.clone();
    c["cni.dev/valid-attachments"] = valid;
    let mut call = node.call("GC", "", "", "");
    call.netns = None;
    node.exec(&call, &c)
}

fn bridge_conf(node: &Node, name: &str, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.1.0", "name": name, "type": "bridge", "bridge": "br0",
        "ipam": {"type": "host-local", "subnet": "10.66.0.0/24", "dataDir": node.path("ipam")}
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

// 1. GC of one network never touches another network's pods.
#[test]
fn gc_touches_only_its_own_network() {
    require_reference_plugins();
    let mut node = Node::new("gcnet");
    let pod = node.pod();
    // Two meta networks share cacheDir and even the cluster network.
    let a = annotated(meta(&node, "net-a"), "blue");
    let b = meta(&node, "net-b");
    add_pod(&node, &pod, "pod-a", &a);
    let before = (leases(&node), node.links(Some(&pod)), node.files("cache"));
    assert_eq!(before.0.len(), 2, "{:?}", before.0);
    gc(&node, &b, json!([])).ok();
    assert_eq!(
        (leases(&node), node.links(Some(&pod)), node.files("cache")),
        before,
        "GC of net-b removed net-a's pod"
    );
    // GC of net-a with pod-a listed keeps it; without, removes it.
    gc(
        &node,
        &a,
        json!([{"containerID": "pod-a", "ifname": "eth0"}]),
    )
    .ok();
    assert_eq!(node.files("cache"), before.2);
    gc(&node, &a, json!([])).ok();
    assert!(node.files("cache").is_empty());
    assert!(leases(&node).is_empty(), "{:?}", leases(&node));
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);

    // Drop-in: host-local GC of bridge network "brb" leaves "bra"'s addresses alone.
    let bra = bridge_conf(&node, "bra", json!({}));
    let brb = bridge_conf(&node, "brb", json!({}));
    node.exec(&node.call("ADD", "pod-c", &pod, "eth0"), &bra)
        .ok();
    gc(&node, &brb, json!([])).ok();
    assert_eq!(leases(&node).len(), 1, "{:?}", leases(&node));
    gc(&node, &bra, json!([])).ok();
    assert!(leases(&node).is_empty());
}

// 2. Drop-in DEL reads only what teardown needs; `mtu: 0` is the default.
#[test]
fn drop_in_del_succeeds_for_configurations_add_refused() {
    require_reference_plugins();
    let mut node = Node::with_nic("deldrop");
    let pod = node.pod();
    let refused = [
        bridge_conf(
            &node,
            "n",
            json!({"hairpinMode": true, "promiscMode": true}),
        ),
        bridge_conf(&node, "n", json!({"bridge": "a-very-long-bridge-name"})),
        bridge_conf(&node, "n", json!({"mtu": -5})),
        bridge_conf(&node, "n", json!({"vlan": 5000})),
        bridge_conf(
            &node,
            "n",
            json!({"ipam": {"type": "host-local", "subnet": "10.66.0.0/33"}}),
        ),
        json!({"cniVersion": "1.0.0", "name": "m", "type": "macvlan", "master": "nic0", "mode": "bogus",
               "ipam": {"type": "host-local", "subnet": "10.67.0.0/24", "dataDir": node.path("ipam")}}),
    ];
    for c in &refused {
        node.exec(&node.call("ADD", "d1", &pod, "eth0"), c).err(7);
        let out = node.exec(&node.call("DEL", "d1", &pod, "eth0"), c);
        assert_eq!(out.exit, 0, "DEL of {c}: {}", out.stdout);
        // And without a netns, as a runtime retries after the pod is gone.
        let mut call = node.call("DEL", "d1", "", "eth0");
        call.netns = None;
        node.exec(&call, c).ok();
    }
    // Added with a good configuration, deleted with one that has since gone bad: all is released.
    let good = bridge_conf(
        &node,
        "n",
        json!({"mtu": 0, "ipMasq": true, "isGateway": true}),
    );
    node.exec(&node.call("ADD", "d2", &pod, "eth0"), &good).ok();
    let mtu = &node.ip(Some(&pod), &["link", "show", "eth0"])[0]["mtu"];
    assert_eq!(mtu, 1500, "mtu 0 means the default");
    assert_eq!(leases(&node).len(), 1);
    assert_eq!(nft_chains(&node).len(), 1);
    let mut bad = good.clone();
    bad["mtu"] = json!(-5);
    bad["hairpinMode"] = json!(true);
    bad["promiscMode"] = json!(true);
    node.exec(&node.call("DEL", "d2", &pod, "eth0"), &bad).ok();
    assert!(leases(&node).is_empty());
    assert!(veths(&node).is_empty());
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    assert!(nft_chains(&node).is_empty(), "{:?}", nft_chains(&node));
}

// 3. DEL without a readable record tears down every network the configuration describes, and every
// node link labelled as the container's.
#[test]
fn del_without_a_readable_record_tears_down_everything() {
    require_reference_plugins();
    for damage in [
        "deleted",
        "truncated",
        "a directory",
        "deleted, red undescribed",
    ] {
        let mut node = Node::new("lost");
        let pod = node.pod();
        let conf = annotated(meta(&node, "attache"), "blue,red");
        add_pod(&node, &pod, "lost1", &conf);
        assert_eq!(leases(&node).len(), 3, "{damage}");
        assert_eq!(veths(&node).len(), 3, "{damage}: ptp's, blue's, red's");
        assert_eq!(
            nft_chains(&node).len(),
            2,
            "{damage}: {:?}",
            nft_chains(&node)
        );
        let record = node.path("cache/lost1/eth0.json");
        let mut del_conf = conf.clone();
        match damage {
            "truncated" => std::fs::write(&record, "{\"kind\":\"attache").unwrap(),
            "a directory" => {
                std::fs::remove_file(&record).unwrap();
                std::fs::create_dir_all(record.join("x")).unwrap();
            }
            _ => std::fs::remove_file(&record).unwrap(),
        }
        if damage.contains("undescribed") {
            del_conf = annotated(meta(&node, "attache"), "blue");
        }
        del_pod(&node, &pod, "lost1", &del_conf).ok();
        assert!(veths(&node).is_empty(), "{damage}: {:?}", veths(&node));
        assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()], "{damage}");
        assert!(node.files("cache").is_empty(), "{damage}");
        if damage.contains("undescribed") {
            // Nothing describes red any more: its link went by its alias; its address and spoof-check
            // chain are what no configuration names (GC of that network frees them).
            assert_eq!(leases(&node), vec!["red/10.22.0.2".to_string()], "{damage}");
            assert_eq!(nft_chains(&node).len(), 1, "{damage}");
        } else {
            assert!(leases(&node).is_empty(), "{damage}: {:?}", leases(&node));
            assert!(
                nft_chains(&node).is_empty(),
                "{damage}: {:?}",
                nft_chains(&node)
            );
        }
        // DEL is idempotent.
        del_pod(&node, &pod, "lost1", &del_conf).ok();
    }
}

/// A bind mount of a pod's netns at a path of the test's own; unmounted (leaving the file) on drop.
struct BindMount(PathBuf);

impl BindMount {
    fn new(target: PathBuf, netns: &str) -> BindMount {
        std::fs::write(&target, "").unwrap();
        let ok = std::process::Command::new("mount")
            .args(["--bind", netns])
            .arg(&target)
            .status()
            .unwrap();
        assert!(ok.success());
        BindMount(target)
    }

    fn unmount(&self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        self.unmount();
    }
}

// 4. A CNI_NETNS that is no live netns any more (an unmounted bind-mount point) does not break DEL.
#[test]
fn del_with_a_stale_netns_path_releases_everything() {
    require_reference_plugins();
    let mut node = Node::new("stale");
    let pod = node.pod();
    let mount = BindMount::new(node.path("pod-netns"), &pod);
    let path = mount.0.display().to_string();
    let conf = meta(&node, "attache");
    add_pod(&node, &path, "stale1", &conf);
    let bconf = bridge_conf(&node, "n", json!({}));
    node.exec(&node.call("ADD", "stale2", &path, "net9"), &bconf)
        .ok();
    assert_eq!(leases(&node).len(), 2);
    // The runtime unmounts and drops the namespace before the DEL arrives.
    mount.unmount();
    node.delete_pod(&pod);
    assert!(
        Path::new(&path).exists(),
        "the mount point stays, as a plain file"
    );
    del_pod(&node, &path, "stale1", &conf).ok();
    node.exec(&node.call("DEL", "stale2", &path, "net9"), &bconf)
        .ok();
    assert!(leases(&node).is_empty(), "{:?}", leases(&node));
    assert!(node.files("cache").is_empty());
    assert!(crate::poll::eventually(5, || veths(&node).is_empty()));
}

// 5. Temporaries of killed writers are removed by DEL and GC.
#[test]
fn del_and_gc_remove_temporaries_of_killed_writers() {
    require_reference_plugins();
    let mut node = Node::new("tmps");
    let pod = node.pod();
    let conf = meta(&node, "attache");
    add_pod(&node, &pod, "tmp1", &conf);
    // What an ADD killed between writing and renaming leaves: old-style and per-process temporaries.
    std::fs::write(node.path("cache/tmp1/.eth0.tmp"), "{").unwrap();
    std::fs::write(node.path("cache/tmp1/.eth0.999999999.0.tmp"), "{").unwrap();
    std::fs::create_dir_all(node.path("cache/gone")).unwrap();
    std::fs::write(node.path("cache/gone/.eth0.999999998.3.tmp"), "{").unwrap();
    del_pod(&node, &pod, "tmp1", &conf).ok();
    assert_eq!(node.files("cache"), vec!["gone/.eth0.999999998.3.tmp"]);
    gc(&node, &conf, json!([])).ok();
    assert!(node.files("cache").is_empty());
    assert!(!node.path("cache/gone").exists());
}

// 7. Under a name it does not own, attache refuses; it never execs itself.
#[test]
fn foreign_names_refuse_and_attache_never_execs_itself() {
    require_reference_plugins();
    let mut node = Node::with_nic("selfexec");
    let pod = node.pod();
    let bin = node.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["whereabouts", "macvlan"] {
        std::os::unix::fs::symlink(crate::testbed::attache_bin(), bin.join(name)).unwrap();
    }
    let conf = json!({"cniVersion": "1.0.0", "name": "m", "type": "macvlan", "master": "nic0",
                      "ipam": {"type": "whereabouts"}});
    let path = format!("{}:{REFERENCE_DIR}", bin.display());
    let t = Instant::now();
    // Invoked as a name it does not answer to (another IPAM): refused at once.
    let mut call = node.call("ADD", "s1", &pod, "eth0");
    call.bin = bin.join("whereabouts");
    call.path = path.clone();
    let e = node.exec(&call, &conf).err(7);
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("invoked as \"whereabouts\""),
        "{e}"
    );
    // Invoked as macvlan, its IPAM type resolves to attache itself: refused, not exec'd.
    for cmd in ["ADD", "DEL"] {
        let mut call = node.call(cmd, "s1", &pod, "eth0");
        call.bin = bin.join("macvlan");
        call.path = path.clone();
        let e = node.exec(&call, &conf).err(7);
        assert!(e["msg"].as_str().unwrap().contains("attache itself"), "{e}");
    }
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    // Copies (which no same-file check sees) execing each other: the depth guard ends the loop.
    let (a, b) = (node.path("copy-a"), node.path("copy-b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::copy(crate::testbed::attache_bin(), d.join("attache")).unwrap();
    }
    let loop_conf = |bin_dir: &Path, next: &str, cache: &str| {
        json!({"cniVersion": "1.0.0", "name": "loop", "type": "attache", "binDir": bin_dir,
               "clusterNetwork": node.path(next), "cacheDir": node.path(cache)})
    };
    std::fs::write(
        node.path("loop-a.conf"),
        loop_conf(&b, "loop-b.conf", "cache-a").to_string(),
    )
    .unwrap();
    std::fs::write(
        node.path("loop-b.conf"),
        loop_conf(&a, "loop-a.conf", "cache-b").to_string(),
    )
    .unwrap();
    let e = node
        .exec(
            &node.call("ADD", "s2", &pod, "eth0"),
            &loop_conf(&b, "loop-b.conf", "cache"),
        )
        .err(7);
    assert!(e["msg"].as_str().unwrap().contains("execs deep"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let left = std::process::Command::new("pgrep")
        .args(["-f", &node.dir.display().to_string()])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "processes left running");
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
}

// 8. Container IDs are bounded; long ones still get a label that fits the kernel's alias.
#[test]
fn container_id_length_is_bounded() {
    require_reference_plugins();
    let mut node = Node::new("cid");
    let pod = node.pod();
    let conf = annotated(meta(&node, "attache"), "blue");
    for cmd in ["ADD", "CHECK"] {
        let id = "a".repeat(256);
        let mut call = node.call(cmd, &id, &pod, "eth0");
        let args = k8s_args();
        call.args = &args;
        let e = node.exec(&call, &conf).err(4);
        assert!(e["msg"].as_str().unwrap().contains("256 bytes"), "{e}");
    }
    assert!(leases(&node).is_empty() && veths(&node).is_empty());
    // The reference plugins take any length: a runtime retries a failing DEL forever, so a DEL of an ID
    // only attache's ADD refuses succeeds, touches nothing and says why — in every mode.
    let long_id = "c".repeat(301);
    // (Debian's reference plugins speak up to 1.0.0.)
    let mut bconf = bridge_conf(&node, "n", json!({"logFile": node.path("dropin.log")}));
    bconf["cniVersion"] = json!("1.0.0");
    for cmd in ["ADD", "DEL"] {
        let mut call = node.call(cmd, &long_id, &pod, "net7");
        call.bin = Path::new(REFERENCE_DIR).join("bridge");
        node.exec(&call, &bconf).ok();
    }
    assert!(leases(&node).is_empty(), "the reference released it");
    for (c, log) in [(&conf, "attache.log"), (&bconf, "dropin.log")] {
        let mut call = node.call("DEL", &long_id, &pod, "eth0");
        let args = k8s_args();
        call.args = &args;
        assert!(node.exec(&call, c).stdout.trim().is_empty());
        let text = std::fs::read_to_string(node.path(log)).unwrap();
        assert!(
            text.contains("nothing to tear down") && text.contains("301 bytes"),
            "{log}: {text}"
        );
    }
    // GC entries of such IDs are only compared, never used.
    let valid = json!([{"containerID": long_id, "ifname": "eth0"}]);
    gc(&node, &conf, valid).ok();
    // The reference refuses a bad character on DEL, and so does attache.
    let mut call = node.call("DEL", "-bad", &pod, "eth0");
    let args = k8s_args();
    call.args = &args;
    node.exec(&call, &conf).err(4);
    assert!(node.files("cache").is_empty(), "{:?}", node.files("cache"));
    assert!(leases(&node).is_empty() && veths(&node).is_empty());
    let long = "b".repeat(250);
    add_pod(&node, &pod, &long, &conf);
    let links = node.ip(None, &["link", "show"]);
    let alias = links
        .as_array()
        .unwrap()
        .iter()
        .find_map(|l| l["ifalias"].as_str().map(str::to_string))
        .expect("the host veth is labelled");
    assert!(
        alias.starts_with("attache h:") && alias.ends_with(" net1"),
        "{alias}"
    );
    del_pod(&node, &pod, &long, &conf).ok();
    assert!(leases(&node).is_empty() && veths(&node).is_empty());
    assert!(node.files("cache").is_empty());
}

// 9. A huge networks annotation is refused at once, and maxAttachments bounds a pod.
#[test]
fn huge_networks_annotation_is_refused_fast() {
    require_reference_plugins();
    let mut node = Node::new("huge");
    let pod = node.pod();
    let huge = vec!["blue"; 36_000].join(",");
    let conf = annotated(meta(&node, "attache"), &huge);
    let t = Instant::now();
    let args = k8s_args();
    let mut call = node.call("ADD", "h1", &pod, "eth0");
    call.args = &args;
    let e = node.exec(&call, &conf).err(7);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(e["msg"].as_str().unwrap().contains("36000 networks"), "{e}");
    let mut conf = annotated(meta(&node, "attache"), "blue,red");
    conf["maxAttachments"] = json!(1);
    let e = node.exec(&call, &conf).err(7);
    assert!(e["msg"].as_str().unwrap().contains("maxAttachments"), "{e}");
    assert!(leases(&node).is_empty() && veths(&node).is_empty());
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
}

// 10. Drop-in mode refuses the plugin's own netns and namespaces of other types.
#[test]
fn own_netns_is_refused_in_every_mode() {
    require_reference_plugins();
    let node = Node::with_nic("ownns");
    let conf = bridge_conf(&node, "n", json!({}));
    let mac = json!({"cniVersion": "1.0.0", "name": "m", "type": "macvlan", "master": "nic0",
                     "ipam": {"type": "host-local", "subnet": "10.67.0.0/24", "dataDir": node.path("ipam")}});
    for c in [&conf, &mac] {
        for ns in ["/proc/self/ns/net", "/proc/self/ns/uts"] {
            let e = node.exec(&node.call("ADD", "o1", ns, "eth0"), c).err(8);
            assert!(!e["msg"].as_str().unwrap().is_empty());
        }
    }
    assert!(!node.links(None).contains(&"br0".to_string()));
    assert!(leases(&node).is_empty());
    // DEL with the node's own netns leaves the node's interface of that name alone.
    node.exec(&node.call("DEL", "o1", "/proc/self/ns/net", "nic0"), &mac)
        .ok();
    assert!(node.links(None).contains(&"nic0".to_string()));
}

// 11. State files are never opened through a planted symlink.
#[test]
fn planted_symlinks_are_not_followed() {
    require_reference_plugins();
    let mut node = Node::new("symlink");
    let pod = node.pod();
    let victim = node.path("victim");
    std::fs::write(&victim, "precious").unwrap();
    // host-local's last_reserved_ip.
    let conf = bridge_conf(&node, "n", json!({}));
    std::fs::create_dir_all(node.path("ipam/n")).unwrap();
    std::os::unix::fs::symlink(&victim, node.path("ipam/n/last_reserved_ip.0")).unwrap();
    node.exec(&node.call("ADD", "y1", &pod, "eth0"), &conf)
        .err(5);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(leases(&node).is_empty());
    assert!(veths(&node).is_empty());
    std::fs::remove_file(node.path("ipam/n/last_reserved_ip.0")).unwrap();
    // A record's folder that is a symlink.
    let mconf = meta(&node, "attache");
    std::fs::create_dir_all(node.path("cache")).unwrap();
    std::os::unix::fs::symlink(node.path("elsewhere"), node.path("cache/y2")).unwrap();
    std::fs::create_dir_all(node.path("elsewhere")).unwrap();
    add_pod_err(&node, &pod, "y2", &mconf, 5);
    assert!(
        std::fs::read_dir(node.path("elsewhere"))
            .unwrap()
            .next()
            .is_none()
    );
    assert!(leases(&node).is_empty());
    std::fs::remove_file(node.path("cache/y2")).unwrap();
    // A record where the record is a symlink to a file: not read through, not overwritten.
    std::fs::create_dir_all(node.path("cache/y3")).unwrap();
    std::os::unix::fs::symlink(&victim, node.path("cache/y3/eth0.json")).unwrap();
    add_pod_err(&node, &pod, "y3", &mconf, 5);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    del_pod(&node, &pod, "y3", &mconf).ok();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    // State files attache creates are 0600 (the cluster network's are the reference host-local's).
    let mconf = annotated(mconf, "blue");
    add_pod(&node, &pod, "y4", &mconf);
    let blue = leases(&node)
        .into_iter()
        .find(|l| l.starts_with("blue/"))
        .unwrap();
    for f in [
        node.path("cache/y4/eth0.json"),
        node.path("ipam").join(blue),
        node.path("ipam/blue/last_reserved_ip.0"),
    ] {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    del_pod(&node, &pod, "y4", &mconf).ok();
}

fn add_pod_err(node: &Node, pod: &str, id: &str, conf: &Value, code: u64) -> Value {
    let args = k8s_args();
    let mut call = node.call("ADD", id, pod, "eth0");
    call.args = &args;
    node.exec(&call, conf).err(code)
}

// 12. Interface names are checked at planning, before anything is made; relative dataDir refused.
#[test]
fn interface_names_are_checked_at_planning() {
    require_reference_plugins();
    let mut node = Node::new("ifnames");
    let pod = node.pod();
    for networks in [r#"[{"name":"blue","interface":"lo"}]"#, "blue@eth0"] {
        let conf = annotated(meta(&node, "attache"), networks);
        let e = add_pod_err(&node, &pod, "i1", &conf, 7);
        let msg = e["msg"].as_str().unwrap();
        assert!(msg.contains("lo") || msg.contains("eth0"), "{msg}");
        assert!(leases(&node).is_empty(), "{networks}: {:?}", leases(&node));
        assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    }
    let mut c = bridge_conf(&node, "n", json!({}));
    c["ipam"]["dataDir"] = json!("relative/ipam");
    node.exec(&node.call("ADD", "i2", &pod, "eth0"), &c).err(7);
    assert!(veths(&node).is_empty());
}

// 13. Missing capabilities are named before anything happens.
#[test]
fn missing_capabilities_are_named() {
    require_reference_plugins();
    assert!(
        Path::new("/usr/bin/setpriv").exists(),
        "setpriv (util-linux) is needed to drop capabilities"
    );
    let mut node = Node::new("caps");
    let pod = node.pod();
    let wrapper = node.path("attache-without-net-admin");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec /usr/bin/setpriv --bounding-set -net_admin {} \"$@\"\n",
            crate::testbed::attache_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    for conf in [bridge_conf(&node, "n", json!({})), meta(&node, "attache")] {
        let mut call = node.call("ADD", "c1", &pod, "eth0");
        call.bin = wrapper.clone();
        let e = node.exec(&call, &conf).err(5);
        assert!(e["msg"].as_str().unwrap().contains("CAP_NET_ADMIN"), "{e}");
        assert!(leases(&node).is_empty());
        assert!(node.files("cache").is_empty());
        assert!(!node.links(None).contains(&"br0".to_string()));
    }
}

// 14. An API server that accepts and never answers does not hold a pod's networking.
#[test]
fn a_hanging_api_server_does_not_hold_add() {
    require_reference_plugins();
    let mut node = Node::new("hang");
    let pod = node.pod();
    let hung = crate::apiserver::ApiServer::hanging_in(&node.name);
    let port = hung.local_addr().unwrap().port();
    crate::apiserver::kubeconfig_for(port, crate::apiserver::TOKEN, &node.path("kubeconfig"));
    let mut conf = annotated(meta(&node, "attache"), "blue");
    conf["kubeconfig"] = json!(node.path("kubeconfig"));
    conf["apiTimeout"] = json!(1);
    // Annotations from the runtime: the networking is done, the report gives up at the deadline.
    let t = Instant::now();
    let res = add_pod(&node, &pod, "k1", &conf);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(res["ips"][0]["address"].is_string(), "{res}");
    assert!(node.links(Some(&pod)).contains(&"net1".to_string()));
    del_pod(&node, &pod, "k1", &conf).ok();
    // Annotations only in the API: code 11, by the deadline, nothing made.
    conf.as_object_mut().unwrap().remove("runtimeConfig");
    let t = Instant::now();
    let e = add_pod_err(&node, &pod, "k2", &conf, 11);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(e["msg"].as_str().unwrap().contains("deadline"), "{e}");
    assert!(leases(&node).is_empty());
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    drop(hung);
}

#[test]
fn network_status_carries_the_uid_and_a_replaced_pod_is_not_written() {
    require_reference_plugins();
    let mut node = Node::new("uidpatch");
    let pod = node.pod();
    let api = crate::apiserver::ApiServer::start_in(&node.name);
    api.write_kubeconfig(&node.path("kubeconfig"));
    let mut pod_obj = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD_NAME, "namespace": POD_NS, "uid": "another-uid", "annotations": {}}});
    api.put(pod_obj.clone());
    let mut conf = annotated(meta(&node, "attache"), "blue");
    conf["kubeconfig"] = json!(node.path("kubeconfig"));
    add_pod(&node, &pod, "u1", &conf);
    let patches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1, "one patch, no GET first");
    assert!(!api.requests().iter().any(|r| r.method == "GET"));
    let body: Value = serde_json::from_str(&patches[0].body).unwrap();
    assert_eq!(body["metadata"]["uid"], POD_UID);
    let stored = api
        .object(&crate::apiserver::pod_path(POD_NS, POD_NAME))
        .unwrap();
    assert_eq!(
        stored["metadata"]["annotations"],
        json!({}),
        "replaced pod left alone"
    );
    assert!(
        !api.requests().iter().any(|r| r.method == "POST"),
        "no Events after the patch was refused"
    );
    del_pod(&node, &pod, "u1", &conf).ok();
    // The right pod is written.
    pod_obj["metadata"]["uid"] = json!(POD_UID);
    api.put(pod_obj);
    add_pod(&node, &pod, "u2", &conf);
    let stored = api
        .object(&crate::apiserver::pod_path(POD_NS, POD_NAME))
        .unwrap();
    assert!(
        stored["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"].is_string(),
        "{stored}"
    );
    del_pod(&node, &pod, "u2", &conf).ok();
}

// 16. The log tells what attache decided and did, and never a secret.
#[test]
fn debug_log_tells_the_story_and_info_one_line() {
    require_reference_plugins();
    let mut node = Node::new("logs");
    let pod = node.pod();
    let api = crate::apiserver::ApiServer::start_in(&node.name);
    api.write_kubeconfig(&node.path("kubeconfig"));
    api.put(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD_NAME, "namespace": POD_NS, "uid": POD_UID, "annotations": {}}}));
    let mut conf = annotated(meta(&node, "attache"), "blue");
    conf["kubeconfig"] = json!(node.path("kubeconfig"));
    add_pod(&node, &pod, "l1", &conf);
    std::fs::remove_file(node.path("cache/l1/eth0.json")).unwrap();
    del_pod(&node, &pod, "l1", &conf).ok();
    let log = std::fs::read_to_string(node.path("attache.log")).unwrap();
    for needle in [
        "annotations from the runtime",
        "runs by exec of /usr/lib/cni/ptp",
        "network team-a/blue as net1: plugin 0 \"bridge\" runs natively",
        "planned",
        "attached",
        "ms=",
        "DEL with no record",
        "detached",
    ] {
        assert!(log.contains(needle), "the log lacks {needle:?}:\n{log}");
    }
    assert!(
        !log.contains(crate::apiserver::TOKEN),
        "the log shows the token"
    );
    // At info: one line per invocation, with the outcome and the time.
    let mut info = conf.clone();
    info["logLevel"] = json!("info");
    std::fs::remove_file(node.path("attache.log")).unwrap();
    add_pod(&node, &pod, "l2", &info);
    del_pod(&node, &pod, "l2", &info).ok();
    let log = std::fs::read_to_string(node.path("attache.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].contains("command=\"ADD\"") && lines[0].contains(" ok"),
        "{log}"
    );
    assert!(
        lines[1].contains("command=\"DEL\"") && lines[1].contains("ms="),
        "{log}"
    );
}

// 1 (continued). GC forwarded to a cluster network both attache networks use keeps the other's pods.
#[test]
fn gc_forwarded_to_a_shared_cluster_network_keeps_the_other_networks_attachments() {
    require_reference_plugins();
    let mut node = Node::new("gcshared");
    let pod = node.pod();
    // A cluster plugin that speaks 1.1.0 and records what GC hands it.
    let bin = node.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let plugin = bin.join("fakecluster");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\nin=$(cat)\n[ \"$CNI_COMMAND\" = GC ] && echo \"$in\" > {}\n[ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.1.0\"}}'\nexit 0\n",
            node.path("gc-input").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = |name: &str| {
        let mut c = meta(&node, name);
        c["clusterNetwork"] =
            json!({"cniVersion": "1.1.0", "name": "shared", "type": "fakecluster"});
        c["binDir"] = json!(bin);
        c
    };
    add_pod(&node, &pod, "pod-a", &conf("net-a"));
    gc(
        &node,
        &conf("net-b"),
        json!([{"containerID": "pod-b", "ifname": "eth0"}]),
    )
    .ok();
    let seen: Value =
        serde_json::from_str(&std::fs::read_to_string(node.path("gc-input")).unwrap()).unwrap();
    let mut ids: Vec<&str> = seen["cni.dev/valid-attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["containerID"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["pod-a", "pod-b"], "{seen}");
    assert_eq!(node.files("cache"), vec!["pod-a/eth0.json".to_string()]);
}
