//! Planning a pod's attachments, before anything is touched: the cluster network as `CNI_IFNAME`, then —
//! for a Kubernetes pod outside the system namespaces — `defaultNetworks` and the networks its
//! annotation selects, each resolved to its NetworkAttachmentDefinition and configuration, checked
//! against namespace isolation, given a unique interface name and its runtime arguments. Any problem is
//! an error here, so ADD either attaches everything or touches nothing.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::attach::Checked;
use crate::cni::conf::{NetConf, normalize_runtime_config};
use crate::cni::skel::CmdArgs;
use crate::delegate::Invocation;
use crate::engine::chain::NetworkList;
use crate::engine::config::{AttacheConf, RoutingMode, load_named};
use crate::engine::pod::link_group;
use crate::engine::record::AttachmentRecord;
use crate::error::{Error, Result};
use crate::k8s::POD_ANNOTATIONS_CAPABILITY;
use crate::k8s::PodRef;
use crate::k8s::annotation::{NETWORKS, Selection, parse_networks};
use crate::k8s::api::PodInfo;
use crate::k8s::client::KubeApi;
use crate::k8s::nad::{Nad, load_folder};

/// What a plan is for. ADD refuses anything wrong before touching anything; a teardown (DEL without a
/// readable record) takes whatever it can still resolve and skips the rest, saying why in the log and
/// counting the skips (a plan that skipped something may not describe all the pod had).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose<'a> {
    Add,
    Teardown(&'a std::cell::Cell<usize>),
}

/// The outcome of planning.
pub struct Plan {
    pub attachments: Vec<Planned>,
    pub pod: Option<PodInfo>,
    /// A connected API client, when a kubeconfig is configured (for the network-status annotation).
    pub api: Option<KubeApi>,
}

/// In a teardown plan, an error skips one item instead of failing the plan.
fn skip_or_fail<T>(purpose: Purpose<'_>, what: &str, r: Result<T>) -> Result<Option<T>> {
    match (r, purpose) {
        (Ok(v), _) => Ok(Some(v)),
        (Err(e), Purpose::Add) => Err(e),
        (Err(e), Purpose::Teardown(skipped)) => {
            skipped.set(skipped.get() + 1);
            tracing::info!("DEL skips {what}: {e}");
            Ok(None)
        }
    }
}

/// One attachment of a plan: its record, and its chain's native configurations as planning validated
/// them (ADD runs them as they are; see [`NetworkList::add`]).
pub struct Planned {
    pub record: AttachmentRecord,
    pub checked: Vec<Option<Checked>>,
}

impl Plan {
    pub fn pod_ref(&self) -> Option<PodRef> {
        self.pod.as_ref().map(|p| p.pod.clone())
    }

    /// The attachments' records, in order.
    pub fn records(&self) -> impl Iterator<Item = &AttachmentRecord> {
        self.attachments.iter().map(|p| &p.record)
    }
}

/// Check that every plugin of an attachment's chain can run (see [`NetworkList::runnable`]), with the
/// arguments the run will give them; returns the checked native configurations and the link group
/// (the pod's, if any plugin runs natively).
fn runnable(
    list: &NetworkList,
    args: &CmdArgs,
    ac: &AttacheConf,
    ifname: &str,
    runtime: &Map<String, Value>,
    what: &str,
    purpose: Purpose<'_>,
) -> Result<(Vec<Option<Checked>>, Option<u32>)> {
    let path = ac.search_path(&args.path);
    let group = list
        .has_native()
        .then(|| link_group(&args.container_id, &args.ifname));
    let inv = Invocation {
        container_id: &args.container_id,
        netns: args.netns.as_deref(),
        ifname,
        cni_args: args.args.for_delegate(),
        link_group: group,
        path: &path,
    };
    let checked = list.runnable(&inv, runtime, purpose == Purpose::Add, what)?;
    Ok((checked, group))
}

