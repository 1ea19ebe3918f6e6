//! The records that answer a lookup, read from the catalog view as Consul's DNS interface
//! answers: a service's instances that have no critical check (warning ones included), as
//! address records or SRV records whose targets' addresses go in the additional section;
//! a node's address; a hex-spelled address; the zone's SOA and NS. Names that exist but
//! hold nothing of the asked type get an empty answer with the SOA (NODATA); names that do
//! not exist get NXDOMAIN with the SOA.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_registry::catalog::Entry;
use berth_registry::{Catalog, CheckStatus, Node};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::seq::SliceRandom;

use super::name::{addr_hex, parse, Lookup, Parsed, DOMAIN};
use crate::registry::DATACENTER;

/// The TTLs of answers, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ttls {
    /// Of records about services (their additional records included).
    pub service: u32,
    /// Of records about nodes and addresses.
    pub node: u32,
}

/// An answer record with the additional records that go with it (an SRV target's address):
/// truncation drops them together.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    /// The record of the answer section.
    pub record: Record,
    /// Its records of the additional section.
    pub extra: Vec<Record>,
}

impl Answered {
    fn alone(record: Record) -> Answered {
        Answered {
            record,
            extra: Vec::new(),
        }
    }
}

/// What a query gets, before it is encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The response code.
    pub rcode: ResponseCode,
    /// True when berth is the authority for the name (anything under `consul.`).
    pub authoritative: bool,
    /// The answer section, in the order sent.
    pub answers: Vec<Answered>,
    /// The authority section (the SOA of a negative answer).
    pub authority: Vec<Record>,
}

impl Answer {
    /// A name that does not exist in the zone.
    fn nxdomain() -> Answer {
        Answer {
            rcode: ResponseCode::NXDomain,
            authoritative: true,
            answers: Vec::new(),
            authority: vec![soa()],
        }
    }

    /// `answers`, or NODATA (the SOA) when there are none.
    fn records(answers: Vec<Answered>) -> Answer {
        let authority = if answers.is_empty() {
            vec![soa()]
        } else {
            Vec::new()
        };
        Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers,
            authority,
        }
    }
}

fn zone() -> Name {
    Name::from_labels([DOMAIN]).unwrap_or_else(|_| Name::root())
}

/// Names made of labels berth spells itself (ASCII words of a few letters).
fn fixed_name(labels: &[&str]) -> Name {
    Name::from_labels(labels.iter().copied()).unwrap_or_else(|_| Name::root())
}

/// The zone's SOA, as Consul's defaults make it (refresh 1h, retry 10m, expire 1d, a
/// negative TTL of 0); the serial is the time, as Consul's.
fn soa() -> Record {
    let serial = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1);
    let soa = SOA::new(
        fixed_name(&["ns", DOMAIN]),
        fixed_name(&["hostmaster", DOMAIN]),
        serial,
        3600,
        600,
        86400,
        0,
    );
    Record::from_rdata(zone(), 0, RData::SOA(soa))
}

/// True when `qtype` asks for records of type `of`.
fn wants(qtype: RecordType, of: RecordType) -> bool {
    qtype == of || qtype == RecordType::ANY
}

/// The records that give `owner` the address `addr`: an A or an AAAA for an IP address, a
/// CNAME for a host name; those of the types `qtype` asks for.
fn address_records(owner: &Name, addr: &str, qtype: RecordType, ttl: u32) -> Vec<Record> {
    let data = match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) if wants(qtype, RecordType::A) => RData::A(A(v4)),
        Ok(IpAddr::V6(v6)) if wants(qtype, RecordType::AAAA) => RData::AAAA(AAAA(v6)),
        Ok(_) => return Vec::new(),
        Err(_) => {
            let asks = matches!(
                qtype,
                RecordType::A | RecordType::AAAA | RecordType::CNAME | RecordType::ANY
            );
            match host_name(addr) {
                Some(host) if asks => RData::CNAME(CNAME(host)),
                _ => return Vec::new(),
            }
        }
    };
    vec![Record::from_rdata(owner.clone(), ttl, data)]
}

