//! The durable per-attachment record in `cacheDir`: what attache attached to a pod, with which
//! configuration and which result. It is written **before** the first side effect of an ADD (naming every
//! attachment planned), updated when an attachment with an exec'd plugin completes (its DEL needs the
//! result as prevResult) and when the ADD completes, and removed only after a DEL that fully succeeded — so
//! a DEL never needs the configuration that was current at ADD time, an API server, or the netns.
//!
//! Layout: `<cacheDir>/<containerID>/<ifname>.json`, written atomically (temporary file + rename).
//!
//! A DEL that finished leaves a tombstone, `<cacheDir>/.deleted/<containerID>`: one line per interface
//! whose DEL is done. The runtime's later DELs of it (the kubelet and containerd send 4-5 per pod) then
//! have nothing to do and make no API call. An ADD of the container ID removes it; GC removes those of
//! containers the runtime no longer lists, and any DEL that writes one removes those older than
//! [`TOMBSTONE_AGE`] (at most once per [`TOMBSTONE_SWEEP`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::attach::NativeType;
use crate::cni::skel::CniArgs;
use crate::cni::spec::{CniResult, Version};
use crate::engine::chain::NetworkList;
use crate::error::{Error, Result};
use crate::files::{ensure_real_dir, pid_alive, read_bounded, replace, write_new};
use crate::k8s::PodRef;

pub const RECORD_KIND: &str = "attacheRecordV1";

/// Whether a JSON document is whole and is no attache record (an object of another `kind`, or none).
fn not_a_record(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Kind {
        kind: Option<Value>,
    }
    serde_json::from_slice::<Kind>(bytes)
        .is_ok_and(|k| k.kind.as_ref().and_then(Value::as_str) != Some(RECORD_KIND))
}

/// One attachment: a network set up as one interface of the pod.
///
/// On disk it reads as attache has always written it ([`OnDisk`]): `"driver": "chain"` and the network
/// list as a conflist document, so that a record written by this version is read by the one before (a
/// rolled-back DaemonSet still tears down its pods).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "OnDisk", try_from = "OnDisk")]
pub struct AttachmentRecord {
    /// The network's name (for Kubernetes networks, `namespace/name`).
    pub network: String,
    pub ifname: String,
    /// The network it was set up with: a chain, each plugin native or exec'd.
    pub conf: NetworkList,
    /// `runtimeConfig` it was given.
    pub runtime_config: Map<String, Value>,
    /// `CNI_ARGS` it was given.
    pub cni_args: CniArgs,
    /// The link group its native plugins put the pod interface in (the pod's, shared by all its native
    /// attachments, which DEL deletes together); `None` when all its plugins are exec'd.
    pub link_group: Option<u32>,
    /// Gateways this attachment's interface takes the pod's default route(s) to (`default-route`).
    pub default_route: Vec<std::net::IpAddr>,
    /// Whether its interface is routed by source (`podRouting` / `attache.routing`: `"source"`).
    pub source_routing: bool,
    /// The device-plugin device it was given (`resourceName` definitions), and its Device Information.
    pub device_id: Option<String>,
    pub device_info: Option<Value>,
    /// The node interfaces its plugins name, as resolved at ADD (DEL and CHECK never resolve again).
    pub nics: Vec<crate::attach::nic::Resolved>,
    /// Its ADD result, once ADD succeeded (written in the 1.1.0 shape).
    pub result: Option<CniResult>,
}

impl AttachmentRecord {
    /// An attachment of `conf` as `ifname`, with nothing given to it yet and no result.
    pub fn new(network: &str, ifname: &str, conf: NetworkList) -> AttachmentRecord {
        AttachmentRecord {
            network: network.into(),
            ifname: ifname.into(),
            conf,
            runtime_config: Map::new(),
            cni_args: CniArgs::default(),
            link_group: None,
            default_route: vec![],
            source_routing: false,
            device_id: None,
            device_info: None,
            nics: Vec::new(),
            result: None,
        }
    }

