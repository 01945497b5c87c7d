//! `attache inspect`'s tables: the report's sections, the lines `--gc` asks about, and what it did.

use std::collections::HashSet;

use crate::cli::table::{dash, human_age, plural_es, plural_s, printable, short_id, table};
use crate::engine::audit::{Allocation, GcReport, Judge, Pool, Report, StaleRecord};

/// The human report: each section that has something to show, then the totals.
pub fn report(r: &Report) -> String {
    let mut out = format!(
        "cacheDir {} (from {})\n",
        r.cache_dir.display(),
        r.cache_dir_from
    );
    if r.attachments.is_empty() && r.unreadable_records.is_empty() {
        out.push_str("no attachments\n");
    } else {
        for section in [
            attachments(r),
            pools(r),
            allocations(r),
            cluster_pools(r),
            stale_records(r),
            unreadable_records(r),
        ] {
            out.push_str(&section);
        }
        out.push_str(&totals(r));
    }
    out.push_str(&foreign(r));
    out
}

/// A section: a title line and a table, or nothing when there are no rows.
fn section(title: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    format!("\n{title}\n{}", table(headers, rows))
}

fn attachments(r: &Report) -> String {
    let rows: Vec<Vec<String>> = r
        .attachments
        .iter()
        .map(|a| {
            vec![
                dash(a.pod.as_deref().unwrap_or_default()),
                short_id(&a.container_id),
                a.ifname.clone(),
                a.network.clone(),
                dash(&a.types.join(",")),
                a.run.to_string(),
                dash(&a.ips.join(",")),
                dash(a.mac.as_deref().unwrap_or_default()),
                age(a.age_seconds),
                a.state.clone(),
            ]
        })
        .collect();
    let headers = [
        "POD",
        "CONTAINER",
        "IFACE",
        "NETWORK",
        "TYPE",
        "RUN",
        "IPS",
        "MAC",
        "AGE",
        "STATE",
    ];
    // Shown even without a row, above the unreadable records.
    format!("\nATTACHMENTS\n{}", table(&headers, &rows))
}

fn age(secs: Option<u64>) -> String {
    secs.map(human_age).unwrap_or_else(|| "-".into())
}

/// The host-local pools, with why a shared one is shared and what else is known of each.
fn pools(r: &Report) -> String {
    let n = |v: Option<u128>| v.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
    let rows: Vec<Vec<String>> = r
        .pools
        .iter()
        .map(|p| {
            let ranges: Vec<String> = p.ranges.iter().map(|s| s.join("+")).collect();
            vec![
                p.network.clone(),
                p.owner.to_string(),
                dash(&ranges.join(", ")),
                p.used.to_string(),
                n(p.free),
                p.leaked.to_string(),
                p.unrecorded.to_string(),
                p.data_dir.display().to_string(),
            ]
        })
        .collect();
    let headers = [
        "NETWORK",
        "OWNER",
        "RANGES",
        "USED",
        "FREE",
        "LEAKED",
        "NOT-RECORDED",
        "DATADIR",
    ];
    let mut out = section("HOST-LOCAL POOLS", &headers, &rows);
    for p in &r.pools {
        if !p.shared_by.is_empty() {
            out.push_str(&format!(
                "  {}: shared ({}): addresses attache did not record here may predate it; listed, never released\n",
                p.network,
                p.shared_by.join(", ")
            ));
        }
        for note in &p.notes {
            out.push_str(&format!("  {}: {note}\n", p.network));
        }
    }
    out
}

fn allocations(r: &Report) -> String {
    let rows: Vec<Vec<String>> = r
        .pools
        .iter()
        .flat_map(|p| {
            p.allocations.iter().map(|a| {
                let mut status = a.status.label().to_string();
                if !a.in_ranges {
                    status.push_str(" (outside the ranges)");
                }
                vec![
                    p.network.clone(),
                    a.ip.to_string(),
                    short_id(&a.container_id),
                    dash(&a.ifname),
                    dash(a.pod.as_deref().unwrap_or_default()),
                    status,
                ]
            })
        })
        .collect();
    let headers = ["NETWORK", "IP", "CONTAINER", "IFACE", "POD", "STATUS"];
    section("ALLOCATIONS", &headers, &rows)
}

fn cluster_pools(r: &Report) -> String {
    let rows: Vec<Vec<String>> = r
        .cluster_pools
        .iter()
        .flat_map(|p| {
            p.blocks.iter().map(move |b| {
                vec![
                    p.pool.clone(),
                    p.data_dir.display().to_string(),
                    b.cidr.clone(),
                    b.used.to_string(),
                    b.lent.to_string(),
                    b.free.to_string(),
                ]
            })
        })
        .collect();
    if r.cluster_pools.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\nATTACHE-IPAM POOLS (this node's blocks; `attache ipam inspect` for the cluster)\n{}",
        table(&["POOL", "DATADIR", "BLOCK", "USED", "LENT", "FREE"], &rows)
    );
    for p in &r.cluster_pools {
        if let Some(e) = &p.error {
            out.push_str(&format!("  {}: {e}\n", p.pool));
        }
        for a in &p.not_recorded {
            out.push_str(&format!(
                "  {} {} {}/{} ({}): not recorded in this cacheDir\n",
                p.pool,
                a.ip,
                short_id(&a.container_id),
                dash(&a.ifname),
                a.pod.as_deref().unwrap_or("-")
            ));
        }
    }
    out
}

