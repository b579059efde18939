//! `schoolgate check`: the same decision the server makes, explained.

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use schoolgate::config::Config;
use schoolgate::domain::QueryName;
use schoolgate::policy::{Action, Engine, Rule};
use serde_json::json;

use crate::cli::CheckArgs;

pub fn run(config_path: &Path, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = Arc::new(Config::load(config_path)?);
    let engine = Engine::load(config)?.engine;
    let name = QueryName::parse(&args.domain)
        .with_context(|| format!("{:?} is not a domain name", args.domain))?;
    let addr: IpAddr = match &args.client {
        Some(c) => engine
            .find_client(c)
            .with_context(|| format!("no client named {c:?} in the config, and it is not an address"))?,
        None => IpAddr::from([127, 0, 0, 1]),
    };
    let client = engine.identify(addr);
    let d = engine.decide(&client, &name, chrono::Utc::now());
    let category = d
        .category
        .and_then(|c| engine.categories().get(c as usize))
        .map(|c| c.name.clone());
    let origin = engine.origin(&name, &d.rule);
    let group = engine.group_name(d.group).to_string();
    let schedule = d.schedule.and_then(|s| engine.schedule_name(d.group, s)).map(str::to_string);
    let client_name = engine.client_name(&client).map(str::to_string);
    let rule = match (&d.rule, &origin) {
        (Rule::Unlisted, _) => "unlisted".to_string(),
        (Rule::Listed { allow: true, .. }, Some(o)) => format!("allow {}", o.entry),
        (Rule::Listed { .. }, Some(o)) => o.entry.clone(),
        (Rule::Listed { .. }, None) => "listed".to_string(),
    };

    if args.json {
        let v = json!({
            "name": name.as_str(),
            "action": d.action.as_str(),
            "category": category,
            "rule": rule,
            "list": origin.as_ref().map(|o| o.list.clone()),
            "file": origin.as_ref().map(|o| o.file.display().to_string()),
            "line": origin.as_ref().map(|o| o.line),
            "client": addr.to_string(),
            "client_name": client_name,
            "group": group,
            "schedule": schedule,
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let verdict = match d.action {
        Action::Block => "BLOCKED",
        Action::Allow => "ALLOWED",
    };
    println!("{}: {verdict}", name.as_str());
    if let Some(c) = &category {
        println!("  category: {c}");
    }
    match &origin {
        Some(o) => println!("  rule:     {rule}  ({}, list {})", o.location(), o.list),
        None => println!("  rule:     {rule}"),
    }
    println!(
        "  client:   {addr}{}, group {group}{}",
        client_name.map(|n| format!(" ({n})")).unwrap_or_default(),
        schedule.map(|s| format!(", schedule {s:?}")).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
