//! The Kubernetes path against a real kube-apiserver (v1.20.2 from Debian's source package, over
//! Debian's etcd; see realserver/): `deploy/` applied as an operator would (server-side dry run first, then
//! the CRD and RBAC for real), definitions and Pending pods created as the admin, and attache exec'd as the
//! kubelet would with a bound token of the `attache` ServiceAccount — so RBAC is exercised for real and
//! the audit log shows every request attache made.

use crate::realserver::RealApi;
use crate::testbed::{Agent, CniOutput, Node, require_reference_plugins};
use serde_json::{Value, json};

const NS: &str = "team-a";
const STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
const ATTACHE_USER: &str = "system:serviceaccount:kube-system:attache";

fn deploy() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/attache.yaml")).unwrap()
}

/// A real API server with `deploy/` applied, namespace `team-a`, the definition `red` (a native bridge)
/// and a Pending pod per name in `pods`, annotated with `networks`.
fn cluster(node: &Node, pods: &[&str], networks: &str) -> RealApi {
    let api = RealApi::start(crate::realserver::Options::new(
        node.path("apiserver"),
        Some(format!("/run/netns/{}", node.name)),
    ));
    let dry = api.apply(&deploy(), &["--dry-run=server"]);
    assert!(
        dry.status.success(),
        "deploy/ fails the server-side dry run: {}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let real = api.apply(&deploy(), &[]);
    assert!(
        real.status.success(),
        "applying deploy/: {}",
        String::from_utf8_lossy(&real.stderr)
    );
    api.must(&["create", "namespace", NS]);
    // The CRD is served a moment after it is created.
    let nad = json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "red", "namespace": NS},
        "spec": {"config": json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": "br-red",
            "ipam": {"type": "host-local", "subnet": "10.31.0.0/24", "dataDir": node.path("ipam")}}).to_string()}
    });
    assert!(
        crate::poll::eventually(30, || api.apply(&nad.to_string(), &[]).status.success()),
        "the NetworkAttachmentDefinition CRD is not served"
    );
    for p in pods {
        create_pod(&api, p, networks);
    }
    api
}

fn create_pod(api: &RealApi, name: &str, networks: &str) {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS,
                     "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "registry.example/app:1"}]}
    });
    let out = api.apply(&pod.to_string(), &[]);
    assert!(
        out.status.success(),
        "creating pod {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn uid_of(api: &RealApi, pod: &str) -> String {
    api.get(&["pod", "-n", NS, pod])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The meta configuration: ptp exec'd as the cluster network, definitions from the API.
fn meta_conf(node: &Node, kubeconfig: &std::path::Path) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "attache", "type": "attache",
        "clusterNetwork": crate::testbed::ptp_cluster(node),
        "cacheDir": node.path("cache"),
        "kubeconfig": kubeconfig,
        "logFile": node.path("attache.log"),
        "apiTimeout": 5
    })
}

fn cni(node: &Node, cmd: &str, pod: &str, netns: &str, uid: &str, conf: &Value) -> CniOutput {
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID=c-{pod};K8S_POD_UID={uid}"
    );
    let mut call = node.call(cmd, pod, netns, "eth0");
    call.args = &args;
    node.exec(&call, conf)
}

fn network_status(api: &RealApi, pod: &str) -> Option<Value> {
    api.get(&["pod", "-n", NS, pod])["metadata"]["annotations"][STATUS]
        .as_str()
        .map(|s| serde_json::from_str(s).unwrap())
}

