//! Clients and groups: who asked decides what they get. Different groups get different answers
//! for the same name, schedules switch at the configured local time, approved exemptions take
//! effect on a running server and end by themselves, DHCP leases name devices, and only trusted
//! forwarders may say who the real client is.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::RecordType;

use crate::fixture::{Fixture, Zone};
use crate::harness::{addresses, Ask, Server, Setup};

const PUPILS_AND_STAFF: &str = r#"
[groups.pupils]
block = ["illegal", "adult", "gambling", "social_media", "circumvention"]

[groups.staff]
block = ["illegal", "adult", "gambling", "circumvention"]

[[client]]
name = "Pupil tablet"
addr = "127.0.0.2"
group = "pupils"

[[client]]
name = "Staff laptop"
addr = "127.0.0.3"
group = "staff"

[exemptions]
approvers = ["Head Teacher", "E-Safety Coordinator"]
"#;

fn tiktok(server: &Server, from: &str) -> Vec<String> {
    let answer = Ask::new("www.tiktok.com", RecordType::A)
        .from(from)
        .send(server.addr)
        .expect("answer");
    addresses(&answer)
}

fn check_json(setup: &Setup, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["check", "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = setup.run(&all);
    assert!(ok, "check failed: {err}");
    serde_json::from_str(&out).expect("check --json prints JSON")
}

fn access_records(setup: &Setup) -> Vec<serde_json::Value> {
    let today = Utc::now()
        .with_timezone(&chrono_tz::Europe::London)
        .format("%Y-%m-%d");
    let path = setup
        .dir
        .path()
        .join(format!("state/logs/access-{today}.jsonl"));
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// Waits until the access log has a record for `client` asking `name`; returns its client_name.
fn logged_name(setup: &Setup, client: &str, name: &str, nth: usize) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: Vec<_> = access_records(setup)
            .into_iter()
            .filter(|r| r["client"] == client && r["name"] == name)
            .collect();
        if let Some(r) = found.get(nth) {
            return r["client_name"].as_str().map(str::to_string);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn reloads(server: &Server) -> usize {
    server.log().matches("reloaded").count()
}

fn wait_for_reloads(server: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while reloads(server) < n {
        assert!(
            Instant::now() < deadline,
            "server did not reload:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_clients_get_different_answers_for_the_same_name() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new().toml(PUPILS_AND_STAFF);
    let server = setup.start(up.addr);
    assert_eq!(tiktok(&server, "127.0.0.2"), vec!["0.0.0.0"]);
    assert_eq!(tiktok(&server, "127.0.0.3"), vec!["192.0.2.66"]);
    // Unknown devices fall into the default group, which blocks everything listed.
    assert_eq!(tiktok(&server, "127.0.0.9"), vec!["0.0.0.0"]);
    assert_eq!(
        logged_name(&setup, "127.0.0.3", "www.tiktok.com", 0).as_deref(),
        Some("Staff laptop")
    );
}

#[test]
fn group_lists_apply_to_their_group_only_and_never_beat_locked() {
    let setup = Setup::new().toml(&format!(
        "{PUPILS_AND_STAFF}\n[groups.juniors]\nblock = [\"illegal\", \"gambling\"]\nallow_files = [\"juniors-allow.txt\"]\nblock_files = [\"juniors-block.txt\"]\n\n[[client]]\nname = \"Year 4\"\naddr = \"127.0.4.0/24\"\ngroup = \"juniors\"\n"
    ));
    setup.list(
        "juniors-allow.txt",
        "# class project\nbet365.com\niwf-test.schoolgate.test\n",
    );
    setup.list(
        "juniors-block.txt",
        "# games the teachers asked to stop\n\nroblox.com\n",
    );

    let junior = check_json(&setup, &["www.roblox.com", "--client", "127.0.4.7"]);
    assert_eq!(junior["action"], "block");
    assert_eq!(junior["list"], "group:juniors:block");
    assert_eq!(junior["line"], 3);
    assert_eq!(junior["group"], "juniors");
    let staff = check_json(&setup, &["www.roblox.com", "--client", "Staff laptop"]);
    assert_eq!(staff["action"], "allow");

    let junior = check_json(&setup, &["bet365.com", "--client", "Year 4"]);
    assert_eq!(junior["action"], "allow");
    assert_eq!(junior["list"], "group:juniors:allow");
    assert_eq!(junior["rule"], "allow bet365.com");
    let staff = check_json(&setup, &["bet365.com", "--client", "127.0.0.3"]);
    assert_eq!(
        (staff["action"].as_str(), staff["category"].as_str()),
        (Some("block"), Some("gambling"))
    );

    let locked = check_json(
        &setup,
        &["iwf-test.schoolgate.test", "--client", "127.0.4.7"],
    );
    assert_eq!(locked["action"], "block");
    assert_eq!(locked["category"], "illegal");
}

#[test]
fn schedule_switches_at_the_configured_local_time() {
    let setup = Setup::new().toml(&format!(
        "{PUPILS_AND_STAFF}\n[groups.teachers]\nblock = [\"illegal\", \"social_media\"]\n\n[[groups.teachers.schedule]]\nname = \"lunch\"\ndays = [\"weekdays\"]\nfrom = \"12:00\"\nto = \"13:15\"\nunblock = [\"social_media\"]\n\n[[groups.teachers.schedule]]\nname = \"lessons\"\ndays = [\"weekdays\"]\nfrom = \"09:00\"\nto = \"12:00\"\nblock = [\"gambling\"]\n\n[[client]]\nname = \"Teacher laptop\"\naddr = \"127.0.0.4\"\ngroup = \"teachers\"\n"
    ));
    let at = |name: &str, time: &str| {
        check_json(&setup, &[name, "--client", "Teacher laptop", "--at", time])
    };
    // Wednesday 25 November 2026, Europe/London (GMT).
    let before = at("www.tiktok.com", "2026-11-25 11:59");
    assert_eq!(
        (before["action"].as_str(), before["schedule"].as_str()),
        (Some("block"), Some("lessons"))
    );
    let lunch = at("www.tiktok.com", "2026-11-25 12:00");
    assert_eq!(
        (lunch["action"].as_str(), lunch["schedule"].as_str()),
        (Some("allow"), Some("lunch"))
    );
    let after = at("www.tiktok.com", "2026-11-25 13:15");
    assert_eq!(
        (after["action"].as_str(), after["schedule"].as_str()),
        (Some("block"), None)
    );
    // Saturday lunchtime is not a weekday.
    assert_eq!(at("www.tiktok.com", "2026-11-28 12:30")["action"], "block");
    // The schedule adds a category during lessons only.
    assert_eq!(at("bet365.com", "2026-11-25 10:00")["action"], "block");
    assert_eq!(at("bet365.com", "2026-11-25 16:00")["action"], "allow");
    // In summer 11:30 UTC is 12:30 in London: lunch; 12:30 UTC is 13:30: not.
    assert_eq!(
        at("www.tiktok.com", "2026-07-01T11:30:00Z")["action"],
        "allow"
    );
    assert_eq!(
        at("www.tiktok.com", "2026-07-01T12:30:00Z")["action"],
        "block"
    );
}

#[test]
fn exemption_takes_effect_on_a_running_server_and_expires_by_itself() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new().toml(PUPILS_AND_STAFF);
    let server = setup.start(up.addr);
    assert_eq!(tiktok(&server, "127.0.0.2"), vec!["0.0.0.0"]);

    let until = Utc::now() + chrono::Duration::seconds(4);
    let before = reloads(&server);
    let (ok, out, err) = setup.run(&[
        "exempt",
        "add",
        "--client",
        "Pupil tablet",
        "--categories",
        "social_media",
        "--until",
        &until.to_rfc3339(),
        "--approved-by",
        "head teacher",
        "--reason",
        "media studies coursework",
    ]);
    assert!(ok, "exempt add failed: {err}");
    assert!(out.contains("exemption added"), "{out}");
    wait_for_reloads(&server, before + 1);
    assert!(
        Utc::now() < until,
        "reload took too long for this test's window"
    );
    assert_eq!(tiktok(&server, "127.0.0.2"), vec!["192.0.2.66"]);
    // Only that client, and only that category.
    assert_eq!(tiktok(&server, "127.0.0.9"), vec!["0.0.0.0"]);
    let adult = Ask::new("pornhub.com", RecordType::A)
        .from("127.0.0.2")
        .send(server.addr)
        .expect("answer");
    assert_eq!(addresses(&adult), vec!["0.0.0.0"]);

    let (_, list, _) = setup.run(&["exempt", "list"]);
    assert!(
        list.contains("Pupil tablet: social_media until")
            && list.contains("(active), approved by Head Teacher"),
        "{list}"
    );
    let changes = std::fs::read_to_string(setup.dir.path().join("state/logs/changes.jsonl"))
        .expect("change-control log");
    let record: serde_json::Value = changes
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .find(|r| r["kind"] == "exemption")
        .expect("an exemption record");
    assert_eq!(record["kind"], "exemption");
    assert_eq!(record["action"], "add");
    assert_eq!(record["by"], "Head Teacher");
    assert_eq!(record["client"], "Pupil tablet");
    assert_eq!(record["reason"], "media studies coursework");
    let (_, shown, _) = setup.run(&["changes"]);
    assert!(
        shown.contains("Head Teacher  exemption add: social_media lifted for Pupil tablet"),
        "`schoolgate changes` shows exemptions beside list edits: {shown}"
    );

    // It ends on its own: no edit, no reload. (One save can reach the watcher as two batches,
    // so let reloads settle before counting.)
    let mut reloads_before_expiry = reloads(&server);
    loop {
        std::thread::sleep(Duration::from_millis(700));
        let now = reloads(&server);
        if now == reloads_before_expiry {
            break;
        }
        reloads_before_expiry = now;
    }
    let wait = (until - Utc::now()).to_std().unwrap_or_default();
    std::thread::sleep(wait + Duration::from_millis(200));
    assert_eq!(tiktok(&server, "127.0.0.2"), vec!["0.0.0.0"]);
    assert_eq!(reloads(&server), reloads_before_expiry, "{}", server.log());
}

#[test]
fn unapproved_or_locked_exemptions_are_refused_and_check_explains_approved_ones() {
    let setup = Setup::new().toml(PUPILS_AND_STAFF);
    let until = Utc::now() + chrono::Duration::hours(2);
    let add = |by: &str, categories: &str| {
        setup.run(&[
            "exempt",
            "add",
            "--client",
            "127.0.0.2",
            "--categories",
            categories,
            "--until",
            &until.to_rfc3339(),
            "--approved-by",
            by,
            "--reason",
            "research project",
        ])
    };
    let (ok, _, err) = add("Mr Smith", "social_media");
    assert!(!ok);
    assert!(
        err.contains("\"Mr Smith\" is not an approver")
            && err.contains("Head Teacher, E-Safety Coordinator"),
        "{err}"
    );
    let (ok, _, err) = add("Head Teacher", "social_media,illegal");
    assert!(!ok);
    assert!(err.contains("\"illegal\" is locked"), "{err}");
    let exemptions = setup.dir.path().join("state/exemptions.json");
    assert!(!exemptions.exists(), "a refused exemption was stored");
    assert!(!setup.dir.path().join("state/logs/changes.jsonl").exists());
    assert_eq!(
        check_json(&setup, &["www.tiktok.com", "--client", "127.0.0.2"])["action"],
        "block"
    );

    let (ok, _, err) = add("e-safety coordinator", "social_media");
    assert!(ok, "{err}");
    let in_force = (until - chrono::Duration::minutes(1)).to_rfc3339();
    let d = check_json(
        &setup,
        &["www.tiktok.com", "--client", "127.0.0.2", "--at", &in_force],
    );
    assert_eq!(d["action"], "allow");
    assert_eq!(d["exemption"]["approved_by"], "E-Safety Coordinator");
    assert_eq!(d["exemption"]["reason"], "research project");
    let (_, text, _) = setup.run(&["check", "www.tiktok.com", "--client", "127.0.0.2"]);
    assert!(
        text.contains("exemption: social_media lifted for 127.0.0.2"),
        "{text}"
    );
    let ended = (until + chrono::Duration::minutes(1)).to_rfc3339();
    let d = check_json(
        &setup,
        &["www.tiktok.com", "--client", "127.0.0.2", "--at", &ended],
    );
    assert_eq!(
        (d["action"].as_str(), &d["exemption"]),
        (Some("block"), &serde_json::Value::Null)
    );

    let (ok, _, err) = setup.run(&[
        "exempt",
        "remove",
        "--client",
        "127.0.0.2",
        "--approved-by",
        "Head Teacher",
        "--reason",
        "project finished",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        check_json(&setup, &["www.tiktok.com", "--client", "127.0.0.2"])["action"],
        "block"
    );
}

fn lease_setup(extra: &str) -> (Setup, PathBuf) {
    let setup = Setup::new().toml(&format!(
        "{PUPILS_AND_STAFF}\n[groups.library]\nblock = [\"illegal\", \"adult\", \"gambling\", \"circumvention\"]\n\n[[client]]\nhostname = \"lib-pc-*\"\ngroup = \"library\"\n\n[dhcp]\nleases = [\"../dhcp/dnsmasq.leases\", \"../dhcp/dhcpd.leases\"]\n{extra}"
    ));
    let dhcp = setup.dir.path().join("dhcp");
    std::fs::create_dir_all(&dhcp).unwrap();
    write_dnsmasq(&dhcp, "LIB-PC-07", "07");
    std::fs::write(
        dhcp.join("dhcpd.leases"),
        "# dhcpd.leases(5)\nauthoring-byte-order little-endian;\n\
         lease 127.0.0.8 {\n  starts 4 2026/11/26 08:00:00;\n  binding state active;\n  hardware ethernet aa:bb:cc:dd:ee:01;\n  client-hostname \"OLD-NAME\";\n}\n\
         lease 127.0.0.8 {\n  starts 4 2026/11/26 09:00:00;\n  binding state active;\n  hardware ethernet aa:bb:cc:dd:ee:08;\n  uid \"\\001\\252\";\n  client-hostname \"OFFICE-8\";\n}\n",
    )
    .unwrap();
    (setup, dhcp)
}

fn write_dnsmasq(dir: &Path, host: &str, mac_tail: &str) {
    let tmp = dir.join("dnsmasq.leases.new");
    std::fs::write(
        &tmp,
        format!("1900000000 aa:bb:cc:dd:ee:{mac_tail} 127.0.0.7 {host} 01:aa:bb:cc:dd:ee:{mac_tail}\n1900000000 aa:bb:cc:dd:ee:03 127.0.0.3 STAFF-LAPTOP *\n"),
    )
    .unwrap();
    // dnsmasq writes a new file and renames it over the old one.
    std::fs::rename(tmp, dir.join("dnsmasq.leases")).unwrap();
}

#[test]
fn lease_names_appear_in_check_and_the_access_log_and_follow_the_lease_file() {
    let (setup, dhcp) = lease_setup("");
    let lib = check_json(&setup, &["www.tiktok.com", "--client", "lib-pc-07"]);
    assert_eq!(lib["client"], "127.0.0.7");
    assert_eq!(lib["client_name"], "LIB-PC-07 (aa:bb:cc:dd:ee:07)");
    assert_eq!(
        (lib["group"].as_str(), lib["action"].as_str()),
        (Some("library"), Some("allow"))
    );
    let office = check_json(&setup, &["www.tiktok.com", "--client", "127.0.0.8"]);
    assert_eq!(office["client_name"], "OFFICE-8 (aa:bb:cc:dd:ee:08)");
    assert_eq!(office["group"], "default");
    let (_, text, _) = setup.run(&["check", "www.tiktok.com", "--client", "OFFICE-8"]);
    assert!(
        text.contains("client:   127.0.0.8 (OFFICE-8 (aa:bb:cc:dd:ee:08)), group default"),
        "{text}"
    );

    let up = Fixture::start(Zone::standard());
    let server = setup.start(up.addr);
    assert_eq!(tiktok(&server, "127.0.0.7"), vec!["192.0.2.66"]);
    assert_eq!(tiktok(&server, "127.0.0.8"), vec!["0.0.0.0"]);
    assert_eq!(
        logged_name(&setup, "127.0.0.7", "www.tiktok.com", 0).as_deref(),
        Some("LIB-PC-07 (aa:bb:cc:dd:ee:07)")
    );
    assert_eq!(
        logged_name(&setup, "127.0.0.8", "www.tiktok.com", 0).as_deref(),
        Some("OFFICE-8 (aa:bb:cc:dd:ee:08)")
    );

    // The address goes to another device: the running server names it from the new lease.
    let before = reloads(&server);
    write_dnsmasq(&dhcp, "IPAD-42", "42");
    wait_for_reloads(&server, before + 1);
    assert_eq!(tiktok(&server, "127.0.0.7"), vec!["0.0.0.0"]);
    assert_eq!(
        logged_name(&setup, "127.0.0.7", "www.tiktok.com", 1).as_deref(),
        Some("IPAD-42 (aa:bb:cc:dd:ee:42)")
    );
}

#[test]
fn only_trusted_forwarders_may_name_the_real_client() {
    let (setup, _dhcp) = lease_setup("");
    let setup = setup.server("trusted_forwarders = [\"127.0.0.5/32\"]");
    let up = Fixture::start(Zone::standard());
    let server = setup.start(up.addr);
    let via = |from: &str, option: Option<EdnsOption>| {
        let mut ask = Ask::new("www.tiktok.com", RecordType::A).from(from);
        if let Some(o) = option {
            ask = ask.edns_option(o);
        }
        addresses(&ask.send(server.addr).expect("answer"))
    };
    let ecs = || {
        Some(EdnsOption::Subnet(ClientSubnet::new(
            "127.0.0.3".parse().unwrap(),
            32,
            0,
        )))
    };
    let mac = || {
        Some(EdnsOption::Unknown(
            65001,
            vec![0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x03],
        ))
    };

    // The router itself is no one in particular.
    assert_eq!(via("127.0.0.5", None), vec!["0.0.0.0"]);
    // Through the trusted router, the staff laptop is recognised by ECS or by MAC.
    assert_eq!(via("127.0.0.5", ecs()), vec!["192.0.2.66"]);
    assert_eq!(via("127.0.0.5", mac()), vec!["192.0.2.66"]);
    // A device that adds the same options itself is ignored.
    assert_eq!(via("127.0.0.6", ecs()), vec!["0.0.0.0"]);
    assert_eq!(via("127.0.0.6", mac()), vec!["0.0.0.0"]);

    let forwarded: Vec<_> = (0..2)
        .map(|i| logged_name(&setup, "127.0.0.3", "www.tiktok.com", i))
        .collect();
    assert_eq!(
        forwarded,
        vec![
            Some("Staff laptop (aa:bb:cc:dd:ee:03)".to_string()),
            Some("Staff laptop (aa:bb:cc:dd:ee:03)".to_string())
        ]
    );
    assert!(access_records(&setup)
        .iter()
        .filter(|r| r["client"] == "127.0.0.6")
        .all(|r| r["group"] == "default"));
}

#[test]
fn devices_behind_a_trusted_forwarder_are_rate_limited_one_by_one() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new().toml(PUPILS_AND_STAFF).server(
        "trusted_forwarders = [\"127.0.0.5/32\"]\nrate_limit_qps = 1\nrate_limit_burst = 5",
    );
    let server = setup.start(up.addr);
    let via_router = |device: &str, timeout: Duration| {
        Ask::new("pornhub.com", RecordType::A)
            .from("127.0.0.5")
            .edns_option(EdnsOption::Subnet(ClientSubnet::new(
                device.parse().unwrap(),
                32,
                0,
            )))
            .timeout(timeout)
            .send(server.addr)
            .is_some()
    };
    let answered = (0..12)
        .filter(|_| via_router("127.0.0.20", Duration::from_millis(40)))
        .count();
    assert!(answered < 9, "flood not limited: {answered}/12 answered");
    // The router is not throttled as a whole: the next device behind it is served at once.
    assert!(via_router("127.0.0.21", Duration::from_millis(500)));
}
