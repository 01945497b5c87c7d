//! `pod`: the meta-plugin with the reference ptp as cluster network and N native macvlan attachments,
//! against the reference ptp and N reference macvlans exec'd one after the other, as Multus does.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::harness::{Model, Series, Side, call, compare, conf, cpu_line, median, meta_conf};
use crate::report::Report;
use crate::{Args, Pods};

/// The native attachments of the pod-level rows.
pub(crate) const POD_NATIVES: &[usize] = &[0, 1, 8, 16];

/// The pod-level rows: the meta-plugin (cluster network: the reference ptp + host-local, exec'd; N native
/// macvlan attachments from networksDir) against the exec'd model (the same ptp, then N reference
/// macvlans, one after the other with the same configurations; DEL in reverse).
pub(crate) fn pod_rows(a: &Args, pods: &mut Pods, r: &mut Report) {
    println!();
    println!(
        "pod-level: cluster network = reference ptp + host-local (exec'd by both), plus N macvlan + host-local"
    );
    println!(
        "  exec'd = ptp then N reference macvlans exec'd one after the other (DEL in reverse), as Multus does;"
    );
    println!(
        "  attache = one exec of the meta-plugin, the N macvlans native (networksDir + the pod's annotation)"
    );
    for &n in POD_NATIVES {
        let (execd, meta) = pod_models(a, n, &ptp_conf(a));
        let [ex, at]: [Side; 2] = compare(a, pods, &format!("pod{n}"), &[&execd, &meta], a.rounds)
            .try_into()
            .ok()
            .unwrap();
        println!();
        println!("  N = {n}:");
        let ea = r.row(&format!("pod{n}_execd_add"), "exec'd model ADD", &ex.add);
        let aa = r.row(
            &format!("pod{n}_attache_add"),
            "attache meta-plugin ADD",
            &at.add,
        );
        let ed = r.row(&format!("pod{n}_execd_del"), "exec'd model DEL", &ex.del);
        let ad = r.row(
            &format!("pod{n}_attache_del"),
            "attache meta-plugin DEL",
            &at.del,
        );
        r.row(
            &format!("pod{n}_cluster_plugin_add"),
            "of the exec'd model: the cluster plugin's (ptp) ADD",
            &ex.add_calls[0],
        );
        let cluster_del = r.row(
            &format!("pod{n}_cluster_plugin_del"),
            "of the exec'd model: the cluster plugin's (ptp) DEL",
            &ex.del_calls[0],
        );
        println!(
            "  ratio attache/exec'd (medians): ADD {:.2}x   DEL {:.2}x",
            aa / ea,
            ad / ed
        );
        cpu_line(r, &format!("pod{n}"), ["execd", "attache"], [&ex, &at]);
        r.figure(&format!("pod{n}_ratio_add"), aa / ea);
        r.figure(&format!("pod{n}_ratio_del"), ad / ed);
        r.figure(&format!("pod{n}_execd_add_peak_rss_kib"), ex.add_rss_kib);
        r.figure(&format!("pod{n}_attache_add_peak_rss_kib"), at.add_rss_kib);
        if n == 0 {
            // The meta-plugin's own cost: the pod is exactly the cluster plugin's.
            let paired = |x: &Series, y: &Series| {
                median(
                    x.raw_ms()
                        .iter()
                        .zip(y.raw_ms())
                        .map(|(p, q)| p - q)
                        .collect(),
                )
            };
            let (pa, pd) = (paired(&at.add, &ex.add), paired(&at.del, &ex.del));
            println!(
                "  meta-plugin overhead, median of the per-round differences: ADD {pa:+.3} ms   DEL {pd:+.3} ms"
            );
            r.figure("meta_overhead_add_paired_ms", pa);
            r.figure("meta_overhead_del_paired_ms", pd);
            r.target(
                "meta-plugin overhead ADD (meta, no extra network - ptp alone)",
                aa - ea,
                1.5,
                "ms",
            );
            r.target(
                "meta-plugin overhead DEL (meta, no extra network - ptp alone)",
                ad - ed,
                1.5,
                "ms",
            );
        } else {
            r.target(
                &format!("pod DEL, {n} native: attache - the cluster plugin's own DEL"),
                ad - cluster_del,
                3.0,
                "ms",
            );
        }
        if n == 8 {
            r.target("pod ADD, 8 native: attache/exec'd model", aa / ea, 0.2, "x");
            r.target("pod DEL, 8 native: attache/exec'd model", ad / ed, 0.2, "x");
        }
    }
}

/// The pod-level rows' cluster network: the reference ptp with host-local.
pub(crate) fn ptp_conf(a: &Args) -> Value {
    json!({"cniVersion": "1.0.0", "name": "podnet", "type": "ptp",
        "ipam": {"type": "host-local", "subnet": "10.205.0.0/16", "dataDir": a.work.join("ipam-pod"),
            "routes": [{"dst": "0.0.0.0/0"}]}})
}

/// A pod with `cluster` and `n` macvlan networks: exec'd one after the other (the cluster plugin, then
/// the reference macvlan for each), and through the meta-plugin (the macvlans native).
pub(crate) fn pod_models(a: &Args, n: usize, cluster: &Value) -> (Model, Model) {
    let (nets_dir, macvlans) = networks(a);
    let mut execd = Model {
        calls: vec![call(
            &a.reference_dir.join(cluster["type"].as_str().unwrap()),
            "eth0",
            cluster,
        )],
    };
    for (i, mv) in macvlans.iter().take(n).enumerate() {
        let ifname = format!("net{}", i + 1);
        execd
            .calls
            .push(call(&a.reference_dir.join("macvlan"), &ifname, mv));
    }
    let names: Vec<String> = (0..n).map(|i| format!("mv{i}")).collect();
    let cache = a.work.join("cache-pod");
    let meta = meta_conf(cluster.clone(), &nets_dir, &cache, &names);
    (execd, Model::one(&a.attache, &meta))
}

/// The node's networksDir: a NetworkAttachmentDefinition `mv<i>` for each macvlan network the pod-level
/// rows may select (the configurations are also the exec'd model's).
pub(crate) fn networks(a: &Args) -> (PathBuf, Vec<Value>) {
    let dir = a.work.join("networks");
    std::fs::create_dir_all(&dir).unwrap();
    let data = a.work.join("ipam-pod");
    let max = *POD_NATIVES.iter().max().unwrap();
    let confs: Vec<Value> = (0..max)
        .map(|i| {
            let subnet = format!("10.{}.0.0/16", 100 + i);
            conf("macvlan", &format!("mv{i}"), "", &subnet, &data, &a.master)
        })
        .collect();
    let mut yaml = String::new();
    for c in &confs {
        yaml += &format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: {}\n  namespace: default\nspec:\n  config: '{c}'\n---\n",
            c["name"].as_str().unwrap()
        );
    }
    std::fs::write(dir.join("nets.yaml"), yaml).unwrap();
    (dir, confs)
}
