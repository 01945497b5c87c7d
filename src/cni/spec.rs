//! Wire types of the CNI protocol: versions, the result in every supported version, and the error reply.
//!
//! Inside attache a result is always a [`CniResult`] (the 1.1.0 shape, a superset of the others). It is
//! read from any version a delegate or a `prevResult` may speak (0.1.0 .. 1.1.0) and written in the version
//! the caller's `cniVersion` asks for.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// The versions attache speaks, oldest first (VERSION's `supportedVersions`).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest version: what attache writes when nothing else is asked for.
pub const CURRENT_VERSION: &str = "1.1.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u16, pub u16, pub u16);

impl Version {
    pub const V0_3_0: Version = Version(0, 3, 0);
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    /// Parse a version a peer sent; anything that is not `x.y.z` is an error (code 1).
    pub fn parse(s: &str) -> Result<Version> {
        let bad = || Error::IncompatibleVersion(format!("cniVersion {s:?} is not a version"));
        let mut it = s.split('.');
        let mut next = || -> Result<u16> { it.next().ok_or_else(bad)?.parse().map_err(|_| bad()) };
        let v = Version(next()?, next()?, next()?);
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(v)
    }

    /// A version attache may be asked to speak; others are code 1 with the list we support.
    pub fn supported(s: &str) -> Result<Version> {
        if SUPPORTED_VERSIONS.contains(&s) {
            return Version::parse(s);
        }
        Err(Error::IncompatibleVersion(format!(
            "cniVersion {s:?} is not supported; attache supports {}",
            SUPPORTED_VERSIONS.join(", ")
        )))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl FromStr for Version {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Version::parse(s)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub socket_path: String,
    #[serde(default, rename = "pciID", skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, rename = "advmss", skip_serializing_if = "Option::is_none")]
    pub adv_mss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            adv_mss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A CNI result, in attache's canonical (1.1.0) shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// What a 0.1.0 / 0.2.0 result looked like: one `ip4` and one `ip6` block.
#[derive(Deserialize)]
struct LegacyIp {
    ip: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
}

impl CniResult {
    /// Read a result of any version from JSON. The version comes from its `cniVersion` field, or from
    /// `fallback` (the version of the config that produced it) when the field is absent.
    pub fn from_value(v: &Value, fallback: Version) -> Result<CniResult> {
        let version = match v.get("cniVersion").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => Version::parse(s)?,
            _ => fallback,
        };
        let decode = |source| Error::Decode {
            what: format!("CNI {version} result"),
            source,
        };
        if version < Version::V0_3_0 {
            let mut r = CniResult::default();
            for key in ["ip4", "ip6"] {
                if let Some(block) = v.get(key).filter(|b| !b.is_null()) {
                    let l: LegacyIp = serde_json::from_value(block.clone()).map_err(decode)?;
                    r.ips.push(IpConfig {
                        interface: None,
                        address: l.ip,
                        gateway: l.gateway,
                    });
                    r.routes.extend(l.routes);
                }
            }
            if let Some(d) = v.get("dns").filter(|d| !d.is_null()) {
                r.dns = serde_json::from_value(d.clone()).map_err(decode)?;
            }
            return Ok(r);
        }
        // 0.3.x / 0.4.0 carry ips[].version; serde ignores it. Older-than-1.1 routes lack the new keys.
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            // Go writes `null` for empty lists in some versions.
            for key in ["interfaces", "ips", "routes", "dns"] {
                if o.get(key).is_some_and(Value::is_null) {
                    o.remove(key);
                }
            }
        }
        serde_json::from_value(v).map_err(decode)
    }

    /// Write this result in `version`, dropping what that version cannot carry.
    pub fn to_value(&self, version: Version) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.to_string()));
        if version < Version::V0_3_0 {
            // 0.1.0/0.2.0: first IPv4 and first IPv6 address; routes go with the matching family.
            for (key, v4) in [("ip4", true), ("ip6", false)] {
                if let Some(ip) = self.ips.iter().find(|i| i.address.addr().is_ipv4() == v4) {
                    let routes: Vec<Value> = self
                        .routes
                        .iter()
                        .filter(|r| r.dst.addr().is_ipv4() == v4)
                        .map(|r| route_value(r, version))
                        .collect();
                    let mut b = Map::new();
                    b.insert("ip".into(), json!(ip.address.to_string()));
                    if let Some(gw) = ip.gateway {
                        b.insert("gateway".into(), json!(gw.to_string()));
                    }
                    if !routes.is_empty() {
                        b.insert("routes".into(), Value::Array(routes));
                    }
                    out.insert(key.into(), Value::Object(b));
                }
            }
            out.insert("dns".into(), dns_value(&self.dns));
            return Value::Object(out);
        }
        if !self.interfaces.is_empty() {
            let ifaces = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    if version < Version::V1_1_0 {
                        i.mtu = 0;
                        i.socket_path.clear();
                        i.pci_id.clear();
                    }
                    serde_json::to_value(i).unwrap_or(Value::Null)
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifaces));
        }
        if !self.ips.is_empty() {
            let ips = self
                .ips
                .iter()
                .map(|ip| {
                    let mut o = Map::new();
                    if version < Version::V1_0_0 {
                        let fam = if ip.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        };
                        o.insert("version".into(), json!(fam));
                    }
                    if let Some(i) = ip.interface {
                        o.insert("interface".into(), json!(i));
                    }
                    o.insert("address".into(), json!(ip.address.to_string()));
                    if let Some(gw) = ip.gateway {
                        o.insert("gateway".into(), json!(gw.to_string()));
                    }
                    Value::Object(o)
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes = self
                .routes
                .iter()
                .map(|r| route_value(r, version))
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert("dns".into(), dns_value(&self.dns));
        Value::Object(out)
    }

    /// The index of the first interface that lives in a sandbox (the pod side).
    pub fn first_sandbox_interface(&self) -> Option<usize> {
        self.interfaces.iter().position(|i| !i.sandbox.is_empty())
    }
}

