//! Keyword rules: catching names no list has heard of yet by what they contain.
//!
//! Lists never keep up with new domains, so a category can also name words (`porn`, `casino`,
//! spelling variants such as `p0rn`). Every rule of every category compiles into one
//! Aho-Corasick automaton, so a name is scanned once however many rules there are. The
//! Scunthorpe problem is handled by the rules themselves: a rule can insist on a whole token
//! (`=sex` fires on `sex-shop.example`, not `essex.gov.uk`), and it can list words and names it
//! must never fire inside (`except=essex,sussex,middlesex`).
//!
//! Rule syntax, after the `keyword:` prefix in a list file or one per line in `<category>.keywords`:
//!
//! ```text
//! porn                                   anywhere in the name
//! =xxx                                   only a whole label or a -/. separated token
//! sex except=essex,sussex,middlesex      not where the match lies inside one of these words
//! casino except=casino-royale.example    not for this name and the names below it
//! ```

use std::path::PathBuf;

use aho_corasick::{AhoCorasick, AhoCorasickKind, BuildError, MatchKind};
use thiserror::Error;

use crate::lists::BadLine;

/// The rules could not be compiled at all (too many or too long for an automaton).
#[derive(Debug, Error)]
#[error("keyword rules could not be compiled ({0}); remove some rules and reload")]
pub struct KeywordError(#[from] BuildError);

/// Shorter keywords would fire inside ordinary names; they are refused.
pub const MIN_KEYWORD_LEN: usize = 3;

/// A compiled keyword rule.
#[derive(Debug, Clone)]
pub struct KeywordRule {
    /// The keyword, lower case.
    pub word: String,
    /// Only fires on a whole label or hyphen/dot-separated token.
    pub token: bool,
    /// The category's bit in the domain index (a list index).
    pub list: u8,
    /// Words it must not fire inside, with every offset of the keyword within each word.
    except_words: Vec<(Box<[u8]>, Vec<usize>)>,
    /// Names (and everything below them) it must not fire on.
    except_names: Vec<Box<[u8]>>,
    /// The file the rule is in.
    pub file: PathBuf,
    /// Its line.
    pub line: u32,
}

impl KeywordRule {
    /// Whether a match at `at` in `name` counts, given token mode and exceptions.
    fn fires(&self, name: &[u8], at: usize) -> bool {
        let end = at + self.word.len();
        if self.token {
            let before = at.checked_sub(1).map(|i| name[i]);
            let after = name.get(end).copied();
            if !before.is_none_or(is_separator) || !after.is_none_or(is_separator) {
                return false;
            }
        }
        for (word, offsets) in &self.except_words {
            for &off in offsets {
                let Some(start) = at.checked_sub(off) else {
                    continue;
                };
                if name.get(start..start + word.len()) == Some(&word[..]) {
                    return false;
                }
            }
        }
        !self.except_names.iter().any(|n| {
            name == &n[..]
                || (name.len() > n.len()
                    && name.ends_with(n)
                    && name[name.len() - n.len() - 1] == b'.')
        })
    }
}

fn is_separator(b: u8) -> bool {
    matches!(b, b'.' | b'-' | b'_')
}

/// Where a keyword fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeywordHit {
    /// Index into [`Keywords::rules`].
    pub rule: u16,
    /// Byte offset of the match in the forward name.
    pub at: u8,
}

/// One rule as read from a list, before compiling.
pub struct RuleSource<'a> {
    /// The rule text after the prefix.
    pub text: &'a str,
    /// The category's list index.
    pub list: u8,
    /// The file it came from.
    pub file: PathBuf,
    /// Its line.
    pub line: u32,
}

/// Every keyword rule of every category, as one automaton.
#[derive(Default)]
pub struct Keywords {
    automaton: Option<AhoCorasick>,
    /// Pattern id -> the rules sharing that keyword (categories may repeat a word).
    by_pattern: Vec<Vec<u16>>,
    rules: Vec<KeywordRule>,
}

