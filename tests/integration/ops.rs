//! Operations: Prometheus metrics that move with the traffic, health, rate limiting.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use crate::fixture::{Fixture, Zone};
use crate::harness::{Ask, Server, Setup};

/// A plain HTTP/1.0 GET; returns (status line, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The value of one sample line (exact label set) in a Prometheus exposition.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[test]
fn metrics_move_with_queries_and_health_reports_lists() {
    let up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);
    let admin = server.admin.expect("admin endpoint");
    let block =
        r#"schoolgate_queries_total{action="block",category="social_media",group="default"}"#;
    let allow = r#"schoolgate_queries_total{action="allow",category="none",group="default"}"#;
    let (_, before) = http_get(admin, "/metrics");
    for _ in 0..3 {
        server.query("www.tiktok.com", RecordType::A);
    }
    server.query("www.example.org", RecordType::A);
    server.query("www.example.org", RecordType::A);
    let (status, after) = http_get(admin, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert_eq!(
        sample(&after, block) - sample(&before, block),
        3.0,
        "{after}"
    );
    assert_eq!(sample(&after, allow) - sample(&before, allow), 2.0);
    assert!(sample(&after, "schoolgate_cache_hits_total") >= 1.0);
    assert!(sample(&after, "schoolgate_cache_misses_total") >= 1.0);
    assert!(sample(&after, "schoolgate_answer_duration_seconds_count") >= 5.0);
    assert_eq!(
        sample(&after, r#"schoolgate_list_names{list="social_media"}"#),
        2.0
    );
    assert!(after.contains(&format!(
        "schoolgate_upstream_duration_seconds_count{{upstream=\"{}\"}}",
        up.addr
    )));
    assert!(sample(&after, "schoolgate_last_good_load_timestamp_seconds") > 1.7e9);
    // The log writer reports how long its writes take, so a stalled disk can be seen.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sample(
        &http_get(admin, "/metrics").1,
        "schoolgate_log_write_longest_seconds",
    ) == 0.0
    {
        assert!(Instant::now() < deadline, "no log write was timed");
        std::thread::sleep(Duration::from_millis(20));
    }

    let (status, health) = http_get(admin, "/healthz");
    assert!(status.contains("200"));
    let v: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["lists_loaded"], true);
    assert_eq!(
        v["answering"], true,
        "a real query to the DNS listener was answered"
    );
    assert_eq!(v["upstreams"][0]["addr"], up.addr.to_string());
    assert_eq!(v["upstreams"][0]["set_aside"], false);
    assert_eq!(v["log"]["write_errors"], 0, "{v}\n{}", server.log());
    assert_eq!(v["log"]["last_error"], serde_json::Value::Null);
}

/// Asks `server` for a blocked name `n` times in a row from the device at `from`, giving each
/// query 300 ms; returns how many were answered.
pub fn flood(server: SocketAddr, from: &str, n: usize) -> usize {
    (0..n)
        .filter(|_| {
            Ask::new("pornhub.com", RecordType::A)
                .from(from)
                .timeout(Duration::from_millis(300))
                .send(server)
                .is_some()
        })
        .count()
}

/// Sends `burst` queries for a blocked name while the server is stopped (SIGSTOP: a stall, a
/// debugger), then resumes it and checks that some were dropped and that each query shows once,
/// in `taken` or `dropped` (the kernel's drop counts are read once a second, as queries wake the
/// server). Answers are not awaited: on loopback a burst of them overflows the interface's
/// backlog.
pub fn paused_burst_is_counted(
    server: &Server,
    burst: u32,
    taken_series: &str,
    dropped_series: &str,
) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let query = Ask::new("bet365.com", RecordType::A).bytes();
    server.signal("STOP");
    for _ in 0..burst {
        sock.send_to(&query, server.addr).unwrap();
    }
    server.signal("CONT");
    let mut sent = burst;
    let (mut taken, mut dropped) = (0.0, 0.0);
    for _ in 0..50 {
        sock.send_to(&query, server.addr).unwrap();
        sent += 1;
        let (_, metrics) = http_get(server.admin.unwrap(), "/metrics");
        taken = sample(&metrics, taken_series);
        dropped = sample(&metrics, dropped_series);
        if taken + dropped == f64::from(sent) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(dropped > 0.0, "a full queue dropped nothing? taken {taken}");
    assert_eq!(
        taken + dropped,
        f64::from(sent),
        "every query either taken or counted as dropped"
    );
}

