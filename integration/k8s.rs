//! The Kubernetes path end to end: the attache binary, exec'd per the CNI protocol in a test node netns,
//! talks to a small API server on 127.0.0.1 (real HTTP, the real `kube` client) serving recorded pod and
//! NetworkAttachmentDefinition JSON — or reads definitions from `networksDir` with no API at all.

use crate::apiserver::{ApiServer, pod_path};
use crate::testbed::{Node, require_reference_plugins};
use serde_json::{Value, json};

const POD_NS: &str = "team-a";
const POD_NAME: &str = "web-6d4cf56db6-x2x7q";
const POD_UID: &str = "5b6f5a2e-3c1d-4e8b-9f0a-7d2c1e4b8a90";
const STATUS: &str = "k8s.v1.cni.cncf.io/network-status";

fn fixture(node: &Node, name: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/k8s/").to_string() + name;
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text.replace("@DATA@", &node.path("ipam").display().to_string())).unwrap()
}

fn pod_with(node: &Node, networks: &str) -> Value {
    let mut p = fixture(node, "pod.json");
    p["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = json!(networks);
    p
}

/// The meta-plugin: the cluster network is Debian's ptp (exec'd), definitions from the API.
fn meta_conf(node: &Node, kubeconfig: bool) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "attache",
        "type": "attache",
        "clusterNetwork": {
            "cniVersion": "1.0.0", "name": "cluster", "type": "ptp",
            "ipam": {"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": node.path("ipam"),
                     "routes": [{"dst": "0.0.0.0/0"}]}
        },
        "cacheDir": node.path("cache"),
        "confDir": node.path("net.d"),
        "deviceCheckpoint": node.path("kubelet_internal_checkpoint"),
        "deviceInfoDir": node.path("devinfo"),
        "logFile": node.path("attache.log"),
        "logLevel": "debug"
    });
    if kubeconfig {
        c["kubeconfig"] = json!(node.path("kubeconfig"));
    }
    c
}

fn k8s_args(ns: &str, name: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=ctr1;K8S_POD_UID={POD_UID}"
    )
}

/// What the kubelet and a device plugin leave on a node for the pod's `example.com/blue-vf` device.
fn device_plugin_state(node: &Node) {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/k8s/");
    std::fs::copy(
        format!("{fixtures}kubelet_internal_checkpoint"),
        node.path("kubelet_internal_checkpoint"),
    )
    .unwrap();
    std::fs::create_dir_all(node.path("devinfo/dp")).unwrap();
    std::fs::copy(
        format!("{fixtures}devinfo-blue.json"),
        node.path("devinfo/dp/example.com-blue-vf-0000:af:06.3-device.json"),
    )
    .unwrap();
}

fn start_api(node: &Node) -> ApiServer {
    device_plugin_state(node);
    let api = ApiServer::start_in(&node.name);
    api.write_kubeconfig(&node.path("kubeconfig"));
    for nad in ["nad-red.json", "nad-blue.json", "nad-shared.json"] {
        api.put(fixture(node, nad));
    }
    api
}

fn leased(node: &Node) -> Vec<String> {
    node.files("ipam")
        .into_iter()
        .filter(|f| !f.ends_with("/lock") && !f.contains("last_reserved_ip"))
        .collect()
}

fn status_patches(api: &ApiServer) -> Vec<Value> {
    api.requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| {
            assert_eq!(r.path, format!("{}/status", pod_path(POD_NS, POD_NAME)));
            assert!(r.content_type.contains("merge-patch"), "{}", r.content_type);
            let body: Value = serde_json::from_str(&r.body).unwrap();
            serde_json::from_str(body["metadata"]["annotations"][STATUS].as_str().unwrap()).unwrap()
        })
        .collect()
}

