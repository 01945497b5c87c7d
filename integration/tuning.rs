//! Native `tuning` against Debian's reference `tuning`, chained after the reference macvlan (drop-in);
//! after attache's own macvlan inside the meta-plugin (applied before the link is up); and its
//! refusals.

use std::path::PathBuf;

use crate::testbed::state::normalise_result;
use crate::testbed::{Node, REFERENCE_DIR, require_reference_plugins};
use serde_json::{Value, json};

fn reference(t: &str) -> PathBuf {
    PathBuf::from(REFERENCE_DIR).join(t)
}

fn macvlan_conf(node: &Node) -> Value {
    json!({"cniVersion": "1.0.0", "name": "tunnet", "type": "macvlan", "master": "nic0",
           "ipam": {"type": "host-local", "subnet": "10.64.0.0/24", "dataDir": node.path("ipam")}})
}

fn tuning_conf(node: &Node, fields: &Value) -> Value {
    let mut c = fields.clone();
    c["cniVersion"] = json!("1.0.0");
    c["name"] = json!("tunnet");
    c["type"] = json!("tuning");
    c["dataDir"] = json!(node.path("tuning"));
    c
}

/// What tuning touches on the pod's `net1`: its link attributes and the sysctls `keys`.
fn link_state(node: &Node, pod: &str, keys: &[&str]) -> Value {
    let l = &node.ip(Some(pod), &["-d", "link", "show", "net1"])[0];
    let mut flags: Vec<String> = l["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .filter(|f| f != "LOWER_UP")
        .collect();
    flags.sort();
    let sysctls: Vec<Value> = keys
        .iter()
        .map(|k| json!([k, crate::testbed::state::sysctl(node, Some(pod), k)]))
        .collect();
    // The macvlan's own MAC is random: only one the configuration set is compared.
    let set = l["address"]
        .as_str()
        .is_some_and(|a| a.starts_with("0a:00:00:00:64"));
    let address = if set {
        l["address"].clone()
    } else {
        json!("MAC")
    };
    json!({"mtu": l["mtu"], "address": address, "flags": flags, "promiscuity": l["promiscuity"],
           "txqlen": l["txqlen"], "sysctls": sysctls})
}

/// The reference macvlan, then `tuning` from `bin`: its result, net1 after ADD, the saved-values
/// files, net1 after DEL, the files after DEL.
fn run_chain(bin: &std::path::Path, fields: &Value, keys: &[&str]) -> Vec<Value> {
    let mut node = Node::with_nic("tun");
    let pod = node.pod();
    let mut call = node.call("ADD", "ctr1", &pod, "net1");
    call.bin = reference("macvlan");
    let first = node.exec(&call, &macvlan_conf(&node)).ok();
    let before = link_state(&node, &pod, keys);
    let mut conf = tuning_conf(&node, fields);
    conf["prevResult"] = first;
    call.bin = bin.to_path_buf();
    let res = node.exec(&call, &conf).ok();
    let after_add = link_state(&node, &pod, keys);
    let files = node.files("tuning");
    let mut del = node.call("DEL", "ctr1", &pod, "net1");
    del.bin = bin.to_path_buf();
    node.exec(&del, &conf).ok();
    let mut after_del = link_state(&node, &pod, keys);
    // The reference does not put sysctls back (the interface takes its own with it); attache does.
    after_del["sysctls"] = json!(null);
    let mut before_sans = before.clone();
    before_sans["sysctls"] = json!(null);
    assert_eq!(
        after_del, before_sans,
        "{bin:?}: DEL did not restore the link"
    );
    vec![
        normalise_result(res),
        after_add,
        json!(files),
        json!(node.files("tuning")),
    ]
}

#[test]
fn differential_against_the_reference_tuning() {
    require_reference_plugins();
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "sysctls",
            json!({"sysctl": {"net.ipv4.conf.net1.arp_notify": "1", "net.ipv4.conf.net1.rp_filter": "2",
                              "net.ipv6.conf.net1.accept_ra": "0"}}),
            vec![
                "net.ipv4.conf.net1.arp_notify",
                "net.ipv4.conf.net1.rp_filter",
                "net.ipv6.conf.net1.accept_ra",
            ],
        ),
        (
            "mtu, mac and promiscuous",
            json!({"mtu": 1400, "mac": "0a:00:00:00:64:01", "promisc": true}),
            vec![],
        ),
        ("all-multicast", json!({"allmulti": true}), vec![]),
        (
            "runtime mac",
            json!({"capabilities": {"mac": true}, "runtimeConfig": {"mac": "0a:00:00:00:64:02"}}),
            vec![],
        ),
    ];
    for (what, fields, keys) in cases {
        let reference = run_chain(&reference("tuning"), &fields, &keys);
        let ours = run_chain(&crate::testbed::attache_bin(), &fields, &keys);
        assert_eq!(ours[0], reference[0], "{what}: result differs");
        assert_eq!(
            ours[1], reference[1],
            "{what}: the interface differs after ADD"
        );
        assert_eq!(ours[2], reference[2], "{what}: saved values differ");
        assert_eq!(ours[3], reference[3], "{what}: saved values left after DEL");
    }
}

