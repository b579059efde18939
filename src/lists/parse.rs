//! Reading list files in the formats schools are handed: plain domains, hosts files, adblock
//! rules, wildcards and RPZ zones, mixed line by line.
//!
//! A bad line never sinks the file: it is reported with its file and line and skipped, so one
//! typo in a thousand-line list costs one entry, not the category.

use std::path::{Path, PathBuf};

use crate::domain::normalise;

/// Lines longer than this are refused rather than parsed; no real list needs them.
const MAX_LINE: usize = 4096;
/// Bad lines kept verbatim for the report; the rest are only counted.
const MAX_REPORTED: usize = 50;

/// What a line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Block this name and everything below it.
    Block,
    /// Exempt this name and everything below it (adblock `@@`, RPZ `rpz-passthru.`).
    Allow,
}

/// One usable line of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Normalised presentation name.
    pub name: String,
    /// 1-based line number in its file.
    pub line: u32,
    /// Block or allow.
    pub kind: EntryKind,
}

/// A keyword rule line (`keyword:` prefix), handed to the keyword compiler.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeywordLine {
    /// The rule text after the prefix.
    pub text: String,
    /// 1-based line number.
    pub line: u32,
}

/// A line that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BadLine {
    /// The file it came from.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: u32,
    /// Why it was skipped.
    pub reason: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// Everything read from one file.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Usable entries in file order.
    pub entries: Vec<Entry>,
    /// Keyword rules found in the file.
    pub keywords: Vec<KeywordLine>,
    /// The first bad lines, for the report.
    pub bad: Vec<BadLine>,
    /// How many bad lines there were in all.
    pub bad_count: usize,
}

impl Parsed {
    fn reject(&mut self, file: &Path, line: u32, reason: impl Into<String>) {
        self.bad_count += 1;
        if self.bad.len() < MAX_REPORTED {
            self.bad.push(BadLine {
                file: file.to_path_buf(),
                line,
                reason: reason.into(),
            });
        }
    }
}

/// Parses list text. `file` is used only to name bad lines.
pub fn parse(file: &Path, bytes: &[u8]) -> Parsed {
    let mut entries = Vec::new();
    let mut out = parse_each(file, bytes, |e| entries.push(e));
    out.entries = entries;
    out
}

/// As [`parse`], handing each entry to `each` as it is read instead of collecting them, so a
/// list of millions of names is never held as millions of `String`s (the returned
/// [`Parsed::entries`] is empty).
pub fn parse_each(file: &Path, bytes: &[u8], mut each: impl FnMut(Entry)) -> Parsed {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out = Parsed::default();
    let mut zone = Zone::default();
    for (idx, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_no = u32::try_from(idx + 1).unwrap_or(u32::MAX);
        if raw.len() > MAX_LINE {
            out.reject(file, line_no, format!("line longer than {MAX_LINE} bytes"));
            continue;
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            out.reject(file, line_no, "not valid UTF-8");
            continue;
        };
        let text = text.trim_end_matches('\r').trim();
        if text.is_empty()
            || text.starts_with('#')
            || text.starts_with('!')
            || text.starts_with(';')
        {
            continue;
        }
        if let Some(rule) = text.strip_prefix("keyword:") {
            out.keywords.push(KeywordLine {
                text: rule.trim().to_string(),
                line: line_no,
            });
            continue;
        }
        parse_line(file, line_no, text, &mut zone, &mut out);
        out.entries.drain(..).for_each(&mut each);
    }
    out
}

/// Parses a `<category>.keywords` file: every line is a keyword rule (the `keyword:` prefix is
/// optional there), so a word such as `porn` is never mistaken for a single-label domain.
pub fn parse_keywords(file: &Path, bytes: &[u8]) -> Parsed {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out = Parsed::default();
    for (idx, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = u32::try_from(idx + 1).unwrap_or(u32::MAX);
        if raw.len() > MAX_LINE {
            out.reject(file, line, format!("line longer than {MAX_LINE} bytes"));
            continue;
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            out.reject(file, line, "not valid UTF-8");
            continue;
        };
        let text = text.trim_end_matches('\r').trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let rule = text.strip_prefix("keyword:").unwrap_or(text).trim();
        out.keywords.push(KeywordLine {
            text: rule.to_string(),
            line,
        });
    }
    out
}

