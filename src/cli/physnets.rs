//! `attache install --physnets FILE [--label-node]`: the node's map of physical networks, from the
//! cluster's ConfigMap, and the Node labels that say which of them the node has.
//!
//! The ConfigMap (mounted as FILE) maps each physical network to an interface selector, or to a list of
//! them each with a `nodeSelector` (labels the Node must carry; none: every node) — one DaemonSet,
//! different NICs per group of nodes:
//!
//! ```json
//! {"data": [{"nodeSelector": {"nic.example/vendor": "intel"}, "pciAddress": "0000:3b:00.0"},
//!           {"altName": "data0"}],
//!  "storage": {"driver": "mlx5_core", "index": 1}}
//! ```
//!
//! The first entry whose `nodeSelector` the Node matches is this node's; a network no entry matches is
//! left out. The result goes to `attache.d/physnets.json` in the configuration dir (written beside it
//! and renamed over it, only when it changes), where every ADD reads it ([`crate::attach::nic`]). With
//! `--label-node`, each network that resolves to exactly one interface here labels the Node
//! `physnet.attache.dev/<name>=true`, and a label of a network it no longer has is removed: pods and
//! definitions can then ask for the nodes that have their network with a `nodeSelector`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::install::InstallArgs;
use crate::attach::nic::{NodeNics, Selector, check_physnet_name};
use crate::error::{Error, Result};
use crate::k8s::api::PHYSNET_LABEL_PREFIX;

/// The map's name in the configuration dir's `attache.d`.
pub const MAP_NAME: &str = "physnets.json";
/// How often the labels are brought up to date when the ConfigMap does not change (NICs come and go).
const LABEL_EVERY: Duration = Duration::from_secs(60);

/// This node's entries of the ConfigMap: `name -> selector`.
pub fn for_node(
    doc: &Map<String, Value>,
    labels: &BTreeMap<String, String>,
) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for (name, v) in doc {
        check_physnet_name(name).map_err(|e| Error::config(format!("--physnets: {e}")))?;
        let entries: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            one => vec![one],
        };
        for e in entries {
            let Value::Object(e) = e else {
                return Err(Error::config(format!(
                    "--physnets {name:?}: an entry must be an object, got {e}"
                )));
            };
            let mut sel = e.clone();
            let matches = match sel.remove("nodeSelector") {
                None | Some(Value::Null) => true,
                Some(Value::Object(want)) => {
                    if let Some((k, v)) = want.iter().find(|(_, v)| !v.is_string()) {
                        return Err(Error::config(format!(
                            "--physnets {name:?}: nodeSelector {k:?} is {v}: a label value is a string"
                        )));
                    }
                    want.iter().all(|(k, v)| {
                        v.as_str()
                            .is_some_and(|v| labels.get(k).map(String::as_str) == Some(v))
                    })
                }
                Some(other) => {
                    return Err(Error::config(format!(
                        "--physnets {name:?}: nodeSelector must be an object of label values, got {other}"
                    )));
                }
            };
            // Every entry must be a selector, whichever node reads it.
            let s =
                Selector::from_value(&Value::Object(sel.clone()), &format!("--physnets {name:?}"))?;
            if matches!(s, Selector::PhysicalNetwork(_)) {
                return Err(Error::config(format!(
                    "--physnets {name:?}: an entry selects an interface, not another physicalNetwork"
                )));
            }
            if matches {
                out.insert(name.clone(), Value::Object(sel));
                break;
            }
        }
    }
    Ok(out)
}

/// What the last pass did: the ConfigMap's text and when the labels are due again.
static LAST: std::sync::Mutex<Option<(Vec<u8>, Instant)>> = std::sync::Mutex::new(None);

