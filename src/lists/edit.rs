//! Editing a list file the way a technician would by hand: new names go at the end, removed
//! names take only their own lines, and every comment, blank line and line ending stays.
//!
//! The file is replaced by writing a sibling temporary file and renaming it over the original,
//! so the running server (which watches the directory) never reads a half-written list.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::parse::{parse, EntryKind};
use super::ListError;
use crate::domain::normalise;

/// Adds names not already blocked by the file at its end. Returns the names added.
pub fn add_to_file(path: &Path, names: &[String]) -> Result<Vec<String>, ListError> {
    let text = read(path)?;
    let (new, added) = add_lines(path, &text, names);
    if !added.is_empty() {
        write_atomic(path, &new)?;
    }
    Ok(added)
}

/// Removes the lines that block the given names. Returns the names removed.
pub fn remove_from_file(path: &Path, names: &[String]) -> Result<Vec<String>, ListError> {
    let text = read(path)?;
    let (new, removed) = remove_lines(path, &text, names);
    if !removed.is_empty() {
        write_atomic(path, &new)?;
    }
    Ok(removed)
}

fn read(path: &Path) -> Result<String, ListError> {
    let bytes = fs::read(path).map_err(|e| ListError::io(path, e))?;
    String::from_utf8(bytes).map_err(|_| {
        ListError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not UTF-8 text; edit it by hand or convert it first",
            ),
        )
    })
}

/// The names (already normalised) `text` blocks.
fn blocked(path: &Path, text: &str) -> Vec<(String, u32)> {
    parse(path, text.as_bytes())
        .entries
        .into_iter()
        .filter(|e| e.kind == EntryKind::Block)
        .map(|e| (e.name, e.line))
        .collect()
}

fn add_lines(path: &Path, text: &str, names: &[String]) -> (String, Vec<String>) {
    let present = blocked(path, text);
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = text.to_string();
    let mut added: Vec<String> = Vec::new();
    for name in names {
        if present.iter().any(|(n, _)| n == name) || added.contains(name) {
            continue;
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(eol);
        }
        out.push_str(name);
        out.push_str(eol);
        added.push(name.clone());
    }
    (out, added)
}

fn remove_lines(path: &Path, text: &str, names: &[String]) -> (String, Vec<String>) {
    let present = blocked(path, text);
    let mut removed: Vec<String> = Vec::new();
    let mut out = String::with_capacity(text.len());
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let line_no = u32::try_from(idx + 1).unwrap_or(u32::MAX);
        let on_line: Vec<&String> = present
            .iter()
            .filter(|(_, l)| *l == line_no)
            .map(|(n, _)| n)
            .collect();
        let hits: Vec<&String> = on_line
            .iter()
            .copied()
            .filter(|n| names.contains(n))
            .collect();
        if hits.is_empty() {
            out.push_str(line);
            continue;
        }
        for h in &hits {
            if !removed.contains(h) {
                removed.push((*h).clone());
            }
        }
        if hits.len() < on_line.len() {
            // A hosts line naming several hosts: keep the line, drop only the removed names.
            let body = line.trim_end_matches(['\r', '\n']);
            let kept: Vec<&str> = body
                .split_whitespace()
                .filter(|t| normalise(t).map_or(true, |n| !names.contains(&n)))
                .collect();
            out.push_str(&kept.join(" "));
            out.push_str(&line[body.len()..]);
        }
    }
    (out, removed)
}

/// Writes beside the original (same directory, same permissions) and renames over it.
fn write_atomic(path: &Path, text: &str) -> Result<(), ListError> {
    let tmp = super::compile::tmp_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        if let Ok(md) = fs::metadata(path) {
            f.set_permissions(md.permissions())?;
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| ListError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| ListError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("l.txt")
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn add_appends_keeps_comments_crlf_and_skips_present() {
        let text = "# adult sites\r\nexample.com\r\n\r\n! more\r\n0.0.0.0 ads.example";
        let (out, added) = add_lines(
            p(),
            text,
            &names(&["new.example", "example.com", "new.example"]),
        );
        assert_eq!(added, names(&["new.example"]));
        assert_eq!(out, format!("{text}\r\nnew.example\r\n"));
    }

    #[test]
    fn remove_deletes_only_matching_lines() {
        let text = "# keep me\nexample.com\n||ads.example^\n*.wild.example\nstay.example # why\n127.0.0.1 a.test b.test c.test\n@@||example.com^\n";
        let (out, removed) = remove_lines(
            p(),
            text,
            &names(&[
                "example.com",
                "ads.example",
                "wild.example",
                "b.test",
                "absent.example",
            ]),
        );
        assert_eq!(
            removed,
            names(&["example.com", "ads.example", "wild.example", "b.test"])
        );
        assert_eq!(
            out,
            "# keep me\nstay.example # why\n127.0.0.1 a.test c.test\n@@||example.com^\n"
        );
    }

    #[test]
    fn edits_are_written_in_place_with_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("adult.txt");
        fs::write(&f, "# list\na.example\n").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            add_to_file(&f, &names(&["b.example"])).unwrap(),
            names(&["b.example"])
        );
        assert_eq!(
            remove_from_file(&f, &names(&["a.example"])).unwrap(),
            names(&["a.example"])
        );
        assert_eq!(fs::read_to_string(&f).unwrap(), "# list\nb.example\n");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
