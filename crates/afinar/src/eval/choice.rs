//! Multiple-choice tasks scored by log-likelihood, as lm-evaluation-harness 0.4 does.
//!
//! For each item the context is the task's prompt (after an optional description and few-shot
//! examples) and each choice is a continuation `" " + choice`. A choice's score is the sum of the
//! log-probabilities of its continuation tokens given the context. Tokenization follows the
//! harness (`_encode_pair`): trailing whitespace of the context moves to the continuation, then
//! context + continuation are encoded together and split after as many tokens as the context
//! alone encodes to (both with the tokenizer's default special tokens, none when the text
//! already starts with the BOS text). The item's prediction is the argmax of the sums (`acc`);
//! `acc_norm` divides each sum by the length of the choice text in characters (Unicode code
//! points, Python's `len`; the target delimiter is not counted). Standard errors are the sample
//! standard deviation (n − 1) over √n, as the harness' `mean_stderr`.
//!
//! Prompts are those of the harness' default task configs:
//! - ARC (`question`, `choices{text,label}`, `answerKey`): `"Question: {question}\nAnswer:"`;
//! - PIQA (`goal`, `sol1`, `sol2`, `label`): `"Question: {goal}\nAnswer:"`;
//! - HellaSwag (`activity_label`, `ctx_a`, `ctx_b`, `endings`, `label`): the query
//!   `activity_label + ": " + ctx_a + " " + ctx_b.capitalize()` and the endings, both through the
//!   harness' `preprocess` (strip, `" [title]"` → `". "`, drop `[...]`, `"  "` → `" "`); rows with
//!   only `ctx` use it in place of `ctx_a + " " + ctx_b.capitalize()`;
//! - MMLU (`question`, `choices`, `answer`, optional `subject`): `question.strip()`, the lettered
//!   choices and `"Answer:"`, scored on the letters, after the description "The following are
//!   multiple choice questions (with answers) about {subject}.\n\n".
//!
//! Few-shot examples (from a separate file) are each `prompt + " " + answer`, joined and
//! followed by `"\n\n"`, as the harness' target and few-shot delimiters. The `first_n` sampler
//! takes the first examples of the file (the harness' `first_n`, which MMLU uses); `random`
//! draws examples without replacement with a seeded generator: reproducible, but not the same
//! draws as the harness' Python `random.Random(1234)`.

use std::path::Path;

use afinar_engine::Backend;
use afinar_tokenizer::Tokenizer;
use serde::Serialize;
use serde_json::Value;

use super::jsonl::{kind, read_rows, str_list, Row};
use super::perplexity::log_prob;
use crate::models::{Llama, Logits};
use crate::{Error, Result};

/// The JSONL layout of a multiple-choice file (and its prompt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChoiceFormat {
    /// AI2 ARC: `question`, `choices{text,label}`, `answerKey`.
    Arc,
    /// HellaSwag: `activity_label`, `ctx_a`, `ctx_b` (or `ctx`), `endings`, `label`.
    Hellaswag,
    /// PIQA: `goal`, `sol1`, `sol2`, `label`.
    Piqa,
    /// MMLU: `question`, `choices`, `answer`, `subject`.
    Mmlu,
}

impl ChoiceFormat {
    /// Every format, for messages.
    pub const ALL: [ChoiceFormat; 4] =
        [ChoiceFormat::Arc, ChoiceFormat::Hellaswag, ChoiceFormat::Piqa, ChoiceFormat::Mmlu];

    /// The format's name in configs and flags.
    pub fn name(self) -> &'static str {
        match self {
            ChoiceFormat::Arc => "arc",
            ChoiceFormat::Hellaswag => "hellaswag",
            ChoiceFormat::Piqa => "piqa",
            ChoiceFormat::Mmlu => "mmlu",
        }
    }

    /// Parses a name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// How few-shot examples are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FewshotSampler {
    /// The first examples of the few-shot file, for every item.
    FirstN,
    /// A seeded random draw per item, without replacement.
    #[default]
    Random,
}

impl FewshotSampler {
    /// Parses `first_n` or `random`.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "first_n" => Some(Self::FirstN),
            "random" => Some(Self::Random),
            _ => None,
        }
    }
}

