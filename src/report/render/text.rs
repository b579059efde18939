//! Plain text for a terminal and for the text part of the email.

use std::fmt::Write;

use super::{clock, headline};
use crate::report::Report;

pub(super) fn render(r: &Report) -> String {
    let mut o = String::new();
    let t = &r.totals;
    let _ = writeln!(o, "{}", headline(r));
    if r.anonymised {
        let _ = writeln!(o, "Devices are shown by pseudonym.");
    }
    let _ = writeln!(
        o,
        "{} queries from {} devices; {} blocked from {} devices.\n",
        t.queries, t.clients, t.breaches, t.breach_clients
    );

    section(&mut o, "SERIOUS ALERTS (locked and alert categories)");
    if r.serious.is_empty() {
        let _ = writeln!(o, "  None.");
    }
    for i in &r.serious {
        let _ = writeln!(o, "  {} [{}]", i.client, i.group);
        for a in &i.attempts {
            let _ = writeln!(
                o,
                "    {}  {:<40} {}",
                clock(&a.time),
                a.name,
                a.category.as_deref().unwrap_or("")
            );
        }
        if i.attempts_more > 0 {
            let _ = writeln!(o, "    ... and {} more serious attempts", i.attempts_more);
        }
        if !i.later.is_empty() {
            let _ = writeln!(o, "    blocked later that day:");
            for a in &i.later {
                let _ = writeln!(
                    o,
                    "      {}  {:<38} {}",
                    clock(&a.time),
                    a.name,
                    a.category.as_deref().unwrap_or("")
                );
            }
            if i.later_more > 0 {
                let _ = writeln!(o, "      ... and {} more", i.later_more);
            }
        }
        let _ = writeln!(
            o,
            "    {} queries in all after the first attempt{}",
            i.later_queries,
            if r.anonymised {
                String::new()
            } else {
                format!(" (schoolgate logs --client {})", i.client.addr)
            }
        );
    }

    section(&mut o, "BLOCKED BY CATEGORY");
    for c in &r.by_category {
        let _ = writeln!(
            o,
            "  {:<20} {:>8} attempts {:>5} devices{}",
            c.category,
            c.attempts,
            c.clients,
            if c.serious { "  (serious)" } else { "" }
        );
    }

    section(&mut o, "BLOCKED BY DEVICE");
    for (n, c) in r.by_client.iter().enumerate() {
        let _ = writeln!(
            o,
            "  {:>2}. {:<36} {:<10} {:>7}  mostly {}{}",
            n + 1,
            c.client.to_string(),
            c.group,
            c.attempts,
            c.top_category,
            if c.repeated { "  REPEATED" } else { "" }
        );
    }

    section(&mut o, "BLOCKED BY HOUR");
    let max = r.by_hour.iter().copied().max().unwrap_or(0).max(1);
    for (h, n) in r.by_hour.iter().enumerate() {
        if *n > 0 {
            let bar = "#".repeat(((n * 40).div_ceil(max)) as usize);
            let _ = writeln!(o, "  {h:02}:00 {n:>8} {bar}");
        }
    }

    section(&mut o, "MOST BLOCKED NAMES");
    for n in &r.top_names {
        let _ = writeln!(
            o,
            "  {:<40} {:<16} {:>7} attempts {:>4} devices",
            n.name, n.category, n.attempts, n.clients
        );
    }

    section(&mut o, "REPEATED ATTEMPTS");
    if r.repeated.is_empty() {
        let _ = writeln!(o, "  None.");
    }
    for x in &r.repeated {
        let _ = writeln!(
            o,
            "  {} tried {} {} times",
            x.client, x.category, x.attempts
        );
    }

    section(&mut o, "CIRCUMVENTION ATTEMPTS (encrypted DNS, VPN, proxy)");
    if r.circumvention.is_empty() {
        let _ = writeln!(o, "  None.");
    }
    for c in &r.circumvention {
        let _ = writeln!(
            o,
            "  {}  {} -> {} ({} attempts)",
            clock(&c.first),
            c.client,
            c.name,
            c.attempts
        );
    }

    section(&mut o, "FILTERING CHANGES");
    if r.changes.is_empty() {
        let _ = writeln!(o, "  None.");
    }
    for c in &r.changes {
        let _ = writeln!(o, "  {}  {} changed {}", clock(&c.time), c.by, c.target);
        if c.added_count > 0 {
            let _ = writeln!(o, "    added: {}", names(&c.added, c.added_count));
        }
        if c.removed_count > 0 {
            let _ = writeln!(o, "    removed: {}", names(&c.removed, c.removed_count));
        }
        if !c.reason.is_empty() {
            let _ = writeln!(o, "    reason: {}", c.reason);
        }
    }
    section(&mut o, "CHANGE-CONTROL LOG");
    let _ = writeln!(o, "  {}", r.change_log.summary());
    section(&mut o, "EXEMPTIONS");
    if r.exemptions.is_empty() {
        let _ = writeln!(o, "  None.");
    }
    for e in &r.exemptions {
        let _ = writeln!(
            o,
            "  {}  {} {} {}: {}{}",
            clock(&e.time),
            e.by,
            if e.action.is_empty() {
                "exempted"
            } else {
                &e.action
            },
            e.target,
            e.added.join(", "),
            if e.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", e.reason)
            }
        );
    }

    section(&mut o, "LOGGING AND SERVER PROBLEMS");
    if r.problems.is_empty() {
        let _ = writeln!(o, "  None.");
    }
    for p in &r.problems {
        let _ = write!(o, "  {}  {} x{}", clock(&p.time), p.kind, p.count);
        if let Some(c) = &p.client {
            let _ = write!(o, " {c}");
        }
        if let Some(d) = &p.detail {
            let _ = write!(o, ": {d}");
        }
        o.push('\n');
    }
    o
}

/// Names, with how many more there are.
pub(super) fn names(shown: &[String], count: u64) -> String {
    let mut s = shown.join(", ");
    if count > shown.len() as u64 {
        let _ = write!(s, " ... ({count} in all)");
    }
    s
}

fn section(o: &mut String, title: &str) {
    let _ = writeln!(o, "\n{title}");
}
