//! attache: a CNI meta-plugin that gives Kubernetes pods several network interfaces.
//!
//! Data flow of one invocation:
//!
//! 1. [`cni::skel`] reads `CNI_*` and the configuration, validates them for the command (codes 4, 6, 7, 1)
//!    and hands a [`cni::skel::CmdArgs`] and a [`cni::conf::NetConf`] to the [`engine`].
//! 2. The [`engine`] picks what runs: the meta-plugin (`"type": "attache"`, [`engine::meta`]) or a native
//!    driver in drop-in mode ([`attach`]).
//! 3. The meta-plugin plans every attachment of the pod first, writes a record ([`engine::record`]) before
//!    the first side effect, then attaches: the cluster network by exec ([`delegate`]), native types
//!    in-process ([`attach`], over [`netlink`] inside the pod's [`netns`]). A failure undoes everything in
//!    reverse order.
//! 4. DEL tears down from the record, best effort, and forgets it only when all is gone. CHECK verifies
//!    against the record; GC removes what the runtime no longer lists.
//! 5. When the answer is written, the invocation is counted in `<metricsDir>/attache.prom` ([`metrics`]),
//!    if the configuration names a `metricsDir`.
//!
//! Dependencies point one way, with no cycle (each module uses only those listed after it):
//! `cli` -> `engine` -> `k8s`, `attach` -> `ipam` -> `delegate` -> `cni` -> `netlink` -> `netns` ->
//! {`metrics`, `files`, `fail`} -> `error`. (`cni` never names `engine`: `main` hands the engine to
//! `cni::skel` as a [`cni::skel::Plugin`].) The operator's commands (`cli`) sit on top of everything.

pub mod attach;
pub mod cli;
pub mod cni;
pub mod cri;
pub mod delegate;
pub mod engine;
pub mod error;
pub mod fail;
pub mod files;
pub mod ipam;
pub mod k8s;
pub mod metrics;
pub mod netlink;
pub mod netns;
#[cfg(test)]
mod testutil;
