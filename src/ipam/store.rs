//! host-local's state, on disk exactly as the reference plugin keeps it, so both can share a node and a
//! migration loses no address:
//!
//! ```text
//! <dataDir>/<network>/<ip>                     "<containerID>\r\n<ifname>", created O_EXCL (the reservation)
//! <dataDir>/<network>/last_reserved_ip.<set>   the last address handed out from range set <set>
//! <dataDir>/<network>/lock                     flock'ed for the whole allocate / release
//! ```
//!
//! [`Store`] is the small interface the allocator needs; [`DiskStore`] holds the lock for as long as it
//! lives, [`MemStore`] is the in-memory fake for tests.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::libc;

use crate::error::{Error, Result};

const LAST_PREFIX: &str = "last_reserved_ip.";
const LINE_BREAK: &str = "\r\n";
/// Temporaries of reservations being written: `.reserve.<pid>.<n>`.
const TEMP_PREFIX: &str = ".reserve.";
static TEMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// An IP file holds a container ID (at most 255 bytes) and an interface name.
const MAX_STATE_FILE: u64 = 4096;

pub trait Store {
    /// Reserve `ip` for `(id, ifname)`; `false` if someone holds it already.
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, range_set: usize) -> Result<bool>;
    fn last_reserved(&self, range_set: usize) -> Result<Option<IpAddr>>;
    /// Every `(ip, id, ifname)` held.
    fn all(&self) -> Result<Vec<(IpAddr, String, String)>>;
    fn release(&mut self, ip: IpAddr) -> Result<()>;

    /// The addresses `(id, ifname)` holds.
    fn get_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        Ok(self
            .all()?
            .into_iter()
            .filter(|(_, i, f)| i == id && (f == ifname || f.is_empty()))
            .map(|(ip, _, _)| ip)
            .collect())
    }

    /// Release everything `(id, ifname)` holds; returns what was released.
    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let ips = self.get_by_id(id, ifname)?;
        for ip in &ips {
            self.release(*ip)?;
        }
        Ok(ips)
    }
}

/// The reference plugin's on-disk store, locked while this value lives.
pub struct DiskStore {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl DiskStore {
    /// Open (creating it) `<data_dir>/<network>` and take its lock.
    pub fn open(data_dir: &Path, network: &str) -> Result<DiskStore> {
        crate::cni::conf::validate_network_name(network)?;
        let dir = data_dir.join(network);
        crate::files::ensure_real_dir(&dir)?;
        let lock_path = dir.join("lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, errno)| {
            Error::kernel(format!("locking {}", lock_path.display()), errno)
        })?;
        Ok(DiskStore { dir, _lock: lock })
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Who holds `ip` now, read under the lock (`None`: nobody).
    pub fn holder(&self, ip: IpAddr) -> Result<Option<(String, String)>> {
        let p = self.ip_path(ip);
        match crate::files::read_bounded(&p, MAX_STATE_FILE) {
            Ok(content) => Ok(Some(parse_holder(&content))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
        }
    }
}

/// An IP file's `(containerID, ifname)`: current format "id\r\nifname"; older reference versions
/// wrote only the id (ifname empty).
fn parse_holder(content: &[u8]) -> (String, String) {
    let content = String::from_utf8_lossy(content);
    let content = content.trim();
    match content.split_once(LINE_BREAK) {
        Some((i, f)) => (i.trim().to_string(), f.trim().to_string()),
        None => (content.to_string(), String::new()),
    }
}

/// Every `(ip, id, ifname)` held in `<data_dir>/<network>`, read without the lock and without creating
/// or cleaning anything (for `attache inspect`: a snapshot, re-checked under the lock before any
/// release). A missing folder holds nothing.
pub fn snapshot(data_dir: &Path, network: &str) -> Result<Vec<(IpAddr, String, String)>> {
    crate::cni::conf::validate_network_name(network)?;
    let dir = data_dir.join(network);
    match holders(&dir, false) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(vec![]),
        r => r.map_err(|e| Error::io(format!("listing {}", dir.display()), e)),
    }
}

/// Every `(ip, id, ifname)` of the IP files in `dir`, sorted; with `clean`, killed writers' temporaries
/// are removed on the way (only a lock holder may: a live writer's temporary is never touched).
fn holders(dir: &Path, clean: bool) -> std::io::Result<Vec<(IpAddr, String, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let name = name.to_str().unwrap_or_default();
        if clean
            && let Some(pid) = name
                .strip_prefix(TEMP_PREFIX)
                .and_then(|r| r.split('.').next())
                .and_then(|p| p.parse::<i32>().ok())
            && !crate::files::pid_alive(pid)
        {
            let _ = std::fs::remove_file(entry.path()); // a killed writer's temporary
            continue;
        }
        let Ok(ip) = name.parse::<IpAddr>() else {
            continue; // lock, last_reserved_ip.N, anything else
        };
        let Ok(content) = crate::files::read_bounded(&entry.path(), MAX_STATE_FILE) else {
            continue;
        };
        let (id, ifname) = parse_holder(&content);
        out.push((ip, id, ifname));
    }
    out.sort();
    Ok(out)
}

