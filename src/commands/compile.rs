//! `schoolgate compile`: build the FST cache ahead of time and report bad lines.
//!
//! `serve` runs this too, as a child process, whenever lists changed (see `reload`).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use schoolgate::config::Config;
use schoolgate::policy::Engine;
use schoolgate::reload::CompileOutcome;

use crate::cli::CompileArgs;

pub fn run(config_path: &Path, args: CompileArgs) -> anyhow::Result<ExitCode> {
    let config = Arc::new(Config::load(config_path)?);
    if args.json {
        let (outcome, code) = match Engine::load(config) {
            Ok(loaded) => (
                CompileOutcome::Compiled {
                    recompiled: loaded.recompiled,
                    names: loaded.engine.index_len(),
                },
                ExitCode::SUCCESS,
            ),
            Err(e) => (
                CompileOutcome::Failed {
                    error: e.to_string(),
                },
                ExitCode::FAILURE,
            ),
        };
        println!("{}", serde_json::to_string(&outcome)?);
        return Ok(code);
    }
    let loaded = Engine::load(config)?;
    for bad in &loaded.bad {
        eprintln!("warning: {bad}");
    }
    for list in loaded.engine.lists() {
        println!(
            "{:<16} {:>9} names  {}",
            list.name,
            list.len(),
            if list.recompiled {
                "compiled"
            } else {
                "up to date"
            }
        );
    }
    println!("{} distinct names in the index", loaded.engine.index_len());
    Ok(ExitCode::SUCCESS)
}
