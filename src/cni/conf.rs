//! Network configuration as received on stdin: raw JSON in, a validated [`NetConf`] out, no I/O.
//!
//! The whole JSON object is kept (`raw`) because delegates and drivers read their own keys from it and a
//! plugin must pass unknown keys through untouched.

use serde_json::{Map, Value};

use crate::cni::spec::{CniResult, Version};
use crate::error::{Error, Result};

/// A single plugin configuration (what a runtime hands one plugin), decoded and checked.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub version: Version,
    /// `cniVersion` as the caller spelled it (echoed in results and errors).
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    pub raw: Map<String, Value>,
}

impl NetConf {
    /// Decode stdin: undecodable JSON is code 6, a JSON value of the wrong shape code 7.
    pub fn from_bytes(bytes: &[u8]) -> Result<NetConf> {
        NetConf::from_value(NetConf::decode(bytes)?)
    }

    /// The JSON of stdin, not yet checked (code 6 if it is none).
    pub fn decode(bytes: &[u8]) -> Result<Value> {
        serde_json::from_slice(bytes).map_err(|source| Error::Decode {
            what: "network configuration".into(),
            source,
        })
    }

    pub fn from_value(v: Value) -> Result<NetConf> {
        let Value::Object(raw) = v else {
            return Err(Error::config(
                "the network configuration must be a JSON object",
            ));
        };
        let cni_version = match raw.get("cniVersion") {
            None => "0.1.0".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(Error::config(format!(
                    "cniVersion must be a string, got {other}"
                )));
            }
        };
        let version = Version::parse(&cni_version)?;
        let name = match raw.get("name") {
            Some(Value::String(s)) => s.clone(),
            None => String::new(),
            Some(other) => {
                return Err(Error::config(format!("name must be a string, got {other}")));
            }
        };
        if !name.is_empty() {
            validate_network_name(&name)?;
        }
        let plugin_type = match raw.get("type") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) if !other.is_string() => {
                return Err(Error::config(format!("type must be a string, got {other}")));
            }
            _ => return Err(Error::config("the configuration has no \"type\"")),
        };
        validate_plugin_type(&plugin_type)?;
        Ok(NetConf {
            version,
            cni_version,
            name,
            plugin_type,
            raw,
        })
    }

    /// The network name, required by every command that keeps state.
    pub fn require_name(&self) -> Result<&str> {
        if self.name.is_empty() {
            return Err(Error::config("the configuration has no \"name\""));
        }
        Ok(&self.name)
    }

    /// `prevResult`, read in this configuration's version.
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        match self.raw.get("prevResult") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::from_value(v, self.version).map(Some),
        }
    }

    /// `runtimeConfig`, or an empty object.
    pub fn runtime_config(&self) -> Map<String, Value> {
        match self.raw.get("runtimeConfig") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        }
    }
}

/// A network name (`[A-Za-z0-9][A-Za-z0-9_.-]*`, SPEC §1). It becomes a path component (host-local's data
/// folder), so nothing that could climb out of a folder gets through.
pub fn validate_network_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok || name == "." || name.contains("..") {
        return Err(Error::config(format!(
            "network name {name:?} is invalid: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
        )));
    }
    Ok(())
}

/// Decode one section of a configuration into its typed form; a bad value is named by its key path
/// (`bridge: mtu: invalid type: string "big", expected u32`), not by a bare serde message.
pub fn decode<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            Error::config(format!("{what}: {inner}"))
        } else {
            Error::config(format!("{what}: {path}: {inner}"))
        }
    })
}

/// A plugin type names a binary in CNI_PATH: no path separators, nothing hidden.
pub fn validate_plugin_type(t: &str) -> Result<()> {
    if t.contains('/') || t.contains('\0') || t.starts_with('.') {
        return Err(Error::config(format!(
            "plugin type {t:?} is invalid: it must be a plain binary name"
        )));
    }
    Ok(())
}

/// A kernel interface name: 1..=15 bytes, not `.`/`..`, no `/`, `:` or white space.
pub fn check_ifname(name: &str) -> std::result::Result<(), String> {
    check_link_name(name, 15)
}

