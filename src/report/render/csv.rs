//! One table for a spreadsheet: a `section` column, then the same columns for every row, so
//! a coordinator can filter by section.

use crate::report::{Device, Report};

const HEADER: [&str; 11] = [
    "section",
    "rank",
    "time",
    "client",
    "client_name",
    "group",
    "name",
    "category",
    "action",
    "count",
    "detail",
];

#[derive(Default)]
struct Row<'a> {
    section: &'a str,
    rank: usize,
    time: &'a str,
    client: Option<&'a Device>,
    group: &'a str,
    name: &'a str,
    category: &'a str,
    action: &'a str,
    count: Option<u64>,
    detail: String,
}

pub(super) fn render(r: &Report) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(HEADER);
    let mut put = |row: Row| {
        let rank = if row.rank > 0 {
            row.rank.to_string()
        } else {
            String::new()
        };
        let count = row.count.map(|c| c.to_string()).unwrap_or_default();
        let _ = w.write_record([
            row.section,
            &rank,
            row.time,
            row.client.map_or("", |c| c.addr.as_str()),
            row.client.and_then(|c| c.name.as_deref()).unwrap_or(""),
            row.group,
            row.name,
            row.category,
            row.action,
            &count,
            &row.detail,
        ]);
    };
    for i in &r.serious {
        for (section, attempts) in [("serious", &i.attempts), ("serious_later", &i.later)] {
            for a in attempts {
                put(Row {
                    section,
                    time: &a.time,
                    client: Some(&i.client),
                    group: &i.group,
                    name: &a.name,
                    category: a.category.as_deref().unwrap_or(""),
                    action: &a.action,
                    ..Row::default()
                });
            }
        }
    }
    for (n, c) in r.by_category.iter().enumerate() {
        put(Row {
            section: "category",
            rank: n + 1,
            category: &c.category,
            count: Some(c.attempts),
            detail: format!("{} devices", c.clients),
            ..Row::default()
        });
    }
    for (n, c) in r.by_client.iter().enumerate() {
        put(Row {
            section: "client",
            rank: n + 1,
            client: Some(&c.client),
            group: &c.group,
            category: &c.top_category,
            count: Some(c.attempts),
            detail: if c.repeated {
                "repeated".into()
            } else {
                String::new()
            },
            ..Row::default()
        });
    }
    let hours: Vec<String> = (0..24).map(|h| format!("{h:02}:00")).collect();
    for (h, n) in r.by_hour.iter().enumerate() {
        put(Row {
            section: "hour",
            time: &hours[h],
            count: Some(*n),
            ..Row::default()
        });
    }
    for (n, x) in r.top_names.iter().enumerate() {
        put(Row {
            section: "name",
            rank: n + 1,
            name: &x.name,
            category: &x.category,
            count: Some(x.attempts),
            detail: format!("{} devices", x.clients),
            ..Row::default()
        });
    }
    for x in &r.repeated {
        put(Row {
            section: "repeated",
            client: Some(&x.client),
            category: &x.category,
            count: Some(x.attempts),
            ..Row::default()
        });
    }
    for c in &r.circumvention {
        put(Row {
            section: "circumvention",
            time: &c.first,
            client: Some(&c.client),
            name: &c.name,
            count: Some(c.attempts),
            ..Row::default()
        });
    }
    for (section, list) in [("change", &r.changes), ("exemption", &r.exemptions)] {
        for c in list {
            put(Row {
                section,
                time: &c.time,
                name: &c.target,
                action: &c.by,
                detail: format!(
                    "{}added: {}; removed: {}; reason: {}",
                    if c.action.is_empty() {
                        String::new()
                    } else {
                        format!("{}; ", c.action)
                    },
                    super::text::names(&c.added, c.added_count),
                    super::text::names(&c.removed, c.removed_count),
                    c.reason
                ),
                ..Row::default()
            });
        }
    }
    for p in &r.problems {
        put(Row {
            section: "problem",
            time: &p.time,
            client: p.client.as_ref(),
            action: &p.kind,
            count: Some(p.count),
            detail: p.detail.clone().unwrap_or_default(),
            ..Row::default()
        });
    }
    put(Row {
        section: "change_log",
        name: &r.change_log.last_link,
        count: Some(r.change_log.records as u64),
        detail: r.change_log.summary(),
        ..Row::default()
    });
    let bytes = w.into_inner().unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_default()
}
