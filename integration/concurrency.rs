//! Concurrency on one host-local range: 100 ADDs in parallel processes (drop-in and meta), 100 parallel
//! DELs, a 500-operation churn of attache next to Debian's reference bridge on one dataDir, and a lock
//! whose holder is killed. No duplicate address, no failure, an empty range at the end.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::sync::Mutex;

use crate::testbed::{Node, REFERENCE_DIR, figure, first_ip, require_reference_plugins};
use serde_json::{Value, json};

const N: usize = 100;

fn bridge(node: &Node) -> Value {
    json!({"cniVersion": "1.0.0", "name": "shared", "type": "bridge", "bridge": "br0",
           "ipam": {"type": "host-local", "subnet": "10.90.0.0/24", "dataDir": node.path("ipam")}})
}

fn meta(node: &Node) -> Value {
    json!({"cniVersion": "1.0.0", "name": "attache", "type": "attache",
           "clusterNetwork": bridge(node), "cacheDir": node.path("cache")})
}

fn held(node: &Node) -> Vec<String> {
    node.files("ipam/shared")
        .into_iter()
        .filter(|f| f != "lock" && !f.starts_with("last_reserved_ip"))
        .collect()
}

/// Run `cmd` for every pod at once, each its own process; returns each one's result.
fn all_at_once(node: &Node, pods: &[String], cmd: &'static str, conf: &Value) -> Vec<Value> {
    let ids: Vec<String> = (0..pods.len()).map(|i| format!("par{i}")).collect();
    let children: Vec<_> = pods
        .iter()
        .zip(&ids)
        .map(|(p, id)| node.spawn(&node.call(cmd, id, p, "eth0"), conf.to_string().as_bytes()))
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{cmd} failed: {stdout}");
            if stdout.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&stdout).unwrap()
            }
        })
        .collect()
}

#[test]
fn a_hundred_parallel_adds_and_dels_on_one_range() {
    require_reference_plugins();
    for (mode, conf) in [("drop-in", bridge as fn(&Node) -> Value), ("meta", meta)] {
        let mut node = Node::new("par");
        let pods: Vec<String> = (0..N).map(|_| node.pod()).collect();
        let conf = conf(&node);
        let results = all_at_once(&node, &pods, "ADD", &conf);
        let mut ips: Vec<String> = results.iter().map(first_ip).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), N, "{mode}: duplicate addresses");
        assert_eq!(held(&node).len(), N, "{mode}");
        all_at_once(&node, &pods, "DEL", &conf);
        assert!(held(&node).is_empty(), "{mode}: {:?}", held(&node));
        assert!(node.files("cache").is_empty(), "{mode}");
        figure(&format!(
            "concurrency ({mode}): {N} parallel ADDs, {N} distinct addresses, 0 duplicates; {N} parallel DELs, range empty"
        ));
    }
}

#[test]
fn churn_next_to_the_reference_plugin() {
    require_reference_plugins();
    let mut node = Node::new("churn");
    let pods: Vec<String> = (0..40).map(|_| node.pod()).collect();
    let conf = bridge(&node);
    let owner: Mutex<HashMap<String, String>> = Mutex::new(HashMap::new());
    let duplicates = Mutex::new(0usize);
    let ops = std::sync::atomic::AtomicUsize::new(0);
    // 10 workers, 4 pods each; even workers run attache, odd ones the reference bridge; each flips its
    // pods between attached and not, 50 operations per worker.
    std::thread::scope(|s| {
        for w in 0..10 {
            let (node, pods, conf, owner, duplicates, ops) =
                (&node, &pods, &conf, &owner, &duplicates, &ops);
            s.spawn(move || {
                let bin = if w % 2 == 0 {
                    crate::testbed::attache_bin()
                } else {
                    std::path::Path::new(REFERENCE_DIR).join("bridge")
                };
                let mut attached = [false; 4];
                for op in 0..50 {
                    let k = (op * 7 + w) % 4;
                    let pod = &pods[w * 4 + k];
                    let id = format!("w{w}p{k}");
                    let cmd = if attached[k] { "DEL" } else { "ADD" };
                    let mut call = node.call(cmd, &id, pod, "eth0");
                    call.bin = bin.clone();
                    let out = node.exec(&call, conf);
                    assert_eq!(
                        out.exit,
                        0,
                        "{cmd} {id} with {}: {}",
                        bin.display(),
                        out.stdout
                    );
                    let mut map = owner.lock().unwrap();
                    if attached[k] {
                        map.retain(|_, v| *v != id);
                    } else {
                        let ip = first_ip(&out.json());
                        if let Some(other) = map.insert(ip.clone(), id.clone()) {
                            *duplicates.lock().unwrap() += 1;
                            panic!("{ip} handed to {id} while {other} holds it");
                        }
                    }
                    attached[k] = !attached[k];
                    ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // Leave nothing attached.
                for (k, a) in attached.iter().enumerate() {
                    if *a {
                        let id = format!("w{w}p{k}");
                        let mut call = node.call("DEL", &id, &pods[w * 4 + k], "eth0");
                        call.bin = bin.clone();
                        node.exec(&call, conf).ok();
                        ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert!(held(&node).is_empty(), "{:?}", held(&node));
    let ops = ops.into_inner();
    assert!(ops >= 500);
    figure(&format!(
        "churn: {ops} ADD/DELs by 10 workers (attache and the reference bridge on one dataDir), {} duplicates, range empty",
        duplicates.into_inner().unwrap()
    ));
}

#[test]
fn a_lock_held_by_a_killed_process_does_not_block() {
    require_reference_plugins();
    let mut node = Node::new("lock");
    let pod = node.pod();
    let conf = bridge(&node);
    std::fs::create_dir_all(node.path("ipam/shared")).unwrap();
    let lock = node.path("ipam/shared/lock");
    // The holder and its child in a process group of their own, so that the kill takes both.
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sleep", "60"])
        .process_group(0)
        .spawn()
        .expect("flock (util-linux)");
    // Wait until the holder has the lock.
    assert!(crate::poll::eventually(5, || {
        !std::process::Command::new("flock")
            .args(["-n"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success()
    }));
    let mut add = node.spawn(
        &node.call("ADD", "l1", &pod, "eth0"),
        conf.to_string().as_bytes(),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        add.try_wait().unwrap().is_none(),
        "the ADD waits for the lock"
    );
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(holder.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = holder.wait();
    let out = add.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(held(&node).len(), 1);
}
