//! Planning a pod's attachments, before anything is touched: the cluster network as `CNI_IFNAME`, then —
//! for a Kubernetes pod outside the system namespaces — `defaultNetworks` and the networks its
//! annotation selects, each resolved to its NetworkAttachmentDefinition and configuration, checked
//! against namespace isolation, given a unique interface name and its runtime arguments. Any problem is
//! an error here, so ADD either attaches everything or touches nothing.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::cni::conf::{NetConf, normalize_runtime_config};
use crate::cni::skel::CmdArgs;
use crate::engine::chain::NetworkList;
use crate::engine::config::{AttacheConf, load_named};
use crate::engine::record::{AttachmentRecord, PodRef};
use crate::error::{Error, Result};
use crate::k8s::POD_ANNOTATIONS_CAPABILITY;
use crate::k8s::annotation::{NETWORKS, Selection, parse_networks};
use crate::k8s::api::{KubeApi, PodInfo};
use crate::k8s::nad::{Nad, load_folder};

/// What a plan is for. ADD refuses anything wrong before touching anything; a teardown (DEL without a
/// readable record) takes whatever it can still resolve and skips the rest, saying why in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Add,
    Teardown,
}

/// The outcome of planning.
pub struct Plan {
    pub attachments: Vec<AttachmentRecord>,
    pub pod: Option<PodInfo>,
    /// A connected API client, when a kubeconfig is configured (for the network-status annotation).
    pub api: Option<KubeApi>,
}

/// In a teardown plan, an error skips one item instead of failing the plan.
fn skip_or_fail<T>(purpose: Purpose, what: &str, r: Result<T>) -> Result<Option<T>> {
    match (r, purpose) {
        (Ok(v), _) => Ok(Some(v)),
        (Err(e), Purpose::Add) => Err(e),
        (Err(e), Purpose::Teardown) => {
            tracing::info!("DEL skips {what}: {e}");
            Ok(None)
        }
    }
}

impl Plan {
    pub fn pod_ref(&self) -> Option<PodRef> {
        self.pod.as_ref().map(|p| PodRef {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            uid: p.uid.clone(),
        })
    }
}

/// Check that every plugin of a chain can run: native configurations validate (for ADD; teardown reads
/// them leniently), other binaries exist. Logs how each plugin will run.
fn check_runnable(
    list: &NetworkList,
    args: &CmdArgs,
    ac: &AttacheConf,
    what: &str,
    purpose: Purpose,
) -> Result<()> {
    let path = ac.search_path(&args.path);
    for i in 0..list.plugins.len() {
        let t = list.plugin_type(i);
        if crate::attach::is_native(t) {
            if purpose == Purpose::Add {
                let pc = NetConf::from_value(list.plugin_conf(i, &Map::new(), None))?;
                crate::attach::validate(t, args, &pc).map_err(|e| e.context(what))?;
            }
            tracing::debug!("{what}: plugin {i} {t:?} runs natively, in-process");
        } else {
            let bin = crate::delegate::find_plugin(t, &path)?;
            tracing::debug!("{what}: plugin {i} {t:?} runs by exec of {}", bin.display());
        }
    }
    Ok(())
}

/// The link group of a pod's native interfaces: derived from the attachment record's key, never 0
/// (the kernel's default group).
pub fn link_group(container_id: &str, ifname: &str) -> u32 {
    (crate::attach::nft::fnv1a(&[container_id, ifname]) as u32) | 0x8000_0000
}

/// Tell the chain's native plugins which link group their pod interface joins.
fn tag_native(list: &mut NetworkList, group: u32) {
    for p in &mut list.plugins {
        let native = p
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(crate::attach::is_native);
        if native {
            p.insert(crate::attach::LINK_GROUP_KEY.into(), json!(group));
        }
    }
}

