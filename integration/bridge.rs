//! The native bridge driver with host-local / static IPAM, end to end in test namespaces, and compared
//! with Debian's reference `bridge` + `host-local` (the oracle): same configuration, same resulting
//! namespace state and result JSON, after normalising what is random (MACs, the host veth name).

use std::path::PathBuf;

use crate::poll::eventually;
use crate::testbed::state::{leased, normalise_result, snapshot, strip_nulls};
use crate::testbed::{Call, Node, REFERENCE_DIR, first_ip, require_reference_plugins};
use serde_json::{Value, json};

fn reference_bin(t: &str) -> PathBuf {
    PathBuf::from(REFERENCE_DIR).join(t)
}

/// A bridge conf with host-local state in the node's folder.
fn conf(node: &Node, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "difnet",
        "type": "bridge",
        "bridge": "br0",
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
    c
}

fn with_bin(mut call: Call<'_>, bin: PathBuf) -> Call<'_> {
    call.bin = bin;
    call
}

/// The table of differential cases: name, extra conf, CNI_ARGS.
fn cases() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        ("plain", json!({}), ""),
        ("gateway", json!({"isGateway": true}), ""),
        ("default gateway", json!({"isDefaultGateway": true}), ""),
        ("mtu", json!({"mtu": 1400, "isGateway": true}), ""),
        ("hairpin", json!({"hairpinMode": true}), ""),
        ("promisc", json!({"promiscMode": true}), ""),
        (
            "range start/end",
            json!({"ipam": {"rangeStart": "10.66.0.50", "rangeEnd": "10.66.0.60"}}),
            "",
        ),
        (
            "dual stack",
            json!({"isDefaultGateway": true, "ipam": {"subnet": null, "ranges": [[{"subnet": "10.66.0.0/24"}], [{"subnet": "fd66::/64"}]]}}),
            "",
        ),
        (
            "routes",
            json!({"isGateway": true, "ipam": {"routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.0.2.0/24", "gw": "10.66.0.254"}]}}),
            "",
        ),
        ("requested ip", json!({}), "IgnoreUnknown=1;IP=10.66.0.77"),
        (
            "static",
            json!({"isGateway": true, "ipam": {"type": "static", "subnet": null, "dataDir": null,
                "addresses": [{"address": "10.66.0.9/24", "gateway": "10.66.0.1"}], "routes": [{"dst": "0.0.0.0/0"}]}}),
            "",
        ),
        (
            "static from args",
            json!({"ipam": {"type": "static", "subnet": null, "dataDir": null}}),
            "IgnoreUnknown=1;IP=10.66.0.10/24",
        ),
        (
            "dns",
            json!({"dns": {"nameservers": ["10.66.0.53"], "search": ["example.test"]}}),
            "",
        ),
        ("ipMasq", json!({"isGateway": true, "ipMasq": true}), ""),
    ]
}

#[test]
fn differential_against_the_reference_bridge() {
    require_reference_plugins();
    for (what, extra, cni_args) in cases() {
        let mut snaps = Vec::new();
        for bin in [reference_bin("bridge"), crate::testbed::attache_bin()] {
            let mut node = Node::new("dif");
            let pod = node.pod();
            let mut c = conf(&node, extra.clone());
            strip_nulls(&mut c);
            let mut call = with_bin(node.call("ADD", "ctr1", &pod, "eth0"), bin.clone());
            call.args = cni_args;
            let res = node.exec(&call, &c).ok();
            let snap = snapshot(&node, &pod, "eth0");
            // DEL cleans up the same way too.
            let mut del = c.clone();
            del["prevResult"] = res.clone();
            let mut call = with_bin(node.call("DEL", "ctr1", &pod, "eth0"), bin);
            call.args = cni_args;
            node.exec(&call, &del).ok();
            let after = json!({"pod": node.links(Some(&pod)), "leased": leased(&node)});
            snaps.push((normalise_result(res), snap, after));
        }
        let (r_ref, s_ref, a_ref) = &snaps[0];
        let (r_att, s_att, a_att) = &snaps[1];
        assert_eq!(r_att, r_ref, "{what}: result JSON differs");
        assert_eq!(
            s_att,
            s_ref,
            "{what}: namespace state differs\nattache:   {}\nreference: {}",
            serde_json::to_string_pretty(s_att).unwrap(),
            serde_json::to_string_pretty(s_ref).unwrap()
        );
        assert_eq!(a_att, a_ref, "{what}: state after DEL differs");
    }
}

