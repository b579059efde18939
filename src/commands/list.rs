//! `schoolgate list add|remove|show` and `schoolgate allow`: a technician's edits, written to
//! the text list files (so a running server picks them up by itself) and recorded in the
//! change-control log with who made them and why.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use schoolgate::changes::{Actor, ChangeLog};
use schoolgate::config::Config;
use schoolgate::domain::normalise;
use schoolgate::lists::{add_to_file, parse, remove_from_file, EntryKind};

use crate::cli::{AllowArgs, Author, ListCommand};

/// The list a category name refers to.
struct Target {
    name: String,
    /// Files a technician may edit.
    local: Vec<PathBuf>,
    /// Every file it compiles from (local files and remote copies).
    all: Vec<PathBuf>,
}

#[derive(Clone, Copy)]
enum Op {
    Add,
    Remove,
}

pub fn run(config_path: &Path, cmd: ListCommand) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    match cmd {
        ListCommand::Add(a) => edit(&config, &a.category, &a.domains, &a.author, Op::Add),
        ListCommand::Remove(a) => edit(&config, &a.category, &a.domains, &a.author, Op::Remove),
        ListCommand::Show { category } => show(&config, &category),
    }
}

pub fn allow(config_path: &Path, args: AllowArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    edit(&config, "allow", &args.domains, &args.author, Op::Add)
}

fn target(config: &Config, category: &str) -> anyhow::Result<Target> {
    if category == "allow" {
        let Some(file) = &config.allow_file else {
            bail!(
                "no allow list is configured; set `allow = \"allow.txt\"` under [lists] in {}",
                config.path.display()
            );
        };
        return Ok(Target {
            name: "allow".into(),
            local: vec![file.clone()],
            all: vec![file.clone()],
        });
    }
    let Some(c) = config.category(category) else {
        let mut known: Vec<&str> = config.categories.iter().map(|c| c.name.as_str()).collect();
        if config.allow_file.is_some() {
            known.push("allow");
        }
        bail!(
            "no category named {category:?}; known: {}",
            known.join(", ")
        );
    };
    Ok(Target {
        name: c.name.clone(),
        local: c.files.clone(),
        all: c.sources_on_disk(),
    })
}

/// Normalises every name, reporting all the bad ones at once.
fn names(domains: &[String]) -> anyhow::Result<Vec<String>> {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for d in domains {
        match normalise(d.strip_prefix("*.").unwrap_or(d)) {
            Ok(n) => good.push(n),
            Err(e) => bad.push(format!("  {d:?}: {e}")),
        }
    }
    if !bad.is_empty() {
        bail!("not a domain name, nothing changed:\n{}", bad.join("\n"));
    }
    Ok(good)
}

fn edit(
    config: &Config,
    category: &str,
    domains: &[String],
    author: &Author,
    op: Op,
) -> anyhow::Result<ExitCode> {
    let target = target(config, category)?;
    let names = names(domains)?;
    let Some(first) = target.local.first() else {
        bail!(
            "category {:?} has only remote sources, which are replaced on every refresh; add a local file to its `files` in {}, or lift a name with `schoolgate allow`",
            target.name,
            config.path.display()
        );
    };
    if author.by.trim().is_empty() || author.reason.trim().is_empty() {
        bail!("--by and --reason must not be empty: the change-control log needs both");
    }
    for f in &target.local {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        let parsed = parse(f, &bytes);
        if let (true, Some(first)) = (
            parsed.entries.is_empty() && parsed.keywords.is_empty(),
            parsed.bad.first(),
        ) {
            bail!("{first}: no line of {} is usable, so the server is not using it; fix the file first", f.display());
        }
    }
    let log = ChangeLog::new(config);
    let lock = log.lock()?;
    // Hand edits made since the last record are recorded as such, not credited to this command.
    for f in &target.local {
        log.record(&lock, &target.name, f, &target.all, Actor::FileEdit)?;
    }
    let done = match op {
        Op::Add => add_to_file(first, &names)?,
        Op::Remove => {
            let mut removed = Vec::new();
            for f in &target.local {
                removed.extend(remove_from_file(f, &names)?);
            }
            removed
        }
    };
    let by = Actor::Person {
        by: author.by.trim(),
        reason: author.reason.trim(),
    };
    for f in &target.local {
        log.record(&lock, &target.name, f, &target.all, by)?;
    }
    drop(lock);

    let untouched: Vec<&String> = names.iter().filter(|n| !done.contains(n)).collect();
    let (verb, missing) = match op {
        Op::Add => ("added to", "already listed"),
        Op::Remove => ("removed from", "not in the local list files"),
    };
    for n in &done {
        println!("{n}: {verb} {} ({})", target.name, first.display());
    }
    for n in &untouched {
        println!("{n}: {missing}");
    }
    if let Op::Remove = op {
        if !untouched.is_empty() && target.all.len() > target.local.len() {
            println!("names that come from a remote source can be lifted with `schoolgate allow`");
        }
        if done.is_empty() {
            return Ok(ExitCode::FAILURE);
        }
    }
    if !done.is_empty() {
        println!("recorded in {}", log.path().display());
    }
    Ok(ExitCode::SUCCESS)
}

fn show(config: &Config, category: &str) -> anyhow::Result<ExitCode> {
    let target = target(config, category)?;
    let mut bad = 0;
    for file in &target.all {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let parsed = parse(file, &bytes);
        for e in &parsed.entries {
            let prefix = if e.kind == EntryKind::Allow { "@@" } else { "" };
            println!("{prefix}{}\t{}:{}", e.name, file.display(), e.line);
        }
        for k in &parsed.keywords {
            println!("keyword:{}\t{}:{}", k.text, file.display(), k.line);
        }
        for b in &parsed.bad {
            eprintln!("warning: {b}");
        }
        bad += parsed.bad_count;
    }
    if bad > 0 {
        eprintln!("{bad} bad lines skipped");
    }
    Ok(ExitCode::SUCCESS)
}
