//! host-local's state, on disk exactly as the reference plugin keeps it, so both can share a node and a
//! migration loses no address:
//!
//! ```text
//! <dataDir>/<network>/<ip>                     "<containerID>\r\n<ifname>", created O_EXCL (the reservation)
//! <dataDir>/<network>/last_reserved_ip.<set>   the last address handed out from range set <set>
//! <dataDir>/<network>/lock                     flock'ed for the whole allocate / release
//! ```
//!
//! plus attache's own index, outside the reference's folder (the reference walks `<network>/` and never
//! looks anywhere else):
//!
//! ```text
//! <dataDir>/.attache/<network>.index/stamp     the state of <network>/ the buckets describe, and
//!                                              each bucket's number of entries (JSON)
//! <dataDir>/.attache/<network>.index/<xx>      bucket xx (hex, FNV-1a of the container ID mod 256):
//!                                              JSON [[ip, containerID, ifname], ...]
//! ```
//!
//! **Why an index.** Which addresses does `(containerID, ifname)` hold? The reference answers by reading
//! every file of the folder — ADD asks it (no duplicate allocation), DEL too (release by ID) — which with
//! 10 000 addresses held costs 10x a whole ADD. The index answers with one small bucket read: ADD's
//! duplicate check, `held`, and DEL ([`super::host_local::HostLocal::release_named`]) use it; GC reads
//! the whole folder (and rebuilds the index from what it read).
//!
//! **Why it can be trusted on a shared node.** Every host-local writer (the reference too) holds the
//! folder's `lock` while it changes the folder, and attache touches the index only under that lock. The
//! stamp records, as of the index's last sync, the folder's identity, mtime and ctime (with nanoseconds),
//! and for every range set it watches (the configuration's, and every one it saw used) the content of
//! `last_reserved_ip.<set>` and of the IP file that names. A reservation by anyone creates an IP file
//! (the folder's times move) and rewrites `last_reserved_ip.<set>` (the reference does on every
//! reservation, requested addresses included), so it shows in the stamp; the folder's times alone would
//! not do (a coarse clock gives two changes in one tick the same time), the last address alone would
//! not either (a requested address may be the one last handed out). What the stamp cannot see: within
//! one clock tick of attache's sync, other writers reserving an address, releasing the address last
//! handed out in that set, and reserving it again for the same holder — three foreign operations in
//! ~4 ms, one of them a DEL and re-ADD of one container with a requested address. (Kernels with
//! multigrain timestamps, 6.13 and later, give ext4 and tmpfs a fine-grained time for a change after
//! the time was read, as the sync reads it, which makes even that visible.) Before it
//! answers, the index is checked against the stamp; if anything differs it is rebuilt by a full read
//! of the folder. Positive answers are checked besides: every address a bucket names is read, and must
//! still name its holder. A bucket or stamp that is unreadable, too large or not JSON, or a bucket
//! whose number of entries is not the one the stamp records for it (lost, cut short), is a mismatch.
//!
//! **Why a crash cannot leave it trusted and wrong.** Before attache changes the folder it removes the
//! stamp; it writes the changed buckets and then a new stamp only after the change, still under the
//! lock. A writer killed in between leaves no stamp: the next one rebuilds. A network literally named
//! `.attache` is not a CNI name (libcni refuses it, as attache does), and no name the reference writes
//! (`lock`, `last_reserved_ip.<n>`, an address) ends in `.index`.
//!
//! [`Store`] is the small interface the allocator needs; [`DiskStore`] holds the lock for as long as it
//! lives (and brings the index up to date when dropped), [`MemStore`] is the in-memory fake for tests.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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
/// attache's index of each network, `<dataDir>/.attache/<network>.index/`.
pub const INDEX_DIR: &str = ".attache";
const INDEX_SUFFIX: &str = ".index";
const STAMP: &str = "stamp";
const STAMP_VERSION: u32 = 1;
const MAX_STAMP: u64 = 64 << 10;
/// A bucket holds about 1/256 of a network's holders (a /16 full: ~256 entries, ~25 KiB).
const MAX_BUCKET: u64 = 4 << 20;

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
    index_dir: PathBuf,
    index: RefCell<Index>,
    /// The index's folders were seen to be real directories under this lock.
    index_dirs_real: std::cell::Cell<bool>,
    /// Range sets `0..n` the stamp watches besides those it saw used (the configuration's).
    watch_sets: usize,
    /// Lines written after the holder in every reservation (attache-ipam's; never host-local's).
    extra: Vec<String>,
    /// Tests: drop without bringing the index up to date, as a killed writer would.
    #[cfg(test)]
    crashed: bool,
    _lock: Flock<File>,
}

