//! Generation tasks scored by exact match.
//!
//! Each JSONL row has a `prompt` and a `target` (optional `chat`: wrap the prompt as a user turn
//! in the model's chat template; the task's default otherwise). Generation is greedy and stops at
//! the tokenizer's stop tokens, at `max_new_tokens`, or at the first stop string (the text is cut
//! there). The answer and the target are then normalised by [`normalize_answer`] and compared.

use std::path::Path;

use afinar_engine::Backend;
use afinar_tokenizer::{render_chat, Message, Tokenizer};
use serde::Serialize;

use super::choice::mean_stderr;
use super::jsonl::read_rows;
use crate::generate::{generate, GenerateOptions, SamplingParams};
use crate::models::Llama;
use crate::{Error, Result};

/// One prompt and its expected answer.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationDoc {
    /// Its id (`id` field, else the line).
    pub id: String,
    /// The prompt.
    pub prompt: String,
    /// The expected answer.
    pub target: String,
    /// Use the chat template (`None`: the task's default).
    pub chat: Option<bool>,
}

/// Reads a JSONL file of `{"prompt", "target", "chat"?}` rows.
pub fn load_generation_docs(path: &Path) -> Result<Vec<GenerationDoc>> {
    read_rows(path)?
        .iter()
        .map(|row| {
            let prompt = row.str("prompt")?.to_string();
            if prompt.is_empty() {
                return Err(row.err("prompt", "empty: expected the text to complete"));
            }
            Ok(GenerationDoc {
                id: row.id(),
                prompt,
                target: row.str("target")?.to_string(),
                chat: row.opt_bool("chat")?,
            })
        })
        .collect()
}

/// Settings of an exact-match run, with its normalisation.
#[derive(Debug, Clone, Serialize)]
pub struct ExactMatchOptions {
    /// Most new tokens per answer.
    pub max_new_tokens: usize,
    /// Generation stops at the first of these strings (which is not part of the answer).
    pub stop: Vec<String>,
    /// Default of rows without `chat`.
    pub chat: bool,
    /// Compare case-insensitively (Unicode lower case).
    pub ignore_case: bool,
    /// Drop punctuation before comparing (ASCII punctuation and `¿¡«»“”‘’…–—·`).
    pub ignore_punctuation: bool,
    /// Score only the first items.
    pub limit: Option<usize>,
}

impl Default for ExactMatchOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            stop: vec!["\n".into()],
            chat: false,
            ignore_case: false,
            ignore_punctuation: false,
            limit: None,
        }
    }
}

/// The normalisation applied to both answer and target: trim, collapse runs of whitespace to one
/// space, then optionally drop punctuation (and trim again) and lower-case.
pub fn normalize_answer(s: &str, ignore_case: bool, ignore_punctuation: bool) -> String {
    let mut t: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if ignore_punctuation {
        t = t.chars().filter(|c| !(c.is_ascii_punctuation() || "¿¡«»“”‘’…–—·".contains(*c))).collect();
        t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    if ignore_case {
        t = t.to_lowercase();
    }
    t
}

/// The outcome of one prompt.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationItem {
    /// The item's id.
    pub id: String,
    /// The generated answer (cut at the stop string).
    pub answer: String,
    /// The expected answer.
    pub target: String,
    /// Whether they match after normalisation.
    pub exact_match: bool,
}

/// Exact-match accuracy of a generation task.
#[derive(Debug, Clone, Serialize)]
pub struct ExactMatchResult {
    /// Items scored.
    pub items_scored: usize,
    /// Fraction of exact matches.
    pub exact_match: f64,
    /// Its standard error (`None` with fewer than 2 items).
    pub exact_match_stderr: Option<f64>,
    /// Per item.
    pub items: Vec<GenerationItem>,
}

/// Generates an answer to every doc and scores it.
pub fn exact_match_task<B: Backend>(
    be: &B,
    model: &Llama<B>,
    tok: &Tokenizer,
    docs: &[GenerationDoc],
    opts: &ExactMatchOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<ExactMatchResult> {
    if opts.max_new_tokens == 0 {
        return Err(Error::Input("max_new_tokens must be at least 1".into()));
    }
    let docs = &docs[..opts.limit.unwrap_or(docs.len()).min(docs.len())];
    if docs.is_empty() {
        return Err(Error::Input("no items to score".into()));
    }
    let gen_opts = GenerateOptions {
        max_new_tokens: opts.max_new_tokens,
        sampling: SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 },
        stop_ids: tok.stop_ids(),
    };
    let ctx = model.config.max_seq_len;
    let mut items = Vec::with_capacity(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        let ids = if doc.chat.unwrap_or(opts.chat) {
            let text = render_chat(tok, &[Message::new("user", doc.prompt.clone())], true)?;
            tok.encode(&text, false)?
        } else {
            tok.encode(&doc.prompt, tok.add_bos_default())?
        };
        if ids.len() >= ctx {
            return Err(Error::Input(format!(
                "item {}: the prompt is {} tokens long but the model's context is {ctx} tokens",
                doc.id,
                ids.len()
            )));
        }
        let mut cache = model.new_cache(be, 1, (ids.len() + opts.max_new_tokens).min(ctx))?;
        let mut text = String::new();
        let mut stream = tok.decode_stream(true);
        generate(be, model, &mut cache, &ids, &gen_opts, |id| {
            if let Some(piece) = stream.step(id)? {
                text.push_str(&piece);
            }
            Ok(!opts.stop.iter().any(|s| !s.is_empty() && text.contains(s.as_str())))
        })?;
        if let Some(rest) = stream.flush() {
            text.push_str(&rest);
        }
        let cut = opts.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min();
        if let Some(cut) = cut {
            text.truncate(cut);
        }
        let exact_match = normalize_answer(&text, opts.ignore_case, opts.ignore_punctuation)
            == normalize_answer(&doc.target, opts.ignore_case, opts.ignore_punctuation);
        items.push(GenerationItem {
            id: doc.id.clone(),
            answer: text,
            target: doc.target.clone(),
            exact_match,
        });
        progress(i + 1, docs.len());
    }
    let (exact_match, exact_match_stderr) =
        mean_stderr(&items.iter().map(|x| x.exact_match).collect::<Vec<_>>());
    Ok(ExactMatchResult { items_scored: items.len(), exact_match, exact_match_stderr, items })
}

#[cfg(test)]
mod tests {
    use super::normalize_answer;

    #[test]
    fn normalisation() {
        assert_eq!(normalize_answer("  Paris \n", false, false), "Paris");
        assert_eq!(normalize_answer("New   York", false, false), "New York");
        assert_ne!(normalize_answer("Paris.", false, false), normalize_answer("Paris", false, false));
        assert_eq!(normalize_answer("¡París!", true, true), "parís");
        assert_eq!(normalize_answer("Tokio .", false, true), "Tokio");
    }
}