/// One multiple-choice item, already in prompt form.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceDoc {
    /// Its id (`id` field, else the line).
    pub id: String,
    /// Text before the few-shot examples (MMLU's subject line), possibly empty.
    pub description: String,
    /// The prompt (`doc_to_text`).
    pub query: String,
    /// The choices as scored (`doc_to_choice`), without the leading space.
    pub choices: Vec<String>,
    /// Index of the right choice.
    pub gold: usize,
}

/// Reads a JSONL file of `format`.
pub fn load_choice_docs(path: &Path, format: ChoiceFormat) -> Result<Vec<ChoiceDoc>> {
    read_rows(path)?.iter().map(|row| parse_doc(row, format)).collect()
}

fn parse_doc(row: &Row<'_>, format: ChoiceFormat) -> Result<ChoiceDoc> {
    let (description, query, choices, gold, gold_key) = match format {
        ChoiceFormat::Arc => {
            let v = row.get("choices")?;
            let Value::Object(c) = v else {
                return Err(row.err(
                    "choices",
                    format!("expected an object {{\"text\": [...], \"label\": [...]}}, got {}", kind(v)),
                ));
            };
            let field = |k: &str| {
                c.get(k)
                    .ok_or_else(|| row.err(&format!("choices.{k}"), "missing (expected a list of strings)"))
            };
            let text = str_list(row, "choices.text", field("text")?)?;
            let labels = str_list(row, "choices.label", field("label")?)?;
            if labels.len() != text.len() {
                return Err(row.err(
                    "choices.label",
                    format!(
                        "{} labels for {} choices: expected one label per choice",
                        labels.len(),
                        text.len()
                    ),
                ));
            }
            let key = row.str("answerKey")?;
            let gold = labels.iter().position(|l| l == key).ok_or_else(|| {
                row.err("answerKey", format!("{key:?} is not one of the labels {}", labels.join(", ")))
            })?;
            (String::new(), format!("Question: {}\nAnswer:", row.str("question")?), text, gold, "answerKey")
        }
        ChoiceFormat::Piqa => {
            let choices = vec![row.str("sol1")?.to_string(), row.str("sol2")?.to_string()];
            (
                String::new(),
                format!("Question: {}\nAnswer:", row.str("goal")?),
                choices,
                row.index("label")?,
                "label",
            )
        }
        ChoiceFormat::Hellaswag => {
            let ctx = match (row.opt_str("ctx_a")?, row.opt_str("ctx_b")?) {
                (Some(a), Some(b)) => format!("{a} {}", py_capitalize(b)),
                _ => row.str("ctx")?.to_string(),
            };
            let query = match row.opt_str("activity_label")? {
                Some(label) => format!("{label}: {ctx}"),
                None => ctx,
            };
            let endings = row.str_list("endings")?;
            (
                String::new(),
                hellaswag_preprocess(&query),
                endings.iter().map(|e| hellaswag_preprocess(e)).collect(),
                row.index("label")?,
                "label",
            )
        }
        ChoiceFormat::Mmlu => {
            let options = row.str_list("choices")?;
            if options.len() > 26 {
                return Err(
                    row.err("choices", format!("{} choices: at most 26 can be lettered", options.len()))
                );
            }
            let letters: Vec<String> =
                (0..options.len()).map(|i| char::from(b'A' + i as u8).to_string()).collect();
            let mut query = row.str("question")?.trim().to_string();
            for (l, o) in letters.iter().zip(&options) {
                query.push_str(&format!("\n{l}. {o}"));
            }
            query.push_str("\nAnswer:");
            let description = match row.opt_str("subject")? {
                Some(s) if !s.is_empty() => format!(
                    "The following are multiple choice questions (with answers) about {}.\n\n",
                    s.replace('_', " ")
                ),
                _ => String::new(),
            };
            (description, query, letters, row.index("answer")?, "answer")
        }
    };
    if choices.len() < 2 {
        return Err(row.err(
            if format == ChoiceFormat::Hellaswag { "endings" } else { "choices" },
            format!(
                "{} choice{}: expected at least 2",
                choices.len(),
                if choices.len() == 1 { "" } else { "s" }
            ),
        ));
    }
    if gold >= choices.len() {
        return Err(row.err(
            gold_key,
            format!(
                "answer index {gold} is out of range for {} choices (expected 0 to {})",
                choices.len(),
                choices.len() - 1
            ),
        ));
    }
    Ok(ChoiceDoc { id: row.id(), description, query, choices, gold })
}

