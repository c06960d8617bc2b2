//! Turns the `jsonschema` crate's errors into Kiln's stable, bounded report.

use std::cmp::Ordering;
use std::io;

use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use super::{MAX_ERRORS, ValidationError};

/// Longest message kept, in bytes. A `const` or `enum` in a user's schema, or a long property
/// name, can make the library's message arbitrarily long; the status must stay small.
const MAX_MESSAGE_LEN: usize = 300;

/// Longest rendering of a value from the config inside a message, in bytes.
const MAX_PREVIEW_LEN: usize = 64;

/// Converts, sorts, deduplicates and caps validation errors.
pub(super) fn collect<'i>(
    errors: impl Iterator<Item = jsonschema::ValidationError<'i>>,
) -> Vec<ValidationError> {
    let mut out = Vec::new();
    for error in errors {
        convert(&error, &mut out);
    }
    finish(out)
}

/// The report for a single error (a schema compile error).
pub(super) fn collect_one(error: &jsonschema::ValidationError<'_>) -> Vec<ValidationError> {
    let mut out = Vec::new();
    convert(error, &mut out);
    finish(out)
}

/// Sorts by path then message, removes duplicates (the same violation can be reached through
/// several subschemas, e.g. `allOf` branches) and caps the list at [`MAX_ERRORS`].
pub(super) fn finish(mut errors: Vec<ValidationError>) -> Vec<ValidationError> {
    errors
        .sort_by(|a, b| compare_pointers(&a.path, &b.path).then_with(|| a.message.cmp(&b.message)));
    errors.dedup();
    if errors.len() > MAX_ERRORS {
        // Keep the total at MAX_ERRORS so the status size bound holds, and say what was cut
        // rather than silently dropping errors: a user fixing the first 49 should know more
        // are coming.
        let omitted = errors.len() - (MAX_ERRORS - 1);
        errors.truncate(MAX_ERRORS - 1);
        errors.push(ValidationError {
            path: String::new(),
            message: format!(
                "{omitted} more error{} not listed (only the first {} are shown)",
                plural(omitted),
                MAX_ERRORS - 1
            ),
        });
    }
    errors
}

/// Appends the report entries for one library error.
fn convert(error: &jsonschema::ValidationError<'_>, out: &mut Vec<ValidationError>) {
    let location = error.instance_path();
    match error.kind() {
        // The library reports a missing property at its parent object; Kiln reports it where
        // the property should be, which is what a user looks for (`/generation: ...`).
        ValidationErrorKind::Required { property } => {
            let path = match property {
                Value::String(name) => location.join(name.as_str()).to_string(),
                _ => location.to_string(),
            };
            out.push(entry(path, error.to_string()));
        }
        // One entry per unexpected property, at the property's own pointer, so that each
        // can be found and the list stays sorted by where the problems are.
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
            for name in unexpected {
                out.push(entry(
                    location.join(name.as_str()).to_string(),
                    format!("{} is not an allowed property", preview_str(name)),
                ));
            }
        }
        // Likewise one entry per item beyond what a tuple schema (`items: [...]`, draft 7 and
        // earlier) allows, at the item's pointer.
        ValidationErrorKind::AdditionalItems { limit } => {
            let items = error
                .instance()
                .as_array()
                .map_or(&[][..], |items| &items[..]);
            for (index, item) in items.iter().enumerate().skip(*limit) {
                out.push(entry(
                    location.join(index).to_string(),
                    format!(
                        "{} is not allowed here (at most {limit} item{})",
                        preview(item),
                        plural(*limit)
                    ),
                ));
            }
        }
        ValidationErrorKind::PropertyNames { error: inner } => {
            let (path, name) = match inner.instance().as_ref() {
                Value::String(name) => {
                    (location.join(name.as_str()).to_string(), preview_str(name))
                }
                other => (location.to_string(), preview(other)),
            };
            out.push(entry(
                path,
                format!("invalid property name: {}", inner.masked_with(name)),
            ));
        }
        // "Not valid under any of the schemas" alone does not say what to fix: add why each
        // alternative failed (its first error). A user's schema `{"type": 12}` then gets
        // `(12 is not one of "array", …; 12 is not of type "array")`.
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            let mut message = error.masked_with(preview(error.instance())).to_string();
            let reasons: Vec<String> = context
                .iter()
                .filter_map(|branch| branch.first())
                .map(|reason| {
                    let text = reason.masked_with(preview(reason.instance())).to_string();
                    if reason.instance_path() == location {
                        text
                    } else {
                        format!("{}: {text}", reason.instance_path())
                    }
                })
                .collect();
            if !reasons.is_empty() {
                message = format!("{message} ({})", reasons.join("; "));
            }
            out.push(entry(location.to_string(), message));
        }
        // Everything else: the library's message, with the offending value abbreviated.
        _ => out.push(entry(
            location.to_string(),
            error.masked_with(preview(error.instance())).to_string(),
        )),
    }
}

