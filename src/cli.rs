//! Command-line definitions. Each subcommand is one thing a technician or coordinator does.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A filtering DNS resolver for schools.
#[derive(Parser)]
#[command(name = "schoolgate", version, about)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "SCHOOLGATE_CONFIG",
        default_value = "config/schoolgate.toml"
    )]
    pub config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Answer DNS queries, filtering by the configured lists.
    Serve(ServeArgs),
    /// Explain what would happen to a name, without a server.
    Check(CheckArgs),
    /// Compile the lists ahead of time (serve does this itself when they change).
    Compile(CompileArgs),
    /// Lift filtering for one client, agreed by an approver (Headteacher, E-Safety Coordinator).
    #[command(subcommand)]
    Exempt(ExemptCommand),
    /// Show or edit a category's list (a running server picks edits up by itself).
    #[command(subcommand)]
    List(ListCommand),
    /// Add names to the allow list (same as `list add allow`).
    Allow(AllowArgs),
    /// Show the change-control log: every change to filtering, who made it and why.
    Changes(ChangesArgs),
    /// Summaries for the e-safety coordinator and governors.
    #[command(subcommand)]
    Report(ReportCommand),
    /// One device's timeline from the access or breach logs.
    Logs(LogsArgs),
}

/// `list` subcommands.
#[derive(Subcommand)]
pub enum ListCommand {
    /// Block names in a category (or allow them: category `allow`).
    Add(ListEditArgs),
    /// Remove names from a category's list files.
    Remove(ListEditArgs),
    /// Print a category's entries with the file and line of each.
    Show {
        /// The category (or `allow`).
        category: String,
    },
}

/// Who is changing filtering, and why: both go to the change-control log.
#[derive(Args)]
pub struct Author {
    /// Who is making the change (recorded in the change-control log).
    #[arg(long, value_name = "NAME")]
    pub by: String,
    /// Why (recorded in the change-control log).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

/// Options for `list add` and `list remove`.
#[derive(Args)]
pub struct ListEditArgs {
    /// The category (or `allow`).
    pub category: String,
    /// The names.
    #[arg(required = true, value_name = "DOMAIN")]
    pub domains: Vec<String>,
    /// Who and why.
    #[command(flatten)]
    pub author: Author,
}

/// Options for `allow`.
#[derive(Args)]
pub struct AllowArgs {
    /// The names to allow.
    #[arg(required = true, value_name = "DOMAIN")]
    pub domains: Vec<String>,
    /// Who and why.
    #[command(flatten)]
    pub author: Author,
}

/// Options for `changes`.
#[derive(Args)]
pub struct ChangesArgs {
    /// Only changes on or after this date (`2026-11-26`, local time) or instant (RFC 3339).
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// One JSON object per line, as stored.
    #[arg(long)]
    pub json: bool,
    /// Compare the list files and filtering settings with their last snapshots and record what
    /// changed, now (`serve` does this at start-up and after each reload), then show what was
    /// recorded.
    #[arg(long, conflicts_with = "since")]
    pub record: bool,
    /// Check that no record was edited, removed or inserted since it was written (each record
    /// is linked to the one before it by a SHA-256), and show the last link.
    #[arg(long, conflicts_with_all = ["since", "record"])]
    pub verify: bool,
}

/// Reports.
#[derive(Subcommand)]
pub enum ReportCommand {
    /// The day's summary: serious alerts first, then breaches, changes and log problems.
    Daily(DailyArgs),
}

/// Options for `report daily`.
#[derive(Args)]
pub struct DailyArgs {
    /// The day (school time): YYYY-MM-DD, `today` or `yesterday`. Defaults to yesterday, the
    /// last finished day, which is what the morning email covers.
    #[arg(long, default_value = "yesterday")]
    pub date: schoolgate::report::Day,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// Replace device names and addresses with stable pseudonyms (for governors).
    #[arg(long)]
    pub anonymise: bool,
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Email the HTML report (with a text part) to report.recipients via [smtp].
    #[arg(long)]
    pub email: bool,
}

/// Report formats.
#[derive(Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    /// For a terminal.
    Text,
    /// One self-contained page.
    Html,
    /// For a spreadsheet.
    Csv,
    /// For machines.
    Json,
}

/// Options for `logs`.
#[derive(Args)]
pub struct LogsArgs {
    /// The device: an address or a configured client name.
    #[arg(long)]
    pub client: String,
    /// One day (school time): YYYY-MM-DD, `today` or `yesterday`. Defaults to today.
    #[arg(long, conflicts_with = "since")]
    pub date: Option<schoolgate::report::Day>,
    /// Everything from this time on: `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM` (school time) or
    /// `HH:MM` (today).
    #[arg(long)]
    pub since: Option<String>,
    /// Only blocked queries (the breach log).
    #[arg(long)]
    pub breaches: bool,
    /// Print the log records as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// Options for `serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Listen address (UDP and TCP); repeat for several. Overrides server.listen.
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// Upstream resolver; repeat for several. Overrides server.upstreams.
    #[arg(long = "upstream", value_name = "ADDR:PORT")]
    pub upstream: Vec<SocketAddr>,
    /// Metrics and health endpoint address. Overrides admin.listen.
    #[arg(long = "admin", value_name = "ADDR:PORT")]
    pub admin: Option<SocketAddr>,
    /// Format of the server's own log.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Log output styles.
#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options for `compile`.
#[derive(Args)]
pub struct CompileArgs {
    /// Print one JSON object (what `serve` reads from the compile it runs).
    #[arg(long)]
    pub json: bool,
}

/// Options for `check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The name to check.
    pub domain: String,
    /// The client asking: an address or a configured client name.
    #[arg(long)]
    pub client: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Decide as at this time (RFC 3339, or "YYYY-MM-DD HH:MM" in the school's time zone).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
}

/// `exempt` subcommands.
#[derive(Subcommand)]
pub enum ExemptCommand {
    /// Grant an exemption; it ends by itself at --until.
    Add(ExemptAddArgs),
    /// Show exemptions in force (and recently ended ones).
    List(ExemptListArgs),
    /// Withdraw a client's exemptions early.
    Remove(ExemptRemoveArgs),
}

/// Options for `exempt add`.
#[derive(Args)]
pub struct ExemptAddArgs {
    /// The client: an address, a configured name, a DHCP hostname or a MAC.
    #[arg(long)]
    pub client: String,
    /// Categories to lift, comma-separated (locked categories never can be).
    #[arg(long, value_delimiter = ',', required = true)]
    pub categories: Vec<String>,
    /// When it ends (RFC 3339, or "YYYY-MM-DD HH:MM" in the school's time zone).
    #[arg(long, value_name = "TIME")]
    pub until: String,
    /// Who agreed: one of the approvers named in the config.
    #[arg(long, value_name = "NAME")]
    pub approved_by: String,
    /// Why, for the change-control log.
    #[arg(long)]
    pub reason: String,
}

/// Options for `exempt list`.
#[derive(Args)]
pub struct ExemptListArgs {
    /// One JSON object per exemption.
    #[arg(long)]
    pub json: bool,
}

/// Options for `exempt remove`.
#[derive(Args)]
pub struct ExemptRemoveArgs {
    /// The client, as given when the exemption was added.
    #[arg(long)]
    pub client: String,
    /// Who withdrew it: one of the approvers named in the config.
    #[arg(long, value_name = "NAME")]
    pub approved_by: String,
    /// Why, for the change-control log.
    #[arg(long)]
    pub reason: String,
}
