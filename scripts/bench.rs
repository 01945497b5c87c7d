//! The benchmark behind `scripts/bench` (not a test: it prints numbers, it asserts nothing).
//!
//! Runs inside a private "node" netns. For each round it makes fresh pod namespaces and execs, alternately,
//! the reference plugin and attache for the same configuration (ADD, then DEL), timing each exec as a
//! runtime would see it (fork, exec, wait). The floor is the same netlink work done in-process with no
//! process, no configuration and no IPAM: what the kernel itself costs.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use attache::netlink::{Netlink, RouteSpec, VethSpec, random_mac};
use attache::netns::NetNs;
use serde_json::{Value, json};

struct Args {
    attache: PathBuf,
    reference_dir: PathBuf,
    rounds: usize,
    work: PathBuf,
    tag: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        attache: PathBuf::from("target/x86_64-unknown-linux-gnu/release/attache"),
        reference_dir: PathBuf::from("/usr/lib/cni"),
        rounds: 40,
        work: std::env::temp_dir().join(format!("attache-bench-{}", std::process::id())),
        tag: format!("ab{}", std::process::id()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--attache" => a.attache = v.into(),
            "--reference-dir" => a.reference_dir = v.into(),
            "--rounds" => a.rounds = v.parse().expect("--rounds N"),
            "--work" => a.work = v.into(),
            "--tag" => a.tag = v,
            other => panic!("unknown argument {other}"),
        }
    }
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

struct Pods {
    names: Vec<String>,
}

