//! Safe search and the names devices use to decide whether to bypass the school's DNS.
//!
//! Search engines' vendors document a DNS method to force safe search: answer their search
//! names with a CNAME to a safe host (`www.google.co.uk` -> `forcesafesearch.google.com`). The
//! vendors' name lists live in a data file (`config/safesearch.toml`, with a built-in copy), not
//! in code, so a technician can follow a vendor's update without a new release. The same file
//! names the engines that have no enforceable safe mode, and the canary names browsers and Apple
//! devices ask before switching to encrypted DNS or iCloud Private Relay.

use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;
use serde::Deserialize;
use toml::Spanned;

use crate::config::Problem;
use crate::domain::normalise;

/// The data file shipped with schoolgate, used when the config names none.
pub const BUILTIN: &str = include_str!("../config/safesearch.toml");

/// How strictly a group's searches are filtered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SafeSearchMode {
    /// The vendors' strictest mode (YouTube: restricted, strict).
    #[default]
    Strict,
    /// YouTube's moderate restricted mode; other engines have only strict.
    Moderate,
    /// No rewriting.
    Off,
}

impl SafeSearchMode {
    /// The word used in config, logs and `check`.
    pub fn as_str(self) -> &'static str {
        match self {
            SafeSearchMode::Strict => "strict",
            SafeSearchMode::Moderate => "moderate",
            SafeSearchMode::Off => "off",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawData {
    #[serde(default, rename = "engine")]
    engines: Vec<RawEngine>,
    #[serde(default)]
    unenforceable: RawDomains,
    #[serde(default)]
    canary: RawNames,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    name: String,
    #[serde(default)]
    documented: String,
    strict: Spanned<String>,
    moderate: Option<Spanned<String>>,
    #[serde(default)]
    with_www: bool,
    domains: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDomains {
    #[serde(default)]
    domains: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNames {
    #[serde(default)]
    names: Vec<Spanned<String>>,
}

/// A search engine with a documented safe host.
#[derive(Debug, Clone)]
pub struct SearchEngine {
    /// Its name (`google`).
    pub name: String,
    /// Where the vendor documents the method.
    pub documented: String,
    /// Safe host for strict mode.
    pub strict: String,
    /// Safe host for moderate mode (the strict one when the vendor has only one).
    pub moderate: String,
}

impl SearchEngine {
    /// The safe host for a mode.
    pub fn target(&self, mode: SafeSearchMode) -> &str {
        match mode {
            SafeSearchMode::Moderate => &self.moderate,
            _ => &self.strict,
        }
    }
}

/// What a name is to this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// A bypass canary: answer NXDOMAIN.
    Canary,
    /// A search name of engine `i`: rewrite.
    Engine(u8),
    /// A search engine with no enforceable safe mode (this name and below).
    Unenforceable,
}

/// The loaded data file.
#[derive(Debug, Clone)]
pub struct SafeSearch {
    /// The file it came from (`None`: the built-in copy).
    pub file: Option<PathBuf>,
    engines: Vec<SearchEngine>,
    exact: FxHashMap<Box<[u8]>, Special>,
    /// Longest unenforceable name, in labels, bounding the parent walk.
    unenforceable_labels: usize,
}

impl SafeSearch {
    /// The built-in data.
    pub fn builtin() -> Self {
        // The built-in file is checked by a unit test, so this cannot fail at run time.
        Self::parse(Path::new("safesearch.toml (built in)"), BUILTIN)
            .map(|mut s| {
                s.file = None;
                s
            })
            .unwrap_or_else(|_| SafeSearch {
                file: None,
                engines: Vec::new(),
                exact: FxHashMap::default(),
                unenforceable_labels: 0,
            })
    }

    /// Reads a data file; problems name the file, line and field.
    pub fn load(path: &Path) -> Result<Self, Vec<Problem>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![Problem {
                file: path.to_path_buf(),
                line: None,
                field: String::new(),
                message: format!("cannot read the safe search data file: {e}"),
            }]
        })?;
        Self::parse(path, &text)
    }

