//! The process boundary of a CNI plugin: read `CNI_*` from an injected environment and the configuration
//! from an injected reader, validate both per command, dispatch, and write exactly one JSON document (a
//! result, a version answer or an error) to the injected writer. Nothing else ever reaches stdout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cni::conf::{self, NetConf};
use crate::cni::spec::{self, CURRENT_VERSION, Version};
use crate::error::{Error, Result};
use crate::netns::NetNs;

/// Where `CNI_*` variables come from: the process environment, or a map in tests.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl<S: std::hash::BuildHasher> Env for std::collections::HashMap<String, String, S> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(Error::InvalidEnv(format!(
                    "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// Whether a variable is required for this command (SPEC §2 and the reference skel).
    fn requires(self, var: &str) -> bool {
        use Command::*;
        match var {
            "CNI_CONTAINERID" | "CNI_IFNAME" => matches!(self, Add | Del | Check),
            "CNI_NETNS" => matches!(self, Add | Check),
            "CNI_PATH" => matches!(self, Add | Del | Check | Gc | Status),
            _ => false,
        }
    }
}

/// `CNI_ARGS`: `K=V;K=V`. Keys attache knows are read; others are refused unless `IgnoreUnknown` is set,
/// as the reference plugins do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CniArgs {
    pub pairs: Vec<(String, String)>,
}

/// Keys attache (or the drivers it implements) understands.
const KNOWN_ARGS: &[&str] = &[
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "IP",
    "MAC",
    "GATEWAY",
];

impl CniArgs {
    pub fn parse(s: &str) -> Result<CniArgs> {
        let mut pairs = Vec::new();
        for part in s.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(Error::InvalidEnv(format!(
                    "CNI_ARGS: {part:?} is not a KEY=VALUE pair"
                )));
            };
            pairs.push((k.to_string(), v.to_string()));
        }
        let args = CniArgs { pairs };
        let ignore = args
            .get("IgnoreUnknown")
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        if !ignore
            && let Some((k, _)) = args
                .pairs
                .iter()
                .find(|(k, _)| !KNOWN_ARGS.contains(&k.as_str()))
        {
            return Err(Error::InvalidEnv(format!(
                "CNI_ARGS: unknown key {k:?} (set IgnoreUnknown=1 to allow it)"
            )));
        }
        Ok(args)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn to_env_string(&self) -> String {
        self.pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// `CNI_ARGS` for a plugin attache runs for the pod: the same pairs behind `IgnoreUnknown=1`, as
    /// Multus sends them. attache has refused keys it does not know unless told to ignore them, and
    /// the `K8S_*` keys it knows are unknown to most plugins (the reference ptp refuses them).
    pub fn for_delegate(&self) -> CniArgs {
        let pairs = std::iter::once(("IgnoreUnknown".to_string(), "1".to_string()))
            .chain(
                self.pairs
                    .iter()
                    .filter(|(k, _)| k != "IgnoreUnknown")
                    .cloned(),
            )
            .collect();
        CniArgs { pairs }
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// On disk (a record), `CNI_ARGS` is the string the plugin was given; read back without the unknown-key
/// check, which was made when the runtime passed it.
impl serde::Serialize for CniArgs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_env_string())
    }
}

impl<'de> serde::Deserialize<'de> for CniArgs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<CniArgs, D::Error> {
        let s = String::deserialize(d)?;
        let pairs = s
            .split(';')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => Ok((k.to_string(), v.to_string())),
                None => Err(serde::de::Error::custom(format!(
                    "CNI_ARGS: {p:?} is not a KEY=VALUE pair"
                ))),
            })
            .collect::<std::result::Result<_, _>>()?;
        Ok(CniArgs { pairs })
    }
}