#[test]
fn two_pods_ping_each_other_and_the_gateway() {
    require_reference_plugins();
    let mut node = Node::new("ping");
    let c = conf(&node, json!({"isGateway": true}));
    let mut addrs = Vec::new();
    let mut pods = Vec::new();
    for id in ["pa", "pb"] {
        let pod = node.pod();
        let res = node.exec(&node.call("ADD", id, &pod, "eth0"), &c).ok();
        addrs.push(first_ip(&res));
        pods.push(pod);
    }
    assert!(node.pings(&pods[0], &addrs[1]), "pod a cannot reach pod b");
    assert!(node.pings(&pods[1], &addrs[0]), "pod b cannot reach pod a");
    assert!(
        node.pings(&pods[0], "10.66.0.1"),
        "the gateway does not answer"
    );
    for (id, pod) in ["pa", "pb"].iter().zip(&pods) {
        node.exec(&node.call("DEL", id, pod, "eth0"), &c).ok();
    }
    assert!(leased(&node).is_empty());
}

#[test]
fn state_is_shared_with_the_reference_both_ways() {
    require_reference_plugins();
    let mut node = Node::new("cross");
    let c = conf(&node, json!({"isGateway": true}));
    for (add_bin, del_bin) in [
        (crate::testbed::attache_bin(), reference_bin("bridge")),
        (reference_bin("bridge"), crate::testbed::attache_bin()),
    ] {
        let pod = node.pod();
        let res = node
            .exec(&with_bin(node.call("ADD", "x1", &pod, "eth0"), add_bin), &c)
            .ok();
        assert_eq!(leased(&node).len(), 1);
        let mut del = c.clone();
        del["prevResult"] = res;
        node.exec(
            &with_bin(node.call("DEL", "x1", &pod, "eth0"), del_bin),
            &del,
        )
        .ok();
        assert!(leased(&node).is_empty(), "IP left after cross DEL");
        assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    }
    // Both allocate from the same store: no address is handed out twice.
    let (pa, pb) = (node.pod(), node.pod());
    let a = node.exec(&node.call("ADD", "s1", &pa, "eth0"), &c).ok();
    let b = node
        .exec(
            &with_bin(node.call("ADD", "s2", &pb, "eth0"), reference_bin("bridge")),
            &c,
        )
        .ok();
    assert_ne!(a["ips"][0]["address"], b["ips"][0]["address"]);
    assert_eq!(leased(&node).len(), 2);
}

