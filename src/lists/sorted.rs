//! One list's compiled names: a sorted, memory-mapped key file.
//!
//! Queries never read these files; they walk the merged index (an FST). A list's own file only
//! feeds the index build (a k-way merge of sorted files) and answers "which line listed this?".
//! Writing a flat sorted file costs a fraction of building an FST (no node registry), which is
//! what makes compiling a million-name list fast; the one FST a reload builds is the index.
//!
//! "Which line listed this?" is asked for every blocked query that is journalled, so [`get`]
//! must not walk a binary search across the whole mapping (a cache and TLB miss per step, each
//! in a different part of the file). Every `stride`th key's first 8 bytes are stored
//! together as a sample array: the search runs over that small, hot array and then over the
//! one block of `stride` keys that can hold the key, a few neighbouring cache lines.
//!
//! Layout, little-endian unless noted: `b"SGKEYS02"`, count (u64), checksum (u64, FNV-1a of
//! everything after it), stride (u64), `ceil(count / stride)` samples (the first 8 bytes of keys
//! `0, stride, 2 * stride ...`, zero-padded, big-endian u64 so comparing numbers compares the
//! bytes), `count + 1` key offsets (u32), `count` values (u64), then the keys end to end.
//! A file in any other layout (an older version included) is refused as corrupt, so the list is
//! recompiled from its sources.
//!
//! [`get`]: SortedKeys::get

use std::cmp::Ordering;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use memmap2::Mmap;

use super::compile::tmp_path;
use super::ListError;

const MAGIC: &[u8; 8] = b"SGKEYS02";
const HEADER: usize = 32;
/// Keys per sample: a block of 32 keys is about a kilobyte of keys and 132 bytes of offsets, and
/// the samples cost a quarter of a byte per key. Measured (`cargo bench --bench decision --
/// origin`, 1M names) 16 and 64 were within noise of 32, and 128 was a quarter slower.
const STRIDE: usize = 32;

