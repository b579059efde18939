//! Upstream answers kept as encoded bytes, served by copying and patching.
//!
//! A cached answer is stored once as wire bytes with the offsets of its TTLs; a hit copies the
//! bytes into the socket's buffer, writes the client's ID and question case, ages the TTLs in
//! place and appends OPT when the client used EDNS. That keeps a cache hit as cheap as a
//! sinkhole answer. Entries outlive their TTL by the serve-stale window (RFC 8767), so a
//! flaky internet link does not take known names down with it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use rustc_hash::FxHasher;
use std::hash::{Hash, Hasher};

use crate::wire::{self, Query, Writer};

const SHARDS: usize = 16;
/// TTL given to stale answers (RFC 8767 suggests 30 s).
const STALE_TTL: u32 = 30;

/// One cached answer, kept in its shard's slab.
struct Entry {
    /// The answer's bytes (its question names the entry), then the TTL offsets (u16 each): one
    /// allocation per entry.
    data: Box<[u8]>,
    /// The entry's hash, so the eviction hand can find it in the shard's table.
    key: u64,
    /// When it was stored, in milliseconds since the cache was made.
    stored_ms: u64,
    ttl: u32,
    bytes_len: u16,
    qtype: u16,
    /// Served since the eviction hand last passed: popular answers get a second chance.
    used: bool,
}

impl Entry {
    fn new(
        key: u64,
        qtype: u16,
        bytes: &[u8],
        offsets: &[u16],
        stored_ms: u64,
        ttl: u32,
    ) -> Option<Self> {
        let mut data = Vec::with_capacity(bytes.len() + 2 * offsets.len());
        data.extend_from_slice(bytes);
        offsets
            .iter()
            .for_each(|o| data.extend_from_slice(&o.to_le_bytes()));
        Some(Entry {
            data: data.into_boxed_slice(),
            key,
            stored_ms,
            ttl,
            bytes_len: u16::try_from(bytes.len()).ok()?,
            qtype,
            used: false,
        })
    }

    fn bytes(&self) -> &[u8] {
        &self.data[..self.bytes_len as usize]
    }

    fn ttl_offsets(&self) -> impl Iterator<Item = usize> + '_ {
        self.data[self.bytes_len as usize..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize)
    }

    /// Past its TTL and the serve-stale window: worth nothing.
    fn dead(&self, now_ms: u64, stale_window: Duration) -> bool {
        let age = Duration::from_millis(now_ms.saturating_sub(self.stored_ms));
        age >= Duration::from_secs(self.ttl.into()) + stale_window
    }
}

/// How old a cached entry is, for rewriting its TTLs.
#[derive(Clone, Copy)]
struct Aging {
    expired: bool,
    age_secs: u32,
}

impl Aging {
    /// A record's TTL as the client should see it now.
    fn aged(self, ttl: u32) -> u32 {
        if self.expired {
            STALE_TTL
        } else {
            ttl.saturating_sub(self.age_secs)
        }
    }
}

/// Whether a cached answer was fresh or is being served past its TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within its TTL.
    Fresh,
    /// Past its TTL but inside the serve-stale window.
    Stale,
}

/// The answer cache, sharded so the two cores rarely meet on a lock (never held across await).
pub struct AnswerCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    stale_window: Duration,
    epoch: Instant,
}

/// One shard: entries in a slab that never grows past the shard's share, and a table of slab
/// indices by hash (4 bytes a bucket). Eviction is CLOCK over the slab: a used entry goes round
/// again with its mark cleared, an unused or dead one is replaced, so making room costs a few
/// steps however full the cache is.
#[derive(Default)]
struct Shard {
    slab: Vec<Entry>,
    table: HashTable<u32>,
    hand: usize,
}

impl Shard {
    fn find(&self, key: u64) -> Option<usize> {
        self.table
            .find(key, |&i| self.slab[i as usize].key == key)
            .map(|&i| i as usize)
    }

    /// The slab index the next entry goes to once the shard is full: the first dead (past the
    /// stale window) or unused entry the hand meets. Every entry is passed at most twice: the
    /// second time its mark is clear.
    fn victim(&mut self, now_ms: u64, stale_window: Duration) -> usize {
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slab.len();
            let e = &mut self.slab[i];
            if !e.used || e.dead(now_ms, stale_window) {
                return i;
            }
            e.used = false;
        }
    }
}

fn key(name: &[u8], qtype: u16) -> u64 {
    let mut h = FxHasher::default();
    name.hash(&mut h);
    qtype.hash(&mut h);
    h.finish()
}