/// (verb, resource[/subresource]) of every request attache made, with the answer's code.
fn requests_by_attache(api: &RealApi) -> Vec<(String, String, u64, String)> {
    api.audit_of(ATTACHE_USER)
        .iter()
        .map(|e| {
            let r = &e["objectRef"];
            let res = match r["subresource"].as_str() {
                Some(sub) => format!("{}/{sub}", r["resource"].as_str().unwrap_or("")),
                None => r["resource"].as_str().unwrap_or("").to_string(),
            };
            (
                e["verb"].as_str().unwrap_or("").to_string(),
                res,
                e["responseStatus"]["code"].as_u64().unwrap_or(0),
                e["userAgent"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The (verb, resource) pairs `deploy/`'s ClusterRole `attache`, its Role in kube-system and the optional
/// `attache-label-node` grant, and the nodes rule of attache-ipam's role (`install` reads its Node's
/// labels with its `get`).
fn granted(api: &RealApi) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for rule in api.get(&["clusterrole", "attache-ipam"])["rules"]
        .as_array()
        .unwrap()
    {
        if rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "nodes")
        {
            for v in rule["verbs"].as_array().unwrap() {
                if v == "get" {
                    out.push(("get".to_string(), "nodes".to_string()));
                }
            }
        }
    }
    for role in [
        api.get(&["clusterrole", "attache"]),
        api.get(&["-n", "kube-system", "role", "attache-cluster-cidrs"]),
        api.get(&["clusterrole", "attache-label-node"]),
    ] {
        for rule in role["rules"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    out.push((v.as_str().unwrap().into(), r.as_str().unwrap().into()));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn deploy_rbac_network_status_events_and_del_against_a_real_api_server() {
    require_reference_plugins();
    let mut node = Node::new("realapi");
    let netns = node.pod();
    let api = cluster(&node, &["web"], "red");
    let token = api.token("kube-system", "attache", None);
    let kubeconfig = node.path("kubeconfig");
    api.write_kubeconfig(&kubeconfig, &token, false);
    let conf = meta_conf(&node, &kubeconfig);
    let uid = uid_of(&api, "web");

    let res = cni(&node, "ADD", "web", &netns, &uid, &conf).ok();
    let eth0 = crate::testbed::first_ip(&res);
    let net1 = node.addrs(Some(&netns), "net1");
    assert_eq!(net1.len(), 1, "{net1:?}");

    // network-status, as Multus writes it: the cluster network first and default, then team-a/red.
    let st = network_status(&api, "web").expect("network-status written");
    assert_eq!(st[0]["name"], "cluster");
    assert_eq!(st[0]["default"], true);
    assert_eq!(st[0]["ips"], json!([eth0]));
    assert_eq!(st[1]["name"], "team-a/red");
    assert_eq!(st[1]["interface"], "net1");
    // Events for every interface, with prefixes (RBAC lets attache create them).
    let events = api.get(&["events", "-n", NS]);
    let mut said: Vec<String> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "AddedInterface" && e["involvedObject"]["uid"] == json!(uid))
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    said.sort();
    assert_eq!(
        said,
        vec![
            format!("Add eth0 [{eth0}/24] from cluster"),
            format!("Add net1 [{}] from team-a/red", net1[0]),
        ]
    );
    // The write is attache's: field manager and user agent.
    // (Raw: a newer kubectl hides managedFields.)
    let pod: Value = serde_json::from_str(&api.must(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{NS}/pods/web"),
    ]))
    .unwrap();
    let managers: Vec<&str> = pod["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"attache"), "{managers:?}");

    assert_eq!(cni(&node, "DEL", "web", &netns, &uid, &conf).exit, 0);
    assert_eq!(
        network_status(&api, "web"),
        None,
        "DEL clears network-status"
    );
    assert_eq!(node.links(Some(&netns)), vec!["lo".to_string()]);
    assert!(node.files("cache").is_empty());

    // The node agent mirrors the definitions (a list, then a watch): its requests count too. A watch
    // is in the audit log once it ends.
    let agent = agent_mirroring(&node, &kubeconfig, "red");
    drop(agent);
    assert!(
        crate::poll::eventually(30, || requests_by_attache(&api)
            .iter()
            .any(|r| r.0 == "watch")),
        "the agent's watch is not in the audit log"
    );

    // `attache install` (the DaemonSet's container, here in the node's netns with the ServiceAccount's
    // kubeconfig) reads the cluster's CIDRs for the configuration: kubeadm's ClusterConfiguration, and
    // ServiceCIDR objects where the API has them (v1.20 has not: 404).
    let cc = "apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nnetworking:\n  podSubnet: 10.244.0.0/16\n  serviceSubnet: 10.96.0.0/12\n";
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
        "data": {"ClusterConfiguration": cc}});
    assert!(api.apply(&cm.to_string(), &[]).status.success());
    let net = node.path("net.d");
    std::fs::create_dir_all(&net).unwrap();
    std::fs::create_dir_all(node.path("bin")).unwrap();
    std::fs::write(
        net.join("10-cluster.conflist"),
        json!({"cniVersion": "1.0.0", "name": "cluster", "plugins": [{"type": "ptp"}]}).to_string(),
    )
    .unwrap();
    std::fs::write(node.path("sa-token"), &token).unwrap();
    // With --physnets and --label-node: this node's entries of the ConfigMap (the first whose
    // nodeSelector the Node matches), and labels for the physical networks the node has (a stale one
    // goes). The optional RBAC for it is applied.
    let label_rbac = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/label-node.yaml"
    ))
    .unwrap();
    assert!(api.apply(&label_rbac, &[]).status.success());
    let n1 = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1",
        "labels": {"nic": "intel", "physnet.attache.dev/stale": "true"}}});
    assert!(api.apply(&n1.to_string(), &[]).status.success());
    assert!(node.ip_do(&[
        "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p"
    ]));
    assert!(node.ip_do(&[
        "link",
        "property",
        "add",
        "dev",
        "uplink0",
        "altname",
        "fabric-uplink-a"
    ]));
    let physnets_src = node.path("physnets-configmap.json");
    std::fs::write(
        &physnets_src,
        json!({"data": [{"nodeSelector": {"nic": "intel"}, "altName": "fabric-uplink-a"},
                        {"altName": "elsewhere"}],
               "storage": {"altName": "no-such-nic"}})
        .to_string(),
    )
    .unwrap();
    let s = |p: std::path::PathBuf| p.display().to_string();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &node.name])
        .arg(crate::testbed::attache_bin())
        .args([
            "install".to_string(),
            "--once".into(),
            format!("--bin-dir={}", s(node.path("bin"))),
            format!("--conf-dir={}", s(net.clone())),
            format!("--node-conf-dir={}", s(net.clone())),
            format!("--token={}", s(node.path("sa-token"))),
            format!("--ca={}", api.ca.display()),
            format!("--server={}", api.url),
            format!("--run-dir={}", s(node.path("run"))),
            format!("--node-run-dir={}", s(node.path("run"))),
            format!("--nad-mirror={}", s(node.path("nads"))),
            format!("--physnets={}", s(physnets_src.clone())),
            "--label-node".into(),
            "--node-name=n1".into(),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed: Value =
        serde_json::from_slice(&std::fs::read(net.join("00-attache.conflist")).unwrap()).unwrap();
    assert_eq!(
        installed["plugins"][0]["clusterCIDRs"],
        json!(["10.244.0.0/16"])
    );
    assert_eq!(
        installed["plugins"][0]["serviceCIDRs"],
        json!(["10.96.0.0/12"])
    );
    let map = net.join("attache.d/physnets.json");
    assert_eq!(installed["plugins"][0]["physnetsFile"], json!(map));
    let written: Value = serde_json::from_slice(&std::fs::read(&map).unwrap()).unwrap();
    assert_eq!(
        written,
        json!({"data": {"altName": "fabric-uplink-a"}, "storage": {"altName": "no-such-nic"}})
    );
    let labels = api.get(&["node", "n1"])["metadata"]["labels"].clone();
    assert_eq!(labels["physnet.attache.dev/data"], "true", "{labels}");
    assert!(
        labels.get("physnet.attache.dev/stale").is_none(),
        "{labels}"
    );
    assert!(
        labels.get("physnet.attache.dev/storage").is_none(),
        "{labels}"
    );
    assert_eq!(labels["nic"], "intel");

    // Every request attache made was allowed, named attache, and used a grant; every grant was used.
    let reqs = requests_by_attache(&api);
    assert!(
        !reqs.is_empty(),
        "the audit log shows no request of attache's"
    );
    for (verb, res, code, agent) in &reqs {
        assert!(
            agent.starts_with("attache/"),
            "{verb} {res}: user agent {agent:?}"
        );
        // An API server before 1.33 has no ServiceCIDRs: asked, and told so.
        let absent = res == "servicecidrs" && *code == 404;
        assert!(
            (200..300).contains(code) || absent,
            "{verb} {res} was answered {code}"
        );
    }
    let mut used: Vec<(String, String)> = reqs.iter().map(|r| (r.0.clone(), r.1.clone())).collect();
    used.sort();
    used.dedup();
    assert_eq!(
        used,
        granted(&api),
        "deploy/ grants exactly what attache uses"
    );
}

#[test]
fn network_status_never_lands_on_a_replaced_pod() {
    require_reference_plugins();
    let mut node = Node::new("realapi-replaced");
    let netns = node.pod();
    let api = cluster(&node, &["db-0"], "red");
    let token = api.token("kube-system", "attache", None);
    let kubeconfig = node.path("kubeconfig");
    api.write_kubeconfig(&kubeconfig, &token, false);
    let old_uid = uid_of(&api, "db-0");
    // The pod is deleted and recreated (a StatefulSet's pod keeps its name) while the runtime is still
    // setting up the old sandbox, whose annotations it passes itself.
    api.must(&["delete", "pod", "-n", NS, "db-0", "--wait=true"]);
    create_pod(&api, "db-0", "red");
    let new_uid = uid_of(&api, "db-0");
    assert_ne!(old_uid, new_uid);
    let mut conf = meta_conf(&node, &kubeconfig);
    conf["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations":
        {"k8s.v1.cni.cncf.io/networks": "red"}});
    cni(&node, "ADD", "db-0", &netns, &old_uid, &conf).ok();
    assert_eq!(
        network_status(&api, "db-0"),
        None,
        "the old sandbox's addresses landed on the new pod"
    );
    assert_eq!(cni(&node, "DEL", "db-0", &netns, &old_uid, &conf).exit, 0);
}

