//! What a query name asks for: the names of Consul's DNS interface under `consul.`, read
//! from the right (`[tag.]<service>.service[.<dc>].consul`, `_<service>._<tag>.service…`,
//! `<node>.node[.<dc>].consul`, `<hex>.addr[.<dc>].consul`, and `consul.` itself). Labels
//! that are keywords match in any case; names keep the case they were asked in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::Name;

use crate::registry::DATACENTER;

/// The zone berth answers for.
pub const DOMAIN: &str = "consul";

/// What a name under `consul.` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// `consul.` itself: its SOA and NS records.
    Apex,
    /// The healthy instances of a service, those with `tag` only if one is given.
    Service {
        /// Service name.
        name: String,
        /// Tag the instances must carry.
        tag: Option<String>,
    },
    /// A node's address.
    Node(String),
    /// An address spelled in hex (`0a000005.addr.dc1.consul`), as SRV targets name a
    /// service's own address.
    Addr(IpAddr),
}

/// How a query name relates to the zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// In `consul.`, asking for this.
    Lookup(Lookup),
    /// In `consul.`, but naming nothing berth answers (another datacenter, prepared
    /// queries, a malformed service name): NXDOMAIN.
    Unknown,
    /// Not in `consul.`.
    Outside,
}

/// Reads a query name.
pub fn parse(name: &Name) -> Parsed {
    let mut labels = Vec::with_capacity(usize::from(name.num_labels()));
    for label in name.iter() {
        match std::str::from_utf8(label) {
            Ok(l) => labels.push(l),
            // Nothing berth registers has a name that is not UTF-8.
            Err(_) => return in_zone_or_outside(name),
        }
    }
    match labels.pop() {
        Some(last) if last.eq_ignore_ascii_case(DOMAIN) => {}
        _ => return Parsed::Outside,
    }
    if labels.is_empty() {
        return Parsed::Lookup(Lookup::Apex);
    }
    let kind_at = |i: usize| {
        labels.get(i).and_then(|l| {
            ["service", "node", "addr"]
                .into_iter()
                .find(|k| l.eq_ignore_ascii_case(k))
        })
    };
    let n = labels.len();
    let (kind, rest) = match kind_at(n - 1) {
        Some(kind) => (kind, &labels[..n - 1]),
        // The label after the kind is the datacenter; berth has one.
        None => match n.checked_sub(2).and_then(kind_at) {
            Some(kind) if labels[n - 1].eq_ignore_ascii_case(DATACENTER) => {
                (kind, &labels[..n - 2])
            }
            _ => return Parsed::Unknown,
        },
    };
    let lookup = match (kind, rest) {
        ("service", [service]) => service_lookup(service, None),
        ("service", [first, second]) => match (first.strip_prefix('_'), second.strip_prefix('_')) {
            // RFC 2782: `_<service>._<protocol>`, the protocol a tag; `_tcp` filters nothing.
            (Some(service), Some(tag)) if tag.eq_ignore_ascii_case("tcp") => {
                service_lookup(service, None)
            }
            (Some(service), Some(tag)) => service_lookup(service, Some(tag)),
            _ => service_lookup(second, Some(first)),
        },
        ("node", rest) if !rest.is_empty() => Some(Lookup::Node(rest.join("."))),
        ("addr", [hex]) => hex_addr(hex).map(Lookup::Addr),
        _ => None,
    };
    lookup.map_or(Parsed::Unknown, Parsed::Lookup)
}

fn in_zone_or_outside(name: &Name) -> Parsed {
    match name.iter().next_back() {
        Some(last) if last.eq_ignore_ascii_case(DOMAIN.as_bytes()) => Parsed::Unknown,
        _ => Parsed::Outside,
    }
}

fn service_lookup(name: &str, tag: Option<&str>) -> Option<Lookup> {
    if name.is_empty() || tag.is_some_and(str::is_empty) {
        return None;
    }
    Some(Lookup::Service {
        name: name.to_string(),
        tag: tag.map(String::from),
    })
}