#[test]
fn queries_a_full_socket_buffer_dropped_are_counted() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new().server("rate_limit_qps = 100000\nrate_limit_burst = 100000");
    let server = setup.start(up.addr);
    // More than the listen socket's 4 MiB buffer holds.
    paused_burst_is_counted(
        &server,
        20_000,
        r#"schoolgate_queries_total{action="block",category="gambling",group="default"}"#,
        "schoolgate_udp_dropped_total",
    );
}

#[test]
fn a_flooding_client_is_limited_while_others_are_served() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new().server("rate_limit_qps = 5\nrate_limit_burst = 10");
    let server = setup.start(up.addr);
    let answered = flood(server.addr, "127.0.0.4", 40);
    assert!(answered < 30, "flood not limited: {answered}/40 answered");
    let other = Ask::new("pornhub.com", RecordType::A)
        .from("127.0.0.5")
        .send(server.addr);
    assert!(other.is_some(), "another device is still served");
    let (_, metrics) = http_get(server.admin.unwrap(), "/metrics");
    assert!(
        sample(&metrics, "schoolgate_rate_limited_total") >= 10.0,
        "{metrics}"
    );
}

#[test]
fn list_edits_and_sighup_reload_and_are_counted() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let server = setup.start(up.addr);
    assert_eq!(
        server
            .query("newsite.example", RecordType::A)
            .metadata
            .response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );
    let path = setup.list_path("gambling.txt");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("newsite.example\n");
    std::fs::write(&path, text).unwrap();
    // The watcher sees the edit first; SIGHUP must then cause a reload of its own.
    server.expect_log("reloaded");
    let m = server.query("newsite.example", RecordType::A);
    assert_eq!(crate::harness::addresses(&m), vec!["0.0.0.0"]);
    std::thread::sleep(Duration::from_millis(800));
    let reloads = || server.log().matches("reloaded").count();
    let before = reloads();
    server.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while reloads() == before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(reloads(), before + 1, "SIGHUP reloads: {}", server.log());
    let (_, metrics) = http_get(server.admin.unwrap(), "/metrics");
    assert!(
        sample(&metrics, r#"schoolgate_reloads_total{result="success"}"#) >= 1.0,
        "{metrics}"
    );
}

#[test]
fn a_port_in_use_is_one_clear_line_and_a_failure_exit() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let setup = Setup::new();
    let out = std::process::Command::new(crate::harness::bin())
        .arg("--config")
        .arg(setup.config())
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.contains(&addr.to_string()) && last.contains("in use"),
        "{err}"
    );
}

#[test]
fn systemd_hears_ready_only_after_lists_and_sockets() {
    use std::os::unix::net::UnixDatagram;
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let sock_path = setup.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = std::process::Command::new(crate::harness::bin())
        .arg("--config")
        .arg(setup.config())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(["--upstream", &up.addr.to_string()])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf);
    let stderr = child.stderr.take().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let msg = String::from_utf8_lossy(&buf[..n.expect("a notification")]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    // By the time READY is sent, the log already says where it listens, in JSON.
    use std::io::BufRead;
    let lines: Vec<String> = std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    let listening = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON log line"))
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("listening on"))
        });
    assert!(listening.is_some(), "{lines:?}");
}

#[test]
fn systemd_units_verify() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let tmp = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".service") || name.ends_with(".timer")) {
            continue;
        }
        // The units name the installed binary; verify them against the one just built.
        let text = std::fs::read_to_string(entry.path())
            .unwrap()
            .replace("/usr/local/bin/schoolgate", crate::harness::bin());
        let path = tmp.path().join(&name);
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    assert!(!units.is_empty());
    // The fast path's drop-in, as systemd merges it into the service.
    let service = std::fs::read_to_string(tmp.path().join("schoolgate.service")).unwrap();
    let drop_in = std::fs::read_to_string(dir.join("schoolgate-xdp.conf")).unwrap();
    let merged = tmp.path().join("schoolgate-xdp.service");
    std::fs::write(&merged, format!("{service}\n{drop_in}")).unwrap();
    units.push(merged);
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze is installed (.ci/run installs systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}

