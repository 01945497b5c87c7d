//! An in-memory [`ClusterApi`] for unit tests: attache-ipam's objects, nodes and pods in maps, written
//! under the API server's rules — a create of a name that exists is a conflict, a write or delete with
//! a stale resourceVersion or another UID is a conflict, one of a missing object is gone — so that
//! claim, borrow and reconcile races run in milliseconds, interleaved as a test says (the hooks run
//! inside a call, between its read and its write, as a rival node's request would land).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use super::api::{
    BlockObj, ClusterApi, GrantObj, PodAddresses, PodsOn, PoolObj, PoolRange, Written,
};
use crate::error::{Error, Result};

/// A hook run inside a call, on the state, before the call's own write.
pub type Hook<T> = Box<dyn FnMut(&mut State, &T)>;

/// The objects. Every write bumps the resourceVersion; UIDs are `uid-<n>`.
#[derive(Default)]
pub struct State {
    pub pools: BTreeMap<String, PoolObj>,
    pub blocks: BTreeMap<String, BlockObj>,
    pub grants: BTreeMap<String, GrantObj>,
    /// Node name -> UID.
    pub nodes: BTreeMap<String, String>,
    /// `(namespace, name)` -> `(uid, node, StatefulSet owner)`.
    pub pods: BTreeMap<(String, String), (String, String, Option<String>)>,
    /// Accepted writes, as `verb kind` (what the real server's audit log would show).
    pub writes: Vec<String>,
    /// Calls that reached the API, writes or not.
    pub calls: usize,
    /// Runs before a block's create lands (a rival node's create of the same name, say).
    pub before_create_block: Option<Hook<BlockObj>>,
    /// A create of a block lands, but its answer is lost (the client times out).
    pub lose_create_answer: bool,
    /// Every call fails as an unreachable API server would.
    pub down: bool,
    /// A lender that answers each grant as it is created: the first address of its window not held
    /// by another grant of the block (`None`: nobody answers).
    pub lend: bool,
    version: u64,
}

impl State {
    fn next(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    pub fn add_node(&mut self, name: &str) {
        let uid = format!("uid-node-{name}");
        self.nodes.insert(name.into(), uid);
    }

    pub fn add_pod(&mut self, namespace: &str, name: &str, uid: &str, node: &str) {
        self.pods.insert(
            (namespace.into(), name.into()),
            (uid.into(), node.into(), None),
        );
    }
}

/// Shared by every client [`ClusterApi::renewed`] makes, as one API server is.
#[derive(Clone, Default)]
pub struct FakeApi(pub Rc<RefCell<State>>);

impl FakeApi {
    /// A call: counted, and refused while the server is down.
    fn state(&self) -> Result<std::cell::RefMut<'_, State>> {
        let mut s = self.0.borrow_mut();
        s.calls += 1;
        if s.down {
            return Err(Error::TryAgain("the API server is down (fake)".into()));
        }
        Ok(s)
    }
}

/// Whether a precondition (`want`, if any) matches what is there.
fn matches(want: Option<&str>, have: &str) -> bool {
    want.is_none_or(|w| w.is_empty() || w == have)
}

/// The first address of a grant's window that no other grant of its block holds.
fn lend(s: &State, g: &GrantObj) -> Option<String> {
    let taken: BTreeSet<&str> = s
        .grants
        .values()
        .filter(|o| o.block == g.block && !o.ip.is_empty())
        .map(|o| o.ip.as_str())
        .collect();
    g.window.iter().find_map(|w| {
        let (a, b) = w.split_once('-')?;
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = (a.parse().ok()?, b.parse().ok()?);
        let (a, b) = (
            crate::ipam::host_local::range::to_u128(a),
            crate::ipam::host_local::range::to_u128(b),
        );
        (a..=b)
            .map(|n| crate::ipam::host_local::range::from_u128(n, g.cidr.contains('.')).to_string())
            .find(|ip| !taken.contains(ip.as_str()))
    })
}

impl ClusterApi for FakeApi {
    async fn pool(&self, name: &str) -> Result<Option<PoolObj>> {
        Ok(self.state()?.pools.get(name).cloned())
    }

    async fn create_pool(&self, name: &str, ranges: &[PoolRange]) -> Result<Written<PoolObj>> {
        let mut s = self.state()?;
        if s.pools.contains_key(name) {
            return Ok(Written::Conflict);
        }
        let p = PoolObj {
            ranges: ranges.to_vec(),
            resource_version: s.next(),
        };
        s.pools.insert(name.into(), p.clone());
        s.writes.push("create addresspools".into());
        Ok(Written::Done(p))
    }

