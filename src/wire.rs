//! DNS messages at the byte level, for the query path.
//!
//! Queries are read without building a `Message`: the header, the one question and the OPT
//! record are all a filtering resolver needs, and reading them in place keeps the hot path free
//! of allocation. Answers that need no upstream (sinkhole, refusals, errors) are written straight
//! into a reused buffer. Upstream answers are encoded once by hickory-proto, then cached and
//! served from their bytes (see [`crate::cache`]).
//!
//! Malformed input follows the RFCs: anything too short to carry an ID, or that is itself a
//! response, is dropped; anything with a readable header gets FORMERR, NOTIMP or BADVERS.

use std::net::IpAddr;

use crate::domain::{NameBuilder, QueryName};

/// RR types the query path cares about.
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Alias.
    pub const CNAME: u16 = 5;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// EDNS pseudo-record.
    pub const OPT: u16 = 41;
    /// HTTPS service binding (carries address hints).
    pub const HTTPS: u16 = 65;
    /// Zone transfer.
    pub const AXFR: u16 = 252;
    /// Incremental zone transfer.
    pub const IXFR: u16 = 251;
    /// Everything.
    pub const ANY: u16 = 255;
}

/// Response codes used here.
pub mod rcode {
    /// No error.
    pub const NOERROR: u8 = 0;
    /// Malformed query.
    pub const FORMERR: u8 = 1;
    /// Server failure.
    pub const SERVFAIL: u8 = 2;
    /// Name does not exist.
    pub const NXDOMAIN: u8 = 3;
    /// Not implemented.
    pub const NOTIMP: u8 = 4;
    /// Refused by policy.
    pub const REFUSED: u8 = 5;
    /// EDNS version not supported (extended, 16).
    pub const BADVERS: u16 = 16;
}

/// Extended DNS Error info codes (RFC 8914).
pub mod ede {
    /// Blocked by the operator's policy.
    pub const BLOCKED: u16 = 15;
    /// Censored (required by law or an authority's list).
    pub const CENSORED: u16 = 16;
    /// Filtered at the client's request (a school's own policy).
    pub const FILTERED: u16 = 17;
    /// Refused by access control.
    pub const PROHIBITED: u16 = 18;
    /// Stale answer served.
    pub const STALE_ANSWER: u16 = 3;
    /// Upstream unreachable.
    pub const NO_REACHABLE_AUTHORITY: u16 = 22;
}

/// Largest UDP answer we produce for EDNS clients (the DNS flag day 2020 value).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
const HEADER: usize = 12;

/// What a trusted forwarder said about the real client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientHint {
    /// EDNS Client Subnet (RFC 7871) address.
    Subnet(IpAddr),
    /// dnsmasq `add-mac` option (code 65001).
    Mac([u8; 6]),
}

/// The EDNS part of a query.
#[derive(Debug, Clone, Copy)]
pub struct Edns {
    /// Client's advertised UDP payload size.
    pub udp_size: u16,
    /// DNSSEC OK bit, echoed back.
    pub dnssec_ok: bool,
    /// Version; only 0 exists.
    pub version: u8,
    /// Identity hints from a forwarder (only trusted from configured forwarders).
    pub hint: Option<ClientHint>,
}

/// A parsed query, borrowing the packet.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    /// Transaction ID.
    pub id: u16,
    /// Recursion desired.
    pub rd: bool,
    /// Checking disabled.
    pub cd: bool,
    /// Normalised name.
    pub name: QueryName,
    /// Question type.
    pub qtype: u16,
    /// Question class.
    pub qclass: u16,
    /// The raw question (name, type, class) as the client wrote it: echoed back verbatim so the
    /// client's case (0x20 randomisation) survives.
    pub question: &'a [u8],
    /// EDNS, if the client sent OPT.
    pub edns: Option<Edns>,
}

impl Query<'_> {
    /// Largest response this client accepts over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => e.udp_size.clamp(512, MAX_UDP_PAYLOAD) as usize,
            None => 512,
        }
    }
}

