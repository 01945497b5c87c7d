//! The meta-plugin's commands. ADD: plan and validate everything ([`plan`]), write the record, then attach
//! the cluster network as `CNI_IFNAME` and the pod's other networks in order, move the default route
//! where `default-route` asks, report network-status (under one API deadline) — undoing all of it in
//! reverse if any step fails. DEL: tear down from the record — no API, no config, no netns needed; with
//! no readable record, from a teardown plan of the configuration and the pod's annotations, plus every
//! node link labelled as the container's — and forget the record only when everything is gone. CHECK,
//! STATUS and GC follow the same records; GC only its own network's.

use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;

use crate::attach::Checked;
use crate::cni::conf::NetConf;
use crate::cni::skel::{CmdArgs, Command};
use crate::cni::spec::{CniResult, Route};
use crate::delegate::Invocation;
use crate::engine::config::AttacheConf;
use crate::engine::plan::{self, Purpose};
use crate::engine::record::{AttachmentRecord, PodRecord, RecordStore};
use crate::error::{Error, Result};
use crate::fail::{guarded, guarded_now};
use crate::k8s::PodRef;
use crate::k8s::annotation::{NetworkStatus, status_of};
use crate::k8s::api::StatusWrite;
use crate::netns::NetNs;
use futures::FutureExt;

pub async fn run(args: &CmdArgs, conf: NetConf) -> Result<Option<Value>> {
    let started = std::time::Instant::now();
    // Logging first, from the raw keys: a DEL of a configuration that does not validate still logs.
    let (log_file, log_level) = super::config::logging_of(&conf);
    super::init_logging(log_file.as_deref(), log_level);
    let ac = match args.command {
        // DEL reads what teardown needs and ignores the rest (see AttacheConf::for_teardown).
        Command::Del => AttacheConf::for_teardown(&conf),
        _ => AttacheConf::from_conf(&conf)?,
    };
    if let Some(why) = &args.netns_ignored {
        tracing::warn!("DEL goes on without CNI_NETNS: {why}");
    }
    let store = RecordStore::new(&ac.cache_dir);
    let r = match args.command {
        Command::Add => add(args, &conf, &ac, &store).await.map(Some),
        Command::Del => del(args, &conf, &ac, &store).await.map(|_| None),
        Command::Check => check(args, &conf, &ac, &store).await.map(|_| None),
        Command::Status => status(args, &conf, &ac).await.map(|_| None),
        Command::Gc => gc(args, &conf, &ac, &store).await.map(|_| None),
        Command::Version => Err(Error::Internal("VERSION is answered by skel".into())),
    };
    let (code, outcome) = match &r {
        Ok(_) => (0, "ok".to_string()),
        Err(e) => (e.cni_code(), format!("failed: {e}")),
    };
    tracing::info!(
        command = args.command.as_str(),
        container = %args.container_id,
        ifname = %args.ifname,
        network = %conf.name,
        ms = elapsed_ms(started),
        code,
        "{outcome}"
    );
    r
}

/// The pod's netns for ADD and CHECK (skel has checked that it is a live one, and not attache's own).
fn open_pod_netns(args: &CmdArgs) -> Result<NetNs> {
    let path = args
        .netns
        .as_deref()
        .ok_or_else(|| Error::InvalidEnv("CNI_NETNS is required".into()))?;
    NetNs::open(path)
}

/// The pod's netns for teardown: the runtime's (skel dropped it if it is no live netns), else the one the
/// record names if that is still a live one — unless the runtime's was dropped, which names the same.
fn live_netns<'a>(args: &'a CmdArgs, rec: &'a PodRecord) -> Option<&'a Path> {
    args.netns.as_deref().or_else(|| {
        rec.netns
            .as_deref()
            .filter(|_| args.netns_ignored.is_none())
            .filter(|p| NetNs::open(p).is_ok())
    })
}

fn elapsed_ms(t: std::time::Instant) -> String {
    format!("{:.1}", t.elapsed().as_secs_f64() * 1000.0)
}