/// The cluster network alone (also what CHECK falls back to without a record).
pub fn cluster(
    args: &CmdArgs,
    conf: &NetConf,
    ac: &AttacheConf,
    purpose: Purpose,
) -> Result<AttachmentRecord> {
    let mut cluster = ac.cluster_network(&conf.cni_version)?;
    check_runnable(
        &cluster,
        args,
        ac,
        &format!("clusterNetwork {:?} as {}", cluster.name, args.ifname),
        purpose,
    )?;
    tag_native(&mut cluster, link_group(&args.container_id, &args.ifname));
    Ok(AttachmentRecord {
        network: cluster.name.clone(),
        ifname: args.ifname.clone(),
        driver: "chain".into(),
        conf: cluster.to_value(),
        runtime_config: normalize_runtime_config(conf.runtime_config()),
        cni_args: args.args.for_delegate(),
        default_route: vec![],
        device_id: None,
        device_info: None,
        result: None,
    })
}

/// Everything ADD will attach — or, for a teardown, everything the configuration and the pod's
/// annotations say could have been attached — in order.
pub async fn plan(
    args: &CmdArgs,
    conf: &NetConf,
    ac: &AttacheConf,
    purpose: Purpose,
) -> Result<Plan> {
    let mut plan = Plan {
        attachments: Vec::new(),
        pod: None,
        api: None,
    };
    if let Some(c) = skip_or_fail(
        purpose,
        "the cluster network",
        cluster(args, conf, ac, purpose),
    )? {
        plan.attachments.push(c);
    }
    let (ns, name) = match (
        args.args.get("K8S_POD_NAMESPACE"),
        args.args.get("K8S_POD_NAME"),
    ) {
        (Some(ns), Some(n)) if !ns.is_empty() && !n.is_empty() => (ns.to_string(), n.to_string()),
        // A plain runtime: no pod, so the cluster network and defaultNetworks only.
        _ => {
            tracing::debug!(
                "no Kubernetes pod in CNI_ARGS: the cluster network and defaultNetworks"
            );
            let defaults = default_selections(ac);
            let mut resolver = Resolver::new(ac, None);
            add_selections(
                &mut plan,
                args,
                conf,
                ac,
                "default",
                defaults,
                &mut resolver,
                purpose,
            )
            .await?;
            return Ok(plan);
        }
    };
    if ac.system_namespaces.contains(&ns) {
        tracing::debug!("pod {ns}/{name} is in a system namespace: the cluster network only");
        return Ok(plan);
    }
    let uid = args.args.get("K8S_POD_UID").unwrap_or_default().to_string();
    // The pod's annotations: from the runtime when it passes them (no API call), else from the API.
    let from_runtime = conf
        .raw
        .get("runtimeConfig")
        .and_then(|r| r.get(POD_ANNOTATIONS_CAPABILITY))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect::<BTreeMap<_, _>>()
        });
    // The API client: needed to read the pod, to find definitions not in networksDir, and (ADD) to
    // report network-status. Its calls in planning share one deadline.
    plan.api = match &ac.kubeconfig {
        Some(p) => skip_or_fail(
            purpose,
            "the Kubernetes API",
            KubeApi::connect(Some(p), ac.api_timeout).await,
        )?,
        None => None,
    };
    let pod = match (from_runtime, &plan.api) {
        (Some(annotations), _) => {
            tracing::debug!(
                "pod {ns}/{name}: annotations from the runtime ({POD_ANNOTATIONS_CAPABILITY})"
            );
            Some(PodInfo {
                namespace: ns.clone(),
                name: name.clone(),
                uid,
                annotations,
            })
        }
        (None, Some(api)) => {
            tracing::debug!("pod {ns}/{name}: annotations from the Kubernetes API");
            let got = api.pod(&ns, &name).await.and_then(|p| match p {
                Some(mut p) => {
                    if !uid.is_empty() && !p.uid.is_empty() && p.uid != uid {
                        return Err(Error::TryAgain(format!(
                            "pod {ns}/{name} has UID {} in the API, not {uid}: it was replaced",
                            p.uid
                        )));
                    }
                    if p.uid.is_empty() {
                        p.uid = uid.clone();
                    }
                    Ok(Some(p))
                }
                None => {
                    tracing::warn!(pod = %format!("{ns}/{name}"), "pod not found in the API: cluster network only");
                    Ok(None)
                }
            });
            skip_or_fail(purpose, "the pod's networks", got)?.flatten()
        }
        (None, None) => {
            tracing::debug!(
                "pod {ns}/{name}: no annotations from the runtime and no kubeconfig: defaultNetworks only"
            );
            Some(PodInfo {
                namespace: ns.clone(),
                name: name.clone(),
                uid,
                annotations: BTreeMap::new(),
            })
        }
    };
    plan.pod = pod;
    let Some(pod) = plan.pod.clone() else {
        return Ok(plan);
    };
    let mut selections = default_selections(ac);
    if let Some(value) = pod.annotations.get(NETWORKS) {
        let room = ac.max_attachments.saturating_sub(selections.len());
        let parsed = parse_networks(value, room)
            .map_err(|m| Error::config(format!("pod {ns}/{name}: annotation {NETWORKS}: {m}")));
        let parsed = skip_or_fail(purpose, "the networks annotation", parsed)?.unwrap_or_default();
        for s in parsed {
            let target = s.namespace.as_deref().unwrap_or(&ns);
            if ac.namespace_isolation
                && target != ns
                && !ac.global_namespaces.iter().any(|g| g == target)
            {
                let e = Error::config(format!(
                    "pod {ns}/{name} may not use network {}: namespaceIsolation allows only its own namespace{}",
                    s.qualified(&ns),
                    if ac.global_namespaces.is_empty() {
                        String::new()
                    } else {
                        format!(" and {}", ac.global_namespaces.join(", "))
                    }
                ));
                skip_or_fail::<()>(purpose, &format!("network {}", s.qualified(&ns)), Err(e))?;
                continue;
            }
            selections.push(s);
        }
    }
    let mut resolver = Resolver::new(ac, plan.api.clone());
    add_selections(
        &mut plan,
        args,
        conf,
        ac,
        &ns,
        selections,
        &mut resolver,
        purpose,
    )
    .await?;
    Ok(plan)
}

