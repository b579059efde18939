//! The coordinator's daily summary, immediate alerts and `logs --client`, from real queries
//! sent from several loopback addresses to a running server. Email goes to a real SMTP
//! server on loopback (aiosmtpd); webhooks to an HTTP listener in the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use serde_json::Value;

use crate::fixture::{Fixture, Zone};
use crate::harness::{Ask, Server, Setup};

const NAMED: &str = "YR6-LAPTOP-12";

fn school() -> Setup {
    Setup::new().toml(&format!(
        "[[client]]\nname = \"{NAMED}\"\naddr = \"127.0.0.3\"\ngroup = \"default\"\n\n[report]\nschool = \"Test Primary\"\n"
    ))
}

fn ask(server: &Server, from: &str, name: &str) {
    Ask::new(name, RecordType::A)
        .from(from)
        .send(server.addr)
        .unwrap_or_else(|| panic!("no answer for {name} from {from}"));
}

/// The day's traffic: .3 (named) tries an illegal name first, then other things; .2 keeps
/// trying adult sites and an encrypted-DNS resolver; .4 tries one social site.
fn traffic(server: &Server) {
    ask(server, "127.0.0.3", "iwf-test.schoolgate.test");
    ask(server, "127.0.0.3", "www.tiktok.com");
    ask(server, "127.0.0.3", "www.example.org");
    ask(server, "127.0.0.2", "bet365.com");
    for _ in 0..6 {
        ask(server, "127.0.0.2", "pornhub.com");
    }
    ask(server, "127.0.0.2", "dns.google");
    ask(server, "127.0.0.2", "www.example.org");
    ask(server, "127.0.0.4", "instagram.com");
}

fn stop(mut server: Server) {
    server.signal("TERM");
    // Generous: the whole suite shares two cores.
    let code = server.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", server.log());
}

fn today() -> String {
    chrono::Utc::now()
        .with_timezone(&chrono_tz::Europe::London)
        .format("%Y-%m-%d")
        .to_string()
}

fn now_rfc3339() -> String {
    chrono::Utc::now()
        .with_timezone(&chrono_tz::Europe::London)
        .to_rfc3339()
}

fn report(setup: &Setup, extra: &[&str]) -> String {
    let mut args = vec!["report", "daily", "--date", "today"];
    args.extend_from_slice(extra);
    let (ok, out, err) = setup.run(&args);
    assert!(ok, "report failed: {err}");
    out
}

fn write_changes(setup: &Setup) {
    // Where `schoolgate exempt` records grants: next to the query logs.
    let state = setup.dir.path().join("state/logs");
    std::fs::create_dir_all(&state).unwrap();
    let t = now_rfc3339();
    std::fs::write(
        state.join("changes.jsonl"),
        format!(
            "{{\"time\":\"2020-01-01T09:00:00+00:00\",\"by\":\"old\",\"list\":\"adult\",\"added\":[\"old.example\"]}}\n\
             {{\"time\":\"{t}\",\"by\":\"jsmith\",\"list\":\"gambling\",\"added\":[\"newbet.example\"],\"reason\":\"spotted in class\"}}\n\
             {{\"time\":\"{t}\",\"kind\":\"exemption\",\"action\":\"grant\",\"by\":\"r.patel\",\"client\":\"127.0.0.4\",\"categories\":[\"social_media\"],\"until\":\"{t}\",\"reason\":\"media club\"}}\n"
        ),
    )
    .unwrap();
}

/// The school after a day: its filtering changes recorded, then the test traffic served and
/// logged by a server that has since stopped.
fn a_logged_day() -> Setup {
    let up = Fixture::start(Zone::standard());
    let setup = school();
    write_changes(&setup);
    let server = setup.start(up.addr);
    traffic(&server);
    stop(server);
    setup
}

