//! The Multus calls on the Kubernetes API: the pod (annotations, UID), NetworkAttachmentDefinitions, the
//! network-status annotation written through `pods/status`, and Events. Every call goes through the
//! [`KubeApi`] client ([`super::client`]), bounded by its phase's deadline: a slow or absent API server
//! must not hang a CNI call.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use super::PodRef;
use super::annotation::{NETWORK_STATUS, NetworkStatus};
use super::client::FIELD_MANAGER;
use super::client::KubeApi;
use super::nad::Nad;
use crate::error::{Error, Result};

/// What attache needs to know of a pod: who it is, and its annotations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodInfo {
    pub pod: PodRef,
    pub annotations: BTreeMap<String, String>,
}

/// What became of a network-status write.
#[derive(Debug, PartialEq, Eq)]
pub enum StatusWrite {
    Written,
    /// The pod is gone, or was replaced by one with another UID: nothing was written.
    PodGone,
}

impl KubeApi {
    /// The pod, or `None` if the API says it does not exist.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>> {
        let pods: Api<Pod> = Api::namespaced(self.client(), namespace);
        let pod = self
            .bounded(&format!("get pod {namespace}/{name}"), pods.get_opt(name))
            .await?;
        Ok(pod.map(|p| PodInfo {
            pod: PodRef {
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid: p.metadata.uid.unwrap_or_default(),
            },
            annotations: p.metadata.annotations.unwrap_or_default(),
        }))
    }

    /// A NetworkAttachmentDefinition, or `None` if there is none of that name.
    pub async fn nad(&self, namespace: &str, name: &str) -> Result<Option<Nad>> {
        // The CRD's plural is hyphenated: kube's guess from the kind would be wrong.
        let gvk = GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "network-attachment-definitions");
        let api: Api<DynamicObject> = Api::namespaced_with(self.client(), namespace, &ar);
        let obj = self
            .bounded(
                &format!("get NetworkAttachmentDefinition {namespace}/{name}"),
                api.get_opt(name),
            )
            .await?;
        Ok(obj.and_then(|o| {
            let mut v = serde_json::to_value(&o).ok()?;
            v["kind"] = json!("NetworkAttachmentDefinition");
            Nad::from_object(&v)
        }))
    }

    /// Record a Kubernetes Event on the pod (`kubectl describe pod` shows it).
    pub async fn event(&self, pod: &PodRef, reason: &str, message: &str) -> Result<()> {
        crate::fail::point("k8s.event")?;
        let events: Api<Event> = Api::namespaced(self.client(), &pod.namespace);
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let ev = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", pod.name)),
                namespace: Some(pod.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name.clone()),
                namespace: Some(pod.namespace.clone()),
                uid: Some(pod.uid.clone()).filter(|u| !u.is_empty()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some("Normal".into()),
            source: Some(EventSource {
                component: Some("attache".into()),
                host: None,
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some("attache".into()),
            ..Default::default()
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        self.bounded("create an event", events.create(&params, &ev))
            .await
            .map(|_| ())
    }

    /// Write the network-status annotation through `pods/status`: one merge patch, no read first. The
    /// pod's UID rides in the patch as a precondition — the API server refuses to change a UID, so a
    /// patch aimed at a pod that was replaced (same name, new UID) is refused instead of written.
    pub async fn set_network_status(
        &self,
        pod: &PodRef,
        status: &[NetworkStatus],
    ) -> Result<StatusWrite> {
        crate::fail::point("k8s.patch_status")?;
        let value =
            serde_json::to_string_pretty(status).map_err(|e| Error::Internal(e.to_string()))?;
        self.patch_status(pod, json!(value), "write the network-status annotation")
            .await
    }

    /// Remove the network-status annotation (DEL: the pod's networks are gone), with the same UID
    /// precondition.
    pub async fn clear_network_status(&self, pod: &PodRef) -> Result<StatusWrite> {
        self.patch_status(pod, Value::Null, "clear the network-status annotation")
            .await
    }

    async fn patch_status(&self, pod: &PodRef, value: Value, what: &str) -> Result<StatusWrite> {
        let pods: Api<Pod> = Api::namespaced(self.client(), &pod.namespace);
        let mut patch = json!({"metadata": {"annotations": {NETWORK_STATUS: value}}});
        if !pod.uid.is_empty() {
            patch["metadata"]["uid"] = json!(pod.uid);
        }
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let what = format!("{what} of pod {}/{}", pod.namespace, pod.name);
        let sent = self
            .within(pods.patch_status(&pod.name, &params, &Patch::Merge(&patch)))
            .await;
        match sent {
            Some(Ok(_)) => Ok(StatusWrite::Written),
            // 404: gone; 409 (precondition) or 422 (immutable uid): replaced by another pod.
            Some(Err(kube::Error::Api(s))) if matches!(s.code, 404 | 409 | 422) => {
                // A pod deleted before its DEL (force-deleted, evicted) is the normal life of a pod.
                tracing::debug!(pod = %pod.name, code = s.code, "pod gone or replaced: could not {what} ({})", s.message);
                Ok(StatusWrite::PodGone)
            }
            Some(Err(e)) => Err(self.err(&what, e)),
            None => Err(self.late(&what)),
        }
    }
}

/// The cluster's pod and Service networks, as the API knows them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterCidrs {
    pub pods: Vec<ipnet::IpNet>,
    pub services: Vec<ipnet::IpNet>,
}

/// The CIDRs of a kubeadm `networking` value ("10.244.0.0/16" or "10.244.0.0/16,fd00:10::/56").
fn cidr_list(v: Option<&Value>) -> Vec<ipnet::IpNet> {
    v.and_then(Value::as_str)
        .map(|s| {
            s.split(',')
                .filter_map(|c| c.trim().parse::<ipnet::IpNet>().ok())
                .map(|n| n.trunc())
                .collect()
        })
        .unwrap_or_default()
}

/// The networks kubeadm's ClusterConfiguration (the `ClusterConfiguration` key of the ConfigMap
/// `kube-system/kubeadm-config`, YAML) names.
pub fn kubeadm_cidrs(cluster_configuration: &str) -> ClusterCidrs {
    let v: Value = serde_saphyr::from_str(cluster_configuration).unwrap_or(Value::Null);
    let net = v.get("networking");
    ClusterCidrs {
        pods: cidr_list(net.and_then(|n| n.get("podSubnet"))),
        services: cidr_list(net.and_then(|n| n.get("serviceSubnet"))),
    }
}

impl KubeApi {
    /// The cluster's CIDRs where the API says them: kubeadm's ClusterConfiguration (pods and Services),
    /// and the ServiceCIDR objects of `networking.k8s.io/v1` (Kubernetes 1.33 and later). Whatever is
    /// missing (no kubeadm, an older API server: 404) or not granted (403) is left empty, each on its
    /// own.
    pub async fn cluster_cidrs(&self) -> Result<ClusterCidrs> {
        use k8s_openapi::api::core::v1::ConfigMap;
        let cms: Api<ConfigMap> = Api::namespaced(self.client(), "kube-system");
        let mut out = match self
            .call(
                "get ConfigMap kube-system/kubeadm-config",
                &[403, 404],
                cms.get("kubeadm-config"),
            )
            .await?
        {
            Ok(cm) => cm
                .data
                .and_then(|d| d.get("ClusterConfiguration").map(|c| kubeadm_cidrs(c)))
                .unwrap_or_default(),
            Err(_) => ClusterCidrs::default(),
        };
        let gvk = GroupVersionKind::gvk("networking.k8s.io", "v1", "ServiceCIDR");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "servicecidrs");
        let api: Api<DynamicObject> = Api::all_with(self.client(), &ar);
        if let Ok(list) = self
            .call(
                "list ServiceCIDRs",
                &[403, 404],
                api.list(&kube::api::ListParams::default()),
            )
            .await?
        {
            for o in list.items {
                for c in cidr_list_of(o.data.get("spec").and_then(|s| s.get("cidrs"))) {
                    if !out.services.contains(&c) {
                        out.services.push(c);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The label prefix of the physical networks a node has (`physnet.attache.dev/<name>=true`).
pub const PHYSNET_LABEL_PREFIX: &str = "physnet.attache.dev/";

impl KubeApi {
    /// A Node's labels (`get nodes`, which attache-ipam's role grants).
    pub async fn node_labels(&self, name: &str) -> Result<BTreeMap<String, String>> {
        use k8s_openapi::api::core::v1::Node;
        let nodes: Api<Node> = Api::all(self.client());
        let node = self
            .bounded(&format!("get node {name}"), nodes.get_opt(name))
            .await?
            .ok_or_else(|| Error::config(format!("node {name:?} does not exist in the API")))?;
        Ok(node.metadata.labels.unwrap_or_default())
    }

    /// Set and remove labels of a Node in one merge patch (`patch nodes`): a `None` value removes.
    pub async fn label_node(
        &self,
        name: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<()> {
        use k8s_openapi::api::core::v1::Node;
        let nodes: Api<Node> = Api::all(self.client());
        let patch = json!({"metadata": {"labels": labels}});
        self.bounded(
            &format!("label node {name}"),
            nodes.patch(
                name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Merge(&patch),
            ),
        )
        .await
        .map(drop)
    }
}

fn cidr_list_of(v: Option<&Value>) -> Vec<ipnet::IpNet> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().flat_map(|c| cidr_list(Some(c))).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadm_networks_single_and_dual_stack() {
        let c = kubeadm_cidrs(
            "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nnetworking:\n  dnsDomain: cluster.local\n  podSubnet: 10.244.0.0/16,fd00:10:244::/56\n  serviceSubnet: 10.96.0.0/12\n",
        );
        assert_eq!(
            c.pods,
            [
                "10.244.0.0/16".parse().unwrap(),
                "fd00:10:244::/56".parse().unwrap()
            ]
        );
        assert_eq!(c.services, ["10.96.0.0/12".parse().unwrap()]);
        assert_eq!(kubeadm_cidrs("not: [yaml"), ClusterCidrs::default());
        assert_eq!(kubeadm_cidrs("networking: {}"), ClusterCidrs::default());
    }
}
