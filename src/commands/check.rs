//! `schoolgate check`: the same decision the server makes, explained.

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use schoolgate::config::Config;
use schoolgate::domain::QueryName;
use schoolgate::policy::{Action, Engine, Rule};
use schoolgate::zones::{Route, Zones};
use serde_json::json;

use crate::cli::CheckArgs;

pub fn run(config_path: &Path, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = Arc::new(Config::load(config_path)?);
    let engine = Engine::load(config)?.engine;
    let name = QueryName::parse(&args.domain)
        .with_context(|| format!("{:?} is not a domain name", args.domain))?;
    let client = match &args.client {
        Some(c) => engine.find_client(c).with_context(|| {
            format!("no client {c:?} in the config or the DHCP leases, and it is not an address")
        })?,
        None => engine.identify(IpAddr::from([127, 0, 0, 1])),
    };
    let addr = client.addr;
    let at = match &args.at {
        Some(t) => super::time_arg::parse(t, &engine.config().time_zone)?,
        None => chrono::Utc::now(),
    };
    let d = engine.decide(&client, &name, at);
    let tz = &engine.config().time_zone;
    let exemption = d
        .exemption
        .and_then(|e| engine.exemptions().get(e as usize));
    let category = d
        .category
        .and_then(|c| engine.categories().get(c as usize))
        .map(|c| c.name.clone());
    let origin = engine.origin(&name, &d.rule);
    let group = engine.group_name(d.group).to_string();
    let schedule = d
        .schedule
        .and_then(|s| engine.schedule_name(d.group, s))
        .map(str::to_string);
    let client_name = engine.client_name(&client).map(str::to_string);
    let rule = match (&d.rule, &origin) {
        (Rule::Unlisted, _) => "unlisted".to_string(),
        (Rule::Listed { allow: true, .. }, Some(o)) => format!("allow {}", o.entry),
        (Rule::Listed { .. } | Rule::Keyword { .. }, Some(o)) => o.entry.clone(),
        (Rule::Listed { .. } | Rule::Keyword { .. }, None) => "listed".to_string(),
        (Rule::SafeSearch { .. } | Rule::UnsafeSearch | Rule::Canary, _) => {
            engine.rule_label(&d.rule).unwrap_or_default()
        }
    };
    let target = engine.rewrite_target(&d.rule).map(str::to_string);
    let zones = Zones::new(
        &engine.config().forwards,
        engine.config().upstream_timeout,
        None,
    );
    // Where an allowed name's answer comes from: a technician setting up `[[forward]]` checks it.
    let answered_by = (d.action == Action::Allow).then(|| match zones.route(&name) {
        None => "the upstreams".to_string(),
        Some(Route::Local { .. }) => "schoolgate itself (a name only for this network)".to_string(),
        Some(Route::Forward { zone, upstream }) => {
            let servers: Vec<String> = upstream
                .health()
                .iter()
                .map(|(a, _)| a.to_string())
                .collect();
            format!("the school's DNS for {zone} ({})", servers.join(", "))
        }
    });
    let keyword = match d.rule {
        Rule::Keyword { rule, at } => engine.keyword_rules().get(rule as usize).map(|k| {
            let (at, end) = (at as usize, at as usize + k.word.len());
            (k.word.clone(), k.token, at, end)
        }),
        _ => None,
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
            "target": target,
            "answered_by": answered_by,
            "keyword": keyword.as_ref().map(|(word, token, at, end)| json!({
                "word": word, "token_only": token, "at": at, "end": end,
            })),
            "at": at.with_timezone(tz).to_rfc3339(),
            "exemption": exemption.map(|e| json!({
                "client": e.client,
                "categories": e.categories,
                "until": e.until.with_timezone(tz).to_rfc3339(),
                "approved_by": e.approved_by,
                "reason": e.reason,
            })),
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let verdict = match (d.action, &target) {
        (Action::Block, _) => "BLOCKED".to_string(),
        (Action::Allow, _) => "ALLOWED".to_string(),
        (Action::Rewrite, Some(t)) => format!("REWRITTEN to {t}"),
        (Action::Rewrite, None) => "REWRITTEN".to_string(),
        (Action::Nxdomain, _) => "NXDOMAIN".to_string(),
    };
    println!("{}: {verdict}", name.as_str());
    if let Some(c) = &category {
        println!("  category: {c}");
    }
    match &origin {
        Some(o) => println!("  rule:     {rule}  ({}, list {})", o.location(), o.list),
        None => println!("  rule:     {rule}"),
    }
    if let Some((word, token, at, end)) = &keyword {
        let n = name.as_str();
        println!(
            "  matched:  {word:?} at {at}..{end}: {}[{}]{}{}",
            &n[..*at],
            &n[*at..*end],
            &n[*end..],
            if *token { " (whole token only)" } else { "" }
        );
    }
    match d.rule {
        Rule::SafeSearch { mode, .. } => {
            let source = engine.config().safesearch.file.as_ref().map_or("built-in data".to_string(), |f| f.display().to_string());
            println!("  safe search: {} mode for group {group}, CNAME plus the safe host's addresses ({source})", mode.as_str());
        }
        Rule::UnsafeSearch => println!("  why:      a search engine with no enforceable safe mode; group {group} has block_unsafe_search"),
        Rule::Canary => println!("  why:      devices ask this name before bypassing the school's DNS; NXDOMAIN keeps encrypted DNS and Private Relay off"),
        _ => {}
    }
    println!(
        "  client:   {addr}{}, group {group}{}",
        client_name.map(|n| format!(" ({n})")).unwrap_or_default(),
        schedule
            .map(|s| format!(", schedule {s:?}"))
            .unwrap_or_default()
    );
    if let Some(by) = &answered_by {
        println!("  answered: by {by}");
    }
    if let Some(e) = exemption {
        println!(
            "  exemption: {} lifted for {} until {}, approved by {}: {}",
            e.categories.join(", "),
            e.client,
            e.until.with_timezone(tz).format("%Y-%m-%d %H:%M %Z"),
            e.approved_by,
            e.reason
        );
    }
    if args.at.is_some() {
        println!(
            "  at:       {}",
            at.with_timezone(tz).format("%Y-%m-%d %H:%M %Z (%A)")
        );
    }
    Ok(ExitCode::SUCCESS)
}
