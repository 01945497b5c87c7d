//! `attache inspect` on a node where pods came and went untidily: two pods attached through the
//! meta-plugin (the delegated ptp cluster network and a native bridge), an address leaked in the bridge's
//! pool, an allocation in the cluster network's pool that attache never recorded (a pod from before
//! attache), and a pod whose netns vanished without a DEL. The built binary is run as an operator would.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::testbed::{Node, first_ip, require_reference_plugins};
use serde_json::{Value, json};

const NS: &str = "team-a";
const POD0: &str = "a0a0a0a0a0a0inspect000000000000000";
const POD1: &str = "b1b1b1b1b1b1inspect000000000000000";
const LEAK: &str = "deadbeefcafe0000000000000000000000";
const BEFORE: &str = "pre0attache00000000000000000000000";

/// `attache inspect ARGS` with `stdin`; (exit code, stdout, stderr).
fn inspect(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(crate::testbed::attache_bin())
        .arg("inspect")
        .args(args)
        .env_remove("CNI_COMMAND")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run attache inspect");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The table row of one attachment (pod and interface), as its cells.
fn row<'a>(table: &'a str, pod: &str, ifname: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.len() >= 10 && c[0] == pod && c[2] == ifname)
        .unwrap_or_else(|| panic!("no row for {pod} {ifname} in\n{table}"))
}

