//! Tests that need kernel features this machine's kernel lacks — 802.1Q vlan, ipvlan, dummy links, bridge
//! vlan filtering. They are `#[ignore]`d on the host and run by `scripts/vm-test` inside a VM booted with
//! Debian's kernel (virtme-ng), which passes `--include-ignored`. Each one first checks that the features
//! are there and fails loudly if not: a test that can run nowhere must not pass.
//! Under emulation the kernel is slow: these are correctness tests only, nothing is timed.

mod poll;
mod testbed;
mod vm_nics;

use std::path::PathBuf;

use serde_json::{Value, json};
use testbed::state::{assert_same_as_reference, leased, strip_nulls};
use testbed::{Node, REFERENCE_DIR, first_ip, require_reference_plugins};

fn ip(node: &Node, args: &[&str]) {
    assert!(node.ip_do(args), "ip -n {} {args:?}", node.name);
}

/// A node with a dummy NIC `eth1` (the vlan/ipvlan master), after checking the kernel has what we need.
fn vm_node(tag: &str) -> Node {
    require_reference_plugins();
    let node = Node::new(tag);
    for (what, args) in [
        ("dummy links", vec!["link", "add", "eth1", "type", "dummy"]),
        (
            "802.1Q vlan",
            vec![
                "link", "add", "link", "eth1", "name", "probe.9", "type", "vlan", "id", "9",
            ],
        ),
        (
            "ipvlan",
            vec![
                "link", "add", "link", "eth1", "name", "probeip", "type", "ipvlan", "mode", "l2",
            ],
        ),
    ] {
        assert!(
            node.ip_do(&args),
            "this kernel has no {what}: run these tests with scripts/vm-test"
        );
    }
    ip(&node, &["link", "del", "probe.9"]);
    ip(&node, &["link", "del", "probeip"]);
    ip(&node, &["link", "set", "eth1", "up"]);
    node
}

fn conf(node: &Node, t: &str, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": format!("{t}net"),
        "type": t,
        "master": "eth1",
        "ipam": {"type": "host-local", "subnet": "10.66.0.0/24", "dataDir": node.path("ipam")}
    });
    for (k, v) in extra.as_object().unwrap() {
        if k == "ipam" {
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

fn differential(t: &str, cases: Vec<(&str, Value)>) {
    for (what, extra) in cases {
        assert_same_as_reference(
            &format!("{t} {what}"),
            &PathBuf::from(REFERENCE_DIR).join(t),
            &|| vm_node("vmdif"),
            &|node| conf(node, t, extra.clone()),
            &|_, _| {},
        );
    }
}

#[test]
#[ignore = "needs 8021q, ipvlan, dummy and bridge vlan filtering: run by scripts/vm-test"]
fn vlan_differential_against_the_reference() {
    differential(
        "vlan",
        vec![
            ("vlan 100", json!({"vlanId": 100})),
            ("mtu", json!({"vlanId": 101, "mtu": 1400})),
            (
                "static",
                json!({"vlanId": 102, "ipam": {"type": "static", "subnet": null, "dataDir": null,
                "addresses": [{"address": "10.66.0.9/24", "gateway": "10.66.0.1"}], "routes": [{"dst": "0.0.0.0/0"}]}}),
            ),
        ],
    );
}

#[test]
#[ignore = "needs 8021q, ipvlan, dummy and bridge vlan filtering: run by scripts/vm-test"]
fn ipvlan_differential_against_the_reference() {
    differential(
        "ipvlan",
        vec![
            ("l2", json!({})),
            ("l3", json!({"mode": "l3"})),
            ("mtu", json!({"mtu": 1400})),
        ],
    );
}

#[test]
#[ignore = "needs 8021q, ipvlan, dummy and bridge vlan filtering: run by scripts/vm-test"]
fn same_vlan_pings_other_vlan_does_not() {
    let mut node = vm_node("vmvlan");
    // Two NICs wired together (a veth pair): tagged frames cross between them.
    ip(
        &node,
        &["link", "add", "m1", "type", "veth", "peer", "name", "m2"],
    );
    ip(&node, &["link", "set", "m1", "up"]);
    ip(&node, &["link", "set", "m2", "up"]);
    let static_conf = |master: &str, vlan: u16, addr: &str| {
        json!({"cniVersion": "1.0.0", "name": format!("v{vlan}"), "type": "vlan", "master": master, "vlanId": vlan,
            "ipam": {"type": "static", "addresses": [{"address": addr}]}})
    };
    let (pa, pb, pc) = (node.pod(), node.pod(), node.pod());
    node.exec(
        &node.call("ADD", "a", &pa, "eth0"),
        &static_conf("m1", 10, "10.70.0.1/24"),
    )
    .ok();
    node.exec(
        &node.call("ADD", "b", &pb, "eth0"),
        &static_conf("m2", 10, "10.70.0.2/24"),
    )
    .ok();
    node.exec(
        &node.call("ADD", "c", &pc, "eth0"),
        &static_conf("m2", 20, "10.70.0.3/24"),
    )
    .ok();
    assert!(node.pings(&pa, "10.70.0.2"), "same vlan id: no traffic");
    assert!(
        !node.pings(&pa, "10.70.0.3"),
        "different vlan ids reached each other"
    );
    let d = node.ip(Some(&pb), &["-d", "link", "show", "eth0"]);
    assert_eq!(d[0]["linkinfo"]["info_data"]["id"], 10);
    let mut with_prev = static_conf("m2", 10, "10.70.0.2/24");
    with_prev["prevResult"] = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.70.0.2/24", "interface": 0}],
        "interfaces": [{"name": "eth0", "sandbox": pb}]});
    node.exec(&node.call("CHECK", "b", &pb, "eth0"), &with_prev)
        .ok();
    // CHECK of the wrong vlan id fails.
    let mut wrong = with_prev.clone();
    wrong["vlanId"] = json!(11);
    node.exec(&node.call("CHECK", "b", &pb, "eth0"), &wrong)
        .err(999);
}

