//! Integration tests: the real `schoolgate` binary on loopback, a real upstream DNS server
//! (the fixture), and real DNS clients (hickory-proto over sockets, and `dig`).
//!
//! - `core`: serving, sinkhole answers, forwarding, access control, `check`, config errors.
//! - `keywords`: keyword rules, their exceptions, hot reload and `check` explanations.
//! - `safesearch`: safe search rewrites per group, bypass canaries, circumvention blocking.

mod fixture;
mod harness;

mod core;
mod keywords;
mod safesearch;
