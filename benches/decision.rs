//! Decision time per query: name normalisation, the index walk, and the whole
//! [`Engine::decide`], with 1,000,000 and 10,000,000 synthetic listed names spread over twelve
//! categories, for names that are listed (hit), are not (miss), and sit below a listed name
//! (parent hit). A last group decides for 10,000 named clients, which is what a trust running
//! one resolver for many schools configures. The `origin` group times finding the list file and
//! line behind a blocked name, which every breach record does.
//!
//! The lists are generated once under `target/bench-data/` and compiled through the real list
//! cache, so later runs map them in a fraction of a second. Queries cycle through 4,096 names of
//! each kind chosen across the whole list, so the walk pays the cache misses a busy server does
//! rather than re-reading one hot path.
//!
//! Time is the benchmark thread's CPU time, not wall time: on a shared two-core machine (CI, or
//! a build running beside the benchmark) wall time mostly measures who else was scheduled.
//!
//! Run: `cargo bench --bench decision` (the 10,000,000-name lists take about a minute and 300 MB
//! of disk the first time).

use std::fs::{self, File};
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use schoolgate::config::Config;
use schoolgate::domain::QueryName;
use schoolgate::lists::{compile_list, CompiledList, DomainIndex};
use schoolgate::policy::{Action, Engine, Rule};
use schoolgate::wire;

