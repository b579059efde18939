//! Hostile input, every query type, CNAME cloaking, outages and a full log disk: the server
//! keeps answering, never leaks a blocked name and never loses a breach.

use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::fixture::{Fixture, Zone};
use crate::harness::{addresses, cnames, ede_text, raw_tcp, raw_udp, Ask, Server, Setup};

#[test]
fn blocked_names_are_blocked_for_every_query_type() {
    let up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);
    for t in [
        RecordType::HTTPS,
        RecordType::SVCB,
        RecordType::TXT,
        RecordType::MX,
        RecordType::CNAME,
        RecordType::NS,
        RecordType::ANY,
    ] {
        let m = server.query("www.tiktok.com", t);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{t}");
        assert!(m.answers.is_empty(), "{t} leaked: {:?}", m.answers);
        assert!(
            ede_text(&m).is_some_and(|e| e.contains("social_media")),
            "{t}"
        );
    }
    assert_eq!(up.queries(), 0);
}

#[test]
fn cname_cloaking_is_blocked_and_logged_with_both_names() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let server = setup.start(up.addr);
    let m = server.query("tracker.example.org", RecordType::A);
    assert_eq!(addresses(&m), vec!["0.0.0.0"], "{m:?}");
    assert!(cnames(&m).is_empty(), "the blocked target is not revealed");
    let text = ede_text(&m).unwrap();
    assert!(
        text.contains("social_media") && text.contains("www.tiktok.com"),
        "{text}"
    );
    // Two hops deep, and again from the cache.
    for _ in 0..2 {
        let deep = server.query("deep.example.org", RecordType::A);
        assert_eq!(addresses(&deep), vec!["0.0.0.0"]);
    }
    let logs = setup.dir.path().join("state/logs");
    let mut found = false;
    for _ in 0..40 {
        let text = std::fs::read_dir(&logs)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("breach-"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect::<String>();
        if text.contains("\"name\":\"tracker.example.org\"")
            && text.contains("\"via\":\"www.tiktok.com\"")
        {
            found = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(found, "breach names both the query and the CNAME target");
}

/// A well-formed query header for `a.b` type A, to be damaged by each case.
fn good() -> Vec<u8> {
    vec![
        0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 1, b'b', 0, 0, 1, 0, 1,
    ]
}

#[test]
fn malformed_packets_get_formerr_notimp_or_silence_and_the_server_lives() {
    let up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);
    let mut cases: Vec<(&str, Vec<u8>, Option<u8>)> = vec![
        ("empty", vec![], None),
        ("truncated header", vec![0xAB, 0xCD, 0x01], None),
        ("header only, no question", good()[..12].to_vec(), Some(1)),
        (
            "a response (QR set)",
            {
                let mut p = good();
                p[2] |= 0x80;
                p
            },
            None,
        ),
        (
            "label runs past the end",
            {
                let mut p = good();
                p[12] = 60;
                p
            },
            Some(1),
        ),
        (
            "compression loop",
            vec![
                0xAB, 0xCD, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1,
            ],
            Some(1),
        ),
        (
            "pointer out of range",
            vec![
                0xAB, 0xCD, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 0xFF, 0, 1, 0, 1,
            ],
            Some(1),
        ),
        (
            "reserved label type",
            {
                let mut p = good();
                p[12] = 0x81;
                p
            },
            Some(1),
        ),
        (
            "two questions",
            {
                let mut p = good();
                p[5] = 2;
                p
            },
            Some(1),
        ),
        (
            "no question count but data",
            {
                let mut p = good();
                p[5] = 0;
                p
            },
            Some(1),
        ),
        (
            "opcode NOTIFY",
            {
                let mut p = good();
                p[2] = 0x20;
                p
            },
            Some(4),
        ),
        (
            "opcode UPDATE",
            {
                let mut p = good();
                p[2] = 0x28;
                p
            },
            Some(4),
        ),
        (
            "class CHAOS",
            {
                let mut p = good();
                p[20] = 3;
                p
            },
            Some(5),
        ),
        (
            "EDNS version 1",
            {
                let mut p = good();
                p[11] = 1;
                p.extend([0, 0, 41, 4, 0, 0, 1, 0, 0, 0, 0]);
                p
            },
            Some(0),
        ),
        (
            "two OPT records",
            {
                let mut p = good();
                p[11] = 2;
                for _ in 0..2 {
                    p.extend([0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
                }
                p
            },
            Some(1),
        ),
        (
            "oversized EDNS payload",
            {
                let mut p = good();
                p[11] = 1;
                p.extend([0, 0, 41, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0]);
                p
            },
            Some(3),
        ),
        ("question missing type", good()[..17].to_vec(), Some(1)),
        (
            "longer than the server reads (a question, then 6000 bytes)",
            {
                let mut p = good();
                p.extend(std::iter::repeat_n(0, 6000));
                p
            },
            Some(1),
        ),
        (
            "garbage",
            (0..300u32).map(|i| (i * 7919 % 251) as u8).collect(),
            None,
        ),
    ];
    let name_too_long = {
        let mut p = good()[..12].to_vec();
        for _ in 0..5 {
            p.push(63);
            p.extend(std::iter::repeat_n(b'x', 63));
        }
        p.extend([0, 0, 1, 0, 1]);
        p
    };
    cases.push(("name over 255 bytes", name_too_long, Some(1)));
    for (what, packet, expect) in cases {
        let reply = raw_udp(server.addr, &packet, Duration::from_millis(300));
        match (expect, &reply) {
            (None, None) => {}
            (None, Some(r)) if what == "garbage" => {
                // Random bytes may happen to parse as a header; any answer must be an error.
                assert!(r[3] & 0x0F != 0, "{what}: {r:?}");
            }
            (Some(code), Some(r)) => {
                assert_eq!(r[..2], [0xAB, 0xCD], "{what}: ID echoed");
                assert!(r[2] & 0x80 != 0, "{what}: is a response");
                assert_eq!(r[3] & 0x0F, code, "{what}: rcode");
                if what == "EDNS version 1" {
                    let m = Message::from_vec(r).unwrap();
                    assert_eq!(u16::from(m.metadata.response_code), 16, "{what}: BADVERS");
                }
            }
            _ => panic!("{what}: expected {expect:?}, got {reply:?}"),
        }
        let alive = Ask::new("pornhub.com", RecordType::A).send(server.addr);
        assert!(alive.is_some(), "server stopped answering after {what}");
    }
    let tcp =
        raw_tcp(server.addr, &good()[..12], Duration::from_secs(1)).expect("FORMERR over TCP");
    assert_eq!(tcp[3] & 0x0F, 1);
}

#[test]
fn any_is_minimal_and_big_answers_truncate_to_tcp() {
    let up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);
    let any = server.query("example.org", RecordType::ANY);
    assert_eq!(any.answers.len(), 1);
    assert_eq!(any.answers[0].record_type(), RecordType::HINFO);

    let small = Ask::new("big.example.org", RecordType::A)
        .no_edns()
        .send(server.addr)
        .unwrap();
    assert!(
        small.metadata.truncation,
        "over 512 bytes without EDNS must set TC"
    );
    assert!(small.answers.is_empty());
    let full = Ask::new("big.example.org", RecordType::A)
        .tcp()
        .send(server.addr)
        .unwrap();
    assert_eq!(full.answers.len(), 60);
    let edns = Ask::new("big.example.org", RecordType::A)
        .send(server.addr)
        .unwrap();
    assert!(
        !edns.metadata.truncation,
        "fits in the client's 1232-byte EDNS buffer"
    );
}

#[test]
fn an_answer_the_upstream_truncates_is_fetched_over_tcp() {
    let up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);
    let full = Ask::new("huge.example.org", RecordType::A)
        .tcp()
        .send(server.addr)
        .unwrap();
    assert_eq!(full.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        full.answers.len(),
        100,
        "every record, fetched upstream over TCP"
    );
    let udp = Ask::new("huge.example.org", RecordType::A)
        .send(server.addr)
        .unwrap();
    assert!(
        udp.metadata.truncation,
        "too big for the client's UDP buffer"
    );
}

#[test]
fn tcp_answers_pipelined_queries_in_order() {
    use std::io::{Read, Write};
    let up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let names = ["pornhub.com", "www.example.org", "bet365.com"];
    let mut out = Vec::new();
    for n in names {
        let q = Ask::new(n, RecordType::A).bytes();
        out.extend((q.len() as u16).to_be_bytes());
        out.extend(q);
    }
    s.write_all(&out).unwrap();
    for n in names {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).unwrap();
        let m = Message::from_vec(&buf).unwrap();
        assert_eq!(m.queries[0].name().to_ascii(), format!("{n}."));
    }
}

