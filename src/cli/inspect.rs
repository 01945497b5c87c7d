//! `attache inspect`: what attache has done on this node, read from its records in cacheDir — one row per
//! attachment; the host-local pools those attachments use, with every allocation and whether a record
//! names it; records whose netns is gone; unreadable records. `--gc` releases the leaked addresses, and
//! tears down the records whose netns is gone that no runtime will DEL any more.
//!
//! Nothing is changed without `--gc`, and nothing is created: the pools are read without host-local's
//! lock (a snapshot), and every release is re-checked under the lock. A record is torn down here only
//! when its netns is gone and the runtime's CRI does not list its sandbox (or, with no CRI to ask, it is
//! older than `--older-than`): the same teardown DEL does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::cni::conf::NetConf;
use crate::cni::skel::{CmdArgs, CniArgs, Command};
use crate::cni::spec::Version;
use crate::engine::chain::NetworkList;
use crate::engine::config::{DEFAULT_CACHE_DIR, DEFAULT_CONF_DIR};
use crate::engine::record::{AttachmentRecord, PodRecord, RecordStore};
use crate::error::{Error, Result};
use crate::ipam::range::{RangeSet, to_u128};
use crate::ipam::store::{self, DiskStore, Store};
use crate::ipam::{Ipam, IpamRelease};
use crate::netns::NetNs;

use super::table::{printable, table};

/// Shown under `attache inspect --help`.
pub const AFTER_HELP: &str = "\
Leaks: a host-local address (a file <dataDir>/<network>/<ip>) whose container and interface no record in \
cacheDir names. Only a network whose addresses attache alone hands out can leak: one attached natively \
(bridge, macvlan, ipvlan, vlan with host-local) that is not the cluster network. In the cluster network, \
and in any network whose plugin attache execs, an address attache did not record may belong to a pod \
attached before attache was installed: it is listed as \"not recorded by attache\" and never released.\n\n\
--gc releases the leaks (after asking on stderr, unless --yes), each under host-local's lock and only if \
its file still names the same container and interface and no record names it by then. A record whose netns \
is gone is torn down as DEL would (its plugins' DELs, node links, addresses) when no runtime will DEL it \
any more: the runtime's CRI (--cri-socket, by default containerd's or CRI-O's socket when present) does not \
list its sandbox; where no CRI answers, when it is older than --older-than seconds. Otherwise it is \
reported and left to the runtime's DEL or GC.\n\n\
Leaks are judged against one cacheDir: where attache configurations with different cacheDirs share a \
network, inspect them all before --gc.";

/// The configuration `attache install` writes, read for its cacheDir when neither option is given.
const INSTALLED_CONF: &str = "00-attache.conflist";
/// The largest configuration file read.
const MAX_CONF: u64 = 1 << 20;

#[derive(clap::Args, Debug, Clone)]
pub struct InspectArgs {
    /// attache's records (the configuration's cacheDir) [default: the installed configuration's
    /// cacheDir, else /var/lib/attache].
    #[arg(long, conflicts_with = "conf")]
    pub cache_dir: Option<PathBuf>,
    /// Take cacheDir from this attache configuration (.conflist or .conf) [default:
    /// /etc/cni/net.d/00-attache.conflist when it exists].
    #[arg(long)]
    pub conf: Option<PathBuf>,
    /// Print one JSON document instead of tables (full container IDs).
    #[arg(long)]
    pub json: bool,
    /// Release the addresses reported as leaked (never the cluster network's, never a record).
    #[arg(long)]
    pub gc: bool,
    /// With --gc: do not ask.
    #[arg(long, requires = "gc")]
    pub yes: bool,
    /// With --gc: the runtime's CRI socket, asked which pod sandboxes it still has [default:
    /// /run/containerd/containerd.sock, else /var/run/crio/crio.sock, when present].
    #[arg(long, requires = "gc")]
    pub cri_socket: Option<PathBuf>,
    /// With --gc, where no CRI answers: tear down records whose netns is gone once they are this many
    /// seconds old (a runtime without CNI GC never sends their DEL after attache was taken off).
    #[arg(long, requires = "gc")]
    pub older_than: Option<u64>,
    /// Where the runtime keeps pods' network namespaces: those no record names are shown as foreign.
    #[arg(long, default_value = "/run/netns")]
    pub netns_dir: PathBuf,
}

