//! The meta-plugin's commands. ADD: plan and validate everything ([`plan`]), write the record, then attach
//! the cluster network as `CNI_IFNAME` and the pod's other networks in order, move the default route
//! where `default-route` asks, report network-status — undoing all of it in reverse if any step fails. DEL: tear down from the record — no API, no config, no netns needed — and forget the
//! record only when everything is gone. CHECK, STATUS and GC follow the same records.

use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;

use crate::cni::conf::NetConf;
use crate::cni::skel::{CmdArgs, Command};
use crate::cni::spec::{CniResult, Route, Version};
use crate::delegate::Invocation;
use crate::engine::chain::NetworkList;
use crate::engine::config::AttacheConf;
use crate::engine::plan;
use crate::engine::record::{AttachmentRecord, PodRecord, RecordStore};
use crate::error::{Error, Result};
use crate::k8s::annotation::{NetworkStatus, status_of};
use crate::netns::NetNs;

pub async fn run(args: &CmdArgs, conf: NetConf) -> Result<Option<Value>> {
    let ac = AttacheConf::from_conf(&conf)?;
    super::init_logging(ac.log_file.as_deref(), ac.log_level);
    tracing::info!(
        command = args.command.as_str(),
        container = %args.container_id,
        ifname = %args.ifname,
        "attache"
    );
    let store = RecordStore::new(&ac.cache_dir);
    match args.command {
        Command::Add => add(args, &conf, &ac, &store).await.map(Some),
        Command::Del => del(args, &conf, &ac, &store).await.map(|_| None),
        Command::Check => check(args, &conf, &ac, &store).await.map(|_| None),
        Command::Status => status(args, &conf, &ac).await.map(|_| None),
        Command::Gc => gc(args, &conf, &ac, &store).await.map(|_| None),
        Command::Version => Err(Error::Internal("VERSION is answered by skel".into())),
    }
}

/// ADD and CHECK need a real netns that is not attache's own (the reference skel's guard against
/// configuring the host by mistake; `CNI_NETNS_OVERRIDE=1` lifts it).
fn open_pod_netns(args: &CmdArgs) -> Result<NetNs> {
    let path = args
        .netns
        .as_deref()
        .ok_or_else(|| Error::InvalidEnv("CNI_NETNS is required".into()))?;
    let ns = NetNs::open(path)?;
    let overridden = std::env::var("CNI_NETNS_OVERRIDE").is_ok_and(|v| v == "1" || v == "true");
    if !overridden && ns.same_as(&NetNs::current()?) {
        return Err(Error::NetNs {
            path: path.to_path_buf(),
            reason: "it is the namespace attache itself runs in, not a pod's".into(),
        });
    }
    Ok(ns)
}

