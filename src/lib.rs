//! schoolgate: a filtering DNS resolver for schools.
//!
//! # Layout
//! - [`domain`]: the one place names are normalised and turned into lookup keys.
//! - [`lists`]: list formats, FST compilation with an on-disk cache, the merged index.

pub mod admin;
pub mod alerts;
pub mod cache;
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
