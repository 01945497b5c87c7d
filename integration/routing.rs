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
