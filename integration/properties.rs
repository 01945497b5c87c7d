//! Property tests (proptest, stable Rust): configuration parsing and validation, result conversion
//! between every pair of versions, the networks annotation, CNI_ARGS, and range-set allocation.
//! `ATTACHE_PROPTEST_CASES` sets the cases per property (scripts/test: 2000; the documented long run:
//! 100000).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use attache::cni::conf::NetConf;
use attache::cni::skel::{CmdArgs, CniArgs, Command};
use attache::cni::spec::{CniResult, Dns, Interface, IpConfig, Route, Version};
use attache::ipam::host_local::range::{RangeSet, RawRange, to_u128};
use attache::ipam::host_local::store::{MemStore, Store};
use attache::k8s::annotation::parse_networks;
use ipnet::IpNet;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn config() -> ProptestConfig {
    let cases = std::env::var("ATTACHE_PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const VERSIONS: [Version; 5] = [
    Version(0, 3, 0),
    Version(0, 3, 1),
    Version(0, 4, 0),
    Version(1, 0, 0),
    Version(1, 1, 0),
];

// ---- strategies

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
    ]
}

fn net() -> impl Strategy<Value = IpNet> {
    (ip(), any::<u8>()).prop_map(|(ip, p)| {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        IpNet::new(ip, p % (max + 1)).unwrap()
    })
}

fn word() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,8}"
}

fn result() -> impl Strategy<Value = CniResult> {
    let iface = (
        word(),
        "([0-9a-f]{2}:){5}[0-9a-f]{2}|",
        0u32..9000,
        "(/run/netns/[a-z]{1,5})?",
        "(/sock/[a-z]{1,3})?",
        "(0000:00:0[0-9].0)?",
    )
        .prop_map(|(name, mac, mtu, sandbox, socket_path, pci_id)| Interface {
            name,
            mac,
            mtu,
            sandbox,
            socket_path,
            pci_id,
        });
    let ipc = (
        proptest::option::of(0usize..4),
        net(),
        proptest::option::of(ip()),
    )
        .prop_map(|(interface, address, gateway)| IpConfig {
            interface,
            address,
            gateway,
        });
    let route = (
        net(),
        proptest::option::of(ip()),
        proptest::option::of(0u32..9000),
        proptest::option::of(0u32..9000),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u8>()),
    )
        .prop_map(|(dst, gw, mtu, adv_mss, priority, table, scope)| Route {
            dst,
            gw,
            mtu,
            adv_mss,
            priority,
            table,
            scope,
        });
    let dns = (
        proptest::collection::vec(word(), 0..3),
        "([a-z]{1,6}\\.test)?",
        proptest::collection::vec(word(), 0..3),
        proptest::collection::vec(word(), 0..2),
    )
        .prop_map(|(nameservers, domain, search, options)| Dns {
            nameservers,
            domain,
            search,
            options,
        });
    (
        proptest::collection::vec(iface, 0..4),
        proptest::collection::vec(ipc, 0..4),
        proptest::collection::vec(route, 0..4),
        dns,
    )
        .prop_map(|(interfaces, ips, routes, dns)| CniResult {
            interfaces,
            ips,
            routes,
            dns,
        })
}

/// What `version` can express of a result: before 1.1.0 no interface mtu / socketPath / pciID and no
/// route mtu / advmss / priority / table / scope.
fn expressible(r: &CniResult, version: Version) -> CniResult {
    let mut r = r.clone();
    if version < Version(1, 1, 0) {
        for i in &mut r.interfaces {
            i.mtu = 0;
            i.socket_path.clear();
            i.pci_id.clear();
        }
        for rt in &mut r.routes {
            *rt = Route::new(rt.dst, rt.gw);
        }
    }
    r
}

/// A JSON value of any shape, for the fields configurations have.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1.0e6f64..1.0e6).prop_map(|f| json!(f)),
        "[ -~]{0,20}".prop_map(Value::String),
        Just(json!("10.1.0.0/24")),
        Just(json!("fd00::/64")),
        Just(json!("host-local")),
        Just(json!("static")),
        Just(json!("bridge")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Keys the native drivers, IPAM and the meta-plugin read, and some they do not.
fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "bridge",
        "isGateway",
        "isDefaultGateway",
        "ipMasq",
        "mtu",
        "hairpinMode",
        "promiscMode",
        "vlan",
        "vlanTrunk",
        "macspoofchk",
        "enabledad",
        "master",
        "mode",
        "vlanId",
        "flag",
        "linkInContainer",
        "ipam",
        "type",
        "subnet",
        "ranges",
        "rangeStart",
        "rangeEnd",
        "gateway",
        "routes",
        "dataDir",
        "addresses",
        "address",
        "dns",
        "runtimeConfig",
        "args",
        "cni",
        "ips",
        "mac",
        "prevResult",
        "clusterNetwork",
        "cacheDir",
        "logLevel",
        "networksDir",
        "maxAttachments",
        "apiTimeout",
        "defaultNetworks",
        "id",
        "minID",
        "maxID",
        "unknownKey",
    ])
    .prop_map(str::to_string)
}

