//! Chat prompts: a model's jinja chat template rendered like transformers' `apply_chat_template`,
//! or the native Llama-3 format when the model ships no template.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};

use crate::{Tokenizer, TokenizerError};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant`, `ipython`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// Extra template variables, as the keyword arguments of transformers' `apply_chat_template`
/// (`enable_thinking` for Qwen3, `tools`, `documents`, ...): names to JSON values.
pub type TemplateVars = serde_json::Map<String, serde_json::Value>;

/// Renders a conversation as the model's prompt text.
///
/// With a chat template (from `tokenizer_config.json`, `chat_template.jinja` or GGUF
/// `tokenizer.chat_template`) this is [`render_template`]; without one, the native Llama-3 format
/// ([`render_llama3`]), provided the vocabulary has Llama-3's header tokens.
pub fn render_chat(
    tok: &Tokenizer,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<String, TokenizerError> {
    render_chat_with(tok, messages, add_generation_prompt, &TemplateVars::new())
}

/// [`render_chat`] with extra template variables (e.g. `{"enable_thinking": false}` for Qwen3),
/// as `apply_chat_template(messages, add_generation_prompt=..., **vars)`. The variables reach a
/// jinja template only; the native Llama-3 fallback ignores them.
pub fn render_chat_with(
    tok: &Tokenizer,
    messages: &[Message],
    add_generation_prompt: bool,
    vars: &TemplateVars,
) -> Result<String, TokenizerError> {
    match tok.chat_template() {
        Some(t) => {
            render_template_with(t, messages, add_generation_prompt, tok.bos_token(), tok.eos_token(), vars)
        }
        None if tok.token_to_id("<|start_header_id|>").is_some() => {
            Ok(render_llama3(messages, add_generation_prompt))
        }
        None => Err(TokenizerError::Template(
            "the tokenizer has no chat template, and the Llama-3 fallback needs <|start_header_id|>, \
             which its vocabulary lacks"
                .into(),
        )),
    }
}

/// The native Llama-3 chat format: `<|begin_of_text|>`, then per message
/// `<|start_header_id|>{role}<|end_header_id|>\n\n{content, trimmed}<|eot_id|>`, then (with
/// `add_generation_prompt`) `<|start_header_id|>assistant<|end_header_id|>\n\n`.
pub fn render_llama3(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut out = String::from("<|begin_of_text|>");
    for m in messages {
        let _ =
            write!(out, "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>", m.role, m.content.trim());
    }
    if add_generation_prompt {
        out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
    }
    out
}

/// Renders a jinja chat template the way transformers does: `trim_blocks` and `lstrip_blocks`,
/// loop controls, Python string/dict methods (minijinja-contrib `pycompat`), `raise_exception`,
/// `strftime_now` (UTC) and a Python-compatible `tojson`; variables `messages`,
/// `add_generation_prompt`, `bos_token`, `eos_token`, and `tools` / `documents` set to none.
pub fn render_template(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String, TokenizerError> {
    render_template_with(
        template,
        messages,
        add_generation_prompt,
        bos_token,
        eos_token,
        &TemplateVars::new(),
    )
}

/// [`render_template`] with extra variables ([`TemplateVars`]); they may replace `bos_token`,
/// `eos_token`, `tools` and `documents`, not `messages` or `add_generation_prompt`.
pub fn render_template_with(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
    vars: &TemplateVars,
) -> Result<String, TokenizerError> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| TokenizerError::Template(format!("{e:#}")))?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    let tmpl = env
        .template_from_str(template)
        .map_err(|e| TokenizerError::Template(format!("cannot compile: {e:#}")))?;
    let msgs: Vec<Value> = messages.iter().map(|m| Value::from_object(MessageObject(m.clone()))).collect();
    let mut ctx: BTreeMap<Value, Value> = BTreeMap::new();
    ctx.insert(Value::from("bos_token"), Value::from(bos_token.unwrap_or("")));
    ctx.insert(Value::from("eos_token"), Value::from(eos_token.unwrap_or("")));
    ctx.insert(Value::from("tools"), Value::from(()));
    ctx.insert(Value::from("documents"), Value::from(()));
    for (k, v) in vars {
        ctx.insert(Value::from(k.as_str()), json_value(v));
    }
    ctx.insert(Value::from("messages"), Value::from(msgs));
    ctx.insert(Value::from("add_generation_prompt"), Value::from(add_generation_prompt));
    tmpl.render(Value::from(ctx)).map_err(|e| TokenizerError::Template(format!("cannot render: {e:#}")))
}

/// A JSON value as templates see it (objects keep their key order, for `tojson` and `items()`).
fn json_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::from(s.as_str()),
        J::Array(items) => items.iter().map(json_value).collect(),
        J::Object(map) => {
            Value::from_object(JsonObject(map.iter().map(|(k, v)| (k.clone(), json_value(v))).collect()))
        }
    }
}

/// A JSON object for templates: its entries in order.
#[derive(Debug)]
struct JsonObject(Vec<(String, Value)>);

impl Object for JsonObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.iter().map(|(k, _)| Value::from(k.as_str())).collect())
    }
}

/// A message as templates see it: a map with `role` then `content`, in that order (as the Python
/// dicts transformers passes, which matters for `tojson` and `items()`).
#[derive(Debug)]
struct MessageObject(Message);

impl Object for MessageObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(Value::from(self.0.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn strftime_now(format: String) -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    strftime(secs, &format)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// C `strftime` for a UTC timestamp (the directives chat templates use; others are kept as-is).
pub(crate) fn strftime(unix_secs: i64, format: &str) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3).
    let first_of_year = {
        // Day of year: days since Jan 1 of `y`.
        let mut lo = days - 366;
        while civil_from_days(lo).0 < y {
            lo += 1;
        }
        lo
    };
    let yday = days - first_of_year + 1;
    let mut out = String::new();
    let mut it = format.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(dir) = it.next() else {
            out.push('%');
            break;
        };
        let _ = match dir {
            'Y' => write!(out, "{y}"),
            'y' => write!(out, "{:02}", y.rem_euclid(100)),
            'm' => write!(out, "{m:02}"),
            'd' => write!(out, "{d:02}"),
            'e' => write!(out, "{d:>2}"),
            '-' => match it.next() {
                Some('d') => write!(out, "{d}"),
                Some('m') => write!(out, "{m}"),
                Some(other) => write!(out, "%-{other}"),
                None => write!(out, "%-"),
            },
            'H' => write!(out, "{hh:02}"),
            'I' => write!(out, "{:02}", (hh + 11) % 12 + 1),
            'p' => write!(out, "{}", if hh < 12 { "AM" } else { "PM" }),
            'M' => write!(out, "{mm:02}"),
            'S' => write!(out, "{ss:02}"),
            'j' => write!(out, "{yday:03}"),
            'b' | 'h' => write!(out, "{}", &MONTHS[m as usize - 1][..3]),
            'B' => write!(out, "{}", MONTHS[m as usize - 1]),
            'a' => write!(out, "{}", &DAYS[weekday][..3]),
            'A' => write!(out, "{}", DAYS[weekday]),
            '%' => write!(out, "%"),
            other => write!(out, "%{other}"),
        };
    }
    out
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// sort_keys=sort_keys)`, so non-ASCII stays as is and separators are Python's.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let opts = JsonOpts {
        indent,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&value, &opts, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` style: `1.0`, `0.5`, `1e-05`, `1e+16`.
fn json_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else if f != 0.0 && (f.abs() >= 1e16 || f.abs() < 1e-4) {
        let s = format!("{f:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let _ = write!(out, "{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else {
        let _ = write!(out, "{f:?}");
    }
}

fn write_json(v: &Value, o: &JsonOpts, level: usize, out: &mut String) -> Result<(), Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = o.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if o.indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                let _ = write!(out, "{v}");
            } else {
                json_float(f64::try_from(v.clone())?, out);
            }
        }
        ValueKind::String => json_string(v.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                json_string(&k.to_string(), o.ensure_ascii, out);
                out.push_str(": ");
                write_json(&v.get_item(k)?, o, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_json(item, o, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {} value", v.kind()),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 00:00:00 UTC, a Friday.
        let t = 1_721_952_000;
        assert_eq!(strftime(t, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(
            strftime(t + 13 * 3600 + 5 * 60 + 9, "%A %B %-d, %H:%M:%S %p %j %y %%"),
            "Friday July 26, 13:05:09 PM 208 24 %"
        );
        assert_eq!(strftime(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
        // 2000-02-29 (leap day).
        assert_eq!(strftime(951_782_400, "%Y-%m-%d %j"), "2000-02-29 060");
    }

    #[test]
    fn template_features_behave_like_transformers() {
        // Expected strings were checked against transformers' jinja2 environment.
        let msgs = [Message::new("user", "héllo \"x\"")];
        let t = "{% for m in messages %}{{ m | tojson }}|{{ m['content'].upper() }}{% endfor %}\n{{ [1, 2.5, 1e-05, none, true] | tojson }}";
        let out = render_template(t, &msgs, false, None, None).unwrap();
        assert_eq!(
            out,
            "{\"role\": \"user\", \"content\": \"héllo \\\"x\\\"\"}|HÉLLO \"X\"[1, 2.5, 1e-05, null, true]"
        );
        let err = render_template("{{ raise_exception('no system role') }}", &msgs, false, None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no system role"), "{err}");
        let err = render_template("{% if %}", &msgs, false, None, None).unwrap_err().to_string();
        assert!(err.starts_with("chat template: cannot compile"), "{err}");
        // trim_blocks / lstrip_blocks
        let t = "  {% if true %}\nA\n  {% endif %}\nB";
        assert_eq!(render_template(t, &msgs, false, None, None).unwrap(), "A\nB");
        let out = render_template("{{ strftime_now('%Y') }}", &msgs, false, None, None).unwrap();
        assert_eq!(out.len(), 4);
        assert!(out.parse::<u32>().unwrap() >= 2024);
    }
}
