//! Rows to typed records: the columns each dataset kind needs, with their types checked.

use std::path::Path;

use afinar_tokenizer::Message;
use serde_json::{Map, Value};

use crate::error::json_type;
use crate::formats::RawRow;
use crate::{ConversationStyle, DataError, DatasetKind, DatasetSpec, RowLoc};

/// One row's content, ready to be rendered and tokenized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Instruct { instruction: String, input: String, output: String },
    Chat(Vec<Message>),
    Text(String),
}

/// Checks every row and turns it into a [`Record`]; the first bad row (in file order) is the error.
pub(crate) fn extract(spec: &DatasetSpec, path: &Path, rows: &[RawRow]) -> Result<Vec<Record>, DataError> {
    let ctx = Ctx { path };
    match spec.kind {
        DatasetKind::Instruct => {
            let (ci, cn, co) = (spec.column("instruction"), spec.column("input"), spec.column("output"));
            rows.iter()
                .map(|r| {
                    Ok(Record::Instruct {
                        instruction: ctx.string(r, ci)?,
                        input: ctx.optional_string(r, cn)?,
                        output: ctx.string(r, co)?,
                    })
                })
                .collect()
        }
        DatasetKind::Text => {
            let c = spec.column("text");
            rows.iter().map(|r| Ok(Record::Text(ctx.string(r, c)?))).collect()
        }
        DatasetKind::Preference => {
            Err(DataError::Config("preference rows are read by PreferenceDataset::load".into()))
        }
        DatasetKind::Prompt => Err(DataError::Config("prompt rows are read by PromptDataset::load".into())),
        DatasetKind::Chat => {
            let Some(first) = rows.first() else {
                return Ok(Vec::new());
            };
            let (column, style) = chat_layout(spec, &ctx, first)?;
            rows.iter().map(|r| Ok(Record::Chat(ctx.conversation(r, column, style)?))).collect()
        }
    }
}

/// The conversation column and style: given, or detected from the first row.
fn chat_layout<'a>(
    spec: &'a DatasetSpec,
    ctx: &Ctx<'_>,
    first: &RawRow,
) -> Result<(&'a str, ConversationStyle), DataError> {
    if let Some(style) = spec.conversation_style {
        return Ok((spec.column(style.column()), style));
    }
    let share = spec.column("conversations");
    let open = spec.column("messages");
    let column = if first.fields.contains_key(share) {
        share
    } else if first.fields.contains_key(open) {
        open
    } else {
        return Err(DataError::MissingColumn {
            path: ctx.path.to_path_buf(),
            at: first.at,
            column: format!("{share}\" or \"{open}"),
            available: available(&first.fields),
        });
    };
    // The message keys decide the style; the column name only when there is no message to look at.
    let first_msg = first
        .fields
        .get(column)
        .and_then(|v| ctx.message_list(first, column, v).ok())
        .and_then(|list| list.into_iter().next());
    let style = match first_msg {
        Some(Value::Object(m)) if m.contains_key("from") => ConversationStyle::ShareGpt,
        Some(Value::Object(m)) if m.contains_key("role") => ConversationStyle::OpenAi,
        _ if column == share => ConversationStyle::ShareGpt,
        _ => ConversationStyle::OpenAi,
    };
    Ok((column, style))
}

fn available(fields: &Map<String, Value>) -> String {
    if fields.is_empty() {
        return "no columns".into();
    }
    let names: Vec<String> = fields.keys().map(|k| format!("{k:?}")).collect();
    format!("columns {}", names.join(", "))
}

struct Ctx<'p> {
    path: &'p Path,
}