#[test]
fn daily_report_counts_and_orders_in_every_format() {
    let setup = a_logged_day();

    let json: Value = serde_json::from_str(&report(&setup, &["--format", "json"])).unwrap();
    assert_eq!(json["date"], today());
    assert_eq!(json["totals"]["breaches"], 11, "{json:#}");
    assert_eq!(json["totals"]["queries"], 13);
    assert_eq!(json["totals"]["clients"], 3);
    let serious = json["serious"].as_array().unwrap();
    assert_eq!(serious.len(), 1, "{json:#}");
    assert_eq!(serious[0]["client"]["addr"], "127.0.0.3");
    assert_eq!(serious[0]["client"]["name"], NAMED);
    assert_eq!(
        serious[0]["attempts"][0]["name"],
        "iwf-test.schoolgate.test"
    );
    let later: Vec<&str> = serious[0]["later"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        later,
        ["www.tiktok.com"],
        "blocked attempts after the alert"
    );
    assert_eq!(
        serious[0]["later_queries"], 2,
        "everything it asked afterwards is counted"
    );
    assert_eq!(json["totals"]["serious_attempts"], 1);
    let cats: Vec<(&str, u64)> = json["by_category"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["category"].as_str().unwrap(),
                c["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cats,
        [
            ("illegal", 1),
            ("adult", 6),
            ("social_media", 2),
            ("circumvention", 1),
            ("gambling", 1)
        ]
    );
    let clients: Vec<(&str, u64)> = json["by_client"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["client"]["addr"].as_str().unwrap(),
                c["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        clients,
        [("127.0.0.2", 8), ("127.0.0.3", 2), ("127.0.0.4", 1)]
    );
    assert_eq!(json["by_client"][0]["group"], "default");
    assert_eq!(json["by_client"][0]["repeated"], true);
    assert_eq!(json["repeated"][0]["category"], "adult");
    assert_eq!(json["repeated"][0]["attempts"], 6);
    assert_eq!(json["top_names"][0]["name"], "pornhub.com");
    assert_eq!(json["top_names"][0]["attempts"], 6);
    assert_eq!(json["circumvention"][0]["name"], "dns.google");
    assert_eq!(json["circumvention"][0]["client"]["addr"], "127.0.0.2");
    assert_eq!(json["by_hour"].as_array().unwrap().len(), 24);
    let by_hour: u64 = json["by_hour"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_u64().unwrap())
        .sum();
    assert_eq!(by_hour, 11);
    // The server records its first load of each list too; the 2020 entry is not today's.
    let changes = json["changes"].as_array().unwrap();
    assert!(changes.iter().all(|c| c["by"] != "old"), "only today's");
    let by_hand: Vec<&Value> = changes.iter().filter(|c| c["by"] == "jsmith").collect();
    assert_eq!(by_hand.len(), 1, "{changes:?}");
    assert_eq!(by_hand[0]["added"][0], "newbet.example");
    assert_eq!(by_hand[0]["target"], "gambling");
    assert_eq!(json["exemptions"][0]["target"], "127.0.0.4");
    assert_eq!(json["exemptions"][0]["action"], "grant");
    assert_eq!(json["exemptions"][0]["added"][0], "social_media");

    let text = report(&setup, &[]);
    assert!(text.contains("Test Primary"), "{text}");
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from:\n{text}"))
    };
    assert!(at("SERIOUS ALERTS") < at("BLOCKED BY CATEGORY"));
    assert!(at("YR6-LAPTOP-12 (127.0.0.3)") < at("BLOCKED BY CATEGORY"));
    assert!(at("iwf-test.schoolgate.test") < at("blocked later that day"));
    assert!(text
        .contains("2 queries in all after the first attempt (schoolgate logs --client 127.0.0.3)"));
    assert!(at("later that day") < at("www.tiktok.com"));
    assert!(text.contains("REPEATED"), "{text}");
    assert!(text[at("CIRCUMVENTION")..].contains("127.0.0.2 -> dns.google (1 attempts)"));
    assert!(at("FILTERING CHANGES") < at("newbet.example"));
    assert!(at("EXEMPTIONS") < at("media club"));

    let csv = report(&setup, &["--format", "csv"]);
    let mut rows = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    assert_eq!(&rows[0][0], "serious");
    assert_eq!(&rows[0][3], "127.0.0.3");
    assert_eq!(&rows[0][6], "iwf-test.schoolgate.test");
    let section = |s: &'static str| rows.iter().filter(move |r| &r[0] == s);
    let first_client = section("client").next().unwrap();
    assert_eq!(
        (&first_client[1], &first_client[3], &first_client[9]),
        ("1", "127.0.0.2", "8")
    );
    let hours: u64 = section("hour").map(|r| r[9].parse::<u64>().unwrap()).sum();
    assert_eq!(hours, 11);
    assert_eq!(section("category").count(), 5);

    let out = setup.dir.path().join("report.html");
    report(
        &setup,
        &["--format", "html", "--out", out.to_str().unwrap()],
    );
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("name=\"viewport\""));
    assert_eq!(html.matches("<svg").count(), 2, "hour and category charts");
    for external in ["<script", "<link", "src=", "url(", "@import"] {
        assert!(!html.contains(external), "external asset {external:?}");
    }
    let pos = |n: &str| html.find(n).unwrap_or_else(|| panic!("{n:?} missing"));
    assert!(pos("Serious alerts") < pos("Blocked by hour"));
    assert!(pos("iwf-test.schoolgate.test") < pos("Blocked by category"));
}