    /// Parses data file text.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Vec<Problem>> {
        let line_of = |start: usize| {
            text[..start.min(text.len())]
                .bytes()
                .filter(|b| *b == b'\n')
                .count()
                + 1
        };
        let problem = |line: Option<usize>, field: &str, message: String| Problem {
            file: path.to_path_buf(),
            line,
            field: field.to_string(),
            message,
        };
        let raw: RawData = toml::from_str(text).map_err(|e| {
            vec![problem(
                e.span().map(|s| line_of(s.start)),
                "",
                e.message().to_string(),
            )]
        })?;
        let mut problems = Vec::new();
        let name = |s: &Spanned<String>, field: &str, problems: &mut Vec<Problem>| {
            normalise(s.get_ref())
                .map_err(|e| {
                    problems.push(problem(Some(line_of(s.span().start)), field, e.to_string()))
                })
                .ok()
        };
        let mut data = SafeSearch {
            file: Some(path.to_path_buf()),
            engines: Vec::new(),
            exact: FxHashMap::default(),
            unenforceable_labels: 0,
        };
        if raw.engines.len() > usize::from(u8::MAX) {
            problems.push(problem(
                None,
                "engine",
                "at most 255 engines are supported".into(),
            ));
        }
        for (i, e) in raw.engines.iter().enumerate().take(usize::from(u8::MAX)) {
            let strict = name(&e.strict, "engine.strict", &mut problems);
            let moderate = match &e.moderate {
                Some(m) => name(m, "engine.moderate", &mut problems),
                None => strict.clone(),
            };
            for d in &e.domains {
                let Some(d) = name(d, "engine.domains", &mut problems) else {
                    continue;
                };
                let www = e.with_www.then(|| format!("www.{d}"));
                for n in std::iter::once(d).chain(www) {
                    data.exact
                        .insert(n.into_bytes().into(), Special::Engine(i as u8));
                }
            }
            data.engines.push(SearchEngine {
                name: e.name.clone(),
                documented: e.documented.clone(),
                strict: strict.unwrap_or_default(),
                moderate: moderate.unwrap_or_default(),
            });
        }
        for d in &raw.unenforceable.domains {
            if let Some(d) = name(d, "unenforceable.domains", &mut problems) {
                data.unenforceable_labels = data.unenforceable_labels.max(d.split('.').count());
                data.exact
                    .entry(d.into_bytes().into())
                    .or_insert(Special::Unenforceable);
            }
        }
        for c in &raw.canary.names {
            if let Some(c) = name(c, "canary.names", &mut problems) {
                data.exact.insert(c.into_bytes().into(), Special::Canary);
            }
        }
        if problems.is_empty() {
            Ok(data)
        } else {
            Err(problems)
        }
    }

    /// The engines, indexed by [`Special::Engine`].
    pub fn engines(&self) -> &[SearchEngine] {
        &self.engines
    }

    /// What the exact name is, if anything.
    pub fn lookup(&self, name: &str) -> Option<Special> {
        self.exact.get(name.as_bytes()).copied()
    }

    /// True if the name or a parent is a search engine with no enforceable safe mode.
    pub fn is_unenforceable(&self, name: &str) -> bool {
        let mut rest = name;
        let labels = rest.bytes().filter(|b| *b == b'.').count() + 1;
        // Skip the leading labels that make the name longer than any listed one.
        for _ in self.unenforceable_labels..labels {
            match rest.split_once('.') {
                Some((_, r)) => rest = r,
                None => return false,
            }
        }
        loop {
            if self.exact.get(rest.as_bytes()) == Some(&Special::Unenforceable) {
                return true;
            }
            match rest.split_once('.') {
                Some((_, r)) => rest = r,
                None => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_data_parses_and_covers_the_vendors() {
        let s = SafeSearch::parse(Path::new("safesearch.toml"), BUILTIN)
            .expect("built-in data is valid");
        let engine = |n: &str| match s.lookup(n) {
            Some(Special::Engine(i)) => Some(s.engines()[i as usize].name.as_str()),
            _ => None,
        };
        assert_eq!(engine("www.google.co.uk"), Some("google"));
        assert_eq!(engine("google.de"), Some("google"));
        assert_eq!(engine("www.google.com"), Some("google"));
        assert_eq!(engine("mail.google.com"), None);
        assert_eq!(engine("youtubei.googleapis.com"), Some("youtube"));
        assert_eq!(engine("www.bing.com"), Some("bing"));
        assert_eq!(engine("duckduckgo.com"), Some("duckduckgo"));
        assert_eq!(s.lookup("use-application-dns.net"), Some(Special::Canary));
        assert_eq!(s.lookup("mask-h2.icloud.com"), Some(Special::Canary));
        let yt = &s.engines()[s
            .engines()
            .iter()
            .position(|e| e.name == "youtube")
            .unwrap()];
        assert_eq!(yt.target(SafeSearchMode::Strict), "restrict.youtube.com");
        assert_eq!(
            yt.target(SafeSearchMode::Moderate),
            "restrictmoderate.youtube.com"
        );
        assert!(s.is_unenforceable("www.startpage.com"));
        assert!(s.is_unenforceable("search.yahoo.com"));
        assert!(!s.is_unenforceable("yahoo.com"));
        assert!(!s.is_unenforceable("com"));
    }

    #[test]
    fn bad_data_names_file_line_and_field() {
        let text = "[[engine]]\nname = \"x\"\nstrict = \"safe.example\"\ndomains = [\"ok.example\",\n \"bad..example\"]\n";
        let err = SafeSearch::parse(Path::new("ss.toml"), text).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].line, Some(5));
        assert_eq!(err[0].field, "engine.domains");
        let err =
            SafeSearch::parse(Path::new("ss.toml"), "[[engine]]\nname = \"x\"\n").unwrap_err();
        assert!(err[0].message.contains("strict"), "{}", err[0].message);
    }
}
