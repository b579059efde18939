//! schoolgate: a filtering DNS resolver for schools.
//!
//! # Layout
//! - [`domain`]: the one place names are normalised and turned into lookup keys.
//! - [`lists`]: list formats, compilation with an on-disk cache, the merged FST index.
//! - [`changes`]: the change-control log of every list change, diffed against per-file snapshots.

pub mod admin;
pub mod alerts;
pub mod cache;
pub mod changes;
pub mod clients;
pub mod config;
pub mod domain;
pub mod exemptions;
pub mod journal;
pub mod keywords;
pub mod leases;
pub mod lists;
pub mod mail;
pub mod metrics;
pub mod policy;
pub mod ratelimit;
pub mod reload;
pub mod report;
pub mod safesearch;
pub mod server;
pub mod upstream;
pub mod wire;
