//! One FST over every list, so a query costs one walk however many categories there are.
//!
//! Each key maps to a bit mask: bit `i` means "list `i` blocks this name", bit `32 + i` means
//! "list `i` exempts it". The walk over a query's reversed key stops at every label boundary
//! that is a listed name, so a listed parent (`tiktok.com`) catches all names below it
//! (`www.tiktok.com`) and never a sibling that merely shares a prefix (`tiktokfoo.com`).
//!
//! It is built by merging the lists' sorted key files, and rebuilt only when one of them changed.
//!
//! The query path does not walk the FST, though: an FST walk over a million random names is
//! about twenty dependent reads, nearly all cache misses (1-4 us per query at 1-10 million
//! names). Beside `index.fst` the build writes `index.table`, a bucketised cuckoo hash table of
//! every listed key (a 40-bit fingerprint and a mask class per 6-byte slot, four slots a bucket,
//! each key in one of two buckets), which fills to 94% where linear probing needed 25% spare. A
//! lookup hashes the reversed key once, left to right, and probes the table at each label
//! boundary: two independent bucket reads per label, a few hundred nanoseconds whatever the list
//! size. The FST stays the record of what is listed (explanations and `origin` read it) and the
//! fallback when the table cannot be used.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use fst::raw::Output;
use fst::{Map, MapBuilder};
use memmap2::Mmap;

use super::compile::{map_file, release, tmp_path, write_atomic, CompiledList};
use super::sorted::SortedKeys;
use super::ListError;

/// Most lists one index can hold (one block bit and one allow bit each).
pub const MAX_LISTS: usize = 32;
/// How many listed ancestors of one name are remembered for explanation.
const MAX_HITS: usize = 8;

/// A listed ancestor of the query name.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    /// Length of the matched prefix of the reversed key.
    pub key_len: u8,
    /// Lists that block (low 32 bits) or exempt (high 32 bits) it.
    pub mask: u64,
    /// Where the table holds it ([`NO_SLOT`] when the FST found it), so the breach log can
    /// read its origin without looking the name up again.
    pub slot: u32,
}

/// The slot of a hit the FST walk found (no table).
pub const NO_SLOT: u32 = u32::MAX;

impl Default for Hit {
    fn default() -> Self {
        Hit {
            key_len: 0,
            mask: 0,
            slot: NO_SLOT,
        }
    }
}

/// Everything one walk found, on the stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct Matches {
    hits: [Hit; MAX_HITS],
    len: usize,
    /// Union of all hits' masks.
    pub mask: u64,
}

impl Matches {
    /// The listed ancestors, most general first.
    pub fn hits(&self) -> &[Hit] {
        &self.hits[..self.len]
    }

    /// Block bits of list `i` set anywhere on the path.
    pub fn blocks(&self, list: usize) -> bool {
        self.mask & (1 << list) != 0
    }

    /// Allow bits of list `i` set anywhere on the path.
    pub fn allows(&self, list: usize) -> bool {
        self.mask & (1 << (32 + list)) != 0
    }

    /// The most specific hit that carries `bit`.
    pub fn hit_for(&self, bit: u64) -> Option<Hit> {
        self.hits()
            .iter()
            .rev()
            .find(|h| h.mask & bit != 0)
            .copied()
    }

    fn push(&mut self, key_len: usize, mask: u64, slot: u32) {
        self.mask |= mask;
        let hit = Hit {
            key_len: key_len as u8,
            mask,
            slot,
        };
        if self.len < MAX_HITS {
            self.hits[self.len] = hit;
            self.len += 1;
        } else {
            // Keep the most specific hits: they are the ones an explanation names.
            self.hits.copy_within(1.., 0);
            self.hits[MAX_HITS - 1] = hit;
        }
    }
}

/// Names merged between releases of the key files' pages: the merge reads each file once, front
/// to back, so what it has read is dropped as it goes (a reload of 1,000,000 names otherwise
/// held all 23 MB of key files resident at its peak). The pages in use are read back from the
/// page cache.
const RELEASE_EVERY: usize = 1 << 16;

/// The merged, memory-mapped index.
pub struct DomainIndex {
    map: Map<Mmap>,
    table: Option<KeyTable>,
}