/// Nothing of the pod's attachments is left: no interfaces, no addresses held, no record.
fn assert_nothing_attached(node: &Node, pod: &str) {
    assert_eq!(node.links(Some(pod)), vec!["lo".to_string()]);
    assert!(
        leased(node).is_empty(),
        "addresses held: {:?}",
        leased(node)
    );
    assert!(
        node.files("cache").is_empty(),
        "records left: {:?}",
        node.files("cache")
    );
}

#[test]
fn comma_form_attaches_in_order_and_reports_network_status() {
    require_reference_plugins();
    let mut node = Node::new("k8scomma");
    let pod = node.pod();
    let api = start_api(&node);
    api.put(pod_with(&node, "red, team-a/blue@fast1"));
    let conf = meta_conf(&node, true);
    let args = k8s_args(POD_NS, POD_NAME);
    let mut call = node.call("ADD", "ctr1", &pod, "eth0");
    call.args = &args;
    let res = node.exec(&call, &conf).ok();
    // The result is the cluster network's.
    assert!(
        res["ips"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("10.77.0."),
        "{res}"
    );
    let links = node.links(Some(&pod));
    for want in ["eth0", "net1", "fast1"] {
        assert!(
            links.contains(&want.to_string()),
            "{want} missing from {links:?}"
        );
    }
    assert!(node.addrs(Some(&pod), "net1")[0].starts_with("10.10.0."));
    assert!(node.addrs(Some(&pod), "fast1")[0].starts_with("10.20.0."));
    // The pod was read once, the two definitions once each, and network-status written once.
    let gets: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.path)
        .collect();
    assert!(gets.contains(&pod_path(POD_NS, POD_NAME)));
    assert!(
        gets.iter()
            .any(|p| p.ends_with("/network-attachment-definitions/red"))
    );
    let statuses = status_patches(&api);
    assert_eq!(statuses.len(), 1);
    let st = statuses[0].as_array().unwrap();
    assert_eq!(st.len(), 3);
    assert_eq!(st[0]["name"], "cluster");
    assert_eq!(st[0]["interface"], "eth0");
    assert_eq!(st[0]["default"], true);
    assert_eq!(
        st[0]["ips"][0],
        res["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
    );
    assert_eq!(st[1]["name"], "team-a/red");
    assert_eq!(st[1]["interface"], "net1");
    assert_eq!(st[1]["default"], false);
    let net1_mac = &node.ip(Some(&pod), &["link", "show", "net1"])[0]["address"];
    assert_eq!(&st[1]["mac"], net1_mac);
    assert_eq!(
        st[1]["ips"][0],
        node.addrs(Some(&pod), "net1")[0].split('/').next().unwrap()
    );
    assert_eq!(st[2]["name"], "team-a/blue");
    assert_eq!(st[2]["interface"], "fast1");
    // blue draws example.com/blue-vf devices: the pod's device is in its conf and its device-info here.
    assert_eq!(st[2]["device-info"]["pci"]["pci-address"], "0000:af:06.3");
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(node.path("cache/ctr1/eth0.json")).unwrap())
            .unwrap();
    assert_eq!(
        record["attachments"][2]["conf"]["plugins"][0]["deviceID"],
        "0000:af:06.3"
    );
    // One event per interface, the cluster network's too, with prefixes — as `kubectl describe pod`
    // shows Multus' (Add eth0 [10.77.0.2/24] from cluster).
    let events: Vec<Value> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| {
            assert_eq!(r.path, format!("/api/v1/namespaces/{POD_NS}/events"));
            serde_json::from_str(&r.body).unwrap()
        })
        .collect();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e["reason"] == "AddedInterface"));
    assert_eq!(events[0]["involvedObject"]["uid"], POD_UID);
    let msg = |i: usize| events[i]["message"].as_str().unwrap().to_string();
    assert!(
        msg(0).starts_with("Add eth0 [10.77.0.") && msg(0).ends_with("/24] from cluster"),
        "{}",
        msg(0)
    );
    assert!(
        msg(1).starts_with("Add net1 [10.10.0.") && msg(1).ends_with("/24] from team-a/red"),
        "{}",
        msg(1)
    );
    // The pod object now carries it.
    let stored = api.object(&pod_path(POD_NS, POD_NAME)).unwrap();
    assert!(
        stored["metadata"]["annotations"][STATUS]
            .as_str()
            .unwrap()
            .contains("fast1")
    );

    // The native interfaces joined one link group, so DEL removes them in one kernel unregister.
    let groups: Vec<Value> = ["net1", "fast1"]
        .iter()
        .map(|i| node.ip(Some(&pod), &["-d", "link", "show", i])[0]["group"].clone())
        .collect();
    assert_eq!(groups[0], groups[1]);
    assert_ne!(groups[0], json!("default"), "{groups:?}");

    // CHECK, then DEL removes everything.
    let mut check = node.call("CHECK", "ctr1", &pod, "eth0");
    check.args = &args;
    node.exec(&check, &conf).ok();
    let mut del = node.call("DEL", "ctr1", &pod, "eth0");
    del.args = &args;
    node.exec(&del, &conf).ok();
    assert_nothing_attached(&node, &pod);
}

