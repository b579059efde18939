//! Turning a list's text sources into sorted, memory-mapped key files, and keeping them on disk
//! so an unchanged list is never compiled twice.
//!
//! Each list compiles to `<cache>/<name>.keys` (blocked names) and `<name>.allow.keys`
//! (exceptions written as `@@||name^` or RPZ passthru), each mapping the reversed name to the line
//! it came from (`source index << 32 | line`); see [`super::sorted`]. A sidecar `<name>.meta.json` records the sources'
//! size and modification time; when they match, the files are mapped as they are.
//!
//! Files are written to a temporary name and renamed into place: a mapped file is never
//! truncated underneath a running server (that would be SIGBUS), and a crash mid-compile leaves
//! the previous good files.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use fst::Map;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::parse::{parse_each, parse_keywords, BadLine, EntryKind, KeywordLine};
use super::sorted::{prefix, SortedKeys};
use super::ListError;
use crate::domain::reverse_key;

/// Sources with this extension hold only keyword rules (`adult.keywords`).
pub const KEYWORDS_EXTENSION: &str = "keywords";

/// A compiled, mapped list ready for the index.
pub struct CompiledList {
    /// The list's name (a category, `allow`, or `group:<name>:block` ...).
    pub name: String,
    /// Blocked names (reversed keys) -> `source << 32 | line`.
    pub block: SortedKeys,
    /// Exception names (reversed keys) -> `source << 32 | line`.
    pub allow: SortedKeys,
    /// The source files, indexed by the high half of a value.
    pub sources: Vec<PathBuf>,
    /// Keyword rules found in the sources, with the source they came from.
    pub keywords: Vec<(usize, KeywordLine)>,
    /// Lines that were skipped, for the report (first few per source).
    pub bad: Vec<BadLine>,
    /// All skipped lines.
    pub bad_count: usize,
    /// Whether this call compiled (false: reused the cache).
    pub recompiled: bool,
    /// What the cache was keyed on; changes whenever a source does.
    pub fingerprint: String,
}

impl CompiledList {
    /// Number of distinct blocked names.
    pub fn len(&self) -> usize {
        self.block.len()
    }

    /// True when nothing is blocked by this list.
    pub fn is_empty(&self) -> bool {
        self.block.is_empty()
    }

    /// Where a matched key came from: (file, line).
    pub fn origin(&self, key: &[u8], allow: bool) -> Option<(&Path, u32)> {
        let map = if allow { &self.allow } else { &self.block };
        let v = map.get(key)?;
        let src = (v >> 32) as usize;
        Some((self.sources.get(src)?.as_path(), v as u32))
    }
}

#[derive(Serialize, Deserialize, PartialEq)]
struct Meta {
    fingerprint: String,
    keywords: Vec<(usize, KeywordLine)>,
    bad: Vec<BadLine>,
    bad_count: usize,
}

/// Compiles (or reuses) one list from its sources.
pub fn compile_list(
    name: &str,
    sources: &[PathBuf],
    cache_dir: &Path,
) -> Result<CompiledList, ListError> {
    let fingerprint = fingerprint(sources)?;
    if let Some(list) = open_cached(name, sources, cache_dir, &fingerprint) {
        return Ok(list);
    }
    let block_path = cache_dir.join(format!("{name}.keys"));
    let allow_path = cache_dir.join(format!("{name}.allow.keys"));
    let meta_path = cache_dir.join(format!("{name}.meta.json"));
    fs::create_dir_all(cache_dir).map_err(|e| ListError::io(cache_dir, e))?;
    let mut block = Keys::default();
    let mut allow = Keys::default();
    let mut keywords = Vec::new();
    let mut bad = Vec::new();
    let mut bad_count = 0;
    for (src_idx, path) in sources.iter().enumerate() {
        let bytes = fs::read(path).map_err(|e| ListError::io(path, e))?;
        let mut key = Vec::new();
        let mut entries = 0usize;
        let parsed = if path.extension().is_some_and(|e| e == KEYWORDS_EXTENSION) {
            parse_keywords(path, &bytes)
        } else {
            parse_each(path, &bytes, |e| {
                entries += 1;
                key.clear();
                reverse_key(&e.name, &mut key);
                let value = ((src_idx as u64) << 32) | u64::from(e.line);
                match e.kind {
                    EntryKind::Block => block.push(&key, value),
                    EntryKind::Allow => allow.push(&key, value),
                }
            })
        };
        if entries == 0 && parsed.keywords.is_empty() {
            if let Some(first) = parsed.bad.first() {
                return Err(ListError::Unusable {
                    path: path.clone(),
                    count: parsed.bad_count,
                    first: first.clone(),
                });
            }
        }
        keywords.extend(parsed.keywords.into_iter().map(|k| (src_idx, k)));
        bad.extend(parsed.bad);
        bad_count += parsed.bad_count;
    }
    write_map(&block_path, block)?;
    write_map(&allow_path, allow)?;
    let meta = Meta {
        fingerprint: fingerprint.clone(),
        keywords,
        bad,
        bad_count,
    };
    write_atomic(&meta_path, &serde_json::to_vec(&meta).unwrap_or_default())?;

    Ok(CompiledList {
        name: name.to_string(),
        block: SortedKeys::open(&block_path)?,
        allow: SortedKeys::open(&allow_path)?,
        sources: sources.to_vec(),
        keywords: meta.keywords,
        bad: meta.bad,
        bad_count: meta.bad_count,
        recompiled: true,
        fingerprint,
    })
}