/// A host name given as an address, as a fully qualified name.
fn host_name(addr: &str) -> Option<Name> {
    if addr.is_empty() {
        return None;
    }
    let mut name = Name::from_ascii(addr).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// `<label>.<kind>.dc1.consul.`
fn in_dc(label: &str, kind: &str) -> Option<Name> {
    Name::from_ascii(format!("{label}.{kind}.{DATACENTER}.{DOMAIN}.")).ok()
}

/// The address an instance is reached at: its own, else its node's.
fn instance_address(entry: &Entry) -> &str {
    if entry.service.value.address.is_empty() {
        &entry.node.value.address
    } else {
        &entry.service.value.address
    }
}

/// The instances DNS serves: no critical check, and `tag` among their tags if given
/// (compared in any case, as Consul does).
pub fn healthy(entries: Vec<Entry>, tag: Option<&str>) -> Vec<Entry> {
    entries
        .into_iter()
        .filter(|e| e.status() != CheckStatus::Critical)
        .filter(|e| {
            tag.is_none_or(|tag| {
                e.service
                    .value
                    .tags
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(tag))
            })
        })
        .collect()
}

/// The address records of `entries` under `qname`, one per distinct address.
pub fn service_addresses(
    qname: &Name,
    qtype: RecordType,
    entries: &[Entry],
    ttl: u32,
) -> Vec<Answered> {
    let mut out: Vec<Answered> = Vec::new();
    for entry in entries {
        for record in address_records(qname, instance_address(entry), qtype, ttl) {
            if !out.iter().any(|a| a.record == record) {
                out.push(Answered::alone(record));
            }
        }
    }
    out
}

/// One SRV record per instance: priority 1, the weight of its state, its port, and a target
/// whose address goes with it: its node (`<node>.node.dc1.consul.`) when the instance uses
/// the node's address, else its own address spelled in hex (`<hex>.addr.dc1.consul.`), or
/// its host name as it is.
pub fn service_srv(qname: &Name, entries: &[Entry], ttl: u32) -> Vec<Answered> {
    entries
        .iter()
        .filter_map(|entry| {
            let service = &entry.service.value;
            let node = &entry.node.value;
            let weight = match entry.status() {
                CheckStatus::Warning => service.weights.warning,
                _ => service.weights.passing,
            };
            let weight = u16::try_from(weight).unwrap_or(u16::MAX);
            let addr = instance_address(entry);
            let own = !service.address.is_empty() && service.address != node.address;
            let by_addr = || {
                let ip = addr.parse::<IpAddr>().ok()?;
                in_dc(&addr_hex(ip), "addr")
            };
            let target = match (own, addr.parse::<IpAddr>()) {
                (false, _) => in_dc(&node.name, "node").or_else(by_addr),
                (true, Ok(_)) => by_addr(),
                (true, Err(_)) => host_name(addr),
            }?;
            let extra = match addr.parse::<IpAddr>() {
                Ok(_) => address_records(&target, addr, RecordType::ANY, ttl),
                Err(_) if !own => address_records(&target, addr, RecordType::ANY, ttl),
                Err(_) => Vec::new(),
            };
            let srv = SRV::new(1, weight, service.port, target);
            Some(Answered {
                record: Record::from_rdata(qname.clone(), ttl, RData::SRV(srv)),
                extra,
            })
        })
        .collect()
}

/// The answer to `qtype` for `qname`, from `catalog`.
pub fn answer(catalog: &Catalog, qname: &Name, qtype: RecordType, ttls: Ttls) -> Answer {
    let lookup = match parse(qname) {
        Parsed::Lookup(lookup) => lookup,
        Parsed::Unknown => return Answer::nxdomain(),
        // Not berth's zone: it does not exist here, and berth is no authority for it.
        Parsed::Outside => {
            return Answer {
                rcode: ResponseCode::NXDomain,
                authoritative: false,
                answers: Vec::new(),
                authority: Vec::new(),
            }
        }
    };
    match lookup {
        Lookup::Apex => Answer::records(apex(catalog, qname, qtype, ttls.node)),
        Lookup::Service { name, tag } => {
            let mut entries = healthy(service_entries(catalog, &name), tag.as_deref());
            if entries.is_empty() {
                return Answer::nxdomain();
            }
            entries.shuffle(&mut rand::rng());
            let answers = match qtype {
                RecordType::SRV => service_srv(qname, &entries, ttls.service),
                _ => service_addresses(qname, qtype, &entries, ttls.service),
            };
            Answer::records(answers)
        }
        Lookup::Node(name) => match find_node(catalog, &name) {
            Some(node) => Answer::records(
                address_records(qname, &node.address, qtype, ttls.node)
                    .into_iter()
                    .map(Answered::alone)
                    .collect(),
            ),
            None => Answer::nxdomain(),
        },
        Lookup::Addr(ip) => Answer::records(
            address_records(qname, &ip.to_string(), qtype, ttls.node)
                .into_iter()
                .map(Answered::alone)
                .collect(),
        ),
    }
}

