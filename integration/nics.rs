//! Node interfaces found by identity, on this machine's kernel (veths stand in for the NICs; the tests
//! with PCI devices, virtio, MACs burnt in and netns deaths are in `vm.rs`): altnames over 15 bytes for
//! the native driver and, rewritten, for an exec'd reference macvlan; the physical-network map of two
//! nodes whose NIC has different names; the refusals; and host-device against Debian's reference.

use std::path::{Path, PathBuf};

use crate::testbed::state::{assert_same_as_reference, leased};
use crate::testbed::{Node, REFERENCE_DIR, first_ip, require_reference_plugins, write_nads};
use serde_json::{Value, json};

const LONG: &str = "enp59s0f0np0-data-fabric-uplink-a";

/// A node whose "NIC" is a veth end `name` with the altnames `alts`.
fn node_with(tag: &str, name: &str, alts: &[&str]) -> Node {
    let node = Node::new(tag);
    let peer = format!("{}p", &name[..name.len().min(12)]);
    for args in [
        &["link", "add", name, "type", "veth", "peer", "name", &peer][..],
        &["link", "set", name, "up"],
        &["link", "set", &peer, "up"],
    ] {
        assert!(node.ip_do(args), "ip {args:?}");
    }
    for a in alts {
        assert!(
            node.ip_do(&["link", "property", "add", "dev", name, "altname", a]),
            "altname {a}"
        );
    }
    node
}

