//! Who asked: source addresses, DHCP leases and forwarders' hints mapped to the client names and
//! groups a coordinator reads.
//!
//! A client is recognised, most specific first, by: an exact address in the config; its DHCP
//! lease (a configured MAC, then a hostname pattern such as `LIB-PC-*`, since DHCP addresses
//! move); a configured range. Anything else is in the default group. Names shown in logs come
//! from the lease when there is one ("LIB-PC-07 (aa:bb:cc:dd:ee:ff)") and are built once per
//! snapshot, so identifying a query is a hash lookup or two and never allocates.

use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::config::{Client, ClientMatch};
use crate::leases::{format_mac, Lease};

/// The client behind one query. `Copy` so the query path never allocates for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientId {
    /// The address the decision was made for.
    pub addr: IpAddr,
    /// Index of the configured client that matched, if any.
    pub named: Option<u32>,
    /// Group index in the engine.
    pub group: u16,
    /// Index of the DHCP lease that names it, if any.
    pub lease: Option<u32>,
}

struct LeaseEntry {
    lease: Lease,
    /// "hostname (mac)", or the configured name in place of the hostname.
    label: String,
    /// The configured client (MAC or hostname rule) the lease matched.
    named: Option<u32>,
}

/// Configured clients and the current DHCP leases.
pub struct Clients {
    /// What each configured client is called in logs.
    labels: Vec<String>,
    /// The `name` each configured client was given, for `--client NAME`.
    names: Vec<Option<String>>,
    matchers: Vec<ClientMatch>,
    groups: Vec<u16>,
    exact: FxHashMap<IpAddr, u32>,
    /// Ranges by prefix length, longest first: one hash lookup per distinct length (a school
    /// has a handful) rather than a scan of every range.
    ranges: Vec<(u8, bool, FxHashMap<IpAddr, u32>)>,
    macs: FxHashMap<[u8; 6], u32>,
    leases: Vec<LeaseEntry>,
    lease_by_ip: FxHashMap<IpAddr, u32>,
    lease_by_mac: FxHashMap<[u8; 6], u32>,
}

impl Clients {
    /// Builds the table; `group_of` maps a group name to its engine index.
    pub fn new(clients: &[Client], leases: Vec<Lease>, group_of: impl Fn(&str) -> u16) -> Self {
        let mut t = Clients {
            labels: Vec::new(),
            names: Vec::new(),
            matchers: Vec::new(),
            groups: Vec::new(),
            exact: FxHashMap::default(),
            ranges: Vec::new(),
            macs: FxHashMap::default(),
            leases: Vec::new(),
            lease_by_ip: FxHashMap::default(),
            lease_by_mac: FxHashMap::default(),
        };
        let mut hostnames = Vec::new();
        for c in clients {
            let idx = t.names.len() as u32;
            let label = match (&c.matcher, &c.name) {
                (ClientMatch::Mac(m), Some(n)) => format!("{n} ({})", format_mac(m)),
                (ClientMatch::Mac(m), None) => format_mac(m),
                (_, Some(n)) => n.clone(),
                (ClientMatch::Hostname(h), None) => h.clone(),
                (ClientMatch::Net(n), None) => n.to_string(),
            };
            t.labels.push(label);
            t.names.push(c.name.clone());
            t.matchers.push(c.matcher.clone());
            t.groups.push(group_of(&c.group));
            match &c.matcher {
                ClientMatch::Net(net) if net.prefix_len() == net.max_prefix_len() => {
                    t.exact.entry(canonical(net.addr())).or_insert(idx);
                }
                ClientMatch::Net(net) => {
                    let (len, v4) = (net.prefix_len(), net.addr().is_ipv4());
                    let at = match t.ranges.iter().position(|r| (r.0, r.1) == (len, v4)) {
                        Some(at) => at,
                        None => {
                            t.ranges.push((len, v4, FxHashMap::default()));
                            t.ranges.len() - 1
                        }
                    };
                    t.ranges[at].2.entry(net.trunc().addr()).or_insert(idx);
                }
                ClientMatch::Mac(mac) => {
                    t.macs.entry(*mac).or_insert(idx);
                }
                ClientMatch::Hostname(h) => hostnames.push((h.to_ascii_lowercase(), idx)),
            }
        }
        t.ranges.sort_by_key(|(len, _, _)| std::cmp::Reverse(*len));

        for lease in leases {
            let ip = canonical(lease.ip);
            let named = lease.mac.and_then(|m| t.macs.get(&m).copied()).or_else(|| {
                let host = lease.hostname.as_deref()?.to_ascii_lowercase();
                hostnames
                    .iter()
                    .find(|(p, _)| glob_match(p, &host))
                    .map(|(_, i)| *i)
            });
            let shown = named
                .and_then(|i| t.names[i as usize].clone())
                .or_else(|| t.exact.get(&ip).and_then(|i| t.names[*i as usize].clone()))
                .or_else(|| lease.hostname.clone())
                .unwrap_or_else(|| ip.to_string());
            let label = match &lease.mac {
                Some(m) => format!("{shown} ({})", format_mac(m)),
                None => shown,
            };
            let idx = t.leases.len() as u32;
            t.lease_by_ip.insert(ip, idx);
            if let Some(m) = lease.mac {
                t.lease_by_mac.insert(m, idx);
            }
            t.leases.push(LeaseEntry {
                lease: Lease { ip, ..lease },
                label,
                named,
            });
        }
        t
    }

