//! The decision: given who asked, what name, and when, what happens. One function, no I/O.
//!
//! An [`Engine`] is an immutable snapshot of the configuration and the compiled lists. The
//! server holds one behind an `ArcSwap` and a reload swaps in a whole new one, so a query always
//! sees a consistent set of lists, groups and schedules. `schoolgate check` builds the same
//! engine and calls the same [`Engine::decide`], so what a technician sees is what a device gets.
//!
//! Order of precedence, highest first:
//! 1. locked categories (illegal content): blocked for everyone, always;
//! 2. the allow list (and `@@` exceptions);
//! 3. the group's blocked categories, as varied by its active schedule;
//! 4. keyword rules, for names no list matched.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Utc};
use thiserror::Error;

use crate::clients::{ClientId, Clients};
use crate::config::{Config, DEFAULT_GROUP};
use crate::domain::QueryName;
use crate::lists::{compile_list, BadLine, CompiledList, DomainIndex, ListError, Matches};

/// Why an engine could not be built.
#[derive(Debug, Error)]
pub enum LoadError {
    /// A list failed to compile or map.
    #[error(transparent)]
    List(#[from] ListError),
    /// Nothing to filter with, and the config does not allow starting open.
    #[error("no block list could be loaded; refusing to run unfiltered (set server.start_unfiltered = true to override)")]
    NoLists,
}

/// What happens to a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward upstream.
    Allow,
    /// Sinkhole answer.
    Block,
}

impl Action {
    /// The word used in logs, metrics and `check --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Block => "block",
        }
    }
}

/// Why the decision was made, precisely enough to name the list line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Nothing matched.
    Unlisted,
    /// A list entry (`key_len` bytes of the reversed query key) in list `list`.
    Listed {
        /// Index into [`Engine::lists`].
        list: u8,
        /// Length of the matched reversed key.
        key_len: u8,
        /// The entry was an exception (`@@`, allow list).
        allow: bool,
    },
}

/// The outcome of [`Engine::decide`]. Small and `Copy`: the query path builds one per query.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// The category that blocked (index into [`Engine::categories`]).
    pub category: Option<u8>,
    /// The rule that decided.
    pub rule: Rule,
    /// The client's group.
    pub group: u16,
    /// The schedule in force, if any (index into the group's schedules).
    pub schedule: Option<u8>,
}

/// A category as the engine sees it.
#[derive(Debug, Clone)]
pub struct CategoryInfo {
    /// Its name.
    pub name: String,
    /// Never lifted.
    pub locked: bool,
    /// Raises an immediate alert.
    pub alert: bool,
    /// Its list index (bit) in the domain index.
    pub list: usize,
}

struct SchedulePolicy {
    name: String,
    days: u8,
    from: chrono::NaiveTime,
    to: chrono::NaiveTime,
    block: u32,
    unblock: u32,
}

struct GroupPolicy {
    name: String,
    block: u32,
    schedules: Vec<SchedulePolicy>,
}

/// An immutable snapshot of everything a decision needs.
pub struct Engine {
    config: Arc<Config>,
    lists: Vec<CompiledList>,
    index: DomainIndex,
    categories: Vec<CategoryInfo>,
    /// Category list bits that can never be lifted.
    locked: u32,
    /// Block bits that mean "allowed" (the allow list's own bit).
    allow_lists: u32,
    groups: Vec<GroupPolicy>,
    default_group: u16,
    clients: Clients,
}

/// A loaded engine and what loading it noticed.
pub struct Loaded {
    /// The engine.
    pub engine: Engine,
    /// Bad lines across all lists (first few per list).
    pub bad: Vec<BadLine>,
    /// All bad lines.
    pub bad_count: usize,
    /// Lists that had to be compiled (the rest came from the cache).
    pub recompiled: Vec<String>,
}