    async fn replace_pool(
        &self,
        name: &str,
        ranges: &[PoolRange],
        resource_version: &str,
    ) -> Result<Written<PoolObj>> {
        let mut s = self.state()?;
        match s.pools.get(name) {
            None => return Ok(Written::Gone),
            Some(p) if p.resource_version != resource_version => return Ok(Written::Conflict),
            Some(_) => {}
        }
        let p = PoolObj {
            ranges: ranges.to_vec(),
            resource_version: s.next(),
        };
        s.pools.insert(name.into(), p.clone());
        s.writes.push("update addresspools".into());
        Ok(Written::Done(p))
    }

    async fn node_uid(&self, name: &str) -> Result<Option<String>> {
        Ok(self.state()?.nodes.get(name).cloned())
    }

    async fn blocks(&self, pool: &str) -> Result<Vec<BlockObj>> {
        let s = self.state()?;
        Ok(s.blocks
            .values()
            .filter(|b| b.pool == pool)
            .cloned()
            .collect())
    }

    async fn block(&self, name: &str) -> Result<Option<BlockObj>> {
        Ok(self.state()?.blocks.get(name).cloned())
    }

    async fn create_block(&self, b: &BlockObj) -> Result<Written<BlockObj>> {
        let mut s = self.state()?;
        if let Some(mut hook) = s.before_create_block.take() {
            hook(&mut s, b);
            s.before_create_block = Some(hook);
        }
        if s.blocks.contains_key(&b.name) {
            return Ok(Written::Conflict);
        }
        let made = BlockObj {
            uid: format!("uid-{}", s.next()),
            resource_version: s.next(),
            ..b.clone()
        };
        s.blocks.insert(b.name.clone(), made.clone());
        s.writes.push("create addressblocks".into());
        if s.lose_create_answer {
            s.lose_create_answer = false;
            return Err(Error::TryAgain(format!(
                "create AddressBlock {}: the answer was lost (fake)",
                b.name
            )));
        }
        Ok(Written::Done(made))
    }

    async fn all_blocks(&self) -> Result<Vec<BlockObj>> {
        Ok(self.state()?.blocks.values().cloned().collect())
    }

    async fn delete_block(&self, b: &BlockObj) -> Result<Written<()>> {
        let mut s = self.state()?;
        match s.blocks.get(&b.name) {
            None => Ok(Written::Gone),
            Some(o)
                if o.uid != b.uid || !matches(Some(&b.resource_version), &o.resource_version) =>
            {
                Ok(Written::Conflict)
            }
            Some(_) => {
                s.blocks.remove(&b.name);
                s.writes.push("delete addressblocks".into());
                Ok(Written::Done(()))
            }
        }
    }

    /// The fake does not say when its pods were made.
    async fn pods_on(&self, node: &str) -> Result<PodsOn> {
        let s = self.state()?;
        Ok(s.pods
            .values()
            .filter(|(_, n, _)| n == node)
            .map(|(u, _, _)| (u.clone(), None))
            .collect())
    }

    /// The fake's pods report nothing: each may use any address (the careful reading).
    async fn pod_addresses_on(&self, node: &str) -> Result<Vec<PodAddresses>> {
        let s = self.state()?;
        Ok(s.pods
            .iter()
            .filter(|(_, (_, n, _))| n == node)
            .map(|((ns, name), _)| PodAddresses {
                pod: format!("{ns}/{name}"),
                ..Default::default()
            })
            .collect())
    }

    async fn pod_uid(&self, namespace: &str, name: &str) -> Result<Option<String>> {
        let s = self.state()?;
        Ok(s.pods
            .get(&(namespace.into(), name.into()))
            .map(|(u, _, _)| u.clone()))
    }

    async fn pod_is(&self, namespace: &str, name: &str, uid: &str) -> Result<bool> {
        Ok(self.pod_uid(namespace, name).await?.as_deref() == Some(uid))
    }

    async fn node_names(&self) -> Result<BTreeSet<String>> {
        Ok(self.state()?.nodes.keys().cloned().collect())
    }

    async fn create_grant(&self, g: &GrantObj) -> Result<Written<GrantObj>> {
        let mut s = self.state()?;
        if s.grants.contains_key(&g.name) {
            return Ok(Written::Conflict);
        }
        let mut made = GrantObj {
            uid: format!("uid-{}", s.next()),
            resource_version: s.next(),
            ..g.clone()
        };
        if s.lend && made.state.is_empty() {
            match lend(&s, &made) {
                Some(ip) => {
                    made.state = "Granted".into();
                    made.ip = ip;
                }
                None => {
                    made.state = "Refused".into();
                    made.message = "no free address in the window (fake)".into();
                }
            }
        }
        // The answer of a create is the object as created: the lender's answer is a later write.
        let created = GrantObj {
            state: g.state.clone(),
            ip: g.ip.clone(),
            message: g.message.clone(),
            ..made.clone()
        };
        if made.state != g.state {
            made.resource_version = s.next();
        }
        s.grants.insert(g.name.clone(), made);
        s.writes.push("create addressgrants".into());
        Ok(Written::Done(created))
    }

