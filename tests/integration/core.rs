//! The foundation: blocked names sinkholed with the category in the EDE, allowed names
//! forwarded and cached, non-school networks refused, `check` explaining, bad input reported.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::fixture::{Fixture, Zone};
use crate::harness::{addresses, dig, ede_text, Ask, Setup};

#[test]
fn blocked_name_is_sinkholed_over_udp_and_tcp_with_category() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let server = setup.start(up.addr);

    let a = server.query("www.tiktok.com", RecordType::A);
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&a), vec!["0.0.0.0"]);
    assert!(
        ede_text(&a).unwrap().contains("social_media"),
        "{:?}",
        ede_text(&a)
    );

    let aaaa = Ask::new("WWW.TikTok.COM", RecordType::AAAA)
        .tcp()
        .send(server.addr)
        .unwrap();
    assert_eq!(addresses(&aaaa), vec!["::"]);
    assert!(ede_text(&aaaa).unwrap().contains("social_media"));

    let mx = server.query("tiktok.com", RecordType::MX);
    assert_eq!(mx.metadata.response_code, ResponseCode::NoError);
    assert!(mx.answers.is_empty());
    assert_eq!(up.queries(), 0, "blocked names must never be forwarded");

    let out = dig(server.addr, &["www.tiktok.com"]);
    assert!(out.contains("0.0.0.0"), "{out}");
    assert!(out.contains("EDE: 15 (Blocked)"), "{out}");
    assert!(out.contains("category social_media"), "{out}");
}

#[test]
fn allowed_name_is_forwarded_then_cached() {
    let up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);

    let first = server.query("www.example.org", RecordType::A);
    assert_eq!(addresses(&first), vec!["192.0.2.11"]);
    let forwarded = up.queries();
    assert!(forwarded >= 1);
    let again = Ask::new("WWW.EXAMPLE.ORG", RecordType::A)
        .no_edns()
        .send(server.addr)
        .unwrap();
    assert_eq!(addresses(&again), vec!["192.0.2.11"]);
    assert_eq!(
        again.queries[0].name().to_ascii(),
        "WWW.EXAMPLE.ORG.",
        "question case echoed"
    );
    assert_eq!(up.queries(), forwarded, "second answer came from the cache");

    let v6 = Ask::new("example.org", RecordType::AAAA)
        .tcp()
        .send(server.addr)
        .unwrap();
    assert_eq!(addresses(&v6), vec!["2001:db8::10"]);

    let nx = server.query("nosuch.example.org", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn upstream_failure_is_servfail_promptly() {
    let mut up = Fixture::start(Zone::standard());
    let addr = up.addr;
    up.stop();
    let server = Setup::new().start(addr);
    let started = Instant::now();
    let m = Ask::new("www.example.org", RecordType::A)
        .timeout(Duration::from_secs(5))
        .send(server.addr)
        .expect("an answer, not a hang");
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(4));
    // Blocked names need no upstream at all.
    assert_eq!(
        addresses(&server.query("pornhub.com", RecordType::A)),
        vec!["0.0.0.0"]
    );
}

#[test]
fn only_school_networks_are_answered() {
    let up = Fixture::start(Zone::standard());
    let server = Setup::new()
        .server("client_networks = [\"127.0.0.1/32\"]")
        .start(up.addr);
    let outsider = Ask::new("www.example.org", RecordType::A)
        .from("127.0.0.2")
        .send(server.addr)
        .unwrap();
    assert_eq!(outsider.metadata.response_code, ResponseCode::Refused);
    assert!(outsider.answers.is_empty());
    let insider = server.query("www.example.org", RecordType::A);
    assert_eq!(addresses(&insider), vec!["192.0.2.11"]);
}

#[test]
fn allow_list_wins_except_over_locked_categories() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    setup.list("social_media.txt", "tiktok.com\niwf-test.schoolgate.test\n");
    setup.list(
        "allow.txt",
        "childline.org.uk\nedu.tiktok.com\niwf-test.schoolgate.test\n",
    );
    let server = setup.start(up.addr);
    assert_eq!(
        addresses(&server.query("www.tiktok.com", RecordType::A)),
        vec!["0.0.0.0"]
    );
    let edu = server.query("edu.tiktok.com", RecordType::A);
    assert_eq!(
        edu.metadata.response_code,
        ResponseCode::NXDomain,
        "forwarded, not sinkholed"
    );
    let locked = server.query("iwf-test.schoolgate.test", RecordType::A);
    assert_eq!(addresses(&locked), vec!["0.0.0.0"]);
    assert!(ede_text(&locked).unwrap().contains("illegal"));
}

