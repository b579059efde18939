//! Property-driven fuzzing of everything a packet touches before an answer: decoding,
//! normalisation and the decision. Random and mutated packets must never panic, and whatever
//! parses must decide the same way as the name typed by hand. CI runs a short pass; set
//! `PROPTEST_CASES=1000000` for a long one.

use std::sync::Arc;

use proptest::prelude::*;
use schoolgate::config::Config;
use schoolgate::domain::QueryName;
use schoolgate::policy::{Action, Engine};
use schoolgate::wire::{self, Writer};

use crate::harness::Setup;

/// An engine over the harness's lists, with the directory that holds its mapped files.
fn engine() -> (Setup, Arc<Engine>) {
    let setup = Setup::new();
    let config = Config::load(&setup.config()).expect("test config");
    let engine = Engine::load(Arc::new(config)).expect("engine").engine;
    (setup, Arc::new(engine))
}

fn query_bytes(labels: &[Vec<u8>], qtype: u16) -> Vec<u8> {
    let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in labels {
        p.push(l.len() as u8);
        p.extend_from_slice(l);
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(packet in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut buf = Vec::new();
        match wire::parse(&packet) {
            Ok(q) => {
                let _ = Writer::respond(&mut buf, &q, 0, false);
            }
            Err(r) => {
                let _ = Writer::reject(&mut buf, &packet, &r);
            }
        }
    }

    #[test]
    fn mutated_queries_never_panic(
        labels in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..70), 0..8),
        qtype in any::<u16>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
    ) {
        let mut p = query_bytes(&labels, qtype);
        for (at, b) in flips {
            let n = p.len();
            p[at % n] ^= b;
        }
        let _ = wire::parse(&p);
    }

    #[test]
    fn wire_and_typed_names_decide_alike(
        sub in "[a-zA-Z0-9-]{1,20}",
        base in prop::sample::select(vec!["tiktok.com", "pornhub.com", "example.org", "bet365.com", "childline.org.uk"]),
        upper in any::<bool>(),
    ) {
        let name = format!("{sub}.{base}");
        let shown = if upper { name.to_uppercase() } else { name.clone() };
        let labels: Vec<Vec<u8>> = shown.split('.').map(|l| l.as_bytes().to_vec()).collect();
        let packet = query_bytes(&labels, 1);
        let q = wire::parse(&packet).expect("valid query");
        let e = engine_once();
        let client = e.identify("127.0.0.1".parse().unwrap());
        let now = chrono::Utc::now();
        let from_wire = e.decide(&client, &q.name, now);
        let typed = e.decide(&client, &QueryName::parse(&format!("{shown}.")).unwrap(), now);
        prop_assert_eq!(from_wire.action, typed.action);
        prop_assert_eq!(from_wire.category, typed.category);
        let expect_block = matches!(base, "tiktok.com" | "pornhub.com" | "bet365.com");
        prop_assert_eq!(from_wire.action == Action::Block, expect_block);
    }
}

fn engine_once() -> Arc<Engine> {
    static ENGINE: std::sync::OnceLock<(Setup, Arc<Engine>)> = std::sync::OnceLock::new();
    ENGINE.get_or_init(engine).1.clone()
}
