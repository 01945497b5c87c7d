//! podman 4.3 (CNI backend) runs containers on attache networks: attache installed as `bridge`
//! (drop-in), and as a meta-plugin network whose cluster network is Debian's ptp (exec'd) with a native
//! bridge from `defaultNetworks`. podman sends VERSION, ADD with `K8S_POD_NAME`, and DEL with
//! `prevResult` — also when the container fails to start after ADD.

use std::path::{Path, PathBuf};

use crate::runtime::{Podman, leftovers};
use crate::testbed::{Node, REFERENCE_DIR, attache_bin, require_reference_plugins};
use serde_json::{Value, json};

/// podman first, so that its containers are gone before the node is removed.
struct Bed {
    podman: Podman,
    node: Node,
}

fn drop_in_network(node: &Node) -> Value {
    json!({"cniVersion": "1.0.0", "name": "attnet", "plugins": [
        {"type": "bridge", "bridge": "br-pod", "isGateway": true,
         "ipam": {"type": "host-local", "subnet": "10.57.0.0/24", "dataDir": node.path("ipam")}}]})
}

fn meta_network(node: &Node, networks_dir: &Path) -> Value {
    json!({"cniVersion": "1.0.0", "name": "attmeta", "plugins": [{
        "type": "attache",
        "clusterNetwork": crate::testbed::ptp_cluster(node),
        "defaultNetworks": ["default/br-net"],
        "networksDir": networks_dir,
        "cacheDir": node.path("cache"),
        "logFile": node.path("attache.log"),
    }]})
}