/// The validated invocation: everything a command needs from the environment.
#[derive(Clone, Debug)]
pub struct CmdArgs {
    pub command: Command,
    pub container_id: String,
    /// `None` when DEL (or a pod-less verb) was given no netns — or a DEL was given one that is not a
    /// live network namespace any more ([`CmdArgs::netns_ignored`] says why).
    pub netns: Option<PathBuf>,
    /// Why a DEL goes on without the `CNI_NETNS` it was given (for the log).
    pub netns_ignored: Option<String>,
    /// Why this DEL has nothing to tear down and answers success at once, touching nothing: its
    /// container ID is longer than ADD accepts (the reference plugins take any length), so no ADD of
    /// attache can have made state for it — and a failing DEL is retried by the runtime forever.
    pub nothing_to_do: Option<String>,
    pub ifname: String,
    pub args: CniArgs,
    /// `CNI_PATH` split on `:`.
    pub path: Vec<PathBuf>,
}

impl CmdArgs {
    /// Read and validate the environment for `command`. Missing or malformed variables are code 4, all
    /// missing ones named at once.
    pub fn from_env(command: Command, env: &dyn Env) -> Result<CmdArgs> {
        let get = |k: &str| env.var(k).filter(|v| !v.is_empty());
        let missing: Vec<&str> = ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            .into_iter()
            .filter(|k| command.requires(k) && get(k).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(Error::InvalidEnv(format!(
                "required environment variables missing for {}: {}",
                command.as_str(),
                missing.join(", ")
            )));
        }
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let mut nothing_to_do = None;
        if command.requires("CNI_CONTAINERID") {
            match conf::check_container_id(&container_id) {
                Ok(()) => {}
                Err(m) if command == Command::Del && conf::container_id_chars_ok(&container_id) => {
                    nothing_to_do = Some(format!("{m}, so no ADD can have attached it"));
                }
                Err(m) => return Err(Error::InvalidEnv(m)),
            }
        }
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        if command.requires("CNI_IFNAME") {
            conf::check_ifname(&ifname)
                .map_err(|m| Error::InvalidEnv(format!("CNI_IFNAME: {m}")))?;
        }
        let args = CniArgs::parse(&env.var("CNI_ARGS").unwrap_or_default())?;
        let path = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(CmdArgs {
            command,
            container_id,
            netns: get("CNI_NETNS").map(PathBuf::from),
            netns_ignored: None,
            nothing_to_do,
            ifname,
            args,
            path,
        })
    }
}