/// A mapped key file.
pub struct SortedKeys {
    bytes: Mmap,
    count: usize,
    stride: usize,
    samples: usize,
    offsets_at: usize,
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
        let mut samples = Vec::with_capacity(count.div_ceil(STRIDE) * 8);
        let mut offsets = Vec::with_capacity((count + 1) * 4);
        let mut values = Vec::with_capacity(count * 8);
        let mut total = 0u32;
        for (i, (k, v)) in entries.clone().enumerate() {
            if i % STRIDE == 0 {
                samples.extend_from_slice(&prefix(k).to_be_bytes());
            }
            offsets.extend_from_slice(&total.to_le_bytes());
            values.extend_from_slice(&v.to_le_bytes());
            total = u32::try_from(k.len())
                .ok()
                .and_then(|l| total.checked_add(l))
                .ok_or_else(|| corrupt(path, "keys exceed 4 GB"))?;
        }
        offsets.extend_from_slice(&total.to_le_bytes());
        let stride = (STRIDE as u64).to_le_bytes();
        let mut sum = Fnv::default();
        sum.update(&stride);
        sum.update(&samples);
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
            w.write_all(&stride)?;
            w.write_all(&samples)?;
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
    ///
    /// The check reads the file once through a small buffer (the checksum, and that the key
    /// offsets never decrease or run past the keys): through the mapping, the whole file (34
    /// bytes a name) was resident at once, the server's peak while a reload opened a large list.
    /// The samples are not compared with the keys: a matching checksum means `write` made them.
    pub fn open(path: &Path) -> Result<Self, ListError> {
        let mut file = File::open(path).map_err(|e| ListError::io(path, e))?;
        let len = file.metadata().map_err(|e| ListError::io(path, e))?.len();
        let mut head = [0u8; HEADER];
        if file.read_exact(&mut head).is_err() || &head[..8] != MAGIC {
            return Err(corrupt(path, "not a schoolgate key file"));
        }
        let count = usize::try_from(le_u64(&head, 8)).map_err(|_| corrupt(path, "bad count"))?;
        let stride = usize::try_from(le_u64(&head, 24))
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| corrupt(path, "bad sample stride"))?;
        let samples = count.div_ceil(stride);
        let offsets_at = samples
            .checked_mul(8)
            .and_then(|n| n.checked_add(HEADER))
            .ok_or_else(|| corrupt(path, "bad count"))?;
        let values_at = count
            .checked_add(1)
            .and_then(|n| n.checked_mul(4))
            .and_then(|n| n.checked_add(offsets_at))
            .ok_or_else(|| corrupt(path, "bad count"))?;
        let keys_at = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(values_at))
            .filter(|&n| n as u64 <= len)
            .ok_or_else(|| corrupt(path, "truncated"))?;
        let mut sum = Fnv::default();
        sum.update(&head[24..]);
        let mut last = 0u32;
        let mut ordered = true;
        let mut buf = vec![0u8; 1 << 16];
        let mut at = HEADER;
        while (at as u64) < len {
            let n = buf
                .len()
                .min(usize::try_from(len - at as u64).unwrap_or(usize::MAX));
            file.read_exact(&mut buf[..n])
                .map_err(|e| ListError::io(path, e))?;
            sum.update(&buf[..n]);
            // Offsets start 8-aligned and every read but the last is a multiple of 4 long, so
            // none straddles two reads.
            let (from, to) = (offsets_at.max(at), values_at.min(at + n));
            for o in (from..to).step_by(4) {
                let b = &buf[o - at..o - at + 4];
                let offset = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                ordered &= offset >= last;
                last = offset;
            }
            at += n;
        }
        if sum.0 != le_u64(&head, 16) {
            return Err(corrupt(path, "checksum mismatch"));
        }
        if !ordered || last as usize > len as usize - keys_at {
            return Err(corrupt(path, "bad key offsets"));
        }
        // SAFETY: key files are only ever replaced by rename, never modified in place, so the
        // mapped bytes cannot change underneath us while this mapping lives.
        let bytes = unsafe { Mmap::map(&file) }.map_err(|e| ListError::io(path, e))?;
        if bytes.len() as u64 != len {
            return Err(corrupt(path, "changed while it was checked"));
        }
        Ok(SortedKeys {
            bytes,
            count,
            stride,
            samples,
            offsets_at,
            values_at,
            keys_at,
        })
    }

    /// Drops the pages a full pass (a checksum, an index build) brought in, so the file costs
    /// resident memory only for what lookups touch.
    pub fn release(&self) {
        super::compile::release(&self.bytes);
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
        let at = self.offsets_at + i * 4;
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

    fn sample(&self, j: usize) -> u64 {
        let at = HEADER + j * 8;
        u64::from_be_bytes(self.bytes[at..at + 8].try_into().unwrap_or_default())
    }

    /// The value stored for `key`.
    pub fn get(&self, key: &[u8]) -> Option<u64> {
        // The last block whose first key is at or below `key` is the only one that can hold it.
        // Samples order like their keys' prefixes; on a tie (keys sharing 8 bytes, as
        // `com.blog...` do) the sample's whole key decides, so the search still ends in one block.
        let want = prefix(key);
        let (mut lo, mut hi) = (0, self.samples);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let first = mid * self.stride;
            match self
                .sample(mid)
                .cmp(&want)
                .then_with(|| self.key(first).cmp(key))
            {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Some(self.value(first)),
            }
        }
        let first = lo.checked_sub(1)? * self.stride;
        let (mut lo, mut hi) = (first + 1, first.saturating_add(self.stride).min(self.count));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid).cmp(key) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Some(self.value(mid)),
            }
        }
        None
    }
}