/// The network namespaces in `dir` that no record of `report` names, with their interfaces (`lo` aside);
/// those with none are left out. Read only.
fn foreign_netns(dir: &Path, report: &Report) -> Vec<ForeignNetns> {
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
    let Ok(rt) = super::runtime() else {
        return vec![];
    };
    let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let Ok(ns) = NetNs::open(&p) else { continue };
        if named.iter().any(|n| n.same_as(&ns)) {
            continue;
        }
        match rt.block_on(crate::engine::pod::pod_links(&ns)) {
            Ok(links) if !links.is_empty() => out.push(ForeignNetns { netns: p, links }),
            Ok(_) => {}
            Err(e) => tracing::debug!("inspect: {}: {e}", p.display()),
        }
    }
    out
}

/// How long the runtime's CRI has to list its sandboxes.
const CRI_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How `--gc` tells that no runtime will DEL a record whose netns is gone.
enum Judge {
    /// These sandboxes exist (the CRI at this socket says): a record of any other is an orphan.
    Cri(HashSet<String>, PathBuf),
    /// Older than this many seconds.
    Age(u64),
    /// No way to tell: none is torn down.
    Unknown(String),
}

impl Judge {
    fn of(args: &InspectArgs) -> Judge {
        let socket = args.cri_socket.clone().or_else(crate::cri::default_socket);
        let why = match &socket {
            Some(p) => {
                match super::runtime()
                    .and_then(|rt| rt.block_on(crate::cri::sandbox_ids(p, CRI_TIMEOUT)))
                {
                    Ok(ids) => return Judge::Cri(ids, p.clone()),
                    Err(e) => e.to_string(),
                }
            }
            None => "no CRI socket (--cri-socket)".to_string(),
        };
        match args.older_than {
            Some(age) => Judge::Age(age),
            None => Judge::Unknown(why),
        }
    }

    /// Whether no runtime will DEL this record any more (its netns is gone).
    fn orphaned(&self, r: &StaleRecord) -> bool {
        match self {
            Judge::Cri(ids, _) => !ids.contains(&r.container_id),
            Judge::Age(min) => r.age_seconds.is_some_and(|a| a >= *min),
            Judge::Unknown(_) => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            Judge::Cri(ids, p) => format!(
                "the runtime at {} lists {} sandbox{}",
                p.display(),
                ids.len(),
                plural_es(ids.len())
            ),
            Judge::Age(a) => format!("older than {a}s (--older-than)"),
            Judge::Unknown(why) => {
                format!("{why}, and no --older-than: records whose netns is gone are kept")
            }
        }
    }
}

/// Run with the process's stdin (for the confirmation) and stderr.
pub fn run(args: &InspectArgs, out: &mut dyn Write) -> Result<()> {
    run_with(
        args,
        out,
        &mut std::io::stdin().lock(),
        &mut std::io::stderr().lock(),
    )
}

/// Run with the confirmation read from `input` and the question written to `err`.
pub fn run_with(
    args: &InspectArgs,
    out: &mut dyn Write,
    input: &mut dyn BufRead,
    err: &mut dyn Write,
) -> Result<()> {
    let (cache_dir, source) = resolve_cache_dir(args)?;
    let mut report = Report::gather(&cache_dir, source, SystemTime::now());
    report.foreign = foreign_netns(&args.netns_dir, &report);
    let w = |e| Error::io("writing the report", e);
    if !args.gc {
        return if args.json {
            write_json(out, &report, None)
        } else {
            out.write_all(report.table().as_bytes()).map_err(w)
        };
    }
    if !args.json {
        out.write_all(report.table().as_bytes()).map_err(w)?;
    }
    let leaks = report.leaks();
    let judge = match report.stale_records.is_empty() {
        true => Judge::Unknown("no record whose netns is gone".into()),
        false => Judge::of(args),
    };
    let orphans: Vec<&StaleRecord> = report
        .stale_records
        .iter()
        .filter(|r| judge.orphaned(r))
        .collect();
    let confirmed = if (leaks.is_empty() && orphans.is_empty()) || args.yes {
        true
    } else {
        // The list goes where the question goes when stdout carries the JSON document.
        let shown: &mut dyn Write = if args.json { &mut *err } else { &mut *out };
        if !orphans.is_empty() {
            writeln!(
                shown,
                "\nwill tear down, as DEL would ({}):",
                judge.describe()
            )
            .map_err(w)?;
            for r in &orphans {
                writeln!(shown, "  {}", orphan_line(r)).map_err(w)?;
            }
        }
        if !leaks.is_empty() {
            writeln!(shown, "\nwill release:").map_err(w)?;
            for (pool, a) in &leaks {
                writeln!(shown, "  {}", leak_line(pool, a)).map_err(w)?;
            }
        }
        write!(
            err,
            "tear down {} record{} and release {} leaked address{}? [y/N] ",
            orphans.len(),
            plural_s(orphans.len()),
            leaks.len(),
            plural_es(leaks.len())
        )
        .map_err(w)?;
        err.flush().map_err(w)?;
        confirm(input)
    };
    let (outcome, torn) = if confirmed {
        // The orphans first: their teardown releases their addresses as DEL does.
        let torn = tear_down(args, &report, &orphans);
        (release(&report, &leaks), torn)
    } else {
        (GcReport::default(), TornDown::default())
    };
    let gc = GcReport {
        confirmed,
        stale_records_kept: report.stale_records.len() - torn.records.len(),
        torn_down: torn.records,
        stale_records_judged_by: judge.describe(),
        errors: outcome.errors.into_iter().chain(torn.errors).collect(),
        ..outcome
    };
    if args.json {
        write_json(out, &report, Some(&gc))?;
    } else {
        out.write_all(gc.table(leaks.len()).as_bytes()).map_err(w)?;
    }
    if gc.errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Ipam(format!(
            "--gc: {} address{} could not be released: {}",
            gc.errors.len(),
            plural_es(gc.errors.len()),
            gc.errors.join("; ")
        )))
    }
}