#[test]
fn upstream_outage_keeps_blocked_and_cached_names_answered() {
    let mut up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);
    assert_eq!(
        addresses(&server.query("short.example.org", RecordType::A)),
        vec!["192.0.2.50"]
    );
    assert_eq!(
        addresses(&server.query("www.example.org", RecordType::A)),
        vec!["192.0.2.11"]
    );
    up.stop();
    std::thread::sleep(Duration::from_millis(1500));

    assert_eq!(
        addresses(&server.query("pornhub.com", RecordType::A)),
        vec!["0.0.0.0"]
    );
    assert_eq!(
        addresses(&server.query("www.example.org", RecordType::A)),
        vec!["192.0.2.11"]
    );
    let stale = Ask::new("short.example.org", RecordType::A)
        .timeout(Duration::from_secs(5))
        .send(server.addr)
        .unwrap();
    assert_eq!(
        addresses(&stale),
        vec!["192.0.2.50"],
        "expired answer served stale"
    );
    assert_eq!(stale.answers[0].ttl, 30);
    let started = Instant::now();
    let other = Ask::new("example.org", RecordType::TXT)
        .timeout(Duration::from_secs(5))
        .send(server.addr)
        .unwrap();
    assert_eq!(other.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "SERVFAIL within the timeout"
    );
}

