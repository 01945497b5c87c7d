//! `ipam`: attache-ipam's warm ADD exec'd as an IPAM plugin against the reference host-local (from a
//! pre-seeded block, no API reachable), the same in-process under the drop-in macvlan, and 10 simulated
//! nodes x 100 exec'd ADDs at once against a real kube-apiserver + etcd (`integration/realserver`,
//! started in the node netns), counting the plugin's API writes in the audit log.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Exec, Model, POD_ARGS, Series, Side, compare, cpu_line, exec};
use crate::poll::eventually;
use crate::realserver::{Options, RealApi};
use crate::report::{Report, output};
use crate::{Args, Pods};

/// The warm rows' range: one block (`blockSize` = the range's prefix), pre-seeded as this node's.
pub(crate) const IPAM_WARM_RANGE: &str = "10.220.0.0/16";

pub(crate) const IPAM_WARM_GATEWAY: &str = "10.220.0.1";

/// The scale row: simulated nodes, exec'd ADDs each (all at once), the range and its block size.
pub(crate) const SCALE_NODES: usize = 10;

pub(crate) const SCALE_PODS: usize = 100;

pub(crate) const SCALE_RANGE: &str = "10.40.0.0/20";

pub(crate) const SCALE_BLOCK: u8 = 26;

/// The plugin's user on the bench's API server (a static token): the audit log counts its requests.
pub(crate) const PLUGIN_USER: &str = "attache-ipam-bench";

/// The kube-apiserver binary, and the tools the server needs: resolved before anything runs, so that a
/// machine without them fails at once, not after the other sections.
pub(crate) fn kube_apiserver() -> PathBuf {
    let p = crate::realserver::kube_apiserver();
    assert!(
        !output(&["sh", "-c", "command -v kubectl"]).is_empty(),
        "kubectl is missing: scripts/bench installs kubernetes-client"
    );
    p
}

/// An IPAM plugin's network configuration: a main plugin (never run here) with `ipam`.
pub(crate) fn ipam_netconf(name: &str, kind: &str, ipam: Value) -> Value {
    json!({"cniVersion": "1.0.0", "name": name, "type": kind, "ipam": ipam})
}

/// attache-ipam's `ipam` object for the warm rows: the range in one block, and a kubeconfig that does not
/// exist, so that any API access fails the ADD (and the benchmark) loudly.
pub(crate) fn warm_cluster_ipam(data_dir: &Path, a: &Args) -> Value {
    json!({"type": "attache-ipam", "range": IPAM_WARM_RANGE, "blockSize": 16,
        "gateway": IPAM_WARM_GATEWAY, "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": data_dir, "nodeName": "bench-node",
        "kubeconfig": a.work.join("no-such-kubeconfig"), "apiTimeout": 10})
}

