//! attache's end-to-end tests, as one binary: each module is a suite (its own docs say what it covers),
//! and the helpers they share are built once. Run as root (`scripts/test`); every test makes its own
//! node and pod network namespaces and removes them. `faults` needs `--features failpoints`. The tests
//! that need a kernel this machine does not have are another binary (`vm.rs`, run by `scripts/vm-test`).

mod apiserver;
mod poll;
mod realserver;
mod runtime;
mod testbed;

mod bridge;
mod cluster;
mod clusteripam;
mod cni;
mod cnitool;
mod concurrency;
mod crash;
mod cri;
mod defects;
#[cfg(feature = "failpoints")]
mod faults;
mod inspect;
mod k8s;
mod macvlan;
mod metrics;
mod nics;
mod operate;
mod podman;
mod properties;
mod realapi;
mod routing;
mod tuning;