fn mac(node: &Node, pod: &str, ifname: &str) -> String {
    node.ip(Some(pod), &["link", "show", ifname])[0]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

fn leases(node: &Node) -> Vec<String> {
    node.files("ipam")
        .into_iter()
        .filter(|f| !f.ends_with("/lock") && !f.contains("last_reserved_ip"))
        .collect()
}

#[test]
fn inspect_reports_pools_leaks_and_stale_records_and_gc_releases_only_leaks() {
    require_reference_plugins();
    let mut node = Node::new("inspect");
    let ipam = node.path("ipam");
    let dir = crate::testbed::write_nads(
        &node,
        NS,
        &[(
            "blue",
            json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": "br-blue",
                   "ipam": {"type": "host-local", "subnet": "10.21.0.0/24", "dataDir": ipam}}),
        )],
    );
    let conf = crate::testbed::meta_conf(&node, &dir, "blue");
    let pods = [node.pod(), node.pod()];
    let mut cluster_ips = Vec::new();
    for (i, (pod, id)) in pods.iter().zip([POD0, POD1]).enumerate() {
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME=web-{i}");
        let mut call = node.call("ADD", id, pod, "eth0");
        call.args = &args;
        cluster_ips.push(first_ip(&node.exec(&call, &conf).ok()));
    }
    let blue_ips: Vec<String> = pods
        .iter()
        .map(|p| node.addrs(Some(p), "net1")[0].clone())
        .collect();
    let macs = [mac(&node, &pods[0], "eth0"), mac(&node, &pods[0], "net1")];
    // What goes wrong on a node: an address leaked in attache's own pool, one in the cluster network's
    // that attache never recorded, and a pod whose netns went away without a DEL.
    std::fs::write(ipam.join("blue/10.21.0.200"), format!("{LEAK}\r\nnet1")).unwrap();
    std::fs::write(
        ipam.join("cluster/10.77.0.200"),
        format!("{BEFORE}\r\neth0"),
    )
    .unwrap();
    node.delete_pod(&pods[1]);
    let before = leases(&node);
    let cache = node.path("cache").display().to_string();

    // The table.
    let (code, out, err) = inspect(&["--cache-dir", &cache], "");
    assert_eq!(code, 0, "{err}");
    println!("{out}");
    let r = row(&out, "team-a/web-0", "eth0");
    assert_eq!(r[1], &POD0[..12]);
    assert_eq!(&r[3..6], ["cluster", "ptp", "exec"]);
    assert_eq!(r[6], format!("{}/24", cluster_ips[0]));
    assert_eq!(r[7], macs[0]);
    assert!(r[8].ends_with('s'), "age {}", r[8]);
    assert_eq!(r[9], "ok");
    let r = row(&out, "team-a/web-0", "net1");
    assert_eq!(&r[3..7], ["team-a/blue", "bridge", "native", &blue_ips[0]]);
    assert_eq!(r[7], macs[1]);
    assert_eq!(r[9], "ok");
    let r = row(&out, "team-a/web-1", "net1");
    assert_eq!((r[6], r[9]), (blue_ips[1].as_str(), "netns-gone"));
    assert_eq!(row(&out, "team-a/web-1", "eth0")[9], "netns-gone");
    // Pools: blue is attache's alone (2 pods + the leak of 253 addresses), the cluster network is shared.
    let pool = |name: &str| -> Vec<&str> {
        out.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|c| c.len() == 8 && c[0] == name)
            .unwrap_or_else(|| panic!("no pool {name} in\n{out}"))
    };
    assert_eq!(
        &pool("blue")[1..7],
        ["attache", "10.21.0.0/24", "3", "250", "1", "0"]
    );
    assert_eq!(
        &pool("cluster")[1..7],
        ["shared", "10.77.0.0/24", "3", "250", "0", "1"]
    );
    assert!(
        out.contains("cluster: shared (cluster network \"cluster\")"),
        "{out}"
    );
    let alloc = |ip: &str| -> String {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(ip))
            .unwrap_or_else(|| panic!("no allocation {ip} in\n{out}"))
            .to_string()
    };
    assert!(alloc("10.21.0.200").ends_with("LEAKED"), "{out}");
    assert!(alloc("10.21.0.200").contains(&LEAK[..12]));
    assert!(
        alloc("10.77.0.200").ends_with("not recorded by attache"),
        "{out}"
    );
    let ip0 = blue_ips[0].split('/').next().unwrap();
    assert!(
        alloc(ip0).contains("team-a/web-0") && alloc(ip0).ends_with(" ok"),
        "{out}"
    );
    let ip1 = blue_ips[1].split('/').next().unwrap();
    assert!(alloc(ip1).ends_with("netns-gone"), "{out}");
    let stale = out
        .split("RECORDS WHOSE NETNS IS GONE")
        .nth(1)
        .expect("stale section");
    assert!(
        stale.contains(&pods[1]) && stale.contains(&POD1[..12]),
        "{out}"
    );
    assert!(!stale.contains(&POD0[..12]), "{out}");
    assert!(
        out.contains("1 leaked address (attache inspect --gc releases it)"),
        "{out}"
    );

    // JSON agrees, with full container IDs.
    let (code, out, err) = inspect(&["--cache-dir", &cache, "--json"], "");
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("one JSON document");
    let atts = v["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 4);
    let a = atts
        .iter()
        .find(|a| a["container_id"] == POD0 && a["ifname"] == "net1")
        .unwrap();
    assert_eq!(a["pod"], "team-a/web-0");
    assert_eq!(a["types"], json!(["bridge"]));
    assert_eq!(a["run"], "native");
    assert_eq!(a["ips"], json!([blue_ips[0]]));
    assert_eq!(a["mac"], macs[1]);
    assert_eq!(a["state"], "ok");
    let stale: Vec<&Value> = v["stale_records"].as_array().unwrap().iter().collect();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0]["container_id"], POD1);
    assert_eq!(stale[0]["netns"], pods[1].as_str());
    let pools = v["pools"].as_array().unwrap();
    let blue = pools.iter().find(|p| p["network"] == "blue").unwrap();
    assert_eq!(blue["owner"], "attache");
    assert_eq!(
        (
            blue["used"].as_u64(),
            blue["free"].as_u64(),
            blue["size"].as_u64()
        ),
        (Some(3), Some(250), Some(253))
    );
    assert_eq!(Path::new(blue["data_dir"].as_str().unwrap()), ipam);
    let leaked: Vec<&Value> = blue["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["status"] == "leaked")
        .collect();
    assert_eq!(leaked.len(), 1);
    assert_eq!(
        (&leaked[0]["ip"], &leaked[0]["container_id"]),
        (&json!("10.21.0.200"), &json!(LEAK))
    );
    let cluster = pools.iter().find(|p| p["network"] == "cluster").unwrap();
    assert_eq!(cluster["owner"], "shared");
    let unrecorded = cluster["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["ip"] == "10.77.0.200")
        .unwrap();
    assert_eq!(
        (&unrecorded["status"], &unrecorded["container_id"]),
        (&json!("not-recorded"), &json!(BEFORE))
    );

    // --gc, not confirmed: the question on stderr, nothing released.
    let (code, out, err) = inspect(&["--cache-dir", &cache, "--gc"], "n\n");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("release 1 leaked address? [y/N]"), "{err}");
    assert!(
        out.contains("will release:\n  10.21.0.200 in blue"),
        "{out}"
    );
    assert!(out.contains("not confirmed: nothing released"), "{out}");
    assert_eq!(leases(&node), before);

    // --gc --yes: exactly the leak goes; live allocations, the stale pod's and the cluster network's
    // unrecorded one stay, and so does every record.
    let (code, out, err) = inspect(&["--cache-dir", &cache, "--gc", "--yes"], "");
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("[y/N]"), "{err}");
    assert!(
        out.contains(&format!(
            "released 10.21.0.200 in blue (container {} net1)",
            &LEAK[..12]
        )),
        "{out}"
    );
    assert!(
        out.contains("1 record whose netns is gone left alone"),
        "{out}"
    );
    let want: Vec<String> = before
        .iter()
        .filter(|f| *f != "blue/10.21.0.200")
        .cloned()
        .collect();
    assert_eq!(leases(&node), want);
    assert!(node.path("cache").join(POD1).join("eth0.json").exists());
    let (_, out, _) = inspect(&["--cache-dir", &cache], "");
    assert!(out.contains("0 leaked addresses"), "{out}");

    // The runtime's DEL tidies the rest, the vanished pod's too.
    for (pod, id) in pods.iter().zip([POD0, POD1]) {
        let call = node.call("DEL", id, pod, "eth0");
        node.exec(&call, &conf).ok();
    }
    assert_eq!(leases(&node), ["cluster/10.77.0.200"]);
    let (_, out, _) = inspect(&["--cache-dir", &cache], "");
    assert!(out.contains("no attachments"), "{out}");
}
