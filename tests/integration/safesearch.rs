//! Safe search rewrites and circumvention resistance: search names answered with a CNAME to
//! the vendor's safe host plus its addresses (resolved through the real upstream), per-group
//! modes, bypass canaries answered NXDOMAIN, and DoH resolvers blocked as `circumvention`.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::fixture::{Fixture, Zone};
use crate::harness::{addresses, cnames, dig, ede_text, Ask, Setup};
use crate::logs::{today_file, wait_for_records};

/// Pupils strict (127.0.0.2), staff moderate (127.0.0.3), a lab with safe search off (127.0.0.4).
fn groups() -> Setup {
    Setup::new().toml(
        r#"
[groups.pupils]
block = ["illegal", "adult", "gambling", "social_media", "circumvention"]
safesearch = "strict"
block_unsafe_search = true

[groups.staff]
block = ["illegal", "adult", "gambling"]
safesearch = "moderate"

[groups.lab]
block = ["illegal"]
safesearch = "off"

[[client]]
name = "Year 6 laptop"
addr = "127.0.0.2"
group = "pupils"

[[client]]
name = "Staff laptop"
addr = "127.0.0.3"
group = "staff"

[[client]]
name = "Lab"
addr = "127.0.0.4"
group = "lab"
"#,
    )
}

#[test]
fn search_engines_answer_with_cname_and_safe_address() {
    let up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);

    for name in ["www.google.co.uk", "www.google.com", "google.de"] {
        let m = server.query(name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(cnames(&m), vec!["forcesafesearch.google.com"], "{name}");
        assert_eq!(
            addresses(&m),
            vec!["216.239.38.120"],
            "{name}: the safe host's address"
        );
    }
    let v6 = Ask::new("www.google.com", RecordType::AAAA)
        .tcp()
        .send(server.addr)
        .unwrap();
    assert_eq!(cnames(&v6), vec!["forcesafesearch.google.com"]);
    assert_eq!(addresses(&v6), vec!["2001:4860:4802:32::78"]);

    let bing = server.query("www.bing.com", RecordType::A);
    assert_eq!(cnames(&bing), vec!["strict.bing.com"]);
    assert_eq!(addresses(&bing), vec!["204.79.197.220"]);
    let ddg = server.query("duckduckgo.com", RecordType::A);
    assert_eq!(cnames(&ddg), vec!["safe.duckduckgo.com"]);
    assert_eq!(addresses(&ddg), vec!["52.142.124.215"]);

    // The safe host's answer is cached: asking again (in another case) costs no upstream query.
    let asked = up.queries();
    let again = Ask::new("WWW.Google.CO.UK", RecordType::A)
        .no_edns()
        .send(server.addr)
        .unwrap();
    assert_eq!(addresses(&again), vec!["216.239.38.120"]);
    assert_eq!(again.queries[0].name().to_ascii(), "WWW.Google.CO.UK.");
    assert_eq!(up.queries(), asked);

    let out = dig(server.addr, &["www.google.co.uk"]);
    assert!(out.contains("CNAME\tforcesafesearch.google.com."), "{out}");
    assert!(out.contains("216.239.38.120"), "{out}");
}

#[test]
fn youtube_is_strict_for_pupils_and_moderate_for_staff() {
    let up = Fixture::start(Zone::standard());
    let server = groups().start(up.addr);

    let pupil = Ask::new("www.youtube.com", RecordType::A)
        .from("127.0.0.2")
        .send(server.addr)
        .unwrap();
    assert_eq!(cnames(&pupil), vec!["restrict.youtube.com"]);
    assert_eq!(addresses(&pupil), vec!["216.239.38.120"]);

    let staff = Ask::new("m.youtube.com", RecordType::A)
        .from("127.0.0.3")
        .send(server.addr)
        .unwrap();
    assert_eq!(cnames(&staff), vec!["restrictmoderate.youtube.com"]);
    assert_eq!(addresses(&staff), vec!["216.239.38.119"]);

    let api = Ask::new("youtubei.googleapis.com", RecordType::A)
        .from("127.0.0.2")
        .send(server.addr)
        .unwrap();
    assert_eq!(cnames(&api), vec!["restrict.youtube.com"]);

    // Bing has one safe host, so staff get it too.
    let bing = Ask::new("www.bing.com", RecordType::A)
        .from("127.0.0.3")
        .send(server.addr)
        .unwrap();
    assert_eq!(cnames(&bing), vec!["strict.bing.com"]);

    // A group with safe search off gets the real answer.
    let lab = Ask::new("www.google.com", RecordType::A)
        .from("127.0.0.4")
        .send(server.addr)
        .unwrap();
    assert!(cnames(&lab).is_empty());
    assert_eq!(addresses(&lab), vec!["192.0.2.41"]);
}

#[test]
fn canaries_are_nxdomain_for_everyone_and_never_forwarded() {
    let up = Fixture::start(Zone::standard());
    let server = groups().start(up.addr);
    for from in ["127.0.0.1", "127.0.0.4"] {
        for name in [
            "use-application-dns.net",
            "mask.icloud.com",
            "mask-h2.icloud.com",
        ] {
            for rtype in [RecordType::A, RecordType::AAAA] {
                let m = Ask::new(name, rtype).from(from).send(server.addr).unwrap();
                assert_eq!(
                    m.metadata.response_code,
                    ResponseCode::NXDomain,
                    "{name} from {from}"
                );
                assert!(m.answers.is_empty());
            }
        }
    }
    assert_eq!(up.queries(), 0, "canaries are answered here");
}

