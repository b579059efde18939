//! Integration tests: the real `schoolgate` binary on loopback, a real upstream DNS server
//! (the fixture), and real DNS clients (hickory-proto over sockets, and `dig`).
//!
//! - `clients`: groups per client, schedules, exemptions, DHCP lease names, trusted forwarders.
//! - `core`: serving, sinkhole answers, forwarding, access control, `check`, config errors.
//! - `keywords`: keyword rules, their exceptions, hot reload and `check` explanations.
//! - `safesearch`: safe search rewrites per group, bypass canaries, circumvention blocking.
//! - `logs`: access and breach logs, permissions, SIGTERM flush, retention.
//! - `ops`: metrics, health, rate limiting.
//! - `fastpath`: the XDP fast path on loopback.
//! - `fuzz`: property-driven fuzzing of decoding, normalisation and decision.
//! - `reliability`: hostile packets, every query type, CNAME cloaking, outages, full disk.
//! - `lists`: hot reload, bad lists kept out, list edits, the change-control log, remote sources.
//! - `report`: the daily summary in every format, anonymising, email, alerts, `logs --client`.

mod fixture;
mod harness;

mod clients;
mod core;
mod fastpath;
mod fuzz;
mod http;
mod keywords;
mod lists;
mod logs;
mod ops;
mod reliability;
mod report;
mod safesearch;
