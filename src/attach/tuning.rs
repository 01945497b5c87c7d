//! `tuning`, natively: a chained plugin that sets sysctls and link attributes of `CNI_IFNAME` in the pod,
//! with the reference plugin's fields — `sysctl` (`net.*` only; `IFNAME` in a key is the interface;
//! checked against `/etc/cni/tuning/allowlist.conf` when that exists, each line a regular expression),
//! `mac` (also from `runtimeConfig.mac`, `CNI_ARGS MAC=` and `args.cni.mac`), `promisc`, `mtu`,
//! `allmulti`, `txQLen`, each overridable in `args.cni` — plus `ipv6: {acceptRA, autoconf, dad}`, named
//! settings for `accept_ra`, `autoconf` and `accept_dad`.
//!
//! The link's values before the change are kept where the reference keeps them
//! (`<dataDir>/<containerID>_<ifname>.json`, dataDir `/run/cni/tuning`), with the sysctls' too; DEL
//! puts them back and removes the file (also when the interface is gone: nothing is left), a failed
//! ADD puts back what it changed, CHECK compares what the configuration asks with what the interface has.
//!
//! **Before the link is up.** Chained right after one of attache's own drivers, the settings that
//! belong to the interface (its link attributes and its `conf/<ifname>` sysctls) are applied by that
//! driver between making the interface and bringing it up ([`before_up`]): no router advertisement,
//! DAD or SLAAC address happens under the old values. An exec'd `tuning`, or one after an exec'd
//! plugin, applies them when it runs, as the reference does.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::PodNs;
use super::driver::{Driver, NativeType};
use crate::cni::conf::NetConf;
use crate::cni::skel::CmdArgs;
use crate::cni::spec::CniResult;
use crate::error::{Error, Result};
use crate::netlink::{Link, Netlink, format_mac, parse_mac};

/// The reference's folder of saved link values.
pub const DEFAULT_DATA_DIR: &str = "/run/cni/tuning";
/// The reference's allowlist of sysctls.
pub const ALLOWLIST: &str = "/etc/cni/tuning/allowlist.conf";
/// Where the allowlist is read instead (tests; a node with another layout). Only the runtime's
/// environment sets it, never a network configuration.
pub const ALLOWLIST_ENV: &str = "ATTACHE_TUNING_ALLOWLIST";

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct TuningConf {
    /// In the configuration's order.
    sysctls: Vec<Sysctl>,
    mac: Option<[u8; 6]>,
    promisc: bool,
    mtu: Option<u32>,
    allmulti: Option<bool>,
    txqlen: Option<u32>,
    data_dir: PathBuf,
}

#[derive(Clone, Debug)]
struct Sysctl {
    /// Relative to /proc/sys.
    path: String,
    value: String,
    /// Whether it belongs to the interface (`.../conf/<ifname>/...`, `.../neigh/<ifname>/...`): it goes
    /// with the interface, and can be set before it is up.
    of_interface: bool,
}

/// The values a tuning changed, as they were: the reference's backup document, with the sysctls.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    promisc: Option<bool>,
    #[serde(default, skip_serializing_if = "is_zero")]
    mtu: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allmulti: Option<bool>,
    #[serde(default, rename = "txQLen", skip_serializing_if = "Option::is_none")]
    txqlen: Option<u32>,
    /// attache's: `[path under /proc/sys, value before]`.
    #[serde(
        default,
        rename = "attacheSysctl",
        skip_serializing_if = "Vec::is_empty"
    )]
    sysctl: Vec<(String, String)>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// The path under /proc/sys of a sysctl key (dots or slashes as separators, `IFNAME` the interface),
/// refused unless it stays under `net/`.
pub fn sysctl_path(key: &str, ifname: &str) -> Result<String> {
    let bad = |why: &str| Error::config(format!("tuning: sysctl {key:?} {why}"));
    if key.is_empty() || key.bytes().any(|b| b == 0 || b.is_ascii_whitespace()) {
        return Err(bad("is not a sysctl name"));
    }
    let parts: Vec<String> = key
        .split(['.', '/'])
        .map(|p| {
            if p == "IFNAME" {
                ifname.to_string()
            } else {
                p.to_string()
            }
        })
        .collect();
    if parts.iter().any(|p| p.is_empty() || p == ".." || p == ".") {
        return Err(bad("has an empty or relative component"));
    }
    if parts[0] != "net" || parts.len() < 2 {
        return Err(bad("is outside net.*: tuning sets network sysctls only"));
    }
    Ok(parts.join("/"))
}