/// ADD refuses interface names the pod already has (`lo`, or anything a runtime made), before any side
/// effect — the kernel would refuse them half-way through.
pub async fn check_pod_ifnames(netns: &crate::netns::NetNs, plan: &Plan) -> Result<()> {
    let nl = crate::netlink::Netlink::connect(Some(netns))?;
    let present: std::collections::HashSet<String> =
        nl.links().await?.into_iter().map(|l| l.name).collect();
    for a in &plan.attachments {
        if present.contains(&a.ifname) {
            return Err(Error::config(format!(
                "interface {} (network {:?}) already exists in the pod",
                a.ifname, a.network
            )));
        }
    }
    Ok(())
}

fn default_selections(ac: &AttacheConf) -> Vec<Selection> {
    ac.default_networks
        .iter()
        .map(|n| {
            let (ns, name) = match n.split_once('/') {
                Some((ns, name)) => (ns.to_string(), name.to_string()),
                None => (ac.multus_namespace.clone(), n.clone()),
            };
            Selection {
                name,
                namespace: Some(ns),
                ..Default::default()
            }
        })
        .collect()
}

/// Finds NetworkAttachmentDefinitions: `networksDir` first (read once), then the API.
struct Resolver<'a> {
    ac: &'a AttacheConf,
    api: Option<KubeApi>,
    folder: Option<BTreeMap<String, Nad>>,
}

