//! End-to-end tests of the attache binary as a CNI meta-plugin, run per the CNI protocol inside a test
//! node netns, with Debian's reference `ptp` + `host-local` as the delegated (exec'd) cluster network —
//! `ptp` because attache runs `bridge` natively.

use crate::testbed::{Node, require_reference_plugins};
use serde_json::{Value, json};

/// The cluster network: the reference ptp with host-local, state in the node's private folder.
fn cluster(node: &Node, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "clusternet",
        "type": "ptp",
        "ipam": {
            "type": "host-local",
            "subnet": "10.77.0.0/24",
            "dataDir": node.path("ipam"),
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    })
}

fn attache_conf(node: &Node, version: &str, cluster_network: Value) -> Value {
    json!({
        "cniVersion": version,
        "name": "attache",
        "type": "attache",
        "clusterNetwork": cluster_network,
        "confDir": node.path("net.d"),
        "cacheDir": node.path("cache"),
        "logFile": node.path("attache.log"),
        "logLevel": "debug"
    })
}

/// IP files host-local holds for the cluster network (lock and last_reserved_ip excluded).
fn leased(node: &Node) -> Vec<String> {
    node.files("ipam/clusternet")
        .into_iter()
        .filter(|f| f != "lock" && !f.starts_with("last_reserved_ip"))
        .collect()
}

/// Links in the node other than lo (what attachments left behind there).
fn node_links(node: &Node) -> Vec<String> {
    node.links(None).into_iter().filter(|l| l != "lo").collect()
}

#[test]
fn add_check_del_with_inline_cluster_network_in_every_version() {
    require_reference_plugins();
    for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let mut node = Node::new("inline");
        let pod = node.pod();
        // The reference plugins speak up to 1.0.0; attache converts their result to what it was asked.
        let conf = attache_conf(&node, version, cluster(&node, "1.0.0"));

        let res = node
            .exec(&node.call("ADD", "pod1", &pod, "eth0"), &conf)
            .ok();
        assert_eq!(res["cniVersion"], version);
        let addr = res["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(addr.starts_with("10.77.0."), "{res}");
        assert_eq!(
            node.addrs(Some(&pod), "eth0"),
            vec![addr.clone()],
            "{version}"
        );
        assert_eq!(
            res["ips"][0].get("version").is_some(),
            version < "1.0.0",
            "{res}"
        );
        let pod_iface = res["ips"][0]["interface"].as_u64().unwrap() as usize;
        assert_eq!(res["interfaces"][pod_iface]["name"], "eth0");
        assert_eq!(res["interfaces"][pod_iface]["sandbox"], pod.as_str());
        assert_eq!(
            leased(&node),
            vec![addr.split('/').next().unwrap().to_string()]
        );
        assert_eq!(node.files("cache"), vec!["pod1/eth0.json".to_string()]);

        if version >= "0.4.0" {
            let mut check = conf.clone();
            check["prevResult"] = res.clone();
            node.exec(&node.call("CHECK", "pod1", &pod, "eth0"), &check)
                .ok();
        }

        let mut del = conf.clone();
        del["prevResult"] = res.clone();
        let out = node.exec(&node.call("DEL", "pod1", &pod, "eth0"), &del);
        assert_eq!(out.stdout.trim(), "", "DEL prints nothing on success");
        out.ok();
        assert!(
            !node.links(Some(&pod)).contains(&"eth0".to_string()),
            "{version}"
        );
        assert!(leased(&node).is_empty(), "{version}: IP not released");
        assert!(node.files("cache").is_empty(), "{version}: record left");
        // Twice is fine.
        node.exec(&node.call("DEL", "pod1", &pod, "eth0"), &del)
            .ok();
    }
}