fn cmd_args(command: Command, cni_args: &str) -> CmdArgs {
    CmdArgs {
        command,
        container_id: "c1".into(),
        netns: None,
        netns_ignored: None,
        nothing_to_do: None,
        ifname: "eth0".into(),
        args: CniArgs::parse(cni_args).unwrap_or_default(),
        path: vec![],
    }
}

// ---- properties

proptest! {
    #![proptest_config(config())]

    /// Any JSON object is either refused with a configuration error (code 7, or 1 for a version) or
    /// accepted — by the skel's decoding, every native driver's validation, IPAM and the meta
    /// configuration alike; never a panic, never another code.
    #[test]
    fn configuration_validation_is_total(
        fields in proptest::collection::btree_map(key(), json_value(), 0..10),
        t in prop::sample::select(vec!["bridge", "macvlan", "ipvlan", "vlan", "attache"]),
        version in prop::sample::select(vec!["0.3.1", "0.4.0", "1.0.0", "1.1.0", "9.9"]),
    ) {
        let mut m: Map<String, Value> = fields.into_iter().collect();
        m.insert("cniVersion".into(), json!(version));
        m.insert("name".into(), json!("net"));
        m.insert("type".into(), json!(t));
        let ok_code = |c: u32| c == 7 || c == 1 || c == 6;
        match NetConf::from_value(Value::Object(m)) {
            Err(e) => prop_assert!(ok_code(e.cni_code()), "{e}"),
            Ok(conf) => {
                for cmd in [Command::Add, Command::Del] {
                    let args = cmd_args(cmd, "");
                    if let Some(native) = attache::attach::NativeType::of(t)
                        && let Err(e) = native.check_conf(&args, conf.clone())
                    {
                        prop_assert!(ok_code(e.cni_code()), "{t}: {e}");
                    }
                    if let Err(e) = attache::ipam::Ipam::from_conf(&conf, &args) {
                        prop_assert!(ok_code(e.cni_code()), "ipam: {e}");
                    }
                    // Teardown never refuses.
                    let _ = attache::ipam::IpamRelease::of(&conf, &args);
                    let _ = attache::engine::config::AttacheConf::for_teardown(&conf);
                    if let Err(e) = attache::engine::config::AttacheConf::from_conf(&conf) {
                        prop_assert!(ok_code(e.cni_code()), "meta: {e}");
                    }
                }
            }
        }
    }

    /// Anything on stdin gets exactly one JSON document and a known code back.
    #[test]
    fn any_stdin_gets_one_json_answer(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        struct Never;
        impl attache::cni::skel::Plugin for Never {
            fn run(&self, _: &CmdArgs, _: NetConf) -> attache::error::Result<Option<Value>> {
                Ok(None)
            }
        }
        let env: std::collections::HashMap<String, String> = [
            ("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut out = Vec::new();
        let code = attache::cni::skel::run(&env, &mut bytes.as_slice(), &mut out, &Never);
        if code != 0 {
            let v: Value = serde_json::from_slice(&out).expect("one JSON document");
            prop_assert!(matches!(v["code"].as_u64(), Some(1 | 6 | 7)), "{v}");
        }
    }

    /// Written in one version and read back, a result keeps what that version can express; through
    /// two versions, what both can.
    #[test]
    fn result_conversion_round_trips(r in result(), a in 0usize..5, b in 0usize..5) {
        let (va, vb) = (VERSIONS[a], VERSIONS[b]);
        let back = CniResult::from_value(&r.to_value(va), vb).unwrap();
        prop_assert_eq!(&back, &expressible(&r, va));
        let twice = CniResult::from_value(&back.to_value(vb), va).unwrap();
        prop_assert_eq!(twice, expressible(&expressible(&r, va), vb));
    }

    /// A 0.2.0 result is read as its first IPv4 and IPv6 blocks with their routes.
    #[test]
    fn legacy_results_are_read(v4 in proptest::option::of(net()), gw in proptest::option::of(ip())) {
        let mut doc = json!({"cniVersion": "0.2.0"});
        if let Some(n) = v4 {
            doc["ip4"] = json!({"ip": n.to_string()});
            if let Some(g) = gw { doc["ip4"]["gateway"] = json!(g.to_string()); }
        }
        let r = CniResult::from_value(&doc, Version(1, 0, 0)).unwrap();
        prop_assert_eq!(r.ips.len(), usize::from(v4.is_some()));
    }

    /// The comma form round-trips, the count bound holds, and no string makes the parser panic.
    #[test]
    fn networks_annotation(
        sel in proptest::collection::vec(
            (proptest::option::of("[a-z][a-z0-9]{0,6}"), "[a-z][a-z0-9]{0,6}", proptest::option::of("[a-z][a-z0-9]{0,6}")),
            1..12),
        junk in "[ -~]{0,60}",
        max in 1usize..12,
    ) {
        let _ = parse_networks(&junk, max);
        let text: Vec<String> = sel.iter().map(|(ns, name, iface)| {
            format!("{}{name}{}", ns.as_ref().map(|n| format!("{n}/")).unwrap_or_default(),
                iface.as_ref().map(|i| format!("@{i}")).unwrap_or_default())
        }).collect();
        match parse_networks(&text.join(","), max) {
            Ok(list) => {
                prop_assert!(sel.len() <= max);
                prop_assert_eq!(list.len(), sel.len());
                for (s, (ns, name, iface)) in list.iter().zip(&sel) {
                    prop_assert_eq!(&s.name, name);
                    prop_assert_eq!(&s.namespace, ns);
                    prop_assert_eq!(&s.interface, iface);
                }
            }
            Err(e) => prop_assert!(sel.len() > max, "{}", e),
        }
    }

    /// CNI_ARGS: pairs round-trip, the last of a key wins, unknown keys need IgnoreUnknown, and no
    /// string makes the parser panic.
    #[test]
    fn cni_args(pairs in proptest::collection::vec(("[A-Z_]{1,8}", "[^;=]{0,10}"), 0..6), junk in "[ -~]{0,40}") {
        let _ = CniArgs::parse(&junk);
        let mut text = String::from("IgnoreUnknown=1");
        for (k, v) in &pairs { text += &format!(";{k}={v}"); }
        let a = CniArgs::parse(&text).unwrap();
        prop_assert_eq!(a.to_env_string(), text.clone());
        for (k, _) in &pairs {
            let last = pairs.iter().rev().find(|(k2, _)| k2 == k).map(|(_, v)| v.as_str());
            prop_assert_eq!(a.get(k), last);
        }
        let known = ["K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_UID", "K8S_POD_INFRA_CONTAINER_ID", "IP", "MAC", "GATEWAY", "IgnoreUnknown"];
        let strict = CniArgs::parse(&text.replacen("IgnoreUnknown=1", "IgnoreUnknown=0", 1));
        let all_known = pairs.iter().all(|(k, _)| known.contains(&k.as_str()));
        prop_assert_eq!(strict.is_ok(), all_known);
    }

    /// Allocation from a range set never leaves the range, never hands out the gateway, the network or
    /// (IPv4) the broadcast address, never one address twice, and uses every address before failing.
    #[test]
    fn allocation_stays_inside_and_unique(
        v4 in any::<bool>(),
        base in any::<u128>(),
        host_bits in 2u8..7,
        start_off in 0u128..64,
        len in 0u128..64,
        gw_off in proptest::option::of(0u128..64),
        churn in proptest::collection::vec(any::<u16>(), 0..20),
    ) {
        let max = if v4 { 32 } else { 128 };
        let prefix = max - host_bits;
        let size = 1u128 << host_bits;
        let mask = if v4 { u32::MAX as u128 } else { u128::MAX };
        let net_n = (base & mask) & !(size - 1);
        let mk = |n: u128| if v4 { IpAddr::V4(Ipv4Addr::from(n as u32)) } else { IpAddr::V6(Ipv6Addr::from(n)) };
        let subnet = IpNet::new(mk(net_n), prefix).unwrap();
        let raw = RawRange {
            subnet: Some(subnet.to_string()),
            range_start: Some(mk(net_n + 1 + start_off % (size - 2))),
            range_end: Some(mk(net_n + 1 + (start_off + len) % (size - 2))),
            gateway: gw_off.map(|g| mk(net_n + g % size)),
        };
        let Ok(set) = RangeSet::from_raw(&[raw]) else { return Ok(()); };
        let r = &set.0[0];
        let usable: u128 = to_u128(r.end) - to_u128(r.start) + 1
            - u128::from(r.gateway.is_some_and(|g| r.contains(g)));
        let mut store = MemStore::default();
        let mut got = HashSet::new();
        let sets = vec![set.clone()];
        let mut i = 0;
        while let Ok(ips) = attache::ipam::allocate(&mut store, &sets, &[], &format!("c{i}"), "eth0") {
            let a = ips[0].address.addr();
            prop_assert!(r.contains(a), "{a} outside {}-{}", r.start, r.end);
            prop_assert!(Some(a) != r.gateway, "gateway {a} handed out");
            prop_assert!(a != subnet.network(), "network address {a}");
            prop_assert!(!(v4 && a == subnet.broadcast()), "broadcast {a}");
            prop_assert!(got.insert(a), "{a} twice");
            i += 1;
            prop_assert!(i <= usable as usize);
        }
        prop_assert_eq!(got.len() as u128, usable);
        // Release some, allocate again: still unique and inside.
        for c in &churn {
            let id = format!("c{}", *c as usize % i.max(1));
            for ip in store.release_by_id(&id, "eth0").unwrap() { got.remove(&ip); }
        }
        while let Ok(ips) = attache::ipam::allocate(&mut store, &sets, &[], &format!("n{i}"), "eth0") {
            let a = ips[0].address.addr();
            prop_assert!(r.contains(a) && Some(a) != r.gateway);
            prop_assert!(got.insert(a), "{a} twice after churn");
            i += 1;
        }
        prop_assert_eq!(got.len() as u128, usable);
    }
}
