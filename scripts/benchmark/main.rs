//! The benchmark behind `scripts/bench` (not a test: it prints figures and, for each of issue 12's speed
//! and memory targets and issue 13's attache-ipam targets, the measured value, the target and MET / NOT
//! MET; it fails only when a plugin does, or when attache-ipam hands an address out twice).
//!
//! Runs inside a private "node" netns (it refuses to run in the host's). Every comparison is a set of
//! [`Model`]s — what a runtime execs for one pod — run on fresh pod namespaces, alternately (A B, then
//! B A) so that neither always meets the warmer cache, each plugin exec'd as a runtime does it (spawn,
//! configuration on stdin, result read, `wait4`), timed from spawn to reap; `wait4`'s `ru_maxrss` is the
//! peak RSS. The first rounds of every comparison create bridges and warm caches and are not measured.
//!
//! Rows: process start; the kernel floor (the netlink work of one bridge attachment done in-process:
//! no exec, no configuration, no IPAM); drop-in bridge and macvlan against the reference plugins;
//! pod-level rows (the meta-plugin with the reference ptp as cluster network and N native macvlan
//! attachments, against the reference ptp and N reference macvlans exec'd one after the other, as
//! Multus does); flatness with node state (10 000 addresses held in the range, 1 000 meta-plugin
//! records); peak RSS; attache-ipam (`ipam`: warm ADD exec'd as an IPAM plugin against the reference
//! host-local, from a pre-seeded block with no API reachable; the same in-process under the drop-in macvlan;
//! and 10 simulated nodes x 100 exec'd ADDs at once against a real kube-apiserver + etcd started in the
//! node netns, counting the plugin's API writes in the audit log); binary size. Everything lands in a
//! JSON file too (`--json`).
//!
//! One module per section (`start`, `floor`, `dropin`, `pod`, `flat`, `rss`, `ipam`, `size`), run in
//! that order by [`main`]; `harness` and `report` are what they share.

mod api;
mod dropin;
mod flat;
mod floor;
mod harness;
mod ipam;
mod pod;
#[path = "../../integration/poll.rs"]
mod poll;
#[path = "../../integration/realserver/mod.rs"]
mod realserver;
mod report;
mod rss;
mod size;
mod start;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::api::api_rows;
use crate::dropin::drop_in;
use crate::flat::flat_rows;
use crate::floor::floor;
use crate::ipam::{ipam_scale_rows, ipam_warm_rows, kube_apiserver};
use crate::pod::pod_rows;
use crate::report::{Report, loadavg, machine, output};
use crate::rss::rss_rows;
use crate::size::size_row;
use crate::start::{process_start, spawn_rows};

pub(crate) struct Args {
    pub(crate) attache: PathBuf,
    pub(crate) reference_dir: PathBuf,
    pub(crate) rounds: usize,
    pub(crate) warmup: usize,
    pub(crate) json: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) tag: String,
    pub(crate) master: String,
    /// `--only`: the sections to run (all by default).
    pub(crate) only: Option<Vec<String>>,
}

/// The sections, in the order they run. The kernel floor also runs for `dropin` (its DEL target).
pub(crate) const SECTIONS: &[&str] = &[
    "start", "floor", "dropin", "pod", "flat", "rss", "ipam", "api", "size",
];

impl Args {
    pub(crate) fn runs(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == section))
    }
}

