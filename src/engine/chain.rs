//! A network as a runtime loads it — a conf or a conflist — and its execution as a chain (SPEC §3):
//! ADD in order with `prevResult`, DEL in reverse, CHECK in order, STATUS and GC to every plugin. Each
//! plugin of the chain runs in-process when attache implements its type natively, by exec otherwise.

use serde_json::{Map, Value};

use crate::attach::{Checked, NativeType, PodNs};
use crate::cni::conf::{self, NetConf, runtime_config_for};
use crate::cni::skel::{CmdArgs, Command};
use crate::cni::spec::{CniResult, Version};
use crate::delegate::{Invocation, exec, find_plugin};
use crate::error::{Error, Result, code};

/// The arguments a native plugin of a chain is called with: what an exec'd one finds in its environment.
fn native_args(command: Command, inv: &Invocation<'_>) -> CmdArgs {
    CmdArgs {
        command,
        container_id: inv.container_id.to_string(),
        netns: inv.netns.map(|p| p.to_path_buf()),
        netns_ignored: None,
        nothing_to_do: None,
        ifname: inv.ifname.to_string(),
        args: inv.cni_args.clone(),
        path: inv.path.to_vec(),
    }
}

/// Run one plugin of a chain: natively if attache owns its type, else by exec (whose printed result is
/// read as `version`). Results come back typed.
pub async fn run_plugin(
    command: Command,
    plugin_type: &str,
    conf: &Value,
    inv: &Invocation<'_>,
    version: Version,
) -> Result<Option<CniResult>> {
    match NativeType::of(plugin_type) {
        Some(t) => {
            let conf = NetConf::from_value(conf.clone())?;
            t.run(&native_args(command, inv), conf, inv.link_group)
                .await
        }
        None => exec(command, plugin_type, conf, inv)
            .await?
            .map(|out| CniResult::from_value(&out, version))
            .transpose(),
    }
}

/// A network as a runtime would load it from a `.conf` or `.conflist`: a name, a version and a chain.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub version: Version,
    pub disable_check: bool,
    pub plugins: Vec<Map<String, Value>>,
}

