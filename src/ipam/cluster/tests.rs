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

/// Claim, borrow and registration races against the in-memory API (`fake`): each interleaving a real
/// server would allow, played out exactly.
mod races {
    use super::super::api::{BlockObj, ClusterApi, PoolRange, Written};
    use super::super::claim::{Claimed, claim_block};
    use super::super::fake::FakeApi;
    use super::super::local::Local;
    use super::*;

    /// A node's configuration of `range` in a data dir of its own under `d`.
    fn node(d: &Path, name: &str, range: &str, extra: Value) -> (ClusterIpam, Local) {
        let mut ipam = json!({"range": range, "blockSize": 26, "nodeName": name,
                              "dataDir": d.join(name)});
        for (k, v) in extra.as_object().unwrap() {
            ipam[k] = v.clone();
        }
        let c = parse(ipam, "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u-1").unwrap();
        let local = Local::new(&c.data_dir, &c.pool);
        (c, local)
    }

    fn api(nodes: &[&str]) -> FakeApi {
        let api = FakeApi::default();
        for n in nodes {
            api.0.borrow_mut().add_node(n);
        }
        api
    }

    fn claim(api: &FakeApi, c: &ClusterIpam, local: &Local) -> Result<Claimed> {
        crate::testutil::rt().block_on(claim_block(c, local, api, "c1", "net1"))
    }

    /// The blocks the API has, as `cidr node`.
    fn blocks(api: &FakeApi) -> Vec<String> {
        let mut v: Vec<String> = api
            .0
            .borrow()
            .blocks
            .values()
            .map(|b| format!("{} {}", b.cidr, b.node))
            .collect();
        v.sort();
        v
    }

    fn writes(api: &FakeApi, what: &str) -> usize {
        api.0.borrow().writes.iter().filter(|w| *w == what).count()
    }