/// An address as `<hex>.addr` spells it: 8 hex digits for IPv4, 32 for IPv6.
fn hex_addr(hex: &str) -> Option<IpAddr> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        8 => u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        32 => u128::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        _ => None,
    }
}

/// The hex spelling of an address, as [`hex_addr`] reads it.
pub fn addr_hex(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(name: &str) -> Parsed {
        parse(&Name::from_ascii(name).expect("a valid name"))
    }

    fn service(name: &str, tag: Option<&str>) -> Parsed {
        Parsed::Lookup(Lookup::Service {
            name: name.into(),
            tag: tag.map(String::from),
        })
    }

    #[test]
    fn service_names_in_every_form() {
        assert_eq!(parsed("web.service.consul."), service("web", None));
        assert_eq!(parsed("Web.SERVICE.Consul."), service("Web", None));
        assert_eq!(parsed("web.service.dc1.consul."), service("web", None));
        assert_eq!(
            parsed("blue.web.service.consul."),
            service("web", Some("blue"))
        );
        assert_eq!(
            parsed("blue.web.service.dc1.consul."),
            service("web", Some("blue"))
        );
        assert_eq!(parsed("_web._tcp.service.consul."), service("web", None));
        assert_eq!(parsed("_web._TCP.service.consul."), service("web", None));
        assert_eq!(
            parsed("_web._blue.service.dc1.consul."),
            service("web", Some("blue"))
        );
        // Not RFC 2782 unless both labels start with an underscore.
        assert_eq!(
            parsed("_web.tcp.service.consul."),
            service("tcp", Some("_web"))
        );
    }

    #[test]
    fn nodes_addresses_and_the_apex() {
        assert_eq!(
            parsed("n1.node.consul."),
            Parsed::Lookup(Lookup::Node("n1".into()))
        );
        assert_eq!(
            parsed("host.example.node.dc1.consul."),
            Parsed::Lookup(Lookup::Node("host.example".into()))
        );
        assert_eq!(
            parsed("0a000005.addr.dc1.consul."),
            Parsed::Lookup(Lookup::Addr("10.0.0.5".parse().expect("ip")))
        );
        assert_eq!(
            parsed("20010db8000000000000000000000001.addr.consul."),
            Parsed::Lookup(Lookup::Addr("2001:db8::1".parse().expect("ip")))
        );
        assert_eq!(parsed("consul."), Parsed::Lookup(Lookup::Apex));
        assert_eq!(parsed("CONSUL"), Parsed::Lookup(Lookup::Apex));
    }

    #[test]
    fn what_is_not_answered() {
        assert_eq!(parsed("example.com."), Parsed::Outside);
        assert_eq!(parsed("."), Parsed::Outside);
        assert_eq!(parsed("consul.example."), Parsed::Outside);
        assert_eq!(parsed("web.service.dc2.consul."), Parsed::Unknown);
        assert_eq!(parsed("web.query.consul."), Parsed::Unknown);
        assert_eq!(parsed("service.consul."), Parsed::Unknown);
        assert_eq!(parsed("node.consul."), Parsed::Unknown);
        assert_eq!(parsed("a.b.web.service.consul."), Parsed::Unknown);
        assert_eq!(parsed("zz000005.addr.consul."), Parsed::Unknown);
        assert_eq!(parsed("0a0005.addr.consul."), Parsed::Unknown);
        assert_eq!(parsed("dc1.consul."), Parsed::Unknown);
    }

    #[test]
    fn hex_addresses_round_trip() {
        for ip in [
            "10.0.0.5",
            "255.255.255.255",
            "::1",
            "2001:db8::ff00:42:8329",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(hex_addr(&addr_hex(ip)), Some(ip));
        }
        assert_eq!(addr_hex("10.0.0.5".parse().expect("ip")), "0a000005");
    }
}