async fn add(
    args: &CmdArgs,
    conf: &NetConf,
    ac: &AttacheConf,
    store: &RecordStore,
) -> Result<Value> {
    ac.check_installed()?;
    let netns = open_pod_netns(args)?;
    if let Some(answer) = repeated_add(args, conf, ac, store).await? {
        return Ok(answer);
    }
    let t = std::time::Instant::now();
    let planned = plan::plan(args, conf, ac, Purpose::Add).await?;
    // The pod's namespace, shared by every native attachment (one thread and one connection there).
    let pod = match planned.records().any(|a| a.link_group.is_some()) {
        true => Some(crate::attach::PodNs::open(args)?),
        false => None,
    };
    plan::check_pod_ifnames(&netns, pod.as_ref(), &planned).await?;
    tracing::debug!(
        attachments = planned.attachments.len(),
        ms = elapsed_ms(t),
        "planned"
    );
    let mut rec = PodRecord::new(&args.container_id, &args.ifname, args.netns.as_deref());
    rec.network = conf.name.clone();
    rec.pod = planned.pod_ref();
    let (api, pod_info) = (planned.api, planned.pod);
    let (records, checked): (Vec<_>, Vec<_>) = planned
        .attachments
        .into_iter()
        .map(|p| (p.record, p.checked))
        .unzip();
    // A container ID's earlier DEL left a tombstone: this ADD makes state again (podman restarts a
    // container under its ID), so the next DEL must tear it down.
    store.unbury(&args.container_id)?;
    rec.attachments = records;
    super::routing::refuse_lost_services(&rec, ac)?;
    // Routed by source: the pod's rp_filter is loosened before any interface exists (each is born
    // with it), and the record says so before it is done.
    let routed_netns = args
        .netns
        .as_deref()
        .filter(|_| super::routing::wanted(&rec));
    if let Some(ns) = routed_netns {
        rec.routing = Some(super::routing::PodRouting {
            sysctls: super::routing::pod_sysctls(ns)?,
            ..Default::default()
        });
    }
    store.save(&rec)?;
    if let (Some(ns), Some(r)) = (routed_netns, &rec.routing)
        && let Err(e) = super::routing::set_sysctls(ns, &r.sysctls)
    {
        rollback(args, ac, store, &rec).await;
        return Err(e.context("loosening the pod's rp_filter"));
    }

    attach_all(args, ac, store, &mut rec, checked, pod.as_ref()).await?;
    let cluster_gws = super::routing::gateways(&rec.attachments[0]);
    let finished = match guarded(apply_default_routes(args, &mut rec)).await {
        Ok(()) => match guarded(route_pod(args, ac, store, &mut rec, &cluster_gws)).await {
            Ok(()) => {
                rec.complete = true;
                guarded_now(|| store.save(&rec))
            }
            Err(e) => Err(e.context("routing the pod's interfaces")),
        },
        Err(e) => Err(e.context("moving the default route")),
    };
    if let Err(err) = finished {
        rollback(args, ac, store, &rec).await;
        return Err(err);
    }
    if let (Some(api), Some(info)) = (&api, &pod_info) {
        // The pod's networking is done: reporting it may not hold the result longer than one API
        // deadline, and stops at the first thing that fails.
        let t = std::time::Instant::now();
        let reported = guarded(async {
            report(ac, &api.renewed(), &info.pod, &rec).await;
            Ok(())
        })
        .await;
        if let Err(e) = reported {
            tracing::error!("reporting to the Kubernetes API: {e}");
        }
        tracing::debug!(ms = elapsed_ms(t), "reported to the Kubernetes API");
    }
    // The result is the cluster network's, as Multus returns it.
    let cluster = rec.attachments[0].result.clone().unwrap_or_default();
    Ok(cluster.to_value(conf.version))
}