/// One list as compiled from its sources as they are now, or `None` when it must be compiled
/// (a source changed, or the compiled files are missing or corrupt).
pub fn open_compiled(
    name: &str,
    sources: &[PathBuf],
    cache_dir: &Path,
) -> Result<Option<CompiledList>, ListError> {
    let fingerprint = fingerprint(sources)?;
    Ok(open_cached(name, sources, cache_dir, &fingerprint))
}

/// The compiled files of a list whose sources have `fingerprint`, if they are there and sound.
fn open_cached(
    name: &str,
    sources: &[PathBuf],
    cache_dir: &Path,
    fingerprint: &str,
) -> Option<CompiledList> {
    let meta = read_meta(&cache_dir.join(format!("{name}.meta.json")))
        .filter(|m| m.fingerprint == fingerprint)?;
    let block = SortedKeys::open(&cache_dir.join(format!("{name}.keys"))).ok()?;
    let allow = SortedKeys::open(&cache_dir.join(format!("{name}.allow.keys"))).ok()?;
    Some(CompiledList {
        name: name.to_string(),
        block,
        allow,
        sources: sources.to_vec(),
        keywords: meta.keywords,
        bad: meta.bad,
        bad_count: meta.bad_count,
        recompiled: false,
        fingerprint: fingerprint.to_string(),
    })
}

/// Size and modification time of each source: cheap to compute, and any edit changes it.
fn fingerprint(sources: &[PathBuf]) -> Result<String, ListError> {
    let mut fp = String::new();
    for path in sources {
        let md = fs::metadata(path).map_err(|e| ListError::io(path, e))?;
        let mtime = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        fp.push_str(&format!("{}:{}:{};", path.display(), md.len(), mtime));
    }
    Ok(fp)
}

fn read_meta(path: &Path) -> Option<Meta> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Keys to compile, stored end to end in one buffer: a million names cost two allocations, not a
/// million, and sorting compares an inline 8-byte prefix before touching the buffer.
#[derive(Default)]
struct Keys {
    bytes: Vec<u8>,
    /// (first 8 key bytes big-endian, zero-padded; start in `bytes`; length; value)
    items: Vec<(u64, u32, u32, u64)>,
}

impl Keys {
    fn push(&mut self, key: &[u8], value: u64) {
        self.items.push((
            prefix(key),
            self.bytes.len() as u32,
            key.len() as u32,
            value,
        ));
        self.bytes.extend_from_slice(key);
    }

    fn key(&self, item: &(u64, u32, u32, u64)) -> &[u8] {
        &self.bytes[item.1 as usize..(item.1 + item.2) as usize]
    }

    /// Sorted by key then value, so the first line of a duplicated name wins the dedup.
    fn sort_dedup(&mut self) {
        let mut items = std::mem::take(&mut self.items);
        // Names never contain NUL, so zero padding orders a short key before its extensions.
        items.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| self.key(a).cmp(self.key(b)))
                .then(a.3.cmp(&b.3))
        });
        items.dedup_by(|a, b| a.0 == b.0 && self.key(a) == self.key(b));
        self.items = items;
    }
}

/// Sorts, de-duplicates (first line wins) and writes a key file atomically.
fn write_map(path: &Path, mut keys: Keys) -> Result<(), ListError> {
    keys.sort_dedup();
    SortedKeys::write(path, keys.items.iter().map(|item| (keys.key(item), item.3)))
}

/// Writes bytes to a sibling temporary file and renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ListError> {
    let tmp = tmp_path(path);
    fs::write(&tmp, bytes).map_err(|e| ListError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| ListError::io(path, e))
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Maps a compiled file and checks its checksum, so a corrupt cache is rebuilt, not trusted.
pub(crate) fn map_file(path: &Path) -> Result<Map<Mmap>, ListError> {
    let mut file = File::open(path).map_err(|e| ListError::io(path, e))?;
    verify_fst(&mut file).map_err(|e| ListError::io(path, e))?;
    // SAFETY: compiled files are only ever replaced by rename, never modified in place, so the
    // mapped bytes cannot change underneath us while this mapping lives.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ListError::io(path, e))?;
    let map = Map::new(mmap).map_err(|e| ListError::fst(path, e))?;
    // Reading its header and root mapped whole page-cache folios (a megabyte of a 1,000,000-name
    // index) that queries, which probe the table, then never touch.
    release(map.as_fst().as_inner());
    Ok(map)
}

