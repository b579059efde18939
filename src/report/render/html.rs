//! One self-contained page for the email: inline CSS, inline SVG charts, no scripts, no
//! external assets, readable on a phone (tables scroll sideways, charts scale).

use std::fmt::Write;

use super::{clock, headline};
use crate::report::Report;

const STYLE: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:12px;color:#1b1b1b;background:#fff;line-height:1.4}\
main{max-width:860px;margin:auto}h1{font-size:1.35em;margin:.2em 0}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:2px solid #ddd;padding-bottom:.2em}\
.serious h2{color:#a50e0e;border-color:#a50e0e}.incident{border-left:4px solid #a50e0e;padding:4px 10px;margin:8px 0;background:#fdf3f3}\
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.92em}th,td{text-align:left;padding:4px 6px;border-bottom:1px solid #eee;white-space:nowrap}\
td.n,th.n{text-align:right}.flag{color:#a50e0e;font-weight:600}.muted{color:#666}svg{width:100%;height:auto;max-width:860px}\
.totals{display:flex;flex-wrap:wrap;gap:8px}.totals div{background:#f2f4f7;padding:6px 10px;border-radius:6px}";

pub(super) fn render(r: &Report) -> String {
    let mut o = String::with_capacity(32 * 1024);
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{}</title><style>{STYLE}</style></head><body><main>",
        esc(&headline(r))
    );
    let _ = write!(
        o,
        "<h1>{} &middot; filtering summary</h1><p class=\"muted\">{}{}</p>",
        esc(&r.school),
        esc(&r.date),
        if r.anonymised {
            " &middot; devices shown by pseudonym"
        } else {
            ""
        }
    );
    let t = &r.totals;
    let _ = write!(
        o,
        "<div class=\"totals\"><div><b>{}</b> serious alerts</div><div><b>{}</b> blocked</div>\
<div><b>{}</b> devices blocked</div><div><b>{}</b> queries</div><div><b>{}</b> devices</div></div>",
        t.serious_attempts, t.breaches, t.breach_clients, t.queries, t.clients
    );

    o.push_str("<section class=\"serious\"><h2>Serious alerts</h2>");
    if r.serious.is_empty() {
        o.push_str("<p>None.</p>");
    }
    for i in &r.serious {
        let _ = write!(
            o,
            "<div class=\"incident\"><p><b>{}</b> <span class=\"muted\">({})</span></p><div class=\"scroll\"><table>\
<tr><th>Time</th><th>Name</th><th>Category</th></tr>",
            esc(&i.client.to_string()),
            esc(&i.group)
        );
        for a in &i.attempts {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td class=\"flag\">{}</td></tr>",
                esc(clock(&a.time)),
                esc(&a.name),
                esc(a.category.as_deref().unwrap_or(""))
            );
        }
        o.push_str("</table></div>");
        if i.attempts_more > 0 {
            let _ = write!(
                o,
                "<p>... and {} more serious attempts</p>",
                i.attempts_more
            );
        }
        if !i.later.is_empty() {
            o.push_str("<p>Blocked later that day:</p><div class=\"scroll\"><table><tr><th>Time</th><th>Name</th><th>Category</th></tr>");
            for a in &i.later {
                let _ = write!(
                    o,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(clock(&a.time)),
                    esc(&a.name),
                    esc(a.category.as_deref().unwrap_or(""))
                );
            }
            o.push_str("</table></div>");
            if i.later_more > 0 {
                let _ = write!(o, "<p>... and {} more</p>", i.later_more);
            }
        }
        let _ = write!(
            o,
            "<p class=\"muted\">{} queries in all after the first attempt.</p>",
            i.later_queries
        );
        o.push_str("</div>");
    }
    o.push_str("</section>");

    o.push_str("<h2>Blocked by hour</h2>");
    hour_chart(&mut o, &r.by_hour);

    o.push_str("<h2>Blocked by category</h2>");
    category_chart(&mut o, r);
    table(
        &mut o,
        &["Category", "Attempts", "Devices"],
        r.by_category.iter().map(|c| {
            vec![
                if c.serious {
                    format!("<span class=\"flag\">{}</span>", esc(&c.category))
                } else {
                    esc(&c.category)
                },
                c.attempts.to_string(),
                c.clients.to_string(),
            ]
        }),
    );

    o.push_str("<h2>Blocked by device</h2>");
    table(
        &mut o,
        &["#", "Device", "Group", "Attempts", "Mostly", ""],
        r.by_client.iter().enumerate().map(|(n, c)| {
            vec![
                (n + 1).to_string(),
                esc(&c.client.to_string()),
                esc(&c.group),
                c.attempts.to_string(),
                esc(&c.top_category),
                if c.repeated {
                    "<span class=\"flag\">repeated</span>".into()
                } else {
                    String::new()
                },
            ]
        }),
    );

    o.push_str("<h2>Most blocked names</h2>");
    table(
        &mut o,
        &["Name", "Category", "Attempts", "Devices"],
        r.top_names.iter().map(|n| {
            vec![
                esc(&n.name),
                esc(&n.category),
                n.attempts.to_string(),
                n.clients.to_string(),
            ]
        }),
    );

    o.push_str("<h2>Repeated attempts</h2>");
    table(
        &mut o,
        &["Device", "Category", "Attempts"],
        r.repeated.iter().map(|x| {
            vec![
                esc(&x.client.to_string()),
                esc(&x.category),
                x.attempts.to_string(),
            ]
        }),
    );

    o.push_str("<h2>Circumvention attempts</h2><p class=\"muted\">Encrypted DNS, VPNs and proxies that would bypass the filter.</p>");
    table(
        &mut o,
        &["First", "Device", "Name", "Attempts"],
        r.circumvention.iter().map(|c| {
            vec![
                esc(clock(&c.first)),
                esc(&c.client.to_string()),
                esc(&c.name),
                c.attempts.to_string(),
            ]
        }),
    );

    o.push_str("<h2>Filtering changes</h2>");
    changes(&mut o, &r.changes);
    o.push_str("<h2>Exemptions</h2>");
    changes(&mut o, &r.exemptions);
    o.push_str("<h2>Change-control log</h2><p>");
    o.push_str(&esc(&r.change_log.summary()));
    o.push_str("</p>");

    o.push_str("<h2>Logging and server problems</h2>");
    table(
        &mut o,
        &["Time", "Kind", "Count", "Device", "Detail"],
        r.problems.iter().map(|p| {
            vec![
                esc(clock(&p.time)),
                esc(&p.kind),
                p.count.to_string(),
                p.client
                    .as_ref()
                    .map(|c| esc(&c.to_string()))
                    .unwrap_or_default(),
                esc(p.detail.as_deref().unwrap_or("")),
            ]
        }),
    );
    o.push_str("<p class=\"muted\">Sent by schoolgate.</p></main></body></html>\n");
    o
}

fn changes(o: &mut String, list: &[crate::report::Change]) {
    table(
        o,
        &["Time", "By", "Applies to", "Added", "Removed", "Reason"],
        list.iter().map(|c| {
            vec![
                esc(clock(&c.time)),
                if c.action.is_empty() {
                    esc(&c.by)
                } else {
                    format!("{} ({})", esc(&c.by), esc(&c.action))
                },
                esc(&c.target),
                esc(&super::text::names(&c.added, c.added_count)),
                esc(&super::text::names(&c.removed, c.removed_count)),
                esc(&c.reason),
            ]
        }),
    );
}

/// A table whose cells are already escaped HTML.
fn table(o: &mut String, head: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let mut body = String::new();
    for row in rows {
        body.push_str("<tr>");
        for cell in row {
            let numeric = !cell.is_empty() && cell.bytes().all(|b| b.is_ascii_digit());
            let _ = write!(
                body,
                "<td{}>{cell}</td>",
                if numeric { " class=\"n\"" } else { "" }
            );
        }
        body.push_str("</tr>");
    }
    if body.is_empty() {
        o.push_str("<p>None.</p>");
        return;
    }
    o.push_str("<div class=\"scroll\"><table><tr>");
    for h in head {
        let _ = write!(o, "<th>{}</th>", esc(h));
    }
    o.push_str("</tr>");
    o.push_str(&body);
    o.push_str("</table></div>");
}

/// Vertical bars, one per hour.
fn hour_chart(o: &mut String, hours: &[u64]) {
    let max = hours.iter().copied().max().unwrap_or(0).max(1);
    let (w, h, bar) = (720.0, 160.0, 30.0);
    let _ = write!(
        o,
        "<svg viewBox=\"0 0 {w} {}\" role=\"img\" aria-label=\"Blocked queries by hour\" xmlns=\"http://www.w3.org/2000/svg\">",
        h + 36.0
    );
    for (i, n) in hours.iter().enumerate() {
        let x = i as f64 * bar;
        let bh = (*n as f64 / max as f64) * h;
        let _ = write!(
            o,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#3a6ea5\"><title>{i:02}:00 {n}</title></rect>",
            x + 3.0,
            14.0 + h - bh,
            bar - 6.0,
            bh
        );
        if *n > 0 {
            let _ = write!(
                o,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\">{n}</text>",
                x + bar / 2.0,
                12.0 + h - bh
            );
        }
        if i % 3 == 0 {
            let _ = write!(
                o,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#555\">{i:02}</text>",
                x + bar / 2.0,
                h + 30.0
            );
        }
    }
    o.push_str("</svg>");
}

/// Horizontal bars, one per category, serious ones in red.
fn category_chart(o: &mut String, r: &Report) {
    if r.by_category.is_empty() {
        return;
    }
    let max = r
        .by_category
        .iter()
        .map(|c| c.attempts)
        .max()
        .unwrap_or(1)
        .max(1);
    let row = 22.0;
    let label = 150.0;
    let width = 720.0;
    let _ = write!(
        o,
        "<svg viewBox=\"0 0 {width} {:.0}\" role=\"img\" aria-label=\"Blocked queries by category\" xmlns=\"http://www.w3.org/2000/svg\">",
        r.by_category.len() as f64 * row + 4.0
    );
    for (i, c) in r.by_category.iter().enumerate() {
        let y = i as f64 * row;
        let bw = (c.attempts as f64 / max as f64) * (width - label - 70.0);
        let colour = if c.serious { "#a50e0e" } else { "#3a6ea5" };
        let _ = write!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"end\">{}</text>\
<rect x=\"{label}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>",
            label - 6.0,
            y + 15.0,
            esc(&c.category),
            y + 4.0,
            row - 6.0,
            label + bw + 4.0,
            y + 15.0,
            c.attempts
        );
    }
    o.push_str("</svg>");
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
