//! The figures, the targets they are checked against (MET / NOT MET), the machine they were measured on,
//! and the JSON file.

use std::path::Path;
use std::process::Command;

use serde_json::{Map, Value, json};

use crate::Args;
use crate::harness::Series;

/// Machine-readable figures and the targets, printed as they come and written as JSON at the end.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) series: Map<String, Value>,
    pub(crate) figures: Map<String, Value>,
    pub(crate) targets: Vec<Value>,
}

impl Report {
    pub(crate) fn row(&mut self, key: &str, label: &str, s: &Series) -> f64 {
        println!(
            "  {label:<52} median {:>8.3} ms   mean {:>8.3} ms   p90 {:>8.3} ms",
            s.median(),
            s.mean(),
            s.p90()
        );
        self.series.insert(key.into(), s.json());
        s.median()
    }

    pub(crate) fn figure(&mut self, key: &str, v: impl Into<Value>) {
        self.figures.insert(key.into(), v.into());
    }

    /// A target of the form `value <= limit`.
    pub(crate) fn target(&mut self, what: &str, value: f64, limit: f64, unit: &str) {
        let met = value <= limit;
        let verdict = if met { "MET" } else { "NOT MET" };
        println!("  target: {what:<60} {value:>8.3} {unit:<3} <= {limit} {unit:<3}  {verdict}");
        self.targets
            .push(json!({"target": what, "value": value, "limit": limit,
            "unit": unit, "met": met}));
    }

    pub(crate) fn summary(&self) {
        println!();
        println!("targets (issue 12; attache-ipam: issue 13):");
        for t in &self.targets {
            println!(
                "  {:<8} {:<60} {:>8.3} {:<3} <= {} {}",
                if t["met"].as_bool() == Some(true) {
                    "MET"
                } else {
                    "NOT MET"
                },
                t["target"].as_str().unwrap_or_default(),
                t["value"].as_f64().unwrap_or_default(),
                t["unit"].as_str().unwrap_or_default(),
                t["limit"],
                t["unit"].as_str().unwrap_or_default(),
            );
        }
    }

    pub(crate) fn write(&self, path: &Path, machine: Value, a: &Args) {
        let doc = json!({"machine": machine,
            "rounds": a.rounds, "warmup_rounds": a.warmup,
            "attache": a.attache, "reference_dir": a.reference_dir,
            "series": self.series, "figures": self.figures, "targets": self.targets});
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        println!();
        println!("figures written to {}", path.display());
    }
}

pub(crate) fn output(cmd: &[&str]) -> String {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let m = json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "date": output(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "loadavg_start": loadavg(),
        "attache_commit": output(&["git", "rev-parse", "--short", "HEAD"]),
        "reference_plugins": output(&["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"]),
    });
    println!(
        "machine: {} CPUs, {}, kernel {}, {} (attache {}, reference plugins {}); load average {}",
        m["nproc"],
        m["cpu"].as_str().unwrap(),
        m["kernel"].as_str().unwrap(),
        m["date"].as_str().unwrap(),
        m["attache_commit"].as_str().unwrap(),
        m["reference_plugins"].as_str().unwrap(),
        m["loadavg_start"].as_str().unwrap()
    );
    m
}

/// The 1, 5 and 15 minute load averages: the machine is shared, and what else ran shows in the figures.
pub(crate) fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