/// The cluster network alone (also what CHECK falls back to without a record), with its checked native
/// configurations.
pub fn cluster(
    args: &CmdArgs,
    conf: &NetConf,
    ac: &AttacheConf,
    purpose: Purpose<'_>,
) -> Result<Planned> {
    let cluster = ac.cluster_network(&conf.cni_version)?;
    let runtime = normalize_runtime_config(conf.runtime_config());
    let (checked, link_group) = runnable(
        &cluster,
        args,
        ac,
        &args.ifname,
        &runtime,
        &format!("clusterNetwork {:?} as {}", cluster.name, args.ifname),
        purpose,
    )?;
    let record = AttachmentRecord {
        runtime_config: runtime,
        cni_args: args.args.for_delegate(),
        link_group,
        ..AttachmentRecord::new(&cluster.name.clone(), &args.ifname, cluster)
    };
    Ok(Planned { record, checked })
}

/// Everything ADD will attach — or, for a teardown, everything the configuration and the pod's
/// annotations say could have been attached — in order.
pub async fn plan(
    args: &CmdArgs,
    conf: &NetConf,
    ac: &AttacheConf,
    purpose: Purpose<'_>,
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
    let Some((ns, name)) = pod_of(args) else {
        // A plain runtime: no pod, so the cluster network and defaultNetworks only.
        tracing::debug!("no Kubernetes pod in CNI_ARGS: the cluster network and defaultNetworks");
        let mut planner = Planner::new(args, conf, ac, purpose, plan, "default");
        planner.add_selections(default_selections(ac)).await?;
        return Ok(planner.plan);
    };
    if ac.system_namespaces.contains(&ns) {
        tracing::debug!("pod {ns}/{name} is in a system namespace: the cluster network only");
        return Ok(plan);
    }
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
    plan.pod = pod_info(args, conf, plan.api.as_ref(), &ns, &name, purpose).await?;
    let Some(pod) = plan.pod.clone() else {
        return Ok(plan);
    };
    let selections = selections_of(ac, &pod, purpose)?;
    let mut planner = Planner::new(args, conf, ac, purpose, plan, &ns);
    planner.add_selections(selections).await?;
    Ok(planner.plan)
}

/// The Kubernetes pod the runtime names in `CNI_ARGS`, as `(namespace, name)`.
fn pod_of(args: &CmdArgs) -> Option<(String, String)> {
    match (
        args.args.get("K8S_POD_NAMESPACE"),
        args.args.get("K8S_POD_NAME"),
    ) {
        (Some(ns), Some(n)) if !ns.is_empty() && !n.is_empty() => Some((ns.into(), n.into())),
        _ => None,
    }
}

/// The pod's annotations: from the runtime when it passes them (no API call), else from the API, else
/// none (defaultNetworks only). `None`: the API does not know the pod (the cluster network only).
async fn pod_info(
    args: &CmdArgs,
    conf: &NetConf,
    api: Option<&KubeApi>,
    ns: &str,
    name: &str,
    purpose: Purpose<'_>,
) -> Result<Option<PodInfo>> {
    let uid = args.args.get("K8S_POD_UID").unwrap_or_default().to_string();
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
    let bare = |annotations| PodInfo {
        pod: PodRef {
            namespace: ns.to_string(),
            name: name.to_string(),
            uid: uid.clone(),
        },
        annotations,
    };
    match (from_runtime, api) {
        (Some(annotations), _) => {
            tracing::debug!(
                "pod {ns}/{name}: annotations from the runtime ({POD_ANNOTATIONS_CAPABILITY})"
            );
            Ok(Some(bare(annotations)))
        }
        (None, Some(api)) => {
            tracing::debug!("pod {ns}/{name}: annotations from the Kubernetes API");
            let got = api.pod(ns, name).await.and_then(|p| match p {
                Some(mut p) => {
                    if !uid.is_empty() && !p.pod.uid.is_empty() && p.pod.uid != uid {
                        return Err(Error::TryAgain(format!(
                            "pod {ns}/{name} has UID {} in the API, not {uid}: it was replaced",
                            p.pod.uid
                        )));
                    }
                    if p.pod.uid.is_empty() {
                        p.pod.uid = uid.clone();
                    }
                    Ok(Some(p))
                }
                None => match purpose {
                    Purpose::Add => {
                        tracing::warn!(pod = %format!("{ns}/{name}"), "pod not found in the API: cluster network only");
                        Ok(None)
                    }
                    // A pod deleted before its DEL is the normal life of a pod; but its annotations
                    // are unknown, so this plan may not name every network it had.
                    Purpose::Teardown(_) => Err(Error::TryAgain(format!(
                        "pod {ns}/{name} is not in the API any more, so its networks annotation is unknown"
                    ))),
                },
            });
            Ok(skip_or_fail(purpose, "the pod's networks", got)?.flatten())
        }
        (None, None) => {
            tracing::debug!(
                "pod {ns}/{name}: no annotations from the runtime and no kubeconfig: defaultNetworks only"
            );
            Ok(Some(bare(BTreeMap::new())))
        }
    }
}