/// The fields Debian's reference (1.1.1) lacks: `txQLen`, and attache's `ipv6` settings.
#[test]
fn transmit_queue_and_ipv6_settings() {
    require_reference_plugins();
    let keys = [
        "net.ipv6.conf.net1.accept_ra",
        "net.ipv6.conf.net1.autoconf",
        "net.ipv6.conf.net1.accept_dad",
    ];
    let fields =
        json!({"txQLen": 321, "ipv6": {"acceptRA": false, "autoconf": false, "dad": false}});
    let mut node = Node::with_nic("tunv6");
    let pod = node.pod();
    let mut call = node.call("ADD", "ctr1", &pod, "net1");
    call.bin = reference("macvlan");
    let first = node.exec(&call, &macvlan_conf(&node)).ok();
    let before = link_state(&node, &pod, &keys);
    let mut conf = tuning_conf(&node, &fields);
    conf["prevResult"] = first;
    let mut call = node.call("ADD", "ctr1", &pod, "net1");
    call.bin = crate::testbed::attache_bin();
    node.exec(&call, &conf).ok();
    let after = link_state(&node, &pod, &keys);
    assert_eq!(after["txqlen"], 321);
    for (k, v) in after["sysctls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].clone(), p[1].clone()))
    {
        assert_eq!(v, "0", "{k}");
    }
    let mut check = node.call("CHECK", "ctr1", &pod, "net1");
    check.bin = crate::testbed::attache_bin();
    node.exec(&check, &conf).ok();
    // CHECK sees a value changed behind its back.
    assert!(
        node.sh(
            Some(&pod),
            &["sysctl", "-qw", "net.ipv6.conf.net1.autoconf=1"]
        )
        .status
        .success()
    );
    let out = node.exec(&check, &conf);
    assert_ne!(out.exit, 0, "{}", out.stdout);
    assert!(out.stdout.contains("autoconf"), "{}", out.stdout);
    let mut del = node.call("DEL", "ctr1", &pod, "net1");
    del.bin = crate::testbed::attache_bin();
    node.exec(&del, &conf).ok();
    let restored = link_state(&node, &pod, &keys);
    assert_eq!(restored["txqlen"], before["txqlen"]);
    assert_eq!(
        restored["sysctls"], before["sysctls"],
        "sysctls restored by DEL"
    );
    assert!(node.files("tuning").is_empty());
}

/// Chained after attache's own macvlan in a pod's network, tuning is applied before net1 comes up;
/// DEL leaves no saved values.
#[test]
fn after_a_native_driver_tuning_is_applied_before_the_link_is_up() {
    require_reference_plugins();
    let mut node = Node::with_nic("tunearly");
    let pod = node.pod();
    let nad = json!({"cniVersion": "1.0.0", "plugins": [
        {"type": "macvlan", "master": "nic0",
         "ipam": {"type": "host-local", "subnet": "10.65.0.0/24", "dataDir": node.path("ipam")}},
        {"type": "tuning", "mtu": 1300, "dataDir": node.path("tuning"),
         "sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1", "net.ipv4.conf.all.arp_filter": "1"},
         "ipv6": {"acceptRA": false}}]});
    let dir = crate::testbed::write_nads(&node, "team-t", &[("tuned", nad)]);
    let mut conf = crate::testbed::meta_conf(&node, &dir, "tuned");
    conf["logFile"] = json!(node.path("attache.log"));
    conf["logLevel"] = json!("debug");
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-t;K8S_POD_NAME=tuned-0";
    let mut call = node.call("ADD", "early", &pod, "eth0");
    call.args = args;
    node.exec(&call, &conf).ok();
    let l = &node.ip(Some(&pod), &["link", "show", "net1"])[0];
    assert_eq!(l["mtu"], 1300);
    let s = |k: &str| crate::testbed::state::sysctl(&node, Some(&pod), k);
    assert_eq!(s("net.ipv4.conf.net1.arp_ignore"), "1");
    assert_eq!(s("net.ipv4.conf.all.arp_filter"), "1");
    assert_eq!(s("net.ipv6.conf.net1.accept_ra"), "0");
    let log = std::fs::read_to_string(node.path("attache.log")).unwrap();
    assert!(
        log.contains("tuning applied to net1 before it came up"),
        "{log}"
    );
    let mut check = node.call("CHECK", "early", &pod, "eth0");
    check.args = args;
    node.exec(&check, &conf).ok();
    let mut del = node.call("DEL", "early", &pod, "eth0");
    del.args = args;
    node.exec(&del, &conf).ok();
    assert!(
        node.files("tuning").is_empty(),
        "{:?}",
        node.files("tuning")
    );
    assert_eq!(node.links(Some(&pod)), ["lo"]);
}