/// A key's first 8 bytes, zero-padded, as a big-endian number. Names never contain NUL, so a
/// short key's padding sorts it before its extensions, and `a < b` implies `prefix(a) <=
/// prefix(b)` for any bytes.
pub(super) fn prefix(key: &[u8]) -> u64 {
    let mut p = [0u8; 8];
    let n = key.len().min(8);
    p[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(p)
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
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A key file in the first layout (`SGKEYS01`: no samples), as older releases wrote it.
    pub(crate) fn version_1(entries: &[(&[u8], u64)]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut total = 0u32;
        for (k, _) in entries {
            body.extend_from_slice(&total.to_le_bytes());
            total += k.len() as u32;
        }
        body.extend_from_slice(&total.to_le_bytes());
        for (_, v) in entries {
            body.extend_from_slice(&v.to_le_bytes());
        }
        for (k, _) in entries {
            body.extend_from_slice(k);
        }
        let mut sum = Fnv::default();
        sum.update(&body);
        let mut file = b"SGKEYS01".to_vec();
        file.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        file.extend_from_slice(&sum.0.to_le_bytes());
        file.extend_from_slice(&body);
        file
    }

    /// Writes sorted, distinct `keys` (value = position), maps them, and checks `get` against a
    /// binary search of the keys in memory for every key and for each of `absent`.
    fn check_against_plain_search(keys: &[Vec<u8>], absent: &[Vec<u8>]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.keys");
        SortedKeys::write(
            &path,
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.as_slice(), i as u64 * 3)),
        )
        .unwrap();
        let mapped = SortedKeys::open(&path).unwrap();
        assert_eq!(mapped.len(), keys.len());
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(mapped.key(i), k.as_slice());
            assert_eq!(
                mapped.get(k),
                Some(i as u64 * 3),
                "key {i} of {}",
                keys.len()
            );
        }
        for probe in absent {
            let expected = keys.binary_search(probe).ok().map(|i| i as u64 * 3);
            assert_eq!(mapped.get(probe), expected, "probe {probe:?}");
        }
    }

    fn sorted(mut keys: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        keys.sort();
        keys.dedup();
        keys
    }

    /// Near misses around each key: shorter, longer, and one byte off either way.
    fn neighbours(keys: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = vec![Vec::new(), vec![0], vec![0xff; 12], b"\x00com".to_vec()];
        for k in keys {
            out.push(k[..k.len().saturating_sub(1)].to_vec());
            out.push([k.as_slice(), b"a"].concat());
            out.push([k.as_slice(), b"\0"].concat());
            if let Some((&last, rest)) = k.split_last() {
                out.push([rest, &[last.wrapping_add(1)]].concat());
                out.push([rest, &[last.wrapping_sub(1)]].concat());
            }
        }
        out
    }

    #[test]
    fn get_finds_every_key_across_blocks_shared_prefixes_and_short_keys() {
        for size in [
            0,
            1,
            2,
            STRIDE - 1,
            STRIDE,
            STRIDE + 1,
            3 * STRIDE - 1,
            5 * STRIDE + 7,
        ] {
            // A third are short (under 8 bytes), the rest share `com.blogspot.` (13 bytes), so
            // most samples tie on their prefix and only the whole key tells blocks apart.
            let keys = sorted(
                (0..size)
                    .map(|i| match i % 3 {
                        0 => format!("c{i}").into_bytes(),
                        _ => format!("com.blogspot.{i:05}").into_bytes(),
                    })
                    .collect(),
            );
            check_against_plain_search(&keys, &neighbours(&keys));
        }
        let same_prefix = sorted(
            (0..4 * STRIDE)
                .map(|i| format!("uk.co.ab.{}", i * 7).into_bytes())
                .chain([
                    b"uk.co.ab".to_vec(),
                    b"uk.co.a".to_vec(),
                    b"uk.co.ac".to_vec(),
                ])
                .collect(),
        );
        check_against_plain_search(&same_prefix, &neighbours(&same_prefix));
    }

    proptest! {
        #[test]
        fn get_agrees_with_a_binary_search(
            keys in prop::collection::vec("(com\\.abcdefgh|uk\\.co|)[ab.]{0,6}", 0..300),
            absent in prop::collection::vec("(com\\.abcdefgh|uk\\.co|)[ab.]{0,7}", 0..40),
        ) {
            let keys = sorted(keys.into_iter().map(String::into_bytes).collect());
            let absent: Vec<Vec<u8>> = absent.into_iter().map(String::into_bytes).collect();
            check_against_plain_search(&keys, &absent);
        }
    }

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

    #[test]
    fn damaged_files_and_old_layouts_are_refused_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.keys");
        let keys: Vec<Vec<u8>> = (0..3 * STRIDE)
            .map(|i| format!("com.example{i:04}").into_bytes())
            .collect();
        let entries: Vec<(&[u8], u64)> = keys.iter().map(|k| (k.as_slice(), 1)).collect();
        SortedKeys::write(&path, entries.iter().copied()).unwrap();
        let good = fs::read(&path).unwrap();

        // A flipped sample or stride fails the checksum.
        for at in [HEADER + 8 + 7, 24] {
            let mut bytes = good.clone();
            bytes[at] ^= 1;
            fs::write(&path, &bytes).unwrap();
            assert!(matches!(
                SortedKeys::open(&path),
                Err(ListError::Corrupt { .. })
            ));
        }
        // Key offsets that run backwards are refused even with a matching checksum: reading
        // keys through them would go out of bounds.
        let mut bytes = good.clone();
        let offsets_at = HEADER + 3 * 8;
        bytes[offsets_at + 4..offsets_at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut sum = Fnv::default();
        sum.update(&bytes[24..]);
        bytes[16..24].copy_from_slice(&sum.0.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let err = SortedKeys::open(&path).err().unwrap();
        assert!(err.to_string().contains("offsets"), "{err}");

        fs::write(&path, version_1(&entries)).unwrap();
        assert!(matches!(
            SortedKeys::open(&path),
            Err(ListError::Corrupt { .. })
        ));
    }
}
