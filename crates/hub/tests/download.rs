//! Downloads from a local server that speaks the Hub's protocol (tests/common), with the real
//! SmolLM2 GGUF as the repository's LFS file: cold and warm cache, an interrupted and resumed
//! transfer, gated repositories, 404s, offline mode and no network, checksum failures, the model
//! file selection, and `huggingface_hub` finding the files (with `AFINAR_PYTHON`).

mod common;

use std::path::{Path, PathBuf};

use afinar_hub::{Error, Filter, Hub, Quiet, RepoRef};
use axum::body::Bytes;
use common::{skip, temp_dir, HubServer, Repo, RepoFile};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const REPO: &str = "afinar-test/SmolLM2-135M-Instruct-GGUF";
const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const CONFIG: &str = "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\"}\n";

fn gguf_bytes() -> Option<Bytes> {
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/afinar/assets/smollm2-135m-instruct").join(GGUF);
    std::fs::read(&p).ok().map(Bytes::from)
}

/// The SmolLM2 repository: its GGUF (LFS), a config, a tokenizer config and a README.
fn smollm2_repo(gguf: Bytes) -> Repo {
    Repo {
        id: REPO.into(),
        commit: COMMIT.into(),
        files: vec![
            RepoFile::small(".gitattributes", "*.gguf filter=lfs diff=lfs merge=lfs -text\n"),
            RepoFile::small("README.md", "# SmolLM2-135M-Instruct GGUF\n"),
            RepoFile::small("config.json", CONFIG),
            RepoFile::small("tokenizer_config.json", "{\"model_max_length\": 8192}\n"),
            RepoFile::lfs(GGUF, gguf),
        ],
        token: None,
    }
}