#[test]
fn doh_resolvers_and_unsafe_engines_are_blocked() {
    let up = Fixture::start(Zone::standard());
    let server = groups().start(up.addr);

    let doh = Ask::new("dns.google", RecordType::A)
        .from("127.0.0.2")
        .send(server.addr)
        .unwrap();
    assert_eq!(addresses(&doh), vec!["0.0.0.0"]);
    assert!(
        ede_text(&doh).unwrap().contains("circumvention"),
        "{:?}",
        ede_text(&doh)
    );

    let unsafe_engine = Ask::new("www.startpage.com", RecordType::A)
        .from("127.0.0.2")
        .send(server.addr)
        .unwrap();
    assert_eq!(addresses(&unsafe_engine), vec!["0.0.0.0"]);
    assert!(ede_text(&unsafe_engine).unwrap().contains("unsafe_search"));
    // Staff did not ask for engines without a safe mode to be blocked: forwarded (the fixture
    // does not know the name).
    let staff = Ask::new("www.startpage.com", RecordType::A)
        .from("127.0.0.3")
        .send(server.addr)
        .unwrap();
    assert_eq!(staff.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn rewrites_follow_the_data_file_and_check_explains_them() {
    let up = Fixture::start({
        let mut z = Zone::standard();
        z.a("safe.search.example", "192.0.2.99");
        z
    });
    let setup = groups().toml("[safesearch]\nfile = \"search.toml\"\n");
    let config_dir = setup.config().parent().unwrap().to_path_buf();
    std::fs::write(
        config_dir.join("search.toml"),
        "[[engine]]\nname = \"examplesearch\"\nstrict = \"safe.search.example\"\nwith_www = true\ndomains = [\"search.example\"]\n\n[canary]\nnames = [\"use-application-dns.net\"]\n",
    )
    .unwrap();

    let (ok, out, err) = setup.run(&[
        "check",
        "www.search.example",
        "--client",
        "Year 6 laptop",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["action"], "rewrite");
    assert_eq!(v["target"], "safe.search.example");
    assert_eq!(v["rule"], "safesearch:examplesearch");
    assert_eq!(v["group"], "pupils");

    let (_, out, _) = setup.run(&["check", "www.google.co.uk"]);
    assert!(
        out.contains("ALLOWED"),
        "engines not in the school's file are not rewritten: {out}"
    );
    let (_, out, _) = setup.run(&["check", "use-application-dns.net"]);
    assert!(out.contains("NXDOMAIN"), "{out}");

    let server = setup.start(up.addr);
    let m = Ask::new("search.example", RecordType::A)
        .from("127.0.0.2")
        .send(server.addr)
        .unwrap();
    assert_eq!(cnames(&m), vec!["safe.search.example"]);
    assert_eq!(addresses(&m), vec!["192.0.2.99"]);
    // Other types get the alias alone, so no record can carry the unsafe host's addresses.
    let https = Ask::new("search.example", RecordType::HTTPS)
        .from("127.0.0.2")
        .send(server.addr)
        .unwrap();
    assert_eq!(cnames(&https), vec!["safe.search.example"]);
    assert_eq!(https.answers.len(), 1);
}

#[test]
fn bad_safesearch_file_names_file_line_and_field() {
    let setup = Setup::new().toml("[safesearch]\nfile = \"search.toml\"\n");
    let config_dir = setup.config().parent().unwrap().to_path_buf();
    std::fs::write(
        config_dir.join("search.toml"),
        "[[engine]]\nname = \"x\"\nstrict = \"safe.example\"\ndomains = [\n  \"bad..example\",\n]\n",
    )
    .unwrap();
    let (ok, _, err) = setup.run(&["check", "example.org"]);
    assert!(!ok);
    assert!(err.contains("search.toml:5"), "{err}");
    assert!(err.contains("engine.domains"), "{err}");
}

#[test]
fn rewrites_canaries_and_circumvention_are_logged() {
    let up = Fixture::start(Zone::standard());
    let setup = groups();
    let server = setup.start(up.addr);
    for name in ["www.google.co.uk", "use-application-dns.net", "dns.google"] {
        Ask::new(name, RecordType::A)
            .from("127.0.0.2")
            .send(server.addr)
            .unwrap();
    }

    let logs = setup.dir.path().join("state/logs");
    let access = wait_for_records(&today_file(&logs, "access"), 3);
    let action = |name: &str| {
        access
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| (r["action"].clone(), r["rule"].clone()))
    };
    assert_eq!(
        action("www.google.co.uk"),
        Some(("rewrite".into(), "safesearch:google".into())),
        "{access:?}"
    );
    assert_eq!(
        action("use-application-dns.net"),
        Some(("nxdomain".into(), "canary".into()))
    );
    let breaches = wait_for_records(&today_file(&logs, "breach"), 1);
    assert_eq!(
        breaches.len(),
        1,
        "only the DoH resolver is a breach: {breaches:?}"
    );
    assert_eq!(breaches[0]["name"], "dns.google");
    assert_eq!(breaches[0]["category"], "circumvention");
    assert_eq!(breaches[0]["client_name"], "Year 6 laptop");
}

#[test]
fn rewrite_with_upstream_down_fails_safe_and_recovers_from_cache() {
    let mut up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);
    let first = server.query("www.google.com", RecordType::A);
    assert_eq!(addresses(&first), vec!["216.239.38.120"]);
    up.stop();
    // The safe host's answer is cached: other Google domains still get it with no upstream.
    let cached = server.query("www.google.de", RecordType::A);
    assert_eq!(cnames(&cached), vec!["forcesafesearch.google.com"]);
    assert_eq!(addresses(&cached), vec!["216.239.38.120"]);
    // A safe host never resolved: SERVFAIL, never the unsafe host's own address.
    let bing = server.query("www.bing.com", RecordType::A);
    assert_eq!(bing.metadata.response_code, ResponseCode::ServFail);
    assert!(addresses(&bing).is_empty());
}
