//! `report daily` over a busy day: 10 million access records and 100,000 breaches, in the
//! compressed form a finished day takes on disk, for 1,000 devices.
//!
//! Run with `cargo bench --bench report`. The generator writes the day into a temporary log
//! directory (about 150 MB compressed; `SCHOOLGATE_BENCH_ACCESS` sets the number of access
//! records; `SCHOOLGATE_BENCH_DIR` keeps the generated day for the next run), then the report
//! is built and rendered in every format, and each step is timed.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use chrono::NaiveDate;
use schoolgate::config::Config;
use schoolgate::report::render::{self, Format};

const DEVICES: u32 = 1000;
const BREACHES: u64 = 100_000;
const SERIOUS_EVERY: u64 = 2_000;

const ALLOWED: &[&str] = &[
    "www.bbc.co.uk",
    "classroom.google.com",
    "www.youtube.com",
    "login.microsoftonline.com",
    "www.wikipedia.org",
    "cdn.jsdelivr.net",
    "fonts.gstatic.com",
    "www.purplemash.com",
    "ttrockstars.com",
    "update.microsoft.com",
];
const BLOCKED: &[(&str, &str)] = &[
    ("pornhub.com", "adult"),
    ("bet365.com", "gambling"),
    ("www.tiktok.com", "social_media"),
    ("instagram.com", "social_media"),
    ("dns.google", "circumvention"),
    ("nordvpn.com", "circumvention"),
    ("xvideos.com", "adult"),
    ("roblox-hacks.example", "malware"),
];

fn config(dir: &Path) -> Config {
    let lists = dir.join("blocklists");
    std::fs::create_dir_all(&lists).unwrap();
    for f in [
        "illegal",
        "adult",
        "gambling",
        "social_media",
        "circumvention",
        "malware",
    ] {
        std::fs::write(lists.join(format!("{f}.txt")), "").unwrap();
    }
    let mut text = String::from(
        "[lists]\ndir = \"blocklists\"\ncache_dir = \"state/compiled\"\n[logs]\ndir = \"state/logs\"\n",
    );
    for (f, flags) in [
        ("illegal", "locked = true\nalert = true\n"),
        ("adult", ""),
        ("gambling", ""),
        ("social_media", ""),
        ("circumvention", ""),
        ("malware", ""),
    ] {
        text.push_str(&format!(
            "[[category]]\nname = \"{f}\"\nfiles = [\"{f}.txt\"]\n{flags}"
        ));
    }
    let path = dir.join("schoolgate.toml");
    std::fs::write(&path, &text).unwrap();
    Config::from_toml(&path, &text).unwrap()
}

fn line(out: &mut impl Write, date: &str, i: u64, total: u64, blocked: Option<(&str, &str)>) {
    // Spread over the school day, 08:00 to 16:00, in order.
    let secs = 8 * 3600 + i * 8 * 3600 / total;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let device =
        (((i ^ (i >> 13)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % u64::from(DEVICES)) as u32;
    let client = format!("10.1.{}.{}", device / 250, device % 250 + 1);
    let _ = match blocked {
        Some((name, category)) => writeln!(
            out,
            "{{\"time\":\"{date}T{h:02}:{m:02}:{s:02}.{:06}+00:00\",\"client\":\"{client}\",\"client_name\":\"PUPIL-{device:04}\",\"group\":\"pupils\",\"name\":\"{name}\",\"type\":\"A\",\"action\":\"block\",\"category\":\"{category}\",\"rule\":\"{name}\",\"list\":\"{category}\",\"source\":\"blocklists/{category}.txt:1\",\"rcode\":\"NOERROR\",\"latency_us\":41}}",
            i % 1_000_000
        ),
        None => writeln!(
            out,
            "{{\"time\":\"{date}T{h:02}:{m:02}:{s:02}.{:06}+00:00\",\"client\":\"{client}\",\"client_name\":\"PUPIL-{device:04}\",\"group\":\"pupils\",\"name\":\"{}\",\"type\":\"A\",\"action\":\"allow\",\"rcode\":\"NOERROR\",\"latency_us\":2310}}",
            i % 1_000_000,
            ALLOWED[(i % ALLOWED.len() as u64) as usize]
        ),
    };
}

/// Writes the day as the journal leaves it once the day is over: gzip files.
fn generate(logs: &Path, date: NaiveDate, access: u64) {
    std::fs::create_dir_all(logs).unwrap();
    let d = date.format("%Y-%m-%d").to_string();
    let open = |prefix: &str| {
        let f = std::fs::File::create(logs.join(format!("{prefix}-{d}.jsonl.gz"))).unwrap();
        BufWriter::with_capacity(
            1 << 20,
            flate2::write::GzEncoder::new(f, flate2::Compression::default()),
        )
    };
    let mut a = open("access");
    let mut b = open("breach");
    let every = access / BREACHES;
    for i in 0..access {
        let blocked = i.is_multiple_of(every).then(|| {
            let n = i / every;
            if n.is_multiple_of(SERIOUS_EVERY) {
                ("iwf-test.schoolgate.test", "illegal")
            } else {
                BLOCKED[(n % BLOCKED.len() as u64) as usize]
            }
        });
        line(&mut a, &d, i, access, blocked);
        if blocked.is_some() {
            line(&mut b, &d, i, access, blocked);
        }
    }
    a.into_inner().unwrap().finish().unwrap();
    b.into_inner().unwrap().finish().unwrap();
}

fn main() {
    let access: u64 = std::env::var("SCHOOLGATE_BENCH_ACCESS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    // SCHOOLGATE_BENCH_DIR keeps the generated day between runs.
    let temp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("SCHOOLGATE_BENCH_DIR")
        .map_or_else(|| temp.path().to_path_buf(), std::path::PathBuf::from);
    let config = config(&dir);
    let date = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
    if !config.logs.dir.join("access-2026-11-25.jsonl.gz").exists() {
        let t = Instant::now();
        generate(&config.logs.dir, date, access);
        eprintln!(
            "generated {access} access and {BREACHES} breach records in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }

    let t = Instant::now();
    let report = schoolgate::report::build(&config, date, false).unwrap();
    let built = t.elapsed();
    assert_eq!(report.totals.queries, access);
    assert_eq!(report.totals.breaches, BREACHES);
    let t = Instant::now();
    let mut bytes = 0;
    for format in [Format::Text, Format::Html, Format::Csv, Format::Json] {
        bytes += render::render(&report, format).len();
    }
    let rendered = t.elapsed();
    println!(
        "report daily: {access} access + {BREACHES} breach records: built in {:.2} s, rendered 4 formats ({bytes} bytes) in {:.3} s; {} incident devices",
        built.as_secs_f64(),
        rendered.as_secs_f64(),
        report.serious.len()
    );
}
