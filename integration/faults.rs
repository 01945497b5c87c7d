//! Fault injection: every failpoint (src/fail.rs) that a pod's ADD or DEL reaches is made to fail in turn
//! — with an error, and separately with a panic — and after each the node, the pod, the IPAM folders, the
//! nftables ruleset and `cacheDir` must be exactly as before (ADD), or a retried DEL must finish the job
//! (DEL). Built only with `--features failpoints` (scripts/test does).
//!
//! The pod: a delegated cluster network (Debian's ptp), a native bridge with isGateway, ipMasq,
//! macspoofchk and promiscMode, a native macvlan that takes the default route, a macvlan with static
//! IPAM and a chained tuning, and a node device handed over by host-device (moved in, given back), all routed by source (`podRouting`); its annotations come from the runtime and network-status goes to the API fixture through the
//! node agent (`attache agent`, its report socket).

use std::collections::BTreeMap;

use crate::testbed::{CniOutput, Node, require_reference_plugins};
use serde_json::{Value, json};

const NS: &str = "team-a";
const POD: &str = "faulty-0";
const UID: &str = "6d1f0000-0000-4000-8000-00000000fa17";

struct Bed {
    node: Node,
    pod: String,
    conf: Value,
    // Dropped first: the agent before the API fixture it reports to.
    _agent: crate::testbed::Agent,
    _api: crate::apiserver::ApiServer,
}

fn new_bed(tag: &str) -> Bed {
    require_reference_plugins();
    let mut node = Node::with_nic(tag);
    let pod = node.pod();
    let api = crate::apiserver::ApiServer::start_in(&node.name);
    api.write_kubeconfig(&node.path("kubeconfig"));
    api.put(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD, "namespace": NS, "uid": UID, "annotations": {}}}));
    let ipam = node.path("ipam").display().to_string();
    let dir = crate::testbed::write_nads(
        &node,
        NS,
        &[
            (
                "blue",
                json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": "br-blue", "isGateway": true,
                       "ipMasq": true, "macspoofchk": true, "promiscMode": true,
                       "ipam": {"type": "host-local", "subnet": "10.21.0.0/24", "dataDir": ipam,
                                "routes": [{"dst": "192.0.2.0/24"}]}}),
            ),
            (
                "mac",
                json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "nic0",
                       "ipam": {"type": "host-local", "subnet": "10.23.0.0/24", "dataDir": ipam}}),
            ),
            (
                "pass",
                json!({"cniVersion": "1.0.0", "type": "host-device", "device": "hd0",
                       "dataDir": node.path("hd"),
                       "ipam": {"type": "host-local", "subnet": "10.26.0.0/24", "dataDir": ipam}}),
            ),
            (
                "fixed",
                json!({"cniVersion": "1.0.0", "plugins": [
                    {"type": "macvlan", "master": "nic0",
                     "ipam": {"type": "static", "addresses": [{"address": "10.24.0.5/24"}]}},
                    {"type": "tuning", "mtu": 1400, "dataDir": node.path("tuning"),
                     "sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1", "net.ipv4.conf.all.arp_filter": "1"}}]}),
            ),
        ],
    );
    for args in [
        &["link", "add", "hd0", "type", "veth", "peer", "name", "hd0p"][..],
        &["link", "set", "hd0", "up"],
    ] {
        assert!(node.ip_do(args), "ip {args:?}");
    }
    let networks = r#"[{"name":"blue"},{"name":"mac","default-route":["10.23.0.1"]},{"name":"fixed"},{"name":"pass"}]"#;
    let mut conf = crate::testbed::meta_conf(&node, &dir, networks);
    conf["kubeconfig"] = json!(node.path("kubeconfig"));
    // Routed by source, the default on `mac`: rules, tables, the cluster's CIDRs on eth0, sysctls.
    conf["podRouting"] = json!("source");
    conf["clusterCIDRs"] = json!(["10.77.0.0/16"]);
    conf["serviceCIDRs"] = json!(["10.96.0.0/12"]);
    // The report goes through the node agent (its failpoint, then the agent's own call).
    let agent = crate::testbed::Agent::start(&node, &node.path("kubeconfig"));
    let socket = node.path("run/agent.sock");
    assert!(
        crate::poll::eventually(20, || socket.exists()),
        "the agent serves no socket: {}",
        agent.log()
    );
    conf["agentSocket"] = json!(socket);
    Bed {
        node,
        pod,
        conf,
        _agent: agent,
        _api: api,
    }
}