fn route_value(r: &Route, version: Version) -> Value {
    let mut r = r.clone();
    if version < Version::V1_1_0 {
        r.mtu = None;
        r.adv_mss = None;
        r.priority = None;
        r.table = None;
        r.scope = None;
    }
    serde_json::to_value(r).unwrap_or(Value::Null)
}

fn dns_value(d: &Dns) -> Value {
    serde_json::to_value(d).unwrap_or_else(|_| json!({}))
}

/// The error reply: `{"cniVersion","code","msg","details"}` on stdout.
pub fn error_value(version: &str, err: &Error) -> Value {
    let mut o = Map::new();
    o.insert("cniVersion".into(), json!(version));
    o.insert("code".into(), json!(err.cni_code()));
    o.insert("msg".into(), json!(err.to_string()));
    let details = err.details();
    if !details.is_empty() {
        o.insert("details".into(), json!(details));
    }
    Value::Object(o)
}

/// VERSION's answer.
pub fn version_value(asked: &str) -> Value {
    let asked = if asked.is_empty() {
        CURRENT_VERSION
    } else {
        asked
    };
    json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "aa:bb:cc:dd:ee:ff".into(),
                    mtu: 1500,
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:01".into(),
                    sandbox: "/run/netns/p".into(),
                    pci_id: "0000:00:01.0".into(),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    interface: Some(1),
                    address: "10.1.0.2/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                },
                IpConfig {
                    interface: Some(1),
                    address: "fd00::2/64".parse().unwrap(),
                    gateway: None,
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.1.0.1".parse().unwrap()),
                mtu: Some(1400),
                adv_mss: Some(1360),
                priority: Some(10),
                table: Some(100),
                scope: Some(0),
            }],
            dns: Dns {
                nameservers: vec!["10.1.0.53".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn version_parsing_and_support() {
        assert_eq!(Version::parse("0.4.0").unwrap(), Version::V0_4_0);
        assert!(Version::parse("1.0").is_err());
        assert!(Version::parse("a.b.c").is_err());
        assert!(Version::supported("0.2.0").is_err());
        assert_eq!(Version::supported("0.2.0").unwrap_err().cni_code(), 1);
        assert!(Version::parse("0.3.1").unwrap() < Version::V0_4_0);
    }

    #[test]
    fn writes_1_1_0_with_everything() {
        let v = sample().to_value(Version::V1_1_0);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][0]["mtu"], 1500);
        assert_eq!(v["interfaces"][1]["pciID"], "0000:00:01.0");
        assert_eq!(v["routes"][0]["advmss"], 1360);
        assert_eq!(v["routes"][0]["table"], 100);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["dns"]["nameservers"][0], "10.1.0.53");
    }

    #[test]
    fn writes_older_versions_without_newer_fields() {
        for (ver, has_version) in [("1.0.0", false), ("0.4.0", true), ("0.3.1", true)] {
            let v = sample().to_value(Version::parse(ver).unwrap());
            assert_eq!(v["cniVersion"], ver);
            assert!(v["interfaces"][0].get("mtu").is_none(), "{ver}");
            assert!(v["interfaces"][1].get("pciID").is_none(), "{ver}");
            assert!(v["routes"][0].get("table").is_none(), "{ver}");
            assert_eq!(v["routes"][0]["gw"], "10.1.0.1");
            assert_eq!(v["ips"][0].get("version").is_some(), has_version, "{ver}");
            if has_version {
                assert_eq!(v["ips"][0]["version"], "4");
                assert_eq!(v["ips"][1]["version"], "6");
            }
        }
    }

    #[test]
    fn round_trips_between_versions() {
        let full = sample();
        for ver in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let version = Version::parse(ver).unwrap();
            let written = full.to_value(version);
            let read = CniResult::from_value(&written, Version::V1_1_0).unwrap();
            // Reading it back and writing it again in the same version is lossless.
            assert_eq!(read.to_value(version), written, "{ver}");
            // Converting up and down again keeps what both versions carry.
            for other in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
                let o = Version::parse(other).unwrap();
                let up = CniResult::from_value(&read.to_value(o), o).unwrap();
                let low = version.min(o);
                assert_eq!(up.to_value(low), full.to_value(low), "{ver} -> {other}");
            }
        }
    }

    #[test]
    fn reads_a_reference_0_4_0_result() {
        let v: Value = serde_json::from_str(
            r#"{"cniVersion":"0.4.0","interfaces":[{"name":"cni0","mac":"5a:1e:28:bd:f2:57"},
            {"name":"veth1","mac":"ce:5c:be:1a:16:33"},{"name":"eth0","mac":"0a:58:0a:01:00:02",
            "sandbox":"/var/run/netns/p"}],"ips":[{"version":"4","interface":2,"address":"10.1.0.2/24",
            "gateway":"10.1.0.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#,
        )
        .unwrap();
        let r = CniResult::from_value(&v, Version::V1_0_0).unwrap();
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.first_sandbox_interface(), Some(2));
        assert_eq!(r.routes[0].gw, None);
        let out = r.to_value(Version::V1_0_0);
        assert!(out["ips"][0].get("version").is_none());
        assert_eq!(out["ips"][0]["address"], "10.1.0.2/24");
    }

    #[test]
    fn reads_legacy_0_2_0() {
        let v = json!({"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.5/24","gateway":"10.0.0.1",
            "routes":[{"dst":"0.0.0.0/0"}]},"dns":{"nameservers":["1.1.1.1"]}});
        let r = CniResult::from_value(&v, Version::V1_0_0).unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.5/24");
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.dns.nameservers, vec!["1.1.1.1".to_string()]);
    }

    #[test]
    fn bad_result_is_a_decode_error() {
        let v = json!({"cniVersion":"1.0.0","ips":[{"address":"not-an-ip"}]});
        assert_eq!(
            CniResult::from_value(&v, Version::V1_0_0)
                .unwrap_err()
                .cni_code(),
            6
        );
    }

    #[test]
    fn error_and_version_replies() {
        let v = error_value("1.0.0", &Error::config("bad"));
        assert_eq!(v["code"], 7);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v.get("details").is_none());
        let v = version_value("0.4.0");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
    }
}
