//! A node's own part of attache-ipam: which blocks it owns and what it handed out of them, on disk.
//!
//! ```text
//! <dataDir>/instance                    random id of this dataDir (in every block it claims: a node
//!                                       adopts after a crash only the blocks it created itself)
//! <dataDir>/<pool>/claim.lock           flock: one claim at a time per node and pool
//! <dataDir>/<pool>/owned/<block>        the block is this node's: {name, uid, cidr, range} of its object
//! <dataDir>/<pool>/blocks/<block>/      host-local's store of the block (lock, <ip>, last_reserved_ip.0)
//! <dataDir>/<pool>/pool.json            the ranges this node saw registered in the pool (append-only)
//! <dataDir>/<pool>/borrowed/            addresses used here from other nodes' blocks (through grants)
//! <dataDir>/<pool>/returns/<grant>      borrowed grants to delete (content: the grant's UID)
//! ```
//!
//! `<block>` is the block's CIDR as [`Block::dir_name`] writes it. An IP file holds
//! `<containerID>\r\n<ifname>\r\n<podUID>\r\n<namespace>/<name>\r\n<network>`: the pod, so that a
//! reconcile can tell whether the pod still exists (by UID, never by name alone), and the network, so
//! that a runtime's GC of one network leaves the others' addresses alone; in `borrowed/` the grant, its
//! purpose and its UID follow.
//!
//! An allocation holds the block store's lock and checks, under it, that `owned/<block>` still exists:
//! whoever gives a block back removes that file under the same lock first, so no address is handed out
//! of a block being given back.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};

use super::ClusterIpam;
use super::block::{Block, Layout};
use crate::error::{Error, Result};
use crate::ipam::host_local::range::{Range, RangeSet, from_u128};
use crate::ipam::host_local::store::{DiskStore, Store};

/// What `owned/<block>` records of the block's object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Owned {
    pub name: String,
    pub uid: String,
    pub cidr: String,
    pub range: String,
}

/// The folder of borrowed addresses, and of grants to delete.
const BORROWED: &str = "borrowed";
const RETURNS: &str = "returns";
/// The container ID of a lender's reservation for a grant: `grant:<name>` (no container has it).
pub const GRANT_PREFIX: &str = "grant:";

/// One address handed out on this node.
#[derive(Clone, Debug, PartialEq)]
pub struct Reservation {
    pub block: Block,
    pub ip: IpAddr,
    pub id: String,
    pub ifname: String,
    /// The pod's UID (`K8S_POD_UID`), empty outside Kubernetes.
    pub pod_uid: String,
    /// `namespace/name`.
    pub pod: String,
    /// When the reservation was made (its file's mtime).
    pub made: Option<std::time::SystemTime>,
    /// The network (the configuration's `name`) it was made for.
    pub network: String,
    /// Held here through this grant (`block` is then the address alone), its purpose and UID.
    pub grant: Option<String>,
    pub purpose: String,
    pub grant_uid: String,
}

impl Reservation {
    /// From an IP file's lines after the holder: `podUID`, `namespace/name`, `network`, and in
    /// `borrowed/` the grant, its purpose and its UID.
    fn parse(
        block: Block,
        ip: IpAddr,
        id: String,
        ifname: String,
        extra: Vec<String>,
        made: Option<std::time::SystemTime>,
        borrowed: bool,
    ) -> Reservation {
        let mut e = extra.into_iter();
        let mut next = || e.next().unwrap_or_default();
        let (pod_uid, pod, network) = (next(), next(), next());
        let (grant, purpose, grant_uid) = if borrowed {
            (Some(next()).filter(|g| !g.is_empty()), next(), next())
        } else {
            (None, String::new(), String::new())
        };
        Reservation {
            block,
            ip,
            id,
            ifname,
            pod_uid,
            pod,
            made,
            network,
            grant,
            purpose,
            grant_uid,
        }
    }
}

/// The grant an address is held here through: its name, purpose and UID.
pub struct HeldGrant<'a> {
    pub name: &'a str,
    pub purpose: &'a str,
    pub uid: &'a str,
}

/// The lines an allocation writes after the holder: the pod and the network.
fn pod_lines(c: &ClusterIpam) -> Vec<String> {
    vec![
        c.pod.uid.clone(),
        format!("{}/{}", c.pod.namespace, c.pod.name),
        c.network.clone(),
    ]
}

