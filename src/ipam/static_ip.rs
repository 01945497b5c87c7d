//! static IPAM: the addresses, routes and DNS the configuration (or `CNI_ARGS`, `args.cni.ips`, the
//! `ips` capability) names, handed out as they are; nothing is kept anywhere.

use crate::cni::spec::{CniResult, Dns, IpConfig, Route};

#[derive(Clone, Debug)]
pub struct Static {
    pub addresses: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl Static {
    pub(super) fn result(&self) -> CniResult {
        CniResult {
            interfaces: vec![],
            ips: self.addresses.clone(),
            routes: self.routes.clone(),
            dns: self.dns.clone(),
        }
    }
}