async fn add(
    args: &CmdArgs,
    conf: &NetConf,
    ac: &AttacheConf,
    store: &RecordStore,
) -> Result<Value> {
    let _netns = open_pod_netns(args)?;
    if let Some(old) = store.load(&args.container_id, &args.ifname)? {
        if old.complete {
            return Err(Error::Internal(format!(
                "container {} already has an attachment {}; DEL it before adding it again",
                args.container_id, args.ifname
            )));
        }
        // A previous ADD died half-way: finish undoing it before starting again.
        tracing::warn!("found an incomplete record from an interrupted ADD; tearing it down first");
        teardown(args, ac, store, &old).await?;
    }
    let planned = plan::plan(args, conf, ac).await?;
    let mut rec = PodRecord::new(&args.container_id, &args.ifname, args.netns.as_deref());
    rec.pod = planned.pod_ref();
    rec.attachments = planned.attachments;
    store.save(&rec)?;

    for i in 0..rec.attachments.len() {
        match attach_add(args, ac, &rec.attachments[i]).await {
            Ok(res) => {
                rec.attachments[i].result = Some(res.to_value(Version::V1_1_0));
                store.save(&rec)?;
            }
            Err(e) => {
                let err = e.context(format!(
                    "attaching network {:?}",
                    rec.attachments[i].network
                ));
                // The failed attachment has already undone itself; undo the ones before it, newest first.
                // If that fails too, the record stays so that the runtime's DEL can finish the job.
                rec.attachments.truncate(i);
                if let Err(undo) = teardown(args, ac, store, &rec).await {
                    tracing::error!("rollback after failed ADD left something behind: {undo}");
                }
                return Err(err);
            }
        }
    }
    if let Err(e) = apply_default_routes(args, &mut rec).await {
        let err = e.context("moving the default route");
        if let Err(undo) = teardown(args, ac, store, &rec).await {
            tracing::error!("rollback after failed ADD left something behind: {undo}");
        }
        return Err(err);
    }
    rec.complete = true;
    store.save(&rec)?;
    if let (Some(api), Some(pod)) = (&planned.api, &planned.pod) {
        let status = network_status(&rec);
        if let Err(e) = api.set_network_status(pod, &status).await {
            tracing::warn!("could not write the network-status annotation: {e}");
        }
        for st in status.iter().skip(1) {
            let msg = format!(
                "Add {} [{}] from {}",
                st.interface,
                st.ips.join(","),
                st.name
            );
            if let Err(e) = api.event(pod, "AddedInterface", &msg).await {
                tracing::warn!("could not record an event: {e}");
            }
        }
    }
    // The result is the cluster network's, as Multus returns it.
    let cluster = result_of(&rec.attachments[0])?.unwrap_or_default();
    Ok(cluster.to_value(conf.version))
}

/// `default-route`: the pod's default route of a family goes to the selected attachment's gateway, off
/// every other interface; the recorded results say so too.
async fn apply_default_routes(args: &CmdArgs, rec: &mut PodRecord) -> Result<()> {
    let Some(netns) = args.netns.as_deref() else {
        return Ok(());
    };
    let wanted: Vec<(usize, IpAddr)> = rec
        .attachments
        .iter()
        .enumerate()
        .flat_map(|(i, a)| a.default_route.iter().map(move |gw| (i, *gw)))
        .collect();
    for (target, gw) in wanted {
        crate::attach::move_default_route(netns, &rec.attachments[target].ifname, gw).await?;
        for (i, a) in rec.attachments.iter_mut().enumerate() {
            let Some(mut res) = a
                .result
                .as_ref()
                .map(|v| CniResult::from_value(v, Version::V1_1_0))
                .transpose()?
            else {
                continue;
            };
            res.routes
                .retain(|r| !(r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == gw.is_ipv4()));
            if i == target {
                let dst = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                res.routes
                    .push(Route::new(dst.parse().expect("literal"), Some(gw)));
            }
            a.result = Some(res.to_value(Version::V1_1_0));
        }
    }
    Ok(())
}

/// The network-status annotation: one entry per attachment, the cluster network's marked default.
pub fn network_status(rec: &PodRecord) -> Vec<NetworkStatus> {
    rec.attachments
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let res = result_of(a).ok().flatten().unwrap_or_default();
            let mut st = status_of(&a.network, &a.ifname, i == 0, &res);
            st.device_info = a.device_info.clone();
            st
        })
        .collect()
}

async fn del(args: &CmdArgs, conf: &NetConf, ac: &AttacheConf, store: &RecordStore) -> Result<()> {
    let rec = match store.load(&args.container_id, &args.ifname) {
        Ok(Some(r)) => r,
        Ok(None) => {
            // No record (ADD never ran, or its DEL already finished): fall back to the configuration and the
            // runtime's prevResult. If even that cannot be had, there is nothing of ours to delete.
            match plan::cluster(args, conf, ac) {
                Ok(mut cluster) => {
                    if let Some(prev) = conf.prev_result()? {
                        cluster.result = Some(prev.to_value(Version::V1_1_0));
                    }
                    let mut r =
                        PodRecord::new(&args.container_id, &args.ifname, args.netns.as_deref());
                    r.attachments = vec![cluster];
                    r
                }
                Err(e) => {
                    tracing::warn!(
                        "DEL without a record and without a usable config ({e}); nothing to do"
                    );
                    return Ok(());
                }
            }
        }
        Err(e) => {
            tracing::warn!("unreadable record ({e}); falling back to the configuration");
            store.remove(&args.container_id, &args.ifname)?;
            let mut r = PodRecord::new(&args.container_id, &args.ifname, args.netns.as_deref());
            r.attachments = vec![plan::cluster(args, conf, ac)?];
            r
        }
    };
    teardown(args, ac, store, &rec).await
}

