//! The undo list of a native ADD: each step that changes something pushes how to undo it, and a failure
//! unwinds the list newest first.

use crate::cni::conf::NetConf;
use crate::cni::skel::CmdArgs;
use crate::netlink::Netlink;
use crate::netns::NetNs;

use super::nft;

/// Things a failed ADD undoes, newest first.
pub enum Undo {
    /// A link, by name, in a namespace (`None`: the node's).
    Link {
        netns: Option<NetNs>,
        name: String,
    },
    Nft(nft::Removal),
    Ipam,
    /// A node device handed to the pod (host-device): given back to the node as it was.
    GiveBack {
        netns: NetNs,
        ifname: String,
        handed: Box<super::host_device::Handed>,
    },
}

/// Run an undo list in reverse; errors are logged, the ADD's own error is what the caller sees.
///
/// Links are deleted over a fresh netlink connection: the one the ADD used may be exactly what failed
/// (a connection whose task died answers nothing). And an address reservation is released only when
/// every link made before it is gone — a link left holding an address whose reservation is released
/// would hand the next pod a duplicate; kept, the reservation goes with the runtime's DEL.
pub async fn rollback(undo: Vec<Undo>, args: &CmdArgs, conf: &NetConf, ipam: &crate::ipam::Ipam) {
    let mut link_left = false;
    for u in undo.into_iter().rev() {
        let (what, r) = match &u {
            Undo::Link { netns, name } => {
                let r = match Netlink::connect(netns.as_ref()) {
                    Ok(nl) => nl.del_link(name).await.map(drop),
                    Err(e) => Err(e),
                };
                link_left |= r.is_err();
                (format!("delete link {name}"), r)
            }
            Undo::Nft(r) => ("remove nftables state".to_string(), nft::remove(r).await),
            Undo::GiveBack {
                netns,
                ifname,
                handed,
            } => {
                let r = super::host_device::give_back(Some(netns), ifname, handed).await;
                link_left |= r.is_err();
                (
                    format!("give {ifname} back to the node as {}", handed.nic.name),
                    r,
                )
            }
            Undo::Ipam if link_left => {
                tracing::error!(
                    container = %args.container_id,
                    ifname = %args.ifname,
                    "rollback: a link could not be deleted, so its addresses stay reserved until a DEL succeeds"
                );
                continue;
            }
            Undo::Ipam => ("release addresses".to_string(), ipam.del(args, conf).await),
        };
        match r {
            Ok(()) => tracing::debug!(ifname = %args.ifname, "rollback: {what}"),
            Err(e) => tracing::warn!(ifname = %args.ifname, "rollback: {what} failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A named netns for one unit test, removed on drop.
    struct TestNs(String);

    impl TestNs {
        fn new(tag: &str) -> TestNs {
            let name = format!("att-unit-{tag}-{}", std::process::id());
            let ok = std::process::Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap();
            assert!(ok.success(), "ip netns add (the unit tests run as root)");
            TestNs(name)
        }

        fn path(&self) -> std::path::PathBuf {
            std::path::PathBuf::from(format!("/run/netns/{}", self.0))
        }

        fn links(&self) -> String {
            let o = std::process::Command::new("ip")
                .args(["-n", &self.0, "-o", "link", "show"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        }
    }

    impl Drop for TestNs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }

    #[test]
    fn rollback_reconnects_and_keeps_reservations_while_a_link_remains() {
        let ns = TestNs::new("rollback");
        let data = crate::testutil::tempdir("rollback");
        let conf = NetConf::from_value(serde_json::json!({"cniVersion":"1.0.0","name":"rb",
            "type":"bridge","ipam":{"type":"host-local","subnet":"10.3.0.0/24","dataDir":data}}))
        .unwrap();
        let args = crate::testutil::cmd_args("");
        let ipam = crate::ipam::Ipam::from_conf(&conf, &args).unwrap();
        let held = || ipam.release().held(&args).unwrap().len();
        let ok = std::process::Command::new("ip")
            .args([
                "-n", &ns.0, "link", "add", "rb0", "type", "veth", "peer", "name", "rb1",
            ])
            .status()
            .unwrap();
        assert!(ok.success());
        // The ADD's own runtime (and every connection on it) is gone by the time the rollback runs.
        crate::testutil::rt()
            .block_on(ipam.add(&args, &conf))
            .unwrap();
        assert_eq!(held(), 1);
        let undo = |name: &str| {
            vec![
                Undo::Ipam,
                Undo::Link {
                    netns: Some(NetNs::open(&ns.path()).unwrap()),
                    name: name.into(),
                },
            ]
        };
        // A link that cannot be deleted (lo): the address stays reserved.
        crate::testutil::rt().block_on(rollback(undo("lo"), &args, &conf, &ipam));
        assert_eq!(held(), 1, "released while a link may still hold it");
        // A link that can: it goes over a fresh connection, then the address.
        crate::testutil::rt().block_on(rollback(undo("rb0"), &args, &conf, &ipam));
        assert!(!ns.links().contains("rb0"), "{}", ns.links());
        assert_eq!(held(), 0);
        std::fs::remove_dir_all(&data).unwrap();
    }
}
