//! Reports through the node agent (`agentSocket`): an ADD hands `attache agent` the pod's
//! network-status and its Events over a local unix socket, and the agent sends them over its own warm
//! connection to the API server — no TLS handshake in the ADD. The network-status is on the pod when the
//! agent answers (the ADD waits for that, as it would for its own call); the Events follow after the
//! answer. DEL hands over the clearing of the annotation the same way.
//!
//! The agent is never required: no socket, nobody listening, an agent that dies or does not answer in
//! time — the ADD makes the call itself, as without an agent. And nothing on the socket can make the agent
//! do anything but report on a pod: the peer must be root (`SO_PEERCRED`), a message is at most
//! [`MAX_MESSAGE`] bytes, one per connection, and every field is checked before anything is sent.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::PodRef;
use super::annotation::{NetworkStatus, is_dns1123_label};
use super::api::StatusWrite;
use super::client::KubeApi;
use crate::error::{Error, Result};

/// The socket's name in the node's `/run/attache` (`attache install` names it in the configuration as
/// `agentSocket`).
pub const SOCKET_NAME: &str = "agent.sock";
pub const DEFAULT_SOCKET: &str = "/run/attache/agent.sock";
/// The largest message either side reads.
pub const MAX_MESSAGE: usize = 256 << 10;
/// The most interfaces one report names: the cluster network's and `maxAttachments`' ceiling.
const MAX_INTERFACES: usize = 1 + 1024;
/// How long the agent gives a peer to send its message.
const READ_WAIT: Duration = Duration::from_secs(5);
/// The reason of the Events the agent sends for an ADD (the only one it sends).
pub const ADDED_INTERFACE: &str = "AddedInterface";
/// How long the agent keeps one client (its token file is read again after that).
const CLIENT_AGE: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Write the network-status annotation, then send the Events.
    Report,
    /// Remove the network-status annotation (DEL).
    Clear,
}

/// One message to the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub op: Op,
    pub pod: PodRef,
    #[serde(default)]
    pub status: Vec<NetworkStatus>,
    /// `AddedInterface` messages, one per interface.
    #[serde(default)]
    pub events: Vec<String>,
    /// How long the asker waits for the answer (ms): the agent's write must not land after the asker
    /// gave up and wrote itself.
    #[serde(rename = "waitMs")]
    pub wait_ms: u64,
}

/// The agent's answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    /// The pod is gone or was replaced (another UID): nothing was written.
    #[serde(default, rename = "podGone")]
    pub pod_gone: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

fn is_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

impl Request {
    /// A request about `pod`, for an asker that waits `wait` for the answer.
    pub fn new(
        op: Op,
        pod: &PodRef,
        status: &[NetworkStatus],
        events: &[String],
        wait: Duration,
    ) -> Request {
        Request {
            op,
            pod: pod.clone(),
            status: status.to_vec(),
            events: events.to_vec(),
            wait_ms: wait.as_millis().clamp(1, u64::MAX as u128) as u64,
        }
    }

    /// Whether the agent may act on it: a pod named as the API names pods, with its UID, and a report
    /// of sane size.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let p = &self.pod;
        if !is_dns1123_label(&p.namespace) || !is_subdomain(&p.name) {
            return Err(format!("not a pod name: {:?}/{:?}", p.namespace, p.name));
        }
        // The UID rides as a precondition: without it a replaced pod could get the old status.
        if p.uid.is_empty()
            || p.uid.len() > 64
            || !p
                .uid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!("not a pod UID: {:?}", p.uid));
        }
        if self.status.len() > MAX_INTERFACES || self.events.len() > MAX_INTERFACES {
            return Err(format!("more than {MAX_INTERFACES} interfaces"));
        }
        if self.op == Op::Clear && !(self.status.is_empty() && self.events.is_empty()) {
            return Err("a clear carries no report".into());
        }
        if self.op == Op::Report && self.status.is_empty() {
            return Err("a report without a network-status".into());
        }
        if self.wait_ms == 0 || self.wait_ms > 60_000 {
            return Err(format!("a wait of {} ms", self.wait_ms));
        }
        if let Some(m) = self.events.iter().find(|m| m.len() > 4096) {
            return Err(format!("an event message of {} bytes", m.len()));
        }
        Ok(())
    }
}

/// Ask the agent at `socket`; `None` when it cannot be asked or does not answer within `wait` (the
/// caller then makes the call itself).
pub async fn ask(socket: &Path, req: &Request, wait: Duration) -> Option<Answer> {
    let asked = async {
        let mut s = UnixStream::connect(socket).await.ok()?;
        // Only root's agent is believed.
        if s.peer_cred().ok()?.uid() != 0 {
            tracing::warn!(socket = %socket.display(), "the agent's socket is not root's: not used");
            return None;
        }
        let msg = serde_json::to_vec(req).ok()?;
        s.write_all(&msg).await.ok()?;
        s.shutdown().await.ok()?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_MESSAGE as u64)
            .read_to_end(&mut buf)
            .await
            .ok()?;
        serde_json::from_slice::<Answer>(&buf).ok()
    };
    match tokio::time::timeout(wait, asked).await {
        Ok(a) => a,
        Err(_) => {
            tracing::warn!(socket = %socket.display(), "the agent did not answer within {wait:?}: calling the API directly");
            None
        }
    }
}

/// What the agent does for one valid request; the Events are sent after the answer (`after`).
async fn act(api: &KubeApi, req: &Request) -> Answer {
    let written = match req.op {
        Op::Report => api.set_network_status(&req.pod, &req.status).await,
        Op::Clear => api.clear_network_status(&req.pod).await,
    };
    match written {
        Ok(StatusWrite::Written) => Answer {
            ok: true,
            ..Default::default()
        },
        Ok(StatusWrite::PodGone) => Answer {
            ok: true,
            pod_gone: true,
            ..Default::default()
        },
        Err(e) => Answer {
            ok: false,
            error: e.to_string(),
            ..Default::default()
        },
    }
}

