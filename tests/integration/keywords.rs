//! Keyword rules: unlisted names blocked by what they contain, in the right category, without
//! the Scunthorpe problem; exceptions and the allow list keep innocent names answered; a new
//! keyword takes effect on hot reload; `check` explains the match.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::fixture::{Fixture, Zone};
use crate::harness::{addresses, ede_text, Ask, Setup};
use crate::logs::{today_file, wait_for_records};

fn zone() -> Zone {
    let mut z = Zone::standard();
    z.a("www.sussex.ac.uk", "192.0.2.51");
    z.a("www.middlesex.ac.uk", "192.0.2.52");
    z.a("www.scunthorpe-united.example", "192.0.2.53");
    z.a("sextons-plumbing.example", "192.0.2.54");
    z.a("therapists-directory.example", "192.0.2.55");
    z.a("roulette-royale.example", "192.0.2.56");
    z
}

fn setup() -> Setup {
    let s = Setup::new();
    s.list(
        "adult.keywords",
        "# adult keywords\nporn\np0rn\n=xxx\nsex except=essex,sussex,middlesex\ncunt except=scunthorpe\n",
    );
    s.list("gambling.txt", "bet365.com\nkeyword:casino\n");
    s.list("allow.txt", "childline.org.uk\nsextons-plumbing.example\n");
    s
}

#[test]
fn unlisted_names_are_blocked_by_keyword_in_their_category() {
    let up = Fixture::start(zone());
    let server = setup().start(up.addr);

    for (name, category) in [
        ("free-pornvids.example", "adult"),
        ("p0rnstars.example", "adult"),
        ("hot.xxx", "adult"),
        ("sexshop.example", "adult"),
        ("bestcasino.example", "gambling"),
    ] {
        let m = server.query(name, RecordType::A);
        assert_eq!(addresses(&m), vec!["0.0.0.0"], "{name}");
        assert!(
            ede_text(&m).unwrap().contains(category),
            "{name}: {:?}",
            ede_text(&m)
        );
    }
    assert_eq!(up.queries(), 0, "keyword-blocked names are never forwarded");
}

#[test]
fn exceptions_and_allow_entries_keep_innocent_names_answered() {
    let up = Fixture::start(zone());
    let server = setup().start(up.addr);
    for (name, addr) in [
        ("essex.gov.uk", "192.0.2.31"),
        ("www.sussex.ac.uk", "192.0.2.51"),
        ("www.middlesex.ac.uk", "192.0.2.52"),
        ("www.scunthorpe-united.example", "192.0.2.53"),
        ("sextons-plumbing.example", "192.0.2.54"),
    ] {
        let m = server.query(name, RecordType::A);
        assert_eq!(addresses(&m), vec![addr], "{name} must be answered");
    }
    // Token-only: `xxx` inside a word is not a hit (forwarded; the fixture says NXDOMAIN).
    let m = server.query("xxxlutz.example", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn keywords_only_fire_for_groups_that_block_the_category() {
    let up = Fixture::start(zone());
    let server = setup()
        .toml("[groups.staff]\nblock = [\"illegal\", \"adult\"]\n\n[[client]]\nname = \"staff\"\naddr = \"127.0.0.3\"\ngroup = \"staff\"\n")
        .start(up.addr);
    let staff = Ask::new("bestcasino.example", RecordType::A)
        .from("127.0.0.3")
        .send(server.addr)
        .unwrap();
    assert_eq!(
        staff.metadata.response_code,
        ResponseCode::NXDomain,
        "forwarded for staff"
    );
    let pupil = server.query("bestcasino.example", RecordType::A);
    assert_eq!(addresses(&pupil), vec!["0.0.0.0"]);
}

#[test]
fn a_new_keyword_file_takes_effect_on_hot_reload() {
    let up = Fixture::start(zone());
    let setup = setup();
    let server = setup.start(up.addr);
    assert_eq!(
        addresses(&server.query("roulette-royale.example", RecordType::A)),
        vec!["192.0.2.56"]
    );

    setup.list("gambling.keywords", "roulette\n");
    server.expect_log("reloaded");
    let m = server.query("roulette-royale.example", RecordType::A);
    assert_eq!(addresses(&m), vec!["0.0.0.0"], "{}", server.log());
    assert!(ede_text(&m).unwrap().contains("gambling"));
}

#[test]
fn check_explains_a_keyword_match() {
    let s = setup();
    let (ok, out, err) = s.run(&["check", "www.free-pornvids.example"]);
    assert!(ok, "{err}");
    assert!(out.contains("BLOCKED"), "{out}");
    assert!(out.contains("category: adult"), "{out}");
    assert!(out.contains("keyword:porn"), "{out}");
    assert!(out.contains("adult.keywords:2"), "{out}");
    assert!(out.contains("www.free-[porn]vids.example"), "{out}");

    let (_, out, _) = s.run(&["check", "bestcasino.example", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["rule"], "keyword:casino");
    assert_eq!(v["category"], "gambling");
    assert_eq!(v["line"], 2);
    assert_eq!(v["keyword"]["at"], 4);

    let (_, out, _) = s.run(&["check", "essex.gov.uk"]);
    assert!(out.contains("ALLOWED"), "{out}");
}

#[test]
fn bad_keyword_rules_are_reported_and_the_rest_load() {
    let up = Fixture::start(zone());
    let s = setup();
    s.list("adult.keywords", "porn\nab\nsex except=hello\n");
    let server = s.start(up.addr);
    server.expect_log("adult.keywords:2");
    server.expect_log("adult.keywords:3");
    assert_eq!(
        addresses(&server.query("pornvids.example", RecordType::A)),
        vec!["0.0.0.0"]
    );
}

#[test]
fn keyword_breaches_name_the_keyword_and_its_line() {
    let up = Fixture::start(zone());
    let setup = setup();
    let server = setup.start(up.addr);
    let m = server.query("www.free-pornvids.example", RecordType::A);
    assert_eq!(addresses(&m), vec!["0.0.0.0"]);

    let logs = setup.dir.path().join("state/logs");
    let breaches = wait_for_records(&today_file(&logs, "breach"), 1);
    let b = breaches
        .iter()
        .find(|r| r["name"] == "www.free-pornvids.example")
        .unwrap_or_else(|| panic!("{breaches:?}"));
    assert_eq!(b["action"], "block");
    assert_eq!(b["category"], "adult");
    assert_eq!(b["rule"], "keyword:porn");
    assert!(
        b["source"].as_str().unwrap().ends_with("adult.keywords:2"),
        "{b}"
    );
}
