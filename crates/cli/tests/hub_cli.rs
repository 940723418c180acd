//! `afinar download` and Hub references as `--model`, against the local Hub server of the hub
//! crate's tests, with the real SmolLM2 GGUF as the repository's LFS file.

mod common;
#[path = "../../hub/tests/common/mod.rs"]
mod hub_server;

use std::path::Path;
use std::process::{Command, Output};

use common::{assert_clean_failure, text};
use hub_server::{skip, temp_dir, HubServer, Repo, RepoFile};

const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";
const REPO: &str = "afinar-test/SmolLM2-135M-Instruct-GGUF";

/// Runs `afinar` with the Hub settings of the test only.
fn afinar(args: &[&str], hf_home: &Path, endpoint: &str, extra: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_afinar"));
    c.args(args).env("HF_HOME", hf_home).env("HF_ENDPOINT", endpoint);
    for v in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
    ] {
        c.env_remove(v);
    }
    for (k, v) in extra {
        c.env(k, v);
    }
    c.output().expect("run afinar")
}

fn generate(model: &str, hf_home: &Path, endpoint: &str, extra: &[(&str, &str)]) -> Output {
    let args =
        ["generate", "--model", model, "--prompt", "The capital of France is", "--max-new-tokens", "6"];
    afinar(&args, hf_home, endpoint, extra)
}

#[test]
fn download_and_generate_from_a_hub_reference() {
    let gguf_path = std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
        .join(".cache/afinar/assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let Ok(gguf) = std::fs::read(&gguf_path) else {
        return skip("the SmolLM2 GGUF is missing (run scripts/fetch-assets.sh)");
    };
    let server = HubServer::start(vec![
        Repo {
            id: REPO.into(),
            commit: COMMIT.into(),
            files: vec![
                RepoFile::small("README.md", "# test\n"),
                RepoFile::small("config.json", "{}\n"),
                RepoFile::small("tokenizer_config.json", "{}\n"),
                RepoFile::lfs("SmolLM2-135M-Instruct.Q4_1.gguf", gguf),
            ],
            token: None,
        },
        Repo {
            id: "meta-llama/Gated-Tiny".into(),
            commit: COMMIT.into(),
            files: vec![RepoFile::small("config.json", "{}\n")],
            token: Some("hf_good".into()),
        },
    ]);
    let dir = temp_dir("cli");
    let home = dir.join("hf");

    // download with --include/--exclude: the snapshot folder on stdout, only the selected file.
    let out = afinar(
        &["download", REPO, "--include", "*.json", "--exclude", "tokenizer*"],
        &home,
        &server.url,
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let snap = home.join("hub/models--afinar-test--SmolLM2-135M-Instruct-GGUF/snapshots").join(COMMIT);
    assert_eq!(text(&out.stdout), format!("{}\n", snap.display()));
    let names: Vec<String> = std::fs::read_dir(&snap)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["config.json"]);

    // generate from hf://…: the GGUF alone is fetched; the text equals that of the local file.
    let local = generate(gguf_path.to_str().unwrap(), &home, &server.url, &[]);
    assert!(local.status.success(), "{}", text(&local.stderr));
    let before = server.counters.snapshot().3;
    let hub = generate(&format!("hf://{REPO}"), &home, &server.url, &[]);
    assert!(hub.status.success(), "{}", text(&hub.stderr));
    assert_eq!(text(&hub.stdout), text(&local.stdout));
    assert_eq!(server.counters.snapshot().3 - before, gguf_path.metadata().unwrap().len());
    assert!(snap.join("SmolLM2-135M-Instruct.Q4_1.gguf").is_file());
    assert!(!snap.join("README.md").exists());

    // The bare id, offline, with the Hub gone: from the cache.
    let dead = "http://127.0.0.1:9";
    let offline = generate(REPO, &home, dead, &[("HF_HUB_OFFLINE", "1")]);
    assert!(offline.status.success(), "{}", text(&offline.stderr));
    assert_eq!(text(&offline.stdout), text(&local.stdout));
    // …and what is not cached is a clear error.
    let out = generate("hf://org/absent", &home, dead, &[("HF_HUB_OFFLINE", "1")]);
    assert_clean_failure(&out, "is not in the Hugging Face cache");

    // Gated: refused without a token, with a hint; accepted with HF_TOKEN or the token file.
    let out = afinar(&["download", "meta-llama/Gated-Tiny"], &home, &server.url, &[]);
    assert_clean_failure(&out, "the repository is gated or private");
    assert!(text(&out.stderr).contains("HF_TOKEN"), "{}", text(&out.stderr));
    let out = afinar(&["download", "meta-llama/Gated-Tiny"], &home, &server.url, &[("HF_TOKEN", "hf_good")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let home2 = dir.join("hf2");
    std::fs::create_dir_all(&home2).unwrap();
    std::fs::write(home2.join("token"), "hf_good\n").unwrap();
    let out = afinar(&["download", "meta-llama/Gated-Tiny"], &home2, &server.url, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // 404 and no network.
    let out = afinar(&["download", "org/absent"], &home, &server.url, &[("HF_TOKEN", "hf_good")]);
    assert_clean_failure(&out, "repository not found");
    let out = afinar(&["download", "org/absent"], &home, dead, &[]);
    assert_clean_failure(&out, "cannot reach the Hub");
    std::fs::remove_dir_all(&dir).unwrap();
}
