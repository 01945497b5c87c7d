//! The harness every section measures with: exec'ing a plugin as a runtime does and reaping it with its
//! rusage, models of what a runtime execs for one pod, alternating comparisons, series and their medians,
//! and the configurations the sections share.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::report::Report;
use crate::{Args, Pods};

/// What every exec is given as `CNI_ARGS`: a Kubernetes pod, as the kubelet's runtime says it.
pub(crate) const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=bench";

pub(crate) const MIB: f64 = 1024.0 * 1024.0;

/// One exec, as a runtime does it.
pub(crate) struct Exec {
    pub(crate) dur: Duration,
    /// `ru_maxrss` of the process and of the children it waited for (an exec'd IPAM plugin, a delegate).
    pub(crate) rss_kib: u64,
    /// CPU time (user + system) of the process and of the children it waited for: unlike the wall
    /// time, hardly touched by what else runs on the machine.
    pub(crate) cpu: Duration,
    pub(crate) ok: bool,
    pub(crate) out: Vec<u8>,
}

#[expect(
    clippy::zombie_processes,
    reason = "reaped by wait4 in reap(): std's wait does not give the resource usage"
)]
pub(crate) fn exec(bin: &Path, env: &[(&str, &str)], stdin: &[u8]) -> Exec {
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
pub(crate) fn reap(pid: u32) -> (i32, u64, Duration) {
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
pub(crate) struct Call {
    pub(crate) bin: PathBuf,
    pub(crate) ifname: String,
    pub(crate) conf: String,
    /// `CNI_ARGS` ([`POD_ARGS`] unless a section names the pod's UID too).
    pub(crate) args: String,
}

/// What a runtime execs for one pod: ADD runs the calls in order, DEL in reverse (as Multus does with
/// its delegates). A model of one call is a plugin on its own.
pub(crate) struct Model {
    pub(crate) calls: Vec<Call>,
}

/// One ADD or DEL of a model: the whole of it, each call (in call order), the largest peak RSS.
pub(crate) struct Pass {
    pub(crate) total: Duration,
    pub(crate) calls: Vec<Duration>,
    pub(crate) rss_kib: u64,
    pub(crate) cpu: Duration,
}

impl Model {
    pub(crate) fn one(bin: &Path, conf: &Value) -> Model {
        Model {
            calls: vec![call(bin, "eth0", conf)],
        }
    }

    pub(crate) fn run(&self, a: &Args, cmd: &str, id: &str, netns: &str) -> Pass {
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
                ("CNI_ARGS", c.args.as_str()),
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

pub(crate) fn call(bin: &Path, ifname: &str, conf: &Value) -> Call {
    Call {
        bin: bin.to_path_buf(),
        ifname: ifname.into(),
        conf: conf.to_string(),
        args: POD_ARGS.into(),
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[derive(Default)]
pub(crate) struct Series(pub(crate) Vec<Duration>);

impl Series {
    pub(crate) fn raw_ms(&self) -> Vec<f64> {
        self.0.iter().map(|d| d.as_secs_f64() * 1000.0).collect()
    }
    pub(crate) fn ms(&self) -> Vec<f64> {
        let mut v = self.raw_ms();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    }
    pub(crate) fn median(&self) -> f64 {
        median(self.ms())
    }
    pub(crate) fn p90(&self) -> f64 {
        let v = self.ms();
        if v.is_empty() {
            0.0
        } else {
            v[(v.len() * 9 / 10).min(v.len() - 1)]
        }
    }
    pub(crate) fn mean(&self) -> f64 {
        let v = self.ms();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }
    pub(crate) fn json(&self) -> Value {
        json!({"n": self.0.len(), "median_ms": self.median(), "mean_ms": self.mean(),
            "p90_ms": self.p90(), "samples_ms": self.raw_ms()})
    }
}

/// What one model gave over a comparison's measured rounds.
#[derive(Default)]
pub(crate) struct Side {
    pub(crate) add: Series,
    pub(crate) del: Series,
    /// Each call's own time (call order), e.g. the cluster plugin's inside an exec'd pod.
    pub(crate) add_calls: Vec<Series>,
    pub(crate) del_calls: Vec<Series>,
    /// The largest peak RSS of one ADD.
    pub(crate) add_rss_kib: u64,
    /// CPU time of each pass.
    pub(crate) add_cpu: Series,
    pub(crate) del_cpu: Series,
}

impl Side {
    pub(crate) fn push(&mut self, add: Pass, del: Pass) {
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
pub(crate) fn cpu_line(r: &mut Report, key: &str, labels: [&str; 2], sides: [&Side; 2]) {
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
pub(crate) fn compare(
    a: &Args,
    pods: &mut Pods,
    key: &str,
    models: &[&Model],
    rounds: usize,
) -> Vec<Side> {
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
pub(crate) fn conf(
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
pub(crate) fn meta_conf(
    cluster: Value,
    networks_dir: &Path,
    cache_dir: &Path,
    networks: &[String],
) -> Value {
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