#[test]
fn credentials_and_reachability_errors_say_what_happened_and_a_rotated_token_file_is_read() {
    require_reference_plugins();
    let mut node = Node::new("realapi-creds");
    let netns = node.pod();
    let mut api = cluster(&node, &["web"], "red");
    let uid = uid_of(&api, "web");
    let tok_a = api.token("kube-system", "attache", None);
    // The kubeconfig names a token file, as the installer writes it.
    let kubeconfig = node.path("kubeconfig");
    api.write_kubeconfig(&kubeconfig, &tok_a, true);
    let token_file = kubeconfig.with_extension("token");
    let conf = meta_conf(&node, &kubeconfig);
    cni(&node, "ADD", "web", &netns, &uid, &conf).ok();
    assert_eq!(cni(&node, "DEL", "web", &netns, &uid, &conf).exit, 0);

    // Revoked (its ServiceAccount deleted and made again: the old token names the old one): one sentence
    // saying so, naming the kubeconfig and the server; nothing attached.
    api.must(&["delete", "serviceaccount", "attache", "-n", "kube-system"]);
    api.must(&["create", "serviceaccount", "attache", "-n", "kube-system"]);
    // (The API server caches a token's successful authentication for a few seconds.)
    let refused = crate::poll::eventually(30, || {
        let out = cni(&node, "ADD", "web", &netns, &uid, &conf);
        if out.exit == 0 {
            assert_eq!(cni(&node, "DEL", "web", &netns, &uid, &conf).exit, 0);
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        out.exit != 0
    });
    assert!(refused, "a revoked token still works");
    let e = cni(&node, "ADD", "web", &netns, &uid, &conf).err(11);
    let msg = e["msg"].as_str().unwrap().to_string() + e["details"].as_str().unwrap_or("");
    for part in [
        "401",
        "expired or was revoked",
        &kubeconfig.display().to_string(),
        "https://127.0.0.1:6443",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg:?}");
    }
    assert!(!msg.contains("ApiError"), "a debug dump: {msg}");
    assert_eq!(node.links(Some(&netns)), vec!["lo".to_string()]);

    // The token file is rewritten (atomically, as the installer does): the next ADD reads the new one.
    let tok_b = api.token("kube-system", "attache", None);
    let tmp = token_file.with_extension("tmp");
    std::fs::write(&tmp, &tok_b).unwrap();
    std::fs::rename(&tmp, &token_file).unwrap();
    cni(&node, "ADD", "web", &netns, &uid, &conf).ok();
    assert!(network_status(&api, "web").is_some());

    // The API server goes away: DEL still finishes, and leaves nothing.
    api.stop_apiserver();
    assert_eq!(cni(&node, "DEL", "web", &netns, &uid, &conf).exit, 0);
    assert_eq!(node.links(Some(&netns)), vec!["lo".to_string()]);
    assert!(node.files("cache").is_empty());
    // An ADD now says which server could not be reached.
    let e = cni(&node, "ADD", "web", &netns, &uid, &conf).err(11);
    let msg = e["msg"].as_str().unwrap().to_string() + e["details"].as_str().unwrap_or("");
    assert!(
        msg.contains("https://127.0.0.1:6443") && msg.contains("unreachable"),
        "{msg}"
    );
    assert_eq!(node.links(Some(&netns)), vec!["lo".to_string()]);
}

