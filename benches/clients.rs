//! The whole per-query decision (who asked, which policy applies, the domain match) with
//! 10,000 clients and 1,000,000 listed names, against the domain match with a known client.
//!
//! Clients: 4,000 exact addresses, 4,000 DHCP leases (half placed by hostname pattern, a
//! quarter by MAC), 100 ranges, 1,000 unknown addresses, 900 more behind a trusted forwarder (ECS);
//! 200 exemptions in force; groups with schedules and their own lists.

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use schoolgate::clients::ClientId;
use schoolgate::config::Config;
use schoolgate::domain::QueryName;
use schoolgate::policy::Engine;
use schoolgate::wire::ClientHint;

const LISTED: usize = 1_000_000;
const CATEGORIES: usize = 8;

fn v4(i: usize) -> IpAddr {
    IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

fn write_school(dir: &Path) -> std::path::PathBuf {
    let lists = dir.join("lists");
    std::fs::create_dir_all(&lists).unwrap();
    let per = LISTED / CATEGORIES;
    for c in 0..CATEGORIES {
        let mut text = String::with_capacity(per * 24);
        for i in 0..per {
            let _ = writeln!(text, "site{i}.cat{c}-example.com");
        }
        std::fs::write(lists.join(format!("cat{c}.txt")), text).unwrap();
    }
    std::fs::write(lists.join("allow.txt"), "site1.cat0-example.com\n").unwrap();
    std::fs::write(lists.join("juniors-allow.txt"), "site2.cat1-example.com\n").unwrap();
    std::fs::write(lists.join("juniors-block.txt"), "games-example.com\n").unwrap();

    let mut cfg = String::from(
        "[server]\ntrusted_forwarders = [\"10.255.255.1/32\"]\n[lists]\ndir = \"lists\"\ncache_dir = \"cache\"\nallow = \"allow.txt\"\n\
         [dhcp]\nleases = [\"dnsmasq.leases\"]\n[exemptions]\napprovers = [\"Head\"]\nfile = \"exemptions.json\"\n",
    );
    for c in 0..CATEGORIES {
        let _ = write!(
            cfg,
            "[[category]]\nname = \"cat{c}\"\nfiles = [\"cat{c}.txt\"]\nlocked = {}\n",
            c == 0
        );
    }
    let all: Vec<String> = (0..CATEGORIES).map(|c| format!("\"cat{c}\"")).collect();
    let all = all.join(", ");
    for g in ["default", "infants", "juniors", "staff", "library"] {
        let _ = write!(cfg, "[groups.{g}]\nblock = [{all}]\n");
        if g == "juniors" {
            cfg.push_str(
                "allow_files = [\"juniors-allow.txt\"]\nblock_files = [\"juniors-block.txt\"]\n",
            );
        }
        let _ = write!(
            cfg,
            "[[groups.{g}.schedule]]\nname = \"lunch\"\ndays = [\"weekdays\"]\nfrom = \"12:00\"\nto = \"13:15\"\nunblock = [\"cat7\"]\n\
             [[groups.{g}.schedule]]\nname = \"lessons\"\ndays = [\"weekdays\"]\nfrom = \"09:00\"\nto = \"12:00\"\nblock = [\"cat6\"]\n"
        );
    }
    let groups = ["infants", "juniors", "staff"];
    for i in 0..4000 {
        let _ = write!(
            cfg,
            "[[client]]\nname = \"PC-{i}\"\naddr = \"{}\"\ngroup = \"{}\"\n",
            v4(i),
            groups[i % 3]
        );
    }
    for r in 0..100 {
        let _ = write!(
            cfg,
            "[[client]]\nname = \"Room {r}\"\naddr = \"10.200.{r}.0/24\"\ngroup = \"{}\"\n",
            groups[r % 3]
        );
    }
    cfg.push_str("[[client]]\nhostname = \"lib-pc-*\"\ngroup = \"library\"\n");
    let mut leases = String::new();
    for i in 0..4000 {
        let ip = v4(10_000 + i);
        let mac = format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 0xff);
        let host = if i % 2 == 0 {
            format!("LIB-PC-{i}")
        } else {
            format!("TABLET-{i}")
        };
        let _ = writeln!(leases, "0 {mac} {ip} {host} *");
        if i % 4 == 1 {
            let _ = write!(
                cfg,
                "[[client]]\nmac = \"{mac}\"\ngroup = \"{}\"\n",
                groups[i % 3]
            );
        }
    }
    std::fs::write(dir.join("dnsmasq.leases"), leases).unwrap();
    let exemptions: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "{{\"client\": \"{}\", \"categories\": [\"cat7\"], \"until\": \"2100-01-01T00:00:00Z\", \"approved_by\": \"Head\", \"reason\": \"bench\", \"added\": \"2026-01-01T00:00:00Z\"}}",
                v4(i * 7)
            )
        })
        .collect();
    std::fs::write(
        dir.join("exemptions.json"),
        format!("{{\"exemptions\": [{}]}}", exemptions.join(",")),
    )
    .unwrap();
    let path = dir.join("schoolgate.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// Source address and forwarder hint for query `i`: 10,000 distinct clients.
fn sources() -> Vec<(IpAddr, Option<ClientHint>)> {
    let mut s = Vec::new();
    for i in 0..4000 {
        s.push((v4(i), None));
        s.push((v4(10_000 + i), None));
    }
    for i in 0..1000 {
        s.push((v4(100_000 + i), None));
    }
    for r in 0..100 {
        s.push((IpAddr::from([10, 200, r as u8, 9]), None));
    }
    for i in 0..900 {
        s.push((
            IpAddr::from([10, 255, 255, 1]),
            Some(ClientHint::Subnet(v4(200_000 + i))),
        ));
    }
    s
}

fn names() -> Vec<QueryName> {
    (0..4096)
        .map(|i| {
            let n = match i % 4 {
                0 => format!(
                    "www.site{}.cat{}-example.com",
                    i * 97 % 125_000,
                    i % CATEGORIES
                ),
                1 => format!(
                    "site{}.cat{}-example.com",
                    i * 31 % 125_000,
                    (i / 4) % CATEGORIES
                ),
                2 => format!("cdn{i}.unlisted-example.org"),
                _ => format!("www.bbc{i}.co.uk"),
            };
            QueryName::parse(&n).unwrap()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_school(dir.path());
    let config = Config::load(&path).expect("bench config");
    assert_eq!(config.clients.len(), 4000 + 100 + 1 + 1000);
    let engine = Engine::load(Arc::new(config)).expect("engine").engine;
    assert!(engine.index_len() >= LISTED);
    let sources = sources();
    assert_eq!(sources.len(), 10_000);
    let clients: Vec<ClientId> = sources
        .iter()
        .map(|(a, h)| engine.identify_query(*a, *h))
        .collect();
    let names = names();
    // A weekday lesson, so schedules are evaluated.
    let now = Utc.with_ymd_and_hms(2026, 11, 25, 10, 30, 0).unwrap();

    let mut g = c.benchmark_group("decision");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("domain match, client known", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let client = &clients[i % clients.len()];
            let name = &names[i % names.len()];
            black_box(engine.decide(black_box(client), black_box(name), now))
        })
    });
    let mut i = 0usize;
    g.bench_function("client lookup only", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let (addr, hint) = sources[i % sources.len()];
            black_box(engine.identify_query(black_box(addr), black_box(hint)))
        })
    });
    let mut i = 0usize;
    g.bench_function("whole decision (client + policy + domain)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let (addr, hint) = sources[i % sources.len()];
            let client = engine.identify_query(black_box(addr), black_box(hint));
            black_box(engine.decide(&client, black_box(&names[i % names.len()]), now))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