/// Checks the layout `huggingface_hub` uses: refs/main, relative symlinks to blobs named by the
/// ETag, contents intact.
fn check_layout(cache: &Path, files: &[(&str, &[u8], String)]) {
    let repo_dir = cache.join(format!("models--{}", REPO.replace('/', "--")));
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), COMMIT);
    for (name, data, etag) in files {
        let link = repo_dir.join("snapshots").join(COMMIT).join(name);
        let target = std::fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
        assert_eq!(target, PathBuf::from(format!("../../blobs/{etag}")), "{name}");
        let blob = repo_dir.join("blobs").join(etag);
        assert_eq!(std::fs::metadata(&blob).unwrap().len(), data.len() as u64, "{name}");
        assert!(std::fs::read(&link).unwrap() == *data, "{name}: content differs");
    }
    let leftovers: Vec<_> = std::fs::read_dir(repo_dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn cold_then_warm_then_offline_and_found_by_huggingface_hub() {
    let Some(gguf) = gguf_bytes() else {
        return skip("the SmolLM2 GGUF is missing (run scripts/fetch-assets.sh)");
    };
    let repo = smollm2_repo(gguf.clone());
    let expect: Vec<(String, Vec<u8>, String)> =
        repo.files.iter().map(|f| (f.name.clone(), f.data.to_vec(), f.etag())).collect();
    let total: u64 = repo.files.iter().map(|f| f.data.len() as u64).sum();
    let server = HubServer::start(vec![repo]);
    let dir = temp_dir("cold");
    let cache = dir.join("hf/hub");
    let hub = Hub::new(server.settings(cache.clone(), None));

    // Cold: one API call, one HEAD per file, every byte once.
    let snap = hub.download(REPO, "main", &Filter::all(), &mut Quiet).unwrap();
    assert_eq!(snap.commit, COMMIT);
    assert_eq!(snap.files.len(), 5);
    assert_eq!(snap.downloaded_bytes, total);
    let (api, head, get, bytes) = server.counters.snapshot();
    assert_eq!((api, head, get, bytes), (1, 5, 5, total));
    let refs: Vec<(&str, &[u8], String)> =
        expect.iter().map(|(n, d, e)| (n.as_str(), d.as_slice(), e.clone())).collect();
    check_layout(&cache, &refs);

    // Warm: the revision is looked up, nothing else is requested or transferred.
    let snap2 = hub.download(REPO, "main", &Filter::all(), &mut Quiet).unwrap();
    assert_eq!(snap2.downloaded_bytes, 0);
    assert_eq!(server.counters.snapshot(), (2, 5, 5, total));

    // The model resolution picks the GGUF alone and returns its path, without a transfer.
    let path =
        hub.download_model(&RepoRef::parse(&format!("hf://{REPO}"), false).unwrap(), &mut Quiet).unwrap();
    assert_eq!(path, snap.dir.join(GGUF));
    assert_eq!(server.counters.snapshot(), (3, 5, 5, total));

    // Offline: the cache alone, with the server stopped.
    drop(server);
    let mut offline = hub.settings().clone();
    offline.offline = true;
    offline.endpoint = "http://127.0.0.1:9".into();
    let snap3 = Hub::new(offline)
        .download(REPO, "main", &Filter::new(&["*.json".into()], &[]).unwrap(), &mut Quiet)
        .unwrap();
    assert!(snap3.offline);
    assert_eq!(snap3.files, vec!["config.json".to_string(), "tokenizer_config.json".to_string()]);

    // `huggingface_hub` finds the files with HF_HUB_OFFLINE=1.
    let Some(python) = std::env::var_os("AFINAR_PYTHON") else {
        return skip("AFINAR_PYTHON is not set: huggingface_hub's view of the cache not checked");
    };
    let script = format!(
        r#"
import hashlib, os
from huggingface_hub import hf_hub_download, snapshot_download
p = hf_hub_download("{REPO}", "config.json", local_files_only=True)
g = hf_hub_download("{REPO}", "{GGUF}", revision="main", local_files_only=True)
s = snapshot_download("{REPO}", local_files_only=True)
h = hashlib.sha256(open(g, "rb").read()).hexdigest()
print(p); print(g); print(s); print(h); print(sorted(os.listdir(s)))
"#
    );
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .env("HF_HOME", dir.join("hf"))
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], snap.dir.join("config.json").to_str().unwrap());
    assert_eq!(lines[1], snap.dir.join(GGUF).to_str().unwrap());
    assert_eq!(lines[2], snap.dir.to_str().unwrap());
    assert_eq!(lines[3], expect[4].2);
    assert!(lines[4].contains("'config.json'") && lines[4].contains(GGUF), "{}", lines[4]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn interrupted_download_resumes_with_a_range() {
    let Some(gguf) = gguf_bytes() else {
        return skip("the SmolLM2 GGUF is missing (run scripts/fetch-assets.sh)");
    };
    let size = gguf.len() as u64;
    let etag = RepoFile::lfs(GGUF, gguf.clone()).etag();
    let server = HubServer::start(vec![smollm2_repo(gguf.clone())]);
    let dir = temp_dir("resume");
    let cache = dir.join("hub");
    let hub = Hub::new(server.settings(cache.clone(), None));
    let only_gguf = Filter::new(&["*.gguf".into()], &[]).unwrap();

    server.drop_next_transfer_after(40 << 20);
    let err = hub.download(REPO, "main", &only_gguf, &mut Quiet).unwrap_err();
    let Error::Interrupted { done, total, .. } = &err else { panic!("expected Interrupted, got {err}") };
    assert_eq!(*total, size);
    assert!(*done > 0 && *done <= 40 << 20, "{done}");
    assert!(err.to_string().contains("run the same command again to resume"), "{err}");
    let part = cache.join(format!("models--{}/blobs/{etag}.incomplete", REPO.replace('/', "--")));
    let kept = std::fs::metadata(&part).unwrap().len();
    assert_eq!(kept, *done);
    let bytes_before = server.counters.snapshot().3;

    let snap = hub.download(REPO, "main", &only_gguf, &mut Quiet).unwrap();
    assert_eq!(snap.downloaded_bytes, size - kept);
    assert_eq!(server.counters.snapshot().3 - bytes_before, size - kept, "only the rest is transferred");
    assert_eq!(server.ranges(), vec![format!("bytes={kept}-")]);
    assert!(!part.exists());
    let got = std::fs::read(snap.dir.join(GGUF)).unwrap();
    assert!(got == gguf, "the resumed file differs from the original");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn small_repo(id: &str, token: Option<&str>) -> Repo {
    Repo {
        id: id.into(),
        commit: COMMIT.into(),
        files: vec![
            RepoFile::small("config.json", CONFIG),
            RepoFile::lfs("model.safetensors", vec![7u8; 3000]),
            RepoFile::small("tokenizer.json", "{}"),
            RepoFile::small("README.md", "readme"),
            RepoFile::small("onnx/model.safetensors", "not needed"),
            RepoFile::lfs("original/consolidated.00.pth", vec![1u8; 100]),
        ],
        token: token.map(str::to_string),
    }
}

#[test]
fn gated_repository_needs_a_token() {
    let server = HubServer::start(vec![small_repo("meta-llama/Gated-Tiny", Some("hf_good"))]);
    let dir = temp_dir("gated");
    let f = Filter::all();

    let err = Hub::new(server.settings(dir.join("a"), None)).download(
        "meta-llama/Gated-Tiny",
        "main",
        &f,
        &mut Quiet,
    );
    let err = err.unwrap_err();
    assert!(matches!(err, Error::Gated { status: 401, .. }), "{err}");
    let msg = err.to_string();
    for want in ["gated or private", "accept its licence", "HF_TOKEN", "/meta-llama/Gated-Tiny"] {
        assert!(msg.contains(want), "`{want}` missing from: {msg}");
    }

    let err = Hub::new(server.settings(dir.join("b"), Some("hf_wrong")))
        .download("meta-llama/Gated-Tiny", "main", &f, &mut Quiet)
        .unwrap_err();
    assert!(matches!(err, Error::Gated { status: 403, .. }), "{err}");
    assert!(err.to_string().contains("The token from HF_TOKEN was sent but does not grant access"), "{err}");

    let snap = Hub::new(server.settings(dir.join("c"), Some("hf_good")))
        .download("meta-llama/Gated-Tiny", "main", &f, &mut Quiet)
        .unwrap();
    assert_eq!(snap.files.len(), 6);
    assert_eq!(std::fs::read(snap.dir.join("model.safetensors")).unwrap(), vec![7u8; 3000]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn not_found_errors_name_what_is_missing() {
    let mut repo = small_repo("org/tiny", None);
    repo.files.push(RepoFile { ghost: true, ..RepoFile::small("ghost.bin", "x") });
    let server = HubServer::start(vec![repo]);
    let dir = temp_dir("404");
    let hub = Hub::new(server.settings(dir.join("hub"), Some("hf_any")));

    let err = hub.download("org/missing", "main", &Filter::all(), &mut Quiet).unwrap_err();
    assert!(matches!(err, Error::RepoNotFound { .. }), "{err}");
    assert!(err.to_string().starts_with("org/missing: repository not found on http://127.0.0.1:"), "{err}");

    let err = hub.download("org/tiny", "v9", &Filter::all(), &mut Quiet).unwrap_err();
    assert_eq!(
        err.to_string(),
        "org/tiny: revision `v9` not found (a branch, tag or commit hash of the repository)"
    );

    let ghost = Filter::new(&["ghost.bin".into()], &[]).unwrap();
    let err = hub.download("org/tiny", "main", &ghost, &mut Quiet).unwrap_err();
    assert_eq!(err.to_string(), format!("org/tiny@{COMMIT}: file `ghost.bin` not found in the repository"));

    let none = Filter::new(&["*.gguf".into()], &[]).unwrap();
    let err = hub.download("org/tiny", "main", &none, &mut Quiet).unwrap_err();
    assert!(
        err.to_string().contains("no file matches --include *.gguf (7 files in the repository)"),
        "{err}"
    );

    let r = RepoRef::parse("hf://org/tiny/missing.gguf", false).unwrap();
    let err = hub.download_model(&r, &mut Quiet).unwrap_err();
    assert!(err.to_string().contains("there is no file `missing.gguf`"), "{err}");

    // Without a token the Hub answers 401 for a repository it does not show.
    let anon = Hub::new(server.settings(dir.join("anon"), None));
    let err = anon.download("org/missing", "main", &Filter::all(), &mut Quiet).unwrap_err();
    assert!(err.to_string().contains("or it does not exist"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn model_resolution_downloads_only_what_a_model_needs() {
    let server = HubServer::start(vec![small_repo("org/tiny", None)]);
    let dir = temp_dir("model");
    let hub = Hub::new(server.settings(dir.join("hub"), None));
    let r = RepoRef::parse("org/tiny", true).unwrap();
    let path = hub.download_model(&r, &mut Quiet).unwrap();
    assert_eq!(path, dir.join("hub/models--org--tiny/snapshots").join(COMMIT));
    let mut present: Vec<String> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(present, ["config.json", "model.safetensors", "tokenizer.json"]);
    // 1 API call and 3 files (README, onnx/ and original/ left alone).
    let (api, head, get, _) = server.counters.snapshot();
    assert_eq!((api, head, get), (1, 3, 3));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn offline_and_unreachable() {
    let dir = temp_dir("offline");
    let server = HubServer::start(vec![small_repo("org/tiny", None)]);
    let mut settings = server.settings(dir.join("hub"), None);
    settings.offline = true;
    let err =
        Hub::new(settings.clone()).download("org/tiny", "main", &Filter::all(), &mut Quiet).unwrap_err();
    assert!(matches!(err, Error::NotCached { .. }), "{err}");
    assert!(err.to_string().contains("HF_HUB_OFFLINE is set"), "{err}");
    assert_eq!(server.counters.snapshot(), (0, 0, 0, 0), "offline mode made a request");

    // No network: a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    settings.offline = false;
    settings.endpoint = format!("http://127.0.0.1:{port}");
    let err =
        Hub::new(settings.clone()).download("org/tiny", "main", &Filter::all(), &mut Quiet).unwrap_err();
    assert!(matches!(err, Error::Network { .. }), "{err}");
    assert!(err.to_string().contains("set HF_HUB_OFFLINE=1"), "{err}");

    // Once cached, an unreachable Hub falls back to the cache (with a note).
    Hub::new(server.settings(dir.join("hub"), None))
        .download("org/tiny", "main", &Filter::all(), &mut Quiet)
        .unwrap();
    struct Notes(Vec<String>);
    impl afinar_hub::Progress for Notes {
        fn note(&mut self, m: &str) {
            self.0.push(m.to_string());
        }
    }
    let mut notes = Notes(Vec::new());
    let snap = Hub::new(settings).download("org/tiny", "main", &Filter::all(), &mut notes).unwrap();
    assert!(snap.offline);
    assert_eq!(snap.files.len(), 6);
    assert!(notes.0.len() == 1 && notes.0[0].contains("using the cached snapshot"), "{:?}", notes.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wrong_checksum_is_refused_and_nothing_is_kept() {
    let mut repo = small_repo("org/tiny", None);
    let bad = "a".repeat(64);
    repo.files[1].etag = Some(bad.clone());
    let server = HubServer::start(vec![repo]);
    let dir = temp_dir("checksum");
    let hub = Hub::new(server.settings(dir.join("hub"), None));
    let f = Filter::new(&["model.safetensors".into()], &[]).unwrap();
    let err = hub.download("org/tiny", "main", &f, &mut Quiet).unwrap_err();
    assert!(matches!(err, Error::Checksum { algo: "sha256", .. }), "{err}");
    let blobs = dir.join("hub/models--org--tiny/blobs");
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 0, "a failed file was kept");
    assert!(!dir.join("hub/models--org--tiny/snapshots").join(COMMIT).join("model.safetensors").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