    /// Identifies an address; unknown addresses get `default_group`.
    pub fn identify(&self, addr: IpAddr, default_group: u16) -> ClientId {
        let addr = canonical(addr);
        let lease = self.lease_by_ip.get(&addr).copied();
        let named = self
            .exact
            .get(&addr)
            .copied()
            .or_else(|| lease.and_then(|l| self.leases[l as usize].named))
            .or_else(|| self.in_range(addr));
        ClientId {
            addr,
            named,
            group: named.map_or(default_group, |i| self.groups[i as usize]),
            lease,
        }
    }

    fn in_range(&self, addr: IpAddr) -> Option<u32> {
        let v4 = addr.is_ipv4();
        self.ranges
            .iter()
            .filter(|(_, f, _)| *f == v4)
            .find_map(|(len, _, nets)| {
                let net = IpNet::new(addr, *len).ok()?.trunc();
                nets.get(&net.addr()).copied()
            })
    }

    /// Identifies a device by MAC (a forwarder's `add-mac`): through its lease if it has one,
    /// else a configured MAC; `addr` stands for it when no lease gives its address.
    pub fn identify_mac(&self, mac: [u8; 6], addr: IpAddr, default_group: u16) -> ClientId {
        if let Some(&l) = self.lease_by_mac.get(&mac) {
            let id = self.identify(self.leases[l as usize].lease.ip, default_group);
            return ClientId {
                lease: Some(l),
                ..id
            };
        }
        match self.macs.get(&mac) {
            Some(&i) => ClientId {
                addr: canonical(addr),
                named: Some(i),
                group: self.groups[i as usize],
                lease: None,
            },
            None => ClientId {
                addr: canonical(addr),
                named: None,
                group: default_group,
                lease: None,
            },
        }
    }

    /// What the coordinator reads for a client: "LIB-PC-07 (aa:bb:cc:dd:ee:ff)" from its lease,
    /// or its configured name.
    pub fn name(&self, id: &ClientId) -> Option<&str> {
        id.lease
            .map(|l| self.leases[l as usize].label.as_str())
            .or_else(|| id.named.map(|i| self.labels[i as usize].as_str()))
    }

    /// The lease behind a client, if any.
    pub fn lease(&self, id: &ClientId) -> Option<&Lease> {
        id.lease.map(|l| &self.leases[l as usize].lease)
    }

    /// Finds a client by configured name, DHCP hostname or MAC (for `--client NAME`).
    pub fn find(&self, name: &str, default_group: u16) -> Option<ClientId> {
        if let Some(mac) = crate::config::parse_mac(name) {
            return Some(self.identify_mac(mac, IpAddr::from([0, 0, 0, 0]), default_group));
        }
        if let Some(l) = self.leases.iter().find(|l| {
            l.lease
                .hostname
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(name))
        }) {
            return Some(self.identify(l.lease.ip, default_group));
        }
        let idx = self
            .names
            .iter()
            .position(|n| n.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(name)))?;
        match &self.matchers[idx] {
            ClientMatch::Net(net) => Some(self.identify(net.addr(), default_group)),
            ClientMatch::Mac(mac) => {
                Some(self.identify_mac(*mac, IpAddr::from([0, 0, 0, 0]), default_group))
            }
            ClientMatch::Hostname(_) => {
                let l = self.leases.iter().find(|l| l.named == Some(idx as u32))?;
                Some(self.identify(l.lease.ip, default_group))
            }
        }
    }

    /// Leases whose hostname matches `name` (case-insensitive), for exemptions by device name.
    pub fn leases_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Lease> + 'a {
        self.leases.iter().map(|l| &l.lease).filter(move |l| {
            l.hostname
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(name))
        })
    }

    /// Configured clients called `name` (case-insensitive).
    pub fn configured_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.names
            .iter()
            .enumerate()
            .filter(move |(_, n)| n.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .map(|(i, _)| i as u32)
    }
}

