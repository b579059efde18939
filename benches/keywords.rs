//! The keyword step of a decision: one Aho-Corasick scan of a name against 1,000 rules (the
//! shipped starter rules plus synthetic words), with token checks and exceptions. The budget
//! is 300 ns per typical name on top of the domain sets.

use std::path::PathBuf;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use schoolgate::keywords::{Keywords, RuleSource};

const STARTER: &str = include_str!("../blocklists/adult.keywords");
const RULES: usize = 1_000;

/// Names a school network asks for all day, plus a few keyword hits and near misses.
const NAMES: &[&str] = &[
    "www.bbc.co.uk",
    "clients4.google.com",
    "outlook.office365.com",
    "login.microsoftonline.com",
    "cdn.jsdelivr.net",
    "d3c33hcgiwev3.cloudfront.net",
    "essex.gov.uk",
    "www.sussex.ac.uk",
    "classroom.googleapis.com",
    "free-pornvids.example",
];

fn rules() -> Vec<String> {
    let mut rules: Vec<String> = STARTER
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    // Deterministic pseudo-random words, 4 to 9 letters, stand in for a large rule set.
    let mut seed: u64 = 0x5eed;
    while rules.len() < RULES {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = 4 + (seed >> 60) as usize % 6;
        let word: String = (0..len)
            .map(|i| (b'a' + ((seed >> (i * 5)) % 26) as u8) as char)
            .collect();
        let token = if seed & 1 == 0 { "=" } else { "" };
        rules.push(format!("{token}{word}"));
    }
    rules
}

fn bench(c: &mut Criterion) {
    let texts = rules();
    let (keywords, bad) = Keywords::build(texts.iter().enumerate().map(|(i, text)| RuleSource {
        text,
        list: (i % 4) as u8 + 1,
        file: PathBuf::from("bench.keywords"),
        line: i as u32 + 1,
    }))
    .expect("1,000 rules compile");
    assert!(
        keywords.len() >= 990,
        "{} rules, {} bad",
        keywords.len(),
        bad.len()
    );

    let mut group = c.benchmark_group("keywords_1000_rules");
    for name in NAMES {
        group.bench_function(*name, |b| {
            b.iter(|| keywords.find(black_box(name.as_bytes()), u32::MAX, 1 << 1))
        });
    }
    group.bench_function("all_names", |b| {
        b.iter(|| {
            NAMES
                .iter()
                .filter(|n| {
                    keywords
                        .find(black_box(n.as_bytes()), u32::MAX, 1 << 1)
                        .is_some()
                })
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
