//! The report's formats. Each draws from the same [`Report`], in the same order: serious
//! alerts first.

mod csv;
mod html;
mod json;
mod text;

use super::Report;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// For a terminal.
    Text,
    /// One self-contained page, readable on a phone.
    Html,
    /// For a spreadsheet.
    Csv,
    /// For machines.
    Json,
}

/// Renders a report.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Text => text::render(report),
        Format::Html => html::render(report),
        Format::Csv => csv::render(report),
        Format::Json => json::render(report),
    }
}

/// A one-line summary, for a subject line.
pub fn headline(report: &Report) -> String {
    format!(
        "{} filtering summary for {}: {} serious alert{}, {} blocked",
        report.school,
        report.date,
        report.totals.serious_attempts,
        if report.totals.serious_attempts == 1 {
            ""
        } else {
            "s"
        },
        report.totals.breaches
    )
}

/// `09:41:07` from an RFC 3339 local time; the date is the report's.
fn clock(time: &str) -> &str {
    time.get(11..19).unwrap_or(time)
}