impl<'a> Resolver<'a> {
    fn new(ac: &'a AttacheConf, api: Option<KubeApi>) -> Resolver<'a> {
        Resolver {
            ac,
            api,
            folder: None,
        }
    }

    async fn nad(&mut self, ns: &str, name: &str) -> Result<Nad> {
        let key = format!("{ns}/{name}");
        if let Some(dir) = &self.ac.networks_dir {
            if self.folder.is_none() {
                self.folder = Some(load_folder(dir)?);
            }
            if let Some(n) = self.folder.as_ref().and_then(|f| f.get(&key)) {
                return Ok(n.clone());
            }
        }
        if let Some(api) = &self.api
            && let Some(n) = api.nad(ns, name).await?
        {
            return Ok(n);
        }
        let mut places = Vec::new();
        if let Some(d) = &self.ac.networks_dir {
            places.push(format!("networksDir {}", d.display()));
        }
        if self.api.is_some() {
            places.push("the Kubernetes API".to_string());
        }
        if places.is_empty() {
            places.push("nowhere: neither networksDir nor kubeconfig is configured".to_string());
        }
        Err(Error::config(format!(
            "NetworkAttachmentDefinition {key} not found (looked in {})",
            places.join(" and ")
        )))
    }
}

/// The runtime arguments a selection hands its network (§4.1.2.1), with the capability each needs.
fn selection_runtime_config(s: &Selection) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    if !s.ips.is_empty() {
        out.push(("ips", json!(s.ips)));
    }
    if let Some(m) = &s.mac {
        out.push(("mac", json!(m)));
    }
    if let Some(p) = &s.port_mappings {
        out.push(("portMappings", p.clone()));
    }
    if let Some(b) = &s.bandwidth {
        out.push(("bandwidth", b.clone()));
    }
    if let Some(g) = &s.infiniband_guid {
        out.push(("infinibandGUID", json!(g)));
    }
    out
}

fn declares_capability(list: &NetworkList, cap: &str) -> bool {
    list.plugins.iter().any(|p| {
        p.get("capabilities")
            .and_then(|c| c.get(cap))
            .and_then(Value::as_bool)
            == Some(true)
    })
}

#[allow(clippy::too_many_arguments)]
async fn add_selections(
    plan: &mut Plan,
    args: &CmdArgs,
    conf: &NetConf,
    ac: &AttacheConf,
    pod_ns: &str,
    selections: Vec<Selection>,
    resolver: &mut Resolver<'_>,
    purpose: Purpose,
) -> Result<()> {
    if selections.len() > ac.max_attachments {
        let e = Error::config(format!(
            "{} networks are selected: at most {} are allowed (maxAttachments)",
            selections.len(),
            ac.max_attachments
        ));
        skip_or_fail::<()>(purpose, "the selected networks", Err(e))?;
        return Ok(());
    }
    let pod_name = plan
        .pod
        .as_ref()
        .map(|p| format!("pod {}/{}", p.namespace, p.name))
        .unwrap_or_else(|| format!("container {}", args.container_id));
    let mut ctx = SelectionCtx {
        families_routed: [false, false],
        devices: None,
        ifnames: plan.attachments.iter().map(|a| a.ifname.clone()).collect(),
    };
    for (i, s) in selections.into_iter().enumerate() {
        let what = format!("network {}", s.qualified(pod_ns));
        let r = attachment_for(
            plan, args, conf, ac, pod_ns, &pod_name, i, s, resolver, &mut ctx, purpose,
        )
        .await;
        if let Some(a) = skip_or_fail(purpose, &what, r)? {
            tracing::debug!(
                network = %a.network,
                ifname = %a.ifname,
                "planned"
            );
            plan.attachments.push(a);
        }
    }
    Ok(())
}

/// What the selections of one pod share while they are planned.
struct SelectionCtx {
    families_routed: [bool; 2],
    /// Device IDs the kubelet gave the pod, by resource, read once if a definition needs one.
    devices: Option<BTreeMap<String, Vec<String>>>,
    /// Interface names taken so far (a set: planning stays linear in the number of selections).
    ifnames: std::collections::HashSet<String>,
}

