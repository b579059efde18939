//! A small authoritative DNS server on loopback: the upstream in every test.
//!
//! It is a real server speaking UDP and TCP on 127.0.0.1, answering from a fixed zone, so
//! schoolgate's forwarding, caching and CNAME checks are exercised over real sockets. It counts
//! the queries it receives, so tests can tell a cached answer from a forwarded one, and it can
//! be stopped mid-test to simulate an outage.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// The zone the fixture serves.
#[derive(Clone, Default)]
pub struct Zone {
    records: HashMap<String, Vec<RData>>,
    ttls: HashMap<String, u32>,
    delay: Duration,
}

impl Zone {
    /// A zone with the names most tests use.
    pub fn standard() -> Self {
        let mut z = Zone::default();
        z.a("example.org", "192.0.2.10");
        z.aaaa("example.org", "2001:db8::10");
        z.a("www.example.org", "192.0.2.11");
        z.a("childline.org.uk", "192.0.2.20");
        z.a("www.bbc.co.uk", "192.0.2.30");
        z.a("essex.gov.uk", "192.0.2.31");
        z.a("forcesafesearch.google.com", "216.239.38.120");
        z.aaaa("forcesafesearch.google.com", "2001:4860:4802:32::78");
        z.a("restrict.youtube.com", "216.239.38.120");
        z.a("restrictmoderate.youtube.com", "216.239.38.119");
        z.a("strict.bing.com", "204.79.197.220");
        z.a("safe.duckduckgo.com", "52.142.124.215");
        z.a("www.google.co.uk", "192.0.2.40");
        z.a("www.google.com", "192.0.2.41");
        // Blocked names resolve upstream too, as they do on the internet: only schoolgate stops them.
        z.a("www.tiktok.com", "192.0.2.66");
        z.a("cdn.tiktok.com", "192.0.2.67");
        z.cname("tracker.example.org", "www.tiktok.com");
        z.cname("deep.example.org", "hop.example.org");
        z.cname("hop.example.org", "cdn.tiktok.com");
        z.txt("example.org", "v=spf1 -all");
        z.ttl_a("short.example.org", "192.0.2.50", 1);
        for i in 0..60 {
            z.a("big.example.org", &format!("192.0.2.{}", 100 + i));
        }
        // Too big for any UDP answer (1,600 bytes of records): the upstream sends TC.
        for i in 0..100 {
            z.a("huge.example.org", &format!("198.51.100.{}", i + 1));
        }
        z
    }

    /// Answers UDP queries only after `delay`, as a resolver far away or busy.
    pub fn slow(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Adds an A record with its own TTL (for expiry and serve-stale tests).
    pub fn ttl_a(&mut self, name: &str, ip: &str, ttl: u32) {
        self.a(name, ip);
        self.ttls.insert(name.to_string(), ttl);
    }

    /// Adds an A record.
    pub fn a(&mut self, name: &str, ip: &str) {
        let ip = Ipv4Addr::from_str(ip).expect("test IPv4");
        self.add(name, RData::A(A(ip)));
    }

    /// Adds an AAAA record.
    pub fn aaaa(&mut self, name: &str, ip: &str) {
        let ip = Ipv6Addr::from_str(ip).expect("test IPv6");
        self.add(name, RData::AAAA(AAAA(ip)));
    }

    /// Adds a CNAME.
    pub fn cname(&mut self, name: &str, target: &str) {
        self.add(name, RData::CNAME(CNAME(fqdn(target))));
    }

    /// Adds a TXT record.
    pub fn txt(&mut self, name: &str, text: &str) {
        self.add(name, RData::TXT(TXT::new(vec![text.to_string()])));
    }

    fn add(&mut self, name: &str, rdata: RData) {
        self.records
            .entry(name.to_string())
            .or_default()
            .push(rdata);
    }

    fn answer(&self, q: &Message) -> Message {
        let mut resp = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
        resp.metadata.authoritative = true;
        resp.metadata.recursion_desired = q.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        let Some(query) = q.queries.first() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return resp;
        };
        resp.add_query(query.clone());
        if let Some(e) = &q.edns {
            resp.set_edns(e.clone());
        }
        let mut name = query.name().to_ascii().trim_end_matches('.').to_lowercase();
        let qtype = query.query_type();
        for _ in 0..8 {
            let Some(rdatas) = self.records.get(&name) else {
                break;
            };
            let owner = fqdn(&name);
            let ttl = self.ttls.get(&name).copied().unwrap_or(300);
            let mut next = None;
            for rd in rdatas {
                if rd.record_type() == qtype || qtype == RecordType::ANY {
                    resp.add_answer(Record::from_rdata(owner.clone(), ttl, rd.clone()));
                } else if let RData::CNAME(c) = rd {
                    resp.add_answer(Record::from_rdata(owner.clone(), ttl, rd.clone()));
                    next = Some(c.0.to_ascii().trim_end_matches('.').to_lowercase());
                }
            }
            match next {
                Some(n) => name = n,
                None => break,
            }
        }
        if resp.answers.is_empty() {
            let exists = self.records.contains_key(&name);
            resp.metadata.response_code = if exists {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            };
            let soa = SOA::new(
                fqdn("ns.fixture.test"),
                fqdn("admin.fixture.test"),
                1,
                3600,
                600,
                86400,
                60,
            );
            resp.add_authority(Record::from_rdata(Name::root(), 60, RData::SOA(soa)));
        }
        resp
    }
}

