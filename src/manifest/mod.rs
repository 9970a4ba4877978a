//! The manifest: text (YAML or TOML) plus an environment snapshot in, a validated [`Manifest`]
//! or every problem at once out.
//!
//! Pure: no IO besides what the caller hands in, no `std::env`. The pipeline is
//! parse → `${VAR}` interpolation → env overlay (or the legacy env-only mode) → JSON Schema
//! validation → typed deserialisation → semantic checks → defaults. Each step records problems
//! against a JSON pointer; [`diagnostics`] turns pointers into line/column spans.

pub mod diagnostics;
pub mod document;
pub mod env;
pub mod query;
pub mod raw;
pub mod resolve;

use std::sync::OnceLock;

use serde_json::Value;

pub use document::Format;

pub use env::{Env, EnvMode, Origin, Origins};
pub use raw::RawManifest;
pub use resolve::{Manifest, SourceSpec, TableSpec};

use document::SpanIndex;

pub use crate::diagnostic::{Code, Diagnostic, Location, Severity};

/// An error at a manifest node.
pub(crate) fn error_at(pointer: &str, code: Code, message: impl Into<String>) -> Diagnostic {
    Diagnostic::error(code, message).at_pointer(pointer)
}

/// A warning at a manifest node.
pub(crate) fn warning_at(pointer: &str, code: Code, message: impl Into<String>) -> Diagnostic {
    Diagnostic::warning(code, message).at_pointer(pointer)
}

/// An error in an environment variable.
pub(crate) fn env_error(var: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic::error(Code::EnvInvalid, format!("{var}: {}", message.into()))
        .at(Location::Env(var.to_string()))
}

/// A warning about an environment variable.
pub(crate) fn env_warning(var: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic::warning(Code::EnvIgnored, format!("{var}: {}", message.into()))
        .at(Location::Env(var.to_string()))
}

/// What to load.
#[derive(Debug, Clone)]
pub struct ManifestInput {
    /// The file's name as shown in diagnostics, when there is a file.
    pub name: Option<String>,
    /// The file's text and format; `None` for the legacy env-only mode.
    pub text: Option<(String, Format)>,
    /// The environment snapshot.
    pub env: Env,
}

/// A loaded manifest plus what is needed to explain it.
#[derive(Debug)]
pub struct Loaded {
    /// The validated manifest.
    pub manifest: Manifest,
    /// Warnings (errors would have failed the load).
    pub warnings: Vec<Diagnostic>,
    /// Where each value came from.
    pub origins: Origins,
    /// The file's text and spans, for rendering warnings.
    pub source: Option<SourceText>,
    /// Which environment mode was used.
    pub mode: EnvMode,
}

/// The manifest text with its span index.
#[derive(Debug, Clone)]
pub struct SourceText {
    /// Name shown in diagnostics.
    pub name: String,
    /// The text.
    pub text: String,
    /// Pointer → span.
    pub spans: SpanIndex,
}

/// A manifest that failed to load: every problem (errors and warnings), with the text.
#[derive(Debug)]
pub struct LoadFailure {
    /// The problems, errors first in document order.
    pub problems: Vec<Diagnostic>,
    /// The file's text and spans.
    pub source: Option<SourceText>,
}

/// The JSON Schema of [`RawManifest`], as `datasync schema` prints it for editors: a table
/// entry may also be empty (`orders:`, YAML null), as `sync.example.yaml` writes it.
pub fn json_schema() -> Value {
    let mut schema = strict_schema();
    if let Some(tables) =
        schema.pointer_mut("/$defs/RawSource/properties/tables/additionalProperties")
    {
        let entry = tables.take();
        *tables = serde_json::json!({"anyOf": [entry, {"type": "null"}]});
    }
    schema
}

/// The schema validation uses: empty table entries are already `{}` by then, and a plain
/// `$ref` gives sharper messages than an `anyOf`.
fn strict_schema() -> Value {
    let schema = schemars::schema_for!(RawManifest);
    serde_json::to_value(schema).expect("a schema is always valid JSON")
}

/// The schema, generated once per process (validation and every error message read it).
fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(strict_schema)
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| jsonschema::validator_for(schema()).expect("the generated schema compiles"))
}

/// The document after parsing, `${VAR}` interpolation and the environment overlay: what the
/// JSON Schema and the semantic checks see.
#[derive(Debug)]
pub struct Overlaid {
    /// The merged document (file + env), before defaults.
    pub document: Value,
    /// Where each value came from.
    pub origins: Origins,
    /// Problems found so far (interpolation and the overlay).
    pub problems: Vec<Diagnostic>,
    /// The file's text and spans.
    pub source: Option<SourceText>,
    /// Which environment mode was used.
    pub mode: EnvMode,
}

