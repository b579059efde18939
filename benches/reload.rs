//! A reload of a 1,000,000-name list under a steady query stream: what it costs the queries.
//!
//! Starts the real `schoolgate serve` on loopback, queries a listed name in a loop from one
//! client (each query waits for its answer, 1 s timeout), appends a name to the list and sends
//! SIGHUP, and keeps querying until the reload is logged and a second more. Prints the reload's
//! duration, the queries answered and lost during it, and latency percentiles before and during.
//! Not criterion: a reload is one event, not something to repeat a hundred times.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NAMES: usize = 1_000_000;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("lists")).expect("mkdir");
    let list = dir.path().join("lists/big.txt");
    let mut text = String::with_capacity(NAMES * 28);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..NAMES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push_str(&format!("x{:x}{i}.example\n", state & 0xff_ffff));
    }
    text.push_str("target.example\n");
    std::fs::write(&list, text).expect("write list");
    let config = dir.path().join("schoolgate.toml");
    std::fs::write(
        &config,
        "[server]\nupstreams = [\"127.0.0.1:9\"]\n# One client asks as fast as it can: the per-client limit would drop most of its queries.\nrate_limit_qps = 100000000\nrate_limit_burst = 100000000\n\n[lists]\ndir = \"lists\"\ncache_dir = \"state/compiled\"\nstate_dir = \"state/lists\"\nwatch = false\n\n[logs]\ndir = \"state/logs\"\n\n[[category]]\nname = \"big\"\nfiles = [\"big.txt\"]\n",
    )
    .expect("write config");

    let mut child = Command::new(env!("CARGO_BIN_EXE_schoolgate"))
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start schoolgate serve");
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().expect("log").push(line);
        }
    });
    let started = Instant::now();
    let addr = loop {
        let lines = log.lock().expect("log").clone();
        if lines.iter().any(|l| l.contains("ready")) {
            break lines
                .iter()
                .find_map(|l| {
                    l.split("listening on ")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse::<SocketAddr>()
                        .ok()
                })
                .expect("listening address");
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "server did not start:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "cold start with {NAMES} names: {:.2} s to ready",
        started.elapsed().as_secs_f64()
    );

    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let query = |id: u16| -> Option<Duration> {
        let mut q = vec![(id >> 8) as u8, id as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["target", "example"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let sent = Instant::now();
        sock.send_to(&q, addr).ok()?;
        let mut buf = [0u8; 512];
        loop {
            let (n, _) = sock.recv_from(&mut buf).ok()?;
            if n >= 2 && buf[0] == (id >> 8) as u8 && buf[1] == id as u8 {
                return Some(sent.elapsed());
            }
        }
    };

    let mut id = 0u16;
    let mut steady = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        id = id.wrapping_add(1);
        steady.extend(query(id));
    }

    let reloads_before = count(&log, "reloaded");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&list)
        .and_then(|mut f| f.write_all(b"added.example\n"))
        .expect("edit list");
    let hup = Instant::now();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("send SIGHUP");
    let (mut during, mut lost, mut done_at) = (Vec::new(), 0usize, None);
    loop {
        id = id.wrapping_add(1);
        match query(id) {
            Some(t) => during.push(t),
            None => lost += 1,
        }
        if done_at.is_none() && count(&log, "reloaded") > reloads_before {
            done_at = Some(hup.elapsed());
        }
        if done_at.is_some_and(|d| hup.elapsed() > d + Duration::from_secs(1)) {
            break;
        }
        assert!(hup.elapsed() < Duration::from_secs(300), "no reload logged");
    }
    let took = log
        .lock()
        .expect("log")
        .iter()
        .rev()
        .find(|l| l.contains("reloaded"))
        .and_then(|l| {
            l.split("took_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        });
    let _ = child.kill();
    let _ = child.wait();

    println!(
        "reload after a 1-line edit of the {NAMES}-name list: new lists in force {} ms after SIGHUP \
         (compile + index + swap); change-control diff done and logged at {:.2} s",
        took.map_or("?".to_string(), |t| t.to_string()),
        done_at.map_or(f64::NAN, |d| d.as_secs_f64()),
    );
    println!(
        "queries during the reload and 1 s after: {} answered, {lost} lost",
        during.len()
    );
    println!("latency before: {}", summary(&mut steady));
    println!("latency during: {}", summary(&mut during));
}

fn count(log: &Mutex<Vec<String>>, needle: &str) -> usize {
    log.lock()
        .expect("log")
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

fn summary(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "no answers".into();
    }
    v.sort();
    let pct = |p: f64| v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    format!(
        "{} queries, p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        v.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    )
}