fn stale_records(r: &Report) -> String {
    let rows: Vec<Vec<String>> = r
        .stale_records
        .iter()
        .map(|s| {
            vec![
                dash(s.pod.as_deref().unwrap_or_default()),
                short_id(&s.container_id),
                s.ifname.clone(),
                s.netns
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "-".into()),
                age(s.age_seconds),
            ]
        })
        .collect();
    let headers = ["POD", "CONTAINER", "IFACE", "NETNS", "AGE"];
    let mut out = section("RECORDS WHOSE NETNS IS GONE", &headers, &rows);
    if !rows.is_empty() {
        out.push_str(
            "  the runtime tears these down (its DEL, or GC when the pod is gone); inspect --gc leaves them\n",
        );
    }
    out
}

fn unreadable_records(r: &Report) -> String {
    let rows: Vec<Vec<String>> = r
        .unreadable_records
        .iter()
        .map(|u| vec![u.record.display().to_string(), u.reason.clone()])
        .collect();
    section("UNREADABLE RECORDS", &["RECORD", "REASON"], &rows)
}

fn totals(r: &Report) -> String {
    let leaked: usize = r.pools.iter().map(|p| p.leaked).sum();
    let unrecorded: usize = r.pools.iter().map(|p| p.unrecorded).sum();
    let records = r
        .attachments
        .iter()
        .map(|a| &a.record)
        .collect::<HashSet<_>>()
        .len();
    format!(
        "\n{} attachment{} in {records} record{}; {} with its netns gone; {leaked} leaked address{}{}; {unrecorded} not recorded by attache in shared pools\n",
        r.attachments.len(),
        plural_s(r.attachments.len()),
        plural_s(records),
        r.stale_records.len(),
        plural_es(leaked),
        match leaked {
            0 => "",
            1 => " (attache inspect --gc releases it)",
            _ => " (attache inspect --gc releases them)",
        },
    )
}

/// The pods' namespaces no record names, one row per interface.
fn foreign(r: &Report) -> String {
    let rows: Vec<Vec<String>> = r
        .foreign
        .iter()
        .flat_map(|f| {
            f.links.iter().map(|l| {
                vec![
                    f.netns.display().to_string(),
                    printable(&l.name),
                    dash(l.kind.as_deref().unwrap_or_default()),
                    dash(&l.addresses.join(",")),
                ]
            })
        })
        .collect();
    section(
        "FOREIGN (pods' network namespaces no record names: attached by another plugin, such as Multus before the node moved to attache, or their record was lost; a DEL of the pod re-plans and tears them down)",
        &["NETNS", "IFACE", "KIND", "IPS"],
        &rows,
    )
}

/// A record `--gc` will tear down.
pub fn orphan_line(r: &StaleRecord) -> String {
    format!(
        "{} container {} {} (netns {} gone, record {} old)",
        r.pod.as_deref().unwrap_or("(no pod)"),
        short_id(&r.container_id),
        r.ifname,
        r.netns
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        r.age_seconds.map(human_age).unwrap_or_else(|| "?".into())
    )
}

/// A leak `--gc` will release.
pub fn leak_line(pool: &Pool, a: &Allocation) -> String {
    format!(
        "{} in {} ({}), held for container {} {}",
        a.ip,
        pool.network,
        pool.data_dir.display(),
        short_id(&a.container_id),
        dash(&a.ifname)
    )
}

/// How it was told that no runtime will DEL a record whose netns is gone.
pub fn judged_by(j: &Judge) -> String {
    match j {
        Judge::Cri(ids, p) => format!(
            "the runtime at {} lists {} sandbox{}",
            p.display(),
            ids.len(),
            plural_es(ids.len())
        ),
        Judge::Age(a) => format!("older than {a}s (--older-than)"),
        Judge::Unknown(why) => {
            format!("{why}, and no --older-than: records whose netns is gone are kept")
        }
    }
}

/// What `--gc` did.
pub fn gc(g: &GcReport, leaks: usize) -> String {
    let mut out = String::from("\nGC\n");
    if !g.confirmed {
        out.push_str("not confirmed: nothing released, nothing torn down\n");
    } else if leaks == 0 {
        out.push_str("nothing leaked: nothing to release\n");
    }
    for r in &g.released {
        out.push_str(&format!(
            "released {} in {} (container {} {})\n",
            r.ip,
            r.network,
            short_id(&r.container_id),
            dash(&r.ifname)
        ));
    }
    for k in &g.kept {
        out.push_str(&format!(
            "kept {} in {}: {}\n",
            k.ip,
            k.network,
            k.reason.as_deref().unwrap_or_default()
        ));
    }
    for e in &g.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    for t in &g.torn_down {
        out.push_str(&format!(
            "tore down {} container {} {}: no runtime will DEL it\n",
            t.pod.as_deref().unwrap_or("(no pod)"),
            short_id(&t.container_id),
            t.ifname
        ));
    }
    if g.stale_records_kept > 0 {
        out.push_str(&format!(
            "{} record{} whose netns is gone left alone ({}): the runtime's DEL or GC tears {} down\n",
            g.stale_records_kept,
            plural_s(g.stale_records_kept),
            g.stale_records_judged_by,
            if g.stale_records_kept == 1 {
                "it"
            } else {
                "them"
            }
        ));
    }
    out
}