/// host-local's `ipam` object equivalent to [`warm_cluster_ipam`]: the same range as its subnet (whose
/// default gateway is the same first address).
pub(crate) fn warm_host_local_ipam(data_dir: &Path) -> Value {
    json!({"type": "host-local", "subnet": IPAM_WARM_RANGE, "gateway": IPAM_WARM_GATEWAY,
        "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data_dir})
}

/// Make the warm range's one block this node's, as a claim leaves it: the `owned/<block>` record,
/// written by attache-ipam's own code. The ADDs then take the hot path (no API call).
pub(crate) fn seed_warm_block(data_dir: &Path) {
    use attache::ipam::cluster::block::Block;
    use attache::ipam::cluster::local::{Local, Owned};
    let net: ipnet::IpNet = IPAM_WARM_RANGE.parse().unwrap();
    let block = Block::of(net);
    let local = Local::new(data_dir, attache::ipam::cluster::DEFAULT_POOL);
    local
        .adopt(
            &block,
            &Owned {
                name: format!(
                    "{}-{}",
                    attache::ipam::cluster::DEFAULT_POOL,
                    block.dir_name()
                ),
                uid: "bench-seeded-block".into(),
                cidr: net.to_string(),
                range: net.to_string(),
            },
        )
        .unwrap();
    assert_eq!(local.owned().unwrap(), vec![block]);
}

/// The binary under the name an IPAM plugin is found by, `attache-ipam`: a symlink to the release
/// binary, in `<work>/bin`.
pub(crate) fn attache_ipam_bin(a: &Args) -> PathBuf {
    let dir = a.work.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join(attache::ipam::cluster::TYPE);
    if !bin.exists() {
        let target = std::fs::canonicalize(&a.attache).unwrap();
        std::os::unix::fs::symlink(target, &bin).unwrap();
    }
    bin
}

/// One exec of an IPAM plugin, as a main plugin runs it (an IPAM plugin never enters `netns`).
pub(crate) fn ipam_exec(
    a: &Args,
    bin: &Path,
    cmd: &str,
    id: &str,
    netns: &str,
    conf: &str,
) -> Exec {
    let env = [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "net1"),
        ("CNI_ARGS", POD_ARGS),
        ("CNI_PATH", a.reference_dir.to_str().unwrap()),
    ];
    exec(bin, &env, conf.as_bytes())
}

/// Warm ADD: attache-ipam exec'd as an IPAM plugin, from a block the node owns, against the reference
/// host-local with the same range; then the same IPAMs in-process under attache's drop-in macvlan.
pub(crate) fn ipam_warm_rows(a: &Args, pods: &mut Pods, r: &mut Report) {
    let bin = attache_ipam_bin(a);
    let cluster_data = a.work.join("ipam-cluster-warm");
    let cluster_mv_data = a.work.join("ipam-cluster-warm-macvlan");
    let hl_data = a.work.join("ipam-host-local-warm");
    seed_warm_block(&cluster_data);
    seed_warm_block(&cluster_mv_data);
    // The guard holds: without a block of its own, the same ADD needs the API, and fails.
    let probe = ipam_exec(
        a,
        &bin,
        "ADD",
        "ipam-probe",
        &pods.add(format!("{}-ipam-probe", a.tag)),
        &ipam_netconf(
            "ipamcl",
            "macvlan",
            warm_cluster_ipam(&a.work.join("ipam-cluster-probe"), a),
        )
        .to_string(),
    );
    let said = String::from_utf8_lossy(&probe.out);
    assert!(
        !probe.ok,
        "attache-ipam allocated with no block and no kubeconfig: {said}"
    );
    let host_local = Model::one(
        &a.reference_dir.join("host-local"),
        &ipam_netconf("ipamhl", "macvlan", warm_host_local_ipam(&hl_data)),
    );
    let cluster = Model::one(
        &bin,
        &ipam_netconf("ipamcl", "macvlan", warm_cluster_ipam(&cluster_data, a)),
    );
    let [hl, cl]: [Side; 2] = compare(a, pods, "ipam", &[&host_local, &cluster], a.rounds)
        .try_into()
        .ok()
        .unwrap();
    println!();
    println!(
        "attache-ipam, warm (exec'd as an IPAM plugin; a block of the node's covers the range, the kubeconfig does not exist: no API call can happen):"
    );
    let msg: Value = serde_json::from_str(&said).unwrap_or_default();
    println!(
        "  (without the block, the same ADD fails: {})",
        msg["msg"].as_str().unwrap_or(&said)
    );
    let ha = r.row("ipam_host_local_add", "reference host-local ADD", &hl.add);
    let ca = r.row("ipam_attache_ipam_add", "attache-ipam ADD", &cl.add);
    let hd = r.row("ipam_host_local_del", "reference host-local DEL", &hl.del);
    let cd = r.row("ipam_attache_ipam_del", "attache-ipam DEL", &cl.del);
    println!(
        "  ratio attache-ipam/host-local (medians): ADD {:.2}x   DEL {:.2}x",
        ca / ha,
        cd / hd
    );
    cpu_line(r, "ipam", ["host_local", "attache_ipam"], [&hl, &cl]);
    r.figure("ipam_ratio_add", ca / ha);
    r.figure("ipam_ratio_del", cd / hd);
    r.figure("ipam_host_local_add_peak_rss_kib", hl.add_rss_kib);
    r.figure("ipam_attache_ipam_add_peak_rss_kib", cl.add_rss_kib);
    let owned = attache::ipam::cluster::local::Local::new(
        &cluster_data,
        attache::ipam::cluster::DEFAULT_POOL,
    )
    .owned()
    .unwrap();
    assert_eq!(owned.len(), 1, "the warm rows claimed a block: {owned:?}");
    r.target(
        "attache-ipam warm ADD (exec'd), attache-ipam/host-local",
        ca / ha,
        1.10,
        "x",
    );
    pods.flush();

    // The same IPAMs in-process: attache as the drop-in macvlan, with each.
    let macvlan = |name: &str, ipam: Value| {
        let mut c = ipam_netconf(name, "macvlan", ipam);
        c["master"] = json!(a.master);
        c["mode"] = json!("bridge");
        Model::one(&a.attache, &c)
    };
    let mv_hl = macvlan(
        "ipammvhl",
        warm_host_local_ipam(&a.work.join("ipam-host-local-warm-macvlan")),
    );
    let mv_cl = macvlan("ipammvcl", warm_cluster_ipam(&cluster_mv_data, a));
    let [hl, cl]: [Side; 2] = compare(a, pods, "ipammv", &[&mv_hl, &mv_cl], a.rounds)
        .try_into()
        .ok()
        .unwrap();
    println!();
    println!(
        "attache drop-in macvlan, its IPAM in-process: host-local vs attache-ipam (warm block):"
    );
    let ha = r.row(
        "ipam_macvlan_host_local_add",
        "macvlan + host-local ADD",
        &hl.add,
    );
    let ca = r.row(
        "ipam_macvlan_attache_ipam_add",
        "macvlan + attache-ipam ADD",
        &cl.add,
    );
    let hd = r.row(
        "ipam_macvlan_host_local_del",
        "macvlan + host-local DEL",
        &hl.del,
    );
    let cd = r.row(
        "ipam_macvlan_attache_ipam_del",
        "macvlan + attache-ipam DEL",
        &cl.del,
    );
    println!(
        "  ratio attache-ipam/host-local (medians): ADD {:.2}x   DEL {:.2}x",
        ca / ha,
        cd / hd
    );
    cpu_line(
        r,
        "ipam_macvlan",
        ["host_local", "attache_ipam"],
        [&hl, &cl],
    );
    r.figure("ipam_macvlan_ratio_add", ca / ha);
    r.figure("ipam_macvlan_ratio_del", cd / hd);
    pods.flush();
}

/// The CustomResourceDefinitions of deploy/attache.yaml (only those documents).
pub(crate) fn ipam_crds() -> String {
    let deploy =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/attache.yaml"))
            .expect("deploy/attache.yaml");
    let crds: Vec<&str> = deploy
        .split("\n---\n")
        .filter(|d| {
            d.lines()
                .any(|l| l.trim() == "kind: CustomResourceDefinition")
        })
        .collect();
    assert!(
        crds.iter()
            .any(|d| d.contains("addressblocks.ipam.attache.dev")),
        "deploy/attache.yaml has no AddressBlock CRD"
    );
    crds.join("\n---\n")
}

/// One exec'd ADD of the scale row.
pub(crate) struct ScaleAdd {
    pub(crate) node: usize,
    pub(crate) ip: IpAddr,
    pub(crate) dur: Duration,
}

/// Scale against a real API server: 10 simulated nodes (each its own nodeName, dataDir and thread, one
/// range) exec attache-ipam's ADD 100 times each, all at once; the wall time, the blocks claimed and the
/// plugin's API writes (from the audit log), and no address twice.
pub(crate) fn ipam_scale_rows(a: &Args, pods: &mut Pods, r: &mut Report) {
    let bin = attache_ipam_bin(a);
    println!();
    println!(
        "attache-ipam at scale: a real kube-apiserver (+ etcd) in the node netns; {SCALE_NODES} simulated nodes x {SCALE_PODS} exec'd ADDs, all nodes at once, range {SCALE_RANGE} in /{SCALE_BLOCK} blocks"
    );
    let t = Instant::now();
    // AlwaysAllow: the plugin's user needs no RBAC here (its requests are what is counted).
    let plugin_token = format!("{PLUGIN_USER}-token-{}", std::process::id());
    let api = RealApi::start(Options {
        authorization: "AlwaysAllow",
        users: vec![(plugin_token.clone(), PLUGIN_USER.into())],
        ..Options::new(a.work.join("apiserver"), None)
    });
    let plugin_kubeconfig = api.dir.join("plugin.kubeconfig");
    api.write_kubeconfig(&plugin_kubeconfig, &plugin_token, false);
    let crds = api.apply(&ipam_crds(), &[]);
    assert!(
        crds.status.success(),
        "applying the CRDs: {}",
        String::from_utf8_lossy(&crds.stderr)
    );
    // The CRDs are served a moment after they are created.
    let served = eventually(60, || {
        api.kubectl(&["get", "addressblocks.ipam.attache.dev"])
            .status
            .success()
    });
    assert!(served, "the AddressBlock CRD is not served: {}", api.log());
    let nodes: Vec<String> = (0..SCALE_NODES).map(|i| format!("worker-{i}")).collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": nodes.iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}))
        .collect::<Vec<_>>()});
    let created = api.kubectl_with(&["create", "-f", "-"], Some(&list.to_string()));
    assert!(
        created.status.success(),
        "creating the Node objects: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    println!(
        "  API server up, CRDs served, {SCALE_NODES} Node objects in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // An IPAM plugin is given the pod's netns and never enters it: one for every call.
    let netns = pods.add(format!("{}-scale", a.tag));
    let confs: Vec<String> = nodes
        .iter()
        .map(|n| {
            ipam_netconf(
                "scale",
                "macvlan",
                json!({"type": "attache-ipam", "range": SCALE_RANGE, "blockSize": SCALE_BLOCK,
                    "dataDir": a.work.join("scale").join(n), "nodeName": n,
                    "kubeconfig": plugin_kubeconfig, "network_name": "default",
                    "apiTimeout": 10}),
            )
            .to_string()
        })
        .collect();
    let start = Instant::now();
    let adds: Vec<ScaleAdd> = std::thread::scope(|s| {
        let jobs: Vec<_> = confs
            .iter()
            .enumerate()
            .map(|(node, conf)| {
                let (netns, bin) = (&netns, &bin);
                s.spawn(move || {
                    (0..SCALE_PODS)
                        .map(|k| {
                            let id = format!("scale-{node}-{k}");
                            let e = ipam_exec(a, bin, "ADD", &id, netns, conf);
                            let out = String::from_utf8_lossy(&e.out);
                            assert!(e.ok, "attache-ipam ADD {id} failed: {out}");
                            let res: Value = serde_json::from_slice(&e.out)
                                .unwrap_or_else(|err| panic!("ADD {id}: {err}: {out}"));
                            let addr: ipnet::IpNet = res["ips"][0]["address"]
                                .as_str()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or_else(|| panic!("ADD {id}: no address: {out}"));
                            ScaleAdd {
                                node,
                                ip: addr.addr(),
                                dur: e.dur,
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        jobs.into_iter().flat_map(|j| j.join().unwrap()).collect()
    });
    let wall = start.elapsed();
    assert_eq!(adds.len(), SCALE_NODES * SCALE_PODS);

    // No address twice; every address in a block its node owns in the API; blocks disjoint.
    let mut seen = std::collections::BTreeMap::new();
    for add in &adds {
        if let Some(other) = seen.insert(add.ip, add.node) {
            panic!(
                "BUG: {} was handed out twice (to worker-{other} and worker-{})",
                add.ip, add.node
            );
        }
    }
    let blocks: Vec<(ipnet::IpNet, String)> = api.get(&["addressblocks.ipam.attache.dev"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["spec"]["cidr"].as_str().unwrap().parse().unwrap(),
                b["spec"]["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (i, (x, _)) in blocks.iter().enumerate() {
        for (y, _) in &blocks[i + 1..] {
            assert!(
                !x.contains(&y.network()) && !y.contains(&x.network()),
                "BUG: blocks {x} and {y} overlap"
            );
        }
    }
    for add in &adds {
        let owner = blocks.iter().find(|(n, _)| n.contains(&add.ip));
        assert!(
            owner.is_some_and(|(_, o)| *o == nodes[add.node]),
            "BUG: {} handed out by {} lies in {owner:?}",
            add.ip,
            nodes[add.node]
        );
    }
    let pools = api.get(&["addresspools.ipam.attache.dev"]);
    let ranges: usize = pools["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["spec"]["ranges"].as_array().map_or(0, Vec::len))
        .sum();
    // The audit log's last entries may trail the answers a moment.
    let mut writes = plugin_writes(&api);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let again = plugin_writes(&api);
        if again.len() == writes.len() {
            break;
        }
        writes = again;
    }
    let requests = api.audit_of(PLUGIN_USER).len();
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    for (verb, res) in &writes {
        *by_kind.entry(format!("{verb} {res}")).or_default() += 1;
    }
    let pods_n = adds.len() as f64;
    let lat = Series(adds.iter().map(|x| x.dur).collect());
    let slowest = lat.0.iter().max().copied().unwrap_or_default();
    println!(
        "  {} ADDs in {:.2} s wall ({:.1} ADDs/s); no address twice, each in a block of its node",
        adds.len(),
        wall.as_secs_f64(),
        pods_n / wall.as_secs_f64()
    );
    r.row("ipam_scale_add", "one exec'd ADD, 10 nodes at once", &lat);
    println!(
        "  slowest ADD {:.1} ms; AddressBlocks {}, ranges registered {ranges}; the plugin's requests {requests}, of which API writes {} ({}): {:.3} per pod",
        slowest.as_secs_f64() * 1000.0,
        blocks.len(),
        writes.len(),
        by_kind
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        writes.len() as f64 / pods_n
    );
    r.figure("ipam_scale_wall_s", wall.as_secs_f64());
    r.figure("ipam_scale_adds", adds.len());
    r.figure("ipam_scale_blocks", blocks.len());
    r.figure("ipam_scale_ranges_registered", ranges);
    r.figure("ipam_scale_plugin_requests", requests);
    r.figure("ipam_scale_writes", writes.len());
    r.figure("ipam_scale_writes_per_pod", writes.len() as f64 / pods_n);
    r.figure("ipam_scale_slowest_add_ms", slowest.as_secs_f64() * 1000.0);
    r.figure(
        "ipam_scale_writes_by_kind",
        serde_json::to_value(&by_kind).unwrap(),
    );
    r.target(
        &format!(
            "attache-ipam: {} exec'd ADDs on {SCALE_NODES} nodes in parallel, wall",
            adds.len()
        ),
        wall.as_secs_f64(),
        10.0,
        "s",
    );
    r.target(
        "attache-ipam: API writes <= blocks claimed + ranges registered",
        writes.len() as f64,
        (blocks.len() + ranges) as f64,
        "",
    );
    drop(api);
    pods.flush();
}

/// The plugin's accepted writes to attache-ipam's resources, as `(verb, resource)`: its audit entries to
/// group ipam.attache.dev that are not reads, with a 2xx answer.
fn plugin_writes(api: &RealApi) -> Vec<(String, String)> {
    api.audit_of(PLUGIN_USER)
        .iter()
        .filter(|e| {
            e["objectRef"]["apiGroup"] == "ipam.attache.dev"
                && !matches!(e["verb"].as_str(), Some("get" | "list" | "watch"))
                && e["responseStatus"]["code"]
                    .as_u64()
                    .is_some_and(|c| (200..300).contains(&c))
        })
        .map(|e| {
            (
                e["verb"].as_str().unwrap_or_default().to_string(),
                e["objectRef"]["resource"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}