/// attache and the reference take turns on one dataDir — ADDs and DELs interleaved, DEL by the other
/// plugin than ADD, with and without prevResult, in a small range that wraps — and the folder always
/// holds exactly the live pods' addresses, each once. attache's index (`<dataDir>/.attache/`) must
/// notice every reservation the reference makes: a stale index would let a duplicate ADD through or a
/// DEL miss an address.
#[test]
fn interleaved_with_the_reference_on_one_data_dir() {
    require_reference_plugins();
    let mut node = Node::new("mixed");
    let c = conf(
        &node,
        json!({"ipam": {"rangeStart": "10.66.0.10", "rangeEnd": "10.66.0.17"}}),
    );
    let bins = [crate::testbed::attache_bin(), reference_bin("bridge")];
    let mut live: Vec<(String, String, Value)> = Vec::new(); // (id, pod, result)
    let mut seed: u64 = 0x5eed;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let check = |node: &Node, live: &[(String, String, Value)], step: usize| {
        let mut held: Vec<String> = leased(node)
            .into_iter()
            .map(|f| f.trim_start_matches("difnet/").to_string())
            .collect();
        held.sort();
        let mut want: Vec<String> = live
            .iter()
            .map(|(_, _, r)| first_ip(r).split('/').next().unwrap().to_string())
            .collect();
        want.sort();
        let before = want.len();
        want.dedup();
        assert_eq!(
            want.len(),
            before,
            "step {step}: an address handed out twice"
        );
        assert_eq!(
            held, want,
            "step {step}: the folder and the live pods differ"
        );
    };
    for step in 0..36 {
        let bin = bins[next(2) as usize].clone();
        if live.len() < 6 && (live.is_empty() || next(3) > 0) {
            let id = format!("m{step}");
            let pod = node.pod();
            let res = node
                .exec(&with_bin(node.call("ADD", &id, &pod, "eth0"), bin), &c)
                .ok();
            live.push((id, pod, res));
        } else {
            let (id, pod, res) = live.remove(next(live.len() as u64) as usize);
            let mut del = c.clone();
            if next(2) == 0 {
                del["prevResult"] = res;
            }
            node.exec(&with_bin(node.call("DEL", &id, &pod, "eth0"), bin), &del)
                .ok();
        }
        check(&node, &live, step);
    }
    // The reference reserves for a container, then attache is asked to ADD the same one: refused as a
    // duplicate, nothing left behind; attache's DEL releases the reference's reservation.
    let (pa, pb) = (node.pod(), node.pod());
    let res = node
        .exec(
            &with_bin(
                node.call("ADD", "dup", &pa, "eth0"),
                reference_bin("bridge"),
            ),
            &c,
        )
        .ok();
    live.push(("dup".into(), pa.clone(), res.clone()));
    let e = node
        .exec(&node.call("ADD", "dup", &pb, "eth0"), &c)
        .err(999);
    assert!(e["msg"].as_str().unwrap().contains("duplicate"), "{e}");
    check(&node, &live, 100);
    assert_eq!(node.links(Some(&pb)), vec!["lo".to_string()]);
    live.pop();
    node.exec(&node.call("DEL", "dup", &pa, "eth0"), &c).ok();
    check(&node, &live, 101);
    // Reserved by the reference right after attache's last call, released by attache without
    // prevResult: found all the same.
    let pc = node.pod();
    node.exec(&node.call("ADD", "own", &pc, "eth1"), &c).ok();
    let pd = node.pod();
    node.exec(
        &with_bin(
            node.call("ADD", "theirs", &pd, "eth0"),
            reference_bin("bridge"),
        ),
        &c,
    )
    .ok();
    node.exec(&node.call("DEL", "theirs", &pd, "eth0"), &c).ok();
    node.exec(&node.call("DEL", "own", &pc, "eth1"), &c).ok();
    check(&node, &live, 102);
    for (id, pod, res) in std::mem::take(&mut live) {
        let mut del = c.clone();
        del["prevResult"] = res;
        node.exec(&node.call("DEL", &id, &pod, "eth0"), &del).ok();
    }
    assert!(leased(&node).is_empty(), "{:?}", leased(&node));
}

#[test]
fn check_del_idempotence_and_netns_gone() {
    require_reference_plugins();
    let mut node = Node::new("chk");
    let pod = node.pod();
    let c = conf(&node, json!({"isDefaultGateway": true}));
    let res = node.exec(&node.call("ADD", "k1", &pod, "eth0"), &c).ok();
    let mut with_prev = c.clone();
    with_prev["prevResult"] = res.clone();
    node.exec(&node.call("CHECK", "k1", &pod, "eth0"), &with_prev)
        .ok();
    // A user removes the pod's address: CHECK notices.
    let addr = res["ips"][0]["address"].as_str().unwrap();
    assert!(
        node.sh(Some(&pod), &["ip", "addr", "del", addr, "dev", "eth0"])
            .status
            .success()
    );
    let e = node
        .exec(&node.call("CHECK", "k1", &pod, "eth0"), &with_prev)
        .err(999);
    assert!(
        e["msg"].as_str().unwrap().contains("missing its address"),
        "{e}"
    );
    // CHECK without prevResult is a config error.
    node.exec(&node.call("CHECK", "k1", &pod, "eth0"), &c)
        .err(7);
    // DEL twice, then DEL after the pod is gone, all succeed and leave nothing.
    node.exec(&node.call("DEL", "k1", &pod, "eth0"), &with_prev)
        .ok();
    node.exec(&node.call("DEL", "k1", &pod, "eth0"), &with_prev)
        .ok();
    let res = node.exec(&node.call("ADD", "k2", &pod, "eth0"), &c).ok();
    assert_eq!(leased(&node).len(), 1);
    node.delete_pod(&pod);
    let mut del = c.clone();
    del["prevResult"] = res;
    node.exec(&node.call("DEL", "k2", &pod, "eth0"), &del).ok();
    let mut nons = node.call("DEL", "k2", "", "eth0");
    nons.netns = None;
    node.exec(&nons, &del).ok();
    assert!(leased(&node).is_empty());
    assert!(eventually(10, || node
        .links(None)
        .iter()
        .all(|l| !l.starts_with("veth"))));
}

