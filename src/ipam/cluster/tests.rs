use serde_json::json;

use super::*;
use crate::ipam::Ipam;

fn parse(ipam: Value, cni_args: &str) -> Result<ClusterIpam> {
    let mut ipam = ipam;
    ipam["type"] = json!(TYPE);
    if ipam.get("nodeName").is_none() {
        ipam["nodeName"] = json!("worker-1");
    }
    let conf = NetConf::from_value(
        json!({"cniVersion": "1.0.0", "name": "n", "type": "macvlan", "ipam": ipam}),
    )
    .unwrap();
    match Ipam::from_conf(&conf, &crate::testutil::cmd_args(cni_args))? {
        Ipam::Cluster(c) => Ok(*c),
        other => panic!("not attache-ipam: {other:?}"),
    }
}

fn ip(s: &str) -> u128 {
    to_u128(s.parse().unwrap())
}

#[test]
fn whereabouts_fields_and_defaults() {
    let c = parse(json!({"range": "10.20.0.0/16"}), "").unwrap();
    assert_eq!(c.pool, "default");
    assert_eq!(c.layout.prefix, 26);
    assert_eq!(
        (c.layout.lo, c.layout.hi),
        (ip("10.20.0.0"), ip("10.20.255.255"))
    );
    // The network and broadcast addresses are holes; no gateway is assumed (Whereabouts has none).
    assert_eq!(
        c.holes,
        vec![
            (ip("10.20.0.0"), ip("10.20.0.0")),
            (ip("10.20.255.255"), ip("10.20.255.255"))
        ]
    );
    assert_eq!(c.gateway, None);
    assert_eq!(c.data_dir, Path::new(DEFAULT_DATA_DIR));

    // A CIDR with host bits starts the window there; first-last/prefix gives both ends.
    let c = parse(json!({"range": "10.20.0.100/24"}), "").unwrap();
    assert_eq!(c.layout.range.to_string(), "10.20.0.0/24");
    assert_eq!(c.layout.lo, ip("10.20.0.100"));
    let c = parse(
        json!({"range": "10.20.0.10-10.20.0.90/24", "exclude": ["10.20.0.16/28"],
                         "gateway": "10.20.0.1", "network_name": "blue", "node_slice_size": "/28"}),
        "",
    )
    .unwrap();
    assert_eq!(
        (c.layout.lo, c.layout.hi),
        (ip("10.20.0.10"), ip("10.20.0.90"))
    );
    assert_eq!(c.layout.prefix, 28);
    assert_eq!(c.pool, "blue");
    assert!(c.holes.contains(&(ip("10.20.0.16"), ip("10.20.0.31"))));
    assert!(c.holes.contains(&(ip("10.20.0.1"), ip("10.20.0.1"))));
    // A range smaller than a block is one block; v6 defaults to /122.
    assert_eq!(
        parse(json!({"range": "10.9.0.0/28"}), "")
            .unwrap()
            .layout
            .prefix,
        28
    );
    assert_eq!(
        parse(json!({"range": "fd00::/64"}), "")
            .unwrap()
            .layout
            .prefix,
        122
    );
    // A requested address rides along.
    let c = parse(json!({"range": "10.20.0.0/24"}), "IP=10.20.0.7").unwrap();
    assert_eq!(c.requested, vec!["10.20.0.7".parse::<IpAddr>().unwrap()]);
    let c = parse(
        json!({"range": "10.20.0.0/24"}),
        "K8S_POD_UID=u-1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p",
    )
    .unwrap();
    assert_eq!(
        c.pod,
        PodRef {
            uid: "u-1".into(),
            namespace: "ns".into(),
            name: "p".into()
        }
    );
}

