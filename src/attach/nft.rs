//! nftables state of the native drivers: `ipMasq` (table `inet attache`) and `macspoofchk` (table
//! `bridge attache`). Each change is one atomic `nft -f -` transaction.
//!
//! Shape: one base chain per table dispatches through a verdict map keyed by what identifies the pod's
//! traffic (source address for masquerading, ingress port for spoof checks) into a small chain per
//! attachment. Adding or removing an attachment then touches only its own chain and map elements — no rule
//! handles to look up — and every script first re-declares what it relies on, so ADD and DEL are both
//! idempotent (nft's `add` of something that exists is a no-op).

use std::net::IpAddr;

use ipnet::IpNet;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::spawn::Stdio;

/// A short stable name for an attachment's chain.
pub fn chain_id(prefix: &str, network: &str, container_id: &str, ifname: &str) -> String {
    format!(
        "{prefix}-{:016x}",
        crate::files::fnv1a(&[network, container_id, ifname])
    )
}

const MASQ_BASE: &str = "add table inet attache
add chain inet attache postrouting { type nat hook postrouting priority srcnat; policy accept; }
add map inet attache masq4 { type ipv4_addr : verdict; }
add map inet attache masq6 { type ipv6_addr : verdict; }
flush chain inet attache postrouting
add rule inet attache postrouting ip saddr vmap @masq4
add rule inet attache postrouting ip6 saddr vmap @masq6
";

fn masq_map(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "masq4" } else { "masq6" }
}

/// Masquerade traffic from `ips` to anywhere but their own subnets and multicast.
pub fn masq_add_script(chain: &str, ips: &[IpNet]) -> String {
    let mut s = String::from(MASQ_BASE);
    s += &format!("add chain inet attache {chain}\nflush chain inet attache {chain}\n");
    for ip in ips {
        let fam = if ip.addr().is_ipv4() { "ip" } else { "ip6" };
        s += &format!(
            "add rule inet attache {chain} {fam} daddr {} return\n",
            ip.trunc()
        );
    }
    s += &format!("add rule inet attache {chain} ip daddr 224.0.0.0/4 return\n");
    s += &format!("add rule inet attache {chain} ip6 daddr ff00::/8 return\n");
    s += &format!("add rule inet attache {chain} masquerade\n");
    for ip in ips {
        s += &format!(
            "add element inet attache {} {{ {} : jump {chain} }}\n",
            masq_map(ip.addr()),
            ip.addr()
        );
    }
    s
}

/// What undoes an attachment's nftables state: the deletes alone (`strict`, which fail if anything is
/// already gone) and the idempotent script that first re-declares everything it deletes (`full`).
pub struct Removal {
    table: &'static str,
    pub strict: String,
    pub full: String,
}

/// Undo [`masq_add_script`].
pub fn masq_del(chain: &str, ips: &[IpAddr]) -> Removal {
    let mut full = format!("{MASQ_BASE}add chain inet attache {chain}\n");
    let mut strict = String::new();
    for ip in ips {
        let map = masq_map(*ip);
        full += &format!("add element inet attache {map} {{ {ip} : jump {chain} }}\n");
        strict += &format!("delete element inet attache {map} {{ {ip} }}\n");
    }
    strict += &format!("flush chain inet attache {chain}\ndelete chain inet attache {chain}\n");
    full += &strict;
    Removal {
        table: "inet attache",
        strict,
        full,
    }
}

const SPOOF_BASE: &str = "add table bridge attache
add chain bridge attache prerouting { type filter hook prerouting priority -300; policy accept; }
add map bridge attache spoofchk { type ifname : verdict; }
flush chain bridge attache prerouting
add rule bridge attache prerouting iifname vmap @spoofchk
";

