//! host-local IPAM: one address per range set from `<dataDir>/<network>`, the reference plugin's way
//! and in its on-disk format ([`store`]), so both can share a node. `range` reads and walks the range
//! sets; `store` keeps the reservations, `index` attache's index of them.

pub mod index;
pub mod range;
pub mod store;

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::cni::spec::{CniResult, Dns, IpConfig, Route};
use crate::error::{Error, Result};
use range::RangeSet;
use store::{DiskStore, Store};

#[derive(Clone, Debug)]
pub struct HostLocal {
    pub network: String,
    pub data_dir: PathBuf,
    pub range_sets: Vec<RangeSet>,
    pub requested: Vec<IpAddr>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl HostLocal {
    fn store(&self) -> Result<DiskStore> {
        let mut s = DiskStore::open(&self.data_dir, &self.network)?;
        s.watch_sets(self.range_sets.len());
        Ok(s)
    }

    pub fn add(&self, id: &str, ifname: &str) -> Result<CniResult> {
        let mut store = self.store()?;
        let ips = allocate(&mut store, &self.range_sets, &self.requested, id, ifname)?;
        Ok(CniResult {
            interfaces: vec![],
            ips,
            routes: self.routes.clone(),
            dns: self.dns.clone(),
        })
    }

    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        if !self.data_dir.join(&self.network).exists() {
            return Ok(vec![]);
        }
        self.store()?.release_by_id(id, ifname)
    }

    /// DEL: release what `(id, ifname)` holds, knowing the addresses `named` (`prevResult`'s) without
    /// reading the whole folder when that can be shown complete; returns what was released.
    ///
    /// A named address is released when its file names this holder (the owner rule of a search: the
    /// ID matches, the interface matches or is empty). What the holder has may go beyond what is named
    /// — a later chain plugin may have edited the result, the configuration may have changed since ADD,
    /// a runtime may have ADDed twice with requested addresses — so the named files alone settle it
    /// only where host-local's invariant does: an ADD reserves at most one address per range set, and a
    /// second ADD without a requested address is refused while one is held in the set. So:
    /// - if the index is current, it names every address the holder has (see [`store`]): those
    ///   and the named ones are released, and that is all of them;
    /// - else if every range set of this configuration holds a named address of this holder, the
    ///   holder has nothing else in them (one per set), and nothing outside them but through a changed
    ///   configuration or a repeated ADD — which the reference's own DEL is no better at: its search
    ///   finds them, so without the index this is where attache reads less than the reference;
    /// - else (no prevResult, no readable ranges, a named address already gone or held by someone else,
    ///   the index contradicted) the whole folder is read, as the reference does.
    pub fn release_named(&self, id: &str, ifname: &str, named: &[IpAddr]) -> Result<Vec<IpAddr>> {
        if !self.data_dir.join(&self.network).exists() {
            return Ok(vec![]);
        }
        let mut store = self.store()?;
        let mut named = named.to_vec();
        named.sort();
        named.dedup();
        let mut mine = Vec::new();
        let mut clear = true;
        for ip in &named {
            match store.holder(*ip)? {
                Some((i, f)) if i == id && (f == ifname || f.is_empty()) => mine.push((*ip, i, f)),
                Some(_) => clear = false,
                None => {}
            }
        }
        let covered = !self.range_sets.is_empty()
            && self
                .range_sets
                .iter()
                .all(|s| mine.iter().any(|h| s.range_for(h.0).is_some()));
        let indexed = if clear {
            store.indexed_holdings(id, ifname)?
        } else {
            None
        };
        let release = match indexed {
            // The index must know what the files say is this holder's, or it is not current.
            Some(held) if mine.iter().all(|m| held.contains(m)) => held,
            Some(_) => store.scan_by_id(id, ifname)?,
            None if clear && covered => mine,
            None => store.scan_by_id(id, ifname)?,
        };
        let mut out = Vec::new();
        for (ip, i, f) in release {
            store.release_held(ip, i, f)?;
            out.push(ip);
        }
        Ok(out)
    }

    pub fn held(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        if !self.data_dir.join(&self.network).exists() {
            return Ok(vec![]);
        }
        self.store()?.get_by_id(id, ifname)
    }

    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<IpAddr>> {
        if !self.data_dir.join(&self.network).exists() {
            return Ok(vec![]);
        }
        let mut store = self.store()?;
        let mut released = Vec::new();
        for (ip, id, ifname) in store.all()? {
            let keep = valid
                .iter()
                .any(|(v_id, v_if)| *v_id == id && (*v_if == ifname || ifname.is_empty()));
            if !keep {
                store.release(ip)?;
                released.push(ip);
            }
        }
        Ok(released)
    }
}

