//! A YAML document as a tree whose every node remembers where it came from (a line and column
//! of the config file, or a command-line override), built from `saphyr-parser`'s event stream.
//! Scalars keep their text and whether they were plain (unquoted): types are decided later, by
//! the schema, following the YAML 1.2 core schema (`3e-4` is a number, `"8"` is a string).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScanError, Span};

/// Where a node came from.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Pos {
    /// A place in the config file; line and column are 1-based.
    File { line: usize, col: usize },
    /// A command-line override (its full text).
    Override(Arc<str>),
}

impl Pos {
    fn at(span: Span) -> Pos {
        Pos::File { line: span.start.line(), col: span.start.col() + 1 }
    }
}

/// A node of the document.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub value: Value,
    pub pos: Pos,
}

/// A node's content.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    /// A scalar: its text and whether it was written without quotes (only plain scalars can be
    /// null, booleans or numbers).
    Scalar { text: String, plain: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order.
    Map(Vec<Entry>),
}

/// One `key: value` pair of a mapping.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

impl Node {
    /// A plain scalar.
    pub fn scalar(text: impl Into<String>, plain: bool, pos: Pos) -> Node {
        Node { value: Value::Scalar { text: text.into(), plain }, pos }
    }

    /// An empty mapping.
    pub fn map(pos: Pos) -> Node {
        Node { value: Value::Map(Vec::new()), pos }
    }

    /// The plain scalar text, if this is a plain scalar.
    fn plain_text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, plain: true } => Some(text),
            _ => None,
        }
    }

    /// `null`, `~` or an empty plain scalar.
    pub fn is_null(&self) -> bool {
        matches!(self.plain_text(), Some("" | "~" | "null" | "Null" | "NULL"))
    }

    /// A YAML 1.2 core-schema boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self.plain_text()? {
            "true" | "True" | "TRUE" => Some(true),
            "false" | "False" | "FALSE" => Some(false),
            _ => None,
        }
    }

    /// A YAML 1.2 core-schema integer (decimal, `0o` octal or `0x` hexadecimal).
    pub fn as_int(&self) -> Option<i128> {
        parse_int(self.plain_text()?)
    }

    /// A YAML 1.2 core-schema number (integer or float, including `.inf` and `.nan`).
    pub fn as_f64(&self) -> Option<f64> {
        let t = self.plain_text()?;
        if let Some(i) = parse_int(t) {
            return Some(i as f64);
        }
        parse_float(t)
    }

    /// The text of any non-null scalar (numbers and booleans included, as written).
    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// The entries, if this is a mapping.
    pub fn entries(&self) -> Option<&[Entry]> {
        match &self.value {
            Value::Map(e) => Some(e),
            _ => None,
        }
    }

    /// How the node reads in an error message: a quoted string, a bare number, `a list`, ….
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
            Value::Scalar { text, .. } => {
                if self.is_null() {
                    "null".into()
                } else if self.as_bool().is_some() || self.as_f64().is_some() {
                    text.clone()
                } else {
                    format!("{text:?}")
                }
            }
        }
    }

    /// Sorts every mapping's keys alphabetically, recursively.
    pub fn sort_keys(&mut self) {
        match &mut self.value {
            Value::Scalar { .. } => {}
            Value::Seq(items) => items.iter_mut().for_each(Node::sort_keys),
            Value::Map(entries) => {
                entries.sort_by(|a, b| a.key.cmp(&b.key));
                entries.iter_mut().for_each(|e| e.value.sort_keys());
            }
        }
    }
}

fn parse_int(t: &str) -> Option<i128> {
    let (neg, body) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let v = if let Some(h) = t.strip_prefix("0x") {
        i128::from_str_radix(h, 16)
            .ok()
            .filter(|_| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))?
    } else if let Some(o) = t.strip_prefix("0o") {
        i128::from_str_radix(o, 8).ok().filter(|_| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))?
    } else if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) {
        body.parse::<i128>().ok()?
    } else {
        return None;
    };
    Some(if neg { -v } else { v })
}

