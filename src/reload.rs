//! Hot reload: watch the config and list directories, rebuild off the query path, swap whole.
//!
//! Directories are watched rather than files because editors and deploy tools save by writing a
//! temporary file and renaming it over the original, which a watch on the file itself would
//! miss. Events are debounced so a burst of writes becomes one reload. A reload that fails for
//! any reason (bad config, unreadable list) leaves the running engine in force: the server never
//! drops to "no filtering" because of an edit.
//!
//! DHCP lease files and the exemptions file are watched too, but only those files: their
//! directories (`/var/lib/misc`, the state directory) hold other busy files. A lease change
//! rebuilds the snapshot like any edit, because a client's name and group must come from the same
//! snapshot as the decision that is logged with them; the lists are mapped from the compile cache
//! (nothing is recompiled), so this costs milliseconds.

use std::io::Read;
#[cfg(target_os = "linux")]
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::changes::{Change, ChangeLog};
use crate::config::Config;
use crate::policy::{Engine, Loaded};
use crate::server::Handler;

/// How a config is adjusted after reading (command-line overrides).
pub type Adjust = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// Where the heavy list work runs: compiling lists that changed, and diffing list files
/// against their snapshots for the change-control log.
#[derive(Debug, Clone)]
pub enum ListWork {
    /// In this process.
    InProcess,
    /// In child processes of this same program (`compile --json`, `changes --record --json`);
    /// the server then maps what the compile wrote. Compiling or diffing a million names takes
    /// tens of megabytes, which glibc would leave scattered over the server's heap (its resident
    /// memory after the next load was a sixth higher); and work that dies (out of memory, or a
    /// bug a hostile list finds) must not take the resolver down with it.
    Child(PathBuf),
}

/// What `schoolgate compile --json` prints.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompileOutcome {
    /// The lists and index are compiled.
    Compiled {
        /// Lists that had to be compiled.
        recompiled: Vec<String>,
        /// Distinct names in the index.
        names: usize,
    },
    /// They could not be; the message names the file and line.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// Loads config and lists into a new engine (blocking: compiles lists). Errors are strings
/// meant for the operator: they already name the file and line.
pub fn load(config_path: &Path, adjust: &Adjust, work: &ListWork) -> Result<Loaded, String> {
    let mut config = Config::load(config_path).map_err(|e| e.to_string())?;
    adjust(&mut config);
    let config = Arc::new(config);
    let mut compiled_apart = Vec::new();
    if let ListWork::Child(program) = work {
        for round in 0..=CHILD_ROUNDS {
            if let Some(mut loaded) =
                Engine::load_compiled(config.clone()).map_err(|e| e.to_string())?
            {
                add_names(&mut loaded.recompiled, compiled_apart);
                return Ok(loaded);
            }
            if round < CHILD_ROUNDS {
                let names = compile_in_child(program, config_path, config.list_work_timeout)?;
                add_names(&mut compiled_apart, names);
            }
        }
    }
    // Maps what is compiled and compiles here what still is not: every list without a child,
    // or lists saved again during each of the child's rounds.
    let mut loaded = Engine::load(config).map_err(|e| e.to_string())?;
    add_names(&mut loaded.recompiled, compiled_apart);
    Ok(loaded)
}

/// Adds list names to `into`, each once.
fn add_names(into: &mut Vec<String>, names: Vec<String>) {
    for name in names {
        if !into.contains(&name) {
            into.push(name);
        }
    }
}

/// Child compiles a load runs before compiling in this process. A list saved again while the
/// child compiled it is out of date when the child is done, and compiling it here cost the
/// server the memory the child is there to keep (peak RSS 59 MiB against 24 after a second
/// save three seconds into a 1,000,000-name reload); another round in a child costs only time.
const CHILD_ROUNDS: usize = 3;

/// Runs `program --config <config_path> compile --json`; the names of the lists it compiled.
fn compile_in_child(
    program: &Path,
    config_path: &Path,
    limit: Duration,
) -> Result<Vec<String>, String> {
    let out = run_child(program, config_path, &["compile", "--json"], limit)?;
    match serde_json::from_slice::<CompileOutcome>(&out.stdout) {
        Ok(CompileOutcome::Compiled { recompiled, .. }) if out.status.success() => Ok(recompiled),
        Ok(CompileOutcome::Failed { error }) => Err(error),
        _ => Err(child_failure(&out)),
    }
}

