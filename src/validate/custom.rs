//! User-supplied schemas (`spec.schemaRef`): compiled offline, cached by content hash.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use jsonschema::{Draft, Validator};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{ValidationError, report};

/// How many compiled schemas (or compile errors) the process keeps. A namespace usually has a
/// handful of schemas shared by many drafts; the bound keeps a stream of distinct schema texts
/// (every edit of a ConfigMap is one) from growing memory without limit.
const CACHE_CAPACITY: usize = 32;

/// How many of a broken schema's problems its error message lists.
const MAX_LISTED_PROBLEMS: usize = 3;

/// A user's JSON Schema, compiled and ready to check configs.
///
/// Cheap to clone (the compiled form is shared).
#[derive(Clone)]
pub struct CustomSchema {
    inner: Arc<Compiled>,
}

struct Compiled {
    validator: Validator,
    draft: Draft,
    digest: String,
}

impl fmt::Debug for CustomSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomSchema")
            .field("draft", &self.draft())
            .field("digest", &self.digest())
            .finish_non_exhaustive()
    }
}

impl CustomSchema {
    /// Compiles a schema from its JSON text (the value of a ConfigMap key).
    ///
    /// - The text must be JSON (YAML is not accepted) and its root a JSON object.
    /// - The draft comes from `$schema`: draft 7 and 2020-12, and also draft 4, draft 6 and
    ///   2019-09 (each `http` or `https`, with or without the trailing `#`). Without
    ///   `$schema` the schema is read as 2020-12. Any other `$schema` is an error.
    /// - The schema is checked against its draft's meta-schema, so a misspelt keyword value
    ///   (`{"type": 12}`) is an error here rather than a schema that silently accepts
    ///   everything.
    /// - Nothing is ever fetched: a `$ref` to anything outside the document (an `http(s)`
    ///   URL, a file, a relative URI) is an error. References within the document (`#/$defs/…`,
    ///   `#/definitions/…`, anchors, `$id`-identified subschemas) and to the standard
    ///   meta-schemas work.
    /// - `format` is checked as the draft says (asserted for draft 7 and earlier, an annotation
    ///   only for 2019-09 and 2020-12).
    ///
    /// Results, errors included, are cached by the SHA-256 of the text, so checking many
    /// drafts against one ConfigMap compiles its schema once. Never panics and never blocks
    /// on I/O, so it may be called from async code.
    pub fn compile(text: &str) -> Result<CustomSchema, SchemaError> {
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if let Some(hit) = CACHE
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&digest)
        {
            return hit;
        }
        // Compile outside the lock: a large schema takes milliseconds, and other reconciles
        // should not queue behind it. Two threads racing on the same text both compile and
        // store equal results, which is harmless.
        let result = compile_uncached(text, hex::encode(digest));
        CACHE
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest, result.clone());
        result
    }

    /// Checks `config` and returns every violation, sorted by path and capped at
    /// [`MAX_ERRORS`](super::MAX_ERRORS); an empty list means the config is valid.
    pub fn validate(&self, config: &Value) -> Vec<ValidationError> {
        report::collect(self.inner.validator.iter_errors(config))
    }

    /// The draft the schema was read as: `"draft-04"`, `"draft-06"`, `"draft-07"`,
    /// `"2019-09"` or `"2020-12"`.
    pub fn draft(&self) -> &'static str {
        draft_name(self.inner.draft)
    }

    /// Hex SHA-256 of the schema text, e.g. to record in a status which schema version a
    /// config was checked against.
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }
}