/// Parses the text (if any), interpolates `${VAR}`s and applies the environment. Fails only on
/// text that is not a document at all.
pub fn overlay(input: &ManifestInput) -> Result<Overlaid, LoadFailure> {
    let mut origins = Origins::new();
    let (mut document, source, mode) = match &input.text {
        Some((text, format)) => {
            let name = input.name.clone().unwrap_or_else(|| "manifest".into());
            let (value, spans) = check_limits(text)
                .and_then(|()| document::parse(text, *format))
                .map_err(|error| LoadFailure {
                    problems: vec![
                        Diagnostic::error(Code::ManifestSyntax, error.message)
                            .at(Location::Span(error.range)),
                    ],
                    source: Some(SourceText {
                        name: name.clone(),
                        text: text.clone(),
                        spans: SpanIndex::default(),
                    }),
                })?;
            record_file_origins(&value, "", &mut origins);
            let source = SourceText {
                name,
                text: text.clone(),
                spans,
            };
            (value, Some(source), EnvMode::Overlay)
        }
        None => (Value::Object(serde_json::Map::new()), None, EnvMode::Legacy),
    };
    if !document.is_object() {
        return Err(LoadFailure {
            problems: vec![error_at(
                "",
                Code::ManifestSchema,
                "the manifest must be a mapping of keys to values",
            )],
            source,
        });
    }
    let mut problems = Vec::new();
    env::interpolate(&mut document, &input.env, "", &mut problems);
    problems.extend(env::apply(&mut document, &input.env, mode, &mut origins));
    // Tables written as `orders:` (null) mean "all defaults".
    fill_null_tables(&mut document);
    Ok(Overlaid {
        document,
        origins,
        problems,
        source,
        mode,
    })
}

/// Loads and validates a manifest.
pub fn load(input: &ManifestInput) -> Result<Loaded, LoadFailure> {
    let Overlaid {
        document,
        origins,
        mut problems,
        source,
        mode,
    } = overlay(input)?;
    // A value whose variable is missing is reported once, not again by the checks below.
    let unresolved: Vec<String> = problems
        .iter()
        .filter(|problem| problem.code == Code::ManifestEnvVar)
        .filter_map(|problem| problem.pointer().map(str::to_string))
        .collect();
    let mut manifest = check(&document, &mut problems);
    if let Some(manifest) = manifest.as_mut() {
        resolve::expand_home(
            manifest,
            env::get(&input.env, env::vars::HOME),
            &mut problems,
        );
    }
    problems.retain(|problem| {
        problem.code == Code::ManifestEnvVar
            || !problem
                .pointer()
                .is_some_and(|pointer| unresolved.iter().any(|u| u == pointer))
    });
    sort_problems(&mut problems, source.as_ref());
    let has_errors = problems.iter().any(Diagnostic::is_error);
    match manifest {
        Some(mut manifest) if !has_errors => {
            manifest.bigquery.env = env::bigquery_env(&input.env);
            Ok(Loaded {
                manifest,
                warnings: problems,
                origins,
                source,
                mode,
            })
        }
        _ => Err(LoadFailure { problems, source }),
    }
}

/// The largest manifest read (a manifest of 1,000 tables is about 100 KiB).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// The deepest nesting of flow collections (`[`, `{`) or of `- ` items on one line.
pub const MAX_NESTING: usize = 64;

/// Refuses, in linear time and before parsing, a text too large or too deeply nested for a
/// manifest (parsers take quadratic time or overflow the stack on those).
fn check_limits(text: &str) -> Result<(), document::SyntaxError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(document::SyntaxError {
            message: format!(
                "the manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES} bytes (1 MiB)",
                text.len()
            ),
            range: 0..0,
        });
    }
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut comment = false;
    let mut line_start = true;
    let mut dashes = 0usize;
    for (at, byte) in text.bytes().enumerate() {
        if byte == b'\n' {
            comment = false;
            quote = None;
            line_start = true;
            dashes = 0;
            continue;
        }
        if comment {
            continue;
        }
        match (quote, byte) {
            (Some(open), _) if byte == open => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(byte),
            (None, b'#') => comment = true,
            (None, b'[' | b'{') => depth += 1,
            (None, b']' | b'}') => depth = depth.saturating_sub(1),
            (None, b'-') if line_start => dashes += 1,
            (None, b' ' | b'\t') => {}
            (None, _) => line_start = false,
        }
        if depth > MAX_NESTING || dashes > MAX_NESTING {
            return Err(document::SyntaxError {
                message: format!("the manifest nests deeper than {MAX_NESTING} levels"),
                range: at..at + 1,
            });
        }
    }
    Ok(())
}