#[test]
fn anonymised_report_hides_every_name_and_address() {
    let setup = a_logged_day();
    let mut pseudonym = None;
    for format in ["text", "html", "csv", "json"] {
        let out = report(&setup, &["--format", format, "--anonymise"]);
        for secret in [
            "127.0.0",
            NAMED,
            "jsmith",
            "r.patel",
            "media club",
            "spotted",
        ] {
            assert!(
                !out.contains(secret),
                "{format} report leaks {secret:?}:\n{out}"
            );
        }
        assert!(out.contains("Device-"), "{format}: {out}");
        assert!(
            out.contains("iwf-test.schoolgate.test"),
            "incidents stay visible"
        );
        if format == "json" {
            let v: Value = serde_json::from_str(&out).unwrap();
            pseudonym = v["serious"][0]["client"]["addr"]
                .as_str()
                .map(str::to_string);
        }
    }
    let again: Value =
        serde_json::from_str(&report(&setup, &["--format", "json", "--anonymise"])).unwrap();
    assert_eq!(
        again["serious"][0]["client"]["addr"].as_str(),
        pseudonym.as_deref(),
        "pseudonyms are stable"
    );
    assert_ne!(
        again["by_client"][0]["client"]["addr"],
        again["by_client"][1]["client"]["addr"]
    );
}

#[test]
fn rate_limiting_shows_among_the_days_problems_and_is_anonymised() {
    let up = Fixture::start(Zone::standard());
    let setup = school().server("rate_limit_qps = 5\nrate_limit_burst = 10");
    let server = setup.start(up.addr);
    for _ in 0..25 {
        // Limited UDP queries get no answer: wait only briefly for each.
        let _ = Ask::new("www.example.org", RecordType::A)
            .from("127.0.0.3")
            .timeout(Duration::from_millis(100))
            .send(server.addr);
    }
    stop(server);
    let json: Value = serde_json::from_str(&report(&setup, &["--format", "json"])).unwrap();
    let limited: Vec<&Value> = json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "rate_limited")
        .collect();
    assert_eq!(limited.len(), 1, "{json:#}");
    assert_eq!(limited[0]["client"]["addr"], "127.0.0.3");
    assert_eq!(limited[0]["client"]["name"], NAMED);
    assert!(limited[0]["count"].as_u64().unwrap() >= 1);
    let text = report(&setup, &[]);
    assert!(text.contains("rate_limited"), "{text}");
    for format in ["text", "html", "csv", "json"] {
        let out = report(&setup, &["--format", format, "--anonymise"]);
        assert!(out.contains("rate_limited"), "{format}: {out}");
        assert!(
            !out.contains("127.0.0") && !out.contains(NAMED),
            "{format}: {out}"
        );
    }
}

/// A real SMTP server on loopback (aiosmtpd's debugging handler prints each message),
/// stopped by its own handle.
struct SmtpSink {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl SmtpSink {
    fn start(dir: &Path) -> SmtpSink {
        Self::start_with(dir, &[])
    }