fn macvlan(node: &Node, master: Value) -> Value {
    let mut c = json!({"cniVersion": "1.0.0", "name": "fabric", "type": "macvlan",
        "ipam": {"type": "host-local", "subnet": "10.91.0.0/24", "dataDir": node.path("ipam")}});
    for (k, v) in master.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// The index of the link a pod's macvlan hangs off, and the node's link of that index.
fn master_of(node: &Node, pod: &str, ifname: &str) -> String {
    let l = &node.ip(Some(pod), &["-d", "link", "show", ifname])[0];
    let idx = l["link_index"]
        .as_u64()
        .expect("a macvlan has a lower link");
    let all = node.ip(None, &["link", "show"]);
    all.as_array()
        .unwrap()
        .iter()
        .find(|x| x["ifindex"].as_u64() == Some(idx))
        .map(|x| x["ifname"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// What a failed ADD must not leave: a link in the pod, an address, a record.
fn assert_nothing_left(node: &Node, pod: &str, what: &str) {
    assert_eq!(node.links(Some(pod)), vec!["lo".to_string()], "{what}");
    assert!(leased(node).is_empty(), "{what}: {:?}", leased(node));
    assert!(
        node.files("cache").is_empty(),
        "{what}: {:?}",
        node.files("cache")
    );
}

#[test]
fn a_master_named_by_a_long_altname_works_natively_and_in_drop_in() {
    require_reference_plugins();
    let mut node = node_with("altm", "nic0", &[LONG, "fab0"]);
    for (i, master) in [LONG, "fab0"].into_iter().enumerate() {
        let pod = node.pod();
        let id = format!("alt{i}");
        let c = macvlan(&node, json!({"master": master}));
        let r = node.exec(&node.call("ADD", &id, &pod, "eth0"), &c).ok();
        assert_eq!(master_of(&node, &pod, "eth0"), "nic0", "{master}");
        let mut chk = c.clone();
        chk["prevResult"] = r;
        node.exec(&node.call("CHECK", &id, &pod, "eth0"), &chk).ok();
        node.exec(&node.call("DEL", &id, &pod, "eth0"), &c).ok();
    }
    // The selector form, drop-in.
    let pod = node.pod();
    let c = macvlan(&node, json!({"masterSelector": {"altName": LONG}}));
    node.exec(&node.call("ADD", "sel", &pod, "eth0"), &c).ok();
    assert_eq!(master_of(&node, &pod, "eth0"), "nic0");
    node.exec(&node.call("DEL", "sel", &pod, "eth0"), &c).ok();
    assert!(leased(&node).is_empty());
}

/// A plugin attache does not own: Debian's macvlan under another name, behind a script that keeps the
/// configuration it was given.
fn spy_plugin(node: &Node) -> PathBuf {
    let dir = node.path("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("spymacvlan");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntee -a {} | {}/macvlan\n",
            node.path("spy.json").display(),
            REFERENCE_DIR
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p";

/// The meta-plugin called for a pod of namespace `default`.
fn run_pod(node: &Node, cmd: &str, id: &str, pod: &str, conf: &Value) -> crate::testbed::CniOutput {
    let mut call = node.call(cmd, id, pod, "eth0");
    call.args = POD_ARGS;
    node.exec(&call, conf)
}

fn meta(node: &Node, nets: &Path, annotation: &str, physnets: &Path, bin: &Path) -> Value {
    let mut c = crate::testbed::meta_conf(node, nets, annotation);
    c["physnetsFile"] = json!(physnets);
    c["binDir"] = json!(bin);
    c["logLevel"] = json!("debug");
    c["logFile"] = json!(node.path("attache.log"));
    c
}

/// `physicalNetwork: "data"` on two nodes whose NIC is named differently: each node's map selects it by
/// an altname of its own (veths have no device, so no MAC or PCI selector matches them; the VM tests
/// select by PCI address). The native macvlan and an exec'd reference one both get the node's name.
#[test]
fn one_definition_attaches_on_two_nodes_with_differently_named_nics() {
    require_reference_plugins();
    for (tag, nic, alt) in [("pna", "ens1f0", "uplink-a"), ("pnb", "ens2f1", "uplink-b")] {
        let mut node = node_with(tag, nic, &[alt]);
        let physnets = node.path("physnets.json");
        std::fs::write(&physnets, json!({"data": {"altName": alt}}).to_string()).unwrap();
        let bin = spy_plugin(&node);
        let ipam =
            |s: &str| json!({"type": "host-local", "subnet": s, "dataDir": node.path("ipam")});
        let nets = write_nads(
            &node,
            "default",
            &[
                (
                    "data",
                    json!({"cniVersion": "1.0.0", "type": "macvlan", "physicalNetwork": "data",
                           "ipam": ipam("10.92.0.0/24")}),
                ),
                (
                    "data-ref",
                    json!({"cniVersion": "1.0.0", "type": "spymacvlan",
                           "masterSelector": {"physicalNetwork": "data"}, "ipam": ipam("10.93.0.0/24")}),
                ),
            ],
        );
        let c = meta(&node, &nets, "data,data-ref", &physnets, &bin);
        let pod = node.pod();
        let r = run_pod(&node, "ADD", "pn1", &pod, &c).ok();
        // The result is the cluster network's (as Multus'); the secondaries are in the pod.
        let links = node.links(Some(&pod));
        assert!(
            links.contains(&"net1".to_string()) && links.contains(&"net2".to_string()),
            "{links:?}"
        );
        assert_eq!(master_of(&node, &pod, "net1"), nic, "{tag}: native");
        assert_eq!(master_of(&node, &pod, "net2"), nic, "{tag}: exec'd");
        // The exec'd plugin received this node's name, and no selector it would not understand.
        let spy = std::fs::read_to_string(node.path("spy.json")).unwrap();
        let given: Value = serde_json::Deserializer::from_str(&spy)
            .into_iter::<Value>()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(given["master"], json!(nic), "{given}");
        assert!(given.get("masterSelector").is_none(), "{given}");
        // The record keeps what was resolved; the debug log says it.
        let log = std::fs::read_to_string(node.path("attache.log")).unwrap();
        assert!(
            log.contains(&format!("master: physicalNetwork data -> {nic}")),
            "{log}"
        );
        let records: String = node
            .files("cache")
            .iter()
            .map(|f| std::fs::read_to_string(node.path("cache").join(f)).unwrap_or_default())
            .collect();
        assert!(records.contains("\"physicalNetwork data\""), "{records}");
        let mut chk = c.clone();
        chk["prevResult"] = r;
        run_pod(&node, "CHECK", "pn1", &pod, &chk).ok();
        run_pod(&node, "DEL", "pn1", &pod, &c).ok();
        assert!(leased(&node).is_empty(), "{tag}: {:?}", leased(&node));
        assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    }
}

#[test]
fn a_node_interface_that_cannot_be_resolved_is_refused_with_what_the_node_has() {
    require_reference_plugins();
    let mut node = node_with("pnbad", "nic0", &["uplink-a"]);
    let physnets = node.path("physnets.json");
    let bin = spy_plugin(&node);
    let ipam =
        json!({"type": "host-local", "subnet": "10.94.0.0/24", "dataDir": node.path("ipam")});
    let cases: Vec<(&str, Value, Option<&str>, &str)> = vec![
        (
            "a PCI address on a node of veths",
            json!({"masterSelector": {"pciAddress": "0000:3b:00.0"}}),
            None,
            "no interface backed by a device",
        ),
        (
            "an altname nobody has",
            json!({"masterSelector": {"altName": "uplink-z"}}),
            None,
            "altName \"uplink-z\" matches no interface; it has ",
        ),
        (
            "a physical network the map lacks",
            json!({"physicalNetwork": "storage"}),
            Some(r#"{"data":{"altName":"uplink-a"}}"#),
            "physicalNetwork \"storage\" is not in",
        ),
        (
            "a malformed map",
            json!({"physicalNetwork": "data"}),
            Some("{\"data\": "),
            "is not a JSON object of selectors",
        ),
        (
            "a selector with two forms",
            json!({"masterSelector": {"altName": "uplink-a", "mac": "02:00:00:00:00:01"}}),
            None,
            "exactly one of",
        ),
        (
            "master and a selector",
            json!({"master": "nic0", "masterSelector": {"altName": "uplink-a"}}),
            None,
            "not both",
        ),
        (
            "an altname with a space",
            json!({"master": "uplink a"}),
            None,
            "invalid character",
        ),
        (
            "an altname with a control byte",
            json!({"master": "uplink\u{7}"}),
            None,
            "invalid character",
        ),
        (
            "an altname of 128 bytes",
            json!({"master": "u".repeat(128)}),
            None,
            "longer than 127 bytes",
        ),
    ];
    for (what, field, map, needle) in cases {
        let _ = std::fs::remove_file(&physnets);
        if let Some(m) = map {
            std::fs::write(&physnets, m).unwrap();
        }
        for t in ["macvlan", "spymacvlan"] {
            let mut plugin = json!({"cniVersion": "1.0.0", "type": t, "ipam": ipam});
            for (k, v) in field.as_object().unwrap() {
                plugin[k] = v.clone();
            }
            // A plain master on a type attache does not own is not its to look at.
            if t == "spymacvlan"
                && field.get("master").is_some()
                && field.get("masterSelector").is_none()
            {
                continue;
            }
            let nets = write_nads(&node, "default", &[("bad", plugin)]);
            let c = meta(&node, &nets, "bad", &physnets, &bin);
            let pod = node.pod();
            let e = run_pod(&node, "ADD", "bad1", &pod, &c).err(7);
            let msg = e["msg"].as_str().unwrap_or_default().to_string()
                + e["details"].as_str().unwrap_or_default();
            assert!(msg.contains(needle), "{what} ({t}): {e}");
            assert_nothing_left(&node, &pod, what);
            run_pod(&node, "DEL", "bad1", &pod, &c).ok();
        }
    }
    // A map that is a symlink is not followed.
    let real = node.path("real.json");
    std::fs::write(&real, r#"{"data":{"altName":"uplink-a"}}"#).unwrap();
    let _ = std::fs::remove_file(&physnets);
    std::os::unix::fs::symlink(&real, &physnets).unwrap();
    let plugin =
        json!({"cniVersion": "1.0.0", "type": "macvlan", "physicalNetwork": "data", "ipam": ipam});
    let nets = write_nads(&node, "default", &[("bad", plugin)]);
    let c = meta(&node, &nets, "bad", &physnets, &bin);
    let pod = node.pod();
    let e = run_pod(&node, "ADD", "bad2", &pod, &c).err(7);
    assert!(e.to_string().contains("symlink"), "{e}");
    assert_nothing_left(&node, &pod, "symlinked map");
}

fn host_device(node: &Node, extra: Value) -> Value {
    let mut c = json!({"cniVersion": "1.0.0", "name": "hostdev", "type": "host-device",
        "dataDir": node.path("hd"),
        "ipam": {"type": "host-local", "subnet": "10.95.0.0/24", "dataDir": node.path("ipam"),
                 "routes": [{"dst": "10.96.0.0/16"}]}});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[test]
fn host_device_differential_against_the_reference() {
    require_reference_plugins();
    for (what, extra) in [
        ("by name", json!({"device": "nic0"})),
        ("by hwaddr", json!({"hwaddr": "0a:00:00:00:95:01"})),
        ("layer 2 only", json!({"device": "nic0", "ipam": null})),
    ] {
        assert_same_as_reference(
            &format!("host-device {what}"),
            &PathBuf::from(REFERENCE_DIR).join("host-device"),
            &|| {
                let n = Node::with_nic("hddif");
                assert!(n.ip_do(&["link", "set", "nic0", "address", "0a:00:00:00:95:01"]));
                n
            },
            &|node| {
                let mut c = host_device(node, extra.clone());
                if c["ipam"].is_null() {
                    c.as_object_mut().unwrap().remove("ipam");
                }
                c
            },
            &|node, pod| {
                // The device itself is in the pod, and gone from the node.
                assert!(node.links(Some(pod)).contains(&"eth0".to_string()));
                assert!(!node.links(None).contains(&"nic0".to_string()));
            },
        );
    }
}

#[test]
fn a_handed_device_comes_back_under_its_name_even_after_the_pod_renamed_it() {
    require_reference_plugins();
    let mut node = Node::with_nic("hdback");
    assert!(node.ip_do(&["link", "property", "add", "dev", "nic0", "altname", LONG]));
    let pod = node.pod();
    let c = host_device(
        &node,
        json!({"deviceSelector": {"altName": LONG}, "dataDir": node.path("hd")}),
    );
    let r = node.exec(&node.call("ADD", "hd1", &pod, "net1"), &c).ok();
    assert_eq!(r["interfaces"][0]["name"], "net1");
    let ip = first_ip(&r);
    assert!(
        node.addrs(Some(&pod), "net1")
            .iter()
            .any(|a| a.starts_with(&ip))
    );
    let mut chk = c.clone();
    chk["prevResult"] = r.clone();
    node.exec(&node.call("CHECK", "hd1", &pod, "net1"), &chk)
        .ok();
    // The workload renames its interface (the reference then loses the device: plugins #773).
    assert!(
        node.sh(Some(&pod), &["ip", "link", "set", "net1", "name", "data0"])
            .status
            .success()
    );
    let e = node
        .exec(&node.call("CHECK", "hd1", &pod, "net1"), &chk)
        .err(999);
    assert!(e.to_string().contains("missing"), "{e}");
    // DEL finds it under the name the workload gave it, by its identity.
    node.exec(&node.call("DEL", "hd1", &pod, "net1"), &c).ok();
    assert!(
        node.links(None).contains(&"nic0".to_string()),
        "{:?}",
        node.links(None)
    );
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    assert!(leased(&node).is_empty());
    assert!(node.files("hd").is_empty(), "{:?}", node.files("hd"));
    // A second DEL does nothing and succeeds.
    node.exec(&node.call("DEL", "hd1", &pod, "net1"), &c).ok();
    assert!(node.links(None).contains(&"nic0".to_string()));

    // Handed over by the reference plugin before attache replaced it (no state of attache's): DEL gives
    // it back under the name the reference kept.
    let by_name = host_device(&node, json!({"device": "nic0", "dataDir": node.path("hd")}));
    let mut call = node.call("ADD", "hd2", &pod, "net1");
    call.bin = PathBuf::from(REFERENCE_DIR).join("host-device");
    node.exec(&call, &by_name).ok();
    assert!(!node.links(None).contains(&"nic0".to_string()));
    node.exec(&node.call("DEL", "hd2", &pod, "net1"), &by_name)
        .ok();
    assert!(
        node.links(None).contains(&"nic0".to_string()),
        "{:?}",
        node.links(None)
    );
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    assert!(leased(&node).is_empty());
}

#[test]
fn a_host_device_in_a_pod_of_the_meta_plugin_goes_back_at_del_and_on_a_failed_add() {
    require_reference_plugins();
    let mut node = Node::with_nic("hdmeta");
    let physnets = node.path("physnets.json");
    assert!(node.ip_do(&[
        "link",
        "property",
        "add",
        "dev",
        "nic0",
        "altname",
        "passthrough-a"
    ]));
    std::fs::write(&physnets, r#"{"pt":{"altName":"passthrough-a"}}"#).unwrap();
    let bin = node.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let ipam = |s: &str| json!({"type": "host-local", "subnet": s, "dataDir": node.path("ipam")});
    let nets = write_nads(
        &node,
        "default",
        &[
            (
                "pt",
                json!({"cniVersion": "1.0.0", "type": "host-device", "physicalNetwork": "pt",
                       "dataDir": node.path("hd"), "ipam": ipam("10.97.0.0/24")}),
            ),
            (
                "br",
                crate::testbed::bridge_nad(&node, "br-hd", "10.98.0.0/24"),
            ),
            // Fails at ADD: its master is on no node.
            (
                "broken",
                json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "nic-missing",
                       "ipam": ipam("10.99.0.0/24")}),
            ),
        ],
    );
    let pod = node.pod();
    let c = meta(&node, &nets, "br,pt", &physnets, &bin);
    let r = run_pod(&node, "ADD", "m1", &pod, &c).ok();
    assert!(node.links(Some(&pod)).contains(&"net2".to_string()));
    assert!(!node.links(None).contains(&"nic0".to_string()));
    let mut chk = c.clone();
    chk["prevResult"] = r;
    run_pod(&node, "CHECK", "m1", &pod, &chk).ok();
    run_pod(&node, "DEL", "m1", &pod, &c).ok();
    assert!(
        node.links(None).contains(&"nic0".to_string()),
        "{:?}",
        node.links(None)
    );
    assert!(leased(&node).is_empty());
    // A pod whose later network fails: the device handed over first goes back.
    let pod2 = node.pod();
    let c = meta(&node, &nets, "pt,broken", &physnets, &bin);
    run_pod(&node, "ADD", "m2", &pod2, &c).err(7);
    assert!(
        node.links(None).contains(&"nic0".to_string()),
        "{:?}",
        node.links(None)
    );
    assert_eq!(node.links(Some(&pod2)), vec!["lo".to_string()]);
    assert!(leased(&node).is_empty(), "{:?}", leased(&node));
    assert!(node.files("hd").is_empty(), "{:?}", node.files("hd"));
    run_pod(&node, "DEL", "m2", &pod2, &c).ok();
}