#[test]
fn nxdomain_and_block_page_modes() {
    let up = Fixture::start(Zone::standard());
    let nx = Setup::new()
        .toml("[sinkhole]\nmode = \"nxdomain\"\n")
        .start(up.addr);
    let m = nx.query("pornhub.com", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(ede_text(&m).unwrap().contains("adult"));

    let page = Setup::new()
        .toml("[sinkhole]\nmode = \"address\"\nipv4 = \"10.0.0.80\"\nttl = 5\n")
        .start(up.addr);
    let m = page.query("pornhub.com", RecordType::A);
    assert_eq!(addresses(&m), vec!["10.0.0.80"]);
    assert_eq!(m.answers[0].ttl, 5);
}

#[test]
fn check_explains_blocked_and_allowed_names() {
    let setup = Setup::new();
    let (ok, out, err) = setup.run(&["check", "www.TikTok.com."]);
    assert!(ok, "{err}");
    assert!(out.contains("BLOCKED"), "{out}");
    assert!(out.contains("social_media"), "{out}");
    assert!(out.contains("social_media.txt:1"), "{out}");

    let (ok, out, _) = setup.run(&["check", "childline.org.uk", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["action"], "allow");
    assert_eq!(v["rule"], "allow childline.org.uk");

    let (_, out, _) = setup.run(&["check", "bücher.example", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["name"], "xn--bcher-kva.example");
    assert_eq!(v["action"], "allow");
    assert_eq!(v["rule"], "unlisted");
    assert_eq!(v["answered_by"], "the upstreams");

    let school =
        Setup::new().toml("[[forward]]\nzone = \"school.internal\"\nupstreams = [\"10.0.0.5\"]");
    let (_, out, _) = school.run(&["check", "dc1.School.Internal"]);
    assert!(
        out.contains("answered: by the school's DNS for school.internal (10.0.0.5:53)"),
        "{out}"
    );
    let (_, out, _) = school.run(&["check", "20.1.168.192.in-addr.arpa"]);
    assert!(out.contains("answered: by schoolgate itself"), "{out}");
}

#[test]
fn bad_config_names_file_line_and_field() {
    let setup = Setup::new().server("listen_on = [\"127.0.0.1:53\"]");
    let (ok, _, err) = setup.run(&["check", "example.org"]);
    assert!(!ok);
    assert!(err.contains("schoolgate.toml:4"), "{err}");
    assert!(err.contains("listen_on"), "{err}");

    let missing = Setup::new().toml("[[category]]\nname = \"drugs\"\nfiles = [\"drugs.txt\"]\n");
    let config = missing.config();
    let mut server = std::process::Command::new(crate::harness::bin())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!server.status.success());
    let err = String::from_utf8_lossy(&std::mem::take(&mut server.stderr)).into_owned();
    assert!(
        err.contains("field `category.files`") && err.contains("drugs.txt"),
        "{err}"
    );
}

#[test]
fn bad_list_lines_are_reported_and_the_rest_loads() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    setup.list(
        "adult.txt",
        "pornhub.com\nthis is not a domain\nxvideos.com\n",
    );
    let server = setup.start(up.addr);
    server.expect_log("adult.txt:2");
    assert_eq!(
        addresses(&server.query("xvideos.com", RecordType::A)),
        vec!["0.0.0.0"]
    );
}

#[test]
fn compiled_lists_are_reused_across_restarts() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let first = setup.start(up.addr);
    first.expect_log("recompiled=[\"allow\"");
    drop(first);
    let second = setup.start(up.addr);
    second.expect_log("recompiled=[]");
    assert_eq!(
        addresses(&second.query("bet365.com", RecordType::A)),
        vec!["0.0.0.0"]
    );
}

#[test]
fn serves_ipv6_listeners() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let server = crate::harness::Server::start(
        &setup.config(),
        &["--listen", "[::1]:0", "--upstream", &up.addr.to_string()],
    );
    let m = Ask::new("pornhub.com", RecordType::A)
        .send(server.addr)
        .unwrap();
    assert_eq!(addresses(&m), vec!["0.0.0.0"]);
}

#[test]
fn empty_lists_refuse_to_start() {
    let setup = Setup::new();
    for f in [
        "illegal.txt",
        "adult.txt",
        "gambling.txt",
        "social_media.txt",
        "circumvention.txt",
    ] {
        setup.list(f, "# nothing\n");
    }
    let (ok, _, err) = setup.run(&["serve"]);
    assert!(!ok);
    assert!(err.contains("refusing to run unfiltered"), "{err}");
}

#[test]
fn tcp_clients_are_told_apart_by_address_too() {
    let up = Fixture::start(Zone::standard());
    let server = Setup::new()
        .server("client_networks = [\"127.0.0.1/32\"]")
        .start(up.addr);
    let outsider = Ask::new("www.example.org", RecordType::A)
        .tcp()
        .from("127.0.0.7")
        .send(server.addr)
        .unwrap();
    assert_eq!(outsider.metadata.response_code, ResponseCode::Refused);
    let insider = Ask::new("www.example.org", RecordType::A)
        .tcp()
        .send(server.addr)
        .unwrap();
    assert_eq!(addresses(&insider), vec!["192.0.2.11"]);
}

