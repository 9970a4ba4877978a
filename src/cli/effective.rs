//! `validate --show-effective` and `env-to-manifest`: the resolved manifest, value by value,
//! with origins; secrets redacted or turned back into `${VAR}` references.

use serde::Serialize;
use serde_json::Value;

use crate::manifest::document::escape_segment;
use crate::manifest::{Loaded, Origin};
use crate::secret::{REDACTED, redact_url};

/// One effective value.
#[derive(Debug, Serialize)]
pub(super) struct EffectiveValue {
    /// Dotted path, e.g. `sources.main.port`.
    path: String,
    /// The value (secrets redacted).
    value: Value,
    /// Where it came from.
    origin: Origin,
}

fn is_secret_key(pointer: &str) -> bool {
    pointer.ends_with("/password")
}

fn is_url_key(pointer: &str) -> bool {
    pointer.ends_with("/url") || pointer.ends_with("/endpoint")
}

fn walk(value: &Value, pointer: &str, path: &str, out: &mut Vec<(String, String, Value)>) {
    match value {
        Value::Object(object) if !object.is_empty() => {
            for (key, child) in object {
                let child_pointer = format!("{pointer}/{}", escape_segment(key));
                let child_path = if path.is_empty() {
                    key.clone()
                } else if key.contains('.') {
                    format!("{path}.\"{key}\"")
                } else {
                    format!("{path}.{key}")
                };
                walk(child, &child_pointer, &child_path, out);
            }
        }
        Value::Null => {}
        _ => out.push((pointer.to_string(), path.to_string(), value.clone())),
    }
}

/// Every leaf of the resolved manifest with its origin.
pub(super) fn effective_values(loaded: &Loaded) -> Vec<EffectiveValue> {
    let raw = loaded.manifest.to_raw();
    let document = serde_json::to_value(&raw).unwrap_or(Value::Null);
    let mut leaves = Vec::new();
    walk(&document, "", "", &mut leaves);
    leaves
        .into_iter()
        .map(|(pointer, path, value)| {
            let origin = loaded
                .origins
                .get(&pointer)
                .cloned()
                .or_else(|| {
                    // A list (e.g. `columns`) is recorded item by item.
                    loaded.origins.get(&format!("{pointer}/0")).cloned()
                })
                .or_else(|| {
                    let parent = pointer.rsplit_once('/').map_or("", |(parent, _)| parent);
                    loaded
                        .origins
                        .get(parent)
                        .cloned()
                        .filter(|origin| matches!(origin, Origin::Env(_)))
                })
                .unwrap_or(Origin::Default);
            let value = if is_secret_key(&pointer) {
                Value::String(REDACTED.into())
            } else if is_url_key(&pointer) {
                value
                    .as_str()
                    .map_or(value.clone(), |url| Value::String(redact_url(url)))
            } else {
                value
            };
            EffectiveValue {
                path,
                value,
                origin,
            }
        })
        .collect()
}

/// Every value an environment variable sets over a manifest file (not the legacy mode, where
/// every value comes from the environment): listed once at the top of `plan` and `apply`, with
/// the variable, whether it came from the env file or the process environment, and the
/// (redacted) value, so a forgotten `.env` cannot silently steer a run.
pub(super) fn overrides(loaded: &Loaded, from_file: &[String]) -> Vec<(String, String, Value)> {
    if loaded.mode != crate::manifest::EnvMode::Overlay {
        return Vec::new();
    }
    effective_values(loaded)
        .into_iter()
        .filter_map(|value| match value.origin {
            Origin::Env(var) => {
                let origin = if from_file.contains(&var) {
                    format!("env file ({var})")
                } else {
                    format!("environment ({var})")
                };
                Some((value.path, origin, value.value))
            }
            _ => None,
        })
        .collect()
}

/// Prints [`overrides`] (a warning each in JSON-log mode, a block on stderr otherwise).
pub(super) fn print_overrides(loaded: &Loaded, from_file: &[String]) {
    let overrides = overrides(loaded, from_file);
    if overrides.is_empty() {
        return;
    }
    if super::logging::json_mode() {
        for (path, origin, value) in overrides {
            let mut fields = serde_json::Map::new();
            fields.insert("path".into(), path.into());
            fields.insert("origin".into(), origin.into());
            fields.insert("value".into(), value);
            super::logging::line("warn", "environment overrides the manifest", fields);
        }
        return;
    }
    let mut text = format!(
        "{} manifest value(s) overridden by environment variables (`--env-file none` ignores `.env`):\n",
        overrides.len()
    );
    for (path, origin, value) in overrides {
        text.push_str(&format!("  {path} = {value}  # {origin}\n"));
    }
    text.push('\n');
    super::print_stderr(&text);
}

/// Renders effective values as aligned `path = value  # origin` lines.
pub(super) fn render_text(values: &[EffectiveValue]) -> String {
    let rows: Vec<(String, String)> = values
        .iter()
        .map(|value| {
            let origin = match &value.origin {
                Origin::File => "file".to_string(),
                Origin::Env(var) => format!("env {var}"),
                Origin::Default => "default".to_string(),
            };
            (format!("{} = {}", value.path, value.value), origin)
        })
        .collect();
    let width = rows
        .iter()
        .map(|(left, _)| left.chars().count())
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|(left, origin)| format!("{left:width$}  # {origin}\n"))
        .collect()
}

/// Writes every `$` of every string as `$$`, so a value such as `pa${X}ss` stays literal when
/// the manifest is read back (interpolation treats `$$` as `$`).
fn escape_dollars(value: &mut Value) {
    match value {
        Value::String(text) => *text = text.replace('$', "$$"),
        Value::Array(items) => items.iter_mut().for_each(escape_dollars),
        Value::Object(object) => object.values_mut().for_each(escape_dollars),
        _ => {}
    }
}

/// The legacy environment as a manifest file, secrets as `${VAR}` references, every other `$`
/// escaped.
pub(super) fn manifest_from_env(loaded: &Loaded, toml: bool) -> Result<String, String> {
    let mut document =
        serde_json::to_value(loaded.manifest.to_raw()).map_err(|error| error.to_string())?;
    escape_dollars(&mut document);
    let mut raw: crate::manifest::raw::RawManifest =
        serde_json::from_value(document).map_err(|error| error.to_string())?;
    for (name, source) in &mut raw.sources {
        let pointer = format!("/sources/{}/password", escape_segment(name));
        if source.password.is_some() {
            source.password = Some(match loaded.origins.get(&pointer) {
                Some(Origin::Env(var)) => format!("${{{var}}}"),
                _ => REDACTED.to_string(),
            });
        }
    }
    let body = if toml {
        toml::to_string_pretty(&raw).map_err(|error| error.to_string())?
    } else {
        serde_yaml_ng::to_string(&raw).map_err(|error| error.to_string())?
    };
    Ok(format!(
        "# Generated by `datasync env-to-manifest` from the legacy environment variables.\n# Secrets are `${{VAR}}` references: keep those variables set when you run datasync.\n{body}"
    ))
}
