//! Crash safety: attache is SIGKILLed at random points of a 4-network ADD (a delegated ptp cluster
//! network, a native bridge with ipMasq and macspoofchk, a native macvlan, a node device handed over by
//! host-device; routed by source), then the runtime does what it would — DEL; or ADD again without DEL,
//! then DEL — and nothing may be left: links (the handed device back on the node, under its name and
//! up), addresses, IP files, nftables chains and elements, records, temporaries, host-device state. The definitions come from the node's mirror (as
//! `attache agent` keeps it).
//!
//! `ATTACHE_KILL_TRIALS` sets the number of kills (default 100; the documented long run uses 2000).

use std::time::{Duration, Instant};

use crate::poll::eventually;
use crate::testbed::state::{diff, full_state};
use crate::testbed::{Node, figure, require_reference_plugins};
use serde_json::{Value, json};

const NS: &str = "team-a";

/// The node's mirror of the definitions, as `attache agent` keeps it (said live every second while
/// this lives): the ADDs read their definitions from it.
struct LiveMirror {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    touching: Option<std::thread::JoinHandle<()>>,
}

impl LiveMirror {
    fn start(dir: &std::path::Path, nads: &[(&str, Value)]) -> LiveMirror {
        let m = attache::k8s::mirror::Mirror::new(dir);
        for (name, config) in nads {
            m.put(
                &json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                          "metadata": {"name": name, "namespace": NS},
                          "spec": {"config": config.to_string()}}),
            )
            .unwrap();
        }
        m.touch("1").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let touching = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = m.touch("1");
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        LiveMirror {
            stop,
            touching: Some(touching),
        }
    }
}

impl Drop for LiveMirror {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.touching.take() {
            let _ = t.join();
        }
    }
}

/// The pod's configuration, its definitions in the node's mirror.
fn conf(node: &Node) -> (Value, LiveMirror) {
    let ipam = node.path("ipam").display().to_string();
    let nads = [
        (
            "blue",
            json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": "br-blue", "isGateway": true,
                       "ipMasq": true, "macspoofchk": true,
                       "ipam": {"type": "host-local", "subnet": "10.21.0.0/22", "dataDir": ipam}}),
        ),
        (
            "mac",
            json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "nic0",
                       "ipam": {"type": "host-local", "subnet": "10.23.0.0/22", "dataDir": ipam}}),
        ),
        // A device of the node handed over whole (a veth standing in for a NIC), by its altname.
        (
            "pass",
            json!({"cniVersion": "1.0.0", "type": "host-device", "device": "passthrough-nic-a",
                       "dataDir": node.path("hd"),
                       "ipam": {"type": "host-local", "subnet": "10.25.0.0/22", "dataDir": ipam}}),
        ),
    ];
    for args in [
        &["link", "add", "hd0", "type", "veth", "peer", "name", "hd0p"][..],
        &["link", "set", "hd0", "up"],
        &[
            "link",
            "property",
            "add",
            "dev",
            "hd0",
            "altname",
            "passthrough-nic-a",
        ],
    ] {
        assert!(node.ip_do(args), "ip {args:?}");
    }
    let mirror = LiveMirror::start(&node.path("nads"), &nads);
    let mut conf = crate::testbed::meta_conf(node, &node.path("nads"), "blue,mac,pass");
    conf.as_object_mut().unwrap().remove("networksDir");
    conf["nadMirror"] = json!(node.path("nads"));
    conf["podRouting"] = json!("source");
    (conf, mirror)
}