/// A tiny tmpfs mounted over the log directory, so the disk can really fill up.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k,mode=0750", "tmpfs"])
            .arg(dir)
            .status()
            .ok()?
            .success();
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_log_disk_never_stops_dns_and_breaches_are_written_when_space_returns() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let logs = setup.dir.path().join("state/logs");
    let Some(_disk) = SmallDisk::mount(&logs) else {
        panic!("this test needs `mount -t tmpfs` (root); .ci/run runs as root");
    };
    let server = setup.start(up.addr);
    let filler = logs.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", filler.display()))
        .output();
    for _ in 0..30 {
        let m = Ask::new("pornhub.com", RecordType::A)
            .send(server.addr)
            .expect("DNS keeps answering");
        assert_eq!(addresses(&m), vec!["0.0.0.0"]);
    }
    let admin = server.admin.unwrap();
    let mut errors = 0.0;
    for _ in 0..40 {
        let (_, metrics) = crate::ops::http_get(admin, "/metrics");
        errors = crate::ops::sample(&metrics, "schoolgate_log_write_errors_total");
        if errors > 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(errors > 0.0, "the full disk is reported in metrics");
    std::fs::remove_file(&filler).unwrap();
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Europe::London)
        .format("%Y-%m-%d");
    let breach = logs.join(format!("breach-{today}.jsonl"));
    let mut n = 0;
    for _ in 0..60 {
        // A write cut short by the full disk can leave one torn line; it is skipped by readers.
        n = std::fs::read_to_string(&breach)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .is_ok_and(|v| v["name"] == "pornhub.com")
            })
            .count();
        if n >= 30 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        n >= 30,
        "every breach held in memory is written once space returns ({n}/30)"
    );
    server.expect_log("cannot write");
    // The coordinator reads of it in the daily summary too, once the disk has room for it.
    let mut problems = Vec::new();
    for _ in 0..60 {
        let (ok, out, err) = setup.run(&["report", "daily", "--date", "today", "--format", "json"]);
        assert!(ok, "{err}");
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        problems = report["problems"].as_array().cloned().unwrap_or_default();
        if problems.iter().any(|p| p["kind"] == "write_error") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let full = problems.iter().find(|p| p["kind"] == "write_error");
    let full = full.unwrap_or_else(|| panic!("no write_error in {problems:?}"));
    assert!(full["count"].as_u64() > Some(0), "{full}");
    assert!(
        full["detail"]
            .as_str()
            .is_some_and(|d| d.contains("No space left")),
        "{full}"
    );
}

#[test]
fn a_dead_first_upstream_costs_one_timeout_not_one_per_name() {
    let up = Fixture::start(Zone::standard());
    // The first upstream never answers, as one that was switched off.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let setup = Setup::new();
    let server = Server::start(
        &setup.config(),
        &[
            "--upstream",
            &dead.local_addr().unwrap().to_string(),
            "--upstream",
            &up.addr.to_string(),
        ],
    );
    let names = [
        ("www.example.org", "192.0.2.11"),
        ("childline.org.uk", "192.0.2.20"),
        ("www.bbc.co.uk", "192.0.2.30"),
        ("essex.gov.uk", "192.0.2.31"),
    ];
    for (name, address) in names {
        let m = server.query(name, RecordType::A);
        assert_eq!(addresses(&m), [address], "{name}");
    }
    dead.set_nonblocking(true).unwrap();
    let mut asked = 0;
    while dead.recv(&mut [0u8; 512]).is_ok() {
        asked += 1;
    }
    assert_eq!(
        asked, 1,
        "after its first timeout the dead upstream is set aside, not asked for every name"
    );
    assert_eq!(up.queries(), names.len());
    let (_, health) = crate::ops::http_get(server.admin.unwrap(), "/healthz");
    let v: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(v["upstreams"][0]["set_aside"], true, "{v}");
    assert_eq!(v["upstreams"][1]["set_aside"], false, "{v}");
}

