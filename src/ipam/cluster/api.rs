//! attache-ipam's custom resources (group `ipam.attache.dev`, version `v1alpha1`, cluster-scoped), read and
//! written through the `kube` client as dynamic objects, every call under the invocation's API deadline.
//! Writes are conditional: a create is refused (409) when the name exists, a replace or delete when the
//! object changed since it was read — the API server's optimistic concurrency is the only lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions};
use kube::core::{ApiResource, GroupVersionKind, ObjectMeta};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::k8s::client::KubeApi;

pub const GROUP: &str = "ipam.attache.dev";
pub const VERSION: &str = "v1alpha1";
pub const POOL_LABEL: &str = "ipam.attache.dev/pool";
pub const NODE_LABEL: &str = "ipam.attache.dev/node";
const FIELD_MANAGER: &str = "attache";

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural)
}

/// One range registered in a pool.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolRange {
    pub range: String,
    pub block_size: u8,
}

/// An `AddressPool`: the ranges of one address space (never two overlapping).
#[derive(Clone, Debug, PartialEq)]
pub struct PoolObj {
    pub ranges: Vec<PoolRange>,
    pub resource_version: String,
}

/// An `AddressBlock`: one block of a range, owned by one node.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockObj {
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub pool: String,
    pub range: String,
    pub cidr: String,
    pub node: String,
    pub instance: String,
    /// The claiming node's dataDir (its path there; empty: a block made before attache recorded it).
    /// With `instance`, it tells a dataDir that was lost from another dataDir of the same node.
    pub data_dir: String,
}

/// The outcome of a conditional write.
#[derive(Debug, PartialEq)]
pub enum Written<T> {
    Done(T),
    /// 409: the name exists (create), or the object changed since it was read (replace, delete).
    Conflict,
    /// 404: there is no such object (replace, delete).
    Gone,
}

impl<T> Written<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Written<U> {
        match self {
            Written::Done(v) => Written::Done(f(v)),
            Written::Conflict => Written::Conflict,
            Written::Gone => Written::Gone,
        }
    }

    /// From a call whose expected answers were 404 and 409 (and for a create, 409 alone).
    fn of(r: std::result::Result<T, u16>) -> Written<T> {
        match r {
            Ok(v) => Written::Done(v),
            Err(404) => Written::Gone,
            Err(_) => Written::Conflict,
        }
    }
}

/// A node name as a label value (at most 63 characters: a longer one is hashed).
pub fn label_value(s: &str) -> String {
    if s.len() <= 63 {
        return s.to_string();
    }
    let h = super::block::seed(&[s]);
    format!("{}-{h:016x}", &s[..46].trim_end_matches(['.', '-']))
}

fn spec_str(o: &DynamicObject, k: &str) -> String {
    o.data["spec"][k].as_str().unwrap_or_default().to_string()
}

fn block_of(o: DynamicObject) -> BlockObj {
    BlockObj {
        uid: o.metadata.uid.clone().unwrap_or_default(),
        resource_version: o.metadata.resource_version.clone().unwrap_or_default(),
        pool: spec_str(&o, "pool"),
        range: spec_str(&o, "range"),
        cidr: spec_str(&o, "cidr"),
        node: spec_str(&o, "node"),
        instance: spec_str(&o, "instance"),
        data_dir: spec_str(&o, "dataDir"),
        name: o.metadata.name.unwrap_or_default(),
    }
}