/// A small deterministic generator (xorshift), seeded from the clock; the seed is printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn sigkill_anywhere_in_add_then_del_leaves_nothing() {
    require_reference_plugins();
    let trials: usize = std::env::var("ATTACHE_KILL_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(100);
    let mut node = Node::with_nic("crash");
    let pod = node.pod();
    let (conf, _mirror) = conf(&node);
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME=crash-0");
    let call = |cmd: &'static str, id: &'static str| {
        let mut c = node.call(cmd, id, &pod, "eth0");
        c.args = &args;
        c
    };
    let leak = |id: &str| -> &'static str { Box::leak(id.to_string().into_boxed_str()) };
    // The node after a first pod came and went (bridge, nftables base, forwarding in place).
    node.exec(&call("ADD", "warm"), &conf).ok();
    node.exec(&call("DEL", "warm"), &conf).ok();
    let baseline = full_state(&node, &pod, true);
    // How long an ADD takes here, so that kills spread over all of it.
    let mut span = Duration::ZERO;
    for i in 0..3 {
        let id = leak(&format!("t{i}"));
        let t = Instant::now();
        node.exec(&call("ADD", id), &conf).ok();
        span = span.max(t.elapsed());
        node.exec(&call("DEL", id), &conf).ok();
    }
    let span = span + span / 4;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let (mut midway, mut retried) = (0, 0);
    for trial in 0..trials {
        let id = leak(&format!("k{trial}"));
        let delay = Duration::from_micros(rng.next() % span.as_micros().max(1) as u64);
        let mut child = node.spawn(&call("ADD", id), conf.to_string().as_bytes());
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            midway += 1;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
        let what = format!("trial {trial} (seed {seed}, killed after {delay:?})");
        if trial % 2 == 1 {
            // The runtime retries ADD without DEL: it succeeds, and there is exactly one set.
            node.exec(&call("ADD", id), &conf).ok();
            let mut links = node.links(Some(&pod));
            links.sort();
            assert_eq!(links, ["eth0", "lo", "net1", "net2", "net3"], "{what}");
            let mine = node
                .files("ipam")
                .into_iter()
                .filter(|f| {
                    std::fs::read_to_string(node.path("ipam").join(f))
                        .is_ok_and(|c| c.starts_with(&format!("{id}\r\n")))
                })
                .count();
            assert_eq!(mine, 4, "{what}: addresses held");
            retried += 1;
        }
        node.exec(&call("DEL", id), &conf).ok();
        let clean = eventually(3, || full_state(&node, &pod, true) == baseline);
        assert!(
            clean,
            "{what} left something:\n{}",
            diff(&baseline, &full_state(&node, &pod, true))
        );
    }
    figure(&format!(
        "crash safety: {trials} SIGKILLs during a 4-network ADD ({midway} while it ran), {retried} ADDs retried without DEL, 0 leftovers"
    ));
}

/// Whether `pid` still runs (a zombie waiting for its reaper does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// A runtime that SIGKILLs attache at its timeout must not leave the delegate finishing the ADD behind
/// it while the DEL that follows runs: the delegate (started by attache's vfork-cost clone with
/// `PR_SET_PDEATHSIG`) dies with attache.
#[test]
fn a_killed_attache_takes_its_delegate_with_it() {
    let mut node = Node::new("deathsig");
    let pod = node.pod();
    let plugins = node.path("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let pidfile = node.path("delegate.pid");
    let plugin = plugins.join("slowcluster");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\necho $$ > {}.tmp && mv {0}.tmp {0}\nexec sleep 60\n",
            pidfile.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let conf = json!({
        "cniVersion": "1.1.0", "name": "attache", "type": "attache",
        "clusterNetwork": {"cniVersion": "1.0.0", "name": "cluster", "type": "slowcluster"},
        "cacheDir": node.path("cache"),
    });
    let mut call = node.call("ADD", "killed", &pod, "eth0");
    call.path = plugins.display().to_string();
    let mut attache = node.spawn(&call, conf.to_string().as_bytes());
    assert!(
        eventually(10, || pidfile.exists()),
        "the delegate never started"
    );
    let delegate: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(running(delegate), "the delegate {delegate} is not running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(attache.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = attache.wait();
    assert!(
        eventually(5, || !running(delegate)),
        "the delegate {delegate} outlived the attache that started it"
    );
}