/// Run a reference plugin as Multus v4 runs its delegates: `CNI_IFNAME` `ifname`, Multus' `CNI_ARGS`,
/// the definition's configuration with its name filled in from the definition's.
/// `pod`: (name, netns, UID).
fn reference(
    node: &Node,
    cmd: &str,
    plugin: &str,
    (pod, netns, uid): (&str, &str, &str),
    ifname: &str,
    conf: &Value,
) -> CniOutput {
    let args = format!(
        "IgnoreUnknown=true;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID=c-{pod};K8S_POD_UID={uid}"
    );
    let mut call = node.call(cmd, pod, netns, ifname);
    call.args = &args;
    call.bin = std::path::Path::new(crate::testbed::REFERENCE_DIR).join(plugin);
    node.exec(&call, conf)
}

/// `attache inspect` of the node's records, with the pods' namespaces in `netns_dir`.
fn inspect_foreign(node: &Node, netns_dir: &std::path::Path) -> std::process::Output {
    node.sh(
        None,
        &[
            &crate::testbed::attache_bin().display().to_string(),
            "inspect",
            "--cache-dir",
            &node.path("cache").display().to_string(),
            "--netns-dir",
            &netns_dir.display().to_string(),
        ],
    )
}

/// Lines at WARN or above in attache's log.
fn warnings(node: &Node) -> Vec<String> {
    std::fs::read_to_string(node.path("attache.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect()
}

// Issue 19: a node that moves from Multus to attache. Multus v4 attached the pod (the cluster network,
// then a bridge definition as net1 and a macvlan one as net2, each by the reference plugin, definitions
// without a `name`, host veths named at random, network-status written); attache, with no record of it,
// tears all of it down on DEL. Then the DELs a runtime repeats cost no API call; a pod deleted before its
// DEL is no warning; a token file ending in a newline works; a definition with `spec.config: ""` is taken
// by the server as a real one takes it.
#[test]
fn a_pod_multus_attached_is_torn_down_by_attache_and_repeated_dels_make_no_api_call() {
    require_reference_plugins();
    let mut node = Node::with_nic("realapi-multus");
    let netns = node.pod();
    let api = cluster(&node, &[], "");
    let ipam = node.path("ipam").display().to_string();
    let nads = [
        (
            "ka-br",
            json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": "br-ka",
            "ipam": {"type": "host-local", "subnet": "10.41.0.0/24", "dataDir": ipam}}),
        ),
        (
            "ka-mv",
            json!({"cniVersion": "0.3.1", "type": "macvlan", "master": "nic0",
            "ipam": {"type": "host-local", "subnet": "10.42.0.0/24", "dataDir": ipam}}),
        ),
    ];
    for (name, config) in &nads {
        let nad = json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": NS}, "spec": {"config": config.to_string()}});
        let out = api.apply(&nad.to_string(), &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    create_pod(&api, "migrated", "ka-br,ka-mv");
    let uid = uid_of(&api, "migrated");

    // Multus' ADD, as it runs it.
    let eth0 = reference(
        &node,
        "ADD",
        "ptp",
        ("migrated", &netns, &uid),
        "eth0",
        &crate::testbed::ptp_cluster(&node),
    )
    .ok();
    let mut status = vec![
        json!({"name": "cluster", "interface": "eth0", "default": true,
        "ips": [crate::testbed::first_ip(&eth0)]}),
    ];
    for (i, (name, config)) in nads.iter().enumerate() {
        let mut c = config.clone();
        c["name"] = json!(name); // Multus names a nameless definition's network after it
        let ifname = format!("net{}", i + 1);
        let plugin = c["type"].as_str().unwrap().to_string();
        let r = reference(
            &node,
            "ADD",
            &plugin,
            ("migrated", &netns, &uid),
            &ifname,
            &c,
        )
        .ok();
        status.push(json!({"name": format!("{NS}/{name}"), "interface": ifname,
            "ips": [crate::testbed::first_ip(&r)]}));
    }
    api.must(&[
        "annotate",
        "pod",
        "-n",
        NS,
        "migrated",
        &format!("{STATUS}={}", serde_json::to_string(&status).unwrap()),
    ]);
    let mut pod_links = node.links(Some(&netns));
    pod_links.sort();
    assert_eq!(pod_links, ["eth0", "lo", "net1", "net2"]);
    let node_veths = || -> Vec<String> {
        node.links(None)
            .into_iter()
            .filter(|l| l.starts_with("veth"))
            .collect()
    };
    assert_eq!(node_veths().len(), 2, "ptp's and the bridge's host ends");
    assert_eq!(
        node.files("ipam")
            .iter()
            .filter(|f| !f.contains("lock") && !f.contains("last_reserved"))
            .count(),
        3
    );

    // `attache inspect` shows what another plugin attached: a pod netns no record names.
    let netns_dir = node.path("netns");
    std::fs::create_dir_all(&netns_dir).unwrap();
    std::os::unix::fs::symlink(&netns, netns_dir.join("migrated")).unwrap();
    let inspect = inspect_foreign(&node, &netns_dir);
    let shown = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{shown}");
    for part in ["FOREIGN", "net1", "net2", "macvlan", "10.41.0.", "10.42.0."] {
        assert!(shown.contains(part), "{part:?} not in:\n{shown}");
    }

    // The node switches to attache; its token file ends in a newline, as `kubectl create token > f`
    // leaves it.
    let token = api.token("kube-system", "attache", None);
    let kubeconfig = node.path("kubeconfig");
    api.write_kubeconfig(&kubeconfig, &format!("{token}\n"), true);
    let mut conf = meta_conf(&node, &kubeconfig);
    conf["logLevel"] = json!("debug");
    let before = requests_by_attache(&api).len();
    assert_eq!(cni(&node, "DEL", "migrated", &netns, &uid, &conf).exit, 0);
    assert_eq!(
        node.links(Some(&netns)),
        vec!["lo".to_string()],
        "the pod keeps nothing"
    );
    assert!(node_veths().is_empty(), "{:?}", node_veths());
    let leases: Vec<String> = node
        .files("ipam")
        .into_iter()
        .filter(|f| !f.contains("lock") && !f.contains("last_reserved"))
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
    assert_eq!(
        network_status(&api, "migrated"),
        None,
        "network-status cleared by UID"
    );
    let log = std::fs::read_to_string(node.path("attache.log")).unwrap();
    for said in ["deleted net1 in the pod", "deleted net2 in the pod"] {
        assert!(log.contains(said), "{said:?} not in the log:\n{log}");
    }
    let first = requests_by_attache(&api).len();
    assert!(first > before, "the first DEL plans from the API");
    // The runtime's DELs that follow: nothing to do, no API call.
    for _ in 0..4 {
        assert_eq!(cni(&node, "DEL", "migrated", &netns, &uid, &conf).exit, 0);
    }
    assert_eq!(
        requests_by_attache(&api).len(),
        first,
        "repeated DELs called the API"
    );
    assert_eq!(node.tombstones("cache"), vec!["migrated".to_string()]);
    let inspect = inspect_foreign(&node, &netns_dir);
    assert!(!String::from_utf8_lossy(&inspect.stdout).contains("FOREIGN"));

    // A definition with an empty config names a configuration in confDir; the server takes "".
    let nad = json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "ondisk", "namespace": NS}, "spec": {"config": ""}});
    let out = api.apply(&nad.to_string(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        api.get(&["network-attachment-definitions", "-n", NS, "ondisk"])["spec"]["config"],
        ""
    );
    std::fs::create_dir_all(node.path("net.d")).unwrap();
    std::fs::write(
        node.path("net.d/ondisk.conf"),
        json!({"cniVersion": "1.0.0", "name": "ondisk",
        "type": "bridge", "bridge": "br-ondisk",
        "ipam": {"type": "host-local", "subnet": "10.43.0.0/24", "dataDir": ipam}})
        .to_string(),
    )
    .unwrap();
    conf["confDir"] = json!(node.path("net.d"));
    // A pod deleted (force-deleted, evicted) before its DEL: the normal life of a pod, no warning.
    create_pod(&api, "gone", "ondisk");
    let uid = uid_of(&api, "gone");
    let netns2 = node.pod();
    cni(&node, "ADD", "gone", &netns2, &uid, &conf).ok();
    assert_eq!(
        node.addrs(Some(&netns2), "net1").len(),
        1,
        "ondisk from confDir"
    );
    assert!(node.tombstones("cache").contains(&"migrated".to_string()));
    api.must(&[
        "delete",
        "pod",
        "-n",
        NS,
        "gone",
        "--grace-period=0",
        "--force",
    ]);
    assert_eq!(cni(&node, "DEL", "gone", &netns2, &uid, &conf).exit, 0);
    assert_eq!(node.links(Some(&netns2)), vec!["lo".to_string()]);
    assert!(warnings(&node).is_empty(), "{:?}", warnings(&node));
    let after = requests_by_attache(&api).len();
    assert_eq!(cni(&node, "DEL", "gone", &netns2, &uid, &conf).exit, 0);
    assert_eq!(requests_by_attache(&api).len(), after);

    // A token that cannot be sent is named as the problem.
    std::fs::write(kubeconfig.with_extension("token"), "abc\u{1}def\n").unwrap();
    create_pod(&api, "badtoken", "ondisk");
    let uid = uid_of(&api, "badtoken");
    let e = cni(&node, "ADD", "badtoken", &netns2, &uid, &conf);
    assert_ne!(e.exit, 0);
    let msg = e.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("token")
            && msg.contains(&kubeconfig.with_extension("token").display().to_string()),
        "{msg}"
    );
    assert_eq!(node.links(Some(&netns2)), vec!["lo".to_string()]);
}