/// What a zone file's directives have said so far.
#[derive(Default)]
struct Zone {
    /// `$ORIGIN`, lower case, no trailing dot.
    origin: Option<String>,
    /// A directive or SOA was seen: record lines are expected from here on.
    active: bool,
}

fn parse_line(file: &Path, line: u32, text: &str, zone: &mut Zone, out: &mut Parsed) {
    // Inline comments after a name (`example.com # why`, or after a tab in hosts files).
    let text = inline_comment_start(text)
        .map_or(text, |i| &text[..i])
        .trim();
    let push = |name: &str, kind: EntryKind, out: &mut Parsed| match normalise(name) {
        Ok(name) => out.entries.push(Entry { name, line, kind }),
        Err(e) => out.reject(file, line, e.to_string()),
    };

    if let Some(rest) = text.strip_prefix("@@") {
        match adblock_domain(rest) {
            Some(name) => push(name, EntryKind::Allow, out),
            None => out.reject(
                file,
                line,
                "unsupported adblock exception (only @@||domain^)",
            ),
        }
        return;
    }
    if text.starts_with("||") || text.starts_with('|') {
        match adblock_domain(text) {
            Some(name) => push(name, EntryKind::Block, out),
            None => out.reject(file, line, "unsupported adblock rule (only ||domain^)"),
        }
        return;
    }
    if text.starts_with('$') {
        rpz_directive(file, line, text, zone, out);
        return;
    }

    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields.as_slice() {
        [single] => {
            let name = single.strip_prefix("*.").unwrap_or(single);
            push(name, EntryKind::Block, out);
        }
        [addr, names @ ..] if addr.parse::<std::net::IpAddr>().is_ok() => {
            for name in names {
                if !is_hosts_boilerplate(name) {
                    push(name, EntryKind::Block, out);
                }
            }
        }
        [first, ..] if zone.active && rpz_type_at(&fields, 0).is_some() && is_type(first) => {}
        _ if rpz_type_at(&fields, 1).is_some() => {
            zone.active |=
                rpz_type_at(&fields, 1).is_some_and(|t| fields[t].eq_ignore_ascii_case("SOA"));
            if zone.active || fields.iter().any(|f| f.eq_ignore_ascii_case("CNAME")) {
                rpz_record(file, line, &fields, zone.origin.as_deref(), out)
            } else {
                out.reject(
                    file,
                    line,
                    "not a domain, hosts line, adblock rule or RPZ record",
                )
            }
        }
        _ => out.reject(
            file,
            line,
            "not a domain, hosts line, adblock rule or RPZ record",
        ),
    }
}

/// Where a `#` that follows whitespace starts; a `#` inside a token is not a comment.
fn inline_comment_start(text: &str) -> Option<usize> {
    text.char_indices()
        .zip(text.chars().skip(1))
        .find(|((_, c), next)| c.is_whitespace() && *next == '#')
        .map(|((i, _), _)| i)
}

fn adblock_domain(rule: &str) -> Option<&str> {
    let body = rule.strip_prefix("||")?;
    let body = body.strip_suffix("^$important").unwrap_or(body);
    let body = body.strip_suffix('^').unwrap_or(body);
    let body = body.strip_prefix("*.").unwrap_or(body);
    (!body.is_empty() && !body.contains(['/', '*', '$', '^'])).then_some(body)
}

fn is_hosts_boilerplate(name: &str) -> bool {
    matches!(
        name,
        "localhost" | "localhost.localdomain" | "local" | "broadcasthost" | "0.0.0.0"
    ) || name.starts_with("ip6-")
}