impl Engine {
    /// Compiles (or maps from cache) every list the config names and builds the snapshot.
    pub fn load(config: Arc<Config>) -> Result<Loaded, LoadError> {
        let mut lists = Vec::new();
        let mut allow_lists = 0u32;
        if let Some(allow) = &config.allow_file {
            lists.push(compile_list("allow", std::slice::from_ref(allow), &config.cache_dir)?);
            allow_lists |= 1;
        }
        let mut categories = Vec::new();
        let mut locked = 0u32;
        for c in &config.categories {
            let list = lists.len();
            lists.push(compile_list(&c.name, &c.sources_on_disk(), &config.cache_dir)?);
            if c.locked {
                locked |= 1 << list;
            }
            categories.push(CategoryInfo {
                name: c.name.clone(),
                locked: c.locked,
                alert: c.alert,
                list,
            });
        }
        let blocking: usize = lists
            .iter()
            .enumerate()
            .filter(|(i, _)| allow_lists & (1 << i) == 0)
            .map(|(_, l)| l.len())
            .sum();
        if blocking == 0 && !config.start_unfiltered {
            return Err(LoadError::NoLists);
        }
        let index = DomainIndex::build(&lists, &config.cache_dir)?;

        let cat_mask = |names: &[String]| -> u32 {
            names
                .iter()
                .filter_map(|n| categories.iter().find(|c| &c.name == n))
                .fold(0, |m, c| m | (1 << c.list))
        };
        let groups: Vec<GroupPolicy> = config
            .groups
            .values()
            .map(|g| GroupPolicy {
                name: g.name.clone(),
                block: cat_mask(&g.block),
                schedules: g
                    .schedules
                    .iter()
                    .map(|s| SchedulePolicy {
                        name: s.name.clone(),
                        days: s
                            .days
                            .iter()
                            .fold(0, |m, d| m | (1 << d.num_days_from_monday())),
                        from: s.from,
                        to: s.to,
                        block: cat_mask(&s.block),
                        unblock: cat_mask(&s.unblock),
                    })
                    .collect(),
            })
            .collect();
        let group_index = |name: &str| groups.iter().position(|g| g.name == name);
        let default_group = group_index(DEFAULT_GROUP).unwrap_or(0) as u16;
        let clients = Clients::new(&config.clients, |g| {
            group_index(g).map_or(default_group, |i| i as u16)
        });

        let bad = lists.iter().flat_map(|l| l.bad.iter().cloned()).collect();
        let bad_count = lists.iter().map(|l| l.bad_count).sum();
        let recompiled = lists
            .iter()
            .filter(|l| l.recompiled)
            .map(|l| l.name.clone())
            .collect();
        Ok(Loaded {
            engine: Engine {
                config,
                lists,
                index,
                categories,
                locked,
                allow_lists,
                groups,
                default_group,
                clients,
            },
            bad,
            bad_count,
            recompiled,
        })
    }

    /// The configuration this snapshot was built from.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Categories in priority order.
    pub fn categories(&self) -> &[CategoryInfo] {
        &self.categories
    }

    /// The compiled lists, indexed by [`Rule::Listed::list`].
    pub fn lists(&self) -> &[CompiledList] {
        &self.lists
    }

    /// Distinct names across all lists.
    pub fn index_len(&self) -> usize {
        self.index.len()
    }

    /// Who a source address is.
    pub fn identify(&self, addr: IpAddr) -> ClientId {
        self.clients.identify(addr, self.default_group)
    }

    /// The configured name of a client, if it has one.
    pub fn client_name(&self, id: &ClientId) -> Option<&str> {
        self.clients.name(id)
    }

    /// An address for a client given as an address or a configured name.
    pub fn find_client(&self, client: &str) -> Option<IpAddr> {
        client
            .parse::<IpAddr>()
            .ok()
            .or_else(|| self.clients.by_name(client))
    }

    /// Group name by index.
    pub fn group_name(&self, group: u16) -> &str {
        self.groups
            .get(group as usize)
            .map_or(DEFAULT_GROUP, |g| g.name.as_str())
    }

    /// Schedule name by group and index.
    pub fn schedule_name(&self, group: u16, schedule: u8) -> Option<&str> {
        let g = self.groups.get(group as usize)?;
        Some(g.schedules.get(schedule as usize)?.name.as_str())
    }