impl Ctx<'_> {
    fn missing(&self, row: &RawRow, column: &str) -> DataError {
        DataError::MissingColumn {
            path: self.path.to_path_buf(),
            at: row.at,
            column: column.to_string(),
            available: available(&row.fields),
        }
    }

    fn wrong(&self, at: RowLoc, column: &str, expected: &str, found: &Value) -> DataError {
        DataError::WrongType {
            path: self.path.to_path_buf(),
            at,
            column: column.to_string(),
            expected: expected.to_string(),
            found: json_type(found).to_string(),
        }
    }

    fn invalid(&self, at: RowLoc, column: &str, message: String) -> DataError {
        DataError::InvalidValue { path: self.path.to_path_buf(), at, column: column.to_string(), message }
    }

    fn string(&self, row: &RawRow, column: &str) -> Result<String, DataError> {
        match row.fields.get(column) {
            None => Err(self.missing(row, column)),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.wrong(row.at, column, "a string", other)),
        }
    }

    /// A column that may be absent or null (Alpaca's `input`): empty then.
    fn optional_string(&self, row: &RawRow, column: &str) -> Result<String, DataError> {
        match row.fields.get(column) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.wrong(row.at, column, "a string", other)),
        }
    }

    /// The list of messages in `v`; a string holding JSON (a CSV cell) is parsed first.
    fn message_list(&self, row: &RawRow, column: &str, v: &Value) -> Result<Vec<Value>, DataError> {
        let expected = "a list of messages";
        match v {
            Value::Array(items) => Ok(items.clone()),
            Value::String(s) => match serde_json::from_str::<Value>(s) {
                Ok(Value::Array(items)) => Ok(items),
                _ => Err(self.invalid(
                    row.at,
                    column,
                    format!("expected {expected} (or its JSON text), found a string that is not a JSON list"),
                )),
            },
            other => Err(self.wrong(row.at, column, expected, other)),
        }
    }

    fn conversation(
        &self,
        row: &RawRow,
        column: &str,
        style: ConversationStyle,
    ) -> Result<Vec<Message>, DataError> {
        let v = row.fields.get(column).ok_or_else(|| self.missing(row, column))?;
        let items = self.message_list(row, column, v)?;
        self.messages(row, column, &items, style)
    }

    /// Parses a non-empty list of message objects in `style`.
    fn messages(
        &self,
        row: &RawRow,
        column: &str,
        items: &[Value],
        style: ConversationStyle,
    ) -> Result<Vec<Message>, DataError> {
        if items.is_empty() {
            return Err(self.invalid(row.at, column, "the conversation has no messages".into()));
        }
        let (role_key, content_key) = match style {
            ConversationStyle::ShareGpt => ("from", "value"),
            ConversationStyle::OpenAi => ("role", "content"),
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let name = format!("{column}[{i}]");
                let Value::Object(m) = item else {
                    return Err(self.wrong(row.at, &name, "a message object", item));
                };
                let field = |key: &str| -> Result<&Value, DataError> {
                    m.get(key).ok_or_else(|| {
                        self.invalid(
                            row.at,
                            &name,
                            format!(
                                "the message has no {key:?} key ({style:?} messages need {role_key:?} and {content_key:?}; it has {})",
                                available(m)
                            ),
                        )
                    })
                };
                let role_col = format!("{name}.{role_key}");
                let role = match field(role_key)? {
                    Value::String(s) => s.as_str(),
                    other => return Err(self.wrong(row.at, &role_col, "a string", other)),
                };
                let role = normalize_role(role, style).ok_or_else(|| {
                    let known = match style {
                        ConversationStyle::ShareGpt => "human, gpt, system (or user, assistant)",
                        ConversationStyle::OpenAi => "system, user, assistant, tool, ipython",
                    };
                    self.invalid(row.at, &role_col, format!("unknown role {role:?}; expected {known}"))
                })?;
                let content_col = format!("{name}.{content_key}");
                let content = self.content(row.at, &content_col, field(content_key)?)?;
                Ok(Message::new(role, content))
            })
            .collect()
    }

    /// Message content: a string, or OpenAI's list of `{"type": "text", "text": ...}` parts.
    fn content(&self, at: RowLoc, column: &str, v: &Value) -> Result<String, DataError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Array(parts) => {
                let mut out = String::new();
                for (i, part) in parts.iter().enumerate() {
                    match part.get("text") {
                        Some(Value::String(t)) if part.get("type").is_none_or(|ty| ty == "text") => {
                            out.push_str(t)
                        }
                        _ => {
                            return Err(self.invalid(
                                at,
                                &format!("{column}[{i}]"),
                                "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported"
                                    .into(),
                            ))
                        }
                    }
                }
                Ok(out)
            }
            other => Err(self.wrong(at, column, "a string", other)),
        }
    }
}

