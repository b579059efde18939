//! The configuration file: raw serde structs, then a validated [`Config`].
//!
//! Every mistake a technician can make is reported with the file, line and field, and all of
//! them at once, so one edit-and-retry fixes the lot. Paths in the file are relative to the
//! file's own directory, so the shipped `config/` works from any working directory.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use chrono::{NaiveTime, Weekday};
use ipnet::IpNet;
use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use crate::lists::KEYWORDS_EXTENSION;
use crate::safesearch::{SafeSearch, SafeSearchMode};
use crate::timezone::Zone;

/// A configuration problem, located in the file.
#[derive(Debug, Error)]
#[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<Problem>);

/// One configuration problem.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The field, when known (`category.file`).
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file.display(), line)?,
            None => write!(f, "{}: ", self.file.display())?,
        }
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "field `{}`: {}", self.field, self.message)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    sinkhole: Sinkhole,
    lists: RawLists,
    #[serde(default, rename = "category")]
    categories: Vec<RawCategory>,
    #[serde(default, rename = "forward")]
    forwards: Vec<RawForward>,
    #[serde(default)]
    groups: BTreeMap<String, RawGroup>,
    #[serde(default, rename = "client")]
    clients: Vec<RawClient>,
    #[serde(default)]
    logs: RawLogs,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    safesearch: RawSafeSearch,
    #[serde(default)]
    dhcp: RawDhcp,
    #[serde(default)]
    exemptions: RawExemptions,
    #[serde(default)]
    report: RawReport,
    #[serde(default)]
    alerts: RawAlerts,
    smtp: Option<RawSmtp>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSafeSearch {
    /// The vendors' data file, relative to the config file; the built-in copy when absent.
    file: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDhcp {
    #[serde(default)]
    leases: Vec<Spanned<String>>,
    #[serde(default)]
    format: LeaseFormat,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExemptions {
    #[serde(default)]
    approvers: Vec<String>,
    file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReport {
    #[serde(default = "default_school")]
    school: String,
    #[serde(default)]
    recipients: Vec<Spanned<String>>,
    #[serde(default = "default_repeat_threshold")]
    repeat_threshold: u32,
    #[serde(default = "default_top")]
    top: usize,
    #[serde(default = "default_circumvention")]
    circumvention: Vec<Spanned<String>>,
}

impl Default for RawReport {
    fn default() -> Self {
        RawReport {
            school: default_school(),
            recipients: Vec::new(),
            repeat_threshold: default_repeat_threshold(),
            top: default_top(),
            circumvention: default_circumvention(),
        }
    }
}

fn default_school() -> String {
    "School".into()
}
fn default_repeat_threshold() -> u32 {
    5
}
fn default_top() -> usize {
    10
}
fn default_circumvention() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "circumvention".into())]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    #[serde(default = "default_alert_window")]
    window_minutes: u64,
    #[serde(default)]
    recipients: Vec<Spanned<String>>,
    webhook: Option<Spanned<String>>,
    #[serde(default = "default_alert_retries")]
    retries: u32,
}

impl Default for RawAlerts {
    fn default() -> Self {
        RawAlerts {
            window_minutes: default_alert_window(),
            recipients: Vec::new(),
            webhook: None,
            retries: default_alert_retries(),
        }
    }
}

fn default_alert_window() -> u64 {
    15
}
fn default_alert_retries() -> u32 {
    5
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: String,
    port: Option<u16>,
    #[serde(default)]
    tls: SmtpTls,
    from: Spanned<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<Spanned<PathBuf>>,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// STARTTLS on the submission port (587): what most mail services expect.
    #[default]
    Starttls,
    /// TLS from the first byte (465).
    Tls,
    /// Plain text: only for a relay on the same host or a trusted network.
    None,
}

/// The daily summary's settings.
#[derive(Debug, Clone)]
pub struct Report {
    /// Shown in headings and the subject line.
    pub school: String,
    /// Who receives `report daily --email`.
    pub recipients: Vec<String>,
    /// Attempts on one category by one client that flag the client as repeatedly trying.
    pub repeat_threshold: u32,
    /// Length of the ranked lists (clients, names).
    pub top: usize,
    /// Categories whose attempts are called out as circumvention (DoH, VPN, proxy).
    pub circumvention: Vec<String>,
    /// The per-school secret that makes anonymised pseudonyms stable but unguessable.
    pub key_file: PathBuf,
}

/// Immediate alerts for alert-flagged categories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alerts {
    /// At most one message per client and category per window.
    pub window: std::time::Duration,
    /// Email recipients (needs `[smtp]`).
    pub recipients: Vec<String>,
    /// URL an alert is POSTed to as JSON.
    pub webhook: Option<String>,
    /// Delivery attempts before an alert is given up (and logged).
    pub retries: u32,
}

/// The mail server reports and alerts are sent through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smtp {
    /// Server host name.
    pub host: String,
    /// Port; defaults by `tls` (587, 465, 25).
    pub port: u16,
    /// Connection protection.
    pub tls: SmtpTls,
    /// Sender address.
    pub from: String,
    /// Login, if the server needs one.
    pub username: Option<String>,
    /// File holding the password (kept out of the config so the config can be shared).
    pub password_file: Option<PathBuf>,
    /// PEM certificate of a certificate authority to trust besides the public ones: a school's
    /// own mail server often has a certificate from the school's or the trust's own authority.
    pub ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    listen: Option<Spanned<SocketAddr>>,
    #[serde(default)]
    allow_remote: bool,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: default_admin_listen(),
            allow_remote: false,
        }
    }
}