/// The mirrored object of `name` in namespace team-a, if the mirror has it.
fn mirrored(node: &Node, name: &str) -> Option<Value> {
    let b = std::fs::read(node.path("nads").join(NS).join(format!("{name}.json"))).ok()?;
    serde_json::from_slice(&b).ok()
}

/// An agent started with `kubeconfig`, once its mirror is live and has `name`.
fn agent_mirroring(node: &Node, kubeconfig: &std::path::Path, name: &str) -> Agent {
    let agent = Agent::start(node, kubeconfig);
    assert!(
        crate::poll::eventually(30, || mirror_live(node) && mirrored(node, name).is_some()),
        "the agent did not mirror {name}: {}",
        agent.log()
    );
    agent
}

/// Whether the agent said the mirror is current within the last 10 s.
fn mirror_live(node: &Node) -> bool {
    attache::k8s::mirror::Mirror::new(&node.path("nads")).is_live()
}

fn bridge_nad(node: &Node, name: &str, bridge: &str, subnet: &str) -> String {
    json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"config": json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": bridge,
            "ipam": {"type": "host-local", "subnet": subnet, "dataDir": node.path("ipam")}}).to_string()}
    })
    .to_string()
}

/// GETs of definitions attache made so far.
fn nad_gets(api: &RealApi) -> usize {
    requests_by_attache(api)
        .iter()
        .filter(|r| r.0 == "get" && r.1 == "network-attachment-definitions")
        .count()
}

