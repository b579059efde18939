//! Who asked: source addresses mapped to the client names and groups a coordinator reads.

use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::config::Client;

/// The client behind one query. `Copy` so the query path never allocates for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientId {
    /// The address the decision was made for.
    pub addr: IpAddr,
    /// Index of the named client, if the address is named.
    pub named: Option<u32>,
    /// Group index in the engine.
    pub group: u16,
}

/// Named clients: exact addresses in a hash map, ranges checked most specific first.
pub struct Clients {
    names: Vec<String>,
    groups: Vec<u16>,
    exact: FxHashMap<IpAddr, u32>,
    ranges: Vec<(IpNet, u32)>,
}

impl Clients {
    /// Builds the table; `group_of` maps a group name to its engine index.
    pub fn new(clients: &[Client], group_of: impl Fn(&str) -> u16) -> Self {
        let mut t = Clients {
            names: Vec::new(),
            groups: Vec::new(),
            exact: FxHashMap::default(),
            ranges: Vec::new(),
        };
        for c in clients {
            let idx = t.names.len() as u32;
            t.names.push(c.name.clone());
            t.groups.push(group_of(&c.group));
            if c.net.prefix_len() == c.net.max_prefix_len() {
                t.exact.entry(c.net.addr()).or_insert(idx);
            } else {
                t.ranges.push((c.net, idx));
            }
        }
        t.ranges
            .sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
        t
    }

    /// Identifies an address; unnamed addresses get `default_group`.
    pub fn identify(&self, addr: IpAddr, default_group: u16) -> ClientId {
        let addr = canonical(addr);
        let named = self.exact.get(&addr).copied().or_else(|| {
            self.ranges
                .iter()
                .find(|(n, _)| n.contains(&addr))
                .map(|(_, i)| *i)
        });
        ClientId {
            addr,
            named,
            group: named.map_or(default_group, |i| self.groups[i as usize]),
        }
    }

    /// The configured name of a client.
    pub fn name(&self, id: &ClientId) -> Option<&str> {
        id.named.map(|i| self.names[i as usize].as_str())
    }

    /// Finds a named client by name (for `check --client NAME`).
    pub fn by_name(&self, name: &str) -> Option<IpAddr> {
        let idx = self.names.iter().position(|n| n.eq_ignore_ascii_case(name))? as u32;
        self.exact
            .iter()
            .find(|(_, i)| **i == idx)
            .map(|(a, _)| *a)
            .or_else(|| self.ranges.iter().find(|(_, i)| *i == idx).map(|(n, _)| n.addr()))
    }
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) are treated as the IPv4 address.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_beats_range_and_unknown_gets_default() {
        let clients = vec![
            Client {
                name: "LIB-PC-07".into(),
                net: "10.0.1.7/32".parse().unwrap(),
                group: "staff".into(),
            },
            Client {
                name: "Pupil wifi".into(),
                net: "10.0.0.0/16".parse().unwrap(),
                group: "pupils".into(),
            },
        ];
        let t = Clients::new(&clients, |g| if g == "staff" { 1 } else { 2 });
        let a = t.identify("10.0.1.7".parse().unwrap(), 0);
        assert_eq!((t.name(&a), a.group), (Some("LIB-PC-07"), 1));
        let b = t.identify("::ffff:10.0.3.3".parse().unwrap(), 0);
        assert_eq!((t.name(&b), b.group), (Some("Pupil wifi"), 2));
        let c = t.identify("192.168.1.1".parse().unwrap(), 0);
        assert_eq!((t.name(&c), c.group), (None, 0));
        assert_eq!(t.by_name("lib-pc-07"), Some("10.0.1.7".parse().unwrap()));
    }
}
