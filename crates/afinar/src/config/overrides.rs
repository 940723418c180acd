//! Command-line overrides, torchtune style: `a.b=VALUE` sets a key (the value is YAML: a scalar,
//! `[x, y]` or `{k: v}`; empty means null), `~a.b` deletes one (an optional key then takes its
//! default). Sections on the way are created as needed. Keys the schema does not know are
//! reported later by the schema, naming the override.

use std::sync::Arc;

use super::error::{ConfigError, ConfigErrorKind as K, Location};
use super::schema::is_known_path;
use super::yaml::{self, Entry, Node, Pos, Value};

type Result<T> = std::result::Result<T, ConfigError>;

fn bad(ov: &str, key: Option<&str>, msg: impl Into<String>) -> ConfigError {
    ConfigError::new(K::BadOverride, Location::Override(ov.to_string()), key.map(str::to_string), msg)
}

/// Splits and checks a dotted key path.
fn key_path<'a>(ov: &str, path: &'a str) -> Result<Vec<&'a str>> {
    let parts: Vec<&str> = path.split('.').collect();
    let ok = |p: &&str| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    if !parts.iter().all(ok) {
        return Err(bad(
            ov,
            None,
            format!("`{path}` is not a key path (names joined by dots, like optimizer.lr)"),
        ));
    }
    Ok(parts)
}

/// Applies one override to the document's root mapping.
pub(crate) fn apply(root: &mut Node, ov: &str) -> Result<()> {
    if let Some(path) = ov.strip_prefix('~') {
        if path.contains('=') {
            return Err(bad(ov, None, "`~KEY` deletes a key and takes no value"));
        }
        return delete(root, ov, path);
    }
    let Some((path, value)) = ov.split_once('=') else {
        return Err(bad(ov, None, "expected KEY=VALUE to set a key, or ~KEY to delete one"));
    };
    let path = path.trim();
    let parts = key_path(ov, path)?;
    let origin: Arc<str> = Arc::from(ov);
    let pos = Pos::Override(origin.clone());
    let node = match yaml::parse(value, Some(&origin)) {
        Ok(Some(n)) => n,
        Ok(None) => Node::scalar("", true, pos.clone()),
        Err(e) => return Err(bad(ov, Some(path), format!("cannot read the value as YAML: {}", e.msg))),
    };
    let mut cur = root;
    for (depth, part) in parts.iter().enumerate() {
        let last = depth + 1 == parts.len();
        if cur.is_null() {
            *cur = Node::map(pos.clone());
        }
        let Value::Map(entries) = &mut cur.value else {
            let parent = parts[..depth].join(".");
            return Err(bad(
                ov,
                Some(path),
                format!("`{parent}` is a single value, not a section with keys"),
            ));
        };
        let idx = match entries.iter().position(|e| e.key == *part) {
            Some(i) => i,
            None => {
                let value = if last { node.clone() } else { Node::map(pos.clone()) };
                entries.push(Entry { key: part.to_string(), key_pos: pos.clone(), value });
                entries.len() - 1
            }
        };
        if last {
            entries[idx].value = node;
            return Ok(());
        }
        cur = &mut entries[idx].value;
    }
    Ok(())
}

fn delete(root: &mut Node, ov: &str, path: &str) -> Result<()> {
    let parts = key_path(ov, path)?;
    let mut cur = root;
    for (depth, part) in parts.iter().enumerate() {
        let Value::Map(entries) = &mut cur.value else {
            break;
        };
        let Some(idx) = entries.iter().position(|e| e.key == *part) else {
            break;
        };
        if depth + 1 == parts.len() {
            entries.remove(idx);
            return Ok(());
        }
        cur = &mut entries[idx].value;
    }
    // Not in the document: fine for a key the schema has (it keeps its default), an error otherwise.
    if is_known_path(&parts) {
        Ok(())
    } else {
        Err(ConfigError::new(
            K::UnknownKey,
            Location::Override(ov.to_string()),
            Some(path.to_string()),
            "unknown key: nothing to delete",
        ))
    }
}