#[test]
fn json_form_with_names_static_ips_mac_and_default_route() {
    require_reference_plugins();
    let mut node = Node::new("k8sjson");
    let pod = node.pod();
    let api = start_api(&node);
    api.put(pod_with(
        &node,
        r#"[{"name":"red","interface":"data0","ips":["10.10.0.42/24"],"mac":"0a:00:00:00:10:42","default-route":["10.10.0.1"]},
            {"name":"storage","namespace":"infra","interface":"st0","cni-args":{"note":"x"}}]"#,
    ));
    let mut conf = meta_conf(&node, true);
    // infra's definitions are shared with every namespace.
    conf["globalNamespaces"] = json!(["infra"]);
    let args = k8s_args(POD_NS, POD_NAME);
    let mut call = node.call("ADD", "ctr2", &pod, "eth0");
    call.args = &args;
    node.exec(&call, &conf).ok();
    assert_eq!(
        node.addrs(Some(&pod), "data0"),
        vec!["10.10.0.42/24".to_string()]
    );
    assert_eq!(
        node.ip(Some(&pod), &["link", "show", "data0"])[0]["address"],
        "0a:00:00:00:10:42"
    );
    assert!(node.addrs(Some(&pod), "st0")[0].starts_with("10.30.0."));
    // The pod's only default route now leaves through data0.
    let defaults: Vec<Value> = node
        .ip(Some(&pod), &["-4", "route", "show", "default"])
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(defaults.len(), 1, "{defaults:?}");
    assert_eq!(defaults[0]["dev"], "data0");
    assert_eq!(defaults[0]["gateway"], "10.10.0.1");
    let st = status_patches(&api).pop().unwrap();
    assert_eq!(st[1]["interface"], "data0");
    assert_eq!(st[1]["mac"], "0a:00:00:00:10:42");
    assert_eq!(st[1]["gateway"], json!(["10.10.0.1"]));
    assert!(
        st[0].get("gateway").is_none(),
        "the cluster entry lost its default route: {}",
        st[0]
    );
    assert_eq!(st[2]["name"], "infra/storage");
    let mut del = node.call("DEL", "ctr2", &pod, "eth0");
    del.args = &args;
    node.exec(&del, &conf).ok();
    assert_nothing_attached(&node, &pod);
}

