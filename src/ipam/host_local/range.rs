//! Address ranges and range sets of host-local IPAM, with the reference plugin's defaults and its
//! round-robin iteration order (so both allocate the same addresses from the same state).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Deserialize;

use crate::error::{Error, Result};

/// An address as a number, IPv4 and IPv6 alike.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

pub fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// A range as written in a configuration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RawRange {
    pub subnet: Option<String>,
    pub range_start: Option<IpAddr>,
    pub range_end: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
}

/// A validated range: allocation happens in `[start, end]`, never on the gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

impl Range {
    /// Apply the reference plugin's rules: the subnet has no host bits and room for at least two hosts;
    /// the gateway defaults to the first address; the range defaults to every usable address (IPv4's
    /// broadcast excluded); start and end lie inside the subnet.
    pub fn from_raw(raw: &RawRange) -> Result<Range> {
        let s = raw
            .subnet
            .as_deref()
            .ok_or_else(|| Error::config("a range has no subnet"))?;
        let subnet: IpNet = s
            .parse()
            .map_err(|_| Error::config(format!("subnet {s:?} is not a CIDR")))?;
        if subnet.addr() != subnet.network() {
            return Err(Error::config(format!(
                "subnet {s} has host bits set: the network address is {}/{}",
                subnet.network(),
                subnet.prefix_len()
            )));
        }
        if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
            return Err(Error::config(format!(
                "network {s} is too small to allocate from"
            )));
        }
        let v4 = subnet.addr().is_ipv4();
        let net = to_u128(subnet.network());
        let last = to_u128(subnet.broadcast());
        let last_usable = if v4 { last - 1 } else { last };
        let inside = |ip: IpAddr, what: &str| -> Result<u128> {
            if ip.is_ipv4() != v4 || !subnet.contains(&ip) {
                return Err(Error::config(format!(
                    "{what} {ip} is not in subnet {subnet}"
                )));
            }
            Ok(to_u128(ip))
        };
        let gateway = match raw.gateway {
            Some(g) => Some(from_u128(inside(g, "gateway")?, v4)),
            None => Some(from_u128(net + 1, v4)),
        };
        let start = match raw.range_start {
            Some(ip) => inside(ip, "rangeStart")?,
            None => net + 1,
        };
        let end = match raw.range_end {
            Some(ip) => inside(ip, "rangeEnd")?,
            None => last_usable,
        };
        if start > end {
            return Err(Error::config(format!(
                "rangeStart {} is after rangeEnd {}",
                from_u128(start, v4),
                from_u128(end, v4)
            )));
        }
        Ok(Range {
            subnet,
            start: from_u128(start, v4),
            end: from_u128(end, v4),
            gateway,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(ip))
    }

    fn overlaps(&self, o: &Range) -> bool {
        self.start.is_ipv4() == o.start.is_ipv4()
            && to_u128(self.start) <= to_u128(o.end)
            && to_u128(o.start) <= to_u128(self.end)
    }
}

