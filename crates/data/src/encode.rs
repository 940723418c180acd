//! Records to tokens with a loss mask: the Alpaca prompt, chats (template or native format) and
//! plain text.
//!
//! Chats are tokenized message by message so that every token is known to belong to one message:
//! message `k`'s text is what rendering `messages[..=k]` adds to the rendering of `messages[..k]`.
//! An assistant message is further split at the generation prompt (what rendering `messages[..k]`
//! with `add_generation_prompt` adds): the header before it is prompt, the rest is the response.
//! Within the response, tokens after the first stop token (ChatML's `\n` after `<|im_end|>`) are
//! markup the model never generates, so they carry no loss.
//!
//! Some templates render earlier turns differently once more messages follow (Qwen3 drops the
//! `<think>` block of every assistant turn before the last user message), so prefixes do not
//! grow message by message. For those the whole conversation is rendered once, as transformers
//! renders it for training, and each assistant response is found in it: it starts where the
//! rendering of the messages before it with the generation prompt ends (which must be a prefix of
//! the whole) and runs to its first stop token, included. The rest is prompt; a rendering that
//! goes on with special tokens after a final assistant reply (a template that always opens a new
//! turn) is not split this way.

use std::fmt::Write as _;

use afinar_tokenizer::{render_llama3, render_template, Message, Tokenizer, TokenizerError};

use crate::{PromptFormat, TrainOn};

/// The Alpaca prompt for a row with an input.
const ALPACA_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an \
    input that provides further context. Write a response that appropriately completes the \
    request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
/// The Alpaca prompt for a row without one.
const ALPACA_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response \
    that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

/// The Alpaca prompt text for an instruction and an (possibly empty) input.
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.is_empty() {
        ALPACA_NO_INPUT.replace("{instruction}", instruction)
    } else {
        ALPACA_WITH_INPUT.replace("{instruction}", instruction).replace("{input}", input)
    }
}

/// The native ChatML format: `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then (with
/// `add_generation_prompt`) `<|im_start|>assistant\n`.
pub fn render_chatml(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        let _ = write!(out, "<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content);
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

/// Token ids and whether each one carries loss (before shifting into labels).
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
}

impl Tokens {
    fn push(&mut self, ids: &[u32], trained: bool) {
        self.ids.extend_from_slice(ids);
        self.trained.extend(std::iter::repeat_n(trained, ids.len()));
    }
}

/// Why a chat could not be tokenized.
#[derive(Debug)]
pub(crate) enum ChatIssue {
    /// The template cannot be split message by message; a native format may do.
    NotIncremental(String),
    /// The row itself fails (the template raises on it, say).
    Failed(TokenizerError),
}

impl From<TokenizerError> for ChatIssue {
    fn from(e: TokenizerError) -> Self {
        ChatIssue::Failed(e)
    }
}

/// Turns records into [`Tokens`] for one tokenizer and masking rule.
pub(crate) struct Encoder<'t> {
    pub tok: &'t Tokenizer,
    pub train_on: TrainOn,
    /// BOS in front of Alpaca and text samples (chat templates write their own).
    pub add_bos: bool,
    pub stop_ids: Vec<u32>,
}

