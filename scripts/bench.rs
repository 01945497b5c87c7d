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

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use attache::engine::record::{PodRecord, RecordStore};
use attache::netlink::{Netlink, RouteSpec, VethSpec, random_mac};
use attache::netns::NetNs;
use serde_json::{Map, Value, json};

/// What every exec is given as `CNI_ARGS`: a Kubernetes pod, as the kubelet's runtime says it.
const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=bench";
/// The native attachments of the pod-level rows.
const POD_NATIVES: &[usize] = &[0, 1, 8, 16];
/// Node state of the "flat" rows.
const HELD_ADDRESSES: u32 = 10_000;
const HELD_RECORDS: usize = 1_000;
const MIB: f64 = 1024.0 * 1024.0;

struct Args {
    attache: PathBuf,
    reference_dir: PathBuf,
    rounds: usize,
    warmup: usize,
    json: PathBuf,
    work: PathBuf,
    tag: String,
    master: String,
    /// `--only`: the sections to run (all by default).
    only: Option<Vec<String>>,
}

/// The sections, in the order they run. The kernel floor also runs for `dropin` (its DEL target).
const SECTIONS: &[&str] = &[
    "start", "floor", "dropin", "pod", "flat", "rss", "ipam", "size",
];

impl Args {
    fn runs(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == section))
    }
}

fn parse_args() -> Args {
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

fn sh(args: &[&str]) {
    let ok = Command::new(args[0])
        .args(&args[1..])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "{args:?} failed");
}

/// The pod namespaces made so far: deleted on drop (also when a failed exec unwinds).
struct Pods {
    names: Vec<String>,
}

impl Pods {
    fn add(&mut self, name: String) -> String {
        sh(&["ip", "netns", "add", &name]);
        self.names.push(name.clone());
        format!("/run/netns/{name}")
    }

    /// Delete them all between sections, and give the kernel's asynchronous netns cleanup a moment so it
    /// does not land in the next section's measurements.
    fn flush(&mut self) {
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
struct Work(PathBuf);

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One exec, as a runtime does it.
struct Exec {
    dur: Duration,
    /// `ru_maxrss` of the process and of the children it waited for (an exec'd IPAM plugin, a delegate).
    rss_kib: u64,
    /// CPU time (user + system) of the process and of the children it waited for: unlike the wall
    /// time, hardly touched by what else runs on the machine.
    cpu: Duration,
    ok: bool,
    out: Vec<u8>,
}

#[expect(
    clippy::zombie_processes,
    reason = "reaped by wait4 in reap(): std's wait does not give the resource usage"
)]
fn exec(bin: &Path, env: &[(&str, &str)], stdin: &[u8]) -> Exec {
    let t = Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    // A program that does not read its stdin (/bin/true) closes the pipe: no failure.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let (status, rss_kib, cpu) = reap(child.id());
    Exec {
        dur: t.elapsed(),
        rss_kib,
        cpu,
        ok: status == 0,
        out,
    }
}

/// `wait4` the child (std's `wait` does not return its resource usage): its raw status, peak RSS and
/// CPU time.
#[allow(unsafe_code)]
fn reap(pid: u32) -> (i32, u64, Duration) {
    use nix::libc;
    let mut status = 0;
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own child, not reaped yet; both pointers are to live locals.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
        if r == pid as libc::pid_t {
            let tv = |t: libc::timeval| {
                Duration::from_secs(t.tv_sec.max(0) as u64)
                    + Duration::from_micros(t.tv_usec.max(0) as u64)
            };
            let cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
            return (status, ru.ru_maxrss.max(0) as u64, cpu);
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "wait4: {e}");
    }
}

/// One plugin exec of a model: the binary, the interface, the configuration (serialized once).
struct Call {
    bin: PathBuf,
    ifname: String,
    conf: String,
}

/// What a runtime execs for one pod: ADD runs the calls in order, DEL in reverse (as Multus does with
/// its delegates). A model of one call is a plugin on its own.
struct Model {
    calls: Vec<Call>,
}

/// One ADD or DEL of a model: the whole of it, each call (in call order), the largest peak RSS.
struct Pass {
    total: Duration,
    calls: Vec<Duration>,
    rss_kib: u64,
    cpu: Duration,
}

impl Model {
    fn one(bin: &Path, conf: &Value) -> Model {
        Model {
            calls: vec![call(bin, "eth0", conf)],
        }
    }

