//! One DNS message in, one out: decodes a query, has it answered, and encodes the response
//! within the size the transport allows (512 bytes over UDP without EDNS, the client's EDNS
//! size with it, 65535 over TCP), dropping answers (with their additional records) from the
//! end and setting TC when they do not fit. Anything that is not a well-formed standard
//! query gets FORMERR, NOTIMP or REFUSED; what cannot be answered at all (shorter than a
//! header, or a response) gets nothing.

use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};

use super::answer::{Answer, Answered};

/// Bytes of a DNS header.
const HEADER: usize = 12;
/// The UDP payload berth advertises in its EDNS record (and reads: its receive buffer).
pub const EDNS_PAYLOAD: u16 = 4096;
/// Largest message over TCP (its 2-byte length prefix).
const TCP_MAX: usize = u16::MAX as usize;

/// How a message travels, which bounds its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: 512 bytes, or the size the query's EDNS record gives.
    Udp,
    /// A TCP stream.
    Tcp,
}

/// A response to send, with what it is counted as.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The encoded response.
    pub bytes: Vec<u8>,
    /// The type asked for, when the query could be read.
    pub qtype: Option<RecordType>,
    /// The response code.
    pub rcode: ResponseCode,
    /// True when answers were dropped to fit.
    pub truncated: bool,
}

/// Answers `packet`, asking `resolve` for the records of a well-formed query. `None`: the
/// packet gets no answer.
pub fn reply(
    packet: &[u8],
    transport: Transport,
    resolve: impl FnOnce(&Name, RecordType) -> Answer,
) -> Option<Reply> {
    if packet.len() < HEADER || packet[2] & 0x80 != 0 {
        // No header to answer with, or a response (answering one could start a loop).
        return None;
    }
    let request = match Message::from_vec(packet) {
        Ok(request) => request,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable DNS query");
            let id = u16::from_be_bytes([packet[0], packet[1]]);
            let op_code = OpCode::from_u8((packet[2] >> 3) & 0x0f);
            let response = Message::error_msg(id, op_code, ResponseCode::FormErr);
            return encode_plain(response, None);
        }
    };
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.queries = request.queries.clone();
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        response.edns = Some(edns);
    }
    let qtype = request.queries.first().map(|q| q.query_type());
    let refuse = |mut response: Message, rcode: ResponseCode| {
        response.metadata.response_code = rcode;
        encode_plain(response, qtype)
    };
    if request.metadata.op_code != OpCode::Query {
        return refuse(response, ResponseCode::NotImp);
    }
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return refuse(response, ResponseCode::BADVERS);
    }
    let [query] = request.queries.as_slice() else {
        return refuse(response, ResponseCode::FormErr);
    };
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
        return refuse(response, ResponseCode::Refused);
    }
    if matches!(
        query.query_type(),
        RecordType::AXFR | RecordType::IXFR | RecordType::OPT
    ) {
        return refuse(response, ResponseCode::Refused);
    }
    let answer = resolve(query.name(), query.query_type());
    response.metadata.response_code = answer.rcode;
    response.metadata.authoritative = answer.authoritative;
    let limit = match transport {
        Transport::Udp => usize::from(request.max_payload()),
        Transport::Tcp => TCP_MAX,
    };
    fit(response, &answer, limit, qtype)
}

/// Encodes `response` with as many of `answer`'s records as fit in `limit` bytes.
fn fit(
    mut response: Message,
    answer: &Answer,
    limit: usize,
    qtype: Option<RecordType>,
) -> Option<Reply> {
    response.authorities = answer.authority.clone();
    let total = answer.answers.len();
    let full = encode_with(&mut response, &answer.answers)?;
    if full.len() <= limit {
        return Some(Reply {
            bytes: full,
            qtype,
            rcode: answer.rcode,
            truncated: false,
        });
    }
    // The most answers that fit (more answers never make a message smaller): `fits` answers
    // fit (or are none), `too_many` do not.
    response.metadata.truncation = true;
    let (mut fits, mut too_many) = (0, total);
    while too_many - fits > 1 {
        let mid = fits + (too_many - fits) / 2;
        if encode_with(&mut response, &answer.answers[..mid])?.len() <= limit {
            fits = mid;
        } else {
            too_many = mid;
        }
    }
    Some(Reply {
        bytes: encode_with(&mut response, &answer.answers[..fits])?,
        qtype,
        rcode: answer.rcode,
        truncated: true,
    })
}

/// Encodes `response` with `answers` and their additional records (each once).
fn encode_with(response: &mut Message, answers: &[Answered]) -> Option<Vec<u8>> {
    response.answers = answers.iter().map(|a| a.record.clone()).collect();
    let mut extra: Vec<Record> = Vec::new();
    for record in answers.iter().flat_map(|a| &a.extra) {
        if !extra.contains(record) {
            extra.push(record.clone());
        }
    }
    response.additionals = extra;
    match response.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::warn!(error = %e, "encoding a DNS response");
            None
        }
    }
}

fn encode_plain(response: Message, qtype: Option<RecordType>) -> Option<Reply> {
    let rcode = response.metadata.response_code;
    match response.to_vec() {
        Ok(bytes) => Some(Reply {
            bytes,
            qtype,
            rcode,
            truncated: false,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "encoding a DNS error response");
            None
        }
    }
}

