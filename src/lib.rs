//! schoolgate: a filtering DNS resolver for schools.
//!
//! # Layout
//! - [`domain`]: the one place names are normalised and turned into lookup keys.
//! - [`lists`]: list formats, compilation with an on-disk cache, the merged FST index.
//! - [`changes`]: the change-control log of every list change, diffed against per-file snapshots.

pub mod domain;
pub mod lists;
pub mod cache;
pub mod clients;
pub mod config;
pub mod policy;
pub mod upstream;
pub mod wire;
pub mod server;
pub mod reload;
pub mod changes;