    fn run(&self, a: &Args, cmd: &str, id: &str, netns: &str) -> Pass {
        let n = self.calls.len();
        let order: Vec<usize> = if cmd == "DEL" {
            (0..n).rev().collect()
        } else {
            (0..n).collect()
        };
        let path = a.reference_dir.to_str().unwrap();
        let mut pass = Pass {
            total: Duration::ZERO,
            calls: vec![Duration::ZERO; n],
            rss_kib: 0,
            cpu: Duration::ZERO,
        };
        let t = Instant::now();
        for i in order {
            let c = &self.calls[i];
            let env = [
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", c.ifname.as_str()),
                ("CNI_ARGS", POD_ARGS),
                ("CNI_PATH", path),
            ];
            let e = exec(&c.bin, &env, c.conf.as_bytes());
            // A benchmark of failures measures nothing.
            assert!(
                e.ok,
                "{} {cmd} {} failed: {}",
                c.bin.display(),
                c.ifname,
                String::from_utf8_lossy(&e.out)
            );
            pass.calls[i] = e.dur;
            pass.rss_kib = pass.rss_kib.max(e.rss_kib);
            pass.cpu += e.cpu;
        }
        pass.total = t.elapsed();
        pass
    }
}

fn call(bin: &Path, ifname: &str, conf: &Value) -> Call {
    Call {
        bin: bin.to_path_buf(),
        ifname: ifname.into(),
        conf: conf.to_string(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[derive(Default)]
struct Series(Vec<Duration>);

impl Series {
    fn raw_ms(&self) -> Vec<f64> {
        self.0.iter().map(|d| d.as_secs_f64() * 1000.0).collect()
    }
    fn ms(&self) -> Vec<f64> {
        let mut v = self.raw_ms();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    }
    fn median(&self) -> f64 {
        median(self.ms())
    }
    fn p90(&self) -> f64 {
        let v = self.ms();
        if v.is_empty() {
            0.0
        } else {
            v[(v.len() * 9 / 10).min(v.len() - 1)]
        }
    }
    fn mean(&self) -> f64 {
        let v = self.ms();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }
    fn json(&self) -> Value {
        json!({"n": self.0.len(), "median_ms": self.median(), "mean_ms": self.mean(),
            "p90_ms": self.p90(), "samples_ms": self.raw_ms()})
    }
}

/// What one model gave over a comparison's measured rounds.
#[derive(Default)]
struct Side {
    add: Series,
    del: Series,
    /// Each call's own time (call order), e.g. the cluster plugin's inside an exec'd pod.
    add_calls: Vec<Series>,
    del_calls: Vec<Series>,
    /// The largest peak RSS of one ADD.
    add_rss_kib: u64,
    /// CPU time of each pass.
    add_cpu: Series,
    del_cpu: Series,
}

impl Side {
    fn push(&mut self, add: Pass, del: Pass) {
        self.add.0.push(add.total);
        self.del.0.push(del.total);
        for (calls, pass) in [(&mut self.add_calls, &add), (&mut self.del_calls, &del)] {
            calls.resize_with(pass.calls.len(), Series::default);
            for (s, d) in calls.iter_mut().zip(&pass.calls) {
                s.0.push(*d);
            }
        }
        self.add_rss_kib = self.add_rss_kib.max(add.rss_kib);
        self.add_cpu.0.push(add.cpu);
        self.del_cpu.0.push(del.cpu);
    }
}

/// CPU time (user + system, children included) of two sides, medians: what each costs the machine,
/// whatever else runs on it.
fn cpu_line(r: &mut Report, key: &str, labels: [&str; 2], sides: [&Side; 2]) {
    let mut m = Vec::new();
    for (side, what) in sides.iter().zip(labels) {
        for (s, cmd) in [(&side.add_cpu, "add"), (&side.del_cpu, "del")] {
            r.series.insert(format!("{key}_{what}_{cmd}_cpu"), s.json());
            m.push(s.median());
        }
    }
    println!(
        "  CPU time (user+sys, children included), medians: {} ADD {:.3} ms  DEL {:.3} ms;  {} ADD {:.3} ms  DEL {:.3} ms",
        labels[0], m[0], m[1], labels[1], m[2], m[3]
    );
}

/// Run models against each other: each round gives every model a fresh pod, ADDs them all, then DELs
/// them all, the order rotating from round to round.
fn compare(a: &Args, pods: &mut Pods, key: &str, models: &[&Model], rounds: usize) -> Vec<Side> {
    let n = models.len();
    let mut sides: Vec<Side> = models.iter().map(|_| Side::default()).collect();
    for round in 0..a.warmup + rounds {
        let ids: Vec<String> = (0..n).map(|m| format!("{key}-{round}-{m}")).collect();
        let netns: Vec<String> = ids
            .iter()
            .map(|id| pods.add(format!("{}-{id}", a.tag)))
            .collect();
        let order: Vec<usize> = (0..n).map(|k| (k + round) % n).collect();
        let mut adds: Vec<Option<Pass>> = (0..n).map(|_| None).collect();
        for &m in &order {
            adds[m] = Some(models[m].run(a, "ADD", &ids[m], &netns[m]));
        }
        for &m in &order {
            let del = models[m].run(a, "DEL", &ids[m], &netns[m]);
            if round >= a.warmup {
                sides[m].push(adds[m].take().unwrap(), del);
            }
        }
    }
    sides
}

/// A drop-in plugin's configuration: bridge (a gateway on the node's bridge) or macvlan on `master`.
fn conf(
    kind: &str,
    name: &str,
    bridge: &str,
    subnet: &str,
    data_dir: &Path,
    master: &str,
) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": kind,
        "ipam": {"type": "host-local", "subnet": subnet, "dataDir": data_dir, "routes": [{"dst": "0.0.0.0/0"}]}
    });
    if kind == "bridge" {
        c["bridge"] = json!(bridge);
        c["isGateway"] = json!(true);
    } else {
        c["master"] = json!(master);
        c["mode"] = json!("bridge");
    }
    c
}

