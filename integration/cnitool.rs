//! cnitool, the CNI project's own client (libcni 1.1.2, built from Debian's source package by
//! `scripts/cnitool`), drives attache: add, check, a CHECK that catches a tampered interface, del, and
//! del again; in meta mode the pod's annotations travel in `CAP_ARGS`. libcni's result cache is kept
//! private (cnitool runs in its own mount namespace with a private `/var/lib`).

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::runtime::leftovers;
use crate::testbed::{Node, REFERENCE_DIR, attache_bin, require_reference_plugins};
use serde_json::{Value, json};

/// Where `scripts/cnitool` leaves the binary (`ATTACHE_CNITOOL` overrides).
fn cnitool() -> PathBuf {
    let p = std::env::var_os("ATTACHE_CNITOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/attache-test/cnitool"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/cnitool (scripts/test does)",
        p.display()
    );
    p
}

struct Tool<'a> {
    node: &'a Node,
    netconf: PathBuf,
    bin: PathBuf,
    var_lib: PathBuf,
}

impl<'a> Tool<'a> {
    /// cnitool with `networks` in its NETCONFPATH and a plugin dir holding attache (also as `bridge`)
    /// and the reference ptp and host-local.
    fn new(node: &'a Node, networks: &[Value]) -> Tool<'a> {
        let netconf = node.path("netconf");
        let bin = node.path("bin");
        let var_lib = node.path("var-lib");
        for d in [&netconf, &bin, &var_lib] {
            std::fs::create_dir_all(d).unwrap();
        }
        for n in networks {
            let name = n["name"].as_str().unwrap();
            std::fs::write(netconf.join(format!("{name}.conflist")), n.to_string()).unwrap();
        }
        for (name, from) in [
            ("attache", attache_bin()),
            ("bridge", attache_bin()),
            ("ptp", Path::new(REFERENCE_DIR).join("ptp")),
            ("host-local", Path::new(REFERENCE_DIR).join("host-local")),
        ] {
            std::fs::copy(from, bin.join(name)).unwrap();
        }
        Tool {
            node,
            netconf,
            bin,
            var_lib,
        }
    }

    /// `cnitool VERB NET POD` in the node netns with `env` (CNI_ARGS, CAP_ARGS ...).
    fn run(&self, verb: &str, net: &str, pod: &str, env: &[(&str, &str)]) -> Output {
        let script = format!(
            "mount --bind {} /var/lib && exec {} {verb} {net} {pod}",
            self.var_lib.display(),
            cnitool().display()
        );
        let mut cmd =
            crate::runtime::in_private_mounts(&format!("/run/netns/{}", self.node.name), &script);
        cmd.env("NETCONFPATH", &self.netconf)
            .env("CNI_PATH", &self.bin);
        for (k, v) in env {
            cmd.env(k, v);
        }
        crate::runtime::run(&mut cmd)
    }
}

fn ok(what: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cnitool {what} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn failed(what: &str, out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "cnitool {what} should fail: {text}");
    text
}

/// add, check, tamper, check (fails naming what changed), del, del again, nothing left.
fn add_check_tamper_del(
    node: &Node,
    tool: &Tool,
    net: &str,
    pod: &str,
    env: &[(&str, &str)],
    tamper: &[&str],
    says: &str,
) -> Value {
    let result: Value = serde_json::from_str(&ok("add", &tool.run("add", net, pod, env)))
        .expect("cnitool prints the result");
    ok("check", &tool.run("check", net, pod, env));
    assert!(
        node.sh(Some(pod), tamper).status.success(),
        "tampering: {tamper:?}"
    );
    let why = failed("check after tampering", &tool.run("check", net, pod, env));
    assert!(
        why.contains(says),
        "CHECK's error does not say {says:?}: {why}"
    );
    ok("del", &tool.run("del", net, pod, env));
    ok("del again", &tool.run("del", net, pod, env));
    let addresses: Vec<String> = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let left = leftovers(node, &[], &addresses);
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert!(
        tool.var_lib
            .join("cni/results")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_none()),
        "libcni's cache still holds a result"
    );
    result
}

#[test]
fn cnitool_drives_attache_as_bridge() {
    require_reference_plugins();
    let mut node = Node::new("cnitool-dropin");
    let pod = node.pod();
    let net = json!({"cniVersion": "1.0.0", "name": "attnet", "plugins": [
        {"type": "bridge", "bridge": "br-tool", "isGateway": true,
         "ipam": {"type": "host-local", "subnet": "10.60.0.0/24", "dataDir": node.path("ipam")}}]});
    let tool = Tool::new(&node, &[net]);
    let result = add_check_tamper_del(
        &node,
        &tool,
        "attnet",
        &pod,
        &[],
        &["ip", "addr", "flush", "dev", "eth0"],
        "eth0",
    );
    assert!(
        result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("10.60.0.")
    );
}

#[test]
fn cnitool_drives_the_meta_plugin_with_annotations_in_cap_args() {
    require_reference_plugins();
    let mut node = Node::new("cnitool-meta");
    let pod = node.pod();
    let dir = crate::testbed::write_nads(
        &node,
        "default",
        &[(
            "br-net",
            crate::testbed::bridge_nad(&node, "br-sec", "10.61.0.0/24"),
        )],
    );
    let net = json!({"cniVersion": "1.0.0", "name": "attmeta", "plugins": [{
        "type": "attache",
        "capabilities": {"io.kubernetes.cri.pod-annotations": true},
        "clusterNetwork": crate::testbed::ptp_cluster(&node),
        "networksDir": dir,
        "cacheDir": node.path("cache"),
    }]});
    let tool = Tool::new(&node, &[net]);
    let cap_args = json!({"io.kubernetes.cri.pod-annotations":
        {"k8s.v1.cni.cncf.io/networks": r#"[{"name":"br-net","interface":"sec0"}]"#}})
    .to_string();
    let env = [
        (
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=tool-pod",
        ),
        ("CAP_ARGS", cap_args.as_str()),
    ];
    // The annotation reached attache: sec0 is there while the pod is attached.
    let result: Value =
        serde_json::from_str(&ok("add", &tool.run("add", "attmeta", &pod, &env))).unwrap();
    let sec0 = node.addrs(Some(&pod), "sec0");
    assert!(
        sec0.len() == 1 && sec0[0].starts_with("10.61.0."),
        "{sec0:?}"
    );
    assert!(
        result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("10.77.0.")
    );
    ok("del", &tool.run("del", "attmeta", &pod, &env));

    add_check_tamper_del(
        &node,
        &tool,
        "attmeta",
        &pod,
        &env,
        &["ip", "addr", "flush", "dev", "sec0"],
        "sec0",
    );
}