impl DomainIndex {
    /// Builds (or reuses) the index over `lists`; list `i` gets bits `i` and `32 + i`.
    pub fn build(lists: &[CompiledList], cache_dir: &Path) -> Result<Self, ListError> {
        if let Some(index) = Self::open(lists, cache_dir)? {
            return Ok(index);
        }
        let path = cache_dir.join("index.fst");
        let table_path = cache_dir.join("index.table");
        let meta_path = cache_dir.join("index.meta");
        let fingerprint = index_fingerprint(lists);
        fs::create_dir_all(cache_dir).map_err(|e| ListError::io(cache_dir, e))?;
        // A k-way merge of the lists' sorted key files: stream 2i is list i's blocked names,
        // stream 2i + 1 its exceptions.
        let streams: Vec<&SortedKeys> = lists.iter().flat_map(|l| [&l.block, &l.allow]).collect();
        let mut next = vec![0usize; streams.len()];
        let mut heap: BinaryHeap<Reverse<(&[u8], usize)>> = streams
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(i, s)| Reverse((s.key(0), i)))
            .collect();
        let most_keys: usize = lists.iter().map(|l| l.block.len() + l.allow.len()).sum();
        let most_sources = lists.iter().map(|l| l.sources.len()).max().unwrap_or(1);
        let mut table = TableBuilder::new(most_keys, most_sources);
        let tmp = tmp_path(&path);
        let file = File::create(&tmp).map_err(|e| ListError::io(&tmp, e))?;
        let mut builder = MapBuilder::new(BufWriter::with_capacity(1 << 20, file))
            .map_err(|e| ListError::fst(&path, e))?;
        let mut merged = 0usize;
        while let Some(Reverse((key, _))) = heap.peek().copied() {
            merged += 1;
            if merged.is_multiple_of(RELEASE_EVERY) {
                streams.iter().for_each(|s| s.release());
            }
            let mut mask = 0u64;
            let mut origin = None;
            while let Some(Reverse((k, i))) = heap.peek().copied() {
                if k != key {
                    break;
                }
                heap.pop();
                // Kept only for a name one list holds once; others are looked up in the list.
                origin = match origin {
                    None => Some(Origin::pack(streams[i].value(next[i]))),
                    Some(_) => Some(Origin::NONE),
                };
                let list = i / 2;
                mask |= if i % 2 == 0 {
                    1 << list
                } else {
                    1 << (32 + list)
                };
                next[i] += 1;
                if next[i] < streams[i].len() {
                    heap.push(Reverse((streams[i].key(next[i]), i)));
                }
            }
            builder
                .insert(key, mask)
                .map_err(|e| ListError::fst(&path, e))?;
            table.insert(key, mask, origin.unwrap_or(Origin::NONE));
        }
        // The merge read every key file through its mapping; the query path reads none of them.
        streams.iter().for_each(|s| s.release());
        let mut w = builder.into_inner().map_err(|e| ListError::fst(&path, e))?;
        w.flush().map_err(|e| ListError::io(&tmp, e))?;
        drop(w);
        fs::rename(&tmp, &path).map_err(|e| ListError::io(&path, e))?;
        table.write(&table_path)?;
        write_atomic(&meta_path, fingerprint.as_bytes())?;
        Ok(DomainIndex {
            map: map_file(&path)?,
            table: KeyTable::map(&table_path)?,
        })
    }

    /// The index already built over `lists`, or `None` when it must be (re)built.
    pub fn open(lists: &[CompiledList], cache_dir: &Path) -> Result<Option<Self>, ListError> {
        if lists.len() > MAX_LISTS {
            return Err(ListError::TooManyLists(lists.len()));
        }
        let unchanged = lists.iter().all(|l| !l.recompiled)
            && fs::read_to_string(cache_dir.join("index.meta")).ok()
                == Some(index_fingerprint(lists));
        if !unchanged {
            return Ok(None);
        }
        match (
            map_file(&cache_dir.join("index.fst")),
            KeyTable::map(&cache_dir.join("index.table")),
        ) {
            (Ok(map), Ok(table)) => Ok(Some(DomainIndex { map, table })),
            _ => Ok(None),
        }
    }

    /// Drops the resident pages of the mapped FST and table.
    pub fn release_pages(&self) {
        release(self.map.as_fst().as_inner());
        if let Some(t) = &self.table {
            release(&t.bytes);
        }
    }

    /// Number of distinct names across all lists.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no list holds any name.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every listed ancestor of a reversed key (the key itself included), most general first.
    /// No allocation.
    #[inline]
    pub fn lookup(&self, key: &[u8]) -> Matches {
        match &self.table {
            Some(t) => t.lookup(key),
            None => self.walk(key),
        }
    }

    /// The list file and line of a listed key that exactly one list holds, without reading the
    /// list: the breach log asks for one per blocked query. `None` when the table does not know
    /// (a name several lists hold, no table); [`CompiledList::origin`] knows every one.
    pub fn origin(&self, key: &[u8]) -> Option<(u64, Origin)> {
        let t = self.table.as_ref()?;
        let (slot, mask) = t.find(key_hash(key))?;
        Some((mask, t.origin_at(slot)?))
    }

    /// As [`origin`](Self::origin), for a hit's slot: one read, no second lookup. A kept origin
    /// means one list holds the name, so it is the list of the hit that gave the slot.
    pub fn origin_at(&self, slot: u32) -> Option<Origin> {
        self.table.as_ref()?.origin_at(usize::try_from(slot).ok()?)
    }

    /// Asks for the cache line of the origin at `slot` without waiting for it: the query path
    /// calls this for a breach, and the log writer reads the origin a little later.
    #[inline]
    pub fn prefetch_origin(&self, slot: u32) {
        if let Some(t) = &self.table {
            prefetch(&t.bytes, t.origin_offset(slot as usize));
        }
    }

    /// The same answer as [`lookup`](Self::lookup), read from the FST.
    pub fn walk(&self, key: &[u8]) -> Matches {
        let fst = self.map.as_fst();
        let mut m = Matches::default();
        let mut node = fst.root();
        let mut out = Output::zero();
        for (i, &b) in key.iter().enumerate() {
            if b == b'.' && node.is_final() {
                m.push(i, out.cat(node.final_output()).value(), NO_SLOT);
            }
            match node.find_input(b) {
                Some(t) => {
                    let t = node.transition(t);
                    out = out.cat(t.out);
                    node = fst.node(t.addr);
                }
                None => return m,
            }
        }
        if node.is_final() && !key.is_empty() {
            m.push(key.len(), out.cat(node.final_output()).value(), NO_SLOT);
        }
        m
    }
}