fn normalize_role(role: &str, style: ConversationStyle) -> Option<&'static str> {
    let r = role.to_ascii_lowercase();
    match style {
        ConversationStyle::ShareGpt => match r.as_str() {
            "human" | "user" => Some("user"),
            "gpt" | "assistant" => Some("assistant"),
            "system" => Some("system"),
            _ => None,
        },
        ConversationStyle::OpenAi => match r.as_str() {
            "system" => Some("system"),
            "user" => Some("user"),
            "assistant" => Some("assistant"),
            "tool" => Some("tool"),
            "ipython" => Some("ipython"),
            _ => None,
        },
    }
}

/// A preference row's text: a string, or messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Text(String),
    Messages(Vec<Message>),
}

/// One preference row: the prompt and the two responses. From message lists, `chosen` and
/// `rejected` hold only the answer (assistant messages); from strings, the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PrefRecord {
    pub prompt: Part,
    pub chosen: Part,
    pub rejected: Part,
    pub lang: Option<String>,
}

/// Checks every preference row and splits it into prompt and responses (layouts: see
/// [`crate::PreferenceDataset`]); the first bad row is the error. `csv`: string cells holding a
/// JSON list are message lists.
pub(crate) fn extract_preference(
    spec: &DatasetSpec,
    path: &Path,
    rows: &[RawRow],
    csv: bool,
) -> Result<Vec<PrefRecord>, DataError> {
    let ctx = Ctx { path };
    let cols = [spec.column("prompt"), spec.column("chosen"), spec.column("rejected")];
    let lang = spec.column("lang");
    rows.iter().map(|r| ctx.preference(spec, r, cols, lang, csv)).collect()
}

impl Ctx<'_> {
    /// A string or message-list column; `None` when absent or null and not `required`.
    fn part(
        &self,
        spec: &DatasetSpec,
        row: &RawRow,
        column: &str,
        required: bool,
        csv: bool,
    ) -> Result<Option<Part>, DataError> {
        let items = match row.fields.get(column) {
            None | Some(Value::Null) if !required => return Ok(None),
            None => return Err(self.missing(row, column)),
            Some(Value::String(s)) => {
                let list = if csv && s.trim_start().starts_with('[') {
                    match serde_json::from_str::<Value>(s) {
                        Ok(Value::Array(items)) => Some(items),
                        _ => None,
                    }
                } else {
                    None
                };
                match list {
                    Some(items) => items,
                    None => return Ok(Some(Part::Text(s.clone()))),
                }
            }
            Some(Value::Array(items)) => items.clone(),
            Some(other) => return Err(self.wrong(row.at, column, "a string or a list of messages", other)),
        };
        let style = spec.conversation_style.unwrap_or(match items.first() {
            Some(Value::Object(m)) if m.contains_key("from") => ConversationStyle::ShareGpt,
            _ => ConversationStyle::OpenAi,
        });
        Ok(Some(Part::Messages(self.messages(row, column, &items, style)?)))
    }

    fn preference(
        &self,
        spec: &DatasetSpec,
        row: &RawRow,
        [pc, cc, rc]: [&str; 3],
        lang_col: &str,
        csv: bool,
    ) -> Result<PrefRecord, DataError> {
        let prompt = self.part(spec, row, pc, false, csv)?;
        let chosen = self.part(spec, row, cc, true, csv)?.expect("required");
        let rejected = self.part(spec, row, rc, true, csv)?.expect("required");
        let lang = match row.fields.get(lang_col) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(self.wrong(row.at, lang_col, "a string", other)),
        };
        let (prompt, chosen, rejected) = match (prompt, chosen, rejected) {
            (Some(p), c @ Part::Text(_), r @ Part::Text(_)) => (p, c, r),
            // UltraFeedback: a prompt, and conversations whose last message is the answer.
            (Some(p), Part::Messages(c), Part::Messages(r)) => {
                let turns = match &p {
                    Part::Text(t) => vec![Message::new("user", t.clone())],
                    Part::Messages(m) => m.clone(),
                };
                let c = self.answer_after_prompt(row, cc, &turns, c)?;
                let r = self.answer_after_prompt(row, rc, &turns, r)?;
                (p, Part::Messages(c), Part::Messages(r))
            }
            // HH-RLHF: two whole conversations; the prompt is what they share.
            (None, Part::Messages(c), Part::Messages(r)) => {
                let shared = c.iter().zip(&r).take_while(|(a, b)| a == b).count();
                if shared == 0 {
                    return Err(self.invalid(
                        row.at,
                        cc,
                        format!(
                            "without a \"{pc}\" column, \"{cc}\" and \"{rc}\" must be conversations \
                             that share their first messages (the prompt), but their first messages differ"
                        ),
                    ));
                }
                let c_ans = self.answer_tail(row, cc, rc, &c[shared..])?;
                let r_ans = self.answer_tail(row, rc, cc, &r[shared..])?;
                (Part::Messages(c[..shared].to_vec()), Part::Messages(c_ans), Part::Messages(r_ans))
            }
            (None, Part::Text(_), Part::Text(_)) => return Err(self.missing(row, pc)),
            (_, c, _) => {
                let what = |p: &Part| if matches!(p, Part::Text(_)) { "a string" } else { "a message list" };
                let other = if matches!(c, Part::Text(_)) { "a message list" } else { "a string" };
                return Err(self.invalid(
                    row.at,
                    rc,
                    format!(
                        "is {other} but \"{cc}\" is {}: both responses must be strings or both \
                         message lists",
                        what(&c)
                    ),
                ));
            }
        };
        if let Part::Messages(m) = &prompt {
            if m.is_empty() {
                return Err(self.invalid(row.at, pc, "the prompt has no messages".into()));
            }
        }
        Ok(PrefRecord { prompt, chosen, rejected, lang })
    }

    /// The answer of an UltraFeedback-style response: the last message, from the assistant; the
    /// messages before it, if any, must repeat the prompt.
    fn answer_after_prompt(
        &self,
        row: &RawRow,
        column: &str,
        prompt: &[Message],
        mut list: Vec<Message>,
    ) -> Result<Vec<Message>, DataError> {
        let last = list.pop().expect("message lists are not empty");
        if last.role != "assistant" {
            return Err(self.invalid(
                row.at,
                &format!("{column}[{}]", list.len()),
                format!("the last message must be the assistant's answer, found role {:?}", last.role),
            ));
        }
        if !list.is_empty() && list != prompt {
            return Err(self.invalid(
                row.at,
                column,
                "the messages before the answer must be the prompt's messages (or be left out)".into(),
            ));
        }
        Ok(vec![last])
    }

    /// The answer of an HH-RLHF-style response: what follows the shared prefix, all from the
    /// assistant.
    fn answer_tail(
        &self,
        row: &RawRow,
        column: &str,
        other: &str,
        tail: &[Message],
    ) -> Result<Vec<Message>, DataError> {
        if tail.is_empty() {
            return Err(self.invalid(
                row.at,
                column,
                format!("the conversation is all prefix shared with \"{other}\": no answer is left"),
            ));
        }
        if let Some(m) = tail.iter().find(|m| m.role != "assistant") {
            return Err(self.invalid(
                row.at,
                column,
                format!(
                    "after the prefix shared with \"{other}\", expected only assistant messages (the \
                     answer), found a {:?} message; the conversations must differ only in the final \
                     answer",
                    m.role
                ),
            ));
        }
        Ok(tail.to_vec())
    }
}