/// The networks a pod gets besides the cluster network: `defaultNetworks`, then what its networks
/// annotation selects — each checked against namespace isolation.
fn selections_of(ac: &AttacheConf, pod: &PodInfo, purpose: Purpose<'_>) -> Result<Vec<Selection>> {
    let (ns, name) = (&pod.pod.namespace, &pod.pod.name);
    let mut selections = default_selections(ac);
    let Some(value) = pod.annotations.get(NETWORKS) else {
        return Ok(selections);
    };
    let room = ac.max_attachments.saturating_sub(selections.len());
    let parsed = parse_networks(value, room)
        .map_err(|m| Error::config(format!("pod {ns}/{name}: annotation {NETWORKS}: {m}")));
    let parsed = skip_or_fail(purpose, "the networks annotation", parsed)?.unwrap_or_default();
    for s in parsed {
        let target = s.namespace.as_deref().unwrap_or(ns);
        if ac.namespace_isolation
            && target != ns
            && !ac.global_namespaces.iter().any(|g| g == target)
        {
            let e = Error::config(format!(
                "pod {ns}/{name} may not use network {}: namespaceIsolation allows only its own namespace{}",
                s.qualified(ns),
                if ac.global_namespaces.is_empty() {
                    String::new()
                } else {
                    format!(" and {}", ac.global_namespaces.join(", "))
                }
            ));
            skip_or_fail::<()>(purpose, &format!("network {}", s.qualified(ns)), Err(e))?;
            continue;
        }
        selections.push(s);
    }
    Ok(selections)
}