/// Whether `CNI_NETNS_OVERRIDE` lifts the own-namespace guard (the reference skel's escape hatch).
fn netns_override(env: &dyn Env) -> bool {
    env.var("CNI_NETNS_OVERRIDE")
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The namespace guard every command of every mode passes. ADD and CHECK need a live network namespace
/// that is not attache's own (configuring the node by mistake is the worst thing a CNI plugin can do):
/// anything else is code 8. DEL must be able to finish whatever happened to the namespace, so a path
/// that is no live network namespace any more (an unmounted bind mount), one of another type, or
/// attache's own namespace is dropped: DEL goes on without it, and so do the delegates it runs.
pub fn check_netns(args: &mut CmdArgs, env: &dyn Env) -> Result<()> {
    let Some(path) = args.netns.clone() else {
        return Ok(());
    };
    let opened = NetNs::open(&path).and_then(|ns| {
        if !netns_override(env) && ns.same_as(&NetNs::current()?) {
            return Err(Error::NetNs {
                path: path.clone(),
                reason: "it is the namespace attache itself runs in, not a pod's (set CNI_NETNS_OVERRIDE=1 if that is meant)".into(),
            });
        }
        Ok(ns)
    });
    match (args.command, opened) {
        (_, Ok(_)) => Ok(()),
        (Command::Add | Command::Check, Err(e)) => Err(e),
        (Command::Del, Err(e)) => {
            args.netns = None;
            args.netns_ignored = Some(e.to_string());
            Ok(())
        }
        // STATUS and GC concern no pod: a netns given to them is not used.
        (_, Err(_)) => {
            args.netns = None;
            Ok(())
        }
    }
}

/// The largest configuration read from stdin. A conflist with a prevResult is a few KiB; anything near
/// this is not a configuration.
pub const MAX_STDIN: u64 = 4 << 20;

/// The minimum config version of each command (reference skel's gates).
fn check_version_gate(command: Command, conf: &NetConf) -> Result<()> {
    let (min, what) = match command {
        Command::Check => (Version::V0_4_0, "CHECK"),
        Command::Status => (Version::V1_1_0, "STATUS"),
        Command::Gc => (Version::V1_1_0, "GC"),
        _ => return Ok(()),
    };
    if conf.version < min {
        return Err(Error::IncompatibleVersion(format!(
            "config version {} does not allow {what} (it needs {min} or later)",
            conf.cni_version
        )));
    }
    Ok(())
}

/// What the dispatcher hands over to: the engine in the real binary, a fake in tests.
pub trait Plugin {
    /// Run a validated command. `Some(value)` is printed as the result.
    fn run(&self, args: &CmdArgs, conf: NetConf) -> Result<Option<Value>>;

    /// Told about every invocation but VERSION once its answer is written — whatever failed, however
    /// early (the metrics). Nothing it does can change the answer or the exit code.
    fn finished(&self, _done: &Finished<'_>) {}
}

/// One invocation, as the dispatcher saw it end.
#[derive(Debug)]
pub struct Finished<'a> {
    pub command: Command,
    /// The configuration's `type`, when stdin was a JSON object with a string there.
    pub conf_type: Option<&'a str>,
    /// The configuration's `metricsDir` (absolute), read from the raw keys before anything validated.
    pub metrics_dir: Option<&'a Path>,
    /// The error answered, or `None` for success.
    pub error: Option<&'a Error>,
    /// From the start of the invocation to its answer.
    pub elapsed: std::time::Duration,
}

/// What the dispatcher learned before it could fail, for [`Plugin::finished`].
#[derive(Default)]
struct Seen {
    command: Option<Command>,
    conf_type: Option<String>,
    metrics_dir: Option<PathBuf>,
}

/// Run one CNI invocation end to end and return the process exit code.
pub fn run(env: &dyn Env, input: &mut dyn Read, out: &mut dyn Write, plugin: &dyn Plugin) -> i32 {
    let started = std::time::Instant::now();
    let mut version = CURRENT_VERSION.to_string();
    let mut seen = Seen::default();
    // A bug must still end as a CNI error on stdout, never as a bare panic.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dispatch(env, input, plugin, &mut version, &mut seen)
    }))
    .unwrap_or_else(|panic| Err(crate::fail::panic_error(panic)));
    let elapsed = started.elapsed();
    let (doc, error) = match result {
        Ok(doc) => (doc, None),
        Err(e) => {
            tracing::error!(code = e.cni_code(), "{e}");
            (Some(spec::error_value(&version, &e)), Some(e))
        }
    };
    let mut code = if error.is_some() { 1 } else { 0 };
    if let Some(doc) = doc {
        let text = serde_json::to_string(&doc).unwrap_or_default();
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            code = 1;
        }
    }
    // After the answer is out; a panic here must not turn a success into a crash.
    if let Some(command) = seen.command.filter(|c| *c != Command::Version) {
        let done = Finished {
            command,
            conf_type: seen.conf_type.as_deref(),
            metrics_dir: seen.metrics_dir.as_deref(),
            error: error.as_ref(),
            elapsed,
        };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plugin.finished(&done)));
    }
    code
}