    /// With `tls` arguments to aiosmtpd (`--tlscert`/`--tlskey` for STARTTLS, which it then
    /// requires; `--smtpscert`/`--smtpskey` for TLS from the first byte).
    fn start_with(dir: &Path, tls: &[&Path]) -> SmtpSink {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = dir.join("smtp.out");
        let child = Command::new("python3")
            .args(["-u", "-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(tls)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd; .ci/run does)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpSink { child, port, out }
    }

    fn wait_for(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            if text.matches(needle).count() >= count || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn toml(&self) -> String {
        format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"schoolgate <filter@school.test>\"\n",
            self.port
        )
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn emailed_report_arrives_at_the_smtp_server() {
    let up = Fixture::start(Zone::standard());
    let tmp = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(tmp.path());
    let setup = Setup::new().toml(&format!(
        "[report]\nschool = \"Test Primary\"\nrecipients = [\"dsl@school.test\", \"head@school.test\"]\n\n{}",
        sink.toml()
    ));
    let server = setup.start(up.addr);
    traffic(&server);
    stop(server);
    let (ok, _, err) = setup.run(&["report", "daily", "--date", "today", "--email"]);
    assert!(ok, "{err}");
    assert!(err.contains("dsl@school.test"), "{err}");
    let mail = sink.wait_for("END MESSAGE", 1);
    assert!(
        mail.contains("Test Primary filtering summary for"),
        "{mail}"
    );
    assert!(mail.contains("1 serious alert, 11 blocked"), "{mail}");
    assert!(mail.contains("dsl@school.test") && mail.contains("head@school.test"));
    assert!(mail.contains("multipart/alternative"), "{mail}");
    assert!(
        mail.contains("text/plain") && mail.contains("text/html"),
        "{mail}"
    );
}

/// A school's own certificate authority and a mail server certificate it signed for
/// 127.0.0.1: (CA certificate, server certificate, server key) files in `dir`.
fn school_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Test Trust CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let files = (
        dir.join("ca.pem"),
        dir.join("mail.pem"),
        dir.join("mail.key"),
    );
    std::fs::write(&files.0, ca.pem()).unwrap();
    std::fs::write(&files.1, cert.pem()).unwrap();
    std::fs::write(&files.2, key.serialize_pem()).unwrap();
    files
}

/// Emails the report over TLS (`tls` in the config; `flags` give aiosmtpd the certificate):
/// refused while only the public authorities are trusted, delivered once `ca_file` names the
/// school's own.
fn report_over_tls(tls: &str, flags: [&str; 2]) {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = school_ca(tmp.path());
    let sink = SmtpSink::start_with(
        tmp.path(),
        &[Path::new(flags[0]), &cert, Path::new(flags[1]), &key],
    );
    let smtp = format!(
        "[report]\nschool = \"Test Primary\"\nrecipients = [\"dsl@school.test\"]\n\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"{tls}\"\nfrom = \"filter@school.test\"\n",
        sink.port
    );
    let untrusted = Setup::new().toml(&smtp);
    let (ok, _, err) = untrusted.run(&["report", "daily", "--date", "today", "--email"]);
    assert!(
        !ok,
        "a certificate from an unknown authority must be refused"
    );
    assert!(err.contains("SMTP delivery via 127.0.0.1"), "{err}");
    assert!(err.contains("ca_file"), "{err}");

    let trusted = Setup::new().toml(&format!("{smtp}ca_file = {:?}\n", ca.display().to_string()));
    let (ok, _, err) = trusted.run(&["report", "daily", "--date", "today", "--email"]);
    assert!(ok, "{err}");
    let mail = sink.wait_for("END MESSAGE", 1);
    assert!(
        mail.contains("Test Primary filtering summary for"),
        "{mail}"
    );
}

#[test]
fn emailed_report_goes_over_starttls_to_a_server_with_the_schools_own_ca() {
    report_over_tls("starttls", ["--tlscert", "--tlskey"]);
}

#[test]
fn emailed_report_goes_over_implicit_tls_to_a_server_with_the_schools_own_ca() {
    report_over_tls("tls", ["--smtpscert", "--smtpskey"]);
}

#[test]
fn a_ca_file_without_a_certificate_names_the_config_line() {
    let tmp = tempfile::tempdir().unwrap();
    let bogus = tmp.path().join("ca.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    let setup = Setup::new().toml(&format!(
        "[smtp]\nhost = \"127.0.0.1\"\nfrom = \"filter@school.test\"\nca_file = {:?}\n",
        bogus.display().to_string()
    ));
    let (ok, _, err) = setup.run(&["report", "daily", "--email"]);
    assert!(!ok);
    assert!(err.contains("field `smtp.ca_file`"), "{err}");
    assert!(err.contains("holds no certificate"), "{err}");
}

#[test]
fn a_day_without_logs_says_so() {
    let setup = Setup::new();
    let out = report(&setup, &["--format", "json"]);
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["totals"]["queries"], 0);
    assert_eq!(json["problems"][0]["kind"], "no_logs", "{out}");
    let text = report(&setup, &[]);
    assert!(text.contains("was schoolgate running?"), "{text}");
}

#[test]
fn email_without_smtp_settings_says_what_to_do() {
    let setup = Setup::new();
    let (ok, _, err) = setup.run(&["report", "daily", "--email"]);
    assert!(!ok);
    assert!(err.contains("[smtp]"), "{err}");
}

/// Receives HTTP POSTs on loopback and hands their bodies to the test; the first `fail`
/// requests get a 503.
fn webhook_listener(fail: usize) -> (u16, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let status = if n < fail {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            if let Ok(v) = serde_json::from_slice(&body) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    (port, rx)
}

#[test]
fn alerts_arrive_at_once_by_webhook_and_email_once_per_window() {
    let up = Fixture::start(Zone::standard());
    let tmp = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(tmp.path());
    let (port, hooks) = webhook_listener(0);
    let setup = school().toml(&format!(
        "[alerts]\nwindow_minutes = 15\nwebhook = \"http://127.0.0.1:{port}/alert\"\nrecipients = [\"dsl@school.test\"]\n\n{}",
        sink.toml()
    ));
    let server = setup.start(up.addr);
    for _ in 0..3 {
        ask(&server, "127.0.0.3", "iwf-test.schoolgate.test");
    }
    ask(&server, "127.0.0.2", "pornhub.com");
    ask(&server, "127.0.0.2", "iwf-test.schoolgate.test");

    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 2 && Instant::now() < deadline {
        if let Ok(v) = hooks.recv_timeout(Duration::from_millis(100)) {
            got.push(v);
        }
    }
    assert_eq!(got.len(), 2, "one alert per device: {got:?}");
    // Anything more (a repeat within the window, or the adult attempt) would arrive now.
    assert!(hooks.recv_timeout(Duration::from_millis(1500)).is_err());
    let first = got.iter().find(|v| v["client"] == "127.0.0.3").unwrap();
    assert_eq!(first["client_name"], NAMED);
    assert_eq!(first["category"], "illegal");
    assert_eq!(first["name"], "iwf-test.schoolgate.test");
    assert!(got.iter().any(|v| v["client"] == "127.0.0.2"));

    let mail = sink.wait_for("END MESSAGE", 2);
    assert_eq!(mail.matches("END MESSAGE").count(), 2, "{mail}");
    assert!(mail.contains("illegal attempt by"), "{mail}");
    assert!(mail.contains(NAMED), "the alert names the device: {mail}");
    drop(server);
}

#[test]
fn changed_alert_settings_apply_on_reload() {
    let up = Fixture::start(Zone::standard());
    let (old_port, old_hooks) = webhook_listener(0);
    let (new_port, new_hooks) = webhook_listener(0);
    let setup = school().toml(&format!(
        "[alerts]\nwebhook = \"http://127.0.0.1:{old_port}/alert\"\n"
    ));
    let server = setup.start(up.addr);
    ask(&server, "127.0.0.3", "iwf-test.schoolgate.test");
    assert!(old_hooks.recv_timeout(Duration::from_secs(10)).is_ok());

    // The safeguarding lead's webhook moves: the technician edits the config, no restart.
    let path = setup.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(&old_port.to_string(), &new_port.to_string()),
    )
    .unwrap();
    server.expect_log("alert settings applied");
    ask(&server, "127.0.0.2", "iwf-test.schoolgate.test");
    let got = new_hooks
        .recv_timeout(Duration::from_secs(10))
        .expect("the alert goes to the new webhook");
    assert_eq!(got["client"], "127.0.0.2");
    assert!(old_hooks.recv_timeout(Duration::from_millis(500)).is_err());
}

#[test]
fn failed_alert_delivery_is_retried_without_holding_up_dns() {
    let up = Fixture::start(Zone::standard());
    let (port, hooks) = webhook_listener(1);
    let setup = school().toml(&format!(
        "[alerts]\nwebhook = \"http://127.0.0.1:{port}/alert\"\nretries = 3\n"
    ));
    let server = setup.start(up.addr);
    ask(&server, "127.0.0.3", "iwf-test.schoolgate.test");
    let first = hooks
        .recv_timeout(Duration::from_secs(5))
        .expect("first attempt");
    // The webhook refused it; while the alert waits to be retried, DNS answers as usual.
    let t = Instant::now();
    ask(&server, "127.0.0.2", "www.example.org");
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "DNS waited for the alert"
    );
    let retried = hooks.recv_timeout(Duration::from_secs(5)).expect("retry");
    assert_eq!(first, retried, "the same alert is sent again");
    assert_eq!(retried["client"], "127.0.0.3");
    assert!(
        hooks.recv_timeout(Duration::from_millis(1500)).is_err(),
        "delivered once"
    );
    drop(server);
}

fn gz_day(setup: &Setup, prefix: &str, days_ago: u64, lines: &str) -> PathBuf {
    let date = chrono::Utc::now()
        .with_timezone(&chrono_tz::Europe::London)
        .date_naive()
        - chrono::Days::new(days_ago);
    let dir = setup.dir.path().join("state/logs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{prefix}-{}.jsonl.gz", date.format("%Y-%m-%d")));
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::default(),
    );
    enc.write_all(
        lines
            .replace("DATE", &date.format("%Y-%m-%d").to_string())
            .as_bytes(),
    )
    .unwrap();
    enc.finish().unwrap();
    path
}