#[test]
fn devices_asking_one_new_name_together_cost_one_upstream_query() {
    let up = Fixture::start(Zone::standard().slow(Duration::from_millis(300)));
    let server = Setup::new().start(up.addr);
    let ask_together = |name: &'static str, rtype| {
        let askers: Vec<_> = (0..20)
            .map(|_| {
                let addr = server.addr;
                std::thread::spawn(move || Ask::new(name, rtype).send(addr))
            })
            .collect();
        askers
            .into_iter()
            .map(|a| addresses(&a.join().unwrap().expect("answered")))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ask_together("www.bbc.co.uk", RecordType::A),
        vec![vec!["192.0.2.30"]; 20]
    );
    assert_eq!(up.queries(), 1, "one upstream query for the whole class");
    assert_eq!(
        ask_together("example.org", RecordType::AAAA),
        vec![vec!["2001:db8::10"]; 20]
    );
    assert_eq!(up.queries(), 2);
    let (_, metrics) = crate::ops::http_get(server.admin.unwrap(), "/metrics");
    assert!(
        metrics.contains("schoolgate_upstream_joined_total 38"),
        "{metrics}"
    );
}

#[test]
fn designated_resolver_discovery_advertises_nothing() {
    let up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);
    let m = server.query("_dns.resolver.arpa", RecordType::SVCB);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty(), "{:?}", m.answers);
    assert_eq!(up.queries(), 0, "never forwarded");
}

#[test]
fn escaped_and_unicode_spellings_of_a_blocked_name_match() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    setup.list("adult.txt", "pornhub.com\nxn--bcher-kva.example\n");
    let server = setup.start(up.addr);
    // dig turns \084 into the byte 'T' on the wire.
    let out = crate::harness::dig(server.addr, &["www.\\084ikTok.COM.", "A"]);
    assert!(
        out.contains("0.0.0.0") && out.contains("social_media"),
        "{out}"
    );
    // Raw UTF-8 in a label (no punycode) still matches the punycode list entry.
    let mut p = vec![0x77, 0x77, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["www".as_bytes(), "bücher".as_bytes(), b"example"] {
        p.push(label.len() as u8);
        p.extend_from_slice(label);
    }
    p.extend([0, 0, 1, 0, 1]);
    let reply = raw_udp(server.addr, &p, Duration::from_secs(2)).expect("answer");
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(addresses(&m), vec!["0.0.0.0"]);
}

#[test]
fn one_device_cannot_hold_every_tcp_connection() {
    use std::io::Read;
    let up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);
    // A device opens far more connections than it is allowed and leaves them idle.
    let mut held = Vec::new();
    for _ in 0..schoolgate::server::MAX_TCP_PER_CLIENT + 4 {
        held.push(std::net::TcpStream::connect(server.addr).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut closed = 0;
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if matches!(s.read(&mut [0u8; 1]), Ok(0)) {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 4,
        "connections over the per-device limit are closed at once"
    );
    // Another device is still served over TCP.
    let other = Ask::new("pornhub.com", RecordType::A)
        .tcp()
        .from("127.0.0.8")
        .send(server.addr);
    assert!(other.is_some_and(|m| addresses(&m) == vec!["0.0.0.0"]));
}

/// Whether the server has closed this connection (a read sees end of file) within `wait`.
fn closed_within(s: &mut std::net::TcpStream, wait: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(wait)).unwrap();
    matches!(s.read(&mut [0u8; 1]), Ok(0))
}

#[test]
fn the_server_holds_no_more_tcp_connections_than_its_cap() {
    let up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);
    let cap = schoolgate::server::MAX_TCP_CONNECTIONS;
    let per = schoolgate::server::MAX_TCP_PER_CLIENT;
    // Many devices, each within its own limit, fill the server's connections between them.
    let mut held = Vec::new();
    for i in 0..cap {
        let from = format!("127.0.{}.{}", 10 + i / per / 200, 1 + i / per % 200);
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(
            &format!("{from}:0")
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        sock.connect(&server.addr.into()).unwrap();
        held.push(std::net::TcpStream::from(sock));
    }
    std::thread::sleep(Duration::from_millis(300));
    // One more device gets its connection closed at once rather than queued forever...
    let mut extra = std::net::TcpStream::connect(server.addr).unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)),
        "a connection over the server's cap of {cap} was kept"
    );
    // ...and is served again as soon as others hang up.
    held.truncate(cap - 8);
    std::thread::sleep(Duration::from_millis(300));
    let answer = Ask::new("pornhub.com", RecordType::A)
        .tcp()
        .send(server.addr);
    assert!(answer.is_some_and(|m| addresses(&m) == vec!["0.0.0.0"]));
}

