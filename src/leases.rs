//! DHCP leases: the school's DHCP server already knows every device's hostname and MAC, so a
//! coordinator reads "LIB-PC-07 (aa:bb:cc:dd:ee:ff)" in the logs rather than an address that
//! will belong to another device tomorrow.
//!
//! Two formats are read: dnsmasq's one-line-per-lease file and ISC dhcpd's `lease { ... }`
//! blocks (where the file is a journal: the last block for an address is the one in force).
//! Leases that had already ended when the file was read name nobody. Leases are names, not
//! filtering: an unreadable file is reported and skipped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use thiserror::Error;

use crate::config::{parse_mac, Config, LeaseFormat};

/// One device's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address it holds.
    pub ip: IpAddr,
    /// Its MAC, when the file records one (IPv4 leases do; DHCPv6 ones have a DUID instead).
    pub mac: Option<[u8; 6]>,
    /// The hostname the device sent, if any.
    pub hostname: Option<String>,
}

/// A lease file that could not be read.
#[derive(Debug, Error)]
#[error("cannot read DHCP lease file {}: {source}; clients are named by address until it is readable", path.display())]
pub struct LeaseError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

/// Reads one lease file.
pub fn read(path: &Path, format: LeaseFormat) -> Result<Vec<Lease>, LeaseError> {
    let text = std::fs::read_to_string(path).map_err(|source| LeaseError {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse(&text, format, Utc::now()))
}

/// Every lease file a config names; unreadable ones are returned as errors beside the rest.
pub fn read_all(config: &Config) -> (Vec<Lease>, Vec<LeaseError>) {
    let (mut all, mut errors) = (Vec::new(), Vec::new());
    for path in &config.dhcp_leases {
        match read(path, config.dhcp_format) {
            Ok(l) => all.extend(l),
            Err(e) => errors.push(e),
        }
    }
    (all, errors)
}

/// Parses lease file text as at `now`; `Auto` looks for ISC `lease ... {` blocks.
pub fn parse(text: &str, format: LeaseFormat, now: DateTime<Utc>) -> Vec<Lease> {
    let isc = match format {
        LeaseFormat::Isc => true,
        LeaseFormat::Dnsmasq => false,
        LeaseFormat::Auto => text.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with("lease ") && l.contains('{')
        }),
    };
    if isc {
        parse_isc(text, now)
    } else {
        parse_dnsmasq(text, now)
    }
}

/// `expiry mac ip hostname client-id`; expiry is Unix time, 0 for never; `*` is an unknown
/// hostname. DHCPv6 lines carry an IAID where the MAC would be, and the `duid` line is the
/// server's own.
fn parse_dnsmasq(text: &str, now: DateTime<Utc>) -> Vec<Lease> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let expiry: i64 = f.next()?.parse().ok()?;
            if expiry != 0 && expiry < now.timestamp() {
                return None;
            }
            let hw = f.next()?;
            let ip = f.next()?.parse().ok()?;
            let hostname = f.next().filter(|h| *h != "*").map(str::to_string);
            Some(Lease {
                ip,
                mac: parse_mac(hw),
                hostname,
            })
        })
        .collect()
}

#[derive(Debug, PartialEq)]
enum Token<'a> {
    Word(&'a str),
    Open,
    Close,
    End,
}

fn tokens(text: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'{' => {
                out.push(Token::Open);
                i += 1;
            }
            b'}' => {
                out.push(Token::Close);
                i += 1;
            }
            b';' => {
                out.push(Token::End);
                i += 1;
            }
            b'"' => {
                let start = i + 1;
                i = start;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                out.push(Token::Word(&text[start..i.min(b.len())]));
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                let start = i;
                while i < b.len() && !b"{};\"#".contains(&b[i]) && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                out.push(Token::Word(&text[start..i]));
            }
        }
    }
    out
}