/// Validates the merged document against the JSON Schema, then resolves it. Schema errors are
/// reported and the offending nodes cut out, so the semantic checks still run on the rest:
/// every problem is reported at once, none twice.
fn check(document: &Value, problems: &mut Vec<Diagnostic>) -> Option<Manifest> {
    let mut repaired = document.clone();
    let mut removed: Vec<String> = Vec::new();
    for error in validator()
        .iter_errors(document)
        .flat_map(|error| optional_branch(error.to_owned()))
    {
        let problem = schema_problem(&error);
        if let Some(pointer) = problem.pointer()
            && !pointer.is_empty()
        {
            remove_pointer(&mut repaired, pointer);
            removed.push(pointer.to_string());
        }
        problems.push(problem);
    }
    let schema_failed = problems.iter().any(Diagnostic::is_error);
    match serde_json::from_value::<RawManifest>(repaired) {
        Ok(raw) => {
            let (manifest, found) = resolve::resolve(&raw);
            problems.extend(
                found
                    .into_iter()
                    .filter(|problem| !explained_by_schema(problem, &removed)),
            );
            manifest.filter(|_| !schema_failed)
        }
        Err(error) => {
            if !schema_failed {
                problems.push(error_at("", Code::ManifestSchema, error.to_string()));
            }
            None
        }
    }
}

/// The errors of an optional section (`tls`, `ssh`, …: `anyOf: [{$ref}, {type: null}]`) that is
/// present: those of the object branch (a missing or unknown field, a value out of range), not
/// one "invalid value" for the whole section. Other errors (scalars: an enum keeps its field's
/// description) pass unchanged.
fn optional_branch(
    error: jsonschema::ValidationError<'static>,
) -> Vec<jsonschema::ValidationError<'static>> {
    use jsonschema::error::ValidationErrorKind;
    let ValidationErrorKind::AnyOf { context } = error.kind() else {
        return vec![error];
    };
    let null_branch = |branch: &[jsonschema::ValidationError<'static>]| {
        matches!(branch, [only] if matches!(only.kind(), ValidationErrorKind::Type { .. })
            && only.instance_path() == error.instance_path())
    };
    let object_branch = match context.as_slice() {
        [first, second] if null_branch(second) && !first.is_empty() => 0,
        [first, second] if null_branch(first) && !second.is_empty() => 1,
        _ => return vec![error],
    };
    if !error.instance().is_object() {
        return vec![error];
    }
    match error.into_parts().kind {
        ValidationErrorKind::AnyOf { mut context } => context
            .swap_remove(object_branch)
            .into_iter()
            .flat_map(optional_branch)
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a semantic problem is about a node a schema error already cut out.
fn explained_by_schema(problem: &Diagnostic, removed: &[String]) -> bool {
    problem.pointer().is_some_and(|pointer| {
        removed.iter().any(|cut| {
            pointer.starts_with(cut.as_str())
                || cut.starts_with(pointer) && problem.code == Code::ManifestMissingField
        })
    })
}

fn fill_null_tables(document: &mut Value) {
    let Some(sources) = document.get_mut("sources").and_then(Value::as_object_mut) else {
        return;
    };
    for source in sources.values_mut() {
        if let Some(tables) = source.get_mut("tables").and_then(Value::as_object_mut) {
            for table in tables.values_mut() {
                if table.is_null() {
                    *table = Value::Object(serde_json::Map::new());
                }
            }
        }
    }
}

fn remove_pointer(document: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match document.pointer_mut(parent) {
        Some(Value::Object(object)) => {
            object.shift_remove(&last);
        }
        Some(Value::Array(items)) => {
            if let Ok(position) = last.parse::<usize>()
                && position < items.len()
            {
                // Keep positions stable for later pointers.
                items[position] = Value::Null;
            }
        }
        _ => {}
    }
}

fn record_file_origins(value: &Value, pointer: &str, origins: &mut Origins) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                record_file_origins(
                    child,
                    &format!("{pointer}/{}", document::escape_segment(key)),
                    origins,
                );
            }
        }
        Value::Array(items) => {
            for (position, child) in items.iter().enumerate() {
                record_file_origins(child, &format!("{pointer}/{position}"), origins);
            }
        }
        _ => {
            origins.insert(pointer.to_string(), Origin::File);
        }
    }
}

fn sort_problems(problems: &mut [Diagnostic], source: Option<&SourceText>) {
    let position = |problem: &Diagnostic| {
        let start = source
            .zip(problem.pointer())
            .and_then(|(source, pointer)| source.spans.label_range(pointer))
            .map_or(usize::MAX, |range| range.start);
        (problem.severity, problem.pointer().is_none(), start)
    };
    problems.sort_by_key(position);
}

