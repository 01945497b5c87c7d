//! Kubernetes multi-networking (NPWG de-facto standard v1.3): the pod annotations
//! ([`annotation`]), NetworkAttachmentDefinitions from a folder or the API ([`nad`]), the API client
//! ([`client`]: deadlines and errors, all attache-ipam uses) and the Multus calls on it ([`api`]). The engine decides what to attach; this module only reads and reports.

pub mod agent;
pub mod annotation;
pub mod api;
pub mod client;
pub mod devices;
pub mod mirror;
pub mod nad;
pub mod relay;

/// The runtime capability that carries the pod's annotations (containerd, CRI-O).
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// A pod, as CNI_ARGS, the API and attache's records name it: one identity for the engine's records,
/// the API calls that report on a pod, and attache-ipam's allocations (empty fields outside
/// Kubernetes).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

impl PodRef {
    /// The pod the runtime names in `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`), with
    /// no line breaks (they are written into state files line by line).
    pub fn of(args: &crate::cni::skel::CmdArgs) -> PodRef {
        let get = |k: &str| {
            args.args
                .get(k)
                .unwrap_or_default()
                .replace(['\r', '\n'], "")
        };
        PodRef {
            namespace: get("K8S_POD_NAMESPACE"),
            name: get("K8S_POD_NAME"),
            uid: get("K8S_POD_UID"),
        }
    }
}

impl std::fmt::Display for PodRef {
    /// `namespace/name`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
