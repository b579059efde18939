//! Names that do not go to the school's upstreams: answered here, or forwarded to its own DNS.
//!
//! A school's internal names (its Active Directory domain, printers, the MIS server) live on its
//! own DNS servers. `[[forward]]` zones send them there, so devices given schoolgate by DHCP
//! still find them.
//!
//! Names that mean nothing on the internet are answered here and never sent upstream, where they
//! would tell the internet about the school's internal addresses and wait on an answer that
//! cannot come (as unbound does by default):
//! - `localhost` (RFC 6761): the loopback address;
//! - `invalid` (RFC 6761), `onion` (RFC 7686), `home.arpa` (RFC 8375), the reverse zones of
//!   private and special addresses (RFC 6303, RFC 7793): no such name;
//! - `resolver.arpa` (RFC 9462): no records, so devices find no encrypted resolver to move to.
//!
//! A forward zone wins over a built-in one, so a school can send `168.192.in-addr.arpa` to the
//! DNS server that knows its devices' names.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Forward;
use crate::domain::QueryName;
use crate::upstream::Upstream;

/// What to do with a name under a zone.
pub enum Route<'a> {
    /// Answer here, as the apex of `zone` says.
    Local {
        /// The built-in zone the name is under; its SOA goes with a negative answer.
        zone: &'a str,
        /// How names under it are answered.
        answer: Local,
    },
    /// Ask the school's own DNS servers for this zone.
    Forward {
        /// The `[[forward]]` zone the name is under.
        zone: &'a str,
        /// Its servers.
        upstream: &'a Upstream,
    },
}

/// How a built-in zone is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// `127.0.0.1` and `::1` for address queries, no records for any other type.
    Loopback,
    /// No such name.
    NoSuchName,
    /// The name exists and has no records of any type.
    NoRecords,
}

enum Entry {
    Local { zone: String, answer: Local },
    Forward { zone: String, upstream: Upstream },
}

/// The zones in force, keyed the way [`QueryName::key`] spells names (labels reversed), so a
/// zone is a prefix of the names under it.
pub struct Zones {
    by_key: HashMap<Box<[u8]>, Entry>,
}

/// RFC 6303 and RFC 7793 reverse zones, besides the generated 172.16/12 and 100.64/10 ones.
const PRIVATE_REVERSE: &[&str] = &[
    "10.in-addr.arpa",
    "168.192.in-addr.arpa",
    "0.in-addr.arpa",
    "127.in-addr.arpa",
    "254.169.in-addr.arpa",
    "2.0.192.in-addr.arpa",
    "100.51.198.in-addr.arpa",
    "113.0.203.in-addr.arpa",
    "255.255.255.255.in-addr.arpa",
    "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
    "d.f.ip6.arpa",
    "8.e.f.ip6.arpa",
    "9.e.f.ip6.arpa",
    "a.e.f.ip6.arpa",
    "b.e.f.ip6.arpa",
    "8.b.d.0.1.0.0.2.ip6.arpa",
];

impl Zones {
    /// The built-in zones and the config's forward zones. A forward zone whose servers are
    /// unchanged from `running` keeps what it learned there about servers that are down.
    pub fn new(forwards: &[Forward], timeout: Duration, running: Option<&Zones>) -> Self {
        let mut zones = Zones {
            by_key: HashMap::new(),
        };
        let private_ranges = (16..32)
            .map(|n| format!("{n}.172.in-addr.arpa"))
            .chain((64..128).map(|n| format!("{n}.100.in-addr.arpa")));
        let no_such_name = ["invalid", "onion", "home.arpa"]
            .into_iter()
            .map(String::from)
            .chain(PRIVATE_REVERSE.iter().map(|z| z.to_string()))
            .chain(private_ranges);
        let builtin = no_such_name.map(|zone| (zone, Local::NoSuchName)).chain([
            ("localhost".to_string(), Local::Loopback),
            ("resolver.arpa".to_string(), Local::NoRecords),
        ]);
        for (zone, answer) in builtin {
            let entry = Entry::Local {
                zone: zone.clone(),
                answer,
            };
            zones.insert(&zone, entry);
        }
        for f in forwards {
            let upstream = running
                .and_then(|r| r.forwarder(&f.zone))
                .filter(|u| u.serves(&f.upstreams, timeout))
                .cloned()
                .unwrap_or_else(|| Upstream::new(&f.upstreams, timeout));
            let zone = f.zone.clone();
            zones.insert(&f.zone, Entry::Forward { zone, upstream });
        }
        zones
    }

    fn insert(&mut self, zone: &str, entry: Entry) {
        let mut key = Vec::with_capacity(zone.len());
        crate::domain::reverse_key(zone, &mut key);
        self.by_key.insert(key.into_boxed_slice(), entry);
    }

