//! The arithmetic of a cluster range cut into blocks: which blocks a configuration's window touches, in
//! which order a node tries them, what each can hand out, and how a block is named — in the API
//! (`<pool>-<cidr>`) and on disk (`<cidr>`), reversibly, so that the folder names alone say which
//! blocks a node owns. Everything is `u128` arithmetic: a /64 cut into /122 blocks is never listed.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::ipam::host_local::range::{from_u128, to_u128};

/// A block: `2^(max - prefix)` addresses aligned on their size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block {
    pub first: u128,
    pub prefix: u8,
    pub v4: bool,
}

impl Block {
    pub fn of(net: IpNet) -> Block {
        Block {
            first: to_u128(net.network()),
            prefix: net.prefix_len(),
            v4: net.addr().is_ipv4(),
        }
    }

    fn host_bits(&self) -> u32 {
        u32::from(if self.v4 { 32 } else { 128 } - self.prefix)
    }

    pub fn last(&self) -> u128 {
        self.first + (size(self.host_bits()) - 1)
    }

    pub fn net(&self) -> IpNet {
        IpNet::new(from_u128(self.first, self.v4), self.prefix).expect("prefix checked")
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.v4 && (self.first..=self.last()).contains(&to_u128(ip))
    }

    /// The on-disk name: the canonical text with `.`, `:` and `/` as `-` (`10-20-3-64-26`,
    /// `fd00--40-122`; a v6 text that starts with `::` gets a leading `0`, `0--40-122`, since a name
    /// must start with a letter or digit). A v4 name has four decimal groups before the prefix; a
    /// canonical v6 text with that few groups has a `::`, which shows as `--`: the two never collide.
    pub fn dir_name(&self) -> String {
        let text = self.net().to_string();
        let text = if text.starts_with(':') {
            format!("0{text}")
        } else {
            text
        };
        text.replace(['.', ':', '/'], "-")
    }

    /// The inverse of [`Block::dir_name`]; `None` for any other name.
    pub fn from_dir_name(name: &str) -> Option<Block> {
        let (addr, prefix) = name.rsplit_once('-')?;
        let prefix: u8 = prefix.parse().ok()?;
        let v4 = addr.replace('-', ".");
        let ip: IpAddr = match v4.parse() {
            Ok(ip @ IpAddr::V4(_)) => ip,
            _ => addr
                .replace('-', ":")
                .parse::<std::net::Ipv6Addr>()
                .ok()?
                .into(),
        };
        let net = IpNet::new(ip, prefix).ok()?;
        (net.network() == ip && Block::of(net).dir_name() == name).then(|| Block::of(net))
    }
}

fn size(host_bits: u32) -> u128 {
    if host_bits >= 128 {
        u128::MAX
    } else {
        1u128 << host_bits
    }
}

/// A range cut into blocks of `prefix`, restricted to the window `[lo, hi]` the configuration may hand
/// out.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub range: IpNet,
    pub prefix: u8,
    pub lo: u128,
    pub hi: u128,
}

impl Layout {
    fn v4(&self) -> bool {
        self.range.addr().is_ipv4()
    }

    fn block_bits(&self) -> u32 {
        u32::from(self.range.max_prefix_len() - self.prefix)
    }

    /// Index (from the range's start) of the blocks holding `lo` and `hi`.
    fn window_blocks(&self) -> (u128, u128) {
        let net = to_u128(self.range.network());
        let b = self.block_bits();
        ((self.lo - net) >> b, (self.hi - net) >> b)
    }

    /// How many blocks the window touches.
    pub fn count(&self) -> u128 {
        let (a, z) = self.window_blocks();
        z - a + 1
    }

    /// The `i`-th block the window touches.
    pub fn nth(&self, i: u128) -> Block {
        let (a, _) = self.window_blocks();
        let net = to_u128(self.range.network());
        Block {
            first: net + ((a + i) << self.block_bits()),
            prefix: self.prefix,
            v4: self.v4(),
        }
    }

    /// The block `ip` falls in (`None` outside the range).
    pub fn block_of(&self, ip: IpAddr) -> Option<Block> {
        if !self.range.contains(&ip) {
            return None;
        }
        let b = self.block_bits();
        let n = to_u128(ip);
        Some(Block {
            first: if b >= 128 { 0 } else { (n >> b) << b },
            prefix: self.prefix,
            v4: self.v4(),
        })
    }

