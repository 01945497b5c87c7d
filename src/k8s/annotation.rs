//! The NPWG v1.3 pod annotations: `k8s.v1.cni.cncf.io/networks` in both forms (comma-separated
//! `[namespace/]name[@interface]`, or a JSON list of network selection elements), and the
//! `k8s.v1.cni.cncf.io/network-status` attachment report. Pure: no I/O.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cni::conf::check_ifname;
use crate::cni::spec::{CniResult, Dns};

pub const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
pub const NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
pub const RESOURCE_NAME: &str = "k8s.v1.cni.cncf.io/resourceName";

/// One network selection element (§4.1.2.1).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Selection {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "interfaceRequest"
    )]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(
        default,
        rename = "default-route",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_route: Option<Vec<IpAddr>>,
    #[serde(default, rename = "cni-args", skip_serializing_if = "Option::is_none")]
    pub cni_args: Option<Map<String, Value>>,
    #[serde(
        default,
        rename = "portMappings",
        skip_serializing_if = "Option::is_none"
    )]
    pub port_mappings: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Value>,
    #[serde(
        default,
        rename = "infiniband-guid",
        skip_serializing_if = "Option::is_none"
    )]
    pub infiniband_guid: Option<String>,
    #[serde(
        default,
        rename = "ipam-claim-reference",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipam_claim_reference: Option<String>,
    /// attache's own: how this interface is routed (`"source"` or `"main"`), over the definition's
    /// and the configuration's `podRouting`.
    #[serde(
        default,
        rename = "attache.routing",
        skip_serializing_if = "Option::is_none"
    )]
    pub routing: Option<String>,
}

impl Selection {
    /// `namespace/name`, the namespace defaulting to the pod's.
    pub fn qualified(&self, pod_namespace: &str) -> String {
        format!(
            "{}/{}",
            self.namespace.as_deref().unwrap_or(pod_namespace),
            self.name
        )
    }
}

/// A Kubernetes object name or namespace: an RFC 1123 label.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// NAD names may be DNS-1123 subdomains (dots allowed).
fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// The API server keeps at most 256 KiB of annotations per object: a longer value did not come from it.
pub const MAX_ANNOTATION: usize = 256 << 10;

/// Parse the networks annotation, refusing more than `max` elements before looking at any of them (the
/// count is taken in one linear pass). An error names the bad element.
pub fn parse_networks(value: &str, max: usize) -> Result<Vec<Selection>, String> {
    if value.len() > MAX_ANNOTATION {
        return Err(format!(
            "is {} bytes long: more than the API server's {} KiB",
            value.len(),
            MAX_ANNOTATION >> 10
        ));
    }
    let value = value.trim();
    if value.is_empty() {
        return Ok(vec![]);
    }
    let too_many =
        |n: usize| format!("selects {n} networks: at most {max} are allowed (maxAttachments)");
    let list: Vec<Selection> = if value.contains(['[', '{', '"']) {
        let v: Value = serde_json::from_str(value).map_err(|e| format!("not valid JSON: {e}"))?;
        let items = match v {
            Value::Array(a) => a,
            o @ Value::Object(_) => vec![o],
            _ => return Err("must be a JSON list of network selection elements".into()),
        };
        if items.len() > max {
            return Err(too_many(items.len()));
        }
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                serde_json::from_value::<Selection>(item.clone())
                    .map_err(|e| format!("element {i} ({item}): {e}"))
            })
            .collect::<Result<_, _>>()?
    } else {
        let n = value.bytes().filter(|b| *b == b',').count() + 1;
        if n > max {
            return Err(too_many(n));
        }
        value
            .split(',')
            .map(|item| parse_short(item.trim()))
            .collect::<Result<_, _>>()?
    };
    for (i, s) in list.iter().enumerate() {
        let what = || format!("element {i} ({:?})", s.name);
        if !is_dns1123_subdomain(&s.name) {
            return Err(format!(
                "{}: {:?} is not a valid network name",
                what(),
                s.name
            ));
        }
        if let Some(ns) = &s.namespace
            && !is_dns1123_label(ns)
        {
            return Err(format!("{}: {ns:?} is not a valid namespace", what()));
        }
        if let Some(ifname) = &s.interface {
            check_ifname(ifname).map_err(|m| format!("{}: {m}", what()))?;
        }
        if s.ipam_claim_reference.is_some() && !s.ips.is_empty() {
            return Err(format!(
                "{}: ips and ipam-claim-reference cannot be combined",
                what()
            ));
        }
        for ip in &s.ips {
            let ok = ip.parse::<IpAddr>().is_ok() || ip.parse::<ipnet::IpNet>().is_ok();
            if !ok {
                return Err(format!("{}: {ip:?} is not an IP address", what()));
            }
        }
        if let Some(mac) = &s.mac {
            crate::netlink::parse_mac(mac).map_err(|m| format!("{}: {m}", what()))?;
        }
    }
    if list.iter().filter(|s| s.default_route.is_some()).count() > 1 {
        return Err("default-route may be requested by one network selection element only".into());
    }
    Ok(list)
}