/// Bad tuning input is a code 7 with nothing applied: the link as it was, no saved values.
#[test]
fn bad_tuning_input_is_refused_with_nothing_applied() {
    require_reference_plugins();
    let allow = std::env::temp_dir().join(format!("attache-allowlist-{}", std::process::id()));
    std::fs::write(
        &allow,
        "^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]+$\n^net\\.core\\.somaxconn$\n",
    )
    .unwrap();
    for (what, fields, needle, allowlist) in [
        (
            "outside net",
            json!({"sysctl": {"kernel.pid_max": "100000"}}),
            "outside net",
            false,
        ),
        (
            "a climb out",
            json!({"sysctl": {"net/../kernel/pid_max": "1"}}),
            "relative",
            false,
        ),
        (
            "dots",
            json!({"sysctl": {"net.ipv4..x": "1"}}),
            "empty",
            false,
        ),
        (
            "not allowlisted",
            json!({"sysctl": {"net.ipv4.ip_forward": "1"}}),
            "allowlist",
            true,
        ),
        ("mtu too small", json!({"mtu": 10}), "mtu", false),
        ("mtu as text", json!({"mtu": "big"}), "mtu", false),
        ("bad mac", json!({"mac": "zz:00:00:00:00:01"}), "mac", false),
        (
            "unknown ipv6 setting",
            json!({"ipv6": {"forwarding": true}}),
            "ipv6.forwarding",
            false,
        ),
        (
            "two-line value",
            json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1\n2"}}),
            "one line",
            false,
        ),
    ] {
        let mut node = Node::with_nic("tunbad");
        let pod = node.pod();
        let mut call = node.call("ADD", "ctr1", &pod, "net1");
        call.bin = reference("macvlan");
        let first = node.exec(&call, &macvlan_conf(&node)).ok();
        let keys = ["net.ipv4.ip_forward", "net.ipv4.conf.net1.arp_ignore"];
        let before = link_state(&node, &pod, &keys);
        let mut conf = tuning_conf(&node, &fields);
        conf["prevResult"] = first;
        let mut call = node.call("ADD", "ctr1", &pod, "net1");
        if allowlist {
            call.extra_env.push((
                "ATTACHE_TUNING_ALLOWLIST".into(),
                allow.display().to_string(),
            ));
        }
        let err = node.exec(&call, &conf).err(7);
        assert!(
            err["msg"].as_str().unwrap().contains(needle),
            "{what}: {err}"
        );
        assert_eq!(
            link_state(&node, &pod, &keys),
            before,
            "{what}: something changed"
        );
        assert!(node.files("tuning").is_empty(), "{what}");
    }
    // What the allowlist names goes through.
    let mut node = Node::with_nic("tunok");
    let pod = node.pod();
    let mut call = node.call("ADD", "ctr1", &pod, "net1");
    call.bin = reference("macvlan");
    let first = node.exec(&call, &macvlan_conf(&node)).ok();
    let mut conf = tuning_conf(
        &node,
        &json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1"}}),
    );
    conf["prevResult"] = first;
    let mut call = node.call("ADD", "ctr1", &pod, "net1");
    call.extra_env.push((
        "ATTACHE_TUNING_ALLOWLIST".into(),
        allow.display().to_string(),
    ));
    node.exec(&call, &conf).ok();
    assert_eq!(
        crate::testbed::state::sysctl(&node, Some(&pod), "net.ipv4.conf.net1.arp_ignore"),
        "1"
    );
    std::fs::remove_file(&allow).unwrap();
}
