//! A real Kubernetes API server for the tests and the benchmark: kube-apiserver v1.20.2 built from
//! Debian's source package (`scripts/kube-apiserver`, cached outside the repository) over Debian's etcd,
//! started inside a test node's netns (so attache, exec'd there, reaches it on 127.0.0.1 and nothing
//! listens outside) or in the benchmark's own, with its own PKI, RBAC (or, for the benchmark,
//! AlwaysAllow) authorization, an admin token and any other users' tokens, and an audit log of every
//! request. kubectl (Debian's 1.20) talks to it as the admin. Everything is stopped and removed on drop,
//! and dies with the process that started it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{Value, json};

use crate::poll::eventually;

pub const ADMIN_TOKEN: &str = "attache-test-admin-token";

/// How a server is started.
pub struct Options {
    /// Its folder (PKI, etcd's data, logs, the audit log): removed on drop.
    pub dir: PathBuf,
    /// The netns it runs in (`/run/netns/<name>`, entered with nsenter); `None`: this process's own.
    pub netns: Option<String>,
    /// `--authorization-mode`.
    pub authorization: &'static str,
    /// Users besides the admin, by static token: `(token, name)`.
    pub users: Vec<(String, String)>,
    /// More kube-apiserver flags (`--watch-cache=false` ...).
    pub flags: Vec<String>,
}

impl Options {
    /// RBAC, the admin alone, in `netns` (or this process's own).
    pub fn new(dir: PathBuf, netns: Option<String>) -> Options {
        Options {
            dir,
            netns,
            authorization: "RBAC",
            users: vec![],
            flags: vec![],
        }
    }
}

/// The binary `scripts/kube-apiserver` built (`ATTACHE_KUBE_APISERVER`, else its cache); missing fails
/// loudly.
pub fn kube_apiserver() -> PathBuf {
    let p = std::env::var_os("ATTACHE_KUBE_APISERVER")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from("/var/cache/attache-test/kubernetes-v1.20.2/kube-apiserver")
        });
    assert!(
        p.exists(),
        "{} is missing: run scripts/kube-apiserver (scripts/test does)",
        p.display()
    );
    p
}

