//! The decision: given who asked, what name, and when, what happens. One function, no I/O.
//!
//! An [`Engine`] is an immutable snapshot of the configuration and the compiled lists. The
//! server holds one behind an `ArcSwap` and a reload swaps in a whole new one, so a query always
//! sees a consistent set of lists, groups and schedules. `schoolgate check` builds the same
//! engine and calls the same [`Engine::decide`], so what a technician sees is what a device gets.
//!
//! Order of precedence, highest first:
//! 1. bypass canaries (`use-application-dns.net`, iCloud Private Relay): NXDOMAIN for everyone;
//! 2. locked categories (illegal content): blocked for everyone, always;
//! 3. the allow list (and `@@` exceptions);
//! 4. the group's blocked categories, as varied by its active schedule and lifted by an
//!    approved exemption for the client;
//! 5. safe search: a search name not blocked above is rewritten to the vendor's safe host, and
//!    an engine with no enforceable safe mode is blocked for groups that ask (unless allowed);
//! 6. keyword rules, for names no list matched.
//!
//! A group's own allow and block lists (`allow_files`, `block_files`) are lists in the same
//! index whose bits count only for that group: its allow lists beside the school's, its block
//! lists beside its categories.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Utc};
use thiserror::Error;

use crate::clients::{ClientId, Clients};
use crate::config::{Config, DEFAULT_GROUP};
use crate::domain::QueryName;
use crate::exemptions::{self, Exemption};
use crate::keywords::{KeywordError, KeywordRule, Keywords, RuleSource};
use crate::leases::{self, Lease};
use crate::lists::{
    compile_list, open_compiled, BadLine, CompiledList, DomainIndex, ListError, Matches, NO_SLOT,
};
use crate::safesearch::{SafeSearchMode, SearchEngine, Special};
use crate::wire::ClientHint;

