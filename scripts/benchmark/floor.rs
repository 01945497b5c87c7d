//! `floor`: the kernel's own cost of one bridge attachment, the netlink work done in-process with no
//! exec, configuration or IPAM: the floor under every drop-in row.

use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

use attache::netlink::{Netlink, RouteSpec, VethSpec, random_mac};
use attache::netns::NetNs;

use crate::harness::Series;
use crate::report::Report;
use crate::{Args, Pods};

/// The floor: the same kernel work as one bridge attachment, in-process, no IPAM, no configuration;
/// and eight veths of a pod deleted as one link group against one by one.
pub(crate) async fn floor(a: &Args, pods: &mut Pods, r: &mut Report) -> (f64, f64) {
    let node = Netlink::connect(None).unwrap();
    if node.link("brfloor").await.unwrap().is_none() {
        node.create_bridge("brfloor", None, random_mac().unwrap(), false)
            .await
            .unwrap();
    }
    let br = node.link("brfloor").await.unwrap().unwrap();
    let (mut add, mut del, mut group8, mut one8) = (
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    for round in 0..a.rounds {
        let p = pods.add(format!("{}-floor{round}", a.tag));
        let ns = NetNs::open(Path::new(&p)).unwrap();
        let host = format!("vfl{round}");
        let t = Instant::now();
        let pod = Netlink::connect(Some(&ns)).unwrap();
        node.create_veth(&VethSpec {
            name: &host,
            mac: random_mac().unwrap(),
            up: false,
            peer: "eth0",
            peer_mac: random_mac().unwrap(),
            peer_up: false,
            peer_netns: ns.raw_fd(),
            mtu: None,
            peer_group: None,
        })
        .await
        .unwrap();
        node.set_master_up(&host, br.index, "floor").await.unwrap();
        let l = pod.link("eth0").await.unwrap().unwrap();
        pod.add_addr(l.index, "10.203.0.2/16".parse().unwrap())
            .await
            .unwrap();
        pod.set_up("eth0").await.unwrap();
        pod.add_route(&RouteSpec::via(
            "0.0.0.0/0".parse().unwrap(),
            Some("10.203.0.1".parse::<IpAddr>().unwrap()),
            l.index,
        ))
        .await
        .unwrap();
        add.0.push(t.elapsed());
        let t = Instant::now();
        pod.del_link("eth0").await.unwrap();
        del.0.push(t.elapsed());
    }
    for round in 0..(a.rounds / 4).max(3) {
        for grouped in [true, false] {
            let g = if grouped { "g" } else { "s" };
            let p = pods.add(format!("{}-grp{round}{g}", a.tag));
            let ns = NetNs::open(Path::new(&p)).unwrap();
            let pod = Netlink::connect(Some(&ns)).unwrap();
            for i in 0..8 {
                node.create_veth(&VethSpec {
                    name: &format!("vg{round}{g}{i}"),
                    mac: random_mac().unwrap(),
                    up: true,
                    peer: &format!("net{i}"),
                    peer_mac: random_mac().unwrap(),
                    peer_up: false,
                    peer_netns: ns.raw_fd(),
                    mtu: None,
                    peer_group: None,
                })
                .await
                .unwrap();
                pod.set_group(&format!("net{i}"), 0x6174).await.unwrap();
            }
            let t = Instant::now();
            if grouped {
                pod.del_group(0x6174).await.unwrap();
                group8.0.push(t.elapsed());
            } else {
                for i in 0..8 {
                    pod.del_link(&format!("net{i}")).await.unwrap();
                }
                one8.0.push(t.elapsed());
            }
        }
    }
    println!();
    println!(
        "kernel floor (the same netlink work in-process: no exec, no configuration, no IPAM):"
    );
    let fa = r.row("floor_bridge_add", "bridge attachment ADD", &add);
    let fd = r.row(
        "floor_bridge_del",
        "bridge attachment DEL (veth unregister)",
        &del,
    );
    r.row(
        "floor_8veth_group_del",
        "8 veths deleted as one link group",
        &group8,
    );
    r.row(
        "floor_8veth_one_by_one_del",
        "8 veths deleted one by one",
        &one8,
    );
    (fa, fd)
}