fn default_admin_listen() -> Option<Spanned<SocketAddr>> {
    Some(Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], 9153))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: Vec<SocketAddr>,
    #[serde(default, deserialize_with = "dns_servers")]
    upstreams: Vec<SocketAddr>,
    #[serde(default = "default_client_networks")]
    client_networks: Vec<IpNet>,
    #[serde(default = "default_upstream_timeout_ms")]
    upstream_timeout_ms: u64,
    #[serde(default = "default_cache_size")]
    cache_size: usize,
    #[serde(default = "default_time_zone")]
    time_zone: Spanned<String>,
    #[serde(default = "default_rate_limit_qps")]
    rate_limit_qps: u32,
    #[serde(default = "default_rate_limit_burst")]
    rate_limit_burst: u32,
    #[serde(default)]
    start_unfiltered: bool,
    #[serde(default)]
    trusted_forwarders: Vec<IpNet>,
    xdp: Option<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            upstreams: Vec::new(),
            client_networks: default_client_networks(),
            upstream_timeout_ms: default_upstream_timeout_ms(),
            cache_size: default_cache_size(),
            time_zone: Spanned::new(0..0, default_time_zone().into_inner()),
            rate_limit_qps: default_rate_limit_qps(),
            rate_limit_burst: default_rate_limit_burst(),
            start_unfiltered: false,
            trusted_forwarders: Vec::new(),
            xdp: None,
        }
    }
}

fn default_listen() -> Vec<SocketAddr> {
    vec!["127.0.0.1:5353".parse().expect("literal address")]
}
fn default_client_networks() -> Vec<IpNet> {
    [
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
        "fe80::/10",
    ]
    .iter()
    .map(|n| n.parse().expect("literal network"))
    .collect()
}
fn default_upstream_timeout_ms() -> u64 {
    2000
}
fn default_cache_size() -> usize {
    20_000
}
fn default_time_zone() -> Spanned<String> {
    Spanned::new(0..0, "Europe/London".to_string())
}
fn default_rate_limit_qps() -> u32 {
    200
}
fn default_rate_limit_burst() -> u32 {
    400
}

/// What a blocked name is answered with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sinkhole {
    /// `null` (0.0.0.0 / ::), `nxdomain`, or `address` (a block page).
    #[serde(default)]
    pub mode: SinkholeMode,
    /// TTL of sinkhole answers, seconds.
    #[serde(default = "default_sinkhole_ttl")]
    pub ttl: u32,
    /// Block-page IPv4 address for `mode = "address"`.
    pub ipv4: Option<std::net::Ipv4Addr>,
    /// Block-page IPv6 address for `mode = "address"`.
    pub ipv6: Option<std::net::Ipv6Addr>,
}

impl Default for Sinkhole {
    fn default() -> Self {
        Sinkhole {
            mode: SinkholeMode::Null,
            ttl: default_sinkhole_ttl(),
            ipv4: None,
            ipv6: None,
        }
    }
}

fn default_sinkhole_ttl() -> u32 {
    60
}

/// Sinkhole styles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkholeMode {
    /// `0.0.0.0` for A, `::` for AAAA.
    #[default]
    Null,
    /// NXDOMAIN.
    Nxdomain,
    /// The configured block-page address.
    Address,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLists {
    dir: PathBuf,
    #[serde(default = "default_cache_dir")]
    cache_dir: PathBuf,
    allow: Option<Spanned<String>>,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_watch")]
    watch: bool,
    #[serde(default = "default_max_shrink")]
    max_shrink: Spanned<f64>,
    #[serde(default = "default_work_timeout")]
    work_timeout: Spanned<String>,
}

/// Why `path` cannot be read as a list, if it cannot: a pipe or device could block a compile
/// for good, so only regular files are lists.
fn not_a_list_file(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(md) if md.is_file() => None,
        Ok(_) => Some(format!(
            "list file {} is not a regular file (a directory, pipe or device); point it at a \
             plain text list",
            path.display()
        )),
        Err(_) => Some(format!(
            "list file {} does not exist; create it (it may be empty) or remove it",
            path.display()
        )),
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("../state/lists")
}
fn default_watch() -> bool {
    true
}
fn default_max_shrink() -> Spanned<f64> {
    Spanned::new(0..0, 0.5)
}
fn default_work_timeout() -> Spanned<String> {
    Spanned::new(0..0, "10m".to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: Spanned<String>,
    #[serde(default = "default_refresh")]
    refresh: Spanned<String>,
}

fn default_refresh() -> Spanned<String> {
    Spanned::new(0..0, "6h".to_string())
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from("../state/compiled")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    zone: Spanned<String>,
    #[serde(default, deserialize_with = "dns_servers")]
    upstreams: Vec<SocketAddr>,
}

/// DNS servers as `address` (port 53) or `address:port`.
fn dns_servers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{s:?} is not a DNS server address; write \"10.0.0.5\" or \"10.0.0.5:5353\" (\"[fd00::53]:5353\" for IPv6 with a port)"
                    ))
                })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCategory {
    name: Spanned<String>,
    #[serde(default)]
    files: Vec<Spanned<String>>,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    locked: bool,
    #[serde(default)]
    alert: bool,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    block: Vec<Spanned<String>>,
    #[serde(default)]
    description: String,
    #[serde(default, rename = "schedule")]
    schedules: Vec<RawSchedule>,
    #[serde(default)]
    safesearch: SafeSearchMode,
    #[serde(default)]
    block_unsafe_search: bool,
    #[serde(default)]
    allow_files: Vec<Spanned<String>>,
    #[serde(default)]
    block_files: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    name: String,
    days: Vec<Spanned<String>>,
    from: Spanned<String>,
    to: Spanned<String>,
    #[serde(default)]
    block: Vec<Spanned<String>>,
    #[serde(default)]
    unblock: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: Option<String>,
    addr: Option<Spanned<String>>,
    mac: Option<Spanned<String>>,
    hostname: Option<Spanned<String>>,
    group: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogs {
    dir: Option<PathBuf>,
    changes: Option<PathBuf>,
    #[serde(default = "default_access_retention")]
    access_retention_days: u32,
    #[serde(default = "default_breach_retention")]
    breach_retention_days: u32,
    #[serde(default = "default_log_queue")]
    queue: usize,
}

impl Default for RawLogs {
    fn default() -> Self {
        RawLogs {
            dir: None,
            access_retention_days: default_access_retention(),
            breach_retention_days: default_breach_retention(),
            queue: default_log_queue(),
            changes: None,
        }
    }
}

fn default_access_retention() -> u32 {
    30
}
fn default_breach_retention() -> u32 {
    365
}
/// About 2.5 MiB of waiting records (160 bytes each, with their names): tens of seconds of a
/// school's busiest traffic for a stuck disk, and 55 ms at the load benchmark's 300,000 qps.
/// 65,536 held 10 MiB, which a disk stall under that load turned into resident memory for good.
fn default_log_queue() -> usize {
    16_384
}

/// Where and for how long query logs are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Logs {
    /// Directory of the daily access, breach and notice files.
    pub dir: PathBuf,
    /// Days access logs are kept (the school's data-protection policy).
    pub access_retention_days: u32,
    /// Days breach logs are kept.
    pub breach_retention_days: u32,
    /// Access records that may wait for the writer before new ones are dropped (and counted).
    pub queue: usize,
}

