//! host-local IPAM: one address per range set from `<dataDir>/<network>`, the reference plugin's way
//! and in its on-disk format ([`super::store`]), so both can share a node.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use super::range::RangeSet;
use super::store::{DiskStore, Store};
use crate::cni::spec::{CniResult, Dns, IpConfig, Route};
use crate::error::{Error, Result};

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
        DiskStore::open(&self.data_dir, &self.network)
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
                    if let Some(have) = store
                        .get_by_id(id, ifname)?
                        .into_iter()
                        .find(|ip| set.range_for(*ip).is_some())
                    {
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
    use super::super::range::RawRange;
    use super::super::store::MemStore;
    use super::*;

    fn set(subnet: &str) -> RangeSet {
        RangeSet::from_raw(&[RawRange {
            subnet: Some(subnet.into()),
            ..Default::default()
        }])
        .unwrap()
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