#[test]
fn binding_port_53_without_privilege_is_one_clear_line() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new();
    let config = setup.config();
    // Let an unprivileged user read the config and lists, and write its state.
    for entry in walk(setup.dir.path()) {
        let mode = if entry.is_dir() { 0o777 } else { 0o644 };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(crate::harness::bin())
        .arg("--config")
        .arg(&config)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:53",
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .expect("setpriv (util-linux) is installed");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.contains("127.0.0.1:53") && last.contains("ermission denied"),
        "{err}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_stalled_upstream_bounds_lookups_in_flight_and_counts_what_it_drops() {
    // An upstream that never answers: every never-seen name waits out the timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = Setup::new()
        .server("rate_limit_qps = 100000\nrate_limit_burst = 100000")
        .start(silent.local_addr().unwrap());
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..1100u16 {
        let q = Ask::new(&format!("n{i}.example.org"), RecordType::A).bytes();
        client.send_to(&q, server.addr).unwrap();
    }
    let blocked = Ask::new("pornhub.com", RecordType::A)
        .timeout(Duration::from_millis(500))
        .send(server.addr);
    assert!(
        blocked.is_some(),
        "blocked names are still answered at once"
    );
    let (_, metrics) = http_get(server.admin.unwrap(), "/metrics");
    let dropped = sample(&metrics, "schoolgate_upstream_busy_dropped_total");
    assert!(
        (1.0..=76.0).contains(&dropped),
        "1,100 lookups against a bound of 1,024 in flight: {dropped} dropped"
    );
}

/// A server without the tzdata package keeps the school's clock from the zones built into
/// schoolgate. The check runs in a mount namespace of its own with an empty tmpfs over
/// /usr/share/zoneinfo (where the system has one), so the system's database cannot be used.
#[test]
fn without_tzdata_the_built_in_zones_keep_british_summer_time() {
    let setup = Setup::new();
    let script = format!(
        "if [ -d /usr/share/zoneinfo ]; then mount -t tmpfs tmpfs /usr/share/zoneinfo || exit 97; fi
         [ -z \"$(ls -A /usr/share/zoneinfo 2>/dev/null)\" ] || exit 98
         exec '{}' --config '{}' check --json www.tiktok.com --at '2026-07-01 12:00'",
        crate::harness::bin(),
        setup.config().display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env_remove("TZDIR")
        .output()
        .expect("run unshare (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(97),
        "`mount -t tmpfs` needs root (.ci/run runs as root): {stderr}"
    );
    assert!(
        out.status.success(),
        "exit {:?}: {stderr}",
        out.status.code()
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json");
    assert_eq!(json["at"], "2026-07-01T12:00:00+01:00", "{json}");
}

/// The `se.slice` a thread runs with, where the kernel reports one (Linux 6.12 and later).
fn slice_ns(task: &std::path::Path) -> Option<u64> {
    let sched = std::fs::read_to_string(task.join("sched")).ok()?;
    let line = sched.lines().find(|l| l.starts_with("se.slice "))?;
    line.split(':').nth(1)?.trim().parse().ok()
}

#[test]
fn the_threads_that_answer_ask_for_short_slices_where_the_kernel_has_them() {
    if slice_ns(std::path::Path::new("/proc/thread-self")).is_none() {
        eprintln!("no custom slices in this kernel; nothing to check");
        return;
    }
    let up = Fixture::start(Zone::standard());
    let server = Setup::new().start(up.addr);
    assert!(Ask::new("example.org", RecordType::A)
        .send(server.addr)
        .is_some());
    let slices: Vec<(String, Option<u64>)> =
        std::fs::read_dir(format!("/proc/{}/task", server.pid()))
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                Some((comm.trim().to_string(), slice_ns(&t)))
            })
            .filter(|(comm, _)| comm == "tokio-rt-worker" || comm == "journal")
            .collect();
    assert!(
        slices
            .iter()
            .filter(|(c, _)| c == "tokio-rt-worker")
            .count()
            >= 1,
        "{slices:?}"
    );
    assert!(
        slices
            .iter()
            .all(|(_, s)| *s == Some(schoolgate::sched::SLICE.as_nanos() as u64)),
        "every answering and logging thread runs in 0.1 ms slices: {slices:?}"
    );
}
