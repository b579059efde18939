//! Integration tests: the real `schoolgate` binary on loopback, a real upstream DNS server
//! (the fixture), and real DNS clients (hickory-proto over sockets, and `dig`).
//!
//! - `clients`: groups per client, schedules, exemptions, DHCP lease names, trusted forwarders.
//! - `core`: serving, sinkhole answers, forwarding, access control, `check`, config errors.
//! - `logs`: access and breach logs, permissions, SIGTERM flush, retention.
//! - `ops`: metrics, health, rate limiting.
//! - `reliability`: hostile packets, every query type, CNAME cloaking, outages, full disk.

mod fixture;
mod harness;

mod clients;
mod core;
mod logs;
mod ops;
mod reliability;