/// Why a packet could not be served as a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// Too short, or a response: say nothing.
    Drop,
    /// Answer with this code, echoing ID, opcode, RD and the question if readable.
    Error {
        /// Transaction ID.
        id: u16,
        /// Bytes 2..4 of the request header.
        flags: u16,
        /// Response code (may be extended, e.g. BADVERS).
        rcode: u16,
        /// Raw question, when one could be read.
        question: Option<(usize, usize)>,
        /// Whether the query had an OPT record.
        edns: bool,
    },
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads a name starting at `at`, following compression pointers (bounded, so loops end), and
/// hands its labels to `label` leftmost first. Returns the offset after the name.
fn read_name(p: &[u8], mut at: usize, mut label: impl FnMut(&[u8])) -> Option<usize> {
    let mut end = None;
    let mut jumps = 0;
    let mut total = 0usize;
    loop {
        let len = *p.get(at)? as usize;
        match len & 0xC0 {
            0x00 => {
                if len == 0 {
                    return Some(end.unwrap_or(at + 1));
                }
                // Labels and their length bytes, plus the root's byte: at most 255 (RFC 1035).
                total += len + 1;
                if total > 254 {
                    return None;
                }
                label(p.get(at + 1..at + 1 + len)?);
                at += 1 + len;
            }
            0xC0 => {
                let target = (be16(p, at)? & 0x3FFF) as usize;
                end.get_or_insert(at + 2);
                jumps += 1;
                // A pointer must point backwards; this also makes loops impossible.
                if target >= at || jumps > 64 {
                    return None;
                }
                at = target;
            }
            _ => return None,
        }
    }
}

/// The offset after a name, checked as [`read_name`] checks it but without following a
/// compression pointer (only that it points backwards) or recording labels: what the per-answer
/// walks over already accepted messages need.
fn skip_name(p: &[u8], mut at: usize) -> Option<usize> {
    let mut total = 0usize;
    loop {
        let len = *p.get(at)? as usize;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => {
                total += len + 1;
                if at + 1 + len > p.len() || total > 254 {
                    return None;
                }
                at += 1 + len;
            }
            0xC0 => {
                let target = (be16(p, at)? & 0x3FFF) as usize;
                return (target < at).then_some(at + 2);
            }
            _ => return None,
        }
    }
}

/// Skips a resource record, returning the offset after it.
fn skip_record(p: &[u8], at: usize) -> Option<usize> {
    record_end(p, skip_name(p, at)?)
}

/// The offset after a record whose owner name ends at `after` (type, class, TTL, rdata), for
/// walks that have already read the owner.
fn record_end(p: &[u8], after: usize) -> Option<usize> {
    let rdlen = be16(p, after + 8)? as usize;
    let end = after + 10 + rdlen;
    (end <= p.len()).then_some(end)
}

/// The offset after the first `qd` questions of a message.
fn skip_questions(p: &[u8], qd: usize) -> Option<usize> {
    let mut at = HEADER;
    for _ in 0..qd {
        at = skip_name(p, at)? + 4;
    }
    Some(at)
}

/// Parses a query packet.
pub fn parse(p: &[u8]) -> Result<Query<'_>, Reject> {
    if p.len() < HEADER {
        return Err(Reject::Drop);
    }
    let id = be16(p, 0).unwrap_or(0);
    let flags = be16(p, 2).unwrap_or(0);
    if flags & 0x8000 != 0 {
        return Err(Reject::Drop);
    }
    let err = |rcode: u16, question: Option<(usize, usize)>, edns: bool| Reject::Error {
        id,
        flags,
        rcode,
        question,
        edns,
    };
    let opcode = (flags >> 11) & 0xF;
    let qd = be16(p, 4).unwrap_or(0);
    let an = be16(p, 6).unwrap_or(0);
    let ns = be16(p, 8).unwrap_or(0);
    let ar = be16(p, 10).unwrap_or(0);
    if qd != 1 {
        return Err(err(rcode::FORMERR as u16, None, false));
    }
    let mut name = NameBuilder::new();
    let Some(after_name) = read_name(p, HEADER, |l| name.push(l)) else {
        return Err(err(rcode::FORMERR as u16, None, false));
    };
    let (Some(qtype), Some(qclass)) = (be16(p, after_name), be16(p, after_name + 2)) else {
        return Err(err(rcode::FORMERR as u16, None, false));
    };
    let q_end = after_name + 4;
    let question = Some((HEADER, q_end));
    if opcode != 0 {
        return Err(err(rcode::NOTIMP as u16, question, false));
    }

    let mut at = q_end;
    for _ in 0..(an as usize + ns as usize) {
        at = skip_record(p, at).ok_or(err(rcode::FORMERR as u16, question, false))?;
    }
    let mut edns = None;
    for _ in 0..ar {
        let mut labels = 0;
        let after =
            read_name(p, at, |_| labels += 1).ok_or(err(rcode::FORMERR as u16, question, false))?;
        let rt = be16(p, after).ok_or(err(rcode::FORMERR as u16, question, false))?;
        let end = record_end(p, after).ok_or(err(rcode::FORMERR as u16, question, false))?;
        if rt == rtype::OPT {
            if edns.is_some() || labels != 0 {
                return Err(err(rcode::FORMERR as u16, question, true));
            }
            edns = Some(read_opt(p, after, end));
        }
        at = end;
    }
    if let Some(e) = edns {
        if e.version != 0 {
            return Err(err(rcode::BADVERS, question, true));
        }
    }
    let name = name
        .finish()
        .map_err(|_| err(rcode::FORMERR as u16, question, edns.is_some()))?;
    Ok(Query {
        id,
        rd: flags & 0x0100 != 0,
        cd: flags & 0x0010 != 0,
        name,
        qtype,
        qclass,
        question: &p[HEADER..q_end],
        edns,
    })
}