impl Bed {
    fn run(&self, cmd: &str, id: &str, failpoint: Option<&str>, log: Option<&str>) -> CniOutput {
        let args =
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={POD};K8S_POD_UID={UID}");
        let mut call = self.node.call(cmd, id, &self.pod, "eth0");
        call.args = &args;
        if let Some(f) = failpoint {
            call.extra_env
                .push(("ATTACHE_FAILPOINT".into(), f.to_string()));
        }
        if let Some(l) = log {
            let _ = std::fs::remove_file(self.node.path(l));
            call.extra_env.push((
                "ATTACHE_FAILPOINT_LOG".into(),
                self.node.path(l).display().to_string(),
            ));
        }
        self.node.exec(&call, &self.conf)
    }

    /// The failpoints a run reached, in order (from its log).
    fn reached(&self, log: &str) -> Vec<String> {
        std::fs::read_to_string(self.node.path(log))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn times_reached(&self, log: &str, name: &str) -> usize {
        self.reached(log).iter().filter(|p| *p == name).count()
    }

    fn state(&self, keep_bridges: bool) -> Value {
        crate::testbed::state::full_state(&self.node, &self.pod, keep_bridges)
    }
}

fn assert_unchanged(before: &Value, after: &Value, what: &str) {
    assert!(
        after == before,
        "{what} left something:\n{}",
        crate::testbed::state::diff(before, after)
    );
}

/// Each (name, n) for the n-th time a run reached `name`.
fn occurrences(points: &[String]) -> Vec<(String, usize)> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    points
        .iter()
        .map(|p| {
            let n = seen.entry(p).or_default();
            *n += 1;
            (p.clone(), *n)
        })
        .collect()
}

/// Failpoints after which ADD still succeeds: reporting to the API is not part of the pod's networking.
fn non_fatal(name: &str) -> bool {
    name.starts_with("k8s.")
}

/// Fail each of `points` (name, n) in an ADD, with an error and with a panic: the ADD fails saying
/// what failed (or, for reporting, succeeds), and the node is as `before`. The trials run.
fn add_trials(bed: &Bed, points: &[(String, usize)], before: &Value) -> usize {
    let mut trials = 0;
    for (name, n) in points {
        for mode in ["error", "panic"] {
            let spec = format!("{name}@{n}:{mode}");
            let out = bed.run("ADD", "f1", Some(&spec), Some("trial.log"));
            assert!(
                bed.times_reached("trial.log", name) >= *n,
                "{spec} was never reached; the ADD answered {}",
                out.stdout
            );
            if out.exit == 0 {
                assert!(non_fatal(name), "{spec}: ADD succeeded despite the failure");
                bed.run("DEL", "f1", None, None).ok();
            } else {
                let v = out.err(999);
                assert!(
                    v["msg"].as_str().unwrap().contains(&format!("{name}@{n}")),
                    "{spec}: the error does not say what failed: {v}"
                );
            }
            assert_unchanged(before, &bed.state(true), &spec);
            trials += 1;
        }
    }
    trials
}

/// Fail each of `points` in a DEL: a retried DEL finishes, and the node is as `before`.
fn del_trials(bed: &Bed, points: &[(String, usize)], before: &Value) -> usize {
    let mut trials = 0;
    for (name, n) in points {
        for mode in ["error", "panic"] {
            let spec = format!("{name}@{n}:{mode}");
            bed.run("ADD", "f2", None, None).ok();
            let _ = bed.run("DEL", "f2", Some(&spec), Some("trial.log"));
            assert!(
                bed.times_reached("trial.log", name) >= *n,
                "{spec} was never reached"
            );
            // Whatever the failed DEL left, a retried DEL finishes.
            bed.run("DEL", "f2", None, None).ok();
            assert_unchanged(before, &bed.state(true), &format!("{spec}, then DEL,"));
            trials += 1;
        }
    }
    trials
}

