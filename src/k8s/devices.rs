//! Devices a pod was given by device plugins, for NetworkAttachmentDefinitions that name a
//! `k8s.v1.cni.cncf.io/resourceName`: the device IDs come from the kubelet's device-manager checkpoint
//! (`kubelet_internal_checkpoint`, JSON), and the device plugin's Device Information Spec file, when there
//! is one, becomes the attachment's `device-info` in network-status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

pub const DEFAULT_CHECKPOINT: &str = "/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint";
pub const DEFAULT_DEVINFO_DIR: &str = "/var/run/k8s.cni.cncf.io/devinfo";

/// The device IDs allocated to one pod, by resource name, in the kubelet's order.
pub fn pod_devices(checkpoint: &Path, pod_uid: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(checkpoint).map_err(|e| {
        Error::io(
            format!(
                "reading the kubelet device checkpoint {}",
                checkpoint.display()
            ),
            e,
        )
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|source| Error::Decode {
        what: checkpoint.display().to_string(),
        source,
    })?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let entries = v
        .pointer("/Data/PodDeviceEntries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for e in entries {
        if e.get("PodUID").and_then(Value::as_str) != Some(pod_uid) {
            continue;
        }
        let Some(resource) = e.get("ResourceName").and_then(Value::as_str) else {
            continue;
        };
        // DeviceIDs: a list (older kubelets) or a map of NUMA node to list.
        let ids: Vec<String> = match e.get("DeviceIDs") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::Object(m)) => m
                .values()
                .filter_map(Value::as_array)
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => vec![],
        };
        out.entry(resource.to_string()).or_default().extend(ids);
    }
    Ok(out)
}

/// The Device Information Spec file a device plugin wrote for a device, if any.
pub fn device_info(dir: &Path, resource: &str, device_id: &str) -> Option<Value> {
    let p: PathBuf = dir.join("dp").join(format!(
        "{}-{device_id}-device.json",
        resource.replace('/', "-")
    ));
    std::fs::read_to_string(p)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_checkpoint_shapes() {
        let d = std::env::temp_dir().join(format!("attache-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("dp")).unwrap();
        let ck = d.join("kubelet_internal_checkpoint");
        std::fs::write(
            &ck,
            r#"{"Data":{"PodDeviceEntries":[
              {"PodUID":"u1","ContainerName":"c","ResourceName":"example.com/vf","DeviceIDs":{"0":["0000:af:06.0","0000:af:06.1"]}},
              {"PodUID":"u1","ContainerName":"c","ResourceName":"example.com/old","DeviceIDs":["dev7"]},
              {"PodUID":"u2","ContainerName":"c","ResourceName":"example.com/vf","DeviceIDs":{"0":["0000:af:06.2"]}}],
              "RegisteredDevices":{}},"Checksum":1}"#,
        )
        .unwrap();
        let m = pod_devices(&ck, "u1").unwrap();
        assert_eq!(m["example.com/vf"], vec!["0000:af:06.0", "0000:af:06.1"]);
        assert_eq!(m["example.com/old"], vec!["dev7"]);
        assert!(pod_devices(&ck, "u3").unwrap().is_empty());
        std::fs::write(
            d.join("dp/example.com-vf-0000:af:06.0-device.json"),
            r#"{"type":"pci","version":"1.1.0","pci":{"pci-address":"0000:af:06.0"}}"#,
        )
        .unwrap();
        assert_eq!(
            device_info(&d, "example.com/vf", "0000:af:06.0").unwrap()["type"],
            "pci"
        );
        assert!(device_info(&d, "example.com/vf", "0000:af:06.1").is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