/// Python's `str.capitalize`: the first character upper-cased, the rest lower-cased.
fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}

/// The harness' HellaSwag `preprocess`.
fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    // re.sub("\\[.*?\\]", "", text): drop each `[` with the nearest `]` after it on its line.
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find(['\n', ']']) {
            Some(close) if after.as_bytes()[close] == b']' => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..open + 1]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Settings of a multiple-choice run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChoiceOptions {
    /// Few-shot examples per item (0: zero-shot).
    pub num_fewshot: usize,
    /// How they are picked.
    pub sampler: FewshotSampler,
    /// Seed of the random sampler.
    pub seed: u64,
    /// Score only the first items.
    pub limit: Option<usize>,
}

/// The outcome of one item.
#[derive(Debug, Clone, Serialize)]
pub struct ChoiceItem {
    /// The item's id.
    pub id: String,
    /// The right choice.
    pub gold: usize,
    /// Sum of log-probabilities of each choice's continuation tokens.
    pub loglikelihoods: Vec<f64>,
    /// Argmax of `loglikelihoods`.
    pub pred: usize,
    /// Argmax of `loglikelihoods` divided by the choices' lengths in characters.
    pub pred_norm: usize,
    /// The full context given to the model.
    pub context: String,
}

/// Accuracy of a multiple-choice task.
#[derive(Debug, Clone, Serialize)]
pub struct ChoiceResult {
    /// Items scored.
    pub items_scored: usize,
    /// Few-shot examples per item.
    pub num_fewshot: usize,
    /// Fraction of items whose highest-scoring choice is right.
    pub acc: f64,
    /// Standard error of `acc` (`None` with fewer than 2 items).
    pub acc_stderr: Option<f64>,
    /// Same with length-normalised scores.
    pub acc_norm: f64,
    /// Standard error of `acc_norm`.
    pub acc_norm_stderr: Option<f64>,
    /// Per item.
    pub items: Vec<ChoiceItem>,
}

/// The context of `doc` after its description and the few-shot examples `shots`.
pub fn context_for(doc: &ChoiceDoc, shots: &[&ChoiceDoc]) -> String {
    let mut s = doc.description.clone();
    for shot in shots {
        s.push_str(&shot.query);
        s.push(' ');
        s.push_str(&shot.choices[shot.gold]);
        s.push_str("\n\n");
    }
    s.push_str(&doc.query);
    s
}

/// Encodes text the way the harness' `tok_encode` does: with the tokenizer's default special
/// tokens unless the text already starts with the BOS text.
fn harness_encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let starts_with_prefix = prefix_token(tok)
        .and_then(|id| tok.decode(&[id], false).ok())
        .is_some_and(|p| !p.is_empty() && text.starts_with(&p));
    Ok(tok.encode(text, tok.add_bos_default() && !starts_with_prefix)?)
}

/// The token that conditions an empty context: BOS, else EOS (the harness' `prefix_token_id`).
fn prefix_token(tok: &Tokenizer) -> Option<u32> {
    tok.bos_id().or_else(|| tok.eos_id())
}

/// Context and continuation token ids, split as the harness' `_encode_pair` does (and, for an
/// empty context, the BOS/EOS prefix token as context).
pub fn encode_pair(tok: &Tokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    if context.is_empty() {
        let cont = tok.encode(continuation, false)?;
        let prefix = prefix_token(tok).ok_or_else(|| {
            Error::Input("an empty context needs a BOS or EOS token in the tokenizer".into())
        })?;
        return Ok(if cont.first() == Some(&prefix) {
            (cont[..1].to_vec(), cont[1..].to_vec())
        } else {
            (vec![prefix], cont)
        });
    }
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (trimmed.to_string(), format!("{}{continuation}", &context[trimmed.len()..]))
    } else {
        (context.to_string(), continuation.to_string())
    };
    let whole = harness_encode(tok, &format!("{context}{continuation}"))?;
    let ctx = harness_encode(tok, &context)?;
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Ok((ctx, cont))
}

