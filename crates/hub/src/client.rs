//! The download client: the Hub's HTTP protocol (revision API, `resolve` URLs, LFS redirects,
//! ranges) and the cache layout of `huggingface_hub`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use sha1::Digest as _;

use crate::error::{io, Error, Result};
use crate::settings::Settings;
use crate::spec::{model_files, RepoRef};

/// Hears about a download's progress (a progress bar per file in the command-line tool).
pub trait Progress {
    /// A file transfer starts: `total` bytes, of which `done` are already on disk (a resume).
    fn file_start(&mut self, _file: &str, _total: u64, _done: u64) {}
    /// `n` more bytes of the current file arrived.
    fn file_bytes(&mut self, _n: u64) {}
    /// The current file is complete and verified.
    fn file_done(&mut self, _file: &str) {}
    /// Something worth telling the user (e.g. falling back to the cache).
    fn note(&mut self, _message: &str) {}
}

/// A [`Progress`] that ignores everything.
pub struct Quiet;

impl Progress for Quiet {}

/// Which files of a repository to download: `--include` / `--exclude` globs (as
/// `huggingface_hub`'s `allow_patterns` / `ignore_patterns`: `*` also matches `/`).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    text: String,
}

impl Filter {
    /// Every file.
    pub fn all() -> Self {
        Self::default()
    }

    /// Files matching at least one of `include` (all files when empty) and none of `exclude`.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        let set = |pats: &[String]| -> Result<Option<GlobSet>> {
            if pats.is_empty() {
                return Ok(None);
            }
            let mut b = GlobSetBuilder::new();
            for p in pats {
                // A pattern ending in `/` means the folder's files, as in huggingface_hub.
                let p2 = if p.ends_with('/') { format!("{p}*") } else { p.clone() };
                let g = Glob::new(&p2)
                    .map_err(|e| Error::BadPattern { pattern: p.clone(), message: e.kind().to_string() })?;
                b.add(g);
            }
            b.build()
                .map(Some)
                .map_err(|e| Error::BadPattern { pattern: pats.join(" "), message: e.to_string() })
        };
        let mut text = String::new();
        if !include.is_empty() {
            text.push_str(&format!("--include {}", include.join(" ")));
        }
        if !exclude.is_empty() {
            text.push_str(&format!(
                "{}--exclude {}",
                if text.is_empty() { "" } else { " " },
                exclude.join(" ")
            ));
        }
        Ok(Self { include: set(include)?, exclude: set(exclude)?, text })
    }

    /// Whether the repository file `path` is selected.
    pub fn matches(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(path))
            && self.exclude.as_ref().is_none_or(|s| !s.is_match(path))
    }
}

/// What a download produced: the snapshot folder of a commit and the files selected in it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The repository id.
    pub repo: String,
    /// The commit hash the revision resolved to.
    pub commit: String,
    /// `<cache>/models--org--name/snapshots/<commit>`.
    pub dir: PathBuf,
    /// The selected files (repository paths), all present under `dir`.
    pub files: Vec<String>,
    /// Bytes received over the network by this call.
    pub downloaded_bytes: u64,
    /// True when the Hub was not asked (offline mode, or unreachable with the files cached).
    pub offline: bool,
}