fn dispatch(
    env: &dyn Env,
    input: &mut dyn Read,
    plugin: &dyn Plugin,
    version: &mut String,
    seen: &mut Seen,
) -> Result<Option<Value>> {
    let command = match env.var("CNI_COMMAND").filter(|c| !c.is_empty()) {
        None => {
            return Err(Error::InvalidEnv(
                "required environment variable CNI_COMMAND is missing".into(),
            ));
        }
        Some(c) => Command::parse(&c)?,
    };
    seen.command = Some(command);
    let mut stdin = Vec::new();
    input
        .take(MAX_STDIN + 1)
        .read_to_end(&mut stdin)
        .map_err(|e| Error::io("reading the network configuration from stdin", e))?;
    if stdin.len() as u64 > MAX_STDIN {
        return Err(Error::config(format!(
            "the configuration on stdin is larger than {} MiB",
            MAX_STDIN >> 20
        )));
    }

    if command == Command::Version {
        let asked = if stdin.iter().all(u8::is_ascii_whitespace) {
            String::new()
        } else {
            let v: Value = serde_json::from_slice(&stdin).map_err(|source| Error::Decode {
                what: "VERSION input".into(),
                source,
            })?;
            v.get("cniVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        return Ok(Some(spec::version_value(&asked)));
    }

    let raw = NetConf::decode(&stdin)?;
    if let Value::Object(keys) = &raw {
        // Before anything validates: a configuration attache refuses is still counted.
        seen.metrics_dir = crate::metrics::dir_of(keys);
        seen.conf_type = keys.get("type").and_then(Value::as_str).map(str::to_string);
    }
    let conf = NetConf::from_value(raw)?;
    *version = conf.cni_version.clone();
    Version::supported(&conf.cni_version)?;
    check_version_gate(command, &conf)?;
    let mut args = CmdArgs::from_env(command, env)?;
    check_netns(&mut args, env)?;
    plugin.run(&args, conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    struct Fake {
        seen: RefCell<Vec<(Command, String)>>,
        reply: Option<Value>,
    }

    impl Plugin for Fake {
        fn run(&self, args: &CmdArgs, conf: NetConf) -> Result<Option<Value>> {
            self.seen
                .borrow_mut()
                .push((args.command, conf.plugin_type.clone()));
            Ok(self.reply.clone())
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn full_env(cmd: &str) -> HashMap<String, String> {
        env(&[
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_NETNS_OVERRIDE", "1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni:/opt/cni/bin"),
        ])
    }

    fn call(e: &HashMap<String, String>, stdin: &str) -> (i32, Value) {
        let fake = Fake {
            seen: RefCell::new(vec![]),
            reply: Some(serde_json::json!({"ok": true})),
        };
        let mut out = Vec::new();
        let code = run(e, &mut stdin.as_bytes(), &mut out, &fake);
        let v = if out.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out).expect("stdout is one JSON document")
        };
        (code, v)
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"n","type":"attache"}"#;

    #[test]
    fn add_with_full_env_reaches_the_plugin() {
        let (code, v) = call(&full_env("ADD"), CONF);
        assert_eq!(code, 0);
        assert_eq!(v["ok"], true);
    }

    #[test]
    fn env_errors_are_code_4() {
        let cases: Vec<(HashMap<String, String>, &str)> = vec![
            (env(&[]), "CNI_COMMAND"),
            (env(&[("CNI_COMMAND", "BOGUS")]), "BOGUS"),
            (
                {
                    let mut e = full_env("ADD");
                    e.remove("CNI_NETNS");
                    e.remove("CNI_PATH");
                    e
                },
                "CNI_NETNS, CNI_PATH",
            ),
            (
                {
                    let mut e = full_env("ADD");
                    e.insert("CNI_IFNAME".into(), "way-too-long-name0".into());
                    e
                },
                "longer than 15",
            ),
            (
                {
                    let mut e = full_env("ADD");
                    e.insert("CNI_IFNAME".into(), "et/h0".into());
                    e
                },
                "invalid character",
            ),
            (
                {
                    let mut e = full_env("CHECK");
                    e.insert("CNI_CONTAINERID".into(), "-bad id".into());
                    e
                },
                "container ID",
            ),
            (
                {
                    let mut e = full_env("ADD");
                    e.insert("CNI_ARGS".into(), "FOO".into());
                    e
                },
                "KEY=VALUE",
            ),
            (
                {
                    let mut e = full_env("ADD");
                    e.insert("CNI_ARGS".into(), "FOO=bar".into());
                    e
                },
                "unknown key",
            ),
        ];
        for (e, needle) in cases {
            let (code, v) = call(&e, CONF);
            assert_eq!(code, 1, "{e:?}");
            assert_eq!(v["code"], 4, "{e:?}: {v}");
            let msg = v["msg"].as_str().unwrap();
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        }
    }

    #[test]
    fn netns_guard_runs_for_every_mode() {
        // attache's own namespace, without the override: code 8 for ADD and CHECK.
        for cmd in ["ADD", "CHECK"] {
            let mut e = full_env(cmd);
            e.remove("CNI_NETNS_OVERRIDE");
            let (_, v) = call(&e, r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#);
            assert_eq!(v["code"], 8, "{cmd}: {v}");
            assert!(v["msg"].as_str().unwrap().contains("attache itself"), "{v}");
            e.insert("CNI_NETNS_OVERRIDE".into(), "true".into());
            assert_eq!(call(&e, CONF).0, 0, "{cmd}");
        }
        // Another kind of namespace, and a path that is none: code 8.
        for bad in ["/proc/self/ns/uts", "/nonexistent/ns"] {
            let mut e = full_env("ADD");
            e.insert("CNI_NETNS".into(), bad.into());
            let (_, v) = call(&e, CONF);
            assert_eq!(v["code"], 8, "{bad}: {v}");
        }
        // DEL goes on without a namespace it cannot use, and says why.
        for bad in ["/proc/self/ns/uts", "/nonexistent/ns", "/proc/self/ns/net"] {
            let mut e = full_env("DEL");
            e.remove("CNI_NETNS_OVERRIDE");
            e.insert("CNI_NETNS".into(), bad.into());
            let mut args = CmdArgs::from_env(Command::Del, &e).unwrap();
            check_netns(&mut args, &e).unwrap();
            assert_eq!(args.netns, None, "{bad}");
            assert!(args.netns_ignored.is_some(), "{bad}");
            assert_eq!(call(&e, CONF).0, 0, "{bad}");
        }
    }

    #[test]
    fn container_id_and_stdin_are_bounded() {
        let mut e = full_env("ADD");
        e.insert("CNI_CONTAINERID".into(), "a".repeat(255));
        assert_eq!(call(&e, CONF).0, 0);
        for cmd in ["ADD", "CHECK"] {
            let mut e = full_env(cmd);
            e.insert("CNI_CONTAINERID".into(), "a".repeat(256));
            let (_, v) = call(&e, CONF);
            assert_eq!(v["code"], 4, "{cmd}: {v}");
            assert!(v["msg"].as_str().unwrap().contains("256 bytes"), "{v}");
        }
        // A DEL of an ID only attache's ADD refuses has nothing to do, and says why; one the reference
        // refuses too (a bad character) is still code 4.
        let mut e = full_env("DEL");
        e.insert("CNI_CONTAINERID".into(), "a".repeat(301));
        let args = CmdArgs::from_env(Command::Del, &e).unwrap();
        assert!(args.nothing_to_do.unwrap().contains("301 bytes"));
        assert_eq!(call(&e, CONF).0, 0);
        assert!(
            CmdArgs::from_env(Command::Del, &full_env("DEL"))
                .unwrap()
                .nothing_to_do
                .is_none()
        );
        for bad in [
            format!("{}/x", "a".repeat(300)),
            "-a".repeat(200),
            "a b".into(),
        ] {
            e.insert("CNI_CONTAINERID".into(), bad.clone());
            let (_, v) = call(&e, CONF);
            assert_eq!(v["code"], 4, "{bad}: {v}");
        }
        let mut big = String::from(r#"{"cniVersion":"1.0.0","name":"n","type":"attache","x":""#);
        big.push_str(&"y".repeat(MAX_STDIN as usize));
        big.push_str("\"}");
        let (code, v) = call(&full_env("ADD"), &big);
        assert_eq!((code, v["code"].as_u64()), (1, Some(7)), "{}", v["msg"]);
    }

    #[test]
    fn del_tolerates_missing_netns() {
        let mut e = full_env("DEL");
        e.remove("CNI_NETNS");
        assert_eq!(call(&e, CONF).0, 0);
        e.insert("CNI_NETNS".into(), String::new());
        assert_eq!(call(&e, CONF).0, 0);
    }

    #[test]
    fn k8s_args_are_accepted() {
        let mut e = full_env("ADD");
        e.insert(
            "CNI_ARGS".into(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u;FOO=1"
                .into(),
        );
        assert_eq!(call(&e, CONF).0, 0);
        let a = CniArgs::parse("K8S_POD_NAME=p;IP=10.0.0.2").unwrap();
        assert_eq!(a.get("K8S_POD_NAME"), Some("p"));
        assert_eq!(a.to_env_string(), "K8S_POD_NAME=p;IP=10.0.0.2");
        // Plugins attache runs for the pod are told to ignore what they do not know, once.
        assert_eq!(
            a.for_delegate().to_env_string(),
            "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.0.0.2"
        );
        let b = CniArgs::parse("IgnoreUnknown=true;K8S_POD_NAME=p").unwrap();
        assert_eq!(
            b.for_delegate().to_env_string(),
            "IgnoreUnknown=1;K8S_POD_NAME=p"
        );
        // A record keeps them as the string the plugin was given.
        let v = serde_json::to_value(a.for_delegate()).unwrap();
        assert_eq!(v, "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.0.0.2");
        let back: CniArgs = serde_json::from_value(v).unwrap();
        assert_eq!(back, a.for_delegate());
    }

    #[test]
    fn version_gates() {
        let (_, v) = call(
            &full_env("CHECK"),
            r#"{"cniVersion":"0.3.1","name":"n","type":"attache"}"#,
        );
        assert_eq!(v["code"], 1);
        assert_eq!(v["cniVersion"], "0.3.1");
        let (_, v) = call(
            &full_env("CHECK"),
            r#"{"cniVersion":"0.4.0","name":"n","type":"attache"}"#,
        );
        assert_eq!(v["ok"], true);
        for cmd in ["GC", "STATUS"] {
            let (_, v) = call(&full_env(cmd), CONF);
            assert_eq!(v["code"], 1, "{cmd}");
            let (code, _) = call(
                &full_env(cmd),
                r#"{"cniVersion":"1.1.0","name":"n","type":"attache"}"#,
            );
            assert_eq!(code, 0, "{cmd}");
        }
        let (_, v) = call(
            &full_env("ADD"),
            r#"{"cniVersion":"0.2.0","name":"n","type":"attache"}"#,
        );
        assert_eq!(v["code"], 1);
        let (_, v) = call(
            &full_env("ADD"),
            r#"{"cniVersion":"9.9.9","name":"n","type":"attache"}"#,
        );
        assert_eq!(v["code"], 1);
    }

    #[test]
    fn status_and_gc_need_only_path() {
        let e = env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")]);
        let (code, _) = call(&e, r#"{"cniVersion":"1.1.0","name":"n","type":"attache"}"#);
        assert_eq!(code, 0);
        let e = env(&[("CNI_COMMAND", "STATUS")]);
        let (_, v) = call(&e, r#"{"cniVersion":"1.1.0","name":"n","type":"attache"}"#);
        assert_eq!(v["code"], 4);
    }

    #[test]
    fn version_answers_without_other_env() {
        let e = env(&[("CNI_COMMAND", "VERSION")]);
        let (code, v) = call(&e, r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(code, 0);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        let (code, v) = call(&e, "");
        assert_eq!(code, 0);
        assert_eq!(v["cniVersion"], "1.1.0");
        let (code, v) = call(&e, "{oops");
        assert_eq!((code, v["code"].as_u64()), (1, Some(6)));
    }

    /// What [`Plugin::finished`] was told: command, type, metricsDir, error code.
    type Told = (Command, Option<String>, Option<PathBuf>, Option<u32>);

    /// Remembers what [`Plugin::finished`] is told.
    #[derive(Default)]
    struct Watcher {
        done: RefCell<Vec<Told>>,
        panic_in_run: bool,
    }

    impl Plugin for Watcher {
        fn run(&self, _: &CmdArgs, _: NetConf) -> Result<Option<Value>> {
            assert!(!self.panic_in_run, "a bug");
            Ok(None)
        }
        fn finished(&self, d: &Finished<'_>) {
            self.done.borrow_mut().push((
                d.command,
                d.conf_type.map(str::to_string),
                d.metrics_dir.map(Path::to_path_buf),
                d.error.map(Error::cni_code),
            ));
            panic!("a bug in the metrics must not change the answer");
        }
    }

    #[test]
    fn every_invocation_but_version_is_reported_once_answered() {
        let conf = |extra: &str| {
            format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"bridge","metricsDir":"/m"{extra}}}"#
            )
        };
        let cases: Vec<(HashMap<String, String>, String, Option<u32>)> = vec![
            (full_env("ADD"), conf(""), None),
            (full_env("DEL"), conf(""), None),
            (full_env("STATUS"), conf(""), None),
            // Refused before the plugin runs: still reported, with what was read of the configuration.
            (
                {
                    let mut e = full_env("ADD");
                    e.remove("CNI_NETNS");
                    e
                },
                conf(""),
                Some(4),
            ),
            (
                full_env("ADD"),
                conf(r#","name":"a b""#).replace(r#""name":"n","#, ""),
                Some(7),
            ),
            (
                full_env("CHECK"),
                conf("").replace("1.1.0", "0.3.1"),
                Some(1),
            ),
        ];
        for (e, stdin, code) in cases {
            let w = Watcher::default();
            let mut out = Vec::new();
            let exit = run(&e, &mut stdin.as_bytes(), &mut out, &w);
            assert_eq!(exit, i32::from(code.is_some()), "{stdin}");
            let done = w.done.borrow();
            assert_eq!(done.len(), 1, "{stdin}");
            assert_eq!(done[0].1.as_deref(), Some("bridge"));
            assert_eq!(done[0].2.as_deref(), Some(Path::new("/m")));
            assert_eq!(done[0].3, code, "{stdin}");
        }
        // A panic in the plugin is reported as the error it is answered with.
        let w = Watcher {
            panic_in_run: true,
            ..Watcher::default()
        };
        let exit = run(
            &full_env("GC"),
            &mut conf("").as_bytes(),
            &mut Vec::new(),
            &w,
        );
        assert_eq!(exit, 1);
        assert_eq!(w.done.borrow()[0].0, Command::Gc);
        assert!(w.done.borrow()[0].3.is_some());
        // VERSION, a command that is none, stdin that is not JSON, a relative metricsDir.
        let w = Watcher::default();
        run(
            &env(&[("CNI_COMMAND", "VERSION")]),
            &mut conf("").as_bytes(),
            &mut Vec::new(),
            &w,
        );
        run(
            &env(&[("CNI_COMMAND", "BOGUS")]),
            &mut conf("").as_bytes(),
            &mut Vec::new(),
            &w,
        );
        assert!(w.done.borrow().is_empty());
        run(&full_env("ADD"), &mut "{".as_bytes(), &mut Vec::new(), &w);
        let rel = conf("").replace("/m", "m");
        run(&full_env("ADD"), &mut rel.as_bytes(), &mut Vec::new(), &w);
        let done = w.done.borrow();
        assert_eq!(done[0], (Command::Add, None, None, Some(6)));
        assert_eq!(done[1], (Command::Add, Some("bridge".into()), None, None));
    }

    #[test]
    fn bad_stdin_is_6_or_7() {
        let (c, v) = call(&full_env("ADD"), "{");
        assert_eq!((c, v["code"].as_u64()), (1, Some(6)));
        let (c, v) = call(
            &full_env("ADD"),
            r#"{"cniVersion":"1.0.0","name":"a b","type":"x"}"#,
        );
        assert_eq!((c, v["code"].as_u64()), (1, Some(7)));
    }
}
