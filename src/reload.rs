//! Hot reload: watch the config and list directories, rebuild off the query path, swap whole.
//!
//! Directories are watched rather than files because editors and deploy tools save by writing a
//! temporary file and renaming it over the original, which a watch on the file itself would
//! miss. Events are debounced so a burst of writes becomes one reload. A reload that fails for
//! any reason (bad config, unreadable list) leaves the running engine in force: the server never
//! drops to "no filtering" because of an edit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::mpsc;

use crate::changes::{Change, ChangeLog};
use crate::config::Config;
use crate::policy::{Engine, Loaded};
use crate::server::Handler;

/// How a config is adjusted after reading (command-line overrides).
pub type Adjust = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// Loads config and lists into a new engine (blocking: compiles lists). Errors are strings
/// meant for the operator: they already name the file and line.
pub fn load(config_path: &Path, adjust: &Adjust) -> Result<Loaded, String> {
    let mut config = Config::load(config_path).map_err(|e| e.to_string())?;
    adjust(&mut config);
    Engine::load(Arc::new(config)).map_err(|e| e.to_string())
}

/// What asked for a reload, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A watched file changed.
    Files,
    /// SIGHUP.
    Signal,
    /// A remote source downloaded a new copy.
    Remote,
}

/// Outcome of one reload attempt, for logs and metrics.
#[derive(Debug)]
pub enum ReloadResult {
    /// The new engine is in force.
    Applied {
        /// Lists recompiled.
        recompiled: Vec<String>,
        /// How long building took.
        took: Duration,
        /// What the change-control log recorded for it.
        changes: Vec<Change>,
    },
    /// The old engine stays in force.
    Failed(String),
}

/// Rebuilds and swaps. Runs the compile on a blocking thread so no query waits on it.
pub async fn reload(handler: &Handler, config_path: &Path, adjust: &Adjust) -> ReloadResult {
    let started = std::time::Instant::now();
    let path = config_path.to_path_buf();
    let adj = adjust.clone();
    let loaded = tokio::task::spawn_blocking(move || load(&path, &adj))
        .await
        .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
    match loaded {
        Ok(loaded) => {
            for bad in &loaded.bad {
                tracing::warn!("{bad}");
            }
            let recompiled = loaded.recompiled.clone();
            let config = loaded.engine.config().clone();
            handler.replace_engine(Arc::new(loaded.engine));
            let took = started.elapsed();
            let changes = tokio::task::spawn_blocking(move || record_changes(&config))
                .await
                .unwrap_or_default();
            ReloadResult::Applied {
                recompiled,
                took,
                changes,
            }
        }
        Err(e) => ReloadResult::Failed(e),
    }
}

/// Diffs every list file against its snapshot and appends what changed to the change-control
/// log (blocking: reads the changed files). Called once the lists it describes are in force.
pub fn record_changes(config: &Config) -> Vec<Change> {
    let (changes, errors) = ChangeLog::new(config).record_all(config);
    for e in errors {
        tracing::error!("change-control log: {e}");
    }
    for c in &changes {
        tracing::info!(
            by = %c.by,
            list = %c.category,
            file = %c.file.display(),
            added = c.added_count,
            removed = c.removed_count,
            "list changed"
        );
    }
    changes
}

/// Keeps the filesystem watcher alive; dropping it stops watching.
pub struct Watch {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

/// Watches the config's directory and the list directory; sends [`Trigger::Files`] on relevant
/// changes.
pub fn watch(config: &Config, tx: mpsc::Sender<Trigger>) -> Result<Watch, notify::Error> {
    let mut debouncer = new_debouncer(
        Duration::from_millis(300),
        None,
        move |res: DebounceEventResult| {
            let relevant = match res {
                Ok(events) => events
                    .iter()
                    .any(|e| e.paths.iter().any(|p| is_relevant(p))),
                // Overflow or watcher errors: safest is to reload everything.
                Err(_) => true,
            };
            if relevant {
                let _ = tx.try_send(Trigger::Files);
            }
        },
    )?;
    let mut dirs: Vec<PathBuf> = vec![config.lists_dir.clone()];
    if let Some(dir) = config.path.parent() {
        dirs.push(dir.to_path_buf());
    }
    for c in &config.categories {
        for f in &c.files {
            if let Some(d) = f.parent() {
                dirs.push(d.to_path_buf());
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        let d = if d.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            d
        };
        debouncer.watch(&d, RecursiveMode::NonRecursive)?;
    }
    Ok(Watch {
        _debouncer: debouncer,
    })
}

/// Editor droppings and our own temporary files are not edits.
fn is_relevant(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !(name.ends_with(".tmp")
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.starts_with(".#")
        || name == "4913"
        || name.ends_with(".fst")
        || name.ends_with(".keys")
        || name.ends_with(".meta.json")
        || name.ends_with(".meta"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_editor_and_cache_files() {
        assert!(is_relevant(Path::new("blocklists/adult.txt")));
        assert!(is_relevant(Path::new("config/schoolgate.toml")));
        assert!(!is_relevant(Path::new("blocklists/.adult.txt.swp")));
        assert!(!is_relevant(Path::new("blocklists/4913")));
        assert!(!is_relevant(Path::new("state/adult.fst")));
    }
}
