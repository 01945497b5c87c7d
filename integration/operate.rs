//! Putting attache on a node and keeping it there, end to end with real files: `attache install` (the
//! DaemonSet's process) and `attache uninstall`, a configuration watched and regenerated, the token file
//! kept current, containerd picking up the generated configuration, and readiness — STATUS not ready and
//! ADD refused (retryable, nothing attached) until the cluster network and its binaries are there.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::poll::eventually;
use crate::runtime::{Containerd, PodSpec, addrs};
use crate::testbed::{Node, REFERENCE_DIR, attache_bin, require_reference_plugins};
use serde_json::{Value, json};

/// The node's folders as the DaemonSet mounts them, and a service-account token and CA.
struct Host {
    bin: PathBuf,
    net: PathBuf,
    sa: PathBuf,
}

fn host(node: &Node) -> Host {
    let h = Host {
        bin: node.path("opt-cni-bin"),
        net: node.path("net.d"),
        sa: node.path("serviceaccount"),
    };
    for d in [&h.bin, &h.net, &h.sa] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(h.sa.join("token"), "token-one").unwrap();
    std::fs::write(h.sa.join("ca.crt"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    h
}

fn attache(args: &[&str]) -> Command {
    let mut c = Command::new(attache_bin());
    c.args(args).env_remove("CNI_COMMAND");
    c
}

fn install_args(h: &Host, node: &Node) -> Vec<String> {
    let s = |p: &Path| p.display().to_string();
    // The node's /run/attache, as the DaemonSet mounts it.
    std::fs::create_dir_all(node.path("run")).unwrap();
    vec![
        "install".into(),
        format!("--bin-dir={}", s(&h.bin)),
        format!("--conf-dir={}", s(&h.net)),
        format!("--node-conf-dir={}", s(&h.net)),
        format!("--cache-dir={}", s(&node.path("cache"))),
        format!("--token={}", s(&h.sa.join("token"))),
        format!("--ca={}", s(&h.sa.join("ca.crt"))),
        "--server=https://192.0.2.10:6443".into(),
        // The node's /run (a boot empties it), here a folder of the test's.
        format!("--run-dir={}", s(&node.path("run"))),
        format!("--node-run-dir={}", s(&node.path("run"))),
        format!("--nad-mirror={}", s(&node.path("nads"))),
    ]
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn ptp_conflist(node: &Node) -> Value {
    json!({"cniVersion": "1.0.0", "name": "cluster", "plugins": [
        {"type": "ptp", "ipam": {"type": "host-local", "subnet": "10.77.0.0/24",
                                 "dataDir": node.path("ipam"), "routes": [{"dst": "0.0.0.0/0"}]}}]})
}

#[test]
fn install_wraps_the_cluster_network_and_uninstall_takes_the_configuration_away_first() {
    let node = Node::new("install");
    let h = host(&node);
    // The node already has the reference bridge, and two configurations: the cluster's is the first.
    std::fs::copy(
        Path::new(REFERENCE_DIR).join("bridge"),
        h.bin.join("bridge"),
    )
    .unwrap();
    std::fs::write(
        h.net.join("10-cluster.conflist"),
        json!({"cniVersion": "0.4.0", "name": "cluster", "plugins": [
            {"type": "ptp"}, {"type": "portmap", "capabilities": {"portMappings": true}}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        h.net.join("99-other.conf"),
        json!({"cniVersion": "0.4.0", "name": "other", "type": "bridge"}).to_string(),
    )
    .unwrap();

    let mut args = install_args(&h, &node);
    args.extend([
        "--once".into(),
        "--wait=5".into(),
        "--drop-in=bridge,macvlan".into(),
        "--node-name=worker-7".into(),
    ]);
    args.push(r#"--config={"networksDir":"/etc/attache/networks"}"#.into());
    ok(
        attache(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .output()
            .unwrap(),
    );

    // Binaries: attache, attache-ipam and the drop-in names; the reference bridge it replaced is kept
    // aside.
    let me = std::fs::read(attache_bin()).unwrap();
    for name in ["attache", "attache-ipam", "bridge", "macvlan"] {
        let p = h.bin.join(name);
        assert_eq!(std::fs::read(&p).unwrap(), me, "{name}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
    assert_eq!(
        std::fs::read(h.bin.join(".bridge.before-attache")).unwrap(),
        std::fs::read(Path::new(REFERENCE_DIR).join("bridge")).unwrap()
    );
    // The configuration: first in order, the cluster's version and capabilities, the pod annotations'.
    let conf = read_json(&h.net.join("00-attache.conflist"));
    assert_eq!(conf["cniVersion"], "0.4.0");
    let p = &conf["plugins"][0];
    assert_eq!(p["type"], "attache");
    assert_eq!(p["clusterNetwork"], "10-cluster.conflist");
    assert_eq!(
        p["capabilities"],
        json!({"portMappings": true, "io.kubernetes.cri.pod-annotations": true})
    );
    assert_eq!(p["networksDir"], "/etc/attache/networks");
    // Installed since this boot: the mark in the node's /run, which the configuration names.
    assert_eq!(p["readyFile"], json!(node.path("run/ready")));
    assert!(node.path("run/ready").exists());
    // The node agent's mirror and socket (the agent makes them).
    assert_eq!(p["nadMirror"], json!(node.path("nads")));
    assert_eq!(p["agentSocket"], json!(node.path("run/agent.sock")));
    std::fs::create_dir_all(node.path("nads/team")).unwrap();
    std::fs::write(
        node.path("nads/team/blue.json"),
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
               "metadata": {"name": "blue", "namespace": "team"}, "spec": {"config": "{}"}})
        .to_string(),
    )
    .unwrap();
    std::fs::write(node.path("nads/.live"), "{}").unwrap();
    let _agent = std::os::unix::net::UnixListener::bind(node.path("run/agent.sock")).unwrap();
    // A kubeconfig naming a token file, which holds the service account's token.
    let kc = read_json(&h.net.join("attache.d/attache.kubeconfig"));
    assert_eq!(
        p["kubeconfig"],
        json!(h.net.join("attache.d/attache.kubeconfig"))
    );
    assert_eq!(
        kc["clusters"][0]["cluster"]["server"],
        "https://192.0.2.10:6443"
    );
    assert_eq!(
        kc["users"][0]["user"]["tokenFile"],
        json!(h.net.join("attache.d/token"))
    );
    assert_eq!(
        std::fs::read_to_string(h.net.join("attache.d/token")).unwrap(),
        "token-one"
    );
    // The node's name, for attache-ipam (a CNI plugin has no Downward API).
    assert_eq!(
        std::fs::read_to_string(h.net.join("attache.d/node-name")).unwrap(),
        "worker-7"
    );
    // Nothing half-written is left beside them.
    for d in [&h.bin, &h.net] {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            assert!(
                !e.file_name().to_string_lossy().ends_with(".tmp"),
                "{:?}",
                e.path()
            );
        }
    }

    // Uninstall: attache's configuration, kubeconfig and binaries go; the reference bridge comes back;
    // the cluster's configurations stay.
    let s = |p: &Path| p.display().to_string();
    let out = ok(attache(&[
        "uninstall",
        &format!("--bin-dir={}", s(&h.bin)),
        &format!("--conf-dir={}", s(&h.net)),
        "--drop-in=bridge,macvlan",
    ])
    .output()
    .unwrap());
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.contains("00-attache.conflist"),
        "the configuration must go first: {out}"
    );
    assert!(!node.path("run/ready").exists(), "{out}");
    assert!(!node.path("run/agent.sock").exists(), "{out}");
    assert!(!node.path("nads").exists(), "{out}");
    let mut left: Vec<String> = std::fs::read_dir(&h.bin)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["bridge"]);
    assert_eq!(
        std::fs::read(h.bin.join("bridge")).unwrap(),
        std::fs::read(Path::new(REFERENCE_DIR).join("bridge")).unwrap()
    );
    let mut confs: Vec<String> = std::fs::read_dir(&h.net)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    confs.sort();
    assert_eq!(confs, vec!["10-cluster.conflist", "99-other.conf"]);
}

#[test]
fn install_waits_for_the_cluster_network_regenerates_and_keeps_the_token_current() {
    let node = Node::new("install-watch");
    let h = host(&node);
    let mut args = install_args(&h, &node);
    args.push("--interval=1".into());
    let mut daemon = attache(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let conf = h.net.join("00-attache.conflist");
    // No cluster network yet: no configuration (the node keeps no pod half-networked).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(!conf.exists());
    // The cluster network's DaemonSet writes its configuration: attache's follows.
    std::fs::write(
        h.net.join("10-flannel.conf"),
        json!({"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel"}).to_string(),
    )
    .unwrap();
    assert!(eventually(10, || conf.exists()), "no configuration written");
    assert_eq!(
        read_json(&conf)["plugins"][0]["clusterNetwork"],
        "10-flannel.conf"
    );
    // It changes (a new capability): attache's is regenerated.
    std::fs::write(
        h.net.join("10-flannel.conf"),
        json!({"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel",
               "capabilities": {"bandwidth": true}})
        .to_string(),
    )
    .unwrap();
    assert!(
        eventually(
            10,
            || read_json(&conf)["plugins"][0]["capabilities"]["bandwidth"] == true
        ),
        "the configuration was not regenerated"
    );
    // The kubelet rotates the projected token: the token file follows.
    std::fs::write(h.sa.join("token"), "token-two").unwrap();
    assert!(
        eventually(10, || std::fs::read_to_string(
            h.net.join("attache.d/token")
        )
        .is_ok_and(|t| t == "token-two")),
        "the token file was not updated"
    );
    // SIGTERM: it leaves, and what it wrote stays (taking attache off is uninstall's job).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(conf.exists());
}

#[test]
fn containerd_picks_up_the_configuration_install_writes() {
    require_reference_plugins();
    let node = Node::with_nic("install-ctrd");
    let nets = crate::testbed::write_nads(
        &node,
        "default",
        &[(
            "br-net",
            crate::testbed::bridge_nad(&node, "br-att", "10.55.0.0/24"),
        )],
    );
    // containerd runs with the cluster network only, as a node does before attache's DaemonSet.
    let plugins: Vec<(&str, PathBuf)> = ["ptp", "host-local", "loopback", "portmap"]
        .iter()
        .map(|p| (*p, Path::new(REFERENCE_DIR).join(p)))
        .collect();
    let ctrd = Containerd::start(
        &node,
        &ptp_conflist(&node),
        &plugins
            .iter()
            .map(|(n, p)| (*n, p.as_path()))
            .collect::<Vec<_>>(),
    );
    let before = ctrd
        .run_pod(&PodSpec::new("before").networks("br-net"))
        .unwrap();
    let netns = ctrd.netns(&before);
    let links: Vec<Value> = crate::runtime::ip_json(&netns, &["link", "show"])
        .as_array()
        .unwrap()
        .clone();
    assert!(
        links.iter().any(|l| l["ifname"] == "eth0") && !links.iter().any(|l| l["ifname"] == "net1"),
        "before attache, the cluster network only: {links:?}"
    );

    // attache install, into containerd's folders, while it runs.
    let s = |p: &Path| p.display().to_string();
    let extra = json!({"networksDir": nets, "logFile": node.path("attache.log")}).to_string();
    ok(attache(&[
        "install",
        &format!("--bin-dir={}", s(&ctrd.bin_dir)),
        &format!("--conf-dir={}", s(&ctrd.conf_dir)),
        &format!("--node-conf-dir={}", s(&ctrd.conf_dir)),
        &format!("--cache-dir={}", s(&node.path("cache"))),
        &format!("--config={extra}"),
        &format!("--run-dir={}", s(&node.path("run"))),
        &format!("--node-run-dir={}", s(&node.path("run"))),
        &format!("--nad-mirror={}", s(&node.path("nads"))),
        "--once",
        "--wait=5",
    ])
    .output()
    .unwrap());
    // containerd loads it (its CNI status names attache) ...
    let loaded = eventually(20, || {
        ctrd.status()
            .is_ok_and(|s| s["info"]["cniconfig"].to_string().contains("attache"))
    });
    assert!(
        loaded,
        "containerd did not load 00-attache.conflist: {}",
        ctrd.log()
    );
    // ... and the next pod gets its secondary network from attache.
    let after = ctrd
        .run_pod(&PodSpec::new("after").networks("br-net"))
        .unwrap();
    let netns = ctrd.netns(&after);
    assert_eq!(addrs(&netns, "eth0").len(), 1);
    let net1 = addrs(&netns, "net1");
    assert!(
        net1.len() == 1 && net1[0].starts_with("10.55.0."),
        "{net1:?}"
    );
    for id in [&before, &after] {
        ctrd.stop_pod(id).unwrap();
        ctrd.remove_pod(id).unwrap();
    }
    let left = crate::runtime::leftovers(&node, &[before, after], &[]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// STATUS and ADD of the meta-plugin with `conf` on `node`, CNI_PATH `path`.
fn status_and_add(node: &Node, pod: &str, conf: &Value, path: &Path) -> (Value, Value) {
    let mut status = node.call("STATUS", "", "", "");
    status.netns = None;
    status.path = path.display().to_string();
    let mut add = node.call("ADD", "ready1", pod, "eth0");
    add.path = path.display().to_string();
    (
        node.exec(&status, conf).json(),
        node.exec(&add, conf).json(),
    )
}

#[test]
fn not_ready_until_the_cluster_network_and_its_binaries_are_there() {
    require_reference_plugins();
    let mut node = Node::new("ready");
    let pod = node.pod();
    let h = host(&node);
    std::fs::copy(attache_bin(), h.bin.join("attache")).unwrap();
    let ready = node.path("run/ready");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "attache", "type": "attache",
        "clusterNetwork": "10-cluster.conflist", "confDir": h.net, "cacheDir": node.path("cache"),
        "readyFile": ready
    });
    // attache was installed since the boot (the DaemonSet's pod writes this).
    std::fs::create_dir_all(node.path("run")).unwrap();
    std::fs::write(&ready, "installed").unwrap();
    let nothing_attached = |node: &Node| {
        assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
        assert!(node.files("cache").is_empty(), "{:?}", node.files("cache"));
        assert!(node.files("ipam").is_empty(), "{:?}", node.files("ipam"));
    };
    // After a reboot: no cluster configuration yet.
    let (st, add) = status_and_add(&node, &pod, &conf, &h.bin);
    assert_eq!(st["code"], 50, "{st}");
    assert_eq!(add["code"], 11, "{add}");
    for v in [&st, &add] {
        assert!(
            v["msg"].as_str().unwrap().contains("10-cluster.conflist"),
            "{v}"
        );
    }
    nothing_attached(&node);
    // The configuration is there, its plugin binary not yet.
    std::fs::write(
        h.net.join("10-cluster.conflist"),
        ptp_conflist(&node).to_string(),
    )
    .unwrap();
    let (st, add) = status_and_add(&node, &pod, &conf, &h.bin);
    assert_eq!(st["code"], 50, "{st}");
    assert_eq!(add["code"], 11, "{add}");
    for v in [&st, &add] {
        assert!(v["msg"].as_str().unwrap().contains("\"ptp\""), "{v}");
    }
    nothing_attached(&node);
    // Everything installed: ready, and ADD works.
    for p in ["ptp", "host-local"] {
        std::fs::copy(Path::new(REFERENCE_DIR).join(p), h.bin.join(p)).unwrap();
    }
    let (st, add) = status_and_add(&node, &pod, &conf, &h.bin);
    assert!(st.is_null(), "STATUS: {st}");
    assert!(add["ips"][0]["address"].is_string(), "ADD: {add}");

    // A reboot empties /run: until the DaemonSet's pod has installed attache again, new pods wait
    // (the cluster network is all there, and its configuration too).
    std::fs::remove_file(&ready).unwrap();
    let mut status = node.call("STATUS", "", "", "");
    status.netns = None;
    status.path = h.bin.display().to_string();
    let st = node.exec(&status, &conf).json();
    let pod2 = node.pod();
    let mut add = node.call("ADD", "ready2", &pod2, "eth0");
    add.path = h.bin.display().to_string();
    let add = node.exec(&add, &conf).json();
    assert_eq!(st["code"], 50, "{st}");
    assert_eq!(add["code"], 11, "{add}");
    for v in [&st, &add] {
        let msg = v["msg"].as_str().unwrap();
        assert!(
            msg.contains("not been installed") && msg.contains(&*ready.to_string_lossy()),
            "{v}"
        );
    }
    assert_eq!(node.links(Some(&pod2)), vec!["lo".to_string()]);
}
