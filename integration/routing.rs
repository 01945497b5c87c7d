//! Routing of pods with several interfaces: the native `sbr` against Debian's reference `sbr`, its
//! later fields, and its refusals.

use std::path::{Path, PathBuf};

use crate::testbed::state::normalise_result;
use crate::testbed::{Node, REFERENCE_DIR, require_reference_plugins};
use serde_json::{Value, json};

fn reference(t: &str) -> PathBuf {
    PathBuf::from(REFERENCE_DIR).join(t)
}

/// The reference macvlan on `nic0` (the interface sbr works on, made the same way for both), with
/// host-local's routes and gateway as `ipam` says.
fn macvlan_conf(node: &Node, ipam: Value) -> Value {
    let mut ipam = ipam;
    ipam["type"] = json!("host-local");
    ipam["dataDir"] = json!(node.path("ipam"));
    json!({"cniVersion": "1.0.0", "name": "sbrnet", "type": "macvlan", "master": "nic0", "ipam": ipam})
}

/// The pod's rules and routes of every table, as `ip` shows them (a route of the main table has no
/// `table`).
fn policy_state(node: &Node, pod: &str) -> Value {
    let rules = |fam: &str| -> Vec<Value> {
        node.ip(Some(pod), &[fam, "rule", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|r| json!({"priority": r["priority"], "src": r["src"], "srclen": r["srclen"], "table": r["table"]}))
            .collect()
    };
    let routes = |fam: &str| -> Vec<Value> {
        let mut v: Vec<Value> = node
            .ip(Some(pod), &[fam, "route", "show", "table", "all"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["table"] != "local" && r["type"] != "multicast")
            .map(|r| {
                json!({"table": r["table"], "dst": r["dst"], "gateway": r["gateway"], "dev": r["dev"],
                    "protocol": r["protocol"], "scope": r["scope"], "prefsrc": r["prefsrc"], "metric": r["metric"]})
            })
            .collect();
        v.sort_by_key(|r| r.to_string());
        v
    };
    json!({"rules4": rules("-4"), "rules6": rules("-6"), "routes4": routes("-4"), "routes6": routes("-6")})
}

/// ADD the reference macvlan, then `sbr` (from `bin`) with its result; the sbr result, the state after
/// ADD, and the state after sbr's DEL.
fn run_chain(bin: &Path, ipam: &Value, sbr: &Value) -> (Value, Value, Value) {
    let mut node = Node::with_nic("sbr");
    let pod = node.pod();
    let mut call = node.call("ADD", "ctr1", &pod, "net1");
    call.bin = reference("macvlan");
    let first = node.exec(&call, &macvlan_conf(&node, ipam.clone())).ok();
    let mut conf = sbr.clone();
    conf["cniVersion"] = json!("1.0.0");
    conf["name"] = json!("sbrnet");
    conf["type"] = json!("sbr");
    conf["prevResult"] = first;
    call.bin = bin.to_path_buf();
    let res = node.exec(&call, &conf).ok();
    let after_add = policy_state(&node, &pod);
    let mut del = node.call("DEL", "ctr1", &pod, "net1");
    del.bin = bin.to_path_buf();
    node.exec(&del, &conf).ok();
    let after_del = policy_state(&node, &pod);
    (normalise_result(res), after_add, after_del)
}

#[test]
fn differential_against_the_reference_sbr() {
    require_reference_plugins();
    let cases: Vec<(&str, Value)> = vec![
        (
            "gateway and default route",
            json!({"subnet": "10.61.0.0/24", "gateway": "10.61.0.1", "routes": [{"dst": "0.0.0.0/0"}]}),
        ),
        (
            "gateway and two routes",
            json!({"subnet": "10.61.0.0/24", "gateway": "10.61.0.254",
                   "routes": [{"dst": "192.168.7.0/24"}, {"dst": "172.20.0.0/16", "gw": "10.61.0.9"}]}),
        ),
        ("no routes", json!({"subnet": "10.61.0.0/24"})),
        (
            "IPv6",
            json!({"subnet": "fd61::/64", "gateway": "fd61::1", "routes": [{"dst": "::/0"}]}),
        ),
    ];
    for (what, ipam) in cases {
        let (ref_res, ref_add, ref_del) = run_chain(&reference("sbr"), &ipam, &json!({}));
        let (res, add, del) = run_chain(&crate::testbed::attache_bin(), &ipam, &json!({}));
        assert_eq!(res, ref_res, "{what}: result differs");
        assert_eq!(
            add,
            ref_add,
            "{what}: rules and routes differ\nattache:   {}\nreference: {}",
            serde_json::to_string_pretty(&add).unwrap(),
            serde_json::to_string_pretty(&ref_add).unwrap()
        );
        assert_eq!(del, ref_del, "{what}: state after DEL differs");
        // What sbr is for: the interface's routes left main for the table of its address's rule.
        let table = add["rules4"]
            .as_array()
            .unwrap()
            .iter()
            .chain(add["rules6"].as_array().unwrap())
            .find(|r| r["src"] != "all")
            .map(|r| r["table"].clone())
            .unwrap_or_else(|| panic!("{what}: no source rule: {add}"));
        assert_eq!(table, json!("100"), "{what}: {add}");
    }
}

/// The fields Debian's reference (1.1.1) does not have, as the reference at HEAD defines them.
#[test]
fn table_gateways_and_source_hints() {
    require_reference_plugins();
    let me = crate::testbed::attache_bin();
    let ipam =
        json!({"subnet": "10.62.0.0/24", "gateway": "10.62.0.1", "routes": [{"dst": "0.0.0.0/0"}]});

    // `table`: only the rule; the routes stay in main.
    let (_, add, del) = run_chain(&me, &ipam, &json!({"table": 555}));
    let rules = add["rules4"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["table"] == "555" && r["src"] == "10.62.0.2"),
        "{add}"
    );
    assert!(
        add["routes4"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["table"].is_null() && r["dst"] == "default"),
        "{add}"
    );
    assert!(
        !del["rules4"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["table"] == "555"),
        "{del}"
    );

    // `gateways`: the table's default goes to the configured gateway, not prevResult's.
    let (_, add, _) = run_chain(&me, &ipam, &json!({"gateways": ["10.62.0.77"]}));
    let routes = add["routes4"].as_array().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r["table"] == "100" && r["dst"] == "default" && r["gateway"] == "10.62.0.77"),
        "{add}"
    );

    // `addSourceHints`: the subnet route stays in main with the address as its source; the default
    // leaves main.
    let (_, add, _) = run_chain(&me, &ipam, &json!({"addSourceHints": true}));
    let routes = add["routes4"].as_array().unwrap();
    assert!(
        routes.iter().any(|r| r["table"].is_null()
            && r["dst"] == "10.62.0.0/24"
            && r["prefsrc"]
                .as_str()
                .is_some_and(|s| s.starts_with("10.62.0."))),
        "{add}"
    );
    assert!(
        !routes
            .iter()
            .any(|r| r["table"].is_null() && r["dst"] == "default"),
        "{add}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["table"] == "100" && r["dst"] == "default"),
        "{add}"
    );
}

