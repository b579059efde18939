//! The one place a domain name is normalised and turned into a lookup key.
//!
//! Lists, the query path and `check` all go through here, so a name typed by a technician, a
//! line in a hosts file and a label sequence off the wire compare equal whenever they name the
//! same domain: lower case, no trailing dot, internationalised labels as punycode.
//!
//! Keys are stored with their labels reversed (`www.example.com` -> `com.example.www`) so that a
//! listed parent domain is a prefix of every name below it, which is what lets one FST walk find
//! the most general listed ancestor.

use thiserror::Error;

/// Longest presentation-form name the DNS allows (RFC 1035: 255 wire bytes).
pub const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Why a string is not a usable domain name.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    /// Nothing left after trimming.
    #[error("empty name")]
    Empty,
    /// Over 253 characters once converted to ASCII.
    #[error("name longer than 253 characters")]
    TooLong,
    /// A label is empty (`a..b`) or longer than 63 characters.
    #[error("bad label length in {0:?}")]
    BadLabel(String),
    /// A character that cannot appear in a host name.
    #[error("character {1:?} is not allowed in a domain name ({0:?})")]
    BadChar(String, char),
    /// IDNA conversion failed.
    #[error("not a valid internationalised name: {0:?}")]
    Idna(String),
}

/// Normalises a presentation-form name: trims, lower-cases, drops the trailing dot and converts
/// Unicode labels to punycode. Underscores are accepted because real lists carry service names.
pub fn normalise(input: &str) -> Result<String, NameError> {
    let trimmed = input.trim().trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(NameError::Empty);
    }
    let ascii = if trimmed.is_ascii() {
        trimmed.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(trimmed).map_err(|_| NameError::Idna(trimmed.to_string()))?
    };
    validate(&ascii)?;
    Ok(ascii)
}

fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return Err(NameError::BadLabel(name.to_string()));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(NameError::BadChar(name.to_string(), c));
        }
    }
    Ok(())
}

/// Reverses the labels of a normalised name into an FST key (`a.b.c` -> `c.b.a`).
pub fn reverse_key(name: &str, out: &mut Vec<u8>) {
    out.clear();
    for (i, label) in name.rsplit('.').enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        out.extend_from_slice(label.as_bytes());
    }
}

/// Reverses the labels of a name (at most 256 bytes) into `out` without allocating.
pub fn reverse_into<'b>(name: &[u8], out: &'b mut [u8; 256]) -> &'b [u8] {
    let len = name.len().min(out.len());
    let mut pos = 0;
    for (i, label) in name[..len].rsplit(|b| *b == b'.').enumerate() {
        if i > 0 {
            out[pos] = b'.';
            pos += 1;
        }
        out[pos..pos + label.len()].copy_from_slice(label);
        pos += label.len();
    }
    &out[..pos]
}

/// A query name in both forms the decision needs, kept in fixed buffers so the query path does
/// not allocate: the forward name (for keywords and logs) and the reversed key (for the sets).
#[derive(Clone)]
pub struct QueryName {
    forward: [u8; 256],
    reversed: [u8; 256],
    len: usize,
}

impl QueryName {
    /// Builds from wire-format labels (already split, no compression pointers); see
    /// [`NameBuilder`], which a packet reader feeds label by label.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, NameError> {
        let mut b = NameBuilder::new();
        for label in labels {
            b.push(label);
        }
        b.finish()
    }

    /// Builds from presentation form (CLI, tests, logs).
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let trimmed = name.trim().trim_end_matches('.');
        // The root and other empty names are legitimate queries; they match nothing.
        let norm = if trimmed.is_empty() {
            String::new()
        } else {
            normalise(trimmed)?
        };
        let mut q = QueryName {
            forward: [0; 256],
            reversed: [0; 256],
            len: norm.len(),
        };
        q.forward[..q.len].copy_from_slice(norm.as_bytes());
        q.fill_reversed();
        Ok(q)
    }

    fn fill_reversed(&mut self) {
        reverse_into(&self.forward[..self.len], &mut self.reversed);
    }

    /// The normalised name, `www.example.com`.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored.
        std::str::from_utf8(&self.forward[..self.len]).unwrap_or("")
    }

    /// The reversed key, `com.example.www`.
    pub fn key(&self) -> &[u8] {
        &self.reversed[..self.len]
    }

    /// True for the root name.
    pub fn is_root(&self) -> bool {
        self.len == 0
    }
}

/// Builds a [`QueryName`] from wire-format labels as they are read, so a packet's name is
/// copied once and never held in a label list first. Upper case is folded; a label holding a byte
/// outside the host-name alphabet (an escaped dot, raw UTF-8) sends the whole name through IDNA
/// so a Unicode spelling of a listed name still matches.
pub struct NameBuilder {
    q: QueryName,
    plain: bool,
    too_long: bool,
}

impl NameBuilder {
    /// An empty name (the root until a label is pushed).
    pub fn new() -> Self {
        NameBuilder {
            q: QueryName {
                forward: [0; 256],
                reversed: [0; 256],
                len: 0,
            },
            plain: true,
            too_long: false,
        }
    }

    /// Appends the next label (leftmost first).
    #[inline]
    pub fn push(&mut self, label: &[u8]) {
        let q = &mut self.q;
        let dot = usize::from(q.len > 0);
        if self.too_long || q.len + dot + label.len() > MAX_NAME_LEN {
            self.too_long = true;
            return;
        }
        if dot == 1 {
            q.forward[q.len] = b'.';
            q.len += 1;
        }
        let mut plain = true;
        for (out, &b) in q.forward[q.len..q.len + label.len()].iter_mut().zip(label) {
            let b = b.to_ascii_lowercase();
            plain &= b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
            *out = b;
        }
        q.len += label.len();
        self.plain &= plain;
    }

    /// The name, or why it is not one.
    pub fn finish(mut self) -> Result<QueryName, NameError> {
        if self.too_long {
            return Err(NameError::TooLong);
        }
        if !self.plain {
            return QueryName::parse(&String::from_utf8_lossy(&self.q.forward[..self.q.len]));
        }
        self.q.fill_reversed();
        Ok(self.q)
    }
}

impl Default for NameBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for QueryName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_dot_and_idn() {
        assert_eq!(normalise("WWW.Example.COM.").unwrap(), "www.example.com");
        assert_eq!(normalise("bücher.de").unwrap(), "xn--bcher-kva.de");
        assert!(normalise("a..b").is_err());
        assert!(normalise("exa mple.com").is_err());
        assert_eq!(normalise(&"a.".repeat(130)), Err(NameError::TooLong));
    }

    #[test]
    fn reverses_labels() {
        let mut k = Vec::new();
        reverse_key("www.example.com", &mut k);
        assert_eq!(k, b"com.example.www");
        let mut buf = [0u8; 256];
        assert_eq!(
            reverse_into(b"www.example.com", &mut buf),
            b"com.example.www"
        );
        assert_eq!(reverse_into(b"", &mut buf), b"");
    }

    #[test]
    fn wire_labels_fold_case_and_unicode() {
        let q = QueryName::from_labels([&b"WWW"[..], b"TikTok", b"com"]).unwrap();
        assert_eq!(q.as_str(), "www.tiktok.com");
        assert_eq!(q.key(), b"com.tiktok.www");
        let u = QueryName::from_labels(["bücher".as_bytes(), b"de"]).unwrap();
        assert_eq!(u.as_str(), "xn--bcher-kva.de");
    }
}