fn read_opt(p: &[u8], after_name: usize, end: usize) -> Edns {
    let udp_size = be16(p, after_name + 2).unwrap_or(512);
    let ttl_hi = be16(p, after_name + 4).unwrap_or(0);
    let ttl_lo = be16(p, after_name + 6).unwrap_or(0);
    let mut hint = None;
    let mut at = after_name + 10;
    while at + 4 <= end {
        let code = be16(p, at).unwrap_or(0);
        let len = be16(p, at + 2).unwrap_or(0) as usize;
        let data = p.get(at + 4..(at + 4 + len).min(end)).unwrap_or(&[]);
        match code {
            8 => hint = read_ecs(data).map(ClientHint::Subnet).or(hint),
            65001 if data.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(data);
                hint = Some(ClientHint::Mac(mac));
            }
            _ => {}
        }
        at += 4 + len;
    }
    Edns {
        udp_size,
        dnssec_ok: ttl_lo & 0x8000 != 0,
        version: (ttl_hi & 0xFF) as u8,
        hint,
    }
}

fn read_ecs(data: &[u8]) -> Option<IpAddr> {
    let family = be16(data, 0)?;
    let addr = data.get(4..)?;
    match family {
        1 => {
            let mut o = [0u8; 4];
            o[..addr.len().min(4)].copy_from_slice(&addr[..addr.len().min(4)]);
            Some(IpAddr::from(o))
        }
        2 => {
            let mut o = [0u8; 16];
            o[..addr.len().min(16)].copy_from_slice(&addr[..addr.len().min(16)]);
            Some(IpAddr::from(o))
        }
        _ => None,
    }
}

/// Bytes a normalised name takes on the wire, uncompressed.
fn name_len(name: &str) -> usize {
    name.len() + if name.is_empty() { 1 } else { 2 }
}

/// Writes answers into a reused buffer.
pub struct Writer<'b> {
    buf: &'b mut Vec<u8>,
}

impl<'b> Writer<'b> {
    /// Starts a response to `q` with `rcode`; copies the question verbatim.
    pub fn respond(buf: &'b mut Vec<u8>, q: &Query<'_>, rcode: u8, aa: bool) -> Self {
        buf.clear();
        buf.extend_from_slice(&q.id.to_be_bytes());
        let mut flags: u16 = 0x8000 | 0x0080 | rcode as u16; // QR, RA
        if q.rd {
            flags |= 0x0100;
        }
        if aa {
            flags |= 0x0400;
        }
        buf.extend_from_slice(&flags.to_be_bytes());
        buf.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        buf.extend_from_slice(q.question);
        Writer { buf }
    }

    /// Continues a response already in `buf` (e.g. copied from the cache).
    pub fn append(buf: &'b mut Vec<u8>) -> Self {
        Writer { buf }
    }

    /// Starts an error response from a [`Reject::Error`] and the original packet.
    pub fn reject(buf: &'b mut Vec<u8>, packet: &[u8], r: &Reject) -> Option<Self> {
        let Reject::Error {
            id,
            flags,
            rcode,
            question,
            edns,
        } = r
        else {
            return None;
        };
        buf.clear();
        buf.extend_from_slice(&id.to_be_bytes());
        // Keep opcode and RD, set QR and RA.
        let f = 0x8000 | 0x0080 | (flags & 0x7900) | (rcode & 0xF);
        buf.extend_from_slice(&f.to_be_bytes());
        let qd = u16::from(question.is_some());
        buf.extend_from_slice(&qd.to_be_bytes());
        buf.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        if let Some((s, e)) = question {
            buf.extend_from_slice(&packet[*s..*e]);
        }
        let mut w = Writer { buf };
        if *edns {
            w.opt(false, (rcode >> 4) as u8, None);
        }
        Some(w)
    }