/// Bad `sbr` input is a code 7 with nothing applied: no rule, the routes where they were.
#[test]
fn bad_sbr_input_is_refused_with_nothing_applied() {
    require_reference_plugins();
    let ipam =
        json!({"subnet": "10.63.0.0/24", "gateway": "10.63.0.1", "routes": [{"dst": "0.0.0.0/0"}]});
    for (what, sbr, needle) in [
        ("table main", json!({"table": 254}), "254"),
        ("table 0", json!({"table": 0}), "table 0"),
        (
            "table too big",
            json!({"table": 8589934592u64}),
            "out of range",
        ),
        ("negative table", json!({"table": -1}), "out of range"),
        ("table as text", json!({"table": "100"}), "number"),
        (
            "three gateways",
            json!({"gateways": ["10.63.0.1", "10.63.0.2", "fd00::1"]}),
            "at most 2",
        ),
        (
            "two IPv4 gateways",
            json!({"gateways": ["10.63.0.1", "10.63.0.2"]}),
            "one family",
        ),
        ("not an address", json!({"gateways": ["gw"]}), "not an IP"),
        (
            "hints not a bool",
            json!({"addSourceHints": "yes"}),
            "true or false",
        ),
    ] {
        let mut node = Node::with_nic("sbrbad");
        let pod = node.pod();
        let mut call = node.call("ADD", "ctr1", &pod, "net1");
        call.bin = reference("macvlan");
        let first = node.exec(&call, &macvlan_conf(&node, ipam.clone())).ok();
        let before = policy_state(&node, &pod);
        let mut conf = sbr.clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!("sbrnet");
        conf["type"] = json!("sbr");
        conf["prevResult"] = first;
        let err = node
            .exec(&node.call("ADD", "ctr1", &pod, "net1"), &conf)
            .err(7);
        assert!(
            err["msg"].as_str().unwrap().contains(needle),
            "{what}: {err}"
        );
        assert_eq!(
            policy_state(&node, &pod),
            before,
            "{what}: something changed"
        );
    }
    // Without prevResult (not chained): refused the same way.
    let mut node = Node::with_nic("sbrbad");
    let pod = node.pod();
    let err = node
        .exec(
            &node.call("ADD", "ctr1", &pod, "net1"),
            &json!({"cniVersion": "1.0.0", "name": "n", "type": "sbr"}),
        )
        .err(7);
    assert!(err["msg"].as_str().unwrap().contains("chained"), "{err}");
}