/// Runs `program --config <config_path> changes --record --json`: the changes it recorded (one
/// JSON object a line) and the errors it met.
fn record_in_child(
    program: &Path,
    config_path: &Path,
    limit: Duration,
) -> (Vec<Change>, Vec<String>) {
    let args = ["changes", "--record", "--json"];
    let out = match run_child(program, config_path, &args, limit) {
        Ok(out) => out,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let changes: Vec<Change> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut errors: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| l.trim_start_matches("schoolgate: ").to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if !out.status.success() && errors.is_empty() {
        errors.push(child_failure(&out));
    }
    (changes, errors)
}

/// The child's scheduling priority, below the server's (0): on a busy core queries go first.
#[cfg(target_os = "linux")]
const CHILD_NICENESS: libc::c_int = 10;

/// Runs `program --config <config_path> <args>` to completion, output captured; a child still
/// running after `limit` (a list on a hung mount) is killed and the work counted failed.
fn run_child(
    program: &Path,
    config_path: &Path,
    args: &[&str],
    limit: Duration,
) -> Result<Output, String> {
    let mut command = Command::new(program);
    command
        .arg("--config")
        .arg(config_path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and only makes system calls
    // (prctl, setpriority), which are async-signal-safe.
    #[cfg(target_os = "linux")]
    unsafe {
        command.pre_exec(|| {
            // The child must not outlive a server that was killed.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::setpriority(libc::PRIO_PROCESS, 0, CHILD_NICENESS);
            Ok(())
        });
    }
    let what = || format!("{} {}", program.display(), args.join(" "));
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", what()))?;
    let stdout = child.stdout.take().map(read_all);
    let stderr = child.stderr.take().map(read_all);
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(CHILD_POLL),
            Ok(None) => {
                let _ = child.kill();
                // Reaped apart: a child stuck in the kernel dies only when its read returns.
                std::thread::spawn(move || child.wait());
                return Err(format!(
                    "the list work ({}) was still running after {} and was stopped; if a list \
                     is on a network mount, check that it answers, or raise [lists] work_timeout",
                    what(),
                    humantime::format_duration(limit)
                ));
            }
            Err(e) => return Err(format!("cannot wait for {}: {e}", what())),
        }
    };
    let collected =
        |r: Option<JoinHandle<Vec<u8>>>| r.and_then(|r| r.join().ok()).unwrap_or_default();
    Ok(Output {
        status,
        stdout: collected(stdout),
        stderr: collected(stderr),
    })
}

/// How often a running child is checked on: a small share of a compile's time.
const CHILD_POLL: Duration = Duration::from_millis(5);

/// Reads a child's pipe to its end on a thread of its own, so neither pipe can fill and stall
/// the child while the other is read.
fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        out
    })
}

