//! The Kubernetes API, through the `kube` client: the pod (annotations, UID), NetworkAttachmentDefinitions,
//! and the network-status annotation written through `pods/status`. Every call is bounded in time: a
//! slow or absent API server must not hang a CNI call.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::json;

use super::annotation::{NETWORK_STATUS, NetworkStatus};
use super::nad::Nad;
use crate::error::{Error, Result};

/// What attache needs to know of a pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub annotations: BTreeMap<String, String>,
}

/// A connected API client.
#[derive(Clone)]
pub struct KubeApi {
    client: Client,
}

fn api_err(what: &str, e: kube::Error) -> Error {
    Error::TryAgain(format!("Kubernetes API: {what}: {e}"))
}

impl KubeApi {
    /// A client from a kubeconfig file, or (without one) the in-cluster service account / `$KUBECONFIG`.
    pub async fn connect(kubeconfig: Option<&Path>) -> Result<KubeApi> {
        let mut config = match kubeconfig {
            Some(p) => {
                let kc = Kubeconfig::read_from(p)
                    .map_err(|e| Error::config(format!("kubeconfig {}: {e}", p.display())))?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| Error::config(format!("kubeconfig {}: {e}", p.display())))?
            }
            None => Config::infer().await.map_err(|e| {
                Error::config(format!(
                    "no kubeconfig and no in-cluster configuration: {e}"
                ))
            })?,
        };
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(10));
        config.write_timeout = Some(Duration::from_secs(10));
        let client = Client::try_from(config)
            .map_err(|e| Error::config(format!("Kubernetes client: {e}")))?;
        Ok(KubeApi { client })
    }

    /// The pod, or `None` if the API says it does not exist.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = pods
            .get_opt(name)
            .await
            .map_err(|e| api_err(&format!("get pod {namespace}/{name}"), e))?;
        Ok(pod.map(|p| PodInfo {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: p.metadata.uid.unwrap_or_default(),
            annotations: p.metadata.annotations.unwrap_or_default(),
        }))
    }

    /// A NetworkAttachmentDefinition, or `None` if there is none of that name.
    pub async fn nad(&self, namespace: &str, name: &str) -> Result<Option<Nad>> {
        // The CRD's plural is hyphenated: kube's guess from the kind would be wrong.
        let gvk = GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "network-attachment-definitions");
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &ar);
        let obj = api.get_opt(name).await.map_err(|e| {
            api_err(
                &format!("get NetworkAttachmentDefinition {namespace}/{name}"),
                e,
            )
        })?;
        Ok(obj.and_then(|o| {
            let mut v = serde_json::to_value(&o).ok()?;
            v["kind"] = json!("NetworkAttachmentDefinition");
            Nad::from_object(&v)
        }))
    }

    /// Record a Kubernetes Event on the pod (`kubectl describe pod` shows it).
    pub async fn event(&self, pod: &PodInfo, reason: &str, message: &str) -> Result<()> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &pod.namespace);
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
        events
            .create(&PostParams::default(), &ev)
            .await
            .map(|_| ())
            .map_err(|e| api_err("create event", e))
    }

    /// Write the network-status annotation through `pods/status`, retrying on conflict. When `uid` is
    /// given and the pod now has another UID (it was replaced), nothing is written.
    pub async fn set_network_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let value =
            serde_json::to_string_pretty(status).map_err(|e| Error::Internal(e.to_string()))?;
        let patch = json!({"metadata": {"annotations": {NETWORK_STATUS: value}}});
        for attempt in 0..5 {
            if !pod.uid.is_empty() {
                let current = pods
                    .get_opt(&pod.name)
                    .await
                    .map_err(|e| api_err("get pod for network-status", e))?;
                match current.and_then(|p| p.metadata.uid) {
                    Some(uid) if uid == pod.uid => {}
                    _ => {
                        tracing::warn!(pod = %pod.name, "pod gone or replaced: network-status not written");
                        return Ok(());
                    }
                }
            }
            match pods
                .patch_status(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < 4 => continue,
                Err(e) => return Err(api_err("patch pods/status", e)),
            }
        }
        Ok(())
    }
}
