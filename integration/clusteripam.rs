//! attache-ipam against a real kube-apiserver (v1.20.2 over etcd, see realserver/): many simulated nodes on
//! one machine — each its own node name and dataDir, a Node object, the `attache` ServiceAccount's token —
//! exec'ing the binary installed as `attache-ipam`, the way an exec'd main plugin (sriov, the reference
//! macvlan) runs its IPAM. What a user checks: no address twice anywhere, every address inside a block its
//! node owns in the API, one API write per block (not per pod), clean errors that leave nothing behind,
//! and nodes that keep working while the API server is down.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::realserver::RealApi;
use crate::testbed::{CniOutput, Node, attache_bin};
use ipnet::IpNet;
use serde_json::{Value, json};

const ATTACHE_USER: &str = "system:serviceaccount:kube-system:attache";

fn deploy() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/attache.yaml")).unwrap()
}

/// The API server in `host`'s netns with `deploy/` applied, and a kubeconfig with the attache
/// ServiceAccount's token (so RBAC is the deployed one).
struct Cluster {
    api: RealApi,
    kubeconfig: PathBuf,
    bin: PathBuf,
    /// The pod netns every call names.
    netns: String,
}

impl Cluster {
    fn start(host: &mut Node) -> Cluster {
        let api = RealApi::start(crate::realserver::Options::new(
            host.path("apiserver"),
            Some(format!("/run/netns/{}", host.name)),
        ));
        let out = api.apply(&deploy(), &[]);
        assert!(
            out.status.success(),
            "applying deploy/: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            crate::poll::eventually(30, || api
                .kubectl(&["get", "addressblocks.ipam.attache.dev"])
                .status
                .success()),
            "the AddressBlock CRD is not served"
        );
        let token = api.token("kube-system", "attache", None);
        let kubeconfig = host.path("attache.kubeconfig");
        api.write_kubeconfig(&kubeconfig, &token, false);
        // The binary under the name an IPAM plugin is found by.
        let bindir = host.path("bin");
        std::fs::create_dir_all(&bindir).unwrap();
        let bin = bindir.join("attache-ipam");
        std::os::unix::fs::symlink(attache_bin(), &bin).unwrap();
        Cluster {
            api,
            kubeconfig,
            bin,
            // An IPAM plugin is given the pod's netns and never enters it.
            netns: host.pod(),
        }
    }

    /// A simulated node: a Node object and its own dataDir under `host`.
    fn node(&self, host: &Node, name: &str) -> Sim {
        self.api.create_node(name);
        Sim {
            name: name.to_string(),
            data_dir: host.path(&format!("ipam-{name}")),
        }
    }

    /// The IPAM configuration `sim` runs with (on top of `extra`).
    fn conf(&self, sim: &Sim, ipam: Value) -> Value {
        let mut i = json!({"type": "attache-ipam", "dataDir": sim.data_dir, "nodeName": sim.name,
                           "kubeconfig": self.kubeconfig, "apiTimeout": 10});
        for (k, v) in ipam.as_object().unwrap() {
            i[k] = v.clone();
        }
        json!({"cniVersion": "1.0.0", "name": "blue", "type": "macvlan", "ipam": i})
    }

    /// Run attache-ipam as `sim`.
    fn run(&self, host: &Node, cmd: &str, id: &str, conf: &Value) -> CniOutput {
        self.run_args(host, cmd, id, conf, "")
    }

    fn run_args(&self, host: &Node, cmd: &str, id: &str, conf: &Value, args: &str) -> CniOutput {
        let mut call = host.call(cmd, id, &self.netns, "net1");
        call.bin = self.bin.clone();
        call.args = args;
        host.exec(&call, conf)
    }

    /// Every AddressBlock: name -> (cidr, node).
    fn blocks(&self) -> BTreeMap<String, (IpNet, String)> {
        let list = self.api.get(&["addressblocks.ipam.attache.dev"]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["metadata"]["name"].as_str().unwrap().to_string(),
                    (
                        b["spec"]["cidr"].as_str().unwrap().parse().unwrap(),
                        b["spec"]["node"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    }

    /// attache's writes (create, update, patch, delete) to attache-ipam's resources, by verb and resource,
    /// counting only those the API server accepted.
    fn writes(&self) -> Vec<(String, String)> {
        self.api
            .audit_of(ATTACHE_USER)
            .into_iter()
            .filter(|e| {
                e["objectRef"]["apiGroup"] == "ipam.attache.dev"
                    && !matches!(e["verb"].as_str(), Some("get" | "list" | "watch"))
                    && e["responseStatus"]["code"]
                        .as_u64()
                        .is_some_and(|c| c < 300)
            })
            .map(|e| {
                (
                    e["verb"].as_str().unwrap().to_string(),
                    e["objectRef"]["resource"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

struct Sim {
    name: String,
    data_dir: PathBuf,
}

impl Sim {
    /// Files this node keeps for pool `pool`: `owned/` and the IP files of its block stores.
    fn state(&self, pool: &str) -> (Vec<String>, Vec<String>) {
        let dir = self.data_dir.join(pool);
        let list = |p: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        let owned = list(&dir.join("owned"));
        let mut ips = Vec::new();
        for b in list(&dir.join("blocks")) {
            for f in list(&dir.join("blocks").join(&b)) {
                if f.parse::<IpAddr>().is_ok() {
                    ips.push(f);
                }
            }
        }
        ips.sort();
        (owned, ips)
    }
}

fn ip_of(res: &Value) -> IpAddr {
    crate::testbed::first_ip(res).parse().unwrap()
}

/// The invariants every test checks: addresses distinct, each inside a block its node owns in the API,
/// blocks pairwise disjoint.
fn assert_consistent(c: &Cluster, handed: &[(String, IpAddr)]) {
    let blocks = c.blocks();
    let nets: Vec<&IpNet> = blocks.values().map(|(n, _)| n).collect();
    for (i, a) in nets.iter().enumerate() {
        for b in nets.iter().skip(i + 1) {
            assert!(
                !a.contains(&b.network()) && !b.contains(&a.network()),
                "blocks {a} and {b} overlap"
            );
        }
    }
    let mut seen = BTreeSet::new();
    for (node, ip) in handed {
        assert!(seen.insert(*ip), "{ip} was handed out twice");
        let owner = blocks.values().find(|(n, _)| n.contains(ip));
        assert!(
            owner.is_some_and(|(_, o)| o == node),
            "{ip} handed out by {node} lies in {owner:?}"
        );
    }
}

#[test]
fn a_thousand_pods_on_ten_nodes_share_one_range_without_a_duplicate() {
    let mut host = Node::new("cipam");
    let c = Cluster::start(&mut host);
    let sims: Vec<Sim> = (0..10)
        .map(|i| c.node(&host, &format!("worker-{i}")))
        .collect();
    let ipam =
        json!({"range": "10.40.0.0/20", "blockSize": 26, "routes": [{"dst": "10.41.0.0/16"}]});
    let start = std::time::Instant::now();
    // One thread per node, and on worker-0 four at once (one claim at a time per node).
    let handed: Vec<(String, IpAddr)> = std::thread::scope(|s| {
        let mut jobs = Vec::new();
        for (i, sim) in sims.iter().enumerate() {
            let threads = if i == 0 { 4 } else { 1 };
            for t in 0..threads {
                let (c, host, ipam) = (&c, &host, &ipam);
                jobs.push(s.spawn(move || {
                    let conf = c.conf(sim, ipam.clone());
                    (0..100 / threads)
                        .map(|k| {
                            let id = format!("{}-t{t}-c{k}", sim.name);
                            let res = c.run(host, "ADD", &id, &conf).ok();
                            assert_eq!(res["routes"][0]["dst"], "10.41.0.0/16");
                            assert!(res["ips"][0]["address"].as_str().unwrap().ends_with("/20"));
                            (sim.name.clone(), ip_of(&res))
                        })
                        .collect::<Vec<_>>()
                }));
            }
        }
        jobs.into_iter().flat_map(|j| j.join().unwrap()).collect()
    });
    let took = start.elapsed();
    assert_eq!(handed.len(), 1000);
    assert_consistent(&c, &handed);
    let blocks = c.blocks();
    // 100 pods need two /26 blocks per node; a node never claims a block it does not need.
    for sim in &sims {
        let n = blocks.values().filter(|(_, o)| *o == sim.name).count();
        assert_eq!(n, 2, "{} owns {n} blocks", sim.name);
        let (owned, ips) = sim.state("default");
        assert_eq!(owned.len(), 2);
        assert_eq!(ips.len(), 100);
    }
    // One write per block claimed, plus the range's registration in the pool: not one per pod.
    let writes = c.writes();
    let creates = writes
        .iter()
        .filter(|(v, r)| v == "create" && r == "addressblocks")
        .count();
    assert_eq!(creates, blocks.len(), "{writes:?}");
    assert!(
        writes.len() <= blocks.len() + 2,
        "more writes than blocks: {writes:?}"
    );
    crate::testbed::figure(&format!(
        "attache-ipam: 1000 ADDs on 10 nodes in {:.1} s (exec'd, parallel), {} blocks, {} API writes ({:.3} per pod)",
        took.as_secs_f64(),
        blocks.len(),
        writes.len(),
        writes.len() as f64 / 1000.0
    ));
    // DEL releases locally: no API call, nothing left.
    let before = c.api.audit_of(ATTACHE_USER).len();
    for sim in &sims[1..] {
        let conf = c.conf(sim, ipam.clone());
        for k in 0..100 {
            let id = format!("{}-t0-c{k}", sim.name);
            assert_eq!(c.run(&host, "DEL", &id, &conf).exit, 0);
        }
        assert!(
            sim.state("default").1.is_empty(),
            "{} kept addresses",
            sim.name
        );
    }
    assert_eq!(
        c.api.audit_of(ATTACHE_USER).len(),
        before,
        "DEL called the API"
    );
}

#[test]
fn two_nodes_racing_for_the_last_block_one_wins_the_other_fails_cleanly() {
    let mut host = Node::new("cipam-race");
    let c = Cluster::start(&mut host);
    let a = c.node(&host, "node-a");
    let (b, d) = (c.node(&host, "node-b"), c.node(&host, "node-c"));
    for round in 0..5 {
        // A /27 in /28 blocks: node-a takes one, node-b and node-c race for the other.
        let ipam = json!({"range": format!("10.50.{round}.0/27"), "blockSize": 28,
                          "network_name": format!("race-{round}")});
        let pool = format!("race-{round}");
        c.run(
            &host,
            "ADD",
            &format!("a-{round}"),
            &c.conf(&a, ipam.clone()),
        )
        .ok();
        let (rb, rd) = std::thread::scope(|s| {
            let jb = s.spawn(|| {
                c.run(
                    &host,
                    "ADD",
                    &format!("b-{round}"),
                    &c.conf(&b, ipam.clone()),
                )
            });
            let jd = s.spawn(|| {
                c.run(
                    &host,
                    "ADD",
                    &format!("c-{round}"),
                    &c.conf(&d, ipam.clone()),
                )
            });
            (jb.join().unwrap(), jd.join().unwrap())
        });
        let (win, lose, loser) = match (rb.exit, rd.exit) {
            (0, 0) => panic!("both won the last block: {} {}", rb.stdout, rd.stdout),
            (0, _) => (rb, rd, &d),
            (_, 0) => (rd, rb, &b),
            _ => panic!("nobody won: {} / {}", rb.stdout, rd.stdout),
        };
        let winner_ip = ip_of(&win.json());
        let e = lose.err(999);
        let msg = e["msg"].as_str().unwrap();
        assert!(msg.contains("is full"), "{msg}");
        assert!(msg.contains(&pool), "{msg}");
        // The loser keeps nothing: no block, no address.
        assert_eq!(loser.state(&pool), (vec![], vec![]));
        let in_pool: Vec<_> = c
            .blocks()
            .into_iter()
            .filter(|(n, _)| n.starts_with(&format!("{pool}-")))
            .collect();
        assert_eq!(in_pool.len(), 2, "{in_pool:?}");
        assert!(in_pool.iter().all(|(_, (net, _))| net.prefix_len() == 28));
        assert!(in_pool.iter().any(|(_, (net, _))| net.contains(&winner_ip)));
    }
}

#[test]
fn with_the_api_server_down_nodes_with_room_keep_attaching_and_others_fail_with_code_11() {
    let mut host = Node::new("cipam-down");
    let mut c = Cluster::start(&mut host);
    let a = c.node(&host, "node-a");
    let b = c.node(&host, "node-b");
    let ipam = json!({"range": "10.60.0.0/24", "blockSize": 26, "apiTimeout": 2});
    let (ca, cb) = (c.conf(&a, ipam.clone()), c.conf(&b, ipam.clone()));
    let mut handed = vec![(
        "node-a".to_string(),
        ip_of(&c.run(&host, "ADD", "a-0", &ca).ok()),
    )];

    c.api.stop_apiserver();
    for k in 1..=20 {
        let ip = ip_of(&c.run(&host, "ADD", &format!("a-{k}"), &ca).ok());
        handed.push(("node-a".into(), ip));
    }
    assert_eq!(c.run(&host, "DEL", "a-20", &ca).exit, 0);
    handed.pop();
    let e = c.run(&host, "ADD", "b-0", &cb).err(11);
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.contains("node-b needs a new block of pool default (range 10.60.0.0/24)"),
        "{msg}"
    );
    assert!(
        msg.contains("unreachable") || msg.contains("deadline"),
        "{msg}"
    );
    assert_eq!(b.state("default"), (vec![], vec![]), "node-b kept state");

    c.api.restart_apiserver();
    handed.push((
        "node-b".into(),
        ip_of(&c.run(&host, "ADD", "b-0", &cb).ok()),
    ));
    handed.push((
        "node-a".into(),
        ip_of(&c.run(&host, "ADD", "a-21", &ca).ok()),
    ));
    assert_consistent(&c, &handed);
    assert_eq!(c.blocks().len(), 2);
}

#[test]
fn overlapping_ranges_block_sizes_exclusions_and_a_full_pool() {
    let mut host = Node::new("cipam-overlap");
    let c = Cluster::start(&mut host);
    let a = c.node(&host, "node-a");
    let b = c.node(&host, "node-b");
    c.run(
        &host,
        "ADD",
        "x0",
        &c.conf(&a, json!({"range": "10.30.0.0/16"})),
    )
    .ok();
    // Another range of the same space that overlaps: refused, naming both.
    let e = c
        .run(
            &host,
            "ADD",
            "x1",
            &c.conf(&b, json!({"range": "10.30.5.0/24"})),
        )
        .err(7);
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.contains("10.30.5.0/24") && msg.contains("10.30.0.0/16"),
        "{msg}"
    );
    // The same range with another block size: refused.
    let e = c
        .run(
            &host,
            "ADD",
            "x2",
            &c.conf(&b, json!({"range": "10.30.0.0/16", "blockSize": 24})),
        )
        .err(7);
    assert!(e["msg"].as_str().unwrap().contains("blockSize"), "{e}");
    assert_eq!(b.state("default"), (vec![], vec![]));
    // Another network_name is another space: overlap allowed by intent.
    c.run(
        &host,
        "ADD",
        "x3",
        &c.conf(
            &b,
            json!({"range": "10.30.5.0/24", "network_name": "other"}),
        ),
    )
    .ok();

    // Two nodes registering overlapping ranges in a new space at once: exactly one is accepted.
    let (r1, r2) = std::thread::scope(|s| {
        let j1 = s.spawn(|| {
            c.run(
                &host,
                "ADD",
                "y1",
                &c.conf(&a, json!({"range": "10.31.0.0/16", "network_name": "dup"})),
            )
        });
        let j2 = s.spawn(|| {
            c.run(
                &host,
                "ADD",
                "y2",
                &c.conf(
                    &b,
                    json!({"range": "10.31.128.0/17", "network_name": "dup"}),
                ),
            )
        });
        (j1.join().unwrap(), j2.join().unwrap())
    });
    assert_eq!(
        [r1.exit, r2.exit].iter().filter(|e| **e == 0).count(),
        1,
        "{} / {}",
        r1.stdout,
        r2.stdout
    );
    let pool = c.api.get(&["addresspool.ipam.attache.dev", "dup"]);
    assert_eq!(
        pool["spec"]["ranges"].as_array().unwrap().len(),
        1,
        "{pool}"
    );

    // exclude and gateway hold; a full pool is a clean error.
    let ipam = json!({"range": "10.32.0.0/28", "gateway": "10.32.0.1", "exclude": ["10.32.0.8/30"],
                      "network_name": "small"});
    let conf = c.conf(&a, ipam);
    let mut got = BTreeSet::new();
    for k in 0..9 {
        let r = c.run(&host, "ADD", &format!("s{k}"), &conf).ok();
        assert_eq!(r["ips"][0]["gateway"], "10.32.0.1");
        got.insert(ip_of(&r).to_string());
    }
    let want: BTreeSet<String> = [2, 3, 4, 5, 6, 7, 12, 13, 14]
        .iter()
        .map(|i| format!("10.32.0.{i}"))
        .collect();
    assert_eq!(got, want);
    let e = c.run(&host, "ADD", "s9", &conf).err(999);
    assert!(e["msg"].as_str().unwrap().contains("is full"), "{e}");
    assert_eq!(a.state("small").1.len(), 9, "the failed ADD left a file");
    // Another node finds no block at all in this range.
    let e = c
        .run(
            &host,
            "ADD",
            "s10",
            &c.conf(
                &b,
                json!({"range": "10.32.0.0/28", "gateway": "10.32.0.1",
        "exclude": ["10.32.0.8/30"], "network_name": "small"}),
            ),
        )
        .err(999);
    assert!(e["msg"].as_str().unwrap().contains("is full"), "{e}");
    assert_eq!(b.state("small"), (vec![], vec![]));
}

#[test]
fn requested_addresses_come_only_from_the_node_that_owns_their_block() {
    let mut host = Node::new("cipam-req");
    let c = Cluster::start(&mut host);
    let a = c.node(&host, "node-a");
    let b = c.node(&host, "node-b");
    let ipam = json!({"range": "10.70.0.0/24", "blockSize": 26});
    let first = ip_of(&c.run(&host, "ADD", "a0", &c.conf(&a, ipam.clone())).ok());
    let block: IpNet = format!("{first}/26").parse::<IpNet>().unwrap().trunc();
    let inside = block.hosts().nth(20).unwrap();
    let r = c
        .run_args(
            &host,
            "ADD",
            "a1",
            &c.conf(&a, ipam.clone()),
            &format!("IP={inside}"),
        )
        .ok();
    assert_eq!(ip_of(&r), inside);
    // node-b asks for an address of node-a's block: refused, nothing kept.
    let other = block.hosts().nth(30).unwrap();
    let e = c
        .run_args(
            &host,
            "ADD",
            "b0",
            &c.conf(&b, ipam.clone()),
            &format!("IP={other}"),
        )
        .err(999);
    assert!(e["msg"].as_str().unwrap().contains("node-a"), "{e}");
    assert_eq!(b.state("default"), (vec![], vec![]));
    // ... and one in a free block: node-b claims that block.
    let free: IpAddr = (0..4)
        .map(|i| {
            format!("10.70.0.{}", i * 64 + 10)
                .parse::<IpAddr>()
                .unwrap()
        })
        .find(|ip| !block.contains(ip))
        .unwrap();
    let r = c
        .run_args(
            &host,
            "ADD",
            "b1",
            &c.conf(&b, ipam.clone()),
            &format!("IP={free}"),
        )
        .ok();
    assert_eq!(ip_of(&r), free);
    assert_consistent(
        &c,
        &[
            ("node-a".into(), first),
            ("node-a".into(), inside),
            ("node-b".into(), free),
        ],
    );
    // CHECK and GC. Another network of the same pool (same range) is not GC's business.
    let mut red = c.conf(&a, ipam.clone());
    red["name"] = json!("red");
    let red_ip = ip_of(&c.run(&host, "ADD", "r0", &red).ok());
    assert_eq!(
        c.run(&host, "CHECK", "a1", &c.conf(&a, ipam.clone())).exit,
        0
    );
    let mut gc = c.conf(&a, ipam.clone());
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "a0", "ifname": "net1"}]);
    let mut call = host.call("GC", "", &c.netns, "");
    call.bin = c.bin.clone();
    call.netns = None;
    let out = host.exec(&call, &gc);
    assert_eq!(out.exit, 0, "{} {}", out.stdout, out.stderr);
    let mut left = a.state("default").1;
    left.sort();
    let mut want = vec![first.to_string(), red_ip.to_string()];
    want.sort();
    assert_eq!(left, want);
}

/// A pod bound to `node` (no kubelet runs: it stays Pending); its UID.
fn bound_pod(api: &RealApi, ns: &str, name: &str, node: &str) -> String {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "registry.example/app:1"}]}});
    let out = api.apply(&pod.to_string(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    api.get(&["pod", "-n", ns, name])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string()
}

fn delete_pod(api: &RealApi, ns: &str, name: &str) {
    api.must(&[
        "delete",
        "pod",
        "-n",
        ns,
        name,
        "--grace-period=0",
        "--force",
    ]);
}

fn pod_args(ns: &str, name: &str, uid: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uid}")
}

