//! Failpoints: named places, one at each side effect of ADD and DEL, where a test makes attache fail —
//! with an error, or with a panic — to prove that every failure is undone. Compiled in only with the
//! `failpoints` cargo feature (the test build); without it [`point`] is an inline `Ok(())`.
//!
//! `ATTACHE_FAILPOINT=NAME@N:error|panic` fails the N-th time this process reaches NAME (N from 1);
//! `ATTACHE_FAILPOINT_LOG=FILE` appends the name of every point reached, one per line, so a test can
//! enumerate them and check that each one it armed was reached.

use crate::error::Result;

/// Every failpoint, by name. A name here that no test reaches is a test failure.
pub const ALL: &[&str] = &[
    "record.save",
    "record.remove",
    "ipam.reserve",
    "ipam.release",
    "netlink.create_bridge",
    "netlink.create_veth",
    "netlink.create_sublink",
    "netlink.rename",
    "netlink.move_link",
    "netlink.set_master_up",
    "netlink.set_up",
    "netlink.set_promisc",
    "netlink.set_mac",
    "netlink.set_link",
    "netlink.set_bridge_port",
    "netlink.del_link",
    "netlink.del_group",
    "netlink.add_addr",
    "netlink.add_route",
    "netlink.del_route",
    "netlink.add_rule",
    "netlink.del_rule",
    "sysctl",
    "tuning.backup",
    "host_device.state",
    "nft.apply",
    "delegate.exec",
    "k8s.patch_status",
    "k8s.event",
    "k8s.relay",
];

/// attache-ipam's failpoints (on its API paths: integration/clusteripam.rs reaches each of them).
pub const CLUSTER_IPAM: &[&str] = &[
    "ipam.pool.register",
    "ipam.block.create",
    "ipam.block.created",
    "ipam.block.release",
    "ipam.grant.create",
    "ipam.grant.wait",
    "ipam.reconcile.listed",
];

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn point(_name: &'static str) -> Result<()> {
    Ok(())
}

#[cfg(feature = "failpoints")]
pub fn point(name: &'static str) -> Result<()> {
    use std::io::Write;
    use std::sync::Mutex;
    static HITS: Mutex<Vec<(&'static str, u32)>> = Mutex::new(Vec::new());
    debug_assert!(
        ALL.contains(&name) || CLUSTER_IPAM.contains(&name),
        "failpoint {name} is not in fail::ALL or fail::CLUSTER_IPAM"
    );
    if let Some(log) = std::env::var_os("ATTACHE_FAILPOINT_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    {
        let _ = writeln!(f, "{name}");
    }
    let Ok(spec) = std::env::var("ATTACHE_FAILPOINT") else {
        return Ok(());
    };
    let Some((target, mode)) = spec.split_once(':') else {
        return Ok(());
    };
    let (target, nth) = match target.split_once('@') {
        Some((t, n)) => (t, n.parse().unwrap_or(1)),
        None => (target, 1),
    };
    if target != name {
        return Ok(());
    }
    let hit = {
        let mut hits = HITS.lock().unwrap_or_else(|e| e.into_inner());
        match hits.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => {
                *c += 1;
                *c
            }
            None => {
                hits.push((name, 1));
                1
            }
        }
    };
    if hit != nth {
        return Ok(());
    }
    match mode {
        "panic" => panic!("failpoint {name}@{nth}"),
        _ => Err(crate::error::Error::Internal(format!(
            "failpoint {name}@{nth}"
        ))),
    }
}

/// The error a caught panic becomes.
pub fn panic_error(panic: Box<dyn std::any::Any + Send>) -> crate::error::Error {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    crate::error::Error::Internal(format!("internal error (a bug in attache): {what}"))
}

/// Run a future, turning a panic inside it into an error, so that whoever awaits it can undo what was
/// done before (a panic must never skip a rollback).
pub async fn guarded<T>(fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .unwrap_or_else(|p| Err(panic_error(p)))
}

/// [`guarded`] for a synchronous step.
pub fn guarded_now<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(panic_error(p)))
}