/// An ADD of an attachment there is a record of: the same pod asking again after its first ADD finished
/// gets that ADD's answer; another netns is a conflict; an ADD that died half-way is undone first (and
/// `None` lets this one go on).
async fn repeated_add(
    args: &CmdArgs,
    conf: &NetConf,
    ac: &AttacheConf,
    store: &RecordStore,
) -> Result<Option<Value>> {
    let Some(old) = store.load(&args.container_id, &args.ifname)? else {
        return Ok(None);
    };
    if !old.complete {
        tracing::warn!("found an incomplete record from an interrupted ADD; tearing it down first");
        teardown(args, ac, store, &old, false).await?;
        return Ok(None);
    }
    // The runtime never got the first answer (it was killed, or timed out). The recorded result is
    // that answer; nothing is redone.
    if old.netns == args.netns && !old.attachments.is_empty() {
        tracing::info!("ADD of an attachment already made: answering with its recorded result");
        let cluster = old.attachments[0].result.clone().unwrap_or_default();
        return Ok(Some(cluster.to_value(conf.version)));
    }
    Err(Error::Conflict(format!(
        "container {} already has an attachment {} in another netns; DEL it before adding it again",
        args.container_id, args.ifname
    )))
}

/// Run each planned attachment in order, recording each result. The first that fails (or panics) is
/// undone with the ones before it, and the record stays for the runtime's DEL if that undo fails too.
async fn attach_all(
    args: &CmdArgs,
    ac: &AttacheConf,
    store: &RecordStore,
    rec: &mut PodRecord,
    checked: Vec<Vec<Option<Checked>>>,
    pod: Option<&crate::attach::PodNs>,
) -> Result<()> {
    for (i, natives) in checked.into_iter().enumerate() {
        let t = std::time::Instant::now();
        // A failed attachment has undone itself (its chain's rollback); one that panicked, or whose
        // record could not be saved, has not: it is undone with the ones before it.
        let mut undo_upto = i + 1;
        let attached = match std::panic::AssertUnwindSafe(attach_add(
            args,
            ac,
            &rec.attachments[i],
            natives,
            pod,
        ))
        .catch_unwind()
        .await
        {
            Ok(Err(e)) => {
                undo_upto = i;
                Err(e)
            }
            Ok(ok) => ok,
            Err(panic) => Err(crate::fail::panic_error(panic)),
        };
        let saved = attached.and_then(|res| {
            tracing::debug!(
                network = %rec.attachments[i].network,
                ifname = %rec.attachments[i].ifname,
                ips = ?res.ips.iter().map(|ip| ip.address.to_string()).collect::<Vec<_>>(),
                ms = elapsed_ms(t),
                "attached"
            );
            rec.attachments[i].result = Some(res);
            // The result is saved at once only where a teardown would need it: an exec'd plugin's DEL
            // gets it as prevResult. A native attachment's DEL does not (the record already names it),
            // and every result is saved with the record's completion; the last one too, unless a
            // default route moves in between. Each save creates a file, which costs 0.5-2 ms on ext4.
            let completes_next = i + 1 == rec.attachments.len()
                && rec.attachments.iter().all(|a| a.default_route.is_empty());
            if completes_next || rec.attachments[i].only_native_links() {
                return Ok(());
            }
            guarded_now(|| store.save(rec))
        });
        if let Err(e) = saved {
            let err = e.context(format!(
                "attaching network {:?}",
                rec.attachments[i].network
            ));
            tracing::debug!(ms = elapsed_ms(t), "{err}");
            // Undo the ones before it, newest first. If that fails too, the record stays so that the
            // runtime's DEL can finish.
            rec.attachments.truncate(undo_upto);
            rollback(args, ac, store, rec).await;
            return Err(err);
        }
    }
    Ok(())
}

/// Undo a failed ADD's attachments, newest first, logging what was undone.
async fn rollback(args: &CmdArgs, ac: &AttacheConf, store: &RecordStore, rec: &PodRecord) {
    let undone: Vec<String> = rec
        .attachments
        .iter()
        .map(|a| format!("{} ({})", a.network, a.ifname))
        .collect();
    match teardown(args, ac, store, rec, false).await {
        Ok(()) => tracing::debug!(?undone, "rollback after failed ADD: undone"),
        Err(e) => tracing::error!("rollback after failed ADD left something behind: {e}"),
    }
}