    /// Whether every plugin of its chain runs natively.
    pub fn all_native(&self) -> bool {
        (0..self.conf.plugins.len()).all(|i| NativeType::of(self.conf.plugin_type(i)).is_some())
    }

    /// Whether every plugin of its chain is a native driver that makes the interface: with the pod's
    /// interfaces gone, nothing of it is left in the pod (a chained sbr's rules, a tuning's sysctls are).
    pub fn only_native_links(&self) -> bool {
        (0..self.conf.plugins.len())
            .all(|i| NativeType::of(self.conf.plugin_type(i)).is_some_and(NativeType::deletes_link))
    }
}

/// The only driver there is: a conf or conflist.
const CHAIN: &str = "chain";

/// An [`AttachmentRecord`] as it is written.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OnDisk {
    /// The network's name (for Kubernetes networks, `namespace/name`).
    network: String,
    ifname: String,
    /// How it is run: `chain` ([`CHAIN`]), the only driver.
    driver: String,
    /// The configuration it was set up with (a conflist document for `chain`).
    conf: Value,
    /// `runtimeConfig` it was given.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    runtime_config: Map<String, Value>,
    /// `CNI_ARGS` it was given.
    #[serde(default, skip_serializing_if = "CniArgs::is_empty")]
    cni_args: CniArgs,
    /// The link group its native plugins put the pod interface in (the pod's, shared by all its native
    /// attachments, which DEL deletes together); `None` when all its plugins are exec'd.
    #[serde(default, rename = "linkGroup", skip_serializing_if = "Option::is_none")]
    link_group: Option<u32>,
    /// Gateways this attachment's interface takes the pod's default route(s) to (`default-route`).
    #[serde(
        default,
        rename = "defaultRoute",
        skip_serializing_if = "Vec::is_empty"
    )]
    default_route: Vec<std::net::IpAddr>,
    /// Whether its interface is routed by source.
    #[serde(
        default,
        rename = "sourceRouting",
        skip_serializing_if = "std::ops::Not::not"
    )]
    source_routing: bool,
    /// The device-plugin device it was given (`resourceName` definitions), and its Device Information.
    #[serde(default, rename = "deviceID", skip_serializing_if = "Option::is_none")]
    device_id: Option<String>,
    #[serde(
        default,
        rename = "deviceInfo",
        skip_serializing_if = "Option::is_none"
    )]
    device_info: Option<Value>,
    /// The node interfaces its plugins name, as resolved at ADD.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    nics: Vec<crate::attach::nic::Resolved>,
    /// Its ADD result, once ADD succeeded (written in the 1.1.0 shape).
    #[serde(default, with = "result_v1_1", skip_serializing_if = "Option::is_none")]
    result: Option<CniResult>,
}

impl From<AttachmentRecord> for OnDisk {
    fn from(a: AttachmentRecord) -> OnDisk {
        OnDisk {
            network: a.network,
            ifname: a.ifname,
            driver: CHAIN.into(),
            conf: a.conf.to_value(),
            runtime_config: a.runtime_config,
            cni_args: a.cni_args,
            link_group: a.link_group,
            default_route: a.default_route,
            source_routing: a.source_routing,
            device_id: a.device_id,
            device_info: a.device_info,
            nics: a.nics,
            result: a.result,
        }
    }
}

impl TryFrom<OnDisk> for AttachmentRecord {
    type Error = Error;

    fn try_from(d: OnDisk) -> Result<AttachmentRecord> {
        if d.driver != CHAIN {
            return Err(Error::config(format!(
                "attachment {} has driver {:?}: this version knows only {CHAIN:?}",
                d.ifname, d.driver
            )));
        }
        Ok(AttachmentRecord {
            conf: NetworkList::from_value(&d.conf, &Version::V1_1_0.to_string())
                .map_err(|e| e.context(format!("attachment {}", d.ifname)))?,
            network: d.network,
            ifname: d.ifname,
            runtime_config: d.runtime_config,
            cni_args: d.cni_args,
            link_group: d.link_group,
            default_route: d.default_route,
            source_routing: d.source_routing,
            device_id: d.device_id,
            device_info: d.device_info,
            nics: d.nics,
            result: d.result,
        })
    }
}

