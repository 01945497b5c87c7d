//! host-local's state, on disk exactly as the reference plugin keeps it, so both can share a node and a
//! migration loses no address:
//!
//! ```text
//! <dataDir>/<network>/<ip>                     "<containerID>\r\n<ifname>", created O_EXCL (the reservation)
//! <dataDir>/<network>/last_reserved_ip.<set>   the last address handed out from range set <set>
//! <dataDir>/<network>/lock                     flock'ed for the whole allocate / release
//! ```
//!
//! plus attache's own index of it, outside that folder ([`super::index`]).
//!
//! [`Store`] is the small interface the allocator needs; [`DiskStore`] holds the lock for as long as it
//! lives (and brings the index up to date when dropped), [`MemStore`] is the in-memory fake for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::index::Index;
use crate::error::{Error, Result};
use crate::files::write_in_place;

pub(super) const LAST_PREFIX: &str = "last_reserved_ip.";
const LINE_BREAK: &str = "\r\n";
/// Temporaries of reservations being written: `.reserve.<pid>.<n>`.
const TEMP_PREFIX: &str = ".reserve.";
static TEMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// An IP file holds a container ID (at most 255 bytes) and an interface name.
pub(super) const MAX_STATE_FILE: u64 = 4096;

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

/// The reference plugin's on-disk store, locked while this value lives, and attache's index of it.
pub struct DiskStore {
    dir: PathBuf,
    /// Dropped before the lock: it writes what changed while the lock is still held.
    pub(super) index: Index,
    /// Lines written after the holder in every reservation (attache-ipam's; never host-local's).
    extra: Vec<String>,
    _lock: Flock<File>,
}

/// `(ip, containerID, ifname)`, as an IP file names them.
pub type Holding = (IpAddr, String, String);

/// Whether a holding of `(holder_id, holder_if)` is `(id, ifname)`'s (an id-only file: any interface).
pub(super) fn owns(id: &str, ifname: &str, holder_id: &str, holder_if: &str) -> bool {
    holder_id == id && (holder_if == ifname || holder_if.is_empty())
}

impl DiskStore {
    /// Open (creating it) `<data_dir>/<network>` and take its lock.
    pub fn open(data_dir: &Path, network: &str) -> Result<DiskStore> {
        crate::cni::conf::validate_network_name(network)?;
        let dir = data_dir.join(network);
        crate::files::ensure_real_dir(&dir)?;
        let lock_path = dir.join("lock");
        let f = crate::files::open_lock(&lock_path)
            .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, errno)| {
            Error::kernel(format!("locking {}", lock_path.display()), errno)
        })?;
        Ok(DiskStore {
            dir,
            index: Index::new(data_dir, network),
            extra: vec![],
            _lock: lock,
        })
    }

    /// The configuration has `n` range sets: the stamp watches `last_reserved_ip.<0..n>` whether those
    /// files exist yet or not, so that another writer's first reservation in a set shows.
    pub fn watch_sets(&mut self, n: usize) {
        self.index.watch_sets = n.max(1);
    }

    /// Write `lines` after the holder in the reservations this store makes (one line each, no line
    /// breaks inside). Only attache-ipam's stores do: the reference plugin compares a whole IP file with
    /// `id\r\nifname`, so it must never find extra lines in a folder it shares.
    pub fn set_extra(&mut self, lines: Vec<String>) {
        self.extra = lines;
    }

    /// The content of `ip`'s file (`None`: nobody holds it).
    pub fn content(&self, ip: IpAddr) -> Result<Option<Vec<u8>>> {
        let p = self.ip_path(ip);
        match crate::files::read_bounded(&p, MAX_STATE_FILE) {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
        }
    }

    /// Release `ip`, which `(id, ifname)` holds: its file was read under this lock.
    pub(crate) fn release_held(&mut self, ip: IpAddr, id: String, ifname: String) -> Result<()> {
        let p = self.ip_path(ip);
        crate::fail::point("ipam.release")?;
        self.index.begin_change()?;
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("releasing {}", p.display()), e)),
        }
        self.index.note((ip, id, ifname), false, None);
        Ok(())
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Who holds `ip` now, read under the lock (`None`: nobody).
    pub fn holder(&self, ip: IpAddr) -> Result<Option<(String, String)>> {
        holder_in(&self.dir, ip)
    }

    /// What `(id, ifname)` holds, from the index, every address checked against its file; `None` when
    /// the index cannot answer (stale, unreadable, or it named an address its file does not confirm),
    /// and then a full read must. Costs a few small reads, whatever the folder holds.
    pub fn indexed(&self, id: &str, ifname: &str) -> Result<Option<Vec<IpAddr>>> {
        Ok(self
            .indexed_holdings(id, ifname)?
            .map(|v| v.into_iter().map(|h| h.0).collect()))
    }

    /// [`DiskStore::indexed`], with the holder each file names.
    pub fn indexed_holdings(&self, id: &str, ifname: &str) -> Result<Option<Vec<Holding>>> {
        self.index.holdings(id, ifname)
    }

    /// What `(id, ifname)` holds, by reading every file of the folder (and rebuilding the index).
    pub fn scan_by_id(&self, id: &str, ifname: &str) -> Result<Vec<Holding>> {
        Ok(self
            .scan()?
            .into_iter()
            .filter(|(_, i, f)| owns(id, ifname, i, f))
            .collect())
    }

    /// Every holding, read from the folder (killed writers' temporaries removed); the index is rebuilt
    /// from what was read.
    fn scan(&self) -> Result<Vec<Holding>> {
        let (all, sets) = holders_and_sets(&self.dir, true)
            .map_err(|e| Error::io(format!("listing {}", self.dir.display()), e))?;
        self.index.rebuild(&all, sets);
        Ok(all)
    }
}