    fn forwarder(&self, zone: &str) -> Option<&Upstream> {
        self.forwards()
            .find(|(z, _)| *z == zone)
            .map(|(_, upstream)| upstream)
    }

    fn forwards(&self) -> impl Iterator<Item = (&str, &Upstream)> {
        self.by_key.values().filter_map(|e| match e {
            Entry::Forward { zone, upstream } => Some((zone.as_str(), upstream)),
            Entry::Local { .. } => None,
        })
    }

    /// Where `name` goes: the closest zone above it (or it), if any; `None` for the upstreams.
    pub fn route(&self, name: &QueryName) -> Option<Route<'_>> {
        let key = name.key();
        let ends = key
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'.')
            .map(|(i, _)| i)
            .chain([key.len()]);
        let mut found = None;
        for end in ends {
            if let Some(entry) = self.by_key.get(&key[..end]) {
                found = Some(entry);
            }
        }
        found.map(|entry| match entry {
            Entry::Local { zone, answer } => Route::Local {
                zone,
                answer: *answer,
            },
            Entry::Forward { zone, upstream } => Route::Forward { zone, upstream },
        })
    }

    /// Each forward zone's servers and whether each is set aside, for `/healthz`, by zone.
    pub fn forward_health(&self) -> Vec<(String, SocketAddr, bool)> {
        let mut out: Vec<_> = self
            .forwards()
            .flat_map(|(zone, upstream)| {
                upstream
                    .health()
                    .into_iter()
                    .map(move |(addr, aside)| (zone.to_string(), addr, aside))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(zones: &Zones, name: &str) -> Option<String> {
        let name = QueryName::parse(name).unwrap();
        zones.route(&name).map(|r| match r {
            Route::Local { answer, .. } => format!("{answer:?}"),
            Route::Forward { upstream, .. } => format!("{:?}", upstream.health()[0].0),
        })
    }

    fn forward(zone: &str, addr: &str) -> Forward {
        Forward {
            zone: zone.into(),
            upstreams: vec![addr.parse().unwrap()],
        }
    }

    #[test]
    fn internal_names_stay_here_and_the_school_zone_goes_to_its_own_dns() {
        let forwards = [
            forward("school.internal", "10.0.0.5:53"),
            forward("1.168.192.in-addr.arpa", "10.0.0.6:53"),
        ];
        let z = Zones::new(&forwards, Duration::from_secs(2), None);
        let cases = [
            ("www.bbc.co.uk", None),
            ("localhost", Some("Loopback")),
            ("printer.localhost", Some("Loopback")),
            ("notlocalhost", None),
            ("x.invalid", Some("NoSuchName")),
            ("10.1.168.192.in-addr.arpa", Some("10.0.0.6:53")),
            ("10.2.168.192.in-addr.arpa", Some("NoSuchName")),
            ("1.0.20.172.in-addr.arpa", Some("NoSuchName")),
            ("1.0.32.172.in-addr.arpa", None),
            ("8.8.8.8.in-addr.arpa", None),
            ("dc1.school.internal", Some("10.0.0.5:53")),
            ("school.internal", Some("10.0.0.5:53")),
            ("otherschool.internal", None),
            ("_dns.resolver.arpa", Some("NoRecords")),
            ("printer.home.arpa", Some("NoSuchName")),
        ];
        for (name, want) in cases {
            assert_eq!(route(&z, name).as_deref(), want, "{name}");
        }
    }

    #[tokio::test]
    async fn a_reload_keeps_what_an_unchanged_forward_zone_learned() {
        // Nothing listens on port 1: the first lookup sets the school's server aside.
        let forwards = [forward("school.internal", "127.0.0.1:1")];
        let first = Zones::new(&forwards, Duration::from_secs(2), None);
        let Some(Route::Forward { zone, upstream: u }) =
            first.route(&QueryName::parse("dc.school.internal").unwrap())
        else {
            panic!("forwarded");
        };
        assert_eq!(zone, "school.internal");
        assert!(u
            .resolve("dc.school.internal", 1, |_, _, _| {})
            .await
            .is_err());
        let aside = |z: &Zones| z.forward_health().iter().map(|h| h.2).collect::<Vec<_>>();
        assert_eq!(aside(&first), [true]);
        let kept = Zones::new(&forwards, Duration::from_secs(2), Some(&first));
        assert_eq!(aside(&kept), [true], "the same servers: still set aside");
        let moved = [forward("school.internal", "127.0.0.1:2")];
        let changed = Zones::new(&moved, Duration::from_secs(2), Some(&first));
        assert_eq!(aside(&changed), [false], "new servers start trusted");
    }
}
