//! The native macvlan driver on this machine's kernel, compared with Debian's reference macvlan plugin.
//! The master is one end of a veth pair inside the test node (standing in for the node's NIC).

use std::path::PathBuf;

use crate::testbed::state::{assert_same_as_reference, leased, strip_nulls};
use crate::testbed::{Node, REFERENCE_DIR, first_ip, require_reference_plugins};
use serde_json::{Value, json};

fn node_with_master(tag: &str) -> Node {
    Node::with_nic(tag)
}

fn conf(node: &Node, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "macnet",
        "type": "macvlan",
        "master": "nic0",
        "ipam": {"type": "host-local", "subnet": "10.55.0.0/24", "dataDir": node.path("ipam"),
                 "routes": [{"dst": "0.0.0.0/0"}]}
    });
    for (k, v) in extra.as_object().unwrap() {
        if k == "ipam" && v.as_object().is_some_and(|o| !o.is_empty()) {
            for (ik, iv) in v.as_object().unwrap() {
                c["ipam"][ik] = iv.clone();
            }
        } else {
            c[k] = v.clone();
        }
    }
    strip_nulls(&mut c);
    c
}

fn reference() -> PathBuf {
    PathBuf::from(REFERENCE_DIR).join("macvlan")
}

#[test]
fn differential_against_the_reference_macvlan() {
    require_reference_plugins();
    let cases: Vec<(&str, Value)> = vec![
        ("bridge mode", json!({})),
        ("private mode", json!({"mode": "private"})),
        ("vepa mode", json!({"mode": "vepa"})),
        ("mtu", json!({"mtu": 1400})),
        (
            "static",
            json!({"ipam": {"type": "static", "subnet": null, "dataDir": null, "routes": null,
            "addresses": [{"address": "10.55.0.9/24", "gateway": "10.55.0.1"}]}}),
        ),
        ("layer 2 only", json!({"ipam": {}})),
        (
            "mac",
            json!({"capabilities": {"mac": true}, "runtimeConfig": {"mac": "0a:00:00:00:55:01"}}),
        ),
        (
            "dual stack",
            json!({"ipam": {"subnet": null, "ranges": [[{"subnet": "10.55.0.0/24"}], [{"subnet": "fd55::/64"}]]}}),
        ),
    ];
    for (what, extra) in cases {
        assert_same_as_reference(
            what,
            &reference(),
            &|| node_with_master("mvdif"),
            &|node| conf(node, extra.clone()),
            &|node, pod| {
                if what == "mac" {
                    let mac = &node.ip(Some(pod), &["link", "show", "eth0"])[0]["address"];
                    assert_eq!(mac, "0a:00:00:00:55:01", "{what}");
                }
            },
        );
    }
}

#[test]
fn two_pods_on_one_master_ping_each_other() {
    require_reference_plugins();
    let mut node = node_with_master("mvping");
    let c = conf(&node, json!({}));
    let (pa, pb) = (node.pod(), node.pod());
    node.exec(&node.call("ADD", "a", &pa, "eth0"), &c).ok();
    let rb = node.exec(&node.call("ADD", "b", &pb, "eth0"), &c).ok();
    let b_addr = first_ip(&rb);
    assert!(node.pings(&pa, &b_addr));
    let mut with_prev = c.clone();
    with_prev["prevResult"] = rb;
    node.exec(&node.call("CHECK", "b", &pb, "eth0"), &with_prev)
        .ok();
    for (id, p) in [("a", &pa), ("b", &pb)] {
        node.exec(&node.call("DEL", id, p, "eth0"), &c).ok();
    }
    assert!(leased(&node).is_empty());
}

#[test]
fn del_after_the_master_is_gone_releases_the_address() {
    require_reference_plugins();
    let mut node = node_with_master("mvgone");
    let c = conf(&node, json!({}));
    let pod = node.pod();
    node.exec(&node.call("ADD", "g1", &pod, "eth0"), &c).ok();
    assert_eq!(leased(&node).len(), 1);
    assert!(
        node.sh(None, &["ip", "link", "del", "nic0"])
            .status
            .success()
    );
    node.exec(&node.call("DEL", "g1", &pod, "eth0"), &c).ok();
    assert!(leased(&node).is_empty());
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    node.exec(&node.call("DEL", "g1", &pod, "eth0"), &c).ok();
}

#[test]
fn bad_input_is_refused_before_anything_is_made() {
    require_reference_plugins();
    let mut node = node_with_master("mvbad");
    let pod = node.pod();
    for (what, extra, needle) in [
        ("missing master", json!({"master": "nope0"}), "nope0"),
        ("mtu above the master's", json!({"mtu": 9000}), "9000"),
        ("unknown mode", json!({"mode": "turbo"}), "turbo"),
    ] {
        let e = node
            .exec(&node.call("ADD", "b1", &pod, "eth0"), &conf(&node, extra))
            .err(7);
        assert!(e["msg"].as_str().unwrap().contains(needle), "{what}: {e}");
        assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()], "{what}");
        assert!(leased(&node).is_empty(), "{what}");
    }
    // A name already in the pod: refused after the temporary link, which is removed again.
    assert!(
        node.sh(Some(&pod), &["ip", "link", "add", "eth0", "type", "bridge"])
            .status
            .success()
    );
    let e = node
        .exec(
            &node.call("ADD", "b2", &pod, "eth0"),
            &conf(&node, json!({})),
        )
        .err(999);
    assert!(e["msg"].as_str().unwrap().contains("already exists"), "{e}");
    assert_eq!(
        node.links(Some(&pod)),
        vec!["lo".to_string(), "eth0".to_string()]
    );
    assert!(leased(&node).is_empty());
}

#[test]
fn link_in_container_uses_a_master_inside_the_pod() {
    require_reference_plugins();
    let mut node = Node::new("mvlic");
    let pod = node.pod();
    for args in [
        vec![
            "ip", "link", "add", "pm0", "type", "veth", "peer", "name", "pm1",
        ],
        vec!["ip", "link", "set", "pm0", "up"],
        vec!["ip", "link", "set", "pm1", "up"],
    ] {
        assert!(node.sh(Some(&pod), &args).status.success(), "{args:?}");
    }
    let c = json!({"cniVersion": "1.0.0", "name": "licnet", "type": "macvlan", "master": "pm0",
        "linkInContainer": true, "ipam": {"type": "static", "addresses": [{"address": "10.56.0.5/24"}]}});
    node.exec(&node.call("ADD", "l1", &pod, "net1"), &c).ok();
    assert_eq!(
        node.addrs(Some(&pod), "net1"),
        vec!["10.56.0.5/24".to_string()]
    );
    let l = node.ip(Some(&pod), &["-d", "link", "show", "net1"]);
    assert_eq!(l[0]["link"], "pm0", "{l}");
    // The node has nothing new.
    assert_eq!(node.links(None), vec!["lo".to_string()]);
    node.exec(&node.call("DEL", "l1", &pod, "net1"), &c).ok();
    let links = node.links(Some(&pod));
    assert!(
        !links.contains(&"net1".to_string()) && links.contains(&"pm0".to_string()),
        "{links:?}"
    );
}
