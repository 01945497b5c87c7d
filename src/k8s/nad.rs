//! NetworkAttachmentDefinitions (`k8s.cni.cncf.io/v1`): the objects and where they come from — a local
//! folder of YAML/JSON manifests (`networksDir`, no Kubernetes needed) or the API server.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::annotation::RESOURCE_NAME;
use crate::error::{Error, Result};

/// A NetworkAttachmentDefinition, as much of it as attache uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Nad {
    pub namespace: String,
    pub name: String,
    /// `spec.config`, when set: a CNI conf or conflist as a JSON string.
    pub config: Option<String>,
    /// `k8s.v1.cni.cncf.io/resourceName`: the device-plugin resource it draws devices from.
    pub resource_name: Option<String>,
}

impl Nad {
    /// Read a NAD out of a Kubernetes object (`None` if the object is something else).
    pub fn from_object(v: &Value) -> Option<Nad> {
        if v.get("kind").and_then(Value::as_str) != Some("NetworkAttachmentDefinition") {
            return None;
        }
        let meta = v.get("metadata")?;
        let name = meta.get("name")?.as_str()?.to_string();
        let namespace = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let config = v
            .get("spec")
            .and_then(|s| s.get("config"))
            .and_then(Value::as_str)
            .filter(|c| !c.trim().is_empty())
            .map(str::to_string);
        let resource_name = meta
            .get("annotations")
            .and_then(|a| a.get(RESOURCE_NAME))
            .and_then(Value::as_str)
            .map(str::to_string);
        Some(Nad {
            namespace,
            name,
            config,
            resource_name,
        })
    }

    pub fn qualified(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `spec.config` decoded, with the NAD's name injected when the config has none (§3.4.2).
    /// `None` when the NAD has no config: it then names a configuration in `confDir`.
    pub fn config_value(&self) -> Result<Option<Value>> {
        let Some(text) = &self.config else {
            return Ok(None);
        };
        let mut v: Value = serde_json::from_str(text).map_err(|e| {
            Error::config(format!(
                "NetworkAttachmentDefinition {}: spec.config is not valid JSON: {e}",
                self.qualified()
            ))
        })?;
        let Some(o) = v.as_object_mut() else {
            return Err(Error::config(format!(
                "NetworkAttachmentDefinition {}: spec.config must be a JSON object",
                self.qualified()
            )));
        };
        if o.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            o.insert("name".into(), Value::String(self.name.clone()));
        }
        Ok(Some(v))
    }
}

/// Every NAD in a folder of manifests (`*.yaml`, `*.yml`, `*.json`; several documents per file and
/// `List` objects allowed), by `namespace/name`. A file that does not parse is an error naming it.
/// Bounds on a `networksDir`: its manifest files, each file, and the definitions in all of them.
pub const MAX_FOLDER_FILES: usize = 1000;
pub const MAX_MANIFEST: u64 = 1 << 20;
pub const MAX_FOLDER_NADS: usize = 10_000;

pub fn load_folder(dir: &Path) -> Result<BTreeMap<String, Nad>> {
    let mut out = BTreeMap::new();
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("reading networksDir {}", dir.display()), e))?;
    let mut files: Vec<_> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
            matches!(ext, "yaml" | "yml" | "json")
        })
        .take(MAX_FOLDER_FILES + 1)
        .collect();
    if files.len() > MAX_FOLDER_FILES {
        return Err(Error::config(format!(
            "networksDir {} holds more than {MAX_FOLDER_FILES} manifests",
            dir.display()
        )));
    }
    files.sort();
    for p in files {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
        let bytes = crate::files::read_bounded(&p, MAX_MANIFEST).map_err(|e| {
            Error::io(
                format!(
                    "reading {} (a manifest may be at most {} MiB)",
                    p.display(),
                    MAX_MANIFEST >> 20
                ),
                e,
            )
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let docs: Vec<Value> = if ext == "json" {
            vec![
                serde_json::from_str(&text)
                    .map_err(|e| Error::config(format!("{}: {e}", p.display())))?,
            ]
        } else {
            serde_saphyr::from_multiple(&text)
                .map_err(|e| Error::config(format!("{}: {e}", p.display())))?
        };
        for doc in docs {
            let items = match doc.get("items").and_then(Value::as_array) {
                Some(items) => items.clone(),
                None => vec![doc],
            };
            for item in items {
                if let Some(nad) = Nad::from_object(&item) {
                    out.insert(nad.qualified(), nad);
                }
            }
            if out.len() > MAX_FOLDER_NADS {
                return Err(Error::config(format!(
                    "networksDir {} defines more than {MAX_FOLDER_NADS} networks",
                    dir.display()
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_and_config() {
        let nad = Nad::from_object(&json!({"apiVersion":"k8s.cni.cncf.io/v1","kind":"NetworkAttachmentDefinition",
            "metadata":{"name":"macnet","namespace":"team","annotations":{"k8s.v1.cni.cncf.io/resourceName":"intel.com/sriov"}},
            "spec":{"config":"{\"cniVersion\":\"1.0.0\",\"type\":\"macvlan\"}"}}))
        .unwrap();
        assert_eq!(nad.qualified(), "team/macnet");
        assert_eq!(nad.resource_name.as_deref(), Some("intel.com/sriov"));
        assert_eq!(nad.config_value().unwrap().unwrap()["name"], "macnet");
        let bare = Nad::from_object(
            &json!({"kind":"NetworkAttachmentDefinition","metadata":{"name":"ondisk"}}),
        )
        .unwrap();
        assert_eq!(bare.namespace, "default");
        assert_eq!(bare.config_value().unwrap(), None);
        assert!(Nad::from_object(&json!({"kind":"Pod","metadata":{"name":"x"}})).is_none());
        let broken = Nad {
            config: Some("{".into()),
            ..bare
        };
        assert_eq!(broken.config_value().unwrap_err().cni_code(), 7);
    }

    #[test]
    fn folder_with_yaml_documents_lists_and_json() {
        let d = std::env::temp_dir().join(format!("attache-nads-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("a.yaml"),
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: one\n  namespace: ns1\nspec:\n  config: '{\"type\":\"bridge\"}'\n---\napiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: two\n",
        )
        .unwrap();
        std::fs::write(
            d.join("b.json"),
            r#"{"kind":"List","items":[{"kind":"NetworkAttachmentDefinition","metadata":{"name":"three","namespace":"ns3"}}]}"#,
        )
        .unwrap();
        std::fs::write(d.join("README.md"), "ignored").unwrap();
        let all = load_folder(&d).unwrap();
        assert_eq!(
            all.keys().cloned().collect::<Vec<_>>(),
            ["default/two", "ns1/one", "ns3/three"]
        );
        std::fs::write(d.join("c.yaml"), "kind: [unclosed").unwrap();
        let e = load_folder(&d).unwrap_err();
        assert!(e.to_string().contains("c.yaml"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