/// The instances of service `name`, matched in any case when no name matches exactly
/// (DNS names are case-insensitive).
fn service_entries(catalog: &Catalog, name: &str) -> Vec<Entry> {
    let entries = catalog.entries(name);
    if !entries.is_empty() {
        return entries;
    }
    match catalog
        .service_names()
        .into_keys()
        .find(|n| n.eq_ignore_ascii_case(name))
    {
        Some(real) => catalog.entries(&real),
        None => Vec::new(),
    }
}

/// Node `name`, matched in any case when no name matches exactly.
fn find_node(catalog: &Catalog, name: &str) -> Option<Node> {
    catalog.node(name).map(|r| r.value).or_else(|| {
        catalog
            .nodes()
            .into_iter()
            .map(|r| r.value)
            .find(|n| n.name.eq_ignore_ascii_case(name))
    })
}

/// `consul.` itself: its SOA, and an NS record per live berth member (the member's node,
/// with its address in the additional section).
fn apex(catalog: &Catalog, qname: &Name, qtype: RecordType, ttl: u32) -> Vec<Answered> {
    let mut out = Vec::new();
    if wants(qtype, RecordType::SOA) {
        let mut record = soa();
        record.name = qname.clone();
        out.push(Answered::alone(record));
    }
    if wants(qtype, RecordType::NS) {
        for member in catalog.live_members() {
            let Some(node) = catalog.node(&member).map(|r| r.value) else {
                continue;
            };
            let Some(target) = in_dc(&node.name, "node") else {
                continue;
            };
            let extra = address_records(&target, &node.address, RecordType::ANY, ttl);
            out.push(Answered {
                record: Record::from_rdata(qname.clone(), ttl, RData::NS(NS(target))),
                extra,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use berth_registry::catalog::Record as Rec;
    use berth_registry::model::Weights;
    use berth_registry::{Check, Service};

    use super::*;

    fn rec<T>(value: T) -> Rec<T> {
        Rec {
            value,
            create: 1,
            modify: 1,
        }
    }

    fn entry(node: &str, node_addr: &str, id: &str, addr: &str, status: &[CheckStatus]) -> Entry {
        Entry {
            node: rec(Node {
                name: node.into(),
                address: node_addr.into(),
                ..Node::default()
            }),
            service: rec(Service {
                id: id.into(),
                name: "web".into(),
                node: node.into(),
                tags: vec!["Blue".into()],
                address: addr.into(),
                port: 8080,
                weights: Weights {
                    passing: 10,
                    warning: 3,
                },
                ..Service::default()
            }),
            checks: status
                .iter()
                .map(|s| {
                    rec(Check {
                        status: *s,
                        ..Check::default()
                    })
                })
                .collect(),
        }
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("a valid name")
    }

    #[test]
    fn critical_instances_are_left_out_and_warning_ones_kept() {
        use CheckStatus::*;
        let entries = vec![
            entry("n1", "10.0.0.1", "a", "", &[Passing]),
            entry("n1", "10.0.0.1", "b", "", &[Passing, Critical]),
            entry("n2", "10.0.0.2", "c", "", &[Warning]),
            entry("n3", "10.0.0.3", "d", "", &[]),
        ];
        let ids = |es: Vec<Entry>| {
            es.into_iter()
                .map(|e| e.service.value.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(healthy(entries.clone(), None)), ["a", "c", "d"]);
        assert_eq!(ids(healthy(entries.clone(), Some("blue"))), ["a", "c", "d"]);
        assert!(healthy(entries, Some("green")).is_empty());
    }

    #[test]
    fn address_records_follow_the_instance_and_are_distinct() {
        let q = name("web.service.consul.");
        let entries = vec![
            entry("n1", "10.0.0.1", "a", "", &[]),
            entry("n1", "10.0.0.1", "b", "", &[]),
            entry("n2", "10.0.0.2", "c", "10.0.0.9", &[]),
            entry("n3", "10.0.0.3", "d", "2001:db8::1", &[]),
        ];
        let a = service_addresses(&q, RecordType::A, &entries, 7);
        let data: Vec<_> = a.iter().map(|a| a.record.data.clone()).collect();
        assert_eq!(
            data,
            [
                RData::A(A("10.0.0.1".parse().expect("ip"))),
                RData::A(A("10.0.0.9".parse().expect("ip")))
            ]
        );
        assert!(a.iter().all(|a| a.record.ttl == 7 && a.record.name == q));
        let aaaa = service_addresses(&q, RecordType::AAAA, &entries, 7);
        assert_eq!(
            aaaa.iter()
                .map(|a| a.record.data.clone())
                .collect::<Vec<_>>(),
            [RData::AAAA(AAAA("2001:db8::1".parse().expect("ip")))]
        );
        let host = vec![entry("n1", "10.0.0.1", "a", "db.example.org", &[])];
        let cname = service_addresses(&q, RecordType::A, &host, 0);
        assert_eq!(
            cname[0].record.data,
            RData::CNAME(CNAME(name("db.example.org.")))
        );
    }

    #[test]
    fn srv_targets_name_the_node_or_the_hex_address() {
        use CheckStatus::*;
        let q = name("web.service.consul.");
        let entries = vec![
            entry("n1", "10.0.0.1", "a", "", &[Passing]),
            entry("n2", "10.0.0.2", "b", "10.0.0.2", &[Warning]),
            entry("n3", "10.0.0.3", "c", "10.0.0.5", &[]),
        ];
        let srv = service_srv(&q, &entries, 5);
        let view: Vec<_> = srv
            .iter()
            .map(|a| match &a.record.data {
                RData::SRV(s) => (s.priority, s.weight, s.port, s.target.to_string()),
                other => panic!("not an SRV: {other:?}"),
            })
            .collect();
        assert_eq!(
            view,
            [
                (1, 10, 8080, "n1.node.dc1.consul.".to_string()),
                (1, 3, 8080, "n2.node.dc1.consul.".to_string()),
                (1, 10, 8080, "0a000005.addr.dc1.consul.".to_string()),
            ]
        );
        let extra: Vec<_> = srv
            .iter()
            .map(|a| {
                assert_eq!(a.extra.len(), 1);
                (a.extra[0].name.to_string(), a.extra[0].data.clone())
            })
            .collect();
        assert_eq!(
            extra[0],
            (
                "n1.node.dc1.consul.".to_string(),
                RData::A(A("10.0.0.1".parse().expect("ip")))
            )
        );
        assert_eq!(
            extra[2],
            (
                "0a000005.addr.dc1.consul.".to_string(),
                RData::A(A("10.0.0.5".parse().expect("ip")))
            )
        );
    }

    #[test]
    fn negative_answers_carry_the_soa() {
        let catalog = Catalog::new();
        let nx = answer(
            &catalog,
            &name("nope.service.consul."),
            RecordType::A,
            Ttls::default(),
        );
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
        assert_eq!(nx.authority.len(), 1);
        assert_eq!(nx.authority[0].record_type(), RecordType::SOA);
        let addr = answer(
            &catalog,
            &name("0a000005.addr.consul."),
            RecordType::AAAA,
            Ttls::default(),
        );
        assert_eq!(addr.rcode, ResponseCode::NoError);
        assert!(addr.answers.is_empty());
        assert_eq!(addr.authority[0].record_type(), RecordType::SOA);
        let outside = answer(
            &catalog,
            &name("example.com."),
            RecordType::A,
            Ttls::default(),
        );
        assert_eq!(outside.rcode, ResponseCode::NXDomain);
        assert!(!outside.authoritative);
        let soa = answer(&catalog, &name("consul."), RecordType::SOA, Ttls::default());
        assert_eq!(soa.answers.len(), 1);
        assert_eq!(soa.answers[0].record.record_type(), RecordType::SOA);
    }
}