/// A pool of disjoint ranges of one family; one address is allocated per range set.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    pub fn from_raw(raw: &[RawRange]) -> Result<RangeSet> {
        if raw.is_empty() {
            return Err(Error::config("a range set is empty"));
        }
        let ranges = raw
            .iter()
            .map(Range::from_raw)
            .collect::<Result<Vec<_>>>()?;
        let v4 = ranges[0].start.is_ipv4();
        if ranges.iter().any(|r| r.start.is_ipv4() != v4) {
            return Err(Error::config("a range set mixes IPv4 and IPv6"));
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.overlaps(b) {
                    return Err(Error::config(format!(
                        "ranges {} and {} overlap",
                        a.subnet, b.subnet
                    )));
                }
            }
        }
        Ok(RangeSet(ranges))
    }

    pub fn is_v4(&self) -> bool {
        self.0[0].start.is_ipv4()
    }

    /// The range holding `ip`, if any.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    pub fn overlaps(&self, o: &RangeSet) -> bool {
        self.0.iter().any(|a| o.0.iter().any(|b| a.overlaps(b)))
    }

    /// Candidates in allocation order: after `last` (if it is in this set), round-robin over every
    /// range, wrapping, each address once, gateways skipped — the reference plugin's order.
    pub fn candidates(&self, last: Option<IpAddr>) -> impl Iterator<Item = (IpAddr, &Range)> + '_ {
        let v4 = self.is_v4();
        let (mut idx, mut cur): (usize, Option<u128>) = match last.and_then(|l| {
            self.0
                .iter()
                .position(|r| r.contains(l))
                .map(|i| (i, to_u128(l)))
        }) {
            Some((i, l)) => (i, Some(l)),
            None => (0, None),
        };
        let mut first: Option<(usize, u128)> = None;
        std::iter::from_fn(move || {
            loop {
                let r = &self.0[idx];
                let next = match cur {
                    None => to_u128(r.start),
                    Some(c) if c >= to_u128(r.end) => {
                        idx = (idx + 1) % self.0.len();
                        to_u128(self.0[idx].start)
                    }
                    Some(c) => c + 1,
                };
                cur = Some(next);
                match first {
                    None => first = Some((idx, next)),
                    Some(f) if f == (idx, next) => return None,
                    Some(_) => {}
                }
                let r = &self.0[idx];
                let ip = from_u128(next, v4);
                if r.gateway == Some(ip) {
                    continue;
                }
                return Some((ip, r));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(subnet: &str) -> RawRange {
        RawRange {
            subnet: Some(subnet.into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_follow_the_reference() {
        let r = Range::from_raw(&raw("10.1.2.0/24")).unwrap();
        assert_eq!(r.gateway, Some("10.1.2.1".parse().unwrap()));
        assert_eq!(r.start, "10.1.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.end, "10.1.2.254".parse::<IpAddr>().unwrap());
        let r = Range::from_raw(&raw("fd00::/120")).unwrap();
        assert_eq!(r.end, "fd00::ff".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rejects_bad_ranges() {
        for (r, needle) in [
            (raw("10.1.2.5/24"), "host bits"),
            (raw("10.1.2.0/31"), "too small"),
            (raw("10.1.2.0/33"), "not a CIDR"),
            (raw("nonsense"), "not a CIDR"),
            (
                RawRange {
                    range_start: Some("10.9.0.1".parse().unwrap()),
                    ..raw("10.1.2.0/24")
                },
                "not in subnet",
            ),
            (
                RawRange {
                    range_start: Some("10.1.2.9".parse().unwrap()),
                    range_end: Some("10.1.2.3".parse().unwrap()),
                    ..raw("10.1.2.0/24")
                },
                "after",
            ),
        ] {
            let e = Range::from_raw(&r).unwrap_err();
            assert_eq!(e.cni_code(), 7);
            assert!(e.to_string().contains(needle), "{e}");
        }
        assert!(RangeSet::from_raw(&[raw("10.0.0.0/24"), raw("10.0.0.0/25")]).is_err());
        assert!(RangeSet::from_raw(&[raw("10.0.0.0/24"), raw("fd00::/64")]).is_err());
    }

    #[test]
    fn iteration_is_round_robin_and_skips_the_gateway() {
        let set = RangeSet::from_raw(&[
            RawRange {
                range_start: Some("10.0.0.1".parse().unwrap()),
                range_end: Some("10.0.0.3".parse().unwrap()),
                ..raw("10.0.0.0/24")
            },
            RawRange {
                range_start: Some("10.0.1.5".parse().unwrap()),
                range_end: Some("10.0.1.6".parse().unwrap()),
                ..raw("10.0.1.0/24")
            },
        ])
        .unwrap();
        let all: Vec<String> = set.candidates(None).map(|(ip, _)| ip.to_string()).collect();
        assert_eq!(all, ["10.0.0.2", "10.0.0.3", "10.0.1.5", "10.0.1.6"]);
        let after: Vec<String> = set
            .candidates(Some("10.0.1.5".parse().unwrap()))
            .map(|(ip, _)| ip.to_string())
            .collect();
        assert_eq!(after, ["10.0.1.6", "10.0.0.2", "10.0.0.3", "10.0.1.5"]);
        // A last-reserved address outside the set (ranges changed) starts from the beginning.
        let fresh: Vec<String> = set
            .candidates(Some("192.168.0.1".parse().unwrap()))
            .map(|(ip, _)| ip.to_string())
            .collect();
        assert_eq!(fresh, all);
    }
}