#[test]
fn bad_configurations_are_refused_with_code_7() {
    for (ipam, args, needle) in [
        (json!({}), "", "range is required"),
        (json!({"range": "10.20.0.0"}), "", "neither a CIDR"),
        (json!({"range": "10.20.0.0/31"}), "", "too small"),
        (
            json!({"range": "10.20.0.0/24", "blockSize": 33}),
            "",
            "blockSize 33",
        ),
        (
            json!({"range": "10.20.0.0/24", "blockSize": 26, "node_slice_size": "/27"}),
            "",
            "disagree",
        ),
        (
            json!({"range": "10.20.0.0/24", "node_slice_size": "big"}),
            "",
            "node_slice_size",
        ),
        (
            json!({"range": "10.20.0.0/24", "range_start": "10.21.0.1"}),
            "",
            "not in range",
        ),
        (
            json!({"range": "10.20.0.0/24", "range_start": "10.20.0.9", "range_end": "10.20.0.8"}),
            "",
            "after",
        ),
        (
            json!({"range": "10.20.0.0/24", "exclude": ["x"]}),
            "",
            "exclude",
        ),
        (
            json!({"range": "10.20.0.0/24", "exclude": ["fd00::/64"]}),
            "",
            "family",
        ),
        (
            json!({"range": "10.20.0.0/24", "gateway": "10.20.1.1"}),
            "",
            "gateway",
        ),
        (
            json!({"range": "10.20.0.0/24", "network_name": "Blue_1"}),
            "",
            "network_name",
        ),
        (
            json!({"range": "10.20.0.0/24", "nodeName": "Worker_1"}),
            "",
            "node name",
        ),
        (
            json!({"range": "10.20.0.0/24", "dataDir": "rel"}),
            "",
            "absolute",
        ),
        (
            json!({"range": "10.20.0.0/24", "apiTimeout": 0}),
            "",
            "apiTimeout",
        ),
        (
            json!({"range": "10.20.0.0/24", "ipRanges": []}),
            "",
            "ipRanges",
        ),
        (
            json!({"range": "10.20.0.0/24", "gateway": "10.20.0.1"}),
            "IP=10.20.0.1",
            "excluded",
        ),
        (
            json!({"range": "10.20.0.0/24"}),
            "IP=10.21.0.1",
            "not in range",
        ),
        (
            json!({"range": "10.20.0.0/24"}),
            "IP=10.20.0.5,10.20.0.6",
            "one address",
        ),
    ] {
        let e = parse(ipam.clone(), args).unwrap_err();
        assert_eq!(e.cni_code(), 7, "{ipam}: {e}");
        assert!(
            e.to_string().contains(needle),
            "{ipam}: {e} (wanted {needle:?})"
        );
    }
}

