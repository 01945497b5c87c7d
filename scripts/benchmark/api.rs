//! `api`: what the Kubernetes API costs an ADD. A pod with the cluster network (the reference ptp,
//! exec'd) and two NetworkAttachmentDefinitions (native macvlans), measured alternately three ways:
//! definitions from a local folder with no API; from a real kube-apiserver with no agent (the
//! definitions GET, the network-status PATCH and the Events, each ADD its own TLS connection); and with
//! `attache agent` (definitions from the node's mirror, the report handed to the agent's warm
//! connection). The API server is reached through a forwarding hop — as over a network — which can add
//! a delay: once without, once with 20 ms per round trip, to show how each way grows with distance.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Model, Series, Side, compare, cpu_line, meta_conf};
use crate::ipam::{PLUGIN_USER, ipam_crds};
use crate::pod::{networks, ptp_conf};
use crate::poll::eventually;
use crate::realserver::{Options, RealApi};
use crate::report::Report;
use crate::{Args, Pods};

/// The round-trip delays measured (ms).
const DELAYS: &[u64] = &[0, 20];

/// A TCP hop to `target`: every chunk waits half the round-trip delay in each direction.
struct Hop {
    port: u16,
    /// Round-trip delay, ms.
    delay: Arc<AtomicU64>,
}

impl Hop {
    fn start(target: &str) -> Hop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let delay = Arc::new(AtomicU64::new(0));
        let (d, target) = (delay.clone(), target.to_string());
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let Ok(s) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = (c.set_nodelay(true), s.set_nodelay(true));
                for (mut from, mut to) in [(c.try_clone().unwrap(), s.try_clone().unwrap()), (s, c)]
                {
                    let d = d.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let half = d.load(Ordering::Relaxed) / 2;
                            if half > 0 {
                                std::thread::sleep(Duration::from_millis(half));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Hop { port, delay }
    }
}

/// `attache agent` for the bench, killed on drop.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(a: &Args, kubeconfig: &Path, mirror: &Path, socket: &Path) -> Agent {
    let child = std::process::Command::new(&a.attache)
        .arg("agent")
        .arg("--nad-mirror")
        .arg(mirror)
        .arg("--socket")
        .arg(socket)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("CNI_COMMAND")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting attache agent");
    let live = eventually(30, || {
        socket.exists() && attache::k8s::mirror::Mirror::new(mirror).is_live()
    });
    assert!(live, "attache agent did not start mirroring");
    Agent(child)
}

/// `rounds` network-status PATCHes of the bench pod over one connection, after one to warm it up.
async fn patch_alone(kubeconfig: &Path, uid: &str, rounds: usize) -> Series {
    use attache::k8s::annotation::NetworkStatus;
    let api = attache::k8s::client::KubeApi::connect(Some(kubeconfig), Duration::from_secs(10))
        .await
        .unwrap();
    let pod = attache::k8s::PodRef {
        namespace: "default".into(),
        name: "bench".into(),
        uid: uid.into(),
    };
    let status = vec![NetworkStatus {
        name: "bench".into(),
        default: true,
        ..Default::default()
    }];
    let mut s = Series::default();
    for i in 0..=rounds {
        let t = std::time::Instant::now();
        api.renewed()
            .set_network_status(&pod, &status)
            .await
            .expect("PATCH");
        if i > 0 {
            s.0.push(t.elapsed());
        }
    }
    s
}

/// The three ways, as models of one pod: folder, API, API + agent.
fn models(a: &Args, kubeconfig: &Path, uid: &str, mirror: &Path, socket: &Path) -> [Model; 3] {
    let (nets_dir, _) = networks(a);
    let names = vec!["mv0".to_string(), "mv1".to_string()];
    let cache = a.work.join("cache-api");
    let folder = meta_conf(ptp_conf(a), &nets_dir, &cache, &names);
    let mut api = folder.clone();
    api.as_object_mut().unwrap().remove("networksDir");
    api["kubeconfig"] = json!(kubeconfig);
    api["apiTimeout"] = json!(10);
    let mut agent = api.clone();
    agent["nadMirror"] = json!(mirror);
    agent["agentSocket"] = json!(socket);
    let args = format!("{};K8S_POD_UID={uid}", crate::harness::POD_ARGS);
    [folder, api, agent].map(|conf: Value| {
        let mut m = Model::one(&a.attache, &conf);
        m.calls[0].args = args.clone();
        m
    })
}