fn entry(path: String, message: String) -> ValidationError {
    ValidationError {
        path,
        message: truncate(message, MAX_MESSAGE_LEN),
    }
}

/// A short rendering of a value for a message: the JSON itself when short, otherwise a
/// description (`an object with 12 properties`) or, for a string, its beginning.
pub(super) fn preview(value: &Value) -> String {
    match value {
        Value::String(s) => preview_str(s),
        Value::Array(items) => compact(value)
            .unwrap_or_else(|| format!("an array of {} item{}", items.len(), plural(items.len()))),
        Value::Object(map) => compact(value).unwrap_or_else(|| {
            let n = map.len();
            format!(
                "an object with {n} propert{}",
                if n == 1 { "y" } else { "ies" }
            )
        }),
        // Numbers, booleans and null are always short.
        _ => value.to_string(),
    }
}

/// A string as a JSON string literal, cut after [`MAX_PREVIEW_LEN`] bytes.
fn preview_str(s: &str) -> String {
    if s.len() <= MAX_PREVIEW_LEN {
        return Value::from(s).to_string();
    }
    let head = &s[..floor_char_boundary(s, MAX_PREVIEW_LEN)];
    let quoted = Value::from(head).to_string();
    // Put the ellipsis inside the quotes: `"abc…"` still reads as a (shortened) string.
    format!("{}…\"", &quoted[..quoted.len() - 1])
}

/// The compact JSON of a value if it fits in [`MAX_PREVIEW_LEN`] bytes. Serialisation stops
/// as soon as the limit is passed, so a large value costs nothing.
fn compact(value: &Value) -> Option<String> {
    let mut writer = LimitedWriter {
        buf: Vec::new(),
        limit: MAX_PREVIEW_LEN,
    };
    serde_json::to_writer(&mut writer, value).ok()?;
    String::from_utf8(writer.buf).ok()
}

struct LimitedWriter {
    buf: Vec<u8>,
    limit: usize,
}

impl io::Write for LimitedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            return Err(io::Error::other("value too long to quote"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn truncate(mut message: String, max: usize) -> String {
    if message.len() > max {
        let cut = floor_char_boundary(&message, max - '…'.len_utf8());
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// The largest index `<= index` that is a char boundary of `s` (`str::floor_char_boundary`
/// is not stable on our MSRV).
fn floor_char_boundary(s: &str, index: usize) -> usize {
    if index >= s.len() {
        return s.len();
    }
    (0..=index)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Orders JSON pointers segment by segment, array indices numerically, so that
/// `/children/2` sorts before `/children/10` and a parent before its children.
pub(super) fn compare_pointers(a: &str, b: &str) -> Ordering {
    let mut left = a.split('/');
    let mut right = b.split('/');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => match compare_segments(x, y) {
                Ordering::Equal => {}
                unequal => return unequal,
            },
        }
    }
}

fn compare_segments(x: &str, y: &str) -> Ordering {
    match (x.parse::<u64>(), y.parse::<u64>()) {
        // The string tie-break keeps the order total for `01` vs `1` (object keys can be both).
        (Ok(m), Ok(n)) => m.cmp(&n).then_with(|| x.cmp(y)),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => x.cmp(y),
    }
}
