//! The XDP fast path on loopback: the same answers, logs and limits as the sockets give, with
//! the packets taken before the kernel's UDP layer.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::fixture::{Fixture, Zone};
use crate::harness::{addresses, dig, ede_text, Ask, Server, Setup};
use crate::logs::{today_file, wait_for_records};
use crate::ops::{flood, http_get, paused_burst_is_counted, sample};

/// A sysctl set for one test and put back afterwards, pass or fail.
struct Sysctl {
    path: String,
    was: String,
}

impl Sysctl {
    fn set(key: &str, value: &str) -> Option<Sysctl> {
        let path = format!("/proc/sys/{key}");
        let was = std::fs::read_to_string(&path).ok()?;
        std::fs::write(&path, value).ok()?;
        Some(Sysctl { path, was })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, self.was.trim());
    }
}

/// The loopback sysctls the fast path needs, set while it lives and put back after. Held by one
/// test at a time: loopback takes one XDP program, and one test putting the sysctls back would
/// silence another's replies.
struct Loopback {
    _routed: Option<Sysctl>,
    _accepted: Option<Sysctl>,
    _alone: MutexGuard<'static, ()>,
}

static LOOPBACK: Mutex<()> = Mutex::new(());

impl Loopback {
    /// Replies the fast path sends on loopback are otherwise dropped as martians (see xdp.rs).
    fn routed() -> Self {
        let alone = LOOPBACK.lock().unwrap_or_else(|p| p.into_inner());
        Loopback {
            _routed: Sysctl::set("net/ipv4/conf/lo/route_localnet", "1"),
            _accepted: Sysctl::set("net/ipv4/conf/lo/accept_local", "1"),
            _alone: alone,
        }
    }
}

/// Starts `setup` with the fast path on loopback, on an address whose last octet is over 127,
/// which the program must still recognise.
fn start_fast(setup: &Setup, upstream: std::net::SocketAddr) -> (Server, bool) {
    attached(setup.start_on("127.0.0.200:0", upstream))
}

/// Says whether the fast path attached: only a machine that forbids it may fall back, and then
/// the sockets must answer.
fn attached(server: Server) -> (Server, bool) {
    server.expect_log("ready");
    let log = server.log();
    let attached = log.contains("XDP fast path on lo");
    if !attached {
        assert!(
            log.contains("CAP_NET_ADMIN") || log.contains("route_localnet"),
            "{log}"
        );
        eprintln!("XDP not permitted here; checked the fallback only");
    }
    (server, attached)
}

/// Checks the fast path took exactly `n` queries, or none where it could not attach.
fn took(server: &Server, attached: bool, n: usize, what: &str) {
    let (_, metrics) = http_get(server.admin.unwrap(), "/metrics");
    let taken = sample(&metrics, "schoolgate_xdp_packets_total");
    assert_eq!(taken, if attached { n as f64 } else { 0.0 }, "{what}");
}

#[test]
fn the_fast_path_answers_logs_and_forwards_as_the_sockets_do() {
    let _lo = Loopback::routed();
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new().server("xdp = \"lo\"");
    let (server, attached) = start_fast(&setup, up.addr);

    let blocked = server.query("www.tiktok.com", RecordType::A);
    assert_eq!(addresses(&blocked), ["0.0.0.0"]);
    assert!(ede_text(&blocked).unwrap().contains("social_media"));
    let first = server.query("www.example.org", RecordType::A);
    assert_eq!(addresses(&first), ["192.0.2.11"], "forwarded upstream");
    let cached = Ask::new("WWW.Example.ORG", RecordType::A)
        .from("127.0.0.2")
        .send(server.addr)
        .unwrap();
    assert_eq!(addresses(&cached), ["192.0.2.11"], "from the cache");
    assert_eq!(cached.queries[0].name().to_ascii(), "WWW.Example.ORG.");
    assert_eq!(up.queries(), 1);
    let nx = server.query("nosuch.example.org", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    let out = dig(server.addr, &["pornhub.com", "A"]);
    assert!(out.contains("0.0.0.0"), "{out}");
    // A big answer is truncated for UDP as the sockets do it.
    let big = Ask::new("big.example.org", RecordType::A)
        .no_edns()
        .send(server.addr)
        .unwrap();
    assert!(big.metadata.truncation);
    // A query too long for a receive frame takes the kernel's path, and is answered the same.
    let long = format!(
        "{}.{}.{}.pornhub.com",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63)
    );
    let long = server.query(&long, RecordType::A);
    assert_eq!(addresses(&long), ["0.0.0.0"]);

    // Bursts from one device arrive as batches. (Fifty at a time: on loopback the replies the
    // fast path sends are bigger kernel buffers, and two hundred overflow a socket's default.)
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let burst = 200;
    let mut answered = 0;
    let mut buf = [0u8; 512];
    for chunk in 0..burst / 50 {
        for id in chunk * 50..(chunk + 1) * 50 {
            let mut q = Ask::new("bet365.com", RecordType::A).bytes();
            q[0..2].copy_from_slice(&(id as u16).to_be_bytes());
            sock.send_to(&q, server.addr).unwrap();
        }
        while answered < (chunk + 1) * 50 && sock.recv(&mut buf).is_ok() {
            answered += 1;
        }
    }
    assert_eq!(answered, burst);

    let breaches = wait_for_records(
        &today_file(&setup.dir.path().join("state/logs"), "breach"),
        burst + 3,
    );
    assert_eq!(breaches.len(), burst + 3, "every breach logged");
    took(
        &server,
        attached,
        burst + 6,
        "every UDP query but the long one took the fast path",
    );
}