/// The allowlist's expressions, if the file exists.
fn allowlist() -> Result<Option<Vec<regex_lite::Regex>>> {
    let path = std::env::var_os(ALLOWLIST_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(ALLOWLIST));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            regex_lite::Regex::new(l).map_err(|e| {
                Error::config(format!(
                    "tuning: {} holds {l:?}, which is not a regular expression: {e}",
                    path.display()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn bool_of(v: &Value, key: &str) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| Error::config(format!("tuning: {key} must be true or false, got {v}")))
}

fn u32_of(v: &Value, key: &str, min: u64) -> Result<u32> {
    match v.as_u64() {
        Some(n) if n >= min && n <= u32::MAX as u64 => Ok(n as u32),
        _ => Err(Error::config(format!(
            "tuning: {key} must be a number from {min} to {}, got {v}",
            u32::MAX
        ))),
    }
}

impl Driver for TuningConf {
    fn parse(_: NativeType, args: &CmdArgs, conf: &NetConf) -> Result<TuningConf> {
        let raw = &conf.raw;
        // `args.cni` overrides each field.
        let over = raw.get("args").and_then(|a| a.get("cni"));
        let field = |k: &str| {
            over.and_then(|o| o.get(k))
                .filter(|v| !v.is_null())
                .or_else(|| raw.get(k).filter(|v| !v.is_null()))
        };
        let mut entries: Vec<(String, String)> = Vec::new();
        for source in [raw.get("sysctl"), over.and_then(|o| o.get("sysctl"))]
            .into_iter()
            .flatten()
            .filter(|v| !v.is_null())
        {
            let Value::Object(m) = source else {
                return Err(Error::config(format!(
                    "tuning: sysctl must be an object of names to values, got {source}"
                )));
            };
            for (k, v) in m {
                let Value::String(v) = v else {
                    return Err(Error::config(format!(
                        "tuning: sysctl {k:?} must be a string, got {v}"
                    )));
                };
                if v.len() > 4096 || v.contains(['\n', '\0']) {
                    return Err(Error::config(format!(
                        "tuning: sysctl {k:?}: the value is not one line of text"
                    )));
                }
                entries.retain(|(ek, _)| ek != k);
                entries.push((k.clone(), v.clone()));
            }
        }
        if let Some(v6) = raw.get("ipv6").filter(|v| !v.is_null()) {
            let Value::Object(m) = v6 else {
                return Err(Error::config(format!(
                    "tuning: ipv6 must be an object, got {v6}"
                )));
            };
            for (k, v) in m {
                let name = match k.as_str() {
                    "acceptRA" => "accept_ra",
                    "autoconf" => "autoconf",
                    "dad" => "accept_dad",
                    other => {
                        return Err(Error::config(format!(
                            "tuning: ipv6.{other} is not a setting (acceptRA, autoconf, dad)"
                        )));
                    }
                };
                let on = bool_of(v, &format!("ipv6.{k}"))?;
                let key = format!("net.ipv6.conf.IFNAME.{name}");
                entries.retain(|(ek, _)| *ek != key);
                entries.push((key, if on { "1" } else { "0" }.into()));
            }
        }
        let allow = if entries.is_empty() {
            None
        } else {
            allowlist()?
        };
        let ifname_parts: Vec<&str> = vec![&args.ifname];
        let mut sysctls = Vec::new();
        for (key, value) in entries {
            let path = sysctl_path(&key, &args.ifname)?;
            if let Some(list) = &allow
                && !list.iter().any(|r| r.is_match(&key))
            {
                return Err(Error::config(format!(
                    "tuning: sysctl {key} is not allowed by the allowlist ({} expressions)",
                    list.len()
                )));
            }
            let parts: Vec<&str> = path.split('/').collect();
            let of_interface = parts.len() >= 4
                && matches!(parts[2], "conf" | "neigh")
                && ifname_parts.contains(&parts[3]);
            sysctls.push(Sysctl {
                path,
                value,
                of_interface,
            });
        }
        let mac_text = over
            .and_then(|o| o.get("mac"))
            .and_then(Value::as_str)
            .or_else(|| {
                raw.get("runtimeConfig")
                    .and_then(|r| r.get("mac"))
                    .and_then(Value::as_str)
            })
            .or(args.args.get("MAC"))
            .or_else(|| raw.get("mac").and_then(Value::as_str))
            .filter(|m| !m.is_empty());
        let mac = mac_text
            .map(|m| parse_mac(m).map_err(|e| Error::config(format!("tuning: mac: {e}"))))
            .transpose()?;
        let promisc = field("promisc")
            .map(|v| bool_of(v, "promisc"))
            .transpose()?
            .unwrap_or(false);
        let mtu = match field("mtu") {
            None => None,
            Some(v) if v.as_u64() == Some(0) => None,
            Some(v) => Some(u32_of(v, "mtu", 68)?),
        };
        let allmulti = field("allmulti")
            .map(|v| bool_of(v, "allmulti"))
            .transpose()?;
        let txqlen = field("txQLen")
            .map(|v| u32_of(v, "txQLen", 0))
            .transpose()?;
        let data_dir = match raw.get("dataDir").and_then(Value::as_str) {
            Some(d) if Path::new(d).is_absolute() => PathBuf::from(d),
            Some(d) => {
                return Err(Error::config(format!(
                    "tuning: dataDir must be an absolute path, got {d}"
                )));
            }
            None => PathBuf::from(DEFAULT_DATA_DIR),
        };
        Ok(TuningConf {
            sysctls,
            mac,
            promisc,
            mtu,
            allmulti,
            txqlen,
            data_dir,
        })
    }

    async fn add(
        &self,
        args: &CmdArgs,
        conf: &NetConf,
        pod: &PodNs,
        _: Option<u32>,
    ) -> Result<CniResult> {
        let mut prev = conf
            .prev_result()?
            .ok_or_else(|| Error::config("tuning: required prevResult missing"))?;
        let nl = pod.netlink().await?;
        let link = nl
            .link(&args.ifname)
            .await?
            .ok_or_else(|| Error::config(format!("tuning: {} is not in the pod", args.ifname)))?;
        // What the interface's driver already applied before bringing it up, if it did.
        let early = pod.tuned.borrow_mut().take_applied(&args.ifname);
        let applied_early = early.is_some();
        let todo: Vec<&Sysctl> = self
            .sysctls
            .iter()
            .filter(|s| !(applied_early && s.of_interface))
            .collect();
        // The values before, read and saved before anything changes: attache killed half-way leaves
        // them for DEL.
        let mut backup = early.unwrap_or_default();
        backup.sysctl.extend(read_sysctls(pod, &todo).await?);
        if !applied_early {
            self.link_before(&link, &mut backup);
        }
        // A panic half-way is an error here too: what was changed is put back either way.
        let done = crate::fail::guarded(async {
            // Saved where the reference saves (a link field is set), and where a sysctl that outlives
            // the interface changes; the interface's own go with it.
            if self.saves() || self.sysctls.iter().any(|s| !s.of_interface) {
                crate::fail::point("tuning.backup")?;
                write_backup(&self.backup_path(args), &backup)?;
            }
            write_sysctls(pod, &todo).await?;
            if !applied_early {
                self.apply_link(&nl, &link).await?;
            }
            Ok::<(), Error>(())
        })
        .await;
        if let Err(e) = done {
            // Put back what this ADD changed (the interface's driver undoes the interface itself).
            if let Err(undo) = restore(pod, &nl, &args.ifname, &backup).await {
                tracing::warn!("tuning: restoring after a failed ADD: {undo}");
            }
            let _ = std::fs::remove_file(self.backup_path(args));
            return Err(e);
        }
        if let Some(mac) = self.mac {
            for i in prev.interfaces.iter_mut().filter(|i| i.name == args.ifname) {
                i.mac = format_mac(&mac);
            }
        }
        Ok(prev)
    }

    async fn check(&self, args: &CmdArgs, _: &NetConf, _: &CniResult) -> Result<()> {
        let ns = super::pod_netns(args)?;
        let paths: Vec<(String, String)> = self
            .sysctls
            .iter()
            .map(|s| (s.path.clone(), s.value.clone()))
            .collect();
        let wrong = ns.run(move || {
            paths.into_iter().find_map(|(p, want)| {
                let have = std::fs::read_to_string(format!("/proc/sys/{p}"))
                    .map(|s| s.trim_end_matches('\n').to_string())
                    .unwrap_or_default();
                (have != want).then(|| format!("{p} is {have:?}, not {want:?}"))
            })
        })?;
        if let Some(w) = wrong {
            return Err(Error::Mismatch(format!("tuning: {w}")));
        }
        let nl = Netlink::connect(Some(&ns))?;
        let link = nl
            .link(&args.ifname)
            .await?
            .ok_or_else(|| Error::Mismatch(format!("tuning: {} is not in the pod", args.ifname)))?;
        let mismatch = |what: &str, want: String, have: String| {
            Err(Error::Mismatch(format!(
                "tuning: {} has {what} {have}, the configuration {want}",
                args.ifname
            )))
        };
        if let Some(mac) = self.mac
            && link.mac != mac
        {
            return mismatch("MAC", format_mac(&mac), format_mac(&link.mac));
        }
        if link.promisc != self.promisc {
            return mismatch(
                "promiscuous mode",
                self.promisc.to_string(),
                link.promisc.to_string(),
            );
        }
        if let Some(mtu) = self.mtu
            && link.mtu != mtu
        {
            return mismatch("MTU", mtu.to_string(), link.mtu.to_string());
        }
        if let Some(a) = self.allmulti
            && link.allmulti != a
        {
            return mismatch(
                "all-multicast mode",
                a.to_string(),
                link.allmulti.to_string(),
            );
        }
        if let Some(q) = self.txqlen
            && link.txqlen != q
        {
            return mismatch(
                "transmit queue length",
                q.to_string(),
                link.txqlen.to_string(),
            );
        }
        Ok(())
    }

    async fn del(args: &CmdArgs, conf: &NetConf) -> Result<()> {
        let data_dir = conf
            .raw
            .get("dataDir")
            .and_then(Value::as_str)
            .filter(|d| Path::new(d).is_absolute())
            .unwrap_or(DEFAULT_DATA_DIR);
        let path = backup_file(Path::new(data_dir), &args.container_id, &args.ifname);
        let mut backup: Backup = match crate::files::read_bounded(&path, 64 << 10) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        if let Some((bad, _)) = backup.sysctl.iter().find(|(p, _)| !is_net_sysctl(p)) {
            tracing::warn!(
                "tuning: {} names {bad:?}, which is no network sysctl: its sysctls are not restored",
                path.display()
            );
            backup.sysctl.clear();
        }
        if let Some(netns) = args.netns.as_deref().filter(|p| p.exists()) {
            let pod = PodNs::open(args)?;
            let nl = pod.netlink().await?;
            if nl.link(&args.ifname).await?.is_some() || !backup.sysctl.is_empty() {
                restore(&pod, &nl, &args.ifname, &backup)
                    .await
                    .map_err(|e| e.context(format!("tuning: restoring in {}", netns.display())))?;
            }
        }
        // Restored, or nothing left to restore it on: the saved values are done with.
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    fn gc(_: &CmdArgs, _: &NetConf) -> Result<()> {
        Ok(())
    }
}

impl TuningConf {
    /// Whether the reference would save the link's values (it saves them for the link fields only).
    fn saves(&self) -> bool {
        self.mac.is_some()
            || self.mtu.is_some()
            || self.promisc
            || self.allmulti.is_some()
            || self.txqlen.is_some()
    }

    fn backup_path(&self, args: &CmdArgs) -> PathBuf {
        backup_file(&self.data_dir, &args.container_id, &args.ifname)
    }

    /// The link's values of the fields this tuning sets, as they are, into `backup`.
    fn link_before(&self, link: &Link, backup: &mut Backup) {
        if self.mac.is_some() {
            backup.mac = format_mac(&link.mac);
        }
        if self.promisc {
            backup.promisc = Some(link.promisc);
        }
        if self.mtu.is_some() {
            backup.mtu = link.mtu;
        }
        if self.allmulti.is_some() {
            backup.allmulti = Some(link.allmulti);
        }
        if self.txqlen.is_some() {
            backup.txqlen = Some(link.txqlen);
        }
    }

    /// Set the link attributes (their values before are the caller's to have read).
    async fn apply_link(&self, nl: &Netlink, link: &Link) -> Result<()> {
        if let Some(mac) = self.mac {
            nl.set_mac(link.index, &mac).await?;
        }
        if self.promisc {
            nl.set_promisc(link.index, true).await?;
        }
        if let Some(mtu) = self.mtu {
            nl.set_mtu(link.index, mtu).await?;
        }
        if let Some(a) = self.allmulti {
            nl.set_allmulti(link.index, a).await?;
        }
        if let Some(q) = self.txqlen {
            nl.set_txqlen(link.index, q).await?;
        }
        Ok(())
    }
}

fn backup_file(dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    dir.join(format!("{container_id}_{ifname}.json"))
}

fn write_backup(path: &Path, b: &Backup) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    crate::files::ensure_real_dir(dir)?;
    let bytes = serde_json::to_vec_pretty(b).map_err(|e| Error::Internal(e.to_string()))?;
    crate::files::replace(path, &bytes, 0o600, false)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The current values of sysctls in the pod, as `(path, value)`.
async fn read_sysctls(pod: &PodNs, list: &[&Sysctl]) -> Result<Vec<(String, String)>> {
    let paths: Vec<String> = list.iter().map(|s| s.path.clone()).collect();
    pod.worker
        .run(move || -> Result<Vec<(String, String)>> {
            paths
                .into_iter()
                .map(|p| {
                    let v = super::iface::read_sysctl(&p)
                        .map_err(|e| Error::io(format!("tuning: reading {p}"), e))?;
                    Ok((p, v))
                })
                .collect()
        })
        .await?
}

/// Whether a path read back from a saved-values file is a network sysctl (the file lives in a
/// folder a configuration names: what it says is not trusted to point anywhere else).
fn is_net_sysctl(p: &str) -> bool {
    let parts: Vec<&str> = p.split('/').collect();
    parts.len() >= 2
        && parts[0] == "net"
        && parts
            .iter()
            .all(|c| !c.is_empty() && *c != "." && *c != "..")
}

/// Write sysctls in the pod (their values before are the caller's to have read).
async fn write_sysctls(pod: &PodNs, list: &[&Sysctl]) -> Result<()> {
    let writes: Vec<(String, String)> = list
        .iter()
        .map(|s| (s.path.clone(), s.value.clone()))
        .collect();
    pod.worker
        .run(move || -> Result<()> {
            for (p, v) in &writes {
                super::iface::write_sysctl(p, v)?;
            }
            Ok(())
        })
        .await?
}

/// Put the saved values back: the link's (if it is there), then the sysctls, newest first. Every
/// step runs; the errors are collected.
async fn restore(pod: &PodNs, nl: &Netlink, ifname: &str, b: &Backup) -> Result<()> {
    let mut errors = Vec::new();
    if let Some(link) = nl.link(ifname).await? {
        let i = link.index;
        if b.mtu != 0
            && let Err(e) = nl.set_mtu(i, b.mtu).await
        {
            errors.push(e);
        }
        if !b.mac.is_empty()
            && let Ok(mac) = parse_mac(&b.mac)
            && let Err(e) = nl.set_mac(i, &mac).await
        {
            errors.push(e);
        }
        if let Some(p) = b.promisc
            && let Err(e) = nl.set_promisc(i, p).await
        {
            errors.push(e);
        }
        if let Some(a) = b.allmulti
            && let Err(e) = nl.set_allmulti(i, a).await
        {
            errors.push(e);
        }
        if let Some(q) = b.txqlen
            && let Err(e) = nl.set_txqlen(i, q).await
        {
            errors.push(e);
        }
    }
    let sysctls = b.sysctl.clone();
    let failed = pod
        .worker
        .run(move || -> Vec<Error> {
            sysctls
                .iter()
                .rev()
                // Only network sysctls; gone with its interface: nothing to put back.
                .filter(|(p, _)| is_net_sysctl(p) && Path::new(&format!("/proc/sys/{p}")).exists())
                .filter_map(|(p, v)| {
                    std::fs::write(format!("/proc/sys/{p}"), v.as_bytes())
                        .err()
                        .map(|e| Error::io(format!("tuning: restoring {p}"), e))
                })
                .collect()
        })
        .await?;
    errors.extend(failed);
    Error::from_list(errors)
}

/// The tunings of a pod's interfaces that their drivers apply before bringing them up.
#[derive(Default)]
pub struct Early {
    by_ifname: Vec<(String, Rc<TuningConf>, Option<Backup>)>,
}

impl Early {
    /// A tuning for `ifname`, chained right after the driver that makes it.
    pub fn register(&mut self, ifname: &str, t: TuningConf) {
        self.by_ifname.retain(|(n, _, _)| n != ifname);
        self.by_ifname.push((ifname.to_string(), Rc::new(t), None));
    }

    fn pending(&self, ifname: &str) -> Option<Rc<TuningConf>> {
        self.by_ifname
            .iter()
            .find(|(n, _, b)| n == ifname && b.is_none())
            .map(|(_, t, _)| t.clone())
    }

    fn applied(&mut self, ifname: &str, b: Backup) {
        if let Some(e) = self.by_ifname.iter_mut().find(|(n, _, _)| n == ifname) {
            e.2 = Some(b);
        }
    }

    /// What the driver applied early for `ifname` (then forgotten), if it did.
    fn take_applied(&mut self, ifname: &str) -> Option<Backup> {
        let i = self
            .by_ifname
            .iter()
            .position(|(n, _, b)| n == ifname && b.is_some())?;
        self.by_ifname.remove(i).2
    }
}

/// Called by a driver between making `ifname` and bringing it up: the tuning chained after it sets the
/// interface's own sysctls and link attributes now. Nothing to do without one.
pub async fn before_up(pod: &PodNs, ifname: &str) -> Result<()> {
    let Some(t) = pod.tuned.borrow().pending(ifname) else {
        return Ok(());
    };
    let nl = pod.netlink().await?;
    let link = nl
        .link(ifname)
        .await?
        .ok_or_else(|| Error::Internal(format!("{ifname} is not in the pod")))?;
    let mut backup = Backup::default();
    let own: Vec<&Sysctl> = t.sysctls.iter().filter(|s| s.of_interface).collect();
    backup.sysctl = read_sysctls(pod, &own).await?;
    t.link_before(&link, &mut backup);
    write_sysctls(pod, &own).await?;
    t.apply_link(&nl, &link).await?;
    tracing::debug!("tuning applied to {ifname} before it came up");
    pod.tuned.borrow_mut().applied(ifname, backup);
    Ok(())
}

/// The slot in [`PodNs`].
pub type EarlySlot = RefCell<Early>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_values_name_network_sysctls_only() {
        assert!(is_net_sysctl("net/ipv4/conf/all/arp_filter"));
        for bad in [
            "kernel/core_pattern",
            "net/../../etc/cron.d/x",
            "net//x",
            "net",
            "/net/ipv4/x",
            "net/./x",
        ] {
            assert!(!is_net_sysctl(bad), "{bad}");
        }
    }

    #[test]
    fn sysctl_names_stay_under_net() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.IFNAME.rp_filter", "net1").unwrap(),
            "net/ipv4/conf/net1/rp_filter"
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter", "x").unwrap(),
            "net/ipv4/conf/eth0/100/rp_filter",
            "dots are separators, as in the reference"
        );
        for bad in [
            "kernel.pid_max",
            "net.ipv4..x",
            "net/../kernel/pid_max",
            "net.ipv4.conf.IFNAME.",
            "",
            "net",
            "net.ipv4 .x",
            "/net/ipv4/x",
        ] {
            assert!(sysctl_path(bad, "net1").is_err(), "{bad:?}");
        }
    }
}
