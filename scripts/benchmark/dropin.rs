//! `dropin`: the drop-in bridge and macvlan against the reference plugins, with the same configuration.

use std::path::Path;

use crate::harness::{Model, Side, compare, conf, cpu_line};
use crate::report::Report;
use crate::{Args, Pods};

/// Drop-in: the reference plugin, and attache installed under its name, same configuration shape.
pub(crate) fn drop_in_models(a: &Args, kind: &str) -> (Model, Model) {
    let data = a.work.join(format!("ipam-{kind}"));
    let model = |bin: &Path, name: &str, bridge: &str, subnet: &str| {
        Model::one(bin, &conf(kind, name, bridge, subnet, &data, &a.master))
    };
    (
        model(
            &a.reference_dir.join(kind),
            &format!("ref{kind}"),
            "brref",
            "10.201.0.0/16",
        ),
        model(&a.attache, &format!("att{kind}"), "bratt", "10.202.0.0/16"),
    )
}

pub(crate) fn drop_in(a: &Args, pods: &mut Pods, r: &mut Report, kind: &str, floor: (f64, f64)) {
    let (reference, attache) = drop_in_models(a, kind);
    let [rs, at]: [Side; 2] = compare(a, pods, kind, &[&reference, &attache], a.rounds)
        .try_into()
        .ok()
        .unwrap();
    println!();
    println!("drop-in {kind} + host-local (reference vs attache under the same name):");
    let ra = r.row(&format!("{kind}_reference_add"), "reference ADD", &rs.add);
    let aa = r.row(&format!("{kind}_attache_add"), "attache ADD", &at.add);
    let rd = r.row(&format!("{kind}_reference_del"), "reference DEL", &rs.del);
    let ad = r.row(&format!("{kind}_attache_del"), "attache DEL", &at.del);
    println!(
        "  ratio attache/reference (medians): ADD {:.2}x   DEL {:.2}x",
        aa / ra,
        ad / rd
    );
    cpu_line(r, kind, ["reference", "attache"], [&rs, &at]);
    r.figure(&format!("{kind}_ratio_add"), aa / ra);
    r.figure(&format!("{kind}_ratio_del"), ad / rd);
    r.figure(
        &format!("{kind}_reference_add_peak_rss_kib"),
        rs.add_rss_kib,
    );
    r.figure(&format!("{kind}_attache_add_peak_rss_kib"), at.add_rss_kib);
    if kind == "bridge" {
        let (fa, fd) = floor;
        println!(
            "  above the kernel floor (medians): attache ADD {:+.3} ms  DEL {:+.3} ms;  reference ADD {:+.3} ms  DEL {:+.3} ms",
            aa - fa,
            ad - fd,
            ra - fa,
            rd - fd
        );
        r.target(
            "drop-in bridge + host-local ADD, attache/reference",
            aa / ra,
            0.25,
            "x",
        );
        r.target(
            "drop-in bridge + host-local DEL, attache - kernel floor",
            ad - fd,
            2.0,
            "ms",
        );
    }
}