/// `--cache-dir`, else the cacheDir of `--conf` (or of the installed configuration), else the default.
fn resolve_cache_dir(args: &InspectArgs) -> Result<(PathBuf, String)> {
    if let Some(d) = &args.cache_dir {
        return Ok((d.clone(), "--cache-dir".into()));
    }
    let (conf, explicit) = match &args.conf {
        Some(c) => (c.clone(), true),
        None => (Path::new(DEFAULT_CONF_DIR).join(INSTALLED_CONF), false),
    };
    let bytes = match crate::files::read_bounded(&conf, MAX_CONF) {
        Ok(b) => b,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((DEFAULT_CACHE_DIR.into(), "the default".into()));
        }
        Err(e) => return Err(Error::io(format!("reading {}", conf.display()), e)),
    };
    let v: Value = serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
        what: conf.display().to_string(),
        source,
    })?;
    Ok((cache_dir_of(&v, &conf)?, conf.display().to_string()))
}

/// attache's plugin in a conf or conflist.
fn attache_plugin(v: &Value) -> Option<&Value> {
    let is_attache =
        |p: &&Value| p.get("type").and_then(Value::as_str) == Some(crate::engine::META_NAME);
    match v.get("plugins").and_then(Value::as_array) {
        Some(list) => list.iter().find(is_attache),
        None => Some(v).filter(is_attache),
    }
}

/// The cacheDir of attache's plugin in a conf or conflist.
pub fn cache_dir_of(v: &Value, file: &Path) -> Result<PathBuf> {
    let plugin = attache_plugin(v).ok_or_else(|| {
        Error::config(format!(
            "{} has no plugin of type {:?}",
            file.display(),
            crate::engine::META_NAME
        ))
    })?;
    match plugin.get("cacheDir") {
        None | Some(Value::Null) => Ok(DEFAULT_CACHE_DIR.into()),
        Some(Value::String(d)) if Path::new(d).is_absolute() => Ok(d.into()),
        Some(other) => Err(Error::config(format!(
            "{}: cacheDir must be an absolute path, got {other}",
            file.display()
        ))),
    }
}

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
    fn label(self) -> &'static str {
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

#[derive(Default)]
struct TornDown {
    records: Vec<TornRecord>,
    errors: Vec<String>,
}

/// The configuration a teardown runs with: the installed (or `--conf`) one, read leniently as DEL reads
/// it — its `binDir` finds delegated plugins; without one, the defaults.
fn teardown_conf(args: &InspectArgs, cache_dir: &Path) -> crate::engine::config::AttacheConf {
    let file = args
        .conf
        .clone()
        .unwrap_or_else(|| Path::new(DEFAULT_CONF_DIR).join(INSTALLED_CONF));
    let plugin = crate::files::read_bounded(&file, MAX_CONF)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| attache_plugin(&v).cloned())
        .unwrap_or_else(|| serde_json::json!({}));
    let mut raw = plugin.as_object().cloned().unwrap_or_default();
    raw.insert("cniVersion".into(), "1.1.0".into());
    raw.insert("type".into(), crate::engine::META_NAME.into());
    raw.entry("name").or_insert_with(|| "attache".into());
    raw.insert("cacheDir".into(), cache_dir.display().to_string().into());
    let conf = NetConf::from_value(Value::Object(raw)).unwrap_or_else(|_| {
        NetConf::from_value(serde_json::json!({
            "cniVersion": "1.1.0", "name": "attache", "type": crate::engine::META_NAME,
            "cacheDir": cache_dir
        }))
        .expect("a literal configuration")
    });
    crate::engine::config::AttacheConf::for_teardown(&conf)
}

