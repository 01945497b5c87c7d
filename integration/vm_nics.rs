//! Node interfaces found by identity, and whole devices handed to pods, on real PCI NICs: the three
//! virtio-net-pci NICs `scripts/vm-test` gives the VM (fixed MACs, slots 0x10-0x12, one qemu hub: a
//! segment between them). Each test borrows NICs by PCI address and [`reset`] gives every NIC back to
//! the VM's root namespace under a known name (`vnic0`..`vnic2`), bound to virtio, before the next.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::testbed::state::leased;
use crate::testbed::{CniOutput, Node, REFERENCE_DIR, attache_bin, require_reference_plugins};

/// (PCI address, permanent MAC) of the VM's NICs.
const NICS: [(&str, &str); 3] = [
    ("0000:00:10.0", "52:54:00:a7:7a:01"),
    ("0000:00:11.0", "52:54:00:a7:7a:02"),
    ("0000:00:12.0", "52:54:00:a7:7a:03"),
];

fn alt(i: usize) -> String {
    format!("fabric-uplink-with-a-long-alternative-name-{i}")
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn must(args: &[&str]) {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The NIC at `pci`'s name in the VM's root namespace (sysfs shows this namespace's netdevs only).
fn root_name(pci: &str) -> Option<String> {
    let dev = Path::new("/sys/bus/pci/devices").join(pci);
    for e in std::fs::read_dir(&dev).ok()?.flatten() {
        if e.file_name().to_string_lossy().starts_with("virtio")
            && let Ok(mut net) = std::fs::read_dir(e.path().join("net"))
        {
            return net
                .next()
                .and_then(|n| n.ok())
                .map(|n| n.file_name().to_string_lossy().into_owned());
        }
    }
    None
}

fn driver_of(pci: &str) -> String {
    std::fs::read_link(format!("/sys/bus/pci/devices/{pci}/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// Bind a PCI device to `driver` (through `driver_override`, as DPDK tooling does); whether it bound.
fn bind(pci: &str, driver: &str) -> bool {
    let dev = format!("/sys/bus/pci/devices/{pci}");
    std::fs::write(format!("{dev}/driver_override"), driver).unwrap();
    if Path::new(&format!("{dev}/driver")).exists() {
        std::fs::write(format!("{dev}/driver/unbind"), pci).unwrap();
    }
    let _ = std::fs::write("/sys/bus/pci/drivers_probe", pci);
    let _ = sh(&["udevadm", "settle"]);
    driver_of(pci) == driver
}

/// Every NIC back in the root namespace (a deleted netns returns them a moment later), bound to virtio,
/// down, named `vnicI`, with its long altname. Fails loudly outside the VM.
fn reset() {
    require_reference_plugins();
    for (i, (pci, _)) in NICS.iter().enumerate() {
        assert!(
            Path::new("/sys/bus/pci/devices").join(pci).exists(),
            "no PCI NIC {pci}: these tests run in the VM of scripts/vm-test"
        );
        if driver_of(pci) != "virtio-pci" {
            assert!(
                bind(pci, "virtio-pci"),
                "{pci} does not bind back to virtio-pci"
            );
            std::fs::write(format!("/sys/bus/pci/devices/{pci}/driver_override"), "\n").unwrap();
        }
        let want = format!("vnic{i}");
        // udev may rename a device that just appeared: take the name it settles on.
        let mut named = false;
        for _ in 0..3 {
            let _ = sh(&["udevadm", "settle"]);
            let name = returned(pci);
            let down = sh(&["ip", "link", "set", &name, "down"]).status.success();
            if down
                && (name == want
                    || sh(&["ip", "link", "set", &name, "name", &want])
                        .status
                        .success())
            {
                named = true;
                break;
            }
        }
        assert!(named, "NIC {pci} could not be named {want}");
        let alt = alt(i);
        let _ = sh(&[
            "ip", "link", "property", "add", "dev", &want, "altname", &alt,
        ]);
    }
}

/// Move NIC `i` into `node`'s namespace as `name`, up.
fn give(node: &Node, i: usize, name: &str) {
    let cur = format!("vnic{i}");
    must(&["ip", "link", "set", &cur, "netns", &node.name]);
    if name != cur {
        assert!(node.ip_do(&["link", "set", &cur, "name", name]));
    }
    assert!(node.ip_do(&["link", "set", name, "up"]));
}

fn macvlan(node: &Node, field: Value) -> Value {
    let mut c = json!({"cniVersion": "1.0.0", "name": "fab", "type": "macvlan",
        "ipam": {"type": "host-local", "subnet": "10.81.0.0/24", "dataDir": node.path("ipam")}});
    for (k, v) in field.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// The node link a pod's macvlan or vlan hangs off.
fn lower_of(node: &Node, pod: &str, ifname: &str) -> String {
    let l = &node.ip(Some(pod), &["-d", "link", "show", ifname])[0];
    let idx = l["link_index"].as_u64().expect("a lower link");
    node.ip(None, &["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["ifindex"].as_u64() == Some(idx))
        .map(|x| x["ifname"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
#[ignore = "needs the VM's virtio-net-pci NICs: run by scripts/vm-test"]
fn every_selector_form_finds_its_nic_and_zero_or_two_matches_are_refused() {
    reset();
    let mut node = Node::new("vmsel");
    for (i, n) in ["ens1f0", "ens1f1", "ens2f0"].into_iter().enumerate() {
        give(&node, i, n);
    }
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"masterSelector": {"pciAddress": "0000:00:11.0"}}),
            "ens1f1",
        ),
        (
            json!({"masterSelector": {"pciAddress": "00:12.0", "devPort": 0}}),
            "ens2f0",
        ),
        (
            json!({"masterSelector": {"mac": "52:54:00:a7:7a:01"}}),
            "ens1f0",
        ),
        (
            json!({"masterSelector": {"driver": "virtio_net", "index": 2}}),
            "ens2f0",
        ),
        (json!({"masterSelector": {"altName": alt(1)}}), "ens1f1"),
        (json!({"master": alt(0)}), "ens1f0"),
    ];
    for (field, want) in cases {
        let pod = node.pod();
        let c = macvlan(&node, field.clone());
        node.exec(&node.call("ADD", "s", &pod, "eth0"), &c).ok();
        assert_eq!(lower_of(&node, &pod, "eth0"), want, "{field}");
        node.exec(&node.call("DEL", "s", &pod, "eth0"), &c).ok();
    }
    // A MAC the NIC borrows to a macvlan is not its permanent one: a macvlan on ens1f0 with ens1f1's MAC
    // does not make ens1f0 match it.
    assert!(node.ip_do(&[
        "link",
        "add",
        "link",
        "ens1f0",
        "name",
        "borrow",
        "address",
        "52:54:00:a7:7a:02",
        "type",
        "macvlan"
    ]));
    let pod = node.pod();
    let c = macvlan(
        &node,
        json!({"masterSelector": {"mac": "52:54:00:a7:7a:02"}}),
    );
    node.exec(&node.call("ADD", "b", &pod, "eth0"), &c).ok();
    assert_eq!(lower_of(&node, &pod, "eth0"), "ens1f1");
    node.exec(&node.call("DEL", "b", &pod, "eth0"), &c).ok();
    // None, and more than one.
    for (field, needles) in [
        (
            json!({"masterSelector": {"pciAddress": "0000:00:1e.0"}}),
            vec![
                "pciAddress 0000:00:1e.0 matches no interface",
                "ens1f0 (0000:00:10.0, 52:54:00:a7:7a:01, virtio_net",
                "ens2f0 (0000:00:12.0",
            ],
        ),
        (
            json!({"masterSelector": {"driver": "virtio_net"}}),
            vec!["matches 3 interfaces (ens1f0, ens1f1, ens2f0)", "add index"],
        ),
        (
            json!({"masterSelector": {"driver": "virtio_net", "index": 3}}),
            vec!["no index 3"],
        ),
        (
            json!({"masterSelector": {"mac": "52:54:00:a7:7a:09"}}),
            vec!["matches no interface"],
        ),
    ] {
        let pod = node.pod();
        let e = node
            .exec(
                &node.call("ADD", "z", &pod, "eth0"),
                &macvlan(&node, field.clone()),
            )
            .err(7);
        for n in needles {
            assert!(e["msg"].as_str().unwrap().contains(n), "{field}: {n}: {e}");
        }
        assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
        assert!(leased(&node).is_empty());
    }
}

fn meta_call<'a>(node: &Node, cmd: &'a str, id: &'a str, pod: &str) -> crate::testbed::Call<'a> {
    let mut c = node.call(cmd, id, pod, "eth0");
    c.args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p";
    c
}

/// The done-means of physical networks: one definition, `physicalNetwork: "data"`, on two nodes whose
/// NIC has a different name and PCI slot; a macvlan and a vlan on it. The two pods reach each other
/// over the NICs' segment.
#[test]
#[ignore = "needs the VM's virtio-net-pci NICs: run by scripts/vm-test"]
fn one_definition_attaches_pods_on_two_nodes_whose_nic_differs_in_name_and_slot() {
    reset();
    let nodes = [
        ("vmpa", 0, "ens1f0", "10.82.0.11/24"),
        ("vmpb", 1, "ens2f1", "10.82.0.12/24"),
    ];
    let mut made = Vec::new();
    for (tag, i, nic, addr) in nodes {
        let mut node = Node::new(tag);
        give(&node, i, nic);
        let map = node.path("physnets.json");
        std::fs::write(&map, json!({"data": {"pciAddress": NICS[i].0}}).to_string()).unwrap();
        let nets = crate::testbed::write_nads(
            &node,
            "default",
            &[
                (
                    "data",
                    json!({"cniVersion": "1.0.0", "type": "macvlan", "physicalNetwork": "data",
                           "ipam": {"type": "static", "addresses": [{"address": addr}]}}),
                ),
                (
                    "data-vlan",
                    json!({"cniVersion": "1.0.0", "type": "vlan", "vlanId": 40,
                           "masterSelector": {"physicalNetwork": "data"},
                           "ipam": {"type": "host-local", "subnet": "10.83.0.0/24", "dataDir": node.path("ipam")}}),
                ),
            ],
        );
        let mut c = crate::testbed::meta_conf(&node, &nets, "data,data-vlan");
        c["physnetsFile"] = json!(map);
        c["logLevel"] = json!("debug");
        c["logFile"] = json!(node.path("attache.log"));
        let pod = node.pod();
        let r = node.exec(&meta_call(&node, "ADD", "p1", &pod), &c).ok();
        assert_eq!(lower_of(&node, &pod, "net1"), nic, "{tag}");
        assert_eq!(lower_of(&node, &pod, "net2"), nic, "{tag}");
        let d = node.ip(Some(&pod), &["-d", "link", "show", "net2"]);
        assert_eq!(d[0]["linkinfo"]["info_data"]["id"], 40);
        let log = std::fs::read_to_string(node.path("attache.log")).unwrap();
        assert!(
            log.contains(&format!("physicalNetwork data -> {nic} ({})", NICS[i].0)),
            "{log}"
        );
        made.push((node, pod, c, r));
    }
    // Pod on node A reaches pod on node B through their NICs (the qemu hub is their segment).
    let (a, b) = (&made[0], &made[1]);
    assert!(
        a.0.pings(&a.1, "10.82.0.12"),
        "no traffic between the nodes' pods"
    );
    assert!(b.0.pings(&b.1, "10.82.0.11"));
    for (node, pod, c, r) in &made {
        let mut chk = c.clone();
        chk["prevResult"] = r.clone();
        node.exec(&meta_call(node, "CHECK", "p1", pod), &chk).ok();
        node.exec(&meta_call(node, "DEL", "p1", pod), c).ok();
        assert_eq!(node.links(Some(pod)), vec!["lo".to_string()]);
    }
    // The borrowed NICs are still there on their nodes: nothing deleted a physical device.
    assert!(made[0].0.links(None).contains(&"ens1f0".to_string()));
    assert!(made[1].0.links(None).contains(&"ens2f1".to_string()));
}

/// Run attache (or `bin`) in the VM's root namespace, the node where a device from a dead pod netns
/// returns.
fn root_exec(cmd: &str, id: &str, netns: &str, ifname: &str, conf: &Value) -> CniOutput {
    root_exec_bin(&attache_bin(), cmd, id, netns, ifname, conf)
}

fn root_exec_bin(
    bin: &Path,
    cmd: &str,
    id: &str,
    netns: &str,
    ifname: &str,
    conf: &Value,
) -> CniOutput {
    root_exec_full(bin, cmd, id, netns, ifname, "", conf)
}

fn root_exec_args(
    cmd: &str,
    id: &str,
    netns: &str,
    ifname: &str,
    args: &str,
    conf: &Value,
) -> CniOutput {
    root_exec_full(&attache_bin(), cmd, id, netns, ifname, args, conf)
}

fn root_exec_full(
    bin: &Path,
    cmd: &str,
    id: &str,
    netns: &str,
    ifname: &str,
    args: &str,
    conf: &Value,
) -> CniOutput {
    use std::io::Write;
    let mut child = Command::new(bin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", REFERENCE_DIR)
        .env("CNI_ARGS", args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes());
    let out = child.wait_with_output().unwrap();
    CniOutput {
        exit: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn root_links() -> Vec<String> {
    let out = sh(&["ip", "-j", "link", "show"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

fn host_device(node: &Node, field: Value) -> Value {
    let mut c = json!({"cniVersion": "1.0.0", "name": "passthru", "type": "host-device",
        "dataDir": node.path("hd"),
        "ipam": {"type": "host-local", "subnet": "10.84.0.0/24", "dataDir": node.path("ipam")}});
    for (k, v) in field.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// Wait until NIC `pci` is back in the root namespace; its name there.
fn returned(pci: &str) -> String {
    (0..200)
        .find_map(|_| {
            root_name(pci).or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(100));
                None
            })
        })
        .unwrap_or_else(|| panic!("{pci} did not come back to the node"))
}

#[test]
#[ignore = "needs the VM's virtio-net-pci NICs: run by scripts/vm-test"]
fn a_handed_nic_goes_back_under_its_name_with_the_netns_alive_or_dead() {
    reset();
    // The node is the VM's root namespace (where a dead netns returns its devices); `node` is only
    // the tests' folder and pods.
    let mut node = Node::new("vmhd");
    let (pci, mac) = NICS[2];
    let c = host_device(&node, json!({"pciBusID": pci}));

    // Alive: ADD, CHECK, DEL.
    let pod = node.pod();
    let r = root_exec("ADD", "h1", &pod, "net1", &c).ok();
    assert_eq!(r["interfaces"][0]["name"], "net1");
    assert_eq!(r["interfaces"][0]["mac"], mac);
    assert!(!root_links().contains(&"vnic2".to_string()));
    let l = &node.ip(Some(&pod), &["-d", "link", "show", "net1"])[0];
    assert_eq!(l["permaddr"].as_str().or(l["address"].as_str()), Some(mac));
    assert!(
        node.addrs(Some(&pod), "net1")
            .iter()
            .any(|a| a.starts_with("10.84.0."))
    );
    let mut chk = c.clone();
    chk["prevResult"] = r;
    root_exec("CHECK", "h1", &pod, "net1", &chk).ok();
    root_exec("DEL", "h1", &pod, "net1", &c).ok();
    assert_eq!(root_name(pci).as_deref(), Some("vnic2"));
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    assert!(leased(&node).is_empty());
    root_exec("DEL", "h1", &pod, "net1", &c).ok();
    assert_eq!(root_name(pci).as_deref(), Some("vnic2"));

    // Dead: the pod's netns goes first; the kernel returns the NIC as `net1`.
    let pod = node.pod();
    root_exec("ADD", "h2", &pod, "net1", &c).ok();
    node.delete_pod(&pod);
    assert_eq!(
        returned(pci),
        "net1",
        "the kernel returns it under its pod-side name"
    );
    root_exec("DEL", "h2", &pod, "net1", &c).ok();
    assert_eq!(root_name(pci).as_deref(), Some("vnic2"));
    assert!(leased(&node).is_empty());
    assert!(node.files("hd").is_empty(), "{:?}", node.files("hd"));
    root_exec("DEL", "h2", &pod, "net1", &c).ok();
    assert_eq!(root_name(pci).as_deref(), Some("vnic2"));

    // Dead again, and another pod asks for the NIC (by its name) before the first one's DEL: it gets it
    // under its own name, and the late DEL does not take it away.
    let by_name = host_device(&node, json!({"device": "vnic2"}));
    let pod = node.pod();
    root_exec("ADD", "h3", &pod, "net1", &by_name).ok();
    node.delete_pod(&pod);
    assert_eq!(returned(pci), "net1");
    let pod4 = node.pod();
    root_exec("ADD", "h4", &pod4, "net5", &by_name).ok();
    assert!(node.links(Some(&pod4)).contains(&"net5".to_string()));
    root_exec("DEL", "h3", &pod, "net1", &by_name).ok();
    assert!(
        node.links(Some(&pod4)).contains(&"net5".to_string()),
        "the late DEL took the NIC"
    );
    root_exec("DEL", "h4", &pod4, "net5", &by_name).ok();
    assert_eq!(root_name(pci).as_deref(), Some("vnic2"));
    assert!(leased(&node).is_empty());

    // The reference host-device loses the NIC when the pod renames it (plugins #773); attache does not.
    let pod = node.pod();
    let sel = host_device(&node, json!({"deviceSelector": {"mac": mac}}));
    root_exec("ADD", "h5", &pod, "net1", &sel).ok();
    assert!(
        node.sh(Some(&pod), &["ip", "link", "set", "net1", "down"])
            .status
            .success()
    );
    assert!(
        node.sh(
            Some(&pod),
            &["ip", "link", "set", "net1", "name", "renamed"]
        )
        .status
        .success()
    );
    node.delete_pod(&pod);
    assert_eq!(returned(pci), "renamed");
    root_exec("DEL", "h5", &pod, "net1", &sel).ok();
    assert_eq!(root_name(pci).as_deref(), Some("vnic2"));

    // An MTU the configuration set is put back; a node name taken meanwhile does not make DEL fail
    // (the device keeps the name it came back under, and the log says so).
    let mtu = |n: &str| -> u64 {
        let out = sh(&["ip", "-j", "link", "show", n]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["mtu"].as_u64().unwrap()
    };
    let before = mtu("vnic2");
    let pod = node.pod();
    let small = host_device(&node, json!({"pciBusID": pci, "mtu": 1280}));
    root_exec("ADD", "h6", &pod, "net1", &small).ok();
    assert_eq!(
        node.ip(Some(&pod), &["link", "show", "net1"])[0]["mtu"],
        1280
    );
    root_exec("DEL", "h6", &pod, "net1", &small).ok();
    assert_eq!(mtu("vnic2"), before, "the MTU is not put back");
    let pod = node.pod();
    root_exec("ADD", "h7", &pod, "net1", &c).ok();
    node.delete_pod(&pod);
    assert_eq!(returned(pci), "net1");
    must(&["ip", "link", "add", "vnic2", "type", "dummy"]);
    root_exec("DEL", "h7", &pod, "net1", &c).ok();
    assert_eq!(root_name(pci).as_deref(), Some("net1"));
    assert!(node.files("hd").is_empty(), "{:?}", node.files("hd"));
    must(&["ip", "link", "del", "vnic2"]);
    assert!(leased(&node).is_empty());
}

#[test]
#[ignore = "needs the VM's virtio-net-pci NICs: run by scripts/vm-test"]
fn host_device_by_pci_address_matches_the_reference() {
    reset();
    let (pci, _) = NICS[1];
    let mut results = Vec::new();
    for bin in [Path::new(REFERENCE_DIR).join("host-device"), attache_bin()] {
        let mut node = Node::new("vmhdref");
        let c = host_device(&node, json!({"pciBusID": pci}));
        let pod = node.pod();
        let r = root_exec_bin(&bin, "ADD", "r1", &pod, "net1", &c).ok();
        // Global addresses (a link-local one's DAD state is a matter of timing).
        let state: Vec<Value> = node.ip(Some(&pod), &["addr", "show", "net1"])[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["scope"] != "link")
            .cloned()
            .collect();
        root_exec_bin(&bin, "DEL", "r1", &pod, "net1", &c).ok();
        let back = root_name(pci);
        results.push((crate::testbed::state::normalise_result(r), state, back));
        reset();
    }
    assert_eq!(results[1].0, results[0].0, "result JSON differs");
    assert_eq!(results[1].1, results[0].1, "addresses differ");
    assert_eq!(results[1].2, results[0].2, "name after DEL differs");
}

#[test]
#[ignore = "needs the VM's virtio-net-pci NICs: run by scripts/vm-test"]
fn a_nic_bound_to_a_userspace_driver_is_handed_over_in_dpdk_mode() {
    reset();
    let (pci, _) = NICS[2];
    // vfio-pci without an IOMMU (the VM has none) in its unsafe no-IOMMU mode; else uio_pci_generic.
    let _ = sh(&["modprobe", "vfio", "enable_unsafe_noiommu_mode=1"]);
    let _ = sh(&["modprobe", "vfio-pci"]);
    let _ = std::fs::write(
        "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode",
        "Y",
    );
    let driver = if bind(pci, "vfio-pci") {
        "vfio-pci"
    } else {
        let _ = sh(&["modprobe", "uio_pci_generic"]);
        assert!(
            bind(pci, "uio_pci_generic"),
            "{pci} binds to neither vfio-pci nor uio_pci_generic"
        );
        "uio_pci_generic"
    };
    assert_eq!(root_name(pci), None, "a {driver} device has no netdev");
    let mut node = Node::new("vmdpdk");
    let pod = node.pod();
    // As a device plugin gives it: the runtime's deviceID.
    let c = host_device(
        &node,
        json!({"capabilities": {"deviceID": true}, "runtimeConfig": {"deviceID": pci}}),
    );
    // `pciID` is a result field of CNI 1.1.0.
    let mut c = c;
    c["cniVersion"] = json!("1.1.0");
    let r = root_exec("ADD", "d1", &pod, "net1", &c).ok();
    assert_eq!(r["interfaces"][0]["pciID"], pci, "{r}");
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    let mut chk = c.clone();
    chk["prevResult"] = r;
    root_exec("CHECK", "d1", &pod, "net1", &chk).ok();
    root_exec("DEL", "d1", &pod, "net1", &c).ok();
    assert_eq!(
        driver_of(pci),
        driver,
        "DEL leaves a DPDK device bound as it was"
    );
    assert_eq!(root_name(pci), None);
    assert!(leased(&node).is_empty());
    node.delete_pod(&pod);
    reset();
    assert_eq!(driver_of(pci), "virtio-pci");
}

/// The PF of the igb NIC `scripts/vm-test`'s second boot gives the VM, with `n` VFs made, and the VFs'
/// PCI addresses.
fn sriov_pf(n: usize) -> (String, Vec<String>) {
    let pf = std::fs::read_dir("/sys/bus/pci/devices")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("sriov_totalvfs").exists() && driver_of(&p.file_name().unwrap().to_string_lossy()) == "igb")
        .unwrap_or_else(|| {
            panic!("no SR-IOV NIC (igb): this test runs in scripts/vm-test's second boot (bookworm-backports' qemu)")
        });
    let numvfs = pf.join("sriov_numvfs");
    std::fs::write(&numvfs, "0").unwrap();
    std::fs::write(&numvfs, n.to_string()).unwrap();
    let vfs: Vec<String> = (0..n)
        .map(|i| {
            let l = std::fs::read_link(pf.join(format!("virtfn{i}"))).unwrap();
            l.file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    for vf in &vfs {
        assert!(
            crate::poll::eventually(20, || root_vf_name(vf).is_some()),
            "VF {vf} has no netdev (igbvf)"
        );
    }
    // udev names them (enp1s0v0, ...) a moment after they appear.
    let _ = sh(&["udevadm", "settle"]);
    (pf.file_name().unwrap().to_string_lossy().into_owned(), vfs)
}

/// A VF's netdev in the root namespace.
fn root_vf_name(vf: &str) -> Option<String> {
    std::fs::read_dir(format!("/sys/bus/pci/devices/{vf}/net"))
        .ok()?
        .flatten()
        .next()
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// A VF handed to a pod as a device plugin would: the kubelet's checkpoint names the VF the pod was
/// given for the definition's `resourceName`, and the meta-plugin passes it to host-device as `deviceID`.
#[test]
#[ignore = "needs an SR-IOV NIC: run by scripts/vm-test (its second boot)"]
fn sriov_a_vf_is_handed_to_a_pod_by_the_device_plugins_device_id() {
    require_reference_plugins();
    let (_pf, vfs) = sriov_pf(2);
    let vf = vfs[1].clone();
    let name = root_vf_name(&vf).unwrap();
    let mut node = Node::new("vmvf");
    const UID: &str = "5b6f5a2e-3c1d-4e8b-9f0a-7d2c1e4b8a91";
    std::fs::write(
        node.path("kubelet_internal_checkpoint"),
        json!({"Data": {"PodDeviceEntries": [{"PodUID": UID, "ContainerName": "app",
            "ResourceName": "example.com/igb-vf", "DeviceIDs": {"0": [vf]}, "AllocResp": ""}],
            "RegisteredDevices": {"example.com/igb-vf": vfs}}, "Checksum": 1})
        .to_string(),
    )
    .unwrap();
    let nets = node.path("networks");
    std::fs::create_dir_all(&nets).unwrap();
    let config = json!({"cniVersion": "1.0.0", "type": "host-device", "dataDir": node.path("hd"),
        "ipam": {"type": "host-local", "subnet": "10.85.0.0/24", "dataDir": node.path("ipam")}});
    std::fs::write(
        nets.join("vf.yaml"),
        format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: vf\n  namespace: default\n  annotations:\n    k8s.v1.cni.cncf.io/resourceName: example.com/igb-vf\nspec:\n  config: '{config}'\n"
        ),
    )
    .unwrap();
    let mut c = crate::testbed::meta_conf(&node, &nets, "vf");
    c["deviceCheckpoint"] = json!(node.path("kubelet_internal_checkpoint"));
    c["logFile"] = json!(node.path("attache.log"));
    c["logLevel"] = json!("debug");
    c["deviceInfoDir"] = json!(node.path("devinfo"));
    let args =
        format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p;K8S_POD_UID={UID}");
    let run = |cmd: &str, pod: &str, conf: &Value| -> CniOutput {
        let mut conf = conf.clone();
        conf["runtimeConfig"]["io.kubernetes.cri.pod-annotations"]["k8s.v1.cni.cncf.io/networks"] =
            json!("vf");
        root_exec_args(cmd, "v1", pod, "eth0", &args, &conf)
    };
    // Alive: the VF is the pod's net1; CHECK; DEL gives it back under its name.
    let pod = node.pod();
    let r = run("ADD", &pod, &c).ok();
    let l = &node.ip(Some(&pod), &["-d", "link", "show", "net1"])[0];
    assert_eq!(l["parentdev"], json!(vf), "{l}");
    assert_eq!(root_vf_name(&vf), None);
    let mut chk = c.clone();
    chk["prevResult"] = r;
    run("CHECK", &pod, &chk).ok();
    run("DEL", &pod, &c).ok();
    assert_eq!(root_vf_name(&vf).as_deref(), Some(name.as_str()));
    // Dead: the netns goes first, the VF comes back as net1, DEL names it back.
    let pod = node.pod();
    run("ADD", &pod, &c).ok();
    node.delete_pod(&pod);
    assert!(
        crate::poll::eventually(20, || root_vf_name(&vf).as_deref() == Some("net1")),
        "the VF did not come back from the dead netns as net1"
    );
    run("DEL", &pod, &c).ok();
    assert_eq!(
        root_vf_name(&vf).as_deref(),
        Some(name.as_str()),
        "{}\n{}",
        std::fs::read_to_string(node.path("attache.log")).unwrap_or_default(),
        String::from_utf8_lossy(&sh(&["ip", "-d", "link", "show", "net1"]).stdout)
    );
    assert!(leased(&node).is_empty());
    assert!(node.files("hd").is_empty(), "{:?}", node.files("hd"));
    let _ = sriov_pf(0);
}