    /// Is `block` one of this layout's (same size, inside the range)?
    pub fn has(&self, block: &Block) -> bool {
        block.prefix == self.prefix
            && block.v4 == self.v4()
            && self.range.contains(&from_u128(block.first, block.v4))
    }

    /// Every block the window touches, starting at a point `seed` picks and walking forward (Calico's
    /// host-seeded order: one node retries the same blocks, different nodes start apart).
    pub fn order(&self, seed: u64) -> impl Iterator<Item = Block> + '_ {
        let n = self.count();
        let start = u128::from(seed) % n;
        (0..n).map(move |i| self.nth((start + i) % n))
    }

    /// The intervals of `block` this layout hands out: the window, minus `holes` (the gateway, the
    /// exclusions, the range's network and broadcast addresses), in ascending order.
    pub fn free_intervals(&self, block: &Block, holes: &[(u128, u128)]) -> Vec<(u128, u128)> {
        let lo = self.lo.max(block.first);
        let hi = self.hi.min(block.last());
        if lo > hi {
            return vec![];
        }
        let mut out = vec![(lo, hi)];
        for &(hs, he) in holes {
            let mut next = Vec::with_capacity(out.len() + 1);
            for (s, e) in out {
                if he < s || hs > e {
                    next.push((s, e));
                    continue;
                }
                if hs > s {
                    next.push((s, hs - 1));
                }
                if he < e {
                    next.push((he + 1, e));
                }
            }
            out = next;
        }
        out
    }
}

/// FNV-1a: stable across processes and versions (the block order must not change with a build).
pub fn seed(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.as_bytes().iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(range: &str, prefix: u8, lo: &str, hi: &str) -> Layout {
        Layout {
            range: range.parse().unwrap(),
            prefix,
            lo: to_u128(lo.parse().unwrap()),
            hi: to_u128(hi.parse().unwrap()),
        }
    }

    #[test]
    fn names_round_trip_and_never_collide() {
        for net in [
            "10.20.3.64/26",
            "0.0.0.0/0",
            "fd00::40/122",
            "fd00:1:2:3:4:5:6:0/112",
            "::/0",
            "::40/122",
            "1:2:3:4::/64",
        ] {
            let b = Block::of(net.parse().unwrap());
            let name = b.dir_name();
            assert_eq!(Block::from_dir_name(&name), Some(b), "{name}");
            // It names a host-local store folder.
            assert!(
                crate::cni::conf::validate_network_name(&name).is_ok(),
                "{name}"
            );
        }
        assert_eq!(
            Block::of("10.20.3.64/26".parse().unwrap()).dir_name(),
            "10-20-3-64-26"
        );
        for bad in [
            "lock",
            "10-20-3-65-26",
            "10-20-3-64",
            "x-26",
            "10-20-3-64-33",
            "",
        ] {
            assert_eq!(Block::from_dir_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_window_decides_the_blocks() {
        let l = layout("10.20.0.0/16", 26, "10.20.0.1", "10.20.255.254");
        assert_eq!(l.count(), 1024);
        assert_eq!(l.nth(3).net().to_string(), "10.20.0.192/26");
        let l = layout("10.20.0.0/16", 26, "10.20.1.10", "10.20.1.130");
        assert_eq!(l.count(), 3);
        assert_eq!(l.nth(0).net().to_string(), "10.20.1.0/26");
        let order: Vec<String> = l.order(4).map(|b| b.net().to_string()).collect();
        assert_eq!(order, ["10.20.1.64/26", "10.20.1.128/26", "10.20.1.0/26"]);
        let b = l.nth(0);
        assert_eq!(l.free_intervals(&b, &[]).len(), 1);
        assert_eq!(
            l.free_intervals(&b, &[]),
            vec![(to_u128("10.20.1.10".parse().unwrap()), b.last())]
        );
        // A hole in the middle splits; one covering the block empties it.
        let h = to_u128("10.20.1.20".parse().unwrap());
        assert_eq!(l.free_intervals(&b, &[(h, h + 4)]).len(), 2);
        assert!(l.free_intervals(&b, &[(b.first, b.last())]).is_empty());
        // A /64 with /122 blocks: counted, not listed.
        let l = layout("fd00::/64", 122, "fd00::1", "fd00::ffff:ffff:ffff:ffff");
        assert_eq!(l.count(), 1 << 58);
        assert_eq!(
            l.block_of("fd00::1:5".parse().unwrap())
                .unwrap()
                .net()
                .to_string(),
            "fd00::1:0/122"
        );
    }
}
