//! A local server that speaks the Hugging Face Hub's download protocol, for the download tests:
//! the revision API, `resolve` URLs (small files answered directly with their git sha1 ETag, LFS
//! files redirected with 302 to a storage path with `X-Linked-Etag`/`X-Linked-Size`), `Range`
//! requests, a token check for gated repositories, the Hub's `X-Error-Code` headers, request and
//! byte counters, and an optional dropped connection mid-file.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use afinar_hub::Settings;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use sha1::Digest as _;

/// One file of a served repository.
pub struct RepoFile {
    /// Path in the repository.
    pub name: String,
    /// Contents.
    pub data: Bytes,
    /// Stored with LFS (sha256 ETag, redirect) or in git (sha1 ETag, direct).
    pub lfs: bool,
    /// Listed in the file list but answered 404 by `resolve`.
    pub ghost: bool,
    /// ETag override (to serve a wrong checksum).
    pub etag: Option<String>,
}

impl RepoFile {
    /// A file stored in git.
    pub fn small(name: &str, data: impl Into<Bytes>) -> Self {
        Self { name: name.into(), data: data.into(), lfs: false, ghost: false, etag: None }
    }
    /// A file stored with LFS.
    pub fn lfs(name: &str, data: impl Into<Bytes>) -> Self {
        Self { lfs: true, ..Self::small(name, data) }
    }
    /// The ETag the Hub gives it.
    pub fn etag(&self) -> String {
        if let Some(e) = &self.etag {
            return e.clone();
        }
        if self.lfs {
            hex(&sha2::Sha256::digest(&self.data))
        } else {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {}\0", self.data.len()).as_bytes());
            h.update(&self.data);
            hex(&h.finalize())
        }
    }
}

/// A served repository.
pub struct Repo {
    /// `org/name`.
    pub id: String,
    /// Its commit hash (the `main` branch and the only revision).
    pub commit: String,
    /// Its files.
    pub files: Vec<RepoFile>,
    /// The token a gated repository requires.
    pub token: Option<String>,
}

/// Request and byte counters.
#[derive(Default)]
pub struct Counters {
    /// Revision API calls.
    pub api: AtomicU64,
    /// `HEAD` on resolve URLs.
    pub head: AtomicU64,
    /// `GET` on resolve URLs and the LFS storage.
    pub get: AtomicU64,
    /// File body bytes handed to the connection.
    pub bytes: AtomicU64,
}

impl Counters {
    /// (api, head, get, bytes).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        let l = |a: &AtomicU64| a.load(Ordering::SeqCst);
        (l(&self.api), l(&self.head), l(&self.get), l(&self.bytes))
    }
}

struct Shared {
    repos: Vec<Repo>,
    by_etag: HashMap<String, Bytes>,
    counters: Arc<Counters>,
    /// Drop the connection after this many bytes of the next LFS transfer (once).
    drop_after: Mutex<Option<u64>>,
    base: String,
    /// Ranges seen on LFS requests.
    ranges: Mutex<Vec<String>>,
}

/// A running server; it stops when dropped.
pub struct HubServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The counters.
    pub counters: Arc<Counters>,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HubServer {
    /// Serves `repos` on an ephemeral loopback port.
    pub fn start(repos: Vec<Repo>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let by_etag = repos
            .iter()
            .flat_map(|r| r.files.iter())
            .filter(|f| f.lfs)
            .map(|f| (f.etag(), f.data.clone()))
            .collect();
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            repos,
            by_etag,
            counters: counters.clone(),
            drop_after: Mutex::new(None),
            base: url.clone(),
            ranges: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/api/models/{org}/{name}/revision/{rev}", get(api))
            .route("/{org}/{name}/resolve/{rev}/{*file}", get(resolve))
            .route("/lfs-storage/{etag}", get(storage))
            .with_state(shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
            rt.shutdown_background();
        });
        Self { url, counters, shared, stop: Some(tx) }
    }

    /// The next LFS transfer stops (connection dropped) after `bytes` bytes.
    pub fn drop_next_transfer_after(&self, bytes: u64) {
        *self.shared.drop_after.lock().unwrap() = Some(bytes);
    }

    /// The `Range` headers the LFS storage saw.
    pub fn ranges(&self) -> Vec<String> {
        self.shared.ranges.lock().unwrap().clone()
    }

    /// Client settings for this server over the cache `cache_dir`.
    pub fn settings(&self, cache_dir: PathBuf, token: Option<&str>) -> Settings {
        Settings {
            endpoint: self.url.clone(),
            cache_dir,
            token: token.map(str::to_string),
            token_source: token.map(|_| "HF_TOKEN".to_string()),
            offline: false,
        }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn error(status: u16, code: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header("x-error-code", code)
        .header("x-error-message", message)
        .body(Body::from(format!("{{\"error\":\"{message}\"}}")))
        .unwrap()
}

/// The Hub's answers before a repository's content: unknown repository (401 without a token,
/// 404 with one, as the Hub hides private repositories), gated (401 without a token, 403 with a
/// wrong one), unknown revision.
fn check<'a>(
    s: &'a Shared,
    org: &str,
    name: &str,
    rev: &str,
    headers: &HeaderMap,
) -> Result<&'a Repo, Response> {
    let id = format!("{org}/{name}");
    let auth =
        headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(repo) = s.repos.iter().find(|r| r.id == id) else {
        let status = if auth.is_some() { 404 } else { 401 };
        return Err(error(status, "RepoNotFound", "Repository not found"));
    };
    if let Some(t) = &repo.token {
        match auth {
            None => {
                return Err(error(
                    401,
                    "GatedRepo",
                    "Access to this model is restricted; you must be authenticated",
                ))
            }
            Some(a) if a != t => {
                return Err(error(
                    403,
                    "GatedRepo",
                    "Access to this model is restricted and you are not in the authorized list",
                ))
            }
            Some(_) => {}
        }
    }
    if rev != "main" && rev != repo.commit {
        return Err(error(404, "RevisionNotFound", "Invalid rev id"));
    }
    Ok(repo)
}

