use serde_json::{Value, json};

use super::*;

const CONTENT_FULL: &str = include_str!("testdata/content-full.json");
const CONTENT_MINIMAL: &str = include_str!("testdata/content-minimal.json");
const ARTIFACT_FULL: &str = include_str!("testdata/artifact-full.json");
const ARTIFACT_MINIMAL: &str = include_str!("testdata/artifact-minimal.json");

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("test fixture is JSON")
}

fn err(path: &str, message: &str) -> ValidationError {
    ValidationError {
        path: path.to_owned(),
        message: message.to_owned(),
    }
}

fn content() -> Value {
    parse(CONTENT_FULL)
}

fn artifact() -> Value {
    parse(ARTIFACT_FULL)
}

/// Removes the value at a JSON pointer; panics if there is none (a broken test).
fn remove(config: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let target = config.pointer_mut(parent).expect("parent exists");
    match target {
        Value::Object(map) => {
            map.remove(key).expect("key exists");
        }
        Value::Array(items) => {
            items.remove(key.parse::<usize>().expect("index"));
        }
        _ => panic!("{parent} is not a container"),
    }
}

fn set(config: &mut Value, pointer: &str, value: Value) {
    *config.pointer_mut(pointer).expect("pointer exists") = value;
}

// ---- built-in schemas: real-world configs pass ----