/// Drop frames entering from `port` whose source MAC is not `mac`.
pub fn spoofchk_add_script(chain: &str, port: &str, mac: &str) -> String {
    let mut s = String::from(SPOOF_BASE);
    s += &format!("add chain bridge attache {chain}\nflush chain bridge attache {chain}\n");
    s += &format!("add rule bridge attache {chain} ether saddr {mac} return\n");
    s += &format!("add rule bridge attache {chain} drop\n");
    s += &format!("add element bridge attache spoofchk {{ \"{port}\" : jump {chain} }}\n");
    s
}

/// Undo [`spoofchk_add_script`].
pub fn spoofchk_del(chain: &str, port: &str) -> Removal {
    let strict = format!(
        "delete element bridge attache spoofchk {{ \"{port}\" }}\nflush chain bridge attache {chain}\ndelete chain bridge attache {chain}\n"
    );
    let full = format!(
        "{SPOOF_BASE}add chain bridge attache {chain}\nadd element bridge attache spoofchk {{ \"{port}\" : jump {chain} }}\n{strict}"
    );
    Removal {
        table: "bridge attache",
        strict,
        full,
    }
}

/// Remove an attachment's state without ever creating what was not there. The deletes alone run first —
/// the usual case, one `nft` run; if that fails because something is already gone, the table is looked
/// for: absent, there is nothing to remove (and no empty base table is made just to be emptied);
/// present, the idempotent script runs.
pub async fn remove(r: &Removal) -> Result<()> {
    if apply(&r.strict).await.is_ok() {
        return Ok(());
    }
    let listed = crate::spawn::Command::new("nft")
        .args(["list", "table"])
        .args(r.table.split(' '))
        .stdout(Stdio::Null)
        .stderr(Stdio::Null)
        .spawn()
        .map_err(|e| Error::io("running nft", e))?
        .wait()
        .await
        .map_err(|e| Error::io("running nft", e))?;
    if !listed.success() {
        return Ok(());
    }
    apply(&r.full).await
}

/// Apply a script in the current network namespace.
pub async fn apply(script: &str) -> Result<()> {
    crate::fail::point("nft.apply")?;
    // nft dies with attache (src/spawn.rs), as a delegate does.
    let mut child = crate::spawn::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::Piped)
        .stdout(Stdio::Null)
        .stderr(Stdio::Piped)
        .spawn()
        .map_err(|e| {
            Error::io(
                "running nft (ipMasq and macspoofchk need the nftables package)",
                e,
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| Error::io("writing to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Error::io("waiting for nft", e))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_are_stable_and_distinct() {
        let a = chain_id("masq", "net", "c1", "eth0");
        assert_eq!(a, chain_id("masq", "net", "c1", "eth0"));
        assert_ne!(a, chain_id("masq", "net", "c1", "eth1"));
        assert_ne!(
            chain_id("masq", "ne", "tc1", "eth0"),
            chain_id("masq", "net", "c1", "eth0")
        );
        assert!(a.len() <= 31);
    }

    #[test]
    fn scripts() {
        let ips: Vec<IpNet> = vec![
            "10.1.0.5/24".parse().unwrap(),
            "fd00::5/64".parse().unwrap(),
        ];
        let s = masq_add_script("masq-x", &ips);
        assert!(s.contains("add rule inet attache masq-x ip daddr 10.1.0.0/24 return"));
        assert!(s.contains("add rule inet attache masq-x ip6 daddr fd00::/64 return"));
        assert!(s.contains("add element inet attache masq4 { 10.1.0.5 : jump masq-x }"));
        assert!(s.contains("add element inet attache masq6 { fd00::5 : jump masq-x }"));
        let d = masq_del("masq-x", &[ips[0].addr()]);
        assert!(d.full.ends_with("delete chain inet attache masq-x\n"));
        assert!(d.full.starts_with(MASQ_BASE));
        assert!(!d.strict.contains("add "));
        assert!(
            d.strict
                .contains("delete element inet attache masq4 { 10.1.0.5 }")
        );
        let s = spoofchk_add_script("mac-x", "veth1", "0a:58:0a:01:00:02");
        assert!(s.contains("ether saddr 0a:58:0a:01:00:02 return"));
    }
}
