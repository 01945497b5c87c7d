//! What a user looks at after a plugin ran, as JSON with the random parts normalised: links, addresses,
//! routes, sysctls and IPAM files of a pod and its node. Differential tests compare these between
//! attache and the reference plugins.

use serde_json::{Value, json};

use super::Node;

/// Replace MACs and the host veth name in a result by placeholders.
pub fn normalise_result(mut r: Value) -> Value {
    if let Some(ifaces) = r["interfaces"].as_array_mut() {
        for i in ifaces {
            if i.get("mac").is_some() {
                i["mac"] = json!("MAC");
            }
            if i["name"].as_str().is_some_and(|n| n.starts_with("veth")) {
                i["name"] = json!("VETH");
            }
            if i.get("sandbox").is_some() {
                i["sandbox"] = json!("SANDBOX");
            }
        }
    }
    r
}

pub fn sysctl(node: &Node, ns: Option<&str>, key: &str) -> String {
    let out = node.sh(ns, &["sysctl", "-n", key]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What a user would look at after ADD, with random parts normalised — after the pod's links'
/// operstates have settled: the kernel updates them asynchronously (linkwatch, rate-limited to once a
/// second), so right after ADD a link that is up may still say UNKNOWN. Waits up to 3 s for that to pass;
/// a link that stays UNKNOWN is reported as it is.
pub fn snapshot(node: &Node, pod: &str, ifname: &str) -> Value {
    let unsettled = |v: &Value| {
        v["pod_links"]
            .as_array()
            .is_some_and(|ls| ls.iter().any(|l| l["operstate"] == "UNKNOWN"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut snap = snapshot_once(node, pod, ifname);
    while unsettled(&snap) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        snap = snapshot_once(node, pod, ifname);
    }
    snap
}

fn snapshot_once(node: &Node, pod: &str, ifname: &str) -> Value {
    let link_view = |ns: Option<&str>, l: &Value| -> Value {
        let mut flags: Vec<String> = l["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        flags.sort();
        let name = l["ifname"].as_str().unwrap();
        let slave = &l["linkinfo"]["info_slave_data"];
        json!({
            "name": if name.starts_with("veth") { "VETH" } else { name },
            "kind": l["linkinfo"]["info_kind"],
            "master": l["master"],
            "mtu": l["mtu"],
            "flags": flags,
            "operstate": l["operstate"],
            "txqlen": l["txqlen"],
            "promiscuity": l["promiscuity"],
            "hairpin": slave["hairpin"],
            "mode": l["linkinfo"]["info_data"]["mode"],
            "vlan_id": l["linkinfo"]["info_data"]["id"],
            "link": l["link"],
            "isolated": slave["isolated"],
            "addresses": addresses(node, ns, name),
        })
    };
    let links = |ns: Option<&str>| -> Vec<Value> {
        node.ip(ns, &["-d", "link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["ifname"] != "lo")
            .map(|l| link_view(ns, l))
            .collect()
    };
    let routes = |ns: Option<&str>, fam: &str| -> Vec<Value> {
        node.ip(ns, &[fam, "route", "show"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| !r["dst"].as_str().unwrap_or("").starts_with("fe80"))
            .map(|r| {
                json!({"dst": r["dst"], "gateway": r["gateway"], "dev": r["dev"], "protocol": r["protocol"],
                    "scope": r["scope"], "metric": r["metric"], "prefsrc": r["prefsrc"]})
            })
            .collect()
    };
    // Every sysctl attache writes, whether or not the reference writes it too.
    let pod_sysctls = json!({
        "arp_notify": sysctl(node, Some(pod), &format!("net.ipv4.conf.{ifname}.arp_notify")),
        "disable_ipv6": sysctl(node, Some(pod), &format!("net.ipv6.conf.{ifname}.disable_ipv6")),
        "lo_disable_ipv6": sysctl(node, Some(pod), "net.ipv6.conf.lo.disable_ipv6"),
        "accept_dad": sysctl(node, Some(pod), &format!("net.ipv6.conf.{ifname}.accept_dad")),
        "enhanced_dad": sysctl(node, Some(pod), &format!("net.ipv6.conf.{ifname}.enhanced_dad")),
        "ndisc_notify": sysctl(node, Some(pod), &format!("net.ipv6.conf.{ifname}.ndisc_notify")),
    });
    let bridges_accept_ra: Vec<Value> = node
        .ip(None, &["-d", "link", "show", "type", "bridge"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let name = l["ifname"].as_str().unwrap();
            json!([
                name,
                sysctl(node, None, &format!("net.ipv6.conf.{name}.accept_ra"))
            ])
        })
        .collect();
    json!({
        "pod_links": links(Some(pod)),
        "pod_routes4": routes(Some(pod), "-4"),
        "pod_routes6": routes(Some(pod), "-6"),
        "pod_sysctls": pod_sysctls,
        "node_links": links(None),
        "node_sysctls": {
            "ip_forward": sysctl(node, None, "net.ipv4.ip_forward"),
            "ipv6_forwarding": sysctl(node, None, "net.ipv6.conf.all.forwarding"),
            "bridges_accept_ra": bridges_accept_ra,
        },
        "ipam_files": ipam_files(node),
    })
}

pub fn addresses(node: &Node, ns: Option<&str>, ifname: &str) -> Vec<Value> {
    let v = node.ip(ns, &["addr", "show", "dev", ifname]);
    let mut out = Vec::new();
    for l in v.as_array().unwrap() {
        for a in l["addr_info"].as_array().unwrap() {
            if a["scope"] == "link" {
                continue;
            }
            out.push(json!({"local": a["local"], "prefixlen": a["prefixlen"], "broadcast": a["broadcast"], "scope": a["scope"]}));
        }
    }
    out
}

/// host-local's files: names and contents (container id / ifname).
pub fn ipam_files(node: &Node) -> Vec<(String, String)> {
    node.files("ipam")
        .into_iter()
        .filter(|f| !f.ends_with("/lock"))
        .map(|f| {
            let content = std::fs::read_to_string(node.path("ipam").join(&f)).unwrap();
            (f, content)
        })
        .collect()
}

pub fn leased(node: &Node) -> Vec<String> {
    ipam_files(node)
        .into_iter()
        .map(|(f, _)| f)
        .filter(|f| !f.contains("last_reserved_ip"))
        .collect()
}

pub fn strip_nulls(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
        for x in o.values_mut() {
            strip_nulls(x);
        }
    }
}

/// Debian's reference plugins are v1.1.1. Where a later reference version changed what it writes and
/// attache follows the later one, the oracle's snapshot is adjusted here — each case named, nothing else:
/// - macvlan and ipvlan with addresses set `ndisc_notify=1` on the pod interface since v1.4.0.
pub fn as_newer_reference(conf: &Value, result: &Value, snap: &mut Value) {
    let t = conf["type"].as_str().unwrap_or_default();
    let layer3 = result["ips"].as_array().is_some_and(|a| !a.is_empty());
    if matches!(t, "macvlan" | "ipvlan") && layer3 && snap["pod_sysctls"]["ndisc_notify"] == "0" {
        snap["pod_sysctls"]["ndisc_notify"] = json!("1");
    }
}

/// Run the same ADD and DEL with the reference plugin `reference` and with attache, each on a fresh node
/// from `make_node`, and assert that the result JSON, the namespace state after ADD and the state after
/// DEL are the same. `inspect` sees each node and pod after ADD (for case-specific checks).
pub fn assert_same_as_reference(
    what: &str,
    reference: &std::path::Path,
    make_node: &dyn Fn() -> Node,
    conf: &dyn Fn(&Node) -> Value,
    inspect: &dyn Fn(&Node, &str),
) {
    let mut snaps = Vec::new();
    for bin in [reference.to_path_buf(), super::attache_bin()] {
        let mut node = make_node();
        let pod = node.pod();
        let c = conf(&node);
        let mut call = node.call("ADD", "ctr1", &pod, "eth0");
        call.bin = bin.clone();
        let res = node.exec(&call, &c).ok();
        let mut snap = snapshot(&node, &pod, "eth0");
        if bin == reference {
            as_newer_reference(&c, &res, &mut snap);
        }
        inspect(&node, &pod);
        let mut del = c.clone();
        del["prevResult"] = res.clone();
        let mut call = node.call("DEL", "ctr1", &pod, "eth0");
        call.bin = bin;
        node.exec(&call, &del).ok();
        let after = json!({"pod": node.links(Some(&pod)), "leased": leased(&node)});
        snaps.push((normalise_result(res), snap, after));
    }
    assert_eq!(snaps[1].0, snaps[0].0, "{what}: result JSON differs");
    assert_eq!(
        snaps[1].1,
        snaps[0].1,
        "{what}: namespace state differs\nattache:   {}\nreference: {}",
        serde_json::to_string_pretty(&snaps[1].1).unwrap(),
        serde_json::to_string_pretty(&snaps[0].1).unwrap()
    );
    assert_eq!(snaps[1].2, snaps[0].2, "{what}: state after DEL differs");
}

/// Everything a user would look at: links (kind, master, addresses) and routes of node and pod (the
/// pod's rules, other tables and rp_filter too), the IPAM files (last_reserved_ip excluded: round-robin moves it on by design), the nftables ruleset,
/// the records. `keep_bridges`: false to leave out bridges, which a failed ADD may leave as the
/// reference plugin does.
pub fn full_state(node: &Node, pod: &str, keep_bridges: bool) -> Value {
    let links = |ns: Option<&str>| -> Vec<Value> {
        let mut v: Vec<Value> = node
            .ip(ns, &["-d", "addr", "show"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| keep_bridges || l["linkinfo"]["info_kind"] != "bridge")
            .map(|l| {
                let addrs: Vec<&Value> = l["addr_info"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|a| a["scope"] != "link")
                    .map(|a| &a["local"])
                    .collect();
                // Administrative flags only: carrier follows ports asynchronously.
                let flags: Vec<&Value> = l["flags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|f| *f == "UP" || *f == "PROMISC")
                    .collect();
                json!([
                    l["ifname"],
                    l["linkinfo"]["info_kind"],
                    l["master"],
                    addrs,
                    flags
                ])
            })
            .collect();
        // By name: a device given back to the node comes last in the kernel's list.
        v.sort_by_key(|l| l[0].as_str().unwrap_or_default().to_string());
        v
    };
    let routes = |ns: Option<&str>| -> Vec<Value> {
        let mut v = node.ip(ns, &["route", "show"]);
        for r in v.as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("flags"); // linkdown follows carrier
        }
        v.as_array().unwrap().clone()
    };
    let ipam: Vec<(String, String)> = node
        .files("ipam")
        .into_iter()
        .filter(|f| !f.ends_with("/lock") && !f.contains("last_reserved_ip"))
        .map(|f| {
            let c = std::fs::read_to_string(node.path("ipam").join(&f)).unwrap();
            (f, c)
        })
        .collect();
    let nft =
        String::from_utf8_lossy(&node.sh(None, &["nft", "list", "ruleset"]).stdout).into_owned();
    // Source routing's state: the pod's rules, its routes outside main and local, its rp_filter.
    let mut policy: Vec<Value> = Vec::new();
    for fam in ["-4", "-6"] {
        policy.extend(
            node.ip(Some(pod), &[fam, "rule", "show"])
                .as_array()
                .unwrap()
                .clone(),
        );
        policy.extend(
            node.ip(Some(pod), &[fam, "route", "show", "table", "all"])
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| {
                    r["table"]
                        .as_str()
                        .is_some_and(|t| t != "local" && t != "main")
                })
                .cloned(),
        );
    }
    for k in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
        "net.ipv4.conf.all.arp_filter",
    ] {
        policy.push(json!([k, sysctl(node, Some(pod), k)]));
    }
    json!({
        "node_links": links(None), "node_routes": routes(None),
        "pod_links": links(Some(pod)), "pod_routes": routes(Some(pod)), "pod_policy": policy,
        "ipam": ipam, "nft": nft, "cache": node.files("cache"), "tuning": node.files("tuning"),
        "host_device": node.files("hd"),
    })
}

/// The keys in which two [`full_state`]s differ, both sides shown.
pub fn diff(a: &Value, b: &Value) -> String {
    let mut out = String::new();
    for k in a.as_object().unwrap().keys() {
        if a[k] != b[k] {
            out += &format!(
                "{k}:\n  before: {}\n  after:  {}\n",
                serde_json::to_string(&a[k]).unwrap(),
                serde_json::to_string(&b[k]).unwrap()
            );
        }
    }
    out
}