#[derive(Clone, Debug)]
pub struct Local {
    data_dir: PathBuf,
    dir: PathBuf,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

impl Local {
    pub fn new(data_dir: &Path, pool: &str) -> Local {
        Local {
            data_dir: data_dir.to_path_buf(),
            dir: data_dir.join(pool),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn owned_dir(&self) -> PathBuf {
        self.dir.join("owned")
    }

    fn blocks_dir(&self) -> PathBuf {
        self.dir.join("blocks")
    }

    fn pool_file(&self) -> PathBuf {
        self.dir.join("pool.json")
    }

    /// The blocks this node owns, lowest first (a missing folder: none).
    pub fn owned(&self) -> Result<Vec<Block>> {
        blocks_named_in(&self.owned_dir())
    }

    /// The record of an owned block.
    pub fn owned_record(&self, block: &Block) -> Result<Option<Owned>> {
        let p = self.owned_dir().join(block.dir_name());
        match crate::files::read_bounded(&p, 64 << 10) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Internal(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
        }
    }

    /// Is `block` this node's?
    pub(super) fn is_owned(&self, block: &Block) -> bool {
        std::fs::symlink_metadata(self.owned_dir().join(block.dir_name())).is_ok()
    }

    /// Record that `block` is this node's (after its object was created, or found to be ours).
    pub fn adopt(&self, block: &Block, owned: &Owned) -> Result<()> {
        crate::files::ensure_real_dir(&self.owned_dir())?;
        let bytes = serde_json::to_vec(owned).map_err(|e| Error::Internal(e.to_string()))?;
        replace_file(&self.owned_dir().join(block.dir_name()), &bytes)
    }

    /// Give up `block` locally, under its store's lock, if it holds nothing: `false` if it does.
    pub fn disown_if_empty(&self, block: &Block) -> Result<bool> {
        let store = DiskStore::open(&self.blocks_dir(), &block.dir_name())?;
        if !store.all()?.is_empty() {
            return Ok(false);
        }
        let p = self.owned_dir().join(block.dir_name());
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(Error::io(format!("removing {}", p.display()), e)),
        }
    }

    /// The pools with state under `data_dir`.
    pub fn pools(data_dir: &Path) -> Result<Vec<Local>> {
        let mut out = Vec::new();
        match std::fs::read_dir(data_dir) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if super::validate_pool(&name).is_ok()
                        && e.file_type().is_ok_and(|t| t.is_dir())
                    {
                        out.push(Local::new(data_dir, &name));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("listing {}", data_dir.display()), e)),
        }
        out.sort_by(|a, b| a.dir.cmp(&b.dir));
        Ok(out)
    }

