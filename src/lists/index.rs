//! One FST over every list, so a query costs one walk however many categories there are.
//!
//! Each key maps to a bit mask: bit `i` means "list `i` blocks this name", bit `32 + i` means
//! "list `i` exempts it". The walk over a query's reversed key stops at every label boundary
//! that is a listed name, so a listed parent (`tiktok.com`) catches all names below it
//! (`www.tiktok.com`) and never a sibling that merely shares a prefix (`tiktokfoo.com`).
//!
//! It is built by merging the lists' sorted key files, and rebuilt only when one of them changed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use fst::raw::Output;
use fst::{Map, MapBuilder};
use memmap2::Mmap;

use super::compile::{map_file, tmp_path, write_atomic, CompiledList};
use super::sorted::SortedKeys;
use super::ListError;

/// Most lists one index can hold (one block bit and one allow bit each).
pub const MAX_LISTS: usize = 32;
/// How many listed ancestors of one name are remembered for explanation.
const MAX_HITS: usize = 8;

/// A listed ancestor of the query name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hit {
    /// Length of the matched prefix of the reversed key.
    pub key_len: u8,
    /// Lists that block (low 32 bits) or exempt (high 32 bits) it.
    pub mask: u64,
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

    fn push(&mut self, key_len: usize, mask: u64) {
        self.mask |= mask;
        if self.len < MAX_HITS {
            self.hits[self.len] = Hit {
                key_len: key_len as u8,
                mask,
            };
            self.len += 1;
        } else {
            // Keep the most specific hits: they are the ones an explanation names.
            self.hits.copy_within(1.., 0);
            self.hits[MAX_HITS - 1] = Hit {
                key_len: key_len as u8,
                mask,
            };
        }
    }
}

/// The merged, memory-mapped index.
pub struct DomainIndex {
    map: Map<Mmap>,
}

impl DomainIndex {
    /// Builds (or reuses) the index over `lists`; list `i` gets bits `i` and `32 + i`.
    pub fn build(lists: &[CompiledList], cache_dir: &Path) -> Result<Self, ListError> {
        if lists.len() > MAX_LISTS {
            return Err(ListError::TooManyLists(lists.len()));
        }
        let path = cache_dir.join("index.fst");
        let meta_path = cache_dir.join("index.meta");
        let fingerprint: String = lists
            .iter()
            .map(|l| format!("{}={}\n", l.name, l.fingerprint))
            .collect();
        let unchanged = lists.iter().all(|l| !l.recompiled)
            && fs::read_to_string(&meta_path).ok().as_deref() == Some(fingerprint.as_str());
        if unchanged {
            if let Ok(map) = map_file(&path) {
                return Ok(DomainIndex { map });
            }
        }
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
        let tmp = tmp_path(&path);
        let file = File::create(&tmp).map_err(|e| ListError::io(&tmp, e))?;
        let mut builder = MapBuilder::new(BufWriter::with_capacity(1 << 20, file))
            .map_err(|e| ListError::fst(&path, e))?;
        while let Some(Reverse((key, _))) = heap.peek().copied() {
            let mut mask = 0u64;
            while let Some(Reverse((k, i))) = heap.peek().copied() {
                if k != key {
                    break;
                }
                heap.pop();
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
        }
        let mut w = builder.into_inner().map_err(|e| ListError::fst(&path, e))?;
        w.flush().map_err(|e| ListError::io(&tmp, e))?;
        drop(w);
        fs::rename(&tmp, &path).map_err(|e| ListError::io(&path, e))?;
        write_atomic(&meta_path, fingerprint.as_bytes())?;
        Ok(DomainIndex {
            map: map_file(&path)?,
        })
    }

    /// Number of distinct names across all lists.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no list holds any name.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Walks the reversed key once, collecting every listed ancestor. No allocation.
    #[inline]
    pub fn lookup(&self, key: &[u8]) -> Matches {
        let fst = self.map.as_fst();
        let mut m = Matches::default();
        let mut node = fst.root();
        let mut out = Output::zero();
        for (i, &b) in key.iter().enumerate() {
            if b == b'.' && node.is_final() {
                m.push(i, out.cat(node.final_output()).value());
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
            m.push(key.len(), out.cat(node.final_output()).value());
        }
        m
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
    }
}