/// Tear down every attachment of a record, newest first, collecting errors; the record goes only when all
/// succeeded, so a retried DEL can finish the job.
async fn teardown(
    args: &CmdArgs,
    ac: &AttacheConf,
    store: &RecordStore,
    rec: &PodRecord,
) -> Result<()> {
    let mut errors = Vec::new();
    // Several native interfaces in one pod: delete them in one go first (one kernel wait, not one each).
    let grouped = rec
        .attachments
        .iter()
        .filter(|a| {
            a.conf["plugins"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p.get(crate::attach::LINK_GROUP_KEY).is_some())
            })
        })
        .count();
    let netns = args
        .netns
        .as_deref()
        .or(rec.netns.as_deref())
        .filter(|p| p.exists());
    if let Some(ns) = netns
        && grouped >= 2
        && let Err(e) =
            crate::attach::delete_link_group(ns, plan::link_group(&rec.container_id, &rec.ifname))
                .await
    {
        tracing::warn!("deleting the pod's interfaces as a group: {e}; deleting them one by one");
    }
    for a in rec.attachments.iter().rev() {
        if let Err(e) = attach_del(args, ac, rec, a).await {
            errors.push(e.context(format!("detaching network {:?}", a.network)));
        }
    }
    if errors.is_empty() {
        store.remove(&rec.container_id, &rec.ifname)?;
    }
    Error::from_list(errors)
}

async fn check(
    args: &CmdArgs,
    conf: &NetConf,
    ac: &AttacheConf,
    store: &RecordStore,
) -> Result<()> {
    let _netns = open_pod_netns(args)?;
    let rec = match store.load(&args.container_id, &args.ifname)? {
        Some(r) if r.complete => r,
        _ => {
            let prev = conf.prev_result()?.ok_or_else(|| {
                Error::config("CHECK needs prevResult: attache has no record of this attachment")
            })?;
            let mut cluster = plan::cluster(args, conf, ac)?;
            cluster.result = Some(prev.to_value(Version::V1_1_0));
            let mut r = PodRecord::new(&args.container_id, &args.ifname, args.netns.as_deref());
            r.attachments = vec![cluster];
            r
        }
    };
    for a in &rec.attachments {
        attach_check(args, ac, a)
            .await
            .map_err(|e| e.context(format!("checking network {:?}", a.network)))?;
    }
    Ok(())
}

async fn status(args: &CmdArgs, conf: &NetConf, ac: &AttacheConf) -> Result<()> {
    let cluster = ac.cluster_network(&conf.cni_version).map_err(|e| match e {
        Error::Config(m) | Error::Io { context: m, .. } => {
            Error::NotAvailable(format!("the cluster network is not ready: {m}"))
        }
        other => other,
    })?;
    std::fs::create_dir_all(&ac.cache_dir)
        .map_err(|e| Error::NotAvailable(format!("cacheDir {}: {e}", ac.cache_dir.display())))?;
    let path = ac.search_path(&args.path);
    let inv = Invocation::podless(&path);
    cluster.status(&inv).await
}