impl Keywords {
    /// Compiles rules; bad ones are reported with file and line and skipped.
    pub fn build<'a>(
        sources: impl IntoIterator<Item = RuleSource<'a>>,
    ) -> Result<(Self, Vec<BadLine>), KeywordError> {
        let mut rules: Vec<KeywordRule> = Vec::new();
        let mut bad = Vec::new();
        for s in sources {
            match parse_rule(s.text) {
                Ok((word, token, except_words, except_names)) => {
                    if rules.len() >= usize::from(u16::MAX) {
                        bad.push(BadLine {
                            file: s.file,
                            line: s.line,
                            reason: "too many keyword rules (at most 65535)".into(),
                        });
                        continue;
                    }
                    rules.push(KeywordRule {
                        word,
                        token,
                        list: s.list,
                        except_words,
                        except_names,
                        file: s.file,
                        line: s.line,
                    });
                }
                Err(reason) => bad.push(BadLine {
                    file: s.file,
                    line: s.line,
                    reason,
                }),
            }
        }
        let mut patterns: Vec<&str> = Vec::new();
        let mut by_pattern: Vec<Vec<u16>> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            match patterns.iter().position(|p| *p == r.word) {
                Some(p) => by_pattern[p].push(i as u16),
                None => {
                    patterns.push(&r.word);
                    by_pattern.push(vec![i as u16]);
                }
            }
        }
        let automaton = if patterns.is_empty() {
            None
        } else {
            // A DFA is the fastest search; a few thousand short words keep it small. Should it
            // grow too big, the crate's own choice is a compact NFA.
            let dfa = AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .kind(Some(AhoCorasickKind::DFA))
                .build(&patterns);
            Some(match dfa {
                Ok(ac) => ac,
                Err(_) => AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .build(&patterns)?,
            })
        };
        Ok((
            Keywords {
                automaton,
                by_pattern,
                rules,
            },
            bad,
        ))
    }

    /// The compiled rules, indexed by [`KeywordHit::rule`].
    pub fn rules(&self) -> &[KeywordRule] {
        &self.rules
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule (by position in `name`) whose category bit is in `block`; a rule of a
    /// `locked` category wins over any other. Allocation-free.
    pub fn find(&self, name: &[u8], block: u32, locked: u32) -> Option<KeywordHit> {
        let ac = self.automaton.as_ref()?;
        let mut first = None;
        for m in ac.find_overlapping_iter(name) {
            for &r in &self.by_pattern[m.pattern().as_usize()] {
                let rule = &self.rules[r as usize];
                let bit = 1u32 << rule.list;
                if block & bit == 0 || !rule.fires(name, m.start()) {
                    continue;
                }
                let hit = KeywordHit {
                    rule: r,
                    at: m.start() as u8,
                };
                if locked & bit != 0 {
                    return Some(hit);
                }
                first.get_or_insert(hit);
            }
        }
        first
    }
}

type ParsedRule = (String, bool, Vec<(Box<[u8]>, Vec<usize>)>, Vec<Box<[u8]>>);

/// Parses `[=]word [except=a,b.example,...]...`.
fn parse_rule(text: &str) -> Result<ParsedRule, String> {
    let text = text.split(" #").next().unwrap_or(text);
    let mut fields = text.split_whitespace();
    let first = fields
        .next()
        .ok_or("empty keyword rule; write e.g. `keyword:porn`")?;
    let (token, word) = match first.strip_prefix('=') {
        Some(w) => (true, w),
        None => (false, first),
    };
    let word = word.to_ascii_lowercase();
    check_word(&word)?;
    let mut except_words = Vec::new();
    let mut except_names = Vec::new();
    for f in fields {
        let Some(list) = f.strip_prefix("except=") else {
            return Err(format!(
                "unknown option {f:?} in keyword rule; rules look like `keyword:sex except=essex,sussex`"
            ));
        };
        for e in list.split(',').filter(|e| !e.is_empty()) {
            let e = e.to_ascii_lowercase();
            if e.contains('.') {
                let name = crate::domain::normalise(&e)
                    .map_err(|err| format!("exception {e:?} is not a domain name: {err}"))?;
                except_names.push(name.into_bytes().into_boxed_slice());
            } else {
                let offsets: Vec<usize> = e.match_indices(word.as_str()).map(|(i, _)| i).collect();
                if offsets.is_empty() {
                    return Err(format!(
                        "exception {e:?} does not contain the keyword {word:?}, so it could never apply"
                    ));
                }
                except_words.push((e.into_bytes().into_boxed_slice(), offsets));
            }
        }
    }
    Ok((word, token, except_words, except_names))
}

