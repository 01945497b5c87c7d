//! What attache has done on a node, judged from its records in cacheDir: the attachments, the host-local
//! pools they use with every allocation and whether a record names it (what a leak is), this node's part
//! of the attache-ipam pools, records whose netns is gone, unreadable records, and pods' network
//! namespaces no record names. And the two repairs `attache inspect --gc` makes: releasing a leak safely
//! under host-local's lock, and tearing down a record no runtime will DEL any more. Data only: `cli::inspect`
//! asks, confirms and renders.
//!
//! Nothing is changed by [`Report::gather`], and nothing is created: the pools are read without
//! host-local's lock (a snapshot), and every release is re-checked under the lock. A record is torn down
//! only when its netns is gone and the runtime's CRI does not list its sandbox (or, with no CRI to ask, it
//! is older than a given age): the same teardown DEL does.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::cni::conf::NetConf;
use crate::cni::skel::{CmdArgs, CniArgs, Command};
use crate::engine::config::AttacheConf;
use crate::engine::record::{AttachmentRecord, PodRecord, RecordStore};
use crate::ipam::host_local::range::{RangeSet, to_u128};
use crate::ipam::host_local::store::{self, DiskStore, Store};
use crate::ipam::{Ipam, IpamRelease};
use crate::netns::NetNs;

/// The whole report: what `--json` prints, what the tables show.
#[derive(Debug, Serialize)]
pub struct Report {
    pub cache_dir: PathBuf,
    /// Where cacheDir came from (an option, a configuration file, the default).
    pub cache_dir_from: String,
    pub attachments: Vec<AttachmentRow>,
    pub pools: Vec<Pool>,
    /// attache-ipam pools the records use: this node's part of each.
    pub cluster_pools: Vec<ClusterPool>,
    pub stale_records: Vec<StaleRecord>,
    pub unreadable_records: Vec<Unreadable>,
    /// Pods' network namespaces no record names that hold interfaces: attached by another plugin (pods
    /// Multus attached before the node moved to attache), or whose record was lost.
    pub foreign: Vec<ForeignNetns>,
}

#[derive(Debug, Serialize)]
pub struct ForeignNetns {
    pub netns: PathBuf,
    pub links: Vec<crate::engine::pod::PodLink>,
}

#[derive(Debug, Serialize)]
pub struct AttachmentRow {
    /// `namespace/name`, when the runtime named a Kubernetes pod.
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container_id: String,
    pub ifname: String,
    pub network: String,
    /// The pod's cluster network (its first attachment).
    pub cluster: bool,
    /// The plugin types of the attachment's configuration, in chain order.
    pub types: Vec<String>,
    /// `native`, `exec`, or `native+exec` (a chain of both).
    pub run: &'static str,
    pub ips: Vec<String>,
    pub mac: Option<String>,
    /// Since the record was last written.
    pub age_seconds: Option<u64>,
    /// `ok`, `netns-gone`, `incomplete` (ADD did not finish), or `incomplete,netns-gone`.
    pub state: String,
    pub netns: Option<PathBuf>,
    pub record: PathBuf,
}