pub(crate) fn api_rows(a: &Args, pods: &mut Pods, r: &mut Report) {
    println!();
    println!(
        "api: a pod with 2 NetworkAttachmentDefinitions (native macvlans) + the cluster network (ptp), its definitions"
    );
    println!(
        "  from a folder (no API) / from a real kube-apiserver (no agent) / with attache agent (mirror + report socket);"
    );
    println!("  the API server behind a forwarding hop, with 0 and 20 ms added per round trip");
    let token = format!("{PLUGIN_USER}-token-{}", std::process::id());
    let api = RealApi::start(Options {
        authorization: "AlwaysAllow",
        users: vec![(token.clone(), PLUGIN_USER.into())],
        ..Options::new(a.work.join("apiserver-api"), None)
    });
    let crds = api.apply(&ipam_crds(), &[]);
    assert!(crds.status.success(), "applying the CRDs");
    let (nets_dir, _) = networks(a);
    let nads = std::fs::read_to_string(nets_dir.join("nets.yaml")).unwrap();
    assert!(
        eventually(60, || api.apply(&nads, &[]).status.success()),
        "the NetworkAttachmentDefinitions: {}",
        api.log()
    );
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "registry.example/app:1"}]}});
    assert!(api.apply(&pod.to_string(), &[]).status.success());
    let uid = api.get(&["pod", "-n", "default", "bench"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let hop = Hop::start("127.0.0.1:6443");
    let kubeconfig = a.work.join("api-bench.kubeconfig");
    api.write_kubeconfig(&kubeconfig, &token, false);
    let text = std::fs::read_to_string(&kubeconfig)
        .unwrap()
        .replace("127.0.0.1:6443", &format!("127.0.0.1:{}", hop.port));
    std::fs::write(&kubeconfig, text).unwrap();
    let (mirror, socket): (PathBuf, PathBuf) = (a.work.join("nads"), a.work.join("run/agent.sock"));
    let _agent = start_agent(a, &kubeconfig, &mirror, &socket);
    let ms = models(a, &kubeconfig, &uid, &mirror, &socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for &delay in DELAYS {
        hop.delay.store(delay, Ordering::Relaxed);
        let key = format!("api{delay}");
        let [folder, direct, agent]: [Side; 3] =
            compare(a, pods, &key, &[&ms[0], &ms[1], &ms[2]], a.rounds)
                .try_into()
                .ok()
                .unwrap();
        println!();
        println!("  {delay} ms added per round trip to the API server:");
        let f = r.row(
            &format!("{key}_folder_add"),
            "ADD, definitions from a folder (no API)",
            &folder.add,
        );
        let d = r.row(
            &format!("{key}_api_add"),
            "ADD, the API without the agent",
            &direct.add,
        );
        let g = r.row(
            &format!("{key}_agent_add"),
            "ADD, the API with the agent",
            &agent.add,
        );
        r.row(
            &format!("{key}_api_del"),
            "DEL, the API without the agent",
            &direct.del,
        );
        r.row(
            &format!("{key}_agent_del"),
            "DEL, the API with the agent",
            &agent.del,
        );
        println!(
            "  the API's cost (medians): without the agent {:+.3} ms, with it {:+.3} ms",
            d - f,
            g - f
        );
        cpu_line(r, &key, ["api", "agent"], [&direct, &agent]);
        // What the agent's way cannot do without: the network-status PATCH itself, on a warm
        // connection, which the ADD waits for (the annotation is on the pod when ADD returns).
        let patch = rt.block_on(patch_alone(&kubeconfig, &uid, a.rounds));
        let p = r.row(
            &format!("{key}_patch"),
            "the network-status PATCH alone (warm connection)",
            &patch,
        );
        println!(
            "  with the agent, beyond the PATCH it waits for: {:+.3} ms",
            g - f - p
        );
        r.figure(&format!("{key}_agent_cost_beyond_patch_ms"), g - f - p);
        r.figure(&format!("{key}_api_cost_ms"), d - f);
        r.figure(&format!("{key}_agent_cost_ms"), g - f);
        if delay == 0 {
            r.target(
                "ADD with the API and the agent - ADD from a folder (medians)",
                g - f,
                3.0,
                "ms",
            );
        }
    }
    pods.flush();
}
