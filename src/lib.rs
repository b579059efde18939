//! schoolgate: a filtering DNS resolver for schools.
//!
//! # Layout
//! - [`domain`]: the one place names are normalised and turned into lookup keys.
//! - [`lists`]: list formats, FST compilation with an on-disk cache, the merged index.

pub mod cache;
pub mod changes;
pub mod clients;
pub mod config;
pub mod domain;
pub mod lists;
pub mod policy;
pub mod reload;
pub mod server;
pub mod upstream;
pub mod wire;