/// One connection: the peer checked, one message read (bounded), validated, acted on, answered.
async fn handle(mut s: UnixStream, api: KubeApi) {
    let peer = s.peer_cred().ok();
    if peer.is_none_or(|c| c.uid() != 0) {
        tracing::warn!(
            ?peer,
            "a connection from a process that is not root's: closed"
        );
        return;
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        READ_WAIT,
        (&mut s).take(MAX_MESSAGE as u64 + 1).read_to_end(&mut buf),
    )
    .await;
    let answer = match read {
        Err(_) | Ok(Err(_)) => return,
        Ok(Ok(_)) if buf.len() > MAX_MESSAGE => Answer {
            error: format!("a message over {MAX_MESSAGE} bytes"),
            ..Default::default()
        },
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&buf) {
            Err(e) => Answer {
                error: format!("not a request: {e}"),
                ..Default::default()
            },
            Ok(req) => match req.validate() {
                Err(why) => Answer {
                    error: why,
                    ..Default::default()
                },
                Ok(()) => {
                    // Done before the asker stops waiting (a margin for the answer's way back), or
                    // not at all: the asker then writes itself, and a late write of ours could land
                    // after it.
                    let wait = Duration::from_millis(req.wait_ms);
                    let api = api.renewed_for(wait.saturating_sub(wait / 10));
                    let answer = act(&api, &req).await;
                    let reply = serde_json::to_vec(&answer).unwrap_or_default();
                    let _ = s.write_all(&reply).await;
                    let _ = s.shutdown().await;
                    drop(s);
                    if answer.ok && !answer.pod_gone {
                        let api = api.renewed_for(Duration::MAX);
                        for m in &req.events {
                            if let Err(e) = api.event(&req.pod, ADDED_INTERFACE, m).await {
                                tracing::warn!("could not record an event (no more are sent): {e}");
                                break;
                            }
                        }
                    }
                    return;
                }
            },
        },
    };
    if !answer.error.is_empty() {
        tracing::warn!("refused a request on the socket: {}", answer.error);
    }
    let reply = serde_json::to_vec(&answer).unwrap_or_default();
    let _ = s.write_all(&reply).await;
}

/// Listen on `socket` (root's alone) and serve reports until killed.
pub async fn serve(socket: &Path, kubeconfig: Option<&Path>, timeout: Duration) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = socket.parent() {
        crate::files::ensure_real_dir(dir)?;
    }
    // A socket left by an earlier agent goes; anything else in its place is not ours to remove.
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            let _ = std::fs::remove_file(socket);
        }
        Ok(_) => {
            return Err(Error::config(format!(
                "{} exists and is not a socket",
                socket.display()
            )));
        }
        Err(_) => {}
    }
    // Bound under a private name, then made root-only, then renamed into place: never reachable by
    // others in between.
    let tmp = socket.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)
        .map_err(|e| Error::io(format!("listening on {}", tmp.display()), e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, socket))
        .map_err(|e| Error::io(format!("placing {}", socket.display()), e))?;
    let mut api = KubeApi::connect(kubeconfig, timeout).await?;
    let mut made = tokio::time::Instant::now();
    loop {
        let (s, _) = listener
            .accept()
            .await
            .map_err(|e| Error::io(format!("accepting on {}", socket.display()), e))?;
        if made.elapsed() > CLIENT_AGE {
            match KubeApi::connect(kubeconfig, timeout).await {
                Ok(a) => {
                    api = a;
                    made = tokio::time::Instant::now();
                }
                Err(e) => tracing::warn!("renewing the API client: {e}"),
            }
        }
        tokio::spawn(handle(s, api.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Request {
        Request {
            op: Op::Report,
            pod: PodRef {
                namespace: "team-a".into(),
                name: "web-0".into(),
                uid: "0b6e2f5e-1c1a-4f1e-9a53-3c1f1f7e8a01".into(),
            },
            status: vec![NetworkStatus {
                name: "cluster".into(),
                default: true,
                ..Default::default()
            }],
            events: vec!["Add eth0 [10.0.0.2/24] from cluster".into()],
            wait_ms: 1000,
        }
    }

    #[test]
    fn only_a_sane_report_on_a_named_pod_is_acted_on() {
        assert_eq!(req().validate(), Ok(()));
        let bad = |f: &dyn Fn(&mut Request)| {
            let mut r = req();
            f(&mut r);
            r.validate().unwrap_err()
        };
        assert!(bad(&|r| r.pod.uid.clear()).contains("UID"));
        assert!(bad(&|r| r.pod.uid = "x;y".into()).contains("UID"));
        assert!(bad(&|r| r.pod.namespace = "../etc".into()).contains("pod name"));
        assert!(bad(&|r| r.pod.name = "A".into()).contains("pod name"));
        assert!(bad(&|r| r.status.clear()).contains("without"));
        assert!(bad(&|r| r.events = vec!["x".repeat(5000)]).contains("bytes"));
        assert!(
            bad(&|r| r.status = vec![NetworkStatus::default(); MAX_INTERFACES + 1])
                .contains("interfaces")
        );
        assert!(bad(&|r| r.op = Op::Clear).contains("clear"));
        assert!(bad(&|r| r.wait_ms = 0).contains("wait"));
        assert!(bad(&|r| r.wait_ms = 3_600_000).contains("wait"));
        // Unknown fields are not a request.
        let mut v = serde_json::to_value(req()).unwrap();
        v["exec"] = serde_json::json!("rm -rf /");
        assert!(serde_json::from_value::<Request>(v).is_err());
    }
}
