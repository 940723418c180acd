//! `${...}` interpolation in scalar values:
//! - `${output_dir}`, `${dataset.source}`: another scalar of the same config (after overrides);
//! - `${env:NAME}`, `${env:NAME,default}`: an environment variable (an empty one counts as
//!   unset); the default may be empty;
//! - `${assets}`: `$AFINAR_CACHE/assets`, or `~/.cache/afinar/assets` (where
//!   `scripts/fetch-assets.sh` puts the test models and tokenizers).
//!
//! `\${` is a literal `${`. A value that is exactly one `${key}` takes the referenced value's
//! type (`epochs: ${other}`), anything else keeps the type it was written with.

use std::path::PathBuf;

use super::error::{ConfigError, ConfigErrorKind as K};
use super::schema::{lookup, Cx};
use super::yaml::{Node, Pos, Value};

type Result<T> = std::result::Result<T, ConfigError>;

/// The folder `${assets}` stands for, or `None` when neither `AFINAR_CACHE` nor `HOME` is set.
pub fn assets_dir() -> Option<PathBuf> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    nonempty("AFINAR_CACHE")
        .or_else(|| nonempty("HOME").map(|h| h.join(".cache/afinar")))
        .map(|c| c.join("assets"))
}

/// Resolves every `${...}` in the tree, in place.
pub(crate) fn interpolate(root: &mut Node, cx: &Cx) -> Result<()> {
    let src = root.clone();
    walk(root, "", &src, cx)
}

fn walk(node: &mut Node, path: &str, src: &Node, cx: &Cx) -> Result<()> {
    let pos = node.pos.clone();
    match &mut node.value {
        Value::Scalar { text, plain } => {
            if text.contains("${") {
                let mut stack = vec![path.to_string()];
                let (t, p) = resolve(text, *plain, &pos, path, src, cx, &mut stack)?;
                *text = t;
                *plain = p;
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, &format!("{path}[{i}]"), src, cx)?;
            }
        }
        Value::Map(entries) => {
            for e in entries {
                let p = if path.is_empty() { e.key.clone() } else { format!("{path}.{}", e.key) };
                walk(&mut e.value, &p, src, cx)?;
            }
        }
    }
    Ok(())
}

/// The text with every reference replaced, and whether the result is a plain scalar.
/// `stack` holds the keys being resolved, to report cycles.
fn resolve(
    text: &str,
    plain: bool,
    pos: &Pos,
    key: &str,
    src: &Node,
    cx: &Cx,
    stack: &mut Vec<String>,
) -> Result<(String, bool)> {
    let err = |msg: String| cx.err(K::Interpolation, pos, key, msg);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut typed_as: Option<bool> = None;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('\\') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(err(format!("unterminated `${{` in {text:?} (write \\${{ for a literal)")));
        };
        let inner = after[..end].trim();
        let whole = out.is_empty() && after[end + 1..].is_empty();
        rest = &after[end + 1..];
        if inner == "assets" {
            let dir =
                assets_dir().ok_or_else(|| err("`${assets}` needs AFINAR_CACHE or HOME to be set".into()))?;
            out.push_str(&dir.to_string_lossy());
        } else if let Some(env) = inner.strip_prefix("env:") {
            let (name, default) = match env.split_once(',') {
                Some((n, d)) => (n.trim(), Some(d.trim())),
                None => (env.trim(), None),
            };
            if name.is_empty() {
                return Err(err(
                    "`${env:}` needs a variable name, as in ${env:NAME} or ${env:NAME,default}".into()
                ));
            }
            match (std::env::var(name).ok().filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(err(format!(
                        "environment variable {name} is not set (set it, or give a default: ${{env:{name},DEFAULT}})"
                    )))
                }
            }
        } else {
            let valid = !inner.is_empty()
                && inner
                    .split('.')
                    .all(|s| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_'));
            let target = if valid { lookup(src, inner) } else { None };
            let Some(target) = target else {
                return Err(err(format!(
                    "unknown reference `${{{inner}}}` (expected the name of another key of this config, env:NAME or assets)"
                )));
            };
            let Value::Scalar { text: t, plain: p } = &target.value else {
                return Err(err(format!("`${{{inner}}}` is {}, not a single value", target.describe())));
            };
            if target.is_null() {
                return Err(err(format!("`${{{inner}}}` is null")));
            }
            if stack.iter().any(|s| s == inner) {
                let cycle: Vec<&str> = stack.iter().map(String::as_str).chain([inner]).collect();
                return Err(err(format!("circular reference: {}", cycle.join(" -> "))));
            }
            stack.push(inner.to_string());
            let (value, p) = resolve(t, *p, &target.pos, inner, src, cx, stack)?;
            stack.pop();
            out.push_str(&value);
            if whole {
                typed_as = Some(p);
            }
        }
    }
    out.push_str(rest);
    Ok((out, typed_as.unwrap_or(plain)))
}