/// A category of blocked names.
#[derive(Debug, Clone)]
pub struct Category {
    /// Short name used everywhere (`adult`, `illegal`).
    pub name: String,
    /// Source files, resolved.
    pub files: Vec<PathBuf>,
    /// Lists downloaded from URLs; their last good copies are compiled with `files`.
    pub sources: Vec<RemoteSource>,
    /// Never lifted by allow entries, groups, schedules or exemptions.
    pub locked: bool,
    /// Attempts raise an immediate alert.
    pub alert: bool,
    /// What the category covers, for reports.
    pub description: String,
}

impl Category {
    /// What the category compiles from: its files, then the remote copies downloaded so far.
    pub fn sources_on_disk(&self) -> Vec<PathBuf> {
        let copies = self.sources.iter().map(|s| &s.copy).filter(|p| p.is_file());
        self.files.iter().chain(copies).cloned().collect()
    }
}

/// A zone the school's own DNS servers answer (its Active Directory domain, its reverse zones):
/// names under it are forwarded there instead of to the upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The zone, normalised (`school.internal`).
    pub zone: String,
    /// The school's DNS servers for it, asked in order.
    pub upstreams: Vec<SocketAddr>,
}

/// A list fetched over HTTP(S) and kept on disk, so the category survives the source going away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSource {
    /// Where it is downloaded from.
    pub url: String,
    /// How often it is fetched again.
    pub refresh: std::time::Duration,
    /// The last good copy (under the state directory).
    pub copy: PathBuf,
}

/// A time-of-day rule within a group.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Shown by `check` and in logs.
    pub name: String,
    /// Days it applies.
    pub days: Vec<Weekday>,
    /// Start, local time, inclusive.
    pub from: NaiveTime,
    /// End, local time, exclusive.
    pub to: NaiveTime,
    /// Categories additionally blocked while it applies.
    pub block: Vec<String>,
    /// Categories lifted while it applies.
    pub unblock: Vec<String>,
}

/// A group of clients sharing a policy.
#[derive(Debug, Clone)]
pub struct Group {
    /// Name (`pupils`, `staff`).
    pub name: String,
    /// Categories blocked outside any schedule.
    pub block: Vec<String>,
    /// For the report.
    pub description: String,
    /// Time-of-day variations, first match wins.
    pub schedules: Vec<Schedule>,
    /// Which safe host search names are rewritten to.
    pub safesearch: SafeSearchMode,
    /// Block search engines with no enforceable safe mode.
    pub block_unsafe_search: bool,
    /// The group's own allow-list files (resolved), on top of the school's allow list.
    pub allow_files: Vec<PathBuf>,
    /// The group's own block-list files (resolved), blocked for this group at all times.
    pub block_files: Vec<PathBuf>,
}

/// A named client: an address or range, or (because DHCP addresses move) a device's MAC or a
/// DHCP hostname pattern.
#[derive(Debug, Clone)]
pub struct Client {
    /// What the coordinator reads; for MAC and hostname entries the lease's hostname if unset.
    pub name: Option<String>,
    /// How the client is recognised.
    pub matcher: ClientMatch,
    /// Its group.
    pub group: String,
}

/// How a configured client is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMatch {
    /// Source address in this range (a single address is a /32 or /128).
    Net(IpNet),
    /// The device's MAC address, from a DHCP lease or a forwarder's `add-mac`.
    Mac([u8; 6]),
    /// DHCP hostname, case-insensitive; `*` matches any run of characters (`LIB-PC-*`).
    Hostname(String),
}

/// Lease file formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseFormat {
    /// Decide per file from its contents.
    #[default]
    Auto,
    /// dnsmasq: `expiry mac ip hostname client-id` per line.
    Dnsmasq,
    /// ISC dhcpd: `lease IP { ... }` blocks.
    Isc,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Addresses to answer on (UDP and TCP).
    pub listen: Vec<SocketAddr>,
    /// Resolvers allowed names are forwarded to.
    pub upstreams: Vec<SocketAddr>,
    /// Zones forwarded to the school's own DNS servers instead.
    pub forwards: Vec<Forward>,
    /// Interface whose UDP queries take the AF_XDP fast path, if any.
    pub xdp: Option<String>,
    /// Networks whose queries are answered; everyone else gets REFUSED.
    pub client_networks: Vec<IpNet>,
    /// How long an upstream may take before SERVFAIL.
    pub upstream_timeout: std::time::Duration,
    /// Upstream answer cache entries.
    pub cache_size: usize,
    /// The school's time zone, for schedules, logs and reports.
    pub time_zone: Zone,
    /// Per-client queries per second.
    pub rate_limit_qps: u32,
    /// Per-client burst.
    pub rate_limit_burst: u32,
    /// Start without lists if none load (logged loudly); off by default: fail closed.
    pub start_unfiltered: bool,
    /// Sinkhole answer settings.
    pub sinkhole: Sinkhole,
    /// Directory of list files.
    pub lists_dir: PathBuf,
    /// Where compiled lists are cached.
    pub cache_dir: PathBuf,
    /// The allow list, if any.
    pub allow_file: Option<PathBuf>,
    /// Lists' own state: last good copies of remote sources and the snapshots edits are diffed
    /// against. Unlike `cache_dir`, deleting it loses history.
    pub state_dir: PathBuf,
    /// Watch list files and the config for changes (SIGHUP always reloads).
    pub watch: bool,
    /// Largest fraction of its entries a remote source may lose in one refresh and still apply.
    pub max_shrink: f64,
    /// How long a compile or change-log child may run before it is stopped and the reload
    /// counted failed: a list on a hung network mount must not stall reloads for good.
    pub list_work_timeout: std::time::Duration,
    /// Categories, in priority order (locked ones first).
    pub categories: Vec<Category>,
    /// Groups by name; always contains `default`.
    pub groups: BTreeMap<String, Group>,
    /// Named clients.
    pub clients: Vec<Client>,
    /// Access and breach logs.
    pub logs: Logs,
    /// Address of the metrics and health endpoint; `None` turns it off.
    pub admin: Option<SocketAddr>,
    /// The search engines' safe hosts and the bypass canaries.
    pub safesearch: SafeSearch,
    /// Forwarders (the school's router) whose EDNS Client Subnet and `add-mac` options name the
    /// real client; anyone else's are ignored, so a device cannot claim to be staff.
    pub trusted_forwarders: Vec<IpNet>,
    /// DHCP lease files that name clients by hostname and MAC.
    pub dhcp_leases: Vec<PathBuf>,
    /// Their format.
    pub dhcp_format: LeaseFormat,
    /// Who may approve an exemption (compared case-insensitively).
    pub approvers: Vec<String>,
    /// Where exemptions are kept (the state directory).
    pub exemptions_file: PathBuf,
    /// The change-control log (JSON lines, append-only).
    pub changes_log: PathBuf,
    /// The daily summary.
    pub report: Report,
    /// Immediate alerts.
    pub alerts: Alerts,
    /// Outgoing mail, if configured.
    pub smtp: Option<Smtp>,
}