fn pool_of(o: &DynamicObject) -> PoolObj {
    let ranges = o.data["spec"]["ranges"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    Some(PoolRange {
                        range: r["range"].as_str()?.to_string(),
                        block_size: u8::try_from(r["blockSize"].as_u64()?).ok()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    PoolObj {
        ranges,
        resource_version: o.metadata.resource_version.clone().unwrap_or_default(),
    }
}

fn ranges_json(ranges: &[PoolRange]) -> Value {
    json!({"ranges": ranges.iter().map(|r| json!({"range": r.range, "blockSize": r.block_size})).collect::<Vec<_>>()})
}

fn post() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

pub const LENDER_LABEL: &str = "ipam.attache.dev/lender";
/// A mirror pod's annotation: the static pod's UID as the kubelet (and so `K8S_POD_UID`) knows it.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
pub const HOLDER_LABEL: &str = "ipam.attache.dev/holder";

/// An `AddressGrant`: one address of another node's block, asked for by a node whose range has no free
/// block. Only the lender (the block's owner) picks the address, in its own store, and answers in
/// `status`; so no address is ever handed out twice.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GrantObj {
    pub name: String,
    pub uid: String,
    pub pool: String,
    pub range: String,
    /// The block's object name and CIDR.
    pub block: String,
    pub cidr: String,
    pub lender: String,
    /// The intervals of the block the borrower's definition may use (`first-last`, inclusive).
    pub window: Vec<String>,
    pub holder_node: String,
    pub container_id: String,
    pub ifname: String,
    pub pod_uid: String,
    pub pod: String,
    /// `Granted` (with `ip`) or `Refused` (with `message`); empty while pending.
    pub state: String,
    pub ip: String,
    pub message: String,
    /// `Borrowed` (an address for one container, deleted by its DEL), or a persistent address that
    /// outlives pods: `Sticky` (a StatefulSet pod's identity) or `Claim` (an IPAMClaim).
    pub purpose: String,
    /// Sticky: the StatefulSet and the pod's ordinal; Claim: the IPAMClaim.
    pub owner_namespace: String,
    pub owner_name: String,
    pub ordinal: Option<u64>,
    pub resource_version: String,
}

pub const BORROWED: &str = "Borrowed";
pub const STICKY: &str = "Sticky";
pub const CLAIM: &str = "Claim";

fn grant_of(o: DynamicObject) -> GrantObj {
    let spec = &o.data["spec"];
    let st = &o.data["status"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    GrantObj {
        uid: o.metadata.uid.clone().unwrap_or_default(),
        pool: s(&spec["pool"]),
        range: s(&spec["range"]),
        block: s(&spec["block"]),
        cidr: s(&spec["cidr"]),
        lender: s(&spec["lender"]),
        window: spec["window"]
            .as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default(),
        holder_node: s(&spec["holder"]["node"]),
        container_id: s(&spec["holder"]["containerID"]),
        ifname: s(&spec["holder"]["ifname"]),
        pod_uid: s(&spec["holder"]["podUID"]),
        pod: s(&spec["holder"]["pod"]),
        state: s(&st["state"]),
        ip: s(&st["ip"]),
        message: s(&st["message"]),
        purpose: spec["purpose"].as_str().unwrap_or(BORROWED).to_string(),
        owner_namespace: s(&spec["owner"]["namespace"]),
        owner_name: s(&spec["owner"]["name"]),
        ordinal: spec["owner"]["ordinal"].as_u64(),
        resource_version: o.metadata.resource_version.clone().unwrap_or_default(),
        name: o.metadata.name.unwrap_or_default(),
    }
}

/// A pod and the addresses it reports: its network-status annotation's and `status.podIPs`.
#[derive(Debug, Clone, Default)]
pub struct PodAddresses {
    /// `namespace/name`.
    pub pod: String,
    pub made: Option<std::time::SystemTime>,
    pub host_network: bool,
    /// Whether it carries a network-status annotation (a meta-plugin reported every interface).
    pub has_status: bool,
    pub ips: Vec<std::net::IpAddr>,
}

impl PodAddresses {
    fn of(p: &Pod) -> PodAddresses {
        let ann = p.metadata.annotations.as_ref();
        // An annotation that does not parse reports nothing.
        let status = ann
            .and_then(|a| a.get(crate::k8s::annotation::NETWORK_STATUS))
            .and_then(|s| {
                serde_json::from_str::<Vec<crate::k8s::annotation::NetworkStatus>>(s).ok()
            });
        let mut ips: Vec<std::net::IpAddr> = status
            .iter()
            .flatten()
            .flat_map(|n| n.ips.iter().filter_map(|ip| ip.parse().ok()))
            .collect();
        if let Some(st) = &p.status {
            ips.extend(
                st.pod_ips
                    .iter()
                    .flatten()
                    .filter_map(|i| i.ip.parse::<std::net::IpAddr>().ok()),
            );
        }
        PodAddresses {
            pod: format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            ),
            made: made_at(p.metadata.creation_timestamp.as_ref()),
            host_network: p
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
            has_status: status.is_some(),
            ips,
        }
    }
}

fn made_at(
    t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> Option<std::time::SystemTime> {
    t.and_then(|t| {
        u64::try_from(t.0.as_second())
            .ok()
            .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s))
    })
}

/// The pods of a node: UID -> when the pod was made (`None`: not said).
pub type PodsOn = BTreeMap<String, Option<std::time::SystemTime>>;

/// What attache-ipam asks of the Kubernetes API. [`KubeClusterApi`] asks a real server; the tests'
/// `fake::FakeApi` keeps the objects in memory under the same conditional-write rules, so that claim,
/// borrow and reconcile races run as unit tests too.
#[allow(async_fn_in_trait)] // attache's runtimes are one-threaded: no Send bound is wanted.
pub trait ClusterApi: Sized {
    async fn pool(&self, name: &str) -> Result<Option<PoolObj>>;
    async fn create_pool(&self, name: &str, ranges: &[PoolRange]) -> Result<Written<PoolObj>>;
    /// Replace the pool's ranges if it is still at `resource_version`.
    async fn replace_pool(
        &self,
        name: &str,
        ranges: &[PoolRange],
        resource_version: &str,
    ) -> Result<Written<PoolObj>>;
    async fn node_uid(&self, name: &str) -> Result<Option<String>>;
    /// The blocks of one pool.
    async fn blocks(&self, pool: &str) -> Result<Vec<BlockObj>>;
    async fn block(&self, name: &str) -> Result<Option<BlockObj>>;
    /// Create a block: exactly one node's create of a name succeeds.
    async fn create_block(&self, b: &BlockObj) -> Result<Written<BlockObj>>;
    async fn all_blocks(&self) -> Result<Vec<BlockObj>>;
    /// Delete a block if it is still the one read (its UID, and its resourceVersion when known).
    async fn delete_block(&self, b: &BlockObj) -> Result<Written<()>>;
    /// The pods bound to `node`, from a complete list: UID -> when the pod was made (a static pod's
    /// mirror counts under the UID its containers carry too).
    async fn pods_on(&self, node: &str) -> Result<PodsOn>;
    /// The pods bound to `node` with the addresses they report (complete list, paged).
    async fn pod_addresses_on(&self, node: &str) -> Result<Vec<PodAddresses>>;
    async fn pod_uid(&self, namespace: &str, name: &str) -> Result<Option<String>>;
    /// Whether `namespace/name` is the pod of `uid` (or that static pod's mirror).
    async fn pod_is(&self, namespace: &str, name: &str, uid: &str) -> Result<bool>;
    async fn node_names(&self) -> Result<BTreeSet<String>>;
    async fn create_grant(&self, g: &GrantObj) -> Result<Written<GrantObj>>;
    /// Make `holder` the grant's holder if the grant is still at the resourceVersion read.
    async fn take_grant(&self, g: &GrantObj, holder: &GrantObj) -> Result<Written<()>>;
    async fn grant(&self, name: &str) -> Result<Option<GrantObj>>;
    /// The grant once it is no longer at `resource_version` (a watch, not a poll): `Some(Some(g))`
    /// changed, `Some(None)` deleted, `None` unchanged for `wait`. A watch the server ends early is
    /// answered by a GET (which may show the grant unchanged).
    async fn grant_change(
        &self,
        name: &str,
        resource_version: &str,
        wait: Duration,
    ) -> Result<Option<Option<GrantObj>>>;
    /// The lender's answer in the grant's status.
    async fn answer_grant(
        &self,
        g: &GrantObj,
        state: &str,
        ip: &str,
        message: &str,
    ) -> Result<Written<()>>;
    async fn delete_grant(&self, name: &str, uid: Option<&str>) -> Result<Written<()>> {
        self.delete_grant_if(name, uid, None).await
    }
    /// Delete a grant if its UID (and resourceVersion, when given) are still those.
    async fn delete_grant_if(
        &self,
        name: &str,
        uid: Option<&str>,
        resource_version: Option<&str>,
    ) -> Result<Written<()>>;
    /// The grants asked of a lender, and the list's resourceVersion (to watch from).
    async fn grants_of_lender(&self, lender: &str) -> Result<(Vec<GrantObj>, String)>;
    async fn grants_of_holder(&self, holder: &str) -> Result<Vec<GrantObj>>;
    /// A pod's UID and the StatefulSet that owns it, if one does.
    async fn pod_owner(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(String, Option<String>)>>;
    async fn statefulset_replicas(&self, namespace: &str, name: &str) -> Result<Option<i32>>;
    /// An IPAMClaim's interface and recorded addresses.
    async fn ipamclaim(&self, namespace: &str, name: &str)
    -> Result<Option<(String, Vec<String>)>>;
    async fn set_claim_status(
        &self,
        namespace: &str,
        name: &str,
        ips: &[String],
        owner_pod: &str,
    ) -> Result<()>;
    /// A fresh deadline for the calls that follow.
    fn renew(&mut self);
    /// A client for the same server with a fresh deadline.
    fn renewed(&self) -> Self;
}

/// [`ClusterApi`] over a real API server.
pub struct KubeClusterApi {
    kube: KubeApi,
    pools: Api<DynamicObject>,
    blocks: Api<DynamicObject>,
    grants: Api<DynamicObject>,
}

impl KubeClusterApi {
    /// A conditional write: the answers in `expected` (409, and 404 where the object may be gone)
    /// are outcomes, not errors.
    async fn write<T>(
        &self,
        what: &str,
        expected: &[u16],
        fut: impl std::future::Future<Output = std::result::Result<T, kube::Error>>,
    ) -> Result<Written<T>> {
        Ok(Written::of(self.kube.call(what, expected, fut).await?))
    }

    pub async fn connect(kubeconfig: Option<&Path>, timeout: Duration) -> Result<KubeClusterApi> {
        let kube = KubeApi::connect(kubeconfig, timeout).await?;
        let client = kube.client();
        Ok(KubeClusterApi {
            pools: Api::all_with(client.clone(), &resource("AddressPool", "addresspools")),
            blocks: Api::all_with(client.clone(), &resource("AddressBlock", "addressblocks")),
            grants: Api::all_with(client, &resource("AddressGrant", "addressgrants")),
            kube,
        })
    }

    /// A merge patch of a grant (its preconditions inside it): `Conflict` when they fail.
    async fn patch_grant(&self, name: &str, verb: &str, patch: &Value) -> Result<Written<()>> {
        let params = kube::api::PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let r = self
            .write(
                &format!("{verb} AddressGrant {name}"),
                &[404, 409],
                self.grants
                    .patch(name, &params, &kube::api::Patch::Merge(patch)),
            )
            .await?;
        Ok(r.map(|_| ()))
    }

    /// Watch the grants asked of `lender` from `resource_version`: `Some((deleted, grant))` per event,
    /// `None` when the watch ended (the server closes it after `secs`; a 410 ends it too).
    pub async fn watch_grants(
        &self,
        lender: &str,
        resource_version: &str,
        secs: u32,
    ) -> Result<impl futures::Stream<Item = Option<(bool, GrantObj)>> + use<>> {
        use futures::StreamExt;
        let wp = kube::api::WatchParams::default()
            .labels(&format!("{LENDER_LABEL}={}", label_value(lender)))
            .timeout(secs);
        let stream = self
            .kube
            .call(
                &format!("watch the AddressGrants of lender {lender}"),
                &[],
                self.grants.watch(&wp, resource_version),
            )
            .await?
            .map_err(|c| Error::Internal(format!("unexpected status {c}")))?;
        Ok(stream.map(|ev| match ev {
            Ok(kube::api::WatchEvent::Added(o) | kube::api::WatchEvent::Modified(o)) => {
                Some((false, grant_of(o)))
            }
            Ok(kube::api::WatchEvent::Deleted(o)) => Some((true, grant_of(o))),
            Ok(kube::api::WatchEvent::Bookmark(_)) => Some((false, GrantObj::default())),
            Ok(kube::api::WatchEvent::Error(_)) | Err(_) => None,
        }))
    }

    /// The pods bound to `node`, listed 500 a page, and what that list is called in errors.
    fn pods_of_node(&self, node: &str) -> (Api<Pod>, ListParams, String) {
        let lp = ListParams::default()
            .fields(&format!("spec.nodeName={node}"))
            .limit(500);
        (
            Api::all(self.kube.client()),
            lp,
            format!("list the pods of node {node}"),
        )
    }

    fn ipamclaims(&self, namespace: &str) -> Api<DynamicObject> {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1alpha1", "IPAMClaim"),
            "ipamclaims",
        );
        Api::namespaced_with(self.kube.client(), namespace, &ar)
    }
}

impl ClusterApi for KubeClusterApi {
    async fn pool(&self, name: &str) -> Result<Option<PoolObj>> {
        let got = self
            .kube
            .call(
                &format!("get AddressPool {name}"),
                &[404],
                self.pools.get(name),
            )
            .await?;
        Ok(got.ok().map(|o| pool_of(&o)))
    }

    /// Create the pool with `ranges`; `Conflict` if another node created it first.
    async fn create_pool(&self, name: &str, ranges: &[PoolRange]) -> Result<Written<PoolObj>> {
        crate::fail::point("ipam.pool.register")?;
        let mut obj = DynamicObject::new(name, &resource("AddressPool", "addresspools"));
        obj.data = json!({"spec": ranges_json(ranges)});
        let r = self
            .write(
                &format!("create AddressPool {name}"),
                &[409],
                self.pools.create(&post(), &obj),
            )
            .await?;
        Ok(r.map(|o| pool_of(&o)))
    }

    /// Replace the pool's ranges, if it has not changed since `resource_version`.
    async fn replace_pool(
        &self,
        name: &str,
        ranges: &[PoolRange],
        resource_version: &str,
    ) -> Result<Written<PoolObj>> {
        crate::fail::point("ipam.pool.register")?;
        let mut obj = DynamicObject::new(name, &resource("AddressPool", "addresspools"));
        obj.metadata.resource_version = Some(resource_version.to_string());
        obj.data = json!({"spec": ranges_json(ranges)});
        let r = self
            .write(
                &format!("update AddressPool {name}"),
                &[404, 409],
                self.pools.replace(name, &post(), &obj),
            )
            .await?;
        Ok(r.map(|o| pool_of(&o)))
    }

    /// The Node's UID, `None` if there is no such Node.
    async fn node_uid(&self, name: &str) -> Result<Option<String>> {
        let nodes: Api<Node> = Api::all(self.kube.client());
        let r = self
            .kube
            .call(&format!("get node {name}"), &[404], nodes.get(name))
            .await?;
        Ok(r.ok().map(|n| n.metadata.uid.unwrap_or_default()))
    }

    /// Every block of `pool`: one complete list (a failure is an error, never an empty list).
    async fn blocks(&self, pool: &str) -> Result<Vec<BlockObj>> {
        let lp = ListParams::default().labels(&format!("{POOL_LABEL}={pool}"));
        let list = self
            .kube
            .call(
                &format!("list the AddressBlocks of pool {pool}"),
                &[],
                self.blocks.list(&lp),
            )
            .await?
            .map_err(|c| Error::Internal(format!("unexpected status {c}")))?;
        Ok(list.items.into_iter().map(block_of).collect())
    }

    async fn block(&self, name: &str) -> Result<Option<BlockObj>> {
        let r = self
            .kube
            .call(
                &format!("get AddressBlock {name}"),
                &[404],
                self.blocks.get(name),
            )
            .await?;
        Ok(r.ok().map(block_of))
    }

    /// Create the block's object: `Conflict` if it exists (someone owns the block).
    async fn create_block(&self, b: &BlockObj) -> Result<Written<BlockObj>> {
        crate::fail::point("ipam.block.create")?;
        let mut obj = DynamicObject::new(&b.name, &resource("AddressBlock", "addressblocks"));
        obj.metadata = ObjectMeta {
            name: Some(b.name.clone()),
            labels: Some(BTreeMap::from([
                (POOL_LABEL.to_string(), b.pool.clone()),
                (NODE_LABEL.to_string(), label_value(&b.node)),
            ])),
            ..Default::default()
        };
        obj.data = json!({"spec": {
            "pool": b.pool, "range": b.range, "cidr": b.cidr, "node": b.node, "instance": b.instance,
        }});
        if !b.data_dir.is_empty() {
            obj.data["spec"]["dataDir"] = json!(b.data_dir);
        }
        let r = self
            .write(
                &format!("create AddressBlock {} ({})", b.name, b.cidr),
                &[409],
                self.blocks.create(&post(), &obj),
            )
            .await?;
        crate::fail::point("ipam.block.created")?;
        Ok(r.map(block_of))
    }

    /// Every block of every pool (one complete list).
    async fn all_blocks(&self) -> Result<Vec<BlockObj>> {
        let list = self
            .kube
            .call(
                "list the AddressBlocks",
                &[],
                self.blocks.list(&ListParams::default()),
            )
            .await?
            .map_err(|c| Error::Internal(format!("unexpected status {c}")))?;
        Ok(list.items.into_iter().map(block_of).collect())
    }

    /// Pages of 500 read to the end: any failure, an expired continue token included, is an error,
    /// never a shorter list.
    async fn pods_on(&self, node: &str) -> Result<PodsOn> {
        let (pods, lp, what) = self.pods_of_node(node);
        let (items, _) = self
            .kube
            .all_pages(&what, lp, |lp| {
                let pods = pods.clone();
                async move { pods.list_metadata(&lp).await }
            })
            .await?;
        let mut out = PodsOn::new();
        for p in &items {
            let made = made_at(p.metadata.creation_timestamp.as_ref());
            // A static pod's containers carry the kubelet's UID, which its mirror pod names in this
            // annotation (the mirror's own UID is another).
            if let Some(m) = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MIRROR_ANNOTATION))
            {
                out.insert(m.clone(), made);
            }
            match &p.metadata.uid {
                Some(u) if !u.is_empty() => {
                    out.insert(u.clone(), made);
                }
                _ => {
                    return Err(Error::Internal(format!(
                        "the API listed a pod of node {node} without a UID"
                    )));
                }
            }
        }
        Ok(out)
    }

    async fn pod_addresses_on(&self, node: &str) -> Result<Vec<PodAddresses>> {
        let (pods, lp, what) = self.pods_of_node(node);
        let (items, _) = self
            .kube
            .all_pages(&what, lp, |lp| {
                let pods = pods.clone();
                async move { pods.list(&lp).await }
            })
            .await?;
        Ok(items.iter().map(PodAddresses::of).collect())
    }

    /// The UID of pod `namespace/name`, `None` if there is none.
    async fn pod_uid(&self, namespace: &str, name: &str) -> Result<Option<String>> {
        Ok(self.kube.pod(namespace, name).await?.map(|p| p.pod.uid))
    }

    /// Is `uid` pod `namespace/name`'s (its UID, or for a static pod its mirror's annotation)?
    async fn pod_is(&self, namespace: &str, name: &str, uid: &str) -> Result<bool> {
        Ok(self.kube.pod(namespace, name).await?.is_some_and(|p| {
            p.pod.uid == uid
                || p.annotations.get(MIRROR_ANNOTATION).map(String::as_str) == Some(uid)
        }))
    }

    /// The names of every Node (one complete list).
    async fn node_names(&self) -> Result<BTreeSet<String>> {
        let nodes: Api<Node> = Api::all(self.kube.client());
        let list = self
            .kube
            .call(
                "list the nodes",
                &[],
                nodes.list_metadata(&ListParams::default()),
            )
            .await?
            .map_err(|c| Error::Internal(format!("unexpected status {c}")))?;
        if list
            .metadata
            .continue_
            .as_deref()
            .is_some_and(|t| !t.is_empty())
        {
            return Err(Error::Internal("the node list came back paged".into()));
        }
        Ok(list
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect())
    }

    /// Ask `g.lender` for an address: `Conflict` if a grant of that name exists.
    async fn create_grant(&self, g: &GrantObj) -> Result<Written<GrantObj>> {
        crate::fail::point("ipam.grant.create")?;
        let mut obj = DynamicObject::new(&g.name, &resource("AddressGrant", "addressgrants"));
        obj.metadata.labels = Some(BTreeMap::from([
            (POOL_LABEL.to_string(), g.pool.clone()),
            (LENDER_LABEL.to_string(), label_value(&g.lender)),
            (HOLDER_LABEL.to_string(), label_value(&g.holder_node)),
        ]));
        // Empty strings are left out (a pod-less ADD has no pod; see `answer_grant`).
        let holder: serde_json::Map<String, Value> = [
            ("node", &g.holder_node),
            ("containerID", &g.container_id),
            ("ifname", &g.ifname),
            ("podUID", &g.pod_uid),
            ("pod", &g.pod),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
        obj.data = json!({"spec": {
            "pool": g.pool, "range": g.range, "block": g.block, "cidr": g.cidr, "lender": g.lender,
            "window": g.window, "holder": holder,
            "purpose": if g.purpose.is_empty() { BORROWED } else { g.purpose.as_str() },
        }});
        if g.purpose == STICKY || g.purpose == CLAIM {
            let mut owner = json!({"namespace": g.owner_namespace, "name": g.owner_name});
            if let Some(o) = g.ordinal {
                owner["ordinal"] = json!(o);
            }
            obj.data["spec"]["owner"] = owner;
            // Persistent grants are answered by their creator, the lender itself.
            obj.data["status"] = json!({"state": "Granted", "ip": g.ip});
        }
        let r = self
            .write(
                &format!(
                    "create AddressGrant {} (an address of block {} of node {})",
                    g.name, g.cidr, g.lender
                ),
                &[409],
                self.grants.create(&post(), &obj),
            )
            .await?;
        Ok(r.map(grant_of))
    }

    /// Make `g`'s holder this container (a persistent address moving to its pod's new incarnation), if
    /// the grant has not changed since it was read: `Conflict` otherwise.
    async fn take_grant(&self, g: &GrantObj, holder: &GrantObj) -> Result<Written<()>> {
        // One merge patch, conditioned on the resourceVersion read: every holder key is set (an
        // empty one to null, which a merge patch removes).
        let h: serde_json::Map<String, Value> = [
            ("node", &holder.holder_node),
            ("containerID", &holder.container_id),
            ("ifname", &holder.ifname),
            ("podUID", &holder.pod_uid),
            ("pod", &holder.pod),
        ]
        .into_iter()
        .map(|(k, v)| {
            let v = if v.is_empty() { Value::Null } else { json!(v) };
            (k.to_string(), v)
        })
        .collect();
        let mut labels = serde_json::Map::new();
        labels.insert(HOLDER_LABEL.into(), json!(label_value(&holder.holder_node)));
        let patch = json!({
            "metadata": {"uid": g.uid, "resourceVersion": g.resource_version, "labels": labels},
            "spec": {"holder": h},
        });
        self.patch_grant(&g.name, "take over", &patch).await
    }

    async fn grant(&self, name: &str) -> Result<Option<GrantObj>> {
        let r = self
            .kube
            .call(
                &format!("get AddressGrant {name}"),
                &[404],
                self.grants.get(name),
            )
            .await?;
        Ok(r.ok().map(grant_of))
    }

    async fn grant_change(
        &self,
        name: &str,
        resource_version: &str,
        wait: Duration,
    ) -> Result<Option<Option<GrantObj>>> {
        use futures::StreamExt;
        let what = format!("watch AddressGrant {name}");
        let wp = kube::api::WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(wait.as_secs().max(1) as u32);
        let watched = async {
            // A watch that cannot start (a 410, a lagging server's 504) is answered by a GET.
            let Ok(Ok(stream)) = self
                .kube
                .call(&what, &[], self.grants.watch(&wp, resource_version))
                .await
            else {
                return self.grant(name).await.map(Some);
            };
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(kube::api::WatchEvent::Added(o) | kube::api::WatchEvent::Modified(o)) => {
                        let g = grant_of(o);
                        if g.resource_version != resource_version {
                            return Ok(Some(Some(g)));
                        }
                    }
                    Ok(kube::api::WatchEvent::Deleted(_)) => return Ok(Some(None)),
                    Ok(kube::api::WatchEvent::Bookmark(_)) => {}
                    Ok(kube::api::WatchEvent::Error(_)) | Err(_) => break,
                }
            }
            // Ended early (a 410, a dropped connection): what is there now.
            self.grant(name).await.map(Some)
        };
        match tokio::time::timeout(wait, watched).await {
            Ok(r) => r,
            Err(_) => Ok(None),
        }
    }

    /// The lender's answer: `Conflict` if the grant was replaced meanwhile (another UID), `Gone` if it
    /// was deleted.
    async fn answer_grant(
        &self,
        g: &GrantObj,
        state: &str,
        ip: &str,
        message: &str,
    ) -> Result<Written<()>> {
        // An empty field is left out rather than written as "": absent says "nothing to say" in one way
        // for every reader. (A real v1.20 server takes ""; only one built with a newer Go than its own
        // took it for null, kubernetes/kubernetes#99804, which scripts/kube-apiserver patches.)
        let status: serde_json::Map<String, Value> =
            [("state", state), ("ip", ip), ("message", message)]
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
        let patch = json!({"metadata": {"uid": g.uid}, "status": status});
        self.patch_grant(&g.name, "answer", &patch).await
    }

    /// Delete a grant conditioned on its UID and, when given, the resourceVersion read.
    async fn delete_grant_if(
        &self,
        name: &str,
        uid: Option<&str>,
        resource_version: Option<&str>,
    ) -> Result<Written<()>> {
        let dp = DeleteParams {
            preconditions: uid.map(|u| Preconditions {
                uid: Some(u.to_string()),
                resource_version: resource_version.map(str::to_string),
            }),
            ..Default::default()
        };
        let r = self
            .write(
                &format!("delete AddressGrant {name}"),
                &[404, 409],
                self.grants.delete(name, &dp),
            )
            .await?;
        Ok(r.map(|_| ()))
    }

    /// The grants asked of `lender` (one complete list), and the list's resourceVersion (to watch from).
    async fn grants_of_lender(&self, lender: &str) -> Result<(Vec<GrantObj>, String)> {
        let lp = ListParams::default().labels(&format!("{LENDER_LABEL}={}", label_value(lender)));
        let list = self
            .kube
            .call(
                &format!("list the AddressGrants of lender {lender}"),
                &[],
                self.grants.list(&lp),
            )
            .await?
            .map_err(|c| Error::Internal(format!("unexpected status {c}")))?;
        let rv = list.metadata.resource_version.clone().unwrap_or_default();
        Ok((
            list.items
                .into_iter()
                .map(grant_of)
                .filter(|g| g.lender == lender)
                .collect(),
            rv,
        ))
    }

    /// The grants `holder` asked for (one complete list).
    async fn grants_of_holder(&self, holder: &str) -> Result<Vec<GrantObj>> {
        let lp = ListParams::default().labels(&format!("{HOLDER_LABEL}={}", label_value(holder)));
        let list = self
            .kube
            .call(
                &format!("list the AddressGrants of holder {holder}"),
                &[],
                self.grants.list(&lp),
            )
            .await?
            .map_err(|c| Error::Internal(format!("unexpected status {c}")))?;
        Ok(list
            .items
            .into_iter()
            .map(grant_of)
            .filter(|g| g.holder_node == holder)
            .collect())
    }

    /// Pod `namespace/name`: its UID and the StatefulSet that owns it, if one does (`None`: no pod).
    async fn pod_owner(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(String, Option<String>)>> {
        let pods: Api<Pod> = Api::namespaced(self.kube.client(), namespace);
        let r = self
            .kube
            .call(
                &format!("get pod {namespace}/{name}"),
                &[404],
                pods.get_metadata(name),
            )
            .await?;
        Ok(r.ok().map(|p| {
            let set = p
                .metadata
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .find(|o| o.kind == "StatefulSet" && o.api_version.starts_with("apps/"))
                .map(|o| o.name);
            (p.metadata.uid.unwrap_or_default(), set)
        }))
    }

    /// A StatefulSet's `spec.replicas` (`None`: no such StatefulSet).
    async fn statefulset_replicas(&self, namespace: &str, name: &str) -> Result<Option<i32>> {
        let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
            Api::namespaced(self.kube.client(), namespace);
        let r = self
            .kube
            .call(
                &format!("get StatefulSet {namespace}/{name}"),
                &[404],
                sets.get(name),
            )
            .await?;
        Ok(r.ok().map(|s| s.spec.replicas.unwrap_or(1)))
    }

    /// An IPAMClaim: its `spec.interface` and `status.ips` (`None`: no such claim).
    async fn ipamclaim(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(String, Vec<String>)>> {
        let r = self
            .kube
            .call(
                &format!("get IPAMClaim {namespace}/{name}"),
                &[404],
                self.ipamclaims(namespace).get(name),
            )
            .await?;
        Ok(r.ok().map(|o| {
            let iface = o.data["spec"]["interface"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ips = o.data["status"]["ips"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (iface, ips)
        }))
    }

    /// Record the claim's address and the pod using it in its status (NPWG v1.3: the address lives as
    /// long as the claim).
    async fn set_claim_status(
        &self,
        namespace: &str,
        name: &str,
        ips: &[String],
        owner_pod: &str,
    ) -> Result<()> {
        let patch = json!({"status": {"ips": ips, "ownerPod": {"name": owner_pod}}});
        let params = kube::api::PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        self.kube
            .call(
                &format!("record the address in IPAMClaim {namespace}/{name}"),
                &[],
                self.ipamclaims(namespace).patch_status(
                    name,
                    &params,
                    &kube::api::Patch::Merge(&patch),
                ),
            )
            .await?
            .map_err(|c| Error::Internal(format!("unexpected status {c}")))?;
        Ok(())
    }

    /// A fresh deadline for the calls that follow (a reconcile runs several phases).
    fn renew(&mut self) {
        self.kube = self.kube.renewed();
    }

    /// The same client with a fresh deadline.
    fn renewed(&self) -> KubeClusterApi {
        KubeClusterApi {
            kube: self.kube.renewed(),
            pools: self.pools.clone(),
            blocks: self.blocks.clone(),
            grants: self.grants.clone(),
        }
    }

    /// Delete the block's object if it is still the one read (`uid`, and `resource_version` when
    /// known).
    async fn delete_block(&self, b: &BlockObj) -> Result<Written<()>> {
        crate::fail::point("ipam.block.release")?;
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(b.uid.clone()),
                resource_version: Some(b.resource_version.clone()).filter(|v| !v.is_empty()),
            }),
            ..Default::default()
        };
        let r = self
            .write(
                &format!("delete AddressBlock {}", b.name),
                &[404, 409],
                self.blocks.delete(&b.name, &dp),
            )
            .await?;
        Ok(r.map(|_| ()))
    }
}