/// A name the kernel takes for a link (`dev_valid_name`): 1..=`max` bytes (15 for a name, 127 for an
/// altname), not `.`/`..`, no `/`, `:`, white space or control characters.
pub fn check_link_name(name: &str, max: usize) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > max {
        let shown: String = name.chars().take(20).collect();
        return Err(format!(
            "interface name {shown:?}{} is longer than {max} bytes",
            if shown.len() < name.len() { "..." } else { "" }
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "interface name {name:?} contains the invalid character {c:?}"
        ));
    }
    Ok(())
}

/// The longest container ID accepted. Runtimes use 64 hex characters; 255 bytes is what a file name
/// (the record's folder) can hold, and the kernel's 256-byte interface alias takes a hash of anything
/// longer than 64 (see `attach::owner_alias`).
pub const MAX_CONTAINER_ID: usize = 255;

/// Whether `id` matches `[A-Za-z0-9][A-Za-z0-9_.-]*`, the reference plugins' rule (of any length).
pub fn container_id_chars_ok(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A container ID: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most [`MAX_CONTAINER_ID`] bytes.
pub fn check_container_id(id: &str) -> std::result::Result<(), String> {
    if id.len() > MAX_CONTAINER_ID {
        return Err(format!(
            "container ID is {} bytes long: at most {MAX_CONTAINER_ID} are accepted",
            id.len()
        ));
    }
    if container_id_chars_ok(id) {
        Ok(())
    } else {
        Err(format!(
            "container ID {id:?} is invalid: it must match [A-Za-z0-9][A-Za-z0-9_.-]*"
        ))
    }
}

/// Runtimes written in Go send some capability arguments with Go's field spellings (containerd's CRI sends
/// `portMappings` entries as `HostPort`, `ContainerPort`, `Protocol`, `HostIP`). Rewrite them to the
/// documented spellings so every consumer sees one form.
pub fn normalize_runtime_config(mut rc: Map<String, Value>) -> Map<String, Value> {
    const TOP: &[(&str, &str)] = &[
        ("PortMappings", "portMappings"),
        ("Bandwidth", "bandwidth"),
        ("IPs", "ips"),
        ("Ips", "ips"),
        ("MAC", "mac"),
        ("Mac", "mac"),
        ("DeviceID", "deviceID"),
        ("IpRanges", "ipRanges"),
        ("IPRanges", "ipRanges"),
    ];
    const PORT: &[(&str, &str)] = &[
        ("HostPort", "hostPort"),
        ("ContainerPort", "containerPort"),
        ("Protocol", "protocol"),
        ("HostIP", "hostIP"),
        ("HostIp", "hostIP"),
        ("hostIp", "hostIP"),
    ];
    const BANDWIDTH: &[(&str, &str)] = &[
        ("IngressRate", "ingressRate"),
        ("IngressBurst", "ingressBurst"),
        ("EgressRate", "egressRate"),
        ("EgressBurst", "egressBurst"),
    ];
    fn rename(m: &mut Map<String, Value>, table: &[(&str, &str)]) {
        for (from, to) in table {
            if let Some(v) = m.remove(*from) {
                m.entry(to.to_string()).or_insert(v);
            }
        }
    }
    rename(&mut rc, TOP);
    if let Some(Value::Array(ports)) = rc.get_mut("portMappings") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            rename(p, PORT);
        }
    }
    if let Some(Value::Object(bw)) = rc.get_mut("bandwidth") {
        rename(bw, BANDWIDTH);
    }
    rc
}