/// Name of the group unknown clients fall into.
pub const DEFAULT_GROUP: &str = "default";

impl Config {
    /// The settings in which this config differs from the `running` one that take effect only
    /// at a restart: sockets, the answer cache, logging and file watching are set up once.
    /// Everything else (lists, groups, clients, upstreams, rate limits, alerts) applies on
    /// reload.
    pub fn restart_only_changes(&self, running: &Config) -> Vec<&'static str> {
        let a = running;
        [
            ("server.listen", self.listen != a.listen),
            ("server.xdp", self.xdp != a.xdp),
            ("server.cache_size", self.cache_size != a.cache_size),
            (
                "server.time_zone (log file days)",
                self.time_zone != a.time_zone,
            ),
            ("admin.listen", self.admin != a.admin),
            ("logs", self.logs != a.logs),
            ("lists.watch", self.watch != a.watch),
            (
                "lists.dir (which directory is watched)",
                self.lists_dir != a.lists_dir,
            ),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(vec![Problem {
                file: path.to_path_buf(),
                line: None,
                field: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Self::from_toml(path, &text)
    }

    /// Validates config text; `path` names the file in errors and anchors relative paths.
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut v = Validator {
            file: path.to_path_buf(),
            text,
            problems: Vec::new(),
        };
        let raw: Raw = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let line = e.span().map(|s| v.line_of(&s));
                return Err(ConfigError(vec![Problem {
                    file: path.to_path_buf(),
                    line,
                    field: String::new(),
                    message: e.message().to_string(),
                }]));
            }
        };
        // Absolute, so every path (and the compiled-list cache keyed on them) is the same
        // whether the config was named as `schoolgate.toml` or `/etc/schoolgate/schoolgate.toml`.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
        let config = v.validate(raw, &base);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(v.problems))
        }
    }

    /// The category by name.
    pub fn category(&self, name: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.name == name)
    }
}

