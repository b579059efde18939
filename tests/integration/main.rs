//! Integration tests: the real `schoolgate` binary on loopback, a real upstream DNS server
//! (the fixture), and real DNS clients (hickory-proto over sockets, and `dig`).
//!
//! - `core`: serving, sinkhole answers, forwarding, access control, `check`, config errors.
//! - `lists`: hot reload, bad lists kept out, list edits, the change-control log, remote sources.

mod fixture;
mod harness;

mod core;
mod http;
mod lists;