fn require(tool: &str) {
    assert!(
        Path::new(tool).exists(),
        "{tool} is missing: scripts/test installs etcd-server, kubernetes-client and openssl"
    );
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct RealApi {
    pub dir: PathBuf,
    pub url: String,
    pub ca: PathBuf,
    pub admin_kubeconfig: PathBuf,
    pub audit_log: PathBuf,
    netns: Option<String>,
    authorization: &'static str,
    flags: Vec<String>,
    etcd: Option<Child>,
    apiserver: Option<Child>,
}

impl RealApi {
    /// etcd and kube-apiserver as `o` says, ready to serve.
    pub fn start(o: Options) -> RealApi {
        require("/usr/bin/etcd");
        require("/usr/bin/kubectl");
        require("/usr/bin/openssl");
        let bin = kube_apiserver();
        let dir = o.dir;
        std::fs::create_dir_all(&dir).unwrap();
        // PKI: a CA, a serving certificate for 127.0.0.1 and the first service IP, a service-account key.
        sh(
            &dir,
            r#"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=attache-test-ca 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=kube-apiserver 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes.default.svc\n' > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile san.ext 2>/dev/null
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
"#,
        );
        let mut tokens =
            format!("{ADMIN_TOKEN},attache-test-admin,attache-test-admin-uid,system:masters\n");
        for (token, user) in &o.users {
            tokens.push_str(&format!("{token},{user},{user}-uid\n"));
        }
        std::fs::write(dir.join("tokens.csv"), tokens).unwrap();
        // Every request, with its user, verb, resource, user agent and answer.
        std::fs::write(
            dir.join("audit.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n",
        )
        .unwrap();
        let mut me = RealApi {
            url: "https://127.0.0.1:6443".into(),
            ca: dir.join("ca.crt"),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            audit_log: dir.join("audit.log"),
            dir: dir.clone(),
            netns: o.netns,
            authorization: o.authorization,
            flags: o.flags,
            etcd: None,
            apiserver: None,
        };
        me.write_kubeconfig(&me.admin_kubeconfig.clone(), ADMIN_TOKEN, false);
        me.start_etcd();
        me.start_apiserver(&bin);
        me
    }

    /// A command in the server's netns.
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={ns}")).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// A server process, logging to `log`, killed when the process that started it dies.
    fn spawn(&self, log: &str, argv: &[String]) -> Child {
        use std::os::unix::process::CommandExt;
        let f = std::fs::File::create(self.dir.join(log)).unwrap();
        let mut cmd = self.command(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        #[allow(unsafe_code)]
        // SAFETY: prctl is async-signal-safe, and nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", argv[0]))
    }

    fn start_etcd(&mut self) {
        let d = self.dir.display();
        let argv: Vec<String> = [
            "/usr/bin/etcd",
            "--name=attache-test",
            &format!("--data-dir={d}/etcd"),
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=attache-test=http://127.0.0.1:2380",
            "--listen-metrics-urls=http://127.0.0.1:2381",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.etcd = Some(self.spawn("etcd.log", &argv));
    }

    fn start_apiserver(&mut self, bin: &Path) {
        let d = self.dir.display();
        let argv: Vec<String> = [
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
            format!("--authorization-mode={}", self.authorization),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
            // No controller manager runs: nothing would create the namespaces' default ServiceAccounts.
            "--disable-admission-plugins=ServiceAccount".into(),
            format!("--audit-policy-file={d}/audit.yaml"),
            format!("--audit-log-path={d}/audit.log"),
        ]
        .into_iter()
        .chain(self.flags.iter().cloned())
        .collect();
        self.apiserver = Some(self.spawn("apiserver.log", &argv));
        let ready = eventually(90, || {
            if let Some(c) = self.apiserver.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("kube-apiserver exited ({st}): {}", self.log());
            }
            self.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
        assert!(ready, "kube-apiserver never became ready: {}", self.log());
    }

    pub fn log(&self) -> String {
        let l = std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default();
        l.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stop the API server (etcd keeps running): the API is gone.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the API server again (after [`RealApi::stop_apiserver`]): same etcd, same certificates.
    pub fn restart_apiserver(&mut self) {
        self.stop_apiserver();
        self.start_apiserver(&kube_apiserver());
    }

    /// A Node object (as the kubelet would register it).
    pub fn create_node(&self, name: &str) -> String {
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
        let out = self.apply(&node.to_string(), &[]);
        assert!(
            out.status.success(),
            "creating node {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.get(&["node", name])["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The netns the API server listens in (`/run/netns/<node>`); `None`: the process's own.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// A kubeconfig for `token` (or, with `token_file`, naming a file that holds it) at `path`.
    pub fn write_kubeconfig(&self, path: &Path, token: &str, token_file: bool) {
        let user = if token_file {
            let f = path.with_extension("token");
            std::fs::write(&f, token).unwrap();
            json!({"tokenFile": f})
        } else {
            json!({"token": token})
        };
        let kc = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority": self.ca}}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "c", "context": {"cluster": "test", "user": "u"}}],
            "current-context": "c"
        });
        std::fs::write(path, kc.to_string()).unwrap();
    }

    /// kubectl as the admin, inside the node netns.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(args, None)
    }

    /// kubectl as the admin, inside the node netns, `stdin` written to it.
    pub fn kubectl_with(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = self
            .command("/usr/bin/kubectl")
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
            .unwrap();
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    pub fn must(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of a document (YAML or JSON), extra flags before it.
    pub fn apply(&self, doc: &str, flags: &[&str]) -> Output {
        let mut args = vec!["apply"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["-f", "-"]);
        self.kubectl_with(&args, Some(doc))
    }

    /// An object as JSON (`kubectl get -o json`).
    pub fn get(&self, args: &[&str]) -> Value {
        let mut a = vec!["get", "-o", "json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.must(&a)).unwrap()
    }

    /// A bound token of a ServiceAccount (TokenRequest), optionally bound to a Secret so that deleting
    /// the Secret revokes it.
    pub fn token(&self, namespace: &str, sa: &str, bound_secret: Option<(&str, &str)>) -> String {
        let mut req = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                             "spec": {"expirationSeconds": 3600}});
        if let Some((name, uid)) = bound_secret {
            req["spec"]["boundObjectRef"] =
                json!({"apiVersion": "v1", "kind": "Secret", "name": name, "uid": uid});
        }
        let f = self.dir.join(format!("tokenrequest-{sa}.json"));
        std::fs::write(&f, req.to_string()).unwrap();
        let out = self.must(&[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token"),
            "-f",
            &f.display().to_string(),
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["status"]["token"].as_str().unwrap().to_string()
    }

    /// The audit log's entries of one user.
    pub fn audit_of(&self, user: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["user"]["username"] == user && e["stage"] == "ResponseComplete")
            .collect()
    }
}

impl Drop for RealApi {
    fn drop(&mut self) {
        for c in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