enum Select<'a> {
    Filter(&'a Filter),
    Model(Option<&'a str>),
}

/// A Hub client over one cache.
pub struct Hub {
    settings: Settings,
    agent: ureq::Agent,
}

/// Metadata of one file, from the `resolve` URL's headers.
struct FileMeta {
    etag: String,
    size: u64,
    download_url: String,
}

impl Hub {
    /// A client with the settings from the environment ([`Settings::from_env`]).
    pub fn from_env() -> Self {
        Self::new(Settings::from_env())
    }

    /// A client with explicit settings.
    pub fn new(settings: Settings) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(concat!("afinar/", env!("CARGO_PKG_VERSION"), "; hf_hub-compatible"))
            .build();
        Self { settings, agent: config.into() }
    }

    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// `<cache>/models--org--name`, as `huggingface_hub` names it.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.settings.cache_dir.join(format!("models--{}", repo.replace('/', "--")))
    }

    /// Downloads the files of `repo` at `revision` that `filter` selects into the cache (only
    /// those not already there), or with `HF_HUB_OFFLINE` finds them in the cache.
    pub fn download(
        &self,
        repo: &str,
        revision: &str,
        filter: &Filter,
        progress: &mut dyn Progress,
    ) -> Result<Snapshot> {
        self.snapshot(repo, revision, Select::Filter(filter), progress)
    }

    /// Makes the files of a model available in the cache (see [`model_files`]) and returns the
    /// local path to load: the snapshot folder, or the `.gguf` file when the model is one.
    pub fn download_model(&self, r: &RepoRef, progress: &mut dyn Progress) -> Result<PathBuf> {
        let snap = self.snapshot(&r.repo, &r.revision, Select::Model(r.file.as_deref()), progress)?;
        Ok(match snap.files.as_slice() {
            [one] if one.ends_with(".gguf") => snap.dir.join(one),
            _ => snap.dir,
        })
    }

    fn snapshot(
        &self,
        repo: &str,
        revision: &str,
        select: Select,
        progress: &mut dyn Progress,
    ) -> Result<Snapshot> {
        if self.settings.offline {
            return self.cached(repo, revision, &select, "HF_HUB_OFFLINE is set");
        }
        let (commit, siblings) = match self.revision_info(repo, revision) {
            Ok(info) => info,
            Err(e @ Error::Network { .. }) => {
                return match self.cached(repo, revision, &select, "the Hub cannot be reached") {
                    Ok(s) => {
                        progress.note(&format!("{e}; using the cached snapshot {}", s.dir.display()));
                        Ok(s)
                    }
                    Err(_) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let files = self.select(repo, revision, &siblings, &select)?;
        let repo_dir = self.repo_dir(repo);
        if revision != commit {
            let refs = repo_dir.join("refs").join(revision);
            write_atomic(&refs, commit.as_bytes())?;
        }
        let dir = repo_dir.join("snapshots").join(&commit);
        let mut downloaded_bytes = 0;
        for file in &files {
            let path = dir.join(file);
            if path.exists() {
                continue; // the pointer of this commit is there and its blob too: nothing to fetch
            }
            downloaded_bytes += self.fetch_file(repo, &commit, file, &path, progress)?;
        }
        Ok(Snapshot { repo: repo.to_string(), commit, dir, files, downloaded_bytes, offline: false })
    }

    fn select(&self, repo: &str, revision: &str, all: &[String], select: &Select) -> Result<Vec<String>> {
        let no = |message: String| Error::NoFiles {
            repo: repo.to_string(),
            revision: revision.to_string(),
            message,
        };
        match select {
            Select::Filter(f) => {
                let files: Vec<String> = all.iter().filter(|a| f.matches(a)).cloned().collect();
                if files.is_empty() {
                    return Err(no(format!(
                        "no file matches {} ({} files in the repository)",
                        f.text,
                        all.len()
                    )));
                }
                Ok(files)
            }
            Select::Model(named) => model_files(all, *named).map_err(no),
        }
    }

    /// The snapshot from the cache alone.
    fn cached(&self, repo: &str, revision: &str, select: &Select, why: &str) -> Result<Snapshot> {
        let repo_dir = self.repo_dir(repo);
        let not = |what: String| Error::NotCached {
            repo: repo.to_string(),
            revision: revision.to_string(),
            what,
            cache: self.settings.cache_dir.clone(),
            why: why.to_string(),
        };
        let commit = if is_commit_hash(revision) {
            revision.to_string()
        } else {
            let refs = repo_dir.join("refs").join(revision);
            match fs::read_to_string(&refs) {
                Ok(c) if is_commit_hash(c.trim()) => c.trim().to_string(),
                _ => return Err(not(format!("the revision (no {})", refs.display()))),
            }
        };
        let dir = repo_dir.join("snapshots").join(&commit);
        if !dir.is_dir() {
            return Err(not(format!("commit {commit}")));
        }
        let mut present = Vec::new();
        list_files(&dir, "", &mut present, 0)?;
        present.sort();
        let files = self.select(repo, revision, &present, select).map_err(|e| not(e.to_string()))?;
        Ok(Snapshot { repo: repo.to_string(), commit, dir, files, downloaded_bytes: 0, offline: true })
    }

    /// `GET /api/models/{repo}/revision/{revision}`: the commit and the file list.
    fn revision_info(&self, repo: &str, revision: &str) -> Result<(String, Vec<String>)> {
        #[derive(serde::Deserialize)]
        struct Info {
            sha: Option<String>,
            #[serde(default)]
            siblings: Vec<Sibling>,
        }
        #[derive(serde::Deserialize)]
        struct Sibling {
            rfilename: String,
        }
        let url = format!("{}/api/models/{repo}/revision/{}", self.settings.endpoint, quote(revision, false));
        let resp = self.send(self.agent.get(&url), &url)?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(self.status_error(&resp, &url, repo, revision, None));
        }
        let body = resp
            .into_body()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| self.transport(&url, e))?;
        let info: Info = serde_json::from_str(&body).map_err(|e| Error::BadResponse {
            url: url.clone(),
            message: format!("not the revision JSON: {e}"),
        })?;
        let sha = info.sha.filter(|s| is_commit_hash(s)).ok_or_else(|| Error::BadResponse {
            url: url.clone(),
            message: "no 40-hex-digit `sha` in the revision JSON".into(),
        })?;
        Ok((sha, info.siblings.into_iter().map(|s| s.rfilename).collect()))
    }

    /// `HEAD /{repo}/resolve/{commit}/{file}` (following relative redirects, as
    /// `huggingface_hub` does, but not the absolute one to the LFS storage) and the download.
    /// Returns the bytes received.
    fn fetch_file(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
        link: &Path,
        progress: &mut dyn Progress,
    ) -> Result<u64> {
        let meta = self.file_meta(repo, commit, file)?;
        let repo_dir = self.repo_dir(repo);
        let blob = repo_dir.join("blobs").join(&meta.etag);
        let mut received = 0;
        if !blob.is_file() {
            received = self.download_blob(repo, file, &meta, &blob, progress)?;
        }
        link_pointer(&blob, link, file, &meta.etag)?;
        Ok(received)
    }

    fn file_meta(&self, repo: &str, commit: &str, file: &str) -> Result<FileMeta> {
        let mut url = format!("{}/{repo}/resolve/{commit}/{}", self.settings.endpoint, quote(file, true));
        for _ in 0..5 {
            let resp = self.send(self.agent.head(&url), &url)?;
            let status = resp.status().as_u16();
            let h = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            if !(200..400).contains(&status) {
                return Err(self.status_error(&resp, &url, repo, commit, Some(file)));
            }
            let location = h("location");
            if let Some(loc) =
                location.as_deref().filter(|l| (300..400).contains(&status) && l.starts_with('/'))
            {
                url = format!("{}{loc}", origin(&url));
                continue;
            }
            let bad = |message: &str| Error::BadResponse { url: url.clone(), message: message.to_string() };
            let etag = h("x-linked-etag")
                .or_else(|| h("etag"))
                .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
                .filter(|e| !e.is_empty() && !e.contains(['/', '\\']))
                .ok_or_else(|| bad("no ETag header (is HF_ENDPOINT a Hugging Face Hub?)"))?;
            let size = h("x-linked-size")
                .or_else(|| h("content-length"))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| bad("no X-Linked-Size or Content-Length header"))?;
            let download_url = match location {
                Some(loc) if (300..400).contains(&status) => loc,
                Some(_) | None => url.clone(),
            };
            return Ok(FileMeta { etag, size, download_url });
        }
        Err(Error::BadResponse { url, message: "more than 5 redirects".into() })
    }

    /// Downloads into `<blob>.incomplete`, resuming with a `Range` request where a partial file
    /// is there, verifies the checksum, and renames it to `blob`.
    fn download_blob(
        &self,
        repo: &str,
        file: &str,
        meta: &FileMeta,
        blob: &Path,
        progress: &mut dyn Progress,
    ) -> Result<u64> {
        let part = PathBuf::from(format!("{}.incomplete", blob.display()));
        if let Some(dir) = part.parent() {
            fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut done = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if done > meta.size {
            fs::remove_file(&part).map_err(io(&part))?;
            done = 0;
        }
        let mut hasher = Checksum::for_etag(&meta.etag, meta.size);
        if done > 0 {
            let mut f = File::open(&part).map_err(io(&part))?;
            hash_reader(&mut f, &mut hasher).map_err(io(&part))?;
        }
        progress.file_start(file, meta.size, done);
        let mut received = 0;
        if done < meta.size || meta.size == 0 {
            let url = &meta.download_url;
            let mut req = self.agent.get(url).header("Accept-Encoding", "identity");
            if done > 0 {
                req = req.header("Range", format!("bytes={done}-"));
            }
            let resp = self.send(req, url)?;
            let status = resp.status().as_u16();
            let append = match status {
                206 if done > 0 => true,
                200 => {
                    if done > 0 {
                        // The server ignored the range: start over.
                        done = 0;
                        hasher = Checksum::for_etag(&meta.etag, meta.size);
                        progress.file_start(file, meta.size, 0);
                    }
                    false
                }
                _ => return Err(self.status_error(&resp, url, repo, "", Some(file))),
            };
            let mut out = OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(&part)
                .map_err(io(&part))?;
            let mut body = resp.into_body().into_reader();
            let mut buf = vec![0u8; 1 << 20];
            let interrupted = |done: u64, message: String| Error::Interrupted {
                repo: repo.to_string(),
                file: file.to_string(),
                done,
                total: meta.size,
                message,
            };
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        out.flush().map_err(io(&part))?;
                        return Err(interrupted(done, e.to_string()));
                    }
                };
                let n = n.min((meta.size - done) as usize);
                out.write_all(&buf[..n]).map_err(io(&part))?;
                hasher.update(&buf[..n]);
                done += n as u64;
                received += n as u64;
                progress.file_bytes(n as u64);
                if done == meta.size {
                    break;
                }
            }
            out.sync_all().map_err(io(&part))?;
            if done < meta.size {
                return Err(interrupted(done, "the connection closed early".into()));
            }
        }
        if let Some((algo, actual)) = hasher.finish() {
            if actual != meta.etag {
                let _ = fs::remove_file(&part);
                return Err(Error::Checksum {
                    repo: repo.to_string(),
                    file: file.to_string(),
                    algo,
                    expected: meta.etag.clone(),
                    actual,
                });
            }
        }
        fs::rename(&part, blob).map_err(io(blob))?;
        progress.file_done(file);
        Ok(received)
    }

    /// Sends with the token where the URL is on the Hub itself (not to a storage redirect).
    fn send(
        &self,
        mut req: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
        url: &str,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        if let Some(t) = &self.settings.token {
            if origin(url) == origin(&self.settings.endpoint) {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
        }
        req.call().map_err(|e| self.transport(url, e))
    }

    fn transport(&self, url: &str, e: ureq::Error) -> Error {
        match e {
            ureq::Error::Io(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::Timeout(_)
            | ureq::Error::Tls(_)
            | ureq::Error::Rustls(_) => {
                Error::Network { endpoint: self.settings.endpoint.clone(), message: format!("{url}: {e}") }
            }
            other => Error::BadResponse { url: url.to_string(), message: other.to_string() },
        }
    }

    /// The error for a 4xx/5xx answer, by the Hub's `X-Error-Code` header where it sends one.
    fn status_error(
        &self,
        resp: &ureq::http::Response<ureq::Body>,
        url: &str,
        repo: &str,
        revision: &str,
        file: Option<&str>,
    ) -> Error {
        let status = resp.status().as_u16();
        let h = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let detail = h("x-error-message").map(|m| format!(": {m}")).unwrap_or_default();
        let code = h("x-error-code").unwrap_or_default();
        let endpoint = &self.settings.endpoint;
        match (code.as_str(), status) {
            ("RepoNotFound", _) if self.settings.token.is_none() && status == 401 => Error::Gated {
                repo: repo.to_string(),
                status,
                detail: format!("{detail} — or it does not exist"),
                hint: self.gated_hint(repo),
            },
            ("RepoNotFound", _) | ("", 404) if file.is_none() => {
                Error::RepoNotFound { repo: repo.to_string(), endpoint: endpoint.clone(), detail }
            }
            ("RevisionNotFound", _) => {
                Error::RevisionNotFound { repo: repo.to_string(), revision: revision.to_string() }
            }
            ("EntryNotFound", _) | ("", 404) => Error::FileNotFound {
                repo: repo.to_string(),
                revision: revision.to_string(),
                file: file.unwrap_or_default().to_string(),
            },
            ("GatedRepo", _) | (_, 401 | 403) => {
                Error::Gated { repo: repo.to_string(), status, detail, hint: self.gated_hint(repo) }
            }
            _ => Error::Http { url: url.to_string(), status, detail },
        }
    }

    fn gated_hint(&self, repo: &str) -> String {
        let endpoint = &self.settings.endpoint;
        match &self.settings.token_source {
            None => format!(
                "Open {endpoint}/{repo} while logged in and accept its licence (access may need approval), \
                 create a read token at {endpoint}/settings/tokens, and set HF_TOKEN=hf_… \
                 (or run `huggingface-cli login`, which saves it to $HF_HOME/token)."
            ),
            Some(src) => format!(
                "The token from {src} was sent but does not grant access: accept the licence on \
                 {endpoint}/{repo} with the account that owns the token (and wait for approval where \
                 the repository asks for it), or set HF_TOKEN to a token of an account that has access."
            ),
        }
    }
}

/// Resolves a model reference to a local path: `hf://org/name[@rev][/file]` through the cache
/// (downloading what is missing), an existing local path as is, a bare `org/name[@rev]` through
/// the cache when no such local path exists, anything else unchanged (the loader then reports it
/// missing).
pub fn resolve_model_path(spec: &Path, progress: &mut dyn Progress) -> Result<PathBuf> {
    let Some(text) = spec.to_str() else { return Ok(spec.to_path_buf()) };
    if text.starts_with("hf://") {
        let r = RepoRef::parse(text, false)?;
        return Hub::from_env().download_model(&r, progress);
    }
    if spec.exists() || !RepoRef::looks_like_repo_id(text) {
        return Ok(spec.to_path_buf());
    }
    let r = RepoRef::parse(text, true)?;
    Hub::from_env().download_model(&r, progress).map_err(|e| Error::NoFiles {
        repo: r.repo.clone(),
        revision: r.revision.clone(),
        message: format!("`{text}` is no local file or folder, and as a Hub repository: {e}"),
    })
}

/// How a model-path value (a config key, `--model`) names a Hub repository, as `hf://…`:
/// `hf://…` itself, or a bare `org/name[@rev]` when `local` (the value read as a path) does not
/// exist. `None`: a local path.
pub fn as_hub_reference(text: &str, local: &Path) -> Option<String> {
    if text.starts_with("hf://") {
        Some(text.to_string())
    } else if !local.exists() && RepoRef::looks_like_repo_id(text) {
        Some(format!("hf://{text}"))
    } else {
        None
    }
}

/// Whether `s` is a full commit hash.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The checksum an ETag implies: sha256 for LFS files, the git blob sha1 for the others.
enum Checksum {
    Sha256(sha2::Sha256),
    GitSha1(sha1::Sha1),
    None,
}

impl Checksum {
    fn for_etag(etag: &str, size: u64) -> Self {
        let hex = etag.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        match etag.len() {
            64 if hex => Self::Sha256(sha2::Sha256::new()),
            40 if hex => {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Self::GitSha1(h)
            }
            _ => Self::None,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::GitSha1(h) => h.update(bytes),
            Self::None => {}
        }
    }

    fn finish(self) -> Option<(&'static str, String)> {
        match self {
            Self::Sha256(h) => Some(("sha256", hex(&h.finalize()))),
            Self::GitSha1(h) => Some(("git-sha1", hex(&h.finalize()))),
            Self::None => None,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_reader(r: &mut impl Read, h: &mut Checksum) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match r.read(&mut buf)? {
            0 => return Ok(()),
            n => h.update(&buf[..n]),
        }
    }
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    url[start..].find('/').map_or(url, |i| &url[..start + i])
}

/// Percent-encodes a revision or file path for a URL (keeping `/` in file paths), as
/// `urllib.parse.quote` does.
fn quote(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Writes a small file atomically (temporary file in the same folder, then rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("a cache path has a parent");
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = PathBuf::from(format!("{}.tmp{}", path.display(), std::process::id()));
    fs::write(&tmp, bytes).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// `snapshots/<commit>/<file>` → `../../blobs/<etag>` (a relative symlink, as
/// `huggingface_hub` makes; a copy where symlinks are unavailable), replaced atomically.
fn link_pointer(blob: &Path, link: &Path, file: &str, etag: &str) -> Result<()> {
    let dir = link.parent().expect("a snapshot path has a parent");
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = PathBuf::from(format!("{}.tmp{}", link.display(), std::process::id()));
    let _ = fs::remove_file(&tmp);
    #[cfg(unix)]
    {
        let target = format!("{}blobs/{etag}", "../".repeat(2 + file.matches('/').count()));
        std::os::unix::fs::symlink(&target, &tmp).map_err(io(&tmp))?;
    }
    #[cfg(not(unix))]
    {
        let _ = (file, etag);
        fs::copy(blob, &tmp).map_err(io(&tmp))?;
    }
    let _ = blob;
    fs::rename(&tmp, link).map_err(io(link))
}

/// The files (following symlinks to existing blobs) under `dir`, as repository paths.
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<String>, depth: usize) -> Result<()> {
    if depth > 32 {
        return Ok(());
    }
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let rel = format!("{prefix}{name}");
        if path.is_dir() {
            list_files(&path, &format!("{rel}/"), out, depth + 1)?;
        } else if path.is_file() {
            out.push(rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_helpers() {
        assert_eq!(origin("http://127.0.0.1:8080/a/b"), "http://127.0.0.1:8080");
        assert_eq!(origin("https://huggingface.co"), "https://huggingface.co");
        assert_eq!(quote("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(quote("sub dir/a+b.json", true), "sub%20dir/a%2Bb.json");
    }

    #[test]
    fn checksums_match_git_and_lfs() {
        // `git hash-object` of "hello\n" and sha256 of the same bytes.
        let mut h = Checksum::for_etag("ce013625030ba8dba906f756967f9e9ca394464a", 6);
        h.update(b"hello\n");
        assert_eq!(h.finish().unwrap().1, "ce013625030ba8dba906f756967f9e9ca394464a");
        let e = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        let mut h = Checksum::for_etag(e, 6);
        h.update(b"hello\n");
        assert_eq!(h.finish().unwrap(), ("sha256", e.to_string()));
        assert!(Checksum::for_etag("not-a-digest", 6).finish().is_none());
    }

    #[test]
    fn filters_like_huggingface_hub() {
        let f = Filter::new(&["*.json".into(), "tokenizer*".into()], &["*generation*".into()]).unwrap();
        assert!(f.matches("config.json"));
        assert!(f.matches("sub/x.json"));
        assert!(f.matches("tokenizer.model"));
        assert!(!f.matches("generation_config.json"));
        assert!(!f.matches("model.safetensors"));
        let f = Filter::new(&["original/".into()], &[]).unwrap();
        assert!(f.matches("original/params.json"));
        assert!(!f.matches("config.json"));
        assert!(Filter::new(&["a[".into()], &[]).is_err());
        assert!(Filter::all().matches("anything"));
    }
}