/// Marks a table file and its layout; a file without it is rebuilt, never trusted.
const TABLE_MAGIC: &[u8; 8] = b"SGKTAB05";
/// Bytes per slot: a 40-bit fingerprint and the mask class. A lookup compares the fingerprint
/// with the [`BUCKET_SLOTS`] slots of each of a key's two buckets, 8 comparisons per probe; the
/// fingerprint is the hash's low 40 bits and the buckets come from its high bits and from a
/// remix of all of it, so an unlisted name matches a slot it is compared with once in about a
/// trillion comparisons (about 8 x 2^-40 per probe, a few probes per query). 6 bytes instead of
/// 8 keep the table (which every query probes, so all of it ends up resident) a quarter smaller.
const SLOT_BYTES: usize = 6;
/// Slots per bucket: with two buckets per key, four slots let the table fill to 94% and still
/// place every key in a few moves.
const BUCKET_SLOTS: usize = 4;
const BUCKET_BYTES: usize = BUCKET_SLOTS * SLOT_BYTES;
/// Parent domains probed together (names rarely have more labels; longer ones go in rounds).
const PROBES_AT_ONCE: usize = 8;
/// Keys per slot, in percent.
const TABLE_LOAD_PERCENT: usize = 94;
/// Moves one insert may make before the builder gives up and grows the table.
const MAX_KICKS: usize = 500;
/// Times the builder grows the table by 5% before it falls back to the FST walk.
const MAX_GROWTHS: usize = 4;
/// Seed of the kick walk: a fixed one, so the same lists give the same file.
const KICK_SEED: u64 = 0x5C40_0C0E_7AB1_E5ED;

/// Bytes per slot for its [`Origin`] in the table file (squeezed from the 32 bits it has in
/// memory): a quarter of the table is origins, and every blocked query reads one.
const ORIGIN_BYTES: usize = 3;

/// Where a listed key came from, packed in 32 bits: the source file's index in its list (high 8
/// bits, plus one) and the line (low 24 bits). Zero: not kept. The table file keeps it squeezed
/// into three bytes per slot, after the buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin(u32);

impl Origin {
    const NONE: Origin = Origin(0);
    const LINE_BITS: u32 = 24;

    /// From a list value (`source << 32 | line`); [`Origin::NONE`] if it does not fit.
    fn pack(value: u64) -> Origin {
        let (source, line) = (value >> 32, value as u32);
        if source < 255 && line < 1 << Self::LINE_BITS {
            Origin(((source as u32 + 1) << Self::LINE_BITS) | line)
        } else {
            Origin::NONE
        }
    }

    /// Line bits of a squeezed origin when lists have at most `sources` files: the rest name
    /// the file (plus one). One file leaves 23 bits, lines up to 8,388,607.
    fn line_bits_for(sources: usize) -> u32 {
        let source_bits = usize::BITS - sources.leading_zeros();
        (ORIGIN_BYTES as u32 * 8).saturating_sub(source_bits.max(1))
    }

    /// The origin in [`ORIGIN_BYTES`]: `(source + 1) << line_bits | line`, or zero (not kept,
    /// so looked up in the list) when it does not fit.
    fn squeeze(self, line_bits: u32) -> u32 {
        let (source1, line) = (self.0 >> Self::LINE_BITS, self.line());
        let fits = line < 1 << line_bits && source1 < 1 << (ORIGIN_BYTES as u32 * 8 - line_bits);
        if self == Origin::NONE || !fits {
            return 0;
        }
        (source1 << line_bits) | line
    }

    /// The origin a squeezed one stands for (the low [`ORIGIN_BYTES`] of `word`).
    fn widen(word: u32, line_bits: u32) -> Origin {
        let v = word & ((1 << (ORIGIN_BYTES * 8)) - 1);
        Origin(((v >> line_bits) << Self::LINE_BITS) | (v & ((1 << line_bits) - 1)))
    }

    /// Index of the source file in its list.
    pub fn source(self) -> usize {
        ((self.0 >> Self::LINE_BITS) - 1) as usize
    }

    /// Line in that file.
    pub fn line(self) -> u32 {
        self.0 & ((1 << Self::LINE_BITS) - 1)
    }
}
/// Mask classes a slot can name (its low byte).
const MAX_CLASSES: usize = 256;

/// FNV-1a over the reversed key, one byte at a time, so every label-boundary prefix's hash is
/// on the way to the whole key's.
#[inline]
fn hash_step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
}

const HASH_START: u64 = 0xCBF2_9CE4_8422_2325;

/// murmur3's 64-bit finaliser: every output bit depends on every input bit.
#[inline]
fn fmix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    x ^ (x >> 33)
}