/// Context tokens per forward pass. Contexts here are short (tens of tokens), where the CPU
/// backend's few-row path, which streams each weight once, beats one larger matrix product that
/// repacks every weight per call.
const PREFILL_CHUNK: usize = 8;

/// The log-likelihood of each continuation after the shared context `ctx`: the sum of the
/// log-probabilities of its tokens given the context and the tokens before it. The context is
/// run once into a KV cache, which is then copied to one cache row per continuation, and all
/// continuations (but their last tokens) go through one batched pass, right-padded to the
/// longest: attention is causal, so padding after a sequence's end changes none of its logits.
pub fn continuation_loglikelihoods<B: Backend>(
    be: &B,
    model: &Llama<B>,
    ctx: &[u32],
    conts: &[Vec<u32>],
) -> Result<Vec<f64>> {
    let vocab = model.config.vocab_size;
    if ctx.is_empty() || conts.is_empty() || conts.iter().any(Vec::is_empty) {
        return Err(Error::Input("log-likelihoods need a context and non-empty continuations".into()));
    }
    let longest = conts.iter().map(Vec::len).max().unwrap_or(1);
    if ctx.len() + longest - 1 > model.config.max_seq_len {
        return Err(Error::Input(format!(
            "context and choice need {} tokens but the model's context is {} tokens",
            ctx.len() + longest,
            model.config.max_seq_len
        )));
    }
    let mut prefix = model.new_cache(be, 1, ctx.len())?;
    let mut first = Vec::new();
    for chunk in ctx.chunks(PREFILL_CHUNK) {
        first = model.forward(be, chunk, 1, chunk.len(), Some(&mut prefix), Logits::Last)?;
    }
    let mut out: Vec<f64> = conts.iter().map(|c| log_prob(&first, c[0])).collect();
    if longest == 1 {
        return Ok(out);
    }
    let (batch, seq) = (conts.len(), longest - 1);
    let mut cache = model.new_cache(be, batch, ctx.len() + seq)?;
    prefix.broadcast_prefix(be, &mut cache)?;
    let mut ids = vec![0u32; batch * seq];
    for (b, c) in conts.iter().enumerate() {
        ids[b * seq..b * seq + c.len() - 1].copy_from_slice(&c[..c.len() - 1]);
    }
    let logits = model.forward(be, &ids, batch, seq, Some(&mut cache), Logits::All)?;
    for (b, c) in conts.iter().enumerate() {
        for (t, &target) in c[1..].iter().enumerate() {
            let r = b * seq + t;
            out[b] += log_prob(&logits[r * vocab..(r + 1) * vocab], target);
        }
    }
    Ok(out)
}