fn parse_float(t: &str) -> Option<f64> {
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    let neg = t.starts_with('-');
    match body {
        ".inf" | ".Inf" | ".INF" => return Some(if neg { f64::NEG_INFINITY } else { f64::INFINITY }),
        ".nan" | ".NaN" | ".NAN" if body.len() == t.len() => return Some(f64::NAN),
        _ => {}
    }
    // [0-9]*(\.[0-9]*)?([eE][-+]?[0-9]+)? with at least one digit in the mantissa.
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let mut parts = mantissa.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next().unwrap_or("");
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !digits(int) || !digits(frac) {
        return None;
    }
    if let Some(e) = exponent {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        if e.is_empty() || !digits(e) {
            return None;
        }
    }
    t.parse::<f64>().ok()
}

/// A YAML syntax error: where, and what the parser said.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub msg: String,
}

enum Frame {
    Seq { pos: Pos, anchor: usize, items: Vec<Node> },
    Map { pos: Pos, anchor: usize, entries: Vec<Entry>, key: Option<(String, Pos)> },
}

/// Parses one YAML document. `None` for an empty document. `origin` decides the positions:
/// `None` for a file (line and column), `Some(text)` for an override.
pub(crate) fn parse(text: &str, origin: Option<&Arc<str>>) -> Result<Option<Node>, SyntaxError> {
    let pos_of = |span: Span| match origin {
        Some(o) => Pos::Override(o.clone()),
        None => Pos::at(span),
    };
    let scan_err = |e: ScanError| SyntaxError {
        pos: match origin {
            Some(o) => Pos::Override(o.clone()),
            None => Pos::File { line: e.marker().line(), col: e.marker().col() + 1 },
        },
        msg: e.info().to_string(),
    };
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    while let Some(item) = parser.next_event() {
        let (event, span) = item.map_err(scan_err)?;
        let pos = pos_of(span);
        let done = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        pos,
                        msg: "only one YAML document is allowed per config".into(),
                    });
                }
                None
            }
            Event::Scalar(value, style, anchor, _tag) => {
                let plain = matches!(style, saphyr_parser::ScalarStyle::Plain);
                let node = Node::scalar(value.into_owned(), plain, pos);
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(n) => Some(Node { value: n.value.clone(), pos }),
                None => return Err(SyntaxError { pos, msg: "alias to an unknown anchor".into() }),
            },
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq { pos, anchor, items: Vec::new() });
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map { pos, anchor, entries: Vec::new(), key: None });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq { pos, anchor, items }) => {
                        (Node { value: Value::Seq(items), pos }, anchor)
                    }
                    Some(Frame::Map { pos, anchor, entries, .. }) => {
                        (Node { value: Value::Map(entries), pos }, anchor)
                    }
                    None => continue,
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
        };
        let Some(node) = done else { continue };
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some((k, key_pos)) => entries.push(Entry { key: k, key_pos, value: node }),
                None => {
                    let Value::Scalar { text, .. } = &node.value else {
                        return Err(SyntaxError { pos: node.pos, msg: "keys must be plain names".into() });
                    };
                    if let Some(first) = entries.iter().find(|e| e.key == *text) {
                        let at = match &first.key_pos {
                            Pos::File { line, .. } => format!(" (first at line {line})"),
                            Pos::Override(_) => String::new(),
                        };
                        return Err(SyntaxError {
                            pos: node.pos,
                            msg: format!("duplicate key `{text}`{at}"),
                        });
                    }
                    *key = Some((text.clone(), node.pos));
                }
            },
        }
    }
    Ok(root)
}

/// Writes a node back as block-style YAML (lists of scalars in flow style), two spaces per level.
/// Comments are not kept.
pub(crate) fn emit(node: &Node) -> String {
    let mut out = String::new();
    match &node.value {
        Value::Map(entries) if !entries.is_empty() => emit_entries(entries, 0, &mut out),
        _ => {
            out.push_str(&inline(node).unwrap_or_default());
            out.push('\n');
        }
    }
    out
}

