//! The node's mirror of NetworkAttachmentDefinitions (`nadMirror`): `attache agent` watches them and
//! keeps one file per definition, `<dir>/<namespace>/<name>.json` (the object as the API has it), so
//! that an ADD reads its definitions from the node's disk instead of asking the API server for each.
//!
//! Whether the mirror may be trusted is one file, `<dir>/live`: the agent rewrites it (the
//! resourceVersion it has seen) or touches it every [`TOUCH_EVERY`] while its watch runs, in the same
//! loop that applies the watch's events. The mirror is **live** while that file is at most
//! [`LIVE_FOR`] old: a definition changed or deleted in the API is never served from a live mirror
//! after the agent's watch has seen the change, and an agent that died, hangs or lost the API server
//! stops being trusted within [`LIVE_FOR`]. A live mirror without the name asks the API (the
//! definition may be seconds old); a mirror that is not live is not read, except when the API server
//! cannot answer: then a definition the node has seen is served for `nadMirrorMaxStale` after the
//! mirror was last live (see [`Mirror::get_stale`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::nad::Nad;
use crate::error::{Error, Result};

/// The liveness file in the mirror's folder (a dot-name: no namespace can be called that).
pub const LIVE: &str = ".live";
/// How often a running agent says so.
pub const TOUCH_EVERY: Duration = Duration::from_secs(2);
/// How old the liveness file may be for ADD to trust the mirror.
pub const LIVE_FOR: Duration = Duration::from_secs(10);
/// The default of `nadMirrorMaxStale`: how long after the mirror was last live it still serves a
/// definition when the API server cannot answer.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(24 * 3600);
/// The largest mirrored object read (the API server's own limit on an object is about 1.5 MiB).
const MAX_ENTRY: u64 = 2 << 20;

/// A namespace (DNS-1123 label) or a definition's name (subdomain): never a path of its own.
fn safe(s: &str, subdomain: bool) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s.starts_with('.')
        && !s.contains("..")
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (subdomain && b == b'.')
        })
}

/// The mirror with its age read once (see [`Mirror::snapshot`]).
#[derive(Debug)]
pub struct Snapshot {
    mirror: Mirror,
    age: Option<Duration>,
}

impl Snapshot {
    /// The definition, if the mirror is live.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Nad> {
        self.age
            .is_some_and(|a| a < LIVE_FOR)
            .then(|| self.mirror.read(namespace, name))?
    }

    /// The definition, if the mirror was live at most `max_stale` ago, with how long ago that was.
    pub fn get_stale(
        &self,
        namespace: &str,
        name: &str,
        max_stale: Duration,
    ) -> Option<(Nad, Duration)> {
        let age = self.age.filter(|a| *a < max_stale)?;
        self.mirror.read(namespace, name).map(|n| (n, age))
    }
}

/// The folder of the mirror.
#[derive(Clone, Debug)]
pub struct Mirror {
    dir: PathBuf,
}