async fn api(
    State(s): State<Arc<Shared>>,
    Path((org, name, rev)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    s.counters.api.fetch_add(1, Ordering::SeqCst);
    let repo = match check(&s, &org, &name, &rev, &headers) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let siblings: Vec<String> =
        repo.files.iter().map(|f| format!("{{\"rfilename\":\"{}\"}}", f.name)).collect();
    let body = format!(
        "{{\"_id\":\"x\",\"id\":\"{}\",\"private\":false,\"sha\":\"{}\",\"siblings\":[{}]}}",
        repo.id,
        repo.commit,
        siblings.join(",")
    );
    Response::builder().header("content-type", "application/json").body(Body::from(body)).unwrap()
}

async fn resolve(
    State(s): State<Arc<Shared>>,
    method: Method,
    Path((org, name, rev, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let head = method == Method::HEAD;
    if head {
        s.counters.head.fetch_add(1, Ordering::SeqCst);
    } else {
        s.counters.get.fetch_add(1, Ordering::SeqCst);
    }
    let repo = match check(&s, &org, &name, &rev, &headers) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(f) = repo.files.iter().find(|f| f.name == file && !f.ghost) else {
        return error(404, "EntryNotFound", &format!("{file} does not exist on \"{rev}\""));
    };
    let b = Response::builder().header("x-repo-commit", &repo.commit);
    if f.lfs {
        return b
            .status(StatusCode::FOUND)
            .header("location", format!("{}/lfs-storage/{}", s.base, f.etag()))
            .header("etag", "\"redirect-etag\"")
            .header("x-linked-etag", format!("\"{}\"", f.etag()))
            .header("x-linked-size", f.data.len())
            .body(Body::empty())
            .unwrap();
    }
    if !head {
        s.counters.bytes.fetch_add(f.data.len() as u64, Ordering::SeqCst);
    }
    b.header("etag", format!("\"{}\"", f.etag())).body(Body::from(f.data.clone())).unwrap()
}

/// The LFS storage: ranges, and the one-off dropped connection.
async fn storage(
    State(s): State<Arc<Shared>>,
    method: Method,
    Path(etag): Path<String>,
    headers: HeaderMap,
) -> Response {
    if method == Method::GET {
        s.counters.get.fetch_add(1, Ordering::SeqCst);
    }
    let Some(data) = s.by_etag.get(&etag).cloned() else {
        return error(404, "EntryNotFound", "no such object");
    };
    let range = headers.get("range").and_then(|v| v.to_str().ok()).map(str::to_string);
    let start = match &range {
        Some(r) => {
            s.ranges.lock().unwrap().push(r.clone());
            match r
                .strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) if n < data.len() => Some(n),
                _ => return Response::builder().status(416).body(Body::empty()).unwrap(),
            }
        }
        None => None,
    };
    let from = start.unwrap_or(0);
    let body = data.slice(from..);
    let len = body.len();
    let cut = s.drop_after.lock().unwrap().take();
    let counters = s.counters.clone();
    let mut chunks: Vec<Result<Bytes, std::io::Error>> = Vec::new();
    let limit = cut.map_or(len, |c| (c as usize).min(len));
    let mut at = 0;
    while at < limit {
        let end = (at + (1 << 20)).min(limit);
        chunks.push(Ok(body.slice(at..end)));
        at = end;
    }
    if cut.is_some() {
        chunks.push(Err(std::io::Error::other("connection dropped by the test server")));
    }
    let stream = futures_util::stream::iter(chunks).map(move |c| {
        if let Ok(b) = &c {
            counters.bytes.fetch_add(b.len() as u64, Ordering::SeqCst);
        }
        c
    });
    let mut b = Response::builder().header("content-length", len).header("etag", format!("\"{etag}\""));
    if start.is_some() {
        b = b.status(206).header("content-range", format!("bytes {from}-{}/{}", data.len() - 1, data.len()));
    }
    if method == Method::HEAD {
        return b.body(Body::empty()).unwrap();
    }
    b.body(Body::from_stream(stream)).unwrap()
}

use futures_util::StreamExt as _;

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh temporary folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("afinar-hub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a `SKIPPED:` line past libtest's capture.
pub fn skip(why: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("SKIPPED: {why}\n").as_bytes());
}