#[test]
fn the_nodes_mirror_serves_adds_follows_the_api_and_is_never_required() {
    require_reference_plugins();
    let mut node = Node::new("mirror");
    let mut api = cluster(&node, &[], "red");
    let token = api.token("kube-system", "attache", None);
    let kubeconfig = node.path("kubeconfig");
    api.write_kubeconfig(&kubeconfig, &token, false);
    let mut agent = agent_mirroring(&node, &kubeconfig, "red");
    let mut conf = meta_conf(&node, &kubeconfig);
    conf["nadMirror"] = json!(node.path("nads"));
    // The runtime passes the annotations: with the mirror live, planning asks the API nothing.
    let add = |node: &mut Node, pod: &str, networks: &str, conf: &Value| {
        let netns = node.pod();
        let mut conf = conf.clone();
        conf["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations":
            {"k8s.v1.cni.cncf.io/networks": networks}});
        let out = cni(node, "ADD", pod, &netns, &format!("uid-{pod}"), &conf);
        (out, netns)
    };
    let net1_in = |node: &Node, netns: &str, subnet: &str| {
        let a = node.addrs(Some(netns), "net1");
        let net: ipnet::IpNet = subnet.parse().unwrap();
        a.len() == 1
            && net.contains(
                &a[0]
                    .split('/')
                    .next()
                    .unwrap()
                    .parse::<std::net::IpAddr>()
                    .unwrap(),
            )
    };

    // 1. Served from the mirror: no GET of the definition.
    let before = nad_gets(&api);
    let (out, ns1) = add(&mut node, "web1", "red", &conf);
    out.ok();
    assert!(net1_in(&node, &ns1, "10.31.0.0/24"));
    assert_eq!(nad_gets(&api), before, "the ADD asked the API for red");

    // 2. Changed in the API: the mirror follows, and the next ADD gets the new definition.
    let out = api.apply(&bridge_nad(&node, "red", "br-red2", "10.32.0.0/24"), &[]);
    assert!(out.status.success());
    assert!(
        crate::poll::eventually(10, || mirrored(&node, "red").is_some_and(|v| {
            v["spec"]["config"]
                .as_str()
                .unwrap_or("")
                .contains("10.32.0.0")
        })),
        "the mirror did not follow the change: {}",
        agent.log()
    );
    let (out, ns2) = add(&mut node, "web2", "red", &conf);
    out.ok();
    assert!(net1_in(&node, &ns2, "10.32.0.0/24"));

    // 3. Deleted in the API: gone from the mirror, and an ADD naming it fails, leaving nothing.
    api.must(&["delete", "network-attachment-definition", "-n", NS, "red"]);
    assert!(
        crate::poll::eventually(10, || mirrored(&node, "red").is_none()),
        "the mirror still has red"
    );
    let (out, ns3) = add(&mut node, "web3", "red", &conf);
    let e = out.err(7);
    assert!(e["msg"].as_str().unwrap().contains("not found"), "{e}");
    assert_eq!(node.links(Some(&ns3)), vec!["lo".to_string()]);

    // 4. The agent dies: within 10 s the mirror is not trusted, and a definition made meanwhile is
    // read from the API.
    drop(agent);
    let out = api.apply(&bridge_nad(&node, "blue", "br-blue", "10.33.0.0/24"), &[]);
    assert!(out.status.success());
    assert!(
        crate::poll::eventually(15, || !mirror_live(&node)),
        "the mirror stays live without its agent"
    );
    let before = nad_gets(&api);
    let (out, ns4) = add(&mut node, "web4", "blue", &conf);
    out.ok();
    assert!(net1_in(&node, &ns4, "10.33.0.0/24"));
    assert!(nad_gets(&api) > before, "blue was not read from the API");

    // 5. The agent again: it resumes from what it recorded and catches up (blue made, red deleted).
    agent = agent_mirroring(&node, &kubeconfig, "blue");
    assert!(mirrored(&node, "red").is_none());

    // 6. The API server stops: the mirror stops being live, and serves what the node has seen — for
    // as long as nadMirrorMaxStale allows; a definition it never saw fails with "try again".
    api.stop_apiserver();
    assert!(
        crate::poll::eventually(20, || !mirror_live(&node)),
        "the mirror stays live without the API server"
    );
    let (out, ns5) = add(&mut node, "web5", "blue", &conf);
    out.ok();
    assert!(net1_in(&node, &ns5, "10.33.0.0/24"));
    let log = std::fs::read_to_string(node.path("attache.log")).unwrap_or_default();
    assert!(log.contains("served from the node's mirror"), "{log}");
    let (out, _) = add(&mut node, "web6", "green", &conf);
    out.err(11);
    let mut strict = conf.clone();
    strict["nadMirrorMaxStale"] = json!(0);
    let (out, ns7) = add(&mut node, "web7", "blue", &strict);
    out.err(11);
    assert_eq!(node.links(Some(&ns7)), vec!["lo".to_string()]);

    // 7. The API server is back: the agent's watch resumes, and the mirror follows again.
    api.restart_apiserver();
    let out = api.apply(&bridge_nad(&node, "green", "br-green", "10.34.0.0/24"), &[]);
    assert!(out.status.success());
    assert!(
        crate::poll::eventually(30, || mirror_live(&node)
            && mirrored(&node, "green").is_some()),
        "the agent did not resume: {}",
        agent.log()
    );
    for (pod, netns) in [("web1", ns1), ("web2", ns2), ("web4", ns4), ("web5", ns5)] {
        assert_eq!(
            cni(&node, "DEL", pod, &netns, &format!("uid-{pod}"), &conf).exit,
            0
        );
    }
    assert!(node.files("cache").is_empty(), "{:?}", node.files("cache"));
}