/// The network-status annotation, then one Event per interface: through the node agent when there is
/// one that answers (its warm connection; the Events follow after its answer), else directly under the
/// API deadline.
async fn report(
    ac: &AttacheConf,
    api: &crate::k8s::client::KubeApi,
    pod: &PodRef,
    rec: &PodRecord,
) {
    let status = network_status(rec);
    // One per interface, the cluster network's included, with prefixes — as Multus words them.
    let events: Vec<String> = rec
        .attachments
        .iter()
        .map(|a| {
            let ips: Vec<String> = a
                .result
                .iter()
                .flat_map(|r| r.ips.iter().map(|ip| ip.address.to_string()))
                .collect();
            format!("Add {} [{}] from {}", a.ifname, ips.join(","), a.network)
        })
        .collect();
    if let Some(socket) = &ac.agent_socket
        && through_agent(socket, ac, pod, &status, &events).await
    {
        return;
    }
    match api.set_network_status(pod, &status).await {
        Ok(StatusWrite::Written) => {}
        Ok(StatusWrite::PodGone) => return,
        Err(e) => {
            tracing::warn!("could not write the network-status annotation: {e}");
            return;
        }
    }
    for msg in &events {
        if let Err(e) = api
            .event(pod, crate::k8s::relay::ADDED_INTERFACE, msg)
            .await
        {
            tracing::warn!("could not record an event (no more are sent): {e}");
            return;
        }
    }
}

/// Hand the report to the agent: whether it answered that it is done (the status written, or the pod
/// gone). Any other outcome leaves the report to the caller's direct call.
async fn through_agent(
    socket: &Path,
    ac: &AttacheConf,
    pod: &PodRef,
    status: &[crate::k8s::annotation::NetworkStatus],
    events: &[String],
) -> bool {
    if let Err(e) = crate::fail::point("k8s.relay") {
        tracing::warn!("not through the agent ({e}): calling the API directly");
        return false;
    }
    let wait = ac.api_timeout / 2;
    let req =
        crate::k8s::relay::Request::new(crate::k8s::relay::Op::Report, pod, status, events, wait);
    if req.validate().is_err() {
        return false;
    }
    match crate::k8s::relay::ask(socket, &req, wait).await {
        Some(a) if a.ok => {
            tracing::debug!(pod_gone = a.pod_gone, "reported through the agent");
            true
        }
        Some(a) => {
            tracing::warn!(
                "the agent could not report ({}): calling the API directly",
                a.error
            );
            false
        }
        None => false,
    }
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
        super::pod::move_default_route(netns, &rec.attachments[target].ifname, gw).await?;
        for (i, a) in rec.attachments.iter_mut().enumerate() {
            let Some(res) = a.result.as_mut() else {
                continue;
            };
            res.routes
                .retain(|r| !(r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == gw.is_ipv4()));
            if i == target {
                let dst = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                res.routes
                    .push(Route::new(dst.parse().expect("literal"), Some(gw)));
            }
        }
    }
    Ok(())
}

/// The pod's routing beyond its attachments (see [`super::routing`]): planned into the record, which is
/// saved before anything is made, then made. The cluster's CIDRs stay on it when the default moved even
/// without source routing, when the configuration names them.
async fn route_pod(
    args: &CmdArgs,
    ac: &AttacheConf,
    store: &RecordStore,
    rec: &mut PodRecord,
    cluster_gws: &[IpAddr],
) -> Result<()> {
    let Some(netns) = args.netns.as_deref() else {
        return Ok(());
    };
    let moved = rec.attachments.iter().any(|a| !a.default_route.is_empty());
    if !super::routing::wanted(rec)
        && !(moved && !(ac.cluster_cidrs.is_empty() && ac.service_cidrs.is_empty()))
    {
        return Ok(());
    }
    super::routing::plan(netns, ac, rec, cluster_gws).await?;
    store.save(rec)?;
    super::routing::apply(netns, rec, cluster_gws).await
}

/// The network-status annotation: one entry per attachment, the cluster network's marked default.
pub fn network_status(rec: &PodRecord) -> Vec<NetworkStatus> {
    rec.attachments
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let res = a.result.clone().unwrap_or_default();
            let mut st = status_of(&a.network, &a.ifname, i == 0, &res);
            st.device_info = a.device_info.clone();
            st
        })
        .collect()
}