    async fn take_grant(&self, g: &GrantObj, holder: &GrantObj) -> Result<Written<()>> {
        let mut s = self.state()?;
        let rv = s.next();
        let Some(o) = s.grants.get_mut(&g.name) else {
            return Ok(Written::Gone);
        };
        if o.uid != g.uid || o.resource_version != g.resource_version {
            return Ok(Written::Conflict);
        }
        o.holder_node = holder.holder_node.clone();
        o.container_id = holder.container_id.clone();
        o.ifname = holder.ifname.clone();
        o.pod_uid = holder.pod_uid.clone();
        o.pod = holder.pod.clone();
        o.resource_version = rv;
        s.writes.push("patch addressgrants".into());
        Ok(Written::Done(()))
    }

    async fn grant(&self, name: &str) -> Result<Option<GrantObj>> {
        Ok(self.state()?.grants.get(name).cloned())
    }

    /// The fake is one thread: nothing changes while a call waits, so this answers at once with what
    /// is there (`None` after `wait` when that is unchanged).
    async fn grant_change(
        &self,
        name: &str,
        resource_version: &str,
        wait: std::time::Duration,
    ) -> Result<Option<Option<GrantObj>>> {
        let now = self.state()?.grants.get(name).cloned();
        match now {
            Some(g) if g.resource_version == resource_version => {
                tokio::time::sleep(wait).await;
                Ok(None)
            }
            now => Ok(Some(now)),
        }
    }

    async fn answer_grant(
        &self,
        g: &GrantObj,
        state: &str,
        ip: &str,
        message: &str,
    ) -> Result<Written<()>> {
        let mut s = self.state()?;
        let rv = s.next();
        let Some(o) = s.grants.get_mut(&g.name) else {
            return Ok(Written::Gone);
        };
        if o.uid != g.uid {
            return Ok(Written::Conflict);
        }
        (o.state, o.ip, o.message) = (state.into(), ip.into(), message.into());
        o.resource_version = rv;
        s.writes.push("patch addressgrants".into());
        Ok(Written::Done(()))
    }

    async fn delete_grant_if(
        &self,
        name: &str,
        uid: Option<&str>,
        resource_version: Option<&str>,
    ) -> Result<Written<()>> {
        let mut s = self.state()?;
        match s.grants.get(name) {
            None => Ok(Written::Gone),
            Some(o) if !matches(uid, &o.uid) || !matches(resource_version, &o.resource_version) => {
                Ok(Written::Conflict)
            }
            Some(_) => {
                s.grants.remove(name);
                s.writes.push("delete addressgrants".into());
                Ok(Written::Done(()))
            }
        }
    }

    async fn grants_of_lender(&self, lender: &str) -> Result<(Vec<GrantObj>, String)> {
        let mut s = self.state()?;
        let list = s
            .grants
            .values()
            .filter(|g| g.lender == lender)
            .cloned()
            .collect();
        Ok((list, s.next()))
    }

    async fn grants_of_holder(&self, holder: &str) -> Result<Vec<GrantObj>> {
        let s = self.state()?;
        Ok(s.grants
            .values()
            .filter(|g| g.holder_node == holder)
            .cloned()
            .collect())
    }

    async fn pod_owner(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(String, Option<String>)>> {
        let s = self.state()?;
        Ok(s.pods
            .get(&(namespace.into(), name.into()))
            .map(|(u, _, set)| (u.clone(), set.clone())))
    }

    async fn statefulset_replicas(&self, _namespace: &str, _name: &str) -> Result<Option<i32>> {
        self.state()?;
        Ok(None)
    }

    async fn ipamclaim(
        &self,
        _namespace: &str,
        _name: &str,
    ) -> Result<Option<(String, Vec<String>)>> {
        self.state()?;
        Ok(None)
    }

    async fn set_claim_status(
        &self,
        namespace: &str,
        name: &str,
        _ips: &[String],
        _owner_pod: &str,
    ) -> Result<()> {
        Err(Error::Internal(format!(
            "IPAMClaim {namespace}/{name}: not kept by the fake"
        )))
    }

    fn renew(&mut self) {}

    fn renewed(&self) -> FakeApi {
        self.clone()
    }
}
