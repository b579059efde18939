//! `schoolgate exempt`: grant, list and withdraw approved exemptions.

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use chrono::Utc;
use schoolgate::clients::Clients;
use schoolgate::config::{parse_mac, Config};
use schoolgate::exemptions::{self, Exemption};
use schoolgate::leases;
use serde_json::json;

use super::time_arg;
use crate::cli::{ExemptAddArgs, ExemptCommand, ExemptRemoveArgs};

pub fn run(config_path: &Path, cmd: ExemptCommand) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    match cmd {
        ExemptCommand::Add(args) => add(&config, args),
        ExemptCommand::List(args) => list(&config, args.json),
        ExemptCommand::Remove(args) => remove(&config, args),
    }
}

fn add(config: &Config, args: ExemptAddArgs) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let until = time_arg::parse(&args.until, &config.time_zone)?;
    let client = args.client.trim().to_string();
    if !is_known(config, &client) {
        bail!(
            "no client {client:?} in the config or the DHCP leases; give its address, MAC, configured name or DHCP hostname"
        );
    }
    let ex = Exemption {
        client,
        categories: args
            .categories
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect(),
        until,
        approved_by: args.approved_by,
        reason: args.reason,
        added: now,
    };
    exemptions::add(config, ex.clone(), now)?;
    println!(
        "exemption added: {} may reach {} until {}, approved by {}; a running server applies it at once",
        ex.client,
        ex.categories.join(", "),
        until.with_timezone(&config.time_zone).format("%Y-%m-%d %H:%M %Z"),
        exemptions::approver(config, &ex.approved_by)?,
    );
    Ok(ExitCode::SUCCESS)
}

/// Addresses and MACs are always accepted; names must be a configured client or a DHCP hostname.
fn is_known(config: &Config, client: &str) -> bool {
    if client.parse::<IpAddr>().is_ok() || parse_mac(client).is_some() {
        return true;
    }
    let (leases, _) = leases::read_all(config);
    let clients = Clients::new(&config.clients, leases, |_| 0);
    clients.configured_named(client).next().is_some()
        || clients.leases_named(client).next().is_some()
}

fn list(config: &Config, as_json: bool) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let all = exemptions::load(&config.exemptions_file)?;
    let tz = &config.time_zone;
    for e in &all {
        let state = if e.until > now { "active" } else { "ended" };
        if as_json {
            println!(
                "{}",
                json!({
                    "client": e.client,
                    "categories": e.categories,
                    "until": e.until.with_timezone(tz).to_rfc3339(),
                    "approved_by": e.approved_by,
                    "reason": e.reason,
                    "added": e.added.with_timezone(tz).to_rfc3339(),
                    "state": state,
                })
            );
        } else {
            println!(
                "{}: {} until {} ({state}), approved by {}: {}",
                e.client,
                e.categories.join(", "),
                e.until.with_timezone(tz).format("%Y-%m-%d %H:%M %Z"),
                e.approved_by,
                e.reason
            );
        }
    }
    if all.is_empty() && !as_json {
        println!("no exemptions");
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(config: &Config, args: ExemptRemoveArgs) -> anyhow::Result<ExitCode> {
    let gone = exemptions::remove(
        config,
        &args.client,
        &args.approved_by,
        &args.reason,
        Utc::now(),
    )?;
    for e in gone {
        println!(
            "exemption withdrawn: {} ({})",
            e.client,
            e.categories.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
