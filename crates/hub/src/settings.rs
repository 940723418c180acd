//! The Hub settings that `huggingface_hub` reads from the environment, read the same way.

use std::path::{Path, PathBuf};

/// The default Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where the Hub is, where the cache lives, the access token and whether to stay offline.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The Hub's base URL, without a trailing slash (`HF_ENDPOINT`; default huggingface.co).
    pub endpoint: String,
    /// The hub cache folder holding `models--org--name/` (`HF_HUB_CACHE`, else `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// The access token for gated and private repositories.
    pub token: Option<String>,
    /// Where the token came from (`HF_TOKEN`, or the token file's path), for error messages.
    pub token_source: Option<String>,
    /// `HF_HUB_OFFLINE`: never touch the network, use only the cache.
    pub offline: bool,
}

impl Settings {
    /// Reads `HF_ENDPOINT`, `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), `HF_HOME`,
    /// `XDG_CACHE_HOME`, `HF_TOKEN`, `HF_TOKEN_PATH` (default `$HF_HOME/token`, where
    /// `huggingface-cli login` saves it) and `HF_HUB_OFFLINE`, with `huggingface_hub`'s defaults.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// As [`Settings::from_env`], reading variables through `var` (for tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let home = || var("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home().join(".cache"))
                .join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let (token, token_source) = match var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")) {
            Some(t) => (Some(t.trim().to_string()), Some("HF_TOKEN".to_string())),
            None => {
                let path = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home.join("token"));
                match read_token(&path) {
                    Some(t) => (Some(t), Some(path.display().to_string())),
                    None => (None, None),
                }
            }
        };
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v));
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            cache_dir,
            token: token.filter(|t| !t.is_empty()),
            token_source,
            offline,
        }
    }
}

/// `huggingface_hub`'s reading of a boolean variable.
fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
}

fn read_token(path: &Path) -> Option<String> {
    let t = std::fs::read_to_string(path).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn defaults_follow_huggingface_hub() {
        let s = Settings::from_vars(vars(&[("HOME", "/h")]));
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(s.cache_dir, PathBuf::from("/h/.cache/huggingface/hub"));
        assert!(!s.offline);
        let s = Settings::from_vars(vars(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]));
        assert_eq!(s.cache_dir, PathBuf::from("/x/huggingface/hub"));
        let s = Settings::from_vars(vars(&[
            ("HF_HOME", "/hf"),
            ("HF_ENDPOINT", "http://m/"),
            ("HF_HUB_OFFLINE", "yes"),
        ]));
        assert_eq!(s.cache_dir, PathBuf::from("/hf/hub"));
        assert_eq!(s.endpoint, "http://m");
        assert!(s.offline);
        let s =
            Settings::from_vars(vars(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c"), ("HF_HUB_OFFLINE", "0")]));
        assert_eq!(s.cache_dir, PathBuf::from("/c"));
        assert!(!s.offline);
    }

    #[test]
    fn token_from_env_then_file() {
        let dir = std::env::temp_dir().join(format!("afinar-hub-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "hf_file\n").unwrap();
        let home = dir.to_str().unwrap();
        let s = Settings::from_vars(vars(&[("HF_HOME", home)]));
        assert_eq!(s.token.as_deref(), Some("hf_file"));
        assert_eq!(s.token_source, Some(dir.join("token").display().to_string()));
        let s = Settings::from_vars(vars(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")]));
        assert_eq!(s.token.as_deref(), Some("hf_env"));
        std::fs::remove_dir_all(&dir).unwrap();
        let s = Settings::from_vars(vars(&[("HF_HOME", home)]));
        assert_eq!(s.token, None);
    }
}