/// Spreads a prefix hash over all 64 bits, mixing in the length.
#[inline]
fn hash_finish(h: u64, len: usize) -> u64 {
    fmix(h ^ (len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn key_hash(key: &[u8]) -> u64 {
    hash_finish(
        key.iter().fold(HASH_START, |h, &b| hash_step(h, b)),
        key.len(),
    )
}

/// Scales 64 random bits to `0..n` (the high bits, spread over the table).
#[inline]
fn home(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

/// A key's two buckets: one from the hash's high bits, one from a remix of all its bits. Neither
/// may come from the fingerprint's bits alone, or keys in a bucket would share fingerprint bits
/// and unlisted names would match them far more often.
#[inline]
fn buckets_of(hash: u64, buckets: usize) -> (usize, usize) {
    let b1 = home(hash, buckets);
    let b2 = home(fmix(hash ^ 0x2545_F491_4F6C_DD1D), buckets);
    let b2 = if b2 != b1 {
        b2
    } else if b1 + 1 == buckets {
        0
    } else {
        b1 + 1
    };
    (b1, b2)
}

/// The stored fingerprint, shifted above the class byte: the hash's low 40 bits (independent of
/// the buckets), never zero (zero is an empty slot).
#[inline]
fn fingerprint(hash: u64) -> u64 {
    (hash & 0xFF_FFFF_FFFF).max(1) << 8
}

/// What the index was built from: each list's name and source fingerprint.
fn index_fingerprint(lists: &[CompiledList]) -> String {
    lists
        .iter()
        .map(|l| format!("{}={}\n", l.name, l.fingerprint))
        .collect()
}

/// Collects keys while the FST is written, then lays out and writes the table file.
struct TableBuilder {
    /// Full hashes, kept so the layout can move keys between their two buckets.
    hashes: Vec<u64>,
    /// Parallel to `hashes`.
    classes_of: Vec<u8>,
    origins: Vec<u32>,
    classes: Vec<u64>,
    overflow: bool,
    /// How the origins are squeezed into [`ORIGIN_BYTES`].
    line_bits: u32,
}

/// Keys ahead of the one being placed whose buckets are asked for early: over a large table each
/// bucket is a cache miss, and asking ahead lets a few dozen of them overlap.
const PREFETCH_AHEAD: usize = 16;

/// Asks for the cache line holding `items[at]`, without waiting for it.
#[inline]
fn prefetch<T>(items: &[T], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(p) = items.get(at) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is only a hint: it reads nothing the program sees and cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(p).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (items, at);
}

/// Marks a free slot in the layout.
const FREE: u32 = u32::MAX;

/// A free slot of bucket `b` in the layout.
fn free_in(slots: &[u32], b: usize) -> Option<usize> {
    (b * BUCKET_SLOTS..(b + 1) * BUCKET_SLOTS).find(|&s| slots[s] == FREE)
}

impl TableBuilder {
    /// For about `most_keys` keys from lists of at most `most_sources` files each.
    fn new(most_keys: usize, most_sources: usize) -> Self {
        TableBuilder {
            hashes: Vec::with_capacity(most_keys),
            classes_of: Vec::with_capacity(most_keys),
            origins: Vec::with_capacity(most_keys),
            classes: Vec::new(),
            overflow: false,
            line_bits: Origin::line_bits_for(most_sources),
        }
    }

    fn insert(&mut self, key: &[u8], mask: u64, origin: Origin) {
        let class = match self.classes.iter().position(|&c| c == mask) {
            Some(c) => c,
            None if self.classes.len() < MAX_CLASSES => {
                self.classes.push(mask);
                self.classes.len() - 1
            }
            None => {
                // More distinct list combinations than a slot can name: walk the FST instead.
                self.overflow = true;
                return;
            }
        };
        if self.hashes.len() >= FREE as usize {
            self.overflow = true;
            return;
        }
        self.hashes.push(key_hash(key));
        self.classes_of.push(class as u8);
        self.origins.push(origin.0);
    }

    /// Which key each slot holds, or `None` if the keys would not fit after a few growths.
    fn layout(&self) -> Option<(usize, Vec<u32>)> {
        let mut buckets = self
            .hashes
            .len()
            .saturating_mul(100)
            .div_ceil(BUCKET_SLOTS * TABLE_LOAD_PERCENT)
            .max(2);
        for _ in 0..=MAX_GROWTHS {
            if let Some(slots) = self.place_all(buckets) {
                return Some((buckets, slots));
            }
            buckets += buckets.div_ceil(20);
        }
        None
    }

    /// Places every key in one of its two buckets. When both are full, a key already in one of
    /// them moves to its other bucket if that has room; failing that, a random walk moves keys
    /// aside (at most [`MAX_KICKS`] moves per key).
    fn place_all(&self, buckets: usize) -> Option<Vec<u32>> {
        let mut slots = vec![FREE; buckets * BUCKET_SLOTS];
        let mut rng = KICK_SEED;
        for key in 0..self.hashes.len() as u32 {
            if let Some(&ahead) = self.hashes.get(key as usize + PREFETCH_AHEAD) {
                let (p1, p2) = buckets_of(ahead, buckets);
                prefetch(&slots, p1 * BUCKET_SLOTS);
                prefetch(&slots, p2 * BUCKET_SLOTS);
            }
            let (b1, b2) = buckets_of(self.hashes[key as usize], buckets);
            let room = free_in(&slots, b1)
                .or_else(|| free_in(&slots, b2))
                .or_else(|| self.make_room(&mut slots, buckets, b1))
                .or_else(|| self.make_room(&mut slots, buckets, b2));
            if let Some(s) = room {
                slots[s] = key;
                continue;
            }
            let (mut homeless, mut at) = (key, b1);
            let mut placed = false;
            for _ in 0..MAX_KICKS {
                rng ^= rng >> 12;
                rng ^= rng << 25;
                rng ^= rng >> 27;
                let pick = (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 62) as usize;
                homeless = std::mem::replace(&mut slots[at * BUCKET_SLOTS + pick], homeless);
                at = self.other_bucket(homeless, at, buckets);
                let room = free_in(&slots, at).or_else(|| self.make_room(&mut slots, buckets, at));
                if let Some(s) = room {
                    slots[s] = homeless;
                    placed = true;
                    break;
                }
            }
            if !placed {
                return None;
            }
        }
        Some(slots)
    }

    /// The bucket of `key`'s two that is not `at`.
    fn other_bucket(&self, key: u32, at: usize, buckets: usize) -> usize {
        let (b1, b2) = buckets_of(self.hashes[key as usize], buckets);
        if at == b1 {
            b2
        } else {
            b1
        }
    }

    /// Frees a slot in the full bucket `b` by moving one of its keys to its other bucket, if one
    /// of those has room.
    fn make_room(&self, slots: &mut [u32], buckets: usize, b: usize) -> Option<usize> {
        (b * BUCKET_SLOTS..(b + 1) * BUCKET_SLOTS).find_map(|s| {
            let key = slots[s];
            let to = free_in(slots, self.other_bucket(key, b, buckets))?;
            slots[to] = key;
            Some(s)
        })
    }

    /// Writes the table; an empty one (no buckets) says "walk the FST" when the lists have more
    /// mask classes than a slot can name, or the keys would not fit.
    fn write(mut self, path: &Path) -> Result<(), ListError> {
        let layout = if self.overflow { None } else { self.layout() };
        let (buckets, slots) = match layout {
            Some(layout) => layout,
            None => {
                self.classes.clear();
                (0, Vec::new())
            }
        };
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(|e| ListError::io(&tmp, e))?;
        let mut w = BufWriter::new(file);
        let header = [
            buckets as u64,
            self.classes.len() as u64,
            u64::from(self.line_bits),
        ];
        let mut words = header.iter().chain(&self.classes);
        let slot = |key: u32| match key {
            FREE => 0,
            k => {
                let k = k as usize;
                fingerprint(self.hashes[k]) | u64::from(self.classes_of[k])
            }
        };
        let origin = |key: u32| match key {
            FREE => 0,
            k => Origin(self.origins[k as usize]).squeeze(self.line_bits),
        };
        let result = w
            .write_all(TABLE_MAGIC)
            .and_then(|()| words.try_for_each(|v| w.write_all(&v.to_le_bytes())))
            .and_then(|()| {
                slots
                    .iter()
                    .try_for_each(|&k| w.write_all(&slot(k).to_le_bytes()[..SLOT_BYTES]))
            })
            .and_then(|()| {
                slots
                    .iter()
                    .try_for_each(|&k| w.write_all(&origin(k).to_le_bytes()[..ORIGIN_BYTES]))
            })
            // One byte after the last origin, so every origin is read with one 4-byte load.
            .and_then(|()| w.write_all(&[0]))
            .and_then(|()| w.flush());
        result.map_err(|e| ListError::io(&tmp, e))?;
        drop(w);
        fs::rename(&tmp, path).map_err(|e| ListError::io(path, e))
    }
}

/// The mapped table: `magic, buckets, classes, line bits, class masks...` as little-endian u64s,
/// the buckets ([`BUCKET_SLOTS`] slots of [`SLOT_BYTES`] each), one [`ORIGIN_BYTES`] origin per
/// slot ([`Origin::squeeze`]), and a zero byte.
/// A key sits in one of its two buckets ([`buckets_of`]); an empty slot is all zero. The origins
/// are read only for breaches, so their pages stay on disk until a blocked name needs one.
struct KeyTable {
    bytes: Mmap,
    classes: [u64; MAX_CLASSES],
    slots_at: usize,
    buckets: usize,
    line_bits: u32,
}

impl KeyTable {
    /// Maps a table file; `None` for the empty table written when the lists overflowed the
    /// classes. A missing or corrupt file is an error, so the index is rebuilt.
    fn map(path: &Path) -> Result<Option<Self>, ListError> {
        let file = File::open(path).map_err(|e| ListError::io(path, e))?;
        // SAFETY: table files are only ever replaced by rename, never modified in place.
        let bytes = unsafe { Mmap::map(&file) }.map_err(|e| ListError::io(path, e))?;
        let corrupt = || {
            ListError::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not a schoolgate key table",
                ),
            )
        };
        let word = |i: usize| -> Option<u64> {
            let b = bytes.get(8 * i..8 * i + 8)?;
            Some(u64::from_le_bytes(b.try_into().ok()?))
        };
        if bytes.get(..8) != Some(&TABLE_MAGIC[..]) {
            return Err(corrupt());
        }
        let (buckets, n_classes, line_bits) = (
            word(1).ok_or_else(corrupt)? as usize,
            word(2).ok_or_else(corrupt)? as usize,
            word(3).ok_or_else(corrupt)?,
        );
        let slots_at = 8 * (4 + n_classes);
        let size = buckets
            .checked_mul(BUCKET_SLOTS * (SLOT_BYTES + ORIGIN_BYTES))
            .and_then(|s| s.checked_add(slots_at + 1));
        if n_classes > MAX_CLASSES || line_bits > 24 || size != Some(bytes.len()) {
            return Err(corrupt());
        }
        if buckets == 0 {
            return Ok(None);
        }
        let mut classes = [0u64; MAX_CLASSES];
        for (i, c) in classes.iter_mut().enumerate().take(n_classes) {
            *c = word(4 + i).ok_or_else(corrupt)?;
        }
        Ok(Some(KeyTable {
            bytes,
            classes,
            slots_at,
            buckets,
            line_bits: line_bits as u32,
        }))
    }

    /// A bucket's slots, from three 8-byte reads (a bucket is 24 bytes, 8-byte aligned in the
    /// file).
    #[inline]
    fn bucket(&self, b: usize) -> [u64; BUCKET_SLOTS] {
        let at = self.slots_at + BUCKET_BYTES * b;
        let Some(bytes) = self
            .bytes
            .get(at..at + BUCKET_BYTES)
            .and_then(|b| <&[u8; BUCKET_BYTES]>::try_from(b).ok())
        else {
            return [0; BUCKET_SLOTS];
        };
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[8 * i..8 * i + 8]);
            u64::from_le_bytes(w)
        };
        let (w0, w1, w2) = (word(0), word(1), word(2));
        const LOW48: u64 = (1 << 48) - 1;
        [
            w0 & LOW48,
            (w0 >> 48) | ((w1 & 0xFFFF_FFFF) << 16),
            (w1 >> 32) | ((w2 & 0xFFFF) << 32),
            w2 >> 16,
        ]
    }

    /// The slot and mask of a listed key with this hash.
    #[inline]
    fn find(&self, hash: u64) -> Option<(usize, u64)> {
        let fp = fingerprint(hash);
        let (b1, b2) = buckets_of(hash, self.buckets);
        for b in [b1, b2] {
            for (j, s) in self.bucket(b).into_iter().enumerate() {
                if s & !0xFF == fp {
                    return Some((b * BUCKET_SLOTS + j, self.classes[(s & 0xFF) as usize]));
                }
            }
        }
        None
    }

    /// The kept origin of the key in slot `i`.
    /// Where the origin of slot `i` starts in the file.
    #[inline]
    fn origin_offset(&self, i: usize) -> usize {
        self.slots_at + BUCKET_BYTES * self.buckets + ORIGIN_BYTES * i
    }

    fn origin_at(&self, i: usize) -> Option<Origin> {
        if i >= self.buckets * BUCKET_SLOTS {
            return None;
        }
        let at = self.origin_offset(i);
        let word = self.bytes.get(at..at + 4)?.try_into().ok()?;
        Some(Origin::widen(u32::from_le_bytes(word), self.line_bits)).filter(|o| *o != Origin::NONE)
    }

    /// Probes the name's parent domains and the name itself. Their hashes come first and
    /// their buckets are asked for together, so the probes' cache misses overlap instead of
    /// each waiting for the one before.
    #[inline]
    fn lookup(&self, key: &[u8]) -> Matches {
        let mut m = Matches::default();
        let mut probes = [(0u64, 0usize); PROBES_AT_ONCE];
        let mut n = 0;
        let mut h = HASH_START;
        for (i, &b) in key.iter().enumerate() {
            if b == b'.' {
                probes[n] = (hash_finish(h, i), i);
                n += 1;
                if n == PROBES_AT_ONCE {
                    self.probe(&probes, &mut m);
                    n = 0;
                }
            }
            h = hash_step(h, b);
        }
        if !key.is_empty() {
            probes[n] = (hash_finish(h, key.len()), key.len());
            n += 1;
        }
        self.probe(&probes[..n], &mut m);
        m
    }

    /// Looks up `(hash, key length)` probes in order, their buckets prefetched first when there
    /// are misses to overlap: of a name's two probes, the first (its top-level domain) is always
    /// cached, and asking for the second's buckets early only costs (measured: 4-9% slower).
    #[inline]
    fn probe(&self, probes: &[(u64, usize)], m: &mut Matches) {
        if probes.len() > 2 {
            for &(hash, _) in probes {
                let (b1, b2) = buckets_of(hash, self.buckets);
                for b in [b1, b2] {
                    let at = self.slots_at + BUCKET_BYTES * b;
                    // A bucket may straddle two cache lines.
                    prefetch(&self.bytes, at);
                    prefetch(&self.bytes, at + BUCKET_BYTES - 1);
                }
            }
        }
        for &(hash, at) in probes {
            if let Some((slot, mask)) = self.find(hash) {
                m.push(at, mask, slot as u32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::compile::compile_list;
    use super::*;

    #[test]
    fn walk_respects_label_boundaries_and_merges_lists() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        let b = dir.path().join("b.txt");
        fs::write(&a, "tiktok.com\nexample.org\n").unwrap();
        fs::write(&b, "www.tiktok.com\n@@||edu.tiktok.com^\n").unwrap();
        let cache = dir.path().join("c");
        let lists = vec![
            compile_list("a", &[a], &cache).unwrap(),
            compile_list("b", &[b], &cache).unwrap(),
        ];
        let idx = DomainIndex::build(&lists, &cache).unwrap();
        let m = idx.lookup(b"com.tiktok.www.x");
        assert!(m.blocks(0) && m.blocks(1));
        assert_eq!(m.hits().len(), 2);
        assert_eq!(m.hits()[0].key_len as usize, "com.tiktok".len());
        assert_eq!(idx.lookup(b"com.tiktokfoo").mask, 0);
        assert_eq!(idx.lookup(b"com").mask, 0);
        let e = idx.lookup(b"com.tiktok.edu");
        assert!(e.blocks(0) && e.allows(1) && !e.blocks(1));
        assert!(idx.lookup(b"org.example").blocks(0));
        assert!(idx.table.is_some());
    }

    #[test]
    fn table_and_walk_agree() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        let b = dir.path().join("b.txt");
        // Some listed names deeper than the probes looked up at once.
        let names: Vec<String> = (0..2000)
            .map(|i| match i % 10 {
                0 => format!("d1.d2.d3.d4.d5.d6.d7.d8.n{i}.example{}", i % 7),
                _ => format!("n{i}.example{}", i % 7),
            })
            .collect();
        fs::write(
            &a,
            names
                .iter()
                .step_by(2)
                .map(|n| format!("{n}\n"))
                .collect::<String>(),
        )
        .unwrap();
        fs::write(
            &b,
            names
                .iter()
                .step_by(3)
                .map(|n| format!("{n}\n@@||ok.{n}^\n"))
                .collect::<String>(),
        )
        .unwrap();
        let cache = dir.path().join("c");
        let lists = vec![
            compile_list("a", &[a], &cache).unwrap(),
            compile_list("b", &[b], &cache).unwrap(),
        ];
        let idx = DomainIndex::build(&lists, &cache).unwrap();
        assert!(idx.table.is_some());
        let mut key = Vec::new();
        let mut listed = 0;
        for n in &names {
            for q in [
                n.clone(),
                format!("www.{n}"),
                format!("ok.{n}"),
                format!("x{n}"),
                format!("a.b.c.d.e.f.g.h.i.j.{n}"),
            ] {
                crate::domain::reverse_key(&q, &mut key);
                let (t, w) = (idx.lookup(&key), idx.walk(&key));
                assert_eq!(t.mask, w.mask, "{q}");
                let lens = |m: &Matches| {
                    m.hits()
                        .iter()
                        .map(|h| (h.key_len, h.mask))
                        .collect::<Vec<_>>()
                };
                assert_eq!(lens(&t), lens(&w), "{q}");
                listed += usize::from(t.mask != 0);
            }
        }
        assert!(listed > 2000);
        // The table comes back from the cache with the index.
        let again = DomainIndex::build(&lists, &cache).unwrap();
        assert!(again.table.is_some());
        crate::domain::reverse_key("www.n4.example4", &mut key);
        assert!(again.lookup(&key).blocks(0));
    }

    #[test]
    fn the_table_keeps_the_origin_of_names_one_list_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a2, b) = (
            dir.path().join("a.txt"),
            dir.path().join("a2.txt"),
            dir.path().join("b.txt"),
        );
        fs::write(&a, "# a\nonly-a.example\nshared.example\n").unwrap();
        fs::write(&a2, "\n\nsecond-file.example\n").unwrap();
        fs::write(&b, "shared.example\n@@||ok.only-a.example^\n").unwrap();
        let cache = dir.path().join("c");
        let lists = vec![
            compile_list("a", &[a, a2], &cache).unwrap(),
            compile_list("b", &[b], &cache).unwrap(),
        ];
        let idx = DomainIndex::build(&lists, &cache).unwrap();
        let mut key = Vec::new();
        for (name, bit, list, allow) in [
            ("only-a.example", 1u64, 0, false),
            ("second-file.example", 1, 0, false),
            ("ok.only-a.example", 1 << 33, 1, true),
        ] {
            crate::domain::reverse_key(name, &mut key);
            let (mask, kept) = idx.origin(&key).expect(name);
            assert_eq!(mask, bit, "{name}");
            let (file, line) = lists[list].origin(&key, allow).unwrap();
            assert_eq!(lists[list].sources[kept.source()], file, "{name}");
            assert_eq!(kept.line(), line, "{name}");
            // The hit a lookup returns leads to the same origin without a second lookup.
            let hit = *idx.lookup(&key).hits().last().expect(name);
            assert_eq!(idx.origin_at(hit.slot), Some(kept), "{name}");
        }
        crate::domain::reverse_key("shared.example", &mut key);
        assert_eq!(idx.origin(&key), None, "two lists hold it: ask the lists");
        crate::domain::reverse_key("unlisted.example", &mut key);
        assert_eq!(idx.origin(&key), None);
    }

    /// A table of `n` synthetic keys (`key-{i}`, one of three masks, origin line `i`).
    fn synthetic_table(n: usize) -> (TableBuilder, Vec<(Vec<u8>, u64)>) {
        let mut table = TableBuilder::new(n, 1);
        let keys: Vec<(Vec<u8>, u64)> = (0..n)
            .map(|i| (format!("key-{i}").into_bytes(), 1u64 << (i % 3)))
            .collect();
        for (i, (key, mask)) in keys.iter().enumerate() {
            table.insert(key, *mask, Origin::pack(i as u64));
        }
        (table, keys)
    }

    #[test]
    fn a_table_at_full_load_holds_every_key_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.table");
        let n = 200_000;
        let (builder, keys) = synthetic_table(n);
        builder.write(&path).unwrap();
        let table = KeyTable::map(&path).unwrap().expect("every key placed");
        let slots = table.buckets * BUCKET_SLOTS;
        assert!(n * 100 >= slots * 93, "{n} keys in {slots} slots");
        assert_eq!(
            fs::metadata(&path).unwrap().len() as usize,
            table.slots_at + slots * (SLOT_BYTES + ORIGIN_BYTES) + 1
        );
        for (i, (key, mask)) in keys.iter().enumerate() {
            let (slot, m) = table.find(key_hash(key)).expect("listed key found");
            let origin = table.origin_at(slot).expect("its origin");
            assert_eq!(m, *mask, "{i}");
            assert_eq!((origin.source(), origin.line()), (0, i as u32), "{i}");
        }
        let found = (0..n)
            .filter(|i| {
                table
                    .find(key_hash(format!("other-{i}").as_bytes()))
                    .is_some()
            })
            .count();
        assert_eq!(found, 0, "unlisted keys found");
    }

    #[test]
    fn kicks_place_keys_where_both_buckets_are_full() {
        let (builder, _) = synthetic_table(20_000);
        let buckets = 20_000 * 100 / (BUCKET_SLOTS * 97);
        // Without moving keys aside, some key finds both its buckets full at this load.
        let mut used = vec![0usize; buckets];
        let stuck = builder.hashes.iter().any(|&h| {
            let (b1, b2) = buckets_of(h, buckets);
            match [b1, b2].into_iter().find(|&b| used[b] < BUCKET_SLOTS) {
                Some(b) => {
                    used[b] += 1;
                    false
                }
                None => true,
            }
        });
        assert!(stuck);
        let slots = builder
            .place_all(buckets)
            .expect("the kick walk places them");
        assert!(
            builder.place_all(buckets) == Some(slots.clone()),
            "the same keys give the same table"
        );
        let mut placed: Vec<u32> = slots.iter().copied().filter(|&k| k != FREE).collect();
        placed.sort_unstable();
        assert!(placed.iter().copied().eq(0..20_000), "each key once");
        for (s, &k) in slots.iter().enumerate() {
            if k != FREE {
                let (b1, b2) = buckets_of(builder.hashes[k as usize], buckets);
                assert!(
                    [b1, b2].contains(&(s / BUCKET_SLOTS)),
                    "key {k} in slot {s}"
                );
            }
        }
    }

    #[test]
    fn keys_that_cannot_be_placed_leave_the_fst_walk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.table");
        // Nine keys with one hash share two buckets of four slots however large the table grows.
        let mut builder = TableBuilder::new(9, 1);
        for _ in 0..9 {
            builder.insert(b"com.same", 1, Origin::NONE);
        }
        builder.write(&path).unwrap();
        assert!(KeyTable::map(&path).unwrap().is_none());
    }

    /// One list of `text`, compiled and indexed in a fresh cache (returned with its directory).
    fn one_list_index(text: &str) -> (tempfile::TempDir, Vec<CompiledList>, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        fs::write(&a, text).unwrap();
        let cache = dir.path().join("c");
        let lists = vec![compile_list("a", &[a], &cache).unwrap()];
        DomainIndex::build(&lists, &cache).unwrap();
        (dir, lists, cache)
    }

    #[test]
    fn corrupt_table_is_rebuilt() {
        let (_dir, lists, cache) = one_list_index("tiktok.com\n");
        fs::write(cache.join("index.table"), b"garbage").unwrap();
        let idx = DomainIndex::build(&lists, &cache).unwrap();
        assert!(idx.lookup(b"com.tiktok.www").blocks(0));
    }

    #[test]
    fn a_damaged_fst_is_found_by_its_checksum_and_rebuilt() {
        let (_dir, lists, cache) = one_list_index("tiktok.com\nexample.org\n");
        let path = cache.join("index.fst");
        let good = fs::read(&path).unwrap();
        assert!(crate::lists::compile::map_file(&path).is_ok());
        let mut bad = good.clone();
        bad[good.len() / 2] ^= 0x40;
        fs::write(&path, &bad).unwrap();
        assert!(crate::lists::compile::map_file(&path).is_err());
        let idx = DomainIndex::build(&lists, &cache).unwrap();
        assert_eq!(fs::read(&path).unwrap(), good, "rebuilt as it was");
        assert!(idx.walk(b"com.tiktok").blocks(0));
    }

    #[test]
    fn origins_squeeze_into_three_bytes_or_are_left_to_the_list() {
        let one_file = Origin::line_bits_for(1);
        assert_eq!(one_file, 23);
        let o = Origin::pack(5_000_000);
        assert_eq!(Origin::widen(o.squeeze(one_file), one_file), o);
        let three_files = Origin::line_bits_for(3);
        assert_eq!(three_files, 22);
        let o = Origin::pack((2 << 32) | 4_000_000);
        assert_eq!((o.source(), o.line()), (2, 4_000_000));
        assert_eq!(Origin::widen(o.squeeze(three_files), three_files), o);
        // A line past what the bits hold is not kept: the key file search finds it instead.
        assert_eq!(Origin::pack((2 << 32) | 5_000_000).squeeze(three_files), 0);
        assert_eq!(Origin::NONE.squeeze(one_file), 0);
    }
}