fn emit_entries(entries: &[Entry], indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for (i, e) in entries.iter().enumerate() {
        // Top-level sections stand apart, as in the shipped configs.
        let section = |e: &Entry| e.value.entries().is_some_and(|x| !x.is_empty());
        if indent == 0 && i > 0 && (section(e) || section(&entries[i - 1])) {
            out.push('\n');
        }
        let key = scalar_text(&e.key, true, false);
        match inline(&e.value) {
            Some(v) => {
                let _ = writeln!(out, "{pad}{key}: {v}");
            }
            None => {
                let _ = writeln!(out, "{pad}{key}:");
                emit_block(&e.value, indent + 2, out);
            }
        }
    }
}

fn emit_block(node: &Node, indent: usize, out: &mut String) {
    match &node.value {
        Value::Map(entries) => emit_entries(entries, indent, out),
        Value::Seq(items) => {
            let pad = " ".repeat(indent);
            for item in items {
                match inline(item) {
                    Some(v) => {
                        let _ = writeln!(out, "{pad}- {v}");
                    }
                    None => {
                        // Nested block under a dash: emit at deeper indent, then splice the dash in.
                        let mut inner = String::new();
                        emit_block(item, indent + 2, &mut inner);
                        let trimmed = inner.trim_start_matches(' ');
                        let _ = write!(out, "{pad}- {trimmed}");
                    }
                }
            }
        }
        Value::Scalar { .. } => {}
    }
}

/// The node on one line, when it fits there: scalars, empty collections, lists of scalars.
fn inline(node: &Node) -> Option<String> {
    match &node.value {
        Value::Scalar { text, plain } => {
            Some(if node.is_null() { "null".into() } else { scalar_text(text, *plain, false) })
        }
        Value::Map(e) if e.is_empty() => Some("{}".into()),
        Value::Seq(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|i| match &i.value {
                    Value::Scalar { .. } if i.is_null() => Some("null".to_string()),
                    Value::Scalar { text, plain } => Some(scalar_text(text, *plain, true)),
                    _ => None,
                })
                .collect();
            parts.map(|p| format!("[{}]", p.join(", ")))
        }
        Value::Map(_) => None,
    }
}