/// Why a user's schema cannot be used. Each message says what to change.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum SchemaError {
    /// The text does not parse as JSON.
    #[error("the schema is not valid JSON ({reason}); Kiln reads schemas as JSON, not YAML")]
    NotJson {
        /// The parser's message, with line and column.
        reason: String,
    },
    /// The text is JSON, but its root is not an object.
    #[error("the schema must be a JSON object, but it is {found}")]
    NotAnObject {
        /// What the root is: `an array`, `a string`, `a boolean`, ….
        found: &'static str,
    },
    /// `$schema` names a meta-schema Kiln does not know.
    #[error(
        "the schema's \"$schema\" is {uri}, which is not a supported draft: use \
         \"https://json-schema.org/draft/2020-12/schema\" or \
         \"http://json-schema.org/draft-07/schema#\", or omit \"$schema\" for 2020-12"
    )]
    UnsupportedDraft {
        /// The `$schema` value, quoted and shortened.
        uri: String,
    },
    /// A `$ref` points outside the schema document.
    #[error(
        "the schema refers to {uri:?}, which Kiln does not fetch (remote and file references \
         are disabled): copy the referenced schema under \"$defs\" and refer to it as \
         \"#/$defs/<name>\""
    )]
    ExternalReference {
        /// The reference as resolved by the compiler.
        uri: String,
    },
    /// The schema breaks its draft's rules: a keyword with a wrong value, a reference to a
    /// missing part of the document, a `pattern` that is not a regular expression.
    #[error("the schema is not a valid {draft} JSON Schema: {}", list_problems(.problems))]
    Invalid {
        /// The draft the schema was read as.
        draft: &'static str,
        /// Where in the schema (JSON pointers into the schema) and what, sorted and capped
        /// like validation errors.
        problems: Vec<ValidationError>,
    },
}

impl SchemaError {
    /// A stable, low-cardinality label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SchemaError::NotJson { .. } => "not_json",
            SchemaError::NotAnObject { .. } => "not_an_object",
            SchemaError::UnsupportedDraft { .. } => "unsupported_draft",
            SchemaError::ExternalReference { .. } => "external_reference",
            SchemaError::Invalid { .. } => "invalid_schema",
        }
    }
}

