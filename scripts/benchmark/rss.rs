//! `rss`: peak RSS (`wait4`'s `ru_maxrss`) of attache against the reference plugins.

use crate::dropin::drop_in_models;
use crate::harness::{Model, compare, conf};
use crate::pod::{pod_models, ptp_conf};
use crate::report::Report;
use crate::{Args, Pods};

/// Peak RSS of one ADD (wait4's ru_maxrss: the largest of the process and the children it waited for),
/// the largest over a few rounds of its own.
pub(crate) fn rss_rows(a: &Args, pods: &mut Pods, r: &mut Report) {
    let (ref_bridge, att_bridge) = drop_in_models(a, "bridge");
    // The meta-plugin with 8 natives and a native cluster network: attache alone, no exec'd child.
    let native = conf(
        "bridge",
        "rssnet",
        "brrss",
        "10.216.0.0/16",
        &a.work.join("ipam-rss"),
        "",
    );
    let (_, meta_native) = pod_models(a, 8, &native);
    let (execd, meta_ptp) = pod_models(a, 8, &ptp_conf(a));
    let rows: [(&str, &str, &Model); 5] = [
        (
            "reference_bridge",
            "reference bridge (+ its host-local child)",
            &ref_bridge,
        ),
        ("attache_bridge", "attache drop-in bridge", &att_bridge),
        (
            "execd_ptp_8macvlan",
            "exec'd model, ptp + 8 macvlan (largest plugin)",
            &execd,
        ),
        (
            "meta_ptp_8native",
            "meta-plugin, ptp exec'd + 8 native (ptp included)",
            &meta_ptp,
        ),
        (
            "meta_bridge_8native",
            "meta-plugin, native bridge + 8 native",
            &meta_native,
        ),
    ];
    let models: Vec<&Model> = rows.iter().map(|(_, _, m)| *m).collect();
    let sides = compare(a, pods, "rss", &models, (a.rounds / 4).max(2));
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!(
        "peak RSS of one ADD (wait4 ru_maxrss, largest over the rounds; children waited for included):"
    );
    for ((key, label, _), side) in rows.iter().zip(&sides) {
        println!("  {label:<52} {:>8.2} MiB", mib(side.add_rss_kib));
        r.figure(&format!("peak_rss_add_kib_{key}"), side.add_rss_kib);
    }
    r.target(
        "peak RSS, drop-in bridge + host-local ADD",
        mib(sides[1].add_rss_kib),
        12.0,
        "MiB",
    );
    r.target(
        "peak RSS, meta-plugin ADD with 8 natives (native cluster)",
        mib(sides[4].add_rss_kib),
        12.0,
        "MiB",
    );
}