/// This node's part of an attache-ipam pool: its blocks, and the addresses no record here names (an
/// exec'd plugin's, another cacheDir's, or a leak: `attache ipam inspect` judges them by pod UID and
/// `attache ipam reconcile` releases the leaks; `--gc` never touches them).
#[derive(Debug, Serialize)]
pub struct ClusterPool {
    pub data_dir: PathBuf,
    pub pool: String,
    pub blocks: Vec<crate::ipam::cluster::inspect::BlockRow>,
    pub addresses: usize,
    pub not_recorded: Vec<Allocation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Pool {
    /// The network's name: host-local's folder in dataDir.
    pub network: String,
    pub data_dir: PathBuf,
    /// `attache` when only attache hands out its addresses (leaks can be released), else `shared`.
    pub owner: &'static str,
    /// Why a shared pool is shared (the cluster network, an exec'd plugin).
    pub shared_by: Vec<String>,
    /// The range sets, each as its ranges (`subnet` or `subnet start-end`).
    pub ranges: Vec<Vec<String>>,
    /// Addresses host-local may hand out (gateways excluded); `None` when the ranges are unknown.
    pub size: Option<u128>,
    /// Allocations inside the ranges.
    pub used: usize,
    pub free: Option<u128>,
    pub leaked: usize,
    pub unrecorded: usize,
    pub allocations: Vec<Allocation>,
    pub notes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocStatus {
    /// A record names it.
    Recorded,
    /// A record names it, and that record's netns is gone.
    NetnsGone,
    /// No record names it, in a pool only attache hands out from: `--gc` releases it.
    Leaked,
    /// No record names it, in a shared pool: never released.
    NotRecorded,
    /// Its container has a record that cannot be read: never released.
    RecordUnreadable,
}

impl AllocStatus {
    pub fn label(self) -> &'static str {
        match self {
            AllocStatus::Recorded => "ok",
            AllocStatus::NetnsGone => "netns-gone",
            AllocStatus::Leaked => "LEAKED",
            AllocStatus::NotRecorded => "not recorded by attache",
            AllocStatus::RecordUnreadable => "record unreadable",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Allocation {
    pub ip: IpAddr,
    pub container_id: String,
    /// Empty in files of older host-local versions (container ID only).
    pub ifname: String,
    pub status: AllocStatus,
    pub pod: Option<String>,
    pub in_ranges: bool,
}

#[derive(Debug, Serialize)]
pub struct StaleRecord {
    pub pod: Option<String>,
    pub container_id: String,
    pub ifname: String,
    pub netns: Option<PathBuf>,
    pub age_seconds: Option<u64>,
    pub record: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct Unreadable {
    pub record: PathBuf,
    pub container_id: String,
    pub reason: String,
}

/// What `--gc` did.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub confirmed: bool,
    pub released: Vec<GcItem>,
    /// Leaks found again under the lock to be in use, or already gone.
    pub kept: Vec<GcItem>,
    pub errors: Vec<String>,
    /// Records whose netns is gone, left to the runtime's DEL or GC.
    pub stale_records_kept: usize,
    /// Records torn down as DEL would: no runtime will DEL them any more.
    pub torn_down: Vec<TornRecord>,
    /// How it was told that no runtime will DEL a record.
    pub stale_records_judged_by: String,
}

#[derive(Debug, Serialize)]
pub struct TornRecord {
    pub pod: Option<String>,
    pub container_id: String,
    pub ifname: String,
}

/// What [`tear_down`] did.
#[derive(Default)]
pub struct TornDown {
    pub records: Vec<TornRecord>,
    pub errors: Vec<String>,
}

/// A leak `--gc` released or kept.
#[derive(Debug, Serialize)]
pub struct GcItem {
    pub network: String,
    pub data_dir: PathBuf,
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How long the runtime's CRI has to list its sandboxes.
const CRI_TIMEOUT: Duration = Duration::from_secs(5);

/// How it is told that no runtime will DEL a record whose netns is gone.
pub enum Judge {
    /// These sandboxes exist (the CRI at this socket says): a record of any other is an orphan.
    Cri(HashSet<String>, PathBuf),
    /// Older than this many seconds.
    Age(u64),
    /// No way to tell (why): none is torn down.
    Unknown(String),
}

impl Judge {
    /// Ask the CRI at `socket` (or the default one) which sandboxes it has; where none answers, judge by
    /// age when `older_than` is given.
    pub async fn ask(socket: Option<PathBuf>, older_than: Option<u64>) -> Judge {
        let why = match socket.or_else(crate::cri::default_socket) {
            Some(p) => match crate::cri::sandbox_ids(&p, CRI_TIMEOUT).await {
                Ok(ids) => return Judge::Cri(ids, p),
                Err(e) => e.to_string(),
            },
            None => "no CRI socket (--cri-socket)".to_string(),
        };
        match older_than {
            Some(age) => Judge::Age(age),
            None => Judge::Unknown(why),
        }
    }

    /// Whether no runtime will DEL this record any more (its netns is gone).
    pub fn orphaned(&self, r: &StaleRecord) -> bool {
        match self {
            Judge::Cri(ids, _) => !ids.contains(&r.container_id),
            Judge::Age(min) => r.age_seconds.is_some_and(|a| a >= *min),
            Judge::Unknown(_) => false,
        }
    }
}

/// The network namespaces in `dir` that no record of `report` names, with their interfaces (`lo` aside);
/// those with none are left out. Read only.
pub async fn foreign_netns(dir: &Path, report: &Report) -> Vec<ForeignNetns> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let records = RecordStore::new(&report.cache_dir);
    let named: Vec<NetNs> = records
        .list()
        .iter()
        .filter_map(|r| r.netns.as_deref())
        .filter_map(|p| NetNs::open(p).ok())
        .collect();
    let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let Ok(ns) = NetNs::open(&p) else { continue };
        if named.iter().any(|n| n.same_as(&ns)) {
            continue;
        }
        match crate::engine::pod::pod_links(&ns).await {
            Ok(links) if !links.is_empty() => out.push(ForeignNetns { netns: p, links }),
            Ok(_) => {}
            Err(e) => tracing::debug!("inspect: {}: {e}", p.display()),
        }
    }
    out
}

/// Tear down the orphaned records of `cache_dir` as DEL would, each only if it is still there and its
/// netns still gone. `cni_path` is where delegated plugins are looked for besides the configuration's
/// binDir.
pub async fn tear_down(
    ac: &AttacheConf,
    cache_dir: &Path,
    cni_path: &[PathBuf],
    orphans: &[&StaleRecord],
) -> TornDown {
    let mut out = TornDown::default();
    let store = RecordStore::new(cache_dir);
    for o in orphans {
        // The ID as `docker ps` shows it, as the report's tables do.
        let short: String = o.container_id.chars().take(12).collect();
        let what = format!("container {short} {}", o.ifname);
        let rec = match store.load(&o.container_id, &o.ifname) {
            Ok(Some(r)) if r.netns.as_deref().is_some_and(netns_gone) => r,
            Ok(_) => continue, // gone meanwhile (a DEL), or its netns is back: not an orphan
            Err(e) => {
                out.errors.push(format!("{what}: {e}"));
                continue;
            }
        };
        match crate::engine::meta::teardown_orphan(ac, &store, &rec, cni_path).await {
            Ok(()) => out.records.push(TornRecord {
                pod: o.pod.clone(),
                container_id: o.container_id.clone(),
                ifname: o.ifname.clone(),
            }),
            Err(e) => out.errors.push(format!("tearing down {what}: {e}")),
        }
    }
    out
}

/// Whether a netns path still holds a network namespace: as DEL decides ([`NetNs::open`]), except that a
/// file this process may not open is not taken for gone.
fn netns_gone(p: &Path) -> bool {
    match std::fs::File::open(p) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => false,
        Err(_) => true,
        Ok(_) => NetNs::open(p).is_err(),
    }
}

/// Who names which `(containerID, ifname)`: every attachment of every readable record.
#[derive(Default)]
struct RecordIndex {
    named: HashMap<(String, String), Holder>,
    /// Containers with a record that cannot be read (or that names no attachment): any of their
    /// allocations may be its.
    opaque: HashSet<String>,
}

#[derive(Clone)]
struct Holder {
    pod: Option<String>,
    netns_gone: bool,
}

impl RecordIndex {
    /// The status of an allocation of `(id, ifname)` in a pool attache alone hands out from (`owned`)
    /// or a shared one. An empty ifname (older file format) matches any interface of the container,
    /// as host-local's own release does.
    fn classify(&self, id: &str, ifname: &str, owned: bool) -> (AllocStatus, Option<String>) {
        let holder = if ifname.is_empty() {
            self.named
                .iter()
                .find(|((i, _), _)| i == id)
                .map(|(_, h)| h)
        } else {
            self.named.get(&(id.to_string(), ifname.to_string()))
        };
        match holder {
            Some(h) if h.netns_gone => (AllocStatus::NetnsGone, h.pod.clone()),
            Some(h) => (AllocStatus::Recorded, h.pod.clone()),
            None if self.opaque.contains(id) => (AllocStatus::RecordUnreadable, None),
            None if owned => (AllocStatus::Leaked, None),
            None => (AllocStatus::NotRecorded, None),
        }
    }
}

/// One attachment's use of a host-local pool.
struct PoolRef {
    /// The record's age: the newest record's ranges are shown.
    age: u64,
    cluster: bool,
    plugin_type: String,
    network: String,
    ranges: Ranges,
}

fn pod_name(rec: &PodRecord) -> Option<String> {
    rec.pod.as_ref().map(ToString::to_string)
}

fn age_of(path: &Path, now: SystemTime) -> Option<u64> {
    let m = std::fs::symlink_metadata(path).ok()?.modified().ok()?;
    Some(now.duration_since(m).map(|d| d.as_secs()).unwrap_or(0))
}

/// A host-local pool: `(dataDir, network name)`.
type PoolKey = (PathBuf, String);
/// A pool's range sets as attache reads them, or why they cannot be read.
type Ranges = std::result::Result<Vec<RangeSet>, String>;

/// The host-local pools of an attachment's chain, each with the plugin type that uses it.
fn host_local_pools(a: &AttachmentRecord) -> Vec<(PoolKey, String, Ranges)> {
    let list = &a.conf;
    // Only the runtime's ranges matter here; requested addresses (`ips`) do not make a pool.
    let runtime: Map<String, Value> = a
        .runtime_config
        .iter()
        .filter(|(k, _)| k.as_str() == "ipRanges")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let args = CmdArgs {
        command: Command::Add,
        container_id: String::new(),
        netns: None,
        netns_ignored: None,
        nothing_to_do: None,
        ifname: a.ifname.clone(),
        args: CniArgs::default(),
        path: vec![],
    };
    let mut out = Vec::new();
    for i in 0..list.plugins.len() {
        let ipam_type = list.plugins[i]
            .get("ipam")
            .and_then(|s| s.get("type"))
            .and_then(Value::as_str);
        if ipam_type != Some("host-local") {
            continue;
        }
        let Ok(conf) = NetConf::from_value(list.plugin_conf(i, &runtime, None)) else {
            continue;
        };
        // attache's own reading of the section: the same ranges, gateways and dataDir as ADD uses.
        match Ipam::from_conf(&conf, &args) {
            Ok(Ipam::HostLocal(h)) => out.push((
                (h.data_dir, h.network),
                list.plugin_type(i).to_string(),
                Ok(h.range_sets),
            )),
            Ok(_) => {}
            Err(e) => {
                // What DEL would use: the pool is still there to be listed.
                if let IpamRelease::HostLocal(h) = IpamRelease::of(&conf, &args) {
                    out.push((
                        (h.data_dir, h.network),
                        list.plugin_type(i).to_string(),
                        Err(e.to_string()),
                    ));
                }
            }
        }
    }
    out
}

/// The attache-ipam pools (`dataDir`, pool) an attachment's configuration uses.
fn cluster_pools_of(a: &AttachmentRecord) -> Vec<(PathBuf, String)> {
    a.conf
        .plugins
        .iter()
        .filter_map(|p| match p.get("ipam") {
            Some(Value::Object(section))
                if section.get("type").and_then(Value::as_str)
                    == Some(crate::ipam::cluster::TYPE) =>
            {
                crate::ipam::cluster::Teardown::from_section(&a.network, section)
            }
            _ => None,
        })
        .map(|t| (t.local.data_dir().to_path_buf(), t.local.pool()))
        .collect()
}

fn cluster_pool(data_dir: PathBuf, pool: String, index: &RecordIndex) -> ClusterPool {
    let local = crate::ipam::cluster::local::Local::new(&data_dir, &pool);
    let read = local.reservations().and_then(|res| {
        let blocks = crate::ipam::cluster::inspect::block_rows(&local, &res)?;
        Ok((res, blocks))
    });
    let (res, blocks, error) = match read {
        Ok((res, blocks)) => (res, blocks, None),
        Err(e) => (vec![], vec![], Some(e.to_string())),
    };
    let not_recorded = res
        .iter()
        .filter(|r| !r.id.starts_with(crate::ipam::cluster::local::GRANT_PREFIX))
        .filter(|r| !index.named.contains_key(&(r.id.clone(), r.ifname.clone())))
        .map(|r| Allocation {
            ip: r.ip,
            container_id: r.id.clone(),
            ifname: r.ifname.clone(),
            status: AllocStatus::NotRecorded,
            pod: Some(r.pod.clone()).filter(|p| p != "/" && !p.is_empty()),
            in_ranges: true,
        })
        .collect();
    ClusterPool {
        data_dir,
        pool,
        blocks,
        addresses: res
            .iter()
            .filter(|r| !r.id.starts_with(crate::ipam::cluster::local::GRANT_PREFIX))
            .count(),
        not_recorded,
        error,
    }
}

/// Addresses host-local may hand out from the sets: every range's `[start, end]`, gateways excluded.
fn pool_size(sets: &[RangeSet]) -> u128 {
    sets.iter()
        .flat_map(|s| s.0.iter())
        .map(|r| {
            let n = to_u128(r.end) - to_u128(r.start) + 1;
            n - u128::from(r.gateway.is_some_and(|g| r.contains(g)))
        })
        .fold(0u128, u128::saturating_add)
}

fn range_labels(sets: &[RangeSet]) -> Vec<Vec<String>> {
    sets.iter()
        .map(|s| {
            s.0.iter()
                .map(|r| {
                    let v4 = r.start.is_ipv4();
                    let net = to_u128(r.subnet.network());
                    let last = to_u128(r.subnet.broadcast()) - u128::from(v4);
                    if to_u128(r.start) == net + 1 && to_u128(r.end) == last {
                        r.subnet.to_string()
                    } else {
                        format!("{} {}-{}", r.subnet, r.start, r.end)
                    }
                })
                .collect()
        })
        .collect()
}

impl Report {
    /// Read cacheDir and the pools its records use. Nothing is written.
    pub fn gather(cache_dir: &Path, from: String, now: SystemTime) -> Report {
        let store = RecordStore::new(cache_dir);
        let mut records = Vec::new();
        let mut unreadable = Vec::new();
        for e in store.entries(None) {
            match e.record {
                Ok(r) => {
                    let age = age_of(&e.path, now);
                    records.push((e.path, age, r));
                }
                Err(err) => unreadable.push(Unreadable {
                    record: e.path,
                    container_id: e.container_id,
                    reason: err.to_string(),
                }),
            }
        }
        records.sort_by(|(_, _, a), (_, _, b)| {
            (pod_name(a), &a.container_id, &a.ifname).cmp(&(
                pod_name(b),
                &b.container_id,
                &b.ifname,
            ))
        });
        unreadable.sort_by(|a, b| a.record.cmp(&b.record));

        let mut index = RecordIndex::default();
        index
            .opaque
            .extend(unreadable.iter().map(|u| u.container_id.clone()));
        let mut attachments = Vec::new();
        let mut stale = Vec::new();
        let mut refs: BTreeMap<PoolKey, Vec<PoolRef>> = BTreeMap::new();
        let mut cluster_refs: BTreeSet<(PathBuf, String)> = BTreeSet::new();
        for (path, age, rec) in &records {
            let gone = rec.netns.as_deref().is_some_and(netns_gone);
            let pod = pod_name(rec);
            let state = match (rec.complete, gone) {
                (true, false) => "ok",
                (true, true) => "netns-gone",
                (false, false) => "incomplete",
                (false, true) => "incomplete,netns-gone",
            };
            if gone {
                stale.push(StaleRecord {
                    pod: pod.clone(),
                    container_id: rec.container_id.clone(),
                    ifname: rec.ifname.clone(),
                    netns: rec.netns.clone(),
                    age_seconds: *age,
                    record: path.clone(),
                });
            }
            let holder = Holder {
                pod: pod.clone(),
                netns_gone: gone,
            };
            if rec.attachments.is_empty() {
                index.opaque.insert(rec.container_id.clone());
            }
            index.named.insert(
                (rec.container_id.clone(), rec.ifname.clone()),
                holder.clone(),
            );
            for (i, a) in rec.attachments.iter().enumerate() {
                index
                    .named
                    .insert((rec.container_id.clone(), a.ifname.clone()), holder.clone());
                attachments.push(attachment_row(rec, i, a, path, *age, state));
                cluster_refs.extend(cluster_pools_of(a));
                for (key, plugin_type, ranges) in host_local_pools(a) {
                    refs.entry(key).or_default().push(PoolRef {
                        age: age.unwrap_or(u64::MAX),
                        cluster: i == 0,
                        plugin_type,
                        network: a.network.clone(),
                        ranges,
                    });
                }
            }
        }
        let pools = refs
            .into_iter()
            .map(|((data_dir, network), refs)| pool(data_dir, network, refs, &index))
            .collect();
        let cluster_pools = cluster_refs
            .into_iter()
            .map(|(data_dir, pool)| cluster_pool(data_dir, pool, &index))
            .collect();
        Report {
            cache_dir: cache_dir.to_path_buf(),
            cache_dir_from: from,
            attachments,
            pools,
            cluster_pools,
            stale_records: stale,
            unreadable_records: unreadable,
            foreign: Vec::new(),
        }
    }

    /// The allocations `--gc` would release, with their pool.
    pub fn leaks(&self) -> Vec<(&Pool, &Allocation)> {
        self.pools
            .iter()
            .flat_map(|p| p.allocations.iter().map(move |a| (p, a)))
            .filter(|(_, a)| a.status == AllocStatus::Leaked)
            .collect()
    }
}

fn attachment_row(
    rec: &PodRecord,
    i: usize,
    a: &AttachmentRecord,
    path: &Path,
    age: Option<u64>,
    state: &str,
) -> AttachmentRow {
    let types: Vec<String> = (0..a.conf.plugins.len())
        .map(|i| a.conf.plugin_type(i).to_string())
        .collect();
    let native = types
        .iter()
        .filter(|t| crate::attach::NativeType::of(t).is_some())
        .count();
    let run = match native {
        0 => "exec",
        n if n == types.len() => "native",
        _ => "native+exec",
    };
    let (ips, mac) = match &a.result {
        Some(r) => {
            let mac = r
                .interfaces
                .iter()
                .filter(|f| f.name == a.ifname && !f.mac.is_empty())
                .max_by_key(|f| !f.sandbox.is_empty())
                .map(|f| f.mac.clone());
            (r.ips.iter().map(|ip| ip.address.to_string()).collect(), mac)
        }
        None => (vec![], None),
    };
    AttachmentRow {
        pod: pod_name(rec),
        pod_uid: rec
            .pod
            .as_ref()
            .map(|p| p.uid.clone())
            .filter(|u| !u.is_empty()),
        container_id: rec.container_id.clone(),
        ifname: a.ifname.clone(),
        network: a.network.clone(),
        cluster: i == 0,
        types,
        run,
        ips,
        mac,
        age_seconds: age,
        state: state.into(),
        netns: rec.netns.clone(),
        record: path.to_path_buf(),
    }
}

fn pool(data_dir: PathBuf, network: String, mut refs: Vec<PoolRef>, index: &RecordIndex) -> Pool {
    let mut notes = Vec::new();
    let mut shared_by: Vec<String> = Vec::new();
    for r in &refs {
        let why = if r.cluster {
            format!("cluster network {:?}", r.network)
        } else if crate::attach::NativeType::of(&r.plugin_type).is_none() {
            format!("{:?} (exec'd {})", r.network, r.plugin_type)
        } else {
            continue;
        };
        if !shared_by.contains(&why) {
            shared_by.push(why);
        }
    }
    let owned = shared_by.is_empty();
    // The newest record's reading of the ranges; older records may predate a configuration change.
    refs.sort_by_key(|r| r.age);
    let sets = refs.iter().find_map(|r| r.ranges.as_ref().ok()).cloned();
    if let Some(s) = &sets
        && refs
            .iter()
            .any(|r| r.ranges.as_ref().is_ok_and(|other| other != s))
    {
        notes.push(
            "records disagree on the ranges (the configuration changed): the newest record's are shown"
                .into(),
        );
    }
    if sets.is_none()
        && let Some(Err(e)) = refs.first().map(|r| &r.ranges)
    {
        notes.push(format!("ranges unknown: {e}"));
    }
    let held = match store::snapshot(&data_dir, &network) {
        Ok(h) => h,
        Err(e) => {
            notes.push(e.to_string());
            vec![]
        }
    };
    let allocations: Vec<Allocation> = held
        .into_iter()
        .map(|(ip, container_id, ifname)| {
            let (status, pod) = index.classify(&container_id, &ifname, owned);
            let in_ranges = sets
                .as_ref()
                .is_none_or(|s| s.iter().any(|set| set.range_for(ip).is_some()));
            Allocation {
                ip,
                container_id,
                ifname,
                status,
                pod,
                in_ranges,
            }
        })
        .collect();
    let used = allocations.iter().filter(|a| a.in_ranges).count();
    let outside = allocations.len() - used;
    if outside > 0 {
        notes.push(format!(
            "{outside} allocation{} outside the ranges (the configuration changed?)",
            if outside == 1 { "" } else { "s" }
        ));
    }
    let size = sets.as_deref().map(pool_size);
    let count = |s: AllocStatus| allocations.iter().filter(|a| a.status == s).count();
    Pool {
        leaked: count(AllocStatus::Leaked),
        unrecorded: count(AllocStatus::NotRecorded),
        owner: if owned { "attache" } else { "shared" },
        shared_by,
        ranges: sets.as_deref().map(range_labels).unwrap_or_default(),
        free: size.map(|n| n.saturating_sub(used as u128)),
        size,
        used,
        allocations,
        notes,
        data_dir,
        network,
    }
}

/// Release the leaks, each under its pool's lock, re-checked there: the file must still name the same
/// container and interface, and no record may name it by now (an ADD writes its record before it
/// allocates, so a record that appeared since the snapshot is seen here).
pub fn release_leaks(report: &Report, leaks: &[(&Pool, &Allocation)]) -> GcReport {
    let records = RecordStore::new(&report.cache_dir);
    let mut out = GcReport::default();
    let mut by_pool: BTreeMap<(&Path, &str), Vec<&Allocation>> = BTreeMap::new();
    for (p, a) in leaks {
        by_pool
            .entry((&p.data_dir, &p.network))
            .or_default()
            .push(a);
    }
    for ((data_dir, network), allocs) in by_pool {
        let item = |a: &Allocation, reason: Option<String>| GcItem {
            network: network.to_string(),
            data_dir: data_dir.to_path_buf(),
            ip: a.ip,
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            reason,
        };
        let mut s = match DiskStore::open(data_dir, network) {
            Ok(s) => s,
            Err(e) => {
                out.errors
                    .push(format!("network {network} in {}: {e}", data_dir.display()));
                continue;
            }
        };
        for a in allocs {
            let reason = match s.holder(a.ip) {
                Err(e) => {
                    out.errors.push(format!("{} in {network}: {e}", a.ip));
                    continue;
                }
                Ok(None) => Some("already released".to_string()),
                Ok(Some((id, ifname))) if id != a.container_id || ifname != a.ifname => {
                    Some(format!("re-used since it was listed (by {id} {ifname})"))
                }
                Ok(Some(_)) if recorded_now(&records, &a.container_id, &a.ifname) => {
                    Some("a record names it by now".to_string())
                }
                Ok(Some(_)) => None,
            };
            if reason.is_some() {
                out.kept.push(item(a, reason));
                continue;
            }
            match s.release(a.ip) {
                Ok(()) => out.released.push(item(a, None)),
                Err(e) => out.errors.push(format!("{} in {network}: {e}", a.ip)),
            }
        }
    }
    out
}

/// Whether a record of `id` names `ifname` now (an unreadable one might: it counts as naming it).
fn recorded_now(records: &RecordStore, id: &str, ifname: &str) -> bool {
    records.entries(Some(id)).iter().any(|e| match &e.record {
        Err(_) => true,
        Ok(r) => {
            r.attachments.is_empty()
                || ifname.is_empty()
                || r.ifname == ifname
                || r.attachments.iter().any(|a| a.ifname == ifname)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn leak_classification() {
        let mut idx = RecordIndex::default();
        let h = |gone| Holder {
            pod: Some("ns/p".into()),
            netns_gone: gone,
        };
        idx.named.insert(("c1".into(), "net1".into()), h(false));
        idx.named.insert(("c2".into(), "eth0".into()), h(true));
        idx.opaque.insert("c3".into());
        use AllocStatus::*;
        for (id, ifname, owned, want) in [
            ("c1", "net1", true, Recorded),
            ("c1", "", true, Recorded), // an id-only file of an older host-local
            ("c1", "net2", true, Leaked),
            ("c9", "eth0", true, Leaked),
            ("c9", "eth0", false, NotRecorded),
            ("c1", "net2", false, NotRecorded),
            ("c3", "eth0", true, RecordUnreadable),
            ("c2", "eth0", true, NetnsGone),
            ("c2", "eth0", false, NetnsGone),
        ] {
            assert_eq!(
                idx.classify(id, ifname, owned).0,
                want,
                "{id} {ifname} {owned}"
            );
        }
        assert_eq!(idx.classify("c1", "net1", true).1.as_deref(), Some("ns/p"));
    }

    fn set(v: Value) -> RangeSet {
        RangeSet::from_raw(&[serde_json::from_value(v).unwrap()]).unwrap()
    }

    #[test]
    fn pool_sizes_follow_host_local() {
        // .1 is the gateway, .255 the broadcast, .0 the network: .2-.254.
        let v4 = set(json!({"subnet": "10.0.0.0/24"}));
        assert_eq!(pool_size(std::slice::from_ref(&v4)), 253);
        assert_eq!(range_labels(std::slice::from_ref(&v4)), [["10.0.0.0/24"]]);
        // A range that leaves the gateway out loses nothing to it.
        let part = set(
            json!({"subnet": "10.0.1.0/24", "rangeStart": "10.0.1.10", "rangeEnd": "10.0.1.20"}),
        );
        assert_eq!(pool_size(std::slice::from_ref(&part)), 11);
        assert_eq!(
            range_labels(std::slice::from_ref(&part)),
            [["10.0.1.0/24 10.0.1.10-10.0.1.20"]]
        );
        // IPv6 has no broadcast: ::1 (gateway) .. ::ff.
        let v6 = set(json!({"subnet": "fd00::/120"}));
        assert_eq!(pool_size(&[v4, v6]), 253 + 254);
    }
}