/// The answer as a real server sends it over UDP: too big for the asker's buffer (512 bytes,
/// or its EDNS size) means TC and no records, so the asker retries over TCP.
fn udp_answer(z: &Zone, q: &Message) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let mut resp = z.answer(q);
    let limit = q.edns.as_ref().map_or(512, |e| e.max_payload().max(512)) as usize;
    let bytes = resp.to_vec()?;
    if bytes.len() <= limit {
        return Ok(bytes);
    }
    resp.answers.clear();
    resp.authorities.clear();
    resp.metadata.truncation = true;
    resp.to_vec()
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).expect("test name")
}

/// A running fixture. Dropping it stops it (its runtime goes with it).
pub struct Fixture {
    /// Address it answers on (UDP and TCP).
    pub addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Fixture {
    /// Starts serving `zone` on a free loopback port.
    pub fn start(zone: Zone) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("fixture runtime");
        let queries = Arc::new(AtomicUsize::new(0));
        let zone = Arc::new(zone);
        let addr = runtime.block_on(async {
            // The kernel picks a free UDP port; TCP on the same number may be taken, so retry.
            let mut bound = None;
            for _ in 0..20 {
                let udp = UdpSocket::bind("127.0.0.1:0").await.expect("fixture udp");
                let addr = udp.local_addr().expect("fixture addr");
                if let Ok(tcp) = TcpListener::bind(addr).await {
                    bound = Some((udp, tcp, addr));
                    break;
                }
            }
            let (udp, tcp, addr) = bound.expect("a port free for both UDP and TCP");
            let (z, n) = (zone.clone(), queries.clone());
            let udp = Arc::new(udp);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok((len, src)) = udp.recv_from(&mut buf).await {
                    n.fetch_add(1, Ordering::SeqCst);
                    let Ok(q) = Message::from_vec(&buf[..len]) else {
                        continue;
                    };
                    let (z, udp) = (z.clone(), udp.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(z.delay).await;
                        if let Ok(bytes) = udp_answer(&z, &q) {
                            let _ = udp.send_to(&bytes, src).await;
                        }
                    });
                }
            });
            let (z, n) = (zone, queries.clone());
            tokio::spawn(async move {
                while let Ok((mut s, _)) = tcp.accept().await {
                    let (z, n) = (z.clone(), n.clone());
                    tokio::spawn(async move {
                        while let Ok(len) = s.read_u16().await {
                            let mut buf = vec![0u8; len as usize];
                            if s.read_exact(&mut buf).await.is_err() {
                                return;
                            }
                            n.fetch_add(1, Ordering::SeqCst);
                            let Ok(q) = Message::from_vec(&buf) else {
                                return;
                            };
                            let Ok(bytes) = z.answer(&q).to_vec() else {
                                return;
                            };
                            let _ = s.write_u16(bytes.len() as u16).await;
                            let _ = s.write_all(&bytes).await;
                        }
                    });
                }
            });
            addr
        });
        Fixture {
            addr,
            queries,
            runtime: Some(runtime),
        }
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// Stops answering (simulates the internet link going down).
    pub fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop();
    }
}