async fn del(args: &CmdArgs, conf: &NetConf, ac: &AttacheConf, store: &RecordStore) -> Result<()> {
    let loaded = store.load(&args.container_id, &args.ifname);
    // The runtime sends several DELs per pod (the kubelet and containerd 4-5): once one has finished,
    // the ones that follow have nothing to do, and no API call to make.
    if matches!(loaded, Ok(None)) && store.is_buried(&args.container_id, &args.ifname) {
        tracing::debug!("DEL of an attachment whose DEL already finished: nothing to do");
        return Ok(());
    }
    // What a teardown plan had to skip (the API down, the pod gone): it may not name all there was.
    let skipped = std::cell::Cell::new(0);
    let (rec, from_record) = match loaded {
        Ok(Some(r)) => {
            tracing::debug!(
                attachments = r.attachments.len(),
                "DEL tears down what the record names"
            );
            (r, true)
        }
        // No record: ADD never got to write one, its DEL already finished, or it was lost — or another
        // plugin (Multus) attached the pod before attache took over. Either way the configuration and
        // the pod's annotations say what could be there: tear that down.
        Ok(None) => (replan(args, conf, ac, "no record", &skipped).await, false),
        Err(e) => (
            replan(
                args,
                conf,
                ac,
                &format!("unreadable record ({e})"),
                &skipped,
            )
            .await,
            false,
        ),
    };
    // The pod's networks are going: its network-status annotation goes too, when the API answers (never
    // failing DEL), at the same time as the teardown — they are independent. Without a record, only a
    // pod the runtime names by UID: the patch is conditioned on it, so a pod of the same name that
    // replaced it keeps its annotation.
    let pod = match from_record {
        true => rec.pod.clone(),
        false => pod_by_uid(args),
    };
    let clear = async {
        if let (Some(kc), Some(pod)) = (ac.kubeconfig.as_deref(), &pod) {
            clear_network_status(ac.agent_socket.as_deref(), kc, ac.api_timeout, pod).await;
        }
    };
    // (The record's removal takes killed writers' temporaries with it.)
    let (torn, ()) = tokio::join!(teardown(args, ac, store, &rec, !from_record), clear);
    let mut errors: Vec<Error> = torn.err().into_iter().collect();
    // Without a record nothing says the configuration still describes every network the pod had: what
    // is labelled as the container's on the node goes too. (With one, the record names every link.)
    if !from_record {
        match super::pod::delete_owned_links(&args.container_id).await {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(
                    ?gone,
                    "deleted the container's leftover node links by their alias"
                )
            }
            Ok(_) => {}
            Err(e) => errors.push(e.context("deleting the container's node links by alias")),
        }
    }
    let done = Error::from_list(errors);
    if done.is_ok() {
        match skipped.get() {
            0 => {
                if let Err(e) = store.bury(&args.container_id, &args.ifname) {
                    tracing::warn!("DEL finished, but the next DEL will plan again: {e}");
                }
            }
            n => tracing::debug!(
                "DEL skipped {n} part{} of its plan: the next DEL plans again",
                if n == 1 { "" } else { "s" }
            ),
        }
    }
    done
}

/// The pod the runtime names in `CNI_ARGS`, if it gives its UID too.
fn pod_by_uid(args: &CmdArgs) -> Option<PodRef> {
    Some(PodRef::of(args))
        .filter(|p| !p.namespace.is_empty() && !p.name.is_empty() && !p.uid.is_empty())
}

