//! The durable per-attachment record in `cacheDir`: what attache attached to a pod, with which
//! configuration and which result. It is written **before** the first side effect of an ADD, updated as
//! each attachment completes, and removed only after a DEL that fully succeeded — so a DEL never needs the
//! configuration that was current at ADD time, an API server, or the netns.
//!
//! Layout: `<cacheDir>/<containerID>/<ifname>.json`, written atomically (temporary file + rename).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

pub const RECORD_KIND: &str = "attacheRecordV1";

/// One attachment: a network set up as one interface of the pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    /// The network's name (for Kubernetes networks, `namespace/name`).
    pub network: String,
    pub ifname: String,
    /// How it is run: `chain` for a conf/conflist (each plugin native or exec'd).
    pub driver: String,
    /// The configuration it was set up with (a conflist document for `chain`).
    pub conf: Value,
    /// `runtimeConfig` it was given.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub runtime_config: Map<String, Value>,
    /// `CNI_ARGS` it was given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cni_args: String,
    /// Gateways this attachment's interface takes the pod's default route(s) to (`default-route`).
    #[serde(
        default,
        rename = "defaultRoute",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub default_route: Vec<std::net::IpAddr>,
    /// The device-plugin device it was given (`resourceName` definitions), and its Device Information.
    #[serde(default, rename = "deviceID", skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(
        default,
        rename = "deviceInfo",
        skip_serializing_if = "Option::is_none"
    )]
    pub device_info: Option<Value>,
    /// Its ADD result (1.1.0 shape), once ADD succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub kind: String,
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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

impl PodRecord {
    pub fn new(container_id: &str, ifname: &str, netns: Option<&Path>) -> PodRecord {
        PodRecord {
            kind: RECORD_KIND.into(),
            container_id: container_id.into(),
            ifname: ifname.into(),
            netns: netns.map(Path::to_path_buf),
            pod: None,
            complete: false,
            attachments: Vec::new(),
        }
    }
}

/// The folder of records.
#[derive(Clone, Debug)]
pub struct RecordStore {
    dir: PathBuf,
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

    /// Load a record; `None` if there is none. An unreadable record is an error, not silently ignored.
    pub fn load(&self, container_id: &str, ifname: &str) -> Result<Option<PodRecord>> {
        let p = self.path(container_id, ifname);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading record {}", p.display()), e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Decode {
                what: format!("record {}", p.display()),
                source,
            })
    }

    /// Write a record atomically: a reader sees the old or the new one, never half of one.
    pub fn save(&self, rec: &PodRecord) -> Result<()> {
        let p = self.path(&rec.container_id, &rec.ifname);
        let dir = p.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let tmp = dir.join(format!(".{}.tmp", rec.ifname));
        let bytes = serde_json::to_vec_pretty(rec).map_err(|e| Error::Internal(e.to_string()))?;
        write_tmp(&tmp, &bytes).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &p).map_err(|e| Error::io(format!("renaming {}", p.display()), e))
    }

    /// Remove a record (and its container folder once empty). Already gone is success.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<()> {
        let p = self.path(container_id, ifname);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", p.display()), e)),
        }
        if let Some(dir) = p.parent() {
            let _ = std::fs::remove_dir(dir); // fails while other interfaces' records remain: fine
        }
        Ok(())
    }

    /// Every record in the store (for GC). Unreadable entries are skipped with a warning.
    pub fn list(&self) -> Vec<PodRecord> {
        let mut out = Vec::new();
        let Ok(containers) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for c in containers.flatten() {
            let Ok(files) = std::fs::read_dir(c.path()) else {
                continue;
            };
            for f in files.flatten() {
                let p = f.path();
                if p.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                match std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                {
                    Some(r) => out.push(r),
                    None => tracing::warn!(path = %p.display(), "skipping unreadable record"),
                }
            }
        }
        out
    }
}

/// Write the temporary file of an atomic replace. No fsync: the rename makes the record atomic against
/// attache dying at any point; a power loss takes every network namespace with it anyway (and the
/// reference IPAM files it sits beside are not synced either). Syncing cost ~1 ms per save here.
fn write_tmp(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn save_load_list_remove() {
        let d = std::env::temp_dir().join(format!("attache-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let store = RecordStore::new(&d);
        assert_eq!(store.load("c1", "eth0").unwrap(), None);
        let mut r = PodRecord::new("c1", "eth0", Some(Path::new("/run/netns/p")));
        r.attachments.push(AttachmentRecord {
            network: "n".into(),
            ifname: "eth0".into(),
            driver: "chain".into(),
            conf: json!({"name":"n","plugins":[]}),
            runtime_config: Map::new(),
            cni_args: String::new(),
            default_route: vec![],
            device_id: None,
            device_info: None,
            result: None,
        });
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
        std::fs::remove_dir_all(&d).unwrap();
    }
}