struct Validator<'a> {
    file: PathBuf,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn line_of(&self, span: &Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn problem<T>(&mut self, at: &Spanned<T>, field: &str, message: impl Into<String>) {
        let line = (at.span() != (0..0)).then(|| self.line_of(&at.span()));
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn validate(&mut self, raw: Raw, base: &Path) -> Config {
        let time_zone = Zone::named(raw.server.time_zone.get_ref()).unwrap_or_else(|e| {
            self.problem(&raw.server.time_zone, "server.time_zone", e.to_string());
            Zone::utc()
        });
        if raw.sinkhole.mode == SinkholeMode::Address
            && raw.sinkhole.ipv4.is_none()
            && raw.sinkhole.ipv6.is_none()
        {
            self.problems.push(Problem {
                file: self.file.clone(),
                line: None,
                field: "sinkhole.ipv4".into(),
                message: "mode = \"address\" needs ipv4 and/or ipv6 (the block page)".into(),
            });
        }

        let lists_dir = resolve(base, &raw.lists.dir);
        let cache_dir = resolve(base, &raw.lists.cache_dir);
        let state_dir = resolve(base, &raw.lists.state_dir);
        let max_shrink = *raw.lists.max_shrink.get_ref();
        if !(0.0..=1.0).contains(&max_shrink) {
            self.problem(
                &raw.lists.max_shrink,
                "lists.max_shrink",
                "must be a fraction between 0.0 and 1.0 (0.5: refuse a download that lost over half its entries)",
            );
        }
        let list_work_timeout = match humantime::parse_duration(raw.lists.work_timeout.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                self.problem(
                    &raw.lists.work_timeout,
                    "lists.work_timeout",
                    format!(
                        "{:?} is not a duration like \"10m\" or \"90s\"",
                        raw.lists.work_timeout.get_ref()
                    ),
                );
                std::time::Duration::from_secs(600)
            }
        };
        let allow_file = raw.lists.allow.as_ref().map(|f| {
            let p = lists_dir.join(f.get_ref());
            if let Some(problem) = not_a_list_file(&p) {
                self.problem(f, "lists.allow", problem);
            }
            p
        });

        let forwards = self.forwards(&raw.forwards);
        let mut categories = Vec::new();
        for c in &raw.categories {
            let name = c.name.get_ref().clone();
            if !is_identifier(&name) || name == "allow" {
                self.problem(
                    &c.name,
                    "category.name",
                    format!("{name:?} is not a usable category name (letters, digits, _; not \"allow\")"),
                );
            }
            if categories.iter().any(|x: &Category| x.name == name) {
                self.problem(
                    &c.name,
                    "category.name",
                    format!("category {name:?} is defined twice"),
                );
            }
            let mut files = self.list_files(&lists_dir, &c.files, "category.files");
            // `<category>.keywords` beside the lists is picked up without being named.
            let keywords = lists_dir.join(format!("{name}.{KEYWORDS_EXTENSION}"));
            if keywords.is_file() && !files.contains(&keywords) {
                files.push(keywords);
            }
            let mut sources = Vec::new();
            for s in &c.sources {
                let url = s.url.get_ref();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    self.problem(
                        &s.url,
                        "category.sources.url",
                        format!("{url:?} is not an http:// or https:// URL"),
                    );
                }
                let refresh = match humantime::parse_duration(s.refresh.get_ref()) {
                    Ok(d) if !d.is_zero() => d,
                    _ => {
                        self.problem(
                            &s.refresh,
                            "category.sources.refresh",
                            format!(
                                "{:?} is not a duration like \"6h\" or \"30m\"",
                                s.refresh.get_ref()
                            ),
                        );
                        std::time::Duration::from_secs(6 * 3600)
                    }
                };
                sources.push(RemoteSource {
                    url: url.clone(),
                    refresh,
                    copy: state_dir.join("remote").join(copy_name(&name, url)),
                });
            }
            categories.push(Category {
                name,
                files,
                sources,
                locked: c.locked,
                alert: c.alert,
                description: c.description.clone(),
            });
        }
        // Locked categories are decided first, so they come first.
        categories.sort_by_key(|c| !c.locked);

        let known = |n: &str| categories.iter().any(|c| c.name == n);
        let mut groups = BTreeMap::new();
        for (name, g) in &raw.groups {
            let block = self.category_names(&g.block, &format!("groups.{name}.block"), &known);
            let mut schedules = Vec::new();
            for s in &g.schedules {
                schedules.push(self.schedule(name, s, &known));
            }
            if !is_identifier(&name.replace('-', "_")) {
                self.problems.push(Problem {
                    file: self.file.clone(),
                    line: None,
                    field: format!("groups.{name}"),
                    message: "group names are letters, digits, - and _".into(),
                });
            }
            let allow_files = self.list_files(
                &lists_dir,
                &g.allow_files,
                &format!("groups.{name}.allow_files"),
            );
            let block_files = self.list_files(
                &lists_dir,
                &g.block_files,
                &format!("groups.{name}.block_files"),
            );
            groups.insert(
                name.clone(),
                Group {
                    name: name.clone(),
                    block,
                    description: g.description.clone(),
                    schedules,
                    safesearch: g.safesearch,
                    block_unsafe_search: g.block_unsafe_search,
                    allow_files,
                    block_files,
                },
            );
        }
        groups
            .entry(DEFAULT_GROUP.to_string())
            .or_insert_with(|| Group {
                name: DEFAULT_GROUP.to_string(),
                block: categories.iter().map(|c| c.name.clone()).collect(),
                description: "Devices not named in the config: everything blocked".into(),
                schedules: Vec::new(),
                safesearch: SafeSearchMode::Strict,
                block_unsafe_search: true,
                allow_files: Vec::new(),
                block_files: Vec::new(),
            });

        let mut clients = Vec::new();
        for c in &raw.clients {
            if !groups.contains_key(c.group.get_ref()) {
                self.problem(
                    &c.group,
                    "client.group",
                    format!("no group named {:?}", c.group.get_ref()),
                );
            }
            let Some(matcher) = self.client_match(c) else {
                continue;
            };
            clients.push(Client {
                name: c.name.clone(),
                matcher,
                group: c.group.get_ref().clone(),
            });
        }
        let dhcp_leases = raw
            .dhcp
            .leases
            .iter()
            .map(|l| resolve(base, l.get_ref()))
            .collect();

        if let Some(a) = &raw.admin.listen {
            if !a.get_ref().ip().is_loopback() && !raw.admin.allow_remote {
                self.problem(
                    a,
                    "admin.listen",
                    "the admin endpoint is not on loopback; set admin.allow_remote = true if it is firewalled",
                );
            }
        }

        let safesearch = self.safesearch(&raw.safesearch, base);
        let state_dir = cache_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| base.to_path_buf());
        let report = self.report(&raw.report, &categories, &state_dir);
        let alerts = self.alerts(&raw.alerts);
        let smtp = raw.smtp.as_ref().map(|s| self.smtp(s, base));
        if smtp.is_none() && !alerts.recipients.is_empty() {
            self.problem(
                &raw.alerts.recipients[0],
                "alerts.recipients",
                "alert emails need an [smtp] section (host, from)",
            );
        }

        let log_dir = resolve(
            base,
            raw.logs
                .dir
                .unwrap_or_else(|| PathBuf::from("../state/logs")),
        );
        Config {
            path: self.file.clone(),
            listen: raw.server.listen,
            upstreams: raw.server.upstreams,
            forwards,
            xdp: raw.server.xdp,
            client_networks: raw.server.client_networks,
            upstream_timeout: std::time::Duration::from_millis(raw.server.upstream_timeout_ms),
            cache_size: raw.server.cache_size,
            time_zone,
            rate_limit_qps: raw.server.rate_limit_qps,
            rate_limit_burst: raw.server.rate_limit_burst,
            start_unfiltered: raw.server.start_unfiltered,
            sinkhole: raw.sinkhole,
            lists_dir,
            cache_dir,
            allow_file,
            state_dir,
            watch: raw.lists.watch,
            max_shrink,
            list_work_timeout,
            categories,
            groups,
            clients,
            logs: Logs {
                dir: log_dir.clone(),
                access_retention_days: raw.logs.access_retention_days,
                breach_retention_days: raw.logs.breach_retention_days,
                queue: raw.logs.queue.max(1024),
            },
            admin: raw.admin.listen.map(Spanned::into_inner),
            safesearch,
            trusted_forwarders: raw.server.trusted_forwarders,
            dhcp_leases,
            dhcp_format: raw.dhcp.format,
            approvers: raw.exemptions.approvers,
            exemptions_file: resolve(
                base,
                raw.exemptions
                    .file
                    .unwrap_or_else(|| PathBuf::from("../state/exemptions.json")),
            ),
            changes_log: match raw.logs.changes {
                Some(p) => resolve(base, p),
                None => log_dir.join("changes.jsonl"),
            },
            report,
            alerts,
            smtp,
        }
    }

    fn report(&mut self, raw: &RawReport, categories: &[Category], state_dir: &Path) -> Report {
        let recipients = self.addresses(&raw.recipients, "report.recipients");
        let mut circumvention = Vec::new();
        for c in &raw.circumvention {
            if categories.iter().any(|k| &k.name == c.get_ref()) {
                circumvention.push(c.get_ref().clone());
            } else if c.span() != (0..0) {
                self.problem(
                    c,
                    "report.circumvention",
                    format!("no category named {:?}", c.get_ref()),
                );
            }
        }
        Report {
            school: raw.school.clone(),
            recipients,
            repeat_threshold: raw.repeat_threshold.max(2),
            top: raw.top.max(1),
            circumvention,
            key_file: state_dir.join("report.key"),
        }
    }

    fn alerts(&mut self, raw: &RawAlerts) -> Alerts {
        let recipients = self.addresses(&raw.recipients, "alerts.recipients");
        let webhook = raw.webhook.as_ref().and_then(|w| {
            let url = w.get_ref();
            if url.starts_with("http://") || url.starts_with("https://") {
                Some(url.clone())
            } else {
                self.problem(
                    w,
                    "alerts.webhook",
                    format!("{url:?} is not an http:// or https:// URL"),
                );
                None
            }
        });
        Alerts {
            window: std::time::Duration::from_secs(raw.window_minutes.max(1) * 60),
            recipients,
            webhook,
            retries: raw.retries.max(1),
        }
    }

    fn smtp(&mut self, raw: &RawSmtp, base: &Path) -> Smtp {
        if raw
            .from
            .get_ref()
            .parse::<lettre::message::Mailbox>()
            .is_err()
        {
            self.problem(
                &raw.from,
                "smtp.from",
                format!(
                    "{:?} is not an email address (\"Name <addr@school.example>\" or addr@school.example)",
                    raw.from.get_ref()
                ),
            );
        }
        Smtp {
            host: raw.host.clone(),
            port: raw.port.unwrap_or(match raw.tls {
                SmtpTls::Starttls => 587,
                SmtpTls::Tls => 465,
                SmtpTls::None => 25,
            }),
            tls: raw.tls,
            from: raw.from.get_ref().clone(),
            username: raw.username.clone(),
            password_file: raw.password_file.as_ref().map(|p| base.join(p)),
            ca_file: raw.ca_file.as_ref().map(|f| {
                let path = base.join(f.get_ref());
                if raw.tls == SmtpTls::None {
                    self.problem(
                        f,
                        "smtp.ca_file",
                        "a CA certificate needs tls = \"starttls\" or \"tls\"".to_string(),
                    );
                } else if let Err(e) = crate::mail::read_ca(&path) {
                    self.problem(f, "smtp.ca_file", e.to_string());
                }
                path
            }),
        }
    }

    fn forwards(&mut self, raw: &[RawForward]) -> Vec<Forward> {
        let mut out: Vec<Forward> = Vec::new();
        for f in raw {
            let zone = match crate::domain::normalise(f.zone.get_ref()) {
                Ok(zone) => zone,
                Err(e) => {
                    self.problem(
                        &f.zone,
                        "forward.zone",
                        format!("{e}; give the zone the school's own DNS answers, such as \"school.internal\" (to forward everything, set server.upstreams)"),
                    );
                    continue;
                }
            };
            if out.iter().any(|x| x.zone == zone) {
                self.problem(
                    &f.zone,
                    "forward.zone",
                    format!(
                        "zone {zone:?} is forwarded twice; list all its servers in one [[forward]]"
                    ),
                );
            }
            if f.upstreams.is_empty() {
                self.problem(
                    &f.zone,
                    "forward.upstreams",
                    format!("zone {zone:?} needs the school's DNS servers for it, such as upstreams = [\"10.0.0.5:53\"]"),
                );
            }
            out.push(Forward {
                zone,
                upstreams: f.upstreams.clone(),
            });
        }
        out
    }

    fn addresses(&mut self, list: &[Spanned<String>], field: &str) -> Vec<String> {
        let mut out = Vec::new();
        for a in list {
            if a.get_ref().parse::<lettre::message::Mailbox>().is_ok() {
                out.push(a.get_ref().clone());
            } else {
                self.problem(
                    a,
                    field,
                    format!("{:?} is not an email address", a.get_ref()),
                );
            }
        }
        out
    }

    /// A client's one way of being recognised: exactly one of `addr`, `mac`, `hostname`.
    fn client_match(&mut self, c: &RawClient) -> Option<ClientMatch> {
        let given = [c.addr.is_some(), c.mac.is_some(), c.hostname.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            self.problem(
                &c.group,
                "client",
                "give exactly one of addr, mac or hostname for each [[client]]",
            );
            return None;
        }
        if let Some(addr) = &c.addr {
            if c.name.is_none() {
                self.problem(addr, "client.name", "an address client needs a name");
            }
            return match parse_net(addr.get_ref()) {
                Some(n) => Some(ClientMatch::Net(n)),
                None => {
                    self.problem(
                        addr,
                        "client.addr",
                        format!("{:?} is not an IP address or CIDR range", addr.get_ref()),
                    );
                    None
                }
            };
        }
        if let Some(mac) = &c.mac {
            return match parse_mac(mac.get_ref()) {
                Some(m) => Some(ClientMatch::Mac(m)),
                None => {
                    self.problem(
                        mac,
                        "client.mac",
                        format!(
                            "{:?} is not a MAC address like \"aa:bb:cc:dd:ee:ff\"",
                            mac.get_ref()
                        ),
                    );
                    None
                }
            };
        }
        let host = c.hostname.as_ref()?;
        if host.get_ref().trim().is_empty() {
            self.problem(host, "client.hostname", "hostname pattern is empty");
            return None;
        }
        Some(ClientMatch::Hostname(host.get_ref().trim().to_string()))
    }

    fn list_files(&mut self, dir: &Path, files: &[Spanned<String>], field: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for f in files {
            let p = dir.join(f.get_ref());
            if let Some(problem) = not_a_list_file(&p) {
                self.problem(f, field, problem);
            }
            out.push(p);
        }
        out
    }

    /// The vendors' safe search data: the named file, or the built-in copy.
    fn safesearch(&mut self, raw: &RawSafeSearch, base: &Path) -> SafeSearch {
        let Some(f) = &raw.file else {
            return SafeSearch::builtin();
        };
        let p = resolve(base, f.get_ref());
        if !p.is_file() {
            self.problem(
                f,
                "safesearch.file",
                format!(
                    "{} does not exist; restore it from the release, or remove the setting to use the built-in copy",
                    p.display()
                ),
            );
            return SafeSearch::builtin();
        }
        SafeSearch::load(&p).unwrap_or_else(|problems| {
            self.problems.extend(problems);
            SafeSearch::builtin()
        })
    }

    fn category_names(
        &mut self,
        names: &[Spanned<String>],
        field: &str,
        known: &dyn Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for n in names {
            if known(n.get_ref()) {
                out.push(n.get_ref().clone());
            } else {
                self.problem(n, field, format!("no category named {:?}", n.get_ref()));
            }
        }
        out
    }

    fn schedule(&mut self, group: &str, s: &RawSchedule, known: &dyn Fn(&str) -> bool) -> Schedule {
        let field = format!("groups.{group}.schedule");
        let mut days = Vec::new();
        for d in &s.days {
            match parse_days(d.get_ref()) {
                Some(ds) => days.extend(ds),
                None => self.problem(
                    d,
                    &format!("{field}.days"),
                    format!(
                        "{:?} is not a day (mon..sun, or weekdays/weekend)",
                        d.get_ref()
                    ),
                ),
            }
        }
        let mut time = |t: &Spanned<String>, which: &str| {
            NaiveTime::parse_from_str(t.get_ref(), "%H:%M").unwrap_or_else(|_| {
                self.problem(
                    t,
                    &format!("{field}.{which}"),
                    format!("{:?} is not a time like \"12:30\"", t.get_ref()),
                );
                NaiveTime::MIN
            })
        };
        let from = time(&s.from, "from");
        let to = time(&s.to, "to");
        Schedule {
            name: s.name.clone(),
            days,
            from,
            to,
            block: self.category_names(&s.block, &format!("{field}.block"), known),
            unblock: self.category_names(&s.unblock, &format!("{field}.unblock"), known),
        }
    }
}