/// First index of the largest value (numpy's `argmax`).
fn argmax(xs: impl IntoIterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in xs.into_iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// Mean and standard error (sample standard deviation over √n) of 0/1 outcomes.
pub fn mean_stderr(xs: &[bool]) -> (f64, Option<f64>) {
    let n = xs.len() as f64;
    let mean = xs.iter().filter(|&&x| x).count() as f64 / n;
    if xs.len() < 2 {
        return (mean, None);
    }
    let var = xs.iter().map(|&x| (f64::from(u8::from(x)) - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some((var / n).sqrt()))
}

/// Scores `docs` (few-shot examples drawn from `fewshot`).
pub fn score_choice_task<B: Backend>(
    be: &B,
    model: &Llama<B>,
    tok: &Tokenizer,
    docs: &[ChoiceDoc],
    fewshot: &[ChoiceDoc],
    opts: &ChoiceOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<ChoiceResult> {
    if opts.num_fewshot > fewshot.len() {
        return Err(Error::Input(format!(
            "{} few-shot examples asked for but the few-shot file has {}",
            opts.num_fewshot,
            fewshot.len()
        )));
    }
    let docs = &docs[..opts.limit.unwrap_or(docs.len()).min(docs.len())];
    if docs.is_empty() {
        return Err(Error::Input("no items to score".into()));
    }
    let mut rng = afinar_data::rng::Rng::new(opts.seed);
    // Every item's context and its choices' continuations, encoded as the harness does.
    let mut prepared = Vec::with_capacity(docs.len());
    for doc in docs {
        let shots: Vec<&ChoiceDoc> = match opts.sampler {
            FewshotSampler::FirstN => fewshot.iter().take(opts.num_fewshot).collect(),
            FewshotSampler::Random => {
                let mut idx: Vec<usize> = (0..fewshot.len()).collect();
                for k in 0..opts.num_fewshot {
                    let j = k + rng.below((idx.len() - k) as u64) as usize;
                    idx.swap(k, j);
                }
                idx[..opts.num_fewshot].iter().map(|&j| &fewshot[j]).collect()
            }
        };
        let context = context_for(doc, &shots);
        let mut pairs = Vec::with_capacity(doc.choices.len());
        for (c, choice) in doc.choices.iter().enumerate() {
            let (ctx, cont) = encode_pair(tok, &context, &format!(" {choice}"))?;
            if cont.is_empty() {
                return Err(Error::Input(format!(
                    "item {}: choice {c} ({choice:?}) encodes to no tokens",
                    doc.id
                )));
            }
            if ctx.len() + cont.len() > model.config.max_seq_len + 1 {
                return Err(Error::Input(format!(
                    "item {}: context and choice {c} are {} tokens long but the model's context is {} tokens",
                    doc.id,
                    ctx.len() + cont.len(),
                    model.config.max_seq_len
                )));
            }
            pairs.push((ctx, cont));
        }
        prepared.push((context, pairs));
    }
    let mut items = Vec::with_capacity(docs.len());
    for (doc, (context, pairs)) in docs.iter().zip(prepared) {
        // Every choice shares the context's encoding (the same text is encoded each time).
        let conts: Vec<Vec<u32>> = pairs.iter().map(|(_, c)| c.clone()).collect();
        let lls = continuation_loglikelihoods(be, model, &pairs[0].0, &conts)
            .map_err(|e| Error::Input(format!("item {}: {e}", doc.id)))?;
        let pred = argmax(lls.iter().copied());
        let pred_norm =
            argmax(lls.iter().zip(&doc.choices).map(|(ll, c)| ll / c.chars().count().max(1) as f64));
        items.push(ChoiceItem {
            id: doc.id.clone(),
            gold: doc.gold,
            loglikelihoods: lls,
            pred,
            pred_norm,
            context,
        });
        progress(items.len(), docs.len());
    }
    let (acc, acc_stderr) = mean_stderr(&items.iter().map(|x| x.pred == x.gold).collect::<Vec<_>>());
    let (acc_norm, acc_norm_stderr) =
        mean_stderr(&items.iter().map(|x| x.pred_norm == x.gold).collect::<Vec<_>>());
    Ok(ChoiceResult {
        items_scored: items.len(),
        num_fewshot: opts.num_fewshot,
        acc,
        acc_stderr,
        acc_norm,
        acc_norm_stderr,
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellaswag_preprocessing_follows_the_harness() {
        assert_eq!(hellaswag_preprocess("  A man [title] is here [step] now  "), "A man. is here now");
        assert_eq!(hellaswag_preprocess("keep [this\nopen]"), "keep [this\nopen]");
        assert_eq!(py_capitalize("tHE dog"), "The dog");
        assert_eq!(py_capitalize("él CORRE"), "Él corre");
    }

    #[test]
    fn stderr_is_sample_std_over_sqrt_n() {
        let (m, s) = mean_stderr(&[true, false, true, true]);
        assert_eq!(m, 0.75);
        // sample variance = (3·0.0625 + 0.5625) / 3 = 0.25
        assert!((s.unwrap() - (0.25f64 / 4.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_stderr(&[true]).1, None);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax([1.0, 3.0, 3.0, 2.0]), 1);
    }
}