/// What a child that failed said, or how it ended.
fn child_failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = stderr.trim().trim_start_matches("schoolgate: ");
    if said.is_empty() {
        format!(
            "the list work ended early ({}); if the system log shows an out-of-memory kill, \
             free memory and save the list again",
            out.status
        )
    } else {
        said.to_string()
    }
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
pub async fn reload(
    handler: &Handler,
    config_path: &Path,
    adjust: &Adjust,
    work: &ListWork,
) -> ReloadResult {
    let started = std::time::Instant::now();
    let path = config_path.to_path_buf();
    let adj = adjust.clone();
    let load_work = work.clone();
    let loaded = tokio::task::spawn_blocking(move || load(&path, &adj, &load_work))
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
            let (path, work) = (config_path.to_path_buf(), work.clone());
            let changes =
                tokio::task::spawn_blocking(move || record_changes(&path, &config, &work))
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
pub fn record_changes(config_path: &Path, config: &Config, work: &ListWork) -> Vec<Change> {
    let (changes, errors) = match work {
        ListWork::InProcess => {
            let (changes, errors) = ChangeLog::new(config).record_all(config);
            (changes, errors.iter().map(ToString::to_string).collect())
        }
        ListWork::Child(program) => record_in_child(program, config_path, config.list_work_timeout),
    };
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

/// Watches the config's directory, the list directories, the lease files and the exemptions
/// file; sends [`Trigger::Files`] on relevant changes.
pub fn watch(config: &Config, tx: mpsc::Sender<Trigger>) -> Result<Watch, notify::Error> {
    let files = Watched::of(config);
    let dirs_of_files = files.dirs();
    let edit_dirs = files.other_dirs.clone();
    let mut debouncer = new_debouncer(
        Duration::from_millis(300),
        None,
        move |res: DebounceEventResult| {
            let relevant = match res {
                // Reading a file is not an edit: without this, every reload's own reads (an
                // inotify OPEN) would trigger the next reload, forever.
                Ok(events) => events.iter().filter(|e| !e.kind.is_access()).any(|e| {
                    e.paths
                        .iter()
                        .any(|p| files.contains(p) || (files.is_other_dir(p) && is_relevant(p)))
                }),
                // Overflow or watcher errors: safest is to reload everything.
                Err(_) => true,
            };
            if relevant {
                let _ = tx.try_send(Trigger::Files);
            }
        },
    )?;
    for d in &edit_dirs {
        debouncer.watch(d, RecursiveMode::NonRecursive)?;
    }
    for d in dirs_of_files.iter().filter(|d| !edit_dirs.contains(d)) {
        if let Err(e) = debouncer.watch(d, RecursiveMode::NonRecursive) {
            tracing::warn!(
                "cannot watch {} ({e}); reload with SIGHUP after changes there",
                d.display()
            );
        }
    }
    Ok(Watch {
        _debouncer: debouncer,
    })
}

/// What is watched, canonicalised so event paths compare: directories where any edit counts
/// (config, lists), and single files in directories that are otherwise none of our business.
struct Watched {
    files: Vec<PathBuf>,
    other_dirs: Vec<PathBuf>,
}

impl Watched {
    fn of(config: &Config) -> Self {
        if let Some(dir) = config.exemptions_file.parent() {
            // The state directory may not exist before the first exemption; watch it anyway.
            let _ = std::fs::create_dir_all(dir);
        }
        let files = config
            .dhcp_leases
            .iter()
            .chain(std::iter::once(&config.exemptions_file))
            .filter_map(|f| Some(canonical_dir(f.parent()?)?.join(f.file_name()?)))
            .collect();
        let mut other_dirs = vec![config.lists_dir.clone()];
        other_dirs.extend(config.path.parent().map(Path::to_path_buf));
        for f in config.categories.iter().flat_map(|c| &c.files).chain(
            config
                .groups
                .values()
                .flat_map(|g| g.allow_files.iter().chain(&g.block_files)),
        ) {
            other_dirs.extend(f.parent().map(Path::to_path_buf));
        }
        let mut other_dirs: Vec<PathBuf> =
            other_dirs.iter().filter_map(|d| canonical_dir(d)).collect();
        other_dirs.sort();
        other_dirs.dedup();
        Watched { files, other_dirs }
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let mut d: Vec<PathBuf> = self
            .files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        d.sort();
        d.dedup();
        d
    }

    fn contains(&self, p: &Path) -> bool {
        self.files.iter().any(|f| f == p)
            || self.canonical(p).is_some_and(|c| self.files.contains(&c))
    }

    fn is_other_dir(&self, p: &Path) -> bool {
        self.canonical(p)
            .and_then(|c| c.parent().map(|d| self.other_dirs.iter().any(|o| o == d)))
            .unwrap_or(false)
    }

    fn canonical(&self, p: &Path) -> Option<PathBuf> {
        Some(canonical_dir(p.parent()?)?.join(p.file_name()?))
    }
}

fn canonical_dir(d: &Path) -> Option<PathBuf> {
    let d = if d.as_os_str().is_empty() {
        Path::new(".")
    } else {
        d
    };
    d.canonicalize().ok()
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
    fn lease_and_exemption_files_are_watched_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["config", "lists", "dhcp", "state"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("lists/adult.txt"), "").unwrap();
        let text = "[lists]\ndir = \"../lists\"\n[dhcp]\nleases = [\"../dhcp/dnsmasq.leases\"]\n\
                    [[category]]\nname = \"adult\"\nfiles = [\"adult.txt\"]\n";
        let config = Config::from_toml(&root.join("config/schoolgate.toml"), text).unwrap();
        let w = Watched::of(&config);
        let relevant = |p: &str| {
            w.contains(&root.join(p))
                || (w.is_other_dir(&root.join(p)) && is_relevant(&root.join(p)))
        };
        assert!(relevant("dhcp/dnsmasq.leases"));
        assert!(!relevant("dhcp/dhcpd.pid"));
        assert!(relevant("state/exemptions.json"));
        assert!(!relevant("state/exemptions.lock"));
        assert!(relevant("lists/adult.txt"));
        assert!(relevant("config/schoolgate.toml"));
    }

    #[test]
    fn ignores_editor_and_cache_files() {
        assert!(is_relevant(Path::new("blocklists/adult.txt")));
        assert!(is_relevant(Path::new("config/schoolgate.toml")));
        assert!(!is_relevant(Path::new("blocklists/.adult.txt.swp")));
        assert!(!is_relevant(Path::new("blocklists/4913")));
        assert!(!is_relevant(Path::new("state/adult.fst")));
    }
}