    /// Decides one query. Pure and allocation-free: safe to call on the hot path.
    pub fn decide(&self, client: &ClientId, name: &QueryName, now: DateTime<Utc>) -> Decision {
        let (block_mask, schedule) = self.group_mask(client.group, now);
        let m = self.index.lookup(name.key());
        self.resolve(&m, client.group, schedule, block_mask)
    }

    /// The categories blocked for a group at an instant, and the schedule that set them.
    fn group_mask(&self, group: u16, now: DateTime<Utc>) -> (u32, Option<u8>) {
        let Some(g) = self.groups.get(group as usize) else {
            return (self.locked | self.all_categories(), None);
        };
        let mut mask = g.block;
        let mut active = None;
        if !g.schedules.is_empty() {
            let local = now.with_timezone(&self.config.time_zone);
            let day = 1u8 << local.weekday().num_days_from_monday();
            let time = local.time();
            if let Some((i, s)) = g
                .schedules
                .iter()
                .enumerate()
                .find(|(_, s)| s.days & day != 0 && s.from <= time && time < s.to)
            {
                mask = (mask | s.block) & !s.unblock;
                active = Some(i as u8);
            }
        }
        (mask | self.locked, active)
    }

    fn all_categories(&self) -> u32 {
        self.categories.iter().fold(0, |m, c| m | (1 << c.list))
    }

    fn resolve(&self, m: &Matches, group: u16, schedule: Option<u8>, block_mask: u32) -> Decision {
        let listed = (m.mask as u32) & !self.allow_lists;
        let blocked = listed & block_mask;
        let allow_bits = ((m.mask as u32) & self.allow_lists) as u64 | (m.mask & 0xFFFF_FFFF_0000_0000);
        let decide_block = |bits: u32| {
            let list = bits.trailing_zeros() as usize;
            let category = self.categories.iter().position(|c| c.list == list);
            let hit = m.hit_for(1 << list).unwrap_or_default();
            Decision {
                action: Action::Block,
                category: category.map(|c| c as u8),
                rule: Rule::Listed {
                    list: list as u8,
                    key_len: hit.key_len,
                    allow: false,
                },
                group,
                schedule,
            }
        };
        if blocked & self.locked != 0 {
            return decide_block(blocked & self.locked);
        }
        if allow_bits != 0 {
            let hit = m.hit_for(allow_bits).unwrap_or_default();
            let bit = (hit.mask & allow_bits).trailing_zeros();
            return Decision {
                action: Action::Allow,
                category: None,
                rule: Rule::Listed {
                    list: (bit % 32) as u8,
                    key_len: hit.key_len,
                    allow: true,
                },
                group,
                schedule,
            };
        }
        if blocked != 0 {
            return decide_block(blocked);
        }
        Decision {
            action: Action::Allow,
            category: None,
            rule: Rule::Unlisted,
            group,
            schedule,
        }
    }

    /// The list file and line behind a listed rule, for explanations and breach records.
    pub fn origin(&self, name: &QueryName, rule: &Rule) -> Option<Origin> {
        let Rule::Listed {
            list,
            key_len,
            allow,
        } = *rule
        else {
            return None;
        };
        let l = self.lists.get(list as usize)?;
        let key = &name.key()[..key_len as usize];
        // The allow list's entries are plain lines, stored as its "block" names.
        let exception = allow && self.allow_lists & (1 << list) == 0;
        let (file, line) = l.origin(key, exception)?;
        Some(Origin {
            list: l.name.clone(),
            entry: crate::domain::unreverse_key(key),
            file: file.to_path_buf(),
            line,
        })
    }
}

/// Where a rule came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The list's name.
    pub list: String,
    /// The listed name that matched (the query itself or a parent).
    pub entry: String,
    /// The file it is in.
    pub file: PathBuf,
    /// Its line.
    pub line: u32,
}

impl Origin {
    /// `file:line`.
    pub fn location(&self) -> String {
        format!("{}:{}", display_path(&self.file), self.line)
    }
}

fn display_path(p: &Path) -> String {
    p.display().to_string()
}