/// Tear down the orphaned records as DEL would, each only if it is still there and its netns still gone.
fn tear_down(args: &InspectArgs, report: &Report, orphans: &[&StaleRecord]) -> TornDown {
    let mut out = TornDown::default();
    if orphans.is_empty() {
        return out;
    }
    let ac = teardown_conf(args, &report.cache_dir);
    let store = RecordStore::new(&report.cache_dir);
    // Where delegated plugins are looked for besides binDir: CNI_PATH if set, else the usual place.
    let cni_path: Vec<PathBuf> = std::env::var("CNI_PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_else(|| vec![PathBuf::from("/opt/cni/bin")]);
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            out.errors.push(e.to_string());
            return out;
        }
    };
    for o in orphans {
        let what = format!("container {} {}", short_id(&o.container_id), o.ifname);
        let rec = match store.load(&o.container_id, &o.ifname) {
            Ok(Some(r)) if r.netns.as_deref().is_some_and(netns_gone) => r,
            Ok(_) => continue, // gone meanwhile (a DEL), or its netns is back: not an orphan
            Err(e) => {
                out.errors.push(format!("{what}: {e}"));
                continue;
            }
        };
        match rt.block_on(crate::engine::meta::teardown_orphan(
            &ac, &store, &rec, &cni_path,
        )) {
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

fn orphan_line(r: &StaleRecord) -> String {
    format!(
        "{} container {} {} (netns {} gone, record {} old)",
        r.pod.as_deref().unwrap_or("(no pod)"),
        short_id(&r.container_id),
        r.ifname,
        r.netns
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        r.age_seconds.map(human_age).unwrap_or_else(|| "?".into())
    )
}

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
    rec.pod
        .as_ref()
        .map(|p| format!("{}/{}", p.namespace, p.name))
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
    let Ok(list) = NetworkList::from_value(&a.conf, &Version::V1_1_0.to_string()) else {
        return vec![];
    };
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
    let Ok(list) = NetworkList::from_value(&a.conf, &Version::V1_1_0.to_string()) else {
        return vec![];
    };
    list.plugins
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
        let mut cluster_refs: std::collections::BTreeSet<(PathBuf, String)> = Default::default();
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
    let types: Vec<String> = match NetworkList::from_value(&a.conf, &Version::V1_1_0.to_string()) {
        Ok(list) => (0..list.plugins.len())
            .map(|i| list.plugin_type(i).to_string())
            .collect(),
        Err(_) => vec![],
    };
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
            plural_s(outside)
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
fn release(report: &Report, leaks: &[(&Pool, &Allocation)]) -> GcReport {
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

/// A yes from the operator: `y` or `yes`, any case. End of input is no.
fn confirm(input: &mut dyn BufRead) -> bool {
    let mut line = String::new();
    match input.take(256).read_line(&mut line) {
        Ok(_) => matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
        Err(_) => false,
    }
}

fn write_json(out: &mut dyn Write, report: &Report, gc: Option<&GcReport>) -> Result<()> {
    #[derive(Serialize)]
    struct Doc<'a> {
        #[serde(flatten)]
        report: &'a Report,
        #[serde(skip_serializing_if = "Option::is_none")]
        gc: Option<&'a GcReport>,
    }
    serde_json::to_writer_pretty(&mut *out, &Doc { report, gc })
        .map_err(|e| Error::Internal(format!("writing JSON: {e}")))?;
    writeln!(out).map_err(|e| Error::io("writing the report", e))
}

/// An age as people read it: 5s, 3m, 2h, 4d.
pub fn human_age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn short_id(id: &str) -> String {
    printable(&id.chars().take(12).collect::<String>())
}

/// `-` for nothing.
fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        printable(s)
    }
}

fn plural_s(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn plural_es(n: usize) -> &'static str {
    if n == 1 { "" } else { "es" }
}

fn leak_line(pool: &Pool, a: &Allocation) -> String {
    format!(
        "{} in {} ({}), held for container {} {}",
        a.ip,
        pool.network,
        pool.data_dir.display(),
        short_id(&a.container_id),
        dash(&a.ifname)
    )
}

