//! `attache agent`'s mirror of NetworkAttachmentDefinitions ([`super::mirror`]): a complete list, then
//! a watch from its resourceVersion, each event applied to the mirror in the same loop that says the
//! mirror is live. An agent restarted while its mirror is still live resumes from the resourceVersion
//! it recorded (the events it missed, deletions included, come first), an older mirror is listed again;
//! a watch the API server can no longer serve from there ("too old resource version", 410) makes it list
//! again, as do five failed rounds in a row. A connection that goes silent without closing (a network
//! partition) is given up at the client's read timeout, 30 s. Whenever the API server cannot be reached the
//! agent stops saying the mirror is live, and ADD goes back to asking the API.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams, WatchEvent, WatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use super::client::KubeApi;
use super::mirror::{Mirror, TOUCH_EVERY};
use crate::error::{Error, Result};

/// How long one call may take, and one watch last (the server ends it; the next resumes).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const WATCH_SECS: u32 = 25;
/// After a failure, before the next try.
const BACKOFF: Duration = Duration::from_secs(1);

fn resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition");
    ApiResource::from_gvk_with_plural(&gvk, "network-attachment-definitions")
}

/// The object as the mirror keeps it: kind and apiVersion set (a list's items lack them), without
/// `managedFields`.
fn entry(o: DynamicObject) -> Value {
    let mut v = serde_json::to_value(&o).unwrap_or(Value::Null);
    v["apiVersion"] = json!("k8s.cni.cncf.io/v1");
    v["kind"] = json!("NetworkAttachmentDefinition");
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    v
}

/// What one watch round ended with.
enum Round {
    /// The server ended the watch (its timeout): resume from this resourceVersion.
    Resume(String),
    /// "too old resource version": list again.
    Relist,
}

/// A complete list (paged) written over the mirror; its resourceVersion.
async fn relist(api: &KubeApi, mirror: &Mirror) -> Result<String> {
    let nads: Api<DynamicObject> = Api::all_with(api.client(), &resource());
    let lp = ListParams::default().limit(500);
    let (items, rv) = api
        .all_pages("list the NetworkAttachmentDefinitions", lp, |lp| {
            let nads = nads.clone();
            async move { nads.list(&lp).await }
        })
        .await?;
    let all: Vec<Value> = items.into_iter().map(entry).collect();
    mirror.replace_all(&all)?;
    mirror.touch(&rv)?;
    tracing::info!(
        definitions = all.len(),
        resource_version = rv,
        "mirror listed"
    );
    Ok(rv)
}

/// One watch from `rv`: events applied as they come, the mirror said live every [`TOUCH_EVERY`].
async fn watch(api: &KubeApi, mirror: &Mirror, rv: &str) -> Result<Round> {
    let nads: Api<DynamicObject> = Api::all_with(api.client(), &resource());
    let wp = WatchParams::default().timeout(WATCH_SECS);
    let stream = match api
        .call(
            "watch the NetworkAttachmentDefinitions",
            &[410],
            nads.watch(&wp, rv),
        )
        .await?
    {
        Ok(s) => s,
        Err(_) => return Ok(Round::Relist),
    };
    let mut stream = std::pin::pin!(stream);
    let mut rv = rv.to_string();
    // Not said live at once: a server that cannot serve `rv` says so in the first event (410).
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TOUCH_EVERY, TOUCH_EVERY);
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                None => return Ok(Round::Resume(rv)),
                Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                    rv = o.metadata.resource_version.clone().unwrap_or(rv);
                    mirror.put(&entry(o))?;
                }
                Some(Ok(WatchEvent::Deleted(o))) => {
                    rv = o.metadata.resource_version.clone().unwrap_or(rv);
                    mirror.remove(
                        o.metadata.namespace.as_deref().unwrap_or_default(),
                        o.metadata.name.as_deref().unwrap_or_default(),
                    )?;
                }
                Some(Ok(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                Some(Ok(WatchEvent::Error(e))) if e.code == 410 => return Ok(Round::Relist),
                Some(Ok(WatchEvent::Error(e))) => {
                    return Err(Error::TryAgain(format!("the watch of NetworkAttachmentDefinitions ended: {} ({})", e.message, e.code)));
                }
                Some(Err(kube::Error::Api(s))) if s.code == 410 => return Ok(Round::Relist),
                Some(Err(e)) => return Err(api.err("watch the NetworkAttachmentDefinitions", e)),
            },
            _ = tick.tick() => mirror.touch(&rv)?,
        }
    }
}

/// Failed rounds in a row after which the agent lists again rather than resume.
const RELIST_AFTER: u32 = 5;

/// Keep `mirror` equal to the API's NetworkAttachmentDefinitions, until killed.
pub async fn mirror_nads(mirror: &Mirror, kubeconfig: Option<&Path>) -> Result<()> {
    // Only a mirror that is still current is resumed; an older one is listed again before it is said
    // live.
    let mut rv = mirror.resource_version().filter(|_| mirror.is_live());
    let mut failing = false;
    let mut failures = 0;
    loop {
        // A client per round: the token file is read again (the kubelet rotates it) and each round
        // has its own deadline for its calls.
        let round = async {
            let api = KubeApi::connect(kubeconfig, CALL_TIMEOUT).await?;
            match &rv {
                None => relist(&api, mirror).await.map(Round::Resume),
                Some(v) => watch(&api, mirror, v).await,
            }
        };
        match round.await {
            Ok(Round::Resume(v)) => {
                failures = 0;
                if failing {
                    eprintln!("attache agent: watching NetworkAttachmentDefinitions again");
                    failing = false;
                }
                rv = Some(v);
            }
            Ok(Round::Relist) => {
                eprintln!(
                    "attache agent: resourceVersion {} is too old: listing the NetworkAttachmentDefinitions again",
                    rv.as_deref().unwrap_or_default()
                );
                rv = None;
            }
            Err(e) => {
                // The mirror is not touched any more: within LIVE_FOR ADD stops trusting it and asks
                // the API (and serves it stale only while the API cannot answer either). A watch that
                // keeps failing is given up for a list.
                failures += 1;
                if failures >= RELIST_AFTER {
                    rv = None;
                }
                if !failing {
                    eprintln!(
                        "attache agent: {e} (the mirror is not trusted until the watch runs again)"
                    );
                    failing = true;
                }
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}