#[test]
fn every_failpoint_of_add_and_del_leaves_nothing() {
    let mut bed = new_bed("faults");
    // Warm the node: the bridge, nftables base chains and forwarding exist from an earlier pod.
    bed.run("ADD", "warm", None, None).ok();
    bed.run("DEL", "warm", None, None).ok();
    let before = bed.state(true);

    // Enumerate: one clean ADD and DEL, each logging the failpoints it reaches.
    bed.run("ADD", "enum", None, Some("add.log")).ok();
    let add_points = bed.reached("add.log");
    bed.run("DEL", "enum", None, Some("del.log")).ok();
    let del_points = bed.reached("del.log");
    assert_eq!(bed.state(true), before, "a clean ADD + DEL leaves nothing");
    let mut trials = add_trials(&bed, &occurrences(&add_points), &before);
    let mut add_trial_count = trials;
    trials += del_trials(&bed, &occurrences(&del_points), &before);

    // Without the agent: the points of the direct report (network-status, Events) too.
    bed.conf.as_object_mut().unwrap().remove("agentSocket");
    bed.run("ADD", "enum2", None, Some("add.log")).ok();
    let direct_add: Vec<String> = bed.reached("add.log");
    bed.run("DEL", "enum2", None, Some("del.log")).ok();
    let direct_del: Vec<String> = bed.reached("del.log");
    let new_only = |all: &[String], seen: &[String]| -> Vec<(String, usize)> {
        occurrences(all)
            .into_iter()
            .filter(|(p, _)| !seen.contains(p))
            .collect()
    };
    let (extra_add, extra_del) = (
        new_only(&direct_add, &add_points),
        new_only(&direct_del, &del_points),
    );
    let extra = add_trials(&bed, &extra_add, &before);
    add_trial_count += extra;
    trials += extra + del_trials(&bed, &extra_del, &before);
    let add_trials = add_trial_count;

    // The points only a node's first pod reaches (the bridge is made then): on a cold node each time.
    let mut cold_points = Vec::new();
    {
        let cold = new_bed("cold-enum");
        cold.run("ADD", "c0", None, Some("cold.log")).ok();
        for p in cold.reached("cold.log") {
            if !add_points.contains(&p) && !cold_points.contains(&p) {
                cold_points.push(p);
            }
        }
    }
    for name in &cold_points {
        for mode in ["error", "panic"] {
            let cold = new_bed("cold");
            let before = cold.state(false);
            let spec = format!("{name}@1:{mode}");
            cold.run("ADD", "c1", Some(&spec), None).err(999);
            assert_unchanged(&before, &cold.state(false), &spec);
            trials += 1;
        }
    }

    // Every failpoint there is was reached by one of these runs.
    let all_reached: Vec<&String> = add_points
        .iter()
        .chain(&del_points)
        .chain(&direct_add)
        .chain(&direct_del)
        .chain(&cold_points)
        .collect();
    let unreached: Vec<&&str> = attache::fail::ALL
        .iter()
        .filter(|p| !all_reached.iter().any(|r| r == *p))
        .collect();
    assert!(
        unreached.is_empty(),
        "failpoints no test reaches: {unreached:?}"
    );
    crate::testbed::figure(&format!(
        "fault injection: {} failpoints, {} reached by ADD and {} by DEL ({} only on a cold node); {trials} trials ({add_trials} ADD), 0 leftovers",
        attache::fail::ALL.len(),
        occurrences(&add_points).len() + extra_add.len(),
        occurrences(&del_points).len() + extra_del.len(),
        cold_points.len()
    ));
}