#[test]
fn teardown_needs_only_the_folder() {
    let t = Teardown::from_section("n", json!({"type": TYPE}).as_object().unwrap()).unwrap();
    assert!(t.layout.is_none());
    assert_eq!(
        t.local.dir(),
        Path::new(DEFAULT_DATA_DIR).join(DEFAULT_POOL)
    );
    let t = Teardown::from_section(
        "n",
        json!({"range": "10.20.0.0/16", "blockSize": 24, "network_name": "blue", "dataDir": "/d"})
            .as_object()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(t.layout.unwrap().prefix, 24);
    assert_eq!(t.local.dir(), Path::new("/d/blue"));
    assert!(Teardown::from_section("n", json!({"dataDir": "rel"}).as_object().unwrap()).is_none());
}

/// The warm path against pre-seeded local blocks: no API (none is configured that could answer).
#[test]
fn owned_blocks_hand_out_lowest_first_and_skip_holes() {
    let dir = crate::testutil::tempdir("cluster-ipam");
    let c = parse(
        json!({"range": "10.20.0.0/24", "blockSize": 28, "dataDir": dir,
               "gateway": "10.20.0.1", "exclude": ["10.20.0.16/29"]}),
        "K8S_POD_UID=u1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p",
    )
    .unwrap();
    let local = c.local();
    assert_eq!(local.allocate(&c, "c0", "eth0").unwrap(), None);
    for cidr in ["10.20.0.16/28", "10.20.0.0/28"] {
        let b = block::Block::of(cidr.parse().unwrap());
        let owned = local::Owned {
            name: format!("default-{}", b.dir_name()),
            uid: "u".into(),
            cidr: cidr.into(),
            range: "10.20.0.0/24".into(),
        };
        local.adopt(&b, &owned).unwrap();
    }
    let mut got = Vec::new();
    for k in 0..25 {
        match local.allocate(&c, &format!("c{k}"), "eth0").unwrap() {
            Some(ip) => got.push(ip.to_string()),
            None => break,
        }
    }
    // .0 (network) and .1 (gateway) never; .16-.23 excluded: 14 + 8 addresses in all.
    assert_eq!(got.len(), 14 + 8, "{got:?}");
    assert_eq!(got[0], "10.20.0.2");
    assert_eq!(got[14], "10.20.0.24");
    assert!(!got.iter().any(|a| a == "10.20.0.1" || a == "10.20.0.16"));
    // The pod rides in the IP file after the holder (for reconcile), the holder parses as host-local's.
    let res = local.reservations().unwrap();
    let first = res
        .iter()
        .find(|r| r.ip.to_string() == "10.20.0.2")
        .unwrap();
    assert_eq!((first.id.as_str(), first.ifname.as_str()), ("c0", "eth0"));
    assert_eq!((first.pod_uid.as_str(), first.pod.as_str()), ("u1", "ns/p"));
    // A duplicate ADD is refused; DEL by the named address goes straight to its block.
    let e = local.allocate(&c, "c0", "eth0").unwrap_err();
    assert!(e.to_string().contains("duplicate"), "{e}");
    let t = Teardown::of(&c);
    assert_eq!(
        t.del("c0", "eth0", &["10.20.0.2".parse().unwrap()])
            .unwrap()
            .len(),
        1
    );
    assert!(t.held("c0", "eth0").unwrap().is_empty());
    // A block given back (its owned record removed under its lock) is never allocated from.
    let b = block::Block::of("10.20.0.0/28".parse().unwrap());
    assert!(
        !local.disown_if_empty(&b).unwrap(),
        "the block still holds addresses"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(n))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever the range, block size, window, exclusions and gateway: every address handed out lies
        /// in the window, in no hole, once; and every allowed address of the owned blocks is handed out.
        #[test]
        fn allocation_stays_in_the_window_and_never_repeats(
            prefix in 24u8..=29,
            extra_bits in 0u8..=3,
            lo_off in 0u32..64,
            hi_cut in 0u32..64,
            excludes in proptest::collection::vec((0u32..256, 28u8..=32), 0..3),
            gw in proptest::option::of(0u32..256),
        ) {
            let base: u32 = u32::from(std::net::Ipv4Addr::new(10, 77, 0, 0));
            let size = 1u32 << (32 - prefix);
            let block = (prefix + extra_bits).min(30);
            let lo = base + (lo_off % size);
            let hi = (base + size - 1 - (hi_cut % size)).max(lo);
            let mut ipam = json!({"range": format!("{}/{prefix}", v4(base)), "blockSize": block,
                                  "range_start": v4(lo).to_string(), "range_end": v4(hi).to_string()});
            let ex: Vec<String> = excludes
                .iter()
                .map(|(off, p)| {
                    let net = IpNet::new(v4(base + off % size), *p).unwrap().trunc();
                    net.to_string()
                })
                .collect();
            ipam["exclude"] = json!(ex);
            if let Some(g) = gw {
                ipam["gateway"] = json!(v4(base + g % size).to_string());
            }
            let dir = crate::testutil::tempdir("cluster-prop");
            ipam["dataDir"] = json!(dir);
            let c = parse(ipam, "").unwrap();
            let local = c.local();
            for i in 0..c.layout.count() {
                let b = c.layout.nth(i);
                let owned = local::Owned {
                    name: format!("default-{}", b.dir_name()),
                    uid: "u".into(),
                    cidr: b.net().to_string(),
                    range: c.layout.range.to_string(),
                };
                local.adopt(&b, &owned).unwrap();
            }
            let allowed: std::collections::BTreeSet<u128> = (to_u128(v4(lo))..=to_u128(v4(hi)))
                .filter(|n| !c.holes.iter().any(|(s, e)| (s..=e).contains(&n)))
                .collect();
            let mut got = std::collections::BTreeSet::new();
            let mut k = 0;
            while let Some(ip) = local.allocate(&c, &format!("c{k}"), "eth0").unwrap() {
                let n = to_u128(ip);
                prop_assert!(allowed.contains(&n), "{ip} is not allowed");
                prop_assert!(got.insert(n), "{ip} twice");
                k += 1;
                prop_assert!(k <= 256);
            }
            prop_assert_eq!(got, allowed);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