#[test]
fn drop_in_by_symlink_and_as_cluster_network_without_exec() {
    require_reference_plugins();
    let mut node = Node::new("dropin");
    // Installed under the name `bridge`: a conf saying "bridge" runs natively.
    let bin_dir = node.path("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(crate::testbed::attache_bin(), bin_dir.join("bridge")).unwrap();
    let pod = node.pod();
    let c = conf(&node, json!({}));
    let res = node
        .exec(
            &with_bin(node.call("ADD", "d1", &pod, "eth0"), bin_dir.join("bridge")),
            &c,
        )
        .ok();
    assert_eq!(
        res["interfaces"][1]["name"].as_str().unwrap().len(),
        15,
        "attache's host veth name: {res}"
    );
    node.exec(
        &with_bin(node.call("DEL", "d1", &pod, "eth0"), bin_dir.join("bridge")),
        &c,
    )
    .ok();

    // The meta-plugin with a native cluster network needs no plugin binary at all.
    let empty = node.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let meta = json!({"cniVersion": "1.1.0", "name": "attache", "type": "attache",
        "clusterNetwork": conf(&node, json!({"isGateway": true})), "cacheDir": node.path("cache")});
    let mut call = node.call("ADD", "d2", &pod, "eth0");
    call.path = empty.display().to_string();
    let res = node.exec(&call, &meta).ok();
    assert_eq!(res["cniVersion"], "1.1.0");
    let addr = res["ips"][0]["address"].as_str().unwrap().to_string();
    assert_eq!(node.addrs(Some(&pod), "eth0"), vec![addr]);
    let mut call = node.call("CHECK", "d2", &pod, "eth0");
    call.path = empty.display().to_string();
    node.exec(&call, &meta).ok();
    call.command = "DEL";
    node.exec(&call, &meta).ok();
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    assert!(leased(&node).is_empty());
    assert!(node.files("cache").is_empty());
}

#[test]
fn bad_native_input_leaves_nothing() {
    require_reference_plugins();
    let mut node = Node::new("nbad");
    let pod = node.pod();
    let bad: Vec<(&str, Value, u64)> = vec![
        ("bad CIDR", json!({"ipam": {"subnet": "10.66.0.0/33"}}), 7),
        ("host bits", json!({"ipam": {"subnet": "10.66.0.1/24"}}), 7),
        (
            "range outside subnet",
            json!({"ipam": {"rangeStart": "10.99.0.1"}}),
            7,
        ),
        (
            "hairpin and promisc",
            json!({"hairpinMode": true, "promiscMode": true}),
            7,
        ),
        (
            "bridge name too long",
            json!({"bridge": "bridge-name-too-long"}),
            7,
        ),
        ("vlan out of range", json!({"vlan": 5000}), 7),
        ("mtu too small", json!({"mtu": 10}), 7),
        ("network name escapes", json!({"name": "../../etc"}), 7),
        (
            "static without prefix",
            json!({"ipam": {"type": "static", "subnet": null, "addresses": [{"address": "10.66.0.5"}]}}),
            7,
        ),
        (
            // Not installed (yet): the node is not ready, the runtime retries.
            "IPAM not installed",
            json!({"ipam": {"type": "no-such-ipam", "subnet": null}}),
            11,
        ),
        (
            "requested IP outside",
            json!({"runtimeConfig": {"ips": ["10.99.0.5"]}}),
            999,
        ),
    ];
    for (what, extra, code) in bad {
        let mut c = conf(&node, extra);
        strip_nulls(&mut c);
        node.exec(&node.call("ADD", "b1", &pod, "eth0"), &c)
            .err(code);
        assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()], "{what}");
        let node_links: Vec<String> = node
            .links(None)
            .into_iter()
            .filter(|l| l != "lo" && l != "br0")
            .collect();
        assert!(node_links.is_empty(), "{what}: {node_links:?}");
        if code == 7 {
            assert!(
                !node.links(None).contains(&"br0".to_string()),
                "{what}: bridge made before validation"
            );
        }
        assert!(leased(&node).is_empty(), "{what}");
    }
    // Exhaustion: a one-address range, taken.
    let c = conf(
        &node,
        json!({"ipam": {"rangeStart": "10.66.0.5", "rangeEnd": "10.66.0.5"}}),
    );
    let other = node.pod();
    node.exec(&node.call("ADD", "e1", &other, "eth0"), &c).ok();
    let e = node
        .exec(&node.call("ADD", "e2", &pod, "eth0"), &c)
        .err(999);
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("no IP addresses available"),
        "{e}"
    );
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    // An interface of that name already in the pod: refused, the address given back, no host veth left.
    let c = conf(&node, json!({}));
    assert!(
        node.sh(Some(&pod), &["ip", "link", "add", "eth0", "type", "bridge"])
            .status
            .success()
    );
    let e = node
        .exec(&node.call("ADD", "e3", &pod, "eth0"), &c)
        .err(999);
    assert!(e["msg"].as_str().unwrap().contains("already exists"), "{e}");
    assert_eq!(leased(&node).len(), 1, "only e1's address is held");
    assert_eq!(
        node.links(None)
            .iter()
            .filter(|l| l.starts_with("veth"))
            .count(),
        1
    );
}

