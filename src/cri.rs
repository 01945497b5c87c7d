//! The container runtime's own list of its pod sandboxes, read over the CRI (the gRPC API the kubelet
//! drives containerd and CRI-O with, on the runtime's Unix socket). `attache inspect --gc` asks it which
//! containers a runtime may still send a DEL for: a record of any other whose netns is gone is an orphan
//! no one will tear down (a runtime without CNI GC, a node attache was taken off).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Endpoint, Uri};

use crate::error::{Error, Result};

/// Where containerd and CRI-O listen, in that order: the first that exists is asked.
pub const SOCKETS: [&str; 2] = ["/run/containerd/containerd.sock", "/var/run/crio/crio.sock"];

/// The first of [`SOCKETS`] that exists.
pub fn default_socket() -> Option<PathBuf> {
    SOCKETS.iter().map(PathBuf::from).find(|p| p.exists())
}

/// The IDs of every pod sandbox the runtime behind `socket` has, in any state (a stopped one can still
/// be DEL'd by its removal). The whole exchange ends by `timeout`.
pub async fn sandbox_ids(socket: &Path, timeout: Duration) -> Result<HashSet<String>> {
    let what = format!(
        "asking the runtime at {} for its pod sandboxes",
        socket.display()
    );
    let path = socket.to_path_buf();
    let ask = async move {
        let channel = Endpoint::from_static("http://[::]")
            .connect_timeout(timeout)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .map_err(|e| Error::NotAvailable(format!("{e}: {}", root(&e))))?;
        let reply = RuntimeServiceClient::new(channel)
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .map_err(|s| Error::NotAvailable(format!("{}: {}", s.code(), s.message())))?;
        Ok(reply.into_inner().items.into_iter().map(|s| s.id).collect())
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(r) => r.map_err(|e: Error| e.context(what)),
        Err(_) => Err(Error::NotAvailable(format!(
            "{what}: no answer within {timeout:?}"
        ))),
    }
}

fn root(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