/// `(ip, containerID, ifname)`, as an IP file names them.
pub type Holding = (IpAddr, String, String);

/// What attache knows of its index while it holds the lock.
enum Index {
    /// Not read yet.
    Unknown,
    /// The stamp matched the folder: the buckets name every reservation. `buckets` holds those read or
    /// changed, `dirty` those to write back; `open`: the stamp is removed (a change is under way) and is
    /// written again when the store is dropped; `sets`: the range sets the stamp watches; `counts`:
    /// how many entries each bucket has.
    Current {
        buckets: BTreeMap<u8, Vec<Holding>>,
        dirty: BTreeSet<u8>,
        sets: BTreeSet<usize>,
        counts: Vec<u32>,
        open: bool,
    },
    /// Not to be trusted, its stamp removed: the next full read rebuilds it.
    Stale,
}

/// The folder's state the index was synced with.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Stamp {
    version: u32,
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// Set -> content of `last_reserved_ip.<set>` and of the IP file it names (`None`: no such file).
    sets: BTreeMap<usize, (Option<String>, Option<String>)>,
    /// The number of entries of each bucket (so a bucket lost or cut short is seen).
    counts: Vec<u32>,
}

/// The bucket of a container ID: FNV-1a, stable across processes and versions.
fn bucket_of(id: &str) -> u8 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % 256) as u8
}

