//! `flat`: the same ADD and DEL with node state: 10 000 addresses held in the range, 1 000 meta-plugin
//! records.

use std::net::Ipv4Addr;
use std::path::Path;

use attache::engine::record::{PodRecord, RecordStore};
use serde_json::{Value, json};

use crate::harness::{Model, POD_ARGS, Side, compare, conf, cpu_line, meta_conf};
use crate::pod::networks;
use crate::report::Report;
use crate::{Args, Pods};

/// Node state of the "flat" rows.
pub(crate) const HELD_ADDRESSES: u32 = 10_000;

pub(crate) const HELD_RECORDS: usize = 1_000;

/// `count` addresses of `subnet` held in host-local's store of `network`, from the first after the
/// gateway, with `last_reserved_ip.0` on the last so the next one is free (the format of
/// src/ipam/store.rs, the reference plugin's).
pub(crate) fn hold_addresses(data_dir: &Path, network: &str, subnet: Ipv4Addr, count: u32) {
    let dir = data_dir.join(network);
    std::fs::create_dir_all(&dir).unwrap();
    let first = u32::from(subnet) + 2;
    for k in 0..count {
        let ip = Ipv4Addr::from(first + k);
        std::fs::write(dir.join(ip.to_string()), format!("fill{k}\r\neth0")).unwrap();
    }
    std::fs::write(
        dir.join("last_reserved_ip.0"),
        Ipv4Addr::from(first + count - 1).to_string(),
    )
    .unwrap();
}

/// `count` complete meta-plugin records in `cache_dir` (written by attache's own record store), each
/// a pod with its cluster attachment and its result.
pub(crate) fn hold_records(cache_dir: &Path, cluster: &Value, count: usize) {
    let store = RecordStore::new(cache_dir);
    for k in 0..count {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 230, 0, 2)) + k as u32);
        let rec: PodRecord = serde_json::from_value(json!({
            "kind": attache::engine::record::RECORD_KIND, "network": "attache",
            "containerId": format!("held{k:05}"), "ifname": "eth0",
            "netns": format!("/run/netns/held{k}"),
            "pod": {"namespace": "default", "name": format!("held{k}"), "uid": format!("uid-{k}")},
            "complete": true,
            "attachments": [{"network": cluster["name"], "ifname": "eth0", "driver": "chain",
                "conf": {"cniVersion": "1.0.0", "name": cluster["name"], "plugins": [cluster]},
                "cniArgs": POD_ARGS,
                "result": {"cniVersion": "1.1.0",
                    "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": format!("/run/netns/held{k}")}],
                    "ips": [{"address": format!("{ip}/16"), "gateway": "10.230.0.1", "interface": 0}]}}]
        }))
        .expect("a record of attache's shape");
        store.save(&rec).unwrap();
    }
}

/// Flat with node state: each plugin on an empty node against a node whose range holds 10 000
/// addresses (and, for the meta-plugin, whose cacheDir holds 1 000 records), alternately.
pub(crate) fn flat_rows(a: &Args, pods: &mut Pods, r: &mut Report) {
    let data = a.work.join("ipam-flat");
    let empty_cache = a.work.join("cache-flat-empty");
    let held_cache = a.work.join("cache-flat-held");
    let bridge = |name: &str, subnet: u8| {
        conf(
            "bridge",
            name,
            &format!("brf{subnet}"),
            &format!("10.{subnet}.0.0/16"),
            &data,
            "",
        )
    };
    println!();
    println!(
        "flat with node state: empty node vs {HELD_ADDRESSES} addresses held in the network's /16 (+ {HELD_RECORDS} meta-plugin records in cacheDir)"
    );
    let rows: [(&str, &str, &Path, u8); 3] = [
        ("flat_attache", "attache drop-in bridge", &a.attache, 210),
        (
            "flat_reference",
            "reference bridge (for information)",
            &a.reference_dir.join("bridge"),
            212,
        ),
        (
            "flat_meta",
            "attache meta-plugin, native bridge cluster",
            &a.attache,
            214,
        ),
    ];
    for (key, label, bin, subnet) in rows {
        let (e_name, h_name) = (format!("{key}-e"), format!("{key}-h"));
        let (empty_conf, held_conf) = (bridge(&e_name, subnet), bridge(&h_name, subnet + 1));
        hold_addresses(
            &data,
            &h_name,
            Ipv4Addr::new(10, subnet + 1, 0, 0),
            HELD_ADDRESSES,
        );
        let (empty, held) = if key == "flat_meta" {
            hold_records(&held_cache, &held_conf, HELD_RECORDS);
            let (nets, _) = networks(a);
            (
                Model::one(bin, &meta_conf(empty_conf, &nets, &empty_cache, &[])),
                Model::one(bin, &meta_conf(held_conf, &nets, &held_cache, &[])),
            )
        } else {
            (Model::one(bin, &empty_conf), Model::one(bin, &held_conf))
        };
        let [e, h]: [Side; 2] = compare(a, pods, key, &[&empty, &held], a.rounds)
            .try_into()
            .ok()
            .unwrap();
        println!("  {label}:");
        let ea = r.row(&format!("{key}_empty_add"), "empty node ADD", &e.add);
        let ha = r.row(&format!("{key}_held_add"), "loaded node ADD", &h.add);
        let ed = r.row(&format!("{key}_empty_del"), "empty node DEL", &e.del);
        let hd = r.row(&format!("{key}_held_del"), "loaded node DEL", &h.del);
        cpu_line(r, key, ["empty", "loaded"], [&e, &h]);
        if key == "flat_reference" {
            println!(
                "  ratio loaded/empty (medians): ADD {:.2}x   DEL {:.2}x",
                ha / ea,
                hd / ed
            );
            r.figure("flat_reference_ratio_add", ha / ea);
            r.figure("flat_reference_ratio_del", hd / ed);
        } else {
            r.target(&format!("{label}: ADD loaded/empty"), ha / ea, 1.2, "x");
            r.target(&format!("{label}: DEL loaded/empty"), hd / ed, 1.2, "x");
        }
    }
}
