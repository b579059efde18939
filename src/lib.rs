//! schoolgate: a filtering DNS resolver for schools.
//!
//! The binary (`src/main.rs`) only parses the command line; everything it runs is here, so the
//! tests, the benchmarks and `schoolgate check` use the same engine the server does.
//!
//! # Layout
//! - [`server`]: UDP and TCP listeners and the query handler, where a query is decided and
//!   answered ([`server::Handler`]).
//! - [`policy`]: the decision itself ([`policy::Engine::decide`]), over an immutable snapshot.
//! - [`domain`]: the one place names are normalised and turned into lookup keys.
//! - [`lists`]: list formats, compilation with an on-disk cache, the merged index.
//! - [`keywords`], [`safesearch`]: keyword rules and search-engine rewrites in the decision.
//! - [`clients`], [`leases`], [`exemptions`]: who asked, their group, approved exemptions.
//! - [`config`]: the configuration file, validated with file, line and field in every error.
//! - [`wire`], [`cache`], [`upstream`]: DNS bytes, the answer cache, forwarding.
//! - [`zones`]: names answered here (`localhost`, private reverse zones) or forwarded to the
//!   school's own DNS.
//! - [`reload`]: watching files, compiling in a child process, swapping in a new engine.
//! - [`journal`]: access, breach and notice logs, off the query path.
//! - [`timezone`]: the school's time zone, from the system's tz database.
//! - [`sched`]: short scheduler slices for the threads that answer and log.
//! - [`report`], [`alerts`], [`mail`]: the daily summary, immediate alerts, email.
//! - [`changes`]: the change-control log of every filtering change.
//! - [`metrics`], [`admin`], [`ratelimit`]: operations.

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
pub mod sched;
pub mod server;
pub mod timezone;
pub mod upstream;
pub mod wire;
pub mod zones;