    /// The pool's name (its folder's).
    pub fn pool(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// When the block was claimed (its record's mtime) and last changed (its store's folder).
    pub fn block_times(
        &self,
        block: &Block,
    ) -> (Option<std::time::SystemTime>, Option<std::time::SystemTime>) {
        let t = |p: PathBuf| std::fs::symlink_metadata(p).and_then(|m| m.modified()).ok();
        (
            t(self.owned_dir().join(block.dir_name())),
            t(self.blocks_dir().join(block.dir_name())),
        )
    }

    /// Remove a given-back block's store (and host-local's index of it). Best effort: a later DEL that
    /// opens it finds it empty.
    pub fn forget(&self, block: &Block) {
        let name = block.dir_name();
        let _ = std::fs::remove_dir_all(self.blocks_dir().join(&name));
        let _ = std::fs::remove_dir_all(
            self.blocks_dir()
                .join(crate::ipam::host_local::index::INDEX_DIR)
                .join(format!("{name}.index")),
        );
    }

    /// Stop using `block` (under its store's lock, whatever it holds): `false` if it was not owned.
    pub fn disown(&self, block: &Block) -> Result<bool> {
        let _store = DiskStore::open(&self.blocks_dir(), &block.dir_name())?;
        let p = self.owned_dir().join(block.dir_name());
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("removing {}", p.display()), e)),
        }
    }

    /// One claim at a time per node and pool, waited for at most `wait` (the holder makes API calls,
    /// each bounded: a longer wait means something is stuck, and the runtime should retry).
    pub fn claim_lock(&self, wait: std::time::Duration) -> Result<Flock<File>> {
        crate::files::ensure_real_dir(&self.dir)?;
        let p = self.dir.join("claim.lock");
        let f = crate::files::open_lock(&p).map_err(io(format!("opening {}", p.display())))?;
        crate::files::lock_within(f, wait)
            .map_err(|errno| Error::kernel(format!("locking {}", p.display()), errno))?
            .ok_or_else(|| {
                Error::TryAgain(format!(
                    "{} has been held by another claim of this node for more than {wait:?}",
                    p.display()
                ))
            })
    }

    /// This dataDir's random id, made once.
    pub fn instance(&self) -> Result<String> {
        instance_of(&self.data_dir)
    }

    /// The ranges (`range -> blockSize`) this node saw registered in its pool.
    pub fn registered(&self) -> Vec<(String, u8)> {
        crate::files::read_bounded(&self.pool_file(), 1 << 20)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn set_registered(&self, ranges: &[(String, u8)]) -> Result<()> {
        crate::files::ensure_real_dir(&self.dir)?;
        let bytes = serde_json::to_vec(ranges).map_err(|e| Error::Internal(e.to_string()))?;
        replace_file(&self.pool_file(), &bytes)
    }

    pub(super) fn store(&self, block: &Block) -> Result<DiskStore> {
        DiskStore::open(&self.blocks_dir(), &block.dir_name())
    }

    /// An address for `(id, ifname)` from a block this node owns, or `None` when none has room (or the
    /// requested address lies in no block of this node). Never calls the API.
    pub fn allocate(&self, c: &ClusterIpam, id: &str, ifname: &str) -> Result<Option<IpAddr>> {
        let owned: Vec<Block> = self
            .owned()?
            .into_iter()
            .filter(|b| c.layout.has(b))
            .collect();
        let extra = pod_lines(c);
        self.refuse_borrowed_duplicate(id, ifname)?;
        if let Some(ip) = c.requested.first() {
            let Some(b) = owned.iter().find(|b| b.contains(*ip)) else {
                return Ok(None);
            };
            let mut store = self.store(b)?;
            store.set_extra(extra);
            if !self.is_owned(b) {
                return Ok(None);
            }
            refuse_duplicate(&store, id, ifname)?;
            if !store.reserve(id, ifname, *ip, 0)? {
                return Err(Error::Ipam(format!(
                    "requested IP address {ip} is not available in pool {} (block {})",
                    c.pool,
                    b.net()
                )));
            }
            return Ok(Some(*ip));
        }
        for b in &owned {
            let free = c.layout.free_intervals(b, &c.holes);
            if free.is_empty() {
                continue;
            }
            let mut store = self.store(b)?;
            if !self.is_owned(b) {
                continue; // given back meanwhile
            }
            store.set_extra(extra.clone());
            refuse_duplicate(&store, id, ifname)?;
            let set = RangeSet(
                free.iter()
                    .map(|&(s, e)| Range {
                        subnet: c.layout.range,
                        start: from_u128(s, b.v4),
                        end: from_u128(e, b.v4),
                        gateway: None,
                    })
                    .collect(),
            );
            let last = store.last_reserved(0)?;
            for (ip, _) in set.candidates(last) {
                if store.reserve(id, ifname, ip, 0)? {
                    return Ok(Some(ip));
                }
            }
        }
        Ok(None)
    }

    /// Every block folder of the pool (owned or not: a reservation outlives a lost record).
    fn block_dirs(&self) -> Result<Vec<Block>> {
        blocks_named_in(&self.blocks_dir())
    }

    /// The blocks to look in for `(id, ifname)`: those of the `named` addresses when the layout is
    /// known and they all have a folder, else all.
    fn blocks_for(&self, named: &[IpAddr], layout: Option<&Layout>) -> Result<Vec<Block>> {
        let all = self.block_dirs()?;
        if let Some(l) = layout
            && !named.is_empty()
        {
            let mut bs: Vec<Block> = named.iter().filter_map(|ip| l.block_of(*ip)).collect();
            bs.sort();
            bs.dedup();
            if bs.len() == named.len() && bs.iter().all(|b| all.contains(b)) {
                return Ok(bs);
            }
        }
        Ok(all)
    }

    /// Release what `(id, ifname)` holds; what was released.
    pub fn release(
        &self,
        id: &str,
        ifname: &str,
        named: &[IpAddr],
        layout: Option<&Layout>,
    ) -> Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        for b in self.blocks_for(named, layout)? {
            out.extend(self.store(&b)?.release_by_id(id, ifname)?);
        }
        if let Some(mut store) = self.borrowed_store()? {
            for ip in store.get_by_id(id, ifname)? {
                self.release_borrowed(&mut store, ip)?;
                out.push(ip);
            }
        }
        Ok(out)
    }

    /// `<pool>/borrowed/`: addresses this node uses from other nodes' blocks, each through an
    /// `AddressGrant` (its name is the IP file's last line). `None` if it never borrowed.
    pub fn borrowed_store(&self) -> Result<Option<DiskStore>> {
        if !self.dir.join(BORROWED).exists() {
            return Ok(None);
        }
        DiskStore::open(&self.dir, BORROWED).map(Some)
    }

    /// Record an address granted to `(id, ifname)` by `grant`, for `purpose` (a borrowed address's
    /// grant is deleted when it is released; a sticky or claimed one's outlives the container).
    pub fn hold_borrowed(
        &self,
        c: &ClusterIpam,
        id: &str,
        ifname: &str,
        ip: IpAddr,
        grant: &HeldGrant<'_>,
    ) -> Result<bool> {
        let mut store = DiskStore::open(&self.dir, BORROWED)?;
        let mut lines = pod_lines(c);
        lines.extend([grant.name, grant.purpose, grant.uid].map(str::to_string));
        store.set_extra(lines);
        refuse_duplicate(&store, id, ifname)?;
        store.reserve(id, ifname, ip, 0)
    }

    /// A container that holds a borrowed (or sticky, claimed) address already gets no second one.
    fn refuse_borrowed_duplicate(&self, id: &str, ifname: &str) -> Result<()> {
        match self.borrowed_store()? {
            Some(store) => refuse_duplicate(&store, id, ifname),
            None => Ok(()),
        }
    }

    /// Release a borrowed address and queue its grant's deletion (`returns/<grant>`: the agent or the
    /// reconcile deletes it, so that a DEL never waits for the API).
    fn release_borrowed(&self, store: &mut DiskStore, ip: IpAddr) -> Result<()> {
        let lines = store
            .content(ip)?
            .map(|c| crate::ipam::host_local::store::extra_lines(&c))
            .unwrap_or_default();
        let r = Reservation::parse(
            Block::of(ipnet::IpNet::from(ip)),
            ip,
            String::new(),
            String::new(),
            lines,
            None,
            true,
        );
        if let Some(grant) = &r.grant
            && r.purpose != super::api::STICKY
            && r.purpose != super::api::CLAIM
        {
            self.queue_return(grant, &r.grant_uid)?;
        }
        store.release(ip)
    }

    /// Queue the deletion of `grant` (conditioned on `uid`: a grant of the same name made later is
    /// not this one).
    pub fn queue_return(&self, grant: &str, uid: &str) -> Result<()> {
        let dir = self.dir.join(RETURNS);
        crate::files::ensure_real_dir(&dir)?;
        let p = dir.join(grant);
        match crate::files::write_new(&p, uid.as_bytes(), 0o600) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(Error::io(format!("writing {}", p.display()), e)),
        }
    }

    /// Grants whose deletion is queued, with their UIDs (empty: unknown).
    pub fn returns(&self) -> Vec<(String, String)> {
        std::fs::read_dir(self.dir.join(RETURNS))
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let uid = crate::files::read_bounded(&e.path(), 256)
                            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                            .unwrap_or_default();
                        (e.file_name().to_string_lossy().into_owned(), uid)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Is the deletion of `grant` queued?
    pub fn return_queued(&self, grant: &str) -> bool {
        self.dir.join(RETURNS).join(grant).exists()
    }

    pub fn returned(&self, grant: &str) {
        let _ = std::fs::remove_file(self.dir.join(RETURNS).join(grant));
    }

    pub fn held(&self, id: &str, ifname: &str, layout: Option<&Layout>) -> Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        for b in self.block_dirs()? {
            if layout.is_some_and(|l| !l.has(&b)) {
                continue;
            }
            out.extend(self.store(&b)?.get_by_id(id, ifname)?);
        }
        if let Some(store) = self.borrowed_store()? {
            out.extend(store.get_by_id(id, ifname)?);
        }
        Ok(out)
    }

    /// Release every address of `network` whose `(containerID, ifname)` is not in `valid`. A pool is
    /// shared by every definition of its address space, and a runtime's valid list names only the
    /// attachments of the network it collects: the others' addresses are never looked at.
    pub fn gc(&self, network: &str, valid: &[(String, String)]) -> Result<Vec<IpAddr>> {
        let mut released = Vec::new();
        for r in self.reservations()? {
            let keep = r.id.starts_with(GRANT_PREFIX)
                || r.network != network
                || valid.iter().any(|(v_id, v_if)| {
                    *v_id == r.id && (*v_if == r.ifname || r.ifname.is_empty())
                });
            if !keep && self.release_if_held(&r)? {
                released.push(r.ip);
            }
        }
        Ok(released)
    }

    /// Every reservation in the pool's block stores, with the pod it was made for.
    pub fn reservations(&self) -> Result<Vec<Reservation>> {
        let mut out = Vec::new();
        for b in self.block_dirs()? {
            let store = self.store(&b)?;
            for (ip, id, ifname) in store.all()? {
                let extra = store
                    .content(ip)?
                    .map(|c| crate::ipam::host_local::store::extra_lines(&c))
                    .unwrap_or_default();
                let made = std::fs::symlink_metadata(
                    self.blocks_dir().join(b.dir_name()).join(ip.to_string()),
                )
                .and_then(|m| m.modified())
                .ok();
                out.push(Reservation::parse(b, ip, id, ifname, extra, made, false));
            }
        }
        if let Some(store) = self.borrowed_store()? {
            for (ip, id, ifname) in store.all()? {
                let made = std::fs::symlink_metadata(self.dir.join(BORROWED).join(ip.to_string()))
                    .and_then(|m| m.modified())
                    .ok();
                let extra = store
                    .content(ip)?
                    .map(|c| crate::ipam::host_local::store::extra_lines(&c))
                    .unwrap_or_default();
                let b = Block::of(ipnet::IpNet::from(ip));
                out.push(Reservation::parse(b, ip, id, ifname, extra, made, true));
            }
        }
        Ok(out)
    }

    /// Release the reservation `r` if its holder still holds it (checked under the lock).
    pub fn release_if_held(&self, r: &Reservation) -> Result<bool> {
        let (ip, id, ifname) = (r.ip, r.id.as_str(), r.ifname.as_str());
        if r.grant.is_some() {
            let Some(mut store) = self.borrowed_store()? else {
                return Ok(false);
            };
            return match store.holder(ip)? {
                Some((i, f)) if i == id && f == ifname => {
                    self.release_borrowed(&mut store, ip)?;
                    Ok(true)
                }
                _ => Ok(false),
            };
        }
        let mut store = self.store(&r.block)?;
        match store.holder(ip)? {
            Some((i, f)) if i == id && f == ifname => {
                store.release(ip)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// The blocks the entries of `dir` are named after, lowest first (a missing folder: none).
fn blocks_named_in(dir: &Path) -> Result<Vec<Block>> {
    let mut out: Vec<Block> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| Block::from_dir_name(e.file_name().to_str()?))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    out.sort();
    Ok(out)
}

fn refuse_duplicate(store: &DiskStore, id: &str, ifname: &str) -> Result<()> {
    if let Some(have) = store.get_by_id(id, ifname)?.first() {
        return Err(Error::Ipam(format!(
            "{have} has been allocated to {id}, duplicate allocation is not allowed"
        )));
    }
    Ok(())
}

/// Write one of attache-ipam's node files whole and durably (it outlives a reboot: which blocks are
/// this node's).
pub(super) fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::files::replace(path, bytes, 0o600, true)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The random id of dataDir `data_dir`, made on first use: the blocks it claims carry it, so that a node
/// adopts only blocks this very dataDir made.
pub fn instance_of(data_dir: &Path) -> Result<String> {
    let p = data_dir.join("instance");
    if let Ok(b) = crate::files::read_bounded(&p, 256) {
        let s = String::from_utf8_lossy(&b).trim().to_string();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    crate::files::ensure_real_dir(data_dir)?;
    let mut bytes = [0u8; 16];
    {
        use std::io::Read;
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(io("reading /dev/urandom"))?;
    }
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = data_dir.join(format!(".instance.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    crate::files::write_new(&tmp, id.as_bytes(), 0o600)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    // link, not rename: a concurrent first claim must not replace an id already handed out.
    let linked = std::fs::hard_link(&tmp, &p);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(id),
        // Another process made it meanwhile: its id, if it can be read.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            match crate::files::read_bounded(&p, 256) {
                Ok(b) if !String::from_utf8_lossy(&b).trim().is_empty() => {
                    Ok(String::from_utf8_lossy(&b).trim().to_string())
                }
                _ => Err(Error::Ipam(format!(
                    "{} is empty or unreadable: this node's attache-ipam identity is lost (remove it only if this dataDir owns no block)",
                    p.display()
                ))),
            }
        }
        Err(e) => Err(Error::io(format!("writing {}", p.display()), e)),
    }
}

/// When dataDir `data_dir`'s id was made (`None`: not yet, or unreadable).
pub fn instance_born(data_dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(data_dir.join("instance"))
        .and_then(|m| m.modified())
        .ok()
}