const NS: &str = "team-r";

/// A node whose `nic0` (the macvlan master) is on a segment with a router netns (10.71.0.1 there), and
/// behind the router a peer netns at 192.168.50.2 (its default via the router): a peer a pod's
/// secondary interface reaches only through that segment's gateway.
struct Segment {
    node: Node,
    router: String,
    peer: String,
}

fn segment(tag: &str) -> Segment {
    let mut node = Node::with_nic(tag);
    let router = node.pod();
    let peer = node.pod();
    let (r, p) = (
        router.rsplit('/').next().unwrap().to_string(),
        peer.rsplit('/').next().unwrap().to_string(),
    );
    assert!(node.ip_do(&["link", "set", "nicpeer", "netns", &r]));
    let ip = |ns: &str, args: &[&str]| {
        let ok = std::process::Command::new("ip")
            .arg("-n")
            .arg(ns)
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip -n {ns} {args:?}");
    };
    ip(&r, &["addr", "add", "10.71.0.1/24", "dev", "nicpeer"]);
    ip(&r, &["link", "set", "nicpeer", "up"]);
    ip(
        &r,
        &[
            "link", "add", "rp", "type", "veth", "peer", "name", "pp", "netns", &p,
        ],
    );
    ip(&r, &["addr", "add", "192.168.50.1/24", "dev", "rp"]);
    ip(&r, &["link", "set", "rp", "up"]);
    ip(&p, &["addr", "add", "192.168.50.2/24", "dev", "pp"]);
    ip(&p, &["link", "set", "pp", "up"]);
    ip(&p, &["route", "add", "default", "via", "192.168.50.1"]);
    assert!(
        node.sh(Some(&router), &["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .status
            .success()
    );
    Segment { node, router, peer }
}

/// The example pod's definitions: `seg` (a macvlan on the segment, its gateway the router), `side` (a
/// native bridge), and `seg2` (a second macvlan in the same subnet, other addresses).
fn definitions(node: &Node, seg_extra: Value) -> PathBuf {
    let ipam = node.path("ipam");
    let mut seg = json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "nic0",
        "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": "10.71.0.0/24",
                 "rangeStart": "10.71.0.10", "rangeEnd": "10.71.0.19", "gateway": "10.71.0.1"}]]}});
    for (k, v) in seg_extra.as_object().unwrap() {
        seg[k] = v.clone();
    }
    crate::testbed::write_nads(
        node,
        NS,
        &[
            ("seg", seg),
            (
                "side",
                crate::testbed::bridge_nad(node, "br-side", "10.72.0.0/24"),
            ),
            (
                "seg2",
                json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "nic0",
                    "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": "10.71.0.0/24",
                             "rangeStart": "10.71.0.20", "rangeEnd": "10.71.0.29", "gateway": "10.71.0.1"}]]}}),
            ),
        ],
    )
}