#[test]
fn builtin_schemas_are_valid_2020_12_schemas() {
    for schema in BuiltinSchema::ALL {
        let text = schema.schema_text();
        let value = parse(text);
        assert_eq!(
            value["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{schema:?}"
        );
        assert!(
            jsonschema::draft202012::meta::is_valid(&value),
            "{schema:?}"
        );
        // Also accepted by the user-schema path, with the same verdicts.
        let custom = CustomSchema::compile(text).expect("built-in schema compiles");
        assert_eq!(custom.draft(), "2020-12");
        assert_eq!(
            custom.validate(&content()),
            schema.validate(&content()),
            "{schema:?}"
        );
    }
}

#[test]
fn real_world_content_configs_pass() {
    for text in [CONTENT_FULL, CONTENT_MINIMAL] {
        let errors = validate_builtin(BuiltinSchema::Content, &parse(text));
        assert_eq!(errors, vec![], "{text}");
    }
}

#[test]
fn real_world_artifact_configs_pass() {
    for text in [ARTIFACT_FULL, ARTIFACT_MINIMAL] {
        let errors = validate_builtin(BuiltinSchema::Artifact, &parse(text));
        assert_eq!(errors, vec![], "{text}");
    }
}

#[test]
fn full_fixtures_exercise_every_optional_section() {
    let content = content();
    for field in [
        "type",
        "schemaRef",
        "metadata",
        "instructions",
        "inputs",
        "elements",
        "validation",
        "state",
        "evolution",
    ] {
        assert!(
            content.get(field).is_some(),
            "content fixture lacks {field}"
        );
        assert!(
            artifact().get(field).is_some(),
            "artifact fixture lacks {field}"
        );
    }
    // Nested patterns and nested children are part of the real format.
    assert!(
        content
            .pointer("/generation/patterns/1/patterns/0/type")
            .is_some()
    );
    assert!(
        artifact()
            .pointer("/content/children/1/content/children/0/id")
            .is_some()
    );
}

#[test]
fn type_is_optional() {
    let mut config = content();
    remove(&mut config, "/type");
    assert_eq!(validate_builtin(BuiltinSchema::Content, &config), vec![]);
    let mut config = artifact();
    remove(&mut config, "/type");
    assert_eq!(validate_builtin(BuiltinSchema::Artifact, &config), vec![]);
}

#[test]
fn config_type_names() {
    assert_eq!(
        BuiltinSchema::from_config_type("content"),
        Some(BuiltinSchema::Content)
    );
    assert_eq!(
        BuiltinSchema::from_config_type("artifact"),
        Some(BuiltinSchema::Artifact)
    );
    assert_eq!(BuiltinSchema::from_config_type("Content"), None);
    assert_eq!(BuiltinSchema::Artifact.as_str(), "artifact");
}

// ---- built-in content schema: failures ----

#[test]
fn missing_generation_reads_as_in_the_design() {
    let mut config = content();
    remove(&mut config, "/generation");
    let errors = validate_builtin(BuiltinSchema::Content, &config);
    assert_eq!(
        errors,
        vec![err("/generation", r#""generation" is a required property"#)]
    );
    assert_eq!(
        format!("{}: {}", errors[0].path, errors[0].message),
        r#"/generation: "generation" is a required property"#
    );
    assert_eq!(
        errors[0].to_string(),
        r#"/generation: "generation" is a required property"#
    );
}

#[test]
fn missing_id() {
    let mut config = content();
    remove(&mut config, "/id");
    assert_eq!(
        validate_builtin(BuiltinSchema::Content, &config),
        vec![err("/id", r#""id" is a required property"#)]
    );
}

#[test]
fn empty_object_lists_both_required_fields_sorted() {
    assert_eq!(
        validate_builtin(BuiltinSchema::Content, &json!({})),
        vec![
            err("/generation", r#""generation" is a required property"#),
            err("/id", r#""id" is a required property"#),
        ]
    );
}

#[test]
fn id_must_be_a_non_empty_string() {
    let mut config = content();
    set(&mut config, "/id", json!(""));
    assert_eq!(
        validate_builtin(BuiltinSchema::Content, &config),
        vec![err("/id", r#""" is shorter than 1 character"#)]
    );
    set(&mut config, "/id", json!(42));
    assert_eq!(
        validate_builtin(BuiltinSchema::Content, &config),
        vec![err("/id", r#"42 is not of type "string""#)]
    );
}

#[test]
fn missing_patterns() {
    let mut config = content();
    remove(&mut config, "/generation/patterns");
    assert_eq!(
        validate_builtin(BuiltinSchema::Content, &config),
        vec![err(
            "/generation/patterns",
            r#""patterns" is a required property"#
        )]
    );
}

#[test]
fn empty_patterns() {
    let mut config = content();
    set(&mut config, "/generation/patterns", json!([]));
    assert_eq!(
        validate_builtin(BuiltinSchema::Content, &config),
        vec![err("/generation/patterns", "[] has less than 1 item")]
    );
}

#[test]
fn pattern_without_type() {
    let mut config = content();
    remove(&mut config, "/generation/patterns/3/type");
    assert_eq!(
        validate_builtin(BuiltinSchema::Content, &config),
        vec![err(
            "/generation/patterns/3/type",
            r#""type" is a required property"#
        )]
    );
}

#[test]
fn nested_patterns_are_free_form() {
    // Only the top-level patterns are Kiln's contract; what a pattern contains is the
    // generator's business.
    let mut config = content();
    remove(&mut config, "/generation/patterns/1/patterns/0/type");
    assert_eq!(validate_builtin(BuiltinSchema::Content, &config), vec![]);
}

#[test]
fn malformed_patterns() {
    let mut config = content();
    set(&mut config, "/generation/patterns/0", json!("outline"));
    set(&mut config, "/generation/patterns/2/type", json!(7));
    assert_eq!(
        validate_builtin(BuiltinSchema::Content, &config),
        vec![
            err(
                "/generation/patterns/0",
                r#""outline" is not of type "object""#
            ),
            err(
                "/generation/patterns/2/type",
                r#"7 is not of type "string""#
            ),
        ]
    );
    set(
        &mut config,
        "/generation/patterns",
        json!({"type": "outline"}),
    );
    assert_eq!(
        validate_builtin(BuiltinSchema::Content, &config),
        vec![err(
            "/generation/patterns",
            r#"{"type":"outline"} is not of type "array""#
        )]
    );
    set(&mut config, "/generation", json!("patterns"));
    assert_eq!(
        validate_builtin(BuiltinSchema::Content, &config),
        vec![err("/generation", r#""patterns" is not of type "object""#)]
    );
}

#[test]
fn content_type_must_be_content() {
    let mut config = content();
    set(&mut config, "/type", json!("artifact"));
    assert_eq!(
        validate_builtin(BuiltinSchema::Content, &config),
        vec![err("/type", r#""content" was expected"#)]
    );
}

#[test]
fn config_must_be_an_object() {
    assert_eq!(
        validate_builtin(BuiltinSchema::Content, &json!(["id"])),
        vec![err("", r#"["id"] is not of type "object""#)]
    );
}

#[test]
fn several_errors_are_all_listed_in_path_order() {
    let mut config = content();
    set(&mut config, "/type", json!("blog"));
    remove(&mut config, "/id");
    remove(&mut config, "/generation/patterns/4/type");
    set(&mut config, "/generation/patterns/0/type", json!(""));
    assert_eq!(
        validate_builtin(BuiltinSchema::Content, &config),
        vec![
            err(
                "/generation/patterns/0/type",
                r#""" is shorter than 1 character"#
            ),
            err(
                "/generation/patterns/4/type",
                r#""type" is a required property"#
            ),
            err("/id", r#""id" is a required property"#),
            err("/type", r#""content" was expected"#),
        ]
    );
}

// ---- built-in artifact schema: failures ----

#[test]
fn artifact_missing_id() {
    let mut config = artifact();
    remove(&mut config, "/id");
    assert_eq!(
        validate_builtin(BuiltinSchema::Artifact, &config),
        vec![err("/id", r#""id" is a required property"#)]
    );
}

#[test]
fn artifact_type_must_be_artifact() {
    let mut config = artifact();
    set(&mut config, "/type", json!("content"));
    assert_eq!(
        validate_builtin(BuiltinSchema::Artifact, &config),
        vec![err("/type", r#""artifact" was expected"#)]
    );
}

#[test]
fn artifact_children_need_an_id() {
    let mut config = artifact();
    remove(&mut config, "/content/children/1/id");
    remove(&mut config, "/content/children/3/id");
    assert_eq!(
        validate_builtin(BuiltinSchema::Artifact, &config),
        vec![
            err("/content/children/1/id", r#""id" is a required property"#),
            err("/content/children/3/id", r#""id" is a required property"#),
        ]
    );
}

#[test]
fn artifact_children_shape() {
    let mut config = artifact();
    set(&mut config, "/content/children/0", json!("blog"));
    set(&mut config, "/content/children/2/id", json!(""));
    assert_eq!(
        validate_builtin(BuiltinSchema::Artifact, &config),
        vec![
            err("/content/children/0", r#""blog" is not of type "object""#),
            err(
                "/content/children/2/id",
                r#""" is shorter than 1 character"#
            ),
        ]
    );
    set(&mut config, "/content/children", json!({"id": "blog"}));
    assert_eq!(
        validate_builtin(BuiltinSchema::Artifact, &config),
        vec![err(
            "/content/children",
            r#"{"id":"blog"} is not of type "array""#
        )]
    );
}

#[test]
fn artifact_children_are_optional() {
    let mut config = artifact();
    remove(&mut config, "/content/children");
    assert_eq!(validate_builtin(BuiltinSchema::Artifact, &config), vec![]);
    assert_eq!(
        validate_builtin(
            BuiltinSchema::Artifact,
            &json!({"id": "a", "content": {"children": []}})
        ),
        vec![]
    );
}

// ---- the report: order, duplicates, size ----

#[test]
fn errors_are_capped_with_a_final_count() {
    let patterns: Vec<Value> = (0..60).map(|i| json!({"name": format!("p{i}")})).collect();
    let config = json!({"id": "many", "generation": {"patterns": patterns}});
    let errors = validate_builtin(BuiltinSchema::Content, &config);
    assert_eq!(errors.len(), MAX_ERRORS);
    // Array indices sort numerically: 0, 1, 2, …, 48, not 0, 1, 10, 11, ….
    for (i, error) in errors[..MAX_ERRORS - 1].iter().enumerate() {
        assert_eq!(
            *error,
            err(
                &format!("/generation/patterns/{i}/type"),
                r#""type" is a required property"#
            )
        );
    }
    assert_eq!(
        errors[MAX_ERRORS - 1],
        err(
            "",
            "11 more errors not listed (only the first 49 are shown)"
        )
    );
}

#[test]
fn exactly_max_errors_are_not_capped() {
    let patterns: Vec<Value> = (0..MAX_ERRORS).map(|_| json!({})).collect();
    let config = json!({"id": "many", "generation": {"patterns": patterns}});
    let errors = validate_builtin(BuiltinSchema::Content, &config);
    assert_eq!(errors.len(), MAX_ERRORS);
    assert_eq!(errors[MAX_ERRORS - 1].path, "/generation/patterns/49/type");
}

#[test]
fn pointer_order() {
    use super::report::compare_pointers as cmp;
    use std::cmp::Ordering::*;
    assert_eq!(cmp("", "/a"), Less);
    assert_eq!(cmp("/a", "/a/b"), Less);
    assert_eq!(cmp("/a/2", "/a/10"), Less);
    assert_eq!(cmp("/a/10/x", "/a/9/y"), Greater);
    assert_eq!(cmp("/a/9", "/a/b"), Less);
    assert_eq!(cmp("/a/01", "/a/1"), Less);
    assert_eq!(cmp("/a/1", "/a/1"), Equal);
}

#[test]
fn duplicates_are_removed() {
    let schema = CustomSchema::compile(
        r#"{"allOf": [{"required": ["name"]}, {"required": ["name"]}], "required": ["name"]}"#,
    )
    .expect("compiles");
    assert_eq!(
        schema.validate(&json!({})),
        vec![err("/name", r#""name" is a required property"#)]
    );
}

#[test]
fn large_values_are_not_copied_into_messages() {
    let schema = CustomSchema::compile(
        r#"{"properties": {
            "generation": {"type": "array"},
            "tags": {"maxItems": 1},
            "type": {"type": "integer"}
        }}"#,
    )
    .expect("compiles");
    let big_object: serde_json::Map<String, Value> = (0..500)
        .map(|i| (format!("key{i}"), json!("x".repeat(100))))
        .collect();
    let config = json!({
        "generation": Value::Object(big_object),
        "tags": vec!["tag"; 300],
        // Two bytes per char: the cut must fall on a char boundary.
        "type": "é".repeat(5000),
    });
    let shortened = format!(r#""{}…" is not of type "integer""#, "é".repeat(32));
    assert_eq!(
        schema.validate(&config),
        vec![
            err(
                "/generation",
                r#"an object with 500 properties is not of type "array""#
            ),
            err("/tags", "an array of 300 items has more than 1 item"),
            err("/type", &shortened),
        ]
    );
}

#[test]
fn long_messages_are_cut() {
    let expected = "y".repeat(1000);
    let schema = CustomSchema::compile(&json!({"const": expected}).to_string()).expect("compiles");
    let errors = schema.validate(&json!("n"));
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].message.len() <= 300,
        "{}",
        errors[0].message.len()
    );
    assert!(errors[0].message.starts_with(r#""yyy"#));
    assert!(errors[0].message.ends_with('…'));
}

#[test]
fn validation_is_deterministic() {
    let mut config = artifact();
    remove(&mut config, "/id");
    set(
        &mut config,
        "/content/children",
        json!([{}, {}, 3, {"id": 1}]),
    );
    let first = validate_builtin(BuiltinSchema::Artifact, &config);
    assert_eq!(first.len(), 5);
    for _ in 0..5 {
        assert_eq!(validate_builtin(BuiltinSchema::Artifact, &config), first);
    }
}

#[test]
fn validation_error_round_trips_through_json() {
    let error = err("/generation", r#""generation" is a required property"#);
    let text = serde_json::to_string(&error).expect("serialises");
    assert_eq!(
        text,
        r#"{"path":"/generation","message":"\"generation\" is a required property"}"#
    );
    assert_eq!(
        serde_json::from_str::<ValidationError>(&text).expect("parses"),
        error
    );
    assert_eq!(err("", "x").to_string(), "x");
}

// ---- custom schemas ----

const DRAFT7_SCHEMA: &str = r##"{
  "$schema": "http://json-schema.org/draft-07/schema#",
  "title": "Newsletter config",
  "type": "object",
  "required": ["id", "sender", "sections"],
  "additionalProperties": false,
  "definitions": {
    "section": {
      "type": "object",
      "required": ["title"],
      "properties": {
        "title": {"type": "string", "maxLength": 40},
        "weight": {"type": "number", "minimum": 0, "maximum": 1}
      }
    }
  },
  "properties": {
    "id": {"type": "string", "pattern": "^[a-z0-9-]+$"},
    "sender": {"type": "string", "format": "email"},
    "frequency": {"enum": ["daily", "weekly", "monthly"]},
    "sections": {"type": "array", "items": {"$ref": "#/definitions/section"}, "minItems": 1},
    "tags": {"type": "array", "items": [{"type": "string"}], "additionalItems": false}
  },
  "dependencies": {"frequency": ["sender"]}
}"##;

#[test]
fn custom_draft7_schema() {
    let schema = CustomSchema::compile(DRAFT7_SCHEMA).expect("compiles");
    assert_eq!(schema.draft(), "draft-07");
    let valid = json!({
        "id": "weekly-digest",
        "sender": "news@example.com",
        "frequency": "weekly",
        "sections": [{"title": "Highlights", "weight": 0.7}, {"title": "Links"}],
        "tags": ["digest"]
    });
    assert_eq!(schema.validate(&valid), vec![]);

    let invalid = json!({
        "id": "Weekly Digest",
        "sender": "not-an-address",
        "frequency": "hourly",
        "sections": [{"weight": 2}, {"title": "x".repeat(41)}],
        "tags": ["a", "b"],
        "colour": "blue",
        "font": "serif"
    });
    assert_eq!(
        schema.validate(&invalid),
        vec![
            err("/colour", r#""colour" is not an allowed property"#),
            err("/font", r#""font" is not an allowed property"#),
            err(
                "/frequency",
                r#""hourly" is not one of "daily", "weekly" or "monthly""#
            ),
            err("/id", r#""Weekly Digest" does not match "^[a-z0-9-]+$""#),
            err("/sections/0/title", r#""title" is a required property"#),
            err("/sections/0/weight", "2 is greater than the maximum of 1"),
            err(
                "/sections/1/title",
                r#""xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" is longer than 40 characters"#
            ),
            // Draft 7 asserts formats.
            err("/sender", r#""not-an-address" is not a "email""#),
            err("/tags/1", r#""b" is not allowed here (at most 1 item)"#),
        ]
    );
}

const DRAFT2020_SCHEMA: &str = r##"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "$id": "https://example.com/schemas/landing-page.json",
  "type": "object",
  "required": ["id", "hero"],
  "$defs": {
    "link": {
      "$anchor": "link",
      "type": "object",
      "required": ["href"],
      "properties": {"href": {"type": "string"}, "label": {"type": "string"}}
    }
  },
  "properties": {
    "id": {"type": "string", "minLength": 1},
    "hero": {
      "type": "object",
      "properties": {"headline": {"type": "string"}, "cta": {"$ref": "#link"}},
      "unevaluatedProperties": false
    },
    "breakpoints": {"type": "array", "prefixItems": [{"const": "mobile"}, {"const": "desktop"}], "items": false},
    "links": {"type": "array", "items": {"$ref": "#/$defs/link"}}
  },
  "dependentRequired": {"links": ["hero"]}
}"##;

#[test]
fn custom_2020_12_schema() {
    let schema = CustomSchema::compile(DRAFT2020_SCHEMA).expect("compiles");
    assert_eq!(schema.draft(), "2020-12");
    assert_eq!(schema.digest().len(), 64);
    let valid = json!({
        "id": "spring-launch",
        "hero": {"headline": "Ship it", "cta": {"href": "/trial", "label": "Try it"}},
        "breakpoints": ["mobile", "desktop"],
        "links": [{"href": "/docs"}]
    });
    assert_eq!(schema.validate(&valid), vec![]);

    let invalid = json!({
        "hero": {"headline": "Ship it", "cta": {"label": "Try it"}, "subtitle": "x"},
        "breakpoints": ["mobile", "tablet", "desktop"],
        "links": [{"href": "/docs"}, {"label": "no href"}]
    });
    assert_eq!(
        schema.validate(&invalid),
        vec![
            err("/breakpoints/1", r#""desktop" was expected"#),
            err("/breakpoints/2", r#"False schema does not allow "desktop""#),
            err("/hero/cta/href", r#""href" is a required property"#),
            err("/hero/subtitle", r#""subtitle" is not an allowed property"#),
            err("/id", r#""id" is a required property"#),
            err("/links/1/href", r#""href" is a required property"#),
        ]
    );
}

#[test]
fn custom_schema_without_dollar_schema_is_2020_12() {
    // `prefixItems` only means something in 2020-12.
    let schema =
        CustomSchema::compile(r#"{"prefixItems": [{"type": "string"}]}"#).expect("compiles");
    assert_eq!(schema.draft(), "2020-12");
    assert_eq!(
        schema.validate(&json!([1])),
        vec![err("/0", r#"1 is not of type "string""#)]
    );
}

#[test]
fn other_standard_drafts_are_accepted() {
    for (uri, name) in [
        ("http://json-schema.org/draft-04/schema#", "draft-04"),
        ("http://json-schema.org/draft-06/schema#", "draft-06"),
        ("https://json-schema.org/draft-07/schema", "draft-07"),
        ("https://json-schema.org/draft/2019-09/schema", "2019-09"),
        ("https://json-schema.org/draft/2020-12/schema#", "2020-12"),
    ] {
        let text = json!({"$schema": uri, "required": ["id"]}).to_string();
        let schema = CustomSchema::compile(&text).unwrap_or_else(|e| panic!("{uri}: {e}"));
        assert_eq!(schema.draft(), name);
        assert_eq!(
            schema.validate(&json!({})),
            vec![err("/id", r#""id" is a required property"#)]
        );
    }
}

#[test]
fn idn_formats_are_not_checked() {
    // The `jsonschema` crate's `idna` feature is off: these two formats are unknown to it and,
    // like any unknown format, ignored rather than rejected.
    for format in ["idn-hostname", "idn-email"] {
        let text = json!({"$schema": "http://json-schema.org/draft-07/schema#", "format": format});
        let schema = CustomSchema::compile(&text.to_string()).expect("compiles");
        assert_eq!(
            schema.validate(&json!("not valid at all @@")),
            vec![],
            "{format}"
        );
    }
}

#[test]
fn property_names_are_reported_at_the_property() {
    let schema =
        CustomSchema::compile(r#"{"propertyNames": {"pattern": "^[a-z]+$"}}"#).expect("compiles");
    assert_eq!(
        schema.validate(&json!({"ok": 1, "Bad Key": 2})),
        vec![err(
            "/Bad Key",
            r#"invalid property name: "Bad Key" does not match "^[a-z]+$""#
        )]
    );
}

#[test]
fn pointers_are_escaped() {
    let schema = CustomSchema::compile(r#"{"required": ["a/b", "c~d"]}"#).expect("compiles");
    assert_eq!(
        schema.validate(&json!({})),
        vec![
            err("/a~1b", r#""a/b" is a required property"#),
            err("/c~0d", r#""c~d" is a required property"#),
        ]
    );
}

// ---- broken custom schemas ----

fn compile_err(text: &str) -> SchemaError {
    match CustomSchema::compile(text) {
        Ok(schema) => panic!("expected an error, compiled {schema:?}"),
        Err(error) => error,
    }
}

#[test]
fn schema_that_is_not_json() {
    for text in [
        "",
        "{",
        "type: object\nrequired: [id]\n",
        "{'type': 'object'}",
    ] {
        let error = compile_err(text);
        assert!(
            matches!(error, SchemaError::NotJson { .. }),
            "{text:?}: {error:?}"
        );
        assert_eq!(error.metric_label(), "not_json");
    }
    let message = compile_err("{\n  \"type\": \"object\",\n}").to_string();
    assert!(message.contains("line 3 column 1"), "{message}");
    assert!(message.contains("not YAML"), "{message}");
}

#[test]
fn schema_that_is_not_an_object() {
    for (text, found) in [
        ("[]", "an array"),
        ("true", "a boolean"),
        ("\"x\"", "a string"),
        ("null", "null"),
        ("3", "a number"),
    ] {
        assert_eq!(
            compile_err(text),
            SchemaError::NotAnObject { found },
            "{text}"
        );
    }
    assert_eq!(
        compile_err("[]").to_string(),
        "the schema must be a JSON object, but it is an array"
    );
}

#[test]
fn schema_with_invalid_keywords() {
    let error = compile_err(r#"{"type": 12}"#);
    let SchemaError::Invalid { draft, problems } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(*draft, "2020-12");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].path, "/type");
    // Says why each alternative of the meta-schema's `anyOf` failed.
    assert!(
        problems[0].message.contains(r#"12 is not of type "array""#),
        "{}",
        problems[0].message
    );
    assert!(
        error
            .to_string()
            .starts_with("the schema is not a valid 2020-12 JSON Schema: at /type: ")
    );
    assert_eq!(error.metric_label(), "invalid_schema");

    // All the problems, sorted, not only the first.
    let error = compile_err(
        r#"{"$schema": "http://json-schema.org/draft-07/schema#",
            "properties": {"a": {"minLength": -1}, "b": {"required": "b"}, "c": {"type": "text"}}}"#,
    );
    let SchemaError::Invalid { draft, problems } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(*draft, "draft-07");
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/properties/a/minLength",
            "/properties/b/required",
            "/properties/c/type"
        ]
    );

    let error = compile_err(r#"{"$schema": 7}"#);
    assert_eq!(
        error,
        SchemaError::Invalid {
            draft: "2020-12",
            problems: vec![err("/$schema", r#"7 is not of type "string""#)],
        }
    );
}

#[test]
fn schema_with_an_unknown_draft() {
    let error = compile_err(r#"{"$schema": "https://example.com/my-meta-schema"}"#);
    assert_eq!(
        error,
        SchemaError::UnsupportedDraft {
            uri: r#""https://example.com/my-meta-schema""#.to_owned()
        }
    );
    assert!(
        error.to_string().contains("draft/2020-12/schema"),
        "{error}"
    );
}

#[test]
fn schema_with_an_external_reference_is_never_fetched() {
    for (text, uri) in [
        (
            r#"{"$ref": "https://example.com/schemas/content.json"}"#,
            "https://example.com/schemas/content.json",
        ),
        (
            r#"{"properties": {"a": {"$ref": "http://127.0.0.1:1/x.json#/$defs/a"}}}"#,
            "http://127.0.0.1:1/x.json",
        ),
        (
            r#"{"$id": "https://example.com/root.json", "$ref": "other.json"}"#,
            "https://example.com/other.json",
        ),
        (r#"{"$ref": "file:///etc/passwd"}"#, "file:///etc/passwd"),
    ] {
        let error = compile_err(text);
        assert_eq!(
            error,
            SchemaError::ExternalReference {
                uri: uri.to_owned()
            },
            "{text}"
        );
        assert!(error.to_string().contains("$defs"), "{error}");
    }
}

#[test]
fn schema_with_a_dangling_internal_reference() {
    let error = compile_err(r##"{"properties": {"a": {"$ref": "#/$defs/missing"}}}"##);
    assert!(matches!(error, SchemaError::Invalid { .. }), "{error:?}");
    assert!(error.to_string().contains("missing"), "{error}");
}

#[test]
fn schema_with_an_invalid_pattern() {
    let error = compile_err(r#"{"properties": {"id": {"pattern": "(unclosed"}}}"#);
    let SchemaError::Invalid { problems, .. } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(problems[0].path, "/properties/id/pattern");
}

#[test]
fn errors_are_cached_too() {
    let text = r#"{"type": 12, "$comment": "errors_are_cached_too"}"#;
    assert_eq!(compile_err(text), compile_err(text));
}

#[test]
fn reference_cycles_neither_hang_nor_crash() {
    for text in [
        r##"{"$ref": "#"}"##,
        r##"{"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}"##,
        r##"{"$schema": "http://json-schema.org/draft-07/schema#", "definitions": {"a": {"$ref": "#/definitions/a"}}, "properties": {"x": {"$ref": "#/definitions/a"}}}"##,
        r##"{"anyOf": [{"$ref": "#"}]}"##,
        r##"{"$dynamicAnchor": "n", "$ref": "#"}"##,
    ] {
        let schema = CustomSchema::compile(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(schema.validate(&json!({"x": {"x": 1}})), vec![], "{text}");
    }
}
