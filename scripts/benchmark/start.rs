//! `start`: how long attache takes to start and answer VERSION, against a reference plugin.

use std::path::PathBuf;

use crate::Args;
use crate::harness::{Series, exec};
use crate::report::Report;

/// Process start: CNI_COMMAND=VERSION, and /bin/true as the machine's fork+exec floor.
pub(crate) fn process_start(a: &Args, r: &mut Report) -> f64 {
    println!();
    println!("process start (CNI_COMMAND=VERSION; /bin/true is the machine's fork+exec floor):");
    let mut median = 0.0;
    for (key, label, bin) in [
        ("start_true", "/bin/true", PathBuf::from("/bin/true")),
        (
            "start_reference_bridge",
            "reference bridge",
            a.reference_dir.join("bridge"),
        ),
        ("start_attache", "attache", a.attache.clone()),
    ] {
        let mut s = Series::default();
        for _ in 0..a.rounds {
            s.0.push(
                exec(
                    &bin,
                    &[("CNI_COMMAND", "VERSION")],
                    b"{\"cniVersion\":\"1.0.0\"}",
                )
                .dur,
            );
        }
        median = r.row(key, label, &s);
    }
    median
}