fn schema_problem(error: &jsonschema::ValidationError<'_>) -> Diagnostic {
    use jsonschema::error::ValidationErrorKind;
    let pointer = error.instance_path().to_string();
    let schema_path = error.schema_path().to_string();
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let key = unexpected.first().cloned().unwrap_or_default();
            let child = format!("{pointer}/{}", document::escape_segment(&key));
            let allowed = allowed_keys(&schema_path);
            let help = match did_you_mean(&key, allowed.iter().map(String::as_str)) {
                Some(suggestion) => format!("did you mean `{suggestion}`?"),
                None => format!(
                    "allowed here: {}",
                    allowed
                        .iter()
                        .map(|key| format!("`{key}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            error_at(
                &child,
                Code::ManifestUnknownField,
                format!("unknown field `{key}`"),
            )
            .on_key()
            .with_help(help)
        }
        ValidationErrorKind::Required { property } => {
            let name = property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_string);
            error_at(
                &pointer,
                Code::ManifestMissingField,
                format!("missing required field `{name}`"),
            )
            .on_key()
        }
        ValidationErrorKind::AnyOf { .. }
        | ValidationErrorKind::OneOfNotValid { .. }
        | ValidationErrorKind::Enum { .. } => {
            let choices = choices(&schema_path);
            let message = match (error.instance().as_str(), choices.is_empty()) {
                (Some(value), false) => format!("`{value}` is not one of {}", choices.join(", ")),
                (_, false) => format!("expected one of {}", choices.join(", ")),
                _ => "invalid value".to_string(),
            };
            let mut problem = error_at(&pointer, Code::ManifestSchema, message);
            if let Some(description) = describe(&schema_path) {
                problem = problem.with_help(description);
            }
            problem
        }
        ValidationErrorKind::Pattern { .. }
            if pointer == "/bigquery/project" || pointer == "/bigquery/dataset" =>
        {
            let value = error.instance().as_str().unwrap_or_default();
            let message = if pointer.ends_with("project") {
                crate::names::project_problem(value)
            } else {
                crate::names::dataset_problem(value)
            };
            error_at(
                &pointer,
                Code::ManifestBigqueryName,
                message.unwrap_or_else(|| error.masked().to_string()),
            )
        }
        _ => {
            let mut problem = error_at(&pointer, Code::ManifestSchema, error.masked().to_string());
            if let Some(description) = describe(&schema_path) {
                problem = problem.with_help(description);
            }
            problem
        }
    }
}

fn schema_node(schema: &Value, path: &str) -> Option<Value> {
    let node = schema.pointer(path)?;
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => schema.pointer(reference.trim_start_matches('#')).cloned(),
        None => Some(node.clone()),
    }
}

/// The description of the schema node a failed keyword belongs to.
fn describe(schema_path: &str) -> Option<String> {
    let schema = schema();
    let parent = schema_path
        .rsplit_once('/')
        .map_or("", |(parent, _)| parent);
    let node = schema_node(schema, parent)?;
    node.get("description")
        .and_then(Value::as_str)
        .map(|text| text.replace('\n', " "))
}

/// The allowed constants of an enum-like schema node (following `$ref`s and `anyOf` branches).
fn choices(schema_path: &str) -> Vec<String> {
    let schema = schema();
    let parent = schema_path
        .rsplit_once('/')
        .map_or("", |(parent, _)| parent);
    let mut out = Vec::new();
    if let Some(node) = schema_node(schema, parent) {
        collect_choices(schema, &node, &mut out, 0);
    }
    out
}

fn collect_choices(schema: &Value, node: &Value, out: &mut Vec<String>, depth: usize) {
    if depth > 4 {
        return;
    }
    if let Some(reference) = node.get("$ref").and_then(Value::as_str)
        && let Some(target) = schema.pointer(reference.trim_start_matches('#'))
    {
        collect_choices(schema, target, out, depth + 1);
    }
    if let Some(value) = node.get("const").and_then(Value::as_str) {
        out.push(format!("`{value}`"));
    }
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        out.extend(
            values
                .iter()
                .filter_map(Value::as_str)
                .map(|value| format!("`{value}`")),
        );
    }
    for branch in ["oneOf", "anyOf"] {
        for item in node
            .get(branch)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            collect_choices(schema, item, out, depth + 1);
        }
    }
}

/// The closest candidate to `word` by edit distance, if close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len().max(word.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            current.push(
                (previous[j] + cost)
                    .min(previous[j + 1] + 1)
                    .min(current[j] + 1),
            );
        }
        previous = current;
    }
    previous[b.len()]
}

/// The properties the schema allows at `schema_path` (which ends in `/additionalProperties`).
fn allowed_keys(schema_path: &str) -> Vec<String> {
    let schema = schema();
    let parent = schema_path.trim_end_matches("/additionalProperties");
    schema_node(schema, parent)
        .and_then(|node| {
            node.get("properties")
                .and_then(Value::as_object)
                .map(|properties| properties.keys().cloned().collect())
        })
        .unwrap_or_default()
}