/// Remove the pod's network-status annotation — through the node agent when one answers, else under
/// one API deadline; a failure is logged, not returned.
async fn clear_network_status(
    agent: Option<&Path>,
    kubeconfig: &Path,
    timeout: std::time::Duration,
    pod: &PodRef,
) {
    let t = std::time::Instant::now();
    if let Some(socket) = agent
        && crate::fail::point("k8s.relay").is_ok()
    {
        let req = crate::k8s::relay::Request::new(
            crate::k8s::relay::Op::Clear,
            pod,
            &[],
            &[],
            timeout / 2,
        );
        if req.validate().is_ok()
            && crate::k8s::relay::ask(socket, &req, timeout / 2)
                .await
                .is_some_and(|a| a.ok)
        {
            tracing::debug!(
                ms = elapsed_ms(t),
                "network-status annotation cleared by the agent"
            );
            return;
        }
    }
    let cleared = async {
        crate::k8s::client::KubeApi::connect(Some(kubeconfig), timeout)
            .await?
            .clear_network_status(pod)
            .await
    };
    match cleared.await {
        Ok(_) => tracing::debug!(ms = elapsed_ms(t), "network-status annotation cleared"),
        Err(e) => tracing::warn!("DEL could not clear the network-status annotation: {e}"),
    }
}

/// DEL without a usable record: plan the pod again from the configuration and its annotations, as
/// Multus does, taking what can be resolved (the runtime's prevResult is the cluster network's result).
async fn replan(
    args: &CmdArgs,
    conf: &NetConf,
    ac: &AttacheConf,
    why: &str,
    skipped: &std::cell::Cell<usize>,
) -> PodRecord {
    tracing::info!("DEL with {why}: tearing down what the configuration and annotations describe");
    let mut r = PodRecord::new(&args.container_id, &args.ifname, args.netns.as_deref());
    r.network = conf.name.clone();
    match plan::plan(args, conf, ac, Purpose::Teardown(skipped)).await {
        Ok(p) => r.attachments = p.attachments.into_iter().map(|p| p.record).collect(),
        Err(e) => {
            skipped.set(skipped.get() + 1);
            tracing::warn!("DEL could not plan the pod ({e}): nothing from the configuration")
        }
    }
    if let Some(first) = r.attachments.first_mut()
        && first.ifname == args.ifname
    {
        match conf.prev_result() {
            Ok(Some(prev)) => first.result = Some(prev),
            Ok(None) => {}
            Err(e) => tracing::debug!("DEL ignores an unreadable prevResult: {e}"),
        }
    }
    r
}

/// Tear down every attachment of a record, newest first, collecting errors; the record goes only when all
/// succeeded, so a retried DEL can finish the job. `replanned`: the record is a teardown plan, not what
/// an ADD of attache made, so the pod's interfaces may be another plugin's (Multus attached the pod):
/// each driver looks for its own by name in the pod, whatever the link group removed.
async fn teardown(
    args: &CmdArgs,
    ac: &AttacheConf,
    store: &RecordStore,
    rec: &PodRecord,
    replanned: bool,
) -> Result<()> {
    let (grouped, others): (Vec<&AttachmentRecord>, Vec<&AttachmentRecord>) =
        rec.attachments.iter().partition(|a| a.link_group.is_some());
    let netns = live_netns(args, rec);
    if netns.is_none() {
        tracing::debug!("DEL has no live pod netns: pod-side links went with it");
    }
    // Rules, tables and sysctls live in the pod's netns: without it there is nothing to undo.
    let mut routing_errors = Vec::new();
    if let (Some(ns), Some(r)) = (netns, &rec.routing)
        && let Err(e) = super::routing::teardown(ns, r).await
    {
        routing_errors.push(e.context("undoing the pod's routing"));
    }
    // The pod's native interfaces and the delegated networks are independent: both go at once, so a
    // pod's DEL pays the kernel's unregister wait once, not once for the delegate and again for the
    // natives. The native ones go together, as one link group (one wait, not one each), then their
    // drivers' DELs find their links gone and release what they hold.
    let natives = async {
        let mut gone = false;
        if let Some(ns) = netns
            && grouped.len() >= 2
        {
            let group = super::pod::link_group(&rec.container_id, &rec.ifname);
            match super::pod::delete_link_group(ns, group).await {
                Ok(()) => gone = !replanned,
                Err(e) => tracing::warn!(
                    "deleting the pod's interfaces as a group: {e}; deleting them one by one"
                ),
            }
        }
        detach_all(args, ac, rec, &grouped, gone).await
    };
    let (mut errors, delegated) =
        futures::join!(natives, detach_all(args, ac, rec, &others, false));
    errors.extend(delegated);
    errors.extend(routing_errors);
    if errors.is_empty() {
        store.remove(&rec.container_id, &rec.ifname)?;
    } else {
        tracing::warn!("DEL keeps the record: something is left for a retried DEL");
    }
    Error::from_list(errors)
}