fn check_word(word: &str) -> Result<(), String> {
    if word.len() < MIN_KEYWORD_LEN {
        return Err(format!(
            "keyword {word:?} is shorter than {MIN_KEYWORD_LEN} characters and would block ordinary names"
        ));
    }
    if let Some(c) = word
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "keyword {word:?} contains {c:?}; keywords are letters, digits, - and _ (names are matched in punycode)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(rules: &[(&str, u8)]) -> (Keywords, Vec<BadLine>) {
        Keywords::build(
            rules
                .iter()
                .enumerate()
                .map(|(i, (text, list))| RuleSource {
                    text,
                    list: *list,
                    file: PathBuf::from("adult.keywords"),
                    line: i as u32 + 1,
                }),
        )
        .expect("a few rules always compile")
    }

    fn word(k: &Keywords, name: &str) -> Option<(String, u8)> {
        k.find(name.as_bytes(), u32::MAX, 0)
            .map(|h| (k.rules()[h.rule as usize].word.clone(), h.at))
    }

    #[test]
    fn anywhere_token_and_exceptions() {
        let (k, bad) = build(&[
            ("porn", 1),
            ("=xxx", 1),
            ("sex except=essex,sussex,middlesex,wessex", 1),
            ("cunt except=scunthorpe", 1),
            ("casino except=casino-heritage.example", 2),
        ]);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(word(&k, "freepornvids.example"), Some(("porn".into(), 4)));
        assert_eq!(word(&k, "hot.xxx"), Some(("xxx".into(), 4)));
        assert_eq!(word(&k, "my-xxx-site.example"), Some(("xxx".into(), 3)));
        assert_eq!(
            word(&k, "xxxlutz.example"),
            None,
            "token-only rule inside a word"
        );
        assert_eq!(word(&k, "essex.gov.uk"), None);
        assert_eq!(word(&k, "www.middlesex.ac.uk"), None);
        assert_eq!(word(&k, "scunthorpe-united.example"), None);
        assert_eq!(word(&k, "sexshop.example"), Some(("sex".into(), 0)));
        // An exception word covers only its own occurrence: a second, real hit still fires.
        assert_eq!(word(&k, "essex-sexshop.example"), Some(("sex".into(), 6)));
        assert_eq!(word(&k, "casino-heritage.example"), None);
        assert_eq!(word(&k, "www.casino-heritage.example"), None);
        assert_eq!(word(&k, "bestcasino.example"), Some(("casino".into(), 4)));
    }

    #[test]
    fn only_blocked_categories_fire_and_locked_wins() {
        let (k, _) = build(&[("casino", 2), ("porn", 1)]);
        let hit = k.find(b"casinoporn.example", 1 << 1, 0).unwrap();
        assert_eq!(k.rules()[hit.rule as usize].word, "porn");
        assert_eq!(k.find(b"casino.example", 1 << 1, 0), None);
        let hit = k
            .find(b"casinoporn.example", (1 << 1) | (1 << 2), 1 << 1)
            .unwrap();
        assert_eq!(
            k.rules()[hit.rule as usize].word,
            "porn",
            "locked category first"
        );
    }

    #[test]
    fn same_word_in_two_categories() {
        let (k, _) = build(&[("casino", 2), ("casino", 3)]);
        let hit = k.find(b"casino.example", 1 << 3, 0).unwrap();
        assert_eq!(k.rules()[hit.rule as usize].list, 3);
    }

    #[test]
    fn bad_rules_are_reported_with_line() {
        let (k, bad) = build(&[
            ("ab", 1),
            ("po rn", 1),
            ("sex except=sussex,hello", 1),
            ("p.rn", 1),
            ("porn", 1),
        ]);
        assert_eq!(k.len(), 1);
        let lines: Vec<u32> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4]);
        assert!(
            bad[2].reason.contains("could never apply"),
            "{}",
            bad[2].reason
        );
    }

    #[test]
    fn shipped_starter_rules_spare_uk_places_and_words() {
        let files = [
            (include_str!("../blocklists/adult.keywords"), 1),
            (include_str!("../blocklists/gambling.keywords"), 2),
            (include_str!("../blocklists/violence.keywords"), 3),
            (include_str!("../blocklists/circumvention.keywords"), 4),
        ];
        let rules: Vec<(&str, u8)> = files
            .iter()
            .flat_map(|(text, list)| {
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(move |l| (l, *list))
            })
            .collect();
        let (k, bad) = build(&rules);
        assert!(bad.is_empty(), "{bad:?}");
        for innocent in [
            "essex.gov.uk",
            "www.sussex.ac.uk",
            "middlesex.gov.uk",
            "www.wessexwater.co.uk",
            "www.scunthorpe-united.co.uk",
            "penistone-gs.uk",
            "www.clitheroe.gov.uk",
            "analytics.google.com",
            "findatherapist.example",
            "www.sexualhealth.example",
            "sex-education-forum.org.uk",
            "milford-haven.example",
            "www.gore-tex.co.uk",
            "www.bbc.co.uk",
            "login.microsoftonline.com",
        ] {
            assert_eq!(word(&k, innocent), None, "{innocent}");
        }
        for (name, expected) in [
            ("www.sexshop.example", "sex"),
            ("hot-xxx.example", "xxx"),
            ("bestcasino.example", "casino"),
            ("unblocked-games.example", "unblocked-games"),
        ] {
            assert_eq!(
                word(&k, name).map(|(w, _)| w).as_deref(),
                Some(expected),
                "{name}"
            );
        }
    }
}