fn owns(id: &str, ifname: &str, holder_id: &str, holder_if: &str) -> bool {
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
            index_dir: data_dir
                .join(INDEX_DIR)
                .join(format!("{network}{INDEX_SUFFIX}")),
            index: RefCell::new(Index::Unknown),
            index_dirs_real: std::cell::Cell::new(false),
            watch_sets: 1,
            extra: vec![],
            #[cfg(test)]
            crashed: false,
            _lock: lock,
        })
    }

    /// The configuration has `n` range sets: the stamp watches `last_reserved_ip.<0..n>` whether those
    /// files exist yet or not, so that another writer's first reservation in a set shows.
    pub fn watch_sets(&mut self, n: usize) {
        self.watch_sets = n.max(1);
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
        self.begin_change()?;
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("releasing {}", p.display()), e)),
        }
        self.note((ip, id, ifname), false, None);
        Ok(())
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
        self.load_index();
        let b = bucket_of(id);
        let Some(entries) = self.bucket(b) else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for (ip, hid, hif) in entries.iter().filter(|(_, i, f)| owns(id, ifname, i, f)) {
            match self.holder(*ip)? {
                Some((fid, fif)) if fid == *hid && fif == *hif => out.push((*ip, fid, fif)),
                other => {
                    tracing::debug!(%ip, ?other, "host-local index names a holder its file does not: rebuilt");
                    self.invalidate();
                    return Ok(None);
                }
            }
        }
        Ok(Some(out))
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
        let (all, mut sets) = holders_and_sets(&self.dir, true)
            .map_err(|e| Error::io(format!("listing {}", self.dir.display()), e))?;
        let mut buckets: BTreeMap<u8, Vec<Holding>> = (0..=255u8).map(|b| (b, vec![])).collect();
        for h in &all {
            buckets.entry(bucket_of(&h.1)).or_default().push(h.clone());
        }
        if let Index::Current { sets: known, .. } = &*self.index.borrow() {
            sets.extend(known);
        }
        if self.remove_stamp().is_ok() {
            *self.index.borrow_mut() = Index::Current {
                dirty: buckets.keys().copied().collect(),
                counts: buckets.values().map(|v| v.len() as u32).collect(),
                buckets,
                sets,
                open: true,
            };
        } else {
            *self.index.borrow_mut() = Index::Stale;
        }
        Ok(all)
    }

    /// Read and check the stamp, once per lock.
    fn load_index(&self) {
        if !matches!(*self.index.borrow(), Index::Unknown) {
            return;
        }
        let loaded = self.read_stamp().and_then(|stored| {
            let mut now = self.stamp_now(stored.sets.keys().copied())?;
            now.counts = stored.counts.clone();
            Ok((stored == now && stored.counts.len() == 256).then_some(stored))
        });
        match loaded {
            Ok(Some(stamp)) => {
                *self.index.borrow_mut() = Index::Current {
                    buckets: BTreeMap::new(),
                    dirty: BTreeSet::new(),
                    sets: stamp.sets.keys().copied().collect(),
                    counts: stamp.counts,
                    open: false,
                }
            }
            Ok(None) => {
                tracing::debug!(dir = %self.dir.display(), "host-local index is stale (another writer since): rebuilt");
                self.invalidate();
            }
            Err(e) => {
                if e.kind() != ErrorKind::NotFound {
                    tracing::debug!(dir = %self.index_dir.display(), "host-local index unreadable ({e}): rebuilt");
                }
                self.invalidate();
            }
        }
    }

    /// The index is not to be trusted any more: its stamp goes.
    fn invalidate(&self) {
        if let Err(e) = self.remove_stamp() {
            tracing::warn!(dir = %self.index_dir.display(), "removing host-local index stamp: {e}");
        }
        *self.index.borrow_mut() = Index::Stale;
    }

    /// Make the stamp untrusted: it is overwritten in place with something that is not a stamp (a
    /// missing one stays missing). In place, not removed and made again: on ext4 a new file allocates an
    /// inode, which costs 0.5-2 ms after create/delete churn, and this happens twice per ADD and DEL.
    fn remove_stamp(&self) -> std::io::Result<()> {
        match overwrite_existing(&self.index_dir.join(STAMP), b"-") {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn read_stamp(&self) -> std::io::Result<Stamp> {
        // A symlink anywhere on attache's own path would let someone else's file pass for the stamp.
        for d in [self.index_dir.parent(), Some(self.index_dir.as_path())]
            .into_iter()
            .flatten()
        {
            if !std::fs::symlink_metadata(d)?.is_dir() {
                return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
            }
        }
        self.index_dirs_real.set(true);
        let bytes = crate::files::read_bounded(&self.index_dir.join(STAMP), MAX_STAMP)?;
        let stamp: Stamp = serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
        if stamp.version != STAMP_VERSION {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                "another stamp version",
            ));
        }
        Ok(stamp)
    }

    /// The folder's state now, for the range sets `sets`.
    fn stamp_now(&self, sets: impl Iterator<Item = usize>) -> std::io::Result<Stamp> {
        let md = std::fs::symlink_metadata(&self.dir)?;
        let read = |p: &Path| match crate::files::read_bounded(p, MAX_STATE_FILE) {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        let mut out = BTreeMap::new();
        for set in sets {
            let last = read(&self.dir.join(format!("{LAST_PREFIX}{set}")))?;
            let holder = match last.as_deref().map(|l| l.trim().parse::<IpAddr>()) {
                Some(Ok(ip)) => read(&self.ip_path(ip))?,
                _ => None,
            };
            out.insert(set, (last, holder));
        }
        Ok(Stamp {
            version: STAMP_VERSION,
            dev: md.dev(),
            ino: md.ino(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
            sets: out,
            counts: vec![],
        })
    }

    /// Bucket `b` of a current index (read on first use); `None` if the index is not current or the
    /// bucket cannot be read (the index is then stale).
    fn bucket(&self, b: u8) -> Option<Vec<Holding>> {
        let count = {
            let idx = self.index.borrow();
            match &*idx {
                Index::Current {
                    buckets, counts, ..
                } => {
                    if let Some(v) = buckets.get(&b) {
                        return Some(v.clone());
                    }
                    counts[usize::from(b)] as usize
                }
                _ => return None,
            }
        };
        let p = self.index_dir.join(format!("{b:02x}"));
        let read = match crate::files::read_bounded(&p, MAX_BUCKET) {
            Ok(bytes) => serde_json::from_slice::<Vec<Holding>>(&bytes)
                .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(e),
        }
        .and_then(|v| {
            if v.len() == count {
                Ok(v)
            } else {
                Err(std::io::Error::new(
                    ErrorKind::InvalidData,
                    format!("{} entries where the stamp says {count}", v.len()),
                ))
            }
        });
        match read {
            Ok(v) => {
                if let Index::Current { buckets, .. } = &mut *self.index.borrow_mut() {
                    buckets.insert(b, v.clone());
                }
                Some(v)
            }
            Err(e) => {
                tracing::debug!(bucket = %p.display(), "host-local index bucket unreadable ({e}): rebuilt");
                self.invalidate();
                None
            }
        }
    }

    /// Before the folder changes: a current index loses its stamp until the change is recorded. A
    /// stamp that cannot be removed stops the change (a stale stamp left behind could be trusted).
    fn begin_change(&self) -> Result<()> {
        self.load_index();
        if let Index::Current { open, .. } = &mut *self.index.borrow_mut()
            && !*open
        {
            self.remove_stamp().map_err(|e| {
                Error::io(
                    format!("removing {}", self.index_dir.join(STAMP).display()),
                    e,
                )
            })?;
            *open = true;
        }
        Ok(())
    }

    /// Record a change the folder has seen: `add` (or remove) `holding`; `set`: the range set a
    /// reservation was made in.
    fn note(&self, holding: Holding, add: bool, set: Option<usize>) {
        let b = bucket_of(&holding.1);
        if self.bucket(b).is_none() {
            return;
        }
        if let Index::Current {
            buckets,
            dirty,
            sets,
            counts,
            ..
        } = &mut *self.index.borrow_mut()
        {
            let v = buckets.entry(b).or_default();
            v.retain(|h| h.0 != holding.0);
            if add {
                v.push(holding);
            }
            counts[usize::from(b)] = v.len() as u32;
            dirty.insert(b);
            sets.extend(set);
        }
    }

    /// Write what changed, then the stamp of the folder as it is now (still under the lock).
    fn sync_index(&self) -> std::io::Result<()> {
        let Index::Current {
            buckets,
            dirty,
            sets,
            counts,
            open: true,
        } = &*self.index.borrow()
        else {
            return Ok(());
        };
        if !self.index_dirs_real.get() {
            for d in [self.index_dir.parent(), Some(self.index_dir.as_path())]
                .into_iter()
                .flatten()
            {
                crate::files::ensure_real_dir(d)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            self.index_dirs_real.set(true);
        }
        for b in dirty {
            let p = self.index_dir.join(format!("{b:02x}"));
            match buckets.get(b) {
                Some(v) if !v.is_empty() => {
                    let bytes = serde_json::to_vec(v).map_err(std::io::Error::other)?;
                    write_in_place(&p, &bytes)?;
                }
                // An emptied bucket is kept, empty (no file to make again when it fills); one that
                // never existed is not made.
                _ => match overwrite_existing(&p, b"[]") {
                    Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                    _ => {}
                },
            }
        }
        let watched = sets.iter().copied().chain(0..self.watch_sets);
        let mut stamp = self.stamp_now(watched.collect::<BTreeSet<_>>().into_iter())?;
        stamp.counts = counts.clone();
        let bytes = serde_json::to_vec(&stamp).map_err(std::io::Error::other)?;
        // One write over the untrusted marker: a writer killed before it leaves the marker; a write
        // is not torn by a kill.
        write_in_place(&self.index_dir.join(STAMP), &bytes)
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        #[cfg(test)]
        if self.crashed {
            return;
        }
        if let Err(e) = self.sync_index() {
            tracing::warn!(dir = %self.index_dir.display(), "host-local index not updated ({e}): the next call rebuilds it");
            let _ = self.remove_stamp();
        }
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
        self.begin_change()?;
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
        self.note((ip, hid, hif), true, Some(range_set));
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

/// Overwrite a small file without truncating it to zero first. ext4 treats "truncate to zero, then
/// write" as a replace and forces the data to disk on close (`auto_da_alloc`), which cost ~0.2 ms per
/// ADD here; writing over the old bytes and then cutting the length does not. A crash in between can
/// leave trailing digits, which makes the address unparsable: the allocator then starts from the range's
/// beginning, as the reference does when this file is missing.
fn write_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    overwrite(path, bytes, true)
}

/// Overwrite a file that exists, in place (never through a symlink); `NotFound` if there is none.
fn overwrite_existing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    overwrite(path, bytes, false)
}

fn overwrite(path: &Path, bytes: &[u8], create: bool) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .write(true)
        .create(create)
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

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("attache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn current(s: &DiskStore) -> bool {
        s.load_index();
        matches!(*s.index.borrow(), Index::Current { .. })
    }

    /// What the reference's Reserve does: the IP file, then `last_reserved_ip.<set>`.
    fn foreign_reserve(d: &Path, ip: &str, id: &str, set: usize) {
        std::fs::write(d.join("net/").join(ip), format!("{id}\r\neth0")).unwrap();
        std::fs::write(d.join(format!("net/last_reserved_ip.{set}")), ip).unwrap();
    }

    /// Make the stamp's folder times those of now, as if the foreign change fell in the clock tick of
    /// attache's last sync (a coarse clock gives both the same time).
    fn same_tick(d: &Path) {
        let p = d.join(".attache/net.index/stamp");
        let mut stamp: Stamp = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let md = std::fs::symlink_metadata(d.join("net")).unwrap();
        stamp.mtime = (md.mtime(), md.mtime_nsec());
        stamp.ctime = (md.ctime(), md.ctime_nsec());
        std::fs::write(&p, serde_json::to_vec(&stamp).unwrap()).unwrap();
    }

    #[test]
    fn the_index_answers_and_stays_outside_the_reference_folder() {
        let d = tmp("index");
        let mut s = DiskStore::open(&d, "net").unwrap();
        assert!(!current(&s), "no index yet");
        assert!(s.get_by_id("c1", "eth0").unwrap().is_empty()); // a full read builds it
        assert!(s.reserve("c1", "eth0", ip("10.0.0.2"), 0).unwrap());
        assert!(s.reserve("c1", "eth0", ip("fd00::2"), 1).unwrap());
        assert!(s.reserve("c2", "eth1", ip("10.0.0.3"), 0).unwrap());
        drop(s);
        let mut names: Vec<String> = std::fs::read_dir(d.join("net"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "10.0.0.2",
                "10.0.0.3",
                "fd00::2",
                "last_reserved_ip.0",
                "last_reserved_ip.1",
                "lock"
            ]
        );
        assert!(d.join(".attache/net.index/stamp").exists());
        let mut s = DiskStore::open(&d, "net").unwrap();
        assert!(current(&s));
        assert_eq!(
            s.indexed("c1", "eth0").unwrap(),
            Some(vec![ip("10.0.0.2"), ip("fd00::2")])
        );
        assert_eq!(s.indexed("c1", "eth1").unwrap(), Some(vec![]));
        assert_eq!(s.indexed("c3", "eth0").unwrap(), Some(vec![]));
        s.release(ip("10.0.0.2")).unwrap();
        drop(s);
        let s = DiskStore::open(&d, "net").unwrap();
        assert!(current(&s), "attache's own changes keep it current");
        assert_eq!(s.indexed("c1", "eth0").unwrap(), Some(vec![ip("fd00::2")]));
        assert_eq!(s.indexed("c2", "eth1").unwrap(), Some(vec![ip("10.0.0.3")]));
        drop(s);
        // The network folder's name is refused as a network (not a CNI name): it cannot hold one.
        assert_eq!(DiskStore::open(&d, INDEX_DIR).err().unwrap().cni_code(), 7);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_foreign_reservation_makes_the_index_stale() {
        let d = tmp("foreign");
        let open = || {
            let mut s = DiskStore::open(&d, "net").unwrap();
            s.watch_sets(3);
            s
        };
        let mut s = open();
        s.get_by_id("x", "eth0").unwrap();
        assert!(s.reserve("c1", "eth0", ip("10.0.0.5"), 0).unwrap());
        drop(s);
        // The reference reserves for f1: the folder's times move.
        foreign_reserve(&d, "10.0.0.6", "f1", 0);
        let s = open();
        assert!(!current(&s));
        assert_eq!(s.indexed("f1", "eth0").unwrap(), None);
        assert_eq!(s.get_by_id("f1", "eth0").unwrap(), vec![ip("10.0.0.6")]);
        drop(s);
        assert!(current(&open()), "rebuilt");
        // In the same clock tick as attache's sync: last_reserved_ip tells.
        foreign_reserve(&d, "10.0.0.7", "f2", 0);
        same_tick(&d);
        let s = open();
        assert_eq!(s.indexed("f2", "eth0").unwrap(), None);
        assert_eq!(s.get_by_id("f2", "eth0").unwrap(), vec![ip("10.0.0.7")]);
        drop(s);
        // The address last handed out released and reserved again, for another holder, in the same
        // tick: last_reserved_ip reads the same, the file it names does not.
        std::fs::remove_file(d.join("net/10.0.0.7")).unwrap();
        foreign_reserve(&d, "10.0.0.7", "f3", 0);
        same_tick(&d);
        let s = open();
        assert_eq!(s.indexed("f3", "eth0").unwrap(), None);
        assert_eq!(s.get_by_id("f3", "eth0").unwrap(), vec![ip("10.0.0.7")]);
        drop(s);
        // A first reservation in a set of the configuration that had no last_reserved_ip yet.
        foreign_reserve(&d, "fd00::9", "f4", 2);
        same_tick(&d);
        let s = open();
        assert_eq!(s.indexed("f4", "eth0").unwrap(), None);
        drop(s);
        // A foreign release needs no stamp: the bucket's address is checked against its file.
        let s = open();
        assert_eq!(s.get_by_id("c1", "eth0").unwrap(), vec![ip("10.0.0.5")]);
        drop(s);
        std::fs::remove_file(d.join("net/10.0.0.5")).unwrap();
        same_tick(&d);
        let s = open();
        assert!(current(&s));
        assert_eq!(s.indexed("c1", "eth0").unwrap(), None);
        assert!(s.get_by_id("c1", "eth0").unwrap().is_empty());
        drop(s);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_damaged_index_is_rebuilt() {
        let d = tmp("damaged");
        let mut s = DiskStore::open(&d, "net").unwrap();
        s.get_by_id("x", "eth0").unwrap();
        assert!(s.reserve("c1", "eth0", ip("10.0.0.2"), 0).unwrap());
        drop(s);
        let stamp = d.join(".attache/net.index/stamp");
        let bucket = d.join(format!(".attache/net.index/{:02x}", bucket_of("c1")));
        let good_bucket = std::fs::read(&bucket).unwrap();
        let check = |what: &str| {
            let s = DiskStore::open(&d, "net").unwrap();
            assert_eq!(s.indexed("c1", "eth0").unwrap(), None, "{what}");
            assert_eq!(
                s.get_by_id("c1", "eth0").unwrap(),
                vec![ip("10.0.0.2")],
                "{what}"
            );
            drop(s);
            let s = DiskStore::open(&d, "net").unwrap();
            assert_eq!(
                s.indexed("c1", "eth0").unwrap(),
                Some(vec![ip("10.0.0.2")]),
                "{what}: rebuilt"
            );
        };
        std::fs::write(&stamp, "\0garbage{").unwrap();
        check("garbage stamp");
        std::fs::write(&stamp, vec![b' '; MAX_STAMP as usize + 1]).unwrap();
        check("oversized stamp");
        std::fs::write(&bucket, "[[\"10.0.0.2\"").unwrap();
        check("truncated bucket");
        std::fs::remove_file(&bucket).unwrap();
        check("lost bucket");
        std::fs::write(&bucket, "[]").unwrap();
        check("emptied bucket");
        // A bucket naming a holder the file does not: positive answers are checked.
        let forged = String::from_utf8(good_bucket.clone())
            .unwrap()
            .replace("eth0", "eth9");
        std::fs::write(&bucket, forged).unwrap();
        let s = DiskStore::open(&d, "net").unwrap();
        assert_eq!(s.indexed("c1", "eth9").unwrap(), None);
        assert!(s.get_by_id("c1", "eth9").unwrap().is_empty());
        drop(s);
        // A symlink on attache's own path is never trusted.
        std::fs::rename(d.join(".attache"), d.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(d.join("elsewhere"), d.join(".attache")).unwrap();
        let s = DiskStore::open(&d, "net").unwrap();
        assert!(!current(&s));
        assert_eq!(s.get_by_id("c1", "eth0").unwrap(), vec![ip("10.0.0.2")]);
        drop(s);
        assert!(!current(&DiskStore::open(&d, "net").unwrap()));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_crash_between_the_ip_file_and_the_index_is_never_trusted() {
        let d = tmp("crash");
        let mut s = DiskStore::open(&d, "net").unwrap();
        s.get_by_id("x", "eth0").unwrap();
        assert!(s.reserve("c1", "eth0", ip("10.0.0.2"), 0).unwrap());
        drop(s);
        // Killed after its reservation, before the index heard of it.
        let mut s = DiskStore::open(&d, "net").unwrap();
        assert!(current(&s));
        assert!(s.reserve("c2", "eth0", ip("10.0.0.3"), 0).unwrap());
        s.crashed = true;
        drop(s);
        let s = DiskStore::open(&d, "net").unwrap();
        assert!(!current(&s), "no stamp: a change was under way");
        assert_eq!(s.get_by_id("c2", "eth0").unwrap(), vec![ip("10.0.0.3")]);
        drop(s);
        // Killed after a release.
        let mut s = DiskStore::open(&d, "net").unwrap();
        assert!(current(&s));
        s.release(ip("10.0.0.2")).unwrap();
        s.crashed = true;
        drop(s);
        let s = DiskStore::open(&d, "net").unwrap();
        assert!(!current(&s));
        assert!(s.get_by_id("c1", "eth0").unwrap().is_empty());
        assert_eq!(s.indexed("c2", "eth0").unwrap(), Some(vec![ip("10.0.0.3")]));
        drop(s);
        std::fs::remove_dir_all(&d).unwrap();
    }

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