/// A recorded result is the 1.1.0 document a plugin would print.
mod result_v1_1 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    use crate::cni::spec::{CniResult, Version};

    pub fn serialize<S: Serializer>(r: &Option<CniResult>, s: S) -> Result<S::Ok, S::Error> {
        r.as_ref().map(|r| r.to_value(Version::V1_1_0)).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CniResult>, D::Error> {
        Option::<Value>::deserialize(d)?
            .map(|v| CniResult::from_value(&v, Version::V1_1_0))
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub kind: String,
    /// The name of the attache network that made it (the meta configuration's `name`): GC of one
    /// network touches only its own records. Empty in records written before attache kept it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// The Kubernetes pod, when the runtime named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// True once every attachment succeeded and ADD returned.
    pub complete: bool,
    pub attachments: Vec<AttachmentRecord>,
    /// What source routing set in the pod beyond its attachments (`podRouting: "source"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<super::routing::PodRouting>,
}

impl PodRecord {
    pub fn new(container_id: &str, ifname: &str, netns: Option<&Path>) -> PodRecord {
        PodRecord {
            kind: RECORD_KIND.into(),
            network: String::new(),
            container_id: container_id.into(),
            ifname: ifname.into(),
            netns: netns.map(Path::to_path_buf),
            pod: None,
            complete: false,
            attachments: Vec::new(),
            routing: None,
        }
    }
}

/// One record file as found in the store.
#[derive(Debug)]
pub struct RecordEntry {
    pub path: PathBuf,
    /// The container folder it is in.
    pub container_id: String,
    pub record: Result<PodRecord>,
}

/// The folder of records.
#[derive(Clone, Debug)]
pub struct RecordStore {
    dir: PathBuf,
}

/// The largest record read back (one with 64 attachments and their results is well under 1 MiB).
pub const MAX_RECORD: u64 = 4 << 20;

/// A temporary of `ifname`'s record, and the pid that wrote it (`None`: an old-style name).
fn temp_owner(file_name: &str, ifname: Option<&str>) -> Option<Option<i32>> {
    let rest = file_name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (name, pid) = match rest.split_once('.') {
        Some((n, tail)) => (n, tail.split('.').next().and_then(|p| p.parse().ok())),
        None => (rest, None),
    };
    if ifname.is_some_and(|i| i != name) {
        return None;
    }
    Some(pid)
}

impl RecordStore {
    pub fn new(dir: impl Into<PathBuf>) -> RecordStore {
        RecordStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(container_id).join(format!("{ifname}.json"))
    }

    /// Load a record; `None` if there is none. An unreadable record (truncated, not a file, too large)
    /// is an error, not silently ignored. Symlinks are not followed.
    pub fn load(&self, container_id: &str, ifname: &str) -> Result<Option<PodRecord>> {
        let p = self.path(container_id, ifname);
        let bytes = match read_bounded(&p, MAX_RECORD) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading record {}", p.display()), e)),
        };
        let rec: PodRecord = serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
            what: format!("record {}", p.display()),
            source,
        })?;
        // A file of another kind (or a future format) is not a record to act on: unreadable, so DEL
        // re-plans instead of tearing down from what it misreads.
        if rec.kind != RECORD_KIND {
            return Err(Error::io(
                format!("reading record {}", p.display()),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("kind {:?} is not {RECORD_KIND:?}", rec.kind),
                ),
            ));
        }
        Ok(Some(rec))
    }

    /// Write a record atomically: a reader sees the old or the new one, never half of one. The
    /// temporary is unique to this process and created exclusively (no symlink is followed, no other
    /// writer's file reused), mode 0600. No fsync: the rename makes the record atomic against attache
    /// dying at any point; a power loss takes every network namespace with it anyway (and the reference
    /// IPAM files it sits beside are not synced either). Syncing cost ~1 ms per save here.
    pub fn save(&self, rec: &PodRecord) -> Result<()> {
        crate::fail::point("record.save")?;
        let p = self.path(&rec.container_id, &rec.ifname);
        let dir = p.parent().unwrap_or(&self.dir);
        ensure_real_dir(dir)?;
        let bytes = serde_json::to_vec_pretty(rec).map_err(|e| Error::Internal(e.to_string()))?;
        // (Its temporary, `.<ifname>.<pid>.<n>.tmp`, is what remove_temporaries knows.)
        let mut saved = replace(&p, &bytes, 0o600, false);
        // A directory planted where the record goes makes every rename fail: it is not ours.
        if saved.is_err() && std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::remove_dir_all(&p);
            saved = replace(&p, &bytes, 0o600, false);
        }
        saved.map_err(|e| Error::io(format!("writing record {}", p.display()), e))
    }

    /// Remove a record, its leftover temporaries, and its container folder once empty. Already gone
    /// is success; whatever sits where the record should be (a directory, a symlink) goes too, so that
    /// nothing there can make DEL fail forever.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<()> {
        crate::fail::point("record.remove")?;
        let p = self.path(container_id, ifname);
        let r = match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", p.display()), e)),
        }
        self.remove_temporaries(container_id, Some(ifname));
        if let Some(dir) = p.parent() {
            let _ = std::fs::remove_dir(dir); // fails while other interfaces' records remain: fine
        }
        Ok(())
    }

    /// Remove the temporaries a killed writer left in a container's folder (of one interface's
    /// record, or all), except those of a writer that is still running.
    pub fn remove_temporaries(&self, container_id: &str, ifname: Option<&str>) -> Vec<PathBuf> {
        let dir = self.dir.join(container_id);
        let mut removed = Vec::new();
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return removed;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(owner) = name.to_str().and_then(|n| temp_owner(n, ifname)) else {
                continue;
            };
            if owner.is_some_and(pid_alive) {
                continue;
            }
            if std::fs::remove_file(e.path()).is_ok() {
                removed.push(e.path());
            }
        }
        removed
    }

    /// Every record in the store (for GC). Unreadable entries are skipped with a warning; symlinks
    /// are not followed.
    pub fn list(&self) -> Vec<PodRecord> {
        self.entries(None)
            .into_iter()
            .filter_map(|e| match e.record {
                Ok(r) => Some(r),
                Err(err) => {
                    tracing::warn!(path = %e.path.display(), "skipping unreadable record: {err}");
                    None
                }
            })
            .collect()
    }

    /// Every record file in the store (or of one container), each with what reading it gave — the
    /// unreadable ones too, with the reason (for `attache inspect`). Temporaries are not records;
    /// symlinks are not followed.
    pub fn entries(&self, container_id: Option<&str>) -> Vec<RecordEntry> {
        let mut out = Vec::new();
        let containers: Vec<PathBuf> = match container_id {
            // No record can sit under a name that is no container ID (nor be reached through one).
            Some(id) if crate::cni::conf::check_container_id(id).is_err() => return out,
            Some(id) => vec![self.dir.join(id)],
            None => match std::fs::read_dir(&self.dir) {
                Ok(rd) => rd
                    .flatten()
                    .filter(|c| c.file_type().is_ok_and(|t| t.is_dir()))
                    .filter(|c| !c.file_name().as_encoded_bytes().starts_with(b"."))
                    .map(|c| c.path())
                    .collect(),
                Err(_) => return out,
            },
        };
        for c in containers {
            if !std::fs::symlink_metadata(&c).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let Ok(files) = std::fs::read_dir(&c) else {
                continue;
            };
            let container_id = c
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for f in files.flatten() {
                let p = f.path();
                if p.extension().is_none_or(|e| e != "json")
                    || p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                {
                    continue;
                }
                let bytes = read_bounded(&p, MAX_RECORD);
                // Another JSON document beside the records is none of attache's records: attache-ipam's
                // default dataDir (`<cacheDir>/ipam`, with its reclaim.json) sits in the default
                // cacheDir. A document that does not parse at all may be a record cut short: unreadable.
                if let Ok(b) = &bytes
                    && not_a_record(b)
                {
                    continue;
                }
                let record = bytes
                    .map_err(|e| Error::io(format!("reading record {}", p.display()), e))
                    .and_then(|b| {
                        serde_json::from_slice(&b).map_err(|source| Error::Decode {
                            what: format!("record {}", p.display()),
                            source,
                        })
                    });
                out.push(RecordEntry {
                    path: p,
                    container_id: container_id.clone(),
                    record,
                });
            }
        }
        out
    }

    /// The container folders in the store (for GC's sweep of temporaries).
    pub fn containers(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| !n.starts_with('.')) // the tombstones: no container ID starts so
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The folder of tombstones in cacheDir: a dot name, which no container ID has.
pub const TOMBSTONES: &str = ".deleted";
/// How long a tombstone answers the DELs that follow the one that finished.
pub const TOMBSTONE_AGE: std::time::Duration = std::time::Duration::from_secs(3600);
/// How often a DEL looks for tombstones older than [`TOMBSTONE_AGE`].
pub const TOMBSTONE_SWEEP: std::time::Duration = std::time::Duration::from_secs(600);
/// The stamp of the last sweep, in the tombstones' folder.
const SWEPT: &str = ".swept";
/// The largest tombstone read: a line per interface of one container.
const MAX_TOMBSTONE: u64 = 64 << 10;