/// One address per range set, under the store's lock, the reference plugin's way: a requested address
/// must lie in a range and not be its gateway; otherwise a container may hold one address per set; the
/// search starts after the last address reserved. Everything is released again if any set fails.
pub fn allocate(
    store: &mut dyn Store,
    sets: &[RangeSet],
    requested: &[IpAddr],
    id: &str,
    ifname: &str,
) -> Result<Vec<IpConfig>> {
    let mut out = Vec::new();
    let mut remaining: Vec<IpAddr> = requested.to_vec();
    let mut held: Option<Vec<IpAddr>> = None;
    let result = (|| -> Result<()> {
        for (idx, set) in sets.iter().enumerate() {
            let want = remaining
                .iter()
                .position(|ip| set.range_for(*ip).is_some())
                .map(|i| remaining.remove(i));
            let (ip, r) = match want {
                Some(ip) => {
                    let r = set.range_for(ip).expect("checked above");
                    if r.gateway == Some(ip) {
                        return Err(Error::Ipam(format!(
                            "requested IP {ip} is the subnet's gateway"
                        )));
                    }
                    if !store.reserve(id, ifname, ip, idx)? {
                        return Err(Error::Ipam(format!(
                            "requested IP address {ip} is not available in range set {idx}"
                        )));
                    }
                    (ip, r)
                }
                None => {
                    // Asked once per call: what this call reserved lies in earlier sets, never in
                    // this one (range sets do not overlap).
                    let held = match &held {
                        Some(h) => h,
                        None => held.insert(store.get_by_id(id, ifname)?),
                    };
                    if let Some(have) = held.iter().find(|ip| set.range_for(**ip).is_some()) {
                        return Err(Error::Ipam(format!(
                            "{have} has been allocated to {id}, duplicate allocation is not allowed"
                        )));
                    }
                    let last = store.last_reserved(idx)?;
                    let mut got = None;
                    for (ip, r) in set.candidates(last) {
                        if store.reserve(id, ifname, ip, idx)? {
                            got = Some((ip, r));
                            break;
                        }
                    }
                    got.ok_or_else(|| {
                        let ranges: Vec<String> = set
                            .0
                            .iter()
                            .map(|r| format!("{}-{}", r.start, r.end))
                            .collect();
                        Error::Ipam(format!(
                            "no IP addresses available in range set: {}",
                            ranges.join(",")
                        ))
                    })?
                }
            };
            out.push(IpConfig {
                interface: None,
                address: IpNet::new(ip, r.subnet.prefix_len())
                    .expect("prefix comes from a valid subnet"),
                gateway: r.gateway,
            });
        }
        if !remaining.is_empty() {
            let list: Vec<String> = remaining.iter().map(|i| i.to_string()).collect();
            return Err(Error::Ipam(format!(
                "failed to allocate all requested IPs: {} (not in any range)",
                list.join(", ")
            )));
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(out),
        Err(e) => {
            for ip in &out {
                let _ = store.release(ip.address.addr());
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::range::RawRange;
    use super::store::MemStore;
    use super::*;

    fn set(subnet: &str) -> RangeSet {
        RangeSet::from_raw(&[RawRange {
            subnet: Some(subnet.into()),
            ..Default::default()
        }])
        .unwrap()
    }

    /// A host-local on disk with an IPv4 and an IPv6 set.
    fn on_disk(tag: &str) -> HostLocal {
        let data_dir =
            std::env::temp_dir().join(format!("attache-hl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        HostLocal {
            network: "net".into(),
            data_dir,
            range_sets: vec![set("10.0.0.0/24"), set("fd00::/64")],
            requested: vec![],
            routes: vec![],
            dns: Dns::default(),
        }
    }

    fn ips(r: &CniResult) -> Vec<IpAddr> {
        r.ips.iter().map(|i| i.address.addr()).collect()
    }

    /// Whether the index is current: after a release, whether that release read the whole folder
    /// (a full read rebuilds the index; the named files alone leave a stale one stale).
    fn index_current(h: &HostLocal) -> bool {
        h.data_dir.join(".attache/net.index/stamp").exists()
    }

    fn make_stale(h: &HostLocal) {
        std::fs::remove_file(h.data_dir.join(".attache/net.index/stamp")).unwrap();
    }

    #[test]
    fn del_releases_by_the_named_addresses() {
        let h = on_disk("named");
        let a = ips(&h.add("c1", "eth0").unwrap());
        let b = ips(&h.add("c2", "eth0").unwrap());
        assert!(index_current(&h));
        // Index stale, every set named: released without a full read.
        make_stale(&h);
        assert_eq!(h.release_named("c1", "eth0", &a).unwrap(), a);
        assert!(!index_current(&h), "no full read");
        assert!(h.held("c1", "eth0").unwrap().is_empty());
        // Again (a retried DEL): the named files are gone, the index (rebuilt by `held`) says nothing.
        assert!(h.release_named("c1", "eth0", &a).unwrap().is_empty());
        // A named address held by someone else is never released, and the folder is read.
        let c = ips(&h.add("c3", "eth0").unwrap());
        make_stale(&h);
        let named = vec![b[0], c[1]];
        assert_eq!(h.release_named("c3", "eth0", &named).unwrap(), c);
        assert!(index_current(&h), "a full read");
        assert_eq!(h.held("c2", "eth0").unwrap(), b);
        // Only one set named, index stale: the folder is read, both are released.
        make_stale(&h);
        assert_eq!(h.release_named("c2", "eth0", &b[..1]).unwrap(), b);
        assert!(index_current(&h));
        // No prevResult, index current: the index answers.
        let d = ips(&h.add("c4", "eth0").unwrap());
        assert_eq!(h.release_named("c4", "eth0", &[]).unwrap(), d);
        assert!(index_current(&h));
        assert!(h.held("c4", "eth0").unwrap().is_empty());
        // What the index knows beyond what is named goes too (a requested address of a second ADD).
        let e = ips(&h.add("c5", "eth0").unwrap());
        let mut again = h.clone();
        again.range_sets.truncate(1);
        again.requested = vec!["10.0.0.200".parse().unwrap()];
        let f = ips(&again.add("c5", "eth0").unwrap());
        let mut all = h.release_named("c5", "eth0", &e).unwrap();
        all.sort();
        let mut want = [e, f].concat();
        want.sort();
        assert_eq!(all, want);
        assert!(
            crate::ipam::host_local::store::snapshot(&h.data_dir, "net")
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir_all(&h.data_dir).unwrap();
    }

    #[test]
    fn gc_keeps_the_index_current() {
        let h = on_disk("gc");
        let a = ips(&h.add("c1", "eth0").unwrap());
        let b = ips(&h.add("c2", "eth0").unwrap());
        let mut released = h.gc(&[("c2".into(), "eth0".into())]).unwrap();
        released.sort();
        let mut want = a.clone();
        want.sort();
        assert_eq!(released, want);
        assert!(index_current(&h));
        let s = h.store().unwrap();
        assert_eq!(s.indexed("c1", "eth0").unwrap(), Some(vec![]));
        assert_eq!(s.indexed("c2", "eth0").unwrap(), Some(b));
        drop(s);
        std::fs::remove_dir_all(&h.data_dir).unwrap();
    }

    #[test]
    fn allocates_round_robin_one_per_set() {
        let mut s = MemStore::default();
        let sets = vec![set("10.0.0.0/29"), set("fd00::/125")];
        let a = allocate(&mut s, &sets, &[], "c1", "eth0").unwrap();
        assert_eq!(a[0].address.to_string(), "10.0.0.2/29");
        assert_eq!(a[0].gateway, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(a[1].address.to_string(), "fd00::2/125");
        // Duplicate for the same container and interface is refused, and nothing is left over.
        let e = allocate(&mut s, &sets, &[], "c1", "eth0").unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        assert_eq!(s.held.len(), 2);
        // Round robin: after a release the next one does not reuse the freed address.
        let b = allocate(&mut s, &sets[..1], &[], "c2", "eth0").unwrap();
        assert_eq!(b[0].address.to_string(), "10.0.0.3/29");
        s.release_by_id("c2", "eth0").unwrap();
        let c = allocate(&mut s, &sets[..1], &[], "c3", "eth0").unwrap();
        assert_eq!(c[0].address.to_string(), "10.0.0.4/29");
    }

    #[test]
    fn exhaustion_and_requested_addresses() {
        let mut s = MemStore::default();
        let sets = vec![set("10.0.0.0/30")]; // .1 is the gateway, .2 the only address
        allocate(&mut s, &sets, &[], "c1", "eth0").unwrap();
        let e = allocate(&mut s, &sets, &[], "c2", "eth0").unwrap_err();
        assert!(e.to_string().contains("no IP addresses available"), "{e}");
        let sets = vec![set("10.1.0.0/24")];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let got = allocate(&mut s, &sets, &[ip("10.1.0.50")], "c3", "eth0").unwrap();
        assert_eq!(got[0].address.to_string(), "10.1.0.50/24");
        assert!(allocate(&mut s, &sets, &[ip("10.1.0.50")], "c4", "eth0").is_err());
        assert!(
            allocate(&mut s, &sets, &[ip("10.1.0.1")], "c4", "eth0")
                .unwrap_err()
                .to_string()
                .contains("gateway")
        );
        let e = allocate(&mut s, &sets, &[ip("10.9.0.1")], "c4", "eth0").unwrap_err();
        assert!(
            e.to_string().contains("failed to allocate all requested"),
            "{e}"
        );
        assert!(s.get_by_id("c4", "eth0").unwrap().is_empty(), "rolled back");
    }
}