#[test]
fn a_restarted_agent_lists_again_when_its_resource_version_is_too_old() {
    let node = Node::new("mirror-old");
    // Watches served by etcd, which the API server compacts every second: an old resourceVersion is
    // soon gone.
    let api = RealApi::start(crate::realserver::Options {
        flags: vec![
            "--watch-cache=false".into(),
            "--etcd-compaction-interval=1s".into(),
        ],
        ..crate::realserver::Options::new(
            node.path("apiserver"),
            Some(format!("/run/netns/{}", node.name)),
        )
    });
    let out = api.apply(&deploy(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    api.must(&["create", "namespace", NS]);
    assert!(crate::poll::eventually(30, || api
        .apply(&bridge_nad(&node, "red", "br-red", "10.31.0.0/24"), &[])
        .status
        .success()));
    let token = api.token("kube-system", "attache", None);
    let kubeconfig = node.path("kubeconfig");
    api.write_kubeconfig(&kubeconfig, &token, false);
    let agent = agent_mirroring(&node, &kubeconfig, "red");
    drop(agent);
    // While the agent is away: red deleted, blue made, then the history compacted away.
    api.must(&["delete", "network-attachment-definition", "-n", NS, "red"]);
    assert!(
        api.apply(&bridge_nad(&node, "blue", "br-blue", "10.33.0.0/24"), &[])
            .status
            .success()
    );
    // Long enough for the history to be compacted, short enough for the mirror to be still live (so
    // that the agent resumes rather than lists at once).
    std::thread::sleep(std::time::Duration::from_secs(3));
    let agent = Agent::start(&node, &kubeconfig);
    assert!(
        crate::poll::eventually(30, || mirror_live(&node)
            && mirrored(&node, "blue").is_some()
            && mirrored(&node, "red").is_none()),
        "the mirror did not catch up: {}",
        agent.log()
    );
    assert!(agent.log().contains("too old"), "{}", agent.log());
}

/// One raw message on the agent's socket, as any local root process could send it; the answer.
fn raw_ask(socket: &std::path::Path, msg: &[u8]) -> Value {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    // A peer that stops reading does not block the test: the answer comes after the whole message.
    let _ = s.write_all(msg);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    serde_json::from_slice(&buf).unwrap_or(Value::Null)
}

#[test]
fn reports_go_through_the_agent_which_acts_on_nothing_else_and_is_never_required() {
    require_reference_plugins();
    let mut node = Node::new("relay");
    let api = cluster(&node, &["r1", "r2", "r3", "r4", "r5", "r6"], "red");
    let token = api.token("kube-system", "attache", None);
    let kubeconfig = node.path("kubeconfig");
    api.write_kubeconfig(&kubeconfig, &token, false);
    let socket = node.path("run/agent.sock");
    let agent = Agent::start(&node, &kubeconfig);
    assert!(
        crate::poll::eventually(30, || socket.exists()),
        "no socket: {}",
        agent.log()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600,
        "the socket is root's alone"
    );
    let mut conf = meta_conf(&node, &kubeconfig);
    conf["agentSocket"] = json!(socket);
    conf["logLevel"] = json!("debug");
    let log_file = node.path("attache.log");
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    let added = |node: &mut Node, pod: &str| {
        let netns = node.pod();
        let uid = uid_of(&api, pod);
        cni(node, "ADD", pod, &netns, &uid, &conf).ok();
        (netns, uid)
    };

    // 1. Through the agent: the network-status is on the pod when ADD returns, the Events follow.
    let (ns1, uid1) = added(&mut node, "r1");
    let st = network_status(&api, "r1").expect("network-status written");
    assert_eq!(st[1]["name"], "team-a/red");
    assert!(log().contains("reported through the agent"), "{}", log());
    assert!(
        crate::poll::eventually(10, || api.get(&["events", "-n", NS])["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["involvedObject"]["uid"] == json!(uid1))
            .count()
            == 2),
        "the agent sent no events"
    );
    // DEL clears the annotation through the agent too.
    assert_eq!(cni(&node, "DEL", "r1", &ns1, &uid1, &conf).exit, 0);
    assert_eq!(network_status(&api, "r1"), None);

    // 2. A local client: garbage, a message over the bound, an order that is not a report, a pod
    // named as a path, and the right pod with another UID — none makes the agent do anything else,
    // and the replaced pod gets no status.
    let e = raw_ask(&socket, b"\x00\x01 not json");
    assert_eq!(e["ok"], false, "{e}");
    let e = raw_ask(&socket, &vec![b'{'; 300 << 10]);
    assert!(e["error"].as_str().unwrap_or("").contains("over"), "{e}");
    let e = raw_ask(
        &socket,
        br#"{"op":"exec","pod":{"namespace":"team-a","name":"r2","uid":"x"}}"#,
    );
    assert_eq!(e["ok"], false, "{e}");
    let e = raw_ask(
        &socket,
        br#"{"op":"report","pod":{"namespace":"../kube-system","name":"r2","uid":"u-1"},"status":[{"name":"x","default":true}],"waitMs":1000}"#,
    );
    assert!(
        e["error"].as_str().unwrap_or("").contains("pod name"),
        "{e}"
    );
    let wrong = json!({"op": "report", "pod": {"namespace": NS, "name": "r2", "uid": "00000000-0000-0000-0000-000000000000"},
                       "status": [{"name": "forged", "default": true}], "events": ["forged"], "waitMs": 2000});
    let e = raw_ask(&socket, wrong.to_string().as_bytes());
    assert_eq!(e, json!({"ok": true, "podGone": true}));
    assert_eq!(
        network_status(&api, "r2"),
        None,
        "a wrong UID wrote a status"
    );

    // 3. The agent is never required. Hung (stopped): ADD waits half its API deadline, then reports
    // itself.
    agent.signal("-STOP");
    let (ns3, _) = added(&mut node, "r3");
    agent.signal("-CONT");
    assert!(network_status(&api, "r3").is_some(), "{}", log());
    assert!(log().contains("did not answer"), "{}", log());
    // Killed: the socket is left and nobody listens.
    drop(agent);
    assert!(socket.exists());
    let (ns4, _) = added(&mut node, "r4");
    assert!(network_status(&api, "r4").is_some());
    // An agent that dies with the message read (the connection closes unanswered).
    std::fs::remove_file(&socket).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let dying = std::thread::spawn(move || {
        use std::io::Read;
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = c.read(&mut buf);
    });
    let (ns5, _) = added(&mut node, "r5");
    dying.join().unwrap();
    assert!(network_status(&api, "r5").is_some());
    // No socket at all.
    std::fs::remove_file(&socket).unwrap();
    let (ns6, _) = added(&mut node, "r6");
    assert!(network_status(&api, "r6").is_some());
    for (pod, netns) in [("r3", ns3), ("r4", ns4), ("r5", ns5), ("r6", ns6)] {
        let uid = uid_of(&api, pod);
        assert_eq!(cni(&node, "DEL", pod, &netns, &uid, &conf).exit, 0);
        assert_eq!(network_status(&api, pod), None);
    }
    assert!(node.files("cache").is_empty(), "{:?}", node.files("cache"));
}
