//! Repository references (`hf://org/name[@revision][/file]`, bare `org/name`) and the choice of
//! the files a model needs.

use crate::error::{Error, Result};

/// The revision used when none is given.
pub const DEFAULT_REVISION: &str = "main";

/// A model repository on the Hub, a revision of it and optionally one file in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoRef {
    /// `org/name` (or a bare `name` for the few un-namespaced repositories).
    pub repo: String,
    /// Branch, tag or commit hash (default `main`).
    pub revision: String,
    /// A file in the repository (e.g. one `.gguf` of several).
    pub file: Option<String>,
}

impl RepoRef {
    /// Parses `hf://org/name[@revision][/path/in/repo]`, or a bare `org/name[@revision]` when
    /// `bare_ok`. A revision containing `/` (such as `refs/pr/1`) is written with `%2F`.
    pub fn parse(spec: &str, bare_ok: bool) -> Result<Self> {
        let bad = |why: &str| Error::BadRepoId { spec: spec.to_string(), why: why.to_string() };
        let rest = match spec.strip_prefix("hf://") {
            Some(r) => r,
            None if bare_ok => spec,
            None => return Err(bad("it does not start with hf://")),
        };
        let mut parts = rest.splitn(3, '/');
        let org = parts.next().unwrap_or_default();
        let name_rev = parts.next().ok_or_else(|| bad("no repository name after the organisation"))?;
        let file = parts.next().filter(|f| !f.is_empty()).map(str::to_string);
        let (name, revision) = match name_rev.split_once('@') {
            Some((n, r)) if !r.is_empty() => (n, r.replace("%2F", "/").replace("%2f", "/")),
            Some(_) => return Err(bad("empty revision after @")),
            None => (name_rev, DEFAULT_REVISION.to_string()),
        };
        for (what, part) in [("organisation", org), ("repository name", name)] {
            if !valid_name(part) {
                return Err(bad(&format!(
                    "the {what} `{part}` must be letters, digits, `-`, `_` or `.`, not starting or ending with `-` or `.`"
                )));
            }
        }
        if let Some(f) = &file {
            if f.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                return Err(bad(&format!("the file path `{f}` has an empty, `.` or `..` component")));
            }
        }
        Ok(Self { repo: format!("{org}/{name}"), revision, file })
    }

    /// Whether `text` has the shape of a bare repository id `org/name[@revision]` (no file part,
    /// and not a file name such as `models/model.gguf`, which is taken as a missing local path).
    pub fn looks_like_repo_id(text: &str) -> bool {
        const FILE_EXTENSIONS: &[&str] =
            &[".gguf", ".safetensors", ".json", ".bin", ".model", ".pt", ".pth", ".yaml"];
        let text = text.split_once('@').map_or(text, |(r, rev)| if rev.is_empty() { "" } else { r });
        let lower = text.to_ascii_lowercase();
        matches!(text.split_once('/'), Some((o, n)) if valid_name(o) && valid_name(n))
            && !FILE_EXTENSIONS.iter().any(|e| lower.ends_with(e))
    }
}

/// The Hub's rule for organisation and repository names.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("--")
        && !s.contains("..")
}

/// Files a Hugging Face checkpoint folder needs besides its weights.
const CHECKPOINT_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
];

/// Which of a repository's files (`all`) make up the model: a named file alone (a `.gguf`), else
/// the top-level `*.safetensors` with the config and tokenizer files, else the repository's only
/// `.gguf`. `Err` holds the reason when there is no single answer.
pub fn model_files(all: &[String], named: Option<&str>) -> std::result::Result<Vec<String>, String> {
    if let Some(f) = named {
        return if all.iter().any(|a| a == f) {
            Ok(vec![f.to_string()])
        } else {
            Err(format!("there is no file `{f}` (files: {})", list(all)))
        };
    }
    let top = |a: &&String| !a.contains('/');
    if all.iter().filter(top).any(|a| a.ends_with(".safetensors")) {
        return Ok(all
            .iter()
            .filter(top)
            .filter(|a| a.ends_with(".safetensors") || CHECKPOINT_FILES.contains(&a.as_str()))
            .cloned()
            .collect());
    }
    let ggufs: Vec<&String> = all.iter().filter(|a| a.ends_with(".gguf")).collect();
    match ggufs.as_slice() {
        [one] => Ok(vec![(*one).clone()]),
        [] => Err(format!("no model weights: neither *.safetensors nor a .gguf file (files: {})", list(all))),
        many => Err(format!(
            "{} GGUF files; name one as hf://ORG/NAME[@REV]/FILE.gguf: {}",
            many.len(),
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn list(all: &[String]) -> String {
    if all.is_empty() {
        return "none".into();
    }
    let mut s = all.iter().take(12).map(String::as_str).collect::<Vec<_>>().join(", ");
    if all.len() > 12 {
        s.push_str(&format!(", … ({} in all)", all.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = RepoRef::parse("hf://HuggingFaceTB/SmolLM2-135M-Instruct", false).unwrap();
        assert_eq!(
            (r.repo.as_str(), r.revision.as_str(), r.file),
            ("HuggingFaceTB/SmolLM2-135M-Instruct", "main", None)
        );
        let r = RepoRef::parse("hf://o/n@v1.0/sub/m.Q4_0.gguf", false).unwrap();
        assert_eq!(
            (r.repo.as_str(), r.revision.as_str(), r.file.as_deref()),
            ("o/n", "v1.0", Some("sub/m.Q4_0.gguf"))
        );
        let r = RepoRef::parse("o/n@refs%2Fpr%2F1", true).unwrap();
        assert_eq!(r.revision, "refs/pr/1");
        for bad in ["hf://o", "hf://o/", "hf:///n", "hf://o/n@", "hf://-o/n", "hf://o/n/../x", "o/n"] {
            assert!(RepoRef::parse(bad, false).is_err(), "{bad}");
        }
        assert!(RepoRef::parse("o/n", true).is_ok());
        assert!(RepoRef::looks_like_repo_id("meta-llama/Llama-3.2-1B"));
        assert!(RepoRef::looks_like_repo_id("o/n@main"));
        for not in [
            "model.gguf",
            "./o/n",
            "/o/n",
            "o/n/x",
            "o/",
            "o/n@",
            "~/x",
            "models/model.gguf",
            "m/tokenizer.json",
        ] {
            assert!(!RepoRef::looks_like_repo_id(not), "{not}");
        }
    }

    #[test]
    fn picks_model_files() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let repo = s(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "original/consolidated.00.pth",
            "onnx/model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ]);
        assert_eq!(
            model_files(&repo, None).unwrap(),
            s(&[
                "config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
                "tokenizer.json",
                "tokenizer_config.json"
            ])
        );
        let gg = s(&["README.md", "a.Q4_0.gguf", "a.Q8_0.gguf"]);
        assert!(model_files(&gg, None).unwrap_err().contains("a.Q4_0.gguf, a.Q8_0.gguf"));
        assert_eq!(model_files(&gg, Some("a.Q8_0.gguf")).unwrap(), s(&["a.Q8_0.gguf"]));
        assert!(model_files(&gg, Some("b.gguf")).unwrap_err().contains("no file `b.gguf`"));
        assert_eq!(model_files(&s(&["x.gguf", "README.md"]), None).unwrap(), s(&["x.gguf"]));
        assert!(model_files(&s(&["README.md"]), None).unwrap_err().contains("no model weights"));
    }
}
