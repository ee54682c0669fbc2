//! Validates `--json` output against the JSON Schemas of docs/schema/ (the contract docs/json.md
//! describes). A small validator for the subset of JSON Schema (2020-12) those files use:
//! `type` (one or a list), `properties`, `required`, `additionalProperties` (a boolean or a
//! schema), `items`, `enum`, `const`, `minimum`, `maximum`, `oneOf`, `anyOf`, and `$ref` to
//! `#/$defs/NAME` or `FILE.json#/$defs/NAME` beside it. Any other keyword is an error, so a
//! schema cannot say more than is checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

const KEYWORDS: [&str; 17] = [
    "$schema",
    "$id",
    "$defs",
    "$ref",
    "title",
    "description",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minimum",
    "oneOf",
    "anyOf",
    "maximum",
];

/// The schema files of docs/schema/, by file name.
pub struct Schemas {
    dir: PathBuf,
    files: BTreeMap<String, Value>,
}

pub fn docs_schemas() -> Schemas {
    Schemas::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema"))
}

impl Schemas {
    pub fn load(dir: &Path) -> Schemas {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).unwrap();
                let value: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                files.insert(name, value);
            }
        }
        Schemas {
            dir: dir.to_path_buf(),
            files,
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    pub fn get(&self, file: &str) -> &Value {
        self.files
            .get(file)
            .unwrap_or_else(|| panic!("no schema {file} in {}", self.dir.display()))
    }

    /// Every problem of `value` against the schema file `file` (empty: valid).
    pub fn check(&self, file: &str, value: &Value) -> Vec<String> {
        let mut problems = Vec::new();
        self.validate(file, self.get(file), value, "$", &mut problems);
        problems
    }

    /// Panics with every problem, and the value, unless `text` is one valid JSON object.
    pub fn assert_valid(&self, file: &str, text: &str) -> Value {
        let value: Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("not one JSON value ({e}):\n{text}"));
        assert_eq!(
            text.trim().lines().count(),
            1,
            "one object on one line:\n{text}"
        );
        let problems = self.check(file, &value);
        assert!(
            problems.is_empty(),
            "output does not match docs/schema/{file}:\n  {}\n{value:#}",
            problems.join("\n  ")
        );
        value
    }

    fn resolve<'a>(&'a self, file: &str, reference: &str) -> (String, &'a Value) {
        let (target, pointer) = reference
            .split_once('#')
            .unwrap_or_else(|| panic!("{file}: $ref {reference} has no #"));
        let target = if target.is_empty() { file } else { target };
        let schema = self
            .get(target)
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{file}: $ref {reference} does not resolve"));
        (target.to_string(), schema)
    }

    fn validate(
        &self,
        file: &str,
        schema: &Value,
        value: &Value,
        at: &str,
        problems: &mut Vec<String>,
    ) {
        let Some(schema) = schema.as_object() else {
            if schema == &Value::Bool(false) {
                problems.push(format!("{at}: not allowed"));
            }
            return;
        };
        for key in schema.keys() {
            assert!(
                KEYWORDS.contains(&key.as_str()),
                "{file}: keyword {key} is not supported by the test's validator"
            );
        }
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let (target, resolved) = self.resolve(file, reference);
            self.validate(&target, resolved, value, at, problems);
        }
        if let Some(types) = schema.get("type") {
            let allowed: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                other => panic!("{file}: bad type {other}"),
            };
            if !allowed.iter().any(|t| type_matches(t, value)) {
                problems.push(format!("{at}: {value} is not of type {allowed:?}"));
                return;
            }
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            if !options.contains(value) {
                problems.push(format!("{at}: {value} is not one of {options:?}"));
            }
        }
        if let Some(constant) = schema.get("const") {
            if constant != value {
                problems.push(format!("{at}: {value} is not {constant}"));
            }
        }
        if let (Some(min), Some(n)) = (
            schema.get("minimum").and_then(Value::as_f64),
            value.as_f64(),
        ) {
            if n < min {
                problems.push(format!("{at}: {n} is below the minimum {min}"));
            }
        }
        if let (Some(max), Some(n)) = (
            schema.get("maximum").and_then(Value::as_f64),
            value.as_f64(),
        ) {
            if n > max {
                problems.push(format!("{at}: {n} is above the maximum {max}"));
            }
        }
        for (keyword, exactly_one) in [("oneOf", true), ("anyOf", false)] {
            if let Some(options) = schema.get(keyword).and_then(Value::as_array) {
                let matching = options
                    .iter()
                    .filter(|option| {
                        let mut inner = Vec::new();
                        self.validate(file, option, value, at, &mut inner);
                        inner.is_empty()
                    })
                    .count();
                if matching == 0 || (exactly_one && matching > 1) {
                    problems.push(format!(
                        "{at}: {value} matches {matching} of the {keyword} options"
                    ));
                }
            }
        }
        if let Value::Object(object) = value {
            let properties = schema.get("properties").and_then(Value::as_object);
            for required in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !object.contains_key(required) {
                    problems.push(format!("{at}: missing {required}"));
                }
            }
            for (key, item) in object {
                let path = format!("{at}.{key}");
                match properties.and_then(|p| p.get(key)) {
                    Some(property) => self.validate(file, property, item, &path, problems),
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            problems.push(format!("{path}: not in the schema"))
                        }
                        Some(extra @ Value::Object(_)) => {
                            self.validate(file, extra, item, &path, problems)
                        }
                        _ => {}
                    },
                }
            }
        }
        if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
            for (i, item) in items.iter().enumerate() {
                self.validate(file, item_schema, item, &format!("{at}[{i}]"), problems);
            }
        }
    }

    /// Every property name defined anywhere in the file `file` (references not followed).
    pub fn property_names(&self, file: &str) -> Vec<String> {
        fn collect(schema: &Value, names: &mut Vec<String>) {
            match schema {
                Value::Object(object) => {
                    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
                        names.extend(properties.keys().cloned());
                    }
                    object.values().for_each(|inner| collect(inner, names));
                }
                Value::Array(items) => items.iter().for_each(|item| collect(item, names)),
                _ => {}
            }
        }
        let mut names = Vec::new();
        collect(self.get(file), &mut names);
        names.sort();
        names.dedup();
        names
    }
}

fn type_matches(kind: &str, value: &Value) -> bool {
    match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        other => panic!("unknown type {other}"),
    }
}