/// `lease IP { hardware ethernet MAC; client-hostname "NAME"; binding state active; ... }`.
/// Later blocks for the same address replace earlier ones; a lease whose binding state is not
/// active (free, abandoned, expired), or whose `ends` (UTC) has passed, names nobody.
fn parse_isc(text: &str, now: DateTime<Utc>) -> Vec<Lease> {
    let toks = tokens(text);
    let mut by_ip: HashMap<IpAddr, usize> = HashMap::new();
    let mut out: Vec<Option<Lease>> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let lease_ip = match (&toks[i], toks.get(i + 1), toks.get(i + 2)) {
            (Token::Word("lease"), Some(Token::Word(ip)), Some(Token::Open)) => ip.parse().ok(),
            _ => None,
        };
        let Some(ip) = lease_ip else {
            i = skip_item(&toks, i);
            continue;
        };
        i += 3;
        let mut lease = Lease {
            ip,
            mac: None,
            hostname: None,
        };
        let mut active = true;
        let mut stmt: Vec<&str> = Vec::new();
        while i < toks.len() && toks[i] != Token::Close {
            match &toks[i] {
                Token::Word(w) => stmt.push(w),
                Token::End => {
                    match stmt.as_slice() {
                        ["hardware", "ethernet", mac] => lease.mac = parse_mac(mac),
                        ["client-hostname", name] => lease.hostname = Some(name.to_string()),
                        ["binding", "state", state] => active &= *state == "active",
                        ["ends", _weekday, date, time] => {
                            let ends = NaiveDateTime::parse_from_str(
                                &format!("{date} {time}"),
                                "%Y/%m/%d %H:%M:%S",
                            );
                            if ends.is_ok_and(|e| e.and_utc() < now) {
                                active = false;
                            }
                        }
                        _ => {}
                    }
                    stmt.clear();
                }
                Token::Open => {
                    i = skip_item(&toks, i);
                    stmt.clear();
                    continue;
                }
                Token::Close => {}
            }
            i += 1;
        }
        i += 1;
        let slot = match by_ip.get(&ip) {
            Some(&s) => s,
            None => {
                by_ip.insert(ip, out.len());
                out.push(None);
                out.len() - 1
            }
        };
        out[slot] = active.then_some(lease);
    }
    out.into_iter().flatten().collect()
}

/// Index after the statement or block starting at `i` (blocks may nest).
fn skip_item(toks: &[Token<'_>], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < toks.len() {
        match toks[i] {
            Token::Open => depth += 1,
            Token::Close => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            Token::End if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// `aa:bb:cc:dd:ee:ff`, as DHCP servers and switches print it.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thursday 26 November 2026, 12:00 UTC.
    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_694_400, 0).unwrap()
    }

    #[test]
    fn dnsmasq_lines_including_unknown_names_and_v6() {
        let text = "1795780800 aa:bb:cc:dd:ee:07 10.0.1.7 LIB-PC-07 01:aa:bb:cc:dd:ee:07\n\
                    0 AA:BB:CC:DD:EE:08 10.0.1.8 * *\n\
                    duid 00:01:00:01:2a:2b:2c:2d:aa:bb:cc:dd:ee:ff\n\
                    1795780800 12345 2001:db8::9 ipad-9 00:01:00:01\n\
                    1795690800 aa:bb:cc:dd:ee:10 10.0.1.10 LEFT-AT-11 *\n\
                    garbage\n";
        let l = parse(text, LeaseFormat::Auto, now());
        assert_eq!(l.len(), 3, "{l:?}");
        assert_eq!(l[0].hostname.as_deref(), Some("LIB-PC-07"));
        assert_eq!(format_mac(&l[0].mac.unwrap()), "aa:bb:cc:dd:ee:07");
        assert_eq!((l[1].hostname.as_deref(), l[1].mac.is_some()), (None, true));
        assert_eq!((l[2].ip, l[2].mac), ("2001:db8::9".parse().unwrap(), None));
    }

    #[test]
    fn isc_last_binding_wins_and_free_leases_name_nobody() {
        let text = r#"
# The format of this file is documented in the dhcpd.leases(5) manual page.
authoring-byte-order little-endian;
server-duid "\000\001\000\001";
lease 10.0.1.7 {
  starts 4 2026/11/26 08:00:00;
  ends 4 2026/11/26 20:00:00;
  binding state active;
  hardware ethernet aa:bb:cc:dd:ee:01;
  client-hostname "OLD-NAME";
}
lease 10.0.1.9 {
  binding state active;
  hardware ethernet aa:bb:cc:dd:ee:09;
  client-hostname "GONE-PC";
}
failover peer "dhcp" state { my state normal at 4 2026/11/26 08:00:00; }
lease 10.0.1.7 {
  binding state active;
  next binding state free;
  hardware ethernet aa:bb:cc:dd:ee:07;
  uid "\001\252\273";
  set vendor-class-identifier = "MSFT 5.0";
  client-hostname "LIB-PC-07";
}
lease 10.0.1.9 {
  binding state free;
  hardware ethernet aa:bb:cc:dd:ee:09;
}
lease 10.0.1.11 {
  ends 4 2026/11/26 11:59:59;
  binding state active;
  hardware ethernet aa:bb:cc:dd:ee:11;
  client-hostname "ENDED";
}
lease 10.0.1.12 {
  ends never;
  binding state active;
  hardware ethernet aa:bb:cc:dd:ee:12;
  client-hostname "SERVER-12";
}
"#;
        let l = parse(text, LeaseFormat::Auto, now());
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(l[1].hostname.as_deref(), Some("SERVER-12"));
        assert_eq!(l[0].ip, "10.0.1.7".parse::<IpAddr>().unwrap());
        assert_eq!(l[0].hostname.as_deref(), Some("LIB-PC-07"));
        assert_eq!(format_mac(&l[0].mac.unwrap()), "aa:bb:cc:dd:ee:07");
    }
}
