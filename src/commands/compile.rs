//! `schoolgate compile`: build the FST cache ahead of time and report bad lines.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use schoolgate::config::Config;
use schoolgate::policy::Engine;

pub fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = Arc::new(Config::load(config_path)?);
    let loaded = Engine::load(config)?;
    for bad in &loaded.bad {
        eprintln!("warning: {bad}");
    }
    for list in loaded.engine.lists() {
        println!(
            "{:<16} {:>9} names  {}",
            list.name,
            list.len(),
            if list.recompiled { "compiled" } else { "up to date" }
        );
    }
    println!("{} distinct names in the index", loaded.engine.index_len());
    Ok(ExitCode::SUCCESS)
}