/// The check `fst` makes (a masked CRC-32C of everything before the stored checksum), read
/// through a small buffer: through the mapping, the whole file (15 MB for 1,000,000 names) was
/// resident at once and set the server's peak memory at start-up.
fn verify_fst(file: &mut File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    let body = len.checked_sub(4).ok_or(std::io::ErrorKind::InvalidData)?;
    let mut crc = 0u32;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = body;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        file.read_exact(&mut buf[..n])?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        left -= n as u64;
    }
    let mut stored = [0u8; 4];
    file.read_exact(&mut stored)?;
    file.seek(SeekFrom::Start(0))?;
    let masked = (crc.rotate_right(15)).wrapping_add(0xA282_EAD8);
    if masked == u32::from_le_bytes(stored) {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "checksum mismatch: the compiled file is damaged and will be rebuilt",
        ))
    }
}

/// Drops the pages a full read (a checksum) brought in, so a mapped file costs resident memory
/// only for the parts queries actually touch.
pub(crate) fn release(mmap: &Mmap) {
    // SAFETY: the mapping is read-only and file-backed, and the file is never modified in place
    // (only replaced by rename): discarded pages are read back unchanged from the page cache.
    let _ = unsafe { mmap.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_once_and_reuses_cache() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("adult.txt");
        fs::write(
            &src,
            "b.example\na.example\nbad line here\n@@||ok.a.example^\n",
        )
        .unwrap();
        let cache = dir.path().join("cache");
        let first = compile_list("adult", std::slice::from_ref(&src), &cache).unwrap();
        assert!(first.recompiled);
        assert_eq!(first.len(), 2);
        assert_eq!(first.bad_count, 1);
        assert_eq!(first.origin(b"example.b", false), Some((src.as_path(), 1)));
        assert_eq!(
            first.origin(b"example.a.ok", true),
            Some((src.as_path(), 4))
        );
        let again = compile_list("adult", std::slice::from_ref(&src), &cache).unwrap();
        assert!(!again.recompiled);
        assert_eq!(again.bad_count, 1);
        fs::write(&src, "c.example\n").unwrap();
        let changed = compile_list("adult", &[src], &cache).unwrap();
        assert!(changed.recompiled);
        assert_eq!(changed.len(), 1);
    }

    #[test]
    fn duplicates_keep_their_first_line_and_prefixes_sort() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("l.txt");
        fs::write(
            &src,
            "averylongname.example\nb.a.example\nab.example\na.example\n||a.example^\nexample\n",
        )
        .unwrap();
        let l = compile_list("l", std::slice::from_ref(&src), &dir.path().join("c")).unwrap();
        assert_eq!(l.len(), 5);
        assert_eq!(l.origin(b"example.a", false), Some((src.as_path(), 4)));
        assert_eq!(l.origin(b"example", false), Some((src.as_path(), 6)));
        for (key, line) in [
            ("example.averylongname", 1),
            ("example.a.b", 2),
            ("example.ab", 3),
        ] {
            assert_eq!(l.origin(key.as_bytes(), false), Some((src.as_path(), line)));
        }
    }

    #[test]
    fn key_file_from_an_older_release_is_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("adult.txt");
        fs::write(&src, "b.example\na.example\n").unwrap();
        let cache = dir.path().join("cache");
        compile_list("adult", std::slice::from_ref(&src), &cache).unwrap();
        // The same names in the previous layout, as an upgrade finds them in the cache.
        let old = super::super::sorted::tests::version_1(&[(b"example.a", 2), (b"example.b", 1)]);
        fs::write(cache.join("adult.keys"), old).unwrap();
        let upgraded = compile_list("adult", std::slice::from_ref(&src), &cache).unwrap();
        assert!(upgraded.recompiled);
        assert_eq!(
            upgraded.origin(b"example.a", false),
            Some((src.as_path(), 2))
        );
        let again = compile_list("adult", std::slice::from_ref(&src), &cache).unwrap();
        assert!(!again.recompiled);
        assert_eq!(again.origin(b"example.b", false), Some((src.as_path(), 1)));
    }

    #[test]
    fn all_bad_lines_is_an_error_but_comments_only_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("adult.txt");
        let cache = dir.path().join("cache");
        fs::write(&src, "<html>\n<body>not a list</body>\n").unwrap();
        let err = compile_list("adult", std::slice::from_ref(&src), &cache)
            .err()
            .unwrap();
        assert!(matches!(err, ListError::Unusable { count: 2, .. }), "{err}");
        assert!(err.to_string().contains("adult.txt:1:"), "{err}");
        fs::write(&src, "# emptied on purpose\n\n").unwrap();
        assert!(compile_list("adult", &[src], &cache).unwrap().is_empty());
    }
}