impl Report {
    /// The human report.
    pub fn table(&self) -> String {
        let mut out = format!(
            "cacheDir {} (from {})\n",
            self.cache_dir.display(),
            self.cache_dir_from
        );
        if self.attachments.is_empty() && self.unreadable_records.is_empty() {
            out.push_str("no attachments\n");
            out.push_str(&self.foreign_table());
            return out;
        }
        out.push_str("\nATTACHMENTS\n");
        let rows: Vec<Vec<String>> = self
            .attachments
            .iter()
            .map(|a| {
                vec![
                    dash(a.pod.as_deref().unwrap_or_default()),
                    short_id(&a.container_id),
                    a.ifname.clone(),
                    a.network.clone(),
                    dash(&a.types.join(",")),
                    a.run.to_string(),
                    dash(&a.ips.join(",")),
                    dash(a.mac.as_deref().unwrap_or_default()),
                    a.age_seconds.map(human_age).unwrap_or_else(|| "-".into()),
                    a.state.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "POD",
                "CONTAINER",
                "IFACE",
                "NETWORK",
                "TYPE",
                "RUN",
                "IPS",
                "MAC",
                "AGE",
                "STATE",
            ],
            &rows,
        ));
        if !self.pools.is_empty() {
            out.push_str("\nHOST-LOCAL POOLS\n");
            let rows: Vec<Vec<String>> = self
                .pools
                .iter()
                .map(|p| {
                    let n =
                        |v: Option<u128>| v.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
                    vec![
                        p.network.clone(),
                        p.owner.to_string(),
                        dash(
                            &p.ranges
                                .iter()
                                .map(|s| s.join("+"))
                                .collect::<Vec<_>>()
                                .join(", "),
                        ),
                        p.used.to_string(),
                        n(p.free),
                        p.leaked.to_string(),
                        p.unrecorded.to_string(),
                        p.data_dir.display().to_string(),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "NETWORK",
                    "OWNER",
                    "RANGES",
                    "USED",
                    "FREE",
                    "LEAKED",
                    "NOT-RECORDED",
                    "DATADIR",
                ],
                &rows,
            ));
            for p in &self.pools {
                if !p.shared_by.is_empty() {
                    out.push_str(&format!(
                        "  {}: shared ({}): addresses attache did not record here may predate it; listed, never released\n",
                        p.network,
                        p.shared_by.join(", ")
                    ));
                }
                for note in &p.notes {
                    out.push_str(&format!("  {}: {note}\n", p.network));
                }
            }
            let rows: Vec<Vec<String>> = self
                .pools
                .iter()
                .flat_map(|p| {
                    p.allocations.iter().map(|a| {
                        let mut status = a.status.label().to_string();
                        if !a.in_ranges {
                            status.push_str(" (outside the ranges)");
                        }
                        vec![
                            p.network.clone(),
                            a.ip.to_string(),
                            short_id(&a.container_id),
                            dash(&a.ifname),
                            dash(a.pod.as_deref().unwrap_or_default()),
                            status,
                        ]
                    })
                })
                .collect();
            if !rows.is_empty() {
                out.push_str("\nALLOCATIONS\n");
                out.push_str(&table(
                    &["NETWORK", "IP", "CONTAINER", "IFACE", "POD", "STATUS"],
                    &rows,
                ));
            }
        }
        if !self.cluster_pools.is_empty() {
            out.push_str("\nATTACHE-IPAM POOLS (this node's blocks; `attache ipam inspect` for the cluster)\n");
            let rows: Vec<Vec<String>> = self
                .cluster_pools
                .iter()
                .flat_map(|p| {
                    p.blocks.iter().map(move |b| {
                        vec![
                            p.pool.clone(),
                            p.data_dir.display().to_string(),
                            b.cidr.clone(),
                            b.used.to_string(),
                            b.lent.to_string(),
                            b.free.to_string(),
                        ]
                    })
                })
                .collect();
            out.push_str(&table(
                &["POOL", "DATADIR", "BLOCK", "USED", "LENT", "FREE"],
                &rows,
            ));
            for p in &self.cluster_pools {
                if let Some(e) = &p.error {
                    out.push_str(&format!("  {}: {e}\n", p.pool));
                }
                for a in &p.not_recorded {
                    out.push_str(&format!(
                        "  {} {} {}/{} ({}): not recorded in this cacheDir\n",
                        p.pool,
                        a.ip,
                        short_id(&a.container_id),
                        dash(&a.ifname),
                        a.pod.as_deref().unwrap_or("-")
                    ));
                }
            }
        }
        if !self.stale_records.is_empty() {
            out.push_str("\nRECORDS WHOSE NETNS IS GONE\n");
            let rows: Vec<Vec<String>> = self
                .stale_records
                .iter()
                .map(|s| {
                    vec![
                        dash(s.pod.as_deref().unwrap_or_default()),
                        short_id(&s.container_id),
                        s.ifname.clone(),
                        s.netns
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "-".into()),
                        s.age_seconds.map(human_age).unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            out.push_str(&table(
                &["POD", "CONTAINER", "IFACE", "NETNS", "AGE"],
                &rows,
            ));
            out.push_str(
                "  the runtime tears these down (its DEL, or GC when the pod is gone); inspect --gc leaves them\n",
            );
        }
        if !self.unreadable_records.is_empty() {
            out.push_str("\nUNREADABLE RECORDS\n");
            let rows: Vec<Vec<String>> = self
                .unreadable_records
                .iter()
                .map(|u| vec![u.record.display().to_string(), u.reason.clone()])
                .collect();
            out.push_str(&table(&["RECORD", "REASON"], &rows));
        }
        let leaked: usize = self.pools.iter().map(|p| p.leaked).sum();
        let unrecorded: usize = self.pools.iter().map(|p| p.unrecorded).sum();
        out.push_str(&format!(
            "\n{} attachment{} in {} record{}; {} with its netns gone; {leaked} leaked address{}{}; {unrecorded} not recorded by attache in shared pools\n",
            self.attachments.len(),
            plural_s(self.attachments.len()),
            self.attachments
                .iter()
                .map(|a| &a.record)
                .collect::<HashSet<_>>()
                .len(),
            plural_s(
                self.attachments
                    .iter()
                    .map(|a| &a.record)
                    .collect::<HashSet<_>>()
                    .len()
            ),
            self.stale_records.len(),
            plural_es(leaked),
            match leaked {
                0 => "",
                1 => " (attache inspect --gc releases it)",
                _ => " (attache inspect --gc releases them)",
            },
        ));
        out.push_str(&self.foreign_table());
        out
    }

    /// The pods' namespaces no record names, one row per interface.
    fn foreign_table(&self) -> String {
        if self.foreign.is_empty() {
            return String::new();
        }
        let rows: Vec<Vec<String>> = self
            .foreign
            .iter()
            .flat_map(|f| {
                f.links.iter().map(|l| {
                    vec![
                        f.netns.display().to_string(),
                        printable(&l.name),
                        dash(l.kind.as_deref().unwrap_or_default()),
                        dash(&l.addresses.join(",")),
                    ]
                })
            })
            .collect();
        format!(
            "\nFOREIGN (pods' network namespaces no record names: attached by another plugin, such as Multus before the node moved to attache, or their record was lost; a DEL of the pod re-plans and tears them down)\n{}",
            table(&["NETNS", "IFACE", "KIND", "IPS"], &rows)
        )
    }
}

impl GcReport {
    fn table(&self, leaks: usize) -> String {
        let mut out = String::from("\nGC\n");
        if !self.confirmed {
            out.push_str("not confirmed: nothing released, nothing torn down\n");
        } else if leaks == 0 {
            out.push_str("nothing leaked: nothing to release\n");
        }
        for r in &self.released {
            out.push_str(&format!(
                "released {} in {} (container {} {})\n",
                r.ip,
                r.network,
                short_id(&r.container_id),
                dash(&r.ifname)
            ));
        }
        for k in &self.kept {
            out.push_str(&format!(
                "kept {} in {}: {}\n",
                k.ip,
                k.network,
                k.reason.as_deref().unwrap_or_default()
            ));
        }
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        for t in &self.torn_down {
            out.push_str(&format!(
                "tore down {} container {} {}: no runtime will DEL it\n",
                t.pod.as_deref().unwrap_or("(no pod)"),
                short_id(&t.container_id),
                t.ifname
            ));
        }
        if self.stale_records_kept > 0 {
            out.push_str(&format!(
                "{} record{} whose netns is gone left alone ({}): the runtime's DEL or GC tears {} down\n",
                self.stale_records_kept,
                plural_s(self.stale_records_kept),
                self.stale_records_judged_by,
                if self.stale_records_kept == 1 {
                    "it"
                } else {
                    "them"
                }
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::record::PodRef;
    use serde_json::json;

    #[test]
    fn ages_read_as_people_say_them() {
        for (secs, want) in [
            (0, "0s"),
            (5, "5s"),
            (59, "59s"),
            (60, "1m"),
            (3599, "59m"),
            (7200, "2h"),
            (86399, "23h"),
            (4 * 86400 + 5, "4d"),
        ] {
            assert_eq!(human_age(secs), want, "{secs}");
        }
    }

    #[test]
    fn tables_align_and_show_no_escape_sequences() {
        let t = table(
            &["IP", "CONTAINER", "STATUS"],
            &[
                vec!["10.0.0.2".into(), "abc".into(), "ok".into()],
                vec!["10.0.0.10".into(), "x\u{1b}[2J".into(), "LEAKED".into()],
            ],
        );
        assert_eq!(
            t,
            "IP         CONTAINER  STATUS\n\
             10.0.0.2   abc        ok\n\
             10.0.0.10  x?[2J      LEAKED\n"
        );
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(dash(""), "-");
    }

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

    #[test]
    fn cache_dir_from_a_configuration() {
        let f = Path::new("/x/00-attache.conflist");
        let conflist = json!({"cniVersion": "1.0.0", "name": "attache", "plugins": [
            {"type": "attache", "cacheDir": "/var/lib/elsewhere"}, {"type": "portmap"}]});
        assert_eq!(
            cache_dir_of(&conflist, f).unwrap(),
            PathBuf::from("/var/lib/elsewhere")
        );
        let conf = json!({"cniVersion": "1.0.0", "name": "attache", "type": "attache"});
        assert_eq!(
            cache_dir_of(&conf, f).unwrap(),
            PathBuf::from(DEFAULT_CACHE_DIR)
        );
        let e = cache_dir_of(&json!({"plugins": [{"type": "ptp"}]}), f).unwrap_err();
        assert!(e.to_string().contains("no plugin of type"), "{e}");
        assert!(cache_dir_of(&json!({"type": "attache", "cacheDir": "rel"}), f).is_err());
    }

    /// A record of one pod: the cluster network (exec'd ptp, host-local `cluster`) and a native bridge
    /// (host-local `blue`), both in `ipam`.
    fn record(ipam: &Path, id: &str, pod: &str, netns: &str, ips: [&str; 2]) -> PodRecord {
        let chain = |name: &str, t: &str, subnet: &str| {
            json!({"cniVersion": "1.0.0", "name": name, "plugins": [
                {"type": t, "ipam": {"type": "host-local", "subnet": subnet, "dataDir": ipam}}]})
        };
        let result = |ifname: &str, mac: &str, ip: &str| {
            json!({"cniVersion": "1.1.0",
                   "interfaces": [{"name": "veth1", "mac": "00:00:00:00:00:01"},
                                  {"name": ifname, "mac": mac, "sandbox": netns}],
                   "ips": [{"address": ip, "interface": 1}]})
        };
        let att = |network: &str, ifname: &str, conf: Value, result: Value| AttachmentRecord {
            network: network.into(),
            ifname: ifname.into(),
            driver: "chain".into(),
            conf,
            runtime_config: Map::new(),
            cni_args: Default::default(),
            link_group: None,
            default_route: vec![],
            device_id: None,
            device_info: None,
            result: Some(
                crate::cni::spec::CniResult::from_value(&result, Version::V1_1_0).unwrap(),
            ),
        };
        let mut r = PodRecord::new(id, "eth0", Some(Path::new(netns)));
        r.network = "attache".into();
        r.pod = Some(PodRef {
            namespace: "team-a".into(),
            name: pod.into(),
            uid: String::new(),
        });
        r.complete = true;
        r.attachments = vec![
            att(
                "cluster",
                "eth0",
                chain("cluster", "ptp", "10.77.0.0/24"),
                result("eth0", "0a:00:00:00:00:01", ips[0]),
            ),
            att(
                "team-a/blue",
                "net1",
                chain("blue", "bridge", "10.21.0.0/24"),
                result("net1", "0a:00:00:00:00:02", ips[1]),
            ),
        ];
        r
    }

    fn hold(ipam: &Path, network: &str, ip: &str, content: &str) {
        std::fs::create_dir_all(ipam.join(network)).unwrap();
        std::fs::write(ipam.join(network).join(ip), content).unwrap();
    }

    fn args(cache: &Path) -> InspectArgs {
        InspectArgs {
            cache_dir: Some(cache.to_path_buf()),
            conf: None,
            json: false,
            gc: false,
            yes: false,
            // No runtime to ask: records whose netns is gone are kept unless a test says otherwise.
            cri_socket: Some(cache.join("no-cri.sock")),
            older_than: None,
            netns_dir: cache.join("no-netns"),
        }
    }

    fn run_str(a: &InspectArgs, stdin: &str) -> (Result<()>, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let r = run_with(a, &mut out, &mut stdin.as_bytes(), &mut err);
        (
            r,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn report_leaks_and_gc() {
        let d = crate::testutil::tempdir("inspect");
        let (cache, ipam) = (d.join("cache"), d.join("ipam"));
        // A missing cacheDir is an empty node, not an error.
        let (r, out, _) = run_str(&args(&cache), "");
        r.unwrap();
        assert!(out.contains("no attachments"), "{out}");

        let store = RecordStore::new(&cache);
        let live = record(
            &ipam,
            "aaaa00000000live",
            "web-0",
            "/proc/self/ns/net",
            ["10.77.0.2/24", "10.21.0.2/24"],
        );
        let gone = record(
            &ipam,
            "bbbb00000000gone",
            "web-1",
            "/nonexistent/netns",
            ["10.77.0.3/24", "10.21.0.3/24"],
        );
        store.save(&live).unwrap();
        store.save(&gone).unwrap();
        for (ip, id, ifname) in [
            ("10.77.0.2", "aaaa00000000live", "eth0"),
            ("10.21.0.2", "aaaa00000000live", "net1"),
            ("10.77.0.3", "bbbb00000000gone", "eth0"),
            ("10.21.0.3", "bbbb00000000gone", "net1"),
        ] {
            hold(
                &ipam,
                if ip.starts_with("10.77") {
                    "cluster"
                } else {
                    "blue"
                },
                ip,
                &format!("{id}\r\n{ifname}"),
            );
        }
        hold(&ipam, "blue", "10.21.0.9", "deadbeef0000leak\r\nnet1");
        hold(&ipam, "blue", "10.21.0.10", "cccc0000000unread\r\nnet1");
        hold(&ipam, "cluster", "10.77.0.50", "preattache000000\r\neth0");
        // A record that cannot be read protects its container's addresses.
        std::fs::create_dir_all(cache.join("cccc0000000unread")).unwrap();
        std::fs::write(cache.join("cccc0000000unread/eth0.json"), "{").unwrap();

        let (r, out, _) = run_str(&args(&cache), "");
        r.unwrap();
        for want in [
            "team-a/web-0  aaaa00000000  eth0   cluster",
            "10.77.0.2/24",
            "0a:00:00:00:00:02",
            "team-a/blue",
            "bridge",
            "native",
            "ptp",
            "exec",
            "netns-gone",
            "blue     attache  10.21.0.0/24  4     249   1",
            "cluster  shared   10.77.0.0/24  3     250   0       1",
            "10.21.0.9   deadbeef0000  net1   -             LEAKED",
            "10.77.0.50  preattache00  eth0   -             not recorded by attache",
            "record unreadable",
            "/nonexistent/netns",
            "UNREADABLE RECORDS",
            "1 leaked address (attache inspect --gc releases it)",
        ] {
            assert!(out.contains(want), "{want:?} missing in\n{out}");
        }

        // JSON: the same facts, full IDs.
        let mut a = args(&cache);
        a.json = true;
        let (r, out, _) = run_str(&a, "");
        r.unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["attachments"].as_array().unwrap().len(), 4);
        assert_eq!(v["attachments"][0]["container_id"], "aaaa00000000live");
        assert_eq!(v["attachments"][1]["ips"], json!(["10.21.0.2/24"]));
        assert_eq!(v["stale_records"][0]["container_id"], "bbbb00000000gone");
        assert_eq!(v["unreadable_records"].as_array().unwrap().len(), 1);
        let blue = &v["pools"][0];
        assert_eq!(
            (
                blue["network"].as_str(),
                blue["used"].as_u64(),
                blue["free"].as_u64()
            ),
            (Some("blue"), Some(4), Some(249))
        );

        // --gc, declined: nothing goes.
        let mut a = args(&cache);
        a.gc = true;
        let (r, out, err) = run_str(&a, "n\n");
        r.unwrap();
        assert!(err.contains("release 1 leaked address? [y/N]"), "{err}");
        assert!(out.contains("will release:\n  10.21.0.9 in blue"), "{out}");
        assert!(out.contains("not confirmed: nothing released"), "{out}");
        assert!(ipam.join("blue/10.21.0.9").exists());

        // Re-used between the listing and the lock: kept.
        let report = Report::gather(&cache, String::new(), SystemTime::now());
        let leaks = report.leaks();
        hold(&ipam, "blue", "10.21.0.9", "newcomer00000000\r\nnet1");
        let g = release(&report, &leaks);
        assert!(g.released.is_empty());
        assert!(
            g.kept[0].reason.as_deref().unwrap().contains("re-used"),
            "{g:?}"
        );
        hold(&ipam, "blue", "10.21.0.9", "deadbeef0000leak\r\nnet1");

        // --gc --yes: exactly the leak goes.
        a.yes = true;
        a.json = true;
        let (r, out, err) = run_str(&a, "");
        r.unwrap();
        assert!(err.is_empty(), "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["gc"]["released"][0]["ip"], "10.21.0.9");
        assert_eq!(v["gc"]["stale_records_kept"], 1);
        assert!(!ipam.join("blue/10.21.0.9").exists());
        for kept in [
            "blue/10.21.0.2",
            "blue/10.21.0.3",
            "blue/10.21.0.10",
            "cluster/10.77.0.50",
            "cluster/10.77.0.3",
        ] {
            assert!(ipam.join(kept).exists(), "{kept}");
        }
        assert!(
            cache.join("bbbb00000000gone/eth0.json").exists(),
            "records are never removed"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
