//! attache's index of a host-local folder, outside the reference's folder (the reference walks
//! `<network>/` and never looks anywhere else):
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
//! duplicate check, `held`, and DEL ([`super::HostLocal::release_named`]) use it; GC reads
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
//! The store reaches it by four calls, all under the folder's lock: [`Index::holdings`] (what a holder
//! has, when the index can say), [`Index::begin_change`] (before the folder changes), [`Index::note`]
//! (a change made) and [`Index::rebuild`] (from a full read). Dropping it writes what changed and a new
//! stamp.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::libc;

use super::store::{Holding, LAST_PREFIX, MAX_STATE_FILE, holder_in, owns};
use crate::error::{Error, Result};
use crate::files::{overwrite_existing, write_in_place};

/// attache's index of each network, `<dataDir>/.attache/<network>.index/`.
pub const INDEX_DIR: &str = ".attache";
const INDEX_SUFFIX: &str = ".index";
const STAMP: &str = "stamp";
const STAMP_VERSION: u32 = 1;
const MAX_STAMP: u64 = 64 << 10;
/// A bucket holds about 1/256 of a network's holders (a /16 full: ~256 entries, ~25 KiB).
const MAX_BUCKET: u64 = 4 << 20;

/// The index of one network's folder, while its lock is held.
pub struct Index {
    /// The network's folder (the reference's).
    dir: PathBuf,
    index_dir: PathBuf,
    state: RefCell<State>,
    /// The index's folders were seen to be real directories under this lock.
    dirs_real: Cell<bool>,
    /// Range sets `0..n` the stamp watches besides those it saw used (the configuration's).
    pub watch_sets: usize,
    /// Tests: drop without bringing the index up to date, as a killed writer would.
    #[cfg(test)]
    pub crashed: bool,
}

/// What attache knows of its index while it holds the lock.
enum State {
    /// Not read yet.
    Unknown,
    /// The stamp matched the folder: the buckets name every reservation. `buckets` holds those read or
    /// changed, `dirty` those to write back; `open`: the stamp is removed (a change is under way) and is
    /// written again when the index is dropped; `sets`: the range sets the stamp watches; `counts`:
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
    (crate::files::fnv1a(&[id]) % 256) as u8
}

impl Index {
    /// The index of `<data_dir>/<network>`, not read yet.
    pub fn new(data_dir: &Path, network: &str) -> Index {
        Index {
            dir: data_dir.join(network),
            index_dir: data_dir
                .join(INDEX_DIR)
                .join(format!("{network}{INDEX_SUFFIX}")),
            state: RefCell::new(State::Unknown),
            dirs_real: Cell::new(false),
            watch_sets: 1,
            #[cfg(test)]
            crashed: false,
        }
    }

    /// What `(id, ifname)` holds, from the index, every address checked against its file; `None` when
    /// the index cannot answer (stale, unreadable, or it named an address its file does not confirm),
    /// and then a full read must. Costs a few small reads, whatever the folder holds.
    pub fn holdings(&self, id: &str, ifname: &str) -> Result<Option<Vec<Holding>>> {
        self.load();
        let Some(entries) = self.bucket(bucket_of(id)) else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for (ip, hid, hif) in entries.iter().filter(|(_, i, f)| owns(id, ifname, i, f)) {
            match holder_in(&self.dir, *ip)? {
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

    /// Before the folder changes: a current index loses its stamp until the change is recorded. A
    /// stamp that cannot be removed stops the change (a stale stamp left behind could be trusted).
    pub fn begin_change(&self) -> Result<()> {
        self.load();
        if let State::Current { open, .. } = &mut *self.state.borrow_mut()
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
    pub fn note(&self, holding: Holding, add: bool, set: Option<usize>) {
        let b = bucket_of(&holding.1);
        if self.bucket(b).is_none() {
            return;
        }
        if let State::Current {
            buckets,
            dirty,
            sets,
            counts,
            ..
        } = &mut *self.state.borrow_mut()
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

    /// Everything the folder holds, just read in full, and the range sets that have a
    /// `last_reserved_ip`: the index is made from it, and written when dropped.
    pub fn rebuild(&self, all: &[Holding], mut sets: BTreeSet<usize>) {
        let mut buckets: BTreeMap<u8, Vec<Holding>> = (0..=255u8).map(|b| (b, vec![])).collect();
        for h in all {
            buckets.entry(bucket_of(&h.1)).or_default().push(h.clone());
        }
        if let State::Current { sets: known, .. } = &*self.state.borrow() {
            sets.extend(known);
        }
        let next = if self.remove_stamp().is_ok() {
            State::Current {
                dirty: buckets.keys().copied().collect(),
                counts: buckets.values().map(|v| v.len() as u32).collect(),
                buckets,
                sets,
                open: true,
            }
        } else {
            State::Stale
        };
        *self.state.borrow_mut() = next;
    }

    /// Whether the index can answer (tests).
    #[cfg(test)]
    pub fn is_current(&self) -> bool {
        self.load();
        matches!(*self.state.borrow(), State::Current { .. })
    }

    /// Read and check the stamp, once per lock.
    fn load(&self) {
        if !matches!(*self.state.borrow(), State::Unknown) {
            return;
        }
        let loaded = self.read_stamp().and_then(|stored| {
            let mut now = self.stamp_now(stored.sets.keys().copied())?;
            now.counts = stored.counts.clone();
            Ok((stored == now && stored.counts.len() == 256).then_some(stored))
        });
        match loaded {
            Ok(Some(stamp)) => {
                *self.state.borrow_mut() = State::Current {
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
        *self.state.borrow_mut() = State::Stale;
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
        self.dirs_real.set(true);
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
                Some(Ok(ip)) => read(&self.dir.join(ip.to_string()))?,
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
            let idx = self.state.borrow();
            match &*idx {
                State::Current {
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
                if let State::Current { buckets, .. } = &mut *self.state.borrow_mut() {
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

    /// Write what changed, then the stamp of the folder as it is now (still under the lock).
    fn sync(&self) -> std::io::Result<()> {
        let State::Current {
            buckets,
            dirty,
            sets,
            counts,
            open: true,
        } = &*self.state.borrow()
        else {
            return Ok(());
        };
        if !self.dirs_real.get() {
            for d in [self.index_dir.parent(), Some(self.index_dir.as_path())]
                .into_iter()
                .flatten()
            {
                crate::files::ensure_real_dir(d)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            self.dirs_real.set(true);
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

impl Drop for Index {
    fn drop(&mut self) {
        #[cfg(test)]
        if self.crashed {
            return;
        }
        if let Err(e) = self.sync() {
            tracing::warn!(dir = %self.index_dir.display(), "host-local index not updated ({e}): the next call rebuilds it");
            let _ = self.remove_stamp();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::{DiskStore, Store};
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
        s.index.is_current()
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
        s.index.crashed = true;
        drop(s);
        let s = DiskStore::open(&d, "net").unwrap();
        assert!(!current(&s), "no stamp: a change was under way");
        assert_eq!(s.get_by_id("c2", "eth0").unwrap(), vec![ip("10.0.0.3")]);
        drop(s);
        // Killed after a release.
        let mut s = DiskStore::open(&d, "net").unwrap();
        assert!(current(&s));
        s.release(ip("10.0.0.2")).unwrap();
        s.index.crashed = true;
        drop(s);
        let s = DiskStore::open(&d, "net").unwrap();
        assert!(!current(&s));
        assert!(s.get_by_id("c1", "eth0").unwrap().is_empty());
        assert_eq!(s.indexed("c2", "eth0").unwrap(), Some(vec![ip("10.0.0.3")]));
        drop(s);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