/// File name of a source's last good copy: readable, and different for every URL.
fn copy_name(category: &str, url: &str) -> String {
    let tail: String = url
        .split("://")
        .last()
        .unwrap_or(url)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    // FNV-1a: stable across releases, unlike std's hasher.
    let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{category}-{tail}-{:08x}.txt", hash as u32)
}

/// Joins a path from the config onto the config's directory and tidies `..` away, so messages
/// and logs name `blocklists/adult.txt`, not `config/../blocklists/adult.txt`.
fn resolve(base: &Path, p: impl AsRef<Path>) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in base.join(p).components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// An address or CIDR range; a bare address is a single-host range.
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// A MAC address in the usual notations (`aa:bb:cc:dd:ee:ff`, `AA-BB-...`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split([':', '-']);
    for b in &mut mac {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn parse_days(s: &str) -> Option<Vec<Weekday>> {
    use Weekday::*;
    Some(match s.to_ascii_lowercase().as_str() {
        "weekdays" => vec![Mon, Tue, Wed, Thu, Fri],
        "weekend" => vec![Sat, Sun],
        "everyday" | "daily" => vec![Mon, Tue, Wed, Thu, Fri, Sat, Sun],
        other => vec![other.parse::<Weekday>().ok()?],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("adult.txt"), "").unwrap();
        let path = dir.path().join("schoolgate.toml");
        Config::from_toml(&path, text)
    }

    #[test]
    fn paths_are_absolute_however_the_config_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[lists]\ndir = \"lists\"\ncache_dir = \"cache\"\n";
        let named = Config::from_toml(Path::new("schoolgate.toml"), text).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(named.cache_dir, cwd.join("cache"));
        let full = Config::from_toml(&dir.path().join("schoolgate.toml"), text).unwrap();
        assert_eq!(full.lists_dir, dir.path().join("lists"));
    }

    #[test]
    fn unknown_key_names_line_and_field() {
        let err = cfg("[lists]\ndir = \".\"\n\n[server]\nlisten = [\"127.0.0.1:53\"]\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("schoolgate.toml:6:"), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn forward_zones_are_normalised_and_bad_ones_name_their_line() {
        let ok = cfg("[lists]\ndir = \".\"\n[[forward]]\nzone = \"School.Internal.\"\nupstreams = [\"10.0.0.5:53\", \"10.0.0.6:53\"]\n")
            .unwrap();
        assert_eq!(ok.forwards[0].zone, "school.internal");
        assert_eq!(ok.forwards[0].upstreams.len(), 2);
        let err = cfg("[lists]\ndir = \".\"\n[[forward]]\nzone = \"school.internal\"\nupstreams = []\n[[forward]]\nzone = \"bad zone\"\nupstreams = [\"10.0.0.5:53\"]\n[[forward]]\nzone = \"school.INTERNAL\"\nupstreams = [\"10.0.0.5:53\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":4: field `forward.upstreams`"), "{err}");
        assert!(err.contains(":7: field `forward.zone`"), "{err}");
        assert!(
            err.contains(":10: field `forward.zone`: zone \"school.internal\" is forwarded twice"),
            "{err}"
        );
        let bare = cfg("[lists]\ndir = \".\"\n[server]\nupstreams = [\"192.168.1.1\", \"fd00::53\"]\n[[forward]]\nzone = \"school.internal\"\nupstreams = [\"10.0.0.5\"]\n")
            .unwrap();
        assert_eq!(bare.forwards[0].upstreams, ["10.0.0.5:53".parse().unwrap()]);
        assert_eq!(
            bare.upstreams,
            [
                "192.168.1.1:53".parse().unwrap(),
                "[fd00::53]:53".parse().unwrap()
            ],
            "port 53 when none is given"
        );
        let typo = cfg("[lists]\ndir = \".\"\n[[forward]]\nzone = \"school.internal\"\nupstreams = [\"10.0.0.300\"]\n")
            .unwrap_err()
            .to_string();
        assert!(typo.contains("schoolgate.toml:5:"), "{typo}");
        assert!(
            typo.contains("\"10.0.0.300\" is not a DNS server address"),
            "{typo}"
        );
    }

    #[test]
    fn a_list_that_is_not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pipe = dir.path().join("adult.txt");
        assert!(std::process::Command::new("mkfifo")
            .arg(&pipe)
            .status()
            .unwrap()
            .success());
        let text =
            "[lists]\ndir = \".\"\n[[category]]\nname = \"adult\"\nfiles = [\"adult.txt\"]\n";
        let err = Config::from_toml(&dir.path().join("schoolgate.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":5: field `category.files`"), "{err}");
        assert!(err.contains("is not a regular file"), "{err}");
    }

    #[test]
    fn list_work_timeout_is_a_duration() {
        let c = cfg("[lists]\ndir = \".\"\nwork_timeout = \"90s\"\n").unwrap();
        assert_eq!(c.list_work_timeout, std::time::Duration::from_secs(90));
        let c = cfg("[lists]\ndir = \".\"\n").unwrap();
        assert_eq!(c.list_work_timeout, std::time::Duration::from_secs(600));
        let err = cfg("[lists]\ndir = \".\"\nwork_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":3: field `lists.work_timeout`"), "{err}");
    }

    #[test]
    fn time_zone_is_an_iana_name_and_a_typo_names_its_line() {
        let c = cfg("[lists]\ndir = \".\"\n").unwrap();
        assert_eq!(c.time_zone.name(), "Europe/London", "the default");
        let c = cfg("[server]\ntime_zone = \"Europe/Dublin\"\n[lists]\ndir = \".\"\n").unwrap();
        assert_eq!(c.time_zone.name(), "Europe/Dublin");
        let err = cfg("[lists]\ndir = \".\"\n[server]\ntime_zone = \"Europe/Londn\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":4: field `server.time_zone`"), "{err}");
        assert!(err.contains("unknown time zone \"Europe/Londn\""), "{err}");
    }

    #[test]
    fn bad_address_names_line() {
        let err = cfg("[server]\nlisten = [\"127.0.0.1:99999\"]\n[lists]\ndir = \".\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2:"), "{err}");
    }

    #[test]
    fn missing_list_and_unknown_category_all_reported() {
        let err = cfg("[lists]\ndir = \".\"\n[[category]]\nname = \"adult\"\nfiles = [\"adult.txt\"]\n[[category]]\nname = \"gambling\"\nfiles = [\"nope.txt\"]\n[groups.pupils]\nblock = [\"adult\", \"gamblng\"]\n")
            .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        let text = err.to_string();
        assert!(text.contains(":8: field `category.files`"), "{text}");
        assert!(text.contains(":10: field `groups.pupils.block`"), "{text}");
    }

    #[test]
    fn clients_by_mac_or_hostname_are_validated() {
        let base = "[lists]\ndir = \".\"\n[groups.staff]\n";
        let err = cfg(&format!("{base}[[client]]\nname = \"x\"\naddr = \"10.0.0.1\"\nmac = \"aa:bb:cc:dd:ee:ff\"\ngroup = \"staff\"\n[[client]]\nmac = \"aa:bb:cc:dd:ee\"\ngroup = \"staff\"\n"))
            .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("exactly one of addr, mac or hostname"),
            "{text}"
        );
        assert!(text.contains(":10: field `client.mac`"), "{text}");
        let c = cfg(&format!("{base}[[client]]\nmac = \"AA-BB-CC-DD-EE-FF\"\ngroup = \"staff\"\n[[client]]\nhostname = \"LIB-PC-*\"\ngroup = \"staff\"\n[server]\ntrusted_forwarders = [\"192.168.1.1/32\"]\n"))
            .unwrap();
        assert_eq!(
            c.clients[0].matcher,
            ClientMatch::Mac([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
        );
        assert_eq!(
            c.clients[1].matcher,
            ClientMatch::Hostname("LIB-PC-*".into())
        );
        assert_eq!(c.trusted_forwarders.len(), 1);
    }

    #[test]
    fn defaults_and_locked_first() {
        let c = cfg("[lists]\ndir = \".\"\n[[category]]\nname = \"adult\"\nfiles = [\"adult.txt\"]\n[[category]]\nname = \"illegal\"\nlocked = true\n")
            .unwrap();
        assert_eq!(c.categories[0].name, "illegal");
        assert!(c.groups.contains_key(DEFAULT_GROUP));
        assert_eq!(c.listen, default_listen());
    }

    #[test]
    fn report_alerts_and_smtp_are_checked_with_lines() {
        let err = cfg("[lists]\ndir = \".\"\n[report]\nrecipients = [\"not an address\"]\n[alerts]\nrecipients = [\"dsl@school.example\"]\nwebhook = \"ftp://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":4: field `report.recipients`"), "{err}");
        assert!(err.contains(":7: field `alerts.webhook`"), "{err}");
        assert!(
            err.contains(":6: field `alerts.recipients`: alert emails need an [smtp] section"),
            "{err}"
        );
    }

    #[test]
    fn report_defaults_live_in_the_state_dir() {
        let c = cfg("[lists]\ndir = \".\"\ncache_dir = \"state/compiled\"\n[smtp]\nhost = \"mail.example\"\nfrom = \"f@school.example\"\n").unwrap();
        assert!(c.report.key_file.ends_with("state/report.key"));
        assert_eq!(c.alerts.window, std::time::Duration::from_secs(15 * 60));
        let smtp = c.smtp.unwrap();
        assert_eq!((smtp.port, smtp.tls), (587, SmtpTls::Starttls));
    }
}
