//! JSON for machines: the [`Report`] as it is, pretty-printed.

use crate::report::Report;

pub(super) fn render(report: &Report) -> String {
    let mut s = serde_json::to_string_pretty(report).expect("a report always serialises");
    s.push('\n');
    s
}
