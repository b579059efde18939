//! Integration tests: the real `schoolgate` binary on loopback, a real upstream DNS server
//! (the fixture), and real DNS clients (hickory-proto over sockets, and `dig`).
//!
//! - `core`: serving, sinkhole answers, forwarding, access control, `check`, config errors.

mod fixture;
mod harness;

mod core;
