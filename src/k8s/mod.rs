//! Kubernetes multi-networking (NPWG de-facto standard v1.3): the pod annotations
//! ([`annotation`]), NetworkAttachmentDefinitions from a folder or the API ([`nad`]), the API client
//! ([`client`]: deadlines and errors, all attache-ipam uses) and the Multus calls on it ([`api`]). The engine decides what to attach; this module only reads and reports.

pub mod annotation;
pub mod api;
pub mod client;
pub mod devices;
pub mod nad;

/// The runtime capability that carries the pod's annotations (containerd, CRI-O).
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";