/// Case-folded glob with `*` as the only wildcard (hostname patterns like `lib-pc-*`).
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) are treated as the IPv4 address.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: Option<&str>, matcher: ClientMatch, group: &str) -> Client {
        Client {
            name: name.map(str::to_string),
            matcher,
            group: group.into(),
        }
    }

    fn group_of(g: &str) -> u16 {
        match g {
            "staff" => 1,
            "pupils" => 2,
            "library" => 3,
            _ => 0,
        }
    }

    #[test]
    fn exact_beats_range_and_unknown_gets_default() {
        let clients = vec![
            client(
                Some("LIB-PC-07"),
                ClientMatch::Net("10.0.1.7/32".parse().unwrap()),
                "staff",
            ),
            client(
                Some("Pupil wifi"),
                ClientMatch::Net("10.0.0.0/16".parse().unwrap()),
                "pupils",
            ),
        ];
        let mut clients = clients;
        clients.push(client(
            Some("Library wifi"),
            ClientMatch::Net("10.0.9.0/24".parse().unwrap()),
            "library",
        ));
        clients.push(client(
            Some("Staff v6"),
            ClientMatch::Net("fd00:5::/64".parse().unwrap()),
            "staff",
        ));
        let t = Clients::new(&clients, Vec::new(), group_of);
        let lib = t.identify("10.0.9.200".parse().unwrap(), 0);
        assert_eq!((t.name(&lib), lib.group), (Some("Library wifi"), 3));
        let v6 = t.identify("fd00:5::1234".parse().unwrap(), 0);
        assert_eq!((t.name(&v6), v6.group), (Some("Staff v6"), 1));
        let other_v6 = t.identify("fd00:6::1".parse().unwrap(), 0);
        assert_eq!(other_v6.group, 0);
        let a = t.identify("10.0.1.7".parse().unwrap(), 0);
        assert_eq!((t.name(&a), a.group), (Some("LIB-PC-07"), 1));
        let b = t.identify("::ffff:10.0.3.3".parse().unwrap(), 0);
        assert_eq!((t.name(&b), b.group), (Some("Pupil wifi"), 2));
        let c = t.identify("192.168.1.1".parse().unwrap(), 0);
        assert_eq!((t.name(&c), c.group), (None, 0));
        assert_eq!(t.find("lib-pc-07", 0), Some(a));
    }

    #[test]
    fn leases_name_devices_and_mac_or_hostname_rules_pick_groups() {
        let clients = vec![
            client(
                Some("Pupil wifi"),
                ClientMatch::Net("10.0.0.0/16".parse().unwrap()),
                "pupils",
            ),
            client(
                Some("Head's laptop"),
                ClientMatch::Mac([0xaa, 0xbb, 0xcc, 0, 0, 1]),
                "staff",
            ),
            client(None, ClientMatch::Hostname("LIB-PC-*".into()), "library"),
        ];
        let leases = vec![
            Lease {
                ip: "10.0.5.1".parse().unwrap(),
                mac: Some([0xaa, 0xbb, 0xcc, 0, 0, 1]),
                hostname: Some("DESKTOP-X1".into()),
            },
            Lease {
                ip: "10.0.5.7".parse().unwrap(),
                mac: Some([0xaa, 0xbb, 0xcc, 0, 0, 7]),
                hostname: Some("lib-pc-07".into()),
            },
            Lease {
                ip: "10.0.5.9".parse().unwrap(),
                mac: Some([0xaa, 0xbb, 0xcc, 0, 0, 9]),
                hostname: Some("ipad-9".into()),
            },
        ];
        let t = Clients::new(&clients, leases, group_of);
        let head = t.identify("10.0.5.1".parse().unwrap(), 0);
        assert_eq!(
            (t.name(&head), head.group),
            (Some("Head's laptop (aa:bb:cc:00:00:01)"), 1)
        );
        let lib = t.identify("10.0.5.7".parse().unwrap(), 0);
        assert_eq!(
            (t.name(&lib), lib.group),
            (Some("lib-pc-07 (aa:bb:cc:00:00:07)"), 3)
        );
        let ipad = t.identify("10.0.5.9".parse().unwrap(), 0);
        assert_eq!(
            (t.name(&ipad), ipad.group),
            (Some("ipad-9 (aa:bb:cc:00:00:09)"), 2)
        );
        let by_mac = t.identify_mac([0xaa, 0xbb, 0xcc, 0, 0, 7], "10.9.9.9".parse().unwrap(), 0);
        assert_eq!(by_mac, lib);
        assert_eq!(t.find("LIB-PC-07", 0), Some(lib));
        assert_eq!(t.find("aa:bb:cc:00:00:09", 0), Some(ipad));
    }

    #[test]
    fn globs() {
        assert!(glob_match("lib-pc-*", "lib-pc-07"));
        assert!(glob_match("*-ipad", "y3-ipad"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("lib-pc-*", "office-pc-1"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }
}