/// `[namespace/]name[@interface]`.
fn parse_short(item: &str) -> Result<Selection, String> {
    if item.is_empty() {
        return Err("an empty network name in the list".into());
    }
    let (rest, interface) = match item.split_once('@') {
        Some((r, i)) => (r, Some(i.to_string())),
        None => (item, None),
    };
    let (namespace, name) = match rest.split_once('/') {
        Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
        None => (None, rest.to_string()),
    };
    if name.contains('/') {
        return Err(format!("{item:?}: too many '/'"));
    }
    Ok(Selection {
        name,
        namespace,
        interface,
        ..Default::default()
    })
}

/// One entry of the network-status annotation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    pub default: bool,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway: Vec<String>,
    #[serde(
        default,
        rename = "device-info",
        skip_serializing_if = "Option::is_none"
    )]
    pub device_info: Option<Value>,
}

/// The status of one attachment, from the first sandbox interface of its result (§5): its addresses
/// (those pointing at it, or at no interface), its MAC, and the gateways of its default routes.
pub fn status_of(network: &str, ifname: &str, default: bool, result: &CniResult) -> NetworkStatus {
    let idx = result
        .interfaces
        .iter()
        .position(|i| !i.sandbox.is_empty() && i.name == ifname)
        .or_else(|| result.first_sandbox_interface());
    let ips = result
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == idx)
        .map(|ip| ip.address.addr().to_string())
        .collect();
    let iface = idx.map(|i| &result.interfaces[i]);
    let gateway = result
        .routes
        .iter()
        .filter(|r| r.dst.prefix_len() == 0)
        .filter_map(|r| r.gw.map(|g| g.to_string()))
        .collect();
    NetworkStatus {
        name: network.to_string(),
        interface: iface
            .map(|i| i.name.clone())
            .unwrap_or_else(|| ifname.to_string()),
        ips,
        mac: iface.map(|i| i.mac.clone()).unwrap_or_default(),
        mtu: iface.map(|i| i.mtu).filter(|m| *m > 0),
        default,
        dns: result.dns.clone(),
        gateway,
        device_info: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::spec::Version;
    use serde_json::json;

    #[test]
    fn comma_form() {
        let l = parse_networks("net-a, other/net-b,ns1/net-c@eth9 ,net-d@fast0", 64).unwrap();
        assert_eq!(l.len(), 4);
        assert_eq!(
            (
                l[0].name.as_str(),
                l[0].namespace.as_deref(),
                l[0].interface.as_deref()
            ),
            ("net-a", None, None)
        );
        assert_eq!(l[1].qualified("pods"), "other/net-b");
        assert_eq!(l[2].interface.as_deref(), Some("eth9"));
        assert_eq!(l[3].qualified("pods"), "pods/net-d");
        assert!(parse_networks("", 64).unwrap().is_empty());
    }

    #[test]
    fn bounded_before_parsing() {
        let many = vec!["net-a"; 65].join(",");
        assert!(
            parse_networks(&many, 64)
                .unwrap_err()
                .contains("65 networks")
        );
        assert_eq!(parse_networks(&many, 65).unwrap().len(), 65);
        // Near the API server's limit: refused after one linear pass, not planned element by element.
        let t = std::time::Instant::now();
        let comma = vec!["net-a"; 36_000].join(",");
        assert!(
            parse_networks(&comma, 64)
                .unwrap_err()
                .contains("36000 networks")
        );
        let json = format!("[{}]", vec![r#"{"name":"x"}"#; 18_000].join(","));
        assert!(
            parse_networks(&json, 64)
                .unwrap_err()
                .contains("18000 networks")
        );
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        let huge = "a,".repeat(200 << 10);
        assert!(parse_networks(&huge, 64).unwrap_err().contains("256 KiB"));
    }

    #[test]
    fn json_form() {
        let l = parse_networks(
            r#"[{"name":"net-a","interface":"data0","ips":["10.9.0.5/24"],"mac":"0a:00:00:00:00:05",
                "default-route":["10.9.0.1"],"cni-args":{"k":"v"},"portMappings":[{"hostPort":80,"containerPort":8080}],
                "bandwidth":{"ingressRate":1000}},
               {"name":"net-b","namespace":"other"}]"#,
            64,
        )
        .unwrap();
        assert_eq!(l[0].ips, vec!["10.9.0.5/24".to_string()]);
        assert_eq!(
            l[0].default_route.as_ref().unwrap()[0].to_string(),
            "10.9.0.1"
        );
        assert_eq!(l[0].cni_args.as_ref().unwrap()["k"], "v");
        assert!(l[0].port_mappings.is_some() && l[0].bandwidth.is_some());
        assert_eq!(l[1].qualified("pods"), "other/net-b");
    }

    #[test]
    fn malformed_names_the_element() {
        for (bad, needle) in [
            ("Net_A", "Net_A"),
            ("ns/a/b", "too many"),
            ("a,,b", "empty"),
            ("net@this-name-is-way-too-long", "longer than 15"),
            ("net@a/b", "invalid character"),
            ("BadNs/net", "namespace"),
            (r#"[{"name":"a","ips":["nope"]}]"#, "nope"),
            (r#"[{"name":"a","mac":"zz"}]"#, "zz"),
            (
                r#"[{"name":"a","default-route":["10.0.0.1"]},{"name":"b","default-route":["10.1.0.1"]}]"#,
                "one network",
            ),
            (r#"[{"interface":"x"}]"#, "element 0"),
            (r#"[1]"#, "element 0"),
            (r#"{"name": "#, "JSON"),
            (
                r#"[{"name":"a","ips":["10.0.0.1"],"ipam-claim-reference":"c"}]"#,
                "combined",
            ),
        ] {
            let e = parse_networks(bad, 64).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn status_from_a_bridge_result() {
        let r = CniResult::from_value(
            &json!({"cniVersion":"1.0.0","interfaces":[{"name":"br0","mac":"aa:00:00:00:00:01"},
                {"name":"vethx","mac":"aa:00:00:00:00:02"},{"name":"net1","mac":"aa:00:00:00:00:03","sandbox":"/run/netns/p"}],
                "ips":[{"interface":2,"address":"10.1.0.5/24","gateway":"10.1.0.1"}],
                "routes":[{"dst":"0.0.0.0/0","gw":"10.1.0.1"}],"dns":{"nameservers":["10.1.0.53"]}}),
            Version::V1_0_0,
        )
        .unwrap();
        let s = status_of("ns/net-a", "net1", false, &r);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            json!({"name":"ns/net-a","interface":"net1","ips":["10.1.0.5"],"mac":"aa:00:00:00:00:03",
                "default":false,"dns":{"nameservers":["10.1.0.53"]},"gateway":["10.1.0.1"]})
        );
    }
}