/// Why an engine could not be built.
#[derive(Debug, Error)]
pub enum LoadError {
    /// A list failed to compile or map.
    #[error(transparent)]
    List(#[from] ListError),
    /// Nothing to filter with, and the config does not allow starting open.
    #[error("no block list could be loaded; refusing to run unfiltered (set server.start_unfiltered = true to override)")]
    NoLists,
    /// The keyword rules could not be compiled.
    #[error(transparent)]
    Keywords(#[from] KeywordError),
}

/// What happens to a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward upstream.
    Allow,
    /// Sinkhole answer.
    Block,
    /// Answer with a CNAME to a safe host and its addresses (safe search).
    Rewrite,
    /// Answer NXDOMAIN whatever the upstream says (bypass canaries).
    Nxdomain,
}

impl Action {
    /// The word used in logs, metrics and `check --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Block => "block",
            Action::Rewrite => "rewrite",
            Action::Nxdomain => "nxdomain",
        }
    }

    /// Whether this outcome is a breach the coordinator must see (and never lose).
    pub fn is_breach(self) -> bool {
        matches!(self, Action::Block)
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
        /// Where the index table holds the entry ([`crate::lists::NO_SLOT`] if it does not).
        slot: u32,
    },
    /// A keyword rule fired on a name no list matched.
    Keyword {
        /// Index into [`Engine::keyword_rules`].
        rule: u16,
        /// Byte offset of the match in the name.
        at: u8,
    },
    /// A search name rewritten to its vendor's safe host.
    SafeSearch {
        /// Index into [`Engine::search_engines`].
        engine: u8,
        /// The group's mode (strict or moderate).
        mode: SafeSearchMode,
    },
    /// A search engine with no enforceable safe mode, blocked for this group.
    UnsafeSearch,
    /// A name devices ask before bypassing the school's DNS.
    Canary,
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
    /// The exemption that allowed it, if one did (index into [`Engine::exemptions`]).
    pub exemption: Option<u16>,
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
    safesearch: SafeSearchMode,
    block_unsafe_search: bool,
    /// The group's own lists, allow and block.
    lists: u32,
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
    /// Lists that belong to one group; other groups ignore their bits.
    group_lists: u32,
    default_group: u16,
    clients: Clients,
    keywords: Keywords,
    trusted_forwarders: Vec<ipnet::IpNet>,
    exemptions: Vec<Exemption>,
    exempt: exemptions::Table,
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
        let loaded = Self::assemble(config, true)?;
        Ok(loaded.expect("assemble compiles whatever is stale"))
    }

    /// As [`load`](Self::load), but only from lists and an index that are already compiled:
    /// `None` when something must be compiled first (`schoolgate compile`, or a child process
    /// the server starts, so the compile's memory is never the server's).
    pub fn load_compiled(config: Arc<Config>) -> Result<Option<Loaded>, LoadError> {
        Self::assemble(config, false)
    }

    /// Builds the snapshot; with `compile` false, stops with `None` at the first list or index
    /// that is not compiled.
    fn assemble(config: Arc<Config>, compile: bool) -> Result<Option<Loaded>, LoadError> {
        let open = |name: &str, sources: &[PathBuf]| -> Result<Option<CompiledList>, ListError> {
            if compile {
                compile_list(name, sources, &config.cache_dir).map(Some)
            } else {
                open_compiled(name, sources, &config.cache_dir)
            }
        };
        let mut lists = Vec::new();
        let mut allow_lists = 0u32;
        if let Some(allow) = &config.allow_file {
            let Some(l) = open("allow", std::slice::from_ref(allow))? else {
                return Ok(None);
            };
            lists.push(l);
            allow_lists |= 1;
        }
        let mut categories = Vec::new();
        let mut locked = 0u32;
        for c in &config.categories {
            let list = lists.len();
            let Some(l) = open(&c.name, &c.sources_on_disk())? else {
                return Ok(None);
            };
            lists.push(l);
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
        // Each group's own lists, after the categories so category bits stay the same.
        let mut group_bits = Vec::new();
        let mut group_lists = 0u32;
        for g in config.groups.values() {
            let (mut allow, mut block) = (0u32, 0u32);
            if !g.allow_files.is_empty() {
                let bit = 1 << lists.len();
                let name = format!("group:{}:allow", g.name);
                let Some(l) = open(&name, &g.allow_files)? else {
                    return Ok(None);
                };
                lists.push(l);
                allow_lists |= bit;
                allow |= bit;
            }
            if !g.block_files.is_empty() {
                let bit = 1 << lists.len();
                let name = format!("group:{}:block", g.name);
                let Some(l) = open(&name, &g.block_files)? else {
                    return Ok(None);
                };
                lists.push(l);
                block |= bit;
            }
            group_lists |= allow | block;
            group_bits.push((allow, block));
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
        let index = if compile {
            DomainIndex::build(&lists, &config.cache_dir)?
        } else {
            match DomainIndex::open(&lists, &config.cache_dir)? {
                Some(index) => index,
                None => return Ok(None),
            }
        };

        let cat_mask = |names: &[String]| -> u32 {
            names
                .iter()
                .filter_map(|n| categories.iter().find(|c| &c.name == n))
                .fold(0, |m, c| m | (1 << c.list))
        };
        let groups: Vec<GroupPolicy> = config
            .groups
            .values()
            .zip(group_bits)
            .map(|(g, (allow, own_block))| GroupPolicy {
                name: g.name.clone(),
                block: cat_mask(&g.block) | own_block,
                lists: allow | own_block,
                safesearch: g.safesearch,
                block_unsafe_search: g.block_unsafe_search,
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
        let clients = Clients::new(&config.clients, read_leases(&config), |g| {
            group_index(g).map_or(default_group, |i| i as u16)
        });
        let trusted_forwarders = config.trusted_forwarders.clone();
        let exemptions = exemptions::load(&config.exemptions_file).unwrap_or_else(|e| {
            tracing::error!("{e}");
            Vec::new()
        });
        let (exempt, unknown) =
            exemptions::Table::build(&exemptions, &clients, |c| cat_mask(c) & !locked);
        for c in unknown {
            tracing::warn!("exemption for {c:?} matches no configured client or DHCP lease; it applies when one appears");
        }

        let (keywords, keyword_bad) = build_keywords(&lists, allow_lists)?;
        let mut bad: Vec<BadLine> = lists.iter().flat_map(|l| l.bad.iter().cloned()).collect();
        let bad_count = lists.iter().map(|l| l.bad_count).sum::<usize>() + keyword_bad.len();
        bad.extend(keyword_bad);
        let recompiled = lists
            .iter()
            .filter(|l| l.recompiled)
            .map(|l| l.name.clone())
            .collect();
        Ok(Some(Loaded {
            engine: Engine {
                config,
                lists,
                index,
                categories,
                locked,
                allow_lists,
                groups,
                group_lists,
                default_group,
                clients,
                keywords,
                trusted_forwarders,
                exemptions,
                exempt,
            },
            bad,
            bad_count,
            recompiled,
        }))
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

    /// Drops the resident pages of this engine's mapped files. Readers still using it read
    /// them back from the page cache.
    pub fn release_pages(&self) {
        self.index.release_pages();
        for list in &self.lists {
            list.block.release();
            list.allow.release();
        }
    }

    /// Distinct names across all lists.
    pub fn index_len(&self) -> usize {
        self.index.len()
    }

    /// Who a source address is.
    pub fn identify(&self, addr: IpAddr) -> ClientId {
        self.clients.identify(addr, self.default_group)
    }

    /// Who a query is from: the source address, unless a trusted forwarder (the school's
    /// router) said which device it forwards for. Anyone else's hints are ignored.
    #[inline]
    pub fn identify_query(&self, addr: IpAddr, hint: Option<ClientHint>) -> ClientId {
        let Some(hint) = hint else {
            return self.identify(addr);
        };
        let addr = crate::clients::canonical(addr);
        if !self.trusted_forwarders.iter().any(|n| n.contains(&addr)) {
            return self.identify(addr);
        }
        match hint {
            ClientHint::Subnet(real) => self.identify(real),
            ClientHint::Mac(mac) => self.clients.identify_mac(mac, addr, self.default_group),
        }
    }

    /// What a client is called: its DHCP hostname and MAC, or its configured name.
    pub fn client_name(&self, id: &ClientId) -> Option<&str> {
        self.clients.name(id)
    }

    /// A client given as an address, a configured name, a DHCP hostname or a MAC.
    pub fn find_client(&self, client: &str) -> Option<ClientId> {
        match client.parse::<IpAddr>() {
            Ok(addr) => Some(self.identify(addr)),
            Err(_) => self.clients.find(client, self.default_group),
        }
    }

    /// Exemptions as loaded, indexed by [`Decision::exemption`].
    pub fn exemptions(&self) -> &[Exemption] {
        &self.exemptions
    }

    /// Number of groups (indices `0..group_count()`).
    pub fn group_count(&self) -> usize {
        self.groups.len()
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

    /// Keyword rules of all categories, indexed by [`Rule::Keyword::rule`].
    pub fn keyword_rules(&self) -> &[KeywordRule] {
        self.keywords.rules()
    }

    /// Search engines with a safe host, indexed by [`Rule::SafeSearch::engine`].
    pub fn search_engines(&self) -> &[SearchEngine] {
        self.config.safesearch.engines()
    }

    /// The host a rewrite decision answers with.
    pub fn rewrite_target(&self, rule: &Rule) -> Option<&str> {
        let Rule::SafeSearch { engine, mode } = *rule else {
            return None;
        };
        Some(self.search_engines().get(engine as usize)?.target(mode))
    }

    /// The rule's name in logs and `check` for rules that are not a list line (those are named
    /// by [`Engine::origin`]): `safesearch:google`, `unsafe_search`, `canary`.
    pub fn rule_label(&self, rule: &Rule) -> Option<String> {
        match *rule {
            Rule::SafeSearch { engine, .. } => self
                .search_engines()
                .get(engine as usize)
                .map(|e| format!("safesearch:{}", e.name)),
            Rule::UnsafeSearch => Some("unsafe_search".into()),
            Rule::Canary => Some("canary".into()),
            Rule::Unlisted | Rule::Listed { .. } | Rule::Keyword { .. } => None,
        }
    }

    /// What a block is called in answers and logs: the category, or why else it was blocked.
    pub fn block_reason(&self, d: &Decision) -> &str {
        match (d.category, d.rule) {
            (Some(c), _) => self
                .categories
                .get(c as usize)
                .map_or("policy", |c| c.name.as_str()),
            (None, Rule::UnsafeSearch) => "unsafe_search",
            (None, Rule::Canary) => "bypass_canary",
            _ => "policy",
        }
    }

    /// Decides one query. Pure and allocation-free: safe to call on the hot path.
    pub fn decide(&self, client: &ClientId, name: &QueryName, now: DateTime<Utc>) -> Decision {
        let group = client.group;
        let special = self.config.safesearch.lookup(name.as_str());
        if special == Some(Special::Canary) {
            return Decision {
                action: Action::Nxdomain,
                category: None,
                rule: Rule::Canary,
                group,
                schedule: None,
                exemption: None,
            };
        }
        let (block_mask, schedule, exempted) = self.group_mask(client, now);
        let m = self.index.lookup(name.key());
        let mut d = self.resolve(&m, group, schedule, block_mask);
        if d.action == Action::Block {
            return d;
        }
        if (m.mask as u32) & exempted.lifted != 0 {
            d.exemption = exempted.first;
        }
        let g = self.groups.get(group as usize);
        let mode = g.map_or(SafeSearchMode::Strict, |g| g.safesearch);
        if let (Some(Special::Engine(engine)), false) = (special, mode == SafeSearchMode::Off) {
            return Decision {
                action: Action::Rewrite,
                rule: Rule::SafeSearch { engine, mode },
                ..d
            };
        }
        let explicitly_allowed = matches!(d.rule, Rule::Listed { allow: true, .. });
        if !explicitly_allowed
            && g.is_none_or(|g| g.block_unsafe_search)
            && self.config.safesearch.is_unenforceable(name.as_str())
        {
            return Decision {
                action: Action::Block,
                category: None,
                rule: Rule::UnsafeSearch,
                ..d
            };
        }
        // Keywords only speak for names the lists know nothing about.
        if m.mask == 0 {
            if let Some(hit) = self
                .keywords
                .find(name.as_str().as_bytes(), block_mask, self.locked)
            {
                let list = self.keywords.rules()[hit.rule as usize].list as usize;
                return Decision {
                    action: Action::Block,
                    category: self
                        .categories
                        .iter()
                        .position(|c| c.list == list)
                        .map(|c| c as u8),
                    rule: Rule::Keyword {
                        rule: hit.rule,
                        at: hit.at,
                    },
                    ..d
                };
            }
        }
        d
    }

    /// The categories blocked for a client at an instant, the schedule that set them, and the
    /// exemption that lifted some (never a locked one).
    fn group_mask(&self, client: &ClientId, now: DateTime<Utc>) -> (u32, Option<u8>, Exempted) {
        let (first, lifted) =
            self.exempt
                .active(client, self.clients.lease(client).and_then(|l| l.mac), now);
        let exempted = Exempted { first, lifted };
        let Some(g) = self.groups.get(client.group as usize) else {
            return (self.locked | self.all_categories(), None, exempted);
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
        ((mask & !lifted) | self.locked, active, exempted)
    }

    fn all_categories(&self) -> u32 {
        self.categories.iter().fold(0, |m, c| m | (1 << c.list))
    }

    fn resolve(&self, m: &Matches, group: u16, schedule: Option<u8>, block_mask: u32) -> Decision {
        let listed = (m.mask as u32) & !self.allow_lists;
        let blocked = listed & block_mask;
        // Other groups' own lists say nothing about this group.
        let visible = !self.group_lists | self.groups.get(group as usize).map_or(0, |g| g.lists);
        let allow_bits = ((m.mask as u32) & self.allow_lists & visible) as u64
            | (m.mask & ((visible as u64) << 32));
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
                    slot: hit.slot,
                },
                group,
                schedule,
                exemption: None,
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
                    slot: hit.slot,
                },
                group,
                schedule,
                exemption: None,
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
            exemption: None,
        }
    }

    /// The list file and line behind a listed rule, for explanations.
    pub fn origin(&self, name: &QueryName, rule: &Rule) -> Option<Origin> {
        self.origin_of(name.as_str(), rule).map(|o| Origin {
            list: o.list.to_string(),
            entry: o.entry.to_string(),
            file: o.file.to_path_buf(),
            line: o.line,
        })
    }

    /// Starts reading what [`origin_of`](Self::origin_of) will read for `rule`, so the log
    /// writer does not wait on a cache miss per breach.
    #[inline]
    pub fn prefetch_origin(&self, rule: &Rule) {
        if let Rule::Listed { slot, .. } = *rule {
            if slot != NO_SLOT {
                self.index.prefetch_origin(slot);
            }
        }
    }

    /// As [`Engine::origin`], borrowed from the engine and the normalised `name`: the journal
    /// writes one for every breach and should not allocate for it.
    pub fn origin_of<'a>(&'a self, name: &'a str, rule: &Rule) -> Option<OriginRef<'a>> {
        if let Rule::Keyword { rule, .. } = *rule {
            let k = self.keywords.rules().get(rule as usize)?;
            let list = self.lists.get(k.list as usize)?;
            return Some(OriginRef {
                list: &list.name,
                entry: Entry::Keyword(&k.word),
                file: &k.file,
                line: k.line,
            });
        }
        let Rule::Listed {
            list,
            key_len,
            allow,
            slot,
        } = *rule
        else {
            return None;
        };
        let l = self.lists.get(list as usize)?;
        // Reversing labels keeps the length, so the entry is the name's last `key_len` bytes.
        let entry = name.get(name.len().checked_sub(key_len as usize)?..)?;
        let mut key = [0u8; 256];
        let key = crate::domain::reverse_into(entry.as_bytes(), &mut key);
        // The allow list's entries are plain lines, stored as its "block" names.
        let exception = allow && self.allow_lists & (1 << list) == 0;
        let bit = if exception {
            1 << (32 + list)
        } else {
            1 << list
        };
        let kept = match slot {
            NO_SLOT => self
                .index
                .origin(key)
                .and_then(|(mask, o)| (mask == bit).then_some(o)),
            slot => self.index.origin_at(slot),
        };
        let (file, line) = match kept {
            Some(kept) => (l.sources.get(kept.source())?.as_path(), kept.line()),
            None => l.origin(key, exception)?,
        };
        Some(OriginRef {
            list: &l.name,
            entry: Entry::Name(entry),
            file,
            line,
        })
    }
}

/// Keyword rules of every category list (the allow list's are reported: they would block).
fn build_keywords(
    lists: &[CompiledList],
    allow_lists: u32,
) -> Result<(Keywords, Vec<BadLine>), KeywordError> {
    let mut misplaced = Vec::new();
    let mut sources = Vec::new();
    for (i, l) in lists.iter().enumerate() {
        for (src, k) in &l.keywords {
            let file = l.sources.get(*src).cloned().unwrap_or_default();
            if allow_lists & (1 << i) != 0 {
                misplaced.push(BadLine {
                    file,
                    line: k.line,
                    reason: "keyword rules block names; put them in a category's list or <category>.keywords".into(),
                });
                continue;
            }
            sources.push(RuleSource {
                text: &k.text,
                list: i as u8,
                file,
                line: k.line,
            });
        }
    }
    let (keywords, mut bad) = Keywords::build(sources)?;
    bad.extend(misplaced);
    Ok((keywords, bad))
}

/// Exemptions in force for one client at one instant.
#[derive(Clone, Copy)]
struct Exempted {
    first: Option<u16>,
    lifted: u32,
}

/// Every configured lease file; an unreadable one is reported and skipped (leases only name).
fn read_leases(config: &Config) -> Vec<Lease> {
    let (all, errors) = leases::read_all(config);
    for e in errors {
        tracing::warn!("{e}");
    }
    all
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
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// [`Origin`], borrowed.
#[derive(Debug, Clone, Copy)]
pub struct OriginRef<'a> {
    /// The list's name.
    pub list: &'a str,
    /// What matched.
    pub entry: Entry<'a>,
    /// The file it is in.
    pub file: &'a Path,
    /// Its line.
    pub line: u32,
}

/// What matched: a listed name (the query itself or a parent) or a keyword.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    /// A listed name.
    Name(&'a str),
    /// A keyword rule's word, shown as `keyword:WORD`.
    Keyword(&'a str),
}

impl std::fmt::Display for Entry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Name(n) => f.write_str(n),
            Entry::Keyword(w) => write!(f, "keyword:{w}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine over a temporary school: pupils (127.0.0.2) strict, staff (127.0.0.3) moderate
    /// with social media allowed, a lab (127.0.0.4) with safe search off.
    fn engine() -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let lists = dir.path().join("lists");
        std::fs::create_dir_all(&lists).unwrap();
        std::fs::write(lists.join("illegal.txt"), "bad.example\n").unwrap();
        std::fs::write(lists.join("social.txt"), "www.youtube.com\n").unwrap();
        std::fs::write(lists.join("adult.txt"), "pornhub.com\nkeyword:porn\n").unwrap();
        std::fs::write(lists.join("adult.keywords"), "sex except=essex\n").unwrap();
        std::fs::write(
            lists.join("allow.txt"),
            "www.bing.com\nporn-research.example\nstartpage.com\n",
        )
        .unwrap();
        let text = r#"
[lists]
dir = "lists"
cache_dir = "cache"
allow = "allow.txt"
[[category]]
name = "illegal"
files = ["illegal.txt"]
locked = true
[[category]]
name = "social"
files = ["social.txt"]
[[category]]
name = "adult"
files = ["adult.txt"]
[groups.pupils]
block = ["illegal", "social", "adult"]
block_unsafe_search = true
[groups.staff]
block = ["illegal", "adult"]
safesearch = "moderate"
[groups.lab]
block = ["illegal"]
safesearch = "off"
[[client]]
name = "pupil"
addr = "127.0.0.2"
group = "pupils"
[[client]]
name = "staff"
addr = "127.0.0.3"
group = "staff"
[[client]]
name = "lab"
addr = "127.0.0.4"
group = "lab"
"#;
        let config = Config::from_toml(&dir.path().join("schoolgate.toml"), text).unwrap();
        let engine = Engine::load(Arc::new(config)).unwrap().engine;
        (dir, engine)
    }

    fn decide(e: &Engine, from: &str, name: &str) -> Decision {
        let client = e.identify(from.parse().unwrap());
        e.decide(&client, &QueryName::parse(name).unwrap(), Utc::now())
    }

    #[test]
    fn precedence_canary_block_rewrite_unsafe_keyword() {
        let (_dir, e) = engine();
        let (pupil, staff, lab) = ("127.0.0.2", "127.0.0.3", "127.0.0.4");

        let canary = decide(&e, lab, "use-application-dns.net");
        assert_eq!(
            (canary.action, canary.rule),
            (Action::Nxdomain, Rule::Canary)
        );

        // A category that blocks the name beats the rewrite; where it is lifted, the rewrite
        // applies in the group's mode.
        assert_eq!(decide(&e, pupil, "www.youtube.com").action, Action::Block);
        let staff_yt = decide(&e, staff, "www.youtube.com");
        assert_eq!(staff_yt.action, Action::Rewrite);
        assert_eq!(
            e.rewrite_target(&staff_yt.rule),
            Some("restrictmoderate.youtube.com")
        );
        assert_eq!(
            e.rule_label(&staff_yt.rule).as_deref(),
            Some("safesearch:youtube")
        );
        assert_eq!(decide(&e, lab, "www.google.co.uk").action, Action::Allow);

        // An allow entry does not exempt a search name from safe search.
        let bing = decide(&e, pupil, "www.bing.com");
        assert_eq!(e.rewrite_target(&bing.rule), Some("strict.bing.com"));

        // Unsafe engines: blocked for groups that ask, unless the school allowed them.
        let yahoo = decide(&e, pupil, "search.yahoo.com");
        assert_eq!(
            (yahoo.action, yahoo.rule),
            (Action::Block, Rule::UnsafeSearch)
        );
        assert_eq!(e.block_reason(&yahoo), "unsafe_search");
        assert_eq!(decide(&e, staff, "search.yahoo.com").action, Action::Allow);
        assert_eq!(decide(&e, pupil, "www.startpage.com").action, Action::Allow);

        // Keywords: list-file prefix and .keywords file both load; the allow list and the lists
        // decide first; exceptions hold.
        let kw = decide(&e, pupil, "freeporn.example");
        assert!(matches!(kw.rule, Rule::Keyword { at: 4, .. }), "{kw:?}");
        assert_eq!(e.categories()[kw.category.unwrap() as usize].name, "adult");
        let origin = e
            .origin(&QueryName::parse("freeporn.example").unwrap(), &kw.rule)
            .unwrap();
        assert_eq!((origin.entry.as_str(), origin.line), ("keyword:porn", 2));
        assert!(matches!(
            decide(&e, pupil, "sexshop.example").rule,
            Rule::Keyword { .. }
        ));
        assert_eq!(decide(&e, pupil, "essex.gov.uk").action, Action::Allow);
        assert_eq!(
            decide(&e, pupil, "porn-research.example").action,
            Action::Allow
        );
        assert!(matches!(
            decide(&e, pupil, "pornhub.com").rule,
            Rule::Listed { .. }
        ));
        assert_eq!(decide(&e, lab, "freeporn.example").action, Action::Allow);
    }
}