/// ADD refuses interface names the pod already has (`lo`, or anything a runtime made), before any side
/// effect — the kernel would refuse them half-way through. A pod with the cluster network alone is not
/// asked (it costs a thread in the pod's namespace and a link dump, a third of the meta-plugin's own
/// time): that plugin is the first and only side effect, and refuses a taken name itself.
/// `pod`: the namespace as the native attachments will share it, if any (its connection is reused).
pub async fn check_pod_ifnames(
    netns: &crate::netns::NetNs,
    pod: Option<&crate::attach::PodNs>,
    plan: &Plan,
) -> Result<()> {
    if plan.attachments.len() < 2 {
        return Ok(());
    }
    let nl = match pod {
        Some(p) => p.netlink().await?,
        None => crate::netlink::Netlink::connect(Some(netns))?,
    };
    let present: std::collections::HashSet<String> =
        nl.links().await?.into_iter().map(|l| l.name).collect();
    for a in plan.records() {
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
    /// The node's mirror, its liveness read once, at the first definition looked up there.
    mirror: Option<crate::k8s::mirror::Snapshot>,
}

impl<'a> Resolver<'a> {
    fn new(ac: &'a AttacheConf, api: Option<KubeApi>) -> Resolver<'a> {
        Resolver {
            ac,
            api,
            folder: None,
            mirror: None,
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
        if self.mirror.is_none() {
            self.mirror = self
                .ac
                .nad_mirror
                .as_deref()
                .map(|d| crate::k8s::mirror::Mirror::new(d).snapshot());
        }
        let mirror = self.mirror.as_ref();
        if let Some(n) = mirror.and_then(|m| m.get(ns, name)) {
            tracing::debug!(definition = key, "from the node's mirror");
            return Ok(n);
        }
        if let Some(api) = &self.api {
            match api.nad(ns, name).await {
                Ok(Some(n)) => return Ok(n),
                Ok(None) => {}
                // The API server cannot answer: a definition this node has seen, if its mirror was
                // live recently enough.
                Err(e) => {
                    match mirror.and_then(|m| m.get_stale(ns, name, self.ac.nad_mirror_max_stale)) {
                        Some((n, age)) => {
                            tracing::warn!(
                                definition = key,
                                "served from the node's mirror, last current {}s ago: {e}",
                                age.as_secs()
                            );
                            return Ok(n);
                        }
                        None => return Err(e),
                    }
                }
            }
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

/// Plans one pod's selections: what they share while each is resolved to its attachment.
struct Planner<'a> {
    args: &'a CmdArgs,
    conf: &'a NetConf,
    ac: &'a AttacheConf,
    purpose: Purpose<'a>,
    resolver: Resolver<'a>,
    /// The plan so far (the cluster network's attachment), which the selections' join.
    plan: Plan,
    /// The namespace of definitions a selection names without one (the pod's).
    pod_ns: String,
}

impl<'a> Planner<'a> {
    fn new(
        args: &'a CmdArgs,
        conf: &'a NetConf,
        ac: &'a AttacheConf,
        purpose: Purpose<'a>,
        plan: Plan,
        pod_ns: &str,
    ) -> Planner<'a> {
        Planner {
            args,
            conf,
            ac,
            purpose,
            resolver: Resolver::new(ac, plan.api.clone()),
            plan,
            pod_ns: pod_ns.to_string(),
        }
    }

    async fn add_selections(&mut self, selections: Vec<Selection>) -> Result<()> {
        if selections.len() > self.ac.max_attachments {
            let e = Error::config(format!(
                "{} networks are selected: at most {} are allowed (maxAttachments)",
                selections.len(),
                self.ac.max_attachments
            ));
            skip_or_fail::<()>(self.purpose, "the selected networks", Err(e))?;
            return Ok(());
        }
        let mut ctx = SelectionCtx {
            pod_name: match &self.plan.pod {
                Some(p) => format!("pod {}", p.pod),
                None => format!("container {}", self.args.container_id),
            },
            families_routed: [false, false],
            devices: None,
            ifnames: self.plan.records().map(|a| a.ifname.clone()).collect(),
        };
        for (i, s) in selections.into_iter().enumerate() {
            let what = format!("network {}", s.qualified(&self.pod_ns));
            let r = self.attachment_for(&mut ctx, i, s).await;
            if let Some(a) = skip_or_fail(self.purpose, &what, r)? {
                tracing::debug!(
                    network = %a.record.network,
                    ifname = %a.record.ifname,
                    "planned"
                );
                self.plan.attachments.push(a);
            }
        }
        Ok(())
    }

    /// One selection (the `i`th), resolved to the attachment it makes.
    async fn attachment_for(
        &mut self,
        ctx: &mut SelectionCtx,
        i: usize,
        s: Selection,
    ) -> Result<Planned> {
        let (args, conf, ac) = (self.args, self.conf, self.ac);
        let pod_name = ctx.pod_name.clone();
        let ns = s.namespace.clone().unwrap_or_else(|| self.pod_ns.clone());
        let nad = self.resolver.nad(&ns, &s.name).await?;
        let qualified = nad.qualified();
        let mut list = network_of(&nad, ac, conf)?;
        if let Some(extra) = &s.cni_args {
            merge_cni_args(&mut list, extra);
        }
        inject_cluster_ipam(&mut list, s.ipam_claim_reference.as_deref(), ac, conf);
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
        let (device_id, device_info) = match &nad.resource_name {
            Some(resource) => {
                let uid = self
                    .plan
                    .pod
                    .as_ref()
                    .map(|p| p.pod.uid.as_str())
                    .unwrap_or_default();
                let id = ctx
                    .take_device(ac, uid, resource)
                    .map_err(|e| e.context(format!("{pod_name}: network {qualified}")))?;
                // As top-level "deviceID" (what sriov-style plugins read) and the deviceID capability.
                for p in &mut list.plugins {
                    p.insert("deviceID".into(), json!(id));
                }
                if declares_capability(&list, "deviceID") {
                    runtime.insert("deviceID".into(), json!(id));
                }
                let info = crate::k8s::devices::device_info(&ac.device_info_dir, resource, &id);
                (Some(id), info)
            }
            None => (None, None),
        };
        // After the device plugin's deviceID is in (a host-device it names needs no resolving). A
        // teardown resolves nothing: DEL goes by what ADD recorded, and a handed device is in the pod.
        let nics = match self.purpose {
            Purpose::Add => resolve_nics(&mut list, ac)
                .await
                .map_err(|e| e.context(format!("{pod_name}: network {qualified}")))?,
            Purpose::Teardown(_) => {
                crate::attach::nic::strip_selectors(&mut list.plugins);
                Vec::new()
            }
        };
        let default_route = s.default_route.clone().unwrap_or_default();
        ctx.route_defaults(&pod_name, &default_route)?;
        let source_routing = routing_of(s.routing.as_deref(), &nad, ac)
            .map_err(|e| e.context(format!("{pod_name}: network {qualified}")))?
            == RoutingMode::Source;
        let (checked, link_group) = runnable(
            &list,
            args,
            ac,
            &ifname,
            &runtime,
            &format!("network {qualified} as {ifname}"),
            self.purpose,
        )?;
        if list.name.is_empty() {
            list.name = nad.name.clone();
        }
        let record = AttachmentRecord {
            runtime_config: runtime,
            cni_args: args.args.for_delegate(),
            link_group,
            default_route,
            source_routing,
            device_id,
            device_info,
            nics,
            ..AttachmentRecord::new(&qualified, &ifname, list)
        };
        Ok(Planned { record, checked })
    }
}

/// Every node interface the network's plugins name, resolved on this node and written into their
/// configurations ([`crate::attach::nic`]): what the record keeps.
async fn resolve_nics(
    list: &mut NetworkList,
    ac: &AttacheConf,
) -> Result<Vec<crate::attach::nic::Resolved>> {
    let mut nics = crate::attach::nic::NodeNics::new(&ac.physnets_file);
    let mut out = Vec::new();
    for (i, p) in list.plugins.iter_mut().enumerate() {
        if let Some(r) = crate::attach::nic::resolve_plugin(i, p, &mut nics).await? {
            out.push(r);
        }
    }
    Ok(out)
}

/// How one selection's interface is routed: the selection's `attache.routing`, else its definition's
/// (a top-level key of `spec.config`), else the configuration's `podRouting`.
fn routing_of(selection: Option<&str>, nad: &Nad, ac: &AttacheConf) -> Result<RoutingMode> {
    let parse = |v: &Value, whose: &str| -> Result<RoutingMode> {
        serde_json::from_value(v.clone()).map_err(|_| {
            Error::config(format!(
                "{whose} attache.routing is {v}: it must be \"source\" or \"main\""
            ))
        })
    };
    if let Some(s) = selection {
        return parse(&Value::String(s.to_string()), "the selection's");
    }
    if let Some(v) = nad
        .config_value()?
        .as_ref()
        .and_then(|c| c.get("attache.routing"))
    {
        return parse(v, "the definition's");
    }
    Ok(ac.pod_routing)
}

/// What the selections of one pod share while they are planned.
struct SelectionCtx {
    /// `pod ns/name` (or the container) in errors.
    pod_name: String,
    families_routed: [bool; 2],
    /// Device IDs the kubelet gave the pod, by resource, read once if a definition needs one.
    devices: Option<BTreeMap<String, Vec<String>>>,
    /// Interface names taken so far (a set: planning stays linear in the number of selections).
    ifnames: std::collections::HashSet<String>,
}

/// A definition's network: its `spec.config`, or (without one) the file of its name in `confDir`.
fn network_of(nad: &Nad, ac: &AttacheConf, conf: &NetConf) -> Result<NetworkList> {
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
    NetworkList::from_value(&value, &conf.cni_version)
        .map_err(|e| e.context(format!("network {qualified}")))
}

/// attache-ipam sections get what the meta configuration knows and they do not say: the kubeconfig,
/// the node's name (`nodeName`), and the selection's `ipam-claim-reference` (as `ipamClaimReference`).
fn inject_cluster_ipam(
    list: &mut NetworkList,
    claim: Option<&str>,
    ac: &AttacheConf,
    conf: &NetConf,
) {
    for p in &mut list.plugins {
        let Some(Value::Object(ipam)) = p.get_mut("ipam") else {
            continue;
        };
        if ipam.get("type").and_then(Value::as_str) != Some(crate::ipam::cluster::TYPE) {
            continue;
        }
        if let Some(kc) = &ac.kubeconfig {
            ipam.entry("kubeconfig").or_insert_with(|| json!(kc));
        }
        if let Some(n) = conf.raw.get("nodeName").filter(|n| n.is_string()) {
            ipam.entry("nodeName").or_insert_with(|| n.clone());
        }
        if let Some(c) = claim {
            ipam.insert("ipamClaimReference".into(), json!(c));
        }
    }
}

/// A selection's `cni-args` join each plugin's `args.cni`, the annotation's winning over the
/// definition's.
fn merge_cni_args(list: &mut NetworkList, extra: &Map<String, Value>) {
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

impl SelectionCtx {
    /// The next device of `resource` the kubelet gave the pod (its checkpoint read once).
    fn take_device(&mut self, ac: &AttacheConf, uid: &str, resource: &str) -> Result<String> {
        if self.devices.is_none() {
            self.devices = Some(crate::k8s::devices::pod_devices(
                &ac.device_checkpoint,
                uid,
            )?);
        }
        match self.devices.as_mut().and_then(|d| d.get_mut(resource)) {
            Some(p) if !p.is_empty() => Ok(p.remove(0)),
            _ => Err(Error::config(format!(
                "needs a device of resource {resource}, and the pod has none left (does its spec request {resource}?)"
            ))),
        }
    }

    /// One default-route gateway per family, across the pod's selections.
    fn route_defaults(&mut self, pod_name: &str, gws: &[std::net::IpAddr]) -> Result<()> {
        for gw in gws {
            let fam = usize::from(gw.is_ipv6());
            if self.families_routed[fam] {
                return Err(Error::config(format!(
                    "{pod_name}: more than one default-route gateway for IPv{} (ECMP default routes are not supported)",
                    if fam == 0 { 4 } else { 6 }
                )));
            }
            self.families_routed[fam] = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A meta configuration whose cluster network and definitions are native bridges (planning checks
    /// them without touching anything), definitions from a networksDir, annotations from the runtime.
    fn planning(annotation: Option<&str>, extra: Value) -> (tempdir::Dir, CmdArgs, NetConf) {
        let d = tempdir::Dir::new();
        let nad = |ns: &str, name: &str, caps: Value| {
            json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                   "metadata": {"namespace": ns, "name": name},
                   "spec": {"config": json!({"cniVersion": "1.0.0", "type": "bridge",
                        "bridge": format!("br-{name}"), "capabilities": caps}).to_string()}})
        };
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [
            nad("team", "blue", json!({})),
            nad("team", "mac", json!({"mac": true})),
            nad("default", "shared", json!({})),
            nad("other", "private", json!({})),
        ]});
        std::fs::write(d.0.join("nads.json"), list.to_string()).unwrap();
        let mut raw = json!({"cniVersion": "1.1.0", "name": "attache", "type": "attache",
            "clusterNetwork": {"cniVersion": "1.1.0", "name": "cluster", "type": "bridge", "bridge": "cni0"},
            "networksDir": d.0, "cacheDir": d.0.join("cache")});
        if let Some(a) = annotation {
            raw["runtimeConfig"] = json!({POD_ANNOTATIONS_CAPABILITY: {NETWORKS: a}});
        }
        for (k, v) in extra.as_object().unwrap() {
            raw[k] = v.clone();
        }
        let args =
            crate::testutil::cmd_args("K8S_POD_NAMESPACE=team;K8S_POD_NAME=web;K8S_POD_UID=u1");
        (d, args, NetConf::from_value(raw).unwrap())
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Dir(crate::testutil::tempdir(&format!("plan-{n}")))
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn run_plan(annotation: Option<&str>, extra: Value, purpose: Purpose<'_>) -> Result<Plan> {
        let (_d, args, conf) = planning(annotation, extra);
        let ac = AttacheConf::from_conf(&conf).unwrap();
        crate::testutil::rt().block_on(plan(&args, &conf, &ac, purpose))
    }

    /// `network ifname` of each attachment, in order.
    fn summary(p: &Plan) -> Vec<String> {
        p.records()
            .map(|a| format!("{} {}", a.network, a.ifname))
            .collect()
    }

    /// What is planned, the annotation, extra meta keys, and the attachments (`network ifname`) or the
    /// error wanted.
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        Value,
        std::result::Result<&'a [&'a str], &'a str>,
    );

    #[test]
    fn planning_what_the_annotation_selects() {
        let cases: &[Case] = &[
            ("no annotation", None, json!({}), Ok(&["cluster eth0"])),
            (
                "by name",
                Some("blue"),
                json!({}),
                Ok(&["cluster eth0", "team/blue net1"]),
            ),
            (
                "names, interfaces and the global namespace",
                Some("blue, blue@blue2, default/shared"),
                json!({}),
                Ok(&[
                    "cluster eth0",
                    "team/blue net1",
                    "team/blue blue2",
                    "default/shared net3",
                ]),
            ),
            (
                "the JSON form",
                Some(
                    r#"[{"name": "blue", "interface": "data0"}, {"name": "mac", "mac": "02:00:00:00:00:01"}]"#,
                ),
                json!({}),
                Ok(&["cluster eth0", "team/blue data0", "team/mac net2"]),
            ),
            (
                "defaultNetworks first",
                Some("blue"),
                json!({"defaultNetworks": ["default/shared"]}),
                Ok(&["cluster eth0", "default/shared net1", "team/blue net2"]),
            ),
            (
                "another namespace",
                Some("other/private"),
                json!({}),
                Err("may not use network other/private: namespaceIsolation"),
            ),
            (
                "another namespace, isolation off",
                Some("other/private"),
                json!({"namespaceIsolation": false}),
                Ok(&["cluster eth0", "other/private net1"]),
            ),
            (
                "a definition that does not exist",
                Some("green"),
                json!({}),
                Err("NetworkAttachmentDefinition team/green not found"),
            ),
            (
                "an interface name twice",
                Some("blue@x, blue@x"),
                json!({}),
                Err("interface name x is used twice"),
            ),
            (
                "a capability the network does not declare",
                Some(r#"[{"name": "blue", "mac": "02:00:00:00:00:01"}]"#),
                json!({}),
                Err("none of its plugins declares the \"mac\" capability"),
            ),
            (
                "two default routes of one family",
                Some(
                    r#"[{"name": "blue", "default-route": ["10.0.0.1"]}, {"name": "mac", "default-route": ["10.1.0.1"]}]"#,
                ),
                json!({}),
                Err("default-route may be requested by one network selection element only"),
            ),
            (
                "two default-route gateways of one family in one selection",
                Some(r#"[{"name": "blue", "default-route": ["10.0.0.1", "10.0.0.2"]}]"#),
                json!({}),
                Err("more than one default-route gateway for IPv4"),
            ),
            (
                "more than maxAttachments",
                Some("blue@a, blue@b, blue@c"),
                json!({"maxAttachments": 2}),
                Err("at most"),
            ),
            (
                "a system namespace's pod",
                Some("blue"),
                json!({"systemNamespaces": ["team"]}),
                Ok(&["cluster eth0"]),
            ),
            (
                "an annotation that does not parse",
                Some("[{"),
                json!({}),
                Err("annotation"),
            ),
        ];
        for (what, annotation, extra, want) in cases {
            let got = run_plan(*annotation, extra.clone(), Purpose::Add);
            match (want, got) {
                (Ok(want), Ok(p)) => assert_eq!(summary(&p), *want, "{what}"),
                (Err(want), Err(e)) => assert!(e.to_string().contains(want), "{what}: {e}"),
                (want, Ok(p)) => panic!("{what}: planned {:?}, wanted {want:?}", summary(&p)),
                (want, Err(e)) => panic!("{what}: {e}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn a_teardown_plan_takes_what_it_can_and_counts_the_rest() {
        for (annotation, extra, want, skips) in [
            (
                "blue, green",
                json!({}),
                vec!["cluster eth0", "team/blue net1"],
                1,
            ),
            (
                "other/private, blue@b",
                json!({}),
                vec!["cluster eth0", "team/blue b"],
                1,
            ),
            ("[{", json!({}), vec!["cluster eth0"], 1),
            (
                "blue",
                json!({"clusterNetwork": "missing"}),
                vec!["team/blue net1"],
                1,
            ),
            (
                "blue, blue@b",
                json!({}),
                vec!["cluster eth0", "team/blue net1", "team/blue b"],
                0,
            ),
        ] {
            let skipped = std::cell::Cell::new(0);
            let p = run_plan(Some(annotation), extra, Purpose::Teardown(&skipped)).unwrap();
            assert_eq!(summary(&p), want, "{annotation}");
            assert_eq!(skipped.get(), skips, "{annotation}");
        }
    }

    #[test]
    fn attache_ipam_gets_the_kubeconfig_node_name_and_claim_of_the_meta_plugin() {
        let conf = NetConf::from_value(
            json!({"cniVersion": "1.0.0", "name": "m", "type": "attache",
            "clusterNetwork": {"type": "ptp"}, "kubeconfig": "/etc/kc", "nodeName": "worker-3"}),
        )
        .unwrap();
        let ac = AttacheConf::from_conf(&conf).unwrap();
        let mut list = NetworkList::from_value(
            &json!({"cniVersion": "1.0.0", "name": "blue", "plugins": [
                {"type": "macvlan", "ipam": {"type": "attache-ipam", "range": "10.1.0.0/16", "nodeName": "mine"}},
                {"type": "tuning", "ipam": {"type": "host-local"}}]}),
            "1.0.0",
        )
        .unwrap();
        inject_cluster_ipam(&mut list, Some("vm1"), &ac, &conf);
        let ipam = &list.plugins[0]["ipam"];
        assert_eq!(ipam["kubeconfig"], "/etc/kc");
        assert_eq!(ipam["nodeName"], "mine", "the definition's own wins");
        assert_eq!(ipam["ipamClaimReference"], "vm1");
        assert_eq!(list.plugins[1]["ipam"], json!({"type": "host-local"}));
    }
}