pub(crate) fn parse_args() -> Args {
    let mut a = Args {
        attache: PathBuf::from("target/x86_64-unknown-linux-gnu/release/attache"),
        reference_dir: PathBuf::from("/usr/lib/cni"),
        rounds: 30,
        warmup: 2,
        json: PathBuf::from("target/bench.json"),
        work: std::env::temp_dir().join(format!("attache-bench-{}", std::process::id())),
        tag: format!("ab{}", std::process::id()),
        master: std::env::var("BENCH_MACVLAN_MASTER")
            .ok()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "benchnic".into()),
        only: None,
    };
    let (mut rounds, mut quick) = (None, false);
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--quick" {
            quick = true;
            continue;
        }
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--attache" => a.attache = v.into(),
            "--reference-dir" => a.reference_dir = v.into(),
            "--rounds" => rounds = Some(v.parse().expect("--rounds N")),
            "--json" => a.json = v.into(),
            "--work" => a.work = v.into(),
            "--tag" => a.tag = v,
            "--only" => {
                let only: Vec<String> = v.split(',').map(str::to_string).collect();
                for s in &only {
                    assert!(
                        SECTIONS.contains(&s.as_str()),
                        "--only: {s:?} is not one of {SECTIONS:?}"
                    );
                }
                a.only = Some(only);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    if quick {
        a.warmup = 1;
    }
    a.rounds = rounds.unwrap_or(if quick { 3 } else { a.rounds }).max(1);
    a
}

pub(crate) fn sh(args: &[&str]) {
    let ok = Command::new(args[0])
        .args(&args[1..])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "{args:?} failed");
}

/// The pod namespaces made so far: deleted on drop (also when a failed exec unwinds).
pub(crate) struct Pods {
    pub(crate) names: Vec<String>,
}

impl Pods {
    pub(crate) fn add(&mut self, name: String) -> String {
        sh(&["ip", "netns", "add", &name]);
        self.names.push(name.clone());
        format!("/run/netns/{name}")
    }

    /// Delete them all between sections, and give the kernel's asynchronous netns cleanup a moment so it
    /// does not land in the next section's measurements.
    pub(crate) fn flush(&mut self) {
        for n in self.names.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &n]).status();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// The scratch folder (IPAM stores, records, networksDir), removed on drop.
pub(crate) struct Work(pub(crate) PathBuf);

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The benchmark creates and deletes interfaces: only ever in a namespace of its own (a named one, as
/// scripts/bench makes it), never the host's.
pub(crate) fn refuse_host_netns() {
    let named = output(&["ip", "netns", "identify", &std::process::id().to_string()]);
    assert!(
        !named.is_empty(),
        "the benchmark runs only inside a private node netns: use scripts/bench"
    );
}

pub(crate) fn main() {
    let a = parse_args();
    refuse_host_netns();
    // The ipam section's API server: missing tools fail now, not after the other sections.
    if a.runs("ipam") || a.runs("api") {
        kube_apiserver();
    }
    std::fs::create_dir_all(&a.work).unwrap();
    let _work = Work(a.work.clone());
    let mut pods = Pods { names: vec![] };
    let mut r = Report::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    println!(
        "attache benchmark: {} measured rounds per series (+{} warm-up), fresh pod netns each, exec'd as a runtime does",
        a.rounds, a.warmup
    );
    let m = machine();
    if a.runs("start") {
        let start = process_start(&a, &mut r);
        r.figure("attache_process_start_ms", start);
        spawn_rows(&a, &mut r);
    }
    if a.runs("floor") || a.runs("dropin") {
        let floor = rt.block_on(floor(&a, &mut pods, &mut r));
        pods.flush();
        if a.runs("dropin") {
            drop_in(&a, &mut pods, &mut r, "bridge", floor);
            drop_in(&a, &mut pods, &mut r, "macvlan", floor);
            pods.flush();
        }
    }
    if a.runs("pod") {
        pod_rows(&a, &mut pods, &mut r);
        pods.flush();
    }
    if a.runs("flat") {
        flat_rows(&a, &mut pods, &mut r);
        pods.flush();
    }
    if a.runs("rss") {
        rss_rows(&a, &mut pods, &mut r);
        pods.flush();
    }
    if a.runs("ipam") {
        ipam_warm_rows(&a, &mut pods, &mut r);
        ipam_scale_rows(&a, &mut pods, &mut r);
    }
    if a.runs("api") {
        api_rows(&a, &mut pods, &mut r);
    }
    if a.runs("size") {
        size_row(&a, &mut r);
    }
    let mut m = m;
    m["loadavg_end"] = json!(loadavg());
    println!();
    println!("load average at the end: {}", loadavg());
    r.summary();
    r.write(&a.json, m, &a);
}