#[test]
fn an_idle_tcp_connection_is_closed() {
    let up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);
    let mut idle = std::net::TcpStream::connect(server.addr).unwrap();
    let limit = schoolgate::server::TCP_IDLE_TIMEOUT;
    assert!(
        !closed_within(&mut idle, limit / 2),
        "closed before the idle limit"
    );
    assert!(
        closed_within(&mut idle, limit),
        "an idle connection was still open after {:?}",
        limit * 3 / 2
    );
}

/// Every address the server logged as listening on (it logs one line per listen address).
fn listening(server: &crate::harness::Server) -> Vec<std::net::SocketAddr> {
    server
        .log()
        .lines()
        .filter_map(|l| l.split("listening on ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// A burst from several devices at once, sent without waiting for answers: the server reads and
/// answers it in batches, and every device must get exactly its own answers back, none lost,
/// doubled or crossed between devices.
#[test]
fn a_burst_from_many_devices_gets_every_answer_back_to_its_own_sender() {
    use std::collections::HashMap;
    use std::net::{SocketAddr, UdpSocket};

    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let v6 = UdpSocket::bind("[::1]:0").is_ok();
    let upstream = up.addr.to_string();
    let mut args = vec!["--upstream", upstream.as_str()];
    if v6 {
        args.extend(["--listen", "[::1]:0"]);
    } else {
        eprintln!("no IPv6 loopback here; the burst is IPv4 only");
    }
    let server = crate::harness::Server::start(&setup.config(), &args);
    let addrs = listening(&server);
    let v4_server = *addrs.iter().find(|a| a.is_ipv4()).expect("IPv4 listener");
    let mut senders: Vec<(UdpSocket, SocketAddr)> = (1..=4)
        .map(|i| {
            let s = UdpSocket::bind(format!("127.0.0.{i}:0")).expect("bind client");
            (s, v4_server)
        })
        .collect();
    if v6 {
        let v6_server = *addrs.iter().find(|a| a.is_ipv6()).expect("IPv6 listener");
        senders.push((UdpSocket::bind("[::1]:0").expect("bind"), v6_server));
    }
    const PER_SENDER: u16 = 60;
    // Per sender: ID -> the name asked. Mostly blocked names (answered from memory), every
    // tenth an unknown name that goes upstream (NXDOMAIN from the fixture).
    let mut asked: Vec<HashMap<u16, String>> = Vec::new();
    let mut packets = Vec::new();
    for s in 0..senders.len() {
        let mut mine = HashMap::new();
        for i in 0..PER_SENDER {
            let name = if i % 10 == 0 {
                format!("up{s}-{i}.example.org")
            } else {
                format!("d{s}-{i}.pornhub.com")
            };
            let id = 1000 + i * 7 + s as u16;
            let mut m = Message::query();
            m.metadata.id = id;
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(
                Name::from_ascii(format!("{name}.")).expect("name"),
                RecordType::A,
            ));
            packets.push((s, m.to_vec().expect("encode")));
            mine.insert(id, name);
        }
        asked.push(mine);
    }
    // Interleave the senders so the server's batches mix sources.
    packets.sort_by_key(|(s, p)| (u16::from_be_bytes([p[0], p[1]]), *s));
    for (s, p) in &packets {
        let (sock, to) = &senders[*s];
        sock.send_to(p, to).expect("send");
    }
    assert!(packets.len() >= 200);
    for (s, (sock, _)) in senders.iter().enumerate() {
        let mut want = asked[s].clone();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 4096];
        while !want.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "sender {s}: no answer to {} queries: {:?}",
                want.len(),
                want.values().take(5).collect::<Vec<_>>()
            );
            sock.set_read_timeout(Some(left)).expect("timeout");
            let Ok(len) = sock.recv(&mut buf) else {
                continue;
            };
            let m = Message::from_vec(&buf[..len]).expect("decodable answer");
            let name = want.remove(&m.metadata.id).unwrap_or_else(|| {
                panic!("sender {s}: unexpected or repeated ID {}", m.metadata.id)
            });
            let q = m.queries.first().expect("question echoed");
            assert_eq!(q.name().to_ascii().trim_end_matches('.'), name);
            if name.ends_with("pornhub.com") {
                assert_eq!(addresses(&m), vec!["0.0.0.0"], "{name}");
            } else {
                assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
            }
        }
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        assert!(
            sock.recv(&mut buf).is_err(),
            "sender {s}: an answer beyond the ones asked for"
        );
    }
}