#[test]
fn ip_masq_reaches_outside_and_is_removed() {
    require_reference_plugins();
    for bin in [crate::testbed::attache_bin(), reference_bin("bridge")] {
        let mut node = Node::new("masq");
        let pod = node.pod();
        // An "outside" host beyond the node, which has no route back to the pod subnet.
        let outside = node.pod();
        let out_name = outside.rsplit('/').next().unwrap().to_string();
        let ok = |args: &[&str]| {
            assert!(
                std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .unwrap()
                    .success(),
                "{args:?}"
            )
        };
        ok(&[
            "-n", &node.name, "link", "add", "up0", "type", "veth", "peer", "name", "wan0",
            "netns", &out_name,
        ]);
        ok(&[
            "-n",
            &node.name,
            "addr",
            "add",
            "198.51.100.1/24",
            "dev",
            "up0",
        ]);
        ok(&["-n", &node.name, "link", "set", "up0", "up"]);
        ok(&[
            "-n",
            &out_name,
            "addr",
            "add",
            "198.51.100.2/24",
            "dev",
            "wan0",
        ]);
        ok(&["-n", &out_name, "link", "set", "wan0", "up"]);
        let c = conf(&node, json!({"isDefaultGateway": true, "ipMasq": true}));
        let res = node
            .exec(
                &with_bin(node.call("ADD", "m1", &pod, "eth0"), bin.clone()),
                &c,
            )
            .ok();
        let reached = node
            .sh(Some(&pod), &["ping", "-c", "1", "-W", "2", "198.51.100.2"])
            .status
            .success();
        assert!(
            reached,
            "{}: the pod cannot reach outside through masquerading",
            bin.display()
        );
        let mut del = c.clone();
        del["prevResult"] = res;
        node.exec(
            &with_bin(node.call("DEL", "m1", &pod, "eth0"), bin.clone()),
            &del,
        )
        .ok();
        if bin == crate::testbed::attache_bin() {
            let out = node.sh(None, &["nft", "list", "map", "inet", "attache", "masq4"]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                !text.contains("10.66.0."),
                "masquerade element left: {text}"
            );
            let out = node.sh(None, &["nft", "list", "table", "inet", "attache"]);
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("chain masq-"),
                "per-pod chain left"
            );
        }
    }
}

#[test]
fn mac_spoof_check_rules_follow_the_attachment() {
    require_reference_plugins();
    let mut node = Node::new("spoof");
    let (pa, pb) = (node.pod(), node.pod());
    let c = conf(&node, json!({"macspoofchk": true}));
    let ra = node.exec(&node.call("ADD", "sp1", &pa, "eth0"), &c).ok();
    let rb = node.exec(&node.call("ADD", "sp2", &pb, "eth0"), &c).ok();
    let b_addr = first_ip(&rb);
    assert!(node.pings(&pa, &b_addr));
    // Pod a forges another MAC: its frames are dropped at the bridge.
    assert!(
        node.sh(
            Some(&pa),
            &["ip", "link", "set", "eth0", "address", "0a:00:00:00:00:99"]
        )
        .status
        .success()
    );
    assert!(
        node.sh(Some(&pa), &["ip", "neigh", "flush", "all"])
            .status
            .success()
    );
    assert!(
        !node
            .sh(Some(&pa), &["ping", "-c", "1", "-W", "1", &b_addr])
            .status
            .success(),
        "spoofed frames passed"
    );
    let host = ra["interfaces"][1]["name"].as_str().unwrap().to_string();
    let map = || {
        String::from_utf8_lossy(
            &node
                .sh(
                    None,
                    &["nft", "list", "map", "bridge", "attache", "spoofchk"],
                )
                .stdout,
        )
        .into_owned()
    };
    assert!(map().contains(&host));
    node.exec(&node.call("DEL", "sp1", &pa, "eth0"), &c).ok();
    assert!(!map().contains(&host), "spoof check left after DEL");
}
