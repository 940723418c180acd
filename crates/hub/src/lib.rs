//! Models from the Hugging Face Hub, in the Hugging Face cache.
//!
//! [`Hub::download`] fetches a repository's files (all, or those `--include`/`--exclude` globs
//! select) into the cache that `huggingface_hub`, transformers and huggingface-cli share, laid
//! out exactly as they lay it out:
//!
//! ```text
//! $HF_HUB_CACHE (default $HF_HOME/hub, ~/.cache/huggingface/hub)
//! └── models--org--name/
//!     ├── blobs/<etag>              file contents, named by sha256 (LFS) or git sha1
//!     ├── refs/<revision>           the commit hash a branch or tag pointed to
//!     └── snapshots/<commit>/<file> relative symlinks to ../../blobs/<etag>
//! ```
//!
//! Downloads go to `blobs/<etag>.incomplete` and resume with an HTTP `Range` request; every
//! file is verified (sha256 = the LFS ETag, or the git blob sha1 of a small file) before it is
//! renamed into place. `HF_ENDPOINT`, `HF_TOKEN` (else the token file `huggingface-cli login`
//! writes) and `HF_HUB_OFFLINE` are honoured ([`Settings`]). [`resolve_model_path`] turns
//! `hf://org/name[@rev][/file.gguf]` (or a bare `org/name` where no such local path exists) into
//! a local path, downloading only the files a model needs ([`model_files`]).
//!
//! # Why not the `hf-hub` crate
//!
//! `hf-hub` 1.0.0, the Hub's own Rust client, was evaluated and does not fit: its downloads
//! always restart from byte 0 (`File::create` on the `.incomplete` file, no `Range` on resume);
//! it verifies no checksum of what it downloads; it has no `HF_HUB_OFFLINE` (only a per-call
//! `local_files_only`); and it is async-only (tokio + reqwest) with `hf-xet`'s large Xet storage
//! stack as a mandatory dependency, for a command-line tool that downloads a few files in
//! sequence. What is left to write is small: one JSON route, `HEAD`/`GET` on `resolve` URLs and
//! the cache layout above, on `ureq` (blocking, rustls) with the RustCrypto hashes and `globset`.

mod client;
mod error;
mod settings;
mod spec;

pub use client::{
    as_hub_reference, is_commit_hash, resolve_model_path, Filter, Hub, Progress, Quiet, Snapshot,
};
pub use error::{Error, Result};
pub use settings::{Settings, DEFAULT_ENDPOINT};
pub use spec::{model_files, RepoRef, DEFAULT_REVISION};