#[test]
fn refusals_attach_nothing() {
    require_reference_plugins();
    let mut node = Node::new("k8sno");
    let pod = node.pod();
    let api = start_api(&node);
    let conf = meta_conf(&node, true);
    let args = k8s_args(POD_NS, POD_NAME);
    for (networks, needle) in [
        ("infra/storage@st0,red", "namespaceIsolation"),
        ("red,nosuch", "team-a/nosuch not found"),
        ("red@net1,blue@net1", "used twice"),
        // One example.com/blue-vf device was allocated to the pod: a second blue attachment has none.
        ("blue,blue@b2", "needs a device"),
        ("Red_Net", "Red_Net"),
        (r#"[{"name":"blue","ips":["10.20.0.9"]}]"#, "capability"),
        (r#"[{"name":"red","interface":"eth0"}]"#, "used twice"),
    ] {
        api.put(pod_with(&node, networks));
        let mut call = node.call("ADD", "ctr3", &pod, "eth0");
        call.args = &args;
        let e = node.exec(&call, &conf).err(7);
        let msg = e["msg"].as_str().unwrap();
        assert!(msg.contains(needle), "{networks}: {msg}");
        assert!(
            msg.contains(POD_NAME) || msg.contains("team-a/nosuch"),
            "{networks}: the pod is not named: {msg}"
        );
        assert_nothing_attached(&node, &pod);
    }
    assert!(status_patches(&api).is_empty());
    // With isolation off the other namespace's definition is allowed.
    let mut open = conf.clone();
    open["namespaceIsolation"] = json!(false);
    api.put(pod_with(&node, "infra/storage@st0"));
    let mut call = node.call("ADD", "ctr4", &pod, "eth0");
    call.args = &args;
    node.exec(&call, &open).ok();
    assert!(node.links(Some(&pod)).contains(&"st0".to_string()));
}

#[test]
fn system_namespaces_and_plain_runtimes_get_the_cluster_network_only() {
    require_reference_plugins();
    let mut node = Node::new("k8ssys");
    let api = start_api(&node);
    let conf = meta_conf(&node, true);
    let mut sys_pod = pod_with(&node, "red");
    sys_pod["metadata"]["namespace"] = json!("kube-system");
    api.put(sys_pod);
    let pod = node.pod();
    let args = k8s_args("kube-system", POD_NAME);
    let mut call = node.call("ADD", "ctr5", &pod, "eth0");
    call.args = &args;
    node.exec(&call, &conf).ok();
    assert_eq!(
        node.links(Some(&pod)),
        vec!["lo".to_string(), "eth0".to_string()]
    );
    // No K8S_* args at all: a plain runtime.
    let pod2 = node.pod();
    node.exec(&node.call("ADD", "ctr6", &pod2, "eth0"), &conf)
        .ok();
    assert_eq!(
        node.links(Some(&pod2)),
        vec!["lo".to_string(), "eth0".to_string()]
    );
    assert!(
        api.requests()
            .iter()
            .all(|r| !r.path.contains("kube-system/pods")),
        "system pods are not looked up"
    );
}

#[test]
fn networks_dir_and_runtime_annotations_need_no_api() {
    require_reference_plugins();
    let mut node = Node::new("k8sdir");
    let pod = node.pod();
    let dir = node.path("networks");
    std::fs::create_dir_all(&dir).unwrap();
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/k8s/networks/team-a.yaml"
    );
    let text = std::fs::read_to_string(src)
        .unwrap()
        .replace("@DATA@", &node.path("ipam").display().to_string());
    std::fs::write(dir.join("team-a.yaml"), text).unwrap();
    let mut conf = meta_conf(&node, false);
    conf["networksDir"] = json!(dir);
    // What containerd passes when the conf declares the io.kubernetes.cri.pod-annotations capability.
    conf["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": {
        "k8s.v1.cni.cncf.io/networks": r#"[{"name":"red","interface":"red0"},{"name":"blue"}]"#}});
    let args = k8s_args(POD_NS, POD_NAME);
    let mut call = node.call("ADD", "ctr7", &pod, "eth0");
    call.args = &args;
    node.exec(&call, &conf).ok();
    assert!(node.addrs(Some(&pod), "red0")[0].starts_with("10.10.0."));
    assert!(node.addrs(Some(&pod), "net2")[0].starts_with("10.20.0."));
    let mut del = node.call("DEL", "ctr7", &pod, "eth0");
    del.args = &args;
    node.exec(&del, &conf).ok();
    assert_nothing_attached(&node, &pod);
}

#[test]
fn del_with_the_api_server_stopped_uses_the_record() {
    require_reference_plugins();
    let mut node = Node::new("k8sdown");
    let pod = node.pod();
    let mut api = start_api(&node);
    api.put(pod_with(&node, "red,blue"));
    let conf = meta_conf(&node, true);
    let args = k8s_args(POD_NS, POD_NAME);
    let mut call = node.call("ADD", "ctr8", &pod, "eth0");
    call.args = &args;
    node.exec(&call, &conf).ok();
    assert_eq!(leased(&node).len(), 3);
    api.stop();
    let mut del = node.call("DEL", "ctr8", &pod, "eth0");
    del.args = &args;
    node.exec(&del, &conf).ok();
    assert_nothing_attached(&node, &pod);
    // And DEL with no record, no API and no netns still succeeds.
    let mut del = node.call("DEL", "ctr8", "", "eth0");
    del.netns = None;
    del.args = &args;
    node.exec(&del, &conf).ok();
}

#[test]
fn add_with_the_api_server_down_is_try_again() {
    require_reference_plugins();
    let mut node = Node::new("k8stry");
    let pod = node.pod();
    let mut api = start_api(&node);
    api.stop();
    let conf = meta_conf(&node, true);
    let args = k8s_args(POD_NS, POD_NAME);
    let mut call = node.call("ADD", "ctr9", &pod, "eth0");
    call.args = &args;
    node.exec(&call, &conf).err(11);
    assert_nothing_attached(&node, &pod);
}

#[test]
fn a_failure_midway_undoes_the_attachments_before_it() {
    require_reference_plugins();
    let mut node = Node::new("k8smid");
    let pod = node.pod();
    let dir = node.path("networks");
    std::fs::create_dir_all(&dir).unwrap();
    // "tiny" has one address, already held by someone else: its ADD fails after eth0 and net1 exist.
    let ipam = node.path("ipam");
    std::fs::write(
        dir.join("nets.yaml"),
        format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: ok\n  namespace: team-a\nspec:\n  config: '{{\"cniVersion\":\"1.0.0\",\"type\":\"bridge\",\"bridge\":\"br-ok\",\"ipam\":{{\"type\":\"host-local\",\"subnet\":\"10.11.0.0/24\",\"dataDir\":\"{d}\"}}}}'\n---\napiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: tiny\n  namespace: team-a\nspec:\n  config: '{{\"cniVersion\":\"1.0.0\",\"type\":\"bridge\",\"bridge\":\"br-tiny\",\"ipam\":{{\"type\":\"host-local\",\"subnet\":\"10.12.0.0/24\",\"rangeStart\":\"10.12.0.5\",\"rangeEnd\":\"10.12.0.5\",\"dataDir\":\"{d}\"}}}}'\n",
            d = ipam.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(ipam.join("tiny")).unwrap();
    std::fs::write(ipam.join("tiny/10.12.0.5"), "someone-else\r\neth0").unwrap();
    let mut conf = meta_conf(&node, false);
    conf["networksDir"] = json!(dir);
    conf["runtimeConfig"] =
        json!({"io.kubernetes.cri.pod-annotations": {"k8s.v1.cni.cncf.io/networks": "ok,tiny"}});
    let args = k8s_args(POD_NS, POD_NAME);
    let mut call = node.call("ADD", "mid1", &pod, "eth0");
    call.args = &args;
    let e = node.exec(&call, &conf).err(999);
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.contains("team-a/tiny") && msg.contains("no IP addresses available"),
        "{msg}"
    );
    // eth0 and net1 were made, then undone: only the other holder's address is left.
    assert_eq!(node.links(Some(&pod)), vec!["lo".to_string()]);
    assert_eq!(leased(&node), vec!["tiny/10.12.0.5".to_string()]);
    assert!(node.files("cache").is_empty());
}