#[test]
fn the_schools_own_names_go_to_its_dns_and_internal_ones_never_leave() {
    let up = Fixture::start(Zone::standard());
    let mut zone = Zone::default();
    zone.a("dc1.school.internal", "10.0.0.5");
    let school = Fixture::start(zone);
    let server = Setup::new()
        .toml(&format!(
            "[[forward]]\nzone = \"school.internal\"\nupstreams = [\"{}\"]\n",
            school.addr
        ))
        .start(up.addr);

    assert_eq!(
        addresses(&server.query("DC1.school.internal", RecordType::A)),
        ["10.0.0.5"]
    );
    let nx = server.query("nosuch.school.internal", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(school.queries(), 2);

    assert_eq!(
        addresses(&server.query("localhost", RecordType::A)),
        ["127.0.0.1"]
    );
    assert_eq!(
        addresses(&server.query("printer.localhost", RecordType::AAAA)),
        ["::1"]
    );
    for (name, rtype) in [
        ("10.1.168.192.in-addr.arpa", RecordType::PTR),
        ("1.0.0.10.in-addr.arpa", RecordType::PTR),
        ("nas.home.arpa", RecordType::A),
        ("anything.invalid", RecordType::A),
    ] {
        let m = server.query(name, rtype);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
    }
    // Negative answers carry their zone's SOA, so devices cache them (RFC 2308).
    let nx = server.query("nas.home.arpa", RecordType::A);
    assert_eq!(soa(&nx), Some(("home.arpa.".to_string(), 10800, 10800)));
    let reverse = server.query("10.1.168.192.in-addr.arpa", RecordType::PTR);
    assert_eq!(soa(&reverse).unwrap().0, "168.192.in-addr.arpa.");
    let mx = server.query("localhost", RecordType::MX);
    assert_eq!(mx.metadata.response_code, ResponseCode::NoError);
    assert!(mx.answers.is_empty());
    assert_eq!(soa(&mx).unwrap().0, "localhost.");
    assert_eq!(soa(&server.query("localhost", RecordType::A)), None);
    let svcb = server.query("_dns.resolver.arpa", RecordType::SVCB);
    assert_eq!(svcb.metadata.response_code, ResponseCode::NoError);
    assert!(svcb.answers.is_empty(), "no encrypted resolver to move to");
    assert_eq!(soa(&svcb).unwrap().0, "resolver.arpa.");
    assert_eq!(up.queries(), 0, "nothing internal was sent to the internet");

    assert_eq!(
        addresses(&server.query("www.example.org", RecordType::A)),
        ["192.0.2.11"]
    );
    assert_eq!((up.queries(), school.queries()), (1, 2));
    let forwarded = server.query("www.example.org", RecordType::A);
    assert!(forwarded.metadata.recursion_available);

    let (_, health) = crate::ops::http_get(server.admin.unwrap(), "/healthz");
    let v: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(v["forwards"][0]["zone"], "school.internal", "{v}");
    assert_eq!(v["forwards"][0]["addr"], school.addr.to_string(), "{v}");
}

/// The SOA in an answer's authority section: its owner, TTL and negative-caching minimum.
fn soa(m: &hickory_proto::op::Message) -> Option<(String, u32, u32)> {
    m.authorities.iter().find_map(|r| match &r.data {
        hickory_proto::rr::RData::SOA(soa) => Some((r.name.to_ascii(), r.ttl, soa.minimum)),
        _ => None,
    })
}

#[test]
fn a_burst_from_one_client_port_gets_every_answer_right() {
    // Replies of one size to one client go out as one segmented message; each must still
    // arrive as its own datagram, with its own ID, question and answer.
    let up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);
    assert_eq!(
        addresses(&server.query("www.example.org", RecordType::A)),
        ["192.0.2.11"]
    );
    let names = [
        ("www.tiktok.com", "0.0.0.0"),
        ("pornhub.com", "0.0.0.0"),
        ("bet365.com", "0.0.0.0"),
        ("www.example.org", "192.0.2.11"),
    ];
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let burst = 120u16;
    // Stopped, the server finds the whole burst waiting and answers it in batches.
    server.signal("STOP");
    for id in 0..burst {
        let mut q = Ask::new(names[usize::from(id) % 4].0, RecordType::A).bytes();
        q[0..2].copy_from_slice(&id.to_be_bytes());
        sock.send_to(&q, server.addr).unwrap();
    }
    server.signal("CONT");
    let mut seen = vec![false; usize::from(burst)];
    let mut buf = [0u8; 1500];
    while let Ok(n) = sock.recv(&mut buf) {
        let m = hickory_proto::op::Message::from_vec(&buf[..n]).expect("a whole DNS message");
        let id = usize::from(m.metadata.id);
        let (name, address) = names[id % 4];
        assert!(!seen[id], "reply {id} arrived twice");
        seen[id] = true;
        assert_eq!(
            m.queries[0].name().to_ascii(),
            format!("{name}."),
            "reply {id}"
        );
        assert_eq!(addresses(&m), [address], "reply {id} ({name})");
        if seen.iter().all(|&s| s) {
            break;
        }
    }
    let missing: Vec<_> = (0..seen.len()).filter(|&i| !seen[i]).collect();
    assert!(missing.is_empty(), "no reply to {missing:?}");
}