/// One pass: when the ConfigMap changed, or the labels are due, write the map and label the Node.
pub fn pass(args: &InstallArgs, node: Option<&str>) -> Result<()> {
    let Some(src) = &args.physnets else {
        return Ok(());
    };
    let text = match std::fs::read(src) {
        Ok(t) => t,
        // No ConfigMap (its volume is optional, or it was deleted): no physical networks.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => b"{}".to_vec(),
        Err(e) => {
            return Err(Error::io(
                format!("reading --physnets {}", src.display()),
                e,
            ));
        }
    };
    {
        let last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, due)) = &*last
            && *t == text
            && Instant::now() < *due
        {
            return Ok(());
        }
    }
    // Whatever this pass makes of it, the next look is due in a minute (an API that refuses is not
    // asked every two seconds).
    *LAST.lock().unwrap_or_else(|p| p.into_inner()) =
        Some((text.clone(), Instant::now() + LABEL_EVERY));
    let doc: Map<String, Value> = serde_json::from_slice(&text).map_err(|e| {
        Error::config(format!(
            "--physnets {} is not a JSON object: {e}",
            src.display()
        ))
    })?;
    let needs_node = args.label_node
        || doc.values().any(|v| match v {
            Value::Array(a) => a.iter().any(|e| e.get("nodeSelector").is_some()),
            e => e.get("nodeSelector").is_some(),
        });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(e.to_string()))?;
    rt.block_on(async {
        let api = match needs_node {
            true => {
                let node = node.ok_or_else(|| {
                    Error::config(
                        "--physnets with node selectors or --label-node needs the node's name (--node-name / $NODE_NAME)",
                    )
                })?;
                let timeout = crate::engine::config::DEFAULT_API_TIMEOUT;
                let api = crate::k8s::client::KubeApi::connect(None, timeout).await?;
                let labels = api.node_labels(node).await?;
                Some((api, node, labels))
            }
            false => None,
        };
        let labels = api.as_ref().map(|a| a.2.clone()).unwrap_or_default();
        let mine = for_node(&doc, &labels)?;
        let dir = args.conf_dir.join("attache.d");
        crate::files::ensure_real_dir(&dir)?;
        let map = dir.join(MAP_NAME);
        let bytes =
            serde_json::to_vec_pretty(&Value::Object(mine.clone())).map_err(|e| Error::Internal(e.to_string()))?;
        if super::install::write_if_changed(&map, &bytes, 0o644)? {
            eprintln!(
                "attache: wrote {} ({} physical networks)",
                map.display(),
                mine.len()
            );
        }
        if let (true, Some((api, node, labels))) = (args.label_node, &api) {
            let want = present(&map, &mine).await;
            let patch = label_patch(labels, &want);
            if !patch.is_empty() {
                api.label_node(node, &patch).await?;
                eprintln!("attache: labelled node {node}: {patch:?}");
            }
        }
        Ok::<(), Error>(())
    })
}

/// The physical networks that resolve to exactly one interface on this node (the others are said).
async fn present(map: &Path, mine: &Map<String, Value>) -> Vec<String> {
    let mut nics = NodeNics::new(map);
    let mut out = Vec::new();
    for name in mine.keys() {
        match nics
            .by_selector(&Selector::PhysicalNetwork(name.clone()), "physicalNetwork")
            .await
        {
            Ok(nic) => {
                eprintln!("attache: physicalNetwork {name} -> {}", nic.describe());
                out.push(name.clone());
            }
            Err(e) => eprintln!("attache: physicalNetwork {name} is not on this node: {e}"),
        }
    }
    out
}

/// The labels to set (`Some("true")`) and to remove (`None`) so that the Node says exactly `want`.
pub fn label_patch(
    labels: &BTreeMap<String, String>,
    want: &[String],
) -> BTreeMap<String, Option<String>> {
    let mut patch = BTreeMap::new();
    for n in want {
        let k = format!("{PHYSNET_LABEL_PREFIX}{n}");
        if labels.get(&k).map(String::as_str) != Some("true") {
            patch.insert(k, Some("true".to_string()));
        }
    }
    for k in labels.keys() {
        if let Some(n) = k.strip_prefix(PHYSNET_LABEL_PREFIX)
            && !want.iter().any(|w| w == n)
        {
            patch.insert(k.clone(), None);
        }
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_entry_this_node_matches_is_its_own() {
        let doc = json!({
            "data": [{"nodeSelector": {"nic": "intel"}, "pciAddress": "0000:3b:00.0"},
                     {"altName": "data0"}],
            "storage": {"nodeSelector": {"rack": "r7"}, "driver": "mlx5_core", "index": 1},
            "mgmt": {"mac": "02:00:00:00:00:01"}
        });
        let doc = doc.as_object().unwrap();
        let labels = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let intel = for_node(doc, &labels(&[("nic", "intel")])).unwrap();
        assert_eq!(intel["data"], json!({"pciAddress": "0000:3b:00.0"}));
        assert!(!intel.contains_key("storage"));
        assert_eq!(intel["mgmt"], json!({"mac": "02:00:00:00:00:01"}));
        let other = for_node(doc, &labels(&[("rack", "r7")])).unwrap();
        assert_eq!(other["data"], json!({"altName": "data0"}));
        assert_eq!(other["storage"], json!({"driver": "mlx5_core", "index": 1}));
        for bad in [
            json!({"data": "eth1"}),
            json!({"data": {"nodeSelector": "x", "altName": "a"}}),
            json!({"data": {"altName": "a", "mac": "02:00:00:00:00:01"}}),
            json!({"data": {"physicalNetwork": "b"}}),
            json!({"-bad": {"altName": "a"}}),
        ] {
            let e = for_node(bad.as_object().unwrap(), &BTreeMap::new()).unwrap_err();
            assert_eq!(e.cni_code(), 7, "{bad}");
        }
    }

    #[test]
    fn labels_say_exactly_the_networks_the_node_has() {
        let have: BTreeMap<String, String> = [
            ("physnet.attache.dev/data", "true"),
            ("physnet.attache.dev/old", "true"),
            ("kubernetes.io/hostname", "n1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = label_patch(&have, &["data".into(), "storage".into()]);
        assert_eq!(
            p,
            [
                ("physnet.attache.dev/old".to_string(), None),
                (
                    "physnet.attache.dev/storage".to_string(),
                    Some("true".to_string())
                ),
            ]
            .into_iter()
            .collect()
        );
        assert!(label_patch(&have, &["data".into(), "old".into()]).is_empty());
    }
}
