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
use serde_json::{Value, json};

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

/// A connected API client. Every call it makes ends by its deadline: the whole phase of an invocation
/// that uses it (planning, or reporting) shares one.
#[derive(Clone)]
pub struct KubeApi {
    client: Client,
    timeout: Duration,
    deadline: tokio::time::Instant,
    /// The API server's URL and where the credentials came from, for errors a user can act on.
    server: String,
    source: String,
}

/// What attache calls itself: the User-Agent of its requests and the field manager of its writes
/// (`managedFields` shows it).
pub const AGENT: &str = concat!("attache/", env!("CARGO_PKG_VERSION"));
const FIELD_MANAGER: &str = "attache";

/// The I/O error at the root of a client error, if there is one (connection refused, timed out ...).
fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// The innermost message of an error chain (hyper's outer layers say only "client error (Connect)").
fn root_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The largest token file read: a service-account token is about 1 KiB.
const MAX_TOKEN: u64 = 64 << 10;

/// A kubeconfig's (or the service account's) token file, read once for this short-lived process and
/// trimmed as client-go trims it: `kubectl create token ... > file` ends it in a newline, which the
/// client would put into the Authorization header and fail every call with "failed to parse header
/// value". A token that is still no valid header value gets an error naming the file, not a call's.
fn use_token_file(config: &mut Config) -> Result<()> {
    let Some(file) = config.auth_info.token_file.clone() else {
        return Ok(());
    };
    if config.auth_info.token.is_some() {
        return Ok(()); // an inline token takes precedence, as the client would have it
    }
    // Not read as a state file: a projected token is a symlink (`..data/token`).
    let mut bytes = Vec::new();
    std::fs::File::open(&file)
        .and_then(|f| {
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_TOKEN), &mut bytes)
        })
        .map_err(|e| Error::config(format!("reading the token file {file}: {e}")))?;
    let token = String::from_utf8(bytes)
        .map_err(|_| Error::config(format!("the token file {file} is not text")))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::config(format!("the token file {file} is empty")));
    }
    if let Some(c) = token.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        return Err(Error::config(format!(
            "the token in {file} cannot be sent: it contains {c:?}, which no bearer token has (is it the token, whole and alone?)"
        )));
    }
    config.auth_info.token = Some(token.to_string().into());
    config.auth_info.token_file = None;
    Ok(())
}

/// What became of a network-status write.
#[derive(Debug, PartialEq, Eq)]
pub enum StatusWrite {
    Written,
    /// The pod is gone, or was replaced by one with another UID: nothing was written.
    PodGone,
}

impl KubeApi {
    /// A client from a kubeconfig file, or (without one) the in-cluster service account / `$KUBECONFIG`,
    /// whose calls share one deadline `timeout` from now.
    pub async fn connect(kubeconfig: Option<&Path>, timeout: Duration) -> Result<KubeApi> {
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::time::timeout_at(deadline, Self::connect_inner(kubeconfig, timeout))
            .await
            .map_err(|_| {
                Error::TryAgain(format!(
                    "Kubernetes API: loading the client configuration took more than {timeout:?}"
                ))
            })?
            .map(|(client, server)| KubeApi {
                client,
                timeout,
                deadline,
                server,
                source: match kubeconfig {
                    Some(p) => format!("kubeconfig {}", p.display()),
                    None => "the in-cluster service account".into(),
                },
            })
    }

    /// One sentence a user can act on: who refused what, or which server could not be reached.
    fn err(&self, what: &str, e: kube::Error) -> Error {
        let (server, source) = (&self.server, &self.source);
        match &e {
            kube::Error::Api(s) if s.code == 401 => Error::TryAgain(format!(
                "Kubernetes API {server} refused the credentials of {source} (401 Unauthorized) to {what}: the token has expired or was revoked"
            )),
            kube::Error::Api(s) if s.code == 403 => Error::TryAgain(format!(
                "Kubernetes API {server} forbids the credentials of {source} to {what} (403 Forbidden): {}",
                s.message
            )),
            kube::Error::Api(s) => Error::TryAgain(format!(
                "Kubernetes API {server}: {what}: {} ({} {})",
                s.message, s.code, s.reason
            )),
            _ => match io_cause(&e) {
                Some(io) => Error::TryAgain(format!(
                    "Kubernetes API {server} (from {source}) is unreachable, so attache could not {what}: {io}"
                )),
                None => Error::TryAgain(format!(
                    "Kubernetes API {server} (from {source}): {what}: {}",
                    root_message(&e)
                )),
            },
        }
    }