/// `attache ipam reconcile` as `sim`, in the API server's netns (no grace periods, no block kept);
/// its JSON report, or its error.
fn reconcile(host: &Node, c: &Cluster, sim: &Sim, kubeconfig: &Path) -> Result<Value, String> {
    reconcile_with(host, c, sim, kubeconfig, &["--keep-blocks", "0"])
}

fn reconcile_with(
    host: &Node,
    c: &Cluster,
    sim: &Sim,
    kubeconfig: &Path,
    extra: &[&str],
) -> Result<Value, String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &host.name])
        .arg(attache_bin())
        .args([
            "ipam",
            "reconcile",
            "--grace",
            "0",
            "--node-grace",
            "0",
            "--api-timeout",
            "5",
        ])
        .arg("--data-dir")
        .arg(&sim.data_dir)
        .arg("--node")
        .arg(&sim.name)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(extra)
        .env_remove("NODE_NAME")
        .output()
        .unwrap();
    let _ = c;
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `attache ipam inspect --json` as `sim`.
fn inspect(host: &Node, sim: &Sim, kubeconfig: &Path) -> Value {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &host.name])
        .arg(attache_bin())
        .args(["ipam", "inspect", "--json"])
        .arg("--data-dir")
        .arg(&sim.data_dir)
        .arg("--node")
        .arg(&sim.name)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn reconcile_releases_the_addresses_of_pods_that_are_gone_by_uid_and_nothing_on_a_failed_list() {
    let mut host = Node::new("cipam-rec");
    let mut c = Cluster::start(&mut host);
    let a = c.node(&host, "node-a");
    c.api.must(&["create", "namespace", "team"]);
    let ipam = json!({"range": "10.80.0.0/24", "blockSize": 26});
    let conf = c.conf(&a, ipam.clone());
    let add =
        |c: &Cluster, id: &str, args: &str| ip_of(&c.run_args(&host, "ADD", id, &conf, args).ok());
    let u1 = bound_pod(&c.api, "team", "p1", "node-a");
    let u2 = bound_pod(&c.api, "team", "p2", "node-a");
    let u3 = bound_pod(&c.api, "team", "p3", "node-a");
    let ip1 = add(&c, "c1", &pod_args("team", "p1", &u1));
    let ip2 = add(&c, "c2", &pod_args("team", "p2", &u2));
    let ip3 = add(&c, "c3", &pod_args("team", "p3", &u3));
    let plain = add(&c, "c-plain", ""); // no pod: never reconciled away
    // While node-a was "down": p1 deleted; p2 deleted and recreated under its name (a new pod).
    delete_pod(&c.api, "team", "p1");
    delete_pod(&c.api, "team", "p2");
    let u2b = bound_pod(&c.api, "team", "p2", "node-a");
    assert_ne!(u2, u2b);
    let ip2b = add(&c, "c2b", &pod_args("team", "p2", &u2b));
    let held = |s: &Sim| s.state("default").1;
    let before = held(&a);
    assert_eq!(before.len(), 5);

    // A token that may not list pods: refused, nothing released.
    c.api.apply(
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "weak", "namespace": "kube-system"}}).to_string(),
        &[],
    );
    let weak = host.path("weak.kubeconfig");
    c.api
        .write_kubeconfig(&weak, &c.api.token("kube-system", "weak", None), false);
    let e = reconcile(&host, &c, &a, &weak).unwrap_err();
    assert!(e.contains("403") || e.contains("forbids"), "{e}");
    assert!(e.contains("nothing released"), "{e}");
    assert_eq!(held(&a), before);
    // The API server gone: nothing released.
    c.api.stop_apiserver();
    let e = reconcile(&host, &c, &a, &c.kubeconfig).unwrap_err();
    assert!(e.contains("nothing released"), "{e}");
    assert_eq!(held(&a), before);
    c.api.restart_apiserver();

    // inspect shows the block, the pool by node and the two leaks, and changes nothing.
    let i = inspect(&host, &a, &c.kubeconfig);
    assert_eq!(i["blocks"][0]["used"], 5, "{i}");
    assert_eq!(i["blocks"][0]["free"], 64 - 5, "{i}");
    assert_eq!(i["unverifiable"], 1, "{i}");
    assert_eq!(
        i["pools"][0]["nodes"]["node-a"].as_array().unwrap().len(),
        1,
        "{i}"
    );
    assert_eq!(i["pools"][0]["freeBlocks"], 3, "{i}");
    let mut leaks: Vec<String> = i["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ip"].as_str().unwrap().to_string())
        .collect();
    leaks.sort();
    let mut gone = vec![ip1.to_string(), ip2.to_string()];
    gone.sort();
    assert_eq!(leaks, gone, "{i}");
    assert_eq!(held(&a), before);

    let r = reconcile(&host, &c, &a, &c.kubeconfig).unwrap();
    let mut released: Vec<String> = r["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["ip"].as_str().unwrap().to_string())
        .collect();
    released.sort();
    let mut want = vec![ip1.to_string(), ip2.to_string()];
    want.sort();
    assert_eq!(released, want, "{r}");
    assert_eq!(r["errors"], json!([]), "{r}");
    assert_eq!(r["unverifiable"], 1, "{r}");
    let mut left = held(&a);
    left.sort();
    let mut keep = vec![ip3.to_string(), ip2b.to_string(), plain.to_string()];
    keep.sort();
    assert_eq!(left, keep);
    // Blocks that still hold addresses stay.
    assert!(r["blocksReturned"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(c.blocks().len(), 1);

    // Everything DELeted: the empty block goes back to the pool.
    for id in ["c3", "c2b", "c-plain"] {
        assert_eq!(c.run(&host, "DEL", id, &conf).exit, 0);
    }
    // By default a node keeps one empty block per range: its next pod needs no API call.
    let r = reconcile_with(&host, &c, &a, &c.kubeconfig, &[]).unwrap();
    assert!(r["blocksReturned"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(c.blocks().len(), 1);
    let r = reconcile(&host, &c, &a, &c.kubeconfig).unwrap();
    assert_eq!(r["blocksReturned"].as_array().unwrap().len(), 1, "{r}");
    assert!(c.blocks().is_empty());
    assert_eq!(a.state("default"), (vec![], vec![]));
    // ... and is claimed again when needed.
    add(&c, "c4", "");
    assert_eq!(c.blocks().len(), 1);
}

#[test]
fn reconcile_reclaims_the_blocks_of_deleted_nodes_but_not_while_their_pods_exist() {
    let mut host = Node::new("cipam-gone");
    let c = Cluster::start(&mut host);
    let a = c.node(&host, "node-a");
    let b = c.node(&host, "node-b");
    let d = c.node(&host, "node-c");
    c.api.must(&["create", "namespace", "team"]);
    let ipam = json!({"range": "10.81.0.0/24", "blockSize": 26});
    for s in [&a, &b, &d] {
        c.run(
            &host,
            "ADD",
            &format!("{}-0", s.name),
            &c.conf(s, ipam.clone()),
        )
        .ok();
    }
    bound_pod(&c.api, "team", "still-there", "node-c");
    c.api.must(&["delete", "node", "node-b", "node-c"]);
    let r = reconcile(&host, &c, &a, &c.kubeconfig).unwrap();
    assert_eq!(r["blocksReclaimed"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["nodesMissing"], json!(["node-c"]), "{r}");
    let owners: BTreeSet<String> = c.blocks().values().map(|(_, n)| n.clone()).collect();
    assert_eq!(
        owners,
        ["node-a", "node-c"].iter().map(|s| s.to_string()).collect()
    );
    // node-b comes back with its dataDir: its reconcile sees the block is not its own any more, and
    // no address is handed out of it from then on (its ADD now needs a block, and it is no Node).
    let r = reconcile(&host, &c, &b, &c.kubeconfig).unwrap();
    assert_eq!(r["blocksLost"].as_array().unwrap().len(), 1, "{r}");
    assert!(b.state("default").0.is_empty());
    let e = c
        .run(&host, "ADD", "node-b-1", &c.conf(&b, ipam.clone()))
        .err(7);
    assert!(e["msg"].as_str().unwrap().contains("names no Node"), "{e}");
}

#[test]
fn native_macvlan_allocates_in_process_and_the_reference_macvlan_execs_attache_ipam() {
    crate::testbed::require_reference_plugins();
    let mut host = Node::with_nic("cipam-mv");
    let c = Cluster::start(&mut host);
    let a = c.node(&host, "node-a");
    let ipam = json!({"range": "10.90.0.0/24", "blockSize": 26, "gateway": "10.90.0.1"});
    let mut conf = c.conf(&a, ipam);
    conf["master"] = json!("nic0");

    // attache as macvlan: attache-ipam runs in the same process.
    let pod = host.pod();
    let mut call = host.call("ADD", "native-1", &pod, "net1");
    call.bin = crate::testbed::attache_bin();
    let native = host.exec(&call, &conf).ok();
    let ip = crate::testbed::first_ip(&native);
    assert_eq!(host.addrs(Some(&pod), "net1"), vec![format!("{ip}/24")]);
    assert_eq!(native["ips"][0]["gateway"], "10.90.0.1");

    // The reference macvlan execs the IPAM plugin by its type from CNI_PATH: the attache-ipam name.
    let pod2 = host.pod();
    let mut call = host.call("ADD", "ref-1", &pod2, "net1");
    call.bin = Path::new(crate::testbed::REFERENCE_DIR).join("macvlan");
    call.path = format!(
        "{}:{}",
        c.bin.parent().unwrap().display(),
        crate::testbed::REFERENCE_DIR
    );
    let reference = host.exec(&call, &conf).ok();
    let ip2 = crate::testbed::first_ip(&reference);
    assert_eq!(host.addrs(Some(&pod2), "net1"), vec![format!("{ip2}/24")]);
    assert_consistent(
        &c,
        &[
            ("node-a".into(), ip.parse().unwrap()),
            ("node-a".into(), ip2.parse().unwrap()),
        ],
    );
    assert_eq!(c.blocks().len(), 1, "one block serves both");
    assert!(host.pings(&pod, &ip2), "the two pods reach each other");

    // DEL (each its own way) releases the addresses.
    let mut call = host.call("DEL", "native-1", &pod, "net1");
    call.bin = crate::testbed::attache_bin();
    assert_eq!(host.exec(&call, &conf).exit, 0);
    let mut call = host.call("DEL", "ref-1", &pod2, "net1");
    call.bin = Path::new(crate::testbed::REFERENCE_DIR).join("macvlan");
    call.path = format!(
        "{}:{}",
        c.bin.parent().unwrap().display(),
        crate::testbed::REFERENCE_DIR
    );
    assert_eq!(host.exec(&call, &conf).exit, 0);
    assert!(a.state("default").1.is_empty());
}

/// `attache ipam agent` for `sim`, killed on drop.
struct Agent(std::process::Child);

impl Agent {
    fn start(host: &Node, c: &Cluster, sim: &Sim) -> Agent {
        let log = std::fs::File::create(host.path(&format!("agent-{}.log", sim.name))).unwrap();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &host.name])
            .arg(attache_bin())
            .args(["ipam", "agent", "--resync", "5"])
            .arg("--data-dir")
            .arg(&sim.data_dir)
            .arg("--node")
            .arg(&sim.name)
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .env_remove("NODE_NAME")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn grants(c: &Cluster) -> Vec<Value> {
    c.api.get(&["addressgrants.ipam.attache.dev"])["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn with_no_free_block_a_node_borrows_from_another_and_gives_back_on_del() {
    let mut host = Node::new("cipam-borrow");
    let c = Cluster::start(&mut host);
    let a = c.node(&host, "node-a");
    let b = c.node(&host, "node-b");
    let _agents = (Agent::start(&host, &c, &a), Agent::start(&host, &c, &b));
    // Two /28 blocks: .1-.15 and .16-.30 (the range's network and broadcast are never handed out).
    let ipam = json!({"range": "10.95.0.0/27", "blockSize": 28, "apiTimeout": 10});
    let (ca, cb) = (c.conf(&a, ipam.clone()), c.conf(&b, ipam.clone()));
    let mut handed = vec![(
        "node-a".to_string(),
        ip_of(&c.run(&host, "ADD", "a0", &ca).ok()),
    )];
    for k in 0..15 {
        handed.push((
            "node-b".into(),
            ip_of(&c.run(&host, "ADD", &format!("b{k}"), &cb).ok()),
        ));
    }
    assert_eq!(c.blocks().len(), 2);
    // node-b's block is full and no block is free: node-b borrows from node-a's.
    let out = c.run(&host, "ADD", "b-borrow", &cb);
    assert_eq!(
        out.exit,
        0,
        "{}\nagent of node-a: {}",
        out.stdout,
        std::fs::read_to_string(host.path("agent-node-a.log")).unwrap_or_default()
    );
    let lent = ip_of(&out.json());
    let a_block = c
        .blocks()
        .into_values()
        .find(|(_, n)| n == "node-a")
        .unwrap()
        .0;
    assert!(a_block.contains(&lent), "{lent} not in {a_block}");
    let g = grants(&c);
    assert_eq!(g.len(), 1);
    assert_eq!(g[0]["status"]["state"], "Granted");
    assert_eq!(g[0]["status"]["ip"], json!(lent.to_string()));
    assert_eq!(g[0]["spec"]["holder"]["containerID"], "b-borrow");
    // The borrower watched its grant for the answer, and did not poll it with GETs.
    let name = g[0]["metadata"]["name"].as_str().unwrap().to_string();
    let of_grant = || -> Vec<String> {
        c.api
            .audit_of(ATTACHE_USER)
            .into_iter()
            .filter(|e| {
                e["objectRef"]["resource"] == "addressgrants"
                    && (e["objectRef"]["name"] == json!(name)
                        || e["requestURI"]
                            .as_str()
                            .is_some_and(|u| u.contains(&format!("metadata.name%3D{name}"))))
            })
            .map(|e| e["verb"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert!(
        crate::poll::eventually(10, || of_grant().iter().any(|v| v == "watch")),
        "the borrower did not watch its grant: {:?}",
        of_grant()
    );
    let gets = of_grant().iter().filter(|v| *v == "get").count();
    assert!(gets <= 1, "the borrower polled its grant: {:?}", of_grant());
    assert_eq!(c.run(&host, "CHECK", "b-borrow", &cb).exit, 0);
    // node-a's own ADDs never get the lent address: it fills its block around it (15 - 1 - 1 = 13).
    for k in 1..=13 {
        let ip = ip_of(&c.run(&host, "ADD", &format!("a{k}"), &ca).ok());
        assert_ne!(ip, lent);
        handed.push(("node-a".into(), ip));
    }
    // Everything taken: node-a finds no block and node-b's agent has nothing to lend. A clean error,
    // and no grant or file left by it.
    let e = c.run(&host, "ADD", "a-full", &ca).err(999);
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.contains("is full") && msg.contains("no other node lent"),
        "{msg}"
    );
    assert_eq!(grants(&c).len(), 1, "the refused grant was left behind");
    assert_eq!(
        a.state("default").1.len(),
        15,
        "14 of node-a's own + the lent one"
    );
    // borrowed or not, the invariants hold (the lent address counts as node-a's block's).
    let mut all = handed.clone();
    all.push(("node-a".into(), lent));
    assert_consistent(&c, &all);

    // DEL on node-b: released locally at once, the grant deleted by node-b's agent, the address taken
    // back by node-a's agent: node-a can hand it out again.
    assert_eq!(c.run(&host, "DEL", "b-borrow", &cb).exit, 0);
    assert!(
        crate::poll::eventually(20, || grants(&c).is_empty()),
        "the grant was not deleted: {:?}",
        grants(&c)
    );
    assert!(
        crate::poll::eventually(20, || a.state("default").1.len() == 14),
        "node-a did not take its address back: {:?}",
        a.state("default").1
    );
    let again = ip_of(&c.run(&host, "ADD", "a-again", &ca).ok());
    assert_eq!(again, lent);
}

fn apply(api: &RealApi, doc: Value) {
    let out = api.apply(&doc.to_string(), &[]);
    assert!(
        out.status.success(),
        "{doc}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A StatefulSet's pod `name` bound to `node` (no controller runs: the test plays it); its UID.
fn stateful_pod(
    api: &RealApi,
    ns: &str,
    set: &str,
    set_uid: &str,
    name: &str,
    node: &str,
) -> String {
    apply(
        api,
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "ownerReferences": [{"apiVersion": "apps/v1",
                "kind": "StatefulSet", "name": set, "uid": set_uid, "controller": true}]},
            "spec": {"nodeName": node, "automountServiceAccountToken": false,
                     "containers": [{"name": "c", "image": "registry.example/db:1"}]}}),
    );
    api.get(&["pod", "-n", ns, name])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_statefulset_pod_keeps_its_address_across_nodes_until_it_is_scaled_away() {
    let mut host = Node::new("cipam-sticky");
    let c = Cluster::start(&mut host);
    let a = c.node(&host, "node-a");
    let b = c.node(&host, "node-b");
    c.api.must(&["create", "namespace", "team"]);
    apply(
        &c.api,
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "team"},
            "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                     "template": {"metadata": {"labels": {"app": "db"}},
                                  "spec": {"containers": [{"name": "c", "image": "registry.example/db:1"}]}}}}),
    );
    let set_uid = c.api.get(&["statefulset", "-n", "team", "db"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let ipam = json!({"range": "10.96.0.0/24", "blockSize": 26, "sticky": true});
    let (ca, cb) = (c.conf(&a, ipam.clone()), c.conf(&b, ipam.clone()));

    let u0 = stateful_pod(&c.api, "team", "db", &set_uid, "db-0", "node-a");
    let x = ip_of(
        &c.run_args(&host, "ADD", "db0-1", &ca, &pod_args("team", "db-0", &u0))
            .ok(),
    );
    // A pod no StatefulSet owns gets an ordinary address, and no grant.
    let plain = bound_pod(&c.api, "team", "web", "node-a");
    c.run_args(&host, "ADD", "web-1", &ca, &pod_args("team", "web", &plain))
        .ok();
    assert_eq!(grants(&c).len(), 1);
    assert_eq!(grants(&c)[0]["spec"]["purpose"], "Sticky");
    // DEL keeps the address for the identity — the holder's reconcile too —, and node-a's own ADDs
    // never get it meanwhile.
    assert_eq!(c.run(&host, "DEL", "db0-1", &ca).exit, 0);
    let r = reconcile(&host, &c, &a, &c.kubeconfig).unwrap();
    assert!(r["grantsDeleted"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(grants(&c).len(), 1);
    for k in 0..5 {
        let ip = ip_of(&c.run(&host, "ADD", &format!("other-{k}"), &ca).ok());
        assert_ne!(ip, x);
    }
    // db-0 comes back as a new pod on node-b: the same address, and node-a was not asked.
    c.api.must(&[
        "delete",
        "pod",
        "-n",
        "team",
        "db-0",
        "--grace-period=0",
        "--force",
    ]);
    let u0b = stateful_pod(&c.api, "team", "db", &set_uid, "db-0", "node-b");
    let again = ip_of(
        &c.run_args(&host, "ADD", "db0-2", &cb, &pod_args("team", "db-0", &u0b))
            .ok(),
    );
    assert_eq!(again, x);
    assert!(
        b.state("default").0.is_empty(),
        "node-b claimed no block for it"
    );
    let g = &grants(&c)[0];
    assert_eq!(g["spec"]["holder"]["node"], "node-b");
    assert_eq!(g["spec"]["holder"]["podUID"], json!(u0b));

    // Scaled to 0 and the pod gone: node-a's reconcile releases the address.
    assert_eq!(c.run(&host, "DEL", "db0-2", &cb).exit, 0);
    c.api
        .must(&["scale", "statefulset", "-n", "team", "db", "--replicas=0"]);
    let r = reconcile(&host, &c, &a, &c.kubeconfig).unwrap();
    assert!(
        r["persistentReleased"].as_array().unwrap().is_empty(),
        "the pod still exists: {r}"
    );
    c.api.must(&[
        "delete",
        "pod",
        "-n",
        "team",
        "db-0",
        "--grace-period=0",
        "--force",
    ]);
    let r = reconcile(&host, &c, &a, &c.kubeconfig).unwrap();
    assert_eq!(r["persistentReleased"].as_array().unwrap().len(), 1, "{r}");
    assert!(grants(&c).is_empty());
    assert!(
        !a.state("default").1.contains(&x.to_string()),
        "node-a still reserves {x}"
    );
}

#[test]
fn an_ipamclaim_keeps_its_address_records_it_and_serves_one_pod_at_a_time() {
    let mut host = Node::new("cipam-claim");
    let c = Cluster::start(&mut host);
    let crd = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/ipamclaims.yaml"
    ))
    .unwrap();
    let out = c.api.apply(&crd, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = c.node(&host, "node-a");
    let b = c.node(&host, "node-b");
    c.api.must(&["create", "namespace", "vms"]);
    let claim = json!({"apiVersion": "k8s.cni.cncf.io/v1alpha1", "kind": "IPAMClaim",
        "metadata": {"name": "vm1-net1", "namespace": "vms"}, "spec": {"network": "blue", "interface": "net1"}});
    assert!(
        crate::poll::eventually(30, || c.api.apply(&claim.to_string(), &[]).status.success()),
        "the IPAMClaim CRD is not served"
    );
    let ipam = json!({"range": "10.97.0.0/24", "blockSize": 26, "ipamClaimReference": "vm1-net1"});
    let (ca, cb) = (c.conf(&a, ipam.clone()), c.conf(&b, ipam.clone()));
    let u1 = bound_pod(&c.api, "vms", "virt-launcher-1", "node-a");
    let x = ip_of(
        &c.run_args(
            &host,
            "ADD",
            "vm-1",
            &ca,
            &pod_args("vms", "virt-launcher-1", &u1),
        )
        .ok(),
    );
    let st = c.api.get(&["ipamclaim", "-n", "vms", "vm1-net1"]);
    assert_eq!(st["status"]["ips"], json!([format!("{x}/24")]), "{st}");
    assert_eq!(st["status"]["ownerPod"]["name"], "virt-launcher-1");

    // A second pod while the first exists: refused (code 7), nothing kept.
    let u2 = bound_pod(&c.api, "vms", "virt-launcher-2", "node-b");
    let e = c
        .run_args(
            &host,
            "ADD",
            "vm-2",
            &cb,
            &pod_args("vms", "virt-launcher-2", &u2),
        )
        .err(11);
    assert!(
        e["msg"].as_str().unwrap().contains("virt-launcher-1"),
        "{e}"
    );
    assert_eq!(b.state("default"), (vec![], vec![]));
    // Live migration done: the first pod gone, the second gets the same address.
    assert_eq!(c.run(&host, "DEL", "vm-1", &ca).exit, 0);
    delete_pod(&c.api, "vms", "virt-launcher-1");
    let again = ip_of(
        &c.run_args(
            &host,
            "ADD",
            "vm-2",
            &cb,
            &pod_args("vms", "virt-launcher-2", &u2),
        )
        .ok(),
    );
    assert_eq!(again, x);
    assert_eq!(
        c.api.get(&["ipamclaim", "-n", "vms", "vm1-net1"])["status"]["ownerPod"]["name"],
        "virt-launcher-2"
    );
    // A claim that does not exist, or for another interface: code 7.
    let mut missing = ca.clone();
    missing["ipam"]["ipamClaimReference"] = json!("nope");
    c.run_args(
        &host,
        "ADD",
        "vm-3",
        &missing,
        &pod_args("vms", "virt-launcher-1", &u1),
    )
    .err(7);
    // The claim deleted: the lender's reconcile releases the address.
    assert_eq!(c.run(&host, "DEL", "vm-2", &cb).exit, 0);
    c.api
        .must(&["delete", "ipamclaim", "-n", "vms", "vm1-net1"]);
    let r = reconcile(&host, &c, &a, &c.kubeconfig).unwrap();
    assert_eq!(r["persistentReleased"].as_array().unwrap().len(), 1, "{r}");
    assert!(grants(&c).is_empty());
    assert!(a.state("default").1.is_empty(), "{:?}", a.state("default"));
}

/// Fault injection on attache-ipam's API paths (every point of `fail::CLUSTER_IPAM`, with an error and
/// with a panic where a CNI call reaches it): a failed ADD leaves this node's files as they were and no
/// grant; a block created just before the failure is this node's and the next ADD adopts it (one create
/// in all); a failed reconcile releases nothing, and a failed give-back keeps the block usable.
#[cfg(feature = "failpoints")]
#[test]
fn failures_on_the_api_paths_leave_nothing_half_made() {
    let mut host = Node::new("cipam-faults");
    let c = Cluster::start(&mut host);
    let log = host.path("points.log");
    let mut reached: BTreeSet<String> = BTreeSet::new();
    let note = |reached: &mut BTreeSet<String>| {
        for l in std::fs::read_to_string(&log).unwrap_or_default().lines() {
            reached.insert(l.to_string());
        }
    };
    let run_failing = |sim: &Sim, id: &str, conf: &Value, spec: &str| -> CniOutput {
        let mut call = host.call("ADD", id, &c.netns, "net1");
        call.bin = c.bin.clone();
        call.extra_env = vec![
            ("ATTACHE_FAILPOINT".into(), spec.into()),
            ("ATTACHE_FAILPOINT_LOG".into(), log.display().to_string()),
        ];
        let _ = sim;
        host.exec(&call, conf)
    };
    let a = c.node(&host, "node-a");
    let ipam = json!({"range": "10.98.0.0/27", "blockSize": 28});
    let ca = c.conf(&a, ipam.clone());
    // The cold path: registration and block creation fail before anything is written.
    for point in ["ipam.pool.register", "ipam.block.create"] {
        for mode in ["error", "panic"] {
            let spec = format!("{point}@1:{mode}");
            let out = run_failing(&a, "a-fail", &ca, &spec);
            let e = out.err(999);
            assert!(
                e["msg"].as_str().unwrap().contains("failpoint"),
                "{spec}: {e}"
            );
            assert_eq!(a.state("default"), (vec![], vec![]), "{spec}");
        }
    }
    assert!(c.blocks().is_empty());
    // The block created, then the failure: the API has it for node-a, nothing local; the next ADD
    // adopts it instead of creating another.
    run_failing(&a, "a-fail", &ca, "ipam.block.created@1:panic").err(999);
    assert_eq!(a.state("default"), (vec![], vec![]));
    let created = c.blocks();
    assert_eq!(created.len(), 1);
    let ip = ip_of(&c.run(&host, "ADD", "a0", &ca).ok());
    assert_eq!(c.blocks(), created, "adopted, not created again");
    assert!(created.values().next().unwrap().0.contains(&ip));
    let creates = c
        .writes()
        .iter()
        .filter(|(v, r)| v == "create" && r == "addressblocks")
        .count();
    assert_eq!(creates, 1);
    note(&mut reached);

    // Borrowing: node-b owns the other block, full; it borrows from node-a, with failures.
    let b = c.node(&host, "node-b");
    let _agent = Agent::start(&host, &c, &a);
    let cb = c.conf(&b, ipam.clone());
    for k in 0..15 {
        c.run(&host, "ADD", &format!("b{k}"), &cb).ok();
    }
    let before_b = b.state("default");
    for point in ["ipam.grant.create", "ipam.grant.wait"] {
        for mode in ["error", "panic"] {
            let spec = format!("{point}@1:{mode}");
            run_failing(&b, "b-fail", &cb, &spec).err(999);
            assert_eq!(b.state("default"), before_b, "{spec}");
            assert!(
                crate::poll::eventually(20, || grants(&c).is_empty()),
                "{spec} left a grant: {:?}",
                grants(&c)
            );
            // node-a takes back whatever it reserved for that grant.
            assert!(
                crate::poll::eventually(20, || a.state("default").1.len() == 1),
                "{spec}: node-a still lends {:?}",
                a.state("default").1
            );
        }
    }
    note(&mut reached);

    // Reconcile: a failure after the list releases nothing; a failed give-back keeps the block.
    assert_eq!(c.run(&host, "DEL", "a0", &ca).exit, 0);
    let rec = |spec: &str| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &host.name])
            .arg(attache_bin())
            .args(["ipam", "reconcile", "--grace", "0", "--node-grace", "0"])
            .args(["--keep-blocks", "0"])
            .arg("--data-dir")
            .arg(&a.data_dir)
            .args(["--node", "node-a", "--kubeconfig"])
            .arg(&c.kubeconfig)
            .env("ATTACHE_FAILPOINT", spec)
            .env("ATTACHE_FAILPOINT_LOG", &log)
            .output()
            .unwrap()
    };
    let out = rec("ipam.reconcile.listed@1:error");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing released"));
    let out = rec("ipam.block.release@1:error");
    assert!(!out.status.success(), "the failed give-back is reported");
    assert_eq!(a.state("default").0.len(), 1, "the block is still node-a's");
    assert_eq!(c.blocks().len(), 2);
    let again = ip_of(&c.run(&host, "ADD", "a1", &ca).ok());
    assert!(
        created.values().next().unwrap().0.contains(&again),
        "and usable: {again}"
    );
    note(&mut reached);

    let missing: Vec<&&str> = attache::fail::CLUSTER_IPAM
        .iter()
        .filter(|p| !reached.contains(**p))
        .collect();
    assert!(missing.is_empty(), "failpoints not reached: {missing:?}");
}

/// The meta-plugin: a pod whose networks annotation selects a definition with attache-ipam — the
/// address comes from a block of the node the meta configuration names (`nodeName`), in-process.
#[test]
fn the_meta_plugin_hands_attache_ipam_its_node_and_the_pod() {
    crate::testbed::require_reference_plugins();
    let mut host = Node::with_nic("cipam-meta");
    let c = Cluster::start(&mut host);
    let a = c.node(&host, "node-a");
    let nets = crate::testbed::write_nads(
        &host,
        "team",
        &[(
            "blue",
            json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "nic0",
                   "ipam": {"type": "attache-ipam", "range": "10.99.0.0/24", "dataDir": a.data_dir,
                            "kubeconfig": c.kubeconfig}}),
        )],
    );
    let mut conf = crate::testbed::meta_conf(&host, &nets, "blue");
    conf["nodeName"] = json!("node-a");
    let pod = host.pod();
    let mut call = host.call("ADD", "meta-1", &pod, "eth0");
    call.args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=team;K8S_POD_NAME=web-1;K8S_POD_UID=u-web-1";
    let res = host.exec(&call, &conf).ok();
    let net1 = host.addrs(Some(&pod), "net1");
    assert_eq!(net1.len(), 1, "{res}");
    let ip: IpAddr = net1[0].split('/').next().unwrap().parse().unwrap();
    assert_consistent(&c, &[("node-a".into(), ip)]);
    // The reservation names the pod (for reconcile) and the network.
    let ipfile = std::fs::read_dir(a.data_dir.join("default/blocks"))
        .unwrap()
        .flatten()
        .find_map(|b| std::fs::read_to_string(b.path().join(ip.to_string())).ok())
        .expect("the address's file");
    assert_eq!(
        ipfile.split("\r\n").collect::<Vec<_>>(),
        vec!["meta-1", "net1", "u-web-1", "team/web-1", "blue"]
    );
    // attache inspect shows this node's block of the pool, and every address in it recorded.
    let out = std::process::Command::new(attache_bin())
        .args(["inspect", "--json", "--cache-dir"])
        .arg(host.path("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let i: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &i["cluster_pools"][0];
    assert_eq!(p["pool"], "default", "{i}");
    assert_eq!(p["blocks"][0]["used"], 1, "{i}");
    assert_eq!(p["not_recorded"], json!([]), "{i}");
    let mut call = host.call("DEL", "meta-1", &pod, "eth0");
    call.args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=team;K8S_POD_NAME=web-1;K8S_POD_UID=u-web-1";
    assert_eq!(host.exec(&call, &conf).exit, 0);
    assert!(a.state("default").1.is_empty());
}

impl Cluster {
    /// `count` simulated nodes `<prefix>-<i>`, their Node objects made in one request.
    fn nodes(&self, host: &Node, prefix: &str, count: usize) -> Vec<Sim> {
        let items: Vec<Value> = (0..count)
            .map(|i| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("{prefix}-{i}")}}))
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        let out = self.api.apply(&list.to_string(), &[]);
        assert!(
            out.status.success(),
            "creating {count} nodes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (0..count)
            .map(|i| {
                let name = format!("{prefix}-{i}");
                Sim {
                    data_dir: host.path(&format!("ipam-{name}")),
                    name,
                }
            })
            .collect()
    }

    /// attache's requests on `resource` (by verb, with the answer's code), from the audit log.
    fn requests(&self, resource: &str) -> Vec<(String, u64)> {
        self.api
            .audit_of(ATTACHE_USER)
            .into_iter()
            .filter(|e| e["objectRef"]["resource"] == resource)
            .map(|e| {
                (
                    e["verb"].as_str().unwrap_or_default().to_string(),
                    e["responseStatus"]["code"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }
}

fn count(reqs: &[(String, u64)], verb: &str, code: impl Fn(u64) -> bool) -> usize {
    reqs.iter().filter(|(v, c)| v == verb && code(*c)).count()
}

/// What a large cluster does to attache-ipam: 200 nodes meeting a new range at one moment (every one of
/// them registers it in the pool and claims its first block at once), then 2 000 pods on 100 nodes with
/// a third of them deleted and made again. No failure, no address twice, every address in a block its
/// node owns, and API writes per block, not per pod.
#[test]
fn two_hundred_nodes_meet_one_new_range_at_once_and_two_thousand_pods_churn_on_a_hundred() {
    let mut host = Node::new("cipam-scale");
    let c = Cluster::start(&mut host);

    // 1. 200 nodes, one new range, the first ADD of each at the same moment, then 4 more each.
    let sims = c.nodes(&host, "rack", 200);
    let ipam = json!({"range": "10.60.0.0/16", "blockSize": 28, "apiTimeout": 60});
    let gate = std::sync::Barrier::new(sims.len());
    let start = std::time::Instant::now();
    let handed: Vec<(String, IpAddr)> = std::thread::scope(|s| {
        let jobs: Vec<_> = sims
            .iter()
            .map(|sim| {
                let (c, host, ipam, gate) = (&c, &host, &ipam, &gate);
                s.spawn(move || {
                    let conf = c.conf(sim, ipam.clone());
                    gate.wait();
                    (0..5)
                        .map(|k| {
                            let out = c.run(host, "ADD", &format!("{}-c{k}", sim.name), &conf);
                            assert_eq!(out.exit, 0, "{}: {}", sim.name, out.stdout);
                            (sim.name.clone(), ip_of(&out.json()))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        jobs.into_iter().flat_map(|j| j.join().unwrap()).collect()
    });
    let took = start.elapsed();
    assert_eq!(handed.len(), 1000);
    assert_consistent(&c, &handed);
    let blocks = c.blocks();
    assert_eq!(blocks.len(), 200, "5 addresses need one /28 per node");
    let pool = c.api.get(&["addresspools.ipam.attache.dev", "default"]);
    assert_eq!(
        pool["spec"]["ranges"],
        json!([{"range": "10.60.0.0/16", "blockSize": 28}]),
        "the range is registered once"
    );
    let (pools, grabs) = (c.requests("addresspools"), c.requests("addressblocks"));
    let pool_gets = count(&pools, "get", |_| true);
    crate::testbed::figure(&format!(
        "attache-ipam: 200 nodes meet a new range at once, 5 ADDs each: 1000 ADDs in {:.1} s, no failure; \
         AddressPool: {} create accepted, {} refused (409), {} update(s), {} GETs ({} retries of the registration); \
         AddressBlock: {} creates accepted, {} lost races (409)",
        took.as_secs_f64(),
        count(&pools, "create", |c| c < 300),
        count(&pools, "create", |c| c == 409) + count(&pools, "update", |c| c == 409),
        count(&pools, "update", |c| c < 300),
        pool_gets,
        pool_gets.saturating_sub(sims.len()),
        count(&grabs, "create", |c| c < 300),
        count(&grabs, "create", |c| c == 409),
    ));
    // Each node registered the range once; losing the create to a rival is the only retry.
    assert!(pool_gets <= 2 * sims.len(), "{pool_gets} GETs of the pool");
    let writes_before = c.writes().len();

    // 2. 2 000 pods on 100 nodes, then a third of them deleted and made again (new containers).
    let sims = c.nodes(&host, "row", 100);
    let ipam = json!({"range": "10.61.0.0/16", "blockSize": 26, "apiTimeout": 60});
    let start = std::time::Instant::now();
    let results: Vec<Vec<(String, IpAddr)>> = std::thread::scope(|s| {
        let jobs: Vec<_> = sims
            .iter()
            .map(|sim| {
                let (c, host, ipam) = (&c, &host, &ipam);
                s.spawn(move || {
                    let conf = c.conf(sim, ipam.clone());
                    let add = |id: &str| {
                        let out = c.run(host, "ADD", id, &conf);
                        assert_eq!(out.exit, 0, "{}: {}", sim.name, out.stdout);
                        ip_of(&out.json())
                    };
                    let mut live: Vec<(String, IpAddr)> = (0..20)
                        .map(|k| {
                            let id = format!("{}-p{k}", sim.name);
                            let ip = add(&id);
                            (id, ip)
                        })
                        .collect();
                    // Churn: every third pod goes, and a new one comes.
                    for k in (0..20).step_by(3) {
                        let (id, _) = live[k].clone();
                        assert_eq!(c.run(host, "DEL", &id, &conf).exit, 0);
                        let id = format!("{}-q{k}", sim.name);
                        live[k] = (id.clone(), add(&id));
                    }
                    live.into_iter()
                        .map(|(_, ip)| (sim.name.clone(), ip))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    let took = start.elapsed();
    let live: Vec<(String, IpAddr)> = results.iter().flatten().cloned().collect();
    assert_eq!(live.len(), 2000);
    assert_consistent(&c, &live);
    for (sim, l) in sims.iter().zip(&results) {
        let (owned, ips) = sim.state("default");
        assert_eq!(owned.len(), 1, "{}: 20 pods fit one /26", sim.name);
        let mut want: Vec<String> = l.iter().map(|(_, ip)| ip.to_string()).collect();
        want.sort();
        assert_eq!(
            ips, want,
            "{} holds exactly its live pods' addresses",
            sim.name
        );
    }
    let writes = c.writes().len() - writes_before;
    crate::testbed::figure(&format!(
        "attache-ipam: 2000 pods on 100 nodes, then 700 deleted and made again: 3400 calls in {:.1} s, \
         {} API writes ({} blocks + the range's registration)",
        took.as_secs_f64(),
        writes,
        c.blocks().len() - 200,
    ));
    assert!(writes <= 100 + 2, "{writes} writes for 100 blocks");
}

/// A node's dataDir is wiped (or replaced) while pods still use addresses of its blocks: those blocks
/// are never used again for new addresses (the node claims another), and `attache ipam reconcile` gives
/// them back to the pool once no pod of the node may use them — saying meanwhile what it waits for.
#[test]
fn a_node_whose_data_dir_is_lost_gets_its_blocks_back_once_its_old_pods_are_gone() {
    let mut host = Node::new("cipam-wipe");
    let c = Cluster::start(&mut host);
    let a = c.node(&host, "node-w");
    let conf = c.conf(&a, json!({"range": "10.97.0.0/24", "blockSize": 28}));
    let annotate = |name: &str, ip: IpAddr| {
        let status = json!([{"name": "blue", "interface": "net1", "ips": [ip.to_string()], "default": false}]);
        c.api.must(&[
            "annotate",
            "pod",
            "-n",
            "default",
            name,
            &format!("k8s.v1.cni.cncf.io/network-status={status}"),
        ]);
    };
    let old_uid = bound_pod(&c.api, "default", "old", "node-w");
    let old_ip = ip_of(
        &c.run_args(
            &host,
            "ADD",
            "old-c",
            &conf,
            &pod_args("default", "old", &old_uid),
        )
        .ok(),
    );
    annotate("old", old_ip);
    let before = c.blocks();
    assert_eq!(before.len(), 1);
    let (old_block, (old_net, _)) = before.into_iter().next().unwrap();

    // The dataDir is lost. The node's next pod gets an address of a new block, never of the old one.
    std::fs::remove_dir_all(&a.data_dir).unwrap();
    let new_uid = bound_pod(&c.api, "default", "new", "node-w");
    let new_ip = ip_of(
        &c.run_args(
            &host,
            "ADD",
            "new-c",
            &conf,
            &pod_args("default", "new", &new_uid),
        )
        .ok(),
    );
    annotate("new", new_ip);
    assert!(
        !old_net.contains(&new_ip),
        "{new_ip} is in the lost block {old_net}"
    );
    assert_eq!(c.blocks().len(), 2);
    // Another dataDir of the same node (a definition with its own): its block is never taken for the
    // lost dataDir's.
    let other = Sim {
        name: "node-w".into(),
        data_dir: host.path("ipam-node-w-other"),
    };
    let other_conf = c.conf(&other, json!({"range": "10.98.0.0/24", "blockSize": 28}));
    c.run(&host, "ADD", "other-c", &other_conf).ok();
    let other_block = c
        .blocks()
        .into_iter()
        .find(|(_, (n, _))| n.to_string().starts_with("10.98."))
        .unwrap()
        .0;

    // The old pod still runs: the block waits, and the report says for what.
    let r = reconcile(&host, &c, &a, &c.kubeconfig).unwrap();
    assert_eq!(r["blocksRecovered"], json!([]), "{r}");
    let waiting = r["blocksWaiting"].to_string();
    assert!(
        waiting.contains(&old_block)
            && waiting.contains("default/old")
            && !waiting.contains("default/new"),
        "{r}"
    );
    assert!(!waiting.contains(&other_block), "{r}");
    assert!(c.blocks().contains_key(&old_block));

    // The old pod is gone: the block goes back to the pool; the new block stays.
    delete_pod(&c.api, "default", "old");
    let r = reconcile(&host, &c, &a, &c.kubeconfig).unwrap();
    assert_eq!(r["blocksRecovered"], json!([old_block]), "{r}");
    assert_eq!(r["blocksWaiting"], json!([]), "{r}");
    let after = c.blocks();
    assert!(!after.contains_key(&old_block));
    assert!(
        after.contains_key(&other_block),
        "another dataDir's block was taken"
    );
    assert!(
        after
            .values()
            .any(|(n, node)| n.contains(&new_ip) && node == "node-w")
    );
}