fn bed(tag: &str) -> Bed {
    require_reference_plugins();
    let node = Node::new(tag);
    let dir = crate::testbed::write_nads(
        &node,
        "default",
        &[(
            "br-net",
            crate::testbed::bridge_nad(&node, "br-sec", "10.59.0.0/24"),
        )],
    );
    let bins: Vec<(&str, PathBuf)> = vec![
        ("bridge", attache_bin()),
        ("attache", attache_bin()),
        ("ptp", Path::new(REFERENCE_DIR).join("ptp")),
        ("host-local", Path::new(REFERENCE_DIR).join("host-local")),
    ];
    let podman = Podman::new(
        &node,
        &[drop_in_network(&node), meta_network(&node, &dir)],
        &bins
            .iter()
            .map(|(n, p)| (*n, p.as_path()))
            .collect::<Vec<_>>(),
    );
    Bed { podman, node }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The IPv4 addresses in `ip -o -4 addr` output.
fn addresses(out: &str) -> Vec<String> {
    out.split_whitespace()
        .filter(|w| w.starts_with("10.") && w.contains('/'))
        .map(|w| w.split('/').next().unwrap().to_string())
        .collect()
}

/// What the container runs: its addresses, and whether `gateway` answers a ping.
fn probe(gateway: &str) -> String {
    format!("ip -o -4 addr show; ping -c 1 -W 2 {gateway} >/dev/null && echo gateway-answered")
}

#[test]
fn podman_runs_a_container_on_attache_as_bridge() {
    let b = bed("podman-dropin");
    let out = b
        .podman
        .run_rm("attnet", &["sh", "-c", &probe("10.57.0.1")]);
    let t = text(&out);
    assert!(out.status.success(), "podman run: {t}");
    assert!(t.contains("eth0") && t.contains("inet 10.57.0."), "{t}");
    assert!(t.contains("gateway-answered"), "{t}");
    let left = leftovers(&b.node, &[], &addresses(&t));
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[test]
fn podman_runs_a_container_on_an_attache_meta_network() {
    let b = bed("podman-meta");
    let out = b
        .podman
        .run_rm("attmeta", &["sh", "-c", &probe("10.59.0.1")]);
    let t = text(&out);
    assert!(out.status.success(), "podman run: {t}");
    // The cluster network (ptp, exec'd) and the default network (native bridge).
    assert!(t.contains("eth0") && t.contains("inet 10.77.0."), "{t}");
    assert!(t.contains("net1") && t.contains("inet 10.59.0."), "{t}");
    assert!(t.contains("gateway-answered"), "{t}");
    let dels = crate::testbed::logged(&b.node, "DEL");
    assert!(dels.iter().any(|l| l.contains("code=0")), "{dels:#?}");
    let left = leftovers(&b.node, &[], &addresses(&t));
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[test]
fn a_container_that_fails_after_add_gets_its_del_and_leaves_nothing() {
    let b = bed("podman-fail");
    for network in ["attnet", "attmeta"] {
        let out = b.podman.run_rm(network, &["/no/such/command"]);
        assert!(
            !out.status.success(),
            "{network}: the container must fail to start"
        );
        let left = leftovers(&b.node, &[], &[]);
        assert!(left.is_empty(), "{network}: left behind: {left:#?}");
    }
    let adds = crate::testbed::logged(&b.node, "ADD").len();
    let dels = crate::testbed::logged(&b.node, "DEL");
    let ok = dels.iter().filter(|l| l.contains("code=0")).count();
    assert!(adds >= 1 && ok >= adds, "ADDs {adds}, DELs {dels:#?}");
}

/// The image's runtime stage (Containerfile: `FROM scratch`, the static binary, `ENTRYPOINT
/// ["/attache"]`) run as the DaemonSet runs it: `install` with the node's folders under /host and a
/// projected service-account token.
#[test]
fn the_image_installs_attache_as_the_daemonset_runs_it() {
    let b = bed("podman-image");
    let root = b.node.path("image-root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(attache_bin(), root.join("attache")).unwrap();
    let tar = b.node.path("attache-image.tar");
    crate::runtime::must(
        std::process::Command::new("tar")
            .args(["--owner=0", "--group=0", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("attache"),
    );
    let out = b.podman.podman(&[
        "import",
        "--change",
        r#"ENTRYPOINT ["/attache"]"#,
        "--change",
        r#"CMD ["install"]"#,
        &tar.display().to_string(),
        "localhost/attache:test",
    ]);
    assert!(out.status.success(), "podman import: {}", text(&out));
    // The node: a CNI bin dir, a configuration dir with the cluster network's, a service account.
    let (bin, net, sa) = (
        b.node.path("host-bin"),
        b.node.path("host-net.d"),
        b.node.path("sa"),
    );
    for d in [&bin, &net, &sa] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(
        net.join("10-cluster.conflist"),
        json!({"cniVersion": "1.0.0", "name": "cluster", "plugins": [{"type": "ptp"}]}).to_string(),
    )
    .unwrap();
    std::fs::write(sa.join("token"), "projected-token").unwrap();
    std::fs::write(sa.join("ca.crt"), "ca").unwrap();
    let v = |from: &Path, to: &str| format!("{}:{to}", from.display());
    let out = b.podman.podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-e",
        "KUBERNETES_SERVICE_HOST=10.96.0.1",
        "-e",
        "KUBERNETES_SERVICE_PORT=443",
        "-v",
        &v(&bin, "/host/opt/cni/bin"),
        "-v",
        &v(&net, "/host/etc/cni/net.d"),
        "-v",
        &v(&sa, "/var/run/secrets/kubernetes.io/serviceaccount:ro"),
        "localhost/attache:test",
        "install",
        "--once",
        "--wait=10",
        "--drop-in=bridge",
    ]);
    assert!(
        out.status.success(),
        "attache install in its image: {}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(bin.join("attache")).unwrap(),
        std::fs::read(attache_bin()).unwrap()
    );
    assert!(bin.join("bridge").exists());
    let conf: Value =
        serde_json::from_slice(&std::fs::read(net.join("00-attache.conflist")).unwrap()).unwrap();
    // Paths in what it wrote are the node's, not the container's.
    assert_eq!(conf["plugins"][0]["confDir"], "/etc/cni/net.d");
    assert_eq!(
        conf["plugins"][0]["kubeconfig"],
        "/etc/cni/net.d/attache.d/attache.kubeconfig"
    );
    let kc: Value =
        serde_json::from_slice(&std::fs::read(net.join("attache.d/attache.kubeconfig")).unwrap())
            .unwrap();
    assert_eq!(
        kc["clusters"][0]["cluster"]["server"],
        "https://10.96.0.1:443"
    );
    assert_eq!(
        std::fs::read_to_string(net.join("attache.d/token")).unwrap(),
        "projected-token"
    );
}