impl Pods {
    fn add(&mut self, name: String) -> String {
        sh(&["ip", "netns", "add", &name]);
        self.names.push(name.clone());
        format!("/run/netns/{name}")
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Exec a plugin once and time it; panics on failure (a benchmark of failures measures nothing).
fn cni(bin: &Path, cmd: &str, id: &str, netns: &str, conf: &Value, path: &Path) -> Duration {
    let t = Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{} {cmd} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    d
}

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

#[derive(Default)]
struct Series(Vec<Duration>);

impl Series {
    fn ms(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.0.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    }
    fn median(&self) -> f64 {
        let v = self.ms();
        if v.is_empty() { 0.0 } else { v[v.len() / 2] }
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
}

fn row(what: &str, s: &Series) {
    println!(
        "  {what:<44} median {:>7.3} ms   mean {:>7.3} ms   p90 {:>7.3} ms",
        s.median(),
        s.mean(),
        s.p90()
    );
}

/// One kind of attachment: reference vs attache, alternating, fresh pods every round.
fn compare(
    a: &Args,
    kind: &str,
    master: &str,
    pods: &mut Pods,
) -> (Series, Series, Series, Series) {
    let (mut ref_add, mut att_add, mut ref_del, mut att_del) = (
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    let data = a.work.join(format!("ipam-{kind}"));
    let ref_conf = conf(
        kind,
        &format!("ref{kind}"),
        "brref",
        "10.201.0.0/16",
        &data,
        master,
    );
    let att_conf = conf(
        kind,
        &format!("att{kind}"),
        "bratt",
        "10.202.0.0/16",
        &data,
        master,
    );
    let ref_bin = a.reference_dir.join(kind);
    for round in 0..a.rounds + 2 {
        let rp = pods.add(format!("{}-{kind}-r{round}", a.tag));
        let ap = pods.add(format!("{}-{kind}-a{round}", a.tag));
        let id_r = format!("r{round}");
        let id_a = format!("a{round}");
        // Alternate who goes first, so neither always meets a warmer cache.
        let both = |cmd: &str| {
            let r = || cni(&ref_bin, cmd, &id_r, &rp, &ref_conf, &a.reference_dir);
            let x = || cni(&a.attache, cmd, &id_a, &ap, &att_conf, &a.reference_dir);
            if round % 2 == 0 {
                let t = r();
                (t, x())
            } else {
                let t = x();
                (r(), t)
            }
        };
        let (t_ra, t_aa) = both("ADD");
        let (t_rd, t_ad) = both("DEL");
        if round >= 2 {
            // The first rounds create the bridges and warm the page cache: not measured.
            ref_add.0.push(t_ra);
            att_add.0.push(t_aa);
            ref_del.0.push(t_rd);
            att_del.0.push(t_ad);
        }
    }
    (ref_add, att_add, ref_del, att_del)
}

/// The floor: the same kernel work as one bridge attachment, in-process, no IPAM, no config.
async fn floor(a: &Args, pods: &mut Pods) -> (Series, Series, Series, Series) {
    let node = Netlink::connect(None).unwrap();
    let br = node.link("brfloor").await.unwrap();
    if br.is_none() {
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
    // Eight veths in one pod: deleted as one link group vs one by one.
    for round in 0..(a.rounds / 4).max(3) {
        for grouped in [true, false] {
            let p = pods.add(format!(
                "{}-grp{round}{}",
                a.tag,
                if grouped { "g" } else { "s" }
            ));
            let ns = NetNs::open(Path::new(&p)).unwrap();
            let pod = Netlink::connect(Some(&ns)).unwrap();
            for i in 0..8 {
                let host = format!("vg{round}{}{i}", if grouped { "g" } else { "s" });
                node.create_veth(&VethSpec {
                    name: &host,
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
    (add, del, group8, one8)
}

/// A pod with several native networks through the meta-plugin: one ADD attaches all of them, one DEL
/// removes them with one kernel unregister (a link group).
fn meta_pod(a: &Args, pods: &mut Pods, networks: usize) -> (Series, Series) {
    let dir = a.work.join("networks");
    std::fs::create_dir_all(&dir).unwrap();
    let data = a.work.join("ipam-meta");
    let mut yaml = String::new();
    let mut names = Vec::new();
    for i in 0..networks {
        yaml += &format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: n{i}\n  namespace: default\nspec:\n  config: '{}'\n---\n",
            json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": format!("brm{i}"),
                "ipam": {"type": "host-local", "subnet": format!("10.21{i}.0.0/16"), "dataDir": data}})
        );
        names.push(format!("n{i}"));
    }
    std::fs::write(dir.join("nets.yaml"), yaml).unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": "attache", "type": "attache",
        "clusterNetwork": conf("bridge", "metacluster", "brmc", "10.209.0.0/16", &data, ""),
        "networksDir": dir, "cacheDir": a.work.join("cache"),
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"k8s.v1.cni.cncf.io/networks": names.join(",")}}});
    let (mut add, mut del) = (Series::default(), Series::default());
    for round in 0..(a.rounds / 2).max(5) {
        let p = pods.add(format!("{}-meta{round}", a.tag));
        let id = format!("m{round}");
        let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=bench";
        let run = |cmd: &str| -> Duration {
            let t = Instant::now();
            let mut child = Command::new(&a.attache)
                .env_clear()
                .env("CNI_COMMAND", cmd)
                .env("CNI_CONTAINERID", &id)
                .env("CNI_NETNS", &p)
                .env("CNI_IFNAME", "eth0")
                .env("CNI_ARGS", args)
                .env("CNI_PATH", &a.reference_dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(conf.to_string().as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "meta {cmd}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            t.elapsed()
        };
        add.0.push(run("ADD"));
        del.0.push(run("DEL"));
    }
    (add, del)
}

fn exec_cost(bin: &Path, rounds: usize) -> Series {
    let mut s = Series::default();
    for _ in 0..rounds {
        let t = Instant::now();
        let mut c = Command::new(bin)
            .env_clear()
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // /bin/true does not read its stdin: a broken pipe is expected there.
        let _ = c
            .stdin
            .take()
            .unwrap()
            .write_all(b"{\"cniVersion\":\"1.0.0\"}");
        c.wait().unwrap();
        s.0.push(t.elapsed());
    }
    s
}

fn main() {
    let a = parse_args();
    std::fs::create_dir_all(&a.work).unwrap();
    let mut pods = Pods { names: vec![] };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    println!(
        "attache benchmark: {} measured rounds per series, fresh pod netns each, exec'd as a runtime does",
        a.rounds
    );
    println!();
    println!("process start (CNI_COMMAND=VERSION; /bin/true is the machine's fork+exec floor):");
    row("/bin/true", &exec_cost(Path::new("/bin/true"), a.rounds));
    let exec_ref = exec_cost(&a.reference_dir.join("bridge"), a.rounds);
    row("reference bridge", &exec_ref);
    let exec_attache = exec_cost(&a.attache, a.rounds);
    row("attache", &exec_attache);

    let (fadd, fdel, g8, o8) = rt.block_on(floor(&a, &mut pods));
    let mut kinds = vec![("bridge", String::new())];
    if let Some(m) = std::env::var("BENCH_MACVLAN_MASTER")
        .ok()
        .filter(|m| !m.is_empty())
    {
        kinds.push(("macvlan", m));
    }
    for (kind, master) in kinds {
        let (ra, aa, rd, ad) = compare(&a, kind, &master, &mut pods);
        println!();
        println!("{kind} + host-local:");
        row("reference ADD", &ra);
        row("attache ADD", &aa);
        row("reference DEL", &rd);
        row("attache DEL", &ad);
        println!(
            "  ratio attache/reference (median): ADD {:.2}x   DEL {:.2}x",
            aa.median() / ra.median(),
            ad.median() / rd.median()
        );
        if kind == "bridge" {
            println!(
                "  attache above the kernel floor (median):  ADD +{:.3} ms   DEL {:+.3} ms",
                aa.median() - fadd.median(),
                ad.median() - fdel.median()
            );
            println!(
                "  of which process start (VERSION exec):    {:.3} ms; attache's own work beyond the floor: ADD {:+.3} ms",
                exec_attache.median(),
                aa.median() - fadd.median() - exec_attache.median()
            );
            println!(
                "  reference work beyond the same floor and its own process start: ADD {:+.3} ms",
                ra.median() - fadd.median() - exec_ref.median()
            );
        }
    }
    let (madd, mdel) = meta_pod(&a, &mut pods, 4);
    println!();
    println!("meta-plugin pod: native cluster network + 4 native networks from networksDir:");
    row("ADD (5 interfaces)", &madd);
    row("DEL (5 interfaces, one link group)", &mdel);
    println!();
    println!("kernel floor (same netlink work in-process, no exec, no IPAM):");
    row("bridge attachment ADD", &fadd);
    row("bridge attachment DEL (veth unregister)", &fdel);
    row("8 veths deleted as one link group", &g8);
    row("8 veths deleted one by one", &o8);
    let _ = std::fs::remove_dir_all(&a.work);
}