#[test]
fn logs_client_shows_one_device_timeline_across_compressed_days() {
    let up = Fixture::start(Zone::standard());
    let setup = school();
    gz_day(
        &setup,
        "access",
        1,
        "{\"time\":\"DATET15:04:05.000000+00:00\",\"client\":\"127.0.0.3\",\"client_name\":\"YR6-LAPTOP-12\",\"group\":\"default\",\"name\":\"yesterday.example\",\"type\":\"A\",\"action\":\"allow\",\"rcode\":\"NOERROR\",\"latency_us\":10}\n\
         {\"time\":\"DATET15:05:05.000000+00:00\",\"client\":\"127.0.0.9\",\"group\":\"default\",\"name\":\"someone-else.example\",\"type\":\"A\",\"action\":\"allow\",\"rcode\":\"NOERROR\",\"latency_us\":10}\n",
    );
    let server = setup.start(up.addr);
    traffic(&server);
    stop(server);

    let (ok, out, err) = setup.run(&["logs", "--client", NAMED]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("iwf-test.schoolgate.test") && lines[0].contains("illegal"));
    assert!(lines[1].contains("www.tiktok.com") && lines[1].contains("block"));
    assert!(lines[2].contains("www.example.org") && lines[2].contains("allow"));
    assert!(
        !out.contains("pornhub"),
        "other devices' queries are not shown"
    );

    let (ok, out, _) = setup.run(&["logs", "--client", "127.0.0.3", "--date", "yesterday"]);
    assert!(ok);
    assert!(
        out.contains("yesterday.example") && !out.contains("someone-else"),
        "{out}"
    );

    let since = (chrono::Utc::now()
        .with_timezone(&chrono_tz::Europe::London)
        .date_naive()
        - chrono::Days::new(1))
    .format("%Y-%m-%d")
    .to_string();
    let (ok, out, _) = setup.run(&["logs", "--client", NAMED, "--since", &since]);
    assert!(ok);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.lines().next().unwrap().contains("yesterday.example"));

    let (ok, out, _) = setup.run(&["logs", "--client", "127.0.0.2", "--breaches", "--json"]);
    assert!(ok);
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 8, "{out}");
    assert!(records.iter().all(|r| r["action"] == "block"));

    let (ok, _, err) = setup.run(&["logs", "--client", NAMED, "--date", "2001-01-01"]);
    assert!(!ok);
    assert!(err.contains("no access log for 2001-01-01"), "{err}");
}