/// The meta-plugin's configuration: `cluster` as the cluster network, the pod's networks annotation
/// (from the runtime, as containerd passes it with the pod-annotations capability) selecting `networks`
/// from `networks_dir`.
fn meta_conf(cluster: Value, networks_dir: &Path, cache_dir: &Path, networks: &[String]) -> Value {
    let mut annotations = Map::new();
    if !networks.is_empty() {
        annotations.insert(
            "k8s.v1.cni.cncf.io/networks".into(),
            json!(networks.join(",")),
        );
    }
    json!({"cniVersion": "1.0.0", "name": "attache", "type": "attache",
        "capabilities": {"io.kubernetes.cri.pod-annotations": true},
        "clusterNetwork": cluster, "networksDir": networks_dir, "cacheDir": cache_dir,
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": annotations}})
}

/// Machine-readable figures and the targets, printed as they come and written as JSON at the end.
#[derive(Default)]
struct Report {
    series: Map<String, Value>,
    figures: Map<String, Value>,
    targets: Vec<Value>,
}

impl Report {
    fn row(&mut self, key: &str, label: &str, s: &Series) -> f64 {
        println!(
            "  {label:<52} median {:>8.3} ms   mean {:>8.3} ms   p90 {:>8.3} ms",
            s.median(),
            s.mean(),
            s.p90()
        );
        self.series.insert(key.into(), s.json());
        s.median()
    }

    fn figure(&mut self, key: &str, v: impl Into<Value>) {
        self.figures.insert(key.into(), v.into());
    }

    /// A target of the form `value <= limit`.
    fn target(&mut self, what: &str, value: f64, limit: f64, unit: &str) {
        let met = value <= limit;
        let verdict = if met { "MET" } else { "NOT MET" };
        println!("  target: {what:<60} {value:>8.3} {unit:<3} <= {limit} {unit:<3}  {verdict}");
        self.targets
            .push(json!({"target": what, "value": value, "limit": limit,
            "unit": unit, "met": met}));
    }

    fn summary(&self) {
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

    fn write(&self, path: &Path, machine: Value, a: &Args) {
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

fn output(cmd: &[&str]) -> String {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> Value {
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
fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Process start: CNI_COMMAND=VERSION, and /bin/true as the machine's fork+exec floor.
fn process_start(a: &Args, r: &mut Report) -> f64 {
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

/// The floor: the same kernel work as one bridge attachment, in-process, no IPAM, no configuration;
/// and eight veths of a pod deleted as one link group against one by one.
async fn floor(a: &Args, pods: &mut Pods, r: &mut Report) -> (f64, f64) {
    let node = Netlink::connect(None).unwrap();
    if node.link("brfloor").await.unwrap().is_none() {
        node.create_bridge("brfloor", None, random_mac().unwrap(), false)
            .await
            .unwrap();
    }
    let br = node.link("brfloor").await.unwrap().unwrap();
    let (mut add, mut del, mut group8, mut one8) = (
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    for round in 0..a.rounds {
        let p = pods.add(format!("{}-floor{round}", a.tag));
        let ns = NetNs::open(Path::new(&p)).unwrap();
        let host = format!("vfl{round}");
        let t = Instant::now();
        let pod = Netlink::connect(Some(&ns)).unwrap();
        node.create_veth(&VethSpec {
            name: &host,
            mac: random_mac().unwrap(),
            up: false,
            peer: "eth0",
            peer_mac: random_mac().unwrap(),
            peer_up: false,
            peer_netns: ns.raw_fd(),
            mtu: None,
            peer_group: None,
        })
        .await
        .unwrap();
        node.set_master_up(&host, br.index, "floor").await.unwrap();
        let l = pod.link("eth0").await.unwrap().unwrap();
        pod.add_addr(l.index, "10.203.0.2/16".parse().unwrap())
            .await
            .unwrap();
        pod.set_up("eth0").await.unwrap();
        pod.add_route(&RouteSpec::via(
            "0.0.0.0/0".parse().unwrap(),
            Some("10.203.0.1".parse::<IpAddr>().unwrap()),
            l.index,
        ))
        .await
        .unwrap();
        add.0.push(t.elapsed());
        let t = Instant::now();
        pod.del_link("eth0").await.unwrap();
        del.0.push(t.elapsed());
    }
    for round in 0..(a.rounds / 4).max(3) {
        for grouped in [true, false] {
            let g = if grouped { "g" } else { "s" };
            let p = pods.add(format!("{}-grp{round}{g}", a.tag));
            let ns = NetNs::open(Path::new(&p)).unwrap();
            let pod = Netlink::connect(Some(&ns)).unwrap();
            for i in 0..8 {
                node.create_veth(&VethSpec {
                    name: &format!("vg{round}{g}{i}"),
                    mac: random_mac().unwrap(),
                    up: true,
                    peer: &format!("net{i}"),
                    peer_mac: random_mac().unwrap(),
                    peer_up: false,
                    peer_netns: ns.raw_fd(),
                    mtu: None,
                    peer_group: None,
                })
                .await
                .unwrap();
                pod.set_group(&format!("net{i}"), 0x6174).await.unwrap();
            }
            let t = Instant::now();
            if grouped {
                pod.del_group(0x6174).await.unwrap();
                group8.0.push(t.elapsed());
            } else {
                for i in 0..8 {
                    pod.del_link(&format!("net{i}")).await.unwrap();
                }
                one8.0.push(t.elapsed());
            }
        }
    }
    println!();
    println!(
        "kernel floor (the same netlink work in-process: no exec, no configuration, no IPAM):"
    );
    let fa = r.row("floor_bridge_add", "bridge attachment ADD", &add);
    let fd = r.row(
        "floor_bridge_del",
        "bridge attachment DEL (veth unregister)",
        &del,
    );
    r.row(
        "floor_8veth_group_del",
        "8 veths deleted as one link group",
        &group8,
    );
    r.row(
        "floor_8veth_one_by_one_del",
        "8 veths deleted one by one",
        &one8,
    );
    (fa, fd)
}

/// Drop-in: the reference plugin, and attache installed under its name, same configuration shape.
fn drop_in_models(a: &Args, kind: &str) -> (Model, Model) {
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

fn drop_in(a: &Args, pods: &mut Pods, r: &mut Report, kind: &str, floor: (f64, f64)) {
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

/// The pod-level rows: the meta-plugin (cluster network: the reference ptp + host-local, exec'd; N native
/// macvlan attachments from networksDir) against the exec'd model (the same ptp, then N reference
/// macvlans, one after the other with the same configurations; DEL in reverse).
fn pod_rows(a: &Args, pods: &mut Pods, r: &mut Report) {
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
fn ptp_conf(a: &Args) -> Value {
    json!({"cniVersion": "1.0.0", "name": "podnet", "type": "ptp",
        "ipam": {"type": "host-local", "subnet": "10.205.0.0/16", "dataDir": a.work.join("ipam-pod"),
            "routes": [{"dst": "0.0.0.0/0"}]}})
}

/// A pod with `cluster` and `n` macvlan networks: exec'd one after the other (the cluster plugin, then
/// the reference macvlan for each), and through the meta-plugin (the macvlans native).
fn pod_models(a: &Args, n: usize, cluster: &Value) -> (Model, Model) {
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
fn networks(a: &Args) -> (PathBuf, Vec<Value>) {
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

/// `count` addresses of `subnet` held in host-local's store of `network`, from the first after the
/// gateway, with `last_reserved_ip.0` on the last so the next one is free (the format of
/// src/ipam/store.rs, the reference plugin's).
fn hold_addresses(data_dir: &Path, network: &str, subnet: Ipv4Addr, count: u32) {
    let dir = data_dir.join(network);
    std::fs::create_dir_all(&dir).unwrap();
    let first = u32::from(subnet) + 2;
    for k in 0..count {
        let ip = Ipv4Addr::from(first + k);
        std::fs::write(dir.join(ip.to_string()), format!("fill{k}\r\neth0")).unwrap();
    }
    std::fs::write(
        dir.join("last_reserved_ip.0"),
        Ipv4Addr::from(first + count - 1).to_string(),
    )
    .unwrap();
}

/// `count` complete meta-plugin records in `cache_dir` (written by attache's own record store), each
/// a pod with its cluster attachment and its result.
fn hold_records(cache_dir: &Path, cluster: &Value, count: usize) {
    let store = RecordStore::new(cache_dir);
    for k in 0..count {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 230, 0, 2)) + k as u32);
        let rec: PodRecord = serde_json::from_value(json!({
            "kind": attache::engine::record::RECORD_KIND, "network": "attache",
            "containerId": format!("held{k:05}"), "ifname": "eth0",
            "netns": format!("/run/netns/held{k}"),
            "pod": {"namespace": "default", "name": format!("held{k}"), "uid": format!("uid-{k}")},
            "complete": true,
            "attachments": [{"network": cluster["name"], "ifname": "eth0", "driver": "chain",
                "conf": {"cniVersion": "1.0.0", "name": cluster["name"], "plugins": [cluster]},
                "cniArgs": POD_ARGS,
                "result": {"cniVersion": "1.1.0",
                    "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": format!("/run/netns/held{k}")}],
                    "ips": [{"address": format!("{ip}/16"), "gateway": "10.230.0.1", "interface": 0}]}}]
        }))
        .expect("a record of attache's shape");
        store.save(&rec).unwrap();
    }
}

/// Flat with node state: each plugin on an empty node against a node whose range holds 10 000
/// addresses (and, for the meta-plugin, whose cacheDir holds 1 000 records), alternately.
fn flat_rows(a: &Args, pods: &mut Pods, r: &mut Report) {
    let data = a.work.join("ipam-flat");
    let empty_cache = a.work.join("cache-flat-empty");
    let held_cache = a.work.join("cache-flat-held");
    let bridge = |name: &str, subnet: u8| {
        conf(
            "bridge",
            name,
            &format!("brf{subnet}"),
            &format!("10.{subnet}.0.0/16"),
            &data,
            "",
        )
    };
    println!();
    println!(
        "flat with node state: empty node vs {HELD_ADDRESSES} addresses held in the network's /16 (+ {HELD_RECORDS} meta-plugin records in cacheDir)"
    );
    let rows: [(&str, &str, &Path, u8); 3] = [
        ("flat_attache", "attache drop-in bridge", &a.attache, 210),
        (
            "flat_reference",
            "reference bridge (for information)",
            &a.reference_dir.join("bridge"),
            212,
        ),
        (
            "flat_meta",
            "attache meta-plugin, native bridge cluster",
            &a.attache,
            214,
        ),
    ];
    for (key, label, bin, subnet) in rows {
        let (e_name, h_name) = (format!("{key}-e"), format!("{key}-h"));
        let (empty_conf, held_conf) = (bridge(&e_name, subnet), bridge(&h_name, subnet + 1));
        hold_addresses(
            &data,
            &h_name,
            Ipv4Addr::new(10, subnet + 1, 0, 0),
            HELD_ADDRESSES,
        );
        let (empty, held) = if key == "flat_meta" {
            hold_records(&held_cache, &held_conf, HELD_RECORDS);
            let (nets, _) = networks(a);
            (
                Model::one(bin, &meta_conf(empty_conf, &nets, &empty_cache, &[])),
                Model::one(bin, &meta_conf(held_conf, &nets, &held_cache, &[])),
            )
        } else {
            (Model::one(bin, &empty_conf), Model::one(bin, &held_conf))
        };
        let [e, h]: [Side; 2] = compare(a, pods, key, &[&empty, &held], a.rounds)
            .try_into()
            .ok()
            .unwrap();
        println!("  {label}:");
        let ea = r.row(&format!("{key}_empty_add"), "empty node ADD", &e.add);
        let ha = r.row(&format!("{key}_held_add"), "loaded node ADD", &h.add);
        let ed = r.row(&format!("{key}_empty_del"), "empty node DEL", &e.del);
        let hd = r.row(&format!("{key}_held_del"), "loaded node DEL", &h.del);
        cpu_line(r, key, ["empty", "loaded"], [&e, &h]);
        if key == "flat_reference" {
            println!(
                "  ratio loaded/empty (medians): ADD {:.2}x   DEL {:.2}x",
                ha / ea,
                hd / ed
            );
            r.figure("flat_reference_ratio_add", ha / ea);
            r.figure("flat_reference_ratio_del", hd / ed);
        } else {
            r.target(&format!("{label}: ADD loaded/empty"), ha / ea, 1.2, "x");
            r.target(&format!("{label}: DEL loaded/empty"), hd / ed, 1.2, "x");
        }
    }
}

/// Peak RSS of one ADD (wait4's ru_maxrss: the largest of the process and the children it waited for),
/// the largest over a few rounds of its own.
fn rss_rows(a: &Args, pods: &mut Pods, r: &mut Report) {
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

/// The warm rows' range: one block (`blockSize` = the range's prefix), pre-seeded as this node's.
const IPAM_WARM_RANGE: &str = "10.220.0.0/16";
const IPAM_WARM_GATEWAY: &str = "10.220.0.1";
/// The scale row: simulated nodes, exec'd ADDs each (all at once), the range and its block size.
const SCALE_NODES: usize = 10;
const SCALE_PODS: usize = 100;
const SCALE_RANGE: &str = "10.40.0.0/20";
const SCALE_BLOCK: u8 = 26;
/// The users of the bench's API server (static tokens): kubectl's admin, and the plugin (whose requests
/// the audit log counts).
const ADMIN_USER: &str = "bench-admin";
const PLUGIN_USER: &str = "attache-ipam-bench";
const API_URL: &str = "https://127.0.0.1:6443";

/// The kube-apiserver binary (`ATTACHE_KUBE_APISERVER`, else scripts/kube-apiserver's cache): resolved
/// before anything runs, so that a machine without it fails at once, not after the other sections.
fn kube_apiserver() -> PathBuf {
    let p = std::env::var_os("ATTACHE_KUBE_APISERVER")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/attache-test/kube-apiserver"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/kube-apiserver (it builds kube-apiserver v1.20.2 once per machine), or set ATTACHE_KUBE_APISERVER",
        p.display()
    );
    for tool in ["/usr/bin/etcd", "/usr/bin/openssl"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: scripts/bench installs etcd-server and openssl"
        );
    }
    assert!(
        !output(&["sh", "-c", "command -v kubectl"]).is_empty(),
        "kubectl is missing: scripts/bench installs kubernetes-client"
    );
    p
}

/// An IPAM plugin's network configuration: a main plugin (never run here) with `ipam`.
fn ipam_netconf(name: &str, kind: &str, ipam: Value) -> Value {
    json!({"cniVersion": "1.0.0", "name": name, "type": kind, "ipam": ipam})
}

/// attache-ipam's `ipam` object for the warm rows: the range in one block, and a kubeconfig that does not
/// exist, so that any API access fails the ADD (and the benchmark) loudly.
fn warm_cluster_ipam(data_dir: &Path, a: &Args) -> Value {
    json!({"type": "attache-ipam", "range": IPAM_WARM_RANGE, "blockSize": 16,
        "gateway": IPAM_WARM_GATEWAY, "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": data_dir, "nodeName": "bench-node",
        "kubeconfig": a.work.join("no-such-kubeconfig"), "apiTimeout": 10})
}

/// host-local's `ipam` object equivalent to [`warm_cluster_ipam`]: the same range as its subnet (whose
/// default gateway is the same first address).
fn warm_host_local_ipam(data_dir: &Path) -> Value {
    json!({"type": "host-local", "subnet": IPAM_WARM_RANGE, "gateway": IPAM_WARM_GATEWAY,
        "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data_dir})
}

/// Make the warm range's one block this node's, as a claim leaves it: the `owned/<block>` record,
/// written by attache-ipam's own code. The ADDs then take the hot path (no API call).
fn seed_warm_block(data_dir: &Path) {
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
fn attache_ipam_bin(a: &Args) -> PathBuf {
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
fn ipam_exec(a: &Args, bin: &Path, cmd: &str, id: &str, netns: &str, conf: &str) -> Exec {
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
fn ipam_warm_rows(a: &Args, pods: &mut Pods, r: &mut Report) {
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

/// etcd and kube-apiserver in the benchmark's node netns (the bench runs inside it: they listen on its
/// 127.0.0.1 only), with their own PKI, static tokens, AlwaysAllow and an audit log of every request
/// (level Metadata). Stopped, and their folder removed, on drop — also when the benchmark fails. They
/// die with the benchmark too (`PR_SET_PDEATHSIG`), and scripts/bench kills what is left in its netns.
struct ApiServer {
    dir: PathBuf,
    admin_kubeconfig: PathBuf,
    plugin_kubeconfig: PathBuf,
    audit_log: PathBuf,
    children: Vec<(String, std::process::Child)>,
}

impl ApiServer {
    fn start(dir: &Path, bin: &Path) -> ApiServer {
        std::fs::create_dir_all(dir).unwrap();
        let pki = Command::new("sh")
            .arg("-ec")
            .arg(
                r#"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=attache-bench-ca
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=kube-apiserver
printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes.default.svc\n' > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile san.ext
openssl genrsa -out sa.key 2048
openssl rsa -in sa.key -pubout -out sa.pub
"#,
            )
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            pki.status.success(),
            "openssl (the API server's PKI): {}",
            String::from_utf8_lossy(&pki.stderr)
        );
        let token = |user: &str| format!("{user}-token-{}", std::process::id());
        std::fs::write(
            dir.join("tokens.csv"),
            format!(
                "{},{ADMIN_USER},{ADMIN_USER}-uid,system:masters\n{},{PLUGIN_USER},{PLUGIN_USER}-uid\n",
                token(ADMIN_USER),
                token(PLUGIN_USER)
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("audit.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n",
        )
        .unwrap();
        let mut me = ApiServer {
            dir: dir.to_path_buf(),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            plugin_kubeconfig: dir.join("plugin.kubeconfig"),
            audit_log: dir.join("audit.log"),
            children: vec![],
        };
        me.kubeconfig(&me.admin_kubeconfig, &token(ADMIN_USER));
        me.kubeconfig(&me.plugin_kubeconfig, &token(PLUGIN_USER));
        let d = dir.display();
        me.spawn(
            "etcd",
            &[
                "/usr/bin/etcd".into(),
                "--name=attache-bench".into(),
                format!("--data-dir={d}/etcd"),
                "--listen-client-urls=http://127.0.0.1:2379".into(),
                "--advertise-client-urls=http://127.0.0.1:2379".into(),
                "--listen-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-cluster=attache-bench=http://127.0.0.1:2380".into(),
                "--listen-metrics-urls=http://127.0.0.1:2381".into(),
            ],
        );
        me.spawn(
            "kube-apiserver",
            &[
                bin.display().to_string(),
                "--etcd-servers=http://127.0.0.1:2379".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=6443".into(),
                "--insecure-port=0".into(),
                "--advertise-address=192.0.2.1".into(),
                format!("--cert-dir={d}/certs"),
                format!("--tls-cert-file={d}/server.crt"),
                format!("--tls-private-key-file={d}/server.key"),
                format!("--client-ca-file={d}/ca.crt"),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={d}/sa.pub"),
                format!("--service-account-signing-key-file={d}/sa.key"),
                format!("--token-auth-file={d}/tokens.csv"),
                "--authorization-mode=AlwaysAllow".into(),
                "--service-cluster-ip-range=10.96.0.0/24".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                format!("--audit-policy-file={d}/audit.yaml"),
                format!("--audit-log-path={d}/audit.log"),
            ],
        );
        me.wait_for("kube-apiserver to be ready", 90, |s| {
            s.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
        me
    }

    fn kubeconfig(&self, path: &Path, token: &str) {
        let kc = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "bench", "cluster": {"server": API_URL, "certificate-authority": self.dir.join("ca.crt")}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "bench", "user": "u"}}],
            "current-context": "c"
        });
        std::fs::write(path, kc.to_string()).unwrap();
    }

    fn spawn(&mut self, name: &str, argv: &[String]) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        #[allow(unsafe_code)]
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", argv[0]));
        self.children.push((name.into(), child));
    }

    /// The last lines of a server's log (for failures).
    fn log(&self, name: &str) -> String {
        let l = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = l.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Poll `ok` for up to `secs`, failing loudly if a server exits or time runs out.
    fn wait_for(&mut self, what: &str, secs: u64, ok: impl Fn(&ApiServer) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            for (name, c) in &mut self.children {
                if let Ok(Some(st)) = c.try_wait() {
                    let name = name.clone();
                    panic!("{name} exited ({st}): {}", self.log(&name));
                }
            }
            if ok(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                self.log("kube-apiserver")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn kubectl_with(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut child = Command::new("kubectl")
            .arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        self.kubectl_with(args, None)
    }

    fn must(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_with(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn get(&self, what: &str) -> Value {
        serde_json::from_str(&self.must(&["get", "-o", "json", what], None)).unwrap()
    }

    /// The plugin's accepted writes to attache-ipam's resources, as `(verb, resource)`: every audit
    /// entry of its user at ResponseComplete to group ipam.attache.dev, not a read, with a 2xx answer.
    fn plugin_writes(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| {
                e["user"]["username"] == PLUGIN_USER
                    && e["stage"] == "ResponseComplete"
                    && e["objectRef"]["apiGroup"] == "ipam.attache.dev"
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

    /// Every request of the plugin's user (ResponseComplete): reads included.
    fn plugin_requests(&self) -> usize {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["user"]["username"] == PLUGIN_USER && e["stage"] == "ResponseComplete")
            .count()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // The API server first, then its etcd.
        for (_, c) in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The CustomResourceDefinitions of deploy/attache.yaml (only those documents).
fn ipam_crds() -> String {
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
struct ScaleAdd {
    node: usize,
    ip: IpAddr,
    dur: Duration,
}

/// Scale against a real API server: 10 simulated nodes (each its own nodeName, dataDir and thread, one
/// range) exec attache-ipam's ADD 100 times each, all at once; the wall time, the blocks claimed and the
/// plugin's API writes (from the audit log), and no address twice.
fn ipam_scale_rows(a: &Args, pods: &mut Pods, r: &mut Report, apiserver_bin: &Path) {
    let bin = attache_ipam_bin(a);
    println!();
    println!(
        "attache-ipam at scale: a real kube-apiserver (+ etcd) in the node netns; {SCALE_NODES} simulated nodes x {SCALE_PODS} exec'd ADDs, all nodes at once, range {SCALE_RANGE} in /{SCALE_BLOCK} blocks"
    );
    let t = Instant::now();
    let mut api = ApiServer::start(&a.work.join("apiserver"), apiserver_bin);
    api.must(&["apply", "-f", "-"], Some(&ipam_crds()));
    api.wait_for("the AddressBlock CRD to be served", 60, |s| {
        s.kubectl(&["get", "addressblocks.ipam.attache.dev"])
            .status
            .success()
    });
    let nodes: Vec<String> = (0..SCALE_NODES).map(|i| format!("worker-{i}")).collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": nodes.iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}))
        .collect::<Vec<_>>()});
    api.must(&["create", "-f", "-"], Some(&list.to_string()));
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
                    "kubeconfig": api.plugin_kubeconfig, "network_name": "default",
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
    let blocks: Vec<(ipnet::IpNet, String)> = api.get("addressblocks.ipam.attache.dev")["items"]
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
    let pools = api.get("addresspools.ipam.attache.dev");
    let ranges: usize = pools["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["spec"]["ranges"].as_array().map_or(0, Vec::len))
        .sum();
    // The audit log's last entries may trail the answers a moment.
    let mut writes = api.plugin_writes();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let again = api.plugin_writes();
        if again.len() == writes.len() {
            break;
        }
        writes = again;
    }
    let requests = api.plugin_requests();
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

fn size_row(a: &Args, r: &mut Report) {
    let bytes = std::fs::metadata(&a.attache).unwrap().len();
    println!();
    println!("binary:");
    r.figure("attache_binary_bytes", bytes);
    r.target(
        &format!("release binary size ({bytes} bytes)"),
        bytes as f64 / MIB,
        12.0,
        "MiB",
    );
}

/// The benchmark creates and deletes interfaces: only ever in a namespace of its own (a named one, as
/// scripts/bench makes it), never the host's.
fn refuse_host_netns() {
    let named = output(&["ip", "netns", "identify", &std::process::id().to_string()]);
    assert!(
        !named.is_empty(),
        "the benchmark runs only inside a private node netns: use scripts/bench"
    );
}

fn main() {
    let a = parse_args();
    refuse_host_netns();
    // The ipam section's API server: missing tools fail now, not after the other sections.
    let apiserver = a.runs("ipam").then(kube_apiserver);
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
        ipam_scale_rows(&a, &mut pods, &mut r, apiserver.as_deref().unwrap());
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