    /// Appends an answer record owned by the question name (compression pointer to offset 12).
    pub fn answer(&mut self, rtype: u16, ttl: u32, rdata: &[u8]) {
        self.buf.extend_from_slice(&[0xC0, 0x0C]);
        self.buf.extend_from_slice(&rtype.to_be_bytes());
        self.buf.extend_from_slice(&1u16.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        self.buf
            .extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(rdata);
        self.bump(6);
    }

    /// Appends a CNAME from the question name to `target` (a normalised name); returns the
    /// offset of the target name, so records owned by it can point there.
    pub fn cname(&mut self, ttl: u32, target: &str) -> u16 {
        self.buf.extend_from_slice(&[0xC0, 0x0C]);
        self.buf.extend_from_slice(&rtype::CNAME.to_be_bytes());
        self.buf.extend_from_slice(&1u16.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        self.buf
            .extend_from_slice(&(name_len(target) as u16).to_be_bytes());
        let at = self.buf.len() as u16;
        self.name(target);
        self.bump(6);
        at
    }

    /// Appends to the authority section the SOA of `zone` (a normalised name), as a server
    /// answering for it locally gives it: `<zone> nobody.invalid. 1 3600 1200 604800 <ttl>`, with
    /// `ttl` as the record's TTL too, so a negative answer is cached for that long.
    pub fn soa(&mut self, zone: &str, ttl: u32) {
        const RNAME: &str = "nobody.invalid";
        self.name(zone);
        self.buf.extend_from_slice(&rtype::SOA.to_be_bytes());
        self.buf.extend_from_slice(&1u16.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        let rdlen = name_len(zone) + name_len(RNAME) + 20;
        self.buf.extend_from_slice(&(rdlen as u16).to_be_bytes());
        self.name(zone);
        self.name(RNAME);
        for v in [1, 3600, 1200, 604_800, ttl] {
            self.buf.extend_from_slice(&u32::to_be_bytes(v));
        }
        self.bump(8);
    }

    /// Writes a normalised name uncompressed.
    fn name(&mut self, name: &str) {
        for label in name.split('.').filter(|l| !l.is_empty()) {
            self.buf.push(label.len() as u8);
            self.buf.extend_from_slice(label.as_bytes());
        }
        self.buf.push(0);
    }

    /// Appends an answer record owned by the name at offset `owner` (see [`Writer::cname`]).
    pub fn answer_at(&mut self, owner: u16, rtype: u16, ttl: u32, rdata: &[u8]) {
        self.buf.extend_from_slice(&(0xC000 | owner).to_be_bytes());
        self.buf.extend_from_slice(&rtype.to_be_bytes());
        self.buf.extend_from_slice(&1u16.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        self.buf
            .extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(rdata);
        self.bump(6);
    }

    /// Appends the OPT record (when the client used EDNS), optionally with an Extended DNS Error.
    pub fn opt(&mut self, dnssec_ok: bool, ext_rcode: u8, ede: Option<(u16, &str)>) {
        self.buf.push(0);
        self.buf.extend_from_slice(&rtype::OPT.to_be_bytes());
        self.buf.extend_from_slice(&MAX_UDP_PAYLOAD.to_be_bytes());
        self.buf.extend_from_slice(&[ext_rcode, 0]);
        self.buf
            .extend_from_slice(&(if dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
        match ede {
            Some((code, text)) => {
                let text = &text.as_bytes()[..text.len().min(200)];
                let len = 6 + text.len() as u16;
                self.buf.extend_from_slice(&len.to_be_bytes());
                self.buf.extend_from_slice(&15u16.to_be_bytes());
                self.buf
                    .extend_from_slice(&(2 + text.len() as u16).to_be_bytes());
                self.buf.extend_from_slice(&code.to_be_bytes());
                self.buf.extend_from_slice(text);
            }
            None => self.buf.extend_from_slice(&0u16.to_be_bytes()),
        }
        self.bump(10);
    }

    fn bump(&mut self, count_at: usize) {
        let v = u16::from_be_bytes([self.buf[count_at], self.buf[count_at + 1]]) + 1;
        self.buf[count_at..count_at + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the TC bit and drops everything after the question (for UDP overflow).
    pub fn truncate_to_question(buf: &mut Vec<u8>, question_len: usize) {
        buf.truncate(HEADER + question_len);
        buf[2] |= 0x02;
        buf[6..12].fill(0);
    }
}

/// Whether an encoded message's first question is `name` (dotted, no final dot, any case) with
/// type `qtype`: how a cached answer says which name it is for without keeping a second copy.
pub fn asks_for(p: &[u8], name: &[u8], qtype: u16) -> bool {
    let mut at = HEADER;
    let mut rest = name;
    loop {
        let Some(&len) = p.get(at) else {
            return false;
        };
        let len = len as usize;
        if len == 0 {
            return rest.is_empty() && be16(p, at + 1) == Some(qtype);
        }
        // A stored question is never compressed; a pointer here is not one of ours.
        let Some(label) = p.get(at + 1..at + 1 + len).filter(|_| len < 64) else {
            return false;
        };
        let Some(head) = rest.get(..len) else {
            return false;
        };
        if !head.eq_ignore_ascii_case(label) {
            return false;
        }
        rest = &rest[len..];
        at += 1 + len;
        if p.get(at) != Some(&0) {
            match rest.split_first() {
                Some((b'.', tail)) => rest = tail,
                _ => return false,
            }
        }
    }
}

/// Offsets of every TTL in an encoded message (answer, authority, additional except OPT), so a
/// cached answer can be aged in place.
pub fn ttl_offsets(p: &[u8]) -> Option<Vec<u16>> {
    let qd = be16(p, 4)? as usize;
    let rr = be16(p, 6)? as usize + be16(p, 8)? as usize + be16(p, 10)? as usize;
    let mut at = skip_questions(p, qd)?;
    let mut out = Vec::with_capacity(rr);
    for _ in 0..rr {
        let after = skip_name(p, at)?;
        if be16(p, after)? != rtype::OPT {
            out.push(u16::try_from(after + 4).ok()?);
        }
        at = record_end(p, after)?;
    }
    Some(out)
}

/// Each answer-section record of an encoded message as (type, TTL, rdata), for answers built
/// from another name's cached records (safe search rewrites).
pub fn answers(p: &[u8], mut each: impl FnMut(u16, u32, &[u8])) -> Option<()> {
    let qd = be16(p, 4)? as usize;
    let an = be16(p, 6)? as usize;
    let mut at = skip_questions(p, qd)?;
    for _ in 0..an {
        let after = skip_name(p, at)?;
        let rt = be16(p, after)?;
        let ttl = u32::from_be_bytes(p.get(after + 4..after + 8)?.try_into().ok()?);
        let end = record_end(p, after)?;
        each(rt, ttl, &p[after + 10..end]);
        at = end;
    }
    Some(())
}

/// Names of CNAME targets in the answer section of an encoded message, for cloaking checks.
pub fn cname_targets(p: &[u8], mut each: impl FnMut(QueryName)) -> Option<()> {
    let qd = be16(p, 4)? as usize;
    let an = be16(p, 6)? as usize;
    let mut at = skip_questions(p, qd)?;
    for _ in 0..an {
        let after = skip_name(p, at)?;
        if be16(p, after)? == rtype::CNAME {
            let mut name = NameBuilder::new();
            read_name(p, after + 10, |l| name.push(l))?;
            if let Ok(name) = name.finish() {
                each(name);
            }
        }
        at = record_end(p, after)?;
    }
    Some(())
}

/// A query as the forwarder sends it upstream: recursion desired, EDNS0 offering 1232 bytes
/// (the DNS flag day size, which avoids fragmented answers). `name` is normalised, no root.
pub fn upstream_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(HEADER + name.len() + 2 + 4 + 11);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    // OPT: root owner, type 41, class = payload size, TTL 0, no options.
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0]);
    q
}

/// What an upstream said to a query from [`upstream_query`].
#[derive(Debug, PartialEq, Eq)]
pub enum Upstreamed {
    /// An answer (NOERROR or NXDOMAIN) in the cache's form: ID 0, question in lower case, AA
    /// and AD clear, RA set, no additional section; with the TTL it may be cached for.
    Answer {
        /// The encoded answer.
        bytes: Vec<u8>,
        /// Smallest answer TTL, or the negative TTL from the SOA, or 60.
        ttl: u32,
    },
    /// Too big for UDP: ask again over TCP.
    Truncated,
    /// Not the answer to this query (a stray or forged packet): ignore it and keep waiting.
    Stray,
}

/// Longest an upstream answer is kept or handed on, as unbound's default `cache-max-ttl`: a site
/// that moves is found again within a day, whatever TTL its owner set.
pub const MAX_TTL: u32 = 86_400;

/// A TTL as the cache keeps it: at most [`MAX_TTL`]; one with the top bit set is 0 (RFC 2181).
fn capped_ttl(ttl: u32) -> u32 {
    if ttl & 0x8000_0000 != 0 {
        0
    } else {
        ttl.min(MAX_TTL)
    }
}

/// Checks that `resp` answers `query` (ID and question) and turns it into [`Upstreamed`].
/// `Err` says why an answer to this query is unusable.
pub fn upstream_answer(resp: &[u8], query: &[u8]) -> Result<Upstreamed, &'static str> {
    let qname_end = read_name(query, HEADER, |_| {}).ok_or("bad query")?;
    let question = query.get(HEADER..qname_end + 4).ok_or("bad query")?;
    let name_len = qname_end - HEADER;
    if resp.len() < HEADER + question.len()
        || resp[..2] != query[..2]
        || resp[2] & 0x80 == 0
        || be16(resp, 4) != Some(1)
        || !resp[HEADER..qname_end].eq_ignore_ascii_case(&question[..name_len])
        || resp[qname_end..qname_end + 4] != question[name_len..]
    {
        return Ok(Upstreamed::Stray);
    }
    if resp[2] & 0x02 != 0 {
        return Ok(Upstreamed::Truncated);
    }
    match resp[3] & 0x0F {
        rcode::NOERROR | rcode::NXDOMAIN => {}
        rcode::SERVFAIL => return Err("upstream answered SERVFAIL"),
        rcode::REFUSED => return Err("upstream refused the query"),
        _ => return Err("upstream answered with an error"),
    }
    let an = be16(resp, 6).ok_or("short answer")? as usize;
    let ns = be16(resp, 8).ok_or("short answer")? as usize;
    let mut at = HEADER + question.len();
    let mut ttl: Option<u32> = None;
    for i in 0..an + ns {
        let after = read_name(resp, at, |_| {}).ok_or("malformed answer")?;
        let rt = be16(resp, after).ok_or("malformed answer")?;
        let rttl = capped_ttl(u32::from_be_bytes(
            resp.get(after + 4..after + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or("malformed answer")?,
        ));
        let end = record_end(resp, after).ok_or("malformed answer")?;
        if i < an {
            ttl = Some(ttl.map_or(rttl, |t| t.min(rttl)));
        } else if an == 0 && rt == rtype::SOA && end >= after + 14 {
            // Negative answers are cached for min(SOA TTL, SOA minimum) (RFC 2308).
            let minimum = capped_ttl(u32::from_be_bytes(
                resp[end - 4..end].try_into().unwrap_or_default(),
            ));
            ttl = Some(ttl.map_or(rttl.min(minimum), |t| t.min(rttl).min(minimum)));
        }
        at = end;
    }
    let mut bytes = resp[..at].to_vec();
    bytes[0] = 0;
    bytes[1] = 0;
    // A forwarder's answer is neither authoritative nor validated here, but it is recursive:
    // without RA, clients of an upstream that does not set it (an authoritative server, a
    // school's own domain controller) are told recursion is not on offer.
    bytes[2] &= !0x04;
    bytes[3] = (bytes[3] & !0x20) | 0x80;
    bytes[10] = 0;
    bytes[11] = 0;
    for at in ttl_offsets(&bytes).unwrap_or_default() {
        let at = at as usize;
        let ttl = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        bytes[at..at + 4].copy_from_slice(&capped_ttl(ttl).to_be_bytes());
    }
    bytes[HEADER..qname_end].make_ascii_lowercase();
    Ok(Upstreamed::Answer {
        bytes,
        ttl: ttl.unwrap_or(60),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream's answer to `q` built with hickory: `answers` A records, or a negative answer
    /// with an SOA, plus an OPT and an additional record.
    fn upstream_reply(q: &[u8], id: u16, name: &str, answers: &[u32], rcode: u8) -> Vec<u8> {
        use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
        use hickory_proto::rr::rdata::{A, SOA};
        use hickory_proto::rr::{Name, RData, Record};
        let asked = Message::from_vec(q).unwrap();
        let mut m = Message::new(id, MessageType::Response, OpCode::Query);
        m.metadata.authoritative = true;
        m.metadata.response_code = ResponseCode::from(0, rcode);
        m.add_query(asked.queries[0].clone());
        let owner = Name::from_ascii(format!("{name}.")).unwrap();
        for (i, ttl) in answers.iter().enumerate() {
            let rd = RData::A(A::new(192, 0, 2, i as u8));
            m.add_answer(Record::from_rdata(owner.clone(), *ttl, rd));
        }
        if answers.is_empty() {
            let soa = SOA::new(owner.clone(), owner.clone(), 1, 3600, 600, 86400, 30);
            m.add_authority(Record::from_rdata(owner.clone(), 900, RData::SOA(soa)));
        }
        let glue = RData::A(A::new(198, 51, 100, 1));
        m.add_additional(Record::from_rdata(owner, 60, glue));
        m.set_edns(Edns::new());
        m.to_vec().unwrap()
    }

    #[test]
    fn upstream_answers_are_checked_and_made_cacheable() {
        let q = upstream_query(0x1234, "www.example.org", rtype::A);
        let reply = upstream_reply(&q, 0x1234, "WWW.Example.ORG", &[300, 120], 0);
        let Ok(Upstreamed::Answer { bytes, ttl }) = upstream_answer(&reply, &q) else {
            panic!("a good answer");
        };
        assert_eq!(ttl, 120, "the smallest TTL");
        assert_eq!(&bytes[..2], &[0, 0], "ID 0");
        assert_eq!(bytes[2] & 0x04, 0, "not authoritative");
        assert_eq!(
            bytes[3] & 0x80,
            0x80,
            "recursion available, though the upstream said not"
        );
        assert_eq!(be16(&bytes, 10), Some(0), "no additional section, no OPT");
        assert_eq!(
            &bytes[12..q.len() - 11],
            &q[12..q.len() - 11],
            "question in lower case"
        );
        assert_eq!(ttl_offsets(&bytes).unwrap().len(), 2);

        let long = upstream_reply(&q, 0x1234, "www.example.org", &[604_800, 0x8000_0001], 0);
        let Ok(Upstreamed::Answer { bytes, ttl }) = upstream_answer(&long, &q) else {
            panic!("a good answer");
        };
        let mut ttls = Vec::new();
        answers(&bytes, |_, t, _| ttls.push(t)).unwrap();
        assert_eq!(ttls, [MAX_TTL, 0], "a week is a day; the top bit set is 0");
        assert_eq!(ttl, 0);

        let negative = upstream_reply(&q, 0x1234, "www.example.org", &[], rcode::NXDOMAIN);
        let Ok(Upstreamed::Answer { bytes, ttl }) = upstream_answer(&negative, &q) else {
            panic!("NXDOMAIN is an answer");
        };
        assert_eq!((ttl, bytes[3] & 0x0F), (30, rcode::NXDOMAIN), "SOA minimum");

        let other_id = upstream_reply(&q, 0x4321, "www.example.org", &[300], 0);
        assert_eq!(upstream_answer(&other_id, &q), Ok(Upstreamed::Stray));
        let other_name = upstream_reply(
            &upstream_query(0x1234, "evil.example", rtype::A),
            0x1234,
            "evil.example",
            &[300],
            0,
        );
        assert_eq!(upstream_answer(&other_name, &q), Ok(Upstreamed::Stray));
        let https = upstream_query(0x1234, "www.example.org", rtype::HTTPS);
        assert_eq!(
            upstream_answer(&reply, &https),
            Ok(Upstreamed::Stray),
            "an answer for another type is not the answer"
        );
        let failed = upstream_reply(&q, 0x1234, "www.example.org", &[], rcode::SERVFAIL);
        assert!(upstream_answer(&failed, &q).is_err());
        let mut truncated = reply.clone();
        truncated[2] |= 0x02;
        assert_eq!(upstream_answer(&truncated, &q), Ok(Upstreamed::Truncated));
        assert_eq!(upstream_answer(&reply[..20], &q), Ok(Upstreamed::Stray));
        assert!(upstream_answer(&reply[..reply.len() - 30], &q).is_err());
    }

    fn query(name: &str, qtype: u16, edns: bool) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
        for l in name.split('.') {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        if edns {
            p.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 0]);
        }
        p
    }

    #[test]
    fn parses_query_with_edns() {
        let p = query("WWW.Example.com", rtype::AAAA, true);
        let q = parse(&p).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.name.as_str(), "www.example.com");
        assert_eq!(q.qtype, rtype::AAAA);
        let e = q.edns.unwrap();
        assert_eq!((e.udp_size, e.dnssec_ok), (1232, true));
        assert_eq!(q.udp_limit(), 1232);
    }

    #[test]
    fn question_names_are_normalised_as_read() {
        let q = |name: &str| parse(&query(name, rtype::A, true)).map(|q| q.name.key().to_vec());
        assert_eq!(q("WWW.Bücher.DE").unwrap(), b"de.xn--bcher-kva.www");
        assert_eq!(q("a-b.c_d.Example.com").unwrap(), b"com.example.c_d.a-b");
        // The longest name is 255 bytes on the wire (253 as text); one more is malformed.
        let longest = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(q(&longest).unwrap().len(), 253);
        assert!(matches!(
            q(&(longest + "d")),
            Err(Reject::Error { rcode: 1, .. })
        ));
        // The OPT record's owner must be the root.
        let mut p = query("a.b", rtype::A, true);
        let opt = p.len() - 11;
        p.splice(opt..opt + 1, [1, b'x', 0]);
        assert!(matches!(
            parse(&p),
            Err(Reject::Error {
                rcode: 1,
                edns: true,
                ..
            })
        ));
    }

    #[test]
    fn malformed_packets_are_rejected_not_panicking() {
        assert!(matches!(parse(&[0; 5]), Err(Reject::Drop)));
        let mut resp = query("a.b", 1, false);
        resp[2] |= 0x80;
        assert!(matches!(parse(&resp), Err(Reject::Drop)));
        let mut loop_ptr = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1];
        assert!(matches!(
            parse(&loop_ptr),
            Err(Reject::Error { rcode: 1, .. })
        ));
        loop_ptr[13] = 200;
        assert!(matches!(
            parse(&loop_ptr),
            Err(Reject::Error { rcode: 1, .. })
        ));
        let mut two = query("a.b", 1, false);
        two[5] = 2;
        assert!(matches!(parse(&two), Err(Reject::Error { rcode: 1, .. })));
        let mut notify = query("a.b", 1, false);
        notify[2] = 0x20;
        assert!(matches!(
            parse(&notify),
            Err(Reject::Error { rcode: 4, .. })
        ));
        let bad_label = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x45, b'a'];
        assert!(matches!(
            parse(&bad_label),
            Err(Reject::Error { rcode: 1, .. })
        ));
    }

    #[test]
    fn writes_sinkhole_with_ede() {
        let p = query("x.example", rtype::A, true);
        let q = parse(&p).unwrap();
        let mut buf = Vec::new();
        let mut w = Writer::respond(&mut buf, &q, rcode::NOERROR, false);
        w.answer(rtype::A, 60, &[0, 0, 0, 0]);
        w.opt(false, 0, Some((ede::BLOCKED, "category: adult")));
        let m = hickory_proto::op::Message::from_vec(&buf).unwrap();
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.edns.is_some());
        assert_eq!(ttl_offsets(&buf).unwrap().len(), 1);
    }

    #[test]
    fn writes_cname_with_target_records() {
        let p = query("www.google.co.uk", rtype::A, false);
        let q = parse(&p).unwrap();
        let mut buf = Vec::new();
        let mut w = Writer::respond(&mut buf, &q, rcode::NOERROR, false);
        let at = w.cname(300, "forcesafesearch.google.com");
        w.answer_at(at, rtype::A, 200, &[216, 239, 38, 120]);
        let m = hickory_proto::op::Message::from_vec(&buf).unwrap();
        assert_eq!(m.answers.len(), 2);
        assert_eq!(m.answers[1].name.to_ascii(), "forcesafesearch.google.com.");
        let mut seen = Vec::new();
        answers(&buf, |t, ttl, rd| seen.push((t, ttl, rd.len()))).unwrap();
        assert_eq!(seen, vec![(rtype::CNAME, 300, 28), (rtype::A, 200, 4)]);
    }

    #[test]
    fn asks_for_reads_the_first_question() {
        let q = upstream_query(7, "www.Example.org", 1);
        assert!(asks_for(&q, b"www.example.org", 1));
        assert!(!asks_for(&q, b"www.example.org", 28));
        assert!(!asks_for(&q, b"example.org", 1));
        assert!(!asks_for(&q, b"www.example.org.uk", 1));
        assert!(!asks_for(&q, b"wwwXexample.org", 1));
        assert!(!asks_for(&q[..20], b"www.example.org", 1));
    }

    #[test]
    fn walks_over_records_refuse_names_that_point_forwards_or_overrun() {
        // Header: one question, one answer.
        let mut p = vec![0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        p.extend_from_slice(b"\x07example\x03org\x00\x00\x01\x00\x01");
        let answer_at = p.len();
        // Owner compressed back to the question: fine.
        p.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        assert_eq!(ttl_offsets(&p), Some(vec![(answer_at + 6) as u16]));
        let mut forward = p.clone();
        forward[answer_at + 1] = (answer_at + 2) as u8;
        assert_eq!(
            ttl_offsets(&forward),
            None,
            "a pointer must point backwards"
        );
        let mut overrun = p.clone();
        overrun[answer_at] = 0x3F;
        assert_eq!(ttl_offsets(&overrun), None, "a label past the end");
        assert_eq!(ttl_offsets(&p[..p.len() - 1]), None, "rdata past the end");
    }
}
