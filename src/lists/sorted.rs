//! One list's compiled names: a sorted, memory-mapped key file.
//!
//! Queries never read these files; they walk the merged index (an FST). A list's own file only
//! feeds the index build (a k-way merge of sorted files) and answers "which line listed this?".
//! Writing a flat sorted file costs a fraction of building an FST (no node registry), which is
//! what makes compiling a million-name list fast; the one FST a reload builds is the index.
//!
//! Layout, little-endian: `b"SGKEYS01"`, count (u64), checksum (u64, FNV-1a of everything after
//! the header), `count + 1` key offsets (u32), `count` values (u64), then the keys end to end.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use memmap2::Mmap;

use super::compile::tmp_path;
use super::ListError;

const MAGIC: &[u8; 8] = b"SGKEYS01";
const HEADER: usize = 24;

/// A mapped key file.
pub struct SortedKeys {
    bytes: Mmap,
    count: usize,
    values_at: usize,
    keys_at: usize,
}

impl SortedKeys {
    /// Writes sorted, distinct `(key, value)` pairs to `path` atomically.
    pub fn write<'a>(
        path: &Path,
        entries: impl ExactSizeIterator<Item = (&'a [u8], u64)> + Clone,
    ) -> Result<(), ListError> {
        let count = entries.len();
        let mut offsets = Vec::with_capacity((count + 1) * 4);
        let mut values = Vec::with_capacity(count * 8);
        let mut total = 0u32;
        for (k, v) in entries.clone() {
            offsets.extend_from_slice(&total.to_le_bytes());
            values.extend_from_slice(&v.to_le_bytes());
            total = u32::try_from(k.len())
                .ok()
                .and_then(|l| total.checked_add(l))
                .ok_or_else(|| corrupt(path, "keys exceed 4 GB"))?;
        }
        offsets.extend_from_slice(&total.to_le_bytes());
        let mut sum = Fnv::default();
        sum.update(&offsets);
        sum.update(&values);
        for (k, _) in entries.clone() {
            sum.update(k);
        }
        let tmp = tmp_path(path);
        let write = || -> std::io::Result<()> {
            let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            w.write_all(MAGIC)?;
            w.write_all(&(count as u64).to_le_bytes())?;
            w.write_all(&sum.0.to_le_bytes())?;
            w.write_all(&offsets)?;
            w.write_all(&values)?;
            for (k, _) in entries {
                w.write_all(k)?;
            }
            w.flush()
        };
        write().map_err(|e| ListError::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| ListError::io(path, e))
    }

    /// Maps a key file and checks it, so a corrupt cache is rebuilt, not trusted.
    pub fn open(path: &Path) -> Result<Self, ListError> {
        let file = File::open(path).map_err(|e| ListError::io(path, e))?;
        // SAFETY: key files are only ever replaced by rename, never modified in place, so the
        // mapped bytes cannot change underneath us while this mapping lives.
        let bytes = unsafe { Mmap::map(&file) }.map_err(|e| ListError::io(path, e))?;
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(corrupt(path, "not a schoolgate key file"));
        }
        let count = usize::try_from(le_u64(&bytes, 8)).map_err(|_| corrupt(path, "bad count"))?;
        let values_at = count
            .checked_add(1)
            .and_then(|n| n.checked_mul(4))
            .and_then(|n| n.checked_add(HEADER))
            .ok_or_else(|| corrupt(path, "bad count"))?;
        let keys_at = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(values_at))
            .filter(|&n| n <= bytes.len())
            .ok_or_else(|| corrupt(path, "truncated"))?;
        let mut sum = Fnv::default();
        sum.update(&bytes[HEADER..]);
        if sum.0 != le_u64(&bytes, 16) {
            return Err(corrupt(path, "checksum mismatch"));
        }
        let keys = SortedKeys {
            bytes,
            count,
            values_at,
            keys_at,
        };
        if keys.offset(count) > keys.bytes.len() - keys_at
            || (0..count).any(|i| keys.offset(i) > keys.offset(i + 1))
        {
            return Err(corrupt(path, "bad key offsets"));
        }
        super::compile::release(&keys.bytes);
        Ok(keys)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn offset(&self, i: usize) -> usize {
        let at = HEADER + i * 4;
        u32::from_le_bytes(self.bytes[at..at + 4].try_into().unwrap_or_default()) as usize
    }

    /// The `i`th key in sorted order.
    pub fn key(&self, i: usize) -> &[u8] {
        &self.bytes[self.keys_at + self.offset(i)..self.keys_at + self.offset(i + 1)]
    }

    /// The `i`th value.
    pub fn value(&self, i: usize) -> u64 {
        le_u64(&self.bytes, self.values_at + i * 8)
    }

    /// The value stored for `key`.
    pub fn get(&self, key: &[u8]) -> Option<u64> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(self.value(mid)),
            }
        }
        None
    }
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

fn corrupt(path: &Path, why: &str) -> ListError {
    ListError::Corrupt {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// FNV-1a, 64-bit: enough to notice a truncated or overwritten cache file.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_lookup_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.keys");
        let entries: Vec<(&[u8], u64)> = vec![(b"com.a", 1), (b"com.a.b", 2), (b"org.x", 7)];
        SortedKeys::write(&path, entries.iter().copied()).unwrap();
        let k = SortedKeys::open(&path).unwrap();
        assert_eq!(k.len(), 3);
        assert_eq!(k.get(b"com.a.b"), Some(2));
        assert_eq!(k.get(b"org.x"), Some(7));
        assert_eq!(k.get(b"com"), None);
        assert_eq!(k.key(2), b"org.x");

        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            SortedKeys::open(&path),
            Err(ListError::Corrupt { .. })
        ));
        fs::write(&path, &bytes[..30]).unwrap();
        assert!(SortedKeys::open(&path).is_err());

        SortedKeys::write(&path, std::iter::empty::<(&[u8], u64)>()).unwrap();
        assert!(SortedKeys::open(&path).unwrap().is_empty());
    }
}