/// GC's list of attachments still in use, `(containerID, ifname)`: `cni.dev/valid-attachments`, or
/// the key's earlier spelling `cni.dev/attachments` (libcni sends both).
pub fn valid_attachments(conf: &NetConf) -> Result<Vec<(String, String)>> {
    let list = match conf
        .raw
        .get("cni.dev/valid-attachments")
        .or_else(|| conf.raw.get("cni.dev/attachments"))
    {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(Error::config("cni.dev/valid-attachments must be a list")),
    };
    Ok(list
        .iter()
        .map(|a| {
            let s = |k| {
                a.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            (s("containerID"), s("ifname"))
        })
        .collect())
}

/// Intersect a runtime's capability arguments with the capabilities a plugin declares (SPEC §3).
pub fn runtime_config_for(
    plugin: &Map<String, Value>,
    runtime: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(Value::Object(caps)) = plugin.get("capabilities") {
        for (k, on) in caps {
            if on.as_bool() == Some(true)
                && let Some(v) = runtime.get(k)
            {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(r: Result<NetConf>) -> u32 {
        r.unwrap_err().cni_code()
    }

    #[test]
    fn decodes_a_plain_conf() {
        let c = NetConf::from_bytes(br#"{"cniVersion":"1.0.0","name":"n1","type":"bridge","x":1}"#)
            .unwrap();
        assert_eq!(c.version, Version::V1_0_0);
        assert_eq!(c.name, "n1");
        assert_eq!(c.plugin_type, "bridge");
        assert_eq!(c.raw["x"], 1);
    }

    #[test]
    fn undecodable_is_6_wrong_shape_is_7() {
        assert_eq!(code(NetConf::from_bytes(b"{not json")), 6);
        assert_eq!(code(NetConf::from_bytes(b"")), 6);
        assert_eq!(code(NetConf::from_bytes(b"[1,2]")), 7);
        assert_eq!(
            code(NetConf::from_bytes(br#"{"cniVersion":"1.0.0","name":"n"}"#)),
            7
        );
        assert_eq!(
            code(NetConf::from_bytes(
                br#"{"cniVersion":"1.0.0","name":"n","type":5}"#
            )),
            7
        );
        assert_eq!(
            code(NetConf::from_bytes(
                br#"{"cniVersion":1,"name":"n","type":"x"}"#
            )),
            7
        );
        assert_eq!(
            code(NetConf::from_bytes(
                br#"{"cniVersion":"1.0.0","name":"../etc","type":"x"}"#
            )),
            7
        );
        assert_eq!(
            code(NetConf::from_bytes(
                br#"{"cniVersion":"1.0.0","name":"n","type":"../sh"}"#
            )),
            7
        );
        assert_eq!(
            code(NetConf::from_bytes(
                br#"{"cniVersion":"x.y","name":"n","type":"a"}"#
            )),
            1
        );
    }

    #[test]
    fn names() {
        for ok in ["a", "net-1", "A.b_c", "0"] {
            validate_network_name(ok).unwrap();
        }
        for bad in ["", "-a", "a/b", "a b", "..", "a..b", ".hidden", "a\0b"] {
            assert!(validate_network_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ifnames_and_container_ids() {
        check_ifname("eth0").unwrap();
        check_ifname("a23456789012345").unwrap();
        for bad in [
            "",
            "a234567890123456",
            "a/b",
            "a:b",
            "a b",
            ".",
            "..",
            "a\tb",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
        check_container_id("abc-1.2_3").unwrap();
        for bad in ["", "-abc", "a/b", "a b", "a;b"] {
            assert!(check_container_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prev_result_is_read_in_conf_version() {
        let c = NetConf::from_value(json!({"cniVersion":"0.4.0","name":"n","type":"t",
            "prevResult":{"ips":[{"version":"4","address":"10.0.0.2/24"}]}}))
        .unwrap();
        let p = c.prev_result().unwrap().unwrap();
        assert_eq!(p.ips[0].address.to_string(), "10.0.0.2/24");
    }

    #[test]
    fn go_spellings_are_normalised() {
        let rc = json!({"PortMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":"0.0.0.0"}],
            "Bandwidth":{"IngressRate":1000},"mac":"aa:bb:cc:dd:ee:ff"});
        let rc = normalize_runtime_config(rc.as_object().unwrap().clone());
        assert_eq!(
            Value::Object(rc),
            json!({"mac":"aa:bb:cc:dd:ee:ff","portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"0.0.0.0"}],
                "bandwidth":{"ingressRate":1000}})
        );
    }

    #[test]
    fn capabilities_filter_runtime_config() {
        let plugin =
            json!({"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}});
        let runtime = json!({"portMappings":[{"hostPort":80}],"bandwidth":{},"ips":["10.0.0.1"]});
        let rc = runtime_config_for(plugin.as_object().unwrap(), runtime.as_object().unwrap());
        assert_eq!(rc.len(), 1);
        assert!(rc.contains_key("portMappings"));
    }
}