const CATEGORIES: [&str; 12] = [
    "illegal",
    "extremist",
    "self_harm",
    "adult",
    "gambling",
    "drugs",
    "hate",
    "malware",
    "piracy",
    "violence",
    "circumvention",
    "social_media",
];
const TLDS: [&str; 12] = [
    "com", "net", "org", "info", "co.uk", "io", "xyz", "ru", "de", "top", "site", "online",
];
/// Names of each kind the queries cycle through.
const SAMPLES: usize = 4096;
/// Named clients in the client benchmark.
const CLIENTS: usize = 10_000;

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`), reported like wall time.
struct ThreadCpu(WallTime);

fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_now()
    }
    fn end(&self, started: Duration) -> Duration {
        thread_cpu_now().saturating_sub(started)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.0.formatter()
    }
}

/// A small, fast, deterministic generator (xorshift64*): the same lists on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn label(&mut self, lo: usize, hi: usize, out: &mut String) {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        for _ in 0..lo + self.below(hi - lo + 1) {
            out.push(ALPHABET[self.below(ALPHABET.len())] as char);
        }
    }

    /// A name shaped like a list entry: a registrable name, sometimes with a subdomain.
    fn name(&mut self) -> String {
        let mut s = String::with_capacity(32);
        if self.below(10) < 3 {
            self.label(2, 8, &mut s);
            s.push('.');
        }
        self.label(5, 14, &mut s);
        s.push('.');
        s.push_str(TLDS[self.below(TLDS.len())]);
        s
    }
}

/// A generated, compiled data set.
struct Data {
    engine: Engine,
    lists: Vec<CompiledList>,
    index: DomainIndex,
    hit: Vec<Wire>,
    parent: Vec<Wire>,
    miss: Vec<Wire>,
}

/// A query name as it comes off the wire: its labels.
struct Wire(Vec<Vec<u8>>);

impl Wire {
    fn new(name: &str) -> Self {
        Wire(name.split('.').map(|l| l.as_bytes().to_vec()).collect())
    }

    fn query(&self) -> QueryName {
        QueryName::from_labels(self.0.iter().map(Vec::as_slice)).expect("generated names are valid")
    }
}

fn data_dir(names: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench-data")
        .join(format!("decision-{names}"))
}

/// Writes the lists (once) and the config, and loads the engine through the real list cache.
fn setup(names: usize) -> Data {
    let dir = data_dir(names);
    let lists = dir.join("lists");
    let done = dir.join("lists.done");
    let mut rng = Rng(0x0005_C001_6A7E ^ names as u64);
    let stride = (names / SAMPLES).max(1);
    let mut sample = Vec::with_capacity(SAMPLES);
    let fresh = !done.exists();
    if fresh {
        eprintln!(
            "decision bench: generating {names} names in {}",
            dir.display()
        );
        fs::create_dir_all(&lists).expect("create bench data dir");
    }
    let mut files: Vec<BufWriter<File>> = if fresh {
        CATEGORIES
            .iter()
            .map(|c| {
                BufWriter::new(File::create(lists.join(format!("{c}.txt"))).expect("create list"))
            })
            .collect()
    } else {
        Vec::new()
    };
    for i in 0..names {
        let name = rng.name();
        if fresh {
            writeln!(files[i % CATEGORIES.len()], "{name}").expect("write list");
        }
        if i % stride == 0 && sample.len() < SAMPLES {
            sample.push(name);
        }
    }
    for f in &mut files {
        f.flush().expect("write list");
    }
    if fresh {
        fs::write(lists.join("allow.txt"), "").expect("write allow list");
        fs::write(&done, names.to_string()).expect("mark lists done");
    }

    let config_path = dir.join("schoolgate.toml");
    fs::write(&config_path, config_text()).expect("write config");
    let config = Arc::new(Config::load(&config_path).expect("bench config is valid"));
    let started = std::time::Instant::now();
    let loaded = Engine::load(config.clone()).expect("lists load");
    eprintln!(
        "decision bench: {} distinct names ready in {:.1} s (compiled: {:?})",
        loaded.engine.index_len(),
        started.elapsed().as_secs_f64(),
        loaded.recompiled
    );
    // The same cached files, mapped again, for the walk on its own.
    let compiled: Vec<_> = std::iter::once(("allow".to_string(), lists.join("allow.txt")))
        .chain(
            CATEGORIES
                .iter()
                .map(|c| (c.to_string(), lists.join(format!("{c}.txt")))),
        )
        .map(|(name, file)| compile_list(&name, &[file], &config.cache_dir).expect("cached list"))
        .collect();
    let index = DomainIndex::build(&compiled, &config.cache_dir).expect("cached index");

    let mut miss_rng = Rng(0xD1FF_E4E7 ^ names as u64);
    let data = Data {
        hit: sample.iter().map(|n| Wire::new(n)).collect(),
        parent: sample
            .iter()
            .map(|n| Wire::new(&format!("cdn.www.{n}")))
            .collect(),
        miss: (0..SAMPLES).map(|_| Wire::new(&miss_rng.name())).collect(),
        engine: loaded.engine,
        lists: compiled,
        index,
    };
    check(&data);
    data
}

/// The benchmark only means something if hits block and misses do not.
fn check(d: &Data) {
    let client = d.engine.identify(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let now = Utc::now();
    for w in d.hit.iter().chain(&d.parent) {
        let q = w.query();
        assert_eq!(
            d.engine.decide(&client, &q, now).action,
            Action::Block,
            "{q:?}"
        );
    }
    let unlisted = d
        .miss
        .iter()
        .filter(|w| d.engine.decide(&client, &w.query(), now).rule == Rule::Unlisted)
        .count();
    assert!(unlisted > SAMPLES * 99 / 100, "misses should be unlisted");
}

fn config_text() -> String {
    let mut t = String::from(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[lists]\ndir = \"lists\"\ncache_dir = \"compiled\"\nallow = \"allow.txt\"\n",
    );
    for (i, c) in CATEGORIES.iter().enumerate() {
        t.push_str(&format!(
            "\n[[category]]\nname = \"{c}\"\nfiles = [\"{c}.txt\"]\nlocked = {}\n",
            i < 2
        ));
    }
    let all: Vec<String> = CATEGORIES.iter().map(|c| format!("\"{c}\"")).collect();
    let all = all.join(", ");
    t.push_str(&format!("\n[groups.default]\nblock = [{all}]\n"));
    t.push_str(&format!("\n[groups.pupils]\nblock = [{all}]\n"));
    t.push_str(&format!(
        "\n[groups.staff]\nblock = [{all}]\n\n[[groups.staff.schedule]]\nname = \"lunch\"\ndays = [\"weekdays\"]\nfrom = \"12:00\"\nto = \"13:15\"\nunblock = [\"social_media\"]\n\n[[groups.staff.schedule]]\nname = \"evening\"\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\nfrom = \"00:00\"\nto = \"23:59\"\nunblock = [\"social_media\", \"gambling\"]\n"
    ));
    for i in 0..CLIENTS {
        let group = if i % 5 == 0 { "staff" } else { "pupils" };
        t.push_str(&format!(
            "\n[[client]]\nname = \"device-{i:05}\"\naddr = \"{}\"\ngroup = \"{group}\"\n",
            client_addr(i)
        ));
    }
    t.push_str("\n[[client]]\nname = \"School wifi\"\naddr = \"10.0.0.0/8\"\ngroup = \"pupils\"\n");
    t
}

fn client_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        1 + (i / 65_536) as u8,
        (i / 256 % 256) as u8,
        (i % 256) as u8,
    ))
}

fn bench_normalise(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("normalise");
    g.throughput(Throughput::Elements(1));
    let wire = Wire::new("WWW.Some-School.Example.co.uk");
    g.bench_function("from_wire_labels", |b| {
        b.iter(|| QueryName::from_labels(black_box(&wire.0).iter().map(Vec::as_slice)))
    });
    g.bench_function("from_text", |b| {
        b.iter(|| QueryName::parse(black_box("WWW.Some-School.Example.co.uk.")))
    });
    // A whole query as a device sends it (EDNS included): header, name and OPT checked.
    let packet = wire::upstream_query(7, "WWW.Some-School.Example.co.uk", 1);
    g.bench_function("query_packet", |b| {
        b.iter(|| wire::parse(black_box(&packet)).map(|q| q.name.key().len()))
    });
    g.finish();
}

fn bench_sets(c: &mut Criterion<ThreadCpu>) {
    for names in [1_000_000, 10_000_000] {
        let d = setup(names);
        let client = d.engine.identify(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let now = Utc::now();
        let kinds = [
            ("hit", &d.hit),
            ("miss", &d.miss),
            ("parent_hit", &d.parent),
        ];

        // The index on its own: the hash table the query path probes, and the FST walk it replaced.
        for (group, walk) in [("index_lookup", false), ("fst_walk", true)] {
            let mut g = c.benchmark_group(format!("{group}/{names}"));
            g.throughput(Throughput::Elements(1));
            for (kind, set) in kinds {
                let keys: Vec<QueryName> = set.iter().map(Wire::query).collect();
                let mut i = 0;
                g.bench_function(BenchmarkId::from_parameter(kind), |b| {
                    b.iter(|| {
                        i = (i + 1) % keys.len();
                        let key = black_box(keys[i].key());
                        if walk {
                            d.index.walk(key).mask
                        } else {
                            d.index.lookup(key).mask
                        }
                    })
                });
            }
            g.finish();
        }

        // The headline: labels off the wire to a decision, across all categories and the allow list.
        let mut g = c.benchmark_group(format!("decision/{names}"));
        g.throughput(Throughput::Elements(1));
        for (kind, set) in kinds {
            let mut i = 0;
            g.bench_function(BenchmarkId::from_parameter(kind), |b| {
                b.iter(|| {
                    i = (i + 1) % set.len();
                    let q = set[i].query();
                    d.engine.decide(&client, black_box(&q), now).action
                })
            });
        }
        g.finish();

        if names == 1_000_000 {
            // Who asked, then the decision: 10,000 named clients, schedules in force for staff.
            let mut g = c.benchmark_group(format!("decision_named_clients/{CLIENTS}"));
            g.throughput(Throughput::Elements(1));
            let queries: Vec<QueryName> = d.hit.iter().chain(&d.miss).map(Wire::query).collect();
            let mut i = 0;
            g.bench_function("identify_and_decide", |b| {
                b.iter(|| {
                    i += 1;
                    let who = d.engine.identify(client_addr((i * 7919) % CLIENTS));
                    let q = &queries[i % queries.len()];
                    d.engine.decide(&who, black_box(q), Utc::now()).action
                })
            });
            g.finish();
        }
    }
}

/// Which list file and line listed a blocked name: what every breach record looks up.
fn bench_origin(c: &mut Criterion<ThreadCpu>) {
    let names = 1_000_000;
    let d = setup(names);
    let client = d.engine.identify(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let now = Utc::now();
    let mut g = c.benchmark_group(format!("origin/{names}"));
    g.throughput(Throughput::Elements(1));
    for (kind, set) in [("hit", &d.hit), ("parent_hit", &d.parent)] {
        let ruled: Vec<(QueryName, Rule)> = set
            .iter()
            .map(|w| {
                let q = w.query();
                let rule = d.engine.decide(&client, &q, now).rule;
                (q, rule)
            })
            .collect();
        assert!(
            ruled.iter().all(|(q, r)| d.engine.origin(q, r).is_some()),
            "every blocked name has an origin"
        );
        let mut i = 0;
        g.bench_function(BenchmarkId::from_parameter(kind), |b| {
            b.iter(|| {
                i = (i + 1) % ruled.len();
                let (q, rule) = &ruled[i];
                d.engine.origin(black_box(q), rule).map(|o| o.line)
            })
        });
    }
    // The key file search on its own, without building the `Origin` (three small allocations).
    let keyed: Vec<(&CompiledList, QueryName)> = d
        .hit
        .iter()
        .map(|w| {
            let q = w.query();
            let list = d.lists.iter().find(|l| l.origin(q.key(), false).is_some());
            (list.expect("every hit is in a list"), q)
        })
        .collect();
    let mut i = 0;
    g.bench_function("list_hit", |b| {
        b.iter(|| {
            i = (i + 1) % keyed.len();
            let (list, q) = &keyed[i];
            list.origin(black_box(q.key()), false).map(|(_, line)| line)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(ThreadCpu(WallTime))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = bench_normalise, bench_sets, bench_origin
}
criterion_main!(benches);