impl Store for DiskStore {
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, range_set: usize) -> Result<bool> {
        let p = self.ip_path(ip);
        crate::fail::point("ipam.reserve")?;
        // Held already (the usual answer while scanning a busy range): no file is made to find out.
        if std::fs::symlink_metadata(&p).is_ok() {
            return Ok(false);
        }
        // The reservation appears whole or not at all: its content goes into a temporary that is then
        // hard-linked into place (link fails if the name exists, as O_EXCL does). A process killed in
        // between leaves a temporary — which `all` removes once its writer is dead — never an empty
        // reservation that no container's DEL could recognise as its own.
        let tmp = self.dir.join(format!(
            "{TEMP_PREFIX}{}.{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let written =
            crate::files::write_new(&tmp, format!("{id}{LINE_BREAK}{ifname}").as_bytes(), 0o600);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(format!("writing {}", tmp.display()), e));
        }
        let linked = std::fs::hard_link(&tmp, &p);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Error::io(format!("reserving {}", p.display()), e)),
        }
        let last = self.dir.join(format!("{LAST_PREFIX}{range_set}"));
        if let Err(e) = write_in_place(&last, ip.to_string().as_bytes()) {
            let _ = std::fs::remove_file(&p);
            return Err(Error::io(format!("writing {}", last.display()), e));
        }
        Ok(true)
    }

    fn last_reserved(&self, range_set: usize) -> Result<Option<IpAddr>> {
        let p = self.dir.join(format!("{LAST_PREFIX}{range_set}"));
        match crate::files::read_bounded(&p, MAX_STATE_FILE) {
            Ok(s) => Ok(String::from_utf8_lossy(&s).trim().parse().ok()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
        }
    }

    fn all(&self) -> Result<Vec<(IpAddr, String, String)>> {
        holders(&self.dir, true)
            .map_err(|e| Error::io(format!("listing {}", self.dir.display()), e))
    }

    fn release(&mut self, ip: IpAddr) -> Result<()> {
        let p = self.ip_path(ip);
        crate::fail::point("ipam.release")?;
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("releasing {}", p.display()), e)),
        }
    }
}

/// Overwrite a small file without truncating it to zero first. ext4 treats "truncate to zero, then
/// write" as a replace and forces the data to disk on close (`auto_da_alloc`), which cost ~0.2 ms per
/// ADD here; writing over the old bytes and then cutting the length does not. A crash in between can
/// leave trailing digits, which makes the address unparsable: the allocator then starts from the range's
/// beginning, as the reference does when this file is missing.
fn write_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)?;
    f.write_all_at(bytes, 0)?;
    f.set_len(bytes.len() as u64)
}

/// The in-memory fake.
#[derive(Default)]
pub struct MemStore {
    pub held: BTreeMap<IpAddr, (String, String)>,
    pub last: BTreeMap<usize, IpAddr>,
}

impl Store for MemStore {
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, range_set: usize) -> Result<bool> {
        if self.held.contains_key(&ip) {
            return Ok(false);
        }
        self.held.insert(ip, (id.into(), ifname.into()));
        self.last.insert(range_set, ip);
        Ok(true)
    }
    fn last_reserved(&self, range_set: usize) -> Result<Option<IpAddr>> {
        Ok(self.last.get(&range_set).copied())
    }
    fn all(&self) -> Result<Vec<(IpAddr, String, String)>> {
        Ok(self
            .held
            .iter()
            .map(|(ip, (i, f))| (*ip, i.clone(), f.clone()))
            .collect())
    }
    fn release(&mut self, ip: IpAddr) -> Result<()> {
        self.held.remove(&ip);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_store_matches_the_reference_layout() {
        let d = std::env::temp_dir().join(format!("attache-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut s = DiskStore::open(&d, "net1").unwrap();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(s.reserve("ctr1", "eth0", ip, 0).unwrap());
        assert!(!s.reserve("ctr2", "eth0", ip, 0).unwrap());
        assert_eq!(
            std::fs::read_to_string(d.join("net1/10.0.0.2")).unwrap(),
            "ctr1\r\neth0"
        );
        assert_eq!(
            std::fs::read_to_string(d.join("net1/last_reserved_ip.0")).unwrap(),
            "10.0.0.2"
        );
        assert!(d.join("net1/lock").exists());
        let v6: IpAddr = "fd00::a".parse().unwrap();
        assert!(s.reserve("ctr1", "eth0", v6, 1).unwrap());
        assert!(d.join("net1/fd00::a").exists());
        // A file in the old id-only format still belongs to its container.
        std::fs::write(d.join("net1/10.0.0.9"), "old").unwrap();
        assert_eq!(
            s.get_by_id("old", "eth0").unwrap(),
            vec!["10.0.0.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(s.release_by_id("ctr1", "eth0").unwrap().len(), 2);
        assert!(!d.join("net1/10.0.0.2").exists());
        assert_eq!(s.last_reserved(0).unwrap(), Some(ip));
        drop(s);
        assert!(DiskStore::open(&d, "../escape").is_err());
        // Planted symlinks: last_reserved_ip's target is not truncated, a network folder that is a
        // symlink is refused.
        use std::os::unix::fs::symlink;
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::fs::remove_file(d.join("net1/last_reserved_ip.0")).unwrap();
        symlink(&victim, d.join("net1/last_reserved_ip.0")).unwrap();
        let mut s = DiskStore::open(&d, "net1").unwrap();
        assert!(s.reserve("ctr3", "eth0", ip, 0).is_err());
        assert!(
            !d.join("net1/10.0.0.2").exists(),
            "the reservation was undone"
        );
        drop(s);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        symlink(d.join("net1"), d.join("net2")).unwrap();
        assert_eq!(DiskStore::open(&d, "net2").err().unwrap().cni_code(), 5);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