/// A scalar as YAML source: plain when it was plain and reads back the same, else double-quoted.
/// `flow`: the scalar sits inside a `[...]` list, where `,[]{}` end a plain scalar.
fn scalar_text(text: &str, plain: bool, flow: bool) -> String {
    if plain && plain_safe(text, flow) {
        return text.to_string();
    }
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '\r' => s.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

fn plain_safe(t: &str, flow: bool) -> bool {
    if parse_int(t).is_some() || parse_float(t).is_some() {
        return true;
    }
    const FIRST: &[char] =
        &['-', '?', ':', ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '`'];
    !t.is_empty()
        && t.trim() == t
        && !t.starts_with(FIRST)
        && !t.contains(": ")
        && !t.contains(" #")
        && !t.ends_with(':')
        && !t.contains(['\n', '\t', '\r'])
        && !(flow && t.contains([',', '[', ']', '{', '}']))
}

/// The tree as JSON (plain scalars typed by the YAML 1.2 core schema: null, booleans, integers,
/// floats; quoted scalars are strings), recording each node's position under its key path
/// (`path`, `path[0]`, `path[0].key`; a key's own position as `path[0].key#key`) in `positions`.
pub(crate) fn to_json(node: &Node, path: &str, positions: &mut Vec<(String, Pos)>) -> serde_json::Value {
    use serde_json::Value as J;
    positions.push((path.to_string(), node.pos.clone()));
    match &node.value {
        Value::Scalar { text, plain } => {
            if !plain {
                J::String(text.clone())
            } else if node.is_null() {
                J::Null
            } else if let Some(b) = node.as_bool() {
                J::Bool(b)
            } else if let Some(i) = node.as_int() {
                i64::try_from(i).map(J::from).unwrap_or_else(|_| J::from(i as f64))
            } else if let Some(f) = node.as_f64() {
                serde_json::Number::from_f64(f).map(J::Number).unwrap_or_else(|| J::String(text.clone()))
            } else {
                J::String(text.clone())
            }
        }
        Value::Seq(items) => J::Array(
            items.iter().enumerate().map(|(i, n)| to_json(n, &format!("{path}[{i}]"), positions)).collect(),
        ),
        Value::Map(entries) => {
            let mut m = serde_json::Map::new();
            for e in entries {
                let p = format!("{path}.{}", e.key);
                positions.push((format!("{p}#key"), e.key_pos.clone()));
                m.insert(e.key.clone(), to_json(&e.value, &p, positions));
            }
            J::Object(m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Node {
        parse(text, None).unwrap().unwrap()
    }

    #[test]
    fn core_schema_scalars() {
        let n = |t: &str| Node::scalar(t, true, Pos::File { line: 1, col: 1 });
        assert_eq!(n("3e-4").as_f64(), Some(3e-4));
        assert_eq!(n("-1").as_int(), Some(-1));
        assert_eq!(n("0x10").as_int(), Some(16));
        assert_eq!(n(".5").as_f64(), Some(0.5));
        assert_eq!(n("1.").as_f64(), Some(1.0));
        assert_eq!(n("-.inf").as_f64(), Some(f64::NEG_INFINITY));
        assert!(n("inf").as_f64().is_none());
        assert!(n("fast").as_f64().is_none());
        assert!(n("1_000").as_int().is_none());
        assert!(n("e5").as_f64().is_none());
        assert_eq!(n("True").as_bool(), Some(true));
        assert!(n("yes").as_bool().is_none());
        assert!(n("~").is_null() && n("").is_null());
        assert!(Node::scalar("8", false, Pos::File { line: 1, col: 1 }).as_int().is_none());
    }

    #[test]
    fn positions_are_one_based() {
        let root = doc("a: 1\nb:\n  c: [x, y]\n");
        let e = root.entries().unwrap();
        assert_eq!(e[0].key_pos, Pos::File { line: 1, col: 1 });
        assert_eq!(e[0].value.pos, Pos::File { line: 1, col: 4 });
        let c = &e[1].value.entries().unwrap()[0];
        assert_eq!(c.key_pos, Pos::File { line: 3, col: 3 });
        let Value::Seq(items) = &c.value.value else { panic!() };
        assert_eq!(items[1].pos, Pos::File { line: 3, col: 10 });
    }

    #[test]
    fn duplicate_keys_and_bad_syntax_are_errors() {
        let e = parse("a: 1\nb: 2\na: 3\n", None).unwrap_err();
        assert_eq!(e.pos, Pos::File { line: 3, col: 1 });
        assert!(e.msg.contains("duplicate key `a` (first at line 1)"), "{}", e.msg);
        let e = parse("a: [1, 2\nb: 3\n", None).unwrap_err();
        assert!(matches!(e.pos, Pos::File { .. }));
        assert!(parse("a: 1\n---\nb: 2\n", None).is_err());
        assert!(parse("", None).unwrap().is_none());
    }

    #[test]
    fn emit_reads_back_the_same() {
        let text = "a: 1\ns: \"8\"\nq: 'x: y'\nl: [a, \"b c\", 3]\nm:\n  n: null\n  e: {}\n  seq:\n    - k: 1\n      j: 2\n    - 3\n";
        let root = doc(text);
        let out = emit(&root);
        let again = doc(&out);
        assert_eq!(emit(&again), out);
        assert!(out.contains("s: \"8\"\n"), "{out}");
        assert!(out.contains("q: \"x: y\"\n"), "{out}");
        assert!(out.contains("l: [a, \"b c\", 3]\n"), "{out}");
        assert!(out.contains("    - k: 1\n      j: 2\n    - 3\n"), "{out}");
    }

    #[test]
    fn anchors_and_aliases() {
        let root = doc("a: &x [1, 2]\nb: *x\n");
        let Value::Seq(items) = &root.entries().unwrap()[1].value.value else { panic!() };
        assert_eq!(items.len(), 2);
    }
}