#[test]
fn the_fast_path_refuses_outsiders_and_limits_a_flood_as_the_sockets_do() {
    let _lo = Loopback::routed();
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new().server(
        "xdp = \"lo\"\nclient_networks = [\"127.0.0.0/29\"]\n\
         rate_limit_qps = 5\nrate_limit_burst = 10",
    );
    let (server, attached) = start_fast(&setup, up.addr);
    let outsider = Ask::new("www.example.org", RecordType::A)
        .from("127.0.0.9")
        .send(server.addr)
        .unwrap();
    assert_eq!(outsider.metadata.response_code, ResponseCode::Refused);
    assert!(outsider.answers.is_empty());
    assert_eq!(up.queries(), 0, "an outsider's query went nowhere");

    let answered = flood(server.addr, "127.0.0.4", 40);
    assert!(answered < 30, "flood not limited: {answered}/40 answered");
    let other = Ask::new("pornhub.com", RecordType::A)
        .from("127.0.0.5")
        .send(server.addr)
        .expect("another device is still served");
    assert_eq!(addresses(&other), ["0.0.0.0"]);

    let (_, metrics) = http_get(server.admin.unwrap(), "/metrics");
    assert!(sample(&metrics, "schoolgate_rate_limited_total") >= 10.0);
    took(&server, attached, 42, "all by the fast path");
}

#[test]
fn the_fast_path_takes_ipv6_queries_too() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let _lo = Loopback::routed();
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new().server("xdp = \"lo\"");
    // One port for both families: the program matches one.
    let port = {
        let v4 = std::net::UdpSocket::bind("127.0.0.200:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        std::net::UdpSocket::bind(("::1", port)).unwrap();
        port
    };
    let v4: std::net::SocketAddr = format!("127.0.0.200:{port}").parse().unwrap();
    let v6: std::net::SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let (server, attached) = attached(Server::start_on(
        &setup.config(),
        &v4.to_string(),
        &[
            "--listen",
            &v6.to_string(),
            "--upstream",
            &up.addr.to_string(),
        ],
    ));
    let ask = |name: &str, to| Ask::new(name, RecordType::A).send(to).unwrap();
    assert_eq!(addresses(&ask("www.tiktok.com", v6)), ["0.0.0.0"]);
    assert_eq!(addresses(&ask("www.example.org", v6)), ["192.0.2.11"]);
    assert_eq!(addresses(&ask("WWW.example.org", v6)), ["192.0.2.11"]);
    assert_eq!(up.queries(), 1, "the second from the cache");
    assert_eq!(addresses(&ask("www.example.org", v4)), ["192.0.2.11"]);
    // Too long for a receive frame over IPv6: the kernel's path, answered the same.
    let long = format!(
        "{}.{}.{}.pornhub.com",
        "a".repeat(60),
        "b".repeat(60),
        "c".repeat(40)
    );
    assert_eq!(addresses(&ask(&long, v6)), ["0.0.0.0"]);

    took(&server, attached, 4, "all but the long one");
}

#[test]
fn queries_the_fast_path_had_no_room_for_are_counted() {
    let _lo = Loopback::routed();
    let up = Fixture::start(Zone::standard());
    let setup =
        Setup::new().server("xdp = \"lo\"\nrate_limit_qps = 100000\nrate_limit_burst = 100000");
    let (server, attached) = start_fast(&setup, up.addr);
    if !attached {
        return;
    }
    // A paused server (a stall, a debugger) lets the receive ring's 4,096 places fill; the kernel
    // drops the rest.
    paused_burst_is_counted(
        &server,
        6000,
        "schoolgate_xdp_packets_total",
        "schoolgate_xdp_dropped_total",
    );
}