impl AnswerCache {
    /// A cache of about `capacity` answers, serving stale ones for `stale_window` after expiry.
    pub fn new(capacity: usize, stale_window: Duration) -> Self {
        AnswerCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            stale_window,
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Stores an encoded answer (ID 0, question in lower case) for `ttl` seconds.
    pub fn insert(&self, name: &[u8], qtype: u16, bytes: &[u8], ttl: u32) {
        let Some(ttl_offsets) = wire::ttl_offsets(bytes) else {
            return;
        };
        let k = key(name, qtype);
        let now_ms = self.now_ms();
        let Some(entry) = Entry::new(k, qtype, bytes, &ttl_offsets, now_ms, ttl) else {
            return;
        };
        let mut shard = self.shards[k as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let shard = &mut *shard;
        if let Some(i) = shard.find(k) {
            shard.slab[i] = entry;
            return;
        }
        let slot = if shard.slab.len() < self.per_shard {
            shard.slab.push(entry);
            shard.slab.len() - 1
        } else {
            let i = shard.victim(now_ms, self.stale_window);
            let old = shard.slab[i].key;
            if let Ok(found) = shard.table.find_entry(old, |&j| j as usize == i) {
                found.remove();
            }
            shard.slab[i] = entry;
            i
        };
        let slab = &shard.slab;
        shard
            .table
            .insert_unique(k, slot as u32, |&j| slab[j as usize].key);
    }

    /// Writes the cached answer for `q` into `buf`, or returns `None` on a miss. Stale answers
    /// are only returned when `allow_stale` (the upstream has just failed).
    pub fn serve(&self, q: &Query<'_>, buf: &mut Vec<u8>, allow_stale: bool) -> Option<Freshness> {
        self.with_entry(
            q.name.as_str().as_bytes(),
            q.qtype,
            allow_stale,
            |e, aging| {
                let bytes = e.bytes();
                if bytes.len() < 12 + q.question.len() {
                    return None;
                }
                buf.clear();
                buf.extend_from_slice(bytes);
                buf[0..2].copy_from_slice(&q.id.to_be_bytes());
                buf[2] = (buf[2] & !0x01) | u8::from(q.rd);
                buf[12..12 + q.question.len()].copy_from_slice(q.question);
                for at in e.ttl_offsets() {
                    let ttl = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
                    buf[at..at + 4].copy_from_slice(&aging.aged(ttl).to_be_bytes());
                }
                Some(if aging.expired {
                    Freshness::Stale
                } else {
                    Freshness::Fresh
                })
            },
        )
        .flatten()
    }

    /// Hands the cached answer for (`name`, `qtype`) to `f` with a function that ages a TTL,
    /// for answers assembled from another name's records. Stale entries only when `allow_stale`.
    pub fn read<R>(
        &self,
        name: &[u8],
        qtype: u16,
        allow_stale: bool,
        f: impl FnOnce(&[u8], &dyn Fn(u32) -> u32) -> R,
    ) -> Option<R> {
        self.with_entry(name, qtype, allow_stale, |e, aging| {
            f(e.bytes(), &|ttl| aging.aged(ttl))
        })
    }

    /// The one lookup both readers share: find the entry under its shard's lock, mark it used
    /// for eviction, and say how old it is; `None` on a miss or an entry too stale to serve.
    fn with_entry<R>(
        &self,
        name: &[u8],
        qtype: u16,
        allow_stale: bool,
        f: impl FnOnce(&Entry, Aging) -> R,
    ) -> Option<R> {
        let k = key(name, qtype);
        let now_ms = self.now_ms();
        let mut shard = self.shards[k as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let i = shard.find(k)?;
        let e = &mut shard.slab[i];
        if e.qtype != qtype || !wire::asks_for(e.bytes(), name, qtype) {
            return None;
        }
        e.used = true;
        let age = Duration::from_millis(now_ms.saturating_sub(e.stored_ms));
        let ttl = Duration::from_secs(e.ttl.into());
        let expired = age >= ttl;
        if expired && (!allow_stale || age >= ttl + self.stale_window) {
            return None;
        }
        let aging = Aging {
            expired,
            age_secs: age.as_secs().min(u64::from(u32::MAX)) as u32,
        };
        Some(f(e, aging))
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.slab.len()).unwrap_or(0))
            .sum()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends OPT (with an optional EDE) to a response built from cached bytes.
pub fn finish_edns(buf: &mut Vec<u8>, q: &Query<'_>, ede: Option<(u16, &str)>) {
    if let Some(e) = q.edns {
        let mut w = Writer::append(buf);
        w.opt(e.dnssec_ok, 0, ede);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn encoded(name: &str) -> Vec<u8> {
        let owner = Name::from_ascii(format!("{name}.")).unwrap();
        let mut m = Message::new(0, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(owner.clone(), RecordType::A));
        m.add_answer(Record::from_rdata(
            owner,
            300,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        m.to_vec().unwrap()
    }

    #[test]
    fn a_flood_of_new_names_keeps_the_popular_ones() {
        let cache = AnswerCache::new(SHARDS * 4, Duration::ZERO);
        cache.insert(b"popular.example", 1, &encoded("popular.example"), 300);
        for i in 0..SHARDS * 40 {
            let name = format!("once{i}.example");
            cache.insert(name.as_bytes(), 1, &encoded(&name), 300);
            let hit = cache.read(b"popular.example", 1, false, |_, _| ());
            assert!(hit.is_some(), "evicted after {i} one-off names");
        }
        assert!(cache.len() <= SHARDS * 4);
    }

    #[test]
    fn a_full_cache_answers_each_name_with_its_own_answer() {
        let cache = AnswerCache::new(SHARDS * 8, Duration::ZERO);
        for round in 0..3 {
            for i in 0..SHARDS * 20 {
                let name = format!("n{i}.r{round}.example");
                cache.insert(name.as_bytes(), 1, &encoded(&name), 300);
            }
        }
        let mut found = 0;
        for i in 0..SHARDS * 20 {
            let name = format!("n{i}.r2.example");
            if let Some(same) = cache.read(name.as_bytes(), 1, false, |b, _| b == encoded(&name)) {
                assert!(same, "{name} served another name's answer");
                found += 1;
            }
            assert!(cache.read(name.as_bytes(), 28, false, |_, _| ()).is_none());
        }
        assert!(found > 0);
        assert!(cache.len() <= SHARDS * 8);
    }
}