/// A call of the meta-plugin for the pod `multi` of namespace [`NS`].
fn pod_call<'a>(
    node: &Node,
    command: &'a str,
    id: &'a str,
    pod: &str,
    args: &'a str,
) -> crate::testbed::Call<'a> {
    let mut c = node.call(command, id, pod, "eth0");
    c.args = args;
    c
}

/// The first address (without its prefix) of `ifname` in the pod.
fn address(node: &Node, pod: &str, ifname: &str) -> String {
    let a = node.addrs(Some(pod), ifname);
    a[0].split('/').next().unwrap().to_string()
}

fn pod_args() -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME=multi")
}

fn sysctl(node: &Node, pod: &str, key: &str) -> String {
    crate::testbed::state::sysctl(node, Some(pod), key)
}

/// The pod's IPv4 rules at attache's priority, as `(src, table)`.
fn source_rules(node: &Node, pod: &str) -> Vec<(String, String)> {
    node.ip(Some(pod), &["-4", "rule", "show"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["priority"] == 1000)
        .map(|r| {
            (
                r["src"].as_str().unwrap().to_string(),
                r["table"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn defaults_in_main(node: &Node, pod: &str) -> Vec<String> {
    node.ip(Some(pod), &["-4", "route", "show", "default"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dev"].as_str().unwrap().to_string())
        .collect()
}

/// Which interface the pod sends to `dst` from (optionally) `from` through.
fn route_dev(node: &Node, pod: &str, dst: &str, from: Option<&str>) -> String {
    let mut args = vec!["-4", "route", "get", dst];
    if let Some(f) = from {
        args.extend(["from", f]);
    }
    node.ip(Some(pod), &args)[0]["dev"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_reply_leaves_through_the_interface_its_request_came_in_on() {
    require_reference_plugins();
    let mut seg = segment("srcrt");
    let dir = definitions(&seg.node, json!({}));
    let args = pod_args();

    // Without source routing the reply to the peer behind net1's gateway follows main's default
    // (eth0, the cluster network), and never arrives.
    let pod = seg.node.pod();
    let conf = crate::testbed::meta_conf(&seg.node, &dir, "seg,side");
    let call = pod_call(&seg.node, "ADD", "plain", &pod, &args);
    seg.node.exec(&call, &conf).ok();
    let net1 = address(&seg.node, &pod, "net1");
    assert!(
        !seg.node.pings(&seg.peer, &net1),
        "answered without source routing"
    );
    let del = pod_call(&seg.node, "DEL", "plain", &pod, &args);
    seg.node.exec(&del, &conf).ok();

    // Source routing, in a pod that inherited a strict host's rp_filter.
    let pod = seg.node.pod();
    for key in [
        "net.ipv4.conf.all.rp_filter=1",
        "net.ipv4.conf.default.rp_filter=1",
    ] {
        assert!(
            seg.node
                .sh(Some(&pod), &["sysctl", "-qw", key])
                .status
                .success()
        );
    }
    let mut conf = crate::testbed::meta_conf(&seg.node, &dir, "seg,side");
    conf["podRouting"] = json!("source");
    let call = pod_call(&seg.node, "ADD", "routed", &pod, &args);
    let res = seg.node.exec(&call, &conf).ok();
    let eth0 = crate::testbed::first_ip(&res);
    let net1 = address(&seg.node, &pod, "net1");
    let net2 = address(&seg.node, &pod, "net2");

    assert_eq!(
        defaults_in_main(&seg.node, &pod),
        ["eth0"],
        "one default in main"
    );
    let rules = source_rules(&seg.node, &pod);
    assert_eq!(rules.len(), 2, "a rule per secondary address: {rules:?}");
    assert!(rules.iter().any(|(s, _)| *s == net1) && rules.iter().any(|(s, _)| *s == net2));
    assert_eq!(
        route_dev(&seg.node, &pod, "192.168.50.2", Some(&net1)),
        "net1"
    );
    assert_eq!(route_dev(&seg.node, &pod, "192.168.50.2", None), "eth0");
    for key in ["all", "default", "net1", "net2"] {
        assert_eq!(
            sysctl(&seg.node, &pod, &format!("net.ipv4.conf.{key}.rp_filter")),
            "2",
            "{key}"
        );
    }
    // The peer behind the segment's router reaches net1, and the cluster network still works.
    assert!(
        seg.node.pings(&seg.peer, &net1),
        "the peer gets no answer from net1"
    );
    assert!(seg.node.pings(&seg.router, &net1));
    // Every segment, symmetrically: the node on net2's bridge (its gateway) reaches net2's address.
    assert!(
        seg.node
            .sh(None, &["ping", "-c", "1", "-W", "2", &net2])
            .status
            .success(),
        "the node gets no answer from net2"
    );
    assert!(
        seg.node
            .sh(None, &["ping", "-c", "1", "-W", "2", &eth0])
            .status
            .success(),
        "the node no longer reaches eth0"
    );

    // CHECK passes, and catches a rule removed behind attache's back.
    let check = pod_call(&seg.node, "CHECK", "routed", &pod, &args);
    let mut checked = conf.clone();
    checked["prevResult"] = res.clone();
    seg.node.exec(&check, &checked).ok();
    let table = rules.iter().find(|(s, _)| *s == net1).unwrap().1.clone();
    assert!(
        seg.node
            .sh(
                Some(&pod),
                &[
                    "ip", "rule", "del", "from", &net1, "table", &table, "pref", "1000"
                ]
            )
            .status
            .success()
    );
    let out = seg.node.exec(&check, &checked);
    assert_ne!(out.exit, 0, "CHECK missed the deleted rule");
    assert!(out.stdout.contains("rule"), "{}", out.stdout);

    // DEL with the netns alive: no rule, no table, rp_filter as it was.
    let del = pod_call(&seg.node, "DEL", "routed", &pod, &args);
    seg.node.exec(&del, &conf).ok();
    assert!(source_rules(&seg.node, &pod).is_empty());
    let tables = seg
        .node
        .ip(Some(&pod), &["-4", "route", "show", "table", "all"]);
    assert!(
        !tables.as_array().unwrap().iter().any(|r| r["table"]
            .as_str()
            .is_some_and(|t| t.parse::<u32>().is_ok())),
        "a table is left: {tables}"
    );
    assert_eq!(sysctl(&seg.node, &pod, "net.ipv4.conf.all.rp_filter"), "1");
    assert_eq!(
        sysctl(&seg.node, &pod, "net.ipv4.conf.default.rp_filter"),
        "1"
    );
}

#[test]
fn a_default_route_on_a_secondary_keeps_the_cluster_and_its_services_on_eth0() {
    require_reference_plugins();
    let mut seg = segment("srcdef");
    let dir = definitions(&seg.node, json!({}));
    let args = pod_args();
    let networks = r#"[{"name": "seg", "default-route": ["10.71.0.1"]}, {"name": "side"}]"#;

    // Without the cluster's CIDRs, refused, with nothing made.
    let pod = seg.node.pod();
    let mut conf = crate::testbed::meta_conf(&seg.node, &dir, networks);
    conf["podRouting"] = json!("source");
    let call = pod_call(&seg.node, "ADD", "moved", &pod, &args);
    let err = seg.node.exec(&call, &conf).err(7);
    assert!(
        err["msg"].as_str().unwrap().contains("serviceCIDRs"),
        "{err}"
    );
    assert_eq!(seg.node.links(Some(&pod)), ["lo"]);
    assert!(crate::testbed::state::leased(&seg.node).is_empty());
    assert_eq!(
        sysctl(&seg.node, &pod, "net.ipv4.conf.default.rp_filter"),
        sysctl(&seg.node, &seg.router, "net.ipv4.conf.default.rp_filter")
    );

    conf["clusterCIDRs"] = json!(["10.77.0.0/16"]);
    conf["serviceCIDRs"] = json!(["10.96.0.0/12"]);
    let res = seg.node.exec(&call, &conf).ok();
    let eth0 = crate::testbed::first_ip(&res);
    let net1 = address(&seg.node, &pod, "net1");
    assert_eq!(defaults_in_main(&seg.node, &pod), ["net1"]);
    assert_eq!(route_dev(&seg.node, &pod, "192.168.50.2", None), "net1");
    assert_eq!(
        route_dev(&seg.node, &pod, "10.96.0.10", None),
        "eth0",
        "a Service"
    );
    assert_eq!(
        route_dev(&seg.node, &pod, "10.77.5.5", None),
        "eth0",
        "another pod"
    );
    assert_eq!(
        route_dev(&seg.node, &pod, "192.168.50.2", Some(&eth0)),
        "eth0"
    );
    assert!(seg.node.pings(&seg.peer, &net1));

    let del = pod_call(&seg.node, "DEL", "moved", &pod, &args);
    seg.node.exec(&del, &conf).ok();
    assert!(source_rules(&seg.node, &pod).is_empty());
    assert_eq!(seg.node.links(Some(&pod)), ["lo"]);
}

#[test]
fn two_interfaces_in_one_subnet_each_answer_arp_for_their_own_address() {
    require_reference_plugins();
    let mut seg = segment("srcarp");
    let dir = definitions(&seg.node, json!({}));
    let args = pod_args();
    let pod = seg.node.pod();
    let mut conf = crate::testbed::meta_conf(&seg.node, &dir, "seg,seg2");
    conf["podRouting"] = json!("source");
    let call = pod_call(&seg.node, "ADD", "twins", &pod, &args);
    seg.node.exec(&call, &conf).ok();
    for ifname in ["net1", "net2"] {
        assert_eq!(
            sysctl(
                &seg.node,
                &pod,
                &format!("net.ipv4.conf.{ifname}.arp_ignore")
            ),
            "1"
        );
        assert_eq!(
            sysctl(
                &seg.node,
                &pod,
                &format!("net.ipv4.conf.{ifname}.arp_announce")
            ),
            "2"
        );
    }
    for ifname in ["net1", "net2"] {
        let addr = address(&seg.node, &pod, ifname);
        let mac = seg.node.ip(Some(&pod), &["link", "show", ifname])[0]["address"].clone();
        assert!(seg.node.pings(&seg.router, &addr), "{ifname}");
        assert!(
            seg.node.pings(&seg.peer, &addr),
            "{ifname} from behind the router"
        );
        let neigh = seg.node.ip(Some(&seg.router), &["neigh", "show", &addr]);
        assert_eq!(
            neigh[0]["lladdr"], mac,
            "{ifname}'s address answered by another interface: {neigh}"
        );
    }
    let del = pod_call(&seg.node, "DEL", "twins", &pod, &args);
    seg.node.exec(&del, &conf).ok();
}

/// `sbr` chained after attache's own macvlan in a pod's definition: in-process, its rule made, and gone
/// after DEL although the interface went first (the pod's native interfaces are deleted as a group).
#[test]
fn sbr_chained_after_a_native_macvlan_in_a_pod() {
    require_reference_plugins();
    let mut seg = segment("sbrpod");
    let ipam = seg.node.path("ipam");
    let nad = json!({"cniVersion": "1.0.0", "plugins": [
        {"type": "macvlan", "master": "nic0",
         "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": "10.71.0.0/24",
                  "rangeStart": "10.71.0.30", "rangeEnd": "10.71.0.39", "gateway": "10.71.0.1"}]]}},
        {"type": "sbr"}]});
    let dir = crate::testbed::write_nads(
        &seg.node,
        NS,
        &[
            ("seg-sbr", nad),
            (
                "side",
                crate::testbed::bridge_nad(&seg.node, "br-side", "10.72.0.0/24"),
            ),
        ],
    );
    let pod = seg.node.pod();
    let conf = crate::testbed::meta_conf(&seg.node, &dir, "seg-sbr,side");
    let args = pod_args();
    let call = pod_call(&seg.node, "ADD", "chained", &pod, &args);
    seg.node.exec(&call, &conf).ok();
    let net1 = address(&seg.node, &pod, "net1");
    let rules = seg.node.ip(Some(&pod), &["-4", "rule", "show"]);
    assert!(
        rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["src"] == net1.as_str() && r["table"] == "100"),
        "{rules}"
    );
    assert!(
        seg.node.pings(&seg.peer, &net1),
        "sbr routes the reply through net1"
    );
    let check = pod_call(&seg.node, "CHECK", "chained", &pod, &args);
    seg.node.exec(&check, &conf).ok();
    let del = pod_call(&seg.node, "DEL", "chained", &pod, &args);
    seg.node.exec(&del, &conf).ok();
    let rules = seg.node.ip(Some(&pod), &["-4", "rule", "show"]);
    assert!(
        !rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["src"] == net1.as_str()),
        "a rule is left: {rules}"
    );
    assert_eq!(seg.node.links(Some(&pod)), ["lo"]);
}

/// Dual stack: an IPv6 address of a routed interface gets its rule and its table's default too.
#[test]
fn ipv6_addresses_are_routed_by_source_too() {
    require_reference_plugins();
    let mut seg = segment("srcv6");
    let ipam = seg.node.path("ipam");
    let dir = definitions(
        &seg.node,
        json!({"ipam": {"type": "host-local", "dataDir": ipam, "ranges": [
            [{"subnet": "10.71.0.0/24", "rangeStart": "10.71.0.40", "rangeEnd": "10.71.0.49", "gateway": "10.71.0.1"}],
            [{"subnet": "fd71::/64", "gateway": "fd71::1"}]]}}),
    );
    let args = pod_args();
    let pod = seg.node.pod();
    let mut conf = crate::testbed::meta_conf(&seg.node, &dir, "seg");
    conf["podRouting"] = json!("source");
    let call = pod_call(&seg.node, "ADD", "dual", &pod, &args);
    seg.node.exec(&call, &conf).ok();
    let v6 = seg
        .node
        .addrs(Some(&pod), "net1")
        .into_iter()
        .find(|a| a.contains(':'))
        .expect("net1 has an IPv6 address");
    let v6 = v6.split('/').next().unwrap().to_string();
    let rules = seg.node.ip(Some(&pod), &["-6", "rule", "show"]);
    assert!(
        rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["priority"] == 1000 && r["src"] == v6.as_str()),
        "{rules}"
    );
    let via = &seg
        .node
        .ip(Some(&pod), &["-6", "route", "get", "fd99::1", "from", &v6])[0];
    assert_eq!(
        (&via["dev"], &via["gateway"]),
        (&json!("net1"), &json!("fd71::1")),
        "{via}"
    );
    // Main has no IPv6 default of net1's: the pod's own IPv6 default is not taken by a secondary.
    let defaults = seg.node.ip(Some(&pod), &["-6", "route", "show", "default"]);
    assert!(defaults.as_array().unwrap().is_empty(), "{defaults}");
    let del = pod_call(&seg.node, "DEL", "dual", &pod, &args);
    seg.node.exec(&del, &conf).ok();
    let rules = seg.node.ip(Some(&pod), &["-6", "rule", "show"]);
    assert!(
        !rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["priority"] == 1000),
        "{rules}"
    );
}
