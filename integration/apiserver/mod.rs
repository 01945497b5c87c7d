//! A small Kubernetes API server for tests: real HTTP/1.1 on 127.0.0.1, serving recorded Kubernetes JSON
//! (pods, NetworkAttachmentDefinitions) by their API paths, applying and recording JSON merge patches to
//! `pods/{name}/status`, and answering everything else with a Kubernetes `Status` 404. It can be stopped
//! mid-test, after which connections are refused.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{Value, json};

/// One request the server saw.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub body: String,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, Value>,
    requests: Vec<Recorded>,
}

pub struct ApiServer {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The bearer token in the fixture's kubeconfigs: it must never appear in a log.
pub const TOKEN: &str = "fixture-bearer-token-5ecret";

/// A kubeconfig pointing at `port` on 127.0.0.1, with a bearer token.
pub fn kubeconfig_for(port: u16, token: &str, path: &Path) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fixture\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: attache\n  user:\n    token: {token}\ncontexts:\n- name: fixture\n  context:\n    cluster: fixture\n    user: attache\ncurrent-context: fixture\n"
    );
    std::fs::write(path, text).unwrap();
}

pub fn pod_path(ns: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods/{name}")
}

pub fn nad_path(ns: &str, name: &str) -> String {
    format!("/apis/k8s.cni.cncf.io/v1/namespaces/{ns}/network-attachment-definitions/{name}")
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn not_found(path: &str) -> (u16, Value) {
    (
        404,
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message": format!("{path} not found"),"reason":"NotFound","code":404}),
    )
}

fn handle(
    state: &Mutex<State>,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let mut st = state.lock().unwrap();
    st.requests.push(Recorded {
        method: method.to_string(),
        path: path.to_string(),
        content_type: content_type.to_string(),
        body: body.to_string(),
    });
    match method {
        "GET" => match st.objects.get(path) {
            Some(v) => (200, v.clone()),
            None => not_found(path),
        },
        "POST" if path.ends_with("/events") => {
            let Ok(mut obj) = serde_json::from_str::<Value>(body) else {
                return (
                    400,
                    json!({"kind":"Status","code":400,"message":"bad event"}),
                );
            };
            let n = st.requests.len();
            let prefix = obj["metadata"]["generateName"]
                .as_str()
                .unwrap_or("event.")
                .to_string();
            obj["metadata"]["name"] = json!(format!("{prefix}{n:x}"));
            (201, obj)
        }
        "PATCH" => {
            let Some(obj_path) = path.strip_suffix("/status") else {
                return not_found(path);
            };
            let Ok(patch) = serde_json::from_str::<Value>(body) else {
                return (
                    400,
                    json!({"kind":"Status","code":400,"message":"bad patch"}),
                );
            };
            match st.objects.get_mut(obj_path) {
                // As kube-apiserver does: a patch may not change a UID (BeforeUpdate validates
                // metadata.uid as immutable), so a UID in the patch acts as a precondition.
                Some(obj)
                    if patch["metadata"]["uid"]
                        .as_str()
                        .is_some_and(|u| obj["metadata"]["uid"].as_str() != Some(u)) =>
                {
                    (
                        422,
                        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                            "message": "metadata.uid: Invalid value: field is immutable",
                            "reason":"Invalid","code":422}),
                    )
                }
                Some(obj) => {
                    merge(obj, &patch);
                    (200, obj.clone())
                }
                None => not_found(path),
            }
        }
        _ => not_found(path),
    }
}

fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let path = target.split('?').next().unwrap_or_default().to_string();
        let mut content_length = 0usize;
        let mut content_type = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => content_length = v.trim().parse().unwrap_or(0),
                    "content-type" => content_type = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (code, value) = handle(
            &state,
            &method,
            &path,
            &content_type,
            &String::from_utf8_lossy(&body),
        );
        let text = value.to_string();
        let reason = match code {
            200 => "OK",
            201 => "Created",
            _ => "Error",
        };
        let resp = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

impl ApiServer {
    /// Listen on 127.0.0.1 inside the named netns (the test's node, where the plugin runs). The socket
    /// is created by a thread that entered that netns; only that thread ever does.
    pub fn start_in(netns: &str) -> ApiServer {
        let path = format!("/run/netns/{netns}");
        let listener = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            TcpListener::bind("127.0.0.1:0").unwrap()
        })
        .join()
        .unwrap();
        Self::serve_on(listener)
    }

    fn serve_on(listener: TcpListener) -> ApiServer {
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        // Non-blocking accept, polled: stop() only has to raise the flag, from any namespace.
        listener.set_nonblocking(true).unwrap();
        let thread = std::thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        let st = st.clone();
                        std::thread::spawn(move || serve(c, st));
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        ApiServer {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Serve an object (a recorded pod or NAD) at its API path.
    pub fn put(&self, v: Value) {
        let kind = v["kind"].as_str().unwrap_or_default();
        let ns = v["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = v["metadata"]["name"].as_str().unwrap().to_string();
        let path = match kind {
            "Pod" => pod_path(&ns, &name),
            "NetworkAttachmentDefinition" => nad_path(&ns, &name),
            other => panic!("the fixture does not serve {other}"),
        };
        self.state.lock().unwrap().objects.insert(path, v);
    }

    pub fn object(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// A kubeconfig pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) {
        kubeconfig_for(self.port, TOKEN, path);
    }

    /// A listener in `netns` that takes connections (the kernel completes the handshake) and never
    /// answers: an API server that hangs. Returns the port; the listener lives as long as the value.
    pub fn hanging_in(netns: &str) -> TcpListener {
        let path = format!("/run/netns/{netns}");
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            TcpListener::bind("127.0.0.1:0").unwrap()
        })
        .join()
        .unwrap()
    }

    /// Stop accepting connections; afterwards the port refuses them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}
