//! Every error of a configuration file in one run, in file order.
//!
//! serde stops at the first error, and toml hands the keys of a table to
//! serde in sorted order, so a plain parse reports one error per run and not
//! necessarily the first in the file. [`parse_all`] repeats the parse: after
//! each error it blanks the offending entry (the key and its value, or one
//! item of a list) with spaces, which keeps every byte offset, line and
//! column of the rest of the file, and parses again, until the file parses.
//! The errors are then sorted by position.
//!
//! A TOML syntax error cannot be repaired this way: the syntax errors (all
//! of them, from toml's recovering parser) are the whole report then.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::ConfigError;
use crate::parse;

/// At most this many errors are collected (each costs one parse).
const MAX_ERRORS: usize = 100;

/// What [`parse_all`] found: the value of the repaired file (every
/// offending entry removed, so it holds defaults there) and the errors, in
/// file order. The value is only meaningful for further checks, never to
/// run with, unless `errors` is empty.
pub(crate) struct Parsed<T> {
    pub value: T,
    pub errors: Vec<ConfigError>,
    /// Dotted keys of the entries with an error (`server.listen[1]`,
    /// `client`), so that later checks can leave them alone.
    pub failed_keys: Vec<String>,
}

/// Deserializes `text` (the contents of `path`), collecting every error
/// (see the module documentation).
pub(crate) fn parse_all<T>(text: &str, path: &Path) -> Parsed<T>
where
    T: serde::de::DeserializeOwned + Default,
{
    let (_, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let errors = syntax
            .iter()
            .map(|e| parse::toml_error(path, text, e))
            .collect();
        return Parsed {
            value: T::default(),
            errors: sorted(errors),
            failed_keys: Vec::new(),
        };
    }
    let mut work = text.to_string();
    let mut errors = Vec::new();
    let mut failed_keys = Vec::new();
    // Lists one of whose items was reported: an error about the list as a
    // whole afterwards (now empty, say) is a consequence, not news.
    let mut lists_with_bad_items: Vec<usize> = Vec::new();
    loop {
        let err = match toml::from_str::<T>(&work) {
            Ok(value) => {
                return Parsed {
                    value,
                    errors: sorted(errors),
                    failed_keys,
                }
            }
            Err(e) => e,
        };
        // Offsets are the same in both texts; keys and positions are taken
        // from the original (a removed list item does not renumber the
        // next, and blanked multi-byte characters do not shift columns).
        let reported = parse::toml_error(path, text, &err);
        let Some(span) = err.span() else {
            errors.push(reported);
            break;
        };
        let Some(found) = DeTable::parse(&work)
            .ok()
            .and_then(|doc| culprit(&work, doc.get_ref(), span.start, &mut String::new()))
        else {
            errors.push(reported);
            break;
        };
        let consequence = found.item_of.is_none() && lists_with_bad_items.contains(&span.start);
        if !consequence {
            errors.push(reported);
            failed_keys.push(found.key);
        }
        if let Some(list) = found.item_of {
            lists_with_bad_items.push(list);
        }
        if !blank(&mut work, found.region) || errors.len() >= MAX_ERRORS {
            break;
        }
    }
    // Stopped without a clean parse: report what was found.
    Parsed {
        value: T::default(),
        errors: sorted(errors),
        failed_keys,
    }
}

/// Errors in file order (errors without a position first).
fn sorted(mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
    errors.sort_by_key(|e| e.location);
    errors.dedup();
    errors
}

/// The entry to remove for an error at `offset`.
struct Culprit {
    /// Its byte range: `key = value`, a whole `[section]`, or one list item
    /// with its comma.
    region: Range<usize>,
    /// Its dotted key.
    key: String,
    /// For a list item: where the list starts.
    item_of: Option<usize>,
}

/// Finds the innermost entry of `table` at `offset`.
fn culprit(text: &str, table: &DeTable<'_>, offset: usize, path: &mut String) -> Option<Culprit> {
    for (key, value) in table.iter() {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.get_ref());
        let whole = key.span().start.min(value.span().start)..extent(value);
        let on_key = contains(&key.span(), offset);
        if on_key || contains(&whole, offset) {
            if !on_key {
                // An inline table (`{ a = 1, b = 2 }`) goes as a whole:
                // removing one of its entries could leave a stray comma.
                let inline = text.as_bytes().get(value.span().start) == Some(&b'{');
                match value.get_ref() {
                    DeValue::Table(inner) if !inline => {
                        if let Some(c) = culprit(text, inner, offset, path) {
                            return Some(c);
                        }
                    }
                    DeValue::Array(items) if value.span().start != offset => {
                        // An array of tables (`[[policy.class]]`): the
                        // entry inside the table at the offset.
                        for (i, item) in items.iter().enumerate() {
                            let DeValue::Table(inner) = item.get_ref() else {
                                continue;
                            };
                            let len = path.len();
                            path.push_str(&format!("[{i}]"));
                            if let Some(c) = culprit(text, inner, offset, path) {
                                return Some(c);
                            }
                            path.truncate(len);
                        }
                        let list = value.span().start;
                        if let Some(c) = list_item(text, items.iter(), list, offset, path) {
                            return Some(c);
                        }
                    }
                    _ => {}
                }
            }
            return Some(Culprit {
                region: whole,
                key: path.clone(),
                item_of: None,
            });
        }
        path.truncate(len);
    }
    None
}

/// The item of a list (a scalar, so that removing it leaves a valid list)
/// at `offset`, with the comma after it.
fn list_item<'a, 'i: 'a>(
    text: &str,
    items: impl Iterator<Item = &'a Spanned<DeValue<'i>>>,
    list: usize,
    offset: usize,
    path: &str,
) -> Option<Culprit> {
    for (i, item) in items.enumerate() {
        if matches!(item.get_ref(), DeValue::Table(_) | DeValue::Array(_)) {
            continue;
        }
        let span = item.span();
        if !contains(&span, offset) {
            continue;
        }
        let rest = &text[span.end..];
        let after = rest.len() - rest.trim_start().len();
        let end = if rest.trim_start().starts_with(',') {
            span.end + after + 1
        } else {
            span.end
        };
        return Some(Culprit {
            region: span.start..end,
            key: format!("{path}[{i}]"),
            item_of: Some(list),
        });
    }
    None
}

/// Where a value ends: a `[section]`'s span is its header only, so its end
/// is the end of its last entry.
fn extent(value: &Spanned<DeValue<'_>>) -> usize {
    let mut end = value.span().end;
    match value.get_ref() {
        DeValue::Table(t) => {
            for (k, v) in t.iter() {
                end = end.max(k.span().end).max(extent(v));
            }
        }
        // An array of tables (`[[policy.class]]`) is spread like sections.
        DeValue::Array(items) => {
            for item in items {
                end = end.max(extent(item));
            }
        }
        _ => {}
    }
    end
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

/// Replaces `region` of `text` by spaces (newlines stay); false if it
/// already was blank (no progress).
fn blank(text: &mut String, region: Range<usize>) -> bool {
    let end = region.end.min(text.len());
    let start = region.start.min(end);
    let slice = &text[start..end];
    if slice.bytes().all(|b| b.is_ascii_whitespace()) {
        return false;
    }
    let spaces: String = slice
        .bytes()
        .map(|b| if b == b'\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(start..end, &spaces);
    true
}