/// An IP file's `(containerID, ifname)`: current format "id\r\nifname"; older reference versions
/// wrote only the id (ifname empty).
///
/// attache-ipam's block stores add lines after these two (the pod: see [`DiskStore::set_extra`]);
/// the holder is the first two lines whatever follows.
fn parse_holder(content: &[u8]) -> (String, String) {
    let content = String::from_utf8_lossy(content);
    let content = content.trim();
    let mut lines = content.split(LINE_BREAK);
    let id = lines.next().unwrap_or_default().trim().to_string();
    let ifname = lines.next().unwrap_or_default().trim().to_string();
    (id, ifname)
}

/// Who holds `ip` in the folder `dir` (`None`: nobody).
pub(super) fn holder_in(dir: &Path, ip: IpAddr) -> Result<Option<(String, String)>> {
    let p = dir.join(ip.to_string());
    match crate::files::read_bounded(&p, MAX_STATE_FILE) {
        Ok(content) => Ok(Some(parse_holder(&content))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
    }
}

/// The lines after the holder in an IP file (attache-ipam's pod identity), empty for host-local's.
pub fn extra_lines(content: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(content)
        .trim()
        .split(LINE_BREAK)
        .skip(2)
        .map(|l| l.trim().to_string())
        .collect()
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
    holders_and_sets(dir, clean).map(|(h, _)| h)
}

/// [`holders`], and the range sets that have a `last_reserved_ip`.
fn holders_and_sets(dir: &Path, clean: bool) -> std::io::Result<(Vec<Holding>, BTreeSet<usize>)> {
    let mut out = Vec::new();
    let mut sets = BTreeSet::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let name = name.to_str().unwrap_or_default();
        if let Some(set) = name
            .strip_prefix(LAST_PREFIX)
            .and_then(|n| n.parse::<usize>().ok())
        {
            sets.insert(set);
            continue;
        }
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
    Ok((out, sets))
}

impl Store for DiskStore {
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, range_set: usize) -> Result<bool> {
        let p = self.ip_path(ip);
        crate::fail::point("ipam.reserve")?;
        // Held already (the usual answer while scanning a busy range): no file is made to find out.
        if std::fs::symlink_metadata(&p).is_ok() {
            return Ok(false);
        }
        self.index.begin_change()?;
        let mut content = format!("{id}{LINE_BREAK}{ifname}");
        for line in &self.extra {
            content.push_str(LINE_BREAK);
            content.push_str(line);
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
        let written = crate::files::write_new(&tmp, content.as_bytes(), 0o600);
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
        let (hid, hif) = parse_holder(content.as_bytes());
        self.index.note((ip, hid, hif), true, Some(range_set));
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
        self.scan()
    }

    fn release(&mut self, ip: IpAddr) -> Result<()> {
        // Its holder says which bucket forgets it; nobody's is released already.
        match self.holder(ip)? {
            Some((id, ifname)) => self.release_held(ip, id, ifname),
            None => Ok(()),
        }
    }

    /// From the index when it can answer, else from a full read (which rebuilds it).
    fn get_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        match self.indexed(id, ifname)? {
            Some(ips) => Ok(ips),
            None => Ok(self
                .scan_by_id(id, ifname)?
                .into_iter()
                .map(|h| h.0)
                .collect()),
        }
    }
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