impl<'t> Encoder<'t> {
    pub fn new(tok: &'t Tokenizer, train_on: TrainOn) -> Self {
        Encoder {
            tok,
            train_on,
            add_bos: tok.add_bos_default() && tok.bos_id().is_some(),
            stop_ids: tok.stop_ids(),
        }
    }

    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.tok.encode(text, false)
    }

    fn bos(&self, out: &mut Tokens) {
        if self.add_bos {
            if let Some(bos) = self.tok.bos_id() {
                out.push(&[bos], self.train_on == TrainOn::All);
            }
        }
    }

    fn eos(&self, out: &mut Tokens, trained: bool) {
        if let Some(eos) = self.tok.eos_id() {
            out.push(&[eos], trained);
        }
    }

    /// BOS, text, EOS; every token trained.
    pub fn text(&self, text: &str) -> Result<Tokens, TokenizerError> {
        let mut out = Tokens::default();
        if self.add_bos {
            if let Some(bos) = self.tok.bos_id() {
                out.push(&[bos], true);
            }
        }
        out.push(&self.encode(text)?, true);
        self.eos(&mut out, true);
        Ok(out)
    }

    /// BOS, the Alpaca prompt (trained only with `TrainOn::All`), the output and EOS (trained).
    pub fn alpaca(&self, instruction: &str, input: &str, output: &str) -> Result<Tokens, TokenizerError> {
        let mut out = Tokens::default();
        self.bos(&mut out);
        let all = self.train_on == TrainOn::All;
        out.push(&self.encode(&alpaca_prompt(instruction, input))?, all);
        out.push(&self.encode(output)?, true);
        self.eos(&mut out, true);
        Ok(out)
    }

    pub(crate) fn render(
        &self,
        format: PromptFormat,
        messages: &[Message],
        generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        match format {
            PromptFormat::NativeLlama3 => Ok(render_llama3(messages, generation_prompt)),
            PromptFormat::NativeChatMl => Ok(render_chatml(messages, generation_prompt)),
            _ => render_template(
                self.tok.chat_template().unwrap_or_default(),
                messages,
                generation_prompt,
                self.tok.bos_token(),
                self.tok.eos_token(),
            ),
        }
    }

    /// A conversation in `format`, masked per `train_on`: message by message, or, when the
    /// template is not incremental, from the whole rendering (see the module documentation).
    pub fn chat(&self, format: PromptFormat, messages: &[Message]) -> Result<Tokens, ChatIssue> {
        match self.chat_incremental(format, messages) {
            Err(ChatIssue::NotIncremental(why)) => match self.chat_whole(format, messages) {
                Err(ChatIssue::NotIncremental(_)) => Err(ChatIssue::NotIncremental(why)),
                other => other,
            },
            other => other,
        }
    }

    /// A conversation rendered once; each assistant response runs from the end of the
    /// generation prompt that precedes it to its first stop token.
    fn chat_whole(&self, format: PromptFormat, messages: &[Message]) -> Result<Tokens, ChatIssue> {
        let n = messages.len();
        let last_assistant = messages.iter().rposition(|m| m.role == "assistant");
        let all = self.train_on == TrainOn::All;
        let not_split = |k: usize, what: &str| {
            ChatIssue::NotIncremental(format!(
                "the chat template's rendering cannot be split into prompt and responses: {what} (message {})",
                k + 1
            ))
        };
        let whole = self.render(format, messages, false)?;
        let stops: Vec<String> = self
            .stop_ids
            .iter()
            .filter_map(|&id| self.tok.decode(&[id], false).ok())
            .filter(|s| !s.is_empty())
            .collect();
        let mut out = Tokens::default();
        let mut pos = 0;
        for (k, msg) in messages.iter().enumerate() {
            if msg.role != "assistant" {
                continue;
            }
            let header = self
                .render(format, &messages[..k], true)
                .map_err(|e| not_split(k, &format!("rendering the generation prompt failed: {e}")))?;
            if header.len() < pos || !whole.starts_with(&header) {
                return Err(not_split(k, "the generation prompt is not a prefix of the whole conversation"));
            }
            out.push(&self.encode(&whole[pos..header.len()])?, all);
            let trained = match self.train_on {
                TrainOn::All | TrainOn::Assistant => true,
                TrainOn::Last => last_assistant == Some(k),
            };
            let rest = &whole[header.len()..];
            match stops.iter().filter_map(|s| rest.find(s.as_str()).map(|i| i + s.len())).min() {
                Some(end) => {
                    out.push(&self.encode(&rest[..end])?, trained);
                    pos = header.len() + end;
                }
                None if k + 1 == n => {
                    // As in the incremental split: a reply with no stop token gets EOS.
                    out.push(&self.encode(rest)?, trained);
                    self.eos(&mut out, trained);
                    return Ok(out);
                }
                None => return Err(not_split(k, "no stop token ends the assistant message")),
            }
        }
        let tail = self.encode(&whole[pos..])?;
        if messages.last().is_some_and(|m| m.role == "assistant")
            && tail.iter().any(|&id| self.tok.is_special(id))
        {
            // Markup after the last reply (a new turn the template always opens, say) means the
            // rendering is not a finished conversation.
            return Err(not_split(n - 1, "the rendering goes on after the last assistant message"));
        }
        out.push(&tail, all);
        Ok(out)
    }

    /// A conversation in `format` rendered message by message, masked per `train_on`.
    fn chat_incremental(&self, format: PromptFormat, messages: &[Message]) -> Result<Tokens, ChatIssue> {
        let n = messages.len();
        let last_assistant = messages.iter().rposition(|m| m.role == "assistant");
        let all = self.train_on == TrainOn::All;
        let not_incremental = |k: usize, what: &str| {
            ChatIssue::NotIncremental(format!(
                "the chat template cannot be rendered message by message: {what} (message {})",
                k + 1
            ))
        };
        let mut out = Tokens::default();
        let mut prev = String::new();
        for (k, msg) in messages.iter().enumerate() {
            let rendered = self.render(format, &messages[..=k], false).map_err(|e| {
                if k + 1 == n {
                    ChatIssue::Failed(e)
                } else {
                    not_incremental(k, &format!("rendering a prefix failed: {e}"))
                }
            })?;
            if !rendered.starts_with(&prev) {
                return Err(not_incremental(k, "adding a message changes the text of the earlier ones"));
            }
            if msg.role != "assistant" {
                out.push(&self.encode(&rendered[prev.len()..])?, all);
                prev = rendered;
                continue;
            }
            let with_header = self
                .render(format, &messages[..k], true)
                .map_err(|e| not_incremental(k, &format!("rendering the generation prompt failed: {e}")))?;
            if !with_header.starts_with(&prev) || !rendered.starts_with(&with_header) {
                return Err(not_incremental(
                    k,
                    "the generation prompt is not where the assistant message starts",
                ));
            }
            out.push(&self.encode(&with_header[prev.len()..])?, all);
            let trained = match self.train_on {
                TrainOn::All | TrainOn::Assistant => true,
                TrainOn::Last => last_assistant == Some(k),
            };
            let body = self.encode(&rendered[with_header.len()..])?;
            let stop = body.iter().position(|id| self.stop_ids.contains(id));
            let end = stop.map_or(body.len(), |p| p + 1);
            out.push(&body[..end], trained);
            out.push(&body[end..], all);
            if k + 1 == n && stop.is_none() {
                // A template that ends the reply with no stop token: add EOS so generation stops.
                self.eos(&mut out, trained);
            }
            prev = rendered;
        }
        Ok(out)
    }
}