fn is_type(field: &str) -> bool {
    matches!(
        field.to_ascii_uppercase().as_str(),
        "CNAME" | "SOA" | "NS" | "A" | "AAAA" | "TXT"
    )
}

/// Position of the record type in `owner [ttl] [class] TYPE rdata`, if the line has that shape.
fn rpz_type_at(fields: &[&str], from: usize) -> Option<usize> {
    let mut i = from;
    while i < fields.len() && i <= 3 {
        let f = fields[i].to_ascii_uppercase();
        if is_type(&f) {
            return Some(i);
        }
        if !(f == "IN" || f.bytes().all(|b| b.is_ascii_digit())) {
            return None;
        }
        i += 1;
    }
    None
}

fn rpz_directive(file: &Path, line: u32, text: &str, zone: &mut Zone, out: &mut Parsed) {
    zone.active = true;
    let mut it = text.split_whitespace();
    match (it.next().map(str::to_ascii_uppercase).as_deref(), it.next()) {
        (Some("$ORIGIN"), Some(o)) => {
            zone.origin = Some(o.trim_end_matches('.').to_ascii_lowercase());
        }
        (Some("$TTL"), _) => {}
        _ => out.reject(file, line, "unsupported zone-file directive"),
    }
}

/// RPZ: `owner [ttl] [class] TYPE rdata`; owners are relative to the zone unless they end in a dot.
fn rpz_record(file: &Path, line: u32, fields: &[&str], origin: Option<&str>, out: &mut Parsed) {
    let Some(type_at) = rpz_type_at(fields, 1) else {
        return;
    };
    let rtype = fields[type_at].to_ascii_uppercase();
    if rtype != "CNAME" {
        // SOA, NS and local-data records describe the zone, not a policy we enforce.
        return;
    }
    let owner = fields[0];
    let target = fields.get(type_at + 1).copied().unwrap_or("");
    let kind = match target {
        "." | "*." => EntryKind::Block,
        "rpz-passthru." => EntryKind::Allow,
        _ => {
            out.reject(
                file,
                line,
                "unsupported RPZ action (only CNAME ., CNAME *. and rpz-passthru.)",
            );
            return;
        }
    };
    let owner = owner.strip_prefix("*.").unwrap_or(owner);
    let name = if let Some(abs) = owner.strip_suffix('.') {
        match origin {
            Some(o) => abs
                .to_ascii_lowercase()
                .strip_suffix(&format!(".{o}"))
                .map(str::to_string)
                .unwrap_or_else(|| abs.to_string()),
            None => abs.to_string(),
        }
    } else {
        owner.to_string()
    };
    match normalise(&name) {
        Ok(name) => out.entries.push(Entry { name, line, kind }),
        Err(e) => out.reject(file, line, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &Parsed) -> Vec<(&str, EntryKind, u32)> {
        p.entries
            .iter()
            .map(|e| (e.name.as_str(), e.kind, e.line))
            .collect()
    }

    #[test]
    fn mixed_formats() {
        let text = "\u{feff}# comment\r\nExample.COM\r\n0.0.0.0 ads.example.net\n127.0.0.1 a.test b.test localhost\n||track.example.org^\n@@||good.example.org^\n*.wild.example\n! adblock comment\n\nbücher.de\nkeyword:porn\nnot a domain at all\n";
        let p = parse(Path::new("t.txt"), text.as_bytes());
        assert_eq!(
            names(&p),
            vec![
                ("example.com", EntryKind::Block, 2),
                ("ads.example.net", EntryKind::Block, 3),
                ("a.test", EntryKind::Block, 4),
                ("b.test", EntryKind::Block, 4),
                ("track.example.org", EntryKind::Block, 5),
                ("good.example.org", EntryKind::Allow, 6),
                ("wild.example", EntryKind::Block, 7),
                ("xn--bcher-kva.de", EntryKind::Block, 10),
            ]
        );
        assert_eq!(
            p.keywords,
            vec![KeywordLine {
                text: "porn".into(),
                line: 11
            }]
        );
        assert_eq!(p.bad_count, 1);
        assert_eq!(p.bad[0].line, 12);
        assert!(p.bad[0].to_string().starts_with("t.txt:12:"));
    }

    #[test]
    fn keywords_file_is_all_rules() {
        let text = "# adult keywords\nporn\nkeyword:=xxx\n\nsex except=essex\n";
        let p = parse_keywords(Path::new("adult.keywords"), text.as_bytes());
        assert!(p.entries.is_empty());
        let rules: Vec<(&str, u32)> = p
            .keywords
            .iter()
            .map(|k| (k.text.as_str(), k.line))
            .collect();
        assert_eq!(
            rules,
            vec![("porn", 2), ("=xxx", 3), ("sex except=essex", 5)]
        );
    }

    #[test]
    fn rpz_zone() {
        let text = "$TTL 300\n$ORIGIN rpz.school.\n@ SOA localhost. root.localhost. 1 3600 600 86400 300\n NS localhost.\nbad.example CNAME .\n*.bad.example CNAME .\nworse.example.rpz.school. 300 IN CNAME *.\nok.example CNAME rpz-passthru.\nredirect.example CNAME walled.garden.\n";
        let p = parse(Path::new("z.rpz"), text.as_bytes());
        assert_eq!(
            names(&p),
            vec![
                ("bad.example", EntryKind::Block, 5),
                ("bad.example", EntryKind::Block, 6),
                ("worse.example", EntryKind::Block, 7),
                ("ok.example", EntryKind::Allow, 8),
            ]
        );
        assert_eq!(p.bad_count, 1);
    }

    #[test]
    fn hosts_variants_ipv6_tabs_inline_comments_and_idn() {
        let text = "::1\tlocalhost ip6-localhost\n:: v6.example\n0.0.0.0\tTabbed.Example.\t# ads\n127.0.0.1 a.test b.test c.test # three\n||*.sub.example^$important\n||пример.рф^\n@@||Straße.de^\n||example.com/path^\n";
        let p = parse(Path::new("hosts"), text.as_bytes());
        assert_eq!(
            names(&p),
            vec![
                ("v6.example", EntryKind::Block, 2),
                ("tabbed.example", EntryKind::Block, 3),
                ("a.test", EntryKind::Block, 4),
                ("b.test", EntryKind::Block, 4),
                ("c.test", EntryKind::Block, 4),
                ("sub.example", EntryKind::Block, 5),
                ("xn--e1afmkfd.xn--p1ai", EntryKind::Block, 6),
                ("xn--strae-oqa.de", EntryKind::Allow, 7),
            ]
        );
        assert_eq!(p.bad_count, 1);
        assert_eq!(
            p.bad[0].to_string(),
            "hosts:8: unsupported adblock rule (only ||domain^)"
        );
    }

    #[test]
    fn rpz_with_crlf_bom_and_absolute_owners() {
        let text = "\u{feff}$ORIGIN rpz.example.\r\n@ 3600 IN SOA ns. admin. 1 1 1 1 1\r\nads.example CNAME .\r\n*.ads.example CNAME *.\r\nother.zone. CNAME .\r\n; comment\r\n";
        let p = parse(Path::new("z"), text.as_bytes());
        assert_eq!(
            names(&p),
            vec![
                ("ads.example", EntryKind::Block, 3),
                ("ads.example", EntryKind::Block, 4),
                ("other.zone", EntryKind::Block, 5),
            ]
        );
        assert_eq!(p.bad_count, 0);
    }

    #[test]
    fn hostile_lines_are_reported_not_fatal() {
        let mut bytes = b"good.example\n".to_vec();
        bytes.extend(vec![b'a'; 10_000]);
        bytes.extend(b"\n\xff\xfe.example\n");
        bytes.extend(format!("{}.example\n", "a".repeat(300)).as_bytes());
        let p = parse(Path::new("h.txt"), &bytes);
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.bad_count, 3);
    }
}