    #[test]
    fn two_nodes_share_a_range_block_by_block_and_never_the_same_one() {
        let d = crate::testutil::tempdir("races-share");
        let api = api(&["worker-1", "worker-2"]);
        let no_borrow = json!({"borrow": false});
        let (c1, l1) = node(&d, "worker-1", "10.20.0.0/24", no_borrow.clone());
        let (c2, l2) = node(&d, "worker-2", "10.20.0.0/24", no_borrow);
        for _ in 0..2 {
            assert!(matches!(claim(&api, &c1, &l1), Ok(Claimed::Block)));
            assert!(matches!(claim(&api, &c2, &l2), Ok(Claimed::Block)));
        }
        let all = blocks(&api);
        assert_eq!(all.len(), 4, "{all:?}");
        for n in ["worker-1", "worker-2"] {
            assert_eq!(all.iter().filter(|b| b.ends_with(n)).count(), 2, "{all:?}");
        }
        assert_eq!(l1.owned().unwrap().len(), 2);
        assert_eq!(
            writes(&api, "create addressblocks"),
            4,
            "one write per block"
        );
        assert_eq!(
            writes(&api, "create addresspools"),
            1,
            "the range registered once"
        );
        // The range is full: said so, and nothing is written.
        let e = claim(&api, &c1, &l1).err().unwrap();
        assert!(e.to_string().contains("is full"), "{e}");
        assert_eq!(writes(&api, "create addressblocks"), 4);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_block_lost_to_a_rival_between_list_and_create_costs_one_conflict() {
        let d = crate::testutil::tempdir("races-lost");
        let api = api(&["worker-1", "worker-9"]);
        let (c, local) = node(&d, "worker-1", "10.20.0.0/24", json!({}));
        // worker-9's create of the very block worker-1 goes for lands first.
        let mut fired = false;
        api.0.borrow_mut().before_create_block = Some(Box::new(move |s, b: &BlockObj| {
            if !fired {
                fired = true;
                let rival = BlockObj {
                    node: "worker-9".into(),
                    instance: "other".into(),
                    uid: "uid-rival".into(),
                    ..b.clone()
                };
                s.blocks.insert(b.name.clone(), rival);
            }
        }));
        assert!(matches!(claim(&api, &c, &local), Ok(Claimed::Block)));
        let all = blocks(&api);
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(
            writes(&api, "create addressblocks"),
            1,
            "one lost create, one that landed"
        );
        assert!(all.iter().any(|b| b.ends_with("worker-9")), "{all:?}");
        let mine: Vec<_> = all.iter().filter(|b| b.ends_with("worker-1")).collect();
        assert_eq!(mine.len(), 1, "{all:?}");
        assert_eq!(
            local.owned().unwrap()[0].net().to_string(),
            mine[0].split(' ').next().unwrap(),
            "the block it won, not the one it lost"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_create_whose_answer_was_lost_is_adopted_not_made_twice() {
        let d = crate::testutil::tempdir("races-answer");
        let api = api(&["worker-1"]);
        let (c, local) = node(&d, "worker-1", "10.20.0.0/24", json!({}));
        api.0.borrow_mut().lose_create_answer = true;
        let e = claim(&api, &c, &local).err().unwrap();
        assert_eq!(e.cni_code(), 11, "try again: {e}");
        assert!(local.owned().unwrap().is_empty());
        // The retry finds the block it made and takes it, with no second create.
        assert!(matches!(claim(&api, &c, &local), Ok(Claimed::Block)));
        assert_eq!(local.owned().unwrap().len(), 1);
        assert_eq!(writes(&api, "create addressblocks"), 1);
        assert_eq!(blocks(&api).len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_range_that_overlaps_another_of_its_pool_is_refused() {
        let d = crate::testutil::tempdir("races-overlap");
        let api = api(&["worker-1"]);
        let ranges = [PoolRange {
            range: "10.20.0.0/16".into(),
            block_size: 26,
        }];
        let rt = crate::testutil::rt();
        assert!(matches!(
            rt.block_on(api.create_pool("default", &ranges)).unwrap(),
            Written::Done(_)
        ));
        let (c, local) = node(&d, "worker-1", "10.20.5.0/24", json!({}));
        let e = claim(&api, &c, &local).err().unwrap();
        assert_eq!(e.cni_code(), 7, "{e}");
        assert!(e.to_string().contains("10.20.0.0/16"), "{e}");
        assert!(blocks(&api).is_empty());
        // The same range with another block size is refused too.
        let (c, local) = node(&d, "worker-1", "10.20.0.0/16", json!({"blockSize": 24}));
        assert_eq!(claim(&api, &c, &local).err().unwrap().cni_code(), 7);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_full_range_lends_an_address_of_another_nodes_block() {
        let d = crate::testutil::tempdir("races-borrow");
        let api = api(&["worker-1", "worker-2"]);
        // One block in the range, worker-2's.
        let (c2, l2) = node(&d, "worker-2", "10.20.0.0/26", json!({}));
        assert!(matches!(claim(&api, &c2, &l2), Ok(Claimed::Block)));
        let (c1, l1) = node(&d, "worker-1", "10.20.0.0/26", json!({}));
        // Nobody answers: no address, and the grant asked for is gone again.
        let e = crate::testutil::rt()
            .block_on(async {
                tokio::time::pause();
                claim_block(&c1, &l1, &api, "c1", "net1").await
            })
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("no other node lent an address"),
            "{e}"
        );
        assert!(
            api.0.borrow().grants.is_empty(),
            "the unanswered grant is deleted"
        );
        // A lender that answers: the first address of its block's window (not the network address).
        api.0.borrow_mut().lend = true;
        let got = claim(&api, &c1, &l1).unwrap();
        let Claimed::Borrowed(ip) = got else {
            panic!("not borrowed")
        };
        assert_eq!(ip.to_string(), "10.20.0.1");
        let s = api.0.borrow();
        let g = s.grants.values().next().unwrap();
        assert_eq!(
            (
                g.lender.as_str(),
                g.holder_node.as_str(),
                g.container_id.as_str(),
                g.pod_uid.as_str()
            ),
            ("worker-2", "worker-1", "c1", "u-1")
        );
        assert_eq!(blocks(&api).len(), 1, "no block was made for it");
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn options(d: &Path, node: &str) -> super::super::reconcile::Options {
        super::super::reconcile::Options {
            keep_blocks: 1,
            data_dir: d.join(node),
            node: node.into(),
            kubeconfig: None,
            api_timeout: std::time::Duration::from_secs(1),
            grace: std::time::Duration::ZERO,
            node_grace: std::time::Duration::from_secs(3600),
        }
    }

    #[test]
    fn reconcile_releases_a_gone_pods_address_but_trusts_a_get_over_a_stale_list() {
        let d = crate::testutil::tempdir("races-reconcile");
        let api = api(&["worker-1"]);
        let (c, local) = node(&d, "worker-1", "10.20.0.0/24", json!({}));
        assert!(matches!(claim(&api, &c, &local), Ok(Claimed::Block)));
        let ip = local.allocate(&c, "c1", "net1").unwrap().unwrap();
        let rt = crate::testutil::rt();
        let reconcile = |api: &FakeApi| {
            let mut api = api.clone();
            rt.block_on(super::super::reconcile::reconcile_with(
                &options(&d, "worker-1"),
                &mut api,
            ))
            .unwrap()
        };
        // The pod exists, but the list of the node's pods does not show it (it names another node):
        // the GET that follows says it is there, so its address stays.
        api.0.borrow_mut().add_pod("ns", "p", "u-1", "worker-7");
        let r = reconcile(&api);
        assert_eq!((r.released.len(), r.confirmed_alive), (0, 1), "{r:?}");
        assert_eq!(local.held("c1", "net1", None).unwrap(), vec![ip]);
        // Gone from the API: released, and only that.
        api.0.borrow_mut().pods.clear();
        let r = reconcile(&api);
        assert_eq!(r.released.len(), 1, "{r:?}");
        assert_eq!(
            (r.released[0].ip.as_str(), r.released[0].pod_uid.as_str()),
            (ip.to_string().as_str(), "u-1")
        );
        assert!(local.held("c1", "net1", None).unwrap().is_empty());
        // The block's object replaced under it (reclaimed while the node was away): no longer used.
        let name = api.0.borrow().blocks.keys().next().unwrap().clone();
        api.0.borrow_mut().blocks.get_mut(&name).unwrap().uid = "uid-someone-else".into();
        let r = reconcile(&api);
        assert_eq!(r.blocks_lost, vec![name], "{r:?}");
        assert!(local.owned().unwrap().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