    /// The same client with a fresh deadline (for the next phase of the invocation).
    pub fn renewed(&self) -> KubeApi {
        KubeApi {
            deadline: tokio::time::Instant::now() + self.timeout,
            ..self.clone()
        }
    }

    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// Run one call under the phase's deadline; an answer with a status in `expected` (404, 409 ...)
    /// is the caller's to handle: `Ok(Err(code))`.
    pub(crate) async fn call<T>(
        &self,
        what: &str,
        expected: &[u16],
        fut: impl std::future::Future<Output = std::result::Result<T, kube::Error>>,
    ) -> Result<std::result::Result<T, u16>> {
        match tokio::time::timeout_at(self.deadline, fut).await {
            Ok(Ok(v)) => Ok(Ok(v)),
            Ok(Err(kube::Error::Api(s))) if expected.contains(&s.code) => Ok(Err(s.code)),
            Ok(Err(e)) => Err(self.err(what, e)),
            Err(_) => Err(Error::TryAgain(format!(
                "Kubernetes API {}: {what}: no answer within the API deadline ({:?}, apiTimeout)",
                self.server, self.timeout
            ))),
        }
    }

    /// Run one call under the phase's deadline.
    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = std::result::Result<T, kube::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout_at(self.deadline, fut).await {
            Ok(r) => r.map_err(|e| self.err(what, e)),
            Err(_) => Err(Error::TryAgain(format!(
                "Kubernetes API {}: {what}: no answer within the API deadline ({:?}, apiTimeout)",
                self.server, self.timeout
            ))),
        }
    }

    async fn connect_inner(
        kubeconfig: Option<&Path>,
        timeout: Duration,
    ) -> Result<(Client, String)> {
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
        use_token_file(&mut config)?;
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static(AGENT),
        ));
        let server = config.cluster_url.to_string();
        Client::try_from(config)
            .map(|c| (c, server.trim_end_matches('/').to_string()))
            .map_err(|e| Error::config(format!("Kubernetes client: {e}")))
    }

    /// The pod, or `None` if the API says it does not exist.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = self
            .bounded(&format!("get pod {namespace}/{name}"), pods.get_opt(name))
            .await?;
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
    pub async fn event(&self, pod: &PodInfo, reason: &str, message: &str) -> Result<()> {
        crate::fail::point("k8s.event")?;
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
        pod: &PodInfo,
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
    pub async fn clear_network_status(&self, pod: &PodInfo) -> Result<StatusWrite> {
        self.patch_status(pod, Value::Null, "clear the network-status annotation")
            .await
    }

    async fn patch_status(&self, pod: &PodInfo, value: Value, what: &str) -> Result<StatusWrite> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let mut patch = json!({"metadata": {"annotations": {NETWORK_STATUS: value}}});
        if !pod.uid.is_empty() {
            patch["metadata"]["uid"] = json!(pod.uid);
        }
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let what = format!("{what} of pod {}/{}", pod.namespace, pod.name);
        let sent = tokio::time::timeout_at(
            self.deadline,
            pods.patch_status(&pod.name, &params, &Patch::Merge(&patch)),
        )
        .await;
        match sent {
            Ok(Ok(_)) => Ok(StatusWrite::Written),
            // 404: gone; 409 (precondition) or 422 (immutable uid): replaced by another pod.
            Ok(Err(kube::Error::Api(s))) if matches!(s.code, 404 | 409 | 422) => {
                // A pod deleted before its DEL (force-deleted, evicted) is the normal life of a pod.
                tracing::debug!(pod = %pod.name, code = s.code, "pod gone or replaced: could not {what} ({})", s.message);
                Ok(StatusWrite::PodGone)
            }
            Ok(Err(e)) => Err(self.err(&what, e)),
            Err(_) => Err(Error::TryAgain(format!(
                "Kubernetes API {}: {what}: no answer within the API deadline ({:?}, apiTimeout)",
                self.server, self.timeout
            ))),
        }
    }
}