/// The `type` label of the query counter: the types a client of this interface asks for,
/// anything else as `other` (so odd queries cannot grow the series without bound).
pub fn type_label(qtype: Option<RecordType>) -> &'static str {
    match qtype {
        None => "none",
        Some(RecordType::A) => "A",
        Some(RecordType::AAAA) => "AAAA",
        Some(RecordType::SRV) => "SRV",
        Some(RecordType::ANY) => "ANY",
        Some(RecordType::SOA) => "SOA",
        Some(RecordType::NS) => "NS",
        Some(RecordType::CNAME) => "CNAME",
        Some(RecordType::TXT) => "TXT",
        Some(RecordType::PTR) => "PTR",
        Some(_) => "other",
    }
}

/// The `rcode` label of the query counter.
pub fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::{MessageType, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::RData;

    use super::*;

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.edns = Some(e);
        }
        m.to_vec().expect("encode")
    }

    /// `n` A records, each with an additional record.
    fn many(n: u32) -> Answer {
        let owner = Name::from_ascii("web.service.consul.").expect("name");
        Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers: (0..n)
                .map(|i| {
                    let ip = Ipv4Addr::from(0x0a00_0000 + i);
                    let extra_owner =
                        Name::from_ascii(format!("n{i}.node.dc1.consul.")).expect("name");
                    Answered {
                        record: Record::from_rdata(owner.clone(), 0, RData::A(A(ip))),
                        extra: vec![Record::from_rdata(extra_owner, 0, RData::A(A(ip)))],
                    }
                })
                .collect(),
            authority: Vec::new(),
        }
    }

    #[test]
    fn an_answer_keeps_the_id_question_and_flags() {
        let packet = query("web.service.consul.", RecordType::A, None);
        let reply = reply(&packet, Transport::Udp, |name, qtype| {
            assert_eq!(name.to_string(), "web.service.consul.");
            assert_eq!(qtype, RecordType::A);
            many(2)
        })
        .expect("an answer");
        let m = Message::from_vec(&reply.bytes).expect("decodes");
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired);
        assert!(!m.metadata.truncation);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.answers.len(), 2);
        assert_eq!(m.additionals.len(), 2);
        assert!(m.edns.is_none());
    }

    #[test]
    fn udp_without_edns_is_cut_to_512_bytes_with_tc() {
        let packet = query("web.service.consul.", RecordType::A, None);
        let reply = reply(&packet, Transport::Udp, |_, _| many(40)).expect("an answer");
        assert!(reply.bytes.len() <= 512, "{}", reply.bytes.len());
        assert!(reply.truncated);
        let m = Message::from_vec(&reply.bytes).expect("decodes");
        assert!(m.metadata.truncation);
        assert!(!m.answers.is_empty() && m.answers.len() < 40);
        // Every kept answer keeps its additional record, and no other is sent.
        assert_eq!(m.additionals.len(), m.answers.len());
        // One more answer would not have fit.
        let one_more = many(m.answers.len() as u32 + 1);
        let bigger = reply_of(&packet, Transport::Udp, one_more);
        assert!(bigger.truncated);
    }

    fn reply_of(packet: &[u8], transport: Transport, answer: Answer) -> Reply {
        reply(packet, transport, |_, _| answer).expect("an answer")
    }

    #[test]
    fn edns_and_tcp_allow_more() {
        let packet = query("web.service.consul.", RecordType::A, Some(4096));
        let r = reply_of(&packet, Transport::Udp, many(40));
        assert!(!r.truncated && r.bytes.len() > 512);
        let m = Message::from_vec(&r.bytes).expect("decodes");
        assert_eq!(m.answers.len(), 40);
        assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(EDNS_PAYLOAD));
        let plain = query("web.service.consul.", RecordType::A, None);
        let r = reply_of(&plain, Transport::Tcp, many(40));
        assert!(!r.truncated);
        assert_eq!(
            Message::from_vec(&r.bytes).expect("decodes").answers.len(),
            40
        );
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        assert!(reply(b"short", Transport::Udp, |_, _| unreachable!()).is_none());
        let mut packet = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x05];
        packet.extend_from_slice(&[0xff; 40]);
        let r = reply(&packet, Transport::Udp, |_, _| unreachable!()).expect("an answer");
        assert_eq!(r.rcode, ResponseCode::FormErr);
        let m = Message::from_vec(&r.bytes).expect("decodes");
        assert_eq!(m.metadata.id, 0xabcd);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // A response is never answered.
        let mut response = query("web.service.consul.", RecordType::A, None);
        response[2] |= 0x80;
        assert!(reply(&response, Transport::Udp, |_, _| unreachable!()).is_none());
    }

    #[test]
    fn two_questions_are_formerr_and_other_opcodes_notimp() {
        let mut m = Message::query();
        for n in ["a.service.consul.", "b.service.consul."] {
            m.add_query(Query::query(
                Name::from_ascii(n).expect("name"),
                RecordType::A,
            ));
        }
        let packet = m.to_vec().expect("encode");
        let r = reply(&packet, Transport::Udp, |_, _| unreachable!()).expect("an answer");
        assert_eq!(r.rcode, ResponseCode::FormErr);
        let mut packet = query("web.service.consul.", RecordType::A, None);
        packet[2] = (packet[2] & 0x87) | (u8::from(OpCode::Status) << 3);
        let r = reply(&packet, Transport::Udp, |_, _| unreachable!()).expect("an answer");
        assert_eq!(r.rcode, ResponseCode::NotImp);
    }
}