impl NetworkList {
    /// Accept either a single plugin conf or a conflist (`plugins: [...]`). `default_version` is used when
    /// the document names none.
    pub fn from_value(v: &Value, default_version: &str) -> Result<NetworkList> {
        let Value::Object(top) = v else {
            return Err(Error::config(
                "a network configuration must be a JSON object",
            ));
        };
        let cni_version = match top.get("cniVersion") {
            Some(Value::String(s)) => s.clone(),
            None => default_version.to_string(),
            Some(other) => {
                return Err(Error::config(format!(
                    "cniVersion must be a string, got {other}"
                )));
            }
        };
        let version = Version::parse(&cni_version)?;
        let name = match top.get("name") {
            Some(Value::String(s)) => s.clone(),
            None => String::new(),
            Some(other) => {
                return Err(Error::config(format!("name must be a string, got {other}")));
            }
        };
        let plugins = match top.get("plugins") {
            Some(Value::Array(list)) => {
                if list.is_empty() {
                    return Err(Error::config(format!(
                        "network {name:?} has an empty plugins list"
                    )));
                }
                list.iter()
                    .map(|p| match p {
                        Value::Object(m) => Ok(m.clone()),
                        _ => Err(Error::config(format!(
                            "network {name:?}: every entry of plugins must be an object"
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            Some(_) => {
                return Err(Error::config(format!(
                    "network {name:?}: plugins must be a list"
                )));
            }
            None => vec![top.clone()],
        };
        for p in &plugins {
            match p.get("type") {
                Some(Value::String(t)) if !t.is_empty() => conf::validate_plugin_type(t)?,
                _ => {
                    return Err(Error::config(format!(
                        "network {name:?}: a plugin has no \"type\""
                    )));
                }
            }
        }
        Ok(NetworkList {
            name,
            cni_version,
            version,
            disable_check: top.get("disableCheck").and_then(Value::as_bool) == Some(true),
            plugins,
        })
    }

    /// The network as a conflist document (how a record keeps it).
    pub fn to_value(&self) -> Value {
        let mut o = Map::new();
        o.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        o.insert("name".into(), Value::String(self.name.clone()));
        if self.disable_check {
            o.insert("disableCheck".into(), Value::Bool(true));
        }
        o.insert(
            "plugins".into(),
            Value::Array(self.plugins.iter().cloned().map(Value::Object).collect()),
        );
        Value::Object(o)
    }

    pub fn plugin_type(&self, i: usize) -> &str {
        self.plugins[i]
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// Whether any plugin of the chain runs natively (and so puts a pod interface in the link group).
    pub fn has_native(&self) -> bool {
        (0..self.plugins.len())
            .any(|i| NativeType::of(self.plugin_type(i)).is_some_and(NativeType::deletes_link))
    }

    /// Check that every plugin can run, touching nothing: an exec'd one's binary exists; a native one's
    /// configuration, as [`NetworkList::add`] will give it (with `runtime`), validates — when `validate`
    /// is set (teardown reads configurations leniently instead). Returns the checked configurations, for
    /// `add` to use. Logs how each plugin will run; `what` names the network in errors.
    pub fn runnable(
        &self,
        inv: &Invocation<'_>,
        runtime: &Map<String, Value>,
        validate: bool,
        what: &str,
    ) -> Result<Vec<Option<Checked>>> {
        let mut checked = Vec::with_capacity(self.plugins.len());
        for i in 0..self.plugins.len() {
            let t = self.plugin_type(i);
            match NativeType::of(t) {
                Some(native) => {
                    tracing::debug!("{what}: plugin {i} {t:?} runs natively, in-process");
                    checked.push(if validate {
                        let conf = NetConf::from_value(self.plugin_conf(i, runtime, None))?;
                        Some(
                            native
                                .check_conf(&native_args(Command::Add, inv), conf)
                                .map_err(|e| e.context(what))?,
                        )
                    } else {
                        None
                    });
                }
                None => {
                    let bin = find_plugin(t, inv.path)?;
                    tracing::debug!("{what}: plugin {i} {t:?} runs by exec of {}", bin.display());
                    checked.push(None);
                }
            }
        }
        Ok(checked)
    }

    /// The configuration handed to plugin `i` (SPEC §3 "Deriving execution configuration").
    pub fn plugin_conf(
        &self,
        i: usize,
        runtime: &Map<String, Value>,
        prev: Option<&CniResult>,
    ) -> Value {
        let mut c = self.plugins[i].clone();
        c.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        c.insert("name".into(), Value::String(self.name.clone()));
        let rc = runtime_config_for(&self.plugins[i], runtime);
        c.remove("capabilities");
        if !rc.is_empty() {
            c.insert("runtimeConfig".into(), Value::Object(rc));
        }
        if let Some(p) = prev {
            c.insert("prevResult".into(), p.to_value(self.version));
        }
        Value::Object(c)
    }

    /// ADD the chain; on a failure the plugins already run are DELeted again before the error returns.
    /// `checked` holds the native configurations [`NetworkList::runnable`] validated (by plugin index;
    /// empty if none): one that gets no `prevResult` runs with exactly that configuration, unparsed again.
    /// Native plugins work in `pod` when given (the pod's namespace, shared by all its attachments).
    pub async fn add(
        &self,
        inv: &Invocation<'_>,
        runtime: &Map<String, Value>,
        mut checked: Vec<Option<Checked>>,
        pod: Option<&PodNs>,
    ) -> Result<CniResult> {
        let mut prev: Option<CniResult> = None;
        for i in 0..self.plugins.len() {
            let pre = checked
                .get_mut(i)
                .and_then(Option::take)
                .filter(|_| prev.is_none());
            let ran = match self.early_tuning(i, inv, runtime) {
                Ok(early) => {
                    self.add_one(i, inv, runtime, prev.as_ref(), pre, pod, early)
                        .await
                }
                Err(e) => Err(e),
            };
            match ran {
                Ok(out) => prev = Some(out),
                Err(e) => {
                    // Undo what ran, newest first, including the failed plugin (it may have half-made
                    // something); the original error is what the caller sees.
                    if let Err(undo) = self.del_upto(i + 1, inv, runtime, prev.as_ref()).await {
                        tracing::warn!(network = %self.name, "rollback after failed ADD: {undo}");
                    }
                    return Err(e);
                }
            }
        }
        prev.ok_or_else(|| Error::Internal(format!("network {:?} has no plugins", self.name)))
    }

    /// The tuning chained right after plugin `i`, when `i` is a native driver that makes the interface
    /// and the tuning is attache's own: that driver applies it before the link comes up.
    fn early_tuning(
        &self,
        i: usize,
        inv: &Invocation<'_>,
        runtime: &Map<String, Value>,
    ) -> Result<Option<crate::attach::tuning::TuningConf>> {
        let makes_link = NativeType::of(self.plugin_type(i)).is_some_and(NativeType::makes_link);
        if !makes_link
            || i + 1 >= self.plugins.len()
            || NativeType::of(self.plugin_type(i + 1)) != Some(NativeType::Tuning)
        {
            return Ok(None);
        }
        let conf = NetConf::from_value(self.plugin_conf(i + 1, runtime, None))?;
        let checked = NativeType::Tuning.check_conf(&native_args(Command::Add, inv), conf)?;
        Ok(checked.tuning().cloned())
    }

    /// ADD plugin `i`: a native one in-process (with its checked configuration if planning made one), any
    /// other by exec. `early`: a tuning its driver applies before the link is up.
    #[allow(clippy::too_many_arguments)]
    async fn add_one(
        &self,
        i: usize,
        inv: &Invocation<'_>,
        runtime: &Map<String, Value>,
        prev: Option<&CniResult>,
        pre: Option<Checked>,
        pod: Option<&PodNs>,
        early: Option<crate::attach::tuning::TuningConf>,
    ) -> Result<CniResult> {
        let t = self.plugin_type(i);
        let conf = || self.plugin_conf(i, runtime, prev);
        let Some(native) = NativeType::of(t) else {
            return run_plugin(Command::Add, t, &conf(), inv, self.version)
                .await?
                .ok_or_else(|| Error::Delegate {
                    plugin: t.to_string(),
                    code: code::INTERNAL,
                    msg: "ADD printed no result".into(),
                    details: String::new(),
                    context: String::new(),
                });
        };
        let args = native_args(Command::Add, inv);
        let checked = match pre {
            Some(c) => c,
            None => native.check_conf(&args, NetConf::from_value(conf())?)?,
        };
        let register = |pod: &PodNs| {
            if let Some(t) = early {
                pod.tuned.borrow_mut().register(inv.ifname, t);
            }
        };
        match pod {
            Some(pod) => {
                register(pod);
                checked.add(&args, pod, inv.link_group).await
            }
            None => {
                let pod = PodNs::open(&args)?;
                register(&pod);
                checked.add(&args, &pod, inv.link_group).await
            }
        }
    }

    /// DEL the whole chain in reverse order. Best effort: every plugin runs, errors are collected.
    pub async fn del(
        &self,
        inv: &Invocation<'_>,
        runtime: &Map<String, Value>,
        prev: Option<&CniResult>,
    ) -> Result<()> {
        self.del_upto(self.plugins.len(), inv, runtime, prev).await
    }

    async fn del_upto(
        &self,
        n: usize,
        inv: &Invocation<'_>,
        runtime: &Map<String, Value>,
        prev: Option<&CniResult>,
    ) -> Result<()> {
        let mut errors = Vec::new();
        for i in (0..n).rev() {
            let conf = self.plugin_conf(i, runtime, prev);
            if let Err(e) =
                run_plugin(Command::Del, self.plugin_type(i), &conf, inv, self.version).await
            {
                errors.push(e);
            }
        }
        Error::from_list(errors)
    }

    /// CHECK the chain in order against the final ADD result.
    pub async fn check(
        &self,
        inv: &Invocation<'_>,
        runtime: &Map<String, Value>,
        prev: &CniResult,
    ) -> Result<()> {
        if self.disable_check || self.version < Version::V0_4_0 {
            return Ok(());
        }
        for i in 0..self.plugins.len() {
            let t = self.plugin_type(i);
            let conf = self.plugin_conf(i, runtime, Some(prev));
            match NativeType::of(t) {
                // In-process, the result is handed over as it is: nothing is read back from JSON.
                Some(native) => {
                    let args = native_args(Command::Check, inv);
                    let checked = native.check_conf(&args, NetConf::from_value(conf)?)?;
                    checked.check(&args, prev).await?;
                }
                None => {
                    run_plugin(Command::Check, t, &conf, inv, self.version).await?;
                }
            }
        }
        Ok(())
    }

    /// STATUS: every plugin must be installed; those speaking 1.1.0 are asked.
    pub async fn status(&self, inv: &Invocation<'_>) -> Result<()> {
        for i in 0..self.plugins.len() {
            if NativeType::of(self.plugin_type(i)).is_none() {
                find_plugin(self.plugin_type(i), inv.path).map_err(|e| match e {
                    Error::NotReady(msg) => Error::NotAvailable(format!("not ready: {msg}")),
                    other => other,
                })?;
            }
            if self.version >= Version::V1_1_0 {
                let conf = self.plugin_conf(i, &Map::new(), None);
                run_plugin(
                    Command::Status,
                    self.plugin_type(i),
                    &conf,
                    inv,
                    self.version,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// GC: forwarded to every plugin that speaks 1.1.0, errors collected.
    pub async fn gc(&self, inv: &Invocation<'_>, valid: &Value) -> Result<()> {
        if self.version < Version::V1_1_0 {
            return Ok(());
        }
        let mut errors = Vec::new();
        for i in 0..self.plugins.len() {
            let mut conf = self.plugin_conf(i, &Map::new(), None);
            if let Some(o) = conf.as_object_mut() {
                o.insert("cni.dev/valid-attachments".into(), valid.clone());
                o.insert("cni.dev/attachments".into(), valid.clone());
            }
            if let Err(e) =
                run_plugin(Command::Gc, self.plugin_type(i), &conf, inv, self.version).await
            {
                errors.push(e);
            }
        }
        Error::from_list(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fake_plugin, rt, tempdir};
    use serde_json::json;
    use std::path::Path;

    fn list(v: Value) -> NetworkList {
        NetworkList::from_value(&v, "1.0.0").unwrap()
    }

    #[test]
    fn conf_and_conflist_normalise() {
        let l = list(json!({"cniVersion":"0.4.0","name":"a","type":"bridge"}));
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugin_type(0), "bridge");
        let l = list(
            json!({"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}),
        );
        assert_eq!(l.plugins.len(), 2);
        assert_eq!(l.plugin_type(1), "portmap");
        for bad in [
            json!({"name":"x","plugins":[]}),
            json!({"name":"x","plugins":[{"type":""}]}),
            json!({"name":"x","plugins":[{"type":"../x"}]}),
            json!({"name":"x","plugins":"bridge"}),
            json!({"name":"x"}),
            json!([1]),
        ] {
            assert_eq!(
                NetworkList::from_value(&bad, "1.0.0")
                    .unwrap_err()
                    .cni_code(),
                7,
                "{bad}"
            );
        }
    }

    #[test]
    fn chain_confs_get_name_version_prev_and_capabilities() {
        let l = list(json!({"cniVersion":"0.4.0","name":"b","plugins":[
            {"type":"bridge","capabilities":{"mac":true}},
            {"type":"portmap","capabilities":{"portMappings":true}}]}));
        let runtime = json!({"portMappings":[{"hostPort":8080,"containerPort":80}],"mac":"aa:bb:cc:dd:ee:ff"});
        let runtime = runtime.as_object().unwrap();
        let first = l.plugin_conf(0, runtime, None);
        assert_eq!(first["name"], "b");
        assert_eq!(first["cniVersion"], "0.4.0");
        assert!(first.get("capabilities").is_none());
        assert!(first.get("prevResult").is_none());
        assert_eq!(first["runtimeConfig"], json!({"mac":"aa:bb:cc:dd:ee:ff"}));
        let prev = CniResult::from_value(
            &json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}),
            Version::V1_0_0,
        )
        .unwrap();
        let second = l.plugin_conf(1, runtime, Some(&prev));
        assert_eq!(second["prevResult"]["cniVersion"], "0.4.0");
        assert_eq!(second["prevResult"]["ips"][0]["version"], "4");
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    }

    #[test]
    fn chain_runs_in_order_and_deletes_in_reverse() {
        let d = tempdir("chain");
        let log = d.join("log");
        for name in ["one", "two"] {
            fake_plugin(
                &d,
                name,
                &format!(
                    r#"in=$(cat); echo "$CNI_COMMAND {name} $CNI_IFNAME $(echo "$in" | grep -c prevResult)" >> {log}
[ "$CNI_COMMAND" = ADD ] && echo '{{"cniVersion":"1.0.0","ips":[{{"address":"10.9.0.{n}/24"}}]}}'
exit 0"#,
                    log = log.display(),
                    n = if name == "one" { 1 } else { 2 }
                ),
            );
        }
        let l = list(
            json!({"cniVersion":"1.0.0","name":"c","plugins":[{"type":"one"},{"type":"two"}]}),
        );
        let path = vec![d.clone()];
        let inv = Invocation {
            container_id: "c1",
            netns: Some(Path::new("/run/netns/x")),
            ifname: "eth0",
            cni_args: Default::default(),
            link_group: None,
            path: &path,
        };
        let rt = rt();
        let res = rt.block_on(l.add(&inv, &Map::new(), vec![], None)).unwrap();
        assert_eq!(res.ips[0].address.to_string(), "10.9.0.2/24");
        rt.block_on(l.del(&inv, &Map::new(), Some(&res))).unwrap();
        let got = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            got.lines().collect::<Vec<_>>(),
            vec![
                "ADD one eth0 0",
                "ADD two eth0 1",
                "DEL two eth0 1",
                "DEL one eth0 1"
            ]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failed_add_rolls_back_and_passes_the_code_through() {
        let d = tempdir("fail");
        let log = d.join("log");
        fake_plugin(
            &d,
            "good",
            &format!(
                r#"echo "$CNI_COMMAND good" >> {log}; [ "$CNI_COMMAND" = ADD ] && echo '{{"cniVersion":"1.0.0"}}'; exit 0"#,
                log = log.display()
            ),
        );
        fake_plugin(
            &d,
            "bad",
            &format!(
                r#"echo "$CNI_COMMAND bad" >> {log}; [ "$CNI_COMMAND" = ADD ] && {{ echo '{{"code":11,"msg":"busy","details":"later"}}'; exit 1; }}; exit 0"#,
                log = log.display()
            ),
        );
        let l = list(
            json!({"cniVersion":"1.0.0","name":"c","plugins":[{"type":"good"},{"type":"bad"}]}),
        );
        let path = vec![d.clone()];
        let inv = Invocation {
            container_id: "c1",
            netns: None,
            ifname: "eth0",
            cni_args: Default::default(),
            link_group: None,
            path: &path,
        };
        let err = rt()
            .block_on(l.add(&inv, &Map::new(), vec![], None))
            .unwrap_err();
        assert_eq!(err.cni_code(), 11);
        assert_eq!(err.details(), "later");
        let got = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            got.lines().collect::<Vec<_>>(),
            vec!["ADD good", "ADD bad", "DEL bad", "DEL good"]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