/// One prompt row: the prompt (a string or messages) and every other column.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PromptRecord {
    pub prompt: Part,
    pub fields: std::collections::BTreeMap<String, Value>,
}

/// Checks every prompt row (see [`crate::PromptDataset`]); the first bad row is the error. `csv`:
/// string cells holding a JSON list are message lists.
pub(crate) fn extract_prompts(
    spec: &DatasetSpec,
    path: &Path,
    rows: &[RawRow],
    csv: bool,
) -> Result<Vec<PromptRecord>, DataError> {
    let ctx = Ctx { path };
    let column = spec.column("prompt");
    rows.iter()
        .map(|r| {
            let prompt = ctx.part(spec, r, column, true, csv)?.expect("required");
            if let Part::Messages(m) = &prompt {
                if m.last().is_some_and(|m| m.role == "assistant") {
                    return Err(ctx.invalid(
                        r.at,
                        &format!("{column}[{}]", m.len() - 1),
                        "the prompt ends with an assistant message; a prompt's last message must \
                         be the user's (or system's): the model writes the answer"
                            .into(),
                    ));
                }
            }
            if let Part::Text(t) = &prompt {
                if t.trim().is_empty() {
                    return Err(ctx.invalid(r.at, column, "the prompt is empty".into()));
                }
            }
            let fields = r
                .fields
                .iter()
                .filter(|(k, _)| k.as_str() != column)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Ok(PromptRecord { prompt, fields })
        })
        .collect()
}
