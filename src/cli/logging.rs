//! Logging: text for people, or (`LOG_ENV=prod`, `--log-format json`) one JSON object per line
//! on stderr *and* stdout, with the Go tool's (zap production) keys: `level`, `ts`, `msg`, plus
//! fields such as `database`, `table`, `rows`, `duration`.
//!
//! Everything the CLI prints goes through here in JSON mode ([`json_mode`], [`line`]), so a log
//! pipeline never sees a diagnostic box, a text plan or a text table.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the binary was built from (`unknown` without git).
pub const GIT_COMMIT: &str = env!("DATASYNC_GIT_COMMIT");
/// The commit date (`unknown` without git).
pub const BUILD_TIME: &str = env!("DATASYNC_BUILD_TIME");

/// `--version`: version, commit and build date.
pub fn long_version() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| format!("{VERSION} (commit {GIT_COMMIT}, built {BUILD_TIME})"))
}

static JSON: OnceLock<bool> = OnceLock::new();

/// Whether every output line is a JSON object (set once by [`init`]).
pub fn json_mode() -> bool {
    JSON.get().copied().unwrap_or(false)
}

/// The log levels `--log-level`/`LOG_LEVEL` accept (zap's `dpanic`, `panic`, `fatal` mean
/// `error`).
pub fn parse_level(text: &str) -> Option<&'static str> {
    Some(match text.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "dpanic" | "panic" | "fatal" => "error",
        _ => return None,
    })
}

/// Installs the subscriber: `level` for datasync (default `info`, as the Go tool), `json` for
/// JSON lines. Returns a warning to print when `level` was not understood.
pub fn init(level: Option<&str>, json: bool, color: bool) -> Option<String> {
    let _ = JSON.set(json);
    let (level, problem) = match level {
        None => ("info", None),
        Some(text) => match parse_level(text) {
            Some(level) => (level, None),
            None => (
                "info",
                Some(format!(
                    "unknown log level `{text}` (use error, warn, info, debug or trace); using info"
                )),
            ),
        },
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("datasync={level},sqlx=error,warn"))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Each event is written with the progress bars hidden, so they never tear.
        .with_writer(|| super::progress::LogWriter);
    if json {
        let _ = builder.event_format(JsonLine).try_init();
    } else {
        let _ = builder
            .with_ansi(color && std::io::stderr().is_terminal())
            .try_init();
    }
    problem
}

/// One JSON log object: `level`, `ts`, `msg`, then `fields`.
pub fn object(level: &str, msg: &str, fields: Map<String, Value>) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("level".into(), level.into());
    object.insert("ts".into(), timestamp().into());
    object.insert("msg".into(), msg.into());
    for (key, value) in fields {
        object.entry(key).or_insert(value);
    }
    object
}

/// Writes one JSON log line to stderr.
pub fn line(level: &str, msg: &str, fields: Map<String, Value>) {
    write_line(&mut std::io::stderr().lock(), level, msg, fields);
}

/// Writes one JSON log line to stdout (the command's result: a plan, a report).
pub fn stdout_line(level: &str, msg: &str, fields: Map<String, Value>) {
    let mut stdout = std::io::stdout().lock();
    write_line(&mut stdout, level, msg, fields);
    let _ = stdout.flush();
}

fn write_line(out: &mut dyn Write, level: &str, msg: &str, fields: Map<String, Value>) {
    let text = Value::Object(object(level, msg, fields)).to_string();
    let _ = writeln!(out, "{text}");
}

/// Turns a JSON value's members into log fields (anything else becomes `value`).
pub fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => Map::from_iter([("value".to_string(), other)]),
    }
}

/// ISO 8601 in UTC with milliseconds, as zap's ISO8601 encoder.
fn timestamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The JSON event format of [`init`]: `level` (lower case), `ts`, `msg`, the event's fields
/// flattened; no module path (`target` would be confused with `target_table`).
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        let msg = visitor
            .fields
            .remove("message")
            .and_then(|value| value.as_str().map(str::to_string))
            .unwrap_or_default();
        let text = Value::Object(object(&level, &msg, visitor.fields)).to_string();
        writeln!(writer, "{text}")
    }
}

#[derive(Default)]
struct Fields {
    fields: Map<String, Value>,
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.fields
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_accept_zaps_names_and_reject_others() {
        assert_eq!(parse_level("INFO"), Some("info"));
        assert_eq!(parse_level("fatal"), Some("error"));
        assert_eq!(parse_level("verbose"), None);
    }

    #[test]
    fn an_object_starts_with_level_ts_msg_and_keeps_them() {
        let mut extra = Map::new();
        extra.insert("level".into(), "bogus".into());
        extra.insert("rows".into(), 3.into());
        let object = object("info", "hi", extra);
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(keys, ["level", "ts", "msg", "rows"]);
        assert_eq!(object["level"], "info");
    }
}