impl Mirror {
    pub fn new(dir: &Path) -> Mirror {
        Mirror {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        (safe(namespace, false) && safe(name, true))
            .then(|| self.dir.join(namespace).join(format!("{name}.json")))
    }

    /// How long ago the agent last said the mirror is current (`None`: never, unreadable, or a stamp
    /// from the future — a clock stepped back — which proves nothing).
    pub fn age(&self) -> Option<Duration> {
        let m = std::fs::symlink_metadata(self.dir.join(LIVE))
            .ok()
            .filter(|m| m.is_file())?
            .modified()
            .ok()?;
        SystemTime::now().duration_since(m).ok()
    }

    pub fn is_live(&self) -> bool {
        self.age().is_some_and(|a| a < LIVE_FOR)
    }

    /// A mirrored definition, whether or not the mirror is live (`None`: not there, or unreadable —
    /// the caller asks the API).
    fn read(&self, namespace: &str, name: &str) -> Option<Nad> {
        let p = self.path(namespace, name)?;
        let bytes = crate::files::read_bounded(&p, MAX_ENTRY).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        Nad::from_object(&v).filter(|n| n.namespace == namespace && n.name == name)
    }

    /// The mirror as one ADD sees it: its liveness read once, for every definition the ADD looks up.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            mirror: self.clone(),
            age: self.age(),
        }
    }

    /// The resourceVersion the agent last recorded (to resume its watch from).
    pub fn resource_version(&self) -> Option<String> {
        let b = crate::files::read_bounded(&self.dir.join(LIVE), 4096).ok()?;
        let v: Value = serde_json::from_slice(&b).ok()?;
        v.get("resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    // The agent's side.

    /// Write one definition (the API's object), whole: a reader sees the old file or the new one.
    pub fn put(&self, obj: &Value) -> Result<()> {
        let Some(nad) = Nad::from_object(obj) else {
            return Ok(());
        };
        let Some(p) = self.path(&nad.namespace, &nad.name) else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(obj).map_err(|e| Error::Internal(e.to_string()))?;
        if std::fs::read(&p).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        let parent = p.parent().unwrap_or(&self.dir);
        crate::files::ensure_real_dir(parent)?;
        crate::files::replace(&p, &bytes, 0o600, false)
            .map_err(|e| Error::io(format!("writing {}", p.display()), e))
    }

    /// Whether the file at `namespace/name` is a mirrored definition of that very name (what the
    /// agent wrote): only those are ever removed.
    fn is_entry(&self, namespace: &str, name: &str) -> bool {
        self.read(namespace, name).is_some()
    }

    /// Remove one definition.
    pub fn remove(&self, namespace: &str, name: &str) -> Result<()> {
        let Some(p) = self.path(namespace, name) else {
            return Ok(());
        };
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", p.display()), e)),
        }
    }

    /// Make the mirror hold exactly `objs` (a complete list): each written, every other entry removed.
    pub fn replace_all(&self, objs: &[Value]) -> Result<()> {
        let mut keep = std::collections::BTreeSet::new();
        for o in objs {
            if let Some(n) = Nad::from_object(o) {
                self.put(o)?;
                keep.insert((n.namespace, n.name));
            }
        }
        let Ok(namespaces) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for ns in namespaces.flatten() {
            let ns_name = ns.file_name().to_string_lossy().into_owned();
            if !safe(&ns_name, false) || !ns.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let file = f.file_name().to_string_lossy().into_owned();
                // Only what the agent wrote goes: a file that is not a definition of its own name is
                // not the mirror's.
                if let Some(name) = file.strip_suffix(".json")
                    && !keep.contains(&(ns_name.clone(), name.to_string()))
                    && self.is_entry(&ns_name, name)
                {
                    self.remove(&ns_name, name)?;
                }
            }
            let _ = std::fs::remove_dir(ns.path()); // only if empty
        }
        Ok(())
    }

    /// Remove the whole mirror (uninstall): its entries, the liveness file, then the folder if nothing
    /// else is in it. A folder without the liveness file is not a mirror the agent made: left alone.
    pub fn clear(&self) -> Result<()> {
        if !std::fs::symlink_metadata(self.dir.join(LIVE)).is_ok_and(|m| m.is_file()) {
            return Ok(());
        }
        self.replace_all(&[])?;
        match std::fs::remove_file(self.dir.join(LIVE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!("removing {}", self.dir.join(LIVE).display()),
                    e,
                ));
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }

    /// Say that the mirror is current as of `resource_version`: the file is rewritten when the version
    /// changed, else only its time is renewed.
    pub fn touch(&self, resource_version: &str) -> Result<()> {
        let p = self.dir.join(LIVE);
        if self.resource_version().as_deref() == Some(resource_version) {
            let renewed = std::fs::File::options()
                .write(true)
                .open(&p)
                .and_then(|f| f.set_modified(SystemTime::now()));
            if renewed.is_ok() {
                return Ok(());
            }
        }
        crate::files::ensure_real_dir(&self.dir)?;
        let doc = serde_json::json!({"resourceVersion": resource_version});
        crate::files::replace(&p, doc.to_string().as_bytes(), 0o644, false)
            .map_err(|e| Error::io(format!("writing {}", p.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nad(ns: &str, name: &str, config: &str) -> Value {
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
               "metadata": {"name": name, "namespace": ns, "resourceVersion": "7"},
               "spec": {"config": config}})
    }

    #[test]
    fn served_only_while_live_and_stale_only_within_the_bound() {
        let d = crate::testutil::tempdir("mirror");
        let m = Mirror::new(&d.join("nads"));
        m.put(&nad("team", "blue", r#"{"type":"bridge"}"#)).unwrap();
        // Never said live: not served, not even stale.
        assert!(m.snapshot().get("team", "blue").is_none());
        assert!(
            m.snapshot()
                .get_stale("team", "blue", Duration::from_secs(60))
                .is_none()
        );
        m.touch("42").unwrap();
        assert_eq!(m.resource_version().as_deref(), Some("42"));
        let n = m.snapshot().get("team", "blue").unwrap();
        assert_eq!(n.config.as_deref(), Some(r#"{"type":"bridge"}"#));
        assert!(m.snapshot().get("team", "red").is_none());
        // Last live 20 s ago: not live; served stale within a 60 s bound, not within 5 s.
        let f = std::fs::File::options()
            .write(true)
            .open(m.dir().join(LIVE))
            .unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(20))
            .unwrap();
        assert!(!m.is_live());
        assert!(m.snapshot().get("team", "blue").is_none());
        let (n, age) = m
            .snapshot()
            .get_stale("team", "blue", Duration::from_secs(60))
            .unwrap();
        assert_eq!(n.name, "blue");
        assert!(age >= Duration::from_secs(19), "{age:?}");
        assert!(
            m.snapshot()
                .get_stale("team", "blue", Duration::from_secs(5))
                .is_none()
        );
        // Touched again with the same version: live again.
        m.touch("42").unwrap();
        assert!(m.is_live());
        // A stamp from the future (the clock stepped back) proves nothing; neither does a stale bound of 0.
        let f = std::fs::File::options()
            .write(true)
            .open(m.dir().join(LIVE))
            .unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(600))
            .unwrap();
        assert!(
            !m.is_live()
                && m.snapshot()
                    .get_stale("team", "blue", DEFAULT_MAX_STALE)
                    .is_none()
        );
        m.touch("42").unwrap();
        assert!(
            m.snapshot()
                .get_stale("team", "blue", Duration::ZERO)
                .is_none()
        );
        // A folder the agent never made live is not a mirror: clear leaves it.
        let other = Mirror::new(&d.join("etc"));
        std::fs::create_dir_all(d.join("etc/docker")).unwrap();
        std::fs::write(
            d.join("etc/docker/daemon.json"),
            nad("docker", "daemon", "{}").to_string(),
        )
        .unwrap();
        other.clear().unwrap();
        assert!(d.join("etc/docker/daemon.json").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_complete_list_replaces_everything_and_names_never_escape() {
        let d = crate::testutil::tempdir("mirror-list");
        let m = Mirror::new(&d.join("nads"));
        m.put(&nad("a", "one", "{}")).unwrap();
        m.put(&nad("b", "two", "{}")).unwrap();
        m.touch("1").unwrap();
        m.replace_all(&[nad("a", "one", r#"{"v":2}"#), nad("c", "three.x", "{}")])
            .unwrap();
        assert_eq!(
            m.snapshot().get("a", "one").unwrap().config.as_deref(),
            Some(r#"{"v":2}"#)
        );
        assert!(m.snapshot().get("b", "two").is_none());
        assert!(!m.dir().join("b").exists(), "an emptied namespace goes");
        assert!(m.snapshot().get("c", "three.x").is_some());
        m.remove("a", "one").unwrap();
        assert!(m.snapshot().get("a", "one").is_none());
        // Names that would be paths are neither written nor read.
        m.put(&nad("..", "x", "{}")).unwrap();
        m.put(&nad("a", "../../etc", "{}")).unwrap();
        assert!(m.snapshot().get("..", "x").is_none());
        assert!(m.snapshot().get("a", "../../etc").is_none());
        assert!(!d.join("x.json").exists() && !d.join("etc.json").exists());
        // A damaged entry is not served (ADD asks the API).
        std::fs::write(m.dir().join("c/three.x.json"), "{not json").unwrap();
        assert!(m.snapshot().get("c", "three.x").is_none());
        m.put(&nad("c", "three.x", "{}")).unwrap();
        // A namespace named like the liveness file is a namespace.
        m.put(&nad("live", "x", "{}")).unwrap();
        assert!(m.snapshot().get("live", "x").is_some());
        // A file of another kind in a namespace folder is not the mirror's: kept by a relist.
        std::fs::write(m.dir().join("c/daemon.json"), "{}").unwrap();
        m.replace_all(&[nad("c", "three.x", "{}")]).unwrap();
        assert!(m.dir().join("c/daemon.json").exists());
        assert!(m.snapshot().get("live", "x").is_none());
        std::fs::remove_file(m.dir().join("c/daemon.json")).unwrap();
        // Uninstall: the mirror goes, and what is not the mirror's stays.
        std::fs::write(m.dir().join("notes.txt"), "mine").unwrap();
        m.clear().unwrap();
        assert!(m.snapshot().get("c", "three.x").is_none() && !m.dir().join(LIVE).exists());
        assert!(m.dir().join("notes.txt").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