#[test]
#[ignore = "needs 8021q, ipvlan, dummy and bridge vlan filtering: run by scripts/vm-test"]
fn ipvlan_pods_on_one_master_ping_each_other() {
    let mut node = vm_node("vmipv");
    let c = conf(&node, "ipvlan", json!({}));
    let (pa, pb) = (node.pod(), node.pod());
    node.exec(&node.call("ADD", "a", &pa, "eth0"), &c).ok();
    let rb = node.exec(&node.call("ADD", "b", &pb, "eth0"), &c).ok();
    let b = first_ip(&rb);
    assert!(node.pings(&pa, &b));
    for (id, p) in [("a", &pa), ("b", &pb)] {
        node.exec(&node.call("DEL", id, p, "eth0"), &c).ok();
    }
    assert!(leased(&node).is_empty());
}

#[test]
#[ignore = "needs 8021q, ipvlan, dummy and bridge vlan filtering: run by scripts/vm-test"]
fn vlan_del_after_the_master_is_gone() {
    let mut node = vm_node("vmgone");
    let c = conf(&node, "vlan", json!({"vlanId": 30}));
    let pod = node.pod();
    node.exec(&node.call("ADD", "g", &pod, "eth0"), &c).ok();
    assert_eq!(leased(&node).len(), 1);
    ip(&node, &["link", "del", "eth1"]);
    node.exec(&node.call("DEL", "g", &pod, "eth0"), &c).ok();
    assert!(leased(&node).is_empty());
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    // Bad input is still refused before anything: vlan id out of range, master missing, MTU too big.
    for (extra, needle) in [
        (json!({"vlanId": 4095}), "4095"),
        (json!({"vlanId": 31, "master": "nope1"}), "nope1"),
    ] {
        let e = node
            .exec(
                &node.call("ADD", "h", &pod, "eth0"),
                &conf(&node, "vlan", extra),
            )
            .err(7);
        assert!(e["msg"].as_str().unwrap().contains(needle), "{e}");
        assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
        assert!(leased(&node).is_empty());
    }
}

/// Bridge ports in vlans: `vlan` (access), `vlanTrunk`, `preserveDefaultVlan`.
#[test]
#[ignore = "needs 8021q, ipvlan, dummy and bridge vlan filtering: run by scripts/vm-test"]
fn bridge_vlans_isolate_and_trunk() {
    let mut node = vm_node("vmbrv");
    let data_dir = node.path("ipam");
    let br = |vlan: u16, extra: Value| {
        let mut c = json!({"cniVersion": "1.0.0", "name": "brv", "type": "bridge", "bridge": "brv", "vlan": vlan,
            "ipam": {"type": "host-local", "subnet": "10.80.0.0/24", "dataDir": data_dir}});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let (pa, pb, pc, pd) = (node.pod(), node.pod(), node.pod(), node.pod());
    node.exec(&node.call("ADD", "a", &pa, "eth0"), &br(10, json!({})))
        .ok();
    let rb = node
        .exec(&node.call("ADD", "b", &pb, "eth0"), &br(10, json!({})))
        .ok();
    let rc = node
        .exec(
            &node.call("ADD", "c", &pc, "eth0"),
            &br(
                20,
                json!({"vlanTrunk": [{"id": 30}, {"minID": 40, "maxID": 42}]}),
            ),
        )
        .ok();
    assert!(
        node.pings(&pa, &first_ip(&rb)),
        "same access vlan: no traffic"
    );
    assert!(
        !node.pings(&pa, &first_ip(&rc)),
        "different access vlans reached each other"
    );
    let vlans = |port: &str| -> Vec<(u64, bool)> {
        let out = node.sh(None, &["bridge", "-j", "vlan", "show", "dev", port]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["vlans"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| {
                let start = e["vlan"].as_u64().unwrap();
                let end = e["vlanEnd"].as_u64().unwrap_or(start);
                let pvid = e["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "PVID"));
                (start..=end).map(move |id| (id, pvid))
            })
            .collect()
    };
    let port_c = rc["interfaces"][1]["name"].as_str().unwrap().to_string();
    assert_eq!(
        vlans(&port_c),
        vec![
            (20, true),
            (30, false),
            (40, false),
            (41, false),
            (42, false)
        ]
    );
    let port_a = node
        .exec(&node.call("DEL", "a", &pa, "eth0"), &br(10, json!({})))
        .json();
    assert!(port_a.is_null());
    // preserveDefaultVlan keeps vlan 1 on the port.
    let rd = node
        .exec(
            &node.call("ADD", "d", &pd, "eth0"),
            &br(10, json!({"preserveDefaultVlan": true})),
        )
        .ok();
    let port_d = rd["interfaces"][1]["name"].as_str().unwrap().to_string();
    assert!(
        vlans(&port_d).contains(&(1, false)) || vlans(&port_d).contains(&(1, true)),
        "{:?}",
        vlans(&port_d)
    );
    assert!(vlans(&port_d).contains(&(10, true)));
}