impl RecordStore {
    fn tombstone(&self, container_id: &str) -> PathBuf {
        self.dir.join(TOMBSTONES).join(container_id)
    }

    /// Whether a DEL of `(container_id, ifname)` finished since the container's last ADD.
    pub fn is_buried(&self, container_id: &str, ifname: &str) -> bool {
        read_bounded(&self.tombstone(container_id), MAX_TOMBSTONE)
            .is_ok_and(|b| b.split(|c| *c == b'\n').any(|l| l == ifname.as_bytes()))
    }

    /// Note that the DEL of `(container_id, ifname)` finished; now and then, forget old tombstones.
    pub fn bury(&self, container_id: &str, ifname: &str) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.dir.join(TOMBSTONES);
        ensure_real_dir(&dir)?;
        let p = self.tombstone(container_id);
        // One short append is one write: concurrent DELs of a container's interfaces do not mix lines.
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .mode(0o600)
            .open(&p)
            .and_then(|mut f| f.write_all(format!("{ifname}\n").as_bytes()))
            .map_err(|e| Error::io(format!("writing the tombstone {}", p.display()), e))?;
        let swept = dir.join(SWEPT);
        let due = std::fs::symlink_metadata(&swept)
            .and_then(|m| m.modified())
            .map_or(true, |t| t.elapsed().map_or(true, |e| e >= TOMBSTONE_SWEEP));
        if due {
            let _ = std::fs::remove_file(&swept);
            let _ = write_new(&swept, b"", 0o600);
            let n = self.sweep_tombstones(|_, age| age >= TOMBSTONE_AGE);
            if n > 0 {
                tracing::debug!("forgot {n} tombstone(s) older than {TOMBSTONE_AGE:?}");
            }
        }
        Ok(())
    }

    /// ADD: the container makes state again, and its next DEL must tear it down.
    pub fn unbury(&self, container_id: &str) -> Result<()> {
        let p = self.tombstone(container_id);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("removing the tombstone {}", p.display()),
                e,
            )),
        }
    }

    /// Remove the tombstones `gone(containerID, age)` picks; how many went.
    pub fn sweep_tombstones(&self, gone: impl Fn(&str, std::time::Duration) -> bool) -> usize {
        let Ok(rd) = std::fs::read_dir(self.dir.join(TOMBSTONES)) else {
            return 0;
        };
        rd.flatten()
            .filter(|e| e.file_name() != SWEPT)
            .filter(|e| {
                let age = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                e.file_name().to_str().is_some_and(|id| gone(id, age))
            })
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_attachment_is_written_as_earlier_versions_read_it() {
        let doc = json!({"network": "team/blue", "ifname": "net1", "driver": "chain",
            "conf": {"cniVersion": "1.0.0", "name": "blue",
                     "plugins": [{"type": "bridge", "bridge": "br0"}, {"type": "portmap"}]},
            "linkGroup": 7});
        let a: AttachmentRecord = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(a.conf.name, "blue");
        assert_eq!(a.conf.plugin_type(1), "portmap");
        assert!(!a.all_native(), "portmap is exec'd");
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            doc,
            "the same document back"
        );
        let mut other = doc.clone();
        other["driver"] = json!("vm");
        let e = serde_json::from_value::<AttachmentRecord>(other).unwrap_err();
        assert!(e.to_string().contains("knows only \"chain\""), "{e}");
        let mut broken = doc;
        broken["conf"] = json!({"cniVersion": "1.0.0", "name": "blue", "plugins": []});
        assert!(serde_json::from_value::<AttachmentRecord>(broken).is_err());
    }

    #[test]
    fn attache_ipams_files_in_the_cache_dir_are_no_records() {
        let d = crate::testutil::tempdir("records-ipam");
        let store = RecordStore::new(&d);
        let mut r = PodRecord::new("c1", "eth0", None);
        r.complete = true;
        store.save(&r).unwrap();
        // attache-ipam's default dataDir is <cacheDir>/ipam, with a JSON file at its top.
        std::fs::create_dir_all(d.join("ipam/default")).unwrap();
        std::fs::write(d.join("ipam/reclaim.json"), r#"{"worker-2": 1700000000}"#).unwrap();
        std::fs::write(d.join("ipam/default/pool.json"), "[]").unwrap();
        // A record cut short is still an unreadable record (it may protect addresses).
        std::fs::create_dir_all(d.join("c2")).unwrap();
        std::fs::write(
            d.join("c2/eth0.json"),
            r#"{"kind": "attacheRecordV1", "cont"#,
        )
        .unwrap();
        let mut found: Vec<(String, bool)> = store
            .entries(None)
            .into_iter()
            .map(|e| (e.container_id, e.record.is_ok()))
            .collect();
        found.sort();
        assert_eq!(found, [("c1".into(), true), ("c2".into(), false)]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn save_load_list_remove() {
        let d = std::env::temp_dir().join(format!("attache-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let store = RecordStore::new(&d);
        assert_eq!(store.load("c1", "eth0").unwrap(), None);
        let mut r = PodRecord::new("c1", "eth0", Some(Path::new("/run/netns/p")));
        r.attachments.push(AttachmentRecord::new(
            "n",
            "eth0",
            NetworkList::from_value(
                &json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "ptp"}]}),
                "1.0.0",
            )
            .unwrap(),
        ));
        store.save(&r).unwrap();
        assert_eq!(store.load("c1", "eth0").unwrap().unwrap(), r);
        r.complete = true;
        store.save(&r).unwrap();
        assert!(store.load("c1", "eth0").unwrap().unwrap().complete);
        store.save(&PodRecord::new("c2", "eth0", None)).unwrap();
        assert_eq!(store.list().len(), 2);
        store.remove("c1", "eth0").unwrap();
        store.remove("c1", "eth0").unwrap();
        assert!(!d.join("c1").exists());
        assert_eq!(store.list().len(), 1);
        std::fs::write(d.join("c2").join("eth0.json"), "{").unwrap();
        assert_eq!(store.load("c2", "eth0").unwrap_err().cni_code(), 6);
        // JSON of another kind is not a record to act on.
        let mut other = serde_json::to_value(PodRecord::new("c2", "eth0", None)).unwrap();
        other["kind"] = json!("somethingElse");
        std::fs::write(d.join("c2").join("eth0.json"), other.to_string()).unwrap();
        assert_eq!(store.load("c2", "eth0").unwrap_err().cni_code(), 5);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn tombstones_answer_repeated_dels_until_an_add_gc_or_their_age() {
        let d = crate::testutil::tempdir("attache-tombstones");
        let store = RecordStore::new(&d);
        assert!(!store.is_buried("c1", "eth0"));
        store.bury("c1", "eth0").unwrap();
        store.bury("c1", "net9").unwrap();
        store.bury("c2", "eth0").unwrap();
        assert!(store.is_buried("c1", "eth0") && store.is_buried("c1", "net9"));
        assert!(!store.is_buried("c1", "eth"), "whole lines only");
        // Tombstones are no containers: GC's sweep and inspect never take them for records.
        assert!(store.containers().is_empty());
        assert!(store.entries(None).is_empty());
        // An ADD of the container makes state again.
        store.unbury("c1").unwrap();
        assert!(!store.is_buried("c1", "eth0"));
        store.unbury("c1").unwrap();
        // GC forgets what the runtime no longer lists; the age, the old ones.
        assert_eq!(store.sweep_tombstones(|id, _| id != "c2"), 0);
        assert_eq!(
            store.sweep_tombstones(|_, age| age >= std::time::Duration::from_secs(3600)),
            0
        );
        assert_eq!(store.sweep_tombstones(|id, _| id == "c2"), 1);
        assert!(!store.is_buried("c2", "eth0"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn temporaries_symlinks_and_directories() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let d = std::env::temp_dir().join(format!("attache-records-tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let store = RecordStore::new(&d);
        let rec = PodRecord::new("c1", "eth0", None);
        store.save(&rec).unwrap();
        let mode = std::fs::metadata(d.join("c1/eth0.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // What a killed ADD leaves: an old-style temporary, and one of a dead process.
        std::fs::write(d.join("c1/.eth0.tmp"), "{").unwrap();
        std::fs::write(d.join("c1/.eth0.999999999.0.tmp"), "{").unwrap();
        std::fs::write(d.join("c1/.net1.999999999.0.tmp"), "{").unwrap();
        let mine = format!(".eth0.{}.7.tmp", std::process::id());
        std::fs::write(d.join("c1").join(&mine), "{").unwrap();
        assert_eq!(store.list().len(), 1, "temporaries are not records");
        store.remove("c1", "eth0").unwrap();
        let mut left: Vec<String> = std::fs::read_dir(d.join("c1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec![mine, ".net1.999999999.0.tmp".to_string()]);
        // A symlink where a record goes is neither read through nor written through.
        let target = d.join("target");
        std::fs::write(&target, "precious").unwrap();
        symlink(&target, d.join("c1/eth0.json")).unwrap();
        assert!(store.load("c1", "eth0").is_err());
        store.save(&rec).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert!(store.load("c1", "eth0").unwrap().is_some());
        // A directory where a record goes does not make removal fail.
        store.remove("c1", "eth0").unwrap();
        std::fs::create_dir_all(d.join("c3/eth0.json/x")).unwrap();
        assert!(store.load("c3", "eth0").is_err());
        store.remove("c3", "eth0").unwrap();
        assert!(!d.join("c3").exists());
        // A container folder that is a symlink is refused.
        symlink(&target, d.join("c4")).unwrap();
        assert_eq!(
            store
                .save(&PodRecord::new("c4", "eth0", None))
                .unwrap_err()
                .cni_code(),
            5
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
