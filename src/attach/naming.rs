//! Names and labels of the links a driver makes on the node: stable for a `(containerID, ifname)`, so
//! DEL, CHECK and a retried ADD find them without state, and labelled with their owner.

/// The host-side name of a pod's veth: stable for a `(containerID, ifname)` so DEL, CHECK and a retried
/// ADD can find it without state, and `veth`-prefixed because NetworkManager leaves such devices alone.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = crate::files::fnv1a(&[container_id, ifname]);
    format!("veth{:011x}", h & 0xfff_ffff_ffff)
}

/// The label put on host-side links (`ip link` shows it), naming their owner: `attache <containerID>
/// <ifname>`. The kernel keeps at most 255 bytes of an alias, so a container ID longer than the
/// runtimes' 64 characters is replaced by `h:` and its hash.
pub fn owner_alias(container_id: &str, ifname: &str) -> String {
    format!("{}{ifname}", owner_alias_prefix(container_id))
}

/// The start of the alias of every host-side link of a container.
pub fn owner_alias_prefix(container_id: &str) -> String {
    if container_id.len() <= 64 {
        format!("attache {container_id} ")
    } else {
        format!("attache h:{:016x} ", crate::files::fnv1a(&[container_id]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_fit_the_kernel() {
        assert_eq!(owner_alias("c1", "net1"), "attache c1 net1");
        let long = "a".repeat(255);
        let a = owner_alias(&long, "net1");
        assert!(
            a.len() < 64 && a.starts_with("attache h:") && a.ends_with(" net1"),
            "{a}"
        );
        assert_eq!(a, owner_alias(&long, "net1"));
        assert!(a.starts_with(&owner_alias_prefix(&long)));
    }

    #[test]
    fn host_veth_names() {
        let a = host_veth_name("c1", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_eq!(a, host_veth_name("c1", "eth0"));
        assert_ne!(a, host_veth_name("c1", "net1"));
        crate::cni::conf::check_ifname(&a).unwrap();
    }
}