/// Tear down a record no runtime will DEL any more (`attache inspect --gc`): what DEL does with it when
/// the pod's netns is gone — its plugins' DELs without a netns, its node links, its addresses — then the
/// record goes and a tombstone stays. No API call: the pod is gone. `cni_path` is where delegated
/// plugins are found besides the configuration's `binDir`.
pub async fn teardown_orphan(
    ac: &AttacheConf,
    store: &RecordStore,
    rec: &PodRecord,
    cni_path: &[std::path::PathBuf],
) -> Result<()> {
    let args = CmdArgs {
        command: Command::Del,
        container_id: rec.container_id.clone(),
        netns: None,
        netns_ignored: Some("attache inspect --gc: the pod's netns is gone".into()),
        nothing_to_do: None,
        ifname: rec.ifname.clone(),
        args: Default::default(),
        path: cni_path.to_vec(),
    };
    teardown(&args, ac, store, rec, false).await?;
    store.bury(&rec.container_id, &rec.ifname)
}

/// DEL the given attachments, newest first, collecting errors.
/// `links_gone`: the pod's native interfaces were deleted as a group, so an attachment whose plugins are
/// all native drivers that make links has nothing left in the pod: its drivers are not sent into the
/// namespace (no thread, no connection there), they release what they hold on the node. A chained sbr or
/// tuning still goes in (its rules and sysctls outlive the interface).
async fn detach_all(
    args: &CmdArgs,
    ac: &AttacheConf,
    rec: &PodRecord,
    list: &[&AttachmentRecord],
    links_gone: bool,
) -> Vec<Error> {
    let mut errors = Vec::new();
    for a in list.iter().rev() {
        let t = std::time::Instant::now();
        let netns = match links_gone && a.only_native_links() {
            true => None,
            false => live_netns(args, rec),
        };
        match attach_del(args, ac, a, netns).await {
            Ok(()) => tracing::debug!(
                network = %a.network,
                ifname = %a.ifname,
                ms = elapsed_ms(t),
                "detached"
            ),
            Err(e) => {
                let e = e.context(format!("detaching network {:?}", a.network));
                tracing::debug!(ms = elapsed_ms(t), "{e}");
                errors.push(e);
            }
        }
    }
    errors
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
            let mut cluster = plan::cluster(args, conf, ac, Purpose::Add)?.record;
            cluster.result = Some(prev);
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
    if let (Some(ns), Some(r)) = (args.netns.as_deref(), &rec.routing) {
        super::routing::check(ns, r)
            .await
            .map_err(|e| e.context("checking the pod's routing"))?;
    }
    Ok(())
}

async fn status(args: &CmdArgs, conf: &NetConf, ac: &AttacheConf) -> Result<()> {
    let not_available = |e: Error| match e {
        Error::Config(m) | Error::Io { context: m, .. } | Error::NotReady(m) => {
            Error::NotAvailable(format!("the cluster network is not ready: {m}"))
        }
        other => other,
    };
    ac.check_installed()
        .map_err(|e| Error::NotAvailable(e.to_string()))?;
    let cluster = ac
        .cluster_network(&conf.cni_version)
        .map_err(not_available)?;
    std::fs::create_dir_all(&ac.cache_dir)
        .map_err(|e| Error::NotAvailable(format!("cacheDir {}: {e}", ac.cache_dir.display())))?;
    let path = ac.search_path(&args.path);
    let inv = Invocation::podless(&path);
    cluster.status(&inv).await
}

