//! What can go wrong talking to the Hub or reading its cache.

use std::path::PathBuf;

/// A Hub or cache error; each message names the repository, revision, file or path involved and
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A repository id or `hf://` reference that cannot be parsed.
    #[error("`{spec}` is not a Hugging Face repository reference: {why} (expected org/name, or hf://org/name[@revision][/file])")]
    BadRepoId {
        /// What was given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// 401/403: the repository is gated or private and no (or an insufficient) token was sent.
    #[error(
        "{repo}: the Hub refused access (HTTP {status}{detail}): the repository is gated or private. {hint}"
    )]
    Gated {
        /// The repository id.
        repo: String,
        /// 401 or 403.
        status: u16,
        /// The server's own message, if any, as ": …".
        detail: String,
        /// What to do.
        hint: String,
    },
    /// The repository does not exist (or is private and no token was sent).
    #[error("{repo}: repository not found on {endpoint}{detail} (check the id's spelling; a private repository also needs HF_TOKEN)")]
    RepoNotFound {
        /// The repository id.
        repo: String,
        /// The Hub base URL.
        endpoint: String,
        /// The server's own message, if any, as ": …".
        detail: String,
    },
    /// The repository exists but the revision does not.
    #[error("{repo}: revision `{revision}` not found (a branch, tag or commit hash of the repository)")]
    RevisionNotFound {
        /// The repository id.
        repo: String,
        /// The revision asked for.
        revision: String,
    },
    /// The file does not exist at that revision.
    #[error("{repo}@{revision}: file `{file}` not found in the repository")]
    FileNotFound {
        /// The repository id.
        repo: String,
        /// The revision.
        revision: String,
        /// The file's path in the repository.
        file: String,
    },
    /// The Hub cannot be reached at all.
    #[error(
        "cannot reach the Hub at {endpoint} ({message}); check the network connection or HF_ENDPOINT, \
         or set HF_HUB_OFFLINE=1 to use only what is already in the cache"
    )]
    Network {
        /// The Hub base URL.
        endpoint: String,
        /// The transport error.
        message: String,
    },
    /// Offline (HF_HUB_OFFLINE or no network) and what is asked for is not in the cache.
    #[error("{repo}@{revision}: {what} is not in the Hugging Face cache {cache} and {why}")]
    NotCached {
        /// The repository id.
        repo: String,
        /// The revision.
        revision: String,
        /// What is missing.
        what: String,
        /// The cache folder searched.
        cache: PathBuf,
        /// Why it was not downloaded.
        why: String,
    },
    /// Any other unexpected HTTP status.
    #[error("{url}: HTTP {status}{detail}")]
    Http {
        /// The URL requested.
        url: String,
        /// The status code.
        status: u16,
        /// The server's own message, if any, as ": …".
        detail: String,
    },
    /// The server's answer lacks what the Hub protocol promises.
    #[error("{url}: unexpected answer from the Hub: {message}")]
    BadResponse {
        /// The URL requested.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// A downloaded file's content does not match the checksum the Hub announced.
    #[error("{repo}: `{file}` failed verification: expected {algo} {expected}, got {actual} (the partial download was removed; run again)")]
    Checksum {
        /// The repository id.
        repo: String,
        /// The file's path in the repository.
        file: String,
        /// sha256 (LFS files) or git-sha1 (small files).
        algo: &'static str,
        /// The announced digest.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// The download was cut off or failed mid-file; the partial file is kept for resuming.
    #[error("{repo}: downloading `{file}` failed after {done} of {total} bytes ({message}); run the same command again to resume")]
    Interrupted {
        /// The repository id.
        repo: String,
        /// The file's path in the repository.
        file: String,
        /// Bytes on disk so far.
        done: u64,
        /// The file's size.
        total: u64,
        /// The transport error.
        message: String,
    },
    /// No file of the repository matches the include/exclude patterns or is a loadable model.
    #[error("{repo}@{revision}: {message}")]
    NoFiles {
        /// The repository id.
        repo: String,
        /// The revision.
        revision: String,
        /// What was looked for and what exists.
        message: String,
    },
    /// An include/exclude pattern that is not a valid glob.
    #[error("bad file pattern `{pattern}`: {message}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// The parser's complaint.
        message: String,
    },
    /// Reading or writing the cache.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Wraps an I/O error with its path.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