#[test]
fn cluster_network_by_file_name_and_by_network_name() {
    require_reference_plugins();
    let mut node = Node::new("byfile");
    std::fs::create_dir_all(node.path("net.d")).unwrap();
    let list = json!({"cniVersion":"1.0.0","name":"clusternet","plugins":[
        cluster(&node, "1.0.0"),
        {"type":"tuning","sysctl":{"net.ipv4.conf.eth0.arp_announce":"2"}}
    ]});
    std::fs::write(node.path("net.d/10-cluster.conflist"), list.to_string()).unwrap();
    for (i, reference) in ["10-cluster.conflist", "clusternet"]
        .into_iter()
        .enumerate()
    {
        let pod = node.pod();
        let id = format!("byfile{i}");
        let conf = attache_conf(&node, "1.0.0", json!(reference));
        let res = node.exec(&node.call("ADD", &id, &pod, "eth0"), &conf).ok();
        let addr = res["ips"][0]["address"].as_str().unwrap().to_string();
        assert_eq!(node.addrs(Some(&pod), "eth0"), vec![addr]);
        // The chained tuning plugin ran, with bridge's result as prevResult.
        let out = node.sh(
            Some(&pod),
            &["sysctl", "-n", "net.ipv4.conf.eth0.arp_announce"],
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
        let mut check = conf.clone();
        check["prevResult"] = res.clone();
        node.exec(&node.call("CHECK", &id, &pod, "eth0"), &check)
            .ok();
        node.exec(&node.call("DEL", &id, &pod, "eth0"), &check).ok();
        assert!(!node.links(Some(&pod)).contains(&"eth0".to_string()));
    }
    assert!(leased(&node).is_empty());
}

#[test]
fn del_after_the_pod_netns_is_gone_and_without_netns() {
    require_reference_plugins();
    let mut node = Node::new("gone");
    let pod = node.pod();
    let conf = attache_conf(&node, "1.0.0", cluster(&node, "1.0.0"));
    node.exec(&node.call("ADD", "gone1", &pod, "eth0"), &conf)
        .ok();
    assert_eq!(leased(&node).len(), 1);
    node.delete_pod(&pod);
    // The runtime still names the old path ...
    node.exec(&node.call("DEL", "gone1", &pod, "eth0"), &conf)
        .ok();
    assert!(
        leased(&node).is_empty(),
        "IP leaked when the netns was gone"
    );
    assert!(node.files("cache").is_empty());
    // ... or no netns at all; and DEL of something never added succeeds too.
    let mut call = node.call("DEL", "gone1", "", "eth0");
    call.netns = None;
    node.exec(&call, &conf).ok();
    node.exec(
        &node.call("DEL", "never-added", "/run/netns/nonexistent", "eth0"),
        &conf,
    )
    .ok();
    // The host veth goes with the pod netns (asynchronously); nothing else is left on the node.
    assert!(
        crate::poll::eventually(10, || node_links(&node).is_empty()),
        "left on the node: {:?}",
        node_links(&node)
    );
}

#[test]
fn del_without_a_record_uses_prev_result() {
    require_reference_plugins();
    let mut node = Node::new("norecord");
    let pod = node.pod();
    let conf = attache_conf(&node, "1.0.0", cluster(&node, "1.0.0"));
    let res = node
        .exec(&node.call("ADD", "nr1", &pod, "eth0"), &conf)
        .ok();
    std::fs::remove_dir_all(node.path("cache")).unwrap();
    let mut del = conf.clone();
    del["prevResult"] = res;
    node.exec(&node.call("DEL", "nr1", &pod, "eth0"), &del).ok();
    assert!(!node.links(Some(&pod)).contains(&"eth0".to_string()));
    assert!(leased(&node).is_empty());
}

#[test]
fn second_add_answers_again_or_is_refused_without_touching_the_first() {
    require_reference_plugins();
    let mut node = Node::new("twice");
    let pod = node.pod();
    let other = node.pod();
    let conf = attache_conf(&node, "1.0.0", cluster(&node, "1.0.0"));
    let res = node
        .exec(&node.call("ADD", "tw1", &pod, "eth0"), &conf)
        .ok();
    let addr = res["ips"][0]["address"].as_str().unwrap().to_string();
    // The same pod again (a runtime that never got the first answer): the same answer, nothing redone.
    let again = node
        .exec(&node.call("ADD", "tw1", &pod, "eth0"), &conf)
        .ok();
    assert_eq!(again, res);
    // Another netns under the same container ID and interface: refused.
    node.exec(&node.call("ADD", "tw1", &other, "eth0"), &conf)
        .err(999);
    assert_eq!(node.links(Some(&other)), vec!["lo".to_string()]);
    assert_eq!(node.addrs(Some(&pod), "eth0"), vec![addr]);
    assert_eq!(leased(&node).len(), 1);
}

#[test]
fn status_and_gc() {
    require_reference_plugins();
    let mut node = Node::new("gc");
    let pod = node.pod();
    let conf = attache_conf(&node, "1.1.0", cluster(&node, "1.0.0"));
    let mut call = node.call("STATUS", "", "", "");
    call.netns = None;
    node.exec(&call, &conf).ok();
    // A cluster network whose plugin is not installed: not available (50).
    let mut broken = conf.clone();
    broken["clusterNetwork"]["type"] = json!("not-installed");
    node.exec(&call, &broken).err(50);

    let stale_pod = node.pod();
    node.exec(&node.call("ADD", "keep", &pod, "eth0"), &conf)
        .ok();
    node.exec(&node.call("ADD", "stale", &stale_pod, "eth0"), &conf)
        .ok();
    assert_eq!(leased(&node).len(), 2);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID":"keep","ifname":"eth0"}]);
    let mut call = node.call("GC", "", "", "");
    call.netns = None;
    node.exec(&call, &gc).ok();
    assert_eq!(node.files("cache"), vec!["keep/eth0.json".to_string()]);
    assert_eq!(leased(&node).len(), 1);
    assert!(node.links(Some(&pod)).contains(&"eth0".to_string()));
    assert_eq!(node.links(Some(&stale_pod)), vec!["lo".to_string()]);
}

/// Hostile environments and configurations: each gets its code on stdout, exit 1, and leaves nothing.
#[test]
fn bad_input_table() {
    require_reference_plugins();
    let mut node = Node::new("bad");
    let pod = node.pod();
    std::fs::create_dir_all(node.path("net.d")).unwrap();
    let good = attache_conf(&node, "1.0.0", cluster(&node, "1.0.0"));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let own_netns = "/proc/self/ns/net".to_string();
    struct Case {
        what: &'static str,
        env: Vec<(&'static str, Option<String>)>,
        conf: Vec<u8>,
        code: u64,
    }
    let conf = |v: Value| v.to_string().into_bytes();
    let cases = vec![
        Case {
            what: "no command",
            env: vec![("CNI_COMMAND", None)],
            conf: conf(good.clone()),
            code: 4,
        },
        Case {
            what: "unknown command",
            env: vec![("CNI_COMMAND", Some("ATTACH".into()))],
            conf: conf(good.clone()),
            code: 4,
        },
        Case {
            what: "no netns on ADD",
            env: vec![("CNI_NETNS", None)],
            conf: conf(good.clone()),
            code: 4,
        },
        Case {
            what: "no container id",
            env: vec![("CNI_CONTAINERID", None)],
            conf: conf(good.clone()),
            code: 4,
        },
        Case {
            what: "bad container id",
            env: vec![("CNI_CONTAINERID", Some("../etc".into()))],
            conf: conf(good.clone()),
            code: 4,
        },
        Case {
            what: "long ifname",
            env: vec![("CNI_IFNAME", Some("eth0123456789012".into()))],
            conf: conf(good.clone()),
            code: 4,
        },
        Case {
            what: "ifname with slash",
            env: vec![("CNI_IFNAME", Some("eth/0".into()))],
            conf: conf(good.clone()),
            code: 4,
        },
        Case {
            what: "ifname with colon",
            env: vec![("CNI_IFNAME", Some("eth:0".into()))],
            conf: conf(good.clone()),
            code: 4,
        },
        Case {
            what: "ifname with space",
            env: vec![("CNI_IFNAME", Some("eth 0".into()))],
            conf: conf(good.clone()),
            code: 4,
        },
        Case {
            what: "no CNI_PATH",
            env: vec![("CNI_PATH", None)],
            conf: conf(good.clone()),
            code: 4,
        },
        Case {
            what: "malformed CNI_ARGS",
            env: vec![("CNI_ARGS", Some("K8S_POD_NAME".into()))],
            conf: conf(good.clone()),
            code: 4,
        },
        Case {
            what: "not JSON",
            env: vec![],
            conf: b"{\"cniVersion\":".to_vec(),
            code: 6,
        },
        Case {
            what: "empty stdin",
            env: vec![],
            conf: vec![],
            code: 6,
        },
        Case {
            what: "no type",
            env: vec![],
            conf: conf(with(&|c| {
                c.as_object_mut().unwrap().remove("type");
            })),
            code: 7,
        },
        Case {
            what: "unknown type",
            env: vec![],
            conf: conf(with(&|c| c["type"] = json!("frobnicate"))),
            code: 7,
        },
        Case {
            what: "bad network name",
            env: vec![],
            conf: conf(with(&|c| c["name"] = json!("../x"))),
            code: 7,
        },
        Case {
            what: "no clusterNetwork",
            env: vec![],
            conf: conf(with(&|c| {
                c.as_object_mut().unwrap().remove("clusterNetwork");
            })),
            code: 7,
        },
        Case {
            // Not installed yet (after a reboot): the runtime retries.
            what: "clusterNetwork not in confDir",
            env: vec![],
            conf: conf(with(&|c| c["clusterNetwork"] = json!("nonexistent"))),
            code: 11,
        },
        Case {
            what: "clusterNetwork without type",
            env: vec![],
            conf: conf(with(&|c| {
                c["clusterNetwork"].as_object_mut().unwrap().remove("type");
            })),
            code: 7,
        },
        Case {
            what: "clusterNetwork name escapes",
            env: vec![],
            conf: conf(with(&|c| c["clusterNetwork"]["name"] = json!("../../etc"))),
            code: 7,
        },
        Case {
            what: "old cniVersion",
            env: vec![],
            conf: conf(with(&|c| c["cniVersion"] = json!("0.2.0"))),
            code: 1,
        },
        Case {
            what: "future cniVersion",
            env: vec![],
            conf: conf(with(&|c| c["cniVersion"] = json!("2.0.0"))),
            code: 1,
        },
        Case {
            what: "CHECK on 0.3.1",
            env: vec![("CNI_COMMAND", Some("CHECK".into()))],
            conf: conf(with(&|c| c["cniVersion"] = json!("0.3.1"))),
            code: 1,
        },
        Case {
            what: "GC on 1.0.0",
            env: vec![("CNI_COMMAND", Some("GC".into()))],
            conf: conf(good.clone()),
            code: 1,
        },
        Case {
            what: "netns that does not exist",
            env: vec![("CNI_NETNS", Some("/run/netns/does-not-exist".into()))],
            conf: conf(good.clone()),
            code: 8,
        },
        Case {
            what: "netns is a plain file",
            env: vec![("CNI_NETNS", Some("/etc/hostname".into()))],
            conf: conf(good.clone()),
            code: 8,
        },
        Case {
            what: "netns is the plugin's own",
            env: vec![("CNI_NETNS", Some(own_netns.clone()))],
            conf: conf(good.clone()),
            code: 8,
        },
        Case {
            what: "cluster plugin not installed",
            env: vec![],
            conf: conf(with(&|c| {
                c["clusterNetwork"]["type"] = json!("not-installed")
            })),
            // Not installed (yet): not ready, retry.
            code: 11,
        },
        Case {
            what: "delegate error passes through",
            env: vec![],
            conf: conf(with(&|c| {
                c["clusterNetwork"]["ipam"]["subnet"] = json!("10.77.0.0/33")
            })),
            code: 999,
        },
        Case {
            what: "native cluster network with a bad subnet",
            env: vec![],
            conf: conf(with(&|c| {
                c["clusterNetwork"]["type"] = json!("bridge");
                c["clusterNetwork"]["ipam"]["subnet"] = json!("10.77.0.0/33");
            })),
            code: 7,
        },
        Case {
            what: "chain fails after bridge ran",
            env: vec![],
            conf: conf(with(&|c| {
                c["clusterNetwork"] = json!({"cniVersion":"1.0.0","name":"clusternet",
            "plugins":[cluster(&node, "1.0.0"), {"type":"not-installed"}]})
            })),
            code: 11,
        },
    ];
    for case in cases {
        let mut call = node.call("ADD", "bad1", &pod, "eth0");
        let mut extra = Vec::new();
        let mut unset = Vec::new();
        for (k, v) in &case.env {
            match (*k, v) {
                ("CNI_COMMAND", Some(v)) => call.command = Box::leak(v.clone().into_boxed_str()),
                ("CNI_NETNS", v) => call.netns = v.clone(),
                ("CNI_CONTAINERID", Some(v)) => {
                    call.container_id = Box::leak(v.clone().into_boxed_str())
                }
                ("CNI_IFNAME", Some(v)) => call.ifname = Box::leak(v.clone().into_boxed_str()),
                ("CNI_ARGS", Some(v)) => call.args = Box::leak(v.clone().into_boxed_str()),
                (k, None) => unset.push(k),
                (k, Some(v)) => extra.push((k.to_string(), v.clone())),
            }
        }
        for k in unset {
            match k {
                "CNI_COMMAND" => call.command = "",
                "CNI_CONTAINERID" => call.container_id = "",
                "CNI_PATH" => call.path = String::new(),
                _ => unreachable!(),
            }
        }
        call.extra_env = extra;
        let out = node.exec_raw(&call, &case.conf);
        assert!(
            !out.stderr.contains("panicked"),
            "{}: panic: {}",
            case.what,
            out.stderr
        );
        let v = out.err(case.code);
        assert!(v.get("cniVersion").is_some(), "{}: {v}", case.what);
        // Nothing half-made: no link in the pod or on the node, no IP file, no record.
        assert_eq!(
            node.links(Some(&pod)),
            vec!["lo".to_string()],
            "{}",
            case.what
        );
        let left: Vec<String> = node_links(&node)
            .into_iter()
            .filter(|l| l != "cni0")
            .collect();
        assert!(left.is_empty(), "{}: left links {left:?}", case.what);
        assert!(leased(&node).is_empty(), "{}: left IPs", case.what);
        assert!(
            node.files("cache").is_empty(),
            "{}: left records {:?}",
            case.what,
            node.files("cache")
        );
    }
}
