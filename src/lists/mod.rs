//! Block and allow lists: parsing the text formats, compiling each to a sorted key file, and the
//! merged FST index the query path walks.

mod compile;
mod edit;
mod index;
mod parse;
mod remote;
mod sorted;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use compile::{compile_list, open_compiled, CompiledList, KEYWORDS_EXTENSION};
pub use edit::{add_to_file, remove_from_file};
pub use index::{DomainIndex, Hit, Matches, Origin as KeptOrigin, MAX_LISTS, NO_SLOT};
pub use parse::{
    parse, parse_each, parse_keywords, BadLine, Entry, EntryKind, KeywordLine, Parsed,
};
pub use remote::{refresh_forever, Downloader, Refreshed, RemoteError};
pub use sorted::SortedKeys;

/// Why a list could not be loaded. Every variant names the file involved.
#[derive(Debug, Error)]
pub enum ListError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A compiled file is corrupt or could not be built.
    #[error("{}: compiled list is unusable ({source}); delete it to force a rebuild", path.display())]
    Fst {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: fst::Error,
    },
    /// Every line of a file was bad: most likely the wrong file or a broken download, so the
    /// list it belongs to keeps its previous contents rather than silently emptying.
    #[error("{first}: no usable line in {} ({count} bad lines); fix the file or empty it deliberately (comments only)", path.display())]
    Unusable {
        /// The file.
        path: PathBuf,
        /// How many bad lines it had.
        count: usize,
        /// The first of them.
        first: BadLine,
    },
    /// A compiled key file is corrupt.
    #[error("{}: compiled list is unusable ({why}); delete it to force a rebuild", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// More lists than the index has bits for.
    #[error("{0} lists configured; at most 32 (categories plus group lists) are supported")]
    TooManyLists(usize),
}

impl ListError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ListError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn fst(path: &Path, source: fst::Error) -> Self {
        ListError::Fst {
            path: path.to_path_buf(),
            source,
        }
    }
}
