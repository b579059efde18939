//! Compiling a category of 1,000,000 names: the cost of a reload after a big list changes.
//!
//! The names are synthetic but shaped like real block lists (random labels, a few subdomain
//! levels, mixed formats, in no particular order). Each iteration compiles into a fresh cache
//! directory, so nothing is reused. Prints domains per second and the compiled size per domain.

use std::path::Path;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use schoolgate::lists::{compile_list, parse, DomainIndex};

const NAMES: usize = 1_000_000;

/// A deterministic list in mixed formats.
fn synthetic_list(n: usize) -> String {
    const TLDS: [&str; 6] = ["com", "net", "org", "co.uk", "io", "xyz"];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = String::with_capacity(n * 32);
    for i in 0..n {
        let r = next();
        let label: String = (0..6 + (r % 8) as usize)
            .map(|k| (b'a' + ((r >> (k * 5)) % 26) as u8) as char)
            .collect();
        let tld = TLDS[(r >> 40) as usize % TLDS.len()];
        let name = match (r >> 48) % 4 {
            0 => format!("{label}{i}.{tld}"),
            1 => format!("ads.{label}{i}.{tld}"),
            2 => format!("cdn{}.{label}{i}.{tld}", r % 10),
            _ => format!("{label}-{i}.{tld}"),
        };
        match i % 10 {
            0 => out.push_str(&format!("0.0.0.0 {name}\n")),
            1 => out.push_str(&format!("||{name}^\n")),
            _ => {
                out.push_str(&name);
                out.push('\n');
            }
        }
    }
    out
}

fn compile(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("big.txt");
    let text = synthetic_list(NAMES);
    std::fs::write(&src, &text).expect("write list");
    let sources = [src];

    // One timed run for the README's figures, outside criterion's statistics. CPU time is
    // printed beside wall time: on a shared 2-core machine wall time includes waiting for a core.
    let cpu = Clock::start();
    let parsed = parse(&sources[0], text.as_bytes());
    let (parse_wall, parse_cpu) = cpu.read();
    let cpu = Clock::start();
    let cache = dir.path().join("once");
    let list = compile_list("big", &sources, &cache).expect("compile");
    let (wall, cpu_s) = cpu.read();
    let fst_bytes = file_len(&cache.join("big.keys"));
    let cpu = Clock::start();
    let index = DomainIndex::build(std::slice::from_ref(&list), &cache).expect("index");
    let (index_wall, index_cpu) = cpu.read();
    println!(
        "{} names ({:.1} MB of text, {} parsed)\n\
         parse alone:      {parse_wall:.2} s wall, {parse_cpu:.2} s CPU\n\
         compile (total):  {wall:.2} s wall, {cpu_s:.2} s CPU, {:.0} names per CPU second; \
         key file {:.1} bytes/name\n\
         merged index:     {index_wall:.2} s wall, {index_cpu:.2} s CPU, {:.1} bytes/name",
        list.len(),
        text.len() as f64 / 1e6,
        parsed.entries.len(),
        list.len() as f64 / cpu_s,
        fst_bytes as f64 / list.len() as f64,
        file_len(&cache.join("index.fst")) as f64 / index.len() as f64,
    );
    drop(parsed);

    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.throughput(Throughput::Elements(NAMES as u64));
    group.bench_function("1M names to a key file", |b| {
        b.iter_batched(
            || tempfile::tempdir().expect("cache dir"),
            |cache| compile_list("big", &sources, cache.path()).expect("compile"),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Wall time and this thread's CPU time (from `/proc/thread-self/schedstat`, nanoseconds).
struct Clock {
    wall: Instant,
    cpu_ns: u64,
}

impl Clock {
    fn start() -> Self {
        Clock {
            wall: Instant::now(),
            cpu_ns: thread_cpu_ns(),
        }
    }

    fn read(&self) -> (f64, f64) {
        (
            self.wall.elapsed().as_secs_f64(),
            (thread_cpu_ns() - self.cpu_ns) as f64 / 1e9,
        )
    }
}

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

criterion_group!(benches, compile);
criterion_main!(benches);