/// GC: every record of this network (the meta configuration's `name`; libcni scopes the valid list per
/// network) whose `(containerID, ifname)` the runtime no longer lists is torn down — other networks'
/// records are never touched — then GC is forwarded to the cluster network with the runtime's list.
/// Temporaries of killed writers go too.
async fn gc(args: &CmdArgs, conf: &NetConf, ac: &AttacheConf, store: &RecordStore) -> Result<()> {
    let keep = crate::cni::conf::valid_attachments(conf)?;
    let records = store.list();
    // The cluster network may be shared with another attache network in this cacheDir: its GC keeps
    // the attachments that network recorded too, which the runtime's list for this one cannot name.
    let valid = Value::Array(
        keep.iter()
            .cloned()
            .chain(
                records
                    .iter()
                    .filter(|r| r.network != conf.name)
                    .map(|r| (r.container_id.clone(), r.ifname.clone())),
            )
            .map(|(id, ifname)| serde_json::json!({"containerID": id, "ifname": ifname}))
            .collect(),
    );
    let mut errors = Vec::new();
    for rec in records {
        if rec.network != conf.name {
            tracing::debug!(container = %rec.container_id, ifname = %rec.ifname, network = %rec.network,
                "GC of {:?} leaves another network's record alone", conf.name);
            continue;
        }
        if keep.contains(&(rec.container_id.clone(), rec.ifname.clone())) {
            continue;
        }
        tracing::info!(container = %rec.container_id, ifname = %rec.ifname, "GC: removing stale attachment");
        let mut stale = args.clone();
        stale.container_id = rec.container_id.clone();
        stale.ifname = rec.ifname.clone();
        stale.netns = rec.netns.clone().filter(|p| {
            NetNs::open(p).is_ok_and(|ns| NetNs::current().is_ok_and(|me| !ns.same_as(&me)))
        });
        if let Err(e) = teardown(&stale, ac, store, &rec, false).await {
            errors.push(e);
        }
    }
    for c in store.containers() {
        store.remove_temporaries(&c, None);
        let _ = std::fs::remove_dir(store.dir().join(&c));
    }
    // The runtime no longer knows these containers: no DEL of them is coming. (A tombstone does not
    // name its network: another network's is forgotten too, and its next DEL, if any, plans again.)
    let listed: std::collections::HashSet<&str> = keep.iter().map(|(id, _)| id.as_str()).collect();
    let forgotten = store.sweep_tombstones(|id, _| !listed.contains(id));
    if forgotten > 0 {
        tracing::debug!(
            "GC forgot {forgotten} tombstone(s) of containers the runtime no longer lists"
        );
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
        link_group: a.link_group,
        path,
    }
}

async fn attach_add(
    args: &CmdArgs,
    ac: &AttacheConf,
    a: &AttachmentRecord,
    checked: Vec<Option<Checked>>,
    pod: Option<&crate::attach::PodNs>,
) -> Result<CniResult> {
    let path = ac.search_path(&args.path);
    let inv = invocation(args, a, args.netns.as_deref(), &path);
    a.conf.add(&inv, &a.runtime_config, checked, pod).await
}

/// DEL one attachment; `netns` is the pod's if it is still a live one, else none (delegates must cope,
/// SPEC DEL).
async fn attach_del(
    args: &CmdArgs,
    ac: &AttacheConf,
    a: &AttachmentRecord,
    netns: Option<&Path>,
) -> Result<()> {
    let path = ac.search_path(&args.path);
    let inv = invocation(args, a, netns, &path);
    let prev = a.result.as_ref();
    a.conf.del(&inv, &a.runtime_config, prev).await
}

async fn attach_check(args: &CmdArgs, ac: &AttacheConf, a: &AttachmentRecord) -> Result<()> {
    if !a.nics.is_empty() {
        let node = crate::netlink::Netlink::connect(None)?;
        for r in &a.nics {
            crate::attach::nic::check_resolved(&node, r).await?;
        }
    }
    let path = ac.search_path(&args.path);
    let inv = invocation(args, a, args.netns.as_deref(), &path);
    let prev = a
        .result
        .as_ref()
        .ok_or_else(|| Error::config("attachment has no result to check against"))?;
    a.conf.check(&inv, &a.runtime_config, prev).await
}