/// One selection, resolved to the attachment it makes.
#[allow(clippy::too_many_arguments)]
async fn attachment_for(
    plan: &Plan,
    args: &CmdArgs,
    conf: &NetConf,
    ac: &AttacheConf,
    pod_ns: &str,
    pod_name: &str,
    i: usize,
    s: Selection,
    resolver: &mut Resolver<'_>,
    ctx: &mut SelectionCtx,
    purpose: Purpose,
) -> Result<AttachmentRecord> {
    {
        let ns = s.namespace.clone().unwrap_or_else(|| pod_ns.to_string());
        let nad = resolver.nad(&ns, &s.name).await?;
        let qualified = nad.qualified();
        let value = match nad.config_value()? {
            Some(v) => v,
            None => load_named(&ac.conf_dir, &nad.name, &conf.cni_version)
                .map_err(|e| {
                    e.context(format!(
                        "NetworkAttachmentDefinition {qualified} has no spec.config, and confDir"
                    ))
                })?
                .to_value(),
        };
        let mut list = NetworkList::from_value(&value, &conf.cni_version)
            .map_err(|e| e.context(format!("network {qualified}")))?;
        // cni-args join each plugin's args.cni, the annotation's winning over the definition's.
        if let Some(extra) = &s.cni_args {
            for p in &mut list.plugins {
                let args_obj = p.entry("args").or_insert_with(|| json!({}));
                if !args_obj.is_object() {
                    *args_obj = json!({});
                }
                let cni = args_obj
                    .as_object_mut()
                    .expect("made an object above")
                    .entry("cni")
                    .or_insert_with(|| json!({}));
                if let Some(o) = cni.as_object_mut() {
                    for (k, v) in extra {
                        o.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        let mut runtime = Map::new();
        for (cap, v) in selection_runtime_config(&s) {
            if !declares_capability(&list, cap) {
                return Err(Error::config(format!(
                    "{pod_name}: network {qualified} is given {cap:?} but none of its plugins declares the {cap:?} capability"
                )));
            }
            runtime.insert(cap.to_string(), v);
        }
        let ifname = match &s.interface {
            Some(n) => n.clone(),
            None => format!("net{}", i + 1),
        };
        if !ctx.ifnames.insert(ifname.clone()) {
            return Err(Error::config(format!(
                "{pod_name}: interface name {ifname} is used twice (network {qualified})"
            )));
        }
        // A definition backed by a device-plugin resource gets the next device the pod was allocated,
        // as top-level "deviceID" (what sriov-style plugins read) and the deviceID capability.
        let (mut device_id, mut device_info) = (None, None);
        if let Some(resource) = &nad.resource_name {
            let uid = plan.pod.as_ref().map(|p| p.uid.clone()).unwrap_or_default();
            if ctx.devices.is_none() {
                ctx.devices = Some(crate::k8s::devices::pod_devices(
                    &ac.device_checkpoint,
                    &uid,
                )?);
            }
            let pool = ctx
                .devices
                .as_mut()
                .and_then(|d| d.get_mut(resource.as_str()));
            let id = match pool {
                Some(p) if !p.is_empty() => p.remove(0),
                _ => {
                    return Err(Error::config(format!(
                        "{pod_name}: network {qualified} needs a device of resource {resource}, and the pod has none left (does its spec request {resource}?)"
                    )));
                }
            };
            for p in &mut list.plugins {
                p.insert("deviceID".into(), json!(id));
            }
            if declares_capability(&list, "deviceID") {
                runtime.insert("deviceID".into(), json!(id));
            }
            device_info = crate::k8s::devices::device_info(&ac.device_info_dir, resource, &id);
            device_id = Some(id);
        }
        let default_route = s.default_route.clone().unwrap_or_default();
        for gw in &default_route {
            let fam = usize::from(gw.is_ipv6());
            if ctx.families_routed[fam] {
                return Err(Error::config(format!(
                    "{pod_name}: more than one default-route gateway for IPv{} (ECMP default routes are not supported)",
                    if fam == 0 { 4 } else { 6 }
                )));
            }
            ctx.families_routed[fam] = true;
        }
        check_runnable(
            &list,
            args,
            ac,
            &format!("network {qualified} as {ifname}"),
            purpose,
        )?;
        tag_native(&mut list, link_group(&args.container_id, &args.ifname));
        list.name = if list.name.is_empty() {
            nad.name.clone()
        } else {
            list.name
        };
        Ok(AttachmentRecord {
            network: qualified,
            ifname,
            driver: "chain".into(),
            conf: list.to_value(),
            runtime_config: runtime,
            cni_args: args.args.for_delegate(),
            default_route,
            device_id,
            device_info,
            result: None,
        })
    }
}
