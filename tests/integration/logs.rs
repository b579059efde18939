//! Access and breach logs: every query traceable to the device, breaches with the list line,
//! files private to the service, and nothing lost on SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::fixture::{Fixture, Zone};
use crate::harness::{Ask, Setup};

pub(crate) fn today_file(dir: &Path, prefix: &str) -> PathBuf {
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Europe::London)
        .format("%Y-%m-%d");
    dir.join(format!("{prefix}-{today}.jsonl"))
}

fn read_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

pub(crate) fn wait_for_records(path: &Path, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..60 {
        let r = read_records(path);
        if r.len() >= n {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    read_records(path)
}

#[test]
fn queries_are_logged_per_client_with_breach_details() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new().toml(
        "[groups.staff]\nblock = [\"illegal\", \"adult\"]\n[[client]]\nname = \"LIB-PC-07\"\naddr = \"127.0.0.3\"\ngroup = \"staff\"\n",
    );
    let server = setup.start(up.addr);
    Ask::new("www.tiktok.com", RecordType::A)
        .from("127.0.0.2")
        .send(server.addr)
        .unwrap();
    Ask::new("www.example.org", RecordType::AAAA)
        .from("127.0.0.3")
        .send(server.addr)
        .unwrap();
    Ask::new("www.tiktok.com", RecordType::A)
        .from("127.0.0.3")
        .send(server.addr)
        .unwrap();

    let logs = setup.dir.path().join("state/logs");
    let access = wait_for_records(&today_file(&logs, "access"), 3);
    assert_eq!(access.len(), 3, "{access:?}");
    let blocked = &access[0];
    assert_eq!(blocked["client"], "127.0.0.2");
    assert_eq!(blocked["group"], "default");
    assert_eq!(blocked["name"], "www.tiktok.com");
    assert_eq!(blocked["type"], "A");
    assert_eq!(blocked["action"], "block");
    assert_eq!(blocked["category"], "social_media");
    assert_eq!(blocked["rcode"], "NOERROR");
    let staff = access.iter().find(|r| r["type"] == "AAAA").unwrap();
    assert_eq!(staff["client_name"], "LIB-PC-07");
    assert_eq!(staff["group"], "staff");
    assert_eq!(staff["action"], "allow");
    assert!(access.iter().any(|r| r["client"] == "127.0.0.3"
        && r["name"] == "www.tiktok.com"
        && r["action"] == "allow"));

    let breach_path = today_file(&logs, "breach");
    let breaches = wait_for_records(&breach_path, 1);
    assert_eq!(
        breaches.len(),
        1,
        "only the pupil's attempt is a breach: {breaches:?}"
    );
    assert_eq!(breaches[0]["rule"], "tiktok.com");
    assert_eq!(breaches[0]["list"], "social_media");
    assert!(breaches[0]["source"]
        .as_str()
        .unwrap()
        .ends_with("social_media.txt:1"));

    for p in [&breach_path, &today_file(&logs, "access")] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{} is {mode:o}", p.display());
    }
}

#[test]
fn sigterm_flushes_every_breach_and_exits_cleanly() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let mut server = setup.start(up.addr);
    for i in 0..50 {
        let name = if i % 2 == 0 {
            "pornhub.com"
        } else {
            "bet365.com"
        };
        Ask::new(name, RecordType::A).send(server.addr).unwrap();
    }
    server.signal("TERM");
    assert_eq!(
        server.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        server.log()
    );
    let breaches = read_records(&today_file(&setup.dir.path().join("state/logs"), "breach"));
    assert_eq!(breaches.len(), 50);
}

#[test]
fn expired_days_are_deleted_and_finished_days_compressed() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new().logs("access_retention_days = 7\nbreach_retention_days = 30");
    let logs = setup.dir.path().join("state/logs");
    std::fs::create_dir_all(&logs).unwrap();
    let day = |n: u64| {
        (chrono::Utc::now()
            .with_timezone(&chrono_tz::Europe::London)
            .date_naive()
            - chrono::Days::new(n))
        .format("%Y-%m-%d")
        .to_string()
    };
    let old_access = logs.join(format!("access-{}.jsonl.gz", day(8)));
    let kept_breach = logs.join(format!("breach-{}.jsonl", day(8)));
    let old_breach = logs.join(format!("breach-{}.jsonl", day(31)));
    let yesterday = logs.join(format!("access-{}.jsonl", day(1)));
    for p in [&old_access, &kept_breach, &old_breach, &yesterday] {
        std::fs::write(p, "{}\n").unwrap();
    }
    let server = setup.start(up.addr);
    assert!(
        !old_access.exists(),
        "access logs older than 7 days are deleted"
    );
    assert!(
        !old_breach.exists(),
        "breach logs older than 30 days are deleted"
    );
    assert!(
        kept_breach.with_extension("jsonl.gz").exists(),
        "8-day-old breaches are kept (compressed)"
    );
    assert!(!yesterday.exists() && yesterday.with_extension("jsonl.gz").exists());
    drop(server);
}