/// GC: every record whose `(containerID, ifname)` the runtime no longer lists is torn down, then GC is
/// forwarded to the cluster network with the runtime's list.
async fn gc(args: &CmdArgs, conf: &NetConf, ac: &AttacheConf, store: &RecordStore) -> Result<()> {
    let keep = crate::cni::conf::valid_attachments(conf)?;
    let valid = Value::Array(
        keep.iter()
            .map(|(id, ifname)| serde_json::json!({"containerID": id, "ifname": ifname}))
            .collect(),
    );
    let mut errors = Vec::new();
    for rec in store.list() {
        if keep.contains(&(rec.container_id.clone(), rec.ifname.clone())) {
            continue;
        }
        tracing::info!(container = %rec.container_id, ifname = %rec.ifname, "GC: removing stale attachment");
        let mut stale = args.clone();
        stale.container_id = rec.container_id.clone();
        stale.ifname = rec.ifname.clone();
        stale.netns = rec.netns.clone().filter(|p| p.exists());
        if let Err(e) = teardown(&stale, ac, store, &rec).await {
            errors.push(e);
        }
    }
    match ac.cluster_network(&conf.cni_version) {
        Ok(cluster) => {
            let path = ac.search_path(&args.path);
            let inv = Invocation::podless(&path);
            if let Err(e) = cluster.gc(&inv, &valid).await {
                errors.push(e);
            }
        }
        Err(e) => errors.push(e),
    }
    Error::from_list(errors)
}

fn result_of(a: &AttachmentRecord) -> Result<Option<CniResult>> {
    a.result
        .as_ref()
        .map(|v| CniResult::from_value(v, Version::V1_1_0))
        .transpose()
}

fn invocation<'a>(
    args: &'a CmdArgs,
    a: &'a AttachmentRecord,
    netns: Option<&'a Path>,
    path: &'a [std::path::PathBuf],
) -> Invocation<'a> {
    Invocation {
        container_id: &args.container_id,
        netns,
        ifname: &a.ifname,
        cni_args: a.cni_args.clone(),
        path,
    }
}

async fn attach_add(args: &CmdArgs, ac: &AttacheConf, a: &AttachmentRecord) -> Result<CniResult> {
    let path = ac.search_path(&args.path);
    let inv = invocation(args, a, args.netns.as_deref(), &path);
    match a.driver.as_str() {
        "chain" => {
            let list = NetworkList::from_value(&a.conf, &Version::V1_1_0.to_string())?;
            list.add(&inv, &a.runtime_config).await
        }
        other => Err(Error::Internal(format!(
            "unknown attachment driver {other:?}"
        ))),
    }
}

async fn attach_del(
    args: &CmdArgs,
    ac: &AttacheConf,
    rec: &PodRecord,
    a: &AttachmentRecord,
) -> Result<()> {
    let path = ac.search_path(&args.path);
    // The runtime's netns if it gave one that still exists, else none: delegates must cope (SPEC DEL).
    let netns = args
        .netns
        .as_deref()
        .or(rec.netns.as_deref())
        .filter(|p| p.exists());
    let inv = invocation(args, a, netns, &path);
    let prev = result_of(a)?;
    match a.driver.as_str() {
        "chain" => {
            let list = NetworkList::from_value(&a.conf, &Version::V1_1_0.to_string())?;
            list.del(&inv, &a.runtime_config, prev.as_ref()).await
        }
        other => Err(Error::Internal(format!(
            "unknown attachment driver {other:?}"
        ))),
    }
}

async fn attach_check(args: &CmdArgs, ac: &AttacheConf, a: &AttachmentRecord) -> Result<()> {
    let path = ac.search_path(&args.path);
    let inv = invocation(args, a, args.netns.as_deref(), &path);
    let prev =
        result_of(a)?.ok_or_else(|| Error::config("attachment has no result to check against"))?;
    match a.driver.as_str() {
        "chain" => {
            let list = NetworkList::from_value(&a.conf, &Version::V1_1_0.to_string())?;
            list.check(&inv, &a.runtime_config, &prev).await
        }
        other => Err(Error::Internal(format!(
            "unknown attachment driver {other:?}"
        ))),
    }
}