fn list_problems(problems: &[ValidationError]) -> String {
    let mut text = problems
        .iter()
        .take(MAX_LISTED_PROBLEMS)
        .map(|problem| {
            if problem.path.is_empty() {
                problem.message.clone()
            } else {
                format!("at {}: {}", problem.path, problem.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > MAX_LISTED_PROBLEMS {
        let more = problems.len() - MAX_LISTED_PROBLEMS;
        text.push_str(&format!(" (and {more} more)"));
    }
    text
}

fn compile_uncached(text: &str, digest: String) -> Result<CustomSchema, SchemaError> {
    if text.trim().is_empty() {
        return Err(SchemaError::NotJson {
            reason: "the text is empty".to_owned(),
        });
    }
    let schema: Value = serde_json::from_str(text).map_err(|e| SchemaError::NotJson {
        reason: e.to_string(),
    })?;
    let Value::Object(root) = &schema else {
        return Err(SchemaError::NotAnObject {
            found: type_phrase(&schema),
        });
    };
    let draft = match root.get("$schema") {
        // The contract: 2020-12 unless the schema says otherwise.
        None => Draft::Draft202012,
        Some(Value::String(uri)) => match Draft::from_schema_uri(uri) {
            // `Unknown` would make the compiler look the meta-schema up, i.e. fetch it.
            Draft::Unknown => {
                return Err(SchemaError::UnsupportedDraft {
                    uri: report::preview(&Value::from(uri.as_str())),
                });
            }
            known => known,
        },
        Some(other) => {
            return Err(SchemaError::Invalid {
                draft: draft_name(Draft::Draft202012),
                problems: vec![ValidationError {
                    path: "/$schema".to_owned(),
                    message: format!("{} is not of type \"string\"", report::preview(other)),
                }],
            });
        }
    };

    // The compiler stops at the first meta-schema violation; checking against the
    // meta-schema first lists them all, so a user fixes the schema in one round.
    let problems = report::collect(meta_validator(draft).iter_errors(&schema));
    if !problems.is_empty() {
        return Err(SchemaError::Invalid {
            draft: draft_name(draft),
            problems,
        });
    }

    let validator = jsonschema::options()
        .with_draft(draft)
        // Never fetch: no network from inside the operator, and no waiting on a remote
        // server during a reconcile. (The crate's HTTP and file resolvers are also left out
        // of the build, see Cargo.toml; this makes the intent explicit.)
        .offline()
        .build(&schema)
        .map_err(|error| compile_error(draft, &error))?;
    Ok(CustomSchema {
        inner: Arc::new(Compiled {
            validator,
            draft,
            digest,
        }),
    })
}

fn compile_error(draft: Draft, error: &jsonschema::ValidationError<'_>) -> SchemaError {
    use jsonschema::error::ValidationErrorKind;
    let problems = match error.kind() {
        ValidationErrorKind::Referencing(jsonschema::ReferencingError::Unretrievable {
            uri,
            ..
        }) => return SchemaError::ExternalReference { uri: uri.clone() },
        // The library's text ("Pointer '/$defs/x' does not exist") does not say it is about
        // a `$ref`.
        ValidationErrorKind::Referencing(reference) => vec![ValidationError {
            path: error.instance_path().to_string(),
            message: format!("a \"$ref\" cannot be resolved: {reference}"),
        }],
        _ => report::collect_one(error),
    };
    SchemaError::Invalid {
        draft: draft_name(draft),
        problems,
    }
}

fn meta_validator(draft: Draft) -> jsonschema::meta::MetaValidator<'static> {
    match draft {
        Draft::Draft4 => jsonschema::draft4::meta::validator(),
        Draft::Draft6 => jsonschema::draft6::meta::validator(),
        Draft::Draft7 => jsonschema::draft7::meta::validator(),
        Draft::Draft201909 => jsonschema::draft201909::meta::validator(),
        _ => jsonschema::draft202012::meta::validator(),
    }
}

fn draft_name(draft: Draft) -> &'static str {
    match draft {
        Draft::Draft4 => "draft-04",
        Draft::Draft6 => "draft-06",
        Draft::Draft7 => "draft-07",
        Draft::Draft201909 => "2019-09",
        _ => "2020-12",
    }
}

fn type_phrase(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(|| Mutex::new(Cache::default()));

/// A small map with first-in-first-out eviction: simple, and good enough for a working set
/// far below the capacity.
#[derive(Default)]
struct Cache {
    entries: HashMap<[u8; 32], Result<CustomSchema, SchemaError>>,
    order: VecDeque<[u8; 32]>,
}

impl Cache {
    fn get(&self, digest: &[u8; 32]) -> Option<Result<CustomSchema, SchemaError>> {
        self.entries.get(digest).cloned()
    }

    fn insert(&mut self, digest: [u8; 32], result: Result<CustomSchema, SchemaError>) {
        if self.entries.insert(digest, result).is_some() {
            return;
        }
        self.order.push_back(digest);
        while self.order.len() > CACHE_CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiling_the_same_text_twice_reuses_the_compiled_schema() {
        let text = r#"{"required": ["compiling_the_same_text_twice"]}"#;
        let first = CustomSchema::compile(text).expect("compiles");
        let second = CustomSchema::compile(text).expect("compiles");
        assert!(Arc::ptr_eq(&first.inner, &second.inner));
        let other = CustomSchema::compile(&format!("{text} ")).expect("compiles");
        assert!(!Arc::ptr_eq(&first.inner, &other.inner));
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = Cache::default();
        for i in 0..(CACHE_CAPACITY + 10) {
            let text = format!(r#"{{"maxLength": {i}}}"#);
            let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
            cache.insert(digest, compile_uncached(&text, hex::encode(digest)));
            // Re-inserting an entry neither grows the cache nor disturbs the order.
            cache.insert(digest, compile_uncached(&text, hex::encode(digest)));
        }
        assert_eq!(cache.entries.len(), CACHE_CAPACITY);
        assert_eq!(cache.order.len(), CACHE_CAPACITY);
        let oldest: [u8; 32] = Sha256::digest(br#"{"maxLength": 0}"#).into();
        assert!(cache.get(&oldest).is_none());
        let newest: [u8; 32] =
            Sha256::digest(format!(r#"{{"maxLength": {}}}"#, CACHE_CAPACITY + 9).as_bytes()).into();
        assert!(cache.get(&newest).is_some());
    }
}
